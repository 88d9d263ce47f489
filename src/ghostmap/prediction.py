"""Classify every pattern of a scan, streaming it in blocks of scan rows.

Memory stays bounded whatever the file size: :func:`ghostmap.preprocessing.stream_rows`
reads each scan row once (the next block in a background thread, so reading and
computing overlap) and keeps only the rows that neighbourhood pooling still needs. A
virtual bright-field image is summed on the way, for the summary figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from .model import Model
from .preprocessing import stream_rows
from .reading import as_scan, bright_field_mask
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


def reuse_freed_memory(mmap_threshold: int = 256 * 2**20, trim_threshold: int = 512 * 2**20) -> bool:
    """Ask glibc to recycle freed block buffers instead of returning them to the OS.

    Each block allocates tens of MB of temporaries; by default glibc hands those to ``mmap``
    and back on every block, and the fresh pages' faults cost more than the arithmetic
    (the paper-size scan: 11.8 s end to end, 8.2 s with this). Memory stays bounded by
    ``trim_threshold``. A no-op where glibc isn't the C library.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, mmap_threshold)) and bool(
            libc.mallopt(m_trim_threshold, trim_threshold))
    except (OSError, AttributeError):
        return False


def default_batch_size(input_shape: tuple[int, int], budget_bytes: int = 64 * 2**20) -> int:
    """Patterns per forward pass so the first layer's activations stay near ``budget_bytes``."""
    per_pattern = 16 * input_shape[0] * input_shape[1] * 4
    return int(min(512, max(8, budget_bytes // per_pattern)))


def bright_field_index(scan) -> np.ndarray:
    """Flat detector indices of the bright-field disk, found once from the first scan row."""
    scan = as_scan(scan)
    n_cols = scan.scan_shape[1]
    first_row = scan.read_rows(0, 1)[0]
    mean = first_row.reshape(n_cols, -1).mean(0, dtype=np.float64).reshape(scan.detector_shape)
    return np.flatnonzero(bright_field_mask(mean))


def prepare_network(model: Model, device: torch.device) -> torch.nn.Module:
    """The model's network on ``device`` in eval mode, laid out for fast inference."""
    # channels-last measured 2x faster than contiguous on the CPU for the compact network
    return model.network.to(device).eval().to(memory_format=torch.channels_last)


def classify(network: torch.nn.Module, inputs: torch.Tensor, batch_size: int, device: torch.device) -> np.ndarray:
    """Class probabilities (N, C) float32 for network inputs (N, h, w) or (N, 1, h, w)."""
    x = inputs.reshape(-1, 1, *inputs.shape[-2:]).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = [torch.softmax(network(x[b : b + batch_size].to(device)).float(), dim=1).cpu()
               for b in range(0, x.shape[0], batch_size)]
    if not out:
        return np.zeros((0, 0), np.float32)
    return torch.cat(out).numpy()


def iter_predictions(
    scan,
    model: Model,
    start: int = 0,
    stop: int | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    rows_per_block: int | None = None,
    prefetch: bool = True,
    bf_index: np.ndarray | None = None,
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Yield (row_start, row_stop, probabilities (rows, cols, C), bright field (rows, cols)) per block.

    Covers scan rows [start, stop); the rows pooling needs on either side are read too, so
    any split of a scan into row ranges gives exactly the predictions of one pass. This is
    the unit of work that :func:`predict`, a series and a Dask cluster all run.
    """
    scan = as_scan(scan)
    model.check_scan(scan.detector_shape, scan.source)
    n_rows, n_cols = scan.scan_shape
    stop = n_rows if stop is None else stop
    dev = device if isinstance(device, torch.device) else pick_device(device)
    network = prepare_network(model, dev)
    batch_size = batch_size or default_batch_size(model.input_shape)
    if bf_index is None:
        bf_index = bright_field_index(scan)
    bright = {}

    def sum_bright_field(first_row: int, raw: np.ndarray) -> None:
        flat = raw.reshape(raw.shape[0], raw.shape[1], -1)
        for i in range(max(first_row, start), min(first_row + raw.shape[0], stop)):
            bright[i] = flat[i - first_row][:, bf_index].sum(-1, dtype=np.float64)

    for r0, r1, inputs in stream_rows(scan, model.preprocessing, start, stop, rows_per_block=rows_per_block,
                                      prefetch=prefetch, on_raw=sum_bright_field):
        probabilities = classify(network, inputs, batch_size, dev).reshape(r1 - r0, n_cols, -1)
        yield r0, r1, probabilities, np.stack([bright.pop(i) for i in range(r0, r1)]).astype(np.float32)


def predict(
    scan,
    model: Model,
    batch_size: int | None = None,
    device: str | None = None,
    rows_per_block: int | None = None,
    prefetch: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Prediction:
    """Class probabilities for every pattern of ``scan``.

    ``scan`` is anything :func:`ghostmap.reading.as_scan` takes; ``model`` a :class:`Model`
    or a model folder. ``progress(patterns_done, patterns_total)`` is called after every block.
    """
    scan = as_scan(scan)
    if not isinstance(model, Model):
        model = Model.load(model)
    model.check_scan(scan.detector_shape, scan.source)
    reuse_freed_memory()
    n_rows, n_cols = scan.scan_shape
    probabilities = np.zeros((n_rows, n_cols, len(model.classes)), np.float32)
    bright_field = np.zeros((n_rows, n_cols), np.float32)
    for r0, r1, probs, bright in iter_predictions(scan, model, batch_size=batch_size, device=device,
                                                  rows_per_block=rows_per_block, prefetch=prefetch):
        probabilities[r0:r1], bright_field[r0:r1] = probs, bright
        if progress:
            progress(r1 * n_cols, n_rows * n_cols)
    return Prediction(probabilities.argmax(-1).astype(np.int64), probabilities, tuple(model.classes), bright_field)
