"""One entry per side: what the user named (a file, or a Python reference) into a model or a stream.

The CLI's ``scan`` (and every later command that loads a model and data the same way:
``prune``, ``fix``, ``trend``) calls these two; notebook users can too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .data import DataStream, load_data, load_python_data
from .model import LoadedModel, load_factory, load_model, parse_kwargs


def open_model(path: str | os.PathLike | None = None, *, arch: str | None = None,
               arch_kwargs: str | Mapping[str, Any] | None = None, factory: str | None = None,
               weights: str | os.PathLike | None = None, allow_pickle: bool = False,
               imports: Iterable[str | os.PathLike] = ()) -> LoadedModel:
    """A model from a file (``path``, with ``arch`` for weights-only files) or a factory.

    Args:
        path: the model file; leave out with ``factory``.
        arch: ``package.module:Factory`` or ``file.py:Factory`` for a state_dict / safetensors file.
        arch_kwargs: keyword arguments for ``arch`` or ``factory`` (a dict, or JSON text).
        factory: ``package.module:build`` or ``file.py:build`` returning the model; replaces ``path``.
        weights: a state_dict / checkpoint / safetensors file for ``factory``'s model.
        allow_pickle: permit the full unpickler, which runs code from the file.
        imports: Python files to import before unpickling.

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
    if weights is not None:
        raise ConfigError("--weights goes with --model (a factory); a MODEL file holds its own weights",
                          hint="--model pkg.module:build --weights state_dict.pt DATA, or MODEL --arch ...")
    return load_model(Path(path), arch=arch, arch_kwargs=kwargs, allow_pickle=allow_pickle, imports=imports)


def open_data(path: str | os.PathLike | None = None, *, source: str | None = None, batch_size: int = 256,
              limit: int | None = None, key: str | Sequence[str] | None = None,
              columns: Sequence[str] | None = None, shuffle_seed: int | None = None) -> DataStream:
    """A stream of batches from a data file (``path``) or a Python reference (``source``).

    Args:
        path: the data file; leave out with ``source``.
        source: ``package.module:make`` or ``file.py:make`` returning the data; replaces ``path``.
        batch_size: samples per batch.
        limit: feed at most this many samples.
        key: the array(s) to feed from an ``.npz``, a dict ``.pt`` or a dict ``source``.
        columns: table columns to use as features.
        shuffle_seed: with ``limit``, a random subset drawn with this seed.

    Returns:
        The stream.

    Raises:
        DataLoadError: the data cannot be read; ConfigError: neither or both given.
    """
    if source is not None:
        return load_python_data(source, batch_size=batch_size, limit=limit, key=key, shuffle_seed=shuffle_seed)
    if path is None:
        raise ConfigError("no data given", hint="pass a data file, or source= (--data) with a Python reference")
    return load_data(Path(path), batch_size=batch_size, limit=limit, key=key, columns=columns,
                     shuffle_seed=shuffle_seed)


__all__ = ["open_model", "open_data"]
