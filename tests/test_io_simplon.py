"""Tests for ghostmap.io.simplon: Dectris SIMPLON/NeXus master files and their data files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest

from ghostmap.errors import GhostmapError
from ghostmap.io import open_scan

REAL = Path(__file__).resolve().parents[2] / "shared" / "real-files" / "arina"
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real detector files are not at {REAL}")


def write_master(folder: Path, frames: np.ndarray, per_file: list[int], name="scan") -> Path:
    """A Dectris-style master with ``data_NNNNNN`` external links to bitshuffle+LZ4 frame stacks."""
    master = folder / f"{name}_master.h5"
    with h5py.File(master, "w") as f:
        det = f.create_group("entry/instrument/detector")
        det["x_pixel_size"] = 75e-6
        det["x_pixel_size"].attrs["units"] = "m"
        det["y_pixel_size"] = 75e-6
        det["y_pixel_size"].attrs["units"] = "m"
        data = f.create_group("entry/data")
        at = 0
        for k, n in enumerate(per_file, start=1):
            file_name = f"{name}_data_{k:06d}.h5"
            with h5py.File(folder / file_name, "w") as d:
                d.create_dataset("entry/data/data", data=frames[at : at + n], chunks=(1, *frames.shape[1:]),
                                 **hdf5plugin.Bitshuffle(cname="lz4"))
            data[f"data_{k:06d}"] = h5py.ExternalLink(file_name, "/entry/data/data")
            at += n
    return master


def frames_truth(n=12, det=(6, 4), dtype=np.uint32) -> np.ndarray:
    return np.arange(n * det[0] * det[1], dtype=np.int64).reshape(n, *det).astype(dtype)


def test_frames_across_links_read_exactly_as_the_scan_shape_says(tmp_path):
    frames = frames_truth()
    master = write_master(tmp_path, frames, [5, 5, 2])
    with open_scan(master, scan_shape=(3, 4)) as scan:
        assert scan.shape == (3, 4, 6, 4) and scan.dtype == np.uint32
        truth = frames.reshape(3, 4, 6, 4)
        np.testing.assert_array_equal(scan.read_rows(0, 3), truth)
        np.testing.assert_array_equal(scan.read_rows(1, 2), truth[1:2])  # frames 4..7 span files 1 and 2
        np.testing.assert_array_equal(scan.read_box(1, 3, 1, 3), truth[1:3, 1:3])
        np.testing.assert_array_equal(scan.read_pattern(2, 3), truth[2, 3])
        assert scan.info.format == "Dectris SIMPLON/NeXus master"
        assert ("det_col", 0.0, 75e-6, "m") in scan.info.calibrations
        assert scan.file_size == sum(p.stat().st_size for p in tmp_path.iterdir())


def test_row_reads_touch_only_their_frames(tmp_path):
    frames = frames_truth()
    master = write_master(tmp_path, frames, [5, 5, 2])
    with open_scan(master, scan_shape=(3, 4)) as scan:
        stacks = scan.data.frames.stacks
        seen = []

        class Recording:
            def __init__(self, k, stack):
                self.k, self.stack, self.shape, self.dtype = k, stack, stack.shape, stack.dtype

            def __getitem__(self, key):
                seen.append((self.k, key.start, key.stop))
                return self.stack[key]

        scan.data.frames.stacks = [Recording(k, s) for k, s in enumerate(stacks)]
        scan.read_rows(2, 3)  # frames 8..11: the last 2 of file 2 and both of file 3
        assert seen == [(1, 3, 5), (2, 0, 2)]


def test_without_or_with_a_wrong_scan_shape(tmp_path):
    master = write_master(tmp_path, frames_truth(), [12])
    with pytest.raises(GhostmapError) as exc:
        open_scan(master)
    assert "\n" not in str(exc.value) and "12 frames" in str(exc.value) and "--scan-shape" in str(exc.value)
    with pytest.raises(GhostmapError, match="holds 12 frames, but --scan-shape 5x3 needs 15"):
        open_scan(master, scan_shape=(5, 3))


def test_a_missing_or_mismatched_data_file(tmp_path):
    master = write_master(tmp_path, frames_truth(), [6, 6])
    (tmp_path / "scan_data_000002.h5").unlink()
    with pytest.raises(GhostmapError) as exc:
        open_scan(master, scan_shape=(3, 4))
    assert str(exc.value) == f"{master} links data_000002 to scan_data_000002.h5, which is missing beside it"
    with h5py.File(tmp_path / "scan_data_000002.h5", "w") as d:
        d["entry/data/data"] = np.zeros((6, 5, 5), np.uint32)
    with pytest.raises(GhostmapError, match="data_000002 has frames"):
        open_scan(master, scan_shape=(3, 4))


def test_a_corrupt_chunk_names_the_file_and_scan_row(tmp_path):
    frames = np.random.default_rng(0).integers(0, 1000, (12, 32, 32)).astype(np.uint32)
    master = write_master(tmp_path, frames, [12])
    data_file = tmp_path / "scan_data_000001.h5"
    with h5py.File(data_file, "r") as d:
        offset = d["entry/data/data"].id.get_chunk_info(9).byte_offset  # frame 9: scan row 2 of a 3 x 4 scan
    raw = bytearray(data_file.read_bytes())
    raw[offset : offset + 40] = b"\xff" * 40
    data_file.write_bytes(bytes(raw))
    with open_scan(master, scan_shape=(3, 4)) as scan:
        np.testing.assert_array_equal(scan.read_rows(0, 2), frames[:8].reshape(2, 4, 32, 32))
        with pytest.raises(GhostmapError) as exc:
            scan.read_rows(0, 3)
    message = str(exc.value)
    assert "\n" not in message and message.startswith(f"{master}: scan row 2 could not be read")


@needs_real
def test_real_arina_master():
    master = REAL / "test_00_master.h5"
    with pytest.raises(GhostmapError, match="16 frames of 192 x 192 pixels"):
        open_scan(master)
    with open_scan(master, scan_shape=(4, 4)) as scan:
        assert scan.shape == (4, 4, 192, 192)
        block = scan.read_rows(0, 4)
        assert block.dtype == scan.dtype and not block.any()  # the real file's frames are all zero
    run = subprocess.run([sys.executable, "-m", "ghostmap.cli", "info", str(master), "--scan-shape", "4x4"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[:2] == ["scan:      4 rows x 4 columns (16 patterns)", "detector:  192 x 192 pixels"]
    assert "format:    Dectris SIMPLON/NeXus master" in run.stdout
