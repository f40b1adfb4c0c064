"""The one logging interface every metrics logger implements, and what it is handed.

A ``Logger`` gets a ``LogPoint`` per monitor record (or per scan): the scalars under their
final names, the history rows of that record, each site's per-unit active rates (when the
scan's result is at hand), and now and then the heat map figure. A new logger is a
subclass that implements ``log_point`` (and ``close`` if it holds a file or a run).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..history import history_frame

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..result import ScanResult

#: a site name becomes a tag of these characters only (TensorBoard tags, MLflow metric names, W&B keys)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
#: longest site part of a metric name (MLflow allows 250 characters in all)
MAX_TAG_CHARS = 180
#: names under the prefix that are not sites, kept free so no site tag shadows them
RESERVED = frozenset({"dead", "dead_ratio", "dormant_ratio", "heat_map", "sites"})
#: per-site scalars, in the order written
SITE_SCALARS = ("dead_ratio", "dormant_ratio", "newly_dead", "revived")


class MissingExtraError(ConfigError, ModuleNotFoundError):
    """A logger's library is not installed (one line naming the extra to install)."""


def missing_extra(library: str, extra: str) -> MissingExtraError:
    """The one-line error for a logger whose library is not installed.

    Args:
        library: what is missing (``"tensorboard"``).
        extra: the deadrelu extra that installs it.

    Returns:
        A ``ConfigError`` (exit 2 in the CLI) that is also a ``ModuleNotFoundError``.
    """
    error = MissingExtraError(f"logging to {library} needs {library}, which is not installed: "
                              f"pip install 'deadrelu[{extra}]'")
    error.name = library
    return error


class TagNames:
    """Site names as tags: letters, digits and ``_.-`` only, unique, the same for a site all run long.

    ``layer1.0.relu#1`` becomes ``layer1.0.relu_1``; a second site that cleans to a tag already
    given (``layer1.0.relu_1`` itself) gets ``_2``, ``_3``... in the order the sites are first seen.
    """

    def __init__(self) -> None:
        self._tags: dict[str, str] = {}
        self._taken: set[str] = set(RESERVED)

    def __call__(self, site: str) -> str:
        tag = self._tags.get(site)
        if tag is None:
            base = _UNSAFE.sub("_", site).strip("._")[:MAX_TAG_CHARS] or "site"
            tag, copy = base, 1
            while tag in self._taken:
                copy += 1
                suffix = f"_{copy}"
                tag = base[:MAX_TAG_CHARS - len(suffix)] + suffix
            self._tags[site] = tag
            self._taken.add(tag)
        return tag

    @property
    def tags(self) -> dict[str, str]:
        """site name -> tag, for every site seen."""
        return dict(self._tags)


@dataclass(frozen=True, eq=False)
class LogPoint:
    """What a logger writes for one record.

    Attributes:
        step: the training step.
        prefix: metric name prefix (``deadrelu``).
        scalars: metric name -> value: ``<prefix>/dead_ratio``, ``<prefix>/dormant_ratio``,
            ``<prefix>/dead`` and per site ``<prefix>/<tag>/dead_ratio``, ``dormant_ratio``,
            ``newly_dead``, ``revived``.
        sites: the record's rows of ``Monitor.history``, with a ``tag`` column.
        rates: site tag -> per-unit active rates (finite only); empty without a scan result.
        result: the scan behind the record, when at hand.
    """

    step: int
    prefix: str
    scalars: dict[str, float]
    sites: pd.DataFrame
    rates: dict[str, np.ndarray] = field(default_factory=dict)
    result: ScanResult | None = None


class Logger:
    """Base of every logger: ``log_point`` is required, the rest do nothing unless overridden."""

    def log_point(self, point: LogPoint) -> None:
        """Write one record's scalars (and whatever else this logger keeps)."""
        raise NotImplementedError

    def log_heat_map(self, figure: Figure, step: int, prefix: str) -> None:
        """Write the heat map of dead share per site over training so far (``render.trend.heat_map``)."""

    def log_report(self, result: ScanResult, prefix: str) -> None:
        """Keep a scan's reports (HTML and JSON), for loggers that store files."""

    def close(self) -> None:
        """Flush and let go of files or runs this logger opened."""


def record_rows(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The last record's rows of ``history_frame(records)``, without rebuilding the whole history.

    Args:
        records: monitor records in the order written; the last one is the new one.

    Returns:
        ``history_frame`` rows of the last record (``newly_dead`` / ``revived`` against each
        site's previous record of the run as it stands).
    """
    from ..history import current_run
    kept = current_run(records)
    last = kept[-1]
    wanted = {site["name"] for site in last["sites"]}
    earlier: list[dict[str, Any]] = []
    for record in reversed(kept[:-1]):  # back to each site's previous record, no further
        if not wanted:
            break
        earlier.append(record)
        wanted -= {site["name"] for site in record["sites"]}
    frame = history_frame([*reversed(earlier), last])
    return frame[frame["step"] == int(last["step"])].reset_index(drop=True)


def make_point(records: list[dict[str, Any]], tags: TagNames, prefix: str = "deadrelu",
               result: ScanResult | None = None) -> LogPoint:
    """The ``LogPoint`` of the last record.

    Args:
        records: monitor records in the order written; the last one is logged.
        tags: the run's site tags (kept across records so a site's tag never changes).
        prefix: metric name prefix.
        result: the scan behind the last record (for per-unit active rates).

    Returns:
        The point: totals as ``history`` sums them, per-site scalars from its rows.
    """
    rows = record_rows(records)
    rows.insert(2, "tag", [tags(name) for name in rows["site"]])
    units = int(rows["units"].sum())
    scalars = {f"{prefix}/dead": float(rows["dead"].sum()),
               f"{prefix}/dead_ratio": float(rows["dead"].sum()) / units if units else 0.0,
               f"{prefix}/dormant_ratio": float(rows["dormant"].sum()) / units if units else 0.0}
    for row in rows.itertuples(index=False):
        values = {"dead_ratio": float(row.dead_ratio),
                  "dormant_ratio": row.dormant / row.units if row.units else 0.0,
                  "newly_dead": float(row.newly_dead), "revived": float(row.revived)}
        for name in SITE_SCALARS:
            scalars[f"{prefix}/{row.tag}/{name}"] = values[name]
    rates: dict[str, np.ndarray] = {}
    if result is not None:
        for site in result.sites:
            active = np.asarray(site.stats.active_rate, dtype=np.float64)
            rates[tags(site.name)] = active[np.isfinite(active)]
    return LogPoint(step=int(records[-1]["step"]), prefix=prefix, scalars=scalars, sites=rows, rates=rates,
                    result=result)


def figure_pixels(figure: Figure, dpi: int = 100) -> np.ndarray:
    """A figure drawn with Agg, as an ``(height, width, 3)`` uint8 array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = FigureCanvasAgg(figure)
    figure.set_dpi(dpi)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
