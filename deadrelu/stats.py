"""Pure tensor math: per-unit accumulators that stream over batches in O(units) memory.

Nothing here knows about modules, files or printing. ``reduce_batch`` is the one
per-batch reduction (kept in one function so it can be compiled or fused);
``Accumulator`` adds its output into float64 running tensors on the model's device
without any host synchronisation; ``SiteStats`` is the finalised, host-side copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np
import torch


class BatchStats(NamedTuple):
    """Per-unit reductions of one batch (all tensors of the unit shape)."""

    active: torch.Tensor
    total: torch.Tensor
    total_sq: torch.Tensor
    total_abs: torch.Tensor
    minimum: torch.Tensor
    maximum: torch.Tensor
    at_floor: torch.Tensor
    at_ceiling: torch.Tensor


@dataclass(frozen=True)
class ReductionPlan:
    """How one site's tensors are reduced; fixed at the site's first call.

    Attributes:
        dims: the axes reduced away (everything but the unit axes).
        threshold: an observation is active when its active source is > this.
        floor_at: outputs <= this count as "at the floor" (None: the kind has no floor).
        ceiling_at: outputs >= this count as "at the ceiling" (None: no upper bound).
    """

    dims: tuple[int, ...]
    threshold: float
    floor_at: float | None
    ceiling_at: float | None


#: The largest count that float32 holds exactly (2**24).
FLOAT32_EXACT_COUNT = 2 ** 24


def reduce_batch(output: torch.Tensor, active_source: torch.Tensor, plan: ReductionPlan) -> BatchStats:
    """Reduce one activation tensor to per-unit statistics of this batch.

    Args:
        output: the activation's output ``h``.
        active_source: the tensor judged against ``plan.threshold`` for "active"
            (the pre-activation for PReLU-like kinds with negative slopes, else ``output``).
        plan: the site's reduction plan.

    Returns:
        Per-unit batch statistics in float32 (float64 for float64 models, and for
        batches with more than 2**24 observations per unit).
    """
    dims = plan.dims
    value = output if output.dtype in (torch.float32, torch.float64) else output.float()
    # float32 holds integers exactly only up to 2**24: a batch with more observations per
    # unit than that (a large image batch per channel) is summed in float64, so counts stay exact.
    per_unit = 1
    for axis in dims:
        per_unit *= value.shape[axis]
    wide = torch.float64 if value.dtype != torch.float64 and per_unit > FLOAT32_EXACT_COUNT else None
    # Counting through a float buffer (gt(..., out=float)) avoids a bool->int64 sum,
    # which is several times slower on CPU.
    flag = torch.empty_like(value)
    active = torch.gt(active_source, plan.threshold, out=flag).sum(dims, dtype=wide)
    total = value.sum(dims, dtype=wide)
    total_sq = torch.mul(value, value, out=flag).sum(dims, dtype=wide)
    total_abs = torch.abs(value, out=flag).sum(dims, dtype=wide)
    minimum = value.amin(dims)
    maximum = value.amax(dims)
    if plan.floor_at is not None:
        at_floor = torch.le(value, plan.floor_at, out=flag).sum(dims, dtype=wide)
    else:
        at_floor = torch.zeros_like(total)
    if plan.ceiling_at is not None:
        at_ceiling = torch.ge(value, plan.ceiling_at, out=flag).sum(dims, dtype=wide)
    else:
        at_ceiling = torch.zeros_like(total)
    return BatchStats(active, total, total_sq, total_abs, minimum, maximum, at_floor, at_ceiling)


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


class Accumulator:
    """Running per-unit sums on the model's device, float64, updated without host syncs.

    Args:
        unit_shape: shape of the per-unit tensors (``(C,)`` for channels).
        device: where the model runs.
    """

    def __init__(self, unit_shape: tuple[int, ...], device: torch.device) -> None:
        # Accumulators are made outside inference_mode so they stay ordinary tensors
        # that can be read after the scan (and are faster to update in place).
        with torch.inference_mode(False):
            def zeros() -> torch.Tensor:
                return torch.zeros(unit_shape, dtype=torch.float64, device=device)
            self.unit_shape = unit_shape
            self.observations = zeros()
            self.active = zeros()
            self.total = zeros()
            self.total_sq = zeros()
            self.total_abs = zeros()
            self.minimum = torch.full(unit_shape, math.inf, dtype=torch.float64, device=device)
            self.maximum = torch.full(unit_shape, -math.inf, dtype=torch.float64, device=device)
            self.at_floor = zeros()
            self.at_ceiling = zeros()
            self.nonfinite = zeros()

    def add(self, batch: BatchStats, observations_per_unit: int) -> None:
        """Add one batch's reductions.

        A unit whose batch slice held NaN/inf shows it in ``total_abs`` (NaN or inf
        propagate through the sum); that slice is left out of every statistic and
        counted in ``nonfinite`` instead, so one bad value never poisons min/max/sums.
        """
        finite = torch.isfinite(batch.total_abs)
        zero = torch.zeros((), dtype=batch.total.dtype, device=batch.total.device)
        count = torch.full((), float(observations_per_unit), dtype=torch.float64, device=finite.device)
        self.observations += torch.where(finite, count, 0.0)
        self.nonfinite += torch.where(finite, 0.0, count)
        self.active += torch.where(finite, batch.active, zero)
        self.total += torch.where(finite, batch.total, zero)
        self.total_sq += torch.where(finite, batch.total_sq, zero)
        self.total_abs += torch.where(finite, batch.total_abs, zero)
        self.at_floor += torch.where(finite, batch.at_floor, zero)
        self.at_ceiling += torch.where(finite, batch.at_ceiling, zero)
        torch.minimum(self.minimum, torch.where(finite, batch.minimum, math.inf), out=self.minimum)
        torch.maximum(self.maximum, torch.where(finite, batch.maximum, -math.inf), out=self.maximum)

    def finalize(self) -> SiteStats:
        """Copy to the host as flat float64 arrays (one host sync, at the end)."""
        def host(tensor: torch.Tensor) -> np.ndarray:
            return tensor.detach().reshape(-1).cpu().numpy().astype(np.float64)
        return SiteStats(
            observations=host(self.observations), active=host(self.active), total=host(self.total),
            total_sq=host(self.total_sq), total_abs=host(self.total_abs), minimum=host(self.minimum),
            maximum=host(self.maximum), at_floor=host(self.at_floor), at_ceiling=host(self.at_ceiling),
            nonfinite=host(self.nonfinite))
