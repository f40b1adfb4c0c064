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
from .commands.options import (CAPTURE, DATA, MODEL, RUN, THRESHOLDS, DebugOption, FailOn, FailOnOption,
                               HtmlOption, JsonOption, JunitOption, MarkdownOption, MaxDeadRatioOption,
                               MaxLayerDeadRatioOption, OutOption, PngDirOption, QuietOption, ShowUnitsOption,
                               VerboseOption)
from .commands.helpstyle import App, HelpGroup
from .commands.options import MlflowOption, StepOption, TensorboardOption, WandbOption
from .commands.common import EXIT_GATE_FAILED, EXIT_INTERRUPTED, EXIT_OK, error_exit, stderr, stdout
from .commands.common import positionals as _positionals
from .commands.common import spec_file as _spec_file
from .commands.training import say, write_ci_reports
from .render import console as console_render
from .render.reports import ReportTargets, write_reports
from .settings import (MAX_LINE_BYTES, CompileMode, Granularity, InputDtype, NonFinitePolicy, ScanSettings,
                       Thresholds)

#: data formats, for help texts (a torch-free copy of ``load.data.DATA_FORMATS``)
DATA_FILES = ".npy, .npz, .pt/.pth, .csv/.tsv, .parquet, or text (.txt/.jsonl) with a tokenizer"

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
def scan(
    model: Annotated[Optional[Path], typer.Argument(
        metavar="MODEL", show_default=False,
        help="Model file: a state_dict/checkpoint or .safetensors (with --arch), TorchScript, a torch.export "
             ".pt2, a pickled nn.Module, or a Hugging Face model folder (config.json + weights). Leave out with "
             "--model.")] = None,
    data: Annotated[Optional[Path], typer.Argument(
        metavar="DATA", show_default=False,
        help=f"Data file: {DATA_FILES}; first axis = samples. Leave out with --data.")] = None,
    arch: Annotated[Optional[str], typer.Option(
        metavar="SPEC", rich_help_panel=MODEL,
        help="Architecture for a state_dict: package.module:Factory or path/to/file.py:Factory.")] = None,
    arch_kwargs: Annotated[Optional[str], typer.Option(
        metavar="JSON", rich_help_panel=MODEL, help="Keyword arguments for --arch / --model, as JSON.")] = None,
    model_spec: Annotated[Optional[str], typer.Option(
        "--model", metavar="SPEC", rich_help_panel=MODEL,
        help="Build the model with a Python factory (package.module:build or file.py:build); replaces "
             "MODEL.")] = None,
    weights: Annotated[Optional[Path], typer.Option(
        metavar="FILE", rich_help_panel=MODEL,
        help="state_dict / checkpoint / .safetensors to load into the --model factory's model.")] = None,
    allow_pickle: Annotated[bool, typer.Option(
        "--allow-pickle", rich_help_panel=MODEL,
        help="Allow the full unpickler, which runs code from the model file. Only for files you trust.")] = False,
    hf_class: Annotated[Optional[str], typer.Option(
        "--hf-class", metavar="NAME", rich_help_panel=MODEL, show_default="AutoModel",
        help="transformers class that loads a Hugging Face folder (AutoModelForCausalLM, T5EncoderModel...).")] = None,
    allow_remote_code: Annotated[bool, typer.Option(
        "--allow-remote-code", rich_help_panel=MODEL,
        help="Let a Hugging Face folder run its own Python code (trust_remote_code). Only for folders you "
             "trust.")] = False,
    import_files: Annotated[Optional[list[Path]], typer.Option(
        "--import", metavar="FILE", rich_help_panel=MODEL,
        help="Import this Python file before unpickling, so the classes a pickled model names are found "
             "(repeatable).")] = None,
    data_spec: Annotated[Optional[str], typer.Option(
        "--data", metavar="SPEC", rich_help_panel=DATA,
        help="Data from Python (package.module:make or file.py:make) returning a tensor, ndarray, dict, "
             "Dataset or DataLoader; replaces DATA.")] = None,
    key: Annotated[Optional[list[str]], typer.Option(
        metavar="NAME", rich_help_panel=DATA,
        help="Array in an .npz, a dict .pt or a --data dict; repeat for a model with several inputs.")] = None,
    input_key: Annotated[Optional[list[str]], typer.Option(
        metavar="NAME", rich_help_panel=DATA,
        help="Entry of dict batches (or position in tuple batches) that is the model input; "
             "repeatable.")] = None,
    kwarg: Annotated[Optional[list[str]], typer.Option(
        "--kwarg", metavar="NAME", rich_help_panel=DATA,
        help="Feed the array / batch entry NAME as the keyword argument NAME= (input_ids, attention_mask...); "
             "repeatable.")] = None,
    mask: Annotated[Optional[str], typer.Option(
        "--mask", metavar="NAME", rich_help_panel=DATA,
        help="(N, L) padding mask (1 = real token, 0 = padding): padded positions are left out of the "
             "statistics. Fed to the model only when also a --kwarg.")] = None,
    input_dtype: Annotated[InputDtype, typer.Option(
        "--input-dtype", rich_help_panel=DATA,
        help="Integer data: auto keeps token ids as integers and casts what a floating layer rejects "
             "(uint8 images); keep or float force either.")] = InputDtype.AUTO,
    tokenizer: Annotated[Optional[Path], typer.Option(
        "--tokenizer", metavar="DIR", rich_help_panel=DATA,
        help="Tokenizer folder for text DATA (default: the Hugging Face model folder's own).")] = None,
    text_field: Annotated[str, typer.Option(
        "--text-field", metavar="NAME", rich_help_panel=DATA, help="Field of each .jsonl object that holds "
                                                                   "the text.")] = "text",
    max_length: Annotated[int, typer.Option(
        "--max-length", metavar="N", rich_help_panel=DATA, help="Truncate text examples to N tokens.")] = 512,
    max_line_bytes: Annotated[int, typer.Option(
        "--max-line-bytes", metavar="N", rich_help_panel=DATA,
        help="Refuse a text line longer than N bytes (tokenizing takes ~200x a line's size in memory).")
    ] = MAX_LINE_BYTES,
    columns: Annotated[Optional[list[str]], typer.Option(
        "--columns", metavar="A,B", rich_help_panel=DATA,
        help="Table columns to use as features, in order (default: every numeric column).")] = None,
    limit: Annotated[Optional[int], typer.Option(
        metavar="N", rich_help_panel=DATA, show_default="all", help="Scan at most N samples.")] = None,
    shard: Annotated[Optional[str], typer.Option(
        metavar="I/N", rich_help_panel=DATA, show_default="all",
        help="Scan only shard I of N (contiguous blocks of whole batches); join the parts with "
             "'deadrelu merge'.")] = None,
    shuffle_seed: Annotated[Optional[int], typer.Option(
        metavar="SEED", rich_help_panel=DATA,
        help="With --limit, scan a random subset drawn with this seed instead of the first N.")] = None,
    scale: Annotated[Optional[float], typer.Option(
        metavar="X", rich_help_panel=DATA, help="Multiply inputs by this (e.g. 0.00392 for uint8 images).")] = None,
    nonfinite: Annotated[Optional[NonFinitePolicy], typer.Option(
        metavar="POLICY", rich_help_panel=DATA, show_default=_DEFAULTS.nonfinite.value,
        help="Input samples holding NaN/inf: fail, skip or keep.")] = None,
    granularity: Annotated[Optional[Granularity], typer.Option(
        metavar="UNIT", rich_help_panel=CAPTURE, show_default=_DEFAULTS.granularity.value,
        help="channel (a neuron or conv channel) or position (every channel x position).")] = None,
    layers: Annotated[Optional[list[str]], typer.Option(
        "--layers", metavar="GLOB", rich_help_panel=CAPTURE,
        help="Only sites matching this glob (repeatable).")] = None,
    exclude: Annotated[Optional[list[str]], typer.Option(
        "--exclude", metavar="GLOB", rich_help_panel=CAPTURE,
        help="Skip sites matching this glob (repeatable).")] = None,
    functional: Annotated[Optional[bool], typer.Option(
        "--functional/--no-functional", rich_help_panel=CAPTURE, show_default="functional",
        help="Capture F.relu-style calls in forward().")] = None,
    dead_threshold: Annotated[Optional[float], typer.Option(
        metavar="RATE", rich_help_panel=THRESHOLDS, show_default=f"{_THRESHOLDS.dead_threshold:g}",
        help="Dead when the active rate is <= this.")] = None,
    tau: Annotated[Optional[float], typer.Option(
        metavar="TAU", rich_help_panel=THRESHOLDS, show_default=f"{_THRESHOLDS.tau:g}",
        help="ReDo dormancy threshold.")] = None,
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
    batch_size: Annotated[Optional[int], typer.Option(
        metavar="N", rich_help_panel=RUN, show_default=str(_DEFAULTS.batch_size),
        help="Samples per forward pass.")] = None,
    device: Annotated[str, typer.Option(
        metavar="DEVICE", rich_help_panel=RUN, help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    compile_mode: Annotated[Optional[CompileMode], typer.Option(
        "--compile", metavar="MODE", rich_help_panel=RUN, show_default=_DEFAULTS.compile.value,
        help="Compile the per-batch reduction with torch.compile: auto, on or off.")] = None,
    config: Annotated[Optional[Path], typer.Option(
        metavar="FILE", rich_help_panel=RUN,
        help="TOML config (see configs/default.toml); flags win over it.")] = None,
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
            exclude=tuple(exclude or ()), functional=functional, nonfinite=nonfinite, compile=compile_mode)
        gate = GateLimits.from_config(config, max_dead_ratio=max_dead_ratio, max_layer_dead_ratio=max_layer_dead_ratio)
        model, data = _positionals(model, data, model_spec, data_spec)
        targets = ReportTargets(json=json_path, html=html_path, png_dir=png_dir,
                                out=_out_folder(out_dir, _stem(model, model_spec)),
                                files={"--junit": junit_path, "--markdown": markdown_path})
        targets.check({"MODEL": model, "DATA": data, "--weights": weights, "--config": config,
                       "--import": import_files, "--arch": _spec_file(arch), "--model": _spec_file(model_spec),
                       "--data": _spec_file(data_spec), "--tokenizer": tokenizer})
        from .loggers import check_installed
        check_installed(tensorboard=tensorboard is not None, mlflow=mlflow, wandb=wandb)  # before a long scan
        from .load.huggingface import has_tokenizer, is_encoder_decoder, is_model_folder
        from .distributed import is_main_process, set_timeout
        from .load.sources import open_data, open_model
        from .scanning import scan as run_scan
        main_process = is_main_process()  # under torchrun, rank 0 alone prints and writes reports
        set_timeout(timeout, collectives=True)  # the process group is the CLI's own (commands/torchrun.py)
        loaded = open_model(model, arch=arch, arch_kwargs=arch_kwargs, factory=model_spec, weights=weights,
                            allow_pickle=allow_pickle, imports=import_files or (), hf_class=hf_class,
                            allow_remote_code=allow_remote_code)
        # Named arrays (keyword inputs, a mask) come as dict batches; --key arrays stay positional.
        named = bool(kwarg or mask)
        stream = open_data(data, source=data_spec, batch_size=settings.batch_size, limit=settings.limit,
                           key=[*(key or []), *(kwarg or []), *([mask] if mask else [])] if named else key,
                           columns=columns, shuffle_seed=shuffle_seed, named=named,
                           tokenizer=tokenizer or (model if is_model_folder(model) and has_tokenizer(model) else None),
                           max_length=max_length, text_field=text_field, max_line_bytes=max_line_bytes,
                           decoder_inputs=is_encoder_decoder(loaded.module), allow_remote_code=allow_remote_code)
        with _ProgressReporter(enabled=not quiet and json_path != Path("-") and main_process) as progress:
            result = run_scan(loaded, stream, settings=settings, gate=gate, progress=progress,
                              input_key=input_key or (key if named else None) or None, scale=scale,
                              partial_on_interrupt=partial_on_interrupt, shard=shard, kwargs=kwarg, mask=mask,
                              input_dtype=input_dtype.value)
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


def _stem(model: Path | None, model_spec: str | None) -> str:
    if model is not None:
        return model.stem
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
        stdout.print(console_render.verdict_line(result), soft_wrap=True)
        gate = console_render.gate_lines(result)
        if gate is not None:
            stdout.print(gate)
    else:
        stdout.print(console_render.report(result, show_units=show_units, width=_width(), verbose=verbose))


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
        lines += write_ci_reports(result, *ci_files)
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
