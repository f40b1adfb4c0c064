"""Reading what a pickle would do, without running it: the globals it asks for, listed statically."""

from __future__ import annotations

import pickletools
from pathlib import Path
from typing import Any

import torch


def pickle_globals(path: Path) -> list[str]:
    """The globals a pickle asks for, read statically (nothing is imported or run)."""
    getter = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if getter is not None:
        try:
            return sorted(getter(str(path)))
        except Exception:
            pass
    # Legacy (non-zip) files and plain pickles: walk the opcodes ourselves.
    try:
        with path.open("rb") as handle:
            return _globals_in_pickle_stream(handle)
    except OSError:
        return []


def _globals_in_pickle_stream(handle: Any) -> list[str]:
    found: set[str] = set()
    for _pickle in range(5):  # a legacy torch.save file is up to five pickles in a row
        strings: list[str] = []
        try:
            for opcode, argument, _position in pickletools.genops(handle):
                if opcode.name == "GLOBAL" and isinstance(argument, str):
                    found.add(argument.replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.add(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(argument, str):
                    strings.append(argument)
        except Exception:
            break
    try:
        from torch._weights_only_unpickler import _get_allowed_globals
        allowed = set(_get_allowed_globals())
    except Exception:  # a private helper; its absence only makes the list longer
        allowed = set()
    return sorted(found - allowed)


__all__ = ["pickle_globals"]
