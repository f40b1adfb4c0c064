"""The model's verdict — OK, WARN or FAIL — driven by its worst site and its share of stuck
units, and what each site's dead units mean for its kind.

A 0.9 % model-wide dead share can hide a half-dead layer, so the verdict is the worst
site's level (FAIL above half its units stuck, WARN above a fifth); a third of all units
getting no gradient is FAIL even when no site is over half (36 % dead, every layer near a
third, is a broken network, not a warning); FAIL too when a CI gate failed. ``summary.verdict`` in the JSON is this level (``ok``/``warn``/``fail``),
and ``deadrelu scan --fail-on`` turns it into the exit code. Units of a ReLU/ReLU6/Hardtanh site that
never activate get no gradient: they are *dead*. Units of a LeakyReLU/PReLU/ELU/SELU/…
site that never activate still have a gradient on the negative side: they are *never
active* and are counted apart, not as dead (they only weigh in when saturated at a floor,
where the gradient is ~0 too). Every renderer colours by these levels, so red means the
same thing everywhere.

No torch: renderers of a saved JSON report use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..kinds import NEGATIVE_SIDE_KINDS

if TYPE_CHECKING:
    from ..result import ScanResult, SiteResult

#: a site with more than this share of stuck units (dead or saturated) is WARN. Healthy trained models
#: (benchmarks/RESULTS_diagnosis.md: MLPs and CNNs on 8 seeds each) reach up to 16 % at their worst site.
WARN_SHARE = 0.20
#: ... and above this share FAIL
FAIL_SHARE = 0.50
#: a model with at least this share of all its units stuck (a third of the network gets no gradient) is FAIL
MODEL_FAIL_SHARE = 1 / 3


class Level(str, Enum):
    """How bad a site or a model is."""

    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"

    @property
    def order(self) -> int:
        return ("OK", "WARN", "FAIL").index(self.value)


def leaky(site: SiteResult) -> bool:
    """Whether the site's kind keeps a gradient for negative inputs (LeakyReLU, PReLU, ELU, ...)."""
    return site.kind in NEGATIVE_SIDE_KINDS


def stuck_mask(site: SiteResult) -> np.ndarray:
    """Units that get (almost) no gradient: dead units of a zero-gradient kind, and saturated units."""
    return site.dead_mask | site.verdict.saturated


def problem_mask(site: SiteResult) -> np.ndarray:
    """Units a cause can explain: never active (leaky kinds' too: they only use their negative side)
    or saturated. A suggestion's ``units_explained`` counts these."""
    return site.verdict.dead | site.verdict.saturated


def dead_mask(site: SiteResult) -> np.ndarray:
    """Dead units in ReLU's sense (never active, no gradient); none for leaky kinds, whose
    never-active units keep a gradient. Every table, gate, log and diff counts dead units with this."""
    return site.dead_mask


def dead_no_gradient(site: SiteResult) -> int:
    """Dead units in ReLU's sense: never active and no gradient (0 for leaky kinds)."""
    return site.dead


def never_active(site: SiteResult) -> int:
    """Units of a leaky kind that are never active but keep a gradient (not saturated at a floor)."""
    return site.never_active


def stuck_share(site: SiteResult) -> float:
    """Share of the site's units that are stuck (dead without gradient, or saturated)."""
    return float(stuck_mask(site).sum()) / site.units if site.units else 0.0


def site_level(site: SiteResult) -> Level:
    """FAIL above half the units stuck, WARN above a fifth, else OK."""
    share = stuck_share(site)
    if share > FAIL_SHARE:
        return Level.FAIL
    if share > WARN_SHARE:
        return Level.WARN
    return Level.OK


def flagged(site: SiteResult) -> bool:
    """A site worth showing: some unit dead, saturated, or never active."""
    return bool(site.never_fired or site.saturated)


def worst_sites(result: ScanResult) -> list[SiteResult]:
    """Sites worst first: by level (FAIL, WARN, OK), then by the share of units that never fire
    (dead, saturated, or never active on a leaky kind — one count for every table, plot and
    notebook view), then stuck share, then dormant share; network order breaks ties. A LeakyReLU
    head with 93 % of its units never active sorts above an OK site at 3 % dead."""
    ranked = list(enumerate(result.sites))
    ranked.sort(key=lambda pair: (-site_level(pair[1]).order,
                                  -(float(problem_mask(pair[1]).sum()) / max(pair[1].units, 1)),
                                  -stuck_share(pair[1]), -pair[1].dormant_ratio, pair[0]))
    return [site for _, site in ranked]


class FailOn(str, Enum):
    """Which verdict ``deadrelu scan --fail-on`` turns into exit code 1 (a failed gate always does)."""

    FAIL = "fail"
    WARN = "warn"
    NEVER = "never"

    def trips(self, level: Level) -> bool:
        """Whether a model at ``level`` fails under this setting."""
        if self is FailOn.NEVER:
            return False
        return level.order >= (Level.FAIL if self is FailOn.FAIL else Level.WARN).order


@dataclass(frozen=True)
class ModelVerdict:
    """The one-line verdict.

    Attributes:
        level: OK / WARN / FAIL.
        worst: the worst site (None when there are no sites).
        dead: dead units without gradient, over all sites.
        never_active: never-active units of leaky kinds (still have a gradient).
        saturated: saturated units.
        units: all units.
        sites: all sites.
        flagged_sites: sites with a dead, saturated or never-active unit.
        gate_failed: a CI gate was set and failed.
        unobserved: units with no finite observation (neither alive nor dead).
        dormant: dormant units (ReDo), over all sites.
    """

    level: Level
    worst: SiteResult | None
    dead: int
    never_active: int
    saturated: int
    units: int
    sites: int
    flagged_sites: int
    gate_failed: bool
    unobserved: int = 0

    dormant: int = 0

    @property
    def dead_ratio(self) -> float:
        return self.dead / self.units if self.units else 0.0

    @property
    def verdict(self) -> str:
        """``ok``, ``warn`` or ``fail``: the JSON's ``summary.verdict``."""
        return self.level.value.lower()

    def counts(self, number: Callable[[int], str] = str, leaky: str = "never active (leaky)") -> list[str]:
        """The model-wide counts every renderer quotes after the headline, in one order.

        Args:
            number: how to print a count (``"{:,}".format`` in HTML).
            leaky: the label of never-active units of leaky kinds.
        """
        phrases = [f"{number(self.dead)} of {number(self.units)} units dead ({self.dead_ratio:.1%})"]
        if self.saturated:
            phrases.append(f"{number(self.saturated)} saturated")
        if self.never_active:
            phrases.append(f"{number(self.never_active)} {leaky}")
        phrases.append(f"{number(self.dormant)} dormant")
        if self.unobserved:
            phrases.append(f"{number(self.unobserved)} units unobserved (no finite observation)")
        return phrases

    def headline(self, show: Callable[[str], str] = str) -> str:
        """``worst site layer3.4.relu#1: 32 of 64 dead (50.0%)`` or ``no dead or saturated unit``.

        Args:
            show: how to print the site name (renderers pass ``visible``)."""
        worst = self.worst
        if worst is None or not (stuck_mask(worst).any() or never_active(worst)):
            if self.unobserved:
                return f"no dead units among the {self.units - self.unobserved} observed"
            return "no dead or saturated unit"
        parts = []
        if dead_no_gradient(worst):
            parts.append(f"{dead_no_gradient(worst)} of {worst.units} dead ({dead_no_gradient(worst) / worst.units:.1%})")
        if worst.saturated:
            parts.append(f"{worst.saturated} of {worst.units} saturated")
        if never_active(worst):
            parts.append(f"{never_active(worst)} never active (leaky)" if parts else
                         f"{never_active(worst)} of {worst.units} never active (leaky: still has gradient)")
        return f"worst site {show(worst.name)}: " + ", ".join(parts)


#: how a verdict line names each cause
CAUSE_PHRASES = {"learning-rate": "learning rate too high", "bias": "negative biases hold units below zero",
                 "init": "weight initialisation", "input-scale": "input far off the training scale",
                 "upstream": "a dead earlier site starves later ones", "batchnorm": "BatchNorm β/γ below zero",
                 "zero-weights": "all-zero weight rows", "activation": "the activation kind"}


def headline_cause(result: ScanResult) -> dict | None:
    """The suggestion every verdict line names as the cause: the first-ranked one naming a specific
    cause at warning level or above (None: none does)."""
    for suggestion in result.suggestions:
        if suggestion.get("cause") and not suggestion.get("generic") and \
                suggestion.get("severity") in ("warning", "critical"):
            return suggestion
    return None


def problem_word(sites: Sequence[SiteResult]) -> str:
    """What the stuck units of ``sites`` are, as every line names them: ``dead``, ``never active``,
    ``saturated`` or a choice of them (``never active or saturated``); a leaky kind's never-active
    units keep a gradient and are never called dead."""
    parts = [word for word, count in (("dead", sum(site.dead for site in sites)),
                                      ("never active", sum(site.never_active for site in sites)),
                                      ("saturated", sum(site.saturated for site in sites))) if count]
    if not parts:
        return "dead"
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def cause_sentence(result: ScanResult) -> str | None:
    """``learning rate too high — explains 139 of 139 dead units (#1)``, or None without a headline cause."""
    top = headline_cause(result)
    if top is None:
        return None
    count = int(top.get("units_explained") or 0)
    total = sum(int(problem_mask(site).sum()) for site in result.sites)
    phrase = CAUSE_PHRASES.get(str(top["cause"]), str(top["cause"]))
    word = problem_word(result.sites)
    return phrase + (f" — explains {count} of {total} {word} units" if count else "") + f" (#{int(top.get('rank') or 1)})"


def overall(result: ScanResult) -> ModelVerdict:
    """The model's verdict: the worst site's level, FAIL if the gate failed.

    Args:
        result: the scan.

    Returns:
        The verdict with the counts the verdict line quotes.
    """
    ordered = worst_sites(result)
    level = max((site_level(site) for site in result.sites), key=lambda lv: lv.order, default=Level.OK)
    units = sum(site.units for site in result.sites)
    stuck = sum(int(stuck_mask(site).sum()) for site in result.sites)
    if units and stuck >= MODEL_FAIL_SHARE * units - 1e-9:
        level = Level.FAIL  # a third of the network gets no gradient
    gate_failed = result.gate is not None and not result.gate.passed
    unobserved = sum(site.unobserved for site in result.sites)
    if unobserved and level is Level.OK:
        level = Level.WARN  # health not seen is not health
    if gate_failed:
        level = Level.FAIL
    return ModelVerdict(level=level, worst=ordered[0] if ordered else None,
                        dead=sum(dead_no_gradient(site) for site in result.sites),
                        never_active=sum(never_active(site) for site in result.sites),
                        saturated=sum(site.saturated for site in result.sites),
                        units=sum(site.units for site in result.sites), sites=len(result.sites),
                        flagged_sites=sum(1 for site in result.sites if flagged(site)), gate_failed=gate_failed,
                        unobserved=unobserved, dormant=result.summary.dormant)


__all__ = ["Level", "FailOn", "ModelVerdict", "CAUSE_PHRASES", "headline_cause", "cause_sentence", "overall", "site_level", "stuck_mask", "problem_mask", "dead_mask", "stuck_share", "dead_no_gradient",
           "never_active", "problem_word", "leaky", "flagged", "worst_sites", "WARN_SHARE", "FAIL_SHARE", "MODEL_FAIL_SHARE"]
