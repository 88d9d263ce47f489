"""Classify every pattern of a scan, streaming it in blocks of scan rows.

Memory stays bounded whatever the file size: :func:`ghostmap.preprocessing.stream_rows`
reads each scan row once (the next block in a background thread, so reading and
computing overlap) and keeps only the rows that neighbourhood pooling still needs. A
virtual bright-field image is summed on the way, for the summary figure.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import warnings
import weakref
from collections import OrderedDict
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch

from .analysis import bright_field_index, bright_field_index_of_block
from .counts import RowReader
from .errors import GhostmapError
from .model import Model, fused_for_inference, input_channels, pick_device
from .preprocessing import reader_for, stream_rows
from .reading import as_scan
from .result import Prediction

logger = logging.getLogger(__name__)


def activation_bytes(network: torch.nn.Module, input_shape: tuple[int, int]) -> int:
    """Bytes of activations one pattern needs at the widest step of ``network``'s forward pass.

    Measured with hooks on a one-pattern forward pass: the largest input plus output of any
    layer (counted once where a layer works in place). The paper network at 256 x 256 needs
    5 MB a pattern (its first max-pool: 16 x 256 x 256 floats in, a quarter of that out), the
    compact network at 128 x 128 1 MB (its first batch norm).
    """
    sizes = []
    me = threading.get_ident()

    def hook(module, inputs, output):
        if not torch.is_tensor(output) or threading.get_ident() != me:  # another thread's pass
            return
        ins = [t for t in inputs if torch.is_tensor(t)]
        shared = any(t.data_ptr() == output.data_ptr() for t in ins)
        sizes.append(sum(t.numel() * t.element_size() for t in ins) * (not shared) + output.numel() * output.element_size())

    leaves = [m for m in network.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        param = next(network.parameters(), None)
        x = torch.zeros(1, input_channels(network), *input_shape, device=param.device if param is not None else "cpu")
        with torch.inference_mode():
            network(x)
    finally:
        for h in handles:
            h.remove()
    return max(sizes, default=4 * input_shape[0] * input_shape[1])


# On the CPU no batch's activations pass this, whatever batch size is asked for, measured on the
# network as it runs (fused for inference). Network alone on the paper-size scan's inputs, 2 threads
# (BENCHMARKS.md): the fused compact network at 128 x 128 (0.6 MB a pattern at its widest) took
# 0.21-0.24 ms a pattern in batches of 8-48 and 0.37-0.65 ms in batches of 64 (38 MB, past the
# cache); the fused paper network at 256 x 256 (5 MB) was fastest in batches of 4-6 (3.0-3.2 ms)
# and 1.5 x slower in batches of 12-24.
CPU_ACTIVATION_BUDGET = 24 * 2**20


def default_batch_size(input_shape: tuple[int, int], budget_bytes: int | None = None,
                       network: torch.nn.Module | None = None) -> int:
    """Patterns per forward pass so that one batch's activations stay near ``budget_bytes``
    (default ``CPU_ACTIVATION_BUDGET``).

    With ``network``, the widest step of its inference form (:func:`ghostmap.model.fused_for_inference`)
    is measured (:func:`activation_bytes`); without, a first layer of 16 channels is assumed.
    """
    budget_bytes = CPU_ACTIVATION_BUDGET if budget_bytes is None else budget_bytes
    if network is not None:
        per_pattern = activation_bytes(fused_for_inference(network), input_shape)
        return int(min(512, max(1, budget_bytes // per_pattern)))
    per_pattern = 16 * input_shape[0] * input_shape[1] * 4
    return int(min(512, max(8, budget_bytes // per_pattern)))


_measured: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # network -> {input shape: bytes}
_measuring = threading.Lock()


def _batch_size(requested: int | None, network: torch.nn.Module, input_shape: tuple[int, int],
                device: torch.device) -> int:
    """``requested``, but on the CPU never more than fits ``CPU_ACTIVATION_BUDGET``; by default that.

    ``network`` is the one that runs (:func:`prepare_network`). Its activations are measured once
    (under a lock: threads of a cluster worker share a cached network), so later row ranges put
    no hooks on a network another thread is running."""
    network = getattr(network, "plain", network)  # a compiled network: its eager twin has the same activations
    with _measuring:
        per_network = _measured.setdefault(network, {})
        if input_shape not in per_network:
            per_network[input_shape] = activation_bytes(network, input_shape)
        per_pattern = per_network[input_shape]
    fit = int(min(512, max(1, CPU_ACTIVATION_BUDGET // per_pattern)))
    if device.type != "cpu":  # activations live in GPU memory there
        return requested or fit
    return min(requested, fit) if requested else fit


class CachedModel(NamedTuple):
    """A model built from bytes once per process, with its network ready on ``device``."""

    model: Model
    network: torch.nn.Module
    device: torch.device


_MODELS: OrderedDict = OrderedDict()  # the one model cache: (SHA-256 of the bytes, device) -> CachedModel
_MODELS_LOCK = threading.Lock()
MODELS_KEPT = 4


def cached_model(model_bytes: bytes, device: str | torch.device | None = "cpu", digest: str | None = None) -> CachedModel:
    """The model in ``model_bytes`` (:meth:`Model.to_bytes`), built and prepared the first time
    this process sees it on ``device`` and kept for the next call (the last ``MODELS_KEPT``).

    Workers of a Dask cluster or of LiberTEM receive a model as bytes with every task; this is
    what lets them build it once, not once per task.

    Parameters
    ----------
    model_bytes : bytes
        What :meth:`ghostmap.model.Model.to_bytes` returned.
    device : str, torch.device or None
        Where its network runs (:func:`ghostmap.model.pick_device`).
    digest : str, optional
        The bytes' SHA-256 hex digest when the caller has it already.

    Returns
    -------
    CachedModel

    Example
    -------
    >>> entry = cached_model(model.to_bytes())          # doctest: +SKIP
    >>> entry is cached_model(model.to_bytes())         # doctest: +SKIP
    True
    """
    dev = pick_device(device)
    key = (digest or hashlib.sha256(model_bytes).hexdigest(), str(dev))
    with _MODELS_LOCK:
        if key in _MODELS:
            _MODELS.move_to_end(key)
            return _MODELS[key]
        model = Model.from_bytes(model_bytes)
        entry = CachedModel(model, prepare_network(model, dev), dev)
        _MODELS[key] = entry
        while len(_MODELS) > MODELS_KEPT:
            _MODELS.popitem(last=False)
        logger.debug("built model %s on %s (%d kept)", key[0][:12], dev, len(_MODELS))
        return entry


COMPILE_MODES = ("none", "inductor", "bf16")


def prepare_network(model: Model, device: torch.device, compile: str | None = None) -> torch.nn.Module:
    """The model's network on ``device`` in eval mode, laid out for fast inference.

    ``compile`` picks how it runs (see BENCHMARKS.md for the measurements):

    * ``None`` or ``"none"`` (the default): eager PyTorch, batch norm folded into the
      convolutions (:func:`ghostmap.model.fused_for_inference`), channels-last;
    * ``"inductor"``: ``torch.compile`` (needs a C++ compiler on the CPU); its first call
      compiles for seconds (tens of seconds with a cold cache), so it pays only on large scans;
    * ``"bf16"``: eager under bfloat16 autocast, only where the CPU (or GPU) computes bf16
      natively; probabilities move by up to ~1e-2, so a borderline position can change class.

    A mode that cannot be set up or fails when used falls back, with a warning, to the plain
    network. torch keeps what it compiled for a network, so calling this again for the same
    network (:func:`iter_predictions` over many row ranges, say) compiles nothing new.
    """
    mode = (compile or "none").lower()
    if mode not in COMPILE_MODES:
        raise GhostmapError(f"unknown compile mode '{compile}'; choose one of {', '.join(COMPILE_MODES)}")
    # batch norm folded into the convolutions, ReLU after max-pool: 2-3x faster on the CPU,
    # outputs equal to float rounding; channels-last measured 2x faster than contiguous there
    plain = fused_for_inference(model.network).to(device).to(memory_format=torch.channels_last)
    if mode == "none":
        return plain
    try:
        fast = _build(mode, plain, device)
    except Exception as exc:  # noqa: BLE001 - any failure to set up means: run the plain network
        _fallback_warning(mode, exc)
        return plain
    return _Guarded(fast, plain, mode)


def _build(mode: str, network: torch.nn.Module, device: torch.device):
    if mode == "inductor":
        return torch.compile(network, dynamic=False)
    if mode == "bf16":
        supported = (torch.cuda.is_bf16_supported() if device.type == "cuda"
                     else device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))
        if not supported:
            raise RuntimeError(f"{device} has no native bfloat16 arithmetic; it would be slower, not faster")
        return _Autocast(network, device.type)
    raise AssertionError(mode)


class _Autocast(torch.nn.Module):
    def __init__(self, network: torch.nn.Module, device_type: str):
        super().__init__()
        self.network, self.device_type = network, device_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.network(x).float()


class _Guarded(torch.nn.Module):
    """Run the fast network; the first time it fails, warn and run the plain one from then on."""

    def __init__(self, fast, plain: torch.nn.Module, mode: str):
        super().__init__()
        self.fast, self.plain, self.mode = fast, plain, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast is not None:
            try:
                return self.fast(x)
            except Exception as exc:  # noqa: BLE001 - e.g. inductor finds no C++ compiler
                _fallback_warning(self.mode, exc)
                self.fast = None
        return self.plain(x)


def _fallback_warning(mode: str, exc: BaseException) -> None:
    reason = (str(exc).strip().splitlines() or [""])[0][:300]
    warnings.warn(f"compile={mode!r} is not available here ({type(exc).__name__}: {reason}); "
                  "running the plain network instead", RuntimeWarning, stacklevel=3)


def classify(network: torch.nn.Module, inputs: torch.Tensor, batch_size: int, device: torch.device) -> np.ndarray:
    """Class probabilities (N, classes) float32 for network inputs (..., channels, h, w), N
    positions: every axis before the channels' counts positions."""
    x = inputs.reshape(-1, *inputs.shape[-3:]).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = [torch.softmax(network(x[b : b + batch_size].to(device)).float(), dim=1).cpu()
               for b in range(0, x.shape[0], batch_size)]
    if not out:
        return np.zeros((0, 0), np.float32)
    return torch.cat(out).numpy()


def iter_predictions(
    scan,
    model: Model,
    start: int = 0,
    stop: int | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    rows_per_block: int | None = None,
    prefetch: bool = True,
    bf_index: np.ndarray | None = None,
    compile: str | None = None,
    reader: RowReader | None = None,
    share_cores: bool = False,
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Yield (row_start, row_stop, probabilities (rows, cols, C), bright field (rows, cols)) per block.

    Covers scan rows [start, stop); the rows pooling needs on either side are read too, so
    any split of a scan into row ranges gives exactly the predictions of one pass. This is
    the unit of work that :func:`predict`, a series and a Dask cluster all run.

    ``batch_size``: the most patterns per forward pass. On the CPU batches are never larger
    than keeps their activations within ``CPU_ACTIVATION_BUDGET`` (24 MB: 38 patterns of the
    compact network at 128 x 128, 4 of the paper network at 256 x 256), whatever is asked:
    larger batches measured slower there (past the cache), and the paper network's batches of
    206 (the CLI's ``--batch-size 256`` on a 206-column scan) took over 1 GB. On a GPU
    ``batch_size`` is used as given (default: 24 MB of activations). ``compile``: see :func:`prepare_network`.
    ``reader``: the rows already being read, from :func:`ghostmap.preprocessing.reader_for`
    with a ``bright_field_index`` (``rows_per_block``, ``prefetch`` and ``bf_index`` are then its own).
    ``share_cores``: on the CPU, from the main thread, run torch on one thread fewer while the
    background reader still reads (:class:`_CoreSharing`); :func:`predict` asks for it.
    """
    scan = as_scan(scan)
    model.check_scan(scan.detector_shape, scan.source)
    n_rows, n_cols = scan.scan_shape
    stop = n_rows if stop is None else stop
    dev = device if isinstance(device, torch.device) else pick_device(device)
    network = prepare_network(model, dev, compile=compile)
    batch_size = _batch_size(batch_size, network, model.input_shape, dev)
    logger.debug("classifying scan rows %d-%d on %s, batches of %d", start, stop, dev, batch_size)
    if reader is None:
        if bf_index is None and start - model.preprocessing.pool // 2 <= 0:  # the first block holds scan row 0
            bf_index = bright_field_index_of_block  # found beside reading, from the first block's rows
        reader = reader_for(scan, model.preprocessing, start, stop, rows_per_block, ahead=int(prefetch),
                            bright_field_index=bright_field_index(scan) if bf_index is None else bf_index)
    elif reader.bright_field_index is None:
        raise ValueError("the reader given sums no bright field: make it with a bright_field_index")
    threads = _CoreSharing(reader if share_cores and dev.type == "cpu" else None)
    try:
        for r0, r1, inputs in stream_rows(scan, model.preprocessing, start, stop, reader=reader):
            with threads:
                probabilities = classify(network, inputs, batch_size, dev).reshape(r1 - r0, n_cols, -1)
            yield r0, r1, probabilities, reader.bright_field_rows(r0, r1).astype(np.float32)
    finally:
        reader.close()


class _CoreSharing:
    """While a background reader still reads, run torch on one thread fewer, then on all again.

    A reading thread busy on one core and torch's thread team on every core fight: each
    parallel step of the network waits for the team's thread that shares the reader's core.
    On 2 cores (paper-size scan) the network ran 2.5 x slower beside the reader than alone,
    and predict took 7.2 s with 2 torch threads throughout, 6.7 s with 1 throughout and
    {shared} s this way (BENCHMARKS.md). torch's thread count is process-wide, so this is only
    done from the main thread (never from a web server's or a cluster worker's threads), and
    the count is put back after every batch of forward passes.
    """

    def __init__(self, reader):
        self.reader = reader if (reader is not None and reader.in_background
                                 and threading.current_thread() is threading.main_thread()) else None
        self.saved = None

    def __enter__(self):
        if self.reader is not None and not self.reader.finished:
            self.saved = torch.get_num_threads()
            if self.saved > 1:
                torch.set_num_threads(self.saved - 1)
        return self

    def __exit__(self, *exc):
        if self.saved is not None and self.saved > 1:
            torch.set_num_threads(self.saved)
        self.saved = None


def predict(
    scan,
    model: Model,
    batch_size: int | None = None,
    device: str | None = None,
    rows_per_block: int | None = None,
    prefetch: bool = True,
    progress: Callable[[int, int], None] | None = None,
    compile: str | None = None,
    reader: RowReader | None = None,
) -> Prediction:
    """Class probabilities for every pattern of ``scan``.

    The scan is streamed in blocks of scan rows, preprocessed exactly as in training
    (the model's :class:`Preprocessing`, neighbourhood pooling included) and classified, so
    memory stays bounded whatever the scan size.

    Parameters
    ----------
    scan : Scan, str, os.PathLike or array-like
        Anything :func:`ghostmap.as_scan` takes: a :class:`Scan`, a scan file, a 4-D
        (scan_row, scan_col, det_row, det_col) NumPy, h5py, zarr or dask array, ...
    model : Model, str or os.PathLike
        A trained :class:`Model`, or the model folder to load it from.
    batch_size : int, optional
        The most patterns per forward pass; on the CPU capped to keep activations within
        about 24 MB (see ``iter_predictions``). Default: chosen from that budget.
    device : str, optional
        ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...; default CUDA when available, else the CPU.
    rows_per_block : int, optional
        Scan rows read at a time; default: as many as fit in about 32 MB of raw data.
    prefetch : bool, optional
        Read and bin the next block in a background thread while this one is classified.
    progress : callable, optional
        ``progress(patterns_done, patterns_total)``, called after every block.
    compile : str, optional
        ``None``/``"none"`` (eager PyTorch), ``"inductor"`` (``torch.compile``) or ``"bf16"``
        (bfloat16 autocast); see ``prepare_network``.
    reader : RowReader, optional
        The scan's rows already being read and binned, from
        :func:`ghostmap.preprocessing.reader_for` (with a ``bright_field_index``) or, before
        torch has loaded, from :class:`ghostmap.counts.RowReader`; ``rows_per_block`` and
        ``prefetch`` are then its own. ``ghostmap predict`` starts one before importing torch.

    Returns
    -------
    Prediction
        Class indices, probabilities, class names and the virtual bright-field image,
        each (rows, cols) over the scan positions.

    Raises
    ------
    GhostmapError
        When the scan or model cannot be read, the scan's detector shape differs from the
        model's, or the device or compile mode is unknown or unavailable.

    Examples
    --------
    An untrained network, to keep the example quick; :func:`ghostmap.train` makes a real one.

    >>> import ghostmap as gm
    >>> from ghostmap.model import build_network
    >>> data, truth = gm.simulate_scan((4, 6), detector=32, seed=0)
    >>> scan = gm.as_scan(data)
    >>> prep = gm.fit_preprocessing(scan, pool=1)
    >>> network = build_network("compact", 3, prep.output_shape(scan.detector_shape))
    >>> model = gm.Model(network, ("none", "vertical", "horizontal"), "compact", prep, scan.detector_shape)
    >>> result = gm.predict(scan, model, device="cpu")
    >>> result.labels.shape, result.probabilities.shape
    ((4, 6), (4, 6, 3))
    >>> bool(abs(result.probabilities.sum(-1) - 1).max() < 1e-5)
    True
    """
    scan = as_scan(scan)
    if not isinstance(model, Model):
        model = Model.load(model)
    model.check_scan(scan.detector_shape, scan.source)
    n_rows, n_cols = scan.scan_shape
    probabilities = np.zeros((n_rows, n_cols, len(model.classes)), np.float32)
    bright_field = np.zeros((n_rows, n_cols), np.float32)
    for r0, r1, probs, bright in iter_predictions(scan, model, batch_size=batch_size, device=device,
                                                  rows_per_block=rows_per_block, prefetch=prefetch, compile=compile,
                                                  reader=reader, share_cores=True):
        probabilities[r0:r1], bright_field[r0:r1] = probs, bright
        if progress:
            progress(r1 * n_cols, n_rows * n_cols)
    return Prediction(probabilities.argmax(-1).astype(np.int64), probabilities, tuple(model.classes), bright_field)
