"""Files a user opens elsewhere: the predictions archive, the domain map, a summary figure.

``predictions.npz`` holds ``labels`` (rows, cols) int64, ``probabilities`` (rows, cols, C)
float32 and ``classes`` (C,) as a unicode string array (no pickled objects), plus
``bright_field`` (rows, cols) float32 when known. ``domain_map.png`` is the paper's RGB
map at one pixel per probe position: none red, vertical green, horizontal blue, each
colour weighted by its probability so that uncertain domain walls show as mixed colours.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from .atomic import atomic_path
from .errors import GhostmapError
from .result import Prediction

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.npz"
DOMAIN_MAP_FILE = "domain_map.png"
SUMMARY_FILE = "summary.png"
RELIABILITY_FILE = "reliability.png"
logger = logging.getLogger(__name__)
CLASS_COLOURS = {"none": (1.0, 0.0, 0.0), "vertical": (0.0, 1.0, 0.0), "horizontal": (0.0, 0.0, 1.0)}
_OTHER_COLOURS = [(1.0, 0.8, 0.0), (0.8, 0.0, 1.0), (0.0, 0.9, 0.9), (0.6, 0.6, 0.6)]


def class_colours(classes) -> np.ndarray:
    """(C, 3) RGB in 0..1: the paper's colours for its classes, distinct ones for others."""
    others = iter(_OTHER_COLOURS * (len(classes) // len(_OTHER_COLOURS) + 1))
    return np.array([CLASS_COLOURS.get(c, None) or next(others) for c in classes], float)


def domain_rgb(probabilities: np.ndarray, classes) -> np.ndarray:
    """The domain map as an RGB image: class colours mixed by probability.

    The paper's colours: none red, vertical green, horizontal blue; other class names get
    other distinct colours.

    Parameters
    ----------
    probabilities : numpy.ndarray
        (rows, cols, C) class probabilities.
    classes : sequence of str
        The C class names.

    Returns
    -------
    numpy.ndarray
        (rows, cols, 3) uint8 image.

    Examples
    --------
    >>> import numpy as np
    >>> import ghostmap as gm
    >>> gm.domain_rgb(np.array([[[0.0, 1.0], [0.5, 0.5]]]), ["none", "vertical"]).tolist()
    [[[0, 255, 0], [128, 128, 0]]]
    """
    rgb = np.asarray(probabilities, float) @ class_colours(classes)
    return np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)


def save_prediction(out_dir: str | Path, prediction: Prediction, title: str = "") -> dict[str, Path]:
    """Write ``predictions.npz``, ``domain_map.png`` and ``summary.png`` into ``out_dir``.

    The same files as ``ghostmap predict``, each written under a temporary name and renamed
    when complete. Figures are drawn with matplotlib's object API: the pyplot state (open
    figures, the backend) is left alone.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Folder to write into; created if missing.
    prediction : Prediction
        What :func:`predict` returned.
    title : str, optional
        Title of the summary figure.

    Returns
    -------
    dict of str to pathlib.Path
        The paths written, under the keys ``predictions``, ``domain_map`` and ``summary``.

    Raises
    ------
    OSError
        When a file cannot be written (any earlier file of the same name is kept).

    Examples
    --------
    >>> import ghostmap as gm
    >>> result = gm.predict(gm.open_scan("scan.h5"), gm.Model.load("model"))  # doctest: +SKIP
    >>> gm.save_prediction("results", result)["domain_map"]  # doctest: +SKIP
    PosixPath('results/domain_map.png')
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"predictions": out_dir / PREDICTIONS_FILE, "domain_map": out_dir / DOMAIN_MAP_FILE,
             "summary": out_dir / SUMMARY_FILE}
    arrays = {
        "labels": prediction.labels.astype(np.int64),
        "probabilities": prediction.probabilities.astype(np.float32),
        "classes": np.array(prediction.classes, dtype=str),
    }
    if prediction.bright_field is not None:
        arrays["bright_field"] = prediction.bright_field.astype(np.float32)
    with atomic_path(paths["predictions"]) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    rgb = domain_rgb(prediction.probabilities, prediction.classes)
    with atomic_path(paths["domain_map"]) as tmp:
        Image.fromarray(rgb, "RGB").save(tmp, format="png")
    with atomic_path(paths["summary"]) as tmp:
        summary_figure(prediction, title).savefig(tmp, format="png", dpi=120)
    logger.debug("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths


def load_prediction(path: str | Path) -> Prediction:
    """Read ``predictions.npz`` back, as :func:`save_prediction` or ``ghostmap predict`` wrote it.

    Parameters
    ----------
    path : str or os.PathLike
        The ``predictions.npz`` file, or the folder holding it.

    Returns
    -------
    Prediction
        Labels, probabilities, class names and (when stored) the bright-field image.

    Raises
    ------
    GhostmapError
        When there is no such file or it is not a ghostmap predictions archive.

    Examples
    --------
    >>> import ghostmap as gm
    >>> result = gm.load_prediction("results")  # doctest: +SKIP
    >>> result.label_names()[0, :3]  # doctest: +SKIP
    array(['none', 'vertical', 'vertical'], dtype='<U10')
    """
    path = Path(path)
    if path.is_dir():
        path = path / PREDICTIONS_FILE
    if not path.is_file():
        raise GhostmapError(f"no predictions at {path}; run 'ghostmap predict' first")
    try:
        with np.load(path, allow_pickle=False) as data:
            labels, probs, classes = data["labels"], data["probabilities"], data["classes"]
            bf = data["bright_field"] if "bright_field" in data else None
    except (OSError, ValueError, KeyError) as exc:
        raise GhostmapError(f"{path} is not a ghostmap predictions file: {exc}") from None
    return Prediction(labels, probs, tuple(str(c) for c in classes), bf)


def summary_figure(prediction: Prediction, title: str = ""):
    """Domain map, confidence map and virtual bright-field image side by side.

    The margins are set from the legend's measured width, so the figure is saved without
    ``bbox_inches="tight"``, whose extra layout pass took a third of the figure's 0.27 s on
    the paper-size scan (most of ``ghostmap predict``'s time after the last pattern).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    rows, cols = prediction.labels.shape
    panels = 3 if prediction.bright_field is not None else 2
    top = 0.35 + (0.35 if title else 0.0)  # axes titles, and the figure's
    if cols > 2 * rows:  # wide scans (like the paper's 34 x 206) read better one above the other
        fig = Figure(figsize=(10, panels * 8.3 * rows / cols + (panels - 1) * _GAP + top + _BOTTOM))
        axes = fig.subplots(panels, 1, squeeze=False)
    else:
        fig = Figure(figsize=(4.5 * panels, 3.2 * rows / cols + top + _BOTTOM))
        axes = fig.subplots(1, panels, squeeze=False)
    axes = axes.ravel()
    handles = [Rectangle((0, 0), 1, 1, color=c) for c in class_colours(prediction.classes)]
    legend = axes[0].legend(handles, prediction.classes, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    _fit_margins(fig, legend.get_window_extent(FigureCanvasAgg(fig).get_renderer()).width / fig.dpi,
                 cols > 2 * rows, top)
    axes[0].imshow(domain_rgb(prediction.probabilities, prediction.classes), interpolation="nearest")
    axes[0].set_title("domain map")
    im = axes[1].imshow(prediction.confidence, vmin=1.0 / len(prediction.classes), vmax=1, cmap="magma",
                        interpolation="nearest")
    axes[1].set_title("confidence (max probability)")
    fig.colorbar(im, ax=axes[1], fraction=0.03)
    if prediction.bright_field is not None:
        im = axes[2].imshow(prediction.bright_field, cmap="gray", interpolation="nearest")
        axes[2].set_title("virtual bright field")
        fig.colorbar(im, ax=axes[2], fraction=0.03)
    for ax in axes:
        ax.set_xlabel("scan column (x)")
        ax.set_ylabel("scan row (y)")
    if title:
        fig.suptitle(title)
    return fig


_LEFT, _BOTTOM, _GAP = 0.75, 0.5, 0.9  # inches: y tick labels and label; x tick labels and label; between panels


def _fit_margins(fig, legend_inches: float, stacked: bool, top: float) -> None:
    """Margins in inches for the summary figure's tick labels, titles, colorbars and legend."""
    width, height = fig.get_size_inches()
    n = len(fig.axes)
    right = max(legend_inches + 0.2, 0.9)  # the legend beside the first panel, colourbar ticks beside the others
    if stacked:
        cell = max((height - top - _BOTTOM - (n - 1) * _GAP) / n, 0.1)
        fig.subplots_adjust(left=_LEFT / width, right=1 - right / width, bottom=_BOTTOM / height,
                            top=1 - top / height, hspace=_GAP / cell)
    else:
        gap = right + _LEFT  # the legend and the next panel's tick labels between panels
        cell = max((width - _LEFT - 0.9 - gap * (n - 1)) / n, 0.5)
        fig.subplots_adjust(left=_LEFT / width, right=1 - 0.9 / width, bottom=_BOTTOM / height, top=1 - top / height,
                            wspace=gap / cell)


def save_labels_figure(path: str | Path, labels, background: np.ndarray | None = None,
                       scan_shape: tuple[int, int] | None = None) -> Path:
    """Labelled positions coloured by class, over a class-name map or an image (like the paper's Figure 7)."""
    from .labels import class_order

    fig = Figure(figsize=(10, 3))
    ax = fig.subplots()
    if background is not None:
        background = np.asarray(background)
        if background.dtype.kind in "US":
            classes = class_order([c for c in np.unique(background) if c])
            onehot = np.stack([background == c for c in classes], -1).astype(float)
            ax.imshow(0.35 + 0.65 * domain_rgb(onehot, classes) / 255.0, interpolation="nearest")
        else:
            ax.imshow(background, cmap="gray", interpolation="nearest")
    elif scan_shape is not None:
        ax.set_xlim(-0.5, scan_shape[1] - 0.5)
        ax.set_ylim(scan_shape[0] - 0.5, -0.5)
    classes = labels.classes
    colours = class_colours(classes)
    for c, colour in zip(classes, colours):
        sel = labels.label == c
        ax.scatter(labels.x[sel], labels.y[sel], s=14, color=colour, edgecolors="white", linewidths=0.6,
                   label=f"{c} ({int(sel.sum())})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.set_xlabel("scan column (x)")
    ax.set_ylabel("scan row (y)")
    ax.set_title(f"{len(labels)} labelled positions")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def save_preview(scan, path: str | Path) -> None:
    """Write a PNG: the mean pattern on a log scale beside the virtual bright-field image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ghostmap.analysis import bright_field_mask, mean_pattern, virtual_image
    from ghostmap.atomic import atomic_path
    from ghostmap.io import as_scan

    scan = as_scan(scan)
    mean = mean_pattern(scan)
    mask = bright_field_mask(mean)
    bright_field = virtual_image(scan, mask)

    fig = Figure(figsize=(10, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    shown = np.log10(np.clip(mean - mean.min(), 0, None) + max(mean.max() - mean.min(), 1e-12) * 1e-4)
    im = left.imshow(shown, cmap="magma")
    left.contour(mask, levels=[0.5], colors="cyan", linewidths=0.8)
    left.set_title("mean pattern (log10)")
    left.set_xlabel("det_col")
    left.set_ylabel("det_row")
    fig.colorbar(im, ax=left, shrink=0.8)
    im = right.imshow(bright_field, cmap="gray")
    right.set_title("virtual bright field")
    right.set_xlabel("x (scan column)")
    right.set_ylabel("y (scan row)")
    fig.colorbar(im, ax=right, shrink=0.8)
    fig.suptitle(" ".join(str(f"{scan.source}  scan {scan.scan_shape}  detector {scan.detector_shape}").split()))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
def save_reliability_figure(path: str | Path, report: dict) -> Path:
    """The reliability diagram of an evaluation report: accuracy against confidence per bin.

    A calibrated model's bars sit on the diagonal. Drawn with matplotlib's object API
    (no pyplot state is touched).

    Parameters
    ----------
    path : str or Path
        PNG to write (atomically).
    report : dict
        An evaluation report holding ``reliability`` and ``expected_calibration_error``
        (:func:`ghostmap.evaluation.evaluate` with probabilities and full truth).

    Returns
    -------
    Path
        ``path``.

    Example
    -------
    >>> save_reliability_figure("results/reliability.png", report)  # doctest: +SKIP
    """
    from matplotlib.figure import Figure

    table = report["reliability"]
    edges = np.asarray(table["edges"], float)
    width = np.diff(edges)
    filled = np.array([a is not None for a in table["accuracy"]])
    accuracy = np.array([a if a is not None else 0.0 for a in table["accuracy"]])
    confidence = np.array([c if c is not None else 0.0 for c in table["confidence"]])
    count = np.asarray(table["count"], float)
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax, hist = fig.subplots(1, 2)
    ax.bar(edges[:-1][filled], accuracy[filled], width=width[filled], align="edge", color="#4c72b0",
           edgecolor="white", label="accuracy")
    ax.bar(edges[:-1][filled], (confidence - accuracy)[filled], bottom=accuracy[filled], width=width[filled],
           align="edge", color="#dd8452", alpha=0.5, edgecolor="white", label="gap to confidence")
    ax.plot([0, 1], [0, 1], color="black", linewidth=1, linestyle="--", label="calibrated")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (winning class's probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability: expected calibration error {report['expected_calibration_error']:.4f}")
    ax.legend(loc="upper left", fontsize=8)
    seen = count > 0  # empty bins get no bar: a log axis has no room for zero
    hist.bar(edges[:-1][seen], count[seen], width=width[seen], align="edge", color="#55a868", edgecolor="white")
    hist.set_yscale("log")
    hist.set_xlim(0, 1)
    hist.set_xlabel("confidence")
    hist.set_ylabel("positions")
    hist.set_title("positions per confidence bin")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path
