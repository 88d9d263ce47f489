"""The NumPy-only steps on raw counts, and the reader that runs them ahead of the network."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch

from ghostmap.counts import CountReduction, RowReader, bin_counts, pool_axis, row_blocks
from ghostmap.errors import GhostmapError
from ghostmap.io import open_scan
from ghostmap.io.base import Readahead, Scan
from ghostmap.preprocessing import Preprocessing, _pool_axis


@pytest.fixture(scope="module")
def counts():
    rng = np.random.default_rng(3)
    return rng.poisson(3, size=(5, 7, 24, 20)).astype(np.uint16)


@pytest.mark.parametrize("mode", ["mean", "max"])
@pytest.mark.parametrize("k", [1, 3, 5, 9])
@pytest.mark.parametrize("axis", [0, 1])
def test_pool_axis_is_bit_identical_to_the_torch_pooling(counts, mode, k, axis):
    x = counts[..., :4, :4].astype(np.float32) * np.float32(0.37)
    expected = _pool_axis(torch.from_numpy(x.copy()), axis, k, mode).numpy()
    np.testing.assert_array_equal(pool_axis(x, axis, k, mode), expected)


def test_reduce_rows_matches_the_torch_path(counts):
    bad = [(0, 1), (3, 3), (3, 4), (23, 19)] + [(r, 10) for r in range(24)]
    prep = Preprocessing(bin=4, pool=3, crop=(0, 24, 2, 18), bad_pixels=bad, own_pattern=True)
    reduction = prep.count_reduction()
    fast = reduction.reduce_rows(counts)
    plain = prep.reduce(torch.from_numpy(counts.reshape(-1, 24, 20).astype(np.float32)))  # torch's float path
    own = plain.view(5, 7, *plain.shape[1:])
    pooled = _pool_axis(own, 1, 3, "mean")
    assert fast.shape == (5, 7, 2, 6, 4) and fast.dtype == np.float32
    np.testing.assert_allclose(fast[:, :, 0], pooled.numpy(), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(fast[:, :, 1], own.numpy(), rtol=1e-6, atol=1e-5)  # the second channel: unpooled
    single = Preprocessing(bin=4, pool=3, crop=(0, 24, 2, 18), bad_pixels=bad).count_reduction().reduce_rows(counts)
    assert single.shape == (5, 7, 1, 6, 4)
    np.testing.assert_array_equal(single[:, :, 0], fast[:, :, 0])


def test_bin_counts_is_exact_for_signed_and_unsigned(counts):
    for dtype in (np.uint16, np.int16, np.uint8):
        x = counts[0].astype(dtype)
        expected = x.astype(np.int64).reshape(7, 12, 2, 10, 2).sum((2, 4))
        np.testing.assert_array_equal(bin_counts(x, 2), expected.astype(np.float32))


@pytest.mark.parametrize("dtype", [np.uint16, np.int16])
def test_repair_gives_the_neighbour_mean_rounded_once(dtype):
    """Each bad pixel counts as the mean of its good 8-neighbours: the binned result is the exact
    value (worked out here in float64, pixel by pixel) rounded once to float32."""
    rng = np.random.default_rng(5)
    raw = rng.integers(-30000 if dtype == np.int16 else 0, 30000, size=(6, 16, 12)).astype(dtype)
    bad = [(0, 0), (4, 5), (4, 6), (15, 11)] + [(r, 8) for r in range(16)]
    reduction = CountReduction(bin=4, bad_pixels=tuple(bad))
    fixed = raw.astype(np.float64)
    is_bad = np.zeros((16, 12), bool)
    for r, c in bad:
        is_bad[r, c] = True
    for r, c in bad:
        near = [(r + i, c + j) for i in (-1, 0, 1) for j in (-1, 0, 1)
                if (i or j) and 0 <= r + i < 16 and 0 <= c + j < 12 and not is_bad[r + i, c + j]]
        fixed[:, r, c] = np.mean([raw[:, i, j].astype(np.float64) for i, j in near], axis=0) if near else 0.0
    expected = fixed.reshape(6, 4, 4, 3, 4).sum((2, 4)).astype(np.float32)
    np.testing.assert_array_equal(reduction.reduce(raw), expected)


def test_count_reduction_from_a_model_description():
    prep = Preprocessing(bin=2, pool=5, pool_mode="max", crop=(0, 8, 0, 8), bad_pixels=[(1, 2)])
    assert CountReduction.from_dict(prep.to_dict()) == prep.count_reduction()
    with pytest.raises(ValueError, match="bin"):
        CountReduction.from_dict(Preprocessing().to_dict())


def test_fits_only_exact_integer_counts():
    reduction = CountReduction(bin=2)
    assert reduction.fits(np.zeros((1, 4, 4), np.uint16))
    assert not reduction.fits(np.zeros((1, 4, 4), np.float32))
    assert not reduction.fits(np.zeros((1, 4, 4), np.uint32))  # sums could pass float32's exact range
    assert CountReduction(bin=1).fits(np.zeros((1, 4, 4), np.uint16))  # no sum: float32 holds 16-bit counts exactly


@pytest.mark.parametrize("ahead", [0, 1, 3])
def test_row_reader_yields_every_block_in_order_with_its_bright_field(counts, ahead):
    scan = Scan(counts)
    reduction = CountReduction(bin=2, pool=3)
    index = np.array([0, 5, 21, 479])
    reader = RowReader(scan, reduction, row_blocks(5, 3, 0, 5, 2), bright_field_index=lambda raw: index, ahead=ahead)
    got = list(reader)
    assert [block for block, _ in got] == [(0, 2), (2, 4), (4, 5)]
    np.testing.assert_array_equal(np.concatenate([rows for _, rows in got]), reduction.reduce_rows(counts))
    for r in range(5):
        np.testing.assert_array_equal(reader.bright_field[r], counts[r].reshape(7, -1)[:, index].sum(-1))


@pytest.mark.parametrize("chunk", [1, 4, 6])
def test_reduce_file_reads_a_few_patterns_at_a_time_into_what_reduce_gives(tmp_path, counts, chunk):
    patterns = counts.reshape(-1, 24, 20)  # 35 patterns: the last chunk is short
    reduction = CountReduction(bin=3, crop=(1, 23, 2, 20), bad_pixels=((0, 0), (5, 7), (5, 8), (22, 19)))
    header = b"x" * 13  # the patterns need not start on an aligned offset
    path = tmp_path / "raw.bin"
    path.write_bytes(header + patterns.tobytes())
    index = np.array([3, 100, 479])
    with open(path, "rb", buffering=0) as file:
        reduced, bright = reduction.reduce_file(file, len(header), len(patterns), (24, 20), np.uint16, index, chunk)
        np.testing.assert_array_equal(reduced, reduction.reduce(patterns))
        np.testing.assert_array_equal(bright, patterns.reshape(35, -1)[:, index].sum(-1))
        assert reduction.reduce_file(file, len(header), 3, (24, 20), np.uint16)[1] is None
    path.write_bytes(header + patterns[:-1].tobytes())  # the last pattern is missing
    with open(path, "rb", buffering=0) as file, pytest.raises(GhostmapError, match="truncated"):
        reduction.reduce_file(file, len(header), len(patterns), (24, 20), np.uint16, chunk=chunk)


@pytest.mark.parametrize("found", [False, True])
def test_row_reader_of_a_file_reads_it_in_chunks_with_the_same_results(tmp_path, counts, found):
    np.save(tmp_path / "scan.npy", counts)
    scan = open_scan(tmp_path / "scan.npy")
    assert scan.file_extent(0, 5) is not None
    reduction = CountReduction(bin=2, pool=3, bad_pixels=((3, 4),))
    index = np.array([0, 5, 21, 479])
    reader = RowReader(scan, reduction, row_blocks(5, 3, 0, 5, 2),
                       bright_field_index=(lambda raw: index) if found else index)
    got = list(reader)
    np.testing.assert_array_equal(np.concatenate([rows for _, rows in got]), reduction.reduce_rows(counts))
    for r in range(5):
        np.testing.assert_array_equal(reader.bright_field[r], counts[r].reshape(7, -1)[:, index].sum(-1))
    scan.close()


def test_reading_goes_on_while_the_bright_field_disk_is_found(tmp_path, counts):
    np.save(tmp_path / "scan.npy", counts)
    scan = open_scan(tmp_path / "scan.npy")
    index = np.array([0, 5, 21, 479])
    expected = counts.reshape(5, 7, -1)[:, :, index].sum(-1)
    go_on = threading.Event()

    def slow_finder(raw):
        assert raw.shape == (1, 7, 24, 20)  # the first block
        go_on.wait(10)
        return index

    reduction = CountReduction(bin=2, pool=3)
    reader = RowReader(scan, reduction, row_blocks(5, 3, 0, 5, 1), bright_field_index=slow_finder, ahead=0)
    blocks = iter(reader)
    got = [next(blocks) for _ in range(3)]  # read while the disk is not known yet: no sums
    assert not reader.bright_field
    go_on.set()
    np.testing.assert_array_equal(reader.bright_field_rows(0, 2), expected[:2])  # summed when asked for
    got += list(blocks)
    np.testing.assert_array_equal(np.concatenate([rows for _, rows in got]), reduction.reduce_rows(counts))
    np.testing.assert_array_equal(reader.bright_field_rows(2, 5), expected[2:])  # every block read: all summed
    assert not reader.bright_field
    scan.close()


def test_row_reader_hands_other_counts_to_the_fallback(counts):
    floats = Scan(counts.astype(np.float32))
    reduction = CountReduction(bin=2)
    with pytest.raises(TypeError, match="fallback"):
        list(RowReader(floats, reduction, [(0, 5)], ahead=0))
    seen = list(RowReader(floats, reduction, [(0, 5)], ahead=0, fallback=lambda raw: raw.shape))
    assert seen == [((0, 5), (5, 7, 24, 20))]


def test_readahead_reads_at_most_ahead_blocks_before_they_are_asked_for():
    started = []
    release = threading.Event()

    def read(block):
        started.append(block)
        if block >= 3:
            release.wait(5)
        return block

    reader = Readahead(read, range(10), ahead=3)
    time.sleep(0.3)
    assert started == [0, 1, 2]  # nothing asked for yet: three blocks ready, no more
    it = iter(reader)
    assert next(it) == (0, 0)
    time.sleep(0.2)
    assert len(started) <= 4
    release.set()
    it.close()  # the caller stops early: reading stops too
    n = len(started)
    time.sleep(0.2)
    assert len(started) == n <= 5


def test_reading_needs_no_torch(tmp_path, counts):
    """``ghostmap predict`` starts reading before torch loads: that path must not import it."""
    np.save(tmp_path / "scan.npy", counts)
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any import of torch now fails
        import numpy as np
        from ghostmap.analysis import bright_field_index
        from ghostmap.counts import CountReduction, RowReader, block_rows, row_blocks
        from ghostmap.modelfile import read_description
        from ghostmap.reading import open_scan
        scan = open_scan({str(tmp_path / "scan.npy")!r})
        blocks = row_blocks(5, 3, 0, 5, block_rows(scan))
        reader = RowReader(scan, CountReduction(bin=2, pool=3), blocks, bright_field_index=lambda raw: bright_field_index(scan), ahead=2)
        rows = np.concatenate([r for _, r in reader])
        print(rows.shape, len(reader.bright_field))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["(5,", "7,", "1,", "12,", "10)", "5"]


def test_no_bad_pixels_no_scipy(tmp_path, counts):
    """The repair's sparse map needs SciPy (0.1 s to import); a reduction with nothing to repair
    reads a file without it."""
    np.save(tmp_path / "scan.npy", counts)
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        from ghostmap.counts import CountReduction
        shape = (24, 20)
        with open({str(tmp_path / "scan.npy")!r}, "rb", buffering=0) as f:
            offset = np.load({str(tmp_path / "scan.npy")!r}, mmap_mode="r").offset
            reduced, _ = CountReduction(bin=2).reduce_file(f, offset, 35, shape, np.uint16)
        print(reduced.shape, "scipy" in sys.modules)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["(35,", "12,", "10)", "False"]
