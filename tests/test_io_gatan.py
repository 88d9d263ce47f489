"""Tests for ghostmap.io.gatan: GMS in-situ .dm5 director files and their .raw time slices."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from ghostmap.errors import GhostmapError
from ghostmap.io import open_scan, open_time_series, time_series_length
from ghostmap.prediction import predict
from ghostmap.series import load_series, predict_series, series_steps

T, SHAPE = 3, (3, 5, 6, 4)  # time slices; scan rows, scan cols, det rows, det cols: all different


def truth(n=T, shape=SHAPE, dtype=np.uint16) -> np.ndarray:
    """Each value encodes its own (t, r, c, i, j) position, so any axis or slice mix-up shows."""
    return np.arange(n * np.prod(shape), dtype=np.int64).reshape(n, *shape).astype(dtype)


def write_dm5(path: Path, slices: np.ndarray, swapped: bool = True, cuts=None, calibrate=True) -> Path:
    """A GMS in-situ session in the vendor layout: ``path`` (.dm5, HDF5) and ``.raw``, ``.raw_1``, ...

    ``slices`` is (time, scan_row, scan_col, det_row, det_col). Swapped sessions store each
    slice in that order; unswapped ones as (det_row, det_col, scan_row, scan_col), as GMS
    does without the "Data Order Swapped" tag. ``cuts`` are the byte offsets where one raw
    file ends and the next begins.
    """
    stored = slices if swapped else slices.transpose(0, 3, 4, 1, 2)
    with h5py.File(path, "w") as f:
        f.create_group("DocumentObjectList/[0]").attrs["ImageSource"] = np.uint32(0)
        source = f.create_group("ImageSourceList/[0]")
        source.attrs["ImageRef"] = np.uint32(1)
        source.attrs["ClassName"] = b"ImageSource:4DSTEM InSitu"
        image = f.create_group("ImageList/[1]")
        image.create_dataset("ImageData/Data", shape=stored.shape[1:], dtype=stored.dtype)
        if calibrate:
            for k, (scale, units) in enumerate([(0.02, b"1/nm"), (0.02, b"1/nm"), (1.5, b"nm"), (1.5, b"nm")]):
                dim = image.create_group(f"ImageData/Calibrations/Dimension/[{k}]")
                dim.attrs["Origin"], dim.attrs["Scale"], dim.attrs["Units"] = np.float32(0), np.float32(scale), units
        if swapped:
            image.create_group("ImageTags/Meta Data").attrs["Data Order Swapped"] = np.uint8(1)
    raw = np.ascontiguousarray(stored).tobytes()
    bounds = [0, *(cuts or []), len(raw)]
    for k in range(len(bounds) - 1):
        part = path.with_suffix(".raw" if k == 0 else f".raw_{k}")
        part.write_bytes(raw[bounds[k] : bounds[k + 1]])
    return path


SLICE_BYTES = int(np.prod(SHAPE)) * 2


@pytest.mark.parametrize("swapped", [True, False])
def test_slices_read_back_exactly_across_raw_files(tmp_path, swapped):
    data = truth()
    # the first cut splits slice 0 mid-way (and, unswapped, mid detector row); the second falls inside slice 2
    cuts = [SLICE_BYTES // 2 + 6, 2 * SLICE_BYTES + 100]
    path = write_dm5(tmp_path / "InSitu.dm5", data, swapped=swapped, cuts=cuts)
    assert path.with_suffix(".raw_2").exists()
    assert time_series_length(path) == T
    with open_time_series(path) as series:
        assert len(series) == T and series.data.shape == (T, *SHAPE)
        for t in range(T):
            scan = series[t]
            assert scan.shape == SHAPE and scan.dtype == np.uint16
            np.testing.assert_array_equal(scan.read_rows(0, SHAPE[0]), data[t])
            np.testing.assert_array_equal(scan.read_rows(1, 2), data[t, 1:2])
            np.testing.assert_array_equal(scan.read_box(1, 3, 2, 4), data[t, 1:3, 2:4])
            np.testing.assert_array_equal(scan.read_pattern(2, 4), data[t, 2, 4])
        assert series.info.format.startswith("Gatan GMS in-situ")
        assert [c[2] for c in series.info.calibrations] == pytest.approx([0.02, 0.02, 1.5, 1.5])


def test_scan_first_reads_only_the_rows_asked_for(tmp_path, monkeypatch):
    data = truth()
    path = write_dm5(tmp_path / "s.dm5", data, cuts=[SLICE_BYTES + 10])
    with open_time_series(path) as series:
        scan = series[1]
        reads = []
        real = scan.data.parts.read
        monkeypatch.setattr(scan.data.parts, "read", lambda offset, out: reads.append(out.nbytes) or real(offset, out))
        np.testing.assert_array_equal(scan.read_rows(2, 3), data[1, 2:3])
        assert sum(reads) == SLICE_BYTES // SHAPE[0]  # one scan row, nothing more


def test_a_one_slice_session_opens_as_a_scan_and_a_longer_one_says_it_is_a_series(tmp_path):
    one = write_dm5(tmp_path / "one.dm5", truth(1))
    with open_scan(one) as scan:
        np.testing.assert_array_equal(scan.read_rows(0, 3), truth(1)[0])
    many = write_dm5(tmp_path / "many.dm5", truth())
    with pytest.raises(GhostmapError, match="time series of 3 slices"):
        open_scan(many)


def test_truncated_or_missing_raw_files_are_one_line_errors(tmp_path):
    path = write_dm5(tmp_path / "cut.dm5", truth(), cuts=[SLICE_BYTES])
    raw1 = path.with_suffix(".raw_1")
    raw1.write_bytes(raw1.read_bytes()[:-7])
    with pytest.raises(GhostmapError) as exc:
        open_time_series(path)
    assert "\n" not in str(exc.value) and "cut.dm5" in str(exc.value) and "truncated" in str(exc.value)
    assert time_series_length(path) is None  # open_scan then says what is wrong
    for part in tmp_path.glob("cut.raw*"):
        part.unlink()
    with pytest.raises(GhostmapError, match="no cut.raw beside it"):
        open_time_series(path)


def test_a_dm5_that_is_not_a_director_file(tmp_path):
    path = tmp_path / "other.dm5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(GhostmapError) as exc:
        open_time_series(path)
    assert "\n" not in str(exc.value) and "not a GMS in-situ director file" in str(exc.value)
    (tmp_path / "junk.dm5").write_bytes(b"not hdf5 at all")
    with pytest.raises(GhostmapError, match="not a readable HDF5 file"):
        open_time_series(tmp_path / "junk.dm5")


def ghostmap(*args):
    return subprocess.run([sys.executable, "-m", "ghostmap.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_info_names_the_slices_and_calibrations(tmp_path):
    path = write_dm5(tmp_path / "InSitu.dm5", truth(), cuts=[SLICE_BYTES + 3])
    run = ghostmap("info", path)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "scan:      3 rows x 5 columns (15 patterns)"
    assert lines[1] == "detector:  6 x 4 pixels"
    assert "slices:    3 time slices" in run.stdout
    assert "format:    Gatan GMS in-situ .dm5 + .raw" in run.stdout
    assert "calibration: dimension 2: 1.5 nm per pixel, origin 0" in run.stdout


def test_a_session_predicts_as_a_series_equal_to_each_slice_alone(series, tmp_path):
    scans = np.stack(series["scans"][:3])  # (3, 12, 48, 32, 32) uint16
    slice_bytes = scans[0].nbytes
    path = write_dm5(tmp_path / "InSitu.dm5", scans, cuts=[slice_bytes // 3, slice_bytes + slice_bytes // 2])
    steps = series_steps([path])
    assert [s.time_index for s in steps] == [0, 1, 2]
    writer = predict_series(steps, series["model"], tmp_path / "out")
    arrays = load_series(tmp_path / "out")
    assert arrays["labels"].shape == (3, 12, 48)
    for t in range(3):
        alone = predict(scans[t], series["model"])
        np.testing.assert_array_equal(writer.results[t].labels, alone.labels)
        np.testing.assert_allclose(arrays["probabilities"][t], alone.probabilities, atol=1e-6)
    # the command line classifies each slice as predict does; float32, the exact network, to compare with torch
    run = ghostmap("predict", path, "--model", series["model_dir"], "--out", tmp_path / "cli", "--precision", "float32")
    assert run.returncode == 0, run.stderr
    np.testing.assert_array_equal(load_series(tmp_path / "cli")["labels"], arrays["labels"])
    np.testing.assert_allclose(load_series(tmp_path / "cli")["probabilities"], arrays["probabilities"], atol=1e-4)
