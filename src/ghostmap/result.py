"""What a classification gives back, for every probe position of a scan.

Kept apart from :mod:`ghostmap.prediction` so that code which only makes or reads results
(the conventional baselines, the output files) never imports PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Prediction:
    """What :func:`ghostmap.predict` gives back for every probe position of a scan.

    Parameters
    ----------
    labels : numpy.ndarray
        (rows, cols) int64 index into ``classes`` of the most probable class at each position.
    probabilities : numpy.ndarray
        (rows, cols, C) float32 class probabilities, C = ``len(classes)``; each position's sum to 1.
    classes : tuple of str
        The class names, in the order of the last axis of ``probabilities``.
    bright_field : numpy.ndarray or None, optional
        (rows, cols) float32 virtual bright-field image summed while predicting, or None.

    Examples
    --------
    >>> import numpy as np
    >>> from ghostmap import Prediction
    >>> result = Prediction(labels=np.array([[0, 1]]),
    ...                     probabilities=np.array([[[0.9, 0.1], [0.25, 0.75]]]),
    ...                     classes=("up", "down"))
    >>> result.label_names()
    array([['up', 'down']], dtype='<U4')
    >>> result.confidence
    array([[0.9 , 0.75]])
    """

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
