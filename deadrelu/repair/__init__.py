"""From diagnosis to repair: prune dead units exactly, recycle them (ReDo), swap activations, re-initialise.

Every operation reads a ``ScanResult``, changes a model, can check the change on the
scanned data (in eval mode, against a snapshot of the model as given), rescans it, and
returns what it changed as frozen data (``to_dict()``). A change that fails its check or
makes the model worse is undone and refused (``RepairRefused``) unless forced.
"""

from __future__ import annotations

from .prune import exact_zero_units, prune
from .recycle import recycle, reinit
from .report import (Effect, HeldOut, OutputCheck, PruneReport, RecycleReport, ReinitReport, RepairError,
                     RepairRefused, SiteChange, SiteDelta, Swap, SwapReport)
from .swap import swap_activations
from .verify import compare_outputs, firing, scan_deltas

__all__ = ["prune", "recycle", "reinit", "swap_activations", "exact_zero_units", "compare_outputs", "scan_deltas",
           "firing", "SiteDelta", "OutputCheck", "PruneReport", "RecycleReport", "ReinitReport", "SiteChange",
           "Swap", "SwapReport", "RepairError", "RepairRefused", "Effect", "HeldOut"]
