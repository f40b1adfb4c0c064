"""``DeadReluCallback`` for the Hugging Face ``transformers.Trainer``: a ``deadrelu.Monitor`` driven by it.

    from deadrelu.integrations.transformers import DeadReluCallback
    trainer = Trainer(model, args, train_dataset=..., callbacks=[DeadReluCallback(window=20, every=500,
                                                                                  log="runs/exp1/deadrelu.jsonl")])

Steps are optimizer steps (``state.global_step``). Each scan's metrics
(``deadrelu/dead_ratio``, ``deadrelu/dead_ratio/<site>``...) are added to
``trainer.state.log_history`` (saved in ``trainer_state.json``) and to the next ``logs``
the Trainer reports, for the callbacks after this one. Only the main process monitors.
With a probe, ``input_key``/``input_fn`` say how its batches feed the model (a dict
probe batch with ``input_ids`` is fed as keyword arguments through ``input_fn``).
"""

from __future__ import annotations

from typing import Any

from . import missing_extra

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError:
    raise missing_extra("transformers", "hf", "transformers") from None

from ._common import MonitorCallbackBase


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
        if state.is_world_process_zero and model is not None:
            self._start(model)

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
