"""The int8 graph: made from example inputs, it keeps the float graph's clear labels; model folders and predict use it."""

import hashlib
import json
import logging

import numpy as np
import pytest
import torch

import ghostmap as gm
from ghostmap.model import Model, build_network, export_onnx
from ghostmap.modelfile import read_description
from ghostmap.quantization import CLOSE_CALL, FIRST_INTEGER_CONV, _disagreement, integer_nodes, quantize_graph
from ghostmap.runtime import OnnxNetwork
from ghostmap.training import TrainingOptions, example_inputs, train

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def trained():
    """A compact network trained on a small simulated scan, its float graph and every position's inputs."""
    data, truth = gm.simulate_scan((8, 12), detector=64, seed=3)
    scan = gm.as_scan(data)
    ys, xs = np.divmod(np.arange(0, 96, 3), 12)
    labels = gm.labels_from_truth(truth, xs, ys)
    model = train(scan, labels, TrainingOptions(seed=0, epochs=40, device="cpu"))
    from ghostmap.preprocessing import preprocess_rows

    inputs = preprocess_rows(scan, 0, 8, model.preprocessing).reshape(-1, model.preprocessing.channels,
                                                                      *model.input_shape).numpy()
    return model, export_onnx(model.network, model.input_shape), inputs, labels, scan


def test_the_int8_graph_keeps_the_float_graphs_clear_labels(trained):
    model, graph, inputs, _, _ = trained
    quantized = quantize_graph(graph, inputs[::3])  # ranges from a third of the positions, checked on all
    assert quantized is not None
    plain = OnnxNetwork(graph, threads=1).probabilities(inputs)
    integer = OnnxNetwork(quantized, threads=1, precision="int8").probabilities(inputs)
    top2 = np.sort(plain, 1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > CLOSE_CALL
    assert clear.mean() > 0.5  # a trained network: most positions are clear calls
    np.testing.assert_array_equal(integer.argmax(1)[clear], plain.argmax(1)[clear])
    assert np.abs(integer - plain).max() < 0.2 and np.abs(integer - plain).mean() < 0.02
    assert not np.array_equal(integer, plain)  # it is another computation, not the same graph


def test_only_the_later_stages_compute_in_integers(trained):
    _, graph, inputs, _, _ = trained
    proto = onnx.load_from_string(graph)
    names = integer_nodes(proto)
    convs = [n.name for n in proto.graph.node if n.op_type == "Conv"]
    assert len(convs) == 4 and FIRST_INTEGER_CONV == 3
    assert not set(convs[:2]) & set(names) and set(convs[2:]) <= set(names)
    assert set(convs[1:]) <= set(integer_nodes(proto, first=2))
    assert not any("Gemm" in n for n in names)  # the head stays in float
    quantized = onnx.load_from_string(quantize_graph(graph, inputs))
    ops = [n.op_type for n in quantized.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    weights = {t.name: t for t in quantized.graph.initializer}
    kinds = [weights[n.input[1]].data_type for n in quantized.graph.node if n.op_type == "Conv" and n.input[1] in weights]
    assert kinds == [onnx.TensorProto.FLOAT] * 2  # the first two stages' weights; the others come dequantized


def test_a_graph_that_changes_clear_labels_is_not_kept(trained, monkeypatch, caplog):
    model, graph, inputs, _, _ = trained
    torch.manual_seed(7)
    other = export_onnx(build_network("compact", 3, model.input_shape, channels=2), model.input_shape)
    assert "changes the label" in _disagreement(graph, other, inputs)
    assert _disagreement(graph, graph, inputs) == ""
    monkeypatch.setattr("ghostmap.quantization._disagreement", lambda *args: "it changes the label of 3 of 9")
    with caplog.at_level(logging.WARNING, logger="ghostmap.quantization"):
        assert quantize_graph(graph, inputs) is None
    assert "no int8 graph" in caplog.text
    assert quantize_graph(graph, inputs[:0]) is None  # no examples, no ranges


def test_training_keeps_example_inputs_and_saving_writes_the_int8_graphs(trained, tmp_path, caplog, monkeypatch):
    model, _, inputs, labels, scan = trained
    assert model.sample_inputs.shape == (len(labels) + 64, *inputs.shape[1:])  # 96 positions: all the others drawn
    np.testing.assert_allclose(model.sample_inputs[: len(labels)],
                               inputs[np.asarray(labels.y) * 12 + np.asarray(labels.x)], atol=1e-5)
    drawn = example_inputs(scan, labels, model.preprocessing, torch.zeros((0, *inputs.shape[1:])), seed=0, others=10)
    assert drawn.shape == (10, *inputs.shape[1:]) and drawn.dtype == np.float32
    folder = model.save(tmp_path / "model")
    description = read_description(folder)
    int8, wide = (folder / "model_int8.onnx").read_bytes(), (folder / "model_int8_avx512.onnx").read_bytes()
    assert description["onnx_int8_sha256"] == hashlib.sha256(int8).hexdigest()
    assert description["onnx_int8_avx512_sha256"] == hashlib.sha256(wide).hexdigest()
    x = inputs[:40]
    np.testing.assert_array_equal(OnnxNetwork(wide, threads=1).probabilities(x),  # the same numbers, another layout
                                  OnnxNetwork(int8, threads=1).probabilities(x))
    for avx512, chosen in ((True, wide), (False, int8)):  # int8: the graph laid out for this processor
        monkeypatch.setattr("ghostmap.runtime.has_avx512", lambda avx512=avx512: avx512)
        network = OnnxNetwork.from_folder(folder, description, precision="int8")
        assert network.precision == "int8" and network.graph == chosen
        auto = OnnxNetwork.from_folder(folder, description)  # auto: int8 only where AVX-512 makes it pay
        exact = (folder / "model.onnx").read_bytes()
        assert (auto.precision, auto.graph) == (("int8", wide) if avx512 else ("float32", exact))
    (folder / "model_int8_avx512.onnx").unlink()  # a folder from before it: the other int8 graph
    monkeypatch.setattr("ghostmap.runtime.has_avx512", lambda: True)
    assert OnnxNetwork.from_folder(folder, description).graph == int8
    assert OnnxNetwork.from_folder(folder, description, precision="float32").precision == "float32"
    (folder / "model_int8.onnx").write_bytes(int8[:-1] + bytes([int8[-1] ^ 1]))  # damaged: auto falls back to float32
    with caplog.at_level(logging.WARNING, logger="ghostmap.runtime"):
        assert OnnxNetwork.from_folder(folder, description).precision == "float32"
        assert OnnxNetwork.from_folder(folder, description, precision="int8") is None
    assert "checksum" in caplog.text
    with pytest.raises(ValueError, match="precision"):
        OnnxNetwork.from_folder(folder, description, precision="int4")


def test_a_model_without_examples_saves_no_int8_graph_and_removes_a_stale_one(trained, tmp_path):
    model, _, _, _, _ = trained
    folder = model.save(tmp_path / "model")
    (folder / "notes.txt").write_text("the user's own file")
    loaded = Model.load(folder)  # a loaded model has no example inputs
    assert loaded.sample_inputs is None
    loaded.save(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.onnx", "model.safetensors", "notes.txt"]
    assert "onnx_int8_sha256" not in json.loads((folder / "model.json").read_text())
    assert OnnxNetwork.from_folder(folder, read_description(folder)).precision == "float32"


def test_a_one_channel_model_gets_int8_graphs_too(tmp_path):
    data, truth = gm.simulate_scan((6, 10), detector=64, seed=5)
    scan = gm.as_scan(data)
    ys, xs = np.divmod(np.arange(0, 60, 2), 10)
    prep = gm.fit_preprocessing(scan, bin=2, pool=3, own_pattern=False)  # ghostmap train --no-own-pattern
    model = train(scan, gm.labels_from_truth(truth, xs, ys), TrainingOptions(seed=0, epochs=5, device="cpu"),
                  preprocessing=prep)
    assert model.sample_inputs.shape[1] == 1
    folder = model.save(tmp_path / "model")
    assert (folder / "model_int8.onnx").exists() and (folder / "model_int8_avx512.onnx").exists()
    network = OnnxNetwork.from_folder(folder, read_description(folder), precision="int8")
    assert network.channels == 1 and network.probabilities(model.sample_inputs[:3]).shape == (3, 3)
