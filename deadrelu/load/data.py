"""Data: tensors, arrays, files and iterables into a stream of batches.

Arrays are never copied whole: a ``.npy`` is memory-mapped and each batch is copied
out on its own, so memory stays flat however large the file is.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import DataLoadError

Batch = Any


@dataclass
class DataStream:
    """Batches plus what is known about them before the scan.

    Attributes:
        source: where the data came from (a path, or a description of the object).
        batches: a callable returning a fresh iterator of raw batches (tensor, tuple or dict).
        num_samples: total samples that will be fed, if known (for progress and reports).
        sample_shape: shape of one sample, if known.
        dtype: the data's dtype as stored, if known.
        notes: facts about loading the user should see (casts, limits).
        sha256: digest of the file, for reports.
    """

    source: str
    batches: Callable[[], Iterator[Batch]]
    num_samples: int | None = None
    sample_shape: tuple[int, ...] | None = None
    dtype: str | None = None
    notes: list[str] = field(default_factory=list)
    sha256: str | None = None


def _array_batches(array: np.ndarray | torch.Tensor, batch_size: int, count: int) -> Callable[[], Iterator[Batch]]:
    def batches() -> Iterator[torch.Tensor]:
        for start in range(0, count, batch_size):
            chunk = array[start:min(start + batch_size, count)]
            if isinstance(chunk, np.ndarray):
                # np.array copies the slice out of the memory map; from_numpy then shares it.
                chunk = torch.from_numpy(np.array(chunk, copy=True, order="C"))
            yield chunk
    return batches


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
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, np.ndarray):
        return torch.from_numpy(batch)
    if isinstance(batch, (tuple, list)) and batch:
        return first_tensor(batch[0])
    if isinstance(batch, dict) and batch:
        return first_tensor(next(iter(batch.values())))
    return None


def slice_batch(batch: Batch, count: int) -> Batch:
    if isinstance(batch, (torch.Tensor, np.ndarray)):
        return batch[:count]
    if isinstance(batch, (tuple, list)):
        return type(batch)(slice_batch(item, count) for item in batch)
    if isinstance(batch, dict):
        return {key: slice_batch(value, count) for key, value in batch.items()}
    return batch


def as_stream(data: Any, batch_size: int = 256, limit: int | None = None, **file_options: Any) -> DataStream:
    """Turn what a user has into a ``DataStream``.

    Args:
        data: a tensor or ndarray (first axis = samples), a path to a data file, or
            any iterable of batches (a DataLoader; batches may be tensors, ``(x, y)``
            tuples or dicts).
        batch_size: samples per batch when ``data`` is a tensor, array or file.
        limit: feed at most this many samples.
        **file_options: passed to ``load_data`` for paths.

    Returns:
        The stream.
    """
    if isinstance(data, (str, os.PathLike)):
        return load_data(data, batch_size=batch_size, limit=limit, **file_options)
    if isinstance(data, (torch.Tensor, np.ndarray)):
        return _array_stream(data, f"<{type(data).__name__} {tuple(data.shape)}>", batch_size, limit)
    if isinstance(data, Iterable) and not isinstance(data, (dict, bytes)):
        total = None
        dataset = getattr(data, "dataset", None)
        if dataset is not None and hasattr(dataset, "__len__") and not getattr(data, "drop_last", False):
            total = len(dataset)
        if total is not None and limit is not None:
            total = min(total, limit)
        return DataStream(source=f"<{type(data).__name__}>", batches=_limited(data, limit), num_samples=total)
    raise DataLoadError(f"cannot scan data of type {type(data).__name__}",
                        hint="pass a tensor, an ndarray, a data file path, or an iterable of batches (DataLoader)")


def _array_stream(array: np.ndarray | torch.Tensor, source: str, batch_size: int, limit: int | None,
                  notes: list[str] | None = None, sha256: str | None = None) -> DataStream:
    if array.ndim == 0:
        raise DataLoadError(f"{source}: data is a single scalar, not a batch of samples",
                            hint="the first axis must index samples")
    total = int(array.shape[0])
    if total == 0:
        raise DataLoadError(f"{source}: data holds no samples (first axis has length 0)")
    count = min(total, limit) if limit is not None else total
    notes = list(notes or [])
    if count < total:
        notes.append(f"scanned the first {count} of {total} samples (--limit)")
    return DataStream(source=source, batches=_array_batches(array, batch_size, count), num_samples=count,
                      sample_shape=tuple(array.shape[1:]), dtype=str(array.dtype).replace("torch.", ""),
                      notes=notes, sha256=sha256)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_data(path: str | os.PathLike, batch_size: int = 256, limit: int | None = None,
              key: str | None = None) -> DataStream:
    """Open a data file as a stream of batches.

    Args:
        path: ``.npy`` (memory-mapped), ``.npz`` (``key`` or its only array), or a
            ``.pt``/``.pth`` tensor (loaded with ``weights_only=True``).
        batch_size: samples per batch.
        limit: feed at most this many samples.
        key: the array to read from an ``.npz`` or a dict saved in a ``.pt``.

    Returns:
        The stream.

    Raises:
        DataLoadError: missing, unreadable, empty or unsupported data.
    """
    path = Path(path)
    if not path.exists():
        raise DataLoadError(f"data file not found: {path}")
    if path.is_dir():
        raise DataLoadError(f"data path is a folder, not a file: {path}")
    if path.stat().st_size == 0:
        raise DataLoadError(f"data file is empty: {path}")
    suffix = path.suffix.lower()
    digest = file_sha256(path)
    if suffix == ".npy":
        array = _open_npy(path)
    elif suffix == ".npz":
        array = _open_npz(path, key)
    elif suffix in (".pt", ".pth"):
        array = _open_pt(path, key)
    else:
        raise DataLoadError(f"{path}: unsupported data format {suffix or '(no extension)'}",
                            hint="use .npy, .npz or a .pt tensor")
    return _array_stream(array, str(path), batch_size, limit, sha256=digest)


def _open_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataLoadError(f"{path}: holds Python objects, not a numeric array",
                                hint="save a numeric array (np.save with a float/int dtype)") from None
        raise DataLoadError(f"{path}: not a valid .npy file ({exc})", hint="was it truncated?") from None
    except OSError as exc:
        raise DataLoadError(f"{path}: cannot read as .npy ({exc})", hint="is it really a NumPy file?") from None


def _open_npz(path: Path, key: str | None) -> np.ndarray:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataLoadError(f"{path}: not a valid .npz file ({exc})") from None
    names = list(archive.files)
    if key is None:
        if len(names) != 1:
            raise DataLoadError(f"{path}: holds {len(names)} arrays ({', '.join(names)}); say which",
                                hint="pass --key NAME")
        key = names[0]
    if key not in names:
        raise DataLoadError(f"{path}: no array named {key!r}; it holds {', '.join(names)}", hint="pass --key NAME")
    try:
        return archive[key]
    except (ValueError, zipfile.BadZipFile, OSError) as exc:
        raise DataLoadError(f"{path}: array {key!r} cannot be read ({exc})") from None


def _open_pt(path: Path, key: str | None) -> torch.Tensor:
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataLoadError(f"{path}: cannot load as a tensor file ({first[:200]})",
                            hint="save data with torch.save(tensor) or as .npy") from None
    if isinstance(value, dict):
        tensors = {k: v for k, v in value.items() if isinstance(v, torch.Tensor)}
        if key is None and len(tensors) == 1:
            key = next(iter(tensors))
        if key is None or key not in tensors:
            looks_like_weights = any(str(k).endswith((".weight", ".bias")) for k in value)
            hint = ("this looks like model weights (a state_dict), not data"
                    if looks_like_weights else "pass --key NAME")
            raise DataLoadError(f"{path}: a dict of {len(value)} entries; no tensor key chosen "
                                f"({', '.join(map(str, list(value)[:5]))})", hint=hint)
        value = tensors[key]
    if not isinstance(value, torch.Tensor):
        raise DataLoadError(f"{path}: holds a {type(value).__name__}, not a tensor",
                            hint="save data with torch.save(tensor)")
    return value
