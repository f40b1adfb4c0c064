"""The package's shape, checked statically: imports only point down the layers (type-only and
function-level imports included), the result is a leaf, ARCHITECTURE.md names every top-level
module, and no source file grows past ~600 lines.

Layers, lowest first (ARCHITECTURE.md, "Layers"): a module may import its own layer and the
layers below it, never one above. The torch side (loading, capture, accumulation, scanning,
repair) sits above the judge, which must work on a result read back from JSON without torch.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import deadrelu

PACKAGE = Path(deadrelu.__file__).parent  # the package imported (installed, under .ci/install-check)
CHECKOUT = Path(__file__).resolve().parents[1]  # ARCHITECTURE.md

#: top-level module or subpackage of deadrelu -> layer (lowest first)
LAYERS: list[tuple[str, ...]] = [
    # leaves: no deadrelu imports but errors
    ("errors", "links", "jsontext", "version", "_kernel_flags", "torch_support", "ranks", "numbers"),
    # definitions and per-unit data
    ("kinds", "settings", "unitstats", "schema", "verdicts"),
    # the scan's facts as data and JSON
    ("result",),
    # what the facts mean: gate, suggestions, causes; comparing and tracking results
    ("judge", "compare", "history"),
    # the torch side: load -> capture -> accumulate -> assemble a result; repairs; merging shards
    ("load", "stats", "fused", "fused_calls", "compile_policy", "capturing", "assemble", "scanning", "repair",
     "merge", "distributed", "shards", "trend"),
    # every output: terminal, HTML, notebook, plots, JUnit, markdown, files
    ("render",),
    # entry points: the command line, ``deadrelu.Monitor`` while training, the framework callbacks
    ("cli", "commands", "monitor", "loggers", "integrations", "__main__"),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}

#: (module, function, imported module): imports inside one function that point up on purpose.
#: The result's thin delegations keep ``result.rejudged()`` / ``plot()`` / ``_repr_html_`` /
#: ``to_json(path)`` / the JSON's ``summary.verdict`` on the object users hold while the work lives above it.
DELEGATIONS = {
    ("deadrelu.result", "ScanResult.rejudged", "deadrelu.judge.rejudge"),
    ("deadrelu.result", "ScanResult.plot", "deadrelu.render.plots"),
    ("deadrelu.result", "ScanResult._repr_html_", "deadrelu.render.notebook"),
    ("deadrelu.result", "ScanResult.report", "deadrelu.render.notebook"),
    ("deadrelu.result", "ScanResult.to_json", "deadrelu.render.files"),
    # the JSON's summary.verdict (OK/WARN/FAIL) is the judge's, computed when the JSON is written
    ("deadrelu.result", "ScanResult._verdict", "deadrelu.judge.overall"),
    # the weight rules run only when a model is given; which classes are norm layers is the capture's table
    ("deadrelu.judge.rules.base", "is_norm", "deadrelu.capturing.units"),
}


@dataclass(frozen=True)
class Import:
    source: str      # importing module
    where: str       # "" at module level, else the enclosing function's qualified name
    typing: bool     # inside ``if TYPE_CHECKING:``
    target: str      # imported deadrelu module
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path) -> list[Import]:
    """Every deadrelu import of a module: at module level, in functions and under TYPE_CHECKING."""
    return imports_in(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")


def imports_in(text: str, name: str, is_package: bool = False) -> list[Import]:
    """``imports_of`` for source text, as if it were module ``name``."""
    package = name if is_package else name.rpartition(".")[0]
    found: list[Import] = []

    def resolve(node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = package.split(".")
        base = base[:len(base) - node.level + 1]
        return ".".join(base + ([node.module] if node.module else []))

    def visit(node: ast.AST, where: str, typing: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner_where, inner_typing = where, typing
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.dump(child.test):
                inner_typing = True
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                inner_where = f"{where}.{child.name}" if where else child.name
            if isinstance(child, ast.ImportFrom):
                target = resolve(child)
                if target == "deadrelu" or target.startswith("deadrelu."):
                    for alias in child.names:  # ``from . import x`` / ``from .render import console``: modules
                        sub = f"{target}.{alias.name}"
                        module = sub if sub in MODULES else target
                        found.append(Import(name, inner_where, inner_typing, module, child.lineno))
            elif isinstance(child, ast.Import):
                found.extend(Import(name, inner_where, inner_typing, alias.name, child.lineno)
                             for alias in child.names if alias.name.split(".")[0] == "deadrelu")
            visit(child, inner_where, inner_typing)

    visit(ast.parse(text), "", False)
    return found


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward(imp: Import) -> bool:
    source, target = top(imp.source), top(imp.target)
    if not source or source == target:
        return False  # the package root is the lazy facade; a package may import its own parts
    if not target:
        return False  # ``from deadrelu import __version__``: the root imports nothing at run time
    return RANK[target] > RANK[source]


def all_imports() -> list[Import]:
    return [imp for path in MODULES.values() for imp in imports_of(path)]


def test_every_top_level_module_has_a_layer():
    unranked = sorted({top(name) for name in MODULES if top(name) and top(name) not in RANK})
    assert not unranked, f"give these a layer in tests/test_layers.py (and ARCHITECTURE.md): {unranked}"


def test_no_import_points_up_a_layer():
    bad = [imp for imp in all_imports()
           if upward(imp) and (imp.source, imp.where, imp.target) not in DELEGATIONS]
    assert not bad, "imports from a lower layer to a higher one:\n" + "\n".join(
        f"  {imp.source}:{imp.line} ({imp.where or 'module level'}{', TYPE_CHECKING' if imp.typing else ''})"
        f" imports {imp.target}" for imp in bad)


def test_the_results_delegations_import_on_call():
    """``rejudged``, ``plot``, ``_repr_html_``, ``to_json`` and ``_verdict`` reach up only from inside themselves."""
    seen = {(imp.source, imp.where, imp.target) for imp in all_imports() if upward(imp) and not imp.typing}
    assert {d for d in DELEGATIONS if d[0] == "deadrelu.result"} <= seen


def test_the_result_imports_nothing_above_it_at_module_level():
    result_rank = RANK["result"]
    for imp in imports_of(MODULES["deadrelu.result"]):
        if not imp.where:
            assert RANK.get(top(imp.target), 0) <= result_rank, imp


def test_the_layer_check_catches_type_only_and_function_level_upward_imports():
    """The checker itself: in a lower module, a TYPE_CHECKING import, an import inside a method and
    ``from . import <module>`` of a higher layer are each found; the root's ``__version__`` is not."""
    source = ("from typing import TYPE_CHECKING\n"
              "from . import __version__\n"
              "if TYPE_CHECKING:\n    from .result import ScanResult\n"
              "class A:\n    def f(self):\n        from .render import console\n"
              "def g():\n    from . import scanning\n")
    found = [imp for imp in imports_in(source, "deadrelu.settings") if upward(imp)]
    assert [(imp.typing, imp.where, imp.target) for imp in found] == [
        (True, "", "deadrelu.result"), (False, "A.f", "deadrelu.render.console"),
        (False, "g", "deadrelu.scanning")]
    # the same delegation anywhere but its own method is not allowed
    moved = imports_in("def plot():\n    from .render.plots import dead_ratio_by_layer\n", "deadrelu.result")
    assert [(imp.source, imp.where, imp.target) for imp in moved] == [("deadrelu.result", "plot", "deadrelu.render.plots")]
    assert (moved[0].source, moved[0].where, moved[0].target) not in DELEGATIONS


# -- ARCHITECTURE.md names every top-level module -------------------------------------------------

def _top_level_parts() -> list[str]:
    """``deadrelu/x.py`` for each top-level module, ``deadrelu/x/`` for each subpackage."""
    files = [f"deadrelu/{path.name}" for path in sorted(PACKAGE.glob("*.py"))]
    packages = [f"deadrelu/{path.parent.name}/" for path in sorted(PACKAGE.glob("*/__init__.py"))]
    return files + packages


def test_architecture_names_every_top_level_module():
    text = (CHECKOUT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    missing = [part for part in _top_level_parts() if f"`{part}`" not in text]
    assert not missing, f"ARCHITECTURE.md does not name: {missing}"


def test_architecture_names_only_modules_that_exist():
    text = (CHECKOUT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(deadrelu/[\w./]+)`", text))
    gone = sorted(part for part in named if not (PACKAGE.parent / part).exists())
    assert not gone, f"ARCHITECTURE.md names what is not there: {gone}"


def test_architecture_layers_table_matches_the_checked_layers():
    """The "Layers" table in ARCHITECTURE.md and ``LAYERS`` here are the same list."""
    text = (CHECKOUT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text[text.index("## Layers"):]
    rows = [line for line in section.splitlines() if re.match(r"\| \d ", line)]
    documented = [tuple(re.sub(r"\.py$|/$", "", name) for name in re.findall(r"`deadrelu/([\w.]+/?)`",
                                                                               row.split("|")[2])) for row in rows]
    assert documented == LAYERS


# -- no source file over ~600 lines ---------------------------------------------------------------

MAX_LINES = 600
#: files over the limit today, with their length as a ceiling so they cannot grow (none left:
#: stats.py's compiled reduction moved beside its policy, compile_policy.py).
OVER_LIMIT: dict[str, int] = {}


def _lengths() -> dict[str, int]:
    return {path.relative_to(PACKAGE.parent).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
            for path in sorted(PACKAGE.rglob("*.py"))}


def test_no_source_file_is_over_600_lines():
    lengths = _lengths()
    over = {name: n for name, n in lengths.items() if n > OVER_LIMIT.get(name, MAX_LINES)}
    assert not over, f"split these (limit {MAX_LINES} lines; listed exceptions may not grow): {over}"


def test_the_exceptions_are_still_over_the_limit():
    """An entry whose file was split (or shrank under the limit) is taken off the list."""
    lengths = _lengths()
    stale = sorted(name for name in OVER_LIMIT if lengths.get(name, 0) <= MAX_LINES)
    assert not stale, f"no longer over {MAX_LINES} lines: remove from OVER_LIMIT: {stale}"
