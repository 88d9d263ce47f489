"""Tests for ghostmap.reading: every format round-trips, errors are one clear line."""

from __future__ import annotations

import os
import resource
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from ghostmap.errors import GhostmapError
from ghostmap.reading import (
    SUPPORTED,
    Scan,
    as_scan,
    open_scan,
    rows_per_block,
    save_preview,
)

sys.path.insert(0, str(Path(__file__).parent))
from dm4_writer import write_dm, write_image  # noqa: E402
from test_analysis import synthetic_pattern  # noqa: E402

SHAPE = (3, 5, 6, 4)  # scan rows, scan cols, det rows, det cols: all different


def index_array(shape=SHAPE, dtype=np.uint16) -> np.ndarray:
    """Each value encodes its own (r, c, i, j) position, so any axis mix-up shows."""
    r, c, i, j = np.indices(shape)
    return (((r * shape[1] + c) * shape[2] + i) * shape[3] + j).astype(dtype)


def assert_one_line(exc_info, *parts):
    message = str(exc_info.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message


# ----------------------------------------------------------------------- formats


def test_npy_round_trip_is_memory_mapped(tmp_path):
    path = tmp_path / "scan.npy"
    np.save(path, index_array())
    with open_scan(path) as scan:
        assert isinstance(scan.data, np.memmap)
        assert scan.shape == SHAPE and scan.dtype == np.uint16
        block = scan.read_rows(0, 3)
        assert type(block) is np.ndarray and not isinstance(block, np.memmap)
        np.testing.assert_array_equal(block, index_array())


def test_npy_open_does_not_read_the_file(tmp_path):
    path = tmp_path / "big.npy"
    big = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(64, 64, 64, 64))  # 16 MiB
    big[-1, -1, -1, -1] = 7
    del big
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    scan = open_scan(path)
    assert scan.read_pattern(63, 63)[-1, -1] == 7
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < 8 * 1024  # well under the 16 MiB file
    scan.close()


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="Linux's /proc")
def test_boxes_of_a_npy_are_read_without_keeping_the_file_resident(tmp_path):
    """read_box (training's labelled positions, the label page's patterns) reads with plain file
    reads: a map's touched pages would stay resident, whole multi-page folios of them."""
    path = tmp_path / "big.npy"
    data = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(48, 48, 64, 64))  # 18.9 MB
    data[:] = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    data[:, :, 0, 0] = np.arange(48 * 48, dtype=np.uint16).reshape(48, 48)
    del data
    with open_scan(path) as scan:
        before = _resident_bytes()
        for r in range(1, 48, 3):
            for c in range(1, 48, 3):  # 3 x 3 boxes that tile the whole scan
                box = scan.read_box(r - 1, r + 2, c - 1, c + 2)
                assert box[1, 1, 0, 0] == r * 48 + c and box[2, 0, 5, 7] == 5 * 64 + 7
        assert _resident_bytes() - before < 8 * 2**20  # well under the 18.9 MB read


def test_h5_auto_discovers_the_single_4d_dataset(tmp_path):
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f["meta/angles"] = np.zeros(5)
        f["meta/image"] = np.zeros((3, 5))
        f["meta/stack"] = np.zeros((2, 3, 4))
        f.create_dataset("entry/data/counts", data=index_array(), chunks=(1, 5, 6, 4), compression="gzip")
    with open_scan(path) as scan:
        assert scan.source.endswith(":/entry/data/counts")
        np.testing.assert_array_equal(scan.read_rows(0, 3), index_array())
        data = scan.data
    assert not data.id.valid  # closing the scan closed the file


@pytest.mark.parametrize(
    "inner",
    [
        "4DSTEM_experiment/data/datacubes/datacube_0",  # py4DSTEM <= 0.13
        "my_root/datacube",  # py4DSTEM 0.14 / emdfile tree
    ],
)
def test_py4dstem_layouts_are_found(tmp_path, inner):
    path = tmp_path / "scan.emd"
    with h5py.File(path, "w") as f:
        f.attrs["emd_group_type"] = "file"
        group = f.create_group(inner)
        group.attrs["emd_group_type"] = "array"
        group["data"] = index_array()
        for k, n in enumerate(SHAPE):
            group[f"dim{k}"] = np.arange(n, dtype=float)
        group.create_group("metadatabundle/calibration").attrs["R_pixel_size"] = 1.0
        f[f"{inner}/dp_mean/data"] = np.zeros(SHAPE[2:])
    with open_scan(path) as scan:
        assert scan.source.endswith(f"/{inner}/data")
        np.testing.assert_array_equal(scan.read_box(0, 3, 0, 5), index_array())


def test_h5_with_several_4d_datasets_lists_them(tmp_path):
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        f["a"] = index_array()
        f["b/c"] = index_array()
    with pytest.raises(GhostmapError) as exc:
        open_scan(path)
    assert_one_line(exc, "two.h5", "/a (3, 5, 6, 4)", "/b/c (3, 5, 6, 4)", "--dataset")
    with open_scan(path, dataset="b/c") as scan:
        np.testing.assert_array_equal(scan.read_rows(1, 2), index_array()[1:2])


def test_h5_with_no_4d_dataset(tmp_path):
    path = tmp_path / "flat.h5"
    with h5py.File(path, "w") as f:
        f["img"] = np.zeros((3, 5))
    with pytest.raises(GhostmapError) as exc:
        open_scan(path)
    assert_one_line(exc, "flat.h5", "no 4-D dataset", "/img (3, 5)")


def test_h5_dataset_option_errors(tmp_path):
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f["entry/data"] = index_array()
        f["entry/image"] = np.zeros((3, 5))
    with pytest.raises(GhostmapError) as exc:
        open_scan(path, dataset="/data/x")
    assert_one_line(exc, "scan.h5 has no dataset '/data/x' (4-D datasets there: /entry/data (3, 5, 6, 4))")
    with pytest.raises(GhostmapError) as exc:
        open_scan(path, dataset="entry/image")
    assert_one_line(exc, "2-D array of shape (3, 5)", "4-D data")
    with pytest.raises(GhostmapError) as exc:
        open_scan(path, dataset="entry")
    assert_one_line(exc, "'entry'", "group")


def test_not_really_hdf5(tmp_path):
    path = tmp_path / "fake.h5"
    path.write_bytes(b"this is not hdf5" * 10)
    with pytest.raises(GhostmapError) as exc:
        open_scan(path)
    assert_one_line(exc, "fake.h5", "HDF5")


def test_zarr_directory_array_and_group(tmp_path):
    import zarr

    array_path = tmp_path / "scan.zarr"
    z = zarr.create_array(str(array_path), shape=SHAPE, chunks=(1, 5, 6, 4), dtype="u2")
    z[:] = index_array()
    with open_scan(array_path) as scan:
        np.testing.assert_array_equal(scan.read_rows(0, 3), index_array())
        assert scan.file_size > 0

    group_path = tmp_path / "group.ZARR"
    g = zarr.open_group(str(group_path), mode="w")
    g.create_array("meta/angles", shape=(5,), dtype="f8")
    g.create_array("scans/raw", shape=SHAPE, dtype="u2")[:] = index_array()
    with open_scan(group_path) as scan:
        assert scan.source.endswith(":/scans/raw")
        np.testing.assert_array_equal(scan.read_box(1, 3, 2, 4), index_array()[1:3, 2:4])
    with pytest.raises(GhostmapError) as exc:
        open_scan(group_path, dataset="scans/missing")
    assert_one_line(exc, "no dataset 'scans/missing'", "/scans/raw")


def test_zarr_zip_store(tmp_path):
    import zarr
    from zarr.storage import ZipStore

    path = tmp_path / "scan.zip"
    store = ZipStore(str(path), mode="w")
    zarr.create_array(store, shape=SHAPE, dtype="u2")[:] = index_array()
    store.close()
    with open_scan(path) as scan:
        np.testing.assert_array_equal(scan.read_rows(0, 3), index_array())


def test_zarr_that_is_not_zarr(tmp_path):
    path = tmp_path / "empty.zarr"
    path.mkdir()
    with pytest.raises(GhostmapError) as exc:
        open_scan(path)
    assert_one_line(exc, "empty.zarr", "zarr")


@pytest.mark.parametrize("version", [4, 3])
@pytest.mark.parametrize("swapped", [True, False])
def test_dm_4d_round_trip_keeps_axis_order(tmp_path, version, swapped):
    """Both GMS layouts of 4-D STEM data come back as (scan_row, scan_col, det_row, det_col)."""
    path = write_dm(tmp_path / f"scan.dm{version}", index_array(), swapped=swapped, version=version)
    with open_scan(path) as scan:
        assert scan.shape == SHAPE
        np.testing.assert_array_equal(scan.read_rows(0, 3), index_array())
        np.testing.assert_array_equal(scan.read_pattern(2, 1), index_array()[2, 1])


def test_dm_layouts_differ_on_disk(tmp_path):
    """The two layouts really are different bytes; only the tag tells them apart."""
    new = write_dm(tmp_path / "new.dm4", index_array(), swapped=True).read_bytes()
    old = write_dm(tmp_path / "old.dm4", index_array(), swapped=False).read_bytes()
    assert index_array().tobytes() in new
    assert index_array().transpose(2, 3, 0, 1).copy().tobytes() in old
    assert index_array().tobytes() not in old


def test_dm_2d_image_is_refused(tmp_path):
    path = write_image(tmp_path / "image.dm4", np.zeros((6, 4), dtype=np.float32))
    with pytest.raises(GhostmapError) as exc:
        open_scan(path)
    assert_one_line(exc, "image.dm4", "no 4-D image", "(6, 4)")


def test_dm_garbage(tmp_path):
    path = tmp_path / "bad.dm4"
    path.write_bytes(b"\x00\x00\x00\x04" + b"\xff" * 40)
    with pytest.raises(GhostmapError) as exc:
        open_scan(path)
    assert_one_line(exc, "bad.dm4")


def test_blo_round_trip(tmp_path):
    from rsciio.blockfile import file_writer

    data = index_array((3, 5, 6, 6), np.uint8)  # blockfiles need square, uint8 patterns
    axes = [
        {"size": n, "index_in_array": k, "name": name, "scale": 1.0, "offset": 0.0, "units": unit, "navigate": k < 2}
        for k, (n, name, unit) in enumerate(zip(data.shape, "yxab", ["nm", "nm", "cm", "cm"]))
    ]
    signal = {"data": data, "axes": axes, "metadata": {}, "original_metadata": {}, "attributes": {"_lazy": False}}
    path = tmp_path / "scan.blo"
    file_writer(str(path), signal, navigator=None, show_progressbar=False)
    with open_scan(path) as scan:
        assert scan.shape == (3, 5, 6, 6)
        np.testing.assert_array_equal(scan.read_rows(0, 3), data)


def write_mib(path: Path, frames: np.ndarray, hdr_shape=None) -> Path:
    """A Quantum Detectors Merlin .mib file: per frame a 384-byte ASCII header, then >u2 data."""
    n, rows, cols = frames.shape
    with open(path, "wb") as f:
        for k in range(n):
            head = (
                f"MQ1,{k + 1:06d},00384,01,{cols:04d},{rows:04d},U16,   1x1,01,"
                "2020-05-18 16:51:49.971626,0.000555,0,0,0,1.200000E+2,5.110000E+2,0.000000E+0,"
                "0.000000E+0,0.000000E+0,0.000000E+0,0.000000E+0,0.000000E+0,3RX,175,511,000,000,000,"
                "000,000,000,125,255,125,125,100,100,082,100,087,030,128,004,255,129,128,176,168,511,"
                "511,MQ1A,2020-05-18T14:51:49.971626178Z,555000ns,12,"
            )
            f.write(head.ljust(384).encode("ascii"))
            f.write(frames[k].astype(">u2").tobytes())
    if hdr_shape is not None:
        rows_, cols_ = hdr_shape
        path.with_suffix(".hdr").write_text(
            f"HDR,\t\nFrames in Acquisition (Number):\t{rows_ * cols_}\nFrames per Trigger (Number):\t{cols_}\nEnd\t\n"
        )
    return path


def test_mib_round_trip(tmp_path):
    data = index_array()
    # RosettaSciIO flips Merlin frames vertically on reading; store them flipped so
    # that the array read back is `data` itself.
    frames = data[:, :, ::-1, :].reshape(-1, *SHAPE[2:])
    path = write_mib(tmp_path / "scan.mib", frames, hdr_shape=SHAPE[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open_scan(path) as scan:
            assert scan.dtype == np.dtype("uint16") and scan.dtype.isnative
            np.testing.assert_array_equal(scan.read_rows(0, 3), data)
            assert scan.file_size == path.stat().st_size + path.with_suffix(".hdr").stat().st_size


def test_mib_without_scan_shape(tmp_path):
    data = index_array()
    path = write_mib(tmp_path / "noshape.mib", data[:, :, ::-1, :].reshape(-1, *SHAPE[2:]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(GhostmapError) as exc:
            open_scan(path)
        assert_one_line(exc, "noshape.mib", "scan_shape")
        with open_scan(path, scan_shape=(3, 5)) as scan:
            np.testing.assert_array_equal(scan.read_rows(0, 3), data)


# ------------------------------------------------------------------- bad input


def test_truncated_npy(tmp_path):
    path = tmp_path / "scan.npy"
    np.save(path, index_array())
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(GhostmapError) as exc:
        open_scan(path)
    assert str(exc.value) == f"{path} is truncated or not a valid .npy file"


def test_corrupt_npy_header(tmp_path):
    path = tmp_path / "scan.npy"
    np.save(path, index_array())
    raw = bytearray(path.read_bytes())
    raw[10:40] = b"garbage garbage garbage garbag"
    path.write_bytes(bytes(raw))
    with pytest.raises(GhostmapError) as exc:
        open_scan(path)
    assert_one_line(exc, "truncated or not a valid .npy file")


def test_pickled_npy_is_refused(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(GhostmapError):
        open_scan(path)


def test_not_4d(tmp_path):
    path = tmp_path / "scan.npy"
    np.save(path, np.zeros((4, 5)))  # a 3-D frame stack is a scan given its shape (tests/test_io_registry.py)
    with pytest.raises(GhostmapError) as exc:
        open_scan(path)
    assert str(exc.value) == (
        f"{path} holds a 2-D array of shape (4, 5); "
        "ghostmap needs 4-D data (scan_row, scan_col, det_row, det_col)"
    )


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(GhostmapError) as exc:
        open_scan(tmp_path / "nothere.h5")
    assert_one_line(exc, "no such file:", "nothere.h5")
    path = tmp_path / "scan.XYZ"
    path.write_bytes(b"x")
    with pytest.raises(GhostmapError) as exc:
        open_scan(path)
    assert str(exc.value) == f"unsupported file type '.xyz'; {SUPPORTED}"
    assert ".dm5" in SUPPORTED and ".mrc" in SUPPORTED


def test_scan_shape_is_checked_for_other_formats(tmp_path):
    path = tmp_path / "scan.npy"
    np.save(path, index_array())
    assert open_scan(path, scan_shape=(3, 5)).scan_shape == (3, 5)
    with pytest.raises(GhostmapError) as exc:
        open_scan(path, scan_shape=(5, 3))
    assert_one_line(exc, "(3, 5)", "(5, 3)")


def test_missing_optional_reader_message(tmp_path, monkeypatch):
    path = write_dm(tmp_path / "scan.dm4", index_array())
    monkeypatch.setitem(sys.modules, "rsciio.digitalmicrograph", None)  # import now fails
    with pytest.raises(GhostmapError) as exc:
        open_scan(path)
    assert_one_line(exc, "reading .dm4 files needs the optional RosettaSciIO reader", "ghostmap[formats]")


# ----------------------------------------------------------------------- as_scan


def test_as_scan_on_arrays_and_datasets(tmp_path):
    data = index_array()
    scan = as_scan(data)
    assert scan.source == "numpy array" and scan.file_size is None
    assert as_scan(scan) is scan
    np.testing.assert_array_equal(scan.read_pattern(1, 4), data[1, 4])

    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f["x/y"] = data
    with h5py.File(path, "r") as f:
        scan = as_scan(f["x/y"])
        assert scan.source.endswith("scan.h5:/x/y")
        assert scan.file_size == path.stat().st_size
        np.testing.assert_array_equal(scan.read_rows(1, 3), data[1:3])


def test_as_scan_on_dask_and_zarr():
    import dask.array as da
    import zarr

    data = index_array()
    scan = as_scan(da.from_array(data, chunks=(1, 5, 6, 4)))
    assert scan.source == "dask array"
    np.testing.assert_array_equal(scan.read_rows(0, 3), data)
    z = zarr.create_array(zarr.storage.MemoryStore(), shape=SHAPE, dtype="u2")
    z[:] = data
    np.testing.assert_array_equal(as_scan(z).read_rows(0, 3), data)


def test_as_scan_duck_types_hyperspy_and_py4dstem():
    data = index_array()

    class FakeSignal2D:  # hyperspy: .data is (nav_y, nav_x, sig_y, sig_x)
        def __init__(self, data):
            self.data = data
            self.axes_manager = object()

    class DataCube:  # py4DSTEM: .data is (Rx, Ry, Qx, Qy), and the object has .shape itself
        def __init__(self, data):
            self.data = data
            self.shape = data.shape

    scan = as_scan(FakeSignal2D(data))
    assert scan.source == "hyperspy signal"
    np.testing.assert_array_equal(scan.read_rows(0, 3), data)
    scan = as_scan(DataCube(data))
    assert scan.source == "py4DSTEM DataCube"
    np.testing.assert_array_equal(scan.read_box(0, 2, 1, 4), data[:2, 1:4])


def test_as_scan_refuses_wrong_things():
    with pytest.raises(GhostmapError) as exc:
        as_scan(np.zeros((2, 3)))
    assert_one_line(exc, "2-D array of shape (2, 3)", "4-D data")
    with pytest.raises(GhostmapError):
        as_scan(42)
    with pytest.raises(GhostmapError) as exc:
        as_scan(np.zeros((1, 2, 3, 4), dtype=complex))
    assert_one_line(exc, "complex")


# ------------------------------------------------------------------- reading


def test_read_rows_box_and_iter_rows_agree(tmp_path):
    data = index_array((7, 5, 6, 4))
    path = tmp_path / "scan.npy"
    np.save(path, data)
    scan = open_scan(path)
    np.testing.assert_array_equal(scan.read_rows(2, 5), data[2:5])
    np.testing.assert_array_equal(scan.read_box(1, 6, 2, 5), data[1:6, 2:5])
    np.testing.assert_array_equal(scan.read_pattern(6, 4), data[6, 4])
    assert scan.read_rows(3, 3).shape == (0, 5, 6, 4)
    blocks = list(scan.iter_rows(3))
    assert [start for start, _ in blocks] == [0, 3, 6]
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), data)
    with pytest.raises(IndexError):
        scan.read_rows(5, 8)
    with pytest.raises(IndexError):
        scan.read_pattern(0, 5)


def test_big_endian_data_reads_as_native():
    data = index_array().astype(">u2")
    scan = as_scan(data)
    assert scan.dtype == np.uint16 and scan.dtype.isnative
    block = scan.read_rows(0, 3)
    assert block.dtype.isnative
    np.testing.assert_array_equal(block, index_array())


def test_rows_per_block_respects_budget():
    scan = as_scan(np.zeros((100, 10, 8, 8), dtype=np.float32))  # 2560 bytes per row
    assert rows_per_block(scan, max_bytes=2560 * 7 + 100) == 7
    assert rows_per_block(scan, max_bytes=10) == 1
    assert rows_per_block(scan, max_bytes=10**9) == 100
    for rows in (1, 7, 33):
        budget = rows * 2560
        n = rows_per_block(scan, max_bytes=budget)
        assert n * 2560 <= budget


def test_save_preview_writes_a_png(tmp_path):
    data = np.stack([np.stack([synthetic_pattern(seed=r * 10 + c) for c in range(5)]) for r in range(4)])
    out = tmp_path / "sub" / "preview.png"
    save_preview(as_scan(data.astype(np.float32)), out)
    raw = out.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(raw) > 10_000
    assert [p.name for p in out.parent.iterdir()] == ["preview.png"]  # no temp file left


def test_scan_is_a_context_manager_and_close_is_idempotent(tmp_path):
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f["d"] = index_array()
    scan = open_scan(path)
    with scan:
        assert isinstance(scan, Scan)
    scan.close()
    scan.close()


def test_reading_still_exports_what_moved():
    """Old imports keep working: readers from ghostmap.io, analysis, and the preview from outputs."""
    import ghostmap.analysis
    import ghostmap.io
    import ghostmap.outputs
    import ghostmap.reading as reading

    for name in ("virtual_image", "bright_field_mask", "mean_pattern", "max_pattern", "mean_and_max_pattern",
                 "describe"):
        assert getattr(reading, name) is getattr(ghostmap.analysis, name)
    for name in ("Scan", "TimeSeries", "open_scan", "open_time_series", "time_series_length", "as_scan",
                 "rows_per_block"):
        assert getattr(reading, name) is getattr(ghostmap.io, name)
    assert reading.save_preview is ghostmap.outputs.save_preview
    with pytest.raises(AttributeError):
        reading.no_such_name  # noqa: B018


def test_mapped_rows_are_the_rows_and_say_when_the_file_is_cut_short(tmp_path):
    from ghostmap.io.base import Scan

    data = np.random.default_rng(0).poisson(3, (4, 3, 8, 8)).astype(np.uint16)
    np.save(tmp_path / "scan.npy", data)
    scan = open_scan(tmp_path / "scan.npy")
    with scan.mapped_rows(1, 3) as rows:
        np.testing.assert_array_equal(rows, data[1:3])
    path, offset = scan.file_extent(1, 3)
    with open(path, "rb") as f:
        f.seek(offset)
        np.testing.assert_array_equal(np.frombuffer(f.read(data[1:3].nbytes), np.uint16), data[1:3].ravel())
    assert Scan(data).file_extent(0, 2) is None  # in memory: no file to read from
    with Scan(data.astype(">u2")).mapped_rows(0, 2) as rows:  # not a file: read as read_rows does
        np.testing.assert_array_equal(rows, data[:2])
    with open(tmp_path / "scan.npy", "r+b") as f:  # the file loses its last rows after it was opened
        f.truncate(f.seek(0, 2) - 3 * 8 * 8 * 2 * 2)
    with pytest.raises(GhostmapError, match="truncated"):
        with scan.mapped_rows(2, 4):
            pass


@pytest.mark.parametrize("layout", [dict(), dict(chunks=(1, 3, 8, 8)), dict(chunks=(2, 3, 8, 8)),
                                    dict(chunks=(1, 3, 8, 8), compression="gzip"), dict(chunks=(1, 1, 8, 8)),
                                    dict(chunks=(1, 3, 8, 8), dtype=">u2")])
def test_mapped_rows_of_hdf5_are_the_rows_mapped_where_they_lie_plain_in_the_file(tmp_path, layout):
    from ghostmap.io.base import _hdf5_extent

    data = np.random.default_rng(1).poisson(3, (5, 3, 8, 8)).astype(np.uint16)
    layout = dict(layout)
    dtype = layout.pop("dtype", np.uint16)
    with h5py.File(tmp_path / "scan.h5", "w") as f:
        f.create_dataset("data", data=data.astype(dtype), **layout)
    scan = open_scan(tmp_path / "scan.h5")
    plain = "compression" not in layout and dtype == np.uint16 and layout.get("chunks", (1, 3))[1] == 3
    row_bytes = 3 * 8 * 8 * 2
    for start, stop in ((0, 1), (1, 2), (4, 5), (2, 4)):
        in_one_chunk = "chunks" not in layout or start // layout["chunks"][0] == (stop - 1) // layout["chunks"][0]
        assert (_hdf5_extent(scan.data, start, stop, row_bytes) is not None) == (plain and in_one_chunk)
        assert scan.file_extent(start, stop) == _hdf5_extent(scan.data, start, stop, row_bytes)
        with scan.mapped_rows(start, stop) as rows:
            np.testing.assert_array_equal(rows, data[start:stop])
    scan.close()
