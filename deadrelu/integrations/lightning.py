"""``DeadReluCallback`` for PyTorch Lightning: a ``deadrelu.Monitor`` driven by the Trainer.

    from deadrelu.integrations.lightning import DeadReluCallback
    trainer = L.Trainer(callbacks=[DeadReluCallback(probe=x_probe, every=500, log="runs/exp1/deadrelu.jsonl")])

Steps are optimizer steps (``trainer.global_step``; with gradient accumulation one step
spans several batches). Each scan goes to every logger of the Trainer: the scalars
(``deadrelu/dead_ratio``, ``deadrelu/<site>/dead_ratio``...) through ``log_metrics``, and to a
``TensorBoardLogger`` also the per-site active-rate histograms and the heat map (through its
``SummaryWriter``, by ``deadrelu.loggers.tensorboard``). With a
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

from ..loggers import LogPoint, Logger
from ._common import MonitorCallbackBase


class _LightningMetrics(Logger):
    """A Lightning logger of any kind (CSV, MLflow, W&B...), fed the scalars through ``log_metrics``."""

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def log_point(self, point: LogPoint) -> None:
        self.logger.log_metrics(point.scalars, step=point.step)


def _adapters(trainer: Trainer) -> list[Logger]:
    """One deadrelu logger per logger of the Trainer."""
    try:
        from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoard
    except ImportError:
        from pytorch_lightning.loggers import TensorBoardLogger as LightningTensorBoard  # type: ignore[no-redef,assignment]
    adapters: list[Logger] = []
    for logger in trainer.loggers:
        if isinstance(logger, LightningTensorBoard):
            from ..loggers.tensorboard import TensorBoardLogger
            adapters.append(TensorBoardLogger(writer=logger.experiment))
        else:
            adapters.append(_LightningMetrics(logger))
    return adapters


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
            self._start(pl_module, no_forward=(LightningModule.forward,), loggers=_adapters(trainer))

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # global_step counts finished optimizer steps: the step just finished is one less.
        self._step(trainer.global_step - 1)  # a record goes to the Trainer's loggers at its own step

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._stop()  # hooks off the model and the log closed; what was logged stays


__all__ = ["DeadReluCallback"]
