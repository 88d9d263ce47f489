import json
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from ghostmap.errors import GhostmapError
from ghostmap.model import Model, build_network, fused_for_inference
from ghostmap.outputs import domain_rgb, load_prediction, save_prediction
from ghostmap.prediction import activation_bytes, default_batch_size, iter_predictions, predict, prepare_network
from ghostmap.preprocessing import Preprocessing, preprocess_positions
from ghostmap.reading import as_scan

CLASSES = ("none", "vertical", "horizontal")


def random_model(detector=(32, 32), pool=3, bin=2, seed=0, own_pattern=True):
    torch.manual_seed(seed)
    prep = Preprocessing(bin=bin, pool=pool, bad_pixels=[(0, 1)], own_pattern=own_pattern)
    net = build_network("compact", 3, prep.output_shape(detector), channels=prep.channels)
    # give batch norm non-trivial statistics so the test exercises them
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return Model(net.eval(), CLASSES, "compact", prep, detector, {})


@pytest.fixture(scope="module")
def scan():
    rng = np.random.default_rng(0)
    return as_scan(rng.poisson(4, size=(9, 11, 32, 32)).astype(np.uint16))


@pytest.mark.parametrize("pool", [1, 3, 5])
def test_block_sizes_and_prefetch_do_not_change_predictions(scan, pool):
    model = random_model(pool=pool)
    reference = predict(scan, model, rows_per_block=9, prefetch=False, batch_size=1000)
    for rows, prefetch, batch in [(1, True, 7), (2, False, 16), (4, True, 99)]:
        other = predict(scan, model, rows_per_block=rows, prefetch=prefetch, batch_size=batch)
        np.testing.assert_allclose(other.probabilities, reference.probabilities, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(other.labels, reference.labels)
        np.testing.assert_allclose(other.bright_field, reference.bright_field)


@pytest.mark.parametrize("own_pattern", [True, False])  # False: a one-channel model, as saved before the own pattern
def test_prediction_matches_the_training_path(scan, own_pattern):
    """The network sees the same input for a position in prediction as in training."""
    model = random_model(pool=3, own_pattern=own_pattern)
    result = predict(scan, model, rows_per_block=2)
    rows = np.array([0, 0, 4, 8, 8, 3])
    cols = np.array([0, 10, 5, 0, 10, 1])
    x = preprocess_positions(scan, rows, cols, model.preprocessing)
    assert x.shape == (6, 1 + own_pattern, 16, 16)
    with torch.inference_mode():
        expected = torch.softmax(model.network(x), 1).numpy()
    np.testing.assert_allclose(result.probabilities[rows, cols], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.probabilities.sum(-1), 1, atol=1e-5)


def test_outputs_contract(tmp_path, scan):
    result = predict(scan, random_model())
    paths = save_prediction(tmp_path / "out", result)
    with np.load(paths["predictions"], allow_pickle=False) as npz:
        assert npz["labels"].dtype == np.int64 and npz["labels"].shape == (9, 11)
        assert npz["probabilities"].dtype == np.float32 and npz["probabilities"].shape == (9, 11, 3)
        assert npz["classes"].dtype.kind == "U" and tuple(npz["classes"]) == CLASSES
    again = load_prediction(tmp_path / "out")
    np.testing.assert_array_equal(again.labels, result.labels)
    from PIL import Image

    with Image.open(paths["domain_map"]) as im:
        assert im.mode == "RGB" and im.size == (11, 9)
        np.testing.assert_array_equal(np.asarray(im), domain_rgb(result.probabilities, CLASSES))
    assert paths["summary"].stat().st_size > 10_000


def test_domain_colours_follow_the_paper():
    probs = np.eye(3, dtype=np.float32)[None]  # none, vertical, horizontal
    rgb = domain_rgb(probs, CLASSES)[0]
    assert rgb.tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    mixed = domain_rgb(np.array([[[0.5, 0.5, 0.0]]]), CLASSES)[0, 0]
    assert mixed.tolist() == [128, 128, 0]


def test_memory_stays_bounded_on_a_memory_mapped_scan(tmp_path):
    """Predicting a 400 MB memory-mapped scan must not pull it into memory."""
    path = tmp_path / "big.npy"
    data = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(100, 64, 64, 512))
    rng = np.random.default_rng(0)
    block = rng.poisson(3, size=(1, 64, 64, 512)).astype(np.uint16)
    for r in range(100):
        data[r] = block
    data.flush()
    del data
    random_model(detector=(64, 512), bin=8, pool=3).save(tmp_path / "model")
    code = f"""
import resource, json, numpy as np
from ghostmap.reading import open_scan
from ghostmap.model import Model
from ghostmap.errors import GhostmapError
from ghostmap.prediction import activation_bytes, default_batch_size, iter_predictions, predict, prepare_network
model = Model.load({str(tmp_path / 'model')!r})
scan = open_scan({str(path)!r})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = predict(scan, model)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"before_mb": before / 1024, "after_mb": after / 1024, "n": int(result.labels.size)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["n"] == 6400
    assert report["after_mb"] - report["before_mb"] < 150, report  # the file is 400 MB


def assert_same_prediction(other, reference, rtol=1e-4, atol=1e-5):
    np.testing.assert_array_equal(other.labels, reference.labels)
    np.testing.assert_allclose(other.probabilities, reference.probabilities, rtol=rtol, atol=atol)
    np.testing.assert_array_equal(other.bright_field, reference.bright_field)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's own, while inductor compiles
def test_compiled_path_gives_the_plain_predictions(scan):
    """torch.compile (inductor), in blocks of 3 rows and batches of 16: a full and a partial batch shape."""
    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        pytest.skip("inductor needs a C++ compiler")
    model = random_model(pool=3)
    plain = predict(scan, model, rows_per_block=3, batch_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to the plain network would hide the compiled path
        compiled = predict(scan, model, rows_per_block=3, batch_size=16, compile="inductor")
    assert_same_prediction(compiled, plain)


def test_bf16_path_stays_close_to_the_plain_predictions(scan):
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no native bfloat16 arithmetic")
    model = random_model(pool=3)
    with torch.no_grad():  # spread the logits, so that most positions have a clear winner
        model.network.head[-1].weight.mul_(50)
    plain = predict(scan, model, batch_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        bf16 = predict(scan, model, batch_size=16, compile="bf16")
    np.testing.assert_allclose(bf16.probabilities, plain.probabilities, atol=0.03)
    top2 = np.sort(plain.probabilities, axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 0.06  # bf16 may flip only a near tie
    assert clear.any()
    np.testing.assert_array_equal(bf16.labels[clear], plain.labels[clear])


def test_a_compile_mode_that_fails_falls_back_to_the_plain_network(scan, monkeypatch):
    model = random_model(pool=3)
    plain = predict(scan, model, rows_per_block=4)

    def broken_compile(network, **kwargs):
        def run(x):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(RuntimeWarning, match="compile='inductor' is not available.*C\\+\\+ compiler"):
        fallback = predict(scan, model, rows_per_block=4, compile="inductor")
    assert_same_prediction(fallback, plain, rtol=0, atol=0)
    with pytest.raises(GhostmapError, match="unknown compile mode"):
        prepare_network(model, torch.device("cpu"), compile="tensorrt")


def test_batches_are_sized_by_every_layers_activations():
    import ghostmap.prediction as prediction

    compact = build_network("compact", 3, (128, 128))
    stride_stem = build_network("compact", 3, (128, 128), stem="stride")
    paper = build_network("paper", 3, (256, 256))
    assert activation_bytes(compact, (128, 128)) == 2 * 8 * 128 * 128 * 4  # first batch norm: in + out
    assert activation_bytes(stride_stem, (128, 128)) == 2 * 16 * 64 * 64 * 4  # second batch norm: in + out
    assert activation_bytes(paper, (256, 256)) == (16 * 256 * 256 + 16 * 128 * 128) * 4  # first max-pool
    # batches are sized on the network as it runs: fused (no batch norm), its widest step the first
    # max-pool (in + out) or, with the stride stem, the second convolution
    budget = prediction.CPU_ACTIVATION_BUDGET
    assert default_batch_size((128, 128), network=compact) == budget // ((8 * 128 * 128 + 8 * 64 * 64) * 4)
    assert default_batch_size((128, 128), network=stride_stem) == budget // ((8 * 64 * 64 + 16 * 64 * 64) * 4)
    assert default_batch_size((256, 256), network=paper) == budget // ((16 * 256 * 256 + 16 * 128 * 128) * 4)


def test_a_large_batch_size_is_capped_on_the_cpu(scan, monkeypatch):
    """The paper network's 206-pattern batches took GBs; on the CPU no batch passes the memory-derived size."""
    import ghostmap.prediction as prediction

    model = random_model()
    seen = []
    real = prediction.classify
    monkeypatch.setattr(prediction, "classify", lambda net, x, batch, dev: seen.append(batch) or real(net, x, batch, dev))
    fused = fused_for_inference(model.network)
    monkeypatch.setattr(prediction, "CPU_ACTIVATION_BUDGET", 5 * activation_bytes(fused, model.input_shape))

    def batch_sizes(**kwargs):
        seen.clear()
        list(iter_predictions(scan, model, device="cpu", **kwargs))
        return set(seen)

    assert batch_sizes(batch_size=256) == {5}
    assert batch_sizes(batch_size=3) == {3}
    assert batch_sizes() == {5}


def test_cuda_is_chosen_when_present_and_device_overrides(monkeypatch):
    from ghostmap.errors import GhostmapError
    from ghostmap.model import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device(None).type == "cuda"
    assert pick_device("cpu").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device(None).type == "cpu"
    with pytest.raises(GhostmapError, match="no CUDA device"):
        pick_device("cuda")
    with pytest.raises(GhostmapError, match="unknown device"):
        pick_device("tpu:7")


def test_the_library_leaves_the_allocator_alone_and_models_are_cached_once(scan, monkeypatch):
    import ghostmap.cli as cli
    import ghostmap.prediction as prediction

    def forbidden(*args, **kwargs):
        raise AssertionError("predict() must not change the process's allocator")

    monkeypatch.setattr(cli, "reuse_freed_memory", forbidden)
    monkeypatch.setattr(prediction, "_MODELS", prediction.OrderedDict())
    model = random_model()
    data = model.to_bytes()
    first = prediction.cached_model(data, "cpu")
    assert prediction.cached_model(data, "cpu") is first  # built once
    assert first.network is not model.network and first.device.type == "cpu"
    assert_same_prediction(predict(scan, first.model), predict(scan, model), rtol=0, atol=0)


def test_integer_counts_fast_path_gives_the_plain_predictions(scan):
    """uint16 counts take the fused NumPy binning and repair; the same counts as float32 take torch's."""
    model = random_model(bin=4, pool=3)
    model.preprocessing.bad_pixels = [(0, 1), (5, 5), (5, 6)] + [(r, 20) for r in range(32)]
    fast = predict(scan, model, rows_per_block=4)
    plain = predict(as_scan(scan.read_rows(0, scan.scan_shape[0]).astype(np.float32)), model, rows_per_block=4)
    assert_same_prediction(fast, plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(fast.labels, plain.labels)


def test_predict_gives_the_reader_a_core_and_puts_torch_threads_back(scan, monkeypatch):
    """From the main thread, torch runs one thread fewer while the background reader still reads."""
    import time

    import ghostmap.prediction as prediction

    before = torch.get_num_threads()
    if before < 2:
        pytest.skip("one torch thread: nothing to share")
    slow = as_scan(scan.read_rows(0, scan.scan_shape[0]))
    real_read = slow.read_rows
    monkeypatch.setattr(slow, "read_rows", lambda a, b: time.sleep(0.05) or real_read(a, b))
    seen = []
    real = prediction.classify
    monkeypatch.setattr(prediction, "classify", lambda *a: seen.append(torch.get_num_threads()) or real(*a))
    predict(slow, random_model(), rows_per_block=1)
    assert seen[0] == before - 1  # the reader still had rows to read
    assert torch.get_num_threads() == before
    seen.clear()
    predict(slow, random_model(), rows_per_block=1, prefetch=False)  # nothing reads beside the network
    assert set(seen) == {before}
