"""The fused reduction: one read of each float32 CPU activation per batch.

Eager torch reads an activation once per statistic (a count of active observations,
sum, sum of squares, sum |h|, counts at the bounds, min, max: four to eight passes over
memory, plus a write for every count), and on a small network each pass costs about as
much as the activation itself. ``fused_kernel.c`` computes every statistic of a site in
one pass and adds it into the site's float64 accumulators in the same call, so a site
costs one read and one ctypes call per batch instead of 10-25 torch dispatches.

The kernel is plain C (no torch headers): it is compiled once per machine with the
system C compiler (``$CC`` or ``cc``, ~1 s) into ``$DEADRELU_CACHE_DIR`` (default
``~/.cache/deadrelu``) under a name that hashes the source, the flags and the CPU, and
loaded with ``ctypes``. Where no compiler works, or ``DEADRELU_FUSED=0`` is set, the
reduction stays eager (``deadrelu.stats.reduce_batch``) and gives the same numbers;
``note()`` says why. Only float32 CPU tensors take this path; CUDA tensors (where a
host read would sync), float16/bfloat16 and float64 models reduce eagerly.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

#: The kernel's C source, shipped next to this module.
SOURCE = Path(__file__).with_name("fused_kernel.c")
#: Compiler flags: -fassociative-math lets the compiler vectorise the sums (reordering
#: float64 additions of float32 values; counts stay exact), IEEE comparisons are kept.
FLAGS = ("-O3", "-march=native", "-std=c99", "-fPIC", "-shared", "-pthread", "-fno-math-errno",
         "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros")
#: Values per extra thread: below this a second thread costs more than it saves. Right
#: after each op torch's own OpenMP workers spin-wait on the cores, so a thread started
#: here first competes with them: at 2^18 the kernel took 0.22 s of a 2-thread mobile scan
#: where one thread took 0.15 s (benchmarks/RESULTS.md).
MIN_PER_THREAD = 1 << 21

_lock = threading.Lock()
_library: Any = None
_note: str | None = None
_tried = False


def cache_dir() -> Path:
    """Where the compiled kernel is kept (``$DEADRELU_CACHE_DIR``, else the user cache)."""
    explicit = os.environ.get("DEADRELU_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "deadrelu"


def _cpu_key() -> str:
    """What -march=native depends on: the CPU model and its feature flags."""
    try:
        with open("/proc/cpuinfo") as handle:
            lines = [line for line in handle if line.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _build(compiler: str, target: Path) -> None:
    """Compile the kernel to ``target`` atomically (concurrent builders each write a temp file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=target.stem, suffix=".so.tmp", dir=target.parent)
    os.close(handle)
    try:
        done = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", temporary, "-lm"],
                              capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            detail = next((line for line in lines if "error" in line), lines[0] if lines else f"exit {done.returncode}")
            raise OSError(f"{compiler} failed: {detail[:200]}")
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _load() -> Any:
    """The loaded library (built first if needed); raises OSError when it cannot be had."""
    if os.environ.get("DEADRELU_FUSED", "1").strip().lower() in ("0", "off", "false", "no"):
        raise OSError("DEADRELU_FUSED=0")
    compiler = shutil.which(os.environ.get("CC") or "cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler (cc) found")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(), compiler.encode(),
                                     platform.machine().encode(), _cpu_key().encode()])).hexdigest()[:16]
    target = cache_dir() / f"fused-{key}.so"
    if not target.exists():
        try:
            _build(compiler, target)
        except PermissionError:
            target = Path(tempfile.gettempdir()) / f"deadrelu-fused-{os.getuid()}-{key}.so"
            if not target.exists():
                _build(compiler, target)
    library = ctypes.CDLL(str(target))
    function = library.deadrelu_fused_update
    pointer, i64, f32, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    function.argtypes = [pointer, pointer, i32, i64, i64, i64, f32, f32, f32, i32, i32, i32, i32, i64,
                         pointer, pointer, pointer, pointer, pointer]
    function.restype = ctypes.c_int
    return function


def kernel() -> Any:
    """The fused update function, or None when it is not available (see ``note()``)."""
    global _library, _note, _tried
    if _tried:
        return _library
    with _lock:
        if not _tried:
            try:
                _library = _load()
            except (OSError, subprocess.SubprocessError) as exc:
                _note = f"fused kernel unavailable ({exc}); the reduction ran eagerly"
            _tried = True
    return _library


def note() -> str | None:
    """Why the fused kernel is not used, once that is known (None while it is, or untried)."""
    return _note


def reset() -> None:
    """Forget the loaded kernel (tests use it to try another environment)."""
    global _library, _note, _tried
    with _lock:
        _library, _note, _tried = None, None, False


__all__ = ["kernel", "note", "reset", "cache_dir", "SOURCE", "FLAGS", "MIN_PER_THREAD"]
