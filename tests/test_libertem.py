"""GhostmapUDF: ghostmap's predictions inside a LiberTEM pipeline, identical to ghostmap.predict."""

import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("libertem")

from libertem.api import Context  # noqa: E402
from libertem.udf.sum import SumUDF  # noqa: E402

from ghostmap.errors import GhostmapError  # noqa: E402
from ghostmap.labels import labels_from_truth  # noqa: E402
from ghostmap.libertem_udf import GhostmapUDF, apply_with_libertem, bright_field_index  # noqa: E402
from ghostmap.model import Model, build_network  # noqa: E402
from ghostmap.outputs import load_prediction, save_prediction  # noqa: E402
from ghostmap.prediction import bright_field_index as gm_bright_field_index  # noqa: E402
from ghostmap.prediction import predict  # noqa: E402
from ghostmap.preprocessing import fit_preprocessing  # noqa: E402
from ghostmap.reading import as_scan, open_scan  # noqa: E402
from ghostmap.simulate import simulate_scan, write_simulated_scan  # noqa: E402
from ghostmap.training import TrainingOptions, train  # noqa: E402

CLASSES = ("none", "vertical", "horizontal")
SCAN = (12, 16)


def random_model(scan, seed=0, **prep_options):
    """An untrained network with non-trivial batch-norm statistics and the scan's real bad pixels."""
    torch.manual_seed(seed)
    prep = fit_preprocessing(scan, bin=2, **prep_options)
    net = build_network("compact", len(CLASSES), prep.output_shape(scan.detector_shape), channels=prep.channels)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return Model(net.eval(), CLASSES, "compact", prep, tuple(scan.detector_shape), {})


def assert_same(got, ref):
    np.testing.assert_array_equal(got.labels, ref.labels)
    np.testing.assert_allclose(got.probabilities, ref.probabilities, rtol=1e-5, atol=1e-5)
    assert got.classes == ref.classes
    assert got.labels.dtype == np.int64 and got.probabilities.dtype == np.float32
    assert got.labels.shape == ref.labels.shape and got.probabilities.shape == ref.probabilities.shape


@pytest.fixture(scope="module")
def ctx():
    return Context.make_with("inline")


@pytest.fixture(scope="module")
def data():
    array, _ = simulate_scan(SCAN, detector=32, seed=2)
    array[:, :, 5, 7] = 5000  # a hot pixel, so bad-pixel repair is exercised
    return array


@pytest.mark.parametrize("options", [
    {"pool": 1},
    {"pool": 3},
    {"pool": 5, "pool_mode": "max"},
    {"pool": 3, "subtract_mean": True},  # the reference pattern travels with the weights
    {"pool": 3, "own_pattern": True},  # two channels: pooled and each position's own pattern
    {"pool": 1, "own_pattern": True},
], ids=["pool1", "pool3", "pool5max", "pool3-reference", "pool3-own", "pool1-own"])
def test_matches_predict_whatever_the_partitions(ctx, data, options):
    scan = as_scan(data)
    model = random_model(scan, **options)
    assert (5, 7) in model.preprocessing.bad_pixels
    ref = predict(scan, model, device="cpu")
    for parts in (1, 4, 11):  # 11 partitions of ~17 frames: none holds a whole pooling neighbourhood row
        ds = ctx.load("memory", data=data, num_partitions=parts)
        got = apply_with_libertem(ctx, ds, model)
        assert_same(got, ref)
        np.testing.assert_allclose(got.bright_field, ref.bright_field, rtol=1e-6)


def test_partitions_that_start_mid_row(ctx, data):
    scan = as_scan(data)
    model = random_model(scan, pool=3)
    ref = predict(scan, model, device="cpu")
    ds = ctx.load("memory", data=data, num_partitions=5)
    starts = [p.slice.origin[0] for p in ds.get_partitions()]
    assert any(s % SCAN[1] for s in starts)
    assert_same(apply_with_libertem(ctx, ds, model, bright_field=None), ref)


def test_threads_executor(data):
    """Partitions classified concurrently, sharing one loaded network per process."""
    scan = as_scan(data)
    model = random_model(scan, pool=3)
    ref = predict(scan, model, device="cpu")
    threads = Context.make_with("threads", cpus=2)
    try:
        ds = threads.load("memory", data=data, num_partitions=6)
        got = apply_with_libertem(threads, ds, model)
    finally:
        threads.close()
    assert_same(got, ref)
    np.testing.assert_allclose(got.bright_field, ref.bright_field, rtol=1e-6)


def test_intermediate_results_are_exact_where_valid(ctx, data):
    """As partitions arrive (as live), every position marked valid already has its final value."""
    scan = as_scan(data)
    model = random_model(scan, pool=3)
    ref = predict(scan, model, device="cpu")
    ds = ctx.load("memory", data=data, num_partitions=7)
    udf = GhostmapUDF(model)
    counts = []
    for part in ctx.run_udf_iter(dataset=ds, udf=udf):
        probabilities, labels = part.buffers[0]["probabilities"], part.buffers[0]["labels"]
        valid = labels.valid_mask
        np.testing.assert_array_equal(probabilities.valid_mask, np.repeat(valid[..., None], len(CLASSES), -1))
        np.testing.assert_array_equal(labels.data[valid], ref.labels[valid])
        np.testing.assert_allclose(probabilities.data[valid], ref.probabilities[valid], rtol=1e-5, atol=1e-5)
        counts.append(int(valid.sum()))
    assert counts == sorted(counts) and counts[0] < counts[-1] == SCAN[0] * SCAN[1]
    # the main node dropped every reduced pattern once nothing needed it any more
    assert not any(isinstance(x, np.ndarray) for x in udf.results.boundary)


def test_npy_file_with_a_trained_model_and_other_udfs(tmp_path, ctx):
    path = tmp_path / "scan.npy"
    truth = write_simulated_scan(path, SCAN, detector=64, seed=4)
    scan = open_scan(path)
    rng = np.random.default_rng(0)
    flat = rng.choice(SCAN[0] * SCAN[1], 24, replace=False)
    labels = labels_from_truth(truth, flat % SCAN[1], flat // SCAN[1])
    model = train(scan, labels, TrainingOptions(seed=0, epochs=2), preprocessing=fit_preprocessing(scan, bin=2))
    model_dir = model.save(tmp_path / "model")
    ref = predict(scan, model, device="cpu")

    ds = ctx.load("npy", path=str(path), num_partitions=3)
    assert tuple(ds.shape.nav) == SCAN and tuple(ds.shape.sig) == (64, 64)
    got = apply_with_libertem(ctx, ds, model_dir)  # a model folder works too
    assert_same(got, ref)
    np.testing.assert_allclose(got.bright_field, ref.bright_field, rtol=1e-6)
    paths = save_prediction(tmp_path / "out", got)
    assert paths["domain_map"].is_file()
    np.testing.assert_array_equal(load_prediction(tmp_path / "out").labels, ref.labels)

    # inside a user's own pipeline: one pass over the data for several UDFs
    bf = bright_field_index(ctx, ds)
    np.testing.assert_array_equal(bf, gm_bright_field_index(scan))
    ghost, total = ctx.run_udf(dataset=ds, udf=[GhostmapUDF(model, bright_field=bf), SumUDF()])
    np.testing.assert_array_equal(ghost["labels"].data, ref.labels)
    np.testing.assert_allclose(ghost["bright_field"].data, ref.bright_field, rtol=1e-6)
    assert total["intensity"].data.shape == (64, 64)


def test_a_dataset_the_model_does_not_fit_is_refused(ctx, data):
    model = random_model(as_scan(data), pool=3)
    other = np.zeros((4, 5, 16, 16), np.uint16)
    ds = ctx.load("memory", data=other, num_partitions=2)
    with pytest.raises(GhostmapError, match="trained on 32 x 32 patterns but the LiberTEM dataset has 16 x 16"):
        apply_with_libertem(ctx, ds, model)
    with pytest.raises(GhostmapError, match="32 x 32"):
        ctx.run_udf(dataset=ds, udf=GhostmapUDF(model))
    flat = ctx.load("memory", data=data.reshape(-1, 32, 32), sig_dims=2)
    with pytest.raises(GhostmapError, match="2-D scan"):
        ctx.run_udf(dataset=flat, udf=GhostmapUDF(model))
    ds = ctx.load("memory", data=data, num_partitions=2)
    with pytest.raises(GhostmapError, match="roi"):
        ctx.run_udf(dataset=ds, udf=GhostmapUDF(model), roi=np.ones(SCAN, bool))
    with pytest.raises(GhostmapError, match="bright-field mask"):
        GhostmapUDF(model, bright_field=np.ones((16, 16), bool))
    good = GhostmapUDF(model).params.model_bytes
    with pytest.raises(GhostmapError, match="not a ghostmap model"):
        GhostmapUDF(model_bytes=b"\x00" * 8)
    with pytest.raises(GhostmapError, match="damaged"):  # weights cut short in transit
        ctx.run_udf(dataset=ds, udf=GhostmapUDF(model_bytes=good[:-100]))


def test_ghostmap_never_imports_libertem_and_says_how_to_install_it():
    code = (
        "import sys\n"
        "import ghostmap, ghostmap.prediction, ghostmap.model, ghostmap.outputs\n"
        "ghostmap.predict, ghostmap.Model, ghostmap.train\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'libertem'], 'libertem imported'\n"
        "sys.modules['libertem'] = None\n"
        "try:\n"
        "    import ghostmap.libertem_udf\n"
        "except ghostmap.GhostmapError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install 'ghostmap[libertem]'" in out.stdout and len(out.stdout.strip().splitlines()) == 1
