"""End-to-end tests of the ``ghostmap`` command line.

Most commands run in-process through :func:`ghostmap.cli.main` (torch is imported once);
a few bad-input cases also run as a real ``python -m ghostmap.cli`` process, so that
warnings or tracebacks printed by a fresh interpreter would show.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

import ghostmap.training
from ghostmap.cli import main
from ghostmap.labels import read_labels
from ghostmap.sampling import propose

PAPER_YAML = Path(__file__).resolve().parents[2] / "shared" / "paper-labels" / "paper_data_50_binary_frame_1_labels.yaml"


# ------------------------------------------------------------------------------ helpers


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def _code(value) -> int:
    if value is None:
        return 0
    return value if isinstance(value, int) else 1


@pytest.fixture
def cli(capfd, monkeypatch):
    """Run ``ghostmap ARGS`` in-process; return exit code, stdout and stderr (file-descriptor level)."""
    monkeypatch.delenv("GHOSTMAP_DEBUG", raising=False)
    monkeypatch.delenv("GHOSTMAP_PROGRESS", raising=False)

    def run(*args) -> Result:
        capfd.readouterr()
        try:
            code = _code(main([str(a) for a in args]))
        except SystemExit as exc:
            code = _code(exc.code)
        out, err = capfd.readouterr()
        return Result(code, out, err)

    return run


def run_process(*args, cwd=None) -> Result:
    """Run ``python -m ghostmap.cli ARGS`` as a separate process."""
    env = {k: v for k, v in os.environ.items() if k not in ("GHOSTMAP_DEBUG", "GHOSTMAP_PROGRESS")}
    proc = subprocess.run([sys.executable, "-m", "ghostmap.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def _quiet_main(*args) -> None:
    """Run the CLI for fixture setup (outside any test's capture); it must succeed."""
    try:
        code = _code(main([str(a) for a in args]))
    except SystemExit as exc:
        code = _code(exc.code)
    assert code == 0, f"setup command failed: ghostmap {' '.join(map(str, args))}"


def snapshot(*roots: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``roots``: its bytes and modification time (ns)."""
    files = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in paths:
            files[str(p)] = (p.read_bytes(), p.stat().st_mtime_ns)
    return files


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def read_positions(path: Path) -> list[tuple[int, int]]:
    header, rows = read_csv(path)
    assert header == ["x", "y"], f"{path} header is {header}"
    return [(int(r["x"]), int(r["y"])) for r in rows]


def write_labels_csv(path: Path, rows, header=("x", "y", "label")) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    return path


def random_scan(path: Path, scan_shape=(6, 6), detector=64, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    np.save(path, rng.poisson(20, size=(*scan_shape, detector, detector)).astype(np.uint16))
    return path


def two_class_rows(scan_shape=(6, 6)):
    """Labels at every position of ``scan_shape``, two classes in a checkerboard."""
    rows, cols = scan_shape
    return [(x, y, "vertical" if (x + y) % 2 else "horizontal") for y in range(rows) for x in range(cols)]


# -------------------------------------------------------------------- shared fixtures


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A 6x6 scan of random 64x64 patterns, a model trained on it for one epoch, and its predictions.

    The model is useless, and that is fine: the tests here only need a valid model
    directory of a known detector shape and a real predictions folder.
    """
    root = tmp_path_factory.mktemp("tiny")
    scan = random_scan(root / "scan64.npy", (6, 6), 64)
    scan32 = random_scan(root / "scan32.npy", (4, 5), 32, seed=1)
    labels = write_labels_csv(root / "labels.csv", two_class_rows((6, 6)))
    _quiet_main("train", scan, "--labels", labels, "--out", root / "model", "--epochs", "1", "--seed", "0")
    _quiet_main("predict", scan, "--model", root / "model", "--out", root / "results")
    return {"root": root, "scan": scan, "scan32": scan32, "labels": labels, "model": root / "model",
            "results": root / "results"}


@pytest.fixture(scope="session")
def small_sim(tmp_path_factory):
    """A small simulated scan (10 x 30 patterns of 32 x 32) with its truth."""
    root = tmp_path_factory.mktemp("sim")
    _quiet_main("simulate", root, "--scan", "10x30", "--detector", "32", "--seed", "1")
    return {"scan": root / "scan.npy", "truth": root / "truth.csv"}


# ------------------------------------------------------------------------ 1. the loop


def test_cli_loop_simulate_sample_label_train_predict_evaluate(cli, tmp_path, monkeypatch):
    started = time.perf_counter()
    monkeypatch.chdir(tmp_path)
    sim = tmp_path / "sim"
    detector = 64

    r = cli("simulate", sim, "--scan", "34x206", "--detector", detector, "--seed", "0")
    assert r.code == 0, r.err
    scan_path, truth_path = sim / "scan.npy", sim / "truth.csv"
    assert sorted(p.name for p in sim.iterdir()) == ["scan.npy", "truth.csv"]
    scan = np.load(scan_path, mmap_mode="r")
    assert scan.shape == (34, 206, detector, detector) and scan.dtype == np.uint16
    header, truth_rows = read_csv(truth_path)
    assert header == ["x", "y", "label"]
    truth = {(int(t["x"]), int(t["y"])): t["label"] for t in truth_rows}
    assert len(truth) == len(truth_rows) == 34 * 206
    assert set(truth) == {(x, y) for x in range(206) for y in range(34)}
    assert {"horizontal", "vertical", "none"} <= set(truth.values())

    # Sample, label from the truth, repeat until nothing is proposed.
    labels_path = tmp_path / "labels.csv"
    labelled: list[tuple[int, int]] = []
    rounds = 0
    while True:
        r = cli("sample", scan_path, "--labels", labels_path, "--budget", 50, "--out", "next.csv")
        assert r.code == 0, r.err
        proposed = read_positions(tmp_path / "next.csv")
        if not proposed:
            assert (tmp_path / "next.csv").read_text().strip() == "x,y"
            break
        assert len(set(proposed)) == len(proposed), "a position proposed twice in one round"
        assert not set(proposed) & set(labelled), "an already labelled position proposed again"
        assert all(0 <= x < 206 and 0 <= y < 34 for x, y in proposed)
        labelled += proposed
        assert len(labelled) <= 50
        new = not labels_path.exists()
        with open(labels_path, "a", newline="") as f:
            if new:
                f.write("x,y,label\n")
            f.writelines(f"{x},{y},{truth[(x, y)]}\n" for x, y in proposed)
        rounds += 1
        assert rounds <= 20, "sampling does not terminate"
    assert 0 < len(labelled) <= 50
    _, label_rows = read_csv(labels_path)
    assert sorted((int(r["x"]), int(r["y"])) for r in label_rows) == sorted(labelled)
    assert rounds >= 2  # the coarse grid, then at least one refinement

    r = cli("train", scan_path, "--labels", labels_path, "--out", "model", "--seed", "0")
    assert r.code == 0, r.err
    assert "collapsed" not in r.text
    r = cli("predict", scan_path, "--model", "model", "--out", "results")
    assert r.code == 0, r.err
    r = cli("evaluate", "results", "--truth", truth_path)
    assert r.code == 0, r.err
    assert re.search(r"accuracy: \d+\.\d\d% on 7004 positions", r.out)
    assert "confusion matrix" in r.out

    report = json.loads((tmp_path / "results" / "evaluation.json").read_text())
    assert report["n"] == 34 * 206
    assert report["accuracy"] >= 0.95, report["accuracy"]
    assert set(report["per_class_recall"]) == {"none", "vertical", "horizontal"}
    matrix = np.array(report["confusion"]["matrix"])
    assert matrix.sum() == 34 * 206
    assert np.trace(matrix) / matrix.sum() == pytest.approx(report["accuracy"])

    # Output contract: predictions.npz.
    with np.load(tmp_path / "results" / "predictions.npz", allow_pickle=False) as npz:
        labels, probs, classes = npz["labels"], npz["probabilities"], npz["classes"]
    assert labels.shape == (34, 206) and np.issubdtype(labels.dtype, np.integer)
    assert classes.dtype.kind == "U" and classes.ndim == 1
    assert set(classes.tolist()) == {"none", "vertical", "horizontal"}
    n_classes = len(classes)
    assert probs.shape == (34, 206, n_classes) and probs.dtype == np.float32
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert labels.min() >= 0 and labels.max() < n_classes
    np.testing.assert_array_equal(labels, probs.argmax(-1))

    # domain_map.png: one pixel per position, colours = probabilities mixed over none red, vertical green,
    # horizontal blue.
    import matplotlib.pyplot as plt

    image = plt.imread(tmp_path / "results" / "domain_map.png")
    assert image.shape[:2] == (34, 206)  # 206 wide, 34 high
    assert image.shape[2] in (3, 4)
    if image.shape[2] == 4:
        assert np.all(image[..., 3] == 1.0), "domain map must be opaque"
    colours = {"none": (1, 0, 0), "vertical": (0, 1, 0), "horizontal": (0, 0, 1)}
    expected = probs @ np.array([colours[c] for c in classes.tolist()], float)
    np.testing.assert_allclose(image[..., :3], expected, atol=1.5 / 255)
    assert (tmp_path / "results" / "summary.png").stat().st_size > 0
    assert plt.imread(tmp_path / "results" / "summary.png").ndim == 3

    # Model folder: safetensors weights + JSON description, no pickle.
    model_dir = tmp_path / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == ["model.json", "model.onnx", "model.safetensors",
                                                           "model_int8.onnx", "model_int8_avx512.onnx"]
    meta = json.loads((model_dir / "model.json").read_text())
    assert set(meta["classes"]) == {"none", "vertical", "horizontal"}
    assert meta["classes"] == classes.tolist()
    assert meta["arch"] == "compact"
    assert meta["detector_shape"] == [detector, detector]
    assert isinstance(meta["preprocessing"], dict) and meta["preprocessing"]
    assert isinstance(meta["metrics"], dict) and meta["metrics"]["n_train"] + meta["metrics"]["n_validation"] == len(
        labelled)
    from safetensors.numpy import load_file

    assert load_file(str(model_dir / "model.safetensors"))  # a real safetensors file

    # The default graph (int8 with AVX-512) against the exact one: the same labels wherever the exact one decides clearly.
    r = cli("predict", scan_path, "--model", "model", "--out", "exact", "--precision", "float32")
    assert r.code == 0, r.err
    import ghostmap as gm

    library = gm.predict(gm.open_scan(scan_path), gm.Model.load(model_dir), device="cpu")
    with np.load(tmp_path / "exact" / "predictions.npz", allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["labels"], library.labels)
        np.testing.assert_allclose(npz["probabilities"], library.probabilities, atol=1e-5)
    top2 = np.sort(library.probabilities, -1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 0.2
    np.testing.assert_array_equal(labels[clear], library.labels[clear])
    assert np.abs(probs - library.probabilities).max() < 0.2
    print(f"\nloop test: detector {detector}, {len(labelled)} labels in {rounds} rounds, "
          f"accuracy {report['accuracy']:.4f}, {time.perf_counter() - started:.1f} s")


# ------------------------------------------------------------------------------ 2. info


def test_info_prints_shape_dtype_size(cli, small_sim):
    r = cli("info", small_sim["scan"])
    assert r.code == 0, r.err
    assert re.search(r"scan:\s+10 rows x 30 columns \(300 patterns\)", r.out), r.out
    assert re.search(r"detector:\s+32 x 32 pixels", r.out), r.out
    assert re.search(r"dtype:\s+uint16", r.out), r.out
    nbytes = 10 * 30 * 32 * 32 * 2
    assert re.search(rf"size:\s+{nbytes / 1e3:.1f} KB uncompressed, [\d.]+ KB on disk", r.out), r.out
    assert r.err == ""


def test_info_preview_writes_png(cli, small_sim, tmp_path):
    preview = tmp_path / "p.png"
    r = cli("info", small_sim["scan"], "--preview", preview)
    assert r.code == 0, r.err
    assert preview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.pyplot as plt

    assert plt.imread(preview).ndim == 3
    assert not [p for p in tmp_path.iterdir() if p.name != "p.png"], "temporary files left behind"


def test_version(cli):
    import ghostmap

    r = cli("--version")
    assert (r.code, r.out, r.err) == (0, f"ghostmap {ghostmap.__version__}\n", "")
    proc = subprocess.run([sys.executable, "-m", "ghostmap", "--version"], capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout) == (0, r.out)
    assert "--version" in cli("--help").out


def test_python_dash_m_runs_the_cli(small_sim):
    r = run_process("info", small_sim["scan"])
    assert r.code == 0, r.err
    assert "10 rows x 30 columns" in r.out


# ---------------------------------------------------------------------------- 3. sample


def test_sample_without_labels_file(cli, small_sim, tmp_path):
    out = tmp_path / "next.csv"
    r = cli("sample", small_sim["scan"], "--labels", tmp_path / "absent.csv", "--budget", 12, "--out", out)
    assert r.code == 0, r.err
    assert out.read_text().splitlines()[0] == "x,y"
    positions = read_positions(out)
    assert 0 < len(positions) <= 12
    assert len(set(positions)) == len(positions)
    assert all(0 <= x < 30 and 0 <= y < 10 for x, y in positions)
    assert not (tmp_path / "absent.csv").exists(), "sample must not create the labels file"


def test_sample_empty_labels_file_is_ok(cli, small_sim, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("")
    r = cli("sample", small_sim["scan"], "--labels", labels, "--budget", 5, "--out", tmp_path / "n.csv")
    assert r.code == 0, r.err
    assert 0 < len(read_positions(tmp_path / "n.csv")) <= 5


@pytest.mark.parametrize("strategy", ["adaptive", "random", "active"])
def test_sample_respects_budget_and_skips_labelled(cli, small_sim, tmp_path, strategy):
    given = [(0, 0, "vertical"), (5, 3, "horizontal"), (29, 9, "none"), (12, 7, "vertical")]
    labels = write_labels_csv(tmp_path / "labels.csv", given)
    before = snapshot(labels)
    out = tmp_path / "next.csv"
    r = cli("sample", small_sim["scan"], "--labels", labels, "--budget", 10, "--strategy", strategy,
            "--out", out, "--seed", 3)
    assert r.code == 0, r.err
    positions = read_positions(out)
    assert 0 < len(positions) <= 10 - len(given)
    assert len(set(positions)) == len(positions)
    assert not set(positions) & {(x, y) for x, y, _ in given}
    assert snapshot(labels) == before, "sample must not touch the labels"


def test_sample_active_loop_with_a_model(cli, small_sim, tmp_path, monkeypatch):
    """sample --strategy active, label, train, sample --model ...: batches, budget, header-only, errors."""
    monkeypatch.setattr(ghostmap.training, "default_epochs", lambda n_train, batch_size: 3)
    truth = {(int(r["x"]), int(r["y"])): r["label"] for r in read_csv(small_sim["truth"])[1]}
    labels, out, model = tmp_path / "labels.csv", tmp_path / "next.csv", tmp_path / "model"
    r = cli("sample", small_sim["scan"], "--labels", labels, "--budget", 20, "--step", 5, "--strategy", "active",
            "--out", out)
    assert r.code == 0, r.err
    grid = read_positions(out)
    r = cli("sample", small_sim["scan"], "--labels", labels, "--budget", 20, "--step", 5, "--out", tmp_path / "a.csv")
    assert read_positions(tmp_path / "a.csv") == grid  # no model yet: the adaptive sampler's first batch
    given = [(x, y, truth[x, y]) for x, y in grid]
    write_labels_csv(labels, given)
    assert cli("train", small_sim["scan"], "--labels", labels, "--out", model).code == 0
    r = cli("sample", small_sim["scan"], "--labels", labels, "--budget", 20, "--step", 5, "--strategy", "active",
            "--model", model, "--batch", 4, "--out", out)
    assert r.code == 0, r.err
    batch = read_positions(out)
    assert len(batch) == 4 and len(set(batch)) == 4 and not set(batch) & set(grid)
    assert all(0 <= x < 30 and 0 <= y < 10 for x, y in batch)
    # ranked by the uncertainty of the map 'ghostmap predict' writes with this model
    assert cli("predict", small_sim["scan"], "--model", model, "--out", tmp_path / "map").code == 0
    with np.load(tmp_path / "map" / "predictions.npz") as written:
        x, y = propose((10, 30), read_labels(labels), 20, strategy="active", step=5, model=written["probabilities"],
                       batch=4)
    assert sorted(zip(x.tolist(), y.tolist())) == sorted(batch)
    # budget: never past it, header-only once spent
    write_labels_csv(labels, given + [(x, y, truth[x, y]) for x, y in batch])
    r = cli("sample", small_sim["scan"], "--labels", labels, "--budget", len(grid) + 6, "--strategy", "active",
            "--model", model, "--batch", 4, "--step", 5, "--out", out)
    assert r.code == 0 and len(read_positions(out)) == 2
    r = cli("sample", small_sim["scan"], "--labels", labels, "--budget", len(grid) + 4, "--strategy", "active",
            "--model", model, "--out", out)
    assert r.code == 0 and out.read_text().strip() == "x,y"
    # errors: one line, non-zero
    other = tmp_path / "other"
    _quiet_main("simulate", other, "--scan", "10x30", "--detector", "16", "--seed", "1")
    r = cli("sample", other / "scan.npy", "--labels", labels, "--budget", 40, "--strategy", "active",
            "--model", model, "--out", out)
    assert r.code != 0 and "16 x 16" in r.err and "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1
    write_labels_csv(labels, given + [(29, 9, "mystery")])
    r = cli("sample", small_sim["scan"], "--labels", labels, "--budget", 40, "--strategy", "active",
            "--model", model, "--out", out)
    assert r.code != 0 and "mystery" in r.err and "Traceback" not in r.err
    r = cli("sample", small_sim["scan"], "--labels", labels, "--budget", 40, "--model", model, "--out", out)
    assert r.code != 0 and "--strategy active" in r.err


def test_sample_random_is_reproducible(cli, small_sim, tmp_path):
    def draw(seed, name):
        out = tmp_path / name
        r = cli("sample", small_sim["scan"], "--labels", tmp_path / "none.csv", "--budget", 20,
                "--strategy", "random", "--seed", seed, "--out", out)
        assert r.code == 0, r.err
        return read_positions(out)

    a, b, c = draw(7, "a.csv"), draw(7, "b.csv"), draw(8, "c.csv")
    assert len(a) == 20 and len(set(a)) == 20
    assert a == b
    assert set(a) != set(c)


def test_sample_header_only_when_budget_spent(cli, small_sim, tmp_path):
    labels = write_labels_csv(tmp_path / "labels.csv", [(x, 0, "vertical") for x in range(6)])
    out = tmp_path / "next.csv"
    out.write_text("x,y\n1,1\n")  # an old proposal, to be replaced
    r = cli("sample", small_sim["scan"], "--labels", labels, "--budget", 6, "--out", out)
    assert r.code == 0, r.err
    assert out.read_text() == "x,y\n"
    assert "nothing left" in r.out


def test_sample_step_option(cli, small_sim, tmp_path):
    out = tmp_path / "next.csv"
    r = cli("sample", small_sim["scan"], "--labels", tmp_path / "l.csv", "--budget", 100, "--step", 5, "--out", out)
    assert r.code == 0, r.err
    # The coarse grid of step 5 on a 10 x 30 scan: x in 0,5,...,25 and y in 0,5.
    assert sorted(read_positions(out)) == sorted((x, y) for x in range(0, 30, 5) for y in (0, 5))



def test_sample_exclude_keeps_proposals_off_the_named_positions(cli, small_sim, tmp_path):
    held_out = tmp_path / "test_positions.csv"
    held_out.write_text("x,y\n" + "".join(f"{x},{y}\n" for x in range(0, 30, 5) for y in (0, 5)))
    out = tmp_path / "next.csv"
    r = cli("sample", small_sim["scan"], "--labels", tmp_path / "l.csv", "--budget", 100, "--step", 5,
            "--exclude", held_out, "--out", out)
    assert r.code == 0, r.err
    assert read_positions(out) == [], "the whole grid is excluded, and there are no labels to refine between"
    r = cli("sample", small_sim["scan"], "--labels", tmp_path / "l.csv", "--budget", 40, "--strategy", "random",
            "--exclude", held_out, "--out", out)
    assert r.code == 0, r.err
    got = read_positions(out)
    assert len(got) == 40 and not set(got) & set(read_positions(held_out))
    held_out.write_text("x,y\n31,2\n")
    r = cli("sample", small_sim["scan"], "--labels", tmp_path / "l.csv", "--budget", 40, "--exclude", held_out,
            "--out", out)
    assert r.code != 0 and "31" in r.err and "Traceback" not in r.err

# --------------------------------------------------------------------- 4. import-labels


@pytest.mark.skipif(not PAPER_YAML.is_file(), reason=f"paper labels not found at {PAPER_YAML}")
def test_import_labels_paper_yaml(cli, tmp_path):
    import yaml

    out = tmp_path / "labels.csv"
    r = cli("import-labels", PAPER_YAML, "--out", out)
    assert r.code == 0, r.err
    header, rows = read_csv(out)
    assert header == ["x", "y", "label"]
    assert out.read_text().splitlines()[0] == "x,y,label"

    expected = {}
    for entry in yaml.safe_load(PAPER_YAML.read_text())["labels"]:
        numbers = re.findall(r"\d+", entry["file"])
        x, y = int(numbers[0]), int(numbers[1])
        expected[(x, y)] = "none" if entry["label"] == "na" else entry["label"]
    got = {(int(r["x"]), int(r["y"])): r["label"] for r in rows}
    assert len(got) == len(rows), "a position written twice"
    assert got == expected
    assert "na" not in {r["label"] for r in rows}
    assert "none" in {r["label"] for r in rows}
    assert got[(0, 0)] == "vertical" and got[(30, 0)] == "vertical"  # 30_0_boxsize5.png: x = 30
    assert f"{len(expected)} labels" in r.out


# ------------------------------------------------------------------------ 5. bad input


def _copy_model(tiny, dest: Path) -> Path:
    shutil.copytree(tiny["model"], dest)
    return dest


def _labels_and_model(tmp_path, tiny, rows, header=("x", "y", "label")):
    labels = write_labels_csv(tmp_path / "labels.csv", rows, header=header)
    model = _copy_model(tiny, tmp_path / "model")
    return labels, model


def case_missing_scan(tmp_path, tiny):
    labels = write_labels_csv(tmp_path / "labels.csv", [(0, 0, "vertical")])
    (tmp_path / "next.csv").write_text("x,y\n3,4\n")
    return ["sample", tmp_path / "nope.npy", "--labels", labels, "--budget", 5, "--out", tmp_path / "next.csv"], \
        ["no such file", "nope.npy"]


def case_truncated_npy(tmp_path, tiny):
    path = random_scan(tmp_path / "scan.npy", (3, 4), 32)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    labels, model = _labels_and_model(tmp_path, tiny, two_class_rows((3, 4)))
    return ["train", path, "--labels", labels, "--out", model, "--epochs", 1], ["scan.npy", "truncated"]


def case_3d_npy(tmp_path, tiny):
    path = tmp_path / "stack.npy"
    np.save(path, np.zeros((5, 16, 16), np.uint16))
    return ["info", path], ["stack.npy", "3-D", "4-D"]


def _h5(path: Path, **datasets) -> Path:
    with h5py.File(path, "w") as f:
        for name, shape in datasets.items():
            f.create_dataset(name, data=np.ones(shape, np.uint16))
    return path


def case_hdf5_missing_dataset(tmp_path, tiny):
    path = _h5(tmp_path / "scan.h5", data=(2, 3, 16, 16))
    return ["info", path, "--dataset", "nope"], ["scan.h5", "no dataset 'nope'"]


def case_hdf5_two_4d_datasets(tmp_path, tiny):
    path = _h5(tmp_path / "scan.h5", a=(2, 3, 16, 16), b=(2, 3, 16, 16))
    return ["info", path], ["scan.h5", "2 4-D datasets", "--dataset"]


def case_labels_outside_scan(tmp_path, tiny):
    rows = two_class_rows((6, 6)) + [(6, 2, "vertical")]
    labels, model = _labels_and_model(tmp_path, tiny, rows)
    return ["train", tiny["scan"], "--labels", labels, "--out", model], ["labels.csv", "x=6, y=2", "outside the scan"]


def case_labels_missing_column(tmp_path, tiny):
    labels, model = _labels_and_model(tmp_path, tiny, [(0, 0), (1, 0)], header=("x", "y"))
    return ["train", tiny["scan"], "--labels", labels, "--out", model], ["labels.csv", "missing column 'label'"]


def case_labels_non_integer(tmp_path, tiny):
    rows = two_class_rows((6, 6))
    rows[3] = ("1.5", rows[3][1], rows[3][2])
    labels, model = _labels_and_model(tmp_path, tiny, rows)
    return ["train", tiny["scan"], "--labels", labels, "--out", model], ["labels.csv line 5", "'1.5'", "not an integer"]


def case_labels_single_class(tmp_path, tiny):
    rows = [(x, y, "vertical") for x, y, _ in two_class_rows((6, 6))]
    labels, model = _labels_and_model(tmp_path, tiny, rows)
    return ["train", tiny["scan"], "--labels", labels, "--out", model], ["single class 'vertical'"]


def case_labels_empty_file(tmp_path, tiny):
    labels = tmp_path / "labels.csv"
    labels.write_text("")
    model = _copy_model(tiny, tmp_path / "model")
    return ["train", tiny["scan"], "--labels", labels, "--out", model], ["labels.csv", "empty"]


def case_labels_header_only(tmp_path, tiny):
    labels = tmp_path / "labels.csv"
    labels.write_text("x,y,label\n")
    return ["train", tiny["scan"], "--labels", labels, "--out", tmp_path / "model"], ["labels.csv", "no labels"]


def case_sample_labels_outside_scan(tmp_path, tiny):
    labels = write_labels_csv(tmp_path / "labels.csv", [(0, 0, "vertical"), (0, 6, "horizontal")])
    (tmp_path / "next.csv").write_text("x,y\n3,4\n")
    return ["sample", tiny["scan"], "--labels", labels, "--budget", 10, "--out", tmp_path / "next.csv"], \
        ["x=0, y=6", "outside the scan"]


def _results_copy(tmp_path, tiny) -> Path:
    results = tmp_path / "results"
    shutil.copytree(tiny["results"], results)
    assert (results / "predictions.npz").is_file()
    return results


def case_detector_mismatch(tmp_path, tiny):
    model = _copy_model(tiny, tmp_path / "model")
    results = _results_copy(tmp_path, tiny)
    return ["predict", tiny["scan32"], "--model", model, "--out", results], ["64 x 64", "32 x 32"]


def case_model_without_json(tmp_path, tiny):
    model = _copy_model(tiny, tmp_path / "model")
    (model / "model.json").unlink()
    results = _results_copy(tmp_path, tiny)
    return ["predict", tiny["scan"], "--model", model, "--out", results], ["model.json", "missing"]


def case_model_tampered_weights(tmp_path, tiny):
    model = _copy_model(tiny, tmp_path / "model")
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # a weight changes, the file still parses
    weights.write_bytes(bytes(data))
    results = _results_copy(tmp_path, tiny)
    return ["predict", tiny["scan"], "--model", model, "--out", results], ["model.safetensors", "checksum"]


def case_model_dir_missing(tmp_path, tiny):
    return ["predict", tiny["scan"], "--model", tmp_path / "nomodel", "--out", tmp_path / "results"], \
        ["nomodel"]


def case_evaluate_without_predictions(tmp_path, tiny):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "domain_map.png").write_bytes(b"not really")
    truth = write_labels_csv(tmp_path / "truth.csv", [(0, 0, "vertical")])
    return ["evaluate", folder, "--truth", truth], ["no predictions", "predictions.npz"]


def case_evaluate_truth_outside_map(tmp_path, tiny):
    results = _results_copy(tmp_path, tiny)
    truth = write_labels_csv(tmp_path / "truth.csv", [(0, 0, "vertical"), (9, 1, "horizontal")])
    return ["evaluate", results, "--truth", truth], ["x=9, y=1", "outside"]


def case_simulate_malformed_scan(tmp_path, tiny):
    return ["simulate", tmp_path / "sim", "--scan", "34by206", "--detector", 32], ["--scan", "ROWSxCOLS", "34by206"]


BAD_INPUT = {name.removeprefix("case_"): fn for name, fn in globals().items() if name.startswith("case_")}


def _check_failure(r: Result, expected: list[str]) -> None:
    assert r.code == 1, f"exit code {r.code}; stdout={r.out!r} stderr={r.err!r}"
    assert "Traceback" not in r.text
    assert "internal error" not in r.text
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, f"stderr must be one line, got {r.err!r}"
    assert lines[0].startswith("error: "), lines[0]
    for part in expected:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_one_line_error_and_files_untouched(cli, tmp_path, tiny, case):
    work = tmp_path / "work"
    work.mkdir()
    args, expected = BAD_INPUT[case](work, tiny)
    time.sleep(0.01)  # so that a rewrite with identical bytes would still show in the mtime
    before = snapshot(work, tiny["root"])
    r = cli(*args)
    _check_failure(r, expected)
    after = snapshot(work, tiny["root"])
    assert sorted(after) == sorted(before), f"files added or removed: {set(after) ^ set(before)}"
    changed = [p for p in before if before[p] != after[p]]
    assert not changed, f"files changed: {changed}"
    assert not any(p.name.startswith(".") and ".tmp" in p.name for p in work.rglob("*")), "temporary file left"


@pytest.mark.parametrize("case", ["truncated_npy", "hdf5_two_4d_datasets", "detector_mismatch",
                                  "model_tampered_weights", "labels_single_class"])
def test_bad_input_in_a_real_process(tmp_path, tiny, case):
    args, expected = BAD_INPUT[case](tmp_path, tiny)
    before = snapshot(tmp_path)
    r = run_process(*args)
    _check_failure(r, expected)
    assert snapshot(tmp_path) == before


def test_predict_failure_keeps_previous_predictions(cli, tmp_path, tiny):
    """The explicit form of one bad-input case: a failed predict keeps the old results loadable."""
    args, _ = case_detector_mismatch(tmp_path, tiny)
    old = (tmp_path / "results" / "predictions.npz").read_bytes()
    r = cli(*args)
    assert r.code == 1
    assert (tmp_path / "results" / "predictions.npz").read_bytes() == old
    with np.load(tmp_path / "results" / "predictions.npz", allow_pickle=False) as npz:
        assert npz["labels"].shape == (6, 6)
    truth = write_labels_csv(tmp_path / "truth.csv", two_class_rows((6, 6))[:10])
    r = cli("evaluate", tmp_path / "results", "--truth", truth)
    assert r.code == 0, r.err
    assert "accuracy:" in r.out and "on 10 positions" in r.out


def test_evaluate_full_truth_all_walls(cli, tmp_path, tiny):
    truth = write_labels_csv(tmp_path / "truth.csv", two_class_rows((6, 6)))  # a checkerboard: walls everywhere
    r = cli("evaluate", tiny["results"], "--truth", truth, "--json", tmp_path / "report.json")
    assert r.code == 0, r.err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["n"] == 36
    # the truth covers the scan: calibration error, reliability table and diagram
    assert 0.0 <= report["expected_calibration_error"] <= 1.0 and sum(report["reliability"]["count"]) == 36
    assert "calibration error" in r.out
    figure = Path(tiny["results"]) / "reliability.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(figure) in r.out.replace("\n", "")


def test_train_failure_keeps_previous_model(cli, tmp_path, tiny):
    args, _ = case_labels_single_class(tmp_path, tiny)
    model = tmp_path / "model"
    old = {p.name: p.read_bytes() for p in model.iterdir()}
    r = cli(*args)
    assert r.code == 1
    assert {p.name: p.read_bytes() for p in model.iterdir()} == old
    r = cli("predict", tiny["scan"], "--model", model, "--out", tmp_path / "again")
    assert r.code == 0, r.err  # the old model still loads and its checksum still matches


def test_train_stem_chooses_the_first_stage_and_predict_runs_it(cli, tmp_path, tiny):
    labels = tiny["labels"]
    r = cli("train", tiny["scan"], "--labels", labels, "--out", tmp_path / "model", "--epochs", "1", "--stem", "stride")
    assert r.code == 0, r.err
    assert json.loads((tmp_path / "model" / "model.json").read_text())["stem"] == "stride"
    assert json.loads((tiny["model"] / "model.json").read_text())["stem"] == "pool"  # the default
    r = cli("predict", tiny["scan"], "--model", tmp_path / "model", "--out", tmp_path / "out")
    assert r.code == 0, r.err
    r = cli("train", tiny["scan"], "--labels", labels, "--out", tmp_path / "other", "--stem", "big")
    assert r.code == 2 and "--stem" in r.err and not (tmp_path / "other").exists()



def test_train_class_weights_is_recorded_and_a_misfit_label_is_reported(cli, tmp_path, tiny):
    r = cli("train", tiny["scan"], "--labels", tiny["labels"], "--out", tmp_path / "model", "--epochs", "1",
            "--class-weights", "sqrt")
    assert r.code == 0, r.err
    metrics = json.loads((tmp_path / "model" / "model.json").read_text())["metrics"]
    assert metrics["class_weights"] == "sqrt"
    assert json.loads((tiny["model"] / "model.json").read_text())["metrics"]["class_weights"] == "balanced"
    missed = round(metrics["n_labels"] * (1 - metrics["train_accuracy_all_labels"]))
    said = re.search(r"calls (\d+) of the (\d+) labelled patterns another class", r.out.replace("\n", " "))
    assert (int(said.group(1)), int(said.group(2))) == (missed, metrics["n_labels"]) if missed else said is None
    r = cli("train", tiny["scan"], "--labels", tiny["labels"], "--out", tmp_path / "other", "--class-weights", "inverse")
    assert r.code == 2 and "--class-weights" in r.err and not (tmp_path / "other").exists()

def test_train_members_make_an_ensemble_on_every_label_unless_folds_are_asked_for(cli, tmp_path, tiny):
    r = cli("train", tiny["scan"], "--labels", tiny["labels"], "--out", tmp_path / "all", "--epochs", "1",
            "--members", "2")
    assert r.code == 0, r.err
    metrics = json.loads((tmp_path / "all" / "model.json").read_text())["metrics"]
    assert (metrics["members"], metrics["ensemble"], metrics["class_weights"]) == (2, "all", "balanced")
    assert "each trained on every label" in r.out and "calibrated on the scan" in r.out
    r = cli("train", tiny["scan"], "--labels", tiny["labels"], "--out", tmp_path / "folds", "--epochs", "1",
            "--members", "2", "--ensemble", "folds")
    assert r.code == 0, r.err
    assert "cross-validated accuracy" in r.out
    assert json.loads((tmp_path / "folds" / "model.json").read_text())["metrics"]["cross_validated"] > 0
    r = cli("train", tiny["scan"], "--labels", tiny["labels"], "--out", tmp_path / "other", "--members", "2",
            "--ensemble", "bagging")
    assert r.code == 2 and "--ensemble" in r.err and not (tmp_path / "other").exists()


def test_simulate_malformed_scan_writes_nothing(cli, tmp_path):
    r = cli("simulate", tmp_path / "sim", "--scan", "34by206")
    assert r.code == 1
    assert not (tmp_path / "sim").exists()


# ----------------------------------------------------------------- predict on a tiny model


def test_predict_outputs_on_tiny_model(tiny):
    with np.load(tiny["results"] / "predictions.npz", allow_pickle=False) as npz:
        assert npz["labels"].shape == (6, 6) and npz["labels"].dtype.kind == "i"
        assert npz["probabilities"].shape == (6, 6, 2) and npz["probabilities"].dtype == np.float32
        assert npz["classes"].tolist() == ["vertical", "horizontal"]  # the paper's order, not the labels'
    meta = json.loads((tiny["model"] / "model.json").read_text())
    assert meta["detector_shape"] == [64, 64] and meta["metrics"]["epochs"] == 1


def test_predict_command_reading_ahead_gives_the_library_prediction(cli, tmp_path, tiny, monkeypatch):
    """The command starts reading and binning before torch loads; with torch the result is the library's,
    bit for bit, and with ONNX Runtime (the default on the CPU) the same labels and probabilities to 1e-5."""
    import torch

    import ghostmap.cli
    from ghostmap import Model, Preprocessing, predict
    from ghostmap.model import build_network

    torch.manual_seed(0)
    prep = Preprocessing(bin=2, pool=3, bad_pixels=[(0, 1), (7, 7), (7, 8)])
    model = Model(build_network("compact", 2, (32, 32)).eval(), ("vertical", "horizontal"), "compact", prep, (64, 64))
    model.save(tmp_path / "model")
    expected = predict(tiny["scan"], model, device="cpu")
    started = []
    start_reading = ghostmap.cli._start_reading
    monkeypatch.setattr(ghostmap.cli, "_start_reading", lambda *a: started.append(start_reading(*a)) or started[-1])
    for readahead, engine in (("1", "torch"), ("300", "torch"), ("1", "auto"), ("300", "onnx")):
        out = tmp_path / f"{readahead}-{engine}"
        r = cli("predict", tiny["scan"], "--model", tmp_path / "model", "--out", out, "--readahead", readahead,
                "--engine", engine)
        assert r.code == 0, r.text
        assert started[-1] is not None and started[-1].reduction == prep.count_reduction()
        with np.load(out / "predictions.npz", allow_pickle=False) as npz:
            np.testing.assert_array_equal(npz["labels"], expected.labels)
            np.testing.assert_array_equal(npz["bright_field"], expected.bright_field)
            if engine == "torch":
                np.testing.assert_array_equal(npz["probabilities"], expected.probabilities)
            else:
                np.testing.assert_allclose(npz["probabilities"], expected.probabilities, atol=1e-5)
    r = cli("predict", tiny["scan"], "--model", tiny["model"], "--out", tmp_path / "0", "--readahead", "0")
    assert r.code == 2 and "readahead" in r.err


def modules_imported_by(*args) -> set[str]:
    """Run ``ghostmap ARGS`` in a fresh Python process (it must succeed); the top-level modules it imported."""
    script = ("import sys\n"
              "from ghostmap.cli import main\n"
              "try:\n"
              f"    main({[str(a) for a in args]!r})\n"
              "except SystemExit as exc:\n"
              "    assert not exc.code, exc.code\n"
              "print(' '.join(sorted({name.split('.')[0] for name in sys.modules})))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.strip().splitlines()[-1].split())


def test_predict_on_the_cpu_never_imports_torch(tmp_path, tiny):
    """The default engine on the CPU: ONNX Runtime, with reading, binning and inputs in NumPy;
    and no HDF5 library for a scan that is not HDF5 (h5py and its filters: 45 ms of start-up), nor
    pydantic (which typer 0.29 imports on every run: 0.13 s)."""
    imported = modules_imported_by("predict", tiny["scan"], "--model", tiny["model"], "--out", tmp_path / "out",
                                   "--device", "cpu")
    assert str(tiny["scan"]).endswith(".npy")
    assert not imported & {"torch", "h5py", "pydantic"}
    with np.load(tmp_path / "out" / "predictions.npz", allow_pickle=False) as got, \
            np.load(tiny["results"] / "predictions.npz", allow_pickle=False) as before:
        np.testing.assert_array_equal(got["labels"], before["labels"])


def test_active_sampling_from_a_model_folder_on_the_cpu_never_imports_torch(tmp_path, tiny):
    """sample --strategy active --model classifies the scan the way predict does (ONNX Runtime), without torch."""
    out, labels = tmp_path / "next.csv", write_labels_csv(tmp_path / "labels.csv", two_class_rows((6, 6))[:12])
    imported = modules_imported_by("sample", tiny["scan"], "--labels", labels, "--budget", 40, "--strategy", "active",
                                   "--model", tiny["model"], "--batch", 3, "--out", out)
    assert "torch" not in imported
    with np.load(tiny["results"] / "predictions.npz") as written:  # predict's map ranks the positions
        x, y = propose((6, 6), read_labels(labels), 40, strategy="active", model=written["probabilities"],
                       batch=3)
    assert len(x) == 3 and read_positions(out) == sorted(zip(x.tolist(), y.tolist()), key=lambda p: (p[1], p[0]))


def test_predict_engine_errors(cli, tmp_path, tiny):
    import shutil

    r = cli("predict", tiny["scan"], "--model", tiny["model"], "--out", tmp_path / "x", "--engine", "tensorrt")
    assert r.code == 2 and "--engine" in r.err
    old = tmp_path / "old-model"  # a model folder saved before model.onnx existed
    shutil.copytree(tiny["model"], old)
    (old / "model.onnx").unlink()
    for graph in ("model_int8.onnx", "model_int8_avx512.onnx"):
        (old / graph).unlink(missing_ok=True)
    r = cli("predict", tiny["scan"], "--model", old, "--out", tmp_path / "y", "--engine", "onnx")
    assert r.code == 1 and "model.onnx" in r.err and len(r.err.strip().splitlines()) == 1
    float_only = tmp_path / "float-model"  # a model folder saved before model_int8.onnx existed
    shutil.copytree(tiny["model"], float_only)
    for graph in ("model_int8.onnx", "model_int8_avx512.onnx"):
        (float_only / graph).unlink(missing_ok=True)
    r = cli("predict", tiny["scan"], "--model", float_only, "--out", tmp_path / "v", "--precision", "int8")
    assert r.code == 1 and "model_int8.onnx" in r.err and len(r.err.strip().splitlines()) == 1
    r = cli("predict", tiny["scan"], "--model", float_only, "--out", tmp_path / "u")  # auto: the float32 graph
    assert r.code == 0 and (tmp_path / "u" / "predictions.npz").exists()
    r = cli("predict", tiny["scan"], "--model", tiny["model"], "--out", tmp_path / "t", "--precision", "int4")
    assert r.code == 2 and "--precision" in r.err
    r = cli("predict", tiny["scan"], "--model", tiny["model"], "--out", tmp_path / "s", "--precision", "int8",
            "--engine", "torch")
    assert r.code == 2 and "--precision" in r.err
    r = cli("predict", tiny["scan"], "--model", old, "--out", tmp_path / "z")  # auto: torch does it
    assert r.code == 0 and (tmp_path / "z" / "predictions.npz").exists()
    r = cli("predict", tiny["scan"], "--model", tiny["model"], "--out", tmp_path / "w", "--engine", "onnx",
            "--compile", "bf16")
    assert r.code == 1 and "--compile" in r.err


def test_domain_map_png_is_rgb(tiny):
    head = (tiny["results"] / "domain_map.png").read_bytes()[:32]
    assert head[12:16] == b"IHDR"
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    assert (width, height) == (6, 6)
    assert head[25] == 2, f"PNG colour type {head[25]} (2 = RGB, 6 = RGBA)"


def test_outputs_follow_the_umask(small_sim):
    umask = os.umask(0)
    os.umask(umask)
    if umask & 0o066 == 0o066:
        pytest.skip("this umask gives 0600 anyway")
    mode = stat.S_IMODE(small_sim["truth"].stat().st_mode)
    assert mode == 0o666 & ~umask, oct(mode)


def test_single_class_error_names_the_labels_file(cli, tmp_path, tiny):
    labels = write_labels_csv(tmp_path / "mine.csv", [(x, 0, "vertical") for x in range(6)])
    r = cli("train", tiny["scan"], "--labels", labels, "--out", tmp_path / "model")
    assert r.code == 1
    assert "mine.csv" in r.err


# --------------------------------------------------------------------- usage errors


def test_help_exits_zero(cli):
    r = cli("--help")
    assert r.code == 0
    for command in ("info", "simulate", "sample", "import-labels", "train", "predict", "evaluate", "demo"):
        assert command in r.out


@pytest.mark.parametrize(
    "args, word",
    [
        (("sample", "scan.npy", "--labels", "l.csv", "--out", "n.csv"), "--budget"),
        (("sample", "scan.npy", "--labels", "l.csv", "--out", "n.csv", "--budget", "abc"), "--budget"),
        (("frobnicate",), "frobnicate"),
    ],
)
def test_usage_errors_are_reported_not_internal(cli, args, word):
    r = cli(*args)
    assert r.code == 2, r.err
    assert "internal error" not in r.text and "Traceback" not in r.text
    assert word in r.err
    assert len(r.err.strip().splitlines()) == 1, r.err


def test_no_arguments_shows_help_without_internal_error(cli):
    r = cli()
    assert "Usage" in r.text
    assert "internal error" not in r.text


# ----------------------------------------------------------------------------- 6. demo


def test_demo(cli, tmp_path, monkeypatch):
    # The demo has no --epochs; train far fewer epochs than the default so the test stays quick.
    # Accuracy is not asserted here.
    monkeypatch.setattr(ghostmap.training, "default_epochs", lambda n_train, batch_size: 4)
    out = tmp_path / "demo"
    r = cli("demo", "--out", out, "--scan", "20x60", "--detector", 64, "--budget", 30)
    assert r.code == 0, r.err
    assert re.search(r"accuracy: \d+\.\d\d% on 1200 positions", r.out), r.out
    assert plt_image_shape(out / "results" / "domain_map.png")[:2] == (20, 60)
    header, rows = read_csv(out / "labels.csv")
    assert header == ["x", "y", "label"]
    assert 0 < len(rows) <= 30
    meta = json.loads((out / "model" / "model.json").read_text())
    assert meta["detector_shape"] == [64, 64]
    assert (out / "model" / "model.safetensors").is_file()
    report = json.loads((out / "results" / "evaluation.json").read_text())
    assert report["n"] == 20 * 60 and 0.0 <= report["accuracy"] <= 1.0


def plt_image_shape(path: Path) -> tuple[int, ...]:
    import matplotlib.pyplot as plt

    return plt.imread(path).shape


def test_the_outputs_import_waits_until_the_rows_are_read():
    """predict's progress starts importing matplotlib only once ``ready()`` (all rows read) or at
    the last block: beside the reading thread the import would hold it up."""
    from ghostmap.cli import _ProgressThenImport

    class Bar:
        def __init__(self):
            self.seen = []

        def update(self, task, completed):
            self.seen.append(completed)

    read_all = [False]
    bar = Bar()
    progress = _ProgressThenImport(bar, 0, ready=lambda: read_all[0])
    progress(10, 40)
    progress(20, 40)
    assert not progress.started and bar.seen == [10, 20]
    read_all[0] = True
    progress(30, 40)
    assert progress.started
    last_only = _ProgressThenImport(Bar(), 0, ready=lambda: False)
    last_only(39, 40)
    assert not last_only.started
    last_only(40, 40)
    assert last_only.started


def test_train_gives_the_own_pattern_unless_told_not_to(cli, tiny, tmp_path):
    description = json.loads((tiny["model"] / "model.json").read_text())
    assert description["preprocessing"]["own_pattern"] is True  # the default: pooled and own pattern, two channels
    r = cli("train", tiny["scan"], "--labels", tiny["labels"], "--out", tmp_path / "one", "--epochs", "1",
            "--no-own-pattern")
    assert r.code == 0, r.err
    assert json.loads((tmp_path / "one" / "model.json").read_text())["preprocessing"]["own_pattern"] is False
    r = cli("predict", tiny["scan"], "--model", tmp_path / "one", "--out", tmp_path / "results")
    assert r.code == 0, r.err
