"""Remove dead units exactly: their producer's rows, their BatchNorm entries, their consumers' columns.

A unit can go without changing any output only when it outputs exactly 0 on every
sample: ReLU, ReLU6 and Hardtanh(min_val=0) units that were never active. A
LeakyReLU/PReLU/ELU/SELU/GELU unit that is "dead" still outputs a non-zero value
for negative inputs, so its removal would change the function; those sites are left
alone and say why. Only the scanned data vouches for "never active": the report
carries the sample count and the scan's limit.
"""

from __future__ import annotations

import copy
import fnmatch
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..kinds import ZERO_GRADIENT_KINDS
from ..result import ScanResult, SiteResult
from ..settings import Granularity
from .graph import build_dataflow
from .report import PruneReport, RepairError, SiteChange
from .verify import DataOptions, compare_outputs, count_macs, count_parameters, example_inputs

#: Kinds whose inactive output can be exactly 0: the zero-gradient kinds (ReLU, ReLU6) and Hardtanh,
#: which qualifies only with min_val 0 (enforced per unit: minimum == maximum == 0).
EXACT_KINDS = frozenset(ZERO_GRADIENT_KINDS) | {"Hardtanh"}


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
          atol: float = 1e-5, check: bool = True, **data_options: Any) -> tuple[nn.Module, PruneReport]:
    """Remove every dead unit whose removal is exact, in a copy of ``model``.

    Args:
        model: the scanned model (not changed).
        result: its scan (channel granularity).
        data: the scanned data (anything ``deadrelu.scan`` takes): gives the tracer shapes
            (needed for Conv -> flatten -> Linear) and runs the check. Without it nothing is checked.
        layers: only sites matching these globs.
        atol: allowed output difference relative to the largest absolute output.
        check: raise ``RepairError`` when the check fails (else only report it).
        **data_options: ``batch_size``, ``limit``, ``input_key``, ``scale`` as given to the scan.

    Returns:
        ``(pruned_model, report)``: a new module with smaller layers, and what changed.

    Raises:
        RepairError: the model cannot be traced, or the pruned outputs differ by more than ``atol``.
    """
    options = DataOptions.of(result, **data_options)
    example = example_inputs(model, data, options)
    flow = build_dataflow(model, example)
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
            layer_names = [route.producer, *route.norms, *(c.module for c in route.consumers)]
            for name in layer_names:
                if nn.utils.parametrize.is_parametrized(model.get_submodule(name)):
                    reason = f"{name} is parametrized (weight norm or similar)"
        if reason is not None or route is None:
            changes.append(SiteChange(site.name, site.kind, site.units, skipped=reason, inexact=inexact))
            continue
        plans.setdefault(route.producer, {})["out"] = _keep(exact)
        for norm in route.norms:
            plans.setdefault(norm, {})["out"] = _keep(exact)
        for consumer in route.consumers:
            plans.setdefault(consumer.module, {})["in"] = _keep(exact, consumer.block)
        changes.append(SiteChange(site.name, site.kind, site.units, tuple(np.flatnonzero(exact).tolist()),
                                  route.producer, route.norms, tuple(c.module for c in route.consumers),
                                  inexact=inexact))
    pruned = copy.deepcopy(model)
    for name, plan in plans.items():
        _shrink(pruned.get_submodule(name), plan.get("out"), plan.get("in"))
    before = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    shapes = tuple((k, before[k], tuple(v.shape)) for k, v in pruned.state_dict().items()
                   if k in before and before[k] != tuple(v.shape))
    outcome = compare_outputs(model, pruned, data, options, atol) if data is not None else None
    samples = result.data.get("samples")
    limit = "no limit" if result.settings.limit is None else f"limit {result.settings.limit}"
    warnings = [f"units dead on the {samples} scanned samples ({limit}) may fire on other data: check the "
                "pruned model on held-out data"]
    report = PruneReport(sites=tuple(changes), parameters_before=count_parameters(model),
                         parameters_after=count_parameters(pruned), macs_before=count_macs(model, example),
                         macs_after=count_macs(pruned, example), shapes=shapes, check=outcome, samples=samples,
                         limit=result.settings.limit, graph=flow.source, warnings=tuple(warnings))
    if check and outcome is not None and not outcome.passed:
        raise RepairError(f"the pruned model's outputs differ from the original's by {outcome.max_abs_diff:.3g} "
                          f"(allowed: {outcome.atol:g} x output scale {outcome.output_scale:.3g}); nothing was "
                          "written", hint="a unit was not exactly 0 on every sample; report this with the model")
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
