"""Hand labels: which class a person gave to the diffraction pattern at a scan position.

Labels live in a small CSV file with the header ``x,y,label`` (``x`` = scan column,
``y`` = scan row, both counted from 0), one labelled position per line. The paper
authors' YAML files (``file: X_Y_boxsize5.png`` / ``label: horizontal|vertical|na``)
can be read as well, ``na`` becoming ``none``.

Everything here is strict about its input: a problem in a label file raises
:class:`~ghostmap.errors.GhostmapError` with one line naming the file, the line and the
problem, because a silently dropped or misplaced label quietly ruins a model trained on
a few dozen of them.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ghostmap.atomic import write_text
from ghostmap.errors import GhostmapError

__all__ = [
    "CANONICAL_ORDER",
    "DEFAULT_CLASSES",
    "Labels",
    "class_order",
    "read_labels",
    "write_labels",
    "import_paper_yaml",
    "read_positions",
    "write_positions",
    "require_trainable",
    "labels_from_truth",
    "truth_map",
]

#: The paper's colour order for the domain map: none red, vertical green, horizontal blue.
CANONICAL_ORDER = ("none", "vertical", "horizontal")
#: The classes a labelling session offers by default.
DEFAULT_CLASSES = ("horizontal", "vertical", "none")

_YAML_SUFFIXES = (".yaml", ".yml")
_INT_RE = re.compile(r"[+-]?[0-9]+")
_PAPER_NAME_RE = re.compile(r"^([0-9]+)_([0-9]+)(?:_[^/\\]*)?\.[A-Za-z0-9]+$")


def class_order(names: Iterable[str]) -> tuple[str, ...]:
    """Unique class names in a fixed order: the paper's classes first, then the rest sorted.

    A fixed order makes class indices, colours and model outputs agree between runs
    whatever order the labels happened to be written in.
    """
    unique = {str(n) for n in names}
    known = tuple(c for c in CANONICAL_ORDER if c in unique)
    return known + tuple(sorted(unique - set(CANONICAL_ORDER)))


def _as_int_array(values, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1:
        raise GhostmapError(f"label {name} coordinates must be a 1-D sequence, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise GhostmapError(f"label {name} coordinates must be integers, got {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _as_str_array(values) -> np.ndarray:
    arr = np.asarray(values)
    if arr.size == 0:
        return np.zeros(0, dtype="<U1")
    if arr.ndim != 1:
        raise GhostmapError(f"label names must be a 1-D sequence, got shape {arr.shape}")
    if arr.dtype.kind != "U":
        arr = arr.astype(str)
    return arr


@dataclass(frozen=True, eq=False)
class Labels:
    """Labelled scan positions: ``label[i]`` is the class of the pattern at column ``x[i]``, row ``y[i]``.

    Positions are unique; the order is the order they were labelled or read in. The
    arrays are normalised on construction (``int64`` coordinates, a ``'<U..'`` string
    array for the names, never ``object``) and made read-only.

    Parameters
    ----------
    x : array_like of int
        Scan columns, not negative.
    y : array_like of int
        Scan rows, not negative.
    label : array_like of str
        Class names, one per position.

    Raises
    ------
    GhostmapError
        When the three lengths differ, a coordinate is negative or not a whole number, or
        a position appears twice.

    See Also
    --------
    read_labels, write_labels, labels_from_truth

    Examples
    --------
    >>> import ghostmap as gm
    >>> labels = gm.Labels([0, 5, 9], [0, 2, 2], ["none", "vertical", "vertical"])
    >>> labels
    Labels(3 positions: none=1, vertical=2)
    >>> labels.to_dict()[(5, 2)]
    'vertical'
    """

    x: np.ndarray
    y: np.ndarray
    label: np.ndarray

    def __post_init__(self) -> None:
        x = _as_int_array(self.x, "x")
        y = _as_int_array(self.y, "y")
        label = _as_str_array(self.label)
        if not (len(x) == len(y) == len(label)):
            raise GhostmapError(f"labels need as many x, y and names, got {len(x)}, {len(y)} and {len(label)}")
        if len(x) and (x.min() < 0 or y.min() < 0):
            raise GhostmapError("label positions must not be negative")
        if len(set(zip(x.tolist(), y.tolist()))) != len(x):
            raise GhostmapError("labels hold the same position more than once")
        for name, arr in (("x", x), ("y", y), ("label", label)):
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def empty(cls) -> "Labels":
        """No labels at all."""
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, "<U1"))

    @classmethod
    def from_dict(cls, mapping: Mapping[tuple[int, int], str]) -> "Labels":
        """Build from ``{(x, y): label}``, keeping the mapping's order."""
        if not mapping:
            return cls.empty()
        keys = list(mapping)
        return cls(
            np.array([int(k[0]) for k in keys], np.int64),
            np.array([int(k[1]) for k in keys], np.int64),
            np.array([str(mapping[k]) for k in keys]),
        )

    @classmethod
    def from_pairs(cls, items: Iterable[tuple[int, int, str]]) -> "Labels":
        """Build from ``(x, y, label)`` triples; exact repeats are dropped, conflicting ones raise."""
        seen: dict[tuple[int, int], str] = {}
        for x, y, name in items:
            key = (int(x), int(y))
            if key in seen and seen[key] != str(name):
                raise GhostmapError(
                    f"position x={key[0]}, y={key[1]} is labelled both '{seen[key]}' and '{name}'"
                )
            seen[key] = str(name)
        return cls.from_dict(seen)

    # -- views --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.x)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Labels):
            return NotImplemented
        return (
            np.array_equal(self.x, other.x)
            and np.array_equal(self.y, other.y)
            and np.array_equal(self.label, other.label)
        )

    __hash__ = None  # type: ignore[assignment]  # arrays are not hashable

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in self.counts().items())
        return f"Labels({len(self)} positions: {counts})" if len(self) else "Labels(empty)"

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names present, in :func:`class_order`."""
        return class_order(self.label.tolist())

    def counts(self) -> dict[str, int]:
        """How many positions carry each class, in :func:`class_order`."""
        names = self.label.tolist()
        return {c: names.count(c) for c in class_order(names)}

    def to_dict(self) -> dict[tuple[int, int], str]:
        """``{(x, y): label}`` in the labels' order."""
        return dict(zip(zip(self.x.tolist(), self.y.tolist()), self.label.tolist()))

    def merged(self, other: "Labels") -> "Labels":
        """These labels plus ``other``'s; where both label a position, ``other`` wins."""
        combined = self.to_dict()
        combined.update(other.to_dict())
        return Labels.from_dict(combined)


# -- reading ------------------------------------------------------------------------------
def _read_text(path: Path, missing_ok: bool, what: str) -> str | None:
    """The file's text, or None when it is missing and that is allowed."""
    if not path.exists():
        if missing_ok:
            return None
        raise GhostmapError(f"{path}: {what} file not found")
    if path.is_dir():
        raise GhostmapError(f"{path}: is a folder, expected a {what} file")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise GhostmapError(f"{path}: is not a UTF-8 text file") from None
    except OSError as exc:
        raise GhostmapError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _csv_rows(path: Path, text: str, required: tuple[str, ...]) -> tuple[list[tuple[int, dict[str, str]]], bool]:
    """Parse CSV ``text`` into ``(line number, {column: stripped value})`` rows.

    Returns the rows and whether a header was found. Blank lines are skipped, extra
    columns ignored, column names matched case-insensitively in any order.
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[tuple[int, dict[str, str]]] = []
    try:
        for cells in reader:
            cells = [c.strip() for c in cells]
            if not any(cells):
                continue
            if header is None:
                header = [c.lower() for c in cells]
                missing = [c for c in required if c not in header]
                if missing:
                    names = " and ".join(f"'{c}'" for c in missing)
                    plural = "s" if len(missing) > 1 else ""
                    raise GhostmapError(
                        f"{path} line {reader.line_num}: missing column{plural} {names} "
                        f"(header is {','.join(cells)}; expected {','.join(required)})"
                    )
                index = {c: header.index(c) for c in required}
                continue
            row = {c: (cells[i] if i < len(cells) else "") for c, i in index.items()}
            rows.append((reader.line_num, row))
    except csv.Error as exc:
        raise GhostmapError(f"{path} line {reader.line_num}: not valid CSV ({exc})") from None
    return rows, header is not None


def _parse_coordinate(path: Path, line: int | str, name: str, text: str) -> int:
    where = f"{path} line {line}" if isinstance(line, int) else f"{path} {line}"
    if text == "":
        raise GhostmapError(f"{where}: {name} is empty")
    if not _INT_RE.fullmatch(text):
        raise GhostmapError(f"{where}: {name}={text!r} is not an integer")
    value = int(text)
    if value < 0:
        raise GhostmapError(f"{where}: {name}={value} is negative")
    return value


def check_in_scan(x, y, scan_shape: tuple[int, int], what: str = "position", within: str = "the scan") -> None:
    """Raise if any position (x, y) lies outside a scan of ``scan_shape`` (rows, cols).

    The one place where ghostmap checks that labels or positions lie inside a scan (or a
    predicted map); the error names the first offending position.

    Parameters
    ----------
    x, y : int or array_like of int
        Scan column(s) and scan row(s).
    scan_shape : tuple of int
        (rows, cols) of the scan.
    what : str, optional
        The words before ``x=..., y=...`` in the error message, e.g. ``"label at"``.
    within : str, optional
        What the positions must lie inside, for the error message.

    Raises
    ------
    GhostmapError
        Naming the first position outside the scan.

    Examples
    --------
    >>> check_in_scan([0, 5], [0, 2], (3, 6))
    >>> check_in_scan(6, 2, (3, 6), what="label at")
    Traceback (most recent call last):
    ...
    ghostmap.errors.GhostmapError: label at x=6, y=2 is outside the scan (6 columns x 3 rows)
    """
    rows, cols = scan_shape
    x, y = np.atleast_1d(np.asarray(x)), np.atleast_1d(np.asarray(y))
    outside = (x < 0) | (x >= cols) | (y < 0) | (y >= rows)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise GhostmapError(f"{what} x={x[i]}, y={y[i]} is outside {within} ({cols} columns x {rows} rows)")


def _check_in_scan(where: str, x: int, y: int, scan_shape: tuple[int, int] | None) -> None:
    if scan_shape is not None:
        check_in_scan(x, y, scan_shape, what=f"{where}: position")


def _collect(path: Path, entries, scan_shape) -> Labels:
    """Turn ``(where, x, y, label)`` entries into Labels, checking the scan and duplicates."""
    seen: dict[tuple[int, int], tuple[str, str]] = {}
    for where, x, y, name in entries:
        _check_in_scan(where, x, y, scan_shape)
        key = (x, y)
        if key in seen:
            first_name, first_where = seen[key]
            if first_name != name:
                raise GhostmapError(
                    f"{where}: position x={x}, y={y} is labelled '{name}' here but "
                    f"'{first_name}' at {first_where.removeprefix(str(path) + ' ')}"
                )
            continue  # an exact repeat carries no information
        seen[key] = (name, where)
    return Labels.from_dict({k: v[0] for k, v in seen.items()})


def _read_csv_labels(path: Path, text: str, scan_shape, missing_ok: bool) -> Labels:
    rows, has_header = _csv_rows(path, text, ("x", "y", "label"))
    if not rows:
        if missing_ok:
            return Labels.empty()
        what = "holds no labels (header only)" if has_header else "is empty (expected a header x,y,label)"
        raise GhostmapError(f"{path}: {what}")

    def entries():
        for line, row in rows:
            where = f"{path} line {line}"
            x = _parse_coordinate(path, line, "x", row["x"])
            y = _parse_coordinate(path, line, "y", row["y"])
            if row["label"] == "":
                raise GhostmapError(f"{where}: the label is empty")
            yield where, x, y, row["label"]

    return _collect(path, entries(), scan_shape)


def _paper_entries(path: Path, text: str):
    """``(where, x, y, label)`` from a paper-style YAML file, with line numbers."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise GhostmapError(f"{path}{line}: not valid YAML ({problem})") from None
    if root is None:
        return []
    items = root
    if isinstance(root, yaml.MappingNode):
        items = next((v for k, v in root.value if isinstance(k, yaml.ScalarNode) and k.value == "labels"), None)
        if items is None:
            raise GhostmapError(f"{path}: no 'labels:' list (expected entries with 'file' and 'label')")
    if isinstance(items, yaml.ScalarNode) and items.tag == "tag:yaml.org,2002:null":
        return []  # "labels:" with nothing under it
    if not isinstance(items, yaml.SequenceNode):
        raise GhostmapError(
            f"{path} line {items.start_mark.line + 1}: expected a list of entries with 'file' and 'label'"
        )

    entries = []
    for item in items.value:
        line = item.start_mark.line + 1
        where = f"{path} line {line}"
        if not isinstance(item, yaml.MappingNode):
            raise GhostmapError(f"{where}: expected an entry with 'file' and 'label'")
        fields = {k.value: v for k, v in item.value if isinstance(k, yaml.ScalarNode)}
        for key in ("file", "label"):
            if key not in fields:
                raise GhostmapError(f"{where}: entry has no '{key}'")
            if not isinstance(fields[key], yaml.ScalarNode):
                raise GhostmapError(f"{where}: '{key}' must be a single value")
        name = os.path.basename(fields["file"].value.strip().replace("\\", "/"))
        match = _PAPER_NAME_RE.match(name)
        if not match:
            raise GhostmapError(
                f"{where}: file name {name!r} does not start with X_Y_ (scan column_row, e.g. 120_17_boxsize5.png)"
            )
        x, y = int(match.group(1)), int(match.group(2))
        label = fields["label"].value.strip()
        if label == "":
            raise GhostmapError(f"{where}: the label is empty")
        if label == "na":
            label = "none"
        entries.append((where, x, y, label))
    return entries


def read_labels(path: str | os.PathLike, scan_shape: tuple[int, int] | None = None, missing_ok: bool = False) -> Labels:
    """Read labels from a CSV file (header with ``x,y,label``) or a paper-style YAML file.

    The format follows the suffix: ``.yaml``/``.yml`` is read as the paper's YAML, anything
    else as CSV. In CSV files the columns may come in any order, extra columns are ignored,
    whitespace is stripped and blank lines skipped. Exact repeats of a position are
    dropped.

    Parameters
    ----------
    path : str or os.PathLike
        The label file.
    scan_shape : tuple of int, optional
        (rows, cols) of the scan; when given, every position must lie inside it.
    missing_ok : bool, optional
        When True a missing or empty (0 bytes or header-only) file gives empty
        :class:`Labels`, so that a labelling session can start from nothing.

    Returns
    -------
    Labels
        The labels in file order.

    Raises
    ------
    GhostmapError
        For a missing or empty file (unless ``missing_ok``), a missing column, a coordinate
        that is not a whole number, a position outside ``scan_shape``, or the same position
        with two different labels; the message names the file and line.

    Examples
    --------
    >>> import ghostmap as gm
    >>> labels = gm.read_labels("labels.csv", missing_ok=True)  # doctest: +SKIP
    """
    path = Path(path)
    text = _read_text(path, missing_ok, "label")
    if text is None:
        return Labels.empty()
    if path.suffix.lower() in _YAML_SUFFIXES:
        labels = _collect(path, _paper_entries(path, text), scan_shape)
        if not len(labels) and not missing_ok:
            raise GhostmapError(f"{path}: holds no labels")
        return labels
    return _read_csv_labels(path, text, scan_shape, missing_ok)


def import_paper_yaml(path: str | os.PathLike, scan_shape: tuple[int, int] | None = None) -> Labels:
    """Read one of the paper authors' YAML label files, whatever its suffix.

    ``file: X_Y_boxsize5.png`` gives scan column ``X`` and row ``Y``; ``label: na``
    becomes ``none``. Exact repeated entries (the authors' adaptive files hold some) are
    dropped; a position listed with two different labels is an error naming both lines.
    """
    path = Path(path)
    text = _read_text(path, False, "label")
    return _collect(path, _paper_entries(path, text), scan_shape)


def read_positions(path: str | os.PathLike, scan_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read scan positions to label from a CSV file with a header holding ``x,y``.

    A header-only or empty file gives empty arrays. Exact repeats are dropped, keeping
    the first occurrence's place.
    """
    path = Path(path)
    text = _read_text(path, False, "positions")
    rows, _ = _csv_rows(path, text, ("x", "y"))
    seen: dict[tuple[int, int], None] = {}
    for line, row in rows:
        x = _parse_coordinate(path, line, "x", row["x"])
        y = _parse_coordinate(path, line, "y", row["y"])
        _check_in_scan(f"{path} line {line}", x, y, scan_shape)
        seen.setdefault((x, y), None)
    x = np.array([k[0] for k in seen], dtype=np.int64)
    y = np.array([k[1] for k in seen], dtype=np.int64)
    return x, y


# -- writing ------------------------------------------------------------------------------
def _csv_text(header: tuple[str, ...], rows: Iterable[tuple]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_labels(path: str | os.PathLike, labels: Labels) -> None:
    """Write labels as CSV (header ``x,y,label``), atomically: a failed write keeps the old file.

    Parameters
    ----------
    path : str or os.PathLike
        The CSV file to write (replaced whole).
    labels : Labels
        The labels, written in their order.

    Raises
    ------
    OSError
        When the file cannot be written; the old file is then unchanged.

    Examples
    --------
    >>> import ghostmap as gm
    >>> gm.write_labels("labels.csv", gm.Labels([3], [1], ["none"]))  # doctest: +SKIP
    """
    rows = zip(labels.x.tolist(), labels.y.tolist(), labels.label.tolist())
    write_text(path, _csv_text(("x", "y", "label"), rows))


def write_positions(path: str | os.PathLike, x, y) -> None:
    """Write positions to label as CSV (header ``x,y``), atomically; header-only when empty.

    Parameters
    ----------
    path : str or os.PathLike
        The CSV file to write (replaced whole), e.g. ``next.csv``.
    x, y : array_like of int
        Scan columns and rows of the positions, as :func:`propose` returns them.

    Raises
    ------
    OSError
        When the file cannot be written; the old file is then unchanged.

    Examples
    --------
    >>> import ghostmap as gm
    >>> x, y = gm.propose((34, 206), gm.Labels.empty(), budget=50)  # doctest: +SKIP
    >>> gm.write_positions("next.csv", x, y)  # doctest: +SKIP
    """
    x = _as_int_array(x, "x")
    y = _as_int_array(y, "y")
    if len(x) != len(y):
        raise GhostmapError(f"positions need as many x as y, got {len(x)} and {len(y)}")
    write_text(path, _csv_text(("x", "y"), zip(x.tolist(), y.tolist())))


# -- checks and conversions ---------------------------------------------------------------
def require_trainable(labels: Labels, source: str = "labels.csv") -> None:
    """Raise unless ``labels`` hold at least two classes, the least a classifier can learn from."""
    classes = labels.classes
    if len(classes) == 0:
        raise GhostmapError(f"{source} holds no labels; training needs at least two classes")
    if len(classes) == 1:
        raise GhostmapError(f"{source} holds a single class '{classes[0]}'; training needs at least two")


def labels_from_truth(truth: np.ndarray, x, y) -> Labels:
    """Label positions ``(x, y)`` by looking them up in a ``(rows, cols)`` map of class names.

    Used to simulate a labelling session from a ground truth.

    Parameters
    ----------
    truth : numpy.ndarray
        (rows, cols) class names, e.g. the truth map :func:`simulate_scan` returns.
    x, y : array_like of int
        Scan columns and rows to label.

    Returns
    -------
    Labels
        One label per position, in the order given.

    Raises
    ------
    GhostmapError
        For a position outside the map or where the map is blank (``''``): it has no
        class to give.

    Examples
    --------
    >>> import numpy as np
    >>> import ghostmap as gm
    >>> truth = np.array([["none", "vertical"], ["horizontal", "vertical"]])
    >>> gm.labels_from_truth(truth, [1, 0], [0, 1]).to_dict()
    {(1, 0): 'vertical', (0, 1): 'horizontal'}
    """
    truth = np.asarray(truth)
    if truth.ndim != 2:
        raise GhostmapError(f"a truth map must be 2-D (rows, cols), got shape {truth.shape}")
    x = _as_int_array(x, "x")
    y = _as_int_array(y, "y")
    if len(x) != len(y):
        raise GhostmapError(f"positions need as many x as y, got {len(x)} and {len(y)}")
    rows, cols = truth.shape
    for xi, yi in zip(x.tolist(), y.tolist()):
        _check_in_scan("truth map", xi, yi, (rows, cols))
    names = truth[y, x].astype(str) if len(x) else np.zeros(0, "<U1")
    blank = np.flatnonzero(names == "")
    if len(blank):
        i = blank[0]
        raise GhostmapError(f"truth map: position x={x[i]}, y={y[i]} has no class")
    return Labels(x, y, names)


def class_fractions(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Fraction of positions in each class of a map of class indices.

    The one place where ghostmap counts class fractions (the CLI's summary lines, the
    label page's preview, a series' ``fractions``).

    Parameters
    ----------
    labels : array_like of int
        Class indices, any shape, each in ``0 .. n_classes - 1``.
    n_classes : int
        Number of classes.

    Returns
    -------
    numpy.ndarray
        (n_classes,) float64 fractions summing to 1 (all zero for an empty map).

    Examples
    --------
    >>> class_fractions(np.array([[0, 0], [2, 0]]), 3)
    array([0.75, 0.  , 0.25])
    """
    labels = np.asarray(labels).ravel()
    return np.bincount(labels, minlength=n_classes)[:n_classes] / max(labels.size, 1)


def format_fractions(labels: np.ndarray, classes) -> str:
    """One line such as ``"none 20%, vertical 45%, horizontal 35%"`` for a map of class indices.

    Parameters
    ----------
    labels : array_like of int
        Class indices into ``classes``, any shape.
    classes : sequence of str
        Class names.

    Returns
    -------
    str
        Each class name with its percentage of positions, in the order of ``classes``.

    Examples
    --------
    >>> format_fractions(np.array([0, 1, 1, 1]), ["none", "vertical"])
    'none 25%, vertical 75%'
    """
    fractions = class_fractions(labels, len(classes))
    return ", ".join(f"{c} {f:.0%}" for c, f in zip(classes, fractions))


def truth_map(labels: Labels, scan_shape: tuple[int, int]) -> np.ndarray:
    """A ``(rows, cols)`` string map holding each label at its position and ``''`` elsewhere."""
    rows, cols = (int(n) for n in scan_shape)
    width = max([1] + [len(s) for s in labels.label.tolist()])
    out = np.full((rows, cols), "", dtype=f"<U{width}")
    for xi, yi in zip(labels.x.tolist(), labels.y.tolist()):
        _check_in_scan("labels", xi, yi, (rows, cols))
    out[labels.y, labels.x] = labels.label
    return out
