"""Tests for ghostmap.io.rsciio: real Merlin, blockfile and EMD files; TVIPS frame streams."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from ghostmap.errors import GhostmapError
from ghostmap.io import open_scan

REAL = Path(__file__).resolve().parents[2] / "shared" / "real-files"
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real detector files are not at {REAL}")
pytest.importorskip("rsciio")


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@needs_real
def test_real_merlin_with_a_scan_shape_in_its_header():
    with open_scan(REAL / "merlin" / "001_4x2_6bit.mib") as scan:
        assert scan.shape == (2, 4, 256, 256) and scan.dtype == np.uint8
        whole = scan.read_rows(0, 2)
        np.testing.assert_array_equal(scan.read_rows(1, 2), whole[1:2])
        np.testing.assert_array_equal(scan.read_pattern(1, 3), whole[1, 3])
        assert whole.any()


@needs_real
def test_real_merlin_header_without_scan_shape_asks_for_one():
    path = REAL / "merlin" / "Single_9_Frame_CounterDepth_12_Rows_256.mib"
    with pytest.raises(GhostmapError) as exc:
        open_scan(path)
    assert str(exc.value) == (
        f"could not determine the scan shape of {path} (Single_9_Frame_CounterDepth_12_Rows_256.hdr records no "
        "scan shape); give it with --scan-shape ROWSxCOLS (9 frames)"
    )
    with open_scan(path, scan_shape=(3, 3)) as scan:
        assert scan.shape == (3, 3, 256, 256) and scan.dtype == np.uint16
        np.testing.assert_array_equal(scan.read_rows(2, 3)[0, 1], scan.read_pattern(2, 1))
    with pytest.raises(GhostmapError, match="9 frames, not the 2 x 2"):
        open_scan(path, scan_shape=(2, 2))


@needs_real
def test_real_raw_mode_merlin_is_refused_naming_the_setting():
    path = REAL / "merlin" / "Single_9_Frame_CounterDepth_1_Rows_256RAW.mib"
    with pytest.raises(GhostmapError) as exc:
        open_scan(path, scan_shape=(3, 3))
    message = str(exc.value)
    assert "\n" not in message and "RAW" in message and "R64" in message
    assert "Merlin file format to 'binary'" in message


@needs_real
def test_real_blockfile_and_emd():
    with open_scan(REAL / "blockfile" / "test2.blo") as scan:
        assert scan.shape == (2, 3, 5, 5)
        assert [c[0] for c in scan.info.calibrations] == ["y", "x", "dy", "dx"]
        assert scan.info.calibrations[0][2:] == (64.0, "nm")
        np.testing.assert_array_equal(scan.read_box(0, 2, 1, 3), scan.read_rows(0, 2)[:, 1:3])
    emd = REAL / "emd" / "Si100_4D.emd"
    with pytest.raises(GhostmapError, match="holds 2 4-D datasets"):
        open_scan(emd)
    with open_scan(emd, dataset="4DSTEM_simulation/data/datacubes/CBED_array_depth0001/datacube") as scan:
        assert scan.shape == (11, 11, 8, 8) and scan.info.format == "EMD (HDF5)"


def test_not_a_mib_file(tmp_path):
    path = tmp_path / "x.mib"
    path.write_bytes(b"\x00" * 2048)
    with pytest.raises(GhostmapError, match="not a Merlin .mib file"):
        open_scan(path)


def test_tvips_frames_take_the_scan_shape(tmp_path):
    from rsciio.tvips import file_writer

    data = np.arange(3 * 4 * 8 * 8, dtype=np.uint16).reshape(3, 4, 8, 8)
    axes = [{"size": n, "index_in_array": k, "name": nm, "scale": 1.0, "offset": 0.0, "units": u, "navigate": k < 1}
            for k, (n, nm, u) in enumerate(zip((12, 8, 8), ("frame", "ky", "kx"), ("", "1/nm", "1/nm")))]
    signal = {"data": data.reshape(12, 8, 8), "axes": axes, "metadata": {"Signal": {"signal_type": "electron_diffraction"}},
              "original_metadata": {}, "attributes": {"_lazy": False}}
    path = tmp_path / "movie_000.tvips"
    file_writer(str(path), signal, show_progressbar=False)
    with pytest.raises(GhostmapError, match="12 frames of 8 x 8 pixels"):
        open_scan(path)
    with open_scan(path, scan_shape=(3, 4)) as scan:
        assert scan.shape == (3, 4, 8, 8) and scan.info.format == "TVIPS"
        np.testing.assert_array_equal(scan.read_rows(0, 3), data)
        np.testing.assert_array_equal(scan.read_rows(1, 2), data[1:2])


@needs_real
def test_a_truncated_mib_says_so(tmp_path):
    source = REAL / "merlin" / "001_4x2_6bit.mib"
    cut = tmp_path / "cut.mib"
    cut.write_bytes(source.read_bytes()[:500_000])
    cut.with_suffix(".hdr").write_bytes(source.with_suffix(".hdr").read_bytes())
    with pytest.raises(GhostmapError) as exc:
        open_scan(cut)
    assert str(exc.value) == f"{cut} is truncated: it holds 7 whole frames, cut.hdr says 8"
