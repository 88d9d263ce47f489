"""Tests for ghostmap.io.empad: EMPAD .xml + .raw (128 x 130 float32 frames, two metadata rows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ghostmap.errors import GhostmapError
from ghostmap.io import open_scan


def write_empad(folder: Path, patterns: np.ndarray, name="scan_x{cols}_y{rows}.raw", pix=True) -> Path:
    """An EMPAD acquisition: ``.raw`` frames of 130 x 128 float32 (2 metadata rows) and its ``.xml``."""
    rows, cols = patterns.shape[:2]
    raw_name = name.format(rows=rows, cols=cols)
    frames = np.zeros((rows * cols, 130, 128), "<f4")
    frames[:, :128] = patterns.reshape(-1, 128, 128)
    frames[:, 128:] = -7.0  # metadata rows: must never show up in a pattern
    (folder / raw_name).write_bytes(frames.tobytes())
    sizes = f"<pix_x>{cols}</pix_x><pix_y>{rows}</pix_y>" if pix else ""
    xml = folder / "acquisition.xml"
    xml.write_text(f'<?xml version="1.0"?><root><raw_file filename="{raw_name}"/>{sizes}</root>')
    return xml


def truth(rows=3, cols=4) -> np.ndarray:
    return np.random.default_rng(1).random((rows, cols, 128, 128), dtype=np.float32)


@pytest.mark.parametrize("pix", [True, False])  # scan size from <pix_x>/<pix_y>, or from the raw file's name
def test_frames_lose_their_metadata_rows(tmp_path, pix):
    data = truth()
    xml = write_empad(tmp_path, data, pix=pix)
    with open_scan(xml) as scan:
        assert scan.shape == (3, 4, 128, 128) and scan.dtype == np.float32
        np.testing.assert_array_equal(scan.read_rows(0, 3), data)
        np.testing.assert_array_equal(scan.read_box(1, 2, 1, 3), data[1:2, 1:3])
        assert scan.info.format == "EMPAD .xml + .raw"


def test_scan_shape_from_the_user_and_bad_files(tmp_path):
    data = truth()
    xml = write_empad(tmp_path, data, name="acq.raw", pix=False)
    with pytest.raises(GhostmapError, match="12 frames of 128 x 128 pixels"):
        open_scan(xml)
    with open_scan(xml, scan_shape=(4, 3)) as scan:
        np.testing.assert_array_equal(scan.read_rows(0, 4), data.reshape(4, 3, 128, 128))
    raw = tmp_path / "acq.raw"
    raw.write_bytes(raw.read_bytes()[:-100])
    with pytest.raises(GhostmapError) as exc:
        open_scan(xml, scan_shape=(4, 3))
    assert "\n" not in str(exc.value) and "not a whole number" in str(exc.value)
    raw.unlink()
    with pytest.raises(GhostmapError, match="names acq.raw, which is missing"):
        open_scan(xml)
    xml.write_text("<root><other/></root>")
    with pytest.raises(GhostmapError, match="names no raw file"):
        open_scan(xml)


def test_empad_predicts_exactly_what_the_same_scan_as_npy_predicts(tmp_path):
    """The same float32 scan as EMPAD .xml + .raw and as .npy: identical probabilities from one model."""
    from ghostmap.model import Model, build_network
    from ghostmap.prediction import predict
    from ghostmap.preprocessing import fit_preprocessing
    from ghostmap.simulate import simulate_scan

    data, _ = simulate_scan((4, 6), detector=128, seed=3)
    data = data.astype(np.float32)
    npy = tmp_path / "scan.npy"
    np.save(npy, data)
    xml = write_empad(tmp_path, data)
    with open_scan(npy) as scan:
        prep = fit_preprocessing(scan)
        torch = pytest.importorskip("torch")
        torch.manual_seed(0)
        network = build_network("compact", 3, prep.output_shape(scan.detector_shape))
        model = Model(network, ("none", "vertical", "horizontal"), "compact", prep, scan.detector_shape)
        reference = predict(scan, model, device="cpu")
    with open_scan(xml) as scan:
        assert scan.info.format == "EMPAD .xml + .raw"
        result = predict(scan, model, device="cpu")
    np.testing.assert_array_equal(result.probabilities, reference.probabilities)
    np.testing.assert_array_equal(result.labels, reference.labels)
