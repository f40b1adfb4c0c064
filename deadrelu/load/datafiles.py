"""Data files into arrays: ``.npy`` (memory-mapped), ``.npz``, ``.pt``/``.pth`` tensors and tables.

Each reader turns one file into the arrays to feed and their names, or a
``DataLoadError`` naming the file; ``load.data.load_data`` picks the reader by suffix
and makes the stream. Nothing here unpickles: ``.npy``/``.npz`` are read with
``allow_pickle=False`` and ``.pt`` with ``weights_only=True``.

A ``.npy`` is never copied whole: it is memory-mapped, each batch is copied out on
its own, and the pages already read are handed back to the kernel
(``madvise(MADV_DONTNEED)`` on the mapping, ``posix_fadvise(POSIX_FADV_DONTNEED)`` on
the file), because resident file pages count toward the process's RSS: a data file
larger than RAM streams through with flat memory.
"""

from __future__ import annotations

import math
import mmap
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..errors import DataLoadError, first_line
from .registry import Reader, Registry

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")


# -- memory-mapped files --------------------------------------------------------------------


class _PageDropper:
    """Gives a memory-mapped array's pages back to the kernel once a batch is copied out.

    Args:
        array: an ``np.memmap`` (from ``np.load(mmap_mode="r")``).
        path: its file, for ``posix_fadvise``.
    """

    def __init__(self, array: np.ndarray, path: Path) -> None:
        self._mmap = getattr(array, "_mmap", None)
        self._path = path
        self._fd: int | None = None
        usable = self._mmap is not None and hasattr(self._mmap, "madvise") and hasattr(mmap, "MADV_DONTNEED")
        offset = int(getattr(array, "offset", 0))
        self._map_start = offset - offset % mmap.ALLOCATIONGRANULARITY
        self._data_start = offset - self._map_start
        self._length = len(self._mmap) if usable else 0  # type: ignore[arg-type]
        # Rows are contiguous byte ranges only in C order; otherwise drop the whole map.
        self._row_bytes = int(array.strides[0]) if array.ndim and array.flags.c_contiguous else None
        self.enabled = usable

    def release(self, first_row: int, end_row: int) -> None:
        """Drop the pages holding rows ``[first_row, end_row)`` (whole pages around them)."""
        if not self.enabled:
            return
        if self._row_bytes is None:
            low, high = 0, self._length
        else:
            low = self._data_start + first_row * self._row_bytes
            high = self._data_start + end_row * self._row_bytes
        page = mmap.PAGESIZE
        low -= low % page
        high = min(self._length, -(-high // page) * page)
        if high <= low:
            return
        try:
            self._mmap.madvise(mmap.MADV_DONTNEED, low, high - low)  # type: ignore[union-attr]
        except (OSError, ValueError):
            self.enabled = False
            return
        if hasattr(os, "posix_fadvise"):
            try:
                if self._fd is None:
                    self._fd = os.open(self._path, os.O_RDONLY)
                os.posix_fadvise(self._fd, self._map_start + low, high - low, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


_NPZ_IN_MEMORY = ("an .npz array is read whole into memory; save it with np.save as .npy, which is streamed from "
                  "disk, or cut it into smaller files")


# -- readers ---------------------------------------------------------------------------------


def keys_of(key: str | Sequence[str] | None) -> list[str]:
    """Names from ``--key``/``--columns`` values: a name, ``"a,b"``, or a list of either."""
    if key is None:
        return []
    if isinstance(key, str):
        return [part for part in key.split(",") if part] if "," in key else [key]
    return [part for item in key for part in keys_of(item)]


def pick(values: Mapping[str, Any], keys: list[str], source: str, what: str = "arrays") -> tuple[list[Any], list[str]]:
    """The entries ``keys`` of ``values`` (its only entry when none is named), with their names.

    Raises:
        DataLoadError: no key named and several entries, or a key that is not there.
    """
    keys = choose([str(k) for k in values], keys, source, what)
    return [values[k] for k in keys], keys


def choose(names: list[str], keys: list[str], source: str, what: str = "arrays", entry: str = "entry") -> list[str]:
    """Which of ``names`` to read: ``keys``, or the only name when none is given (the names alone,
    so an archive's members are chosen before any is read).

    Raises:
        DataLoadError: no key named and several names, or a key that is not one of them.
    """
    if not keys:
        if len(names) != 1:
            raise DataLoadError(f"{source}: holds {len(names)} {what} ({', '.join(names[:8])}); say which",
                                hint="pass --key NAME, or input_key= in Python (several for a model that "
                                     "takes several inputs)")
        return names
    missing = [k for k in keys if k not in names]
    if missing:
        raise DataLoadError(f"{source}: no {entry} named {missing[0]!r}; it holds {', '.join(names[:8])}",
                            hint="pass --key NAME")
    return keys


def open_npy(path: Path) -> np.ndarray:
    """A ``.npy`` file memory-mapped read-only (never unpickled).

    Raises:
        DataLoadError: not a valid .npy file, or an array of Python objects.
    """
    try:
        with np.errstate(all="ignore"):  # a crafted shape overflows numpy's size product before it is refused
            array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc) or "Python objects" in str(exc):
            raise DataLoadError(f"{path}: holds Python objects, not a numeric array",
                                hint="save a numeric array (np.save with a float/int dtype)") from None
        raise DataLoadError(f"{path}: not a valid .npy file ({first_line(exc, 200)})",
                            hint="was it truncated? compare its size with the original") from None
    except OSError as exc:
        raise DataLoadError(f"{path}: cannot read as .npy ({first_line(exc, 200)})",
                            hint="is it really a NumPy file?") from None
    except Exception as exc:  # a crafted header fails inside numpy's parser in many ways
        raise DataLoadError(f"{path}: not a valid .npy file ({type(exc).__name__}: {first_line(exc, 200)})",
                            hint="was it truncated or edited? write it again with np.save") from None
    if not isinstance(array, np.ndarray):  # np.load reads an .npz archive whatever its name
        if hasattr(array, "close"):
            array.close()
        raise DataLoadError(f"{path}: an .npz archive named .npy", hint="rename it to .npz")
    return array


def open_npz(path: Path, keys: list[str]) -> tuple[list[np.ndarray], list[str]]:
    """The arrays ``keys`` of an ``.npz`` (its only one when none is named), read into memory.

    Raises:
        DataLoadError: not a valid archive, a missing key, an array larger than memory.
    """
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataLoadError(f"{path}: not a valid .npz file ({first_line(exc, 200)})", hint="was it truncated?") \
            from None
    except Exception as exc:  # a crafted archive fails inside zipfile/numpy in many ways
        raise DataLoadError(f"{path}: not a valid .npz file ({type(exc).__name__}: {first_line(exc, 200)})",
                            hint="was it truncated or edited? write it again with np.savez") from None
    if not hasattr(archive, "files"):
        raise DataLoadError(f"{path}: a single .npy array named .npz", hint="rename it to .npy")
    keys = choose(list(archive.files), keys, str(path), entry="array")
    for key in keys:  # refused on what the headers declare, before numpy allocates anything
        declared = _npz_declared(archive, key)
        if declared is None:
            continue
        shape, dtype, size = declared
        what = f"{path}: array {key!r} declares shape {shape} {dtype} = {size:,} bytes ({_bytes(size)})"
        if size > _physical_memory():
            raise DataLoadError(f"{what}, more than fits in memory", hint=_NPZ_IN_MEMORY)
        stored = _npz_member_size(archive, key)
        if stored is not None and size > stored:
            raise DataLoadError(f"{what}, but the archive holds {stored:,} bytes for it",
                                hint="was the file truncated? write it again with np.savez")
    try:
        with np.errstate(all="ignore"):
            arrays = [archive[key] for key in keys]
    except MemoryError:
        # An .npz member is read whole into memory (only a plain .npy is memory-mapped).
        raise DataLoadError(f"{path}: the arrays {', '.join(map(repr, keys))} do not fit in memory",
                            hint=_NPZ_IN_MEMORY) from None
    except (ValueError, zipfile.BadZipFile, OSError, EOFError) as exc:
        if "allow_pickle" in str(exc):
            raise DataLoadError(f"{path}: array holds Python objects, not numbers",
                                hint="save numeric arrays") from None
        raise DataLoadError(f"{path}: an array cannot be read ({first_line(exc, 200)})",
                            hint="was the file truncated?") from None
    except Exception as exc:  # a crafted member header fails inside numpy's parser in many ways
        raise DataLoadError(f"{path}: an array cannot be read ({type(exc).__name__}: {first_line(exc, 200)})",
                            hint="was it truncated or edited? write it again with np.savez") from None
    for key, array in zip(keys, arrays):
        if not isinstance(array, np.ndarray):  # a member without the .npy magic comes back as its raw bytes
            raise DataLoadError(f"{path}: member {key!r} is not a .npy array", hint="write it again with np.savez")
    return arrays, keys


def _npz_declared(archive: Any, key: str) -> tuple[tuple[int, ...], np.dtype, int] | None:
    """The shape, dtype and size in bytes an .npz member's header declares, read without the array."""
    try:
        with archive.zip.open(f"{key}.npy") as member:
            version = np.lib.format.read_magic(member)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _fortran_order, dtype = read_header(member)
    except Exception:  # a header that cannot be read: the message then names the array only
        return None
    shape = tuple(int(n) for n in shape)
    return shape, np.dtype(dtype), math.prod(shape) * np.dtype(dtype).itemsize


def _npz_member_size(archive: Any, key: str) -> int | None:
    """The uncompressed size the zip directory gives an .npz member (reading never goes past it)."""
    try:
        return int(archive.zip.getinfo(f"{key}.npy").file_size)
    except (AttributeError, KeyError):
        return None


def _physical_memory() -> float:
    """This machine's RAM in bytes (infinity where the OS does not say)."""
    try:
        return float(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return math.inf


def _bytes(size: int) -> str:
    """A byte count in the largest binary unit below it (``4.0 PiB``)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"  # pragma: no cover


def open_pt(path: Path, keys: list[str]) -> tuple[list[torch.Tensor], list[str]]:
    """The tensors of a ``.pt``/``.pth`` data file, read with ``weights_only=True``.

    Raises:
        DataLoadError: a model or weights instead of data, a pickle that needs code, no tensor.
    """
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        first = first_line(exc)
        if "Weights only load failed" in first or "weights_only" in str(exc):
            from .pickles import pickle_globals
            wanted = ", ".join(pickle_globals(path)[:4]) or "unknown classes"
            raise DataLoadError(f"{path}: a pickled object that needs code to load ({wanted}), "
                                "probably a model, not data; not unpickled",
                                hint="pass the model first and the data second; data files hold tensors or arrays") \
                from None
        raise DataLoadError(f"{path}: cannot load as a tensor file ({first[:200]})",
                            hint="save data with torch.save(tensor) or as .npy") from None
    if isinstance(value, (torch.nn.Module,)):
        raise DataLoadError(f"{path}: holds a model, not data", hint="pass the model first and the data second")
    if isinstance(value, Mapping):
        tensors = {str(k): v for k, v in value.items() if isinstance(v, torch.Tensor)}
        looks_like_weights = any(str(k).endswith((".weight", ".bias", "running_mean")) for k in value)
        if looks_like_weights and not keys:
            raise DataLoadError(f"{path}: a state_dict (model weights: {', '.join(map(str, list(value)[:3]))}), "
                                "not data", hint="pass the model first and the data second")
        if not tensors:
            raise DataLoadError(f"{path}: a dict without tensors ({', '.join(map(str, list(value)[:5]))})",
                                hint="save data with torch.save(tensor) or a dict of tensors")
        return pick(tensors, keys, str(path), "tensors")
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
        if keys:
            try:
                chosen = [int(k) for k in keys]
            except ValueError:
                raise DataLoadError(f"{path}: a {type(value).__name__} of tensors; --key must be positions",
                                    hint="pass --key 0 (and --key 1 ... for several inputs)") from None
            return [value[i] for i in chosen], [str(i) for i in chosen]
        return [value[0]], ["0"]
    if not isinstance(value, torch.Tensor):
        raise DataLoadError(f"{path}: holds a {type(value).__name__}, not a tensor",
                            hint="save data with torch.save(tensor)")
    return [value], [path.stem]


def open_table(path: Path, columns: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    """A CSV/TSV/Parquet table as a 2-D array of its numeric columns (or ``columns``), with notes.

    Raises:
        DataLoadError: unreadable, empty, a named column missing or not numeric.
    """
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    except ImportError as exc:
        raise DataLoadError(f"{path}: reading it needs a package that is missing ({exc})",
                            hint="pip install pyarrow") from None
    except pd.errors.EmptyDataError:
        raise DataLoadError(f"{path}: the table is empty (no header, no rows)",
                            hint="was the export cut short?") from None
    except Exception as exc:
        text = first_line(exc)
        raise DataLoadError(f"{path}: not a readable {suffix.lstrip('.')} table ({text[:200]})",
                            hint="was it truncated, or is it another format?") from None
    if len(frame) == 0:
        raise DataLoadError(f"{path}: the table has a header but no rows", hint="was the export cut short?")
    notes = []
    chosen = keys_of(columns) if columns else []
    if chosen:
        missing = [c for c in chosen if c not in frame.columns]
        if missing:
            raise DataLoadError(f"{path}: no column named {missing[0]!r}; columns: "
                                f"{', '.join(map(str, frame.columns[:12]))}", hint="check --columns")
        frame = frame[chosen]
        text = [c for c in chosen if not (pd.api.types.is_numeric_dtype(frame[c]) or
                                          pd.api.types.is_bool_dtype(frame[c]))]
        if text:
            raise DataLoadError(f"{path}: column {text[0]!r} is not numeric ({frame[text[0]].dtype})",
                                hint="choose numeric columns with --columns")
    else:
        numeric = frame.select_dtypes(include=["number", "bool"])
        dropped = [str(c) for c in frame.columns if c not in numeric.columns]
        if numeric.shape[1] == 0:
            raise DataLoadError(f"{path}: no numeric column ({', '.join(map(str, frame.columns[:8]))})",
                                hint="encode the data as numbers, or choose columns with --columns")
        if dropped:
            notes.append(f"left out {len(dropped)} non-numeric column(s): {', '.join(dropped[:8])}")
        frame = numeric
    notes.append(f"{frame.shape[1]} column(s) used as features: {', '.join(map(str, list(frame.columns)[:8]))}"
                 + (" ..." if frame.shape[1] > 8 else ""))
    return frame.to_numpy(), notes


class ArrayFile(NamedTuple):
    """What an array file reader returns: the arrays to feed, their names, notes, and the page
    droppers of memory-mapped arrays."""

    arrays: list[Any]
    names: list[str]
    notes: list[str]
    droppers: list[_PageDropper]


def _suffix(*suffixes: str) -> Any:
    return lambda path: Path(path).suffix.lower() in suffixes


def _read_npy(path: Path, keys: list[str], columns: Sequence[str] | None) -> ArrayFile:
    array = open_npy(path)
    return ArrayFile([array], [path.stem], ["--key ignored: a .npy file holds one array"] if keys else [],
                     [_PageDropper(array, path)])


def _read_table(path: Path, keys: list[str], columns: Sequence[str] | None) -> ArrayFile:
    table, notes = open_table(path, columns)
    return ArrayFile([table], [path.stem], notes, [])


#: Array files, recognised by their suffix: ``reader.open(path, keys, columns) -> ArrayFile``.
#: ``deadrelu.load.readers.DATA_READERS`` lists them with text, Python sources and objects.
ARRAY_FILES = Registry("data file", [
    Reader("npy", _suffix(".npy"), _read_npy, doc=(
        ("`.npy`", "memory-mapped; each batch is copied out and the pages already read are handed back to the "
                   "kernel (`madvise`/`posix_fadvise`), so a file larger than RAM streams through with flat memory "
                   "(a 1 GiB file scans in ~330 MB peak RSS, about what a 100-sample file needs)"),)),
    Reader("npz", _suffix(".npz"), lambda path, keys, columns: ArrayFile(*open_npz(path, keys), [], []),
           doc=(("`.npz`", "`--key NAME`, or its only array"),)),
    Reader("pt", _suffix(".pt", ".pth"), lambda path, keys, columns: ArrayFile(*open_pt(path, keys), [], []),
           doc=(("`.pt` / `.pth`", "a tensor, or a dict of tensors with `--key` (read with `weights_only=True`)"),)),
    Reader("table", _suffix(*TABLE_SUFFIXES), _read_table, doc=(
        ("`.csv` / `.tsv` / `.parquet`", "every numeric column (others are left out, with a note), or "
                                         "`--columns a,b,c` in that order"),)),
])


__all__ = ["ARRAY_FILES", "ArrayFile", "TABLE_SUFFIXES", "keys_of", "open_npy", "open_npz", "open_pt", "open_table",
           "pick"]
