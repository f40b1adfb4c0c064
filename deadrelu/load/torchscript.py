"""TorchScript archives (``torch.jit.save``): loaded so that nothing from the file runs before
its graphs are checked.

Reading a TorchScript archive compiles its ``code/`` members (TorchScript source, possibly
tampered) and unpickles its data with torch's TorchScript unpickler, which cannot import
Python code but does run one thing from the file: a class's ``__setstate__`` method. So,
without consent:

1. the archive is read once into memory (a file swapped afterwards is not read), and every
   ``.py`` member is read through torch's own zip reader (the bytes the compiler gets); one
   that defines ``__setstate__`` is refused, since it would run while loading, before any
   check. torch's modules never define one; quantized TorchScript models do, and need
   consent;
2. the archive is imported into a compilation unit of our own, so that every function it
   compiled can be listed, and :func:`deadrelu.load.graphcheck.check_torchscript` walks
   every method of every submodule and every function of that unit before anything runs.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelLoadError
from ..errors import first_line as _first_line
from .graphcheck import Finding, check_torchscript


def _unloadable(path: Path, exc: BaseException) -> ModelLoadError:
    return ModelLoadError(f"{path}: a TorchScript archive that cannot be loaded ({_first_line(exc)})",
                          hint="was it saved by a much newer torch, or truncated?")


def _load_time_code(data: bytes) -> str | None:
    """The first code member (as torch's reader returns it) that defines ``__setstate__``."""
    reader = torch._C.PyTorchFileReader(io.BytesIO(data))
    for name in reader.get_all_records():
        if name.endswith(".py") and b"__setstate__" in reader.get_record(name):
            return name
    return None


def load_torchscript(path: Path, allow_pickle: bool) -> nn.Module:
    """Load a TorchScript archive, refusing (without consent) one whose graphs do more than
    compute on tensors.

    Args:
        path: the archive.
        allow_pickle: the user's consent to run what the file holds unchecked.

    Returns:
        The ``ScriptModule``, never run.

    Raises:
        ModelLoadError: not loadable.
        UnsafeGraphError: an operation outside the allow-list, or code that runs while loading.
    """
    if allow_pickle:
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise _unloadable(path, exc) from None
    data = path.read_bytes()
    try:
        member = _load_time_code(data)
    except Exception as exc:
        raise _unloadable(path, exc) from None
    if member is not None:
        raise Finding("__setstate__", f"defined in {member}",
                      "runs while the archive loads, before its graph can be checked").error(str(path))
    unit = torch._C.CompilationUnit()
    try:
        compiled = torch._C.import_ir_module_from_buffer(unit, data, torch.device("cpu"), {}, False)
        module = torch.jit._recursive.wrap_cpp_module(compiled)
        functions = list(unit.get_functions())
    except Exception as exc:
        raise _unloadable(path, exc) from None
    check_torchscript(module, functions, str(path))
    return module


__all__ = ["load_torchscript"]
