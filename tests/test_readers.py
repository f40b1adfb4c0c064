"""The reader registries: every model and data reader has a recognise, an open and a case here,
and the format tables of the docs page ``docs/inputs.md`` (moved there from the README) are
written from them.

A reader added to ``deadrelu.load.readers`` without a case below fails
``test_every_reader_has_a_case``; ``DEADRELU_WRITE_DOCS=1`` rewrites the page's tables.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

from conftest import ARCH_SOURCE
from deadrelu.load.data import DataStream
from deadrelu.load.model import LoadedModel
from deadrelu.load.readers import DATA_READERS, MODEL_READERS, README_HEADERS, Reference, read_data, read_model
from deadrelu.load.spec import Inputs
from truth_models import bounded_inputs, linear_with_dead_units

FORMATS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "inputs.md"


def _arch(tmp: Path) -> str:
    (tmp / "arch.py").write_text(ARCH_SOURCE)
    return f"{tmp / 'arch.py'}:build"


def _state_dict(tmp: Path) -> tuple[Any, dict[str, Any]]:
    torch.save(linear_with_dead_units(dead=8, width=32).state_dict(), tmp / "sd.pt")
    return tmp / "sd.pt", {"arch": _arch(tmp)}


def _safetensors(tmp: Path) -> tuple[Any, dict[str, Any]]:
    from safetensors.torch import save_file
    save_file(linear_with_dead_units(dead=8, width=32).state_dict(), str(tmp / "m.safetensors"))
    return tmp / "m.safetensors", {"arch": _arch(tmp)}


def _export(tmp: Path) -> tuple[Any, dict[str, Any]]:
    program = torch.export.export(linear_with_dead_units(dead=8, width=32), (bounded_inputs(4, 10),))
    torch.export.save(program, str(tmp / "m.pt2"))
    return tmp / "m.pt2", {}


def _torchscript(tmp: Path) -> tuple[Any, dict[str, Any]]:
    torch.jit.save(torch.jit.script(linear_with_dead_units(dead=8, width=32)), str(tmp / "ts.pt"))
    return tmp / "ts.pt", {}


def _huggingface(tmp: Path) -> tuple[Any, dict[str, Any]]:
    pytest.importorskip("transformers")
    from lm_fixtures import save_model_folder
    return save_model_folder(tmp / "opt", "opt"), {}


#: model reader -> (build an example source in a folder, the format the opened model reports)
MODEL_CASES: dict[str, tuple[Callable[[Path], tuple[Any, dict[str, Any]]], str]] = {
    "huggingface": (_huggingface, "huggingface"),
    "safetensors": (_safetensors, "safetensors"),
    "export": (_export, "export"),
    "torchscript": (_torchscript, "torchscript"),
    "torch.save": (_state_dict, "state_dict"),
    "factory": (lambda tmp: (Reference(_arch(tmp)), {}), "factory"),
    "object": (lambda tmp: (linear_with_dead_units(dead=8, width=32), {}), "object"),
}


def _array(tmp: Path) -> np.ndarray:
    return bounded_inputs(12, 10).numpy()


def _table(tmp: Path) -> tuple[Any, dict[str, Any]]:
    import pandas as pd
    pd.DataFrame(_array(tmp), columns=[f"c{i}" for i in range(10)]).to_csv(tmp / "t.csv", index=False)
    return tmp / "t.csv", {}


def _text(tmp: Path) -> tuple[Any, dict[str, Any]]:
    pytest.importorskip("transformers")
    from lm_fixtures import save_text, save_tokenizer
    save_tokenizer(tmp / "tok")
    return save_text(tmp / "lines.txt"), {"tokenizer": tmp / "tok"}


def _python(tmp: Path) -> tuple[Any, dict[str, Any]]:
    np.save(tmp / "x.npy", _array(tmp))
    (tmp / "make.py").write_text(f"import numpy as np\n\ndef make():\n    return np.load({str(tmp / 'x.npy')!r})\n")
    return Reference(f"{tmp / 'make.py'}:make"), {}


#: data reader -> (build an example source, the samples the stream holds)
DATA_CASES: dict[str, tuple[Callable[[Path], tuple[Any, dict[str, Any]]], int]] = {
    "python": (_python, 12),
    "text": (_text, 8),
    "npy": (lambda tmp: (np.save(tmp / "x.npy", _array(tmp)) or tmp / "x.npy", {}), 12),
    "npz": (lambda tmp: (np.savez(tmp / "x.npz", x=_array(tmp)) or tmp / "x.npz", {}), 12),
    "pt": (lambda tmp: (torch.save(torch.from_numpy(_array(tmp)), tmp / "x.pt") or tmp / "x.pt", {}), 12),
    "table": (_table, 12),
    "object": (lambda tmp: (_array(tmp), {}), 12),
}


def test_every_reader_has_a_case():
    assert list(MODEL_CASES) == MODEL_READERS.names()
    assert list(DATA_CASES) == DATA_READERS.names()


def recognised_inputs(side: str, name: str, tmp_path: Path) -> tuple[Inputs, Any]:
    """The case of reader ``name``: checks that its reader (and the registry) recognises it and that
    it has a row in the docs' format table; returns the inputs naming it and what the case expects."""
    registry, cases = (MODEL_READERS, MODEL_CASES) if side == "model" else (DATA_READERS, DATA_CASES)
    build, expected = cases[name]
    source, options = build(tmp_path)
    reader = registry[name]
    assert reader.recognise(source) and registry.find(source) is reader
    assert reader.doc, f"{name} has no row in the docs' format table"
    field = f"{side}_factory" if isinstance(source, Reference) else side
    return Inputs(**{field: str(source) if isinstance(source, Reference) else source}, **options), expected


@pytest.mark.parametrize("name", MODEL_READERS.names())
def test_each_model_reader_recognises_and_opens_its_format(name, tmp_path):
    inputs, expected_format = recognised_inputs("model", name, tmp_path)
    loaded = read_model(inputs)
    assert isinstance(loaded, LoadedModel) and loaded.format == expected_format


@pytest.mark.parametrize("name", DATA_READERS.names())
def test_each_data_reader_recognises_and_opens_its_format(name, tmp_path):
    inputs, samples = recognised_inputs("data", name, tmp_path)
    stream = read_data(inputs, batch_size=5)
    assert isinstance(stream, DataStream) and stream.num_samples == samples
    assert sum(int(next(iter(b.values())).shape[0]) if isinstance(b, dict) else int(b.shape[0])
               for b in stream.batches()) == samples


def test_a_path_no_reader_recognises_is_refused_by_name(tmp_path):
    (tmp_path / "x.dat").write_bytes(b"123")
    assert DATA_READERS.find(tmp_path / "x.dat") is None
    with pytest.raises(Exception, match=r"x.dat: unsupported data format .dat"):
        read_data(Inputs(data=tmp_path / "x.dat"))


@pytest.mark.parametrize("side, registry", [("model", MODEL_READERS), ("data", DATA_READERS)])
def test_the_docs_format_tables_are_the_registries(side, registry):
    """docs/inputs.md's tables between ``<!-- formats:SIDE ... -->`` and ``<!-- /formats:SIDE -->``."""
    text = FORMATS_PAGE.read_text(encoding="utf-8")
    pattern = re.compile(rf"(<!-- formats:{side} [^\n]*-->\n)(.*?)(<!-- /formats:{side} -->)", re.S)
    found = pattern.search(text)
    assert found, f"docs/inputs.md has no formats:{side} table"
    table = registry.markdown(README_HEADERS[side])
    if os.environ.get("DEADRELU_WRITE_DOCS") == "1":
        FORMATS_PAGE.write_text(text[:found.start(2)] + table + text[found.end(2):], encoding="utf-8")
        return
    assert found.group(2) == table, "docs/inputs.md format table is stale: rerun with DEADRELU_WRITE_DOCS=1"
