"""The capture contract: what a driver offers to the session, the scan loop and ``assemble``.

Two drivers keep it: ``hooks.ActivationCapture`` (eager models: module hooks and a
``TorchFunctionMode``) and ``dispatch.DispatchCapture`` (TorchScript and ``torch.export``:
a ``TorchDispatchMode``). Neither subclasses the other; both are built from the same parts,
each a module with one job that talks to the others only through the methods named here
and in its own docstring:

==================  =================================================================
part                job
==================  =================================================================
``registry``        sites: keys, per-forward call counts, ``--layers``/``--exclude``,
                    new records with their reduction plans (from the ``KindSpec``),
                    eager names, coverage (``SiteRegistry``)
``observe``         what "active" is read from (``before_call``), reducing a call
                    into its site's accumulator, the padding mask (``Observer``)
``masking``         the mask's layouts, and which tensors the padded sequence reaches
``links``           producer links and unit axes (``ModuleLinks``, ``OpLinks``)
``attribution``     functional calls named after the running module
``gated``           ``act(gate) * up`` recognised as a product site
``fused_forward``   a scan's ReLU-family modules computing output and statistics in
                    one pass (their ``forward`` swapped while the capture lives)
``functional``      reading ``F.relu``-style calls (table derived from ``kinds``)
``aten``            aten activation ops (derived from ``kinds``) and reading a call
``plans``           static-graph plans that name dispatch sites like eager ones
``units``           the unit-axis rule
``hooks``           the module-hook driver
``dispatch``        the aten/dispatch driver
``session``         ``CaptureSession`` and ``deadrelu.capture(model)``: the public mode
==================  =================================================================

Imports go one way: ``session`` -> drivers -> parts -> ``registry`` -> ``kinds``/``stats``/
``settings``; no part imports a driver, and neither driver imports the other.

Lifetime, for every driver: hooks and modes live in one ``ExitStack`` closed by
``__exit__`` whether or not a forward pass raised, and every module's train/eval flag is
given back (``keep_train_flags``).
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..errors import CaptureError
    from ..stats import SiteStats
    from .observe import Observer
    from .registry import Coverage, SiteRecord


class Capture(Protocol):
    """One capture of one model, for the duration of a ``with`` block.

    Attributes:
        coverage: what was found but not scanned, and whether a mask was applied.
        observer: the reduction's shared state (``compiled``, ``reduce_seconds``) and the mask.
        failure: an error the capture raised inside a forward pass (kept because an
            interpreter may re-raise it without its text).
        op_error: the model's own op error, for the same reason.
        eval_mode: whether the model runs in eval mode inside the block.
        sees_modules: whether the model's Python modules run (eager hooks) rather than a graph.
    """

    coverage: Coverage
    observer: Observer
    failure: Exception | None
    op_error: Exception | None
    eval_mode: bool
    sees_modules: bool

    @property
    def in_batch(self) -> bool:
        """A forward pass is between ``begin_batch`` and ``end_batch``."""

    @property
    def positional_names(self) -> bool:
        """Sites are named by position (``aten.relu#k``), not by module."""

    def __enter__(self) -> Capture:
        """Hooks (or the dispatch mode) on; train/eval flags remembered."""

    def __exit__(self, *exc_info: Any) -> None:
        """Everything off and given back, raised or not."""

    def begin_batch(self, inside: bool = False) -> None:
        """Before each forward pass: fresh per-forward call counters. ``inside``: called from
        inside the model's own call (a root pre-hook), where the modules already entered stay."""

    def end_batch(self) -> None:
        """After each forward pass."""

    def set_mask(self, mask: torch.Tensor | None) -> None:
        """The padding mask ``(N, L)`` of the coming forward passes, or None."""

    def records(self) -> list[SiteRecord]:
        """Sites that ran, in network order."""

    def site_name(self, record: SiteRecord) -> str:
        """The name a site is reported under."""

    def finalize(self, record: SiteRecord) -> SiteStats:
        """A site's statistics."""

    def not_run(self) -> list[str]:
        """Activation modules of the model that never ran."""

    def ran_this_batch(self) -> list[str]:
        """Activations that ran in the current forward pass (for error messages)."""

    def no_sites_error(self, model_name: str) -> CaptureError:
        """The error for a capture in which no site ran."""


def keep_train_flags(stack: ExitStack, model: nn.Module) -> None:
    """Give every module of ``model`` its train/eval flag back when ``stack`` closes."""
    training = {module: module.training for module in model.modules()}

    def restore() -> None:
        for module, flag in training.items():
            module.training = flag
    stack.callback(restore)


def no_transformer_fastpath(stack: ExitStack) -> None:
    """Turn off torch's inference fast path for ``nn.TransformerEncoderLayer`` and
    ``MultiheadAttention`` until ``stack`` closes. It computes a whole layer in one op and never
    calls the layer's activation, and it runs only while no ``TorchFunctionMode`` is on: an eager scan
    saw the activation on batch 1 (under the discovery mode) and not after it. (A TorchScript module
    decides at script time: its fast path is not turned off by this.)"""
    import torch

    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled") or not mha.get_fastpath_enabled():
        return
    mha.set_fastpath_enabled(False)
    stack.callback(mha.set_fastpath_enabled, True)


__all__ = ["Capture", "keep_train_flags", "no_transformer_fastpath"]
