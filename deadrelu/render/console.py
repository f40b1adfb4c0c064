"""Terminal rendering: rich renderables built from a ``ScanResult``; printing is the caller's."""

from __future__ import annotations

import math

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..result import ScanResult, SiteResult
from .text import visible


def worst_first(result: ScanResult) -> list[SiteResult]:
    """Sites ordered by dead share, then saturated, then dormant share, network order breaking ties."""
    ranked = list(enumerate(result.sites))
    ranked.sort(key=lambda pair: (-pair[1].dead_ratio, -pair[1].saturated_ratio, -pair[1].dormant_ratio, pair[0]))
    return [site for _, site in ranked]


def _share(count: int, units: int) -> str:
    return f"{count / units:.1%}" if units else "-"


def _rate(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


def layer_table(result: ScanResult, limit: int | None = None) -> Table:
    """One row per site, worst first.

    Args:
        result: the scan.
        limit: show at most this many rows (the rest are summarised in the caption).

    Returns:
        A rich table.
    """
    table = Table(title="Activation sites (worst first)", title_justify="left", header_style="bold")
    table.add_column("site", overflow="fold")
    table.add_column("kind")
    table.add_column("units", justify="right")
    table.add_column("dead", justify="right")
    table.add_column("dead %", justify="right")
    table.add_column("saturated", justify="right")
    table.add_column("dormant", justify="right")
    table.add_column("active rate", justify="right")
    ordered = worst_first(result)
    shown = ordered if limit is None else ordered[:limit]
    for site in shown:
        style = "red" if site.dead_ratio > 0.5 else ("yellow" if site.dead or site.saturated else "")
        table.add_row(escape(visible(site.name)), escape(visible(site.kind)), str(site.units), str(site.dead),
                      _share(site.dead, site.units), str(site.saturated) if site.saturation else "-",
                      str(site.dormant), _rate(site.active_rate_mean), style=style)
    if len(shown) < len(ordered):
        table.caption = f"{len(ordered) - len(shown)} more site(s) not shown"
    return table


def verdict_line(result: ScanResult) -> Text:
    """One line saying what the scan found."""
    s = result.summary
    partial = " (PARTIAL)" if result.data.get("partial") else ""
    unobserved = getattr(s, "unobserved", 0)
    if s.units and unobserved == s.units:
        head = Text(f"Nothing observed{partial}: every unit saw only NaN/inf: ", style="bold red")
    elif s.dead == 0 and s.saturated == 0 and unobserved:
        head = Text(f"No dead units among the {s.units - unobserved} observed{partial}: ", style="bold yellow")
    elif s.dead == 0 and s.saturated == 0:
        head = Text(f"No dead units{partial}: ", style="bold green")
    else:
        head = Text(f"{s.dead} of {s.units} units dead ({s.dead_ratio:.1%}){partial}: ", style="bold red")
    worst = worst_first(result)[0] if result.sites else None
    body = (f"{s.sites} site(s), {s.units} units, {s.saturated} saturated, {s.dormant} dormant "
            f"(tau={result.settings.thresholds.tau:g}), on {result.data.get('samples', '?')} samples")
    if unobserved:
        body += f"; {unobserved} units unobserved (no finite observation)"
    if worst is not None and worst.dead:
        body += f"; worst site {visible(worst.name)} ({worst.dead_ratio:.0%} dead)"
    return head + Text(body + ".")


def gate_lines(result: ScanResult) -> Text | None:
    """The CI gate's outcome, naming each broken limit."""
    gate = result.gate
    if gate is None:
        return None
    if gate.passed:
        limits = []
        if gate.max_dead_ratio is not None:
            limits.append(f"max dead ratio {gate.max_dead_ratio:g}")
        if gate.max_layer_dead_ratio is not None:
            limits.append(f"max layer dead ratio {gate.max_layer_dead_ratio:g}")
        return Text(f"Gate passed ({', '.join(limits) or 'no limits'}).", style="green")
    text = Text("Gate FAILED:", style="bold red")
    for violation in gate.violations:
        scope = "all units" if violation.scope == "model" else f"site {visible(violation.scope)}"
        text.append(f"\n  {scope}: dead ratio {violation.dead_ratio:.4f} > limit {violation.limit:g}")
    return text


def warnings_text(result: ScanResult) -> Text | None:
    """Coverage notes and warnings, one per line."""
    if not result.warnings:
        return None
    text = Text("Notes:", style="bold")
    for warning in result.warnings:
        text.append(f"\n  - {visible(warning)}")
    return text


def dead_units_text(result: ScanResult, max_per_site: int = 64) -> Text:
    """The indices of dead / saturated units per site."""
    text = Text("Dead / saturated unit indices:", style="bold")
    any_listed = False
    for site in result.sites:
        for label, units in (("dead", site.verdict.dead_units), ("saturated", site.verdict.saturated_units)):
            if units:
                any_listed = True
                listed = ", ".join(map(str, units[:max_per_site]))
                more = f" ... (+{len(units) - max_per_site})" if len(units) > max_per_site else ""
                text.append(f"\n  {visible(site.name)} {label} [{len(units)}]: {listed}{more}")
    if not any_listed:
        text.append("\n  none")
    return text


_SEVERITY_STYLE = {"critical": "bold red", "warning": "bold yellow", "info": "bold cyan"}


def _evidence_summary(evidence: dict, limit: int = 8) -> str:
    """The first few scalar numbers of a suggestion's evidence (nested dicts: their first entry)."""
    items: list[str] = []

    def walk(data: dict, prefix: str) -> None:
        for key, value in data.items():
            if len(items) >= limit:
                return
            if isinstance(value, dict):
                first = next(iter(value.items()), None)
                if first is not None and isinstance(first[1], dict):
                    inner: list[str] = []
                    for inner_key, inner_value in first[1].items():
                        if isinstance(inner_value, (int, float)) and not isinstance(inner_value, bool):
                            inner.append(f"{inner_key}={inner_value:.4g}")
                    more = f" (+{len(value) - 1} more)" if len(value) > 1 else ""
                    items.append(f"{prefix}[{first[0]}] {' '.join(inner[:6])}{more}")
                elif value:
                    walk(value, f"{prefix}{key}.")
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                items.append(f"{prefix}{key}={value:.4g}" if isinstance(value, float) else f"{prefix}{key}={value}")
            elif isinstance(value, str) and len(value) <= 40:
                items.append(f"{prefix}{key}={value}")
    walk(evidence, "")
    return ", ".join(items)


def suggestions_text(result: ScanResult, limit: int = 8, code: int = 3) -> Text | None:
    """Suggested fixes, worst first: title, evidence numbers, the fix and its code.

    Args:
        result: a scan carrying ``suggestions``.
        limit: show at most this many (the rest are counted).
        code: show the code snippet of the first ``code`` suggestions (all are in the JSON/HTML).

    Returns:
        A rich Text, or None when the result carries no suggestions.
    """
    if not result.suggestions:
        return None
    text = Text("Suggested fixes:", style="bold")
    for position, suggestion in enumerate(result.suggestions[:limit]):
        severity = str(suggestion.get("severity", "info"))
        text.append(f"\n  {severity.upper():<8} ", style=_SEVERITY_STYLE.get(severity, "bold"))
        text.append(visible(suggestion.get("title", "")))
        evidence = _evidence_summary(dict(suggestion.get("evidence") or {}))
        if evidence:
            text.append(f"\n    evidence: {visible(evidence)}", style="dim")
        action = visible(suggestion.get("action", ""), keep_newlines=True).split("\n")
        text.append(f"\n    fix: {action[0]}")
        for line in action[1:]:
            text.append(f"\n      {line}")
        snippet = str(suggestion.get("code") or "")
        if snippet and position < code:
            text.append("\n    code:")
            for line in snippet.splitlines():
                text.append(f"\n      {visible(line)}", style="green")
        elif snippet:
            text.append("\n    code: in the HTML / JSON report", style="dim")
    hidden = len(result.suggestions) - limit
    if hidden > 0:
        text.append(f"\n  ... {hidden} more suggestion(s) in the JSON / HTML report", style="dim")
    return text


def report(result: ScanResult, show_units: bool = False, limit: int | None = None,
           suggestions: bool = True) -> Group:
    """Everything the terminal shows after a scan: table, suggested fixes, notes, verdict, gate."""
    parts: list = [layer_table(result, limit)]
    if show_units:
        parts.append(dead_units_text(result))
    for extra in (suggestions_text(result) if suggestions else None, warnings_text(result), verdict_line(result),
                  gate_lines(result)):
        if extra is not None:
            parts.append(extra)
    return Group(*parts)
