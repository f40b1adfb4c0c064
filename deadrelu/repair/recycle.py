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
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..result import ScanResult, SiteResult
from .graph import Dataflow, UnitRoute
from .tracing import build_dataflow
from .prune import selected
from .report import Effect, OutputCheck, RecycleReport, ReinitReport, RepairError, SiteChange
from .verify import (DataOptions, check_atol, compare_outputs, example_call, firing, held_out, refusal_reasons,
                     made_worse, refuse_if_worse, scan_deltas, snapshot)
from .verify import rescan as run_rescan

UNIT_VERDICTS = ("dead", "dormant")


def _mask(site: SiteResult, units: str) -> np.ndarray:
    if units not in UNIT_VERDICTS:
        raise RepairError(f"units={units!r}: recycle takes 'dead' or 'dormant'", hint="--recycle dead|dormant")
    return site.verdict.dead if units == "dead" else site.verdict.dormant


def _rows_and_columns(model: nn.Module, route: UnitRoute, index: torch.Tensor
                      ) -> list[tuple[str, nn.Parameter, int, torch.Tensor]]:
    """``(name, parameter, dim, indices)`` of every slice a recycle touches."""
    touched: list[tuple[str, nn.Parameter, int, torch.Tensor]] = []
    for layer_name in (*route.producers(), *route.norms):
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
    # A gated product's unit i is gate row i times up row i: both rows start afresh.
    for name in route.producers():
        producer = model.get_submodule(name)
        # Drawn on the CPU (the torch CPU generator, whatever the device; no second copy on the GPU).
        fresh = copy.deepcopy(producer).cpu()
        if hasattr(fresh, "reset_parameters"):
            fresh.reset_parameters()  # the layer's own initialisation (kaiming_uniform(a=sqrt(5)) for Linear/Conv)
        producer.weight[index.to(producer.weight.device)] = fresh.weight[index].to(producer.weight.device,
                                                                                   producer.weight.dtype)
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


def _plan(flow: Dataflow, result: ScanResult, units: str, layers: Sequence[str] | None
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
                                  route.norms, tuple(c.module for c in route.consumers), partners=route.partners))
    return changes, work


def recycle(model: nn.Module, result: ScanResult, units: str = "dead", optimizer: torch.optim.Optimizer | None = None,
            data: Any = None, *, layers: Sequence[str] | None = None, atol: float = 1e-5, force: bool = False,
            verify_data: Any = None, rescan: bool = True, **data_options: Any) -> RecycleReport:
    """Recycle dead (or dormant) units in place, ReDo-style.

    Args:
        model: the scanned model; only the recycled rows and columns change, in place
            (parameters keep their identity, so an optimizer built on them stays valid;
            every other parameter, buffer and ``training`` flag stays bit-identical).
        result: its scan.
        units: ``dead`` or ``dormant`` (ReDo's tau-dormant units; ``result.settings.thresholds.tau``).
        optimizer: if given, its state for the changed rows and columns is zeroed.
        data: the scanned data; if given, outputs before and after are compared (eval mode,
            against a snapshot of the model as given) and the model is rescanned.
        layers: only sites matching these globs.
        atol: allowed output difference relative to the largest absolute output (>= 0).
        force: keep the change even when the check fails or dead units rose (the report says so).
        verify_data: other data to check the outputs on; the report counts the recycled units
            that fire there in the original model.
        rescan: scan the recycled model on ``data`` (before -> after, units firing at once).
        **data_options: ``batch_size``, ``limit``, ``input_key``, ``scale``.

    Returns:
        What was recycled, where, the check, and the before -> after counts.

    Raises:
        RepairRefused: the check failed or dead units rose (the model is restored first).
        RepairError: the model cannot be traced. ConfigError: a bad ``units`` or ``atol``.
    """
    check_atol(atol)
    options = DataOptions.of(result, **data_options)
    # The model as given, before anything runs: traced (never the model itself), the reference
    # of the check, and what a refused change restores.
    reference = snapshot(model)
    example = example_call(reference, data, options) if data is not None else None
    args, kwargs = example if example is not None else (None, None)
    flow = build_dataflow(reference, args, private=True, kwargs=kwargs)
    changes, work = _plan(flow, result, units, layers)
    for route, index in work:
        _recycle_site(model, route, index)
    outcome: OutputCheck | None = None
    deltas: tuple = ()
    fired: tuple[int, int] | None = None
    if data is not None and work:
        outcome = compare_outputs(reference, model, data, options, atol)
        if rescan:
            after = run_rescan(model, data, result, options)
            deltas, fired = scan_deltas(result, after), firing(after, changes)
    held = held_out(reference, model, verify_data, result, changes, options, atol) \
        if verify_data is not None and work else None
    worse = refusal_reasons(outcome, deltas, held, "recycled", "recycling moved the outputs")
    warnings = [] if work else [f"no {units} unit could be recycled"]
    if held is not None and held.firing:
        warnings.append(f"{held.firing} of the {held.changed} recycled unit(s) fire on {held.source} "
                        f"({held.check.samples:,} held-out samples): zeroing their outgoing weights changes the "
                        "outputs there")
    report = RecycleReport(units=units, sites=tuple(changes), check=outcome, graph=flow.source,
                           warnings=tuple(warnings), fired=fired,
                           effect=Effect(deltas, worse, force and worse is not None, held))
    if worse is not None and not force:
        model.load_state_dict(reference.state_dict())
        needed = f"--atol {_needed(outcome):.2g} (atol=) accepts this change, " \
            if outcome is not None and not outcome.passed else ""
        refuse_if_worse(report, "recycle", "the model was restored",
                        hint="recycled units that are not exactly 0 (dormant, or not ReLU) still fed the next layer; "
                             f"{needed}force=True (--force) keeps it anyway")
    if optimizer is not None:
        touched = [item for route, index in work for item in _rows_and_columns(model, route, index)]
        report = dataclasses.replace(report, optimizer_state=tuple(_reset_optimizer(optimizer, touched)))
    return report


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
           layers: Sequence[str] | None = None, units: str = "dead", force: bool = False, rescan: bool = True,
           **data_options: Any) -> ReinitReport:
    """Re-initialise, in place, every layer that feeds a flagged site. Destructive: discards training.

    Args:
        model: the scanned model; the re-initialised layers change in place, nothing else
            (other parameters, buffers and ``training`` flags stay bit-identical).
        result: its scan.
        scheme: ``he``: Kaiming normal, fan-in, with the gain for the site's kind (LeakyReLU's slope), bias 0;
            BatchNorms between layer and site go back to their initial values.
        data: if given, how far the outputs moved is measured (eval mode, against a snapshot of
            the model as given) and the model is rescanned.
        layers: sites matching these globs (flagged or not); default: every site with ``units`` flagged.
        units: which verdict flags a site (``dead`` or ``dormant``).
        force: keep the change even when it moved the outputs by more than their scale or
            dead units rose at a site (the report says so).
        rescan: scan the re-initialised model on ``data`` (before -> after).
        **data_options: ``batch_size``, ``limit``, ``input_key``, ``scale``.

    Returns:
        Which layers were overwritten, how far the outputs moved, before -> after.

    Raises:
        RepairRefused: the change made the model worse (the model is restored first).
    """
    if scheme != "he":
        raise RepairError(f"--reinit {scheme}: only 'he' is known", hint="--reinit he")
    options = DataOptions.of(result, **data_options)
    reference = snapshot(model)
    example = example_call(reference, data, options) if data is not None else None
    args, kwargs = example if example is not None else (None, None)
    flow = build_dataflow(reference, args, private=True, kwargs=kwargs)
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
        producer_name, norms, partners = found
        slope = _slope_for(site, model)
        for name in (producer_name, *partners):
            producer = model.get_submodule(name)
            nn.init.kaiming_normal_(producer.weight, a=slope, mode="fan_in",
                                    nonlinearity="leaky_relu" if slope else "relu")
            if producer.bias is not None:
                producer.bias.zero_()
        for norm_name in norms:
            model.get_submodule(norm_name).reset_parameters()  # weight 1, bias 0, running stats reset
        done.extend([producer_name, *partners, *norms])
        changes.append(SiteChange(site.name, site.kind, site.units, tuple(range(site.units)), producer_name,
                                  tuple(norms), partners=partners))
    outcome = compare_outputs(reference, model, data, options) if data is not None and done else None
    deltas = scan_deltas(result, run_rescan(model, data, result, options)) if data is not None and done and rescan \
        else ()
    worse = "; ".join(made_worse(outcome, deltas)) or None
    report = ReinitReport(scheme=scheme, sites=tuple(changes), layers=tuple(done), check=outcome, graph=flow.source,
                          effect=Effect(deltas, worse, force and worse is not None))
    if worse is not None and not force:
        model.load_state_dict(reference.state_dict())
        refuse_if_worse(report, "reinit", "the model was restored",
                        hint="re-initialising discards what the layers learned; force=True (--force) keeps it anyway")
    return report


__all__ = ["recycle", "reinit", "UNIT_VERDICTS"]
