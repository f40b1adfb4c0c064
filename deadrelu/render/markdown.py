"""A short Markdown summary for ``$GITHUB_STEP_SUMMARY`` or a pull-request comment.

A headline with the totals and the gate, what to do first (the suggestions' action lines,
as the terminal leads with them), then a table of the sites that matter (worst
first, at most ``max_rows``), so a summary stays short for a model with hundreds of sites.
Names go in code spans with ``|`` escaped, so a module name cannot break the table.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..numbers import percents_apart
from .text import visible

if TYPE_CHECKING:
    from ..compare import DiffResult
    from ..result import ScanResult

#: table rows at most
MAX_ROWS = 20
#: action lines at most
MAX_FIXES = 3
SEVERITY_SHORT = {"critical": "CRIT", "warning": "WARN", "info": "INFO"}


def _code(name: str) -> str:
    """A name as a code span safe inside a table cell."""
    return "`" + visible(name).replace("`", "'").replace("|", "\\|").replace("\n", " ") + "`"


def _plain(text: str) -> str:
    """Outside text (an action line naming modules) as literal Markdown: ``feature_backbone`` is not italics."""
    return re.sub(r"([\\`*_\[\]<>|#~])", r"\\\1", visible(text).replace("\n", " "))


def fixes(result: ScanResult, limit: int = MAX_FIXES) -> list[str]:
    """``1. **CRIT** net.0: reset 19 negative biases to 0 → explains 19 of 53 dead at net.1``: the
    action lines the terminal leads with, for the warning and critical suggestions (specific causes first,
    as ranked; at most ``limit``)."""
    urgent = [s for s in result.suggestions if s.get("severity") in ("critical", "warning")]
    shown = [s for s in urgent if not s.get("generic")] or urgent
    return [f"{k}. **{SEVERITY_SHORT.get(str(s.get('severity')), 'INFO')}** "
            f"{_plain(str(s.get('action_line') or s.get('title', '')))}" for k, s in enumerate(shown[:limit], 1)]


def _pct(value: float) -> str:
    return f"{value:.1%}"


def _gate_word(passed: bool | None) -> str:
    return "" if passed is None else (" — gate **passed** ✅" if passed else " — gate **FAILED** ❌")


def scan_summary(result: ScanResult, max_rows: int = MAX_ROWS) -> str:
    """Markdown summary of a scan: totals, gate, and the sites with dead units or gate failures.

    Args:
        result: the scan (with its gate outcome, if any).
        max_rows: most table rows.

    Returns:
        Markdown text ending with a newline.
    """
    s, gate = result.summary, result.gate
    failing = {v.scope for v in gate.violations} if gate is not None else set()
    lines = [f"### deadrelu: {s.dead:,} of {s.units:,} units dead ({_pct(s.dead_ratio)}) in {s.sites} sites"
             f"{_gate_word(None if gate is None else gate.passed)}", ""]
    if gate is not None and "model" in failing:
        limit = next(v.limit for v in gate.violations if v.scope == "model")
        ratio, allowed = percents_apart(s.dead_ratio, limit)
        lines += [f"Dead ratio over all sites {ratio} is above the limit {allowed}.", ""]
    todo = fixes(result)
    if todo:
        lines += ["**What to do first:**", "", *todo, ""]
    ranked = sorted(enumerate(result.sites), key=lambda pair: (pair[1].name not in failing, -pair[1].dead_ratio,
                                                                -pair[1].dormant_ratio, pair[0]))
    shown = [site for _, site in ranked if site.dead or site.name in failing][:max_rows]
    if not shown:
        lines.append("No dead units.")
        return "\n".join(lines) + "\n"
    lines += ["| site | kind | units | dead | dead % | dormant | gate |", "|---|---|--:|--:|--:|--:|---|"]
    for site in shown:
        verdict = "❌ fail" if site.name in failing else ("✅" if gate is not None else "")
        lines.append(f"| {_code(site.name)} | {site.kind} | {site.units:,} | {site.dead:,} | {_pct(site.dead_ratio)} "
                     f"| {site.dormant:,} | {verdict} |")
    rest = sum(1 for site in result.sites if site.dead or site.name in failing) - len(shown)
    if rest > 0:
        lines += ["", f"… and {rest} more sites with dead units (full list: the JSON or HTML report)."]
    return "\n".join(lines) + "\n"


def diff_summary(diff: DiffResult, max_rows: int = MAX_ROWS) -> str:
    """Markdown summary of a diff: totals, gate, and the sites whose dead units changed.

    Args:
        diff: the comparison (with its gate outcome, if any).
        max_rows: most table rows.

    Returns:
        Markdown text ending with a newline.
    """
    gate = diff.gate
    failing = {v.scope for v in gate.violations if v.scope != "model"} if gate is not None else set()
    lines = [f"### deadrelu diff: {diff.newly_dead:,} units newly dead, {diff.revived:,} revived over "
             f"{len(diff.sites)} sites{_gate_word(None if gate is None else gate.passed)}", ""]
    if gate is not None:
        for violation in gate.violations:
            if violation.measure == "new_dead":
                lines.append(f"- {int(violation.value):,} units newly dead, limit {violation.limit:g}")
            else:
                lines.append(f"- {_code(violation.scope)}: dead ratio +{violation.value * 100:.1f} points, "
                             f"limit +{violation.limit * 100:.1f}")
        if gate.violations:
            lines.append("")
    changed = [site for site in diff.sites if site.newly_dead or site.revived or site.name in failing]
    changed.sort(key=lambda site: (site.name not in failing, -site.dead_ratio_increase, -len(site.newly_dead)))
    if changed:
        lines += ["| site | dead base → new | newly dead | revived | Δ dead ratio | gate |",
                  "|---|--:|--:|--:|--:|---|"]
        for site in changed[:max_rows]:
            verdict = "❌ fail" if site.name in failing else ("✅" if gate is not None else "")
            lines.append(f"| {_code(site.name)} | {site.dead_base:,} → {site.dead_new:,} | {len(site.newly_dead):,} "
                         f"| {len(site.revived):,} | {site.dead_ratio_increase * 100:+.1f} pts | {verdict} |")
        if len(changed) > max_rows:
            lines += ["", f"… and {len(changed) - max_rows} more sites that changed (full list: the JSON)."]
    else:
        lines.append("No unit changed state between the two scans.")
    for label, names in (("Only in base", diff.only_in_base), ("Only in new", diff.only_in_new)):
        if names:
            lines += ["", f"{label}: " + ", ".join(_code(name) for name in names[:20])
                      + (f" (+{len(names) - 20} more)" if len(names) > 20 else "")]
    return "\n".join(lines) + "\n"
