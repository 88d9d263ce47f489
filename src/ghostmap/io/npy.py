"""NumPy ``.npy`` files: memory-mapped, read with plain file reads (no pickles, ever)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ghostmap.errors import GhostmapError

from .base import FormatInfo, Opened

logger = logging.getLogger(__name__)


def load_npy(path: Path) -> np.memmap:
    """Memory-map a ``.npy`` file without reading it; one-line error if it is not one.

    Parameters
    ----------
    path : Path
        The ``.npy`` file.

    Returns
    -------
    numpy.memmap
        The array, mapped read-only.

    Example
    -------
    >>> load_npy(Path("scan.npy")).shape  # doctest: +SKIP
    (34, 206, 512, 512)
    """
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # a bad header can raise ValueError, OSError, even TokenError
        raise GhostmapError(f"{path} is truncated or not a valid .npy file") from exc
    if not isinstance(data, np.ndarray):  # an .npz archive saved under .npy
        raise GhostmapError(f"{path} is truncated or not a valid .npy file")
    return data


def open_npy(path: Path, dataset: str | None = None) -> Opened:
    """A ``.npy`` scan (4-D), frame stack (3-D) or time series (5-D), memory-mapped.

    Example
    -------
    >>> open_npy(Path("scan.npy")).data.ndim  # doctest: +SKIP
    4
    """
    data = load_npy(path)
    return Opened(data, str(path), (path,), [], None, FormatInfo("NumPy .npy", "numpy memmap"))


def npy_series_length(path: Path) -> int | None:
    """Time steps of a 5-D ``.npy`` file, None for anything else."""
    data = load_npy(path)
    return int(data.shape[0]) if data.ndim == 5 else None
