"""Tests for ghostmap.io.hyperspy: .hspy (HDF5) and .zspy (zarr) read without HyperSpy."""

from __future__ import annotations

import sys

import h5py
import numpy as np
import pytest

from ghostmap.errors import GhostmapError
from ghostmap.io import open_scan

SHAPE = (3, 5, 6, 4)


def index_array(shape=SHAPE, dtype=np.uint16) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.int64).reshape(shape).astype(dtype)


def signal_dict(data):
    names, units, scales = ["y", "x", "ky", "kx"], ["nm", "nm", "1/nm", "1/nm"], [2.0, 2.0, 0.05, 0.05]
    axes = [{"size": n, "index_in_array": k, "name": names[k], "scale": scales[k], "offset": 0.0,
             "units": units[k], "navigate": k < 2} for k, n in enumerate(data.shape)]
    return {"data": data, "axes": axes, "metadata": {"General": {"title": "scan"}, "Signal": {"signal_type": ""}},
            "original_metadata": {}, "tmp_parameters": {}, "attributes": {"_lazy": False},
            "package_info": {"name": "hyperspy", "version": "2.0"}, "learning_results": {}, "models": {}}


def write_zspy(path, signal):
    """The .zspy tree as HyperSpy writes it (RosettaSciIO's own writer still needs zarr 2)."""
    import zarr

    root = zarr.open_group(str(path), mode="w")
    root.attrs.update({"file_format": "HyperSpy", "file_format_version": "3.3"})
    group = root.create_group("Experiments/scan")
    group.create_array("data", shape=signal["data"].shape, dtype=signal["data"].dtype)[:] = signal["data"]
    for k, axis in enumerate(signal["axes"]):
        group.create_group(f"axis-{k}").attrs.update({key: axis[key] for key in
                                                       ("name", "navigate", "offset", "scale", "size", "units")})


@pytest.mark.parametrize("suffix", [".hspy", ".zspy"])
def test_written_as_hyperspy_does_reads_back_navigation_first(tmp_path, suffix):
    writer = pytest.importorskip("rsciio.hspy").file_writer if suffix == ".hspy" else write_zspy
    data = index_array()
    path = tmp_path / f"scan{suffix}"
    writer(str(path), signal_dict(data))
    assert "hyperspy" not in sys.modules
    with open_scan(path) as scan:
        assert scan.shape == SHAPE and scan.dtype == np.uint16
        np.testing.assert_array_equal(scan.read_rows(0, 3), data)
        np.testing.assert_array_equal(scan.read_box(1, 2, 3, 5), data[1:2, 3:5])
        assert scan.info.format.startswith("HyperSpy")
        assert scan.info.calibrations[0] == ("y", 0.0, 2.0, "nm")
        assert scan.info.calibrations[3] == ("kx", 0.0, 0.05, "1/nm")
    assert "hyperspy" not in sys.modules


def test_hspy_errors(tmp_path):
    empty = tmp_path / "empty.hspy"
    with h5py.File(empty, "w") as f:
        f.create_group("Experiments/a").create_dataset("data", data=np.zeros((4, 4)))
    with pytest.raises(GhostmapError) as exc:
        open_scan(empty)
    assert "\n" not in str(exc.value) and "no 4-D signal" in str(exc.value)
    two = tmp_path / "two.hspy"
    with h5py.File(two, "w") as f:
        f["Experiments/a/data"] = index_array()
        f["Experiments/b/data"] = index_array() + 1
    with pytest.raises(GhostmapError, match="2 signals .*--dataset"):
        open_scan(two)
    with open_scan(two, dataset="b") as scan:
        np.testing.assert_array_equal(scan.read_rows(0, 3), index_array() + 1)
    (tmp_path / "junk.hspy").write_bytes(b"junk")
    with pytest.raises(GhostmapError, match="not a readable HDF5 file"):
        open_scan(tmp_path / "junk.hspy")


def test_a_stack_of_frames_takes_the_scan_shape(tmp_path):
    path = tmp_path / "stack.hspy"
    with h5py.File(path, "w") as f:
        group = f.create_group("Experiments/stack")
        group["data"] = index_array().reshape(15, 6, 4)
        for k, nav in enumerate([True, False, False]):
            group.create_group(f"axis-{k}").attrs["navigate"] = nav
    with pytest.raises(GhostmapError, match="15 frames"):
        open_scan(path)
    with open_scan(path, scan_shape=(3, 5)) as scan:
        np.testing.assert_array_equal(scan.read_rows(1, 3), index_array()[1:3])
