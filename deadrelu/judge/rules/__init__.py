"""Fix suggestions backed by evidence: a small rules engine over a result and (optionally) the model.

A rule is ``rule(context: RuleContext) -> list[Suggestion]``: it reads the result, the
model and the input range from the context, and asks ``context.feeder(site)`` which layer
feeds a site (the one helper every weight rule uses). ``suggest`` runs the rules, ranks
what they found — by dead units explained, then severity, then network order — and
returns JSON-ready dicts (``Suggestion.to_dict()``), which is what ``ScanResult.suggestions``
holds and the JSON report stores.

Rules that need only the result (dead share, saturation, depth trend, PReLU slopes,
"nothing wrong") also run on a result read back from JSON. Rules that read weights
(initialisation, bias, BatchNorm, SELU/LeCun, the selection guide) need the model and
return nothing without it. Where a weight rule cannot look at a site that has dead or
saturated units (its input comes after a residual add, say), a ``not-explained`` note
lists those sites and why.

No torch at import time (``deadrelu report`` reads suggestions without torch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .base import (BN_GAMMA_EPS, BN_STRONG_BETA, DEAD_SHARE_CRITICAL, DEAD_SHARE_WARNING, DEEP_CNN_CONVS,
                   DEEP_MLP_LINEARS, DEPTH_MIN_CORRELATION, DEPTH_MIN_RISE, DEPTH_MIN_SITES, EVIDENCE_LIST_MAX,
                   INIT_MIN_WEIGHTS, INIT_TOLERANCE, PRELU_COLLAPSED, SATURATION_CRITICAL, SATURATION_WARNING,
                   SCOPE_MODEL, SCOPE_SITE, SEVERITIES, STRONG_BIAS, VERY_DEEP_SITES, Feeder, RuleContext, Severity,
                   Suggestion, feeding_layers, layer_width, legacy_rule, rule, suggestion)
from .guide import rule_selection_guide
from .results import (rule_dead_share, rule_depth_trend, rule_healthy, rule_negative_side, rule_prelu_slopes,
                      rule_saturation)
from .weights import classify_init, init_references, rule_batchnorm, rule_bias, rule_init, rule_selu

if TYPE_CHECKING:
    from torch import nn

    from ...result import ScanResult

Rule = Callable[[RuleContext], list[Suggestion]]

#: Rules in the order they run.
RULES: tuple[Rule, ...] = (rule_dead_share, rule_init, rule_bias, rule_batchnorm, rule_saturation, rule_negative_side,
                           rule_depth_trend, rule_prelu_slopes, rule_selu, rule_selection_guide)
#: Rules that read nothing but the result (they also run on a result read back from JSON).
RESULT_ONLY_RULES: tuple[Rule, ...] = (rule_dead_share, rule_saturation, rule_negative_side, rule_depth_trend,
                                       rule_prelu_slopes)
#: Rules that look for a cause in the layer feeding a site.
WEIGHT_RULES: tuple[Rule, ...] = (rule_init, rule_bias, rule_batchnorm)


def _run(rule_function: Callable[..., Any], context: RuleContext) -> list[Suggestion]:
    """One rule's findings; an old-style ``rule(result, model)`` returning dicts is accepted too."""
    if legacy_rule(rule_function):
        found = rule_function(context.result, context.model)
        return [item if isinstance(item, Suggestion) else Suggestion.from_dict(item) for item in found]
    return list(rule_function(context))


def rule_not_explained(context: RuleContext, found: Sequence[Suggestion]) -> list[Suggestion]:
    """Sites with dead or saturated units that no weight rule could look at, and why.

    Silent without the model (every weight rule needs it) and for sites a cause was found for."""
    if context.model is None:
        return []
    explained = {name for s in found if s.units_explained for name in s.sites}
    reasons: dict[str, str] = {}
    for site in context.result.sites:
        if not (site.dead or site.saturated) or site.name in explained:
            continue
        why = context.why_no_feeder(site)
        if why is not None:
            reasons[site.name] = why
    if not reasons:
        return []
    units = sum(site.dead + site.saturated for site in context.result.sites if site.name in reasons)
    first, why = next(iter(reasons.items()))
    more = f" and {len(reasons) - 1} more" if len(reasons) > 1 else ""
    title = (f"No layer checked for the cause at {len(reasons)} site(s) with dead or saturated units "
             f"({units} units): {first} — {why}{more}")
    action = ("The bias, BatchNorm and initialisation rules blame only a layer whose output reaches the site "
              "untouched. At these sites something else decides the input (for a site after a residual add, the "
              "shortcut as much as the block), so look at them by hand:\n- "
              + "\n- ".join(f"{name}: {reason}" for name, reason in list(reasons.items())[:EVIDENCE_LIST_MAX]))
    evidence = {"sites": len(reasons), "units": units,
                "per_site": {name: {"reason": reason} for name, reason in list(reasons.items())[:EVIDENCE_LIST_MAX]}}
    return [suggestion("not-explained", "info", list(reasons), title, evidence, action)]


def _order_key(context: RuleContext) -> Callable[[tuple[int, Suggestion]], tuple[int, int, int, int]]:
    order = {site.name: k for k, site in enumerate(context.result.sites)}

    def key(item: tuple[int, Suggestion]) -> tuple[int, int, int, int]:
        position, found = item
        first = min((order.get(name, len(order)) for name in found.sites), default=len(order))
        return -found.units_explained, Severity(found.severity).order, first, position
    return key


def _one_init_per_layer(ranked: list[Suggestion]) -> list[Suggestion]:
    """He (ReLU) and LeCun (SELU) advice for the same network: say which applies, in both."""
    import dataclasses
    he = next((s for s in ranked if s.id == "init-not-he"), None)
    selu = next((s for s in ranked if s.id == "guide-selu-mlp"), None)
    if he is None or selu is None:
        return ranked
    he_note = (f"\nHe applies while these layers feed ReLU; if you take the SELU option (#{selu.rank}), use its "
               "LeCun init instead — not both.")
    selu_note = f"\nThis replaces the He initialisation of #{he.rank}: LeCun goes with SELU, He with ReLU."
    return [dataclasses.replace(s, action=s.action + he_note) if s is he else
            dataclasses.replace(s, action=s.action + selu_note) if s is selu else s for s in ranked]


def rank(found: Sequence[Suggestion], context: RuleContext) -> list[Suggestion]:
    """Suggestions ordered by dead units explained (a named cause first), then severity, then
    network order of their first site; ``rank`` set from 1."""
    import dataclasses
    ordered = [s for _, s in sorted(enumerate(found), key=_order_key(context))]
    ranked = [dataclasses.replace(s, rank=k) for k, s in enumerate(ordered, 1)]
    return _one_init_per_layer(ranked)


def suggest_objects(result: ScanResult, model: nn.Module | None = None, *,
                    input_bounds: tuple[float, float] | None = None, rules: Sequence[Callable[..., Any]] | None = None,
                    strict: bool = False) -> list[Suggestion]:
    """Like ``suggest``, as ``Suggestion`` objects."""
    if model is not None:
        import torch
        if isinstance(model, torch.jit.ScriptModule):
            # TorchScript modules expose no get_submodule/ordinary layers: judge from the result alone.
            model = None
    context = RuleContext(result=result, model=model, input_bounds=input_bounds)
    found: list[Suggestion] = []
    for rule_function in (RULES if rules is None else rules):
        try:
            found.extend(_run(rule_function, context))
        except Exception as exc:  # a rule must never cost the user the scan itself
            if strict:
                raise
            name = getattr(rule_function, "__name__", repr(rule_function))
            found.append(suggestion("rule-error", "info", [], f"Rule {name} could not run: "
                                    f"{type(exc).__name__}: {str(exc)[:200]}", {},
                                    "This is a deadrelu bug; the scan's numbers are unaffected. Please report it."))
    if rules is None:
        found.extend(rule_not_explained(context, found))
    found.extend(rule_healthy(context, found))
    return rank(found, context)


def suggest(result: ScanResult, model: nn.Module | None = None, *, input_bounds: tuple[float, float] | None = None,
            rules: Sequence[Callable[..., Any]] | None = None, strict: bool = False) -> list[dict[str, Any]]:
    """Fix suggestions for a scan, each with the evidence it rests on.

    Args:
        result: a finished scan (or one read back from JSON).
        model: the scanned model; without it the weight-based rules are skipped.
        input_bounds: the model input's range ``(low, high)`` (e.g. ``(0, 1)`` for images), which
            lets the bias rule prove that first-layer units cannot fire.
        rules: the rules to run (default ``RULES``); ``rule(context)`` or old-style ``rule(result, model)``.
        strict: re-raise a rule's exception instead of reporting it as an info suggestion.

    Returns:
        Suggestions as plain dicts (``Suggestion.to_dict()``), ranked: most dead units explained
        first, then critical, warning, info, then network order. When no rule finds anything
        worth a warning, a ``healthy`` suggestion says so with the numbers.
    """
    return [found.to_dict() for found in suggest_objects(result, model, input_bounds=input_bounds, rules=rules,
                                                         strict=strict)]


__all__ = ["suggest", "suggest_objects", "rank", "Suggestion", "Severity", "RuleContext", "Feeder", "Rule", "rule",
           "suggestion", "RULES", "RESULT_ONLY_RULES", "WEIGHT_RULES", "feeding_layers", "layer_width",
           "init_references", "classify_init", "rule_dead_share", "rule_init", "rule_bias", "rule_batchnorm",
           "rule_saturation", "rule_negative_side", "rule_depth_trend", "rule_prelu_slopes", "rule_selu",
           "rule_selection_guide", "rule_healthy", "rule_not_explained", "SEVERITIES", "SCOPE_SITE", "SCOPE_MODEL",
           "DEAD_SHARE_WARNING", "DEAD_SHARE_CRITICAL", "SATURATION_WARNING", "SATURATION_CRITICAL", "INIT_TOLERANCE",
           "INIT_MIN_WEIGHTS", "STRONG_BIAS", "BN_STRONG_BETA", "BN_GAMMA_EPS", "DEPTH_MIN_SITES",
           "DEPTH_MIN_CORRELATION", "DEPTH_MIN_RISE", "PRELU_COLLAPSED", "DEEP_CNN_CONVS", "DEEP_MLP_LINEARS",
           "VERY_DEEP_SITES", "EVIDENCE_LIST_MAX"]
