"""The CLI's report outputs: --html, --png-dir, --out, suggestions under the table, and
``deadrelu report RESULT.json`` re-rendering without the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import error_line, scan_files
from deadrelu.cli import app
from truth_models import bounded_inputs, linear_with_dead_units

PLOTS = ["active_rate_histogram.png", "dead_ratio_by_layer.png", "unit_map_000_1.png"]


@pytest.fixture
def saved(runner, files) -> Path:
    path = files["dir"] / "saved.json"
    done = scan_files(runner, files, "--json", path, "--max-layer-dead-ratio", "0.1", "-q")
    assert done.exit_code == 1, done.output
    return path


def test_scan_writes_html_and_pngs(runner, files):
    html_path = files["dir"] / "out" / "run.html"
    png_dir = files["dir"] / "out" / "run"
    done = scan_files(runner, files, "--html", html_path, "--png-dir", png_dir)
    assert done.exit_code == 0, done.output
    page = html_path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "8 of 32 units dead (25.0%)" in page
    assert sorted(p.name for p in png_dir.iterdir()) == PLOTS
    assert f"HTML report: {html_path}" in done.stdout
    assert f"PNG plots: {png_dir} (3 files)" in done.stdout


def test_suggestions_print_under_the_table_and_land_in_the_json(runner, files):
    json_path = files["dir"] / "r.json"
    done = scan_files(runner, files, "--json", json_path)
    assert done.exit_code == 0, done.output
    out = done.stdout
    # issue 10: the verdict first, then the sites, then one ranked line per suggestion.
    assert out.index("8 of 32 units dead") < out.index("Activation sites") < out.index("Suggested fixes:")
    # issue 20: the cause heads the report; generic advice (#2 "use LeakyReLU", #3 re-init) is counted, not
    # listed, next to a specific cause, and comes back with --verbose.
    assert "  Cause: negative biases hold units below zero — explains 8 of 8 dead units (#1)" in out
    assert "1 ReLU site(s) have more than 10% dead units" not in out
    assert "  2 generic (activation, re-init): --verbose" in out
    assert "evidence and code: --verbose, --html or --json" in out, "code is never soft-wrapped: shown in full there"
    # issue 22: one imperative action line per cause, naming where and what it explains; its evidence
    # (the title) is one --verbose away, under it.
    assert "  #1  WARN  0: reset 8 negative biases to 0 → explains 8 of 8 dead at 1" in out
    assert "bias ≤ −|w·x|" not in out
    verbose = scan_files(runner, files, "--verbose").stdout
    assert ("  #2  WARN  1: switch ReLU → LeakyReLU(0.1) (dead 8/32)\n"
            "        evidence: 1 ReLU site(s) have more than 10% dead units (worst: site 1, 8 of 32 = 25.0%)") in verbose
    stored = json.loads(json_path.read_text())["suggestions"]
    ids = [s["id"] for s in stored]
    assert ids[:3] == ["bias-reset", "dead-share", "init-not-he"], "ranked: the named cause first (issue 10)"
    bias = stored[ids.index("bias-reset")]
    assert bias["evidence"]["units"] == list(range(8)) and bias["evidence"]["biases"] == [-100.0] * 8


def test_quiet_leaves_suggestions_out(runner, files):
    done = scan_files(runner, files, "-q")
    assert done.exit_code == 0
    assert "Suggested fixes" not in done.stdout


def test_out_writes_json_html_and_plots_in_one_folder(runner, files):
    folder = files["dir"] / "bundle"
    done = scan_files(runner, files, "--out", folder)
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in folder.iterdir()) == ["plots", "report.html", "result.json"]
    assert sorted(p.name for p in (folder / "plots").iterdir()) == PLOTS
    assert json.loads((folder / "result.json").read_text())["summary"]["dead"] == 8


def test_out_auto_uses_reports_model_stem_and_timestamp(runner, files, monkeypatch):
    monkeypatch.chdir(files["dir"])
    done = scan_files(runner, files, "--out", "auto", "-q")
    assert done.exit_code == 0, done.output
    folders = list((files["dir"] / "reports").iterdir())
    assert len(folders) == 1
    import re
    assert re.fullmatch(r"model-\d{8}-\d{6}", folders[0].name)
    assert (folders[0] / "report.html").exists()


def test_json_to_stdout_keeps_stdout_pure(runner, files):
    html_path = files["dir"] / "r.html"
    done = scan_files(runner, files, "--json", "-", "--html", html_path)
    assert done.exit_code == 0
    assert json.loads(done.stdout)["summary"]["dead"] == 8
    assert f"HTML report: {html_path}" in done.stderr
    assert html_path.exists()


def test_unwritable_html_path_is_one_line_and_exit_2_before_scanning(runner, files, monkeypatch):
    folder = files["dir"] / "a_folder"
    folder.mkdir()
    import sys
    monkeypatch.setattr(sys.modules["deadrelu.scanning"], "scan",
                        lambda *a, **k: pytest.fail("scanned before checking --html"))
    done = scan_files(runner, files, "--html", folder)
    assert done.exit_code == 2
    assert error_line(done) == f"error: cannot write {folder}: it is a folder"


# -- deadrelu report -------------------------------------------------------------------------------

def test_report_rerenders_from_json_without_the_model(runner, files, saved):
    files["model"].unlink()
    html_path = files["dir"] / "again.html"
    png_dir = files["dir"] / "again"
    done = runner.invoke(app, ["report", str(saved), "--html", str(html_path), "--png-dir", str(png_dir)])
    assert done.exit_code == 0, done.output
    assert "Activation sites" in done.stdout and "Suggested fixes:" in done.stdout
    assert "Gate FAILED" in done.stdout, "the stored gate is shown"
    page = html_path.read_text(encoding="utf-8")
    stored = json.loads(saved.read_text())["suggestions"]
    import html
    text = page.replace("<wbr>", "")  # line-break opportunities in names (issue 22) are no text
    for suggestion in stored:  # the stored suggestions, weight-based ones included
        assert html.escape(suggestion["title"], quote=True) in text
        assert html.escape(suggestion["action_line"], quote=True) in text
    assert "bias-reset" in [s["id"] for s in stored]
    assert sorted(p.name for p in png_dir.iterdir()) == PLOTS


def test_report_from_json_without_suggestions_runs_the_result_only_rules(runner, saved, tmp_path):
    data = json.loads(saved.read_text())
    del data["suggestions"]
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(data))
    out = tmp_path / "bundle"
    done = runner.invoke(app, ["report", str(bare), "--out", str(out)])
    assert done.exit_code == 0, done.output
    rewritten = json.loads((out / "result.json").read_text())
    ids = [s["id"] for s in rewritten["suggestions"]]
    assert "dead-share" in ids and "bias-reset" not in ids and "init-not-he" not in ids


def test_report_show_units_lists_dead_indices(runner, saved):
    done = runner.invoke(app, ["report", str(saved), "--show-units"])
    assert done.exit_code == 0
    assert "1 dead [8]: 0–7" in done.stdout  # runs, as every command writes unit indices


@pytest.mark.parametrize("content, message", [
    (None, "error: result file not found"),
    ("not json {", "is not JSON"),
    ('{"hello": 1}', "is not a deadrelu JSON report"),
    ('{"schema_version": 99, "sites": []}', "unsupported schema_version 99"),
])
def test_report_bad_input_is_one_line_and_exit_2(runner, tmp_path, content, message):
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    done = runner.invoke(app, ["report", str(path)])
    error_line(done, message)


def test_report_needs_unit_statistics(runner, files, tmp_path):
    import deadrelu
    result = deadrelu.scan(linear_with_dead_units(dead=8), bounded_inputs(50, 10))
    path = tmp_path / "lean.json"
    result.to_json(path, unit_stats=False)
    done = runner.invoke(app, ["report", str(path)])
    assert done.exit_code == 2
    assert "has no unit_stats" in done.stderr


def test_a_clean_model_prints_one_clean_line_and_notes_wrap_under_their_text():
    """No table header without a problem site, the clean count not squeezed to a table's width,
    and a long note continuing under its own text rather than at column 0."""
    import dataclasses

    from rich.console import Console

    import deadrelu
    from deadrelu.render import console as console_render
    from truth_models import linear_with_dead_units
    result = deadrelu.scan(linear_with_dead_units(dead=0, width=32), bounded_inputs(60, 10))
    long_note = "a note " * 20
    result = dataclasses.replace(result, warnings=(long_note.strip(),))
    terminal = Console(width=80, record=True, file=open("/dev/null", "w"))
    terminal.print(console_render.report(result, width=80))
    lines = [line.rstrip() for line in terminal.export_text().splitlines()]
    assert "1 site clean (no dead or saturated unit)" in lines
    assert not any(line.startswith("site ") for line in lines)
    bullet = next(k for k, line in enumerate(lines) if line.startswith("  - a note"))
    assert lines[bullet + 1].startswith("    a note")
