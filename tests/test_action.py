"""The composite GitHub Action (``action.yml``): its shape, the flags it passes, and its scan step
run for real on the bundled sample, as the runner would run it (``bash -eo pipefail`` with the
step's environment, inputs substituted), with ``$GITHUB_STEP_SUMMARY`` and ``$GITHUB_OUTPUT`` set.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import deadrelu

yaml = pytest.importorskip("yaml", reason="PyYAML (present with the hf extra) reads action.yml")

ROOT = Path(__file__).resolve().parent.parent
#: Subprocesses import the deadrelu this test imports (the checkout, or the installed package).
PACKAGE_HOME = str(Path(deadrelu.__file__).resolve().parents[1])
SAMPLE = ROOT / "sample_models"
EXPRESSION = re.compile(r"\$\{\{\s*([^}]*?)\s*\}\}")


@pytest.fixture(scope="module")
def action() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "action.yml").read_text())


def steps_by_name(action: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["name"]: step for step in action["runs"]["steps"]}


def test_action_is_composite_and_every_input_it_reads_is_declared(action: dict[str, Any]) -> None:
    assert action["runs"]["using"] == "composite"
    inputs = set(action["inputs"])
    assert {"model", "data", "args", "max-dead-ratio", "fail-on", "python-version", "report-dir"} <= inputs
    text = (ROOT / "action.yml").read_text()
    used = {m.group(1).split(".", 1)[1] for m in EXPRESSION.finditer(text) if m.group(1).startswith("inputs.")}
    used |= set(re.findall(r"inputs\.([a-z-]+) != ''", text))
    assert used and used <= inputs, used - inputs
    assert inputs <= used, f"declared, never read: {inputs - used}"
    for step in action["runs"]["steps"]:
        assert "uses" in step or step.get("shell") == "bash", step["name"]  # composite run steps need a shell
        for value in step.get("env", {}).values():  # inputs reach scripts only through the environment
            assert EXPRESSION.fullmatch(value), value
        assert "run" not in step or not EXPRESSION.search(step["run"]), step["name"]


def test_action_installs_from_its_own_checkout_and_uploads_the_reports_whatever_the_exit(action: dict[str, Any]) -> None:
    steps = steps_by_name(action)
    assert steps["Set up Python"]["uses"].startswith("actions/setup-python@")
    install = steps["Install deadrelu"]
    assert install["env"]["DEADRELU_SOURCE"] == "${{ github.action_path }}"
    assert 'pip install -c "$RUNNER_TEMP/deadrelu-torch.txt" "$DEADRELU_SOURCE' in install["run"]
    assert "--index-url https://download.pytorch.org/whl/cpu" in install["run"]  # only when torch is absent
    upload = steps["Upload the reports"]
    assert upload["uses"].startswith("actions/upload-artifact@")
    assert upload["if"].startswith("always()")
    assert upload["with"]["path"] == "${{ inputs.report-dir }}"
    assert action["outputs"]["exit-code"]["value"] == "${{ steps.scan.outputs.exit-code }}"


def test_every_flag_the_scan_step_passes_is_a_scan_flag(action: dict[str, Any]) -> None:
    run = subprocess.run([sys.executable, "-m", "deadrelu", "scan", "--help"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT, env={**os.environ, "COLUMNS": "200", "PYTHONPATH": PACKAGE_HOME})
    assert run.returncode == 0, run.stderr
    known = set(re.findall(r"--[a-z][a-z-]*", run.stdout))
    script = steps_by_name(action)["Scan"]["run"]
    used = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", script))
    assert {"--fail-on", "--json", "--html", "--junit", "--markdown", "--max-dead-ratio"} <= used
    assert used <= known, used - known


def run_scan_step(action: dict[str, Any], tmp_path: Path, **given: str) -> tuple[int, Path, Path]:
    """Run the Scan step's script in tmp_path with ``given`` inputs over the defaults; returns
    the exit code, the step summary and the step output files."""
    inputs = {name: spec.get("default", "") for name, spec in action["inputs"].items()} | given
    step = steps_by_name(action)["Scan"]
    env = {name: EXPRESSION.sub(lambda m: inputs[m.group(1).removeprefix("inputs.")], value)
           for name, value in step["env"].items()}
    bin_dir = tmp_path / "bin"  # `deadrelu` on PATH: this interpreter and package
    bin_dir.mkdir()
    shim = bin_dir / "deadrelu"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m deadrelu "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    summary, output = tmp_path / "step_summary.md", tmp_path / "github_output"
    summary.write_text("## Earlier step\n")
    script = tmp_path / "scan.sh"
    script.write_text(step["run"])
    run = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, **env, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                              "PYTHONPATH": PACKAGE_HOME, "GITHUB_STEP_SUMMARY": str(summary),
                              "GITHUB_OUTPUT": str(output)})
    return run.returncode, summary, output


SAMPLE_INPUTS = {"model": str(SAMPLE / "mlp_high_lr.pt"), "data": str(SAMPLE / "mlp_data.npy"),
                 "args": f"--arch {SAMPLE / 'archs.py'}:HighLrMLP", "fail-on": "never"}


@pytest.mark.parametrize(("limit", "code"), [("0.5", 0), ("0.3", 1)])
def test_scan_step_gates_writes_the_summary_and_reports(action: dict[str, Any], tmp_path: Path, limit: str,
                                                       code: int) -> None:
    # the sample's truth: 139 of 384 units dead (36.2%): under a 50% limit, over a 30% one
    returned, summary, output = run_scan_step(action, tmp_path, **SAMPLE_INPUTS, **{"max-dead-ratio": limit})
    assert returned == code
    assert output.read_text() == f"exit-code={code}\n"
    text = summary.read_text()
    assert text.startswith("## Earlier step\n")  # appended, not overwritten
    assert text.removeprefix("## Earlier step\n") == (tmp_path / "deadrelu-report" / "summary.md").read_text()
    assert "### deadrelu: 139 of 384 units dead (36.2%) in 3 sites" in text and "| `net.1` | ReLU | 128 | 53 |" in text
    assert ("gate **FAILED**" in text and "above the limit 30.0%" in text) == (code == 1)
    for name in ("result.json", "report.html", "junit.xml"):
        assert (tmp_path / "deadrelu-report" / name).stat().st_size > 0


def test_scan_step_fails_with_exit_2_on_a_bad_input_and_writes_no_summary(action: dict[str, Any],
                                                                         tmp_path: Path) -> None:
    # a mistyped input: refused before torch is imported (a missing file exits 2 the same way, slower)
    returned, summary, output = run_scan_step(action, tmp_path, **SAMPLE_INPUTS | {"fail-on": "sometimes"})
    assert returned == 2
    assert output.read_text() == "exit-code=2\n"
    assert summary.read_text() == "## Earlier step\n"


def test_readme_snippet_uses_this_version_and_declared_inputs(action: dict[str, Any]) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("\n## GitHub Action\n"):]
    snippet = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    step = next(step for step in snippet if step.get("uses", "").startswith("deadrelu/deadrelu@"))
    assert step["uses"] == f"deadrelu/deadrelu@v{deadrelu.__version__}"
    assert set(step["with"]) <= set(action["inputs"])
    assert {"model", "data"} <= set(step["with"])
