"""One entry per side: what the user named (a file, or a Python reference) into a model or a stream.

The CLI's ``scan`` (and every later command that loads a model and data the same way:
``prune``, ``fix``, ``trend``) calls these two; notebook users can too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataLoadError
from ..settings import MAX_LINE_BYTES
from .data import DataStream, load_data, load_python_data
from .model import LoadedModel, load_factory, load_model
from .usercode import parse_kwargs


def open_model(path: str | os.PathLike | None = None, *, arch: str | None = None,
               arch_kwargs: str | Mapping[str, Any] | None = None, factory: str | None = None,
               weights: str | os.PathLike | None = None, allow_pickle: bool = False,
               imports: Iterable[str | os.PathLike] = (), hf_class: str | None = None,
               allow_remote_code: bool = False) -> LoadedModel:
    """A model from a file (``path``, with ``arch`` for weights-only files), a Hugging Face
    folder (``path`` holding ``config.json``) or a factory.

    Args:
        path: the model file; leave out with ``factory``.
        arch: ``package.module:Factory`` or ``file.py:Factory`` for a state_dict / safetensors file.
        arch_kwargs: keyword arguments for ``arch`` or ``factory`` (a dict, or JSON text).
        factory: ``package.module:build`` or ``file.py:build`` returning the model; replaces ``path``.
        weights: a state_dict / checkpoint / safetensors file for ``factory``'s model.
        allow_pickle: permit the full unpickler, which runs code from the file.
        imports: Python files to import before unpickling.
        hf_class: for a Hugging Face folder, the ``transformers`` class to load it with
            (default ``AutoModel``).
        allow_remote_code: for a Hugging Face folder, run its own Python code
            (``trust_remote_code``).

    Returns:
        The model with its provenance and loading notes.

    Raises:
        ModelLoadError: the model cannot be loaded; ConfigError: the arguments do not fit together.
    """
    kwargs = parse_kwargs(arch_kwargs) if isinstance(arch_kwargs, str) or arch_kwargs is None else dict(arch_kwargs)
    if factory is not None:
        return load_factory(factory, kwargs, weights, allow_pickle=allow_pickle)
    if path is None:
        raise ConfigError("no model given", hint="pass a model file, or factory= (--model) with a Python reference")
    from .huggingface import is_model_folder
    if is_model_folder(path):
        return load_model(Path(path), hf_class=hf_class, allow_remote_code=allow_remote_code)
    if hf_class is not None:
        raise ConfigError(f"--hf-class goes with a Hugging Face model folder (config.json + weights); {path} is not one",
                          hint="deadrelu scan path/to/model_folder DATA --hf-class AutoModelForCausalLM")
    if weights is not None:
        raise ConfigError("--weights goes with --model (a factory); a MODEL file holds its own weights",
                          hint="--model pkg.module:build --weights state_dict.pt DATA, or MODEL --arch ...")
    return load_model(Path(path), arch=arch, arch_kwargs=kwargs, allow_pickle=allow_pickle, imports=imports)


def open_data(path: str | os.PathLike | None = None, *, source: str | None = None, batch_size: int = 256,
              limit: int | None = None, key: str | Sequence[str] | None = None,
              columns: Sequence[str] | None = None, shuffle_seed: int | None = None, named: bool = False,
              tokenizer: str | os.PathLike | None = None, max_length: int = 512, text_field: str = "text",
              decoder_inputs: bool = False, max_line_bytes: int = MAX_LINE_BYTES,
              allow_remote_code: bool = False) -> DataStream:
    """A stream of batches from a data file (``path``), a text file, or a Python reference (``source``).

    Args:
        path: the data file; leave out with ``source``.
        source: ``package.module:make`` or ``file.py:make`` returning the data; replaces ``path``.
        batch_size: samples per batch.
        limit: feed at most this many samples.
        key: the array(s) to feed from an ``.npz``, a dict ``.pt`` or a dict ``source``.
        columns: table columns to use as features.
        shuffle_seed: with ``limit``, a random subset drawn with this seed.
        named: batches of the ``key`` arrays are dicts by name (for keyword inputs and a mask).
        tokenizer: for ``.txt``/``.jsonl`` text, the folder holding the tokenizer.
        max_length: for text, truncate examples to this many tokens.
        text_field: for ``.jsonl``, the field holding the text.
        decoder_inputs: for text, also feed the tokens to an encoder-decoder's decoder.
        max_line_bytes: for text, refuse a line longer than this many bytes.
        allow_remote_code: for text, let a tokenizer defined by its folder's own Python
            code run (``trust_remote_code``).

    Returns:
        The stream.

    Raises:
        DataLoadError: the data cannot be read; ConfigError: neither or both given.
    """
    if source is not None:
        return load_python_data(source, batch_size=batch_size, limit=limit, key=key, shuffle_seed=shuffle_seed,
                                named=named)
    if path is None:
        raise ConfigError("no data given", hint="pass a data file, or source= (--data) with a Python reference")
    from .huggingface import is_text_file
    if is_text_file(path):
        if tokenizer is None:
            raise DataLoadError(f"{path}: text data needs a tokenizer",
                                hint="scan a Hugging Face model folder that holds one, or pass --tokenizer DIR")
        from .huggingface import load_text
        return load_text(path, tokenizer, batch_size=batch_size, limit=limit, max_length=max_length,
                         text_field=text_field, shuffle_seed=shuffle_seed, decoder_inputs=decoder_inputs,
                         max_line_bytes=max_line_bytes, allow_remote_code=allow_remote_code)
    return load_data(Path(path), batch_size=batch_size, limit=limit, key=key, columns=columns,
                     shuffle_seed=shuffle_seed, named=named)


__all__ = ["open_model", "open_data"]
