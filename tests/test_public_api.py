"""What ``import deadrelu`` offers: every exported name resolves, the names the README, the docs
pages and the docstrings tell users to use are reachable as ``deadrelu.X``, the type checkers' view mirrors the
lazy table, annotations ship (``py.typed``), and there is one version."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import deadrelu

PACKAGE = Path(deadrelu.__file__).parent  # the package imported (installed, under .ci/install-check)
ROOT = Path(__file__).resolve().parents[1]  # the checkout: README.md, pyproject.toml
README = (ROOT / "README.md").read_text(encoding="utf-8")
#: the docs page that holds what the README's "Python API" section held
PYTHON_API_PAGE = (ROOT / "docs" / "python-api.md").read_text(encoding="utf-8")
#: the README and every docs page: what users read
PAGES = {"README.md": README, **{f"docs/{page.relative_to(ROOT / 'docs').as_posix()}": page.read_text(encoding="utf-8")
                                 for page in sorted((ROOT / "docs").rglob("*.md"))}}

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", deadrelu.__all__)
def test_every_exported_name_resolves(name):
    assert getattr(deadrelu, name) is not None
    assert name in dir(deadrelu)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        deadrelu.not_a_name  # noqa: B018


#: what signatures and docstrings hand to users (issue 19: "export the types the docstrings tell
#: users to use"), with the module that defines each
TYPES_USERS_ARE_GIVEN = {
    "LoadedModel": "deadrelu.load.model", "DataStream": "deadrelu.load.data", "GateLimits": "deadrelu.judge.gate",
    "Suggestion": "deadrelu.judge.rules.base", "merge_results": "deadrelu.merge", "diff": "deadrelu.compare",
    "InputLink": "deadrelu.links", "RepairRefused": "deadrelu.repair.report", "RepairError": "deadrelu.repair.report",
    "GateOutcome": "deadrelu.verdicts", "SiteVerdict": "deadrelu.verdicts", "DiffResult": "deadrelu.compare",
    "PruneReport": "deadrelu.repair.report", "RecycleReport": "deadrelu.repair.report",
    "SwapReport": "deadrelu.repair.report", "ReinitReport": "deadrelu.repair.report",
}


@pytest.mark.parametrize("name,module", sorted(TYPES_USERS_ARE_GIVEN.items()))
def test_the_types_users_are_handed_are_exported(name, module):
    assert name in deadrelu.__all__
    defined = getattr(importlib.import_module(module), name)
    assert getattr(deadrelu, name) is defined
    assert getattr(defined, "__module__", module).startswith(module)


def _python_api_section() -> str:
    """docs/python-api.md: what the README's "Python API" section held (the page is that section)."""
    assert PYTHON_API_PAGE.startswith("# Python API\n")
    return PYTHON_API_PAGE


#: CamelCase names the Python API page uses that are not deadrelu's
NOT_DEADRELU = {"ExportedProgram", "DataLoader"}


def test_every_name_the_python_api_page_uses_resolves():
    section = _python_api_section()
    dotted = set(re.findall(r"\bdeadrelu\.([A-Za-z_]\w*)", section))
    classes = {name for name in re.findall(r"`([A-Z]\w+)`", section) if name not in NOT_DEADRELU}
    assert {"scan", "check_gate", "load_model", "write_reports", "ReportTargets", "capture", "DeadReluError"} <= dotted
    assert {"ScanResult", "ModelLoadError", "ResultFormatError"} <= classes
    assert {"LoadedModel", "DataStream", "GateLimits", "Suggestion", "merge_results", "diff", "InputLink"} <= dotted
    missing = sorted(name for name in dotted | classes
                     if name not in deadrelu.__all__ and not (name.startswith("__") and hasattr(deadrelu, name)))
    assert not missing, f"named on docs/python-api.md but not exported: {missing}"


#: ``deadrelu.<suffix>`` in the README and the docs that are file names, not attributes
FILE_SUFFIXES = {"json", "jsonl", "xml", "html", "md", "png", "toml", "log", "txt", "pt", "csv"}


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_deadrelu_dotted_name_in_the_readme_and_the_docs_resolves(page):
    for name in sorted(set(re.findall(r"\bdeadrelu\.([A-Za-z_]\w*)", PAGES[page])) - FILE_SUFFIXES):
        if name in deadrelu.__all__ or (name.startswith("__") and hasattr(deadrelu, name)):
            continue
        if name == "_fused":  # the optional compiled kernel: present only where it was built
            continue
        importlib.import_module(f"deadrelu.{name}")  # a module (deadrelu.render, deadrelu.integrations ...)


def test_the_type_checking_imports_mirror_the_lazy_table():
    """``if TYPE_CHECKING:`` in deadrelu/__init__.py imports exactly the lazy names, each from its module."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    block = next(node for node in tree.body if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test))
    imported: dict[str, str] = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom) and node.level == 1, ast.dump(node)
        base = "deadrelu" + (f".{node.module}" if node.module else "")
        for alias in node.names:
            name = alias.asname or alias.name
            # ``from . import capture``: the module itself
            imported[name] = f"{base}.{alias.name}" if f"{base}.{alias.name}" == deadrelu._LAZY.get(name) else base
    assert imported == deadrelu._LAZY
    assert deadrelu.__all__ == ["__version__", *deadrelu._LAZY]


def test_annotations_ship_with_the_package():
    assert (PACKAGE / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["deadrelu"]


# -- one version ----------------------------------------------------------------------------------

READ_VERSION = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch.") or name == "deadrelu" or name.startswith("deadrelu."):
            raise ImportError(name + " must not be imported to read the version")
sys.meta_path.insert(0, _Block())
from setuptools.config.pyprojecttoml import read_configuration
print(read_configuration("pyproject.toml")["project"]["version"])
"""


def test_pyproject_reads_the_version_from_the_package_without_importing_it():
    pytest.importorskip("setuptools")  # the build backend: absent from a plain venv of an installed deadrelu
    assert "version" not in PYPROJECT["project"]
    assert "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "deadrelu.__version__"}
    done = subprocess.run([sys.executable, "-c", READ_VERSION], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == deadrelu.__version__


@pytest.mark.parametrize("args", [["version"], ["--version"]])
def test_the_cli_prints_the_package_version(runner, args):
    from deadrelu.cli import app
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    assert done.stdout == f"deadrelu {deadrelu.__version__}\n"


def test_version_flag_runs_without_torch():
    from test_api import run_without_torch
    done = run_without_torch("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"deadrelu {deadrelu.__version__}"
