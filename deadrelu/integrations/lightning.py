"""``DeadReluCallback`` for PyTorch Lightning: a ``deadrelu.Monitor`` driven by the Trainer.

    from deadrelu.integrations.lightning import DeadReluCallback
    trainer = L.Trainer(callbacks=[DeadReluCallback(probe=x_probe, every=500, log="runs/exp1/deadrelu.jsonl")])

Steps are optimizer steps (``trainer.global_step``; with gradient accumulation one step
spans several batches). Each scan's totals and per-site dead shares go to every logger
of the Trainer (``deadrelu/dead_ratio``, ``deadrelu/dead_ratio/<site>``...). With a
probe and a LightningModule without ``forward``, name the network: ``module="net"``. Only the
global-zero process monitors. Validation forward passes (eval mode) are never counted in
window mode.
"""

from __future__ import annotations

from typing import Any

from . import missing_extra

try:
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError:  # the standalone package
    try:
        from pytorch_lightning import Callback, LightningModule, Trainer  # type: ignore[no-redef]
    except ImportError:
        raise missing_extra("PyTorch Lightning", "lightning", "lightning") from None

from ._common import MonitorCallbackBase


class DeadReluCallback(MonitorCallbackBase, Callback):
    """Watch units die while a LightningModule trains (options as ``deadrelu.Monitor``).

    Args:
        probe: fixed data scanned in eval mode every ``every`` steps (or None with ``window``).
        every: scan at optimizer steps that are multiples of this (0 too).
        log: JSONL log path.
        window: without a probe, measure on this many training steps' own forward passes.
        prefix: metric name prefix.
        module: watch this submodule (``"net"``); needed with a probe when the
            LightningModule has no ``forward`` (its ``training_step`` calls ``self.net``).
        **options: other ``Monitor`` / ``deadrelu.scan`` options.
    """

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            self._start(pl_module, no_forward=(LightningModule.forward,))

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # global_step counts finished optimizer steps: the step just finished is one less.
        metrics = self._step(trainer.global_step - 1)
        if metrics is not None:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step - 1)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._stop()  # hooks off the model and the log closed; what was logged stays


__all__ = ["DeadReluCallback"]
