"""Pure tensor math: per-unit accumulators that stream over batches in O(units) memory.

Nothing here knows about modules, files or printing. ``reduce_batch`` is the one
per-batch reduction; ``fused_reduction`` is the same reduction written as one pure
function for ``torch.compile`` (``CompiledReduction``); ``Accumulator`` adds either's
output into float64 running tensors on the model's device without any host
synchronisation; ``SiteStats`` is the finalised, host-side copy.

Why the eager reduction looks the way it does (each measured on a 2-core CPU, see
``benchmarks/RESULTS.md``):

* The activation is viewed as ``(outer, units, inner)`` (a conv output ``(N, C, H, W)``
  is ``(N, C, H*W)``; a Linear output ``(N, L, D)`` is ``(N*L, D, 1)``) and reduced in
  two stages: first over the contiguous ``inner`` axis when it is long (>= 64), else
  over ``outer``; then the small partial result. Reducing ``(0, 2, 3)`` in one call is
  up to 10x slower for small spatial sizes.
* Sums over the outer axis are one matrix-vector product, ``ones(outer) @ x`` (1.3-2x
  faster than ``torch.sum(x, 0)`` on cache-sized tensors, ~10% on larger ones; BLAS runs
  it on one thread, so larger tensors on several threads keep ``torch.sum``).
* Comparisons are counted through a float buffer (``gt(x, 0, out=float_buffer)``,
  several times faster than ``x.gt(0).sum()``); the buffer and the partial results
  live in a ``ReductionWorkspace`` shared by all sites, so no call allocates (a fresh
  1 MB buffer per call costs page faults that doubled the reduction's time).
* ``amin`` and ``amax`` separately (``aminmax`` was 5x slower); ``vector_norm`` for the
  sum of squares and of ``|h|`` over a long inner axis (one read, no buffer write).
* Per-batch sums are float32 (float64 inside the reduction was 2-3x slower) and are
  added into float64 accumulators; a batch with more than 2**24 observations per unit
  is reduced in float64 so counts stay exact.
* Kind identities skip passes where they are exact (``ReductionPlan.fields``): a ReLU
  output is >= 0, so sum |h| == sum h; ReLU6/Hardtanh outputs never go below the lower
  bound, so "at the lower bound" == "not above it" == observations - active. For the
  same kinds a batch where every unit has an inactive observation has its minimum at the
  bound; on CPU tensors (where reading that costs no device sync) the amin pass is skipped.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

from .fused_calls import FLOAT32_EXACT_COUNT, NONZERO, KernelCalls
from .fused_calls import units_view as _units_view
from .unitstats import SUM_FIELDS, SiteStats


#: Reduce over the contiguous inner axis first when it is at least this long.
INNER_FIRST_MIN = 64

#: With several threads, sum over the outer axis with a BLAS matrix-vector product up to
#: this many elements (2 MiB of float32, about what stays in this machine's L2 caches);
#: with one thread, always.
GEMV_MAX_ELEMENTS = 2 ** 19


@dataclass(frozen=True)
class ReductionPlan:
    """How one site's tensors are reduced; fixed at the site's first call.

    Attributes:
        dims: the axes reduced away (everything but the unit axes).
        threshold: an observation is active when its active source is > this.
        floor_at: outputs <= this count as "at the floor" (None: the kind has no floor).
        ceiling_at: outputs >= this count as "at the ceiling" (None: no upper bound).
        output_floor: the least value the activation can output by definition (ReLU 0,
            ReLU6 0, Hardtanh ``min_val``), or None when it is unbounded below. It lets
            the reduction skip passes whose result an identity already gives.
    """

    dims: tuple[int, ...]
    threshold: float
    floor_at: float | None
    ceiling_at: float | None
    output_floor: float | None = None

    @property
    def nonnegative(self) -> bool:
        """Outputs are >= 0, so ``total_abs == total`` exactly."""
        return self.output_floor is not None and self.output_floor >= 0

    @property
    def floor_from_active(self) -> bool:
        """Outputs never go below ``floor_at`` and "active" means "above it", so
        ``at_floor == observations - active`` exactly (ReLU6, Hardtanh)."""
        return (self.output_floor is not None and self.floor_at is not None
                and self.threshold == self.floor_at == self.output_floor)

    @property
    def floor_attained(self) -> bool:
        """Outputs never go below ``output_floor`` and "active" means "above it", so every
        finite observation that is not active equals ``output_floor`` (ReLU, ReLU6, Hardtanh)."""
        return self.output_floor is not None and self.threshold == self.output_floor

    @cached_property
    def fields(self) -> tuple[str, ...]:
        """The sums this plan computes per batch, in ``SUM_FIELDS`` order."""
        skipped = set(self.derived)
        if self.floor_at is None:
            skipped.add("at_floor")
        if self.ceiling_at is None:
            skipped.add("at_ceiling")
        return tuple(name for name in SUM_FIELDS if name not in skipped)

    @cached_property
    def derived(self) -> tuple[str, ...]:
        """The sums an identity gives instead of a pass over the data."""
        return (("total_abs",) if self.nonnegative else ()) + (("at_floor",) if self.floor_from_active else ())


class BatchStats(NamedTuple):
    """Per-unit reductions of one batch, units flattened.

    Attributes:
        fields: names of the rows of ``sums`` (a subset of ``SUM_FIELDS``, in that order).
        sums: ``(len(fields), units)`` per-unit sums (float32; float64 for float64
            models and for batches of more than 2**24 observations per unit).
        minimum, maximum: ``(units,)`` extremes of h.
        derived: sums left out because an identity gives them (see ``ReductionPlan``).
    """

    fields: tuple[str, ...]
    sums: torch.Tensor
    minimum: torch.Tensor
    maximum: torch.Tensor
    derived: tuple[str, ...] = ()

    def get(self, name: str) -> torch.Tensor | None:
        """The row of sum ``name``, or None when it was not computed."""
        return self.sums[self.fields.index(name)] if name in self.fields else None


class CompiledReducer(Protocol):
    """What ``reduce_batch`` asks of a compiled reduction (``compile_policy.CompiledReduction``):
    the batch's statistics, or None to reduce eagerly (compiling failed)."""

    def __call__(self, view: torch.Tensor, active: torch.Tensor, plan: ReductionPlan) -> BatchStats | None: ...


class ReductionWorkspace:
    """Scratch buffers reused by every call of every site, grown on demand.

    One flat buffer per purpose, dtype and device; a call takes a prefix of it. Hooks
    run one at a time, so sharing is safe, and the memory is that of the largest
    activation, not of all sites together. Buffers are created outside
    ``inference_mode`` so they stay ordinary tensors.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}
        self._ones: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
        #: calls the fused kernel served (``Accumulator.update`` counts them here)
        self.fused_calls = 0

    def take(self, purpose: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A flat tensor of ``numel`` elements whose contents are undefined."""
        key = (purpose, dtype, device)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < numel:
            self._buffers.pop(key, None)
            with torch.inference_mode(False):
                buffer = torch.empty(numel, dtype=dtype, device=device)
            self._buffers[key] = buffer
        return buffer[:numel]

    def ones_row(self, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A ``(1, numel)`` tensor of ones (one buffer, grown on demand; the whole buffer when it fits)."""
        key = (dtype, device)
        row = self._ones.get(key)
        if row is None or row.shape[1] < numel:
            with torch.inference_mode(False):
                row = torch.ones((1, numel), dtype=dtype, device=device)
            self._ones[key] = row
        return row if row.shape[1] == numel else row[:, :numel]

    @property
    def nbytes(self) -> int:
        """Bytes held by the scratch buffers."""
        return sum(b.numel() * b.element_size() for b in (*self._buffers.values(), *self._ones.values()))


def _reduced_value(output: torch.Tensor) -> torch.Tensor:
    return output if output.dtype in (torch.float32, torch.float64) else output.float()


def reduce_batch(output: torch.Tensor, active_source: torch.Tensor, plan: ReductionPlan,
                 workspace: ReductionWorkspace | None = None,
                 compiled: CompiledReducer | None = None) -> BatchStats:
    """Reduce one activation tensor to per-unit statistics of this batch.

    Args:
        output: the activation's output ``h``.
        active_source: the tensor judged against ``plan.threshold`` for "active"
            (the pre-activation for PReLU-like kinds with negative slopes, else ``output``).
        plan: the site's reduction plan.
        workspace: scratch buffers to reuse (a fresh one per call if None).
        compiled: use this ``torch.compile``'d reduction when it is usable.

    Returns:
        Per-unit batch statistics (see ``BatchStats``), in float32 (float64 for float64
        models, and for batches with more than 2**24 observations per unit).

    Raises:
        ValueError: a plan that derives ``at_floor`` from ``active`` was given an
            active source other than the output.
    """
    if plan.floor_from_active and active_source is not output:
        raise ValueError("this plan derives at_floor from active, which needs active_source to be the output")
    value = _reduced_value(output)
    reduced = {axis % value.ndim for axis in plan.dims} if value.ndim else set()
    per_unit = math.prod(value.shape[axis] for axis in reduced)
    if value.dtype != torch.float64 and per_unit > FLOAT32_EXACT_COUNT:
        # float32 holds integers exactly only up to 2**24: such a batch (a large image
        # batch per channel) is summed in float64, so its counts stay exact.
        return _reduce_wide(value, active_source, plan)
    view = _units_view(output, plan.dims)
    active_view = view if active_source is output else _units_view(active_source, plan.dims)
    if view is None or active_view is None or active_view.shape != view.shape:
        return _reduce_wide(value, active_source, plan, dtype=None)
    if compiled is not None and compiled.usable:
        batch = compiled(view, active_view, plan)
        if batch is not None:
            return batch
    if value is not output:  # low-precision model: reduce a float32 copy
        cast = (workspace or ReductionWorkspace()).take("cast", view.numel(), torch.float32, view.device)
        view = cast.view(view.shape).copy_(view)
        if active_source is output:
            active_view = view
    return _reduce_view(view, active_view, plan, workspace or ReductionWorkspace())


def _reduce_view(view: torch.Tensor, active: torch.Tensor, plan: ReductionPlan,
                 workspace: ReductionWorkspace) -> BatchStats:
    """The eager two-stage reduction of an ``(outer, units, inner)`` view."""
    outer, units, inner = view.shape
    dtype, device = view.dtype, view.device
    names = plan.fields
    count = len(names)
    same_source = active is view
    flags = workspace.take("flags", view.numel(), dtype, device)
    minimum = torch.empty(units, dtype=dtype, device=device)
    maximum = torch.empty(units, dtype=dtype, device=device)
    if inner >= INNER_FIRST_MIN:
        # First over the long contiguous inner axis into (outer, units) partials.
        stage, value, flags = 2, view, flags.view(view.shape)
        sums = torch.empty((count, units), dtype=dtype, device=device)
        rows = workspace.take("partials", count * outer * units, dtype, device).view(count, outer, units)
        extreme_partial: torch.Tensor | None = workspace.take("extremes", outer * units, dtype, device)
        extreme_partial = extreme_partial.view(outer, units)  # type: ignore[union-attr]
    else:
        # First over the outer axis of the (outer, units * inner) matrix, into (1, columns)
        # rows: the result itself when inner == 1, else partials summed over inner after.
        columns = units * inner
        stage, value, flags = 0, view.view(outer, columns), flags.view(outer, columns)
        sums = torch.empty((count, 1, units), dtype=dtype, device=device)
        if inner == 1:
            rows, extreme_partial = sums, None
        else:
            rows = workspace.take("partials", count * columns, dtype, device).view(count, 1, columns)
            extreme_partial = workspace.take("extremes", columns, dtype, device)
    active = value if same_source else active.view(value.shape)
    if stage == 0 and (view.numel() <= GEMV_MAX_ELEMENTS or torch.get_num_threads() == 1):
        # Sums over the outer axis as one matrix-vector product, ones(outer) @ x: 1.3-2x faster
        # than torch.sum(x, 0) on a tensor still in cache, ~10% on one thread otherwise; but
        # BLAS runs it on one thread, so larger tensors on several threads use torch.sum.
        # Counts stay exact (partial sums of 0/1 below 2**24); float sums agree with
        # float64 to ~1e-6 relative.
        ones = workspace.ones_row(outer, dtype, device)

        def stage_sum(tensor: torch.Tensor, row: torch.Tensor) -> None:
            torch.mm(ones, tensor, out=row)
    elif stage == 0:
        def stage_sum(tensor: torch.Tensor, row: torch.Tensor) -> None:
            torch.sum(tensor, 0, keepdim=True, out=row)
    else:
        def stage_sum(tensor: torch.Tensor, row: torch.Tensor) -> None:
            torch.sum(tensor, 2, out=row)
    for row, name in zip(rows, names):
        if name == "active":
            stage_sum(torch.gt(active, plan.threshold, out=flags), row)
        elif name == "total":
            stage_sum(value, row)
        elif name == "total_sq":
            if stage == 2:  # one read, no buffer write; sqrt then square costs ~1 ulp
                torch.linalg.vector_norm(value, 2, dim=2, out=row)
                row.square_()
            else:
                stage_sum(torch.mul(value, value, out=flags), row)
        elif name == "total_abs":
            if stage == 2:
                torch.linalg.vector_norm(value, 1, dim=2, out=row)
            else:
                stage_sum(torch.abs(value, out=flags), row)
        elif name == "at_floor":
            stage_sum(torch.le(value, plan.floor_at, out=flags), row)
        elif name == "at_ceiling":
            stage_sum(torch.ge(value, plan.ceiling_at, out=flags), row)
    sums = sums.view(count, units)
    if stage == 2:
        torch.sum(rows, 1, out=sums)
    elif extreme_partial is not None:
        torch.sum(rows.view(count, units, inner), 2, out=sums)
    # ReLU, ReLU6, Hardtanh: a finite observation that is not active sits exactly at the lower
    # bound, so a unit with one in this batch has its minimum there. Where reading that answer
    # on the host costs nothing (CPU tensors; on CUDA it would be a sync), the amin pass is
    # skipped when every unit has one. (A NaN counts as not active, but its slice is dropped.)
    skip_minimum = (plan.floor_attained and same_source and _host_read_is_free(device)
                    and bool((sums[0] < outer * inner).all()))
    for target, reduce_, skip in ((minimum, torch.amin, skip_minimum), (maximum, torch.amax, False)):
        if skip:
            target.fill_(plan.output_floor)  # type: ignore[arg-type]
        elif extreme_partial is None:
            reduce_(value, 0, out=target)
        elif stage == 2:
            reduce_(reduce_(value, 2, out=extreme_partial), 0, out=target)
        else:
            reduce_(reduce_(value, 0, out=extreme_partial).view(units, inner), 1, out=target)
    return BatchStats(names, sums, minimum, maximum, plan.derived)


def _host_read_is_free(device: torch.device) -> bool:
    """Whether reading a tensor's value on the host costs no device synchronisation."""
    return device.type == "cpu"


def _reduce_wide(value: torch.Tensor, active_source: torch.Tensor, plan: ReductionPlan,
                 dtype: torch.dtype | None = torch.float64) -> BatchStats:
    """The plain reduction over ``plan.dims`` (sums in ``dtype``): for batches too large for
    float32 counts and for tensors that have no ``(outer, units, inner)`` view."""
    dims = plan.dims
    flags = torch.empty_like(value)
    rows = []
    for name in plan.fields:
        if name == "active":
            rows.append(torch.gt(active_source, plan.threshold, out=flags).sum(dims, dtype=dtype))
        elif name == "total":
            rows.append(value.sum(dims, dtype=dtype))
        elif name == "total_sq":
            rows.append(torch.mul(value, value, out=flags).sum(dims, dtype=dtype))
        elif name == "total_abs":
            rows.append(torch.abs(value, out=flags).sum(dims, dtype=dtype))
        elif name == "at_floor":
            rows.append(torch.le(value, plan.floor_at, out=flags).sum(dims, dtype=dtype))
        elif name == "at_ceiling":
            rows.append(torch.ge(value, plan.ceiling_at, out=flags).sum(dims, dtype=dtype))
    sums = torch.stack([row.reshape(-1) for row in rows])
    return BatchStats(plan.fields, sums, value.amin(dims).reshape(-1), value.amax(dims).reshape(-1), plan.derived)


def fused_reduction(view: torch.Tensor, active: torch.Tensor, threshold: float, floor_at: float | None,
                    ceiling_at: float | None, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-batch reduction as one pure function, for ``torch.compile`` to fuse into one pass.

    Args:
        view: the activation as ``(outer, units, inner)``.
        active: the active source, same shape.
        threshold, floor_at, ceiling_at: as in ``ReductionPlan``.
        names: the sums to compute (``ReductionPlan.fields``).

    Returns:
        ``(sums, minimum, maximum)`` as in ``BatchStats``.
    """
    value = view if view.dtype in (torch.float32, torch.float64) else view.float()
    dims = (0, 2)
    rows = []
    for name in names:
        if name == "active":
            rows.append(torch.gt(active, threshold).to(value.dtype).sum(dims))
        elif name == "total":
            rows.append(value.sum(dims))
        elif name == "total_sq":
            rows.append((value * value).sum(dims))
        elif name == "total_abs":
            rows.append(value.abs().sum(dims))
        elif name == "at_floor":
            rows.append(torch.le(value, floor_at).to(value.dtype).sum(dims))
        elif name == "at_ceiling":
            rows.append(torch.ge(value, ceiling_at).to(value.dtype).sum(dims))
    return torch.stack(rows), value.amin(dims), value.amax(dims)


class Accumulator:
    """Running per-unit sums on the model's device, float64, updated without host syncs.

    Args:
        unit_shape: shape of the per-unit tensors (``(C,)`` for channels).
        device: where the model runs.

    The sums kept are those of the first batch added (its ``fields``); the ones an
    identity gives (``derived``) are filled in by ``finalize``.
    """

    def __init__(self, unit_shape: tuple[int, ...], device: torch.device) -> None:
        self.unit_shape = tuple(unit_shape)
        self.units = math.prod(self.unit_shape)
        self.device = device
        #: observations offered to ``add``, finite or not (a host int: no sync to keep it)
        self.offered = 0
        self._fields: tuple[str, ...] | None = None
        self._kernel = KernelCalls()
        self._derived: tuple[str, ...] = ()
        # Accumulators are made outside inference_mode so they stay ordinary tensors
        # that can be read after the scan (and are faster to update in place).
        with torch.inference_mode(False):
            self.observations = torch.zeros(self.units, dtype=torch.float64, device=device)
            self.minimum = torch.full((self.units,), math.inf, dtype=torch.float64, device=device)
            self.maximum = torch.full((self.units,), -math.inf, dtype=torch.float64, device=device)
            self.sums = torch.zeros((0, self.units), dtype=torch.float64, device=device)

    def update(self, output: torch.Tensor, active_source: torch.Tensor | object, plan: ReductionPlan,
               workspace: ReductionWorkspace | None = None, compiled: CompiledReducer | None = None) -> None:
        """Reduce one activation tensor (``reduce_batch``) and add it.

        Args:
            output: the activation's output.
            active_source: what "active" is judged on (see ``reduce_batch``), or ``NONZERO``:
                ``output.abs()`` (a gated product), which the fused kernel reads without making it.
            plan: the site's reduction plan.
            workspace: scratch buffers to reuse.
            compiled: a compiled reduction to use when usable.
        """
        if output.numel() == 0:
            return
        # The reduction is plain tensor math: no __torch_function__ override (a capture
        # mode, a tensor subclass) needs to see it, and skipping dispatch saves ~4 us an op.
        with torch._C.DisableTorchFunction():
            if (compiled is None or not compiled.usable) and self._kernel.update(self, output, active_source, plan):
                if workspace is not None:
                    workspace.fused_calls += 1
                return
            if active_source is NONZERO:
                active_source = output.abs()
            batch = reduce_batch(output, active_source, plan, workspace, compiled)  # type: ignore[arg-type]
            self.add(batch, output.numel() // max(self.units, 1))

    def update_activation(self, x: torch.Tensor, out: torch.Tensor, activation: tuple[Any, ...],
                          from_input: bool, plan: ReductionPlan) -> bool:
        """Compute an activation of ``x`` into ``out`` and add its statistics, in one pass of the
        fused kernel (``fused_calls.KernelCalls.activation``); False, with nothing written, when
        this call does not take that path (no fused activation, no units view, a batch too large
        to count in float32).

        Args:
            x: the pre-activation, float32 on the CPU.
            out: where the output goes: ``x`` itself (in place) or a tensor with ``x``'s strides.
            activation: the kernel's ``(act, low, high, slopes pointer, slope_per_unit)``.
            from_input: "active" is read from ``x`` (negative slopes), else from the output.
            plan: the site's reduction plan (its first-batch plan: never the flags variant).
        """
        return self._kernel.activation(self, x, out, activation, from_input, plan)

    def keep(self, fields: tuple[str, ...], derived: tuple[str, ...]) -> None:
        """Fix the sums kept to a first batch's ``fields``; raise when a later batch has others."""
        if self._fields is None:
            self._start(fields, derived)
        elif fields != self._fields:
            raise ValueError(f"batch has sums {fields}, this accumulator keeps {self._fields}")

    def _start(self, fields: tuple[str, ...], derived: tuple[str, ...]) -> None:
        """Fix the sums this accumulator keeps (those of its first batch)."""
        self._fields, self._derived = fields, derived
        # Row of each SUM_FIELDS entry in ``sums`` (-1: not kept), for the fused kernel.
        self._rows = (ctypes.c_int64 * len(SUM_FIELDS))(*(fields.index(name) if name in fields else -1
                                                          for name in SUM_FIELDS))
        with torch.inference_mode(False):
            self.sums = torch.zeros((len(fields), self.units), dtype=torch.float64, device=self.device)

    def add(self, batch: BatchStats, observations_per_unit: int) -> None:
        """Add one batch's reductions.

        A unit whose batch slice held NaN/inf shows it in sum |h| (NaN or inf propagate
        through it; for outputs >= 0 that is sum h): that slice is left out of every
        statistic and counted in ``nonfinite`` instead, so one bad value never poisons
        min/max/sums.
        """
        self.keep(batch.fields, batch.derived)
        sums = batch.sums.reshape(len(batch.fields), -1)
        check = sums[batch.fields.index("total_abs" if "total_abs" in batch.fields else "total")]
        finite = torch.isfinite(check)
        self.observations.add_(finite, alpha=observations_per_unit)
        self.sums.add_(torch.where(finite, sums, 0.0))
        torch.minimum(self.minimum, torch.where(finite, batch.minimum.reshape(-1), math.inf), out=self.minimum)
        torch.maximum(self.maximum, torch.where(finite, batch.maximum.reshape(-1), -math.inf), out=self.maximum)
        self.offered += observations_per_unit

    def finalize(self) -> SiteStats:
        """Copy to the host as flat float64 arrays (one host sync, at the end)."""
        def host(tensor: torch.Tensor) -> np.ndarray:
            return tensor.detach().reshape(-1).cpu().numpy().astype(np.float64)
        observations = host(self.observations)
        kept = dict(zip(self._fields or (), (host(row) for row in self.sums)))
        zeros = np.zeros(self.units, dtype=np.float64)
        values = {name: kept.get(name, zeros) for name in SUM_FIELDS}
        if "total_abs" in self._derived:
            values["total_abs"] = values["total"]
        if "at_floor" in self._derived:
            values["at_floor"] = observations - values["active"]
        return SiteStats(observations=observations, minimum=host(self.minimum), maximum=host(self.maximum),
                         nonfinite=self.offered - observations, **values)
