"""What each repair refuses, and why: a change that makes things worse, a bad ``--atol``, nothing to do.

The truth of the bundled sample (sample_models/mlp_high_lr.pt, see ``make demo``): swapping its
ReLUs for LeakyReLU(0.1) passes the dead units' large negative pre-activations on; the outputs
move by 82.3 at an output scale of 15.8 and site ``net.5`` goes from 48 to 63 dead units.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import deadrelu
from deadrelu.cli import app
from deadrelu.errors import ConfigError
from deadrelu.repair import RepairRefused
from repair_models import DeadMLP, LeakyDead, inputs

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = [str(ROOT / "sample_models" / "mlp_high_lr.pt"), str(ROOT / "sample_models" / "mlp_data.npy"),
          "--arch", f"{ROOT / 'sample_models' / 'archs.py'}:HighLrMLP"]
MODELS = Path(__file__).resolve().parent / "repair_models.py"
REFUSED_SWAP = ("swap refused: outputs moved by 82.3, more than the output scale 15.8; dead units rose at 1 site(s): "
                "net.5 48 -> 63; nothing was written")


def _sample_model() -> nn.Module:
    import importlib.util
    spec = importlib.util.spec_from_file_location("sample_archs", ROOT / "sample_models" / "archs.py")
    assert spec is not None and spec.loader is not None
    archs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(archs)
    model = archs.HighLrMLP()
    model.load_state_dict(torch.load(ROOT / "sample_models" / "mlp_high_lr.pt", weights_only=True))
    return model.eval()


# -- a change that makes things worse --------------------------------------------------------------

def test_cli_swap_that_makes_the_sample_worse_is_refused_with_its_numbers(runner, tmp_path: Path) -> None:
    out, report = tmp_path / "swapped.pt2", tmp_path / "r.json"
    run = runner.invoke(app, ["fix", *SAMPLE, "--swap-activation", "leaky_relu:0.1", "--out", str(out),
                              "--json", str(report)])
    assert run.exit_code == 2
    error = [line for line in run.output.splitlines() if line.startswith("error:")]
    assert error == [f"error: {REFUSED_SWAP}"]
    # The report shows before -> after either way.
    assert "would swap 3 activation module(s)" in run.output and "net.5    128  48 -> 63" in run.output
    assert not out.exists() and not report.exists()
    forced = runner.invoke(app, ["fix", *SAMPLE, "--swap-activation", "leaky_relu:0.1", "--out", str(out),
                                 "--json", str(report), "--force"])
    assert forced.exit_code == 0, forced.output
    assert "FORCED although: outputs moved by 82.3" in forced.output and out.exists()
    payload = json.loads(report.read_text())
    assert payload["report"]["forced"] and payload["report"]["worse"].startswith("outputs moved by 82.3")
    assert [(d["site"], d["dead_before"], d["dead_after"]) for d in payload["before_after"]] == \
        [("net.1", 53, 53), ("net.3", 38, 18), ("net.5", 48, 63)]


def test_cli_swap_that_does_not_make_things_worse_is_written(runner, tmp_path: Path) -> None:
    out = tmp_path / "swapped.pt2"
    run = runner.invoke(app, ["fix", *SAMPLE, "--swap-activation", "leaky_relu:0.01", "--out", str(out)])
    assert run.exit_code == 0, run.output
    assert "net.5    128  48 -> 48" in run.output and "REFUSED" not in run.output and out.exists()


def test_api_swap_refusal_puts_the_old_activations_back() -> None:
    model, x = _sample_model(), torch.from_numpy(np.load(SAMPLE[1]))
    result = deadrelu.scan(model, x, device="cpu", batch_size=500)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RepairRefused) as refused:
        deadrelu.swap_activations(model, result, "leaky_relu:0.1", data=x)
    assert refused.value.reason == REFUSED_SWAP.removeprefix("swap refused: ").removesuffix("; nothing was written")
    assert [type(model.net[i]) for i in (1, 3, 5)] == [nn.ReLU] * 3
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    effect = refused.value.report.effect
    assert [(d.dead_before, d.dead_after) for d in effect.deltas] == [(53, 53), (38, 18), (48, 63)]
    report = deadrelu.swap_activations(model, result, "leaky_relu:0.1", data=x, force=True)
    assert report.effect.forced and isinstance(model.net[5], nn.LeakyReLU)


def test_api_reinit_refusal_restores_every_tensor() -> None:
    model, x = DeadMLP().eval(), inputs()
    result = deadrelu.scan(model, x, device="cpu")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RepairRefused, match=r"reinit refused: outputs moved by [\d.]+, more than the output scale "
                                            r"[\d.]+; the model was restored") as refused:
        deadrelu.reinit(model, result, "he", data=x)
    check = refused.value.report.check
    assert check.max_abs_diff > check.output_scale > 0
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


# -- nothing to prune ----------------------------------------------------------------------------

def test_prune_that_finds_nothing_writes_nothing_and_exits_0(runner, tmp_path: Path) -> None:
    model_path, data_path = tmp_path / "leaky.pt", tmp_path / "x.npy"
    torch.save(LeakyDead().state_dict(), model_path)
    np.save(data_path, inputs().numpy())
    out, weights = tmp_path / "p.pt2", tmp_path / "p.pt"
    run = runner.invoke(app, ["prune", str(model_path), str(data_path), "--arch", f"{MODELS}:LeakyDead",
                              "--out", str(out), "--state-dict", str(weights)])
    assert run.exit_code == 0, run.output
    assert "nothing to prune: no dead unit can be removed exactly; nothing written" in run.output
    assert "LeakyReLU units are not 0 when inactive" in run.output
    assert not out.exists() and not weights.exists()


# -- --atol and --device ---------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["nan", "-1", "inf"])
@pytest.mark.parametrize("command", [["prune"], ["fix", "--recycle", "dead"]])
def test_a_bad_atol_is_refused_before_any_work(runner, tmp_path: Path, command: list[str], value: str) -> None:
    run = runner.invoke(app, [command[0], str(tmp_path / "missing.pt"), str(tmp_path / "missing.npy"), *command[1:],
                              "--atol", value])
    assert run.exit_code == 2
    assert run.output.splitlines()[0] == f"error: --atol {float(value)}: must be a finite number >= 0"


def test_api_refuses_a_bad_atol() -> None:
    model, x = DeadMLP().eval(), inputs()
    result = deadrelu.scan(model, x, device="cpu")
    for atol in (float("nan"), -1e-5):
        with pytest.raises(ConfigError, match="atol must be a finite number >= 0"):
            deadrelu.prune(model, result, x, atol=atol)
        with pytest.raises(ConfigError, match="atol must be a finite number >= 0"):
            deadrelu.recycle(model, result, data=x, atol=atol)


def test_prune_and_fix_default_to_the_device_scan_defaults_to() -> None:
    from deadrelu import cli
    from deadrelu.commands import repair
    default = inspect.signature(cli.scan).parameters["device"].default
    assert default == "auto"
    assert inspect.signature(repair.prune).parameters["device"].default == default
    assert inspect.signature(repair.fix).parameters["device"].default == default
