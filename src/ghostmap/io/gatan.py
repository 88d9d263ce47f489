"""Gatan GMS in-situ 4D-STEM sessions: a ``.dm5`` director file and ``.raw`` time slices.

The ``.dm5`` is HDF5. ``/DocumentObjectList/[0]`` has the attribute ``ImageSource``;
``/ImageSourceList/[ImageSource]`` has ``ImageRef``; ``/ImageList/[ImageRef]/ImageData/Data``
is a dataset whose shape and dtype are those of one time slice, with calibrations under
``ImageData/Calibrations/Dimension/[k]`` (``Origin``, ``Scale``, ``Units``). The time
slices lie back to back in ``NAME.raw``, ``NAME.raw_1``, ``NAME.raw_2``, ... (a slice can
straddle two raw files), each in the C order of ``Data``. As for ``.dm4``, a slice tagged
``Meta Data: Data Order Swapped`` is stored (scan_row, scan_col, det_row, det_col);
untagged, (det_row, det_col, scan_row, scan_col).

Reads go through plain file reads (scan-first layout) or short-lived memory maps of one
detector row at a time (detector-first layout), so memory stays bounded by the rows asked for.
"""

from __future__ import annotations

import bisect
import logging
import math
import re
from pathlib import Path

import h5py
import numpy as np

from ghostmap.errors import GhostmapError

from .base import FormatInfo, Opened, one_line, shape_text
from .hdf5 import open_hdf5_file

logger = logging.getLogger(__name__)


def raw_files(director: Path) -> list[Path]:
    """``NAME.raw``, ``NAME.raw_1``, ``NAME.raw_2``, ... beside ``NAME.dm5``, in order, up to the first gap.

    Example
    -------
    >>> raw_files(Path("InSitu.dm5"))  # doctest: +SKIP
    [PosixPath('InSitu.raw'), PosixPath('InSitu.raw_1')]
    """
    first = director.with_suffix(".raw")
    if not first.exists():
        return []
    found, k = [first], 1
    while (nxt := director.with_suffix(f".raw_{k}")).exists():
        found.append(nxt)
        k += 1
    return found


class RawParts:
    """Raw files read as one byte stream (a slice may straddle two of them)."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self.starts = [0]
        for p in paths:
            self.starts.append(self.starts[-1] + p.stat().st_size)
        self.size = self.starts[-1]

    def read(self, offset: int, out: np.ndarray) -> None:
        """Fill ``out`` (contiguous) with the bytes at ``offset`` of the stream."""
        view = memoryview(out.reshape(-1).view(np.uint8))
        done = 0
        while done < len(view):
            at = offset + done
            k = bisect.bisect_right(self.starts, at) - 1
            if k >= len(self.paths):
                raise GhostmapError(f"{self.paths[-1]} ends before byte {at} of the time series (truncated)")
            with open(self.paths[k], "rb") as f:
                f.seek(at - self.starts[k])
                n = f.readinto(view[done : done + (self.starts[k + 1] - at)])
            if not n:
                raise GhostmapError(f"{self.paths[k]} is truncated")
            done += n

    def part_of(self, offset: int, nbytes: int) -> tuple[Path, int] | None:
        """(file, offset in it) if ``nbytes`` at ``offset`` lie in one file, else None."""
        k = bisect.bisect_right(self.starts, offset) - 1
        if k < len(self.paths) and offset + nbytes <= self.starts[k + 1]:
            return self.paths[k], offset - self.starts[k]
        return None


class RawSlice:
    """One time slice as a lazy (scan_row, scan_col, det_row, det_col) array."""

    def __init__(self, parts: RawParts, offset: int, stored: tuple[int, ...], dtype: np.dtype, scan_first: bool):
        self.parts, self.offset, self.stored, self.dtype = parts, offset, stored, np.dtype(dtype)
        self.scan_first = scan_first
        self.shape = stored if scan_first else (*stored[2:], *stored[:2])
        self.ndim = 4

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        rows = key[0] if key else slice(None)
        r0, r1, step = (rows if isinstance(rows, slice) else slice(rows, rows + 1)).indices(self.shape[0])
        if step != 1:
            raise IndexError("time slices are read in contiguous row ranges only")
        r1 = max(r0, r1)
        block = self._rows(r0, r1)[(slice(None), *key[1:])]
        return block if isinstance(rows, slice) else block[0]

    def _rows(self, r0: int, r1: int) -> np.ndarray:
        rows, cols, det_r, det_c = self.shape
        item = self.dtype.itemsize
        out = np.empty((r1 - r0, cols, det_r, det_c), dtype=self.dtype)
        if r1 == r0:
            return out
        if self.scan_first:
            row_bytes = cols * det_r * det_c * item
            self.parts.read(self.offset + r0 * row_bytes, out)
            return out
        plane = det_c * rows * cols  # elements of one detector row: (det_col, scan_row, scan_col)
        for i in range(det_r):
            start = self.offset + i * plane * item
            where = self.parts.part_of(start, plane * item)
            if where is None:  # the detector row straddles two raw files: read it whole
                sub = np.empty(plane, dtype=self.dtype)
                self.parts.read(start, sub)
            else:
                sub = np.memmap(where[0], self.dtype, "r", where[1], (plane,))
            out[:, :, i, :] = sub.reshape(det_c, rows, cols)[:, r0:r1, :].transpose(1, 2, 0)
            del sub  # unmap now, so pages read stay out of this process
        return out


class Dm5Series:
    """All time slices of a session, as a lazy 5-D array; ``step(t)`` gives slice ``t``."""

    def __init__(self, parts: RawParts, stored: tuple[int, ...], dtype: np.dtype, scan_first: bool, n: int):
        self.parts, self.stored, self.dtype, self.scan_first = parts, stored, np.dtype(dtype), scan_first
        self.slice_bytes = math.prod(stored) * self.dtype.itemsize
        first = RawSlice(parts, 0, stored, dtype, scan_first)
        self.shape = (n, *first.shape)
        self.ndim = 5

    def step(self, t: int) -> RawSlice:
        """Time slice ``t``, lazily."""
        return RawSlice(self.parts, t * self.slice_bytes, self.stored, self.dtype, self.scan_first)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        return self.step(int(key[0]))[key[1:]]


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, np.ndarray):  # DM writes strings as uint16 arrays too
        return "".join(chr(int(c)) for c in value.ravel() if c)
    return str(value)


def _order_swapped(image: h5py.Group) -> bool | None:
    meta = image.get("ImageTags/Meta Data")
    if not isinstance(meta, h5py.Group):
        return None
    value = meta.attrs.get("Data Order Swapped")
    if value is None:
        return None
    if isinstance(value, (bytes, str)):
        return _text(value).strip().lower() in ("1", "true", "yes")
    return bool(np.asarray(value).ravel()[0])


def _calibrations(data_group: h5py.Group) -> list[tuple[str, float, float, str]]:
    found = []
    dims = data_group.get("Calibrations/Dimension")
    if not isinstance(dims, h5py.Group):
        return found
    for key in sorted(dims.keys(), key=lambda k: int(re.sub(r"\D", "", k) or 0)):
        attrs = dims[key].attrs
        if "Scale" in attrs:
            found.append((f"dimension {key.strip('[]')}", float(np.asarray(attrs.get("Origin", 0.0)).ravel()[0]),
                          float(np.asarray(attrs["Scale"]).ravel()[0]), _text(attrs.get("Units", b""))))
    return found


def open_dm5(path: Path) -> Opened:
    """A GMS in-situ session as a lazy 5-D (time, scan_row, scan_col, det_row, det_col) array.

    Parameters
    ----------
    path : Path
        The ``.dm5`` director file; its ``.raw`` files lie beside it.

    Returns
    -------
    Opened
        A :class:`Dm5Series` and the files it reads.

    Example
    -------
    >>> open_dm5(Path("InSitu.dm5")).data.shape  # doctest: +SKIP
    (15, 34, 206, 512, 512)
    """
    name = str(path)
    with open_hdf5_file(path) as f:
        try:
            source = f["/DocumentObjectList/[0]"].attrs["ImageSource"]
            ref = f[f"/ImageSourceList/[{int(np.asarray(source).ravel()[0])}]"].attrs["ImageRef"]
            image = f[f"/ImageList/[{int(np.asarray(ref).ravel()[0])}]"]
            data = image["ImageData/Data"]
            stored, dtype = tuple(int(n) for n in data.shape), data.dtype
            swapped = _order_swapped(image)
            calibrations = _calibrations(image["ImageData"])
        except (KeyError, OSError, ValueError, TypeError) as exc:
            raise GhostmapError(
                f"{name} is not a GMS in-situ director file (DocumentObjectList -> ImageSourceList -> "
                f"ImageList/ImageData/Data not found: {one_line(exc)})"
            ) from exc
    if len(stored) != 4:
        raise GhostmapError(f"{name}: one time slice has shape {shape_text(stored)}; ghostmap needs 4-D 4D-STEM slices")
    if dtype.kind not in "biuf":
        raise GhostmapError(f"{name} holds data of type {dtype}; ghostmap needs real numbers")
    parts = raw_files(path)
    if not parts:
        raise GhostmapError(f"{name} has no {path.with_suffix('.raw').name} beside it (the time slices)")
    raw = RawParts(parts)
    slice_bytes = math.prod(stored) * dtype.itemsize
    n, extra = divmod(raw.size, slice_bytes)
    if extra or n == 0:
        raise GhostmapError(
            f"{name}: its {len(parts)} raw file(s) hold {raw.size} bytes, not a whole number of "
            f"{slice_bytes}-byte time slices {shape_text(stored)} {dtype} (truncated or wrong .dm5?)"
        )
    series = Dm5Series(raw, stored, dtype, bool(swapped), n)
    info = FormatInfo("Gatan GMS in-situ .dm5 + .raw", f"ghostmap.io.gatan ({len(parts)} raw files)", calibrations)
    return Opened(series, name, (path, *parts), [], None, info)
