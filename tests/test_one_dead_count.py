"""One meaning of "dead" in every output: units that never activate on a kind with no gradient for
negative inputs. A LeakyReLU site with 8 never-active units of 32 (bias -100 on exactly those 8)
has 0 dead units in the table, the JSON, the CI gate, Markdown, JUnit, the monitor log and the
rescan after a repair; its 8 units are "never active" everywhere, and listed as such.

(Before: the table said 0 dead and "Nothing to fix" while the gate failed on "8 of 32 units dead".)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import deadrelu
from deadrelu.cli import app
from deadrelu.judge.gate import check_gate
from deadrelu.repair.verify import scan_deltas
from truth_models import bounded_inputs

ARCH = """
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), {activation}, nn.Linear(32, 4))
    with torch.no_grad():
        model[0].bias[:8] = -100.0   # |w.x| <= 16 * 1 * 0.25 = 4 on inputs in [-1, 1]: exactly 8 never fire
    return model
"""


def build(activation: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), activation, nn.Linear(32, 4))
    with torch.no_grad():
        model[0].bias[:8] = -100.0
    return model


@pytest.fixture()
def leaky_files(tmp_path: Path) -> dict[str, Path]:
    arch = tmp_path / "arch.py"
    arch.write_text(ARCH.format(activation="nn.LeakyReLU(0.1)"))
    data = tmp_path / "x.npy"
    np.save(data, bounded_inputs(200, 16).numpy())
    return {"arch": arch, "data": data}


@pytest.mark.parametrize("activation", [nn.LeakyReLU(0.1), nn.PReLU(32), nn.RReLU()])
def test_never_active_leaky_units_are_not_dead_in_the_result(activation: nn.Module) -> None:
    result = deadrelu.scan(build(activation).eval(), bounded_inputs(200, 16))
    site = result.sites[0]
    assert (site.dead, site.never_active, site.never_fired) == (0, 8, 8)
    assert site.dead_units == [] and site.never_active_units == list(range(8))
    assert (result.summary.dead, result.summary.dead_ratio, result.summary.never_active) == (0, 0.0, 8)
    data = result.to_dict()
    assert (data["summary"]["dead"], data["summary"]["never_active"]) == (0, 8)
    assert data["sites"][0]["dead_units"] == [] and data["sites"][0]["never_active_units"] == list(range(8))
    assert check_gate(result, max_dead_ratio=0.1, max_layer_dead_ratio=0.1).passed
    frame = result.units_frame(0)
    assert int(frame["dead"].sum()) == 0 and int(frame["never_active"].sum()) == 8


def test_relu_units_stay_dead_everywhere() -> None:
    result = deadrelu.scan(build(nn.ReLU()).eval(), bounded_inputs(200, 16))
    site = result.sites[0]
    assert (site.dead, site.never_active, site.never_fired) == (8, 0, 8)
    outcome = check_gate(result, max_dead_ratio=0.1)
    assert not outcome.passed and outcome.violations[0].dead_ratio == 0.25


def test_cli_table_gate_markdown_and_junit_agree_on_a_leaky_model(runner, leaky_files, tmp_path: Path) -> None:
    md, junit, report = tmp_path / "s.md", tmp_path / "j.xml", tmp_path / "r.json"
    run = runner.invoke(app, ["scan", "--model", f"{leaky_files['arch']}:build", str(leaky_files["data"]),
                              "--max-dead-ratio", "0.1", "--max-layer-dead-ratio", "0.1", "--markdown", str(md),
                              "--junit", str(junit), "--json", str(report)], env={"COLUMNS": "100"})
    assert run.exit_code == 0, run.output  # the gate passes: nothing is dead
    assert "0 of 32 units dead" in run.output and "8 never active" in run.output
    assert "Gate FAILED" not in run.output
    assert md.read_text().startswith("### deadrelu: 0 of 32 units dead (0.0%)")
    assert 'failures="0"' in junit.read_text()
    payload = json.loads(report.read_text())
    assert payload["summary"]["dead"] == 0 and payload["summary"]["never_active"] == 8
    assert payload["gate"]["passed"] is True


def test_show_units_lists_never_active_units_apart(runner, leaky_files) -> None:
    run = runner.invoke(app, ["scan", "--model", f"{leaky_files['arch']}:build", str(leaky_files["data"]),
                              "--show-units"], env={"COLUMNS": "100"})
    assert run.exit_code == 0, run.output
    assert "1 never active (leaky) [8]: 0–7" in run.output
    assert "1 dead [" not in run.output


def test_rescan_after_a_swap_counts_never_active_apart_and_hides_clean_sites() -> None:
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    torch.manual_seed(0)
    with torch.no_grad():
        model[0].bias[:8] = -100.0
    x = bounded_inputs(200, 16)
    before = deadrelu.scan(model.eval(), x)
    swapped = nn.Sequential(*[nn.LeakyReLU(0.01) if isinstance(m, nn.ReLU) and i == 1 else m
                              for i, m in enumerate(model)])
    after = deadrelu.scan(swapped.eval(), x)
    first, second = scan_deltas(before, after)
    assert (first.dead_before, first.dead_after, first.never_active_after) == (8, 0, 8)
    assert second.dead_before == before.sites[1].dead
    from rich.console import Console

    from deadrelu.render.repair import deltas_table
    console = Console(width=100, record=True)
    console.print(deltas_table((first, *[type(first)(f"clean{k}", 32, 32, 0, 0, 5, 5) for k in range(40)])))
    text = console.export_text()
    assert "8 -> 0" in text and "0 -> 8" in text and "never active" in text
    assert "clean0" not in text and "40 other site(s): no dead or never-active units before or after" in text


def test_lines_name_stuck_units_by_what_they_are() -> None:
    from deadrelu.judge.overall import problem_word
    leaky = deadrelu.scan(build(nn.LeakyReLU(0.1)).eval(), bounded_inputs(200, 16))
    relu = deadrelu.scan(build(nn.ReLU()).eval(), bounded_inputs(200, 16))
    elu = deadrelu.scan(build(nn.ELU()).eval(), bounded_inputs(200, 16))
    assert (problem_word(leaky.sites), problem_word(relu.sites), problem_word(elu.sites)) == \
        ("never active", "dead", "saturated")
    assert problem_word([*relu.sites, *leaky.sites, *elu.sites]) == "dead, never active or saturated"
    for result, word in ((leaky, "never active"), (relu, "dead")):
        line = next(s["action_line"] for s in result.suggestions if s["cause"] == "bias")
        assert line.endswith(f"→ explains 8 of 8 {word} at 1"), line
