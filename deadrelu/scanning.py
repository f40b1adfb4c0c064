"""The scan: a batch loop over a capture session — load → capture → accumulate → result → judge.

``scan(model, data)`` is what notebook users call and what the CLI calls. It never
prints; progress goes to an optional callback. Feeding the model lives in
``load.inputs``, capture in ``capture.session``, building the result in ``assemble``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import distributed
from .capture.session import CaptureSession
from .capture.sites import ActivationCapture
from .compile_policy import CompileDecision
from .errors import DataLoadError, DeadReluError, ForwardError
from .judge.gate import GateLimits
from .load.data import DataStream, as_stream, fit_batches
from .load.exported import ExportedModel
from .load.inputs import InputPreparer, Prepared, check_batched, expected_input, model_dtype, resolve_device
from .load.model import LoadedModel, unwrap
from .result import ScanResult
from .settings import ScanSettings, build_settings

ProgressCallback = Callable[[int, "int | None"], None]


def _settings(settings: ScanSettings | None, config: str | Path | None, overrides: dict[str, Any]) -> ScanSettings:
    """Settings from defaults, a config file and keyword overrides (overrides win)."""
    if settings is None:
        return build_settings(config=config, **overrides)
    return settings.replace(**overrides) if overrides else settings


@distributed.across_ranks  # a failure on one rank fails every rank; a no-op outside a process group
def scan(model: nn.Module | LoadedModel, data: Any, *, settings: ScanSettings | None = None,
         config: str | Path | None = None, gate: GateLimits | Mapping[str, float | None] | None = None,
         progress: ProgressCallback | None = None, model_info: Mapping[str, Any] | None = None,
         input_key: str | Sequence[str] | None = None, scale: float | None = None,
         partial_on_interrupt: bool = False, input_fn: Callable[[Any], Any] | None = None,
         shuffle_seed: int | None = None, shard: str | distributed.Shard | None = None,
         shard_data: bool = True, **overrides: Any) -> ScanResult:
    """Scan a model's ReLU-family activations over a data set.

    Args:
        model: any ``nn.Module`` (DataParallel and ``torch.compile`` wrappers are unwrapped),
            a TorchScript module, a ``torch.export`` ``ExportedProgram`` or its ``.module()``,
            or a ``LoadedModel`` from ``deadrelu.load_model`` (its provenance and notes go
            into the result).
        data: a tensor or ndarray (first axis = samples), a dict of them, a data file
            path, a ``DataStream``, a ``Dataset``, or an iterable of batches (tensors,
            ``(x, y)`` tuples, ``ModelInputs`` for several inputs, dicts).
        settings: full settings; or give single ones as keyword overrides
            (``batch_size=64, tau=0.05, device="cpu", granularity="position"``...).
        config: a TOML config file (see ``configs/default.toml``); overrides win over it.
            Its ``[gate]`` limits apply unless ``gate`` is given.
        gate: CI gate limits (``{"max_dead_ratio": 0.05}`` or a ``GateLimits``); the
            outcome is in ``result.gate``.
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
            (torchrun) each rank scans only its own block and the ranks' results are
            combined; see ``deadrelu.distributed`` and docs/scale.md.
        shard_data: inside a process group, False when each rank passes its own part of
            the data already (a DataLoader with a ``DistributedSampler``).

    Returns:
        A ``ScanResult`` (data: ``.summary``, ``.sites``, ``.to_frame()``...).

    Raises:
        DeadReluError: bad data, a failing forward pass, or nothing to scan.
    """
    settings = _settings(settings, config, overrides)
    limits = GateLimits.of(gate) if gate is not None else GateLimits.from_config(config)
    notes: list[str] = []
    if isinstance(model, LoadedModel):
        model_info = {**model.info(), **dict(model_info or {})}
        notes += model.notes
        model = model.module
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
    check_batched(model, stream)
    prepare = InputPreparer(dtype, device, settings.nonfinite, input_key, scale, input_fn)
    samples = batches = 0
    partial = False
    session = CaptureSession(model, settings, device, auto_batches=False)
    # FSDP2's unshard reads its parameters' version counters, which inference tensors do not have.
    with session, (torch.no_grad() if lockstep else torch.inference_mode()):
        capture = session.engine
        compile_decision = CompileDecision(settings.compile, capture, stream.num_samples)
        try:
            for raw in stream.batches():
                inputs = prepare(raw, stream.first_sample + samples + prepare.skipped_samples)
                if inputs is None:
                    continue
                session.begin_batch()
                try:
                    model(*inputs.args, **inputs.kwargs)
                except DeadReluError:
                    raise
                except Exception as exc:
                    # Aten-level capture errors come back from TorchScript as bare RuntimeErrors.
                    if isinstance(capture.failure, DeadReluError):
                        raise capture.failure from None
                    raise _forward_error(exc, model, capture, batches, inputs, stream) from exc
                session.end_batch()
                samples += inputs.samples
                batches += 1
                compile_decision.after_batch(batches, samples)
                if progress is not None:
                    progress(samples, stream.num_samples)
        except KeyboardInterrupt:
            if not partial_on_interrupt or batches == 0:
                raise
            partial = True
    if not capture.records():
        session.result(model_info=model_info or {})  # raises the "nothing captured" error
    if samples == 0:
        raise DataLoadError(f"{stream.source}: no sample was scanned", hint="check the data and --nonfinite")
    data_info = {"source": stream.source, "samples": samples, "batches": batches,
                 "sample_shape": list(stream.sample_shape) if stream.sample_shape else None,
                 "dtype": stream.dtype, "nonfinite": prepare.nonfinite_samples,
                 "skipped": prepare.skipped_samples, "sha256": stream.sha256, "partial": partial,
                 "shard": stream.shard}
    notes += list(stream.notes) + prepare.notes + compile_decision.warnings()
    result = session.result(samples=samples, data_info=data_info, model_info=model_info or {}, notes=notes,
                            environment={**compile_decision.environment(), **distributed.environment(model)})
    result = distributed.combine(result, model)  # every rank's part joined (a no-op in one process)
    if result.summary.unobserved == result.summary.units:
        # No unit saw one finite value: a report would claim health it never saw.
        if prepare.nonfinite_samples:
            cause = f"{prepare.nonfinite_samples} of {samples} samples held NaN/inf"
            hint = "clean the data, or pass --nonfinite skip to leave such samples out"
        else:
            cause = "the model's activations were NaN/inf for every sample"
            hint = "check the model's weights and buffers for NaN/inf (torch.isfinite(p).all())"
        raise DataLoadError(f"{stream.source}: nothing was observed: all {result.summary.units} units at "
                            f"{result.summary.sites} site(s) saw only NaN/inf ({cause})", hint=hint)
    return result.with_gate(limits.check(result)) if limits.active else result


def _forward_error(exc: Exception, model: nn.Module, capture: ActivationCapture, batch_index: int,
                   inputs: Prepared, stream: DataStream) -> ForwardError:
    """A failed forward pass with context: which batch, which input shape, which activations had run."""
    # TorchScript re-raises an op's error from inside a dispatch mode without its text.
    exc = capture.op_error or exc
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    if text.startswith("The following operation failed in the TorchScript interpreter") and len(lines) > 1:
        text = lines[-1]  # the TorchScript traceback ends with the error that was raised
    ran = capture.ran_this_batch()
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
