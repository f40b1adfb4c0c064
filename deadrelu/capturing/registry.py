"""The site registry: which sites a capture has, how each is keyed, selected, named and planned.

A *site* is one call of an activation per forward pass, keyed ``(module, function,
call_index)``: ``("layer1.0.relu", None, 2)`` is the third call of that module,
``("block", "relu", 0)`` the first ``F.relu`` call made inside ``block``'s forward.
Both drivers (module hooks, aten dispatch) count calls and open sites here; the
registry keeps no hook and sees no tensor beyond a new site's first input.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from ..errors import CaptureError
from ..kinds import KNOWN_KINDS, ActiveRule, KindSpec, floor_tolerance
from ..links import InputLink
from ..settings import Granularity, ScanSettings
from ..stats import Accumulator, ReductionPlan, SiteStats

ROOT_NAME = "<root>"

#: ``(module, function, call_index)``; ``function`` is None for an activation module's own call.
SiteKey = tuple[str, "str | None", int]


@dataclass
class SiteRecord:
    """One site's identity and running accumulator (capture-internal, mutable).

    Attributes:
        module: qualified module name from ``named_modules()`` ("" for the root).
        function: for functional sites, the function called (``relu``); None for module sites.
        call_index: which call of that module (or function within that module) per forward.
        spec: the activation kind's rules.
        unit_dim: the unit axis (None: the whole output is one unit; with position
            granularity, every axis after the batch is a unit axis).
        unit_shape: shape of the per-unit tensors.
        plan: the site's reduction plan.
        order: when it was first seen (network order).
        accumulator: the site's running sums.
        activation: the activation module, for slope summaries (None for functions).
        calls: calls observed so far.
        link: which layer produced the site's input, seen while discovering (None: not tracked).
        sees_mask: whether the site's input was reached by the padded sequence (None: not known,
            judged from its own shape).
        unmasked: a padding mask was given, the site sees the padded sequence, and its
            activation does not start with the mask's (N, L) axes: padding counted there.
    """

    module: str
    function: str | None
    call_index: int
    spec: KindSpec
    unit_dim: int | None
    unit_shape: tuple[int, ...]
    plan: ReductionPlan
    order: int
    accumulator: Accumulator
    activation: nn.Module | None = None
    calls: int = 0
    link: InputLink | None = None
    sees_mask: bool | None = None
    unmasked: bool = False
    #: variants of ``plan``, made on first use: (judged from flags, real positions only) -> plan
    _variants: dict[tuple[bool, bool], ReductionPlan] = field(default_factory=dict, repr=False)

    def plan_for(self, flags: bool, masked: bool) -> ReductionPlan:
        """The plan for one call: ``flags``: "active" was judged before an in-place call
        overwrote its input (a bool tensor, active where True); ``masked``: the padded positions
        were gathered out, so the (N, L) axes are one axis."""
        if not flags and not masked:
            return self.plan
        key = (flags, masked)
        plan = self._variants.get(key)
        if plan is None:
            plan = self.plan
            if masked:
                plan = dataclasses.replace(plan, dims=(0,) + tuple(axis - 1 for axis in plan.dims if axis >= 2))
            if flags:
                plan = dataclasses.replace(plan, threshold=0.0)  # True > 0: the judgement was made already
            self._variants[key] = plan
        return plan

    def check_shape(self, shape: torch.Size, granularity: Granularity) -> None:
        """Raise if a later call's output no longer has this site's units."""
        if granularity is Granularity.POSITION:
            actual = tuple(shape[1:])
        elif self.unit_dim is None:
            actual = ()
        else:
            actual = (shape[self.unit_dim],) if len(shape) > self.unit_dim else None  # type: ignore[assignment]
        if actual != self.unit_shape:
            raise CaptureError(
                f"site {self.module or ROOT_NAME} call {self.call_index} changed its units mid-scan: "
                f"first {self.unit_shape}, now output shape {tuple(shape)}",
                hint="with --granularity position every batch must have the same spatial size; "
                     "otherwise the model routes different tensors through one call site")


@dataclass
class Coverage:
    """What capture found but could not or did not scan (shown, never dropped)."""

    activation_modules: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: whether functional calls (``F.relu`` in ``forward``) were captured
    functional: bool = False
    #: activation modules not scanned: ``[module, class name, calls in the first forward
    #: pass (None when unknown), why]`` (an unsupported kind, or no aten op to see)
    unsupported: list[list[Any]] = field(default_factory=list)
    #: whether a padding mask was applied (``set_mask``) in any forward pass
    masked: bool = False
    #: why functional capture was turned off after the first batch (``--functional auto``), or None
    functional_note: str | None = None


class Links(Protocol):
    """Where a new site's input came from: the producer-links part of a driver."""

    @property
    def discovering(self) -> bool:
        """True during the first forward pass, while producers are tracked."""

    def link(self, tensor: torch.Tensor, module_name: str, activation: nn.Module | None) -> InputLink | None:
        """The layer that produced ``tensor`` (None: not tracked)."""

    def unit_axis(self, tensor: torch.Tensor, spec: KindSpec, link: InputLink | None
                  ) -> tuple[int | None, str | None]:
        """The unit axis of a new site's tensor and a warning when it was a guess."""


class Reach(Protocol):
    """Whether a tensor was reached by the padded sequence: the padding part of a driver."""

    def reaches(self, tensor: torch.Tensor) -> bool | None:
        """True/False while tracked (first forward pass with a mask), None when not known."""


def reduction_plan(spec: KindSpec, dims: tuple[int, ...], saturation_rtol: float) -> ReductionPlan:
    """A site's reduction plan, all from its ``KindSpec``: threshold, floor/ceiling tests, least output.

    Args:
        spec: the kind's rules with the site's own constants.
        dims: the axes reduced away.
        saturation_rtol: how close to an asymptotic floor counts as at it.

    Returns:
        The plan.
    """
    if spec.active_rule is ActiveRule.ABOVE_LOWER:
        floor_at, ceiling_at = spec.floor, spec.ceiling
    else:
        floor_at = None if spec.floor is None else floor_tolerance(spec.floor, saturation_rtol)
        ceiling_at = None
    return ReductionPlan(dims=dims, threshold=spec.threshold, floor_at=floor_at, ceiling_at=ceiling_at,
                         output_floor=spec.output_floor)


class SiteRegistry:
    """The sites of one capture, their per-forward call counts, and what was left out.

    Args:
        settings: layer filters, granularity, tolerances.
        links: judges a new site's producer and unit axis.
        reach: tells whether a new site's input carries the padded sequence.
    """

    def __init__(self, settings: ScanSettings, links: Links, reach: Reach) -> None:
        self.settings = settings
        self.links = links
        self.reach = reach
        self.coverage = Coverage()
        self._sites: dict[SiteKey, SiteRecord | None] = {}
        self._calls: dict[tuple[str, str | None], int] = {}
        self._max_calls: dict[tuple[str, str | None], int] = {}
        self._order = itertools.count()

    # -- per forward pass -----------------------------------------------------------------
    def begin_batch(self) -> None:
        """Fresh per-forward call counters."""
        self._calls.clear()

    def end_batch(self) -> None:
        """Keep the most calls any forward pass made of each module / function."""
        for key, count in self._calls.items():
            if count > self._max_calls.get(key, 0):
                self._max_calls[key] = count

    def count_call(self, module: str, function: str | None) -> int:
        """Count one call of a module (or of a function within it); returns its call index."""
        key = (module, function)
        index = self._calls.get(key, 0)
        self._calls[key] = index + 1
        return index

    def count_key(self, key: tuple[str, str | None]) -> int:
        """``count_call`` with its ``(module, function)`` key made once by the caller (a hook's)."""
        calls = self._calls
        index = calls.get(key, 0)
        calls[key] = index + 1
        return index

    def functional_ran(self) -> bool:
        """Whether a functional call or gated product was counted in the current forward pass."""
        return any(function is not None for _module, function in self._calls)

    def ran_this_batch(self) -> list[str]:
        """Activation modules (or ``module:function``) called in the current forward pass, in order."""
        return [name if function is None else f"{name or ROOT_NAME}:{function}" for name, function in self._calls]

    # -- sites ----------------------------------------------------------------------------
    def known(self, key: SiteKey) -> bool:
        """Whether the key was seen before (as a site or as an excluded one)."""
        return key in self._sites

    def get(self, key: SiteKey) -> SiteRecord | None:
        """The site of a key seen before; None for an excluded one."""
        return self._sites[key]

    def selected(self, candidates: tuple[str, ...]) -> bool:
        """Whether any of a site's names passes ``--layers`` and none is ``--exclude``d."""
        layers, exclude = self.settings.layers, self.settings.exclude
        if layers and not any(fnmatch.fnmatchcase(c, p) for c in candidates for p in layers):
            return False
        return not any(fnmatch.fnmatchcase(c, p) for c in candidates for p in exclude)

    def open(self, key: SiteKey, spec: KindSpec, tensor: torch.Tensor, *, candidates: tuple[str, ...],
             label: str, activation: nn.Module | None = None, unit_dim: int | None | str = "judge"
             ) -> SiteRecord | None:
        """The site of ``key``: made on its first call from its input ``tensor``, or None when filtered.

        Args:
            key: the site's key.
            spec: its kind's rules.
            tensor: the activation's input (its output for gated products).
            candidates: the names ``--layers``/``--exclude`` patterns are matched against.
            label: the name an excluded site is listed under.
            activation: the activation module (PReLU slopes), if any.
            unit_dim: the unit axis when the caller knows it (a gated product has its gate's);
                ``"judge"``: judged from the input's producer.

        Returns:
            The site, or None when the layer filters leave it out.
        """
        if key in self._sites:
            return self._sites[key]
        if not self.selected(candidates):
            self._sites[key] = None
            self.coverage.excluded.append(label)
            return None
        record = self._new_record(key, spec, tensor, activation, unit_dim)
        self._sites[key] = record
        return record

    def _new_record(self, key: SiteKey, spec: KindSpec, tensor: torch.Tensor, activation: nn.Module | None,
                    unit_dim: int | None | str) -> SiteRecord:
        module_name, function, call_index = key
        shape = list(tensor.shape)  # elementwise kinds: output shape == input shape
        if spec.split_dim is not None and tensor.ndim:
            shape[spec.split_dim % tensor.ndim] //= 2  # GLU's output is half its input along dim
        link = self.links.link(tensor, module_name, activation)
        if self.settings.granularity is Granularity.POSITION:
            unit = 1 if len(shape) > 1 else None
            unit_shape = tuple(shape[1:])
            dims = (0,) if len(shape) > 1 else tuple(range(len(shape)))
        else:
            if unit_dim == "judge":
                unit, warning = self.links.unit_axis(tensor, spec, link)
            else:
                unit, warning = unit_dim, None  # type: ignore[assignment]
            if warning and not self.links.discovering and len(shape) > 2:
                warning += " (site first ran after the first batch, when producers were no longer tracked)"
            if warning:
                label = f"{module_name or ROOT_NAME}" + (f":{function}" if function else "") + f"#{call_index}"
                self.coverage.warnings.append(f"{label}: {warning}")
            unit_shape = () if unit is None else (shape[unit],)
            dims = tuple(axis for axis in range(len(shape)) if axis != unit)
        plan = reduction_plan(spec, dims, self.settings.thresholds.saturation_rtol)
        return SiteRecord(module=module_name, function=function, call_index=call_index, spec=spec,
                          unit_dim=unit, unit_shape=unit_shape, plan=plan, order=next(self._order),
                          accumulator=Accumulator(unit_shape, tensor.device), activation=activation,
                          link=link, sees_mask=self.reach.reaches(tensor))

    # -- results --------------------------------------------------------------------------
    def records(self) -> list[SiteRecord]:
        """Sites that ran, in network order."""
        return sorted((r for r in self._sites.values() if r is not None), key=lambda r: r.order)

    def module_name(self, record: SiteRecord) -> str:
        """The eager name: ``module`` when called once per forward, ``module#k`` otherwise;
        ``<module>:<function>#<k>`` for functional sites."""
        if record.function is not None:
            return f"{record.module or ROOT_NAME}:{record.function}#{record.call_index}"
        if self._max_calls.get((record.module, None), 1) > 1:
            return f"{record.module}#{record.call_index}"
        return record.module or ROOT_NAME

    def modules_ran(self) -> set[str]:
        """Modules whose own activation call ran in some forward pass."""
        return {key[0] for key, count in self._max_calls.items() if key[1] is None and count > 0}


def no_sites_error(coverage: Coverage, model_name: str, module_types: list[str], what_ran: str) -> CaptureError:
    """The error for a capture in which no site ran: excluded, never ran, or nothing to capture.

    Args:
        coverage: the capture's coverage.
        model_name: the model's class name.
        module_types: class names of the model's modules (for "nothing found").
        what_ran: why no functional site was seen either.
    """
    if coverage.excluded:
        return CaptureError("no activation site left to scan: --layers/--exclude excluded every site",
                            hint=f"sites found: {', '.join(_as_table_names(coverage.excluded)[:6])}")
    if coverage.activation_modules:
        return CaptureError("the model's activation modules never ran on this data",
                            hint=f"modules found: {', '.join(coverage.activation_modules[:6])}")
    if coverage.unsupported:
        return CaptureError(f"no activation deadrelu can scan in {model_name}: "
                            f"{unsupported_summary(coverage.unsupported)}",
                            hint=f"deadrelu scans {', '.join(KNOWN_KINDS)}")
    return CaptureError(
        f"no ReLU-family activation found in {model_name} (module types: {', '.join(module_types[:12]) or 'none'}; "
        f"{what_ran})",
        hint=f"deadrelu scans {', '.join(KNOWN_KINDS)} modules and functional calls to them")


def _as_table_names(excluded: list[str]) -> list[str]:
    """Excluded sites named as the table names them: a module called once is ``act``, not ``act#0``."""
    calls: dict[str, int] = {}
    for name in excluded:
        if ":" not in name and "#" in name:
            module = name.rpartition("#")[0]
            calls[module] = calls.get(module, 0) + 1
    return [name.rpartition("#")[0] if ":" not in name and name.endswith("#0") and calls.get(name[:-2]) == 1
            else name for name in excluded]


def unsupported_summary(entries: list[list[Any]]) -> str:
    """``19 Hardswish calls not scanned (unsupported kind) at modules blocks.0.act, ...; 2 NewGELUActivation ...``.

    Args:
        entries: ``Coverage.unsupported`` rows ``[module, class, calls or None, why]``.

    Returns:
        One line, grouped by class and reason, in the order first seen.
    """
    groups: dict[tuple[str, str], list[Any]] = {}
    for module, class_name, calls, why in entries:
        group = groups.setdefault((class_name, why), [0, 0, []])
        group[0] += 1
        group[1] += calls or 0
        group[2].append(module)
    parts = []
    for (class_name, why), (modules, calls, names) in groups.items():
        count, noun = (calls, "call") if calls else (modules, "module")
        where = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        # The module names follow "at module(s)": a Sequential's "1" must not read as a count.
        parts.append(f"{count} {class_name} {noun}{'s' if count != 1 else ''} not scanned ({why}) at "
                     f"module{'s' if len(names) != 1 else ''} {where}")
    return "; ".join(parts)


__all__ = ["Coverage", "Links", "Reach", "ROOT_NAME", "SiteKey", "SiteRecord", "SiteRegistry", "no_sites_error",
           "reduction_plan", "unsupported_summary"]
