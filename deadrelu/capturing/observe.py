"""Observation: hand one activation call's tensors to its site's accumulator.

What "active" is read from is decided here, for every driver alike (``before_call``):

* from the output, when its sign tells it (ReLU, ELU with alpha > 0, ReLU6, Hardsigmoid...);
* from the input, when it does not (negative slopes, Hardswish's -3) and the call leaves its
  input alone;
* from flags judged *before* the call, when the call overwrites its input in place: a bool
  tensor, active where True, reduced with the threshold 0 (``SiteRecord.plan_for``) — the
  kind's own threshold (-3 for Hardswish) applies to the pre-activation, not to the flags;
* from ``|output|`` for gated products and GLU (active where not 0).

With a padding mask, the observations at padded positions are gathered out first
(``PaddingMask``). Nothing here keeps a reference to a tensor after the call.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..kinds import ActiveRule, KindSpec
from ..settings import Granularity, ScanSettings
from ..compile_policy import CompiledReduction
from ..stats import NONZERO, ReductionWorkspace
from .masking import PaddingMask
from .registry import SiteRecord


def before_call(spec: KindSpec, tensor: torch.Tensor, inplace: bool) -> torch.Tensor | None:
    """What "active" will be read from, taken before the call runs.

    Args:
        spec: the site's kind.
        tensor: the call's input (the pre-activation).
        inplace: the call overwrites ``tensor`` with its output.

    Returns:
        None (read from the output), the input itself, or bool flags judged now (in place).
    """
    if not spec.reads_input:
        return None
    # The input is about to be overwritten: judge it now, against the kind's own threshold.
    return torch.gt(tensor, spec.threshold) if inplace else tensor


class Observer:
    """Reduces observations into accumulators; owns the reduction's shared state and the mask.

    Attributes:
        workspace: scratch buffers shared by all sites.
        compiled: the compiled reduction, when the scan chose one (``compile_policy``).
        reduce_seconds: host seconds spent reducing (what the compile decision weighs).
        mask: the padding mask of the current forward pass.
    """

    def __init__(self, settings: ScanSettings) -> None:
        self.granularity = settings.granularity
        self.workspace = ReductionWorkspace()
        self.compiled: CompiledReduction | None = None
        self.reduce_seconds = 0.0
        self.mask = PaddingMask()

    def observe(self, site: SiteRecord, output: torch.Tensor, before: torch.Tensor | None) -> None:
        """Reduce one call's output into the site's accumulator.

        Args:
            site: the site.
            output: the call's output.
            before: what ``before_call`` returned for this call.
        """
        start = time.perf_counter()
        site.check_shape(output.shape, self.granularity)
        active: Any
        if site.spec.active_rule is ActiveRule.NONZERO:  # the fused kernel reads |output| itself
            active = output.abs() if self.mask.tensor is not None else NONZERO
        else:
            active = output if before is None else before
        flags = active is not NONZERO and active.dtype == torch.bool
        masked = False
        if self.mask.tensor is not None:
            output, active, masked = self._real_positions(site, output, active)
        plan = site.plan_for(flags, masked)
        if torch.is_grad_enabled():  # a training forward pass: the statistics are not part of its graph
            with torch.no_grad():
                site.accumulator.update(output, active, plan, self.workspace, self.compiled)
        else:
            site.accumulator.update(output, active, plan, self.workspace, self.compiled)
        site.calls += 1
        # Host time only (no device sync): what the compile decision weighs.
        self.reduce_seconds += time.perf_counter() - start

    def observe_activation(self, site: SiteRecord, x: torch.Tensor, out: torch.Tensor, activation: tuple,
                           from_input: bool) -> bool:
        """Compute an activation call's output into ``out`` and reduce it into the site, in one
        pass of the fused kernel (``capturing.fused_forward``); False, with nothing written, when
        the call cannot take that path (the caller then runs the activation and ``observe``).

        Args:
            site: the site.
            x: the call's input (float32, CPU).
            out: ``x`` (in place) or an empty tensor with ``x``'s strides.
            activation: the kernel's activation arguments (``FusedForward.arguments``).
            from_input: "active" is read from ``x`` rather than from the output.
        """
        start = time.perf_counter()
        site.check_shape(x.shape, self.granularity)
        if not site.accumulator.update_activation(x, out, activation, from_input, site.plan):
            return False
        self.workspace.fused_calls += 1
        site.calls += 1
        self.reduce_seconds += time.perf_counter() - start
        return True

    def _real_positions(self, site: SiteRecord, output: torch.Tensor, active: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """The observations at real (unpadded) positions; True when the (N, L) axes became one."""
        layout = self.mask.layout(output, site.unit_dim, self.granularity is Granularity.CHANNEL)
        if layout is None:
            # Padding is counted here; said so only where the padded sequence reaches the site.
            sees = site.sees_mask if site.sees_mask is not None else self.mask.carries_sequence(output)
            site.unmasked = site.unmasked or sees
            return output, active, False
        if self.mask.full:
            return output, active, False
        # Gathering the real positions (R, ...) leaves the padding out of every statistic,
        # and each unit's observation count is the number of real tokens (times inner axes).
        picked = self.mask.gather(output, layout)
        picked_active = picked if active is output else self.mask.gather(active, layout)
        return picked, picked_active, layout == "leading"


__all__ = ["Observer", "before_call"]
