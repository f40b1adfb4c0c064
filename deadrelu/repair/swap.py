"""Replace activation modules with ones that pass gradient for negative inputs (LeakyReLU, ELU, PReLU).

A module site is swapped by replacing the module object in its parent. A functional
site (``F.relu(x)`` inside some ``forward``) is code, not a module: it cannot be
swapped from outside, so it is reported with the file and line to edit. A module
called several times per forward is one object: swapping it changes every call.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..kinds import spec_for_module
from ..result import ScanResult, SiteResult
from .report import Effect, Swap, SwapReport
from .verify import DataOptions, compare_outputs, made_worse, refuse_if_worse, scan_deltas, snapshot
from .verify import rescan as run_rescan

TARGETS = ("leaky_relu", "elu", "prelu")
DEFAULT_SLOPE = 0.01


def parse_target(text: str) -> tuple[str, float | None]:
    """``leaky_relu[:slope]``, ``elu`` or ``prelu`` -> ``(name, slope or None)``.

    Raises:
        ConfigError: anything else.
    """
    name, _, argument = text.strip().lower().partition(":")
    name = name.replace("-", "_")
    hint = "use leaky_relu, leaky_relu:0.1, elu or prelu"
    if name not in TARGETS:
        raise ConfigError(f"--swap-activation {text!r}: unknown activation", hint=hint)
    if not argument:
        return name, DEFAULT_SLOPE if name == "leaky_relu" else None
    if name != "leaky_relu":
        raise ConfigError(f"--swap-activation {text!r}: only leaky_relu takes a parameter", hint=hint)
    try:
        slope = float(argument)
    except ValueError:
        raise ConfigError(f"--swap-activation {text!r}: the slope {argument!r} is not a number", hint=hint) from None
    if not 0.0 < slope < 1.0:
        raise ConfigError(f"--swap-activation {text!r}: the slope must be between 0 and 1", hint=hint)
    return name, slope


def _build(name: str, slope: float | None, old: nn.Module, units: int | None, unit_dim: int | None,
           like: torch.Tensor | None) -> nn.Module:
    inplace = bool(getattr(old, "inplace", False))
    if name == "leaky_relu":
        return nn.LeakyReLU(slope if slope is not None else DEFAULT_SLOPE, inplace=inplace)
    if name == "elu":
        return nn.ELU(inplace=inplace)
    # One slope per unit where the units sit on axis 1 (PReLU's channel axis), else one shared slope.
    count = units if units and unit_dim == 1 else 1
    module = nn.PReLU(num_parameters=count)
    if like is not None:
        module = module.to(device=like.device, dtype=like.dtype)
    return module


def _describe(name: str, slope: float | None) -> str:
    return f"LeakyReLU({slope:g})" if name == "leaky_relu" else {"elu": "ELU", "prelu": "PReLU"}[name]


def functional_pointer(model: nn.Module, site: SiteResult) -> str:
    """Where a functional activation is called: ``Class.forward (file:line)``, as precisely as the source allows."""
    owner = model.get_submodule(site.module) if site.module else model
    forward = type(owner).forward
    where = f"{type(owner).__name__}.forward"
    try:
        lines, first = inspect.getsourcelines(forward)
        path = inspect.getsourcefile(forward)
    except (OSError, TypeError):
        return where
    calls = [first + offset for offset, line in enumerate(lines) if site.function and site.function in line]
    line = calls[site.call_index] if site.call_index < len(calls) else first
    return f"{where} ({path}:{line})"


def _first_tensor(model: nn.Module) -> torch.Tensor | None:
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor
    return None


def swap_activations(model: nn.Module, sites: Sequence[str | SiteResult] | ScanResult, to: str = "leaky_relu",
                     *, result: ScanResult | None = None, data: Any = None, force: bool = False, rescan: bool = True,
                     **data_options: Any) -> SwapReport:
    """Replace the activation modules of ``sites``, in place.

    A swap changes the function. With ``data`` it is checked: when the outputs moved by more
    than their scale (the largest absolute original output) or dead units rose at any site
    in the rescan, the old modules are put back and ``RepairRefused`` is raised, unless ``force``.

    Args:
        model: the model; its activation modules are replaced (parameters, buffers and
            ``training`` flags stay as they were).
        sites: site results, module names, or a whole ``ScanResult`` (then every site with a
            dead unit). A module called several times per forward is swapped only when all its
            calls are given (or when given by name): swapping changes every call.
        to: ``leaky_relu[:slope]`` (default slope 0.01), ``elu`` or ``prelu`` (one slope per unit on axis 1).
        result: the scan, to size PReLU per unit and to see every call of a reused module.
        data: if given, how much the outputs moved is measured (eval mode, against a snapshot of
            the model as given), and (with ``result``) the model is rescanned.
        force: keep the swap even when it made the model worse (the report says so).
        rescan: scan the swapped model on ``data`` for the before -> after counts (needs ``result``).
        **data_options: ``batch_size``, ``limit``, ``input_key``, ``scale``.

    Returns:
        What was swapped, what was not and why, and before -> after.

    Raises:
        RepairRefused: the swap made the model worse (the model is restored first).
    """
    name, slope = parse_target(to)
    if isinstance(sites, ScanResult):
        result = result or sites
        sites = [site for site in sites.sites if site.never_fired]
    reference = snapshot(model) if data is not None else None
    calls: dict[str, int] = {}
    if result is not None:
        for site in result.sites:
            if site.function is None:
                calls[site.module] = calls.get(site.module, 0) + 1
    wanted: dict[str, list[SiteResult | None]] = {}
    skipped: list[tuple[str, str]] = []
    for item in sites:
        if isinstance(item, SiteResult):
            if item.function is not None:
                skipped.append((item.name, f"functional {item.function}() is code, not a module: change the call "
                                           f"in {functional_pointer(model, item)}"))
                continue
            wanted.setdefault(item.module, []).append(item)
        else:
            wanted.setdefault(item, []).append(None)
    swapped: list[Swap] = []
    replaced: list[tuple[nn.Module, str, nn.Module]] = []
    like = _first_tensor(model)
    for module_name, given in wanted.items():
        try:
            old = model.get_submodule(module_name)
        except AttributeError:
            skipped.append((module_name, "no such module in the model"))
            continue
        if spec_for_module(old) is None:
            skipped.append((module_name, f"{type(old).__name__} is not a ReLU-family activation"))
            continue
        site_results = [site for site in given if site is not None]
        total_calls = calls.get(module_name, 1)
        if site_results and None not in given and len(site_results) < total_calls:
            skipped.append((site_results[0].name, f"the module is called {total_calls} times per forward and only "
                                                  f"{len(site_results)} call(s) are flagged; swapping changes every "
                                                  "call (name it with --layers to swap anyway)"))
            continue
        units = site_results[0].units if site_results else None
        unit_dim = site_results[0].unit_dim if site_results else None
        new = _build(name, slope, old, units, unit_dim, like)
        new.train(old.training)  # the model's train/eval flags are the caller's
        parent_name, _, child = module_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
        replaced.append((parent, child, old))
        swapped.append(Swap(module_name, type(old).__name__, _describe(name, slope), total_calls))
    outcome = None
    deltas: tuple = ()
    if reference is not None and swapped:
        options = DataOptions.of(result, **data_options)
        outcome = compare_outputs(reference, model, data, options)
        if result is not None and rescan:
            deltas = scan_deltas(result, run_rescan(model, data, result, options))
    worse = "; ".join(made_worse(outcome, deltas)) or None
    warnings = ("units whose pre-activation is never > 0 are never active right after a swap too (their input is "
                "unchanged): no longer dead, the new activation passes them a gradient; fine-tune to bring them back",) \
        if swapped else ()
    report = SwapReport(to=_describe(name, slope), swapped=tuple(swapped), skipped=tuple(skipped), check=outcome,
                        warnings=warnings, effect=Effect(deltas, worse, force and worse is not None))
    if worse is not None and not force:
        for parent, child, old in reversed(replaced):
            setattr(parent, child, old)
        refuse_if_worse(report, "swap", "the old activations were put back",
                        hint="the dead units' large negative pre-activations now pass through; try a smaller "
                             "slope, recycle (--recycle dead), or force=True (--force) to keep it")
    return report


__all__ = ["swap_activations", "parse_target", "functional_pointer", "TARGETS"]
