"""Repairs with known truth: exact pruning, ReDo recycling, activation swaps, He re-init, and the CLI."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import deadrelu
from deadrelu.cli import app
from deadrelu.repair import RepairError, exact_zero_units, firing, scan_deltas
from repair_models import (MLP_DEAD, BranchyMLP, ConvBNNet, DeadMLP, LeakyDead, MixedActivations, ResidualNet,
                           conv_inputs, inputs)

HERE = Path(__file__).resolve().parent
MODELS = HERE / "repair_models.py"


def _scan(model: nn.Module, data: torch.Tensor) -> deadrelu.ScanResult:
    return deadrelu.scan(model, data, device="cpu", batch_size=64)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- prune ---------------------------------------------------------------------------------------

def test_prune_mlp_removes_exactly_the_dead_units() -> None:
    model, x = DeadMLP().eval(), inputs()
    result = _scan(model, x)
    assert {s.name: tuple(s.verdict.dead_units) for s in result.sites if s.dead} == MLP_DEAD
    pruned, report = deadrelu.prune(model, result, x)
    shapes = {k: tuple(v.shape) for k, v in pruned.state_dict().items()}
    assert shapes == {"0.0.weight": (27, 10), "0.0.bias": (27,), "1.0.weight": (14, 27), "1.0.bias": (14,),
                      "2.weight": (3, 14), "2.bias": (3,)}
    assert report.parameters_before == 32 * 10 + 32 + 16 * 32 + 16 + 3 * 16 + 3 == _params(model)
    assert report.parameters_after == 27 * 10 + 27 + 14 * 27 + 14 + 3 * 14 + 3 == _params(pruned) == 734
    assert report.macs_before == 32 * 10 + 16 * 32 + 3 * 16 and report.macs_after == 27 * 10 + 14 * 27 + 3 * 14
    # Same function, but a narrower matmul may sum in another order: equal up to float rounding.
    assert report.removed == 7 and report.check is not None and report.check.passed
    assert report.check.max_abs_diff <= 1e-6 * report.check.output_scale
    assert [(c.site, c.producer, c.consumers) for c in report.sites] == [("0.1", "0.0", ("1.0",)),
                                                                         ("1.1", "1.0", ("2",))]
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), rtol=0, atol=1e-6)
    rescan = _scan(pruned, x)
    assert rescan.summary.dead == 0 and rescan.summary.units == 27 + 14
    assert [(d.dead_before, d.dead_after, d.units_after) for d in scan_deltas(result, rescan)] == [(5, 0, 27),
                                                                                                   (2, 0, 14)]
    assert "200 scanned samples (no limit)" in report.warnings[0]
    assert json.dumps(report.to_dict())


def test_prune_conv_bn_through_pool_and_flatten() -> None:
    model, x = ConvBNNet(), conv_inputs()
    result = _scan(model, x)
    assert {s.name: tuple(s.verdict.dead_units) for s in result.sites} == {"relu1": (1, 4, 6), "relu2": (2,)}
    pruned, report = deadrelu.prune(model, result, x)
    shapes = {k: tuple(v.shape) for k, v in pruned.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert shapes == {"conv1.weight": (5, 3, 3, 3), "conv1.bias": (5,), "bn1.weight": (5,), "bn1.bias": (5,),
                      "bn1.running_mean": (5,), "bn1.running_var": (5,), "conv2.weight": (5, 5, 3, 3),
                      "conv2.bias": (5,), "bn2.weight": (5,), "bn2.bias": (5,), "bn2.running_mean": (5,),
                      "bn2.running_var": (5,), "fc.weight": (5, 80), "fc.bias": (5,)}
    assert _params(pruned) == (5 * 27 + 5) + 10 + (5 * 45 + 5) + 10 + (80 * 5 + 5) == 795
    assert report.parameters_before == (8 * 27 + 8) + 16 + (6 * 72 + 6) + 12 + (96 * 5 + 5) == 1175
    # BN running statistics of the kept channels moved with them.
    keep = [0, 2, 3, 5, 7]
    assert torch.equal(pruned.bn1.running_mean, model.bn1.running_mean[keep])
    assert [(c.site, c.producer, c.norms, c.consumers) for c in report.sites] == [
        ("relu1", "conv1", ("bn1",), ("conv2",)), ("relu2", "conv2", ("bn2",), ("fc",))]
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), rtol=0, atol=1e-6)
    assert _scan(pruned, x).summary.dead == 0


def test_prune_leaves_a_hard_coded_view_alone() -> None:
    model, x = ConvBNNet(hard_coded_view=True), conv_inputs()
    pruned, report = deadrelu.prune(model, _scan(model, x), x)
    relu2 = next(c for c in report.sites if c.site == "relu2")
    assert relu2.changed == () and "hard-codes the width" in (relu2.skipped or "")
    assert tuple(pruned.fc.weight.shape) == (5, 96) and tuple(pruned.conv1.weight.shape) == (5, 3, 3, 3)


def test_prune_residual_keeps_channels_shared_with_the_skip_path() -> None:
    model, x = ResidualNet().eval(), inputs(features=6)
    result = _scan(model, x)
    assert {s.name: s.verdict.dead_units for s in result.sites} == {"relu0": [3], "relu1": [5], "relu2": [3]}
    pruned, report = deadrelu.prune(model, result, x)
    by_site = {c.site: c for c in report.sites}
    assert by_site["relu1"].changed == (5,)
    assert "add (a residual/skip connection)" in (by_site["relu0"].skipped or "")
    assert "comes from add" in (by_site["relu2"].skipped or "")
    assert tuple(pruned.fc1.weight.shape) == (7, 8) and tuple(pruned.fc2.weight.shape) == (8, 7)
    assert tuple(pruned.stem.weight.shape) == (8, 6) and tuple(pruned.head.weight.shape) == (2, 8)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), rtol=0, atol=1e-6)


def test_prune_falls_back_to_torch_export_when_fx_cannot_trace() -> None:
    model, x = BranchyMLP().eval(), inputs()
    pruned, report = deadrelu.prune(model, _scan(model, x), x)
    assert report.graph == "export"
    assert tuple(pruned.fc1.weight.shape) == (14, 10) and tuple(pruned.fc2.weight.shape) == (3, 14)
    assert report.check is not None and report.check.passed


def test_prune_refuses_inexact_kinds_and_functional_sites_are_pruned() -> None:
    model, x = LeakyDead().eval(), inputs()
    result = _scan(model, x)
    assert result.sites[0].never_active == 3 and not exact_zero_units(result.sites[0]).any()
    pruned, report = deadrelu.prune(model, result, x)
    assert report.removed == 0 and "LeakyReLU units are not 0 when inactive" in (report.sites[0].skipped or "")
    mixed = MixedActivations().eval()
    pruned, report = deadrelu.prune(mixed, _scan(mixed, x), x)
    assert [(c.site, len(c.changed)) for c in report.sites] == [("act1", 4), ("<root>:relu#0", 2)]
    assert tuple(pruned.fc3.weight.shape) == (6, 12) and tuple(pruned.out.weight.shape) == (2, 6)


def test_prune_raises_when_the_check_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    prune_module = importlib.import_module("deadrelu.repair.prune")  # the package's `prune` is the function
    model, x = DeadMLP().eval(), inputs()
    result = _scan(model, x)
    # Pretend a live unit (5) of the first site is dead too: removing it changes the outputs.
    def too_many(site):  # type: ignore[no-untyped-def]
        mask = site.verdict.dead.copy()
        if site.name == "0.1":
            mask[5] = True
        return mask
    monkeypatch.setattr(prune_module, "exact_zero_units", too_many)
    with pytest.raises(RepairError, match="differ from the original"):
        deadrelu.prune(model, result, x)


# -- recycle -------------------------------------------------------------------------------------

def _one_layer(dead: int = 5) -> nn.Sequential:
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
    with torch.no_grad():
        model[0].bias.fill_(5.0)
        model[0].bias[:dead] = -100.0
    return model


def test_recycle_keeps_outputs_revives_units_and_resets_adam_state() -> None:
    model, x = _one_layer(), inputs()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(x).sum().backward()
    optimizer.step()
    for state in optimizer.state.values():  # a history in every slot, so the reset is visible
        state["exp_avg"].fill_(1.0)
        state["exp_avg_sq"].fill_(1.0)
    model.eval()
    with torch.no_grad():
        expected = model(x)
    result = _scan(model, x)
    report = deadrelu.recycle(model, result, "dead", optimizer=optimizer, data=x)
    assert report.recycled == 5 and report.sites[0].changed == (0, 1, 2, 3, 4)
    assert report.check is not None and report.check.max_abs_diff == 0.0
    with torch.no_grad():
        assert torch.equal(model(x), expected)
        assert torch.all(model[0].bias[:5] == 0) and torch.all(model[2].weight[:, :5] == 0)
        assert model[0].weight[:5].abs().max() <= 1 / np.sqrt(10)  # the layer's own init bound
    after = _scan(model, x)
    assert firing(after, report.sites) == (5, 5)
    assert after.sites[0].dead == 0
    state = optimizer.state
    for param, dim in ((model[0].weight, 0), (model[0].bias, 0), (model[2].weight, 1)):
        for key in ("exp_avg", "exp_avg_sq"):
            moment = state[param][key]
            recycled = moment.narrow(dim, 0, 5)
            kept = moment.narrow(dim, 5, moment.shape[dim] - 5)
            assert torch.all(recycled == 0) and torch.all(kept == 1)
    assert torch.all(state[model[2].bias]["exp_avg"] == 1)
    assert set(report.optimizer_state) == {"0.weight", "0.bias", "2.weight"}


def test_recycle_conv_resets_batchnorm_entries() -> None:
    model, x = ConvBNNet(), conv_inputs()
    with torch.no_grad():
        expected = model(x)
    report = deadrelu.recycle(model, _scan(model, x), "dead", data=x)
    assert report.recycled == 4 and report.check is not None and report.check.max_abs_diff == 0.0
    assert model.bn1.bias[1].item() == 0.0 and model.bn1.running_var[4].item() == 1.0
    assert torch.all(model.fc.weight.view(5, 6, 16)[:, 2] == 0)
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    fired, total = firing(_scan(model, x), report.sites)
    assert total == 4 and fired == 4


def test_recycle_restores_the_model_when_outputs_move() -> None:
    model, x = LeakyDead().eval(), inputs()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RepairError, match="the model was restored"):
        deadrelu.recycle(model, _scan(model, x), "dead", data=x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# -- swap and reinit -----------------------------------------------------------------------------

def test_swap_changes_exactly_the_flagged_module_sites() -> None:
    model, x = MixedActivations().eval(), inputs()
    result = _scan(model, x)
    report = deadrelu.swap_activations(model, result, "leaky_relu:0.1", data=x)
    assert [(s.module, s.before, s.after) for s in report.swapped] == [("act1", "ReLU", "LeakyReLU(0.1)")]
    assert isinstance(model.act1, nn.LeakyReLU) and model.act1.negative_slope == 0.1
    assert type(model.act2) is nn.ReLU
    (site, reason), = report.skipped
    assert site == "<root>:relu#0" and "MixedActivations.forward" in reason and "repair_models.py:" in reason
    assert report.check is not None and report.check.max_abs_diff > 0


def test_swap_prelu_sizes_per_unit_and_skips_partly_flagged_reused_modules() -> None:
    from truth_models import ReusedReLUBlock
    model = _one_layer().eval()
    result = _scan(model, inputs())
    deadrelu.swap_activations(model, result, "prelu")
    assert isinstance(model[1], nn.PReLU) and model[1].num_parameters == 32
    block = ReusedReLUBlock().eval()
    result = _scan(block, inputs(features=6))
    report = deadrelu.swap_activations(block, [result.sites[0]], "elu", result=result)
    assert report.swapped == () and "called 2 times" in report.skipped[0][1]
    report = deadrelu.swap_activations(block, ["relu"], "elu")
    assert isinstance(block.relu, nn.ELU) and len(report.swapped) == 1


def test_reinit_he_overwrites_only_layers_feeding_flagged_sites() -> None:
    model, x = MixedActivations().eval(), inputs()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = deadrelu.reinit(model, _scan(model, x), "he", data=x)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed == {"fc1.weight", "fc1.bias", "fc3.weight", "fc3.bias"}
    assert report.layers == ("fc1", "fc3") and report.destructive
    assert torch.all(model.fc1.bias == 0)
    std = float(model.fc1.weight.detach().std())
    assert 0.6 * np.sqrt(2 / 10) < std < 1.4 * np.sqrt(2 / 10)


# -- CLI -----------------------------------------------------------------------------------------

@pytest.fixture
def mlp_files(tmp_path: Path) -> tuple[Path, Path, str]:
    model_path, data_path = tmp_path / "mlp.pt", tmp_path / "x.npy"
    torch.save(DeadMLP().state_dict(), model_path)
    np.save(data_path, inputs().numpy())
    return model_path, data_path, f"{MODELS}:DeadMLP"


def test_cli_prune_writes_program_and_state_dict(runner, mlp_files, tmp_path: Path) -> None:
    model_path, data_path, arch = mlp_files
    out, weights, report = tmp_path / "p.pt2", tmp_path / "p.pt", tmp_path / "r.json"
    run = runner.invoke(app, ["prune", str(model_path), str(data_path), "--arch", arch, "--out", str(out),
                              "--state-dict", str(weights), "--json", str(report)])
    assert run.exit_code == 0, run.output
    assert "pruned 7 dead unit(s) at 2 site(s)" in run.output and "0.0.weight (32, 10) -> (27, 10)" in run.output
    program = torch.export.load(str(out)).module()
    x = inputs()
    reference = DeadMLP().eval()
    reference.load_state_dict(torch.load(model_path))
    with torch.no_grad():
        torch.testing.assert_close(program(x), reference(x), rtol=0, atol=1e-6)
        assert program(x[:3]).shape == (3, 3)
    assert tuple(torch.load(weights)["1.0.weight"].shape) == (14, 27)
    payload = json.loads(report.read_text())
    assert payload["report"]["removed_units"] == 7
    assert [(d["dead_before"], d["dead_after"]) for d in payload["before_after"]] == [(5, 0), (2, 0)]


def test_cli_prune_exits_2_and_writes_nothing_when_the_check_fails(runner, mlp_files, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    prune_module = importlib.import_module("deadrelu.repair.prune")  # the package's `prune` is the function
    model_path, data_path, arch = mlp_files
    monkeypatch.setattr(prune_module, "exact_zero_units", lambda site: np.arange(site.units) < 6)
    out = tmp_path / "p.pt2"
    run = runner.invoke(app, ["prune", str(model_path), str(data_path), "--arch", arch, "--out", str(out)])
    assert run.exit_code == 2 and "differ from the original" in run.output and not out.exists()


def test_cli_prune_needs_a_pt2_name(runner, mlp_files) -> None:
    model_path, data_path, arch = mlp_files
    run = runner.invoke(app, ["prune", str(model_path), str(data_path), "--arch", arch, "--out", "p.pt"])
    assert run.exit_code == 2 and ".pt2" in run.output


def test_cli_fix_recycle_writes_same_keys_and_shapes(runner, mlp_files, tmp_path: Path) -> None:
    model_path, data_path, arch = mlp_files
    out, report = tmp_path / "r.pt", tmp_path / "r.json"
    run = runner.invoke(app, ["fix", str(model_path), str(data_path), "--arch", arch, "--recycle", "dead",
                              "--out", str(out), "--json", str(report)])
    assert run.exit_code == 0, run.output
    assert "recycled 7 dead unit(s)" in run.output and "outputs unchanged" in run.output
    original, recycled = torch.load(model_path), torch.load(out)
    assert {k: v.shape for k, v in original.items()} == {k: v.shape for k, v in recycled.items()}
    payload = json.loads(report.read_text())
    fired = payload["fire_after_recycling"]
    assert fired["recycled"] == 7 and f"fire after recycling: {fired['firing']} of 7" in run.output
    assert fired["firing"] >= 5  # the 5 first-layer units see inputs of both signs


def test_cli_fix_swap_and_reinit(runner, mlp_files, tmp_path: Path) -> None:
    model_path, data_path, arch = mlp_files
    run = runner.invoke(app, ["fix", str(model_path), str(data_path), "--arch", arch, "--swap-activation", "elu",
                              "--out", str(tmp_path / "s.pt")])
    assert run.exit_code == 2 and "--out" in run.output and "s.pt2" in run.output
    # Slope 0.2 passes the dead units' -100 pre-activations on: outputs move by more than their scale.
    run = runner.invoke(app, ["fix", str(model_path), str(data_path), "--arch", arch, "--swap-activation",
                              "leaky_relu:0.2", "--out", str(tmp_path / "s.pt2")])
    assert run.exit_code == 2 and "swap refused: outputs moved by 3.05, more than the output scale 0.732" in \
        run.output and not (tmp_path / "s.pt2").exists()
    run = runner.invoke(app, ["fix", str(model_path), str(data_path), "--arch", arch, "--swap-activation",
                              "leaky_relu:0.2", "--out", str(tmp_path / "s.pt2"), "--force"])
    assert run.exit_code == 0, run.output
    program = torch.export.load(str(tmp_path / "s.pt2"))
    assert any("leaky_relu" in str(node.target) for node in program.graph.nodes)
    # He weights in place of trained ones move this model's outputs by more than their scale: refused
    # unless forced, as any repair that makes things worse.
    run = runner.invoke(app, ["fix", str(model_path), str(data_path), "--arch", arch, "--reinit", "he"])
    assert run.exit_code == 2 and "reinit refused: outputs moved by" in run.output
    run = runner.invoke(app, ["fix", str(model_path), str(data_path), "--arch", arch, "--reinit", "he", "--force"])
    assert run.exit_code == 0 and "DESTRUCTIVE" in run.output and "nothing written" in run.output
    assert "FORCED although: outputs moved by" in run.output
    run = runner.invoke(app, ["fix", str(model_path), str(data_path), "--arch", arch])
    assert run.exit_code == 2 and "exactly one of" in run.output
    run = runner.invoke(app, ["fix", str(model_path), str(data_path), "--arch", arch, "--swap-activation", "tanh"])
    assert run.exit_code == 2 and "unknown activation" in run.output


def test_prune_sees_user_subclasses_of_torch_layers_as_layers() -> None:
    class MyReLU(nn.ReLU):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x)

    class MyLinear(nn.Linear):
        pass

    model = nn.Sequential(MyLinear(10, 12), MyReLU(), nn.Linear(12, 2)).eval()
    with torch.no_grad():
        model[0].bias.fill_(5.0)
        model[0].bias[:3] = -100.0
    x = inputs()
    pruned, report = deadrelu.prune(model, _scan(model, x), x)
    assert report.sites[0].changed == (0, 1, 2) and type(pruned[0]) is MyLinear
    assert tuple(pruned[0].weight.shape) == (9, 10) and pruned[0].out_features == 9


def test_cli_refuses_to_overwrite_the_input_before_any_work(runner, mlp_files) -> None:
    model_path, data_path, arch = mlp_files
    before = model_path.read_bytes()
    run = runner.invoke(app, ["prune", str(model_path), str(data_path), "--arch", arch, "--state-dict",
                              str(model_path)])
    assert run.exit_code == 2 and "is the input MODEL" in run.output and model_path.read_bytes() == before
