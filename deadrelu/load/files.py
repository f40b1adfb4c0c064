"""Input files: one check for missing, folder, unreadable and empty paths, and their SHA-256."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def check_file(path: Path, what: str, error: type[Exception], missing_hint: str, folder_hint: str,
               empty_hint: str) -> str:
    """Raise ``error`` for a missing, folder, unreadable or empty file; return its sha256."""
    if not path.exists():
        raise error(f"{what} not found: {path}", hint=missing_hint)
    if path.is_dir():
        raise error(f"{what.split(' ')[0]} path is a folder, not a file: {path}", hint=folder_hint)
    try:
        size = path.stat().st_size
        digest = file_sha256(path)
    except OSError as exc:
        raise error(f"{what} cannot be read: {path}: {exc.strerror or exc}",
                    hint="check the file's permissions") from None
    if size == 0:
        raise error(f"{what} is empty: {path}", hint=empty_hint)
    return digest


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks; its pages are then dropped from the cache."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
        if hasattr(os, "posix_fadvise"):
            try:
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass
    return digest.hexdigest()


__all__ = ["check_file", "file_sha256"]
