"""Fix suggestions backed by evidence: a small rules engine over a result and (optionally) the model.

Each rule is an ordinary function ``rule(result, model) -> list[dict]``. A suggestion is
plain, JSON-ready data::

    {"id": "init-not-he", "severity": "warning", "sites": ["net.1"],
     "title": "...", "evidence": {...numbers...}, "action": "...", "code": "..."}

``severity`` is ``info``, ``warning`` or ``critical``; ``code`` is a short PyTorch snippet
that applies the fix to *this* model (module names filled in, as Python string literals,
so any module name is safe to paste).

Rules that need only the result (dead share, saturation, depth trend, PReLU slope
summary, "nothing wrong") also run on a result read back from JSON. Rules that read
weights (initialisation, bias, BatchNorm, SELU/LeCun, per-channel PReLU slopes, the
selection guide) need the model and return nothing without it.

Finding the layer that feeds an activation (``feeding_layers``) is a heuristic over
``model.named_modules()`` order, because a finished result does not record the data
flow: the feeder of activation module ``M`` is the last Linear / Conv / BatchNorm /
other norm / Embedding module listed before ``M`` in ``named_modules()`` order (for
the usual ``nn.Sequential`` and "register in the order you call" models that is the
sibling registered just before ``M``, or the last such layer inside it). It is trusted
only when the feeder's output width equals the site's unit count, the site is a module
site called once per forward (a reused ``self.relu`` sees a different producer on each
call) and the scan used channel granularity. A model that registers ``self.relu``
before the layers it follows, or applies one layer's output to a later-registered
activation, can defeat it; the width check catches most such cases, and weight rules
then stay silent rather than guess.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np

from ..kinds import HE_KINDS, NEGATIVE_SIDE_KINDS, ZERO_GRADIENT_KINDS

if TYPE_CHECKING:
    from torch import nn

    from ..result import ScanResult, SiteResult

Suggestion = dict[str, Any]
Rule = Callable[["ScanResult", "nn.Module | None"], list[Suggestion]]

#: a ReLU site with more than this share of dead units gets advice (warning)
DEAD_SHARE_WARNING = 0.10
#: ... and above this share the advice is critical
DEAD_SHARE_CRITICAL = 0.50
#: an ELU/SELU/CELU (or ReLU6/Hardtanh) site with more than this share saturated gets advice
SATURATION_WARNING = 0.10
SATURATION_CRITICAL = 0.50
#: a weight std within this relative distance of a reference init "looks like" it
INIT_TOLERANCE = 0.15
#: fewer weights than this are too few to tell one init from another
INIT_MIN_WEIGHTS = 64
#: a bias below -this x the unit's typical |w.x| is "strongly negative"
STRONG_BIAS = 3.0
#: a BatchNorm beta below -this x |gamma| is "strongly negative"
BN_STRONG_BETA = 3.0
#: |gamma| below this counts as collapsed to 0
BN_GAMMA_EPS = 1e-3
#: depth trend: at least this many sites, this rank correlation and this rise in dead share
DEPTH_MIN_SITES = 3
DEPTH_MIN_CORRELATION = 0.7
DEPTH_MIN_RISE = 0.10
#: a PReLU slope with |a| below this has collapsed to ~0 (the unit is a ReLU again)
PRELU_COLLAPSED = 0.01
#: a "deep" CNN / fully-connected stack for the selection guide
DEEP_CNN_CONVS = 4
DEEP_MLP_LINEARS = 4
#: a stack of at least this many ReLU sites counts as very deep (LeakyReLU advice)
VERY_DEEP_SITES = 8
#: lists in evidence are cut to this many entries (the total is given alongside)
EVIDENCE_LIST_MAX = 64

SEVERITIES = ("critical", "warning", "info")


# -- small helpers ------------------------------------------------------------------------

def _num(value: float | int | None, digits: int = 4) -> float | int | None:
    """A JSON-friendly number rounded to ``digits`` significant digits (None if not finite)."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    value = float(value)
    if not math.isfinite(value):
        return None
    if value == 0.0:
        return 0.0
    return float(f"{value:.{digits}g}")


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _cut(values: Sequence[Any]) -> list[Any]:
    return list(values[:EVIDENCE_LIST_MAX])


def _lit(name: str) -> str:
    """A module name as a Python string literal (safe for any characters)."""
    return repr(name)


def _suggestion(id: str, severity: str, sites: Iterable[str], title: str, evidence: dict[str, Any],
                action: str, code: str = "") -> Suggestion:
    assert severity in SEVERITIES
    return {"id": id, "severity": severity, "sites": list(sites), "title": title, "evidence": evidence,
            "action": action, "code": code.strip("\n")}


def _replace_modules_code(names: Sequence[str], constructor: str, comment: str) -> str:
    """Code that swaps the modules at ``names`` for ``constructor`` (an expression using ``old``)."""
    listed = ", ".join(_lit(name) for name in names)
    return (f"import torch.nn as nn\n"
            f"# {comment}\n"
            f"for name in [{listed}]:\n"
            f"    parent_name, _, child = name.rpartition('.')\n"
            f"    parent = model.get_submodule(parent_name)\n"
            f"    old = getattr(parent, child)\n"
            f"    setattr(parent, child, {constructor})")


def _module_counts(result: ScanResult) -> dict[str, int]:
    counts: dict[str, int] = {}
    for site in result.sites:
        if site.function is None:
            counts[site.module] = counts.get(site.module, 0) + 1
    return counts


def _module_sites(result: ScanResult) -> list[SiteResult]:
    """Module sites called once per forward, whose feeding layer can be looked up."""
    counts = _module_counts(result)
    return [site for site in result.sites
            if site.function is None and site.module and counts.get(site.module) == 1]


def _channel_granularity(result: ScanResult) -> bool:
    return getattr(result.settings.granularity, "value", result.settings.granularity) == "channel"


# -- looking at the model -----------------------------------------------------------------

def _layer_kinds() -> tuple[type, ...]:
    from torch import nn
    return (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
            nn.modules.instancenorm._InstanceNorm, nn.Embedding)


def _is_activation(module: nn.Module) -> bool:
    from ..kinds import spec_for_module
    return spec_for_module(module) is not None


def feeding_layers(model: nn.Module) -> dict[str, tuple[str, nn.Module]]:
    """For each activation module, the layer that (heuristically) feeds it.

    The feeder is the last Linear / Conv / BatchNorm / LayerNorm / GroupNorm /
    InstanceNorm / Embedding module listed before the activation in
    ``model.named_modules()`` order (see the module docstring for when this is trusted).

    Args:
        model: the scanned model.

    Returns:
        ``{activation module name: (layer name, layer)}``; activations with no layer before them are absent.
    """
    kinds = _layer_kinds()
    feeders: dict[str, tuple[str, nn.Module]] = {}
    last: tuple[str, nn.Module] | None = None
    for name, module in model.named_modules():
        if _is_activation(module):
            if last is not None and name:
                feeders[name] = last
        elif isinstance(module, kinds):
            last = (name, module)
    return feeders


def layer_width(layer: nn.Module) -> int | None:
    """How many output units a Linear / Conv / norm layer has (None when unknown)."""
    from torch import nn
    if isinstance(layer, nn.Linear):
        return int(layer.out_features)
    if isinstance(layer, nn.modules.conv._ConvNd):
        return int(layer.out_channels)
    if isinstance(layer, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        return int(layer.num_features)
    if isinstance(layer, nn.GroupNorm):
        return int(layer.num_channels)
    if isinstance(layer, nn.Embedding):
        return int(layer.embedding_dim)
    if isinstance(layer, nn.LayerNorm):
        shape = tuple(layer.normalized_shape)
        return int(shape[-1]) if shape else None
    return None


def _feeder_for(site: SiteResult, feeders: dict[str, tuple[str, nn.Module]]) -> tuple[str, nn.Module] | None:
    found = feeders.get(site.module)
    if found is None or layer_width(found[1]) != site.units:
        return None
    return found


def _is_weight_layer(layer: nn.Module) -> bool:
    from torch import nn
    return isinstance(layer, (nn.Linear, nn.modules.conv._ConvNd)) and not isinstance(
        layer, nn.modules.conv._ConvTransposeNd)


def _is_batchnorm(layer: nn.Module) -> bool:
    from torch import nn
    return isinstance(layer, nn.modules.batchnorm._BatchNorm)


def _fan_in(layer: nn.Module) -> int:
    weight = layer.weight
    return int(weight[0].numel())


def _weight_std(layer: nn.Module) -> float:
    return float(layer.weight.detach().double().std(unbiased=False))


def _activation_module(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _leaky_slope(module: nn.Module | None) -> float | None:
    """The negative slope He's gain should use for this activation (None: plain ReLU)."""
    from torch import nn
    if isinstance(module, nn.LeakyReLU):
        return float(module.negative_slope)
    if isinstance(module, nn.PReLU):
        return float(module.weight.detach().float().mean())
    if isinstance(module, nn.RReLU):
        return float((module.lower + module.upper) / 2)
    return None


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


# -- rules that need only the result -------------------------------------------------------

def rule_dead_share(result: ScanResult, model: nn.Module | None) -> list[Suggestion]:
    """ReLU/ReLU6 sites with more than ``DEAD_SHARE_WARNING`` dead units -> LeakyReLU or ELU."""
    heavy = [s for s in result.sites if s.kind in ZERO_GRADIENT_KINDS and s.dead_ratio > DEAD_SHARE_WARNING]
    if not heavy:
        return []
    worst = max(heavy, key=lambda s: s.dead_ratio)
    severity = "critical" if worst.dead_ratio > DEAD_SHARE_CRITICAL else "warning"
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
    inplace = model is not None and any(getattr(_activation_module(model, n), "inplace", False) for n in module_names)
    code = ""
    if module_names:
        unique = list(dict.fromkeys(module_names))
        code = _replace_modules_code(
            unique, f"nn.LeakyReLU({slope:g}{', inplace=True' if inplace else ''})",
            "a dead ReLU gets no gradient; LeakyReLU keeps one for negative inputs (retrain or fine-tune after)")
    if functional:
        code += ("\n" if code else "") + "".join(
            f"# {name}: in that module's forward(), replace F.relu(x) with F.leaky_relu(x, {slope:g})\n"
            for name in functional).rstrip("\n")
    title = (f"{len(heavy)} ReLU site(s) have more than {DEAD_SHARE_WARNING:.0%} dead units "
             f"(worst: site {worst.name}, {worst.dead} of {worst.units} = {worst.dead_ratio:.1%})")
    action = (f"Replace the ReLU at these sites with {choice}: they keep a gradient for negative inputs, so "
              "a unit can come back. Learnable slopes (PReLU) are an option when the training data is plentiful "
              "(one parameter per channel; they overfit on small data). Also look at the learning rate: "
              "dead ReLUs are usually pushed there by large updates.")
    evidence = {"threshold": DEAD_SHARE_WARNING, "sites_over_threshold": len(heavy),
                "relu_sites": relu_sites, "samples": result.data.get("samples"), "per_site": per_site}
    return [_suggestion("dead-share", severity, [s.name for s in heavy], title, evidence, action, code)]


def rule_negative_side(result: ScanResult, model: nn.Module | None) -> list[Suggestion]:
    """Leaky/smooth kinds whose units never see a positive pre-activation (and are not already saturated)."""
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
    title = (f"{len(hit)} site(s) where units never see a positive pre-activation (worst: site {worst.name} "
             f"({worst.kind}), {worst_count} of {worst.units} = {worst_count / worst.units:.1%})")
    action = ("LeakyReLU, PReLU, ELU, SELU, CELU, GELU and SiLU keep a (small) gradient for negative inputs, so "
              "these units are not dead in ReLU's sense, but they only ever use the negative side: they compute a "
              "scaled-down function of their input. Check the incoming bias and the input normalisation; a lower "
              "learning rate helps if they drifted there.")
    per_site = {site.name: {"kind": site.kind, "negative_only": count, "units": site.units,
                            "share": _num(count / site.units), "unit_indices": _cut(units)}
                for site, count, units in hit[:EVIDENCE_LIST_MAX]}
    evidence = {"threshold": DEAD_SHARE_WARNING, "sites_over_threshold": len(hit), "per_site": per_site}
    return [_suggestion("negative-only", "info", [site.name for site, _, _ in hit], title, evidence, action)]


def rule_saturation(result: ScanResult, model: nn.Module | None) -> list[Suggestion]:
    """ELU/SELU/CELU at their floor, ReLU6/Hardtanh stuck at a bound -> lower LR, normalise inputs, check bias."""
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
    severity = "critical" if worst[1] / worst[0].units > SATURATION_CRITICAL else "warning"
    feeders = feeding_layers(model) if model is not None else {}
    per_site: dict[str, Any] = {}
    bias_lines = []
    for site, count, mask in hit[:EVIDENCE_LIST_MAX]:
        rate = site.stats.floor_rate if site.saturation == "floor" else site.stats.bound_rate
        entry: dict[str, Any] = {"saturated": count, "units": site.units, "saturated_ratio": _num(count / site.units),
                                 "mean_rate_at_floor_or_bound": _num(float(np.nanmean(rate[mask]))),
                                 "min_output": _num(float(np.min(site.stats.minimum)))}
        feeder = _feeder_for(site, feeders) if _channel_granularity(result) else None
        if feeder is not None and getattr(feeder[1], "bias", None) is not None:
            bias = feeder[1].bias.detach().double().cpu().numpy()
            entry["feeding_layer"] = feeder[0]
            entry["median_bias_saturated"] = _num(float(np.median(bias[mask])))
            if (~mask).any():
                entry["median_bias_others"] = _num(float(np.median(bias[~mask])))
            bias_lines.append(f"print(model.get_submodule({_lit(feeder[0])}).bias[{_cut(np.flatnonzero(mask).tolist())}])")
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
    return [_suggestion("saturation", severity, [s.name for s, _, _ in hit], title, evidence, action, code)]


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


def rule_depth_trend(result: ScanResult, model: nn.Module | None) -> list[Suggestion]:
    """A dead share that grows with depth -> lower learning rate, BatchNorm, residual connections."""
    sites = [s for s in result.sites if s.units]
    if len(sites) < DEPTH_MIN_SITES:
        return []
    ratios = np.array([s.dead_ratio for s in sites])
    depth = np.arange(len(sites), dtype=float)
    rho = _spearman(depth, ratios)
    third = max(1, len(sites) // 3)
    first, last = float(ratios[:third].mean()), float(ratios[-third:].mean())
    if not (math.isfinite(rho) and rho >= DEPTH_MIN_CORRELATION and last - first >= DEPTH_MIN_RISE):
        return []
    deeper = [s for s in sites[third:] if s.dead_ratio > first]
    deepest = max(deeper, key=lambda s: s.dead_ratio) if deeper else sites[-1]
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
    if model is not None and deepest.function is None and deepest.module:
        feeder = _feeder_for(deepest, feeding_layers(model))
        if feeder is not None and _is_weight_layer(feeder[1]):
            from torch import nn
            dims = {nn.Linear: 1, nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}.get(type(feeder[1]), 1)
            code += (f"# normalise before the activation at {deepest.name} (repeat for the other deep sites):\n"
                     f"import torch.nn as nn\n"
                     f"parent_name, _, child = {_lit(deepest.module)}.rpartition('.')\n"
                     f"parent = model.get_submodule(parent_name)\n"
                     f"setattr(parent, child, nn.Sequential(nn.BatchNorm{dims}d({deepest.units}), "
                     f"getattr(parent, child)))")
    return [_suggestion("depth-trend", "warning", [s.name for s in deeper] or [deepest.name], title, evidence,
                        action, code)]


def rule_prelu_slopes(result: ScanResult, model: nn.Module | None) -> list[Suggestion]:
    """PReLU slopes collapsed to ~0 (a ReLU again, can die) or negative (a non-monotonic unit).

    One suggestion per severity: ``warning`` for sites whose collapsed slopes come with dead
    units, ``info`` for the rest; per-site numbers under ``evidence.per_site``.
    """
    groups: dict[str, list[tuple[SiteResult, dict[str, Any], bool, bool]]] = {"warning": [], "info": []}
    for site in result.sites:
        if site.kind != "PReLU" or not site.prelu_slopes:
            continue
        summary = site.prelu_slopes
        weights = None
        if model is not None and site.function is None and site.module:
            module = _activation_module(model, site.module)
            if module is not None and hasattr(module, "weight"):
                weights = module.weight.detach().double().cpu().numpy().reshape(-1)
        entry: dict[str, Any] = {"slope_min": _num(summary["min"]), "slope_mean": _num(summary["mean"]),
                                 "slope_max": _num(summary["max"]), "slopes": summary["count"],
                                 "nonpositive": summary["nonpositive"], "dead_units": site.dead}
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
        severity = "warning" if has_collapsed and site.dead else "info"
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
        out.append(_suggestion("prelu-slopes", severity, [s.name for s, *_ in hits], title, evidence, action, code))
    return out


# -- rules that read the weights -----------------------------------------------------------

def rule_init(result: ScanResult, model: nn.Module | None) -> list[Suggestion]:
    """Weights feeding a dead-heavy ReLU-like site that do not look like He's init."""
    if model is None or not _channel_granularity(result):
        return []
    feeders = feeding_layers(model)
    findings = []
    for site in _module_sites(result):
        if site.kind not in HE_KINDS or site.dead_ratio <= DEAD_SHARE_WARNING:
            continue
        feeder = _feeder_for(site, feeders)
        if feeder is None or not _is_weight_layer(feeder[1]) or feeder[1].weight.numel() < INIT_MIN_WEIGHTS:
            continue
        name, layer = feeder
        slope = _leaky_slope(_activation_module(model, site.module))
        fan_in = _fan_in(layer)
        fan_out = int(layer.weight.shape[0] * (layer.weight[0][0].numel() if layer.weight.dim() > 2 else 1))
        refs = init_references(fan_in, fan_out, slope)
        std = _weight_std(layer)
        looks = classify_init(std, refs)
        if looks == "he":
            continue
        findings.append((site, name, layer, slope, fan_in, refs, std, looks))
    if not findings:
        return []
    per_layer: dict[str, Any] = {}
    lines = []
    for site, name, _layer, slope, fan_in, refs, std, looks in findings:
        gain_text = "sqrt(2/fan_in)" if slope is None else f"sqrt(2/(1+{slope:.3g}²))/sqrt(fan_in)"
        per_layer[name] = {"site": site.name, "dead_ratio": _num(site.dead_ratio), "fan_in": fan_in,
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
        title = (f"Layer {name} ({type(_layer).__name__}) feeding site {site.name} ({site.dead_ratio:.0%} dead) has "
                 f"PyTorch's default init: std {_fmt(std)} ≈ 1/sqrt(3·fan_in), He would be sqrt(2/fan_in) = "
                 f"{_fmt(refs['he'])} (fan_in {fan_in})")
    else:
        title = (f"Layer {name} ({type(_layer).__name__}) feeding site {site.name} ({site.dead_ratio:.0%} dead) is not "
                 f"He-initialised: std {_fmt(std)}, He would be {_fmt(refs['he'])} (fan_in {fan_in})")
    if len(findings) > 1:
        title += f"; {len(findings) - 1} more layer(s)"
    action = ("He initialisation keeps the activations' variance constant through ReLU layers; PyTorch's default "
              "for Linear/Conv is about 0.41× He's std, and a trained layer far from any init usually saw large "
              "updates. Re-initialise with He (nonlinearity matching the activation) and retrain:\n- "
              + "\n- ".join(lines))
    code_lines = ["import torch.nn as nn"]
    for site, name, _layer, slope, *_ in findings[:8]:
        nonlinearity = "relu" if slope is None else "leaky_relu"
        extra = "" if slope is None else f", a={slope:.3g}"
        code_lines.append(f"nn.init.kaiming_normal_(model.get_submodule({_lit(name)}).weight, mode='fan_in', "
                          f"nonlinearity='{nonlinearity}'{extra})")
    evidence = {"dead_share_threshold": DEAD_SHARE_WARNING, "tolerance": INIT_TOLERANCE, "layers": per_layer}
    return [_suggestion("init-not-he", "warning", [f[0].name for f in findings], title, evidence, action,
                        "\n".join(code_lines))]


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
    from torch import nn
    in_width = int(layer.in_features) if isinstance(layer, nn.Linear) else int(layer.in_channels)
    previous = _sequential_input_site(model, result, layer_name)
    if previous is not None:
        if previous.units == in_width and np.isfinite(previous.stats.minimum).all() \
                and np.isfinite(previous.stats.maximum).all():
            return previous.stats.minimum, previous.stats.maximum, f"observed output range of site {previous.name}"
        return None
    if input_bounds is not None and layer_name == _first_weight_layer(model):
        low, high = input_bounds
        return np.full(in_width, float(low)), np.full(in_width, float(high)), "input bounds given by the caller"
    return None


def _input_rms(result: ScanResult, site_index: int, in_width: int) -> tuple[float, str]:
    if site_index > 0:
        previous = result.sites[site_index - 1]
        if previous.units == in_width:
            with np.errstate(invalid="ignore", divide="ignore"):
                mean_square = previous.stats.total_sq / np.maximum(previous.stats.observations, 1)
            finite = mean_square[np.isfinite(mean_square)]
            if finite.size:
                return float(math.sqrt(max(float(finite.mean()), 1e-12))), f"site {previous.name} (measured)"
    return 1.0, "assumed 1 (inputs taken as standardised)"


def rule_bias(result: ScanResult, model: nn.Module | None, input_bounds: tuple[float, float] | None = None
              ) -> list[Suggestion]:
    """Dead units whose incoming bias is strongly negative, and units that cannot fire on the observed input range.

    A unit's typical |pre-activation| is ``||w_i|| * rms(x)`` (its weight norm times the
    input's root mean square, measured at the previous site when that one feeds this
    layer, else taken as 1). Its bias is strongly negative when below ``-STRONG_BIAS``
    times that. When the input's per-feature range ``[lo, hi]`` is known (the previous
    site's observed min/max, or ``input_bounds``), a unit whose largest reachable
    pre-activation ``sum_j max(w_ij*lo_j, w_ij*hi_j) + b_i`` is <= 0 cannot fire on any
    input in that range. Hardtanh sites (active above ``min_val``) are left out.
    """
    if model is None or not _channel_granularity(result):
        return []
    from torch import nn
    feeders = feeding_layers(model)
    index_of = {id(site): k for k, site in enumerate(result.sites)}
    out = []
    for site in _module_sites(result):
        if not site.dead or site.kind == "Hardtanh":
            continue
        feeder = _feeder_for(site, feeders)
        if feeder is None or not _is_weight_layer(feeder[1]) or feeder[1].bias is None:
            continue
        name, layer = feeder
        if isinstance(layer, nn.modules.conv._ConvNd) and layer.groups != 1:
            continue
        k = index_of[id(site)]
        weight = layer.weight.detach().double().cpu().numpy().reshape(layer.weight.shape[0], -1)
        bias = layer.bias.detach().double().cpu().numpy()
        in_width = int(layer.in_features) if isinstance(layer, nn.Linear) else int(layer.in_channels)
        rms, rms_source = _input_rms(result, k, in_width)
        reach = np.linalg.norm(weight, axis=1) * rms
        dead = site.verdict.dead
        strong = dead & (bias < -STRONG_BIAS * reach)
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
        flagged = np.flatnonzero(strong).tolist()
        if cannot_fire:
            flagged = sorted(set(flagged) | (set(cannot_fire) & set(np.flatnonzero(dead).tolist())))
        if not flagged:
            continue
        evidence: dict[str, Any] = {
            "layer": name, "units": _cut(flagged), "units_count": len(flagged), "dead_at_site": site.dead,
            "biases": [_num(bias[i]) for i in flagged[:EVIDENCE_LIST_MAX]],
            "typical_preactivation": [_num(reach[i]) for i in flagged[:EVIDENCE_LIST_MAX]],
            "median_bias_other_units": _num(float(np.median(bias[~strong]))) if (~strong).any() else None,
            "strong_bias_multiple": STRONG_BIAS, "input_rms": _num(rms), "input_rms_source": rms_source}
        if cannot_fire is not None:
            evidence["cannot_fire_units"] = _cut(cannot_fire)
            evidence["cannot_fire_count"] = len(cannot_fire)
            evidence["input_range_source"] = box_source
        strong_units = np.flatnonzero(strong).tolist()
        parts = []
        if strong_units:
            parts.append(f"{len(strong_units)} dead unit(s) held below zero by their bias in layer {name} "
                         f"(as low as {_fmt(float(bias[strong_units].min()))}, while a typical |w·x| is "
                         f"{_fmt(float(np.median(reach)))})")
        if cannot_fire:
            parts.append(f"{len(cannot_fire)} unit(s) of layer {name} cannot fire for any input in the observed "
                         f"range (max reachable pre-activation ≤ 0)")
        title = f"Site {site.name}: " + "; ".join(parts)
        action = ("These units' bias holds their pre-activation below zero for every input seen, so "
                  + _negative_side_effect(site.kind) + ". Reset those biases to 0 (or re-initialise the units' "
                  "incoming weights, ReDo-style) and fine-tune; then find what drove them there (a learning-rate "
                  "spike, an aggressive bias initialisation).")
        code = (f"import torch\n"
                f"layer = model.get_submodule({_lit(name)})\n"
                f"with torch.no_grad():\n"
                f"    layer.bias[{flagged}] = 0.0")
        out.append(_suggestion("bias-reset", "warning", [site.name], title, evidence, action, code))
    return out


def _negative_side_effect(kind: str) -> str:
    """What a unit whose pre-activation never gets above zero does, per kind."""
    if kind in ZERO_GRADIENT_KINDS:
        return "they output 0 and get no gradient"
    if kind in ("ELU", "SELU", "CELU"):
        return "they sit on the negative branch, at or near the floor where the gradient is ~0"
    return (f"{kind} only ever uses its negative side there: a small gradient, a scaled-down function of the input")


def rule_batchnorm(result: ScanResult, model: nn.Module | None) -> list[Suggestion]:
    """Dead channels right after a BatchNorm whose beta is strongly negative or gamma ~0."""
    if model is None or not _channel_granularity(result):
        return []
    feeders = feeding_layers(model)
    out = []
    for site in _module_sites(result):
        if not site.dead:
            continue
        feeder = _feeder_for(site, feeders)
        if feeder is None or not _is_batchnorm(feeder[1]) or not feeder[1].affine:
            continue
        name, bn = feeder
        beta = bn.bias.detach().double().cpu().numpy()
        gamma = bn.weight.detach().double().cpu().numpy()
        dead = site.verdict.dead
        negative_beta = dead & (beta < -BN_STRONG_BETA * np.abs(gamma))
        zero_gamma = dead & (np.abs(gamma) < BN_GAMMA_EPS) & (beta <= 0)
        flagged = np.flatnonzero(negative_beta | zero_gamma).tolist()
        if not flagged:
            continue
        evidence = {"batchnorm": name, "channels": _cut(flagged), "channels_count": len(flagged),
                    "dead_at_site": site.dead, "beta": [_num(beta[i]) for i in flagged[:EVIDENCE_LIST_MAX]],
                    "gamma": [_num(gamma[i]) for i in flagged[:EVIDENCE_LIST_MAX]],
                    "beta_strongly_negative": int(negative_beta.sum()), "gamma_near_zero": int(zero_gamma.sum()),
                    "median_beta_live": _num(float(np.median(beta[~dead]))) if (~dead).any() else None,
                    "median_gamma_live": _num(float(np.median(gamma[~dead]))) if (~dead).any() else None,
                    "beta_multiple": BN_STRONG_BETA, "gamma_eps": BN_GAMMA_EPS}
        reasons = []
        if negative_beta.any():
            reasons.append(f"β < −{BN_STRONG_BETA:g}·|γ| on {int(negative_beta.sum())}")
        if zero_gamma.any():
            reasons.append(f"γ ≈ 0 with β ≤ 0 on {int(zero_gamma.sum())}")
        title = f"Site {site.name}: {len(flagged)} dead channel(s) come out of BatchNorm {name} with " + " and ".join(reasons)
        action = ("After BatchNorm a channel is ~N(β, γ²); with β several γ below zero (or γ ≈ 0 and β ≤ 0) the "
                  "following ReLU almost never fires, and the channel stops learning. Reset β to 0 and γ to 1 on "
                  "those channels and fine-tune; check the learning rate and any weight decay on BN parameters.")
        code = (f"import torch\n"
                f"bn = model.get_submodule({_lit(name)})\n"
                f"with torch.no_grad():\n"
                f"    bn.bias[{flagged}] = 0.0\n"
                f"    bn.weight[{flagged}] = 1.0")
        out.append(_suggestion("batchnorm-dead", "warning", [site.name], title, evidence, action, code))
    return out


def _leaf_order(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, module) for name, module in model.named_modules() if name and not list(module.children())]


def rule_selu(result: ScanResult, model: nn.Module | None) -> list[Suggestion]:
    """SELU's self-normalisation caveats: LeCun init, no CNN, no BatchNorm next to it, AlphaDropout."""
    selu_sites = [s for s in result.sites if s.kind == "SELU"]
    if model is None or not selu_sites:
        return []
    from torch import nn
    out = []
    feeders = feeding_layers(model)
    names = [s.name for s in selu_sites]
    # 1. LeCun normal init: std 1/sqrt(fan_in)
    off: dict[str, Any] = {}
    lines = []
    for site in _module_sites(result):
        if site.kind != "SELU" or not _channel_granularity(result):
            continue
        feeder = _feeder_for(site, feeders)
        if feeder is None or not _is_weight_layer(feeder[1]) or feeder[1].weight.numel() < INIT_MIN_WEIGHTS:
            continue
        name, layer = feeder
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
        out.append(_suggestion(
            "selu-init", "warning", [v["site"] for v in off.values()],
            f"SELU's inputs are not LeCun-normal initialised in {len(off)} layer(s) ({lines[0]})",
            {"layers": off, "tolerance": INIT_TOLERANCE},
            "SELU's self-normalising fixed point (mean 0, variance 1) needs weights ~ N(0, 1/fan_in). Re-initialise "
            "the layers feeding SELU with LeCun normal (kaiming_normal_ with nonlinearity='linear') and retrain:\n- "
            + "\n- ".join(lines), code))
    leaves = _leaf_order(model)
    convs = [n for n, m in leaves if isinstance(m, nn.modules.conv._ConvNd)]
    # 2. SELU in a CNN
    if convs:
        out.append(_suggestion(
            "selu-cnn", "info", names,
            f"SELU in a convolutional network ({len(convs)} conv layer(s), e.g. {convs[0]})",
            {"conv_layers": len(convs), "selu_sites": len(selu_sites)},
            "SELU's self-normalisation is derived for fully-connected stacks; it does not hold for convolutions. "
            "For a CNN, ReLU + BatchNorm (or ELU + BatchNorm/GroupNorm) is the proven combination.",
            ""))
    # 3. BatchNorm next to SELU
    adjacent = []
    for position, (name, module) in enumerate(leaves):
        if isinstance(module, nn.SELU):
            for other in (position - 1, position + 1):
                if 0 <= other < len(leaves) and _is_batchnorm(leaves[other][1]):
                    adjacent.append(leaves[other][0])
    if adjacent:
        adjacent = list(dict.fromkeys(adjacent))
        out.append(_suggestion(
            "selu-batchnorm", "warning", names,
            f"BatchNorm next to SELU ({', '.join(adjacent[:4])})",
            {"batchnorm_layers": len(adjacent), "selu_sites": len(selu_sites)},
            "SELU normalises by itself; a BatchNorm beside it interferes with the self-normalising fixed point. "
            "Use either SELU without normalisation layers, or ReLU/ELU with BatchNorm.",
            _replace_modules_code(adjacent, "nn.Identity()", "drop the BatchNorm layers next to SELU (then retrain)")))
    # 4. plain Dropout with SELU
    plain = [n for n, m in leaves if type(m) in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)]
    if plain:
        out.append(_suggestion(
            "selu-dropout", "warning", names,
            f"SELU with plain Dropout ({len(plain)} layer(s), e.g. {plain[0]}); SELU needs AlphaDropout",
            {"dropout_layers": len(plain), "selu_sites": len(selu_sites)},
            "Plain Dropout sets units to 0, which shifts SELU's mean and variance away from the fixed point. "
            "AlphaDropout drops to SELU's negative saturation value and rescales, keeping mean and variance.",
            _replace_modules_code(plain, "nn.AlphaDropout(p=old.p)", "plain Dropout breaks self-normalisation")))
    return out


def rule_selection_guide(result: ScanResult, model: nn.Module | None) -> list[Suggestion]:
    """The seed's selection guide, only where the model's structure makes it relevant."""
    if model is None:
        return []
    from torch import nn
    out = []
    leaves = _leaf_order(model)
    convs = [n for n, m in leaves if isinstance(m, nn.modules.conv._ConvNd)]
    norms = [n for n, m in leaves if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
                                                   nn.modules.instancenorm._InstanceNorm))]
    linears = [n for n, m in leaves if isinstance(m, nn.Linear)]
    attention = [n for n, m in model.named_modules()
                 if isinstance(m, (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer))
                 or "attention" in type(m).__name__.lower()]
    relu_sites = [s for s in result.sites if s.kind in ZERO_GRADIENT_KINDS]
    problem = any(s.dead_ratio > DEAD_SHARE_WARNING for s in result.sites)
    # A deep CNN without normalisation.
    if len(convs) >= DEEP_CNN_CONVS and not norms and relu_sites:
        first = model.get_submodule(convs[0])
        dims = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}.get(type(first), 2)
        out.append(_suggestion(
            "guide-cnn-batchnorm", "warning" if problem else "info", [s.name for s in relu_sites],
            f"A {len(convs)}-conv network with ReLU and no normalisation layer",
            {"conv_layers": len(convs), "norm_layers": 0, "dead_ratio": _num(result.summary.dead_ratio)},
            "For deep CNNs, ReLU + BatchNorm is the proven combination: normalising each conv's output keeps "
            "the ReLUs' inputs centred, so fewer units drift into the dead region. Add BatchNorm after each conv "
            "(before its ReLU) and retrain.",
            _replace_modules_code(convs[:16], f"nn.Sequential(old, nn.BatchNorm{dims}d(old.out_channels))",
                                  "conv -> conv + BatchNorm (retrain after)")))
    # A deep fully-connected stack with dying units: SELU + LeCun is an option.
    if (not convs and not attention and len(linears) >= DEEP_MLP_LINEARS and problem
            and not any(s.kind == "SELU" for s in result.sites)):
        activations = [n for n, m in leaves if _is_activation(m)]
        code = (_replace_modules_code(activations[:32], "nn.SELU()", "ReLU -> SELU (retrain after)") + "\n"
                + "# LeCun normal init for the Linear layers:\n"
                + f"for name in [{', '.join(_lit(n) for n in linears[:32])}]:\n"
                + "    nn.init.kaiming_normal_(model.get_submodule(name).weight, nonlinearity='linear')")
        out.append(_suggestion(
            "guide-selu-mlp", "info", [s.name for s in result.sites if s.dead_ratio > DEAD_SHARE_WARNING],
            f"A deep fully-connected stack ({len(linears)} Linear layers) with dying units: SELU is an option",
            {"linear_layers": len(linears), "dead_ratio": _num(result.summary.dead_ratio)},
            "Deep fully-connected networks without normalisation are where SELU's self-normalisation applies: "
            "SELU everywhere, LeCun-normal init, AlphaDropout instead of Dropout, no BatchNorm.",
            code))
    # ReLU in transformer blocks: GELU is the usual choice.
    if attention and relu_sites:
        encoder_layers = [n for n, m in model.named_modules()
                          if isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer))]
        relu_modules = list(dict.fromkeys(s.module for s in relu_sites if s.function is None and s.module))
        code = ""
        if encoder_layers:
            code = "import torch.nn.functional as F\n" + "\n".join(
                f"model.get_submodule({_lit(n)}).activation = F.gelu" for n in encoder_layers[:16])
        if relu_modules:
            code += ("\n" if code else "") + _replace_modules_code(relu_modules[:16], "nn.GELU()",
                                                                   "ReLU -> GELU in the feed-forward blocks")
        out.append(_suggestion(
            "guide-gelu-transformer", "info", [s.name for s in relu_sites],
            f"ReLU in a transformer-style model ({len(attention)} attention module(s), {len(relu_sites)} ReLU site(s))",
            {"attention_modules": len(attention), "relu_sites": len(relu_sites),
             "dead_ratio": _num(result.summary.dead_ratio)},
            "Transformer feed-forward blocks usually use GELU (smooth, no dead region); "
            "nn.TransformerEncoderLayer takes activation='gelu'. Changing it means retraining.",
            code))
    return out


def rule_healthy(result: ScanResult, suggestions: Sequence[Suggestion]) -> list[Suggestion]:
    """Nothing to fix: say so plainly, with the numbers."""
    if any(s["severity"] in ("warning", "critical") for s in suggestions):
        return []
    summary = result.summary
    evidence = {"sites": summary.sites, "units": summary.units, "dead": summary.dead,
                "dead_ratio": _num(summary.dead_ratio), "saturated": summary.saturated,
                "dormant": summary.dormant, "active_rate_mean": _num(summary.active_rate_mean),
                "samples": result.data.get("samples"), "dead_share_threshold": DEAD_SHARE_WARNING,
                "saturation_threshold": SATURATION_WARNING}
    if summary.dead == 0 and summary.saturated == 0:
        title = (f"Nothing wrong found: 0 of {summary.units} units dead, none saturated, across {summary.sites} "
                 f"site(s) on {result.data.get('samples', '?')} samples")
    else:
        title = (f"Nothing to fix: {summary.dead} of {summary.units} units dead ({summary.dead_ratio:.1%}) and "
                 f"{summary.saturated} saturated, no site above the {DEAD_SHARE_WARNING:.0%} threshold")
    rate = summary.active_rate_mean
    action = (f"No fix needed. Units are active on {rate:.1%} of observations on average"
              if rate is not None else "No fix needed")
    action += (f"; {summary.dormant} unit(s) are dormant by ReDo's score (τ = {result.settings.thresholds.tau:g}), "
               "which is worth watching if it grows during training." if summary.dormant else ".")
    return [_suggestion("healthy", "info", [], title, evidence, action)]


#: Rules in the order they run; each is ``rule(result, model) -> list[suggestion]``.
RULES: tuple[Rule, ...] = (rule_dead_share, rule_init, rule_bias, rule_batchnorm, rule_saturation, rule_negative_side,
                           rule_depth_trend, rule_prelu_slopes, rule_selu, rule_selection_guide)
#: Rules that read nothing but the result (they also run on a result read back from JSON).
RESULT_ONLY_RULES: tuple[Rule, ...] = (rule_dead_share, rule_saturation, rule_negative_side, rule_depth_trend,
                                       rule_prelu_slopes)


def _site_order(result: ScanResult) -> dict[str, int]:
    return {site.name: k for k, site in enumerate(result.sites)}


def suggest(result: ScanResult, model: nn.Module | None = None, *, input_bounds: tuple[float, float] | None = None,
            rules: Sequence[Rule] | None = None, strict: bool = False) -> list[Suggestion]:
    """Fix suggestions for a scan, each with the evidence it rests on.

    Args:
        result: a finished scan (or one read back from JSON).
        model: the scanned model; without it the weight-based rules are skipped.
        input_bounds: the model input's range ``(low, high)`` (e.g. ``(0, 1)`` for images), which
            lets the bias rule prove that first-layer units cannot fire.
        rules: the rules to run (default ``RULES``).
        strict: re-raise a rule's exception instead of reporting it as an info suggestion.

    Returns:
        Suggestions as plain dicts, critical first, then warning, then info; each in network
        order of its first site. When no rule finds anything worth a warning, a ``healthy``
        suggestion says so with the numbers.
    """
    if model is not None:
        import torch
        if isinstance(model, torch.jit.ScriptModule):
            # TorchScript modules expose no get_submodule/ordinary layers: judge from the result alone.
            model = None
    found: list[Suggestion] = []
    for rule in (RULES if rules is None else rules):
        try:
            if rule is rule_bias:
                found.extend(rule_bias(result, model, input_bounds))
            else:
                found.extend(rule(result, model))
        except Exception as exc:  # a rule must never cost the user the scan itself
            if strict:
                raise
            found.append(_suggestion("rule-error", "info", [], f"Rule {rule.__name__} could not run: "
                                     f"{type(exc).__name__}: {str(exc)[:200]}", {},
                                     "This is a deadrelu bug; the scan's numbers are unaffected. Please report it."))
    found.extend(rule_healthy(result, found))
    order = _site_order(result)
    rank = {severity: k for k, severity in enumerate(SEVERITIES)}

    def key(item: tuple[int, Suggestion]) -> tuple[int, int, int]:
        position, suggestion = item
        first = min((order.get(name, len(order)) for name in suggestion["sites"]), default=len(order))
        return rank[suggestion["severity"]], first, position
    return [suggestion for _, suggestion in sorted(enumerate(found), key=key)]


__all__ = ["suggest", "RULES", "RESULT_ONLY_RULES", "feeding_layers", "layer_width", "init_references",
           "classify_init", "rule_dead_share", "rule_init", "rule_bias", "rule_batchnorm", "rule_saturation",
           "rule_negative_side", "rule_depth_trend", "rule_prelu_slopes", "rule_selu", "rule_selection_guide",
           "rule_healthy"]
