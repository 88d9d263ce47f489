"""Tests for the synthetic boracite scan simulator."""

from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest
from scipy import ndimage

from ghostmap.errors import GhostmapError
from ghostmap.simulate import (
    CLASSES,
    SimulationParams,
    domain_map,
    drift_field,
    ghost_weights,
    noiseless_pattern,
    simulate_patterns,
    simulate_scan,
    write_simulated_scan,
    write_truth_csv,
)


@pytest.fixture(scope="module")
def full_scan_64():
    """The paper's 34 x 206 scan at a 64 x 64 detector (fast), default parameters."""
    return simulate_scan((34, 206), detector=64, seed=3)


def test_shapes_and_dtypes():
    data, truth = simulate_scan((6, 9), detector=64, seed=1)
    assert data.shape == (6, 9, 64, 64)
    assert data.dtype == np.uint16
    assert truth.shape == (6, 9)
    assert truth.dtype.kind == "U"
    assert set(np.unique(truth)) <= set(CLASSES)
    block = simulate_patterns(truth, slice(2, 4), SimulationParams(detector=64), seed=1)
    assert block.shape == (2, 9, 64, 64) and block.dtype == np.uint16


@pytest.mark.parametrize("det", [64, 100, 512])
def test_detector_sizes(det):
    truth = np.array([["horizontal", "vertical", "none"]])
    data, _ = simulate_scan(detector=det, truth=truth, seed=0)
    assert data.shape == (1, 3, det, det)
    assert np.median(data) <= 5 and np.percentile(data, 99) <= 40


def test_determinism_and_block_independence():
    a, ta = simulate_scan((6, 11), detector=64, seed=5)
    b, tb = simulate_scan((6, 11), detector=64, seed=5)
    c, _ = simulate_scan((6, 11), detector=64, seed=6)
    assert np.array_equal(a, b) and np.array_equal(ta, tb)
    assert not np.array_equal(a, c)
    params = SimulationParams(detector=64)
    whole = simulate_patterns(ta, range(0, 6), params, seed=5)
    split = np.concatenate([simulate_patterns(ta, range(0, 2), params, seed=5),
                            simulate_patterns(ta, slice(2, 6), params, seed=5)])
    assert np.array_equal(whole, a)
    assert np.array_equal(whole, split)
    # one row alone equals the same row inside a block
    assert np.array_equal(simulate_patterns(ta, range(4, 5), params, seed=5)[0], a[4])


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_domain_map_geometry(seed):
    truth = domain_map((34, 206), seed=seed)
    assert truth.shape == (34, 206) and truth.dtype == np.dtype("<U10")
    assert set(np.unique(truth)) == set(CLASSES)
    h = truth == "horizontal"
    v = truth == "vertical"
    near_v = ndimage.binary_dilation(v, np.ones((3, 3), bool))
    assert not (h & near_v).any(), "a horizontal position touches a vertical one"
    assert h.mean() > 0.1 and v.mean() > 0.1
    assert 0.02 < (truth == "none").mean() < 0.3
    n_domains = ndimage.label(h)[1] + ndimage.label(v)[1]
    assert n_domains >= 3
    # walls are a few positions wide: along each scan row the 'none' runs are 2..~8 long
    runs = []
    for row in truth:
        n = 0
        for lab in list(row) + ["end"]:
            if lab == "none":
                n += 1
            elif n:
                runs.append(n)
                n = 0
    assert 2 <= np.median(runs) <= 8
    # deterministic
    assert np.array_equal(truth, domain_map((34, 206), seed=seed))


def test_ghost_weights_fade_in_walls():
    truth = domain_map((34, 206), seed=0)
    w = ghost_weights(truth)
    assert np.all(w[truth == "horizontal"] == [1, 0])
    assert np.all(w[truth == "vertical"] == [0, 1])
    wall = w[truth == "none"]
    assert wall.max() <= SimulationParams().wall_ghost + 1e-12
    # wall patterns carry a weak mix of both polarizations
    assert np.mean((wall[:, 0] > 0.01) & (wall[:, 1] > 0.01)) > 0.5


def test_ghost_signal_present_but_faint():
    params = SimulationParams(detector=64, drift=0.0)
    data, truth = simulate_scan((16, 60), detector=64, seed=2, drift=0.0)
    h = data[truth == "horizontal"].astype(np.float64)
    v = data[truth == "vertical"].astype(np.float64)
    assert len(h) > 100 and len(v) > 100
    mh, mv = h.mean(0), v.mean(0)
    diff = mh - mv
    se = np.sqrt(mh / len(h) + mv / len(v)) + 1e-9
    expected = noiseless_pattern("horizontal", params, seed=2) - noiseless_pattern("vertical", params, seed=2)
    ghost = np.abs(expected) > 0.3 * np.abs(expected).max()
    # averaged over many patterns the ghost structure stands far above the noise ...
    z = diff / se
    assert np.abs(z[ghost]).max() > 6
    matched = (diff * expected).sum() / np.sqrt((se**2 * expected**2).sum())
    assert matched > 30
    assert np.corrcoef(diff.ravel(), expected.ravel())[0, 1] > 0.5
    # ... while in one pattern a ghost adds less than the Poisson noise at every pixel
    none = noiseless_pattern("none", params, seed=2)
    for label in ("horizontal", "vertical"):
        g = noiseless_pattern(label, params, seed=2) - none
        assert g.max() < 1.5
        assert np.all(g[g > 0] < np.sqrt(none[g > 0]))


def test_noiseless_totals_do_not_depend_on_class():
    params = SimulationParams(detector=128)
    totals = [noiseless_pattern(c, params).sum() for c in CLASSES]
    assert np.allclose(totals, totals[0], rtol=1e-9)


def test_total_counts_do_not_separate_classes(full_scan_64):
    data, truth = full_scan_64
    totals = data.reshape(data.shape[0] * data.shape[1], -1).sum(1, dtype=np.int64)
    means = [totals[(truth == c).ravel()].mean() for c in CLASSES]
    assert max(means) / min(means) < 1.05
    # the thickness variation gives a virtual bright field some contrast
    det = data.shape[-1]
    c = det // 2
    vbf = data[:, :, c - 2:c + 3, c - 2:c + 3].sum(axis=(2, 3), dtype=np.float64)
    assert vbf.std() / vbf.mean() > 0.02


def test_hot_pixels_and_dead_column_fixed(full_scan_64):
    data, _ = full_scan_64
    params = SimulationParams(detector=64)
    flat = data.reshape(-1, 64, 64)
    lo = flat.min(axis=0)
    hot = np.argwhere(lo > 500)
    assert len(hot) == params.n_hot_pixels
    assert np.all(flat[:, hot[:, 0], hot[:, 1]] >= 500)
    col_max = flat.max(axis=(0, 1))
    dead = np.flatnonzero(col_max == 0)
    assert len(dead) == 1
    assert np.all(flat[:, :, dead[0]] == 0)
    # apart from the hot pixels, counts are K3-like
    normal = np.ones((64, 64), bool)
    normal[hot[:, 0], hot[:, 1]] = False
    sample = flat[::50][:, normal]
    assert np.median(sample) <= 4 and np.percentile(sample, 99) <= 30


@pytest.mark.parametrize("suffix", [".npy", ".h5"])
def test_write_matches_memory(tmp_path, suffix):
    ref, truth_ref = simulate_scan((5, 7), detector=64, seed=9)
    calls = []
    target = tmp_path / f"scan{suffix}"
    truth = write_simulated_scan(target, (5, 7), detector=64, seed=9, progress=lambda d, n: calls.append((d, n)))
    assert np.array_equal(truth, truth_ref)
    assert calls[-1] == (5, 5) and len(calls) == 5
    if suffix == ".npy":
        data = np.load(target)
    else:
        with h5py.File(target, "r") as f:
            ds = f["data"]
            assert ds.chunks == (1, 7, 64, 64)
            assert ds.compression is None
            data = ds[()]
    assert data.dtype == np.uint16
    assert np.array_equal(data, ref)
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_write_rejects_unknown_format(tmp_path):
    with pytest.raises(GhostmapError):
        write_simulated_scan(tmp_path / "scan.tif", (2, 2), detector=32)
    assert list(tmp_path.iterdir()) == []


def _central_com(patterns: np.ndarray, params: SimulationParams) -> np.ndarray:
    img = patterns.astype(np.float64).mean(axis=0)
    det = img.shape[-1]
    cy = det / 2 - 0.5 + params.center_offset[0]
    cx = det / 2 - 0.5 + params.center_offset[1]
    yy, xx = np.mgrid[0:det, 0:det]
    window = np.hypot(yy - cy, xx - cx) < 1.3 * params.radius + 1.5
    w = np.clip(img - 20.0, 0, None) * window
    return np.array([(w * yy).sum(), (w * xx).sum()]) / w.sum()


@pytest.mark.parametrize("drift", [0.0, 2.0])
def test_drift_moves_central_beam(drift):
    params = SimulationParams(detector=128, drift=drift)
    data, truth = simulate_scan((4, 40), detector=128, seed=4, drift=drift)
    start = _central_com(data[:2, :3].reshape(-1, 128, 128), params)
    end = _central_com(data[-2:, -3:].reshape(-1, 128, 128), params)
    field = drift_field(truth.shape, params, seed=4)
    expected = field[-2:, -3:].mean(axis=(0, 1)) - field[:2, :3].mean(axis=(0, 1))
    moved = end - start
    assert np.linalg.norm(moved - expected) < 0.2
    if drift:
        assert abs(np.linalg.norm(moved) - np.linalg.norm(expected)) < 0.2
        full = np.linalg.norm(field[-1, -1] - field[0, 0])
        assert full == pytest.approx(drift, abs=1e-9)


def test_given_truth_and_validation(tmp_path):
    truth = np.full((3, 5), "none", dtype="<U10")
    truth[:, :2] = "horizontal"
    truth[:, 4] = "vertical"
    data, out = simulate_scan(detector=32, truth=truth)
    assert data.shape == (3, 5, 32, 32)
    assert np.array_equal(out, truth)
    with pytest.raises(GhostmapError):
        simulate_scan(detector=32, truth=np.array([["up"]]))
    with pytest.raises(GhostmapError):
        simulate_scan((2, 2), detector=32, not_a_knob=1)
    with pytest.raises(GhostmapError):
        SimulationParams(detector=8)


def test_write_truth_csv(tmp_path):
    truth = domain_map((4, 6), seed=0)
    truth[1, 3] = "vertical"
    path = tmp_path / "truth.csv"
    write_truth_csv(path, truth)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["x", "y", "label"]
    assert len(rows) == 1 + truth.size
    lookup = {(int(x), int(y)): lab for x, y, lab in rows[1:]}
    assert lookup[(3, 1)] == "vertical"
    assert all(lookup[(x, y)] == truth[y, x] for y in range(4) for x in range(6))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["truth.csv"]
