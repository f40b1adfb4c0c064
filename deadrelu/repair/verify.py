"""Checks on the data: run two models on the same batches, count multiply-adds, compare scans.

Batches are prepared exactly as the scan prepares them (same input selection, casts
and device), so "unchanged on the data" means on the data the scan judged.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..load.data import DataStream, as_stream
from ..result import ScanResult
from ..settings import NonFinitePolicy
from .report import HeldOut, OutputCheck, RepairError, RepairRefused, SiteChange, SiteDelta


@dataclass(frozen=True)
class DataOptions:
    """How to feed data to the model, as the scan does (see ``deadrelu.scan``)."""

    batch_size: int = 256
    limit: int | None = None
    input_key: str | Sequence[str] | None = None
    scale: float | None = None
    shuffle_seed: int | None = None
    kwargs: Sequence[str] = ()
    mask: str | None = None
    input_dtype: str = "auto"
    decoder_inputs: bool = False

    @classmethod
    def of(cls, result: ScanResult | None, **options: Any) -> DataOptions:
        """Options given by the caller, else the scan's batch size and limit."""
        base: dict[str, Any] = {}
        if result is not None:
            base = {"batch_size": result.settings.batch_size, "limit": result.settings.limit}
        base.update({k: v for k, v in options.items() if v is not None})
        return cls(**base)


def _device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def iter_inputs(model: nn.Module, data: Any, options: DataOptions) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
    """Yield ``(args, kwargs)`` for each batch of ``data``, prepared as the scan prepares them."""
    from ..load.inputs import InputPreparer
    device, dtype = _device_and_dtype(model)
    stream = data if isinstance(data, DataStream) else as_stream(
        data, options.batch_size, options.limit, shuffle_seed=options.shuffle_seed,
        key=options.input_key if isinstance(data, Mapping) else None)
    prepare = InputPreparer(dtype, device, NonFinitePolicy.SKIP, options.input_key, options.scale,
                            kwarg_keys=tuple(options.kwargs), mask_key=options.mask, input_dtype=options.input_dtype,
                            decoder_inputs=options.decoder_inputs)
    start = 0
    for raw in stream.batches():
        prepared = prepare(raw, start)
        if prepared is None:
            continue
        start += prepared.samples
        yield prepared.args, prepared.kwargs


def example_inputs(model: nn.Module, data: Any, options: DataOptions) -> tuple[Any, ...] | None:
    """The first batch's positional inputs (for tracing and export), or None when there is no data."""
    if data is None:
        return None
    for args, _kwargs in iter_inputs(model, data, options):
        return args
    raise RepairError("the data holds no sample to run the model on", hint="check the data and --limit")


def example_call(model: nn.Module, data: Any, options: DataOptions) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The first batch as ``(args, kwargs)``, as the model is called with it (for ``torch.export``).

    Raises:
        RepairError: the data holds no sample.
    """
    for args, kwargs in iter_inputs(model, data, options):
        return args, kwargs
    raise RepairError("the data holds no sample to run the model on", hint="check the data and --limit")


def _leaves(output: Any) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_leaves
    return [leaf for leaf in tree_leaves(output) if isinstance(leaf, torch.Tensor)]


class EvalMode:
    """Models in eval mode for the ``with`` block; every module's ``training`` flag restored after."""

    def __init__(self, *models: nn.Module) -> None:
        self.models = models
        self.flags: list[list[bool]] = []

    def __enter__(self) -> None:
        self.flags = [[m.training for m in model.modules()] for model in self.models]
        for model in self.models:
            model.eval()

    def __exit__(self, *exc: Any) -> None:
        for model, flags in zip(self.models, self.flags):
            for module, flag in zip(model.modules(), flags):
                module.training = flag


def snapshot(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` as given (parameters, buffers, ``training`` flags): the reference every
    "outputs unchanged" check runs against, and what an in-place repair restores from."""
    return copy.deepcopy(model)


def compare_outputs(reference: nn.Module, candidate: nn.Module, data: Any, options: DataOptions,
                    atol: float | None = None) -> OutputCheck:
    """Run both models (in eval mode) on every batch of ``data`` and measure how far their outputs differ.

    Args:
        reference: the original model.
        candidate: the repaired model.
        data: what ``deadrelu.scan`` accepts.
        options: batching, as the scan did it.
        atol: allowed difference relative to the largest absolute reference output.

    Returns:
        The largest difference, the output scale and the samples compared.

    Raises:
        RepairError: the candidate's forward failed or its outputs have another structure.
    """
    worst, scale, samples = 0.0, 0.0, 0
    with EvalMode(reference, candidate), torch.no_grad():
        for args, kwargs in iter_inputs(reference, data, options):
            expected = _leaves(reference(*args, **kwargs))
            try:
                got = _leaves(candidate(*args, **kwargs))
            except Exception as exc:
                raise RepairError(f"the repaired model's forward failed: {type(exc).__name__}: "
                                  f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}",
                                  hint="the forward may hard-code a layer width (x.view(-1, 512)); "
                                       "nothing was written") from None
            if [t.shape for t in expected] != [t.shape for t in got]:
                raise RepairError(f"the repaired model's outputs have shapes {[tuple(t.shape) for t in got]}, "
                                  f"the original's {[tuple(t.shape) for t in expected]}",
                                  hint="nothing was written")
            for want, have in zip(expected, got):
                if not want.is_floating_point():
                    worst = max(worst, float((want != have).any()))
                    continue
                want64, have64 = want.double(), have.double()
                finite = torch.isfinite(want64)
                if finite.any():
                    scale = max(scale, float(want64[finite].abs().max()))
                both_same = (want64 == have64) | (torch.isnan(want64) & torch.isnan(have64))
                diff = torch.where(both_same, torch.zeros_like(want64), (want64 - have64).abs())
                worst = max(worst, float(torch.nan_to_num(diff, nan=float("inf")).max()) if diff.numel() else 0.0)
            samples += _batch_size(args, kwargs)
    return OutputCheck(max_abs_diff=worst, output_scale=scale, samples=samples, atol=atol)


def _batch_size(args: tuple, kwargs: dict) -> int:
    """Samples in one batch: the leading size of its first tensor, positional or keyword (a Hugging
    Face model is fed ``input_ids=`` only), else 1."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.ndim:
            return int(value.shape[0])
    return 1


def count_parameters(model: nn.Module) -> int:
    """Parameters of the model (shared ones once)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example: tuple[Sequence[Any], Mapping[str, Any]] | None) -> int | None:
    """Multiply-adds per sample on the example batch ``(args, kwargs)`` (``FlopCounterMode`` / 2), or None."""
    if example is None:
        return None
    from torch.utils.flop_counter import FlopCounterMode
    args, kwargs = example
    first = next((t for t in [*args, *kwargs.values()] if isinstance(t, torch.Tensor)), None)
    batch = int(first.shape[0]) if first is not None and first.ndim else 1
    try:
        with EvalMode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*args, **kwargs)
    except Exception:
        return None
    return int(counter.get_total_flops()) // 2 // max(batch, 1)


def scan_deltas(before: ScanResult, after: ScanResult) -> tuple[SiteDelta, ...]:
    """Per site (matched by name): units, dead, never active (leaky kinds) and dormant before -> after.

    Args:
        before: the scan of the original model.
        after: the scan of the repaired model on the same data.

    Returns:
        One ``SiteDelta`` per site of ``before`` (``None`` counts where the site is gone).
    """
    later = {site.name: site for site in after.sites}
    deltas = []
    for site in before.sites:
        other = later.get(site.name)
        deltas.append(SiteDelta(site.name, site.units, other.units if other else None, site.dead,
                                other.dead if other else None, site.dormant, other.dormant if other else None,
                                site.never_active, other.never_active if other else None))
    return tuple(deltas)


def firing(after: ScanResult, changes: Sequence[SiteChange]) -> tuple[int, int]:
    """Of the changed units, how many were active at least once in ``after``: ``(firing, changed)``."""
    sites = {site.name: site for site in after.sites}
    fired = total = 0
    for change in changes:
        site = sites.get(change.site)
        if site is None or not change.changed:
            continue
        active = site.stats.active[np.asarray(change.changed, dtype=int)]
        fired += int((active > 0).sum())
        total += len(change.changed)
    return fired, total


def check_atol(atol: Any) -> float:
    """``atol`` as a float, or ``ConfigError``: it must be a finite number >= 0 (NaN would pass nothing,
    a negative tolerance nothing either, and the error would come only after the whole repair)."""
    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not math.isfinite(atol) or atol < 0:
        raise ConfigError(f"atol must be a finite number >= 0, got {atol!r:.40}",
                          hint="--atol 1e-5 (a share of the largest absolute output); 0 demands identical outputs")
    return float(atol)


def rescan(model: nn.Module, data: Any, before: ScanResult, options: DataOptions) -> ScanResult:
    """Scan ``model`` on ``data`` as ``before`` was scanned (its settings; the model stays on its device).

    Args:
        model: the repaired (or the original) model; its flags are restored by the scan.
        data: what ``deadrelu.scan`` accepts.
        before: the scan whose settings (thresholds, granularity, layers...) to repeat.
        options: batching and input selection.

    Returns:
        The new scan.
    """
    from ..scanning import scan
    settings = dataclasses.replace(before.settings, device=None, batch_size=options.batch_size, limit=options.limit)
    return scan(model, data, settings=settings, input_key=options.input_key, scale=options.scale,
                shuffle_seed=options.shuffle_seed, kwargs=options.kwargs, mask=options.mask,
                input_dtype=str(getattr(options.input_dtype, "value", options.input_dtype)),
                decoder_inputs=options.decoder_inputs)


def made_worse(check: OutputCheck | None, deltas: Sequence[SiteDelta]) -> list[str]:
    """Why a change made the model worse, with the numbers: outputs moved by more than their
    scale (the largest absolute original output), dead units that rose at any site.

    Args:
        check: original vs changed outputs on the data (None: not run).
        deltas: per site, the scan before and the rescan after.

    Returns:
        One phrase per reason (empty: not worse).
    """
    reasons = []
    if check is not None and check.max_abs_diff > check.output_scale:
        reasons.append(f"outputs moved by {check.max_abs_diff:.3g}, more than the output scale "
                       f"{check.output_scale:.3g}")
    rose = [d for d in deltas if d.dead_after is not None and d.dead_after > d.dead_before]
    if rose:
        listed = ", ".join(f"{d.site} {d.dead_before} -> {d.dead_after}" for d in rose[:3])
        more = f" and {len(rose) - 3} more" if len(rose) > 3 else ""
        reasons.append(f"dead units rose at {len(rose)} site(s): {listed}{more}")
    return reasons


def describe_data(data: Any) -> str:
    """A short name for a data set in messages: its file for a stream, else its kind."""
    if isinstance(data, DataStream):
        return str(data.source)
    if isinstance(data, torch.Tensor | np.ndarray):
        return f"the given {type(data).__name__} of shape {tuple(data.shape)}"
    return f"the given {type(data).__name__}"


def held_out(reference: nn.Module, candidate: nn.Module, verify_data: Any, before: ScanResult,
             changes: Sequence[SiteChange], options: DataOptions, atol: float | None) -> HeldOut:
    """Check a repair on other data than the scan's: outputs, and the changed units that fire there.

    Args:
        reference: the model as given (scanned on ``verify_data`` here, in eval mode).
        candidate: the repaired model.
        verify_data: held-out data (anything ``deadrelu.scan`` accepts).
        before: the scan of ``reference`` on the scanned data (settings to repeat).
        changes: the repair's per-site changes (which units were removed or recycled).
        options: batching and input selection.
        atol: allowed output difference relative to the output scale.

    Returns:
        The check on ``verify_data`` and how many changed units are active there.
    """
    fired, changed = firing(rescan(reference, verify_data, before, options), changes)
    check = compare_outputs(reference, candidate, verify_data, options, atol)
    return HeldOut(describe_data(verify_data), check, fired, changed)


def held_out_reason(held: HeldOut | None, noun: str) -> list[str]:
    """The refusal phrase when the check on held-out data failed (empty when it passed)."""
    if held is None or held.check.passed:
        return []
    return [f"{held.firing} of {held.changed} {noun} unit(s) fire on {held.source} "
            f"({held.check.samples:,} samples): outputs there moved by {held.check.max_abs_diff:.3g} "
            f"(allowed: {held.check.atol:g} x output scale {held.check.output_scale:.3g})"]


def refusal_reasons(outcome: OutputCheck | None, deltas: Sequence[SiteDelta], held: HeldOut | None,
                    noun: str, moved: str) -> str | None:
    """Why an exact repair (prune, recycle) is refused, joined with '; ', or None.

    Args:
        outcome: the check on the scanned data; when it failed, ``moved`` names what moved (its line
            comes first and stands in for ``made_worse``'s own "outputs moved" line).
        deltas: the rescan's per-site changes.
        held: the check on held-out data.
        noun: what the repair did to the units ("removed", "recycled").
        moved: "the pruned model's outputs differ from the original's", "recycling moved the outputs".
    """
    reasons = held_out_reason(held, noun)
    failed = outcome is not None and not outcome.passed
    if failed:
        assert outcome is not None
        reasons.insert(0, f"{moved} by {outcome.max_abs_diff:.3g} (allowed: {outcome.atol:g} x output scale "
                          f"{outcome.output_scale:.3g})")
    reasons += [reason for reason in made_worse(outcome, deltas) if not (failed and reason.startswith("outputs moved"))]
    return "; ".join(reasons) or None


def refuse_if_worse(report: Any, what: str, undone: str, hint: str) -> None:
    """Raise ``RepairRefused`` (carrying ``report``) when its effect is worse and was not forced."""
    effect = report.effect
    if effect.worse is not None and not effect.forced:
        raise RepairRefused(f"{what} refused: {effect.worse}; {undone}", hint=hint, reason=effect.worse,
                            report=report)


__all__ = ["DataOptions", "EvalMode", "snapshot", "iter_inputs", "example_inputs", "example_call", "compare_outputs",
           "count_parameters", "count_macs", "check_atol", "SiteDelta", "scan_deltas", "firing", "rescan", "made_worse",
           "held_out", "held_out_reason", "describe_data", "refuse_if_worse"]
