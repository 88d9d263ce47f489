"""Score a domain map against ground-truth labels.

Accuracy, per-class recall and the confusion matrix over the labelled positions. When the
truth covers every position, accuracy on domain-wall positions is reported too: positions
whose true class is ``none`` or that lie within 2 positions of a change of class, and, given
the class probabilities, the expected calibration error with its reliability table (does a
position predicted with probability p turn out right a fraction p of the time?).
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.ndimage as ndi

from .errors import GhostmapError
from .labels import Labels, check_in_scan, class_order

logger = logging.getLogger(__name__)

#: Confidence bins of the reliability table.
CALIBRATION_BINS = 15


def expected_calibration_error(probabilities: np.ndarray, correct: np.ndarray, bins: int = 15) -> tuple[float, dict]:
    """Expected calibration error of the winning class's probability, and the reliability table.

    Positions are put in ``bins`` equal-width bins of confidence (the winning class's
    probability); the error is the position-weighted mean gap between each bin's mean
    confidence and its accuracy.

    Parameters
    ----------
    probabilities : numpy.ndarray
        Winning-class probability per position, any shape.
    correct : numpy.ndarray
        Whether the winning class is right, same shape.
    bins : int
        Number of confidence bins over [0, 1].

    Returns
    -------
    float, dict
        The error, and per bin ``edges`` (bins + 1), ``count``, ``confidence``, ``accuracy``
        (``None`` for empty bins).

    Example
    -------
    >>> round(expected_calibration_error(np.array([0.9, 0.9]), np.array([True, False]))[0], 2)
    0.4
    """
    conf = np.asarray(probabilities, np.float64).ravel()
    hit = np.asarray(correct, bool).ravel()
    if conf.shape != hit.shape:
        raise ValueError(f"{conf.size} probabilities but {hit.size} outcomes")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=conf, minlength=bins)
    hit_sum = np.bincount(which, weights=hit.astype(np.float64), minlength=bins)
    filled = count > 0
    gap = np.abs(conf_sum[filled] - hit_sum[filled]).sum()
    error = float(gap / max(1, conf.size))
    table = {
        "edges": edges.round(6).tolist(),
        "count": count.astype(int).tolist(),
        "confidence": [float(s / n) if n else None for s, n in zip(conf_sum, count)],
        "accuracy": [float(s / n) if n else None for s, n in zip(hit_sum, count)],
    }
    return error, table


def wall_mask(truth: np.ndarray, distance: int = 2) -> np.ndarray:
    """(rows, cols) bool: true class 'none', or within ``distance`` positions of a class change."""
    truth = np.asarray(truth)
    change = np.zeros(truth.shape, bool)
    change[:, 1:] |= truth[:, 1:] != truth[:, :-1]
    change[:, :-1] |= truth[:, 1:] != truth[:, :-1]
    change[1:, :] |= truth[1:, :] != truth[:-1, :]
    change[:-1, :] |= truth[1:, :] != truth[:-1, :]
    near = ndi.binary_dilation(change, iterations=max(0, distance - 1)) if distance > 1 else change
    return near | (truth == "none")


def evaluate(predicted: np.ndarray, truth: Labels, probabilities: np.ndarray | None = None) -> dict:
    """Compare predicted class names (rows, cols) with the truth labels at their positions.

    Parameters
    ----------
    predicted : numpy.ndarray
        (rows, cols) predicted class names, e.g. ``Prediction.label_names()``.
    truth : Labels
        The true classes at some or all positions.
    probabilities : numpy.ndarray, optional
        (rows, cols, C) class probabilities of the prediction. When given and the truth
        covers every position, the report gains ``expected_calibration_error``,
        ``mean_confidence`` and ``reliability`` (see :func:`expected_calibration_error`).

    Returns
    -------
    dict
        ``n``, ``accuracy``, per-class ``recall``, the ``confusion`` matrix and its
        ``classes``; wall and in-domain accuracy when the truth covers every position; for
        class names the truth does not use (clusters), the best matching of names to classes;
        calibration figures when probabilities are given and the truth covers every position.

    Raises
    ------
    GhostmapError
        When the truth is empty or a truth position lies outside the predicted map.

    Examples
    --------
    >>> import numpy as np
    >>> import ghostmap as gm
    >>> predicted = np.array([["none", "vertical", "vertical"]])
    >>> report = gm.evaluate(predicted, gm.Labels([0, 1, 2], [0, 0, 0], ["none", "vertical", "none"]))
    >>> round(report["accuracy"], 3)
    0.667
    """
    predicted = np.asarray(predicted)
    rows, cols = predicted.shape
    if len(truth) == 0:
        raise GhostmapError("the truth file holds no labels")
    check_in_scan(truth.x, truth.y, (rows, cols), what="truth label at", within="the predicted map")
    pred = predicted[truth.y, truth.x].astype(str)
    true = truth.label.astype(str)
    classes = list(class_order(np.concatenate([true, pred])))
    index = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), np.int64)
    np.add.at(matrix, ([index[t] for t in true], [index[p] for p in pred]), 1)
    report = {
        "n": int(len(true)),
        "accuracy": float((pred == true).mean()),
        "per_class_recall": {
            c: (float(matrix[i, i] / matrix[i].sum()) if matrix[i].sum() else None) for i, c in enumerate(classes)
        },
        "confusion": {"classes": classes, "rows_are": "truth", "matrix": matrix.tolist()},
    }
    if len(true) == rows * cols:
        full = np.empty((rows, cols), dtype=true.dtype)
        full[truth.y, truth.x] = true
        walls = wall_mask(full)
        hits = predicted.astype(str) == full
        report["wall_accuracy"] = float(hits[walls].mean()) if walls.any() else None
        report["domain_accuracy"] = float(hits[~walls].mean()) if (~walls).any() else None
        report["n_wall"] = int(walls.sum())
        if probabilities is not None and not all(str(c).startswith("cluster ") for c in np.unique(pred)):
            report.update(calibration(probabilities, hits))
    if all(str(c).startswith("cluster ") for c in np.unique(pred)):  # unsupervised clusters: match them to classes
        report["best_permutation"] = best_permutation_accuracy(pred, true)
        if "n_wall" in report and (~walls).any():
            inside = ~walls[truth.y, truth.x]
            report["best_permutation"]["domain_accuracy"] = best_permutation_accuracy(pred[inside], true[inside])["accuracy"]
    return report


def calibration(probabilities: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """Expected calibration error, mean confidence and reliability table of a prediction.

    Parameters
    ----------
    probabilities : numpy.ndarray
        (rows, cols, C) class probabilities.
    correct : numpy.ndarray
        (rows, cols) bool, whether the winning class is right.
    bins : int
        Equal-width confidence bins.

    Returns
    -------
    dict
        ``expected_calibration_error``, ``mean_confidence`` and ``reliability`` (per bin:
        ``edges``, ``count``, ``confidence``, ``accuracy``).

    Example
    -------
    >>> calibration(np.array([[[0.9, 0.1]]]), np.array([[True]]))["expected_calibration_error"]
    0.09999999999999998
    """
    confidence = np.asarray(probabilities, np.float64).max(axis=-1)
    if confidence.shape != np.shape(correct):
        raise GhostmapError(f"probabilities cover {confidence.shape} positions but the map {np.shape(correct)}")
    error, table = expected_calibration_error(confidence, correct, bins)
    return {"expected_calibration_error": error, "mean_confidence": float(confidence.mean()), "reliability": table}


def _pct(value) -> str:
    return "-" if value is None else f"{value:.2%}"


def format_report(report: dict) -> str:
    """The report as the lines the CLI prints."""
    lines = [f"accuracy: {report['accuracy']:.2%} on {report['n']} positions"]
    if "n_wall" in report:
        wall, inside = report["wall_accuracy"], report["domain_accuracy"]
        lines.append(f"domain-wall accuracy: {_pct(wall)} on {report['n_wall']} positions; "
                     f"inside domains: {_pct(inside)} on {report['n'] - report['n_wall']}")
    if "expected_calibration_error" in report:
        lines.append(f"calibration: expected calibration error {report['expected_calibration_error']:.4f} "
                     f"(mean confidence {report['mean_confidence']:.2%}, accuracy {report['accuracy']:.2%})")
    if "best_permutation" in report:
        bp = report["best_permutation"]
        lines.append(f"clusters matched to classes ({', '.join(f'{p} = {t}' for p, t in bp['mapping'].items())}): "
                     f"accuracy {bp['accuracy']:.2%}" + (f", inside domains {bp['domain_accuracy']:.2%}"
                                                          if "domain_accuracy" in bp else ""))
    lines.append("per-class recall: " + ", ".join(
        f"{c} {r:.2%}" if r is not None else f"{c} -" for c, r in report["per_class_recall"].items()))
    classes = report["confusion"]["classes"]
    width = max(len(c) for c in classes + ["truth \\ pred"]) + 2
    lines.append("confusion matrix (rows: truth, columns: predicted):")
    lines.append("truth \\ pred".ljust(width) + "".join(c.rjust(width) for c in classes))
    for c, row in zip(classes, report["confusion"]["matrix"]):
        lines.append(c.ljust(width) + "".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)


def best_permutation_accuracy(predicted_labels, truth_names) -> dict:
    """Accuracy of unsupervised labels (e.g. clusters) under the best one-to-one matching to the truth classes.

    ``predicted_labels`` and ``truth_names`` are arrays of the same shape (any label values). The
    matching maximises the number of agreeing positions (Hungarian algorithm); with more clusters
    than classes the unmatched clusters count as wrong. Returns ``accuracy``, ``n`` and ``mapping``
    (predicted label -> truth class, as strings).
    """
    from scipy.optimize import linear_sum_assignment

    pred = np.asarray(predicted_labels).astype(str).ravel()
    true = np.asarray(truth_names).astype(str).ravel()
    if pred.shape != true.shape:
        raise GhostmapError(f"{pred.size} predicted labels but {true.size} truth labels")
    if pred.size == 0:
        raise GhostmapError("no labels to compare")
    p_names, p_index = np.unique(pred, return_inverse=True)
    t_names, t_index = np.unique(true, return_inverse=True)
    counts = np.zeros((len(p_names), len(t_names)), np.int64)
    np.add.at(counts, (p_index, t_index), 1)
    rows, cols = linear_sum_assignment(-counts)
    return {"accuracy": float(counts[rows, cols].sum() / pred.size), "n": int(pred.size),
            "mapping": {str(p_names[r]): str(t_names[c]) for r, c in zip(rows, cols)}}
