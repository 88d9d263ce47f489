"""Raw detector counts to binned counts, in NumPy alone.

The first steps of preprocessing touch every raw pixel: bad-pixel repair, crop, binning
and pooling across scan columns (see :mod:`ghostmap.preprocessing` for the whole recipe).
They run where reading runs, in a background thread, and in NumPy, which releases the GIL
in its loops and starts no thread pool of its own, so the reader never competes with
torch's threads for the two cores. Nothing here imports torch: ``ghostmap predict``
starts reading before torch has loaded.

The arithmetic is the one :class:`ghostmap.preprocessing.Preprocessing` applies, in the
same order, so both give the same numbers to the last bit.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass, field

import numpy as np

from .errors import GhostmapError

logger = logging.getLogger(__name__)

__all__ = ["CountReduction", "bin_counts", "pool_axis"]


def bin_counts(patterns: np.ndarray, b: int, chunk: int = 4, out: np.ndarray | None = None) -> np.ndarray:
    """Sum b x b pixel blocks of integer patterns (n, h * b, w * b) -> float32 (n, h, w), exactly.

    The detector rows of a block are added first, in 32-bit integers (contiguous rows: fast),
    then the columns of the four times smaller result, a few patterns at a time so that they
    stay in the cache; only the binned counts are converted to float. Exact: the sums are
    integers far below float32's 2**24. On the paper-size scan this took 2.3 s of CPU against
    5.0 s for converting every raw pixel to float first and summing in torch (BENCHMARKS.md).

    Parameters
    ----------
    patterns : numpy.ndarray
        Integer counts (n, det_row, det_col) of at most 16 bits; rows and columns beyond a
        whole number of bins are ignored.
    b : int
        Bin factor.
    chunk : int, optional
        Patterns summed at a time: 4 patterns of 512 x 512 binned by 4 took 27 ms a scan row of
        206 patterns, 16 took 32-38 ms (their partial sums no longer fit the cache).
    out : numpy.ndarray, optional
        A float32 (n, h, w) array to write into.

    Returns
    -------
    numpy.ndarray
        float32 (n, det_row // b, det_col // b).

    Example
    -------
    >>> bin_counts(np.ones((1, 4, 4), np.uint16), 2)[0]
    array([[4., 4.],
           [4., 4.]], dtype=float32)
    """
    n, rows, cols = patterns.shape
    h, w = rows // b, cols // b
    acc = np.int32 if patterns.dtype.kind == "i" else np.uint32
    if out is None:
        out = np.empty((n, h, w), np.float32)
    if b == 1:
        out[...] = patterns[:, :h, :w]
        return out
    for i in range(0, n, chunk):
        x = patterns[i : i + chunk, : h * b, : w * b].reshape(-1, h, b, w * b)
        rows_summed = x[:, :, 0].astype(acc)
        for k in range(1, b):
            rows_summed += x[:, :, k]
        blocks = rows_summed.reshape(-1, h, w, b)
        summed = blocks[..., 0].copy()
        for k in range(1, b):
            summed += blocks[..., k]
        out[i : i + chunk] = summed
    return out


def pool_axis(x: np.ndarray, axis: int, k: int, mode: str = "mean", out: np.ndarray | None = None) -> np.ndarray:
    """Mean or max over a window of ``k`` positions along ``axis``, edges truncated (never wrapped),
    into ``out`` (an array of ``x``'s shape; default a new one).

    Example
    -------
    >>> pool_axis(np.array([0., 3., 6.], np.float32), 0, 3)
    array([1.5, 3. , 4.5], dtype=float32)
    """
    n = x.shape[axis]
    if out is None:
        out = x.copy()
    else:
        np.copyto(out, x)
    count = np.ones(n, x.dtype)
    for shift in range(1, k // 2 + 1):
        if shift >= n:
            break
        lo, hi = _narrow(x, axis, 0, n - shift), _narrow(x, axis, shift, n)
        upper = _narrow(out, axis, shift, n)
        lower = _narrow(out, axis, 0, n - shift)
        if mode == "mean":
            upper += lo
            lower += hi
            count[shift:] += 1
            count[: n - shift] += 1
        else:
            np.maximum(upper, lo, out=upper)
            np.maximum(lower, hi, out=lower)
    if mode == "mean":
        view = [1] * x.ndim
        view[axis] = n
        out /= count.reshape(view)
    return out


def _narrow(x: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, stop)
    return x[tuple(index)]


def neighbour_table(bad_pixels, shape: tuple[int, int], all_bad=None):
    """Flat indices of bad pixels (n,) and of their good 8-neighbours (n, 8), with weights
    (n, 8) that are 0 where a neighbour is missing or bad itself."""
    rows, cols = shape
    bad_mask = np.zeros(shape, bool)
    pts = [(r, c) for r, c in bad_pixels if 0 <= r < rows and 0 <= c < cols]
    for r, c in (all_bad if all_bad is not None else pts):
        if 0 <= r < rows and 0 <= c < cols:
            bad_mask[r, c] = True
    offsets = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]
    neighbours = np.zeros((len(pts), 8), np.int64)
    weights = np.zeros((len(pts), 8), np.float32)
    for i, (r, c) in enumerate(pts):
        for j, (dr, dc) in enumerate(offsets):
            rr, cc = r + dr, c + dc
            if 0 <= rr < rows and 0 <= cc < cols and not bad_mask[rr, cc]:
                neighbours[i, j] = rr * cols + cc
                weights[i, j] = 1.0
    bad = np.array([r * cols + c for r, c in pts], np.int64)
    return bad, neighbours, weights


@dataclass
class CountReduction:
    """Bad-pixel repair, crop, bin and pooling across scan columns of integer counts.

    The part of a :class:`ghostmap.preprocessing.Preprocessing` that works on raw counts
    (``Preprocessing.count_reduction()`` gives it; :meth:`from_dict` makes it from a model's
    JSON without importing torch).

    Parameters
    ----------
    bin : int
        Sum ``bin`` x ``bin`` detector pixels.
    crop : tuple of int or None
        Detector window (row_start, row_stop, col_start, col_stop), applied before binning.
    bad_pixels : tuple of (int, int)
        Detector (row, col) pixels replaced by the mean of their good neighbours.
    pool : int
        Odd k of the k x k pooling; here only the k probe positions along a scan row.
    pool_mode : str
        ``"mean"`` or ``"max"``.
    own_pattern : bool
        Keep each position's own pattern beside the pooled one, as a second channel
        (:meth:`pool_columns`); see :class:`ghostmap.preprocessing.Preprocessing`.

    Example
    -------
    >>> reduction = CountReduction(bin=2)
    >>> reduction.reduce(np.ones((3, 4, 4), np.uint16)).shape
    (3, 2, 2)
    """

    bin: int
    crop: tuple[int, int, int, int] | None = None
    bad_pixels: tuple[tuple[int, int], ...] = ()
    pool: int = 1
    pool_mode: str = "mean"
    own_pattern: bool = False
    _tables: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict) -> "CountReduction":
        """From a preprocessing description (``Preprocessing.to_dict()``, a model.json's
        ``"preprocessing"``) whose bin factor is fixed."""
        if d.get("bin") is None:
            raise ValueError("the preprocessing's bin factor is not fixed yet")
        crop = d.get("crop")
        return cls(int(d["bin"]), tuple(int(v) for v in crop) if crop is not None else None,
                   tuple((int(r), int(c)) for r, c in d.get("bad_pixels", ())), int(d.get("pool", 1)),
                   str(d.get("pool_mode", "mean")), bool(d.get("own_pattern", False)))

    def window(self, detector_shape: tuple[int, int]) -> tuple[int, int, int, int]:
        """(row_start, col_start, h, w): where the binned window starts and its binned size."""
        r0, r1, c0, c1 = self.crop if self.crop is not None else (0, detector_shape[0], 0, detector_shape[1])
        return r0, c0, (r1 - r0) // self.bin, (c1 - c0) // self.bin

    def fits(self, patterns) -> bool:
        """Whether :meth:`reduce` sums ``patterns`` exactly: NumPy integers of at most 16 bits
        (with bin 1 there is no sum: the counts only become float32, also exactly)."""
        return isinstance(patterns, np.ndarray) and self.fits_dtype(patterns.dtype)

    def fits_dtype(self, dtype) -> bool:
        """Whether counts of ``dtype`` are summed exactly here (see :meth:`fits`)."""
        dtype = np.dtype(dtype)
        return dtype.kind in "iu" and dtype.itemsize <= 2

    def reduce(self, patterns: np.ndarray) -> np.ndarray:
        """Raw integer counts (n, det_row, det_col) -> repaired, cropped, binned float32 (n, h, w)."""
        r0, c0, h, w = self.window(patterns.shape[1:])
        b = self.bin
        binned = bin_counts(patterns[:, r0 : r0 + h * b, c0 : c0 + w * b], b)
        self.repair(patterns, binned)
        return binned

    def reduce_rows(self, rows: np.ndarray) -> np.ndarray:
        """Raw scan rows (rows, cols, det_row, det_col) -> reduced, pooled across scan columns
        (rows, cols, channels, h, w) float32 (:meth:`pool_columns`)."""
        n_rows, n_cols = rows.shape[:2]
        reduced = self.reduce(rows.reshape(-1, *rows.shape[2:]))
        return self.pool_columns(reduced.reshape(n_rows, n_cols, *reduced.shape[1:]))

    def pool_columns(self, reduced: np.ndarray) -> np.ndarray:
        """Pool reduced rows (rows, cols, h, w) across scan columns: (rows, cols, channels, h, w),
        the pooled patterns in channel 0 and, with ``own_pattern``, the unpooled ones in channel 1
        (pooling across scan rows, :func:`ghostmap.inputs.pool_rows`, leaves that one alone).

        Example
        -------
        >>> rows = np.arange(3, dtype=np.float32).reshape(1, 3, 1, 1)
        >>> CountReduction(1, pool=3, own_pattern=True).pool_columns(rows)[0, :, :, 0, 0].tolist()
        [[0.5, 0.0], [1.0, 1.0], [1.5, 2.0]]
        """
        if not self.own_pattern:
            return (pool_axis(reduced, 1, self.pool, self.pool_mode) if self.pool > 1 else reduced)[:, :, None]
        out = np.empty((*reduced.shape[:2], 2, *reduced.shape[2:]), reduced.dtype)
        out[:, :, 1] = reduced
        pool_axis(reduced, 1, self.pool, self.pool_mode, out=out[:, :, 0])
        return out

    def reduce_file(self, file, offset: int, n: int, pattern_shape: tuple[int, int], dtype,
                    bright_field_index=None, chunk: int = 4) -> tuple[np.ndarray, np.ndarray | None]:
        """Read ``n`` raw patterns stored one after another from byte ``offset`` of an open
        binary ``file`` and reduce them as :meth:`reduce` does.

        The patterns are read ``chunk`` at a time into one small buffer that stays in the
        processor's cache, where binning, repair and the bright-field sums find them; on the
        paper-size scan this took 1.4-1.5 core-s against 2.2 for the same steps on a memory map
        of each block, whose page faults cost more than the copy (BENCHMARKS.md).

        Parameters
        ----------
        file : binary file
            Opened unbuffered (``open(path, "rb", buffering=0)``).
        offset : int
            Byte offset of the first pattern.
        n : int
            Patterns to read.
        pattern_shape : tuple of int
            (det_row, det_col).
        dtype : numpy dtype
            Native integer counts that :meth:`fits_dtype`.
        bright_field_index : numpy.ndarray, optional
            Flat detector indices whose sum is wanted for each pattern.
        chunk : int, optional
            Patterns read at a time: 4 of 512 x 512 16-bit counts are 2 MiB, a core's L2 cache here.

        Returns
        -------
        reduced : numpy.ndarray
            float32 (n, h, w).
        bright_field : numpy.ndarray or None
            float64 (n,) sums over ``bright_field_index``.

        Raises
        ------
        GhostmapError
            When the file ends before the last pattern.
        """
        r0, c0, h, w = self.window(pattern_shape)
        b = self.bin
        dtype = np.dtype(dtype)
        buffer = np.empty((chunk, *pattern_shape), dtype)
        view = memoryview(buffer).cast("B")
        pattern_bytes = buffer[0].nbytes
        reduced = np.empty((n, h, w), np.float32)
        bright = None if bright_field_index is None else np.empty(n, np.float64)
        pixels, bins, operator = self.repair_operator(pattern_shape)
        to_repair = np.empty((n, pixels.size), dtype)  # repaired once, after the loop: scipy's call costs
        file.seek(offset)
        for i in range(0, n, chunk):
            k = min(chunk, n - i)
            want = k * pattern_bytes
            got = file.readinto(view[:want])
            while got and got < want:  # a short read of a pipe or network file system
                more = file.readinto(view[got:want])
                got += more or 0
                if not more:
                    break
            if got != want:
                raise GhostmapError(f"{getattr(file, 'name', 'the file')} is truncated")
            raw = buffer[:k]
            bin_counts(raw[:, r0 : r0 + h * b, c0 : c0 + w * b], b, out=reduced[i : i + k])
            if pixels.size:
                np.take(raw.reshape(k, -1), pixels, axis=1, out=to_repair[i : i + k])
            if bright is not None:
                bright[i : i + k] = raw.reshape(k, -1)[:, bright_field_index].sum(-1, dtype=np.float64)
        if pixels.size:
            _add_repair(to_repair, reduced, bins, operator)
        return reduced, bright

    def repair_table(self, detector_shape: tuple[int, int]):
        """(bad, neighbours, weights, target bin) for the bad pixels inside the binned window,
        built once per detector shape."""
        shape = tuple(int(v) for v in detector_shape)
        if shape not in self._tables:
            r0, c0, h, w = self.window(shape)
            b = self.bin
            inside = [(r, c) for r, c in self.bad_pixels if r0 <= r < r0 + h * b and c0 <= c < c0 + w * b]
            bad, neighbours, weights = neighbour_table(inside, shape, all_bad=self.bad_pixels)
            target = np.array([((r - r0) // b) * w + (c - c0) // b for r, c in inside], np.int64)
            self._tables[shape] = (bad, neighbours, weights, target)
        return self._tables[shape]

    def repair_operator(self, detector_shape: tuple[int, int]):
        """(pixels, bins, operator): :meth:`repair_table` as one sparse linear map, built once per
        detector shape. ``operator`` (bins x pixels, CSR) takes the counts at the flat detector
        indices ``pixels`` (bad pixels and their good neighbours) to what the repair adds to the
        flat binned indices ``bins``."""
        shape = ("operator", *(int(v) for v in detector_shape))
        if shape not in self._tables:
            bad, neighbours, weights, target = self.repair_table(detector_shape)
            if bad.size == 0:  # nothing to repair: no need for SciPy (0.1 s to import)
                self._tables[shape] = (np.zeros(0, np.int64), np.zeros(0, np.int64), None)
                return self._tables[shape]
            from scipy import sparse

            share = weights.astype(np.float64) / np.maximum(weights.sum(-1, keepdims=True), 1)
            rows = np.concatenate([np.repeat(target, neighbours.shape[1]), target])
            cols = np.concatenate([neighbours.ravel(), bad])
            values = np.concatenate([share.ravel(), -np.ones(bad.size)])
            keep = values != 0
            pixels, cols = np.unique(cols[keep], return_inverse=True)
            bins, rows = np.unique(rows[keep], return_inverse=True)
            operator = sparse.csr_matrix((values[keep], (rows, cols)), shape=(bins.size, pixels.size), dtype=np.float64)
            self._tables[shape] = (pixels, bins, operator)
        return self._tables[shape]

    def repair(self, raw: np.ndarray, binned: np.ndarray) -> None:
        """Replace each bad pixel's count by its good neighbours' mean, in ``binned``, in place.

        Binning sums counts, so the repair corrects the bin that holds the pixel by
        (neighbour mean - bad value): a sparse linear map of the few counts it reads
        (:meth:`repair_operator`; a third of the time of gathering the neighbours per pixel).
        """
        pixels, bins, operator = self.repair_operator(raw.shape[1:])
        if pixels.size:
            _add_repair(raw.reshape(raw.shape[0], -1)[:, pixels], binned, bins, operator)


def repair_correction(counts: np.ndarray, operator) -> np.ndarray:
    """What the repair adds to the bins of :meth:`CountReduction.repair_operator`, float64
    (n, bins), from the counts (n, pixels) at its pixels. In float64 the counts are exact and the
    neighbour means nearly so; added to float32 bins, the result is rounded once."""
    return (operator @ counts.T.astype(np.float64)).T


def _add_repair(counts: np.ndarray, binned: np.ndarray, bins: np.ndarray, operator) -> None:
    """Add the repair to ``binned`` (n, h, w) from the counts (n, pixels) at the pixels of
    :meth:`CountReduction.repair_operator`."""
    binned.reshape(binned.shape[0], -1)[:, bins] += repair_correction(counts, operator)


def block_rows(scan, max_bytes: int = 32 * 2**20) -> int:
    """Scan rows per read while streaming: one raw block stays under ``max_bytes`` (at least one row)."""
    from .io.base import rows_per_block

    return rows_per_block(scan, max_bytes)


def row_blocks(n_rows: int, pool: int, start: int, stop: int, rows_per_block: int) -> list[tuple[int, int]]:
    """The (start, stop) blocks of scan rows to read for output rows [start, stop): the
    ``pool // 2`` rows on either side that pooling needs are read too.

    Example
    -------
    >>> row_blocks(10, 3, 2, 6, 2)
    [(1, 3), (3, 5), (5, 7)]
    """
    half = pool // 2
    lo, hi = max(0, start - half), min(n_rows, stop + half)
    return [(b, min(b + rows_per_block, hi)) for b in range(lo, hi, rows_per_block)]


def scan_reader(scan, reduction: "CountReduction", start: int = 0, stop: int | None = None,
                rows_per_block: int | None = None, **options) -> "RowReader":
    """A :class:`RowReader` of the blocks that output rows [start, stop) of ``scan`` need (with
    the rows pooling needs on either side), started at once; ``options`` go to :class:`RowReader`.

    The one place the blocks are chosen, for :func:`ghostmap.preprocessing.reader_for` and for
    ``ghostmap predict``'s reading before torch loads.
    """
    n_rows = scan.scan_shape[0]
    stop = n_rows if stop is None else stop
    blocks = row_blocks(n_rows, reduction.pool, start, stop, rows_per_block or block_rows(scan))
    return RowReader(scan, reduction, blocks, **options)


class RowReader:
    """Blocks of scan rows read and reduced in a background thread from the moment it is made.

    Each block is read, its bright-field sums taken (when ``bright_field_index`` is given) and
    its integer counts reduced by ``reduction`` (:meth:`CountReduction.reduce_rows`, NumPy);
    rows that lie in a file as plain counts (:meth:`ghostmap.io.base.Scan.file_extent`) are read
    a few patterns at a time and reduced while they are in the cache (:meth:`CountReduction.reduce_file`);
    counts that ``reduction`` cannot sum exactly (floats, 32-bit integers, bin 1) go to
    ``fallback(raw)`` instead. Iterating yields ``((start, stop), reduced rows)`` in order.

    Parameters
    ----------
    scan : Scan
        The scan (:func:`ghostmap.as_scan`).
    reduction : CountReduction
        What to do to the raw counts.
    blocks : list of (int, int)
        Scan-row ranges, in order (:func:`row_blocks`).
    bright_field_index : numpy.ndarray or callable, optional
        Flat detector indices of the bright-field disk, or a function that finds them from the
        first block's raw rows (called once, in a thread of its own, while reading goes on: the
        blocks read meanwhile get their sums once it returns, from the disk's pixels alone);
        their sum for every pattern lands in ``bright_field[scan_row]`` (float64, one value per
        scan column): all of them once every block is read, any row's at once with
        :meth:`bright_field_rows`.
    ahead : int, optional
        Blocks kept ready ahead of the caller (0: read in the caller's thread).
    fallback : callable, optional
        ``fallback(raw)`` for counts ``reduction`` does not fit; without one they are an error.
    then : callable, optional
        ``then(block, reduced rows)``, also in the reading thread, in block order; what it
        returns is yielded instead of the reduced rows (:class:`ghostmap.inputs.NetworkInputs`
        makes network inputs there, so the caller's thread only runs the network).

    Example
    -------
    >>> from ghostmap.io.base import Scan
    >>> scan = Scan(np.ones((4, 3, 8, 8), np.uint16))
    >>> reader = RowReader(scan, CountReduction(bin=2), row_blocks(4, 1, 0, 4, 2))
    >>> [(block, rows.shape) for block, rows in reader]
    [((0, 2), (2, 3, 1, 4, 4)), ((2, 4), (2, 3, 1, 4, 4))]
    """

    def __init__(self, scan, reduction: CountReduction, blocks, bright_field_index=None, ahead: int = 1,
                 fallback=None, then=None):
        from .io.base import Readahead

        self.scan, self.reduction, self.fallback, self.then = scan, reduction, fallback, then
        self.bright_field_index = bright_field_index
        self.bright_field: dict[int, np.ndarray] = {}
        blocks = list(blocks)
        self._index = None if callable(bright_field_index) else bright_field_index
        self._finding = None
        self._unsummed: list[tuple[int, int]] = []  # blocks read before the bright-field disk was found
        self._summing = threading.Lock()
        if callable(bright_field_index) and blocks:
            from concurrent.futures import ThreadPoolExecutor

            finder = ThreadPoolExecutor(1, thread_name_prefix="ghostmap-bright-field")
            self._finding = finder.submit(self._find_index, bright_field_index, blocks[0])
            finder.shutdown(wait=False)
        self.blocks = blocks  # before reading starts: _read looks for the last one
        self._readahead = Readahead(self._read, blocks, ahead)

    def _find_index(self, find, block) -> np.ndarray:
        with self.scan.mapped_rows(*block) as raw:
            return np.asarray(find(np.asarray(raw)))

    def _known_index(self, wait: bool = False):
        """The bright-field disk's indices: None while they are still being found (unless ``wait``)."""
        if self._index is None and self._finding is not None and (wait or self._finding.done()):
            self._index = self._finding.result()
        return self._index

    def _read(self, block):
        index = self._known_index()
        fits = self.reduction.fits_dtype(self.scan.dtype)
        where = self.scan.file_extent(*block) if fits else None
        if where is not None:  # read a few patterns at a time into the cache and reduced there
            reduced = self._reduce_from_file(block, *where, index)
        elif fits:  # reduced in NumPy straight from the file's pages
            with self.scan.mapped_rows(*block) as raw:
                reduced = self._reduce(block, np.asarray(raw), index)
        else:
            reduced = self._reduce(block, np.asarray(self.scan.read_rows(*block)), index)  # a copy torch may write to
        if index is None and self._finding is not None:
            with self._summing:
                self._unsummed.append(block)
        if self._unsummed and (self._known_index() is not None or block == self.blocks[-1]):
            self._sum_unsummed()
        return reduced if self.then is None else self.then(block, reduced)

    def _sum_unsummed(self) -> None:
        """The bright-field sums of blocks read before the disk was found, read again from the
        file (from a .npy or plain HDF5 only the pages that hold the disk's pixels: on the
        paper-size scan a sixth of each pattern)."""
        index = self._known_index(wait=True)
        with self._summing:
            unsummed, self._unsummed = self._unsummed, []
            for block in unsummed:
                with self.scan.mapped_rows(*block) as raw:
                    self._sum_bright_field(block, np.asarray(raw), index)

    def _sum_bright_field(self, block, raw: np.ndarray, index) -> None:
        flat = raw.reshape(raw.shape[0], raw.shape[1], -1)
        for i in range(raw.shape[0]):
            self.bright_field[block[0] + i] = flat[i][:, index].sum(-1, dtype=np.float64)

    def bright_field_rows(self, start: int, stop: int) -> np.ndarray:
        """The bright-field sums of scan rows [start, stop) (rows, cols) float64, taken out of
        :attr:`bright_field`; waits for the disk to be found where rows read before it still lack them."""
        if any(row not in self.bright_field for row in range(start, stop)):
            self._sum_unsummed()
        return np.stack([self.bright_field.pop(row) for row in range(start, stop)])

    def _reduce(self, block, raw: np.ndarray, index):
        reduced = self._reduce_counts(raw)
        if index is not None:
            self._sum_bright_field(block, raw, index)
        return reduced

    def _reduce_from_file(self, block, path: str, offset: int, index):
        rows, cols = block[1] - block[0], self.scan.shape[1]
        with open(path, "rb", buffering=0) as file:
            if hasattr(os, "posix_fadvise"):  # a scan not yet in memory: the kernel reads ahead further
                os.posix_fadvise(file.fileno(), offset, rows * cols * math.prod(self.scan.shape[2:]) * self.scan.dtype.itemsize,
                                 os.POSIX_FADV_SEQUENTIAL)
            reduced, bright = self.reduction.reduce_file(file, offset, rows * cols, self.scan.shape[2:],
                                                         self.scan.dtype, index)
        if bright is not None:
            for i in range(rows):
                self.bright_field[block[0] + i] = bright[i * cols : (i + 1) * cols]
        return self.reduction.pool_columns(reduced.reshape(rows, cols, *reduced.shape[1:]))

    def _reduce_counts(self, raw: np.ndarray):
        if self.reduction.fits(raw):
            return self.reduction.reduce_rows(raw)
        if self.fallback is None:
            raise TypeError(f"{raw.dtype} counts with bin {self.reduction.bin} need a fallback reduction")
        return self.fallback(raw)

    def __iter__(self):
        return iter(self._readahead)

    @property
    def in_background(self) -> bool:
        """Whether a background thread reads."""
        return self._readahead.in_background

    @property
    def finished(self) -> bool:
        """Whether every block has been read."""
        return self._readahead.finished

    def close(self) -> None:
        """Stop reading ahead."""
        self._readahead.close()
