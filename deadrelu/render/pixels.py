"""Pictures a report embeds without matplotlib: a unit map written as a tiny PNG straight
from numpy (one pixel per unit), an inline-SVG histogram of active rates, data: URIs.

Split from ``render/html.py`` so the page builder stays readable; ``render.html`` re-exports
``png_rgb``, ``unit_map_png`` and ``histogram_svg``.
"""

from __future__ import annotations

import base64
import math
import struct
import zlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..result import SiteResult

#: unit map: at most this many columns
MAP_MAX_COLUMNS = 256


def png_rgb(pixels: np.ndarray) -> bytes:
    """Encode an ``(height, width, 3)`` uint8 array as PNG bytes (no matplotlib needed)."""
    height, width, _ = pixels.shape
    rows = np.concatenate([np.zeros((height, 1), dtype=np.uint8), pixels.reshape(height, width * 3)], axis=1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
            + chunk(b"IEND", b""))


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


_LUT: np.ndarray | None = None


def _viridis_lut() -> np.ndarray:
    global _LUT
    if _LUT is None:
        from matplotlib import colormaps
        _LUT = (colormaps["viridis"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)
    return _LUT


def _hex_rgb(color: str) -> np.ndarray:
    return np.array([int(color[k:k + 2], 16) for k in (1, 3, 5)], dtype=np.uint8)


def unit_map_png(site: SiteResult) -> tuple[bytes, int, int]:
    """A site's units as pixels (viridis by active rate; dead red, saturated orange, unobserved grey;
    an ELU/SELU/CELU unit at its floor is orange even though it is dead too).

    Returns:
        PNG bytes, columns and rows (unit ``i`` is at row ``i // columns``).
    """
    from .plots import DEAD_COLOR, SATURATED_COLOR, UNOBSERVED_COLOR, saturated_mark, unit_grid
    rows, columns = unit_grid(site.units)
    if columns > MAP_MAX_COLUMNS:
        columns = MAP_MAX_COLUMNS
        rows = math.ceil(site.units / columns)
    cells = rows * columns
    colors = np.empty((cells, 3), dtype=np.uint8)
    colors[:] = _hex_rgb("#ffffff")
    rates = site.stats.active_rate
    observed = np.isfinite(rates)
    index = np.clip(np.nan_to_num(rates, nan=0.0) * 255, 0, 255).astype(int)
    unit_colors = _viridis_lut()[index]
    unit_colors[~observed] = _hex_rgb(UNOBSERVED_COLOR)
    unit_colors[site.verdict.dead] = _hex_rgb(DEAD_COLOR)
    unit_colors[saturated_mark(site)] = _hex_rgb(SATURATED_COLOR)
    colors[: site.units] = unit_colors
    return png_rgb(colors.reshape(rows, columns, 3)), columns, rows


def histogram_svg(site: SiteResult, width: int = 300, height: int = 96) -> str:
    """An inline SVG bar chart of the site's per-unit active rates (dead units in their own red bar)."""
    from .plots import DEAD_COLOR, RATE_BINS, rate_histogram
    counts = rate_histogram(site.stats.active_rate)
    shares = counts / max(site.units, 1)
    top = max(float(shares.max()), 1e-9)
    left, bottom, plot_h = 34, 16, height - 30
    bar_w = (width - left - 6) / (RATE_BINS + 1.5)
    bars = []
    for k, share in enumerate(shares):
        x = left + (k + (0.5 if k else 0)) * bar_w
        h = plot_h * float(share) / top
        color = DEAD_COLOR if k == 0 else "#3b6ea8"
        bars.append(f'<rect x="{x:.1f}" y="{bottom + plot_h - h:.1f}" width="{bar_w * 0.9:.1f}" '
                    f'height="{h:.1f}" fill="{color}"><title>{_bin_label(k)}: {int(counts[k])} units</title></rect>')
    axis_y = bottom + plot_h
    return (f'<svg class="hist" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="histogram of per-unit active rates">'
            f'<line x1="{left}" y1="{axis_y}" x2="{width - 4}" y2="{axis_y}" stroke="#888"/>'
            f'<text x="{left - 4}" y="{bottom + 4}" text-anchor="end">{top:.0%}</text>'
            f'<text x="{left - 4}" y="{axis_y}" text-anchor="end">0</text>'
            + "".join(bars) +
            f'<text x="{left + bar_w * 0.45:.1f}" y="{height - 2}" text-anchor="middle">dead</text>'
            f'<text x="{width - 6}" y="{height - 2}" text-anchor="end">active rate 1</text></svg>')


def _bin_label(k: int) -> str:
    from .plots import RATE_BINS
    if k == 0:
        return "never active (dead)"
    low, high = (k - 1) / RATE_BINS, k / RATE_BINS
    return f"active rate {low:.2f}–{high:.2f}"


__all__ = ["png_rgb", "unit_map_png", "histogram_svg", "MAP_MAX_COLUMNS"]
