"""The command line: parse, call the library, render, map errors to exit codes.

Exit codes: 0 scan done and gate passed (or no gate); 1 gate failed, or the verdict is at
least as bad as ``--fail-on``; 2 bad usage or input; 3 a bug in deadrelu (the traceback is
written to a file whose path the error line gives); 130 interrupted. Exit 1 means only "the
model failed the check asked for", so CI never mistakes a crash for a verdict.

Only typer, rich and the torch-free parts of deadrelu are imported at start-up; the
model, data and scan modules (and torch with them) are imported by the commands that
need them, so ``deadrelu --help``, ``version`` and ``report`` start at once.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from . import __version__
# Shared with the command groups in deadrelu/commands (which must not import this module).
from .commands.options import (CAPTURE, DATA, RUN, THRESHOLDS, BatchSizeOption, ConfigOption, DeadThresholdOption,
                               DebugOption, DeviceOption, ExcludeOption, FailOn, FailOnOption, HtmlOption,
                               InputFlags, JsonOption, JunitOption, LayersOption, LimitOption, MarkdownOption,
                               MaxDeadRatioOption, MaxLayerDeadRatioOption, OutOption, PngDirOption, QuietOption,
                               ShowUnitsOption, TauOption, VerboseOption, input_flags)
from .commands.common import EXIT_GATE_FAILED, EXIT_INTERRUPTED, EXIT_OK, error_exit, say, stderr, stdout
from .commands.helpstyle import App, HelpGroup
from .commands.options import (FunctionalOption, MlflowOption, NoFunctionalOption, StepOption, TensorboardOption,
                               WandbOption)
from .render import console as console_render
from .render.reports import ReportTargets, write_reports
from .settings import CompileMode, FunctionalCapture, Granularity, NonFinitePolicy, ScanSettings, Thresholds

app = App(no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode="rich", cls=HelpGroup,
          help="Find dead, saturated and dormant ReLU-family units in a PyTorch model, on your data.")


class _ProgressReporter:
    """A rich progress bar on stderr (samples, samples/s, ETA), only on a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and stderr.is_terminal
        self._progress: Any = None
        self._task: Any = None
        self._started = time.perf_counter()

    def __enter__(self) -> _ProgressReporter:
        if self.enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            self._progress = Progress(TextColumn("scanning"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                                      TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                      console=stderr, transient=True)
            self._progress.__enter__()
            self._task = self._progress.add_task("scan", total=None, rate="")
        return self

    def __call__(self, done: int, total: int | None) -> None:
        if self._progress is not None:
            elapsed = max(time.perf_counter() - self._started, 1e-9)
            self._progress.update(self._task, completed=done, total=total, rate=f"{done / elapsed:,.0f} samples/s")

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)


_DEFAULTS = ScanSettings()
_THRESHOLDS = Thresholds()


@app.command()
@input_flags()
def scan(
    inputs: InputFlags,  # MODEL DATA and every flag of the inputs (commands/options.py: INPUT_FLAGS)
    limit: LimitOption = None,
    shard: Annotated[Optional[str], typer.Option(
        metavar="I/N", rich_help_panel=DATA, show_default="all",
        help="Scan only shard I of N (contiguous blocks of whole batches); join the parts with "
             "'deadrelu merge'.")] = None,
    nonfinite: Annotated[Optional[NonFinitePolicy], typer.Option(
        metavar="POLICY", rich_help_panel=DATA, show_default=_DEFAULTS.nonfinite.value,
        help="Input samples holding NaN/inf: fail, skip or keep.")] = None,
    granularity: Annotated[Optional[Granularity], typer.Option(
        metavar="UNIT", rich_help_panel=CAPTURE, show_default=_DEFAULTS.granularity.value,
        help="channel (a neuron or conv channel) or position (every channel x position).")] = None,
    layers: LayersOption = None,
    exclude: ExcludeOption = None,
    functional: FunctionalOption = None,
    no_functional: NoFunctionalOption = False,
    dead_threshold: DeadThresholdOption = None,
    tau: TauOption = None,
    saturation: Annotated[Optional[float], typer.Option(
        metavar="SHARE", rich_help_panel=THRESHOLDS, show_default=f"{_THRESHOLDS.saturation:g}",
        help="Share of observations at the floor/bound that makes a unit saturated.")] = None,
    max_dead_ratio: MaxDeadRatioOption = None,
    max_layer_dead_ratio: MaxLayerDeadRatioOption = None,
    fail_on: FailOnOption = FailOn.NEVER,
    json_path: JsonOption = None,
    html_path: HtmlOption = None,
    png_dir: PngDirOption = None,
    out_dir: OutOption = None,
    junit_path: JunitOption = None,
    markdown_path: MarkdownOption = None,
    tensorboard: TensorboardOption = None,
    mlflow: MlflowOption = False,
    wandb: WandbOption = False,
    step: StepOption = 0,
    show_units: ShowUnitsOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
    batch_size: BatchSizeOption = None,
    device: DeviceOption = "auto",
    compile_mode: Annotated[Optional[CompileMode], typer.Option(
        "--compile", metavar="MODE", rich_help_panel=RUN, show_default=_DEFAULTS.compile.value,
        help="Compile the per-batch reduction with torch.compile: auto, on or off.")] = None,
    config: ConfigOption = None,
    partial_on_interrupt: Annotated[bool, typer.Option(
        "--partial-on-interrupt", rich_help_panel=RUN, help="On Ctrl-C, report what was seen so far.")] = False,
    timeout: Annotated[Optional[float], typer.Option(
        metavar="SECONDS", rich_help_panel=RUN, show_default="300",
        help="Under torchrun: the most a rank waits for the others (where they meet, and in collectives); "
             "ranks that do not arrive are named.")] = None,
    debug: DebugOption = False,
) -> None:
    """Scan MODEL over DATA and report dead, saturated and dormant units per activation site."""
    with error_exit(debug):
        from .judge.gate import GateLimits
        from .settings import build_settings
        settings = build_settings(
            config=config, batch_size=batch_size, limit=limit, device=device, dead_threshold=dead_threshold,
            tau=tau, saturation=saturation, granularity=granularity, layers=tuple(layers or ()),
            exclude=tuple(exclude or ()), functional=FunctionalCapture.OFF if no_functional else functional,
            nonfinite=nonfinite, compile=compile_mode)
        gate = GateLimits.from_config(config, max_dead_ratio=max_dead_ratio, max_layer_dead_ratio=max_layer_dead_ratio)
        described = inputs.inputs(config)
        targets = ReportTargets(json=json_path, html=html_path, png_dir=png_dir,
                                out=_out_folder(out_dir, _stem(described.model, described.model_factory)),
                                files={"--junit": junit_path, "--markdown": markdown_path})
        targets.check({**described.reads(), "--config": config})
        from .loggers import check_installed
        check_installed(tensorboard=tensorboard is not None, mlflow=mlflow, wandb=wandb)  # before a long scan
        from .commands.torchrun import scan_group
        from .distributed import set_timeout
        from .scanning import scan as run_scan
        group = scan_group()  # under torchrun, the CLI's own process group: rank 0 alone prints and writes
        main_process = group is None or group.rank == 0
        set_timeout(timeout, collectives=group is not None)
        with _ProgressReporter(enabled=not quiet and json_path != Path("-") and main_process) as progress:
            result = run_scan(described, settings=settings, gate=gate, progress=progress, shard=shard,
                              partial_on_interrupt=partial_on_interrupt, group=group)
        if main_process:
            _emit(result, json_path, quiet, show_units, verbose)
            _write_reports(result, targets, json_path, quiet, (junit_path, markdown_path))
            if tensorboard is not None or mlflow or wandb:
                from .loggers import log_scan
                log_scan(result, step=step, tensorboard=tensorboard, mlflow=mlflow, wandb=wandb)
            if result.data.get("partial"):
                # --partial-on-interrupt: the report of what was seen is out, and the run was still cut short.
                stderr.print(f"interrupted: the report covers the {result.data.get('samples')} samples scanned "
                             "before Ctrl-C and is marked partial", markup=False, soft_wrap=True)
    if result.data.get("partial"):
        raise typer.Exit(EXIT_INTERRUPTED)
    raise typer.Exit(_exit_code(result, fail_on))


def _exit_code(result: Any, fail_on: FailOn) -> int:
    """1 when the gate failed or the verdict trips ``--fail-on``, else 0."""
    from .judge.overall import overall
    gate_failed = result.gate is not None and not result.gate.passed
    return EXIT_GATE_FAILED if gate_failed or fail_on.trips(overall(result).level) else EXIT_OK


def _stem(model: Any, model_spec: str | None) -> str:
    if model is not None:
        return Path(model).stem
    return (model_spec or "model").rpartition(":")[2] or "model"


def _width() -> int | None:
    """The width to lay the report out for (``commands.common.terminal_width``)."""
    from .commands.common import terminal_width
    return terminal_width()


def _emit(result: Any, json_path: Path | None, quiet: bool, show_units: bool, verbose: bool = False) -> None:
    if json_path == Path("-"):
        sys.stdout.write(result.to_json() + "\n")
        gate = console_render.gate_lines(result)
        if gate is not None:
            stderr.print(gate)
        return
    if quiet:
        stdout.print(console_render.verdict_line(result, _width()), soft_wrap=True)
        gate = console_render.gate_lines(result)
        if gate is not None:
            stdout.print(gate)
    else:
        stdout.print(console_render.report(result, show_units=show_units, width=_width(), verbose=verbose),
                     crop=False)  # --verbose code lines run on past the edge rather than being cut


def _out_folder(out_dir: Path | None, stem: str) -> Path | None:
    """``--out auto`` means ``reports/<stem>-<timestamp>/``."""
    if out_dir is None or str(out_dir) != "auto":
        return out_dir
    return Path("reports") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _write_reports(result: Any, targets: ReportTargets, json_path: Path | None = None, quiet: bool = False,
                   ci_files: tuple[Path | None, Path | None] = (None, None)) -> None:
    """Write every report file together (JSON, HTML, PNG plots, --out, JUnit, Markdown), then say where.

    All are renamed into place at the end (``written_together``): Ctrl-C before that leaves
    every old file as it was, and the interruption line names what was written, if anything.
    """
    from .render.ci import write_ci_reports
    from .render.files import written_together
    from .render.text import visible
    to_stderr = json_path == Path("-")
    lines = []
    with written_together():
        if json_path is not None and not to_stderr:
            result.to_json(json_path)
            if not quiet:
                lines.append(f"JSON report: {visible(json_path)}")
        for what, path, files in write_reports(result, targets):
            count = f" ({files} files)" if what == "PNG plots" else ""
            lines.append(f"{what}: {visible(path)}{count}")
        lines += write_ci_reports(result, *ci_files)  # deadrelu.render.ci
    say(lines, to_stderr)


@app.command()
def report(
    result_path: Annotated[Path, typer.Argument(metavar="RESULT.json", help="A JSON report written by "
                                                "'deadrelu scan ... --json PATH' (with unit statistics).")],
    html_path: HtmlOption = None,
    png_dir: PngDirOption = None,
    out_dir: OutOption = None,
    show_units: ShowUnitsOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
    debug: DebugOption = False,
) -> None:
    """Re-render a saved JSON report (terminal, HTML, PNGs) without the model.

    Shows the stored suggestions (if none: those that need no weights) and gate; exits 0.
    """
    with error_exit(debug):
        targets = ReportTargets(html=html_path, png_dir=png_dir, out=_out_folder(out_dir, result_path.stem))
        targets.check({"RESULT.json": result_path})
        from .result import ScanResult
        result = ScanResult.from_json(result_path)
        if not result.suggestions:
            from .judge.suggestions import suggest
            result = result.with_suggestions(suggest(result))
        _emit(result, None, quiet, show_units, verbose)
        _write_reports(result, targets)
    raise typer.Exit(EXIT_OK)


@app.command()
def version() -> None:
    """Print deadrelu's version."""
    stdout.print(f"deadrelu {__version__}")


def _version_flag(value: bool) -> None:
    if value:
        version()
        raise typer.Exit(EXIT_OK)


@app.callback()
def _options(show_version: bool = typer.Option(False, "--version", callback=_version_flag, is_eager=True,
                                               help="Print deadrelu's version and exit.")) -> None:
    # the options before the command (``deadrelu --version``); the app's help is Typer(help=...)
    pass


from .commands.repair import register as _register_repair  # noqa: E402  (needs app and the helpers above)
_register_repair(app)
from .commands.merge import register as _register_merge  # noqa: E402
_register_merge(app)
from .commands.training import register as _register_training  # noqa: E402  (trend, diff)
_register_training(app)


def main() -> None:
    """Console-script entry point (under torchrun: one process group, rank 0 reports, one error line)."""
    from .commands.torchrun import run
    run(app)


if __name__ == "__main__":  # pragma: no cover
    main()
