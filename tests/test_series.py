"""Time series: wall-motion measures, series outputs, resume, 5-D datasets and the CLI."""

import copy
import csv
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from conftest import SERIES_SHIFT as SHIFT
from conftest import SERIES_STEPS as STEPS
from PIL import Image

from ghostmap.errors import GhostmapError
from ghostmap.prediction import predict
from ghostmap.reading import open_time_series, time_series_length
from ghostmap.series import (
    SeriesWriter,
    changed_positions,
    expand_inputs,
    load_series,
    predict_series,
    series_steps,
    wall_centres,
    wall_shift,
)
from ghostmap.simulate import moving_domain_maps


def as_indices(names, classes):
    return np.vectorize(list(classes).index)(names)


# ----------------------------------------------------------------- measures on known maps


def test_wall_shift_measures_rigid_motion_of_stripes():
    classes = ("horizontal", "vertical", "none")
    maps = as_indices(moving_domain_maps((20, 90), 5, SHIFT, stripe_period=30), classes)
    for t in range(1, 5):
        assert wall_shift(maps[t - 1], maps[t], classes) == pytest.approx(SHIFT)
    assert wall_shift(maps[0], maps[0], classes) == 0


def test_wall_shift_of_oblique_walls_is_their_normal_displacement():
    classes = ("horizontal", "vertical", "none")
    maps = as_indices(moving_domain_maps((34, 206), 3, 4, seed=0), classes)
    shift = wall_shift(maps[0], maps[1], classes)
    # walls within 60 degrees of the scan's columns move between cos(60) and 1 times the shift
    assert 0.5 * 4 - 0.5 <= shift <= 4 + 0.5


def test_wall_centres_collapse_a_wide_wall_to_one_line():
    classes = ("a", "b", "none")
    labels = np.zeros((5, 12), int)
    labels[:, 4:8] = 2  # a wall four columns wide
    labels[:, 8:] = 1
    centres = wall_centres(labels, classes)
    assert centres.sum() == 5  # one position per row
    assert set(np.flatnonzero(centres.any(0))) == {5}


def test_no_walls_gives_nan_and_changed_positions_counts():
    classes = ("a", "b", "none")
    flat = np.zeros((4, 4), int)
    assert np.isnan(wall_shift(flat, flat, classes))
    other = flat.copy()
    other[1, 2] = 1
    assert changed_positions(flat, other) == 1


# ---------------------------------------------------------------- a simulated series


@pytest.fixture(scope="module")
def finished(series, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "series"
    writer = predict_series(series["paths"], series["model"], out)
    return out, writer


def test_series_outputs_have_the_documented_shapes(series, finished):
    out, _ = finished
    arrays = load_series(out)
    rows, cols = series["maps"][0].shape
    assert arrays["labels"].shape == (STEPS, rows, cols) and arrays["labels"].dtype == np.int64
    assert arrays["probabilities"].shape == (STEPS, rows, cols, 3) and arrays["probabilities"].dtype == np.float32
    assert list(arrays["classes"]) == list(series["model"].classes)
    assert arrays["fractions"].shape == (STEPS, 3)
    np.testing.assert_allclose(arrays["fractions"].sum(1), 1)
    assert arrays["changed"][0] == 0 and np.isnan(arrays["wall_shift"][0])
    assert [str(s) for s in arrays["sources"]] == [str(p.resolve()) for p in series["paths"]]
    for t in range(STEPS):
        step = np.load(out / f"step_{t:04d}" / "predictions.npz")
        np.testing.assert_array_equal(step["labels"], arrays["labels"][t])
        assert (out / f"step_{t:04d}" / "domain_map.png").is_file()
    with Image.open(out / "domain_maps.gif") as gif:
        assert gif.n_frames == STEPS
    assert Image.open(out / "fractions.png").size[0] > 300
    with open(out / "series.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == STEPS
    assert table[0].keys() >= {"step", "source", "fraction_none", "changed_positions", "changed_fraction", "wall_shift"}
    assert int(table[2]["changed_positions"]) == arrays["changed"][2]


def test_series_reports_the_known_wall_motion(series, finished):
    out, _ = finished
    arrays = load_series(out)
    classes = [str(c) for c in arrays["classes"]]
    for t in range(STEPS):  # the model is good enough for the motion to mean something
        accuracy = (np.asarray(classes)[arrays["labels"][t]] == series["maps"][t]).mean()
        assert accuracy > 0.75, (t, accuracy)
    measured = arrays["wall_shift"][1:]
    assert np.all(np.abs(measured - SHIFT) <= 1.0), measured
    assert np.all(arrays["changed"][1:] > 0)


def test_series_steps_match_single_scan_predictions(series, finished):
    out, _ = finished
    arrays = load_series(out)
    single = predict(series["paths"][2], series["model"])
    np.testing.assert_array_equal(arrays["labels"][2], single.labels)
    np.testing.assert_allclose(arrays["probabilities"][2], single.probabilities, atol=1e-6)


def test_a_rerun_skips_finished_steps_and_redoes_an_unrecorded_one(series, finished, tmp_path):
    out, _ = finished
    target = tmp_path / "resumed"
    # a run killed after step 2's folder was written but before series.json recorded it
    writer = predict_series(series["paths"][:3], series["model"], target)
    manifest = json.loads((target / "series.json").read_text())
    manifest["steps"] = manifest["steps"][:2]
    (target / "series.json").write_text(json.dumps(manifest))
    statuses = []
    writer = predict_series(series["paths"], series["model"], target,
                            on_step=lambda i, n, step, status: statuses.append(status))
    assert statuses == ["skipped", "skipped", "done", "done"]
    np.testing.assert_array_equal(writer.summary()["labels"], load_series(out)["labels"])


def test_a_changed_input_file_is_classified_again(series, tmp_path):
    paths = [tmp_path / p.name for p in series["paths"][:2]]
    for src, dst in zip(series["paths"], paths):
        dst.write_bytes(src.read_bytes())
    predict_series(paths, series["model"], tmp_path / "out")
    np.save(paths[1], series["scans"][3])  # the acquisition rewrote the second scan
    statuses = []
    writer = predict_series(paths, series["model"], tmp_path / "out",
                            on_step=lambda i, n, step, status: statuses.append(status))
    assert statuses == ["skipped", "done"]
    np.testing.assert_array_equal(writer.results[1].labels, predict(series["scans"][3], series["model"]).labels)


def test_another_model_cannot_write_into_a_series(series, finished):
    out, _ = finished
    before = (out / "series.json").read_bytes()
    other = copy.deepcopy(series["model"])
    with torch.no_grad():
        next(other.network.parameters()).add_(0.01)
    with pytest.raises(GhostmapError, match="another model"):
        SeriesWriter(out, other)
    assert (out / "series.json").read_bytes() == before


def test_a_scan_with_another_detector_is_refused_before_any_work(series, tmp_path):
    odd = tmp_path / "odd.npy"
    np.save(odd, np.zeros((12, 48, 16, 16), np.uint16))
    with pytest.raises(GhostmapError, match="odd.npy.*16 x 16"):
        predict_series([*series["paths"][:2], odd], series["model"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_five_d_dataset_is_a_series(series, tmp_path):
    stacked = np.stack(series["scans"][:3])
    path = tmp_path / "insitu.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("entry/data", data=stacked, chunks=(1, 1, 48, 32, 32))
        f.create_dataset("entry/temperature", data=np.arange(3.0))
    assert time_series_length(path) == 3
    steps = series_steps([path])
    assert [s.time_index for s in steps] == [0, 1, 2]
    with open_time_series(path) as ts:
        np.testing.assert_array_equal(ts[1].read_rows(2, 4), stacked[1, 2:4])
    writer = predict_series(steps, series["model"], tmp_path / "out")
    for t in range(3):
        np.testing.assert_array_equal(writer.results[t].labels, predict(series["scans"][t], series["model"]).labels)
    assert str(writer.entries[1]["source"]).endswith("insitu.h5[1]")


def test_globs_expand_in_natural_order(tmp_path):
    for name in ("scan_10.npy", "scan_2.npy", "scan_1.npy"):
        (tmp_path / name).touch()
    assert [p.name for p in expand_inputs([str(tmp_path / "scan_*.npy")])] == ["scan_1.npy", "scan_2.npy",
                                                                              "scan_10.npy"]
    with pytest.raises(GhostmapError, match="no files match"):
        expand_inputs([str(tmp_path / "nothing_*.npy")])


# ----------------------------------------------------------------------------- the CLI


def ghostmap(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ghostmap.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_cli_predict_on_a_glob_writes_a_series(series, tmp_path):
    out = tmp_path / "cli"
    run = ghostmap("predict", str(series["root"] / "scan_*.npy"), "--model", series["model_dir"], "--out", out)
    assert run.returncode == 0, run.stderr
    assert "wall shift" in run.stdout and "scan_3.npy" in run.stdout
    assert load_series(out)["labels"].shape[0] == STEPS
    again = ghostmap("predict", *series["paths"], "--model", series["model_dir"], "--out", out)
    assert again.returncode == 0 and again.stdout.count("already classified") == STEPS
    # each step is classified as 'ghostmap predict' classifies that scan alone (in ONNX Runtime)
    single = ghostmap("predict", series["paths"][1], "--model", series["model_dir"], "--out", tmp_path / "one")
    assert single.returncode == 0, single.stderr
    probabilities = {name: np.load(path / "predictions.npz")["probabilities"]
                     for name, path in (("step", out / "step_0001"), ("one", tmp_path / "one"))}
    assert np.array_equal(probabilities["step"], probabilities["one"])
    torch_run = ghostmap("predict", series["paths"][1], "--model", series["model_dir"], "--out", tmp_path / "torch",
                         "--engine", "torch")
    assert torch_run.returncode == 0, torch_run.stderr  # PyTorch's float32 differs: the step did not come from it
    assert not np.array_equal(np.load(tmp_path / "torch" / "predictions.npz")["probabilities"], probabilities["one"])


def test_cli_series_with_a_mismatched_scan_is_one_line(series, tmp_path):
    odd = tmp_path / "odd.npy"
    np.save(odd, np.zeros((12, 48, 16, 16), np.uint16))
    run = ghostmap("predict", series["paths"][0], odd, "--model", series["model_dir"], "--out", tmp_path / "o")
    assert run.returncode == 1
    assert run.stderr.strip().count("\n") == 0 and "odd.npy" in run.stderr and "Traceback" not in run.stderr


def test_cli_predict_refuses_an_unknown_compile_mode(series, tmp_path):
    run = ghostmap("predict", series["paths"][0], "--model", series["model_dir"], "--out", tmp_path / "o",
                   "--compile", "fast")
    assert run.returncode == 2 and "--compile" in run.stderr and not (tmp_path / "o").exists()


def test_long_series_redraw_figures_less_often_and_flush_at_the_end(series, tmp_path, monkeypatch):
    import ghostmap.series as series_module

    monkeypatch.setattr(series_module, "FIGURES_ALWAYS", 1)
    monkeypatch.setattr(series_module, "FIGURES_EVERY_S", 3600.0)
    writer = SeriesWriter(tmp_path / "long", series["model"])
    results = [predict(series["scans"][t], series["model"]) for t in range(3)]
    for t, result in enumerate(results):
        writer.add({"source": f"scan_{t}", "size": 0, "mtime_ns": 0}, result)
    assert load_series(tmp_path / "long")["labels"].shape[0] == 3  # the arrays are always current
    with Image.open(tmp_path / "long" / "domain_maps.gif") as gif:
        assert gif.n_frames == 1  # drawn once, at the first step
    writer.flush()
    with Image.open(tmp_path / "long" / "domain_maps.gif") as gif:
        assert gif.n_frames == 3
