"""Data: tensors, arrays, files, tables and Python sources into a stream of batches.

Arrays are never copied whole: each batch is copied out on its own, and a ``.npy`` is
memory-mapped with the pages already read handed back (``load.datafiles``, which holds
the file readers).

Several model inputs: a batch that is a ``ModelInputs`` tuple is fed as
``model(*inputs)``. Files give one with several ``--key``s (``.npz``, a dict ``.pt``,
a Python source returning a dict); dict or tuple batches from a DataLoader give one
with several ``--input-key``s (names, or positions for tuples). Any other tuple batch
is an ``(x, y)`` pair whose first element is the input.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import DataLoadError, ModelLoadError, first_line
from ..settings import check_setting
from .datafiles import ARRAY_FILES, TABLE_SUFFIXES, _PageDropper, keys_of, pick  # noqa: F401
from .files import check_file

Batch = Any

DATA_FORMATS = ".npy, .npz, .pt/.pth, .csv/.tsv, .parquet, text (.txt/.jsonl), or --data package.module:make"


class ModelInputs(tuple):  # type: ignore[type-arg]
    """A batch that is several positional model inputs, fed as ``model(*inputs)``.

    A plain tuple batch is an ``(x, y)`` pair whose first element is the input; this
    type says that every element is an input.
    """


@dataclass
class DataStream:
    """Batches plus what is known about them before the scan.

    Attributes:
        source: where the data came from (a path, or a description of the object).
        batches: a callable returning a fresh iterator of raw batches (tensor, tuple,
            ``ModelInputs`` or dict).
        num_samples: total samples that will be fed, if known (for progress and reports).
        sample_shape: shape of one sample (of the first input), if known.
        dtype: the data's dtype as stored, if known.
        notes: facts about loading the user should see (casts, limits, subsets).
        sha256: digest of the file, for reports.
        total_samples: samples in the source before ``--limit``, if known.
        kwargs: entries of its dict batches fed as keyword arguments unless the caller
            says otherwise (text data: ``input_ids``, ``attention_mask``).
        mask: the entry that is the padding mask unless the caller says otherwise.
        select: for sources that can seek (arrays, files, Datasets, sequential
            DataLoaders), ``select(start, stop)`` is this stream restricted to its samples
            ``[start, stop)``, reading only those (``deadrelu.distributed`` shards with it).
        batch_size: samples in every batch but the last, when the stream knows it
            (shards are cut at whole batches, so each batch is one a single process would feed).
        first_sample: the index, in the whole data, of this stream's first sample (a
            shard's stream starts inside the data; messages name samples by this index).
        shard: which shard of the source this stream is (``{"index", "count", "of"}``),
            set by ``deadrelu.distributed.shard_stream`` for ``--shard I/N``.
    """

    source: str
    batches: Callable[[], Iterator[Batch]]
    num_samples: int | None = None
    sample_shape: tuple[int, ...] | None = None
    dtype: str | None = None
    notes: list[str] = field(default_factory=list)
    sha256: str | None = None
    total_samples: int | None = None
    kwargs: tuple[str, ...] = ()
    mask: str | None = None
    select: Callable[[int, int], DataStream] | None = None
    batch_size: int | None = None
    first_sample: int = 0
    shard: dict[str, Any] | None = None


def _copy_rows(array: np.ndarray | torch.Tensor, start: int, stop: int,
               indices: np.ndarray | None) -> torch.Tensor:
    rows: Any = slice(start, stop) if indices is None else indices[start:stop]
    if isinstance(array, torch.Tensor):
        return array[rows] if indices is None else array[torch.from_numpy(rows)]
    chunk = np.array(array[rows], copy=True, order="C")  # out of the memory map, into RAM
    if not chunk.dtype.isnative:  # big-endian data (">f4"): torch takes native byte order only
        chunk = chunk.astype(chunk.dtype.newbyteorder("="))
    if chunk.dtype.kind == "u" and chunk.dtype.itemsize > 1:
        chunk = chunk.astype(np.int64)  # torch has few ops for uint16/32/64
    return torch.from_numpy(chunk)


def _array_batches(arrays: Sequence[np.ndarray | torch.Tensor], batch_size: int, count: int,
                   indices: np.ndarray | None, droppers: Sequence[_PageDropper],
                   offset: int = 0, names: Sequence[str] | None = None) -> Callable[[], Iterator[Batch]]:
    # Rows [offset, offset + count) of the arrays (of ``indices`` when given); with ``names``,
    # dict batches of the arrays by name (fed by name: keyword inputs, the mask).
    def batches() -> Iterator[Batch]:
        try:
            for start in range(offset, offset + count, batch_size):
                stop = min(start + batch_size, offset + count)
                parts = [_copy_rows(array, start, stop, indices) for array in arrays]
                if droppers:
                    first, end = (start, stop) if indices is None else (int(indices[start]), int(indices[stop - 1]) + 1)
                    for dropper in droppers:
                        dropper.release(first, end)
                if names is not None:  # named entries: fed by name (keyword inputs, the mask)
                    yield dict(zip(names, parts))
                else:
                    yield parts[0] if len(parts) == 1 else ModelInputs(parts)
        finally:
            for dropper in droppers:
                dropper.close()
    return batches


# -- raw batches ----------------------------------------------------------------------------


def _limited(iterable: Iterable[Batch], limit: int | None) -> Callable[[], Iterator[Batch]]:
    def batches() -> Iterator[Batch]:
        seen = 0
        for batch in iterable:
            if limit is not None and seen >= limit:
                return
            size = batch_length(batch)
            if limit is not None and size is not None and seen + size > limit:
                batch = slice_batch(batch, limit - seen)
                size = limit - seen
            seen += size or 0
            yield batch
    return batches


def batch_length(batch: Batch) -> int | None:
    """Samples in a raw batch (first tensor's first axis), or None if unknown."""
    tensor = first_tensor(batch)
    return int(tensor.shape[0]) if tensor is not None and tensor.ndim > 0 else None


def first_tensor(batch: Batch) -> torch.Tensor | None:
    """The first tensor in a batch (its own, a tuple's first, a dict's first value)."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, np.ndarray):
        return torch.from_numpy(batch)
    if isinstance(batch, (tuple, list)) and batch:
        return first_tensor(batch[0])
    if isinstance(batch, Mapping) and batch:
        return first_tensor(next(iter(batch.values())))
    return None


def slice_batch(batch: Batch, count: int, start: int = 0) -> Batch:
    """Samples ``[start, start + count)`` of a raw batch, whatever its structure."""
    if isinstance(batch, (torch.Tensor, np.ndarray)):
        return batch[start:start + count]
    if isinstance(batch, (tuple, list)):
        return type(batch)(slice_batch(item, count, start) for item in batch)
    if isinstance(batch, Mapping):
        return {key: slice_batch(value, count, start) for key, value in batch.items()}
    return batch


def concat_batches(batches: Sequence[Batch]) -> Batch:
    """Join raw batches of the same structure along the sample axis."""
    head = batches[0]
    if len(batches) == 1:
        return head
    if isinstance(head, torch.Tensor):
        return torch.cat([torch.as_tensor(b) for b in batches])
    if isinstance(head, np.ndarray):
        return np.concatenate(batches)
    if isinstance(head, (tuple, list)):
        return type(head)(concat_batches([b[i] for b in batches]) for i in range(len(head)))
    if isinstance(head, Mapping):
        return {key: concat_batches([b[key] for b in batches]) for key in head}
    return head


def fit_batches(stream: DataStream, minimum: int, maximum: int | None, preferred: int) -> DataStream:
    """Re-batch a stream so every batch has between ``minimum`` and ``maximum`` samples.

    For models that accept only some batch sizes (a ``torch.export`` program exported
    with a fixed batch, or ``Dim("batch", min=2)``). A tail that fits no allowed size is
    merged into the batch before it when that fits, else left out with a note.

    Args:
        stream: the data.
        minimum: the least batch size accepted (>= 1).
        maximum: the largest accepted, None for unbounded.
        preferred: the batch size asked for (``--batch-size``).

    Returns:
        A stream yielding only accepted batch sizes.

    Raises:
        DataLoadError: the whole data set is smaller than ``minimum``.
    """
    target = max(preferred, minimum)
    if maximum is not None:
        target = min(target, maximum)
    if minimum <= 1 and maximum is None:
        return stream  # every batch size is accepted
    notes = list(stream.notes)
    fixed = maximum is not None and minimum == maximum
    accepted = f"exactly {minimum}" if fixed else f"{minimum} to {maximum if maximum is not None else 'any'}"
    if target != preferred:  # said only when the batches change; a tail merged below says so itself
        notes.append(f"the model accepts batches of {accepted} samples; data re-batched to {target}")

    def batches() -> Iterator[Batch]:
        pending: list[Batch] = []
        pending_size = 0
        held: Batch | None = None
        seen = 0
        for raw in stream.batches():
            size = batch_length(raw) or 0
            if size == 0:
                continue
            pending.append(raw)
            pending_size += size
            seen += size
            while pending_size >= target:
                joined = concat_batches(pending)
                chunk, rest = slice_batch(joined, target), slice_batch(joined, pending_size - target, target)
                pending, pending_size = ([rest] if pending_size > target else []), pending_size - target
                if held is not None:
                    yield held
                held = chunk
        tail = concat_batches(pending) if pending else None
        if held is None and (tail is None or pending_size < minimum):
            raise DataLoadError(f"{stream.source}: {seen} sample(s), but the model accepts batches of "
                                f"{accepted} samples", hint="scan more data, or re-export the model with a "
                                                            "dynamic batch dimension (Dim.DYNAMIC)")
        if tail is None:
            yield held
            return
        if pending_size >= minimum:
            if held is not None:
                yield held
            yield tail
            return
        combined = concat_batches([held, tail])
        combined_size = target + pending_size
        if maximum is None or combined_size <= maximum:
            notes.append(f"the last {pending_size} sample(s) joined the batch before them: the model accepts "
                         f"batches of {accepted} samples")
            yield combined
        elif combined_size - minimum >= minimum and not fixed:
            yield slice_batch(combined, combined_size - minimum)
            yield slice_batch(combined, minimum, combined_size - minimum)
        else:
            yield held
            notes.append(f"the last {pending_size} sample(s) were not scanned: the model accepts batches of "
                         f"{accepted} samples")

    num_samples = stream.num_samples
    if fixed and num_samples is not None:
        num_samples -= num_samples % minimum
    return replace(stream, batches=batches, num_samples=num_samples, notes=notes, select=None)


# -- building streams -----------------------------------------------------------------------


def _check_dtype(array: np.ndarray | torch.Tensor, source: str) -> None:
    if isinstance(array, torch.Tensor):
        if array.is_complex():
            raise DataLoadError(f"{source}: complex data ({array.dtype}); the model takes real numbers",
                                hint="pass x.real, x.abs() or both as channels")
        return
    kind = array.dtype.kind
    if kind == "f" and array.dtype.itemsize > 8:
        raise DataLoadError(f"{source}: {array.dtype.name} data (extended precision); torch has no such dtype",
                            hint="save it as float64 or float32 (x.astype(np.float64))")
    if kind in "biuf":
        return
    if kind == "c":
        raise DataLoadError(f"{source}: complex data ({array.dtype}); the model takes real numbers",
                            hint="save x.real, np.abs(x) or both as channels")
    if kind in "US":
        raise DataLoadError(f"{source}: holds text ({array.dtype}), not numbers",
                            hint="encode the data as numbers first (a float or int array)")
    if kind == "V":
        names = ", ".join(array.dtype.names or ()) or "raw bytes"
        raise DataLoadError(f"{source}: a structured array ({names}), not a plain numeric array",
                            hint="save the numeric field(s) as their own array")
    raise DataLoadError(f"{source}: data of dtype {array.dtype} cannot be fed to a model",
                        hint="save a float or int array")


def _dtype_name(array: np.ndarray | torch.Tensor) -> str:
    """The dtype as a report names it (``float32``; a big-endian ``>f4`` is float32 too)."""
    if isinstance(array, np.ndarray):
        return array.dtype.name
    return str(array.dtype).replace("torch.", "")


def _array_stream(arrays: Sequence[np.ndarray | torch.Tensor], source: str, batch_size: int, limit: int | None,
                  notes: list[str] | None = None, sha256: str | None = None, shuffle_seed: int | None = None,
                  droppers: Sequence[_PageDropper] = (), names: Sequence[str] = (), named: bool = False
                  ) -> DataStream:
    head = arrays[0]
    for array in arrays:
        _check_dtype(array, source)
        if array.ndim == 0:
            raise DataLoadError(f"{source}: data is a single scalar, not a batch of samples",
                                hint="the first axis must index samples")
    total = int(head.shape[0])
    for name, array in zip(names[1:], arrays[1:]):
        if int(array.shape[0]) != total:
            raise DataLoadError(f"{source}: inputs {names[0]} {tuple(head.shape)} and {name} {tuple(array.shape)} "
                                "have different numbers of samples", hint="every input needs one row per sample")
    if total == 0:
        raise DataLoadError(f"{source}: data holds no samples (first axis has length 0)",
                            hint="check that the file was written completely")
    count = min(total, limit) if limit is not None else total
    notes = list(notes or [])
    indices = None
    if shuffle_seed is not None and count < total:
        rng = np.random.default_rng(shuffle_seed)
        # Sorted, so a memory-mapped file is still read front to back.
        indices = np.sort(rng.choice(total, size=count, replace=False))
        notes.append(f"scanned a random subset of {count} of {total} samples (--shuffle-seed {shuffle_seed})")
    elif count < total:
        notes.append(f"scanned the first {count} of {total} samples (--limit)")
    elif shuffle_seed is not None:
        notes.append("--shuffle-seed has no effect without --limit: every sample was scanned "
                     "(statistics do not depend on order)")
    swapped = [f"{name} {array.dtype.name}" for name, array in zip(names or [source], arrays)
               if isinstance(array, np.ndarray) and not array.dtype.isnative]
    if swapped:
        notes.append(f"big-endian data ({', '.join(swapped)}): each batch is converted to native byte order "
                     "as it is read")
    if len(arrays) > 1 and not named:
        shapes = ", ".join(f"{name} {tuple(a.shape[1:])}" for name, a in zip(names, arrays))
        notes.append(f"model fed {len(arrays)} inputs per batch: {shapes}")
    batch_names = list(names) if named else None
    stream = DataStream(source=source, batches=_array_batches(arrays, batch_size, count, indices, droppers,
                                                              names=batch_names),
                        num_samples=count, sample_shape=tuple(head.shape[1:]),
                        dtype=_dtype_name(head), notes=notes, sha256=sha256,
                        total_samples=total, batch_size=batch_size)

    def select(start: int, stop: int) -> DataStream:
        return replace(stream, batches=_array_batches(arrays, batch_size, stop - start, indices, droppers, start,
                                                      names=batch_names),
                       num_samples=stop - start, notes=list(stream.notes), select=None)
    stream.select = select
    return stream


def _iterable_stream(data: Iterable[Batch], source: str, limit: int | None, shuffle_seed: int | None) -> DataStream:
    total = None
    dataset = getattr(data, "dataset", None)
    if dataset is not None and hasattr(dataset, "__len__") and not getattr(data, "drop_last", False):
        try:
            total = len(dataset)
        except TypeError:
            total = None
    if total is not None and limit is not None:
        total = min(total, limit)
    notes = []
    if shuffle_seed is not None:
        notes.append("--shuffle-seed is ignored for a DataLoader or iterable: its own sampler decides the order")
    stream = DataStream(source=source, batches=_limited(data, limit), num_samples=total, notes=notes,
                        batch_size=getattr(data, "batch_size", None))
    from torch.utils.data import DataLoader, IterableDataset, SequentialSampler, Subset

    if (isinstance(data, DataLoader) and total is not None and data.batch_size is not None
            and isinstance(data.sampler, SequentialSampler) and not isinstance(data.dataset, IterableDataset)):
        # A sequential loader over a map-style Dataset: a shard is a loader over its own samples.
        def select(start: int, stop: int) -> DataStream:
            loader = DataLoader(Subset(data.dataset, range(start, stop)), batch_size=data.batch_size,
                                collate_fn=data.collate_fn, num_workers=data.num_workers,
                                pin_memory=data.pin_memory, timeout=data.timeout,
                                worker_init_fn=data.worker_init_fn)
            return replace(stream, batches=_limited(loader, None), num_samples=stop - start,
                           notes=list(stream.notes), select=None)
        stream.select = select
    return stream


def _dataset_stream(dataset: Any, source: str, batch_size: int, limit: int | None,
                    shuffle_seed: int | None) -> DataStream:
    from torch.utils.data import DataLoader, Subset

    try:
        total = len(dataset)
    except TypeError:
        total = None
    notes: list[str] = []
    chosen = dataset
    if total is not None and limit is not None and limit < total:
        if shuffle_seed is not None:
            indices = np.sort(np.random.default_rng(shuffle_seed).choice(total, size=limit, replace=False))
            notes.append(f"scanned a random subset of {limit} of {total} samples (--shuffle-seed {shuffle_seed})")
        else:
            indices = np.arange(limit)
            notes.append(f"scanned the first {limit} of {total} samples (--limit)")
        chosen = Subset(dataset, indices.tolist())
    if total == 0:
        raise DataLoadError(f"{source}: the Dataset is empty", hint="check how it is built")
    loader = DataLoader(chosen, batch_size=batch_size, shuffle=False)
    count = None if total is None else min(total, limit) if limit is not None else total
    stream = DataStream(source=source, batches=_limited(loader, limit), num_samples=count, notes=notes,
                        total_samples=total, batch_size=batch_size)
    if count is not None:
        def select(start: int, stop: int) -> DataStream:
            part = DataLoader(Subset(chosen, range(start, stop)), batch_size=batch_size, shuffle=False)
            return replace(stream, batches=_limited(part, None), num_samples=stop - start,
                           notes=list(stream.notes), select=None)
        stream.select = select
    return stream


def check_seed(shuffle_seed: int | None) -> None:
    """Refuse a ``shuffle_seed`` numpy cannot seed with (a negative, a non-integer) before any work.

    Raises:
        ConfigError: naming ``shuffle_seed`` (``--shuffle-seed`` on the command line).
    """
    if shuffle_seed is not None:
        check_setting("shuffle_seed", shuffle_seed)


def as_stream(data: Any, batch_size: int = 256, limit: int | None = None, shuffle_seed: int | None = None,
              key: str | Sequence[str] | None = None, source: str | None = None, named: bool = False,
              **file_options: Any) -> DataStream:
    """Turn what a user has into a ``DataStream``.

    Args:
        data: a tensor or ndarray (first axis = samples); a dict of them (``key`` picks
            the input, several keys make several model inputs); a path to a data file;
            a ``Dataset``; or any iterable of batches (a DataLoader; batches may be
            tensors, ``(x, y)`` tuples, ``ModelInputs`` or dicts).
        batch_size: samples per batch when ``data`` is a tensor, array, dataset or file.
        limit: feed at most this many samples.
        shuffle_seed: with ``limit``, scan a random subset drawn with this seed.
        key: the entry (or entries) of a dict to feed.
        source: how to name the data in reports and messages.
        named: batches of several arrays are dicts by name (for keyword inputs and a
            mask), not positional ``ModelInputs``.
        **file_options: passed to ``load_data`` for paths.

    Returns:
        The stream.
    """
    if isinstance(data, DataStream):
        return data
    check_seed(shuffle_seed)
    if isinstance(data, (str, os.PathLike)):
        return load_data(data, batch_size=batch_size, limit=limit, key=key, shuffle_seed=shuffle_seed,
                         named=named, **file_options)
    if isinstance(data, (torch.Tensor, np.ndarray)):
        name = source or f"<{type(data).__name__} {tuple(data.shape)}>"
        return _array_stream([data], name, batch_size, limit, shuffle_seed=shuffle_seed)
    if isinstance(data, Mapping):
        name = source or "<dict>"
        arrays = {str(k): v for k, v in data.items() if isinstance(v, (torch.Tensor, np.ndarray))}
        if not arrays:
            raise DataLoadError(f"{name}: a dict without tensors or arrays ({', '.join(map(str, list(data)[:6]))})",
                                hint="return a tensor, an ndarray, a dict of them, a Dataset or a DataLoader")
        chosen, names = pick(arrays, keys_of(key), name)
        return _array_stream(chosen, name, batch_size, limit, shuffle_seed=shuffle_seed, names=names, named=named)
    from torch.utils.data import DataLoader, Dataset, IterableDataset

    if isinstance(data, Dataset) and not isinstance(data, IterableDataset) and hasattr(data, "__getitem__"):
        return _dataset_stream(data, source or f"<{type(data).__name__}>", batch_size, limit, shuffle_seed)
    if isinstance(data, IterableDataset):
        data = DataLoader(data, batch_size=batch_size)
    if isinstance(data, Iterable) and not isinstance(data, bytes):
        return _iterable_stream(data, source or f"<{type(data).__name__}>", limit, shuffle_seed)
    raise DataLoadError(f"cannot scan data of type {type(data).__name__}",
                        hint="pass a tensor, an ndarray, a data file path, a Dataset, or an iterable of batches")


def load_data(path: str | os.PathLike, batch_size: int = 256, limit: int | None = None,
              key: str | Sequence[str] | None = None, columns: Sequence[str] | None = None,
              shuffle_seed: int | None = None, named: bool = False) -> DataStream:
    """Open a data file as a stream of batches.

    Args:
        path: ``.npy`` (memory-mapped, pages dropped once read), ``.npz`` (``key`` or
            its only array), a ``.pt``/``.pth`` tensor or dict of tensors (read with
            ``weights_only=True``), or a ``.csv``/``.tsv``/``.parquet`` table (its
            numeric columns, or ``columns``).
        batch_size: samples per batch.
        limit: feed at most this many samples.
        key: the array(s) to read from an ``.npz`` or a dict ``.pt``; several keys are
            several model inputs, fed as ``model(a, b)``.
        columns: table columns to use, in this order (default: every numeric column).
        shuffle_seed: with ``limit``, scan a random subset drawn with this seed.
        named: batches are dicts of the ``key`` arrays by name (for keyword inputs).

    Returns:
        The stream.

    Raises:
        DataLoadError: missing, unreadable, empty or unsupported data.
    """
    path = Path(path)
    check_seed(shuffle_seed)
    spec = ":" in path.name and path.suffix.lower() not in (".npy", ".npz", ".pt", ".pth", ".csv", ".parquet")
    digest = check_file(path, "data file", DataLoadError,
                        missing_hint=f"for data from Python, use --data {path}" if spec
                        else "check the path; MODEL comes first, DATA second",
                        folder_hint="pass one data file (.npy, .npz, .pt, .csv, .parquet) inside it",
                        empty_hint="the save may have failed; write it again")
    reader = ARRAY_FILES.find(path)
    if reader is None:
        raise DataLoadError(f"{path}: unsupported data format {path.suffix.lower() or '(no extension)'}",
                            hint=f"use {DATA_FORMATS}")
    arrays, names, notes, droppers = reader.open(path, keys_of(key), columns)
    if columns and reader.name != "table":
        notes.append("--columns ignored: only tables (.csv, .parquet) have columns")
    return _array_stream(arrays, str(path), batch_size, limit, notes=notes, sha256=digest, shuffle_seed=shuffle_seed,
                         droppers=droppers, names=names, named=named)


def load_python_data(spec: str, batch_size: int = 256, limit: int | None = None,
                     key: str | Sequence[str] | None = None, shuffle_seed: int | None = None,
                     named: bool = False) -> DataStream:
    """Data from a Python source: ``package.module:make`` or ``path/to/file.py:make``.

    ``make()`` is called without arguments and may return a tensor, an ndarray, a dict
    of them, a ``Dataset``, a ``DataLoader`` or any iterable of batches.

    Args:
        spec: the reference to the callable (or to a ready value).
        batch_size: samples per batch (not for a DataLoader, which has its own).
        limit: feed at most this many samples.
        key: for a dict, the entry (or entries) to feed.
        shuffle_seed: with ``limit``, scan a random subset (tensors, arrays, Datasets).
        named: a dict's arrays come as dicts by name (for keyword inputs).

    Returns:
        The stream.
    """
    from .usercode import import_object

    check_seed(shuffle_seed)
    try:
        target = import_object(spec, what="--data")
    except ModelLoadError as exc:
        raise DataLoadError(exc.message, hint=exc.hint) from None
    value = target
    if callable(target) and not isinstance(target, (torch.Tensor, np.ndarray, Iterable)):
        try:
            value = target()
        except Exception as exc:
            text = first_line(exc)
            raise DataLoadError(f"--data {spec}: calling it failed: {type(exc).__name__}: {text[:200]}",
                                hint="it is called without arguments and must return the data") from None
    if value is None:
        raise DataLoadError(f"--data {spec} returned None", hint="return a tensor, ndarray, Dataset or DataLoader")
    stream = as_stream(value, batch_size=batch_size, limit=limit, shuffle_seed=shuffle_seed, key=key,
                       source=f"{spec} ({type(value).__name__})", named=named)
    from torch.utils.data import DataLoader

    if isinstance(value, DataLoader):
        stream.notes.append(f"batches come from the DataLoader (batch_size={value.batch_size}), not --batch-size")
    return stream
