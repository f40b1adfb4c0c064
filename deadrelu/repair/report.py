"""What a repair changed, as frozen data: one report type per operation, each with ``to_dict()``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import DeadReluError


class RepairError(DeadReluError):
    """A repair could not be planned, or its result failed the check on the data."""


class RepairRefused(RepairError):
    """A repair was done, checked, and refused: it failed its check or made the model worse.

    The model is as it was (in-place repairs are undone). ``report`` holds what the repair
    would have done, with the before -> after counts, so a caller can still show it.

    Args:
        message: one line with the numbers.
        hint: one line saying how to apply it anyway.
        reason: the numbers alone, without what was done about them.
        report: the refused repair's report.
    """

    def __init__(self, message: str, hint: str | None = None, *, reason: str = "", report: Any = None) -> None:
        super().__init__(message, hint)
        self.reason = reason or message
        self.report = report


@dataclass(frozen=True)
class OutputCheck:
    """Original and repaired model run on the same data.

    Attributes:
        max_abs_diff: the largest absolute difference of any output element.
        output_scale: the largest absolute output of the original model.
        samples: samples compared.
        atol: the allowed difference relative to ``output_scale`` (None: not checked).
    """

    max_abs_diff: float
    output_scale: float
    samples: int
    atol: float | None = None

    @property
    def allowed(self) -> float | None:
        """The largest difference that passes: ``atol * output_scale`` (``atol`` if the scale is 0)."""
        if self.atol is None:
            return None
        return self.atol * self.output_scale if self.output_scale > 0 else self.atol

    @property
    def passed(self) -> bool:
        allowed = self.allowed
        return allowed is None or self.max_abs_diff <= allowed

    def to_dict(self) -> dict[str, Any]:
        return {"max_abs_diff": self.max_abs_diff, "output_scale": self.output_scale, "samples": self.samples,
                "atol": self.atol, "allowed": self.allowed, "passed": self.passed}


@dataclass(frozen=True)
class SiteChange:
    """One activation site: which units a repair changed, through which layers, or why not.

    Attributes:
        site: the site's name in the scan.
        kind: its activation kind.
        units: units the site had.
        changed: indices of the units removed / recycled / re-initialised.
        producer: the Linear/Conv whose rows were changed.
        norms: BatchNorm layers whose entries were changed.
        consumers: Linear/Conv layers whose input columns were changed.
        skipped: why the site was left alone (None when it was changed).
        inexact: flagged units left alone because their output is not exactly 0 on the data.
        partners: a gated product's ``up`` Linear, whose rows went with the producer's.
    """

    site: str
    kind: str
    units: int
    changed: tuple[int, ...] = ()
    producer: str | None = None
    norms: tuple[str, ...] = ()
    consumers: tuple[str, ...] = ()
    skipped: str | None = None
    inexact: int = 0
    partners: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"site": self.site, "kind": self.kind, "units": self.units, "changed": list(self.changed),
                "producer": self.producer, "partners": list(self.partners), "norms": list(self.norms),
                "consumers": list(self.consumers), "skipped": self.skipped, "inexact": self.inexact}


@dataclass(frozen=True)
class SiteDelta:
    """One site's counts in the scan before a repair and in the rescan after it."""

    site: str
    units_before: int
    units_after: int | None
    dead_before: int
    dead_after: int | None
    dormant_before: int
    dormant_after: int | None
    never_active_before: int = 0
    never_active_after: int | None = 0

    @property
    def unchanged_and_clean(self) -> bool:
        """Nothing dead or never active before or after, and every count as it was."""
        return (self.units_after == self.units_before and self.dead_before == self.dead_after == 0
                and self.never_active_before == self.never_active_after == 0
                and self.dormant_after == self.dormant_before)

    def to_dict(self) -> dict[str, Any]:
        return {"site": self.site, "units_before": self.units_before, "units_after": self.units_after,
                "dead_before": self.dead_before, "dead_after": self.dead_after,
                "never_active_before": self.never_active_before, "never_active_after": self.never_active_after,
                "dormant_before": self.dormant_before, "dormant_after": self.dormant_after}


@dataclass(frozen=True)
class HeldOut:
    """The repaired model checked on other data than the scan's (``verify_data``).

    Attributes:
        source: what the data is, for messages.
        check: original vs repaired outputs on that data.
        firing: changed (removed / recycled) units that are active at least once on that data
            in the original model: each one may change the outputs there.
        changed: the changed units.
    """

    source: str
    check: OutputCheck
    firing: int
    changed: int

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "check": self.check.to_dict(), "firing": self.firing, "changed": self.changed}


@dataclass(frozen=True)
class Effect:
    """What a change did on the data, and whether it stood.

    Attributes:
        deltas: per site, units / dead / dormant in the scan before and the rescan after (empty: no rescan).
        worse: why the change is refused, one line with the numbers (a failed check, dead units that
            rose at a site, outputs moved by more than their scale), or None.
        forced: applied although ``worse`` says no (``force=True``, ``--force``).
        held_out: the check on ``verify_data``, or None.
    """

    deltas: tuple[SiteDelta, ...] = ()
    worse: str | None = None
    forced: bool = False
    held_out: HeldOut | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"before_after": [delta.to_dict() for delta in self.deltas], "worse": self.worse,
                "forced": self.forced, "held_out": None if self.held_out is None else self.held_out.to_dict()}


def _sites(changes: tuple[SiteChange, ...]) -> list[dict[str, Any]]:
    return [change.to_dict() for change in changes]


@dataclass(frozen=True)
class PruneReport:
    """What ``prune`` removed.

    Attributes:
        sites: every site with flagged units, changed or left alone.
        parameters_before, parameters_after: parameter counts.
        macs_before, macs_after: multiply-adds per sample (None without data).
        shapes: ``(parameter or buffer name, old shape, new shape)`` for every tensor that shrank.
        check: original vs pruned on the data (None without data).
        samples, limit: how many samples the scan saw, and its ``limit``.
        graph: ``fx`` or ``export``.
        warnings: what the user must know (units dead on this data may fire on other data).
        effect: the rescan's before -> after, the check on held-out data, and whether it was refused.
    """

    sites: tuple[SiteChange, ...]
    parameters_before: int
    parameters_after: int
    macs_before: int | None = None
    macs_after: int | None = None
    shapes: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()
    check: OutputCheck | None = None
    samples: int | None = None
    limit: int | None = None
    graph: str = "fx"
    warnings: tuple[str, ...] = ()
    effect: Effect = field(default_factory=Effect)

    @property
    def removed(self) -> int:
        return sum(len(change.changed) for change in self.sites)

    def to_dict(self) -> dict[str, Any]:
        return {"operation": "prune", "removed_units": self.removed, "sites": _sites(self.sites),
                "parameters_before": self.parameters_before, "parameters_after": self.parameters_after,
                "macs_before": self.macs_before, "macs_after": self.macs_after,
                "shapes": [{"name": n, "before": list(a), "after": list(b)} for n, a, b in self.shapes],
                "check": None if self.check is None else self.check.to_dict(), "samples": self.samples,
                "limit": self.limit, "graph": self.graph, "warnings": list(self.warnings), **self.effect.to_dict()}


@dataclass(frozen=True)
class RecycleReport:
    """What ``recycle`` re-initialised (ReDo).

    Attributes:
        units: which verdict was recycled (``dead`` or ``dormant``).
        sites: every site with such units, changed or left alone.
        optimizer_state: parameter names whose optimizer state (Adam moments, momentum) was reset.
        check: outputs before vs after on the data (None without data).
        graph: ``fx`` or ``export``.
        warnings: what the user must know.
        fired: ``(firing, recycled)``: recycled units active on the data right after recycling
            (None without a rescan).
        effect: the rescan's before -> after, the check on held-out data, and whether it was refused.
    """

    units: str
    sites: tuple[SiteChange, ...]
    optimizer_state: tuple[str, ...] = ()
    check: OutputCheck | None = None
    graph: str = "fx"
    warnings: tuple[str, ...] = ()
    fired: tuple[int, int] | None = None
    effect: Effect = field(default_factory=Effect)

    @property
    def recycled(self) -> int:
        return sum(len(change.changed) for change in self.sites)

    def to_dict(self) -> dict[str, Any]:
        return {"operation": "recycle", "units": self.units, "recycled_units": self.recycled,
                "sites": _sites(self.sites), "optimizer_state": list(self.optimizer_state),
                "check": None if self.check is None else self.check.to_dict(), "graph": self.graph,
                "warnings": list(self.warnings),
                "fire_after_recycling": None if self.fired is None else {"firing": self.fired[0],
                                                                         "recycled": self.fired[1]},
                **self.effect.to_dict()}


@dataclass(frozen=True)
class ReinitReport:
    """What ``reinit`` overwrote. Destructive: the layers' training is discarded.

    Attributes:
        scheme: ``he`` (Kaiming normal, fan-in, gain for the site's kind).
        sites: the flagged sites and the layers feeding them (or why none).
        layers: every layer re-initialised.
        check: outputs before vs after (how much the function changed), None without data.
        effect: the rescan's before -> after and whether it was refused.
    """

    scheme: str
    sites: tuple[SiteChange, ...]
    layers: tuple[str, ...]
    check: OutputCheck | None = None
    graph: str = "fx"
    destructive: bool = True
    effect: Effect = field(default_factory=Effect)

    def to_dict(self) -> dict[str, Any]:
        return {"operation": "reinit", "scheme": self.scheme, "destructive": self.destructive,
                "layers": list(self.layers), "sites": _sites(self.sites),
                "check": None if self.check is None else self.check.to_dict(), "graph": self.graph,
                **self.effect.to_dict()}


@dataclass(frozen=True)
class Swap:
    """One activation module replaced."""

    module: str
    before: str
    after: str
    calls: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.module, "before": self.before, "after": self.after, "calls": self.calls}


@dataclass(frozen=True)
class SwapReport:
    """What ``swap_activations`` replaced.

    Attributes:
        to: the new activation (``leaky_relu:0.1``, ``elu``, ``prelu``).
        swapped: modules replaced.
        skipped: ``(site, reason)`` for sites that could not be swapped (functional calls
            name the ``forward`` to edit).
        check: outputs before vs after on the data (how much the function changed).
        effect: the rescan's before -> after and whether it was refused.
    """

    to: str
    swapped: tuple[Swap, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    check: OutputCheck | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)
    effect: Effect = field(default_factory=Effect)

    def to_dict(self) -> dict[str, Any]:
        return {"operation": "swap", "to": self.to, "swapped": [s.to_dict() for s in self.swapped],
                "skipped": [{"site": site, "reason": reason} for site, reason in self.skipped],
                "check": None if self.check is None else self.check.to_dict(), "warnings": list(self.warnings),
                **self.effect.to_dict()}


__all__ = ["RepairError", "RepairRefused", "OutputCheck", "SiteChange", "SiteDelta", "HeldOut", "Effect", "PruneReport", "RecycleReport", "ReinitReport", "Swap",
           "SwapReport"]
