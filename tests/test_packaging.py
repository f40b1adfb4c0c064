"""What the published package says about itself, and what its sdist holds.

The metadata is read from the sdist's own PKG-INFO (setuptools writes it from pyproject.toml),
so a key that setuptools drops or renames fails here too. The build of the wheel, ``twine
check`` and the installs with and without a C compiler are ``.ci/install-check wheel``'s (CI);
this file builds only the sdist, in a copy of the checkout (under a second).
"""

from __future__ import annotations

import email.parser
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

from deadrelu import __version__
from deadrelu.torch_support import MINIMUM_TORCH

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: What a user's checkout holds beside the sources: never copied into the build.
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "build", "dist", "reports", "*.egg-info", "__pycache__",
                                     ".pytest_cache", ".hypothesis", "*.so")


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], email.message.Message]:
    """The sdist built from a copy of the checkout: its member names (without the top folder) and PKG-INFO."""
    # this interpreter's setuptools builds it: >= 77 (pyproject's build requirement) wherever torch is,
    # which requires it
    work = tmp_path_factory.mktemp("sdist")
    tree = work / "tree"
    shutil.copytree(ROOT, tree, ignore=NOT_SOURCES)
    (tree / "deadrelu" / "_fused.cpython-311-x86_64-linux-gnu.so").write_bytes(b"an in-place build")  # never shipped
    run = subprocess.run([sys.executable, "-c", "import sys; from setuptools.build_meta import build_sdist; "
                          "print(build_sdist(sys.argv[1]))", str(work / "dist")],
                         cwd=tree, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    archive = work / "dist" / run.stdout.strip().splitlines()[-1]
    with tarfile.open(archive) as tar:
        top = f"deadrelu-{__version__}/"
        names = [member.name.removeprefix(top) for member in tar.getmembers() if member.isfile()]
        info = tar.extractfile(top + "PKG-INFO")
        assert info is not None
        metadata = email.parser.Parser().parsestr(info.read().decode())
    return names, metadata


def test_license_is_mit_with_its_file() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text
    # the SPDX expression needs setuptools 77 (PEP 639): the build requirement says so
    assert PYPROJECT["build-system"]["requires"] == ["setuptools>=77"]


def test_classifiers_match_the_declared_python_range_and_torch_bound() -> None:
    project = PYPROJECT["project"]
    assert project["requires-python"] == ">=3.10"
    classifiers = project["classifiers"]
    versions = [c.rsplit(" :: ", 1)[1] for c in classifiers
                if c.startswith("Programming Language :: Python :: 3.")]
    assert versions == ["3.10", "3.11", "3.12", "3.13"]
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in versions  # the one the suite runs on
    for needed in ("Typing :: Typed", "Operating System :: POSIX :: Linux", "Programming Language :: Python :: 3 :: Only",
                   "Topic :: Scientific/Engineering :: Artificial Intelligence"):
        assert needed in classifiers
    assert not any(c.startswith("License ::") for c in classifiers)  # PEP 639: the expression replaces them
    assert len(set(classifiers)) == len(classifiers) and classifiers == sorted(classifiers)
    assert "torch>=" + ".".join(map(str, MINIMUM_TORCH)) in project["dependencies"]


def test_project_urls_are_the_four_users_look_for() -> None:
    urls = PYPROJECT["project"]["urls"]
    assert set(urls) == {"Homepage", "Documentation", "Issues", "Changelog"}
    assert all(url.startswith("https://") for url in urls.values())
    assert urls["Issues"] == urls["Homepage"] + "/issues"
    assert urls["Changelog"] == urls["Homepage"] + "/blob/main/CHANGELOG.md"


def test_sdist_metadata_carries_license_classifiers_urls_and_python_range(sdist) -> None:
    _, metadata = sdist
    assert metadata["Name"] == "deadrelu"
    assert metadata["Version"] == __version__
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert metadata["Requires-Python"] == ">=3.10"
    assert metadata.get_all("Classifier") == PYPROJECT["project"]["classifiers"]
    assert metadata.get_all("Project-URL") == [f"{name}, {url}" for name, url in PYPROJECT["project"]["urls"].items()]
    assert "torch>=" + ".".join(map(str, MINIMUM_TORCH)) in metadata.get_all("Requires-Dist")


def test_sdist_holds_what_building_the_kernel_needs_and_no_built_code(sdist) -> None:
    names, _ = sdist
    for needed in ("setup.py", "pyproject.toml", "MANIFEST.in", "LICENSE", "README.md", "deadrelu/_fused.c",
                   "deadrelu/fused_kernel.c", "deadrelu/_kernel_flags.py", "deadrelu/py.typed",
                   "deadrelu/schemas/result-v1.schema.json", "deadrelu/__init__.py", "deadrelu/cli.py"):
        assert needed in names, needed
    if (ROOT / "CHANGELOG.md").exists():
        assert "CHANGELOG.md" in names
    # every module of the package, and nothing compiled (the in-place kernel planted in the copy)
    modules = {path.relative_to(ROOT).as_posix() for path in (ROOT / "deadrelu").rglob("*.py")}
    assert modules <= set(names), sorted(modules - set(names))
    assert not [name for name in names if name.endswith((".so", ".pyc", ".pyd"))]
    # the suite needs the whole checkout (sample models, .ci): not shipped half
    assert not [name for name in names if name.startswith("tests/")]
