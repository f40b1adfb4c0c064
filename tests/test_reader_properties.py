"""Property: no mutation of an input file makes deadrelu crash or run code from it.

Every reader gets valid files mutated the ways a damaged or hostile file differs from a
good one (bytes flipped, cut short, duplicated; hostile snippets spliced in: 3,000 open
brackets, a 5,000-digit integer, a lone surrogate, NaN, a NUL, bytes that are not UTF-8;
fields swapped for values of another type; crafted ``.npy`` headers, one of them an
object array whose pickle would write a marker file). Each is fed through the CLI as a
user would: the exit code is 0 (still valid) or 2 (one line and a hint), never 3 (a
deadrelu bug), and the marker file never appears.

The readers: ``.npy``, ``.npz``, CSV, ``.jsonl`` text, a saved result JSON (``report``,
``merge``, ``diff``), a monitor log (``trend``) and a config TOML. Examples are drawn
deterministically (``derandomize``), so CI runs the same bounded set every time.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import math
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_files
from deadrelu.cli import app
from lm_fixtures import save_model_folder, save_text
from truth_models import bounded_inputs

#: DEADRELU_PROPERTY_EXAMPLES=500 explores further (random, not derandomized) on a developer's machine.
_EXPLORE = int(os.environ.get("DEADRELU_PROPERTY_EXAMPLES", "0"))
FAST = settings(max_examples=_EXPLORE or 12, deadline=None, derandomize=not _EXPLORE, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

#: Spliced into files: what hostile text throws at a parser.
SNIPPETS = (b"[" * 3000, b"{" * 3000, b"9" * 5000, b"\\ud800", b'"\\udc00"', b"NaN", b"-Infinity", b"1e999", b"-1",
            b"null", b"true", b'"', b"\x00", b"\xff\xfe", b"\xc3", b"18446744073709551616", b"[]", b"{}", b"\n",
            b"\r", b",", b"\\", b"'", b"=", b"[scan]", b"#")
#: Swapped in for a field of a JSON document.
HOSTILE_VALUES = (-1, "x", None, [], {}, 1e308, True, 2 ** 60, 2 ** 70, 0.5, -0.5, math.nan, math.inf, "\ud800",
                  [1, "a"], {"a": {"b": 1}}, 0, "", [[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]], "9" * 300)


class Marker:
    """Unpickling this writes the marker file: the proof that code from the data ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (self.path, "ran"))


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One valid file per reader, the model and tokenizer folder they are scanned with, and the marker path."""
    from typer.testing import CliRunner
    folder = tmp_path_factory.mktemp("good")
    files = make_files(folder, samples=40)
    data = np.load(files["data"])
    np.savez(folder / "data.npz", x=data)
    header = ",".join(f"f{k}" for k in range(10))
    (folder / "data.csv").write_text(header + "\n" + "\n".join(",".join(f"{v:.3f}" for v in row) for row in data)
                                     + "\n")
    # The text reader needs transformers (the `hf` extra); the other readers are checked without it.
    opt = save_model_folder(folder / "opt", "opt") if importlib.util.find_spec("transformers") else None
    (folder / "text.jsonl").write_text("\n".join(json.dumps({"text": line, "id": k}) for k, line in
                                                 enumerate(save_text(folder / "t.txt").read_text().splitlines()))
                                       + "\n")
    runner = CliRunner()
    done = runner.invoke(app, ["scan", str(files["model"]), str(files["data"]), "--arch", f"{files['arch']}:build",
                               "--json", str(folder / "result.json"), "-q"])
    assert done.exit_code == 0, done.output
    (folder / "config.toml").write_text('[scan]\nbatch_size = 16\nlimit = 30\ngranularity = "channel"\n'
                                        'layers = ["*"]\n\n[thresholds]\ntau = 0.1\ndead_threshold = 0.0\n')
    from deadrelu.monitor import Monitor
    model = torch.nn.Sequential(torch.nn.Linear(10, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4), torch.nn.ReLU())
    monitor = Monitor(model, probe=bounded_inputs(20, 10), every=5, log=folder / "monitor.jsonl")
    for step in range(12):
        monitor.step(step)
    monitor.close()
    return {**files, "dir": folder, "opt": opt, "marker": folder / "MARKER", "runner": runner}


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """``base`` with one to three byte-level edits."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(("set", "cut", "insert", "replace", "repeat")))
        at = draw(st.integers(0, len(data)))
        if kind == "set" and data:
            data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from(SNIPPETS))
        elif kind == "replace":
            data[at:at + draw(st.integers(1, 16))] = draw(st.sampled_from(SNIPPETS))
        else:
            data[at:at] = data[at:at + draw(st.integers(1, 64))]
    return bytes(data)


def _paths(node: Any, path: tuple = ()) -> list[tuple]:
    found = [path] if path else []
    children = node.items() if isinstance(node, dict) else enumerate(node[:3]) if isinstance(node, list) else ()
    for key, child in children:
        found += _paths(child, (*path, key))
    return found


@st.composite
def json_edited(draw: st.DrawFn, document: Any) -> Any:
    """``document`` with one or two fields swapped for a hostile value or removed."""
    document = json.loads(json.dumps(document))
    for _ in range(draw(st.integers(1, 2))):
        paths = _paths(document)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and draw(st.booleans()) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(draw(st.sampled_from(HOSTILE_VALUES)))  # later edits must not reach it
    return document


def _npy_bytes(descr: str, shape: Any, fortran: bool, body: bytes) -> bytes:
    """A .npy file with whatever header we say (numpy's writer would refuse the hostile ones)."""
    header = f"{{'descr': {descr!r}, 'fortran_order': {fortran}, 'shape': {shape!r}, }}".encode("latin-1")
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + body


@st.composite
def npy_files(draw: st.DrawFn, good: dict[str, Any]) -> bytes:
    """A .npy byte-mutated, or with a crafted header (dtype, shape, order) over real or pickled bytes."""
    base = good["data"].read_bytes()
    if draw(st.booleans()):
        return draw(mutated(base))
    descr = draw(st.sampled_from(("<f4", ">f4", "<f8", ">f8", "<f16", "|O", "|V8", "<U3", "<c8", "<M8[s]", "|b1",
                                  "<u8", ">i2", "<f2", "garbage", "<f4 ")))
    shape = draw(st.sampled_from(((40, 10), (10, 40), (400,), (0, 10), (), (-1, 10), (10 ** 12,), (2 ** 62, 4),
                                  (40, 10, 1), (1,), "x")))
    body = pickle.dumps(Marker(good["marker"])) if descr == "|O" else base[128:][:draw(st.integers(0, 1600))]
    return _npy_bytes(descr, shape, draw(st.booleans()), body)


def scan(good: dict[str, Any], data: Path, *args: str):
    return good["runner"].invoke(app, ["scan", str(good["model"]), str(data), "--arch", f"{good['arch']}:build", "-q",
                                       *args])


def check(done: Any, good: dict[str, Any], allowed: tuple[int, ...] = (0, 2)) -> None:
    assert done.exit_code in allowed, done.output
    assert "deadrelu bug" not in done.output and "Traceback" not in done.output, done.output
    assert not good["marker"].exists(), "code from an input file ran"


@FAST
@given(data=st.data())
def test_npy(good, tmp_path, data):
    path = tmp_path / "x.npy"
    path.write_bytes(data.draw(npy_files(good)))
    check(scan(good, path), good)


@FAST
@given(data=st.data())
def test_npz(good, tmp_path, data):
    path = tmp_path / "x.npz"
    if data.draw(st.booleans()):
        path.write_bytes(data.draw(mutated((good["dir"] / "data.npz").read_bytes())))
    else:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("x.npy", data.draw(npy_files(good)))
        path.write_bytes(buffer.getvalue())
    check(scan(good, path), good)


@FAST
@given(data=st.data())
def test_csv(good, tmp_path, data):
    path = tmp_path / "x.csv"
    path.write_bytes(data.draw(mutated((good["dir"] / "data.csv").read_bytes())))
    check(scan(good, path), good)


@FAST
@given(data=st.data())
def test_jsonl_text(good, tmp_path, data):
    if good["opt"] is None:
        pytest.skip("the text reader needs transformers: pip install 'deadrelu[hf]'")
    path = tmp_path / "x.jsonl"
    lines = (good["dir"] / "text.jsonl").read_text().splitlines()
    if data.draw(st.booleans()):
        path.write_bytes(data.draw(mutated("\n".join(lines).encode())))
    else:
        at = data.draw(st.integers(0, len(lines) - 1))
        lines[at] = json.dumps(data.draw(json_edited(json.loads(lines[at]))))
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    check(good["runner"].invoke(app, ["scan", str(good["opt"]), str(path), "-q"]), good)


@FAST
@given(data=st.data())
def test_result_json(good, tmp_path, data):
    path = tmp_path / "r.json"
    base = (good["dir"] / "result.json").read_text()
    if data.draw(st.booleans()):
        path.write_bytes(data.draw(mutated(base.encode())))
    else:
        path.write_text(json.dumps(data.draw(json_edited(json.loads(base)))), encoding="utf-8")
    command = data.draw(st.sampled_from((["report", str(path), "-q"], ["merge", str(path), "--allow-missing", "-q"],
                                         ["diff", str(good["dir"] / "result.json"), str(path)])))
    check(good["runner"].invoke(app, command), good)


@FAST
@given(data=st.data())
def test_monitor_log(good, tmp_path, data):
    path = tmp_path / "log.jsonl"
    lines = (good["dir"] / "monitor.jsonl").read_text().splitlines()
    if data.draw(st.booleans()):
        path.write_bytes(data.draw(mutated("\n".join(lines).encode())))
    else:
        at = data.draw(st.integers(0, len(lines) - 1))
        lines[at] = json.dumps(data.draw(json_edited(json.loads(lines[at]))))
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    check(good["runner"].invoke(app, ["trend", str(path)]), good)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value) if value.isprintable() and "\ud800" not in value else '"x"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {_toml_value(item)}" for key, item in value.items()) + "}"
    return '""'


@FAST
@given(data=st.data())
def test_config_toml(good, tmp_path, data):
    path = tmp_path / "c.toml"
    base = (good["dir"] / "config.toml").read_text()
    if data.draw(st.booleans()):
        path.write_bytes(data.draw(mutated(base.encode())))
    else:
        key = data.draw(st.sampled_from(("batch_size", "limit", "granularity", "layers", "device", "functional",
                                         "nonfinite", "compile", "tau", "dead_threshold", "saturation", "unknown")))
        value = data.draw(st.sampled_from(HOSTILE_VALUES))
        section = "thresholds" if key in ("tau", "dead_threshold", "saturation") else "scan"
        line = f"{key} = {_toml_value(value)}"
        if f"{key} =" in base:  # replace the key's line
            text = "\n".join(line if old.startswith(f"{key} =") else old for old in base.splitlines()) + "\n"
        else:  # add it to its section
            text = base.replace(f"[{section}]\n", f"[{section}]\n{line}\n", 1)
        path.write_text(text, encoding="utf-8")
    # exit 1 is a gate failing, which a config may ask for; never 3
    check(scan(good, good["data"], "--config", str(path)), good, allowed=(0, 1, 2))
