"""Classify every pattern of a scan, streaming it in blocks of scan rows.

Memory stays bounded whatever the file size: one block of rows (plus the pooling halo)
is in memory while the next is read by a background thread, so reading and computing
overlap. A virtual bright-field image is summed on the way, for the summary figure.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .model import Model
from .preprocessing import halo_rows, preprocess_rows
from .reading import bright_field_mask
from .training import pick_device


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


def block_rows(scan, max_bytes: int = 192 * 2**20) -> int:
    """Scan rows per block so that one raw block stays under ``max_bytes``."""
    row_bytes = scan.scan_shape[1] * math.prod(scan.detector_shape) * np.dtype(scan.dtype).itemsize
    return max(1, min(scan.scan_shape[0], max_bytes // max(1, row_bytes)))


def predict(
    scan,
    model: Model,
    batch_size: int = 256,
    device: str | None = None,
    rows_per_block: int | None = None,
    prefetch: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Prediction:
    """Class probabilities for every pattern of ``scan``.

    ``progress(patterns_done, patterns_total)`` is called after every block.
    """
    model.check_scan(scan.detector_shape, getattr(scan, "source", "the scan"))
    dev = pick_device(device)
    network = model.network.to(dev).eval()
    prep = model.preprocessing
    n_rows, n_cols = scan.scan_shape
    step = rows_per_block or block_rows(scan)
    starts = list(range(0, n_rows, step))
    probabilities = np.zeros((n_rows, n_cols, len(model.classes)), np.float32)
    bright_field = np.zeros((n_rows, n_cols), np.float64)
    bf_index = None

    def read(start: int) -> np.ndarray:
        lo, hi = halo_rows(scan, start, min(start + step, n_rows), prep)
        return np.asarray(scan.read_rows(lo, hi))

    pool = ThreadPoolExecutor(max_workers=1) if prefetch else None
    try:
        pending = pool.submit(read, starts[0]) if pool else None
        for i, start in enumerate(starts):
            stop = min(start + step, n_rows)
            raw = pending.result() if pool else read(start)
            if pool and i + 1 < len(starts):
                pending = pool.submit(read, starts[i + 1])
            inputs, raw = preprocess_rows(scan, start, stop, prep, raw=raw)
            lo = halo_rows(scan, start, stop, prep)[0]
            core = raw[start - lo : stop - lo]
            if bf_index is None:
                bf_index = np.flatnonzero(bright_field_mask(core.reshape(-1, *core.shape[2:]).mean(0)))
            flat = core.reshape(core.shape[0], core.shape[1], -1)
            bright_field[start:stop] = flat[:, :, bf_index].sum(-1, dtype=np.float64)
            x = inputs.reshape(-1, 1, *inputs.shape[2:])
            out = []
            with torch.inference_mode():
                for b in range(0, x.shape[0], batch_size):
                    out.append(torch.softmax(network(x[b : b + batch_size].to(dev)), dim=1).float().cpu())
            probabilities[start:stop] = torch.cat(out).view(stop - start, n_cols, -1).numpy()
            if progress:
                progress(stop * n_cols, n_rows * n_cols)
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
    labels = probabilities.argmax(-1).astype(np.int64)
    return Prediction(labels, probabilities, tuple(model.classes), bright_field.astype(np.float32))
