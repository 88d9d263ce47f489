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

Names are imported on first use, so reading a file does not pay for importing PyTorch.
"""

import importlib

__version__ = "0.1.0"

_WHERE = {
    "GhostmapError": "errors",
    "evaluate": "evaluation",
    "Labels": "labels", "labels_from_truth": "labels", "read_labels": "labels", "write_labels": "labels",
    "write_positions": "labels",
    "Model": "model",
    "domain_rgb": "outputs", "load_prediction": "outputs", "save_prediction": "outputs",
    "Prediction": "prediction", "predict": "prediction",
    "Preprocessing": "preprocessing", "fit_preprocessing": "preprocessing",
    "Scan": "reading", "as_scan": "reading", "open_scan": "reading", "open_time_series": "reading",
    "load_series": "series", "predict_series": "series", "series_steps": "series", "wall_shift": "series",
    "propose": "sampling",
    "moving_domain_maps": "simulate", "simulate_scan": "simulate", "write_simulated_scan": "simulate",
    "TrainingOptions": "training", "train": "training",
    "watch_folder": "watch", "WatchOptions": "watch",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ghostmap' has no attribute '{name}'")


def __dir__():
    return sorted(set(globals()) | set(__all__))
