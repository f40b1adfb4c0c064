"""Capture: find activation sites, own hook lifetime, hand tensors to the accumulators."""

from .sites import ActivationCapture, SiteRecord, resolve_unit_dim

__all__ = ["ActivationCapture", "SiteRecord", "resolve_unit_dim"]
