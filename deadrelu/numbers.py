"""Numbers written one way by every command and report.

Unit indices as runs (``0–255``, ``3, 5–6, 11``); ratios as percentages (``23.2%``), with
as many decimals as it takes for a value and its limit to read differently (``5.01% > 5.0%``,
never ``5.0% > 5.0%``). Torch-free and import-free, so the judge, the renderers and the
JSON-only commands share it.
"""

from __future__ import annotations

from collections.abc import Iterable


def index_runs(indices: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted, de-duplicated indices as inclusive ``(first, last)`` runs of consecutive numbers."""
    runs: list[tuple[int, int]] = []
    for index in sorted(set(int(i) for i in indices)):
        if runs and index == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs


def index_ranges(indices: Iterable[int], limit: int | None = None) -> str:
    """``0–255`` / ``3, 5–6, 11`` / ``3, 5–6, … (40 in all)``: unit indices as compact runs.

    Args:
        indices: unit indices (any order; repeats count once).
        limit: show at most this many runs (None: all); the rest is counted.

    Returns:
        The runs joined with ``, `` (an en dash inside a run), ``"none"`` for no index.
    """
    values = sorted(set(int(i) for i in indices))
    runs = index_runs(values)
    if not runs:
        return "none"
    shown = runs if limit is None else runs[:limit]
    text = ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in shown)
    return text + (f", … ({len(values)} in all)" if len(shown) < len(runs) else "")


def percent(ratio: float) -> str:
    """A ratio as the percentage every report writes: ``0.2321`` → ``23.2%``."""
    return f"{ratio:.1%}"


def percents_apart(value: float, limit: float) -> tuple[str, str]:
    """``value`` and ``limit`` as percentages with one decimal, or more when one would read them as equal.

    Args:
        value: the measured ratio.
        limit: the ratio it is compared with.

    Returns:
        The two percentages, e.g. ``("23.2%", "5.0%")`` or ``("5.01%", "5.00%")``.
    """
    for decimals in range(1, 7):
        shown = f"{value:.{decimals}%}", f"{limit:.{decimals}%}"
        if shown[0] != shown[1] or value == limit:
            return shown
    return f"{value:%}", f"{limit:%}"


def above_limit(value: float, limit: float) -> str:
    """``23.2% > limit 5.0%``: a ratio that broke its limit, as every gate line writes it."""
    shown, allowed = percents_apart(value, limit)
    return f"{shown} > limit {allowed}"


__all__ = ["index_runs", "index_ranges", "percent", "percents_apart", "above_limit"]
