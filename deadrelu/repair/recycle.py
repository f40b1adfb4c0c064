"""Give dead units a new start: ReDo recycling (function-preserving) and He re-initialisation (destructive).

ReDo (Sokar et al., 2023, "The Dormant Neuron Phenomenon in Deep RL"): for each
recycled unit, draw new incoming weights with the layer's own initialisation, set its
bias to 0 (and its BatchNorm entries to their initial values), and set its outgoing
weights in every consuming layer to 0. The network's function is unchanged at that
moment, because nothing reads the unit any more, while the unit computes a fresh
pre-activation and gets gradient again. Optimizer moments for the changed rows and
columns are reset so that stale Adam statistics do not push the new weights.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..result import ScanResult, SiteResult
from .graph import Dataflow, UnitRoute, build_dataflow
from .prune import selected
from .report import OutputCheck, RecycleReport, ReinitReport, RepairError, SiteChange
from .verify import DataOptions, compare_outputs, example_inputs

UNIT_VERDICTS = ("dead", "dormant")


def _mask(site: SiteResult, units: str) -> np.ndarray:
    if units not in UNIT_VERDICTS:
        raise RepairError(f"units={units!r}: recycle takes 'dead' or 'dormant'", hint="--recycle dead|dormant")
    return site.verdict.dead if units == "dead" else site.verdict.dormant


def _rows_and_columns(model: nn.Module, route: UnitRoute, index: torch.Tensor) -> list[tuple[str, nn.Parameter, int, torch.Tensor]]:
    """``(name, parameter, dim, indices)`` of every slice a recycle touches."""
    touched: list[tuple[str, nn.Parameter, int, torch.Tensor]] = []
    for layer_name in (route.producer, *route.norms):
        layer = model.get_submodule(layer_name)
        for name in ("weight", "bias"):
            param = getattr(layer, name, None)
            if isinstance(param, nn.Parameter):
                touched.append((f"{layer_name}.{name}", param, 0, index))
    for consumer in route.consumers:
        layer = model.get_submodule(consumer.module)
        columns = (index[:, None] * consumer.block + torch.arange(consumer.block)).flatten()
        touched.append((f"{consumer.module}.weight", layer.weight, 1, columns))
    return touched


@torch.no_grad()
def _recycle_site(model: nn.Module, route: UnitRoute, index: torch.Tensor) -> None:
    producer = model.get_submodule(route.producer)
    fresh = copy.deepcopy(producer)
    if hasattr(fresh, "reset_parameters"):
        fresh.reset_parameters()  # the layer's own initialisation (kaiming_uniform(a=sqrt(5)) for Linear/Conv)
    producer.weight[index.to(producer.weight.device)] = fresh.weight[index.to(fresh.weight.device)]
    if producer.bias is not None:
        producer.bias[index.to(producer.bias.device)] = 0.0
    for norm_name in route.norms:
        _reset_norm_entries(model.get_submodule(norm_name), index)
    for consumer in route.consumers:
        layer = model.get_submodule(consumer.module)
        columns = (index[:, None] * consumer.block + torch.arange(consumer.block)).flatten()
        layer.weight[:, columns.to(layer.weight.device)] = 0.0


@torch.no_grad()
def _reset_norm_entries(norm: nn.Module, index: torch.Tensor) -> None:
    for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
        tensor = getattr(norm, name, None)
        if tensor is not None:
            tensor[index.to(tensor.device)] = value


def _reset_optimizer(optimizer: torch.optim.Optimizer, touched: list[tuple[str, nn.Parameter, int, torch.Tensor]]
                     ) -> list[str]:
    """Zero every per-element optimizer state (exp_avg, exp_avg_sq, max_exp_avg_sq, momentum) in the slices."""
    names: list[str] = []
    for name, param, dim, index in touched:
        state = optimizer.state.get(param)
        if not state:
            continue
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                value.index_fill_(dim, index.to(value.device), 0.0)
        names.append(name)
    return sorted(set(names))


def _plan(flow: Dataflow, result: ScanResult, units: str, layers: Sequence[str] | None, model: nn.Module
          ) -> tuple[list[SiteChange], list[tuple[UnitRoute, torch.Tensor]]]:
    changes: list[SiteChange] = []
    work: list[tuple[UnitRoute, torch.Tensor]] = []
    for site in result.sites:
        mask = _mask(site, units)
        if not selected(site, layers) or not mask.any():
            continue
        route = flow.route(site)
        if isinstance(route, str):
            changes.append(SiteChange(site.name, site.kind, site.units, skipped=route))
            continue
        indices = np.flatnonzero(mask)
        work.append((route, torch.from_numpy(indices)))
        changes.append(SiteChange(site.name, site.kind, site.units, tuple(indices.tolist()), route.producer,
                                  route.norms, tuple(c.module for c in route.consumers)))
    return changes, work


def recycle(model: nn.Module, result: ScanResult, units: str = "dead", optimizer: torch.optim.Optimizer | None = None,
            data: Any = None, *, layers: Sequence[str] | None = None, atol: float = 1e-5, check: bool = True,
            **data_options: Any) -> RecycleReport:
    """Recycle dead (or dormant) units in place, ReDo-style.

    Args:
        model: the scanned model; changed in place (parameters keep their identity, so
            an optimizer built on them stays valid).
        result: its scan.
        units: ``dead`` or ``dormant`` (ReDo's tau-dormant units; ``result.settings.thresholds.tau``).
        optimizer: if given, its state for the changed rows and columns is zeroed.
        data: the scanned data; if given, outputs before and after are compared.
        layers: only sites matching these globs.
        atol: allowed output difference relative to the largest absolute output.
        check: when the outputs moved by more than ``atol``, undo the change and raise.
        **data_options: ``batch_size``, ``limit``, ``input_key``, ``scale``.

    Returns:
        What was recycled, where, and the check.

    Raises:
        RepairError: the check failed (the model is restored first), or the model cannot be traced.
    """
    options = DataOptions.of(result, **data_options)
    example = example_inputs(model, data, options)
    flow = build_dataflow(model, example)
    changes, work = _plan(flow, result, units, layers, model)
    reference = copy.deepcopy(model) if data is not None else None
    for route, index in work:
        _recycle_site(model, route, index)
    outcome: OutputCheck | None = None
    if reference is not None:
        outcome = compare_outputs(reference, model, data, options, atol)
        if check and not outcome.passed:
            model.load_state_dict(reference.state_dict())
            raise RepairError(f"recycling moved the outputs by {outcome.max_abs_diff:.3g} (allowed: {atol:g} x output "
                              f"scale {outcome.output_scale:.3g}); the model was restored",
                              hint="recycled units that are not exactly 0 (dormant, or not ReLU) still fed the "
                                   f"next layer; --atol {_needed(outcome):.2g} accepts this change")
    reset: list[str] = []
    if optimizer is not None:
        touched = [item for route, index in work for item in _rows_and_columns(model, route, index)]
        reset = _reset_optimizer(optimizer, touched)
    warnings = [] if work else [f"no {units} unit could be recycled"]
    return RecycleReport(units=units, sites=tuple(changes), optimizer_state=tuple(reset), check=outcome,
                         graph=flow.source, warnings=tuple(warnings))


def _needed(outcome: OutputCheck) -> float:
    """The smallest ``atol`` (rounded up to 2 digits) that this check would pass."""
    ratio = outcome.max_abs_diff / outcome.output_scale if outcome.output_scale > 0 else outcome.max_abs_diff
    return float(f"{ratio * 1.01:.2g}")


def _slope_for(site: SiteResult, model: nn.Module) -> float:
    if site.function is None:
        activation = model.get_submodule(site.module)
        if isinstance(activation, nn.LeakyReLU):
            return float(activation.negative_slope)
    return 0.0


@torch.no_grad()
def reinit(model: nn.Module, result: ScanResult, scheme: str = "he", data: Any = None, *,
           layers: Sequence[str] | None = None, units: str = "dead", **data_options: Any) -> ReinitReport:
    """Re-initialise, in place, every layer that feeds a flagged site. Destructive: discards training.

    Args:
        model: the scanned model; changed in place.
        result: its scan.
        scheme: ``he``: Kaiming normal, fan-in, with the gain for the site's kind (LeakyReLU's slope), bias 0;
            BatchNorms between layer and site go back to their initial values.
        data: if given, how much the outputs moved is measured (not limited).
        layers: sites matching these globs (flagged or not); default: every site with ``units`` flagged.
        units: which verdict flags a site (``dead`` or ``dormant``).
        **data_options: ``batch_size``, ``limit``, ``input_key``, ``scale``.

    Returns:
        Which layers were overwritten, and how far the outputs moved.
    """
    if scheme != "he":
        raise RepairError(f"--reinit {scheme}: only 'he' is known", hint="--reinit he")
    options = DataOptions.of(result, **data_options)
    example = example_inputs(model, data, options)
    flow = build_dataflow(model, example)
    reference = copy.deepcopy(model) if data is not None else None
    changes: list[SiteChange] = []
    done: list[str] = []
    for site in result.sites:
        flagged = _mask(site, units).any()
        if not (selected(site, layers) if layers else flagged):
            continue
        found = flow.producer_of(site)
        if isinstance(found, str):
            changes.append(SiteChange(site.name, site.kind, site.units, skipped=found))
            continue
        producer_name, norms = found
        slope = _slope_for(site, model)
        producer = model.get_submodule(producer_name)
        nn.init.kaiming_normal_(producer.weight, a=slope, mode="fan_in",
                                nonlinearity="leaky_relu" if slope else "relu")
        if producer.bias is not None:
            producer.bias.zero_()
        for norm_name in norms:
            model.get_submodule(norm_name).reset_parameters()  # weight 1, bias 0, running stats reset
        done.extend([producer_name, *norms])
        changes.append(SiteChange(site.name, site.kind, site.units, tuple(range(site.units)), producer_name,
                                  tuple(norms)))
    outcome = compare_outputs(reference, model, data, options) if reference is not None else None
    return ReinitReport(scheme=scheme, sites=tuple(changes), layers=tuple(done), check=outcome, graph=flow.source)


__all__ = ["recycle", "reinit", "UNIT_VERDICTS"]
