"""A fitted cost model of a scan: ``python benchmarks/cost_model.py --fit`` (then ``--predict``).

A scan costs, over the bare forward passes of the same batches,

    extra = per_scan + batches * (per_batch + calls * per_call + values * per_value)
            + ops * per_op * (1 + (batches if functional capture stayed on else 1))

* ``per_scan``: set-up, the first batch's discovery (producer links, padding reach, functional
  capture), result assembly and suggestions: fitted as ``scan_fixed + scan_per_site * sites``;
* ``per_batch``: the loop's own work per forward pass (slicing, the finite check, moving to the
  device, begin/end of the batch);
* ``per_call``: one activation call at a site (both hooks, the observer, the kernel's call);
* ``per_value``: the reduction of one activation value (the kernel's pass), divided at T threads by
  the threads a call splits over: ``min(T, values per call // fused.min_per_thread())`` (torch's
  OpenMP team takes a share from 32K values; everything else in the model runs on one thread);
* ``per_op``: every torch call (``ops`` per forward) under a ``TorchFunctionMode``: twice on batch 1
  (the producer watch and functional capture), once on each later batch where functional capture
  stayed on.

Every term is measured on purpose-built models (CPU time, 1 thread, median of interleaved
repeats, so other load on the machine disturbs it less), in this process:

* 64 sites of ``Linear(16, 16) + ReLU`` against 1 site, 41 batches against 1, batch 8: per call,
  per batch, per scan and per site;
* ``Linear(64, 4096) + ReLU`` at batch 256 (1 M activation values a call): per value;
* 1 site plus 200 cheap torch calls and an ``F.relu`` per forward, ``--functional always``
  against ``off``: per torch call under functional capture.

``predict(report, fit)`` turns an ``overhead.py`` report (whose rows carry each workload's
batches, sites, values and torch calls per forward, counted by ``workload_counts``) into
predicted ratios next to the measured ones.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def _cpu(function: Callable[[], Any]) -> float:
    start = time.process_time()
    function()
    return time.process_time() - start


def _median_pairs(first: Callable[[], Any], second: Callable[[], Any], repeats: int) -> float:
    """Median over interleaved repeats of CPU(first) - CPU(second)."""
    return statistics.median(_cpu(first) - _cpu(second) for _ in range(repeats))


def _extra(model: Any, data: Any, batch: int, repeats: int, **settings: Any) -> float:
    """CPU seconds a scan of ``data`` costs over the bare forward passes of the same batches."""
    import torch

    import deadrelu

    def bare() -> None:
        with torch.inference_mode():
            for chunk in data.split(batch):
                model(chunk)

    def scan() -> None:
        deadrelu.scan(model, data, batch_size=batch, **settings)

    scan()
    bare()
    return _median_pairs(scan, bare, repeats)


def fit(repeats: int = 9, log: Callable[[str], None] = lambda text: None, functional: Any = None) -> dict[str, Any]:
    """Measure the cost model's terms in this process (see the module docstring).

    Args:
        repeats: interleaved repeats per difference.
        log: progress lines.
        functional: the scans' ``functional`` setting for the per-call, per-batch, per-scan and
            per-value models (None: the default; True keeps capture on every batch, as before ``auto``).

    Returns:
        ``per_scan_fixed_us``, ``per_scan_site_us``, ``per_batch_us``, ``per_call_us``,
        ``per_value_ns``, ``per_op_us`` and the raw differences.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.set_num_threads(1)
    torch.manual_seed(0)
    batch, many = 8, 41

    def tiny(sites: int) -> nn.Module:
        return nn.Sequential(*[layer for _ in range(sites) for layer in (nn.Linear(16, 16), nn.ReLU())]).eval()

    raw: dict[str, float] = {}
    settings = {} if functional is None else {"functional": functional}
    for sites in (1, 64):
        model = tiny(sites)
        for batches in (1, many):
            data = torch.randn(batch * batches, 16)
            raw[f"tiny{sites}_b{batches}"] = _extra(model, data, batch, repeats, **settings)
            log(f"  tiny {sites} sites, {batches} batches: {1e3 * raw[f'tiny{sites}_b{batches}']:.2f} ms")
    # Per batch and calls: the slope over batches; per call: the slope over sites.
    slope1 = (raw[f"tiny1_b{many}"] - raw["tiny1_b1"]) / (many - 1)
    slope64 = (raw[f"tiny64_b{many}"] - raw["tiny64_b1"]) / (many - 1)
    per_call = (slope64 - slope1) / 63
    per_batch = slope1 - per_call
    per_scan_site = (raw["tiny64_b1"] - raw["tiny1_b1"] - 63 * per_call) / 63
    per_scan_fixed = raw["tiny1_b1"] - per_batch - per_call - per_scan_site

    wide = nn.Sequential(nn.Linear(64, 4096), nn.ReLU()).eval()
    big_batch, big_batches = 256, 9
    data = torch.randn(big_batch * big_batches, 64)
    raw["wide_b9"] = _extra(wide, data, big_batch, repeats, **settings)
    raw["wide_b1"] = _extra(wide, data[:big_batch], big_batch, repeats, **settings)
    log(f"  wide: {1e3 * raw['wide_b9']:.2f} / {1e3 * raw['wide_b1']:.2f} ms")
    values = big_batch * 4096
    per_value = ((raw["wide_b9"] - raw["wide_b1"]) / (big_batches - 1) - per_batch - per_call) / values

    class Chatty(nn.Module):
        """One ReLU module and 200 cheap torch calls per forward, with one F.relu to keep capture on."""

        def __init__(self) -> None:
            super().__init__()
            self.fc, self.act = nn.Linear(16, 16), nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for _ in range(200):
                x = x.add(0.0)
            return F.relu(self.act(self.fc(x)))

    chatty = Chatty().eval()
    data = torch.randn(batch * many, 16)
    import deadrelu
    always = lambda: deadrelu.scan(chatty, data, batch_size=batch, functional=True)  # noqa: E731  (True: always, as before auto)
    off = lambda: deadrelu.scan(chatty, data, batch_size=batch, functional=False)  # noqa: E731
    always()
    off()
    raw["chatty_always_minus_off"] = _median_pairs(always, off, repeats)
    # 203 torch calls per forward (200 adds, linear, relu module's relu, F.relu) under the mode,
    # less the functional site's own call (one call's cost).
    per_op = (raw["chatty_always_minus_off"] / many - per_call) / 203
    log(f"  functional: {1e3 * raw['chatty_always_minus_off']:.2f} ms over {many} batches")
    return {"per_scan_fixed_us": 1e6 * per_scan_fixed, "per_scan_site_us": 1e6 * per_scan_site,
            "per_batch_us": 1e6 * per_batch, "per_call_us": 1e6 * per_call, "per_value_ns": 1e9 * per_value,
            "per_op_us": 1e6 * per_op, "raw_ms": {k: 1e3 * v for k, v in raw.items()}}


def workload_counts(model: Any, data: Any, batch_size: int) -> dict[str, Any]:
    """What the cost model needs of a workload: sites (calls per forward), activation values per
    forward, torch calls per forward, and whether functional capture stays on after batch 1.

    Args:
        model: the workload's model.
        data: its data.
        batch_size: its batch size.
    """
    import torch
    from torch.overrides import TorchFunctionMode

    import deadrelu

    first = data[:batch_size]
    result = deadrelu.scan(model, first, batch_size=batch_size)

    class Count(TorchFunctionMode):
        calls = 0

        def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
            Count.calls += 1
            return func(*args, **(kwargs or {}))

    with torch.inference_mode(), Count():
        model(first)
    values = sum(site.units * site.observations for site in result.sites)
    return {"sites": len(result.sites), "values_per_batch": int(values), "ops_per_batch": Count.calls,
            "functional_on": result.coverage.get("functional_note") is None and bool(result.coverage.get("functional")),
            "batches": -(-int(data.shape[0]) // batch_size)}


def kernel_split(counts: dict[str, Any], threads: int) -> int:
    """Threads an average kernel call of the workload splits over at ``threads`` threads."""
    from deadrelu import fused

    if threads <= 1 or fused.kernel() is None:
        return 1
    per_call = counts["values_per_batch"] // max(counts["sites"], 1)
    return max(1, min(threads, per_call // fused.min_per_thread()))


def predict_extra(fit_terms: dict[str, Any], counts: dict[str, Any], scale_value: float = 1.0,
                  threads: int = 1) -> float:
    """Predicted seconds a scan costs over bare, from the fitted terms and a workload's counts."""
    batches = counts["batches"]
    per_scan = fit_terms["per_scan_fixed_us"] + fit_terms["per_scan_site_us"] * counts["sites"]
    per_batch = (fit_terms["per_batch_us"] + counts["sites"] * fit_terms["per_call_us"]
                 + counts["values_per_batch"] * fit_terms["per_value_ns"] * 1e-3 * scale_value
                 / kernel_split(counts, threads))
    ops = counts["ops_per_batch"] * fit_terms["per_op_us"]
    # Batch 1 runs under two modes (the producer watch and functional capture); later batches under
    # functional capture where it stayed on.
    functional = ops * (1 + (batches if counts["functional_on"] else 1))
    return 1e-6 * (per_scan + batches * per_batch + functional)


def markdown_fit(fits: dict[str, Any]) -> str:
    """The fitted terms, one column per fit (``{label: fit}``)."""
    labels = list(fits)
    lines = ["| term | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for key, name in (("per_scan_fixed_us", "per scan, fixed (us)"), ("per_scan_site_us", "per scan, per site (us)"),
                      ("per_batch_us", "per batch (us)"), ("per_call_us", "per site call (us)"),
                      ("per_value_ns", "per activation value (ns)"),
                      ("per_op_us", "per torch call under functional capture (us)")):
        lines.append(f"| {name} | " + " | ".join(f"{fits[label][key]:.1f}" if key != "per_value_ns"
                                                 else f"{fits[label][key]:.2f}" for label in labels) + " |")
    return "\n".join(lines) + "\n"


def markdown_predictions(rows: list[dict[str, Any]]) -> str:
    """Predicted against measured ratios, with the counts behind each prediction."""
    lines = ["| workload | threads | batches | sites | values/batch | torch calls/batch | functional after batch 1 | "
             "bare s | predicted | measured | error | wall-time ratio | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        error = (row["predicted"] - row["measured"]) / row["measured"]
        load = row.get("load_average") or [0.0, 0.0]
        lines.append(f"| {row['workload']} | {row['threads']} | {row['batches']} | {row['sites']} | "
                     f"{row['values_per_batch']:,} | {row['ops_per_batch']} | {'on' if row['functional_on'] else 'off'} | "
                     f"{row['bare_seconds']:.3f} | {row['predicted']:.3f} | {row['measured']:.3f} | {error:+.0%} | "
                     f"{row['wall']:.3f} | {load[0]:.1f}-{load[1]:.1f} |")
    within = sum(1 for row in rows if abs(row["predicted"] - row["measured"]) <= 0.2 * row["measured"])
    lines.append(f"\n{within} of {len(rows)} predicted ratios within 20 % of the measured ones (measured: the "
                 "CPU-time ratio at 1 thread, the wall-time ratio at 2; bare s likewise).")
    return "\n".join(lines) + "\n"


def predict(report: dict[str, Any], fit_terms: dict[str, Any]) -> list[dict[str, Any]]:
    """Predicted against measured ratios for every ``scan`` row of an ``overhead.py`` report
    whose workload carries counts (``workload_counts``)."""
    rows = []
    bare = {(r["workload"], r["threads"]): r for r in report["timings"] if r["variant"] == "bare"}
    for row in report["timings"]:
        counts = row.get("counts")
        if row["variant"] != "scan" or not counts:
            continue
        base = bare[(row["workload"], row["threads"])]
        # At one thread CPU time is wall time without the other load of a shared machine: the ratio
        # compared is the CPU-time one there, the wall-time one at more threads.
        one = row["threads"] == 1
        bare_seconds = statistics.median(base["cpu_seconds"]) if one else base["median_seconds"]
        extra = predict_extra(fit_terms, counts, threads=row["threads"])
        rows.append({"workload": row["workload"], "threads": row["threads"], "bare_seconds": bare_seconds,
                     "predicted": 1 + extra / bare_seconds,
                     "measured": row["median_cpu_ratio"] if one else row["median_ratio"],
                     "wall": row["median_ratio"], "load_average": row.get("load_average"), **counts})
    return rows


__all__ = ["fit", "kernel_split", "markdown_fit", "markdown_predictions", "predict", "predict_extra",
           "workload_counts"]
