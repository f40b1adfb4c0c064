"""What both framework callbacks share: the Monitor's options, made into a Monitor when training starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from torch import nn

from ..errors import ConfigError
from ..loggers import Logger, LoggerSet, make_point
from ..monitor import Monitor


class MonitorCallbackBase:
    """Holds ``deadrelu.Monitor`` options until the framework hands over the model.

    Args:
        probe: fixed data scanned in eval mode every ``every`` steps (or None with ``window``).
        every: scan at optimizer steps that are multiples of this (0 too).
        log: JSONL log path (appended to; a resumed run continues it).
        window: without a probe, measure on this many training steps' own forward passes.
        prefix: metric name prefix for the framework's logger.
        module: watch this submodule (``"net"``) rather than the whole model; needed in probe
            mode when the framework's module has no ``forward`` of its own.
        **options: any other ``Monitor`` / ``deadrelu.scan`` option (``tau``, ``batch_size``...).
    """

    def __init__(self, probe: Any = None, *, every: int = 500, log: str | Path | None = None,
                 window: int | None = None, prefix: str = "deadrelu", module: str | None = None,
                 **options: Any) -> None:
        if (probe is None) == (window is None):
            raise ConfigError(f"{type(self).__name__} needs exactly one of probe= (a fixed data set scanned in eval "
                              "mode) and window=K (measure on K training steps' own forward passes)")
        self.options = {"probe": probe, "every": every, "log": log, "window": window, **options}
        self.prefix = prefix
        self.module = module
        self.monitor: Monitor | None = None
        self.loggers = LoggerSet([], prefix=prefix)

    def _start(self, model: nn.Module, no_forward: tuple[Any, ...] = (), loggers: Sequence[Logger] = ()) -> None:
        """Make the Monitor; ``no_forward``: ``forward`` methods that only raise (a base class's);
        ``loggers``: adapters over the framework's own loggers, fed every record."""
        if self.monitor is not None:
            return
        if self.module is not None:
            try:
                model = model.get_submodule(self.module)
            except AttributeError:
                children = ", ".join(name for name, _ in model.named_children()) or "none"
                raise ConfigError(f"{type(self).__name__}(module={self.module!r}): {type(model).__name__} has no "
                                  f"such submodule", hint=f"its children: {children}") from None
        elif self.options["probe"] is not None and type(model).forward in (nn.Module.forward, *no_forward):
            children = [name for name, _ in model.named_children()]
            raise ConfigError(f"{type(self).__name__}: {type(model).__name__} has no forward(), so a probe cannot "
                              "be fed to it", hint=f"name the network to scan: {type(self).__name__}(..., "
                                                   f"module={(children or ['net'])[0]!r})")
        self.monitor = Monitor(model, **self.options)
        self.loggers = LoggerSet(loggers, prefix=self.prefix)

    def _step(self, step: int) -> dict[str, float] | None:
        """Advance the monitor; the record written, if any, goes to the loggers and its scalars are returned."""
        if self.monitor is None:
            return None
        if self.monitor.step(step) is None:
            return None
        records, result = self.monitor.records, self.monitor.last_result
        point = self.loggers.log(records, result) or make_point(records, self.loggers.tags, self.prefix)
        return point.scalars

    def _stop(self) -> None:
        if self.monitor is not None:
            try:
                written = len(self.monitor.records)
                self.monitor.close()  # a window with steps in it is recorded here
                if len(self.monitor.records) > written and self.loggers:
                    self.loggers.log(self.monitor.records, self.monitor.last_result)
            finally:
                self.loggers.close()

    @property
    def history(self) -> pd.DataFrame:
        """The monitor's history (empty before training started)."""
        if self.monitor is None:
            from ..history import history_frame
            return history_frame([])
        return self.monitor.history
