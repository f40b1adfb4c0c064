"""Scan a series of checkpoints over the same data: the library side of ``deadrelu trend``.

``checkpoint_files`` turns what a user typed (files, a folder, a glob) into an ordered
list; ``scan_checkpoints`` scans each with the same data and settings. A
``deadrelu.history.Trend`` built from the results is what the renderers draw.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from .errors import ConfigError, ModelLoadError
from .history import step_of

if TYPE_CHECKING:
    from .load.spec import Inputs
    from .result import ScanResult
    from .settings import ScanSettings

#: file name endings taken as checkpoints when a folder or glob is given
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".pt2", ".bin", ".tar")
_GLOB_CHARS = set("*?[")


def _is_model_folder(path: Path) -> bool:
    """A Hugging Face checkpoint: a folder holding its ``config.json`` (``save_pretrained``)."""
    return path.is_dir() and (path / "config.json").is_file()


def _by_step(paths: Iterable[Path]) -> list[Path]:
    """Sorted by the step number in the name (names without a number last, by name)."""
    return sorted(paths, key=lambda p: (step_of(p.name) is None, step_of(p.name) or 0, p.name))


def checkpoint_files(paths: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """The checkpoints to scan, in training order, and notes about that order.

    Args:
        paths: files and Hugging Face checkpoint folders (kept in the order given), folders
            (their checkpoint files, or the Hugging Face checkpoint folders inside, sorted by
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
        if _is_model_folder(path):  # a Hugging Face checkpoint is a folder
            files.append(path)
            explicit.append(path)
        elif path.is_dir() and any(_is_model_folder(child) for child in path.iterdir()):
            # A run's folder of Hugging Face checkpoints (checkpoint-500/, checkpoint-1000/ ...).
            files.extend(_by_step([child for child in path.iterdir() if _is_model_folder(child)]))
        elif path.is_dir():
            found = [p for p in path.iterdir() if p.is_file() and p.name.endswith(CHECKPOINT_SUFFIXES)]
            if not found:
                raise ModelLoadError(f"{path}: a folder with no checkpoint file ({', '.join(CHECKPOINT_SUFFIXES)})",
                                     hint="pass the checkpoint files, a folder of them, or a quoted glob")
            files.extend(_by_step(found))
        elif not path.exists() and _GLOB_CHARS & set(str(item)):
            matches = [Path(p) for p in glob.glob(str(item)) if Path(p).is_file() or _is_model_folder(Path(p))]
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


def scan_checkpoints(checkpoints: Sequence[str | Path], data: Any = None, *, inputs: Inputs | None = None,
                     on_scanned: Callable[[int, Path, ScanResult], None] | None = None,
                     settings: ScanSettings | None = None, **options: Any) -> list[ScanResult]:
    """Scan each checkpoint over the same data, in the order given.

    Args:
        checkpoints: model files or Hugging Face folders (any format ``deadrelu scan`` takes);
            with ``model_factory`` (``--model``), weights files loaded into the factory's model.
        data: a data file path (text too) or anything ``deadrelu.scan`` takes; read once.
        inputs: everything else about the inputs (``deadrelu.Inputs``: ``arch``, ``kwargs``,
            ``mask``, ``tokenizer``...); its model is each checkpoint in turn.
        on_scanned: called as ``on_scanned(index, path, result)`` after each scan.
        settings: scan settings; or give single ones (``batch_size``, ``tau``, ``device``...)
            in ``options``.
        **options: options of the inputs (``arch``, ``arch_kwargs``, ``allow_pickle``,
            ``imports``, ``key``, ``input_key``, ``scale``, ``kwargs``, ``mask``, ``tokenizer``...)
            and scan settings.

    Returns:
        One ``ScanResult`` per checkpoint.
    """
    from .load.sources import open_data, with_model_tokenizer
    from .load.spec import Inputs
    from .scanning import scan
    from .settings import build_settings

    if not checkpoints:
        raise ConfigError("no checkpoint to scan", hint="deadrelu trend CKPT... DATA --arch pkg.module:Factory")
    input_options, overrides = Inputs.split(options)
    settings = settings.replace(**overrides) if settings is not None else build_settings(**overrides)
    base = (inputs or Inputs()).with_values(data=data, **input_options)
    described = [checkpoint_inputs(base, path) for path in checkpoints]
    # The data are read once, for every checkpoint (text: with the first checkpoint folder's tokenizer).
    stream = open_data(with_model_tokenizer(described[0]), batch_size=settings.batch_size, limit=settings.limit)
    results = []
    for index, (path, each) in enumerate(zip(checkpoints, described)):
        result = scan(each.with_values(data=stream), settings=settings)
        results.append(result)
        if on_scanned is not None:
            on_scanned(index, Path(path), result)
    return results


def checkpoint_inputs(inputs: Inputs, checkpoint: str | Path) -> Inputs:
    """The inputs of one checkpoint: it is the model, or, with a factory, the weights loaded into it."""
    if inputs.model_factory is not None:
        return inputs.with_values(weights=checkpoint)
    return inputs.with_values(model=checkpoint)
