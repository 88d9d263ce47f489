"""The per-position result of a classification."""

import subprocess
import sys

import numpy as np

from ghostmap.prediction import Prediction as FromPrediction
from ghostmap.result import Prediction


def test_confidence_and_names_follow_the_probabilities():
    probabilities = np.array([[[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]], np.float32)
    result = Prediction(probabilities.argmax(-1), probabilities, ("none", "vertical", "horizontal"))
    assert np.allclose(result.confidence, [[0.7, 0.6]])
    assert result.label_names().tolist() == [["none", "horizontal"]]
    assert FromPrediction is Prediction  # one class, wherever it is imported from


def test_results_output_files_and_evaluation_do_not_import_torch():
    code = ("import sys, ghostmap.result, ghostmap.outputs, ghostmap.baselines, ghostmap.evaluation; "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
