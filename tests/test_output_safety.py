"""Reports never overwrite the user's inputs or each other, stale temp files are cleaned up, and
names from a model or a path cannot spoof what the terminal or the HTML shows."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import error_line, make_files, run, scan_files
from deadrelu.cli import app
from deadrelu.render.files import atomic_write_text, temp_path
from deadrelu.render.text import visible
from truth_models import bounded_inputs

@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """The shared model, arch and data files (60 samples) and a config file: four inputs to protect."""
    (tmp_path / "cfg.toml").write_text("[scan]\nbatch_size = 16\n")
    return {**make_files(tmp_path, samples=60), "config": tmp_path / "cfg.toml"}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def no_scan(monkeypatch):
    """Fail the test if the scan starts: every refusal must come before any work."""
    monkeypatch.setattr(sys.modules["deadrelu.scanning"], "scan", lambda *a, **k: pytest.fail("scanned before checking"))


@pytest.mark.parametrize("option, victim", [("--json", "model"), ("--html", "data"), ("--json", "arch"),
                                            ("--html", "config")])
def test_an_output_that_is_an_input_is_refused_and_the_input_kept(runner, files, no_scan, option, victim):
    before = {name: digest(path) for name, path in files.items() if path.is_file()}
    done = scan_files(runner, files, "--config", files["config"], option, files[victim])
    assert done.exit_code == 2, done.output
    line = error_line(done)
    assert f"{option} {files[victim]}" in line and "overwrite" in line
    assert {name: digest(path) for name, path in files.items() if path.is_file()} == before


def test_an_output_reaching_an_input_through_a_symlink_is_refused(runner, files, no_scan):
    link = files["dir"] / "innocent.json"
    link.symlink_to(files["model"])
    before = digest(files["model"])
    done = scan_files(runner, files, "--json", link)
    assert done.exit_code == 2 and "is the input MODEL" in error_line(done)
    assert digest(files["model"]) == before


def test_two_outputs_on_one_path_are_refused(runner, files, no_scan):
    same = files["dir"] / "sub" / ".." / "r.json"
    done = scan_files(runner, files, "--json", files["dir"] / "r.json", "--html", same)
    assert done.exit_code == 2 and "are the same path" in error_line(done)


def test_out_folder_holding_an_input_under_a_report_name_is_refused(runner, files, no_scan):
    out = files["dir"] / "out"
    out.mkdir()
    data = out / "result.json"  # any file can be the data argument; the check runs before loading
    data.write_bytes(files["data"].read_bytes())
    done = run(runner, files["model"], data, "--arch", f"{files['arch']}:build", "--out", out)
    assert done.exit_code == 2 and "is the input DATA" in error_line(done)


def test_png_dir_holding_an_input_with_a_plot_name_is_refused(runner, files, no_scan):
    plots = files["dir"] / "plots"
    plots.mkdir()
    data = plots / "dead_ratio_by_layer.png"
    data.write_bytes(files["data"].read_bytes())
    done = run(runner, files["model"], data, "--arch", f"{files['arch']}:build", "--png-dir", plots)
    assert done.exit_code == 2 and "would overwrite the input DATA" in error_line(done)


@pytest.mark.parametrize("option", ["--png-dir", "--out"])
def test_a_file_given_as_output_folder_is_refused_before_scanning(runner, files, no_scan, option):
    target = files["dir"] / "a_file"
    target.write_text("x")
    done = scan_files(runner, files, option, target)
    assert done.exit_code == 2
    assert "not a folder" in error_line(done)
    assert target.read_text() == "x"


def test_report_refuses_to_overwrite_its_result(runner, files, tmp_path):
    saved = tmp_path / "saved.json"
    assert scan_files(runner, files, "--json", saved, "-q").exit_code == 0
    before = digest(saved)
    done = runner.invoke(app, ["report", str(saved), "--html", str(saved)])
    assert done.exit_code == 2 and "is the input RESULT.json" in error_line(done)
    assert digest(saved) == before


def test_a_killed_write_leaves_no_temp_file_behind_on_the_next_run(tmp_path):
    target = tmp_path / "result.json"
    dead_pid = 2 ** 22 + 12345  # above Linux's pid_max default: never a live process
    stale = temp_path(target, dead_pid)
    stale.write_text("half a report")
    live = temp_path(target, os.getppid())  # another live writer's temp file is not ours to delete
    live.write_text("in progress")
    atomic_write_text(target, "{}\n")
    assert target.read_text() == "{}\n"
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, live.name])


def test_a_scan_cleans_stale_temp_files_at_its_output_path(runner, files):
    target = files["dir"] / "r.json"
    stale = temp_path(target, 2 ** 22 + 777)
    stale.write_text("{")
    assert scan_files(runner, files, "--json", target, "-q").exit_code == 0
    assert not stale.exists() and target.exists()


# -- spoofing ---------------------------------------------------------------------------------------

SPOOF = "act\u202egnp_exe"  # U+202E RIGHT-TO-LEFT OVERRIDE (module names cannot hold a dot)


def test_visible_escapes_bidi_zero_width_and_controls_and_keeps_ordinary_text():
    assert visible("layer1.0.relu#1") == "layer1.0.relu#1"
    assert visible("Ünïcødé ok 层") == "Ünïcødé ok 层"
    assert visible(SPOOF) == "act\\u202egnp_exe"
    assert visible("a\u200bb\x1b[31mc\nd") == "a\\u200bb\\x1b[31mc\\x0ad"
    assert visible("x\ny", keep_newlines=True) == "x\ny"


def test_spoofing_module_names_are_shown_escaped_in_terminal_and_html(runner, tmp_path):
    model = nn.Sequential()
    model.add_module("fc", nn.Linear(10, 6))
    model.add_module(SPOOF, nn.ReLU())
    with torch.no_grad():
        model.fc.bias[:2] = -100.0
    (tmp_path / "arch.py").write_text(
        "from torch import nn\n"
        "def build():\n"
        "    m = nn.Sequential()\n"
        "    m.add_module('fc', nn.Linear(10, 6))\n"
        f"    m.add_module({SPOOF!r}, nn.ReLU())\n"
        "    return m\n")
    torch.save(model.state_dict(), tmp_path / "m.pt")
    np.save(tmp_path / "d.npy", bounded_inputs(40, 10).numpy())
    html = tmp_path / "r.html"
    done = run(runner, tmp_path / "m.pt", tmp_path / "d.npy", "--arch", f"{tmp_path / 'arch.py'}:build", "--html", html)
    assert done.exit_code == 0, done.output
    assert "\u202e" not in done.stdout and "act\\u202egnp_exe" in done.stdout
    page = html.read_text(encoding="utf-8")
    assert "\u202e" not in page and "act\\u202egnp_exe" in page
