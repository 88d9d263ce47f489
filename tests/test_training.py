import numpy as np
import pytest
import torch

from ghostmap.demo import label_loop
from ghostmap.errors import GhostmapError
from ghostmap.labels import Labels
from ghostmap.prediction import predict
from ghostmap.preprocessing import fit_preprocessing
from ghostmap.reading import as_scan
from ghostmap.simulate import simulate_scan
from ghostmap.training import (
    TrainingOptions,
    augment_batch,
    calibrate_on_scan,
    input_shift,
    loss_for,
    nuisance_batch,
    nuisance_of,
    refit_seed,
    stratified_split,
    swap_pairs,
    train,
    training_preprocessing,
)


@pytest.fixture(scope="module")
def small_scan():
    data, truth = simulate_scan((20, 60), detector=64, seed=3)
    return as_scan(data), truth


def test_stratified_split_keeps_every_class_in_both_parts():
    y = np.array([0] * 20 + [1] * 8 + [2] * 2 + [3])
    train_idx, val_idx = stratified_split(y, 0.2, np.random.default_rng(0))
    assert set(y[val_idx]) == {0, 1, 2}
    assert set(y[train_idx]) == {0, 1, 2, 3}  # a single label stays in training
    assert len(set(train_idx) & set(val_idx)) == 0 and len(train_idx) + len(val_idx) == len(y)
    assert len(val_idx) == 4 + 2 + 1


def test_augmentation_only_flips_and_transposes():
    classes = ("none", "vertical", "horizontal")
    x = torch.zeros(64, 1, 8, 8)
    x[:, 0, 2, 5] = 1.0  # an asymmetric marker
    y = torch.tensor([0, 1, 2, 1] * 16)
    xa, ya = augment_batch(x, y, swap_pairs(classes), torch.Generator().manual_seed(0))
    for i in range(64):
        (r, c), = np.argwhere(xa[i, 0].numpy() == 1)
        assert {int(r), 7 - int(r)} == {2, 5} and {int(c), 7 - int(c)} == {2, 5}
    assert (ya[y == 0] == 0).all()  # 'none' never changes
    assert (ya != y).any()
    assert swap_pairs(("a", "b")) is None


def test_transpose_swaps_label_exactly():
    classes = ("none", "vertical", "horizontal")
    x = torch.zeros(200, 1, 6, 6)
    x[:, 0, 0, 3] = 1.0  # marker at row 0: after a transpose it sits in column 0 or 5
    y = torch.full((200,), 2)
    xa, ya = augment_batch(x, y, swap_pairs(classes), torch.Generator().manual_seed(1))
    pos = [tuple(np.argwhere(p[0].numpy() == 1)[0]) for p in xa]
    was_transposed = torch.tensor([c in (0, 5) and r not in (0, 5) for r, c in pos])
    assert (ya[was_transposed] == 1).all() and (ya[~was_transposed] == 2).all()
    assert 50 < int(was_transposed.sum()) < 150


def test_training_learns_the_domains(small_scan):
    scan, truth = small_scan
    labels, _ = label_loop(truth, 40, seed=0)
    model = train(scan, labels, TrainingOptions(seed=0, epochs=150))
    result = predict(scan, model)
    accuracy = (result.label_names() == truth).mean()
    polar = truth != "none"
    assert (result.label_names()[polar] == truth[polar]).mean() > 0.9
    assert accuracy > 0.85
    assert not model.metrics["collapsed"]
    assert model.metrics["n_train"] + model.metrics["n_validation"] == len(labels)


def test_training_is_reproducible(small_scan):
    scan, truth = small_scan
    labels, _ = label_loop(truth, 24, seed=1)
    prep = fit_preprocessing(scan)
    a = train(scan, labels, TrainingOptions(seed=5, epochs=3), preprocessing=prep)
    b = train(scan, labels, TrainingOptions(seed=5, epochs=3), preprocessing=prep)
    c = train(scan, labels, TrainingOptions(seed=6, epochs=3), preprocessing=prep)
    sa, sb, sc = (m.network.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_collapse_is_detected():
    # identical patterns under different labels: no model can separate them
    data = np.full((6, 6, 32, 32), 5, np.uint16)
    labels = Labels(np.arange(6, dtype=np.int64), np.zeros(6, np.int64),
                    np.array(["vertical", "horizontal"] * 3))
    model = train(as_scan(data), labels, TrainingOptions(seed=0, epochs=2))
    assert model.metrics["collapsed"]
    assert len(model.metrics["predicted_classes"]) == 1


def test_bad_labels_are_refused(small_scan):
    scan, _ = small_scan
    one_class = Labels(np.arange(5, dtype=np.int64), np.zeros(5, np.int64), np.array(["vertical"] * 5))
    with pytest.raises(GhostmapError, match="single class"):
        train(scan, one_class)
    outside = Labels(np.array([0, 1, 2, 99], np.int64), np.zeros(4, np.int64),
                     np.array(["vertical", "none", "vertical", "none"]))
    with pytest.raises(GhostmapError, match="outside the scan"):
        train(scan, outside)


def test_ensemble_round_trips_and_one_network_still_trains(small_scan, tmp_path):
    import json

    from ghostmap.ensemble import EnsembleNet
    from ghostmap.model import CompactNet, Model

    scan, truth = small_scan
    labels, _ = label_loop(truth, 24, seed=1)
    model = train(scan, labels, TrainingOptions(seed=0, epochs=3, members=3, ensemble="folds"))
    m = model.metrics
    assert isinstance(model.network, EnsembleNet) and m["members"] == 3
    assert m["cross_validated"] == len(labels) and m["n_train"] + m["n_validation"] == len(labels)
    assert 0.25 <= m["temperature"] <= 8.0 and float(model.network.temperature) == pytest.approx(m["temperature"],
                                                                                                 rel=1e-3)
    model.save(tmp_path / "ensemble")
    meta = json.loads((tmp_path / "ensemble" / "model.json").read_text())
    assert meta["members"] == 3 and sorted(p.name for p in (tmp_path / "ensemble").iterdir()) == [
        "model.json", "model.onnx", "model.safetensors"]
    loaded = Model.load(tmp_path / "ensemble")
    assert np.allclose(predict(scan, loaded).probabilities, predict(scan, model).probabilities, atol=1e-6)

    single = train(scan, labels, TrainingOptions(seed=0, epochs=3, members=1, checkpoint="best"))
    assert isinstance(single.network, CompactNet) and single.metrics["n_validation"] > 0
    single.save(tmp_path / "single")
    # a model folder from before ensembles (no "members" in its JSON) still loads and predicts
    meta = json.loads((tmp_path / "single" / "model.json").read_text())
    del meta["members"]
    (tmp_path / "single" / "model.json").write_text(json.dumps(meta))
    old = Model.load(tmp_path / "single")
    assert np.allclose(predict(scan, old).probabilities, predict(scan, single).probabilities, atol=1e-6)
    with pytest.raises(GhostmapError, match="members"):
        train(scan, labels, TrainingOptions(members=0))


def test_an_ensemble_on_every_label_is_calibrated_on_the_scan(small_scan):
    scan, truth = small_scan
    labels, _ = label_loop(truth, 24, seed=1)
    model = train(scan, labels, TrainingOptions(seed=0, epochs=100, members=3))
    m = model.metrics
    assert m["members"] == 3 and m["ensemble"] == "all" and "cross_validated" not in m
    assert m["n_train"] == len(labels) and m["n_validation"] == 0 and m["class_weights"] == "balanced"
    # nothing held out: the temperature comes from the scan, as for one network
    assert "neighbour_agreement" in m and float(model.network.temperature) == pytest.approx(m["temperature"], rel=1e-3)
    assert np.allclose(model.scan_prediction.probabilities, predict(scan, model).probabilities, atol=1e-4)
    # every member learnt every label: each one alone fits most of them; they start from their own weights
    from ghostmap.preprocessing import preprocess_positions

    inputs = preprocess_positions(scan, labels.y, labels.x, model.preprocessing)
    with torch.inference_mode():
        logits = model.network.member_logits(inputs)  # (labels, members, classes)
    wanted = torch.as_tensor([model.classes.index(c) for c in labels.label])
    assert ((logits.argmax(-1) == wanted[:, None]).float().mean(0) >= 0.75).all()
    assert not torch.allclose(logits[:, 0], logits[:, 1], atol=1e-3)
    with pytest.raises(GhostmapError, match="unknown ensemble"):
        train(scan, labels, TrainingOptions(members=2, ensemble="bags"))


def test_default_trains_every_label_and_keeps_the_final_weights(small_scan):
    scan, truth = small_scan
    labels, _ = label_loop(truth, 24, seed=1)
    model = train(scan, labels, TrainingOptions(seed=0, epochs=300))
    m = model.metrics
    assert m["checkpoint"] == "final" and m["n_validation"] == 0 and m["n_train"] == len(labels)
    assert m["best_epoch"] == m["epochs"] == 300 and len(m["history"]) == 300
    assert m["refits"] == 0 and m["fit_per_attempt"] == [round(m["val_accuracy"], 4)]
    assert m["train_accuracy_all_labels"] == pytest.approx(m["val_accuracy"]) and m["val_accuracy"] >= 0.75
    paper = train(scan, labels, TrainingOptions(seed=0, epochs=2, arch="paper"))
    assert paper.metrics["checkpoint"] == "best" and paper.metrics["n_validation"] > 0
    with pytest.raises(GhostmapError, match="checkpoint"):
        train(scan, labels, TrainingOptions(epochs=2, checkpoint="median"))
    with pytest.raises(GhostmapError, match="cosine"):
        train(scan, labels, TrainingOptions(epochs=2, schedule="plateau"))


def test_a_network_that_does_not_fit_its_labels_is_trained_again():
    # identical patterns under different labels: no network fits more than half of them
    data = np.full((6, 6, 32, 32), 5, np.uint16)
    labels = Labels(np.arange(6, dtype=np.int64), np.zeros(6, np.int64), np.array(["vertical", "horizontal"] * 3))
    model = train(as_scan(data), labels, TrainingOptions(seed=0, epochs=2, refits=2))
    m = model.metrics
    assert m["refits"] == 2 and len(m["fit_per_attempt"]) == 3 and max(m["fit_per_attempt"]) < 0.9
    assert m["val_accuracy"] == max(m["fit_per_attempt"])  # the best fitting attempt is kept
    none = train(as_scan(data), labels, TrainingOptions(seed=0, epochs=2, refits=0))
    assert none.metrics["refits"] == 0 and len(none.metrics["fit_per_attempt"]) == 1
    seeds = {refit_seed(3, a) for a in range(4)}
    assert refit_seed(3, 0) == 3 and len(seeds) == 4 and refit_seed(3, 2) == refit_seed(3, 2)


def test_nuisance_augmentation_shifts_by_subpixels_and_keeps_patterns_standardised():
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(8, 1, 16, 16)
    x[:, 0, 8, 8] = 1.0
    assert torch.equal(nuisance_batch(x, 0.0, 0.0, gen), x)
    moved = nuisance_batch(x, 0.5, 0.0, gen)
    assert torch.allclose(moved.sum((1, 2, 3)), torch.ones(8))  # bilinear: the marker's mass is kept
    rows = (moved[:, 0].sum(2) * torch.arange(16.0)).sum(1)
    cols = (moved[:, 0].sum(1) * torch.arange(16.0)).sum(1)
    assert (rows - 8).abs().max() <= 0.5 + 1e-6 and (cols - 8).abs().max() <= 0.5 + 1e-6
    assert (rows - 8).abs().max() > 0.05  # it did move
    z = torch.randn(8, 1, 16, 16)
    z = (z - z.mean((1, 2, 3), keepdim=True)) / z.std((1, 2, 3), keepdim=True)
    g = nuisance_batch(z, 0.0, 0.2, gen)
    assert torch.allclose(g.mean((1, 2, 3)), torch.zeros(8), atol=1e-5)
    assert torch.allclose(g.std((1, 2, 3)), torch.ones(8), atol=1e-4)
    assert not torch.allclose(g, z, atol=1e-3)
    # the brightest pixel of each pattern stays the brightest: a power keeps the order of intensities
    assert torch.equal(g.flatten(1).argmax(1), z.flatten(1).argmax(1))
    two = torch.randn(8, 2, 16, 16) * torch.tensor([1.0, 5.0]).view(1, 2, 1, 1)  # pooled and own channels
    two = (two - two.mean((2, 3), keepdim=True)) / two.std((2, 3), keepdim=True)
    g2 = nuisance_batch(two, 0.0, 0.2, gen)
    assert torch.allclose(g2.mean((2, 3)), torch.zeros(8, 2), atol=1e-5)  # each channel standardised on its own
    assert torch.allclose(g2.std((2, 3)), torch.ones(8, 2), atol=1e-4)
    assert nuisance_of(TrainingOptions()) == (1.0, 0.2)
    assert nuisance_of(TrainingOptions(arch="paper")) == (0.0, 0.0)
    assert nuisance_of(TrainingOptions(shift=0.0, power=0.1)) == (0.0, 0.1)
    # the shift is given for a 128-px input, scales with the input, and is off below 128 px (where smoothing hurt)
    assert input_shift(1.0, (128, 128)) == 1.0 and input_shift(1.0, (256, 128)) == 2.0
    assert input_shift(0.5, (128, 64)) == 0.5 and input_shift(1.0, (64, 64)) == 0.0 == input_shift(1.0, (32, 32))


def _plain_augmentation(x, y, swap, shift, power, gen):
    """The augmentation written the obvious way: flip every pattern and choose, an affine grid per pattern."""
    n, c, h, w = x.shape
    x = torch.where((torch.rand(n, generator=gen) < 0.5).view(-1, 1, 1, 1), x.flip(2), x)
    x = torch.where((torch.rand(n, generator=gen) < 0.5).view(-1, 1, 1, 1), x.flip(3), x)
    tr = torch.rand(n, generator=gen) < 0.5
    x, y = torch.where(tr.view(-1, 1, 1, 1), x.transpose(2, 3), x), torch.where(tr, swap[y], y)
    exponent = 1 + power * (2 * torch.rand(n, 1, 1, 1, generator=gen) - 1)
    x = (x - x.amin(dim=(2, 3), keepdim=True)).clamp_min(0).pow(exponent)
    flat = x.reshape(n, c, -1)
    x = (x - flat.mean(2).view(n, c, 1, 1)) / flat.std(2).clamp_min(1e-6).view(n, c, 1, 1)
    move = shift * (2 * torch.rand(n, 2, generator=gen) - 1)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2], theta[:, 1, 2] = 2 * move[:, 1] / w, 2 * move[:, 0] / h
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, padding_mode="border", align_corners=False), y


@pytest.mark.parametrize("n", [16, 2, 1])
def test_the_augmentation_is_bit_for_bit_the_plain_one_and_leaves_its_input_alone(n):
    swap = swap_pairs(("horizontal", "none", "vertical"))
    x, y = torch.randn(n, 2, 24, 24), torch.randint(0, 3, (n,))
    before = x.clone()
    for seed in range(4):
        gen = torch.Generator().manual_seed(seed)
        xa, ya = augment_batch(x, y, swap, gen)
        xa = nuisance_batch(xa, 1.0, 0.2, gen)
        xp, yp = _plain_augmentation(x, y, swap, 1.0, 0.2, torch.Generator().manual_seed(seed))
        assert torch.equal(xa, xp) and torch.equal(ya, yp)
    assert torch.equal(x, before)


def test_the_compact_network_gets_the_own_pattern_by_default(small_scan):
    scan, _ = small_scan
    assert training_preprocessing(scan).channels == 2
    assert training_preprocessing(scan, "paper").channels == 1  # the paper's recipe, unchanged
    assert training_preprocessing(scan, pool=1).channels == 1  # nothing pooled: the own pattern is the input
    assert training_preprocessing(scan, own_pattern=False).channels == 1


def test_scan_temperature_calibrates_one_network_without_changing_its_classes(small_scan, tmp_path):
    import json

    from ghostmap.evaluation import expected_calibration_error
    from ghostmap.model import Model

    scan, truth = small_scan
    labels, _ = label_loop(truth, 40, seed=0)
    options = dict(seed=0, epochs=60)
    plain = train(scan, labels, TrainingOptions(**options, calibration="none"))
    model = train(scan, labels, TrainingOptions(**options))  # the default: calibrated on the scan
    m = model.metrics
    assert "temperature" not in plain.metrics and float(plain.network.temperature) == 1.0
    assert 0.25 <= m["temperature"] <= 8.0 and m["temperature"] != pytest.approx(1.0, abs=0.02)
    assert float(model.network.temperature) == pytest.approx(m["temperature"]) and 0.5 < m["neighbour_agreement"] <= 1
    # the same network: equal weights, so the temperature alone differs
    assert all(torch.equal(a, b) for a, b in zip(plain.network.state_dict().values(),
                                                 model.network.state_dict().values()))
    before, after = predict(scan, plain), predict(scan, model)
    assert np.array_equal(before.label_names(), after.label_names())  # classes never change
    # train kept the scan's classification at the fitted temperature: what predict gives, without a second pass
    assert plain.scan_prediction is None and model.scan_prediction is not None
    assert np.array_equal(model.scan_prediction.labels, after.labels)
    assert np.allclose(model.scan_prediction.probabilities, after.probabilities, atol=1e-4)
    assert np.allclose(model.scan_prediction.bright_field, after.bright_field, rtol=1e-5)
    assert not np.allclose(before.probabilities, after.probabilities, atol=1e-3)
    # held out: every position that is not a label, scored against the truth
    held_out = np.ones(truth.shape, bool)
    held_out[labels.y, labels.x] = False
    right = (after.label_names() == truth)[held_out]
    ece_before = expected_calibration_error(before.probabilities.max(-1)[held_out], right)[0]
    ece_after = expected_calibration_error(after.probabilities.max(-1)[held_out], right)[0]
    assert ece_after < ece_before
    # the temperature travels in model.json (the weights file is unchanged) and is applied after loading
    model.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "model.json").read_text())["metrics"]["temperature"] == m["temperature"]
    loaded = Model.load(tmp_path / "m")
    assert np.allclose(predict(scan, loaded).probabilities, after.probabilities, atol=1e-6)
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    meta["metrics"]["temperature"] = -1
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(GhostmapError, match="temperature"):
        Model.load(tmp_path / "m")
    with pytest.raises(GhostmapError, match="calibration"):
        train(scan, labels, TrainingOptions(calibration="guess"))


def test_balanced_loss_weights_each_class_by_its_rarity_and_is_the_compact_default():
    targets = torch.tensor([0, 0, 0, 1])  # class 1 has a quarter of the labels: weight 2, class 0 2/3

    def network(x):
        return torch.tensor([[2.0, 0.0]]).repeat(len(x), 1)

    x, y = torch.zeros(2, 1, 4, 4), torch.tensor([0, 1])
    each = torch.nn.functional.cross_entropy(network(x), y, reduction="none")
    balanced, _ = loss_for(TrainingOptions(), targets, 2)(network, x, y, None)
    plain, _ = loss_for(TrainingOptions(class_weights="none"), targets, 2)(network, x, y, None)
    assert float(plain) == pytest.approx(float(each.mean()))
    assert float(balanced) == pytest.approx(float((2 / 3 * each[0] + 2 * each[1]) / (2 / 3 + 2)))
    root, _ = loss_for(TrainingOptions(class_weights="sqrt"), targets, 2)(network, x, y, None)
    w0, w1 = (2 / 3) ** 0.5, 2 ** 0.5  # the balanced weights' square roots: a milder correction
    assert float(root) == pytest.approx(float((w0 * each[0] + w1 * each[1]) / (w0 + w1)))
    paper, _ = loss_for(TrainingOptions(arch="paper"), targets, 2)(network, x, y, None)
    assert float(paper) == pytest.approx(float(plain))  # the paper's recipe stays unweighted
    with pytest.raises(GhostmapError, match="class_weights"):
        loss_for(TrainingOptions(class_weights="square"), targets, 2)


def test_the_int8_examples_are_read_only_when_asked_for(small_scan):
    scan, truth = small_scan
    labels, _ = label_loop(truth, 20, seed=1)
    options = TrainingOptions(seed=0, epochs=2, calibration="none", refits=0)
    model = train(scan, labels, options)
    assert model.sample_inputs.shape[1:] == (model.preprocessing.channels, *model.input_shape)
    assert train(scan, labels, options, int8_examples=False).sample_inputs is None


def test_the_calibration_pass_on_the_cpu_gives_torchs_temperature(small_scan, monkeypatch):
    """Calibration classifies the scan in ONNX Runtime on the CPU; the temperature must not depend on that."""
    scan, truth = small_scan
    labels, _ = label_loop(truth, 30, seed=2)
    model = train(scan, labels, TrainingOptions(seed=0, epochs=4, calibration="none"))
    with_onnx = calibrate_on_scan(scan, model, "cpu")["temperature"]
    monkeypatch.setattr("ghostmap.model.export_onnx", lambda *args, **kwargs: None)  # no graph: torch does it
    with_torch = calibrate_on_scan(scan, model, "cpu")["temperature"]
    assert with_onnx == pytest.approx(with_torch, abs=2e-4)  # both rounded to 4 decimals
