"""Which axis of an activation holds its units, judged from what produced its input.

One rule for every capture: a *producer* is described by the axis its features sit on
(``last`` for Linear/LayerNorm/Embedding, ``channel`` — axis 1 — for Conv/BatchNorm/
GroupNorm/InstanceNorm) and how many features it emits. Eager capture describes the
producing module (``producer_of_module``), aten-level capture the producing op
(``producer_of_op``); ``resolve_unit_dim`` is the same for both.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

# Producers whose features sit on the last axis: (N, D), (N, L, D), (N, H, W, D).
LAST_AXIS_PRODUCERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Bilinear, nn.LayerNorm, nn.Embedding,
                                                   nn.EmbeddingBag)
if hasattr(nn, "RMSNorm"):
    LAST_AXIS_PRODUCERS += (nn.RMSNorm,)
# Producers whose features sit on axis 1: (N, C, L), (N, C, H, W), (N, C, D, H, W).
CHANNEL_AXIS_PRODUCERS: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
)
PRODUCERS = LAST_AXIS_PRODUCERS + CHANNEL_AXIS_PRODUCERS
#: Producers outside ``torch.nn`` with features on the last axis, by class name -> width attribute
#: (transformers' GPT-2 ``Conv1D`` is a Linear with transposed weights).
NAMED_LAST_AXIS_PRODUCERS = {"Conv1D": "nf"}


def is_producer(module: nn.Module) -> bool:
    """Whether a module produces features whose axis its type tells (Linear, Conv, norms, GPT-2's Conv1D)."""
    return isinstance(module, PRODUCERS) or type(module).__name__ in NAMED_LAST_AXIS_PRODUCERS


#: normalisation layers, recognised by isinstance (timm's BatchNormAct2d is a BatchNorm2d with children)
NORM_LAYERS: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
                                           nn.modules.instancenorm._InstanceNorm) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())

#: aten ops (overload packet names) whose output carries features on the last axis / on axis 1.
LAST_AXIS_OPS = frozenset({"linear", "addmm", "mm", "matmul", "bmm", "baddbmm", "addmv", "mv", "layer_norm",
                           "native_layer_norm", "rms_norm", "embedding", "embedding_bag", "_embedding_bag",
                           "bilinear", "einsum", "_addmm_activation"})
CHANNEL_AXIS_OPS = frozenset({"convolution", "_convolution", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
                              "conv_transpose2d", "conv_transpose3d", "mkldnn_convolution", "cudnn_convolution",
                              "miopen_convolution", "batch_norm", "native_batch_norm", "_native_batch_norm_legit",
                              "_native_batch_norm_legit_no_training", "cudnn_batch_norm", "group_norm",
                              "native_group_norm", "instance_norm"})


@dataclass(frozen=True)
class Producer:
    """What produced an activation's input, as far as the unit axis is concerned.

    Attributes:
        label: for messages (``BatchNorm2d``, ``aten.convolution``).
        axis: ``"last"`` or ``"channel"`` (axis 1), or None when the producer does not say.
        width: how many features it emits, when known.
    """

    label: str
    axis: str | None
    width: int | None


def producer_width(module: nn.Module) -> int | None:
    """How many features a producer module emits (out_features, out_channels, ...)."""
    for attribute in ("out_features", "out_channels", "num_features", "num_channels", "embedding_dim"):
        value = getattr(module, attribute, None)
        if isinstance(value, int):
            return value
    shape = getattr(module, "normalized_shape", None)
    if shape:
        return int(shape[-1])
    return None


def producer_of_module(module: nn.Module) -> Producer:
    """A module as a producer (its feature axis from its type)."""
    width_attribute = NAMED_LAST_AXIS_PRODUCERS.get(type(module).__name__)
    if width_attribute is not None:
        width = getattr(module, width_attribute, None)
        return Producer(type(module).__name__, "last", width if isinstance(width, int) else None)
    axis = "last" if isinstance(module, LAST_AXIS_PRODUCERS) else (
        "channel" if isinstance(module, CHANNEL_AXIS_PRODUCERS) else None)
    return Producer(type(module).__name__, axis, producer_width(module))


def producer_of_op(op: str, width: int) -> Producer | None:
    """An aten op as a producer, or None when the op does not produce features."""
    if op in LAST_AXIS_OPS:
        return Producer(f"aten.{op}", "last", width)
    if op in CHANNEL_AXIS_OPS:
        return Producer(f"aten.{op}", "channel", width)
    return None


def resolve_unit_dim(shape: tuple[int, ...], producer: Producer | None, last_producer: Producer | None,
                     per_channel_param: bool) -> tuple[int | None, str | None]:
    """Pick the unit axis of an activation output.

    Args:
        shape: the activation's output shape (batch first).
        producer: what produced the activation's input (matched by tensor identity), if known.
        last_producer: the most recent producer that ran before the activation.
        per_channel_param: the activation has one parameter per channel (PReLU).

    Returns:
        ``(unit_dim, warning)``: ``unit_dim`` None means the whole output is one unit
        (a 1-D ``(N,)`` output); ``warning`` says when the choice was a guess.
    """
    ndim = len(shape)
    if ndim <= 1:
        # (N,) has no feature axis; its last axis is the batch. One unit, so counts do
        # not change with the batch size.
        return None, None
    if ndim == 2 or per_channel_param:
        return 1, None
    if producer is not None and producer.axis is not None:
        return (ndim - 1 if producer.axis == "last" else 1), None
    reference = producer or last_producer
    if reference is not None:
        if reference.axis == "channel" and (shape[1] == reference.width or reference.width is None):
            # Conv/BatchNorm features always sit on axis 1; a residual add after them keeps the layout.
            return 1, None
        # The batch axis (0) is never a unit axis.
        matches = [axis for axis in range(1, ndim) if shape[axis] == reference.width]
        if len(matches) == 1:
            return matches[0], None
        if not matches and reference.axis == "channel":
            # A concatenation of channel-axis features (DenseNet) widens axis 1: not an ambiguity.
            return 1, None
        why = f"{len(matches)} axes of shape {tuple(shape)} match the width {reference.width} of {reference.label}"
    else:
        why = f"no Linear/Conv/Norm/Embedding ran before it (shape {tuple(shape)})"
    return 1, f"unit axis is ambiguous ({why}); assumed axis 1"


__all__ = ["NAMED_LAST_AXIS_PRODUCERS", "NORM_LAYERS", "is_producer", "Producer", "producer_of_module",
           "producer_of_op", "producer_width", "resolve_unit_dim", "PRODUCERS",
           "LAST_AXIS_PRODUCERS", "CHANNEL_AXIS_PRODUCERS", "LAST_AXIS_OPS", "CHANNEL_AXIS_OPS"]
