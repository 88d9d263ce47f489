"""The label web app's API (FastAPI TestClient): labelling, undo, skip, resume, queue, bad requests."""

from __future__ import annotations

import io
import json
import socket
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

with warnings.catch_warnings():  # starlette's notice about its httpx client, not about ghostmap
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from ghostmap.cli import main  # noqa: E402
from ghostmap.labels import Labels, read_labels, write_labels  # noqa: E402
from ghostmap.prediction import predict  # noqa: E402
from ghostmap.sampling import propose, uncertainty  # noqa: E402
from ghostmap.simulate import simulate_scan  # noqa: E402
from ghostmap.training import (
    TrainingOptions,  # noqa: E402
    training_preprocessing,  # noqa: E402
)
from ghostmap.webapp import create_app  # noqa: E402
from ghostmap.webapp.state import sidecar_path  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SCAN_SHAPE = (12, 30)
SCAN_DETECTOR = (64, 64)
BUDGET = 20


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    data, truth = simulate_scan(SCAN_SHAPE, detector=64, seed=0)
    path = tmp_path_factory.mktemp("webapp") / "scan.npy"
    np.save(path, data)
    return path, truth


@pytest.fixture
def files(sim, tmp_path):
    return sim[0], tmp_path / "labels.csv", sim[1]


def client_for(scan, labels, **kwargs) -> TestClient:
    kwargs.setdefault("budget", BUDGET)
    return TestClient(create_app(scan, labels, **kwargs), base_url="http://127.0.0.1")


def label_current(client, truth, state=None) -> dict:
    state = state or client.get("/api/state").json()
    cur = state["current"]
    r = client.post("/api/label", json={"x": cur["x"], "y": cur["y"], "label": str(truth[cur["y"], cur["x"]])})
    assert r.status_code == 200, r.text
    return r.json()


def on_disk(path) -> dict:
    return read_labels(path, missing_ok=True).to_dict()


# ------------------------------------------------------------------------------ labelling


def test_first_state_follows_the_sampler(files):
    scan, labels, _ = files
    with client_for(scan, labels) as c:
        s = c.get("/api/state").json()
    x, y = propose(SCAN_SHAPE, Labels.empty(), BUDGET)
    assert s["queue"] == [[a, b] for a, b in zip(x.tolist(), y.tolist())]
    assert (s["current"]["x"], s["current"]["y"]) == (int(x[0]), int(y[0]))
    assert [c["name"] for c in s["classes"]] == ["horizontal", "vertical", "none"]
    assert [(c["letter"], c["digit"]) for c in s["classes"]] == [("H", "1"), ("V", "2"), ("N", "3")]
    assert [c["colour"] for c in s["classes"]] == ["#0000ff", "#00ff00", "#ff0000"]
    assert s["scan"] == {"rows": 12, "cols": 30, "detector": [64, 64], "source": "scan.npy"}
    assert s["n_labels"] == 0 and s["budget"] == BUDGET and not s["can_undo"] and not s["can_train"]
    assert not labels.exists()  # nothing is written before the first label


def test_every_label_is_on_disk_at_once(files):
    scan, labels, truth = files
    with client_for(scan, labels) as c:
        s = c.get("/api/state").json()
        given = {}
        for _ in range(4):
            cur = s["current"]
            given[(cur["x"], cur["y"])] = str(truth[cur["y"], cur["x"]])
            s = label_current(c, truth, s)
            assert on_disk(labels) == given  # written before the response came back
        assert s["n_labels"] == 4
        assert sum(s["counts"].values()) == 4
        assert all([x, y] not in s["queue"] for x, y in given)
        assert [(lab["x"], lab["y"]) for lab in s["labels"]] == list(given)
        # the queue is what the stateless sampler proposes for the labels on disk
        x, y = propose(SCAN_SHAPE, read_labels(labels), BUDGET)
        assert s["queue"] == [[a, b] for a, b in zip(x.tolist(), y.tolist())]
    assert not list(labels.parent.glob(".*tmp*"))  # no temporary files left behind


def test_relabel_and_undo(files):
    scan, labels, truth = files
    with client_for(scan, labels) as c:
        s = label_current(c, truth)
        first = (s["labels"][0]["x"], s["labels"][0]["y"])
        s = label_current(c, truth, s)
        second = (s["labels"][1]["x"], s["labels"][1]["y"])
        # relabel the first position from the overview
        c.post("/api/goto", json={"x": first[0], "y": first[1]})
        s = c.post("/api/label", json={"x": first[0], "y": first[1], "label": "horizontal"}).json()
        assert on_disk(labels)[first] == "horizontal"
        s = c.post("/api/undo", json={}).json()  # back to the label it had
        assert on_disk(labels)[first] == str(truth[first[1], first[0]])
        assert (s["current"]["x"], s["current"]["y"]) == first
        s = c.post("/api/undo", json={}).json()  # the second label goes
        assert second not in on_disk(labels) and (s["current"]["x"], s["current"]["y"]) == second
        s = c.post("/api/undo", json={}).json()
        assert on_disk(labels) == {} and s["n_labels"] == 0 and not s["can_undo"]
        r = c.post("/api/undo", json={})
        assert r.status_code == 409 and r.json() == {"error": "nothing to undo"}


def test_skip_goes_to_the_back_and_undo_brings_it_back(files):
    scan, labels, truth = files
    with client_for(scan, labels) as c:
        s = c.get("/api/state").json()
        head = s["queue"][0]
        s = c.post("/api/skip", json={"x": head[0], "y": head[1]}).json()
        assert s["queue"][-1] == head and s["skipped"] == [head]
        assert [s["current"]["x"], s["current"]["y"]] == s["queue"][0] != head
        assert not labels.exists()  # a skip is no label
        side = json.loads(sidecar_path(labels).read_text())
        assert side["skipped"] == [head]
        s = c.post("/api/undo", json={}).json()
        assert s["skipped"] == [] and [s["current"]["x"], s["current"]["y"]] == head
        # a skipped position labelled later leaves the skipped list
        c.post("/api/skip", json={"x": head[0], "y": head[1]})
        s = c.post("/api/label", json={"x": head[0], "y": head[1], "label": "none"}).json()
        assert s["skipped"] == [] and on_disk(labels) == {tuple(head): "none"}


def test_label_outside_the_queue(files):
    scan, labels, truth = files
    with client_for(scan, labels) as c:
        queue = c.get("/api/state").json()["queue"]
        s = c.post("/api/goto", json={"x": 3, "y": 5}).json()
        assert s["current"] == {"x": 3, "y": 5, "label": None, "in_queue": False, "skipped": False}
        s = c.post("/api/label", json={"x": 3, "y": 5, "label": "vertical"}).json()
        assert on_disk(labels) == {(3, 5): "vertical"}
        assert [s["current"]["x"], s["current"]["y"]] == s["queue"][0] == queue[0]  # back to the queue


def test_resume_after_restart_is_exact(files):
    scan, labels, truth = files
    with client_for(scan, labels) as c:
        s = c.get("/api/state").json()
        for _ in range(3):
            s = label_current(c, truth, s)
        head = s["queue"][0]
        s = c.post("/api/skip", json={"x": head[0], "y": head[1]}).json()
        s = c.post("/api/goto", json={"x": 29, "y": 11}).json()
        before = s
    # a new app on the same files, as after killing the server and starting it again
    with client_for(scan, labels) as c:
        after = c.get("/api/state").json()
        for key in ("labels", "counts", "n_labels", "queue", "skipped", "current", "can_undo"):
            assert after[key] == before[key], key
        # the undo history survived too: the skip, then the labels
        s = c.post("/api/undo", json={}).json()
        assert s["skipped"] == [] and [s["current"]["x"], s["current"]["y"]] == head
        s = c.post("/api/undo", json={}).json()
        assert s["n_labels"] == 2 and len(on_disk(labels)) == 2


def test_resume_from_labels_given_elsewhere(files):
    """A label file written by hand or by 'ghostmap sample' is picked up; its classes are kept."""
    scan, labels, _ = files
    write_labels(labels, Labels.from_dict({(0, 0): "a", (5, 5): "b"}))
    with client_for(scan, labels) as c:
        s = c.get("/api/state").json()
    assert [c["name"] for c in s["classes"]] == ["a", "b"]
    assert s["n_labels"] == 2 and s["counts"] == {"a": 1, "b": 1}
    with client_for(scan, labels, classes=["horizontal", "vertical", "none"]) as c:
        s = c.get("/api/state").json()
    assert [c["name"] for c in s["classes"]] == ["horizontal", "vertical", "none", "a", "b"]
    assert [c["letter"] for c in s["classes"]] == ["H", "V", "N", "A", "B"]


def test_damaged_sidecar_is_set_aside(files):
    scan, labels, truth = files
    sidecar_path(labels).write_text("{not json")
    with client_for(scan, labels) as c:
        s = c.get("/api/state").json()
        assert s["warnings"] and "ignored" in s["warnings"][0]
        label_current(c, truth, s)
    assert json.loads(sidecar_path(labels).read_text())["version"] == 1


def test_queue_refines_walls_after_the_grid(files):
    scan, labels, truth = files
    with client_for(scan, labels, budget=40) as c:
        s = c.get("/api/state").json()
        grid = len(s["queue"])
        for _ in range(grid):
            s = label_current(c, truth, s)
        given = read_labels(labels)
        x, y = propose(SCAN_SHAPE, given, 40)
        assert s["queue"] == [[a, b] for a, b in zip(x.tolist(), y.tolist())]
        assert s["n_labels"] == grid and s["can_train"]


# ------------------------------------------------------------------------------ images


def png_of(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)))


def test_pattern_and_overview_images(files):
    scan, labels, _ = files
    with client_for(scan, labels) as c:
        raw = png_of(c.get("/api/pattern.png", params={"x": 4, "y": 2}))
        assert raw.shape == (64, 64, 3)
        log = png_of(c.get("/api/pattern.png", params={"x": 4, "y": 2, "scale": "linear", "cmap": "gray", "hi": 99}))
        assert not np.array_equal(raw, log)
        gamma = png_of(c.get("/api/pattern.png", params={"x": 4, "y": 2, "scale": "gamma", "gamma": 0.3, "lo": 5}))
        assert gamma.shape == (64, 64, 3)
        net = png_of(c.get("/api/pattern.png", params={"x": 4, "y": 2, "view": "network"}))
        assert net.shape[2] == 3
        assert png_of(c.get("/api/overview.png")).shape == (12, 30, 3)
        page = c.get("/")
        assert page.status_code == 200 and "ghostmap" in page.text and "default-src 'self'" in page.headers[
            "content-security-policy"]
        assert c.get("/static/app.js").status_code == 200


# ------------------------------------------------------------------------------ bad requests


@pytest.mark.parametrize("method, path, kwargs, status, words", [
    ("post", "/api/label", {"json": {"x": 1, "y": 1, "label": "diagonal"}}, 400, "unknown class 'diagonal'"),
    ("post", "/api/label", {"json": {"x": 30, "y": 0, "label": "none"}}, 400, "outside the scan"),
    ("post", "/api/label", {"json": {"x": 0, "y": 12, "label": "none"}}, 400, "outside the scan"),
    ("post", "/api/label", {"json": {"x": -1, "y": 0, "label": "none"}}, 422, "x:"),
    ("post", "/api/label", {"json": {"x": "../../etc/passwd", "y": 0, "label": "none"}}, 422, "x:"),
    ("post", "/api/label", {"json": {"x": 1.5, "y": 0, "label": "none"}}, 422, "x:"),
    ("post", "/api/label", {"json": {"x": 1, "y": 0}}, 422, "label"),
    ("post", "/api/label", {"json": {"x": 1, "y": 0, "label": "none", "path": "/etc/passwd"}}, 422, "path"),
    ("post", "/api/label", {"json": {"x": 1, "y": 0, "label": "n" * 65}}, 422, "label"),
    ("post", "/api/label", {"content": b"{\"x\": 1", "headers": {"content-type": "application/json"}}, 422, "JSON"),
    ("post", "/api/label", {"content": b"x=1&y=1&label=none",
                            "headers": {"content-type": "application/x-www-form-urlencoded"}}, 415, "JSON"),
    ("post", "/api/label", {"content": b"{\"x\": 1, \"y\": 1, \"label\": \"" + b"n" * 5000 + b"\"}",
                            "headers": {"content-type": "application/json"}}, 413, "too large"),
    ("post", "/api/label", {"content": iter([b"{\"label\": \"", b"n" * 5000, b"\"}"]),
                            "headers": {"content-type": "application/json"}}, 413, "too large"),
    ("post", "/api/skip", {"json": {"x": 100, "y": 0}}, 400, "outside the scan"),
    ("post", "/api/goto", {"json": {"x": 0, "y": 99}}, 400, "outside the scan"),
    ("post", "/api/undo", {"json": {"anything": 1}}, 422, "anything"),
    ("post", "/api/undo", {}, 415, "JSON"),
    ("post", "/api/mode", {"json": {"mode": "uncertainty"}}, 409, "train and preview first"),
    ("post", "/api/mode", {"json": {"mode": "guess"}}, 422, "mode"),
    ("post", "/api/train", {"json": {}}, 409, "at least 6 labels"),
    ("get", "/api/pattern.png", {"params": {"x": "../../etc/passwd", "y": 0}}, 422, "x:"),
    ("get", "/api/pattern.png", {"params": {"x": 30, "y": 0}}, 400, "outside the scan"),
    ("get", "/api/pattern.png", {"params": {"x": 0, "y": 0, "lo": 60}}, 422, "lo:"),
    ("get", "/api/pattern.png", {"params": {"x": 0, "y": 0, "hi": 101}}, 422, "hi:"),
    ("get", "/api/pattern.png", {"params": {"x": 0, "y": 0, "gamma": "nan"}}, 422, "gamma"),
    ("get", "/api/pattern.png", {"params": {"x": 0, "y": 0, "lo": 50, "hi": 50}}, 400, "below"),
    ("get", "/api/pattern.png", {"params": {"x": 0, "y": 0, "scale": "exp"}}, 422, "scale"),
    ("get", "/api/pattern.png", {"params": {"x": 0, "y": 0, "view": "/etc/passwd"}}, 422, "view"),
    ("get", "/api/preview/domain.png", {}, 404, "no preview yet"),
    ("get", "/api/preview/..%2F..%2Fetc%2Fpasswd.png", {}, 4, ""),
    ("get", "/static/..%2F..%2Fcli.py", {}, 404, ""),
    ("get", "/etc/passwd", {}, 404, ""),
    ("get", "/api/state", {"headers": {"host": "evil.example.com"}}, 400, "Host"),
])
def test_bad_requests_get_a_clear_4xx_and_change_nothing(files, method, path, kwargs, status, words):
    scan, labels, _ = files
    write_labels(labels, Labels.from_dict({(0, 0): "none"}))
    before = labels.read_bytes()
    with client_for(scan, labels) as c:
        r = getattr(c, method)(path, **kwargs)
        assert (r.status_code // 100 == 4) if status == 4 else r.status_code == status, (r.status_code, r.text)
        body = r.json()
        assert isinstance(body["error"], str) and "\n" not in body["error"]
        assert words in body["error"]
        assert "etc/passwd" not in json.dumps(body)  # nothing sent is echoed back
        assert c.get("/api/state").json()["n_labels"] == 1
    assert labels.read_bytes() == before


def test_yaml_or_folder_as_label_file_is_refused(files, tmp_path):
    from ghostmap.errors import GhostmapError

    scan, _, _ = files
    with pytest.raises(GhostmapError, match="writes CSV"):
        create_app(scan, tmp_path / "labels.yaml")
    with pytest.raises(GhostmapError, match="folder"):
        create_app(scan, tmp_path)


# ------------------------------------------------------------------------------ train and preview


def test_train_and_preview_then_uncertainty_sampling(files, tmp_path, capsys, monkeypatch):
    import ghostmap.runtime

    scan, labels, truth = files
    passes = []
    classify = ghostmap.runtime.predict_in_process
    monkeypatch.setattr(ghostmap.runtime, "predict_in_process", lambda *a, **k: passes.append(1) or classify(*a, **k))
    with client_for(scan, labels, training=TrainingOptions(epochs=2, seed=0, device="cpu")) as c:
        s = c.get("/api/state").json()
        while s["n_labels"] < 8:
            s = label_current(c, truth, s)
        assert s["can_train"]
        r = c.post("/api/train", json={})
        assert r.status_code == 202 and r.json()["state"] == "running"
        again = c.post("/api/train", json={})
        assert again.status_code in (202, 409)  # 409 while the first is still running
        deadline = time.time() + 60
        while (t := c.get("/api/train").json())["state"] == "running" and time.time() < deadline:
            time.sleep(0.2)
        c.app.state.session.wait_for_training(60)
        t = c.get("/api/train").json()
        assert t["state"] == "done", t
        s = c.get("/api/state").json()
        assert s["preview"]["version"] >= 1 and abs(sum(s["preview"]["fractions"].values()) - 1) < 1e-6
        assert png_of(c.get("/api/preview/domain.png")).shape == (12, 30, 3)
        assert png_of(c.get("/api/preview/confidence.png")).shape == (12, 30, 3)
        s = c.post("/api/mode", json={"mode": "uncertainty"}).json()
        assert s["mode"] == "uncertainty" and 0 < len(s["queue"]) <= 20
        labelled = {(lab["x"], lab["y"]) for lab in s["labels"]}
        assert not labelled & {tuple(p) for p in s["queue"]}
        probabilities = c.app.state.session._prediction.probabilities
        # one pass over the scan: the calibration's, its probabilities re-tempered, as predict gives them
        assert len(passes) == 1 and c.app.state.session.model.sample_inputs is None
        plain = predict(scan, c.app.state.session.model, device="cpu")
        assert np.array_equal(c.app.state.session._prediction.labels, plain.labels)
        assert np.allclose(probabilities, plain.probabilities, atol=1e-4)
        unsure = uncertainty(probabilities)
        queued = [unsure[y, x] for x, y in s["queue"]]
        assert queued == sorted(queued, reverse=True)  # least confident first
        # the active sampler's batch: the same function as 'ghostmap sample --strategy active'
        x, y = propose(SCAN_SHAPE, read_labels(labels), BUDGET, strategy="active", model=probabilities, batch=20)
        assert sorted(map(tuple, s["queue"])) == sorted(zip(x.tolist(), y.tolist()))
        # preview training fits the input 'ghostmap train' fits (the compact network's 128 px, here the 64 px detector)
        session_model = c.app.state.session.model
        assert session_model.input_shape == training_preprocessing(scan, "compact").output_shape(SCAN_DETECTOR)
        assert session_model.preprocessing.target_size == 128
        try:
            code = main(["train", str(scan), "--labels", str(labels), "--out", str(tmp_path / "model"), "--epochs", "2"])
        except SystemExit as exc:
            code = exc.code
        assert not code, capsys.readouterr().err
        meta = json.loads((tmp_path / "model" / "model.json").read_text())
        assert tuple(meta["input_shape"]) == session_model.input_shape
        assert meta["preprocessing"] == session_model.preprocessing.to_dict()
        s = label_current(c, truth, s)
        assert s["n_labels"] == 9
        s = c.post("/api/mode", json={"mode": "sampler"}).json()
        x, y = propose(SCAN_SHAPE, read_labels(labels), BUDGET)
        assert s["queue"] == [[a, b] for a, b in zip(x.tolist(), y.tolist())]


# ------------------------------------------------------------------------------ command line


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def test_a_failed_training_is_shown_and_logged_with_its_traceback(files, caplog):
    scan, labels, truth = files
    with client_for(scan, labels, training=TrainingOptions(arch="no-such-network", epochs=1, device="cpu")) as c:
        s = c.get("/api/state").json()
        while s["n_labels"] < 8:
            s = label_current(c, truth, s)
        with caplog.at_level("ERROR", logger="ghostmap.webapp.state"):
            assert c.post("/api/train", json={}).status_code == 202
            t = c.app.state.session.wait_for_training(60)
        assert t["state"] == "failed" and "no-such-network" in t["message"]
        assert c.get("/api/state").status_code == 200  # the server carries on
    records = [r for r in caplog.records if r.name == "ghostmap.webapp.state"]
    assert records and records[0].exc_info is not None, "the background thread's traceback was dropped"
    assert "no-such-network" in caplog.text and "Traceback" in caplog.text


def test_cli_label_usage_errors(files, capsys):
    scan, labels, _ = files
    code, _, err = run_cli(["label"], capsys)
    assert code == 2 and "--demo" in err
    code, _, err = run_cli(["label", str(scan)], capsys)
    assert code == 2 and "--labels" in err
    code, _, err = run_cli(["label", str(scan), "--labels", str(labels), "--port", "70000"], capsys)
    assert code == 1 and "--port" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        code, _, err = run_cli(["label", str(scan), "--labels", str(labels), "--port", str(port)], capsys)
    assert code == 1 and "another --port" in err
    code, _, err = run_cli(["label", str(scan), "--labels", str(labels), "--port", "0", "--strategy", "guess"], capsys)
    assert code == 1 and "strategy" in err
    assert not Path(labels).exists()
