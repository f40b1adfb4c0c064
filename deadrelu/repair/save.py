"""Writing a repaired model: a ``torch.export`` program, a state_dict, or the input's own format."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError, OutputError
from .verify import _Eval

#: Input formats whose file is a state_dict (possibly inside a checkpoint).
STATE_DICT_FORMATS = ("state_dict", "checkpoint", "safetensors", "factory")


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def save_program(model: nn.Module, example: Sequence[Any], path: str | Path) -> str:
    """Export ``model`` (eval mode) with ``torch.export`` and save it as a ``.pt2`` archive.

    The batch axis is exported as dynamic when torch can prove it is; else the program
    takes only the example's batch size (the report says which).

    Returns:
        One line describing what was written.

    Raises:
        OutputError: the model cannot be exported or the file cannot be written.
    """
    path = Path(path)
    args = tuple(example)
    program = None
    dynamic = {0: torch.export.Dim.AUTO}
    with _Eval(model), torch.no_grad():
        attempts: list[Any] = [tuple(dynamic if isinstance(a, torch.Tensor) and a.ndim else None for a in args), None]
        errors: list[str] = []
        for shapes in attempts:
            try:
                program = torch.export.export(model, args, dynamic_shapes=shapes)
                break
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}")
    if program is None:
        raise OutputError(f"cannot export the repaired model to {path}: {errors[-1]}",
                          hint="write weights with --state-dict (prune) or a .pt output instead")
    try:
        _atomic(path, lambda temporary: torch.export.save(program, temporary))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}", hint="choose a path you can write") from None
    from ..load.exported import input_constraints
    (low, high), _sample = input_constraints(program)
    batch = f"batches of {low} only" if low == high else \
        f"batch sizes {low} to {high}" if high is not None else f"batch sizes >= {low}"
    return f"{path} (torch.export program for {batch}; load with torch.export.load)"


def save_state_dict(model: nn.Module, path: str | Path) -> str:
    """Save ``model.state_dict()`` (tensors on the CPU): ``.safetensors`` by suffix, else ``torch.save``."""
    path = Path(path)
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    try:
        if path.suffix.lower() == ".safetensors":
            try:
                from safetensors.torch import save_file
            except ImportError:
                raise ConfigError(f"{path}: writing .safetensors needs the safetensors package",
                                  hint="pip install safetensors, or write a .pt file") from None
            _atomic(path, lambda temporary: save_file(state, temporary))
        else:
            _atomic(path, lambda temporary: torch.save(state, temporary))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}", hint="choose a path you can write") from None
    return f"{path} (state_dict, {len(state)} tensors)"


def check_destination(path: str | Path | None, input_format: str, architecture_kept: bool) -> None:
    """Fail before any work when ``save_like_input`` could not write the result to ``path``.

    Raises:
        ConfigError: the repair changes the architecture and ``path`` asks for a state_dict.
    """
    if path is None:
        return
    path = Path(path)
    if architecture_kept or path.suffix.lower() == ".pt2":
        return
    if input_format == "pickle" and path.suffix.lower() != ".safetensors":
        return
    raise ConfigError(f"{path}: the repair changes the architecture, which a state_dict cannot hold",
                      hint=f"write a torch.export program: --out {path.with_suffix('.pt2')}")


def save_like_input(model: nn.Module, path: str | Path, input_format: str, example: Sequence[Any] | None,
                    architecture_kept: bool) -> str:
    """Write the repaired model in the input's format where that format can hold it, else as ``.pt2``.

    Args:
        model: the repaired model.
        path: where; a ``.pt2`` suffix always means a ``torch.export`` program.
        input_format: how the input was loaded (``state_dict``, ``pickle``...).
        example: one batch of inputs (for export).
        architecture_kept: the repair kept every module type and tensor shape (recycle, reinit),
            so a state_dict for the user's own architecture holds it.

    Returns:
        One line describing what was written.
    """
    path = Path(path)
    if path.suffix.lower() == ".pt2":
        if example is None:
            raise ConfigError(f"{path}: exporting needs data", hint="pass DATA")
        return save_program(model, example, path)
    if input_format == "pickle" and path.suffix.lower() != ".safetensors":
        try:
            _atomic(path, lambda temporary: torch.save(model, temporary))
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}", hint="choose a path you can write") from None
        return f"{path} (whole pickled module, like the input; load with torch.load(weights_only=False))"
    check_destination(path, input_format, architecture_kept)
    return save_state_dict(model, path) + ", same keys and shapes as the input"


__all__ = ["save_program", "save_state_dict", "save_like_input", "check_destination", "STATE_DICT_FORMATS"]
