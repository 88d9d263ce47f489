"""Apply a trained ghostmap model inside a LiberTEM pipeline: offline, on a cluster, or live.

::

    from libertem.api import Context
    from ghostmap.libertem_udf import GhostmapUDF, apply_with_libertem

    ctx = Context.make_with("inline")                # or Context() for all cores, or a cluster
    ds = ctx.load("npy", path="scan.npy")            # any 4D-STEM dataset LiberTEM reads
    result = apply_with_libertem(ctx, ds, "model")   # a ghostmap.prediction.Prediction
    # or, in your own pipeline: ctx.run_udf(ds, [GhostmapUDF(model, bright_field=mask), ...])

:class:`GhostmapUDF` gives the nav buffers ``probabilities`` (C,) float32, ``labels`` int64 and,
when a bright-field disk is given, ``bright_field`` float32 — the same numbers as
:func:`ghostmap.prediction.predict` on the same data (up to float rounding of the network's
batched arithmetic). LiberTEM datasets have navigation shape (scan_row, scan_col) and signal
shape (det_row, det_col), ghostmap's axis order; the signal shape must be the model's detector shape.

**Neighbourhood pooling and partitions.** Every frame is reduced on its worker (bad-pixel
repair, crop and bin: :meth:`ghostmap.preprocessing.Preprocessing.reduce`) and its bright-field
disk summed. The UDF takes whole frames (``process_frame``: LiberTEM's tiles may split a frame
across the detector, and repair and binning need all of it) and gathers them into batches, so
``reduce`` and the network still run on many patterns at a time.

With ``pool == 1`` each pattern is then finished and classified on its worker too: nothing but
C probabilities per frame travels, and results appear partition by partition — the best
setting for live streaming.

With ``pool = k > 1`` a position's input is the mean (or max) of its k x k neighbourhood, which
straddles partition boundaries (a partition is a run of frames in scan order and need not
start on a scan row). Each worker classifies the positions whose whole neighbourhood lies
inside its partition and sends back, for the others, the reduced patterns they need (float32,
h x w each, about 2k scan rows' worth around each partition boundary); the main node
classifies those boundary positions in ``get_results`` as soon as all their neighbours have
arrived, and drops each reduced pattern once no unclassified position needs it. The trade-off:
main-node memory and serial network time grow with (partition boundaries x k x scan columns) —
small when partitions span many scan rows (LiberTEM's default for files), but when partitions
hold fewer than about 2k scan rows (short live-streaming partitions) most positions are
classified on the main node, one partition's worth at a time. The simpler alternative, sending
every reduced pattern to the main node, would leave the workers only binning, run the whole
network serially on one node and hold rows x cols x h x w floats there. Intermediate results
(``run_udf_iter``, LiberTEM-live) mark the positions not yet computable as invalid.

**Bright field.** ghostmap sums the bright-field disk found from the mean pattern of the first
scan row. A UDF cannot know that disk before it sees frames, so :func:`apply_with_libertem`
first runs a small pass over the first scan row (:func:`bright_field_index`); pass
``bright_field=`` a detector-shaped boolean mask or flat pixel indices (for example from a
previous scan, when streaming live), or None to skip the bright field.

Limits: no ``roi`` (pooling needs every position); 2-D scans and detectors only; the
``inline``, ``threads`` and ``dask`` executors (not ``delayed``); the network runs on the CPU
unless ``device=`` says otherwise (useful with the inline executor on a GPU machine; LiberTEM's
CUDA workers are not used). LiberTEM (GPL-3) is an optional extra, imported only by this
module: ``pip install 'ghostmap[libertem]'``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi
import torch

from .errors import GhostmapError

try:
    from libertem.udf.base import UDF
except ImportError:
    raise GhostmapError("ghostmap's LiberTEM support needs LiberTEM: pip install 'ghostmap[libertem]'") from None

from .model import Model
from .prediction import Prediction, cached_model, classify, default_batch_size
from .preprocessing import Preprocessing
from .reading import bright_field_mask

__all__ = ["GhostmapUDF", "apply_with_libertem", "bright_field_index"]

_REDUCE_PIXELS = 1 << 22  # raw pixels per reduce batch on a worker (4 Mpx: 16 frames of 512 x 512)
_FINISH_BYTES = 64 << 20  # float32 network inputs per finish-and-classify chunk
_BOUNDARY_BYTES = 256 << 20  # reduced patterns per block of scan rows pooled on the main node


@dataclass
class _Runtime:
    model: Model
    network: torch.nn.Module
    device: torch.device
    batch_size: int


def _runtime(model_bytes: bytes, device: str, batch_size: int | None) -> _Runtime:
    """The model from the one model cache (:func:`ghostmap.prediction.cached_model`): a worker
    builds it once, not once per partition."""
    entry = cached_model(model_bytes, device)
    return _Runtime(entry.model, entry.network, entry.device,
                    batch_size or default_batch_size(entry.model.input_shape))


# --- geometry -----------------------------------------------------------------------------------
def _interior(start: int, stop: int, scan_shape: tuple[int, int], half: int) -> np.ndarray:
    """For flat positions start..stop-1: does the whole pooling neighbourhood lie in [start, stop)?"""
    rows, cols = scan_shape
    r, c = np.divmod(np.arange(start, stop), cols)
    first = np.maximum(r - half, 0) * cols + np.maximum(c - half, 0)
    last = np.minimum(r + half, rows - 1) * cols + np.minimum(c + half, cols - 1)
    return (first >= start) & (last < stop)


def _on_rows(values, start: int, cols: int, fill):
    """Lay values for flat positions start.. on whole scan rows, padding with ``fill``: (rows, cols, ...), lead."""
    n = values.shape[0]
    lead = start % cols
    n_rows = -(-(lead + n) // cols)
    if lead == 0 and n == n_rows * cols:
        return values.reshape(n_rows, cols, *values.shape[1:]), lead
    if torch.is_tensor(values):
        grid = values.new_full((n_rows * cols, *values.shape[1:]), fill)
    else:
        grid = np.full((n_rows * cols, *values.shape[1:]), fill, dtype=values.dtype)
    grid[lead : lead + n] = values
    return grid.reshape(n_rows, cols, *values.shape[1:]), lead


def _pool_run(prep: Preprocessing, reduced: torch.Tensor, start: int, cols: int) -> torch.Tensor:
    """Pooled network inputs (n, channels, h, w) for a run of frames starting at flat position ``start``.

    Exact for every position whose neighbourhood lies inside the run (the padding never
    enters such a neighbourhood, and the scan's column edges are the grid's).
    """
    if prep.pool == 1:  # no neighbours pooled: the frames need no grid of whole scan rows
        return prep.pool_block(reduced.unsqueeze(0))[0]
    n, h, w = reduced.shape
    grid, lead = _on_rows(reduced, start, cols, 0.0)
    return prep.pool_block(grid).reshape(-1, prep.channels, h, w)[lead : lead + n]


def _window_any(mask: np.ndarray, start: int, cols: int, k: int) -> np.ndarray:
    """For flat positions start..: is ``mask`` true anywhere in its k x k neighbourhood (within the run)?"""
    grid, lead = _on_rows(mask.astype(np.uint8), start, cols, 0)
    return ndi.maximum_filter(grid, size=k, mode="constant", cval=0).reshape(-1)[lead : lead + mask.shape[0]] > 0


def _window_all(mask: np.ndarray, k: int) -> np.ndarray:
    """(rows, cols) bool: is ``mask`` true everywhere in the (edge-truncated) k x k neighbourhood?"""
    return ndi.minimum_filter(mask.astype(np.uint8), size=k, mode="nearest") > 0


def _classify_into(rt: _Runtime, pooled: torch.Tensor, index: np.ndarray, out: np.ndarray, where: np.ndarray) -> None:
    """Finish and classify ``pooled[index]`` (positions, channels, h, w) in chunks; write the
    probabilities to ``out[where]``."""
    step = max(1, _FINISH_BYTES // (4 * pooled[0].numel()))
    prep = rt.model.preprocessing
    for i in range(0, len(index), step):
        inputs = prep.finish(pooled[torch.as_tensor(index[i : i + step])])
        out[where[i : i + step]] = classify(rt.network, inputs, rt.batch_size, rt.device)


def _bf_indices(bright_field, detector_shape: tuple[int, int]) -> np.ndarray | None:
    if bright_field is None:
        return None
    arr = np.asarray(bright_field)
    if arr.dtype == bool:
        if arr.shape != tuple(detector_shape):
            raise GhostmapError(f"the bright-field mask has shape {arr.shape}; the detector is "
                                f"{detector_shape[0]} x {detector_shape[1]}")
        return np.flatnonzero(arr)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise GhostmapError("bright_field must be a boolean detector mask or flat pixel indices")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= math.prod(detector_shape)):
        raise GhostmapError("a bright-field pixel index lies outside the detector")
    return arr


def _check_dataset(shape, model_detector: tuple[int, int], roi=None) -> None:
    """One-line errors for a dataset the model cannot classify."""
    nav, sig = tuple(int(n) for n in shape.nav), tuple(int(n) for n in shape.sig)
    if len(nav) != 2:
        raise GhostmapError(f"ghostmap needs a 2-D scan (scan_row, scan_col); the LiberTEM dataset's navigation "
                            f"shape is {nav} (load it with nav_shape=(rows, cols))")
    if len(sig) != 2:
        raise GhostmapError(f"ghostmap needs 2-D diffraction patterns; the LiberTEM dataset's signal shape is {sig}")
    if sig != tuple(model_detector):
        raise GhostmapError(f"the model was trained on {model_detector[0]} x {model_detector[1]} patterns "
                            f"but the LiberTEM dataset has {sig[0]} x {sig[1]}")
    if roi is not None:
        raise GhostmapError("GhostmapUDF classifies whole scans: run it without a roi "
                            "(neighbourhood pooling needs every position)")


# --- the UDF --------------------------------------------------------------------------------------
class _PartitionState:
    """A worker's frames of one partition: raw frames gathered into batches, then reduced."""

    def __init__(self, rt: _Runtime, start: int, n: int, detector_shape, dtype):
        self.rt, self.start, self.n = rt, start, n
        h, w = rt.model.input_shape
        per = max(1, min(n, 256, _REDUCE_PIXELS // max(1, math.prod(detector_shape))))
        self.raw = np.empty((per, *detector_shape), dtype=dtype)
        self.index = np.empty(per, np.int64)
        self.count = 0
        self.reduced = torch.zeros((n, h, w), dtype=torch.float32)

    def add(self, i: int, frame) -> None:
        self.raw[self.count] = frame
        self.index[self.count] = i
        self.count += 1
        if self.count == len(self.raw):
            self.flush()

    def flush(self) -> None:
        if self.count:
            reduced = self.rt.model.preprocessing.reduce(self.raw[: self.count])
            self.reduced[torch.as_tensor(self.index[: self.count])] = reduced
            self.count = 0


class GhostmapUDF(UDF):
    """Classify every diffraction pattern with a trained ghostmap model.

    Parameters
    ----------
    model
        A :class:`ghostmap.model.Model` or a model folder. Workers receive it as
        :meth:`ghostmap.model.Model.to_bytes` (JSON description and safetensors weights), never
        a pickle or a path.
    bright_field
        A detector-shaped boolean mask or flat pixel indices of the bright-field disk, to sum a
        virtual bright-field image (``bright_field`` buffer); None (default) for none.
        :func:`bright_field_index` finds the disk as ghostmap does.
    batch_size
        Patterns per forward pass; default as in :func:`ghostmap.prediction.predict`.
    device
        Torch device for the network on workers and the main node (default ``"cpu"``).

    Results (kind "nav"): ``probabilities`` (C,) float32, ``labels`` int64 (class indices into
    the model's classes), ``bright_field`` float32 when a disk was given.
    """

    def __init__(self, model=None, *, bright_field=None, batch_size: int | None = None, device: str = "cpu",
                 **kwargs):
        # LiberTEM re-creates the UDF from its keyword arguments on every worker: those carry
        # model_bytes / bf_index, and model is None there.
        if model is not None:
            if not isinstance(model, Model):
                model = Model.load(model)
            kwargs["model_bytes"] = model.to_bytes()
        elif "model_bytes" not in kwargs:
            raise GhostmapError("GhostmapUDF needs a model: a ghostmap Model or a model folder")
        meta = Model.describe_bytes(kwargs["model_bytes"])
        if bright_field is not None:
            kwargs["bf_index"] = _bf_indices(bright_field, tuple(meta["detector_shape"]))
        try:
            torch.device(str(device))
        except RuntimeError:
            raise GhostmapError(f"unknown device '{device}'") from None
        if batch_size is not None and int(batch_size) < 1:
            raise GhostmapError(f"batch_size must be at least 1, got {batch_size}")
        super().__init__(model_bytes=kwargs.pop("model_bytes"), bf_index=kwargs.pop("bf_index", None), batch_size=batch_size, device=str(device), **kwargs)
        self._description = meta

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self._description["classes"])

    @property
    def detector_shape(self) -> tuple[int, int]:
        return tuple(int(v) for v in self._description["detector_shape"])

    @property
    def pool(self) -> int:
        return int(self._description["preprocessing"]["pool"])

    def _runtime(self) -> _Runtime:
        return _runtime(self.params.model_bytes, self.params.device, self.params.batch_size)

    # --- LiberTEM's interface ---------------------------------------------------------------------
    def get_preferred_input_dtype(self):
        return UDF.USE_NATIVE_DTYPE  # reduce converts to float32 itself, exactly as ghostmap.predict

    def get_result_buffers(self):
        _check_dataset(self.meta.dataset_shape, self.detector_shape, self.meta.roi)
        buffers = {
            "probabilities": self.buffer(kind="nav", extra_shape=(len(self.classes),), dtype="float32"),
            "labels": self.buffer(kind="nav", dtype="int64", use="result_only"),
            "classified": self.buffer(kind="nav", dtype=bool, use="private"),  # done on a worker or already here
        }
        if self.pool > 1:  # reduced patterns around partition boundaries, for the main node
            buffers["boundary"] = self.buffer(kind="nav", dtype=object, use="private")
        if self.params.bf_index is not None:
            buffers["bright_field"] = self.buffer(kind="nav", dtype="float32")
        return buffers

    def get_task_data(self):
        part = self.meta.slice  # the partition: set before task data are made
        state = _PartitionState(self._runtime(), int(part.origin[0]), int(part.shape[0]),
                                tuple(self.meta.dataset_shape.sig), self.meta.input_dtype)
        return {"state": state}

    def process_frame(self, frame):
        state = self.task_data.state
        bf_index = self.params.bf_index
        if bf_index is not None:
            self.results.bright_field[:] = np.asarray(frame).reshape(-1)[bf_index].sum(dtype=np.float64)
        state.add(int(self.meta.slice.origin[0]) - state.start, frame)

    def postprocess(self):
        state = self.task_data.state
        state.flush()
        rt = state.rt
        prep = rt.model.preprocessing
        scan_shape = tuple(self.meta.dataset_shape.nav)
        cols = scan_shape[1]
        start, stop = state.start, state.start + state.n
        inside = _interior(start, stop, scan_shape, prep.pool // 2)
        index = np.flatnonzero(inside)
        if len(index):
            pooled = _pool_run(prep, state.reduced, start, cols)
            _classify_into(rt, pooled, index, self.results.probabilities, index)
            self.results.classified[index] = True
        if prep.pool > 1 and not inside.all():
            # the main node needs the reduced pattern of every frame near a boundary position
            boundary = self.results.boundary
            for i in np.flatnonzero(_window_any(~inside, start, cols, prep.pool)):
                boundary[i] = state.reduced[i].numpy().copy()
        state.reduced = None

    def get_results(self):
        probabilities = self.results.probabilities
        classified = self.results.classified
        if not isinstance(probabilities, np.ndarray):
            raise GhostmapError("GhostmapUDF needs results as NumPy arrays on the main node; LiberTEM's "
                                "'delayed' executor is not supported (use 'inline', 'threads' or 'dask')")
        if self.pool > 1 and not classified.all():
            self._classify_boundaries()
        probabilities = probabilities.copy()
        labels = probabilities.argmax(-1).astype(np.int64)
        if classified.all():
            return {"probabilities": probabilities, "labels": labels}
        done = classified.copy()
        return {"probabilities": self.with_mask(probabilities, np.repeat(done[:, None], probabilities.shape[1], 1)),
                "labels": self.with_mask(labels, done)}

    def _classify_boundaries(self) -> None:
        """Classify, on the main node, the positions whose neighbourhood crosses a partition boundary.

        Only positions whose whole neighbourhood has arrived; the results are kept in the merged
        buffers (a later call, or a later partition, never recomputes or overwrites them) and a
        reduced pattern is dropped once every position that needs it is classified.
        """
        rows, cols = tuple(self.meta.dataset_shape.nav)
        probabilities, classified = self.results.probabilities, self.results.classified
        boundary = self.results.boundary
        valid = self.meta.get_valid_nav_mask()
        valid = np.ones(rows * cols, bool) if valid is None else np.asarray(valid, bool).reshape(-1)
        rt = self._runtime()
        prep = rt.model.preprocessing
        k, half = prep.pool, prep.pool // 2
        h, w = rt.model.input_shape
        todo = (~classified & _window_all(valid.reshape(rows, cols), k).reshape(-1)).reshape(rows, cols)
        todo_rows = np.flatnonzero(todo.any(1))
        max_rows = max(1, _BOUNDARY_BYTES // (4 * cols * h * w) - 2 * half)
        runs = np.split(todo_rows, np.flatnonzero(np.diff(todo_rows) > 1) + 1) if len(todo_rows) else []
        for run in runs:
            for s in range(int(run[0]), int(run[-1]) + 1, max_rows):
                e = min(int(run[-1]) + 1, s + max_rows)
                lo, hi = max(0, s - half), min(rows, e + half)
                entries = boundary[lo * cols : hi * cols]
                have = np.fromiter((isinstance(x, np.ndarray) for x in entries), bool, len(entries))
                block = torch.zeros(((hi - lo) * cols, h, w), dtype=torch.float32)
                if have.any():
                    block[torch.as_tensor(np.flatnonzero(have))] = torch.from_numpy(np.stack(entries[have]))
                sel = np.flatnonzero(todo[s:e].reshape(-1))
                here = np.zeros((hi - lo, cols), np.uint8)
                here[s - lo : e - lo] = todo[s:e]
                needed = ndi.maximum_filter(here, size=k, mode="constant").reshape(-1) > 0
                if (needed & ~have).any():
                    raise RuntimeError("GhostmapUDF: a reduced pattern near a partition boundary is missing")
                pooled = prep.pool_block(block.view(hi - lo, cols, h, w)).reshape(-1, prep.channels, h, w)
                _classify_into(rt, pooled, (s - lo) * cols + sel, probabilities, s * cols + sel)
                classified[s * cols + sel] = True
        freeable = _window_all(classified.reshape(rows, cols), k).reshape(-1)
        boundary[freeable] = None


# --- bright field and the one-call helper -------------------------------------------------------------
class _SignalSum(UDF):
    """Sum of the frames (in the roi), in float64."""

    def get_preferred_input_dtype(self):
        return UDF.USE_NATIVE_DTYPE

    def get_result_buffers(self):
        return {"total": self.buffer(kind="sig", dtype="float64")}

    def process_tile(self, tile):
        self.results.total[:] += np.asarray(tile).sum(axis=0, dtype=np.float64)

    def merge(self, dest, src):
        dest.total[:] += src.total


def bright_field_index(ctx, dataset) -> np.ndarray:
    """Flat detector indices of the bright-field disk, from the first scan row's mean (as ghostmap finds it)."""
    nav = tuple(int(n) for n in dataset.shape.nav)
    if len(nav) != 2:
        raise GhostmapError(f"ghostmap needs a 2-D scan (scan_row, scan_col); the LiberTEM dataset's navigation "
                            f"shape is {nav}")
    roi = np.zeros(nav, bool)
    roi[0] = True
    total = ctx.run_udf(dataset=dataset, udf=_SignalSum(), roi=roi)["total"].data
    return np.flatnonzero(bright_field_mask(np.asarray(total) / nav[1]))


def apply_with_libertem(ctx, dataset, model, *, bright_field="auto", batch_size: int | None = None,
                        device: str = "cpu", **run_kwargs) -> Prediction:
    """Run :class:`GhostmapUDF` on a LiberTEM dataset; return ghostmap's :class:`Prediction`.

    ``model`` is a :class:`Model` or a model folder. ``bright_field="auto"`` finds the disk from
    the first scan row (one short extra pass), as :func:`ghostmap.prediction.predict` does; a mask
    or indices use those, None skips the image. Other keyword arguments go to ``ctx.run_udf``
    (``progress=True``, ``corrections=...``). Write the usual files with
    :func:`ghostmap.outputs.save_prediction`.
    """
    if not isinstance(model, Model):
        model = Model.load(model)
    _check_dataset(dataset.shape, model.detector_shape, run_kwargs.get("roi"))
    if isinstance(bright_field, str):
        if bright_field != "auto":
            raise GhostmapError(f"bright_field must be 'auto', None, a mask or indices, not '{bright_field}'")
        bright_field = bright_field_index(ctx, dataset)
    udf = GhostmapUDF(model, bright_field=bright_field, batch_size=batch_size, device=device)
    result = ctx.run_udf(dataset=dataset, udf=udf, **run_kwargs)
    probabilities = np.asarray(result["probabilities"].data, dtype=np.float32)
    labels = np.asarray(result["labels"].data, dtype=np.int64)
    bf = np.asarray(result["bright_field"].data, dtype=np.float32) if "bright_field" in result else None
    return Prediction(labels, probabilities, tuple(model.classes), bf)
