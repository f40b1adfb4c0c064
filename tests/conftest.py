"""Shared test setup: fixed terminal width, deterministic torch, the CLI runner, the
truth-carrying model files most CLI tests scan, and helpers that invoke the CLI and
read its JSON report or its one-line errors.

The helpers are plain functions (``from conftest import run, error_line``): they take
the ``runner`` fixture's CliRunner, so a test reads like the command line it runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

os.environ.setdefault("COLUMNS", "120")
os.environ.setdefault("NO_COLOR", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(min(2, torch.get_num_threads()))

# The architecture of ``linear_with_dead_units`` as a user's file: the state_dict it
# builds loads into ``build()`` with ``--arch arch.py:build``.
ARCH_SOURCE = """
from torch import nn

def build(width=32):
    return nn.Sequential(nn.Linear(10, width), nn.ReLU(), nn.Linear(width, 1))
"""


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def runner():
    from typer.testing import CliRunner
    return CliRunner()


def make_files(folder: Path, samples: int = 150) -> dict[str, Path]:
    """Write a state_dict with exactly 8 dead of 32 units (bias -100), its arch file and
    ``samples`` bounded inputs into ``folder``.

    Args:
        folder: where model.pt, arch.py and data.npy go.
        samples: rows of data (each in [-1, 1], where the 8-dead truth holds).

    Returns:
        Paths under the keys ``model``, ``arch``, ``data`` and ``dir`` (the folder).
    """
    from truth_models import bounded_inputs, linear_with_dead_units

    torch.save(linear_with_dead_units(dead=8, width=32).state_dict(), folder / "model.pt")
    (folder / "arch.py").write_text(ARCH_SOURCE)
    np.save(folder / "data.npy", bounded_inputs(samples, 10).numpy())
    return {"model": folder / "model.pt", "arch": folder / "arch.py", "data": folder / "data.npy", "dir": folder}


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A state_dict with exactly 8 dead of 32 units, its arch file, and 150 bounded samples."""
    return make_files(tmp_path)


def run(runner, *args: object):
    """``deadrelu scan ARGS...`` through the CliRunner (arguments made strings)."""
    from deadrelu.cli import app
    return runner.invoke(app, ["scan", *map(str, args)])


def scan_files(runner, files: dict[str, Path], *args: object):
    """``deadrelu scan MODEL DATA --arch ARCH:build ARGS...`` on a ``files`` set."""
    return run(runner, files["model"], files["data"], "--arch", f"{files['arch']}:build", *args)


def report_of(runner, *args: object) -> dict:
    """The JSON report of a successful ``deadrelu scan ARGS... --json -``."""
    result = run(runner, *args, "--json", "-")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def stderr_lines(result) -> list[str]:
    """The non-blank lines a command wrote to stderr."""
    return [line for line in result.stderr.splitlines() if line.strip()]


def error_line(result, *must_contain: str) -> str:
    """Assert the one-line error contract and return the error line.

    Exit 2, no traceback, stderr is exactly a first line ``error: ...`` holding every
    piece of ``must_contain`` and a second line ``hint: ...``.
    """
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = stderr_lines(result)
    assert lines and lines[0].startswith("error: "), result.stderr
    assert len(lines) == 2 and lines[1].startswith("hint: "), result.stderr
    for piece in must_contain:
        assert piece in lines[0], f"{piece!r} not in {lines[0]!r}"
    return lines[0]


def bounded(samples: int = 40, features: int = 4, seed: int = 0) -> torch.Tensor:
    """Inputs uniform in [-1, 1] (with ``dead_linear``, units whose state no input changes)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(samples, features, generator=generator) * 2 - 1


def dead_linear(inputs: int, outputs: int, dead: tuple[int, ...]) -> nn.Linear:
    """|w.x| < 0.04 for inputs in [-1, 1]: bias +1 makes a unit always active, -100 always dead."""
    layer = nn.Linear(inputs, outputs)
    with torch.no_grad():
        layer.weight.mul_(0.01)
        layer.bias.fill_(1.0)
        layer.bias[list(dead)] = -100.0
    return layer
