"""Weights & Biases: ``log`` on the active run (or one started here): scalars, a table of sites,
per-site histograms of unit active rates, and the heat map as an image.

Needs ``pip install 'deadrelu[wandb]'``; ``WANDB_MODE=offline`` works as always.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
        self.run = run if run is not None else wandb.init(project="deadrelu")

    def log_point(self, point: LogPoint) -> None:
        wandb = self._wandb
        data: dict[str, Any] = dict(point.scalars)
        data[f"{point.prefix}/sites"] = wandb.Table(dataframe=point.sites.drop(columns=["step"]))
        for tag, rates in point.rates.items():
            if rates.size:
                data[f"{point.prefix}/{tag}/active_rate"] = wandb.Histogram(rates)
        self.run.log(data, step=point.step)

    def log_heat_map(self, figure: Figure, step: int, prefix: str) -> None:
        self.run.log({f"{prefix}/heat_map": self._wandb.Image(figure_pixels(figure))}, step=step)

    def close(self) -> None:
        if self._started:
            self.run.finish()
            self._started = False
