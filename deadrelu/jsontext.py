"""JSON text from files a user hands us, parsed without trusting it.

Every reader of JSON that comes from outside (``.jsonl`` text data, monitor logs, a
Hugging Face ``config.json``, ``--arch-kwargs``, saved reports) goes through
``parse_json``, so hostile text ends in one ``JsonTextError`` saying what is wrong
instead of a ``RecursionError`` (200,000 nested arrays), a ``ValueError`` (an integer of
5,000 digits) or a string that cannot be written back out (a lone surrogate ``\\ud800``).
The caller turns that reason into its own error naming the file and line.

Torch-free and numpy-light: the result layer and ``deadrelu report`` use it too.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
# A \uD800-\uDFFF escape; only then can a parsed string hold a lone surrogate (UTF-8 text cannot).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class JsonTextError(ValueError):
    """JSON text that is not JSON, or JSON no reader of ours should accept; ``reason`` says which,
    phrased to follow "<file>:<line>: " (``not JSON: Expecting value at column 3``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def json_depth(text: str) -> int:
    """How deeply arrays and objects nest in JSON text, counted without parsing it."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub('""', text))
    if not brackets:
        return 0
    codes = np.frombuffer(brackets.encode("ascii"), dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


def parse_json(text: str, max_depth: int = 64) -> Any:
    """Parse JSON text whose nesting, integers and strings are bounded.

    Args:
        text: the JSON text (one document, or one line of a ``.jsonl`` file).
        max_depth: the deepest nesting of arrays/objects accepted (counted before parsing,
            so ``json.loads``'s recursion is never reached).

    Returns:
        The parsed value. ``NaN``/``Infinity`` are parsed as floats: callers that need
        finite numbers check their fields.

    Raises:
        JsonTextError: not JSON, nested deeper than ``max_depth``, an integer longer than
            Python reads (4,300 digits), or a string holding a lone surrogate.
    """
    depth = json_depth(text)
    if depth > max_depth:
        raise JsonTextError(f"JSON nested {depth:,} deep (at most {max_depth})")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JsonTextError(f"not JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise JsonTextError("JSON nested too deep") from None
    except ValueError as exc:  # Python's limit on the digits of an integer
        raise JsonTextError("an integer too long to read" if "digits" in str(exc)
                            else f"not JSON: {str(exc).split(';')[0]}") from None
    if _SURROGATE_ESCAPE.search(text):
        _check_strings(value)
    return value


def _check_strings(value: Any) -> None:
    """Every string (keys included) encodes as UTF-8: no lone surrogate from a ``\\ud800`` escape."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            texts = [item]
        elif isinstance(item, dict):
            texts = list(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            continue
        for piece in texts:
            if not is_unicode(piece):
                raise JsonTextError(f"text that is not valid Unicode (a lone surrogate in {piece[:40]!r})")


def is_unicode(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (holds no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


__all__ = ["JsonTextError", "is_unicode", "json_depth", "parse_json"]
