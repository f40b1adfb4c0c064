"""One verdict that means what it says (issue 20): a third of a network without gradient is FAIL, the
JSON carries ``summary.verdict``, ``scan --fail-on`` makes it the exit code, never-active units of
leaky kinds are counted one way in every view, and the bundled sample's headline names its cause."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import deadrelu
from conftest import report_of, run, scan_files
from deadrelu.judge.overall import Level, overall, worst_sites
from truth_models import bounded_inputs

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_models"


def stack(dead_per_layer: list[int], width: int = 30) -> nn.Sequential:
    """Linear + ReLU layers of ``width``; layer k has bias -100 on its first dead_per_layer[k] units."""
    layers: list[nn.Module] = []
    previous = 10
    for dead in dead_per_layer:
        linear = nn.Linear(previous, width)
        with torch.no_grad():
            linear.bias.fill_(0.5)
            linear.bias[:dead] = -100.0
        layers += [linear, nn.ReLU()]
        previous = width
    return nn.Sequential(*layers, nn.Linear(width, 1))


@pytest.mark.parametrize("dead, level", [
    ([10, 10, 10], "fail"),   # every layer a third dead, none over half: a third of the network, FAIL
    ([9, 9, 9], "warn"),      # 30 %: every site over a fifth, the model under a third
    ([16, 0, 0], "fail"),     # one site over half
    ([5, 0, 0], "ok"),        # 17 % at one site: healthy training leaves as much
    ([0, 0, 0], "ok"),
])
def test_the_verdict_is_calibrated_on_the_share_without_gradient(dead, level):
    model = stack(dead)
    result = deadrelu.scan(model, bounded_inputs(100, 10))
    assert [site.dead for site in result.sites] == dead
    assert overall(result).verdict == level
    assert result.to_dict(unit_stats=False)["summary"]["verdict"] == level
    if level == "ok":
        assert [s["id"] for s in result.suggestions if s["severity"] != "info"] == []
    else:
        assert any(s["severity"] == ("critical" if level == "fail" else "warning") for s in result.suggestions)


def test_summary_verdict_is_in_the_schema_and_round_trips(tmp_path):
    from deadrelu.schema import validate_result
    result = deadrelu.scan(stack([10, 10, 10]), bounded_inputs(100, 10))
    data = json.loads(result.to_json())
    validate_result(data, "r.json")
    assert data["summary"]["verdict"] == "fail"
    assert all(s["cause"] in (None, "learning-rate", "bias", "init", "input-scale", "upstream", "batchnorm",
                              "zero-weights", "activation") for s in data["suggestions"])
    data["summary"]["verdict"] = "amber"
    from deadrelu.errors import ResultFormatError
    with pytest.raises(ResultFormatError, match="summary.verdict"):
        validate_result(data, "r.json")
    data["summary"]["verdict"] = "fail"
    data["suggestions"][0]["cause"] = "gremlins"
    with pytest.raises(ResultFormatError, match=r"suggestions\[0\].cause"):
        validate_result(data, "r.json")


@pytest.mark.parametrize("fail_on, code", [(None, 0), ("never", 0), ("fail", 1), ("warn", 1)])
def test_fail_on_makes_a_fail_verdict_the_exit_code(runner, files, fail_on, code):
    # files: 8 of 32 dead at one site = 25 %: WARN; made FAIL by 20 dead below.
    torch.save(stack([20], width=32)[:2].state_dict() | {"2.weight": torch.zeros(1, 32), "2.bias": torch.zeros(1)},
               files["model"])
    args = [] if fail_on is None else ["--fail-on", fail_on]
    done = scan_files(runner, files, *args)
    assert done.exit_code == code, done.output
    assert done.stdout.startswith("FAIL")


@pytest.mark.parametrize("fail_on, code", [("fail", 0), ("warn", 1), ("never", 0)])
def test_fail_on_warn_trips_on_a_warn_verdict_too(runner, files, fail_on, code):
    done = scan_files(runner, files, "--fail-on", fail_on)   # 8 of 32 dead: WARN
    assert done.exit_code == code, done.output
    assert done.stdout.startswith("WARN")


def test_a_failed_gate_still_exits_1_without_fail_on(runner, files):
    assert scan_files(runner, files, "--max-dead-ratio", "0.1").exit_code == 1


# -- never-active units of leaky kinds: one count everywhere -----------------------------------------

class MixedHead(nn.Module):
    """Three ReLU layers with 1 dead unit each (3 %), then a LeakyReLU head with 237 of 256 never active."""

    def __init__(self) -> None:
        super().__init__()
        self.body = stack([1, 1, 1])[:-1]
        self.head = nn.Linear(30, 256)
        self.act = nn.LeakyReLU(0.1)
        with torch.no_grad():
            self.head.bias.fill_(0.5)
            self.head.bias[:237] = -100.0

    def forward(self, x):
        return self.act(self.head(self.body(x)))


@pytest.fixture(scope="module")
def mixed():
    torch.manual_seed(0)
    model = MixedHead()
    return model, deadrelu.scan(model, bounded_inputs(100, 10))


def test_a_mostly_never_active_leaky_head_sorts_above_sites_at_3_percent(mixed):
    _, result = mixed
    assert [site.dead for site in result.sites] == [1, 1, 1, 0]
    assert [site.never_active for site in result.sites] == [0, 0, 0, 237]
    assert worst_sites(result)[0].name == "act"
    from deadrelu.render.console import layer_table
    table = layer_table(result, limit=2)
    assert table.columns[0]._cells[0] == "act"


def test_dead_in_the_headline_is_dead_in_the_suggestions_trend_and_diff(mixed):
    model, result = mixed
    verdict = overall(result)
    assert (verdict.dead, verdict.never_active) == (3, 237) and verdict.level is Level.OK
    healthy = next(s for s in result.suggestions if s["id"] == "healthy")
    assert healthy["evidence"]["dead"] == 3 and healthy["evidence"]["never_active"] == 237
    assert healthy["title"].startswith(f"Nothing to fix: 3 of {verdict.units} units dead")
    from deadrelu.history import Trend
    trend = Trend.from_results([result], ["step-1.pt"])
    assert float(trend.total_dead_ratio[0]) == pytest.approx(verdict.dead_ratio)
    from deadrelu.compare import diff
    with torch.no_grad():
        model.head.bias[237:240] = -100.0      # 3 more never active on the leaky head: not newly dead
        model.body[0].bias[1] = -100.0         # 1 more dead ReLU unit: newly dead
    changed = diff(result, deadrelu.scan(model, bounded_inputs(100, 10)))
    assert changed.newly_dead == 1
    assert next(s for s in changed.sites if s.name == "act").dead_new == 0


def test_the_unit_map_of_a_leaky_site_says_never_active(mixed):
    import matplotlib
    matplotlib.use("Agg")
    from deadrelu.render.plots import unit_map
    _, result = mixed
    figure = unit_map(result, "act")
    assert "237 of 256 never active (leaky)" in figure.axes[0].get_title(loc="left")


# -- the bundled sample -------------------------------------------------------------------------------

def test_the_sample_headline_at_80_columns_is_the_learning_rate(runner):
    args = [SAMPLE / "mlp_high_lr.pt", SAMPLE / "mlp_data.npy", "--arch", f"{SAMPLE / 'archs.py'}:HighLrMLP"]
    from deadrelu.cli import app
    done = runner.invoke(app, ["scan", *map(str, args)], env={"COLUMNS": "80"})
    assert done.exit_code == 0, done.output
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]
    assert lines[0] == "FAIL  worst site net.1: 53 of 128 dead (41.4%)"
    assert lines[2] == "  Cause: learning rate too high — explains 139 of 139 dead units (#1)"
    # issue 22: the suggestion line is the action (where: what to do → what it explains), wrapped under itself
    start = lines.index("  #1  CRIT  optimizer: lower the learning rate 10× and recycle the dead units")
    assert lines[start + 1:start + 3] == ["            (53 biases thrown to -14.17) → explains 139 of 139 dead at net.1,",
                                          "            net.3, net.5"]
    data = report_of(runner, *args)
    top = data["suggestions"][0]
    assert top["cause"] == "learning-rate" and top["rank"] == 1 and top["units_explained"] == 139
    assert data["summary"]["verdict"] == "fail"
    assert set(top["evidence"]["per_layer"]) == {"net.0", "net.2", "net.4"}


def test_the_html_verdict_card_and_the_notebook_name_the_same_cause():
    from deadrelu.render import html as html_render
    from deadrelu.render.notebook import result_html
    from truth_models import linear_with_dead_units
    result = deadrelu.scan(linear_with_dead_units(dead=8, width=32), bounded_inputs(100, 10))
    sentence = "negative biases hold units below zero — explains 8 of 8 dead units (#1)"
    assert f"<b>Cause:</b> {sentence}" in html_render.report(result, plots=False)
    view = result_html(result)
    # issue 22: the notebook lists each suggestion by its action line (what it explains is in it)
    assert f"<b>Cause:</b> {sentence}" in view and "0: reset 8 negative biases to 0 → explains 8 of 8 dead at 1" in view
    assert "(cause: bias)" in view
