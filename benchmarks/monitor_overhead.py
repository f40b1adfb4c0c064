"""What ``deadrelu.Monitor`` costs a training loop: ``python benchmarks/monitor_overhead.py``.

On the CNN and MLP of ``benchmarks/workloads.py``, in train mode, one training step is
forward + cross-entropy + backward + SGD (momentum) step on one batch. Timed, in rounds
that alternate the variants (order rotated per round):

* ``bare``: the step alone;
* ``window``: the step with a ``Monitor(window=S, every=S)`` open for all S steps of the
  round (every step observed, the worst case), including closing the window at the end
  (finalising the statistics and writing the record);
* ``probe``: one probe scan of ``--probe-samples`` samples (what probe mode adds every
  ``every`` steps), reported in milliseconds and in training steps.

The window overhead is the ratio of per-step process CPU times within each round (on one
thread, so it measures work done rather than time lost to other load on a shared machine;
the wall-time ratio is reported too), median over rounds;
``amortized`` is what a run with ``every=500, window=20`` pays on average (20 of 500 steps).
Results go to ``benchmarks/results/monitor.json`` and, between ``<!-- results:monitor -->``
markers, into ``benchmarks/RESULTS_monitor.md``.

    python benchmarks/monitor_overhead.py            # ~3 min on 2 cores
    python benchmarks/monitor_overhead.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from workloads import WORKLOADS  # noqa: E402

import deadrelu  # noqa: E402

#: the amortisation reported: a window of this many steps every this many steps
AMORTIZE_WINDOW, AMORTIZE_EVERY = 20, 500


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["cnn", "mlp"], choices=["cnn", "mlp"])
    parser.add_argument("--rounds", type=int, default=9, help="alternating rounds per workload")
    parser.add_argument("--steps", type=int, default=None, help="steps per round (default: cnn 4, mlp 10)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: CPU time then measures work, not waiting)")
    parser.add_argument("--probe-samples", type=int, default=512)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 steps; results not written")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "monitor.json")
    return parser.parse_args(argv)


class Trainer:
    """One workload's model, batch and optimizer; ``step()`` runs one training step."""

    def __init__(self, name: str) -> None:
        workload = WORKLOADS[name]
        self.model = workload.model(seed=0).train()
        self.batch = workload.data(samples=workload.batch_size, seed=1)
        self.targets = torch.randint(0, 10, (workload.batch_size,), generator=torch.Generator().manual_seed(2))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        self.loss = nn.CrossEntropyLoss()
        self.probe = workload.data(samples=512, seed=3)
        self.batch_size = workload.batch_size

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(self.model(self.batch), self.targets).backward()
        self.optimizer.step()


def _round(trainer: Trainer, variant: str, steps: int) -> tuple[float, float]:
    """Wall and process CPU seconds per step over ``steps`` steps (window: including the window's close)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    if variant == "bare":
        for _ in range(steps):
            trainer.step()
    else:
        monitor = deadrelu.Monitor(trainer.model, window=steps, every=steps)
        for step in range(steps):
            trainer.step()
            monitor.step(step)
        monitor.close()
        assert len(monitor.records) == 1 and monitor.records[0]["window_steps"] == steps
    return (time.perf_counter() - start) / steps, (time.process_time() - cpu_start) / steps


def measure(name: str, rounds: int, steps: int, probe_samples: int) -> dict[str, Any]:
    trainer = Trainer(name)
    for _ in range(2):  # warm-up: allocator, kernels, the capture's first site discovery
        _round(trainer, "bare", 1)
        _round(trainer, "window", 2)
    per_round: list[dict[str, tuple[float, float]]] = []
    for index in range(rounds):
        order = ["bare", "window"] if index % 2 == 0 else ["window", "bare"]
        times = {variant: _round(trainer, variant, steps) for variant in order}
        per_round.append(times)
        print(f"  {name} round {index + 1}/{rounds}: bare {times['bare'][0] * 1e3:.1f} ms/step "
              f"(cpu {times['bare'][1] * 1e3:.1f}), window {times['window'][0] * 1e3:.1f} ms/step "
              f"(cpu {times['window'][1] * 1e3:.1f}): {times['window'][0] / times['bare'][0]:.3f}x wall, "
              f"{times['window'][1] / times['bare'][1]:.3f}x cpu", flush=True)
    wall_ratios = [r["window"][0] / r["bare"][0] for r in per_round]
    cpu_ratios = [r["window"][1] / r["bare"][1] for r in per_round]
    bare = statistics.median(r["bare"][0] for r in per_round)
    window = statistics.median(r["window"][0] for r in per_round)
    overhead = statistics.median(cpu_ratios) - 1.0
    probe = trainer.probe[:probe_samples]
    monitor = deadrelu.Monitor(trainer.model, probe=probe, every=1, batch_size=trainer.batch_size)
    monitor.step(0)  # warm
    probe_times = []
    for step in range(1, 4):
        start = time.perf_counter()
        monitor.step(step)
        probe_times.append(time.perf_counter() - start)
    monitor.close()
    probe_seconds = statistics.median(probe_times)
    return {
        "workload": name, "description": WORKLOADS[name].description, "batch_size": trainer.batch_size,
        "rounds": rounds, "steps_per_round": steps, "bare_ms_per_step": bare * 1e3,
        "window_ms_per_step": window * 1e3, "window_overhead": overhead,
        "window_overhead_per_round": [ratio - 1.0 for ratio in cpu_ratios],
        "window_overhead_wall": statistics.median(wall_ratios) - 1.0,
        "window_overhead_wall_per_round": [ratio - 1.0 for ratio in wall_ratios],
        "amortized_overhead": overhead * AMORTIZE_WINDOW / AMORTIZE_EVERY,
        "probe_samples": len(probe), "probe_scan_ms": probe_seconds * 1e3,
        "probe_scan_in_steps": probe_seconds / bare,
        "probe_amortized_overhead": probe_seconds / bare / AMORTIZE_EVERY,
    }


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| workload | batch | step (bare, wall) | step (window open, wall) | window overhead, CPU time (median; "
             "per round) | window overhead, wall | "
             f"amortized, window {AMORTIZE_WINDOW} every {AMORTIZE_EVERY} | probe scan | probe every "
             f"{AMORTIZE_EVERY}, amortized |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in results:
        spread = ", ".join(f"{v:+.1%}" for v in r["window_overhead_per_round"])
        lines.append(f"| {r['workload']} | {r['batch_size']} | {r['bare_ms_per_step']:.1f} ms | "
                     f"{r['window_ms_per_step']:.1f} ms | **{r['window_overhead']:+.1%}** ({spread}) | "
                     f"{r['window_overhead_wall']:+.1%} | "
                     f"{r['amortized_overhead']:+.2%} | {r['probe_scan_ms']:.0f} ms for {r['probe_samples']} samples "
                     f"(= {r['probe_scan_in_steps']:.2f} steps) | {r['probe_amortized_overhead']:+.2%} |")
    return "\n".join(lines)


def _write_results_md(path: Path, marker: str, text: str) -> None:
    content = path.read_text(encoding="utf-8")
    start, end = f"<!-- results:{marker} -->", f"<!-- /results:{marker} -->"
    before, _, rest = content.partition(start)
    _, _, after = rest.partition(end)
    path.write_text(f"{before}{start}\n{text}\n{end}{after}", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = 2 if args.quick else args.rounds
    results = []
    for name in args.workloads:
        steps = args.steps or (3 if args.quick else {"cnn": 4, "mlp": 10}[name])
        print(f"{name}: {rounds} rounds x {steps} steps, {torch.get_num_threads()} threads", flush=True)
        results.append(measure(name, rounds, steps, args.probe_samples))
    text = table(results)
    print(text)
    if args.quick:
        return
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "machine": platform.processor() or platform.machine(), "command": " ".join(["python", *sys.argv])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n", encoding="utf-8")
    header = (f"Run {meta['date']}, torch {meta['torch']}, {meta['threads']} threads, command "
              f"`{meta['command']}`.\n\n")
    _write_results_md(HERE / "RESULTS_monitor.md", "monitor", header + text)


if __name__ == "__main__":
    main()
