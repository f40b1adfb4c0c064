"""The command line: parse, call the library, render, map errors to exit codes.

Exit codes: 0 scan done and gate passed (or no gate); 1 gate failed; 2 bad usage or input.

Only typer, rich and the torch-free parts of deadrelu are imported at start-up; the
model, data and scan modules (and torch with them) are imported by the commands that
need them, so ``deadrelu --help``, ``version`` and ``report`` start at once.
"""

from __future__ import annotations

import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer
from rich.console import Console

from . import __version__
from .errors import ConfigError, DeadReluError
from .render import console as console_render
from .render.reports import ReportTargets, write_reports
from .settings import CompileMode, Granularity, InputDtype, NonFinitePolicy, ScanSettings, Thresholds

EXIT_OK, EXIT_GATE_FAILED, EXIT_BAD_INPUT = 0, 1, 2

#: what ``--help`` groups options under
MODEL, DATA, CAPTURE, THRESHOLDS, GATE, OUTPUT, RUN = "Model", "Data", "Capture", "Thresholds", "Gate", "Output", "Run"
#: data formats, for help texts (a torch-free copy of ``load.data.DATA_FORMATS``)
DATA_FILES = ".npy, .npz, .pt/.pth, .csv/.tsv, .parquet, or text (.txt/.jsonl) with a tokenizer"

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode="rich",
                  help="Find dead, saturated and dormant ReLU-family units in a PyTorch model, on your data.")
stdout = Console(highlight=False, soft_wrap=False)
# Errors and hints stay one line each, however narrow the terminal (CI logs are grepped).
stderr = Console(stderr=True, highlight=False, soft_wrap=True)

#: library parameter names -> the flags a CLI user types, for error lines
PARAMETER_FLAGS = {"batch_size": "--batch-size", "dead_threshold": "--dead-threshold", "tau": "--tau",
                   "saturation": "--saturation", "granularity": "--granularity", "nonfinite": "--nonfinite",
                   "limit": "--limit", "max_dead_ratio": "--max-dead-ratio",
                   "max_layer_dead_ratio": "--max-layer-dead-ratio", "compile": "--compile"}
_LEADING_PARAMETER = re.compile(r"^(" + "|".join(sorted(map(re.escape, PARAMETER_FLAGS), key=len, reverse=True))
                                + r")\b(?!_)")


def as_flags(message: str) -> str:
    """A library message that starts with a parameter name (``batch_size must be >= 1``), with the flag."""
    return _LEADING_PARAMETER.sub(lambda match: PARAMETER_FLAGS[match.group(1)], message, count=1)


@contextmanager
def error_exit(debug: bool) -> Iterator[None]:
    """Turn the deadrelu error family into one line on stderr and exit code 2."""
    try:
        yield
    except DeadReluError as exc:
        if debug:
            raise
        message = as_flags(exc.message) if isinstance(exc, ConfigError) else exc.message
        stderr.print(f"[bold red]error:[/] {_plain(message)}")
        if exc.hint:
            stderr.print(f"[dim]hint:[/] {_plain(exc.hint)}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except KeyboardInterrupt:
        stderr.print("[bold red]interrupted[/]: no report written (use --partial-on-interrupt to keep partial results)")
        raise typer.Exit(130) from None


def _plain(text: str) -> str:
    from rich.markup import escape

    from .render.text import visible
    return escape(visible(text))


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
DebugOption = Annotated[bool, typer.Option("--debug", rich_help_panel=RUN, help="Show tracebacks.")]
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
    columns: Annotated[Optional[list[str]], typer.Option(
        "--columns", metavar="A,B", rich_help_panel=DATA,
        help="Table columns to use as features, in order (default: every numeric column).")] = None,
    limit: Annotated[Optional[int], typer.Option(
        metavar="N", rich_help_panel=DATA, show_default="all", help="Scan at most N samples.")] = None,
    shuffle_seed: Annotated[Optional[int], typer.Option(
        metavar="SEED", rich_help_panel=DATA,
        help="With --limit, scan a random subset drawn with this seed instead of the first N.")] = None,
    scale: Annotated[Optional[float], typer.Option(
        metavar="X", rich_help_panel=DATA, help="Multiply inputs by this (e.g. 0.00392 for uint8 images).")] = None,
    nonfinite: Annotated[Optional[NonFinitePolicy], typer.Option(
        rich_help_panel=DATA, show_default=_DEFAULTS.nonfinite.value,
        help="Input samples holding NaN/inf: fail, skip or keep.")] = None,
    granularity: Annotated[Optional[Granularity], typer.Option(
        rich_help_panel=CAPTURE, show_default=_DEFAULTS.granularity.value,
        help="channel: a unit is a neuron/channel; position: every (channel, position).")] = None,
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
    max_dead_ratio: Annotated[Optional[float], typer.Option(
        metavar="RATIO", rich_help_panel=GATE,
        help="Fail (exit 1) when dead units over all units are above this ratio.")] = None,
    max_layer_dead_ratio: Annotated[Optional[float], typer.Option(
        metavar="RATIO", rich_help_panel=GATE,
        help="Fail (exit 1) when any site's dead ratio is above this.")] = None,
    json_path: Annotated[Optional[Path], typer.Option(
        "--json", metavar="FILE", rich_help_panel=OUTPUT,
        help="Write the JSON report here ('-' for stdout).")] = None,
    html_path: HtmlOption = None,
    png_dir: PngDirOption = None,
    out_dir: OutOption = None,
    show_units: ShowUnitsOption = False,
    quiet: QuietOption = False,
    batch_size: Annotated[Optional[int], typer.Option(
        metavar="N", rich_help_panel=RUN, show_default=str(_DEFAULTS.batch_size),
        help="Samples per forward pass.")] = None,
    device: Annotated[str, typer.Option(
        metavar="DEVICE", rich_help_panel=RUN, help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    compile_mode: Annotated[Optional[CompileMode], typer.Option(
        "--compile", rich_help_panel=RUN, show_default=_DEFAULTS.compile.value,
        help="Compile the per-batch reduction with torch.compile.")] = None,
    config: Annotated[Optional[Path], typer.Option(
        metavar="FILE", rich_help_panel=RUN,
        help="TOML config (see configs/default.toml); flags win over it.")] = None,
    partial_on_interrupt: Annotated[bool, typer.Option(
        "--partial-on-interrupt", rich_help_panel=RUN, help="On Ctrl-C, report what was seen so far.")] = False,
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
                                out=_out_folder(out_dir, _stem(model, model_spec)))
        targets.check({"MODEL": model, "DATA": data, "--weights": weights, "--config": config,
                       "--import": import_files, "--arch": _spec_file(arch), "--model": _spec_file(model_spec),
                       "--data": _spec_file(data_spec)})
        from .load.huggingface import has_tokenizer, is_encoder_decoder, is_model_folder
        from .load.sources import open_data, open_model
        from .scanning import scan as run_scan
        loaded = open_model(model, arch=arch, arch_kwargs=arch_kwargs, factory=model_spec, weights=weights,
                            allow_pickle=allow_pickle, imports=import_files or (), hf_class=hf_class,
                            allow_remote_code=allow_remote_code)
        # Named arrays (keyword inputs, a mask) come as dict batches; --key arrays stay positional.
        named = bool(kwarg or mask)
        stream = open_data(data, source=data_spec, batch_size=settings.batch_size, limit=settings.limit,
                           key=[*(key or []), *(kwarg or []), *([mask] if mask else [])] if named else key,
                           columns=columns, shuffle_seed=shuffle_seed, named=named,
                           tokenizer=tokenizer or (model if is_model_folder(model) and has_tokenizer(model) else None),
                           max_length=max_length, text_field=text_field,
                           decoder_inputs=is_encoder_decoder(loaded.module))
        with _ProgressReporter(enabled=not quiet and json_path != Path("-")) as progress:
            result = run_scan(loaded, stream, settings=settings, gate=gate, progress=progress,
                              input_key=input_key or (key if named else None) or None, scale=scale,
                              partial_on_interrupt=partial_on_interrupt, kwargs=kwarg, mask=mask,
                              input_dtype=input_dtype.value)
        _emit(result, json_path, quiet, show_units)
        _write_reports(result, targets, json_path == Path("-"))
    raise typer.Exit(EXIT_GATE_FAILED if result.gate is not None and not result.gate.passed else EXIT_OK)


def _positionals(model: Path | None, data: Path | None, model_spec: str | None,
                 data_spec: str | None) -> tuple[Path | None, Path | None]:
    """Assign the positional paths: MODEL unless --model is given, DATA unless --data is."""
    given = [path for path in (model, data) if path is not None]
    wanted = [name for name, spec in (("MODEL", model_spec), ("DATA", data_spec)) if spec is None]
    if len(given) != len(wanted):
        options = " and ".join(f"--{n.lower()}" for n, spec in (("MODEL", model_spec), ("DATA", data_spec)) if spec)
        expected = " ".join(wanted) if wanted else "no file argument"
        raise ConfigError(f"expected {expected}{' with ' + options if options else ''}, got "
                          f"{len(given)} file argument(s): {' '.join(map(str, given)) or 'none'}",
                          hint="deadrelu scan MODEL DATA, or --model pkg.mod:build DATA, or MODEL --data pkg.mod:make")
    paths = dict(zip(wanted, given))
    return paths.get("MODEL"), paths.get("DATA")


def _stem(model: Path | None, model_spec: str | None) -> str:
    if model is not None:
        return model.stem
    return (model_spec or "model").rpartition(":")[2] or "model"


def _spec_file(spec: str | None) -> Path | None:
    """The file of a ``path/to/file.py:Name`` reference (None for ``package.module:Name``)."""
    if not spec or ":" not in spec:
        return None
    target = spec.rpartition(":")[0]
    return Path(target) if target.endswith(".py") else None


def _emit(result: Any, json_path: Path | None, quiet: bool, show_units: bool) -> None:
    if json_path == Path("-"):
        sys.stdout.write(result.to_json() + "\n")
        gate = console_render.gate_lines(result)
        if gate is not None:
            stderr.print(gate)
        return
    if json_path is not None:
        result.to_json(json_path)
    if quiet:
        stdout.print(console_render.verdict_line(result), soft_wrap=True)
        gate = console_render.gate_lines(result)
        if gate is not None:
            stdout.print(gate)
    else:
        stdout.print(console_render.report(result, show_units=show_units))
    if json_path is not None and not quiet:
        stdout.print(f"JSON report: {json_path}", markup=False)


def _out_folder(out_dir: Path | None, stem: str) -> Path | None:
    """``--out auto`` means ``reports/<stem>-<timestamp>/``."""
    if out_dir is None or str(out_dir) != "auto":
        return out_dir
    return Path("reports") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _write_reports(result: Any, targets: ReportTargets, to_stderr: bool) -> None:
    """Write the HTML report, the PNG plots and (for --out) all of them plus the JSON, and say where."""
    from .render.text import visible
    for what, path, files in write_reports(result, targets):
        count = f" ({files} files)" if what == "PNG plots" else ""
        (stderr if to_stderr else stdout).print(f"{what}: {visible(path)}{count}", markup=False, soft_wrap=True)


def _read_result(path: Path) -> Any:
    """A saved JSON report as a ScanResult; every failure is one DataLoadError line."""
    import json

    from .errors import DataLoadError
    from .result import ScanResult
    hint = "write one with: deadrelu scan MODEL DATA --json PATH"
    try:
        with path.open(encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise DataLoadError(f"result file not found: {path}", hint=hint) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataLoadError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}", hint=hint) from None
    except json.JSONDecodeError as exc:
        raise DataLoadError(f"{path} is not JSON: {exc.msg} at line {exc.lineno}", hint=hint) from None
    if not isinstance(data, dict) or "sites" not in data or "schema_version" not in data:
        raise DataLoadError(f"{path} is not a deadrelu JSON report (no schema_version/sites)", hint=hint)
    try:
        return ScanResult.from_dict(data)
    except ValueError as exc:
        raise DataLoadError(f"{path}: {exc}", hint=hint) from None
    except (KeyError, TypeError, IndexError) as exc:
        raise DataLoadError(f"{path} is not a complete deadrelu JSON report ({type(exc).__name__}: {exc})",
                            hint=hint) from None


@app.command()
def report(
    result_path: Annotated[Path, typer.Argument(metavar="RESULT.json", help="A JSON report written by "
                                                "'deadrelu scan ... --json PATH' (with unit statistics).")],
    html_path: HtmlOption = None,
    png_dir: PngDirOption = None,
    out_dir: OutOption = None,
    show_units: ShowUnitsOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Re-render a saved JSON report (terminal, HTML, PNGs) without the model.

    Shows the stored suggestions (if none: those that need no weights) and gate; exits 0.
    """
    with error_exit(debug):
        targets = ReportTargets(html=html_path, png_dir=png_dir, out=_out_folder(out_dir, result_path.stem))
        targets.check({"RESULT.json": result_path})
        result = _read_result(result_path)
        if not result.suggestions:
            from .judge.suggestions import suggest
            result = result.with_suggestions(suggest(result))
        _emit(result, None, quiet, show_units)
        _write_reports(result, targets, False)
    raise typer.Exit(EXIT_OK)


@app.command()
def version() -> None:
    """Print deadrelu's version."""
    stdout.print(f"deadrelu {__version__}")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
