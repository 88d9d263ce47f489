"""Tests for ghostmap.analysis: mean/max patterns, virtual images, the bright-field disk, describe."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ghostmap.analysis import bright_field_mask, describe, max_pattern, mean_pattern, virtual_image
from ghostmap.errors import GhostmapError
from ghostmap.io import as_scan, open_scan

SHAPE = (3, 5, 6, 4)


def index_array(shape=SHAPE, dtype=np.uint16) -> np.ndarray:
    """Each value encodes its own (r, c, i, j) position, so any axis mix-up shows."""
    r, c, i, j = np.indices(shape)
    return (((r * shape[1] + c) * shape[2] + i) * shape[3] + j).astype(dtype)


def test_mean_and_max_pattern():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 1000, size=(20, 7, 6, 4)).astype(np.uint16)
    scan = as_scan(data)
    mean = mean_pattern(scan)
    assert mean.dtype == np.float64
    np.testing.assert_allclose(mean, data.mean(axis=(0, 1)))
    np.testing.assert_array_equal(max_pattern(scan), data.max(axis=(0, 1)))
    # a budget of 3 rows of 7 patterns: rows 0, 10, 19 (evenly strided, ends included)
    sub = data[[0, 10, 19]]
    np.testing.assert_allclose(mean_pattern(scan, max_patterns=21), sub.mean(axis=(0, 1)))
    np.testing.assert_array_equal(max_pattern(scan, max_patterns=21), sub.max(axis=(0, 1)))
    np.testing.assert_allclose(mean_pattern(scan, max_patterns=1), data[0].mean(axis=0))


def test_virtual_image_matches_numpy():
    rng = np.random.default_rng(1)
    data = rng.integers(0, 60000, size=(9, 5, 6, 4)).astype(np.uint16)
    mask = rng.random((6, 4)) > 0.5
    image = virtual_image(as_scan(data), mask)
    assert image.dtype == np.float64 and image.shape == (9, 5)
    np.testing.assert_array_equal(image, data[..., mask].astype(np.float64).sum(axis=-1))
    with pytest.raises(GhostmapError):
        virtual_image(as_scan(data), np.ones((4, 6), bool))


def test_virtual_image_streams_in_blocks(monkeypatch):
    data = index_array((40, 5, 6, 4))
    scan = as_scan(data)
    monkeypatch.setattr("ghostmap.analysis.rows_per_block", lambda s, max_bytes=0: 3)
    seen = []
    real = scan.read_rows
    monkeypatch.setattr(scan, "read_rows", lambda a, b: seen.append(b - a) or real(a, b))
    mask = np.zeros((6, 4), bool)
    mask[2:4, 1:3] = True
    np.testing.assert_array_equal(virtual_image(scan, mask), data[..., mask].sum(-1))
    assert max(seen) <= 3 and sum(seen) == 40


def synthetic_pattern(shape=(64, 64), center=(30.6, 33.3), radius=6.0, spacing=13.0, seed=0):
    """A bright central disk among a tightly packed lattice of weaker Bragg disks."""
    rr, cc = np.indices(shape, dtype=float)
    pattern = np.full(shape, 2.0)
    for i in range(-4, 5):
        for j in range(-4, 5):
            cy, cx = center[0] + i * spacing, center[1] + j * spacing + 0.3 * i * spacing
            level = 100.0 if (i, j) == (0, 0) else 45.0
            pattern[np.hypot(rr - cy, cc - cx) <= radius] = level
    return np.random.default_rng(seed).poisson(pattern).astype(float)


def test_bright_field_mask_finds_the_central_disk():
    center, radius = (30.6, 33.3), 6.0
    mask = bright_field_mask(synthetic_pattern(center=center, radius=radius))
    rr, cc = np.indices(mask.shape)
    truth = np.hypot(rr - center[0], cc - center[1]) <= radius
    assert mask.dtype == bool
    assert abs(rr[mask].mean() - center[0]) < 0.7 and abs(cc[mask].mean() - center[1]) < 0.7
    overlap = (mask & truth).sum() / (mask | truth).sum()
    assert overlap > 0.8, overlap


def test_bright_field_mask_ignores_hot_pixel_and_offset_beam():
    center = (20.0, 44.0)
    pattern = synthetic_pattern(center=center, radius=5.0, spacing=11.0, seed=3)
    pattern[5, 5] = 5000.0  # a hot pixel brighter than the beam
    mask = bright_field_mask(pattern)
    rr, cc = np.indices(mask.shape)
    assert not mask[5, 5]
    assert abs(rr[mask].mean() - center[0]) < 0.7 and abs(cc[mask].mean() - center[1]) < 0.7
    assert 0.7 < mask.sum() / (np.pi * 25) < 1.3


# ----------------------------------------------------------------------- describe


def test_describe_is_json_serialisable(tmp_path):
    path = tmp_path / "scan.npy"
    np.save(path, index_array())
    info = describe(open_scan(path))
    assert json.loads(json.dumps(info)) == info
    assert info == {
        "source": str(path),
        "scan_shape": [3, 5],
        "detector_shape": [6, 4],
        "dtype": "uint16",
        "n_patterns": 15,
        "nbytes": 15 * 24 * 2,
        "file_size": path.stat().st_size,
        "format": "NumPy .npy",
        "reader": "numpy memmap",
        "calibrations": [],
    }
    assert describe(index_array())["file_size"] is None
