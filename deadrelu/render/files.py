"""Atomic file writes: a report is either whole or absent, never half-written.

Temp files are named ``.<name>.deadrelu-<pid>.tmp`` beside their destination, so they
are recognisably ours: a write that was killed (SIGKILL, power loss) leaves one behind,
and the next write to the same path removes it when the process that made it is gone.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import OutputError

#: ``.<destination name>.deadrelu-<pid>.tmp``
TEMP_MARKER = ".deadrelu-"


def temp_path(path: Path, pid: int | None = None) -> Path:
    """Where the temp file of a write to ``path`` by process ``pid`` lives."""
    return path.with_name(f".{path.name}{TEMP_MARKER}{os.getpid() if pid is None else pid}.tmp")


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
    """Delete temp files a killed write to ``path`` left behind (their process is gone).

    Returns:
        The removed paths.
    """
    removed = []
    prefix = f".{path.name}{TEMP_MARKER}"
    try:
        candidates = list(path.parent.glob(f"{_glob_escape(prefix)}*.tmp"))
    except OSError:
        return removed
    for candidate in candidates:
        pid_text = candidate.name[len(prefix):-len(".tmp")]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        try:
            candidate.unlink()
            removed.append(candidate)
        except OSError:
            pass
    return removed


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in text)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename.

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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        handle = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}",
                          hint="choose an output path in a folder you can write") from None
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}",
                          hint="choose an output path in a folder you can write") from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically (see ``atomic_write_bytes``)."""
    return atomic_write_bytes(path, text.encode("utf-8"))
