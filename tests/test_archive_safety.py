"""A ``.pt2`` archive never runs code without ``--allow-pickle``, however its zip is built.

``torch.export.load`` reads archives with torch's own zip reader and falls back to the
full unpickler on its own; deadrelu's check must see the bytes torch loads, and the load
itself must be unable to reach the full unpickler, native code or ``eval``. Each attack
here creates a marker file when its code runs: the marker must never appear. Each is
also run with the audit switched off, to show the guard around the load holds alone.
"""

from __future__ import annotations

import io
import json
import pathlib
import random
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.export import Dim

from deadrelu.cli import app
from deadrelu.load import archive
from truth_models import bounded_inputs

UTF8 = 0x800


def four_linear_mlp() -> nn.Sequential:
    """Four Linear layers (torch's reader then picks the *first* of two duplicate names).

    Truth: site ``1`` has 3 dead units (bias -100 on inputs in [-1, 1]); sites ``3`` and
    ``5`` have zero weights and bias -1 on 2 units, +1 on the rest: 2 dead each. 7 in all.
    """
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                          nn.Linear(8, 1))
    with torch.no_grad():
        model[0].bias[:3] = -100.0
        model[0].bias[3:] = 0.5
        for index in (2, 4):
            model[index].weight.zero_()
            model[index].bias.fill_(1.0)
            model[index].bias[:2] = -1.0
    return model.eval()


class Touch:
    """Unpickling this creates ``target``: proof that code from the archive ran."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.target),))


def marker_pickle(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save(Touch(marker), buffer)
    return buffer.getvalue()


# -- a zip writer that controls raw name bytes and flags ---------------------------------------


@dataclass(frozen=True)
class Entry:
    name: bytes  # raw bytes, as stored
    data: bytes
    flags: int = UTF8

    def __repr__(self) -> str:  # failure reports name the member, not its bytes
        return f"Entry({self.name!r}, {len(self.data)} bytes, flags={self.flags:#x})"

    @property
    def text(self) -> str:
        return self.name.decode("utf-8", "replace")


def read_entries(blob: bytes) -> list[Entry]:
    import zipfile
    with zipfile.ZipFile(io.BytesIO(blob)) as source:
        return [Entry(info.filename.encode("utf-8"), source.read(info)) for info in source.infolist()]


def write_zip(entries: list[Entry]) -> bytes:
    """Stored (uncompressed) members, names written byte for byte, no validation."""
    body, directory = io.BytesIO(), io.BytesIO()
    for entry in entries:
        offset = body.tell()
        crc = zlib.crc32(entry.data)
        size = len(entry.data)
        body.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, entry.flags, 0, 0, 0x21, crc, size, size,
                               len(entry.name), 0) + entry.name + entry.data)
        directory.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, entry.flags, 0, 0, 0x21, crc, size,
                                    size, len(entry.name), 0, 0, 0, 0, 0, offset) + entry.name)
    start, central = body.tell(), directory.getvalue()
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), start, 0)
    return body.getvalue() + central + end


def named(entries: list[Entry], suffix: str) -> int:
    return next(i for i, entry in enumerate(entries) if entry.text.endswith(suffix))


def with_json(entries: list[Entry], suffix: str, edit) -> list[Entry]:
    index = named(entries, suffix)
    try:
        document = json.loads(entries[index].data)
    except ValueError:  # an earlier mutation swapped this member's bytes: nothing left to edit
        return entries
    edit(document)
    out = list(entries)
    out[index] = replace(entries[index], data=json.dumps(document).encode())
    return out


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> dict:
    """A valid archive of the 4-Linear MLP (dynamic batch: its JSON holds symbolic shapes) and data."""
    folder = tmp_path_factory.mktemp("clean")
    program = torch.export.export(four_linear_mlp(), (torch.zeros(4, 10),),
                                  dynamic_shapes={"input": {0: Dim("batch")}})
    torch.export.save(program, str(folder / "model.pt2"))
    np.save(folder / "data.npy", bounded_inputs(16, 10).numpy())
    return {"entries": read_entries((folder / "model.pt2").read_bytes()), "data": folder / "data.npy"}


@pytest.fixture
def crafted(tmp_path, clean):
    """Writes entries as ``crafted.pt2`` and scans it: ``(result, marker)``."""
    marker = tmp_path / "PWNED"

    def scan(entries: list[Entry], *options: str):
        path = tmp_path / "crafted.pt2"
        path.write_bytes(write_zip(entries))
        from typer.testing import CliRunner
        return CliRunner().invoke(app, ["scan", str(path), str(clean["data"]), *options])

    return scan, marker


def refused(result, *pieces: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), result.stderr
    for piece in pieces:
        assert piece in lines[0], f"{piece!r} not in {lines[0]!r}"
    return lines[0]


def duplicate_sample_inputs(entries: list[Entry], marker: Path) -> list[Entry]:
    """Attack (a): the malicious copy of the sample inputs first, the good one last."""
    index = named(entries, "data/sample_inputs/model.pt")
    evil = replace(entries[index], data=marker_pickle(marker))
    return entries[:index] + [evil] + entries[index:]


def unflagged_utf8_weight(entries: list[Entry], marker: Path) -> list[Entry]:
    """Attack (b): a pickled weight ``wéight_9`` whose name is UTF-8 without the UTF-8 flag."""
    prefix = entries[0].text.split("/", 1)[0]

    def point_bias_at_it(document):
        document["config"]["0.bias"] = {"path_name": "w\u00e9ight_9", "is_param": True, "use_pickle": True,
                                        "tensor_meta": None}

    entries = with_json(entries, "model_weights_config.json", point_bias_at_it)
    return entries + [Entry(f"{prefix}/data/weights/w\u00e9ight_9".encode("utf-8"), marker_pickle(marker), flags=0)]


def eval_in_a_shape(entries: list[Entry], marker: Path) -> list[Entry]:
    """Attack (c), no pickle at all: ``sympy.sympify`` evals a symbolic size from the JSON."""
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"

    def poison(document):
        for node in document["graph_module"]["graph"]["tensor_values"].values():
            for size in node["sizes"]:
                if "as_expr" in size:
                    size["as_expr"]["expr_str"] = code
                    return
        raise AssertionError("the program has no symbolic size")

    return with_json(entries, "models/model.json", poison)


def guard_code(entries: list[Entry], marker: Path) -> list[Entry]:
    """Attack (d): ``guards_code`` is Python that ``ExportedProgram.module()`` execs."""
    code = f"__import__('pathlib').Path({str(marker)!r}).touch() is None"
    return with_json(entries, "models/model.json", lambda document: document.update(guards_code=[code]))


ATTACKS = {"duplicate name": (duplicate_sample_inputs, "appears 2 times"),
           "unflagged UTF-8 name": (unflagged_utf8_weight, "without the zip UTF-8 flag"),
           "eval in a symbolic size": (eval_in_a_shape, "symbolic expression that is Python code"),
           "guard code": (guard_code, "Python guard code")}


# -- the attacks ------------------------------------------------------------------------------------


def test_a_clean_archive_still_scans_with_its_exact_counts(crafted, clean, tmp_path):
    scan, _ = crafted
    result = scan(clean["entries"], "--json", str(tmp_path / "r.json"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert {site["name"]: site["dead"] for site in report["sites"]} == {"1": 3, "3": 2, "5": 2}


@pytest.mark.parametrize("attack", ATTACKS)
def test_each_attack_is_refused_by_name_and_runs_nothing(crafted, clean, attack):
    scan, marker = crafted
    build, says = ATTACKS[attack]
    refused(scan(build(clean["entries"], marker)), "crafted.pt2", says)
    assert not marker.exists()


@pytest.mark.parametrize("attack", ATTACKS)
def test_the_guard_alone_stops_each_attack(crafted, clean, attack, monkeypatch):
    """Even when the audit sees nothing, torch's load cannot reach the code."""
    scan, marker = crafted
    build, _ = ATTACKS[attack]
    monkeypatch.setattr(archive, "audit_archive", lambda handle, label: [])
    refused(scan(build(clean["entries"], marker)), "crafted.pt2", "refusing")
    assert not marker.exists()


@pytest.mark.parametrize("attack", ["duplicate name", "unflagged UTF-8 name"])
def test_ambiguous_archives_are_refused_even_with_consent(crafted, clean, attack):
    scan, marker = crafted
    build, says = ATTACKS[attack]
    refused(scan(build(clean["entries"], marker), "--allow-pickle"), "ambiguous", says)
    assert not marker.exists()


def test_a_pickled_weight_the_weights_only_unpickler_reads_needs_no_consent(crafted, clean, tmp_path):
    """torch loads ``use_pickle`` weights with ``weights_only=False``; the guard makes that
    weights-only, so an honest pickled weight still loads, with its truth intact."""
    scan, _ = crafted
    prefix = clean["entries"][0].text.split("/", 1)[0]
    buffer = io.BytesIO()
    torch.save(nn.Parameter(four_linear_mlp()[0].bias.detach().clone()), buffer)

    def pickle_the_first_bias(document):
        document["config"]["0.bias"].update(path_name="pickled_bias", use_pickle=True)

    entries = with_json(clean["entries"], "model_weights_config.json", pickle_the_first_bias)
    entries.append(Entry(f"{prefix}/data/weights/pickled_bias".encode(), buffer.getvalue()))
    result = scan(entries, "--json", str(tmp_path / "r.json"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert {site["name"]: site["dead"] for site in report["sites"]} == {"1": 3, "3": 2, "5": 2}


@pytest.mark.parametrize("text,plain", [
    ("Symbol('s31', positive=True, integer=True)", True),
    ("Add(Mul(Integer(2), Symbol('s0', integer=True)), Integer(-1))", True),
    ("FloorDiv(s0, 2) + Max(1, s1)", True),
    ("Float('1.5', precision=53)", True),
    ("__import__('os').system('true')", False),
    ("exec(chr(49))", False),
    ("Max(1, '__import__(\"os\")')", False),
    ("Symbol('s0').__class__", False),
    ("(lambda: 0)()", False),
    ("sympify('1')", False),
    ("Integer(1)[0]", False),
])
def test_the_formula_grammar(text, plain):
    assert archive.plain_formula(text) is plain


# -- every mutation of a valid archive ---------------------------------------------------------------


def _pick(entries: list[Entry], pick: int) -> int:
    """Half the picks land on a member torch unpickles (where attacks live), half anywhere."""
    pickled = [i for i, entry in enumerate(entries) if entry.text.endswith(".pt") or "/pw" in entry.text]
    if pick % 2 and pickled:
        return pickled[(pick // 2) % len(pickled)]
    return (pick // 2) % len(entries)


def _mutate(entries: list[Entry], steps: list[tuple], marker: Path, prefix: str) -> list[Entry]:
    evil = marker_pickle(marker)
    entries = list(entries)
    for kind, pick, choice in steps:
        index = _pick(entries, pick)
        entry = entries[index]
        if kind == "duplicate":  # a copy (honest or evil) before or after the original
            copy = replace(entry, data=evil if choice % 2 else entry.data)
            entries.insert(index + (choice // 2) % 2, copy)
        elif kind == "reorder":
            random.Random(choice).shuffle(entries)
        elif kind == "rename":  # to another member's name, a case variant, with a NUL, with a backslash
            other = entries[choice % len(entries)].name
            entries[index] = replace(entry, name=[other, entry.name.upper(), entry.name + b"\x00x",
                                                  entry.name.replace(b"/", b"\\")][choice % 4])
        elif kind == "reencode":  # non-ASCII: UTF-8 flagged, UTF-8 unflagged, cp437, latin-1
            folder, _, base = entry.name.rpartition(b"/")
            accent = [b"\xc3\xa9", b"\xc3\xa9", b"\x82", b"\xe9"][choice % 4]  # an e-acute in each
            entries[index] = replace(entry, name=folder + b"/" + accent + base, flags=UTF8 if choice % 4 == 0 else 0)
        elif kind == "reflag":
            entries[index] = replace(entry, flags=entry.flags ^ UTF8)
        elif kind == "swap":  # the marker pickle in place of a member
            entries[index] = replace(entry, data=evil)
        elif kind == "pickle_weight":  # a weight marked use_pickle, stored as the marker pickle
            name = f"pw\u00e9_{choice // 4}" if choice % 4 else f"pw_{choice // 4}"
            raw = f"{prefix}/data/weights/{name}"
            stored = [raw.encode(), raw.encode(), raw.encode("utf-8"), raw.encode("cp437")][choice % 4]
            entries.append(Entry(stored, evil, flags=UTF8 if choice % 4 < 2 else 0))
            if any(e.text.endswith("model_weights_config.json") for e in entries):
                entries = with_json(entries, "model_weights_config.json",
                                    lambda document: document["config"]["0.weight"].update(
                                        path_name=name, use_pickle=True))
        elif kind == "formula" and any(e.text.endswith("models/model.json") for e in entries):
            entries = eval_in_a_shape(entries, marker)
        elif kind == "guard" and any(e.text.endswith("models/model.json") for e in entries):
            entries = guard_code(entries, marker)
    return entries


STEPS = st.lists(st.tuples(st.sampled_from(["duplicate", "reorder", "rename", "reencode", "reflag", "swap",
                                            "pickle_weight", "formula", "guard"]),
                           st.integers(0, 63), st.integers(0, 63)), max_size=4)


@pytest.mark.parametrize("audit", ["audit and guard", "guard alone"])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(attack=st.sampled_from([None, *ATTACKS]), steps=STEPS)
def test_no_mutation_of_a_valid_archive_runs_code(audit, attack, steps, crafted, clean, monkeypatch):
    """Start from a valid archive or one of the attacks, then duplicate, reorder, rename,
    re-encode and re-flag members, swap in the marker pickle, add pickled weights."""
    scan, marker = crafted
    if audit == "guard alone":
        monkeypatch.setattr(archive, "audit_archive", lambda handle, label: [])
    prefix = clean["entries"][0].text.split("/", 1)[0]
    entries = ATTACKS[attack][0](clean["entries"], marker) if attack else clean["entries"]
    result = scan(_mutate(entries, steps, marker, prefix))
    ran = marker.exists()
    marker.unlink(missing_ok=True)  # the next example starts clean
    assert not ran, f"code from the archive ran: {attack}, {steps}"
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output


# -- torch's own notices stay off the terminal ------------------------------------------------------


@pytest.fixture
def warnings_shown(monkeypatch):
    """Warnings printed to ``sys.stderr`` as a terminal would show them (pytest otherwise
    records them itself, so a test would never see one leak)."""
    import sys
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    monkeypatch.setattr(warnings, "showwarning", show)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        yield


@pytest.mark.parametrize("content", [{"a": 1}, {"weight": torch.ones(2)}], ids=["dict", "tensors"])
def test_a_plain_pickle_gives_our_two_lines_and_no_torch_warning(tmp_path, clean, content, warnings_shown, capfd):
    import pickle
    from typer.testing import CliRunner

    with (tmp_path / "plain.pkl").open("wb") as handle:
        pickle.dump(content, handle, protocol=4)
    result = CliRunner().invoke(app, ["scan", str(tmp_path / "plain.pkl"), str(clean["data"])])
    refused(result, "plain.pkl", "a plain pickle")
    assert "Warning" not in result.output and "Warning" not in capfd.readouterr().err


def test_an_unreadable_file_is_not_told_to_retry_with_the_full_unpickler(tmp_path, clean):
    """torch's "Weights only load failed" text advises weights_only=False, i.e. running the
    file's code; our line gives the unpickler's own reason instead."""
    from typer.testing import CliRunner

    (tmp_path / "garbage.pt").write_bytes(b"\x00" * 100)
    result = CliRunner().invoke(app, ["scan", str(tmp_path / "garbage.pt"), str(clean["data"])])
    line = refused(result, "garbage.pt", "the weights-only unpickler stopped at: Unsupported operand 0")
    assert "weights_only" not in line
