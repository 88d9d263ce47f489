"""What a classification gives back, for every probe position of a scan.

Kept apart from :mod:`ghostmap.prediction` so that code which only makes or reads results
(the conventional baselines, the output files) never imports PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Prediction:
    """Per-position results: ``labels`` (rows, cols) class indices, ``probabilities`` (rows, cols, C)."""

    labels: np.ndarray
    probabilities: np.ndarray
    classes: tuple[str, ...]
    bright_field: np.ndarray | None = None

    @property
    def confidence(self) -> np.ndarray:
        """The winning class's probability at each position."""
        return self.probabilities.max(axis=-1)

    def label_names(self) -> np.ndarray:
        """(rows, cols) array of class names."""
        return np.asarray(self.classes)[self.labels]
