"""Classify a scan on a Dask distributed cluster.

The workers open the scan file themselves (a filesystem they share with the client is
assumed, as on any compute cluster), each classifies a range of scan rows with
:func:`ghostmap.prediction.iter_predictions`, and only the per-pattern results come back:
C + 1 float32 numbers a pattern (16 bytes for three classes) instead of the raw pattern
(512 KB for 512 x 512 uint16). The model travels once, as safetensors bytes, and is
built once per worker process.

``distributed`` is an optional extra (``pip install 'ghostmap[cluster]'``), imported only here.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import socket
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import GhostmapError
from .model import Model
from .prediction import Prediction, bright_field_index, cached_model, iter_predictions
from .series import Step

CONNECT_TIMEOUT_S = 10  # how long to try reaching a scheduler before giving up
TASK_BYTES = 1 << 30  # at most this much raw data per task by default (a few seconds of work)
HALO_SHARE = 0.25  # by default, pooling's halo rows re-read per task stay under this share of its rows

_threads_set = threading.Event()


def _distributed():
    try:
        import distributed
    except ImportError as exc:
        raise GhostmapError("running on a Dask cluster needs dask.distributed: pip install 'ghostmap[cluster]'") from exc
    return distributed


def _worker_model(model_bytes: bytes, digest: str) -> Model:
    """The model for ``digest``, from the one model cache (:func:`ghostmap.prediction.cached_model`)."""
    import torch

    if not _threads_set.is_set():
        torch.set_num_threads(1)  # one per worker thread: the worker's threads are the parallelism
        _threads_set.set()
    return cached_model(model_bytes, "cpu", digest=digest).model


def classify_rows(source: tuple, model_bytes: bytes, digest: str, start: int, stop: int,
                  bf_index: np.ndarray, batch_size: int | None):
    """One task, run on a worker: (start, stop, probabilities, bright field) for scan rows [start, stop).

    ``source`` is (path, time index or None, dataset, scan shape): what :class:`Step` holds,
    as a plain tuple (Dask would take a dataclass argument apart).
    """
    step = Step(Path(source[0]), *source[1:])
    if not os.path.exists(step.path):
        raise GhostmapError(f"{step.path} is not visible on worker {socket.gethostname()}: the workers need the scan "
                            "on a filesystem they share with the client, at the same path")
    model = _worker_model(model_bytes, digest)
    with step.open() as scan:
        parts = list(iter_predictions(scan, model, start, stop, batch_size=batch_size, device="cpu",
                                      bf_index=bf_index))
    return (start, stop, np.concatenate([p for _, _, p, _ in parts]),
            np.concatenate([b for _, _, _, b in parts]))


def default_rows_per_task(n_rows: int, row_bytes: int, pool: int, n_threads: int) -> int:
    """Scan rows per task: about two tasks per worker thread, within the halo and raw-data bounds.

    A task re-reads ``pool // 2`` rows on either side for pooling, so it gets enough rows
    that these stay under :data:`HALO_SHARE` of them; above that, at most :data:`TASK_BYTES`
    of raw data (``ghostmap.reading.rows_per_block``'s rule).
    """
    fewest = max(1, math.ceil(2 * (pool // 2) / HALO_SHARE))
    most = max(fewest, TASK_BYTES // max(1, row_bytes))
    balanced = math.ceil(n_rows / (2 * max(1, n_threads)))
    return max(1, min(n_rows, max(fewest, min(most, balanced))))


@contextmanager
def cluster_client(scheduler: str | None = None, n_workers: int | None = None, client=None):
    """``client``, or a client for ``scheduler``, or one for a new LocalCluster; closes what it opened.

    Keep one open across several :func:`predict_on_cluster` calls (a series) so the
    cluster starts once.
    """
    distributed = _distributed()
    if client is not None:
        yield client
        return
    if scheduler is not None:
        try:
            own = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        except (OSError, ValueError, TypeError) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise GhostmapError(f"could not reach the Dask scheduler at {scheduler}: {reason}") from None
        with own:
            yield own
        return
    with distributed.LocalCluster(n_workers=n_workers or 2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", silence_logs=logging.ERROR) as cluster:
        with distributed.Client(cluster, set_as_default=False) as own:
            yield own


def _failure(exc: BaseException, start: int, stop: int, distributed) -> GhostmapError:
    """A one-line error for a task that failed on the cluster."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, distributed.KilledWorker):
        return GhostmapError(f"a Dask worker died while classifying rows {start}-{stop - 1}: {reason}")
    return GhostmapError(f"classifying rows {start}-{stop - 1} failed on a Dask worker: {reason}")


def predict_on_cluster(
    data,
    model: Model | str | os.PathLike,
    *,
    scheduler: str | None = None,
    n_workers: int | None = None,
    dataset: str | None = None,
    scan_shape: tuple[int, int] | None = None,
    rows_per_task: int | None = None,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    client=None,
) -> Prediction:
    """Classify every pattern of the scan file ``data`` on a Dask cluster; same result as ``predict``.

    ``data`` is a file path, or a :class:`ghostmap.series.Step` (one time step of a 5-D dataset).

    The cluster is ``client``, else a ``distributed.Client`` for the ``scheduler`` address,
    else a ``LocalCluster`` of ``n_workers`` (default 2) one-thread processes started for
    this call. Workers read the file at ``data``'s absolute path. ``progress(patterns_done,
    patterns_total)`` is called as each task's results arrive.
    """
    if isinstance(data, Step):
        scan_step = Step(data.path.absolute(), data.time_index, data.dataset, data.scan_shape)
    elif isinstance(data, (str, os.PathLike)):
        scan_step = Step(Path(os.path.abspath(data)), None, dataset, scan_shape)
    else:
        raise GhostmapError(
            f"predicting on a Dask cluster needs a scan file the workers can open, not a {type(data).__name__}; "
            "save the scan to a file on a shared filesystem, or use predict()"
        )
    if not isinstance(model, Model):
        model = Model.load(model)
    if rows_per_task is not None and int(rows_per_task) < 1:
        raise GhostmapError(f"rows per task must be at least 1, got {rows_per_task}")
    with scan_step.open() as scan:
        model.check_scan(scan.detector_shape, scan.source)
        bf_index = bright_field_index(scan)
        (n_rows, n_cols), row_bytes = scan.scan_shape, scan.nbytes // scan.shape[0]
    distributed = _distributed()
    with cluster_client(scheduler, n_workers, client) as client:
        if not client.nthreads():
            try:
                client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
            except (TimeoutError, OSError):
                raise GhostmapError(f"the Dask scheduler has no workers (waited {CONNECT_TIMEOUT_S} s)") from None
        model_bytes = model.to_bytes()
        digest = hashlib.sha256(model_bytes).hexdigest()
        step = int(rows_per_task or default_rows_per_task(n_rows, row_bytes, model.preprocessing.pool,
                                                          sum(client.nthreads().values())))
        [shared_model] = client.scatter([model_bytes], broadcast=True)  # once to every worker
        [shared_bf] = client.scatter([bf_index], broadcast=True)
        token = uuid.uuid4().hex[:8]
        ranges = {}
        for start in range(0, n_rows, step):
            stop = min(n_rows, start + step)
            source = (str(scan_step.path), scan_step.time_index, scan_step.dataset, scan_step.scan_shape)
            future = client.submit(classify_rows, source, shared_model, digest, start, stop,
                                   shared_bf, batch_size, key=f"ghostmap-rows-{start}-{stop}-{token}", pure=False)
            ranges[future] = (start, stop)
        probabilities = np.zeros((n_rows, n_cols, len(model.classes)), np.float32)
        bright_field = np.zeros((n_rows, n_cols), np.float32)
        done = 0
        try:
            for future in distributed.as_completed(list(ranges), loop=client.loop):
                start, stop = ranges[future]
                try:
                    _, _, probabilities[start:stop], bright_field[start:stop] = future.result()
                except GhostmapError as exc:  # the file or the model refused on the worker
                    raise GhostmapError(f"rows {start}-{stop - 1} on a Dask worker: {exc}") from None
                except Exception as exc:  # a dead worker, or anything else a task raised
                    raise _failure(exc, start, stop, distributed) from None
                done += (stop - start) * n_cols
                if progress:
                    progress(done, n_rows * n_cols)
        except BaseException:
            client.cancel(list(ranges))
            raise
    return Prediction(probabilities.argmax(-1).astype(np.int64), probabilities, tuple(model.classes), bright_field)
