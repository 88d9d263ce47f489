"""The conventional baselines: offset virtual dark field (vdf) and label-free clustering."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import scipy.ndimage as ndi
from PIL import Image

from ghostmap.baselines import (
    VDF_CLASSES,
    Apertures,
    _vdf_detectors,
    aperture_weights,
    classify_contrast,
    cluster_baseline,
    contrast_map,
    disk_centroids,
    fast_vdf_sums,
    find_lattice,
    ghost_apertures,
    pool_map,
    read_apertures,
    save_baseline,
    vdf_baseline,
    vdf_sums,
)
from ghostmap.cli import main
from ghostmap.detector import find_bad_pixels
from ghostmap.errors import GhostmapError
from ghostmap.evaluation import best_permutation_accuracy, evaluate, wall_mask
from ghostmap.labels import Labels
from ghostmap.outputs import load_prediction
from ghostmap.reading import as_scan, bright_field_mask, mean_and_max_pattern
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


def _mean_and_max_the_plain_way(scan, max_patterns):
    """Row by row, summed in float64: what mean_and_max_pattern's integer sums must equal to the last bit."""
    from ghostmap.analysis import _sample_rows

    rows = _sample_rows(scan, max_patterns)
    total, maximum = np.zeros(scan.detector_shape), None
    for r in rows:
        block = scan.read_rows(r, r + 1)[0]
        total += block.sum(axis=0, dtype=np.float64)
        maximum = block.max(axis=0) if maximum is None else np.maximum(maximum, block.max(axis=0))
    return total / (len(rows) * scan.scan_shape[1]), maximum


def _dense_vdf_the_old_way(data, apertures, live, bf_center, bf_radius):
    """The reference: every shift's apertures rendered over the whole detector, centroids found in
    whole patterns, one dense matrix product per pattern (what vdf_baseline did before it went sparse)."""
    scan = as_scan(data)
    det = scan.detector_shape
    n_rows, n_cols = scan.scan_shape
    raw = scan.read_rows(0, n_rows).reshape(-1, *det)
    centroids = disk_centroids(raw, bf_center, bf_radius, live).reshape(n_rows, n_cols, 2)
    shifts = ndi.gaussian_filter(centroids, sigma=(2, 2, 0), mode="nearest")
    shifts -= shifts.reshape(-1, 2).mean(0)
    yy, xx = np.indices(det, dtype=np.float64)
    livef = live.astype(np.float64)

    def render(dy, dx):
        moved = Apertures(apertures.horizontal + (dy, dx), apertures.vertical + (dy, dx), apertures.radius)
        w_h, w_v = aperture_weights(moved, det)
        disk = np.clip(bf_radius - np.hypot(yy - bf_center[0] - dy, xx - bf_center[1] - dx) + 0.5, 0, 1)
        return np.stack([w_h * livef, w_v * livef, disk * livef, livef])

    return shifts, vdf_sums(scan, render, shifts)


def test_fast_vdf_gives_the_dense_sums_and_the_same_map(drifting):
    data, _ = drifting
    result = vdf_baseline(data)
    mean, maximum = mean_and_max_pattern(as_scan(data))
    fast_mean, fast_max = mean_and_max_pattern(as_scan(data), max_patterns=600)  # a subset of rows, as on big scans
    slow_mean, slow_max = _mean_and_max_the_plain_way(as_scan(data), max_patterns=600)
    assert np.array_equal(fast_mean, slow_mean) and np.array_equal(fast_max, slow_max)
    bad = np.zeros(mean.shape, bool)
    for r, c in find_bad_pixels(mean, maximum):
        bad[r, c] = True
    bf = bright_field_mask(mean)
    rr, cc = np.nonzero(bf)
    bf_center, bf_radius = (float(rr.mean()), float(cc.mean())), float(np.sqrt(bf.sum() / np.pi))
    shifts, dense = _dense_vdf_the_old_way(data, result.apertures, ~bad, bf_center, bf_radius)
    assert np.allclose(result.arrays["descan_shift"], shifts, atol=1e-5)
    s_h, s_v, s_bf, total = np.moveaxis(dense, -1, 0)
    for name, ref in (("horizontal_sum", s_h), ("vertical_sum", s_v), ("total", total)):
        assert np.allclose(result.arrays[name], ref, rtol=1e-5), name
    assert np.allclose(result.prediction.bright_field, s_bf, rtol=1e-5)
    old = classify_contrast(contrast_map(s_h, s_v, total, pool=3))[0]
    assert np.array_equal(result.prediction.labels, old)


def test_vdf_detectors_match_dense_ones_with_overlaps_and_bad_pixels(drifting):
    """Overlapping apertures keep the larger weight, bad pixels count nowhere, shifts move everything."""
    data, _ = drifting
    scan = as_scan(data[:4])
    det = scan.detector_shape
    rng = np.random.default_rng(0)
    ap = Apertures([[20.0, 20.0], [22.5, 24.0], [40.3, 10.7]], [[30.2, 40.9], [5.0, 60.0]], 4.6)
    live = np.ones(det, bool)
    live[rng.integers(0, det[0], 30), rng.integers(0, det[1], 30)] = False
    live[21, 22] = False  # inside two overlapping apertures
    shifts = rng.normal(0, 1.5, (*scan.scan_shape, 2))
    sparse = fast_vdf_sums(scan, _vdf_detectors(ap, (32.0, 31.5), 6.0, live), shifts)
    yy, xx = np.indices(det, dtype=np.float64)

    def render(dy, dx):
        moved = Apertures(ap.horizontal + (dy, dx), ap.vertical + (dy, dx), ap.radius)
        w_h, w_v = aperture_weights(moved, det)
        disk = np.clip(6.0 - np.hypot(yy - 32.0 - dy, xx - 31.5 - dx) + 0.5, 0, 1)
        return np.stack([w_h * live, w_v * live, disk * live, live])

    dense = vdf_sums(scan, render, shifts)
    assert np.allclose(sparse, dense, rtol=1e-5)
    assert len(np.unique(np.round(shifts / 0.25).reshape(-1, 2), axis=0)) > 100  # many distinct shifts rendered


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


def test_clusters_are_the_same_from_one_pass_over_the_scan_as_from_two(drifting, monkeypatch):
    import ghostmap.baselines as baselines

    def run():
        calls = []
        result = cluster_baseline(drifting[0], k=3, sample=240, progress=lambda done, total: calls.append((done, total)))
        assert calls[-1][0] == calls[-1][1]  # the progress bar ends full
        return result, calls[-1][1]

    one_pass, work = run()
    monkeypatch.setattr(baselines, "FEATURE_MEMORY", 0)  # as if the features did not fit in memory
    two_passes, more_work = run()
    assert work == 20 * 60 and more_work == work + 4 * 60  # 4 sample rows of 60 patterns read again
    np.testing.assert_array_equal(one_pass.prediction.labels, two_passes.prediction.labels)
    np.testing.assert_array_equal(one_pass.arrays["scores"], two_passes.arrays["scores"])


def test_the_fourier_shift_matches_a_double_precision_one():
    from ghostmap.baselines import _fourier_shift

    rng = np.random.default_rng(0)
    x = rng.poisson(5, (6, 32, 48)).astype(np.float32)
    shifts = rng.normal(0, 2, (6, 2))
    ky, kx = np.fft.fftfreq(32)[:, None], np.fft.rfftfreq(48)[None, :]
    phase = np.exp(-2j * np.pi * (shifts[:, 0, None, None] * ky + shifts[:, 1, None, None] * kx))
    reference = np.fft.irfft2(np.fft.rfft2(x.astype(np.float64)) * phase, s=(32, 48))
    shifted = _fourier_shift(x, shifts)
    assert shifted.dtype == np.float32
    np.testing.assert_allclose(shifted, reference, atol=1e-4)
    whole = _fourier_shift(x, np.array([[3.0, -5.0]] * 6))  # whole pixels: a periodic roll
    np.testing.assert_allclose(whole, np.roll(x, (3, -5), axis=(1, 2)), atol=1e-4)


def test_clustering_integer_counts_does_not_import_torch(tmp_path):
    import subprocess

    write_simulated_scan(tmp_path / "scan.npy", (6, 10), detector=64, seed=3)
    code = ("import sys; from ghostmap.baselines import cluster_baseline; from ghostmap.reading import open_scan; "
            f"cluster_baseline(open_scan({str(tmp_path / 'scan.npy')!r}), k=2); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


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
