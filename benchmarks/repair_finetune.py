"""Fine-tuning the bundled high-learning-rate MLP after a repair: dead share and accuracy after N steps.

    python benchmarks/repair_finetune.py                 # writes the table into benchmarks/RESULTS_repair.md
    python benchmarks/repair_finetune.py --steps 100 --no-write

The model (sample_models/mlp_high_lr.pt, 139 of 384 ReLU units dead) is fine-tuned on its own
training data (labels rebuilt exactly as sample_models/make_samples.py made them) with plain
SGD, batch 50, for N steps, in each arm:

* ``none``: as it is;
* ``recycle``: ``deadrelu.recycle(model, scan, "dead", optimizer)`` once before training (ReDo);
* ``recycle/50``: the same, rescanning and recycling every 50 steps (ReDo's schedule);
* ``monitor/50``: the same schedule through ``deadrelu.Monitor(model, probe=x, every=50,
  recycle="dead", optimizer=opt)`` in the training loop (each recycle checked on the probe);
* ``leaky 0.01`` / ``leaky 0.1``: ``deadrelu.swap_activations(model, scan, "leaky_relu:SLOPE")`` before
  training (every ReLU site has dead units, so all three are swapped).

"dead" is deadrelu's verdict on the 2,000 training samples (pre-activation never > 0; for the
LeakyReLU arm that means the unit's input never went positive). Accuracy is measured on the
training data and on 2,000 fresh samples from the same four blobs. Each cell is the mean of
3 seeds (batch order and recycled weights).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "sample_models"))

import archs  # noqa: E402
import make_samples  # noqa: E402

import deadrelu  # noqa: E402

RESULTS = ROOT / "benchmarks" / "RESULTS_repair.md"
MARK_BEGIN, MARK_END = "<!-- results:repair_finetune -->", "<!-- /results:repair_finetune -->"


def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training data and labels exactly as make_samples.make_mlp drew them, plus a held-out set."""
    rng = np.random.default_rng(1011)
    x, y = make_samples.blobs(rng, 2000, offset=2.0)
    assert np.array_equal(x, np.load(ROOT / "sample_models" / "mlp_data.npy")), "labels no longer match the data"
    centres = np.random.default_rng(1011).normal(0.0, 1.0, (4, 20))  # blobs() draws its centres first
    held = np.random.default_rng(2024)
    labels = held.integers(0, 4, 2000)
    x_test = (centres[labels] + held.normal(0.0, 1.0, (2000, 20)) + 2.0).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(x_test), torch.from_numpy(labels)


def load() -> nn.Module:
    model = archs.HighLrMLP()
    model.load_state_dict(torch.load(ROOT / "sample_models" / "mlp_high_lr.pt", weights_only=True))
    return model.eval()


def dead_share(model: nn.Module, x: torch.Tensor) -> tuple[float, deadrelu.ScanResult | None]:
    """The dead share on ``x``, NaN (and no scan) for a model whose training diverged to NaN."""
    with torch.no_grad():
        model.eval()
        if not torch.isfinite(model(x)).all():
            return float("nan"), None
    result = deadrelu.scan(model, x, device="cpu", batch_size=500)
    return result.summary.dead_ratio, result


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


Fix = Callable[[nn.Module, torch.optim.Optimizer, torch.Tensor], None]


def recycle(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> None:
    result = dead_share(model, x)[1]
    if result is not None:
        deadrelu.recycle(model, result, "dead", optimizer=optimizer)


def leaky(slope: float) -> Fix:
    def swap(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> None:
        deadrelu.swap_activations(model, dead_share(model, x)[1], f"leaky_relu:{slope}")
    return swap


#: The Monitor arm: no fix function, the Monitor recycles at step 0 and every 50 steps.
MONITOR = "monitor/50"
ARMS: dict[str, tuple[Fix | None, int]] = {"none": (None, 0), "recycle": (recycle, 0), "recycle/50": (recycle, 50),
                                            MONITOR: (None, 50), "leaky 0.01": (leaky(0.01), 0),
                                            "leaky 0.1": (leaky(0.1), 0)}


def run(arm: str, lr: float, steps: int, seed: int, tensors: tuple[torch.Tensor, ...]) -> dict[str, float]:
    x, y, x_test, y_test = tensors
    torch.manual_seed(seed)
    model = load()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    fix, every = ARMS[arm]
    monitor = deadrelu.Monitor(model, probe=x, every=every, recycle="dead", optimizer=optimizer, device="cpu",
                               batch_size=500) if arm == MONITOR else None
    if fix is not None:
        fix(model, optimizer, x)
    if monitor is not None:
        monitor.step(0)  # scans, then recycles: the fix before training
    start_dead = dead_share(model, x)[0]
    start_acc = accuracy(model, x_test, y_test)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=generator)
    position = 0
    for step in range(1, steps + 1):
        if position + 50 > len(x):
            order, position = torch.randperm(len(x), generator=generator), 0
        batch = order[position:position + 50]
        position += 50
        model.train()
        loss = F.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if every and step % every == 0 and step < steps and fix is not None:
            fix(model, optimizer, x)
        if monitor is not None and step < steps:  # like recycle/50: no recycle after the last step
            monitor.step(step)
    if monitor is not None:
        monitor.close()
    return {"dead_start": start_dead, "acc_start": start_acc, "dead_end": dead_share(model, x)[0],
            "train_acc": accuracy(model, x, y), "test_acc": accuracy(model, x_test, y_test)}


def _share(value: float, diverged: int) -> str:
    """A mean dead share, or how many seeds diverged to NaN (no scan of a NaN model)."""
    if not diverged:
        return f"{value:.1%}"
    return f"diverged ({diverged} seed(s))" if np.isnan(value) else f"{value:.1%} ({diverged} seed(s) diverged)"


def table(rows: list[tuple[str, float, dict[str, float]]], steps: int) -> str:
    lines = ["| arm | SGD lr | dead after fix (step 0) | held-out acc at step 0 | dead after "
             f"{steps} steps | train acc | held-out acc |", "|---|---|---|---|---|---|---|"]
    for arm, lr, cells in rows:
        lines.append(f"| {arm} | {lr:g} | {_share(cells['dead_start'], int(cells['diverged_start']))} | "
                     f"{cells['acc_start']:.3f} | {_share(cells['dead_end'], int(cells['diverged_end']))} | "
                     f"{cells['train_acc']:.3f} | {cells['test_acc']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lr", type=float, nargs="+", default=[0.05, 0.4])
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    tensors = data()
    base = load()
    dead, _ = dead_share(base, tensors[0])
    began = time.perf_counter()
    rows = []
    for lr in args.lr:
        for arm in ARMS:
            runs = [run(arm, lr, args.steps, seed, tensors) for seed in range(args.seeds)]
            cells = {key: float(np.nanmean([r[key] for r in runs])) if key.startswith("dead")
                     else float(np.mean([r[key] for r in runs])) for key in runs[0]}
            cells["diverged_start"] = sum(np.isnan(r["dead_start"]) for r in runs)
            cells["diverged_end"] = sum(np.isnan(r["dead_end"]) for r in runs)
            rows.append((arm, lr, cells))
    elapsed = time.perf_counter() - began
    command = "python benchmarks/repair_finetune.py" + (f" --steps {args.steps}" if args.steps != 400 else "") + \
        (f" --seeds {args.seeds}" if args.seeds != 3 else "") + \
        (f" --lr {' '.join(map(str, args.lr))}" if args.lr != [0.05, 0.4] else "")
    body = (f"`{command}` (torch {torch.__version__}, 1 thread, {elapsed:.0f} s). Before any fix: "
            f"{dead:.1%} of the 384 ReLU units dead, held-out accuracy {accuracy(base, *tensors[2:]):.3f}. "
            f"Mean of {args.seeds} seeds.\n\n" + table(rows, args.steps))
    print(body)
    if not args.no_write:
        text = RESULTS.read_text(encoding="utf-8")
        pattern = re.compile(re.escape(MARK_BEGIN) + ".*?" + re.escape(MARK_END), re.S)
        RESULTS.write_text(pattern.sub(lambda _m: f"{MARK_BEGIN}\n{body}\n{MARK_END}", text), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
