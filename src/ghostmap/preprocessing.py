"""Turn raw diffraction patterns into what the network sees, identically in training and prediction.

One :class:`Preprocessing` object is fitted to a scan before training, stored in the model's
JSON, and applied again by prediction, so the two can never disagree (the failure the
paper authors' code suffered from). The steps, in order:

1. **bad pixels** — hot pixels and dead columns, found once from the scan's mean and
   maximum patterns, are replaced in every pattern by the mean of their good neighbours;
   one hot pixel must never set the scale of a pattern.
2. **crop** a detector window, then **bin** b x b pixels by summing counts (512 -> 256 by default).
3. **pool** over the k x k neighbouring probe positions (mean by default; edges truncated,
   never wrapped) to lift faint ghost disks above the counting noise. With ``own_pattern``
   (``ghostmap train``'s default) each position's own pattern goes beside the pooled one as a
   second input channel: pooling lifts the ghost disks inside domains, but at a domain wall it
   mixes in the neighbouring domain's disks, and the own pattern tells the network what the
   probe saw where it stood.
4. **transform** the counts (sqrt by default; log or gamma), then **normalise** each pattern
   to zero mean and unit variance.

Steps 1–3 are linear, so pooling can run after binning on the much smaller binned patterns.
The arithmetic lives in torch-free modules, so that it can run in the reading thread before
torch has loaded: :mod:`ghostmap.counts` (bad pixels, crop, bin and pooling across scan
columns, for integer counts) and :mod:`ghostmap.inputs` (pooling across scan rows, transform,
normalisation). This module holds the fitted recipe and applies it to a scan; only counts
that are not 16-bit integers are reduced with torch here.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass, field
from typing import Iterator

import numpy as np
import torch

from .counts import CountReduction, RowReader, bin_counts, block_rows, row_blocks, scan_reader  # noqa: F401 - also public here
from .detector import find_bad_pixels
from .errors import GhostmapError
from .inputs import Finish, NetworkInputs

logger = logging.getLogger(__name__)

TRANSFORMS = ("sqrt", "log", "gamma", "none")
NORMALISATIONS = ("standard", "none")
POOL_MODES = ("mean", "max")


@dataclass
class Preprocessing:
    """How raw patterns become network input. Stored with the model as JSON.

    Usually made by :func:`fit_preprocessing`, which adds the scan's bad pixels (and, with
    ``subtract_mean``, its reference pattern). The steps are described in
    :mod:`ghostmap.preprocessing`.

    Parameters
    ----------
    bin : int or None, optional
        Sum ``bin`` x ``bin`` detector pixels; None: the smallest factor that brings the
        (cropped) detector to ``target_size`` pixels or fewer.
    target_size : int, optional
        The largest side of a binned pattern when ``bin`` is None.
    crop : tuple of int or None, optional
        Detector window (row_start, row_stop, col_start, col_stop), applied before binning.
    transform : str, optional
        Intensity transform of the counts: ``"sqrt"``, ``"log"`` (log1p), ``"gamma"`` or ``"none"``.
    gamma : float, optional
        Exponent of the ``"gamma"`` transform.
    normalise : str, optional
        ``"standard"`` (each pattern to zero mean, unit variance) or ``"none"``.
    pool : int, optional
        Odd size k of the k x k neighbourhood of probe positions pooled into each pattern
        (1: no pooling).
    pool_mode : str, optional
        ``"mean"`` or ``"max"`` over that neighbourhood.
    own_pattern : bool, optional
        Give the network each position's own, unpooled pattern as a second channel beside the
        pooled one (:attr:`channels`). Off here, so a model saved before it
        existed loads unchanged; :func:`ghostmap.training.training_preprocessing` turns it on
        for the compact network.
    bad_pixels : list of tuple of int, optional
        Detector (row, col) pixels replaced by the mean of their good neighbours.
    subtract_mean : bool, optional
        Subtract ``reference`` after the transform, leaving what differs between patterns.
    reference : numpy.ndarray or None, optional
        The transformed mean pattern (h, w) of the training scan, for ``subtract_mean``;
        stored in the weights file, not the JSON.

    Raises
    ------
    GhostmapError
        For an unknown transform, normalisation or pool mode, an even or non-positive
        ``pool``, ``bin`` below 1, a non-positive ``gamma`` or a crop without four numbers.

    Examples
    --------
    >>> import numpy as np
    >>> from ghostmap import Preprocessing
    >>> prep = Preprocessing(target_size=16, pool=1)
    >>> prep.output_shape((64, 64))
    (16, 16)
    >>> x = prep.apply(np.random.default_rng(0).poisson(5, (2, 64, 64)).astype(np.uint16))
    >>> tuple(x.shape), bool(abs(float(x[0].mean())) < 1e-5), round(float(x[0].std()), 3)
    ((2, 16, 16), True, 1.0)
    """

    bin: int | None = None  # None: the smallest factor that brings the detector to target_size pixels or fewer
    target_size: int = 256
    crop: tuple[int, int, int, int] | None = None  # detector (row_start, row_stop, col_start, col_stop)
    transform: str = "sqrt"
    gamma: float = 0.5
    normalise: str = "standard"
    pool: int = 3
    pool_mode: str = "mean"
    own_pattern: bool = False
    bad_pixels: list[tuple[int, int]] = field(default_factory=list)  # detector (row, col)
    subtract_mean: bool = False
    # the transformed mean pattern of the training scan (h, w); stored in the weights file, not the JSON
    reference: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise GhostmapError(f"unknown transform '{self.transform}'; choose one of {', '.join(TRANSFORMS)}")
        if self.normalise not in NORMALISATIONS:
            raise GhostmapError(f"unknown normalisation '{self.normalise}'; choose one of {', '.join(NORMALISATIONS)}")
        if self.pool_mode not in POOL_MODES:
            raise GhostmapError(f"unknown pool mode '{self.pool_mode}'; choose one of {', '.join(POOL_MODES)}")
        if self.bin is not None and int(self.bin) < 1:
            raise GhostmapError(f"bin must be at least 1, got {self.bin}")
        if int(self.pool) < 1 or int(self.pool) % 2 == 0:
            raise GhostmapError(f"pool must be an odd number of probe positions (1, 3, 5, ...), got {self.pool}")
        if self.gamma <= 0:
            raise GhostmapError(f"gamma must be positive, got {self.gamma}")
        self.bin = int(self.bin) if self.bin is not None else None
        self.pool = int(self.pool)
        self.own_pattern = bool(self.own_pattern)
        if self.crop is not None:
            self.crop = tuple(int(v) for v in self.crop)
            if len(self.crop) != 4:
                raise GhostmapError("crop needs four numbers: row_start, row_stop, col_start, col_stop")
        self.bad_pixels = [(int(r), int(c)) for r, c in self.bad_pixels]
        self._counts_cache: dict = {}

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("reference")
        d["crop"] = list(self.crop) if self.crop is not None else None
        d["bad_pixels"] = [list(p) for p in self.bad_pixels]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)

    # --- shapes --------------------------------------------------------------------------
    def check_detector(self, detector_shape: tuple[int, int]) -> None:
        """Raise if this preprocessing cannot apply to patterns of ``detector_shape``."""
        rows, cols = detector_shape
        if self.crop is not None:
            r0, r1, c0, c1 = self.crop
            if not (0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= cols):
                raise GhostmapError(f"crop {self.crop} does not fit a {rows} x {cols} detector")
        h, w = self.output_shape(detector_shape)
        if h < 8 or w < 8:
            raise GhostmapError(f"after crop and bin {self.bin} the patterns would be only {h} x {w} pixels")

    def resolve(self, detector_shape: tuple[int, int]) -> "Preprocessing":
        """Fix the automatic choices (the bin factor) for ``detector_shape``; returns self."""
        if self.bin is None:
            size = max(detector_shape) if self.crop is None else max(self.crop[1] - self.crop[0], self.crop[3] - self.crop[2])
            self.bin = max(1, -(-size // int(self.target_size)))
        return self

    @property
    def channels(self) -> int:
        """Channels of the network input: 2 (pooled, own pattern) with ``own_pattern``, else 1."""
        return 2 if self.own_pattern else 1

    def output_shape(self, detector_shape: tuple[int, int]) -> tuple[int, int]:
        """Shape (h, w) of one preprocessed pattern (each channel of a network input)."""
        self.resolve(detector_shape)
        rows, cols = detector_shape
        if self.crop is not None:
            r0, r1, c0, c1 = self.crop
            rows, cols = r1 - r0, c1 - c0
        return rows // self.bin, cols // self.bin

    # --- the per-pattern steps -------------------------------------------------------------
    def reduce(self, patterns, chunk_pixels: int = 1 << 24) -> torch.Tensor:
        """Bad-pixel fill, crop and bin: raw (n, det_row, det_col) -> float32 counts (n, h, w).

        Raw patterns are converted to float in chunks of about ``chunk_pixels`` pixels so
        that a block of large uint16 patterns never exists as float32 all at once.
        """
        if not torch.is_tensor(patterns):
            patterns = np.asarray(patterns)
            if patterns.ndim == 3:
                counts = self.resolve(patterns.shape[1:]).count_reduction()
                if counts.fits(patterns):  # the fast path: one pass over the raw counts, in NumPy
                    return torch.from_numpy(counts.reduce(patterns))
        n = patterns.shape[0]
        per = max(1, chunk_pixels // max(1, int(np.prod(patterns.shape[1:]))))
        if n > per:  # chunk by chunk into one output: no list of parts plus their concatenation
            out = None
            for i in range(0, n, per):
                part = self.reduce(patterns[i : i + per], chunk_pixels)
                if out is None:
                    out = part.new_empty((n, *part.shape[1:]))
                out[i : i + part.shape[0]] = part
            return out
        with warnings.catch_warnings():  # read-only counts (a mapped file) are fine: raw is only read
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            raw = torch.as_tensor(patterns)
        if raw.ndim != 3:
            raise ValueError(f"reduce expects (n, det_row, det_col), got shape {tuple(raw.shape)}")
        shape = tuple(raw.shape[1:])
        self.resolve(shape)
        r0, r1, c0, c1 = self.crop if self.crop is not None else (0, shape[0], 0, shape[1])
        b = self.bin
        h, w = (r1 - r0) // b, (c1 - c0) // b
        window = patterns[:, r0 : r0 + h * b, c0 : c0 + w * b]
        if torch.is_tensor(window):
            x = window.to(torch.float32).contiguous()
        else:  # numpy converts uint16 to float about 3x faster than torch
            x = torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32))
        if b > 1:  # sum b x b blocks: along columns, then along rows
            n = x.shape[0]
            x = x.view(n, h * b, w, b).sum(-1).view(n, h, b, w).sum(2)
        elif self.bad_pixels:  # float32 counts unbinned may be the caller's own (even read-only, mapped) memory
            x = x.clone()
        if self.bad_pixels:
            self._repair_bad_pixels(raw, x)
        return x

    def finish(self, counts) -> torch.Tensor:
        """Intensity transform and per-pattern normalisation of reduced counts (..., h, w):
        :meth:`finishing`'s arithmetic (NumPy, on the CPU), as a new float32 tensor."""
        device = counts.device if torch.is_tensor(counts) else torch.device("cpu")
        if torch.is_tensor(counts):
            counts = counts.detach().cpu()
        return torch.from_numpy(self.finishing()(counts)).to(device)

    def finishing(self) -> Finish:
        """The transform and normalisation as a torch-free :class:`ghostmap.inputs.Finish`."""
        return Finish(self.transform, self.gamma, self.normalise, self.reference if self.subtract_mean else None)

    def pool_block(self, counts: torch.Tensor) -> torch.Tensor:
        """Pool reduced counts (scan_row, scan_col, h, w) over k x k probe positions:
        (scan_row, scan_col, channels, h, w), with the unpooled counts as channel 1 where
        :attr:`channels` is 2.

        Edges are truncated: a position near the edge averages only the neighbours that
        exist. The caller passes the ``pool // 2`` halo rows above and below.
        """
        k = self.pool
        pooled = _pool_axis(_pool_axis(counts, 1, k, self.pool_mode), 0, k, self.pool_mode) if k > 1 else counts
        return torch.stack([pooled, counts], 2) if self.own_pattern else pooled.unsqueeze(2)

    def apply(self, patterns) -> torch.Tensor:
        """Preprocess independent patterns (n, det_row, det_col), without neighbourhood pooling."""
        return self.finish(self.reduce(patterns))

    def count_reduction(self) -> CountReduction:
        """The steps on raw counts (bad pixels, crop, bin, pooling across scan columns) as a
        NumPy-only :class:`ghostmap.counts.CountReduction`, made once while those fields stay the same."""
        if self.bin is None:
            raise GhostmapError("the bin factor is not fixed yet: call resolve(detector_shape) first")
        key = (self.bin, self.crop, tuple(self.bad_pixels), self.pool, self.pool_mode, self.own_pattern)
        if self._counts_cache.get("key") != key:
            self._counts_cache.update(key=key, counts=CountReduction(*key))
        return self._counts_cache["counts"]

    def _repair_bad_pixels(self, raw: torch.Tensor, binned: torch.Tensor) -> None:
        """:meth:`ghostmap.counts.CountReduction.repair` for float or torch counts: the same sparse
        map and float64 arithmetic (on the CPU: a few thousand values per pattern), so both paths
        give the same repaired bins."""
        from .counts import repair_correction

        pixels, bins, operator = self.count_reduction().repair_operator(tuple(raw.shape[1:]))
        if pixels.size == 0:
            return
        counts = raw.reshape(raw.shape[0], -1)[:, torch.as_tensor(pixels, device=raw.device)]
        correction = torch.from_numpy(repair_correction(counts.detach().cpu().numpy(), operator))
        flat = binned.view(binned.shape[0], -1)
        index = torch.as_tensor(bins, device=flat.device)
        flat[:, index] = (flat[:, index].detach().cpu().double() + correction).to(flat.dtype).to(flat.device)


def _pool_axis(x: torch.Tensor, axis: int, k: int, mode: str) -> torch.Tensor:
    """Mean or max over a window of k along ``axis`` with truncated edges."""
    n = x.shape[axis]
    h = k // 2
    out = x.clone()
    count = torch.ones(n, dtype=x.dtype)
    for shift in range(1, h + 1):
        if shift >= n:
            break
        lo = x.narrow(axis, 0, n - shift)
        hi = x.narrow(axis, shift, n - shift)
        if mode == "mean":
            out.narrow(axis, shift, n - shift).add_(lo)
            out.narrow(axis, 0, n - shift).add_(hi)
            count[shift:] += 1
            count[: n - shift] += 1
        else:
            upper = out.narrow(axis, shift, n - shift)
            upper.copy_(torch.maximum(upper, lo))
            lower = out.narrow(axis, 0, n - shift)
            lower.copy_(torch.maximum(lower, hi))
    if mode == "mean":
        view = [1] * x.ndim
        view[axis] = n
        out /= count.view(view)
    return out


# --- applied to a scan --------------------------------------------------------------------
def fit_preprocessing(scan, **options) -> Preprocessing:
    """A :class:`Preprocessing` for ``scan``: the given options plus the scan's bad pixels.

    Bad pixels are found from the mean and maximum of an evenly strided subset of
    patterns, which is enough for defects that sit at the same place in every pattern.
    The automatic bin factor is fixed for the scan's detector.

    Parameters
    ----------
    scan : Scan
        The (training) scan, as from :func:`ghostmap.open_scan` or :func:`ghostmap.as_scan`.
    **options
        Fields of :class:`Preprocessing` (``bin``, ``target_size``, ``crop``, ``pool``, ...).
        Given ``bad_pixels`` are kept instead of searching the scan for them.

    Returns
    -------
    Preprocessing
        Resolved for ``scan.detector_shape``, with its bad pixels and, when
        ``subtract_mean`` is set, its reference pattern.

    Raises
    ------
    GhostmapError
        For an invalid option, or a crop and bin that do not fit the detector or leave
        patterns smaller than 8 x 8 pixels.

    Examples
    --------
    >>> import ghostmap as gm
    >>> data, truth = gm.simulate_scan((4, 6), detector=64, seed=0)
    >>> prep = gm.fit_preprocessing(gm.as_scan(data), target_size=32)
    >>> prep.bin, prep.output_shape((64, 64))
    (2, (32, 32))
    """
    from .reading import mean_and_max_pattern

    prep = Preprocessing(**options).resolve(scan.detector_shape)
    prep.check_detector(scan.detector_shape)
    mean, maximum = mean_and_max_pattern(scan)
    if not options.get("bad_pixels"):
        prep.bad_pixels = find_bad_pixels(mean, maximum)
        logger.debug("%d bad detector pixels found", len(prep.bad_pixels))
    if prep.subtract_mean:
        prep.reference = reference_pattern(mean, prep)
    return prep


def reference_pattern(mean: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """The scan's mean pattern through reduce and transform: what every pattern has in common.

    Subtracting it leaves the faint, class-dependent ghost disks (plus noise) as the
    dominant structure, instead of the bright Bragg disks shared by all classes.
    """
    plain = Preprocessing(**{**prep.to_dict(), "subtract_mean": False, "normalise": "none"})
    return plain.finish(plain.reduce(mean[None].astype(np.float32)))[0].numpy()


def preprocess_positions(scan, rows, cols, prep: Preprocessing) -> torch.Tensor:
    """Network input (n, channels, h, w) for the probe positions (rows[i], cols[i]), with pooling."""
    n_rows, n_cols = scan.scan_shape
    half = prep.pool // 2
    out = []
    for r, c in zip(np.asarray(rows, int), np.asarray(cols, int)):
        r0, r1 = max(0, r - half), min(n_rows, r + half + 1)
        c0, c1 = max(0, c - half), min(n_cols, c + half + 1)
        box = np.asarray(scan.read_box(r0, r1, c0, c1))
        counts = prep.reduce(box.reshape(-1, *box.shape[2:]))
        pooled = counts.mean(0) if prep.pool_mode == "mean" else counts.amax(0)
        own = counts[(r - r0) * (c1 - c0) + (c - c0)]
        out.append(torch.stack([pooled, own]) if prep.own_pattern else pooled[None])
    if not out:
        return torch.empty((0, prep.channels, *prep.output_shape(scan.detector_shape)))
    return prep.finish(torch.stack(out))


def reader_for(scan, prep: Preprocessing, start: int = 0, stop: int | None = None,
               rows_per_block: int | None = None, ahead: int = 1, bright_field_index=None) -> RowReader:
    """A :class:`ghostmap.counts.RowReader` that yields the network inputs of scan rows
    [start, stop) (as :class:`ghostmap.inputs.NetworkInputs` returns them, None while a block
    completes no row), started at once; what :func:`stream_rows` iterates.

    Everything up to the network runs in the reading thread: integer counts are reduced in
    NumPy, any other counts by :meth:`Preprocessing.reduce` (torch), then pooled across scan
    rows, transformed and normalised in NumPy. Binning in the reading thread measured
    11.9-15.4 s end to end on the paper-size scan against 12.8-13.5 s with only the read there.
    """
    n_rows, n_cols = scan.scan_shape
    stop = n_rows if stop is None else stop
    h, w = prep.output_shape(scan.detector_shape)

    def fallback(raw: np.ndarray) -> np.ndarray:
        # float chunks of 4 M pixels (16 MB), not reduce's default 64 MB: less memory, and a scan
        # row of 206 512 x 512 patterns binned in 0.71-0.75 x the time (cache-sized chunks)
        reduced = prep.reduce(raw.reshape(-1, *raw.shape[2:]), chunk_pixels=1 << 22).view(raw.shape[0], n_cols, h, w)
        # pooling across scan columns never mixes scan rows, so it is done per block, here
        return prep.count_reduction().pool_columns(reduced.numpy())

    stage = NetworkInputs(n_rows, start, stop, prep.pool, prep.pool_mode, prep.finishing())
    return scan_reader(scan, prep.count_reduction(), start, stop, rows_per_block,
                       bright_field_index=bright_field_index, ahead=ahead, fallback=fallback, then=stage)


def stream_rows(scan, prep: Preprocessing, start: int = 0, stop: int | None = None,
                rows_per_block: int | None = None, prefetch: bool = True,
                reader: RowReader | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield (row_start, row_stop, network input (rows, cols, channels, h, w)) for scan rows [start, stop).

    Each scan row is read once; only the reduced rows that pooling still needs are kept,
    so memory stays bounded whatever the scan size. With ``prefetch`` the next block is read
    and made into inputs in a background thread. ``reader``: a reader already started by
    :func:`reader_for` for the same rows (``rows_per_block`` and ``prefetch`` are then its own).
    """
    n_rows = scan.scan_shape[0]
    stop = n_rows if stop is None else stop
    if reader is None:
        reader = reader_for(scan, prep, start, stop, rows_per_block, ahead=int(prefetch))
    elif (not isinstance(reader.then, NetworkInputs) or reader.reduction != prep.count_reduction()
          or not reader.then.matches(start, stop, prep.pool, prep.pool_mode, prep.finishing())):
        raise ValueError(f"the reader given reads other rows or preprocesses otherwise than scan rows {start}-{stop} need")
    for _, made in reader:
        if made is not None:
            r0, r1, inputs = made
            yield r0, r1, torch.from_numpy(inputs)


def preprocess_rows(scan, start: int, stop: int, prep: Preprocessing) -> torch.Tensor:
    """Network input (stop-start, cols, channels, h, w) for whole scan rows [start, stop), with pooling."""
    parts = [x for _, _, x in stream_rows(scan, prep, start, stop, prefetch=False)]
    return torch.cat(parts)
