"""Synthetic boracite-like 4D-STEM scans with a known domain map.

What is modelled: a scan of convergent-beam diffraction patterns from a crystal split into
in-plane polarization domains ('horizontal', 'vertical') separated by domain walls a few
probe positions wide ('none'). Every pattern shows tightly packed Bragg disks (spacing only
~2.7 disk radii) on a slightly rotated square lattice, a bright central disk, a Gaussian
fall-off of disk intensity with a fixed random "dynamical" factor per reflection, and a weak
diffuse background. Polarized domains add faint *ghost* disks halfway between neighbouring
Bragg disks, along the lattice's first axis (~detector x, columns) for 'horizontal' and its
second axis (~detector y, rows) for 'vertical'; a ghost adds well under one count per pixel,
below the Poisson noise of a single pattern. Inside walls the ghost signal of both
neighbouring domains fades with distance into the wall, so wall patterns are ambiguous but
labelled 'none'. Expected counts are K3-like in counting mode (most pixels 0-20 counts),
every pattern's expected total is the same whatever its class (the ghost intensity is taken
from the rest of the pattern), and a per-pattern beam-current jitter, a smooth thickness
variation (thicker: dimmer central disk, brighter scattering, so a virtual bright field shows
contrast unrelated to the domains) and a smooth descan drift of the whole pattern (up to
``drift`` pixels across the scan, sub-pixel) are applied before Poisson noise. The detector
has a few hot pixels (~1500 counts in every pattern) and one dead column (always 0).

What is not modelled: real boracite structure factors, dynamical diffraction inside the disks
(disks are uniform with soft edges), the six polarization variants (only two in-plane
directions), the alternating polarization inside real walls, inelastic/Kikuchi features,
detector MTF, coincidence loss, cosmic rays, scan distortions or probe-position jitter, and
sample damage. It is a test fixture and benchmark with ground truth, not a physics claim.

Expected counts *per pixel* do not depend on ``detector``, so a 128 x 128 pattern holds
1/16 of the electrons of a 512 x 512 one; to mimic a 512 pattern binned to 128, pass
``dose=16``. Drift and thickness vary with scan position, and domains sit at particular scan
positions, so (as in real data) class means differ slightly by drift too; compare classes
with ``drift=0`` to see the ghost signal alone.

Every pattern row is drawn from its own random stream seeded from ``(seed, row)``, so a scan
is identical however it is split into row blocks, in memory or streamed to disk.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage

from ghostmap.atomic import atomic_path, write_text
from ghostmap.errors import GhostmapError

CLASSES = ("horizontal", "vertical", "none")

# Tags that keep the independent random streams apart.
_TAG_DOMAINS = 11
_TAG_SCENE = 12
_TAG_ROW = 13


@dataclass(frozen=True)
class SimulationParams:
    """Every knob of the simulator. Lengths on the detector are in detector pixels.

    ``None`` for ``disk_radius`` / ``lattice_spacing`` means "scaled with ``detector``"
    (radius 0.025 x detector, spacing 2.7 x radius: 3.2 / 8.6 px at 128, 12.8 / 34.6 px at 512).
    """

    detector: int = 128                 # pattern is detector x detector pixels
    disk_radius: float | None = None    # Bragg / ghost disk radius (convergence angle)
    lattice_spacing: float | None = None
    lattice_rotation_deg: float = 3.0   # lattice axes vs detector axes
    center_offset: tuple[float, float] = (0.3, -0.2)  # (dy, dx) of the central beam from the detector centre
    edge_width: float = 1.0             # soft disk edge, pixels
    # Intensities (expected counts per pixel, before ``dose``)
    dose: float = 1.0                   # overall multiplier of all expected counts (not hot pixels)
    central_counts: float = 45.0        # central (000) disk
    disk_counts: float = 14.0           # Bragg disks, before the envelope and per-disk factor
    envelope_width: float = 0.25        # Gaussian sigma of the disk-intensity fall-off, x detector
    disk_intensity_spread: float = 0.35 # log-normal sigma of the fixed per-reflection factor
    background_counts: float = 2.5      # diffuse background at the pattern centre
    background_floor: float = 0.3       # background far from the centre, x background_counts
    background_width: float = 0.2       # Lorentzian half-width of the background, x detector
    # Ghost disks
    ghost_strength: float = 0.04        # ghost / Bragg intensity at the same scattering angle
    ghost_radius_scale: float = 1.0     # ghost radius / disk radius
    wall_ghost: float = 0.35            # ghost weight of a wall position next to a domain
    wall_decay: float = 1.0             # e-folding of the wall ghost weight, probe positions
    wall_width: float = 3.0             # width of generated walls, probe positions
    # Scan-dependent effects
    drift: float = 2.0                  # descan drift first-to-last probe position, pixels
    drift_angle_deg: float = 35.0       # direction of the drift on the detector (0 = +x)
    drift_quantum: float = 0.125        # drift is rendered in steps of this many pixels
    thickness_variation: float = 0.08   # relative, smooth across the scan
    dose_jitter: float = 0.02           # relative per-pattern beam-current noise
    # Detector defects
    n_hot_pixels: int = 5
    hot_pixel_counts: float = 1500.0
    dead_column: int | str | None = "auto"  # "auto": a seeded column; int: that column; None: none

    def __post_init__(self) -> None:
        if not isinstance(self.detector, (int, np.integer)) or not 16 <= self.detector <= 4096:
            raise GhostmapError(f"detector must be an integer from 16 to 4096 pixels, not {self.detector!r}")
        for name in ("dose", "central_counts", "disk_counts", "background_counts", "ghost_strength",
                     "wall_ghost", "drift", "thickness_variation", "dose_jitter", "hot_pixel_counts"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise GhostmapError(f"{name} must be a finite number >= 0, not {value!r}")
        for name in ("envelope_width", "background_width", "wall_decay", "drift_quantum", "edge_width"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise GhostmapError(f"{name} must be a finite number > 0, not {value!r}")
        if self.thickness_variation >= 1:
            raise GhostmapError("thickness_variation must be below 1")
        if self.n_hot_pixels < 0:
            raise GhostmapError("n_hot_pixels must be >= 0")
        dc = self.dead_column
        if not (dc is None or dc == "auto" or (isinstance(dc, (int, np.integer)) and 0 <= dc < self.detector)):
            raise GhostmapError(f"dead_column must be 'auto', None or a column 0..{self.detector - 1}, not {dc!r}")
        if self.disk_radius is not None and not 0.5 <= self.disk_radius <= self.detector / 4:
            raise GhostmapError(f"disk_radius {self.disk_radius} is outside 0.5..detector/4")
        if self.lattice_spacing is not None and self.lattice_spacing <= 2 * self.radius:
            raise GhostmapError("lattice_spacing must exceed the disk diameter")

    @property
    def radius(self) -> float:
        return float(self.disk_radius) if self.disk_radius is not None else 0.025 * self.detector

    @property
    def spacing(self) -> float:
        return float(self.lattice_spacing) if self.lattice_spacing is not None else 2.7 * self.radius

    @classmethod
    def from_kwargs(cls, detector: int = 128, **params) -> "SimulationParams":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise GhostmapError(f"unknown simulation parameter(s): {', '.join(unknown)}")
        if "center_offset" in params:
            params["center_offset"] = tuple(float(v) for v in params["center_offset"])
        return cls(detector=detector, **params)


# --------------------------------------------------------------------------- domains


def domain_map(scan_shape: tuple[int, int] = (34, 206), seed: int = 0, wall_width: float = 3.0,
               domain_size: float | None = None, n_waves: int = 3, roughness: float = 0.3) -> np.ndarray:
    """A (rows, cols) '<U10' map of 'horizontal' / 'vertical' domains and 'none' walls.

    A smooth random field (``n_waves`` low-frequency plane waves whose wave vectors lie within
    60 degrees of the scan's long axis, so walls run diagonally across it, plus ``roughness``
    of Gaussian-filtered noise) is thresholded at zero; positions closer than
    ``wall_width / 2`` to the zero contour become 'none'. ``domain_size`` (probe positions,
    default long side / 4.5) is the typical domain length. No 'horizontal' position is ever
    8-adjacent to a 'vertical' one.
    """
    if len(scan_shape) != 2 or min(int(n) for n in scan_shape) < 2:
        raise GhostmapError(f"a simulated scan needs at least 2 x 2 probe positions, not {tuple(scan_shape)}")
    rows, cols = (int(v) for v in scan_shape)
    if rows < 1 or cols < 1:
        raise GhostmapError(f"scan shape must be positive, not {scan_shape}")
    if wall_width < 0:
        raise GhostmapError("wall_width must be >= 0")
    long_side = max(rows, cols)
    size = float(domain_size) if domain_size is not None else max(long_side / 4.5, 2.0)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    # along = coordinate on the long axis, across = on the short axis
    along, across = (xx, yy) if cols >= rows else (yy, xx)
    best = None
    for attempt in range(25):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), _TAG_DOMAINS, attempt]))
        field = np.zeros((rows, cols))
        for _ in range(max(int(n_waves), 1)):
            angle = rng.uniform(-np.pi / 3, np.pi / 3)
            wavelength = 2 * size * rng.uniform(0.7, 1.4)
            k = 2 * np.pi / wavelength
            field += rng.uniform(0.6, 1.0) * np.cos(k * (np.cos(angle) * along + np.sin(angle) * across)
                                                     + rng.uniform(0, 2 * np.pi))
        if roughness > 0:
            noise = ndimage.gaussian_filter(rng.standard_normal((rows, cols)), sigma=max(size / 4, 1.0),
                                            mode="reflect")
            noise /= noise.std() + 1e-12
            field += roughness * field.std() * noise
        gy, gx = np.gradient(field)
        grad = np.hypot(gy, gx)
        distance = np.abs(field) / np.maximum(grad, 1e-9 * (np.abs(field).max() + 1e-12))
        labels = np.where(field > 0, "horizontal", "vertical").astype("<U10")
        labels[distance < wall_width / 2] = "none"
        _separate(labels)
        counts = {c: int((labels == c).sum()) for c in CLASSES}
        ok = counts["horizontal"] >= 0.1 * labels.size and counts["vertical"] >= 0.1 * labels.size
        if ok:
            return labels
        if best is None:
            best = labels
    return best


def _separate(labels: np.ndarray) -> None:
    """Turn into 'none' every h/v position that is 8-adjacent to the other polarization."""
    kernel = np.ones((3, 3), bool)
    while True:
        h = labels == "horizontal"
        v = labels == "vertical"
        clash = (h & ndimage.binary_dilation(v, kernel)) | (v & ndimage.binary_dilation(h, kernel))
        if not clash.any():
            return
        labels[clash] = "none"


def _check_truth(truth) -> np.ndarray:
    truth = np.asarray(truth)
    if truth.ndim != 2 or truth.size == 0:
        raise GhostmapError(f"truth must be a non-empty (rows, cols) array of class names, not shape {truth.shape}")
    truth = truth.astype("<U10")
    bad = sorted(set(np.unique(truth)) - set(CLASSES))
    if bad:
        raise GhostmapError(f"truth holds unknown class name(s) {bad}; expected {list(CLASSES)}")
    return truth


def ghost_weights(truth: np.ndarray, params: SimulationParams | None = None) -> np.ndarray:
    """(rows, cols, 2) ghost weights (horizontal, vertical) used for each probe position.

    1 for the position's own polarization inside domains; inside 'none' regions each weight is
    ``wall_ghost * exp(-(d - 1) / wall_decay)`` with d the distance (probe positions) to the
    nearest position of that polarization.
    """
    params = params or SimulationParams()
    truth = _check_truth(truth)
    out = np.zeros(truth.shape + (2,), np.float64)
    none = truth == "none"
    for i, name in enumerate(("horizontal", "vertical")):
        mask = truth == name
        out[..., i][mask] = 1.0
        if mask.any() and none.any():
            d = ndimage.distance_transform_edt(~mask)
            out[..., i][none] = params.wall_ghost * np.exp(-(d[none] - 1.0) / params.wall_decay)
    return out


def drift_field(scan_shape: tuple[int, int], params: SimulationParams | None = None, seed: int = 0) -> np.ndarray:
    """(rows, cols, 2) descan drift (dy, dx) in detector pixels at every probe position.

    Linear in the scan position (descan error) along ``drift_angle_deg``, from ``-drift/2`` at
    the first position to ``+drift/2`` at the last, plus a small smooth wobble that vanishes at
    both ends.
    """
    params = params or SimulationParams()
    rows, cols = scan_shape
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _TAG_SCENE, 1]))
    phases = rng.uniform(0, 2 * np.pi, 2)
    r = np.arange(rows)[:, None] / max(rows - 1, 1)
    c = np.arange(cols)[None, :] / max(cols - 1, 1)
    p = 0.5 * r + 0.5 * c if rows > 1 and cols > 1 else r + c
    theta = np.deg2rad(params.drift_angle_deg)
    bump = 4 * p * (1 - p)
    dy = params.drift * ((p - 0.5) * np.sin(theta) + 0.08 * bump * np.sin(3 * np.pi * p + phases[0]))
    dx = params.drift * ((p - 0.5) * np.cos(theta) + 0.08 * bump * np.sin(2 * np.pi * p + phases[1]))
    return np.stack(np.broadcast_arrays(dy, dx), axis=-1).astype(np.float64)


def thickness_field(scan_shape: tuple[int, int], params: SimulationParams | None = None, seed: int = 0) -> np.ndarray:
    """(rows, cols) relative thickness change f in [-thickness_variation, +thickness_variation].

    A wedge (FIB lamellae are wedge-shaped) plus a smooth random bump; the central disk is
    scaled by (1 - f), everything scattered by (1 + f).
    """
    params = params or SimulationParams()
    rows, cols = scan_shape
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _TAG_SCENE, 2]))
    noise = ndimage.gaussian_filter(rng.standard_normal((rows, cols)), sigma=max(rows, cols) / 6, mode="reflect")
    noise = (noise - noise.mean()) / (noise.std() + 1e-12)
    yy, xx = np.mgrid[0:rows, 0:cols]
    angle = rng.uniform(0, 2 * np.pi)
    wedge = np.cos(angle) * xx / max(cols, 1) + np.sin(angle) * yy / max(rows, 1)
    wedge = (wedge - wedge.mean()) / (wedge.std() + 1e-12)
    field = wedge + 0.7 * noise
    peak = np.abs(field).max()
    if peak > 0:
        field = field / peak
    return params.thickness_variation * field


# --------------------------------------------------------------------------- rendering


class _Scene:
    """Everything fixed for one (params, seed, truth): detector, lattice factors, fields, caches."""

    def __init__(self, truth: np.ndarray, params: SimulationParams, seed: int):
        self.truth = truth
        self.params = params
        self.seed = int(seed)
        p = params
        det = p.detector
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _TAG_SCENE, 0]))
        self.n_index = int(np.ceil(det * 1.5 / p.spacing)) + 3
        size = 2 * self.n_index + 1
        self.disk_factor = np.exp(p.disk_intensity_spread * rng.standard_normal((size, size))
                                  - 0.5 * p.disk_intensity_spread ** 2)
        self.ghost_factor = {
            "h": np.exp(p.disk_intensity_spread * rng.standard_normal((size, size)) - 0.5 * p.disk_intensity_spread ** 2),
            "v": np.exp(p.disk_intensity_spread * rng.standard_normal((size, size)) - 0.5 * p.disk_intensity_spread ** 2),
        }
        # Detector defects
        if p.dead_column == "auto":
            # away from the centre and the edges, so it always crosses disks
            half = det // 2
            offset = int(rng.integers(max(det // 8, 2), max(det * 3 // 8, 3)))
            self.dead_column = int(half + offset * (1 if rng.random() < 0.5 else -1))
        else:
            self.dead_column = None if p.dead_column is None else int(p.dead_column)
        flat = rng.choice(det * det, size=min(p.n_hot_pixels, det * det), replace=False)
        hy, hx = np.unravel_index(flat, (det, det))
        if self.dead_column is not None:
            hx = np.where(hx == self.dead_column, (hx + 1) % det, hx)
        self.hot_pixels = (hy.astype(np.intp), hx.astype(np.intp))
        self.hot_values = p.hot_pixel_counts * rng.uniform(0.7, 1.5, size=hy.size)
        # Scan fields
        shape = truth.shape
        self.weights = ghost_weights(truth, p)
        self.drift = drift_field(shape, p, self.seed)
        self.thickness = thickness_field(shape, p, self.seed)
        self._cache: OrderedDict = OrderedDict()
        bytes_per_key = 4 * det * det * 8
        self._cache_size = int(np.clip(192 * 2**20 // bytes_per_key, 8, 256))
        yy, xx = np.mgrid[0:det, 0:det]
        self._yy = yy.astype(np.float64)
        self._live = np.ones((det, det))
        self._live[self.hot_pixels] = 0.0
        if self.dead_column is not None:
            self._live[:, self.dead_column] = 0.0
        self._xx = xx.astype(np.float64)

    # ----- noiseless components
    def components(self, dy: float, dx: float):
        """(C, S, Gh, Gv, sums) for a pattern shifted by (dy, dx) pixels, cached by quantized shift."""
        q = self.params.drift_quantum
        key = (int(round(dy / q)), int(round(dx / q)))
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        value = self._render(key[0] * q, key[1] * q)
        self._cache[key] = value
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return value

    def _render(self, dy: float, dx: float):
        p = self.params
        det = p.detector
        cy = det / 2 - 0.5 + p.center_offset[0] + dy
        cx = det / 2 - 0.5 + p.center_offset[1] + dx
        y = self._yy - cy
        x = self._xx - cx
        a = p.spacing
        phi = np.deg2rad(p.lattice_rotation_deg)
        # lattice coordinates (u along a1 ~ detector x, v along a2 ~ detector y)
        u = (x * np.cos(phi) + y * np.sin(phi)) / a
        v = (-x * np.sin(phi) + y * np.cos(phi)) / a
        r = p.radius
        sigma = p.envelope_width * det
        n = self.n_index

        def disks(du: float, dv: float):
            uu = u - du
            vv = v - dv
            iu = np.rint(uu)
            iv = np.rint(vv)
            dist = a * np.hypot(uu - iu, vv - iv)
            return iu, iv, dist

        def coverage(dist, radius):
            return np.clip((radius - dist) / p.edge_width + 0.5, 0.0, 1.0)

        def envelope(gu, gv):
            g2 = (a * a) * (gu * gu + gv * gv)
            return np.exp(-g2 / (2 * sigma * sigma))

        def lookup(table, iu, iv):
            return table[np.clip(iu.astype(np.intp) + n, 0, 2 * n), np.clip(iv.astype(np.intp) + n, 0, 2 * n)]

        iu, iv, dist = disks(0.0, 0.0)
        cov = coverage(dist, r)
        central = (iu == 0) & (iv == 0)
        C = np.where(central, cov, 0.0)
        bragg = np.where(central, 0.0, cov * envelope(iu, iv) * lookup(self.disk_factor, iu, iv))
        q2 = x * x + y * y
        bw = p.background_width * det
        bg = p.background_counts * (p.background_floor + (1 - p.background_floor) / (1 + q2 / (bw * bw)))
        S = p.disk_counts * bragg + bg
        rg = r * p.ghost_radius_scale
        ghosts = []
        for name, (du, dv) in (("h", (0.5, 0.0)), ("v", (0.0, 0.5))):
            gu, gv, gdist = disks(du, dv)
            ghosts.append(p.ghost_strength * p.disk_counts * coverage(gdist, rg)
                          * envelope(gu + du, gv + dv) * lookup(self.ghost_factor[name], gu, gv))
        Gh, Gv = ghosts
        live = self._live  # totals over the pixels that really count
        sums = (float((S * live).sum()), float((Gh * live).sum()), float((Gv * live).sum()))
        return C, S, Gh, Gv, sums

    def expected(self, row: int, col: int, jitter: float = 1.0, out: np.ndarray | None = None) -> np.ndarray:
        """Expected counts (float64, det x det) at one probe position, hot pixels included."""
        p = self.params
        dy, dx = self.drift[row, col]
        C, S, Gh, Gv, (sS, sGh, sGv) = self.components(dy, dx)
        wh, wv = self.weights[row, col]
        f = self.thickness[row, col]
        scatter = (1.0 + f) * sS / (sS + wh * sGh + wv * sGv)  # class-independent total
        scale = p.dose * jitter
        if out is None:
            out = np.empty_like(C)
        np.multiply(C, scale * (1.0 - f) * p.central_counts, out=out)
        out += (scale * scatter) * S
        if wh > 0:
            out += (scale * scatter * wh) * Gh
        if wv > 0:
            out += (scale * scatter * wv) * Gv
        if self.hot_pixels[0].size:
            out[self.hot_pixels] = self.hot_values
        if self.dead_column is not None:
            out[:, self.dead_column] = 0.0
        return out

    def render_row(self, row: int, out: np.ndarray, noise_seed: int | None = None) -> None:
        """Write the noisy uint16 patterns of one scan row into ``out`` (cols, det, det).

        ``noise_seed`` (default: the scene's seed) draws other noise for the same sample.
        """
        p = self.params
        cols = self.truth.shape[1]
        det = p.detector
        seed = self.seed if noise_seed is None else int(noise_seed)
        rng = np.random.default_rng(np.random.SeedSequence([seed, _TAG_ROW, int(row)]))
        jitter = np.clip(1.0 + p.dose_jitter * rng.standard_normal(cols), 0.5, 1.5)
        chunk = max(1, min(cols, (32 * 2**20) // (det * det * 8)))
        lam = np.empty((chunk, det, det), np.float64)
        for start in range(0, cols, chunk):
            stop = min(start + chunk, cols)
            for j, col in enumerate(range(start, stop)):
                self.expected(row, col, jitter[col], out=lam[j])
            counts = rng.poisson(lam[: stop - start])
            np.minimum(counts, 65535, out=counts)
            out[start:stop] = counts
            if self.dead_column is not None:
                out[start:stop, :, self.dead_column] = 0


_SCENES: OrderedDict = OrderedDict()


def _scene(truth: np.ndarray, params: SimulationParams, seed: int) -> _Scene:
    key = (params, int(seed), truth.shape, truth.tobytes())
    scene = _SCENES.get(key)
    if scene is None:
        scene = _Scene(truth, params, seed)
        _SCENES[key] = scene
        while len(_SCENES) > 2:
            _SCENES.popitem(last=False)
    else:
        _SCENES.move_to_end(key)
    return scene


def _row_range(rows, n_rows: int) -> range:
    if isinstance(rows, slice):
        return range(*rows.indices(n_rows))
    if isinstance(rows, range):
        if len(rows) and (min(rows) < 0 or max(rows) >= n_rows):
            raise GhostmapError(f"rows {rows} fall outside the scan's {n_rows} rows")
        return rows
    raise GhostmapError(f"rows must be a slice or a range, not {type(rows).__name__}")


# --------------------------------------------------------------------------- public API


def simulate_patterns(truth: np.ndarray, rows: slice | range, params: SimulationParams | None = None,
                      seed: int = 0, noise_seed: int | None = None) -> np.ndarray:
    """uint16 (n_rows, cols, det, det) patterns for a block of scan rows of ``truth``.

    Row ``r`` depends only on (truth, params, seed, r), never on how the scan is split.
    """
    truth = _check_truth(truth)
    params = params or SimulationParams()
    scene = _scene(truth, params, seed)
    row_range = _row_range(rows, truth.shape[0])
    det = params.detector
    out = np.empty((len(row_range), truth.shape[1], det, det), np.uint16)
    for i, row in enumerate(row_range):
        scene.render_row(row, out[i], noise_seed)
    return out


def noiseless_pattern(label: str = "none", params: SimulationParams | None = None, seed: int = 0,
                      shift: tuple[float, float] = (0.0, 0.0), weights: tuple[float, float] | None = None) -> np.ndarray:
    """Expected counts (float64, det x det) of one pattern of class ``label``.

    No thickness change, jitter or noise; hot pixels and the dead column included.
    ``weights`` = (horizontal, vertical) ghost weights overrides ``label``.
    """
    params = params or SimulationParams()
    if label not in CLASSES:
        raise GhostmapError(f"unknown class {label!r}; expected one of {list(CLASSES)}")
    scene = _Scene(np.array([[label]]), dataclasses.replace(params, drift=0.0, thickness_variation=0.0), seed)
    scene.drift[0, 0] = shift
    if weights is not None:
        scene.weights[0, 0] = weights
    return scene.expected(0, 0)


def _resolve(scan_shape, detector, seed, truth, params) -> tuple[np.ndarray, SimulationParams]:
    sim = SimulationParams.from_kwargs(detector=detector, **params)
    if truth is None:
        truth = domain_map(scan_shape, seed=seed, wall_width=sim.wall_width)
    else:
        truth = _check_truth(truth)  # its shape wins over scan_shape
    return truth, sim


def simulate_scan(scan_shape: tuple[int, int] = (34, 206), detector: int = 128, seed: int = 0,
                  truth: np.ndarray | None = None, noise_seed: int | None = None,
                  **params) -> tuple[np.ndarray, np.ndarray]:
    """Simulate a boracite-like 4D-STEM scan in memory, with its ground truth.

    Each pattern holds a lattice of Bragg disks, the faint ghost disks of its domain's
    polarization (none on the walls), descan drift, hot pixels and counting noise.

    Parameters
    ----------
    scan_shape : tuple of int, optional
        (rows, cols) of the scan; ignored when ``truth`` is given.
    detector : int, optional
        Detector size N (N x N pixels).
    seed : int, optional
        Seed of the domain map and of the noise (unless ``noise_seed``).
    truth : numpy.ndarray, optional
        (rows, cols) class names to simulate, e.g. from :func:`moving_domain_maps`; by
        default a random domain map is drawn.
    noise_seed : int, optional
        Seed of the counting noise alone (another scan of the same sample).
    **params
        Fields of :class:`ghostmap.simulate.SimulationParams` (``dose``, ``wall_width``, ...).

    Returns
    -------
    data : numpy.ndarray
        (rows, cols, N, N) uint16 counts.
    truth : numpy.ndarray
        (rows, cols) class names: ``none``, ``vertical`` or ``horizontal``.

    Raises
    ------
    GhostmapError
        For an unknown or invalid parameter.

    Examples
    --------
    >>> import ghostmap as gm
    >>> data, truth = gm.simulate_scan((6, 8), detector=32, seed=0)
    >>> data.shape, data.dtype, truth.shape
    ((6, 8, 32, 32), dtype('uint16'), (6, 8))
    """
    truth, sim = _resolve(scan_shape, detector, seed, truth, params)
    data = simulate_patterns(truth, range(truth.shape[0]), sim, seed, noise_seed)
    return data, truth


def write_simulated_scan(path: str | os.PathLike, scan_shape: tuple[int, int] = (34, 206), detector: int = 128,
                         seed: int = 0, truth: np.ndarray | None = None, fmt: str | None = None,
                         chunks: tuple[int, ...] | None = None,
                         progress: Callable[[int, int], None] | None = None, noise_seed: int | None = None,
                         **params) -> np.ndarray:
    """Stream a simulated scan to ``path`` (.npy or .h5/.hdf5) row by row; return the truth map.

    Memory stays bounded (one pattern row plus a few cached templates), so paper-size and
    larger scans can be made. The file is written under a temporary name beside ``path``
    and renamed over it only when complete.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write.
    scan_shape : tuple of int, optional
        (rows, cols) of the scan; ignored when ``truth`` is given.
    detector : int, optional
        Detector size N (N x N pixels).
    seed : int, optional
        Seed of the domain map and of the noise (unless ``noise_seed``).
    truth : numpy.ndarray, optional
        (rows, cols) class names to simulate; by default a random domain map is drawn.
    fmt : {'npy', 'h5'}, optional
        The format; by default from the suffix.
    chunks : tuple of int, optional
        HDF5 chunk shape (default: one pattern row per chunk). HDF5 data go to dataset
        ``/data``, uncompressed, with the parameters and seed as attributes.
    progress : callable, optional
        ``progress(rows_done, rows)`` after each scan row.
    noise_seed : int, optional
        Seed of the counting noise alone.
    **params
        Fields of :class:`ghostmap.simulate.SimulationParams`.

    Returns
    -------
    numpy.ndarray
        (rows, cols) class names: the ground truth.

    Raises
    ------
    GhostmapError
        For a suffix that names no supported format, or an invalid parameter.

    Examples
    --------
    >>> import ghostmap as gm
    >>> truth = gm.write_simulated_scan("sim/scan.npy", (34, 206), detector=128)  # doctest: +SKIP
    """
    path = Path(path)
    if fmt is None:
        suffix = path.suffix.lower()
        fmt = {".npy": "npy", ".h5": "h5", ".hdf5": "h5"}.get(suffix)
        if fmt is None:
            raise GhostmapError(f"cannot tell the format of {path.name}: use .npy, .h5 or .hdf5, or pass fmt")
    fmt = {"hdf5": "h5"}.get(fmt.lower(), fmt.lower())
    if fmt not in ("npy", "h5"):
        raise GhostmapError(f"unknown format {fmt!r}: use 'npy' or 'h5'")
    truth, sim = _resolve(scan_shape, detector, seed, truth, params)
    scene = _scene(truth, sim, seed)
    n_rows, n_cols = truth.shape
    det = sim.detector
    shape = (n_rows, n_cols, det, det)
    row_buf = np.empty((n_cols, det, det), np.uint16)
    with atomic_path(path) as tmp:
        if fmt == "npy":
            # plain writes of one row at a time: a memory map would count every page written as the
            # process's own (4 GB of resident memory for the paper-size scan)
            with open(tmp, "wb") as f:
                np.lib.format.write_array_header_1_0(
                    f, {"descr": np.lib.format.dtype_to_descr(row_buf.dtype), "fortran_order": False, "shape": shape})
                for row in range(n_rows):
                    scene.render_row(row, row_buf, noise_seed)
                    f.write(row_buf.data)
                    if progress is not None:
                        progress(row + 1, n_rows)
        else:
            import h5py

            with h5py.File(tmp, "w") as f:
                ds = f.create_dataset("data", shape=shape, dtype=np.uint16,
                                      chunks=tuple(chunks) if chunks is not None else (1, n_cols, det, det))
                ds.attrs["seed"] = int(seed)
                ds.attrs["simulation_params"] = json.dumps(dataclasses.asdict(sim))
                ds.attrs["axes"] = "scan_row, scan_col, detector_y, detector_x"
                for row in range(n_rows):
                    scene.render_row(row, row_buf, noise_seed)
                    ds[row] = row_buf
                    if progress is not None:
                        progress(row + 1, n_rows)
    return truth


def moving_domain_maps(scan_shape: tuple[int, int] = (34, 206), n_steps: int = 5, wall_shift: int = 2,
                       seed: int = 0, wall_width: float = 3.0, stripe_period: int | None = None) -> np.ndarray:
    """Domain maps of an in-situ series whose walls move ``wall_shift`` columns per step.

    By default one random map wider than the scan is seen through a window that slides
    ``wall_shift`` columns per step, so every wall moves rigidly; its displacement along
    its own normal is ``wall_shift`` times the cosine of its angle to the rows. With
    ``stripe_period`` the domains are vertical stripes (each half a period wide,
    'horizontal' then 'vertical', walls ``wall_width`` wide between them), whose walls move
    exactly ``wall_shift`` positions along their normal per step.

    Parameters
    ----------
    scan_shape : tuple of int, optional
        (rows, cols) of each scan.
    n_steps : int, optional
        Number of steps T.
    wall_shift : int, optional
        Scan columns the walls move per step.
    seed : int, optional
        Seed of the random domain map.
    wall_width : float, optional
        Width of the walls (class ``none``), in probe positions.
    stripe_period : int, optional
        Vertical stripes of this period instead of a random map.

    Returns
    -------
    numpy.ndarray
        (T, rows, cols) class names; pass each to :func:`simulate_scan` as ``truth``.

    Examples
    --------
    >>> import ghostmap as gm
    >>> maps = gm.moving_domain_maps((12, 48), n_steps=3, wall_shift=3, stripe_period=24)
    >>> maps.shape
    (3, 12, 48)
    """
    rows, cols = (int(v) for v in scan_shape)
    n_steps, wall_shift = int(n_steps), int(wall_shift)
    if n_steps < 1 or wall_shift < 0:
        raise GhostmapError("a moving series needs n_steps >= 1 and wall_shift >= 0")
    if stripe_period is None:
        wide = domain_map((rows, cols + wall_shift * (n_steps - 1)), seed=seed, wall_width=wall_width)
        return np.stack([wide[:, t * wall_shift : t * wall_shift + cols] for t in range(n_steps)])
    period = int(stripe_period)
    if period < 2 * (wall_width + 1):
        raise GhostmapError(f"stripe_period {period} is too short for walls {wall_width} wide")
    maps = []
    for t in range(n_steps):
        x = (np.arange(cols) - t * wall_shift) % period  # walls at x = 0 and period/2
        distance = np.minimum.reduce([np.abs(x - 0.0), np.abs(x - period / 2), np.abs(x - period)])
        row = np.where(x < period / 2, "horizontal", "vertical").astype("<U10")
        row[distance < wall_width / 2] = "none"
        maps.append(np.broadcast_to(row, (rows, cols)).copy())
    return np.stack(maps)


def write_truth_csv(path: str | os.PathLike, truth: np.ndarray) -> None:
    """Write ``truth`` as CSV with header x,y,label: one line per probe position, x = column, y = row."""
    truth = _check_truth(truth)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["x", "y", "label"])
    for y in range(truth.shape[0]):
        for x in range(truth.shape[1]):
            writer.writerow([x, y, truth[y, x]])
    write_text(path, buf.getvalue())
