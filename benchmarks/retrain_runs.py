#!/usr/bin/env python
"""Retrain the final model of kept ``table1.py`` runs with other training options, on the same labels.

Each kept run (``benchmarks/data/table1_runs/*.npz``) holds the labels its loop gathered and which
of them were trained on. This trains again on exactly those labels with ``TrainingOptions(seed=the
run's seed, **OPTIONS)``, classifies the run's scan and prints the test, all-position and wall
accuracy, the calibration error and the labels the model calls another class, beside the kept run's
figures. It isolates the training recipe from the sampling: the labels do not change.
``--train-seeds 0,1,2,3,4`` trains each run's labels once per training seed instead, and prints
the median and how far the worst seed falls below it (issue 12's stability target).

Run it (from the repository root)::

    .venv/bin/python benchmarks/retrain_runs.py 'benchmarks/data/table1_runs/*_s2_*r14o_active50*pool*' \\
        '{"class_weights": "sqrt"}' --threads 1
    .venv/bin/python benchmarks/retrain_runs.py 'benchmarks/data/table1_runs/*_s1_*r14o_active50*pool*' \\
        '{"members": 4}' --threads 1 --keep /tmp/ens4      # keep the probabilities for calibration_check.py
    .venv/bin/python benchmarks/retrain_runs.py 'benchmarks/data/table1_runs/*_s1_*r14o_active50*pool*seed0.npz' \\
        '{"members": 4, "class_weights": "none"}' --threads 1 --train-seeds 0,1,2,3,4
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
    p.add_argument("--keep", type=Path, default=None,
                   help="folder to keep each retrained run's probabilities in (NAME_trainS.npz for another training seed)")
    p.add_argument("--train-seeds", default=None,
                   help="comma-separated training seeds to train each run's labels with (default: the run's own seed)")
    args = p.parse_args(argv)
    import torch

    from ghostmap.evaluation import wall_mask

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
        run_seed = int(path.stem.rsplit("seed", 1)[1])
        seeds = [int(s) for s in args.train_seeds.split(",")] if args.train_seeds else [run_seed]
        tests = []
        for seed in seeds:
            name = path.name if seed == run_seed else f"{path.stem}_train{seed}.npz"
            tests.append(retrain(path, run, seed, options, truth, test, walls, args.keep and args.keep / name))
        if len(seeds) > 1:
            median = float(np.median(tests))
            print(f"{path.stem}: training seeds {', '.join(map(str, seeds))}: test "
                  f"{' / '.join(f'{t:.1f}' for t in tests)}%, median {median:.2f}%, worst {min(tests):.1f}% "
                  f"({median - min(tests):.2f} below the median)", flush=True)
    return 0


def retrain(path: Path, run: dict, seed: int, options: dict, truth, test, walls, keep: Path | None) -> float:
    """Train ``run``'s labels again with training seed ``seed``, print the scores, keep the probabilities
    in the file ``keep`` if given; the test accuracy in %."""
    from ghostmap.evaluation import expected_calibration_error
    from ghostmap.labels import Labels
    from ghostmap.prediction import predict
    from ghostmap.reading import open_scan
    from ghostmap.training import TrainingOptions, train

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
    print(f"{path.stem}, training seed {seed}: test {t:.1f}% (kept {t0:.1f}), all {a:.2f}% ({a0:.2f}), "
          f"walls {w:.1f}% ({w0:.1f}), calibration error {e:.4f} ({e0:.4f}), labels called otherwise "
          f"{m} ({m0}) of {len(labels)}, {seconds:.0f} s", flush=True)
    if keep:
        keep.parent.mkdir(parents=True, exist_ok=True)
        np.savez(keep, x=run["x"], y=run["y"], label=run["label"], trained=kept,
                 probabilities=result.probabilities, classes=np.array(result.classes))
    return t


if __name__ == "__main__":
    sys.exit(main())
