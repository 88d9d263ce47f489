import numpy as np
import pytest

from ghostmap.errors import GhostmapError
from ghostmap.evaluation import evaluate, expected_calibration_error, format_report, wall_mask
from ghostmap.labels import Labels


def labels_of(truth):
    rows, cols = truth.shape
    yy, xx = np.mgrid[:rows, :cols]
    return Labels(xx.ravel().astype(np.int64), yy.ravel().astype(np.int64), truth.ravel().astype(str))


def test_wall_mask_marks_none_and_class_changes():
    truth = np.array([["vertical"] * 8 + ["none"] + ["horizontal"] * 8] * 3)
    walls = wall_mask(truth, distance=2)
    # columns 7..10 are within 2 positions of a change (8|9 and 9|10 boundaries) or none
    assert walls[:, 7:11].all()
    assert not walls[:, :6].any() and not walls[:, 12:].any()


def test_accuracy_recall_confusion_and_walls():
    truth = np.array([["vertical"] * 6 + ["none"] + ["horizontal"] * 6] * 4)
    predicted = truth.copy()
    predicted[0, 0] = "horizontal"  # one error inside a domain
    predicted[:, 6] = "vertical"  # the wall missed
    report = evaluate(predicted, labels_of(truth))
    n = truth.size
    assert report["n"] == n
    assert report["accuracy"] == pytest.approx((n - 5) / n)
    assert report["per_class_recall"]["none"] == 0.0
    assert report["per_class_recall"]["vertical"] == pytest.approx(23 / 24)
    m = np.array(report["confusion"]["matrix"])
    classes = report["confusion"]["classes"]
    assert classes == ["none", "vertical", "horizontal"]
    assert m[0, 1] == 4 and m[1, 2] == 1 and m.sum() == n
    assert report["wall_accuracy"] < report["domain_accuracy"]
    text = format_report(report)
    assert "accuracy:" in text and "confusion matrix" in text


def test_sparse_truth_has_no_wall_metric():
    truth = Labels(np.array([0, 1]), np.array([0, 0]), np.array(["vertical", "none"]))
    report = evaluate(np.array([["vertical", "vertical"], ["none", "none"]]), truth)
    assert report["accuracy"] == 0.5 and "wall_accuracy" not in report


def test_truth_outside_the_map():
    truth = Labels(np.array([5]), np.array([0]), np.array(["vertical"]))
    with pytest.raises(GhostmapError, match="outside the predicted map"):
        evaluate(np.full((2, 3), "vertical"), truth)


def test_calibration_error_and_reliability_with_full_truth():
    truth = np.array([["vertical"] * 5 + ["horizontal"] * 5] * 4)
    predicted = truth.copy()
    predicted[:, 4] = "horizontal"  # 4 of 40 wrong
    probs = np.zeros((*truth.shape, 2))
    probs[..., 0] = (predicted == "vertical")  # classes (vertical, horizontal)
    probs[..., 1] = (predicted == "horizontal")
    sure = evaluate(predicted, labels_of(truth), probabilities=probs)
    assert sure["accuracy"] == pytest.approx(0.9)
    assert sure["expected_calibration_error"] == pytest.approx(0.1)  # sure of everything, right 90% of the time
    assert sure["mean_confidence"] == pytest.approx(1.0)
    table = sure["reliability"]
    assert sum(table["count"]) == truth.size and table["accuracy"][-1] == pytest.approx(0.9)
    # honest about the wall column: 60% on the column it gets wrong, 100% elsewhere
    honest = probs.copy()
    honest[:, 4] = [0.4, 0.6]
    report = evaluate(predicted, labels_of(truth), probabilities=honest)
    assert report["expected_calibration_error"] < sure["expected_calibration_error"]
    assert "calibration error" in format_report(report)
    assert set(report) >= {"n", "accuracy", "per_class_recall", "confusion", "wall_accuracy", "n_wall"}
    # sparse truth: no calibration keys, as no wall keys
    sparse = Labels(np.array([0, 9], np.int64), np.array([0, 0], np.int64), np.array(["vertical", "horizontal"]))
    assert "expected_calibration_error" not in evaluate(predicted, sparse, probabilities=probs)


def test_expected_calibration_error_and_table():
    conf = np.array([0.95] * 100 + [0.55] * 100)
    hit = np.array([True] * 95 + [False] * 5 + [True] * 55 + [False] * 45)
    error, table = expected_calibration_error(conf, hit, bins=10)
    assert error == pytest.approx(0.0, abs=1e-12)
    assert sum(table["count"]) == 200 and table["accuracy"][9] == pytest.approx(0.95)
    assert table["accuracy"][0] is None
    error, _ = expected_calibration_error(np.full(10, 0.9), np.zeros(10, bool))
    assert error == pytest.approx(0.9)
    with pytest.raises(ValueError):
        expected_calibration_error(np.ones(3), np.ones(2, bool))
