"""TensorBoard: scalars, per-site histograms of unit active rates, and the heat map as an image.

Written with TensorBoard's own writer (``torch.utils.tensorboard.SummaryWriter``); needs
``pip install 'deadrelu[tensorboard]'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import LogPoint, Logger, figure_pixels, missing_extra

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: histogram bin edges of per-unit active rates: 20 bins over [0, 1]
RATE_EDGES = np.linspace(0.0, 1.0, 21)


class TensorBoardLogger(Logger):
    """Write into a TensorBoard log folder, or through a writer someone else owns.

    Args:
        log_dir: the folder for the event files (made if missing).
        writer: an open ``SummaryWriter`` to write through instead (Lightning's
            ``TensorBoardLogger.experiment``); it is flushed, never closed, by ``close``.

    Raises:
        MissingExtraError: tensorboard is not installed.
    """

    def __init__(self, log_dir: str | Path | None = None, *, writer: Any = None) -> None:
        if writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise missing_extra("tensorboard", "tensorboard") from None
            writer = SummaryWriter(log_dir=str(log_dir))
            self._owned = True
        else:
            self._owned = False
        self.writer = writer

    def log_point(self, point: LogPoint) -> None:
        for name, value in point.scalars.items():
            self.writer.add_scalar(name, value, point.step)
        for tag, rates in point.rates.items():
            if rates.size:
                self.writer.add_histogram(f"{point.prefix}/{tag}/active_rate", rates, point.step, bins=RATE_EDGES)
        self.writer.flush()

    def log_heat_map(self, figure: Figure, step: int, prefix: str) -> None:
        self.writer.add_image(f"{prefix}/heat_map", figure_pixels(figure), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        if self._owned:
            self.writer.close()
        else:
            self.writer.flush()
