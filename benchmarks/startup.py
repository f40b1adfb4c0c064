"""Fixed costs a scan pays once: ``python benchmarks/startup.py``.

* **The command line**: wall time of ``deadrelu --help`` and ``deadrelu version`` (they
  must not import torch), and of ``deadrelu scan`` on the bundled sample model, set
  against the time to ``import torch`` and the library scan itself (the same load and
  ``deadrelu.scan`` call in a warm process): what the command adds is start-up.
* **Reduction back ends, cold and warm**: the fused C kernel as installed (compiled with
  the package, ``deadrelu._fused``: nothing to build at run time), and ``torch.compile`` of the
  reduction (``--compile on``) with an empty inductor cache (``TORCHINDUCTOR_CACHE_DIR``)
  and then warm (the FX graph cache on disk, in a new process): each in a fresh process,
  as a new CI job would pay it.
* **Per scan and per site**: a one-batch scan minus a one-batch forward pass (site
  discovery, result assembly, suggestion rules over the weights), and the cost per site
  and batch on a model of many tiny sites.

Every timing is the median of several fresh processes (min-max shown), the 1-minute
load average is recorded with it. Writes ``benchmarks/results/startup.json`` and the
``<!-- results:startup -->`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
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
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
SAMPLE = ["sample_models/mlp_high_lr.pt", "sample_models/mlp_data.npy", "--arch", "sample_models/archs.py:HighLrMLP"]
CLI = [sys.executable, "-m", "deadrelu.cli"]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _wall(command: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env or _env(), capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 1):  # scan exits 1 when its gate fails; that is still a full run
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()[-300:]}")
    return elapsed


def _python(code: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env or _env(), capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip()[-500:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def _summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


LIBRARY_SCAN = """
import json, time
start = time.perf_counter()
import torch
torch_s = time.perf_counter() - start
import deadrelu
model = deadrelu.load_model("sample_models/mlp_high_lr.pt", arch="sample_models/archs.py:HighLrMLP")
deadrelu.scan(model, "sample_models/mlp_data.npy")          # warm-up: kernels, caches
start = time.perf_counter()
model = deadrelu.load_model("sample_models/mlp_high_lr.pt", arch="sample_models/archs.py:HighLrMLP")
deadrelu.scan(model, "sample_models/mlp_data.npy")
print(json.dumps({"import_torch_s": torch_s, "scan_s": time.perf_counter() - start}))
"""

BACKEND = """
import json, sys, time
sys.path.insert(0, "benchmarks")
import torch
torch.set_num_threads(1)
import deadrelu
from workloads import WORKLOADS
workload = WORKLOADS["cnn-kinds"]
model, data = workload.model(), workload.data(128)
start = time.perf_counter()
result = deadrelu.scan(model, data, batch_size=64, compile=sys.argv[1])
print(json.dumps({"scan_s": time.perf_counter() - start, "reduction": result.environment["reduction"],
                  "compile_seconds": result.environment.get("compile_seconds")}))
"""

FIXED = """
import json, statistics, sys, time
sys.path.insert(0, "benchmarks")
import torch
from torch import nn
torch.set_num_threads(1)
import deadrelu
from workloads import WORKLOADS

def interleaved(first, second, repeats=7):
    pairs = []
    for _ in range(repeats):
        a = time.perf_counter(); first(); a = time.perf_counter() - a
        b = time.perf_counter(); second(); b = time.perf_counter() - b
        pairs.append(a - b)
    return statistics.median(pairs)

out = {}
for name in ("mobile", "cnn-kinds", "transformer-kinds"):
    workload = WORKLOADS[name]
    model, batch = workload.model(), workload.data(workload.batch_size)
    deadrelu.scan(model, batch, batch_size=workload.batch_size)
    def bare():
        with torch.inference_mode():
            model(batch)
    out[f"per_scan_{name}_ms"] = 1e3 * interleaved(lambda: deadrelu.scan(model, batch, batch_size=workload.batch_size),
                                                   bare)
sites = 64
tiny = nn.Sequential(*[layer for _ in range(sites) for layer in (nn.Linear(16, 16), nn.ReLU())])
data = torch.randn(64 * 40, 16)
def scan_many():
    deadrelu.scan(tiny, data, batch_size=64)
def scan_one():
    deadrelu.scan(tiny, data[:64], batch_size=64)
def bare_many():
    with torch.inference_mode():
        for chunk in data.split(64):
            tiny(chunk)
def bare_one():
    with torch.inference_mode():
        tiny(data[:64])
scan_many(); scan_one()
extra_batches = interleaved(scan_many, scan_one) - interleaved(bare_many, bare_one)
out["per_site_batch_us"] = 1e6 * extra_batches / (sites * 39)
print(json.dumps(out))
"""


def measure(repeats: int, log: Any) -> dict[str, Any]:
    report: dict[str, Any] = {"load_before": os.getloadavg()[0]}
    log("command line")
    report["help_s"] = _summary([_wall(CLI + ["--help"]) for _ in range(repeats)])
    report["version_s"] = _summary([_wall(CLI + ["version"]) for _ in range(repeats)])
    report["help_imports_torch"] = _python(
        "import json, sys, runpy; sys.argv = ['deadrelu', '--help']\n"
        "try:\n    runpy.run_module('deadrelu.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print(json.dumps('torch' in sys.modules))")
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "r.json")
        _wall(CLI + ["scan", *SAMPLE, "--json", out])  # the fused kernel is built, caches warm
        cli, library = [], []
        for _ in range(repeats):
            cli.append(_wall(CLI + ["scan", *SAMPLE, "--json", out]))
            library.append(_python(LIBRARY_SCAN))
    report["scan_cli_s"] = _summary(cli)
    report["import_torch_s"] = _summary([entry["import_torch_s"] for entry in library])
    report["library_scan_s"] = _summary([entry["scan_s"] for entry in library])
    report["startup_s"] = _summary([c - entry["import_torch_s"] - entry["scan_s"] for c, entry in zip(cli, library)])
    log("back ends, cold and warm")
    backends: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as fused_cache, tempfile.TemporaryDirectory() as inductor_cache:
        env = _env(DEADRELU_CACHE_DIR=fused_cache, TORCHINDUCTOR_CACHE_DIR=inductor_cache)
        backends["fused (installed kernel)"] = _python_file(BACKEND, ["off"], env)
        backends["torch.compile cold"] = _python_file(BACKEND, ["on"], env)
        backends["torch.compile warm"] = _python_file(BACKEND, ["on"], env)
    backends["eager (DEADRELU_FUSED=0)"] = _python_file(BACKEND, ["off"], _env(DEADRELU_FUSED="0"))
    report["backends"] = backends
    log("fixed costs per scan and per site")
    report["fixed"] = _python(FIXED)
    report["load_after"] = os.getloadavg()[0]
    return report


def _python_file(code: str, args: list[str], env: dict[str, str]) -> dict[str, Any]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1], "process_s": wall}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_s": wall}


def markdown(report: dict[str, Any]) -> str:
    def cell(entry: dict[str, Any]) -> str:
        return f"{entry['median']:.2f} ({entry['min']:.2f}-{entry['max']:.2f})"
    lines = [f"Command: `{report['command']}`  ",
             f"Date: {report['date']}; median (min-max) of {report['repeats']} fresh processes; 1-minute load "
             f"average {report['load_before']:.1f} before, {report['load_after']:.1f} after.", "",
             "| what | seconds |", "|---|---|",
             f"| `deadrelu --help` (imports torch: {'yes' if report['help_imports_torch'] else 'no'}) | "
             f"{cell(report['help_s'])} |",
             f"| `deadrelu version` | {cell(report['version_s'])} |",
             f"| `deadrelu scan` on the sample model (whole process) | {cell(report['scan_cli_s'])} |",
             f"| `import torch` | {cell(report['import_torch_s'])} |",
             f"| the library scan itself (load + `deadrelu.scan`, warm process) | {cell(report['library_scan_s'])} |",
             f"| **start-up** = scan process - import torch - library scan | **{cell(report['startup_s'])}** |",
             "", "Reduction back ends on a fresh process each (cnn-kinds, 128 images, 1 thread; `process s` is the "
             "whole process, `scan s` the `deadrelu.scan` call):", "",
             "| back end | process s | scan s | reduction | compile s |", "|---|---|---|---|---|"]
    for name, entry in report["backends"].items():
        if "error" in entry:
            lines.append(f"| {name} | {entry['process_s']:.1f} | failed: {entry['error']} | | |")
            continue
        compile_s = entry.get("compile_seconds")
        lines.append(f"| {name} | {entry['process_s']:.1f} | {entry['scan_s']:.2f} | {entry['reduction']} | "
                     f"{'' if compile_s is None else f'{compile_s:.1f}'} |")
    fixed = report["fixed"]
    lines += ["", "Fixed costs (1 thread, median of 7 interleaved pairs): per scan, a one-batch scan minus a "
              "one-batch forward pass: " + ", ".join(f"{key[9:-3]} {value:.0f} ms" for key, value in fixed.items()
                                                    if key.startswith("per_scan_"))
              + f"; per site and batch (64 tiny Linear+ReLU sites, 40 batches): {fixed['per_site_batch_us']:.0f} us."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    from overhead import write_markdown
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    report = measure(args.repeats, log)
    report.update({"command": ("python benchmarks/startup.py " + " ".join(argv if argv is not None
                                                                         else sys.argv[1:])).strip(),
                   "date": time.strftime("%Y-%m-%d %H:%M %Z"), "repeats": args.repeats})
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "startup.json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    print(text)
    write_markdown(HERE / "RESULTS.md", "startup", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
