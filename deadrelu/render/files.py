"""Atomic file writes: a report is either whole or absent, never half-written; reports written
together land together.

Temp files are named ``.<name>.deadrelu-<pid>-<token>.tmp`` beside their destination and
are created with ``O_EXCL``. Each one is also recorded in a registry this user owns
(``<cache>/temps/<pid>-<dev>-<inode>``, holding the temp's path) until it is renamed or
removed. A write that was killed (SIGKILL, power loss) leaves a temp file and its record
behind; the next write to the same destination removes the temp only when its record
proves this process family made it (same path, same device and inode, the process gone).
A user's own file that merely looks like a temp file (``--config .x.json.deadrelu-1.tmp``)
has no record and is never deleted.

``written_together()`` stages every atomic write made inside it and renames all of them
at the end, with Ctrl-C held back during the renames; interrupted before that, nothing is
renamed and the temps are removed, so "no report written" is the truth.
"""

from __future__ import annotations

import contextvars
import os
import re
import secrets
import signal
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import OutputError

#: ``.<destination name>.deadrelu-<pid>-<token>.tmp``
TEMP_MARKER = ".deadrelu-"
_WRITE_HINT = "choose an output path in a folder you can write"


def temp_path(path: Path, pid: int | None = None, token: str | None = None) -> Path:
    """Where a temp file of a write to ``path`` by process ``pid`` lives (``token`` tells writes apart)."""
    token = secrets.token_hex(4) if token is None else token
    return path.with_name(f".{path.name}{TEMP_MARKER}{os.getpid() if pid is None else pid}-{token}.tmp")


def _temp_name_pattern(path: Path) -> re.Pattern[str]:
    return re.compile(re.escape(f".{path.name}{TEMP_MARKER}") + r"(\d{1,10})-([0-9a-f]{8})\.tmp")


# -- the registry of temps this process family made ------------------------------------------------

def registry_folder() -> Path | None:
    """The folder recording live temp files (``$DEADRELU_CACHE_DIR/temps``, else ``~/.cache/deadrelu/temps``);
    None when it cannot be made, or is not this user's alone (then no temp file is ever cleaned up)."""
    base = os.environ.get("DEADRELU_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "deadrelu")
    folder = Path(base) / "temps"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(folder)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        return None
    return folder


def _record_name(pid: int, identity: tuple[int, int]) -> str:
    return f"{pid}-{identity[0]}-{identity[1]}"


def _register(temp: Path, identity: tuple[int, int]) -> Path | None:
    """Record that this process made ``temp`` (best effort: without a record it is just never cleaned)."""
    folder = registry_folder()
    if folder is None:
        return None
    record = folder / _record_name(os.getpid(), identity)
    try:
        handle = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(handle, "w", encoding="utf-8", errors="surrogateescape") as stream:
            stream.write(os.path.abspath(temp))
    except OSError:
        return None
    return record


def _forget(record: Path | None) -> None:
    if record is not None:
        try:
            record.unlink()
        except OSError:
            pass


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete temp files a killed write to ``path`` left behind: only those the registry proves
    this process family made (same path, device and inode) and whose process is gone.

    Returns:
        The removed paths.
    """
    removed: list[Path] = []
    folder = registry_folder()
    if folder is None:
        return removed
    pattern = _temp_name_pattern(path)
    try:
        candidates = [entry for entry in os.scandir(path.parent) if pattern.fullmatch(entry.name)]
    except OSError:
        return removed
    for entry in candidates:
        pid = int(pattern.fullmatch(entry.name).group(1))  # type: ignore[union-attr]
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or _alive(pid):
            continue
        record = folder / _record_name(pid, (info.st_dev, info.st_ino))
        try:
            recorded = record.read_text(encoding="utf-8", errors="surrogateescape")
        except OSError:
            continue  # no record: not a temp file we made (perhaps a user's file with a look-alike name)
        if recorded != os.path.abspath(entry.path):
            continue
        try:
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            continue
        _forget(record)
    _sweep_records(folder)
    return removed


def _sweep_records(folder: Path) -> None:
    """Drop records of gone processes whose temp file no longer exists (the user removed it)."""
    try:
        records = list(os.scandir(folder))
    except OSError:
        return
    for record in records:
        pid_text = record.name.partition("-")[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        try:
            recorded = Path(record.path).read_text(encoding="utf-8", errors="surrogateescape")
        except OSError:
            continue
        if not os.path.lexists(recorded):
            _forget(Path(record.path))


# -- reports written together --------------------------------------------------------------------

class ReportsInterrupted(KeyboardInterrupt):
    """Ctrl-C while reports were being written; ``written`` names the files that were (all of them
    when ``complete``), so the interruption line can say exactly which."""

    def __init__(self, written: list[Path], complete: bool) -> None:
        super().__init__()
        self.written = written
        self.complete = complete


@dataclass
class _Staged:
    temp: Path
    path: Path
    record: Path | None


@dataclass
class WriteBatch:
    """Atomic writes staged as temp files, renamed together by ``commit``.

    Attributes:
        staged: temp files waiting for their rename.
        appends: ``(path, text)`` appended after the renames (GitHub's step summary is appended to).
        written: destinations done so far.
    """

    staged: list[_Staged] = field(default_factory=list)
    appends: list[tuple[Path, str]] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)

    def discard(self) -> None:
        """Remove every staged temp file (nothing was renamed)."""
        for item in self.staged:
            item.temp.unlink(missing_ok=True)
            _forget(item.record)
        self.staged.clear()
        self.appends.clear()

    def commit(self) -> list[Path]:
        """Rename every staged file onto its destination, then do the appends; Ctrl-C waits until the end.

        Returns:
            The destinations written, in the order they were staged.

        Raises:
            OutputError: a rename or append failed (the line names what was already written).
            ReportsInterrupted: Ctrl-C came during the renames (after all of them were done), or a
                KeyboardInterrupt was raised inside them (``written`` says which were done).
        """
        with _sigint_held() as held:
            try:
                while self.staged:
                    item = self.staged[0]
                    try:
                        os.replace(item.temp, item.path)
                    except OSError as exc:
                        raise OutputError(f"cannot write {item.path}: {exc.strerror or exc}{self._so_far()}",
                                          hint=_WRITE_HINT) from None
                    self.staged.pop(0)
                    _forget(item.record)
                    self.written.append(item.path)
                while self.appends:
                    path, text = self.appends[0]
                    _append_now(path, text, self._so_far())
                    self.appends.pop(0)
                    self.written.append(path)
            except KeyboardInterrupt:
                self.discard()
                raise ReportsInterrupted(list(self.written), complete=False) from None
            except BaseException:
                self.discard()
                raise
        if held.get("pending"):
            raise ReportsInterrupted(list(self.written), complete=True)
        return list(self.written)

    def _so_far(self) -> str:
        return f" (already written: {', '.join(map(str, self.written))})" if self.written else ""


_BATCH: contextvars.ContextVar[WriteBatch | None] = contextvars.ContextVar("deadrelu_write_batch", default=None)


@contextmanager
def written_together() -> Iterator[WriteBatch]:
    """Stage the atomic writes made inside the block and rename them all when it ends.

    An exception (or Ctrl-C) inside the block removes the staged temp files: no report is
    written. Inside an enclosing ``written_together`` the writes join the outer batch.

    Yields:
        The batch (its ``written`` is filled when the outermost block ends).
    """
    outer = _BATCH.get()
    if outer is not None:
        yield outer
        return
    batch = WriteBatch()
    token = _BATCH.set(batch)
    try:
        yield batch
    except BaseException:
        _BATCH.reset(token)
        batch.discard()
        raise
    _BATCH.reset(token)
    batch.commit()


@contextmanager
def _sigint_held() -> Iterator[dict[str, Any]]:
    """Hold Ctrl-C back (main thread only) so a batch of renames is not cut in two."""
    held: dict[str, Any] = {}
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield held  # not ours to change (a handler installed outside Python cannot be put back)
        return
    try:
        previous = signal.signal(signal.SIGINT, lambda *_: held.__setitem__("pending", True))
    except (ValueError, OSError, TypeError):
        yield held
        return
    try:
        yield held
    finally:
        signal.signal(signal.SIGINT, previous)
        if held.get("pending") and previous not in (signal.default_int_handler, signal.SIG_DFL):
            held.pop("pending")
            if callable(previous):
                previous(signal.SIGINT, None)  # someone else's handler decides; SIG_IGN ignores it


def append_text(path: str | Path, text: str) -> Path:
    """Append UTF-8 text to ``path`` (after the renames when inside ``written_together``).

    Raises:
        OutputError: the file cannot be appended to.
    """
    path = Path(path)
    batch = _BATCH.get()
    if batch is not None:
        batch.appends.append((path, text))
        return path
    _append_now(path, text, "")
    return path


def _append_now(path: Path, text: str, so_far: str) -> None:
    try:
        with path.open("a", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise OutputError(f"cannot append to {path}: {exc.strerror or exc}{so_far}", hint=_WRITE_HINT) from None


# -- one atomic write ------------------------------------------------------------------------------

def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename.

    Inside ``written_together`` the rename waits for the end of the block.

    Args:
        path: destination; its parent folders are created.
        data: the whole content.

    Returns:
        The destination path.

    Raises:
        OutputError: the folder cannot be created or written.
    """
    path = Path(path)
    temp = temp_path(path)
    record = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        handle = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}", hint=_WRITE_HINT) from None
    try:
        with os.fdopen(handle, "wb") as stream:
            info = os.fstat(stream.fileno())
            record = _register(temp, (info.st_dev, info.st_ino))
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp, 0o644)
        batch = _BATCH.get()
        if batch is not None:
            batch.staged.append(_Staged(temp, path, record))
            return path
        os.replace(temp, path)
        _forget(record)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        _forget(record)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}", hint=_WRITE_HINT) from None
    except BaseException:
        temp.unlink(missing_ok=True)
        _forget(record)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically (see ``atomic_write_bytes``)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


__all__ = ["TEMP_MARKER", "temp_path", "registry_folder", "remove_stale_temps", "ReportsInterrupted", "WriteBatch",
           "written_together", "append_text", "atomic_write_bytes", "atomic_write_text"]
