"""Dead units over training: a terminal table, a heat map, the worst sites' curves, an HTML page.

Every function takes a ``deadrelu.history.Trend`` (from checkpoints' scan results or a
monitor log). Figures are built without ``pyplot``, like ``render.plots``; the terminal
table shows every site name whole and fits the width by showing at most as many points as
fit beside them (first and last always) under short headers, with a legend naming each
point in full.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from .files import atomic_write_bytes, atomic_write_text
from .plots import _figure, _percent_formatter, _tick_positions, figure_png, label_size, name_label
from .text import visible

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..history import Trend

#: the site column is never narrower than this (names are never cut: it is as wide as the longest)
SITE_WIDTH = 4
#: each point column of the terminal table is this wide ("100%" / "12.5%")
POINT_WIDTH = 5
#: terminal table rows; with more sites, those that ever had dead units are shown
MAX_ROWS = 40
#: heat map cells are labelled with their share up to this many cells
MAX_ANNOTATED = 300
#: sites drawn in the worst-sites figure
WORST_SITES = 5


def abbreviate_step(step: int) -> str:
    """A step number in at most 5 characters: ``950``, ``1.5k``, ``12k``, ``1.2M``."""
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if step >= size:
            value = step / size
            text = f"{value:.1f}".rstrip("0").rstrip(".") if value < 10 else f"{value:.0f}"
            return text + suffix
    return str(step)


def point_headers(trend: Trend) -> list[str]:
    """Short column names: abbreviated steps when every point has a distinct one, else ``#1``, ``#2``..."""
    if all(step is not None for step in trend.steps):
        headers = [abbreviate_step(int(step)) for step in trend.steps]  # type: ignore[arg-type]
        if len(set(headers)) == len(headers) and all(len(h) <= POINT_WIDTH for h in headers):
            return headers
    return [f"#{k + 1}" for k in range(len(trend.labels))]


def site_width(trend: Trend) -> int:
    """The site column's width: the longest name shown (names are shown whole)."""
    return max([SITE_WIDTH, len("all sites"), *(len(visible(name)) for name in trend.sites)])


def shown_points(trend: Trend, width: int) -> list[int]:
    """Indices of the points that fit in ``width`` columns beside the full site names: first and last,
    then the points where the dead share changed most (the moment units died is the one to see), then
    evenly spread ones."""
    count = len(trend.labels)
    fit = max(2, (width - site_width(trend) - 2) // (POINT_WIDTH + 2))
    if count <= fit:
        return list(range(count))
    ratio = np.nan_to_num(trend.dead_ratio, nan=0.0)
    change = np.abs(np.diff(ratio, axis=1)).sum(axis=0) if len(trend.sites) else np.zeros(count - 1)
    chosen = {0, count - 1}
    for index in np.argsort(-change, kind="stable"):
        if len(chosen) + 2 > fit or change[index] <= 0:
            break
        chosen.update((int(index), int(index) + 1))  # the points on both sides of the change
    for k in np.linspace(0, count - 1, fit):
        if len(chosen) >= fit:
            break
        chosen.add(int(round(k)))
    return sorted(chosen)


def _ratio(value: float) -> str:
    if math.isnan(value):
        return "–"
    if value == 0:
        return "0"
    return "100%" if value >= 1 else f"{value:.1%}"


def trend_table(trend: Trend, width: int = 80) -> Group:
    """Sites x points, dead share per cell, and a legend naming the points.

    Args:
        trend: the trend.
        width: the terminal width to fit.

    Returns:
        A rich renderable (table, then legend and notes).
    """
    points = shown_points(trend, width)
    headers = point_headers(trend)
    ratio = trend.dead_ratio
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title="Dead share per site over training",
                  title_justify="left", title_style="bold")
    table.add_column("site", min_width=site_width(trend), no_wrap=True, overflow="ignore")
    for p in points:
        table.add_column(headers[p], justify="right", width=POINT_WIDTH, no_wrap=True)
    rows = list(range(len(trend.sites)))
    hidden = 0
    if len(rows) > MAX_ROWS:
        dying = [k for k in rows if np.nanmax(np.nan_to_num(ratio[k], nan=0.0)) > 0]
        hidden = len(rows) - len(dying[:MAX_ROWS])
        rows = dying[:MAX_ROWS]
    for k in rows:
        cells = []
        for position, p in enumerate(points):
            value = ratio[k, p]
            before = ratio[k, points[position - 1]] if position else np.nan
            style = "bold red" if value > 0 and not (before >= value) else ("red" if value > 0 else "dim")
            cells.append(Text(_ratio(value), style=style))
        table.add_row(Text(visible(trend.sites[k])), *cells)
    total = trend.total_dead_ratio
    table.add_section()
    table.add_row(Text("all sites", style="bold"), *(Text(_ratio(total[p]), style="bold") for p in points))
    legend = Text()
    if trend.source == "monitor log" and headers[0] != "#1":
        legend.append("columns: training step")
    else:
        for p in points:
            if legend:
                legend.append("\n")
            legend.append(f"{headers[p]:>{POINT_WIDTH}} = {visible(trend.labels[p])}")
    notes = []
    if len(points) < len(trend.labels):
        notes.append(f"{len(points)} of {len(trend.labels)} points shown; --json/--html hold all of them")
    if hidden:
        notes.append(f"{hidden} site(s) never had a dead unit and are not shown")
    parts: list = [table, legend]
    if notes:
        parts.append(Text("\n".join(notes), style="dim"))
    return Group(*parts)


def _x_labels(trend: Trend) -> list[str]:
    if all(step is not None for step in trend.steps):
        return [str(step) for step in trend.steps]
    return [f"#{k + 1}" for k in range(len(trend.labels))]


def heat_map(trend: Trend) -> Figure:
    """Site x time, colour = dead share (grey where a site is absent).

    Args:
        trend: the trend.

    Returns:
        A Figure; rows are sites in network order, columns points in training order.
    """
    from matplotlib import colormaps

    sites, points = len(trend.sites), len(trend.labels)
    labelled = _tick_positions(sites)
    longest, lines = label_size(trend.sites[k] for k in labelled)
    fig = _figure(min(max(6.0, 0.45 * points + 0.07 * longest + 3.0), 22.0),
                  min(max(3.0, 0.22 * max(sites, len(labelled) * lines * 0.6) + 1.8), 24.0))
    axis = fig.add_subplot()
    cmap = colormaps["Reds"].with_extremes(bad="#dddddd")
    mesh = axis.pcolormesh(np.arange(points + 1) - 0.5, np.arange(sites + 1) - 0.5,
                           np.ma.masked_invalid(trend.dead_ratio), cmap=cmap, vmin=0.0, vmax=1.0)
    if sites * points <= MAX_ANNOTATED:
        for (k, p), value in np.ndenumerate(trend.dead_ratio):
            if not math.isnan(value):
                axis.text(p, k, _ratio(value), ha="center", va="center", fontsize=7,
                          color="white" if value > 0.6 else "#222222")
    axis.set_ylim(sites - 0.5, -0.5)  # network order top to bottom
    axis.set_yticks(labelled)
    axis.set_yticklabels([name_label(trend.sites[k]) for k in labelled], fontsize=7)
    columns = _tick_positions(points, 30)
    axis.set_xticks(columns)
    axis.set_xticklabels([_x_labels(trend)[p] for p in columns], rotation=90 if points > 8 else 0, fontsize=7)
    axis.set_xlabel("training step" if all(s is not None for s in trend.steps) else "checkpoint", fontsize=9)
    axis.set_ylabel("site (network order)" if sites == len(labelled) else
                    f"site (network order; {len(labelled)} of {sites} names shown)", fontsize=9)
    axis.set_title(f"Dead share per site over training ({trend.source})", fontsize=10, loc="left")
    fig.colorbar(mesh, ax=axis, label="dead share of the site's units", format=_percent_formatter())
    return fig


def worst_sites(trend: Trend, count: int = WORST_SITES) -> Figure:
    """The dead share over time of the ``count`` sites that reached the highest share, and of all sites.

    Args:
        trend: the trend.
        count: how many sites to draw.

    Returns:
        A Figure with one line per site and a dashed line for all sites together.
    """
    fig = _figure(7.5, 4.2)
    axis = fig.add_subplot()
    steps_known = all(step is not None for step in trend.steps)
    x = np.array(trend.steps, dtype=float) if steps_known else np.arange(1, len(trend.labels) + 1)
    ratio = trend.dead_ratio
    drawn = trend.worst_sites(count)
    for k in drawn:
        axis.plot(x, ratio[k], marker="o", markersize=3, label=name_label(trend.sites[k], 48))
    axis.plot(x, trend.total_dead_ratio, linestyle="--", color="#444444", label="all sites")
    axis.set_ylim(0, 1.0)
    axis.yaxis.set_major_formatter(_percent_formatter())
    axis.set_xlabel("training step" if steps_known else "checkpoint (order given)", fontsize=9)
    axis.set_ylabel("dead share", fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="upper left")
    axis.set_title(f"Dead share over training: the {len(drawn)} worst site(s) of {len(trend.sites)}", fontsize=10,
                   loc="left")
    return fig


def write_pngs(trend: Trend, directory: str | Path) -> list[Path]:
    """Write ``trend_heatmap.png`` and ``trend_worst_sites.png`` into ``directory`` (atomically).

    Returns:
        The paths written.
    """
    folder = Path(directory)
    return [atomic_write_bytes(folder / "trend_heatmap.png", figure_png(heat_map(trend))),
            atomic_write_bytes(folder / "trend_worst_sites.png", figure_png(worst_sites(trend)))]


def html_page(trend: Trend) -> str:
    """A self-contained HTML page: both figures and the full sites x points table (no script, no network)."""
    from .html import CSP, _data_uri, _e
    ratio = trend.dead_ratio
    head = "".join(f'<th title="{_e(label)}">{_e(header)}</th>'
                   for header, label in zip(point_headers(trend), trend.labels))
    rows = "".join(
        f"<tr><td><code>{_e(site)}</code></td>"
        + "".join(f'<td style="background:rgba(214,39,40,{0 if math.isnan(v) else v:.2f})">{_e(_ratio(v))}</td>'
                  for v in ratio[k]) + "</tr>"
        for k, site in enumerate(trend.sites))
    legend = "".join(f"<li><b>{_e(header)}</b> {_e(label)}</li>"
                     for header, label in zip(point_headers(trend), trend.labels))
    figures = "".join(f'<img alt="{_e(alt)}" src="{_data_uri(figure_png(build(trend), dpi=90))}">'
                      for build, alt in ((heat_map, "heat map of dead share per site over training"),
                                         (worst_sites, "dead share over training of the worst sites")))
    style = ("body{font-family:system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;"
             "font-size:13px}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}td:first-child{"
             "text-align:left}img{max-width:100%;display:block;margin:12px 0}")
    return ("<!DOCTYPE html>\n"
            f'<html lang="en"><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" '
            f'content="{_e(CSP)}"><title>deadrelu trend</title><style>{style}</style></head><body>'
            f"<h1>deadrelu trend</h1><p>{len(trend.sites)} sites over {len(trend.labels)} points "
            f"({_e(trend.source)})</p>{figures}<h2>Dead share per site</h2><table><tr><th>site</th>{head}</tr>"
            f"{rows}</table><h2>Points</h2><ol>{legend}</ol></body></html>\n")


def write_html(trend: Trend, path: str | Path) -> Path:
    """Write ``html_page(trend)`` atomically."""
    return atomic_write_text(path, html_page(trend))
