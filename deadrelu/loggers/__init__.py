"""Send what the Monitor and ``scan`` find to TensorBoard, MLflow or Weights & Biases.

    monitor = deadrelu.Monitor(model, probe=x_probe, every=500, tensorboard="runs/exp1", mlflow=True)
    deadrelu.loggers.log_scan(result, tensorboard="runs/exp1", step=1000)

Every logger implements the one interface in ``base`` (``Logger.log_point``); each library
is imported only when its logger is made, and a missing one is one line naming the extra
(``pip install 'deadrelu[tensorboard]'``). Metric names: ``deadrelu/dead_ratio``,
``deadrelu/dormant_ratio``, and per site ``deadrelu/<site>/dead_ratio``, ``.../dormant_ratio``,
``.../newly_dead``, ``.../revived`` (site names cleaned into unique tags, see ``TagNames``).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..errors import DeadReluError, first_line
from .base import LogPoint, Logger, MissingExtraError, TagNames, make_point, missing_extra, record_rows

if TYPE_CHECKING:
    from ..result import ScanResult

#: the heat map is drawn every this many records (and once more at the end)
HEAT_MAP_EVERY = 10


class LoggerError(DeadReluError):
    """A logger failed while ``scan`` was logging to it (an MLflow server down, a full disk)."""


class LoggerSet:
    """The loggers of one run, fed one record at a time.

    Args:
        loggers: the loggers (``TensorBoardLogger``, ``MlflowLogger``, ``WandbLogger`` or your own).
        prefix: metric name prefix.
        heat_map_every: draw the heat map every this many records, and at ``close`` when
            records came after the last one drawn (0: never).
        on_error: what a logger's own failure does. ``"warn"`` (training): one ``RuntimeWarning``
            per logger, the failure counted in ``failures``, the other loggers and the run go on and
            the failing logger is tried again next record. ``"raise"`` (one scan): a ``LoggerError``.
    """

    def __init__(self, loggers: Sequence[Logger], prefix: str = "deadrelu", heat_map_every: int = HEAT_MAP_EVERY,
                 on_error: str = "warn") -> None:
        if on_error not in ("warn", "raise"):
            raise ValueError(f"on_error must be 'warn' or 'raise', not {on_error!r}")
        self.on_error = on_error
        #: failures per logger class name (``on_error="warn"``)
        self.failures: dict[str, int] = {}
        self.loggers = list(loggers)
        self.prefix = prefix
        self.heat_map_every = heat_map_every
        self.tags = TagNames()
        self._records: list[dict[str, Any]] = []
        self._since_heat_map = 0

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def log(self, records: list[dict[str, Any]], result: ScanResult | None = None) -> LogPoint | None:
        """Log the last of ``records`` (all records so far, for ``newly_dead`` and the heat map).

        Returns:
            The point logged, or None without loggers.
        """
        if not self.loggers:
            return None
        point = make_point(records, self.tags, self.prefix, result)
        for logger in self.loggers:
            self._guarded(logger, f"step {point.step}", lambda: logger.log_point(point))
        self._records = records
        self._since_heat_map += 1
        if self.heat_map_every and self._since_heat_map >= self.heat_map_every:
            self._heat_map()
        return point

    def log_report(self, result: ScanResult) -> None:
        """Hand a scan's reports to the loggers that keep files (MLflow artifacts)."""
        for logger in self.loggers:
            self._guarded(logger, "the reports", lambda: logger.log_report(result, self.prefix))

    def close(self) -> None:
        """Draw the last heat map if records came since the last one, then close every logger."""
        try:
            if self.loggers and self.heat_map_every and self._since_heat_map:
                self._heat_map()
        finally:
            for logger in self.loggers:
                self._guarded(logger, "close", logger.close)
            self.loggers = []

    def _heat_map(self) -> None:
        from ..history import Trend
        from ..render.trend import heat_map
        figure = heat_map(Trend.from_records(self._records))
        step = int(self._records[-1]["step"])
        for logger in self.loggers:
            self._guarded(logger, f"the heat map at step {step}", lambda: logger.log_heat_map(figure, step, self.prefix))
        self._since_heat_map = 0

    def _guarded(self, logger: Logger, what: str, call: Callable[[], Any]) -> None:
        """Run one logger call; its failure warns once per logger (training goes on) or raises."""
        try:
            call()
        except Exception as exc:  # a logger's library or server failing; KeyboardInterrupt still stops
            name = type(logger).__name__
            if self.on_error == "raise":
                raise LoggerError(f"the {name} failed at {what}: {first_line(exc)}",
                                  hint="check the logger's destination (tracking URI, folder, network); "
                                       "the scan itself finished") from exc
            self.failures[name] = self.failures.get(name, 0) + 1
            if self.failures[name] == 1:
                warnings.warn(f"deadrelu: the {name} failed at {what} ({first_line(exc)}); training goes on, "
                              f"the monitor's own log keeps every record, and this logger is tried again at "
                              f"each record (failures are counted in LoggerSet.failures)", RuntimeWarning,
                              stacklevel=3)


def check_installed(*, tensorboard: bool = False, mlflow: bool = False, wandb: bool = False) -> None:
    """Fail before a long scan, not after it, when a logger's library is missing.

    Raises:
        MissingExtraError: naming the extra to install.
    """
    from importlib.util import find_spec
    for wanted, module, extra in ((tensorboard, "tensorboard", "tensorboard"), (mlflow, "mlflow", "mlflow"),
                                  (wandb, "wandb", "wandb")):
        if not wanted:
            continue
        try:
            found = sys.modules[module] is not None if module in sys.modules else find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise missing_extra(module, extra)


def open_loggers(*, tensorboard: str | Path | None = None, mlflow: bool = False, wandb: bool = False,
                 loggers: Sequence[Logger] = (), prefix: str = "deadrelu",
                 heat_map_every: int = HEAT_MAP_EVERY) -> LoggerSet:
    """Make the loggers asked for.

    Args:
        tensorboard: write TensorBoard event files into this folder.
        mlflow: log to the active MLflow run (or start one).
        wandb: log to the active W&B run (or start one).
        loggers: more loggers of your own (``deadrelu.loggers.Logger`` subclasses).
        prefix: metric name prefix.
        heat_map_every: draw the heat map every this many records (0: never).

    Returns:
        A ``LoggerSet`` (empty, and free, when nothing is asked for).

    Raises:
        MissingExtraError: a library asked for is not installed (a ``ConfigError``).
    """
    made: list[Logger] = []
    try:
        if tensorboard is not None:
            from .tensorboard import TensorBoardLogger
            made.append(TensorBoardLogger(tensorboard))
        if mlflow:
            from .mlflow import MlflowLogger
            made.append(MlflowLogger())
        if wandb:
            from .wandb import WandbLogger
            made.append(WandbLogger())
    except BaseException:
        for logger in made:
            logger.close()
        raise
    return LoggerSet([*made, *loggers], prefix=prefix, heat_map_every=heat_map_every)


def log_scan(result: ScanResult, *, step: int = 0, tensorboard: str | Path | None = None, mlflow: bool = False,
             wandb: bool = False, loggers: Sequence[Logger] = (), prefix: str = "deadrelu") -> LogPoint | None:
    """Log one scan as one step: the Monitor's scalars, histograms and heat map, plus (MLflow) its reports.

    Args:
        result: the scan.
        step: the step to log it at.
        tensorboard: write TensorBoard event files into this folder.
        mlflow: log to the active MLflow run (or start one), with the HTML report and JSON as artifacts.
        wandb: log to the active W&B run (or start one).
        loggers: more loggers of your own.
        prefix: metric name prefix.

    Returns:
        The point logged (None when no logger was asked for).
    """
    from ..history import Mode, record_from_result
    target = open_loggers(tensorboard=tensorboard, mlflow=mlflow, wandb=wandb, loggers=loggers, prefix=prefix,
                          heat_map_every=1)
    target.on_error = "raise"  # one scan asked to log: a failure is the command's error, not a warning
    try:
        point = target.log([record_from_result(result, step, Mode.PROBE)], result)
        target.log_report(result)
    finally:
        target.close()
    return point


__all__ = ["Logger", "LogPoint", "LoggerError", "LoggerSet", "MissingExtraError", "TagNames", "check_installed", "log_scan", "make_point",
           "missing_extra", "open_loggers", "record_rows", "HEAT_MAP_EVERY"]
