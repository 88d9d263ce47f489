"""Choose the reader for a file (by suffix, and by sniffing where suffixes lie), and turn
what it opened into a :class:`Scan` or :class:`TimeSeries`.

A reader that finds a flat 3-D frame stack (frame, det_row, det_col) gets its scan shape
from ``--scan-shape`` (checked against the frame count) or from the file; with neither,
the error names the frame count.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

from ghostmap.errors import GhostmapError

from .base import FlatFrames, Opened, Scan, TimeSeries, shape_text

logger = logging.getLogger(__name__)

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".emd", ".nxs")
ZARR_SUFFIXES = (".zarr", ".zip")
RSCIIO_SUFFIXES = (".dm3", ".dm4", ".mib", ".blo", ".tvips")
HYPERSPY_SUFFIXES = (".hspy", ".zspy")
OTHER_SUFFIXES = (".npy", ".dm5", ".xml", ".mrc")
ALL_SUFFIXES = OTHER_SUFFIXES + HDF5_SUFFIXES + ZARR_SUFFIXES + RSCIIO_SUFFIXES + HYPERSPY_SUFFIXES
SUPPORTED = ("ghostmap reads .npy, .h5/.hdf5/.emd/.nxs (Dectris masters too), .zarr, .hspy/.zspy, "
             ".dm3/.dm4, .dm5 (+ .raw), .mib, .blo, .tvips, .mrc, EMPAD .xml (+ .raw)")
_DATASET_KINDS = ("hdf5", "zarr", "hyperspy")


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def is_hdf5(path: Path) -> bool:
    """Whether ``path`` starts with the HDF5 signature (also after a 512..4096-byte user block)."""
    try:
        with open(path, "rb") as f:
            for offset in (0, 512, 1024, 2048, 4096):
                f.seek(offset)
                if f.read(8) == HDF5_SIGNATURE:
                    return True
    except OSError:
        return False
    return False


def sniff(path: Path) -> str | None:
    """The format family from a file's first bytes (None if nothing known is recognised).

    Example
    -------
    >>> sniff(Path("scan.h5"))  # doctest: +SKIP
    'hdf5'
    """
    if path.is_dir():
        from .zarrstore import is_zarr

        return "zarr" if is_zarr(path) else None
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError:
        return None
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"MQ1"):
        return "rsciio"
    if head.startswith(b"PK\x03\x04"):
        return "zarr"
    if len(head) >= 212 and head[208:212] == b"MAP ":
        return "mrc"
    if is_hdf5(path):
        return "hdf5"
    return None


def format_kind(path: Path) -> str:
    """The reader family for ``path``: by suffix, corrected by the file's signature.

    Kinds: ``npy hdf5 simplon dm5 hyperspy zarr rsciio empad mrc``. An HDF5 file is a
    Dectris master if it has ``/entry/data/data_NNNNNN`` links, whatever its suffix.
    """
    suffix = path.suffix.lower()
    sniffed = sniff(path)
    if suffix == ".dm5":
        return "dm5"
    if suffix in HYPERSPY_SUFFIXES:
        return "hyperspy"
    if suffix == ".xml":
        return "empad"
    by_suffix = {".npy": "npy", ".mrc": "mrc"}.get(suffix) or (
        "hdf5" if suffix in HDF5_SUFFIXES else "zarr" if suffix in ZARR_SUFFIXES else
        "rsciio" if suffix in RSCIIO_SUFFIXES else None)
    if by_suffix in (None, "hdf5") and sniffed == "hdf5":
        return "simplon" if _is_master(path) else "hdf5"
    if by_suffix is None and sniffed not in (None, "rsciio"):
        return sniffed  # a known layout under an unknown suffix
    if by_suffix in ("hdf5", "npy", "mrc") and sniffed in ("npy", "hdf5", "mrc") and sniffed != by_suffix:
        logger.info("%s is %s whatever its suffix says", path, sniffed)
        return sniffed
    if by_suffix is None:
        what = f"'{suffix}'" if suffix else f"(no suffix on {path})"
        raise GhostmapError(f"unsupported file type {what}; {SUPPORTED}")
    return by_suffix


def _is_master(path: Path) -> bool:
    import h5py

    from .simplon import is_simplon_master

    try:
        with h5py.File(path, "r") as f:
            return is_simplon_master(f)
    except (OSError, ValueError):
        return False


def _open_kind(kind: str, path: Path, dataset: str | None, scan_shape) -> Opened:
    if dataset is not None and kind not in _DATASET_KINDS:
        raise GhostmapError(f"a dataset name applies only to HDF5, zarr and HyperSpy files, not {path}")
    if kind == "npy":
        from .npy import open_npy

        return open_npy(path)
    if kind == "hdf5":
        from .hdf5 import open_hdf5

        return open_hdf5(path, dataset, 4, "EMD (HDF5)" if path.suffix.lower() == ".emd" else "HDF5")
    if kind == "simplon":
        from .simplon import open_simplon

        return open_simplon(path)
    if kind == "zarr":
        from .zarrstore import open_zarr

        return open_zarr(path, dataset)
    if kind == "hyperspy":
        from .hyperspy import open_hyperspy

        return open_hyperspy(path, dataset)
    if kind == "empad":
        from .empad import open_empad

        return open_empad(path)
    if kind == "mrc":
        from .mrc import open_mrc

        return open_mrc(path)
    if kind == "dm5":
        from .gatan import open_dm5

        return open_dm5(path)
    from .rsciio import open_rsciio

    return open_rsciio(path, path.suffix.lower(), scan_shape)


def as_4d(opened: Opened, scan_shape: tuple[int, int] | None):
    """The reader's array as 4-D: a 3-D frame stack is reshaped lazily to the scan shape.

    Parameters
    ----------
    opened : Opened
        What the reader found.
    scan_shape : tuple of int, optional
        (rows, cols) given by the user; wins over the file's, must match the frame count.

    Returns
    -------
    array-like
        4-D (scan_row, scan_col, det_row, det_col), still lazy.
    """
    data = opened.data
    if len(data.shape) != 3:
        return data
    n, det = int(data.shape[0]), tuple(int(k) for k in data.shape[1:])
    shape = tuple(scan_shape) if scan_shape is not None else opened.scan_shape
    if shape is None:
        raise GhostmapError(
            f"{opened.source} holds {n} frames of {det[0]} x {det[1]} pixels (a 3-D frame stack, not 4-D scan data) "
            f"and records no scan shape; give it with --scan-shape ROWSxCOLS (ROWS x COLS = {n})"
        )
    if math.prod(shape) != n:
        raise GhostmapError(
            f"{opened.source} holds {n} frames, but --scan-shape {shape[0]}x{shape[1]} needs {math.prod(shape)}"
        )
    if isinstance(data, np.memmap) and data.flags.c_contiguous:
        return data.reshape(*shape, *det)  # still a memory map: read with plain file reads
    return FlatFrames(data, shape)


def open_scan(
    path: str | os.PathLike,
    dataset: str | None = None,
    scan_shape: tuple[int, int] | None = None,
) -> Scan:
    """Open a scan file lazily, choosing the reader by suffix and file signature.

    Parameters
    ----------
    path : str or PathLike
        The scan file (or zarr folder).
    dataset : str, optional
        The array inside an HDF5, zarr or HyperSpy file (otherwise the single 4-D one).
    scan_shape : tuple of int, optional
        (rows, cols): needed for flat frame stacks that do not record it (Dectris,
        Merlin without a usable ``.hdr``, 3-D HDF5/zarr/.npy/.mrc), checked against the
        file for the others.

    Returns
    -------
    Scan
        Lazy; close it (or use ``with``) when done.

    Raises
    ------
    GhostmapError
        When the file does not exist, its format is not supported or it cannot be read,
        it holds no suitable 4-D array (or a time series of more than one slice), or
        ``scan_shape`` is missing where needed or differs from the file's.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from ghostmap import open_scan
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     np.save(f"{folder}/scan.npy", np.zeros((2, 3, 32, 32), np.uint16))
    ...     with open_scan(f"{folder}/scan.npy") as scan:
    ...         print(scan.shape, scan.dtype)
    (2, 3, 32, 32) uint16

    A Dectris master file records no scan shape, so it is given:

    >>> with open_scan("test_00_master.h5", scan_shape=(4, 4)) as scan:  # doctest: +SKIP
    ...     scan.shape
    (4, 4, 192, 192)
    """
    path = Path(path)
    if not path.exists():
        raise GhostmapError(f"no such file: {path}")
    kind = format_kind(path)
    opened = _open_kind(kind, path, dataset, scan_shape)
    try:
        if len(opened.data.shape) == 5:
            n = int(opened.data.shape[0])
            if n != 1:
                raise GhostmapError(
                    f"{path} holds a time series of {n} slices; commands that take one scan need one slice "
                    "(predict and watch read the whole series)"
                )
            series = TimeSeries(opened.data, opened.source, path, info=opened.info, files=opened.files)
            scan = series[0]
            scan._closers = list(opened.closers)
            opened.closers = []
        else:
            data = as_4d(opened, scan_shape)
            scan = Scan(data, opened.source, files=opened.files, closers=tuple(opened.closers), info=opened.info)
            opened.closers = []
    finally:
        opened.close()
    if scan_shape is not None and tuple(scan_shape) != scan.scan_shape:
        scan.close()
        raise GhostmapError(
            f"{path} has scan shape {shape_text(scan.scan_shape)}, not the {shape_text(scan_shape)} given"
        )
    return scan


def time_series_length(path: str | os.PathLike, dataset: str | None = None) -> int | None:
    """Number of time steps if ``path`` holds a 5-D series, None if it holds a single scan.

    A named ``dataset`` decides by its own dimensions; otherwise a file whose only
    candidate is one 5-D array (and no 4-D one) is a series; a ``.dm5`` director file is
    one whatever its slice count. Unreadable files give None, so that :func:`open_scan`
    reports what is wrong with them.

    Example
    -------
    >>> time_series_length("InSitu.dm5")  # doctest: +SKIP
    15
    """
    path = Path(path)
    try:
        kind = format_kind(path)
        if kind == "npy":
            from .npy import npy_series_length

            return npy_series_length(path) if dataset is None else None
        if kind == "hdf5":
            from .hdf5 import hdf5_series_length

            return hdf5_series_length(path, dataset)
        if kind == "zarr":
            from .zarrstore import zarr_series_length

            return zarr_series_length(path, dataset)
        if kind == "dm5":
            from .gatan import open_dm5

            return int(open_dm5(path).data.shape[0])
    except Exception:  # noqa: BLE001 - open_scan gives the proper message
        return None
    return None


def open_time_series(path: str | os.PathLike, dataset: str | None = None) -> TimeSeries:
    """Open a 5-D series (time, scan_row, scan_col, det_row, det_col) lazily.

    Reads .npy, HDF5 and zarr 5-D arrays and Gatan in-situ ``.dm5`` sessions.

    Parameters
    ----------
    path : str or PathLike
        The series file (or zarr folder, or ``.dm5`` director file).
    dataset : str, optional
        The array inside an HDF5 or zarr file (otherwise the single 5-D one).

    Returns
    -------
    TimeSeries
        Lazy, one :class:`Scan` per time step (``series[t]``, ``len(series)``); close it
        (or use ``with``) when done.

    Raises
    ------
    GhostmapError
        When the file does not exist, is not .npy, HDF5, zarr or ``.dm5``, or holds no
        5-D array of real numbers.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from ghostmap import open_time_series
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     np.save(f"{folder}/series.npy", np.zeros((3, 2, 4, 32, 32), np.uint16))
    ...     with open_time_series(f"{folder}/series.npy") as series:
    ...         print(len(series), series[0].shape)
    3 (2, 4, 32, 32)

    >>> with open_time_series("InSitu.dm5") as series:  # doctest: +SKIP
    ...     len(series)
    15
    """
    path = Path(path)
    if not path.exists():
        raise GhostmapError(f"no such file: {path}")
    kind = format_kind(path)
    if kind == "npy":
        from .npy import open_npy

        opened = open_npy(path)
    elif kind == "hdf5":
        from .hdf5 import open_hdf5

        opened = open_hdf5(path, dataset, 5)
    elif kind == "zarr":
        from .zarrstore import open_zarr

        opened = open_zarr(path, dataset, 5)
    elif kind == "dm5":
        from .gatan import open_dm5

        opened = open_dm5(path)
    else:
        raise GhostmapError(f"a time series must be .npy, HDF5, zarr or a .dm5 session, not {path.name}")
    try:
        series = TimeSeries(opened.data, opened.source, path, opened.closers, info=opened.info, files=opened.files)
    except GhostmapError:
        opened.close()
        raise
    opened.closers = []
    return series


def _lazy_array_types() -> tuple[type, ...]:
    """zarr and dask array classes, if those libraries are already imported.

    An object can only be one of them if its library is loaded, so nothing is imported.
    """
    import sys

    types = []
    zarr = sys.modules.get("zarr")
    if zarr is not None and hasattr(zarr, "Array"):
        types.append(zarr.Array)
    dask_array = sys.modules.get("dask.array")
    if dask_array is not None and hasattr(dask_array, "Array"):
        types.append(dask_array.Array)
    return tuple(types)


def _is_array_like(obj) -> bool:
    return all(hasattr(obj, a) for a in ("shape", "dtype", "__getitem__"))


def as_scan(obj, dataset: str | None = None) -> Scan:
    """Wrap anything holding a 4-D scan as a :class:`Scan` without reading it.

    Accepts a Scan, a path, a NumPy array or memmap, an h5py dataset, a zarr or dask
    array, a HyperSpy signal (whose data is already nav-then-signal, our order) or a
    py4DSTEM DataCube (Rx, Ry, Qx, Qy; first axis the scan row).

    Parameters
    ----------
    obj : Scan, str, os.PathLike or array-like
        The scan: a :class:`Scan` (returned as it is), a file (opened with
        :func:`open_scan`), or a 4-D (scan_row, scan_col, det_row, det_col) array or an
        object holding one in ``.data``.
    dataset : str, optional
        The array inside the file, when ``obj`` is a path to an HDF5, zarr or HyperSpy file.

    Returns
    -------
    Scan
        Lazy: an array is wrapped, not copied.

    Raises
    ------
    GhostmapError
        When ``obj`` holds no 4-D array of real numbers, or its file cannot be opened.

    Examples
    --------
    >>> import numpy as np
    >>> from ghostmap import as_scan
    >>> scan = as_scan(np.zeros((2, 3, 4, 4)))
    >>> scan.scan_shape, scan.source
    ((2, 3), 'numpy array')
    """
    import h5py

    if isinstance(obj, Scan):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return open_scan(obj, dataset=dataset)
    if isinstance(obj, np.ndarray):
        return Scan(obj, "numpy memmap" if isinstance(obj, np.memmap) else "numpy array")
    if isinstance(obj, h5py.Dataset):
        filename = obj.file.filename
        files = (Path(filename),) if os.path.isfile(filename) else ()
        return Scan(obj, f"{filename}:{obj.name}", files=files)
    if isinstance(obj, _lazy_array_types()):
        return Scan(obj, f"{type(obj).__module__.split('.')[0]} array")
    if hasattr(obj, "data") and _is_array_like(obj.data):
        if hasattr(obj, "axes_manager"):
            kind = "hyperspy signal"
        elif type(obj).__name__ == "DataCube":
            kind = "py4DSTEM DataCube"
        else:
            kind = type(obj).__name__
        scan = as_scan(obj.data)
        scan.source = kind
        return scan
    if _is_array_like(obj):
        return Scan(obj, f"{type(obj).__name__} array")
    raise GhostmapError(f"cannot read a 4D-STEM scan from a {type(obj).__name__}")
