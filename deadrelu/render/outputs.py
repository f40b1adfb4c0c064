"""No output lands on an input: the files a command reads, and the one check every command runs.

A command declares what it reads in an ``InputSet`` (the model, each checkpoint, the data,
config files, monitor logs, ``--arch``/``--import`` files, result JSONs); a folder given as
an input (a Hugging Face model folder, a ``--tokenizer`` folder) stands for every file in
it. ``check_outputs`` then refuses, before any work, an output that is one of those files:
by its path with symlinks followed, by its device and inode (a hard link), or by lying in
an input folder where a file already is. Every command (``scan``, ``report``, ``trend``,
``diff``, ``merge``, ``prune``, ``fix``) goes through ``ReportTargets.check``, which calls
this. Torch-free.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import OutputError
from .text import visible

#: files read from one input folder at most; past this, a folder is guarded by its path alone
MAX_FOLDER_FILES = 20_000


@dataclass(frozen=True)
class InputFile:
    """One file a command reads.

    Attributes:
        option: the argument or flag that named it (``MODEL``, ``--tokenizer``).
        path: the file.
        given: what the user gave: the file itself, or the folder holding it.
        real: ``path`` with symlinks followed.
        identity: ``(st_dev, st_ino)`` of the file, None when it does not exist.
    """

    option: str
    path: Path
    given: Path
    real: Path
    identity: tuple[int, int] | None


def _identity(path: Path | str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return (info.st_dev, info.st_ino)


def _real(path: Path | str) -> Path:
    return Path(os.path.realpath(path))


class InputSet:
    """The inputs of one command, declared by option; folders stand for every file in them."""

    def __init__(self) -> None:
        self._declared: list[tuple[str, Path]] = []
        self._files: list[InputFile] | None = None

    @classmethod
    def of(cls, inputs: InputSet | Mapping[str, Path | str | Iterable[Path | str] | None] | None) -> InputSet:
        """An ``InputSet`` from ``{"MODEL": path, "--import": [paths], "--arch": None}`` (or one as it is)."""
        if isinstance(inputs, InputSet):
            return inputs
        found = cls()
        for option, value in dict(inputs or {}).items():
            found.add(option, value)
        return found

    def add(self, option: str, value: Path | str | Iterable[Path | str] | None) -> InputSet:
        """Declare what ``option`` reads: a path, several, or None (nothing); ``-`` (stdin) is not a file.

        Returns:
            This set, for chaining.
        """
        if value is None:
            return self
        for path in ([value] if isinstance(value, (str, Path)) else value):
            if path is not None and str(path) != "-":
                self._declared.append((option, Path(path)))
                self._files = None
        return self

    def declared(self) -> list[tuple[str, Path]]:
        """``(option, path)`` as declared (folders not expanded)."""
        return list(self._declared)

    def folders(self) -> list[tuple[str, Path, Path]]:
        """``(option, folder, real folder)`` of every folder declared."""
        return [(option, path, _real(path)) for option, path in self._declared if path.is_dir()]

    def files(self) -> list[InputFile]:
        """Every input file: the files declared, and every file in each folder declared."""
        if self._files is None:
            found: list[InputFile] = []
            for option, path in self._declared:
                members = _folder_files(path) if path.is_dir() else [path]
                found += [InputFile(option, member, path, _real(member), _identity(member)) for member in members]
            self._files = found
        return list(self._files)


def _folder_files(folder: Path) -> list[Path]:
    """The files (and links to files) under ``folder``, at most ``MAX_FOLDER_FILES``."""
    found: list[Path] = []
    for root, _dirs, names in os.walk(folder, followlinks=False):
        for name in names:
            found.append(Path(root) / name)
            if len(found) >= MAX_FOLDER_FILES:
                return found
    return found


def _describe(item: InputFile) -> str:
    if item.given != item.path:
        return (f"the file {visible(str(item.path))} of the input {item.option} folder "
                f"{visible(str(item.given))}")
    return f"the input {item.option} {visible(str(item.path))}"


class _Index:
    """The inputs looked up by real path and by (device, inode)."""

    def __init__(self, inputs: InputSet) -> None:
        files = inputs.files()
        self.by_real = {item.real: item for item in files}
        self.by_identity = {item.identity: item for item in files if item.identity is not None}
        self.folders = inputs.folders()

    def find(self, path: Path) -> tuple[InputFile, bool] | None:
        """The input ``path`` would overwrite and whether it is a hard link to it, or None."""
        real, identity = _real(path), _identity(path)
        item = self.by_real.get(real)
        if item is not None:
            return item, False
        if identity is not None and identity in self.by_identity:
            return self.by_identity[identity], True
        if os.path.lexists(path):
            # A folder larger than MAX_FOLDER_FILES is not listed whole: any file in it is an input.
            for option, folder, real_folder in self.folders:
                if real.is_relative_to(real_folder):
                    return InputFile(option, real, folder, real, identity), False
        return None


def describe(item: InputFile, hard_link: bool = False) -> str:
    """``the input MODEL m.pt`` / ``the file m/config.json of the input MODEL folder m`` (with ``a hard link to``)."""
    return ("a hard link to " if hard_link else "") + _describe(item)


def check_outputs(outputs: Iterable[tuple[str, Path]], inputs: InputSet | Mapping[str, object] | None,
                  what: str = "writing the report",
                  plot_folders: Iterable[tuple[str, Path, Iterable[str]]] = ()) -> None:
    """Refuse an output that is one of the inputs (symlinks and hard links included).

    Args:
        outputs: ``(option, path)`` of every file the command will write.
        inputs: what the command reads.
        what: the act that would overwrite, for the error line.
        plot_folders: ``(option, folder, file name patterns)`` of folders written into; the
            files already there under those names are outputs too.

    Raises:
        OutputError: one line naming the output and the input it would overwrite.
    """
    outputs, plot_folders = list(outputs), list(plot_folders)
    if not outputs and not plot_folders:
        return
    index = _Index(InputSet.of(inputs))  # type: ignore[arg-type]
    for option, path in outputs:
        found = index.find(path)
        if found is not None:
            raise OutputError(f"{option} {visible(str(path))} is {describe(*found)}; {what} would overwrite it",
                              hint=f"give {option} another path")
    for option, folder, patterns in plot_folders:
        for path in _existing_matches(folder, tuple(patterns)):
            found = index.find(path)
            if found is not None:
                raise OutputError(f"{option} {visible(str(folder))} would overwrite {describe(*found)} with a plot "
                                  f"({visible(path.name)})", hint=f"give {option} another folder")


def _existing_matches(folder: Path, patterns: tuple[str, ...]) -> list[Path]:
    import fnmatch
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return [folder / name for name in sorted(names) if any(fnmatch.fnmatchcase(name, p) for p in patterns)]


__all__ = ["InputSet", "InputFile", "check_outputs", "describe", "MAX_FOLDER_FILES"]
