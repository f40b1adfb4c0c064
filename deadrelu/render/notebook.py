"""The notebook view of a result (``ScanResult._repr_html_``): verdict, worst sites, top
suggestions and a small inline plot, in one container whose CSS touches nothing outside it.

No matplotlib: the plot is an inline SVG (one bar per site, network order, coloured as the
table's rows and explained by a legend under it), so a result displays instantly and the cell
stays small. ``result.plot()`` gives the full figure (it displays by itself: ``_repr_png_``),
``result.report()`` the full HTML report inline (``InlineReport``).
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from ..judge.overall import (Level, dead_no_gradient, flagged, leaky, never_active, site_level, stuck_share,
                             worst_sites)
from .html import SEVERITY_LABEL, scope_css, verdict_card
from .text import visible

if TYPE_CHECKING:
    from ..result import ScanResult

#: the notebook container's scope (its own, so a notebook that also embeds a full report keeps both intact)
NB_SCOPE = ".deadrelu-nb"
NB_CSS = """
:root{--ok:#1e8e3e;--warn:#b06000;--crit:#c5221f;--line:#dadce0;--muted:#5f6368;--soft:#f6f7f9;
font:13px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;color:#1d1d1f;max-width:860px;
text-align:left}
.verdictcard{display:flex;flex-wrap:wrap;gap:4px 12px;align-items:baseline;border:1px solid var(--line);
border-left:6px solid var(--ok);border-radius:6px;padding:8px 12px;margin:0 0 8px;background:var(--soft)}
.verdictcard.WARN{border-left-color:var(--warn)}.verdictcard.FAIL{border-left-color:var(--crit)}
.verdictcard .level{font-size:18px;font-weight:750;color:var(--ok)}.verdictcard.WARN .level{color:var(--warn)}
.verdictcard.FAIL .level{color:var(--crit)}.verdictcard .what{font-size:14px;overflow-wrap:anywhere}
.verdictcard .more{flex-basis:100%;color:var(--muted);font-size:12px}
table{border-collapse:collapse;border:0;margin:4px 0;font-size:12px;color:inherit;font-family:inherit}
th,td{padding:2px 8px;border-bottom:1px solid var(--line);text-align:left}td.n,th.n{text-align:right}
tr.FAIL td{background:#fdecea}tr.WARN td{background:#fff4e5}tr.leaky td{background:#e8f6f8}
td.name{overflow-wrap:anywhere;max-width:360px;font-family:ui-monospace,Menlo,Consolas,monospace}
.muted{color:var(--muted)}.sev{font-weight:700;font-size:11px;margin-right:4px}
.critical .sev{color:var(--crit)}.warning .sev{color:var(--warn)}.info .sev{color:#1a73e8}
ol{margin:4px 0;padding-left:22px}li{margin:2px 0;overflow-wrap:anywhere}
svg text{font-size:10px;fill:#5f6368}
.legend{display:flex;flex-wrap:wrap;gap:2px 14px;margin:0 0 6px;font-size:11px;color:var(--muted)}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:-1px}
"""
#: rows in the worst-sites table and suggestions listed
NB_SITES = 8
NB_SUGGESTIONS = 3
_BAR = {Level.FAIL: "#d62728", Level.WARN: "#ff7f0e", Level.OK: "#9e9e9e"}
#: leaky sites (LeakyReLU, PReLU...) have no dead units: their bar is the share of units never active
_NEVER_ACTIVE = "#17becf"


def _e(value: object) -> str:
    return escape(visible(value), quote=True)


def sparkline_svg(result: ScanResult, width: int = 600, height: int = 64) -> str:
    """Stuck share (dead without gradient, or saturated) per site in network order, one bar each,
    coloured by the site's level; hover a bar for its name."""
    sites = list(result.sites)
    if not sites:
        return ""
    left, bottom = 30, 14
    plot_h = height - bottom - 4
    bar_w = (width - left - 4) / len(sites)
    bars = []
    for k, site in enumerate(sites):
        share = stuck_share(site)
        color, what = _BAR[site_level(site)], "dead or saturated"
        if not share and never_active(site):  # leaky units that never activate: their own colour
            share, color, what = never_active(site) / max(site.units, 1), _NEVER_ACTIVE, "never active (leaky)"
        h = max(plot_h * share, 1.0 if share else 0.0)
        bars.append(f'<rect x="{left + k * bar_w:.2f}" y="{4 + plot_h - h:.2f}" width="{max(bar_w * 0.85, 0.6):.2f}" '
                    f'height="{h:.2f}" fill="{color}"><title>{_e(site.name)}: {share:.1%} {what}</title></rect>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
            f'aria-label="dead or saturated share per site, network order">'
            f'<title>dead or saturated share per site, in network order; hover a bar for its site</title>'
            f'<line x1="{left}" y1="{4 + plot_h}" x2="{width - 2}" y2="{4 + plot_h}" stroke="#888"/>'
            f'<text x="{left - 3}" y="12" text-anchor="end">100%</text>'
            f'<text x="{left - 3}" y="{4 + plot_h}" text-anchor="end">0</text>' + "".join(bars) +
            f'<text x="{left}" y="{height - 1}">first site</text>'
            f'<text x="{width - 2}" y="{height - 1}" text-anchor="end">network order → last site'
            f'</text></svg>')


def sparkline_legend(result: ScanResult) -> str:
    """What the strip's bars and colours mean (only the colours it uses)."""
    levels = {site_level(site) for site in result.sites if stuck_share(site)}
    leaky_bars = any(not stuck_share(site) and never_active(site) for site in result.sites)
    entries = [(_BAR[Level.FAIL], "FAIL site: dead or saturated share"),
               (_BAR[Level.WARN], "WARN site: dead or saturated share"),
               (_BAR[Level.OK], "below the warning level")]
    shown = [(color, label) for (color, label), level in zip(entries, (Level.FAIL, Level.WARN, Level.OK))
             if level in levels]
    if leaky_bars:
        shown.append((_NEVER_ACTIVE, "leaky site (LeakyReLU, PReLU…): share of units never active"))
    items = "".join(f'<span><i style="background:{color}"></i>{_e(label)}</span>' for color, label in shown)
    return (f'<p class="legend"><b>Bars: one per site, network order; height = share of its units</b>{items}</p>'
            if items else "")


def result_html(result: ScanResult, limit: int = NB_SITES) -> str:
    """The notebook view: verdict card, worst sites, top suggestions, an inline plot; every name escaped.

    Args:
        result: the scan.
        limit: worst sites listed.

    Returns:
        An HTML fragment in a ``deadrelu-nb`` container carrying its own scoped CSS.
    """
    problems = [site for site in worst_sites(result) if flagged(site)]
    clean = len(result.sites) - len(problems)
    rows = []
    for site in problems[:limit]:
        level = site_level(site)
        tone = level.value if level is not Level.OK else ("leaky" if never_active(site) else "")
        dead = dead_no_gradient(site)
        rows.append(
            f'<tr class="{tone}"><td class="name">{_e(site.name)}</td><td>{_e(site.kind)}</td>'
            f'<td class="n">{site.units}</td>'
            + (f'<td class="n">{dead}</td><td class="n">{dead / max(site.units, 1):.1%}</td>' if not leaky(site)
               else '<td class="n">–</td><td class="n">–</td>')
            + f'<td class="n">{site.saturated if site.saturation else "–"}</td>'
            f'<td class="n">{never_active(site) if leaky(site) else "–"}</td><td class="n">{site.dormant}</td></tr>')
    table = ('<table><tr><th>site</th><th>kind</th><th class="n">units</th><th class="n">dead</th>'
             '<th class="n">dead %</th><th class="n">saturated</th><th class="n">never active (leaky)</th>'
             f'<th class="n">dormant</th></tr>{"".join(rows)}</table>') if rows else ""
    notes = []
    if len(problems) > limit:
        notes.append(f"{len(problems) - limit} more site(s) with a problem")
    if clean:
        notes.append(f"{clean} site(s) clean")
    notes_html = f'<p class="muted">{_e("; ".join(notes))}</p>' if notes else ""
    items = []
    for suggestion in list(result.suggestions)[:NB_SUGGESTIONS]:
        severity = str(suggestion.get("severity", "info"))
        # The action line leads (it says what it explains); the evidence is the hover text and the full report's.
        items.append(f'<li class="{_e(severity)}" title="{_e(suggestion.get("title", ""))}">'
                     f'<span class="sev">{SEVERITY_LABEL.get(severity, "INFO")}</span>'
                     f'{_e(suggestion.get("action_line") or suggestion.get("title", ""))}'
                     + (f' <span class="muted">(cause: {_e(suggestion.get("cause"))})</span>'
                        if suggestion.get("cause") else "")
                     + ('<span class="muted"> — its code erases training</span>' if suggestion.get("destructive")
                        else "") + "</li>")
    more = len(result.suggestions) - NB_SUGGESTIONS
    suggestions = (f"<ol>{''.join(items)}</ol>" + (f'<p class="muted">{more} more suggestion(s) in the full '
                                                   "report</p>" if more > 0 else "")
                   if items else "")
    hint = ('<p class="muted">Full report inline: <code>result.report()</code>; figure: <code>result.plot()'
            '</code></p>')
    return (f'<div class="deadrelu-nb"><style>{scope_css(NB_CSS, NB_SCOPE)}</style>{verdict_card(result)}'
            f"{table}{notes_html}{sparkline_svg(result)}{sparkline_legend(result)}{suggestions}{hint}</div>")


@dataclass(frozen=True)
class InlineReport:
    """The full HTML report of a scan, displayed inline by Jupyter (``result.report()``).

    Attributes:
        page: the self-contained page, as ``render.html.report`` writes it.
    """

    page: str

    def _repr_html_(self) -> str:
        # The page's CSS is already scoped to its container (render.html.scope_css), so the
        # style and the container can sit inside a notebook cell without touching the notebook.
        style_start = self.page.index("<style>")
        style_end = self.page.index("</style>") + len("</style>")
        body_start = self.page.index('<div class="deadrelu-report">')
        body_end = self.page.rindex("</body>")
        return self.page[style_start:style_end] + self.page[body_start:body_end]

    def save(self, path: str | Path) -> Path:
        """Write the page to ``path`` atomically.

        Returns:
            The path written.
        """
        from .files import atomic_write_text
        return atomic_write_text(path, self.page)

    def __str__(self) -> str:
        return self.page

    def __repr__(self) -> str:
        return f"<deadrelu report: {len(self.page):,} characters of HTML; .save(path) writes it>"


def inline_report(result: ScanResult, plots: bool = True) -> InlineReport:
    """The full HTML report, as an object Jupyter displays inline.

    Args:
        result: the scan.
        plots: embed the overview plots.

    Returns:
        An ``InlineReport`` (``str()`` of it is the page).
    """
    from .html import report
    return InlineReport(report(result, plots=plots))


__all__ = ["result_html", "sparkline_svg", "sparkline_legend", "InlineReport", "inline_report", "NB_SCOPE"]
