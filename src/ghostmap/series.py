"""Follow an experiment through time: one model applied to a series of scans.

A series is a list of *steps*, each one scan: several files, a glob, or the time axis of a
5-D dataset (time, scan_row, scan_col, det_row, det_col). :class:`SeriesWriter` keeps an
output folder that can be stopped and resumed at any point:

* ``step_0000/``, ``step_0001/`` ... the usual single-scan results (predictions.npz,
  domain_map.png, summary.png), one folder per step;
* ``series.npz`` — ``labels`` (T, rows, cols) int64, ``probabilities`` (T, rows, cols, C)
  float32, ``classes`` (C,), ``sources`` (T,), ``fractions`` (T, C) float64, ``changed``
  (T,) int64 and ``wall_shift`` (T,) float64 (both measured against the previous step);
* ``series.csv`` — the same per-step numbers as a table;
* ``fractions.png`` — class fractions and wall motion against step;
* ``domain_maps.gif`` — the domain map of every step, animated;
* ``series.json`` — which source made each step, with the model's fingerprint, so a
  restarted run skips finished steps and never mixes two models in one folder.

Every file is written under a temporary name and renamed, and a step is recorded in
``series.json`` only after its folder is complete, so a killed run loses at most the step
it was working on.
"""

from __future__ import annotations

import csv
import glob as globbing
import hashlib
import io
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np

from .atomic import atomic_path, write_text
from .errors import GhostmapError
from .labels import class_fractions
from .reading import Scan, open_scan, open_time_series, time_series_length

if TYPE_CHECKING:  # torch loads only when a series is predicted, so a single scan's reading can start first
    from .model import Model
    from .prediction import Prediction

MANIFEST_FILE = "series.json"
SERIES_FILE = "series.npz"
TABLE_FILE = "series.csv"
FRACTIONS_FILE = "fractions.png"
ANIMATION_FILE = "domain_maps.gif"
WALL_CLASS = "none"
FIGURES_ALWAYS = 50  # series up to this many steps redraw their figures after every step
FIGURES_EVERY_S = 30.0  # longer ones at most this often, and at the end of a run
_GLOB_CHARS = re.compile(r"[*?\[]")


# ------------------------------------------------------------------ what changed between steps


def changed_positions(before: np.ndarray, after: np.ndarray) -> int:
    """How many probe positions changed class between two label maps of the same shape."""
    return int(np.count_nonzero(np.asarray(before) != np.asarray(after)))


def wall_centres(labels: np.ndarray, classes) -> np.ndarray:
    """(rows, cols) bool: positions on the centre line of a wall between two domains.

    Wall positions (class 'none', when the classes have it) are first given the class of
    the nearest domain position, so a wall several positions wide collapses to the line
    where two domains meet; that line is marked on the side of the lower row/column.
    """
    labels = np.asarray(labels)
    classes = list(classes)
    wall = labels == classes.index(WALL_CLASS) if WALL_CLASS in classes else np.zeros(labels.shape, bool)
    if wall.all():
        return np.zeros(labels.shape, bool)
    filled = labels
    if wall.any():
        from scipy import ndimage  # here: ghostmap predict imports this module before it starts reading

        _, (iy, ix) = ndimage.distance_transform_edt(wall, return_indices=True)
        filled = labels[iy, ix]
    centre = np.zeros(labels.shape, bool)
    centre[:-1] |= filled[:-1] != filled[1:]
    centre[:, :-1] |= filled[:, :-1] != filled[:, 1:]
    return centre


def wall_shift(before: np.ndarray, after: np.ndarray, classes) -> float:
    """How far (in probe positions) the domain walls moved between two label maps.

    Each wall is thinned to the line where its two domains meet; each point of one map's
    lines is matched to the nearest point of the other's, both ways, and the median
    distance is taken: a wall moved rigidly by d positions along its normal gives d, and
    walls entering or leaving the field of view do not drag the figure away.

    Parameters
    ----------
    before, after : numpy.ndarray
        (rows, cols) class indices of two steps.
    classes : sequence of str
        The class names the indices refer to (``none`` is not a domain).

    Returns
    -------
    float
        The median wall displacement; NaN when either map has no wall.

    Examples
    --------
    >>> import numpy as np
    >>> import ghostmap as gm
    >>> before = np.zeros((8, 20), int)
    >>> before[:, 10:] = 1
    >>> after = np.zeros((8, 20), int)
    >>> after[:, 13:] = 1
    >>> float(gm.wall_shift(before, after, ["horizontal", "vertical"]))
    3.0
    """
    a, b = wall_centres(before, classes), wall_centres(after, classes)
    if not a.any() or not b.any():
        return float("nan")
    from scipy import ndimage

    to_a = ndimage.distance_transform_edt(~a)
    to_b = ndimage.distance_transform_edt(~b)
    return float(np.median(np.concatenate([to_a[b], to_b[a]])))


# ------------------------------------------------------------------------------ the steps


@dataclass(frozen=True)
class Step:
    """One scan of a series: a file, or one time index of a 5-D dataset in a file."""

    path: Path
    time_index: int | None = None
    dataset: str | None = None
    scan_shape: tuple[int, int] | None = None

    @property
    def source(self) -> str:
        """The absolute file name, with ``[t]`` for a time step of a 5-D dataset."""
        path = self.path.resolve()
        return str(path) if self.time_index is None else f"{path}[{self.time_index}]"

    def open(self) -> Scan:
        """The step's scan, opened lazily (close it after use)."""
        if self.time_index is None:
            return open_scan(self.path, dataset=self.dataset, scan_shape=self.scan_shape)
        series = open_time_series(self.path, self.dataset)
        scan = series[self.time_index]
        scan._closers.append(series.close)  # the step owns the file while it is open
        return scan

    def signature(self) -> dict:
        """What identifies this step's input on disk: a changed file is a different input."""
        st = file_state(self.path)
        return {"source": self.source, "size": st[0], "mtime_ns": st[1]}


def file_state(path: Path) -> tuple[int, int]:
    """(size, newest mtime in ns) of a file, or of everything inside a folder (a zarr store)."""
    path = Path(path)
    if path.is_dir():
        files = [p.stat() for p in path.rglob("*") if p.is_file()]
        return sum(f.st_size for f in files), max((f.st_mtime_ns for f in files), default=0)
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _natural_key(path: str):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(path))]


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Paths from file names and glob patterns (sorted naturally: scan_2 before scan_10)."""
    paths: list[Path] = []
    for item in inputs:
        text = str(item)
        if not Path(text).exists() and _GLOB_CHARS.search(text):
            matches = sorted(globbing.glob(text), key=_natural_key)
            if not matches:
                raise GhostmapError(f"no files match '{text}'")
            paths.extend(Path(m) for m in matches)
        else:
            paths.append(Path(text))
    return paths


def series_steps(inputs: Iterable[str | os.PathLike], dataset: str | None = None,
                 scan_shape: tuple[int, int] | None = None) -> list[Step]:
    """The steps of a series: one per file, or one per time index of a 5-D dataset.

    Parameters
    ----------
    inputs : iterable of str or os.PathLike
        Files, globs (``'insitu/scan_*.npy'``, sorted naturally), or one file holding a
        5-D (time, scan_row, scan_col, det_row, det_col) dataset.
    dataset : str, optional
        The dataset inside an HDF5/EMD/zarr file.
    scan_shape : tuple of int, optional
        (rows, cols) for formats that do not store it (``.mib``).

    Returns
    -------
    list of Step
        One step per scan, in time order.

    Raises
    ------
    GhostmapError
        When a glob matches nothing or a file cannot be read.

    Examples
    --------
    >>> import ghostmap as gm
    >>> steps = gm.series_steps(["insitu/scan_*.npy"])  # doctest: +SKIP
    >>> len(steps)  # doctest: +SKIP
    6
    """
    steps: list[Step] = []
    for path in expand_inputs(inputs):
        if not path.exists():
            raise GhostmapError(f"no such file: {path}")
        n_times = time_series_length(path, dataset)
        if n_times is None:
            steps.append(Step(path, None, dataset, scan_shape))
        else:
            steps.extend(Step(path, t, dataset, scan_shape) for t in range(n_times))
    if not steps:
        raise GhostmapError("no scans given")
    return steps


def is_series(inputs: list[str | os.PathLike], dataset: str | None = None) -> bool:
    """Whether ``inputs`` ask for a series: several paths, a glob, or a 5-D dataset."""
    if len(inputs) != 1:
        return True
    text = str(inputs[0])
    if not Path(text).exists():
        return bool(_GLOB_CHARS.search(text))
    return time_series_length(text, dataset) is not None


# ---------------------------------------------------------------------------- the outputs


def model_fingerprint(model: Model) -> str:
    """SHA-256 over the model's classes, preprocessing and weights: which model made a result."""
    h = hashlib.sha256()
    h.update(json.dumps([list(model.classes), model.arch, model.preprocessing.to_dict(),
                         list(model.detector_shape)], sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.network.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def step_folder(index: int) -> str:
    return f"step_{index:04d}"


class SeriesWriter:
    """An output folder that collects one step at a time and can be resumed.

    ``series.json`` lists finished steps; on opening, their results are read back so the
    series outputs keep growing where they stopped.
    """

    def __init__(self, out_dir: str | os.PathLike, model: Model):
        from .outputs import load_prediction

        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise GhostmapError(f"{self.out_dir} exists and is not a folder")
        self.classes = tuple(model.classes)
        self.fingerprint = model_fingerprint(model)
        self.entries: list[dict] = []
        self.rejected: dict[str, dict] = {}
        self._figures_at, self._figures_stale = float("-inf"), False
        self.results: list[Prediction] = []
        manifest = self.out_dir / MANIFEST_FILE
        if manifest.exists():
            try:
                meta = json.loads(manifest.read_text(encoding="utf-8"))
                entries, rejected = list(meta["steps"]), dict(meta.get("rejected", {}))
                model_id = meta["model"]
            except (ValueError, KeyError, TypeError) as exc:
                raise GhostmapError(f"{manifest} is damaged ({exc}); move it away to start a new series") from None
            if model_id != self.fingerprint:
                raise GhostmapError(f"{self.out_dir} holds a series classified with another model; "
                                    "choose a new --out folder (nothing was changed)")
            for entry in entries:
                self.results.append(load_prediction(self.out_dir / entry["folder"]))
            self.entries, self.rejected = entries, rejected
        # how each step differs from the one before, kept so a new step costs one comparison
        self.motion = [step_motion(self.results, t, self.classes) for t in range(len(self.results))]

    def __len__(self) -> int:
        return len(self.entries)

    def find(self, source: str) -> dict | None:
        """The finished entry for ``source``, if any."""
        return next((e for e in self.entries if e["source"] == source), None)

    def is_done(self, step: Step) -> bool:
        """Whether ``step`` was classified already from the same input file."""
        entry = self.find(step.source)
        if entry is None:
            return False
        sig = step.signature()
        return entry["size"] == sig["size"] and entry["mtime_ns"] == sig["mtime_ns"]

    def add(self, step: Step | dict, result: Prediction) -> dict:
        """Write one step's results and bring the series outputs up to date."""
        from .outputs import save_prediction

        if tuple(result.classes) != self.classes:
            raise GhostmapError(f"step classes {result.classes} differ from the series' {self.classes}")
        if self.results and result.labels.shape != self.results[0].labels.shape:
            shape = "x".join(map(str, result.labels.shape))
            first = "x".join(map(str, self.results[0].labels.shape))
            raise GhostmapError(f"{step.source if isinstance(step, Step) else step['source']} has scan shape "
                                f"{shape}, but the series so far has {first}")
        signature = step.signature() if isinstance(step, Step) else dict(step)
        existing = self.find(signature["source"])
        index = self.entries.index(existing) if existing else len(self.entries)
        folder = step_folder(index)
        save_prediction(self.out_dir / folder, result, title=Path(signature["source"]).name)
        entry = {**signature, "folder": folder}
        if existing:
            self.entries[index], self.results[index] = entry, result
            for t in range(index, min(index + 2, len(self.results))):
                self.motion[t] = step_motion(self.results, t, self.classes)
        else:
            self.entries.append(entry)
            self.results.append(result)
            self.motion.append(step_motion(self.results, index, self.classes))
        self.rejected.pop(signature["source"], None)
        self.write_summary()
        return entry

    def reject(self, source: str, reason: str, state: tuple[int, int] | None = None) -> None:
        """Record a source that could not be classified, so a watcher reports it once."""
        self.rejected[source] = {"reason": reason, "size": state[0] if state else None,
                                 "mtime_ns": state[1] if state else None}
        self._write_manifest()

    def _write_manifest(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        meta = {"format": "ghostmap-series", "version": 1, "model": self.fingerprint, "classes": list(self.classes),
                "steps": self.entries, "rejected": self.rejected}
        write_text(self.out_dir / MANIFEST_FILE, json.dumps(meta, indent=2) + "\n")

    def summary(self) -> dict[str, np.ndarray]:
        """The series arrays, as written to ``series.npz``."""
        return series_arrays(self.results, self.classes, [e["source"] for e in self.entries], self.motion)

    def write_summary(self, figures: bool | None = None) -> dict[str, Path]:
        """Rewrite series.npz, series.csv, fractions.png and domain_maps.gif, then the manifest.

        The figures take longer as the series grows, so past :data:`FIGURES_ALWAYS` steps
        they are redrawn at most every :data:`FIGURES_EVERY_S` seconds unless ``figures`` is
        True; :meth:`flush` brings them up to date at the end of a run.
        """
        now = time.monotonic()
        if figures is None:
            figures = len(self) <= FIGURES_ALWAYS or now - self._figures_at >= FIGURES_EVERY_S
        arrays = self.summary()
        paths = {name: self.out_dir / f for name, f in (("series", SERIES_FILE), ("table", TABLE_FILE),
                                                        ("fractions", FRACTIONS_FILE),
                                                        ("animation", ANIMATION_FILE))}
        with atomic_path(paths["series"]) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        write_text(paths["table"], series_table(arrays))
        if figures:
            save_fractions_figure(paths["fractions"], arrays)
            save_animation(paths["animation"], self.results, arrays["sources"])
            self._figures_at = now
        self._figures_stale = not figures
        self._write_manifest()
        return paths

    def flush(self) -> None:
        """Redraw the figures if a step was added since they were last drawn."""
        if self._figures_stale and len(self):
            self.write_summary(figures=True)


def step_motion(results: list[Prediction], t: int, classes) -> tuple[int, float]:
    """(positions that changed class, wall shift) from step ``t - 1`` to step ``t``; (0, NaN) at the first."""
    if t == 0:
        return 0, float("nan")
    before, after = results[t - 1].labels, results[t].labels
    return changed_positions(before, after), wall_shift(before, after, classes)


def series_arrays(results: list[Prediction], classes, sources,
                  motion: list[tuple[int, float]] | None = None) -> dict[str, np.ndarray]:
    """Stack per-step predictions and measure how the domains changed from step to step.

    ``motion`` is :func:`step_motion` for every step, when the caller keeps it already.
    """
    labels = np.stack([r.labels for r in results]).astype(np.int64)
    probabilities = np.stack([r.probabilities for r in results]).astype(np.float32)
    if motion is None:
        motion = [step_motion(results, t, classes) for t in range(len(results))]
    changed = np.array([m[0] for m in motion], np.int64)
    shift = np.array([m[1] for m in motion], np.float64)
    return {
        "labels": labels,
        "probabilities": probabilities,
        "classes": np.array(classes, dtype=str),
        "sources": np.array([str(s) for s in sources], dtype=str),
        "fractions": np.stack([class_fractions(r.labels, len(classes)) for r in results]).astype(np.float64),
        "changed": changed,
        "wall_shift": shift,
    }


def series_table(arrays: dict[str, np.ndarray]) -> str:
    """series.csv: one line per step with class fractions and wall motion."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    classes = [str(c) for c in arrays["classes"]]
    writer.writerow(["step", "source", *[f"fraction_{c}" for c in classes], "changed_positions",
                     "changed_fraction", "wall_shift"])
    n_positions = int(np.prod(arrays["labels"].shape[1:]))
    for t, source in enumerate(arrays["sources"]):
        shift = arrays["wall_shift"][t]
        writer.writerow([t, source, *[f"{f:.6f}" for f in arrays["fractions"][t]], int(arrays["changed"][t]),
                         f"{arrays['changed'][t] / n_positions:.6f}", "" if math.isnan(shift) else f"{shift:.4f}"])
    return buf.getvalue()


def save_fractions_figure(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Class fractions (top) and wall motion (bottom) against step."""
    from matplotlib.figure import Figure

    from .outputs import class_colours

    classes = [str(c) for c in arrays["classes"]]
    steps = np.arange(len(arrays["sources"]))
    fig = Figure(figsize=(7, 5.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    for c, colour in zip(range(len(classes)), class_colours(classes)):
        top.plot(steps, arrays["fractions"][:, c] * 100, "o-", color=colour, label=classes[c])
    top.set_ylabel("positions (%)")
    top.set_ylim(0, 100)
    top.legend(loc="best", fontsize="small")
    top.set_title("class fractions per step")
    n_positions = int(np.prod(arrays["labels"].shape[1:]))
    changed = arrays["changed"] / n_positions * 100
    bottom.bar(steps, changed, color="0.75", label="positions that changed class (%)")
    bottom.set_ylabel("changed (%)")
    bottom.set_ylim(0, max(float(changed.max()), 1.0) * 1.4)
    twin = bottom.twinx()
    shift = arrays["wall_shift"]
    twin.plot(steps, shift, "o-", color="k", label="wall shift (probe positions)")
    twin.set_ylabel("wall shift (probe positions)")
    finite = shift[np.isfinite(shift)]
    twin.set_ylim(0, max(float(finite.max()) if finite.size else 1.0, 1.0) * 1.4)
    bottom.set_xlabel("step")
    bottom.set_xticks(steps if len(steps) <= 20 else steps[:: max(1, len(steps) // 10)])
    handles = bottom.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    bottom.legend(handles, [h.get_label() for h in handles], loc="upper left", ncol=2, fontsize="small")
    bottom.set_title("domain-wall motion since the previous step")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def save_animation(path: Path, results: list[Prediction], sources, seconds_per_frame: float = 0.6) -> None:
    """An animated GIF of the domain maps, one frame per step, labelled with step and source."""
    from PIL import Image, ImageDraw

    from .outputs import domain_rgb

    rows, cols = results[0].labels.shape
    scale = max(1, math.ceil(480 / max(cols, 1)))
    frames = []
    for t, (result, source) in enumerate(zip(results, sources)):
        rgb = domain_rgb(result.probabilities, result.classes)
        image = Image.fromarray(rgb, "RGB").resize((cols * scale, rows * scale), Image.NEAREST)
        frame = Image.new("RGB", (image.width, image.height + 16), "white")
        frame.paste(image, (0, 16))
        ImageDraw.Draw(frame).text((3, 2), f"step {t}  {Path(str(source)).name}", fill="black")
        frames.append(frame.convert("P", palette=Image.ADAPTIVE, colors=64))
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:],
                       duration=int(seconds_per_frame * 1000), loop=0)


# ---------------------------------------------------------------------------- running one


def check_steps(steps: list[Step], model: Model) -> None:
    """Refuse a series with a scan whose detector (or scan) shape does not fit, before any work."""
    first_shape = None
    for step in steps:
        with step.open() as scan:
            model.check_scan(scan.detector_shape, step.source)
            if first_shape is None:
                first_shape = scan.scan_shape
            elif scan.scan_shape != first_shape:
                raise GhostmapError(f"{step.source} has scan shape {scan.scan_shape[0]}x{scan.scan_shape[1]}, but "
                                    f"{steps[0].source} has {first_shape[0]}x{first_shape[1]}")


def predict_series(
    steps: list[Step] | list[str | os.PathLike],
    model: Model | str | os.PathLike,
    out_dir: str | os.PathLike,
    predict_step: Callable[[Step, Scan, Model], Prediction] | None = None,
    on_step: Callable[[int, int, Step, str], None] | None = None,
) -> SeriesWriter:
    """Classify every step of a series into ``out_dir``, skipping steps already finished there.

    All steps must share one scan shape and the model's detector shape; this is checked
    before any work starts. Running it again resumes: unchanged steps are kept, a rewritten
    file is classified again.

    Parameters
    ----------
    steps : list of Step, or list of str or os.PathLike
        The scans in time order: files, or the steps :func:`series_steps` made (e.g. of a
        5-D dataset).
    model : Model, str or os.PathLike
        The model, or its folder.
    out_dir : str or os.PathLike
        The series folder (one ``step_NNNN/`` per scan plus ``series.npz``, ``series.csv``,
        ``fractions.png``, ``domain_maps.gif`` and ``series.json``).
    predict_step : callable, optional
        ``predict_step(step, scan, model)`` classifies one opened scan (default
        :func:`predict`; pass a wrapper to add progress, or to run it on a cluster).
    on_step : callable, optional
        ``on_step(index, total, step, status)`` hears ``'done'`` or ``'skipped'`` per step.

    Returns
    -------
    SeriesWriter
        The series folder's writer; ``len()`` is the number of steps in it.

    Raises
    ------
    GhostmapError
        When a scan cannot be read, the shapes differ, or ``out_dir`` was made with
        another model.

    Examples
    --------
    >>> import ghostmap as gm
    >>> series = gm.predict_series(["t0.h5", "t1.h5", "t2.h5"], "model", "series")  # doctest: +SKIP
    >>> gm.load_series("series")["wall_shift"]  # doctest: +SKIP
    array([nan, 2.2, 2.3])
    """
    from .model import Model
    from .prediction import predict

    if not isinstance(model, Model):
        model = Model.load(model)
    if steps and not isinstance(steps[0], Step):
        steps = series_steps(steps)
    check_steps(steps, model)
    writer = SeriesWriter(out_dir, model)
    predict_step = predict_step or (lambda step, scan, m: predict(scan, m))
    for i, step in enumerate(steps):
        if writer.is_done(step):
            status = "skipped"
        else:
            with step.open() as scan:
                result = predict_step(step, scan, model)
            writer.add(step, result)
            status = "done"
        if on_step:
            on_step(i, len(steps), step, status)
    writer.flush()
    if len(writer) and not all((writer.out_dir / f).exists() for f in (SERIES_FILE, TABLE_FILE, FRACTIONS_FILE,
                                                                       ANIMATION_FILE)):
        writer.write_summary(figures=True)  # a resumed run whose summary files were removed
    return writer


def load_series(out_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read ``series.npz`` from a series folder.

    Parameters
    ----------
    out_dir : str or os.PathLike
        The series folder (or its ``series.npz``).

    Returns
    -------
    dict of str to numpy.ndarray
        ``labels`` (T, rows, cols), ``probabilities`` (T, rows, cols, C), ``classes`` (C,),
        ``sources`` (T,), ``fractions`` (T, C), ``changed`` (T,) and ``wall_shift`` (T,).

    Raises
    ------
    GhostmapError
        When the folder holds no series.

    Examples
    --------
    >>> import ghostmap as gm
    >>> arrays = gm.load_series("series")  # doctest: +SKIP
    >>> arrays["fractions"].shape  # doctest: +SKIP
    (6, 3)
    """
    path = Path(out_dir)
    path = path / SERIES_FILE if path.is_dir() else path
    if not path.is_file():
        raise GhostmapError(f"no series at {path}; run 'ghostmap predict' on several scans first")
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def iter_new_files(folder: Path, patterns: tuple[str, ...]) -> Iterator[Path]:
    """Files (or zarr folders) in ``folder`` matching ``patterns``, ignoring hidden and partial names."""
    seen = set()
    for pattern in patterns:
        for path in sorted(folder.glob(pattern), key=lambda p: _natural_key(p.name)):
            if path.name.startswith(".") or path.name.endswith((".tmp", ".part", ".partial", ".crdownload")):
                continue
            if path not in seen:
                seen.add(path)
                yield path
