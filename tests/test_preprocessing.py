import numpy as np
import pytest
import torch

from ghostmap.errors import GhostmapError
from ghostmap.preprocessing import (
    Preprocessing,
    find_bad_pixels,
    preprocess_positions,
    preprocess_rows,
)
from ghostmap.reading import as_scan


def disks_pattern(shape=(64, 64), spacing=10, radius=3, level=8.0):
    """Tightly packed disks: the kind of pattern whose features must not be flagged as bad pixels."""
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    img = np.full(shape, 0.5)
    for r0 in range(spacing // 2, shape[0], spacing):
        for c0 in range(spacing // 2, shape[1], spacing):
            img[(rr - r0) ** 2 + (cc - c0) ** 2 <= radius**2] += level
    return img


def test_bin_sums_counts_and_crops_remainder():
    x = np.ones((3, 9, 10), np.uint16)
    out = Preprocessing(bin=2, transform="none", normalise="none").reduce(x)
    assert out.shape == (3, 4, 5)
    assert torch.all(out == 4)


def test_crop_then_bin():
    x = np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8)
    prep = Preprocessing(bin=2, crop=(2, 6, 0, 4), transform="none", normalise="none")
    out = prep.reduce(x)
    expected = x[:, 2:6, 0:4].reshape(2, 2, 2, 2, 2).sum((2, 4))
    np.testing.assert_allclose(out.numpy(), expected)
    assert prep.output_shape((8, 8)) == (2, 2)


def test_bad_pixels_are_replaced_by_their_neighbours():
    x = np.full((2, 6, 6), 3.0)
    x[:, 2, 3] = 5000.0  # hot
    x[:, :, 5] = 0.0  # dead column at the edge
    prep = Preprocessing(bin=1, transform="none", normalise="none", bad_pixels=[(2, 3)] + [(r, 5) for r in range(6)])
    out = prep.reduce(x).numpy()
    np.testing.assert_allclose(out, 3.0)


def test_one_hot_pixel_does_not_change_the_pattern_the_network_sees():
    rng = np.random.default_rng(0)
    clean = rng.poisson(disks_pattern(), size=(4, 64, 64)).astype(np.uint16)
    hot = clean.copy()
    hot[:, 30, 31] = 60000
    mean, maximum = hot.mean(0), hot.max(0)
    prep = Preprocessing(bin=2, bad_pixels=find_bad_pixels(mean, maximum))
    a, b = prep.apply(clean), prep.apply(hot)
    # away from the repaired pixel the two agree closely; without repair the hot pixel would dominate the scale
    assert torch.allclose(a[:, :14], b[:, :14], atol=0.05)
    naive = Preprocessing(bin=2).apply(hot)
    assert naive.amax() > 3 * a.amax()


def test_standard_normalisation():
    x = np.random.default_rng(1).poisson(5, size=(3, 16, 16))
    out = Preprocessing(bin=1).apply(x)
    np.testing.assert_allclose(out.mean((1, 2)).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(out.std((1, 2)).numpy(), 1, atol=1e-4)


def test_transforms():
    x = np.full((1, 4, 4), 16.0)
    assert torch.allclose(Preprocessing(bin=1, transform="sqrt", normalise="none").apply(x), torch.tensor(4.0))
    assert torch.allclose(Preprocessing(bin=1, transform="log", normalise="none").apply(x), torch.log1p(torch.tensor(16.0)))
    assert torch.allclose(Preprocessing(bin=1, transform="gamma", gamma=0.25, normalise="none").apply(x), torch.tensor(2.0))


def test_mean_pool_truncates_edges_and_never_wraps():
    # scan of 3 rows x 4 cols, value = row * 10 + col in every pixel
    rows, cols = 3, 4
    values = (np.arange(rows)[:, None] * 10 + np.arange(cols)[None, :]).astype(np.float32)
    block = torch.as_tensor(values)[:, :, None, None].expand(rows, cols, 2, 2).contiguous()
    pooled = Preprocessing(pool=3).pool_block(block)[:, :, 0, 0].numpy()
    for r in range(rows):
        for c in range(cols):
            window = values[max(0, r - 1) : r + 2, max(0, c - 1) : c + 2]
            assert pooled[r, c] == pytest.approx(window.mean())
    # the right edge of row 0 averages only columns 2..3, never the next row's first column
    assert pooled[0, 3] == pytest.approx(values[0:2, 2:4].mean())


def test_max_pool():
    block = torch.zeros(5, 5, 1, 1)
    block[2, 2] = 7
    pooled = Preprocessing(pool=3, pool_mode="max").pool_block(block)[:, :, 0, 0]
    assert pooled[1:4, 1:4].eq(7).all() and pooled.sum() == 63


@pytest.mark.parametrize("own_pattern", [False, True])
@pytest.mark.parametrize("pool", [1, 3, 5])
def test_row_blocks_and_single_positions_agree(pool, own_pattern):
    """Training (single positions) and prediction (row blocks) must feed the network the same input."""
    rng = np.random.default_rng(pool)
    data = rng.poisson(3, size=(6, 7, 16, 16)).astype(np.uint16)
    scan = as_scan(data)
    prep = Preprocessing(bin=2, pool=pool, bad_pixels=[(3, 3)], own_pattern=own_pattern)
    rows = preprocess_rows(scan, 1, 5, prep)
    rr, cc = np.mgrid[1:5, 0:7]
    single = preprocess_positions(scan, rr.ravel(), cc.ravel(), prep)
    assert single.shape == (28, prep.channels, 8, 8)
    torch.testing.assert_close(rows.reshape(-1, prep.channels, 8, 8), single, atol=1e-5, rtol=1e-5)
    if own_pattern:  # the second channel is each position's own pattern, unpooled
        alone = Preprocessing(bin=2, pool=1, bad_pixels=[(3, 3)])
        torch.testing.assert_close(single[:, 1], preprocess_positions(scan, rr.ravel(), cc.ravel(), alone)[:, 0])


def test_json_round_trip():
    prep = Preprocessing(bin=4, crop=(0, 8, 1, 9), transform="gamma", gamma=0.3, pool=5, bad_pixels=[(1, 2)])
    again = Preprocessing.from_dict(prep.to_dict())
    assert again.to_dict() == prep.to_dict()


@pytest.mark.parametrize(
    "kwargs, message",
    [({"transform": "cube"}, "unknown transform"), ({"pool": 2}, "odd"), ({"bin": 0}, "bin must"),
     ({"pool_mode": "median"}, "unknown pool mode")],
)
def test_bad_options_are_named(kwargs, message):
    with pytest.raises(GhostmapError, match=message):
        Preprocessing(**kwargs)


def test_crop_outside_detector():
    with pytest.raises(GhostmapError, match="does not fit"):
        Preprocessing(crop=(0, 600, 0, 10)).check_detector((512, 512))


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.uint8])
def test_integer_fast_path_bins_and_repairs_as_the_float_path(dtype):
    """Raw integer counts take the fused NumPy path; it must give what the torch path gives."""
    rng = np.random.default_rng(1)
    high = 250 if dtype == np.uint8 else 60000
    raw = rng.integers(0, high, size=(37, 64, 66)).astype(dtype)
    bad = [(0, 0), (5, 7), (5, 8), (63, 65), (20, 31)] + [(r, 40) for r in range(64)]
    for b in (2, 4, 3):
        prep = Preprocessing(bin=b, bad_pixels=bad, crop=(0, 64, 1, 66))
        fast = prep.reduce(raw)
        slow = prep.reduce(torch.from_numpy(raw.astype(np.float32)))  # a tensor: the plain path
        # the same repair rounded differently: NumPy's once (test_counts), torch's at each step
        torch.testing.assert_close(fast, slow, rtol=1e-6, atol=4 * float(np.spacing(np.float32(high))))
        assert fast.dtype == torch.float32


def test_reduce_never_writes_into_the_callers_counts():
    """Unbinned float32 counts with bad pixels: the repair works on a copy, not on the input
    (which may be a read-only mapping of the user's file)."""
    counts = np.random.default_rng(0).poisson(3, (2, 8, 8)).astype(np.float32)
    counts[:, 2, 3] = 1000.0
    before = counts.copy()
    counts.flags.writeable = False
    out = Preprocessing(bin=1, pool=1, bad_pixels=[(2, 3)]).reduce(counts)
    np.testing.assert_array_equal(counts, before)
    assert float(out[0, 2, 3]) < 100
