"""deadrelu: find dead, saturated and dormant ReLU-family units in a PyTorch model, on your data.

    >>> import deadrelu
    >>> result = deadrelu.scan(model, data)          # doctest: +SKIP
    >>> result.to_frame()                            # one row per activation site
    >>> deadrelu.check_gate(result, max_dead_ratio=0.1).passed
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (CaptureError, ConfigError, DataLoadError, DeadReluError, ForwardError, ModelLoadError,
                     OutputError, UnsafePickleError)
from .judge.gate import GateOutcome, check_gate
from .load import load_data, load_model
from .repair import RepairError, prune, recycle, reinit, swap_activations
from .result import ScanResult, SiteResult, Summary
from .scan import scan
from .settings import Granularity, ScanSettings, Thresholds, build_settings

__all__ = [
    "__version__", "scan", "check_gate", "load_model", "load_data", "ScanResult", "SiteResult", "Summary",
    "GateOutcome", "ScanSettings", "Thresholds", "Granularity", "build_settings", "DeadReluError",
    "ModelLoadError", "UnsafePickleError", "DataLoadError", "ConfigError", "ForwardError", "CaptureError",
    "OutputError",
    "prune", "recycle", "reinit", "swap_activations", "RepairError",
]
