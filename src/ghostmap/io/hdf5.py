"""Plain HDF5 files (``.h5``, ``.hdf5``, ``.emd``, ``.nxs``, py4DSTEM): the single 4-D
dataset, the one named by ``--dataset``, or a lone 3-D frame stack.

Compressed datasets decode through the filters ``hdf5plugin`` registers (bitshuffle,
LZ4, Zstd, Blosc...), imported here so that h5py finds them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers the compression filters detectors use)

from ghostmap.errors import GhostmapError

from .base import FormatInfo, Opened, one_line, pick_dataset

logger = logging.getLogger(__name__)

def hdf5_arrays(group: h5py.Group) -> list[tuple[str, tuple]]:
    """``(path, shape)`` of every dataset under ``group`` (external links are not followed)."""
    found = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            found.append(("/" + name, tuple(obj.shape or ())))

    group.visititems(visit)
    return found


def open_hdf5_file(path: Path) -> h5py.File:
    """Open read-only; a file that is not HDF5 is a one-line GhostmapError."""
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise GhostmapError(f"{path} is not a readable HDF5 file") from exc


def open_hdf5(path: Path, dataset: str | None = None, ndim: int = 4, fmt: str = "HDF5") -> Opened:
    """The chosen dataset of an HDF5 file, opened lazily (h5py slices on demand).

    Parameters
    ----------
    path : Path
        The file.
    dataset : str, optional
        Path of the dataset inside the file; otherwise the single ``ndim``-D one.
    ndim : int
        4 for a scan (a lone 3-D stack is accepted too), 5 for a time series.
    fmt : str
        Format name shown by ``ghostmap info``.

    Returns
    -------
    Opened
        The h5py dataset and the file's closer.

    Example
    -------
    >>> open_hdf5(Path("scan.h5")).data.shape  # doctest: +SKIP
    (34, 206, 512, 512)
    """
    name = str(path)
    file = open_hdf5_file(path)
    try:
        if dataset is not None and isinstance(file.get(dataset), h5py.Group):
            raise GhostmapError(f"'{dataset}' in {name} is a group, not a dataset")
        chosen = pick_dataset(name, hdf5_arrays(file), dataset, ndim)
        data = file[chosen]
    except GhostmapError:
        file.close()
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        file.close()
        raise GhostmapError(f"{name} could not be read as HDF5 ({one_line(exc)})") from exc
    return Opened(data, f"{name}:{chosen}", (path,), [file.close], None, FormatInfo(fmt, "h5py"))


def hdf5_series_length(path: Path, dataset: str | None) -> int | None:
    """Time steps if the HDF5 file holds one 5-D dataset (or ``dataset`` is 5-D), else None."""
    with h5py.File(path, "r") as f:
        return series_length_of(hdf5_arrays(f), dataset)


def series_length_of(arrays: list[tuple[str, tuple]], dataset: str | None) -> int | None:
    """The series rule on ``(path, shape)`` pairs: a named 5-D dataset, or the only 5-D one and no 4-D."""
    shapes = dict(arrays)
    if dataset is not None:
        shape = shapes.get("/" + dataset.strip("/"))
        return int(shape[0]) if shape is not None and len(shape) == 5 else None
    four_d = [s for s in shapes.values() if len(s) == 4]
    five_d = [s for s in shapes.values() if len(s) == 5]
    return int(five_d[0][0]) if not four_d and len(five_d) == 1 else None
