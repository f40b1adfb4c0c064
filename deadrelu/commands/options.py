"""Options several commands share, declared once: the help panels and the typer option types.

A command that takes ``--html`` or ``--max-dead-ratio`` uses the alias here, so the flag,
its metavar, its panel and its help read the same in every ``--help``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..judge.overall import FailOn

#: what ``--help`` groups options under
MODEL, DATA, CAPTURE, THRESHOLDS, GATE, OUTPUT, RUN = "Model", "Data", "Capture", "Thresholds", "Gate", "Output", "Run"

JsonOption = Annotated[Optional[Path], typer.Option("--json", metavar="FILE", rich_help_panel=OUTPUT,
                                                     help="Write the JSON report here ('-' for stdout).")]
HtmlOption = Annotated[Optional[Path], typer.Option("--html", metavar="FILE", rich_help_panel=OUTPUT,
                                                     help="Write a self-contained HTML report here.")]
PngDirOption = Annotated[Optional[Path], typer.Option("--png-dir", metavar="DIR", rich_help_panel=OUTPUT,
                                                      help="Write PNG plots into this folder.")]
OutOption = Annotated[Optional[Path], typer.Option("--out", metavar="DIR", rich_help_panel=OUTPUT,
                                                   help="Write result.json, report.html and plots/*.png into this "
                                                        "folder ('auto': reports/<model-stem>-<timestamp>/).")]
ShowUnitsOption = Annotated[bool, typer.Option("--show-units", rich_help_panel=OUTPUT,
                                               help="List dead/saturated unit indices.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", rich_help_panel=OUTPUT,
                                           help="Only the verdict and gate lines.")]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", rich_help_panel=OUTPUT,
                                             help="Every site, and each suggestion's evidence, action and code.")]
DebugOption = Annotated[bool, typer.Option("--debug", rich_help_panel=RUN, help="Show tracebacks.")]
MaxDeadRatioOption = Annotated[Optional[float], typer.Option(
    metavar="RATIO", rich_help_panel=GATE, help="Fail (exit 1) when dead units over all units are above this ratio.")]
MaxLayerDeadRatioOption = Annotated[Optional[float], typer.Option(
    metavar="RATIO", rich_help_panel=GATE, help="Fail (exit 1) when any site's dead ratio is above this.")]
FailOnOption = Annotated[FailOn, typer.Option(
    "--fail-on", rich_help_panel=GATE, show_default=True,
    help="Exit 1 when the verdict is FAIL (fail) or WARN or FAIL (warn); never: only a failed gate exits 1.")]
JunitOption = Annotated[Optional[Path], typer.Option(
    "--junit", metavar="FILE", rich_help_panel=OUTPUT,
    help="Write JUnit XML here: one testcase per site, a failure for each site the gate fails.")]
MarkdownOption = Annotated[Optional[Path], typer.Option(
    "--markdown", metavar="FILE", rich_help_panel=OUTPUT,
    help="Write a short Markdown summary here (appended when it is $GITHUB_STEP_SUMMARY).")]

__all__ = ["MODEL", "DATA", "CAPTURE", "THRESHOLDS", "GATE", "OUTPUT", "RUN", "JsonOption", "HtmlOption",
           "PngDirOption", "OutOption", "ShowUnitsOption", "QuietOption", "VerboseOption", "DebugOption",
           "MaxDeadRatioOption", "MaxLayerDeadRatioOption", "FailOnOption", "FailOn", "JunitOption", "MarkdownOption"]
