"""What a scan costs on a small language model: ``python benchmarks/lm_overhead.py``.

The ``opt`` workload of ``benchmarks/workloads.py`` (transformers' ``OPTModel``, random
weights, int64 token ids) at the default thread count, timed interleaved, pair by pair:

* ``bare``: ``model(input_ids=..., attention_mask=...)`` per batch under ``inference_mode``;
* ``scan``: ``deadrelu.scan`` of the same batches (ids fed as int64, keyword inputs);
* ``scan-masked``: the same with a quarter of each row padded and ``mask="attention_mask"``
  (padded positions left out of the statistics).

The ratio to ``bare`` is taken within each repeat (wall time, and process CPU time, which
other load on the machine disturbs less); the median over repeats is printed and written to ``benchmarks/results/lm-opt.json``. Target: scan <= 1.15x bare.

    python benchmarks/lm_overhead.py [--repeats 5] [--samples 256] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's own default")
    args = parser.parse_args(argv)
    import torch

    import deadrelu
    from workloads import WORKLOADS

    if args.threads:
        torch.set_num_threads(args.threads)
    workload = WORKLOADS["opt"].scaled(args.samples)
    model, ids = workload.model(), workload.data()
    mask = torch.ones_like(ids)
    mask[:, -ids.shape[1] // 4:] = 0  # the last quarter of every row is padding
    batches = [{"input_ids": i, "attention_mask": m} for i, m in zip(ids.split(workload.batch_size),
                                                                      mask.split(workload.batch_size))]

    def bare() -> None:
        with torch.inference_mode():
            for batch in batches:
                model(**batch)

    def scan() -> None:
        deadrelu.scan(model, batches, kwargs=["input_ids", "attention_mask"])

    def scan_masked() -> None:
        deadrelu.scan(model, batches, kwargs=["input_ids", "attention_mask"], mask="attention_mask")

    variants = {"bare": bare, "scan": scan, "scan-masked": scan_masked}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for repeat in range(args.repeats + 1):  # repeat 0 warms up
        for name in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            variants[name]()
            if repeat:
                seconds[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
        order = order[1:] + order[:1]
    ratios = {name: statistics.median(t / b for t, b in zip(seconds[name], seconds["bare"])) for name in variants}
    cpu_ratios = {name: statistics.median(t / b for t, b in zip(cpu[name], cpu["bare"])) for name in variants}
    result = {"workload": workload.description, "samples": workload.samples, "batch_size": workload.batch_size,
              "threads": torch.get_num_threads(), "repeats": args.repeats, "torch": torch.__version__,
              "bare_seconds_median": statistics.median(seconds["bare"]),
              "ratio_to_bare": {name: round(value, 3) for name, value in ratios.items()},
              "cpu_ratio_to_bare": {name: round(value, 3) for name, value in cpu_ratios.items()}}
    out = HERE / "results" / "lm-opt.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
