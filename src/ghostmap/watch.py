"""Classify scans as the acquisition software writes them into a folder.

The folder is polled (robust on network shares, where file-system events are not). A
file is taken only once it is *complete*: its size and modification time have not changed
for ``settle`` seconds and it opens as a whole scan; one that stays unreadable for
``incomplete_after`` seconds is reported once and skipped. Each finished scan becomes the
next step of a :class:`ghostmap.series.SeriesWriter`, so a watcher that is stopped and
started again skips what it finished and carries on with the series.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import GhostmapError
from .model import Model
from .prediction import Prediction, predict
from .reading import HDF5_SUFFIXES, HYPERSPY_SUFFIXES, RSCIIO_SUFFIXES, ZARR_SUFFIXES, Scan, time_series_length
from .series import SeriesWriter, Step, file_state, iter_new_files

DEFAULT_PATTERNS = tuple(f"*{s}" for s in (".npy", ".dm5", ".mrc") + HDF5_SUFFIXES + ZARR_SUFFIXES + RSCIIO_SUFFIXES
                         + HYPERSPY_SUFFIXES)


@dataclass
class WatchOptions:
    """How to watch: which names, how long a file must be unchanged, when to stop.

    Parameters
    ----------
    patterns : tuple of str
        Glob patterns of the scan files to pick up.
    settle : float
        Seconds a file's size and modification time must stay the same before it is read.
    poll : float
        Seconds between looks at the folder.
    incomplete_after : float
        Seconds an unchanging file may stay unreadable before it is reported and skipped.
    stop_after : int, optional
        Stop after this many new steps.
    idle_exit : float, optional
        Stop after this many seconds with nothing new or pending.
    dataset : str, optional
        The dataset inside HDF5/EMD/zarr files.
    scan_shape : tuple of int, optional
        (rows, cols) for formats that do not store it (``.mib``).

    Examples
    --------
    >>> import ghostmap as gm
    >>> gm.WatchOptions(settle=5, idle_exit=600).settle
    5
    """

    patterns: tuple[str, ...] = DEFAULT_PATTERNS
    settle: float = 2.0  # seconds a file's size and mtime must stay the same
    poll: float = 1.0  # seconds between looks at the folder
    incomplete_after: float = 600.0  # seconds an unchanging file may stay unreadable before it is skipped
    stop_after: int | None = None  # stop after this many new steps
    idle_exit: float | None = None  # stop after this many seconds with nothing new or pending
    dataset: str | None = None
    scan_shape: tuple[int, int] | None = None


@dataclass
class _Pending:
    state: tuple[int, int]
    first_seen: float
    changed_at: float
    reason: str = ""
    reported: bool = False


@dataclass
class Watcher:
    """Polls one folder and classifies each complete new scan into a series folder."""

    folder: Path
    model: Model
    out_dir: Path
    options: WatchOptions = field(default_factory=WatchOptions)
    predict_step: Callable[[Step, Scan, Model], Prediction] | None = None
    report: Callable[[str, str], None] = lambda event, text: None
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        if not self.folder.is_dir():
            raise GhostmapError(f"no folder to watch at {self.folder}")
        self.out_dir = Path(self.out_dir)
        if self.out_dir.resolve() == self.folder.resolve():
            raise GhostmapError("--out must not be the watched folder")
        self.writer = SeriesWriter(self.out_dir, self.model)
        self.pending: dict[str, _Pending] = {}  # by step source: a .dm5 session has one step per time slice
        self.warned_changed: set[str] = set()
        self.new_steps = 0
        self._pending_paths: dict[str, Path] = {}

    def poll_once(self) -> int:
        """Look at the folder once; classify every file that is complete. Returns steps added."""
        added = 0
        now = self.clock()
        out_dir = self.out_dir.resolve()
        for path in iter_new_files(self.folder, self.options.patterns):
            if path.resolve() == out_dir or out_dir in path.resolve().parents:
                continue
            steps = self._steps(path)
            for step in steps:
                if self._look(step, now):
                    added += 1
                    self.new_steps += 1
                    if self.options.stop_after is not None and self.new_steps >= self.options.stop_after:
                        return added
        return added

    def _steps(self, path: Path) -> list[Step]:
        """A file's steps: one, or one per time slice of a GMS in-situ session (.dm5)."""
        n_slices = time_series_length(path) if path.suffix.lower() == ".dm5" else None
        if n_slices is None:
            steps = [Step(path, None, self.options.dataset, self.options.scan_shape)]
        else:
            steps = [Step(path, t, None, None) for t in range(n_slices)]
        current = {step.source for step in steps}
        for source in [s for s, p in self._pending_paths.items() if p == path and s not in current]:
            self.pending.pop(source, None)  # e.g. the whole-file step of a session that was still being written
            self._pending_paths.pop(source, None)
        return steps

    def _look(self, step: Step, now: float) -> bool:
        """Classify ``step`` if its file has settled and is new; True if a step was added."""
        key = step.source
        try:
            state = file_state(step.path)
        except OSError:  # vanished between listing and looking
            self.pending.pop(key, None)
            return False
        if self._known(step, state):
            return False
        seen = self.pending.get(key)
        if seen is None or seen.state != state:
            self.pending[key] = seen = _Pending(state, seen.first_seen if seen else now, now)
            self._pending_paths[key] = step.path
        if now - seen.changed_at < self.options.settle:
            return False
        return self._classify(step, seen, now)

    def _known(self, step: Step, state: tuple[int, int]) -> bool:
        """Finished or rejected already (a rejected file that changed since is tried again)."""
        entry = self.writer.find(step.source)
        if entry is not None:
            if (entry["size"], entry["mtime_ns"]) != state and step.source not in self.warned_changed:
                self.warned_changed.add(step.source)
                self.report("changed", f"{step.path.name} changed after it was classified (step "
                                       f"{entry['folder']}); it is not classified again")
            return True
        rejected = self.writer.rejected.get(step.source)
        return rejected is not None and (rejected["size"], rejected["mtime_ns"]) == state

    def _classify(self, step: Step, seen: _Pending, now: float) -> bool:
        try:
            scan = step.open()
        except GhostmapError as exc:  # most often: still being written
            if now - seen.changed_at >= self.options.incomplete_after:
                self._reject(step, seen, f"stayed incomplete for {now - seen.changed_at:.0f} s ({exc}); skipped")
            elif not seen.reported:
                seen.reported = True
                self.report("waiting", f"{step.path.name} is not readable yet ({exc}); waiting")
            return False
        with scan:
            try:
                self.model.check_scan(scan.detector_shape, step.path.name)
                if self.writer.results and scan.scan_shape != self.writer.results[0].labels.shape:
                    first = self.writer.results[0].labels.shape
                    raise GhostmapError(f"{step.path.name} has scan shape {scan.scan_shape[0]}x{scan.scan_shape[1]}, "
                                        f"but the series so far has {first[0]}x{first[1]}")
            except GhostmapError as exc:
                self._reject(step, seen, f"{exc}; skipped")
                return False
            self.report("start", f"classifying {step.path.name} ({scan.n_patterns} patterns)")
            result = (self.predict_step or (lambda step, scan, m: predict(scan, m)))(step, scan, self.model)
        if file_state(step.path) != seen.state:  # rewritten while we read it: not complete after all
            seen.changed_at, seen.state = self.clock(), file_state(step.path)
            self.report("waiting", f"{step.path.name} changed while it was read; waiting for it to settle")
            return False
        entry = self.writer.add(step, result)
        self.pending.pop(step.source, None)
        self.report("done", f"{step.path.name} -> {entry['folder']} (step {len(self.writer) - 1})")
        return True

    def _reject(self, step: Step, seen: _Pending, reason: str) -> None:
        self.writer.reject(step.source, reason, seen.state)
        self.pending.pop(step.source, None)
        self.report("rejected", f"{step.path.name}: {reason}")

    def run(self, sleep: Callable[[float], None] = time.sleep) -> SeriesWriter:
        """Poll until ``stop_after`` new steps or ``idle_exit`` seconds of quiet (forever by default)."""
        last_activity = self.clock()
        try:
            while True:
                if self.poll_once() or self.pending:
                    last_activity = self.clock()
                if self.options.stop_after is not None and self.new_steps >= self.options.stop_after:
                    return self.writer
                if self.options.idle_exit is not None and self.clock() - last_activity >= self.options.idle_exit:
                    return self.writer
                if not self.pending:
                    self.writer.flush()  # nothing in hand: bring the figures up to date
                sleep(self.options.poll)
        finally:
            self.writer.flush()


def watch_folder(folder: str | os.PathLike, model: Model | str | os.PathLike, out_dir: str | os.PathLike,
                 options: WatchOptions | None = None, **kwargs) -> SeriesWriter:
    """Watch ``folder`` and classify each complete new scan into the series in ``out_dir``.

    A file is read once it has stopped changing for ``options.settle`` seconds and opens as
    a whole scan; hidden and partial names (``.part``, ``.tmp``) are ignored. A restart
    skips every file already in the series.

    Parameters
    ----------
    folder : str or os.PathLike
        The acquisition folder.
    model : Model, str or os.PathLike
        The model, or its folder.
    out_dir : str or os.PathLike
        The series folder (as :func:`predict_series` writes it).
    options : WatchOptions, optional
        Which files, how long to wait, when to stop (by default: forever).
    **kwargs
        Passed to :class:`ghostmap.watch.Watcher` (``predict_step``, ``report``).

    Returns
    -------
    SeriesWriter
        The series folder's writer, when the watch stops (``stop_after``, ``idle_exit``).

    Raises
    ------
    GhostmapError
        When ``folder`` is not a folder, ``out_dir`` lies inside it, or ``out_dir`` was made
        with another model.

    Examples
    --------
    >>> import ghostmap as gm
    >>> gm.watch_folder("/data/session42", "model", "maps", gm.WatchOptions(idle_exit=600))  # doctest: +SKIP
    """
    if not isinstance(model, Model):
        model = Model.load(model)
    return Watcher(Path(folder), model, Path(out_dir), options or WatchOptions(), **kwargs).run()
