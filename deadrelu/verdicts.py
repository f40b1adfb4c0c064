"""The verdicts a result stores: the three per-unit verdicts, each a named definition, and the gate's outcome.

* **dead** — the unit's active rate (share of its observations in the active region)
  is <= ``dead_threshold``; with the default 0 that is "never active on the scanned
  data". Active means pre-activation > 0 (ReLU, LeakyReLU, PReLU, RReLU, ELU, SELU,
  CELU, GELU, SiLU) or output above the lower bound (ReLU6, Hardtanh).
* **unobserved** — a unit with no finite observation (every batch slice it was in held
  NaN/inf) is neither alive nor dead: no verdict is true for it. It still counts in
  ``units``, the denominator of every ratio; results carry the ``unobserved`` count, and
  a scan in which every unit is unobserved fails (``DataLoadError``) instead of reporting health.
* **saturated** — ELU/SELU/CELU: the output sits at the negative floor
  (``<= floor + |floor|*saturation_rtol``) in at least ``saturation`` of observations;
  ReLU6/Hardtanh: the output sits at either bound that often. The gradient there is
  ~0, so these units are effectively dead too. A unit can be both dead and saturated.
* **dormant** — ReDo's score ``s_i = mean|h_i| / mean_k mean|h_k|`` is <= ``tau``,
  the mean over the site's units that have observations (a NaN unit is left out of
  the mean and is never dormant). If every unit's mean |h| is 0, every score is 0.

The gate's outcome (``GateOutcome``) lives here too: like the per-unit verdicts it is data a
``ScanResult`` stores and reads back from JSON. This module sits below ``deadrelu.result``
(it imports only settings and unit statistics); the judge (``deadrelu.judge``) re-exports
these names and holds the rules that produce gates and suggestions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .settings import Thresholds
from .unitstats import SiteStats


@dataclass(frozen=True, eq=False)
class SiteVerdict:
    """Per-unit verdicts of one site.

    Attributes:
        dead, saturated, dormant: boolean masks over units.
        dormancy_score: ReDo's normalised mean |h| per unit (NaN where unobserved).
    """

    dead: np.ndarray
    saturated: np.ndarray
    dormant: np.ndarray
    dormancy_score: np.ndarray

    @property
    def dead_units(self) -> list[int]:
        return np.flatnonzero(self.dead).tolist()

    @property
    def saturated_units(self) -> list[int]:
        return np.flatnonzero(self.saturated).tolist()

    @property
    def dormant_units(self) -> list[int]:
        return np.flatnonzero(self.dormant).tolist()


def dormancy_scores(mean_abs: np.ndarray) -> np.ndarray:
    """ReDo scores for one site; NaN units do not spread to the others."""
    observed = np.isfinite(mean_abs)
    if not observed.any():
        return np.full_like(mean_abs, np.nan)
    typical = float(mean_abs[observed].mean())
    if typical == 0.0:
        return np.where(observed, 0.0, np.nan)
    return np.where(observed, mean_abs / typical, np.nan)


def judge_site(stats: SiteStats, saturation: str | None, thresholds: Thresholds) -> SiteVerdict:
    """Judge every unit of one site.

    Args:
        stats: the site's finalised statistics.
        saturation: ``"floor"`` (ELU/SELU/CELU), ``"bounds"`` (ReLU6/Hardtanh) or None.
        thresholds: verdict thresholds.

    Returns:
        The site's verdict masks and dormancy scores.
    """
    observed = stats.observations > 0
    with np.errstate(invalid="ignore"):
        dead = observed & (np.nan_to_num(stats.active_rate, nan=1.0) <= thresholds.dead_threshold)
        if saturation == "floor":
            rate = stats.floor_rate
        elif saturation == "bounds":
            rate = stats.bound_rate
        else:
            rate = np.zeros(stats.units)
        saturated = observed & (np.nan_to_num(rate, nan=0.0) >= thresholds.saturation) if saturation else \
            np.zeros(stats.units, dtype=bool)
        scores = dormancy_scores(stats.mean_abs)
        dormant = observed & (np.nan_to_num(scores, nan=np.inf) <= thresholds.tau)
    return SiteVerdict(dead=dead, saturated=saturated, dormant=dormant, dormancy_score=scores)


@dataclass(frozen=True)
class GateViolation:
    """One broken limit: ``scope`` is ``"model"`` or a site name."""

    scope: str
    dead_ratio: float
    limit: float


@dataclass(frozen=True)
class GateOutcome:
    """Whether a result passed the gate, and which limits it broke."""

    max_dead_ratio: float | None
    max_layer_dead_ratio: float | None
    passed: bool
    violations: tuple[GateViolation, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"max_dead_ratio": self.max_dead_ratio, "max_layer_dead_ratio": self.max_layer_dead_ratio,
                "passed": self.passed, "violations": [asdict(v) for v in self.violations]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateOutcome:
        return cls(max_dead_ratio=data.get("max_dead_ratio"), max_layer_dead_ratio=data.get("max_layer_dead_ratio"),
                   passed=bool(data["passed"]),
                   violations=tuple(GateViolation(v["scope"], v["dead_ratio"], v["limit"])
                                    for v in data.get("violations", [])))
