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
# After the swap every unit keeps a gradient: the units that never fire are "never active", not dead
# (the rescan used to say "dead units rose at net.5 48 -> 63" of LeakyReLU units, which the scan itself calls not dead).
REFUSED_SWAP = "swap refused: outputs moved by 82.3, more than the output scale 15.8; nothing was written"


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
    assert "would swap 3 activation module(s)" in run.output and "net.5    128  48 -> 0       0 -> 63   66 -> 3" in run.output
    assert not out.exists() and not report.exists()
    forced = runner.invoke(app, ["fix", *SAMPLE, "--swap-activation", "leaky_relu:0.1", "--out", str(out),
                                 "--json", str(report), "--force"])
    assert forced.exit_code == 0, forced.output
    assert "FORCED although: outputs moved by 82.3" in forced.output and out.exists()
    payload = json.loads(report.read_text())
    assert payload["report"]["forced"] and payload["report"]["worse"].startswith("outputs moved by 82.3")
    assert [(d["site"], d["dead_before"], d["dead_after"], d["never_active_after"]) for d in payload["before_after"]] == \
        [("net.1", 53, 0, 53), ("net.3", 38, 0, 18), ("net.5", 48, 0, 63)]


def test_cli_swap_that_does_not_make_things_worse_is_written(runner, tmp_path: Path) -> None:
    out = tmp_path / "swapped.pt2"
    run = runner.invoke(app, ["fix", *SAMPLE, "--swap-activation", "leaky_relu:0.01", "--out", str(out)])
    assert run.exit_code == 0, run.output
    assert "net.5    128  48 -> 0       0 -> 48  66 -> 61" in run.output and "REFUSED" not in run.output and out.exists()


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
    assert [(d.dead_before, d.dead_after, d.never_active_after) for d in effect.deltas] == \
        [(53, 0, 53), (38, 0, 18), (48, 0, 63)]
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


# -- held-out data (--verify-data) --------------------------------------------------------------------

def test_api_verify_data_counts_removed_units_that_fire_there() -> None:
    from repair_models import ShiftMLP, shifted_inputs
    model, x = ShiftMLP().eval(), inputs(features=4)
    result = deadrelu.scan(model, x, device="cpu")
    assert [(s.name, s.verdict.dead_units) for s in result.sites] == [("1", [0, 1])]
    with pytest.raises(RepairRefused, match=r"prune refused: 1 of 2 removed unit\(s\) fire on the given Tensor of "
                                            r"shape \(50, 4\) \(50 samples\): outputs there moved by 0\.7 "):
        deadrelu.prune(model, result, x, verify_data=shifted_inputs())
    pruned, report = deadrelu.prune(model, result, x, verify_data=shifted_inputs(), force=True)
    held = report.effect.held_out
    assert held is not None and (held.firing, held.changed, held.check.samples) == (1, 2, 50)
    assert report.effect.forced and report.warnings[0].startswith("1 of the 2 removed unit(s) fire on")
    # The same distribution as the scan: nothing fires, nothing moves.
    pruned, report = deadrelu.prune(model, result, x, verify_data=inputs(50, features=4, seed=9))
    held = report.effect.held_out
    assert held is not None and (held.firing, held.check.max_abs_diff) == (0, 0.0) and report.effect.worse is None
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RepairRefused, match=r"recycle refused: 1 of 2 recycled unit\(s\) fire on"):
        deadrelu.recycle(model, result, data=x, verify_data=shifted_inputs())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.fixture
def shift_files(tmp_path: Path) -> dict[str, Path]:
    from repair_models import ShiftMLP, shifted_inputs
    files = {"model": tmp_path / "shift.pt", "data": tmp_path / "x.npy", "held": tmp_path / "held.npy",
             "same": tmp_path / "same.npy"}
    torch.save(ShiftMLP().state_dict(), files["model"])
    np.save(files["data"], inputs(features=4).numpy())
    np.save(files["held"], shifted_inputs().numpy())
    np.save(files["same"], inputs(50, features=4, seed=9).numpy())
    return files


@pytest.mark.parametrize("command", [["prune"], ["fix", "--recycle", "dead"]])
def test_cli_verify_data_refuses_when_removed_units_fire_there(runner, shift_files, tmp_path: Path,
                                                               command: list[str]) -> None:
    out = tmp_path / ("p.pt2" if command[0] == "prune" else "r.pt")
    args = [command[0], str(shift_files["model"]), str(shift_files["data"]), "--arch", f"{MODELS}:ShiftMLP",
            *command[1:], "--out", str(out)]
    noun = "removed" if command[0] == "prune" else "recycled"
    run = runner.invoke(app, [*args, "--verify-data", str(shift_files["held"])])
    assert run.exit_code == 2 and not out.exists()
    error = next(line for line in run.output.splitlines() if line.startswith("error:"))
    assert error == (f"error: {'prune' if command[0] == 'prune' else 'recycle'} refused: 1 of 2 {noun} unit(s) fire "
                     f"on {shift_files['held']} (50 samples): outputs there moved by 0.7 (allowed: 1e-05 x output "
                     "scale 9.4); nothing was written")
    flat = " ".join(run.output.split())  # long paths wrap in the report
    assert f"held-out check on {shift_files['held']}: 1 of 2 changed unit(s) fire there" in flat
    run = runner.invoke(app, [*args, "--verify-data", str(shift_files["held"]), "--force"])
    assert run.exit_code == 0 and out.exists(), run.output
    out.unlink()
    run = runner.invoke(app, [*args, "--verify-data", str(shift_files["same"])])
    assert run.exit_code == 0 and out.exists(), run.output
    assert f"held-out check on {shift_files['same']}: 0 of 2 changed unit(s) fire there; outputs moved by at " \
           "most 0 on 50 samples" in " ".join(run.output.split())


def test_cli_verify_data_is_for_prune_and_recycle(runner, shift_files) -> None:
    run = runner.invoke(app, ["fix", str(shift_files["model"]), str(shift_files["data"]), "--arch",
                              f"{MODELS}:ShiftMLP", "--swap-activation", "elu", "--verify-data",
                              str(shift_files["held"])])
    assert run.exit_code == 2 and "--verify-data applies to --recycle (and to prune)" in run.output


class _ReusedReLU(nn.Module):
    """One in-place ReLU called twice per forward; only its first call has dead units (bias -100 on 4)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.out = nn.Linear(10, 16), nn.Linear(16, 16), nn.Linear(16, 2)
        self.relu = nn.ReLU(inplace=True)
        with torch.no_grad():
            self.fc1.bias[:4] = -100.0
            self.fc2.bias.fill_(5.0)  # every unit of the second call fires

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.relu(self.fc2(self.relu(self.fc1(x)))))


def test_a_swap_that_changes_nothing_says_so_and_its_lines_hang_under_their_start() -> None:
    from rich.console import Console

    from deadrelu.render.repair import swap_report
    model, x = _ReusedReLU().eval(), inputs()
    result = deadrelu.scan(model, x)
    report = deadrelu.swap_activations(model, result, "leaky_relu:0.01", data=x)
    assert report.swapped == () and isinstance(model.relu, nn.ReLU)
    console = Console(width=80, record=True)
    console.print(swap_report(report))
    lines = console.export_text().splitlines()
    assert "check: not needed (nothing was changed)" in lines  # not "not run (no data)": data was given
    start = next(k for k, line in enumerate(lines) if line.startswith("  relu#0: left alone: "))
    assert lines[start + 1].startswith("    ") and all(len(line) <= 80 for line in lines), lines
