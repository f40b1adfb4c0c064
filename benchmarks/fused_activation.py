"""Per-call cost of an activation module during a scan: bare, hook path, fused activation.

``python benchmarks/fused_activation.py [threads]``: for a few activation shapes of the
workloads (``benchmarks/workloads.py``) and four module kinds, the per-call time of the
module alone under ``inference_mode`` (``bare``), inside ``deadrelu.capture`` with the fused
activation off (``hooks``: the module's forward, then the post-hook's fused reduction, a
second read), and with it on (``fused``: ``deadrelu_fused_activation``, one pass). At one
thread the clock is the thread's CPU time (less disturbed by other load); the minimum of 5
runs of n calls is reported, each call on a fresh copy of the input.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import deadrelu  # noqa: E402
from deadrelu import fused  # noqa: E402

SHAPES = {"cnn stem 64x64x32x32": (64, 64, 32, 32), "cnn stage4 64x512x4x4": (64, 512, 4, 4),
          "mobile 64x96x16x16": (64, 96, 16, 16), "mobile small 64x16x8x8": (64, 16, 8, 8),
          "mlp 256x1024": (256, 1024)}
KINDS = {"ReLU": lambda: nn.ReLU(), "ReLU(inplace)": lambda: nn.ReLU(inplace=True),
         "ReLU6(inplace)": lambda: nn.ReLU6(inplace=True), "LeakyReLU(inplace)": lambda: nn.LeakyReLU(0.1, inplace=True)}


def per_call(model: nn.Module, x: torch.Tensor, calls: int, mode: str, clock) -> float:
    """Least seconds per call over 5 runs of ``calls`` calls."""
    activation = fused.activation
    if mode == "hooks":
        fused.activation = lambda: None  # type: ignore[assignment]
    try:
        with torch.inference_mode():
            capture = deadrelu.capture(model) if mode != "bare" else None
            if capture is not None:
                capture.__enter__()
            try:
                for _ in range(3):  # the first is the capture's discovery pass
                    model(x.clone())
                best = float("inf")
                for _ in range(5):
                    inputs = [x.clone() for _ in range(calls)]
                    start = clock()
                    for item in inputs:
                        model(item)
                    best = min(best, (clock() - start) / calls)
            finally:
                if capture is not None:
                    capture.__exit__(None, None, None)
    finally:
        fused.activation = activation  # type: ignore[assignment]
    return best


def main() -> None:
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    torch.set_num_threads(threads)
    clock = time.thread_time if threads == 1 else time.perf_counter
    if fused.activation() is None:
        raise SystemExit(f"no fused activation here: {fused.note()}")
    print("| activation | module | bare us | hooks us (+ over bare) | fused us (+ over bare) |")
    print("|---|---|---|---|---|")
    for shape_name, shape in SHAPES.items():
        x = torch.randn(*shape)
        calls = min(200, max(5, int(2e7 / x.numel())))
        for kind, make in KINDS.items():
            model = nn.Sequential(make()).eval()
            bare, hooks, one = (per_call(model, x, calls, mode, clock) * 1e6 for mode in ("bare", "hooks", "fused"))
            print(f"| {shape_name} | {kind} | {bare:.1f} | {hooks:.1f} (+{hooks - bare:.1f}) | "
                  f"{one:.1f} (+{one - bare:.1f}) |", flush=True)


if __name__ == "__main__":
    main()
