"""The documentation's examples run, so they cannot rot.

Every fenced ``console`` and ``python`` block at the top level of a page under ``docs/`` is run in
a temporary folder that holds a copy of ``sample_models/``:

* ``console`` blocks: each ``$ deadrelu …`` line (``\\`` continues it) is run through the CLI, at 80
  columns, and what it prints must be the lines the page shows under it (column padding aside:
  ``_spacing_free``; a repair's passing output check may read "unchanged" or "within tolerance",
  which depends on the CPU's float rounding: ``_comparable``). ``$ echo $?``
  prints the exit code of the command before it; a command that exits non-zero must be followed by
  one, so a page never shows a failing command as if it passed.
* ``python`` blocks run one after the other in one namespace per page, which starts with
  ``deadrelu``, ``torch``, ``np`` and the bundled sample MLP as ``model`` (with ``data``, a float32
  array of its 2,000 samples, ``x_probe``, ``loader`` and ``opt``). A block must not raise.

A block whose first line is ``# not run: REASON`` is shown, not run (it needs the network, timm or
several processes); ``EXPECTED_NOT_RUN`` counts every such block, so the list stays short and
explicit. A python block that imports an optional library (or names its extra in a
``# pip install 'deadrelu[EXTRA]'`` comment) is left out, and said so, where that is not installed.
``DEADRELU_WRITE_DOCS=1`` rewrites the console blocks' output from what the commands print now.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))

FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
INDENTED_RUNNABLE = re.compile(r"^[ \t]+```(console|python)\b", re.M)
NOT_RUN = re.compile(r"#\s*not run:\s*(.+)")

#: (page, reason) -> how many blocks are shown but not run: each needs what CI does not have
EXPECTED_NOT_RUN = {
    ("recipes.md", "downloads gpt2 from the Hugging Face Hub"): 1,
    ("recipes.md", "needs timm and its pretrained weights"): 1,
    ("training.md", "needs a Lightning or transformers Trainer of your own"): 1,
    ("scale.md", "needs a process group of several ranks"): 2,
    ("scale.md", "downloads a model from the Hugging Face Hub"): 1,
}


@dataclass(frozen=True)
class Block:
    """One fenced block of a page: its language, its text and where its text starts."""

    page: Path
    lang: str
    text: str
    start: int  # offset of the text in the page
    end: int

    @property
    def not_run(self) -> str | None:
        first = self.text.lstrip().splitlines()[0] if self.text.strip() else ""
        found = NOT_RUN.match(first)
        return found.group(1).strip() if found else None

    def __str__(self) -> str:
        line = self.page.read_text(encoding="utf-8").count("\n", 0, self.start) + 1
        return f"{self.page.relative_to(DOCS)}:{line}"


def blocks(page: Path, langs: tuple[str, ...] = ("console", "python")) -> list[Block]:
    """The page's top-level fenced blocks in ``langs``, in page order."""
    text = page.read_text(encoding="utf-8")
    return [Block(page, found.group(1), found.group(2), found.start(2), found.end(2))
            for found in FENCE.finditer(text) if found.group(1) in langs]


@dataclass
class Step:
    """A ``$`` command of a console block and the output lines the page shows for it."""

    argv: list[str]
    shown: list[str]


def steps(block: Block) -> list[Step]:
    """The block's commands with the lines shown under each."""
    found: list[Step] = []
    lines = block.text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        assert line.startswith("$ "), f"{block}: a console block's output must follow a '$ ' command: {line!r}"
        command = line[2:]
        while command.endswith("\\"):
            i += 1
            command = command[:-1] + " " + lines[i].strip()
        i += 1
        shown = []
        while i < len(lines) and not lines[i].startswith("$ "):
            shown.append(lines[i])
            i += 1
        found.append(Step(shlex.split(command), shown))
    return found


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A temp folder holding ``sample_models/`` and an empty ``reports/``, as the cwd."""
    shutil.copytree(ROOT / "sample_models", tmp_path / "sample_models",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "reports").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


#: A repair's passing output check, which reads "unchanged ... max |diff| 0" where the repaired model's
#: matmuls round exactly as the original's and "within tolerance ... max |diff| 1.91e-06" where this
#: CPU's BLAS sums the narrower layers in another order (the pruned sample MLP on an AMD EPYC): the page
#: shows one; the other passes too, with the same samples and the same allowed bound.
PASSING_CHECK = re.compile(r"^check: outputs (?:unchanged|within tolerance) on (\S+) samples: max \|diff\| \S+ "
                           r"\(allowed (.*)\)$")


def _comparable(line: str) -> str:
    """``_spacing_free(line)`` with a passing output check's wording and measured diff left out."""
    return PASSING_CHECK.sub(r"check: outputs pass on \1 samples (allowed \2)", _spacing_free(line))


def _spacing_free(line: str) -> str:
    """A line without its column padding: runs of spaces and of rule characters made one, so the
    oldest rich the install check allows (13.0, which pads table columns one wider) reads the same
    words and numbers; every word, number and line break must still match."""
    return re.sub(r"─+", "─", " ".join(line.split()))


def run_console(block: Block, runner) -> tuple[str, list[str]]:
    """Run the block's commands; returns the block's text as it should read, and the mismatches."""
    from deadrelu.cli import app

    written: list[str] = []
    mismatches: list[str] = []
    last_code = 0
    raw = block.text.splitlines()
    position = 0
    unchecked: str | None = None  # a command that exited non-zero and no '$ echo $?' yet
    for step in steps(block):
        if unchecked and step.argv != ["echo", "$?"]:
            mismatches.append(f"{block}: {unchecked} exits non-zero: follow it with '$ echo $?'")
        unchecked = None
        # the command's own lines, as the page writes them
        command_lines = [raw[position]]
        while raw[position].endswith("\\"):
            position += 1
            command_lines.append(raw[position])
        position += 1 + len(step.shown)
        if step.argv == ["echo", "$?"]:
            printed = [str(last_code)]
            last_code = 0
        else:
            assert step.argv[0] == "deadrelu", f"{block}: only '$ deadrelu …' and '$ echo $?' run: {step.argv}"
            torch.manual_seed(0)
            done = runner.invoke(app, step.argv[1:], env={"COLUMNS": "80", "NO_COLOR": "1"}, prog_name="deadrelu")
            if done.exit_code == 3 or (done.exception and not isinstance(done.exception, SystemExit)):
                raise AssertionError(f"{block}: {shlex.join(step.argv)} crashed:\n{done.output}") from done.exception
            printed = [line.rstrip() for line in done.output.rstrip("\n").splitlines()]
            last_code = done.exit_code
        shown = [line.rstrip() for line in step.shown]
        while shown and not shown[-1]:
            shown.pop()
        if [_comparable(line) for line in printed] != [_comparable(line) for line in shown]:
            mismatches.append(f"{block}: {shlex.join(step.argv)}\n--- page\n" + "\n".join(shown)
                              + "\n--- printed now\n" + "\n".join(printed))
        written += command_lines + printed
        if step.argv != ["echo", "$?"] and last_code != 0:
            unchecked = shlex.join(step.argv)
    if unchecked:
        mismatches.append(f"{block}: {unchecked} exits non-zero: follow it with '$ echo $?'")
    return "\n".join(written) + "\n", mismatches


def test_the_docs_have_pages_and_runnable_examples():
    names = {page.relative_to(DOCS).as_posix() for page in PAGES}
    assert {"index.md", "concepts.md", "safety.md", "scale.md", "cost.md", "recipes.md", "schema.md",
            "python-api.md", "reference.md"} <= names
    commands = {"scan", "report", "diff", "merge", "trend", "prune", "fix", "version"}
    assert {f"commands/{name}.md" for name in commands} <= names
    for name in commands:
        page = DOCS / "commands" / f"{name}.md"
        ran = [block for block in blocks(page, ("console",)) if block.not_run is None]
        assert any(step.argv[:2] == ["deadrelu", name] for block in ran for step in steps(block)), \
            f"{page.name} runs no '$ deadrelu {name}' example"


def test_every_cli_command_has_a_page():
    import typer.main

    from deadrelu.cli import app
    group = typer.main.get_command(app)
    names = group.list_commands(group.make_context("deadrelu", [], resilient_parsing=True))
    assert {"scan", "report", "diff", "merge", "trend", "prune", "fix", "version"} <= set(names)
    for name in names:
        assert (DOCS / "commands" / f"{name}.md").is_file(), f"deadrelu {name} has no docs page"


def test_runnable_blocks_are_at_the_top_level_of_their_page():
    """An indented fence (inside a list) would be skipped by the extraction: none may exist."""
    for page in PAGES:
        assert not INDENTED_RUNNABLE.search(page.read_text(encoding="utf-8")), f"{page}: indented runnable fence"


def test_the_blocks_not_run_are_few_and_listed():
    found: dict[tuple[str, str], int] = {}
    for page in PAGES:
        for block in blocks(page):
            if block.not_run is not None:
                key = (block.page.relative_to(DOCS).as_posix(), block.not_run)
                found[key] = found.get(key, 0) + 1
    assert found == EXPECTED_NOT_RUN
    assert sum(EXPECTED_NOT_RUN.values()) <= 6
    ran = sum(block.not_run is None for page in PAGES for block in blocks(page))
    assert ran >= 3 * sum(EXPECTED_NOT_RUN.values()), "most examples must run"


CONSOLE_PAGES = [page for page in PAGES if any(b.not_run is None for b in blocks(page, ("console",)))]


@pytest.mark.parametrize("page", CONSOLE_PAGES, ids=lambda page: page.relative_to(DOCS).as_posix())
def test_console_examples_print_what_the_page_shows(page, workdir, runner):
    mismatches: list[str] = []
    text = page.read_text(encoding="utf-8")
    rewritten, cursor = [], 0
    for block in blocks(page, ("console",)):
        if block.not_run is not None:
            continue
        should_read, wrong = run_console(block, runner)
        mismatches += wrong
        rewritten += [text[cursor:block.start], should_read]
        cursor = block.end
    if os.environ.get("DEADRELU_WRITE_DOCS") == "1":
        page.write_text("".join(rewritten) + text[cursor:], encoding="utf-8")
        return
    assert not mismatches, "\n\n".join(mismatches) + "\n\n(rerun with DEADRELU_WRITE_DOCS=1 to rewrite the output)"


PYTHON_PAGES = [page for page in PAGES if any(b.not_run is None for b in blocks(page, ("python",)))]


def _sample_namespace(deadrelu) -> dict[str, object]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("sample_archs", Path("sample_models/archs.py"))
    archs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(archs)
    model = archs.HighLrMLP()
    model.load_state_dict(torch.load("sample_models/mlp_high_lr.pt", weights_only=True))
    data = np.load("sample_models/mlp_data.npy")
    x_probe = torch.from_numpy(data[:256])
    loader = torch.utils.data.DataLoader(torch.from_numpy(data[:300]), batch_size=100)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return {"deadrelu": deadrelu, "torch": torch, "np": np, "model": model, "data": data,
            "x_probe": x_probe, "loader": loader, "opt": opt, "archs": archs}


#: the module each extra named in a ``# pip install 'deadrelu[EXTRA]'`` comment brings
EXTRA_MODULES = {"hf": "transformers", "lightning": "lightning", "tensorboard": "tensorboard", "mlflow": "mlflow",
                 "wandb": "wandb", "formats": "safetensors"}
PIP_EXTRAS = re.compile(r"#\s*pip install 'deadrelu\[([\w,]+)\]'")


def needed_modules(block: Block) -> set[str]:
    """The top-level modules a python block imports, and those of the extras its pip comments name."""
    import ast
    needed = {EXTRA_MODULES[extra] for found in PIP_EXTRAS.finditer(block.text) for extra in found.group(1).split(",")}
    for node in ast.walk(ast.parse(block.text)):
        if isinstance(node, ast.Import):
            needed |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            needed.add(node.module.split(".")[0])
    return needed


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=lambda page: page.relative_to(DOCS).as_posix())
def test_python_examples_run(page, workdir):
    """Each block runs; one whose optional library is not installed (the 'minimum' install check has no
    extras) is left out here, and the test says which were."""
    import importlib.util

    import deadrelu
    namespace = _sample_namespace(deadrelu)
    left_out = []
    for block in blocks(page, ("python",)):
        if block.not_run is not None:
            continue
        missing = sorted(name for name in needed_modules(block) if importlib.util.find_spec(name) is None)
        if missing:
            left_out.append(f"{block} (needs {', '.join(missing)})")
            continue
        torch.manual_seed(0)
        try:
            exec(compile(block.text, str(block), "exec"), namespace)  # noqa: S102 - the docs' own examples
        except Exception as error:
            raise AssertionError(f"{block}: the example raised {error!r}") from error
    if left_out:
        pytest.skip("not installed here: " + "; ".join(left_out))


def test_the_changelog_top_release_is_the_package_version():
    """CHANGELOG.md (Keep a Changelog): an Unreleased section, then released versions, newest first;
    the top released one is ``deadrelu.__version__``, the one version source."""
    import deadrelu

    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", text, re.M)
    assert headings and headings[0] == ("Unreleased", "")
    released = [(version, date) for version, date in headings[1:]]
    assert released and all(date for _, date in released), "every released version has a date"
    assert released[0][0] == deadrelu.__version__
    assert re.findall(r"^## .*$", text, re.M) == [f"## [{v}]" + (f" - {d}" if d else "") for v, d in headings]


def test_the_readme_is_the_first_five_minutes():
    """Under 150 lines; its first commands are the Makefile's demo and test; every link and image it
    points to exists; the docs pages it links cover every page of the site's nav; the GitHub Action
    section the packaging work fills is there."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) < 150
    first = FENCE.search(readme)
    assert first and [line.split("#")[0].strip() for line in first.group(2).splitlines()] == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^demo: ", makefile, re.M) and re.search(r"^test: ", makefile, re.M)
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    assert targets and all((ROOT / target).exists() for target in targets), \
        [target for target in targets if not (ROOT / target).exists()]
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)
    assert len(images) >= 2 and all((ROOT / image).is_file() for image in images)
    nav = re.findall(r":\s*([\w/-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(encoding="utf-8"), re.M)
    linked = {target.removeprefix("docs/") for target in targets if target.startswith("docs/")}
    assert "CHANGELOG.md" in targets
    assert set(nav) - {"changelog.md"} <= linked, sorted(set(nav) - {"changelog.md"} - linked)
    assert re.search(r"^## GitHub Action$", readme, re.M)


def test_the_schema_page_includes_every_published_schema():
    page = (DOCS / "schema.md").read_text(encoding="utf-8")
    schemas = sorted((ROOT / "deadrelu" / "schemas").glob("*.json"))
    assert schemas
    for schema in schemas:
        assert f'--8<-- "{schema.relative_to(ROOT).as_posix()}"' in page, f"{schema.name} is not on docs/schema.md"
