"""Scan a series of checkpoints over the same data: the library side of ``deadrelu trend``.

``checkpoint_files`` turns what a user typed (files, a folder, a glob) into an ordered
list; ``scan_checkpoints`` scans each with the same data and settings. A
``deadrelu.history.Trend`` built from the results is what the renderers draw.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from .errors import ConfigError, ModelLoadError
from .history import step_of

if TYPE_CHECKING:
    from .result import ScanResult

#: file name endings taken as checkpoints when a folder or glob is given
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".pt2", ".bin", ".tar")
_GLOB_CHARS = set("*?[")


def _by_step(paths: Iterable[Path]) -> list[Path]:
    """Sorted by the step number in the name (names without a number last, by name)."""
    return sorted(paths, key=lambda p: (step_of(p.name) is None, step_of(p.name) or 0, p.name))


def checkpoint_files(paths: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """The checkpoints to scan, in training order, and notes about that order.

    Args:
        paths: files (kept in the order given), folders (their checkpoint files, sorted by
            the step number in the names) or globs (matches sorted the same way).

    Returns:
        ``(files, notes)``; a note says when files given one by one are not in step order.

    Raises:
        ModelLoadError: a path matches nothing, or a folder holds no checkpoint.
    """
    files: list[Path] = []
    explicit: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found = [p for p in path.iterdir() if p.is_file() and p.name.endswith(CHECKPOINT_SUFFIXES)]
            if not found:
                raise ModelLoadError(f"{path}: a folder with no checkpoint file ({', '.join(CHECKPOINT_SUFFIXES)})",
                                     hint="pass the checkpoint files, a folder of them, or a quoted glob")
            files.extend(_by_step(found))
        elif not path.exists() and _GLOB_CHARS & set(str(item)):
            matches = [Path(p) for p in glob.glob(str(item)) if Path(p).is_file()]
            if not matches:
                raise ModelLoadError(f"{item}: the pattern matches no file", hint="check the glob; quote it so "
                                     "deadrelu sorts the matches by step")
            files.extend(_by_step(matches))
        else:
            files.append(path)
            explicit.append(path)
    notes = []
    steps = [step_of(p.name) for p in explicit]
    if len(explicit) > 1 and all(s is not None for s in steps) and steps != sorted(steps):
        notes.append("checkpoints are in the order given, which is not the order of the step numbers in their names "
                     "(a shell glob sorts step_1000 before step_200); pass the folder or a quoted glob to sort by step")
    return files, notes


def scan_checkpoints(checkpoints: Sequence[str | Path], data: Any, *, arch: str | None = None,
                     arch_kwargs: Mapping[str, Any] | None = None, allow_pickle: bool = False,
                     imports: Iterable[str | Path] = (), key: str | Sequence[str] | None = None,
                     input_key: str | Sequence[str] | None = None, scale: float | None = None,
                     on_scanned: Callable[[int, Path, ScanResult], None] | None = None,
                     **settings: Any) -> list[ScanResult]:
    """Scan each checkpoint over the same data, in the order given.

    Args:
        checkpoints: model files (any format ``deadrelu scan`` takes).
        data: a data file path or anything ``deadrelu.scan`` takes; read once.
        arch: ``package.module:Factory`` or ``file.py:Factory`` for weight-only files.
        arch_kwargs: keyword arguments for the factory.
        allow_pickle: allow the full unpickler (files you trust only).
        imports: Python files to import before unpickling.
        key: array name(s) inside a data file.
        input_key: entry of dict batches that is the model input.
        scale: multiply inputs by this.
        on_scanned: called as ``on_scanned(index, path, result)`` after each scan.
        **settings: scan settings (``batch_size``, ``tau``, ``device``...).

    Returns:
        One ``ScanResult`` per checkpoint.
    """
    from .load.data import as_stream
    from .load.model import load_model
    from .scanning import scan
    from .settings import build_settings

    if not checkpoints:
        raise ConfigError("no checkpoint to scan", hint="deadrelu trend CKPT... DATA --arch pkg.module:Factory")
    scan_settings = build_settings(**settings)
    stream = as_stream(data, scan_settings.batch_size, scan_settings.limit, key=key)
    results = []
    for index, path in enumerate(checkpoints):
        loaded = load_model(path, arch=arch, arch_kwargs=arch_kwargs, allow_pickle=allow_pickle, imports=imports)
        result = scan(loaded, stream, settings=scan_settings, input_key=input_key, scale=scale)
        results.append(result)
        if on_scanned is not None:
            on_scanned(index, Path(path), result)
    return results
