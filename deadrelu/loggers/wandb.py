"""Weights & Biases: ``log`` on the active run (or one started here): scalars, a table of sites,
per-site histograms of unit active rates, and the heat map as an image.

Needs ``pip install 'deadrelu[wandb]'``; ``WANDB_MODE=offline`` works as always.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, first_line
from .base import LogPoint, Logger, figure_pixels, missing_extra

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class WandbLogger(Logger):
    """Log to ``wandb.run``; without one, start a run (project ``deadrelu``) and finish it at ``close``.

    Args:
        run: the run to log to (default: ``wandb.run``, or a new one).

    Raises:
        MissingExtraError: wandb is not installed.
    """

    def __init__(self, run: Any = None) -> None:
        try:
            import wandb
        except ImportError:
            raise missing_extra("wandb", "wandb") from None
        self._wandb = wandb
        run = run if run is not None else wandb.run
        self._started = run is None
        if run is None:
            try:
                run = wandb.init(project="deadrelu")
            except Exception as exc:  # not logged in, no network: wandb's own errors vary by version
                raise ConfigError(f"W&B cannot start a run: {first_line(exc, 160)}",
                                  hint="wandb login, or WANDB_MODE=offline (sync later with wandb sync)") from None
        self.run = run

    def log_point(self, point: LogPoint) -> None:
        wandb = self._wandb
        data: dict[str, Any] = {**point.scalars, f"{point.prefix}/step": point.step}
        data[f"{point.prefix}/sites"] = wandb.Table(dataframe=point.sites.drop(columns=["step"]))
        for tag, rates in point.rates.items():
            if rates.size:
                data[f"{point.prefix}/{tag}/active_rate"] = wandb.Histogram(rates)
        self._log(data, point.step)

    def log_heat_map(self, figure: Figure, step: int, prefix: str) -> None:
        self._log({f"{prefix}/heat_map": self._wandb.Image(figure_pixels(figure))}, step)

    def _log(self, data: dict[str, Any], step: int) -> None:
        # W&B drops a row logged at a step before the run's current one (a Trainer's WandbCallback
        # counts its own steps): then the row goes to the current step, and <prefix>/step says which it is.
        if step >= self.run.step:
            self.run.log(data, step=step)
        else:
            self.run.log(data)

    def close(self) -> None:
        if self._started:
            self.run.finish()
            self._started = False
