"""Writing a repaired model in a form that loads back: a ``torch.export`` program, a state_dict,
a Hugging Face folder, or the input's own pickle.

| input | repair keeps the architecture (recycle, reinit) | repair changes it (prune, swap) |
|---|---|---|
| state_dict / checkpoint / safetensors / factory | ``.pt``/``.pth``/``.safetensors``: same keys and shapes; ``.pt2`` | ``.pt2`` |
| pickled module | ``.pt``: the pickled module; ``.pt2`` | ``.pt``: the pickled module; ``.pt2`` |
| Hugging Face folder | a folder (``save_pretrained``, tokenizer copied); ``.safetensors``; ``.pt2`` | ``.pt2`` |

Every ``.pt2`` returns plain tensors (``programs.TensorOutputs``), so ``torch.export.load``
and ``deadrelu scan`` read it without the model's own output classes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError, OutputError, first_line
from .verify import EvalMode

#: Input formats whose file is a state_dict (possibly inside a checkpoint).
STATE_DICT_FORMATS = ("state_dict", "checkpoint", "safetensors", "factory")
#: Suffixes written as a state_dict (``.safetensors`` with safetensors, the others with ``torch.save``).
STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


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


def save_program(model: nn.Module, example: Sequence[Any], path: str | Path,
                 kwargs: Mapping[str, Any] | None = None) -> str:
    """Export ``model`` (eval mode) with ``torch.export`` and save it as a ``.pt2`` archive.

    The program returns the model's tensors (one, or a tuple in output order: a Hugging
    Face model's ``last_hidden_state`` first, no KV cache), under the model's own parameter
    names. The batch axis is exported as dynamic when torch can prove it is; else the program
    takes only the example's batch size (the line returned says which).

    Args:
        model: the model to write.
        example: one batch of positional inputs.
        path: the ``.pt2`` file.
        kwargs: one batch of keyword inputs (``input_ids=``, ``attention_mask=``).

    Returns:
        One line describing what was written.

    Raises:
        OutputError: the model cannot be exported or the file cannot be written.
    """
    from .programs import export_program
    path = Path(path)
    try:
        with EvalMode(model), torch.no_grad():
            program = export_program(model, tuple(example), kwargs)
    except Exception as exc:
        raise OutputError(f"cannot export the repaired model to {path}: {type(exc).__name__}: {first_line(exc, 200)}",
                          hint="write weights with --state-dict (prune) or a .pt output instead") from None
    try:
        _atomic(path, lambda temporary: torch.export.save(program, temporary))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}", hint="choose a path you can write") from None
    from ..load.exported import input_constraints
    (low, high), _sample = input_constraints(program)
    named = [*((f"input {i}", value) for i, value in enumerate(example)), *((f"{k}=", v) for k, v in (kwargs or {}).items())]
    if low == high:
        shapes = ", ".join(f"{name} {tuple(value.shape)}" for name, value in named if isinstance(value, torch.Tensor))
        accepts = f"inputs of exactly these shapes: {shapes}"
    else:
        accepts = f"batch sizes {low} to {high}" if high is not None else f"batch sizes >= {low}"
        accepts += f", taking {', '.join(name for name, _ in named)}"
    return f"{path} (torch.export program for {accepts}; returns tensors; load with torch.export.load(path).module())"


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
            # safetensors refuses tensors that share memory (tied embeddings): write each once.
            _atomic(path, lambda temporary: save_file({k: v.clone() for k, v in state.items()}, temporary))
        else:
            _atomic(path, lambda temporary: torch.save(state, temporary))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}", hint="choose a path you can write") from None
    return f"{path} (state_dict, {len(state)} tensors)"


def save_hf_folder(model: nn.Module, path: str | Path, source: str | Path | None) -> str:
    """``save_pretrained`` into a new folder, with the source folder's tokenizer; loads with
    ``from_pretrained`` and ``deadrelu scan``. Written beside ``path`` first, then moved in.

    Raises:
        OutputError: ``path`` is a file or a folder that is not a Hugging Face model folder, or cannot be written.
    """
    from ..load.huggingface import has_tokenizer, is_model_folder, load_tokenizer
    path = Path(path)
    if path.exists() and not (path.is_dir() and (is_model_folder(path) or not any(path.iterdir()))):
        raise OutputError(f"{path} exists and is not a Hugging Face model folder; refusing to write into it",
                          hint="choose a new folder name for --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        model.save_pretrained(str(staging))
        tokenizer = source is not None and has_tokenizer(source)
        if tokenizer:
            load_tokenizer(source).save_pretrained(str(staging))
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}", hint="choose a path you can write") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return f"{path}/ (Hugging Face folder{', with the tokenizer' if tokenizer else ''}; load with " \
           "from_pretrained or deadrelu scan)"


def check_destination(path: str | Path | None, input_format: str, architecture_kept: bool) -> None:
    """Fail before any work when ``save_like_input`` could not write the result to ``path``.

    Raises:
        ConfigError: the name has no suffix that says what to write, or it asks for a state_dict
            (or a Hugging Face folder) while the repair changes the architecture.
    """
    if path is None:
        return
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".pt2":
        return
    huggingface = input_format == "huggingface"
    if not suffix and not huggingface:
        raise ConfigError(f"--out {path}: name the file with its format: .pt (state_dict or, for a pickled input, "
                          "the module), .safetensors, or .pt2 (torch.export program)",
                          hint=f"--out {path.with_suffix('.pt2' if not architecture_kept else '.pt')}")
    if suffix and suffix not in STATE_DICT_SUFFIXES:
        raise ConfigError(f"--out {path}: unknown suffix {path.suffix!r}",
                          hint="use .pt/.pth (state_dict), .safetensors, .pt2 (torch.export program)"
                               + (" or a folder name without suffix" if huggingface else ""))
    if architecture_kept or (input_format == "pickle" and suffix != ".safetensors"):
        return
    what = "a Hugging Face folder" if huggingface and not suffix else "a state_dict"
    raise ConfigError(f"{path}: the repair changes the architecture, which {what} cannot hold",
                      hint=f"write a torch.export program: --out {path.with_suffix('.pt2')}")


def save_like_input(model: nn.Module, path: str | Path, loaded: Any, example: Sequence[Any] | None,
                    architecture_kept: bool, kwargs: Mapping[str, Any] | None = None) -> str:
    """Write the repaired model in the input's format where that format can hold it, else as ``.pt2``.

    Args:
        model: the repaired model.
        path: where; a ``.pt2`` suffix always means a ``torch.export`` program; no suffix, for
            a Hugging Face input, a ``save_pretrained`` folder.
        loaded: the input ``LoadedModel`` (its ``format`` and ``source``), or its format name.
        example: one batch of positional inputs (for export).
        architecture_kept: the repair kept every module type and tensor shape (recycle, reinit),
            so a state_dict for the user's own architecture holds it.
        kwargs: one batch of keyword inputs (for export).

    Returns:
        One line describing what was written.
    """
    path = Path(path)
    input_format = loaded if isinstance(loaded, str) else loaded.format
    check_destination(path, input_format, architecture_kept)
    suffix = path.suffix.lower()
    if suffix == ".pt2":
        if example is None:
            raise ConfigError(f"{path}: exporting needs data", hint="pass DATA")
        return save_program(model, example, path, kwargs)
    if input_format == "huggingface" and not suffix:
        return save_hf_folder(model, path, None if isinstance(loaded, str) else loaded.source)
    if input_format == "pickle" and suffix != ".safetensors":
        try:
            _atomic(path, lambda temporary: torch.save(model, temporary))
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}", hint="choose a path you can write") from None
        return f"{path} (whole pickled module, like the input; load with torch.load(weights_only=False))"
    return save_state_dict(model, path) + ", same keys and shapes as the input"


__all__ = ["save_program", "save_state_dict", "save_hf_folder", "save_like_input", "check_destination",
           "STATE_DICT_FORMATS", "STATE_DICT_SUFFIXES"]
