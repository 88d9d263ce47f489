"""Non-square detectors (Merlin ROI modes write 256 x 128 and 256 x 64) end to end:
train, predict, label and the baselines, on simulated patterns cut to a detector window."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from ghostmap.labels import labels_from_truth, write_labels
from ghostmap.prediction import predict
from ghostmap.preprocessing import fit_preprocessing
from ghostmap.reading import as_scan
from ghostmap.simulate import simulate_scan
from ghostmap.training import TrainingOptions, train


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """One simulated scan seen by a square detector and by two ROI windows of it (all 64 rows high)."""
    root = tmp_path_factory.mktemp("shapes")
    data, truth = simulate_scan((16, 48), detector=64, seed=0, dose=4)
    windows = {"64x64": data, "64x32": data[..., 16:48], "64x16": data[..., 24:40]}
    paths = {}
    for name, scan in windows.items():
        paths[name] = root / f"scan_{name}.npy"
        np.save(paths[name], np.ascontiguousarray(scan))
    rng = np.random.default_rng(0)
    ys, xs = np.divmod(rng.choice(truth.size, 150, replace=False), truth.shape[1])
    return {"root": root, "truth": truth, "paths": paths, "labels": labels_from_truth(truth, xs, ys)}


def accuracy(labels, classes, truth) -> float:
    return float((np.asarray(classes)[labels] == truth).mean())


def test_non_square_detectors_train_and_predict_as_well_as_square(scans):
    found = {}
    for name, path in scans["paths"].items():
        scan = as_scan(path)
        assert scan.detector_shape == tuple(int(n) for n in name.split("x"))
        model = train(path, scans["labels"], TrainingOptions(seed=0, epochs=25),
                      preprocessing=fit_preprocessing(scan, bin=1))
        result = predict(path, model)
        assert result.labels.shape == scans["truth"].shape
        found[name] = accuracy(result.labels, model.classes, scans["truth"])
        model.save(scans["root"] / f"model_{name}")
    assert found["64x64"] > 0.75, found
    for name in ("64x32", "64x16"):  # a narrower window holds fewer ghost disks: allow a little
        assert found[name] >= found["64x64"] - 0.08, found


def ghostmap(*args):
    return subprocess.run([sys.executable, "-m", "ghostmap.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def test_cli_on_a_non_square_detector(scans, tmp_path):
    path = scans["paths"]["64x32"]
    info = ghostmap("info", path, "--preview", tmp_path / "p.png")
    assert info.returncode == 0 and "detector:  64 x 32 pixels" in info.stdout, info.stderr
    labels = tmp_path / "labels.csv"
    write_labels(labels, scans["labels"])
    trained = ghostmap("train", path, "--labels", labels, "--out", tmp_path / "m", "--epochs", "5", "--bin", "1")
    assert trained.returncode == 0, trained.stderr
    predicted = ghostmap("predict", path, "--model", tmp_path / "m", "--out", tmp_path / "p")
    assert predicted.returncode == 0, predicted.stderr
    assert np.load(tmp_path / "p" / "predictions.npz")["labels"].shape == scans["truth"].shape
    for method in ("vdf", "cluster"):
        run = ghostmap("baseline", path, "--method", method, "--out", tmp_path / method)
        assert run.returncode == 0, run.stderr
        assert np.load(tmp_path / method / "predictions.npz")["labels"].shape == scans["truth"].shape
    wrong = ghostmap("predict", scans["paths"]["64x16"], "--model", tmp_path / "m", "--out", tmp_path / "w")
    assert wrong.returncode == 1 and wrong.stderr.count("\n") == 1, wrong.stderr


def test_label_app_shows_non_square_patterns(scans, tmp_path):
    import io

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from PIL import Image

    from ghostmap.webapp.app import create_app

    client = TestClient(create_app(scans["paths"]["64x32"], tmp_path / "labels.csv", budget=10),
                        base_url="http://127.0.0.1")
    state = client.get("/api/state").json()
    cur = state["current"]
    image = client.get("/api/pattern.png", params={"x": cur["x"], "y": cur["y"]})
    assert image.status_code == 200
    width, height = Image.open(io.BytesIO(image.content)).size
    assert height == 2 * width  # 64 rows x 32 columns, not stretched square
    r = client.post("/api/label", json={"x": cur["x"], "y": cur["y"], "label": str(scans["truth"][cur["y"], cur["x"]])})
    assert r.status_code == 200, r.text
