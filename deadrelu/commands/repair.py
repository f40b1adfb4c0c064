"""``deadrelu prune`` and ``deadrelu fix``: scan, repair, check on the data, rescan, write.

Thin bodies over ``deadrelu.fix`` (``repair/fixing.py``), which opens the inputs as
``deadrelu scan`` does (every input flag, declared once in ``commands/options.py``).

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
from .options import OUTPUT as OUT_PANEL
from .options import (BatchSizeOption, ConfigOption, DebugOption, DeviceOption, InputFlags, LimitOption,
                      input_flags)

EXIT_OK = 0

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


def _fix(inputs: InputFlags, outputs: dict[str, Path | None], config: Path | None, batch_size: int | None,
         limit: int | None, device: str, atol: float, verify_data: Path | None, **action: Any) -> Any:
    """Check ``--atol`` and the outputs against the inputs (before any work), then ``deadrelu.fix``."""
    from ..render.reports import ReportTargets
    from ..repair.fixing import fix
    from ..settings import build_settings

    _atol(atol)
    settings = build_settings(config=config, batch_size=batch_size, limit=limit, device=device)
    described = inputs.inputs(config)
    json_path = outputs.pop("--json", None)
    ReportTargets(json=json_path, files=outputs).check({**described.reads(), "--config": config,
                                                        "--verify-data": verify_data})
    return fix(described, settings=settings, atol=atol, verify_data=verify_data, **action)


def _atol(atol: float) -> float:
    """``--atol`` checked before any work: a finite number >= 0."""
    from ..repair.verify import check_atol
    try:
        return check_atol(atol)
    except ConfigError as exc:
        raise ConfigError(f"--atol {atol}: must be a finite number >= 0", hint=exc.hint) from None


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


def _say_written(console: Any, written: tuple[str, ...], missing: str) -> None:
    """The files a repair wrote, each wrapped at spaces under its own text (never inside a word)."""
    from .common import stdout, terminal_width
    width = terminal_width() if console is stdout else console.width
    for line in written:
        console.print(wrap_hanging(f"wrote {line}", width, 6), markup=False, soft_wrap=True)
    if not written:
        console.print(f"nothing written ({missing})", markup=False)


@input_flags()
def prune(
    inputs: InputFlags,  # MODEL DATA and every flag of the inputs (commands/options.py: INPUT_FLAGS)
    batch_size: BatchSizeOption = None, limit: LimitOption = None, device: DeviceOption = "auto",
    layers: LayersOpt = None, atol: AtolOpt = 1e-5, verify_data: VerifyOpt = None, force: ForceOpt = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the pruned model as a torch.export program "
                                                "(.pt2; loads with torch.export.load and deadrelu scan).",
                                                rich_help_panel=OUT_PANEL)] = None,
    state_dict: Annotated[Optional[Path], typer.Option("--state-dict", help="Write the pruned state_dict (new "
                                                       "shapes are printed).", rich_help_panel=OUT_PANEL)] = None,
    json_path: JsonOpt = None, config: ConfigOption = None, debug: DebugOption = False,
) -> None:
    """Remove dead units whose output is exactly 0 on every sample, check the outputs are unchanged, write."""
    from .common import error_exit, stderr, stdout
    from ..render import repair as render
    from ..repair import RepairRefused

    with error_exit(debug):
        console = stderr if json_path == Path("-") else stdout
        try:
            fixed = _fix(inputs, {"--json": json_path, "--out": out, "--state-dict": state_dict}, config,
                         batch_size, limit, device, atol, verify_data, prune=True, layers=layers, force=force,
                         out=out, state_dict=state_dict)
        except RepairRefused as refused:
            _refused(console, refused)
        report = fixed.report
        console.print(render.prune_report(report))
        if report.removed == 0:
            console.print("nothing to prune: no dead unit can be removed exactly; nothing written", markup=False)
        else:
            if state_dict is not None and report.shapes:
                console.print("new shapes: " + "; ".join(f"{name} {tuple(old)} -> {tuple(new)}"
                                                         for name, old, new in report.shapes), markup=False)
            _say_written(console, fixed.written, "give --out NAME.pt2 and/or --state-dict NAME.pt")
        _write_json(json_path, fixed.to_dict())
    raise typer.Exit(EXIT_OK)


@input_flags()
def fix(
    inputs: InputFlags,  # MODEL DATA and every flag of the inputs (commands/options.py: INPUT_FLAGS)
    batch_size: BatchSizeOption = None, limit: LimitOption = None, device: DeviceOption = "auto",
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
    json_path: JsonOpt = None, config: ConfigOption = None, debug: DebugOption = False,
) -> None:
    """Recycle dead/dormant units (ReDo), swap activations, or re-initialise layers; show dead before -> after."""
    from .common import error_exit, stderr, stdout
    from ..render import repair as render
    from ..repair import RepairRefused

    with error_exit(debug):
        console = stderr if json_path == Path("-") else stdout
        try:
            fixed = _fix(inputs, {"--json": json_path, "--out": out}, config, batch_size, limit, device, atol,
                         verify_data, recycle=recycle.value if recycle else None, swap_activation=swap_activation,
                         reinit=reinit.value if reinit else None, layers=layers, force=force, out=out)
        except RepairRefused as refused:
            _refused(console, refused)
        console.print(render.repair_report(fixed.report))
        _say_written(console, fixed.written, "give --out PATH")
        _write_json(json_path, fixed.to_dict())
    raise typer.Exit(EXIT_OK)


def register(app: typer.Typer) -> None:
    """Add ``prune`` and ``fix`` to the ``deadrelu`` command line."""
    app.command()(prune)
    app.command()(fix)


__all__ = ["register", "prune", "fix"]
