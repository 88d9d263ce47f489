"""Tests for ghostmap.io.mrc: 4-D volume stacks and 3-D frame stacks in .mrc files."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest

from ghostmap.errors import GhostmapError
from ghostmap.io import open_scan

SHAPE = (3, 5, 6, 4)


def index_array(shape=SHAPE, dtype=np.uint16) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.int64).reshape(shape).astype(dtype)


def test_a_4d_volume_stack(tmp_path):
    data = index_array()
    path = tmp_path / "scan.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(data)
    with open_scan(path) as scan:
        assert scan.shape == SHAPE and scan.dtype == np.uint16
        assert isinstance(scan.data, np.memmap)  # rows come by plain file reads
        np.testing.assert_array_equal(scan.read_rows(1, 3), data[1:3])
        np.testing.assert_array_equal(scan.read_pattern(2, 4), data[2, 4])
        assert scan.info.format == "MRC"


def test_a_3d_frame_stack_and_bad_files(tmp_path):
    data = index_array(dtype=np.float32)
    path = tmp_path / "frames.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(data.reshape(15, 6, 4))
    with pytest.raises(GhostmapError, match="15 frames of 6 x 4 pixels"):
        open_scan(path)
    with open_scan(path, scan_shape=(3, 5)) as scan:
        np.testing.assert_array_equal(scan.read_rows(0, 3), data)
    path.write_bytes(path.read_bytes()[:-40])  # truncated
    with pytest.raises(GhostmapError) as exc:
        open_scan(path, scan_shape=(3, 5))
    assert "\n" not in str(exc.value) and "frames.mrc is not a readable MRC file" in str(exc.value)
