"""deadrelu diff: unit-by-unit comparison, the gate's edges, refusals, JUnit and Markdown files.

Each model carries its truth: bias -100 on exactly the listed units of a Linear makes
exactly those units dead on inputs in [-1, 1] (|w.x| < 10), bias +5 keeps the rest alive.
"""

from __future__ import annotations

import ast
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from torch import nn

import deadrelu
from deadrelu.cli import app
from deadrelu.compare import IncompatibleResultsError, check_diff_gate, diff
from deadrelu.errors import ConfigError
from deadrelu.render.junit import diff_junit, scan_junit
from deadrelu.render.markdown import diff_summary, scan_summary
from truth_models import bounded_inputs

DATA = bounded_inputs(120, 10)


class TwoLayer(nn.Module):
    """fc1 (width 10) -> act1 -> fc2 (width 6) -> act2, with chosen dead units per layer."""

    def __init__(self, dead1: list[int], dead2: list[int]) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.act1 = nn.Linear(10, 10), nn.ReLU()
        self.fc2, self.act2 = nn.Linear(10, 6), nn.ReLU()
        with torch.no_grad():
            self.fc2.weight.uniform_(0.0, 0.05)
            for layer, dead in ((self.fc1, dead1), (self.fc2, dead2)):
                layer.bias.fill_(5.0)
                layer.bias[dead] = -100.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.fc2(self.act1(self.fc1(x))))


def scan_of(dead1: list[int], dead2: list[int], **settings) -> deadrelu.ScanResult:
    return deadrelu.scan(TwoLayer(dead1, dead2), DATA, **settings)


BASE = dict(dead1=[0, 1, 2], dead2=[0])
NEW = dict(dead1=[1, 2, 4, 7], dead2=[0, 3, 5])  # fc1: +4 +7 -0; fc2: +3 +5


def test_diff_matches_units_by_index() -> None:
    result = diff(scan_of(**BASE), scan_of(**NEW))
    act1, act2 = result.site("act1"), result.site("act2")
    assert (act1.dead_base, act1.dead_new, act1.newly_dead, act1.revived) == (3, 4, (4, 7), (0,))
    assert (act2.dead_base, act2.dead_new, act2.newly_dead, act2.revived) == (1, 3, (3, 5), ())
    assert (result.newly_dead, result.revived) == (4, 1)
    assert result.to_dict() == {
        "sites": [{"name": "act1", "dead_base": 3, "dead_new": 4, "newly_dead": [4, 7], "revived": [0]},
                  {"name": "act2", "dead_base": 1, "dead_new": 3, "newly_dead": [3, 5], "revived": []}],
        "newly_dead": 4, "revived": 1, "only_in_base": [], "only_in_new": [], "gate": None}
    frame = result.to_frame()
    assert list(frame["dead_ratio_increase"]) == pytest.approx([0.1, 2 / 6])


@pytest.mark.parametrize(("limit", "passed"), [(3, False), (4, True), (5, True)])
def test_new_dead_gate_equal_passes(limit: int, passed: bool) -> None:
    gate = check_diff_gate(diff(scan_of(**BASE), scan_of(**NEW)), max_new_dead=limit)
    assert gate.passed is passed
    assert [(v.scope, v.measure, v.value) for v in gate.violations] == ([] if passed else [("model", "new_dead", 4)])


def test_ratio_gate_equal_passes_exactly() -> None:
    # 1/10 -> 8/10 is +0.7, which floats compute as 0.7000000000000001: equal must still pass.
    result = diff(scan_of([0], []), scan_of([0, 1, 2, 3, 4, 5, 6, 7], []))
    assert result.site("act1").dead_ratio_increase > 0.7
    assert check_diff_gate(result, max_dead_ratio_increase=0.7).passed
    failed = check_diff_gate(result, max_dead_ratio_increase=0.69)
    assert [(v.scope, v.measure) for v in failed.violations] == [("act1", "dead_ratio_increase")]
    assert failed.violations[0].value == pytest.approx(0.7)


def test_gate_rejects_bad_limits() -> None:
    result = diff(scan_of(**BASE), scan_of(**BASE))
    with pytest.raises(ConfigError):
        check_diff_gate(result, max_new_dead=-1)
    with pytest.raises(ConfigError):
        check_diff_gate(result, max_dead_ratio_increase=1.5)


class OtherModel(TwoLayer):
    pass


def test_refuses_different_models_and_settings_unless_forced() -> None:
    base = scan_of(**BASE)
    with pytest.raises(IncompatibleResultsError, match="model class TwoLayer vs OtherModel"):
        diff(base, deadrelu.scan(OtherModel([], []), DATA))
    with pytest.raises(IncompatibleResultsError, match=r"tau 0\.1 vs 0\.2"):
        diff(base, scan_of(**BASE, tau=0.2))
    with pytest.raises(IncompatibleResultsError, match="sites only in base: act2"):
        diff(base, scan_of(**BASE, layers=["act1"]))
    forced = diff(base, scan_of(**NEW, layers=["act1"]), force=True)
    assert forced.only_in_base == ("act2",) and forced.only_in_new == ()
    assert [site.name for site in forced.sites] == ["act1"]
    assert any("layers" in item for item in forced.differences)
    assert forced.newly_dead == 2


def test_scan_junit_one_testcase_per_site_with_failures() -> None:
    result = scan_of(**NEW)
    result = result.with_gate(deadrelu.check_gate(result, max_dead_ratio=0.5, max_layer_dead_ratio=0.45))
    root = ET.fromstring(scan_junit(result))
    sites = root.find("testsuite[@name='deadrelu.sites']")
    cases = sites.findall("testcase")
    assert [case.get("name") for case in cases] == ["act1", "act2"]
    assert sites.get("tests") == "2" and sites.get("failures") == "1"
    assert cases[0].find("failure") is None  # 4/10 = 40% <= 45%
    failure = cases[1].find("failure")
    assert failure.get("message") == "site act2: dead ratio 50.0% (3 of 6 units) > limit 45.0%"
    model = root.find("testsuite[@name='deadrelu.model']")
    assert model.get("failures") == "0" and len(model.findall("testcase")) == 1
    assert root.get("tests") == "3" and root.get("failures") == "1"


def test_junit_escapes_names() -> None:
    model = nn.Sequential()
    model.add_module("fc", nn.Linear(10, 4))
    model.add_module('a<b&"c"\x01', nn.ReLU())
    result = deadrelu.scan(model, DATA)
    document = scan_junit(result)
    case = ET.fromstring(document).find("testsuite/testcase")
    assert case.get("name") == 'a<b&"c"\\x01'  # escaped (render.text.visible), never raw


def test_markdown_and_junit_lead_with_the_action_lines() -> None:
    # issue 22: every output leads with what to do, as the terminal does: the Markdown's list comes
    # before its table, the failing site's JUnit failure and output name the fix that explains it.
    from truth_models import bounded_inputs, linear_with_dead_units
    model = nn.Sequential()
    model.add_module("feature_backbone", linear_with_dead_units(dead=8, width=32)[0])
    model.add_module("stage_act", nn.ReLU())
    result = deadrelu.scan(model, bounded_inputs(100, 10))
    result = result.with_gate(deadrelu.check_gate(result, max_layer_dead_ratio=0.1))
    action = "feature_backbone: reset 8 negative biases to 0 → explains 8 of 8 dead at stage_act"
    assert result.suggestions[0]["action_line"] == action
    text = scan_summary(result)
    assert "1. **WARN** feature\\_backbone: reset 8 negative biases to 0 → explains 8 of 8 dead at stage\\_act" in text
    assert text.index("**What to do first:**") < text.index("| site |")
    case = ET.fromstring(scan_junit(result)).find("testsuite/testcase")
    assert case.find("failure").text.splitlines() == [case.find("failure").get("message"), f"fix #1: {action}"]
    assert case.find("system-out").text.splitlines()[0] == f"fix #1: {action}"


def test_diff_junit_and_markdown() -> None:
    result = diff(scan_of(**BASE), scan_of(**NEW))
    result = result.with_gate(check_diff_gate(result, max_new_dead=3, max_dead_ratio_increase=0.25))
    root = ET.fromstring(diff_junit(result))
    cases = root.findall("testsuite[@name='deadrelu.diff.sites']/testcase")
    assert [case.get("name") for case in cases] == ["act1", "act2"]
    assert cases[0].find("failure") is None
    assert cases[1].find("failure").get("message") == (
        "site act2: dead ratio rose 16.7% -> 50.0% (+33.3 points) > limit +25.0 points; newly dead units: 3, 5")
    total = root.find("testsuite[@name='deadrelu.diff.model']/testcase/failure")
    assert total.get("message") == "4 units newly dead over 2 sites > limit 3"
    text = diff_summary(result)
    assert text.startswith("### deadrelu diff: 4 units newly dead, 1 revived over 2 sites — gate **FAILED**")
    assert "| `act2` | 1 → 3 | 2 | 0 | +33.3 pts | ❌ fail |" in text
    assert "| `act1` | 3 → 4 | 2 | 1 | +10.0 pts | ✅ |" in text


def test_scan_markdown_lists_dead_sites() -> None:
    result = scan_of(**NEW)
    result = result.with_gate(deadrelu.check_gate(result, max_layer_dead_ratio=0.45))
    text = scan_summary(result)
    assert text.splitlines()[0] == "### deadrelu: 7 of 16 units dead (43.8%) in 2 sites — gate **FAILED** ❌"
    assert "| `act2` | ReLU | 6 | 3 | 50.0% | 3 | ❌ fail |" in text
    assert text.index("`act2`") < text.index("`act1`")
    assert scan_summary(scan_of([], [])).splitlines()[2] == "No dead units."


# -- the command line -------------------------------------------------------------------------

@pytest.fixture
def reports(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    for name, dead in (("base", BASE), ("new", NEW)):
        paths[name] = tmp_path / f"{name}.json"
        scan_of(**dead).to_json(paths[name])
    paths["other"] = tmp_path / "other.json"
    scan_of(**BASE, tau=0.3).to_json(paths["other"])
    paths["dir"] = tmp_path
    return paths


@pytest.mark.parametrize(("limit", "code"), [("3", 1), ("4", 0), ("5", 0)])
def test_cli_diff_exit_codes_around_the_limit(runner, reports, limit: str, code: int) -> None:
    out = runner.invoke(app, ["diff", str(reports["base"]), str(reports["new"]), "--max-new-dead", limit])
    assert out.exit_code == code, out.output
    assert "4 units newly dead, 1 revived over 2 matched sites" in out.stdout
    assert "act1 newly dead: 4, 7" in out.stdout and "act1 revived: 0" in out.stdout
    assert ("Gate FAILED" in out.stdout) is (code == 1)


@pytest.mark.parametrize(("limit", "code"), [("0.3", 1), ("0.3334", 0)])
def test_cli_diff_ratio_limit(runner, reports, limit: str, code: int) -> None:
    out = runner.invoke(app, ["diff", str(reports["base"]), str(reports["new"]), "--max-dead-ratio-increase", limit])
    assert out.exit_code == code, out.output


def test_cli_diff_writes_json_junit_markdown(runner, reports) -> None:
    folder = reports["dir"]
    out = runner.invoke(app, ["diff", str(reports["base"]), str(reports["new"]), "--max-new-dead", "3",
                              "--json", str(folder / "d.json"), "--junit", str(folder / "d.xml"),
                              "--markdown", str(folder / "d.md")])
    assert out.exit_code == 1, out.output
    data = json.loads((folder / "d.json").read_text())
    assert set(data) == {"sites", "newly_dead", "revived", "only_in_base", "only_in_new", "gate"}
    assert data["gate"]["passed"] is False and data["newly_dead"] == 4
    assert len(ET.parse(folder / "d.xml").getroot().findall("testsuite[@name='deadrelu.diff.sites']/testcase")) == 2
    assert (folder / "d.md").read_text().startswith("### deadrelu diff")


def test_cli_diff_refuses_different_settings(runner, reports) -> None:
    out = runner.invoke(app, ["diff", str(reports["base"]), str(reports["other"])])
    assert out.exit_code == 2
    assert "cannot compare these results: tau 0.1 vs 0.3" in out.stderr
    assert "--force" in out.stderr
    forced = runner.invoke(app, ["diff", str(reports["base"]), str(reports["other"]), "--force"])
    assert forced.exit_code == 0, forced.output
    assert "compared anyway (--force): tau 0.1 vs 0.3" in forced.stdout


def test_cli_diff_identical_results_pass(runner, reports) -> None:
    out = runner.invoke(app, ["diff", str(reports["base"]), str(reports["base"]), "--max-new-dead", "0",
                              "--max-dead-ratio-increase", "0"])
    assert out.exit_code == 0, out.output
    assert "Gate passed" in out.stdout


def test_cli_scan_junit_and_markdown(runner, tmp_path: Path) -> None:
    model = tmp_path / "model.pt"
    torch.save(TwoLayer(**NEW).state_dict(), model)
    data = tmp_path / "data.pt"
    torch.save(DATA, data)
    (tmp_path / "arch.py").write_text(f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                                      "from test_compare import TwoLayer\n\n\ndef build():\n"
                                      "    return TwoLayer([], [])\n")
    out = runner.invoke(app, ["scan", str(model), str(data), "--arch", f"{tmp_path / 'arch.py'}:build",
                              "--max-layer-dead-ratio", "0.45", "--junit", str(tmp_path / "scan.xml"),
                              "--markdown", str(tmp_path / "scan.md"), "-q"])
    assert out.exit_code == 1, out.output
    root = ET.parse(tmp_path / "scan.xml").getroot()
    cases = root.findall("testsuite[@name='deadrelu.sites']/testcase")
    assert [(case.get("name"), case.find("failure") is not None) for case in cases] == [("act1", False),
                                                                                       ("act2", True)]
    assert "JUnit report:" in out.stdout
    assert "| `act2` |" in (tmp_path / "scan.md").read_text()


def test_markdown_appends_to_the_github_step_summary(runner, reports, monkeypatch) -> None:
    summary = reports["dir"] / "step_summary.md"
    summary.write_text("earlier step output\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    out = runner.invoke(app, ["diff", str(reports["base"]), str(reports["new"]), "--markdown", str(summary)])
    assert out.exit_code == 0, out.output
    text = summary.read_text()
    assert text.startswith("earlier step output\n### deadrelu diff")


TORCH_FREE = ["deadrelu/compare.py", "deadrelu/render/junit.py", "deadrelu/render/markdown.py",
              "deadrelu/render/compare.py", "deadrelu/history.py", "deadrelu/commands/training.py"]


@pytest.mark.parametrize("path", TORCH_FREE)
def test_diff_path_modules_do_not_import_torch(path: str) -> None:
    """``deadrelu diff`` must run without torch: none of its own modules imports it at import time."""
    tree = ast.parse((Path(__file__).parent.parent / path).read_text())
    imported = set()
    for node in tree.body:  # module level only: imports inside functions run on use
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"torch", "lightning", "transformers"}


def test_diff_report_is_verdict_first_in_the_scan_style_with_unit_runs(runner, tmp_path) -> None:
    # act1 gains units 4 and 7 (+ 0 revived), act2 gains 3 and 5 and loses 0: verdict line first,
    # unit indices written as scan writes them, ratios as percentages.
    from deadrelu.render import compare as compare_render
    from rich.console import Console
    base, new = scan_of(**BASE), scan_of(**NEW)
    result = diff(base, new)
    result = result.with_gate(check_diff_gate(result, max_new_dead=0))
    console = Console(width=80, record=True, no_color=True)
    console.print(compare_render.report(result, width=80))
    lines = console.export_text().splitlines()
    assert lines[0].startswith("FAIL  4 units newly dead, 1 revived over 2 matched sites; CI gate failed.")
    assert "Dead units, base → new" not in lines  # the old boxed table style is gone
    assert lines[2] == "Sites whose dead units changed, worst first".ljust(len(lines[2]))


def test_a_result_compared_with_itself_says_identical(runner, tmp_path) -> None:
    base = scan_of(**NEW)
    path = tmp_path / "r.json"
    base.to_json(path)
    from deadrelu.cli import app
    out = runner.invoke(app, ["diff", str(path), str(path)])
    assert out.exit_code == 0, out.output
    dead = base.summary.dead
    assert out.stdout.splitlines()[0] == f"OK  identical: the same {dead:,} dead unit(s) at the same 2 site(s)"
    assert "units" not in out.stdout.replace("dead unit(s)", "")  # no table of zeros


def test_unit_indices_are_written_as_runs_everywhere() -> None:
    from deadrelu.numbers import above_limit, index_ranges, percents_apart
    assert index_ranges(range(256)) == "0–255"
    assert index_ranges([11, 3, 5, 6, 3]) == "3, 5–6, 11"
    assert index_ranges([0, 2, 4, 6], limit=2) == "0, 2, … (4 in all)"
    assert index_ranges([]) == "none"
    assert percents_apart(0.2321, 0.05) == ("23.2%", "5.0%")
    assert percents_apart(0.0501, 0.05) == ("5.01%", "5.00%")  # never "5.0% > 5.0%"
    assert above_limit(0.25, 0.2) == "25.0% > limit 20.0%"
