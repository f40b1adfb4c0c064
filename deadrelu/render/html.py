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

import base64
import html
import math
import struct
import zlib
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from .console import worst_first
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
#: unit indices listed per verdict and site
MAX_LISTED_UNITS = 200
#: unit map: at most this many columns; displayed at most this wide (CSS pixels)
MAP_MAX_COLUMNS = 256
MAP_DISPLAY_WIDTH = 480

SEVERITY_LABEL = {"critical": "CRITICAL", "warning": "WARNING", "info": "INFO"}


def _e(value: Any, keep_newlines: bool = False) -> str:
    """Escape anything for HTML text or a quoted attribute (invisible characters shown as escapes)."""
    return html.escape(visible(value, keep_newlines=keep_newlines), quote=True)


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

def png_rgb(pixels: np.ndarray) -> bytes:
    """Encode an ``(height, width, 3)`` uint8 array as PNG bytes (no matplotlib needed)."""
    height, width, _ = pixels.shape
    rows = np.concatenate([np.zeros((height, 1), dtype=np.uint8), pixels.reshape(height, width * 3)], axis=1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
            + chunk(b"IEND", b""))


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


_LUT: np.ndarray | None = None


def _viridis_lut() -> np.ndarray:
    global _LUT
    if _LUT is None:
        from matplotlib import colormaps
        _LUT = (colormaps["viridis"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)
    return _LUT


def _hex_rgb(color: str) -> np.ndarray:
    return np.array([int(color[k:k + 2], 16) for k in (1, 3, 5)], dtype=np.uint8)


def unit_map_png(site: SiteResult) -> tuple[bytes, int, int]:
    """A site's units as pixels (viridis by active rate; dead red, saturated orange, unobserved grey;
    an ELU/SELU/CELU unit at its floor is orange even though it is dead too).

    Returns:
        PNG bytes, columns and rows (unit ``i`` is at row ``i // columns``).
    """
    from .plots import DEAD_COLOR, SATURATED_COLOR, UNOBSERVED_COLOR, saturated_mark, unit_grid
    rows, columns = unit_grid(site.units)
    if columns > MAP_MAX_COLUMNS:
        columns = MAP_MAX_COLUMNS
        rows = math.ceil(site.units / columns)
    cells = rows * columns
    colors = np.empty((cells, 3), dtype=np.uint8)
    colors[:] = _hex_rgb("#ffffff")
    rates = site.stats.active_rate
    observed = np.isfinite(rates)
    index = np.clip(np.nan_to_num(rates, nan=0.0) * 255, 0, 255).astype(int)
    unit_colors = _viridis_lut()[index]
    unit_colors[~observed] = _hex_rgb(UNOBSERVED_COLOR)
    unit_colors[site.verdict.dead] = _hex_rgb(DEAD_COLOR)
    unit_colors[saturated_mark(site)] = _hex_rgb(SATURATED_COLOR)
    colors[: site.units] = unit_colors
    return png_rgb(colors.reshape(rows, columns, 3)), columns, rows


def histogram_svg(site: SiteResult, width: int = 300, height: int = 96) -> str:
    """An inline SVG bar chart of the site's per-unit active rates (dead units in their own red bar)."""
    from .plots import DEAD_COLOR, RATE_BINS, rate_histogram
    counts = rate_histogram(site.stats.active_rate)
    shares = counts / max(site.units, 1)
    top = max(float(shares.max()), 1e-9)
    left, bottom, plot_h = 34, 16, height - 30
    bar_w = (width - left - 6) / (RATE_BINS + 1.5)
    bars = []
    for k, share in enumerate(shares):
        x = left + (k + (0.5 if k else 0)) * bar_w
        h = plot_h * float(share) / top
        color = DEAD_COLOR if k == 0 else "#3b6ea8"
        bars.append(f'<rect x="{x:.1f}" y="{bottom + plot_h - h:.1f}" width="{bar_w * 0.9:.1f}" '
                    f'height="{h:.1f}" fill="{color}"><title>{_bin_label(k)}: {int(counts[k])} units</title></rect>')
    axis_y = bottom + plot_h
    return (f'<svg class="hist" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="histogram of per-unit active rates">'
            f'<line x1="{left}" y1="{axis_y}" x2="{width - 4}" y2="{axis_y}" stroke="#888"/>'
            f'<text x="{left - 4}" y="{bottom + 4}" text-anchor="end">{top:.0%}</text>'
            f'<text x="{left - 4}" y="{axis_y}" text-anchor="end">0</text>'
            + "".join(bars) +
            f'<text x="{left + bar_w * 0.45:.1f}" y="{height - 2}" text-anchor="middle">dead</text>'
            f'<text x="{width - 6}" y="{height - 2}" text-anchor="end">active rate 1</text></svg>')


def _bin_label(k: int) -> str:
    from .plots import RATE_BINS
    if k == 0:
        return "never active (dead)"
    low, high = (k - 1) / RATE_BINS, k / RATE_BINS
    return f"active rate {low:.2f}–{high:.2f}"


# -- sections -----------------------------------------------------------------------------

CSS = """
:root{--fg:#1d1d1f;--muted:#5f6368;--line:#dadce0;--bg:#fff;--soft:#f6f7f9;--dead:#d62728;--sat:#ff7f0e;
--ok:#1e8e3e;--warn:#b06000;--crit:#c5221f;--info:#1a73e8;--leaky:#0f8a9d;
font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
color:var(--fg);background:var(--bg);text-align:left}
*{box-sizing:border-box}
main{max-width:1120px;margin:0 auto;padding:24px 28px 64px}
.verdictcard{display:flex;flex-wrap:wrap;gap:6px 16px;align-items:baseline;border:1px solid var(--line);
border-left:8px solid var(--ok);border-radius:8px;padding:12px 16px;margin:0 0 14px;background:var(--soft)}
.verdictcard.WARN{border-left-color:var(--warn)}.verdictcard.FAIL{border-left-color:var(--crit)}
.verdictcard .level{font-size:26px;font-weight:750;color:var(--ok)}.verdictcard.WARN .level{color:var(--warn)}
.verdictcard.FAIL .level{color:var(--crit)}.verdictcard .what{font-size:17px;overflow-wrap:anywhere}
.verdictcard .more{flex-basis:100%;color:var(--muted);font-size:14px}
tr.leaky td{background:#e8f6f8}.explains{font-weight:650}.cause{font-weight:650;margin-right:.6em}.destructive{color:var(--crit);font-weight:650}
.changes{font-size:13px;color:var(--muted)}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:36px 0 12px;border-bottom:1px solid var(--line);
padding-bottom:4px}h3{font-size:16px;margin:0 0 6px}
.sub{color:var(--muted);margin:0 0 18px;overflow-wrap:anywhere}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:12px}
.card{border:1px solid var(--line);border-radius:8px;padding:12px 14px;background:var(--soft)}
.card .label{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted)}
.card .value{font-size:24px;font-weight:650}.card .note{font-size:13px;color:var(--muted)}
.card.bad .value{color:var(--crit)}.card.good .value{color:var(--ok)}
.verdict{font-size:17px;margin:16px 0 0}
.plotbox{overflow-x:auto;max-width:100%}
img.plot{max-width:none;height:auto;border:1px solid var(--line);border-radius:6px}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{padding:5px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:var(--soft);font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
td.name{overflow-wrap:anywhere;max-width:380px}
tr.bad td{background:#fdecea}tr.warn td{background:#fff4e5}
.bar{display:inline-block;height:9px;background:var(--dead);vertical-align:middle;border-radius:2px}
.sugg{border:1px solid var(--line);border-left:6px solid var(--info);border-radius:8px;padding:12px 16px;
margin:12px 0;break-inside:avoid}
.sugg.critical{border-left-color:var(--crit)}.sugg.warning{border-left-color:var(--warn)}
.sev{font-size:12px;font-weight:700;letter-spacing:.05em;margin-right:6px}
.critical .sev{color:var(--crit)}.warning .sev{color:var(--warn)}.info .sev{color:var(--info)}
.sugg p{margin:6px 0}.sugg .sites{color:var(--muted);font-size:13px;overflow-wrap:anywhere}
.evidence{font-size:13px;margin:8px 0}.evidence td:first-child{color:var(--muted);width:34%}
.evidence.matrix td:first-child{width:auto}.evidence.matrix th{font-size:12px}
pre{background:#f1f3f4;border-radius:6px;padding:10px 12px;overflow-x:auto;font-size:13px;line-height:1.4;
white-space:pre}
.tablebox{overflow-x:auto;max-width:100%}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
details.site{border:1px solid var(--line);border-radius:8px;margin:8px 0;padding:0 12px}
details.site>summary{cursor:pointer;padding:8px 0;overflow-wrap:anywhere}
details.site[open]>summary{border-bottom:1px solid var(--line);margin-bottom:8px}
.detail{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start;padding-bottom:10px}
.detail figure{margin:0}.detail figcaption{font-size:12px;color:var(--muted)}
img.map{image-rendering:pixelated;image-rendering:crisp-edges;border:1px solid var(--line)}
svg.hist text{font-size:10px;fill:#5f6368}
.units{font-size:13px;overflow-wrap:anywhere;font-family:ui-monospace,Menlo,Consolas,monospace}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px;vertical-align:middle}
table.facts{width:auto;min-width:300px;font-size:13px}table.facts td:first-child{color:var(--muted);
white-space:nowrap}table.facts td{overflow-wrap:anywhere;max-width:360px}
.muted{color:var(--muted)}.meta td:first-child{width:24%;color:var(--muted)}
.meta td{overflow-wrap:anywhere}
ul.warnings li{margin:2px 0;overflow-wrap:anywhere}
footer{margin-top:40px;color:var(--muted);font-size:13px}
@media (max-width:640px){main{padding:14px 10px 40px}.verdictcard .level{font-size:22px}
td.name{overflow-wrap:normal;white-space:nowrap;max-width:none}}
@media print{main{max-width:none;padding:0}img.plot{max-width:100%}details.site{break-inside:avoid}
details::details-content{content-visibility:visible;display:block;height:auto}
a{color:inherit;text-decoration:none}}
"""


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
        limits = [f"max dead {gate.max_dead_ratio:g}" if gate.max_dead_ratio is not None else "",
                  f"max layer dead {gate.max_layer_dead_ratio:g}" if gate.max_layer_dead_ratio is not None else ""]
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
            f"<li>{'all units' if v.scope == 'model' else 'site ' + _e(v.scope)}: dead ratio {v.dead_ratio:.4f} "
            f"&gt; limit {v.limit:g}</li>" for v in gate.violations[:50])
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
    body = "".join(f"<p>{_e(line)}</p>" for line in head if line.strip())
    if items:
        body += "<ul>" + "".join(f"<li>{_e(item)}</li>" for item in items) + "</ul>"
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
            (f'<a href="#{anchors[name]}">{_e(name)}</a>' if name in anchors else _e(name)) for name in sites[:20])
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
            f'{SEVERITY_LABEL.get(tone, "INFO")}</span>{_e(suggestion.get("title", ""))}</h3>'
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
        name = _e(site.name)
        if site.name in anchors:
            name = f'<a href="#{anchors[site.name]}">{name}</a>'
        dead = dead_no_gradient(site)
        share = dead / site.units if site.units else 0.0
        bar = f'<span class="bar" style="width:{max(share * 60, 0):.0f}px"></span> ' if dead else ""
        cells = (f'<td class="n">{dead:,}</td><td class="n">{bar}{_pct(share)}</td>' if not leaky(site)
                 else '<td class="n">–</td><td class="n">–</td>')
        if saturating:
            cells += f'<td class="n">{f"{site.saturated:,}" if site.saturation else "–"}</td>'
        if leaky_kinds:
            cells += f'<td class="n">{f"{never_active(site):,}" if leaky(site) else "–"}</td>'
        rows.append(
            f'<tr class="{tone}"><td class="n">{rank}</td><td class="name">{name}</td><td>{_e(site.kind)}</td>'
            f'<td class="n">{position[id(site)]}</td><td class="n">{site.units:,}</td>{cells}'
            f'<td class="n">{site.dormant:,}</td><td class="n">{_rate(site.active_rate_mean)}</td></tr>')
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
        table = (f'<div class="tablebox"><table>{head}<tbody>'
                 f'{_site_rows(result, problems, anchors, 1, saturating, leaky_kinds)}</tbody></table></div>')
    else:
        table = '<p>No site has a dead, saturated or never-active unit.</p><table></table>'
    if clean:
        table += (f'<details><summary>{len(clean)} site(s) clean (no dead or saturated unit): show them</summary>'
                  f'<div class="tablebox"><table>{head}<tbody>'
                  f'{_site_rows(result, clean, anchors, len(problems) + 1, saturating, leaky_kinds)}'
                  "</tbody></table></div></details>")
    more = (f'<p class="muted">{len(ordered) - max_rows} more site(s) not listed; all are in the JSON report.</p>'
            if len(ordered) > max_rows else "")
    return table + more


def _unit_list(label: str, units: list[int]) -> str:
    if not units:
        return ""
    shown = ", ".join(map(str, units[:MAX_LISTED_UNITS]))
    more = f" … (+{len(units) - MAX_LISTED_UNITS} more)" if len(units) > MAX_LISTED_UNITS else ""
    return f'<p class="units"><b>{_e(label)} [{len(units)}]</b>: {shown}{more}</p>'


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
    linked = "".join(f'<li><a href="#suggestion-{k}">{_e(s.get("title", ""))}</a></li>' for k, s in mentions)
    linked = f"<p><b>Suggestions for this site</b></p><ul>{linked}</ul>" if linked else ""
    legend = ('<span style="background:#d62728"></span>dead'
              + ('<span style="background:#ff7f0e"></span>saturated' if site.saturation else "")
              + '<span style="background:#dddddd"></span>no observation')
    summary = (f"<b>{_e(site.name)}</b> · {_e(site.kind)} · {site.dead:,} of {site.units:,} dead "
               f"({_pct(site.dead_ratio)})" + (f" · {site.saturated:,} saturated" if site.saturation else "")
               + f" · {site.dormant:,} dormant")
    return (f'<details class="site" id="{anchor}"{" open" if opened else ""}><summary>{summary}</summary>'
            f'<div class="detail"><figure>{histogram_svg(site)}<figcaption>Per-unit active rates '
            f'(share of units per bin)</figcaption></figure>'
            f'<figure><img class="map" alt="unit map of {_e(site.name)}" src="{_data_uri(png)}" '
            f'width="{columns * scale}" height="{rows * scale}"><figcaption>Units by active rate (viridis), '
            f'unit i at row i // {columns}<br><span class="legend">{legend}</span></figcaption></figure>'
            f'<table class="facts">{table}</table></div>'
            f'{_unit_list("dead units", site.verdict.dead_units)}'
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
                     ("functional capture", settings.functional)]
    env_rows = [("deadrelu", env.get("deadrelu")), ("torch", env.get("torch")), ("device", env.get("device")),
                ("dtype", env.get("dtype")), ("date", env.get("date"))]
    coverage = result.coverage or {}
    not_run = coverage.get("not_run") or []
    excluded = coverage.get("excluded") or []
    cov_rows = [("activation modules found", coverage.get("activation_modules")),
                ("never ran", ", ".join(map(str, not_run[:30])) + (" …" if len(not_run) > 30 else "")),
                ("excluded", ", ".join(map(str, excluded[:30])) + (" …" if len(excluded) > 30 else ""))]
    warnings = "".join(f"<li>{_e(w)}</li>" for w in result.warnings)
    warnings_html = f'<h3>Notes</h3><ul class="warnings">{warnings}</ul>' if warnings else ""
    return (f"<h3>Model</h3>{_meta_table(model_rows)}<h3>Data</h3>{_meta_table(data_rows)}"
            f"<h3>Settings</h3>{_meta_table(settings_rows)}<h3>Environment</h3>{_meta_table(env_rows)}"
            f"<h3>Coverage</h3>{_meta_table(cov_rows)}{warnings_html}")


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
    worth_opening = [site for site in detailed if site.dead or site.saturated][:OPEN_DETAILS]
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
