"""The whole loop on a simulated scan, the ground truth standing in for the person labelling.

simulate -> (sample -> label from truth)* -> train -> predict -> evaluate. Every file it
writes is an ordinary ghostmap file, so a user can repeat any step with the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from .atomic import write_text
from .evaluation import evaluate, format_report
from .labels import Labels, labels_from_truth, read_labels, write_labels
from .model import Model
from .outputs import save_labels_figure, save_prediction
from .prediction import predict
from .reading import open_scan
from .sampling import propose
from .simulate import write_simulated_scan, write_truth_csv
from .training import TrainingOptions, train


def label_loop(truth: np.ndarray, budget: int, strategy: str = "adaptive", step: int | None = None,
               seed: int = 0, labels: Labels | None = None, exclude=None) -> tuple[Labels, int]:
    """Sample and label from ``truth`` until the budget is spent or nothing is left; return labels and rounds.

    ``exclude``: positions never proposed (:func:`ghostmap.sampling.propose`), such as a test set."""
    labels = labels if labels is not None else labels_from_truth(truth, np.array([], int), np.array([], int))
    rounds = 0
    while True:
        x, y = propose(truth.shape, labels, budget, strategy=strategy, step=step, seed=seed + rounds, exclude=exclude)
        if len(x) == 0:
            return labels, rounds
        labels = labels.merged(labels_from_truth(truth, x, y))
        rounds += 1


def run_demo(out_dir: str | Path, budget: int = 50, scan_shape: tuple[int, int] = (34, 206), detector: int = 128,
             seed: int = 0, arch: str = "compact", say: Callable[[str], None] = print) -> dict:
    """Run the loop into ``out_dir``; return the evaluation report and a printable summary."""
    out_dir = Path(out_dir)
    scan_path, truth_path = out_dir / "scan.npy", out_dir / "truth.csv"
    say("simulating a scan")
    truth = write_simulated_scan(scan_path, scan_shape, detector, seed=seed)
    write_truth_csv(truth_path, truth)
    say("sampling and labelling from the truth")
    labels, rounds = label_loop(truth, budget, seed=seed)
    write_labels(out_dir / "labels.csv", labels)
    with open_scan(scan_path) as scan:
        say(f"training on {len(labels)} labels")
        model = train(scan, labels, TrainingOptions(arch=arch, seed=seed),
                      progress=lambda e, n, s: say(f"training epoch {e}/{n}, loss {s['loss']:.3f}"))
        model.save(out_dir / "model")
        say("classifying every pattern")
        result = predict(scan, Model.load(out_dir / "model"))
    paths = save_prediction(out_dir / "results", result, title="ghostmap demo (simulated scan)")
    save_labels_figure(out_dir / "results" / "labels.png", labels, truth)
    report = evaluate(result.label_names(), read_labels(truth_path))
    write_text(out_dir / "results" / "evaluation.json", json.dumps(report, indent=2) + "\n")
    summary = "\n".join([
        f"ghostmap demo: {scan_shape[0]} x {scan_shape[1]} simulated scan, {len(labels)} labels "
        f"(adaptive sampling, {rounds} rounds), {arch} network",
        format_report(report),
        f"domain map: {paths['domain_map']}",
        f"figure:     {paths['summary']}",
        f"labels:     {out_dir / 'labels.csv'} (map: {out_dir / 'results' / 'labels.png'})",
    ])
    return {"report": report, "summary": summary, "labels": labels, "paths": paths}
