"""Every command at 80 columns, on a network whose site names are 40-55 characters: each
flagged site's full name appears unbroken on one line (never cut in the middle, never folded),
and no line is longer than the terminal. The default view leads with one action line per cause,
whole; ``--verbose`` adds each one's evidence (the title) and its code, printed whole: every code
block as the terminal shows it parses, long unit lists and names included."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deadrelu.cli import app

ARCH = '''
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.pointwise_projection = nn.Linear(width, width)
        self.pointwise_act = nn.ReLU()

    def forward(self, x):
        return self.pointwise_act(self.pointwise_projection(x))


class Net(nn.Module):
    def __init__(self, width=16, dead=(3, 5, 7, 9)):
        super().__init__()
        self.feature_backbone = nn.ModuleDict(
            {f"residual_stage_{k}": Block(width) for k in range(len(dead))})
        self.classifier_head = nn.Linear(width, 2)
        with torch.no_grad():
            for block, count in zip(self.feature_backbone.values(), dead):
                # identity weights: a unit is dead exactly when its bias is -100 (inputs after
                # the first block are >= 0.1; the first block's are in [-1, 1])
                block.pointwise_projection.weight.copy_(torch.eye(width) * 0.5)
                block.pointwise_projection.bias.zero_()
                block.pointwise_projection.bias[:count] = -100.0

    def forward(self, x):
        for block in self.feature_backbone.values():
            x = block(x) + 0.1
        return self.classifier_head(x)


def build(width=16):
    return Net(width)


def build_later(width=16):
    return Net(width, dead=(5, 7, 9, 11))


def build_wide(width=64):
    # unit lists long enough that a code line runs far past 80 columns
    return Net(width, dead=(25, 30, 35, 41))
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("widths")
    (folder / "arch.py").write_text(ARCH)
    namespace: dict = {}
    exec(compile(ARCH, "arch", "exec"), namespace)  # noqa: S102
    torch.manual_seed(0)
    torch.save(namespace["build"]().state_dict(), folder / "ck1.pt")
    torch.save(namespace["build_later"]().state_dict(), folder / "ck2.pt")
    torch.save(namespace["build_wide"]().state_dict(), folder / "wide.pt")
    np.save(folder / "data.npy", np.random.default_rng(0).uniform(-1, 1, (64, 16)).astype(np.float32))
    np.save(folder / "wide.npy", np.random.default_rng(0).uniform(-1, 1, (64, 64)).astype(np.float32))
    return {"dir": folder, "arch": folder / "arch.py", "ck1": folder / "ck1.pt", "ck2": folder / "ck2.pt",
            "data": folder / "data.npy", "wide": folder / "wide.pt", "wide_data": folder / "wide.npy"}


@pytest.fixture(autouse=True)
def terminal_80(monkeypatch) -> None:
    """The console as an 80-column terminal makes it (the test process made it at 120)."""
    from deadrelu.commands import common
    monkeypatch.setattr(common.stdout, "width", 80)


NAMES = [f"feature_backbone.residual_stage_{k}.pointwise_act" for k in range(4)]


def invoke(runner, *args: object):
    done = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "80"})
    assert done.exit_code in (0, 1), done.output
    return done


def assert_names_whole(text: str, names: list[str]) -> None:
    lines = text.splitlines()
    too_long = [line for line in lines if len(line) > 80]
    assert not too_long, too_long
    for name in names:
        assert any(name in line for line in lines), f"{name} is not whole on any line:\n{text}"
    cut = [line for line in lines if "…" in line.replace(", …", "")]
    assert not cut, f"shortened: {cut}"


def assert_titles_whole(text: str, titles: list[str]) -> None:
    """Each line (an action line, a title) is printed whole, wrapped at spaces: whole once whitespace
    is collapsed."""
    collapsed = " ".join(text.split())
    for title in titles:
        assert " ".join(title.split()) in collapsed, f"not printed whole: {title}\n{text}"


def printed_code_blocks(text: str) -> list[str]:
    """The code blocks of a ``--verbose`` report as the terminal shows them: the lines under each
    ``code:`` line, up to the first line less indented than the code."""
    from deadrelu.render.console import CODE_INDENT
    blocks, lines = [], text.splitlines()
    for k, line in enumerate(lines):
        if line.strip() != "code:":
            continue
        block = []
        for code in lines[k + 1:]:
            if code.strip() and not code.startswith(CODE_INDENT):
                break
            block.append(code[len(CODE_INDENT):])
        blocks.append("\n".join(block).rstrip("\n"))
    return blocks


def scan_json(runner, files, checkpoint: str, out: Path) -> Path:
    done = invoke(runner, "scan", files[checkpoint], files["data"], "--arch", f"{files['arch']}:build",
                  "--json", out, "-q")
    assert out.exists(), done.output
    return out


def test_the_names_are_40_to_55_characters(runner, files) -> None:
    result = json.loads(scan_json(runner, files, "ck1", files["dir"] / "names.json").read_text())
    assert [site["name"] for site in result["sites"]] == NAMES
    assert all(40 <= len(name) <= 55 for name in NAMES)
    assert [site["dead"] for site in result["sites"]] == [3, 5, 7, 9]


def test_scan_and_report_at_80_columns(runner, files) -> None:
    done = invoke(runner, "scan", files["ck1"], files["data"], "--arch", f"{files['arch']}:build")
    assert_names_whole(done.stdout, NAMES)
    # The verdict wraps under itself (rich wrapped it to column 0: '(56.2%)' and '(#1)' alone at the edge).
    assert done.stdout.splitlines()[:2] == [
        f"FAIL  worst site {NAMES[3]}: 9 of 16 dead", "      (56.2%)"]
    assert not [line for line in done.stdout.splitlines() if line.startswith("(")]
    saved = scan_json(runner, files, "ck1", files["dir"] / "r1.json")
    stored = json.loads(saved.read_text())["suggestions"]
    shown = [s for s in stored if not s.get("generic")][:5]
    assert shown, "the scan makes suggestions"
    # The default view: one action line per cause, whole; the evidence (the title) is not there.
    assert_titles_whole(done.stdout, [s["action_line"] for s in shown])
    collapsed = " ".join(done.stdout.split())
    assert not [s["title"] for s in shown if " ".join(s["title"].split()) in collapsed], "evidence: --verbose"
    for report in (invoke(runner, "report", saved).stdout, invoke(runner, "report", saved, "--show-units").stdout):
        assert_names_whole(report, NAMES)
        assert_titles_whole(report, [s["action_line"] for s in shown])
    # --verbose: every suggestion's action line and its title, whole; only code runs past the edge.
    verbose = invoke(runner, "scan", files["ck1"], files["data"], "--arch", f"{files['arch']}:build", "--verbose")
    assert_titles_whole(verbose.stdout, [s["action_line"] for s in stored] + [s["title"] for s in stored])
    code_lines = {line for block in printed_code_blocks(verbose.stdout) for line in block.splitlines()}
    assert [line for line in verbose.stdout.splitlines()
            if len(line) > 80 and line[len("          "):] not in code_lines] == []


def test_the_action_line_names_the_layer_and_what_it_explains(runner, files) -> None:
    saved = json.loads(scan_json(runner, files, "ck1", files["dir"] / "act.json").read_text())
    top = saved["suggestions"][0]
    assert top["cause"] == "bias"
    assert top["action_line"] == ("feature_backbone.residual_stage_0.pointwise_projection and 3 more layers: "
                                  "reset 24 negative biases to 0 → explains 24 of 24 dead at "
                                  "feature_backbone.residual_stage_0.pointwise_act and 3 more sites")


def test_diff_and_merge_at_80_columns(runner, files) -> None:
    base = scan_json(runner, files, "ck1", files["dir"] / "base.json")
    new = scan_json(runner, files, "ck2", files["dir"] / "new.json")
    done = invoke(runner, "diff", base, new)
    assert done.stdout.splitlines()[0].startswith("WARN  ")
    assert_names_whole(done.stdout, NAMES)
    parts = []
    for index in range(2):
        part = files["dir"] / f"part{index}.json"
        invoke(runner, "scan", files["ck1"], files["data"], "--arch", f"{files['arch']}:build",
               "--shard", f"{index}/2", "--batch-size", 16, "--json", part, "-q")
        parts.append(part)
    assert_names_whole(invoke(runner, "merge", *parts).stdout, NAMES)


def test_trend_at_80_columns(runner, files) -> None:
    done = invoke(runner, "trend", files["ck1"], files["ck2"], files["data"], "--arch", f"{files['arch']}:build")
    assert_names_whole(done.stdout, NAMES)


def test_prune_and_fix_at_80_columns(runner, files) -> None:
    pruned = invoke(runner, "prune", files["ck1"], files["data"], "--arch", f"{files['arch']}:build",
                    "--state-dict", files["dir"] / "pruned.pt")
    assert_names_whole(pruned.stdout, NAMES)
    fixed = invoke(runner, "fix", files["ck1"], files["data"], "--arch", f"{files['arch']}:build",
                   "--recycle", "dead", "--out", files["dir"] / "fixed.pt")
    assert_names_whole(fixed.stdout, NAMES)


def test_every_code_block_the_terminal_prints_parses(runner, files) -> None:
    # issue 22: rich cropped --verbose code at the console width (`layer.bias[[3, 5, 6, 11, … 98, 1`);
    # the code is read back from what an 80-column terminal shows, long names and long unit lists
    # (35 units: a 150-character line) included, and must be the JSON's code, whole.
    json_path = files["dir"] / "wide.json"
    done = invoke(runner, "scan", files["wide"], files["wide_data"], "--arch", f"{files['arch']}:build_wide",
                  "--verbose", "--json", json_path)
    saved = json.loads(json_path.read_text())
    codes = [s["code"] for s in saved["suggestions"] if s.get("code")]
    assert len(codes) >= 3, "bias reset, the activation swap and re-initialisation come with code"
    assert max(len(line) for code in codes for line in code.splitlines()) > 120
    printed = printed_code_blocks(done.stdout)
    assert printed == codes
    for code in printed:
        ast.parse(code)
    assert "layer.bias[[" + ", ".join(str(k) for k in range(35)) + "]] = 0.0" in done.stdout


def test_the_wrote_line_wraps_at_spaces_not_inside_a_word(runner, tmp_path) -> None:
    # issue 22: "load with torch.export.load(path).module())" broke as "torch\n.export.load".
    from conftest import make_files

    made = make_files(tmp_path)
    out = tmp_path / "pruned.pt2"
    done = invoke(runner, "prune", made["model"], made["data"], "--arch", f"{made['arch']}:build", "--out", out)
    assert out.exists(), done.output
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any("torch.export.load(path).module())" in line for line in lines), done.stdout
    start = next(k for k, line in enumerate(lines) if line.startswith("wrote "))
    assert all(line.startswith("      ") for line in lines[start + 1:start + 3] if line.strip())  # hanging indent


def test_wrap_hanging_never_breaks_a_word() -> None:
    from deadrelu.render.text import wrap_hanging
    text = "wrote a.pt2 (load with torch.export.load(path).module())"
    assert wrap_hanging(text, 30, 4) == "wrote a.pt2 (load with\n    torch.export.load(path).module())"
    assert wrap_hanging("x" * 50, 10) == "x" * 50  # longer than the room: whole, on its own line
    assert wrap_hanging(text, None) == text


def test_a_report_saved_before_action_lines_shows_its_titles(runner, files) -> None:
    # schema_version 1 gained action_line; a JSON written before it still renders, leading with the title.
    saved = scan_json(runner, files, "ck1", files["dir"] / "old.json")
    data = json.loads(saved.read_text())
    for suggestion in data["suggestions"]:
        del suggestion["action_line"]
    saved.write_text(json.dumps(data))
    shown = [s for s in data["suggestions"] if not s.get("generic")][:5]
    report = invoke(runner, "report", saved).stdout
    assert_names_whole(report, NAMES)
    assert_titles_whole(report, [s["title"] for s in shown])
