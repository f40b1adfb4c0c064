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

from typing import Any

from . import fused
from .settings import CompileMode
from .stats import CompiledReduction, shared_compiled_reduction

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
        return info

    def warnings(self) -> list[str]:
        """A note when compiling was asked for (or chosen) and failed."""
        if self._reduction is not None and self._reduction.note is not None:
            return [self._reduction.note]
        return []
