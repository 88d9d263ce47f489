import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from ghostmap.model import Model, build_network
from ghostmap.outputs import domain_rgb, load_prediction, save_prediction
from ghostmap.prediction import predict
from ghostmap.preprocessing import Preprocessing, preprocess_positions
from ghostmap.reading import as_scan, open_scan

CLASSES = ("none", "vertical", "horizontal")


def random_model(detector=(32, 32), pool=3, bin=2, seed=0):
    torch.manual_seed(seed)
    prep = Preprocessing(bin=bin, pool=pool, bad_pixels=[(0, 1)])
    net = build_network("compact", 3, prep.output_shape(detector))
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


def test_prediction_matches_the_training_path(scan):
    """The network sees the same input for a position in prediction as in training."""
    model = random_model(pool=3)
    result = predict(scan, model, rows_per_block=2)
    rows = np.array([0, 0, 4, 8, 8, 3])
    cols = np.array([0, 10, 5, 0, 10, 1])
    x = preprocess_positions(scan, rows, cols, model.preprocessing).unsqueeze(1)
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
from ghostmap.prediction import predict
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
