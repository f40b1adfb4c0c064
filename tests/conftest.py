"""Shared test setup: fixed terminal width, deterministic torch, the CLI runner."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("COLUMNS", "120")
os.environ.setdefault("NO_COLOR", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def runner():
    from typer.testing import CliRunner
    return CliRunner()
