"""The pieces every rule shares: the ``Suggestion`` record, ``Severity``, the ``RuleContext``
a rule reads, thresholds, and the one answer to "which layer feeds this site".

No torch at import time: rules that read weights import it inside.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence  # noqa: F401
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ...numbers import index_ranges
from .layers import fan_in, is_batchnorm, is_weight_layer, layer_width, weight_std

if TYPE_CHECKING:
    from torch import nn

    from ...result import ScanResult, SiteResult


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
#: depth trend: at least this many sites (fewer cannot show a trend), this rank correlation and this rise
DEPTH_MIN_SITES = 6
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


class Severity(str, Enum):
    """How urgent a suggestion is: ``critical`` (a site more than half dead or saturated),
    ``warning`` (a site over the 10 % thresholds, or a cause worth fixing), ``info``."""

    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"

    @property
    def order(self) -> int:
        return ("critical", "warning", "info").index(self.value)


SEVERITIES = tuple(severity.value for severity in Severity)

#: a suggestion about particular sites, or model-wide advice (architecture, learning rate)
SCOPE_SITE, SCOPE_MODEL = "site", "model"

#: why units died, as a suggestion's ``cause`` names it (docs/concepts.md, "Causes", has the evidence of each)
CAUSES = ("learning-rate", "bias", "init", "input-scale", "upstream", "batchnorm", "zero-weights", "activation")


@dataclass(frozen=True)
class Suggestion:
    """One fix suggestion with the evidence it rests on.

    Attributes:
        id: the rule's id (``bias-reset``, ``batchnorm-dead``...).
        severity: how urgent.
        sites: the site names it is about.
        title: one line saying what was found, with the numbers.
        evidence: JSON-ready numbers the title and action rest on.
        action: what to do and why (``- `` lines are a list).
        action_line: the one imperative line the terminal leads with, ruff-style: where, what to do,
            and (set by ``rank``) what it explains — ``net.0: reset 19 biases → explains 19 of 53 dead
            at net.1``. The title is its evidence, one ``--verbose`` away.
        code: a PyTorch snippet applying the fix to this model (module names as literals).
        units_explained: dead or saturated units whose *cause* this names (a bias, a BatchNorm
            channel); generic advice ("use LeakyReLU") explains none.
        destructive: applying ``code`` to a trained model discards what it learned
            (re-initialised weights, removed layers): retrain from scratch after.
        changes: what ``code`` changes, in one line.
        scope: ``"site"`` (about these sites) or ``"model"`` (model-wide advice).
        rank: position after ranking (1 = first), set by ``suggest``.
        cause: why the units died, one of ``CAUSES`` (None for notes: "nothing to fix", "not
            checked", a rule error).
        generic: advice that holds for any model of this kind (swap the activation, re-initialise,
            SELU): ranked after every specific cause, and shown by the terminal only with ``--verbose``
            when a specific cause was found.
    """

    id: str
    severity: Severity
    sites: tuple[str, ...]
    title: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    action: str = ""
    code: str = ""
    units_explained: int = 0
    destructive: bool = False
    changes: str = ""
    scope: str = SCOPE_SITE
    rank: int = 0
    cause: str | None = None
    generic: bool = False
    action_line: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The suggestion as JSON-ready data (the JSON report's ``suggestions`` entries)."""
        return {"id": self.id, "severity": Severity(self.severity).value, "sites": list(self.sites),
                "title": self.title, "action_line": self.action_line or self.title,
                "evidence": dict(self.evidence), "action": self.action,
                "code": self.code.strip("\n"), "units_explained": int(self.units_explained),
                "destructive": bool(self.destructive), "changes": self.changes, "scope": self.scope,
                "rank": int(self.rank), "cause": self.cause, "generic": bool(self.generic)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Suggestion:
        """A suggestion from ``to_dict()`` output (older reports lack the ranking keys: defaults)."""
        severity = str(data.get("severity", "info"))
        return cls(id=str(data.get("id", "")), severity=Severity(severity if severity in SEVERITIES else "info"),
                   sites=tuple(data.get("sites", ())), title=str(data.get("title", "")),
                   evidence=dict(data.get("evidence") or {}), action=str(data.get("action", "")),
                   code=str(data.get("code") or ""), units_explained=int(data.get("units_explained") or 0),
                   destructive=bool(data.get("destructive", False)), changes=str(data.get("changes") or ""),
                   scope=str(data.get("scope") or SCOPE_SITE), rank=int(data.get("rank") or 0),
                   cause=data.get("cause") if data.get("cause") in CAUSES else None,
                   generic=bool(data.get("generic", False)),
                   action_line=str(data.get("action_line") or ""))

    # Dict-style reads, so code written against the JSON shape (``s["id"]``) reads objects too.
    def __getitem__(self, key: str) -> Any:
        data = self.to_dict()
        if key not in data:
            raise KeyError(key)
        return data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)

    def keys(self) -> Iterator[str]:
        return iter(self.to_dict())


def suggestion(id: str, severity: str | Severity, sites: Iterable[str], title: str, evidence: dict[str, Any],
               action: str, code: str = "", *, explains: int = 0, destructive: bool = False, changes: str = "",
               scope: str = SCOPE_SITE, cause: str | None = None, generic: bool = False,
               action_line: str = "") -> Suggestion:
    """Build a ``Suggestion`` (the rules' shorthand; ``action_line`` is ``where: what to do``)."""
    if cause is not None and cause not in CAUSES:
        raise ValueError(f"unknown cause {cause!r}; causes: {', '.join(CAUSES)}")
    return Suggestion(id=id, severity=Severity(severity), sites=tuple(sites), title=title, evidence=evidence,
                      action=action, code=code.strip("\n"), units_explained=explains, destructive=destructive,
                      changes=changes, scope=scope, cause=cause, generic=generic, action_line=action_line)


def site_severity(site: SiteResult) -> Severity:
    """A cause found at a site is as urgent as the site's level: FAIL critical, WARN warning, OK info
    (a named cause for a few dead units under the thresholds is worth knowing, not a warning)."""
    from ..overall import Level, site_level
    return {Level.FAIL: Severity.CRITICAL, Level.WARN: Severity.WARNING}.get(site_level(site), Severity.INFO)


def model_severity(result: ScanResult, sites: Iterable[SiteResult], explained: int) -> Severity:
    """A model-wide cause is as urgent as its worst site, and critical when it explains most of the
    stuck units of a model with a third of its units stuck (FAIL as a whole)."""
    from ..overall import MODEL_FAIL_SHARE, problem_mask, stuck_mask
    worst = min((site_severity(site) for site in sites), key=lambda s: s.order, default=Severity.INFO)
    total = sum(int(problem_mask(site).sum()) for site in result.sites)
    units = sum(site.units for site in result.sites)
    stuck = sum(int(stuck_mask(site).sum()) for site in result.sites)
    if total and units and stuck >= MODEL_FAIL_SHARE * units - 1e-9 and explained >= 0.5 * total:
        return Severity.CRITICAL
    return worst


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


def _ranges(indices: list[int], noun: str = "channel", limit: int = 6) -> str:
    """``channels 0–31`` / ``channels 1, 4, 6`` / ``channel 3``: index runs as every report writes them."""
    return (f"{noun} " if len(indices) == 1 else f"{noun}s ") + index_ranges(indices, limit)


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


#: an action line lists the names it points at while they fit in this many characters (at least one)
NAMES_ROOM = 60


def names_phrase(names: Sequence[str], noun: str = "sites", room: int = NAMES_ROOM) -> str:
    """``net.1, net.3, net.5`` / ``layer1.0.relu and 4 more sites``: where an action line points, each
    name whole (never shortened); names past ``room`` characters are counted instead."""
    names = list(dict.fromkeys(names))
    shown: list[str] = []
    for name in names:
        if shown and len(", ".join([*shown, name])) > room:
            break
        shown.append(name)
    rest = len(names) - len(shown)
    return ", ".join(shown) + (f" and {rest} more {noun if rest > 1 else noun.rstrip('s')}" if rest else "")


def act(where: Sequence[str] | str, what: str, noun: str = "sites") -> str:
    """An action line's first half, ruff-style: ``where: what to do`` (imperative)."""
    subject = where if isinstance(where, str) else names_phrase(where, noun=noun)
    return f"{subject}: {what}" if subject else what


#: what the cards that ``merge`` joins tell you to do, by (id, cause), with the count of what they change
MERGED_ACTIONS = {("bias-reset", "bias"): "reset {count} negative biases to 0",
                  ("bias-reset", "init"): "re-initialise the incoming weights of {count} units",
                  ("batchnorm-dead", "batchnorm"): "reset β to 0 and γ to 1 on {count} channels",
                  ("zero-weights", "zero-weights"): "re-initialise {count} all-zero weight rows"}


def merged_action(id: str, count: int, cause: str | None) -> str:
    """The imperative half of a mergeable card's action line (``reset 19 negative biases to 0``)."""
    return MERGED_ACTIONS[(id, str(cause))].format(count=count)


def _module_counts(result: ScanResult) -> dict[str, int]:
    counts: dict[str, int] = {}
    for site in result.sites:
        if site.function is None:
            counts[site.module] = counts.get(site.module, 0) + 1
    return counts


def kind_label(kinds: Iterable[str]) -> str:
    """``ReLU``, ``ReLU6`` or ``ReLU/ReLU6``: advice names the activations it is about."""
    return "/".join(sorted(dict.fromkeys(kinds))) or "ReLU"


# -- looking at the model -----------------------------------------------------------------

def _layer_kinds() -> tuple[type, ...]:
    from torch import nn
    return (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
            nn.modules.instancenorm._InstanceNorm, nn.Embedding)


def _is_activation(module: nn.Module) -> bool:
    from ...kinds import spec_for_module
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


def _fan_in(layer: nn.Module) -> int:
    return fan_in(layer)


def _weight_std(layer: nn.Module) -> float:
    return weight_std(layer)


_is_weight_layer = is_weight_layer
_is_batchnorm = is_batchnorm


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



def leaf_order(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules without children, in registration order."""
    return [(name, module) for name, module in model.named_modules() if name and not list(module.children())]


def is_norm(layer: nn.Module) -> bool:
    """A normalisation layer, by isinstance (timm's ``BatchNormAct2d`` is a ``BatchNorm2d`` with children)."""
    from ...capturing.units import NORM_LAYERS
    return isinstance(layer, NORM_LAYERS)


@dataclass(frozen=True)
class Feeder:
    """The layer whose parameters decide a site's input.

    Attributes:
        name: its qualified module name.
        layer: the module.
        how: ``"output"`` / ``"enclosing"`` (from the capture's link) or ``"guessed"``
            (registration order, for results saved before links were recorded).
    """

    name: str
    layer: nn.Module
    how: str


@dataclass(frozen=True)
class RuleContext:
    """What every rule reads: the result, the model, the input range and the site→layer links.

    Attributes:
        result: the scan.
        model: the scanned model (None: only result-based rules can say anything).
        input_bounds: the model input's range ``(low, high)``, when the caller knows it.
        optimizer_state: the optimizer's ``state_dict()`` saved with the model (a checkpoint's
            ``optimizer`` entry), when there is one: the learning-rate rule reads its step sizes.
    """

    result: ScanResult
    model: nn.Module | None = None
    input_bounds: tuple[float, float] | None = None
    optimizer_state: Mapping[str, Any] | None = None
    _feeders: dict[str, tuple[Feeder | None, str | None]] = field(default_factory=dict, repr=False, compare=False)
    _memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per context (what several rules read: the upstream map, the optimizer summary)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def weight_layer(self, site: SiteResult) -> tuple[str, nn.Module] | None:
        """The Linear / Conv / Conv1D whose weight rows decide the site's pre-activation: the feeder
        itself, or the weight layer feeding the feeder when that is a BatchNorm (conv -> bn -> site).
        Found once per site and context (finding a norm's producer walks the model)."""
        def find() -> tuple[str, nn.Module] | None:
            feeder = self.feeder(site)
            if feeder is None or self.model is None:
                return None
            if is_weight_layer(feeder.layer):
                return feeder.name, feeder.layer
            if is_batchnorm(feeder.layer):
                from .layers import norm_producer
                return norm_producer(self.model, feeder.name)
            return None
        return self.memo(f"weight_layer:{site.name}", find)

    def input_site(self, site: SiteResult) -> SiteResult | None:
        """The site whose output is the input of ``site``'s weight layer: the nearest earlier site
        (network order) with as many units as that layer reads, or the site just before whose
        channels a flatten spread over that many inputs (conv features -> Linear); None when no
        earlier site fits (the layer reads the model's input, or a residual sum)."""
        found = self.weight_layer(site)
        if found is None:
            return None
        from .layers import in_width
        width = in_width(found[1])
        sites = list(self.result.sites)
        position = next(k for k, other in enumerate(sites) if other is site)
        for earlier in reversed(sites[:position]):
            if earlier.units and earlier.units == width:
                return earlier
        if position and width and sites[position - 1].units and width % sites[position - 1].units == 0:
            return sites[position - 1]
        return None

    @property
    def channel_granularity(self) -> bool:
        return getattr(self.result.settings.granularity, "value", self.result.settings.granularity) == "channel"

    @property
    def linked(self) -> bool:
        """Whether the capture recorded which layer produced each site's input."""
        return any(site.producer is not None for site in self.result.sites)

    def module(self, name: str) -> nn.Module | None:
        """The model's submodule ``name`` (None without a model or when absent)."""
        if self.model is None:
            return None
        try:
            return self.model.get_submodule(name)
        except AttributeError:
            return None

    def feeder(self, site: SiteResult) -> Feeder | None:
        """The layer that feeds ``site`` directly, or None (``why_no_feeder`` says why).

        Trusted only when the capture saw the site's input *be* that layer's output (or the
        activation sits inside that norm layer), the layer's width equals the site's units,
        and units are channels. A residual add or concat in between means no single layer's
        parameters decide the input, so no weight rule blames one.
        """
        if site.name not in self._feeders:
            self._feeders[site.name] = self._find_feeder(site)
        return self._feeders[site.name][0]

    def why_no_feeder(self, site: SiteResult) -> str | None:
        """Why ``feeder(site)`` is None, in words (None when it is not)."""
        self.feeder(site)
        return self._feeders[site.name][1]

    def _find_feeder(self, site: SiteResult) -> tuple[Feeder | None, str | None]:
        if self.model is None:
            return None, "the model is needed to read weights"
        if not self.channel_granularity:
            return None, "position granularity: units are not a layer's outputs"
        link = site.producer
        if link is None and not self.linked:
            return self._guess(site)
        if link is None:
            return None, "its input was not traced (site first ran after the first batch, or an exported graph)"
        if not link.direct:
            if link.layer is None:
                return None, "no Linear/Conv/Norm layer ran before it"
            from ...kinds import KINDS
            if site.kind in KINDS and KINDS[site.kind].family == "gated":
                return None, (f"a gated product act(gate) × up ({link.layer} the up projection): a unit is 0 where "
                              "either factor is; the gate's own site shows the gate's causes")
            return None, f"an add, concat or other op comes after {link.layer} (a residual connection?)"
        layer = self.module(link.layer or "")
        if layer is None:
            return None, f"layer {link.layer} is not in the model"
        width = layer_width(layer)
        if width != site.units:
            return None, f"{link.layer} has {width} outputs, the site {site.units} units"
        return Feeder(str(link.layer), layer, link.how), None

    def _guess(self, site: SiteResult) -> tuple[Feeder | None, str | None]:
        """No links in the result (saved by an older deadrelu): registration order, single-call modules only."""
        if site.function is not None or not site.module or _module_counts(self.result).get(site.module) != 1:
            return None, "not traced, and a reused or functional activation has no single feeding layer"
        found = feeding_layers(self.model).get(site.module) if self.model is not None else None
        if found is None or layer_width(found[1]) != site.units:
            return None, "not traced, and no layer registered before it has its width"
        return Feeder(found[0], found[1], "guessed"), None


def legacy_rule(rule: Callable[..., Any]) -> bool:
    """Whether ``rule`` is an old-style ``rule(result, model)`` (not a ``rule(context)``)."""
    return not getattr(rule, "takes_context", False)


def rule(function: Callable[[RuleContext], list[Suggestion]]) -> Callable[[RuleContext], list[Suggestion]]:
    """Mark a function as a rule: ``rule(context) -> list[Suggestion]``."""
    function.takes_context = True  # type: ignore[attr-defined]
    return function
