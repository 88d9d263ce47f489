"""ONNX Runtime classification: the exported graph gives torch's probabilities, and predict without torch."""

import hashlib
import json
import logging

import numpy as np
import pytest
import torch

import ghostmap as gm
from ghostmap.analysis import bright_field_index_of
from ghostmap.model import Model, WideStem, build_network, export_onnx, widens
from ghostmap.modelfile import read_description
from ghostmap.preprocessing import reader_for
from ghostmap.runtime import OnnxNetwork, predict_in_process, predict_with_onnx

pytest.importorskip("onnxruntime")

CLASSES = ("none", "vertical", "horizontal")


def torch_probabilities(network, x):
    with torch.inference_mode():
        x = torch.from_numpy(x)
        return torch.softmax(network.eval()(x[:, None] if x.ndim == 3 else x), 1).numpy()


@pytest.mark.parametrize("arch,members,stem,channels", [("compact", 1, "stride", 1), ("compact", 1, "pool", 1),
                                                        ("paper", 1, "stride", 1), ("compact", 3, "stride", 1),
                                                        ("compact", 1, "pool", 2), ("compact", 3, "pool", 2)])
def test_the_exported_graph_gives_the_networks_probabilities(arch, members, stem, channels):
    torch.manual_seed(0)
    network = build_network(arch, 3, (32, 32), members=members, stem=stem, channels=channels).eval()
    shape = (21, 32, 32) if channels == 1 else (21, channels, 32, 32)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    onnx_network = OnnxNetwork(export_onnx(network, (32, 32)), batch_size=8)  # runs of 8, 8 and 5
    expected = torch_probabilities(network, x)
    for threads in (1, 2):
        got = onnx_network.probabilities(x, threads)
        assert got.shape == (21, 3) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-5)
        np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))
    assert network.training is False and export_onnx(network, (32, 32))  # exporting leaves the network as it was


@pytest.mark.parametrize("channels", [1, 2])
def test_a_wide_first_stage_gives_the_same_outputs(channels):
    """WideStem pads the first stage to 16 channels for AVX-512's blocks; the outputs stay the network's."""
    torch.manual_seed(3)
    network = build_network("compact", 3, (32, 32), channels=channels).eval()
    for module in network.modules():  # batch norms that do something, as after training
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    network.temperature.fill_(0.7)
    x = np.random.default_rng(1).standard_normal((6, channels, 32, 32)).astype(np.float32)
    wide = WideStem(network).eval()
    with torch.inference_mode():
        np.testing.assert_allclose(wide(torch.from_numpy(x)).numpy(), network(torch.from_numpy(x)).numpy(), atol=1e-5)
    assert wide.stem[0].out_channels == 16 and network.features[0].out_channels == 8
    graph = export_onnx(network, (32, 32), stem_width=16)
    np.testing.assert_allclose(OnnxNetwork(graph).probabilities(x), torch_probabilities(network, x), atol=1e-5)
    assert widens(network, 16) and not widens(network, 8)
    assert not widens(build_network("compact", 3, (32, 32), stem="stride"), 16)
    assert not widens(build_network("paper", 3, (32, 32)), 16)
    assert not widens(build_network("compact", 3, (32, 32), members=3), 16)


def test_the_graph_carries_the_calibration_temperature(tmp_path):
    model, folder = saved_model(tmp_path)
    model.metrics["temperature"] = 0.4
    model.network.temperature.fill_(0.4)
    model.save(folder)
    x = np.random.default_rng(5).standard_normal((9, *model.input_shape)).astype(np.float32)
    onnx_network = OnnxNetwork.from_folder(folder, read_description(folder))
    loaded = Model.load(folder).network
    np.testing.assert_allclose(onnx_network.probabilities(x), torch_probabilities(loaded, x), atol=1e-5)
    assert float(loaded.temperature) == pytest.approx(0.4)
    loaded.temperature.fill_(1.0)  # the same weights uncalibrated: other probabilities, the same classes
    uncalibrated = torch_probabilities(loaded, x)
    assert not np.allclose(uncalibrated, onnx_network.probabilities(x), atol=1e-3)
    np.testing.assert_array_equal(uncalibrated.argmax(1), onnx_network.probabilities(x).argmax(1))


def saved_model(tmp_path, detector=64, prep=None):
    torch.manual_seed(1)
    prep = prep or gm.Preprocessing(bin=2, pool=3)
    model = Model(build_network("compact", 3, prep.output_shape((detector, detector)), channels=prep.channels).eval(),
                  CLASSES, "compact", prep, (detector, detector))
    return model, model.save(tmp_path / "model")


def test_a_saved_model_carries_its_graph_and_its_checksum(tmp_path, caplog):
    _, folder = saved_model(tmp_path)
    description = read_description(folder)
    graph = (folder / "model.onnx").read_bytes()
    assert description["onnx_sha256"] == hashlib.sha256(graph).hexdigest()
    assert isinstance(OnnxNetwork.from_folder(folder, description), OnnxNetwork)
    (folder / "model.onnx").write_bytes(graph[:-1] + bytes([graph[-1] ^ 1]))  # damaged
    with caplog.at_level(logging.WARNING, logger="ghostmap.runtime"):
        assert OnnxNetwork.from_folder(folder, description) is None
    assert "checksum" in caplog.text
    elsewhere = graph + b"\x00location../../secret"  # external data: a path out of the folder is never followed
    (folder / "model.onnx").write_bytes(elsewhere)
    with caplog.at_level(logging.WARNING, logger="ghostmap.runtime"):
        assert OnnxNetwork.from_folder(folder, {**description, "onnx_sha256": hashlib.sha256(elsewhere).hexdigest()}) is None
    assert "outside" in caplog.text
    (folder / "model.onnx").unlink()  # a model folder from before model.onnx existed
    assert OnnxNetwork.from_folder(folder, description) is None


def test_saving_without_a_graph_removes_the_stale_one(tmp_path, monkeypatch):
    model, folder = saved_model(tmp_path)
    (folder / "notes.txt").write_text("the user's own file")
    monkeypatch.setattr("ghostmap.model.export_onnx", lambda network, shape: None)
    model.save(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.safetensors", "notes.txt"]
    assert "onnx_sha256" not in json.loads((folder / "model.json").read_text())


@pytest.mark.parametrize("subtract_mean, threads, own_pattern", [(False, None, False), (True, None, False), (False, 1, False),
                                                               (False, 3, False), (False, None, True), (True, 3, True)])
def test_predict_with_onnx_gives_the_library_prediction(tmp_path, subtract_mean, threads, own_pattern):
    """Blocks classified side by side (one per thread) land in their own rows, in order."""
    data, _ = gm.simulate_scan((7, 9), detector=64, seed=2)
    scan = gm.as_scan(data)
    prep = gm.fit_preprocessing(scan, bin=2, pool=3, subtract_mean=subtract_mean, own_pattern=own_pattern)
    model, folder = saved_model(tmp_path, prep=prep)
    expected = gm.predict(scan, model, device="cpu")
    description = read_description(folder)
    reader = reader_for(scan, Model.load(folder).preprocessing, rows_per_block=2,
                        bright_field_index=lambda raw: bright_field_index_of(raw[0]))
    seen = []
    network = OnnxNetwork.from_folder(folder, description, threads=threads)
    got = predict_with_onnx(scan, reader, network, description["classes"],
                            progress=lambda done, total: seen.append((done, total)))
    np.testing.assert_array_equal(got.labels, expected.labels)
    np.testing.assert_allclose(got.probabilities, expected.probabilities, atol=1e-5)
    np.testing.assert_array_equal(got.bright_field, expected.bright_field)
    assert got.classes == CLASSES and seen == sorted(seen) and seen[-1] == (63, 63)
    assert network.channels == prep.channels


def test_predicting_in_process_gives_the_library_prediction(tmp_path):
    data, _ = gm.simulate_scan((5, 8), detector=64, seed=4)
    prep = gm.fit_preprocessing(gm.as_scan(data), bin=2, pool=3, own_pattern=True)
    model, _ = saved_model(tmp_path, prep=prep)
    expected = gm.predict(data, model, device="cpu")
    seen = []
    got = predict_in_process(data, model, "cpu", progress=lambda done, total: seen.append(done))
    np.testing.assert_array_equal(got.labels, expected.labels)
    np.testing.assert_allclose(got.probabilities, expected.probabilities, atol=1e-5)
    np.testing.assert_array_equal(got.bright_field, expected.bright_field)
    assert seen[-1] == 40
    tiny = gm.Preprocessing(bin=2, pool=1)  # a network torch cannot export: torch predicts
    unexportable, _ = saved_model(tmp_path / "tiny", detector=32, prep=tiny)
    data = np.random.default_rng(0).poisson(3.0, (2, 3, 32, 32)).astype(np.uint16)
    np.testing.assert_array_equal(predict_in_process(data, unexportable).probabilities,
                                  gm.predict(data, unexportable, device="cpu").probabilities)


def test_a_network_the_exporter_refuses_leaves_torch_to_predict(tmp_path, caplog):
    # the compact network pools 16 x 16 inputs to 2 x 2 before its 4 x 4 adaptive pool: no ONNX form
    prep = gm.Preprocessing(bin=2, pool=1)
    with caplog.at_level(logging.WARNING, logger="ghostmap.model"):
        _, folder = saved_model(tmp_path, detector=32, prep=prep)
    assert "could not be exported" in caplog.text and not (folder / "model.onnx").exists()
    assert OnnxNetwork.from_folder(folder, read_description(folder)) is None
