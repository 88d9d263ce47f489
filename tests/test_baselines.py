"""The conventional baselines: offset virtual dark field (vdf) and label-free clustering."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from ghostmap.baselines import (
    VDF_CLASSES,
    Apertures,
    classify_contrast,
    cluster_baseline,
    find_lattice,
    ghost_apertures,
    pool_map,
    read_apertures,
    save_baseline,
    vdf_baseline,
)
from ghostmap.cli import main
from ghostmap.errors import GhostmapError
from ghostmap.evaluation import best_permutation_accuracy, evaluate, wall_mask
from ghostmap.labels import Labels
from ghostmap.outputs import load_prediction
from ghostmap.simulate import SimulationParams, noiseless_pattern, simulate_scan, write_simulated_scan, write_truth_csv


@pytest.fixture(scope="module")
def still():
    """A small scan without descan drift."""
    return simulate_scan((20, 60), detector=64, seed=0, drift=0)


@pytest.fixture(scope="module")
def drifting():
    """A small scan with the simulator's default 2-pixel descan drift."""
    return simulate_scan((20, 60), detector=64, seed=1)


@pytest.fixture(scope="module")
def vdf_still(still):
    return vdf_baseline(still[0])


def _truth_labels(truth):
    rows, cols = truth.shape
    yy, xx = np.mgrid[:rows, :cols]
    return Labels(xx.ravel(), yy.ravel(), truth.ravel())


# ------------------------------------------------------------------------------ lattice and apertures


def test_find_lattice_recovers_the_simulated_lattice():
    params = SimulationParams(detector=128)
    lattice = find_lattice(noiseless_pattern("none", params))
    for vec, angle in ((lattice.a1, 3.0), (lattice.a2, 93.0)):  # a1 ~ detector x, a2 ~ detector y
        assert np.hypot(*vec) == pytest.approx(params.spacing, rel=0.03)
        assert np.degrees(np.arctan2(vec[0], vec[1])) == pytest.approx(angle, abs=1.5)
    assert lattice.center == pytest.approx((63.5 + 0.3, 63.5 - 0.2), abs=0.3)
    assert lattice.radius == pytest.approx(params.radius, rel=0.2)


def test_ghost_apertures_sit_halfway_between_bragg_disks():
    lattice = find_lattice(noiseless_pattern("none", SimulationParams(detector=128)))
    ap = ghost_apertures(lattice, (128, 128))
    assert len(ap.horizontal) > 20 and len(ap.vertical) > 20
    c, a1, a2 = (np.array(v) for v in (lattice.center, lattice.a1, lattice.a2))
    basis = np.linalg.inv(np.stack([a1, a2], 1))
    h = (ap.horizontal - c) @ basis.T  # lattice coordinates
    v = (ap.vertical - c) @ basis.T
    assert np.allclose(h[:, 0] % 1, 0.5, atol=1e-6) and np.allclose(np.round(h[:, 1]), h[:, 1], atol=1e-6)
    assert np.allclose(v[:, 1] % 1, 0.5, atol=1e-6) and np.allclose(np.round(v[:, 0]), v[:, 0], atol=1e-6)


# ------------------------------------------------------------------------------ vdf


@pytest.mark.parametrize("which", ["still", "drifting"])
def test_vdf_separates_horizontal_from_vertical(which, request):
    data, truth = request.getfixturevalue(which)
    result = vdf_baseline(data)
    names = result.prediction.label_names()
    domains = ~wall_mask(truth)
    assert (names == truth)[domains].mean() > 0.95
    assert (names == truth).mean() > 0.8
    # the contrast's sign (about the fitted midpoint) follows the truth on the domains
    side = result.arrays["contrast"] - result.info["threshold"]
    assert (side[truth == "horizontal"] > 0).mean() > 0.95
    assert (side[truth == "vertical"] < 0).mean() > 0.95
    assert result.info["descan"] is True


def test_vdf_probabilities_are_a_soft_assignment(vdf_still):
    p = vdf_still.prediction
    assert p.classes == VDF_CLASSES
    assert np.allclose(p.probabilities.sum(-1), 1, atol=1e-5)
    assert (p.labels == p.probabilities.argmax(-1)).all()
    assert 0.34 < p.confidence.min() and p.confidence.max() <= 1


def test_classify_contrast_bands():
    rng = np.random.default_rng(0)
    contrast = np.concatenate([rng.normal(-1, 0.1, 300), rng.normal(1, 0.1, 200), np.zeros(20)])[None]
    labels, prob, info = classify_contrast(contrast, none_band=0.5)
    names = np.asarray(VDF_CLASSES)[labels[0]]
    assert (names[:300] == "vertical").mean() > 0.99 and (names[300:500] == "horizontal").mean() > 0.99
    assert (names[500:] == "none").all()
    assert info["threshold"] == pytest.approx(0, abs=0.05)
    assert (classify_contrast(contrast, none_band=0.0)[0] != 0).all()  # no 'none' band
    with pytest.raises(GhostmapError):
        classify_contrast(np.zeros((3, 3)))


def test_pool_map_truncates_edges():
    image = np.arange(12, dtype=float).reshape(3, 4)
    pooled = pool_map(image, 3)
    assert pooled[0, 0] == pytest.approx(image[:2, :2].mean())
    assert pooled[1, 1] == pytest.approx(image[:3, :3].mean())


def test_user_apertures_and_outputs_follow_the_predict_contract(vdf_still, still, tmp_path):
    paths = save_baseline(tmp_path / "out", vdf_still, title="test")
    loaded = load_prediction(tmp_path / "out")
    rows, cols = still[1].shape
    with np.load(paths["predictions"], allow_pickle=False) as z:
        assert z["labels"].dtype == np.int64 and z["labels"].shape == (rows, cols)
        assert z["probabilities"].dtype == np.float32 and z["probabilities"].shape == (rows, cols, 3)
        assert z["classes"].dtype.kind == "U" and tuple(z["classes"]) == VDF_CLASSES
        assert z["bright_field"].shape == (rows, cols)
    assert (loaded.labels == vdf_still.prediction.labels).all()
    image = Image.open(paths["domain_map"])
    assert image.mode == "RGB" and image.size == (cols, rows)
    assert Image.open(paths["contrast"]).format == "PNG"
    with np.load(paths["baseline"], allow_pickle=False) as z:
        assert z["contrast"].shape == (rows, cols)
        assert json.loads(str(z["info"]))["method"] == "vdf"
    # apertures.json reads back and gives the same map
    again = read_apertures(paths["apertures"], still[0].shape[2:])
    assert np.allclose(again.horizontal, vdf_still.apertures.horizontal, atol=1e-3)
    rerun = vdf_baseline(still[0], apertures=again)
    assert (rerun.prediction.labels == vdf_still.prediction.labels).mean() > 0.99
    report = evaluate(loaded.label_names(), _truth_labels(still[1]))
    assert report["domain_accuracy"] > 0.95 and report["wall_accuracy"] is not None


@pytest.mark.parametrize("content, word", [
    ("not json", "JSON"),
    ('{"horizontal": [[1, 2]]}', "'vertical'"),
    ('{"horizontal": [[1, 2]], "vertical": [[3, 4]]}', "radius"),
    ('{"radius": 1, "horizontal": [1, 2], "vertical": [[3, 4]]}', "pairs"),
    ('{"radius": 1, "horizontal": [[1, 2]], "vertical": [[300, 4]]}', "outside"),
    ('{"radius": 1, "horizontal": [], "vertical": [[3, 4]]}', "no horizontal"),
])
def test_read_apertures_rejects_bad_files(tmp_path, content, word):
    path = tmp_path / "ap.json"
    path.write_text(content)
    with pytest.raises(GhostmapError, match=word) as info:
        read_apertures(path, (64, 64))
    assert "\n" not in str(info.value)


def test_apertures_check_radius():
    with pytest.raises(GhostmapError, match="radius"):
        Apertures([[10, 10]], [[20, 20]], -1).check((64, 64))


# ------------------------------------------------------------------------------ clustering


def test_clusters_find_the_domains_up_to_a_permutation(still):
    data, truth = still
    result = cluster_baseline(data, k=3)
    p = result.prediction
    assert p.classes == ("cluster 0", "cluster 1", "cluster 2")
    assert np.allclose(p.probabilities.sum(-1), 1, atol=1e-5) and (p.labels == p.probabilities.argmax(-1)).all()
    sizes = np.bincount(p.labels.ravel(), minlength=3)
    assert (np.diff(sizes) <= 0).all()  # cluster 0 is the largest
    domains = ~wall_mask(truth)
    best = best_permutation_accuracy(p.label_names()[domains], truth[domains])
    assert best["accuracy"] > 0.9
    report = evaluate(p.label_names(), _truth_labels(truth))
    assert report["best_permutation"]["domain_accuracy"] == pytest.approx(best["accuracy"])


def test_cluster_needs_scikit_learn(still, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.cluster", None)
    with pytest.raises(GhostmapError, match=r"ghostmap\[baselines\]"):
        cluster_baseline(still[0])


def test_best_permutation_accuracy():
    truth = np.array(["h", "h", "v", "v", "none"])
    pred = np.array([2, 2, 0, 0, 1])
    best = best_permutation_accuracy(pred, truth)
    assert best["accuracy"] == 1.0 and best["mapping"] == {"2": "h", "0": "v", "1": "none"}
    assert best_permutation_accuracy(np.array([0, 0, 0, 0, 0]), truth)["accuracy"] == pytest.approx(0.4)
    with pytest.raises(GhostmapError):
        best_permutation_accuracy(pred[:2], truth)


# ------------------------------------------------------------------------------ command line


@pytest.fixture(scope="module")
def sim_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sim")
    truth = write_simulated_scan(folder / "scan.npy", (12, 36), detector=64, seed=2)
    write_truth_csv(folder / "truth.csv", truth)
    return folder


def _run(capfd, *args):
    capfd.readouterr()
    try:
        code = main([str(a) for a in args]) or 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capfd.readouterr()
    return code, out, err


def test_cli_baseline_vdf_and_evaluate(sim_files, tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("GHOSTMAP_DEBUG", raising=False)
    out_dir = tmp_path / "vdf"
    code, out, err = _run(capfd, "baseline", sim_files / "scan.npy", "--method", "vdf", "--out", out_dir)
    assert code == 0, err
    for name in ("predictions.npz", "domain_map.png", "summary.png", "baseline.npz", "contrast.png", "apertures.json"):
        assert (out_dir / name).is_file()
    code, out, err = _run(capfd, "evaluate", out_dir, "--truth", sim_files / "truth.csv")
    assert code == 0, err
    report = json.loads((out_dir / "evaluation.json").read_text())
    assert report["domain_accuracy"] > 0.9
    # the written apertures, given back with another radius
    code, out, err = _run(capfd, "baseline", sim_files / "scan.npy", "--out", tmp_path / "again",
                          "--apertures", out_dir / "apertures.json", "--radius", "1.2")
    assert code == 0, err
    assert json.loads((tmp_path / "again" / "apertures.json").read_text())["radius"] == 1.2


def test_cli_baseline_cluster_and_evaluate(sim_files, tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("GHOSTMAP_DEBUG", raising=False)
    out_dir = tmp_path / "cluster"
    code, out, err = _run(capfd, "baseline", sim_files / "scan.npy", "--method", "cluster", "--k", "3", "--out", out_dir)
    assert code == 0, err
    assert tuple(load_prediction(out_dir).classes) == ("cluster 0", "cluster 1", "cluster 2")
    code, out, err = _run(capfd, "evaluate", out_dir, "--truth", sim_files / "truth.csv")
    assert code == 0, err
    assert "clusters matched to classes" in out
    assert "best_permutation" in json.loads((out_dir / "evaluation.json").read_text())


@pytest.mark.parametrize("args, word", [
    (["--method", "magic"], "unknown --method"),
    (["--apertures", "BAD"], "JSON"),
    (["--apertures", "MISSING"], "no such aperture file"),
    (["--method", "cluster", "--radius", "2"], "vdf only"),
    (["--method", "cluster", "--k", "1"], "at least 2"),
])
def test_cli_baseline_bad_input_one_line_error(sim_files, tmp_path, capfd, monkeypatch, args, word):
    monkeypatch.delenv("GHOSTMAP_DEBUG", raising=False)
    (tmp_path / "bad.json").write_text("{not json")
    args = [{"BAD": tmp_path / "bad.json", "MISSING": tmp_path / "missing.json"}.get(a, a) for a in args]
    code, out, err = _run(capfd, "baseline", sim_files / "scan.npy", "--out", tmp_path / "o", *args)
    assert code == 1
    assert word in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "predictions.npz").exists()
