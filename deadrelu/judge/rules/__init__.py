"""Fix suggestions backed by evidence: a small rules engine over a result and (optionally) the model.

A rule is ``rule(context: RuleContext) -> list[Suggestion]``: it reads the result, the
model, the input range and the optimizer state from the context, and asks
``context.feeder(site)`` which layer feeds a site (the one helper every weight rule uses).
Every suggestion names a ``cause`` (``CAUSES``). The causes are read in data-flow order
(``causes.py``): units starving on a dead input are ``upstream`` and no local rule claims
them; ``learning-rate`` and ``input-scale`` are judged over the whole model (``training.py``). ``suggest`` runs
the rules, merges the cards of one cause and action found at several sites into one card
listing them, ranks what they found — specific causes before generic advice, then severity,
then dead units explained, then network order — and returns JSON-ready dicts
(``Suggestion.to_dict()``), which is what ``ScanResult.suggestions`` holds and the JSON
report stores.

Rules that need only the result (dead share, saturation, depth trend, PReLU slopes,
"nothing wrong") also run on a result read back from JSON. Rules that read weights
(initialisation, bias, BatchNorm, SELU/LeCun, the selection guide) need the model and
return nothing without it. Where a weight rule cannot look at a site that has dead or
saturated units (its input comes after a residual add, say), a ``not-explained`` note
lists those sites and why.

No torch at import time (``deadrelu report`` reads suggestions without torch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .base import (BN_GAMMA_EPS, BN_STRONG_BETA, CAUSES, DEAD_SHARE_CRITICAL, DEAD_SHARE_WARNING, DEEP_CNN_CONVS,
                   DEEP_MLP_LINEARS, DEPTH_MIN_CORRELATION, DEPTH_MIN_RISE, DEPTH_MIN_SITES, EVIDENCE_LIST_MAX,
                   INIT_MIN_WEIGHTS, INIT_TOLERANCE, PRELU_COLLAPSED, SATURATION_CRITICAL, SATURATION_WARNING,
                   SCOPE_MODEL, SCOPE_SITE, SEVERITIES, STRONG_BIAS, VERY_DEEP_SITES, Feeder, RuleContext, Severity,
                   Suggestion, act, feeding_layers, layer_width, legacy_rule, merged_action, names_phrase, rule,
                   suggestion)
from .causes import rule_upstream, rule_zero_weights
from .training import rule_input_scale, rule_learning_rate
from .guide import rule_selection_guide
from .layers import cached_weights
from .results import (rule_dead_share, rule_depth_trend, rule_healthy, rule_negative_side, rule_prelu_slopes,
                      rule_saturation)
from .weights import classify_init, init_references, rule_batchnorm, rule_bias, rule_init, rule_selu

if TYPE_CHECKING:
    from torch import nn

    from ...result import ScanResult

Rule = Callable[[RuleContext], list[Suggestion]]

#: Rules in the order they run.
RULES: tuple[Rule, ...] = (rule_learning_rate, rule_input_scale, rule_upstream, rule_zero_weights, rule_dead_share,
                           rule_init, rule_bias, rule_batchnorm, rule_saturation, rule_negative_side,
                           rule_depth_trend, rule_prelu_slopes, rule_selu, rule_selection_guide)
#: Rules that read nothing but the result (they also run on a result read back from JSON).
RESULT_ONLY_RULES: tuple[Rule, ...] = (rule_dead_share, rule_saturation, rule_negative_side, rule_depth_trend,
                                       rule_prelu_slopes)
#: Rules that look for a cause in the layer feeding a site.
WEIGHT_RULES: tuple[Rule, ...] = (rule_init, rule_bias, rule_batchnorm, rule_zero_weights)
#: Cards merged into one when the same cause and action is found at several sites.
MERGED_IDS = ("bias-reset", "batchnorm-dead", "zero-weights")


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
        if not (site.never_fired or site.saturated) or site.name in explained:
            continue
        why = context.why_no_feeder(site)
        if why is not None:
            reasons[site.name] = why
    if not reasons:
        return []
    units = sum(site.never_fired + site.saturated for site in context.result.sites if site.name in reasons)
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
    line = act(list(reasons), f"look at these by hand: no single layer feeds them ({units} units)")
    return [suggestion("not-explained", "info", list(reasons), title, evidence, action, action_line=line)]


def _order_key(context: RuleContext) -> Callable[[tuple[int, Suggestion]], tuple[int, int, int, int, int]]:
    order = {site.name: k for k, site in enumerate(context.result.sites)}

    def key(item: tuple[int, Suggestion]) -> tuple[int, int, int, int, int]:
        position, found = item
        first = min((order.get(name, len(order)) for name in found.sites), default=len(order))
        return int(found.generic), Severity(found.severity).order, -found.units_explained, first, position
    return key


def merge(found: Sequence[Suggestion]) -> list[Suggestion]:
    """One card per cause and action: the site cards of ``MERGED_IDS`` found at several sites become
    one card listing the sites (evidence per site, the units summed, the code of each in turn)."""
    import dataclasses
    groups: dict[tuple[str, str | None], list[Suggestion]] = {}
    for item in found:
        if item.id in MERGED_IDS:
            groups.setdefault((item.id, item.cause), []).append(item)
    out: list[Suggestion] = []
    done: set[tuple[str, str | None]] = set()
    for item in found:
        key = (item.id, item.cause)
        if item.id not in MERGED_IDS or len(groups[key]) == 1:
            out.append(item)
            continue
        if key in done:
            continue
        done.add(key)
        cards = groups[key]
        units = sum(card.units_explained for card in cards)
        sites = [name for card in cards for name in card.sites]
        severity = min((Severity(card.severity) for card in cards), key=lambda s: s.order)
        first = cards[0]
        title = f"{len(sites)} sites, {units} units: {first.title}; and {len(cards) - 1} more site(s)"
        action = first.action + "\n- " + "\n- ".join(card.title for card in cards)
        imports = list(dict.fromkeys(line for card in cards for line in card.code.splitlines()
                                     if line.startswith("import ")))
        bodies = [("# " + card.sites[0] + "\n" if card.sites else "")
                  + "\n".join(line for line in card.code.splitlines() if not line.startswith("import "))
                  for card in cards if card.code]
        evidence = {"sites": len(sites), "units": units,
                    "per_site": {card.sites[0] if card.sites else str(k): dict(card.evidence)
                                 for k, card in enumerate(cards[:EVIDENCE_LIST_MAX])}}
        changed = sum(int(card.evidence.get("changed_count", card.evidence.get("channels_count",
                                                                                card.evidence.get("units_count", 0))))
                      for card in cards)
        line = act([name for card in cards for name in _subjects(card)], merged_action(first.id, changed, first.cause), noun="layers")
        out.append(dataclasses.replace(first, severity=severity, sites=tuple(sites), title=title, action=action,
                                       action_line=line,
                                       code="\n".join(imports + bodies), evidence=evidence, units_explained=units,
                                       destructive=any(card.destructive for card in cards),
                                       changes="; ".join(card.changes for card in cards if card.changes)))
    return out


def _subjects(card: Suggestion) -> list[str]:
    """The layers a mergeable card's action line names: the bias's layer, the BatchNorm, the zero rows' layers."""
    evidence = card.evidence
    for key in ("layer", "batchnorm"):
        if isinstance(evidence.get(key), str):
            return [evidence[key]]
    return [str(name) for name in evidence.get("layers") or card.sites]


def explains_tail(card: Suggestion, result: ScanResult) -> str:
    """`` → explains 19 of 53 dead at net.1``: what an action line's fix accounts for, of the units
    stuck at its sites ('' for generic advice, which explains none)."""
    from ..overall import problem_mask, problem_word
    if not card.units_explained or not card.sites or " → explains " in card.action_line:
        return ""
    names = set(card.sites)
    sites = [site for site in result.sites if site.name in names]
    stuck = sum(int(problem_mask(site).sum()) for site in sites)
    # Named as the verdict line names them: a leaky kind's never-active units keep a gradient.
    return f" → explains {card.units_explained} of {stuck} {problem_word(sites)} at {names_phrase(card.sites)}"


def _point_upstream_at_roots(ranked: list[Suggestion]) -> list[Suggestion]:
    """An upstream card's fix is its root site's: give it that card's code and rank."""
    import dataclasses
    out = []
    for item in ranked:
        root = item.evidence.get("root_site") if item.cause == "upstream" else None
        fix = next((other for other in ranked if root is not None and other.cause not in (None, "upstream")
                    and not other.generic and root in other.sites), None)
        if fix is None:
            out.append(item)
            continue
        out.append(dataclasses.replace(
            item, code=fix.code, title=item.title + f" (#{fix.rank})",
            action=item.action.replace("its own suggestion names the cause",
                                       f"#{fix.rank}: {fix.cause}", 1),
            action_line=item.action_line.replace("fix this site first", f"apply #{fix.rank} here first", 1),
            changes=fix.changes or item.changes, evidence={**item.evidence, "root_fix": fix.rank}))
    return out


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
    """Suggestions ordered by what to do first: every specific cause before generic advice (swap the
    activation, re-initialise, SELU), then severity, then dead units explained, then network order
    of their first site; ``rank`` set from 1."""
    import dataclasses
    from ..overall import MODEL_FAIL_SHARE, problem_mask, stuck_mask
    merged = merge(found)
    # A model with a third of its units stuck FAILs as a whole, whatever its sites' levels: a cause
    # explaining most of those units is what makes it FAIL, so it is critical.
    total = sum(int(problem_mask(site).sum()) for site in context.result.sites)
    units = sum(site.units for site in context.result.sites)
    stuck = sum(int(stuck_mask(site).sum()) for site in context.result.sites)
    if total and units and stuck >= MODEL_FAIL_SHARE * units - 1e-9:
        merged = [dataclasses.replace(s, severity=Severity.CRITICAL)
                  if s.cause and not s.generic and 2 * s.units_explained >= total else s for s in merged]
    ordered = [s for _, s in sorted(enumerate(merged), key=_order_key(context))]
    ranked = [dataclasses.replace(s, rank=k) for k, s in enumerate(ordered, 1)]
    ranked = _point_upstream_at_roots(_one_init_per_layer(ranked))
    return [dataclasses.replace(s, action_line=(s.action_line or s.title) + explains_tail(s, context.result))
            for s in ranked]


def suggest_objects(result: ScanResult, model: nn.Module | None = None, *,
                    input_bounds: tuple[float, float] | None = None, rules: Sequence[Callable[..., Any]] | None = None,
                    strict: bool = False, optimizer_state: Mapping[str, Any] | None = None) -> list[Suggestion]:
    """Like ``suggest``, as ``Suggestion`` objects."""
    if model is not None:
        import torch
        if isinstance(model, torch.jit.ScriptModule):
            # TorchScript modules expose no get_submodule/ordinary layers: judge from the result alone.
            model = None
    context = RuleContext(result=result, model=model, input_bounds=input_bounds,
                          optimizer_state=optimizer_state_of(optimizer_state))
    with cached_weights():  # each layer's weights read once, however many rules ask
        return _suggest_all(context, rules, strict)


def _suggest_all(context: RuleContext, rules: Sequence[Callable[..., Any]] | None, strict: bool) -> list[Suggestion]:
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
                                    "This is a deadrelu bug; the scan's numbers are unaffected. Please report it.",
                                    action_line=act("deadrelu", f"report this bug: rule {name} could not run")))
    if rules is None:
        found.extend(rule_not_explained(context, found))
    found.extend(rule_healthy(context, found))
    return rank(found, context)


def optimizer_state_of(optimizer: Any) -> Mapping[str, Any] | None:
    """An optimizer's ``state_dict()`` from the optimizer itself or the dict (None stays None)."""
    if optimizer is None or isinstance(optimizer, Mapping):
        return optimizer
    state_dict = getattr(optimizer, "state_dict", None)
    return state_dict() if callable(state_dict) else None


def suggest(result: ScanResult, model: nn.Module | None = None, *, input_bounds: tuple[float, float] | None = None,
            rules: Sequence[Callable[..., Any]] | None = None, strict: bool = False,
            optimizer_state: Any = None) -> list[dict[str, Any]]:
    """Fix suggestions for a scan, each with the evidence it rests on.

    Args:
        result: a finished scan (or one read back from JSON).
        model: the scanned model; without it the weight-based rules are skipped.
        input_bounds: the model input's range ``(low, high)`` (e.g. ``(0, 1)`` for images), which
            lets the bias rule prove that first-layer units cannot fire.
        rules: the rules to run (default ``RULES``); ``rule(context)`` or old-style ``rule(result, model)``.
        strict: re-raise a rule's exception instead of reporting it as an info suggestion.
        optimizer_state: the optimizer (or its ``state_dict()``) the model was trained with, when
            it was saved with it: the learning-rate rule reads its step sizes.

    Returns:
        Suggestions as plain dicts (``Suggestion.to_dict()``), ranked: specific causes before
        generic advice, then critical, warning, info, then most dead units explained, then network
        order. When no rule finds anything worth a warning, a ``healthy`` suggestion says so with
        the numbers.
    """
    return [found.to_dict() for found in suggest_objects(result, model, input_bounds=input_bounds, rules=rules,
                                                         strict=strict, optimizer_state=optimizer_state)]


__all__ = ["suggest", "suggest_objects", "rank", "merge", "optimizer_state_of", "CAUSES", "MERGED_IDS",
           "rule_learning_rate", "rule_input_scale", "rule_upstream", "rule_zero_weights", "Suggestion", "Severity", "RuleContext", "Feeder", "Rule", "rule",
           "suggestion", "RULES", "RESULT_ONLY_RULES", "WEIGHT_RULES", "feeding_layers", "layer_width",
           "init_references", "classify_init", "rule_dead_share", "rule_init", "rule_bias", "rule_batchnorm",
           "rule_saturation", "rule_negative_side", "rule_depth_trend", "rule_prelu_slopes", "rule_selu",
           "rule_selection_guide", "rule_healthy", "rule_not_explained", "SEVERITIES", "SCOPE_SITE", "SCOPE_MODEL",
           "DEAD_SHARE_WARNING", "DEAD_SHARE_CRITICAL", "SATURATION_WARNING", "SATURATION_CRITICAL", "INIT_TOLERANCE",
           "INIT_MIN_WEIGHTS", "STRONG_BIAS", "BN_STRONG_BETA", "BN_GAMMA_EPS", "DEPTH_MIN_SITES",
           "DEPTH_MIN_CORRELATION", "DEPTH_MIN_RISE", "PRELU_COLLAPSED", "DEEP_CNN_CONVS", "DEEP_MLP_LINEARS",
           "VERY_DEEP_SITES", "EVIDENCE_LIST_MAX"]
