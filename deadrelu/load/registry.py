"""Readers at an extension point: each format a user may hand over, how it is recognised, how it opens.

A ``Registry`` is an ordered list of ``Reader``s; the first whose ``recognise`` says yes
opens the source. Adding a format is one entry, and every command and API entry point
sees it, because they all open models and data through ``deadrelu.load.readers``. The
format tables of ``docs/inputs.md`` are written from the registries' ``doc`` rows (``markdown``)
and tested against them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reader:
    """One format.

    Attributes:
        name: the format's short name (a model's ``format`` in the report, a data format's label).
        recognise: ``recognise(source) -> bool`` from what the user named (a path, a Python
            reference, an object), reading at most a file's first bytes; never runs code from it.
        open: opens a recognised source; the registry's owner says with which arguments.
        doc: rows of the docs' format table (``docs/inputs.md``): ``(what you have, how)`` pairs.
    """

    name: str
    recognise: Callable[[Any], bool]
    open: Callable[..., Any]
    doc: tuple[tuple[str, str], ...] = ()


class Registry:
    """Readers tried in order: the first that recognises a source opens it.

    Args:
        what: what the readers read (``model``, ``data``), for messages.
        readers: the readers, in the order they are tried.
    """

    def __init__(self, what: str, readers: Iterable[Reader] = ()) -> None:
        self.what = what
        self._readers: list[Reader] = []
        for reader in readers:
            self.register(reader)

    def register(self, reader: Reader) -> Reader:
        """Add a reader, tried after those already here; names are unique.

        Returns:
            The reader (so this works as a one-line registration).
        """
        if reader.name in self.names():
            raise ValueError(f"a {self.what} reader named {reader.name!r} is registered already")
        self._readers.append(reader)
        return reader

    def find(self, source: Any) -> Reader | None:
        """The first reader that recognises ``source``, or None."""
        return next((reader for reader in self._readers if reader.recognise(source)), None)

    def names(self) -> list[str]:
        """The readers' names, in order."""
        return [reader.name for reader in self._readers]

    def __getitem__(self, name: str) -> Reader:
        for reader in self._readers:
            if reader.name == name:
                return reader
        raise KeyError(name)

    def __iter__(self) -> Iterator[Reader]:
        return iter(list(self._readers))

    def __len__(self) -> int:
        return len(self._readers)

    def markdown(self, header: tuple[str, str]) -> str:
        """The readers' ``doc`` rows as a Markdown table under ``header``."""
        lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
        lines += [f"| {what} | {how} |" for reader in self._readers for what, how in reader.doc]
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {self.names()})"


__all__ = ["Reader", "Registry"]
