"""Re-judging a finished result with other thresholds (no rescan): ``ScanResult.rejudged`` delegates here."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ..result import Summary
from ..verdicts import judge_site
from .suggestions import suggest

if TYPE_CHECKING:
    from ..result import ScanResult


def rejudge(result: ScanResult, model: Any = None, **thresholds: float) -> ScanResult:
    """The same statistics judged with other thresholds.

    Verdicts, the summary and the suggestions are recomputed (suggestions quote dead
    counts, so they depend on the thresholds); the gate outcome is dropped.

    Args:
        result: a finished scan (or one read back from JSON).
        model: the scanned model, so the weight-based suggestion rules run again too;
            without it only the rules that need nothing but the result run.
        **thresholds: ``dead_threshold``, ``tau``, ``saturation``, ``saturation_rtol``.

    Returns:
        A new result; ``result`` is left as it was.
    """
    new = dataclasses.replace(result.settings.thresholds, **thresholds)
    sites = [dataclasses.replace(site, verdict=judge_site(site.stats, site.saturation, new)) for site in result.sites]
    judged = dataclasses.replace(result, sites=tuple(sites), summary=Summary.of(sites),
                                 settings=dataclasses.replace(result.settings, thresholds=new), gate=None)
    return judged.with_suggestions(suggest(judged, model))
