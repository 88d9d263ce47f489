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


def moment_temperature(log_p: torch.Tensor, stand_in: np.ndarray) -> float:
    """The temperature whose mean confidence equals the share of positions that agree with the stand-in."""
    from scipy import optimize

    flat = log_p.reshape(-1, log_p.shape[-1])
    agree = float((flat.argmax(-1).numpy() == stand_in.ravel()).mean())

    def gap(log_t: float) -> float:
        return float(torch.softmax(flat / np.exp(log_t), -1).max(-1).values.mean()) - agree

    try:
        return float(np.exp(optimize.brentq(gap, -5.0, 4.0)))
    except ValueError:  # no temperature reaches it
        return 1.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("patterns", nargs="+", help="globs of kept runs (.npz)")
    p.add_argument("--variants", action="store_true",
                   help="also score label-free alternatives, grouped by run kind (session 9's search)")
    args = p.parse_args(argv)
    from ghostmap.ensemble import fit_temperature, neighbour_classes, overruled_classes, scan_temperature
    from ghostmap.evaluation import expected_calibration_error

    truth, _, _ = table1.paper_truth(table1.PAPER_LABELS)
    paths = sorted({q for pattern in args.patterns for q in glob.glob(pattern)})
    if not paths:
        sys.exit("calibration_check: no run matches")
    variants = {"today's": None, "moment matching": None, "overruled by 6 of 8": None, "hindsight": None}
    if not args.variants:
        print("| run | right | calibration error as run | today's calibration | best temperature in hindsight |")
        print("|---|---|---|---|---|")
    columns, scored = [], {}
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
        if args.variants:
            n = p.shape[-1]
            stand_in = neighbour_classes(p.argmax(-1), n, 1, True)
            six = overruled_classes(p.argmax(-1), n, 6)
            kind = Path(path).stem.split(f"{table1.RECIPE}_")[-1].split("_")[0] + " " + Path(path).stem.split("_")[3]
            errors = (row[2], error(moment_temperature(log_p, stand_in)),
                      error(fit_temperature(log_p.reshape(-1, n), torch.as_tensor(six.reshape(-1)))), row[3])
            scored.setdefault(kind, []).append(errors)
        else:
            print(f"| {Path(path).stem} | {100 * row[0]:.1f}% | {row[1]:.4f} | {row[2]:.4f} | {row[3]:.4f} |")
    if args.variants:
        print("| runs | " + " | ".join(variants) + " |")
        print("|---" * (len(variants) + 1) + "|")
        for kind, errors in sorted(scored.items()):
            e = np.array(errors)
            print(f"| {kind} ({len(e)}) | " + " | ".join(f"{m:.4f} ({w:.4f})" for m, w in zip(e.mean(0), e.max(0))) + " |")
        e = np.concatenate(list(scored.values()))
        print(f"| all {len(e)}: mean (max), runs above 0.01 | " + " | ".join(
            f"{m:.4f} ({w:.4f}), {k}" for m, w, k in zip(e.mean(0), e.max(0), (e > 0.01).sum(0))) + " |")
        return 0
    mean, worst = np.mean(columns, 0), np.max(columns, 0)
    print(f"| mean (max) of {len(paths)} | {100 * mean[0]:.1f}% | {mean[1]:.4f} ({worst[1]:.4f}) | "
          f"{mean[2]:.4f} ({worst[2]:.4f}) | {mean[3]:.4f} ({worst[3]:.4f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
