"""What the install-time build's portable flags cost: ``python benchmarks/kernel_flags.py``.

The fused kernel is compiled when the package is installed, and the result may be a wheel
run on another CPU, so it cannot use ``-march=native``. It is compiled with portable flags
and, on x86-64 with GCC and glibc, its column loops three times (SSE2, AVX2, AVX-512F;
``target_clones`` in ``deadrelu/fused_kernel.c``), the widest the CPU has picked at load
time. This compares, interleaved in one process, at one thread:

* ``portable``: the install-time flags with the clones turned off (``-DDEADRELU_NO_CLONES``):
  what a compiler without ``target_clones`` (Clang, non-glibc) gives on x86-64;
* ``shipped``: the install-time flags as shipped (with the clones);
* ``native``: the flags the run-time build used before, ``-march=native``, no clones;
* ``installed``: the package's own ``deadrelu._fused`` (built by setup.py: Python's CFLAGS
  plus the same flags), when it is importable.

Part 1 times the kernel alone (ns per value, min and median of the trials) on activation
shapes of the benchmark workloads; part 2 times whole ``deadrelu.scan`` calls on three
workloads with each library swapped in (median seconds of the repeats).

    python benchmarks/kernel_flags.py [--repeats 5] [--samples 512]
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import os
import platform
import shutil
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

import torch  # noqa: E402

import deadrelu  # noqa: E402
from deadrelu import _kernel_flags, fused  # noqa: E402
from workloads import WORKLOADS  # noqa: E402

VARIANTS = {"portable": ("-DDEADRELU_NO_CLONES",), "shipped": (), "native": ("-march=native", "-DDEADRELU_NO_CLONES")}
#: (outer, units, inner) of activations the workloads produce (batch 64 / 256 / 32x64 tokens).
SHAPES = {"cnn stem 64x64x32x32": (64, 64, 1024), "cnn stage4 64x512x4x4": (64, 512, 16),
          "mobile 64x96x16x16": (64, 96, 256), "mlp 256x1024": (256, 1024, 1),
          "transformer 2048x1024": (2048, 1024, 1)}


def build(folder: Path) -> dict[str, Any]:
    """Each variant compiled into ``folder`` and loaded; the installed module too, if any."""
    compiler = shutil.which(os.environ.get("CC") or "cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("no C compiler")
    functions: dict[str, Any] = {}
    for name, extra in VARIANTS.items():
        target = folder / f"{name}.so"
        subprocess.run([compiler, *fused.FLAGS, *extra, str(fused.SOURCE), "-o", str(target), "-lm"], check=True)
        functions[name] = fused.PROTOTYPE(("deadrelu_fused_update_call", ctypes.CDLL(str(target))))
    if importlib.util.find_spec("deadrelu._fused") is not None:
        from deadrelu import _fused
        functions["installed"] = fused.PROTOTYPE(_fused.update)
    return functions


def kernel_times(functions: dict[str, Any], trials: int) -> dict[str, dict[str, list[float]]]:
    """ns per value of one kernel call, per shape and variant, ``trials`` interleaved rounds."""
    generator = torch.Generator().manual_seed(0)
    rows = (ctypes.c_int64 * 6)(0, 1, 2, 3, 4, 5)
    times: dict[str, dict[str, list[float]]] = {}
    for shape, (outer, units, inner) in SHAPES.items():
        x = torch.randn(outer, units, inner, generator=generator)
        sums = torch.zeros(6, units, dtype=torch.float64)
        observations = torch.zeros(units, dtype=torch.float64)
        minimum = torch.full((units,), float("inf"), dtype=torch.float64)
        maximum = -minimum
        values = x.numel()
        calls = max(5, int(1e8 / values))
        constants = fused.CallConstants(threshold=0.0, floor_at=0.0, ceiling_at=6.0, want_abs=1, want_floor=1,
                                        want_ceiling=1, units=units, min_per_thread=fused.MIN_PER_THREAD,
                                        rows=ctypes.addressof(rows), acc_sums=sums.data_ptr(),
                                        acc_observations=observations.data_ptr(), acc_minimum=minimum.data_ptr(),
                                        acc_maximum=maximum.data_ptr())
        arguments = (ctypes.addressof(constants), x.data_ptr(), x.data_ptr(), 0, outer, inner, 1)
        for _ in range(trials):
            for name, function in functions.items():
                start = time.perf_counter()
                for _ in range(calls):
                    function(*arguments)
                times.setdefault(shape, {}).setdefault(name, []).append(
                    (time.perf_counter() - start) / calls / values * 1e9)
    return times


def scan_times(functions: dict[str, Any], repeats: int, samples: int) -> dict[str, dict[str, list[float]]]:
    """Seconds of one ``deadrelu.scan`` per workload and variant (the variant's kernel swapped in)."""
    times: dict[str, dict[str, list[float]]] = {}
    for workload in ("cnn", "mobile", "mlp"):
        spec = WORKLOADS[workload]
        size = samples if spec.batch_size < 128 else samples * 8
        model, data = spec.model(), spec.data(size)
        for repeat in range(repeats + 1):  # the first round warms up and is not kept
            for name, function in functions.items():
                fused.reset()
                fused._library, fused._origin, fused._tried = function, name, True
                start = time.perf_counter()
                result = deadrelu.scan(model, data, batch_size=spec.batch_size, compile="off")
                elapsed = time.perf_counter() - start
                assert result.environment["reduction"] == "fused"
                if repeat:
                    times.setdefault(workload, {}).setdefault(name, []).append(elapsed)
    fused.reset()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=512, help="CNN images per scan (MLP: 8x as many)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        functions = build(Path(folder))
        load = os.getloadavg()[0]
        kernels = kernel_times(functions, args.repeats)
        scans = scan_times(functions, args.repeats, args.samples)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread, flags "
          f"{' '.join(_kernel_flags.COMPILE_ARGS)}; load average {load:.1f} before, {os.getloadavg()[0]:.1f} after\n")
    names = list(functions)
    print("| activation | " + " | ".join(f"{name} ns/value min (median)" for name in names) + " |")
    print("|---|" + "---|" * len(names))
    for shape, row in kernels.items():
        print(f"| {shape} | " + " | ".join(f"{min(row[n]):.3f} ({statistics.median(row[n]):.3f})" for n in names) + " |")
    print("\n| scan (1 thread) | " + " | ".join(f"{name} s" for name in names) + " |")
    print("|---|" + "---|" * len(names))
    for workload, row in scans.items():
        print(f"| {workload} | " + " | ".join(f"{statistics.median(row[n]):.3f}" for n in names) + " |")


if __name__ == "__main__":
    main()
