"""The scan: a batch loop over a capture session — load → capture → accumulate → result → judge.

``scan(model, data)`` is what notebook users call and what the CLI calls. It never
prints; progress goes to an optional callback. Feeding the model lives in
``load.inputs``, capture in ``capturing.session``, building the result in ``assemble``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import distributed
from .capturing.session import CaptureSession
from .compile_policy import CompileDecision
from .errors import DataLoadError, DeadReluError, ForwardError, ModelLoadError
from .judge.gate import GateLimits
from .load.data import DataStream, fit_batches
from .load.exported import ExportedModel
from .load.inputs import (InputPreparer, Prepared, RunningModules, check_batched, describe_module, expected_input,
                          is_dtype_error, is_embedding, is_missing_input, model_dtype, resolve_device)
from .load.model import LoadedModel, unwrap
from .load.sources import Opened, open_inputs
from .load.spec import Inputs
from .result import ScanResult
from .settings import ScanSettings, build_settings

ProgressCallback = Callable[[int, "int | None"], None]


def _settings(settings: ScanSettings | None, config: str | Path | None, overrides: dict[str, Any]) -> ScanSettings:
    """Settings from defaults, a config file and keyword overrides (overrides win)."""
    if settings is None:
        return build_settings(config=config, **overrides)
    return settings.replace(**overrides) if overrides else settings


def scan(model: nn.Module | LoadedModel | Inputs | str | os.PathLike, data: Any = None, *,
         settings: ScanSettings | None = None, config: str | Path | None = None,
         gate: GateLimits | Mapping[str, float | None] | None = None, progress: ProgressCallback | None = None,
         model_info: Mapping[str, Any] | None = None, input_key: str | Sequence[str] | None = None,
         scale: float | None = None, partial_on_interrupt: bool = False, input_fn: Callable[[Any], Any] | None = None,
         shuffle_seed: int | None = None, kwargs: str | Sequence[str] | None = None, mask: str | None = None,
         input_dtype: str | None = None, shard: str | distributed.Shard | None = None, shard_data: bool = True,
         timeout: float | None = None, group: distributed.ScanGroup | bool | None = None, optimizer: Any = None,
         **options: Any) -> ScanResult:
    """Scan a model's ReLU-family activations over a data set.

    Args:
        model: any ``nn.Module`` (DataParallel and ``torch.compile`` wrappers are unwrapped),
            a TorchScript module, a ``torch.export`` ``ExportedProgram`` or its ``.module()``,
            a ``LoadedModel`` from ``deadrelu.load_model`` (its provenance and notes go into
            the result), a model file or Hugging Face folder (any format ``deadrelu scan``
            reads), or an ``Inputs`` describing model and data at once (then leave ``data`` out).
        data: a tensor or ndarray (first axis = samples), a dict of them, a data file path
            (text too: a Hugging Face folder's own tokenizer reads it), a ``DataStream``, a
            ``Dataset``, or an iterable of batches (tensors, ``(x, y)`` tuples,
            ``ModelInputs`` for several inputs, dicts).
        settings: full settings; or give single ones as keyword options
            (``batch_size=64, tau=0.05, device="cpu", granularity="position"``...).
        config: a TOML config file (see ``configs/default.toml``); options win over it.
            Its ``[gate]`` limits apply unless ``gate`` is given; its ``[inputs]`` table
            describes the model and data when they are not given here.
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
        kwargs: entries of dict batches (or of a dict of arrays given as ``data``) fed as
            keyword arguments of the same name: ``kwargs=["input_ids", "attention_mask"]``
            calls ``model(input_ids=..., attention_mask=...)``. Entries named ``labels``
            are never fed unless named here.
        mask: the entry that is the padding mask, ``(N, L)``, 1 = real token, 0 = padding
            (fed to the model only when also in ``kwargs``). At every site whose
            activation starts with the ``(N, L)`` axes, padded positions are left out of
            every statistic; other sites are listed in the result's coverage.
        input_dtype: ``auto`` (integer data keep their dtype unless a floating layer
            rejects them or ``scale`` is given; then they are cast), ``keep`` or ``float``.
        shard: ``"I/N"``: scan only part I of N disjoint parts of the samples (merge the
            parts with ``deadrelu.merge.merge_results``).
        shard_data: with ``group``, False when each rank passes its own part of the data
            already (a DataLoader with a ``DistributedSampler``).
        timeout: with ``group``, the most seconds a rank waits for the others where they
            meet (the data check, the combine step); a rank that does not arrive is named
            in the error. None: the process's current timeout
            (``deadrelu.distributed.set_timeout``; 300 s at first).
        group: scan across the ranks of a process group: ``True`` for the default group
            (``torch.distributed.init_process_group``), or a ``deadrelu.distributed.ScanGroup``.
            Every rank calls ``scan`` with the same data; each scans its own block and every
            rank gets the combined result (see docs/scale.md). None (the default): this
            process alone, whatever group is initialised.
        optimizer: the optimizer the model was trained with, or its ``state_dict()`` (a
            ``LoadedModel`` from a checkpoint that saved one brings it along): the suggestions
            read its step sizes to tell a too-high learning rate.
        **options: any other option of the inputs (``deadrelu.Inputs``: ``tokenizer``,
            ``text_field``, ``max_length``, ``key``, ``columns``, ``arch``, ``hf_class``,
            ``decoder_inputs``...) or any scan setting (``ScanSettings``/``Thresholds``).

    Returns:
        A ``ScanResult`` (data: ``.summary``, ``.sites``, ``.to_frame()``...).

    Raises:
        DeadReluError: bad data, a failing forward pass, or nothing to scan.
    """
    input_options, overrides = Inputs.split(options)
    settings = _settings(settings, config, overrides)
    described = _described(model, data, config, dict(
        input_key=input_key, scale=scale, input_fn=input_fn, shuffle_seed=shuffle_seed, kwargs=kwargs, mask=mask,
        input_dtype=input_dtype, **input_options))
    limits = GateLimits.of(gate) if gate is not None else GateLimits.from_config(config)
    ranks = distributed.joined(group)
    if ranks is not None:
        distributed.set_timeout(timeout)
    with distributed.agreeing(ranks):  # a failure on one rank fails every rank
        opened = open_inputs(described, batch_size=settings.batch_size, limit=settings.limit)
        result = _scan(opened, settings, model_info, progress, partial_on_interrupt, shard, shard_data, ranks,
                       optimizer)
    return result.with_gate(limits.check(result)) if limits.active else result


def _described(model: Any, data: Any, config: str | Path | None, options: dict[str, Any]) -> Inputs:
    """The inputs a ``scan`` call names: its model and data, or an ``Inputs``, over the config's ``[inputs]``."""
    base = Inputs.from_config(config) if config is not None else Inputs()
    if isinstance(model, Inputs):
        return base.with_values(**{name: getattr(model, name) for name in Inputs.fields()}) \
            .with_values(data=data, **options)
    return base.with_values(model=model, data=data, **options)


def _scan(opened: Opened, settings: ScanSettings, model_info: Mapping[str, Any] | None,
          progress: ProgressCallback | None, partial_on_interrupt: bool, shard: str | distributed.Shard | None,
          shard_data: bool, ranks: distributed.ScanGroup | None, optimizer: Any) -> ScanResult:
    """The batch loop over opened inputs (this rank's part, combined across ``ranks``)."""
    notes: list[str] = []
    if opened.model.format != "object":  # a module given in Python has no provenance to report
        model_info = {**opened.model.info(), **dict(model_info or {})}
        notes += opened.model.notes
    optimizer = optimizer if optimizer is not None else opened.model.optimizer_state
    model = unwrap(opened.model.module)
    if isinstance(model, torch.export.ExportedProgram):
        model = ExportedModel(model)
    # A model spread over several devices (device_map="auto", pipeline stages) stays where it is under "auto".
    spread = distributed.spread_over_devices(model, settings.device)
    device = resolve_device(None if spread else settings.device, model)
    if settings.device is not None and not spread:
        model.to(device)
    dtype = model_dtype(model)
    # This process's part: shard I/N, then this rank's block of it (the whole stream in one process).
    lockstep = distributed.needs_lockstep(model)  # FSDP: the forward pass is a collective
    stream = distributed.shard_stream(opened.stream, shard, group=ranks, split_ranks=shard_data,
                                      lockstep=lockstep and ranks is not None)
    if isinstance(model, ExportedModel):
        # An exported program accepts only the batch sizes it was exported for.
        stream = fit_batches(stream, *model.batch_bounds, settings.batch_size)
    check_batched(model, stream)
    prepare = InputPreparer.of(opened.feeding, dtype, device, settings.nonfinite)
    samples = batches = 0
    partial = False
    session = CaptureSession(model, settings, device, auto_batches=False)
    # FSDP2's unshard reads its parameters' version counters, which inference tensors do not have.
    with session, (torch.no_grad() if lockstep else torch.inference_mode()):
        compile_decision = CompileDecision(settings.compile, session.reduction, stream.num_samples)
        try:
            for raw in stream.batches():
                inputs = prepare(raw, stream.first_sample + samples + prepare.skipped_samples)
                if inputs is None:
                    continue
                if batches == 0:
                    inputs = _first_forward(model, session, prepare, raw, inputs, stream)
                else:
                    session.begin_batch(inputs.mask)
                    try:
                        model(*inputs.args, **inputs.kwargs)
                    except DeadReluError:
                        raise
                    except Exception as exc:
                        raise _failed(exc, model, session, batches, inputs, stream, None) from exc
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
    if not session.records():
        session.result(model_info=model_info or {})  # raises the "nothing captured" error
    if samples == 0:
        raise DataLoadError(f"{stream.source}: no sample was scanned", hint="check the data and --nonfinite")
    data_info = {"source": stream.source, "samples": samples, "batches": batches,
                 "sample_shape": list(stream.sample_shape) if stream.sample_shape else None,
                 "dtype": stream.dtype, "nonfinite": prepare.nonfinite_samples,
                 "skipped": prepare.skipped_samples, "sha256": stream.sha256, "partial": partial,
                 "mask": prepare.mask_key or prepare.auto_mask, "shard": stream.shard}
    notes += list(stream.notes) + prepare.notes + compile_decision.warnings()
    result = session.result(samples=samples, data_info=data_info, model_info=model_info or {}, notes=notes,
                            environment={**compile_decision.environment(),
                                         **distributed.environment(model, ranks)})
    if ranks is not None:
        result = ranks.combine(result, model)  # every rank's part joined
    if optimizer is not None and result.suggestions:
        from .judge.suggestions import suggest
        result = result.with_suggestions(suggest(result, model, optimizer_state=optimizer))
    if result.summary.unobserved == result.summary.units:
        # No unit saw one finite value: a report would claim health it never saw.
        if prepare.nonfinite_samples:
            cause = f"{prepare.nonfinite_samples} of {samples} samples held NaN/inf"
            hint = "clean the data, or pass --nonfinite skip to leave such samples out"
        else:
            bad = nonfinite_tensors(model)
            if bad:
                shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
                raise ModelLoadError(f"the model's weights are not finite: {shown} hold NaN/inf, so every "
                                     f"activation was NaN/inf and nothing was observed (the data is finite)",
                                     hint="load weights saved before training diverged (torch.isfinite(p).all() "
                                          "on each parameter finds them)")
            cause = "the model's activations were NaN/inf for every sample"
            hint = "check the model's weights and buffers for NaN/inf (torch.isfinite(p).all())"
        raise DataLoadError(f"{stream.source}: nothing was observed: all {result.summary.units} units at "
                            f"{result.summary.sites} site(s) saw only NaN/inf ({cause})", hint=hint)
    return result


def nonfinite_tensors(model: nn.Module) -> list[str]:
    """Names of the model's floating parameters and buffers that hold NaN or inf.

    Args:
        model: the scanned model.

    Returns:
        Their names (``0.weight``), in the model's order; empty when all are finite.
    """
    named = [*model.named_parameters(), *model.named_buffers()]
    return [name for name, tensor in named
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor.detach()).all())]


def _first_forward(model: nn.Module, session: CaptureSession, prepare: InputPreparer, raw: Any,
                   inputs: Prepared, stream: DataStream) -> Prepared:
    """Run the first batch, tracking which module is running so that a failure names the
    layer that rejected the input. Integer data a floating layer rejects (uint8 images
    fed as they are) are cast and the batch run again, once; the report says so.

    Returns:
        The inputs the batch ran with.
    """
    for attempt in (0, 1):
        session.begin_batch(inputs.mask)
        running = RunningModules(model)
        try:
            with running:
                model(*inputs.args, **inputs.kwargs)
            return inputs
        except DeadReluError:
            raise
        except Exception as exc:
            if isinstance(session.failure, DeadReluError):
                raise session.failure from None
            # The root alone says nothing (a TorchScript or exported model runs its layers
            # without Python hooks): then the hint describes the model's first layer.
            rejected = running.innermost if running.innermost and running.innermost[0] else None
            if not session.sees_modules:
                rejected = None  # the wrapper's Python modules are not the graph's layers
            error = session.op_error or exc
            # Retried only before any site saw a tensor, so nothing of the failed pass is counted.
            if (attempt == 0 and prepare.fed_integers and not prepare.integers_cast
                    and prepare.input_dtype.value == "auto" and is_dtype_error(error)
                    and not is_embedding(rejected[1] if rejected else None) and not session.records()):
                where = f"{rejected[0] or '<root>'} ({describe_module(rejected[1])})" if rejected else "the model"
                prepare.cast_integers(f"integer data cast to {str(prepare.dtype).replace('torch.', '')}: {where} "
                                      "rejected them as they were (--input-dtype float says so up front; "
                                      "--scale 0.00392 for 0-255 images)")
                retried = prepare(raw, stream.first_sample)
                if retried is None:
                    raise
                inputs = retried
                continue
            raise _failed(exc, model, session, 0, inputs, stream, rejected) from exc
    raise AssertionError("unreachable")  # pragma: no cover


def _failed(exc: Exception, model: nn.Module, capture: CaptureSession, batch_index: int, inputs: Prepared,
            stream: DataStream, rejected: tuple[str, nn.Module] | None) -> DeadReluError:
    """The error to raise for a failed forward pass (the capture's own, or a ForwardError)."""
    # Aten-level capture errors come back from TorchScript as bare RuntimeErrors.
    if isinstance(capture.failure, DeadReluError):
        return capture.failure
    return _forward_error(exc, model, capture, batch_index, inputs, stream, rejected)


def _forward_error(exc: Exception, model: nn.Module, capture: CaptureSession, batch_index: int,
                   inputs: Prepared, stream: DataStream,
                   rejected: tuple[str, nn.Module] | None = None) -> ForwardError:
    """A failed forward pass with context: which batch, which input shape, which activations had run,
    and (first batch) which module rejected the input."""
    # TorchScript re-raises an op's error from inside a dispatch mode without its text.
    exc = capture.op_error or exc
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    if text.startswith("The following operation failed in the TorchScript interpreter") and len(lines) > 1:
        text = lines[-1]  # the TorchScript traceback ends with the error that was raised
    ran = capture.ran_this_batch()
    where = f"; activations that ran first: {', '.join(ran[:4])}" if ran else ""
    fed = ", ".join(str(shape) for shape in inputs.shapes)
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in (*inputs.args, *inputs.kwargs.values())
                     if isinstance(v, torch.Tensor)})
    data_shape = ""
    if stream.sample_shape is not None:
        total = stream.total_samples if stream.total_samples is not None else stream.num_samples
        data_shape = f"data shape {(total, *stream.sample_shape)}, "
    if is_missing_input(exc):
        # Not a dtype or shape problem: the model was not given an input it needs.
        given = ", ".join(([f"{len(inputs.args)} positional"] if inputs.args else []) + list(inputs.kwargs))
        culprit = f"{rejected[0] or '<root>'} ({describe_module(rejected[1])})" if rejected else "the model"
        hint = (f"{culprit} was not fed an input it needs (fed: {given or 'nothing'}); feed each input by name with "
                "--kwarg NAME (kwargs=[...] in Python); an encoder-decoder's decoder gets the input ids unless "
                "decoder_inputs=False")
    elif rejected is not None:
        name, module = rejected
        label = f"{name or '<root>'} ({describe_module(module)})"
        if is_embedding(module):
            hint = f"{label} rejected the input: it looks up integer ids; feed int64 token ids"
        elif is_dtype_error(exc) and any(d.startswith(("int", "uint", "bool")) for d in dtypes):
            hint = (f"{label} rejected the {'/'.join(dtypes)} input: pass --input-dtype float "
                    "(and --scale for 0-255 images)")
        else:
            hint = f"{label} rejected the input ({'/'.join(dtypes)}); check the data's shape and dtype"
    else:
        expected = expected_input(model)
        hint = (expected + "; check the data's shape") if expected else "check the data's shape and dtype"
    return ForwardError(
        f"forward pass failed on batch {batch_index} of {stream.source} ({data_shape}batch fed {fed}): "
        f"{type(exc).__name__}: {text[:300]}{where}", hint=hint)
