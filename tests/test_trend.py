"""deadrelu trend: three checkpoints with known dead sets, ordering, monitor logs, the heat map."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn

from deadrelu.cli import app
from deadrelu.errors import ModelLoadError
from deadrelu.history import Trend, read_log, step_of
from deadrelu.monitor import Monitor
from deadrelu.render import trend as trend_render
from deadrelu.trend import checkpoint_files, scan_checkpoints
from truth_models import bounded_inputs

ARCH = """
from torch import nn

def build():
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 1))
"""
#: step -> dead units of site "1" (16 units) and site "3" (8 units)
DEAD = {200: ([], []), 1000: ([1, 2], []), 1500: ([1, 2, 3, 4, 5, 6, 7, 8], [0, 1])}


def build() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 1))
    with torch.no_grad():
        model[0].bias.fill_(5.0)
        model[2].weight.uniform_(0.01, 0.1)
        model[2].bias.fill_(5.0)
    return model


@pytest.fixture
def run(tmp_path: Path) -> dict[str, Path]:
    """Checkpoints step_200/1000/1500 (state_dicts) with the DEAD units, an arch file, bounded data."""
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for step, (dead1, dead3) in DEAD.items():
        model = build()
        with torch.no_grad():
            model[0].weight[dead1] = 0.0
            model[0].bias[dead1] = -100.0
            model[2].weight[dead3] = 0.0
            model[2].bias[dead3] = -100.0
        torch.save(model.state_dict(), folder / f"step_{step}.pt")
    (folder / "notes.txt").write_text("not a checkpoint")
    (tmp_path / "arch.py").write_text(ARCH)
    np.save(tmp_path / "data.npy", bounded_inputs(100, 4).numpy())
    return {"dir": tmp_path, "ckpts": folder, "arch": tmp_path / "arch.py", "data": tmp_path / "data.npy"}


def test_step_numbers_from_file_names() -> None:
    assert [step_of(n) for n in ("step_000200.pt", "epoch=3-step=1500.ckpt", "checkpoint-500", "final.pt")] == \
        [200, 1500, 500, None]


def test_folder_and_glob_sort_by_step_given_order_is_kept(run) -> None:
    names = lambda paths: [p.name for p in paths]  # noqa: E731
    files, notes = checkpoint_files([run["ckpts"]])
    assert names(files) == ["step_200.pt", "step_1000.pt", "step_1500.pt"] and notes == []
    files, _ = checkpoint_files([str(run["ckpts"] / "step_*.pt")])
    assert names(files) == ["step_200.pt", "step_1000.pt", "step_1500.pt"]
    given = [run["ckpts"] / "step_1000.pt", run["ckpts"] / "step_1500.pt", run["ckpts"] / "step_200.pt"]
    files, notes = checkpoint_files(given)  # what an unquoted shell glob hands over
    assert files == given
    assert len(notes) == 1 and "not the order of the step numbers" in notes[0]
    with pytest.raises(ModelLoadError, match="matches no file"):
        checkpoint_files([str(run["ckpts"] / "nothing_*.pt")])


def test_trend_over_three_checkpoints_has_the_known_dead_sets(run) -> None:
    files, _ = checkpoint_files([run["ckpts"]])
    results = scan_checkpoints(files, run["data"], arch=f"{run['arch']}:build")
    for result, (dead1, dead3) in zip(results, DEAD.values()):
        assert result.site("1").verdict.dead_units == dead1
        assert result.site("3").verdict.dead_units == dead3
    trend = Trend.from_results(results, [str(f) for f in files])
    assert trend.steps == (200, 1000, 1500) and trend.sites == ("1", "3")
    assert trend.dead.tolist() == [[0, 2, 8], [0, 0, 2]]
    assert trend.dead_ratio.tolist() == [[0, 2 / 16, 0.5], [0, 0, 0.25]]
    assert trend.total_dead_ratio.tolist() == [0, 2 / 24, 10 / 24]
    assert trend.worst_sites(5) == [0, 1]


def test_cli_trend_json_table_and_plots(runner, run) -> None:
    out_dir = run["dir"] / "out"
    result = runner.invoke(app, ["trend", str(run["ckpts"]), str(run["data"]), "--arch", f"{run['arch']}:build",
                                 "--json", str(out_dir / "trend.json"), "--html", str(out_dir / "trend.html"),
                                 "--png-dir", str(out_dir / "png")])
    assert result.exit_code == 0, result.output
    points = json.loads((out_dir / "trend.json").read_text())["points"]
    assert [p["schema_version"] for p in points] == [1, 1, 1]
    assert [p["model"]["source"].rsplit("/", 1)[-1] for p in points] == ["step_200.pt", "step_1000.pt",
                                                                         "step_1500.pt"]
    assert [[s["dead_units"] for s in p["sites"]] for p in points] == [list(v) for v in DEAD.values()]
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line.strip()}
    assert rows["1"] == ["0", "12.5%", "50.0%"]
    assert rows["3"] == ["0", "0", "25.0%"]
    assert "1.5k = " in result.stdout and "step_1500.pt" in result.stdout
    html = (out_dir / "trend.html").read_text()
    assert html.count("<img") == 2 and "Content-Security-Policy" in html
    assert sorted(p.name for p in (out_dir / "png").iterdir()) == ["trend_heatmap.png", "trend_worst_sites.png"]


def test_heat_map_labels_every_site_and_point(run) -> None:
    files, _ = checkpoint_files([run["ckpts"]])
    trend = Trend.from_results(scan_checkpoints(files, run["data"], arch=f"{run['arch']}:build"),
                               [str(f) for f in files])
    figure = trend_render.heat_map(trend)
    axis = figure.axes[0]
    assert [t.get_text() for t in axis.get_yticklabels()] == ["1", "3"]
    assert [t.get_text() for t in axis.get_xticklabels()] == ["200", "1000", "1500"]
    mesh = axis.collections[0]
    assert np.ma.getdata(mesh.get_array()).reshape(2, 3).tolist() == trend.dead_ratio.tolist()
    assert {t.get_text() for t in axis.texts} >= {"50.0%", "25.0%", "12.5%"}
    worst = trend_render.worst_sites(trend)
    assert [line.get_label() for line in worst.axes[0].get_lines()] == ["1", "3", "all sites"]


def test_table_fits_80_columns_with_many_points() -> None:
    names = [f"layer{k}.block.relu" for k in range(6)]
    points = [[(name, "ReLU", 10, min(10, k * p // 4)) for k, name in enumerate(names)] for p in range(30)]
    steps = [p * 1000 for p in range(30)]
    trend = Trend._build(points, [f"runs/exp/checkpoints/step_{s:07d}.pt" for s in steps], steps, "checkpoints")
    console = Console(width=80, record=True, no_color=True)
    console.print(trend_render.trend_table(trend, width=80))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "of 30 points shown" in text
    header = next(line for line in text.splitlines() if line.lstrip().startswith("site"))
    assert header.split()[1] == "0" and header.split()[-1] == "29k"  # first and last point kept


def test_trend_of_a_monitor_log(runner, tmp_path: Path) -> None:
    model = build()
    log = tmp_path / "run" / "deadrelu.jsonl"
    monitor = Monitor(model, probe=bounded_inputs(60, 4), every=10, log=log)
    for step in range(25):
        if step == 12:
            with torch.no_grad():
                model[0].weight[[4, 5]] = 0.0
                model[0].bias[[4, 5]] = -100.0
        monitor.step(step)
    monitor.close()
    trend = Trend.from_records(read_log(log))
    assert trend.steps == (0, 10, 20) and trend.dead.tolist() == [[0, 0, 2], [0, 0, 0]]
    result = runner.invoke(app, ["trend", str(log), "--json", str(tmp_path / "t.json")])
    assert result.exit_code == 0, result.output
    assert "columns: training step" in result.stdout
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line.strip()}
    assert rows["1"] == ["0", "0", "12.5%"]
    assert [p["step"] for p in json.loads((tmp_path / "t.json").read_text())["points"]] == [0, 10, 20]


def test_cli_trend_usage_errors(runner, run, tmp_path: Path) -> None:
    one = runner.invoke(app, ["trend", str(run["ckpts"] / "step_200.pt")])
    assert one.exit_code == 2 and "expected checkpoints then DATA" in one.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    none = runner.invoke(app, ["trend", str(empty), str(run["data"]), "--arch", f"{run['arch']}:build"])
    assert none.exit_code == 2 and "no checkpoint file" in none.stderr
    shutil.copy(run["data"], tmp_path / "log.jsonl")
    mixed = runner.invoke(app, ["trend", str(tmp_path / "log.jsonl"), str(run["data"])])
    assert mixed.exit_code == 2 and "rendered on its own" in mixed.stderr
    binary = runner.invoke(app, ["trend", str(tmp_path / "log.jsonl")])
    assert binary.exit_code == 2 and "log.jsonl is not a deadrelu monitor log (not UTF-8 text)" in binary.stderr
    (tmp_path / "log.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    other = runner.invoke(app, ["trend", str(tmp_path / "log.jsonl")])
    assert other.exit_code == 2 and re.search(r"log.jsonl:1 is not a deadrelu monitor record", other.stderr)
    (tmp_path / "log.jsonl").write_text("")
    empty_log = runner.invoke(app, ["trend", str(tmp_path / "log.jsonl")])
    assert empty_log.exit_code == 2 and "holds no record yet" in empty_log.stderr


def test_table_keeps_the_point_where_units_died() -> None:
    # 30 points; all units of one site die at point 13, which an even spread of 7 columns would skip.
    # The site column is as wide as "all sites" (9): (80 - 9 - 2) // 7 = 9 point columns fit.
    points = [[("fc.relu", "ReLU", 10, 10 if p >= 13 else 0)] for p in range(30)]
    steps = [p * 100 for p in range(30)]
    trend = Trend._build(points, [f"step_{s}.pt" for s in steps], steps, "checkpoints")
    assert 13 not in [int(round(k)) for k in np.linspace(0, 29, 7)]
    shown = trend_render.shown_points(trend, 80)
    assert {0, 12, 13, 29} <= set(shown) and len(shown) == 9
