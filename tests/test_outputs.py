"""outputs.py: the files predict writes, and no global side effects on the caller's matplotlib."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from ghostmap.labels import Labels
from ghostmap.outputs import domain_rgb, load_prediction, save_labels_figure, save_prediction
from ghostmap.prediction import Prediction


def _prediction(rows=4, cols=6) -> Prediction:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=(rows, cols)).astype(np.float32)
    return Prediction(probs.argmax(-1).astype(np.int64), probs, ("none", "vertical", "horizontal"),
                      rng.random((rows, cols)).astype(np.float32))


def test_save_and_load_round_trip(tmp_path):
    result = _prediction()
    paths = save_prediction(tmp_path / "out", result, title="t")
    assert {p.name for p in paths.values()} == {"predictions.npz", "domain_map.png", "summary.png"}
    back = load_prediction(tmp_path / "out")
    np.testing.assert_array_equal(back.labels, result.labels)
    np.testing.assert_array_equal(back.probabilities, result.probabilities)
    assert back.classes == result.classes
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths.values())


def test_domain_rgb_mixes_the_paper_colours():
    rgb = domain_rgb(np.array([[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.5, 0, 0.5]]]),
                     ("none", "vertical", "horizontal"))
    assert rgb.dtype == np.uint8
    assert rgb[0].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 0, 128]]


def test_labels_figure(tmp_path):
    path = save_labels_figure(tmp_path / "labels.png", Labels([0, 3], [1, 2], ["none", "vertical"]), scan_shape=(4, 6))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


USER_SESSION = r"""
import matplotlib
matplotlib.use("svg")                    # the user's own backend choice
import matplotlib.pyplot as plt
fig = plt.figure()                       # the user's own open figure
fig.gca().plot([1, 2, 3])
import numpy as np
import ghostmap
from ghostmap.labels import Labels
from ghostmap.outputs import save_labels_figure, save_prediction
from ghostmap.prediction import Prediction
from ghostmap.series import save_fractions_figure

out = sys.argv[1]
probs = np.full((3, 5, 3), 1 / 3, np.float32)
probs[..., 0] += 0.1
result = Prediction(probs.argmax(-1), probs, ("none", "vertical", "horizontal"), np.ones((3, 5), np.float32))
save_prediction(out, result, title="x")
save_labels_figure(out + "/labels.png", Labels([0], [1], ["none"]), scan_shape=(3, 5))
save_fractions_figure(out + "/fractions.png", {
    "classes": np.array(["none", "vertical"]), "sources": np.array(["a", "b"]),
    "fractions": np.array([[0.5, 0.5], [0.4, 0.6]]), "labels": np.zeros((2, 3, 5), int),
    "changed": np.array([0, 2]), "wall_shift": np.array([np.nan, 1.0])})
print(matplotlib.get_backend(), plt.get_fignums() == [fig.number], plt.fignum_exists(fig.number))
"""


def test_no_global_matplotlib_side_effects(tmp_path):
    """Importing ghostmap and saving results keeps the user's backend and open figures."""
    code = "import sys\n" + USER_SESSION
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["svg", "True", "True"]
    assert (tmp_path / "summary.png").stat().st_size > 0 and (tmp_path / "fractions.png").stat().st_size > 0
