"""deadrelu: find dead, saturated and dormant ReLU-family units in a PyTorch model, on your data.

    >>> import deadrelu
    >>> result = deadrelu.scan(model, data)          # doctest: +SKIP
    >>> result = deadrelu.scan("model_dir", "prompts.txt")   # any model and data the CLI reads
    >>> result.to_frame()                            # one row per activation site
    >>> deadrelu.check_gate(result, max_dead_ratio=0.1).passed

Names are imported on first use (PEP 562), so ``import deadrelu`` is cheap and the parts
that only read results (``ScanResult.from_json``, the renderers, ``deadrelu report``)
never import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> module that defines it
_LAZY: dict[str, str] = {
    "scan": "deadrelu.scanning",
    "capture": "deadrelu.capturing.session",
    "Monitor": "deadrelu.monitor",
    "CaptureSession": "deadrelu.capturing.session",
    "check_gate": "deadrelu.judge.gate",
    "GateOutcome": "deadrelu.judge.gate",
    "load_model": "deadrelu.load.readers",
    "load_data": "deadrelu.load.data",
    "load_text": "deadrelu.load.huggingface",
    "Inputs": "deadrelu.load.spec",
    "Feeding": "deadrelu.load.spec",
    "open_inputs": "deadrelu.load.sources",
    "Opened": "deadrelu.load.sources",
    "fix": "deadrelu.repair.fixing",
    "Fixed": "deadrelu.repair.fixing",
    "write_ci_reports": "deadrelu.render.ci",
    "ScanResult": "deadrelu.result",
    "SiteResult": "deadrelu.result",
    "Summary": "deadrelu.result",
    "SiteStats": "deadrelu.unitstats",
    "ScanSettings": "deadrelu.settings",
    "Thresholds": "deadrelu.settings",
    "Granularity": "deadrelu.settings",
    "build_settings": "deadrelu.settings",
    "write_reports": "deadrelu.render.reports",
    "ReportTargets": "deadrelu.render.reports",
    "DeadReluError": "deadrelu.errors",
    "ModelLoadError": "deadrelu.errors",
    "UnsafePickleError": "deadrelu.errors",
    "DataLoadError": "deadrelu.errors",
    "ConfigError": "deadrelu.errors",
    "ForwardError": "deadrelu.errors",
    "CaptureError": "deadrelu.errors",
    "OutputError": "deadrelu.errors",
    "prune": "deadrelu.repair", "recycle": "deadrelu.repair", "reinit": "deadrelu.repair",
    "swap_activations": "deadrelu.repair", "RepairError": "deadrelu.repair", "RepairRefused": "deadrelu.repair",
    "ResultFormatError": "deadrelu.errors",
    # the types that signatures and docstrings hand to users
    "InputLink": "deadrelu.links",
    "SiteVerdict": "deadrelu.verdicts", "GateViolation": "deadrelu.verdicts",
    "GateLimits": "deadrelu.judge.gate",
    "Suggestion": "deadrelu.judge.suggestions", "suggest": "deadrelu.judge.suggestions",
    "LoadedModel": "deadrelu.load", "DataStream": "deadrelu.load", "as_stream": "deadrelu.load",
    "merge_results": "deadrelu.merge", "MergeError": "deadrelu.merge",
    "diff": "deadrelu.compare", "check_diff_gate": "deadrelu.compare", "DiffResult": "deadrelu.compare",
    "DiffGate": "deadrelu.compare", "IncompatibleResultsError": "deadrelu.compare",
    "read_log": "deadrelu.history", "history_frame": "deadrelu.history",
    "PruneReport": "deadrelu.repair", "RecycleReport": "deadrelu.repair", "ReinitReport": "deadrelu.repair",
    "SwapReport": "deadrelu.repair",
    "NonFinitePolicy": "deadrelu.settings", "CompileMode": "deadrelu.settings", "InputDtype": "deadrelu.settings",
    "UnsupportedTorchError": "deadrelu.errors",
    # optional integrations' package (adapters import their library only when a logger is made)
    "loggers": "deadrelu.loggers",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover
    from . import loggers
    from .capturing.session import CaptureSession, capture
    from .errors import (CaptureError, ConfigError, DataLoadError, DeadReluError, ForwardError, ModelLoadError,
                         OutputError, ResultFormatError, UnsafePickleError)
    from .judge.gate import GateOutcome, check_gate
    from .load.data import load_data
    from .load.huggingface import load_text
    from .load.readers import load_model
    from .load.sources import Opened, open_inputs
    from .load.spec import Feeding, Inputs
    from .monitor import Monitor
    from .render.ci import write_ci_reports
    from .render.reports import ReportTargets, write_reports
    from .repair import RepairError, RepairRefused, prune, recycle, reinit, swap_activations
    from .repair.fixing import Fixed, fix
    from .result import ScanResult, SiteResult, Summary
    from .scanning import scan
    from .settings import Granularity, ScanSettings, Thresholds, build_settings
    from .unitstats import SiteStats
    # (the types signatures hand to users; mirrors the second half of _LAZY)
    from .compare import DiffGate, DiffResult, IncompatibleResultsError, check_diff_gate, diff
    from .errors import UnsupportedTorchError
    from .history import history_frame, read_log
    from .judge.gate import GateLimits
    from .judge.suggestions import Suggestion, suggest
    from .links import InputLink
    from .load import DataStream, LoadedModel, as_stream
    from .merge import MergeError, merge_results
    from .repair import PruneReport, RecycleReport, ReinitReport, SwapReport
    from .settings import CompileMode, InputDtype, NonFinitePolicy
    from .verdicts import GateViolation, SiteVerdict


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'deadrelu' has no attribute {name!r}")
    # deadrelu.loggers is the package itself (its loggers are its attributes).
    value = importlib.import_module(module) if name == "loggers" else getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
