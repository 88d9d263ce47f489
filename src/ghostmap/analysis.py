"""What a scan looks like: mean and maximum patterns, virtual images, the bright-field disk.

Small functions on scans and arrays; they read through :class:`ghostmap.io.Scan`, in
blocks of scan rows, so memory stays bounded whatever the file size.
"""

from __future__ import annotations

import logging

import numpy as np

from ghostmap.errors import GhostmapError
from ghostmap.io import Scan, as_scan, rows_per_block
from ghostmap.io.base import shape_text as _shape_text

logger = logging.getLogger(__name__)

__all__ = ["mean_and_max_pattern", "mean_pattern", "max_pattern", "virtual_image", "bright_field_mask", "describe"]


def _sample_rows(scan: Scan, max_patterns: int) -> np.ndarray:
    """Evenly spaced scan rows holding about ``max_patterns`` patterns in all."""
    rows, cols = scan.scan_shape
    n = min(rows, max(1, int(max_patterns) // cols))
    return np.unique(np.linspace(0, rows - 1, n).round().astype(int))


def mean_and_max_pattern(scan, max_patterns: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Mean (float64) and pixel-wise maximum patterns over an evenly strided subset of scan
    rows, in one pass: cheap on huge scans, exact when the subset covers every row.

    The sampled rows are summed side by side, one per core, each where it lies (a .npy's rows
    mapped, not copied); integer counts of up to 16 bits are summed in 32-bit integers, exact
    for a scan row, before they join the float64 total in row order, so the mean is the same
    to the last bit as summing in float64, in about half the time.
    """
    import os
    from concurrent.futures import ThreadPoolExecutor

    scan = as_scan(scan)
    cols = scan.scan_shape[1]
    small_ints = scan.dtype.kind in "iu" and scan.dtype.itemsize <= 2 and cols <= 2**15
    acc = (np.uint32 if scan.dtype.kind == "u" else np.int32) if small_ints else np.float64
    rows = _sample_rows(scan, max_patterns)

    def row_sum_and_max(row):
        with scan.mapped_rows(row, row + 1) as block:
            return block[0].sum(axis=0, dtype=acc), block[0].max(axis=0)

    total = np.zeros(scan.detector_shape, dtype=np.float64)
    maximum = None
    with ThreadPoolExecutor(max_workers=max(1, min(len(rows), os.cpu_count() or 1))) as pool:
        for row_sum, row_max in pool.map(row_sum_and_max, rows):  # in row order
            total += row_sum
            maximum = row_max if maximum is None else np.maximum(maximum, row_max)
    return total / (len(rows) * cols), maximum


def mean_pattern(scan, max_patterns: int = 4096) -> np.ndarray:
    """Mean diffraction pattern (float64) over an evenly strided subset of scan rows."""
    return mean_and_max_pattern(scan, max_patterns)[0]


def max_pattern(scan, max_patterns: int = 4096) -> np.ndarray:
    """Pixel-wise maximum pattern over an evenly strided subset of scan rows."""
    return mean_and_max_pattern(scan, max_patterns)[1]


def virtual_image(scan, mask: np.ndarray) -> np.ndarray:
    """Sum of each pattern inside a boolean detector mask, (rows, cols) float64.

    Streams over blocks of scan rows, so memory stays bounded whatever the scan size.
    """
    scan = as_scan(scan)
    mask = np.asarray(mask)
    if mask.shape != scan.detector_shape:
        raise GhostmapError(
            f"the detector mask has shape {_shape_text(mask.shape)} but the patterns of "
            f"{scan.source} are {_shape_text(scan.detector_shape)}"
        )
    mask = mask.astype(bool)
    image = np.zeros(scan.scan_shape, dtype=np.float64)
    if not mask.any():
        return image
    # only the mask's bounding box matters; integer sums stay exact and are faster
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    sub = mask[box]
    exact_int = scan.dtype.kind in "biu" and scan.dtype.itemsize <= 4
    total_type = np.int64 if exact_int else np.float64
    for start, block in scan.iter_rows(rows_per_block(scan, 64 * 2**20)):
        crop = block[:, :, box[0], box[1]]
        if not sub.all():
            crop = np.where(sub, crop, 0)
        image[start : start + block.shape[0]] = crop.sum(axis=(2, 3), dtype=total_type)
    return image


def _radial_profile(image: np.ndarray, center: tuple[float, float]) -> np.ndarray:
    """Mean intensity in 1-pixel-wide rings around ``center``."""
    rr, cc = np.indices(image.shape)
    radius = np.hypot(rr - center[0], cc - center[1]).round().astype(int)
    sums = np.bincount(radius.ravel(), weights=image.ravel())
    counts = np.bincount(radius.ravel())
    return sums / np.maximum(counts, 1)


def _half_radius(profile: np.ndarray, floor: float) -> tuple[float, float]:
    """Radius where the profile first falls half-way from ``floor`` to its peak, and that level."""
    peak_at = int(np.argmax(profile[: max(2, len(profile) // 4)]))
    half = floor + 0.5 * (profile[peak_at] - floor)
    below = np.flatnonzero(profile[peak_at:] < half)
    if below.size == 0:
        return float(len(profile) - 1), half
    r = peak_at + int(below[0])
    if r == 0:
        return 0.5, half
    # the crossing, interpolated between ring r-1 (above half) and ring r (below)
    above, under = profile[r - 1], profile[r]
    return (r - 1) + (above - half) / max(above - under, 1e-12), half


def bright_field_mask(mean: np.ndarray) -> np.ndarray:
    """Boolean disk over the central beam, found from the mean pattern.

    The central beam is taken as the brightest disk: the maximum of the smoothed
    pattern (a 3x3 median first removes hot pixels). Its radius is where the radial profile around that point falls half-way
    from the background to its peak. The centre is then refined as the centroid of the
    pixels above that level within the disk, which touching Bragg disks cannot reach.
    """
    from scipy import ndimage

    mean = np.nan_to_num(np.asarray(mean, dtype=np.float64))
    if mean.ndim != 2 or mean.size == 0:
        raise GhostmapError(f"the mean pattern has shape {_shape_text(mean.shape)}; it must be 2-D")
    mean = ndimage.median_filter(mean, size=3, mode="nearest")
    smoothed = ndimage.gaussian_filter(mean, sigma=max(1.0, min(mean.shape) / 64))
    center = np.unravel_index(int(np.argmax(smoothed)), mean.shape)
    floor = float(np.percentile(mean, 5))
    rr, cc = np.indices(mean.shape)
    for _ in range(3):
        radius, half = _half_radius(_radial_profile(mean, center), floor)
        bright = (np.hypot(rr - center[0], cc - center[1]) <= radius + 1) & (mean >= half)
        if not bright.any():
            break
        center = (float(rr[bright].mean()), float(cc[bright].mean()))
    radius, _ = _half_radius(_radial_profile(mean, center), floor)
    mask = np.hypot(rr - center[0], cc - center[1]) <= max(radius, 0.5)
    if not mask.any():
        mask[int(round(center[0])), int(round(center[1]))] = True
    return mask


def bright_field_index(scan) -> np.ndarray:
    """Flat detector indices of the bright-field disk, found once from the first scan row.

    What :func:`ghostmap.predict` sums into its bright-field image.

    Example
    -------
    >>> import ghostmap as gm
    >>> data, _ = gm.simulate_scan((2, 3), detector=32, seed=0)
    >>> bool(bright_field_index(data).size > 0)
    True
    """
    return bright_field_index_of(as_scan(scan).read_rows(0, 1)[0])


def bright_field_index_of(row: np.ndarray) -> np.ndarray:
    """:func:`bright_field_index` from one scan row's patterns (cols, det_row, det_col) already read.

    Example
    -------
    >>> import ghostmap as gm
    >>> data, _ = gm.simulate_scan((2, 3), detector=32, seed=0)
    >>> bool((bright_field_index_of(data[0]) == bright_field_index(data)).all())
    True
    """
    row = np.asarray(row)
    mean = row.reshape(row.shape[0], -1).mean(0, dtype=np.float64).reshape(row.shape[1:])
    return np.flatnonzero(bright_field_mask(mean))


def bright_field_index_of_block(block: np.ndarray) -> np.ndarray:
    """:func:`bright_field_index_of` the first scan row of a block (rows, cols, det_row, det_col):
    the finder a :class:`ghostmap.counts.RowReader` that starts at scan row 0 is given.

    Example
    -------
    >>> import ghostmap as gm
    >>> data, _ = gm.simulate_scan((2, 3), detector=32, seed=0)
    >>> bool((bright_field_index_of_block(data) == bright_field_index(data)).all())
    True
    """
    return bright_field_index_of(np.asarray(block)[0])


def describe(scan) -> dict:
    """A JSON-serialisable summary of a scan: where it is, its shape, type and size, and the
    format, reader and calibrations its reader found."""
    scan = as_scan(scan)
    return {
        "source": scan.source,
        "scan_shape": list(scan.scan_shape),
        "detector_shape": list(scan.detector_shape),
        "dtype": str(scan.dtype),
        "n_patterns": int(scan.n_patterns),
        "nbytes": int(scan.nbytes),
        "file_size": None if scan.file_size is None else int(scan.file_size),
        "format": scan.info.format,
        "reader": scan.info.reader,
        "calibrations": [list(c) for c in scan.info.calibrations],
    }
