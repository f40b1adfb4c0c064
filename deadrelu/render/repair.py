"""Repair reports for the terminal: what changed per site, the check on the data, before -> after."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text

from ..repair.report import (Effect, OutputCheck, PruneReport, RecycleReport, ReinitReport, SiteChange, SiteDelta,
                             SwapReport)
from .console import hang
from .text import visible, wrap_hanging


class _Hanging:
    """A line of a repair report wrapped at spaces to the console's width when printed, its
    continuations two columns past its own indent (never at column 0, no word broken)."""

    def __init__(self, text: Text) -> None:
        self.text = text

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        plain = self.text.plain
        lead = len(plain) - len(plain.lstrip(" "))
        wrapped = hang(self.text, options.max_width, first=lead + 2)
        wrapped.no_wrap, wrapped.overflow = True, "ignore"  # a word longer than the line stays whole
        yield wrapped


def _lines(lines: Sequence[RenderableType]) -> Group:
    """The report's lines, each text line wrapped with a hanging indent (tables wrap themselves)."""
    return Group(*(_Hanging(line) if isinstance(line, Text) else line for line in lines))


def _change(before: int | None, after: int | None) -> str:
    if before is None or after is None:
        return "-"
    if not before:
        return f"{before:,} -> {after:,}"
    return f"{before:,} -> {after:,} ({(after - before) / before:+.1%})"


def _route(change: SiteChange) -> str:
    parts = [" + ".join([change.producer or "?", *change.partners]), *change.norms]
    return f"{' > '.join(parts)} -> {', '.join(change.consumers) or '-'}"


class _SiteChanges:
    """Per site: its name whole on a line, then kind, units and count under short heads, then the
    route (or why it was left alone) wrapped at spaces to the console's width; no name is cut or
    folded however narrow the terminal (a rich renderable: the width is the console's, at render time)."""

    def __init__(self, changes: Sequence[SiteChange], verb: str) -> None:
        self.changes, self.verb = list(changes), verb

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        rows = [(visible(c.kind), f"{c.units:,}", "0" if c.skipped is not None else f"{len(c.changed):,}")
                for c in self.changes]
        heads = ("kind", "units", self.verb)
        widths = [max([len(head), *(len(row[k]) for row in rows)]) for k, head in enumerate(heads)]

        def numbers(cells: Sequence[str]) -> str:
            return "    " + "  ".join(cell.ljust(w) if k == 0 else cell.rjust(w)
                                      for k, (cell, w) in enumerate(zip(cells, widths)))
        width = options.max_width
        yield Text("site\n" + numbers(heads) + "\n" + wrap_hanging("    producer > norms -> consumers, or why left "
                                                                      "alone", width, 6), style="bold")
        for change, cells in zip(self.changes, rows):
            yield Text(visible(change.site), no_wrap=True, overflow="ignore")
            yield Text(numbers(cells), no_wrap=True, overflow="ignore")
            detail = f"left alone: {change.skipped}" if change.skipped is not None else _route(change)
            yield Text(wrap_hanging("    " + visible(detail), width, 6), no_wrap=True, overflow="ignore",
                       style="yellow" if change.skipped is not None else "")


def sites_table(changes: Sequence[SiteChange], verb: str) -> _SiteChanges:
    """One entry per flagged site: units changed and through which layers, or why it was left alone.

    Args:
        changes: the sites of a repair report.
        verb: the count's head (``removed``, ``recycled``, ``re-init``).

    Returns:
        A rich renderable laid out for the console it is printed on.
    """
    return _SiteChanges(changes, verb)


def check_line(check: OutputCheck | None, must_match: bool, changed: bool = True) -> Text:
    """How far the outputs moved on the data (and whether that passed); ``changed``: the repair
    changed anything (a check of an untouched model is not needed, and is not run)."""
    if check is None:
        return Text("check: not run (no data)" if changed else "check: not needed (nothing was changed)",
                    style="yellow" if changed else "")
    where = f"on {check.samples:,} samples"
    if not must_match:
        return Text(f"outputs changed by at most {check.max_abs_diff:.3g} {where} "
                    f"(output scale {check.output_scale:.3g})")
    verdict = "unchanged" if check.max_abs_diff == 0 else "within tolerance" if check.passed else "CHANGED"
    return Text(f"check: outputs {verdict} {where}: max |diff| {check.max_abs_diff:.3g} "
                f"(allowed {check.allowed:.3g} = {check.atol:g} x scale {check.output_scale:.3g})",
                style="green" if check.passed else "bold red")


def deltas_table(deltas: Sequence[SiteDelta]) -> RenderableType:
    """Dead, never active (leaky kinds) and dormant units per site in the scan before and the rescan
    after, on the same data; sites with nothing dead or never active and no change are counted, not listed."""
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold",
                  title="rescan on the same data", title_justify="left")
    leaky = any(d.never_active_before or d.never_active_after for d in deltas)
    for column in ("site", "units", "dead", *(("never active",) if leaky else ()), "dormant"):
        table.add_column(column, justify="left" if column == "site" else "right")
    shown = [delta for delta in deltas if not delta.unchanged_and_clean]
    for delta in shown:
        units = str(delta.units_before) if delta.units_after == delta.units_before else \
            f"{delta.units_before} -> {delta.units_after}"
        table.add_row(delta.site, units, f"{delta.dead_before} -> {delta.dead_after}",
                      *((f"{delta.never_active_before} -> {delta.never_active_after}",) if leaky else ()),
                      f"{delta.dormant_before} -> {delta.dormant_after}")
    quiet = len(deltas) - len(shown)
    if not quiet:
        return table
    note = Text(f"{quiet} other site(s): no dead or never-active units before or after, counts unchanged",
                style="dim")
    return Group(table, note) if shown else Group(Text("rescan on the same data", style="italic"), note)


def effect_lines(effect: Effect, refused: bool = False) -> list[RenderableType]:
    """Before -> after, the check on held-out data, and why the change was refused (or forced)."""
    lines: list[RenderableType] = []
    if effect.deltas:
        lines.append(deltas_table(effect.deltas))
    held = effect.held_out
    if held is not None:
        lines.append(Text(f"held-out check on {held.source}: {held.firing} of {held.changed} changed unit(s) fire "
                          f"there; outputs moved by at most {held.check.max_abs_diff:.3g} on {held.check.samples:,} "
                          f"samples (output scale {held.check.output_scale:.3g})",
                          style="green" if held.check.passed and not held.firing else "yellow"))
    if effect.worse is not None:
        if effect.forced:
            lines.append(Text(f"FORCED although: {effect.worse}", style="bold yellow"))
        elif refused:
            lines.append(Text(f"REFUSED: {effect.worse}", style="bold red"))
    return lines


def prune_report(report: PruneReport, refused: bool = False) -> RenderableType:
    """The whole ``deadrelu prune`` output (``refused``: the change was not kept)."""
    changed = [c for c in report.sites if c.skipped is None]
    left = len(report.sites) - len(changed)
    verb = "would remove" if refused else "pruned"
    head = Text(f"{verb} {report.removed} dead unit(s) at {len(changed)} site(s); {left} site(s) left alone "
                f"({report.graph} graph)", style="bold")
    lines: list[RenderableType] = [head, sites_table(report.sites, "removed")]
    lines.append(Text(f"parameters {_change(report.parameters_before, report.parameters_after)}; "
                      f"multiply-adds per sample {_change(report.macs_before, report.macs_after)}"))
    lines.append(check_line(report.check, must_match=True, changed=bool(report.removed)))
    lines.extend(effect_lines(report.effect, refused))
    lines.extend(Text(f"warning: {warning}", style="yellow") for warning in report.warnings)
    return _lines(lines)


def recycle_report(report: RecycleReport, refused: bool = False) -> RenderableType:
    """The ``deadrelu fix --recycle`` output."""
    changed = [c for c in report.sites if c.skipped is None]
    verb = "would recycle" if refused else "recycled"
    lines: list[RenderableType] = [
        Text(f"{verb} {report.recycled} {report.units} unit(s) at {len(changed)} site(s) (ReDo: new incoming "
             "weights, bias 0, outgoing weights 0)", style="bold"),
        sites_table(report.sites, "recycled"), check_line(report.check, must_match=True, changed=bool(report.recycled))]
    if report.fired is not None:
        lines.append(Text(f"fire after recycling: {report.fired[0]} of {report.fired[1]} recycled unit(s) are active "
                          "on the data"))
    lines.extend(effect_lines(report.effect, refused))
    lines.extend(Text(f"warning: {warning}", style="yellow") for warning in report.warnings)
    return _lines(lines)


def reinit_report(report: ReinitReport, refused: bool = False) -> RenderableType:
    """The ``deadrelu fix --reinit`` output, marked destructive."""
    verb = "would re-initialise" if refused else "re-initialised"
    lines: list[RenderableType] = [
        Text(f"DESTRUCTIVE: {verb} {len(report.layers)} layer(s) ({report.scheme}); their training is "
             "discarded", style="bold red"),
        sites_table(report.sites, "re-init"), check_line(report.check, must_match=False, changed=bool(report.layers))]
    lines.extend(effect_lines(report.effect, refused))
    return _lines(lines)


def swap_report(report: SwapReport, refused: bool = False) -> RenderableType:
    """The ``deadrelu fix --swap-activation`` output."""
    verb = "would swap" if refused else "swapped"
    lines: list[RenderableType] = [Text(f"{verb} {len(report.swapped)} activation module(s) to {report.to}",
                                        style="bold")]
    for swap in report.swapped:
        calls = f" ({swap.calls} calls per forward)" if swap.calls > 1 else ""
        lines.append(Text(f"  {swap.module}: {swap.before} -> {swap.after}{calls}"))
    for site, reason in report.skipped:
        lines.append(Text(f"  {site}: left alone: {reason}", style="yellow"))
    lines.append(check_line(report.check, must_match=False, changed=bool(report.swapped)))
    lines.extend(effect_lines(report.effect, refused))
    lines.extend(Text(f"note: {warning}", style="dim") for warning in report.warnings)
    return _lines(lines)


def repair_report(report: PruneReport | RecycleReport | ReinitReport | SwapReport,
                  refused: bool = False) -> RenderableType:
    """The terminal output of any repair report."""
    if isinstance(report, PruneReport):
        return prune_report(report, refused)
    if isinstance(report, RecycleReport):
        return recycle_report(report, refused)
    if isinstance(report, ReinitReport):
        return reinit_report(report, refused)
    return swap_report(report, refused)


__all__ = ["sites_table", "check_line", "deltas_table", "effect_lines", "prune_report", "recycle_report",
           "reinit_report", "swap_report", "repair_report"]
