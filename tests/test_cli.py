"""The CLI through typer's CliRunner: exit codes, JSON contract, one-line errors."""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import numpy as np
import torch

from conftest import error_line, run
from deadrelu.cli import app
from deadrelu.errors import ModelLoadError
from truth_models import UserModel, bounded_inputs, linear_with_dead_units


def test_scan_prints_table_and_exits_0(runner, files):
    result = run(runner, files["model"], files["data"], "--arch", f"{files['arch']}:build")
    assert result.exit_code == 0, result.output
    assert "8 of 32 units dead (25.0%)" in result.stdout
    assert "Activation sites" in result.stdout


def test_json_report_contract(runner, files):
    out = files["dir"] / "out" / "report.json"
    result = run(runner, files["model"], files["data"], "--arch", f"{files['arch']}:build", "--json", out,
                 "--max-dead-ratio", "0.5", "--batch-size", "32")
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["schema_version"] == 1
    assert report["tool"]["name"] == "deadrelu"
    assert report["model"]["format"] == "state_dict"
    assert report["model"]["parameters"] == 10 * 32 + 32 + 32 + 1
    assert report["data"]["samples"] == 150
    assert report["data"]["nonfinite"] == 0
    assert report["settings"] == {**report["settings"], "dead_threshold": 0.0, "tau": 0.1, "saturation": 0.99,
                                  "granularity": "channel", "batch_size": 32}
    assert report["summary"]["sites"] == 1
    assert report["summary"]["units"] == 32
    assert report["summary"]["dead"] == 8
    assert report["summary"]["dead_ratio"] == 0.25
    site = report["sites"][0]
    assert {k: site[k] for k in ("name", "module", "call_index", "kind", "units", "unit_dim", "observations",
                                 "dead", "dead_ratio")} == {
        "name": "1", "module": "1", "call_index": 0, "kind": "ReLU", "units": 32, "unit_dim": 1,
        "observations": 150, "dead": 8, "dead_ratio": 0.25}
    assert site["dead_units"] == list(range(8))
    # ReLU has no saturation; the dead units are dormant too (mean |a| = 0) and no live unit is.
    assert site["saturated_units"] == []
    assert site["dormant_units"] == list(range(8))
    assert report["gate"] == {"max_dead_ratio": 0.5, "max_layer_dead_ratio": None, "passed": True,
                              "violations": []}
    assert report["warnings"] == []
    assert not list(out.parent.glob(".*.tmp"))  # atomic write left no temp file


def test_gate_fails_with_exit_1_and_names_the_site(runner, files):
    result = run(runner, files["model"], files["data"], "--arch", f"{files['arch']}:build",
                 "--max-layer-dead-ratio", "0.2")
    assert result.exit_code == 1
    assert "Gate FAILED" in result.stdout
    # percentages with the counts, as the JUnit and Markdown reports write them
    assert "site 1: dead ratio 25.0% (8 of 32 units) > limit 20.0%" in result.stdout


def test_gate_equal_to_limit_passes(runner, files):
    result = run(runner, files["model"], files["data"], "--arch", f"{files['arch']}:build",
                 "--max-dead-ratio", "0.25", "--max-layer-dead-ratio", "0.25", "-q")
    assert result.exit_code == 0, result.output
    assert "Gate passed" in result.stdout


def test_config_file_and_flag_precedence(runner, files):
    config = files["dir"] / "gate.toml"
    config.write_text("[scan]\nbatch_size = 16\n[thresholds]\ntau = 0.2\n[gate]\nmax_dead_ratio = 0.1\n")
    out = files["dir"] / "r.json"
    failed = run(runner, files["model"], files["data"], "--arch", f"{files['arch']}:build", "--config", config,
                 "--json", out)
    assert failed.exit_code == 1
    report = json.loads(out.read_text())
    assert report["settings"]["batch_size"] == 16 and report["settings"]["tau"] == 0.2
    passed = run(runner, files["model"], files["data"], "--arch", f"{files['arch']}:build", "--config", config,
                 "--max-dead-ratio", "0.3", "--tau", "0.05", "--json", out)
    assert passed.exit_code == 0
    assert json.loads(out.read_text())["settings"]["tau"] == 0.05


def test_default_config_file_is_valid_and_matches_defaults(runner, files):
    from deadrelu.settings import ScanSettings, build_settings, read_config
    values = read_config(Path(__file__).parents[1] / "configs" / "default.toml")
    assert build_settings(**values) == ScanSettings()


def test_json_to_stdout(runner, files):
    result = run(runner, files["model"], files["data"], "--arch", f"{files['arch']}:build", "--json", "-")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["summary"]["dead"] == 8


def test_show_units_lists_dead_indices(runner, files):
    result = run(runner, files["model"], files["data"], "--arch", f"{files['arch']}:build", "--show-units")
    assert "1 dead [8]: 0–7" in result.stdout  # runs, as every command writes unit indices


def test_missing_model_file_exit_2(runner, files):
    result = run(runner, files["dir"] / "nope.pt", files["data"])
    assert result.exit_code == 2
    assert "model file not found" in error_line(result) and "nope.pt" in error_line(result)


def test_missing_data_file_exit_2(runner, files):
    result = run(runner, files["model"], files["dir"] / "nope.npy", "--arch", f"{files['arch']}:build")
    assert result.exit_code == 2
    assert "data file not found" in error_line(result)


def test_state_dict_without_arch_exit_2(runner, files):
    result = run(runner, files["model"], files["data"])
    assert result.exit_code == 2
    assert "holds weights only" in error_line(result)
    assert "--arch" in result.stderr


def test_pickled_module_needs_consent(runner, files):
    # A pickle of torch.nn classes only loads without consent (tests/test_api.py); one that names
    # the user's own class does not.
    pickled = files["dir"] / "whole.pt"
    torch.save(UserModel(linear_with_dead_units(dead=8)), pickled)
    refused = run(runner, pickled, files["data"])
    assert refused.exit_code == 2
    line = error_line(refused)
    assert "refusing to unpickle" in line and "torch.nn.modules.linear.Linear" in line
    assert "--allow-pickle" in refused.stderr
    allowed = run(runner, pickled, files["data"], "--allow-pickle", "-q")
    assert allowed.exit_code == 0, allowed.output
    assert "8 of 32 units dead" in allowed.stdout


def test_shape_mismatch_exit_2_names_shapes(runner, files):
    wrong = files["dir"] / "wrong.npy"
    np.save(wrong, np.zeros((20, 7), dtype=np.float32))
    result = run(runner, files["model"], wrong, "--arch", f"{files['arch']}:build")
    assert result.exit_code == 2
    line = error_line(result)
    assert "forward pass failed on batch 0" in line and "(20, 7)" in line
    assert "in_features=10" in result.stderr


def test_nan_input_fails_by_default_and_skip_works(runner, files):
    data = bounded_inputs(40, 10).numpy()
    data[5, 3] = np.nan
    path = files["dir"] / "nan.npy"
    np.save(path, data)
    failed = run(runner, files["model"], path, "--arch", f"{files['arch']}:build")
    assert failed.exit_code == 2
    assert "sample 5 is the first" in error_line(failed)
    out = files["dir"] / "skip.json"
    skipped = run(runner, files["model"], path, "--arch", f"{files['arch']}:build", "--nonfinite", "skip",
                  "--json", out)
    assert skipped.exit_code == 0
    report = json.loads(out.read_text())
    assert report["data"]["samples"] == 39 and report["data"]["skipped"] == 1


def test_bad_option_values_exit_2(runner, files):
    base = [files["model"], files["data"], "--arch", f"{files['arch']}:build"]
    assert run(runner, *base, "--saturation", "1.5").exit_code == 2
    assert run(runner, *base, "--granularity", "neuron").exit_code == 2
    assert run(runner, *base, "--max-dead-ratio", "2").exit_code == 2
    assert run(runner, *base, "--arch-kwargs", "{not json").exit_code == 2


def test_debug_lets_the_typed_error_and_its_traceback_through(runner, files):
    missing = files["dir"] / "nope.pt"
    plain = run(runner, missing, files["data"])
    # Without --debug the error becomes one line and exit 2 (typer.Exit, a SystemExit).
    assert isinstance(plain.exception, SystemExit) and plain.exception.code == 2
    error_line(plain, "model file not found")
    debug = runner.invoke(app, ["scan", str(missing), str(files["data"]), "--debug"], catch_exceptions=True)
    # With --debug the typed error itself propagates (uncaught: exit 1 and Python's traceback).
    assert isinstance(debug.exception, ModelLoadError), repr(debug.exception)
    assert str(debug.exception) == f"model file not found: {missing}"
    assert debug.exit_code == 1
    assert "error:" not in debug.stderr
    shown = "".join(traceback.format_exception(*debug.exc_info))
    assert shown.startswith("Traceback")
    assert shown.rstrip().endswith(f"deadrelu.errors.ModelLoadError: model file not found: {missing}")
