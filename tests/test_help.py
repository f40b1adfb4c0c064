"""Every command's ``--help`` speaks the same language: a metavar on every option (never a
Python type such as ``<bool>`` or ``<list[Path]>``), an Examples section, and ``--version``."""

from __future__ import annotations

import re

import pytest
import typer

from deadrelu import __version__
from deadrelu.cli import app

COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
#: what typer prints for an option or argument declared without a metavar
PYTHON_TYPES = re.compile(r"<(bool|str|int|float|path|list\[[^>]*\]|module)>")


def test_every_command_is_checked() -> None:
    assert {"scan", "report", "diff", "prune", "fix", "trend", "merge", "version"} <= set(COMMANDS)


@pytest.mark.parametrize("command", [[], *([name] for name in COMMANDS)], ids=lambda c: " ".join(c) or "deadrelu")
def test_help_shows_metavars_not_python_types_and_examples(runner, command) -> None:
    done = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    assert not PYTHON_TYPES.findall(done.stdout), PYTHON_TYPES.findall(done.stdout)
    assert "<bool>" not in done.stdout and "<str>" not in done.stdout and "<list" not in done.stdout
    if command:
        assert "Examples" in done.stdout and f"deadrelu {command[0]}" in done.stdout.split("Examples", 1)[1]


def test_version_option_and_command_agree(runner) -> None:
    option = runner.invoke(app, ["--version"])
    command = runner.invoke(app, ["version"])
    assert option.exit_code == 0 and command.exit_code == 0
    assert option.stdout == command.stdout == f"deadrelu {__version__}\n"
