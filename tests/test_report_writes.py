"""Reports written together (issue 18 §8): Ctrl-C while a command writes its reports leaves either
every old file as it was ("no report written" is then true), or says exactly which files were
written; never a new JSON beside an old HTML under a line claiming nothing was written. Also
§10: a result JSON naming two sites alike is refused by report and diff, and
--partial-on-interrupt writes the partial report and exits 130."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from conftest import error_line, make_files, scan_files, stderr_lines
from deadrelu.cli import app
from deadrelu.render import files as files_module
from deadrelu.render.files import written_together
from deadrelu.render.reports import ReportTargets, write_reports
from report_fixtures import synthetic_result

OLD = {"r.json": "old json\n", "r.html": "old html\n", "r.xml": "old junit\n", "r.md": "old markdown\n"}


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    found = make_files(tmp_path, samples=40)
    for name, text in OLD.items():
        (tmp_path / name).write_text(text)
    return found


def outputs(files: dict[str, Path]) -> list[str]:
    folder = files["dir"]
    return ["--json", str(folder / "r.json"), "--html", str(folder / "r.html"), "--junit", str(folder / "r.xml"),
            "--markdown", str(folder / "r.md"), "--png-dir", str(folder / "plots")]


def contents(folder: Path) -> dict[str, str]:
    return {name: (folder / name).read_text() for name in OLD}


def temps_left(folder: Path) -> list[Path]:
    return list(folder.rglob("*.deadrelu-*.tmp"))


def interrupt_html(monkeypatch) -> None:
    """Ctrl-C while the HTML report is rendered: after the JSON report was written, in the old order."""
    import deadrelu.render.html

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(deadrelu.render.html, "report", interrupted)


def test_ctrl_c_while_reports_are_written_leaves_every_old_file_and_says_so(runner, files, monkeypatch):
    interrupt_html(monkeypatch)
    done = scan_files(runner, files, *outputs(files))
    assert done.exit_code == 130, done.output
    assert stderr_lines(done)[-1] == ("interrupted: no report written (use --partial-on-interrupt to keep partial "
                                      "results)")
    assert contents(files["dir"]) == OLD  # no new JSON beside the old HTML
    assert not (files["dir"] / "plots").exists() or not list((files["dir"] / "plots").iterdir())
    assert temps_left(files["dir"]) == []


def test_ctrl_c_between_two_renames_names_exactly_the_files_written(runner, files, monkeypatch):
    renames = []
    real_replace = os.replace

    def replace(source, target):
        if len(renames) == 1:
            raise KeyboardInterrupt
        renames.append(target)
        real_replace(source, target)
    monkeypatch.setattr(files_module.os, "replace", replace)
    done = scan_files(runner, files, *outputs(files))
    monkeypatch.setattr(files_module.os, "replace", real_replace)
    assert done.exit_code == 130, done.output
    written = files["dir"] / "r.json"
    assert renames == [written]
    assert stderr_lines(done)[-1] == (f"interrupted: only these reports were written: {written}; the others were not "
                                      "(their old files, if any, are unchanged)")
    assert json.loads(written.read_text())["summary"]["dead"] == 8
    assert {name: text for name, text in contents(files["dir"]).items() if name != "r.json"} == {
        name: text for name, text in OLD.items() if name != "r.json"}
    assert temps_left(files["dir"]) == []


def test_a_ctrl_c_signal_during_the_renames_waits_until_all_are_done(runner, files, monkeypatch):
    real_replace = os.replace
    sent = []

    def replace(source, target):
        if not sent:
            sent.append(target)
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, held back until the last rename
        real_replace(source, target)
    monkeypatch.setattr(files_module.os, "replace", replace)
    done = scan_files(runner, files, *outputs(files))
    monkeypatch.setattr(files_module.os, "replace", real_replace)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    assert done.exit_code == 130, done.output
    last = stderr_lines(done)[-1]
    assert last.startswith("interrupted: after the reports were written: ")
    for name in OLD:
        assert str(files["dir"] / name) in last and (files["dir"] / name).read_text() != OLD[name]
    assert len(list((files["dir"] / "plots").glob("*.png"))) == 3
    assert temps_left(files["dir"]) == []


@pytest.mark.parametrize("command", ["diff", "merge", "trend"])
def test_other_commands_write_their_reports_together(runner, files, monkeypatch, command):
    folder = files["dir"]
    synthetic_result(sites=3, units=8).to_json(folder / "a.json")
    synthetic_result(sites=3, units=8, seed=1).to_json(folder / "b.json")
    import deadrelu.render.junit
    import deadrelu.render.trend

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    if command == "diff":
        monkeypatch.setattr(deadrelu.render.junit, "diff_junit", interrupted)  # after the JSON diff
        args = ["diff", folder / "a.json", folder / "b.json", "--force", "--json", folder / "r.json", "--junit",
                folder / "r.xml"]
    elif command == "merge":
        interrupt_html(monkeypatch)  # after the merged JSON
        args = ["merge", folder / "a.json", "--allow-missing", "--json", folder / "r.json", "--html", folder / "r.html"]
    else:
        monkeypatch.setattr(deadrelu.render.trend, "write_html", interrupted)  # after the JSON trend
        args = ["trend", files["model"], files["model"], files["data"], "--arch", f"{files['arch']}:build", "--json",
                folder / "r.json", "--html", folder / "r.html"]
    done = runner.invoke(app, [*map(str, args)])
    assert done.exit_code == 130, done.output
    assert "interrupted: no report written" in done.stderr
    assert contents(folder) == OLD
    assert temps_left(folder) == []


def test_write_reports_is_all_or_nothing_for_a_notebook_user_too(tmp_path, monkeypatch):
    result = synthetic_result(sites=3, units=8)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report.html").write_text("old html\n")
    import deadrelu.result

    def broken(self, path=None, unit_stats=True):
        raise OSError("disk on fire")
    monkeypatch.setattr(deadrelu.result.ScanResult, "to_json", broken)  # the last file of --out
    with pytest.raises(OSError):
        write_reports(result, ReportTargets(out=tmp_path / "out"))
    assert (tmp_path / "out" / "report.html").read_text() == "old html\n"
    assert not (tmp_path / "out" / "plots").exists() or not list((tmp_path / "out" / "plots").iterdir())
    assert temps_left(tmp_path) == []


def test_writes_inside_an_outer_batch_wait_for_it(tmp_path):
    with written_together() as batch:
        write_reports(synthetic_result(sites=2, units=4), ReportTargets(html=tmp_path / "r.html"))
        assert not (tmp_path / "r.html").exists()  # joined the outer batch
    assert batch.written == [tmp_path / "r.html"] and (tmp_path / "r.html").is_file()


# -- §10: duplicate site names, --partial-on-interrupt -------------------------------------------------

def test_report_and_diff_refuse_a_result_with_two_sites_of_one_name(runner, tmp_path):
    synthetic_result(sites=3, units=8, names=["fc.act", "conv.act", "fc.act"]).to_json(tmp_path / "dup.json")
    synthetic_result(sites=3, units=8).to_json(tmp_path / "ok.json")
    expected = f'{tmp_path / "dup.json"}: sites[2].name "fc.act" is also the name of sites[0]'
    error_line(runner.invoke(app, ["report", str(tmp_path / "dup.json")]), expected)
    error_line(runner.invoke(app, ["diff", str(tmp_path / "ok.json"), str(tmp_path / "dup.json"), "--force"]),
               expected)
    error_line(runner.invoke(app, ["diff", str(tmp_path / "dup.json"), str(tmp_path / "ok.json"), "--force"]),
               expected)


INTERRUPTED_MODEL = '''
from torch import nn
from truth_models import linear_with_dead_units

class Interrupted(nn.Module):
    """Ctrl-C in the third forward pass."""
    def __init__(self):
        super().__init__()
        self.body = linear_with_dead_units(dead=8)
        self.calls = 0
    def forward(self, x):
        self.calls += 1
        if self.calls == 3:
            raise KeyboardInterrupt
        return self.body(x)
'''


def test_partial_on_interrupt_writes_every_report_and_exits_130(runner, files):
    (files["dir"] / "interrupted.py").write_text(INTERRUPTED_MODEL)
    done = runner.invoke(app, ["scan", "--model", f"{files['dir'] / 'interrupted.py'}:Interrupted", str(files["data"]),
                               "--batch-size", "10", "--partial-on-interrupt", *outputs(files)])
    assert done.exit_code == 130, done.output
    assert stderr_lines(done)[-1] == ("interrupted: the report covers the 20 samples scanned before Ctrl-C and is "
                                      "marked partial")
    report = json.loads((files["dir"] / "r.json").read_text())
    assert report["data"]["partial"] is True and report["data"]["samples"] == 20
    assert report["summary"]["dead"] == 8
    assert all((files["dir"] / name).read_text() != OLD[name] for name in OLD)
    assert "PARTIAL" in (files["dir"] / "r.html").read_text()
