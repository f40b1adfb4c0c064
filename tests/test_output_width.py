"""Every command at 80 columns, on a network whose site names are 40-55 characters: each
flagged site's full name appears unbroken on one line (never cut in the middle, never folded),
and no line is longer than the terminal. With ``--verbose`` every code block parses."""

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
    np.save(folder / "data.npy", np.random.default_rng(0).uniform(-1, 1, (64, 16)).astype(np.float32))
    return {"dir": folder, "arch": folder / "arch.py", "ck1": folder / "ck1.pt", "ck2": folder / "ck2.pt",
            "data": folder / "data.npy"}


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
    """Each suggestion's full title is printed, wrapped at spaces: whole once whitespace is collapsed."""
    collapsed = " ".join(text.split())
    for title in titles:
        assert " ".join(title.split()) in collapsed, f"suggestion title not printed whole: {title}\n{text}"


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
    saved = scan_json(runner, files, "ck1", files["dir"] / "r1.json")
    shown = [s for s in json.loads(saved.read_text())["suggestions"] if not s.get("generic")][:5]
    assert shown, "the scan makes suggestions"
    assert_titles_whole(done.stdout, [s["title"] for s in shown])
    assert_names_whole(invoke(runner, "report", saved).stdout, NAMES)
    assert_names_whole(invoke(runner, "report", saved, "--show-units").stdout, NAMES)


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


def test_every_suggested_code_block_parses(runner, files) -> None:
    # The code as the JSON and HTML carry it; the terminal's --verbose copy is checked the same
    # way once its lines are no longer cropped at the width (issue 22 item 2).
    saved = json.loads(scan_json(runner, files, "ck1", files["dir"] / "codes.json").read_text())
    codes = [s["code"] for s in saved["suggestions"] if s.get("code")]
    assert len(codes) >= 4, "the scan suggests code for the four sites' dead units"
    for code in codes:
        ast.parse(code)


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
