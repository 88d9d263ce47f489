"""Binned counts to network inputs, in NumPy alone.

The last steps of preprocessing (see :mod:`ghostmap.preprocessing` for the whole recipe):
pooling across scan rows, the intensity transform and the per-pattern normalisation. Like
:mod:`ghostmap.counts` this imports no torch, so the same code runs in the background thread
that reads the scan, for training, for torch's predictions and for ``ghostmap predict``'s
ONNX Runtime path alike: the network's thread only ever runs the network.

Each pattern is transformed and normalised a few at a time, while it is in the cache: on the
paper-size scan this took 0.3 core-seconds against 1.0 for the same steps over whole blocks
in torch (BENCHMARKS.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["Finish", "InputBlock", "NetworkInputs", "pool_rows", "pool_segment"]


@dataclass(eq=False)
class Finish:
    """Intensity transform and per-pattern normalisation of binned counts.

    Parameters
    ----------
    transform : str
        ``"sqrt"``, ``"log"`` (log1p), ``"gamma"`` or ``"none"``, applied to the counts
        clipped at zero.
    gamma : float
        Exponent of the ``"gamma"`` transform.
    normalise : str
        ``"standard"`` (each pattern to zero mean and unit sample standard deviation) or ``"none"``.
    reference : numpy.ndarray or None
        A transformed mean pattern (h, w) subtracted after the transform, or None.

    Example
    -------
    >>> x = Finish()(np.arange(8, dtype=np.float32).reshape(1, 2, 4))
    >>> round(float(x.mean()), 6), round(float(x.std(ddof=1)), 6)
    (0.0, 1.0)
    """

    transform: str = "sqrt"
    gamma: float = 0.5
    normalise: str = "standard"
    reference: np.ndarray | None = None

    @classmethod
    def from_dict(cls, d: dict, reference: np.ndarray | None = None) -> "Finish":
        """From a preprocessing description (``Preprocessing.to_dict()``, a model.json's
        ``"preprocessing"``) and its reference pattern, used only where ``subtract_mean`` is set."""
        return cls(str(d.get("transform", "sqrt")), float(d.get("gamma", 0.5)), str(d.get("normalise", "standard")),
                   reference if d.get("subtract_mean") else None)

    def same_as(self, other: "Finish") -> bool:
        """Whether ``other`` computes the same inputs."""
        if (self.transform, self.gamma, self.normalise) != (other.transform, other.gamma, other.normalise):
            return False
        if self.reference is None or other.reference is None:
            return self.reference is None and other.reference is None
        return bool(np.array_equal(self.reference, other.reference))

    def __call__(self, counts, chunk: int = 8, out: np.ndarray | None = None) -> np.ndarray:
        """Network inputs float32 (..., h, w) from binned counts (..., h, w), each (h, w) pattern
        (each channel of each position) on its own; ``counts`` is left as it is unless it is
        ``out`` (a C-contiguous float32 array of its shape, written in place).

        ``chunk`` patterns at a time (8 of 128 x 128: 512 kB, within a core's cache).
        """
        counts = np.asarray(counts)
        flat = counts.reshape(-1, counts.shape[-2] * counts.shape[-1])
        n = flat.shape[0]
        out = np.empty(flat.shape, np.float32) if out is None else out.reshape(flat.shape)
        reference = None if self.reference is None else np.asarray(self.reference, np.float32).reshape(1, -1)
        for i in range(0, n, chunk):
            x = out[i : i + chunk]
            np.maximum(flat[i : i + chunk], 0, out=x, casting="unsafe")
            if self.transform == "sqrt":
                np.sqrt(x, out=x)
            elif self.transform == "log":
                np.log1p(x, out=x)
            elif self.transform == "gamma":
                np.power(x, np.float32(self.gamma), out=x)
            if reference is not None:
                x -= reference
            if self.normalise == "standard":
                x -= x.mean(axis=1, keepdims=True)
                variance = np.einsum("ij,ij->i", x, x) / max(1, x.shape[1] - 1)
                x *= (1.0 / np.maximum(np.sqrt(variance), 1e-6)).astype(np.float32)[:, None]
        return out.reshape(counts.shape)


def pool_rows(rows: dict, r0: int, r1: int, lo: int, hi: int, half: int, mode: str) -> np.ndarray:
    """Pool scan rows [r0, r1) over their neighbours within [lo, hi), from ``rows`` (scan row ->
    (cols, channels, h, w), as :meth:`ghostmap.counts.CountReduction.pool_columns` gives them):
    for each row its own counts, then the neighbours one, two ... rows away, above before below,
    then the mean (or the maximum), edges truncated. Only channel 0, the pooled patterns, is
    pooled; a second channel (each position's own pattern) is kept as it is.

    Example
    -------
    >>> rows = {r: np.full((1, 2, 1, 1), float(r), np.float32) for r in range(3)}
    >>> pool_rows(rows, 0, 3, 0, 3, 1, "mean")[:, 0, :, 0, 0].tolist()
    [[0.5, 0.0], [1.0, 1.0], [1.5, 2.0]]
    """
    first = rows[r0]
    out = np.empty((r1 - r0, *first.shape), first.dtype)
    for i, r in enumerate(range(r0, r1)):
        pool_segment(rows, r, 0, first.shape[0], lo, hi, half, mode, out[i])
    return out


def pool_segment(rows: dict, r: int, c0: int, c1: int, lo: int, hi: int, half: int, mode: str,
                 out: np.ndarray) -> np.ndarray:
    """Scan columns [c0, c1) of row ``r`` pooled across scan rows into ``out`` (c1 - c0, channels,
    h, w): one segment of :func:`pool_rows`, the same arithmetic in the same order."""
    np.copyto(out, rows[r][c0:c1])
    if half == 0:
        return out
    pooled = out[:, 0]
    count = 1
    for shift in range(1, half + 1):
        for other in (r - shift, r + shift):  # above before below
            if lo <= other < hi:
                if mode == "mean":
                    pooled += rows[other][c0:c1, 0]
                    count += 1
                else:
                    np.maximum(pooled, rows[other][c0:c1, 0], out=pooled)
    if mode == "mean":
        pooled /= np.asarray(count, out.dtype)
    return out


class InputBlock:
    """The network inputs of scan rows [r0, r1), made on demand, a few positions at a time.

    What :class:`NetworkInputs` gives with ``deferred=True``: it keeps the rows pooled across
    scan columns that its rows need and makes any range of its positions (scan row by scan
    row, then column) when asked. ``ghostmap predict`` makes each run of the network's inputs
    in the network's own thread, just before the run, while they are in that core's cache, so
    the reading thread only reads and bins. ``np.asarray(block)`` gives the whole block
    (rows, cols, channels, h, w), equal bit for bit to what ``deferred=False`` returns.

    Example
    -------
    >>> rows = {r: np.full((2, 1, 2, 2), float(r + 1), np.float32) for r in range(2)}
    >>> block = InputBlock(rows, 0, 2, 0, 2, 1, "mean", Finish(normalise="none"))
    >>> len(block), block.shape, block.make(1, 2).shape
    (4, (2, 2, 1, 2, 2), (1, 1, 2, 2))
    """

    def __init__(self, rows: dict, r0: int, r1: int, lo: int, hi: int, half: int, mode: str, finish: "Finish"):
        self.r0, self.r1, self.lo, self.hi, self.half, self.mode, self.finish = r0, r1, lo, hi, half, mode, finish
        self._rows = {r: rows[r] for r in range(max(lo, r0 - half), min(hi, r1 + half))}
        first = self._rows[r0]
        self.n_cols = first.shape[0]
        self.shape = (r1 - r0, *first.shape)
        self.dtype = first.dtype

    def __len__(self) -> int:
        return (self.r1 - self.r0) * self.n_cols

    def make(self, start: int, stop: int) -> np.ndarray:
        """Network inputs (stop - start, channels, h, w) float32 of positions [start, stop) of the
        block, counted along its scan rows."""
        out = np.empty((stop - start, *self.shape[2:]), self.dtype)
        i = start
        while i < stop:
            r, c = divmod(i, self.n_cols)
            c1 = min(self.n_cols, c + stop - i)
            pool_segment(self._rows, self.r0 + r, c, c1, self.lo, self.hi, self.half, self.mode,
                         out[i - start : i - start + c1 - c])
            i += c1 - c
        return self.finish(out, out=out)

    def __array__(self, dtype=None, copy=None):
        x = self.make(0, len(self)).reshape(self.shape)
        return x if dtype is None else x.astype(dtype, copy=False)


class NetworkInputs:
    """Blocks of binned scan rows in, network inputs for output scan rows out.

    Called with each block of rows in order (the rows pooling needs on either side of
    [start, stop) included, as :func:`ghostmap.counts.row_blocks` gives them), already
    pooled across scan columns (rows, cols, channels, h, w); returns
    ``(row_start, row_stop, inputs (rows, cols, channels, h, w))``
    for the output rows that are complete, or None while none is. Only the rows that pooling
    still needs are kept, so memory stays bounded whatever the scan size. It keeps state
    between calls, so one object serves one pass over the rows.

    Parameters
    ----------
    n_rows : int
        Scan rows in the scan.
    start, stop : int
        The output scan rows [start, stop).
    pool : int
        Odd k of the k x k pooling of probe positions (here the k scan rows).
    pool_mode : str
        ``"mean"`` or ``"max"``.
    finish : Finish
        Transform and normalisation.
    deferred : bool, optional
        Return each block's inputs as an :class:`InputBlock` that makes them when asked (in the
        thread that asks), rather than made here (default False).

    Example
    -------
    >>> stage = NetworkInputs(2, 0, 2, 3, "mean", Finish(normalise="none"))
    >>> rows = np.array([[[[1.0]]], [[[9.0]]]], np.float32)[:, :, None]
    >>> r0, r1, x = stage((0, 2), rows)
    >>> r0, r1, x.ravel().tolist()
    (0, 2, [2.2360680103302, 2.2360680103302])
    """

    def __init__(self, n_rows: int, start: int, stop: int, pool: int, pool_mode: str, finish: Finish,
                 deferred: bool = False):
        self.n_rows, self.start, self.stop = n_rows, start, stop
        self.pool, self.pool_mode, self.finish, self.deferred = pool, pool_mode, finish, deferred
        self.half = pool // 2
        self.lo, self.hi = max(0, start - self.half), min(n_rows, stop + self.half)
        self._kept: dict[int, np.ndarray] = {}
        self._next = start

    def matches(self, start: int, stop: int, pool: int, pool_mode: str, finish: Finish) -> bool:
        """Whether this stage gives the inputs of output rows [start, stop) pooled and finished so."""
        return ((self.start, self.stop, self.pool, self.pool_mode) == (start, stop, pool, pool_mode)
                and self.finish.same_as(finish))

    def __call__(self, block: tuple[int, int], reduced) -> tuple[int, int, np.ndarray | InputBlock] | None:
        b0, b1 = block
        reduced = np.asarray(reduced)
        self._kept.update((b0 + i, reduced[i]) for i in range(b1 - b0))
        ready = self.stop if b1 >= self.hi else min(self.stop, b1 - self.half)
        if ready <= self._next:
            return None
        r0 = self._next
        inputs = InputBlock(self._kept, r0, ready, self.lo, self.hi, self.half, self.pool_mode, self.finish)
        if not self.deferred:
            inputs = np.asarray(inputs)
        self._next = ready
        for r in [r for r in self._kept if r < ready - self.half]:
            del self._kept[r]
        return r0, ready, inputs
