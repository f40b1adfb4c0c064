"""Scan, repair, check on the data, rescan, write: ``deadrelu.fix``, the library side of ``prune`` and ``fix``.

The inputs are opened as ``deadrelu.scan`` opens them (``load.sources.open_inputs``: any
model format, any data format, the same feeding), the destinations are checked before any
work, the repair checks and rescans itself on the same batches (``deadrelu.repair``), and
the result is written in the input's format where it can hold it. Nothing is printed:
``Fixed`` holds the report, the scan before, and what was written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..load.model import LoadedModel
from ..load.sources import Opened, open_data, open_inputs
from ..load.spec import Inputs
from ..result import ScanResult
from ..settings import ScanSettings, build_settings
from .prune import prune as prune_units
from .prune import selected
from .recycle import recycle as recycle_units
from .recycle import reinit as reinit_layers
from .report import RepairError
from .save import check_destination, save_like_input, save_program, save_state_dict
from .swap import parse_target, swap_activations
from .verify import DataOptions, check_atol, example_call

#: What ``fix`` can do, by the option that asks for it.
ACTIONS = ("prune", "recycle", "swap_activation", "reinit")


@dataclass(frozen=True)
class Fixed:
    """A repair done: what changed (with the rescan's before -> after), the scan before it, the files written.

    Attributes:
        action: ``prune``, ``recycle``, ``swap_activation`` or ``reinit``.
        model: the repaired model (a pruned copy; the input model itself, changed in place, for the others).
        source: the model as it was opened (its format and provenance).
        report: what the repair changed and its effect (``PruneReport``, ``RecycleReport``,
            ``SwapReport``, ``ReinitReport``; ``report.to_dict()["before_after"]``).
        before: the scan of the input model.
        written: one line per file written.
    """

    action: str
    model: nn.Module
    source: LoadedModel
    report: Any
    before: ScanResult
    written: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """What ``deadrelu prune/fix --json`` writes: the command, the report, dead before -> after, the files."""
        body = self.report.to_dict()
        payload: dict[str, Any] = {"command": "prune" if self.action == "prune" else "fix", "report": body,
                                   "before_after": body["before_after"], "written": list(self.written)}
        if body.get("fire_after_recycling") is not None:
            payload["fire_after_recycling"] = body["fire_after_recycling"]
        return payload


def fix(model: Any, data: Any = None, *, prune: bool = False, recycle: str | None = None,
        swap_activation: str | None = None, reinit: str | None = None, layers: list[str] | None = None,
        atol: float = 1e-5, force: bool = False, verify_data: Any = None, out: str | os.PathLike | None = None,
        state_dict: str | os.PathLike | None = None, settings: ScanSettings | None = None,
        **options: Any) -> Fixed:
    """Scan, repair (exactly one action), check on the data, scan again, and write the result.

    Args:
        model: what ``deadrelu.scan`` takes: a module, a model file or folder, or an ``Inputs``
            (then leave ``data`` out).
        data: what ``deadrelu.scan`` takes.
        prune: remove dead units whose output is exactly 0 on every sample (a smaller copy).
        recycle: ``dead`` or ``dormant``: ReDo-recycle those units in place.
        swap_activation: ``leaky_relu[:slope]``, ``elu`` or ``prelu``: replace the activations of
            the sites with dead units (of ``layers``' sites when given).
        reinit: ``he``: re-initialise the layers feeding flagged sites (destructive).
        layers: only sites matching these globs.
        atol: refuse when an output moves by more than this times the largest absolute output.
        force: keep (and write) the change even when its check fails or it makes things worse.
        verify_data: prune and recycle: other data (held out from the scan), opened as ``data``
            is, to check the repaired model on.
        out: write the repaired model here (prune: a ``.pt2`` program; the others: the input's
            format where it holds the result, else ``.pt2``).
        state_dict: prune only: write the pruned state_dict here.
        settings: scan settings; or give single ones (``batch_size``, ``limit``, ``device``...)
            in ``options``.
        **options: options of the inputs (``deadrelu.Inputs``: ``arch``, ``kwargs``, ``mask``,
            ``tokenizer``...) and scan settings.

    Returns:
        The repair, its scans and what was written (nothing when prune removed nothing).

    Raises:
        ConfigError: not exactly one action, a bad ``atol``, or an output the result cannot be
            written to (before any work); RepairError: a program format (TorchScript, export);
            RepairRefused: the repair failed its check or made things worse (unless ``force``).
    """
    action = _action(prune, recycle, swap_activation, reinit, state_dict, verify_data)
    check_atol(atol)
    out = Path(out) if out is not None else None
    state_dict = Path(state_dict) if state_dict is not None else None
    if action == "prune" and out is not None and out.suffix.lower() != ".pt2":
        raise ConfigError(f"--out {out}: prune writes a torch.export program, which needs a .pt2 name",
                          hint=f"--out {out.with_suffix('.pt2')}, and --state-dict {out} for the weights")
    input_options, overrides = Inputs.split(options)
    settings = settings.replace(**overrides) if settings is not None else build_settings(**overrides)
    inputs = (model if isinstance(model, Inputs) else Inputs(model=model)).with_values(data=data, **input_options)
    opened = open_inputs(inputs, batch_size=settings.batch_size, limit=settings.limit)
    loaded = opened.model
    if loaded.format in ("torchscript", "export"):
        raise RepairError(f"{loaded.source}: a {loaded.format} program; repairs change layers, which needs the "
                          "Python model", hint="pass the state_dict with --arch, a pickled module, or --model")
    if action != "prune":
        check_destination(out, loaded.format, architecture_kept=action != "swap_activation")
    held_out = None if verify_data is None else open_data(opened.inputs.with_values(data=verify_data),
                                                          batch_size=settings.batch_size)
    before = _scan(loaded, opened, settings)
    feeding = opened.feeding.options()
    module: nn.Module = loaded.module
    report: Any
    if action == "prune":
        module, report = prune_units(module, before, opened.stream, layers=layers, atol=atol, force=force,
                                     verify_data=held_out, **feeding)
    elif action == "recycle":
        report = recycle_units(module, before, str(recycle), data=opened.stream, layers=layers, atol=atol,
                               verify_data=held_out, force=force, **feeding)
    elif action == "reinit":
        report = reinit_layers(module, before, str(reinit), data=opened.stream, layers=layers, force=force,
                               **feeding)
    else:
        sites = [s for s in before.sites if (s.dead if not layers else selected(s, layers))]
        report = swap_activations(module, sites, str(swap_activation), result=before, data=opened.stream,
                                  force=force, **feeding)
    written = _write(action, module, loaded, opened, before, report, out, state_dict)
    return Fixed(action, module, loaded, report, before, tuple(written))


def _action(prune: bool, recycle: str | None, swap_activation: str | None, reinit: str | None,
            state_dict: Any, verify_data: Any) -> str:
    """The one action asked for (a swap target is checked here, before any work)."""
    chosen = [name for name, value in (("prune", prune or None), ("recycle", recycle),
                                       ("swap_activation", swap_activation), ("reinit", reinit)) if value is not None]
    if len(chosen) != 1:
        given = ", ".join("--" + name.replace("_", "-") for name in chosen) or "none"
        raise ConfigError(f"fix takes exactly one of --recycle, --swap-activation, --reinit; got {given}",
                          hint="e.g. deadrelu fix MODEL DATA --recycle dead")
    if swap_activation is not None:
        parse_target(swap_activation)
    if state_dict is not None and chosen[0] != "prune":
        raise ConfigError("state_dict= goes with prune (fix writes the input's format with out=)",
                          hint="deadrelu prune MODEL DATA --state-dict pruned.pt")
    if verify_data is not None and chosen[0] not in ("prune", "recycle"):
        raise ConfigError(f"--verify-data applies to --recycle (and to prune), not to --{chosen[0].replace('_', '-')}",
                          hint="a swap or re-init changes the function on every input; compare on held-out "
                               "data by scanning the written model")
    return chosen[0]


def _scan(model: Any, opened: Opened, settings: ScanSettings) -> ScanResult:
    """Scan ``model`` on the opened batches, fed as they were opened."""
    from ..scanning import scan
    feeding = opened.feeding
    return scan(model, opened.stream, settings=settings, input_key=list(feeding.input_key) or None,
                kwargs=feeding.kwargs, mask=feeding.mask, scale=feeding.scale, input_fn=feeding.input_fn,
                input_dtype=feeding.input_dtype.value, decoder_inputs=feeding.decoder_inputs)


def _write(action: str, module: nn.Module, loaded: LoadedModel, opened: Opened, before: ScanResult, report: Any,
           out: Path | None, state_dict: Path | None) -> list[str]:
    """Write what was asked for (nothing when prune removed nothing)."""
    written: list[str] = []
    if action == "prune" and report.removed == 0:
        return written
    if out is not None:
        args, kwargs = example_call(module, opened.stream, DataOptions.of(before, **opened.feeding.options()))
        if action == "prune":
            written.append(save_program(module, args, out, kwargs=kwargs))
        else:
            written.append(save_like_input(module, out, loaded, args, architecture_kept=action != "swap_activation",
                                           kwargs=kwargs))
    if state_dict is not None:
        written.append(save_state_dict(module, state_dict))
    return written


__all__ = ["ACTIONS", "Fixed", "fix"]
