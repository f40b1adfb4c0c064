"""Repairs never change the caller's model, and "outputs unchanged" is checked in eval mode.

Every model here starts in TRAIN mode with BatchNorm, as a factory or ``--arch`` leaves it:
one forward outside eval mode would move ``running_mean`` / ``running_var`` and bump
``num_batches_tracked``. Each repair (prune, recycle, reinit, swap), through the API and the
CLI, must leave the input model's ``state_dict()`` bit for bit and its ``training`` flags as
they were, and the written model's eval-mode outputs are compared with the original's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import deadrelu
from deadrelu.cli import app
from repair_models import RESNET_DEAD, ConvBNNet, conv_inputs, resnet_images, train_resnet

HERE = Path(__file__).resolve().parent
MODELS = HERE / "repair_models.py"


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def _flags(model: nn.Module) -> list[tuple[str, bool]]:
    return [(name, module.training) for name, module in model.named_modules()]


def _assert_same_state(before: dict[str, torch.Tensor], model: nn.Module, allowed: dict[str, Any] | None = None
                       ) -> None:
    """Every tensor bit for bit as ``before``, except the ``(dim, indices)`` slices in ``allowed``
    (``"all"``: the whole tensor may change)."""
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, old in before.items():
        if (allowed or {}).get(key) == "all":
            continue
        new, old = after[key].detach().clone(), old.clone()
        for dim, indices in (allowed or {}).get(key, []):
            index = torch.as_tensor(indices)
            new.index_fill_(dim, index, 0)
            old.index_fill_(dim, index, 0)
        assert torch.equal(new, old), f"{key} changed"


def _eval_outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    flags = _flags(model)
    model.eval()
    with torch.no_grad():
        out = model(x)
    for (_, module), (_, flag) in zip(model.named_modules(), flags):
        module.training = flag
    return out


def _scan(model: nn.Module, x: torch.Tensor) -> deadrelu.ScanResult:
    return deadrelu.scan(model, x, device="cpu", batch_size=32)


# ConvBNNet: dead channels relu1 (1, 4, 6) and relu2 (2,); the slices a ReDo recycle may change.
CONV_RECYCLED = {"conv1.weight": [(0, [1, 4, 6])], "conv1.bias": [(0, [1, 4, 6])],
                 **{f"bn1.{n}": [(0, [1, 4, 6])] for n in ("weight", "bias", "running_mean", "running_var")},
                 "conv2.weight": [(1, [1, 4, 6]), (0, [2])], "conv2.bias": [(0, [2])],
                 **{f"bn2.{n}": [(0, [2])] for n in ("weight", "bias", "running_mean", "running_var")},
                 "fc.weight": [(1, list(range(32, 48)))]}
# train_resnet: layer1.0.relu#0 (0, 2) through conv1 > bn1 -> conv2; layer2.0.relu#1 (1) through conv2 > bn2 -> conv3.
RESNET_RECYCLED = {"layer1.0.conv1.weight": [(0, [0, 2])],
                   **{f"layer1.0.bn1.{n}": [(0, [0, 2])] for n in ("weight", "bias", "running_mean", "running_var")},
                   "layer1.0.conv2.weight": [(1, [0, 2])], "layer2.0.conv2.weight": [(0, [1])],
                   **{f"layer2.0.bn2.{n}": [(0, [1])] for n in ("weight", "bias", "running_mean", "running_var")},
                   "layer2.0.conv3.weight": [(1, [1])]}


@pytest.fixture(scope="module")
def resnet_case() -> tuple[nn.Module, torch.Tensor, deadrelu.ScanResult]:
    model, x = train_resnet(), resnet_images()
    return model, x, deadrelu.scan(model, x, device="cpu", batch_size=32)


# -- scan ----------------------------------------------------------------------------------------

def test_scan_leaves_a_train_mode_batchnorm_model_bit_identical(resnet_case) -> None:
    model, x = ConvBNNet(train_mode=True), conv_inputs()
    before, flags = _state(model), _flags(model)
    result = _scan(model, x)
    assert {s.name: tuple(s.verdict.dead_units) for s in result.sites} == {"relu1": (1, 4, 6), "relu2": (2,)}
    _assert_same_state(before, model)
    assert _flags(model) == flags and model.training
    resnet, images, result = resnet_case  # the fixture scanned it already: still as built
    assert resnet.training and all(module.training for module in resnet.modules())
    assert {s.name: tuple(s.verdict.dead_units) for s in result.sites if s.dead} == \
        {site: channels for site, channels in RESNET_DEAD.values()}
    _assert_same_state(_state(train_resnet()), resnet)


# -- API: prune, recycle, reinit, swap ------------------------------------------------------------

def test_prune_never_changes_a_train_mode_model_and_checks_in_eval_mode() -> None:
    model, x = ConvBNNet(train_mode=True), conv_inputs()
    result = _scan(model, x)
    before, flags = _state(model), _flags(model)
    expected = _eval_outputs(model, x)
    pruned, report = deadrelu.prune(model, result, x)
    _assert_same_state(before, model)
    assert _flags(model) == flags
    assert _flags(pruned) == [(name, True) for name, _ in pruned.named_modules()]  # the caller's mode, kept
    # The check ran in eval mode on the model as given: its scale is the eval outputs' scale.
    assert report.check is not None and report.check.output_scale == pytest.approx(float(expected.abs().max()))
    assert report.check.max_abs_diff <= 1e-6 * report.check.output_scale
    torch.testing.assert_close(_eval_outputs(pruned, x), expected, rtol=0, atol=1e-6)
    keep = [0, 2, 3, 5, 7]
    assert torch.equal(pruned.bn1.running_mean, before["bn1.running_mean"][keep])
    assert torch.equal(pruned.bn1.running_var, before["bn1.running_var"][keep])
    assert int(pruned.bn1.num_batches_tracked) == int(before["bn1.num_batches_tracked"]) == 0


def test_recycle_changes_only_the_recycled_slices_of_a_train_mode_model() -> None:
    model, x = ConvBNNet(train_mode=True), conv_inputs()
    result = _scan(model, x)
    before, flags = _state(model), _flags(model)
    expected = _eval_outputs(model, x)
    report = deadrelu.recycle(model, result, "dead", data=x)
    assert report.recycled == 4 and report.check is not None and report.check.max_abs_diff == 0.0
    _assert_same_state(before, model, CONV_RECYCLED)
    assert _flags(model) == flags
    assert torch.equal(_eval_outputs(model, x), expected)
    assert report.check.output_scale == float(expected.abs().max())


def test_reinit_changes_only_the_layers_it_names_of_a_train_mode_model() -> None:
    model, x = ConvBNNet(train_mode=True), conv_inputs()
    result = _scan(model, x)
    before, flags = _state(model), _flags(model)
    report = deadrelu.reinit(model, result, "he", data=x, layers=["relu2"], force=True)
    assert report.layers == ("conv2", "bn2")
    everything = {key: "all" for key in before if key.startswith(("conv2.", "bn2."))}
    _assert_same_state(before, model, everything)
    assert int(model.bn1.num_batches_tracked) == 0 and _flags(model) == flags


def test_swap_keeps_every_tensor_and_the_train_eval_flags() -> None:
    for train_mode in (True, False):
        model, x = ConvBNNet(train_mode=train_mode), conv_inputs()
        result = _scan(model, x)
        before, flags = _state(model), _flags(model)
        report = deadrelu.swap_activations(model, result, "leaky_relu:0.1", data=x, force=True)
        assert [s.module for s in report.swapped] == ["relu1", "relu2"]
        _assert_same_state(before, model)
        # A new LeakyReLU is built in train mode; in an eval-mode model it must be eval too.
        assert _flags(model) == flags


@pytest.mark.parametrize("repair", ["prune", "recycle", "reinit", "swap"])
def test_every_repair_keeps_a_train_mode_residual_network(resnet_case, repair: str) -> None:
    original, x, result = resnet_case
    model = train_resnet()  # a fresh copy per repair; in-place repairs change it on purpose
    before, flags = _state(model), _flags(model)
    expected = _eval_outputs(model, x)
    if repair == "prune":
        pruned, report = deadrelu.prune(model, result, x)
        _assert_same_state(before, model)
        assert [c.site for c in report.sites if c.changed] == ["layer1.0.relu#0", "layer2.0.relu#1"]
        assert report.check is not None and report.check.max_abs_diff <= 1e-6 * report.check.output_scale
        torch.testing.assert_close(_eval_outputs(pruned, x), expected, rtol=0, atol=1e-5)
    elif repair == "recycle":
        report = deadrelu.recycle(model, result, "dead", data=x)
        assert report.recycled == 3 and report.check is not None and report.check.max_abs_diff == 0.0
        _assert_same_state(before, model, RESNET_RECYCLED)
        assert torch.equal(_eval_outputs(model, x), expected)
    elif repair == "reinit":
        deadrelu.reinit(model, result, "he", data=x, layers=["layer2.0.relu#1"], force=True)
        everything = {key: "all" for key in before if key.startswith(("layer2.0.conv2.", "layer2.0.bn2."))}
        _assert_same_state(before, model, everything)
        assert int(model.layer2[0].bn2.num_batches_tracked) == 0  # reset_parameters, on purpose
        assert int(model.layer1[0].bn1.num_batches_tracked) == int(before["layer1.0.bn1.num_batches_tracked"])
    else:
        deadrelu.swap_activations(model, result, "leaky_relu:0.01", data=x, force=True)
        _assert_same_state(before, model)
        assert isinstance(model.relu, nn.LeakyReLU) and type(model.layer1[0].relu) is nn.ReLU  # called 3 times: kept
    assert _flags(model) == flags


# -- CLI: the written model against the original ----------------------------------------------------

@pytest.fixture
def conv_files(tmp_path: Path) -> dict[str, Any]:
    model_path, data_path = tmp_path / "cnn.pt", tmp_path / "x.npy"
    torch.save(ConvBNNet(train_mode=True).state_dict(), model_path)
    np.save(data_path, conv_inputs().numpy())
    arch = ["--arch", f"{MODELS}:ConvBNNet", "--arch-kwargs", '{"train_mode": true}']
    return {"model": model_path, "data": data_path, "args": [str(model_path), str(data_path), *arch]}


def _original(path: Path) -> nn.Module:
    model = ConvBNNet(train_mode=True)
    model.load_state_dict(torch.load(path))
    return model


def test_cli_prune_writes_a_model_whose_eval_outputs_match_the_original(runner, conv_files, tmp_path: Path) -> None:
    out, weights = tmp_path / "p.pt2", tmp_path / "p.pt"
    run = runner.invoke(app, ["prune", *conv_files["args"], "--out", str(out), "--state-dict", str(weights)])
    assert run.exit_code == 0, run.output
    assert "pruned 4 dead unit(s) at 2 site(s)" in run.output and "outputs unchanged" in run.output
    original, x = _original(conv_files["model"]), conv_inputs()
    expected = _eval_outputs(original, x)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(str(out)).module()(x), expected, rtol=0, atol=1e-6)
    state = torch.load(weights)
    keep = [0, 2, 3, 5, 7]
    assert torch.equal(state["bn1.running_mean"], original.bn1.running_mean[keep])
    assert torch.equal(state["bn1.running_var"], original.bn1.running_var[keep])
    assert int(state["bn1.num_batches_tracked"]) == 0 and int(state["bn2.num_batches_tracked"]) == 0


def test_cli_recycle_writes_only_the_recycled_slices(runner, conv_files, tmp_path: Path) -> None:
    out = tmp_path / "r.pt"
    run = runner.invoke(app, ["fix", *conv_files["args"], "--recycle", "dead", "--out", str(out)])
    assert run.exit_code == 0, run.output
    assert "outputs unchanged" in run.output and "max |diff| 0 " in run.output
    original, x = _original(conv_files["model"]), conv_inputs()
    written = _original(out)
    _assert_same_state(_state(original), written, CONV_RECYCLED)
    assert torch.equal(_eval_outputs(written, x), _eval_outputs(original, x))


@pytest.mark.parametrize("repair", [["--swap-activation", "leaky_relu:0.01"], ["--reinit", "he", "--force"]])
def test_cli_swap_and_reinit_keep_what_they_do_not_change(runner, conv_files, tmp_path: Path,
                                                          repair: list[str]) -> None:
    out = tmp_path / ("s.pt2" if repair[0] == "--swap-activation" else "ri.pt")
    run = runner.invoke(app, ["fix", *conv_files["args"], *repair, "--out", str(out)])
    assert run.exit_code == 0, run.output
    original = _state(_original(conv_files["model"]))
    if out.suffix == ".pt2":
        state = torch.export.load(str(out)).state_dict
        assert all(torch.equal(state[key], value) for key, value in original.items() if key in state)
        assert {"bn1.running_mean", "bn2.running_var", "fc.weight"} <= set(state)
    else:
        written = _original(out)
        _assert_same_state(original, written, {key: "all" for key in original if key.startswith(("conv", "bn"))})
        assert torch.equal(written.fc.weight, original["fc.weight"])


def test_cli_prune_on_a_train_mode_residual_network(runner, tmp_path: Path) -> None:
    data, report = tmp_path / "images.npy", tmp_path / "r.json"
    np.save(data, resnet_images().numpy())
    out = tmp_path / "p.pt2"
    run = runner.invoke(app, ["prune", "--model", f"{MODELS}:train_resnet", str(data), "--out", str(out),
                              "--json", str(report)])
    assert run.exit_code == 0, run.output
    payload = json.loads(report.read_text())
    assert payload["report"]["removed_units"] == 3 and payload["report"]["check"]["passed"]
    original = train_resnet()
    x = resnet_images()
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(str(out)).module()(x), _eval_outputs(original, x),
                                   rtol=0, atol=1e-5)
