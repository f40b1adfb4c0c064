"""Every model format a user arrives with, scanned through the CLI and the API.

Each model carries its truth (bias -100 on known units), so every format must give
the same exact counts, and TorchScript / torch.export must give the eager names.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim

import deadrelu
from conftest import error_line, report_of, run
from deadrelu.capturing.dispatch import DispatchCapture
from deadrelu.capturing.plans import torchscript_plan
from deadrelu.settings import build_settings
from truth_models import (ConvBNInplace, ReusedReLUBlock, SequenceMLP, UserModel, bounded_inputs,
                          linear_with_dead_units)

class MixedNet(nn.Module):
    """Linear(10->32) with 8 dead units, a reused ReLU (3 then 5 dead of 12) and a
    functional ReLU at the root that never fires (12 dead): every naming case in one model."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = linear_with_dead_units(dead=8, width=32)[:2]
        self.block = ReusedReLUBlock()
        self.proj = nn.Linear(32, 6)
        with torch.no_grad():
            # The second call then sees exactly bias 2 + shift: units 0..4 at -98, the rest at 2.
            self.block.fc2.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # tanh keeps the block's input in [-1, 1], where its truth (3 and 5 dead) holds.
        h = self.block(torch.tanh(self.proj(self.stem(x))))
        return F.relu(h - 1000.0)


class EveryKind(nn.Module):
    """Conv -> every ReLU-family module (and F.threshold) -> pool -> a functional-ReLU block."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.prelu = nn.PReLU(4)
        self.r6 = nn.ReLU6()
        self.selu = nn.SELU()
        self.celu = nn.CELU(0.5)
        self.lrelu = nn.LeakyReLU(0.2)
        self.elu = nn.ELU()
        self.gelu = nn.GELU()
        self.silu = nn.SiLU()
        self.ht = nn.Hardtanh(-2.0, 2.0)
        self.ip = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        with torch.no_grad():
            self.prelu.weight.copy_(torch.tensor([0.25, -0.5, 0.1, -1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.conv(x))
        x = self.lrelu(self.celu(self.selu(self.r6(x))))
        x = self.ip(self.ht(self.silu(self.gelu(self.elu(x)))))
        return self.pool(x).flatten(1)


class LoopNet(nn.Module):
    """A ReLU inside a data-independent loop: TorchScript keeps the loop, so names are positional."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 5)
        with torch.no_grad():
            self.fc.bias.fill_(1.0)
            self.fc.bias[:2] = -100.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(2):
            x = torch.relu(self.fc(x))
        return x


def site_counts(report: dict) -> dict[str, tuple[str, int, int]]:
    return {site["name"]: (site["kind"], site["units"], site["dead"]) for site in report["sites"]}


@pytest.fixture
def data(files) -> Path:
    """150 bounded samples, on which ``linear_with_dead_units`` has exactly 8 dead of 32 units."""
    return files["data"]


@pytest.fixture
def arch(files) -> str:
    """The ``--arch`` value that builds ``linear_with_dead_units``' architecture."""
    return f"{files['arch']}:build"


# -- state_dict, checkpoints, prefixes, safetensors ------------------------------------------


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model", "net"])
@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod."])
def test_checkpoint_keys_and_wrapper_prefixes(runner, tmp_path, data, arch, key, prefix):
    state = {prefix + name: value for name, value in linear_with_dead_units(dead=8).state_dict().items()}
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}, key: state}, path)
    report = report_of(runner, path, data, "--arch", arch)
    assert report["summary"]["dead"] == 8 and report["summary"]["units"] == 32
    assert report["model"]["format"] == "checkpoint"
    stripped = [w for w in report["warnings"] if "prefix" in w]
    assert len(stripped) == len([p for p in ("module.", "_orig_mod.") if p in prefix])


def test_safetensors_with_arch(runner, tmp_path, data, arch):
    from safetensors.torch import save_file
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in linear_with_dead_units(dead=8).state_dict().items()}, str(path))
    report = report_of(runner, path, data, "--arch", arch)
    assert report["model"]["format"] == "safetensors"
    assert report["summary"]["dead"] == 8


# -- pickled modules --------------------------------------------------------------------------


def test_pickled_module_is_refused_then_loaded_weights_only_with_its_globals(runner, tmp_path, data):
    path = tmp_path / "whole.pt"
    torch.save(UserModel(linear_with_dead_units(dead=8)), path)  # the user's own class: consent needed
    refused = run(runner, path, data)
    assert refused.exit_code == 2
    assert "torch.nn.modules.container.Sequential" in refused.stderr
    report = report_of(runner, path, data, "--allow-pickle")
    assert report["summary"]["dead"] == 8
    assert report["model"]["format"] == "pickle"


def test_pickle_the_weights_only_unpickler_cannot_rebuild_falls_back_with_consent(runner, tmp_path, data):
    model = linear_with_dead_units(dead=8)
    model.input_stats = np.array([0.0, 1.0])  # numpy state: beyond the weights-only unpickler
    torch.save(model, tmp_path / "with_numpy.pt")
    assert run(runner, tmp_path / "with_numpy.pt", data).exit_code == 2
    report = report_of(runner, tmp_path / "with_numpy.pt", data, "--allow-pickle")
    assert report["summary"]["dead"] == 8
    assert any("full unpickler" in w for w in report["warnings"])
    torch.save(linear_with_dead_units(dead=8), tmp_path / "plain.pt")
    report = report_of(runner, tmp_path / "plain.pt", data, "--allow-pickle")
    assert any("weights-only unpickler, allowing only the globals" in w for w in report["warnings"])


def test_pickled_dataparallel_is_unwrapped(runner, tmp_path, data):
    path = tmp_path / "dp.pt"
    torch.save(nn.DataParallel(linear_with_dead_units(dead=8)), path)
    report = report_of(runner, path, data, "--allow-pickle")
    assert report["summary"]["dead"] == 8
    assert report["model"]["class"] == "Sequential"
    assert "unwrapped DataParallel to Sequential" in report["warnings"]
    assert any("weights-only unpickler" in w for w in report["warnings"])
    assert [site["name"] for site in report["sites"]] == ["1"]


def _save_as_if_from(module_name: str, path: Path) -> None:
    """torch.save a model whose class lives in ``module_name`` (``__main__`` of a training
    script, or a package that is not installed where the scan runs)."""
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = linear_with_dead_units(dead=8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    Net.__module__, Net.__qualname__ = module_name, "Net"
    fake = sys.modules.get(module_name) or types.ModuleType(module_name)
    added = module_name not in sys.modules
    sys.modules[module_name] = fake
    fake.Net = Net  # type: ignore[attr-defined]
    try:
        torch.save(Net(), path)
    finally:
        del fake.Net  # type: ignore[attr-defined]
        if added:
            del sys.modules[module_name]


SCRIPT_DEFINING_NET = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x):
        return self.body(x)

if __name__ == "__main__":
    raise SystemExit("training would run here; deadrelu imports this file under another name")
"""


def test_pickle_from_a_scripts_main_names_the_class_and_import_resolves_it(runner, tmp_path, data):
    path = tmp_path / "from_main.pt"
    _save_as_if_from("__main__", path)
    missing = run(runner, path, data, "--allow-pickle")
    assert missing.exit_code == 2
    line = error_line(missing)
    assert "__main__.Net" in line and str(path) in line
    assert "--import" in missing.stderr and "--arch" in missing.stderr
    script = tmp_path / "train.py"
    script.write_text(SCRIPT_DEFINING_NET)
    report = report_of(runner, path, data, "--allow-pickle", "--import", script)
    assert report["summary"]["dead"] == 8
    assert report["model"]["class"] == "Net"


def test_pickle_from_a_missing_package_says_which_module(runner, tmp_path, data):
    path = tmp_path / "from_pkg.pt"
    _save_as_if_from("acme_nets", path)
    missing = run(runner, path, data, "--allow-pickle")
    assert missing.exit_code == 2
    line = error_line(missing)
    assert "acme_nets.Net" in line and "cannot be imported" in line
    script = tmp_path / "nets.py"
    script.write_text(SCRIPT_DEFINING_NET)
    assert report_of(runner, path, data, "--allow-pickle", "--import", script)["summary"]["dead"] == 8


# -- python factory ----------------------------------------------------------------------------


def test_model_factory_from_a_file_with_weights(runner, tmp_path, data, arch):
    weights = tmp_path / "sd.pt"
    torch.save({"state_dict": linear_with_dead_units(dead=8).state_dict()}, weights)
    report = report_of(runner, "--model", arch, "--weights", weights, data)
    assert report["model"]["format"] == "factory"
    assert report["summary"]["dead"] == 8


def test_model_factory_from_a_package_with_kwargs(runner, data):
    # linear_with_dead_units lives in tests/truth_models.py, importable as a module.
    report = report_of(runner, "--model", "truth_models:linear_with_dead_units", "--arch-kwargs",
                       '{"dead": 5, "width": 20}', data)
    assert (report["summary"]["dead"], report["summary"]["units"]) == (5, 20)


def test_model_factory_and_data_source_together(runner, tmp_path):
    (tmp_path / "make.py").write_text("import torch\ndef make():\n    return torch.rand(64, 10) * 2 - 1\n")
    report = report_of(runner, "--model", "truth_models:linear_with_dead_units", "--data",
                       f"{tmp_path / 'make.py'}:make")
    assert report["summary"]["dead"] == 8 and report["data"]["samples"] == 64


# -- torch.compile ---------------------------------------------------------------------------


def test_compiled_module_is_unwrapped_in_the_api():
    model = linear_with_dead_units(dead=8)
    compiled = torch.compile(model)
    result = deadrelu.scan(compiled, bounded_inputs(40, 10))
    assert result.summary.dead == 8
    assert [site.name for site in result.sites] == ["1"]


# -- TorchScript -----------------------------------------------------------------------------


@pytest.fixture
def mixed() -> tuple[MixedNet, torch.Tensor]:
    torch.manual_seed(0)
    return MixedNet().eval(), bounded_inputs(90, 10)


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_file_gives_the_eager_names_and_counts(runner, tmp_path, mixed, how):
    model, x = mixed
    eager = deadrelu.scan(model, x, batch_size=32)
    program = torch.jit.script(model) if how == "script" else torch.jit.trace(model, x[:4])
    path = tmp_path / f"{how}.pt"
    torch.jit.save(program, str(path))
    np.save(tmp_path / "x.npy", x.numpy())
    report = report_of(runner, path, tmp_path / "x.npy", "--batch-size", "32")
    assert report["model"]["format"] == "torchscript"
    assert report["model"]["class"] == "MixedNet"
    assert report["coverage"]["positional_names"] is False
    expected = {s.name: (s.kind, s.units, s.dead) for s in eager.sites}
    assert expected == {"stem.1": ("ReLU", 32, 8), "block.relu#0": ("ReLU", 12, 3), "block.relu#1": ("ReLU", 12, 5),
                        "<root>:relu#0": ("ReLU", 12, 12)}
    assert site_counts(report) == expected
    assert [site["name"] for site in report["sites"]] == [site.name for site in eager.sites]
    for site, eager_site in zip(report["sites"], eager.sites, strict=True):
        assert site["unit_stats"]["active"] == eager_site.stats.active.tolist()


def test_torchscript_no_functional_keeps_only_activation_modules(mixed):
    model, x = mixed
    scripted = torch.jit.script(model)
    result = deadrelu.scan(scripted, x, functional=False)
    assert [site.name for site in result.sites] == ["stem.1", "block.relu#0", "block.relu#1"]
    assert [site.name for site in result.sites] == [site.name for site in deadrelu.scan(model, x, functional=False).sites]
    assert result.coverage["functional"] is False


def test_torchscript_every_kind_matches_eager(tmp_path):
    torch.manual_seed(0)
    model = EveryKind().eval()
    x = torch.randn(20, 3, 8, 8)
    eager = deadrelu.scan(model, x, batch_size=8)
    scripted = deadrelu.scan(torch.jit.script(model), x, batch_size=8)
    assert [(s.name, s.kind, s.unit_dim) for s in scripted.sites] == [(s.name, s.kind, s.unit_dim) for s in eager.sites]
    for mine, theirs in zip(scripted.sites, eager.sites, strict=True):
        assert mine.stats.active.tolist() == theirs.stats.active.tolist(), mine.name
        assert mine.stats.at_floor.tolist() == theirs.stats.at_floor.tolist(), mine.name
    prelu = scripted.site("prelu")
    assert prelu.prelu_slopes is not None and prelu.prelu_slopes["nonpositive"] == 2


def test_aten_capture_matches_under_no_grad_where_ops_arrive_decomposed():
    """Under no_grad prelu -> _prelu_kernel, selu/celu -> elu: the same sites and counts."""
    torch.manual_seed(0)
    model = torch.jit.script(EveryKind().eval())
    x = torch.randn(12, 3, 8, 8)
    seen = {}
    for mode in (torch.inference_mode, torch.no_grad):
        capture = DispatchCapture(model, build_settings(), torch.device("cpu"), torchscript_plan(model))
        with capture, mode():
            capture.begin_batch()
            model(x)
            capture.end_batch()
            records = capture.records()
            seen[mode.__name__] = [(capture.site_name(r), r.spec.kind, capture.finalize(r).active.tolist())
                                   for r in records]
        assert not capture.positional_names
    assert seen["inference_mode"] == seen["no_grad"]
    assert [kind for _name, kind, _active in seen["no_grad"]] == [
        "PReLU", "ReLU6", "SELU", "CELU", "LeakyReLU", "ELU", "GELU", "SiLU", "Hardtanh", "ReLU"]


def test_torchscript_unit_axes_follow_the_producing_op():
    conv = ConvBNInplace().eval()
    images = torch.randn(6, 3, 5, 5)
    result = deadrelu.scan(torch.jit.trace(conv, images), images)
    site = result.site("relu")
    assert (site.unit_dim, site.units, list(site.verdict.dead_units)) == (1, 8, list(ConvBNInplace.dead_channels))
    sequence = SequenceMLP().eval()
    tokens = torch.rand(5, 24, 16) * 2 - 1
    result = deadrelu.scan(torch.jit.script(sequence), tokens)
    site = result.site("act")
    assert (site.unit_dim, site.units, list(site.verdict.dead_units)) == (2, 24, [0, 7, 23])


class Stacks(nn.Module):
    """ReLUs inside ModuleList / ModuleDict entries, which TorchScript's call hierarchy leaves out."""

    def __init__(self, twin: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(2)])
        self.heads = nn.ModuleDict({"gelu": nn.GELU(), "elu": nn.ELU()})
        # A second list whose entries have the same names and types: "0(Sequential)" is ambiguous.
        self.twin = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.ReLU())]) if twin else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        if self.twin is not None:
            for layer in self.twin:
                x = layer(x)
        return self.heads["elu"](self.heads["gelu"](x))


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_names_through_modulelists_and_dicts(how):
    model, x = Stacks().eval(), torch.randn(12, 8)
    program = torch.jit.script(model) if how == "script" else torch.jit.trace(model, x)
    result = deadrelu.scan(program, x)
    assert [site.name for site in result.sites] == ["layers.0.1", "layers.1.1", "heads.gelu", "heads.elu"]
    assert [site.name for site in result.sites] == [site.name for site in deadrelu.scan(model, x).sites]
    twin = deadrelu.scan(torch.jit.script(Stacks(twin=True).eval()), x)
    assert [site.name for site in twin.sites] == ["aten.relu#0", "aten.relu#1", "aten.relu#2", "aten.gelu#0",
                                                  "aten.elu#0"]
    assert any("ambiguous" in warning and "positional" in warning for warning in twin.warnings)


def test_torchscript_with_a_loop_gets_positional_names_and_says_so():
    model = torch.jit.script(LoopNet().eval())
    result = deadrelu.scan(model, torch.rand(10, 5))
    assert [site.name for site in result.sites] == ["aten.relu#0", "aten.relu#1"]
    assert [site.dead for site in result.sites] == [2, 2]  # bias -100 on units 0, 1 in both passes
    assert result.coverage["positional_names"] is True
    assert any("names are positional" in warning for warning in result.warnings)


def test_torchscript_capture_leaves_no_mode_behind_after_a_failing_forward():
    model = torch.jit.script(linear_with_dead_units(dead=8))  # in train mode
    with pytest.raises(deadrelu.ForwardError):
        deadrelu.scan(model, torch.rand(10, 7))
    from torch.utils._python_dispatch import _get_current_dispatch_mode
    assert _get_current_dispatch_mode() is None
    assert model.training is True  # eval() during the scan, train mode given back


# -- torch.export ----------------------------------------------------------------------------


def test_export_program_gives_the_eager_names_and_counts(runner, tmp_path, mixed):
    model, x = mixed
    eager = deadrelu.scan(model, x, batch_size=32)
    program = torch.export.export(model, (x[:8],), dynamic_shapes={"x": {0: Dim("batch")}})
    path = tmp_path / "model.pt2"
    torch.export.save(program, str(path))
    np.save(tmp_path / "x.npy", x.numpy())
    report = report_of(runner, path, tmp_path / "x.npy", "--batch-size", "32")
    assert report["model"]["format"] == "export"
    assert site_counts(report) == {s.name: (s.kind, s.units, s.dead) for s in eager.sites}
    assert report["data"]["samples"] == 90


def test_export_with_a_fixed_batch_is_rebatched_and_the_tail_noted(tmp_path):
    model = linear_with_dead_units(dead=8).eval()
    program = torch.export.export(model, (torch.zeros(8, 10),))
    result = deadrelu.scan(program, bounded_inputs(50, 10), batch_size=16)
    assert result.summary.dead == 8
    assert (result.data["samples"], result.data["batches"]) == (48, 6)
    assert any("last 2 sample(s) were not scanned" in w and "exactly 8" in w for w in result.warnings)


def test_export_with_a_minimum_batch_of_2_never_gets_a_batch_of_1():
    model = linear_with_dead_units(dead=8).eval()
    program = torch.export.export(model, (torch.zeros(4, 10),),
                                  dynamic_shapes={"input": {0: Dim("batch", min=2, max=10)}})
    result = deadrelu.scan(program, bounded_inputs(21, 10), batch_size=10)
    assert (result.data["samples"], result.data["batches"]) == (21, 3)  # 10, then 11 -> 9 + 2
    assert result.summary.dead == 8


def test_export_fixed_batch_larger_than_the_data_is_a_clear_error(runner, tmp_path):
    program = torch.export.export(linear_with_dead_units(dead=8).eval(), (torch.zeros(8, 10),))
    torch.export.save(program, str(tmp_path / "fixed.pt2"))
    np.save(tmp_path / "five.npy", bounded_inputs(5, 10).numpy())
    result = run(runner, tmp_path / "fixed.pt2", tmp_path / "five.npy")
    assert result.exit_code == 2
    line = error_line(result)
    assert "five.npy" in line and "5 sample(s)" in line and "exactly 8" in line
    assert "Traceback" not in result.output
