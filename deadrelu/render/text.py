"""Outside text made visible: names from a model or a path cannot spoof what a reader sees.

A module name, a file path or a class name is attacker-controlled text. Unicode bidi
overrides (U+202E turns ``gpj.exe`` into what reads as ``exe.jpg``), zero-width
characters, terminal escape sequences and other control or format characters are
replaced by a visible ``\\uXXXX`` (or ``\\xXX``) escape before any renderer shows them;
HTML escaping comes on top of this, not instead of it.
"""

from __future__ import annotations

import re
import unicodedata

#: Unicode categories shown escaped: controls, format (bidi, zero-width), separators
#: other than the space, surrogates, private use and unassigned code points.
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})

_ASCII_SAFE = re.compile(r"[\x20-\x7e]*")


def _escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def visible(text: object, keep_newlines: bool = False) -> str:
    """``text`` with every invisible or control character shown as an escape.

    Args:
        text: anything; it is converted with ``str``.
        keep_newlines: leave ``\\n`` as it is (multi-line code blocks).

    Returns:
        The text, unchanged when it holds only printable characters.
    """
    text = str(text)
    if _ASCII_SAFE.fullmatch(text):
        return text  # the common case: plain ASCII names
    out = []
    for char in text:
        if keep_newlines and char == "\n":
            out.append(char)
        elif unicodedata.category(char) in HIDDEN_CATEGORIES:
            out.append(_escape(char))
        else:
            out.append(char)
    return "".join(out)


__all__ = ["visible", "HIDDEN_CATEGORIES"]
