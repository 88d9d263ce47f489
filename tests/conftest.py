"""Fixtures shared by several test modules."""

from pathlib import Path

import numpy as np
import pytest

from ghostmap.labels import labels_from_truth
from ghostmap.preprocessing import fit_preprocessing
from ghostmap.reading import as_scan
from ghostmap.simulate import moving_domain_maps, simulate_scan
from ghostmap.training import TrainingOptions, train

# the paper authors' hand labels, in the shared folder beside the checkout (never copied into it)
PAPER_LABELS = Path(__file__).resolve().parents[2] / "shared" / "paper-labels"
needs_paper = pytest.mark.skipif(
    not PAPER_LABELS.is_dir(), reason=f"the paper authors' label files are not at {PAPER_LABELS}"
)

SERIES_SHIFT = 3  # columns the walls move per step in the simulated series
SERIES_STEPS = 4


@pytest.fixture(scope="session")
def series(tmp_path_factory):
    """Four scans of a sample whose walls move SERIES_SHIFT columns per step, and a model trained on the first."""
    root = tmp_path_factory.mktemp("series")
    maps = moving_domain_maps((12, 48), SERIES_STEPS, SERIES_SHIFT, stripe_period=24)
    paths, scans = [], []
    for t, truth in enumerate(maps):
        data, _ = simulate_scan(truth=truth, detector=32, seed=1, noise_seed=1 + t, dose=4)
        paths.append(root / f"scan_{t}.npy")
        np.save(paths[-1], data)
        scans.append(data)
    rng = np.random.default_rng(0)
    ys, xs = np.divmod(rng.choice(maps[0].size, 200, replace=False), maps[0].shape[1])
    model = train(scans[0], labels_from_truth(maps[0], xs, ys), TrainingOptions(seed=0, epochs=25),
                  preprocessing=fit_preprocessing(as_scan(scans[0]), bin=1))
    model_dir = root / "model"
    model.save(model_dir)
    return {"root": root, "maps": maps, "paths": paths, "scans": scans, "model": model, "model_dir": model_dir}
