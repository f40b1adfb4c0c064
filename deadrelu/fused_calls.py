"""How an accumulator calls the fused C kernel (``deadrelu.fused``): the ``(outer, units,
inner)`` layout the kernel reads, decided once per shape and strides, and the site's
constants, handed over as one ``fused.CallConstants`` filled once per plan.

A site calls the kernel once per forward pass with the same thresholds and accumulator
addresses; passed one by one through ctypes they cost ~2.5 us a call, more than the kernel
on a small activation. Here a call passes the constants' address and what changes per call
(the tensors, the layout, the thread count): ~0.7 us.
"""

from __future__ import annotations

import ctypes
import functools
import math
from typing import TYPE_CHECKING, Any

import torch

from . import fused

if TYPE_CHECKING:
    from .stats import Accumulator, ReductionPlan

#: The largest count that float32 holds exactly (2**24): the kernel counts short runs in float32.
FLOAT32_EXACT_COUNT = 2 ** 24
#: ``KernelCalls`` remembers this many (shape, strides) per site; past that it recomputes.
LAYOUTS_KEPT = 64
_UNKNOWN = object()


class _Nonzero:
    """The active source of a gated product, "active where the output is not 0": ``output.abs()``,
    which the kernel reads from the output itself (``a_mode`` 3) without making it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NONZERO"


#: ``Accumulator.update``'s active source for a product site: ``|output| > 0`` (NaN never).
NONZERO = _Nonzero()


@functools.lru_cache(maxsize=4096)
def contiguous_view_shape(shape: torch.Size, dims: tuple[int, ...]) -> tuple[int, int, int] | None:
    """``(outer, units, inner)`` of a contiguous tensor of ``shape`` reduced over ``dims`` (None: its
    kept axes are not one block). Decided once per shape: a site sees the same few every batch."""
    ndim = len(shape)
    reduced = {axis % ndim for axis in dims} if ndim else set()
    kept = [axis for axis in range(ndim) if axis not in reduced]
    if not kept:
        return (math.prod(shape), 1, 1)
    first, last = kept[0], kept[-1] + 1
    if kept != list(range(first, last)):
        return None
    return (math.prod(shape[:first]), math.prod(shape[first:last]), math.prod(shape[last:]))


def units_view(tensor: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor | None:
    """``tensor`` as an ``(outer, units, inner)`` view without a copy, or None if it has none.

    The kept (unit) axes must be one consecutive block; a channels-last tensor whose
    unit axis is physically last becomes ``(N*H*W, C, 1)``.
    """
    if tensor.is_contiguous():
        shape = contiguous_view_shape(tensor.shape, dims)
        return None if shape is None else tensor.view(shape)
    ndim = tensor.ndim
    reduced = {axis % ndim for axis in dims} if ndim else set()
    kept = [axis for axis in range(ndim) if axis not in reduced]
    if not kept:
        return tensor.reshape(-1, 1, 1) if tensor.is_contiguous() else None
    first, last = kept[0], kept[-1] + 1
    if kept != list(range(first, last)):
        return None
    shape = tensor.shape
    units = math.prod(shape[first:last])
    if tensor.is_contiguous():
        return tensor.view(math.prod(shape[:first]), units, math.prod(shape[last:]))
    moved = tensor.movedim(tuple(range(first, last)), tuple(range(ndim - (last - first), ndim)))
    if moved.is_contiguous():
        return moved.view(-1, units, 1)
    return None


class KernelCalls:
    """One accumulator's calls of the kernel: its layouts by (shape, strides, axes) and its
    ``CallConstants`` by plan and activation."""

    def __init__(self) -> None:
        self._layouts: dict[tuple[Any, ...], tuple[int, int, int] | None] = {}
        self._calls: dict[tuple[Any, ...], tuple[int, Any, ReductionPlan]] = {}

    def update(self, acc: Accumulator, output: torch.Tensor, active_source: torch.Tensor | _Nonzero,
               plan: ReductionPlan) -> bool:
        """Reduce ``output`` and add it into ``acc`` in one pass of the kernel; False when this
        tensor does not take that path (not float32 on the CPU, no view, no kernel)."""
        if output.dtype != torch.float32 or output.device.type != "cpu":
            return False
        if plan.floor_from_active and active_source is not output:
            return False  # reduce_batch raises the error
        function = fused.kernel()
        if function is None:
            return False
        layout = self._layout(output, plan.dims)
        if layout is None or layout[1] != acc.units:
            return False
        if active_source is output:
            mode, active = 0, output
        elif active_source is NONZERO:
            mode, active = 3, output
        else:
            active = active_source
            if active.shape != output.shape or self._layout(active, plan.dims) != layout:
                return False
            if active.dtype == torch.float32:
                mode = 1
            elif active.dtype in (torch.bool, torch.uint8):
                mode = 2
            else:
                return False
        outer, _units, inner = layout
        if outer * inner > FLOAT32_EXACT_COUNT:
            return False  # the kernel counts short runs in float32
        status = function(self._constants(acc, plan), output.data_ptr(), active.data_ptr(), mode, outer, inner,
                          torch.get_num_threads())
        if status != 0:  # out of memory before anything was written: reduce eagerly
            return False
        acc.offered += outer * inner
        return True

    def activation(self, acc: Accumulator, x: torch.Tensor, out: torch.Tensor, activation: tuple[Any, ...],
                   from_input: bool, plan: ReductionPlan) -> bool:
        """Compute an activation of ``x`` into ``out`` and add its statistics into ``acc``, in one
        pass of the kernel; False, with nothing written, when this call does not take that path.

        Args:
            acc: the site's accumulator.
            x: the pre-activation, float32 on the CPU.
            out: where the output goes: ``x`` itself (in place) or a tensor with ``x``'s strides.
            activation: the kernel's ``(act, low, high, slopes pointer, slope_per_unit)``.
            from_input: "active" is read from ``x`` (negative slopes), else from the output.
            plan: the site's reduction plan (its first-batch plan: never the flags variant).
        """
        function = fused.activation()
        if function is None or (plan.floor_from_active and from_input):
            return False
        layout = self._layout(x, plan.dims)
        if layout is None or layout[1] != acc.units:
            return False
        outer, _units, inner = layout
        if outer * inner > FLOAT32_EXACT_COUNT:
            return False
        status = function(self._constants(acc, plan, activation, from_input), x.data_ptr(), out.data_ptr(), outer, inner,
                          torch.get_num_threads())
        if status != 0:  # -1: out of memory before anything was written
            return False
        acc.offered += outer * inner
        return True

    def _layout(self, tensor: torch.Tensor, dims: tuple[int, ...]) -> tuple[int, int, int] | None:
        """``tensor``'s ``(outer, units, inner)`` as the kernel reads it (``units_view``), or None;
        decided once per shape and strides (a site sees the same few)."""
        key = (tensor.shape, tensor.stride(), dims)
        layout = self._layouts.get(key, _UNKNOWN)
        if layout is _UNKNOWN:
            view = units_view(tensor, dims)
            layout = None if view is None else (view.shape[0], view.shape[1], view.shape[2])
            if len(self._layouts) < LAYOUTS_KEPT:
                self._layouts[key] = layout
        return layout  # type: ignore[return-value]

    def _constants(self, acc: Accumulator, plan: ReductionPlan, activation: tuple[Any, ...] | None = None,
                   from_input: bool = False) -> int:
        """The address of ``acc``'s ``fused.CallConstants`` for ``plan`` (and a fused
        activation's ``(act, low, high, slopes, slope_per_unit)``), filled on first use; the
        accumulator's sums are fixed by its first call."""
        key = (id(plan), activation, from_input)
        kept = self._calls.get(key)
        if kept is None:
            fields = plan.fields
            acc.keep(fields, plan.derived)
            act, low, high, slopes, slope_per_unit = activation or (0, 0.0, 0.0, None, 0)
            constants = fused.CallConstants(
                act=act, slope_per_unit=slope_per_unit, from_input=from_input, want_abs="total_abs" in fields,
                want_floor="at_floor" in fields, want_ceiling="at_ceiling" in fields, low=low, high=high,
                threshold=plan.threshold, floor_at=plan.floor_at if plan.floor_at is not None else 0.0,
                ceiling_at=plan.ceiling_at if plan.ceiling_at is not None else 0.0, slopes=slopes, units=acc.units,
                min_per_thread=fused.min_per_thread(), rows=ctypes.addressof(acc._rows),
                acc_sums=acc.sums.data_ptr(), acc_observations=acc.observations.data_ptr(),
                acc_minimum=acc.minimum.data_ptr(), acc_maximum=acc.maximum.data_ptr())
            # The plan is kept with its constants, so its id names no other plan while cached.
            kept = self._calls[key] = (ctypes.addressof(constants), constants, plan)
        return kept[0]


__all__ = ["FLOAT32_EXACT_COUNT", "NONZERO", "KernelCalls", "contiguous_view_shape", "units_view"]
