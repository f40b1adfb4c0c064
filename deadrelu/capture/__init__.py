"""Capture: find activation sites, own hook lifetime, hand tensors to the accumulators.

``deadrelu.capture`` is this package, and calling it opens a capture session
(``with deadrelu.capture(model) as cap: ...``, see ``capture.session``): the package's
module type is callable so that the public mode and the package that implements it
share one name.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from ..torch_support import check_torch

check_torch()  # before any torch-dependent module of the package is imported

from .session import CaptureSession, capture, capture_for
from .sites import ActivationCapture, SiteRecord
from .units import resolve_unit_dim


class _CallableModule(types.ModuleType):
    """``deadrelu.capture(model, ...)`` is ``deadrelu.capture.session.capture(model, ...)``."""

    def __call__(self, model: Any, **kwargs: Any) -> CaptureSession:
        return capture(model, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["ActivationCapture", "CaptureSession", "SiteRecord", "capture", "capture_for", "resolve_unit_dim"]
