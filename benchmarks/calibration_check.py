#!/usr/bin/env python
"""Calibration error of kept ``table1.py`` runs: as they were run, and with today's calibration.

Each run in ``benchmarks/data/table1_runs`` keeps the probabilities its model wrote. Today's
calibration (:func:`ghostmap.ensemble.scan_temperature` with its defaults: a temperature fitted,
unshrunk, to the 3 x 3 majority filter of the map) gives the same result whatever temperature
those probabilities were made at, since refitting a temperature to softened or sharpened logits
undoes the difference; so it can be applied to runs made with an earlier calibration. The best
temperature in hindsight (fitted to the truth) shows how far any single temperature could go.
Classes never change.

Run it (from the repository root)::

    .venv/bin/python benchmarks/calibration_check.py 'benchmarks/data/table1_runs/*_s1_*r14o_active50*'
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import table1  # noqa: E402  - the truth of the runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("patterns", nargs="+", help="globs of kept runs (.npz)")
    args = p.parse_args(argv)
    from ghostmap.ensemble import expected_calibration_error, fit_temperature, scan_temperature

    truth, _, _ = table1.paper_truth(table1.PAPER_LABELS)
    paths = sorted({q for pattern in args.patterns for q in glob.glob(pattern)})
    if not paths:
        sys.exit("calibration_check: no run matches")
    print("| run | right | calibration error as run | today's calibration | best temperature in hindsight |")
    print("|---|---|---|---|---|")
    columns = []
    for path in paths:
        with np.load(path, allow_pickle=False) as run:
            p, classes = run["probabilities"].astype(np.float64), [str(c) for c in run["classes"]]
        right = np.array(classes)[p.argmax(-1)] == truth
        log_p = torch.log(torch.as_tensor(p).clamp_min(1e-30))

        def error(t: float, log_p=log_p, right=right) -> float:
            return expected_calibration_error(torch.softmax(log_p / t, -1).numpy().max(-1), right)[0]

        best = fit_temperature(log_p.reshape(-1, p.shape[-1]),
                               torch.as_tensor(np.vectorize(classes.index)(truth).ravel()))
        row = (right.mean(), error(1.0), error(scan_temperature(p)), error(best))
        columns.append(row)
        print(f"| {Path(path).stem} | {100 * row[0]:.1f}% | {row[1]:.4f} | {row[2]:.4f} | {row[3]:.4f} |")
    mean, worst = np.mean(columns, 0), np.max(columns, 0)
    print(f"| mean (max) of {len(paths)} | {100 * mean[0]:.1f}% | {mean[1]:.4f} ({worst[1]:.4f}) | "
          f"{mean[2]:.4f} ({worst[2]:.4f}) | {mean[3]:.4f} ({worst[3]:.4f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
