"""Checks on the data: run two models on the same batches, count multiply-adds, compare scans.

Batches are prepared exactly as the scan prepares them (same input selection, casts
and device), so "unchanged on the data" means on the data the scan judged.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..load.data import DataStream, as_stream
from ..result import ScanResult
from ..settings import NonFinitePolicy
from .report import OutputCheck, RepairError, SiteChange


@dataclass(frozen=True)
class DataOptions:
    """How to feed data to the model, as the scan does (see ``deadrelu.scan``)."""

    batch_size: int = 256
    limit: int | None = None
    input_key: str | Sequence[str] | None = None
    scale: float | None = None
    shuffle_seed: int | None = None
    kwargs: Sequence[str] = ()
    mask: str | None = None
    input_dtype: str = "auto"
    decoder_inputs: bool = False

    @classmethod
    def of(cls, result: ScanResult | None, **options: Any) -> DataOptions:
        """Options given by the caller, else the scan's batch size and limit."""
        base: dict[str, Any] = {}
        if result is not None:
            base = {"batch_size": result.settings.batch_size, "limit": result.settings.limit}
        base.update({k: v for k, v in options.items() if v is not None})
        return cls(**base)


def _device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def iter_inputs(model: nn.Module, data: Any, options: DataOptions) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
    """Yield ``(args, kwargs)`` for each batch of ``data``, prepared as the scan prepares them."""
    from ..load.inputs import InputPreparer
    device, dtype = _device_and_dtype(model)
    stream = data if isinstance(data, DataStream) else as_stream(
        data, options.batch_size, options.limit, shuffle_seed=options.shuffle_seed,
        key=options.input_key if isinstance(data, Mapping) else None)
    prepare = InputPreparer(dtype, device, NonFinitePolicy.SKIP, options.input_key, options.scale,
                            kwarg_keys=tuple(options.kwargs), mask_key=options.mask, input_dtype=options.input_dtype,
                            decoder_inputs=options.decoder_inputs)
    start = 0
    for raw in stream.batches():
        prepared = prepare(raw, start)
        if prepared is None:
            continue
        start += prepared.samples
        yield prepared.args, prepared.kwargs


def example_inputs(model: nn.Module, data: Any, options: DataOptions) -> tuple[Any, ...] | None:
    """The first batch's positional inputs (for tracing and export), or None when there is no data."""
    if data is None:
        return None
    for args, kwargs in iter_inputs(model, data, options):
        return _positional(model, args, kwargs)
    raise RepairError("the data holds no sample to run the model on", hint="check the data and --limit")


def _positional(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Keyword inputs (``--kwarg``) in their places of ``forward``, with the defaults between them:
    tracing and export take positional example inputs. Inputs that only fit by keyword are left out."""
    if not kwargs:
        return tuple(args)
    try:
        signature = inspect.signature(model.forward)
        bound = signature.bind(*args, **kwargs)
    except (TypeError, ValueError):
        return tuple(args)
    given = set(bound.arguments)
    bound.apply_defaults()
    places = [p.name for p in signature.parameters.values()
              if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    last = max((index for index, name in enumerate(places) if name in given), default=-1)
    if given - set(places[:last + 1]):
        return tuple(args)
    return tuple(bound.arguments[name] for name in places[:last + 1])


def _leaves(output: Any) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_leaves
    return [leaf for leaf in tree_leaves(output) if isinstance(leaf, torch.Tensor)]


class _Eval:
    """Models in eval mode for the ``with`` block; every module's flag restored after."""

    def __init__(self, *models: nn.Module) -> None:
        self.models = models
        self.flags: list[list[bool]] = []

    def __enter__(self) -> None:
        self.flags = [[m.training for m in model.modules()] for model in self.models]
        for model in self.models:
            model.eval()

    def __exit__(self, *exc: Any) -> None:
        for model, flags in zip(self.models, self.flags):
            for module, flag in zip(model.modules(), flags):
                module.training = flag


def compare_outputs(reference: nn.Module, candidate: nn.Module, data: Any, options: DataOptions,
                    atol: float | None = None) -> OutputCheck:
    """Run both models (in eval mode) on every batch of ``data`` and measure how far their outputs differ.

    Args:
        reference: the original model.
        candidate: the repaired model.
        data: what ``deadrelu.scan`` accepts.
        options: batching, as the scan did it.
        atol: allowed difference relative to the largest absolute reference output.

    Returns:
        The largest difference, the output scale and the samples compared.

    Raises:
        RepairError: the candidate's forward failed or its outputs have another structure.
    """
    worst, scale, samples = 0.0, 0.0, 0
    with _Eval(reference, candidate), torch.no_grad():
        for args, kwargs in iter_inputs(reference, data, options):
            expected = _leaves(reference(*args, **kwargs))
            try:
                got = _leaves(candidate(*args, **kwargs))
            except Exception as exc:
                raise RepairError(f"the repaired model's forward failed: {type(exc).__name__}: "
                                  f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}",
                                  hint="the forward may hard-code a layer width (x.view(-1, 512)); "
                                       "nothing was written") from None
            if [t.shape for t in expected] != [t.shape for t in got]:
                raise RepairError(f"the repaired model's outputs have shapes {[tuple(t.shape) for t in got]}, "
                                  f"the original's {[tuple(t.shape) for t in expected]}",
                                  hint="nothing was written")
            for want, have in zip(expected, got):
                if not want.is_floating_point():
                    worst = max(worst, float((want != have).any()))
                    continue
                want64, have64 = want.double(), have.double()
                finite = torch.isfinite(want64)
                if finite.any():
                    scale = max(scale, float(want64[finite].abs().max()))
                both_same = (want64 == have64) | (torch.isnan(want64) & torch.isnan(have64))
                diff = torch.where(both_same, torch.zeros_like(want64), (want64 - have64).abs())
                worst = max(worst, float(torch.nan_to_num(diff, nan=float("inf")).max()) if diff.numel() else 0.0)
            samples += int(args[0].shape[0]) if args and isinstance(args[0], torch.Tensor) and args[0].ndim else 1
    return OutputCheck(max_abs_diff=worst, output_scale=scale, samples=samples, atol=atol)


def count_parameters(model: nn.Module) -> int:
    """Parameters of the model (shared ones once)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example: Sequence[Any] | None) -> int | None:
    """Multiply-adds per sample on the example batch (``FlopCounterMode`` / 2), or None."""
    if example is None:
        return None
    from torch.utils.flop_counter import FlopCounterMode
    batch = int(example[0].shape[0]) if isinstance(example[0], torch.Tensor) and example[0].ndim else 1
    try:
        with _Eval(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*example)
    except Exception:
        return None
    return int(counter.get_total_flops()) // 2 // max(batch, 1)


@dataclass(frozen=True)
class SiteDelta:
    """One site's counts in the scan before a repair and in the rescan after it."""

    site: str
    units_before: int
    units_after: int | None
    dead_before: int
    dead_after: int | None
    dormant_before: int
    dormant_after: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"site": self.site, "units_before": self.units_before, "units_after": self.units_after,
                "dead_before": self.dead_before, "dead_after": self.dead_after,
                "dormant_before": self.dormant_before, "dormant_after": self.dormant_after}


def scan_deltas(before: ScanResult, after: ScanResult) -> tuple[SiteDelta, ...]:
    """Per site (matched by name): units, dead and dormant before -> after.

    Args:
        before: the scan of the original model.
        after: the scan of the repaired model on the same data.

    Returns:
        One ``SiteDelta`` per site of ``before`` (``None`` counts where the site is gone).
    """
    later = {site.name: site for site in after.sites}
    deltas = []
    for site in before.sites:
        other = later.get(site.name)
        deltas.append(SiteDelta(site.name, site.units, other.units if other else None, site.dead,
                                other.dead if other else None, site.dormant, other.dormant if other else None))
    return tuple(deltas)


def firing(after: ScanResult, changes: Sequence[SiteChange]) -> tuple[int, int]:
    """Of the changed units, how many were active at least once in ``after``: ``(firing, changed)``."""
    sites = {site.name: site for site in after.sites}
    fired = total = 0
    for change in changes:
        site = sites.get(change.site)
        if site is None or not change.changed:
            continue
        active = site.stats.active[np.asarray(change.changed, dtype=int)]
        fired += int((active > 0).sum())
        total += len(change.changed)
    return fired, total


__all__ = ["DataOptions", "iter_inputs", "example_inputs", "compare_outputs", "count_parameters", "count_macs",
           "SiteDelta", "scan_deltas", "firing"]
