"""``--compile auto|on|off``: whether the per-batch reduction runs through ``torch.compile``.

The compiled reduction (``stats.fused_reduction``) reads each activation once instead
of four to six times, but compiling it costs ~17 s on a 2-core CPU with an empty
inductor cache (~3 s with a warm one), and the eager reduction is already only a few
per cent of a scan. So ``auto`` compiles only when the scan is long enough to pay for
it: after a few batches it projects the host time the eager reduction will still take
(time measured inside the hooks so far, per batch, times the batches left), and
compiles when the expected saving is at least twice the compile cost. When the number
of samples is not known it re-checks at batches 8, 16, 32... assuming that the scan
runs at least as long again as it has so far.

Where the fused C kernel (``deadrelu.fused``) reduces the activations (float32 on the
CPU) each activation is already read once, so ``auto`` never compiles there; it weighs
compiling only for the tensors that reduce eagerly (CUDA, float16/bfloat16, float64, or a
machine without a C compiler).

Nothing here syncs a device: the measured time is host time (on CUDA, the time spent
launching the reduction's kernels, which is what compiling saves there).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from . import fused
from .errors import first_line
from .settings import CompileMode
from .stats import BatchStats, ReductionPlan, fused_reduction

#: Expected cost of the first compilation in a process, seconds (measured: ~17 s cold).
COLD_COMPILE_SECONDS = 20.0
#: Expected cost once this process has compiled the reduction before (new variants only).
WARM_COMPILE_SECONDS = 2.0
#: Share of the eager reduction's time the compiled one saves (measured 0.5-0.8 here).
COMPILED_SAVING = 0.5
#: Compile only when the projected saving is this many times the compile cost.
MARGIN = 2.0
#: The first batch that is weighed (batch 1 includes finding sites and allocating buffers).
FIRST_CHECK = 4


class CompileDecision:
    """Chooses between the eager and the compiled reduction for one scan.

    Args:
        mode: ``auto``, ``on`` or ``off``.
        capture: the scan's reduction state, ``CaptureSession.reduction`` (its ``compiled``
            slot is set here and its ``reduce_seconds`` read).
        total_samples: samples the scan will feed, if known.

    Call ``after_batch`` after every batch; ``environment`` and ``warnings`` say what
    was used afterwards.
    """

    def __init__(self, mode: CompileMode, capture: Any, total_samples: int | None) -> None:
        self.mode = CompileMode(mode)
        self.capture = capture
        self.total_samples = total_samples
        self.reason = "--compile off" if self.mode is CompileMode.OFF else None
        self.compiled_from_batch: int | None = None
        self._after_first = 0.0
        self._compile_seconds_before = 0.0
        self._next_check = FIRST_CHECK
        self._reduction: CompiledReduction | None = None
        if self.mode is CompileMode.ON:
            self._switch(0, "--compile on")

    def _switch(self, batch: int, reason: str) -> None:
        self._reduction = shared_compiled_reduction()
        self._compile_seconds_before = self._reduction.compile_seconds
        self.capture.compiled = self._reduction
        self.compiled_from_batch = batch
        self.reason = reason

    def after_batch(self, batches: int, samples: int) -> None:
        """Weigh compiling once enough batches have run (cheap: a few float operations)."""
        if batches == 1:  # batch 1 (site discovery, first allocations) is left out of the rate
            self._after_first = self.capture.reduce_seconds
        if self.mode is not CompileMode.AUTO or self.reason is not None or batches < self._next_check:
            return
        if self._fused_calls():
            self.reason = "auto: fused kernel (one read per activation)"
            return
        per_batch = (self.capture.reduce_seconds - self._after_first) / (batches - 1)
        if self.total_samples is not None:
            remaining_batches = max(0.0, (self.total_samples - samples) / max(samples / batches, 1.0))
        else:
            remaining_batches = float(batches)  # assume at least as long again
        saving = per_batch * remaining_batches * COMPILED_SAVING
        shared = shared_compiled_reduction()
        cost = WARM_COMPILE_SECONDS if shared.compile_seconds > 0 else COLD_COMPILE_SECONDS
        if not shared.usable:
            self.reason = f"auto: eager ({shared.note})"
        elif saving >= MARGIN * cost:
            self._switch(batches, f"auto: projected saving {saving:.0f} s >= {MARGIN:g} x compile cost {cost:.0f} s")
        elif self.total_samples is not None:
            self.reason = (f"auto: eager (projected saving {saving:.1f} s < {MARGIN:g} x compile cost "
                           f"{cost:.0f} s)")
        else:
            self._next_check = batches * 2

    def _fused_calls(self) -> int:
        return int(getattr(getattr(self.capture, "workspace", None), "fused_calls", 0))

    @property
    def used(self) -> str:
        """``fused``, ``eager``, ``compiled`` or ``compiled from batch k`` (not ``compiled`` if
        compiling failed)."""
        if self._reduction is None or not self._reduction.usable:
            return "fused" if self._fused_calls() else "eager"
        return "compiled" if not self.compiled_from_batch else f"compiled from batch {self.compiled_from_batch}"

    def environment(self) -> dict[str, Any]:
        """What the result's ``environment`` records about the reduction."""
        info: dict[str, Any] = {"compile": self.mode.value, "reduction": self.used,
                                "reduction_reason": self.reason or "auto: scan too short to weigh",
                                "reduction_seconds": round(float(getattr(self.capture, "reduce_seconds", 0.0)), 3)}
        if self._reduction is not None:
            info["compile_seconds"] = round(self._reduction.compile_seconds - self._compile_seconds_before, 3)
        if fused.note() is not None:
            info["fused_note"] = fused.note()
        elif info["reduction"] == "fused":
            info["fused_kernel"] = fused.origin()
            info["fused_threads"] = fused.threads()
        return info

    def warnings(self) -> list[str]:
        """A note when compiling was asked for (or chosen) and failed."""
        if self._reduction is not None and self._reduction.note is not None:
            return [self._reduction.note]
        return []


# -- the compiled reduction itself (kept beside the policy that decides when it runs) ---------------

class CompiledReduction:
    """``fused_reduction`` through ``torch.compile(dynamic=True)``, shared by all sites.

    One compiled function serves every shape (dynamic sizes) and every plan (one graph
    per distinct set of sums and constants); dynamo's recompile limit is raised while
    it runs, because the default (8) would silently fall back to eager after 8 variants.
    If compiling fails (no C compiler, an unsupported platform), the failure is kept
    in ``note`` and every later call returns None, so callers reduce eagerly.

    Attributes:
        note: why compilation was given up, or None.
        compile_seconds: wall time spent in calls that compiled a new variant.
    """

    #: dynamo recompile limit while the reduction runs (variants: plans x dtypes x 0/1 sizes)
    RECOMPILE_LIMIT = 64

    def __init__(self) -> None:
        self.note: str | None = None
        self.compile_seconds = 0.0
        self._function: Any = None
        self._variants: set[tuple] = set()

    @property
    def usable(self) -> bool:
        return self.note is None

    def __call__(self, view: torch.Tensor, active: torch.Tensor, plan: ReductionPlan) -> BatchStats | None:
        """Reduce with the compiled function; None once compilation has failed."""
        if self.note is not None:
            return None
        variant = (plan.fields, plan.threshold, plan.floor_at, plan.ceiling_at, view.dtype, active.dtype,
                   view.device.type, tuple(size == 1 for size in view.shape))
        new = variant not in self._variants
        start = time.perf_counter() if new else 0.0
        try:
            if self._function is None:
                self._function = torch.compile(fused_reduction, dynamic=True)
            with _dynamo_limits(self.RECOMPILE_LIMIT):
                sums, minimum, maximum = self._function(view, active, plan.threshold, plan.floor_at,
                                                        plan.ceiling_at, plan.fields)
        except Exception as exc:  # any compiler failure: reduce eagerly from now on
            first = first_line(exc, 200)
            self.note = f"torch.compile failed ({type(exc).__name__}: {first}); the reduction ran eagerly"
            return None
        if new:
            self._variants.add(variant)
            self.compile_seconds += time.perf_counter() - start
        return BatchStats(plan.fields, sums, minimum, maximum, plan.derived)


class _dynamo_limits:
    """Raise dynamo's recompile limits for the duration of a call (never lower them)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.saved: dict[str, int] = {}

    def __enter__(self) -> None:
        config = torch._dynamo.config
        for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                     "accumulated_cache_size_limit"):
            current = getattr(config, name, None)
            if isinstance(current, int) and current < self.limit:
                self.saved[name] = current
                setattr(config, name, self.limit)

    def __exit__(self, *exc_info: Any) -> None:
        config = torch._dynamo.config
        for name, value in self.saved.items():
            setattr(config, name, value)
        self.saved.clear()


_SHARED_COMPILED: CompiledReduction | None = None


def shared_compiled_reduction() -> CompiledReduction:
    """The process-wide compiled reduction: its kernels are reused by every later scan."""
    global _SHARED_COMPILED
    if _SHARED_COMPILED is None:
        _SHARED_COMPILED = CompiledReduction()
    return _SHARED_COMPILED
