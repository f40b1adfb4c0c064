"""Remove dead units exactly: their producer's rows, their BatchNorm entries, their consumers' columns.

A unit can go without changing any output only when it outputs exactly 0 on every
sample: ReLU, ReLU6 and Hardtanh(min_val=0) units that were never active, and units
of a gated MLP's product ``act(gate(x)) * up(x)`` that were exactly 0 on every sample
(the gate row, the up row and the down column go together). A LeakyReLU/PReLU/ELU/
SELU/GELU/SiLU unit that is "dead" still outputs a non-zero value for negative inputs,
so its removal would change the function; those sites are left alone and say why.
Only the scanned data vouches for "never active": the report carries the sample count
and the scan's limit, and ``verify_data`` checks other data.
"""

from __future__ import annotations

import copy
import fnmatch
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..kinds import GATED_KINDS, ZERO_GRADIENT_KINDS
from ..result import ScanResult, SiteResult
from ..settings import Granularity
from .tracing import build_dataflow
from .report import Effect, PruneReport, SiteChange
from .verify import (DataOptions, check_atol, compare_outputs, count_macs, count_parameters, example_call, held_out,
                     refusal_reasons, refuse_if_worse, scan_deltas, snapshot)
from .verify import rescan as run_rescan

#: Kinds whose inactive output can be exactly 0: the zero-gradient kinds (ReLU, ReLU6), Hardtanh,
#: which qualifies only with min_val 0, and gated products ``act(gate) * up`` (SwiGLU, GeGLU...),
#: whose dead unit is one whose product was exactly 0 on every sample (enforced per unit:
#: minimum == maximum == 0).
EXACT_KINDS = frozenset(ZERO_GRADIENT_KINDS) | {"Hardtanh"} | frozenset(GATED_KINDS.values()) | {"GLU"}


def exact_zero_units(site: SiteResult) -> np.ndarray:
    """Dead units that output exactly 0 on every scanned sample (mask over the site's units).

    Args:
        site: a scanned site.

    Returns:
        Boolean mask: dead, observed, no NaN/inf, minimum and maximum output both 0, of an exact kind.
    """
    stats = site.stats
    if site.kind not in EXACT_KINDS:
        return np.zeros(site.units, dtype=bool)
    return (site.verdict.dead & (stats.observations > 0) & (stats.nonfinite == 0)
            & (stats.minimum == 0) & (stats.maximum == 0))


def selected(site: SiteResult, layers: Sequence[str] | None) -> bool:
    """Whether a site matches one of the ``layers`` globs (by site or module name); all sites without globs."""
    if not layers:
        return True
    return any(fnmatch.fnmatchcase(site.name, glob) or fnmatch.fnmatchcase(site.module, glob) for glob in layers)


def _keep(mask: np.ndarray, block: int = 1) -> torch.Tensor:
    return torch.from_numpy(np.flatnonzero(np.repeat(~mask, block)))


def _shrink(layer: nn.Module, out_keep: torch.Tensor | None, in_keep: torch.Tensor | None) -> None:
    """Slice a Linear/Conv/BatchNorm in place: ``out_keep`` rows (channels), ``in_keep`` columns."""
    def narrowed(tensor: torch.Tensor, dim: int, keep: torch.Tensor | None) -> torch.Tensor:
        return tensor if keep is None else tensor.index_select(dim, keep.to(tensor.device))

    with torch.no_grad():
        for name in ("weight", "bias"):
            value = getattr(layer, name, None)
            if value is None:
                continue
            new = narrowed(value, 0, out_keep)
            if name == "weight" and value.ndim > 1:
                new = narrowed(new, 1, in_keep)
            setattr(layer, name, nn.Parameter(new.clone(), requires_grad=value.requires_grad))
        for name in ("running_mean", "running_var"):
            value = getattr(layer, name, None)
            if value is not None:
                setattr(layer, name, narrowed(value, 0, out_keep).clone())
    if isinstance(layer, nn.Linear):
        layer.out_features, layer.in_features = layer.weight.shape
    elif isinstance(layer, nn.modules.conv._ConvNd):
        layer.out_channels, layer.in_channels = layer.weight.shape[0], layer.weight.shape[1]
    elif isinstance(layer, nn.modules.batchnorm._BatchNorm):
        reference = layer.running_mean if layer.running_mean is not None else layer.weight
        layer.num_features = int(reference.shape[0])


def prune(model: nn.Module, result: ScanResult, data: Any = None, *, layers: Sequence[str] | None = None,
          atol: float = 1e-5, force: bool = False, verify_data: Any = None, rescan: bool = True,
          **data_options: Any) -> tuple[nn.Module, PruneReport]:
    """Remove every dead unit whose removal is exact, in a copy of ``model``.

    Args:
        model: the scanned model; never changed, never run (its parameters, buffers and
            ``training`` flags stay bit-identical): a snapshot of it is traced and checked.
        result: its scan (channel granularity).
        data: the scanned data (anything ``deadrelu.scan`` takes): gives the tracer shapes
            (needed for Conv -> flatten -> Linear), runs the check (eval mode, against the
            snapshot) and the rescan. Without it nothing is checked.
        layers: only sites matching these globs.
        atol: allowed output difference relative to the largest absolute output (>= 0).
        force: return the pruned model even when a check fails or it made things worse
            (the report says so); else ``RepairRefused`` is raised.
        verify_data: other data to check the pruned model on; the report counts the removed
            units that fire there (default: only the scanned data).
        rescan: scan the pruned model on ``data`` for the before -> after counts.
        **data_options: ``batch_size``, ``limit``, ``input_key``, ``scale`` as given to the scan.

    Returns:
        ``(pruned_model, report)``: a new module with smaller layers (in the caller's
        train/eval mode), and what changed.

    Raises:
        RepairError: the model cannot be traced. RepairRefused: the pruned outputs differ by
            more than ``atol`` (on ``data`` or ``verify_data``), or dead units rose at a site.
        ConfigError: ``atol`` is not a number >= 0.
    """
    check_atol(atol)
    options = DataOptions.of(result, **data_options)
    # Every trace, count and check runs on this copy of the model as given; ``model`` itself is
    # never run, so its parameters, buffers and training flags stay bit-identical.
    reference = snapshot(model)
    example = example_call(reference, data, options) if data is not None else None
    args, kwargs = example if example is not None else (None, None)
    flow = build_dataflow(reference, args, private=True, kwargs=kwargs)
    plans: dict[str, dict[str, torch.Tensor]] = {}
    changes: list[SiteChange] = []
    for site in result.sites:
        if not selected(site, layers) or not site.verdict.dead.any():
            continue
        exact = exact_zero_units(site)
        inexact = int(site.verdict.dead.sum() - exact.sum())
        reason = _skip_reason(site, exact, result)
        route = flow.route(site) if reason is None else None
        if isinstance(route, str):
            reason = route
        if reason is None and route is not None:
            for name in route.layers():
                if nn.utils.parametrize.is_parametrized(reference.get_submodule(name)):
                    reason = f"{name} is parametrized (weight norm or similar)"
        if reason is not None or route is None:
            changes.append(SiteChange(site.name, site.kind, site.units, skipped=reason, inexact=inexact))
            continue
        for producer in route.producers():
            plans.setdefault(producer, {})["out"] = _keep(exact)
        for norm in route.norms:
            plans.setdefault(norm, {})["out"] = _keep(exact)
        for consumer in route.consumers:
            plans.setdefault(consumer.module, {})["in"] = _keep(exact, consumer.block)
        changes.append(SiteChange(site.name, site.kind, site.units, tuple(np.flatnonzero(exact).tolist()),
                                  route.producer, route.norms, tuple(c.module for c in route.consumers),
                                  inexact=inexact, partners=route.partners))
    pruned = copy.deepcopy(reference)
    for name, plan in plans.items():
        _shrink(pruned.get_submodule(name), plan.get("out"), plan.get("in"))
    before = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    shapes = tuple((k, before[k], tuple(v.shape)) for k, v in pruned.state_dict().items()
                   if k in before and before[k] != tuple(v.shape))
    outcome = compare_outputs(reference, pruned, data, options, atol) if data is not None else None
    deltas = scan_deltas(result, run_rescan(pruned, data, result, options)) if data is not None and rescan else ()
    held = held_out(reference, pruned, verify_data, result, changes, options, atol) \
        if verify_data is not None and plans else None
    samples = result.data.get("samples")
    limit = "no limit" if result.settings.limit is None else f"limit {result.settings.limit}"
    removed = sum(len(change.changed) for change in changes)
    if held is not None:  # the report's held-out line says it in full; a warning only when units fire
        warnings = [f"{held.firing} of the {held.changed} removed unit(s) fire on {held.source} "
                    f"({held.check.samples:,} held-out samples): dead on the {samples} scanned samples "
                    f"({limit}) is not dead there"] if held.firing else []
    else:
        warnings = [f"units dead on the {samples} scanned samples ({limit}) may fire on other data: check the "
                    "pruned model on held-out data (verify_data=, --verify-data FILE)"] if removed else []
    worse = refusal_reasons(outcome, deltas, held, "removed", "the pruned model's outputs differ from the original's")
    report = PruneReport(sites=tuple(changes), parameters_before=count_parameters(reference),
                         parameters_after=count_parameters(pruned), macs_before=count_macs(reference, example),
                         macs_after=count_macs(pruned, example), shapes=shapes, check=outcome, samples=samples,
                         limit=result.settings.limit, graph=flow.source, warnings=tuple(warnings),
                         effect=Effect(deltas, worse, force and worse is not None, held))
    hint = ("units dead on the scanned data fire on the held-out data: scan more data; force=True (--force) "
            "prunes anyway") if held is not None and not held.check.passed else \
        "a unit was not exactly 0 on every sample: report this with the model; force=True (--force) prunes anyway"
    refuse_if_worse(report, "prune", "nothing was pruned", hint)
    return pruned, report


def _skip_reason(site: SiteResult, exact: np.ndarray, result: ScanResult) -> str | None:
    if result.settings.granularity is not Granularity.CHANNEL:
        return "scanned with position granularity; prune needs channel units"
    if site.kind not in EXACT_KINDS:
        return f"{site.kind} units are not 0 when inactive: removing them would change the outputs"
    if not exact.any():
        return "no dead unit outputs exactly 0 on every sample"
    if exact.all():
        return "every unit is dead: removing the whole layer changes the architecture"
    return None


__all__ = ["prune", "exact_zero_units", "EXACT_KINDS", "selected"]
