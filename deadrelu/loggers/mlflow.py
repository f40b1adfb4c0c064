"""MLflow: metrics on the active run (or one started here), the heat map and a scan's reports as artifacts.

Needs ``pip install 'deadrelu[mlflow]'`` (``mlflow-skinny``; a full ``mlflow`` works too).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..errors import ConfigError, first_line
from .base import LogPoint, Logger, missing_extra

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..result import ScanResult

#: metrics per ``log_batch`` call (MLflow's limit is 1000)
BATCH = 1000


class MlflowLogger(Logger):
    """Log to the active MLflow run; without one, start a run here and end it at ``close``.

    Raises:
        MissingExtraError: mlflow is not installed.
    """

    def __init__(self) -> None:
        try:
            import mlflow
            from mlflow.entities import Metric
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise missing_extra("mlflow", "mlflow") from None
        from mlflow.exceptions import MlflowException
        self._mlflow, self._metric = mlflow, Metric
        active = mlflow.active_run()
        self._started = active is None
        try:
            self.run_id: str = (active or mlflow.start_run(run_name="deadrelu")).info.run_id
            self.client = MlflowClient()
        except MlflowException as exc:  # no tracking store this client can use
            raise ConfigError(f"MLflow cannot start a run at {mlflow.get_tracking_uri()}: {first_line(exc, 160)}",
                              hint="set MLFLOW_TRACKING_URI to your server (http://...), or start a run "
                                   "yourself (mlflow.start_run()) before deadrelu logs to it") from None

    def log_point(self, point: LogPoint) -> None:
        now = int(time.time() * 1000)
        metrics = [self._metric(name, value, now, point.step) for name, value in point.scalars.items()]
        for start in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + BATCH])

    def log_heat_map(self, figure: Figure, step: int, prefix: str) -> None:
        self.client.log_figure(self.run_id, figure, f"{prefix}/heat_map/step_{step:09d}.png")

    def log_report(self, result: ScanResult, prefix: str) -> None:
        from ..render.html import report
        self.client.log_text(self.run_id, report(result), f"{prefix}/report.html")
        self.client.log_text(self.run_id, result.to_json(), f"{prefix}/result.json")

    def close(self) -> None:
        if not self._started:
            return
        active = self._mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            self._mlflow.end_run()
        else:
            self.client.set_terminated(self.run_id)
        self._started = False
