"""One labelling session: the label file, its sidecar, the sampler's queue and the preview.

Everything a person does is on disk the moment it is done. A label goes straight into
the label file (``ghostmap.labels.write_labels``, atomic); what the label file cannot
hold (positions skipped, the undo history, a position opened outside the queue) goes
into a small JSON sidecar beside it, ``LABELS.csv.session.json``, also written
atomically. The queue itself is never stored: it is recomputed from the labels by the
stateless sampler (:func:`ghostmap.sampling.propose`), so a session killed at any moment
and started again with the same command resumes exactly where it was.

Skipped positions stay out of the way, not out of the loop: they go to the back of the
queue, and come round again once every other proposal is labelled (the adaptive sampler
refines walls only after its coarse grid is complete).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from ghostmap.atomic import write_text
from ghostmap.errors import GhostmapError
from ghostmap.labels import DEFAULT_CLASSES, Labels, class_fractions, read_labels, write_labels
from ghostmap.outputs import class_colours, domain_rgb
from ghostmap.preprocessing import Preprocessing, preprocess_positions
from ghostmap.reading import bright_field_mask, mean_pattern, virtual_image
from ghostmap.sampling import STRATEGIES, propose, uncertainty
from ghostmap.training import TrainingOptions, training_preprocessing

from . import render

logger = logging.getLogger(__name__)

__all__ = ["LabelSession", "Conflict", "NotFound", "sidecar_path", "MIN_TRAIN_LABELS", "QUEUE_MODES"]

SIDECAR_SUFFIX = ".session.json"
SIDECAR_VERSION = 1
#: Undo steps kept (in memory and in the sidecar).
MAX_HISTORY = 500
#: Labels (in at least two classes) needed before "Train and preview" is offered.
MIN_TRAIN_LABELS = 6
#: Least confident positions proposed at a time in the "uncertainty" queue mode (the active sampler's batch).
UNCERTAIN_QUEUE = 20
#: Where the next positions come from: the adaptive/random sampler, or the preview's least confident positions.
QUEUE_MODES = ("sampler", "uncertainty")
#: Longest class name accepted.
MAX_CLASS_NAME = 40
RESERVED_KEYS = ("U", "S")


class Conflict(GhostmapError):
    """The request is well formed but cannot be done now (nothing to undo, training running...)."""


class NotFound(GhostmapError):
    """What was asked for does not exist (yet)."""


def sidecar_path(labels_path: str | Path) -> Path:
    """The JSON sidecar that remembers skips, undo history and the open position."""
    labels_path = Path(labels_path)
    return labels_path.with_name(labels_path.name + SIDECAR_SUFFIX)


def resolve_classes(requested: Iterable[str] | None, labels: Labels) -> tuple[str, ...]:
    """The classes offered: ``requested`` (or the default set, or the label file's), plus any in the file.

    A label file that uses none of the default names (horizontal, vertical, none)
    defines the classes itself; classes found in the file are always kept, so no
    existing label becomes unlabellable.
    """
    found = labels.classes
    if requested is not None:
        base = []
        for name in requested:
            name = str(name).strip()
            if name and name not in base:
                base.append(name)
        if not base:
            raise GhostmapError("no class names given (e.g. --classes horizontal,vertical,none)")
    elif not found or set(found) & set(DEFAULT_CLASSES):
        base = list(DEFAULT_CLASSES)
    else:
        base = []
    classes = tuple(base) + tuple(c for c in found if c not in base)
    for name in classes:
        if len(name) > MAX_CLASS_NAME or any(ch in name for ch in ',"\n\r') or not name.isprintable():
            raise GhostmapError(f"class name {name!r} is not usable (at most {MAX_CLASS_NAME} printable "
                                "characters, no commas or quotes)")
    if len(classes) < 2:
        raise GhostmapError(f"labelling needs at least two classes, got {', '.join(classes)}")
    return classes


def class_keys(classes: tuple[str, ...]) -> list[dict]:
    """Keyboard keys of each class: its number (1-9) and its first letter when unique (not U or S)."""
    used = set(RESERVED_KEYS)
    keys = []
    for i, name in enumerate(classes):
        letter = name[:1].upper()
        if not ("A" <= letter <= "Z") or letter in used:
            letter = None
        else:
            used.add(letter)
        keys.append({"digit": str(i + 1) if i < 9 else None, "letter": letter})
    return keys


class LabelSession:
    """The state behind the label app, safe to use from several threads."""

    def __init__(self, scan, labels_path: str | Path, classes: Iterable[str] | None = None, budget: int = 50,
                 strategy: str = "adaptive", step: int | None = None, seed: int = 0,
                 training: TrainingOptions | None = None):
        self.scan = scan
        self.rows, self.cols = (int(n) for n in scan.scan_shape)
        self.labels_path = Path(labels_path)
        if self.labels_path.suffix.lower() in (".yaml", ".yml"):
            raise GhostmapError(f"{self.labels_path}: the label app writes CSV; convert YAML labels first with "
                                "'ghostmap import-labels'")
        if self.labels_path.is_dir():
            raise GhostmapError(f"{self.labels_path}: is a folder, expected a label file (CSV)")
        self.sidecar = sidecar_path(self.labels_path)
        self.budget, self.strategy, self.step, self.seed = budget, strategy, step, seed
        if strategy not in STRATEGIES:
            raise GhostmapError(f"unknown sampling strategy {strategy!r} (choose {' or '.join(STRATEGIES)})")
        self.training_options = training or TrainingOptions(seed=seed)
        self._labels = read_labels(self.labels_path, scan_shape=(self.rows, self.cols), missing_ok=True)
        propose((self.rows, self.cols), self._labels, budget, strategy=strategy, step=step, seed=seed)  # checks options
        self.classes = resolve_classes(classes, self._labels)
        self.colours = [render.hex_colour(c) for c in class_colours(self.classes)]
        self._lock = threading.RLock()
        self._skipped: list[tuple[int, int]] = []
        self._history: list[dict] = []
        self._current: tuple[int, int] | None = None
        self._mode = "sampler"
        self.warnings: list[str] = []
        self._load_sidecar()
        self._queue_cache: tuple[int, list] | None = None
        self._version = 0  # bumped on every change of labels or skips
        # computed once: what the network sees is fitted exactly as 'ghostmap train' fits it (same input size
        # for the same architecture), the overview is the bright field
        self.preprocessing: Preprocessing = training_preprocessing(scan, self.training_options.arch)
        mean = mean_pattern(scan)
        self.bright_field = virtual_image(scan, bright_field_mask(mean))
        self._prediction = None
        self.model = None  # the model behind the preview, once trained
        self._preview_version = 0
        self._training = {"state": "idle", "message": ""}
        self._thread: threading.Thread | None = None

    # -- sidecar --------------------------------------------------------------------------
    def _in_scan(self, x, y) -> bool:
        return isinstance(x, int) and isinstance(y, int) and 0 <= x < self.cols and 0 <= y < self.rows

    def _load_sidecar(self) -> None:
        """Skips, undo history and open position from the sidecar; a damaged one is set aside, not fatal."""
        if not self.sidecar.exists():
            return
        try:
            data = json.loads(self.sidecar.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("version") != SIDECAR_VERSION:
                raise ValueError("unknown version")
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            self.warnings.append(f"{self.sidecar}: ignored ({exc}); skips and undo history start afresh")
            return
        labelled = self._labels.to_dict()
        for item in data.get("skipped") or []:
            if isinstance(item, list) and len(item) == 2 and self._in_scan(*item):
                p = (item[0], item[1])
                if p not in labelled and p not in self._skipped:
                    self._skipped.append(p)
        # keep only the undo steps that still agree with the label file, oldest first
        for step in (data.get("history") or [])[-MAX_HISTORY:]:
            if not isinstance(step, dict) or not self._in_scan(step.get("x"), step.get("y")):
                continue
            p = (step["x"], step["y"])
            if step.get("op") == "label" and isinstance(step.get("label"), str) and labelled.get(p) == step["label"]:
                prev = step.get("previous")
                self._history.append({"op": "label", "x": p[0], "y": p[1], "label": step["label"],
                                      "previous": prev if isinstance(prev, str) else None})
            elif step.get("op") == "skip" and p in self._skipped:
                self._history.append({"op": "skip", "x": p[0], "y": p[1]})
        current = data.get("current")
        if isinstance(current, list) and len(current) == 2 and self._in_scan(*current):
            self._current = (current[0], current[1])
        if data.get("mode") in QUEUE_MODES:
            self._mode = data["mode"]  # falls back to the sampler until a preview exists

    def _save_sidecar(self) -> None:
        data = {
            "version": SIDECAR_VERSION,
            "labels": self.labels_path.name,
            "skipped": [list(p) for p in self._skipped],
            "current": list(self._current) if self._current is not None else None,
            "mode": self._mode,
            "history": self._history[-MAX_HISTORY:],
        }
        write_text(self.sidecar, json.dumps(data, separators=(",", ":")) + "\n")

    # -- checks ---------------------------------------------------------------------------
    def check_position(self, x: int, y: int) -> tuple[int, int]:
        if not self._in_scan(x, y):
            raise GhostmapError(f"position x={x}, y={y} is outside the scan ({self.cols} columns x {self.rows} rows)")
        return x, y

    def check_class(self, name: str) -> str:
        if name not in self.classes:
            raise GhostmapError(f"unknown class {name!r} (classes: {', '.join(self.classes)})")
        return name

    # -- queue ----------------------------------------------------------------------------
    @property
    def labels(self) -> Labels:
        return self._labels

    @property
    def mode(self) -> str:
        return self._mode if self._prediction is not None else "sampler"

    def queue(self) -> list[tuple[int, int]]:
        """Positions to label next, in order: the sampler's (or the least confident), skipped ones last."""
        with self._lock:
            key = (self._version, self._preview_version, self.mode)
            if self._queue_cache is not None and self._queue_cache[0] == key:
                return list(self._queue_cache[1])
            if self.mode == "uncertainty":
                queue = self._uncertain()
            else:
                x, y = propose((self.rows, self.cols), self._labels, self.budget, strategy=self.strategy,
                               step=self.step, seed=self.seed)
                proposed = list(zip(x.tolist(), y.tolist()))
                skipped = set(self._skipped)
                queue = [p for p in proposed if p not in skipped]
                queue += [p for p in self._skipped if p in set(proposed)]
            self._queue_cache = (key, queue)
            return list(queue)

    def _uncertain(self) -> list[tuple[int, int]]:
        """The active sampler's batch on the preview (``propose(strategy="active")``), least sure first.

        The preview's probabilities are passed, not its classes: a class labelled after the
        preview was trained must not stop the queue. Skipped positions go last, as in the
        sampler's queue.
        """
        probabilities = self._prediction.probabilities
        x, y = propose((self.rows, self.cols), self._labels, self.budget, strategy="active", step=self.step,
                       seed=self.seed, model=probabilities, batch=UNCERTAIN_QUEUE)
        score = uncertainty(probabilities)[y, x]
        order = np.argsort(-score, kind="stable")
        proposed = [(int(x[i]), int(y[i])) for i in order]
        skipped = set(self._skipped)
        return [p for p in proposed if p not in skipped] + [p for p in self._skipped if p in set(proposed)]

    def current(self) -> tuple[int, int] | None:
        """The position being looked at: one opened on the overview, else the head of the queue."""
        with self._lock:
            if self._current is not None:
                return self._current
            queue = self.queue()
            return queue[0] if queue else None

    # -- actions --------------------------------------------------------------------------
    def _changed(self) -> None:
        self._version += 1

    def _write_labels(self, labels: Labels) -> None:
        write_labels(self.labels_path, labels)
        self._labels = labels
        self._changed()

    def label(self, x: int, y: int, name: str) -> None:
        """Give position (x, y) the class ``name``; written to the label file at once."""
        with self._lock:
            p = self.check_position(x, y)
            name = self.check_class(name)
            previous = self._labels.to_dict().get(p)
            if previous != name:
                self._write_labels(self._labels.merged(Labels.from_dict({p: name})))
                self._history.append({"op": "label", "x": x, "y": y, "label": name, "previous": previous})
            if p in self._skipped:
                self._skipped.remove(p)
                self._history = [h for h in self._history if not (h["op"] == "skip" and (h["x"], h["y"]) == p)]
                self._changed()
            if self._current == p:
                self._current = None
            self._history = self._history[-MAX_HISTORY:]
            self._save_sidecar()

    def skip(self, x: int, y: int) -> None:
        """Put (x, y) off: to the back of the queue. On a labelled position, just move on."""
        with self._lock:
            p = self.check_position(x, y)
            if p not in self._labels.to_dict():
                if p in self._skipped:
                    self._skipped.remove(p)
                self._skipped.append(p)
                self._history.append({"op": "skip", "x": x, "y": y})
                self._history = self._history[-MAX_HISTORY:]
                self._changed()
            if self._current == p:
                self._current = None
            self._save_sidecar()

    def undo(self) -> dict:
        """Take back the last label or skip; that position becomes the current one again."""
        with self._lock:
            if not self._history:
                raise Conflict("nothing to undo")
            step = self._history.pop()
            p = (step["x"], step["y"])
            if step["op"] == "label":
                labelled = self._labels.to_dict()
                if labelled.get(p) != step["label"]:
                    self._save_sidecar()
                    raise Conflict(f"the label at x={p[0]}, y={p[1]} changed outside the app; nothing undone")
                if step["previous"] is None:
                    del labelled[p]
                else:
                    labelled[p] = step["previous"]
                self._write_labels(Labels.from_dict(labelled))
            else:
                if p in self._skipped:
                    self._skipped.remove(p)
                self._changed()
            self._current = p
            self._save_sidecar()
            return step

    def goto(self, x: int, y: int) -> None:
        """Open (x, y), in the queue or not; labelling or skipping it returns to the queue."""
        with self._lock:
            self._current = self.check_position(x, y)
            self._save_sidecar()

    def set_mode(self, mode: str) -> None:
        with self._lock:
            if mode not in QUEUE_MODES:
                raise GhostmapError(f"unknown queue mode {mode!r} (choose {' or '.join(QUEUE_MODES)})")
            if mode == "uncertainty" and self._prediction is None:
                raise Conflict("no preview yet: train and preview first, then the least confident positions "
                               "can be proposed")
            self._mode = mode
            self._current = None
            self._save_sidecar()

    # -- what the page shows ----------------------------------------------------------------
    def snapshot(self) -> dict:
        """Everything the page needs, as JSON-ready data."""
        with self._lock:
            labels = self._labels
            labelled = labels.to_dict()
            current = self.current()
            queue = self.queue()
            counts = {c: 0 for c in self.classes}
            counts.update(labels.counts())
            keys = class_keys(self.classes)
            enough = len(labels) >= MIN_TRAIN_LABELS and len(labels.classes) >= 2
            return {
                "scan": {"rows": self.rows, "cols": self.cols, "detector": list(self.scan.detector_shape),
                         "source": Path(str(self.scan.source)).name},
                "labels_file": self.labels_path.name,
                "classes": [{"name": c, "colour": col, **k} for c, col, k in zip(self.classes, self.colours, keys)],
                "budget": self.budget,
                "strategy": self.strategy,
                "n_labels": len(labels),
                "counts": counts,
                "labels": [{"x": x, "y": y, "label": n} for (x, y), n in labelled.items()],
                "skipped": [list(p) for p in self._skipped],
                "queue": [list(p) for p in queue],
                "current": None if current is None else {
                    "x": current[0], "y": current[1], "label": labelled.get(current),
                    "in_queue": current in set(queue), "skipped": current in set(self._skipped)},
                "can_undo": bool(self._history),
                "mode": self.mode,
                "can_train": enough,
                "min_train_labels": MIN_TRAIN_LABELS,
                "training": self.training_status(),
                "preview": self._preview_info(),
                "warnings": list(self.warnings),
            }

    def _preview_info(self) -> dict | None:
        if self._prediction is None:
            return None
        classes = self._prediction.classes
        fractions = class_fractions(self._prediction.labels, len(classes))
        return {"version": self._preview_version, "classes": list(classes),
                "fractions": {c: float(f) for c, f in zip(classes, fractions)},
                "mean_confidence": float(self._prediction.confidence.mean())}

    def pattern(self, x: int, y: int, view: str = "raw") -> np.ndarray:
        """The pattern at (x, y): as recorded (``raw``), or as the network sees it (``network``:
        the pooled channel, which a second channel, the raw pattern's own, accompanies)."""
        self.check_position(x, y)
        if view == "network":
            return preprocess_positions(self.scan, [y], [x], self.preprocessing)[0, 0].numpy()
        if view != "raw":
            raise GhostmapError(f"unknown view {view!r} (raw or network)")
        return self.scan.read_pattern(y, x)

    def overview_png(self) -> bytes:
        return render.colour_png(render.stretch(self.bright_field, 0.5, 99.5), "gray")

    def preview_png(self, kind: str) -> bytes:
        with self._lock:
            prediction = self._prediction
        if prediction is None:
            raise NotFound("no preview yet: press 'Train and preview' first")
        if kind == "domain":
            return render.png(domain_rgb(prediction.probabilities, prediction.classes))
        if kind == "confidence":
            low = 1.0 / len(prediction.classes)
            return render.colour_png(np.clip((prediction.confidence - low) / (1.0 - low), 0, 1), "magma")
        raise NotFound(f"unknown preview {kind!r} (domain or confidence)")

    # -- train and preview ----------------------------------------------------------------
    def training_status(self) -> dict:
        with self._lock:
            return dict(self._training)

    def start_training(self) -> dict:
        """Train on the labels given so far and classify the scan, in a background thread."""
        with self._lock:
            if self._training["state"] == "running":
                raise Conflict("training is already running")
            labels = self._labels
            if len(labels) < MIN_TRAIN_LABELS or len(labels.classes) < 2:
                raise Conflict(f"train and preview needs at least {MIN_TRAIN_LABELS} labels in at least two classes "
                               f"(have {len(labels)} in {len(labels.classes)})")
            self._training = {"state": "running", "phase": "training", "done": 0, "total": 0, "message": "starting",
                              "n_labels": len(labels), "started": time.time()}
            self._thread = threading.Thread(target=self._train_and_predict, args=(labels,), name="ghostmap-train",
                                            daemon=True)
            self._thread.start()
            return dict(self._training)

    def _progress(self, **fields) -> None:
        with self._lock:
            self._training.update(fields)

    def _train_and_predict(self, labels: Labels) -> None:
        from ghostmap.runtime import predict_in_process
        from ghostmap.training import train

        try:
            prep = Preprocessing.from_dict(self.preprocessing.to_dict())
            prep.reference = self.preprocessing.reference

            def on_epoch(epoch, epochs, stats):
                loss = stats["val_loss"]
                message = (f"epoch {epoch}/{epochs}, validation loss {loss:.3f}" if math.isfinite(loss)
                           else f"epoch {epoch}/{epochs}")
                if epoch == epochs:  # what train does next: classify the scan to calibrate
                    message += "; classifying every pattern"
                self._progress(done=epoch, total=epochs, message=message)

            model = train(self.scan, labels, self.training_options, preprocessing=prep, progress=on_epoch,
                          int8_examples=False)  # the page never saves its model
            result = model.scan_prediction  # train classified the scan to calibrate: no second pass
            if result is None:
                self._progress(phase="predicting", done=0, total=self.rows * self.cols,
                               message="classifying every pattern")

                def on_block(done, total):
                    self._progress(done=done, total=total, message=f"classified {done} of {total}")

                result = predict_in_process(self.scan, model, self.training_options.device, progress=on_block)
            m = model.metrics
            fit = "accuracy on its own labels" if m.get("checkpoint") == "final" else "validation accuracy"
            summary = (f"trained on {m['n_labels']} labels: {fit} {m['val_accuracy']:.0%} "
                       f"(best epoch {m['best_epoch']}/{m['epochs']}, {m['seconds']:.0f} s)")
            if m["collapsed"]:
                summary += f" - warning: the model collapsed to '{m['predicted_classes'][0]}'; label more"
            with self._lock:
                self.model = model
                self._prediction = result
                self._preview_version += 1
                self._training = {"state": "done", "phase": "done", "done": 1, "total": 1, "message": summary,
                                  "n_labels": len(labels), "val_accuracy": m["val_accuracy"],
                                  "collapsed": bool(m["collapsed"]), "seconds": m["seconds"]}
        except Exception as exc:  # noqa: BLE001 - reported to the page, the server keeps running
            logger.exception("train and preview failed on %d labels", len(labels))
            with self._lock:
                self._training = {"state": "failed", "phase": "failed", "message": " ".join(str(exc).split())
                                  or type(exc).__name__}

    def wait_for_training(self, timeout: float | None = None) -> dict:
        """Block until a running training has finished (for scripts and tests)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.training_status()
