"""What a plain install needs: the torch version check, and no undeclared imports.

The install itself (a fresh venv, ``pip install .`` without extras, each extra on its own,
the oldest declared versions) is exercised by ``.ci/install-check``, which CI runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deadrelu.errors import DeadReluError, UnsupportedTorchError
from deadrelu.torch_support import MINIMUM_TORCH, check_torch, parse_release

ROOT = Path(__file__).resolve().parent.parent

# Pretend the installed torch is 2.1.0 (package metadata only: torch itself stays importable).
OLD_TORCH = """
import sys
from importlib import metadata
real_version = metadata.version
metadata.version = lambda name: "2.1.0" if name == "torch" else real_version(name)
from deadrelu.cli import main
sys.argv = ["deadrelu", *{args!r}]
main()
"""


@pytest.mark.parametrize(("version", "release"), [("2.13.0+cpu", (2, 13, 0)), ("2.14.0.dev20261201", (2, 14, 0)),
                                                   ("2.1", (2, 1)), ("nightly", ())])
def test_release_numbers_are_read_from_the_version_string(version: str, release: tuple[int, ...]) -> None:
    assert parse_release(version) == release


def test_an_older_torch_is_refused_with_one_line() -> None:
    with pytest.raises(UnsupportedTorchError) as caught:
        check_torch("2.4.1")
    assert isinstance(caught.value, DeadReluError)
    assert caught.value.message == f"deadrelu needs torch >= {'.'.join(map(str, MINIMUM_TORCH))}; torch 2.4.1 is installed"
    assert "pip install" in caught.value.hint


@pytest.mark.parametrize("version", ["2.13.0", "2.13.0+cpu", "2.14.1", "3.0.0a0"])
def test_supported_torch_passes(version: str) -> None:
    check_torch(version)


def test_the_declared_lower_bound_is_the_checked_one() -> None:
    import tomllib
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_spec = next(spec for spec in dependencies if spec.startswith("torch"))
    assert torch_spec == "torch>=" + ".".join(map(str, MINIMUM_TORCH))


def test_cli_on_an_older_torch_says_one_line_and_exits_2(tmp_path: Path) -> None:
    from conftest import make_files
    files = make_files(tmp_path)
    args = ["scan", str(files["model"]), str(files["data"]), "--arch", f"{files['arch']}:build"]
    run = subprocess.run([sys.executable, "-c", OLD_TORCH.format(args=args)], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert lines[0] == "error: deadrelu needs torch >= 2.13; torch 2.1.0 is installed"
    assert lines[1].startswith("hint: pip install 'torch>=2.13'")
    assert "Traceback" not in run.stderr


def test_help_and_version_run_on_an_older_torch() -> None:
    for args in (["--help"], ["version"]):
        run = subprocess.run([sys.executable, "-c", OLD_TORCH.format(args=args)], capture_output=True, text=True,
                             timeout=120, cwd=ROOT)
        assert run.returncode == 0, run.stderr


def test_every_import_is_declared() -> None:
    """deptry: no import missing from pyproject.toml, none only there through another package
    (``click`` came with huggingface_hub, and a plain install could not start), none declared unused."""
    pytest.importorskip("deptry", reason="deptry is in the test extra: pip install -e '.[test]'")
    run = subprocess.run([sys.executable, "-m", "deptry", "."], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_minimum_versions_ci_installs_are_the_declared_lower_bounds() -> None:
    """.ci/install-check runs the suite at .ci/minimum-versions.txt: those must be pyproject's bounds."""
    import re
    import tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {}
    for spec in [*project["dependencies"], *project["optional-dependencies"]["formats"]]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)(;.*)?", spec.replace(" ", ""))
        assert match, spec
        if not match.group(3):  # environment markers (tomli on Python < 3.11) are not installed here
            declared[match.group(1).lower()] = match.group(2)
    pinned = dict(line.split("==") for line in (ROOT / ".ci" / "minimum-versions.txt").read_text().splitlines()
                  if line and not line.startswith("#"))
    declared.pop("torch")  # torch is the one CI has (MINIMUM_TORCH, checked above)

    def release(version: str) -> tuple[int, ...]:  # "13" == "13.0.0"
        numbers = list(parse_release(version))
        while numbers and numbers[-1] == 0:
            numbers.pop()
        return tuple(numbers)

    assert {name: release(version) for name, version in pinned.items()} == \
        {name: release(version) for name, version in declared.items()}
