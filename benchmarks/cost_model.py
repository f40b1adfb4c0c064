"""How scan time and memory grow with samples, units and sites: ``python benchmarks/cost_model.py``.

Each point runs in a fresh subprocess (1 thread by default) that builds the model and
the data, scans one warm-up batch, resets the kernel's RSS high-water mark
(``/proc/self/clear_refs``), then times ``bare`` (``model(x)`` per batch) and
``deadrelu.scan`` alternately (2 rounds, median) and reports the peak RSS growth of
the scan over the loaded model and data. Three series, three sizes each:

* samples: the 784-1024-1024-1024-10 MLP on 4,096 / 16,384 / 65,536 samples;
* units: a 2-hidden-layer MLP of width 256 / 1,024 / 4,096 on 8,192 samples;
* sites: an MLP of 2 / 8 / 32 ReLU layers of width 512 on 8,192 samples;

plus two "largest" points: a 1 GiB memory-mapped ``.npy`` (342,392 samples of 784
floats) scanned from its path, with the peak RSS of the whole process, and a
ResNet-18 at 3x224x224. Results: ``benchmarks/results/cost_model.json`` and a table in
``benchmarks/RESULTS.md`` (``<!-- results:cost_model -->``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _build(spec: dict[str, Any]) -> Any:
    import torch
    from torch import nn

    from workloads import ResNet18, mlp

    torch.manual_seed(0)
    if spec["model"] == "mlp":
        return mlp(tuple(spec["widths"])).eval()
    if spec["model"] == "deep":
        width, depth = spec["width"], spec["depth"]
        layers: list[nn.Module] = [nn.Linear(784, width), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(width, 10)).eval()
    if spec["model"] == "resnet18":
        return ResNet18().eval()
    raise ValueError(spec["model"])


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One point, in this (fresh) process."""
    import numpy as np
    import torch

    import deadrelu

    torch.set_num_threads(spec.get("threads", 1))
    model = _build(spec)
    batch = spec["batch_size"]
    if spec.get("npy"):
        data: Any = spec["npy"]
        sample = torch.from_numpy(np.array(np.load(data, mmap_mode="r")[:batch]))
    else:
        generator = torch.Generator().manual_seed(1)
        data = torch.randn((spec["samples"], *spec["sample_shape"]), generator=generator)
        sample = data[:batch]
    with torch.inference_mode():
        model(sample)
    deadrelu.scan(model, sample, batch_size=batch)  # libraries, kernels, first allocations
    del sample
    gc.collect()

    def bare() -> None:
        with torch.inference_mode():
            if isinstance(data, str):
                array = np.load(data, mmap_mode="r")
                for start in range(0, array.shape[0], batch):
                    model(torch.from_numpy(np.array(array[start:start + batch])))
            else:
                for chunk in data.split(batch):
                    model(chunk)

    rounds = spec.get("rounds", 2)
    before = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    scan_times, bare_times, result = [], [], None
    for _ in range(rounds):
        start = time.perf_counter()
        result = deadrelu.scan(model, data, batch_size=batch)
        scan_times.append(time.perf_counter() - start)
        peak_scan = _status_kb("VmHWM")
        if spec.get("bare", True):
            start = time.perf_counter()
            bare()
            bare_times.append(time.perf_counter() - start)
    assert result is not None
    units = sum(site.units for site in result.sites)
    out = {"scan_seconds": statistics.median(scan_times), "rss_before_mb": before / 1024,
           "scan_peak_rss_mb": peak_scan / 1024, "scan_rss_growth_mb": (peak_scan - before) / 1024,
           "sites": len(result.sites), "units": units, "samples": result.data["samples"],
           "parameters": sum(p.numel() for p in model.parameters()),
           "reduction": result.environment.get("reduction")}
    if bare_times:
        out["bare_seconds"] = statistics.median(bare_times)
        out["ratio"] = out["scan_seconds"] / out["bare_seconds"]
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(("RssAnon", "RssFile")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def run_point(spec: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {**spec, "error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    return {**spec, **json.loads(done.stdout.strip().splitlines()[-1])}


def points(quick: bool) -> list[dict[str, Any]]:
    scale = 8 if quick else 1
    mlp = {"model": "mlp", "sample_shape": [784], "batch_size": 256}
    series = []
    for samples in (4096, 16384, 65536):
        series.append({**mlp, "series": "samples", "widths": [784, 1024, 1024, 1024, 10],
                       "samples": samples // scale})
    for width in (256, 1024, 4096):
        series.append({**mlp, "series": "units", "widths": [784, width, width, 10], "samples": 8192 // scale})
    for depth in (2, 8, 32):
        series.append({"model": "deep", "series": "sites", "sample_shape": [784], "batch_size": 256,
                       "width": 512, "depth": depth, "samples": 8192 // scale})
    return series


def big_npy(path: Path, gib: float) -> int:
    """A float32 ``(N, 784)`` .npy of ``gib`` GiB, written in chunks (never whole in memory)."""
    import numpy as np
    rows = int(gib * 2 ** 30) // (784 * 4)
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, 784))
    generator = np.random.default_rng(0)
    for start in range(0, rows, 16384):
        stop = min(rows, start + 16384)
        array[start:stop] = generator.standard_normal((stop - start, 784), dtype=np.float32)
    array.flush()
    del array
    return rows


def markdown(report: dict[str, Any]) -> str:
    lines = [f"Command: `{report['command']}`  ", f"Date: {report['date']}; 1 thread; each point a fresh "
             "process; time = median of 2 rounds; RSS growth = peak (`VmHWM`) during the scans minus RSS "
             "with model and data loaded.", "",
             "| series | size | samples | sites | units | bare s | scan s | ratio | scan RSS growth MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for point in report["points"]:
        if "error" in point:
            lines.append(f"| {point['series']} | - | - | - | - | - | - | - | {point['error']} |")
            continue
        size = {"samples": f"{point['samples']} samples", "units": f"width {point.get('widths', [0, 0])[1]}",
                "sites": f"depth {point.get('depth')}"}.get(point["series"], point["series"])
        bare = f"{point['bare_seconds']:.2f}" if "bare_seconds" in point else "-"
        ratio = f"{point['ratio']:.3f}" if "ratio" in point else "-"
        lines.append(f"| {point['series']} | {size} | {point['samples']} | {point['sites']} | {point['units']} | "
                     f"{bare} | {point['scan_seconds']:.2f} | {ratio} | {point['scan_rss_growth_mb']:.0f} |")
    for point in report.get("largest", []):
        if "error" in point:
            lines.append(f"\nLargest ({point['series']}): failed: {point['error']}")
            continue
        lines.append(f"\nLargest ({point['series']}): {point['samples']} samples, {point['parameters']:,} "
                     f"parameters, {point['sites']} sites, {point['units']} units: scan {point['scan_seconds']:.1f} s"
                     + (f" (bare {point['bare_seconds']:.1f} s, ratio {point['ratio']:.3f})" if "ratio" in point
                        else "")
                     + f"; peak RSS of the whole process {point['scan_peak_rss_mb']:.0f} MB "
                       f"(growth {point['scan_rss_growth_mb']:.0f} MB; at the end RssAnon "
                       f"{point.get('RssAnon', 0):.0f} MB, RssFile {point.get('RssFile', 0):.0f} MB).")
    return "\n".join(lines) + "\n"


def fit_and_predict(args: argparse.Namespace, argv: list[str] | None) -> int:
    """``--fit``: measure the terms into results/cost_fit.json; ``--predict``: the predicted ratios of an
    overhead.py report next to the measured ones, into RESULTS.md (``<!-- results:cost_prediction -->``)."""
    import cost_fit
    from overhead import write_markdown
    folder = HERE / "results"
    folder.mkdir(exist_ok=True)
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    command = ("python benchmarks/cost_model.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    if args.fit:
        terms = cost_fit.fit(args.repeats, log)
        terms.update(date=time.strftime("%Y-%m-%d %H:%M %Z"), load_average=os.getloadavg()[0])
        (folder / "cost_fit.json").write_text(json.dumps(terms, indent=1))
        text = (f"Command: `{command}`  \nDate: {terms['date']}; 1 thread, CPU time, median of {args.repeats} "
                f"interleaved repeats; 1-minute load average {terms['load_average']:.1f}.\n\n"
                + cost_fit.markdown_fit({"now": terms}))
        print(text)
        write_markdown(HERE / "RESULTS.md", "cost_fit", text)
    if args.predict:
        terms = json.loads((folder / "cost_fit.json").read_text())
        reports = [json.loads((folder / f"{tag}.json").read_text()) for tag in args.predict.split(",")]
        rows = [row for report in reports for row in cost_fit.predict(report, terms)]
        runs = "; ".join(f"`{report['command']}` ({report['date']})" for report in reports)
        text = (f"Command: `{command}` (terms of {terms['date']}; ratios of {runs})\n\n"
                + cost_fit.markdown_predictions(rows))
        print(text)
        write_markdown(HERE / "RESULTS.md", "cost_prediction", text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1/8 of the sizes, no largest points")
    parser.add_argument("--no-largest", action="store_true", help="skip the 1 GiB .npy and the ResNet-18 at 224")
    parser.add_argument("--fit", action="store_true",
                        help="fit the cost model's terms (cost_fit.py: per scan, batch, site call, value, torch call)")
    parser.add_argument("--predict", nargs="?", const="issue23", metavar="TAG",
                        help="predict the ratios of results/<TAG>.json (default issue23; several: comma-separated) from "
                             "results/cost_fit.json")
    parser.add_argument("--repeats", type=int, default=9, help="--fit: interleaved repeats per difference")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    if args.fit or args.predict:
        return fit_and_predict(args, argv)
    from overhead import write_markdown
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    results = []
    for spec in points(args.quick):
        log(f"{spec['series']}: {spec}")
        results.append(run_point(spec))
        log(f"  -> {results[-1]}")
    largest = []
    if not (args.quick or args.no_largest):
        with tempfile.TemporaryDirectory(prefix="deadrelu-cost-") as folder:
            path = Path(folder) / "one_gib.npy"
            rows = big_npy(path, 1.0)
            log(f"largest: {path} ({path.stat().st_size / 2 ** 30:.2f} GiB, {rows} rows)")
            largest.append(run_point({"model": "mlp", "series": "1 GiB memory-mapped .npy, MLP 784-1024x3-10",
                                      "widths": [784, 1024, 1024, 1024, 10], "npy": str(path),
                                      "batch_size": 256, "rounds": 1, "samples": rows}))
            log(f"  -> {largest[-1]}")
        largest.append(run_point({"model": "resnet18", "series": "ResNet-18 at 3x224x224",
                                  "sample_shape": [3, 224, 224], "samples": 256, "batch_size": 32, "rounds": 1,
                                  "threads": 2}))
        log(f"  -> {largest[-1]}")
    report = {"command": ("python benchmarks/cost_model.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip(),
              "date": time.strftime("%Y-%m-%d %H:%M %Z"), "points": results, "largest": largest}
    folder = HERE / "results"
    folder.mkdir(exist_ok=True)
    (folder / ("cost_model_quick.json" if args.quick else "cost_model.json")).write_text(json.dumps(report, indent=1))
    text = markdown(report)
    print(text)
    if not args.quick:
        write_markdown(HERE / "RESULTS.md", "cost_model", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
