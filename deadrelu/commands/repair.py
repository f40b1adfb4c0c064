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

from .options import (BatchSizeOption, ConfigOption, DebugOption, DeviceOption, InputFlags, LimitOption,
                      input_flags)
from .options import OUTPUT as OUT_PANEL

EXIT_OK = 0

LayersOpt = Annotated[Optional[list[str]], typer.Option("--layers", help="Only sites matching this glob "
                                                        "(repeatable).")]
AtolOpt = Annotated[float, typer.Option(help="Refuse (exit 2) when an output moves by more than this times the "
                                             "largest absolute output.", show_default=True)]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Write what changed and the before/after scan "
                                                 "as JSON here ('-' for stdout).", rich_help_panel=OUT_PANEL)]


class RecycleUnits(str, Enum):
    dead = "dead"
    dormant = "dormant"


class ReinitScheme(str, Enum):
    he = "he"


def _fix(inputs: InputFlags, outputs: dict[str, Path | None], config: Path | None, batch_size: int | None,
         limit: int | None, device: str, **action: Any) -> Any:
    """Check the outputs against the inputs (before any work), then ``deadrelu.fix``."""
    from ..render.reports import ReportTargets
    from ..repair.fixing import fix
    from ..settings import build_settings

    settings = build_settings(config=config, batch_size=batch_size, limit=limit, device=device)
    described = inputs.inputs(config)
    json_path = outputs.pop("--json", None)
    ReportTargets(json=json_path, files=outputs).check({**described.reads(), "--config": config})
    return fix(described, settings=settings, **action)


def _say_written(console: Any, written: tuple[str, ...], missing: str) -> None:
    for line in written:
        console.print(f"wrote {line}", markup=False, soft_wrap=True)
    if not written:
        console.print(f"nothing written ({missing})", markup=False)


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


@input_flags()
def prune(
    inputs: InputFlags,  # MODEL DATA and every flag of the inputs (commands/options.py: INPUT_FLAGS)
    batch_size: BatchSizeOption = None, limit: LimitOption = None, device: DeviceOption = "cpu",
    layers: LayersOpt = None, atol: AtolOpt = 1e-5,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the pruned model as a torch.export program "
                                                "(.pt2; loads with torch.export.load).", rich_help_panel=OUT_PANEL)
                   ] = None,
    state_dict: Annotated[Optional[Path], typer.Option("--state-dict", help="Write the pruned state_dict (new "
                                                       "shapes are printed).", rich_help_panel=OUT_PANEL)] = None,
    json_path: JsonOpt = None, config: ConfigOption = None, debug: DebugOption = False,
) -> None:
    """Remove dead units whose output is exactly 0 on every sample, check the outputs are unchanged, write."""
    from .common import error_exit, stderr, stdout
    from ..render import repair as render

    with error_exit(debug):
        fixed = _fix(inputs, {"--json": json_path, "--out": out, "--state-dict": state_dict}, config, batch_size,
                     limit, device, prune=True, layers=layers, atol=atol, out=out, state_dict=state_dict)
        console = stderr if json_path == Path("-") else stdout
        console.print(render.prune_report(fixed.report, fixed.deltas))
        if state_dict is not None and fixed.report.shapes:
            console.print("new shapes: " + "; ".join(f"{name} {tuple(old)} -> {tuple(new)}"
                                                     for name, old, new in fixed.report.shapes), markup=False)
        _say_written(console, fixed.written, "give --out NAME.pt2 and/or --state-dict NAME.pt")
        _write_json(json_path, fixed.to_dict())
    raise typer.Exit(EXIT_OK)


@input_flags()
def fix(
    inputs: InputFlags,  # MODEL DATA and every flag of the inputs (commands/options.py: INPUT_FLAGS)
    batch_size: BatchSizeOption = None, limit: LimitOption = None, device: DeviceOption = "cpu",
    recycle: Annotated[Optional[RecycleUnits], typer.Option(help="ReDo: re-initialise these units' incoming "
                                                            "weights and zero their outgoing weights (outputs "
                                                            "unchanged).", rich_help_panel="Repair")] = None,
    swap_activation: Annotated[Optional[str], typer.Option(help="Replace flagged activation modules: "
                                                           "leaky_relu[:slope], elu or prelu.",
                                                           rich_help_panel="Repair")] = None,
    reinit: Annotated[Optional[ReinitScheme], typer.Option(help="DESTRUCTIVE: He-initialise the layers feeding "
                                                           "flagged sites.", rich_help_panel="Repair")] = None,
    layers: LayersOpt = None, atol: AtolOpt = 1e-5,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the repaired model: the input's format where "
                                                "it holds the result (state_dict for recycle/reinit), else .pt2.",
                                                rich_help_panel=OUT_PANEL)] = None,
    json_path: JsonOpt = None, config: ConfigOption = None, debug: DebugOption = False,
) -> None:
    """Recycle dead/dormant units (ReDo), swap activations, or re-initialise layers; show dead before -> after."""
    from .common import error_exit, stderr, stdout
    from ..render import repair as render

    with error_exit(debug):
        fixed = _fix(inputs, {"--json": json_path, "--out": out}, config, batch_size, limit, device,
                     recycle=recycle.value if recycle else None, swap_activation=swap_activation,
                     reinit=reinit.value if reinit else None, layers=layers, atol=atol, out=out)
        if fixed.action == "recycle":
            renderable = render.recycle_report(fixed.report, fixed.deltas, fixed.fired)
        elif fixed.action == "reinit":
            renderable = render.reinit_report(fixed.report, fixed.deltas)
        else:
            renderable = render.swap_report(fixed.report, fixed.deltas)
        console = stderr if json_path == Path("-") else stdout
        console.print(renderable)
        _say_written(console, fixed.written, "give --out PATH")
        _write_json(json_path, fixed.to_dict())
    raise typer.Exit(EXIT_OK)


def register(app: typer.Typer) -> None:
    """Add ``prune`` and ``fix`` to the ``deadrelu`` command line."""
    app.command()(prune)
    app.command()(fix)


__all__ = ["register", "prune", "fix"]
