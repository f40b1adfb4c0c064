"""A self-contained HTML report: one file, no network, no script, every outside string escaped.

``report(result) -> str`` builds the whole page. Images are embedded: the two overview
plots as base64 PNG (matplotlib), and per site a small inline-SVG histogram of active
rates plus a unit map written as a tiny PNG straight from numpy (one pixel per unit,
scaled up with ``image-rendering: pixelated``), so hundreds of sites cost kilobytes
each, not a matplotlib figure each. Per-site detail sits in collapsed ``<details>``
(the worst few open), capped at ``max_detail_sites`` (worst first); the site table
lists every site up to ``max_table_rows``.

Safety: every string that came from the model, the file system or the environment
(module names, paths, class names, warnings, suggestion text) goes through
``html.escape``; the page carries a Content-Security-Policy that allows no script and
no network at all, so even a missed escape could not run code or fetch anything.
"""

from __future__ import annotations

import html
import re
import math
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from ..numbers import above_limit, index_ranges, percent
from .console import worst_first
from .pixels import _data_uri, histogram_svg, png_rgb, unit_map_png
from .styles import CSS
from .text import visible

if TYPE_CHECKING:
    from ..result import ScanResult, SiteResult

#: Content-Security-Policy of the page: no script, no network; only inline CSS and data: images.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
#: per-site detail sections for at most this many sites (worst first)
MAX_DETAIL_SITES = 200
#: the worst this many sites with dead/saturated units have their detail open
OPEN_DETAILS = 3
#: site table rows
MAX_TABLE_ROWS = 1000
#: runs of unit indices listed per verdict and site (the rest are counted)
MAX_LISTED_UNITS = 200
#: unit map: displayed at most this wide (CSS pixels; MAP_MAX_COLUMNS columns at most, render.pixels)
MAP_DISPLAY_WIDTH = 480

SEVERITY_LABEL = {"critical": "CRITICAL", "warning": "WARNING", "info": "INFO"}


def _e(value: Any, keep_newlines: bool = False) -> str:
    """Escape anything for HTML text or a quoted attribute (invisible characters shown as escapes)."""
    return html.escape(visible(value, keep_newlines=keep_newlines), quote=True)


def _breakable(value: Any) -> str:
    """Text (a site name, an action line) escaped with a line-break opportunity after each ``.``, ``_``,
    ``/`` and ``:`` not followed by a digit (``0.07979``, ``stage_3`` stay whole): a 47-character name on a
    phone breaks at ``stage_3.|pointwise_act``, not mid-word.
    ``<wbr>`` adds no character, so what is copied is the name; never placed inside an entity (``&#x27;``)."""
    return re.sub(r"([._/:])(?=[^\d\s])", r"\1<wbr>", _e(value))


def _pct(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.1%}"


def _rate(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _num(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else "–"
    return str(value)


# -- embedded images ----------------------------------------------------------------------

# -- sections -----------------------------------------------------------------------------



#: every report element sits in this container, and every CSS rule is scoped to it
SCOPE = ".deadrelu-report"


def _top_level_blocks(css: str) -> list[tuple[str, str]]:
    """``selector{body}`` blocks at the top level of ``css`` (a body may hold nested blocks)."""
    blocks, depth, start, selector = [], 0, 0, ""
    for k, char in enumerate(css):
        if char == "{":
            if depth == 0:
                selector, start = css[start:k].strip(), k + 1
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                blocks.append((selector, css[start:k]))
                start = k + 1
    return blocks


def scope_css(css: str, scope: str = SCOPE) -> str:
    """Every rule of ``css`` limited to elements inside ``scope`` (``:root`` becomes the container
    itself), so a report embedded in a page — a notebook, a docs site — never restyles that page."""
    out = []
    for selector, body in _top_level_blocks(css):
        if selector.startswith("@"):
            out.append(f"{selector}{{{scope_css(body, scope)}}}")
            continue
        scoped = []
        for part in selector.split(","):
            part = part.strip()
            if part in (":root", "body", "html"):
                scoped.append(scope)
            elif part == "*":
                scoped += [scope, f"{scope} *"]
            else:
                scoped.append(f"{scope} {part}")
        out.append(f"{','.join(dict.fromkeys(scoped))}{{{body.strip()}}}")
    return "\n".join(out)


#: what evidence keys mean, for people
EVIDENCE_LABELS = {
    "threshold": "share over which a site is flagged", "sites_over_threshold": "sites over the threshold",
    "relu_sites": "ReLU sites in the model", "samples": "samples scanned", "per_site": "per site",
    "layer": "layer", "units": "units", "units_count": "units flagged", "dead_at_site": "dead units at the site",
    "biases": "their biases", "typical_preactivation": "their typical |w·x| (weight norm × input RMS)",
    "median_bias_other_units": "median bias of the other units",
    "strong_bias_multiple": "bias counted as strongly negative below −k × typical |w·x|, k =",
    "input_rms": "input RMS", "input_rms_source": "input RMS measured at",
    "cannot_fire_units": "units that cannot fire", "cannot_fire_count": "units that cannot fire (count)",
    "input_range_source": "input range from", "batchnorm": "BatchNorm layer", "channels": "channels flagged",
    "channels_count": "channels flagged (count)", "beta": "their β (bias)", "gamma": "their γ (weight)",
    "beta_strongly_negative": "channels with β < −k·|γ|", "gamma_near_zero": "channels with γ ≈ 0",
    "median_beta_live": "median β of live channels", "median_gamma_live": "median γ of live channels",
    "beta_multiple": "β counted as strongly negative below −k·|γ|, k =", "gamma_eps": "|γ| counted as ≈ 0 below",
    "dead_share_threshold": "dead share over which a site is flagged", "tolerance": "init match tolerance",
    "layers": "per layer", "saturation_verdict": "share at the floor that makes a unit saturated",
    "spearman_depth_vs_dead_ratio": "rank correlation of depth and dead share",
    "first_third_mean_dead_ratio": "mean dead share, first third", "last_third_mean_dead_ratio":
    "mean dead share, last third", "dead_ratio_by_depth": "dead share by depth", "collapsed_below": "|slope| ≈ 0 below",
    "dead_ratio": "dead share", "saturated": "saturated units", "dormant": "dormant units",
    "active_rate_mean": "mean active rate", "conv_layers": "conv layers", "norm_layers": "norm layers",
    "linear_layers": "Linear layers", "reason": "why", "dead": "dead units", "saturated_ratio": "saturated share",
    "fan_in": "fan-in", "weight_std": "weight std", "he_std": "He std", "lecun_std": "LeCun std",
    "pytorch_default_std": "PyTorch default std", "ratio_to_he": "std ÷ He std", "looks_like": "looks like",
    "site": "site", "negative_only": "never positive", "share": "share", "unit_indices": "units",
    "feeding_layer": "feeding layer", "median_bias_saturated": "median bias, saturated units",
    "median_bias_others": "median bias, other units", "mean_rate_at_floor_or_bound": "mean share at floor/bound",
    "min_output": "lowest output",
    "bias_hold_multiple": "bias counted as holding a unit below zero at −k × typical |w·x|, k =",
    "layer_median_bias": "median bias of the layer", "layer_biased_negative": "the layer's biases sit below zero",
    "per_layer": "per layer", "sites_with_evidence": "sites with evidence", "starved_downstream": "starving later",
    "grown_above": "weights counted as grown above × the largest usual init", "weight_growth": "× the largest usual init",
    "step_ratio_above": "steps counted as large above this share of the weights' rms",
    "thrown_below": "biases counted as thrown below −k × typical |w·x| from the live median, k =",
    "optimizer_state": "optimizer state read", "optimizer": "optimizer", "lr": "learning rate",
    "weight_rms": "weight rms", "step_to_weight": "step ÷ weight rms", "thrown_biases": "biases thrown",
    "thrown_units": "units with thrown biases", "thrown_bias_min": "lowest thrown bias",
    "live_median_bias": "median bias of live units", "root_site": "first dead site of the chain",
    "root_silent_share": "its share of silent units", "starved_share": "an input counted as starving at this share silent",
    "input_site": "input site", "input_silent_share": "its share of silent units", "root_fix": "the fix is suggestion #",
    "zero_row_below": "a row counted as zero below this share of the median row norm",
    "output_vs_gamma_beta": "output rms ÷ √(γ² + β²)", "output_rms_per_weight_norm": "output rms ÷ weight norm",
    "units_on_this_data": "dead units on this data", "how": "evidence from", "never_active": "never active (leaky)",
}


def _label(key: str) -> str:
    return EVIDENCE_LABELS.get(key, key.replace("_", " "))


def _card(label: str, value: str, note: str = "", tone: str = "") -> str:
    return (f'<div class="card {tone}"><div class="label">{_e(label)}</div><div class="value">{_e(value)}</div>'
            f'<div class="note">{_e(note)}</div></div>')


def verdict_card(result: ScanResult) -> str:
    """The verdict as one card: OK / WARN / FAIL, the worst site, the model-wide counts."""
    from ..judge.overall import overall
    verdict = overall(result)
    partial = " (PARTIAL scan)" if result.data.get("partial") else ""
    counts = verdict.counts("{:,}".format, leaky="never active (leaky: still have a gradient)")
    more = (", ".join(counts) + f" · {verdict.sites} site(s), {verdict.flagged_sites} with a problem · "
            f"{result.data.get('samples', '?')} samples" + (" · CI gate failed" if verdict.gate_failed else ""))
    from ..judge.overall import cause_sentence
    cause = cause_sentence(result)
    cause_html = f'<span class="more"><b>Cause:</b> {_e(cause)}</span>' if cause else ""
    return (f'<section class="verdictcard {verdict.level.value}"><span class="level">{verdict.level.value}{partial}'
            f'</span><span class="what">{_e(verdict.headline())}</span><span class="more">{_e(more)}</span>'
            f'{cause_html}</section>')


def _headline(result: ScanResult) -> str:
    from ..judge.overall import overall
    s = result.summary
    verdict = overall(result)
    gate = result.gate
    if gate is None:
        gate_card = _card("CI gate", "not set", "no --max-dead-ratio given")
    elif gate.passed:
        limits = [f"max dead {percent(gate.max_dead_ratio)}" if gate.max_dead_ratio is not None else "",
                  f"max layer dead {percent(gate.max_layer_dead_ratio)}" if gate.max_layer_dead_ratio is not None
                  else ""]
        gate_card = _card("CI gate", "passed", ", ".join(x for x in limits if x), "good")
    else:
        gate_card = _card("CI gate", "FAILED", f"{len(gate.violations)} limit(s) broken", "bad")
    cards = [
        _card("Units scanned", f"{s.units:,}", f"{s.sites} site(s), {result.data.get('samples', '?')} samples"),
        _card("Dead", f"{verdict.dead:,}", f"{_pct(verdict.dead_ratio)} of units, no gradient",
              "bad" if verdict.dead else "good"),
        *([_card("Unobserved", f"{s.unobserved:,}", "no finite observation: neither alive nor dead", "bad")]
          if s.unobserved else []),
    ]
    if verdict.never_active:
        cards.append(_card("Never active", f"{verdict.never_active:,}", "leaky kinds: still have a gradient"))
    if any(site.saturation for site in result.sites):
        cards.append(_card("Saturated", f"{s.saturated:,}", f"{_pct(s.saturated_ratio)} of units",
                           "bad" if s.saturated else ""))
    cards += [_card("Dormant", f"{s.dormant:,}", f"{_pct(s.dormant_ratio)} (ReDo τ={result.settings.thresholds.tau:g})"),
              _card("Mean active rate", _rate(s.active_rate_mean), "share of observations active"), gate_card]
    violations = ""
    if gate is not None and not gate.passed:
        items = "".join(
            f"<li>{'all sites' if v.scope == 'model' else 'site ' + _e(v.scope)}: dead ratio "
            f"{_e(above_limit(v.dead_ratio, v.limit))}</li>" for v in gate.violations[:50])
        violations = f'<ul class="warnings">{items}</ul>'
    return f'{verdict_card(result)}<section class="cards">{"".join(cards)}</section>{violations}'


def _evidence_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        shown = ", ".join(_num(v) for v in list(value)[:40])
        return f"[{shown}{', …' if len(value) > 40 else ''}]"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_num(v)}" for k, v in list(value.items())[:12])
    return _num(value) if value is not None else "–"


def _evidence_table(evidence: dict[str, Any]) -> tuple[str, int]:
    """Evidence as HTML: scalars and lists as key/value rows; a dict of dicts (per site, per layer) as a
    matrix with one row per entry. Returns the HTML and how many numbers it shows."""
    rows, matrices, numbers = [], [], 0
    for key, value in evidence.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            columns = list(dict.fromkeys(column for entry in value.values() for column in entry))
            head = "".join(f"<th>{_e(_label(column))}</th>" for column in columns)
            body = "".join(
                f"<tr><td>{_e(name)}</td>" + "".join(f"<td>{_e(_evidence_value(entry.get(column)))}</td>"
                                                      for column in columns) + "</tr>"
                for name, entry in value.items())
            numbers += sum(len(entry) for entry in value.values())
            matrices.append(f'<p class="muted" style="margin:8px 0 2px">{_e(_label(key))}</p><div style="overflow-x:auto">'
                            f'<table class="evidence matrix"><thead><tr><th></th>{head}</tr></thead>'
                            f"<tbody>{body}</tbody></table></div>")
            continue
        numbers += len(value) if isinstance(value, (list, tuple, dict)) else 1
        rows.append(f"<tr><td>{_e(_label(key))}</td><td>{_e(_evidence_value(value))}</td></tr>")
    table = f'<table class="evidence">{"".join(rows)}</table>' if rows else ""
    return table + "".join(matrices), numbers


def _action_html(action: str) -> str:
    """Action text: the first paragraph, then ``- `` lines as a list."""
    lines = action.split("\n")
    head = [line for line in lines if not line.startswith("- ")]
    items = [line[2:] for line in lines if line.startswith("- ")]
    body = "".join(f"<p>{_breakable(line)}</p>" for line in head if line.strip())
    if items:
        body += "<ul>" + "".join(f"<li>{_breakable(item)}</li>" for item in items) + "</ul>"
    return body


def _explained_html(suggestion: dict[str, Any], result: ScanResult) -> str:
    cause = suggestion.get("cause")
    tag = f'<span class="cause">cause: {_e(str(cause))}</span> ' if cause else ""
    count = int(suggestion.get("units_explained") or 0)
    if not count:
        return tag + '<span class="muted">general advice: names no cause</span>'
    from ..judge.overall import problem_mask
    names = set(suggestion.get("sites", []))
    stuck = sum(int(problem_mask(site).sum()) for site in result.sites if site.name in names)
    return tag + f'<span class="explains">explains {count:,} of {stuck:,} dead units there</span>'


def _suggestions(result: ScanResult, anchors: dict[str, str]) -> str:
    if not result.suggestions:
        return ('<p class="muted">No suggestions were computed for this result (it was saved without them); '
                "rerun <code>deadrelu scan</code> to get them.</p>")
    blocks = []
    for k, suggestion in enumerate(result.suggestions):
        severity = str(suggestion.get("severity", "info"))
        tone = severity if severity in SEVERITY_LABEL else "info"
        sites = list(suggestion.get("sites", []))
        site_links = ", ".join(
            (f'<a href="#{anchors[name]}">{_breakable(name)}</a>' if name in anchors else _breakable(name))
            for name in sites[:20])
        more = f" and {len(sites) - 20} more" if len(sites) > 20 else ""
        sites_html = f'<p class="sites">Sites: {site_links}{more}</p>' if sites else ""
        table, numbers = _evidence_table(dict(suggestion.get("evidence") or {}))
        evidence = f'<details><summary>Evidence ({numbers} values)</summary>{table}</details>' if numbers else ""
        code = suggestion.get("code") or ""
        changes = suggestion.get("changes") or ""
        destructive = suggestion.get("destructive")
        changes_html = ""
        if code:
            warning = '<span class="destructive">Erases what training learned: </span>' if destructive else ""
            changes_html = f'<p class="changes">{warning}The code {_e(changes) if changes else "applies the fix"}.</p>'

        code_html = f"<pre><code>{_e(code, keep_newlines=True)}</code></pre>" if code else ""
        rank = int(suggestion.get("rank") or k + 1)
        blocks.append(
            f'<article class="sugg {tone}" id="suggestion-{k}"><h3><span class="sev">#{rank} '
            f'{SEVERITY_LABEL.get(tone, "INFO")}</span>'
            f'{_breakable(suggestion.get("action_line") or suggestion.get("title", ""))}</h3>'
            f'<p class="finding"><b>Evidence:</b> {_breakable(suggestion.get("title", ""))}</p>'
            f'<p>{_explained_html(suggestion, result)}</p>'
            f'{sites_html}{_action_html(str(suggestion.get("action", "")))}{evidence}{changes_html}{code_html}'
            f'<p class="muted" style="font-size:12px">rule: {_e(suggestion.get("id", ""))}</p></article>')
    return "".join(blocks)


def _site_rows(result: ScanResult, sites: Sequence[SiteResult], anchors: dict[str, str], first_rank: int,
               saturating: bool, leaky_kinds: bool) -> str:
    from ..judge.overall import Level, dead_no_gradient, leaky, never_active, site_level
    position = {id(site): k for k, site in enumerate(result.sites)}
    rows = []
    for rank, site in enumerate(sites, first_rank):
        level = site_level(site)
        tone = {Level.FAIL: "bad", Level.WARN: "warn"}.get(level, "leaky" if never_active(site) else "")
        name = _breakable(site.name)
        if site.name in anchors:
            name = f'<a href="#{anchors[site.name]}">{name}</a>'
        dead = dead_no_gradient(site)
        share = dead / site.units if site.units else 0.0
        bar = f'<span class="bar" style="width:{max(share * 60, 0):.0f}px"></span> ' if dead else ""
        # data-label names a cell where a phone shows the row as a card (no header row); "minor"
        # cells are left out there, so the name, dead and dead % fit 390 px without scrolling.
        cells = (f'<td class="n" data-label="dead">{dead:,}</td><td class="n" data-label="dead %">{bar}{_pct(share)}'
                 '</td>' if not leaky(site) else '<td class="n" data-label="dead">–</td><td class="n" '
                 'data-label="dead %">–</td>')
        if saturating:
            cells += (f'<td class="n" data-label="saturated">{f"{site.saturated:,}" if site.saturation else "–"}'
                      '</td>')
        if leaky_kinds:
            cells += (f'<td class="n" data-label="never active">{f"{never_active(site):,}" if leaky(site) else "–"}'
                      '</td>')
        rows.append(
            f'<tr class="{tone}"><td class="n minor">{rank}</td><td class="name">{name}</td>'
            f'<td data-label="kind">{_e(site.kind)}</td><td class="n minor">{position[id(site)]}</td>'
            f'<td class="n" data-label="units">{site.units:,}</td>{cells}'
            f'<td class="n minor">{site.dormant:,}</td><td class="n minor">{_rate(site.active_rate_mean)}</td></tr>')
    return "".join(rows)


def _site_table(result: ScanResult, ordered: Sequence[SiteResult], anchors: dict[str, str],
                max_rows: int) -> str:
    """Sites with a problem, worst first; the clean ones in a collapsed table under them.
    Columns with nothing to show (saturated for ReLU-only models, never active without leaky kinds) are left out."""
    from ..judge.overall import flagged, never_active
    saturating = any(site.saturation for site in result.sites)
    leaky_kinds = any(never_active(site) for site in result.sites)
    listed = list(ordered[:max_rows])
    problems = [site for site in listed if flagged(site)]
    clean = [site for site in listed if not flagged(site)]
    head = ('<thead><tr><th class="n">#</th><th>site</th><th>kind</th><th class="n">depth</th>'
            '<th class="n">units</th><th class="n">dead</th><th class="n">dead %</th>'
            + ('<th class="n">saturated</th>' if saturating else "")
            + ('<th class="n">never active (leaky)</th>' if leaky_kinds else "")
            + '<th class="n">dormant</th><th class="n">active rate</th></tr></thead>')
    table = ""
    if problems:
        table = (f'<div class="tablebox"><table class="sites">{head}<tbody>'
                 f'{_site_rows(result, problems, anchors, 1, saturating, leaky_kinds)}</tbody></table></div>')
    else:
        table = '<p>No site has a dead, saturated or never-active unit.</p><table></table>'
    if clean:
        table += (f'<details><summary>{len(clean)} site(s) clean (no dead or saturated unit): show them</summary>'
                  f'<div class="tablebox"><table class="sites">{head}<tbody>'
                  f'{_site_rows(result, clean, anchors, len(problems) + 1, saturating, leaky_kinds)}'
                  "</tbody></table></div></details>")
    more = (f'<p class="muted">{len(ordered) - max_rows} more site(s) not listed; all are in the JSON report.</p>'
            if len(ordered) > max_rows else "")
    return table + more


def _unit_list(label: str, units: list[int]) -> str:
    if not units:
        return ""
    return f'<p class="units"><b>{_e(label)} [{len(units)}]</b>: {_e(index_ranges(units, MAX_LISTED_UNITS))}</p>'


def _site_detail(result: ScanResult, site: SiteResult, anchor: str, opened: bool,
                 mentions: list[tuple[int, dict[str, Any]]]) -> str:
    png, columns, rows = unit_map_png(site)
    scale = max(1, min(16, MAP_DISPLAY_WIDTH // max(columns, 1)))
    stats_rows = [("units", f"{site.units:,}"), ("unit axis", "–" if site.unit_dim is None else str(site.unit_dim)),
                  ("observations per unit", f"{site.observations:,}"), ("dead", f"{site.dead:,} ({_pct(site.dead_ratio)})"),
                  ("saturated", f"{site.saturated:,}" if site.saturation else "– (does not saturate)"),
                  ("dormant", f"{site.dormant:,}"), ("mean active rate", _rate(site.active_rate_mean)),
                  ("non-finite observations", f"{site.nonfinite:,}"),
                  ("module", site.module or "<root>"), ("call", str(site.call_index))]
    if site.function:
        stats_rows.append(("function", site.function))
    if site.prelu_slopes:
        slopes = site.prelu_slopes
        stats_rows.append(("PReLU slopes", f"min {slopes['min']:.3g}, mean {slopes['mean']:.3g}, "
                                           f"max {slopes['max']:.3g}, {slopes['nonpositive']} ≤ 0"))
    table = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in stats_rows)
    linked = "".join(f'<li><a href="#suggestion-{k}">{_breakable(s.get("action_line") or s.get("title", ""))}</a></li>'
                     for k, s in mentions)
    linked = f"<p><b>Suggestions for this site</b></p><ul>{linked}</ul>" if linked else ""
    legend = ('<span style="background:#d62728"></span>dead'
              + ('<span style="background:#ff7f0e"></span>saturated' if site.saturation else "")
              + '<span style="background:#dddddd"></span>no observation')
    summary = (f"<b>{_breakable(site.name)}</b> · {_e(site.kind)} · {site.dead:,} of {site.units:,} dead "
               f"({_pct(site.dead_ratio)})" + (f" · {site.saturated:,} saturated" if site.saturation else "")
               + f" · {site.dormant:,} dormant")
    return (f'<details class="site" id="{anchor}"{" open" if opened else ""}><summary>{summary}</summary>'
            f'<div class="detail"><figure>{histogram_svg(site)}<figcaption>Per-unit active rates '
            f'(share of units per bin)</figcaption></figure>'
            f'<figure><img class="map" alt="unit map of {_e(site.name)}" src="{_data_uri(png)}" '
            f'width="{columns * scale}" height="{rows * scale}"><figcaption>Units by active rate (viridis), '
            f'unit i at row i // {columns}<br><span class="legend">{legend}</span></figcaption></figure>'
            f'<table class="facts">{table}</table></div>'
            f'{_unit_list("dead units", site.dead_units)}'
            f'{_unit_list("never-active units (leaky: still have a gradient)", site.never_active_units)}'
            f'{_unit_list("saturated units", site.verdict.saturated_units) if site.saturation else ""}'
            f'{_unit_list("dormant units", site.verdict.dormant_units)}{linked}</details>')


def _meta_table(rows: Iterable[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><td>{_e(k)}</td><td>{_e(_num(v) if not isinstance(v, str) else v)}</td></tr>"
                   for k, v in rows if v is not None and v != "")
    return f'<table class="meta">{body}</table>'


def _run_metadata(result: ScanResult) -> str:
    model, data, env, settings = result.model, result.data, result.environment, result.settings
    thresholds = settings.thresholds
    shape = data.get("sample_shape")
    model_rows = [("model source", model.get("source")), ("format", model.get("format")),
                  ("class", model.get("class")), ("parameters", model.get("parameters")),
                  ("model SHA-256", model.get("sha256"))]
    data_rows = [("data source", data.get("source")), ("samples", data.get("samples")), ("batches", data.get("batches")),
                 ("sample shape", None if not shape else "×".join(map(str, shape))), ("dtype", data.get("dtype")),
                 ("samples with NaN/inf", data.get("nonfinite")), ("skipped samples", data.get("skipped")),
                 ("data SHA-256", data.get("sha256"))]
    settings_rows = [("dead threshold", thresholds.dead_threshold), ("τ (dormancy)", thresholds.tau),
                     ("saturation share", thresholds.saturation), ("saturation rtol", thresholds.saturation_rtol),
                     ("granularity", getattr(settings.granularity, "value", settings.granularity)),
                     ("batch size", settings.batch_size), ("limit", settings.limit),
                     ("layers", ", ".join(settings.layers)), ("exclude", ", ".join(settings.exclude)),
                     ("functional capture", getattr(settings.functional, "value", settings.functional))]
    env_rows = [("deadrelu", env.get("deadrelu")), ("torch", env.get("torch")), ("device", env.get("device")),
                ("dtype", env.get("dtype")), ("date", env.get("date"))]
    coverage = result.coverage or {}
    not_run = coverage.get("not_run") or []
    excluded = coverage.get("excluded") or []
    cov_rows = [("sites scanned", _sites_scanned(result)),
                ("never ran", ", ".join(map(str, not_run[:30])) + (" …" if len(not_run) > 30 else "")),
                ("excluded", ", ".join(map(str, excluded[:30])) + (" …" if len(excluded) > 30 else "")),
                ("functional capture", coverage.get("functional_note"))]
    warnings = "".join(f"<li>{_e(w)}</li>" for w in result.warnings)
    warnings_html = f'<h3>Notes</h3><ul class="warnings">{warnings}</ul>' if warnings else ""
    return (f"<h3>Model</h3>{_meta_table(model_rows)}<h3>Data</h3>{_meta_table(data_rows)}"
            f"<h3>Settings</h3>{_meta_table(settings_rows)}<h3>Environment</h3>{_meta_table(env_rows)}"
            f"<h3>Coverage</h3>{_meta_table(cov_rows)}{warnings_html}")


def _sites_scanned(result: ScanResult) -> str:
    """``4 sites: 2 activation modules (one called 3 times is 3 sites), 1 functional call site``."""
    coverage = result.coverage or {}
    sites, modules = len(result.sites), coverage.get("activation_modules")
    functional = int(coverage.get("functional_sites") or 0)
    if modules is None:
        return f"{sites:,}"
    parts = [f"{modules:,} activation module(s) found"]
    if functional:
        parts.append(f"{functional:,} functional call site(s) (F.relu...)")
    text = f"{sites:,}: " + ", ".join(parts)
    if sites > int(modules) + functional:
        text += "; a module called k times per forward pass is k sites"
    return text


def _overview_plots(result: ScanResult) -> str:
    from .plots import active_rate_histogram, dead_ratio_by_layer, figure_png
    parts = []
    for title, build, alt in (("Dead, saturated and dormant share through depth", dead_ratio_by_layer,
                               "bar charts of dead, saturated and dormant share per site in network order"),
                              ("Per-unit active rates", active_rate_histogram,
                               "distribution of per-unit active rates per site")):
        png = figure_png(build(result), dpi=90)
        # Natural size in a scrolling box: a wide plot of hundreds of sites stays legible instead of shrinking.
        parts.append(f'<h3>{_e(title)}</h3><div class="plotbox"><img class="plot" alt="{_e(alt)}" '
                     f'src="{_data_uri(png)}"></div>')
    return "".join(parts)


def report(result: ScanResult, *, max_detail_sites: int = MAX_DETAIL_SITES, max_table_rows: int = MAX_TABLE_ROWS,
           plots: bool = True) -> str:
    """The whole report as one self-contained HTML page.

    Args:
        result: the scan (suggestions are shown as stored in ``result.suggestions``).
        max_detail_sites: per-site detail for at most this many sites, worst first.
        max_table_rows: rows of the site table.
        plots: embed the two overview plots (matplotlib; about a second for hundreds of sites).

    Returns:
        HTML text (UTF-8), openable from disk with no network.
    """
    ordered = worst_first(result)
    detailed = ordered[:max_detail_sites]
    position = {id(site): k for k, site in enumerate(result.sites)}
    anchors = {site.name: f"site-{position[id(site)]}" for site in detailed}
    mentions: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for k, suggestion in enumerate(result.suggestions):
        # Model-wide advice (depth trend, the selection guide, "use LeakyReLU at these N sites") is
        # above; a site's detail links only a cause found at that site (a card merged over several
        # sites names a cause at each of them).
        if (suggestion.get("scope", "site") != "site" or suggestion.get("generic")
                or (len(suggestion.get("sites", [])) != 1 and not suggestion.get("units_explained"))):
            continue
        for name in suggestion.get("sites", []):
            mentions.setdefault(name, []).append((k, suggestion))
    worth_opening = [site for site in detailed if site.never_fired or site.saturated][:OPEN_DETAILS]
    details = "".join(
        _site_detail(result, site, anchors[site.name], any(site is other for other in worth_opening),
                     mentions.get(site.name, []))
        for site in detailed)
    omitted = len(ordered) - len(detailed)
    details += (f'<p class="muted">Detail for {omitted} healthier site(s) left out to keep the page light; '
                "every site's numbers are in the table above and in the JSON report.</p>") if omitted else ""
    source = str(result.model.get("source", "model"))
    counts = {severity: sum(1 for s in result.suggestions if s.get("severity") == severity)
              for severity in SEVERITY_LABEL}
    counted = ", ".join(f"{n} {severity}" for severity, n in counts.items() if n) or "none"
    date = result.environment.get("date", "")
    plots_html = f"<h2>Overview</h2>{_overview_plots(result)}" if plots and result.sites else ""
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="referrer" content="no-referrer">'
        f"<title>deadrelu report — {_e(source)}</title><style>{scope_css(CSS)}</style></head><body>"
        f'<div class="deadrelu-report"><main>'
        f"<h1>deadrelu report</h1>"
        f'<p class="sub">{_e(source)} · {_e(result.data.get("source", "data"))} · {_e(date)}</p>'
        f"{_headline(result)}"
        f"<h2>Sites, worst first</h2>{_site_table(result, ordered, anchors, max_table_rows)}"
        f'<h2>Suggested fixes <span class="muted" style="font-size:14px">(ranked by dead units explained; '
        f'{_e(counted)})</span></h2>'
        f"{_suggestions(result, anchors)}"
        f"{plots_html}"
        f"<h2>Per-site detail</h2>{details}"
        f"<h2>Run</h2>{_run_metadata(result)}"
        f"<footer>Made by deadrelu {_e(result.environment.get('deadrelu', ''))}. Definitions: dead = never active "
        f"(active rate ≤ dead threshold); saturated = at the floor/bound in ≥ the saturation share of observations; "
        f"dormant = ReDo score ≤ τ.</footer>"
        "</main></div></body></html>\n")


__all__ = ["report", "verdict_card", "scope_css", "png_rgb", "unit_map_png", "histogram_svg", "CSP", "SCOPE",
           "EVIDENCE_LABELS"]
