"""Conventional baselines to set beside the CNN: offset virtual dark field, and label-free clustering.

**Offset virtual dark field** (``method='vdf'``, :func:`vdf_baseline`) is the analysis the paper's
Figure 5b compares the CNN against (there done by hand in py4DSTEM). Steps:

1. The scan's mean and maximum patterns (an evenly strided subset of rows) give the detector's
   bad pixels (:func:`ghostmap.preprocessing.find_bad_pixels`), which are left out of every sum.
2. :func:`find_lattice` finds the Bragg lattice in the mean pattern, without any labels or
   ground truth: the central disk (centre and radius) from :func:`ghostmap.reading.bright_field_mask`,
   the two shortest non-collinear lattice vectors from the peaks of the autocorrelation of the
   high-pass-filtered mean pattern, refined on the peaks at two and three lattice spacings.
   The first axis ``a1`` is the one nearer detector x (columns), the second ``a2`` nearer detector y.
3. :func:`ghost_apertures` places a small circular aperture (radius: the central disk's, since a
   ghost disk has the probe's convergence angle; or ``radius``) halfway between every pair of
   neighbouring Bragg disks: at ``c + (i + 1/2) a1 + j a2`` for the *horizontal* ghosts and at
   ``c + i a1 + (j + 1/2) a2`` for the *vertical* ones, wherever both neighbours are visible in
   the mean pattern and the aperture lies on the detector. Users can give their own apertures
   (:func:`read_apertures`; the ones used are written to ``apertures.json`` for editing).
4. Descan (origin) correction, as py4DSTEM users do it: one streaming pass over a window around
   the central disk finds its centroid in every pattern (:func:`origin_shifts`), smoothed over the scan; the
   apertures then move with the pattern (shifts rounded to 1/4 pixel). Without it a drift of
   one or two pixels across the scan, small against the disks, moves Bragg-disk edges in and
   out of the apertures and swamps the ghost signal (measured on the simulator: 65-87% inside
   domains instead of 100%). ``descan=False`` turns it off.
5. One more streaming pass (blocks of rows, :func:`block_rows`; :func:`fast_vdf_sums`, with each
   drift position's apertures rendered over their bounding boxes only) sums each pattern inside the horizontal apertures, the vertical
   apertures, the central disk (virtual bright field) and the whole detector. The *contrast* at a probe position is
   ``(sum_h - sum_v) / total``, the sums pooled over the ``pool x pool`` neighbouring positions
   first (edges truncated), as the CNN pools its input.
6. :func:`classify_contrast` fits a two-component 1-D Gaussian mixture to the contrast (started
   from Otsu's threshold): the upper component is *horizontal*, the lower *vertical*. In units
   ``z`` of half the distance between the component means (``z = 0`` halfway), positions with
   ``|z| < none_band`` are *none*. Probabilities are a softmax of Gaussian scores centred at
   z = -1, 0, +1 with the mixture's noise, biased so that their arg-max gives exactly these bands.

Where it fails (honestly): the contrast is only as good as the apertures. With tightly packed
Bragg disks (the paper's case, and the simulator's: spacing ~2.7 disk radii) a ghost disk
overlaps its two neighbouring Bragg disks, so every aperture also collects Bragg-disk edges
that are a hundred times brighter than the ghost; they largely cancel between horizontal and
vertical apertures, but any asymmetry (different reflection intensities, descan drift that the
centroid tracking misses, thickness changes, a lattice vector that is slightly off) adds a
smoothly varying offset to the contrast that can be as large as the ghost signal. The centroid
tracking assumes the central disk is a clean, isolated disk; with a diffuse or saturated central
beam it misleads. The lattice finder assumes one crystal orientation over the whole scan. The threshold assumes both polarizations are present in the scan
(a single-domain scan is split into two "domains" of noise), the 'none' band is a fixed
fraction of the domain contrast rather than learnt, wall positions are ambiguous by
construction, and polarizations other than the two in-plane directions along the lattice axes
(e.g. out-of-plane, or a lattice whose axes do not carry the ghosts) are invisible to it.

**Label-free first look** (``method='cluster'``, :func:`cluster_baseline`): every pattern has its
bad pixels filled, is binned (to 32 pixels or fewer by default), shifted back by its smoothed
descan shift (Fourier shift at 128 pixels or more), pooled over ``pool x pool`` probe positions, stripped of the central
disk (which carries thickness contrast) and of a detector border as wide as the largest shift,
square-rooted and standardised, in one streaming pass over the scan; an incremental PCA is fitted on
the features of a sample of evenly spaced scan rows (about 2,048 patterns) and applied to every
pattern (the features are kept in memory up to ``FEATURE_MEMORY``, 256 MB; a larger scan reads
its sample rows once more first); k-means splits the leading components that stand
above the noise floor (:func:`signal_components`) into ``k`` clusters. Clusters are numbered by size (``cluster 0`` the largest); probabilities
are a softmax of minus the squared distances to the cluster centres over their mean. Clusters
follow whatever varies most between patterns, which need not be the polarization: thickness,
descan drift or specimen tilt can win over faint ghost disks. Use it to see structure before
labelling, not as a classifier; ``ghostmap evaluate`` scores it by the best matching of clusters
to classes. Measured on the simulator: without drift the clusters are the domains (100% inside
domains); with the default 2-pixel drift, residual drift structure survives the alignment and
k-means with k = 3 tends to split one polarization in two (about 70% inside domains).

Both return a :class:`BaselineResult` whose ``prediction`` is a
:class:`ghostmap.prediction.Prediction`, saved by :func:`save_baseline` in the same
``predictions.npz`` / ``domain_map.png`` format as ``ghostmap predict``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.ndimage as ndi

from .atomic import atomic_path, write_text
from .counts import CountReduction, block_rows
from .detector import find_bad_pixels
from .errors import GhostmapError
from .io.base import prefetched
from .reading import as_scan, bright_field_mask, mean_and_max_pattern
from .result import Prediction

__all__ = [
    "METHODS", "VDF_CLASSES", "Lattice", "Apertures", "BaselineResult", "find_lattice", "ghost_apertures",
    "read_apertures", "aperture_weights", "disk_centroids", "origin_shifts", "vdf_sums", "fast_vdf_sums", "cluster_features",
    "signal_components", "pool_map", "contrast_map", "classify_contrast",
    "vdf_baseline", "cluster_baseline", "run_baseline", "save_baseline",
]

METHODS = ("vdf", "cluster")
VDF_CLASSES = ("none", "vertical", "horizontal")
BASELINE_FILE = "baseline.npz"
CONTRAST_FILE = "contrast.png"
APERTURES_FILE = "apertures.json"

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- lattice and apertures


@dataclass
class Lattice:
    """Bragg lattice on the detector: ``center`` (det_row, det_col) of the central disk, lattice
    vectors ``a1`` (nearer detector x) and ``a2`` (nearer detector y) as (d_row, d_col), disk ``radius``."""

    center: tuple[float, float]
    a1: tuple[float, float]
    a2: tuple[float, float]
    radius: float

    def to_dict(self) -> dict:
        return {"center": list(map(float, self.center)), "a1": list(map(float, self.a1)),
                "a2": list(map(float, self.a2)), "radius": float(self.radius)}


@dataclass
class Apertures:
    """Ghost-disk apertures, detector (row, col) centres for each axis, and their radius in pixels."""

    horizontal: np.ndarray
    vertical: np.ndarray
    radius: float
    lattice: Lattice | None = None

    def __post_init__(self) -> None:
        self.horizontal = np.asarray(self.horizontal, float).reshape(-1, 2)
        self.vertical = np.asarray(self.vertical, float).reshape(-1, 2)
        self.radius = float(self.radius)

    def to_dict(self) -> dict:
        d = {"radius": self.radius, "horizontal": self.horizontal.round(3).tolist(),
             "vertical": self.vertical.round(3).tolist(),
             "coordinates": "detector (row, col) pixels, origin at the first pixel's centre"}
        if self.lattice is not None:
            d["lattice"] = self.lattice.to_dict()
        return d

    def check(self, detector_shape: tuple[int, int], source: str = "apertures") -> None:
        rows, cols = detector_shape
        if not (np.isfinite(self.radius) and self.radius > 0):
            raise GhostmapError(f"{source}: the aperture radius must be a positive number, not {self.radius}")
        for name in ("horizontal", "vertical"):
            sites = getattr(self, name)
            if len(sites) == 0:
                raise GhostmapError(f"{source}: no {name} apertures")
            if not np.isfinite(sites).all():
                raise GhostmapError(f"{source}: {name} aperture positions must be finite numbers")
            outside = (sites[:, 0] < -0.5) | (sites[:, 0] > rows - 0.5) | (sites[:, 1] < -0.5) | (sites[:, 1] > cols - 0.5)
            if outside.any():
                r, c = sites[int(np.flatnonzero(outside)[0])]
                raise GhostmapError(f"{source}: {name} aperture at row {r:g}, col {c:g} is outside the "
                                    f"{rows} x {cols} detector")


def _clean_mean(mean: np.ndarray, bad: np.ndarray | None) -> np.ndarray:
    mean = np.nan_to_num(np.asarray(mean, np.float64))
    if bad is not None and bad.any():
        mean = mean.copy()
        mean[bad] = ndi.median_filter(mean, size=5, mode="nearest")[bad]
    return mean


def _peak_near(image: np.ndarray, guess, window: float) -> tuple[float, float] | None:
    """Sub-pixel position of the maximum of ``image`` within ``window`` pixels of ``guess`` (row, col)."""
    rows, cols = image.shape
    r0, c0 = int(round(guess[0])), int(round(guess[1]))
    h = max(1, int(np.ceil(window)))
    if not (h <= r0 < rows - h and h <= c0 < cols - h):
        return None
    patch = image[r0 - h : r0 + h + 1, c0 - h : c0 + h + 1]
    i, j = np.unravel_index(int(np.argmax(patch)), patch.shape)
    if not (0 < i < patch.shape[0] - 1 and 0 < j < patch.shape[1] - 1):
        return None

    def vertex(m, c, p):
        den = m - 2 * c + p
        return 0.0 if den >= 0 else float(np.clip(0.5 * (m - p) / den, -0.5, 0.5))

    di = vertex(patch[i - 1, j], patch[i, j], patch[i + 1, j])
    dj = vertex(patch[i, j - 1], patch[i, j], patch[i, j + 1])
    return (r0 - h + i + di, c0 - h + j + dj)


def find_lattice(mean: np.ndarray, bad: np.ndarray | None = None, disk: np.ndarray | None = None) -> Lattice:
    """The Bragg lattice of a (mean) diffraction pattern; ``bad`` masks detector pixels to ignore.

    ``disk`` is the central disk's mask where the caller has it already
    (:func:`ghostmap.reading.bright_field_mask` of the cleaned ``mean``); else it is found here.
    Raises GhostmapError when no two-dimensional lattice of disks can be found.
    """
    mean = _clean_mean(mean, bad)
    if mean.ndim != 2 or min(mean.shape) < 16:
        raise GhostmapError(f"cannot find a Bragg lattice in a pattern of shape {mean.shape}")
    if disk is None:
        disk = bright_field_mask(mean)
    rr, cc = np.nonzero(disk)
    w = mean[rr, cc]
    center = (float((rr * w).sum() / w.sum()), float((cc * w).sum() / w.sum()))
    radius = float(np.sqrt(disk.sum() / np.pi))
    # high-pass, then autocorrelation: peaks at the lattice vectors
    image = np.sqrt(np.clip(mean, 0, None))
    image = image - ndi.gaussian_filter(image, sigma=max(2.0, 2 * radius), mode="nearest")
    image[np.hypot(*np.indices(mean.shape) - np.array(center)[:, None, None]) <= radius + 1.5] = 0.0  # central beam
    f = np.fft.rfft2(image - image.mean(), s=(2 * mean.shape[0], 2 * mean.shape[1]))
    ac = np.fft.fftshift(np.fft.irfft2(np.abs(f) ** 2, s=(2 * mean.shape[0], 2 * mean.shape[1])))
    origin = np.array(ac.shape) // 2
    local = (ac == ndi.maximum_filter(ac, size=max(3, int(radius)), mode="constant")) & (ac > 0)
    pr, pc = np.nonzero(local)
    vec = np.stack([pr - origin[0], pc - origin[1]], 1).astype(float)
    length = np.hypot(vec[:, 0], vec[:, 1])
    keep = (length > 1.5 * radius) & (length < min(mean.shape) / 2.5)
    vec, length, strength = vec[keep], length[keep], ac[pr[keep], pc[keep]]
    strong = strength > 0.2 * strength.max() if len(strength) else strength.astype(bool)
    vec, length = vec[strong], length[strong]
    if len(vec) < 2:
        raise GhostmapError("no Bragg lattice found in the mean pattern (give the apertures with --apertures)")
    order = np.argsort(length, kind="stable")
    v1 = vec[order[0]]
    v2 = None
    for i in order[1:]:
        cand = vec[i]
        sin = abs(v1[0] * cand[1] - v1[1] * cand[0]) / (np.hypot(*v1) * np.hypot(*cand))
        if sin > 0.5:
            v2 = cand
            break
    if v2 is None:
        raise GhostmapError("the mean pattern's disks do not form a 2-D lattice (give the apertures with --apertures)")
    refined = []
    for v in (v1, v2):
        best = v
        for m in (2, 3):
            peak = _peak_near(ac, origin + m * best, window=max(1.5, 0.15 * np.hypot(*v)))
            if peak is None:
                break
            best = (np.array(peak) - origin) / m
        refined.append(best)
    v1, v2 = refined
    # a1: the vector nearer detector x (columns), pointing to +x; a2 nearer y, pointing to +y
    if abs(v1[1]) * np.hypot(*v2) < abs(v2[1]) * np.hypot(*v1):
        v1, v2 = v2, v1
    a1 = v1 if v1[1] >= 0 else -v1
    a2 = v2 if v2[0] >= 0 else -v2
    return Lattice(center, (float(a1[0]), float(a1[1])), (float(a2[0]), float(a2[1])), radius)


def ghost_apertures(lattice: Lattice, detector_shape: tuple[int, int], mean: np.ndarray | None = None,
                    radius: float | None = None, min_fraction: float = 0.05) -> Apertures:
    """Apertures halfway between neighbouring Bragg disks along each lattice axis.

    A site is kept when the aperture lies on the detector and, if ``mean`` is given, both
    neighbouring Bragg disks are at least ``min_fraction`` of the strongest non-central disk
    above the background (the 10th percentile of the mean pattern).
    """
    rows, cols = detector_shape
    r_ap = float(radius) if radius is not None else lattice.radius
    if not (np.isfinite(r_ap) and r_ap > 0):
        raise GhostmapError(f"the aperture radius must be positive, not {radius}")
    c = np.asarray(lattice.center, float)
    a1, a2 = np.asarray(lattice.a1, float), np.asarray(lattice.a2, float)
    reach = int(np.ceil(np.hypot(rows, cols) / min(np.hypot(*a1), np.hypot(*a2)))) + 1
    ii, jj = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    ii, jj = ii.ravel(), jj.ravel()

    def strength(i, j):
        pos = c + i[:, None] * a1 + j[:, None] * a2
        if mean is None:
            return np.ones(len(i)), pos
        yy, xx = np.indices(mean.shape)
        out = np.zeros(len(i))
        inside = (pos[:, 0] >= 0) & (pos[:, 0] <= rows - 1) & (pos[:, 1] >= 0) & (pos[:, 1] <= cols - 1)
        floor = np.percentile(mean, 10)
        blurred = ndi.uniform_filter(mean, size=max(1, int(round(lattice.radius))), mode="nearest")
        ri = np.clip(np.round(pos[:, 0]).astype(int), 0, rows - 1)
        ci = np.clip(np.round(pos[:, 1]).astype(int), 0, cols - 1)
        out[inside] = blurred[ri[inside], ci[inside]] - floor
        return out, pos

    s, _ = strength(ii, jj)
    noncentral = (ii != 0) | (jj != 0)
    top = s[noncentral].max() if noncentral.any() else 1.0
    visible = dict(zip(zip(ii.tolist(), jj.tolist()), (s >= min_fraction * max(top, 1e-12)).tolist()))

    def sites(di, dj):
        out = []
        for i, j in zip(ii.tolist(), jj.tolist()):
            if not (visible.get((i, j)) and visible.get((i + di, j + dj))):
                continue
            p = c + (i + 0.5 * di) * a1 + (j + 0.5 * dj) * a2
            if r_ap - 0.5 <= p[0] <= rows - 0.5 - r_ap and r_ap - 0.5 <= p[1] <= cols - 0.5 - r_ap:
                out.append(p)
        return np.array(out, float).reshape(-1, 2)

    ap = Apertures(sites(1, 0), sites(0, 1), r_ap, lattice)
    if len(ap.horizontal) == 0 or len(ap.vertical) == 0:
        raise GhostmapError("no ghost-disk aperture fits on the detector (give the apertures with --apertures)")
    return ap


def read_apertures(path: str | os.PathLike, detector_shape: tuple[int, int] | None = None,
                   radius: float | None = None) -> Apertures:
    """Read apertures from JSON: ``{"radius": R, "horizontal": [[row, col], ...], "vertical": [...]}``.

    Positions are detector (row, col) pixels. ``radius`` overrides the file's (which is
    needed otherwise). The ``apertures.json`` that ``ghostmap baseline`` writes reads back.
    """
    path = Path(path)
    if not path.is_file():
        raise GhostmapError(f"no such aperture file: {path}")
    try:
        d = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise GhostmapError(f"{path} is not valid JSON: {' '.join(str(exc).split())}") from None
    if not isinstance(d, dict) or "horizontal" not in d or "vertical" not in d:
        raise GhostmapError(f"{path} must be a JSON object with 'horizontal' and 'vertical' lists of [row, col]")
    r = radius if radius is not None else d.get("radius")
    if r is None:
        raise GhostmapError(f"{path} gives no 'radius'; add one or pass --radius")
    try:
        sites = {}
        for name in ("horizontal", "vertical"):
            arr = np.array(d[name], dtype=float)
            if arr.size == 0:
                arr = arr.reshape(0, 2)
            if arr.ndim != 2 or arr.shape[1] != 2:
                raise ValueError(f"'{name}' must be a list of [row, col] pairs")
            sites[name] = arr
        r = float(r)
    except (TypeError, ValueError) as exc:
        raise GhostmapError(f"{path}: {' '.join(str(exc).split())}") from None
    ap = Apertures(sites["horizontal"], sites["vertical"], r)
    if detector_shape is not None:
        ap.check(detector_shape, str(path))
    return ap


def aperture_weights(apertures: Apertures, detector_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(det_rows, det_cols) float weights of the horizontal and vertical apertures (anti-aliased edges)."""
    yy, xx = np.indices(detector_shape, dtype=np.float64)
    out = []
    for sites in (apertures.horizontal, apertures.vertical):
        w = np.zeros(detector_shape)
        for r, c in sites:
            np.maximum(w, np.clip(apertures.radius - np.hypot(yy - r, xx - c) + 0.5, 0.0, 1.0), out=w)
        out.append(w)
    return out[0], out[1]


# --------------------------------------------------------------------------- virtual dark field


def disk_centroids(patterns: np.ndarray, start: tuple[float, float], radius: float, live: np.ndarray | None = None,
                   iterations: int = 3, level: float = 0.0) -> np.ndarray:
    """(n, 2) centroid (det_row, det_col) of the central disk of each pattern (n, det_r, det_c).

    Counts above ``level`` within ``radius + 1`` pixels of the current estimate, starting at
    ``start``; the window follows the estimate for ``iterations`` rounds. ``live`` masks out
    bad pixels. A ``level`` of about half the disk's counts keeps the background, which pulls
    the centroid towards the window's centre, out.
    """
    patterns = np.asarray(patterns)
    n, rows, cols = patterns.shape
    reach = radius + 1.0
    h = int(np.ceil(2 * reach)) + 1
    r0, r1 = max(0, int(start[0]) - h), min(rows, int(start[0]) + h + 2)
    c0, c1 = max(0, int(start[1]) - h), min(cols, int(start[1]) + h + 2)
    box = np.clip(patterns[:, r0:r1, c0:c1].astype(np.float64) - level, 0, None)
    if live is not None:
        box = box * live[r0:r1, c0:c1]
    yy, xx = np.indices(box.shape[1:], dtype=np.float64)
    yy += r0
    xx += c0
    est = np.tile(np.asarray(start, np.float64), (n, 1))
    coords = np.stack([yy.ravel(), xx.ravel()], 1)
    for _ in range(iterations):
        # within reach of the estimate: squared distances built from one row and one column per pattern
        inside = ((yy[:, :1] - est[:, 0, None, None]) ** 2 + (xx[:1] - est[:, 1, None, None]) ** 2) <= reach**2
        w = (box * inside).reshape(n, -1)
        total = w.sum(1)
        ok = total > 0
        moments = w @ coords  # (n, 2): sums of w * row and w * col
        est[ok] = moments[ok] / total[ok, None]
    return est


def origin_shifts(scan, center: tuple[float, float], radius: float, live: np.ndarray | None = None,
                  smooth: float = 2.0, level: float = 0.0, rows_per_block: int | None = None) -> np.ndarray:
    """(rows, cols, 2) descan shift (d_row, d_col) of every pattern relative to ``center``.

    py4DSTEM-style origin correction: the central-disk centroid of every pattern
    (:func:`disk_centroids`, one streaming pass), smoothed over the scan with a Gaussian of
    ``smooth`` probe positions (0: unsmoothed), minus its mean over the scan.
    """
    scan = as_scan(scan)
    n_rows, n_cols = scan.scan_shape
    rows, cols = scan.detector_shape
    out = np.zeros((n_rows, n_cols, 2))
    # disk_centroids looks only at this window around the start: read nothing else
    h = int(np.ceil(2 * (radius + 1.0))) + 1
    r0, r1 = max(0, int(center[0]) - h), min(rows, int(center[0]) + h + 2)
    c0, c1 = max(0, int(center[1]) - h), min(cols, int(center[1]) + h + 2)
    window_live = live[r0:r1, c0:c1] if live is not None else None
    step = rows_per_block or block_rows(scan)
    blocks = [(b, min(b + step, n_rows)) for b in range(0, n_rows, step)]
    for (start, stop), box in prefetched(lambda b: _read_window(scan, *b, r0, r1, c0, c1), blocks):
        box = box.reshape(-1, r1 - r0, c1 - c0)
        found = disk_centroids(box, (center[0] - r0, center[1] - c0), radius, window_live, level=level)
        out[start:stop] = (found + (r0, c0)).reshape(stop - start, n_cols, 2)
    if smooth > 0:
        out = ndi.gaussian_filter(out, sigma=(smooth, smooth, 0), mode="nearest")
    return out - out.reshape(-1, 2).mean(0)


def _read_window(scan, start: int, stop: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """The detector window [r0:r1, c0:c1] of every pattern in scan rows [start, stop).

    A ``.npy`` is mapped afresh for each block and unmapped after it, so only the window's pages
    are touched and none stays resident in this process; other formats are sliced (HDF5 reads
    just the window).
    """
    data = scan.data
    if isinstance(data, np.memmap):
        with scan.mapped_rows(start, stop) as rows:
            return np.array(rows[:, :, r0:r1, c0:c1])
    window = np.asarray(data[start:stop, :, r0:r1, c0:c1])
    return window if window.dtype.isnative else window.astype(window.dtype.newbyteorder("="))


def vdf_sums(scan, weights, shifts: np.ndarray | None = None, quantum: float = 0.25,
             rows_per_block: int | None = None, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Stream the scan once: (rows, cols, M) weighted sums of every pattern.

    ``weights`` is an (M, det_r, det_c) array, or, with ``shifts`` (rows, cols, 2), a function
    ``(d_row, d_col) -> (M, det_r, det_c)`` giving the virtual detectors moved with the pattern;
    shifts are rounded to ``quantum`` pixels and each distinct one is rendered once.
    """
    scan = as_scan(scan)
    n_rows, n_cols = scan.scan_shape
    if shifts is None:
        fixed = np.asarray(weights, np.float32)
        render = lambda dy, dx: fixed  # noqa: E731
        keys = np.zeros((n_rows, n_cols, 2), np.int64)
    else:
        render = weights
        keys = np.round(np.asarray(shifts) / quantum).astype(np.int64)
    cache: dict = {}
    out = None
    step = rows_per_block or block_rows(scan)
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        raw = scan.read_rows(start, stop).reshape((stop - start) * n_cols, -1)
        block_keys = keys[start:stop].reshape(-1, 2)
        uniq, inverse = np.unique(block_keys, axis=0, return_inverse=True)
        inverse = np.asarray(inverse).reshape(-1)
        for u, key in enumerate(map(tuple, uniq)):
            if key not in cache:
                w = np.asarray(render(key[0] * quantum, key[1] * quantum), np.float32)
                cache[key] = np.ascontiguousarray(w.reshape(len(w), -1).T)
            w = cache[key]
            if out is None:
                out = np.zeros((n_rows * n_cols, w.shape[1]), np.float64)
            idx = np.flatnonzero(inverse == u)
            out[start * n_cols + idx] = raw[idx].astype(np.float32) @ w
        if progress:
            progress(stop * n_cols, n_rows * n_cols)
    return out.reshape(n_rows, n_cols, -1)


def _disks(centres: np.ndarray, radius: float, detector_shape: tuple[int, int],
           offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """(det_rows, det_cols) weights of anti-aliased disks, the largest where they overlap.

    Each disk is computed over its bounding box only, all of them in one array operation, with
    the arithmetic of :func:`aperture_weights` (``clip(radius - distance + 0.5, 0, 1)``; ``offset``
    subtracted after the centre, as the central disk's drift is), so the weights are the same to
    the last bit as rendering every disk over the whole detector.
    """
    rows, cols = detector_shape
    out = np.zeros(detector_shape)
    centres = np.asarray(centres, np.float64).reshape(-1, 2)
    if len(centres) == 0:
        return out
    reach = radius + 0.5
    size = int(np.ceil(2 * reach)) + 3
    r0 = np.floor(centres[:, 0] + offset[0] - reach).astype(np.int64)
    c0 = np.floor(centres[:, 1] + offset[1] - reach).astype(np.int64)
    steps = np.arange(size)
    rr = r0[:, None] + steps  # (n, size) detector rows of each box
    cc = c0[:, None] + steps
    dy = rr.astype(np.float64) - centres[:, 0, None] - offset[0]
    dx = cc.astype(np.float64) - centres[:, 1, None] - offset[1]
    w = np.clip(radius - np.hypot(dy[:, :, None], dx[:, None, :]) + 0.5, 0.0, 1.0)
    inside = (w > 0) & ((rr >= 0) & (rr < rows))[:, :, None] & ((cc >= 0) & (cc < cols))[:, None, :]
    flat = (rr[:, :, None] * cols + cc[:, None, :])[inside]
    np.maximum.at(out.reshape(-1), flat, w[inside])
    return out


def _vdf_detectors(apertures: Apertures, bf_center: tuple[float, float], bf_radius: float, live: np.ndarray,
                      keep: int = 8):
    """``render(d_row, d_col) -> (det_rows * det_cols, 4) float32``: the horizontal and vertical
    apertures, the central disk moved by the drift, and the whole detector, bad pixels weighted 0.

    The same weights as rendering every aperture over the whole detector (:func:`aperture_weights`),
    but each disk only over its bounding box (the paper-size scan: 73 shifts x 306 apertures took
    24 s that way, 0.3 s this way). The last ``keep`` shifts' weights are kept: neighbouring scan
    rows drift alike.
    """
    from collections import OrderedDict

    det = live.shape
    live_flat = live.reshape(-1).astype(np.float32)
    recent: OrderedDict = OrderedDict()

    def render(dy: float, dx: float) -> np.ndarray:
        key = (dy, dx)
        if key in recent:
            recent.move_to_end(key)
            return recent[key]
        weights = np.empty((live_flat.size, 4), np.float32)
        weights[:, 0] = _disks(apertures.horizontal + (dy, dx), apertures.radius, det).reshape(-1)
        weights[:, 1] = _disks(apertures.vertical + (dy, dx), apertures.radius, det).reshape(-1)
        weights[:, 2] = _disks(np.array([bf_center]), bf_radius, det, offset=(dy, dx)).reshape(-1)
        weights[:, :3] *= live_flat[:, None]
        weights[:, 3] = live_flat
        recent[key] = weights
        while len(recent) > keep:
            recent.popitem(last=False)
        return weights

    return render


def fast_vdf_sums(scan, render, shifts: np.ndarray, quantum: float = 0.25, rows_per_block: int | None = None,
                  progress: Callable[[int, int], None] | None = None, workers: int | None = None) -> np.ndarray:
    """Stream the scan once: (rows, cols, M) virtual-detector sums of every pattern.

    ``render(d_row, d_col) -> (det_rows * det_cols, M) float32`` gives the virtual detectors
    moved with the pattern; shifts (rows, cols, 2) are rounded to ``quantum`` pixels. The same
    sums as :func:`vdf_sums`, several times faster.

    Patterns are converted to float32 a few at a time and a slice of detector pixels at a time,
    and multiplied by that slice of the weights while both are in the cache, on one BLAS thread
    per worker; ``workers`` threads (default: one per core) each take whole blocks of scan rows,
    a .npy's straight from the file's pages (:meth:`ghostmap.io.base.Scan.mapped_rows`). On 2 cores
    converting a block at once with multi-threaded BLAS was 3-5 x slower, and whole patterns
    instead of pixel slices 1.3 x (the weights of a whole 512 x 512 detector, 4 MB, leave the cache).
    """
    import os
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    scan = as_scan(scan)
    n_rows, n_cols = scan.scan_shape
    n_pixels = scan.detector_shape[0] * scan.detector_shape[1]
    keys = np.round(np.asarray(shifts) / quantum).astype(np.int64)
    step = rows_per_block or block_rows(scan)
    blocks = [(b, min(b + step, n_rows)) for b in range(0, n_rows, step)]
    chunk, piece = 32, 16384  # patterns x detector pixels per float32 buffer: 2 MB, with 256 kB of weights
    rendering = threading.Lock()  # render keeps a small cache of recent shifts

    def weights_for(key):
        with rendering:
            return render(key[0] * quantum, key[1] * quantum)

    def block_sums(block):
        start, stop = block
        buffer = np.empty((chunk, min(piece, n_pixels)), np.float32)
        with scan.mapped_rows(start, stop) as rows:
            raw = np.asarray(rows).reshape((stop - start) * n_cols, n_pixels)
            uniq, inverse = np.unique(keys[start:stop].reshape(-1, 2), axis=0, return_inverse=True)
            inverse = np.asarray(inverse).reshape(-1)
            out = None
            for u, key in enumerate(map(tuple, uniq)):
                weights = weights_for(key)
                if out is None:
                    out = np.zeros((len(raw), weights.shape[1]), np.float64)
                idx = np.flatnonzero(inverse == u)
                for i in range(0, len(idx), chunk):
                    part = idx[i : i + chunk]
                    contiguous = part[-1] - part[0] + 1 == len(part)  # a view, not a copy, where it can be
                    patterns = raw[part[0] : part[-1] + 1] if contiguous else raw[part]
                    total = np.zeros((len(part), weights.shape[1]), np.float64)
                    for j in range(0, n_pixels, piece):
                        pixels = buffer[: len(part), : min(piece, n_pixels - j)]
                        np.copyto(pixels, patterns[:, j : j + piece])
                        total += pixels @ weights[j : j + piece]
                    out[part] = total
            return out

    workers = max(1, int(workers or os.cpu_count() or 1))
    parts = []
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(max_workers=workers) as pool:
        for (_, stop), sums in zip(blocks, pool.map(block_sums, blocks)):
            parts.append(sums)
            if progress:
                progress(stop * n_cols, n_rows * n_cols)
    return np.concatenate(parts).reshape(n_rows, n_cols, -1)


def pool_map(image: np.ndarray, k: int) -> np.ndarray:
    """Mean over the k x k neighbourhood of every position (edges truncated, never wrapped)."""
    image = np.asarray(image, np.float64)
    if k <= 1:
        return image
    ones = np.ones(image.shape[:2])
    size = (k, k) + (1,) * (image.ndim - 2)
    total = ndi.uniform_filter(image, size=size, mode="constant")
    count = ndi.uniform_filter(ones, size=(k, k), mode="constant")
    return total / count.reshape(count.shape + (1,) * (image.ndim - 2))


def contrast_map(horizontal: np.ndarray, vertical: np.ndarray, total: np.ndarray, pool: int = 3) -> np.ndarray:
    """(sum_h - sum_v) / total per position, each sum pooled over ``pool x pool`` positions first."""
    h, v, t = (pool_map(a, pool) for a in (horizontal, vertical, total))
    return (h - v) / np.maximum(t, 1e-12)


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(values, bins=bins)
    mids = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * mids)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(mids[int(np.argmax(between[:-1]))]) if len(between) > 1 else float(mids[0])


def _two_gaussians(values: np.ndarray, iterations: int = 200) -> tuple[float, float, float, float, float]:
    """EM for a 1-D two-component Gaussian mixture: (mean_low, mean_high, sigma_low, sigma_high, weight_high)."""
    t = _otsu(values)
    lo, hi = values[values <= t], values[values > t]
    if len(lo) < 2 or len(hi) < 2:
        raise GhostmapError("the contrast map has no two populations to split")
    m = np.array([lo.mean(), hi.mean()])
    s = np.array([lo.std(), hi.std()]) + 1e-12
    p = np.array([len(lo), len(hi)], float) / len(values)
    floor = 1e-6 * (values.std() + 1e-12)
    for _ in range(iterations):
        ll = -0.5 * ((values[:, None] - m) / s) ** 2 - np.log(s) + np.log(p)
        ll -= ll.max(1, keepdims=True)
        r = np.exp(ll)
        r /= r.sum(1, keepdims=True)
        n = r.sum(0) + 1e-12
        m_new = (r * values[:, None]).sum(0) / n
        s = np.sqrt((r * (values[:, None] - m_new) ** 2).sum(0) / n) + floor
        p = n / n.sum()
        if np.allclose(m_new, m, rtol=0, atol=1e-9 * (abs(m).max() + 1e-12)):
            m = m_new
            break
        m = m_new
    if m[0] > m[1]:
        m, s, p = m[::-1], s[::-1], p[::-1]
    return float(m[0]), float(m[1]), float(s[0]), float(s[1]), float(p[1])


def classify_contrast(contrast: np.ndarray, none_band: float = 0.5) -> tuple[np.ndarray, np.ndarray, dict]:
    """Labels (indices into VDF_CLASSES), probabilities (rows, cols, 3) and the fitted split of a contrast map.

    ``none_band`` in (0, 1): the fraction of the way from the midpoint to a domain's mean contrast
    below which a position is 'none' (0: never 'none').
    """
    if not 0 <= none_band < 1:
        raise GhostmapError(f"the none band must be in [0, 1), not {none_band}")
    contrast = np.asarray(contrast, np.float64)
    finite = contrast[np.isfinite(contrast)]
    if finite.size < 4:
        raise GhostmapError("too few positions to split the contrast map")
    m_lo, m_hi, s_lo, s_hi, w_hi = _two_gaussians(finite)
    mid, half = 0.5 * (m_lo + m_hi), 0.5 * (m_hi - m_lo)
    if not half > 0:
        raise GhostmapError("the contrast map has no two populations to split")
    z = (np.nan_to_num(contrast, nan=mid) - mid) / half
    sigma = max(0.5 * (s_lo + s_hi) / half, 0.05)
    centres = np.array([0.0, -1.0, 1.0])  # none, vertical, horizontal
    bias = np.array([(none_band - 0.5) / sigma**2 if none_band > 0 else -np.inf, 0.0, 0.0])
    scores = -((z[..., None] - centres) ** 2) / (2 * sigma**2) + bias
    scores -= scores.max(-1, keepdims=True)
    prob = np.exp(scores)
    prob /= prob.sum(-1, keepdims=True)
    labels = prob.argmax(-1).astype(np.int64)
    info = {"vertical_mean": m_lo, "horizontal_mean": m_hi, "vertical_sigma": s_lo, "horizontal_sigma": s_hi,
            "horizontal_fraction": w_hi, "threshold": mid, "none_band": [mid - none_band * half, mid + none_band * half],
            "separation": float(2 * half / (0.5 * (s_lo + s_hi)))}
    return labels, prob.astype(np.float32), info


@dataclass
class BaselineResult:
    """A baseline's class map (``prediction``) and what it was computed from (``arrays``, ``info``)."""

    method: str
    prediction: Prediction
    arrays: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    apertures: Apertures | None = None


def _bad_mask(mean: np.ndarray, maximum: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]]]:
    bad_pixels = find_bad_pixels(mean, maximum)
    bad = np.zeros(mean.shape, bool)
    for r, c in bad_pixels:
        bad[r, c] = True
    return bad, bad_pixels


def _central_disk(clean_mean: np.ndarray) -> tuple[np.ndarray, tuple[float, float], float, float]:
    """The central disk of a mean pattern: mask, centre (row, col), radius, and half its median counts."""
    bf = bright_field_mask(clean_mean)
    rr, cc = np.nonzero(bf)
    return (bf, (float(rr.mean()), float(cc.mean())), float(np.sqrt(bf.sum() / np.pi)),
            0.5 * float(np.median(clean_mean[bf])))


def vdf_baseline(scan, apertures: Apertures | None = None, radius: float | None = None, pool: int = 3,
                 none_band: float = 0.5, descan: bool = True,
                 progress: Callable[[int, int], None] | None = None) -> BaselineResult:
    """Offset virtual dark-field baseline (see the module docstring); no labels or ground truth used.

    ``descan``: move the apertures with each pattern's smoothed central-disk position
    (:func:`origin_shifts`), which costs one more read of the scan.
    """
    scan = as_scan(scan)
    if int(pool) < 1:
        raise GhostmapError(f"pool must be at least 1, got {pool}")
    det = scan.detector_shape
    # 2,048 patterns (10 of the paper scan's 34 rows) found the same bad pixels, and a lattice
    # within 1e-3 px, as 4,096 did there, with the same labels, in half the time of this pass
    mean, maximum = mean_and_max_pattern(scan, max_patterns=2048)
    bad, bad_pixels = _bad_mask(mean, maximum)
    clean = _clean_mean(mean, bad)
    bf, bf_center, bf_radius, _ = _central_disk(clean)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as executor:  # the descan pass reads while the lattice is found
        pending = executor.submit(origin_shifts, scan, bf_center, bf_radius, ~bad) if descan else None
        lattice = None
        if apertures is None:
            lattice = find_lattice(clean, disk=bf)
            apertures = ghost_apertures(lattice, det, mean=clean, radius=radius)
        else:
            if radius is not None:
                apertures = Apertures(apertures.horizontal, apertures.vertical, radius, apertures.lattice)
            apertures.check(det)
        render = _vdf_detectors(apertures, bf_center, bf_radius, ~bad)
        shifts = pending.result() if pending is not None else np.zeros((*scan.scan_shape, 2))
    logger.debug("vdf: %d horizontal + %d vertical apertures of radius %.2f px, drift range %.2f x %.2f px",
                 len(apertures.horizontal), len(apertures.vertical), apertures.radius,
                 float(np.ptp(shifts[..., 0])), float(np.ptp(shifts[..., 1])))
    sums = fast_vdf_sums(scan, render, shifts, progress=progress)
    s_h, s_v, s_bf, total = np.moveaxis(sums, -1, 0)
    contrast = contrast_map(s_h, s_v, total, pool=int(pool))
    labels, prob, info = classify_contrast(contrast, none_band=none_band)
    info.update({"method": "vdf", "pool": int(pool), "aperture_radius": apertures.radius,
                 "n_apertures": [len(apertures.horizontal), len(apertures.vertical)],
                 "bad_pixels": len(bad_pixels), "descan": bool(descan),
                 "descan_range": [float(np.ptp(shifts[..., 0])), float(np.ptp(shifts[..., 1]))]})
    if lattice is not None:
        info["lattice"] = lattice.to_dict()
    prediction = Prediction(labels, prob, VDF_CLASSES, s_bf.astype(np.float32))
    arrays = {"contrast": contrast.astype(np.float32), "horizontal_sum": s_h.astype(np.float32),
              "vertical_sum": s_v.astype(np.float32), "total": total.astype(np.float32),
              "descan_shift": shifts.astype(np.float32)}
    return BaselineResult("vdf", prediction, arrays, info, apertures)


# --------------------------------------------------------------------------- clustering


SKLEARN_MISSING = "clustering needs scikit-learn: pip install 'ghostmap[baselines]'"


def _sklearn():
    try:
        from sklearn.cluster import KMeans
        from sklearn.decomposition import IncrementalPCA
    except ImportError:
        raise GhostmapError(SKLEARN_MISSING) from None
    return KMeans, IncrementalPCA


def _threadpool_limits():
    """threadpoolctl's ``threadpool_limits``, after checking that scikit-learn is there to import."""
    import importlib.util

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        raise GhostmapError(SKLEARN_MISSING) from None
    if importlib.util.find_spec("sklearn") is None:
        raise GhostmapError(SKLEARN_MISSING)
    return threadpool_limits


def _fourier_shift(x: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Shift each pattern x[i] (n, h, w) by shifts[i] (d_row, d_col) pixels (periodic, sub-pixel).

    Single-precision transforms (SciPy's, 2.8 x as fast as NumPy's double precision) and the
    phase ramp as the product of a row and a column factor: within 4e-6 of the double-precision
    shift on counts of a few per pixel.
    """
    import scipy.fft

    n, h, w = x.shape
    spectrum = scipy.fft.rfft2(np.asarray(x, np.float32))
    spectrum *= np.exp(-2j * np.pi * shifts[:, 0, None] * np.fft.fftfreq(h)).astype(np.complex64)[:, :, None]
    spectrum *= np.exp(-2j * np.pi * shifts[:, 1, None] * np.fft.rfftfreq(w)).astype(np.complex64)[:, None, :]
    return scipy.fft.irfft2(spectrum, s=(h, w)).astype(np.float32, copy=False)


def _aligned_binned(scan, start: int, stop: int, bad_pixels, bin: int, shifts: np.ndarray | None,
                    bf_box: tuple[slice, slice], bf_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scan rows [start, stop): bad pixels filled and binned (one pass over the raw counts),
    shifted back by ``shifts`` (descan) at 128 pixels or more, then binned the rest of the way; (rows, cols, h * w) float32,
    and each pattern's virtual bright field (rows, cols) from the raw counts."""
    raw = scan.read_rows(start, stop)
    rows, cols = raw.shape[:2]
    bright = np.tensordot(raw[:, :, bf_box[0], bf_box[1]].astype(np.float32), bf_weights, axes=([2, 3], [0, 1]))
    # align at ALIGN_SIZE pixels or more (a Fourier shift of 32 x 32 patterns measured 64% inside
    # domains on a drifting simulated scan, of 128 x 128 70%, as at full size), then bin the rest
    first = _align_bin(bin, scan.detector_shape) if shifts is not None else bin
    counts = CountReduction(bin=first, bad_pixels=tuple(map(tuple, bad_pixels)))
    patterns = raw.reshape(-1, *scan.detector_shape)
    if counts.fits(patterns):  # integer counts: summed exactly in NumPy, no PyTorch
        x = counts.reduce(patterns)
    else:
        from .preprocessing import Preprocessing  # PyTorch: float or 32-bit counts only

        x = Preprocessing(bin=first, pool=1, bad_pixels=bad_pixels).reduce(patterns, chunk_pixels=1 << 22).numpy()
    del raw, patterns
    if shifts is not None:
        x = _fourier_shift(x, -shifts[start:stop].reshape(-1, 2) / first)
    rest = bin // first
    if rest > 1:
        n, dh, dw = x.shape
        h, w = dh // rest, dw // rest
        x = x[:, : h * rest, : w * rest].reshape(n, h, rest, w, rest).sum((2, 4))
    return x.reshape(rows, cols, -1), bright.astype(np.float64)


ALIGN_SIZE = 128


def _align_bin(bin: int, detector_shape: tuple[int, int]) -> int:
    """The largest divisor of ``bin`` that leaves patterns of at least ALIGN_SIZE pixels (1 if none)."""
    fits = [d for d in range(1, bin + 1) if bin % d == 0 and max(detector_shape) // d >= ALIGN_SIZE]
    return max(fits) if fits else 1


def _finish_features(x: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    """Take the ``keep`` pixels, square root, standardise each pattern: (..., n) float32."""
    if keep is not None:
        x = x[..., keep]
    x = np.sqrt(np.clip(x, 0, None))
    x -= x.mean(-1, keepdims=True)
    x /= np.maximum(x.std(-1, keepdims=True), 1e-6)
    return x.astype(np.float32)


def _bright_field_weights(bf: np.ndarray, live: np.ndarray) -> tuple[tuple[slice, slice], np.ndarray]:
    mask = bf & live
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return (slice(0, 1), slice(0, 1)), np.zeros((1, 1), np.float32)
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return box, mask[box].astype(np.float32)


def cluster_features(scan, rows: tuple[int, int], bad_pixels, bin: int, pool: int,
                     shifts: np.ndarray | None = None, keep: np.ndarray | None = None) -> np.ndarray:
    """Features (stop-start, cols, n) of scan rows [start, stop): bad pixels filled, binned,
    aligned by ``-shifts`` (descan, at the binned size), pooled over pool x pool positions, the
    binned pixels ``keep`` (flat bool; all by default) taken, square-rooted and standardised."""
    start, stop = rows
    n_rows = scan.scan_shape[0]
    half = pool // 2
    lo, hi = max(0, start - half), min(n_rows, stop + half)
    det = scan.detector_shape
    no_bf = (slice(0, 1), slice(0, 1)), np.zeros((1, 1), np.float32)
    x, _ = _aligned_binned(scan, lo, hi, bad_pixels, bin, shifts, *no_bf)
    h, w = det[0] // bin, det[1] // bin
    x = pool_map(x.reshape(hi - lo, -1, h * w), pool)[start - lo : stop - lo]
    return _finish_features(x, keep)


def _streamed_features(scan, bad_pixels, bin, pool, shifts, keep, bf_box, bf_weights):
    """Yield (row, features (cols, n), bright field (cols,)) for every scan row, in order, each
    raw row read and binned once (the next one in a background thread); only the ``pool``
    binned rows that pooling needs are kept."""
    n_rows = scan.scan_shape[0]
    half = pool // 2
    kept: dict[int, np.ndarray] = {}
    bright: dict[int, np.ndarray] = {}
    ready = 0
    read = lambda r: _aligned_binned(scan, r, r + 1, bad_pixels, bin, shifts, bf_box, bf_weights)  # noqa: E731
    for r, (x, bf) in prefetched(read, list(range(n_rows))):
        kept[r], bright[r] = x[0], bf[0]
        while ready < n_rows and (r >= ready + half or r == n_rows - 1):
            lo, hi = max(0, ready - half), min(n_rows, ready + half + 1)
            window = np.stack([kept[i] for i in range(lo, hi)])
            yield ready, _finish_features(pool_map(window, pool)[ready - lo], keep), bright.pop(ready)
            ready += 1
            for i in [i for i in kept if i < ready - half]:
                del kept[i]


# Every pattern's clustering features are kept (one pass over the scan) where they take at most
# this much memory (the paper-size scan's: 25 MB); a larger scan reads its PCA sample rows twice.
FEATURE_MEMORY = 256 << 20


def _fit_pca(pca, row_features, batch: int, on_row: Callable[[int], None] | None = None) -> None:
    """Fit the incremental ``pca`` on the scan rows' features (each (cols, n)), ``batch`` patterns
    or more at a time, in the order given; ``on_row(i)`` after the i-th row."""
    pending: list[np.ndarray] = []
    for i, features in enumerate(row_features):
        pending.append(features)
        if sum(len(p) for p in pending) >= batch:
            _partial_fit(pca, pending)
            pending = []
        if on_row:
            on_row(i)
    if pending:
        _partial_fit(pca, pending)


def _partial_fit(pca, parts: list[np.ndarray]) -> None:
    chunk = np.concatenate(parts)
    if len(chunk) >= pca.n_components:
        pca.partial_fit(chunk)


def signal_components(variances: np.ndarray, factor: float = 2.0) -> int:
    """How many leading principal components stand above the noise floor: variance over ``factor``
    times the median variance of the trailing half of the components (at least 1)."""
    v = np.asarray(variances, float)
    floor = np.median(v[len(v) // 2 :]) if len(v) > 1 else 0.0
    return max(1, int(np.sum(v > factor * floor))) if floor > 0 else len(v)


def cluster_baseline(scan, k: int = 3, pool: int = 3, n_components: int | None = None, bin: int | None = None,
                     descan: bool = True, seed: int = 0, max_components: int = 20, sample: int = 2048,
                     progress: Callable[[int, int], None] | None = None) -> BaselineResult:
    """Label-free segmentation: preprocessed patterns -> incremental PCA -> k-means (see the module docstring).

    ``bin`` defaults to the smallest factor bringing the detector to 32 pixels or fewer.
    ``descan`` first aligns every pattern on its smoothed central-disk position. k-means runs on
    the ``n_components`` leading principal components, by default those above the noise floor
    (:func:`signal_components` of ``max_components`` fitted). The PCA is fitted on ``sample``
    patterns (evenly spaced scan rows), then every pattern is projected in one streaming pass, so
    time and memory stay bounded on any scan size (the paper-size scan: 479 s and 6.4 GB before).
    """
    from concurrent.futures import ThreadPoolExecutor

    if int(k) < 2:
        raise GhostmapError(f"k must be at least 2 clusters, got {k}")
    if int(pool) < 1 or int(pool) % 2 == 0:
        raise GhostmapError(f"pool must be an odd number of probe positions (1, 3, 5, ...), got {pool}")
    scan = as_scan(scan)
    threadpool_limits = _threadpool_limits()
    # scikit-learn's import (1-3 s) overlaps the first passes over the scan. The SVDs and k-means
    # here are small; multi-threaded BLAS / OpenMP made them up to 50x slower on a busy 2-core
    # machine (threads spinning against each other), so run them on one
    with ThreadPoolExecutor(max_workers=1) as executor, threadpool_limits(limits=1):
        sklearn = executor.submit(_sklearn)
        return _cluster(scan, sklearn.result, threadpool_limits, k, pool, n_components, bin, descan, seed,
                        max_components, sample, progress)


def _cluster(scan, sklearn, threadpool_limits, k, pool, n_components, bin, descan, seed, max_components,
             sample, progress) -> BaselineResult:
    n_rows, n_cols = scan.scan_shape
    if scan.n_patterns < k:
        raise GhostmapError(f"the scan has {scan.n_patterns} patterns, fewer than k = {k} clusters")
    if bin is None:
        bin = max(1, -(-max(scan.detector_shape) // 32))
    bin = int(bin)
    h, w = scan.detector_shape[0] // bin, scan.detector_shape[1] // bin
    if bin < 1 or min(h, w) < 4:
        raise GhostmapError(f"bin {bin} leaves patterns of only {h} x {w} pixels")
    mean, maximum = mean_and_max_pattern(scan)
    bad, bad_pixels = _bad_mask(mean, maximum)
    live = ~bad
    clean = _clean_mean(mean, bad)
    bf, bf_center, bf_radius, _ = _central_disk(clean)
    shifts = origin_shifts(scan, bf_center, bf_radius, live) if descan else None
    # leave out the central disk (binned pixels it touches, one pixel of margin): it carries
    # thickness contrast, which after per-pattern standardisation is otherwise the main variation
    disk = ndi.binary_dilation(bf, iterations=2)
    # and the detector's border, where the periodic alignment shift wraps one edge onto the other
    margin = int(np.ceil(np.abs(shifts).max())) + 1 if shifts is not None else 0
    if margin:
        disk[:margin] = disk[-margin:] = True
        disk[:, :margin] = disk[:, -margin:] = True
    keep = ~disk[: h * bin, : w * bin].reshape(h, bin, w, bin).any((1, 3)).ravel()
    n_feat = int(keep.sum())
    fitted = int(max(1, min(n_components or max_components, n_feat, scan.n_patterns)))
    # fit on a sample: evenly spaced scan rows holding about ``sample`` patterns (all rows of a
    # small scan), then classify every row in one streaming pass; memory stays bounded by the
    # sample whatever the scan size
    sample_rows = np.unique(np.linspace(0, n_rows - 1, min(n_rows, max(1, -(-int(sample) // n_cols))))
                            .round().astype(int))
    batch = max(256, fitted)
    scores = np.zeros((n_rows, n_cols, fitted), np.float32)
    bright = np.zeros((n_rows, n_cols), np.float64)
    bf_box, bf_weights = _bright_field_weights(bf, live)
    stream = _streamed_features(scan, bad_pixels, bin, pool, shifts, keep, bf_box, bf_weights)
    done = progress or (lambda work, total: None)
    if scan.n_patterns * n_feat * 4 <= FEATURE_MEMORY:
        # one pass over the scan: every pattern's features kept, the PCA fitted on the sample's
        features = np.empty((n_rows, n_cols, n_feat), np.float32)
        for r, row_features, bright_row in stream:
            features[r], bright[r] = row_features, bright_row
            done((r + 1) * n_cols, n_rows * n_cols)
        KMeans, IncrementalPCA = sklearn()
        pca = IncrementalPCA(n_components=fitted)
        with threadpool_limits(limits=1):  # again: scikit-learn's OpenMP loaded after the first limit
            _fit_pca(pca, (features[r] for r in sample_rows), batch)
            for r in range(n_rows):
                scores[r] = pca.transform(features[r])
        del features
    else:  # the sample's rows (and their pooling neighbours) read first, then every row streamed
        KMeans, IncrementalPCA = sklearn()
        pca = IncrementalPCA(n_components=fitted)
        total_work = (len(sample_rows) + n_rows) * n_cols
        sample = (cluster_features(scan, (r, r + 1), bad_pixels, bin, pool, shifts, keep)[0] for r in sample_rows)
        with threadpool_limits(limits=1):
            _fit_pca(pca, sample, batch, lambda i: done((i + 1) * n_cols, total_work))
            for r, row_features, bright_row in stream:
                scores[r], bright[r] = pca.transform(row_features), bright_row
                done((len(sample_rows) + r + 1) * n_cols, total_work)
    n_use = int(n_components) if n_components else signal_components(pca.explained_variance_)
    logger.debug("cluster: PCA fitted on %d patterns, %d of %d components used", len(sample_rows) * n_cols, n_use, fitted)
    flat = scores.reshape(-1, fitted)[:, :n_use].astype(np.float64)
    with threadpool_limits(limits=1):
        km = KMeans(n_clusters=int(k), n_init=10, random_state=int(seed)).fit(flat)
    sizes = np.bincount(km.labels_, minlength=int(k))
    order = np.argsort(-sizes, kind="stable")  # cluster 0 = the largest
    centres = km.cluster_centers_[order]
    d2 = ((flat[:, None, :] - centres[None]) ** 2).sum(-1)
    scale = max(float(d2.min(1).mean()), 1e-12)
    prob = np.exp(-(d2 - d2.min(1, keepdims=True)) / scale)
    prob /= prob.sum(1, keepdims=True)
    labels = d2.argmin(1).reshape(n_rows, n_cols).astype(np.int64)
    classes = tuple(f"cluster {i}" for i in range(int(k)))
    prediction = Prediction(labels, prob.reshape(n_rows, n_cols, -1).astype(np.float32), classes,
                            bright.astype(np.float32))
    info = {"method": "cluster", "k": int(k), "pool": int(pool), "bin": bin, "descan": bool(descan),
            "fitted_on_patterns": int(len(sample_rows) * n_cols),
            "n_components_fitted": fitted, "n_components_used": n_use,
            "explained_variance_ratio": [float(v) for v in pca.explained_variance_ratio_],
            "cluster_sizes": [int(sizes[i]) for i in order], "bad_pixels": len(bad_pixels)}
    arrays = {"scores": scores, "distances": np.sqrt(d2).reshape(n_rows, n_cols, -1).astype(np.float32)}
    if shifts is not None:
        arrays["descan_shift"] = shifts.astype(np.float32)
    return BaselineResult("cluster", prediction, arrays, info)


# --------------------------------------------------------------------------- running and saving


def run_baseline(scan, method: str = "vdf", **options) -> BaselineResult:
    """Dispatch to :func:`vdf_baseline` or :func:`cluster_baseline` by name."""
    if method == "vdf":
        return vdf_baseline(scan, **options)
    if method == "cluster":
        return cluster_baseline(scan, **options)
    raise GhostmapError(f"unknown baseline method '{method}'; choose one of {', '.join(METHODS)}")


def save_baseline(out_dir: str | Path, result: BaselineResult, title: str = "") -> dict[str, Path]:
    """Write the predict-format outputs plus ``baseline.npz`` (and for vdf ``contrast.png``, ``apertures.json``)."""
    from .outputs import save_prediction

    out_dir = Path(out_dir)
    paths = save_prediction(out_dir, result.prediction, title=f"{title} ({result.method} baseline)".strip())
    paths["baseline"] = out_dir / BASELINE_FILE
    with atomic_path(paths["baseline"]) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **result.arrays, info=np.array(json.dumps(result.info)))
    if result.apertures is not None:
        paths["apertures"] = out_dir / APERTURES_FILE
        write_text(paths["apertures"], json.dumps(result.apertures.to_dict(), indent=1) + "\n")
    if "contrast" in result.arrays:
        paths["contrast"] = out_dir / CONTRAST_FILE
        _save_contrast_png(paths["contrast"], result.arrays["contrast"], result.info, title)
    return paths


def _save_contrast_png(path: Path, contrast: np.ndarray, info: dict, title: str) -> None:
    from matplotlib.figure import Figure

    rows, cols = contrast.shape
    fig = Figure(figsize=(10, 10 * rows / cols + 1.2) if cols > 2 * rows else (6, 6 * rows / cols + 1))
    ax = fig.subplots()
    lo, hi = np.nanpercentile(contrast, [1, 99])
    im = ax.imshow(contrast, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.03, label="(h - v) / total")
    ax.set_title("ghost-disk contrast: horizontal (bright) vs vertical (dark)" + (f" - {title}" if title else ""))
    ax.set_xlabel("scan column (x)")
    ax.set_ylabel("scan row (y)")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
