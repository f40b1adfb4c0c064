"""Per-unit statistics of one site as plain numpy data: what a scan result holds.

No torch here: results, verdicts, the JSON report and every renderer read these
arrays, and commands that only read JSON (``deadrelu report``, ``diff``, ``merge``)
never import torch. ``deadrelu.stats.Accumulator.finalize`` produces them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

#: Every per-unit sum a site can have, in accumulator order.
SUM_FIELDS = ("active", "total", "total_sq", "total_abs", "at_floor", "at_ceiling")


@dataclass(frozen=True)
class SiteStats:
    """Finalised per-unit statistics of one site, on the host (numpy, float64).

    Attributes:
        observations: per unit, how many scalars were seen and counted.
        active: per unit, how many observations were in the active region.
        total, total_sq, total_abs: per unit, sums of h, h**2 and |h|.
        minimum, maximum: per unit, extremes of h (+inf/-inf when nothing was counted).
        at_floor: per unit, observations at the negative floor / lower bound.
        at_ceiling: per unit, observations at the upper bound (ReLU6, Hardtanh).
        nonfinite: per unit, observations left out because their batch slice held NaN/inf.
    """

    observations: np.ndarray
    active: np.ndarray
    total: np.ndarray
    total_sq: np.ndarray
    total_abs: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    at_floor: np.ndarray
    at_ceiling: np.ndarray
    nonfinite: np.ndarray

    @property
    def units(self) -> int:
        return int(self.observations.shape[0])

    def _ratio(self, numerator: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.observations > 0, numerator / np.maximum(self.observations, 1), np.nan)

    @property
    def active_rate(self) -> np.ndarray:
        """Share of each unit's observations in the active region (NaN if none counted)."""
        return self._ratio(self.active)

    @property
    def mean(self) -> np.ndarray:
        return self._ratio(self.total)

    @property
    def mean_abs(self) -> np.ndarray:
        return self._ratio(self.total_abs)

    @property
    def std(self) -> np.ndarray:
        mean = self.mean
        with np.errstate(invalid="ignore"):
            return np.sqrt(np.maximum(self._ratio(self.total_sq) - mean * mean, 0.0))

    @property
    def floor_rate(self) -> np.ndarray:
        return self._ratio(self.at_floor)

    @property
    def bound_rate(self) -> np.ndarray:
        return self._ratio(self.at_floor + self.at_ceiling)

    def merge(self, other: SiteStats) -> SiteStats:
        """Combine statistics of the same site over two disjoint parts of the data."""
        if other.units != self.units:
            raise ValueError(f"cannot merge sites of {self.units} and {other.units} units")
        merged = {}
        for field in fields(self):
            left, right = getattr(self, field.name), getattr(other, field.name)
            if field.name == "minimum":
                merged[field.name] = np.minimum(left, right)
            elif field.name == "maximum":
                merged[field.name] = np.maximum(left, right)
            else:
                merged[field.name] = left + right
        return SiteStats(**merged)

    def to_lists(self) -> dict[str, list[float]]:
        """Per-unit arrays as JSON-ready lists (infinities become None)."""
        out: dict[str, list[float]] = {}
        for field in fields(self):
            values = getattr(self, field.name)
            out[field.name] = [None if not math.isfinite(v) else (int(v) if v.is_integer() else v)
                               for v in values.tolist()]
        return out

    @classmethod
    def from_lists(cls, data: dict[str, list]) -> SiteStats:
        """Inverse of ``to_lists``."""
        arrays = {}
        for field in fields(cls):
            raw = data[field.name]
            missing = np.inf if field.name == "minimum" else (-np.inf if field.name == "maximum" else np.nan)
            arrays[field.name] = np.array([missing if v is None else v for v in raw], dtype=np.float64)
        return cls(**arrays)


__all__ = ["SiteStats", "SUM_FIELDS"]
