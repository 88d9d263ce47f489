#!/usr/bin/env python
"""Retrain the final model of kept ``table1.py`` runs with other training options, on the same labels.

Each kept run (``benchmarks/data/table1_runs/*.npz``) holds the labels its loop gathered and which
of them were trained on. This trains again on exactly those labels with ``TrainingOptions(seed=the
run's seed, **OPTIONS)``, classifies the run's scan and prints the test, all-position and wall
accuracy, the calibration error and the labels the model calls another class, beside the kept run's
figures. It isolates the training recipe from the sampling: the labels do not change.

Run it (from the repository root)::

    .venv/bin/python benchmarks/retrain_runs.py 'benchmarks/data/table1_runs/*_s2_*r14o_active50*pool*' \\
        '{"class_weights": "sqrt"}' --threads 1
    .venv/bin/python benchmarks/retrain_runs.py 'benchmarks/data/table1_runs/*_s1_*r14o_active50*pool*' \\
        '{"members": 4}' --threads 1 --keep /tmp/ens4      # keep the probabilities for calibration_check.py
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import table1  # noqa: E402  - the truth of the runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pattern", help="glob of kept runs (.npz)")
    p.add_argument("options", help="TrainingOptions fields as JSON, e.g. '{\"class_weights\": \"sqrt\"}'")
    p.add_argument("--threads", type=int, default=None, help="torch threads (1 on a shared machine)")
    p.add_argument("--keep", type=Path, default=None, help="folder to keep each retrained run's probabilities in")
    args = p.parse_args(argv)
    import torch

    from ghostmap.evaluation import expected_calibration_error, wall_mask
    from ghostmap.labels import Labels
    from ghostmap.prediction import predict
    from ghostmap.reading import open_scan
    from ghostmap.training import TrainingOptions, train

    if args.threads:
        torch.set_num_threads(args.threads)
    options = json.loads(args.options)
    truth, test, _ = table1.paper_truth(table1.PAPER_LABELS)
    walls = wall_mask(truth)
    paths = sorted(glob.glob(args.pattern))
    if not paths:
        sys.exit("retrain_runs: no run matches")
    for path in map(Path, paths):
        run = dict(np.load(path, allow_pickle=False))
        seed = int(path.stem.rsplit("seed", 1)[1])
        scan_path = path.parent.parent / (path.name.split("_compact")[0] + ".npy")
        kept = run["trained"]
        labels = Labels(run["x"][kept], run["y"][kept], run["label"][kept])
        start = time.perf_counter()
        with open_scan(scan_path) as scan:
            result = predict(scan, train(scan, labels, TrainingOptions(seed=seed, **options)))
        seconds = time.perf_counter() - start
        rows = []
        for probabilities, classes in ((result.probabilities, result.classes), (run["probabilities"], run["classes"])):
            names = table1.names_of({"probabilities": probabilities, "classes": np.asarray(classes)})
            hits = table1.score(names, truth, test, walls)
            rows.append((100 * hits["test"], 100 * hits["all"], 100 * hits["wall"],
                         expected_calibration_error(probabilities.max(-1), names == truth)[0],
                         int((names[labels.y, labels.x] != labels.label).sum())))
        (t, a, w, e, m), (t0, a0, w0, e0, m0) = rows
        print(f"{path.stem}: test {t:.1f}% (kept {t0:.1f}), all {a:.2f}% ({a0:.2f}), walls {w:.1f}% ({w0:.1f}), "
              f"calibration error {e:.4f} ({e0:.4f}), labels called otherwise {m} ({m0}) of {len(labels)}, "
              f"{seconds:.0f} s", flush=True)
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            np.savez(args.keep / path.name, x=run["x"], y=run["y"], label=run["label"], trained=kept,
                     probabilities=result.probabilities, classes=np.array(result.classes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
