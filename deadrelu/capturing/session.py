"""``deadrelu.capture(model)``: capture as a public mode, like ``FlopCounterMode``.

    >>> with deadrelu.capture(model) as cap:          # doctest: +SKIP
    ...     for x in batches:
    ...         model(x)
    >>> cap.result().to_frame()

The context manager is the contract: hooks (or the dispatch mode, for TorchScript and
``torch.export`` models) live exactly as long as the block, and every module's
train/eval flag is given back on exit, raised or not. Queries come after the block.
``deadrelu.scan`` is one user of it (with its own batch loop), a training monitor is
another (``eval_mode=False``: statistics of the training forward passes themselves).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import ConfigError
from ..load.exported import ExportedModel, is_exported_graph_module
from ..settings import ScanSettings, build_settings
from .contract import Capture
from .hooks import ActivationCapture

if TYPE_CHECKING:
    from ..result import ScanResult
    from ..stats import SiteStats
    from .observe import Observer
    from .registry import SiteRecord


def capture_for(model: nn.Module, settings: ScanSettings, device: torch.device,
                eval_mode: bool = True) -> Capture:
    """The capture that fits a model: hooks for eager modules, aten-level for others.

    Args:
        model: an eager ``nn.Module``, a ``ScriptModule``, an ``ExportedModel`` or an
            ``ExportedProgram.module()`` graph.
        settings: scan settings.
        device: where accumulators live.
        eval_mode: put the model in eval mode inside the block.

    Returns:
        An (unentered) capture context manager.
    """
    from .dispatch import DispatchCapture
    from .plans import export_plan, torchscript_plan

    if isinstance(model, torch.jit.ScriptModule):
        return DispatchCapture(model, settings, device, torchscript_plan(model))
    if isinstance(model, ExportedModel):
        return DispatchCapture(model, settings, device, export_plan(model.program))
    if is_exported_graph_module(model):
        return DispatchCapture(model, settings, device, export_plan(model))
    return ActivationCapture(model, settings, device, eval_mode=eval_mode)


class CaptureSession:
    """A capture with its lifetime, its batches and its result.

    Args:
        model: the model to watch.
        settings: scan settings (thresholds, granularity, layer filters...).
        device: where accumulators live; None: the model's device.
        eval_mode: put the model in eval mode inside the block (default); False keeps
            its mode, for statistics of training forward passes.
        auto_batches: each call of the model is one batch (root forward hooks mark
            its start and end); False when the caller marks batches with
            ``begin_batch``/``end_batch`` (the scan loop).

    After the block, ``result()`` builds the ``ScanResult`` of everything seen. The capture
    behind it (module hooks or aten dispatch, see ``capturing.contract``) is the session's own:
    callers ask the session.
    """

    def __init__(self, model: nn.Module, settings: ScanSettings | None = None, device: torch.device | None = None,
                 eval_mode: bool = True, auto_batches: bool = True) -> None:
        from ..load.inputs import resolve_device
        self.model = model
        self.settings = settings or ScanSettings()
        self.device = device if device is not None else resolve_device(None, model)
        self.auto_batches = auto_batches
        self._capture = capture_for(model, self.settings, self.device, eval_mode=eval_mode)
        self.samples = 0
        self.batches = 0
        self._handles: list[Any] = []

    # -- lifetime -------------------------------------------------------------------------
    def __enter__(self) -> CaptureSession:
        if self.auto_batches and isinstance(self.model, torch.jit.ScriptModule):
            raise ConfigError("deadrelu.capture() cannot watch a TorchScript module's own calls (it refuses hooks)",
                              hint="use deadrelu.scan(model, data), which runs the batches itself")
        self._capture.__enter__()
        if self.auto_batches:
            try:
                # First of the root's pre-hooks: the batch begins before a root that is itself an
                # activation module counts its own call.
                self._handles = [self.model.register_forward_pre_hook(self._start, prepend=True),
                                 self.model.register_forward_hook(self._stop, always_call=True)]
            except BaseException:
                self._capture.__exit__(None, None, None)
                raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            for handle in self._handles:
                handle.remove()
            self._handles = []
        finally:
            self._capture.__exit__(*exc_info)

    def _start(self, module: nn.Module, args: tuple) -> None:
        self._capture.begin_batch(inside=True)  # the mask set with set_mask() stays
        first = args[0] if args else None
        if isinstance(first, torch.Tensor) and first.ndim > 0:
            self.samples += int(first.shape[0])

    def _stop(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.end_batch()

    # -- batches --------------------------------------------------------------------------
    def begin_batch(self, mask: torch.Tensor | None = None) -> None:
        """Mark the start of one forward pass (fresh per-forward call counters).

        Args:
            mask: the padding mask of this batch, ``(N, L)``, 1 at real tokens and 0 at
                padding: padded positions are left out of every statistic at sites whose
                activation starts with those axes.
        """
        self._capture.begin_batch()
        self._capture.set_mask(mask)

    def set_mask(self, mask: torch.Tensor | None) -> None:
        """The padding mask for the following forward passes (``(N, L)``, 1 = real token), or None."""
        self._capture.set_mask(mask)

    def end_batch(self) -> None:
        """Mark its end."""
        self._capture.end_batch()
        self.batches += 1

    # -- what the scan loop and a monitor ask ---------------------------------------------
    @property
    def in_batch(self) -> bool:
        """A forward pass is open (begun and not yet ended)."""
        return self._capture.in_batch

    @property
    def failure(self) -> Exception | None:
        """An error the capture raised inside the last forward pass (TorchScript re-raises it bare)."""
        return self._capture.failure

    @property
    def op_error(self) -> Exception | None:
        """The model's own op error in the last forward pass, when an interpreter hid its text."""
        return self._capture.op_error

    @property
    def sees_modules(self) -> bool:
        """Whether the model's Python modules run (eager hooks); False for TorchScript / export graphs."""
        return self._capture.sees_modules

    @property
    def reduction(self) -> Observer:
        """The reduction's shared state: ``compiled`` (set by ``compile_policy``) and ``reduce_seconds``."""
        return self._capture.observer

    def ran_this_batch(self) -> list[str]:
        """Activations that ran in the current forward pass, in order (for error messages)."""
        return self._capture.ran_this_batch()

    def records(self) -> list[SiteRecord]:
        """The sites seen so far, in network order (capture-internal records, for tools and tests)."""
        return self._capture.records()

    def finalize(self, record: SiteRecord) -> SiteStats:
        """One site's statistics so far."""
        return self._capture.finalize(record)

    # -- results --------------------------------------------------------------------------
    def result(self, *, samples: int | None = None, data_info: Mapping[str, Any] | None = None,
               model_info: Mapping[str, Any] | None = None, notes: Sequence[str] = (),
               environment: Mapping[str, Any] | None = None, suggestions: bool = True) -> ScanResult:
        """The ``ScanResult`` of every batch seen so far.

        Args:
            samples: samples fed (default: counted from the first input of each call).
            data_info: what is known about the data (source, sha256...), for reports.
            model_info: what is known about the model (source, format...), for reports.
            notes: facts the user should see, added to the result's warnings.
            environment: extra entries for ``result.environment``.
            suggestions: attach fix suggestions (judged from the result and the model's weights).

        Returns:
            The result.

        Raises:
            CaptureError: no site ran.
        """
        from ..assemble import assemble
        from ..load.inputs import model_dtype
        from ..version import version
        data = {"source": "<batches fed to the model>", "samples": self.samples if samples is None else samples,
                "batches": self.batches, **dict(data_info or {})}
        env = {"deadrelu": version(), "torch": torch.__version__, "device": str(self.device),
               "dtype": str(model_dtype(self.model)).replace("torch.", ""),
               "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "mode": "eval" if self._capture.eval_mode else "as set by the caller (train/eval)",
               **dict(environment or {})}
        return assemble(self._capture, self.model, self.settings, data_info=data, model_info=model_info or {},
                        notes=notes, environment=env, suggestions=suggestions)


def capture(model: nn.Module, *, settings: ScanSettings | None = None, device: str | torch.device | None = None,
            eval_mode: bool = True, **overrides: Any) -> CaptureSession:
    """Capture a model's activation statistics for the duration of a ``with`` block.

    Args:
        model: the model; call it yourself inside the block, one call per batch.
        settings: full settings; or single ones as keyword overrides (``tau=0.05``,
            ``granularity="position"``, ``layers=["features.*"]``...).
        device: where accumulators live (default: the model's device).
        eval_mode: put the model in eval mode inside the block (default True); False keeps
            the mode (statistics of training steps; wrap nothing in ``no_grad``, the hooks
            reduce without building a graph).

    Returns:
        The session: ``with deadrelu.capture(model) as cap: model(x)``, then ``cap.result()``.
    """
    if settings is None:
        settings = build_settings(**overrides)
    elif overrides:
        settings = settings.replace(**overrides)
    resolved = torch.device(device) if isinstance(device, str) else device
    return CaptureSession(model, settings, resolved, eval_mode=eval_mode)


__all__ = ["capture", "capture_for", "CaptureSession"]
