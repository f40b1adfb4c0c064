"""What both framework callbacks share: the Monitor's options, made into a Monitor when training starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from ..errors import ConfigError
from ..monitor import Monitor, record_metrics


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

    def _start(self, model: nn.Module, no_forward: tuple[Any, ...] = ()) -> None:
        """Make the Monitor; ``no_forward``: ``forward`` methods that only raise (a base class's)."""
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

    def _step(self, step: int) -> dict[str, float] | None:
        """Advance the monitor; the metrics of the record written, if any."""
        if self.monitor is None:
            return None
        record = self.monitor.step(step)
        return None if record is None else record_metrics(record, self.prefix)

    def _stop(self) -> None:
        if self.monitor is not None:
            self.monitor.close()

    @property
    def history(self) -> pd.DataFrame:
        """The monitor's history (empty before training started)."""
        if self.monitor is None:
            from ..history import history_frame
            return history_frame([])
        return self.monitor.history
