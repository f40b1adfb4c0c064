"""Reading layers: what a rule needs to know about a Linear / Conv / Conv1D / norm layer.

One place answers "how many outputs", "how many inputs", "the weight rows of each output
unit" and "how far is this weight scale from any initialisation", for every layer kind the
rules blame, including transformers' ``Conv1D`` (GPT-2), whose weight is stored
``(in, out)``: ``y = x @ W + b``.

No torch at import time: every function imports it inside.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

if TYPE_CHECKING:
    from torch import nn

#: a weight std within this relative distance of PyTorch's default or He's init "looks untrained"
UNTRAINED_TOLERANCE = 0.05


def is_conv1d(layer: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2's c_fc, c_proj...): a Linear whose weight is ``(in, out)``."""
    weight = getattr(layer, "weight", None)
    return (type(layer).__name__ == "Conv1D" and hasattr(layer, "nf") and weight is not None
            and getattr(weight, "dim", lambda: 0)() == 2)


def is_weight_layer(layer: nn.Module) -> bool:
    """A Linear, a (not transposed) Conv or a ``Conv1D``: a layer with one weight row per output unit."""
    from torch import nn
    if isinstance(layer, nn.Linear):
        return True
    if isinstance(layer, nn.modules.conv._ConvNd):
        return not isinstance(layer, nn.modules.conv._ConvTransposeNd)
    return is_conv1d(layer)


def is_batchnorm(layer: nn.Module) -> bool:
    from torch import nn
    return isinstance(layer, nn.modules.batchnorm._BatchNorm)


def layer_width(layer: nn.Module) -> int | None:
    """How many output units a Linear / Conv / Conv1D / norm layer has (None when unknown)."""
    from torch import nn
    if isinstance(layer, nn.Linear):
        return int(layer.out_features)
    if isinstance(layer, nn.modules.conv._ConvNd):
        return int(layer.out_channels)
    if is_conv1d(layer):
        return int(getattr(layer, "nf"))
    if isinstance(layer, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        return int(layer.num_features)
    if isinstance(layer, nn.GroupNorm):
        return int(layer.num_channels)
    if isinstance(layer, nn.Embedding):
        return int(layer.embedding_dim)
    if isinstance(layer, nn.LayerNorm):
        shape = tuple(layer.normalized_shape)
        return int(shape[-1]) if shape else None
    return None


def in_width(layer: nn.Module) -> int | None:
    """How many input features (channels) a weight layer reads (None for other layers)."""
    from torch import nn
    if isinstance(layer, nn.Linear):
        return int(layer.in_features)
    if isinstance(layer, nn.modules.conv._ConvNd):
        return int(layer.in_channels)
    if is_conv1d(layer):
        weight: Any = layer.weight
        return int(weight.shape[0])
    return None


#: While the rules run (``cached_weights``): ``(what, id(weight)) -> (weight, version, value)``.
_cache: dict[tuple[str, int], tuple[Any, int, Any]] | None = None


@contextlib.contextmanager
def cached_weights() -> Iterator[None]:
    """Within the block, each layer's float64 weight rows and weight std are computed once (the rules
    ask for them several times per layer: a float64 copy of every weight each time, on a large model)."""
    global _cache
    outer = _cache
    if outer is None:
        _cache = {}
    try:
        yield
    finally:
        if outer is None:
            _cache = None


def _cached(what: str, weight: Any, compute: Callable[[], Any]) -> Any:
    cache = _cache
    if cache is None:
        return compute()
    try:
        version = weight._version
    except RuntimeError:  # an inference tensor keeps no version counter: not cached
        return compute()
    hit = cache.get((what, id(weight)))
    if hit is not None and hit[0] is weight and hit[1] == version:
        return hit[2]
    value = compute()
    cache[(what, id(weight))] = (weight, version, value)
    return value


def weight_rows(layer: nn.Module) -> np.ndarray:
    """The weight as ``(output units, fan_in)`` float64: one row per output unit (Conv1D transposed);
    read-only (inside ``cached_weights`` the same array is handed to every caller)."""
    weight: Any = layer.weight

    def compute() -> np.ndarray:
        rows = weight.detach().double().cpu()
        if is_conv1d(layer):
            rows = rows.t()
        array = rows.reshape(rows.shape[0], -1).numpy()
        array.flags.writeable = False
        return array
    return _cached("rows", weight, compute)


def bias_of(layer: nn.Module) -> np.ndarray | None:
    """The layer's bias as float64, or None when it has none."""
    bias = getattr(layer, "bias", None)
    return None if bias is None else bias.detach().double().cpu().numpy().reshape(-1)


def fan_in(layer: nn.Module) -> int:
    """Inputs per output unit (``in_features``, ``in_channels/groups * prod(kernel)``)."""
    weight: Any = layer.weight
    return int(weight_rows(layer).shape[1]) if is_conv1d(layer) else int(weight[0].numel())


def fan_out(layer: nn.Module) -> int:
    """Outputs per input unit (``out_features``, ``out_channels * prod(kernel)``)."""
    if is_conv1d(layer):
        return int(getattr(layer, "nf"))
    weight: Any = layer.weight
    return int(weight.shape[0] * (weight[0][0].numel() if weight.dim() > 2 else 1))


def weight_std(layer: nn.Module) -> float:
    """The std of the layer's weights."""
    return _cached("std", layer.weight, lambda: float(np.std(weight_rows(layer))))


def init_scales(layer: nn.Module) -> dict[str, float]:
    """The weight std of every usual initialisation of this layer: He (fan_in and fan_out, as
    torchvision's convs use), PyTorch's default ``1/sqrt(3 fan_in)``, LeCun ``1/sqrt(fan_in)`` and
    Xavier ``sqrt(2/(fan_in+fan_out))``."""
    inputs, outputs = fan_in(layer), fan_out(layer)
    return {"he": math.sqrt(2.0 / inputs), "he_fan_out": math.sqrt(2.0 / outputs),
            "pytorch_default": 1.0 / math.sqrt(3.0 * inputs), "lecun": 1.0 / math.sqrt(inputs),
            "xavier": math.sqrt(2.0 / (inputs + outputs))}


def growth(layer: nn.Module) -> float:
    """The weight std over the largest usual initialisation's: above 1 the layer has grown past
    any init (training's updates put the scale there)."""
    return weight_std(layer) / max(init_scales(layer).values())


def looks_untrained(layer: nn.Module) -> bool:
    """Whether the weight std is within ``UNTRAINED_TOLERANCE`` of PyTorch's default or He's init:
    a layer training has not moved far (or a test model built by hand)."""
    std = weight_std(layer)
    scales = init_scales(layer)
    return any(abs(std / scales[key] - 1.0) <= UNTRAINED_TOLERANCE
               for key in ("pytorch_default", "he", "he_fan_out"))


def norm_producer(model: nn.Module, norm_name: str) -> tuple[str, nn.Module] | None:
    """The weight layer feeding norm layer ``norm_name``: the weight layer registered just before it
    in the same parent, with as many outputs as the norm has features (conv1 -> bn1)."""
    parent_name, _, child = norm_name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name)
        norm = parent.get_submodule(child)
    except AttributeError:
        return None
    width = layer_width(norm)
    names = list(parent._modules)
    if child not in names:
        return None
    for previous in reversed(names[:names.index(child)]):
        module = parent._modules[previous]
        if module is None:
            continue
        if is_weight_layer(module):
            if layer_width(module) != width:
                return None
            return (f"{parent_name}.{previous}" if parent_name else previous), module
        if list(module.parameters()) and not isinstance(module, type(norm)):
            return None
    return None


__all__ = ["is_conv1d", "is_weight_layer", "is_batchnorm", "layer_width", "in_width", "weight_rows", "bias_of",
           "fan_in", "fan_out", "weight_std", "init_scales", "growth", "looks_untrained", "norm_producer",
           "UNTRAINED_TOLERANCE"]
