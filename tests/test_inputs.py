"""Binned counts to network inputs in NumPy: transform, normalisation, pooling across scan rows."""

import numpy as np
import pytest
import torch

from ghostmap.inputs import Finish, NetworkInputs, pool_rows
from ghostmap.preprocessing import Preprocessing, _pool_axis


@pytest.fixture
def counts():
    rng = np.random.default_rng(3)
    x = rng.poisson(6.0, (7, 12, 10)).astype(np.float32)
    x[0, 0, 0] = -2.0  # a repaired bad pixel can come out slightly negative; clipped at zero
    return x


def reference_finish(counts, transform, gamma=0.5, reference=None, normalise="standard"):
    """The documented arithmetic in float64, one pattern at a time."""
    x = np.maximum(counts.astype(np.float64), 0)
    x = {"sqrt": np.sqrt, "log": np.log1p, "gamma": lambda v: v**gamma, "none": lambda v: v}[transform](x)
    if reference is not None:
        x = x - reference
    if normalise == "standard":
        flat = x.reshape(len(x), -1)
        x = ((flat - flat.mean(1, keepdims=True)) / flat.std(1, ddof=1, keepdims=True)).reshape(x.shape)
    return x


@pytest.mark.parametrize("transform", ["sqrt", "log", "gamma", "none"])
@pytest.mark.parametrize("with_reference", [False, True])
def test_finish_matches_the_documented_arithmetic(counts, transform, with_reference):
    reference = np.linspace(0, 1, 120, dtype=np.float32).reshape(12, 10) if with_reference else None
    before = counts.copy()
    got = Finish(transform, 0.7, "standard", reference)(counts, chunk=3)  # chunks that do not divide 7
    assert got.dtype == np.float32 and got.shape == counts.shape
    np.testing.assert_allclose(got, reference_finish(counts, transform, 0.7, reference), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(counts, before)  # the caller's counts are left alone


def test_finish_without_normalisation_and_flat_patterns(counts):
    np.testing.assert_allclose(Finish(normalise="none")(counts), reference_finish(counts, "sqrt", normalise="none"),
                               rtol=1e-6)
    flat = Finish()(np.full((2, 4, 4), 9.0, np.float32))
    assert np.isfinite(flat).all() and np.abs(flat).max() == 0  # zero variance: no division by zero


def test_preprocessing_finish_is_the_numpy_arithmetic(counts):
    prep = Preprocessing(transform="log", subtract_mean=True, reference=np.ones((12, 10), np.float32))
    got = prep.finish(torch.from_numpy(counts))
    assert torch.is_tensor(got) and got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), prep.finishing()(counts))
    assert prep.finishing().same_as(Finish("log", 0.5, "standard", np.ones((12, 10), np.float32)))
    assert not prep.finishing().same_as(Finish("log", 0.5, "standard", None))


@pytest.mark.parametrize("mode", ["mean", "max"])
@pytest.mark.parametrize("k", [3, 5])
def test_pool_rows_is_bit_identical_to_the_torch_pooling(mode, k):
    x = np.random.default_rng(1).random((6, 4, 2, 3, 3), dtype=np.float32)  # channel 1: the own patterns
    before = x.copy()
    rows = {r: x[r] for r in range(6)}
    expected = _pool_axis(torch.from_numpy(x[:, :, 0].copy()), 0, k, mode).numpy()
    got = pool_rows(rows, 0, 6, 0, 6, k // 2, mode)
    np.testing.assert_array_equal(got[:, :, 0], expected)
    np.testing.assert_array_equal(got[:, :, 1], x[:, :, 1])  # never pooled
    np.testing.assert_array_equal(pool_rows(rows, 2, 4, 0, 6, k // 2, mode)[:, :, 0], expected[2:4])
    np.testing.assert_array_equal(x, before)  # the kept rows are left alone
    one = pool_rows({r: x[r, :, :1] for r in range(6)}, 0, 6, 0, 6, k // 2, mode)
    np.testing.assert_array_equal(one[:, :, 0], expected)


@pytest.mark.parametrize("block", [1, 2, 4])
@pytest.mark.parametrize("start,stop", [(0, 9), (3, 7), (0, 1)])
def test_network_inputs_from_blocks_equal_the_whole_scan_at_once(block, start, stop):
    n_rows, pool = 9, 3
    reduced = np.random.default_rng(2).poisson(4.0, (n_rows, 5, 2, 6, 6)).astype(np.float32)
    finish = Finish()
    whole = reduced.copy()
    whole[:, :, 0] = _pool_axis(torch.from_numpy(reduced[:, :, 0].copy()), 0, pool, "mean").numpy()
    expected = np.stack([reference_finish(whole[:, :, c].reshape(-1, 6, 6), "sqrt").reshape(n_rows, 5, 6, 6)
                         for c in range(2)], axis=2)  # each channel of each position normalised on its own
    stage = NetworkInputs(n_rows, start, stop, pool, "mean", finish)
    lo, hi = max(0, start - 1), min(n_rows, stop + 1)
    made, nones = [], 0
    for b0 in range(lo, hi, block):
        b1 = min(b0 + block, hi)
        out = stage((b0, b1), reduced[b0:b1])
        if out is None:
            nones += 1
            continue
        made.append(out)
        assert len(stage._kept) <= block + 2  # only the rows pooling still needs are kept
    assert [r0 for r0, _, _ in made] == sorted(r0 for r0, _, _ in made) and made[0][0] == start
    assert made[-1][1] == stop
    if block == 1 and start == 0 and stop > 1:
        assert nones == 1  # row 0 is complete only once row 1 has been read
    got = np.concatenate([x for _, _, x in made])
    np.testing.assert_allclose(got, expected[start:stop], rtol=1e-5, atol=1e-5)
    assert stage.matches(start, stop, pool, "mean", Finish()) and not stage.matches(start, stop, 1, "mean", finish)
