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


def wrap_hanging(text: str, width: int | None, indent: int | str = 2) -> str:
    """``text`` wrapped at spaces to ``width`` columns, later lines indented; no word is ever broken.

    Names, numbers and code are words here: a word longer than the room left keeps a line
    of its own, whole (copy-paste and search see it unbroken), rather than being cut or split.

    Args:
        text: one paragraph (runs of spaces count as one; newlines are kept as breaks).
        width: the column limit (None or < 1: no limit, the text is returned unchanged).
        indent: the hanging indent of continuation lines (spaces, or the prefix itself).

    Returns:
        The wrapped text, lines joined with ``\\n``.
    """
    if width is None or width < 1:
        return text
    prefix = " " * indent if isinstance(indent, int) else indent
    out: list[str] = []
    for paragraph in text.split("\n"):
        lead = paragraph[: len(paragraph) - len(paragraph.lstrip(" "))]
        line = lead
        has_word = False
        for word in paragraph.split():
            if has_word and len(line) + 1 + len(word) > width:
                out.append(line)
                line, has_word = prefix + word, True
            else:
                line, has_word = (line + " " + word if has_word else line + word), True
        out.append(line)
    return "\n".join(out)


__all__ = ["visible", "wrap_hanging", "HIDDEN_CATEGORIES"]
