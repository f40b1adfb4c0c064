"""``deadrelu trend`` and ``deadrelu diff``.

Thin command bodies: parse, call the library (``deadrelu.trend``, ``deadrelu.compare``),
render, exit. Nothing here imports torch at import time; ``diff`` never needs it.
Consoles and error lines come from ``commands.common``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from .common import EXIT_GATE_FAILED, EXIT_OK, error_exit, say, stderr, stdout, terminal_width
from .options import (BatchSizeOption, ConfigOption, DeadThresholdOption, DebugOption, DeviceOption, ExcludeOption,
                      InputFlags, JunitOption, LayersOption, LimitOption, MarkdownOption, TauOption, input_flags)

if TYPE_CHECKING:
    from ..history import Trend
    from ..load.spec import Inputs
    from ..result import ScanResult
    from ..settings import ScanSettings


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
    from ..render.ci import write_ci_reports
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


@input_flags(positionals=False)
def trend(
    paths: Annotated[list[Path], typer.Argument(
        metavar="CKPT... DATA | LOG.jsonl", show_default=False,
        help="Checkpoints (files or Hugging Face folders in the order given; a folder or a quoted glob sorted by the "
             "step number in the names), then the data file (none with --data); or one monitor log "
             "(deadrelu.jsonl). With --model, each CKPT is the weights for the factory's model.")],
    inputs: InputFlags,  # every flag of the inputs but MODEL and DATA (commands/options.py: INPUT_FLAGS)
    batch_size: BatchSizeOption = None,
    limit: LimitOption = None,
    device: DeviceOption = "auto",
    dead_threshold: DeadThresholdOption = None,
    tau: TauOption = None,
    layers: LayersOption = None,
    exclude: ExcludeOption = None,
    json_path: Annotated[Optional[Path], typer.Option(
        "--json", metavar="FILE", rich_help_panel="Output",
        help="Write {\"points\": \\[scan result, ...]} here (a monitor log: its records).")] = None,
    html_path: Annotated[Optional[Path], typer.Option(
        "--html", metavar="FILE", rich_help_panel="Output",
        help="Write an HTML page with the heat map and the worst sites' curves.")] = None,
    png_dir: Annotated[Optional[Path], typer.Option(
        "--png-dir", metavar="DIR", rich_help_panel="Output",
        help="Write trend_heatmap.png and trend_worst_sites.png here.")] = None,
    config: ConfigOption = None,
    debug: DebugOption = False,
) -> None:
    """Dead units across checkpoints (scanned over the same DATA) or across a monitor log's records."""
    from ..errors import ConfigError
    from ..render.reports import TREND_PLOT_FILES, ReportTargets
    with error_exit(debug):
        targets = ReportTargets(json=json_path, html=html_path, png_dir=png_dir, plot_files=TREND_PLOT_FILES)
        if len(paths) == 1 and _is_log(paths[0]):
            targets.check({"LOG": paths[0]})
            points, trend_data = _trend_of_log(paths[0])
        else:
            if any(_is_log(path) for path in paths[:-1]):  # a last .jsonl after checkpoints is text DATA
                raise ConfigError("a monitor log (.jsonl) is rendered on its own",
                                  hint="deadrelu trend run/deadrelu.jsonl, or deadrelu trend CKPT... DATA")
            described = inputs.inputs(config)
            if described.data_factory is None and described.data is None:
                if len(paths) < 2:
                    raise ConfigError(f"expected checkpoints then DATA, got one path: {paths[0]}",
                                      hint="deadrelu trend ckpt_100.pt ckpt_200.pt data.npy --arch pkg.module:Factory")
                described, paths = described.with_values(data=paths[-1]), paths[:-1]
            from ..settings import build_settings
            from ..trend import checkpoint_files
            files, notes = checkpoint_files(paths)
            targets.check({"CKPT": files, **described.reads(), "--config": config})
            settings = build_settings(config=config, batch_size=batch_size, limit=limit, device=device,
                                      dead_threshold=dead_threshold, tau=tau, layers=tuple(layers or ()),
                                      exclude=tuple(exclude or ()))
            points, trend_data = _trend_of_checkpoints(files, notes, described, settings)
        _emit_trend(trend_data, points, json_path, html_path, png_dir)
    raise typer.Exit(EXIT_OK)


def _trend_of_log(path: Path) -> tuple[list[dict[str, Any]], Trend]:
    from ..errors import DataLoadError
    from ..history import Trend, read_log
    records = read_log(path)
    if not records:
        raise DataLoadError(f"{path}: the monitor log holds no record yet",
                            hint="records are written at each multiple of Monitor(every=...)")
    return records, Trend.from_records(records)


def _trend_of_checkpoints(files: list[Path], notes: list[str], inputs: Inputs,
                          settings: ScanSettings) -> tuple[list[dict[str, Any]], Trend]:
    from ..history import Trend
    from ..render.text import visible
    from ..result import _json_clean
    from ..trend import scan_checkpoints
    for note in notes:
        stderr.print(f"note: {note}", markup=False, soft_wrap=True)

    def progress(index: int, path: Path, result: ScanResult) -> None:
        if stderr.is_terminal:
            stderr.print(f"scanned {index + 1}/{len(files)}: {visible(path)} ({result.summary.dead} dead)",
                         markup=False)

    results = scan_checkpoints(files, inputs=inputs, settings=settings, on_scanned=progress)
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
