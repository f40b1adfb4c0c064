"""Why units died, read in data-flow order: upstream starvation and zeroed weight rows.

Sites are walked in network order (the order they first ran). A site whose weight layer reads
the output of an earlier site that is mostly dead gets its input as mostly zeros: its dead
units are attributed ``upstream`` to that site (followed back to the first dead site, the
*root*), and no local rule (bias, init, BatchNorm) claims them, because no local change gives
them an input. Units whose incoming weight rows are all zero (pruning, strong weight decay)
are ``zero-weights``. The two causes judged over the whole model, ``learning-rate`` and
``input-scale``, are in ``training.py``.

Every number a finding rests on goes into its ``evidence``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ...kinds import KINDS
from ..overall import problem_mask, stuck_mask
from .base import (EVIDENCE_LIST_MAX, RuleContext, Suggestion, _cut, _lit, _num, _ranges, act, merged_action, rule,
                   site_severity, suggestion)
from .layers import in_width, is_weight_layer, layer_width, weight_rows

if TYPE_CHECKING:
    from torch import nn

    from ...result import SiteResult

#: an input site with at least this share of its units silent (dead, or saturated) starves the next
STARVED_SHARE = 0.5
#: a weight row whose norm is at most this share of its layer's median row norm counts as zero
ZERO_ROW = 1e-6
#: kinds whose product sites pair a gate with an up projection
GATED = tuple(name for name, info in KINDS.items() if info.family == "gated")


def silent_share(site: SiteResult) -> float:
    """Share of the site's units whose output carries nothing: dead without gradient, or saturated."""
    return float(stuck_mask(site).sum()) / site.units if site.units else 0.0


def _mean_square(site: SiteResult) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return site.stats.total_sq / np.maximum(site.stats.observations, 1)


def input_rms(context: RuleContext, site: SiteResult) -> tuple[float, str]:
    """Root mean square of the input of ``site``'s weight layer: measured at the site that feeds it,
    else assumed 1 (standardised model input)."""
    source = context.input_site(site)
    if source is not None:
        finite = _mean_square(source)[np.isfinite(_mean_square(source))]
        if finite.size:
            return float(math.sqrt(max(float(finite.mean()), 1e-24))), f"site {source.name} (measured)"
    return 1.0, "assumed 1 (inputs taken as standardised)"


# -- zeroed weight rows ------------------------------------------------------------------------------

def gated_factors(context: RuleContext, site: SiteResult) -> tuple[tuple[str, nn.Module], tuple[str, nn.Module]] | None:
    """For a gated product site (``mlp:swiglu#0``): the gate projection (feeding the gate's activation
    site in the same module) and the up projection (the last layer before the product)."""
    if site.kind not in GATED or context.model is None or site.producer is None or site.producer.layer is None:
        return None
    up_layer = context.module(site.producer.layer)
    if up_layer is None or not is_weight_layer(up_layer) or layer_width(up_layer) != site.units:
        return None
    prefix = f"{site.module}." if site.module else ""
    sites = list(context.result.sites)
    position = next(k for k, other in enumerate(sites) if other is site)
    for earlier in reversed(sites[:position]):
        if earlier.units == site.units and earlier.module.startswith(prefix) and earlier.kind not in GATED:
            gate = context.weight_layer(earlier)
            if gate is not None and gate[1] is not up_layer:
                return gate, (site.producer.layer, up_layer)
            return None
    return None


def _zero(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1)
    scale = float(np.median(norms[norms > 0])) if (norms > 0).any() else 1.0
    return norms <= ZERO_ROW * scale


def zero_rows(context: RuleContext, site: SiteResult) -> tuple[np.ndarray, list[str]]:
    """Units of ``site`` whose incoming weight rows are all zero, and the layers read (a gated
    product's unit is zero when its gate row or its up row is)."""
    def compute() -> tuple[np.ndarray, list[str]]:
        none = np.zeros(site.units, dtype=bool)
        factors = gated_factors(context, site)
        layers = list(factors) if factors is not None else []
        if not layers:
            found = context.weight_layer(site)
            if found is None or layer_width(found[1]) != site.units:
                return none, []
            layers = [found]
        mask = none.copy()
        for _name, layer in layers:
            if layer_width(layer) != site.units:
                return none, []
            mask |= _zero(weight_rows(layer))
        return mask, [name for name, _ in layers]
    return context.memo(f"zero:{site.name}", compute)


# -- upstream ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Starved:
    """Units of ``site`` whose input is mostly zero because ``source`` is dead (``root``: the first
    dead site of the chain)."""

    site: str
    source: str
    root: str
    source_silent_share: float
    mask: np.ndarray


def upstream(context: RuleContext) -> dict[str, Starved]:
    """Sites, in network order, whose problem units starve on a mostly dead input site."""
    def compute() -> dict[str, Starved]:
        found: dict[str, Starved] = {}
        if context.model is None or not context.channel_granularity:
            return found
        for site in context.result.sites:
            mask = problem_mask(site) & ~zero_rows(context, site)[0]
            if not mask.any():
                continue
            source = context.input_site(site)
            if source is None:
                continue
            share = silent_share(source)
            if share < STARVED_SHARE:
                continue
            root = found[source.name].root if source.name in found else source.name
            found[site.name] = Starved(site.name, source.name, root, share, mask)
        return found
    return context.memo("upstream", compute)


def claimed_elsewhere(context: RuleContext, site: SiteResult) -> np.ndarray:
    """Units of ``site`` a local rule must leave alone: starved by a dead input, or with zero weight rows."""
    starved = upstream(context).get(site.name)
    mask = zero_rows(context, site)[0].copy()
    if starved is not None:
        mask |= starved.mask
    return mask


# -- upstream card ---------------------------------------------------------------------------------------

@rule
def rule_upstream(context: RuleContext) -> list[Suggestion]:
    """Dead units whose input is mostly zero: one card per dead root site, naming it as the place to fix."""
    by_root: dict[str, list[Starved]] = {}
    for entry in upstream(context).values():
        by_root.setdefault(entry.root, []).append(entry)
    by_name = {site.name: site for site in context.result.sites}
    out = []
    for root, entries in by_root.items():
        root_site = by_name[root]
        units = sum(int(entry.mask.sum()) for entry in entries)
        severity = max([site_severity(root_site)] + [site_severity(by_name[e.site]) for e in entries],
                       key=lambda s: -s.order)
        first = entries[0]
        where = first.site if len(entries) == 1 else f"{first.site} and {len(entries) - 1} later site(s)"
        title = (f"{units} dead unit(s) at {where} starve on a dead input: site {root} outputs nothing on "
                 f"{silent_share(root_site):.0%} of its units — fix {root} first")
        lines = [f"{e.site}: {int(e.mask.sum())} unit(s); its input site {e.source} is {e.source_silent_share:.0%} "
                 "silent" for e in entries[:EVIDENCE_LIST_MAX]]
        action = (f"These units' weight layer reads the output of a site that is mostly dead, so their pre-activation "
                  f"is little more than their bias and never rises above zero. No change here (bias, init, BatchNorm) "
                  f"gives them an input: fix site {root} first (its own suggestion names the cause; the code is that "
                  "fix), fine-tune, and scan again: units here that still never fire then have a cause of their own, "
                  "which the new scan names.\n- " + "\n- ".join(lines))
        evidence = {"root_site": root, "root_silent_share": _num(silent_share(root_site)), "starved_share": STARVED_SHARE,
                    "per_site": {e.site: {"input_site": e.source, "input_silent_share": _num(e.source_silent_share),
                                          "units": int(e.mask.sum()),
                                          "unit_indices": _cut(np.flatnonzero(e.mask).tolist())}
                                 for e in entries[:EVIDENCE_LIST_MAX]}}
        out.append(suggestion("upstream-dead", severity, [e.site for e in entries], title, evidence, action,
                              explains=units, cause="upstream",
                              changes=f"applies the fix of site {root}'s own suggestion",
                              action_line=act(root, "fix this site first, its dead units starve later sites")))
    return out


# -- zeroed weight rows card -------------------------------------------------------------------------------

@rule
def rule_zero_weights(context: RuleContext) -> list[Suggestion]:
    """Dead units whose incoming weight rows are all zero (pruned, or decayed to nothing)."""
    out = []
    # A gated MLP's gate activation and its product share the gate rows: the product's card re-initialises both.
    gates = {factors[0][0] for factors in (gated_factors(context, site) for site in context.result.sites)
             if factors is not None}
    for site in context.result.sites:
        zero, layers = zero_rows(context, site)
        mask = zero & problem_mask(site)
        if not mask.any():
            continue
        units = np.flatnonzero(mask).tolist()
        factors = gated_factors(context, site)
        title = (f"{site.name} ← {' and '.join(layers)}: {len(units)} unit(s) have all-zero incoming weights "
                 f"({_unit_ranges(units)})")
        action = ("A unit whose weight row is all zero computes a constant (its bias) for every input: with a bias "
                  "≤ 0 it never fires and gets no gradient, so it stays zero. Pruning (without removing the unit) and "
                  "strong weight decay leave such rows. If the units were pruned on purpose, remove them "
                  "(`deadrelu prune`); otherwise give them fresh weights: the code re-initialises them ReDo-style "
                  "(outputs unchanged: their outgoing weights start at zero) — `deadrelu fix MODEL DATA --recycle dead` "
                  "does the same — then fine-tune.")
        if factors is not None:
            code = _gated_reinit_code(context, site, factors, units)
        elif layers and layers[0] in gates:
            code = ""   # the gated product's card re-initialises these gate rows
        else:
            code = ("import deadrelu\n"
                    "# re-initialise the zero rows ReDo-style (data: what you scanned):\n"
                    f"deadrelu.recycle(model, deadrelu.scan(model, data), 'dead', optimizer, layers=[{_lit(site.name)}])")
        evidence = {"layers": layers, "units": _cut(units), "units_count": len(units), "dead_at_site": site.never_fired,
                    "zero_row_below": ZERO_ROW}
        out.append(suggestion("zero-weights", site_severity(site), [site.name], title, evidence, action, code,
                              explains=len(units), cause="zero-weights",
                              changes=f"re-initialises {len(units)} unit(s) of {' and '.join(layers)}",
                              action_line=act(layers or [site.name], merged_action("zero-weights", len(units), "zero-weights"),
                                              noun="layers")))
    return out


def _gated_reinit_code(context: RuleContext, site: SiteResult, factors: tuple[tuple[str, Any], tuple[str, Any]],
                       units: list[int]) -> str:
    """Fresh gate and up rows for the zero units, and their down-projection columns zeroed (outputs unchanged)."""
    down = None
    parent = context.module(site.module) if site.module else context.model
    if parent is not None:
        for name, module in parent.named_children():
            if is_weight_layer(module) and in_width(module) == site.units and name not in (
                    factors[0][0].rpartition(".")[2], factors[1][0].rpartition(".")[2]):
                down = f"{site.module}.{name}" if site.module else name
                break
    lines = ["import copy", "import torch", f"units = {units}", "with torch.no_grad():"]
    for name, _ in factors:
        lines += [f"    layer = model.get_submodule({_lit(name)})", "    fresh = copy.deepcopy(layer)",
                  "    fresh.reset_parameters()", "    layer.weight[units] = fresh.weight[units]"]
    if down is not None:
        lines += [f"    model.get_submodule({_lit(down)}).weight[:, units] = 0.0  # outputs unchanged until trained"]
    return "\n".join(lines)


def _unit_ranges(indices: list[int]) -> str:
    return _ranges(indices, "unit")


__all__ = ["rule_upstream", "rule_zero_weights", "upstream", "zero_rows", "problem_mask", "silent_share",
           "claimed_elsewhere", "input_rms", "gated_factors", "Starved", "STARVED_SHARE", "ZERO_ROW"]
