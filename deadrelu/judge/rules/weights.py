"""Rules that read the weights of the layer feeding a site: initialisation, bias, BatchNorm, SELU.

Each runs per *call site*, so the second call of a reused ``self.relu`` is judged against
the layer that fed that call (``layer3.4.relu#1`` <- ``layer3.4.bn2``). The feeding layer
comes from ``RuleContext.feeder``: only a layer whose output reaches the site untouched is
blamed; a site after a residual add or concat gets no weight rule, and the report says so.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ...kinds import HE_KINDS, ZERO_GRADIENT_KINDS
from .base import (BN_GAMMA_EPS, BN_STRONG_BETA, DEAD_SHARE_WARNING, EVIDENCE_LIST_MAX, INIT_MIN_WEIGHTS,
                   INIT_TOLERANCE, SCOPE_MODEL, STRONG_BIAS, RuleContext, Suggestion, _cut, _fan_in, _fmt,
                   _is_activation, _is_batchnorm, _is_weight_layer, _leaky_slope, _lit, _module_counts, _num,
                   _ranges, _replace_modules_code, _weight_std, act, leaf_order, merged_action, rule, site_severity,
                   suggestion)
from .causes import claimed_elsewhere, input_rms, problem_mask
from .training import lr_evidence
from .layers import bias_of, in_width, is_conv1d, weight_rows

#: a dead unit whose bias is at most -this x its typical |w.x| is held below zero by its bias
BIAS_HOLD = 1.0
#: a layer whose median bias is at most -this x the median typical |w.x| sits below zero as a whole
LAYER_NEGATIVE = 0.5

if TYPE_CHECKING:
    from torch import nn

    from ...result import ScanResult, SiteResult


# -- initialisation references -----------------------------------------------------------

def init_references(fan_in: int, fan_out: int | None = None, slope: float | None = None) -> dict[str, float]:
    """The weight std of the usual initialisations for a layer with ``fan_in`` inputs.

    Args:
        fan_in: inputs per output unit (``in_features``, or ``in_channels/groups * prod(kernel)``).
        fan_out: outputs per input unit (for Xavier); None leaves Xavier out.
        slope: LeakyReLU/PReLU negative slope ``a`` for He's gain ``sqrt(2/(1+a^2))``; None for ReLU.

    Returns:
        ``{"he": ..., "pytorch_default": ..., "lecun": ..., "xavier": ...}``: He (kaiming_normal_)
        ``gain/sqrt(fan_in)``; PyTorch's default ``kaiming_uniform_(a=sqrt(5))``, a uniform of
        bound ``1/sqrt(fan_in)``, whose std is ``1/sqrt(3*fan_in)``; LeCun normal ``1/sqrt(fan_in)``;
        Xavier/Glorot ``sqrt(2/(fan_in+fan_out))``.
    """
    gain = math.sqrt(2.0 / (1.0 + (slope or 0.0) ** 2))
    refs = {"he": gain / math.sqrt(fan_in), "pytorch_default": 1.0 / math.sqrt(3.0 * fan_in),
            "lecun": 1.0 / math.sqrt(fan_in)}
    if fan_out:
        refs["xavier"] = math.sqrt(2.0 / (fan_in + fan_out))
    return refs


_INIT_LABELS = {"he": "He (kaiming_normal_)", "pytorch_default": "PyTorch's default (kaiming_uniform_, a=√5)",
                "lecun": "LeCun normal", "xavier": "Xavier/Glorot"}


def classify_init(std: float, refs: dict[str, float], tolerance: float = INIT_TOLERANCE) -> str | None:
    """Which reference init ``std`` looks like (closest in ratio, within ``tolerance``), else None."""
    best, best_distance = None, math.inf
    for label, ref in refs.items():
        distance = abs(math.log(std / ref)) if std > 0 else math.inf
        if distance < best_distance:
            best, best_distance = label, distance
    return best if best_distance <= math.log1p(tolerance) else None


@rule
def rule_init(context: RuleContext) -> list[Suggestion]:
    """Weights feeding a dead-heavy ReLU-like site that look like another initialisation than He's
    (or have shrunk below every usual one).

    Generic advice (re-initialising erases training). Weights grown past every initialisation are
    not an init problem: large updates put them there (``rule_learning_rate``); units starving on a
    dead input or with zero weight rows have another cause too."""
    from .layers import fan_out as layer_fan_out
    findings = []
    seen: set[str] = set()
    for site in context.result.sites:
        if site.kind not in HE_KINDS or site.never_fired_ratio <= DEAD_SHARE_WARNING:
            continue
        feeder = context.feeder(site)
        if feeder is None or not _is_weight_layer(feeder.layer) or feeder.layer.weight.numel() < INIT_MIN_WEIGHTS:
            continue
        if lr_evidence(context, site) is not None or not (problem_mask(site) & ~claimed_elsewhere(context, site)).any():
            continue
        if not np.isfinite(_weight_std(feeder.layer)):
            continue
        name, layer = feeder.name, feeder.layer
        if name in seen:
            continue
        seen.add(name)
        slope = _leaky_slope(context.module(site.module) if site.function is None else None)
        fan_in = _fan_in(layer)
        refs = init_references(fan_in, layer_fan_out(layer), slope)
        std = _weight_std(layer)
        looks = classify_init(std, refs)
        if looks == "he" or (looks is None and std > min(refs.values())):
            continue   # He already, or moved by training (large updates are the learning-rate rule's)
        findings.append((site, name, layer, slope, fan_in, refs, std, looks))
    if not findings:
        return []
    per_layer: dict[str, Any] = {}
    lines = []
    for site, name, _layer, slope, fan_in, refs, std, looks in findings:
        gain_text = "sqrt(2/fan_in)" if slope is None else f"sqrt(2/(1+{slope:.3g}²))/sqrt(fan_in)"
        per_layer[name] = {"site": site.name, "dead_ratio": _num(site.never_fired_ratio), "fan_in": fan_in,
                           "weight_std": _num(std), "he_std": _num(refs["he"]),
                           "pytorch_default_std": _num(refs["pytorch_default"]), "lecun_std": _num(refs["lecun"]),
                           "ratio_to_he": _num(std / refs["he"], 3), "looks_like": looks or "none of these"}
        if looks == "pytorch_default":
            lines.append(f"{name}: weight std {_fmt(std)} ≈ 1/sqrt(3·{fan_in}) = {_fmt(refs['pytorch_default'])} "
                         f"(PyTorch's default kaiming_uniform_(a=√5)), not He's {gain_text} = {_fmt(refs['he'])}")
        elif looks is not None:
            lines.append(f"{name}: weight std {_fmt(std)} looks like {_INIT_LABELS[looks]} ({_fmt(refs[looks])}), "
                         f"not He's {gain_text} = {_fmt(refs['he'])}")
        else:
            grown = "grown to" if std > refs["he"] else "shrunk to"
            lines.append(f"{name}: weight std {_fmt(std)} has {grown} {std / refs['he']:.2f}× He's {gain_text} = "
                         f"{_fmt(refs['he'])} (PyTorch default would be {_fmt(refs['pytorch_default'])})")
    first = findings[0]
    site, name, _layer, slope, fan_in, refs, std, looks = first
    if looks == "pytorch_default":
        title = (f"{site.name} ← {name} ({site.never_fired_ratio:.0%} dead): PyTorch's default init, std {_fmt(std)} ≈ "
                 f"1/sqrt(3·fan_in); He would be sqrt(2/fan_in) = {_fmt(refs['he'])} (fan_in {fan_in})")
    else:
        title = (f"{site.name} ← {name} ({site.never_fired_ratio:.0%} dead): not He-initialised, std {_fmt(std)}; He "
                 f"would be {_fmt(refs['he'])} (fan_in {fan_in})")
    if len(findings) > 1:
        title += f"; {len(findings) - 1} more layer(s)"
    action = ("He initialisation keeps the activations' variance constant through ReLU layers; PyTorch's default "
              "for Linear/Conv is about 0.41× He's std, and a trained layer far from any init usually saw large "
              "updates. He matches ReLU-family activations (LeCun normal is SELU's). Re-initialising erases what "
              "these layers learned: do it before (re)training, not on a model you want to keep:\n- "
              + "\n- ".join(lines))
    code_lines = ["import torch.nn as nn"]
    for site, name, _layer, slope, *_ in findings[:8]:
        nonlinearity = "relu" if slope is None else "leaky_relu"
        extra = "" if slope is None else f", a={slope:.3g}"
        code_lines.append(f"nn.init.kaiming_normal_(model.get_submodule({_lit(name)}).weight, mode='fan_in', "
                          f"nonlinearity='{nonlinearity}'{extra})")
    evidence = {"dead_share_threshold": DEAD_SHARE_WARNING, "tolerance": INIT_TOLERANCE, "layers": per_layer}
    # Never-active LeakyReLU/PReLU units keep a gradient: the advice stands, with less urgency.
    severity = min((site_severity(f[0]) for f in findings), key=lambda level: level.order)
    dead = sum(f[0].never_fired for f in findings)
    units = sum(f[0].units for f in findings)
    line = act([f[1] for f in findings], f"re-initialise with He before retraining (std {_fmt(std)}, He "
                                         f"{_fmt(refs['he'])}; dead {dead}/{units})", noun="layers")
    return [suggestion("init-not-he", severity, [f[0].name for f in findings], title, evidence, action,
                       "\n".join(code_lines), destructive=True, action_line=line,
                       changes=f"re-initialises the weights of {min(len(findings), 8)} layer(s) (He normal)",
                       cause="init", generic=True)]


def _range_preserving(module: nn.Module) -> bool:
    """Modules whose outputs stay inside the per-channel range of their inputs (in eval mode)."""
    from torch import nn
    return isinstance(module, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity,
                               nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
                               nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd))


def _sequential_input_site(model: nn.Module, result: ScanResult, layer_name: str) -> SiteResult | None:
    """The site whose output is certainly ``layer_name``'s input: an activation before it in the same
    ``nn.Sequential`` with only range-preserving modules (dropout, pooling, identity) between them."""
    from torch import nn
    parent_name, _, child = layer_name.rpartition(".")
    parent = model.get_submodule(parent_name)
    if not isinstance(parent, nn.Sequential):
        return None
    names = list(parent._modules)
    counts = _module_counts(result)
    for previous in reversed(names[:names.index(child)]):
        module = parent._modules[previous]
        if module is None or _range_preserving(module):
            continue
        if not _is_activation(module):
            return None
        qualified = f"{parent_name}.{previous}" if parent_name else previous
        if counts.get(qualified) != 1:
            return None
        return next(s for s in result.sites if s.module == qualified and s.function is None)
    return None


def _first_weight_layer(model: nn.Module) -> str | None:
    return next((name for name, module in model.named_modules() if _is_weight_layer(module)), None)


def _input_box(model: nn.Module, result: ScanResult, layer_name: str, layer: nn.Module,
               input_bounds: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray, str] | None:
    """Per-input lower/upper bounds of ``layer``'s input: the observed range of the activation that
    certainly feeds it, or the caller's ``input_bounds`` for the model's first Linear/Conv."""
    width = in_width(layer) or 0
    previous = _sequential_input_site(model, result, layer_name) if not is_conv1d(layer) else None
    if previous is not None:
        if previous.units == width and np.isfinite(previous.stats.minimum).all() \
                and np.isfinite(previous.stats.maximum).all():
            return previous.stats.minimum, previous.stats.maximum, f"observed output range of site {previous.name}"
        return None
    if input_bounds is not None and layer_name == _first_weight_layer(model):
        low, high = input_bounds
        return np.full(width, float(low)), np.full(width, float(high)), "input bounds given by the caller"
    return None


@rule
def rule_bias(context: RuleContext) -> list[Suggestion]:
    """Dead units whose bias holds them below zero while their weights are of normal scale, and units
    that cannot fire on the observed input range.

    A unit's typical |pre-activation| is ``||w_i|| * rms(x)`` (its weight norm times the input's
    root mean square, measured at the site that feeds this layer, else taken as 1). The bias holds
    a dead unit below zero when it is at most ``-BIAS_HOLD`` times that, or when the layer's biases
    sit below zero as a whole (median at most ``-LAYER_NEGATIVE`` times the median |w.x|: an
    initialisation that starts every unit off). When the input's per-feature range ``[lo, hi]`` is
    known (the previous site's observed min/max, or ``input_bounds``), a unit whose largest reachable
    pre-activation ``sum_j max(w_ij*lo_j, w_ij*hi_j) + b_i`` is <= 0 cannot fire on any input in that
    range. Units starving on a dead input or with zero weight rows are left to those causes, and a
    site whose units large updates killed (grown weights, thrown biases) to the learning-rate rule.
    Hardtanh sites (active above ``min_val``) are left out.
    """
    result, model, input_bounds = context.result, context.model, context.input_bounds
    if model is None:
        return []
    from torch import nn
    out = []
    for site in result.sites:
        if not site.never_fired or site.kind == "Hardtanh":
            continue
        feeder = context.feeder(site)
        if feeder is None or not _is_weight_layer(feeder.layer) or feeder.layer.bias is None:
            continue
        name, layer = feeder.name, feeder.layer
        if isinstance(layer, nn.modules.conv._ConvNd) and layer.groups != 1:
            continue
        if lr_evidence(context, site) is not None:
            continue
        weight, bias = weight_rows(layer), bias_of(layer)
        assert bias is not None
        rms, rms_source = input_rms(context, site)
        reach = np.linalg.norm(weight, axis=1) * rms
        dead = site.verdict.dead & ~claimed_elsewhere(context, site)
        if not dead.any():
            continue
        held = dead & (bias < 0) & (bias <= -BIAS_HOLD * reach)
        layer_median = float(np.median(bias))
        layer_negative = layer_median < 0 and layer_median <= -LAYER_NEGATIVE * float(np.median(reach))
        if layer_negative:
            held |= dead & (bias < 0)
        cannot_fire: list[int] | None = None
        box = _input_box(model, result, name, layer, input_bounds)
        box_source = None
        if box is not None:
            low, high, box_source = box
            if isinstance(layer, nn.modules.conv._ConvNd):
                taps = int(np.prod(layer.kernel_size))
                low, high = np.repeat(low, taps), np.repeat(high, taps)
                if any(int(p) > 0 for p in np.atleast_1d(layer.padding)) or layer.padding == "same":
                    low, high = np.minimum(low, 0.0), np.maximum(high, 0.0)
            upper = np.maximum(weight * low, weight * high).sum(axis=1) + bias
            # Active means pre-activation > 0, so a unit whose largest reachable value is <= 0 never fires.
            cannot_fire = np.flatnonzero(upper <= 0).tolist()
        flagged = np.flatnonzero(held).tolist()
        if cannot_fire:
            flagged = sorted(set(flagged) | (set(cannot_fire) & set(np.flatnonzero(dead).tolist())))
        if not flagged:
            continue
        others = np.ones(site.units, dtype=bool)
        others[flagged] = False
        evidence: dict[str, Any] = {
            "layer": name, "units": _cut(flagged), "units_count": len(flagged), "dead_at_site": site.never_fired,
            "biases": [_num(bias[i]) for i in flagged[:EVIDENCE_LIST_MAX]],
            "typical_preactivation": [_num(reach[i]) for i in flagged[:EVIDENCE_LIST_MAX]],
            "median_bias_other_units": _num(float(np.median(bias[others]))) if others.any() else None,
            "layer_median_bias": _num(layer_median), "layer_biased_negative": layer_negative,
            "bias_hold_multiple": BIAS_HOLD, "input_rms": _num(rms), "input_rms_source": rms_source}
        if cannot_fire is not None:
            evidence["cannot_fire_units"] = _cut(cannot_fire)
            evidence["cannot_fire_count"] = len(cannot_fire)
            evidence["input_range_source"] = box_source
        held_units = np.flatnonzero(held).tolist()
        parts = []
        if held_units and layer_negative:
            parts.append(f"the layer's biases sit below zero (median {_fmt(layer_median)}, typical |w·x| "
                         f"{_fmt(float(np.median(reach)))}): {_ranges(held_units, 'unit')} never fire")
        elif held_units:
            parts.append(f"bias ≤ −|w·x| on {_ranges(held_units, 'unit')} (as low as "
                         f"{_fmt(float(bias[held_units].min()))}, typical |w·x| {_fmt(float(np.median(reach)))})")
        if cannot_fire:
            parts.append(f"{_ranges(cannot_fire, 'unit')} cannot fire for any input in the observed range "
                         f"(max reachable pre-activation ≤ 0)")
        title = f"{site.name} ← {name}: " + "; ".join(parts)
        negative = bool((bias[flagged] < 0).any())
        action = ("These units' bias holds their pre-activation below zero for every input seen, so "
                  + _negative_side_effect(site.kind) + ", while their weights are of ordinary scale. Reset those "
                  "biases to 0 and fine-tune (initialise biases at 0, or slightly positive, in the model's "
                  "init)" if negative else
                  "These units cannot reach a positive pre-activation on any input in the known range, so "
                  + _negative_side_effect(site.kind) + ": their weights point away from the data. Re-initialise "
                  "their incoming weights ReDo-style (`deadrelu fix MODEL DATA --recycle dead`) and fine-tune")
        action += "." if negative else ("; resetting a bias that is not negative changes nothing.")
        bias_flagged = [i for i in flagged if bias[i] < 0]
        code = (f"import torch\n"
                f"layer = model.get_submodule({_lit(name)})\n"
                f"with torch.no_grad():\n"
                f"    layer.bias[{bias_flagged or flagged}] = 0.0")
        cause = "bias" if negative else "init"
        evidence["changed_count"] = len(bias_flagged) if negative else len(flagged)
        line = act(name, merged_action("bias-reset", evidence["changed_count"], cause))
        out.append(suggestion("bias-reset", site_severity(site), [site.name], title, evidence, action, code,
                              explains=int(problem_mask(site)[flagged].sum()), action_line=line,
                              changes=f"sets the bias of {len(bias_flagged or flagged)} unit(s) of {name} to 0",
                              cause=cause))
    return out


def _negative_side_effect(kind: str) -> str:
    """What a unit whose pre-activation never gets above zero does, per kind."""
    if kind in ZERO_GRADIENT_KINDS:
        return "they output 0 and get no gradient"
    if kind in ("ELU", "SELU", "CELU"):
        return "they sit on the negative branch, at or near the floor where the gradient is ~0"
    return (f"{kind} only ever uses its negative side there: a small gradient, a scaled-down function of the input")


@rule
def rule_batchnorm(context: RuleContext) -> list[Suggestion]:
    """Dead channels right after a BatchNorm whose beta is strongly negative or gamma ~0.

    Only a BatchNorm whose output reaches the site untouched is blamed: the zero-γ last BN of
    a residual block (zero-init residual) feeds an add, and there the shortcut decides."""
    out = []
    for site in context.result.sites:
        if not site.never_fired:
            continue
        feeder = context.feeder(site)
        if feeder is None or not _is_batchnorm(feeder.layer) or not feeder.layer.affine:
            continue
        name, bn = feeder.name, feeder.layer
        beta = bn.bias.detach().double().cpu().numpy()
        gamma = bn.weight.detach().double().cpu().numpy()
        dead = site.verdict.dead
        mine = dead & ~claimed_elsewhere(context, site)   # starved channels: their input is the cause
        negative_beta = mine & (beta < -BN_STRONG_BETA * np.abs(gamma))
        zero_gamma = mine & (np.abs(gamma) < BN_GAMMA_EPS) & (beta <= 0)
        flagged = np.flatnonzero(negative_beta | zero_gamma).tolist()
        if not flagged:
            continue
        evidence = {"batchnorm": name, "channels": _cut(flagged), "channels_count": len(flagged),
                    "dead_at_site": site.never_fired, "beta": [_num(beta[i]) for i in flagged[:EVIDENCE_LIST_MAX]],
                    "gamma": [_num(gamma[i]) for i in flagged[:EVIDENCE_LIST_MAX]],
                    "beta_strongly_negative": int(negative_beta.sum()), "gamma_near_zero": int(zero_gamma.sum()),
                    "median_beta_live": _num(float(np.median(beta[~dead]))) if (~dead).any() else None,
                    "median_gamma_live": _num(float(np.median(gamma[~dead]))) if (~dead).any() else None,
                    "beta_multiple": BN_STRONG_BETA, "gamma_eps": BN_GAMMA_EPS}
        reasons = []
        if negative_beta.any():
            reasons.append(f"β < −{BN_STRONG_BETA:g}·|γ|" + (f" ({int(negative_beta.sum())})" if zero_gamma.any() else ""))
        if zero_gamma.any():
            reasons.append("γ ≈ 0 with β ≤ 0" + (f" ({int(zero_gamma.sum())})" if negative_beta.any() else ""))
        title = f"{site.name} ← {name}: " + " and ".join(reasons) + f" on {_ranges(flagged)}"
        action = ("After BatchNorm a channel is ~N(β, γ²); with β several γ below zero (or γ ≈ 0 and β ≤ 0) the "
                  f"following {site.kind} almost never fires, and the channel stops learning. Reset β to 0 and γ to 1 on "
                  "those channels and fine-tune; check the learning rate and any weight decay on BN parameters.")
        code = (f"import torch\n"
                f"bn = model.get_submodule({_lit(name)})\n"
                f"with torch.no_grad():\n"
                f"    bn.bias[{flagged}] = 0.0\n"
                f"    bn.weight[{flagged}] = 1.0")
        out.append(suggestion("batchnorm-dead", site_severity(site), [site.name], title, evidence, action, code,
                              explains=int(problem_mask(site)[flagged].sum()), cause="batchnorm",
                              action_line=act(name, merged_action("batchnorm-dead", len(flagged), "batchnorm")),
                              changes=f"sets β = 0 and γ = 1 on {len(flagged)} channel(s) of {name}"))
    return out


@rule
def rule_selu(context: RuleContext) -> list[Suggestion]:
    """SELU's self-normalisation caveats: LeCun init, no CNN, no BatchNorm next to it, AlphaDropout."""
    result, model = context.result, context.model
    selu_sites = [s for s in result.sites if s.kind == "SELU"]
    if model is None or not selu_sites:
        return []
    from torch import nn
    out = []
    names = [s.name for s in selu_sites]
    # 1. LeCun normal init: std 1/sqrt(fan_in)
    off: dict[str, Any] = {}
    lines = []
    for site in selu_sites:
        feeder = context.feeder(site)
        if feeder is None or not _is_weight_layer(feeder.layer) or feeder.layer.weight.numel() < INIT_MIN_WEIGHTS:
            continue
        name, layer = feeder.name, feeder.layer
        fan_in = _fan_in(layer)
        refs = init_references(fan_in)
        std = _weight_std(layer)
        if classify_init(std, {"lecun": refs["lecun"]}) == "lecun":
            continue
        looks = classify_init(std, refs)
        off[name] = {"site": site.name, "fan_in": fan_in, "weight_std": _num(std), "lecun_std": _num(refs["lecun"]),
                     "ratio_to_lecun": _num(std / refs["lecun"], 3), "looks_like": looks or "none of these"}
        described = f" (looks like {_INIT_LABELS[looks]})" if looks else ""
        lines.append(f"{name}: std {_fmt(std)}{described}, LeCun normal is 1/sqrt({fan_in}) = {_fmt(refs['lecun'])}")
    if off:
        code = "import torch.nn as nn\n" + "\n".join(
            f"nn.init.kaiming_normal_(model.get_submodule({_lit(n)}).weight, nonlinearity='linear')  # LeCun normal"
            for n in list(off)[:8])
        out.append(suggestion(
            "selu-init", "warning", [v["site"] for v in off.values()],
            f"SELU's inputs are not LeCun-normal initialised in {len(off)} layer(s) ({lines[0]})",
            {"layers": off, "tolerance": INIT_TOLERANCE},
            "SELU's self-normalising fixed point (mean 0, variance 1) needs weights ~ N(0, 1/fan_in). Re-initialise "
            "the layers feeding SELU with LeCun normal (kaiming_normal_ with nonlinearity='linear') and retrain "
            "(this erases what they learned):\n- " + "\n- ".join(lines), code, destructive=True,
            changes=f"re-initialises the weights of {min(len(off), 8)} layer(s) (LeCun normal)", cause="init",
            generic=True, action_line=act(list(off), "re-initialise LeCun-normal for SELU, then retrain",
                                          noun="layers")))
    leaves = leaf_order(model)
    convs = [n for n, m in leaves if isinstance(m, nn.modules.conv._ConvNd)]
    # 2. SELU in a CNN
    if convs:
        out.append(suggestion(
            "selu-cnn", "info", names,
            f"SELU in a convolutional network ({len(convs)} conv layer(s), e.g. {convs[0]})",
            {"conv_layers": len(convs), "selu_sites": len(selu_sites)},
            "SELU's self-normalisation is derived for fully-connected stacks; it does not hold for convolutions. "
            "For a CNN, ReLU + BatchNorm (or ELU + BatchNorm/GroupNorm) is the proven combination.",
            "", scope=SCOPE_MODEL, cause="activation", generic=True,
            action_line=act(names, f"use ReLU or ELU with BatchNorm instead of SELU in this CNN ({len(convs)} convs)")))
    # 3. BatchNorm next to SELU
    adjacent = []
    for position, (name, module) in enumerate(leaves):
        if isinstance(module, nn.SELU):
            for other in (position - 1, position + 1):
                if 0 <= other < len(leaves) and _is_batchnorm(leaves[other][1]):
                    adjacent.append(leaves[other][0])
    if adjacent:
        adjacent = list(dict.fromkeys(adjacent))
        out.append(suggestion(
            "selu-batchnorm", "warning", names,
            f"BatchNorm next to SELU ({', '.join(adjacent[:4])})",
            {"batchnorm_layers": len(adjacent), "selu_sites": len(selu_sites)},
            "SELU normalises by itself; a BatchNorm beside it interferes with the self-normalising fixed point. "
            "Use either SELU without normalisation layers, or ReLU/ELU with BatchNorm.",
            _replace_modules_code(adjacent, "nn.Identity()", "drop the BatchNorm layers next to SELU (then retrain)"),
            destructive=True, changes=f"removes {len(adjacent)} BatchNorm layer(s) (and what they learned)",
            scope=SCOPE_MODEL, cause="activation", generic=True,
            action_line=act(adjacent, "remove the BatchNorm next to SELU (or switch to ReLU/ELU), then retrain",
                            noun="layers")))
    # 4. plain Dropout with SELU
    plain = [n for n, m in leaves if type(m) in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)]
    if plain:
        out.append(suggestion(
            "selu-dropout", "warning", names,
            f"SELU with plain Dropout ({len(plain)} layer(s), e.g. {plain[0]}); SELU needs AlphaDropout",
            {"dropout_layers": len(plain), "selu_sites": len(selu_sites)},
            "Plain Dropout sets units to 0, which shifts SELU's mean and variance away from the fixed point. "
            "AlphaDropout drops to SELU's negative saturation value and rescales, keeping mean and variance.",
            _replace_modules_code(plain, "nn.AlphaDropout(p=old.p)", "plain Dropout breaks self-normalisation"),
            changes=f"swaps {len(plain)} Dropout layer(s) for AlphaDropout", scope=SCOPE_MODEL, cause="activation",
            action_line=act(plain, "switch Dropout → AlphaDropout: SELU needs it", noun="layers")))
    return out
