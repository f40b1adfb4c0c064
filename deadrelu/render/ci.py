"""The CI files of a scan or a diff: JUnit XML (``--junit``) and a Markdown summary (``--markdown``).

Library code a notebook or a CI script can call as the CLI does: ``write_ci_reports(result,
"deadrelu.xml", "summary.md")``. The documents themselves come from ``render.junit`` and
``render.markdown``; writes are atomic (``render.files``), and inside a caller's
``written_together`` they land with the other reports.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..compare import DiffResult
    from ..result import ScanResult


def write_markdown(path: str | os.PathLike, text: str) -> None:
    """Write a Markdown summary; appended when ``path`` is GitHub's ``$GITHUB_STEP_SUMMARY``
    (which collects what every command of a step appends), else replaced atomically."""
    from .files import append_text, atomic_write_text
    path = Path(path)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary and Path(summary).resolve() == path.resolve():
        append_text(path, text)
        return
    atomic_write_text(path, text)


def write_ci_reports(outcome: ScanResult | DiffResult, junit_path: str | os.PathLike | None = None,
                     markdown_path: str | os.PathLike | None = None) -> list[str]:
    """Write the JUnit and Markdown files of a scan result or a diff.

    Args:
        outcome: a ``ScanResult`` (judged by ``result.gate``) or a ``DiffResult`` (by ``diff.gate``).
        junit_path: JUnit XML destination, or None.
        markdown_path: Markdown destination, or None.

    Returns:
        The lines that say where (``JUnit report: PATH``), to print once the files are in place.
    """
    from ..compare import DiffResult
    from . import junit, markdown
    from .files import atomic_write_bytes
    from .text import visible
    is_diff = isinstance(outcome, DiffResult)
    written = []
    if junit_path is not None:
        document = junit.diff_junit(outcome) if is_diff else junit.scan_junit(outcome)  # type: ignore[arg-type]
        atomic_write_bytes(Path(junit_path), document)
        written.append(f"JUnit report: {visible(junit_path)}")
    if markdown_path is not None:
        write_markdown(markdown_path, markdown.diff_summary(outcome) if is_diff  # type: ignore[arg-type]
                       else markdown.scan_summary(outcome))  # type: ignore[arg-type]
        written.append(f"Markdown summary: {visible(markdown_path)}")
    return written


__all__ = ["write_ci_reports", "write_markdown"]
