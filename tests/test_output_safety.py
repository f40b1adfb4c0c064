"""Reports never overwrite the user's inputs or each other, stale temp files are cleaned up, and
names from a model or a path cannot spoof what the terminal or the HTML shows."""

from __future__ import annotations

import hashlib
import json
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
    import deadrelu.scanning  # imported here too: run alone, this file would find it not yet imported
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


#: a process killed (SIGKILL) in the middle of an atomic write: after its temp file is made, before the rename
KILLED_WRITER = """
import os, sys
from pathlib import Path
from deadrelu.render import files
os.replace = lambda *args: os.kill(os.getpid(), 9)
files.atomic_write_text(Path(sys.argv[1]), "half a report")
"""


def killed_write(target: Path) -> Path:
    """Run a writer to ``target`` that is killed mid-write; return the temp file it left behind."""
    import subprocess
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get(
        "PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], env=env, capture_output=True)
    assert done.returncode == -9, done.stderr
    (left,) = target.parent.glob(f".{target.name}.deadrelu-*.tmp")
    assert left.read_text() == "half a report"
    return left


def test_a_killed_write_leaves_no_temp_file_behind_on_the_next_run(tmp_path, monkeypatch):
    monkeypatch.setenv("DEADRELU_CACHE_DIR", str(tmp_path / "cache"))
    target = tmp_path / "out" / "result.json"
    target.parent.mkdir()
    stale = killed_write(target)
    live = temp_path(target, os.getppid())  # another live writer's temp file is not ours to delete
    live.write_text("in progress")
    atomic_write_text(target, "{}\n")
    assert target.read_text() == "{}\n"
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([target.name, live.name])
    assert list((tmp_path / "cache" / "temps").iterdir()) == []  # the killed writer's record went with its file


def test_a_scan_cleans_stale_temp_files_at_its_output_path(runner, files):
    target = files["dir"] / "r.json"
    stale = killed_write(target)
    assert scan_files(runner, files, "--json", target, "-q").exit_code == 0
    assert not stale.exists() and target.exists()


GONE = 2 ** 22 + 12345  # above Linux's pid_max default: never a live process


@pytest.mark.parametrize("name", [f".x.json.deadrelu-{GONE}.tmp",  # the look-alike of issue 18
                                  f".x.json.deadrelu-{GONE}-0123abcd.tmp"])  # today's exact temp name
def test_a_file_that_only_looks_like_a_stale_temp_file_is_never_deleted(runner, files, name):
    # A user's file named like our temp files (here the --config of this very scan), whose
    # "writer" is gone: the registry holds no record that deadrelu made it, so it stays.
    target = files["dir"] / "x.json"
    config = files["dir"] / name
    config.write_text("[scan]\nbatch_size = 16\n")
    done = scan_files(runner, files, "--config", config, "--json", target, "-q")
    assert done.exit_code == 0, done.output
    assert config.read_text() == "[scan]\nbatch_size = 16\n"
    assert json.loads(target.read_text())["settings"]["batch_size"] == 16


def test_a_stale_temp_file_replaced_by_another_file_is_not_deleted(tmp_path, monkeypatch):
    # The record names the temp's device and inode: a different file put at that path is not ours.
    monkeypatch.setenv("DEADRELU_CACHE_DIR", str(tmp_path / "cache"))
    target = tmp_path / "result.json"
    stale = killed_write(target)
    own = tmp_path / "own.txt"
    own.write_text("the user's own file")  # made while the stale temp exists: another inode
    os.replace(own, stale)
    atomic_write_text(target, "{}\n")
    assert stale.read_text() == "the user's own file"


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
