"""Images the label app serves, rendered on the server as PNG.

A diffraction pattern is shown with percentile clipping and then a linear, gamma or log
stretch, so that the faint ghost disks next to the bright Bragg disks can be seen; the
overview (virtual bright field) and the preview maps are one pixel per probe position.
"""

from __future__ import annotations

import io
from functools import cache

import numpy as np
from PIL import Image

#: Stretches a pattern can be shown with.
SCALES = ("log", "gamma", "linear")
#: Colour maps a pattern can be shown with (matplotlib names).
COLOUR_MAPS = ("magma", "gray", "viridis", "inferno")
#: How strongly the log stretch lifts faint intensities: log(1 + K v) / log(1 + K).
LOG_STRENGTH = 100.0


@cache
def _lut(name: str) -> np.ndarray:
    import matplotlib

    cmap = matplotlib.colormaps[name]
    return np.round(cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)


def stretch(image: np.ndarray, lo: float = 0.0, hi: float = 100.0, scale: str = "linear",
            gamma: float = 0.5) -> np.ndarray:
    """``image`` clipped to its ``lo``..``hi`` percentiles, mapped to 0..1 and stretched."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}")
    values = np.nan_to_num(np.asarray(image, dtype=np.float64))
    low, high = np.percentile(values, [lo, hi])
    if not high > low:
        high = low + 1.0
    v = np.clip((values - low) / (high - low), 0.0, 1.0)
    if scale == "gamma":
        v = v ** gamma
    elif scale == "log":
        v = np.log1p(LOG_STRENGTH * v) / np.log1p(LOG_STRENGTH)
    return v


def png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an (h, w, 3) uint8 image (fast, lightly compressed)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB").save(buf, format="png", compress_level=1)
    return buf.getvalue()


def colour_png(values01: np.ndarray, cmap: str = "gray") -> bytes:
    """PNG of values in 0..1 through a colour map."""
    if cmap not in COLOUR_MAPS:
        raise ValueError(f"unknown colour map {cmap!r}")
    index = np.clip(np.round(np.asarray(values01) * 255), 0, 255).astype(np.uint8)
    return png(_lut(cmap)[index])


def hex_colour(rgb) -> str:
    """'#rrggbb' from an RGB triple in 0..1."""
    return "#" + "".join(f"{int(round(float(c) * 255)):02x}" for c in rgb)
