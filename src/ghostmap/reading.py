"""Open 4D-STEM scans lazily and read them in blocks of scan rows.

Every scan is seen with axes (scan_row, scan_col, det_row, det_col), whatever its file
format. Nothing here reads a whole file into memory: ``.npy`` files are memory-mapped,
HDF5 and zarr datasets are sliced on demand, and the Gatan, Quantum Detectors and
blockfile formats go through RosettaSciIO's lazy (dask) readers.

RosettaSciIO (GPL-3) and dask are an optional extra; they are imported only on the
code path that opens a ``.dm3``, ``.dm4``, ``.mib`` or ``.blo`` file.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import h5py
import numpy as np

from ghostmap.errors import GhostmapError

__all__ = [
    "Scan",
    "open_scan",
    "TimeSeries",
    "open_time_series",
    "time_series_length",
    "as_scan",
    "rows_per_block",
    "mean_pattern",
    "max_pattern",
    "virtual_image",
    "bright_field_mask",
    "describe",
    "save_preview",
]

AXES = "(scan_row, scan_col, det_row, det_col)"
SERIES_AXES = "(time, scan_row, scan_col, det_row, det_col)"
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".emd", ".nxs")
ZARR_SUFFIXES = (".zarr", ".zip")
RSCIIO_SUFFIXES = (".dm3", ".dm4", ".mib", ".blo")
SUPPORTED = "ghostmap reads .npy, .h5/.hdf5/.emd, .zarr, .dm3/.dm4, .mib, .blo"
_MAX_LISTED = 8  # datasets named in an error message before "..."


def _one_line(text: object) -> str:
    """Collapse a message to one line, as every GhostmapError must be."""
    return " ".join(str(text).split())


def _shape_text(shape) -> str:
    return "(" + ", ".join(str(int(n)) for n in shape) + ")"


def _check_data(shape, dtype, source: str) -> None:
    """Refuse anything that is not a 4-D array of real numbers."""
    if len(shape) != 4:
        raise GhostmapError(
            f"{source} holds a {len(shape)}-D array of shape {_shape_text(shape)}; "
            f"ghostmap needs 4-D data {AXES}"
        )
    if np.dtype(dtype).kind not in "biuf":
        raise GhostmapError(f"{source} holds data of type {np.dtype(dtype)}; ghostmap needs real numbers")


def _materialise(block) -> np.ndarray:
    """Turn a slice of any supported array into an in-memory, native-byte-order ndarray."""
    if hasattr(block, "compute"):  # dask
        block = block.compute()
    block = np.array(block, copy=True) if isinstance(block, np.memmap) else np.asarray(block)
    if not block.dtype.isnative:
        block = block.astype(block.dtype.newbyteorder("="))
    return np.ascontiguousarray(block)


class _OpenFiles:
    """Something holding open files: ``close()`` (safe to call twice), or use it in a ``with``."""

    _closers: list

    def close(self) -> None:
        """Close any file this object opened."""
        closers, self._closers = self._closers, []
        for close in reversed(closers):
            close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Scan(_OpenFiles):
    """A lazily opened 4D-STEM scan, axes (scan_row, scan_col, det_row, det_col).

    ``data`` is the underlying lazy array, already in that axis order; ``source`` says
    where it came from. Reads return in-memory arrays in native byte order.
    """

    def __init__(
        self,
        data,
        source: str = "numpy array",
        files: tuple[Path, ...] = (),
        closers: tuple[Callable[[], Any], ...] = (),
    ):
        _check_data(data.shape, data.dtype, source)
        self.data = data
        self.source = source
        self._files = tuple(Path(f) for f in files)
        self._closers = list(closers)

    def __repr__(self) -> str:
        return f"Scan({self.source!r}, shape={self.shape}, dtype={self.dtype})"

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(int(n) for n in self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        dtype = np.dtype(self.data.dtype)
        return dtype if dtype.isnative else dtype.newbyteorder("=")

    @property
    def scan_shape(self) -> tuple[int, int]:
        return self.shape[:2]

    @property
    def detector_shape(self) -> tuple[int, int]:
        return self.shape[2:]

    @property
    def n_patterns(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def nbytes(self) -> int:
        """Uncompressed size in bytes."""
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def file_size(self) -> int | None:
        """Bytes on disk, summed over all files (and zarr chunk files); None in memory."""
        if not self._files:
            return None
        return sum(_disk_size(f) for f in self._files)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Scan rows ``start:stop`` as an array (stop-start, cols, det_rows, det_cols)."""
        start, stop = _check_range(start, stop, self.shape[0], "rows")
        if _file_backed_rows(self.data):
            return _read_file_rows(self.data, start, stop)
        return _materialise(self.data[start:stop])

    def read_box(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        """The patterns of scan rows ``row0:row1`` and columns ``col0:col1``."""
        row0, row1 = _check_range(row0, row1, self.shape[0], "rows")
        col0, col1 = _check_range(col0, col1, self.shape[1], "columns")
        return _materialise(self.data[row0:row1, col0:col1])

    def read_pattern(self, row: int, col: int) -> np.ndarray:
        """The diffraction pattern at one scan position, (det_rows, det_cols)."""
        return self.read_box(row, row + 1, col, col + 1)[0, 0]

    def iter_rows(self, rows_per_block: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start_row, block)`` covering the scan in order."""
        step = max(1, int(rows_per_block))
        for start in range(0, self.shape[0], step):
            yield start, self.read_rows(start, min(start + step, self.shape[0]))



def _file_backed_rows(data) -> bool:
    """A C-ordered memory map whose rows can be read with plain file reads."""
    return isinstance(data, np.memmap) and data.flags.c_contiguous and getattr(data, "filename", None) is not None


def _read_file_rows(data: np.memmap, start: int, stop: int) -> np.ndarray:
    """Rows of a memory-mapped .npy read with ordinary file reads.

    Slicing the map would leave every page it touched resident in this process, so the
    resident size of a long prediction would grow to the file size; a plain read does not.
    """
    row_bytes = math.prod(data.shape[1:]) * data.dtype.itemsize
    out = np.empty((stop - start, *data.shape[1:]), dtype=data.dtype)
    view = memoryview(out.reshape(-1).view(np.uint8))
    with open(data.filename, "rb") as f:
        f.seek(data.offset + start * row_bytes)
        done = 0
        while done < len(view):
            n = f.readinto(view[done:])
            if not n:
                raise GhostmapError(f"{data.filename} is truncated")
            done += n
    return out if out.dtype.isnative else out.astype(out.dtype.newbyteorder("="))


def _check_range(start, stop, size: int, what: str) -> tuple[int, int]:
    start, stop = int(start), int(stop)
    if not 0 <= start <= stop <= size:
        raise IndexError(f"{what} {start}:{stop} are outside the scan's {size} {what}")
    return start, stop


def _disk_size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size if path.exists() else 0


# --------------------------------------------------------------------------- opening


def open_scan(
    path: str | os.PathLike,
    dataset: str | None = None,
    scan_shape: tuple[int, int] | None = None,
) -> Scan:
    """Open a scan file lazily, choosing the reader by suffix.

    ``dataset`` picks the array inside an HDF5 or zarr file (otherwise the single 4-D
    one is taken); ``scan_shape`` (rows, cols) is needed for ``.mib`` files that do not
    record it, and is checked against the file for other formats.
    """
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise GhostmapError(f"no such file: {name}")
    suffix = path.suffix.lower()
    if suffix not in (".npy",) + HDF5_SUFFIXES + ZARR_SUFFIXES + RSCIIO_SUFFIXES:
        what = f"'{suffix}'" if suffix else f"(no suffix on {name})"
        raise GhostmapError(f"unsupported file type {what}; {SUPPORTED}")
    if dataset is not None and suffix not in HDF5_SUFFIXES + ZARR_SUFFIXES:
        raise GhostmapError(f"a dataset name applies only to HDF5 and zarr files, not {name}")
    if suffix == ".npy":
        scan = _open_npy(path)
    elif suffix in HDF5_SUFFIXES:
        scan = _open_hdf5(path, dataset)
    elif suffix in ZARR_SUFFIXES:
        scan = _open_zarr(path, dataset)
    else:
        scan = _open_rsciio(path, suffix, scan_shape)
    if scan_shape is not None and tuple(scan_shape) != scan.scan_shape:
        scan.close()
        raise GhostmapError(
            f"{name} has scan shape {_shape_text(scan.scan_shape)}, "
            f"not the {_shape_text(scan_shape)} given"
        )
    return scan


def _open_npy(path: Path) -> Scan:
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # a bad header can raise ValueError, OSError, even TokenError
        raise GhostmapError(f"{path} is truncated or not a valid .npy file") from exc
    if not isinstance(data, np.ndarray):  # an .npz archive saved under .npy
        raise GhostmapError(f"{path} is truncated or not a valid .npy file")
    return _scan_or_close(data, str(path), (path,), [])


def _scan_or_close(data, source: str, files, closers) -> Scan:
    """Build a Scan; if the data is refused, close what was opened for it first."""
    try:
        return Scan(data, source, files=tuple(files), closers=tuple(closers))
    except GhostmapError:
        for close in closers:
            close()
        raise


def _listing(found: list[tuple[str, tuple]]) -> str:
    items = [f"{name} {_shape_text(shape)}" for name, shape in found[:_MAX_LISTED]]
    if len(found) > _MAX_LISTED:
        items.append(f"... {len(found) - _MAX_LISTED} more")
    return ", ".join(items) if items else "none"


def _pick_dataset(name: str, arrays: list[tuple[str, tuple]], dataset: str | None, ndim: int = 4) -> str:
    """Choose the array path to read from ``(path, shape)`` pairs found in a file."""
    found = [(p, s) for p, s in arrays if len(s) == ndim]
    if dataset is not None:
        wanted = "/" + dataset.strip("/")
        shapes = dict(arrays)
        if wanted not in shapes:
            raise GhostmapError(
                f"{name} has no dataset '{dataset}' ({ndim}-D datasets there: {_listing(found)})"
            )
        return wanted
    if len(found) == 1:
        return found[0][0]
    if not found:
        what = AXES if ndim == 4 else SERIES_AXES
        raise GhostmapError(
            f"{name} holds no {ndim}-D dataset (datasets there: {_listing(arrays)}); "
            f"ghostmap needs {ndim}-D data {what}"
        )
    raise GhostmapError(
        f"{name} holds {len(found)} {ndim}-D datasets ({_listing(found)}); "
        "choose one with --dataset"
    )


def _hdf5_arrays(group: h5py.Group) -> list[tuple[str, tuple]]:
    found = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            found.append(("/" + name, tuple(obj.shape or ())))

    group.visititems(visit)
    return found


def _open_hdf5(path: Path, dataset: str | None) -> Scan:
    data, source, closers = _hdf5_array(path, dataset, 4)
    return _scan_or_close(data, source, (path,), closers)


def _hdf5_array(path: Path, dataset: str | None, ndim: int):
    """(dataset, source text, closers) for the ``ndim``-D array chosen in an HDF5 file."""
    name = str(path)
    try:
        file = h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise GhostmapError(f"{name} is not a readable HDF5 file") from exc
    try:
        if dataset is not None and isinstance(file.get(dataset), h5py.Group):
            raise GhostmapError(f"'{dataset}' in {name} is a group, not a dataset")
        chosen = _pick_dataset(name, _hdf5_arrays(file), dataset, ndim)
        data = file[chosen]
    except GhostmapError:
        file.close()
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        file.close()
        raise GhostmapError(f"{name} could not be read as HDF5 ({_one_line(exc)})") from exc
    return data, f"{name}:{chosen}", [file.close]


def _zarr_arrays(group, prefix: str = "") -> list[tuple[str, tuple]]:
    found = []
    for key, array in group.arrays():
        found.append((f"{prefix}/{key}", tuple(array.shape)))
    for key, sub in group.groups():
        found.extend(_zarr_arrays(sub, f"{prefix}/{key}"))
    return found


def _open_zarr(path: Path, dataset: str | None) -> Scan:
    data, source, closers = _zarr_array(path, dataset, 4)
    return _scan_or_close(data, source, (path,), closers)


def _zarr_array(path: Path, dataset: str | None, ndim: int):
    """(array, source text, closers) for the ``ndim``-D array chosen in a zarr store."""
    import zarr

    name = str(path)
    closers = []
    try:
        if path.suffix.lower() == ".zip":
            from zarr.storage import ZipStore

            store = ZipStore(str(path), mode="r")
            closers.append(store.close)
            node = zarr.open(store, mode="r")
        else:
            node = zarr.open(str(path), mode="r")
        if hasattr(node, "arrays"):  # a group
            chosen = _pick_dataset(name, _zarr_arrays(node), dataset, ndim)
            data = node[chosen.lstrip("/")]
            source = f"{name}:{chosen}"
        else:
            if dataset is not None:
                raise GhostmapError(f"{name} holds a single array, so it has no dataset '{dataset}'")
            data, source = node, name
    except GhostmapError:
        for close in closers:
            close()
        raise
    except Exception as exc:  # zarr raises many types for a store it cannot parse
        for close in closers:
            close()
        raise GhostmapError(f"{name} is not a readable zarr store ({_one_line(exc)})") from exc
    return data, source, closers


_RSCIIO_MODULES = {
    ".dm3": "digitalmicrograph",
    ".dm4": "digitalmicrograph",
    ".mib": "quantumdetector",
    ".blo": "blockfile",
}


def _rsciio_reader(suffix: str):
    """RosettaSciIO's ``file_reader`` for ``suffix``, imported only now (it is GPL, optional)."""
    import importlib

    try:
        import dask.array  # noqa: F401  (the lazy readers return dask arrays)

        module = importlib.import_module(f"rsciio.{_RSCIIO_MODULES[suffix]}")
    except ImportError as exc:
        missing = f" (missing {exc.name})" if exc.name not in (None, "rsciio", "dask") else ""
        raise GhostmapError(
            f"reading {suffix} files needs the optional RosettaSciIO reader{missing}: "
            "pip install 'ghostmap[formats]'"
        ) from exc
    return module.file_reader


def _open_rsciio(path: Path, suffix: str, scan_shape: tuple[int, int] | None) -> Scan:
    file_reader = _rsciio_reader(suffix)
    name = str(path)
    files: tuple[Path, ...] = (path,)
    try:
        if suffix == ".mib":
            data, files = _open_mib(file_reader, path, scan_shape)
        elif suffix == ".blo":
            data = _nav_first(file_reader(name, lazy=True)[0])
        else:
            data = _dm_scan_data(file_reader(name, lazy=True), name)
    except GhostmapError:
        raise
    except Exception as exc:  # the readers raise anything from struct.error to KeyError
        raise GhostmapError(f"{name} could not be read as a {suffix} file ({_one_line(exc)})") from exc
    return Scan(data, name, files=files)


def _nav_first(signal: dict, swap: bool = False):
    """Put RosettaSciIO's navigation axes first and signal axes last.

    ``swap`` exchanges the two roles, for files whose reader labels them backwards.
    """
    data, axes = signal["data"], signal["axes"]
    nav = [a["index_in_array"] for a in axes if a["navigate"]]
    sig = [a["index_in_array"] for a in axes if not a["navigate"]]
    if swap:
        nav, sig = sig, nav
    order = tuple(nav + sig)
    if len(nav) == 2 and len(sig) == 2 and order != (0, 1, 2, 3):
        data = data.transpose(order)
    return data


def _dm_order_swapped(signal: dict) -> bool | None:
    """The image's ``Meta Data.Data Order Swapped`` tag, or None if it has none."""
    image = signal.get("original_metadata", {}).get("ImageList", {}).get("TagGroup0", {})
    value = image.get("ImageTags", {}).get("Meta Data", {}).get("Data Order Swapped")
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def _dm_scan_data(signals: list[dict], name: str):
    """Pick the 4-D image of a DM file and order it (scan_row, scan_col, det_row, det_col).

    GMS writes 4-D STEM data in two layouts, both read by RosettaSciIO as the reversed
    DM dimension list. Files tagged ``Data Order Swapped = 1`` (newer GMS) list the
    detector axes first, so NumPy sees (scan_y, scan_x, det_y, det_x) as RosettaSciIO
    labels it. Untagged files (older GMS, the DM default) list the scan axes first, so
    NumPy sees (det_y, det_x, scan_y, scan_x) while RosettaSciIO still calls the last
    two axes the signal; there the roles must be swapped.
    """
    four_d = [s for s in signals if len(s["data"].shape) == 4]
    if len(four_d) != 1:
        shapes = ", ".join(_shape_text(s["data"].shape) for s in signals) or "none"
        what = "no 4-D image" if not four_d else f"{len(four_d)} 4-D images"
        raise GhostmapError(f"{name} holds {what} (images there: {shapes}); ghostmap needs one 4-D scan")
    signal = four_d[0]
    return _nav_first(signal, swap=not _dm_order_swapped(signal))


def _open_mib(file_reader, path: Path, scan_shape: tuple[int, int] | None):
    hdr = path.with_suffix(".hdr")
    nav = None if scan_shape is None else (int(scan_shape[1]), int(scan_shape[0]))  # rsciio wants (x, y)
    data = _nav_first(file_reader(str(path), lazy=True, navigation_shape=nav)[0])
    if scan_shape is not None and data.ndim == 3 and data.shape[0] == math.prod(scan_shape):
        data = data.reshape(tuple(scan_shape) + data.shape[1:])  # rsciio squeezes a 1-wide scan
    if scan_shape is None and (data.ndim != 4 or (data.shape[1] == 1 and data.shape[0] > 1)):
        raise GhostmapError(
            f"could not determine the scan shape of {path} (no usable .hdr file); "
            "pass scan_shape=(rows, cols) or --scan-shape"
        )
    return data, ((path, hdr) if hdr.exists() else (path,))


def _lazy_array_types() -> tuple[type, ...]:
    """zarr and dask array classes, if those libraries are already imported.

    An object can only be one of them if its library is loaded, so nothing is imported.
    """
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
    """
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


# ---------------------------------------------------------------------- time series


class _TimeStep:
    """One time step of a lazy 5-D array, seen as a lazy 4-D one (nothing is read)."""

    def __init__(self, data, t: int):
        self._data, self._t = data, t
        self.shape, self.dtype = tuple(data.shape[1:]), data.dtype

    def __getitem__(self, key):
        return self._data[(self._t, *key) if isinstance(key, tuple) else (self._t, key)]


class TimeSeries(_OpenFiles):
    """A lazily opened 5-D dataset (time, scan_row, scan_col, det_row, det_col): one Scan per step."""

    def __init__(self, data, source: str, path: Path, closers=()):
        if len(data.shape) != 5:
            raise GhostmapError(f"{source} has shape {_shape_text(data.shape)}, not 5-D {SERIES_AXES}")
        self.data, self.source, self.path, self._closers = data, source, path, list(closers)

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getitem__(self, t: int) -> Scan:
        if not 0 <= t < len(self):
            raise IndexError(f"time step {t} is outside the series' {len(self)} steps")
        data = self.data
        if isinstance(data, np.memmap):  # a fresh map per step keeps plain file reads working
            step_bytes = math.prod(data.shape[1:]) * data.dtype.itemsize
            view = np.memmap(data.filename, data.dtype, "r", data.offset + t * step_bytes, data.shape[1:])
        else:
            view = _TimeStep(data, t)
        return Scan(view, f"{self.source}[{t}]", files=(self.path,))



def time_series_length(path: str | os.PathLike, dataset: str | None = None) -> int | None:
    """Number of time steps if ``path`` holds a 5-D series, None if it holds a single scan.

    A named ``dataset`` decides by its own dimensions; otherwise a file whose only
    candidate is one 5-D array (and no 4-D one) is a series. Unreadable files give None,
    so that :func:`open_scan` reports what is wrong with them.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            data = np.load(path, mmap_mode="r", allow_pickle=False)
            return int(data.shape[0]) if getattr(data, "ndim", 0) == 5 and dataset is None else None
        if suffix in HDF5_SUFFIXES:
            with h5py.File(path, "r") as f:
                arrays = _hdf5_arrays(f)
        elif suffix in ZARR_SUFFIXES:
            import zarr

            node = zarr.open(str(path), mode="r") if suffix != ".zip" else None
            if node is None:
                return None
            arrays = _zarr_arrays(node) if hasattr(node, "arrays") else [("/", tuple(node.shape))]
        else:
            return None
    except Exception:  # noqa: BLE001 - open_scan gives the proper message
        return None
    shapes = dict(arrays)
    if dataset is not None:
        shape = shapes.get("/" + dataset.strip("/"))
        return int(shape[0]) if shape is not None and len(shape) == 5 else None
    four_d = [s for s in shapes.values() if len(s) == 4]
    five_d = [s for s in shapes.values() if len(s) == 5]
    return int(five_d[0][0]) if not four_d and len(five_d) == 1 else None


def open_time_series(path: str | os.PathLike, dataset: str | None = None) -> TimeSeries:
    """Open a 5-D series (time, scan_row, scan_col, det_row, det_col) in .npy, HDF5 or zarr lazily."""
    path = Path(path)
    if not path.exists():
        raise GhostmapError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            data = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:  # noqa: BLE001
            raise GhostmapError(f"{path} is truncated or not a valid .npy file") from exc
        return TimeSeries(data, str(path), path)
    if suffix in HDF5_SUFFIXES:
        data, source, closers = _hdf5_array(path, dataset, 5)
    elif suffix in ZARR_SUFFIXES:
        data, source, closers = _zarr_array(path, dataset, 5)
    else:
        raise GhostmapError(f"a time series must be .npy, HDF5 or zarr, not {path.name}")
    try:
        return TimeSeries(data, source, path, closers)
    except GhostmapError:
        for close in closers:
            close()
        raise


# --------------------------------------------------------------------- computations


def rows_per_block(scan: Scan, max_bytes: int = 256 * 2**20) -> int:
    """How many scan rows fit in ``max_bytes`` of memory (at least 1)."""
    row_bytes = scan.shape[1] * scan.shape[2] * scan.shape[3] * scan.dtype.itemsize
    return int(max(1, min(scan.shape[0], max_bytes // max(row_bytes, 1))))


def _sample_rows(scan: Scan, max_patterns: int) -> np.ndarray:
    """Evenly spaced scan rows holding about ``max_patterns`` patterns in all."""
    rows, cols = scan.scan_shape
    n = min(rows, max(1, int(max_patterns) // cols))
    return np.unique(np.linspace(0, rows - 1, n).round().astype(int))


def mean_and_max_pattern(scan, max_patterns: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Mean (float64) and pixel-wise maximum patterns over an evenly strided subset of scan
    rows, in one pass: cheap on huge scans, exact when the subset covers every row."""
    scan = as_scan(scan)
    total = np.zeros(scan.detector_shape, dtype=np.float64)
    maximum, count = None, 0
    for row in _sample_rows(scan, max_patterns):
        block = scan.read_rows(row, row + 1)[0]
        total += block.sum(axis=0, dtype=np.float64)
        block_max = block.max(axis=0)
        maximum = block_max if maximum is None else np.maximum(maximum, block_max)
        count += block.shape[0]
    return total / count, maximum


def mean_pattern(scan, max_patterns: int = 4096) -> np.ndarray:
    """Mean diffraction pattern (float64) over an evenly strided subset of scan rows."""
    return mean_and_max_pattern(scan, max_patterns)[0]


def max_pattern(scan, max_patterns: int = 4096) -> np.ndarray:
    """Pixel-wise maximum pattern over an evenly strided subset of scan rows."""
    return mean_and_max_pattern(scan, max_patterns)[1]


def virtual_image(scan, mask: np.ndarray) -> np.ndarray:
    """Sum of each pattern inside a boolean detector mask, (rows, cols) float64.

    Streams over blocks of scan rows, so memory stays bounded whatever the scan size.
    """
    scan = as_scan(scan)
    mask = np.asarray(mask)
    if mask.shape != scan.detector_shape:
        raise GhostmapError(
            f"the detector mask has shape {_shape_text(mask.shape)} but the patterns of "
            f"{scan.source} are {_shape_text(scan.detector_shape)}"
        )
    mask = mask.astype(bool)
    image = np.zeros(scan.scan_shape, dtype=np.float64)
    if not mask.any():
        return image
    # only the mask's bounding box matters; integer sums stay exact and are faster
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    sub = mask[box]
    exact_int = scan.dtype.kind in "biu" and scan.dtype.itemsize <= 4
    total_type = np.int64 if exact_int else np.float64
    for start, block in scan.iter_rows(rows_per_block(scan, 64 * 2**20)):
        crop = block[:, :, box[0], box[1]]
        if not sub.all():
            crop = np.where(sub, crop, 0)
        image[start : start + block.shape[0]] = crop.sum(axis=(2, 3), dtype=total_type)
    return image


def _radial_profile(image: np.ndarray, center: tuple[float, float]) -> np.ndarray:
    """Mean intensity in 1-pixel-wide rings around ``center``."""
    rr, cc = np.indices(image.shape)
    radius = np.hypot(rr - center[0], cc - center[1]).round().astype(int)
    sums = np.bincount(radius.ravel(), weights=image.ravel())
    counts = np.bincount(radius.ravel())
    return sums / np.maximum(counts, 1)


def _half_radius(profile: np.ndarray, floor: float) -> tuple[float, float]:
    """Radius where the profile first falls half-way from ``floor`` to its peak, and that level."""
    peak_at = int(np.argmax(profile[: max(2, len(profile) // 4)]))
    half = floor + 0.5 * (profile[peak_at] - floor)
    below = np.flatnonzero(profile[peak_at:] < half)
    if below.size == 0:
        return float(len(profile) - 1), half
    r = peak_at + int(below[0])
    if r == 0:
        return 0.5, half
    # the crossing, interpolated between ring r-1 (above half) and ring r (below)
    above, under = profile[r - 1], profile[r]
    return (r - 1) + (above - half) / max(above - under, 1e-12), half


def bright_field_mask(mean: np.ndarray) -> np.ndarray:
    """Boolean disk over the central beam, found from the mean pattern.

    The central beam is taken as the brightest disk: the maximum of the smoothed
    pattern (a 3x3 median first removes hot pixels). Its radius is where the radial profile around that point falls half-way
    from the background to its peak. The centre is then refined as the centroid of the
    pixels above that level within the disk, which touching Bragg disks cannot reach.
    """
    from scipy import ndimage

    mean = np.nan_to_num(np.asarray(mean, dtype=np.float64))
    if mean.ndim != 2 or mean.size == 0:
        raise GhostmapError(f"the mean pattern has shape {_shape_text(mean.shape)}; it must be 2-D")
    mean = ndimage.median_filter(mean, size=3, mode="nearest")
    smoothed = ndimage.gaussian_filter(mean, sigma=max(1.0, min(mean.shape) / 64))
    center = np.unravel_index(int(np.argmax(smoothed)), mean.shape)
    floor = float(np.percentile(mean, 5))
    rr, cc = np.indices(mean.shape)
    for _ in range(3):
        radius, half = _half_radius(_radial_profile(mean, center), floor)
        bright = (np.hypot(rr - center[0], cc - center[1]) <= radius + 1) & (mean >= half)
        if not bright.any():
            break
        center = (float(rr[bright].mean()), float(cc[bright].mean()))
    radius, _ = _half_radius(_radial_profile(mean, center), floor)
    mask = np.hypot(rr - center[0], cc - center[1]) <= max(radius, 0.5)
    if not mask.any():
        mask[int(round(center[0])), int(round(center[1]))] = True
    return mask


def describe(scan) -> dict:
    """A JSON-serialisable summary of a scan: where it is, its shape, type and size."""
    scan = as_scan(scan)
    return {
        "source": scan.source,
        "scan_shape": list(scan.scan_shape),
        "detector_shape": list(scan.detector_shape),
        "dtype": str(scan.dtype),
        "n_patterns": int(scan.n_patterns),
        "nbytes": int(scan.nbytes),
        "file_size": None if scan.file_size is None else int(scan.file_size),
    }


def save_preview(scan, path: str | os.PathLike) -> None:
    """Write a PNG: the mean pattern on a log scale beside the virtual bright-field image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ghostmap.atomic import atomic_path

    scan = as_scan(scan)
    mean = mean_pattern(scan)
    mask = bright_field_mask(mean)
    bright_field = virtual_image(scan, mask)

    fig = Figure(figsize=(10, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    shown = np.log10(np.clip(mean - mean.min(), 0, None) + max(mean.max() - mean.min(), 1e-12) * 1e-4)
    im = left.imshow(shown, cmap="magma")
    left.contour(mask, levels=[0.5], colors="cyan", linewidths=0.8)
    left.set_title("mean pattern (log10)")
    left.set_xlabel("det_col")
    left.set_ylabel("det_row")
    fig.colorbar(im, ax=left, shrink=0.8)
    im = right.imshow(bright_field, cmap="gray")
    right.set_title("virtual bright field")
    right.set_xlabel("x (scan column)")
    right.set_ylabel("y (scan row)")
    fig.colorbar(im, ax=right, shrink=0.8)
    fig.suptitle(_one_line(f"{scan.source}  scan {scan.scan_shape}  detector {scan.detector_shape}"))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
