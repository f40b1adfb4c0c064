"""Terminal rendering of a diff between two scans (rich renderables; nothing printed here)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Group
from rich.table import Table
from rich.text import Text

from .text import visible

if TYPE_CHECKING:
    from ..compare import DiffResult

#: unit indices listed per site and verdict
MAX_LISTED_UNITS = 24


def _units(units: tuple[int, ...]) -> str:
    shown = ", ".join(map(str, units[:MAX_LISTED_UNITS]))
    return shown + (f", … (+{len(units) - MAX_LISTED_UNITS})" if len(units) > MAX_LISTED_UNITS else "")


def diff_table(diff: DiffResult) -> Table:
    """Per matched site: units, dead in base and new, newly dead, revived, change of the dead share."""
    failing = {v.scope for v in diff.gate.violations} if diff.gate is not None else set()
    table = Table(title="Dead units, base → new", title_justify="left", title_style="bold")
    table.add_column("site", overflow="fold", max_width=30)
    table.add_column("units", justify="right")
    table.add_column("dead", justify="right")
    table.add_column("newly dead", justify="right")
    table.add_column("revived", justify="right")
    table.add_column("Δ dead %", justify="right")
    for site in diff.sites:
        style = "bold red" if site.name in failing else ("red" if site.newly_dead else None)
        table.add_row(Text(visible(site.name)), f"{site.units_new:,}", f"{site.dead_base:,} → {site.dead_new:,}",
                      f"{len(site.newly_dead):,}", f"{len(site.revived):,}",
                      f"{site.dead_ratio_increase * 100:+.1f}", style=style)
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
            limits.append(f"max dead ratio increase {gate.max_dead_ratio_increase:g}")
        return Text(f"Gate passed ({', '.join(limits) or 'no limits'}).", style="green")
    text = Text("Gate FAILED:", style="bold red")
    for violation in gate.violations:
        if violation.measure == "new_dead":
            text.append(f"\n  {int(violation.value)} units newly dead > limit {violation.limit:g}")
        else:
            site = diff.site(violation.scope)
            text.append(f"\n  site {visible(site.name)}: dead ratio {site.dead_ratio_base:.1%} -> "
                        f"{site.dead_ratio_new:.1%} (+{violation.value * 100:.1f} points) > limit "
                        f"+{violation.limit * 100:.1f} points")
    return text


def report(diff: DiffResult) -> Group:
    """The whole terminal report: headline, table, changed unit indices, unmatched sites, notes, gate."""
    parts: list = [Text(f"{diff.newly_dead} units newly dead, {diff.revived} revived over {len(diff.sites)} "
                        "matched sites", style="bold"), diff_table(diff)]
    changed = [site for site in diff.sites if site.newly_dead or site.revived]
    if changed:
        text = Text("Changed units:", style="bold")
        for site in changed:
            if site.newly_dead:
                text.append(f"\n  {visible(site.name)} newly dead: {_units(site.newly_dead)}")
            if site.revived:
                text.append(f"\n  {visible(site.name)} revived: {_units(site.revived)}")
        parts.append(text)
    notes = [f"only in base: {', '.join(diff.only_in_base)}" if diff.only_in_base else "",
             f"only in new: {', '.join(diff.only_in_new)}" if diff.only_in_new else "",
             *(f"compared anyway (--force): {item}" for item in diff.differences), *diff.notes]
    notes = [note for note in notes if note]
    if notes:
        parts.append(Text("Notes:\n" + "\n".join(f"  - {visible(note)}" for note in notes)))
    gate = gate_text(diff)
    if gate is not None:
        parts.append(gate)
    return Group(*parts)
