"""What every reader shares: the lazy :class:`Scan` and :class:`TimeSeries`, and small helpers.

A reader opens a file and hands back a lazy array whose axes are either
(scan_row, scan_col, det_row, det_col) or, for detectors that write frames flat,
(frame, det_row, det_col) together with the scan shape the file records (or None).
:func:`ghostmap.io.registry.open_scan` turns the latter into the former with
:class:`FlatFrames`, so nothing is read until rows are asked for.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ghostmap.errors import GhostmapError

logger = logging.getLogger(__name__)

AXES = "(scan_row, scan_col, det_row, det_col)"
SERIES_AXES = "(time, scan_row, scan_col, det_row, det_col)"


def one_line(text: object) -> str:
    """Collapse a message to one line, as every GhostmapError must be."""
    return " ".join(str(text).split())


def shape_text(shape) -> str:
    """``(a, b, c)`` for any sequence of integers."""
    return "(" + ", ".join(str(int(n)) for n in shape) + ")"


def check_data(shape, dtype, source: str) -> None:
    """Refuse anything that is not a 4-D array of real numbers."""
    if len(shape) != 4:
        raise GhostmapError(
            f"{source} holds a {len(shape)}-D array of shape {shape_text(shape)}; "
            f"ghostmap needs 4-D data {AXES}"
        )
    if np.dtype(dtype).kind not in "biuf":
        raise GhostmapError(f"{source} holds data of type {np.dtype(dtype)}; ghostmap needs real numbers")


def materialise(block) -> np.ndarray:
    """Turn a slice of any supported array into an in-memory, native-byte-order ndarray."""
    if hasattr(block, "compute"):  # dask
        block = block.compute()
    block = np.array(block, copy=True) if isinstance(block, np.memmap) else np.asarray(block)
    if not block.dtype.isnative:
        block = block.astype(block.dtype.newbyteorder("="))
    return np.ascontiguousarray(block)


def disk_size(path: Path) -> int:
    """Bytes of a file, or of every file inside a folder (a zarr store)."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size if path.exists() else 0


def check_range(start, stop, size: int, what: str) -> tuple[int, int]:
    """``(start, stop)`` as ints, or IndexError if they leave ``0..size``."""
    start, stop = int(start), int(stop)
    if not 0 <= start <= stop <= size:
        raise IndexError(f"{what} {start}:{stop} are outside the scan's {size} {what}")
    return start, stop


@dataclass
class FormatInfo:
    """What a reader found out about a file beyond its array: shown by ``ghostmap info``.

    ``calibrations`` is a list of ``(axis name, origin, scale, units)``.
    """

    format: str = ""
    reader: str = ""
    calibrations: list[tuple[str, float, float, str]] = field(default_factory=list)


class FlatFrames:
    """A lazy (frames, det_row, det_col) stack seen as (rows, cols, det_row, det_col).

    Indexing reads only the frames of the scan rows asked for, so memory stays bounded.

    Parameters
    ----------
    frames : array-like
        Anything with ``shape``, ``dtype`` and ``__getitem__`` over a leading frame axis.
    scan_shape : tuple of int
        (rows, cols), with rows * cols equal to the number of frames.

    Example
    -------
    >>> FlatFrames(np.zeros((6, 4, 4)), (2, 3)).shape
    (2, 3, 4, 4)
    """

    def __init__(self, frames, scan_shape: tuple[int, int]):
        rows, cols = (int(n) for n in scan_shape)
        if rows * cols != frames.shape[0]:
            raise ValueError(f"{rows} x {cols} is not {frames.shape[0]} frames")
        self.frames, self.rows, self.cols = frames, rows, cols
        self.shape = (rows, cols, *tuple(int(n) for n in frames.shape[1:]))
        self.dtype = frames.dtype
        self.ndim = 4

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        rows = key[0] if key else slice(None)
        cols = key[1] if len(key) > 1 else slice(None)
        rest = key[2:]
        r0, r1, rstep = (rows if isinstance(rows, slice) else slice(rows, rows + 1)).indices(self.rows)
        if rstep != 1:
            raise IndexError("FlatFrames reads contiguous row ranges only")
        r1 = max(r0, r1)
        block = self.frames[r0 * self.cols : r1 * self.cols]
        block = materialise(block).reshape(r1 - r0, self.cols, *self.shape[2:])
        block = block[(slice(None), cols, *rest)]
        return block[0] if not isinstance(rows, slice) else block


def _read_file_box(data: np.memmap, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
    """Scan rows ``row0:row1``, columns ``col0:col1`` of a memory-mapped .npy read with ordinary file reads.

    Slicing the map would leave every page it touched resident in this process (whole
    multi-page folios, where the kernel caches the file in them), so the resident size of a
    long prediction would grow to the file size; a plain read does not. One read per scan row,
    or one for whole rows.
    """
    n_cols = data.shape[1]
    pattern_bytes = math.prod(data.shape[2:]) * data.dtype.itemsize
    out = np.empty((row1 - row0, col1 - col0, *data.shape[2:]), dtype=data.dtype)
    view = memoryview(out.reshape(-1).view(np.uint8))
    stretches = ([(row0 * n_cols, len(view))] if (col0, col1) == (0, n_cols) else
                 [(row * n_cols + col0, (col1 - col0) * pattern_bytes) for row in range(row0, row1)])
    with open(data.filename, "rb") as f:
        done = 0
        for first_pattern, size in stretches:
            f.seek(data.offset + first_pattern * pattern_bytes)
            end = done + size
            while done < end:
                n = f.readinto(view[done:end])
                if not n:
                    raise GhostmapError(f"{data.filename} is truncated")
                done += n
    return out if out.dtype.isnative else out.astype(out.dtype.newbyteorder("="))


def _file_backed_rows(data) -> bool:
    """A C-ordered memory map whose rows can be read with plain file reads."""
    return isinstance(data, np.memmap) and data.flags.c_contiguous and getattr(data, "filename", None) is not None


def _hdf5_extent(data, start: int, stop: int, row_bytes: int) -> tuple[str, int] | None:
    """(file name, byte offset) of scan rows ``start:stop`` of an h5py dataset where they lie in
    the file as one stretch of plain native counts: no filters (compression, shuffle, checksums),
    stored in the file itself (not virtual or external), contiguous or in chunks of whole scan
    rows with all the rows asked for in one chunk; else None (h5py reads them)."""
    if type(data).__module__.split(".")[0] != "h5py":
        return None
    try:
        import h5py

        if (not isinstance(data, h5py.Dataset) or not data.dtype.isnative or data.is_virtual or data.external
                or data.id.get_create_plist().get_nfilters() or data.file.driver != "sec2"
                or data.file.userblock_size):
            return None
        if data.chunks is None:
            offset = data.id.get_offset()
            return None if offset is None else (data.file.filename, offset + start * row_bytes)
        per_chunk = data.chunks[0]
        if tuple(data.chunks[1:]) != tuple(data.shape[1:]) or start // per_chunk != (stop - 1) // per_chunk:
            return None
        first = start // per_chunk * per_chunk
        chunk = data.id.get_chunk_info_by_coord((first,) + (0,) * (data.ndim - 1))
        if chunk.byte_offset is None or chunk.size != per_chunk * row_bytes:
            return None
        return data.file.filename, chunk.byte_offset + (start - first) * row_bytes
    except Exception:  # noqa: BLE001 - an h5py without these calls, or an odd file: h5py reads it
        return None


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

    Nothing is read until rows, a box or a pattern are asked for; reads return in-memory
    arrays in native byte order. :func:`ghostmap.open_scan` and :func:`ghostmap.as_scan`
    make one from a file or an array. Close it (or use it in a ``with``) to close its files.

    Parameters
    ----------
    data : array-like
        The underlying lazy 4-D array, already in (scan_row, scan_col, det_row, det_col)
        order: anything with ``shape``, ``dtype`` and NumPy-style slicing.
    source : str, optional
        Where the data came from, used in messages.
    files : tuple of pathlib.Path, optional
        The files the data lives in (for :attr:`file_size` and error messages).
    closers : tuple of callable, optional
        Called, last first, by :meth:`close`.
    info : FormatInfo or None, optional
        The format, reader and calibrations found by the reader.

    Raises
    ------
    GhostmapError
        When ``data`` is not a 4-D array of real numbers; on reading, when a block cannot
        be decoded (a corrupt compressed chunk): one line naming the file and the scan rows.

    Examples
    --------
    >>> import numpy as np
    >>> from ghostmap import Scan
    >>> scan = Scan(np.zeros((2, 3, 32, 32), np.uint16))
    >>> scan.scan_shape, scan.detector_shape, scan.n_patterns
    ((2, 3), (32, 32), 6)
    >>> scan.read_rows(0, 1).shape
    (1, 3, 32, 32)
    """

    def __init__(
        self,
        data,
        source: str = "numpy array",
        files: tuple[Path, ...] = (),
        closers: tuple[Callable[[], Any], ...] = (),
        info: FormatInfo | None = None,
    ):
        check_data(data.shape, data.dtype, source)
        self.data = data
        self.source = source
        self.info = info or FormatInfo()
        self._files = tuple(Path(f) for f in files)
        self._closers = list(closers)

    def __repr__(self) -> str:
        return f"Scan({self.source!r}, shape={self.shape}, dtype={self.dtype})"

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(scan_rows, scan_cols, det_rows, det_cols)."""
        return tuple(int(n) for n in self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        """The data type of the counts, in native byte order."""
        dtype = np.dtype(self.data.dtype)
        return dtype if dtype.isnative else dtype.newbyteorder("=")

    @property
    def scan_shape(self) -> tuple[int, int]:
        """(scan_rows, scan_cols): the probe positions."""
        return self.shape[:2]

    @property
    def detector_shape(self) -> tuple[int, int]:
        """(det_rows, det_cols): the size of one pattern."""
        return self.shape[2:]

    @property
    def n_patterns(self) -> int:
        """The number of probe positions (patterns)."""
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
        return sum(disk_size(f) for f in self._files)

    def _read(self, row0: int, row1: int, key) -> np.ndarray:
        """``data[key]`` in memory; an undecodable block names the file and its rows."""
        try:
            return materialise(self.data[key])
        except (GhostmapError, IndexError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - h5py, zarr, numcodecs and dask raise anything
            if isinstance(self.data, np.ndarray) and not isinstance(self.data, np.memmap):
                raise
            _settle_zarr()
            bad = self._bad_rows(row0, row1, key)
            _settle_zarr()
            where = row_ranges(bad) if bad else row_ranges(range(row0, row1))
            raise GhostmapError(
                f"{self._file_name()}: {where} could not be read: corrupt or truncated data "
                f"({one_line(exc)[:200]})"
            ) from exc

    def _bad_rows(self, row0: int, row1: int, key) -> list[int]:
        """The rows of ``row0:row1`` whose read fails (only on the error path)."""
        bad = []
        for row in range(row0, row1):
            try:
                materialise(self.data[(slice(row, row + 1), *key[1:])])
            except Exception:  # noqa: BLE001
                bad.append(row)
        return bad

    def _file_name(self) -> str:
        return str(self._files[0]) if self._files else self.source

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Scan rows ``start:stop`` as an array (stop-start, cols, det_rows, det_cols)."""
        start, stop = check_range(start, stop, self.shape[0], "rows")
        if _file_backed_rows(self.data):
            return _read_file_box(self.data, start, stop, 0, self.shape[1])
        return self._read(start, stop, (slice(start, stop),))

    def file_extent(self, start: int, stop: int) -> tuple[str, int] | None:
        """(file name, byte offset) where scan rows ``start:stop`` lie in a file as one stretch of
        plain native counts in C order (a .npy; an uncompressed HDF5 dataset, contiguous or in
        chunks of whole scan rows), so they can be read with plain file reads; else None."""
        start, stop = check_range(start, stop, self.shape[0], "rows")
        data = self.data
        row_bytes = math.prod(data.shape[1:]) * data.dtype.itemsize
        if _file_backed_rows(data) and data.dtype.isnative:
            return data.filename, data.offset + start * row_bytes
        return _hdf5_extent(data, start, stop, row_bytes)

    @contextmanager
    def mapped_rows(self, start: int, stop: int) -> Iterator[np.ndarray]:
        """Scan rows ``start:stop`` for use inside a ``with`` block only: where they lie in the
        file as plain native counts (a .npy; an uncompressed HDF5 dataset, contiguous or in
        chunks of whole scan rows) they are mapped straight from the file (no copy) and unmapped
        when the block ends, so nothing stays resident; other data are read as by :meth:`read_rows`.

        Binning the paper-size scan from the mapped rows took 0.8 x the time of reading each row
        into memory first (the copy is skipped; BENCHMARKS.md).
        """
        start, stop = check_range(start, stop, self.shape[0], "rows")
        data = self.data
        where = self.file_extent(start, stop)
        if where is None:
            yield self.read_rows(start, stop)
            return
        try:
            block = np.memmap(where[0], dtype=data.dtype, mode="r", offset=where[1], shape=(stop - start, *data.shape[1:]))
        except ValueError:  # the file is shorter than the rows asked for
            raise GhostmapError(f"{where[0]} is truncated") from None
        try:
            yield block.view(np.ndarray)
        finally:
            mapping = getattr(block, "_mmap", None)
            del block
            if mapping is not None:
                try:
                    mapping.close()  # unmapped now, not when the last view is collected
                except BufferError:  # a view of the rows outlived the block: unmapped when it goes
                    pass

    def read_box(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        """The patterns of scan rows ``row0:row1`` and columns ``col0:col1``."""
        row0, row1 = check_range(row0, row1, self.shape[0], "rows")
        col0, col1 = check_range(col0, col1, self.shape[1], "columns")
        if _file_backed_rows(self.data):
            return _read_file_box(self.data, row0, row1, col0, col1)
        return self._read(row0, row1, (slice(row0, row1), slice(col0, col1)))

    def read_pattern(self, row: int, col: int) -> np.ndarray:
        """The diffraction pattern at one scan position, (det_rows, det_cols)."""
        return self.read_box(row, row + 1, col, col + 1)[0, 0]

    def iter_rows(self, rows_per_block: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start_row, block)`` covering the scan in order."""
        step = max(1, int(rows_per_block))
        for start in range(0, self.shape[0], step):
            yield start, self.read_rows(start, min(start + step, self.shape[0]))


def row_ranges(rows) -> str:
    """``scan row 3`` or ``scan rows 1, 10-11`` for a sorted list of row indices.

    Example
    -------
    >>> row_ranges([1, 10, 11])
    'scan rows 1, 10-11'
    """
    rows = list(rows)
    parts, start = [], None
    for i, row in enumerate(rows):
        if start is None:
            start = row
        if i + 1 == len(rows) or rows[i + 1] != row + 1:
            parts.append(str(start) if start == row else f"{start}-{row}")
            start = None
    return ("scan row " if len(rows) == 1 else "scan rows ") + ", ".join(parts)


def _settle_zarr() -> None:
    """After a failed read: let zarr's other chunk reads finish quietly (only if zarr is loaded)."""
    import sys

    if "zarr" in sys.modules:
        from .zarrstore import settle_pending_reads

        settle_pending_reads()


class _TimeStep:
    """One time step of a lazy 5-D array, seen as a lazy 4-D one (nothing is read)."""

    def __init__(self, data, t: int):
        self._data, self._t = data, t
        self.shape, self.dtype = tuple(data.shape[1:]), data.dtype

    def __getitem__(self, key):
        return self._data[(self._t, *key) if isinstance(key, tuple) else (self._t, key)]


class TimeSeries(_OpenFiles):
    """A lazily opened 5-D dataset (time, scan_row, scan_col, det_row, det_col): one Scan per step.

    ``data`` may be any lazy 5-D array, or an object with ``step(t)`` returning a lazy
    4-D array for time step ``t`` (the Gatan in-situ reader's slices).
    """

    def __init__(self, data, source: str, path: Path, closers=(), info: FormatInfo | None = None,
                 files: tuple[Path, ...] | None = None):
        if len(data.shape) != 5:
            raise GhostmapError(f"{source} has shape {shape_text(data.shape)}, not 5-D {SERIES_AXES}")
        self.data, self.source, self.path, self._closers = data, source, Path(path), list(closers)
        self.info = info or FormatInfo()
        self._files = tuple(files) if files is not None else (self.path,)

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getitem__(self, t: int) -> Scan:
        if not 0 <= t < len(self):
            raise IndexError(f"time step {t} is outside the series' {len(self)} steps")
        data = self.data
        if hasattr(data, "step"):
            view = data.step(t)
        elif isinstance(data, np.memmap):  # a fresh map per step keeps plain file reads working
            step_bytes = math.prod(data.shape[1:]) * data.dtype.itemsize
            view = np.memmap(data.filename, data.dtype, "r", data.offset + t * step_bytes, data.shape[1:])
        else:
            view = _TimeStep(data, t)
        return Scan(view, f"{self.source}[{t}]", files=self._files, info=self.info)


@dataclass
class Opened:
    """What a reader hands the registry: a lazy array and what it knows about it.

    ``data`` is 4-D (scan_row, scan_col, det_row, det_col), 3-D (frame, det_row,
    det_col) or, for a time series, 5-D; ``scan_shape`` is the scan shape the file
    records for a 3-D stack (None if it records none).
    """

    data: Any
    source: str
    files: tuple[Path, ...] = ()
    closers: list = field(default_factory=list)
    scan_shape: tuple[int, int] | None = None
    info: FormatInfo = field(default_factory=FormatInfo)

    def close(self) -> None:
        """Close what the reader opened (for a refusal after opening)."""
        closers, self.closers = self.closers, []
        for close in reversed(closers):
            close()


_MAX_LISTED = 8  # datasets named in an error message before "..."


def listing(found: list[tuple[str, tuple]]) -> str:
    """``name (shape), ...`` for an error message, cut after a few."""
    items = [f"{name} {shape_text(shape)}" for name, shape in found[:_MAX_LISTED]]
    if len(found) > _MAX_LISTED:
        items.append(f"... {len(found) - _MAX_LISTED} more")
    return ", ".join(items) if items else "none"


def pick_dataset(name: str, arrays: list[tuple[str, tuple]], dataset: str | None, ndim: int = 4) -> str:
    """Choose the array path to read from ``(path, shape)`` pairs found in a file.

    For a scan (``ndim`` 4) a file with no 4-D array but exactly one 3-D one gives that
    3-D frame stack; the scan shape must then come from the file or the user.
    """
    found = [(p, s) for p, s in arrays if len(s) == ndim]
    if dataset is not None:
        wanted = "/" + dataset.strip("/")
        if wanted not in dict(arrays):
            raise GhostmapError(f"{name} has no dataset '{dataset}' ({ndim}-D datasets there: {listing(found)})")
        return wanted
    if len(found) == 1:
        return found[0][0]
    if not found:
        stacks = [(p, s) for p, s in arrays if len(s) == 3]
        if ndim == 4 and len(stacks) == 1:
            return stacks[0][0]
        what = AXES if ndim == 4 else SERIES_AXES
        raise GhostmapError(
            f"{name} holds no {ndim}-D dataset (datasets there: {listing(arrays)}); ghostmap needs {ndim}-D data {what}"
        )
    raise GhostmapError(f"{name} holds {len(found)} {ndim}-D datasets ({listing(found)}); choose one with --dataset")


class Readahead:
    """``(block, read(block))`` for each block in order, read in one background thread that
    starts at once and keeps up to ``ahead`` blocks ready ahead of the caller.

    File reads and NumPy's loops release the GIL, so reading overlaps the caller's work on
    another core. Memory is bounded: at most ``ahead`` results wait, plus the one the caller
    holds. ``ahead=0`` reads each block in the caller's thread when it is asked for.

    Parameters
    ----------
    read : callable
        ``read(block)`` -> the block's data.
    blocks : sequence
        What to read, in order (e.g. ``(start, stop)`` row ranges).
    ahead : int, optional
        Blocks read ahead (1: the next one while the caller works on this one).

    Example
    -------
    >>> [data for _, data in Readahead(lambda b: b * 10, [1, 2, 3], ahead=2)]
    [10, 20, 30]
    """

    def __init__(self, read: Callable[[Any], Any], blocks, ahead: int = 1):
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        self.blocks, self.ahead, self._read = list(blocks), max(0, int(ahead)), read
        self._pending: deque = deque()
        self._submitted = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ghostmap-read") if self.ahead else None
        self._fill()

    def _fill(self) -> None:
        while self._pool is not None and self._submitted < len(self.blocks) and len(self._pending) < self.ahead:
            self._pending.append(self._pool.submit(self._read, self.blocks[self._submitted]))
            self._submitted += 1

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        try:
            for block in self.blocks:
                done = self._pending.popleft().result() if self._pool is not None else self._read(block)
                self._fill()
                yield block, done
                del done  # hold no block longer than the caller does
        finally:
            self.close()

    @property
    def in_background(self) -> bool:
        """Whether a background thread reads (``ahead`` > 0)."""
        return self._pool is not None

    @property
    def finished(self) -> bool:
        """Whether every block has been read (those not yet taken wait, read, in memory)."""
        return self._submitted == len(self.blocks) and all(f.done() for f in self._pending)

    def close(self) -> None:
        """Stop reading: blocks not started are dropped, the one being read is finished."""
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._submitted = len(self.blocks)
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def prefetched(read: Callable[[Any], Any], blocks) -> Iterator[tuple[Any, Any]]:
    """Yield ``(block, read(block))`` for each block, reading the next one in a background thread
    meanwhile: :class:`Readahead` (same ``read`` and ``blocks``) with one block ahead, started
    when iteration starts. At most two results exist at once: the one yielded and the one being read.

    Example
    -------
    >>> [data for _, data in prefetched(lambda b: b * 10, [1, 2, 3])]
    [10, 20, 30]
    """
    yield from Readahead(read, blocks, ahead=1)


def frame_range(frames, n_frames: int, what: str) -> tuple[int, int]:
    """``(start, stop)`` of a contiguous slice of a frame stack's leading axis.

    The one rule for the frame-stack readers (SIMPLON, EMPAD): steps other than 1 are refused.

    Parameters
    ----------
    frames : slice
        The slice asked for.
    n_frames : int
        Frames in the stack.
    what : str
        The stack's name, for the error.

    Returns
    -------
    tuple of int
        ``start <= stop`` within ``[0, n_frames]``.

    Example
    -------
    >>> frame_range(slice(2, None), 6, "EMPAD")
    (2, 6)
    """
    start, stop, step = frames.indices(n_frames)
    if step != 1:
        raise IndexError(f"{what} frames are read in contiguous ranges only")
    return start, max(start, stop)


def rows_per_block(scan: Scan, max_bytes: int = 256 * 2**20) -> int:
    """How many scan rows fit in ``max_bytes`` of memory (at least 1).

    Example
    -------
    >>> rows_per_block(Scan(np.zeros((4, 8, 64, 64), np.uint16)))
    4
    """
    row_bytes = scan.shape[1] * scan.shape[2] * scan.shape[3] * scan.dtype.itemsize
    return int(max(1, min(scan.shape[0], max_bytes // max(row_bytes, 1))))
