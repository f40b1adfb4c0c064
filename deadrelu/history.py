"""Dead units over time as data: monitor log records, the history frame, and trends.

Torch-free, so a monitor log or a set of saved results can be read and rendered
without the model. A *record* is one scan made during training (one JSON object per
line of the monitor's JSONL log); a ``Trend`` is a sites x points table of dead
counts built from records or from scan results of several checkpoints.

Log records (``"format": "deadrelu-monitor"``, version 1) hold, per site, the dead
unit indices, so ``newly_dead`` and ``revived`` are exact unit-by-unit comparisons
with the previous record, also across a resumed run.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import pandas as pd

from .errors import DataLoadError
from .jsontext import JsonTextError, parse_json

if TYPE_CHECKING:
    from .result import ScanResult

LOG_FORMAT = "deadrelu-monitor"
LOG_VERSION = 1
#: columns of ``Monitor.history`` and ``history_frame``, in this order
HISTORY_COLUMNS = ("step", "site", "kind", "units", "dead", "dead_ratio", "saturated", "dormant",
                   "active_rate_mean", "newly_dead", "revived", "recycled")
#: Deepest nesting a log record has (record > sites > site > dead_units), with room to spare.
MAX_RECORD_DEPTH = 16
#: Largest count or step a record may hold: exact in a float64 (the trend's tables) and an int64.
LARGEST_COUNT = 2 ** 53
#: Most cells (sites x points) a trend's tables may have: 80 MB per table. A real run has
#: ~100 sites x ~10,000 records; a log with a new site name in every record has sites x
#: records cells and would otherwise ask for terabytes.
MAX_TREND_CELLS = 10_000_000


class Mode:
    """How a record's statistics were made."""

    #: a fixed probe set scanned in eval mode
    PROBE = "probe"
    #: the training forward passes of a window of steps, in train mode
    WINDOW = "window"


def record_from_result(result: ScanResult, step: int, mode: str, *, window_steps: int | None = None) -> dict[str, Any]:
    """One log record from a scan made at a training step.

    Args:
        result: the scan (of the probe set, or of a window of training forward passes).
        step: the training step it belongs to.
        mode: ``"probe"`` (eval mode, fixed data) or ``"window"`` (train mode, training data).
        window_steps: in window mode, how many training steps the statistics cover.

    Returns:
        A JSON-ready dict: step, mode, train_mode, time, thresholds and per-site counts
        with the dead unit indices.
    """
    thresholds = result.settings.thresholds
    return {
        "format": LOG_FORMAT, "version": LOG_VERSION, "step": int(step), "mode": mode,
        # Window statistics come from the training forward passes: dropout on, BatchNorm in batch statistics.
        "train_mode": mode == Mode.WINDOW,
        "window_steps": window_steps,
        "samples": result.data.get("samples"),
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"class": result.model.get("class")},
        "settings": {"dead_threshold": thresholds.dead_threshold, "tau": thresholds.tau,
                     "saturation": thresholds.saturation, "granularity": result.settings.granularity.value},
        "sites": [{
            "name": site.name, "kind": site.kind, "units": site.units, "dead": site.dead,
            "saturated": site.saturated, "dormant": site.dormant,
            "active_rate_mean": site.active_rate_mean if math.isfinite(site.active_rate_mean) else None,
            "dead_units": site.dead_units,
        } for site in result.sites],
    }


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a monitor log, in the order written.

    A last line cut short by a crash is left out; any other unreadable line is an error.

    Args:
        path: the JSONL file written by ``deadrelu.Monitor``.

    Returns:
        The records (dicts as ``record_from_result`` makes them).

    Raises:
        DataLoadError: the file is missing, or holds something other than monitor records.
    """
    path = Path(path)
    hint = "a monitor log is written by deadrelu.Monitor(..., log=PATH)"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataLoadError(f"monitor log not found: {path}", hint=hint) from None
    except UnicodeDecodeError:
        raise DataLoadError(f"{path} is not a deadrelu monitor log (not UTF-8 text)", hint=hint) from None
    except OSError as exc:
        raise DataLoadError(f"cannot read {path}: {exc.strerror or exc}", hint=hint) from None
    records: list[dict[str, Any]] = []
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    for position, (number, line) in enumerate(numbered):
        try:
            record = parse_json(line, MAX_RECORD_DEPTH)
        except JsonTextError as exc:
            if position == len(numbered) - 1 and exc.reason.startswith("not JSON"):
                break  # a run killed mid-write: keep everything before it
            what = "is not JSON" if exc.reason.startswith("not JSON") else f"holds {exc.reason}"
            raise DataLoadError(f"{path}:{number} {what}", hint=hint) from None
        if not isinstance(record, dict) or record.get("format") != LOG_FORMAT:
            raise DataLoadError(f"{path}:{number} is not a deadrelu monitor record", hint=hint)
        if record.get("version") != LOG_VERSION:
            raise DataLoadError(f"{path}:{number}: unsupported monitor log version {_shown(record.get('version'))}",
                                hint=f"this deadrelu reads version {LOG_VERSION}")
        check_record(record, f"{path}:{number}")
        records.append(record)
    check_table_size(len({site["name"] for record in records for site in record["sites"]}), len(records), str(path))
    return records


def check_table_size(sites: int, points: int, source: str) -> None:
    """Refuse a trend whose sites x points tables would exceed ``MAX_TREND_CELLS``.

    Raises:
        DataLoadError: naming ``source`` and both counts.
    """
    if sites * points > MAX_TREND_CELLS:
        raise DataLoadError(f"{source}: {sites:,} distinct sites over {points:,} points, more than the "
                            f"{MAX_TREND_CELLS:,} cells a trend table holds",
                            hint="a site name should repeat from point to point; was it written by deadrelu?")


def check_record(record: dict[str, Any], where: str) -> None:
    """Check the fields of a monitor record that histories and trends read.

    ``step`` is an integer; ``sites`` a list of objects, each with a string ``name`` and
    ``kind``, integer counts with ``dead``, ``saturated`` and ``dormant`` at most
    ``units``, ``active_rate_mean`` a finite number or null, and ``dead_units`` (when
    present) a list of unit indices below ``units``.

    Args:
        record: one parsed log line.
        where: ``path:line``, for messages.

    Raises:
        DataLoadError: naming ``where`` and the first bad field.
    """
    hint = "the log was edited or not written by deadrelu.Monitor; remove the line or write the log again"

    def bad(field: str, wanted: str, value: Any) -> DataLoadError:
        return DataLoadError(f"{where}: {field} must be {wanted}, got {_shown(value)}", hint=hint)

    if "step" not in record:
        raise DataLoadError(f"{where}: the record has no step", hint=hint)
    if not _is_count(record["step"], signed=True):
        raise bad("step", "an integer (the training step)", record["step"])
    sites = record.get("sites")
    if not isinstance(sites, list):
        raise bad("sites", "a list of sites", sites)
    for index, site in enumerate(sites):
        field = f"sites[{index}]"
        if not isinstance(site, dict):
            raise bad(field, "an object", site)
        for name in ("name", "kind"):
            if not isinstance(site.get(name), str):
                raise bad(f"{field}.{name}", "a string", site.get(name))
        for name in ("units", "dead", "saturated", "dormant"):
            if not _is_count(site.get(name)):
                raise bad(f"{field}.{name}", "an integer >= 0", site.get(name))
            if name != "units" and site[name] > site["units"]:
                raise bad(f"{field}.{name}", f"at most units ({site['units']})", site[name])
        rate = site.get("active_rate_mean")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float))
                                 or not math.isfinite(rate)):
            raise bad(f"{field}.active_rate_mean", "a finite number or null", rate)
        dead_units = site.get("dead_units", [])
        if not isinstance(dead_units, list) or not all(_is_count(unit) and unit < site["units"]
                                                       for unit in dead_units):
            raise bad(f"{field}.dead_units", f"a list of unit indices below {site['units']}", dead_units)


def _is_count(value: Any, signed: bool = False) -> bool:
    """An integer (not a bool) a float64 and an int64 hold exactly; >= 0 unless ``signed``."""
    return (isinstance(value, int) and not isinstance(value, bool) and abs(value) <= LARGEST_COUNT
            and (signed or value >= 0))


def _shown(value: Any) -> str:
    """A value from a log, cut short for a message."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10 ** 30 else f"an integer of {len(str(value))} digits"
    return text if len(text) <= 60 else text[:57] + "..."


def current_run(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of the run as it stands: a record whose step is not after the previous
    one (a run resumed from an earlier checkpoint) replaces every record from that step on."""
    kept: list[dict[str, Any]] = []
    for record in records:
        while kept and kept[-1]["step"] >= record["step"]:
            kept.pop()
        kept.append(record)
    return kept


def history_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per (step, site) with dead counts and unit-level changes.

    Args:
        records: monitor records in the order written (``read_log`` or ``Monitor.records``).

    Returns:
        A DataFrame with columns ``HISTORY_COLUMNS``. ``newly_dead`` / ``revived`` count units
        dead now and not at the site's previous record / dead then and not now; at a
        site's first record every dead unit is newly dead. ``recycled``: units a
        ``Monitor(recycle=...)`` recycled right after this record's scan (0 otherwise).
    """
    rows: list[dict[str, Any]] = []
    previous: dict[str, set[int]] = {}
    for record in current_run(records):
        for site in record["sites"]:
            dead_now = set(site.get("dead_units", ()))
            dead_before = previous.get(site["name"], set())
            units = int(site["units"])
            rows.append({
                "step": int(record["step"]), "site": site["name"], "kind": site["kind"], "units": units,
                "dead": int(site["dead"]), "dead_ratio": site["dead"] / units if units else 0.0,
                "saturated": int(site["saturated"]), "dormant": int(site["dormant"]),
                "active_rate_mean": np.nan if site.get("active_rate_mean") is None else float(site["active_rate_mean"]),
                "newly_dead": len(dead_now - dead_before), "revived": len(dead_before - dead_now),
                "recycled": int(site.get("recycled", 0)),
            })
            previous[site["name"]] = dead_now
    frame = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    return frame.astype({"step": "int64", "units": "int64", "dead": "int64", "saturated": "int64",
                         "dormant": "int64", "newly_dead": "int64", "revived": "int64", "recycled": "int64",
                         "dead_ratio": "float64", "active_rate_mean": "float64"})


# -- trends -------------------------------------------------------------------------------

_NUMBER = re.compile(r"\d+")


def step_of(name: str) -> int | None:
    """The training step in a checkpoint's file name: the last number in its stem
    (``step_000200.pt`` -> 200, ``epoch=3-step=1500.ckpt`` -> 1500); None without one."""
    numbers = _NUMBER.findall(Path(name).stem)
    return int(numbers[-1]) if numbers else None


@dataclass(frozen=True, eq=False)
class Trend:
    """Dead units per site over a sequence of points in training (checkpoints or log records).

    Attributes:
        labels: one name per point (checkpoint path, or ``step N`` for a log record).
        steps: the training step of each point, where known.
        sites: site names, in the order first seen.
        kinds: activation kind per site.
        units: units per (site, point); NaN where the site is absent at that point.
        dead: dead units per (site, point); NaN where absent.
        source: ``"checkpoints"`` or ``"monitor log"``.
    """

    labels: tuple[str, ...]
    steps: tuple[int | None, ...]
    sites: tuple[str, ...]
    kinds: tuple[str, ...]
    units: np.ndarray
    dead: np.ndarray
    source: str

    @property
    def dead_ratio(self) -> np.ndarray:
        """Dead share per (site, point); NaN where the site is absent."""
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = self.dead / self.units
        ratio[self.units == 0] = 0.0
        return ratio

    @property
    def total_dead_ratio(self) -> np.ndarray:
        """Dead share over all sites present, per point."""
        units = np.nansum(self.units, axis=0)
        return np.where(units > 0, np.nansum(self.dead, axis=0) / np.where(units > 0, units, 1), 0.0)

    def worst_sites(self, count: int = 5) -> list[int]:
        """Indices of the sites with the highest dead share at any point (ties: later points, network order)."""
        ratio = np.nan_to_num(self.dead_ratio, nan=0.0)
        if not len(self.sites):
            return []
        order = sorted(range(len(self.sites)), key=lambda k: (-ratio[k].max(), -ratio[k][-1], k))
        return [k for k in order[:count] if ratio[k].max() > 0] or order[:min(count, 1)]

    def to_frame(self) -> pd.DataFrame:
        """One row per (point, site present): label, step, site, kind, units, dead, dead_ratio."""
        ratio = self.dead_ratio
        rows = [{"label": label, "step": step, "site": site, "kind": kind, "units": int(self.units[k, p]),
                 "dead": int(self.dead[k, p]), "dead_ratio": float(ratio[k, p])}
                for p, (label, step) in enumerate(zip(self.labels, self.steps))
                for k, (site, kind) in enumerate(zip(self.sites, self.kinds)) if not np.isnan(self.units[k, p])]
        return pd.DataFrame(rows, columns=["label", "step", "site", "kind", "units", "dead", "dead_ratio"])

    @classmethod
    def from_results(cls, results: Sequence[ScanResult], labels: Sequence[str],
                     steps: Sequence[int | None] | None = None) -> Trend:
        """A trend over scan results (one per checkpoint), in the order given.

        Args:
            results: the scans.
            labels: a name per scan (the checkpoint path).
            steps: the step per scan (default: the number in each label).
        """
        from .judge.overall import dead_no_gradient
        # Dead as the scan's verdict line counts it: never-active units of leaky kinds keep a gradient.
        points = [[(site.name, site.kind, site.units, dead_no_gradient(site)) for site in result.sites]
                  for result in results]
        return cls._build(points, labels, steps if steps is not None else [step_of(label) for label in labels],
                          "checkpoints")

    @classmethod
    def from_records(cls, records: Iterable[dict[str, Any]]) -> Trend:
        """A trend over monitor log records (of the current run; see ``current_run``)."""
        kept = current_run(records)
        from .kinds import NEGATIVE_SIDE_KINDS
        # The log's "dead" counts leaky kinds' never-active units too; the scan's verdict line does not.
        points = [[(site["name"], site["kind"], int(site["units"]),
                    0 if site["kind"] in NEGATIVE_SIDE_KINDS else int(site["dead"])) for site in record["sites"]]
                  for record in kept]
        steps = [int(record["step"]) for record in kept]
        return cls._build(points, [f"step {step}" for step in steps], steps, "monitor log")

    @classmethod
    def _build(cls, points: list[list[tuple[str, str, int, int]]], labels: Sequence[str],
               steps: Sequence[int | None], source: str) -> Trend:
        names: dict[str, str] = {}
        for point in points:
            for name, kind, _units, _dead in point:
                names.setdefault(name, kind)
        check_table_size(len(names), len(points), source)
        index = {name: k for k, name in enumerate(names)}
        units = np.full((len(names), len(points)), np.nan)
        dead = np.full((len(names), len(points)), np.nan)
        for p, point in enumerate(points):
            for name, _kind, site_units, site_dead in point:
                units[index[name], p] = site_units
                dead[index[name], p] = site_dead
        return cls(labels=tuple(labels), steps=tuple(steps), sites=tuple(names), kinds=tuple(names.values()),
                   units=units, dead=dead, source=source)
