"""1 process vs 2 torchrun processes (gloo) on the same scan, and where the time goes.

    python benchmarks/distributed.py                 # mlp and transformer, 3 repeats
    python benchmarks/distributed.py --quick         # mlp only, fewer samples, 1 repeat

For each workload (``benchmarks/workloads.py``) it runs, each in a fresh process:

* ``1 proc x 1 thread`` and ``1 proc x 2 threads``: ``deadrelu.scan`` in one process;
* ``2 procs x 1 thread``: ``torchrun --standalone --nproc-per-node 2`` of this file's
  worker, where each rank scans its block and the ranks combine their statistics.

Each worker times, after a warm-up scan on a few batches: the whole ``deadrelu.scan``
call; the plain forward passes over its own samples (no hooks: the model's share);
and, under torchrun, the combine step split into the ranks' meetings (``deadrelu.ranks.meet``:
the data check and the per-rank facts, JSON through the store) and ``all_reduce`` (the
per-unit statistics). Results written before the meetings existed call the first
``all_gather_object``. The driver also times the whole
command, process start-up included. Results go to ``benchmarks/results/distributed.json``
and a table is printed (Markdown, for ``benchmarks/RESULTS_distributed.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def worker(workload_name: str, samples: int, out: str, device: str = "cpu") -> None:
    """Run one timed scan in this process (a torchrun rank, or the only process)."""
    sys.path[:0] = [str(HERE), str(REPO)]
    import torch

    import deadrelu
    from deadrelu import distributed, ranks
    from workloads import WORKLOADS

    started = distributed.init_from_env()
    import torch.distributed as dist

    timings = {"all_reduce": 0.0, "meet": 0.0, "combine": 0.0}

    def timed(name: str, function: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                timings[name] += time.perf_counter() - start
        return call

    dist.all_reduce = timed("all_reduce", dist.all_reduce)
    ranks.meet = timed("meet", ranks.meet)
    distributed.ScanGroup.combine = timed("combine", distributed.ScanGroup.combine)

    workload = WORKLOADS[workload_name].scaled(samples=samples)
    model, data = workload.model(), workload.data()
    if device == "cuda":  # each rank on its own GPU (init_from_env set it); not measured yet
        device = f"cuda:{torch.cuda.current_device()}"
    options = {"batch_size": workload.batch_size, "device": device, "compile": "off"}
    model, data = model.to(device), data.to(device)
    deadrelu.scan(model, data[: workload.batch_size * 4 * max(1, int(os.environ.get("WORLD_SIZE", "1")))],
                  **options)  # warm-up (allocator, first-call costs), combined like the real one
    for key in timings:
        timings[key] = 0.0
    start = time.perf_counter()
    result = deadrelu.scan(model, data, **options)
    scan_seconds = time.perf_counter() - start

    # The model's share: plain forward passes over this rank's own block, no hooks.
    from deadrelu.distributed import ScanGroup, Shard
    group = ScanGroup.current()
    rank, world = (group.rank, group.world_size) if group else (0, 1)
    low, high = Shard(rank, world).bounds(len(data), workload.batch_size)
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in data[low:high].split(workload.batch_size):
            model(batch)
    forward_seconds = time.perf_counter() - start

    mine = {"rank": rank, "scan_s": scan_seconds, "forward_s": forward_seconds, "samples": high - low,
            "threads": torch.get_num_threads(), **{f"{k}_s": v for k, v in timings.items()}}
    every: list[Any] = [mine]
    if group:
        every = [None] * world
        dist.all_gather_object(every, mine)
    if rank == 0:
        Path(out).write_text(json.dumps({"workload": workload_name, "samples": result.data["samples"],
                                          "world_size": world, "units": result.summary.units,
                                          "sites": result.summary.sites, "ranks": every}))
    if started:
        dist.destroy_process_group()


def run_config(workload: str, samples: int, processes: int, threads: int, out: Path,
               device: str = "cpu") -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(threads)}
    args = [str(Path(__file__).resolve()), "--worker", workload, str(samples), str(out), device]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                   str(processes), *args]
    else:
        command = [sys.executable, *args]
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    data = json.loads(out.read_text())
    ranks = data["ranks"]
    return {"command_s": wall, "scan_s": max(r["scan_s"] for r in ranks),
            "forward_s": max(r["forward_s"] for r in ranks),
            "combine_s": max(r["combine_s"] for r in ranks),
            "all_reduce_s": max(r["all_reduce_s"] for r in ranks),
            "meet_s": max(r["meet_s"] for r in ranks),
            "units": data["units"], "samples": data["samples"], "per_rank": ranks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", nargs=4, metavar=("WORKLOAD", "SAMPLES", "OUT", "DEVICE"), help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per rank; nccl)")
    parser.add_argument("--quick", action="store_true", help="mlp only, 4096 samples, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "distributed.json")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), args.worker[2], args.worker[3])
        return
    plan = {"mlp": 4096} if args.quick else {"mlp": 16384, "transformer": 1024}
    repeats = 1 if args.quick else args.repeats
    configs = [("1 proc x 1 thread", 1, 1), ("1 proc x 2 threads", 1, 2), ("2 procs x 1 thread (torchrun)", 2, 1)]
    results: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "repeats": repeats,
                               "device": args.device,
                               "load_before": os.getloadavg()[0], "workloads": {}}
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        for workload, samples in plan.items():
            rows = {}
            for label, processes, threads in configs:
                runs = [run_config(workload, samples, processes, threads, Path(folder) / "out.json", args.device)
                        for _ in range(repeats)]
                median = {key: statistics.median(r[key] for r in runs)
                          for key in ("command_s", "scan_s", "forward_s", "combine_s", "all_reduce_s",
                                      "meet_s")}
                rows[label] = {**median, "runs": runs, "units": runs[0]["units"], "samples": runs[0]["samples"]}
            results["workloads"][workload] = rows
    results["load_after"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(table(results))


def table(results: dict[str, Any]) -> str:
    """The results as a Markdown table (medians)."""
    lines = ["| workload | config | scan s | vs 1x1 | forward s | combine s | all_reduce s | meet s | command s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for workload, rows in results["workloads"].items():
        base = rows["1 proc x 1 thread"]["scan_s"]
        for label, row in rows.items():
            lines.append(f"| {workload} ({row['samples']} samples, {row['units']} units) | {label} | "
                         f"{row['scan_s']:.3f} | {base / row['scan_s']:.2f}x | {row['forward_s']:.3f} | "
                         f"{row['combine_s'] * 1000:.1f} ms | {row['all_reduce_s'] * 1000:.2f} ms | "
                         f"{row['meet_s'] * 1000:.2f} ms | {row['command_s']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
