"""Two scan results side by side: which units died, which came back, and a gate on it.

``diff(base, new)`` matches sites by name and compares their dead units index by index;
``check_diff_gate`` turns it into a pass/fail for CI (above a limit fails, equal passes).
Torch-free: it reads only ``ScanResult`` data, so ``deadrelu diff`` runs without torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd

from .errors import ConfigError, DeadReluError
from .judge.overall import dead_mask
from .result import ScanResult

#: settings that change what "dead" means or which sites exist: results must agree on them
COMPARED_SETTINGS = ("dead_threshold", "tau", "saturation", "saturation_rtol", "granularity", "functional",
                     "layers", "exclude")


class IncompatibleResultsError(DeadReluError):
    """Two results from different models or settings, compared without ``force``."""


@dataclass(frozen=True)
class SiteDiff:
    """One site in both results.

    Attributes:
        name: the site name.
        kind: activation kind (from the new result).
        units_base: units in the baseline.
        units_new: units in the new result.
        dead_base: dead units in the baseline.
        dead_new: dead units in the new result.
        newly_dead: indices of units dead in new but not in base.
        revived: indices of units dead in base but not in new.
    """

    name: str
    kind: str
    units_base: int
    units_new: int
    dead_base: int
    dead_new: int
    newly_dead: tuple[int, ...]
    revived: tuple[int, ...]

    @property
    def dead_ratio_base(self) -> float:
        return self.dead_base / self.units_base if self.units_base else 0.0

    @property
    def dead_ratio_new(self) -> float:
        return self.dead_new / self.units_new if self.units_new else 0.0

    @property
    def dead_ratio_increase(self) -> float:
        """New dead share minus the baseline's (negative when units came back)."""
        return self.dead_ratio_new - self.dead_ratio_base

    def _exact_increase(self) -> Fraction:
        base = Fraction(self.dead_base, self.units_base) if self.units_base else Fraction(0)
        new = Fraction(self.dead_new, self.units_new) if self.units_new else Fraction(0)
        return new - base


@dataclass(frozen=True)
class DiffViolation:
    """One broken limit: ``scope`` is ``"model"`` (all sites) or a site name."""

    scope: str
    measure: str  # "new_dead" or "dead_ratio_increase"
    value: float
    limit: float


@dataclass(frozen=True)
class DiffGate:
    """Whether a diff passed its limits, and which it broke."""

    max_new_dead: int | None
    max_dead_ratio_increase: float | None
    passed: bool
    violations: tuple[DiffViolation, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"max_new_dead": self.max_new_dead, "max_dead_ratio_increase": self.max_dead_ratio_increase,
                "passed": self.passed, "violations": [dataclasses.asdict(v) for v in self.violations]}

    def site_violations(self, name: str) -> list[DiffViolation]:
        """The violations of one site."""
        return [violation for violation in self.violations if violation.scope == name]


@dataclass(frozen=True)
class DiffResult:
    """What changed between a baseline scan and a new one.

    Attributes:
        sites: the sites in both, in the new result's network order.
        only_in_base: site names only the baseline has.
        only_in_new: site names only the new result has.
        base: the baseline's model and data metadata (``{"model": ..., "data": ...}``).
        new: the new result's model and data metadata.
        differences: how the two differ in model or settings (non-empty only when forced).
        notes: facts to know when reading it (different data...).
        gate: the gate outcome, when limits were given.
    """

    sites: tuple[SiteDiff, ...]
    only_in_base: tuple[str, ...]
    only_in_new: tuple[str, ...]
    base: dict[str, Any]
    new: dict[str, Any]
    differences: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    gate: DiffGate | None = None

    @property
    def newly_dead(self) -> int:
        """Units dead in new and not in base, over all matched sites."""
        return sum(len(site.newly_dead) for site in self.sites)

    @property
    def revived(self) -> int:
        """Units dead in base and not in new, over all matched sites."""
        return sum(len(site.revived) for site in self.sites)

    def site(self, name: str) -> SiteDiff:
        """A matched site by name."""
        for site in self.sites:
            if site.name == name:
                return site
        raise KeyError(f"no site named {name!r} in both results")

    def with_gate(self, gate: DiffGate | None) -> DiffResult:
        """A copy carrying a gate outcome."""
        return dataclasses.replace(self, gate=gate)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"sites": [{name, dead_base, dead_new, newly_dead, revived}], "newly_dead",
        "revived", "only_in_base", "only_in_new", "gate"}``."""
        return {
            "sites": [{"name": site.name, "dead_base": site.dead_base, "dead_new": site.dead_new,
                       "newly_dead": list(site.newly_dead), "revived": list(site.revived)} for site in self.sites],
            "newly_dead": self.newly_dead,
            "revived": self.revived,
            "only_in_base": list(self.only_in_base),
            "only_in_new": list(self.only_in_new),
            "gate": None if self.gate is None else self.gate.to_dict(),
        }

    def to_frame(self) -> pd.DataFrame:
        """One row per matched site with counts, ratios and the numbers of changed units."""
        rows = [{"name": s.name, "kind": s.kind, "units": s.units_new, "dead_base": s.dead_base,
                 "dead_new": s.dead_new, "dead_ratio_base": s.dead_ratio_base, "dead_ratio_new": s.dead_ratio_new,
                 "dead_ratio_increase": s.dead_ratio_increase, "newly_dead": len(s.newly_dead),
                 "revived": len(s.revived)} for s in self.sites]
        return pd.DataFrame(rows, columns=["name", "kind", "units", "dead_base", "dead_new", "dead_ratio_base",
                                           "dead_ratio_new", "dead_ratio_increase", "newly_dead", "revived"])

    def __repr__(self) -> str:
        return (f"DiffResult(sites={len(self.sites)}, newly_dead={self.newly_dead}, revived={self.revived}, "
                f"only_in_base={len(self.only_in_base)}, only_in_new={len(self.only_in_new)})")


def _names(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _settings_of(result: ScanResult) -> dict[str, Any]:
    thresholds = dataclasses.asdict(result.settings.thresholds)
    values = {"granularity": result.settings.granularity.value, "functional": bool(result.settings.functional),
              "layers": list(result.settings.layers), "exclude": list(result.settings.exclude), **thresholds}
    return {key: values[key] for key in COMPARED_SETTINGS}


def differences(base: ScanResult, new: ScanResult) -> list[str]:
    """How two results differ in model or settings, one phrase each (empty: comparable).

    The weights (the model file's sha256) are not compared: a new model is expected to
    have new weights. The architecture is: its class, its site names and their widths.
    """
    found: list[str] = []
    base_class, new_class = base.model.get("class"), new.model.get("class")
    if base_class and new_class and base_class != new_class:
        found.append(f"model class {base_class} vs {new_class}")
    base_names = [site.name for site in base.sites]
    new_names = {site.name for site in new.sites}
    missing = [name for name in base_names if name not in new_names]
    added = [site.name for site in new.sites if site.name not in set(base_names)]
    if missing:
        found.append(f"sites only in base: {_names(missing)}")
    if added:
        found.append(f"sites only in new: {_names(added)}")
    base_units = {site.name: site.units for site in base.sites}
    resized = [f"{site.name} ({base_units[site.name]} vs {site.units} units)" for site in new.sites
               if site.name in base_units and base_units[site.name] != site.units]
    if resized:
        found.append(f"site widths differ: {_names(resized)}")
    base_settings, new_settings = _settings_of(base), _settings_of(new)
    for key in COMPARED_SETTINGS:
        if base_settings[key] != new_settings[key]:
            found.append(f"{key} {base_settings[key]!r} vs {new_settings[key]!r}")
    return found


def diff(base: ScanResult, new: ScanResult, *, force: bool = False) -> DiffResult:
    """Compare two scans site by site (matched by name) and unit by unit.

    Args:
        base: the baseline scan.
        new: the scan to judge against it.
        force: compare even when the models or settings differ (what differs is kept
            in ``differences``).

    Returns:
        The diff; give it to ``check_diff_gate`` for a pass/fail.

    Raises:
        IncompatibleResultsError: the results come from different architectures or
            settings and ``force`` is False; the message says what differs.
    """
    found = differences(base, new)
    if found and not force:
        raise IncompatibleResultsError(f"cannot compare these results: {'; '.join(found)}",
                                       hint="compare scans of the same architecture with the same settings, "
                                            "or pass --force (force=True) to compare the sites they share")
    base_sites = {site.name: site for site in base.sites}
    new_names = {site.name for site in new.sites}
    sites = []
    for site in new.sites:
        old = base_sites.get(site.name)
        if old is None:
            continue
        # Dead as the scan's verdict line counts it: never-active units of leaky kinds keep a gradient.
        dead_new = set(np.flatnonzero(dead_mask(site)).tolist())
        dead_old = set(np.flatnonzero(dead_mask(old)).tolist())
        sites.append(SiteDiff(name=site.name, kind=site.kind, units_base=old.units, units_new=site.units,
                              dead_base=len(dead_old), dead_new=len(dead_new),
                              newly_dead=tuple(sorted(int(u) for u in dead_new - dead_old)),
                              revived=tuple(sorted(int(u) for u in dead_old - dead_new))))
    notes = []
    base_data, new_data = base.data.get("sha256"), new.data.get("sha256")
    if base_data and new_data and base_data != new_data:
        notes.append(f"the two scans ran on different data ({base.data.get('source')} vs {new.data.get('source')})")
    elif base.data.get("samples") != new.data.get("samples"):
        notes.append(f"the two scans saw different numbers of samples ({base.data.get('samples')} vs "
                     f"{new.data.get('samples')})")
    return DiffResult(sites=tuple(sites), only_in_base=tuple(s.name for s in base.sites if s.name not in new_names),
                      only_in_new=tuple(s.name for s in new.sites if s.name not in base_sites),
                      base={"model": base.model, "data": base.data}, new={"model": new.model, "data": new.data},
                      differences=tuple(found), notes=tuple(notes))


def check_diff_gate(diff: DiffResult, max_new_dead: int | None = None,
                    max_dead_ratio_increase: float | None = None) -> DiffGate:
    """Judge a diff against limits; a value above its limit fails, equal passes.

    Args:
        diff: the comparison.
        max_new_dead: most units (over all matched sites) that may be dead in new but not in base.
        max_dead_ratio_increase: most any site's dead share may rise (0.05 = 5 points).

    Returns:
        The outcome, with one violation per broken limit (per site for the ratio).

    Raises:
        ConfigError: a negative count or a ratio outside [0, 1].
    """
    if max_new_dead is not None and (isinstance(max_new_dead, bool) or not isinstance(max_new_dead, int)
                                     or max_new_dead < 0):
        raise ConfigError(f"max_new_dead must be a whole number >= 0, got {max_new_dead!r}")
    if max_dead_ratio_increase is not None and not 0.0 <= max_dead_ratio_increase <= 1.0:
        raise ConfigError(f"max_dead_ratio_increase must be between 0 and 1, got {max_dead_ratio_increase}",
                          hint="it is a share of a site's units: 0.05 allows 5 points more")
    violations: list[DiffViolation] = []
    if max_new_dead is not None and diff.newly_dead > max_new_dead:
        violations.append(DiffViolation("model", "new_dead", diff.newly_dead, max_new_dead))
    if max_dead_ratio_increase is not None:
        # Exact: 0.8 - 0.1 must equal a limit of 0.7 ("equal passes"), which floats get wrong.
        limit = Fraction(repr(float(max_dead_ratio_increase)))
        for site in diff.sites:
            if site._exact_increase() > limit:
                violations.append(DiffViolation(site.name, "dead_ratio_increase", site.dead_ratio_increase,
                                                 max_dead_ratio_increase))
    return DiffGate(max_new_dead, max_dead_ratio_increase, not violations, tuple(violations))
