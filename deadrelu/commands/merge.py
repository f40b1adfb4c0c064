"""``deadrelu merge``: combine ``--shard I/N`` scans into the result of the whole scan.

Exit codes: 0 merged (gate passed or none); 1 the gate failed; 2 parts that are not the
shards of one scan, or a file that cannot be read or written. Needs no torch.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import EXIT_GATE_FAILED, EXIT_OK, error_exit, stderr, stdout, terminal_width
from .options import (THRESHOLDS, DebugOption, HtmlOption, MaxDeadRatioOption, MaxLayerDeadRatioOption,
                      PngDirOption, QuietOption, ShowUnitsOption)



def merge(
    parts: Annotated[list[Path], typer.Argument(
        metavar="PART.json...", show_default=False,
        help="JSON reports of 'deadrelu scan ... --shard I/N --json PART.json', one per shard.")],
    json_path: Annotated[Optional[Path], typer.Option(
        "--json", metavar="FILE", rich_help_panel="Output",
        help="Write the merged JSON report here ('-' for stdout).")] = None,
    dead_threshold: Annotated[Optional[float], typer.Option(
        metavar="RATE", rich_help_panel=THRESHOLDS, show_default="the first part's",
        help="Dead when the active rate is <= this.")] = None,
    tau: Annotated[Optional[float], typer.Option(
        metavar="TAU", rich_help_panel=THRESHOLDS, show_default="the first part's",
        help="ReDo dormancy threshold.")] = None,
    saturation: Annotated[Optional[float], typer.Option(
        metavar="SHARE", rich_help_panel=THRESHOLDS, show_default="the first part's",
        help="Share of observations at the floor/bound that makes a unit saturated.")] = None,
    max_dead_ratio: MaxDeadRatioOption = None,
    max_layer_dead_ratio: MaxLayerDeadRatioOption = None,
    allow_missing: Annotated[bool, typer.Option(
        "--allow-missing", help="Merge the shards given even when some are missing (the result is marked "
                                "partial).")] = False,
    html_path: HtmlOption = None,
    png_dir: PngDirOption = None,
    show_units: ShowUnitsOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Merge the JSON reports of the shards of one scan into the report of the whole scan.

    Verdicts are judged again on the merged statistics. Refuses (exit 2) parts of
    different models, data or settings, and overlapping or missing shards.
    """
    with error_exit(debug):
        from ..judge.gate import check_gate
        from ..judge.suggestions import suggest
        from ..merge import merge_results
        from ..render import console as console_render
        from ..render.files import written_together
        from ..render.reports import ReportTargets, write_reports
        from ..result import ScanResult

        targets = ReportTargets(json=json_path, html=html_path, png_dir=png_dir)
        targets.check({"PART.json": parts})
        thresholds = {"dead_threshold": dead_threshold, "tau": tau, "saturation": saturation}
        result = merge_results([ScanResult.from_json(path) for path in parts], labels=[str(p) for p in parts],
                               thresholds={k: v for k, v in thresholds.items() if v is not None},
                               allow_missing=allow_missing)
        result = result.with_suggestions(suggest(result))
        if max_dead_ratio is not None or max_layer_dead_ratio is not None:
            result = result.with_gate(check_gate(result, max_dead_ratio, max_layer_dead_ratio))
        to_stdout = json_path == Path("-")
        if to_stdout:
            sys.stdout.write(result.to_json() + "\n")
        else:
            stdout.print(console_render.verdict_line(result) if quiet
                         else console_render.report(result, show_units=show_units, width=terminal_width()), soft_wrap=quiet)
        gate = console_render.gate_lines(result)
        if gate is not None and (quiet or to_stdout):
            (stderr if to_stdout else stdout).print(gate)
        with written_together():  # every file lands at the end, or none does
            if json_path is not None and not to_stdout:
                result.to_json(json_path)
            written = [(what, path) for what, path, _files in write_reports(result, targets)]
        if json_path is not None and not to_stdout:
            written.insert(0, ("JSON report", json_path))
        if not quiet:
            for what, path in written:
                (stderr if to_stdout else stdout).print(f"{what}: {path}", markup=False, soft_wrap=True)
    raise typer.Exit(EXIT_GATE_FAILED if result.gate is not None and not result.gate.passed else EXIT_OK)


def register(app: typer.Typer) -> None:
    """Add ``merge`` to the ``deadrelu`` command line."""
    app.command()(merge)


__all__ = ["register", "merge"]
