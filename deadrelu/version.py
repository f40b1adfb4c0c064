"""The package version, readable without importing anything heavy."""

from __future__ import annotations


def version() -> str:
    """deadrelu's version string."""
    from . import __version__
    return __version__
