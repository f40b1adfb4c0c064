"""Terminal rendering: rich renderables built from a ``ScanResult``; printing is the caller's.

Laid out for 80 columns: the verdict first, with the top suggestion's cause as its own line,
then only the sites with a problem (each name in full, never cut: when names do not fit beside
the numbers, each site takes two lines), the clean ones as one line, then one line per
suggestion: its rank, severity and imperative action line (``net.0: reset 19 negative biases to 0 →
explains 19 of 53 dead at net.1``); generic advice (swap the activation, re-initialise, SELU) is
counted in one line when a specific cause was found, and listed with ``verbose``, which also puts
each action's evidence and code under it. Code is never soft-wrapped (a wrapped comment pasted
into Python is a syntax error) nor cut: ``verbose`` prints it whole, and the caller prints the
report with ``crop=False``, as the HTML and JSON reports carry it. ``width=None`` means "no limit"
(output that is not a terminal, such as a CI log, keeps full names and lines).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, Callable

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..judge.overall import (CAUSE_PHRASES, Level, cause_sentence, dead_no_gradient, flagged, headline_cause, leaky,
                             never_active, overall, problem_mask, site_level, worst_sites)
from ..numbers import index_ranges, percent, percents_apart
from .text import visible, wrap_hanging

if TYPE_CHECKING:
    from ..result import ScanResult, SiteResult

#: colours mean the same everywhere: FAIL / critical red, WARN / warning yellow, info cyan, OK green
LEVEL_STYLE = {Level.FAIL: "bold red", Level.WARN: "bold yellow", Level.OK: "bold green"}
ROW_STYLE = {Level.FAIL: "red", Level.WARN: "yellow", Level.OK: ""}
SEVERITY_STYLE = {"critical": "bold red", "warning": "bold yellow", "info": "cyan"}
SEVERITY_SHORT = {"critical": "CRIT", "warning": "WARN", "info": "INFO"}
#: problem sites listed by default (the rest are counted; ``verbose`` lists all)
DEFAULT_ROWS = 10
#: suggestions listed by default
DEFAULT_SUGGESTIONS = 8
#: where the evidence starts under an action line in ``--verbose``; the code, under a ``code:`` line, two further in
DETAIL_INDENT = 8
CODE_INDENT = " " * (DETAIL_INDENT + 2)


def worst_first(result: ScanResult) -> list[SiteResult]:
    """Sites ordered worst first (stuck share, never-active share, dormant share; network order breaks ties)."""
    return worst_sites(result)


def _row_style(site: SiteResult) -> str:
    return ROW_STYLE[site_level(site)] if not leaky(site) or site.saturated else "cyan"


def name_table(title: str, columns: list[tuple[str, str]], rows: list[tuple[Any, list[str]]], width: int | None,
               style: Callable[[Any], str], name: Callable[[Any], str] = lambda site: site.name) -> Table:
    """A table of named rows whose names are never cut, in the style every command shares.

    Args:
        title: the table's title.
        columns: ``(header, justify)`` of the columns after the name.
        rows: ``(item, cells)``; ``name(item)`` is the row's name, ``style(item)`` its style.
        width: the width to fit (None: no limit). When the longest name does not fit beside the
            numbers (2 spaces of padding per column, 2 of indent), each row takes two lines: the
            name whole, then its numbers under the column heads, indented.
        style: a row's rich style.
        name: a row's name (shown through ``visible``).

    Returns:
        A rich table.
    """
    longest = max((len(visible(name(item))) for item, _ in rows), default=0)
    widths = [max([len(header), *(len(cells[k]) for _, cells in rows)]) for k, (header, _) in enumerate(columns)]
    table = Table(title=title, title_justify="left", header_style="bold", box=None, pad_edge=False,
                  padding=(0, 1, 0, 1), show_edge=False)
    if width is None or longest + sum(widths) + 2 * (len(columns) + 1) + 2 <= width:
        table.add_column("site", no_wrap=True, overflow="ignore")
        for header, justify in columns:
            table.add_column(header, justify=justify, no_wrap=True)  # type: ignore[arg-type]
        for item, cells in rows:
            table.add_row(escape(visible(name(item))), *(escape(c) for c in cells), style=style(item))
        return table

    def line(cells: list[str]) -> str:
        return "    " + "  ".join(cell.ljust(size) if justify == "left" else cell.rjust(size)
                                  for cell, size, (_, justify) in zip(cells, widths, columns))
    table.add_column("site\n" + line([header for header, _ in columns]), no_wrap=True, overflow="ignore")
    for item, cells in rows:
        table.add_row(Text(visible(name(item)) + "\n" + line(cells), style=style(item)))
    return table


def _share(count: int, units: int) -> str:
    return f"{count / units:.1%}" if units else "-"


def _rate(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}"


def layer_table(result: ScanResult, limit: int | None = DEFAULT_ROWS, width: int | None = None,
                all_sites: bool = False) -> Table:
    """The sites with a problem, worst first; clean sites summed up in one line.

    Args:
        result: the scan.
        limit: list at most this many problem sites (None: all).
        width: the terminal width the table must fit (None: no limit, names in full).
        all_sites: list clean sites too.

    Returns:
        A rich table. Columns with nothing to show (saturated for ReLU-only models,
        never active without leaky kinds, dormant when none is) are left out.
    """
    ordered = worst_first(result)
    shown = [site for site in ordered if all_sites or flagged(site)]
    hidden = len(shown) - limit if limit is not None and len(shown) > limit else 0
    shown = shown[:limit] if hidden else shown
    clean = sum(1 for site in result.sites if not flagged(site))
    saturating = any(site.saturation for site in result.sites)
    leaky_dead = any(never_active(site) for site in result.sites)
    dormant = any(site.dormant for site in shown)
    columns: list[tuple[str, str]] = [("kind", "left"), ("units", "right"), ("dead", "right"), ("dead %", "right")]
    if saturating:
        columns.append(("saturated", "right"))
    if leaky_dead:
        columns.append(("never active", "right"))
    if dormant:
        columns.append(("dormant", "right"))
    columns.append(("active", "right"))
    rows = []
    for site in shown:
        dead = dead_no_gradient(site)
        cells = [visible(site.kind), f"{site.units:,}", str(dead) if not leaky(site) else "–",
                 _share(dead, site.units) if not leaky(site) else "–"]
        if saturating:
            cells.append(str(site.saturated) if site.saturation else "–")
        if leaky_dead:
            cells.append(str(never_active(site)) if leaky(site) else "–")
        if dormant:
            cells.append(str(site.dormant))
        cells.append(_rate(site.active_rate_mean))
        rows.append((site, cells))
    title = "Activation sites, worst first" if not all_sites else "Activation sites, worst first (all)"
    table = name_table(title, columns, rows, width, _row_style, name=lambda site: site.name)
    notes = []
    if hidden:
        notes.append(f"{hidden} more site(s) with dead units: --verbose or the HTML report")
    if clean and not all_sites:
        notes.append(f"{clean} site{'s' if clean != 1 else ''} clean (no dead or saturated unit)")
    if notes:
        table.caption = "; ".join(notes)
        table.caption_justify = "left"
    return table


def hang(text: Text, width: int | None, first: int = 2) -> Text:
    """A styled text wrapped at spaces to ``width``, keeping its styles: the first line's continuations
    indented ``first`` columns, every later line's two columns past its own indent. No word is broken
    (a name longer than the room keeps a line of its own, whole); None: unchanged."""
    if width is None:
        return text
    out = Text(style=text.style, end=text.end)
    offset = 0
    for number, line in enumerate(text.plain.split("\n")):
        if number:
            out.append("\n")
        lead = len(line) - len(line.lstrip(" "))
        indent = first if number == 0 else lead + 2
        start, previous, column = 0, 0, 0
        for word in re.finditer(r"\S+", line):
            if previous > lead and column + (word.end() - previous) > width:
                out.append_text(text[offset + start:offset + previous])   # trailing spaces dropped
                out.append("\n" + " " * indent)
                start, column = word.start(), indent + len(word.group())
            else:
                column += word.end() - previous
            previous = word.end()
        out.append_text(text[offset + start:offset + len(line)])
        offset += len(line) + 1
    return out


def verdict_line(result: ScanResult, width: int | None = None) -> Text:
    """One line saying OK / WARN / FAIL, the worst site, and the model-wide counts (wrapped to
    ``width`` under itself: ``hang``)."""
    verdict = overall(result)
    partial = " (PARTIAL)" if result.data.get("partial") else ""
    text = Text(f"{verdict.level.value}{partial}  ", style=LEVEL_STYLE[verdict.level])
    unobserved = result.summary.unobserved
    if verdict.units and unobserved == verdict.units:
        text.append("nothing observed: every unit saw only NaN/inf")
    else:
        text.append(verdict.headline(visible))
    text.append(f"\n  {', '.join(verdict.counts())}; {verdict.sites} site(s), "
                f"{result.data.get('samples', '?')} samples.")
    if verdict.gate_failed:
        text.append(" CI gate failed.", style="bold red")
    cause = cause_line(result)
    if cause is not None:
        text.append("\n  ")
        text.append(cause)
    return hang(text, width, len(verdict.level.value) + len(partial) + 2)


def top_cause(result: ScanResult) -> dict | None:
    """The suggestion the verdict line names as the cause (``judge.overall.headline_cause``)."""
    return headline_cause(result)


def cause_line(result: ScanResult) -> Text | None:
    """``Cause: learning rate too high — explains 139 of 139 dead units (#1)``, the headline's second half."""
    top, sentence = headline_cause(result), cause_sentence(result)
    if top is None or sentence is None:
        return None
    phrase = CAUSE_PHRASES.get(str(top["cause"]), str(top["cause"]))
    text = Text("Cause: ", style="bold")
    text.append(phrase, style=SEVERITY_STYLE.get(str(top.get("severity")), "bold"))
    text.append(sentence[len(phrase):])
    return text


def gate_lines(result: ScanResult) -> Text | None:
    """The CI gate's outcome, naming each broken limit (ratios as percentages, as JUnit and Markdown write them)."""
    gate = result.gate
    if gate is None:
        return None
    if gate.passed:
        limits = []
        if gate.max_dead_ratio is not None:
            limits.append(f"max dead ratio {percent(gate.max_dead_ratio)}")
        if gate.max_layer_dead_ratio is not None:
            limits.append(f"max layer dead ratio {percent(gate.max_layer_dead_ratio)}")
        return Text(f"Gate passed ({', '.join(limits) or 'no limits'}).", style="green")
    text = Text("Gate FAILED:", style="bold red")
    sites = {site.name: site for site in result.sites}
    for violation in gate.violations:
        where = sites.get(violation.scope) if violation.scope != "model" else result.summary
        counts = f" ({where.dead} of {where.units} units)" if where is not None else ""
        scope = "all sites" if violation.scope == "model" else f"site {visible(violation.scope)}"
        ratio, limit = percents_apart(violation.dead_ratio, violation.limit)
        text.append(f"\n  {scope}: dead ratio {ratio}{counts} > limit {limit}")
    return text


def warnings_text(result: ScanResult, verbose: bool = False) -> Group | None:
    """Coverage notes and warnings, one bullet each; a long one wraps under its own text. With
    ``verbose``, what the capture chose not to watch too (functional capture turned off after batch 1)."""
    notes = list(result.warnings)
    functional_note = (result.coverage or {}).get("functional_note")
    if verbose and functional_note:
        notes.append(functional_note)
    if not notes:
        return None
    bullets = Table.grid(padding=(0, 1, 0, 0))
    bullets.add_column(no_wrap=True)
    bullets.add_column(overflow="fold")
    for warning in notes:
        bullets.add_row("  -", Text(visible(warning)))
    return Group(Text("Notes:", style="bold"), bullets)


def dead_units_text(result: ScanResult, max_runs: int = 32) -> Text:
    """The indices of dead / saturated units per site, as runs (``0–255``), as every command writes them."""
    text = Text("Dead / saturated unit indices:", style="bold")
    any_listed = False
    for site in result.sites:
        for label, units in (("dead", site.dead_units),
                             ("never active (leaky)", site.never_active_units),
                             ("saturated", site.verdict.saturated_units)):
            if units:
                any_listed = True
                text.append(f"\n  {visible(site.name)} {label} [{len(units)}]: {index_ranges(units, max_runs)}")
    if not any_listed:
        text.append("\n  none")
    return text


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


def explained(suggestion: dict, result: ScanResult) -> str:
    """``8/16``: dead units the suggestion explains, of those dead at its sites (never-active units
    of leaky kinds and saturated units included, as ``units_explained`` counts them; ``–`` for
    generic advice)."""
    count = int(suggestion.get("units_explained") or 0)
    if not count:
        return "–"
    names = set(suggestion.get("sites", []))
    stuck = sum(int(problem_mask(site).sum()) for site in result.sites if site.name in names)
    return f"{count}/{stuck}"


def _head(suggestion: dict, position: int) -> tuple[str, str]:
    """``  #1  CRIT  `` and its style: the rank and severity every suggestion line starts with."""
    severity = str(suggestion.get("severity", "info"))
    rank = int(suggestion.get("rank") or position)
    return f"  #{rank:<2} {SEVERITY_SHORT.get(severity, 'INFO'):<4}  ", SEVERITY_STYLE.get(severity, "bold")


def _hanging(text: str, width: int | None, indent: int, first: int | None = None) -> str:
    """``text`` wrapped at spaces under a hanging ``indent``; the first line starts at column ``first``
    (default: ``indent``) and carries no indent of its own. Nothing is cut; None: one line."""
    first = indent if first is None else first
    if width is None:
        return text
    stand_in = "\x00" * (first - 1) + " " if first else ""
    return wrap_hanging(stand_in + text, width, indent)[len(stand_in):]


def suggestion_line(suggestion: dict, position: int, width: int | None, result: ScanResult) -> Text:
    """``#1 CRIT  net.0: reset 19 negative biases to 0 → explains 19 of 53 dead at net.1``: the
    suggestion's imperative action line, wrapped to ``width`` under itself with a hanging indent; never
    cut, so every name, number and range is there whole (``result``: kept for callers that pass it)."""
    head, style = _head(suggestion, position)
    action = visible(suggestion.get("action_line") or suggestion.get("title", ""))
    if suggestion.get("destructive"):
        action = "[erases training] " + action
    # Only the marker carries the severity's colour; the place the action names stands out in bold.
    line = Text()
    line.append(head, style=style)
    wrapped = _hanging(action, width, len(head))
    warning = "[erases training]" if suggestion.get("destructive") else ""
    if warning:
        line.append(warning, style="bold")
        wrapped = wrapped[len(warning):]
    lead = wrapped[:len(wrapped) - len(wrapped.lstrip())]   # the space, or the break, after the warning
    where, colon, rest = wrapped[len(lead):].partition(": ")
    if colon and "→" not in where:
        line.append(lead)
        line.append(where + ":", style="bold")
        line.append(" " + rest)
    else:
        line.append(wrapped)
    line.no_wrap = True
    line.overflow = "ignore"
    return line


def _code_block(snippet: str) -> Text:
    """Code as it must be pasted: every line whole, never soft-wrapped (the caller prints with
    ``crop=False``, so a line longer than the terminal runs on rather than being cut)."""
    block = Text(no_wrap=True, overflow="ignore")
    for k, line in enumerate(snippet.splitlines()):
        block.append(("\n" if k else "") + CODE_INDENT + visible(line), style="green")
    return block


def _details(suggestion: dict, width: int | None) -> Text:
    """Under an action line with ``--verbose``: the evidence (the title), sites, numbers, why, what the
    code changes; each wrapped at spaces with a hanging indent."""
    pad = " " * DETAIL_INDENT
    detail = Text()

    def add(label: str, text: str, style: str = "") -> None:
        lead = pad + label
        hang = len(lead) + (2 if text.startswith("- ") else 0)   # a list item wraps under its text
        detail.append(("\n" if detail.plain else "") + lead + _hanging(text, width, hang, len(lead)), style=style)

    add("evidence: ", visible(suggestion.get("title", "")))
    sites = list(suggestion.get("sites", []))
    if sites:
        add("sites: ", ", ".join(visible(s) for s in sites[:12])
            + (f" (+{len(sites) - 12} more)" if len(sites) > 12 else ""), "dim")
    numbers = _evidence_summary(dict(suggestion.get("evidence") or {}))
    if numbers:
        add("numbers: ", visible(numbers), "dim")
    for k, line in enumerate(visible(suggestion.get("action", ""), keep_newlines=True).split("\n")):
        if line.strip():
            add("why: " if k == 0 else "     ", line)
    if suggestion.get("changes"):
        add("the code ", visible(suggestion["changes"])
            + (" — it erases what training learned" if suggestion.get("destructive") else ""),
            "bold" if suggestion.get("destructive") else "")
    detail.no_wrap = True
    detail.overflow = "ignore"
    return detail


def suggestions_text(result: ScanResult, limit: int | None = DEFAULT_SUGGESTIONS, width: int | None = None,
                     verbose: bool = False) -> Group | None:
    """Suggested fixes, ranked: one imperative action line each (rank, severity, ``where: what to do
    → what it explains``).

    Args:
        result: a scan carrying ``suggestions``.
        limit: list at most this many (None: all).
        width: wrap lines to this width with a hanging indent (None: one line each); nothing is cut.
        verbose: under each action line, its evidence (the title), the numbers, why, what the code
            changes, and the code whole (print with ``crop=False``: code lines are never cut or wrapped).

    Returns:
        A rich Group, or None when the result carries no suggestions.
    """
    if not result.suggestions:
        return None
    parts: list = [Text("Suggested fixes: what to do, most urgent first", style="bold")]
    shown = list(result.suggestions)
    specific = any(s.get("cause") and not s.get("generic") for s in shown)
    generic = [s for s in shown if s.get("generic")] if specific and not verbose else []
    shown = [s for s in shown if s not in generic]
    chosen = shown if limit is None else shown[:limit]
    for position, suggestion in enumerate(chosen, 1):
        parts.append(suggestion_line(suggestion, position, width, result))
        if not verbose:
            continue
        parts.append(_details(suggestion, width))
        if suggestion.get("code"):
            parts.append(Text(" " * DETAIL_INDENT + "code:", style="dim"))
            parts.append(_code_block(str(suggestion["code"])))
    hidden = len(shown) - len(chosen)
    tail = []
    if hidden > 0:
        tail.append(f"{hidden} more")
    if generic:
        tail.append(f"{len(generic)} generic (activation, re-init): --verbose")
    if tail:
        parts.append(Text("  " + "; ".join(tail), style="dim"))
    if not verbose and any(s.get("code") for s in result.suggestions):
        parts.append(Text("  evidence and code: --verbose, --html or --json", style="dim"))
    elif not verbose and any(s.get("cause") for s in result.suggestions):
        parts.append(Text("  evidence: --verbose, --html or --json", style="dim"))
    return Group(*parts)


def report(result: ScanResult, show_units: bool = False, limit: int | None = DEFAULT_ROWS,
           suggestions: bool = True, width: int | None = None, verbose: bool = False) -> Group:
    """Everything the terminal shows after a scan: verdict, problem sites, suggestions, notes, gate.

    Args:
        result: the scan.
        show_units: list dead/saturated unit indices.
        limit: problem sites listed (``verbose`` lists every site).
        suggestions: show the suggested fixes.
        width: the width to fit (None: no limit — full names and lines, for logs).
        verbose: every site, and each suggestion's evidence, action and code.

    Returns:
        A rich Group.
    """
    table = layer_table(result, None if verbose else limit, width, all_sites=verbose)
    # The caption ("43 sites clean") is a line of its own, not wrapped to the table's width;
    # with no problem site to list it is all there is to say.
    caption, table.caption = table.caption, None
    parts: list = [verdict_line(result, width), Text("")]
    if table.row_count:
        parts.append(table)
    if caption:
        parts.append(Text(str(caption), style="dim" if table.row_count else ""))
    if show_units:
        parts.append(dead_units_text(result))
    parts.append(Text(""))
    for extra in (suggestions_text(result, None if verbose else DEFAULT_SUGGESTIONS, width, verbose)
                  if suggestions else None, warnings_text(result, verbose), gate_lines(result)):
        if extra is not None:
            parts.append(extra)
    return Group(*parts)
