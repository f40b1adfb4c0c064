"""Which torch deadrelu supports, checked from package metadata (torch is not imported).

The safety checks on model files (the ``.pt2`` archive audit, the weights-only pickle
guard, the graph op allow-list) lean on torch internals that change between releases, so
deadrelu runs only on the torch versions they were tested with. ``pyproject.toml``
declares the same lower bound; this check catches an older torch that got there anyway
(``pip install --no-deps``, a later downgrade) with one line instead of a wrong hint later.
"""

from __future__ import annotations

import re
from importlib import metadata

from .errors import UnsupportedTorchError

#: The oldest torch the test suite and the safety checks ran on (keep in step with pyproject.toml).
MINIMUM_TORCH = (2, 13)


def installed_torch() -> str | None:
    """The installed torch's version string (``"2.13.0+cpu"``), or None when none is installed."""
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def parse_release(version: str) -> tuple[int, ...]:
    """The leading release numbers of a version string (``"2.13.0+cpu"`` -> ``(2, 13, 0)``)."""
    match = re.match(r"(\d+(?:\.\d+)*)", version)
    return tuple(int(part) for part in match.group(1).split(".")) if match else ()


def check_torch(version: str | None = None) -> None:
    """Raise when the installed torch (or ``version``) is older than :data:`MINIMUM_TORCH`.

    Args:
        version: a version string to check instead of the installed torch's.

    Raises:
        UnsupportedTorchError: one line naming both versions, with the pip command as hint.
    """
    found = installed_torch() if version is None else version
    if found is None:
        return  # the import that needs torch says so itself
    release = parse_release(found)
    if release and release < MINIMUM_TORCH:
        wanted = ".".join(map(str, MINIMUM_TORCH))
        raise UnsupportedTorchError(
            f"deadrelu needs torch >= {wanted}; torch {found} is installed",
            hint=f"pip install 'torch>={wanted}' (the model-file safety checks are tested from {wanted} on)")
