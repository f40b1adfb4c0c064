"""The scan: load -> capture -> accumulate -> result -> judge, in one function.

``scan(model, data)`` is what notebook users call and what the CLI calls. It never
prints; progress goes to an optional callback.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from . import distributed
from .capture import ActivationCapture, SiteRecord
from .capture.dispatch import capture_for
from .capture.export import ExportedModel
from .compile_policy import CompileDecision
from .errors import CaptureError, DataLoadError, DeadReluError, ForwardError
from .judge.suggestions import suggest
from .judge.verdicts import judge_site
from .kinds import KNOWN_KINDS, ActiveRule, prelu_slope_summary
from .load.data import DataStream, ModelInputs, as_stream, fit_batches
from .load.model import unwrap
from .result import ScanResult, SiteResult, Summary
from .settings import NonFinitePolicy, ScanSettings, build_settings

ProgressCallback = Callable[[int, "int | None"], None]


def resolve_device(name: str | None, model: nn.Module) -> torch.device:
    """``auto`` -> cuda, then mps, then cpu; None -> wherever the model already is."""
    if name is None:
        for tensor in list(model.parameters()) + list(model.buffers()):
            return tensor.device
        return torch.device("cpu")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DataLoadError(f"unknown device {name!r}", hint="use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataLoadError(f"device {name} asked for, but CUDA is not available here", hint="use --device cpu")
    return device


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating parameter (float32 if none)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def _first_layer(model: nn.Module) -> tuple[str, str, int, int] | None:
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
    first = _first_layer(model)
    if first is None:
        return None
    name, kind, width, dims = first
    if not dims:
        return f"first layer {name} is Linear(in_features={width})"
    return (f"first layer {name} is {kind}(in_channels={width}), expecting batches of shape "
            f"(N, {width}{', L' * dims if dims == 1 else ', H, W' if dims == 2 else ', D, H, W'})")


def _check_batched(model: nn.Module, stream: DataStream) -> None:
    """Refuse data whose first axis is not a batch axis: one unbatched sample would be
    fed as several 'samples' and a Conv/Linear would silently accept each slice."""
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
    first = _first_layer(model)
    if first is None:
        return
    name, kind, width, dims = first
    if len(shape) == dims + 1 and shape[0] == width and (dims or len(shape) == 1):
        what = f"{kind}(in_features={width})" if not dims else f"{kind}(in_channels={width})"
        raise DataLoadError(f"{stream.source}: data of shape {shape} looks like one unbatched sample for the "
                            f"first layer ({name or 'the model'}: {what}); the first axis must index samples",
                            hint=hint)


class _Prepared(NamedTuple):
    """One batch ready for ``model(*args, **kwargs)``."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    samples: int
    shapes: tuple[tuple[int, ...], ...]


class _InputPreparer:
    """Turns a raw batch into model arguments on the device, applying the NaN policy.

    A tensor batch is the input; an ``(x, y)`` tuple feeds ``x``; ``ModelInputs`` feeds
    every element (``model(a, b)``); a dict feeds its input entry. With ``input_keys``
    the named dict entries (or tuple positions) are fed, in that order. ``input_fn``
    overrides all of this: it maps a raw batch to a tensor, a tuple of positional
    inputs, or a dict of keyword inputs.
    """

    def __init__(self, dtype: torch.dtype, device: torch.device, policy: NonFinitePolicy,
                 input_key: str | Sequence[str] | None, scale: float | None,
                 input_fn: Callable[[Any], Any] | None = None) -> None:
        self.dtype, self.device, self.policy = dtype, device, policy
        self.input_keys = [input_key] if isinstance(input_key, str) else list(input_key or ())
        self.scale, self.input_fn = scale, input_fn
        self.notes: list[str] = []
        self.nonfinite_samples = 0
        self.skipped_samples = 0
        self._pin = device.type == "cuda"

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
            tensors = [k for k, v in batch.items() if isinstance(v, torch.Tensor)]
            key = next((k for k in ("x", "input", "inputs", "image", "images", "pixel_values")
                        if k in batch), tensors[0] if len(tensors) == 1 else None)
            if key is None:
                raise DataLoadError(f"batches are dicts with keys {', '.join(map(str, batch))}; "
                                    "cannot tell which is the model input",
                                    hint="pass --input-key NAME (repeat it for a model that takes several inputs)")
            return self._single(batch[key])
        raise DataLoadError(f"cannot feed a batch of type {type(batch).__name__} to the model",
                            hint="batches must be tensors, (x, y) tuples or dicts of tensors")

    def _select(self, batch: Any) -> tuple[list[Any], dict[str, Any]]:
        if self.input_fn is not None:
            try:
                chosen = self.input_fn(batch)
            except DeadReluError:
                raise
            except Exception as exc:
                raise DataLoadError(f"input_fn failed on a batch: {type(exc).__name__}: {exc}",
                                    hint="input_fn receives each raw batch as the data yields it") from exc
            if isinstance(chosen, Mapping):
                return [], dict(chosen)
            if isinstance(chosen, (tuple, list)):
                return list(chosen), {}
            return [chosen], {}
        if isinstance(batch, ModelInputs):
            return list(batch), {}
        if self.input_keys:
            if isinstance(batch, Mapping):
                missing = [k for k in self.input_keys if k not in batch]
                if missing:
                    raise DataLoadError(f"batches have no entry {missing[0]!r}; they hold "
                                        f"{', '.join(map(str, batch))}", hint="check --input-key")
                return [self._single(batch[k]) for k in self.input_keys], {}
            if isinstance(batch, (tuple, list)):
                try:
                    positions = [int(k) for k in self.input_keys]
                    return [self._single(batch[i]) for i in positions], {}
                except (ValueError, IndexError):
                    raise DataLoadError(f"batches are {len(batch)}-tuples; --input-key must name positions "
                                        f"0..{len(batch) - 1}, got {', '.join(self.input_keys)}",
                                        hint="for (a, b, y) batches: --input-key 0 --input-key 1") from None
            raise DataLoadError(f"--input-key {', '.join(self.input_keys)} given, but batches are "
                                f"{type(batch).__name__}s, not dicts or tuples",
                                hint="for several arrays in a file use --key NAME once per input")
        return [self._single(batch)], {}

    def _cast(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_complex():
            raise DataLoadError(f"complex input ({x.dtype}); the model takes real numbers",
                                hint="feed x.real, x.abs() or both as channels")
        if not x.is_floating_point():
            if not any("integer" in note or "boolean" in note for note in self.notes):
                scale = f", scaled by {self.scale:g}" if self.scale else ""
                what = "boolean" if x.dtype == torch.bool else f"{str(x.dtype).replace('torch.', '')} integers"
                self.notes.append(f"data were {what}; cast to {str(self.dtype).replace('torch.', '')}{scale}")
            x = x.to(self.dtype)
            return x * self.scale if self.scale else x
        if x.dtype != self.dtype:
            x = x.to(self.dtype)
        return x * self.scale if self.scale else x

    def __call__(self, batch: Any, start: int) -> _Prepared | None:
        args, kwargs = self._select(batch)
        args = [self._cast(torch.as_tensor(a)) if isinstance(a, torch.Tensor) or hasattr(a, "__array__") else a
                for a in args]
        kwargs = {k: self._cast(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
        if not tensors:
            raise DataLoadError("a batch holds no tensor to feed the model",
                                hint="batches must be tensors, (x, y) tuples or dicts of tensors")
        samples = int(tensors[0].shape[0]) if tensors[0].ndim > 0 else 1
        # Counted under every policy (the report says how many), dropped only with skip.
        keep = self._check_finite(tensors, samples, start)
        if keep is not None:
            if not bool(keep.any()):
                return None
            args = [self._rows(v, keep, samples) for v in args]
            kwargs = {k: self._rows(v, keep, samples) for k, v in kwargs.items()}
            samples = int(keep.sum())
        args = [self._to_device(v) for v in args]
        kwargs = {k: self._to_device(v) for k, v in kwargs.items()}
        shapes = tuple(tuple(v.shape) for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor))
        return _Prepared(tuple(args), kwargs, samples, shapes)

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


def _saturation_of(record: SiteRecord) -> str | None:
    if record.spec.active_rule is ActiveRule.ABOVE_LOWER:
        return "bounds"
    return "floor" if record.spec.floor is not None else None


def _no_sites_error(model: nn.Module, capture: ActivationCapture, source: str | None = None) -> CaptureError:
    error = _no_sites_reason(model, capture)
    return CaptureError(f"{source}: {error.message}", hint=error.hint) if source else error


def _no_sites_reason(model: nn.Module, capture: ActivationCapture) -> CaptureError:
    no_sites_error = getattr(capture, "no_sites_error", None)
    if no_sites_error is not None and not capture.coverage.excluded:
        return no_sites_error(getattr(model, "original_name", None) or type(model).__name__)
    if capture.coverage.activation_modules:
        if capture.coverage.excluded:
            return CaptureError("no activation site left to scan: --layers/--exclude excluded every site",
                                hint=f"sites found: {', '.join(capture.coverage.excluded[:6])}")
        return CaptureError("the model's activation modules never ran on this data",
                            hint=f"modules found: {', '.join(capture.coverage.activation_modules[:6])}")
    types = sorted({type(m).__name__ for m in model.modules()} - {type(model).__name__})
    functional = ("no functional activation (F.relu...) ran either" if getattr(capture.coverage, "functional", False)
                  else "functional calls (F.relu...) were not captured: --no-functional")
    return CaptureError(
        f"no ReLU-family activation found in {type(model).__name__} (module types: {', '.join(types[:12]) or 'none'}; "
        f"{functional})",
        hint=f"deadrelu scans {', '.join(KNOWN_KINDS)} modules and functional calls to them")


@distributed.across_ranks  # data-parallel inside a process group; a no-op outside one
def scan(model: nn.Module, data: Any, *, settings: ScanSettings | None = None,
         progress: ProgressCallback | None = None, model_info: Mapping[str, Any] | None = None,
         input_key: str | Sequence[str] | None = None, scale: float | None = None,
         partial_on_interrupt: bool = False, input_fn: Callable[[Any], Any] | None = None,
         shuffle_seed: int | None = None, shard: str | distributed.Shard | None = None,
         shard_data: bool = True, **overrides: Any) -> ScanResult:
    """Scan a model's ReLU-family activations over a data set.

    Args:
        model: any ``nn.Module`` (DataParallel and ``torch.compile`` wrappers are unwrapped),
            a TorchScript module, or a ``torch.export`` ``ExportedProgram``.
        data: a tensor or ndarray (first axis = samples), a dict of them, a data file
            path, a ``DataStream``, a ``Dataset``, or an iterable of batches (tensors,
            ``(x, y)`` tuples, ``ModelInputs`` for several inputs, dicts).
        settings: full settings; or give single ones as keyword overrides
            (``batch_size=64, tau=0.05, device="cpu", granularity="position"``...).
        progress: called as ``progress(samples_done, samples_total_or_None)`` after each batch.
        model_info: metadata about where the model came from, for reports.
        input_key: which entry of dict batches (or of a dict of arrays given as
            ``data``) is the model input; several keys (or tuple positions) feed several
            inputs, ``model(a, b)``.
        scale: multiply inputs by this (e.g. 1/255 for uint8 images).
        partial_on_interrupt: on Ctrl-C, return what was seen so far, marked partial.
        input_fn: maps a raw batch to the model's inputs: a tensor, a tuple (positional
            inputs) or a dict (keyword inputs). Overrides ``input_key``.
        shuffle_seed: with ``limit``, scan a random subset of the samples drawn with this seed.
        shard: ``"I/N"``: scan only part I of N disjoint parts of the samples (merge the
            parts with ``deadrelu.merge.merge_results``). Inside a process group
            (torchrun) each rank also scans only its own block and the ranks' results
            are combined; see ``deadrelu.distributed``.
        shard_data: inside a process group, False when each rank passes its own part of
            the data already (a DataLoader with a ``DistributedSampler``).

    Returns:
        A ``ScanResult`` (data: ``.summary``, ``.sites``, ``.to_frame()``...).

    Raises:
        DeadReluError: bad data, a failing forward pass, or nothing to scan.
    """
    if settings is None:
        settings = build_settings(**overrides)
    elif overrides:
        merged = {**_flat(settings), **{k: v for k, v in overrides.items() if v is not None}}
        settings = build_settings(**merged)
    model = unwrap(model)
    if isinstance(model, torch.export.ExportedProgram):
        model = ExportedModel(model)
    # A model spread over several devices (device_map="auto", pipeline stages) stays where it is under "auto".
    spread = distributed.spread_over_devices(model, settings.device)
    device = resolve_device(None if spread else settings.device, model)
    if settings.device is not None and not spread:
        model.to(device)
    dtype = model_dtype(model)
    # A dict of arrays is one array per input: input_key names them (and their order).
    stream = data if isinstance(data, DataStream) else as_stream(
        data, settings.batch_size, settings.limit, shuffle_seed=shuffle_seed,
        key=input_key if isinstance(data, Mapping) else None)
    # This process's part: shard I/N, then this rank's block of it (the whole stream in one process).
    lockstep = distributed.needs_lockstep(model)  # FSDP: the forward pass is a collective
    stream = distributed.shard_stream(stream, shard, split_ranks=shard_data, lockstep=lockstep)
    if isinstance(model, ExportedModel):
        # An exported program accepts only the batch sizes it was exported for.
        stream = fit_batches(stream, *model.batch_bounds, settings.batch_size)
    _check_batched(model, stream)
    prepare = _InputPreparer(dtype, device, settings.nonfinite, input_key, scale, input_fn)
    samples = batches = 0
    partial = False
    # FSDP2's unshard reads its parameters' version counters, which inference tensors do not have.
    with capture_for(model, settings, device) as capture, (torch.no_grad() if lockstep else torch.inference_mode()):
        compile_decision = CompileDecision(settings.compile, capture, stream.num_samples)
        try:
            for raw in stream.batches():
                inputs = prepare(raw, stream.first_sample + samples + prepare.skipped_samples)
                if inputs is None:
                    continue
                capture.begin_batch()
                try:
                    model(*inputs.args, **inputs.kwargs)
                except DeadReluError:
                    raise
                except Exception as exc:
                    # Aten-level capture errors come back from TorchScript as bare RuntimeErrors.
                    failure = getattr(capture, "failure", None)
                    if isinstance(failure, DeadReluError):
                        raise failure from None
                    raise _forward_error(exc, model, capture, batches, inputs, stream) from exc
                capture.end_batch()
                samples += inputs.samples
                batches += 1
                compile_decision.after_batch(batches, samples)
                if progress is not None:
                    progress(samples, stream.num_samples)
        except KeyboardInterrupt:
            if not partial_on_interrupt or batches == 0:
                raise
            partial = True
        records = capture.records()
        if not records:
            raise _no_sites_error(model, capture, (model_info or {}).get("source"))
        sites = [_site_result(capture, record, settings) for record in records]
        not_run = capture.not_run()
        coverage_warnings = list(capture.coverage.warnings)
    if samples == 0:
        raise DataLoadError(f"{stream.source}: no sample was scanned", hint="check the data and --nonfinite")
    warnings = coverage_warnings + list(stream.notes) + prepare.notes + compile_decision.warnings()
    if not_run:
        warnings.append(f"{len(not_run)} activation module(s) never ran on this data: {', '.join(not_run[:8])}")
    if prepare.skipped_samples:
        warnings.append(f"skipped {prepare.skipped_samples} input sample(s) holding NaN/inf (--nonfinite skip)")
    nonfinite_sites = [s.name for s in sites if s.nonfinite]
    if nonfinite_sites:
        warnings.append(f"NaN/inf activations at {len(nonfinite_sites)} site(s) ({', '.join(nonfinite_sites[:5])}); "
                        "those batch slices were left out of the statistics and counted per unit")
    if partial:
        warnings.append(f"PARTIAL: the scan was interrupted after {samples} samples")
    data_info = {"source": stream.source, "samples": samples, "batches": batches,
                 "sample_shape": list(stream.sample_shape) if stream.sample_shape else None,
                 "dtype": stream.dtype, "nonfinite": prepare.nonfinite_samples,
                 "skipped": prepare.skipped_samples, "sha256": stream.sha256, "partial": partial,
                 "shard": stream.shard}
    info = dict(model_info or {})
    info.setdefault("class", getattr(model, "original_name", None) or type(model).__name__)
    info.setdefault("parameters", sum(p.numel() for p in model.parameters()))
    info.setdefault("source", f"<{type(model).__name__} object>")
    info.setdefault("format", "object")
    from . import __version__
    environment = {"deadrelu": __version__, "torch": torch.__version__, "device": str(device),
                   "dtype": str(dtype).replace("torch.", ""),
                   "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                   **compile_decision.environment()}
    coverage = {"activation_modules": len(capture.coverage.activation_modules), "not_run": not_run,
                "excluded": capture.coverage.excluded,
                "positional_names": bool(getattr(capture, "positional_names", False)),
                "functional": bool(getattr(capture.coverage, "functional", False)),
                "functional_sites": sum(1 for site in sites if site.function is not None)}
    result = ScanResult(sites=tuple(sites), summary=Summary.of(sites), settings=settings, model=info, data=data_info,
                        coverage=coverage, warnings=tuple(warnings), environment=environment)
    return result.with_suggestions(suggest(result, model))


def _flat(settings: ScanSettings) -> dict[str, Any]:
    values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.name != "thresholds"}
    values.update(dataclasses.asdict(settings.thresholds))
    return values


def _site_result(capture: ActivationCapture, record: SiteRecord, settings: ScanSettings) -> SiteResult:
    stats = capture.finalize(record)
    saturation = _saturation_of(record)
    return SiteResult(name=capture.site_name(record), module=record.module, call_index=record.call_index,
                      function=record.function, kind=record.spec.kind, unit_dim=record.unit_dim, stats=stats,
                      verdict=judge_site(stats, saturation, settings.thresholds), saturation=saturation,
                      prelu_slopes=prelu_slope_summary(record.activation) if record.activation is not None else None)


def _forward_error(exc: Exception, model: nn.Module, capture: ActivationCapture, batch_index: int,
                   inputs: _Prepared, stream: DataStream) -> ForwardError:
    # TorchScript re-raises an op's error from inside a dispatch mode without its text.
    exc = getattr(capture, "op_error", None) or exc
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    if text.startswith("The following operation failed in the TorchScript interpreter") and len(lines) > 1:
        text = lines[-1]  # the TorchScript traceback ends with the error that was raised
    ran = [name for (name, _function) in capture._calls] if capture._calls else []
    where = f"; activations that ran first: {', '.join(ran[:4])}" if ran else ""
    expected = expected_input(model)
    fed = ", ".join(str(shape) for shape in inputs.shapes)
    data_shape = ""
    if stream.sample_shape is not None:
        total = stream.total_samples if stream.total_samples is not None else stream.num_samples
        data_shape = f"data shape {(total, *stream.sample_shape)}, "
    return ForwardError(
        f"forward pass failed on batch {batch_index} of {stream.source} ({data_shape}batch fed {fed}): "
        f"{type(exc).__name__}: {text[:300]}{where}",
        hint=(expected + "; check the data's shape") if expected else "check the data's shape and dtype")
