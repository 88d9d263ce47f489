"""Prediction on a real Dask LocalCluster (two worker processes) gives exactly the local result."""

import hashlib
import logging
import os
import socket
import sys
import time

import numpy as np
import pytest
import torch

distributed = pytest.importorskip("distributed")
cloudpickle = pytest.importorskip("cloudpickle")

import ghostmap.cluster as cluster  # noqa: E402
from ghostmap.errors import GhostmapError  # noqa: E402
from ghostmap.labels import labels_from_truth  # noqa: E402
from ghostmap.model import Model  # noqa: E402
from ghostmap.prediction import predict  # noqa: E402
from ghostmap.preprocessing import Preprocessing  # noqa: E402
from ghostmap.reading import open_scan  # noqa: E402
from ghostmap.series import Step  # noqa: E402
from ghostmap.simulate import write_simulated_scan  # noqa: E402
from ghostmap.training import TrainingOptions, train  # noqa: E402

# the workers cannot import this test module: send its helpers (plugins, functions) by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])

SCAN = (12, 16)


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=logging.ERROR) as lc:
        with distributed.Client(lc, set_as_default=False) as c:
            yield c


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """A 12 x 16 simulated scan of 32 x 32 patterns as .npy and .h5, and a model trained on it briefly."""
    root = tmp_path_factory.mktemp("cluster")
    truth = write_simulated_scan(root / "scan.npy", SCAN, detector=32, seed=1)
    write_simulated_scan(root / "scan.h5", SCAN, detector=32, seed=1)
    ys, xs = np.mgrid[0 : SCAN[0] : 2, 0 : SCAN[1] : 2]
    with open_scan(root / "scan.npy") as scan:
        model = train(scan, labels_from_truth(truth, xs.ravel(), ys.ravel()), TrainingOptions(seed=0, epochs=3))
    assert model.preprocessing.pool == 3
    return {"npy": root / "scan.npy", "h5": root / "scan.h5", "model": model, "root": root}


def with_pool(model: Model, pool: int) -> Model:
    """The same network with another neighbourhood pooling."""
    prep = Preprocessing.from_dict({**model.preprocessing.to_dict(), "pool": pool})
    return Model(model.network, model.classes, model.arch, prep, model.detector_shape, model.metrics)


def local(path, model):
    """The local, one-process prediction."""
    with open_scan(path) as scan:
        return predict(scan, model)


def assert_same(result, reference):
    np.testing.assert_array_equal(result.labels, reference.labels)
    assert result.labels.dtype == np.int64 and result.probabilities.dtype == np.float32
    np.testing.assert_allclose(result.probabilities, reference.probabilities, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.bright_field, reference.bright_field, rtol=1e-6)
    assert result.classes == reference.classes


@pytest.mark.parametrize("fmt", ["npy", "h5"])
@pytest.mark.parametrize("rows_per_task", [None, 1, 2, 5])
def test_cluster_gives_the_local_predictions(client, sim, fmt, rows_per_task):
    reference = local(sim[fmt], sim["model"])
    calls = []
    result = cluster.predict_on_cluster(sim[fmt], sim["model"], client=client, rows_per_task=rows_per_task,
                                        progress=lambda done, total: calls.append((done, total)))
    assert_same(result, reference)
    n_patterns = SCAN[0] * SCAN[1]
    assert [t for _, t in calls] == [n_patterns] * len(calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and calls[-1][0] == n_patterns
    if rows_per_task:  # one call per task, as results arrive
        assert len(calls) == -(-SCAN[0] // rows_per_task)


@pytest.mark.parametrize("pool", [1, 5])
def test_other_pooling_and_a_model_folder(client, sim, pool):
    model = with_pool(sim["model"], pool)
    folder = model.save(sim["root"] / f"model-pool{pool}")
    reference = local(sim["h5"], model)
    for rows in (1, 3):
        assert_same(cluster.predict_on_cluster(str(sim["h5"]), folder, client=client, rows_per_task=rows), reference)



def test_model_bytes_round_trip_and_are_checked(sim):
    model = with_pool(sim["model"], 5)
    data = model.to_bytes()
    again = Model.from_bytes(data)
    assert again.classes == model.classes and again.preprocessing.to_dict() == model.preprocessing.to_dict()
    state, other = model.network.state_dict(), again.network.state_dict()
    assert state.keys() == other.keys() and all(torch.equal(state[k], other[k]) for k in state)
    with pytest.raises(GhostmapError, match="checksum"):
        Model.from_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(GhostmapError, match="not a ghostmap model"):
        Model.from_bytes(b"PK\x03\x04" + data)

def _worker_models():
    import ghostmap.prediction  # the one model cache, which the cluster's workers use

    return {key: id(entry.model) for key, entry in ghostmap.prediction._MODELS.items()}


def test_model_is_built_once_per_worker_and_torch_uses_one_thread(client, sim):
    cluster.predict_on_cluster(sim["npy"], sim["model"], client=client, rows_per_task=1)
    first = client.run(_worker_models)
    cluster.predict_on_cluster(sim["npy"], sim["model"], client=client, rows_per_task=1)
    assert client.run(_worker_models) == first
    digest = hashlib.sha256(sim["model"].to_bytes()).hexdigest()
    assert all([key[0] for key in models].count(digest) == 1 for models in first.values())  # once per worker
    assert set(client.run(torch.get_num_threads).values()) == {1}


def test_a_local_cluster_is_started_and_closed_when_none_is_given(sim):
    result = cluster.predict_on_cluster(sim["npy"], sim["model"], n_workers=1)
    assert_same(result, local(sim["npy"], sim["model"]))


def test_inputs_the_workers_cannot_open_are_refused(sim):
    with pytest.raises(GhostmapError, match="needs a scan file the workers can open"):
        cluster.predict_on_cluster(np.zeros((2, 2, 32, 32), np.uint16), sim["model"])
    with open_scan(sim["npy"]) as scan, pytest.raises(GhostmapError, match="needs a scan file"):
        cluster.predict_on_cluster(scan, sim["model"])
    with pytest.raises(GhostmapError, match="no such file"):
        cluster.predict_on_cluster(sim["root"] / "missing.npy", sim["model"])
    # a worker that does not see the file at the client's path says so (run here, in-process)
    model_bytes = sim["model"].to_bytes()
    with pytest.raises(GhostmapError, match="workers need the scan on a filesystem they share with the client"):
        cluster.classify_rows((str(sim["root"] / "missing.npy"), None, None, None), model_bytes, "x", 0, 1, np.arange(3), None)


def test_an_unreachable_scheduler_is_a_one_line_error(sim, monkeypatch):
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 2)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.perf_counter()
    with pytest.raises(GhostmapError, match=f"could not reach the Dask scheduler at tcp://127.0.0.1:{port}") as info:
        cluster.predict_on_cluster(sim["npy"], sim["model"], scheduler=f"tcp://127.0.0.1:{port}")
    assert time.perf_counter() - started < 8
    assert "\n" not in str(info.value)


def test_without_distributed_the_error_says_what_to_install(sim, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(GhostmapError, match=r"pip install 'ghostmap\[cluster\]'"):
        cluster.predict_on_cluster(sim["npy"], sim["model"])

class KillOnce(distributed.WorkerPlugin):
    """Kill the worker process the first time any worker starts one of ghostmap's tasks."""

    def __init__(self, flag: str):
        self.flag = flag

    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and str(key).startswith("ghostmap-rows-"):
            try:
                os.close(os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
            os._exit(1)


def test_a_task_whose_worker_dies_is_retried(client, sim, tmp_path):
    client.wait_for_workers(2, timeout=60)
    flag = tmp_path / "killed"
    client.register_plugin(KillOnce(str(flag)), name="kill-once")
    try:
        result = cluster.predict_on_cluster(sim["npy"], sim["model"], client=client, rows_per_task=2)
    finally:
        client.unregister_worker_plugin("kill-once")
    assert flag.exists()  # a worker really died mid-run
    assert_same(result, local(sim["npy"], sim["model"]))


def test_a_task_that_keeps_killing_workers_is_a_one_line_error(client, sim, tmp_path):
    client.wait_for_workers(2, timeout=60)
    scheduler = client.cluster.scheduler
    allowed, scheduler.allowed_failures = scheduler.allowed_failures, 0  # the first death is final
    client.register_plugin(KillOnce(str(tmp_path / "killed")), name="kill-once")
    try:
        with pytest.raises(GhostmapError, match=r"a Dask worker died while classifying rows \d+-\d+: ") as info:
            cluster.predict_on_cluster(sim["npy"], sim["model"], client=client, rows_per_task=4)
    finally:
        client.unregister_worker_plugin("kill-once")
        scheduler.allowed_failures = allowed
    assert "\n" not in str(info.value)



def test_a_time_step_of_a_five_d_dataset_runs_on_the_cluster(client, sim, tmp_path):
    import h5py

    with open_scan(sim["npy"]) as scan:
        one = scan.read_rows(0, SCAN[0])
    path = tmp_path / "series.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.stack([one, one[:, ::-1]])  # the second step mirrored, so the steps differ
    for t, data in enumerate([one, one[:, ::-1]]):
        result = cluster.predict_on_cluster(Step(path, t), sim["model"], client=client)
        assert_same(result, predict(np.ascontiguousarray(data), sim["model"]))


def test_cli_predict_on_a_scheduler_matches_local(client, sim, tmp_path):
    import subprocess

    model_dir = tmp_path / "model"
    sim["model"].save(model_dir)
    address = client.scheduler.address
    run = subprocess.run([sys.executable, "-m", "ghostmap.cli", "predict", str(sim["h5"]), "--model", str(model_dir),
                          "--out", str(tmp_path / "out"), "--scheduler", address], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    with np.load(tmp_path / "out" / "predictions.npz") as got:
        np.testing.assert_array_equal(got["labels"], local(sim["h5"], sim["model"]).labels)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    bad = subprocess.run([sys.executable, "-m", "ghostmap.cli", "predict", str(sim["h5"]), "--model", str(model_dir),
                          "--out", str(tmp_path / "bad"), "--scheduler", closed], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 1 and "could not reach the Dask scheduler" in bad.stderr
    assert bad.stderr.strip().count("\n") == 0 and not (tmp_path / "bad").exists()
