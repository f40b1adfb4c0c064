"""Capture in parts: ``deadrelu.capture`` is a plain typed function, the two drivers compose the same
parts without subclassing each other, the parts never import a driver, callers ask the session
(never its internals), and no capture source file grows past 600 lines."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import deadrelu
from deadrelu.capturing.contract import Capture
from deadrelu.capturing.dispatch import DispatchCapture
from deadrelu.capturing.hooks import ActivationCapture

PACKAGE = Path(deadrelu.__file__).parent
CAPTURING = PACKAGE / "capturing"
DRIVERS = {"hooks", "dispatch", "session"}


def test_capture_is_a_function_with_a_typed_signature():
    for name in ("hooks", "dispatch", "session", "plans", "registry"):  # importing the package changes nothing
        importlib.import_module(f"deadrelu.capturing.{name}")
    assert inspect.isfunction(deadrelu.capture)
    assert deadrelu.capture is importlib.import_module("deadrelu.capturing.session").capture
    signature = inspect.signature(deadrelu.capture)
    assert signature.return_annotation == "CaptureSession"
    assert list(signature.parameters)[:4] == ["model", "settings", "device", "eval_mode"]
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    with deadrelu.capture(model) as cap:
        model(torch.randn(5, 3))
    assert cap.result().sites[0].name == "1"


def test_the_drivers_compose_the_parts_and_keep_the_contract():
    assert ActivationCapture not in DispatchCapture.__mro__ and DispatchCapture not in ActivationCapture.__mro__
    wanted = {name for name, _ in inspect.getmembers(Capture) if not name.startswith("_")} | set(
        Capture.__annotations__)
    assert wanted >= {"begin_batch", "end_batch", "records", "site_name", "finalize", "not_run", "failure",
                      "op_error", "positional_names", "ran_this_batch", "no_sites_error", "set_mask", "in_batch"}
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    settings = deadrelu.ScanSettings()
    scripted = torch.jit.script(model)
    from deadrelu.capturing.plans import torchscript_plan
    for capture in (ActivationCapture(model, settings, torch.device("cpu")),
                    DispatchCapture(scripted, settings, torch.device("cpu"), torchscript_plan(scripted))):
        with capture, torch.inference_mode():
            capture.begin_batch()
            (scripted if isinstance(capture, DispatchCapture) else model)(torch.randn(5, 3))
            capture.end_batch()
        missing = {name for name in wanted if not hasattr(capture, name)}
        assert not missing, (type(capture).__name__, missing)
        assert [capture.site_name(r) for r in capture.records()] == ["1"]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_parts_never_import_a_driver_and_drivers_not_each_other():
    for path in CAPTURING.glob("*.py"):
        part = path.stem
        if part in ("__init__", "session"):
            continue
        imported = _imports(path) & DRIVERS
        assert not imported, f"capturing/{path.name} imports {sorted(imported)}"


def test_no_caller_reaches_into_the_session():
    pattern = re.compile(r"\.engine\b|session\._capture\b|_capture\.engine")
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{number}"
                 for root in (PACKAGE, PACKAGE.parent / "tests", PACKAGE.parent / "benchmarks")
                 for path in root.rglob("*.py")
                 for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if pattern.search(line) and path.name != Path(__file__).name]
    assert offenders == []
    assert not hasattr(deadrelu.capture(nn.ReLU()), "engine")


def test_no_capture_source_file_is_over_600_lines():
    lengths = {path.name: len(path.read_text(encoding="utf-8").splitlines()) for path in CAPTURING.glob("*.py")}
    assert max(lengths.values()) <= 600, lengths


@pytest.mark.parametrize("make", [nn.ReLU, nn.ELU, lambda: nn.ReLU(inplace=True)], ids=["ReLU", "ELU", "ReLU-inplace"])
def test_capture_of_a_model_that_is_one_activation(make):
    """``deadrelu.capture`` on a bare activation module: its batches begin before its own call is
    counted (the session's root pre-hook goes first), and the ``F.relu`` inside its forward is its
    own, not a second, functional site. Truth: 2 of 6 units always negative."""
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    x[:, :2] = -1 - x[:, :2].abs()
    model = make()
    with torch.inference_mode(), deadrelu.capture(model) as cap:
        for batch in x.split(10):
            model(batch.clone())
    sites = cap.result().sites
    assert [(site.name, site.observations) for site in sites] == [("<root>", 40)]
    assert sites[0].never_fired == 2
