"""``deadrelu trend`` and ``deadrelu diff``, and the CI files (``--junit``, ``--markdown``) of scan and diff.

Thin command bodies: parse, call the library (``deadrelu.trend``, ``deadrelu.compare``),
render, exit. Nothing here imports torch at import time; ``diff`` never needs it.
Consoles and error lines come from ``commands.common``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from .common import EXIT_GATE_FAILED, EXIT_OK, error_exit, stderr, stdout, terminal_width
from .options import DebugOption, JunitOption, MarkdownOption

if TYPE_CHECKING:
    from ..compare import DiffResult
    from ..history import Trend
    from ..result import ScanResult



# -- CI files -------------------------------------------------------------------------------

def _write_markdown(path: Path, text: str) -> None:
    from ..render.files import append_text, atomic_write_text
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary and Path(summary).resolve() == path.resolve():
        # GitHub's step summary collects what every command of the step appends.
        append_text(path, text)
        return
    atomic_write_text(path, text)


def write_ci_reports(outcome: ScanResult | DiffResult, junit_path: Path | None,
                     markdown_path: Path | None) -> list[str]:
    """Write the JUnit and Markdown files of a scan result or a diff (inside the caller's
    ``written_together`` they land with the other reports).

    Args:
        outcome: a ``ScanResult`` (judged by ``result.gate``) or a ``DiffResult`` (by ``diff.gate``).
        junit_path: JUnit XML destination, or None.
        markdown_path: Markdown destination, or None.

    Returns:
        The lines that say where (``JUnit report: PATH``), to print once the files are in place.
    """
    from ..compare import DiffResult
    from ..render import junit, markdown
    from ..render.files import atomic_write_bytes
    from ..render.text import visible
    is_diff = isinstance(outcome, DiffResult)
    written = []
    if junit_path is not None:
        document = junit.diff_junit(outcome) if is_diff else junit.scan_junit(outcome)  # type: ignore[arg-type]
        atomic_write_bytes(junit_path, document)
        written.append(f"JUnit report: {visible(junit_path)}")
    if markdown_path is not None:
        _write_markdown(markdown_path, markdown.diff_summary(outcome) if is_diff  # type: ignore[arg-type]
                        else markdown.scan_summary(outcome))  # type: ignore[arg-type]
        written.append(f"Markdown summary: {visible(markdown_path)}")
    return written


def say(lines: list[str], to_stderr: bool = False) -> None:
    """Print "written" lines (on stderr when stdout carries JSON)."""
    for line in lines:
        (stderr if to_stderr else stdout).print(line, markup=False, soft_wrap=True)


# -- diff -----------------------------------------------------------------------------------

def diff(
    base_path: Annotated[Path, typer.Argument(metavar="BASE.json", help="The baseline scan's JSON report.")],
    new_path: Annotated[Path, typer.Argument(metavar="NEW.json", help="The new scan's JSON report.")],
    max_new_dead: Annotated[Optional[int], typer.Option(
        min=0, metavar="N", rich_help_panel="Gate",
        help="Fail (exit 1) when more units than this, over all sites, are dead in NEW but not in BASE.")] = None,
    max_dead_ratio_increase: Annotated[Optional[float], typer.Option(
        metavar="RATIO", rich_help_panel="Gate",
        help="Fail (exit 1) when a site's dead ratio rose by more than this (0.05 = 5 points).")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Compare results of different models or settings (the sites they share).")] = False,
    json_path: Annotated[Optional[Path], typer.Option(
        "--json", metavar="FILE", rich_help_panel="Output",
        help="Write the diff as JSON here ('-' for stdout).")] = None,
    junit_path: JunitOption = None,
    markdown_path: MarkdownOption = None,
    debug: DebugOption = False,
) -> None:
    """Compare two scan results site by site: dead counts, newly dead and revived units; a CI gate.

    Exit 0: gate passed (or no limit given); 1: gate failed; 2: not comparable (see --force).
    """
    from ..compare import check_diff_gate
    from ..compare import diff as compare
    from ..render import compare as compare_render
    from ..render.reports import ReportTargets
    from ..render.files import atomic_write_text, written_together
    from ..render.text import visible
    from ..result import ScanResult
    with error_exit(debug):
        ReportTargets(json=json_path, files={"--junit": junit_path, "--markdown": markdown_path}).check(
            {"BASE.json": base_path, "NEW.json": new_path})
        result = compare(ScanResult.from_json(base_path), ScanResult.from_json(new_path), force=force)
        if max_new_dead is not None or max_dead_ratio_increase is not None:
            result = result.with_gate(check_diff_gate(result, max_new_dead, max_dead_ratio_increase))
        to_stdout_json = json_path == Path("-")
        if to_stdout_json:
            sys.stdout.write(json.dumps(result.to_dict(), indent=1) + "\n")
            gate = compare_render.gate_text(result)
            if gate is not None:
                stderr.print(gate)
        else:
            stdout.print(compare_render.report(result, width=terminal_width()))
        written = []
        with written_together():
            if json_path is not None and not to_stdout_json:
                atomic_write_text(json_path, json.dumps(result.to_dict(), indent=1) + "\n")
                written.append(f"JSON diff: {visible(json_path)}")
            written += write_ci_reports(result, junit_path, markdown_path)
        say(written, to_stdout_json)
    raise typer.Exit(EXIT_GATE_FAILED if result.gate is not None and not result.gate.passed else EXIT_OK)


# -- trend ----------------------------------------------------------------------------------

def _is_log(path: Path) -> bool:
    return path.suffix.lower() in (".jsonl", ".ndjson")


def trend(
    paths: Annotated[list[Path], typer.Argument(
        metavar="CKPT... DATA | LOG.jsonl", show_default=False,
        help="Checkpoints (files in the order given; a folder or a quoted glob sorted by the step number in the "
             "names), then the data file; or one monitor log (deadrelu.jsonl).")],
    arch: Annotated[Optional[str], typer.Option(
        metavar="SPEC", rich_help_panel="Model",
        help="Architecture for weight-only checkpoints: package.module:Factory or path/to/file.py:Factory.")] = None,
    arch_kwargs: Annotated[Optional[str], typer.Option(
        metavar="JSON", rich_help_panel="Model", help="Keyword arguments for --arch, as JSON.")] = None,
    allow_pickle: Annotated[bool, typer.Option(
        "--allow-pickle", rich_help_panel="Model", help="Allow the full unpickler (files you trust only).")] = False,
    import_files: Annotated[Optional[list[Path]], typer.Option(
        "--import", metavar="FILE", rich_help_panel="Model",
        help="Import this Python file before unpickling (repeatable).")] = None,
    key: Annotated[Optional[list[str]], typer.Option(
        metavar="NAME", rich_help_panel="Data", help="Array in an .npz or a dict .pt (repeatable).")] = None,
    input_key: Annotated[Optional[list[str]], typer.Option(
        metavar="NAME", rich_help_panel="Data", help="Entry of dict batches that is the model input.")] = None,
    scale: Annotated[Optional[float], typer.Option(
        metavar="X", rich_help_panel="Data", help="Multiply inputs by this.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        metavar="N", rich_help_panel="Data", show_default="256", help="Samples per forward pass.")] = None,
    limit: Annotated[Optional[int], typer.Option(
        metavar="N", rich_help_panel="Data", show_default="all", help="Scan at most N samples.")] = None,
    device: Annotated[str, typer.Option(metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    dead_threshold: Annotated[Optional[float], typer.Option(
        metavar="RATE", rich_help_panel="Thresholds", show_default="0",
        help="Dead when the active rate is <= this.")] = None,
    tau: Annotated[Optional[float], typer.Option(
        metavar="TAU", rich_help_panel="Thresholds", show_default="0.1", help="ReDo dormancy threshold.")] = None,
    layers: Annotated[Optional[list[str]], typer.Option(
        "--layers", metavar="GLOB", rich_help_panel="Capture",
        help="Only sites matching this glob (repeatable).")] = None,
    exclude: Annotated[Optional[list[str]], typer.Option(
        "--exclude", metavar="GLOB", rich_help_panel="Capture",
        help="Skip sites matching this glob (repeatable).")] = None,
    json_path: Annotated[Optional[Path], typer.Option(
        "--json", metavar="FILE", rich_help_panel="Output",
        help="Write {\"points\": \\[scan result, ...]} here (a monitor log: its records).")] = None,
    html_path: Annotated[Optional[Path], typer.Option(
        "--html", metavar="FILE", rich_help_panel="Output",
        help="Write an HTML page with the heat map and the worst sites' curves.")] = None,
    png_dir: Annotated[Optional[Path], typer.Option(
        "--png-dir", metavar="DIR", rich_help_panel="Output",
        help="Write trend_heatmap.png and trend_worst_sites.png here.")] = None,
    debug: DebugOption = False,
) -> None:
    """Dead units across checkpoints (scanned over the same DATA) or across a monitor log's records."""
    from ..errors import ConfigError
    from ..render.reports import TREND_PLOT_FILES, ReportTargets
    with error_exit(debug):
        ReportTargets(json=json_path, html=html_path, png_dir=png_dir, plot_files=TREND_PLOT_FILES).check(
            _trend_inputs(paths, arch, import_files))
        if len(paths) == 1 and _is_log(paths[0]):
            points, trend_data = _trend_of_log(paths[0])
        else:
            if any(_is_log(path) for path in paths):
                raise ConfigError("a monitor log (.jsonl) is rendered on its own",
                                  hint="deadrelu trend run/deadrelu.jsonl, or deadrelu trend CKPT... DATA")
            if len(paths) < 2:
                raise ConfigError(f"expected checkpoints then DATA, got one path: {paths[0]}",
                                  hint="deadrelu trend ckpt_100.pt ckpt_200.pt data.npy --arch pkg.module:Factory")
            values = {"batch_size": batch_size, "limit": limit, "device": device, "dead_threshold": dead_threshold,
                      "tau": tau, "layers": tuple(layers or ()) or None, "exclude": tuple(exclude or ()) or None}
            points, trend_data = _trend_of_checkpoints(
                paths[:-1], paths[-1], arch=arch, arch_kwargs=arch_kwargs, allow_pickle=allow_pickle,
                imports=import_files or (), key=key or None, input_key=input_key or None, scale=scale,
                settings={k: v for k, v in values.items() if v is not None})
        _emit_trend(trend_data, points, json_path, html_path, png_dir)
    raise typer.Exit(EXIT_OK)


def _trend_inputs(paths: list[Path], arch: str | None, import_files: list[Path] | None) -> dict[str, Any]:
    """What trend reads: the monitor log, or each checkpoint (folders and globs expanded) and the data."""
    from .common import spec_file
    if len(paths) == 1 and _is_log(paths[0]):
        return {"LOG": paths[0]}
    from ..trend import checkpoint_files
    checkpoints = checkpoint_files(paths[:-1])[0] if len(paths) > 1 else []
    return {"CKPT": checkpoints, "DATA": paths[-1], "--arch": spec_file(arch), "--import": import_files}


def _trend_of_log(path: Path) -> tuple[list[dict[str, Any]], Trend]:
    from ..errors import DataLoadError
    from ..history import Trend, read_log
    records = read_log(path)
    if not records:
        raise DataLoadError(f"{path}: the monitor log holds no record yet",
                            hint="records are written at each multiple of Monitor(every=...)")
    return records, Trend.from_records(records)


def _trend_of_checkpoints(checkpoints: list[Path], data: Path, *, settings: dict[str, Any],
                          **options: Any) -> tuple[list[dict[str, Any]], Trend]:
    from ..history import Trend
    from ..load.model import parse_kwargs
    from ..render.text import visible
    from ..result import _json_clean
    from ..trend import checkpoint_files, scan_checkpoints
    files, notes = checkpoint_files(checkpoints)
    for note in notes:
        stderr.print(f"note: {note}", markup=False, soft_wrap=True)

    def progress(index: int, path: Path, result: ScanResult) -> None:
        if stderr.is_terminal:
            stderr.print(f"scanned {index + 1}/{len(files)}: {visible(path)} ({result.summary.dead} dead)",
                         markup=False)

    options["arch_kwargs"] = parse_kwargs(options.get("arch_kwargs"))
    results = scan_checkpoints(files, data, on_scanned=progress, **options, **settings)
    points = [_json_clean(result.to_dict()) for result in results]
    return points, Trend.from_results(results, [str(path) for path in files])


def _emit_trend(trend_data: Trend, points: list[dict[str, Any]], json_path: Path | None, html_path: Path | None,
                png_dir: Path | None) -> None:
    from ..render import trend as trend_render
    from ..render.files import atomic_write_text, written_together
    from ..render.text import visible
    stdout.print(trend_render.trend_table(trend_data, width=min(terminal_width() or 200, 200)))
    written = []
    with written_together():
        if json_path is not None:
            atomic_write_text(json_path, json.dumps({"points": points}, indent=1, allow_nan=False) + "\n")
            written.append(f"JSON trend: {visible(json_path)}")
        if html_path is not None:
            trend_render.write_html(trend_data, html_path)
            written.append(f"HTML trend: {visible(html_path)}")
        if png_dir is not None:
            paths = trend_render.write_pngs(trend_data, png_dir)
            written.append(f"PNG plots: {visible(png_dir)} ({len(paths)} files)")
    say(written)


def register(app: typer.Typer) -> None:
    """Add ``trend`` and ``diff`` to the deadrelu CLI."""
    app.command("trend")(trend)
    app.command("diff")(diff)
