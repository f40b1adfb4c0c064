"""Every bad input ends with exit 2, one line naming the file and the problem, a hint,
and no traceback; nothing half-written is left behind; nothing from an untrusted
file is ever run. Each case has a file crafted for it."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

# The one-line error contract (exit 2, "error: ...", "hint: ...", no traceback); "bad(run(...))" reads as the case.
from conftest import error_line as bad
from conftest import run
from truth_models import bounded_inputs, linear_with_dead_units

MODELS = """
import torch
from torch import nn
from truth_models import linear_with_dead_units

def build(width=32):
    return nn.Sequential(nn.Linear(10, width), nn.ReLU(), nn.Linear(width, 1))

def deeper():
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 1))

def conv():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

def plain():
    return nn.Sequential(nn.Linear(10, 4), nn.LayerNorm(4), nn.Linear(4, 1))

class Interrupted(nn.Module):
    '''Raises KeyboardInterrupt (Ctrl-C) in its third forward pass.'''
    def __init__(self):
        super().__init__()
        self.body = linear_with_dead_units(dead=8)
        self.calls = 0
    def forward(self, x):
        self.calls += 1
        if self.calls == 3:
            raise KeyboardInterrupt
        return self.body(x)

def empty_dataset():
    return torch.utils.data.TensorDataset(torch.zeros(0, 10))
"""


class Evil:
    """Unpickling this creates a file: the proof that code from the file ran."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


@pytest.fixture
def f(tmp_path: Path) -> dict[str, Path]:
    """A good state_dict, its architecture file, good data, and a folder for crafted files."""
    (tmp_path / "models.py").write_text(MODELS)
    torch.save(linear_with_dead_units(dead=8).state_dict(), tmp_path / "sd.pt")
    np.save(tmp_path / "x.npy", bounded_inputs(60, 10).numpy())
    return {"dir": tmp_path, "sd": tmp_path / "sd.pt", "x": tmp_path / "x.npy",
            "models": tmp_path / "models.py", "pwned": tmp_path / "PWNED"}


# -- model files ------------------------------------------------------------------------------


def test_missing_model_file(runner, f):
    bad(run(runner, f["dir"] / "nope.pt", f["x"]), "model file not found", "nope.pt")


def test_model_path_is_a_folder(runner, f):
    bad(run(runner, f["dir"], f["x"]), "is a folder", str(f["dir"]))


def test_empty_model_file(runner, f):
    (f["dir"] / "empty.pt").write_bytes(b"")
    bad(run(runner, f["dir"] / "empty.pt", f["x"]), "model file is empty", "empty.pt")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_unreadable_model_file(runner, f):
    os.chmod(f["sd"], 0)
    try:
        bad(run(runner, f["sd"], f["x"], "--arch", f"{f['models']}:build"), "cannot be read", "sd.pt")
    finally:
        os.chmod(f["sd"], 0o644)


def test_unreadable_model_file_as_the_os_reports_it(runner, f, monkeypatch):
    def denied(path: Path) -> str:
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr("deadrelu.load.files.file_sha256", denied)  # check_file hashes there
    bad(run(runner, f["sd"], f["x"], "--arch", f"{f['models']}:build"), "cannot be read", "sd.pt",
        "Permission denied")


def _truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    out = path.with_name("truncated" + path.suffix)
    out.write_bytes(data[: int(len(data) * keep)])
    return out


def test_truncated_state_dict(runner, f):
    bad(run(runner, _truncate(f["sd"]), f["x"], "--arch", f"{f['models']}:build"),
        "truncated.pt", "probably truncated or corrupt")


def test_truncated_safetensors(runner, f):
    from safetensors.torch import save_file
    path = f["dir"] / "w.safetensors"
    save_file(linear_with_dead_units().state_dict(), str(path))
    bad(run(runner, _truncate(path), f["x"], "--arch", f"{f['models']}:build"),
        "truncated.safetensors", "not a readable safetensors file")


def test_truncated_torchscript_and_export_archives(runner, f):
    model = linear_with_dead_units().eval()
    torch.jit.save(torch.jit.script(model), str(f["dir"] / "ts.pt"))
    bad(run(runner, _truncate(f["dir"] / "ts.pt"), f["x"]), "truncated.pt", "truncated or corrupt")
    torch.export.save(torch.export.export(model, (torch.zeros(4, 10),)), str(f["dir"] / "ep.pt2"))
    bad(run(runner, _truncate(f["dir"] / "ep.pt2"), f["x"]), "truncated.pt2")


def test_broken_export_archive_is_one_line_not_a_logged_traceback(runner, f, capfd):
    with zipfile.ZipFile(f["dir"] / "broken.pt2", "w") as archive:
        archive.writestr("broken/archive_format", "pt2")
        archive.writestr("broken/data/weights/model_weights_config.json", "{")
    bad(run(runner, f["dir"] / "broken.pt2", f["x"]), "broken.pt2", "a torch.export archive that cannot be loaded")
    assert "Traceback" not in capfd.readouterr().err  # torch logs one; deadrelu keeps it off the terminal


@pytest.mark.parametrize("content,expected", [
    (b"hello, this is a README\nnot a model\n", "a text file (it starts with 'hello, this is a README')"),
    (b"\x89HDF\r\n\x1a\n" + bytes(100), "an HDF5 file"),
    (b"\x80\x04\x95" + bytes(20), "a plain pickle, not a torch.save file"),
])
def test_wrong_format_model_file(runner, f, content, expected):
    (f["dir"] / "model.pt").write_bytes(content)
    bad(run(runner, f["dir"] / "model.pt", f["x"]), "model.pt", expected)


def test_data_given_as_the_model(runner, f):
    bad(run(runner, f["x"], f["x"]), "x.npy", "a NumPy .npy array, i.e. data, not a model")
    torch.save(torch.zeros(5, 10), f["dir"] / "t.pt")
    bad(run(runner, f["dir"] / "t.pt", f["x"]), "t.pt", "holds a tensor of shape (5, 10), i.e. data, not a model")
    torch.save({"inputs": torch.zeros(5, 10), "labels": torch.zeros(5)}, f["dir"] / "d.pt")
    bad(run(runner, f["dir"] / "d.pt", f["x"]), "d.pt", "inputs (5, 10)", "data, not model weights")


def test_a_model_given_as_the_data(runner, f):
    arch = f"{f['models']}:build"
    bad(run(runner, f["sd"], f["sd"], "--arch", arch), "sd.pt", "a state_dict (model weights", "not data")
    torch.save(linear_with_dead_units(), f["dir"] / "whole.pt")
    bad(run(runner, f["sd"], f["dir"] / "whole.pt", "--arch", arch), "whole.pt",
        "torch.nn.modules.linear.Linear", "probably a model, not data; not unpickled")


def test_state_dict_without_arch(runner, f):
    bad(run(runner, f["sd"], f["x"]), "sd.pt", "holds weights only")


def test_arch_mismatch_names_the_first_keys(runner, f):
    line = bad(run(runner, f["sd"], f["x"], "--arch", f"{f['models']}:build", "--arch-kwargs", '{"width": 16}'),
               "sd.pt", "weights do not fit the architecture", "0.weight (file (32, 10), model (16, 10))")
    assert "wrongly shaped" in line
    bad(run(runner, f["sd"], f["x"], "--arch", f"{f['models']}:deeper"), "sd.pt", "missing 2 key(s) e.g. 4.weight")


def test_arch_that_cannot_be_imported(runner, f):
    bad(run(runner, f["sd"], f["x"], "--arch", "no_such_package.models:Net"), "--arch", "no_such_package.models")
    bad(run(runner, f["sd"], f["x"], "--arch", f"{f['models']}:Missing"), "has no attribute 'Missing'")


# -- data files -------------------------------------------------------------------------------


def test_data_shape_the_model_rejects(runner, f):
    np.save(f["dir"] / "seven.npy", bounded_inputs(300, 7).numpy())
    line = bad(run(runner, f["sd"], f["dir"] / "seven.npy", "--arch", f"{f['models']}:build", "--batch-size", "64"),
               "seven.npy", "data shape (300, 7)", "batch fed (64, 7)")
    assert "in_features=10" in run(runner, f["sd"], f["dir"] / "seven.npy", "--arch",
                                   f"{f['models']}:build").stderr
    assert "batch 0" in line
    np.save(f["dir"] / "gray.npy", np.zeros((6, 1, 8, 8), dtype=np.float32))
    result = run(runner, "--model", f"{f['models']}:conv", f["dir"] / "gray.npy")
    bad(result, "gray.npy", "data shape (6, 1, 8, 8)", "batch fed (6, 1, 8, 8)")
    assert "Conv2d(in_channels=3)" in result.stderr


def test_data_shape_a_torchscript_model_rejects_keeps_the_ops_message(runner, f):
    torch.jit.save(torch.jit.script(linear_with_dead_units()), str(f["dir"] / "ts.pt"))
    np.save(f["dir"] / "seven.npy", bounded_inputs(30, 7).numpy())
    result = run(runner, f["dir"] / "ts.pt", f["dir"] / "seven.npy")
    bad(result, "seven.npy", "data shape (30, 7)", "mat1 and mat2 shapes cannot be multiplied (30x7 and 10x32)")
    assert "Linear(in_features=10)" in result.stderr


def test_data_shape_an_exported_program_rejects(runner, f):
    program = torch.export.export(linear_with_dead_units().eval(), (torch.zeros(4, 10),),
                                  dynamic_shapes={"input": {0: torch.export.Dim("batch", min=2)}})
    torch.export.save(program, str(f["dir"] / "ep.pt2"))
    np.save(f["dir"] / "seven.npy", bounded_inputs(30, 7).numpy())
    result = run(runner, f["dir"] / "ep.pt2", f["dir"] / "seven.npy")
    bad(result, "seven.npy", "data shape (30, 7)", "batch fed (30, 7)")
    assert "the exported program takes input of shape (B in [2, inf], 10)" in result.stderr
    np.save(f["dir"] / "one.npy", bounded_inputs(1, 10).numpy()[0])
    bad(run(runner, f["dir"] / "ep.pt2", f["dir"] / "one.npy"), "one.npy", "one unbatched sample")


def test_unbatched_data(runner, f):
    np.save(f["dir"] / "one.npy", bounded_inputs(1, 10).numpy()[0])
    bad(run(runner, f["sd"], f["dir"] / "one.npy", "--arch", f"{f['models']}:build"),
        "one.npy", "data of shape (10,) looks like one unbatched sample", "Linear(in_features=10)")
    np.save(f["dir"] / "image.npy", np.zeros((3, 8, 8), dtype=np.float32))
    result = run(runner, "--model", f"{f['models']}:conv", f["dir"] / "image.npy")
    bad(result, "image.npy", "(3, 8, 8) looks like one unbatched sample", "Conv2d(in_channels=3)")
    assert "shape (1, 3, 8, 8)" in result.stderr


@pytest.mark.parametrize("array,expected", [
    (np.array([["a", "b"], ["c", "d"]]), "holds text"),
    (np.zeros((4, 10), dtype=np.complex64), "complex data (complex64)"),
    (np.zeros(4, dtype=[("x", "f4"), ("y", "f4")]), "a structured array (x, y)"),
])
def test_wrong_dtype(runner, f, array, expected):
    np.save(f["dir"] / "odd.npy", array)
    bad(run(runner, f["sd"], f["dir"] / "odd.npy", "--arch", f"{f['models']}:build"), "odd.npy", expected)


def test_object_array_is_never_unpickled(runner, f):
    np.save(f["dir"] / "objects.npy", np.array([Evil(f["pwned"])], dtype=object), allow_pickle=True)
    bad(run(runner, f["sd"], f["dir"] / "objects.npy", "--arch", f"{f['models']}:build"),
        "objects.npy", "holds Python objects")
    assert not f["pwned"].exists()


def test_empty_data(runner, f):
    arch = ["--arch", f"{f['models']}:build"]
    np.save(f["dir"] / "none.npy", np.zeros((0, 10), dtype=np.float32))
    bad(run(runner, f["sd"], f["dir"] / "none.npy", *arch), "none.npy", "holds no samples")
    (f["dir"] / "zero.npy").write_bytes(b"")
    bad(run(runner, f["sd"], f["dir"] / "zero.npy", *arch), "data file is empty", "zero.npy")
    (f["dir"] / "header.csv").write_text("a,b,c\n")
    bad(run(runner, f["sd"], f["dir"] / "header.csv", *arch), "header.csv", "no rows")
    (f["dir"] / "blank.csv").write_text("\n")
    bad(run(runner, f["sd"], f["dir"] / "blank.csv", *arch), "blank.csv", "empty")
    bad(run(runner, f["sd"], "--data", f"{f['models']}:empty_dataset", *arch), "empty")


def test_truncated_and_mislabelled_data(runner, f):
    arch = ["--arch", f"{f['models']}:build"]
    bad(run(runner, f["sd"], _truncate(f["x"]), *arch), "truncated.npy", "not a valid .npy file")
    (f["dir"] / "x.dat").write_text("1,2,3\n")
    bad(run(runner, f["sd"], f["dir"] / "x.dat", *arch), "x.dat", "unsupported data format .dat")
    (f["dir"] / "x.txt").write_text("1,2,3\n")  # text is tokenized: it needs a tokenizer
    bad(run(runner, f["sd"], f["dir"] / "x.txt", *arch), "x.txt", "text data needs a tokenizer")
    (f["dir"] / "fake.npz").write_text("not a zip")
    bad(run(runner, f["sd"], f["dir"] / "fake.npz", *arch), "fake.npz", "not a valid .npz file")


def test_table_column_problems(runner, f):
    arch = ["--arch", f"{f['models']}:build"]
    (f["dir"] / "t.csv").write_text("name,size\nx,1\ny,2\n")
    bad(run(runner, f["sd"], f["dir"] / "t.csv", *arch, "--columns", "weight"), "t.csv", "no column named 'weight'")
    bad(run(runner, f["sd"], f["dir"] / "t.csv", *arch, "--columns", "name"), "t.csv", "column 'name' is not numeric")
    (f["dir"] / "words.csv").write_text("name,city\nx,Oslo\n")
    bad(run(runner, f["sd"], f["dir"] / "words.csv", *arch), "words.csv", "no numeric column")


# -- models with nothing to scan ------------------------------------------------------------


def test_model_without_activations_names_its_module_types(runner, f):
    bad(run(runner, "--model", f"{f['models']}:plain", f["x"]), f"{f['models']}:plain",
        "no ReLU-family activation found in Sequential", "module types: LayerNorm, Linear",
        "no functional activation (F.relu...) ran either")
    bad(run(runner, "--model", f"{f['models']}:plain", f["x"], "--no-functional"),
        "functional calls (F.relu...) were not captured: --no-functional")


def test_torchscript_without_activations_names_its_module_types(runner, f):
    plain = nn.Sequential(nn.Linear(10, 4), nn.LayerNorm(4), nn.Linear(4, 1))
    torch.jit.save(torch.jit.script(plain), str(f["dir"] / "plain_ts.pt"))
    bad(run(runner, f["dir"] / "plain_ts.pt", f["x"]), "plain_ts.pt", "no ReLU-family activation call seen",
        "module types: LayerNorm, Linear")


# -- outputs, usage, interruption --------------------------------------------------------------


def test_output_path_that_cannot_be_written_fails_before_the_scan(runner, f):
    arch = ["--arch", f"{f['models']}:build"]
    bad(run(runner, f["sd"], f["x"], *arch, "--json", f["x"] / "report.json"),
        "cannot write", "report.json", "x.npy is a file, not a folder")
    bad(run(runner, f["sd"], f["x"], *arch, "--json", f["dir"]), "cannot write", "it is a folder")


def test_a_python_reference_given_as_a_path_points_to_the_option(runner, f):
    result = run(runner, f"{f['models']}:build", f["x"])
    bad(result, "model file not found", "models.py:build")
    assert f"use --model {f['models']}:build" in result.stderr
    result = run(runner, f["sd"], f"{f['models']}:make", "--arch", f"{f['models']}:build")
    bad(result, "data file not found", "models.py:make")
    assert f"use --data {f['models']}:make" in result.stderr


def test_wrong_number_of_file_arguments(runner, f):
    bad(run(runner, f["sd"]), "expected MODEL DATA", "sd.pt")
    bad(run(runner, "--model", f"{f['models']}:build", f["sd"], f["x"]), "expected DATA with --model")
    bad(run(runner, f["sd"], f["x"], "--weights", f["sd"]), "--weights goes with --model")


def test_ctrl_c_leaves_no_report_unless_partial_is_asked_for(runner, f):
    model = ["--model", f"{f['models']}:Interrupted", f["x"], "--batch-size", "10"]
    out = f["dir"] / "out" / "report.json"
    interrupted = run(runner, *model, "--json", out)
    assert interrupted.exit_code == 130
    assert "interrupted" in interrupted.stderr and "--partial-on-interrupt" in interrupted.stderr
    assert "Traceback" not in interrupted.output
    assert not out.exists() and not list(f["dir"].rglob("*.tmp"))
    partial = run(runner, *model, "--json", out, "--partial-on-interrupt")
    assert partial.exit_code == 130, partial.output  # interrupted all the same: the report is out, marked partial
    assert "interrupted: the report covers the 20 samples scanned before Ctrl-C" in partial.stderr
    report = json.loads(out.read_text())
    assert report["data"]["partial"] is True and report["data"]["samples"] == 20
    assert "PARTIAL: the scan was interrupted after 20 samples" in report["warnings"]
    assert report["summary"]["dead"] == 8  # two batches already show the 8 dead units


# -- never run code from an untrusted file -----------------------------------------------------


def test_malicious_pickle_is_never_unpickled_without_consent(runner, f):
    torch.save(Evil(f["pwned"]), f["dir"] / "evil.pt")
    bad(run(runner, f["dir"] / "evil.pt", f["x"]), "evil.pt", "io.open", "refusing to unpickle")
    assert not f["pwned"].exists()
    bad(run(runner, f["dir"] / "evil.pt", f["x"], "--arch", f"{f['models']}:build"), "refusing to unpickle")
    assert not f["pwned"].exists()
    bad(run(runner, f["sd"], f["dir"] / "evil.pt", "--arch", f"{f['models']}:build"), "evil.pt", "not unpickled")
    assert not f["pwned"].exists()
    bad(run(runner, "--model", f"{f['models']}:build", "--weights", f["dir"] / "evil.pt", f["x"]),
        "evil.pt", "refusing to unpickle")
    assert not f["pwned"].exists()
    # With consent the file's code runs (that is what consent means) and the result is not a model.
    bad(run(runner, f["dir"] / "evil.pt", f["x"], "--allow-pickle"), "evil.pt", "holds no model")
    assert f["pwned"].exists()


def test_malicious_pickle_inside_an_export_archive_is_refused(runner, f):
    program = torch.export.export(linear_with_dead_units().eval(), (torch.zeros(4, 10),))
    torch.export.save(program, str(f["dir"] / "good.pt2"))
    evil_bytes = io.BytesIO()
    torch.save(Evil(f["pwned"]), evil_bytes)
    with zipfile.ZipFile(f["dir"] / "good.pt2") as source, \
            zipfile.ZipFile(f["dir"] / "evil.pt2", "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename.endswith("sample_inputs/model.pt"):
                data = evil_bytes.getvalue()
            target.writestr(item, data)
    bad(run(runner, f["dir"] / "evil.pt2", f["x"]), "evil.pt2", "would run code when loaded", "refusing")
    assert not f["pwned"].exists()
    # The guard is needed: torch.export.load falls back to the full unpickler for that member.
    run(runner, f["dir"] / "evil.pt2", f["x"], "--allow-pickle")
    assert f["pwned"].exists()
