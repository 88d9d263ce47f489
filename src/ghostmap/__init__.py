"""ghostmap: map ferroelectric polarization domains in 4D-STEM scans.

Axes everywhere: a scan is (scan_row, scan_col, det_row, det_col); label files and
outputs use x = scan column, y = scan row.

The Python API mirrors the command line::

    import ghostmap as gm
    scan = gm.open_scan("scan.h5")                      # or gm.as_scan(numpy_array / h5py dataset / hyperspy signal)
    x, y = gm.propose(scan.scan_shape, gm.read_labels("labels.csv", missing_ok=True), budget=50)
    model = gm.train(scan, "labels.csv")                # a gm.Labels works too
    result = gm.predict(scan, model)                    # result.labels, result.probabilities, result.classes
    gm.save_prediction("results", result)
"""

from .errors import GhostmapError
from .evaluation import evaluate
from .labels import Labels, labels_from_truth, read_labels, write_labels, write_positions
from .model import Model
from .outputs import domain_rgb, load_prediction, save_prediction
from .prediction import Prediction, predict
from .preprocessing import Preprocessing, fit_preprocessing
from .reading import Scan, as_scan, open_scan
from .sampling import propose
from .simulate import simulate_scan, write_simulated_scan
from .training import TrainingOptions, train

__version__ = "0.1.0"

__all__ = [
    "GhostmapError", "Labels", "Model", "Prediction", "Preprocessing", "Scan", "TrainingOptions",
    "as_scan", "domain_rgb", "evaluate", "fit_preprocessing", "labels_from_truth", "load_prediction",
    "open_scan", "predict", "propose", "read_labels", "save_prediction", "simulate_scan", "train",
    "write_labels", "write_positions", "write_simulated_scan",
]
