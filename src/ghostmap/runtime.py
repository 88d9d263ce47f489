"""Classify with ONNX Runtime, without torch: ``ghostmap predict``'s path on the CPU.

Importing torch takes 1.7 s of one core here, a third of the time the paper-size scan may take
at 2,000 patterns/s. A model folder holds its network as ``model.onnx`` too
(:func:`ghostmap.model.export_onnx`); ONNX Runtime loads in 0.2 s and runs that graph as fast
as torch runs the fused network (0.42-0.45 ms a pattern of 128 x 128 on one core, both). So
``ghostmap predict`` on the CPU reads, bins and makes network inputs in NumPy
(:mod:`ghostmap.counts`, :mod:`ghostmap.inputs`) and classifies here, never importing torch.
Where there is no usable graph (an older model folder, a graph that does not match its JSON,
ONNX Runtime missing) :meth:`OnnxNetwork.from_folder` gives None and torch does the work.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from .modelfile import GRAPH_KEYS, INT8_AVX512_FILE, INT8_FILE, ONNX_FILE
from .quantization import SKIPPED_OPTIMIZERS
from .result import Prediction

logger = logging.getLogger(__name__)

__all__ = ["OnnxNetwork", "predict_in_process", "predict_with_onnx"]

# Patterns per run on the CPU. predict runs on one thread per block; there the compact network
# at 128 x 128 took 0.34 ms a pattern in runs of 2-6 and 0.38-0.41 in runs of 16, whose first
# activations (8 MB) no longer fit a core's cache (BENCHMARKS.md).
DEFAULT_BATCH = 4

# "auto": the int8 graph where the model folder has one (ghostmap.quantization), else float32
PRECISIONS = ("auto", "int8", "float32")


class OnnxNetwork:
    """A model folder's ``model_int8.onnx`` or ``model.onnx`` in ONNX Runtime sessions on the CPU.

    Parameters
    ----------
    graph : bytes
        The ONNX graph (:func:`ghostmap.model.export_onnx`, or its int8 form from
        :func:`ghostmap.quantization.quantize_graph`).
    batch_size : int, optional
        Patterns per run (default ``DEFAULT_BATCH``).
    threads : int, optional
        The cores to use (default: those this process may use). :func:`predict_with_onnx` runs
        that many runs side by side, each on one thread; :meth:`probabilities` alone spreads one
        run over that many threads. They sleep rather than spin while they wait, so a reading
        thread gets a core when it needs one.

    Example
    -------
    >>> from ghostmap.model import build_network, export_onnx
    >>> network = OnnxNetwork(export_onnx(build_network("compact", 3, (32, 32)), (32, 32)))
    >>> network.probabilities(np.zeros((5, 32, 32), np.float32)).shape
    (5, 3)
    """

    def __init__(self, graph: bytes, batch_size: int | None = None, threads: int | None = None,
                 precision: str = "float32"):
        import onnxruntime

        self._ort, self.graph, self.precision = onnxruntime, graph, precision
        self.threads = max(1, int(threads or _usable_cores()))
        self.batch_size = int(batch_size or DEFAULT_BATCH)
        self._sessions: dict[int, object] = {}
        self._lock = threading.Lock()  # sessions are made once, runs of them may go on side by side
        session, _ = self._session(1)  # a graph ONNX Runtime refuses fails here, not mid-scan; predict runs this one
        self.channels = int(session.get_inputs()[0].shape[1])  # of the input (n, channels, h, w)

    def _session(self, threads: int):
        with self._lock:
            if threads not in self._sessions:
                self._sessions[threads] = self._new_session(threads)
            return self._sessions[threads]

    def _new_session(self, threads: int):
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = self._ort.InferenceSession(self.graph, options, providers=["CPUExecutionProvider"],
                                             disabled_optimizers=list(SKIPPED_OPTIMIZERS))
        return session, session.get_inputs()[0].name


    @classmethod
    def from_folder(cls, directory: str | Path, description: dict, batch_size: int | None = None,
                    threads: int | None = None, precision: str = "auto") -> "OnnxNetwork | None":
        """The folder's network, or None where it cannot run here: no graph, one whose SHA-256 is
        not the one ``description`` (its checked ``model.json``) records, or no ONNX Runtime.

        ``precision``: ``"auto"`` runs an int8 graph where the processor has AVX-512 and the
        folder has one, else ``model.onnx``; ``"int8"`` or ``"float32"`` only that kind. Without
        AVX-512 (an AVX2 AMD EPYC) ONNX Runtime's int8 graph took as long as the float32 one
        (0.69 against 0.68 ms a pattern, one core), so there the exact network costs nothing
        more. Of the int8 graphs, ``model_int8_avx512.onnx`` (the same outputs, laid out for
        AVX-512) where the processor has AVX-512, else ``model_int8.onnx``.

        Example
        -------
        >>> OnnxNetwork.from_folder("no/such/model", {}) is None
        True
        """
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
        avx512 = has_avx512()
        int8 = ("int8", [INT8_AVX512_FILE, INT8_FILE] if avx512 else [INT8_FILE])
        kinds = (int8, ("float32", [ONNX_FILE])) if avx512 else (("float32", [ONNX_FILE]), int8)
        for kind, names in kinds:
            if precision not in ("auto", kind):
                continue
            for name in names:
                network = cls._from_file(Path(directory) / name, description.get(GRAPH_KEYS[name]), batch_size,
                                         threads, kind)
                if network is not None:
                    return network
        return None

    @classmethod
    def _from_file(cls, path: Path, expected: str | None, batch_size, threads, precision: str) -> "OnnxNetwork | None":
        if not expected or not path.is_file():
            return None
        graph = path.read_bytes()
        if hashlib.sha256(graph).hexdigest() != expected:
            logger.warning("%s does not belong to its model.json (checksum differs); not using it", path)
            return None
        if b"location" in graph:  # the key of ONNX's external tensor data: a path that could lead out of the folder
            logger.warning("%s refers to data outside it; ghostmap writes no such graph; not using it", path)
            return None
        try:
            return cls(graph, batch_size, threads, precision)
        except ImportError:
            logger.info("ONNX Runtime is not installed; predicting with torch")
        except Exception as exc:  # noqa: BLE001 - a graph ONNX Runtime refuses: torch still can
            logger.warning("ONNX Runtime cannot run %s (%s); not using it", path, str(exc).splitlines()[0][:200])
        return None

    def probabilities(self, inputs: np.ndarray, threads: int | None = None) -> np.ndarray:
        """Class probabilities (n, classes) float32 for network inputs (..., channels, h, w), or
        (n, h, w) for a one-channel graph, on ``threads`` threads (default: all of :attr:`threads`)."""
        session, name = self._session(max(1, min(self.threads, threads or self.threads)))
        x = np.ascontiguousarray(inputs, np.float32).reshape(-1, self.channels, *inputs.shape[-2:])
        parts = [session.run(None, {name: x[i : i + self.batch_size]})[0] for i in range(0, x.shape[0], self.batch_size)]
        if not parts:
            return np.zeros((0, 0), np.float32)
        logits = np.concatenate(parts)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


@functools.lru_cache(maxsize=1)
def has_avx512() -> bool:
    """Whether this processor has AVX-512 (16 floats to a register), where ONNX Runtime computes
    convolutions in blocks of 16 channels. Known on Linux (``/proc/cpuinfo``); False elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return "avx512f" in line.split()
    except OSError:
        pass
    return False


def _usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS tells it, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def predict_in_process(scan, model, device=None, progress: Callable[[int, int], None] | None = None) -> Prediction:
    """What :func:`ghostmap.predict` gives, for a process that has the :class:`ghostmap.Model` in
    memory (``ghostmap train``'s calibration, the label page's preview): on the CPU from the
    model's float32 graph in ONNX Runtime (the same labels, probabilities within ~1e-5; on the
    paper-size scan 2.9-3.3 s against 3.8-3.9 s in PyTorch, BENCHMARKS.md), else, or where the network does not
    export or ONNX Runtime is missing, by :func:`ghostmap.predict` itself.

    Parameters
    ----------
    scan : Scan
        Anything :func:`ghostmap.as_scan` takes.
    model : Model
        The model, as trained or loaded.
    device : str, optional
        As for :func:`ghostmap.predict` (default: CUDA when present, else the CPU).
    progress : callable, optional
        ``progress(patterns_done, patterns_total)``, called after every block.
    """
    from .analysis import bright_field_index_of_block
    from .model import export_onnx, pick_device
    from .prediction import predict
    from .preprocessing import reader_for
    from .reading import as_scan

    scan = as_scan(scan)
    network = None
    if pick_device(device).type == "cpu":
        graph = export_onnx(model.network, model.input_shape)
        try:
            network = OnnxNetwork(graph) if graph is not None else None
        except ImportError:  # no ONNX Runtime
            network = None
    if network is None:
        return predict(scan, model, device=device, progress=progress)
    reader = reader_for(scan, model.preprocessing, bright_field_index=bright_field_index_of_block)
    return predict_with_onnx(scan, reader, network, model.classes, progress=progress)


def predict_with_onnx(scan, reader, network: OnnxNetwork, classes,
                      progress: Callable[[int, int], None] | None = None) -> Prediction:
    """Class probabilities for every pattern of ``scan``: what :func:`ghostmap.predict` gives, from
    a reader that yields the whole scan's network inputs with the bright field (as ``ghostmap
    predict`` starts one: :class:`ghostmap.counts.RowReader` with a
    :class:`ghostmap.inputs.NetworkInputs` and a ``bright_field_index``) and an :class:`OnnxNetwork`.

    Parameters
    ----------
    scan : Scan
        The scan being read.
    reader : RowReader
        Its rows, read and made into network inputs.
    network : OnnxNetwork
        The model's network.
    classes : sequence of str
        The model's class names.
    progress : callable, optional
        ``progress(patterns_done, patterns_total)``, called after every block.

    Returns
    -------
    Prediction

    Example
    -------
    >>> from ghostmap.analysis import bright_field_index_of_block              # doctest: +SKIP
    >>> from ghostmap.preprocessing import reader_for                          # doctest: +SKIP
    >>> scan, model = gm.open_scan("scan.npy"), gm.Model.load("model")           # doctest: +SKIP
    >>> reader = reader_for(scan, model.preprocessing,
    ...                     bright_field_index=bright_field_index_of_block)    # doctest: +SKIP
    >>> network = OnnxNetwork.from_folder("model", read_description("model"))    # doctest: +SKIP
    >>> predict_with_onnx(scan, reader, network, model.classes).labels.shape     # doctest: +SKIP
    (34, 206)
    """
    n_rows, n_cols = scan.scan_shape
    probabilities = np.zeros((n_rows, n_cols, len(classes)), np.float32)
    bright_field = np.zeros((n_rows, n_cols), np.float32)
    pending: deque = deque()  # (r0, r1, futures of its parts), oldest block first

    def finish_oldest() -> None:
        r0, r1, parts = pending.popleft()
        probabilities[r0:r1] = np.concatenate([part.result() for part in parts]).reshape(r1 - r0, n_cols, -1)
        if progress:
            progress(r1 * n_cols, n_rows * n_cols)

    # Whole blocks run side by side, each on one thread of one session, rather than one block on
    # all threads: independent runs scale better than one run split over threads, and the reading
    # thread takes its share of the cores as it needs it. Blocks that come after the last one is
    # read are cut into one part per thread, so that the last, which comes alone, still keeps
    # every core busy (paper-size scan: BENCHMARKS.md, fifth round).
    workers = network.threads
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="ghostmap-network") as pool:
            try:
                for _, made in reader:
                    if made is None:
                        continue
                    r0, r1, inputs = made
                    flat = inputs.reshape(-1, *inputs.shape[-3:])  # (patterns, channels, h, w)
                    n_parts = min(workers, len(flat)) if reader.finished else 1
                    pending.append((r0, r1, [pool.submit(network.probabilities, part, 1)
                                             for part in np.array_split(flat, n_parts)]))
                    while len(pending) > workers:
                        finish_oldest()
                while pending:
                    finish_oldest()
            finally:
                for _, _, parts in pending:
                    for part in parts:
                        part.cancel()
        # taken at the end: the first rows' sums wait for the bright-field disk, the network need not
        bright_field[:] = reader.bright_field_rows(0, n_rows)
    finally:
        reader.close()
    return Prediction(probabilities.argmax(-1).astype(np.int64), probabilities, tuple(classes), bright_field)
