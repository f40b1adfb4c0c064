"""The causes judged over the whole model: ``learning-rate`` and ``input-scale``.

``learning-rate``: training's updates pushed units where they never fire. Evidence, per weight
layer feeding a site: weights grown far past any usual initialisation; optimizer steps large
against the weights' scale (read from the optimizer state a checkpoint holds); dead units'
biases thrown far below the rest of their layer, scattered as updates leave them; NaN/inf
weights. When most weight layers show it, it explains dead units anywhere in the model.

``input-scale``: the first layer reads data far off the scale it was trained on: the first
BatchNorm puts out many times what its gamma and beta allow (its running statistics were fitted
to other data), or the first layer's outputs are many times its weights' norm.

Every number a finding rests on goes into its ``evidence``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..overall import WARN_SHARE, problem_mask
from .base import (EVIDENCE_LIST_MAX, SCOPE_MODEL, RuleContext, Severity, Suggestion, _cut, _fmt, _num,
                   act, model_severity, rule, suggestion)
from .causes import _mean_square, input_rms, silent_share, upstream, zero_rows
from .layers import bias_of, growth, init_scales, is_batchnorm, is_weight_layer, looks_untrained, weight_rows, weight_std

if TYPE_CHECKING:
    from torch import nn

    from ...result import SiteResult

#: a weight std at least this many times the largest usual initialisation's (He's, for most layers; PyTorch's
#: default is 0.41 of it) has grown by large updates, when its site has more than a tenth of its units stuck
GROWN = 1.5
#: an optimizer step of at least this share of the weights' root mean square is a large step
STEP_RATIO = 0.1
#: dead units whose bias sits this many typical |w.x| below their layer's live units were thrown there
THROWN = 3.0
#: the first BatchNorm's output at least this many times what its gamma and beta give: input off scale
INPUT_SCALE_RATIO = 8.0
#: the first layer reading inputs of at least this root mean square (per unit of weight norm)
INPUT_RMS = 10.0


# -- learning rate -------------------------------------------------------------------------------------

def _parameter_names(model: nn.Module, state: Mapping[str, Any]) -> dict[int, str] | None:
    """Optimizer parameter ids -> the model's parameter names, when they line up (same count; the
    state's moment shapes match)."""
    groups = state.get("param_groups") or []
    ids = [pid for group in groups for pid in group.get("params", [])]
    named = [name for group in groups for name in (group.get("param_names") or [])]
    parameters = dict(model.named_parameters())
    if named and len(named) == len(ids):
        mapping = dict(zip(ids, named))
    else:
        names = list(parameters)
        if len(ids) != len(names):
            return None
        mapping = dict(zip(ids, names))
    for pid, entry in (state.get("state") or {}).items():
        name = mapping.get(pid if not isinstance(pid, str) or not pid.isdigit() else int(pid))
        if name is None or name not in parameters:
            return None
        for moment in ("exp_avg", "momentum_buffer"):
            value = entry.get(moment) if isinstance(entry, Mapping) else None
            if value is not None and tuple(getattr(value, "shape", ())) != tuple(parameters[name].shape):
                return None
    return mapping


def optimizer_steps(context: RuleContext) -> dict[str, dict[str, Any]]:
    """Per weight layer: the optimizer's kind, learning rate and step size against the weights' scale.

    Adam-like state (``exp_avg_sq``): a step moves each weight by up to ``lr``, so the step ratio is
    ``lr / rms(w)``. SGD with momentum: ``lr * rms(momentum_buffer) / rms(w)``. Plain SGD keeps no state.
    """
    def compute() -> dict[str, dict[str, Any]]:
        state, model = context.optimizer_state, context.model
        if not isinstance(state, Mapping) or model is None:
            return {}
        mapping = _parameter_names(model, state)
        if mapping is None:
            return {}
        lr_of: dict[int, float] = {}
        for group in state.get("param_groups") or []:
            lr = group.get("lr")
            try:
                rate = float(lr)
            except (TypeError, ValueError):
                continue
            for pid in group.get("params", []):
                lr_of[pid] = rate
        parameters = dict(model.named_parameters())
        steps: dict[str, dict[str, Any]] = {}
        for pid, entry in (state.get("state") or {}).items():
            key = int(pid) if isinstance(pid, str) and pid.isdigit() else pid
            name = mapping.get(key)
            if name is None or not name.endswith(".weight") or key not in lr_of or not isinstance(entry, Mapping):
                continue
            weight = parameters[name].detach().double()
            rms = float(weight.pow(2).mean().sqrt())
            if rms <= 0:
                continue
            lr = lr_of[key]
            if entry.get("exp_avg_sq") is not None:
                kind, step = "Adam-like (exp_avg, exp_avg_sq)", lr
            elif entry.get("momentum_buffer") is not None:
                buffer = entry["momentum_buffer"].detach().double()
                kind, step = "SGD with momentum", lr * float(buffer.pow(2).mean().sqrt())
            else:
                continue
            steps[name[: -len(".weight")]] = {"optimizer": kind, "lr": _num(lr), "weight_rms": _num(rms),
                                              "step_to_weight": _num(step / rms, 3)}
        return steps
    return context.memo("optimizer", compute)


def thrown_biases(context: RuleContext, site: SiteResult, layer: nn.Module, mask: np.ndarray) -> np.ndarray:
    """Units of ``mask`` whose bias sits ``THROWN`` typical |w.x| below the median bias of the
    site's live units, scattered (not one constant: a hand-set or initial value), while the layer
    as a whole is not biased negative and its weights have moved from their initialisation."""
    none = np.zeros(site.units, dtype=bool)
    bias = bias_of(layer)
    live = ~problem_mask(site)
    if bias is None or bias.shape[0] != site.units or live.sum() < 4 or looks_untrained(layer):
        return none
    rms, _ = input_rms(context, site)
    reach = np.linalg.norm(weight_rows(layer), axis=1) * rms
    live_median = float(np.median(bias[live]))
    if live_median <= -0.5 * float(np.median(reach)):
        return none   # the whole layer sits below zero: the bias setting, not a thrown unit
    thrown = mask & (bias - live_median <= -THROWN * reach)
    if thrown.sum() < 3 or np.ptp(bias[thrown]) < 0.25 * abs(float(np.median(bias[thrown]))):
        return none
    return thrown


def model_wide_lr(context: RuleContext) -> dict[str, Any] | None:
    """Learning-rate evidence over the whole model: most of the weight layers that feed sites have grown
    past every usual initialisation, or the optimizer's steps are large on most of them. Then the large
    updates explain dead units anywhere, after a residual add too (no single layer decides those)."""
    def compute() -> dict[str, Any] | None:
        layers: dict[str, Any] = {}
        for site in context.result.sites:
            found = context.weight_layer(site)
            if found is not None:
                layers.setdefault(found[0], found[1])
        if len(layers) < 2:
            return None
        grown = {name: _num(growth(layer), 3) for name, layer in layers.items()
                 if np.isfinite(weight_std(layer)) and growth(layer) >= GROWN}
        steps = optimizer_steps(context)
        stepped = {name: steps[name]["step_to_weight"] for name in layers
                   if name in steps and float(steps[name]["step_to_weight"]) >= STEP_RATIO}
        for what, shown in (("weight_growth", grown), ("step_to_weight", stepped)):
            if 2 * len(shown) >= len(layers):
                return {"layers_checked": len(layers), "layers_with_evidence": len(shown), "what": what,
                        "per_layer": dict(list(shown.items())[:EVIDENCE_LIST_MAX])}
        return None
    return context.memo("lr:model", compute)


def lr_evidence(context: RuleContext, site: SiteResult) -> dict[str, Any] | None:
    """What says training's updates killed this site's units: grown weights, large optimizer steps,
    thrown biases, here or over most of the model (None: nothing does)."""
    def compute() -> dict[str, Any] | None:
        problem = problem_mask(site)
        if not problem.any():
            return None  # before zero_rows: a healthy site costs no look at its weights
        found = context.weight_layer(site)
        mask = problem & ~zero_rows(context, site)[0]
        if not mask.any():
            return None
        if found is None:
            wide = model_wide_lr(context)
            return None if wide is None else {"layer": None, "model_wide": wide["what"]}
        name, layer = found
        evidence: dict[str, Any] = {"layer": name}
        nonfinite = int((~np.isfinite(weight_rows(layer))).sum())
        if nonfinite:
            evidence["nonfinite_weights"] = nonfinite   # training diverged: the largest update there is
            return evidence
        grown = growth(layer)
        if grown >= GROWN and (silent_share(site) > WARN_SHARE or model_wide_lr(context) is not None):
            scales = init_scales(layer)
            evidence.update(weight_std=_num(weight_std(layer)), weight_growth=_num(grown, 3),
                            he_std=_num(scales["he"]), pytorch_default_std=_num(scales["pytorch_default"]))
        step = optimizer_steps(context).get(name)
        if step is not None and float(step["step_to_weight"]) >= STEP_RATIO:
            evidence["optimizer"] = step
        feeder = context.feeder(site)
        wide = model_wide_lr(context)
        if wide is not None:
            evidence["model_wide"] = wide["what"]
        if feeder is not None and feeder.layer is layer:
            thrown = thrown_biases(context, site, layer, mask)
            if thrown.any():
                bias = bias_of(layer)
                assert bias is not None
                evidence.update(thrown_biases=int(thrown.sum()), thrown_units=_cut(np.flatnonzero(thrown).tolist()),
                                thrown_bias_min=_num(float(bias[thrown].min())),
                                live_median_bias=_num(float(np.median(bias[~problem_mask(site)]))))
        return evidence if len(evidence) > 1 else None
    return context.memo(f"lr:{site.name}", compute)


def lr_sites(context: RuleContext) -> list[SiteResult]:
    """Sites with problem units and learning-rate evidence, in network order."""
    return [site for site in context.result.sites if lr_evidence(context, site) is not None]


@rule
def rule_learning_rate(context: RuleContext) -> list[Suggestion]:
    """Units killed by large updates: one model-wide card over every site that shows it, plus the
    sites those starve."""
    hit = lr_sites(context)
    if not hit:
        return []
    names = {site.name for site in hit}
    starved = [entry for entry in upstream(context).values() if entry.root in names and entry.site not in names]
    by_name = {site.name: site for site in context.result.sites}
    covered = hit + [by_name[entry.site] for entry in starved]
    explained = sum(int((problem_mask(site) & ~zero_rows(context, site)[0]).sum()) for site in covered)
    found = {site.name: lr_evidence(context, site) or {} for site in hit}
    per_layer = {str(found[site.name].get("layer") or f"(site {site.name})"): {
                     "site": site.name, "dead": site.never_fired, "units": site.units,
                     **{k: v for k, v in found[site.name].items() if k != "layer"}}
                 for site in hit[:EVIDENCE_LIST_MAX]}
    wide = model_wide_lr(context)
    severity = model_severity(context.result, covered, explained)
    grown = [(layer, entry) for layer, entry in per_layer.items() if "weight_growth" in entry]
    stepped = [(layer, entry) for layer, entry in per_layer.items() if "optimizer" in entry]
    thrown = [(layer, entry) for layer, entry in per_layer.items() if "thrown_biases" in entry]
    diverged = [(layer, entry) for layer, entry in per_layer.items() if "nonfinite_weights" in entry]
    reasons, lines, short = [], [], []
    if diverged:
        short.append(f"{sum(int(e['nonfinite_weights']) for _, e in diverged)} weights NaN/inf")
        reasons.append(f"{diverged[0][0]}'s weights hold {diverged[0][1]['nonfinite_weights']} NaN/inf values "
                       "(training diverged)")
        lines += [f"{name}: {e['nonfinite_weights']} weights are NaN or infinite: the updates diverged"
                  for name, e in diverged]
    if stepped:
        layer, entry = max(stepped, key=lambda item: float(item[1]["optimizer"]["step_to_weight"]))
        step = entry["optimizer"]
        short.append(f"steps of lr {step['lr']:g} move {float(step['step_to_weight']):.0%} of {layer}'s weights")
        reasons.append(f"{step['optimizer'].split(' (')[0]} steps of lr {step['lr']:g} = "
                       f"{float(step['step_to_weight']):.0%} of {layer}'s weight scale")
        lines += [f"{name}: the optimizer (lr {e['optimizer']['lr']:g}) moves these weights by up to "
                  f"{float(e['optimizer']['step_to_weight']):.0%} of their rms per step" for name, e in stepped]
    if grown:
        layer, entry = max(grown, key=lambda item: float(item[1]["weight_growth"]))
        short.append(f"{layer}'s weights grown {float(entry['weight_growth']):.3g}× past init")
        reasons.append(f"{layer}'s weights grown to {float(entry['weight_growth']):.3g}× any usual init")
        lines += [f"{name}: weight std {_fmt(float(e['weight_std']))} = {float(e['weight_growth']):.3g}× the largest "
                  f"usual initialisation (He {_fmt(float(e['he_std']))})" for name, e in grown]
    if thrown:
        low = min(float(entry["thrown_bias_min"]) for _, entry in thrown)
        count = sum(int(entry["thrown_biases"]) for _, entry in thrown)
        short.append(f"{count} biases thrown to {_fmt(low)}")
        reasons.append(f"{count} biases thrown as low as {_fmt(low)} while the others sit near "
                       f"{_fmt(float(thrown[0][1]['live_median_bias']))}")
        lines += [f"{name}: {e['thrown_biases']} dead units' biases are ≥ {THROWN:g} typical |w·x| below the live "
                  f"units' median {_fmt(float(e['live_median_bias']))} (as low as {_fmt(float(e['thrown_bias_min']))}), "
                  "scattered as large updates leave them" for name, e in thrown]
    if wide is not None:
        noun = "grown past every usual init" if wide["what"] == "weight_growth" else "moved by large optimizer steps"
        short.insert(0, f"{wide['layers_with_evidence']} of {wide['layers_checked']} weight layers {noun}")
        reasons.insert(0, f"{wide['layers_with_evidence']} of {wide['layers_checked']} weight layers {noun}")
        lines.insert(0, f"model-wide: {wide['layers_with_evidence']} of the {wide['layers_checked']} weight layers "
                        f"feeding sites show it, so dead units anywhere (after a residual add too) count")
    sites = [site.name for site in covered]
    title = (f"Learning rate too high: large updates killed {explained} unit(s) at {len(sites)} site(s) — "
             + "; ".join(reasons[:2]))
    action = ("Training's updates were too large for these layers: units were pushed to where they never fire and, "
              "getting no gradient there, stayed dead" + (f"; {len(starved)} later site(s) then starved on their "
                                                         "dead input" if starved else "") +
              ". Lower the learning rate (10×, or add warm-up / gradient clipping) and revive the dead units: "
              "the code recycles them ReDo-style (fresh incoming weights, outgoing weights zeroed, so the outputs "
              "do not change; `deadrelu fix MODEL DATA --recycle dead` does the same from the shell) and lowers "
              "the optimizer's rate before you fine-tune. Where weights grew far past their initialisation, "
              "retraining from scratch at the lower rate is the safe fix.\n- " + "\n- ".join(lines))
    code = ("import deadrelu\n"
            "# continue at a 10x lower learning rate:\n"
            "for group in optimizer.param_groups:\n"
            "    group['lr'] *= 0.1\n"
            "# revive the dead units ReDo-style (data: what you scanned):\n"
            "deadrelu.recycle(model, deadrelu.scan(model, data), 'dead', optimizer)")
    evidence: dict[str, Any] = {"per_layer": per_layer, "sites_with_evidence": len(hit), "model_wide": wide,
                                "starved_downstream": {entry.site: {"root": entry.root, "units": int(entry.mask.sum())}
                                                       for entry in starved[:EVIDENCE_LIST_MAX]},
                                "grown_above": GROWN, "step_ratio_above": STEP_RATIO, "thrown_below": THROWN,
                                "optimizer_state": context.optimizer_state is not None}
    line = act("optimizer", "lower the learning rate 10× and recycle the dead units"
                            + (f" ({short[0]})" if short else ""))
    return [suggestion("learning-rate", severity, sites, title, evidence, action, code, explains=explained,
                       changes="lowers the optimizer's learning rate 10× and recycles the dead units (ReDo)",
                       scope=SCOPE_MODEL, cause="learning-rate", action_line=line)]


# -- input scale ------------------------------------------------------------------------------------------

def _first_weight_layer(model: nn.Module) -> str | None:
    return next((name for name, module in model.named_modules() if is_weight_layer(module)), None)


def input_scale_evidence(context: RuleContext) -> dict[str, Any] | None:
    """The first layer reads data far off the scale it was trained on: the first BatchNorm (fed by
    the first weight layer) puts out many times what its gamma and beta allow, or the first weight
    layer's outputs are many times its weights' norm (the input's rms, for standardised data ~1)."""
    model = context.model
    if model is None or not context.channel_granularity:
        return None
    first = _first_weight_layer(model)
    for site in context.result.sites:
        found = context.weight_layer(site)
        if found is None or context.input_site(site) is not None:
            continue
        if found[0] != first:
            return None
        feeder = context.feeder(site)
        observed = site.stats.observations > 0
        if feeder is None or not observed.any():
            return None
        rms = np.sqrt(_mean_square(site))
        if is_batchnorm(feeder.layer) and feeder.layer.affine:
            if lr_evidence(context, site) is not None:
                return None   # running statistics lag weights that large updates keep moving
            gamma = feeder.layer.weight.detach().double().cpu().numpy()
            beta = feeder.layer.bias.detach().double().cpu().numpy()
            expected = np.sqrt(gamma ** 2 + beta ** 2)
            usable = observed & (expected > 0)
            ratio = float(np.median(rms[usable] / expected[usable])) if usable.any() else 0.0
            if ratio < INPUT_SCALE_RATIO:
                return None
            return {"site": site.name, "batchnorm": feeder.name, "layer": found[0], "output_vs_gamma_beta": _num(ratio, 3),
                    "threshold": INPUT_SCALE_RATIO, "how": "batchnorm"}
        if feeder.layer is not found[1]:
            return None
        live = observed & ~site.verdict.dead
        norms = np.linalg.norm(weight_rows(found[1]), axis=1)
        usable = live & (norms > 0)
        if not usable.any():
            return None
        ratio = float(np.median(rms[usable] / norms[usable]))
        if ratio < INPUT_RMS:
            return None
        return {"site": site.name, "layer": found[0], "output_rms_per_weight_norm": _num(ratio, 3),
                "threshold": INPUT_RMS, "how": "first layer"}
    return None


@rule
def rule_input_scale(context: RuleContext) -> list[Suggestion]:
    """Data fed far off the scale the first layer was trained on (raw 0..255 pixels into a model
    trained on standardised ones)."""
    evidence = input_scale_evidence(context)
    if evidence is None:
        return []
    sites = [site for site in context.result.sites if problem_mask(site).any()]
    explained = sum(int((problem_mask(site) & ~zero_rows(context, site)[0]).sum()) for site in sites)
    first = next(site for site in context.result.sites if site.name == evidence["site"])
    if evidence["how"] == "batchnorm":
        what = (f"{evidence['batchnorm']} (the first BatchNorm) puts out {float(evidence['output_vs_gamma_beta']):.3g}× "
                "what its γ and β give on the data it was trained on")
        severity = "warning"
    else:
        what = (f"{evidence['layer']} (the first layer) puts out {float(evidence['output_rms_per_weight_norm']):.3g}× "
                "its weights' norm: its input's rms is that large (standardised data gives ~1)")
        severity = "warning" if problem_mask(first).mean() > 0.10 else "info"
    worst = model_severity(context.result, sites, explained)
    if worst.order < Severity(severity).order:
        severity = worst.value
    title = f"Input far off the training scale: {what}"
    action = ("The scanned data reach the first layer on a very different scale from the one it was trained on "
              "(raw 0–255 pixels into a model trained on standardised inputs, say), so every layer after it sees "
              "values its weights, biases and BatchNorm statistics were not fitted to: units die (and others never "
              "switch off) that would not in use. Feed the data the way the model was trained — the same scaling "
              "and normalisation (`--scale 0.003922` divides uint8 pixels by 255; then subtract the training mean "
              "and divide by its std) — and scan again before changing the model.")
    code = ("# feed the data as the model was trained, e.g. for uint8 images:\n"
            "# x = x / 255.0\n"
            "# x = (x - mean) / std        # the training set's per-channel mean and std\n"
            "# from the shell: deadrelu scan MODEL DATA --scale 0.003922 (then normalise the same way)")
    ratio = evidence.get("output_vs_gamma_beta", evidence.get("output_rms_per_weight_norm"))
    line = act("data", f"feed the inputs scaled as in training ({evidence['layer']} sees {float(ratio):.3g}× its "
                       "usual scale), then scan again")
    return [suggestion("input-scale", severity, [site.name for site in sites] or [first.name], title,
                       {**evidence, "units_on_this_data": explained}, action, code, explains=explained,
                       changes="comments only: how to feed the data", scope=SCOPE_MODEL, cause="input-scale",
                       action_line=line)]


__all__ = ["rule_learning_rate", "rule_input_scale", "lr_evidence", "lr_sites", "model_wide_lr", "optimizer_steps",
           "thrown_biases", "input_scale_evidence", "GROWN", "STEP_RATIO", "THROWN", "INPUT_SCALE_RATIO", "INPUT_RMS"]
