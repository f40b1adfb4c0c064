"""What a deadrelu scan costs over plain inference: ``python benchmarks/overhead.py``.

One process times, interleaved and pair by pair, on each workload of
``benchmarks/workloads.py`` and at each thread count:

* ``bare``: ``model(x)`` per batch under ``torch.inference_mode()`` (the floor);
* ``scan``: ``deadrelu.scan`` with default settings (the fused C kernel on float32 CPU
  tensors, ``--compile auto``, functional capture on);
* ``scan-eager``: the same scan with the fused kernel switched off (``DEADRELU_FUSED=0``):
  the eager torch reduction, as on a machine without a C compiler;
* ``scan-hooks`` (not in the default set): the scan with the fused activation off, as before
  it existed: every activation module runs its own forward and a post-hook reduces its output
  (a second read);
* ``scan-compiled``: ``deadrelu.scan(..., compile="on")`` (its first call in the process
  includes compiling, reported apart as ``cold_seconds``; not in the default set);
* peers, hooking the same activation modules: ``max-hook`` (a per-unit running max kept
  by a forward hook, written the textbook way), ``fastai-stats`` (fastai's
  ``ActivationStats`` hook: per-layer mean, std and near-zero share per batch, read to
  the host with ``.item()``), ``timm-stats`` (timm's ``ActivationStatsHook`` with its
  ``avg_sq_ch_mean`` and ``avg_ch_var`` functions). fastai and timm are not installed
  here (fastai pulls a torchvision built for CUDA, which does not import against this
  CPU torch), so their hooks are reproduced from their source, line for line;
* ``store-all`` (not in the default set): the naive way, generalised from the seed's
  ``count_dead_neurons``: hooks clone every activation, the statistics are reduced at the end.

Each repeat runs every variant once, in an order rotated from repeat to repeat; the
ratio to ``bare`` is taken within each repeat and the median over repeats is
reported with its min-max (wall time; process CPU time too, which other load on the
machine disturbs less), with the 1-minute load average before and after each workload.
Peak RSS growth is measured in a fresh subprocess per variant: it builds the model and
the data, resets the kernel's high-water mark (``/proc/self/clear_refs``), runs the
variant once, and reports ``VmHWM`` minus the RSS before the run; at two data sizes, to
show whether it grows with the samples.

Results go to ``benchmarks/results/<tag>.json`` and, as a Markdown table between
``<!-- results:<tag> -->`` markers, into ``benchmarks/RESULTS.md``.

    python benchmarks/overhead.py                  # full run (about an hour on 2 loaded cores)
    python benchmarks/overhead.py --quick          # smoke run
    python benchmarks/overhead.py --issue23        # issue 23's table, 1 and 2 threads, <= 10 min
    python benchmarks/overhead.py --long           # CNN, 20,480 images, 1 thread: bare pass >= 60 s
    python benchmarks/overhead.py --device cuda    # on a GPU (the default when one is present)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

VARIANTS = ("bare", "scan", "scan-eager", "scan-hooks", "scan-compiled", "max-hook", "fastai-stats", "timm-stats", "store-all")
DEFAULT_VARIANTS = ("bare", "scan", "scan-eager", "max-hook", "fastai-stats", "timm-stats")
ALL_WORKLOADS = ("cnn", "cnn-kinds", "mobile", "mlp", "mlp-kinds", "transformer", "transformer-kinds")
#: ``--issue23``: every row of issue 23's table (samples per workload cut so the run takes <= 10 min).
ISSUE23 = {"cnn": 512, "mobile": 512, "transformer": 256, "mlp": 8192, "resnet-leaky": 512, "mlp-elu": 8192,
           "hf-bert": None, "hf-gpt2": None, "hf-opt": None, "hf-llama": None, "hf-vit": None, "hf-whisper": None,
           "hf-clip": None, "mobilenetv3": None, "ghostnet": None, "regnet": None}
#: a bare pass shorter than this (s) gets at least ``SHORT_REPEATS`` timed repeats
SHORT_SECONDS, SHORT_REPEATS = 0.3, 9
#: What each peer can tell the user, for the table.
PEER_INFO = {
    "max-hook": "per-unit max of each module's outputs (calls of a reused module mixed unless their widths "
                "differ): dead ReLU units only",
    "fastai-stats": "per layer and batch: mean, std, share of outputs <= 0.05; nothing per unit",
    "timm-stats": "per layer and batch: mean over channels of the squared channel mean and of the channel "
                  "variance; nothing per unit",
    "scan": "per unit and call site: dead, saturated, dormant (counts, mean, std, mean |h|, min, max, "
            "bound counts), fix suggestions",
}


def _fresh_inductor_cache() -> str:
    """Point inductor at an empty cache so the first compile is measured cold (set before torch loads)."""
    path = tempfile.mkdtemp(prefix="deadrelu-bench-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    return path


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 repeats, 1 thread, no RSS: a smoke run")
    parser.add_argument("--issue23", action="store_true",
                        help="issue 23's table: every workload of ISSUE23 (fewer samples) at 1 and 2 threads, bare, "
                             "scan and max-hook, 3 repeats (9 for tiny models), with the cost model's counts; <= 10 min")
    parser.add_argument("--long", action="store_true", help="the long CNN scan (bare pass >= 60 s) only")
    parser.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda when present, else cpu)")
    parser.add_argument("--workloads", default=None, help="comma-separated subset of " + ",".join(ALL_WORKLOADS))
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help="comma-separated subset of " + ",".join(VARIANTS))
    parser.add_argument("--threads", default=None, help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per variant (default 5)")
    parser.add_argument("--samples", type=int, default=None, help="override every workload's sample count")
    parser.add_argument("--batch-size", type=int, default=None, help="override every workload's batch size")
    parser.add_argument("--no-rss", action="store_true", help="skip the RSS subprocesses")
    parser.add_argument("--keep-inductor-cache", action="store_true",
                        help="use the usual inductor cache (the first compile is then warm, not cold)")
    parser.add_argument("--tag", default=None, help="results name (default: quick, long, cpu or cuda)")
    parser.add_argument("--no-markdown", action="store_true", help="do not touch benchmarks/RESULTS.md")
    parser.add_argument("--rss-child", nargs=4, metavar=("WORKLOAD", "VARIANT", "SAMPLES", "BATCH"),
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# -- machine ---------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    """The machine description recorded with every result."""
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "platform": platform.platform(), "cpu_count": os.cpu_count()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        for key in ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "L2 cache", "L3 cache",
                    "Hypervisor vendor"):
            if key in fields:
                info[key.lower().replace("(s)", "s").replace(" ", "_")] = fields[key].strip()
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as handle:
            info["memory_gb"] = round(int(handle.readline().split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


# -- variants --------------------------------------------------------------------------------------

def _sync(device: Any) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_bare(model: Any, data: Any, batch_size: int, device: Any) -> None:
    """The floor: the model's own forward pass over the data, nothing else."""
    import torch
    with torch.inference_mode():
        for batch in data.split(batch_size):
            model(batch.to(device, non_blocking=True))
    _sync(device)


def run_scan(model: Any, data: Any, batch_size: int, device: Any, **settings: Any) -> Any:
    """``deadrelu.scan`` as a user calls it."""
    import deadrelu
    result = deadrelu.scan(model, data, batch_size=batch_size, **settings)
    _sync(device)
    return result


def run_store_all(model: Any, data: Any, batch_size: int, device: Any) -> dict[tuple[str, int], Any]:
    """The naive way: keep a copy of every activation call, reduce per unit at the end.

    The seed's ``count_dead_neurons`` generalised to every ReLU-family module, every
    call of a reused module, and the same per-unit statistics deadrelu keeps (active
    count, sum, sum of squares, sum |h|, min, max); conv outputs are reduced per
    channel (axis 1), everything else per feature (last axis).
    """
    import torch
    from deadrelu.kinds import spec_for_module

    stored: dict[tuple[str, int], list[torch.Tensor]] = {}
    calls: dict[str, int] = {}
    handles = []

    def hook_for(name: str) -> Callable:
        def hook(module: Any, args: Any, output: torch.Tensor) -> None:
            index = calls.get(name, 0)
            calls[name] = index + 1
            stored.setdefault((name, index), []).append(output.detach().clone())  # in-place ops follow
        return hook

    for name, module in model.named_modules():
        if spec_for_module(module) is not None:
            handles.append(module.register_forward_hook(hook_for(name)))
    try:
        with torch.inference_mode():
            for batch in data.split(batch_size):
                calls.clear()
                model(batch.to(device, non_blocking=True))
            stats = {}
            for key in list(stored):
                chunks = stored.pop(key)
                whole = torch.cat(chunks)
                del chunks
                unit_axis = 1 if whole.ndim == 4 else whole.ndim - 1
                dims = tuple(axis for axis in range(whole.ndim) if axis != unit_axis)
                stats[key] = (whole.gt(0).sum(dims), whole.sum(dims), whole.square().sum(dims),
                              whole.abs().sum(dims), whole.amin(dims), whole.amax(dims))
                del whole
    finally:
        for handle in handles:
            handle.remove()
    _sync(device)
    return stats


def run_scan_eager(model: Any, data: Any, batch_size: int, device: Any) -> Any:
    """``deadrelu.scan`` with the fused kernel off: the eager torch reduction."""
    from deadrelu import fused
    kernel = fused.kernel
    fused.kernel = lambda: None  # type: ignore[assignment]
    try:
        return run_scan(model, data, batch_size, device)
    finally:
        fused.kernel = kernel  # type: ignore[assignment]


def run_scan_hooks(model: Any, data: Any, batch_size: int, device: Any) -> Any:
    """``deadrelu.scan`` with the fused activation off: module forwards plus post-hook reductions."""
    from deadrelu import fused
    activation = fused.activation
    fused.activation = lambda: None  # type: ignore[assignment]
    try:
        return run_scan(model, data, batch_size, device)
    finally:
        fused.activation = activation  # type: ignore[assignment]


def _activation_modules(model: Any) -> list[tuple[str, Any]]:
    from deadrelu.kinds import spec_for_module
    return [(name, module) for name, module in model.named_modules() if spec_for_module(module) is not None]


def _unit_dims(output: Any) -> tuple[int, ...]:
    """Channels of a conv output, features (last axis) of anything else."""
    unit_axis = 1 if output.ndim == 4 else output.ndim - 1
    return tuple(axis for axis in range(output.ndim) if axis != unit_axis)


def _hooked_pass(model: Any, data: Any, batch_size: int, device: Any, hook: Callable,
                 after_batch: Callable[[], None] | None = None) -> None:
    """The bare loop with ``hook`` as a forward hook on every activation module."""
    import torch
    handles = [module.register_forward_hook(hook) for _name, module in _activation_modules(model)]
    try:
        with torch.inference_mode():
            for batch in data.split(batch_size):
                model(batch.to(device, non_blocking=True))
                if after_batch is not None:
                    after_batch()
    finally:
        for handle in handles:
            handle.remove()
    _sync(device)


def run_max_hook(model: Any, data: Any, batch_size: int, device: Any) -> dict[Any, Any]:
    """The textbook per-unit running max: one forward hook per module, ``torch.maximum`` per call.

    Keyed by module and unit count: keyed by module alone, as the textbook does, it crashes
    on ``cnn-kinds``, whose reused activation modules see 16 and then 64 channels.
    """
    import torch
    running: dict[Any, Any] = {}

    def hook(module: Any, args: Any, output: Any) -> None:
        batch_max = output.detach().amax(_unit_dims(output))
        key = (module, batch_max.numel())
        previous = running.get(key)
        running[key] = batch_max if previous is None else torch.maximum(previous, batch_max)

    _hooked_pass(model, data, batch_size, device, hook)
    return running


def run_fastai_stats(model: Any, data: Any, batch_size: int, device: Any) -> list[list[dict[str, float]]]:
    """fastai's ``ActivationStats`` (fastai/callback/hook.py): its ``hook`` and ``after_batch``.

    ``hook`` returns ``{'mean': o.mean().item(), 'std': o.std().item(), 'near_zero':
    (o<=0.05).long().sum().item()/o.numel()}`` per module; ``Hooks`` stores it and
    ``after_batch`` appends the stored list to ``self.stats``.
    """
    stats: list[list[dict[str, float]]] = []
    stored: dict[Any, dict[str, float]] = {}

    def hook(module: Any, args: Any, output: Any) -> None:
        o = output.detach().float()
        stored[module] = {"mean": o.mean().item(), "std": o.std().item(),
                          "near_zero": (o <= 0.05).long().sum().item() / o.numel()}

    _hooked_pass(model, data, batch_size, device, hook, after_batch=lambda: stats.append(list(stored.values())))
    return stats


def run_timm_stats(model: Any, data: Any, batch_size: int, device: Any) -> dict[str, list[float]]:
    """timm's ``ActivationStatsHook`` (timm/utils/model.py) with ``avg_sq_ch_mean`` and ``avg_ch_var``.

    Each hook function reduces the output over ``[0, 2, 3]`` (here: every axis but the
    unit axis, so Linear outputs work too), takes the mean over channels and ``.item()``s
    it; ``append_activation_stats`` appends it to ``self.stats[fn.__name__]``.
    """
    import torch
    stats: dict[str, list[float]] = {"avg_sq_ch_mean": [], "avg_ch_var": []}

    def hook(module: Any, args: Any, output: Any) -> None:
        dims = _unit_dims(output)
        stats["avg_sq_ch_mean"].append(torch.mean(output.mean(dims) ** 2).item())
        stats["avg_ch_var"].append(torch.mean(output.var(dims)).item())

    _hooked_pass(model, data, batch_size, device, hook)
    return stats


def variant_runner(variant: str) -> Callable[..., Any]:
    return {"bare": run_bare, "scan": run_scan, "scan-eager": run_scan_eager, "scan-hooks": run_scan_hooks,
            "scan-compiled": lambda *a: run_scan(*a, compile="on"),
            "max-hook": run_max_hook, "fastai-stats": run_fastai_stats, "timm-stats": run_timm_stats,
            "store-all": run_store_all}[variant]


# -- timing ----------------------------------------------------------------------------------------

def time_workload(workload: Any, device: Any, threads: int, variants: list[str], repeats: int,
                  log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Interleaved, pair-by-pair timing of every variant on one workload at one thread count."""
    import torch
    torch.set_num_threads(threads)
    model = workload.model().to(device)
    data = workload.data()
    if device.type == "cuda":
        data = data.pin_memory()
    wall: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    first: dict[str, float] = {}
    gpu_peak: dict[str, float] = {}
    in_hooks: dict[str, list[float]] = {v: [] for v in variants}  # host share of time spent reducing
    environment: dict[str, Any] = {}
    load_before = os.getloadavg()[0]
    order = list(variants)
    repeat = -1
    while repeat < repeats:  # repeat 0 is the warm-up, kept as the cold figure
        repeat += 1
        for variant in order:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                allocated = torch.cuda.memory_allocated(device)
            start_cpu, start = time.process_time(), time.perf_counter()
            result = variant_runner(variant)(model, data, workload.batch_size, device)
            elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
            if device.type == "cuda":
                gpu_peak[variant] = max(gpu_peak.get(variant, 0.0),
                                        (torch.cuda.max_memory_allocated(device) - allocated) / 2 ** 20)
            if variant.startswith("scan"):
                if variant not in environment:
                    environment[variant] = {k: result.environment.get(k) for k in
                                            ("compile", "reduction", "reduction_reason", "compile_seconds")}
                if repeat:
                    in_hooks[variant].append(result.environment.get("reduction_seconds", 0.0) / elapsed)
            del result
            if repeat == 0:
                first[variant] = elapsed
            else:
                wall[variant].append(elapsed)
                cpu[variant].append(elapsed_cpu)
        log(f"  {workload.name} threads={threads} repeat {repeat}{' (warm-up)' if repeat == 0 else ''}: " +
            ", ".join(f"{v} {wall[v][-1] if repeat else first[v]:.2f}s" for v in variants))
        order = order[1:] + order[:1]  # rotate: each variant runs first, second... in turn
        if repeat == 0 and first["bare"] < SHORT_SECONDS:
            repeats = max(repeats, SHORT_REPEATS)  # a tiny model's pass: more repeats, same wall time
    load_after = os.getloadavg()[0]
    rows = []
    for variant in variants:
        ratios = [w / b for w, b in zip(wall[variant], wall["bare"])] if "bare" in wall else []
        cpu_ratios = [w / b for w, b in zip(cpu[variant], cpu["bare"])] if "bare" in cpu else []
        rows.append({
            "workload": workload.name, "device": str(device), "threads": threads, "variant": variant,
            "samples": workload.samples, "batch_size": workload.batch_size,
            "seconds": wall[variant], "cpu_seconds": cpu[variant],
            "median_seconds": statistics.median(wall[variant]),
            "cold_seconds": first[variant],
            "ratios": ratios, "median_ratio": statistics.median(ratios) if ratios else None,
            "min_ratio": min(ratios) if ratios else None, "max_ratio": max(ratios) if ratios else None,
            "median_cpu_ratio": statistics.median(cpu_ratios) if cpu_ratios else None,
            "samples_per_second": workload.samples / statistics.median(wall[variant]),
            "environment": environment.get(variant), "load_average": [load_before, load_after],
            "gpu_peak_growth_mb": gpu_peak.get(variant),
            "reduction_share": statistics.median(in_hooks[variant]) if in_hooks[variant] else None})
    return rows


# -- memory ----------------------------------------------------------------------------------------

def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rss_child(workload_name: str, variant: str, samples: int, batch_size: int) -> None:
    """Run in a fresh process: peak RSS growth of one variant over model + data already loaded."""
    import torch
    from workloads import WORKLOADS
    torch.set_num_threads(1)
    workload = WORKLOADS[workload_name].scaled(samples, batch_size)
    model, data = workload.model(), workload.data()
    device = torch.device("cpu")
    # The variant once on one batch first: libraries imported, kernels and workspaces made,
    # so the growth measured is what scanning more data costs, not start-up.
    variant_runner(variant)(model, data[:batch_size], batch_size, device)
    gc.collect()
    before = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:  # reset VmHWM to the current RSS
        handle.write("5")
    variant_runner(variant)(model, data, batch_size, device)
    peak = _status_kb("VmHWM")
    print(json.dumps({"rss_before_mb": before / 1024, "peak_mb": peak / 1024, "growth_mb": (peak - before) / 1024}))


def measure_rss(workload: Any, variant: str, samples: int) -> dict[str, Any]:
    """Peak RSS growth of one variant, in a subprocess of its own."""
    command = [sys.executable, str(Path(__file__).resolve()), "--rss-child", workload.name, variant, str(samples),
               str(workload.batch_size)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- reporting -------------------------------------------------------------------------------------

def markdown(report: dict[str, Any]) -> str:
    """The short table for RESULTS.md."""
    m = report["machine"]
    lines = [f"Command: `{report['command']}`  ",
             f"Machine: {m.get('model_name', '?')}, {m.get('cpus', m.get('cpu_count'))} CPUs "
             f"({m.get('cores_per_socket', '?')} cores/socket), {m.get('memory_gb', '?')} GB, "
             f"torch {m['torch']}, Python {m['python']}; GPU: {m['cuda'] or 'none available'}  ",
             f"Date: {report['date']}; {report['repeats']} timed repeats per variant after a warm-up, "
             "variants interleaved, ratio = variant / bare within each repeat, median (min-max).", "",
             "| workload | threads | variant | median s | ratio to bare | CPU-time ratio | samples/s | "
             "first call s | reduction | time in reduction | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    gpu = any(row.get("gpu_peak_growth_mb") is not None for row in report["timings"])
    if gpu:
        lines[-2] += " GPU peak growth MB |"
        lines[-1] += "---|"
    for row in report["timings"]:
        ratio = (f"{row['median_ratio']:.3f} ({row['min_ratio']:.2f}-{row['max_ratio']:.2f})"
                 if row["median_ratio"] is not None else "-")
        cpu_ratio = f"{row['median_cpu_ratio']:.3f}" if row["median_cpu_ratio"] is not None else "-"
        env = row.get("environment") or {}
        reduction = env.get("reduction", "") if row["variant"].startswith("scan") else ""
        lines.append(f"| {row['workload']} ({row['samples']} x batch {row['batch_size']}) | {row['threads']} | "
                     f"{row['variant']} | {row['median_seconds']:.2f} | {ratio} | {cpu_ratio} | "
                     f"{row['samples_per_second']:.0f} | {row['cold_seconds']:.2f} | {reduction} | "
                     f"{format(row['reduction_share'], '.1%') if row.get('reduction_share') is not None else ''} | "
                     f"{row['load_average'][0]:.1f}-{row['load_average'][1]:.1f} |"
                     + (f" {row['gpu_peak_growth_mb']:.0f} |" if gpu else ""))
    peers = [variant for variant in PEER_INFO if any(row["variant"] == variant for row in report["timings"])]
    if peers:
        lines += ["", "What each variant can tell the user:", ""]
        lines += [f"* `{variant}`: {PEER_INFO[variant]}" for variant in peers]
    if report.get("rss"):
        lines += ["", "Peak RSS growth over model + data loaded (MB; one subprocess per variant, 1 thread, "
                  "`VmHWM` after `/proc/self/clear_refs` reset):", "",
                  "| workload | samples | " + " | ".join(report["rss_variants"]) + " |",
                  "|---|---|" + "---|" * len(report["rss_variants"])]
        for entry in report["rss"]:
            cells = [f"{entry[v]['growth_mb']:.0f}" if "growth_mb" in entry[v] else entry[v].get("error", "?")
                     for v in report["rss_variants"]]
            lines.append(f"| {entry['workload']} | {entry['samples']} | " + " | ".join(cells) + " |")
    load = [row["load_average"] for row in report["timings"]]
    if load:
        lines += ["", f"1-minute load average during the runs: {min(min(pair) for pair in load):.1f} to "
                  f"{max(max(pair) for pair in load):.1f} ({os.cpu_count()} CPUs; other work on the machine adds noise)."]
    for note in report.get("notes", []):
        lines.append(f"\n{note}")
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, tag: str, text: str) -> None:
    """Replace the ``<!-- results:tag -->`` section of RESULTS.md (append it if missing)."""
    begin, end = f"<!-- results:{tag} -->", f"<!-- /results:{tag} -->"
    section = f"{begin}\n{text}{end}\n"
    current = path.read_text() if path.exists() else "# deadrelu scan overhead\n\n"
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        current = head + section + rest.split(end, 1)[1].lstrip("\n")
    else:
        current = current.rstrip("\n") + "\n\n" + section
    path.write_text(current)


# -- main ------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.rss_child:
        name, variant, samples, batch = args.rss_child
        rss_child(name, variant, int(samples), int(batch))
        return 0
    if not args.keep_inductor_cache:
        cache_dir = _fresh_inductor_cache()
    import torch
    from workloads import WORKLOADS

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda asked for, but torch sees no CUDA device here", file=sys.stderr)
        return 2
    if args.issue23:
        args.variants, args.no_rss = args.variants if "--variants" in (argv or sys.argv) else "bare,scan,max-hook", True
        args.repeats = args.repeats or 3
        args.workloads = args.workloads or ",".join(name for name in ISSUE23 if name in WORKLOADS)
    tag = args.tag or ("issue23" if args.issue23 else "quick" if args.quick else "long" if args.long else device.type)
    names = args.workloads.split(",") if args.workloads else (["cnn"] if args.long else list(ALL_WORKLOADS))
    variants = [v for v in args.variants.split(",") if v]
    if "bare" not in variants:
        variants.insert(0, "bare")
    threads = [int(t) for t in args.threads.split(",")] if args.threads else ([1] if args.quick or args.long else [1, 2])
    repeats = args.repeats or (2 if args.quick else 3 if args.long else 5)
    notes = []
    if device.type == "cpu":
        notes.append("GPU: none was available on this machine, so no CUDA figures were measured; "
                     "`python benchmarks/overhead.py --device cuda` runs the CNN workload with batch 256 there.")
    if args.long:
        variants = [v for v in variants if v != "store-all"]  # it would hold ~15 GB
        notes.append("Long scan: the store-everything variant is left out (it would hold every activation, ~15 GB).")
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    workloads = []
    for name in names:
        workload = WORKLOADS[name]
        if args.quick:
            workload = workload.scaled(max(workload.batch_size * 4, workload.samples // 16))
        if args.long:
            workload = workload.scaled(workload.samples * 10)
        if device.type == "cuda" and name.startswith(("cnn", "mobile")):
            workload = workload.scaled(workload.samples * 4, 256)
        if args.issue23:
            workload = workload.scaled(ISSUE23.get(name))
        workload = workload.scaled(args.samples, args.batch_size)
        workloads.append(workload)
    timings = []
    for workload in workloads:
        counts = None
        if args.issue23:  # what the cost model (cost_fit.py) needs: sites, values, torch calls per forward
            from cost_fit import workload_counts
            torch.set_num_threads(1)
            counts = workload_counts(workload.model(), workload.data(), workload.batch_size)
        for count in threads:
            log(f"{workload.name}: {workload.samples} samples, batch {workload.batch_size}, {count} thread(s)")
            rows = time_workload(workload, device, count, variants, repeats, log)
            for row in rows:
                row["counts"] = counts
            timings += rows
    rss, rss_variants = [], [v for v in ("bare", "scan", "store-all") if v in variants]
    if not (args.quick or args.no_rss or args.long) and device.type == "cpu":
        for workload in workloads:
            if workload.name not in ("cnn", "mlp", "transformer"):
                continue
            for samples in (workload.samples // 4, workload.samples):
                entry: dict[str, Any] = {"workload": workload.name, "samples": samples}
                for variant in rss_variants:
                    log(f"  RSS {workload.name} {variant} {samples} samples")
                    entry[variant] = measure_rss(workload, variant, samples)
                rss.append(entry)
    report = {"command": ("python benchmarks/overhead.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip(),
              "date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine(), "repeats": repeats,
              "inductor_cache": "fresh (first compile is cold)" if not args.keep_inductor_cache else "default",
              "timings": timings, "rss": rss, "rss_variants": rss_variants, "notes": notes}
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / f"{tag}.json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    print(text)
    if not args.no_markdown and not args.quick:
        write_markdown(HERE / "RESULTS.md", tag, text)
    if not args.keep_inductor_cache:
        import shutil
        shutil.rmtree(cache_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
