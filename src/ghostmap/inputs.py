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

__all__ = ["Finish", "NetworkInputs", "pool_rows"]


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
        ``out`` (a C-contiguous float32 array of its shape, then written in place).

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
    out = np.empty((r1 - r0, *first.shape), first.dtype)  # filled row by row: no stacked copy to pool in
    for i, r in enumerate(range(r0, r1)):
        np.copyto(out[i], rows[r])
        pooled, count = out[i, :, 0], 1
        for shift in range(1, half + 1):
            for other in (r - shift, r + shift):  # above before below
                if lo <= other < hi:
                    if mode == "mean":
                        pooled += rows[other][:, 0]
                        count += 1
                    else:
                        np.maximum(pooled, rows[other][:, 0], out=pooled)
        if mode == "mean" and count > 1:
            pooled /= np.asarray(count, out.dtype)
    return out


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

    Example
    -------
    >>> stage = NetworkInputs(2, 0, 2, 3, "mean", Finish(normalise="none"))
    >>> rows = np.array([[[[1.0]]], [[[9.0]]]], np.float32)[:, :, None]
    >>> r0, r1, x = stage((0, 2), rows)
    >>> r0, r1, x.ravel().tolist()
    (0, 2, [2.2360680103302, 2.2360680103302])
    """

    def __init__(self, n_rows: int, start: int, stop: int, pool: int, pool_mode: str, finish: Finish):
        self.n_rows, self.start, self.stop = n_rows, start, stop
        self.pool, self.pool_mode, self.finish = pool, pool_mode, finish
        self.half = pool // 2
        self.lo, self.hi = max(0, start - self.half), min(n_rows, stop + self.half)
        self._kept: dict[int, np.ndarray] = {}
        self._next = start

    def matches(self, start: int, stop: int, pool: int, pool_mode: str, finish: Finish) -> bool:
        """Whether this stage gives the inputs of output rows [start, stop) pooled and finished so."""
        return ((self.start, self.stop, self.pool, self.pool_mode) == (start, stop, pool, pool_mode)
                and self.finish.same_as(finish))

    def __call__(self, block: tuple[int, int], reduced) -> tuple[int, int, np.ndarray] | None:
        b0, b1 = block
        reduced = np.asarray(reduced)
        self._kept.update((b0 + i, reduced[i]) for i in range(b1 - b0))
        ready = self.stop if b1 >= self.hi else min(self.stop, b1 - self.half)
        if ready <= self._next:
            return None
        r0 = self._next
        pooled = pool_rows(self._kept, r0, ready, self.lo, self.hi, self.half, self.pool_mode)
        inputs = self.finish(pooled, out=pooled) if pooled.dtype == np.float32 else self.finish(pooled)
        self._next = ready
        for r in [r for r in self._kept if r < ready - self.half]:
            del self._kept[r]
        return r0, ready, inputs
