"""The fused reduction: one read of each float32 CPU activation per batch.

Eager torch reads an activation once per statistic (a count of active observations,
sum, sum of squares, sum |h|, counts at the bounds, min, max: four to eight passes over
memory, plus a write for every count), and on a small network each pass costs about as
much as the activation itself. ``fused_kernel.c`` computes every statistic of a site in
one pass and adds it into the site's float64 accumulators in the same call, so a site
costs one read and one ctypes call per batch instead of 10-25 torch dispatches. The site's
constants (thresholds, accumulator addresses) go to the kernel as one ``CallConstants``
struct filled once per site, so a call passes six arguments, not two dozen.

Where the native code comes from: the kernel is plain C (no torch headers, no Python
API), compiled when the package is installed, as the optional extension module
``deadrelu._fused`` (``setup.py``), and loaded by Python's import system from the
package's own folder. Nothing native is loaded from a cache or temporary folder.
Where the package was installed without a working C compiler, with ``DEADRELU_FUSED=0``,
or when the module is stale (another kernel ABI) or fails a small self-test, the
reduction stays eager (``deadrelu.stats.reduce_batch``) and gives the same numbers;
``note()`` says why and the result's ``environment.fused_note`` records it.

``DEADRELU_FUSED=build`` (opt-in) compiles the kernel at first use where the package holds
none, with the system compiler (``$CC`` or ``cc``), into ``$DEADRELU_CACHE_DIR`` (default
``~/.cache/deadrelu``). That folder is created 0700 and refused unless this user owns it,
nobody else can write to it, and every folder above it is root's or this user's (and sticky
where others may write to it, like /tmp), so no other user can swap anything on the path
between the check and the load; the library is refused when it is a link, not this user's,
or writable by anyone else. No temporary-folder fallback.

Only float32 CPU tensors take this path; CUDA tensors (where a host read would sync),
float16/bfloat16 and float64 models reduce eagerly.

Threads: a call splits its rows over ``torch.get_num_threads()`` threads once it has
``min_per_thread()`` values per thread. Where torch's CPU operators run on an OpenMP runtime
(libgomp in the Linux wheels), the split runs on that runtime's own team: ``openmp_parallel()``
finds ``GOMP_parallel`` in the library already loaded in the process (``RTLD_NOLOAD``: nothing is
loaded) and hands its address to the kernel. Torch's workers spin-wait on the cores right after each
operator, so fresh POSIX threads had to compete with them and only paid past 2M values
(``MIN_PER_THREAD``); on the team 32K values do (``MIN_PER_THREAD_TEAM``). Elsewhere, or with
``DEADRELU_OPENMP=0``, the kernel starts POSIX threads; ``threads()`` (and the result's
``environment.fused_threads``) says which.

The same module also holds the fused *activation* (``deadrelu_fused_activation`` in
``fused_kernel.c``, ``activation()``): a ReLU-family module's output computed together with its statistics in
one pass, which a scan runs in place of the module's own forward
(``deadrelu.capturing.fused_forward``). A module built before it existed has no such entry
point: the scan then keeps the hooks.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import importlib.util
import os
import shutil
import stat
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from . import _kernel_flags

#: The kernel's C source, shipped next to this module.
SOURCE = Path(__file__).with_name("fused_kernel.c")
#: The argument version this module calls (``DEADRELU_FUSED_ABI`` in ``fused_kernel.c``).
ABI = 3
#: Flags of the opt-in run-time build: the install-time flags (``_kernel_flags``) plus a
#: shared library's.
FLAGS = (*_kernel_flags.COMPILE_ARGS, "-fPIC", "-shared")
#: Values per extra thread: below this a second thread costs more than it saves. Right
#: after each op torch's own OpenMP workers spin-wait on the cores, so a thread started
#: here first competes with them: at 2^18 the kernel took 0.22 s of a 2-thread mobile scan
#: where one thread took 0.15 s (benchmarks/RESULTS.md).
MIN_PER_THREAD = 1 << 21
#: Values per extra thread when the split runs on torch's own OpenMP team (``use_team``): its
#: workers are awake already, so a much smaller slice pays.
MIN_PER_THREAD_TEAM = 1 << 15
_P, _I64, _F32, _I32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
#: ``deadrelu_fused_update_call``'s signature: constants, x, active source, its mode, outer, inner, threads.
PROTOTYPE = ctypes.CFUNCTYPE(ctypes.c_int, _P, _P, _P, _I32, _I64, _I64, _I32)
#: The argument version of ``deadrelu_fused_activation_call`` (``DEADRELU_ACTIVATION_ABI``).
ACTIVATION_ABI = 2
#: ``deadrelu_fused_activation_call``'s signature: constants, x, out, outer, inner, threads.
ACTIVATION_PROTOTYPE = ctypes.CFUNCTYPE(ctypes.c_int, _P, _P, _P, _I64, _I64, _I32)
#: ``deadrelu_fused_use_team``'s signature: GOMP_parallel's address (None: POSIX threads).
USE_TEAM_PROTOTYPE = ctypes.CFUNCTYPE(None, _P)


class CallConstants(ctypes.Structure):
    """A site's constants for the kernel (``deadrelu_call_t`` in ``fused_kernel.c``), filled once
    per site and plan; the kernel only reads it, during the call.

    ``act``, ``low``, ``high``, ``slopes``, ``slope_per_unit``, ``from_input``: the fused
    activation's (clamp 0 / leaky 1, its bounds, the negative slopes' address); ``units``;
    ``threshold``, ``floor_at``, ``ceiling_at`` and the ``want_*`` flags: the plan's; ``rows``:
    each sum's accumulator row (-1: not kept); ``acc_*``: the accumulators' addresses.
    """

    _fields_ = [("act", ctypes.c_int32), ("slope_per_unit", ctypes.c_int32), ("from_input", ctypes.c_int32),
                ("want_abs", ctypes.c_int32), ("want_floor", ctypes.c_int32), ("want_ceiling", ctypes.c_int32),
                ("low", ctypes.c_float), ("high", ctypes.c_float), ("threshold", ctypes.c_float),
                ("floor_at", ctypes.c_float), ("ceiling_at", ctypes.c_float), ("slopes", ctypes.c_void_p),
                ("units", ctypes.c_int64), ("min_per_thread", ctypes.c_int64), ("rows", ctypes.c_void_p),
                ("acc_sums", ctypes.c_void_p), ("acc_observations", ctypes.c_void_p),
                ("acc_minimum", ctypes.c_void_p), ("acc_maximum", ctypes.c_void_p)]


_OFF = ("0", "off", "false", "no")

_lock = threading.Lock()
_library: Any = None
_activation: Any = None
_origin: str | None = None
_note: str | None = None
_tried = False
_team: str | None = None  # the OpenMP runtime whose team splits the kernel's calls, once joined
_handles: list[Any] = []  # libraries loaded by the run-time build (never unloaded)


class KernelUnavailable(Exception):
    """Why the fused kernel cannot be used (one line; the scan then reduces eagerly)."""


def cache_dir() -> Path:
    """Where ``DEADRELU_FUSED=build`` keeps its build (``$DEADRELU_CACHE_DIR``, else the user cache)."""
    explicit = os.environ.get("DEADRELU_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "deadrelu"


def _packaged() -> tuple[Any, Any, Any]:
    """The kernel of the package's extension module ``deadrelu._fused``, its fused activation
    (None when the module predates it or was built for another version) and its
    ``deadrelu_fused_use_team`` (None when the module predates it)."""
    name = f"{__package__}._fused"
    if importlib.util.find_spec(name) is None:
        raise KernelUnavailable(f"{name} is not built (no C compiler when deadrelu was installed?): reinstall "
                                "where `cc` works (pip install -e . in a checkout) or set DEADRELU_FUSED=build")
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise KernelUnavailable(f"{name} does not import: {exc}") from exc
    where = getattr(module, "__file__", name)
    abi, address = getattr(module, "abi", None), getattr(module, "update", None)
    if abi != ABI:
        raise KernelUnavailable(f"{where} was built for kernel ABI {abi}, this deadrelu calls ABI {ABI}: "
                                "reinstall deadrelu (pip install .; pip install -e . in a checkout)")
    if not isinstance(address, int) or address == 0:
        raise KernelUnavailable(f"{where} holds no kernel address")
    fused_activation = getattr(module, "activation", None)
    usable = isinstance(fused_activation, int) and fused_activation and getattr(module, "activation_abi", None) == \
        ACTIVATION_ABI
    use_team = getattr(module, "use_team", None)
    return (PROTOTYPE(address), ACTIVATION_PROTOTYPE(fused_activation) if usable else None,
            USE_TEAM_PROTOTYPE(use_team) if isinstance(use_team, int) and use_team else None)


def _check_owned(info: os.stat_result, path: Path | str, what: str) -> None:
    """Refuse ``path`` unless this user owns it and neither group nor others may write it."""
    if info.st_uid != os.geteuid():
        raise KernelUnavailable(f"refusing {what} {path}: owned by uid {info.st_uid}, not by this user "
                                f"(uid {os.geteuid()})")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise KernelUnavailable(f"refusing {what} {path}: group or others may write to it "
                                f"(mode {stat.S_IMODE(info.st_mode):o}; chmod 700 it)")


def _private_folder(path: Path) -> Path:
    """``path`` (created 0700 when missing) with links resolved, after checking that nobody but
    this user (and root) can change what it holds: the folder is this user's and writable by
    nobody else, and every folder above it is root's or this user's and, where others may write
    to it, sticky (as /tmp is: others cannot rename or replace what this user made there)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    folder = Path(os.path.realpath(path))
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode):
        raise KernelUnavailable(f"refusing cache folder {path}: not a folder")
    _check_owned(info, path, "cache folder")
    for parent in folder.parents:
        info = os.lstat(parent)
        if info.st_uid not in (0, os.geteuid()):
            raise KernelUnavailable(f"refusing cache folder {path}: {parent} above it is owned by uid {info.st_uid}")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
            raise KernelUnavailable(f"refusing cache folder {path}: group or others may write to {parent} above it "
                                    f"(mode {stat.S_IMODE(info.st_mode):o})")
    return folder


def _compile(compiler: str, target: Path) -> None:
    """Compile the kernel in a private temporary workspace, then write it to ``target`` (in the
    checked folder) 0700 and atomically (concurrent builders each write their own file)."""
    with tempfile.TemporaryDirectory(prefix="deadrelu-build-") as workspace:
        output = os.path.join(workspace, "fused.so")
        done = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", output,
                               *(f"-l{library}" for library in _kernel_flags.LIBRARIES)],
                              capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            detail = next((line for line in lines if "error" in line), lines[0] if lines else f"exit {done.returncode}")
            raise KernelUnavailable(f"DEADRELU_FUSED=build: {compiler} failed: {detail[:200]}")
        data = Path(output).read_bytes()
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o700)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, target)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise KernelUnavailable(f"DEADRELU_FUSED=build: could not write {target} ({exc})") from None


def _built() -> tuple[Any, Any, Any, str]:
    """``DEADRELU_FUSED=build``: the kernel compiled at run time into the checked cache folder."""
    compiler = shutil.which(os.environ.get("CC") or "cc") or shutil.which("gcc")
    if compiler is None:
        raise KernelUnavailable("DEADRELU_FUSED=build: no C compiler (cc) found")
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), " ".join(FLAGS).encode(), compiler.encode()]))
    name = f"fused-{key.hexdigest()[:16]}.so"
    path = _private_folder(cache_dir()) / name
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        _compile(compiler, path)
        info = os.lstat(path)
    shown = cache_dir() / name
    if stat.S_ISLNK(info.st_mode):
        raise KernelUnavailable(f"refusing library {shown}: a symbolic link")
    if not stat.S_ISREG(info.st_mode):
        raise KernelUnavailable(f"refusing library {shown}: not a regular file")
    _check_owned(info, shown, "library")
    library = ctypes.CDLL(str(path))  # nobody else can have changed it since the check
    try:
        abi = ctypes.CFUNCTYPE(ctypes.c_int)(("deadrelu_fused_abi", library))()
        function = PROTOTYPE(("deadrelu_fused_update_call", library))
    except AttributeError as exc:
        raise KernelUnavailable(f"{shown} lacks the kernel's symbols ({exc})") from None
    if abi != ABI:
        raise KernelUnavailable(f"{shown} was built for kernel ABI {abi}, this deadrelu calls ABI {ABI}")
    try:
        activation_abi = ctypes.CFUNCTYPE(ctypes.c_int)(("deadrelu_fused_activation_abi", library))()
        fused_activation = ACTIVATION_PROTOTYPE(("deadrelu_fused_activation_call", library))
    except AttributeError:
        activation_abi, fused_activation = None, None
    try:
        use_team = USE_TEAM_PROTOTYPE(("deadrelu_fused_use_team", library))
    except AttributeError:
        use_team = None
    _handles.append(library)
    return (function, fused_activation if activation_abi == ACTIVATION_ABI else None, use_team,
            f"run-time build {shown} (DEADRELU_FUSED=build)")


def _constants(units: int, rows: Any, sums: Any, observations: Any, minimum: Any, maximum: Any,
               **fields: Any) -> CallConstants:
    """A ``CallConstants`` for the self-tests (ctypes arrays for the accumulators)."""
    address = ctypes.addressof
    return CallConstants(units=units, min_per_thread=0, rows=address(rows), acc_sums=address(sums),
                         acc_observations=address(observations), acc_minimum=address(minimum),
                         acc_maximum=address(maximum), **fields)


def _self_test(function: Any) -> None:
    """One call on three known observations of three units (the third holds a NaN and must be
    left out); raises KernelUnavailable when any statistic differs."""
    inf = float("inf")
    x = (ctypes.c_float * 9)(1.0, -2.0, 0.0, 0.5, 3.0, float("nan"), -1.0, 0.0, 1.0)  # (3 outer, 3 units)
    rows = (ctypes.c_int64 * 6)(0, 1, 2, 3, 4, 5)
    sums, observations = (ctypes.c_double * 18)(), (ctypes.c_double * 3)()
    minimum, maximum = (ctypes.c_double * 3)(inf, inf, inf), (ctypes.c_double * 3)(-inf, -inf, -inf)
    constants = _constants(3, rows, sums, observations, minimum, maximum, threshold=0.0, floor_at=0.0,
                           ceiling_at=2.0, want_abs=1, want_floor=1, want_ceiling=1)
    status = function(ctypes.addressof(constants), x, None, 0, 3, 1, 1)
    # per field (active, total, total_sq, total_abs, at_floor, at_ceiling) per unit
    want = [2, 1, 0, 0.5, 1, 0, 2.25, 13, 0, 2.5, 5, 0, 1, 2, 0, 0, 1, 0]
    got = (status, list(sums), list(observations), list(minimum), list(maximum))
    if got != (0, want, [3, 3, 0], [-1, -2, inf], [1, 3, -inf]):
        raise KernelUnavailable(f"the kernel failed its self-test (status, sums, counts, min, max = {got})")


def _activation_self_test(function: Any) -> None:
    """One in-place LeakyReLU (slope 0.5, "active" read from the pre-activation) over three
    observations of three units, the third unit's holding a NaN; raises KernelUnavailable
    when an output or a statistic differs."""
    inf = float("inf")
    x = (ctypes.c_float * 9)(1.0, -2.0, 0.0, 0.5, 3.0, float("nan"), -1.0, 0.0, 1.0)  # (3 outer, 3 units)
    slope = (ctypes.c_float * 1)(0.5)
    rows = (ctypes.c_int64 * 6)(0, 1, 2, 3, -1, -1)
    sums, observations = (ctypes.c_double * 12)(), (ctypes.c_double * 3)()
    minimum, maximum = (ctypes.c_double * 3)(inf, inf, inf), (ctypes.c_double * 3)(-inf, -inf, -inf)
    constants = _constants(3, rows, sums, observations, minimum, maximum, act=1, slopes=ctypes.addressof(slope),
                           from_input=1, threshold=0.0, want_abs=1)
    status = function(ctypes.addressof(constants), x, x, 3, 1, 1)
    outputs = [value for index, value in enumerate(x) if index != 5]
    want = [2, 1, 0, 1, 2, 0, 1.5, 10, 0, 2, 4, 0]  # active, total, total_sq, total_abs: one row of 3 units each
    got = (status, outputs, list(sums), list(observations), list(minimum), list(maximum))
    if got != (0, [1, -1, 0, 0.5, 3, -0.5, 0, 1], want, [3, 3, 0], [-0.5, -1, inf], [1, 3, -inf]):
        raise KernelUnavailable(f"the fused activation failed its self-test (status, outputs, sums, counts, "
                                f"min, max = {got})")


def openmp_parallel() -> tuple[int, str] | None:
    """The address of ``GOMP_parallel`` in the OpenMP runtime torch runs its CPU operators on,
    and that runtime's path; None when torch's parallel backend is not OpenMP, the runtime is
    not one loaded library this process can name (Linux's ``/proc/self/maps``), or
    ``DEADRELU_OPENMP=0``. Nothing new is loaded (``RTLD_NOLOAD``)."""
    if os.environ.get("DEADRELU_OPENMP", "1").strip().lower() in _OFF or not hasattr(os, "RTLD_NOLOAD"):
        return None
    import torch

    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {line.split(None, 5)[5].strip() for line in maps if len(line.split(None, 5)) == 6}
    except OSError:
        return None
    runtimes = sorted(path for path in paths if os.path.basename(path).startswith(("libgomp", "libiomp")))
    own = os.path.realpath(os.path.join(os.path.dirname(torch.__file__), "lib"))
    mine = [path for path in runtimes if os.path.realpath(path).startswith(own + os.sep)]
    candidates = mine or runtimes
    if len(candidates) != 1:
        return None  # none, or several: which one torch's operators use is not known
    try:
        library = ctypes.CDLL(candidates[0], mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        address = ctypes.cast(library.GOMP_parallel, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None
    return (address, candidates[0]) if address else None


def _join_team(use_team: Any) -> None:
    """Split the kernel's calls over torch's OpenMP team from now on, where there is one."""
    global _team
    found = openmp_parallel() if use_team is not None else None
    if found is not None:
        use_team(found[0])
        _team = found[1]
    elif use_team is not None:
        use_team(None)


def min_per_thread() -> int:
    """Values per extra thread of a kernel call: smaller on torch's awake OpenMP team."""
    return MIN_PER_THREAD_TEAM if _team is not None else MIN_PER_THREAD


def _load() -> tuple[Any, Any, str]:
    """The kernel, the fused activation (or None) and where they came from; raises when the
    kernel cannot be had (a fused activation that fails its self-test is only left out)."""
    mode = os.environ.get("DEADRELU_FUSED", "1").strip().lower()
    if mode in _OFF:
        raise KernelUnavailable("DEADRELU_FUSED=0")
    try:
        (function, fused_activation, use_team), origin = _packaged(), f"{__package__}._fused (built at install)"
    except KernelUnavailable:
        if mode != "build":
            raise
        function, fused_activation, use_team, origin = _built()
    _self_test(function)
    if fused_activation is not None:
        try:
            _activation_self_test(fused_activation)
        except KernelUnavailable:
            fused_activation = None
    _join_team(use_team)
    return function, fused_activation, origin


def kernel() -> Any:
    """The fused update function, or None when it is not available (see ``note()``)."""
    global _library, _activation, _origin, _note, _tried
    if _tried:
        return _library
    with _lock:
        if not _tried:
            try:
                _library, _activation, _origin = _load()
            except Exception as exc:  # whatever stops the kernel leaves the eager reduction, said in the note
                reason = str(exc) if isinstance(exc, KernelUnavailable) else f"{type(exc).__name__}: {exc}"
                _note = f"fused kernel unavailable ({reason}); the reduction ran eagerly"
            _tried = True
    return _library


def activation() -> Any:
    """The fused activation entry point (``deadrelu_fused_activation``), or None when the
    kernel is unavailable or its module has no usable one."""
    return _activation if kernel() is not None else None


def note() -> str | None:
    """Why the fused kernel is not used, once that is known (None while it is, or untried)."""
    return _note


def origin() -> str | None:
    """Where the loaded kernel came from (None while none is loaded)."""
    return _origin


def threads() -> str | None:
    """What splits a kernel call over threads: torch's OpenMP team (naming the runtime) or POSIX
    threads; None while no kernel is loaded."""
    if _library is None:
        return None
    return f"torch's OpenMP team ({os.path.basename(_team)})" if _team is not None else "POSIX threads"


def reset() -> None:
    """Forget the loaded kernel (tests use it to try another environment)."""
    global _library, _activation, _origin, _note, _tried, _team
    with _lock:
        _library, _activation, _origin, _note, _tried, _team = None, None, None, None, False, None


__all__ = ["kernel", "activation", "note", "origin", "reset", "cache_dir", "KernelUnavailable", "SOURCE", "FLAGS", "ABI",
           "MIN_PER_THREAD", "MIN_PER_THREAD_TEAM", "ACTIVATION_ABI", "CallConstants", "min_per_thread",
           "openmp_parallel", "threads"]
