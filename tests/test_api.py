"""The public API can do everything the CLI does: capture as a context manager, config files and
the gate in scan(), loaded models with their notes, exported programs, report writing; and the
result layer needs no torch."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import deadrelu
from deadrelu.kinds import KINDS, ZERO_GRADIENT_KINDS, spec_for_module
from deadrelu.render.reports import ReportTargets
from truth_models import bounded_inputs, linear_with_dead_units

PACKAGE = Path(deadrelu.__file__).parent


def no_hooks_left(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_capture_session_counts_exactly_the_dead_units_and_gives_everything_back():
    model = linear_with_dead_units(dead=8, width=32)
    model.train()
    x = bounded_inputs(120, 10)
    with deadrelu.capture(model) as cap:
        assert not model.training  # eval inside the block by default
        with torch.inference_mode():
            model(x[:50])
            model(x[50:])
    result = cap.result()
    assert result.summary.dead == 8
    assert result.sites[0].verdict.dead_units == list(range(8))
    assert result.data["samples"] == 120 and result.data["batches"] == 2
    assert model.training and no_hooks_left(model)


def test_capture_session_on_training_steps_keeps_train_mode_and_builds_no_graph():
    model = linear_with_dead_units(dead=8, width=32)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    x = bounded_inputs(64, 10)
    with deadrelu.capture(model, eval_mode=False) as cap:
        for batch in x.split(16):
            assert model.training
            loss = model(batch).pow(2).mean()
            loss.backward()
            optimizer.step()
    result = cap.result()
    assert result.summary.dead == 8 and result.data["batches"] == 4
    assert no_hooks_left(model)


def test_capture_session_removes_hooks_when_the_forward_raises():
    model = linear_with_dead_units(dead=8, width=32)
    with pytest.raises(RuntimeError):
        with deadrelu.capture(model):
            model(torch.zeros(3, 7))  # wrong width
    assert no_hooks_left(model)


def test_scan_reads_a_config_file_with_its_gate_and_keyword_overrides_win(tmp_path):
    config = tmp_path / "cfg.toml"
    config.write_text("[scan]\nbatch_size = 7\n[thresholds]\ntau = 0.5\n[gate]\nmax_dead_ratio = 0.1\n")
    model, x = linear_with_dead_units(dead=8, width=32), bounded_inputs(50, 10)
    result = deadrelu.scan(model, x, config=config, tau=0.2)
    assert result.settings.batch_size == 7 and result.settings.thresholds.tau == 0.2
    assert result.gate is not None and not result.gate.passed and result.gate.max_dead_ratio == 0.1
    passed = deadrelu.scan(model, x, config=config, gate={"max_dead_ratio": 0.25})
    assert passed.gate.passed and passed.gate.max_dead_ratio == 0.25


def test_scan_takes_a_loaded_model_with_its_provenance_and_notes(tmp_path):
    model = linear_with_dead_units(dead=8, width=32)
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, tmp_path / "m.pt")
    (tmp_path / "arch.py").write_text("from torch import nn\n"
                                      "def build():\n    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), "
                                      "nn.Linear(32, 1))\n")
    loaded = deadrelu.load_model(tmp_path / "m.pt", arch=f"{tmp_path / 'arch.py'}:build")
    result = deadrelu.scan(loaded, bounded_inputs(40, 10))
    assert result.model["format"] == "state_dict" and result.model["source"] == str(tmp_path / "m.pt")
    assert "stripped the 'module.' prefix from every key" in result.warnings
    assert result.summary.dead == 8


def test_an_exported_programs_module_scans_like_the_eager_model():
    model = linear_with_dead_units(dead=8, width=32).eval()
    x = bounded_inputs(40, 10)
    program = torch.export.export(model, (x[:4],))
    result = deadrelu.scan(program.module(), x, batch_size=4)
    eager = deadrelu.scan(model, x)
    assert [(s.name, s.dead) for s in result.sites] == [(s.name, s.dead) for s in eager.sites] == [("1", 8)]


def test_write_reports_is_the_writer_notebooks_and_the_cli_share(tmp_path):
    result = deadrelu.scan(linear_with_dead_units(dead=8, width=32), bounded_inputs(40, 10))
    written = deadrelu.write_reports(result, ReportTargets(html=tmp_path / "r.html", out=tmp_path / "out"))
    assert [(what, path.name) for what, path, _ in written] == [
        ("HTML report", "r.html"), ("HTML report", "report.html"), ("PNG plots", "plots"),
        ("JSON report", "result.json")]
    assert deadrelu.ScanResult.from_json(tmp_path / "out" / "result.json").summary.dead == 8


def test_rejudged_recomputes_the_suggestions_that_quote_counts():
    result = deadrelu.scan(linear_with_dead_units(dead=8, width=32), bounded_inputs(200, 10))
    before = [s for s in result.suggestions if s["id"] == "dead-share"]
    assert len(before) == 1 and "8 of 32" in before[0]["title"]
    everything = result.rejudged(dead_threshold=1.0)
    after = [s for s in everything.suggestions if s["id"] == "dead-share"]
    assert everything.summary.dead == 32
    assert len(after) == 1 and "32 of 32" in after[0]["title"]


def test_the_kind_table_drives_module_lookup_and_the_advice_groups():
    for name in KINDS:
        if not hasattr(nn, name):  # gated products and other libraries' classes
            continue
        module = getattr(nn, name)(**({"num_parameters": 1} if name == "PReLU" else {}))
        assert spec_for_module(module).kind == name
    assert ZERO_GRADIENT_KINDS == ("ReLU", "ReLU6", "Hardswish", "Hardsigmoid", "ReLUSquared")
    assert spec_for_module(nn.Linear(2, 2)) is None


def test_a_bad_setting_names_the_flag_on_the_command_line(runner, tmp_path):
    from deadrelu.cli import app
    np.save(tmp_path / "d.npy", np.zeros((4, 3), dtype=np.float32))
    done = runner.invoke(app, ["scan", str(tmp_path / "m.pt"), str(tmp_path / "d.npy"), "--batch-size", "0"])
    assert done.exit_code == 2
    assert done.stderr.splitlines()[0] == "error: --batch-size must be >= 1, got 0"


# -- the result layer needs no torch ----------------------------------------------------------------

BLOCK_TORCH = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not installed here")
sys.meta_path.insert(0, _Block())
sys.argv = ["deadrelu", *{args!r}]
from deadrelu.cli import main
main()
"""


def run_without_torch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH.format(args=list(args))], capture_output=True,
                          text=True, timeout=120)


def test_help_version_and_report_run_without_torch(tmp_path):
    result = deadrelu.scan(linear_with_dead_units(dead=8, width=32), bounded_inputs(60, 10))
    result.to_json(tmp_path / "r.json")
    assert "deadrelu " in run_without_torch("version").stdout
    assert "scan" in run_without_torch("--help").stdout
    done = run_without_torch("report", str(tmp_path / "r.json"), "--html", str(tmp_path / "r.html"), "-q")
    assert done.returncode == 0, done.stderr
    assert "8 of 32 units dead" in done.stdout
    assert "8 of 32 units dead" in (tmp_path / "r.html").read_text(encoding="utf-8")


# -- no import cycles ---------------------------------------------------------------------------------

def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    """deadrelu modules a module imports, at import time or inside its functions (not for type checking)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            node.body = []
    found: set[str] = set()
    for node in ast.walk(tree):
        for child in (node,):
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[:len(base) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.startswith("deadrelu"):
                    found.add(target)
                    found.update(f"{target}.{alias.name}" for alias in child.names)
            elif isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names if alias.name.startswith("deadrelu"))
    return found


def _delegated(path: Path) -> set[str]:
    """Modules imported only by the documented thin delegations (``ScanResult.rejudged`` -> judge ...)."""
    from test_layers import DELEGATIONS, imports_of
    found = [imp for imp in imports_of(path) if not imp.typing]
    delegated = {imp.target for imp in found if (imp.source, imp.where, imp.target) in DELEGATIONS}
    return delegated - {imp.target for imp in found if (imp.source, imp.where, imp.target) not in DELEGATIONS}


def test_no_import_cycle_between_modules():
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {name: {target for target in _imports(path, name) - _delegated(path) if target in modules and target != name}
             for name, path in modules.items()}
    # A package imports its submodules in __init__; a submodule importing its own package's
    # __init__ back is the cycle to catch, so edges into a package mean its __init__.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                if not target.startswith(node + ".") and not node.startswith(target + "."):
                    cycle = stack[stack.index(target):] + [target]
                    pytest.fail("import cycle: " + " -> ".join(cycle))
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


# -- the first five minutes: a torch.save(model) of plain torch.nn classes loads without consent -------

class _Touch:
    """Unpickling this creates a file: the test's stand-in for code in a pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("build", [
    lambda: linear_with_dead_units(dead=8, width=32),
    lambda: nn.Sequential(nn.Linear(10, 16), nn.TransformerEncoderLayer(16, 2, 32, batch_first=True),
                          nn.Flatten(), nn.Linear(16, 1)),
], ids=["sequential", "transformer-layer"])
def test_a_pickled_model_of_torch_nn_classes_scans_without_allow_pickle(runner, tmp_path, build):
    from deadrelu.cli import app
    model = build()
    torch.save(model, tmp_path / "whole.pt")
    np.save(tmp_path / "d.npy", bounded_inputs(40, 10).numpy())
    done = runner.invoke(app, ["scan", str(tmp_path / "whole.pt"), str(tmp_path / "d.npy"), "--json",
                               str(tmp_path / "r.json"), "-q"])
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["model"]["format"] == "pickle"
    assert any("torch.nn classes only" in warning for warning in report["warnings"])
    expected = deadrelu.scan(model, bounded_inputs(40, 10))
    assert [(s["name"], s["dead"]) for s in report["sites"]] == [(s.name, s.dead) for s in expected.sites]


def test_a_pickle_holding_anything_beyond_torch_nn_still_needs_consent(runner, tmp_path):
    from deadrelu.cli import app
    marker = tmp_path / "ran"
    model = linear_with_dead_units(dead=8, width=32)
    model.payload = _Touch(marker)  # an attribute of a torch.nn module: the file names a non-nn global
    torch.save(model, tmp_path / "whole.pt")
    np.save(tmp_path / "d.npy", bounded_inputs(40, 10).numpy())
    done = runner.invoke(app, ["scan", str(tmp_path / "whole.pt"), str(tmp_path / "d.npy")])
    assert done.exit_code == 2 and "refusing to unpickle" in done.stderr
    assert not marker.exists()
