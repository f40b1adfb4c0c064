"""Capturing: find activation sites, own hook lifetime, hand tensors to the accumulators.

The public entry is ``deadrelu.capture(model)`` (``capturing.session.capture``), a plain
function: ``with deadrelu.capture(model) as cap: ...; cap.result()``. The package is named
``capturing`` so that the function and the package never share a name. How the parts fit
is written down in ``capturing.contract``.
"""

from __future__ import annotations

from ..torch_support import check_torch

check_torch()  # before any torch-dependent module of the package is imported

from .contract import Capture
from .hooks import ActivationCapture
from .registry import SiteRecord
from .session import CaptureSession, capture, capture_for
from .units import resolve_unit_dim

__all__ = ["ActivationCapture", "Capture", "CaptureSession", "SiteRecord", "capture", "capture_for",
           "resolve_unit_dim"]
