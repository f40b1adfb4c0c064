"""No output lands inside an input (issue 18 §2): every file a command reads -- each checkpoint
of a folder or glob, every file of a Hugging Face model folder or --tokenizer folder, config,
data, result JSONs -- is refused as an output, reached directly, through a symlink or through
a hard link, by every command; the input stays byte-identical."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from conftest import error_line, make_files
from deadrelu.cli import app
from deadrelu.errors import OutputError
from deadrelu.render import outputs as guard
from deadrelu.render.outputs import InputSet, check_outputs
from lm_fixtures import save_model_folder, save_text, save_tokenizer
from report_fixtures import synthetic_result
from truth_models import linear_with_dead_units


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def digests(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (links followed) by relative path -> SHA-256."""
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def invoke(runner, *args: object):
    return runner.invoke(app, [*map(str, args)])


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a scan or a model load starts: every refusal comes before any work."""
    import deadrelu.load.sources
    import deadrelu.scanning
    monkeypatch.setattr(deadrelu.scanning, "scan", lambda *a, **k: pytest.fail("scanned before checking"))
    monkeypatch.setattr(deadrelu.load.sources, "open_model", lambda *a, **k: pytest.fail("loaded before checking"))


@pytest.fixture(scope="module")
def hf(tmp_path_factory) -> dict[str, Path]:
    """A tiny OPT folder (config.json, model.safetensors, tokenizer files), a separate tokenizer
    folder and a text file: all built here, nothing downloaded."""
    pytest.importorskip("transformers", reason="the Hugging Face reader needs transformers: pip install 'deadrelu[hf]'")
    root = tmp_path_factory.mktemp("hf")
    save_tokenizer(root / "tok")
    return {"model": save_model_folder(root / "model", "opt"), "tok": root / "tok",
            "text": save_text(root / "lines.txt"), "dir": root}


# -- folders: a Hugging Face model folder, a tokenizer folder ------------------------------------------

@pytest.mark.parametrize("option, member", [("--html", "config.json"), ("--json", "model.safetensors"),
                                            ("--junit", "tokenizer.json"), ("--markdown", "tokenizer_config.json")])
def test_an_output_on_a_file_of_the_model_folder_is_refused(runner, hf, no_work, option, member):
    before = digests(hf["model"])
    target = hf["model"] / member
    done = invoke(runner, "scan", hf["model"], hf["text"], option, target)
    line = error_line(done, f"{option} {target} is the file {target} of the input MODEL folder {hf['model']}",
                      "would overwrite it")
    assert "writing the report" in line
    assert digests(hf["model"]) == before


def test_an_output_on_a_file_of_the_tokenizer_folder_is_refused(runner, hf, no_work):
    before = digests(hf["tok"])
    target = hf["tok"] / "tokenizer.json"
    done = invoke(runner, "scan", hf["model"], hf["text"], "--tokenizer", hf["tok"], "--markdown", target)
    error_line(done, f"--markdown {target} is the file {target} of the input --tokenizer folder {hf['tok']}")
    assert digests(hf["tok"]) == before


def test_a_hub_cache_folder_of_symlinks_guards_the_blobs_it_points_to(runner, hf, tmp_path, no_work):
    # The Hugging Face cache layout: snapshots/<rev>/config.json -> ../../blobs/<sha>.
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "rev"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    for member in hf["model"].iterdir():
        blob = blobs / hashlib.sha256(member.name.encode()).hexdigest()
        shutil.copyfile(member, blob)
        (snapshot / member.name).symlink_to(os.path.relpath(blob, snapshot))
    before = digests(blobs)
    blob = blobs / hashlib.sha256(b"model.safetensors").hexdigest()
    done = invoke(runner, "scan", snapshot, hf["text"], "--html", blob)
    error_line(done, f"--html {blob} is the file {snapshot / 'model.safetensors'} of the input MODEL folder")
    assert digests(blobs) == before


def test_a_new_file_inside_an_input_folder_is_allowed_and_an_existing_one_refused(hf, tmp_path):
    inputs = InputSet().add("MODEL", hf["model"])
    check_outputs([("--html", hf["model"] / "report_that_does_not_exist.html")], inputs)  # overwrites nothing
    with pytest.raises(OutputError, match="is the file .*config.json of the input MODEL folder"):
        check_outputs([("--html", hf["model"] / "sub" / ".." / "config.json")], inputs)


def test_a_folder_too_large_to_list_is_guarded_by_its_path(tmp_path, monkeypatch):
    monkeypatch.setattr(guard, "MAX_FOLDER_FILES", 2)
    folder = tmp_path / "big"
    folder.mkdir()
    for index in range(5):
        (folder / f"f{index}.bin").write_bytes(b"x")
    inputs = InputSet().add("MODEL", folder)
    assert len(inputs.files()) == 2
    for index in range(5):
        with pytest.raises(OutputError, match=f"f{index}.bin"):
            check_outputs([("--json", folder / f"f{index}.bin")], inputs)


# -- trend's checkpoint folders and globs ------------------------------------------------------------

@pytest.fixture
def checkpoints(tmp_path) -> dict[str, Path]:
    files = make_files(tmp_path, samples=20)
    ck = tmp_path / "ck"
    ck.mkdir()
    for step in (1, 2, 3):
        shutil.copyfile(files["model"], ck / f"step_{step}.pt")
    return {**files, "ck": ck}


@pytest.mark.parametrize("given, option, victim", [("ck/*.pt", "--json", "step_1.pt"),
                                                   ("ck", "--html", "step_2.pt"),
                                                   ("ck/step_[23].pt", "--json", "step_3.pt")])
def test_trend_refuses_an_output_on_a_checkpoint_of_its_glob_or_folder(runner, checkpoints, no_work, given, option,
                                                                       victim):
    before = digests(checkpoints["ck"])
    target = checkpoints["ck"] / victim
    done = invoke(runner, "trend", checkpoints["dir"] / given, checkpoints["data"],
                  "--arch", f"{checkpoints['arch']}:build", option, target)
    error_line(done, f"{option} {target} is the input CKPT {target}")
    assert digests(checkpoints["ck"]) == before


def test_trend_may_write_a_report_into_its_checkpoint_folder(runner, checkpoints):
    # Only the checkpoints of a folder are trend's inputs: a report beside them is fine.
    done = invoke(runner, "trend", checkpoints["ck"], checkpoints["data"], "--arch",
                  f"{checkpoints['arch']}:build", "--json", checkpoints["ck"] / "trend.json")
    assert done.exit_code == 0, done.output
    assert (checkpoints["ck"] / "trend.json").is_file()


# -- every command, through a symlink and through a hard link ---------------------------------------

def _command_cases(files: dict[str, Path], link: Path) -> dict[str, tuple[list[object], str, Path]]:
    """command -> (arguments, the input's option, the input) with ``link`` as one output."""
    arch = ["--arch", f"{files['arch']}:build"]
    ck, base, part = files["dir"] / "step_1.pt", files["dir"] / "base.json", files["dir"] / "part.json"
    return {
        "scan": (["scan", files["model"], files["data"], *arch, "--json", link], "MODEL", files["model"]),
        "scan-config": (["scan", files["model"], files["data"], *arch, "--config", files["config"], "--junit", link],
                        "--config", files["config"]),
        "scan-data": (["scan", files["model"], files["data"], *arch, "--html", link], "DATA", files["data"]),
        "report": (["report", base, "--html", link], "RESULT.json", base),
        "trend": (["trend", files["dir"] / "step_*.pt", files["data"], *arch, "--json", link], "CKPT", ck),
        "diff": (["diff", base, files["dir"] / "new.json", "--junit", link], "BASE.json", base),
        "merge": (["merge", part, "--json", link], "PART.json", part),
        "prune": (["prune", files["model"], files["data"], *arch, "--state-dict", link], "MODEL", files["model"]),
        "fix": (["fix", files["model"], files["data"], *arch, "--recycle", "dead", "--out", link], "MODEL",
                files["model"]),
        "fix-arch": (["fix", files["model"], files["data"], *arch, "--recycle", "dead", "--json", link], "--arch",
                     files["arch"]),
    }


COMMANDS = ["scan", "scan-config", "scan-data", "report", "trend", "diff", "merge", "prune", "fix", "fix-arch"]


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_refuses_an_output_linked_to_an_input(runner, tmp_path, no_work, command, kind):
    files = make_files(tmp_path, samples=20)
    files["config"] = tmp_path / "cfg.toml"
    files["config"].write_text("[scan]\nbatch_size = 16\n")
    torch.save(linear_with_dead_units(dead=8, width=32).state_dict(), tmp_path / "step_1.pt")
    shutil.copyfile(tmp_path / "step_1.pt", tmp_path / "step_2.pt")
    for name in ("base.json", "new.json", "part.json"):
        synthetic_result(sites=3, units=8).to_json(tmp_path / name)
    link = tmp_path / "elsewhere" / "innocent.pt"
    link.parent.mkdir()
    args, option, victim = _command_cases(files, link)[command]
    (link.symlink_to if kind == "symlink" else link.hardlink_to)(victim)
    before = {path.name: digest(path) for path in tmp_path.iterdir() if path.is_file()}
    done = invoke(runner, *args)
    via = "a hard link to " if kind == "hardlink" else ""
    output_option = args[args.index(link) - 1]
    error_line(done, f"{output_option} {link} is {via}the input {option} {victim}", "would overwrite it")
    assert {path.name: digest(path) for path in tmp_path.iterdir() if path.is_file()} == before
    assert link.exists() and (link.is_symlink() if kind == "symlink" else os.path.samefile(link, victim))


def test_the_guard_module_imports_no_torch():
    import subprocess
    code = ("import sys; import deadrelu.render.outputs, deadrelu.render.reports, deadrelu.render.files; "
            "sys.exit('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert done.returncode == 0
