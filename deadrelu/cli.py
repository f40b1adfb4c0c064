"""The command line: parse, call the library, render, map errors to exit codes.

Exit codes: 0 scan done and gate passed (or no gate); 1 gate failed; 2 bad usage or input.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from . import __version__
from .errors import ConfigError, DeadReluError, OutputError
from .judge.gate import check_gate
from .load.data import DATA_FORMATS, load_data, load_python_data
from .load.model import load_factory, load_model, parse_kwargs
from .render import console as console_render
from .settings import CompileMode, Granularity, NonFinitePolicy, build_settings, read_config

EXIT_OK, EXIT_GATE_FAILED, EXIT_BAD_INPUT = 0, 1, 2

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find dead, saturated and dormant ReLU-family units in a PyTorch model, on your data.")
stdout = Console(highlight=False, soft_wrap=False)
# Errors and hints stay one line each, however narrow the terminal (CI logs are grepped).
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


@contextmanager
def error_exit(debug: bool) -> Iterator[None]:
    """Turn the deadrelu error family into one line on stderr and exit code 2."""
    try:
        yield
    except DeadReluError as exc:
        if debug:
            raise
        stderr.print(f"[bold red]error:[/] {_plain(exc.message)}")
        if exc.hint:
            stderr.print(f"[dim]hint:[/] {_plain(exc.hint)}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except KeyboardInterrupt:
        stderr.print("[bold red]interrupted[/]: no report written (use --partial-on-interrupt to keep partial results)")
        raise typer.Exit(130) from None


def _plain(text: str) -> str:
    from rich.markup import escape
    return escape(text)


class _ProgressReporter:
    """A rich progress bar on stderr (samples, samples/s, ETA), only on a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and stderr.is_terminal
        self._progress: Progress | None = None
        self._task: Any = None
        self._started = time.perf_counter()

    def __enter__(self) -> _ProgressReporter:
        if self.enabled:
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


HtmlOption = Annotated[Optional[Path], typer.Option("--html", help="Write a self-contained HTML report here.")]
PngDirOption = Annotated[Optional[Path], typer.Option("--png-dir", help="Write PNG plots into this folder.")]
OutOption = Annotated[Optional[Path], typer.Option("--out", help="Write result.json, report.html and plots/*.png "
                                                                 "into this folder ('auto': "
                                                                 "reports/<model-stem>-<timestamp>/).")]


def _merge(config: Path | None, flags: dict[str, Any]) -> dict[str, Any]:
    values = read_config(config) if config is not None else {}
    values.update({key: value for key, value in flags.items() if value is not None and value != ()})
    return values


@app.command()
def scan(
    model: Annotated[Optional[Path], typer.Argument(
        metavar="MODEL", show_default=False, help="Model file: a state_dict/checkpoint or .safetensors (with --arch), TorchScript, "
                                 "a torch.export .pt2, or a pickled nn.Module (with --allow-pickle). "
                                 "Leave out with --model.")] = None,
    data: Annotated[Optional[Path], typer.Argument(
        metavar="DATA", show_default=False, help=f"Data file: {DATA_FORMATS.replace(', or --data package.module:make', '')}; "
                                 "first axis = samples. Leave out with --data.")] = None,
    arch: Annotated[Optional[str], typer.Option(help="Architecture factory: package.module:Factory or "
                                                     "path/to/file.py:Factory.")] = None,
    arch_kwargs: Annotated[Optional[str], typer.Option(help="JSON keyword arguments for --arch.")] = None,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Allow the full unpickler, which runs code "
                                                                     "from the model file. Only for files you trust.")] = False,
    import_files: Annotated[Optional[list[Path]], typer.Option(
        "--import", help="Import this Python file before unpickling, so the classes a pickled model names "
                         "(also from a script's __main__) are found (repeatable).")] = None,
    model_spec: Annotated[Optional[str], typer.Option(
        "--model", help="Build the model with a Python factory: package.module:build or path/to/file.py:build "
                        "(called with --arch-kwargs); replaces MODEL.")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="state_dict / checkpoint / .safetensors to load into "
                                                         "the --model factory's model.")] = None,
    data_spec: Annotated[Optional[str], typer.Option(
        "--data", help="Data from Python: package.module:make or path/to/file.py:make, returning a tensor, "
                       "ndarray, dict of them, Dataset or DataLoader; replaces DATA.")] = None,
    key: Annotated[Optional[list[str]], typer.Option(
        help="Array name inside an .npz, a dict .pt or a --data dict; repeat it for a model that takes "
             "several inputs (fed as model(a, b) in this order).")] = None,
    input_key: Annotated[Optional[list[str]], typer.Option(
        help="Entry of dict batches (or position in tuple batches) that is the model input; repeat it for "
             "several inputs.")] = None,
    columns: Annotated[Optional[list[str]], typer.Option(
        "--columns", help="Table columns to use as features, in order (repeatable or comma-separated); "
                          "default: every numeric column.")] = None,
    shuffle_seed: Annotated[Optional[int], typer.Option(help="With --limit, scan a random subset drawn with "
                                                             "this seed instead of the first N samples.")] = None,
    scale: Annotated[Optional[float], typer.Option(help="Multiply inputs by this (e.g. 0.00392 for uint8 images).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Samples per forward pass. [default: 256]")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Scan at most N samples.")] = None,
    shard: Annotated[Optional[str], typer.Option(help="Scan only shard I/N of the samples (contiguous blocks); "
                                                      "combine the parts with 'deadrelu merge'.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    config: Annotated[Optional[Path], typer.Option(help="TOML config (see configs/default.toml); flags win.")] = None,
    dead_threshold: Annotated[Optional[float], typer.Option(help="Dead when the active rate is <= this. [default: 0]")] = None,
    tau: Annotated[Optional[float], typer.Option(help="ReDo dormancy threshold. [default: 0.1]")] = None,
    saturation: Annotated[Optional[float], typer.Option(help="Share at the floor/bound that makes a unit "
                                                             "saturated. [default: 0.99]")] = None,
    granularity: Annotated[Optional[Granularity], typer.Option(help="channel: a unit is a neuron/channel; "
                                                                    "position: every (channel, position).")] = None,
    layers: Annotated[Optional[list[str]], typer.Option("--layers", help="Only sites matching this glob "
                                                                         "(repeatable).")] = None,
    exclude: Annotated[Optional[list[str]], typer.Option("--exclude", help="Skip sites matching this glob "
                                                                           "(repeatable).")] = None,
    functional: Annotated[Optional[bool], typer.Option("--functional/--no-functional",
                                                       help="Capture F.relu-style calls in forward().")] = None,
    nonfinite: Annotated[Optional[NonFinitePolicy], typer.Option(help="Input samples with NaN/inf: fail, skip "
                                                                      "or keep. [default: fail]")] = None,
    compile_mode: Annotated[Optional[CompileMode], typer.Option("--compile", help="Compile the reduction: auto, "
                                                                                   "on, off.")] = None,
    max_dead_ratio: Annotated[Optional[float], typer.Option(help="Gate: fail (exit 1) when dead units over all "
                                                                 "units are above this ratio.")] = None,
    max_layer_dead_ratio: Annotated[Optional[float], typer.Option(help="Gate: fail when any site's dead ratio "
                                                                       "is above this.")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the JSON report here "
                                                                     "('-' for stdout).")] = None,
    html_path: HtmlOption = None,
    png_dir: PngDirOption = None,
    out_dir: OutOption = None,
    show_units: Annotated[bool, typer.Option("--show-units", help="List dead/saturated unit indices.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the verdict and gate lines.")] = False,
    partial_on_interrupt: Annotated[bool, typer.Option("--partial-on-interrupt", help="On Ctrl-C, report what "
                                                                                     "was seen so far.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Scan MODEL over DATA and report dead, saturated and dormant units per activation site."""
    with error_exit(debug):
        values = _merge(config, {
            "batch_size": batch_size, "limit": limit, "device": device, "dead_threshold": dead_threshold, "tau": tau,
            "saturation": saturation, "granularity": granularity, "layers": tuple(layers or ()),
            "exclude": tuple(exclude or ()), "functional": functional, "nonfinite": nonfinite,
            "compile": compile_mode, "max_dead_ratio": max_dead_ratio, "max_layer_dead_ratio": max_layer_dead_ratio})
        gate_limits = {k: values.pop(k, None) for k in ("max_dead_ratio", "max_layer_dead_ratio")}
        settings = build_settings(**values)
        model, data = _positionals(model, data, model_spec, data_spec)
        _check_output(json_path)
        _check_output(html_path)
        if model_spec is not None:
            loaded = load_factory(model_spec, parse_kwargs(arch_kwargs), weights, allow_pickle=allow_pickle)
        else:
            assert model is not None
            if weights is not None:
                raise ConfigError("--weights goes with --model (a factory); a MODEL file holds its own weights",
                                  hint="--model pkg.module:build --weights state_dict.pt DATA, or MODEL --arch ...")
            loaded = load_model(model, arch=arch, arch_kwargs=parse_kwargs(arch_kwargs), allow_pickle=allow_pickle,
                                imports=import_files or ())
        if data_spec is not None:
            stream = load_python_data(data_spec, batch_size=settings.batch_size, limit=settings.limit, key=key,
                                      shuffle_seed=shuffle_seed)
        else:
            assert data is not None
            stream = load_data(data, batch_size=settings.batch_size, limit=settings.limit, key=key, columns=columns,
                               shuffle_seed=shuffle_seed)
        from .distributed import is_main_process
        from .scan import scan as run_scan
        main_process = is_main_process()  # under torchrun, rank 0 alone prints and writes reports
        with _ProgressReporter(enabled=not quiet and json_path != Path("-") and main_process) as progress:
            result = run_scan(loaded.module, stream, settings=settings, progress=progress, model_info=loaded.info(),
                              input_key=input_key or None, scale=scale, partial_on_interrupt=partial_on_interrupt,
                              shard=shard)
        if loaded.notes:
            result = _with_notes(result, loaded.notes)
        if any(limit_ is not None for limit_ in gate_limits.values()):
            result = result.with_gate(check_gate(result, **gate_limits))
        if main_process:
            _emit(result, json_path, quiet, show_units)
            _write_reports(result, html_path, png_dir, _out_folder(out_dir, _stem(model, model_spec)),
                           json_path == Path("-"))
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


def _check_output(json_path: Path | None) -> None:
    """Fail before the scan, not after it, when the report cannot be written there."""
    if json_path is None or json_path == Path("-"):
        return
    if json_path.is_dir():
        raise OutputError(f"cannot write {json_path}: it is a folder", hint="give a file path, e.g. reports/scan.json")
    folder = json_path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"cannot write {json_path}: {folder} is a file, not a folder",
                          hint="choose an output path in a folder you can write")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {json_path}: no permission to write in {folder}",
                          hint="choose an output path in a folder you can write")


def _with_notes(result: Any, notes: list[str]) -> Any:
    import dataclasses
    return dataclasses.replace(result, warnings=tuple(notes) + result.warnings)


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


def _write_reports(result: Any, html_path: Path | None, png_dir: Path | None, out_dir: Path | None,
                   to_stderr: bool) -> None:
    """Write the HTML report, the PNG plots and (for --out) all of them plus the JSON, and say where."""
    from .render import html as html_render
    from .render import plots
    from .render.files import atomic_write_text
    written: list[str] = []
    html_targets = [path for path in (html_path, out_dir / "report.html" if out_dir else None) if path]
    if html_targets:
        page = html_render.report(result)
        for path in html_targets:
            atomic_write_text(path, page)
            written.append(f"HTML report: {path}")
    for folder in (png_dir, out_dir / "plots" if out_dir else None):
        if folder is not None:
            written.append(f"PNG plots: {folder} ({len(plots.write_pngs(result, folder))} files)")
    if out_dir is not None:
        result.to_json(out_dir / "result.json")
        written.append(f"JSON report: {out_dir / 'result.json'}")
    for line in written:
        (stderr if to_stderr else stdout).print(line, markup=False, soft_wrap=True)


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
    show_units: Annotated[bool, typer.Option("--show-units", help="List dead/saturated unit indices.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the verdict and gate lines.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Re-render a saved JSON report (terminal, HTML, PNGs) without the model.

    Shows the stored suggestions (if none: those that need no weights) and gate; exits 0.
    """
    with error_exit(debug):
        result = _read_result(result_path)
        if not result.suggestions:
            from .judge.suggestions import suggest
            result = result.with_suggestions(suggest(result))
        _emit(result, None, quiet, show_units)
        _write_reports(result, html_path, png_dir, _out_folder(out_dir, result_path.stem), False)
    raise typer.Exit(EXIT_OK)


@app.command()
def version() -> None:
    """Print deadrelu's version."""
    stdout.print(f"deadrelu {__version__}")


from .commands import merge as _merge_command  # noqa: E402  (commands use the helpers above)

_merge_command.register(app)


def main() -> None:
    """Console-script entry point (under torchrun: one process group, rank 0 reports)."""
    from .distributed import run_cli
    run_cli(app)


if __name__ == "__main__":  # pragma: no cover
    main()
