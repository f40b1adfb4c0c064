"""A ``.pt2`` shape formula is bounded before ``sympy.sympify`` reads it (issue 18 §6):
``Symbol('s0') + 9**9**9`` used to hang the scan forever."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.export import Dim

from deadrelu.load import archive
from deadrelu.load.formula import formula_problem


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).uniform(-1, 1, (8, 4)).astype(np.float32))
    return path


def rewrite_zip(source: Path, target: Path, edit) -> Path:
    """Copy a zip member by member, letting ``edit(name, bytes) -> bytes`` change any."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as copy:
        for name in original.namelist():
            copy.writestr(name, edit(name, original.read(name)))
    return target


class Clean(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x):
        return torch.relu(self.linear(x))



# -- §6: shape formulas that never come back ------------------------------------------------------


@pytest.mark.parametrize("text,problem", [
    ("Symbol('s0') + 9**9**9", "exponent"),
    ("Pow(Integer(9), Pow(Integer(9), Integer(9)))", "exponent"),
    ("Pow(Pow(Integer(9), 64), 64)", "power of a power"),
    ("PowByNatural(s0, 100)", "exponent"),
    ("LShift(1, 10000000000)", "exponent"),
    ("Integer(100000000000000000000000)", "2**64"),
    ("Float('1.5', precision=1000000000)", "precision"),
    ("factorial(100000)", "not a shape function"),
    ("Max(" + ", ".join(f"s{i}" for i in range(20)) + ")", "Max/Min"),
    ("s0 + " * 1000 + "1", "longer than"),
])
def test_formulas_past_a_bound_are_refused(text, problem):
    found = formula_problem(text)
    assert found is not None and found.startswith("too costly to evaluate") and problem in found, found
    assert not archive.plain_formula(text)


@pytest.mark.parametrize("text", [
    "Pow(Symbol('s0', integer=True, positive=True), Integer(2))", "Pow(s0, Rational(1, 2))", "s0**-1",
    "Add(Mul(Integer(2), Symbol('s0', integer=True, positive=True)), Integer(-1))", "Max(1, s0) + Min(s1, 64)",
    "FloorDiv(s0, 2) + ModularIndexing(s0, 1, 4)", "int_oo", "-oo",
])
def test_torch_formulas_stay_plain(text):
    assert formula_problem(text) is None


def test_a_pt2_with_a_power_tower_in_a_shape_is_refused_quickly(tmp_path, data):
    """Old code handed this to ``sympy.sympify``, which never returned: the CLI runs in a
    subprocess with a timeout, so the test fails (rather than hangs) there."""
    program = torch.export.export(Clean().eval(), (torch.zeros(4, 4),), dynamic_shapes={"x": {0: Dim("batch")}})
    torch.export.save(program, str(tmp_path / "clean.pt2"))

    def edit(name: str, text: bytes) -> bytes:
        if not name.endswith("models/model.json"):
            return text
        document = json.loads(text)
        for tensor in document["graph_module"]["graph"]["tensor_values"].values():
            for size in tensor["sizes"]:
                if "as_expr" in size:
                    size["as_expr"]["expr_str"] = "Symbol('s0', integer=True, positive=True) + 9**9**9"
        return json.dumps(document).encode()

    rewrite_zip(tmp_path / "clean.pt2", tmp_path / "tower.pt2", edit)
    root = str(Path(__file__).resolve().parents[1])  # this checkout's deadrelu, whatever is installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    try:
        result = subprocess.run([sys.executable, "-m", "deadrelu", "scan", str(tmp_path / "tower.pt2"), str(data)],
                                capture_output=True, text=True, timeout=120, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("the scan did not come back within 120 s")
    assert result.returncode == 2, result.stderr
    assert "too costly to evaluate" in result.stderr and "tower.pt2" in result.stderr, result.stderr
