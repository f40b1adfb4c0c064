"""A compact HTML view of a result for Jupyter (``ScanResult._repr_html_``)."""

from __future__ import annotations

from html import escape

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..result import ScanResult
from .console import worst_first
from .text import visible


def result_html(result: ScanResult, limit: int = 20) -> str:
    """Summary plus the worst ``limit`` sites as an HTML table; every name is escaped."""
    s = result.summary
    rows = "".join(
        f"<tr><td>{escape(visible(site.name))}</td><td>{escape(visible(site.kind))}</td><td>{site.units}</td>"
        f"<td>{site.dead}</td><td>{site.dead_ratio:.1%}</td><td>{site.saturated}</td><td>{site.dormant}</td></tr>"
        for site in worst_first(result)[:limit])
    more = f"<p>{len(result.sites) - limit} more site(s)</p>" if len(result.sites) > limit else ""
    return (f"<div><b>deadrelu</b>: {s.dead} of {s.units} units dead ({s.dead_ratio:.1%}), "
            f"{s.saturated} saturated, {s.dormant} dormant, {s.sites} sites"
            "<table><tr><th>site</th><th>kind</th><th>units</th><th>dead</th><th>dead %</th>"
            f"<th>saturated</th><th>dormant</th></tr>{rows}</table>{more}</div>")
