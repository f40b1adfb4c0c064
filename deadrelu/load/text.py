"""Text data files into examples: ``.txt`` (one example per line) and ``.jsonl`` (one JSON object per line).

Reading is bounded before any tokenizer sees the text: a line longer than
``max_line_bytes`` is refused (it is read only that far), each ``.jsonl`` line is parsed
with ``jsontext.parse_json`` (depth, integer length and lone surrogates checked), and
the text of every example must be valid Unicode. ``load.huggingface.load_text``
tokenizes what this returns.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataLoadError
from ..jsontext import JsonTextError, is_unicode, parse_json
from ..settings import MAX_LINE_BYTES, check_setting

#: Deepest nesting a ``.jsonl`` record may have (the text is one field; metadata beside it may nest a little).
MAX_RECORD_DEPTH = 64


def read_examples(path: str | Path, text_field: str = "text",
                  max_line_bytes: int = MAX_LINE_BYTES) -> tuple[list[str], int]:
    """The examples of a text file and how many blank lines were left out.

    Args:
        path: a ``.txt`` file (every line an example) or ``.jsonl`` (``text_field`` of each object).
        text_field: the field of each ``.jsonl`` object that holds the text.
        max_line_bytes: the longest line accepted, in bytes.

    Returns:
        ``(examples, blank lines left out)``.

    Raises:
        DataLoadError: a line that is too long, not UTF-8, not a JSON object, or without
            text in ``text_field``; a file with no text.
    """
    path = Path(path)
    max_line_bytes = check_setting("max_line_bytes", max_line_bytes)
    jsonl = path.suffix.lower() == ".jsonl"
    examples: list[str] = []
    blank = 0
    offset = 0
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise DataLoadError(f"cannot read {path}: {exc.strerror or exc}", hint="check the path") from None
    with handle:
        number = 0
        while True:
            # Read one byte past the limit: a line that long is refused without reading the rest of it.
            raw = handle.readline(max_line_bytes + 2)
            if not raw:
                break
            number += 1
            body = raw.rstrip(b"\r\n")
            if number == 1 and body.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark is not text
                body, offset = body[3:], 3
            if len(body) > max_line_bytes:
                raise DataLoadError(f"{path}:{number}: a line longer than {max_line_bytes:,} bytes",
                                    hint="split it into shorter examples, or raise the limit with "
                                         "--max-line-bytes N (max_line_bytes= in Python)")
            try:
                line = body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataLoadError(f"{path}:{number}: not UTF-8 text ({exc.reason} at byte {offset + exc.start})",
                                    hint="save the text as UTF-8") from None
            offset += len(body) + len(raw) - len(raw.rstrip(b"\r\n"))
            # A .txt line may hold other line breaks (\r, \x0c, U+2028): each part is an example.
            for part in ([line] if jsonl else line.splitlines() or [""]):
                if not part.strip():
                    blank += 1
                elif jsonl:
                    examples.append(_record_text(part, text_field, f"{path}:{number}"))
                else:
                    examples.append(part)
    if not examples:
        raise DataLoadError(f"{path}: holds no text (only blank lines)", hint="one example per line")
    return examples, blank


def _record_text(line: str, text_field: str, where: str) -> str:
    """The text field of one ``.jsonl`` line; ``where`` is ``path:line`` for messages."""
    hint = "a .jsonl file holds one JSON object per line"
    try:
        record = parse_json(line, MAX_RECORD_DEPTH)
    except JsonTextError as exc:
        if "Unicode" in exc.reason:
            hint = "a \\ud800-\\udfff escape must be half of a surrogate pair; write the text as UTF-8"
        raise DataLoadError(f"{where}: {exc.reason}", hint=hint) from None
    if not isinstance(record, dict):
        raise DataLoadError(f"{where}: a JSON {_json_type(record)}, not an object", hint=hint)
    if text_field not in record:
        fields = ", ".join(map(str, list(record)[:8])) or "no field"
        raise DataLoadError(f"{where}: no text field {text_field!r} (it holds {fields})",
                            hint="choose the field with --text-field NAME")
    value = record[text_field]
    if not isinstance(value, str):
        raise DataLoadError(f"{where}: field {text_field!r} holds a {_json_type(value)}, not text",
                            hint="choose the field that holds the text with --text-field NAME")
    if not is_unicode(value):  # pragma: no cover - parse_json already refuses lone surrogates
        raise DataLoadError(f"{where}: field {text_field!r} is not valid Unicode", hint="save the text as UTF-8")
    return value


def _json_type(value: object) -> str:
    """The JSON name of a parsed value's type (``number``, ``array``...)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if value is None:
        return "null"
    return {list: "array", dict: "object", str: "string"}.get(type(value), type(value).__name__)


__all__ = ["MAX_RECORD_DEPTH", "read_examples"]
