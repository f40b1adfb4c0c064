"""Where a scan's time over the bare forward pass goes: ``python benchmarks/profile_scan.py``.

For each workload and thread count, interleaved over repeats (median):

* ``bare`` and ``scan`` wall time, as in ``overhead.py``;
* ``reduction``: host seconds spent inside the hooks reducing (``result.environment
  ["reduction_seconds"]``: the per-batch statistics and their accumulation);
* ``no functional``: the scan with ``functional=False`` (no ``TorchFunctionMode`` and no
  global module hooks), which shows what functional capture costs;
* ``hooks only``: the scan with ``Observer.observe`` stubbed out (every hook, the
  functional mode and the per-scan work run, no statistic is reduced);
* the rest: scan - bare - reduction (hooks' bookkeeping, input checks, the loop).

Then one ``torch.profiler`` run of each at 1 thread lists the aten operators whose self
time grows most from bare to scan. Writes ``benchmarks/results/profile.json`` and the
``<!-- results:profile -->`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def breakdown(workload: Any, threads: int, repeats: int) -> dict[str, Any]:
    import torch

    import deadrelu
    torch.set_num_threads(threads)
    model, data = workload.model(), workload.data()

    def bare() -> None:
        with torch.inference_mode():
            for batch in data.split(workload.batch_size):
                model(batch)

    from deadrelu.capturing.observe import Observer

    def hooks_only() -> Any:
        observe = Observer.observe
        Observer.observe = lambda self, site, output, before: None  # type: ignore[method-assign]
        try:
            return deadrelu.scan(model, data, batch_size=workload.batch_size)
        finally:
            Observer.observe = observe  # type: ignore[method-assign]

    variants = {"bare": bare,
                "scan": lambda: deadrelu.scan(model, data, batch_size=workload.batch_size),
                "no functional": lambda: deadrelu.scan(model, data, batch_size=workload.batch_size,
                                                       functional=False),
                "hooks only": hooks_only}
    for run in variants.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    reduction: list[float] = []
    order = list(variants)
    for _ in range(repeats):
        for name in order:
            start = time.perf_counter()
            result = variants[name]()
            times[name].append(time.perf_counter() - start)
            if name == "scan":
                reduction.append(result.environment["reduction_seconds"])  # type: ignore[union-attr]
        order = order[1:] + order[:1]
    median = {name: statistics.median(values) for name, values in times.items()}
    bare_s, scan_s, red_s = median["bare"], median["scan"], statistics.median(reduction)
    ratio = {name: statistics.median([v / b for v, b in zip(values, times["bare"])]) for name, values in times.items()}
    return {"workload": workload.name, "threads": threads, "bare_s": bare_s, "scan_s": scan_s,
            "no_functional_s": median["no functional"], "reduction_s": red_s, "ratios": ratio,
            "rest_s": scan_s - bare_s - red_s, "ratio": statistics.median(
                [s / b for s, b in zip(times["scan"], times["bare"])])}


def operator_diff(workload: Any, top: int = 8) -> list[dict[str, Any]]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    import deadrelu
    torch.set_num_threads(1)
    model, data = workload.model(), workload.data(workload.samples // 4)

    def bare() -> None:
        with torch.inference_mode():
            for batch in data.split(workload.batch_size):
                model(batch)

    def scan() -> None:
        deadrelu.scan(model, data, batch_size=workload.batch_size)

    scan()
    bare()
    totals = {}
    for name, run in (("bare", bare), ("scan", scan)):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        totals[name] = {event.key: (event.self_cpu_time_total / 1e3, event.count) for event in prof.key_averages()}
    keys = set(totals["bare"]) | set(totals["scan"])
    rows = []
    for key in keys:
        bare_ms, bare_n = totals["bare"].get(key, (0.0, 0))
        scan_ms, scan_n = totals["scan"].get(key, (0.0, 0))
        rows.append({"op": key, "bare_ms": bare_ms, "scan_ms": scan_ms, "bare_calls": bare_n, "scan_calls": scan_n,
                     "added_ms": scan_ms - bare_ms})
    rows.sort(key=lambda row: -abs(row["added_ms"]))
    bare_total = sum(ms for ms, _n in totals["bare"].values())
    scan_total = sum(ms for ms, _n in totals["scan"].values())
    return [{"op": "(all aten self time)", "bare_ms": bare_total, "scan_ms": scan_total, "bare_calls": 0,
             "scan_calls": 0, "added_ms": scan_total - bare_total}] + rows[:top]


def markdown(report: dict[str, Any]) -> str:
    lines = [f"Command: `{report['command']}`  ", f"Date: {report['date']}; median of {report['repeats']} "
             "interleaved repeats.", "",
             "| workload | threads | bare s | scan s | ratio | hooks only (no reduction) | no functional | "
             "in the reduction | functional capture (scan - scan without it) | rest |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["breakdown"]:
        bare = row["bare_s"]
        lines.append(f"| {row['workload']} | {row['threads']} | {bare:.2f} | {row['scan_s']:.2f} | "
                     f"{row['ratio']:.3f} | {row['ratios']['hooks only']:.3f} | {row['ratios']['no functional']:.3f} | "
                     f"{row['reduction_s']:.2f} s ({row['reduction_s'] / bare:.1%} of bare) | "
                     f"{row['scan_s'] - row['no_functional_s']:+.2f} s | {row['rest_s']:+.2f} s |")
    for name, rows in report["operators"].items():
        lines += ["", f"{name}, 1 thread, a quarter of the samples: aten operators whose self time changes most "
                  "(torch.profiler, one run each):", "", "| operator | bare ms (calls) | scan ms (calls) | added ms |",
                  "|---|---|---|---|"]
        for row in rows:
            lines.append(f"| `{row['op']}` | {row['bare_ms']:.1f} ({row['bare_calls']}) | "
                         f"{row['scan_ms']:.1f} ({row['scan_calls']}) | {row['added_ms']:+.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workloads", default="cnn,mlp,transformer")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--no-operators", action="store_true", help="skip the torch.profiler operator tables")
    args = parser.parse_args(argv)
    from overhead import write_markdown
    from workloads import WORKLOADS
    names = args.workloads.split(",")
    rows = []
    for name in names:
        for threads in (int(t) for t in args.threads.split(",")):
            rows.append(breakdown(WORKLOADS[name], threads, args.repeats))
            print(rows[-1], file=sys.stderr, flush=True)
    operators = {} if args.no_operators else {name: operator_diff(WORKLOADS[name]) for name in names}
    report = {"command": ("python benchmarks/profile_scan.py " + " ".join(argv if argv is not None
                                                                           else sys.argv[1:])).strip(),
              "date": time.strftime("%Y-%m-%d %H:%M %Z"), "repeats": args.repeats, "breakdown": rows,
              "operators": operators}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "profile.json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    print(text)
    write_markdown(HERE / "RESULTS.md", "profile", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
