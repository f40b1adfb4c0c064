"""User code: importing the Python files and references a user names (``--arch``, ``--model``,
``--data``, ``--import``). Importing runs that code; it is the user's own and named on purpose."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError, first_line
from ..jsontext import JsonTextError, parse_json


def import_file(path: str | Path, what: str = "--import") -> types.ModuleType:
    """Import a Python file as a module (once per path) and return it.

    Args:
        path: the ``.py`` file.
        what: the option it came from, for messages.

    Returns:
        The module, registered in ``sys.modules`` as ``deadrelu_user_<stem>`` so that
        classes defined in it can be pickled and found again.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{what}: file not found: {path}", hint="check the path (relative to the current folder)")
    module_name = f"deadrelu_user_{path.stem}"
    existing = sys.modules.get(module_name)
    if existing is not None and Path(getattr(existing, "__file__", "") or "").resolve() == path.resolve():
        return existing
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ModelLoadError(f"{what}: cannot import {path}", hint="is it a Python source file?")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ModelLoadError(f"{what}: importing {path} failed: {type(exc).__name__}: {first_line(exc)}",
                             hint="the file must import cleanly; guard training code with if __name__ == '__main__'") \
            from None
    return module


def import_object(spec: str, what: str = "--arch") -> Any:
    """Import ``package.module:Name`` or ``path/to/file.py:Name``.

    Args:
        spec: the reference.
        what: the option it came from, for messages.

    Returns:
        The named attribute.
    """
    if ":" not in spec:
        raise ModelLoadError(f"{what} {spec!r} must look like package.module:Name or path/to/file.py:Name",
                             hint="for example mypkg.models:build or models.py:Net")
    target, _, name = spec.rpartition(":")
    if target.endswith(".py"):
        module = import_file(target, what)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ModelLoadError(f"{what}: cannot import module {target!r} ({exc})",
                                 hint="is the package installed, or did you mean a path/to/file.py?") from None
        except Exception as exc:
            raise ModelLoadError(f"{what}: importing {target} failed: {type(exc).__name__}: {first_line(exc)}",
                                 hint="the module must import cleanly") from None
    try:
        return getattr(module, name)
    except AttributeError:
        raise ModelLoadError(f"{what}: {target} has no attribute {name!r}",
                             hint="check the name after the ':' (a class or a function)") from None


#: Deepest nesting ``--arch-kwargs`` may have (keyword arguments of a model factory).
MAX_KWARGS_DEPTH = 32


def parse_kwargs(text: str | None) -> dict[str, Any]:
    """Parse ``--arch-kwargs`` JSON into a dict.

    Args:
        text: the JSON text (None or empty: no keyword arguments).

    Returns:
        The keyword arguments.

    Raises:
        ModelLoadError: not JSON, not an object, nested deeper than ``MAX_KWARGS_DEPTH``,
            an integer too long to read, or a lone surrogate in a string.
    """
    if not text:
        return {}
    example = """example: --arch-kwargs '{"hidden": 128}'"""
    try:
        value = parse_json(text, MAX_KWARGS_DEPTH)
    except JsonTextError as exc:
        reason = exc.reason.replace("not JSON: ", "", 1)
        raise ModelLoadError(f"--arch-kwargs is not valid JSON: {reason}" if exc.reason.startswith("not JSON")
                             else f"--arch-kwargs: {reason}", hint=example) from None
    if not isinstance(value, dict):
        raise ModelLoadError("--arch-kwargs must be a JSON object", hint=example)
    return value


__all__ = ["import_file", "import_object", "parse_kwargs"]
