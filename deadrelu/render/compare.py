"""Terminal rendering of a diff between two scans (rich renderables; nothing printed here)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..numbers import index_ranges, percent
from .console import name_table
from .text import visible, wrap_hanging

if TYPE_CHECKING:
    from ..compare import DiffResult

#: runs of unit indices listed per site and verdict (the rest are counted)
MAX_LISTED_RUNS = 12
#: colours as in the scan report: FAIL red, WARN yellow, OK green
LEVEL_STYLE = {"FAIL": "bold red", "WARN": "bold yellow", "OK": "bold green"}


def _units(units: tuple[int, ...]) -> str:
    return index_ranges(units, MAX_LISTED_RUNS)


def identical(diff: DiffResult) -> bool:
    """True when both results hold the same sites with the same dead units (a file against itself)."""
    return (not diff.only_in_base and not diff.only_in_new and not diff.newly_dead and not diff.revived
            and all(site.dead_base == site.dead_new and site.units_base == site.units_new for site in diff.sites))


def verdict_line(diff: DiffResult) -> Text:
    """``FAIL  4 units newly dead, 1 revived over 2 matched sites``: the diff's verdict, first, as scan's is."""
    failed = diff.gate is not None and not diff.gate.passed
    level = "FAIL" if failed else "WARN" if diff.newly_dead else "OK"
    text = Text(f"{level}  ", style=LEVEL_STYLE[level])
    if identical(diff):
        dead = sum(site.dead_new for site in diff.sites)
        text.append(f"identical: the same {dead:,} dead unit(s) at the same {len(diff.sites)} site(s)")
    else:
        text.append(f"{diff.newly_dead} units newly dead, {diff.revived} revived over {len(diff.sites)} "
                    "matched sites")
    if failed:
        text.append(";")
        text.append(" CI gate failed.", style="bold red")
    return text


def diff_table(diff: DiffResult, width: int | None = None) -> Table:
    """The sites whose dead units changed, worst first: units, dead base → new, newly dead, revived, Δ dead %.

    Args:
        diff: the comparison.
        width: the terminal width (None: no limit); names never cut: when they do not fit beside
            the numbers, each site takes two lines.

    Returns:
        A rich table in the scan report's style.
    """
    failing = {v.scope for v in diff.gate.violations} if diff.gate is not None else set()
    changed = [site for site in diff.sites if site.newly_dead or site.revived or site.dead_base != site.dead_new]
    changed.sort(key=lambda site: (-len(site.newly_dead), -site.dead_ratio_increase))
    columns = [("units", "right"), ("dead", "right"), ("newly dead", "right"), ("revived", "right"),
               ("Δ dead %", "right")]
    rows = [(site, [f"{site.units_new:,}", f"{site.dead_base:,} → {site.dead_new:,}", f"{len(site.newly_dead):,}",
                    f"{len(site.revived):,}", f"{site.dead_ratio_increase * 100:+.1f}"]) for site in changed]
    styles = {site.name: "bold red" if site.name in failing else ("red" if site.newly_dead else "")
              for site in changed}
    table = name_table("Sites whose dead units changed, worst first", columns, rows, width,
                       style=lambda site: styles[site.name])
    unchanged = len(diff.sites) - len(changed)
    if unchanged:
        table.caption = f"{unchanged} site{'s' if unchanged != 1 else ''} unchanged"
        table.caption_justify = "left"
    return table


def gate_text(diff: DiffResult) -> Text | None:
    """The diff gate's outcome, naming each broken limit."""
    gate = diff.gate
    if gate is None:
        return None
    if gate.passed:
        limits = []
        if gate.max_new_dead is not None:
            limits.append(f"max new dead {gate.max_new_dead}")
        if gate.max_dead_ratio_increase is not None:
            limits.append(f"max dead ratio increase +{gate.max_dead_ratio_increase * 100:.1f} points")
        return Text(f"Gate passed ({', '.join(limits) or 'no limits'}).", style="green")
    text = Text("Gate FAILED:", style="bold red")
    for violation in gate.violations:
        if violation.measure == "new_dead":
            text.append(f"\n  {int(violation.value)} units newly dead > limit {violation.limit:g}")
        else:
            site = diff.site(violation.scope)
            text.append(f"\n  site {visible(site.name)}: dead ratio {percent(site.dead_ratio_base)} -> "
                        f"{percent(site.dead_ratio_new)} (+{violation.value * 100:.1f} points) > limit "
                        f"+{violation.limit * 100:.1f} points")
    return text


def report(diff: DiffResult, width: int | None = None) -> Group:
    """The whole terminal report, verdict first: verdict, changed sites, changed unit indices, notes, gate.

    Args:
        diff: the comparison.
        width: the terminal width (None: no limit).

    Returns:
        A rich Group; a result compared with itself is one "identical" line (plus notes and gate).
    """
    parts: list = [verdict_line(diff), Text("")]
    if not identical(diff):
        table = diff_table(diff, width)
        caption, table.caption = table.caption, None
        if table.row_count:
            parts.append(table)
        if caption:
            parts.append(Text(str(caption), style="dim"))
        parts.append(Text(""))
    changed = [site for site in diff.sites if site.newly_dead or site.revived]
    if changed:
        text = Text("Changed units:", style="bold")
        for site in changed:
            if site.newly_dead:
                text.append("\n" + wrap_hanging(f"  {visible(site.name)} newly dead: {_units(site.newly_dead)}",
                                                width, 6))
            if site.revived:
                text.append("\n" + wrap_hanging(f"  {visible(site.name)} revived: {_units(site.revived)}", width, 6))
        parts.append(text)
    notes = [f"only in base: {', '.join(diff.only_in_base)}" if diff.only_in_base else "",
             f"only in new: {', '.join(diff.only_in_new)}" if diff.only_in_new else "",
             *(f"compared anyway (--force): {item}" for item in diff.differences), *diff.notes]
    notes = [note for note in notes if note]
    if notes:
        parts.append(Text("Notes:\n" + "\n".join(wrap_hanging(f"  - {visible(note)}", width, 4) for note in notes)))
    gate = gate_text(diff)
    if gate is not None:
        parts.append(gate)
    return Group(*parts)
