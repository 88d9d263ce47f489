"""Detector defects found from a scan's mean and maximum patterns (NumPy and SciPy only).

Used by the network's preprocessing (:mod:`ghostmap.preprocessing`) and by the conventional
baselines, which must not pay for importing PyTorch.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi


def find_bad_pixels(mean: np.ndarray, maximum: np.ndarray, hot_ratio: float = 10.0) -> list[tuple[int, int]]:
    """Hot pixels and dead pixels/columns from a scan's mean and maximum patterns.

    Hot: the mean count is ``hot_ratio`` times above the local 5 x 5 median (plus one count),
    which real features (disks several pixels wide) never are. Dead: never counted
    anything although the neighbourhood did.
    """
    mean = np.asarray(mean, dtype=np.float64)
    maximum = np.asarray(maximum, dtype=np.float64)
    local = ndi.median_filter(mean, size=5, mode="nearest")
    # a dead column makes its own neighbourhood median small; look sideways for it
    side = np.maximum(ndi.shift(local, (0, 2), order=0, mode="nearest"), ndi.shift(local, (0, -2), order=0, mode="nearest"))
    hot = mean > hot_ratio * (local + 1.0)
    dead = (maximum <= 0) & (np.maximum(local, side) > 0.05)
    rows, cols = np.nonzero(hot | dead)
    return [(int(r), int(c)) for r, c in zip(rows, cols)]
