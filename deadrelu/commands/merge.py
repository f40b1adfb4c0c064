"""``deadrelu merge``: combine ``--shard I/N`` scans into the result of the whole scan."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def register(app: typer.Typer) -> None:
    """Add the ``merge`` command to ``app``."""

    @app.command()
    def merge(
        parts: Annotated[list[Path], typer.Argument(metavar="PART.json...", show_default=False,
                                                    help="JSON reports of 'deadrelu scan ... --shard I/N --json "
                                                         "PART.json', one per shard.")],
        json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the merged JSON report here "
                                                                         "('-' for stdout).")] = None,
        dead_threshold: Annotated[Optional[float], typer.Option(help="Dead when the active rate is <= this. "
                                                                     "(default: the first part's)")] = None,
        tau: Annotated[Optional[float], typer.Option(help="ReDo dormancy threshold. (default: the first "
                                                          "part's)")] = None,
        saturation: Annotated[Optional[float], typer.Option(help="Share at the floor/bound that makes a unit "
                                                                 "saturated. (default: the first part's)")] = None,
        max_dead_ratio: Annotated[Optional[float], typer.Option(help="Gate: fail (exit 1) when dead units over "
                                                                     "all units are above this ratio.")] = None,
        max_layer_dead_ratio: Annotated[Optional[float], typer.Option(help="Gate: fail when any site's dead "
                                                                           "ratio is above this.")] = None,
        allow_missing: Annotated[bool, typer.Option(
            "--allow-missing", help="Merge the shards given even when some are missing (marked partial).")] = False,
        html_path: cli.HtmlOption = None,
        png_dir: cli.PngDirOption = None,
        out_dir: cli.OutOption = None,
        show_units: Annotated[bool, typer.Option("--show-units", help="List dead/saturated unit indices.")] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the verdict and gate lines.")] = False,
        debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    ) -> None:
        """Merge the JSON reports of shards of one scan into the report of the whole scan.

        Verdicts are judged again on the merged statistics. Refuses (exit 2) parts of
        different models, data or settings, and overlapping or missing shards.
        """
        with cli.error_exit(debug):
            from ..judge.gate import check_gate
            from ..judge.suggestions import suggest
            from ..merge import merge_results

            cli._check_output(json_path)
            results = [cli._read_result(path) for path in parts]
            thresholds = {"dead_threshold": dead_threshold, "tau": tau, "saturation": saturation}
            result = merge_results(results, labels=[str(p) for p in parts], allow_missing=allow_missing,
                                   thresholds={k: v for k, v in thresholds.items() if v is not None})
            result = result.with_suggestions(suggest(result))
            if max_dead_ratio is not None or max_layer_dead_ratio is not None:
                result = result.with_gate(check_gate(result, max_dead_ratio=max_dead_ratio,
                                                     max_layer_dead_ratio=max_layer_dead_ratio))
            cli._emit(result, json_path, quiet, show_units)
            cli._write_reports(result, html_path, png_dir, cli._out_folder(out_dir, "merged"), json_path == Path("-"))
        gate_failed = result.gate is not None and not result.gate.passed
        raise typer.Exit(cli.EXIT_GATE_FAILED if gate_failed else cli.EXIT_OK)


# Imported last: cli imports this module at its own end, and typer reads the option
# annotations above (strings naming cli.*) only when the app runs.
from .. import cli  # noqa: E402
