"""The scan: load -> capture -> accumulate -> result -> judge, in one function.

``scan(model, data)`` is what notebook users call and what the CLI calls. It never
prints; progress goes to an optional callback.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .capture import ActivationCapture, SiteRecord
from .errors import CaptureError, DataLoadError, DeadReluError, ForwardError
from .judge.verdicts import judge_site
from .kinds import KNOWN_KINDS, ActiveRule, prelu_slope_summary
from .load.data import DataStream, as_stream, batch_length
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


def expected_input(model: nn.Module) -> str | None:
    """What the first Linear/Conv layer expects, for error messages."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            return f"first layer {name} is Linear(in_features={module.in_features})"
        if isinstance(module, nn.modules.conv._ConvNd):
            return (f"first layer {name} is {type(module).__name__}(in_channels={module.in_channels}), "
                    f"expecting {module.in_channels + 0} channels on axis 1")
    return None


class _InputPreparer:
    """Turns a raw batch into model arguments on the device, applying the NaN policy."""

    def __init__(self, dtype: torch.dtype, device: torch.device, policy: NonFinitePolicy,
                 input_key: str | None, scale: float | None) -> None:
        self.dtype, self.device, self.policy = dtype, device, policy
        self.input_key, self.scale = input_key, scale
        self.notes: list[str] = []
        self.nonfinite_samples = 0
        self.skipped_samples = 0
        self._pin = device.type == "cuda"

    def _select(self, batch: Any) -> torch.Tensor:
        if isinstance(batch, torch.Tensor):
            return batch
        if hasattr(batch, "__array__") and not isinstance(batch, (tuple, list, dict)):
            return torch.as_tensor(batch)
        if isinstance(batch, (tuple, list)):
            if not batch:
                raise DataLoadError("a batch is an empty tuple")
            return self._select(batch[0])  # (x, y): the first element is the input
        if isinstance(batch, Mapping):
            key = self.input_key
            if key is None:
                tensors = [k for k, v in batch.items() if isinstance(v, torch.Tensor)]
                key = next((k for k in ("x", "input", "inputs", "image", "images", "pixel_values")
                            if k in batch), tensors[0] if len(tensors) == 1 else None)
            if key is None or key not in batch:
                raise DataLoadError(f"batches are dicts with keys {', '.join(map(str, batch))}; "
                                    "cannot tell which is the model input", hint="pass --input-key NAME")
            return self._select(batch[key])
        raise DataLoadError(f"cannot feed a batch of type {type(batch).__name__} to the model",
                            hint="batches must be tensors, (x, y) tuples or dicts of tensors")

    def __call__(self, batch: Any, start: int) -> torch.Tensor | None:
        x = self._select(batch)
        if not (x.is_floating_point() or x.is_complex()):
            if not self.notes or "integer" not in self.notes[-1]:
                scale = f", scaled by {self.scale:g}" if self.scale else ""
                self.notes.append(f"data were {str(x.dtype).replace('torch.', '')} integers; cast to "
                                  f"{str(self.dtype).replace('torch.', '')}{scale}")
            x = x.to(self.dtype)
            if self.scale:
                x = x * self.scale
        elif x.dtype != self.dtype:
            x = x.to(self.dtype)
        elif self.scale:
            x = x * self.scale
        if self.policy is not NonFinitePolicy.KEEP and x.device.type == "cpu" and x.is_floating_point():
            x = self._check_finite(x, start)
            if x is None:
                return None
        if x.device != self.device:
            if self._pin:
                x = x.pin_memory()
            x = x.to(self.device, non_blocking=True)
        return x

    def _check_finite(self, x: torch.Tensor, start: int) -> torch.Tensor | None:
        finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1) if x.ndim > 0 else torch.isfinite(x)
        if bool(finite.all()):
            return x
        bad = (~finite).nonzero().flatten()
        self.nonfinite_samples += int(bad.numel())
        if self.policy is NonFinitePolicy.FAIL:
            raise DataLoadError(f"input holds NaN/inf: sample {start + int(bad[0])} is the first "
                                f"({int(bad.numel())} in its batch)",
                                hint="clean the data, or pass --nonfinite skip (drop them) / keep (scan them)")
        self.skipped_samples += int(bad.numel())
        kept = x[finite]
        return kept if kept.shape[0] else None


def _saturation_of(record: SiteRecord) -> str | None:
    if record.spec.active_rule is ActiveRule.ABOVE_LOWER:
        return "bounds"
    return "floor" if record.spec.floor is not None else None


def _no_sites_error(model: nn.Module, capture: ActivationCapture) -> CaptureError:
    if capture.coverage.activation_modules:
        if capture.coverage.excluded:
            return CaptureError("no activation site left to scan: --layers/--exclude excluded every site",
                                hint=f"sites found: {', '.join(capture.coverage.excluded[:6])}")
        return CaptureError("the model's activation modules never ran on this data",
                            hint=f"modules found: {', '.join(capture.coverage.activation_modules[:6])}")
    types = sorted({type(m).__name__ for m in model.modules()} - {type(model).__name__})
    return CaptureError(
        f"no ReLU-family activation found in {type(model).__name__} (module types: {', '.join(types[:12]) or 'none'})",
        hint=f"deadrelu scans {', '.join(KNOWN_KINDS)} modules and functional calls to them")


def scan(model: nn.Module, data: Any, *, settings: ScanSettings | None = None,
         progress: ProgressCallback | None = None, model_info: Mapping[str, Any] | None = None,
         input_key: str | None = None, scale: float | None = None, partial_on_interrupt: bool = False,
         **overrides: Any) -> ScanResult:
    """Scan a model's ReLU-family activations over a data set.

    Args:
        model: any ``nn.Module`` (DataParallel and ``torch.compile`` wrappers are unwrapped).
        data: a tensor or ndarray (first axis = samples), a data file path, a
            ``DataStream``, or an iterable of batches (tensors, ``(x, y)`` tuples, dicts).
        settings: full settings; or give single ones as keyword overrides
            (``batch_size=64, tau=0.05, device="cpu", granularity="position"``...).
        progress: called as ``progress(samples_done, samples_total_or_None)`` after each batch.
        model_info: metadata about where the model came from, for reports.
        input_key: which entry of dict batches is the model input.
        scale: multiply inputs by this (e.g. 1/255 for uint8 images).
        partial_on_interrupt: on Ctrl-C, return what was seen so far, marked partial.

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
    device = resolve_device(settings.device, model)
    if settings.device is not None:
        model.to(device)
    dtype = model_dtype(model)
    stream = data if isinstance(data, DataStream) else as_stream(data, settings.batch_size, settings.limit)
    prepare = _InputPreparer(dtype, device, settings.nonfinite, input_key, scale)
    samples = batches = 0
    partial = False
    with ActivationCapture(model, settings, device) as capture, torch.inference_mode():
        try:
            for raw in stream.batches():
                inputs = prepare(raw, samples + prepare.skipped_samples)
                if inputs is None:
                    continue
                capture.begin_batch()
                try:
                    model(inputs)
                except DeadReluError:
                    raise
                except Exception as exc:
                    raise _forward_error(exc, model, capture, batches, inputs) from exc
                capture.end_batch()
                samples += batch_length(inputs) or 0
                batches += 1
                if progress is not None:
                    progress(samples, stream.num_samples)
        except KeyboardInterrupt:
            if not partial_on_interrupt or batches == 0:
                raise
            partial = True
        records = capture.records()
        if not records:
            raise _no_sites_error(model, capture)
        sites = [_site_result(capture, record, settings) for record in records]
        not_run = capture.not_run()
        coverage_warnings = list(capture.coverage.warnings)
    if samples == 0:
        raise DataLoadError(f"{stream.source}: no sample was scanned", hint="check the data and --nonfinite")
    warnings = coverage_warnings + list(stream.notes) + prepare.notes
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
                 "skipped": prepare.skipped_samples, "sha256": stream.sha256, "partial": partial}
    info = dict(model_info or {})
    info.setdefault("class", type(model).__name__)
    info.setdefault("parameters", sum(p.numel() for p in model.parameters()))
    info.setdefault("source", f"<{type(model).__name__} object>")
    info.setdefault("format", "object")
    from . import __version__
    environment = {"deadrelu": __version__, "torch": torch.__version__, "device": str(device),
                   "dtype": str(dtype).replace("torch.", ""),
                   "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    coverage = {"activation_modules": len(capture.coverage.activation_modules), "not_run": not_run,
                "excluded": capture.coverage.excluded, "positional_names": False}
    return ScanResult(sites=tuple(sites), summary=Summary.of(sites), settings=settings, model=info, data=data_info,
                      coverage=coverage, warnings=tuple(warnings), environment=environment)


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
                   inputs: torch.Tensor) -> ForwardError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    ran = [name for (name, _function) in capture._calls] if capture._calls else []
    where = f"; activations that ran first: {', '.join(ran[:4])}" if ran else ""
    expected = expected_input(model)
    return ForwardError(
        f"forward pass failed on batch {batch_index} (input shape {tuple(inputs.shape)}): "
        f"{type(exc).__name__}: {text[:300]}{where}",
        hint=(expected + "; check the data's shape") if expected else "check the data's shape and dtype")
