"""Rules that read nothing but the result: they also run on a result read back from JSON.

Dead share (ReLU/ReLU6 sites over 10 % dead), units that only use their negative side,
saturation, a dead share growing with depth, PReLU slopes, and "nothing to fix".
Where the model is given, saturation and depth advice also name the layer feeding a site.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ...kinds import NEGATIVE_SIDE_KINDS, ZERO_GRADIENT_KINDS
from .base import (DEAD_SHARE_WARNING, DEPTH_MIN_CORRELATION, DEPTH_MIN_RISE, DEPTH_MIN_SITES,
                   EVIDENCE_LIST_MAX, PRELU_COLLAPSED, SATURATION_WARNING, SCOPE_MODEL,
                   VERY_DEEP_SITES, RuleContext, Suggestion, _cut, _is_weight_layer, _lit, _num,
                   _replace_modules_code, act, kind_label, rule, site_severity, suggestion)

if TYPE_CHECKING:
    from ...result import SiteResult


@rule
def rule_dead_share(context: RuleContext) -> list[Suggestion]:
    """ReLU/ReLU6 sites with more than ``DEAD_SHARE_WARNING`` dead units -> LeakyReLU or ELU."""
    result, model = context.result, context.model
    heavy = [s for s in result.sites if s.kind in ZERO_GRADIENT_KINDS and s.dead_ratio > DEAD_SHARE_WARNING]
    if not heavy:
        return []
    worst = max(heavy, key=lambda s: s.dead_ratio)
    # As urgent as the worst site's level: a few dead units over the 10 % mention threshold in a healthy
    # model are worth a line, not a warning.
    severity = min((site_severity(s) for s in heavy), key=lambda level: level.order)
    relu_sites = sum(1 for s in result.sites if s.kind in ZERO_GRADIENT_KINDS)
    gan = model is not None and any(word in type(model).__name__.lower()
                                    for word in ("gan", "discriminator", "generator", "critic"))
    deep = relu_sites >= VERY_DEEP_SITES
    slope = 0.2 if gan else 0.1
    if gan or deep:
        choice = (f"LeakyReLU(negative_slope={slope:g})" + (" — the usual choice in GANs" if gan else "")
                  + (f" — a {relu_sites}-site deep stack keeps a gradient path through every layer" if deep else ""))
    else:
        choice = "LeakyReLU (negative_slope 0.01–0.1) or ELU"
    module_names = [s.module for s in heavy if s.function is None and s.module]
    functional = [s.name for s in heavy if s.function is not None or not s.module]
    per_site = {s.name: {"dead": s.dead, "units": s.units, "dead_ratio": _num(s.dead_ratio)}
                for s in heavy[:EVIDENCE_LIST_MAX]}
    inplace = any(getattr(context.module(n), "inplace", False) for n in module_names)
    kinds = kind_label(s.kind for s in heavy)
    code = ""
    if module_names:
        unique = list(dict.fromkeys(module_names))
        code = _replace_modules_code(
            unique, f"nn.LeakyReLU({slope:g}{', inplace=True' if inplace else ''})",
            f"a dead {kinds} unit gets no gradient; LeakyReLU keeps one for negative inputs (fine-tune after)")
    if functional:
        code += ("\n" if code else "") + "".join(
            f"# {name}: in that module's forward(), replace F.{_function_of(name)}(x) with F.leaky_relu(x, {slope:g})\n"
            for name in functional).rstrip("\n")
    title = (f"{len(heavy)} {kinds} site(s) have more than {DEAD_SHARE_WARNING:.0%} dead units "
             f"(worst: site {worst.name}, {worst.never_fired} of {worst.units} = {worst.dead_ratio:.1%})")
    clip = (" LeakyReLU drops ReLU6's clip at 6; keep ReLU6 where low-precision inference needs it and fix the "
            "cause instead." if "ReLU6" in kinds else "")
    action = (f"Replace the {kinds} at these sites with {choice}: they keep a gradient for negative inputs, so "
              "a unit can come back. Learnable slopes (PReLU) are an option when the training data is plentiful "
              "(one parameter per channel; they overfit on small data). Also look at the learning rate: "
              f"dead units are usually pushed there by large updates.{clip} A cause named for a site (a bias, a "
              "BatchNorm channel) is the better first fix.")
    evidence = {"threshold": DEAD_SHARE_WARNING, "sites_over_threshold": len(heavy),
                "relu_sites": relu_sites, "samples": result.data.get("samples"), "per_site": per_site}
    swapped = len(dict.fromkeys(module_names))
    changes = (f"swaps {swapped} activation module(s) for LeakyReLU({slope:g})" if swapped else
               "comments only: where to change F.relu calls")
    dead = sum(s.dead for s in heavy)
    units = sum(s.units for s in heavy)
    line = act([s.name for s in heavy], f"switch {kinds} → LeakyReLU({slope:g}) (dead {dead}/{units})")
    return [suggestion("dead-share", severity, [s.name for s in heavy], title, evidence, action, code,
                       changes=changes, cause="activation", generic=True, action_line=line)]


def _function_of(site_name: str) -> str:
    """``relu6`` from ``block:relu6#0``."""
    return site_name.rpartition(":")[2].partition("#")[0] or "relu"


@rule
def rule_negative_side(context: RuleContext) -> list[Suggestion]:
    """Leaky/smooth kinds whose units never see a positive pre-activation (and are not already saturated)."""
    result = context.result
    hit = []
    for site in result.sites:
        if site.kind not in NEGATIVE_SIDE_KINDS or not site.units:
            continue
        only_negative = site.verdict.dead & ~site.verdict.saturated
        count = int(only_negative.sum())
        if count / site.units > DEAD_SHARE_WARNING:
            hit.append((site, count, np.flatnonzero(only_negative).tolist()))
    if not hit:
        return []
    worst, worst_count, _ = max(hit, key=lambda item: item[1] / item[0].units)
    title = (f"{len(hit)} site(s) where units are never active — leaky, they still have a gradient — and never see a positive pre-activation (worst: site {worst.name} "
             f"({worst.kind}), {worst_count} of {worst.units} = {worst_count / worst.units:.1%})")
    action = ("LeakyReLU, PReLU, ELU, SELU, CELU, GELU and SiLU keep a (small) gradient for negative inputs, so "
              "these units are not dead in ReLU's sense, but they only ever use the negative side: they compute a "
              "scaled-down function of their input. Check the incoming bias and the input normalisation; a lower "
              "learning rate helps if they drifted there.")
    per_site = {site.name: {"kind": site.kind, "negative_only": count, "units": site.units,
                            "share": _num(count / site.units), "unit_indices": _cut(units)}
                for site, count, units in hit[:EVIDENCE_LIST_MAX]}
    evidence = {"threshold": DEAD_SHARE_WARNING, "sites_over_threshold": len(hit), "per_site": per_site}
    count, units = sum(c for _, c, _ in hit), sum(site.units for site, _, _ in hit)
    line = act([site.name for site, _, _ in hit], f"check the incoming biases and the input normalisation ({count} of "
                                                  f"{units} units only see negative inputs)")
    return [suggestion("negative-only", "info", [site.name for site, _, _ in hit], title, evidence, action,
                       cause="bias", generic=True, action_line=line)]


@rule
def rule_saturation(context: RuleContext) -> list[Suggestion]:
    """ELU/SELU/CELU at their floor, ReLU6/Hardtanh stuck at a bound -> lower LR, normalise inputs, check bias."""
    result = context.result
    hit: list[tuple[SiteResult, int, np.ndarray]] = []
    for site in result.sites:
        if not site.saturation or not site.units:
            continue
        # For ReLU6/Hardtanh, units stuck at the lower bound are dead too and get the dead-share advice.
        mask = site.verdict.saturated & ~site.verdict.dead if site.saturation == "bounds" else site.verdict.saturated
        count = int(mask.sum())
        if count / site.units > SATURATION_WARNING:
            hit.append((site, count, mask))
    if not hit:
        return []
    worst = max(hit, key=lambda item: item[1] / item[0].units)
    severity = min((site_severity(s) for s, _, _ in hit), key=lambda level: level.order)
    per_site: dict[str, Any] = {}
    bias_lines = []
    for site, count, mask in hit[:EVIDENCE_LIST_MAX]:
        rate = site.stats.floor_rate if site.saturation == "floor" else site.stats.bound_rate
        entry: dict[str, Any] = {"saturated": count, "units": site.units, "saturated_ratio": _num(count / site.units),
                                 "mean_rate_at_floor_or_bound": _num(float(np.nanmean(rate[mask]))),
                                 "min_output": _num(float(np.min(site.stats.minimum)))}
        feeder = context.feeder(site)
        if feeder is not None and getattr(feeder.layer, "bias", None) is not None:
            bias = feeder.layer.bias.detach().double().cpu().numpy()
            entry["feeding_layer"] = feeder.name
            entry["median_bias_saturated"] = _num(float(np.median(bias[mask])))
            if (~mask).any():
                entry["median_bias_others"] = _num(float(np.median(bias[~mask])))
            bias_lines.append(f"print(model.get_submodule({_lit(feeder.name)}).bias[{_cut(np.flatnonzero(mask).tolist())}])")
        per_site[site.name] = entry
    site, count, _ = worst
    where = "its negative floor" if site.saturation == "floor" else "a bound of its clip range"
    title = (f"{len(hit)} site(s) saturated (worst: site {site.name} ({site.kind}), {count} of {site.units} units "
             f"sit at {where} = {count / site.units:.1%})")
    action = ("The gradient at the floor/bound is ~0, so these units are effectively dead. Lower the learning "
              "rate (e.g. 10×), normalise the inputs (mean 0, std 1 per feature), and check the incoming bias: "
              "a strongly negative bias pins ELU/SELU/CELU units at the floor.")
    code = ("# lower the learning rate, e.g. 10x:\n"
            "for group in optimizer.param_groups:\n"
            "    group['lr'] *= 0.1\n"
            "# normalise inputs with training-set statistics: x = (x - mean) / (std + 1e-8)\n")
    if bias_lines:
        code += "# the biases feeding the saturated units:\n" + "\n".join(bias_lines[:4])
    evidence = {"threshold": SATURATION_WARNING, "saturation_verdict": result.settings.thresholds.saturation,
                "per_site": per_site}
    # Saturated units whose feeding biases sit far below the others' were put there by their bias.
    biased = any("median_bias_others" in entry and entry["median_bias_saturated"] is not None
                 and entry["median_bias_saturated"] < min(0.0, entry["median_bias_others"] or 0.0) - 1.0
                 for entry in per_site.values())
    count, units = sum(c for _, c, _ in hit), sum(s.units for s, _, _ in hit)
    line = act([s.name for s, _, _ in hit],
               ("check the biases pinning the units, lower the learning rate and normalise the inputs" if biased else
                "lower the learning rate 10× and normalise the inputs") + f" ({count} of {units} units saturated)")
    return [suggestion("saturation", severity, [s.name for s, _, _ in hit], title, evidence, action, code,
                       action_line=line,
                       changes="lowers the optimizer's learning rate 10×" + ("; prints the feeding biases"
                                                                           if bias_lines else ""),
                       cause="bias" if biased else "learning-rate")]


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given their mean rank, NaN left NaN (pandas' ``Series.rank()``,
    without importing pandas: that alone took 0.3-0.5 s of every scan's start-up)."""
    values = np.asarray(values, dtype=np.float64)
    ranks = np.full(values.shape, np.nan)
    finite = ~np.isnan(values)
    kept = values[finite]
    order = np.argsort(kept, kind="mergesort")
    ordered = kept[order]
    starts = np.r_[0, np.flatnonzero(ordered[1:] != ordered[:-1]) + 1] if kept.size else np.zeros(0, dtype=int)
    ends = np.r_[starts[1:], kept.size] if kept.size else np.zeros(0, dtype=int)
    kept_ranks = np.empty(kept.size)
    kept_ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    ranks[finite] = kept_ranks
    return ranks


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx = _average_ranks(x)
    ry = _average_ranks(y)
    if np.std(rx) == 0 or np.std(ry) == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


@rule
def rule_depth_trend(context: RuleContext) -> list[Suggestion]:
    """A dead share that grows with depth -> lower learning rate, BatchNorm, residual connections."""
    result = context.result
    sites = [s for s in result.sites if s.units]
    if len(sites) < DEPTH_MIN_SITES:
        return []
    ratios = np.array([s.never_fired_ratio for s in sites])
    depth = np.arange(len(sites), dtype=float)
    rho = _spearman(depth, ratios)
    third = max(1, len(sites) // 3)
    first, last = float(ratios[:third].mean()), float(ratios[-third:].mean())
    if not (math.isfinite(rho) and rho >= DEPTH_MIN_CORRELATION and last - first >= DEPTH_MIN_RISE):
        return []
    deeper = [s for s in sites[third:] if s.never_fired_ratio > first]
    deepest = max(deeper, key=lambda s: s.never_fired_ratio) if deeper else sites[-1]
    profile = [_num(r, 3) for r in ratios]
    evidence = {"spearman_depth_vs_dead_ratio": _num(rho, 3), "first_third_mean_dead_ratio": _num(first),
                "last_third_mean_dead_ratio": _num(last), "sites": len(sites),
                "dead_ratio_by_depth": profile if len(profile) <= EVIDENCE_LIST_MAX else profile[:: math.ceil(
                    len(profile) / EVIDENCE_LIST_MAX)]}
    title = (f"The dead share grows with depth: {first:.1%} in the first third of the sites, "
             f"{last:.1%} in the last (rank correlation {rho:.2f})")
    action = ("Death that accumulates through depth points at training dynamics rather than one layer: lower "
              "the learning rate (or add warm-up), put BatchNorm (or LayerNorm) before the activations so each "
              "layer sees normalised inputs, or add residual connections so deep layers keep a gradient path.")
    code = ("# lower the learning rate, e.g. 10x (or add a warm-up schedule):\n"
            "for group in optimizer.param_groups:\n"
            "    group['lr'] *= 0.1\n")
    inserted = False
    feeder = context.feeder(deepest) if deepest.function is None and deepest.module else None
    if feeder is not None and _is_weight_layer(feeder.layer) and context.module(deepest.module) is not None:
        from torch import nn
        dims = {nn.Linear: 1, nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}.get(type(feeder.layer), 1)
        if deepest.name == deepest.module:  # wrapping a reused module would change its other calls too
            inserted = True
            code += (f"# normalise before the activation at {deepest.name} (repeat for the other deep sites):\n"
                     f"import torch.nn as nn\n"
                     f"parent_name, _, child = {_lit(deepest.module)}.rpartition('.')\n"
                     f"parent = model.get_submodule(parent_name)\n"
                     f"setattr(parent, child, nn.Sequential(nn.BatchNorm{dims}d({deepest.units}), "
                     f"getattr(parent, child)))")
    changes = "lowers the learning rate 10×" + (f"; inserts a BatchNorm before {deepest.name}" if inserted else "")
    flagged_sites = deeper or [deepest]
    severity = min((site_severity(s) for s in flagged_sites), key=lambda level: level.order)
    line = act("optimizer", f"lower the learning rate or normalise before each activation (dead share rises "
                            f"{first:.0%} → {last:.0%} with depth, worst {deepest.name})")
    return [suggestion("depth-trend", severity, [s.name for s in flagged_sites], title, evidence,
                       action, code, changes=changes, scope=SCOPE_MODEL, cause="learning-rate", generic=True,
                       action_line=line)]


@rule
def rule_prelu_slopes(context: RuleContext) -> list[Suggestion]:
    """PReLU slopes collapsed to ~0 (a ReLU again, can die) or negative (a non-monotonic unit).

    One suggestion per severity: ``warning`` for sites whose collapsed slopes come with dead
    units, ``info`` for the rest; per-site numbers under ``evidence.per_site``.
    """
    result = context.result
    groups: dict[str, list[tuple[SiteResult, dict[str, Any], bool, bool]]] = {"warning": [], "info": []}
    for site in result.sites:
        if site.kind != "PReLU" or not site.prelu_slopes:
            continue
        summary = site.prelu_slopes
        weights = None
        if site.function is None and site.module:
            module = context.module(site.module)
            if module is not None and hasattr(module, "weight"):
                weights = module.weight.detach().double().cpu().numpy().reshape(-1)
        entry: dict[str, Any] = {"slope_min": _num(summary["min"]), "slope_mean": _num(summary["mean"]),
                                 "slope_max": _num(summary["max"]), "slopes": summary["count"],
                                 "nonpositive": summary["nonpositive"], "dead_units": site.never_fired}
        if weights is not None:
            negative = np.flatnonzero(weights < -PRELU_COLLAPSED).tolist()
            collapsed = np.flatnonzero(np.abs(weights) <= PRELU_COLLAPSED).tolist()
            entry["negative_slopes"] = len(negative)
            entry["collapsed_slopes"] = len(collapsed)
            entry["negative_channels"] = _cut(negative)
            entry["collapsed_channels"] = _cut(collapsed)
            has_negative, has_collapsed = bool(negative), bool(collapsed)
        else:  # from the JSON summary: min/max/count only
            has_negative = summary["min"] < -PRELU_COLLAPSED
            has_collapsed = max(abs(summary["min"]), abs(summary["max"])) <= PRELU_COLLAPSED
            if has_collapsed:
                entry["collapsed_slopes"] = int(summary["count"])
        if not has_negative and not has_collapsed:
            continue
        severity = "warning" if has_collapsed and site.never_fired else "info"
        groups[severity].append((site, entry, has_negative, has_collapsed))
    out = []
    for severity, hits in groups.items():
        if not hits:
            continue
        site, entry, _, _ = hits[0]
        counts = []
        if any(negative for *_, negative, _ in hits):
            counts.append(f"{entry['negative_slopes']} negative" if "negative_slopes" in entry and
                          entry["negative_slopes"] else "negative")
        if any(collapsed for *_, collapsed in hits):
            counts.append(f"{entry.get('collapsed_slopes', 'some')} collapsed to ~0")
        title = (f"Site {site.name}: PReLU slopes {', '.join(counts)} (min {entry['slope_min']:.3g}, "
                 f"max {entry['slope_max']:.3g})")
        if len(hits) > 1:
            title = f"{len(hits)} PReLU sites with negative or collapsed slopes (first: " + title[0].lower() + \
                    title[1:] + ")"
        parts = []
        if any(negative for *_, negative, _ in hits):
            parts.append("negative slopes (for x < 0 the output is a·x > 0, so the unit answers large negative and "
                         "large positive inputs alike — a V-shaped, non-monotonic response; real trained models, "
                         "e.g. face detectors, have them; deadrelu judges such units on the pre-activation)")
        if any(collapsed for *_, collapsed in hits):
            parts.append(f"slopes collapsed to ~0 (|a| ≤ {PRELU_COLLAPSED:g}: those channels are plain ReLUs "
                         "again and can die like them)")
        action = ("These PReLUs have " + " and ".join(parts) + ". If that is not intended, keep the slopes in a "
                  "sane range during training (clamp after each optimiser step) or use LeakyReLU with a fixed slope.")
        modules = [s.module for s, *_ in hits if s.function is None and s.module]
        code = ""
        if modules:
            code = (f"import torch\n"
                    f"# after each optimizer.step():\n"
                    f"with torch.no_grad():\n"
                    f"    for name in [{', '.join(_lit(m) for m in modules[:32])}]:\n"
                    f"        model.get_submodule(name).weight.clamp_({PRELU_COLLAPSED:g}, 0.3)")
        evidence = {"collapsed_below": PRELU_COLLAPSED, "sites": len(hits),
                    "per_site": {s.name: e for s, e, _, _ in hits[:EVIDENCE_LIST_MAX]}}
        verb = (f"clamp the PReLU slopes to [{PRELU_COLLAPSED:g}, 0.3] after each step" if modules
                else "keep the PReLU slopes in a sane range or use LeakyReLU")
        line = act([s.name for s, *_ in hits], f"{verb} ({', '.join(counts)})")
        out.append(suggestion("prelu-slopes", severity, [s.name for s, *_ in hits], title, evidence, action, code,
                              action_line=line,
                              changes=f"clamps the slopes of {len(modules)} PReLU module(s) to [{PRELU_COLLAPSED:g}, "
                                      "0.3] after each optimiser step" if modules else "", cause="activation"))
    return out


def rule_healthy(context: RuleContext, found: Sequence[Suggestion]) -> list[Suggestion]:
    """Nothing to fix: say so plainly, with the numbers the verdict line quotes (dead = no gradient;
    never-active units of leaky kinds apart)."""
    if any(s.severity.value in ("warning", "critical") for s in found):
        return []
    from ..overall import WARN_SHARE, overall
    result = context.result
    summary = result.summary
    verdict = overall(result)
    evidence = {"sites": summary.sites, "units": summary.units, "dead": verdict.dead,
                "dead_ratio": _num(verdict.dead_ratio), "never_active": verdict.never_active,
                "saturated": summary.saturated, "dormant": summary.dormant,
                "active_rate_mean": _num(summary.active_rate_mean), "samples": result.data.get("samples"),
                "dead_share_threshold": DEAD_SHARE_WARNING, "saturation_threshold": SATURATION_WARNING}
    never = f", {verdict.never_active} never active (leaky: still learning)" if verdict.never_active else ""
    if verdict.dead == 0 and summary.saturated == 0 and not verdict.never_active:
        title = (f"Nothing wrong found: 0 of {summary.units} units dead, none saturated, across {summary.sites} "
                 f"site(s) on {result.data.get('samples', '?')} samples")
    else:
        title = (f"Nothing to fix: {verdict.dead} of {summary.units} units dead ({verdict.dead_ratio:.1%}){never} and "
                 f"{summary.saturated} saturated, no site above the {WARN_SHARE:.0%} warning level")
    rate = summary.active_rate_mean
    action = (f"No fix needed. Units are active on {rate:.1%} of observations on average"
              if rate is not None else "No fix needed")
    action += (f"; {summary.dormant} unit(s) are dormant by ReDo's score (τ = {result.settings.thresholds.tau:g}), "
               "which is worth watching if it grows during training." if summary.dormant else ".")
    line = act("model", f"keep training, nothing to fix ({verdict.dead} of {summary.units} units dead"
                        + (f", {summary.dormant} dormant: watch them" if summary.dormant else "") + ")")
    return [suggestion("healthy", "info", [], title, evidence, action, scope=SCOPE_MODEL, action_line=line)]
