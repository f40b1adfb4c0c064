"""Feeding the model: the device and dtype it runs in, and raw batches turned into its arguments.

``InputPreparer`` turns whatever a data stream yields (a tensor, an ``(x, y)`` tuple,
``ModelInputs``, a dict) into ``model(*args, **kwargs)`` on the model's device, casts to
the model's dtype and applies the NaN/inf policy. ``check_batched`` and
``expected_input`` look at the model's first layer so that a wrong shape gets a message
that names it.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from ..errors import ConfigError, DataLoadError, DeadReluError
from ..settings import InputDtype, NonFinitePolicy
from .data import DataStream, ModelInputs
from .exported import ExportedModel
from .spec import Feeding


def resolve_device(name: str | None, model: nn.Module) -> torch.device:
    """``auto`` -> cuda, then mps, then cpu; None -> wherever the model already is."""
    if name is None:
        for tensor in itertools.chain(model.parameters(), model.buffers()):  # lazily: the first one decides
            return tensor.device
        return torch.device("cpu")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    hint = "device: use auto, cpu, cuda, cuda:N or mps"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a device torch knows", hint=hint) from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {name!r} is not supported for scans", hint=hint)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name} asked for, but CUDA is not available here",
                              hint="device: use cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name} asked for, but this machine has {torch.cuda.device_count()} CUDA "
                              f"device(s), numbered from 0", hint="device: use cuda (the first) or auto")
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"device {name} asked for, but MPS (Apple GPU) is not available here",
                              hint="device: use cpu (or auto)")
    return device


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating parameter (float32 if none)."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):  # lazily: the first one decides
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def first_layer(model: nn.Module) -> tuple[str, str, int, int] | None:
    """``(name, class, in_features or in_channels, conv spatial dims or 0)`` of the first Linear/Conv."""
    for name, module in model.named_modules():
        # A ScriptModule keeps its class name in original_name and its constants as attributes.
        kind = getattr(module, "original_name", None) if isinstance(module, torch.jit.ScriptModule) \
            else type(module).__name__
        if isinstance(module, nn.Linear) or (kind == "Linear" and hasattr(module, "in_features")):
            return name, "Linear", int(module.in_features), 0
        if isinstance(module, nn.modules.conv._ConvNd) or (
                kind in ("Conv1d", "Conv2d", "Conv3d") and hasattr(module, "in_channels")):
            return name, str(kind), int(module.in_channels), int(str(kind)[-2])
    return None


def expected_input(model: nn.Module) -> str | None:
    """What the first Linear/Conv layer (or an exported program) expects, for error messages."""
    if isinstance(model, ExportedModel):
        return model.describe_input()
    first = first_layer(model)
    if first is None:
        return None
    name, kind, width, dims = first
    if not dims:
        return f"first layer {name} is Linear(in_features={width})"
    return (f"first layer {name} is {kind}(in_channels={width}), expecting batches of shape "
            f"(N, {width}{', L' * dims if dims == 1 else ', H, W' if dims == 2 else ', D, H, W'})")


def check_batched(model: nn.Module, stream: DataStream) -> None:
    """Refuse data whose first axis is not a batch axis: one unbatched sample would be
    fed as several 'samples' and a Conv/Linear would silently accept each slice.

    Raises:
        DataLoadError: the data looks like one unbatched sample.
    """
    if stream.sample_shape is None:
        return
    total = stream.total_samples if stream.total_samples is not None else stream.num_samples
    shape = (total, *stream.sample_shape)
    hint = f"add a batch axis: shape (1, {', '.join(map(str, shape))}) (x[None] / np.expand_dims(x, 0))"
    if isinstance(model, ExportedModel):
        if model.sample_shape is not None and len(shape) == len(model.sample_shape) and all(
                want is None or want == have for want, have in zip(model.sample_shape, shape)):
            raise DataLoadError(f"{stream.source}: data of shape {shape} is one unbatched sample of what the "
                                "exported program takes; the first axis must index samples", hint=hint)
        return
    first = first_layer(model)
    if first is None:
        return
    name, kind, width, dims = first
    if len(shape) == dims + 1 and shape[0] == width and (dims or len(shape) == 1):
        what = f"{kind}(in_features={width})" if not dims else f"{kind}(in_channels={width})"
        raise DataLoadError(f"{stream.source}: data of shape {shape} looks like one unbatched sample for the "
                            f"first layer ({name or 'the model'}: {what}); the first axis must index samples",
                            hint=hint)


class Prepared(NamedTuple):
    """One batch ready for ``model(*args, **kwargs)``.

    Attributes:
        mask: the batch's padding mask, ``(N, L)`` bool on the model's device (True at
            real positions), or None.
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    samples: int
    shapes: tuple[tuple[int, ...], ...]
    mask: torch.Tensor | None = None


#: Dict-batch entries that are targets: never fed to the model unless named.
LABEL_KEYS = ("labels", "label", "targets", "target", "y")

#: Text of errors that a layer raises when it is fed the wrong dtype.
_DTYPE_ERROR = re.compile(r"dtype|scalar type|type \(|should be the same|not implemented for '|Byte|Long|Char",
                          re.IGNORECASE)


#: Text of errors a model raises when an input it needs was not fed (Hugging Face's "You must specify
#: exactly one of input_ids or inputs_embeds", Python's "missing 1 required positional argument").
_MISSING_INPUT = re.compile(r"must specify|have to specify|specify either|missing \d+ required|"
                            r"required (positional|keyword)(-only)? argument", re.IGNORECASE)


def is_missing_input(exc: BaseException) -> bool:
    """Whether a forward-pass error says an input was not given at all (not a wrong dtype or shape)."""
    return bool(_MISSING_INPUT.search(str(exc).split("\n", 1)[0]))


def is_dtype_error(exc: BaseException) -> bool:
    """Whether a forward-pass error reads as a dtype mismatch (not a shape error)."""
    return bool(_DTYPE_ERROR.search(str(exc).split("\n", 1)[0]))


class InputPreparer:
    """Turns a raw batch into model arguments on the device, applying the NaN policy.

    A tensor batch is the input; an ``(x, y)`` tuple feeds ``x``; ``ModelInputs`` feeds
    every element (``model(a, b)``); a dict feeds its input entry. With ``input_keys``
    the named dict entries (or tuple positions) are fed, in that order; with
    ``kwarg_keys`` the named dict entries are fed as keyword arguments of the same name.
    A dict batch holding ``input_ids`` with nothing named (a Hugging Face batch) feeds
    every entry but the labels as keyword arguments, and its ``attention_mask`` is the
    padding mask. ``input_fn`` overrides all of this: it maps a raw batch to a tensor, a
    tuple of positional inputs, or a dict of keyword inputs.

    Integer and boolean inputs keep their dtype (token ids), unless ``input_dtype`` is
    ``float`` or a ``scale`` is given; floating inputs are cast to the model's dtype.
    ``cast_integers()`` switches to casting (the scan does so when a floating layer
    rejects integer data, e.g. uint8 images).
    """

    def __init__(self, dtype: torch.dtype, device: torch.device, policy: NonFinitePolicy,
                 input_key: str | Sequence[str] | None, scale: float | None,
                 input_fn: Callable[[Any], Any] | None = None, *, kwarg_keys: Sequence[str] = (),
                 mask_key: str | None = None, input_dtype: InputDtype | str = InputDtype.AUTO,
                 decoder_inputs: bool = False) -> None:
        self.dtype, self.device, self.policy = dtype, device, policy
        self.decoder_inputs = decoder_inputs
        self.input_keys = [input_key] if isinstance(input_key, str) else list(input_key or ())
        self.kwarg_keys = [kwarg_keys] if isinstance(kwarg_keys, str) else list(kwarg_keys)
        self.mask_key = mask_key
        self.scale, self.input_fn = scale, input_fn
        try:
            self.input_dtype = InputDtype(input_dtype)
        except ValueError:
            raise ConfigError(f"input_dtype must be auto, keep or float, got {input_dtype!r}") from None
        # Scaling integers makes floats: a scale means "these are pixel values".
        self.integers_cast = self.input_dtype is InputDtype.FLOAT or (
            self.input_dtype is InputDtype.AUTO and scale is not None)
        self.notes: list[str] = []
        self.nonfinite_samples = 0
        self.skipped_samples = 0
        #: whether an integer or boolean tensor was fed as is
        self.fed_integers = False
        self._pin = device.type == "cuda"
        self._auto_fed = False
        self._decoder_fed = False
        #: the mask entry found in a tokenizer's dict batches when none was named
        self.auto_mask: str | None = None

    @classmethod
    def of(cls, feeding: Feeding, dtype: torch.dtype, device: torch.device,
           policy: NonFinitePolicy) -> InputPreparer:
        """The preparer that feeds batches as ``feeding`` says (``load.spec.Feeding``)."""
        return cls(dtype, device, policy, list(feeding.input_key) or None, feeding.scale, feeding.input_fn,
                   kwarg_keys=feeding.kwargs, mask_key=feeding.mask, input_dtype=feeding.input_dtype,
                   decoder_inputs=feeding.decoder_inputs)

    def cast_integers(self, reason: str) -> None:
        """From now on cast integer inputs to the model's dtype, and say why in the report."""
        self.integers_cast = True
        self.notes.append(reason)

    def _single(self, batch: Any) -> Any:
        if isinstance(batch, torch.Tensor):
            return batch
        if hasattr(batch, "__array__") and not isinstance(batch, (tuple, list, dict)):
            return torch.as_tensor(batch)
        if isinstance(batch, (tuple, list)):
            if not batch:
                raise DataLoadError("a batch is an empty tuple", hint="batches must hold the model input")
            return self._single(batch[0])  # (x, y): the first element is the input
        if isinstance(batch, Mapping):
            tensors = [k for k, v in batch.items() if isinstance(v, torch.Tensor) and k not in LABEL_KEYS]
            key = next((k for k in ("x", "input", "inputs", "image", "images", "pixel_values")
                        if k in batch), tensors[0] if len(tensors) == 1 else None)
            if key is None:
                raise DataLoadError(f"batches are dicts with keys {', '.join(map(str, batch))}; "
                                    "cannot tell which is the model input",
                                    hint="pass --input-key NAME (positional) or --kwarg NAME (keyword), "
                                         "repeatable")
            return self._single(batch[key])
        raise DataLoadError(f"cannot feed a batch of type {type(batch).__name__} to the model",
                            hint="batches must be tensors, (x, y) tuples or dicts of tensors")

    def _from_dict(self, batch: Mapping[str, Any]) -> tuple[list[Any], dict[str, Any], Any]:
        wanted = [*self.input_keys, *self.kwarg_keys, *([self.mask_key] if self.mask_key else [])]
        missing = [k for k in wanted if k not in batch]
        if missing:
            flag = ("--mask" if missing[0] == self.mask_key else "--kwarg" if missing[0] in self.kwarg_keys
                    else "--input-key")
            raise DataLoadError(f"batches have no entry {missing[0]!r}; they hold {', '.join(map(str, batch))}",
                                hint=f"check {flag} (with a data file, --key / --kwarg / --mask name its arrays)")
        mask_key = self.mask_key
        if not self.input_keys and not self.kwarg_keys:
            # A tokenizer's batch: every entry is a keyword input, except the targets.
            kwargs = {k: self._single(v) for k, v in batch.items()
                      if k not in LABEL_KEYS and (isinstance(v, torch.Tensor) or hasattr(v, "__array__"))}
            if mask_key is None and "attention_mask" in batch:
                mask_key = self.auto_mask = "attention_mask"
            if not self._auto_fed:
                self._auto_fed = True
                left = [k for k in batch if k in LABEL_KEYS]
                self.notes.append(f"dict batches fed as keyword inputs: {', '.join(kwargs)}"
                                  + (f" ({', '.join(left)} left out)" if left else "")
                                  + (f"; padding mask: {mask_key}" if mask_key else ""))
            return [], kwargs, batch[mask_key] if mask_key else None
        return ([self._single(batch[k]) for k in self.input_keys], {k: self._single(batch[k]) for k in self.kwarg_keys},
                batch[mask_key] if mask_key else None)

    def _select(self, batch: Any) -> tuple[list[Any], dict[str, Any], Any]:
        if self.input_fn is not None:
            try:
                chosen = self.input_fn(batch)
            except DeadReluError:
                raise
            except Exception as exc:
                raise DataLoadError(f"input_fn failed on a batch: {type(exc).__name__}: {exc}",
                                    hint="input_fn receives each raw batch as the data yields it") from exc
            mask = batch.get(self.mask_key) if self.mask_key and isinstance(batch, Mapping) else None
            if isinstance(chosen, Mapping):
                return [], dict(chosen), mask
            if isinstance(chosen, (tuple, list)):
                return list(chosen), {}, mask
            return [chosen], {}, mask
        if isinstance(batch, ModelInputs):
            return list(batch), {}, None
        if isinstance(batch, Mapping) and (self.input_keys or self.kwarg_keys or self.mask_key
                                           or "input_ids" in batch):
            return self._from_dict(batch)
        if self.kwarg_keys or self.mask_key:
            flag = "--kwarg" if self.kwarg_keys else "--mask"
            raise DataLoadError(f"{flag} given, but batches are {type(batch).__name__}s, not dicts",
                                hint="name the arrays of a data file with --key/--kwarg/--mask, or yield dict batches")
        if self.input_keys:
            if isinstance(batch, (tuple, list)):
                try:
                    positions = [int(k) for k in self.input_keys]
                    return [self._single(batch[i]) for i in positions], {}, None
                except (ValueError, IndexError):
                    raise DataLoadError(f"batches are {len(batch)}-tuples; --input-key must name positions "
                                        f"0..{len(batch) - 1}, got {', '.join(self.input_keys)}",
                                        hint="for (a, b, y) batches: --input-key 0 --input-key 1") from None
            raise DataLoadError(f"--input-key {', '.join(self.input_keys)} given, but batches are "
                                f"{type(batch).__name__}s, not dicts or tuples",
                                hint="for several arrays in a file use --key NAME once per input")
        return [self._single(batch)], {}, None

    def _cast(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_complex():
            raise DataLoadError(f"complex input ({x.dtype}); the model takes real numbers",
                                hint="feed x.real, x.abs() or both as channels")
        if not x.is_floating_point():
            if not self.integers_cast:
                self.fed_integers = True
                return x  # token ids, indices and flags keep their dtype
            if not any("integer" in note or "boolean" in note for note in self.notes):
                scale = f", scaled by {self.scale:g}" if self.scale else ""
                what = "boolean" if x.dtype == torch.bool else f"{str(x.dtype).replace('torch.', '')} integers"
                self.notes.append(f"data were {what}; cast to {str(self.dtype).replace('torch.', '')}{scale}")
            x = x.to(self.dtype)
            return x * self.scale if self.scale else x
        if x.dtype != self.dtype:
            x = x.to(self.dtype)
        return x * self.scale if self.scale else x

    def _mask(self, value: Any, samples: int) -> torch.Tensor:
        mask = torch.as_tensor(value)
        name = self.mask_key or "attention_mask"
        if mask.ndim != 2 or int(mask.shape[0]) != samples:
            raise DataLoadError(f"the padding mask {name!r} has shape {tuple(mask.shape)}; it must be (N, L) with "
                                f"N = {samples} samples", hint="1 marks a real token, 0 padding (an attention mask)")
        return mask if mask.dtype == torch.bool else mask != 0

    def _decoder(self, args: list[Any], kwargs: dict[str, Any]) -> None:
        """An encoder-decoder's decoder is fed the encoder's token ids (and attention mask)
        when the batch has no decoder inputs: otherwise it cannot run at all."""
        if "decoder_input_ids" in kwargs or "decoder_inputs_embeds" in kwargs:
            return
        ids = kwargs.get("input_ids")
        if ids is None:
            ids = next((a for a in args if isinstance(a, torch.Tensor) and a.ndim == 2
                        and not a.is_floating_point()), None)
        if ids is None:
            return
        kwargs["decoder_input_ids"] = ids
        fed = ["decoder_input_ids"]
        if "attention_mask" in kwargs and "decoder_attention_mask" not in kwargs:
            kwargs["decoder_attention_mask"] = kwargs["attention_mask"]
            fed.append("decoder_attention_mask")
        if not self._decoder_fed:
            self._decoder_fed = True
            self.notes.append(f"encoder-decoder model: its decoder fed the same tokens ({', '.join(fed)})")

    def __call__(self, batch: Any, start: int) -> Prepared | None:
        args, kwargs, mask_value = self._select(batch)
        if self.decoder_inputs:
            self._decoder(args, kwargs)
        args = [self._cast(torch.as_tensor(a)) if isinstance(a, torch.Tensor) or hasattr(a, "__array__") else a
                for a in args]
        kwargs = {k: self._cast(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
        if not tensors:
            raise DataLoadError("a batch holds no tensor to feed the model",
                                hint="batches must be tensors, (x, y) tuples or dicts of tensors")
        samples = int(tensors[0].shape[0]) if tensors[0].ndim > 0 else 1
        mask = self._mask(mask_value, samples) if mask_value is not None else None
        ids = next((v for v in tensors if v.ndim == 2 and not v.is_floating_point()), None)
        if mask is not None and ids is not None and tuple(ids.shape) != tuple(mask.shape):
            raise DataLoadError(f"the padding mask {self.mask_key or self.auto_mask!r} has shape {tuple(mask.shape)}, "
                                f"the token ids {tuple(ids.shape)}", hint="the mask needs one entry per token")
        # Counted under every policy (the report says how many), dropped only with skip.
        keep = self._check_finite(tensors, samples, start)
        if keep is not None:
            if not bool(keep.any()):
                return None
            args = [self._rows(v, keep, samples) for v in args]
            kwargs = {k: self._rows(v, keep, samples) for k, v in kwargs.items()}
            mask = self._rows(mask, keep, samples)
            samples = int(keep.sum())
        args = [self._to_device(v) for v in args]
        kwargs = {k: self._to_device(v) for k, v in kwargs.items()}
        shapes = tuple(tuple(v.shape) for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor))
        return Prepared(tuple(args), kwargs, samples, shapes, self._to_device(mask))

    @staticmethod
    def _rows(value: Any, keep: torch.Tensor, samples: int) -> Any:
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == samples:
            return value[keep]
        return value

    def _to_device(self, value: Any) -> Any:
        if not isinstance(value, torch.Tensor) or value.device == self.device:
            return value
        if self._pin and not value.is_pinned():
            value = value.pin_memory()
        return value.to(self.device, non_blocking=True)

    def _check_finite(self, tensors: list[torch.Tensor], samples: int, start: int) -> torch.Tensor | None:
        """None when every sample is finite; else the mask of samples to keep (policy skip)."""
        finite: torch.Tensor | None = None
        for x in tensors:
            if x.device.type != "cpu" or not x.is_floating_point() or x.ndim == 0 or x.shape[0] != samples:
                continue
            # Fast path: one read (a sum, where NaN/inf propagate) clears an all-finite batch;
            # only a non-finite sum (or a float overflow) pays for the per-sample check.
            low_precision = x.dtype in (torch.float16, torch.bfloat16)
            if bool(torch.isfinite(x.sum(dtype=torch.float32) if low_precision else x.sum())):
                continue
            rows = torch.isfinite(x.reshape(samples, -1)).all(dim=1)
            finite = rows if finite is None else finite & rows
        if finite is None or bool(finite.all()):
            return None
        bad = (~finite).nonzero().flatten()
        self.nonfinite_samples += int(bad.numel())
        if self.policy is NonFinitePolicy.KEEP:
            return None
        if self.policy is NonFinitePolicy.FAIL:
            raise DataLoadError(f"input holds NaN/inf: sample {start + int(bad[0])} is the first "
                                f"({int(bad.numel())} in its batch)",
                                hint="clean the data, or pass --nonfinite skip (drop them) / keep (scan them)")
        self.skipped_samples += int(bad.numel())
        return finite


class RunningModules:
    """The model's modules whose ``forward`` is running, innermost last, while the block is open.

    Global forward pre-hooks push and forward hooks pop; a module whose forward raises
    is never popped, so after an exception ``innermost`` is the module that raised it.
    Used around the first forward pass only, so that a failure names the layer that
    rejected the input rather than the model's first layer.

    Args:
        model: the model; modules built inside its ``forward`` are not tracked.
    """

    def __init__(self, model: nn.Module) -> None:
        self._names = {module: name for name, module in model.named_modules()}
        self._stack: list[tuple[str, nn.Module]] = []
        self._handles: list[Any] = []

    def __enter__(self) -> RunningModules:
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
        self._stack.clear()
        self._handles = [register_module_forward_pre_hook(self._push), register_module_forward_hook(self._pop)]
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _push(self, module: nn.Module, args: Any) -> None:
        name = self._names.get(module)
        if name is not None:
            self._stack.append((name, module))

    def _pop(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._stack and self._stack[-1][1] is module:
            self._stack.pop()

    @property
    def innermost(self) -> tuple[str, nn.Module] | None:
        """``(qualified name, module)`` of the innermost module still running (after an
        exception: the one that raised), or None."""
        return self._stack[-1] if self._stack else None


def describe_module(module: nn.Module) -> str:
    """``Linear(in_features=128)``, ``Conv2d(in_channels=3)``, ``Embedding(num_embeddings=1000)``, or the class."""
    kind = type(module).__name__
    for attribute in ("in_features", "in_channels", "num_embeddings"):
        value = getattr(module, attribute, None)
        if isinstance(value, int):
            return f"{kind}({attribute}={value})"
    return kind


def is_embedding(module: nn.Module | None) -> bool:
    """Whether a module looks up integer ids (an ``Embedding``, or a class named like one)."""
    return module is not None and (isinstance(module, (nn.Embedding, nn.EmbeddingBag))
                                   or "Embedding" in type(module).__name__)


__all__ = ["InputPreparer", "Prepared", "RunningModules", "LABEL_KEYS", "describe_module", "is_dtype_error",
           "is_missing_input",
           "is_embedding", "check_batched", "expected_input", "first_layer", "model_dtype",
           "resolve_device"]
