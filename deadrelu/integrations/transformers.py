"""``DeadReluCallback`` for the Hugging Face ``transformers.Trainer``: a ``deadrelu.Monitor`` driven by it.

    from deadrelu.integrations.transformers import DeadReluCallback
    trainer = Trainer(model, args, train_dataset=..., callbacks=[DeadReluCallback(window=20, every=500,
                                                                                  log="runs/exp1/deadrelu.jsonl")])

Steps are optimizer steps (``state.global_step``). Each scan's metrics
(``deadrelu/dead_ratio``, ``deadrelu/<site>/dead_ratio``...) are added to
``trainer.state.log_history`` (saved in ``trainer_state.json``) and to the next ``logs``
the Trainer reports, for the callbacks after this one. The ``report_to`` integrations come
before it, so the loggers they write to are fed here directly: ``tensorboard`` into the
TensorBoard callback's folder (``TENSORBOARD_LOGGING_DIR``, else the newest folder under
``output_dir/runs``), ``mlflow`` to the active MLflow run, ``wandb`` to the active W&B run
(scalars, and per-site histograms and the heat map where the logger keeps them). Only the main
process monitors.
With a probe, ``input_key``/``input_fn`` say how its batches feed the model (a dict
probe batch with ``input_ids`` is fed as keyword arguments through ``input_fn``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import missing_extra

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError:
    raise missing_extra("transformers", "hf", "transformers") from None

from ..loggers import Logger
from ._common import MonitorCallbackBase


def _tensorboard_dir(args: TrainingArguments) -> Path:
    """The folder the Trainer's TensorBoard callback writes to (it made it before this callback ran)."""
    chosen = os.environ.get("TENSORBOARD_LOGGING_DIR")
    if chosen:
        return Path(chosen).expanduser()
    runs = Path(args.output_dir or ".") / "runs"
    made = [folder for folder in runs.iterdir() if folder.is_dir()] if runs.is_dir() else []
    return max(made, key=lambda folder: folder.stat().st_mtime) if made else runs / "deadrelu"


def _adapters(args: TrainingArguments) -> list[Logger]:
    """deadrelu loggers for the ``report_to`` integrations it has an adapter for."""
    report_to = args.report_to if isinstance(args.report_to, (list, tuple)) else [args.report_to]
    adapters: list[Logger] = []
    if "tensorboard" in report_to:
        from ..loggers.tensorboard import TensorBoardLogger
        adapters.append(TensorBoardLogger(_tensorboard_dir(args)))
    if "mlflow" in report_to:
        from ..loggers.mlflow import MlflowLogger
        adapters.append(MlflowLogger())
    if "wandb" in report_to:
        from ..loggers.wandb import WandbLogger
        adapters.append(WandbLogger())
    return adapters


class DeadReluCallback(MonitorCallbackBase, TrainerCallback):
    """Watch units die while a ``transformers.Trainer`` trains (options as ``deadrelu.Monitor``).

    Args:
        probe: fixed data scanned in eval mode every ``every`` steps (or None with ``window``).
        every: scan at optimizer steps that are multiples of this (0 too).
        log: JSONL log path.
        window: without a probe, measure on this many training steps' own forward passes.
        prefix: metric name prefix.
        module: watch this submodule rather than the whole model.
        **options: other ``Monitor`` / ``deadrelu.scan`` options.
    """

    def __init__(self, probe: Any = None, **options: Any) -> None:
        super().__init__(probe, **options)
        self._pending: dict[str, float] = {}

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: Any = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and model is not None and self.monitor is None:
            self._start(model, loggers=_adapters(args))

    def on_substep_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.end_batch()  # a micro-batch of gradient accumulation ended

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        # global_step counts finished optimizer steps: the step just finished is one less.
        step = state.global_step - 1
        metrics = self._step(step)
        if metrics is not None:
            state.log_history.append({**metrics, "step": step})
            self._pending.update(metrics)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs is not None and self._pending:
            logs.update(self._pending)
            self._pending.clear()

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        self._stop()


__all__ = ["DeadReluCallback"]
