"""Native code comes from the installed package, never from a folder another user can write.

The fused kernel used to be compiled at run time into ``~/.cache/deadrelu`` (or
``$DEADRELU_CACHE_DIR``, or a predictable ``$TMPDIR/deadrelu-fused-<uid>-<key>.so``) and
loaded with ctypes without any check, so a planted library ran. Each planted library here
is real: its constructor writes a marker file when it is loaded, and the test asserts the
marker never appears. The kernel now comes from the package's extension module
``deadrelu._fused`` (built by setup.py at install time); the opt-in run-time build
(``DEADRELU_FUSED=build``) refuses a folder or file that is not this user's alone.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import deadrelu
import deadrelu.fused as fused_module

ROOT = Path(__file__).resolve().parents[1]
COMPILER = shutil.which(os.environ.get("CC") or "cc") or shutil.which("gcc")
needs_cc = pytest.mark.skipif(COMPILER is None, reason="no C compiler to build the test libraries")
#: These tests check how the kernel is built and loaded, not its code (the installed module,
#: built with all three vector widths, is what tests/test_fused.py checks number by number):
#: one width compiles in a quarter of the time.
FAST_BUILD = ("-DDEADRELU_NO_CLONES",)
#: The flags the run-time build used before this fix: with the source, the compiler path and
#: the CPU they gave the file name, which anyone on the machine can compute.
OLD_FLAGS = ("-O3", "-march=native", "-std=c99", "-fPIC", "-shared", "-pthread", "-fno-math-errno",
             "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros")


def old_name() -> str:
    """The name the old loader looked for (``fused-<key>.so``), computed as an attacker would."""
    try:
        with open("/proc/cpuinfo") as handle:
            lines = [line for line in handle if line.startswith(("model name", "flags", "Features"))]
        cpu = "".join(sorted(set(lines)))
    except OSError:
        cpu = platform.processor()
    key = hashlib.sha256(b"\0".join([fused_module.SOURCE.read_bytes(), " ".join(OLD_FLAGS).encode(),
                                     str(COMPILER).encode(), platform.machine().encode(), cpu.encode()]))
    return f"fused-{key.hexdigest()[:16]}.so"


def new_name() -> str:
    """The name ``DEADRELU_FUSED=build`` uses."""
    key = hashlib.sha256(b"\0".join([fused_module.SOURCE.read_bytes(), " ".join(fused_module.FLAGS).encode(),
                                     str(COMPILER).encode()]))
    return f"fused-{key.hexdigest()[:16]}.so"


def plant(path: Path, marker: Path, symbols: bool = True, mode: int = 0o700) -> Path:
    """A shared library at ``path`` that writes ``marker`` when loaded; with ``symbols``, it
    also exports the kernel's two functions (so a loader that only checks names takes it)."""
    source = path.with_suffix(".c")
    exported = (f"int deadrelu_fused_abi(void) {{ return {fused_module.ABI}; }}\n"
                "int deadrelu_fused_update_call(void) { return 0; }\n") if symbols else "int unrelated(void) { return 0; }\n"
    source.write_text('#include <stdio.h>\n'
                      '__attribute__((constructor)) static void planted(void) {\n'
                      f'    FILE *f = fopen("{marker}", "w");\n'
                      '    if (f) { fputs("planted code ran", f); fclose(f); }\n'
                      '}\n' + exported)
    subprocess.run([str(COMPILER), "-shared", "-fPIC", str(source), "-o", str(path)], check=True)
    source.unlink()
    path.chmod(mode)
    return path


def small_scan() -> deadrelu.ScanResult:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
    return deadrelu.scan(model, torch.randn(20, 4, generator=torch.Generator().manual_seed(0)), batch_size=5)


@pytest.fixture
def fresh():
    """A kernel looked up anew in this test's environment, and forgotten after it."""
    fused_module.reset()
    yield
    fused_module.reset()


@pytest.fixture
def build_mode(monkeypatch, tmp_path, fresh):
    """``DEADRELU_FUSED=build`` with no packaged module: the cache folder is what is loaded from."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEADRELU_CACHE_DIR", str(cache))
    monkeypatch.setenv("DEADRELU_FUSED", "build")
    monkeypatch.setitem(sys.modules, "deadrelu._fused", None)
    monkeypatch.setattr(fused_module, "FLAGS", (*fused_module.FLAGS, *FAST_BUILD))
    return cache


@needs_cc
def test_planted_library_in_the_cache_or_temp_folder_is_never_loaded(monkeypatch, tmp_path, fresh):
    """Default settings: libraries planted under the old names (cache folder and the temp
    fallback) and the run-time build's name are never loaded; the scan still runs."""
    cache, temp = tmp_path / "cache", tmp_path / "tmp"
    cache.mkdir()
    temp.mkdir()
    monkeypatch.setenv("DEADRELU_CACHE_DIR", str(cache))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    marker = tmp_path / "marker"
    plant(cache / old_name(), marker)
    plant(cache / new_name(), marker)
    plant(temp / f"deadrelu-fused-{os.getuid()}-{old_name()[len('fused-'):]}", marker)
    try:
        result = small_scan()
    finally:
        assert not marker.exists(), "a planted library was loaded"
    if fused_module.kernel() is not None:
        assert result.environment["reduction"] == "fused"
        assert result.environment["fused_kernel"] == "deadrelu._fused (built at install)"
    else:
        assert result.environment["reduction"] == "eager"
        assert "deadrelu._fused is not built" in result.environment["fused_note"]


@needs_cc
def test_library_without_the_kernel_symbols_means_eager_and_says_why(build_mode, tmp_path):
    """A library lacking the symbols is not a crash in the forward pass ("check the data's
    shape"), but the eager reduction and a note naming the file."""
    build_mode.mkdir(mode=0o700)
    plant(build_mode / new_name(), tmp_path / "marker", symbols=False)
    plant(build_mode / old_name(), tmp_path / "marker", symbols=False)
    result = small_scan()
    assert result.environment["reduction"] == "eager"
    note = result.environment["fused_note"]
    assert note.startswith(f"fused kernel unavailable ({build_mode / new_name()} lacks the kernel's symbols")
    assert "deadrelu_fused_abi" in note and note.endswith("the reduction ran eagerly")


@needs_cc
def test_library_that_fails_the_self_test_means_eager(build_mode, tmp_path):
    """Right names, wrong numbers (this update adds nothing): refused by the self-test."""
    build_mode.mkdir(mode=0o700)
    plant(build_mode / new_name(), tmp_path / "marker")
    assert fused_module.kernel() is None
    assert "the kernel failed its self-test" in fused_module.note()
    assert small_scan().environment["reduction"] == "eager"


def test_stale_packaged_module_means_eager_and_says_why(monkeypatch, fresh):
    """A ``deadrelu._fused`` built for another kernel ABI (a stale in-place build) is refused."""
    stale = types.ModuleType("deadrelu._fused")
    stale.__spec__ = importlib.machinery.ModuleSpec("deadrelu._fused", None)
    stale.__file__ = "/somewhere/deadrelu/_fused.abi3.so"
    stale.abi, stale.update = 0, 12345
    monkeypatch.setitem(sys.modules, "deadrelu._fused", stale)
    result = small_scan()
    assert result.environment["reduction"] == "eager"
    assert result.environment["fused_note"] == (
        "fused kernel unavailable (/somewhere/deadrelu/_fused.abi3.so was built for kernel ABI 0, this deadrelu "
        f"calls ABI {fused_module.ABI}: reinstall deadrelu (pip install .; pip install -e . in a checkout)); the reduction "
        "ran eagerly")


@needs_cc
@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777])
def test_cache_folder_others_can_write_is_refused(build_mode, tmp_path, mode):
    build_mode.mkdir()
    build_mode.chmod(mode)
    plant(build_mode / new_name(), tmp_path / "marker")
    assert fused_module.kernel() is None
    assert fused_module.note() == (f"fused kernel unavailable (refusing cache folder {build_mode}: group or others "
                                   f"may write to it (mode {mode:o}; chmod 700 it)); the reduction ran eagerly")
    assert not (tmp_path / "marker").exists()
    assert sorted(path.name for path in build_mode.iterdir()) == [new_name()]  # nothing built there either


@needs_cc
def test_library_others_can_write_is_refused(build_mode, tmp_path):
    build_mode.mkdir(mode=0o700)
    plant(build_mode / new_name(), tmp_path / "marker", mode=0o775)
    assert fused_module.kernel() is None
    assert (f"refusing library {build_mode / new_name()}: group or others may write to it (mode 775"
            in fused_module.note())
    assert not (tmp_path / "marker").exists()


@needs_cc
def test_symlinked_library_is_refused(build_mode, tmp_path):
    build_mode.mkdir(mode=0o700)
    plant(tmp_path / "elsewhere.so", tmp_path / "marker")
    (build_mode / new_name()).symlink_to(tmp_path / "elsewhere.so")
    assert fused_module.kernel() is None
    assert f"refusing library {build_mode / new_name()}: a symbolic link" in fused_module.note()
    assert not (tmp_path / "marker").exists()


@needs_cc
@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another user needs root")
def test_folder_or_library_of_another_user_is_refused(build_mode, tmp_path):
    other = 65534  # nobody
    build_mode.mkdir(mode=0o700)
    library = plant(build_mode / new_name(), tmp_path / "marker")
    os.chown(library, other, -1)
    assert fused_module.kernel() is None
    assert f"refusing library {library}: owned by uid {other}, not by this user (uid 0)" in fused_module.note()
    os.chown(library, 0, -1)
    os.chown(build_mode, other, -1)
    fused_module.reset()
    assert fused_module.kernel() is None
    assert f"refusing cache folder {build_mode}: owned by uid {other}" in fused_module.note()
    assert not (tmp_path / "marker").exists()


@needs_cc
def test_run_time_build_under_a_permissive_umask_is_still_private(build_mode):
    """umask 002 (user-private groups) would leave a group-writable library; the build writes
    it 0700 itself, so it loads and passes its own check."""
    previous = os.umask(0o002)
    try:
        assert fused_module.kernel() is not None, fused_module.note()
    finally:
        os.umask(previous)
    assert stat.S_IMODE(build_mode.stat().st_mode) == 0o700
    assert stat.S_IMODE((build_mode / new_name()).stat().st_mode) == 0o700
    assert small_scan().environment["reduction"] == "fused"


def _build_extension(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """setup.py's build_ext into ``tmp_path`` (nothing written into the checkout)."""
    return subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"),
                           "--build-temp", str(tmp_path / "temp")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


@needs_cc
@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="setuptools not installed")
def test_setup_builds_the_kernel_module_and_the_scan_uses_it(monkeypatch, tmp_path, fresh):
    """What `pip install` runs: the module is built, imports as deadrelu._fused and the scan
    reduces with it."""
    done = _build_extension(tmp_path, {**os.environ, "CFLAGS": " ".join(FAST_BUILD)})
    assert done.returncode == 0, done.stderr
    built = list((tmp_path / "lib" / "deadrelu").glob("_fused*.so"))
    assert len(built) == 1, done.stderr
    spec = importlib.util.spec_from_file_location("deadrelu._fused", built[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.abi == fused_module.ABI
    monkeypatch.setitem(sys.modules, "deadrelu._fused", module)
    monkeypatch.delenv("DEADRELU_FUSED", raising=False)
    result = small_scan()
    assert result.environment["reduction"] == "fused"
    assert result.environment["fused_kernel"] == "deadrelu._fused (built at install)"


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="setuptools not installed")
def test_setup_without_a_compiler_succeeds_without_the_module(tmp_path):
    """No working compiler at install time: the build still succeeds, without the module."""
    env = {**os.environ, "CC": str(tmp_path / "no-such-cc"), "LDSHARED": str(tmp_path / "no-such-cc")}
    done = _build_extension(tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert list((tmp_path / "lib").rglob("_fused*")) == []
    assert 'building extension "deadrelu._fused" failed' in done.stdout + done.stderr


def test_installed_package_holds_the_kernel():
    """Where deadrelu was installed (pip install . or -e .) with a compiler, its own folder holds
    the module and the scan uses it. In CI the Makefile installs it editable, so it must be
    there; a checkout used through PYTHONPATH and never built is skipped."""
    spec = importlib.util.find_spec("deadrelu._fused")
    if spec is None:
        if os.environ.get("CI") and COMPILER is not None:
            pytest.fail("CI installs deadrelu with a C compiler present, yet deadrelu._fused was not built")
        pytest.skip("deadrelu imported from a checkout never built (pip install -e . builds the kernel)")
    assert Path(spec.origin).parent == Path(deadrelu.__file__).parent
    fused_module.reset()
    try:
        result = small_scan()
    finally:
        fused_module.reset()
    assert result.environment["reduction"] == "fused", result.environment.get("fused_note")
