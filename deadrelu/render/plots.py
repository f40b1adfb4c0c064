"""Matplotlib figures of a result (Agg, no pyplot state): for notebooks, PNG files and the HTML report.

Every function returns a ``matplotlib.figure.Figure`` built without ``pyplot``, so
nothing is registered globally, nothing needs closing, and a notebook shows it as
the cell's value. ``write_pngs`` renders them to PNG files atomically.

Figures stay readable with hundreds of sites: the per-site chart has one horizontal bar
per site in network order with every flagged site named on the y axis (only clean sites
are thinned), legends sit below the plot, and the per-site active-rate histogram turns
into a heat map (one row per site) when there are more sites than ``MAX_OVERLAID``.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from .files import atomic_write_bytes
from .text import visible

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..result import ScanResult, SiteResult

#: at most this many site names are written along an axis; the rest are ticks only
MAX_TICK_LABELS = 40
#: up to this many sites, active-rate histograms are overlaid; above, a heat map
MAX_OVERLAID = 8
#: up to this many sites, one bar per site; above, a filled step line (same picture, much faster)
MAX_BARS = 100
#: site names longer than this are wrapped over lines in labels (never shortened)
LABEL_CHARS = 32
#: bins of the active-rate histograms over [0, 1]
RATE_BINS = 20

DEAD_COLOR = "#d62728"
SATURATED_COLOR = "#ff7f0e"
DORMANT_COLOR = "#7f7f7f"
UNOBSERVED_COLOR = "#dddddd"


_NOTEBOOK_FIGURE: type | None = None


def notebook_figure_class() -> type:
    """``NotebookFigure``: a matplotlib ``Figure`` that displays itself as a PNG in Jupyter.

    Figures here are built without ``pyplot`` (no global state, nothing left open), so
    IPython's inline backend never sees them and a cell ending in ``result.plot()`` would
    show ``<Figure size ...>``. IPython asks an object for ``_repr_png_``, with or without
    ``%matplotlib inline`` (where a type printer for ``Figure`` is registered, it takes
    precedence and draws the same PNG once). Everything else is a plain Figure: ``savefig``
    works in scripts.
    """
    global _NOTEBOOK_FIGURE
    if _NOTEBOOK_FIGURE is None:
        from matplotlib.figure import Figure

        class NotebookFigure(Figure):
            """A ``Figure`` that Jupyter displays by itself (``_repr_png_``); ``savefig`` as any Figure."""

            def _repr_png_(self) -> bytes:
                return figure_png(self)

        _NOTEBOOK_FIGURE = NotebookFigure
    return _NOTEBOOK_FIGURE


def _figure(width: float, height: float) -> Figure:
    return notebook_figure_class()(figsize=(width, height), dpi=100, layout="constrained")


def wrap_name(name: str, width: int = LABEL_CHARS) -> str:
    """A site name over lines of at most ``width`` characters, broken after a ``.``, ``:``, ``#``, ``_`` or
    ``/`` where it can (a run longer than a line is split in chunks): nothing is dropped, so the lines
    joined are the name (``feature_backbone.residual_stage_0.`` / ``pointwise_act``)."""
    if len(name) <= width:
        return name
    lines: list[str] = []
    line = ""
    for token in re.split(r"(?<=[.:#_/])", name):
        while len(token) > width:  # a part with no break in it: chunks, whole characters
            if line:
                lines.append(line)
                line = ""
            lines.append(token[:width])
            token = token[width:]
        if line and len(line) + len(token) > width:
            lines.append(line)
            line = ""
        line += token
    if line:
        lines.append(line)
    return "\n".join(lines)


def name_label(name: str, width: int = LABEL_CHARS) -> str:
    """A site name as a matplotlib label: wrapped (``wrap_name``), each line made safe (``_plain``)."""
    return "\n".join(_plain(line) for line in wrap_name(name, width).split("\n"))


def label_size(names: Iterable[str], width: int = LABEL_CHARS) -> tuple[int, int]:
    """The longest line and the most lines of these names' wrapped labels (``wrap_name``)."""
    wrapped = [wrap_name(name, width).split("\n") for name in names]
    return (max((len(line) for lines in wrapped for line in lines), default=4),
            max((len(lines) for lines in wrapped), default=1))


def _plain(text: str) -> str:
    """Text safe for matplotlib: ``$`` would start mathtext; invisible characters are shown escaped."""
    return visible(text).replace("$", r"\$")


def _tick_positions(count: int, limit: int = MAX_TICK_LABELS) -> np.ndarray:
    if count <= limit:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, limit).round().astype(int))


#: at most this many site names on the per-site chart's y axis (flagged sites first; clean ones thinned)
MAX_SITE_LABELS = 240
#: inches per labelled row of the per-site chart, and its height limits
ROW_INCHES = 0.125
NEVER_ACTIVE_COLOR = "#17becf"
DORMANT_BACK_COLOR = "#c7c7c7"


def labelled_sites(result: ScanResult, limit: int = MAX_SITE_LABELS) -> list[int]:
    """Positions whose names a per-site axis shows: every flagged site (dead, saturated or never
    active; the worst first when there are more than ``limit``), then clean sites evenly thinned."""
    from ..judge.overall import flagged, worst_sites
    sites = list(result.sites)
    position = {id(site): k for k, site in enumerate(sites)}
    marked = [position[id(site)] for site in worst_sites(result) if flagged(site)][:limit]
    room = max(min(MAX_TICK_LABELS, limit) - len(marked), 0)
    clean = [k for k in range(len(sites)) if not flagged(sites[k])]
    if clean and room:
        step = max(1, math.ceil(len(clean) / room))
        marked += clean[::step][:room]
    return sorted(set(marked))


def dead_ratio_by_layer(result: ScanResult) -> Figure:
    """Dead, saturated and dormant share per site, one horizontal bar per site, network order top down.

    Every flagged site is named on the y axis (clean ones are thinned); dormant units
    include the dead ones, so the dead bar is drawn over the dormant bar. LeakyReLU-style
    never-active units (still have a gradient) get their own colour; the saturated panel
    appears only when some site's kind can saturate.

    Args:
        result: the scan.

    Returns:
        A Figure; the shape of death through depth is the first thing to see.
    """
    from ..judge.overall import dead_no_gradient, never_active
    sites = list(result.sites)
    count = len(sites)
    labelled = labelled_sites(result)
    longest, lines = label_size(sites[k].name for k in labelled)
    saturating = any(site.saturation for site in sites)
    # A row as tall as its label: a name wrapped over two lines needs two lines of room.
    rows = max(count, len(labelled) * lines)
    height = min(max(2.8, ROW_INCHES * rows * (1.0 if count <= MAX_SITE_LABELS else 0.6) + 1.9), 36.0)
    width = (6.5 if saturating else 5.0) + 0.055 * longest
    fig = _figure(width, height)
    axes = fig.subplots(1, 2 if saturating else 1, sharey=True, squeeze=False,
                        gridspec_kw={"width_ratios": [2, 1]} if saturating else None)[0]
    positions = np.arange(count)
    dead = np.array([dead_no_gradient(s) / s.units if s.units else 0.0 for s in sites])
    never = np.array([never_active(s) / s.units if s.units else 0.0 for s in sites])
    dormant = np.array([s.dormant_ratio for s in sites])
    main = axes[0]
    series = [(dormant, DORMANT_BACK_COLOR, "dormant (includes dead)"), (dead, DEAD_COLOR, "dead (no gradient)")]
    if never.any():
        series.append((never, NEVER_ACTIVE_COLOR, "never active (leaky: still has gradient)"))
    for values, color, label in series:
        _hbars(main, positions, values, color, label, count)
    main.set_xlabel("share of the site's units", fontsize=9)
    if saturating:
        saturated = np.array([s.saturated_ratio for s in sites])
        _hbars(axes[1], positions, saturated, SATURATED_COLOR, "saturated (at floor / bound)", count)
        axes[1].set_xlabel("saturated share", fontsize=9)
    for axis in axes:
        axis.set_xlim(0, 1.0)
        axis.xaxis.set_major_formatter(_percent_formatter())
        axis.grid(axis="x", alpha=0.3)
        axis.set_axisbelow(True)
        axis.tick_params(axis="x", labelsize=8)
    main.set_ylim(count - 0.5, -0.5)
    main.set_yticks(labelled)
    fontsize = 7 if len(labelled) <= 80 else 6
    main.set_yticklabels([name_label(sites[k].name) for k in labelled], fontsize=fontsize)
    from ..judge.overall import Level, flagged, site_level
    level_color = {Level.FAIL: DEAD_COLOR, Level.WARN: "#b06000"}
    for k, label in zip(labelled, main.get_yticklabels()):
        if flagged(sites[k]):  # flagged names stand out from the thinned clean ones
            label.set_fontweight("bold")
            label.set_color(level_color.get(site_level(sites[k]), "#333333"))
    if count > MAX_BARS:
        main.set_yticks([], minor=True)
    shown = f"all {count} named" if len(labelled) == count else f"{len(labelled)} of {count} named, every flagged one"
    main.set_ylabel(f"site, network order ({shown})", fontsize=8)
    from ..judge.overall import overall
    verdict = overall(result)
    extra = f", {verdict.never_active} never active (leaky)" if verdict.never_active else ""
    fig.suptitle(f"{verdict.level.value}: {verdict.dead} of {verdict.units} units dead ({verdict.dead_ratio:.1%})"
                 f"{extra} over {verdict.sites} sites", fontsize=10, x=0.01, ha="left")
    handles, labels = [], []
    for axis in axes:
        found = axis.get_legend_handles_labels()
        handles += found[0]
        labels += found[1]
    # Below the plot, never over the bars.
    fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    return fig


def _hbars(axis, positions: np.ndarray, values: np.ndarray, color: str, label: str, count: int) -> None:
    if count <= MAX_BARS:
        axis.barh(positions, values, height=0.8, color=color, linewidth=0, label=label)
    else:  # one filled step artist instead of thousands of rectangles: same picture, far faster
        axis.stairs(values, np.arange(count + 1) - 0.5, orientation="horizontal", fill=True, color=color,
                    linewidth=0, label=label)


def _percent_formatter():
    from matplotlib.ticker import PercentFormatter
    return PercentFormatter(1.0, decimals=0)


#: the dead units' own bin sits left of 0, this wide
DEAD_BIN = 0.08


def rate_bins() -> np.ndarray:
    """Bin edges: ``[-DEAD_BIN, 0)`` holds units never active; then ``RATE_BINS`` bins over (0, 1]."""
    return np.concatenate([[-DEAD_BIN], np.linspace(0.0, 1.0, RATE_BINS + 1)])


def rate_histogram(rates: np.ndarray) -> np.ndarray:
    """Unit counts per ``rate_bins()`` bin: first the never-active units, then active rates in (0, 1]."""
    finite = rates[np.isfinite(rates)]
    counts, _ = np.histogram(finite[finite > 0], bins=RATE_BINS, range=(0.0, 1.0))
    return np.concatenate([[int((finite == 0).sum())], counts])


def _rate_axis(axis) -> None:
    """An active-rate x axis with the dead bin left of 0."""
    axis.set_xticks([-DEAD_BIN / 2, 0.2, 0.4, 0.6, 0.8, 1.0], ["dead", "0.2", "0.4", "0.6", "0.8", "1"])
    axis.set_xlim(-DEAD_BIN, 1.0)
    axis.axvline(0.0, color="#444444", linewidth=0.8)


def active_rate_histogram(result: ScanResult) -> Figure:
    """Distribution of per-unit active rates per site.

    Overlaid step histograms for a few sites; for more than ``MAX_OVERLAID`` sites, a heat
    map with one row per site (network order) and the share of its units per rate bin.
    Units never active (dead) get their own bin left of 0.

    Args:
        result: the scan.

    Returns:
        A Figure.
    """
    sites = list(result.sites)
    edges = rate_bins()
    if len(sites) <= MAX_OVERLAID:
        # The legend sits below: one column when names are long, and the figure grows to hold it.
        longest, lines = label_size(site.name for site in sites)
        columns = 2 if longest <= 24 else 1
        fig = _figure(8.0, 3.6 + 0.16 * math.ceil(len(sites) / columns) * lines)
        axis = fig.subplots()
        for site in sites:
            counts = rate_histogram(site.stats.active_rate)
            axis.stairs(counts / max(site.units, 1), edges, linewidth=1.6,
                        label=f"{name_label(site.name)} ({site.kind}; {counts[0]} of {site.units} dead)")
        _rate_axis(axis)
        axis.set_xlabel("active rate (share of a unit's observations in the active region)")
        axis.set_ylabel("share of the site's units")
        axis.yaxis.set_major_formatter(_percent_formatter())
        axis.set_title("Per-unit active rates per site", fontsize=10, loc="left")
        axis.grid(alpha=0.3)
        if sites:
            fig.legend(*axis.get_legend_handles_labels(), fontsize=8, loc="outside lower center", ncol=columns,
                       frameon=False)
        return fig
    count = len(sites)
    labelled = labelled_sites(result)
    longest, lines = label_size(sites[k].name for k in labelled)
    height = min(max(4.0, ROW_INCHES * max(count, len(labelled) * lines) + 1.8), 36.0)
    fig = _figure(7.5 + 0.055 * longest, height)
    axis = fig.subplots()
    matrix = np.zeros((count, RATE_BINS + 1))
    for row, site in enumerate(sites):
        matrix[row] = rate_histogram(site.stats.active_rate) / max(site.units, 1)
    # pcolormesh keeps the narrower dead bin at its true width.
    mesh = axis.pcolormesh(edges, np.arange(count + 1) - 0.5, matrix, cmap="magma_r", vmin=0.0, vmax=1.0)
    axis.set_ylim(count - 0.5, -0.5)
    fig.colorbar(mesh, ax=axis, label="share of the site's units", format=_percent_formatter())
    axis.set_yticks(labelled)
    axis.set_yticklabels([name_label(sites[k].name) for k in labelled], fontsize=7 if len(labelled) <= 80 else 6)
    _rate_axis(axis)
    axis.set_xlabel("active rate (left of 0: dead units)")
    axis.set_ylabel(f"site (network order; {len(labelled)} of {count} names shown)" if count > len(labelled)
                    else "site (network order)")
    axis.set_title("Per-unit active rates, one row per site", fontsize=10, loc="left")
    return fig


def unit_grid(units: int) -> tuple[int, int]:
    """Rows and columns of a near-square grid (wider than tall) holding ``units`` cells."""
    columns = max(1, math.ceil(math.sqrt(units * 2.0)))
    rows = max(1, math.ceil(units / columns))
    return rows, columns


def _resolve(result: ScanResult, site: str | int | SiteResult) -> SiteResult:
    if isinstance(site, (str, int)):
        return result.site(site)
    return site


def saturated_mark(site: SiteResult) -> np.ndarray:
    """Units drawn as saturated: every saturated unit of an ELU/SELU/CELU site (at the floor, which is the
    stronger statement than "never positive"), and for ReLU6/Hardtanh those stuck at a bound but not dead."""
    if site.saturation == "floor":
        return site.verdict.saturated
    return site.verdict.saturated & ~site.verdict.dead


def unit_map(result: ScanResult, site: str | int | SiteResult) -> Figure:
    """One site's units as a grid coloured by active rate; dead units in red, saturated in orange.

    Args:
        result: the scan.
        site: a site name, position, or ``SiteResult``.

    Returns:
        A Figure. Unit ``i`` sits at row ``i // columns``, column ``i % columns``.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    chosen = _resolve(result, site)
    rows, columns = unit_grid(chosen.units)
    rates = np.full(rows * columns, np.nan)
    rates[: chosen.units] = chosen.stats.active_rate
    fig = _figure(min(max(5.0, columns * 0.18 + 2.0), 11.0), min(max(2.6, rows * 0.18 + 1.6), 9.0))
    axis = fig.subplots()
    cmap = _viridis().with_extremes(bad=UNOBSERVED_COLOR)
    image = axis.imshow(np.ma.masked_invalid(rates.reshape(rows, columns)), cmap=cmap, vmin=0.0, vmax=1.0,
                        interpolation="nearest", aspect="equal")
    overlay = np.zeros(rows * columns)
    overlay[: chosen.units][chosen.verdict.dead] = 2
    overlay[: chosen.units][saturated_mark(chosen)] = 1
    marks = np.ma.masked_equal(overlay.reshape(rows, columns), 0)
    axis.imshow(marks, cmap=ListedColormap([SATURATED_COLOR, DEAD_COLOR]), vmin=1, vmax=2, interpolation="nearest",
                aspect="equal")
    fig.colorbar(image, ax=axis, label="active rate", shrink=0.8)
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_xlabel(f"unit i at row i // {columns}, column i % {columns}", fontsize=8)
    from ..judge.overall import leaky
    saturated = f", {chosen.saturated} saturated" if chosen.saturation else ""
    # Never-active units of leaky kinds keep a gradient: named as the verdict line names them, not "dead".
    dead_word = "never active (leaky)" if leaky(chosen) else "dead"
    axis.set_title(f"{name_label(chosen.name, 56)} ({chosen.kind}): {chosen.never_fired} of {chosen.units} "
                   f"{dead_word}{saturated}", fontsize=10, loc="left")
    # Counts of what is painted: a floor-saturated ELU unit is dead too but painted orange.
    painted_dead = int((overlay == 2).sum())
    painted_saturated = int((overlay == 1).sum())
    handles = [Patch(color=DEAD_COLOR, label=f"{dead_word} ({painted_dead})")]
    if chosen.saturation:
        handles.append(Patch(color=SATURATED_COLOR, label=f"saturated ({painted_saturated})"))
    axis.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(0.0, -0.08), ncol=2, frameon=False)
    return fig


def _viridis():
    from matplotlib import colormaps
    return colormaps["viridis"]


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """A figure rendered to PNG bytes (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def safe_filename(name: str, limit: int = 60) -> str:
    """A site name as a file-name part: letters, digits, ``._-`` only (never a path)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "site"
    return cleaned[:limit]


def sites_worth_mapping(result: ScanResult, limit: int) -> list[tuple[int, SiteResult]]:
    """Sites with dead, never-active or saturated units, worst first (the tables' order), at most
    ``limit`` (network index kept)."""
    from ..judge.overall import worst_sites
    position = {id(site): k for k, site in enumerate(result.sites)}
    ranked = [(position[id(s)], s) for s in worst_sites(result) if s.never_fired or s.saturated]
    return ranked[:limit]


def write_pngs(result: ScanResult, directory: str | Path, max_unit_maps: int = 12,
               sites: Sequence[str | int] | None = None) -> list[Path]:
    """Write the plots as PNG files (atomically) into ``directory``.

    Args:
        result: the scan.
        directory: created if missing.
        max_unit_maps: unit maps for at most this many sites with dead/saturated units, worst first.
        sites: unit maps for exactly these sites instead.

    Returns:
        The written paths: ``dead_ratio_by_layer.png``, ``active_rate_histogram.png`` and
        ``unit_map_<NNN>_<site>.png`` (NNN = the site's position in network order).

    Raises:
        OutputError: the folder cannot be written.
    """
    directory = Path(directory)
    written = [atomic_write_bytes(directory / "dead_ratio_by_layer.png", figure_png(dead_ratio_by_layer(result))),
               atomic_write_bytes(directory / "active_rate_histogram.png", figure_png(active_rate_histogram(result)))]
    if sites is not None:
        chosen = [(result.sites.index(result.site(key)), result.site(key)) for key in sites]
    else:
        chosen = sites_worth_mapping(result, max_unit_maps)
    width = max(3, len(str(len(result.sites))))
    for index, site in chosen:
        path = directory / f"unit_map_{index:0{width}d}_{safe_filename(site.name)}.png"
        written.append(atomic_write_bytes(path, figure_png(unit_map(result, site))))
    return written


__all__ = ["labelled_sites", "dead_ratio_by_layer", "active_rate_histogram", "unit_map", "write_pngs", "figure_png", "unit_grid",
           "rate_bins", "rate_histogram", "saturated_mark",
           "wrap_name", "name_label", "label_size", "safe_filename", "sites_worth_mapping"]
