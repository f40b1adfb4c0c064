"""Report files: where a scan's outputs go, checked before the scan, and writing them.

``ReportTargets`` names every file and folder a command will write. ``check`` runs
before any work: each target must be writable, no target may be another target, and no
target may be one of the command's inputs (``render.outputs.check_outputs``: a ``--json
model.pt`` would replace the model; a folder input stands for every file in it; symlinks
and hard links count). ``write_reports`` then renders and writes them together
(``render.files.written_together``); notebook users call it too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import OutputError
from .outputs import InputSet, check_outputs
from .text import visible

if TYPE_CHECKING:
    from ..result import ScanResult

#: file names a plot folder receives (``write_pngs``)
PLOT_FILES = ("dead_ratio_by_layer.png", "active_rate_histogram.png", "unit_map_*.png")
#: file names a trend's plot folder receives (``render.trend.write_pngs``)
TREND_PLOT_FILES = ("trend_heatmap.png", "trend_worst_sites.png")
#: what ``out`` receives
OUT_JSON, OUT_HTML, OUT_PLOTS = "result.json", "report.html", "plots"


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


@dataclass(frozen=True)
class ReportTargets:
    """The outputs of one command.

    Attributes:
        json: the JSON report (``-`` means stdout and is not a file).
        html: the HTML report.
        png_dir: a folder for PNG plots.
        out: a folder receiving ``result.json``, ``report.html`` and ``plots/``.
        files: further named files (``{"--junit": path}``) written by the command.
        plot_files: the names (globs) of the files a plot folder receives.
    """

    json: Path | None = None
    html: Path | None = None
    png_dir: Path | None = None
    out: Path | None = None
    files: Mapping[str, Path | None] | None = None
    plot_files: tuple[str, ...] = PLOT_FILES

    def file_targets(self) -> list[tuple[str, Path]]:
        """``(option, path)`` of every file to be written."""
        found: list[tuple[str, Path]] = []
        if self.json is not None and str(self.json) != "-":
            found.append(("--json", self.json))
        if self.html is not None:
            found.append(("--html", self.html))
        if self.out is not None:
            found += [("--out", self.out / OUT_JSON), ("--out", self.out / OUT_HTML)]
        for option, path in (self.files or {}).items():
            if path is not None and str(path) != "-":
                found.append((option, path))
        return found

    def folder_targets(self) -> list[tuple[str, Path]]:
        """``(option, folder)`` of every plot folder to be written into."""
        found = []
        if self.png_dir is not None:
            found.append(("--png-dir", self.png_dir))
        if self.out is not None:
            found.append(("--out", self.out / OUT_PLOTS))
        return found

    def check(self, inputs: InputSet | Mapping[str, Path | Iterable[Path] | None] | None = None) -> None:
        """Refuse, before any work, outputs that cannot be written or would overwrite something.

        Args:
            inputs: what the command reads: an ``InputSet``, or ``{"MODEL": path, "--import": [paths]}``
                (a folder stands for every file in it).

        Raises:
            OutputError: a target is unwritable, is an input (through a symlink or a hard link too),
                is another target, or a plot folder would overwrite an input.
        """
        files, folders = self.file_targets(), self.folder_targets()
        for option, path in files:
            _check_file_target(option, path)
        for option, folder in folders:
            _check_folder_target(option, folder)
        check_outputs(files, inputs, plot_folders=[(option, folder, self.plot_files) for option, folder in folders])
        seen: dict[Path, tuple[str, Path]] = {}
        for option, path in files + folders:
            real = _real(path)
            if real in seen:
                other_option, other = seen[real]
                raise OutputError(f"{option} {visible(str(path))} and {other_option} {visible(str(other))} are the "
                                  "same path; one report would overwrite the other",
                                  hint="give each output its own path")
            seen[real] = (option, path)


def _nearest_existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _check_writable_folder(option: str, path: Path, folder: Path) -> None:
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise OutputError(f"cannot write {visible(str(path))}: {visible(str(existing))} is a file, "
                          "not a folder", hint="choose an output path in a folder you can write")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {visible(str(path))}: no permission to write in "
                          f"{visible(str(existing))}", hint="choose an output path in a folder you can write")


def _check_file_target(option: str, path: Path) -> None:
    if path.is_dir():
        raise OutputError(f"cannot write {visible(str(path))}: it is a folder",
                          hint="give a file path, e.g. reports/scan.json")
    _check_writable_folder(option, path, path.parent)


def _check_folder_target(option: str, folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"cannot write {option} {visible(str(folder))}: it is a file, not a folder",
                          hint="give a folder path (it is created if missing)")
    _check_writable_folder(option, folder, folder)


def write_reports(result: ScanResult, targets: ReportTargets) -> list[tuple[str, Path, int]]:
    """Render and write the HTML report, PNG plots and (for ``out``) all of them plus the JSON.

    ``targets.json`` is not written here (the caller decides between a file and stdout);
    ``targets.files`` are the caller's too.

    Args:
        result: the scan.
        targets: where to write.

    Returns:
        ``(what, path, files)`` for every file or folder written, e.g. ``("HTML report", path, 1)``
        or ``("PNG plots", folder, 3)``.

    Raises:
        OutputError: a file could not be written.
    """
    from . import html as html_render
    from . import plots
    from .files import atomic_write_text, written_together
    written: list[tuple[str, Path, int]] = []
    html_targets = [path for path in (targets.html, targets.out / OUT_HTML if targets.out else None) if path]
    # All or nothing: the files are renamed into place together at the end (or joined to the
    # caller's batch), so an interruption never leaves a new HTML beside an old JSON.
    with written_together():
        if html_targets:
            page = html_render.report(result)
            for path in html_targets:
                atomic_write_text(path, page)
                written.append(("HTML report", path, 1))
        for _option, folder in targets.folder_targets():
            written.append(("PNG plots", folder, len(plots.write_pngs(result, folder))))
        if targets.out is not None:
            path = targets.out / OUT_JSON
            result.to_json(path)
            written.append(("JSON report", path, 1))
    return written


__all__ = ["ReportTargets", "write_reports", "PLOT_FILES", "TREND_PLOT_FILES"]
