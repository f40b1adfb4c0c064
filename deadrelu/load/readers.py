"""Every model format and every data format a user may hand over: two registries of readers.

``MODEL_READERS`` and ``DATA_READERS`` list, in the order they are tried, each format's
name, how it is recognised (from a path, a Python reference named by ``--model`` /
``--data``, or an object given in Python) and how it opens, given the ``Inputs``
(``load.spec``). ``deadrelu.load.sources.open_inputs`` opens through them, so every
command and API entry point reads the same formats. The file formats themselves are
the lower registries ``load.model.MODEL_FILES`` and ``load.datafiles.ARRAY_FILES``; the
format tables of ``docs/inputs.md`` are ``MODEL_READERS.markdown(...)`` and
``DATA_READERS.markdown(...)`` (``tests/test_readers.py`` holds the page to them, and rewrites
them with ``DEADRELU_WRITE_DOCS=1``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, DataLoadError, ModelLoadError
from .data import DataStream, as_stream, load_data, load_python_data
from .datafiles import ARRAY_FILES
from .huggingface import TEXT_SUFFIXES, is_model_folder, load_hf_model, load_text
from .inputs import LABEL_KEYS
from .model import MODEL_FILES, LoadedModel, load_factory, load_file
from .registry import Reader, Registry
from .spec import Inputs
from .usercode import parse_kwargs


class Reference(str):
    """A Python reference (``package.module:name`` or ``file.py:name``) named by ``--model`` or
    ``--data``: the factory readers recognise it, the file readers never take it for a path."""


def is_path(source: Any) -> bool:
    """Whether ``source`` names a file or folder (not a Python reference, not an object)."""
    return isinstance(source, (str, os.PathLike)) and not isinstance(source, Reference)


def _arch_kwargs(inputs: Inputs) -> dict[str, Any]:
    value = inputs.arch_kwargs
    return parse_kwargs(value) if value is None or isinstance(value, str) else dict(value)


# -- models: reader.open(source, inputs) -> LoadedModel ------------------------------------------


def _open_folder(source: Any, inputs: Inputs) -> LoadedModel:
    if inputs.weights is not None:
        raise ConfigError("--weights goes with --model (a factory); a model folder holds its own weights",
                          hint="--model pkg.module:build --weights state_dict.pt DATA, or MODEL --arch ...")
    module, notes, digest = load_hf_model(source, hf_class=inputs.hf_class, allow_remote_code=inputs.allow_remote_code)
    return LoadedModel(module, str(source), "huggingface", digest, notes)


def _file_reader(files: Reader) -> Reader:
    """A ``MODEL_FILES`` reader as a model reader: it recognises paths, and opens with ``load_file``."""

    def recognise(source: Any) -> bool:
        return is_path(source) and files.recognise(Path(source))

    def open_file(source: Any, inputs: Inputs) -> LoadedModel:
        if inputs.hf_class is not None:
            raise ConfigError(f"--hf-class goes with a Hugging Face model folder (config.json + weights); {source} "
                              "is not one", hint="deadrelu scan path/to/model_folder DATA --hf-class "
                                                 "AutoModelForCausalLM")
        if inputs.weights is not None:
            raise ConfigError("--weights goes with --model (a factory); a MODEL file holds its own weights",
                              hint="--model pkg.module:build --weights state_dict.pt DATA, or MODEL --arch ...")
        return load_file(Path(source), arch=inputs.arch, arch_kwargs=_arch_kwargs(inputs),
                         allow_pickle=inputs.allow_pickle, imports=[Path(item) for item in inputs.imports])

    return Reader(files.name, recognise, open_file, files.doc)


def _open_factory(source: Any, inputs: Inputs) -> LoadedModel:
    weights = Path(inputs.weights) if inputs.weights is not None else None
    return load_factory(str(source), _arch_kwargs(inputs), weights, allow_pickle=inputs.allow_pickle)


def _is_model_object(source: Any) -> bool:
    return isinstance(source, (nn.Module, LoadedModel, torch.export.ExportedProgram))


def _open_object(source: Any, inputs: Inputs) -> LoadedModel:
    if isinstance(source, LoadedModel):
        return source
    return LoadedModel(source, f"<{type(source).__name__}>", "object")


#: Models, in the order tried. A Hugging Face folder first (a folder is no file); the file
#: formats in ``MODEL_FILES``' order (``torch.save`` reads any other path, so a missing or
#: unreadable file gets its own error there); factories only when named by ``--model``.
MODEL_READERS = Registry("model", [
    Reader("huggingface", lambda source: is_path(source) and is_model_folder(source), _open_folder, doc=(
        ("a Hugging Face folder (`save_pretrained`: `config.json` + weights)",
         "`deadrelu scan path/to/model_dir prompts.txt` (`--hf-class AutoModelForCausalLM` picks the class; "
         "its tokenizer reads text data)"),)),
    *(_file_reader(reader) for reader in MODEL_FILES),
    Reader("factory", lambda source: isinstance(source, Reference), _open_factory, doc=(
        ("a Python factory", "`deadrelu scan --model pkg.models:build data.npy` or `--model models.py:build "
                             "--weights sd.pt`"),)),
    Reader("object", _is_model_object, _open_object, doc=(
        ("Python: an `nn.Module`, an `ExportedProgram`, a `LoadedModel`", "`deadrelu.scan(model, data)`"),)),
])


# -- data: reader.open(source, inputs, batch_size, limit) -> DataStream --------------------------


def _open_python(source: Any, inputs: Inputs, batch_size: int, limit: int | None) -> DataStream:
    return load_python_data(str(source), batch_size=batch_size, limit=limit, key=inputs.array_keys(mapping=True),
                            shuffle_seed=inputs.shuffle_seed, named=inputs.named)


def _is_text(source: Any) -> bool:
    return is_path(source) and Path(source).suffix.lower() in TEXT_SUFFIXES


def _open_text(source: Any, inputs: Inputs, batch_size: int, limit: int | None) -> DataStream:
    if inputs.tokenizer is None:
        raise DataLoadError(f"{source}: text data needs a tokenizer",
                            hint="scan a Hugging Face model folder that holds one, or pass --tokenizer DIR")
    return load_text(source, inputs.tokenizer, batch_size=batch_size, limit=limit, max_length=inputs.max_length,
                     text_field=inputs.text_field, shuffle_seed=inputs.shuffle_seed,
                     max_line_bytes=inputs.max_line_bytes, allow_remote_code=inputs.allow_remote_code)


def _array_reader(files: Reader) -> Reader:
    """An ``ARRAY_FILES`` reader as a data reader: it recognises paths, and opens with ``load_data``."""

    def open_array_file(source: Any, inputs: Inputs, batch_size: int, limit: int | None) -> DataStream:
        return load_data(Path(source), batch_size=batch_size, limit=limit, key=inputs.array_keys(),
                         columns=inputs.columns or None, shuffle_seed=inputs.shuffle_seed, named=inputs.named)

    return Reader(files.name, lambda source: is_path(source) and files.recognise(Path(source)), open_array_file,
                  files.doc)


def _open_data_object(source: Any, inputs: Inputs, batch_size: int, limit: int | None) -> DataStream:
    if isinstance(source, Mapping) and "input_ids" in source and not (
            inputs.named or inputs.key or inputs.input_key or inputs.input_fn):
        # A tokenizer's output given whole: fed as its batches are, every entry by name but the
        # labels, and the attention mask keeps padding out of the statistics.
        entries = [str(k) for k, v in source.items() if isinstance(v, (torch.Tensor, np.ndarray))]
        stream = as_stream(source, batch_size, limit, shuffle_seed=inputs.shuffle_seed, key=entries, named=True)
        stream.kwargs = tuple(name for name in entries if name not in LABEL_KEYS)
        stream.mask = "attention_mask" if "attention_mask" in entries else None
        return stream
    mapping = isinstance(source, Mapping)
    return as_stream(source, batch_size, limit, shuffle_seed=inputs.shuffle_seed,
                     key=inputs.array_keys(mapping=True) if mapping else None, named=inputs.named)


#: Data, in the order tried: a Python source named by ``--data``, text, the array files in
#: ``ARRAY_FILES``' order, then objects given in Python. A path no reader recognises is
#: refused by ``load_data`` (missing, a folder, or an unsupported format).
DATA_READERS = Registry("data", [
    Reader("python", lambda source: isinstance(source, Reference), _open_python, doc=(
        ("Python", "`--data pkg.data:make` or `--data data.py:make`: `make()` returns a tensor, an ndarray, a dict "
                   "of them, a `Dataset` or a `DataLoader`; batches may be tensors, `(x, y)` tuples (x is fed) or "
                   "dicts (`--input-key NAME`, `--kwarg NAME`)"),)),
    Reader("text", _is_text, _open_text, doc=(
        ("`.txt` / `.jsonl` text", "one example per line (`.jsonl`: `--text-field`), tokenized with the model "
                                   "folder's tokenizer or `--tokenizer DIR`, padding masked out"),)),
    *(_array_reader(reader) for reader in ARRAY_FILES),
    Reader("object", lambda source: source is not None and not isinstance(source, (str, os.PathLike)),
           _open_data_object, doc=(
               ("Python: a tensor, an ndarray, a dict of them, a `Dataset`, a `DataLoader`, any iterable of batches",
                "`deadrelu.scan(model, data)`"),)),
])


def model_source(inputs: Inputs) -> Any:
    """What the model readers are shown: the ``--model`` reference, else the model."""
    return Reference(inputs.model_factory) if inputs.model_factory is not None else inputs.model


def data_source(inputs: Inputs) -> Any:
    """What the data readers are shown: the ``--data`` reference, else the data."""
    return Reference(inputs.data_factory) if inputs.data_factory is not None else inputs.data


def read_model(inputs: Inputs) -> LoadedModel:
    """The model ``inputs`` name, opened by the first model reader that recognises it.

    Raises:
        ConfigError: no model named; ModelLoadError: not a model deadrelu can read.
    """
    source = model_source(inputs)
    if source is None:
        raise ConfigError("no model given", hint="pass a model file, or --model (model_factory=) with a Python "
                                                 "reference")
    reader = MODEL_READERS.find(source)
    if reader is None:
        raise ModelLoadError(f"cannot scan a model of type {type(source).__name__}",
                             hint="pass an nn.Module, a model file or folder, or a factory reference")
    return reader.open(source, inputs)


def read_data(inputs: Inputs, batch_size: int = 256, limit: int | None = None) -> DataStream:
    """The data ``inputs`` name, opened by the first data reader that recognises it.

    Raises:
        ConfigError: no data named; DataLoadError: data deadrelu cannot read.
    """
    source = data_source(inputs)
    if source is None:
        raise ConfigError("no data given", hint="pass a data file, or --data (data_factory=) with a Python reference")
    reader = DATA_READERS.find(source)
    if reader is None:  # a path no reader recognises: missing, a folder, or an unsupported format
        return load_data(Path(source), batch_size=batch_size, limit=limit)
    return reader.open(source, inputs, batch_size, limit)


def load_model(path: str | os.PathLike, arch: str | None = None, arch_kwargs: Mapping[str, Any] | None = None,
               allow_pickle: bool = False, imports: Iterable[str | os.PathLike] = (), hf_class: str | None = None,
               allow_remote_code: bool = False) -> LoadedModel:
    """Load a model file or a Hugging Face folder into an ``nn.Module`` (any format of ``MODEL_READERS``).

    Args:
        path: a ``state_dict`` / checkpoint (with ``arch``), a ``.safetensors`` file (with
            ``arch``), a TorchScript file, a ``torch.export`` ``.pt2`` archive, a pickled
            ``nn.Module`` (with ``allow_pickle``), or a Hugging Face model folder.
        arch: ``package.module:Factory`` or ``file.py:Factory`` building the architecture.
        arch_kwargs: keyword arguments for the factory.
        allow_pickle: permit unpickling, which runs code from the file.
        imports: Python files imported before unpickling.
        hf_class: for a Hugging Face folder, the ``transformers`` class (default ``AutoModel``).
        allow_remote_code: for a Hugging Face folder, run its own Python code.

    Returns:
        The loaded model with its provenance.

    Raises:
        ModelLoadError: the file is missing, unreadable, not a model, or does not fit ``arch``.
    """
    return read_model(Inputs(model=path, arch=arch, arch_kwargs=arch_kwargs, allow_pickle=allow_pickle,
                             imports=tuple(imports), hf_class=hf_class, allow_remote_code=allow_remote_code))


#: The headers of the format tables in ``docs/inputs.md`` (``tests/test_readers.py`` holds the page to them).
README_HEADERS = {"model": ("what you have", "command"), "data": ("data", "how")}


__all__ = ["DATA_READERS", "MODEL_READERS", "README_HEADERS", "Reference", "data_source", "is_path", "load_model",
           "model_source", "read_data", "read_model"]
