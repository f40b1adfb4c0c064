"""The three verdicts (dead, saturated, dormant): defined in ``deadrelu.verdicts``, below the result.

``deadrelu.result`` rebuilds a saved report's verdicts from its statistics, so the definitions
sit under it; this module keeps the judge's name for them.
"""

from __future__ import annotations

from ..verdicts import SiteVerdict, dormancy_scores, judge_site

__all__ = ["SiteVerdict", "dormancy_scores", "judge_site"]
