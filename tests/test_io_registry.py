"""Tests for ghostmap.io.registry: choosing the reader, flat frame stacks + scan shape, corrupt chunks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from ghostmap.errors import GhostmapError
from ghostmap.io import FlatFrames, format_kind, open_scan, sniff
from ghostmap.io.base import row_ranges

sys.path.insert(0, str(Path(__file__).parent))  # the vendor-layout writers of the other test modules

SHAPE = (3, 5, 6, 4)


def index_array(shape=SHAPE, dtype=np.uint16) -> np.ndarray:
    r, c, i, j = np.indices(shape)
    return (((r * shape[1] + c) * shape[2] + i) * shape[3] + j).astype(dtype)


def flat(data: np.ndarray) -> np.ndarray:
    return data.reshape(-1, *data.shape[2:])


def save_npy(path, data):
    np.save(path, data)
    return path


def save_h5(path, data):
    with h5py.File(path, "w") as f:
        f.create_dataset("entry/frames", data=data, chunks=(1, *data.shape[1:]), compression="gzip")
        f["entry/angles"] = np.arange(3.0)
    return path


def save_zarr(path, data):
    import zarr

    zarr.create_array(str(path), shape=data.shape, chunks=(2, *data.shape[1:]), dtype=data.dtype)[:] = data
    return path


@pytest.mark.parametrize("writer, name", [(save_npy, "s.npy"), (save_h5, "s.h5"), (save_zarr, "s.zarr")])
def test_flat_frame_stacks_take_the_scan_shape(tmp_path, writer, name):
    data = index_array()
    path = writer(tmp_path / name, flat(data))
    with pytest.raises(GhostmapError) as exc:
        open_scan(path)
    message = str(exc.value)
    assert "\n" not in message and "15 frames of 6 x 4 pixels" in message and "--scan-shape" in message
    with pytest.raises(GhostmapError, match="holds 15 frames, but --scan-shape 4x4 needs 16"):
        open_scan(path, scan_shape=(4, 4))
    with open_scan(path, scan_shape=(3, 5)) as scan:
        assert scan.shape == SHAPE and scan.dtype == np.uint16
        np.testing.assert_array_equal(scan.read_rows(0, 3), data)
        np.testing.assert_array_equal(scan.read_rows(1, 2), data[1:2])
        np.testing.assert_array_equal(scan.read_box(1, 3, 2, 5), data[1:3, 2:5])
        np.testing.assert_array_equal(scan.read_pattern(2, 4), data[2, 4])
        if name.endswith(".npy"):  # still a memory map, read with plain file reads
            assert isinstance(scan.data, np.memmap)


def test_flat_frames_read_only_the_rows_asked_for():
    seen = []

    class Frames:
        shape, dtype = (15, 6, 4), np.dtype("u2")

        def __getitem__(self, key):
            seen.append((key.start, key.stop))
            return flat(index_array())[key]

    view = FlatFrames(Frames(), (3, 5))
    np.testing.assert_array_equal(view[1:2, 1:3], index_array()[1:2, 1:3])
    assert seen == [(5, 10)]
    np.testing.assert_array_equal(view[2], index_array()[2])
    with pytest.raises(ValueError):
        FlatFrames(Frames(), (4, 4))


def test_sniffing_beats_a_lying_suffix(tmp_path):
    data = index_array()
    npy_named_h5 = save_npy(tmp_path / "really_npy.h5", data)
    np.save(tmp_path / "x.npy", data)
    (tmp_path / "x.npy").rename(npy_named_h5)
    assert sniff(npy_named_h5) == "npy" and format_kind(npy_named_h5) == "npy"
    with open_scan(npy_named_h5) as scan:
        np.testing.assert_array_equal(scan.read_rows(0, 3), data)
    h5_no_suffix = tmp_path / "acquisition_0001"
    with h5py.File(h5_no_suffix, "w") as f:
        f["data"] = data
    assert format_kind(h5_no_suffix) == "hdf5"
    with open_scan(h5_no_suffix) as scan:
        np.testing.assert_array_equal(scan.read_rows(0, 3), data)
    text = tmp_path / "notes.xyz"
    text.write_text("hello")
    with pytest.raises(GhostmapError, match="unsupported file type '.xyz'"):
        open_scan(text)


def test_row_ranges_text():
    assert row_ranges([4]) == "scan row 4"
    assert row_ranges([1, 2, 3]) == "scan rows 1-3"
    assert row_ranges([1, 10, 11, 13]) == "scan rows 1, 10-11, 13"


# --------------------------------------------------------------- corrupt compressed chunks


def corrupt_zarr(path, rows=(1, 10, 11)):
    """A zstd-compressed store, 4 chunks per scan row, with every chunk of ``rows`` damaged."""
    import zarr
    from zarr.codecs import ZstdCodec

    data = np.random.default_rng(0).integers(0, 100, (16, 16, 16, 16)).astype("u2")
    z = zarr.create_array(str(path), shape=data.shape, chunks=(1, 4, 16, 16), dtype="u2", compressors=[ZstdCodec()])
    z[:] = data
    for row in rows:
        for chunk in (path / "c" / str(row)).rglob("*"):
            if chunk.is_file():
                raw = bytearray(chunk.read_bytes())
                raw[8:40] = b"\x00" * 32
                chunk.write_bytes(bytes(raw))
    return path


def test_corrupt_zarr_chunks_name_the_file_and_rows(tmp_path):
    path = corrupt_zarr(tmp_path / "bad.zarr")
    with open_scan(path) as scan:
        np.testing.assert_array_equal(scan.read_rows(2, 10).shape, (8, 16, 16, 16))
        with pytest.raises(GhostmapError) as exc:
            scan.read_rows(0, 16)
    message = str(exc.value)
    assert "\n" not in message and message.startswith(f"{path}: scan rows 1, 10-11 could not be read")


def one_line_failure(*args):
    run = subprocess.run([sys.executable, "-m", "ghostmap.cli", *map(str, args)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 1, run.stderr
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: "), run.stderr
    return run.stderr


def test_cli_corrupt_zarr_is_one_line_and_nothing_else(tmp_path):
    path = corrupt_zarr(tmp_path / "bad.zarr")
    stderr = one_line_failure("info", path, "--preview", tmp_path / "p.png")
    assert "bad.zarr: scan row 1 could not be read" in stderr and "Task was destroyed" not in stderr
    assert not (tmp_path / "p.png").exists()


def test_settling_zarr_reads_leaves_no_asyncio_noise_at_exit(tmp_path):
    """A failed zarr read leaves chunk reads pending; exiting at once then often (not always: it is a
    race) prints hundreds of "Task was destroyed but it is pending!" lines. Settled, never."""
    path = corrupt_zarr(tmp_path / "bad.zarr", rows=range(0, 16, 2))
    code = ("import sys, zarr\nfrom ghostmap.io.zarrstore import settle_pending_reads\n"
            f"z = zarr.open({str(path)!r}, mode='r')\n"
            "try:\n    z[0:16]\nexcept RuntimeError:\n"
            "    settle_pending_reads()\n    print('failed', file=sys.stderr)\n")
    for _ in range(3):
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert run.stderr == "failed\n"


def test_cli_corrupt_hdf5_chunk_is_one_line(tmp_path):
    data = np.random.default_rng(0).integers(0, 100, (6, 5, 16, 16)).astype("u2")
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("scan", data=data, chunks=(1, 5, 16, 16), compression="gzip")
    with h5py.File(path, "r") as f:
        info = f["scan"].id.get_chunk_info(4)
    raw = bytearray(path.read_bytes())
    raw[info.byte_offset : info.byte_offset + info.size] = b"\x13" * info.size
    path.write_bytes(bytes(raw))
    stderr = one_line_failure("info", path, "--preview", tmp_path / "p.png")
    assert "bad.h5: scan row 4 could not be read" in stderr


# ------------------------------------------------------- the same scan in every format


def test_every_format_predicts_the_same_labels_as_npy(series, tmp_path):
    """One simulated scan saved in each format the readers know gives exactly the .npy's labels."""
    import warnings

    import mrcfile
    from test_io_gatan import write_dm5
    from test_io_hyperspy import signal_dict, write_zspy
    from test_io_simplon import write_master

    from ghostmap.prediction import predict

    scan = series["scans"][0]  # (12, 48, 32, 32) uint16
    rows, cols = scan.shape[:2]
    reference = predict(series["paths"][0], series["model"])
    made: dict[str, tuple] = {}

    made["h5 4-D"] = (save_h5(tmp_path / "s4.h5", scan), None)
    made["h5 3-D"] = (save_h5(tmp_path / "s3.h5", flat(scan)), (rows, cols))
    made["zarr"] = (save_zarr(tmp_path / "s.zarr", scan), None)
    made["npy 3-D"] = (save_npy(tmp_path / "flat.npy", flat(scan)), (rows, cols))
    made["SIMPLON"] = (write_master(tmp_path, flat(scan), [200, 200, 176]), (rows, cols))
    made["dm5"] = (write_dm5(tmp_path / "one.dm5", scan[None], cuts=[scan.nbytes // 3]), None)
    made["zspy"] = (tmp_path / "s.zspy", None)
    write_zspy(made["zspy"][0], signal_dict(scan))
    with mrcfile.new(tmp_path / "s.mrc") as mrc:
        mrc.set_data(scan)
    made["mrc"] = (tmp_path / "s.mrc", None)
    pytest.importorskip("rsciio")
    from rsciio.hspy import file_writer as hspy_writer

    hspy_writer(str(tmp_path / "s.hspy"), signal_dict(scan))
    made["hspy"] = (tmp_path / "s.hspy", None)
    from dm4_writer import write_dm

    made["dm4"] = (write_dm(tmp_path / "s.dm4", scan), None)
    from test_reading import write_mib

    # RosettaSciIO flips Merlin frames vertically on reading: store them flipped
    made["mib"] = (write_mib(tmp_path / "s.mib", flat(scan[:, :, ::-1, :]), hdr_shape=(rows, cols)), None)
    from rsciio.tvips import file_writer as tvips_writer

    frames = flat(scan)
    axes = [{"size": n, "index_in_array": k, "name": nm, "scale": 1.0, "offset": 0.0, "units": u, "navigate": k < 1}
            for k, (n, nm, u) in enumerate(zip(frames.shape, ("frame", "ky", "kx"), ("", "1/nm", "1/nm")))]
    tvips_writer(str(tmp_path / "s_000.tvips"), {"data": frames, "axes": axes, "original_metadata": {},
                                                 "metadata": {"Signal": {"signal_type": "electron_diffraction"}},
                                                 "attributes": {"_lazy": False}}, show_progressbar=False)
    made["tvips"] = (tmp_path / "s_000.tvips", (rows, cols))

    for what, (path, shape) in made.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open_scan(path, scan_shape=shape) as opened:
                assert opened.shape == scan.shape, what
                labels = predict(opened, series["model"]).labels
        np.testing.assert_array_equal(labels, reference.labels, err_msg=what)

    out = tmp_path / "cli"
    run = subprocess.run([sys.executable, "-m", "ghostmap.cli", "predict", str(made["SIMPLON"][0]), "--model",
                          str(series["model_dir"]), "--out", str(out), "--scan-shape", f"{rows}x{cols}",
                          "--precision", "float32"],  # the exact network, as predict() runs it
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    np.testing.assert_array_equal(np.load(out / "predictions.npz")["labels"], reference.labels)
