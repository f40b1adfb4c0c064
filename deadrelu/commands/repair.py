"""``deadrelu prune`` and ``deadrelu fix``: scan, repair, check on the data, rescan, write.

Exit codes: 0 repaired (or nothing to repair); 2 bad input, a repair that cannot be
done, or a check that failed (then nothing is written).
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import ConfigError
from ..render.text import wrap_hanging
from .options import DATA as DATA_PANEL
from .options import MODEL as MODEL_PANEL
from .options import OUTPUT as OUT_PANEL
from .options import DebugOption

EXIT_OK = 0

ModelArg = Annotated[Optional[Path], typer.Argument(
    metavar="MODEL", show_default=False, help="Model file: a state_dict/checkpoint or .safetensors (with --arch), "
                                              "or a pickled nn.Module (with --allow-pickle). Leave out with --model.")]
DataArg = Annotated[Optional[Path], typer.Argument(metavar="DATA", show_default=False,
                                                   help="Data file (first axis = samples). Leave out with --data.")]
ArchOpt = Annotated[Optional[str], typer.Option(help="Architecture factory: package.module:Factory or "
                                                     "path/to/file.py:Factory.", rich_help_panel=MODEL_PANEL)]
ArchKwargsOpt = Annotated[Optional[str], typer.Option(help="JSON keyword arguments for --arch.",
                                                      rich_help_panel=MODEL_PANEL)]
PickleOpt = Annotated[bool, typer.Option("--allow-pickle", help="Allow the full unpickler (runs code from the file).",
                                         rich_help_panel=MODEL_PANEL)]
ImportOpt = Annotated[Optional[list[Path]], typer.Option("--import", help="Import this Python file before "
                                                         "unpickling (repeatable).", rich_help_panel=MODEL_PANEL)]
ModelSpecOpt = Annotated[Optional[str], typer.Option("--model", help="Build the model with a Python factory; "
                                                     "replaces MODEL.", rich_help_panel=MODEL_PANEL)]
WeightsOpt = Annotated[Optional[Path], typer.Option(help="Weights for the --model factory's model.",
                                                    rich_help_panel=MODEL_PANEL)]
DataSpecOpt = Annotated[Optional[str], typer.Option("--data", help="Data from Python: package.module:make; "
                                                    "replaces DATA.", rich_help_panel=DATA_PANEL)]
KeyOpt = Annotated[Optional[list[str]], typer.Option(help="Array name inside an .npz / dict .pt (repeatable).",
                                                     rich_help_panel=DATA_PANEL)]
InputKeyOpt = Annotated[Optional[list[str]], typer.Option(help="Entry of dict batches that is the model input.",
                                                          rich_help_panel=DATA_PANEL)]
BatchOpt = Annotated[int, typer.Option(help="Samples per forward pass.", show_default=True,
                                       rich_help_panel=DATA_PANEL)]
LimitOpt = Annotated[Optional[int], typer.Option(help="Use at most N samples (scan, check and rescan).",
                                                 rich_help_panel=DATA_PANEL)]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps (auto, as scan: cuda, then mps, "
                                             "then cpu).", show_default=True, rich_help_panel=DATA_PANEL)]
LayersOpt = Annotated[Optional[list[str]], typer.Option("--layers", help="Only sites matching this glob "
                                                        "(repeatable).")]
AtolOpt = Annotated[float, typer.Option(help="Refuse (exit 2) when an output moves by more than this times the "
                                             "largest absolute output (a number >= 0).", show_default=True)]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Write what changed and the before/after scan "
                                                 "as JSON here ('-' for stdout).", rich_help_panel=OUT_PANEL)]


ForceOpt = Annotated[bool, typer.Option("--force", help="Write the result even when its check fails or it makes "
                                                        "things worse (dead units rise at a site, or outputs move by "
                                                        "more than their scale).", rich_help_panel="Repair")]
VerifyOpt = Annotated[Optional[Path], typer.Option(
    "--verify-data", metavar="FILE", rich_help_panel=DATA_PANEL, show_default="the scanned data",
    help="Also check the repaired model on this data (held out from the scan) and count the removed or "
         "recycled units that fire there.")]


class RecycleUnits(str, Enum):
    dead = "dead"
    dormant = "dormant"


class ReinitScheme(str, Enum):
    he = "he"


def _load(model: Path | None, data: Path | None, arch: str | None, arch_kwargs: str | None, allow_pickle: bool,
          import_files: list[Path] | None, model_spec: str | None, weights: Path | None, data_spec: str | None,
          key: list[str] | None, batch_size: int, limit: int | None, device: str, verify_data: Path | None,
          outputs: dict[str, Path | None]) -> tuple[Any, Any, Any, Any]:
    """Model, data stream, held-out stream (or None) and scan settings, loaded as ``deadrelu scan`` loads them;
    outputs checked first."""
    from .common import positionals, spec_file
    from ..load.sources import open_data, open_model
    from ..render.reports import ReportTargets
    from ..repair.report import RepairError
    from ..settings import build_settings

    settings = build_settings(batch_size=batch_size, limit=limit, device=device)
    model, data = positionals(model, data, model_spec, data_spec)
    json_path = outputs.pop("--json", None)
    ReportTargets(json=json_path, files=outputs).check({
        "MODEL": model, "DATA": data, "--weights": weights, "--import": import_files, "--arch": spec_file(arch),
        "--model": spec_file(model_spec), "--data": spec_file(data_spec), "--verify-data": verify_data})
    loaded = open_model(model, arch=arch, arch_kwargs=arch_kwargs, factory=model_spec, weights=weights,
                        allow_pickle=allow_pickle, imports=import_files or ())
    if loaded.format in ("torchscript", "export"):
        raise RepairError(f"{loaded.source}: a {loaded.format} program; repairs change layers, which needs the "
                          "Python model", hint="pass the state_dict with --arch, a pickled module, or --model")
    stream = open_data(data, source=data_spec, batch_size=settings.batch_size, limit=settings.limit, key=key,
                       tokenizer=_tokenizer(model, data))
    held_out = None if verify_data is None else open_data(verify_data, batch_size=settings.batch_size, key=key,
                                                          tokenizer=_tokenizer(model, verify_data))
    return loaded, stream, held_out, settings


def _tokenizer(model: Path | None, data: Path | None) -> Path | None:
    """A Hugging Face folder's own tokenizer for text data, as ``deadrelu scan`` uses it."""
    from ..load.huggingface import has_tokenizer, is_model_folder, is_text_file
    return model if is_text_file(data) and is_model_folder(model) and has_tokenizer(model) else None


def _atol(atol: float) -> float:
    """``--atol`` checked before any work: a finite number >= 0."""
    from ..repair.verify import check_atol
    try:
        return check_atol(atol)
    except ConfigError as exc:
        raise ConfigError(f"--atol {atol}: must be a finite number >= 0", hint=exc.hint) from None


def _scan(module: Any, stream: Any, settings: Any, input_key: list[str] | None) -> Any:
    from ..scanning import scan
    return scan(module, stream, settings=settings, input_key=input_key or None)


def _write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    from ..render.files import atomic_write_text
    from ..result import _json_clean
    text = json.dumps(_json_clean(payload), indent=1, allow_nan=False)
    if path == Path("-"):
        sys.stdout.write(text + "\n")
    else:
        atomic_write_text(path, text + "\n")


def _refused(console: Any, refused: Any) -> None:
    """Show what the refused repair would have done (before -> after), then fail with its numbers."""
    from ..render import repair as render
    from ..repair.report import RepairError
    if refused.report is not None:
        console.print(render.repair_report(refused.report, refused=True))
        console.file.flush()  # the report first, then the error line on stderr
    what = refused.message.split(" refused: ", 1)[0]
    hint = (refused.hint or "").replace("force=True (--force)", "--force")  # the library names both spellings
    raise RepairError(f"{what} refused: {refused.reason}; nothing was written", hint=hint or None) from None


def _payload(command: str, report: Any, written: list[str]) -> dict[str, Any]:
    body = report.to_dict()
    payload: dict[str, Any] = {"command": command, "report": body, "before_after": body["before_after"],
                               "written": written}
    if body.get("fire_after_recycling") is not None:
        payload["fire_after_recycling"] = body["fire_after_recycling"]
    return payload


def prune(
    model: ModelArg = None, data: DataArg = None, arch: ArchOpt = None, arch_kwargs: ArchKwargsOpt = None,
    allow_pickle: PickleOpt = False, import_files: ImportOpt = None, model_spec: ModelSpecOpt = None,
    weights: WeightsOpt = None, data_spec: DataSpecOpt = None, key: KeyOpt = None, input_key: InputKeyOpt = None,
    batch_size: BatchOpt = 256, limit: LimitOpt = None, device: DeviceOpt = "auto", layers: LayersOpt = None,
    atol: AtolOpt = 1e-5, verify_data: VerifyOpt = None, force: ForceOpt = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the pruned model as a torch.export program "
                                                "(.pt2; loads with torch.export.load and deadrelu scan).",
                                                rich_help_panel=OUT_PANEL)] = None,
    state_dict: Annotated[Optional[Path], typer.Option("--state-dict", help="Write the pruned state_dict (new "
                                                       "shapes are printed).", rich_help_panel=OUT_PANEL)] = None,
    json_path: JsonOpt = None, debug: DebugOption = False,
) -> None:
    """Remove dead units whose output is exactly 0 on every sample, check the outputs are unchanged, write."""
    from .common import error_exit, stderr, stdout, terminal_width
    from ..render import repair as render
    from ..repair import RepairRefused
    from ..repair import prune as prune_model
    from ..repair.save import save_program, save_state_dict
    from ..repair.verify import DataOptions, example_call

    with error_exit(debug):
        if out is not None and out.suffix.lower() != ".pt2":
            raise ConfigError(f"--out {out}: prune writes a torch.export program, which needs a .pt2 name",
                              hint=f"--out {out.with_suffix('.pt2')}, and --state-dict {out} for the weights")
        _atol(atol)
        loaded, stream, held_out, settings = _load(
            model, data, arch, arch_kwargs, allow_pickle, import_files, model_spec, weights, data_spec, key,
            batch_size, limit, device, verify_data, {"--json": json_path, "--out": out, "--state-dict": state_dict})
        before = _scan(loaded, stream, settings, input_key)
        console = stderr if json_path == Path("-") else stdout
        try:
            pruned, report = prune_model(loaded.module, before, stream, layers=layers, atol=atol, force=force,
                                         verify_data=held_out, input_key=input_key)
        except RepairRefused as refused:
            _refused(console, refused)
        console.print(render.prune_report(report))
        written: list[str] = []
        if report.removed == 0:
            console.print("nothing to prune: no dead unit can be removed exactly; nothing written", markup=False)
        else:
            if out is not None:
                args, kwargs = example_call(pruned, stream, DataOptions.of(before, input_key=input_key))
                written.append(save_program(pruned, args, out, kwargs=kwargs))
            if state_dict is not None:
                written.append(save_state_dict(pruned, state_dict))
            if state_dict is not None and report.shapes:
                console.print("new shapes: " + "; ".join(f"{name} {tuple(old)} -> {tuple(new)}"
                                                         for name, old, new in report.shapes), markup=False)
            for line in written:
                console.print(wrap_hanging(f"wrote {line}", terminal_width() if console is stdout else console.width, 6), markup=False, soft_wrap=True)
            if not written:
                console.print("nothing written (give --out NAME.pt2 and/or --state-dict NAME.pt)", markup=False)
        _write_json(json_path, _payload("prune", report, written))
    raise typer.Exit(EXIT_OK)


def fix(
    model: ModelArg = None, data: DataArg = None, arch: ArchOpt = None, arch_kwargs: ArchKwargsOpt = None,
    allow_pickle: PickleOpt = False, import_files: ImportOpt = None, model_spec: ModelSpecOpt = None,
    weights: WeightsOpt = None, data_spec: DataSpecOpt = None, key: KeyOpt = None, input_key: InputKeyOpt = None,
    batch_size: BatchOpt = 256, limit: LimitOpt = None, device: DeviceOpt = "auto",
    recycle: Annotated[Optional[RecycleUnits], typer.Option(help="ReDo: re-initialise these units' incoming "
                                                            "weights and zero their outgoing weights (outputs "
                                                            "unchanged).", rich_help_panel="Repair")] = None,
    swap_activation: Annotated[Optional[str], typer.Option(help="Replace flagged activation modules: "
                                                           "leaky_relu[:slope], elu or prelu.",
                                                           rich_help_panel="Repair")] = None,
    reinit: Annotated[Optional[ReinitScheme], typer.Option(help="DESTRUCTIVE: He-initialise the layers feeding "
                                                           "flagged sites.", rich_help_panel="Repair")] = None,
    layers: LayersOpt = None, atol: AtolOpt = 1e-5, verify_data: VerifyOpt = None, force: ForceOpt = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the repaired model: the input's format where "
                                                "it holds the result (state_dict for recycle/reinit, a folder for a "
                                                "Hugging Face folder), else .pt2.", rich_help_panel=OUT_PANEL)] = None,
    json_path: JsonOpt = None, debug: DebugOption = False,
) -> None:
    """Recycle dead/dormant units (ReDo), swap activations, or re-initialise layers; show dead before -> after."""
    from .common import error_exit, stderr, stdout, terminal_width
    from ..render import repair as render
    from ..repair import RepairRefused, recycle as recycle_units, reinit as reinit_layers, swap_activations
    from ..repair.save import check_destination, save_like_input
    from ..repair.verify import DataOptions, example_call

    with error_exit(debug):
        chosen = [flag for flag, value in (("--recycle", recycle), ("--swap-activation", swap_activation),
                                           ("--reinit", reinit)) if value is not None]
        if len(chosen) != 1:
            raise ConfigError(f"fix takes exactly one of --recycle, --swap-activation, --reinit; got "
                              f"{', '.join(chosen) or 'none'}", hint="e.g. deadrelu fix MODEL DATA --recycle dead")
        if swap_activation is not None:
            from ..repair.swap import parse_target
            parse_target(swap_activation)
        if verify_data is not None and recycle is None:
            raise ConfigError(f"--verify-data applies to --recycle (and to prune), not to {chosen[0]}",
                              hint="a swap or re-init changes the function on every input; compare on held-out "
                                   "data by scanning the written model")
        _atol(atol)
        loaded, stream, held_out, settings = _load(
            model, data, arch, arch_kwargs, allow_pickle, import_files, model_spec, weights, data_spec, key,
            batch_size, limit, device, verify_data, {"--json": json_path, "--out": out})
        check_destination(out, loaded.format, architecture_kept=swap_activation is None)
        module = loaded.module
        before = _scan(loaded, stream, settings, input_key)
        console = stderr if json_path == Path("-") else stdout
        options: dict[str, Any] = {"input_key": input_key, "force": force}
        try:
            if recycle is not None:
                report: Any = recycle_units(module, before, recycle.value, data=stream, layers=layers, atol=atol,
                                            verify_data=held_out, **options)
            elif reinit is not None:
                report = reinit_layers(module, before, reinit.value, data=stream, layers=layers, **options)
            else:
                assert swap_activation is not None
                sites = [s for s in before.sites if (s.dead if not layers else _matches(s, layers))]
                report = swap_activations(module, sites, swap_activation, result=before, data=stream, **options)
        except RepairRefused as refused:
            _refused(console, refused)
        written: list[str] = []
        if out is not None:
            args, kwargs = example_call(module, stream, DataOptions.of(before, input_key=input_key))
            written.append(save_like_input(module, out, loaded, args, architecture_kept=swap_activation is None,
                                           kwargs=kwargs))
        console.print(render.repair_report(report))
        for line in written:
            console.print(wrap_hanging(f"wrote {line}", terminal_width() if console is stdout else console.width, 6), markup=False, soft_wrap=True)
        if not written:
            console.print("nothing written (give --out PATH)", markup=False)
        _write_json(json_path, _payload("fix", report, written))
    raise typer.Exit(EXIT_OK)


def _matches(site: Any, layers: list[str]) -> bool:
    from ..repair.prune import selected
    return selected(site, layers)


def register(app: typer.Typer) -> None:
    """Add ``prune`` and ``fix`` to the ``deadrelu`` command line."""
    app.command()(prune)
    app.command()(fix)


__all__ = ["register", "prune", "fix"]
