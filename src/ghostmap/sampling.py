"""Choose which scan positions a person should label next.

Three strategies:

``random``
    A uniform draw, without replacement, from the positions not yet labelled.

``adaptive``
    Algorithm 1 of the paper, made iterative. First a coarse grid of step ``S``; once
    that is labelled, the midpoint of every pair of labelled neighbours (along the 8
    grid directions, at most the current spacing apart) that carry different labels,
    i.e. that straddle a domain wall. Each round of labels halves the spacing, so the
    samples home in on the walls, where a classifier learns the most.

``active``
    Model-guided: without a model (or with fewer labels than training needs) exactly the
    adaptive sampler's first batch, the coarse grid of step ``S``. With a model's
    prediction of the whole scan, up to ``batch`` positions ranked by the model's
    uncertainty (one minus the margin between its two most probable classes), chosen
    greedily so that no two lie closer than ``min_distance`` positions: one batch does not
    spend itself on one patch of wall.

The sampler is stateless: what it proposes follows only from the labels already given,
the budget, the step and the seed. A user can stop and resume at any time, and ask for
new positions after every few labels or after all of them. Only the step must stay the
same between calls (pass the same ``step``, or the same budget for the default).
"""

from __future__ import annotations

import logging
import math
import operator

import numpy as np

from ghostmap.errors import GhostmapError
from ghostmap.labels import Labels, check_in_scan

__all__ = ["STRATEGIES", "propose", "default_step", "coarse_grid", "boundary_midpoints", "refinement_spacings",
           "exclusion_mask", "uncertainty", "spread_by_uncertainty", "DEFAULT_BATCH", "MIN_MODEL_LABELS"]

logger = logging.getLogger(__name__)

STRATEGIES = ("adaptive", "random", "active")
#: Positions the active strategy proposes per call by default (see BENCHMARKS.md, "Active sampling").
DEFAULT_BATCH = 10
#: Labels a model needs before the active strategy follows it (training needs 4).
MIN_MODEL_LABELS = 4
#: Closest two positions of one active batch may lie, in scan positions (Chebyshev distance).
DEFAULT_MIN_DISTANCE = 3

#: The eight grid directions (dx, dy) a wall is looked for along.
_DIRECTIONS = tuple((dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dx, dy) != (0, 0))

_EMPTY = (np.zeros(0, np.int64), np.zeros(0, np.int64))


def _whole_number(value, name: str, minimum: int) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        raise GhostmapError(f"{name} must be a whole number, got {value!r}") from None
    if number < minimum:
        raise GhostmapError(f"{name} must be at least {minimum}, got {number}" if minimum else
                            f"{name} must not be negative, got {number}")
    return number


def _positive_int(value, name: str) -> int:
    return _whole_number(value, name, 1)


def _scan_shape(scan_shape) -> tuple[int, int]:
    try:
        rows, cols = (operator.index(n) for n in scan_shape)
    except (TypeError, ValueError):
        raise GhostmapError(f"scan shape must be (rows, cols), got {scan_shape!r}") from None
    if rows < 1 or cols < 1:
        raise GhostmapError(f"scan shape must be at least 1 x 1, got {rows} rows x {cols} columns")
    return rows, cols


def _grid_size(scan_shape: tuple[int, int], step: int) -> int:
    rows, cols = scan_shape
    return math.ceil(rows / step) * math.ceil(cols / step)


def default_step(scan_shape: tuple[int, int], budget: int) -> int:
    """The grid step whose coarse grid takes about 45 % of ``budget`` (never more).

    The rest of the budget is left to refine the domain walls. This is the smallest step
    whose grid has at most ``0.45 * budget`` points, so on the paper's 34 x 206 scan it
    gives 19 for 50 labels (22 grid points), 14 for 100 (45) and 9 for 250 (92). The
    paper itself used steps of 30, 10 and 6 for 50, 100 and 250 labels; pass ``step`` (the
    CLI's ``--step``) to reproduce those. With a budget too small for any grid the
    step covers the whole scan, so the grid is the single position (0, 0).
    """
    rows, cols = _scan_shape(scan_shape)
    budget = _positive_int(budget, "budget")
    target = 0.45 * budget
    largest = max(rows, cols)
    for step in range(1, largest + 1):
        if _grid_size((rows, cols), step) <= target:
            return step
    return largest


def coarse_grid(scan_shape: tuple[int, int], step: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid positions ``x = 0, S, 2S, ... < cols`` by ``y = 0, S, 2S, ... < rows``, row by row.

    The paper's loop runs to ``floor(X / s)`` inclusive, which leaves the scan when ``s``
    divides its size; positions here always lie inside it.
    """
    rows, cols = _scan_shape(scan_shape)
    step = _positive_int(step, "step")
    yy, xx = np.meshgrid(np.arange(0, rows, step), np.arange(0, cols, step), indexing="ij")
    return xx.ravel().astype(np.int64), yy.ravel().astype(np.int64)


def refinement_spacings(step: int) -> list[int]:
    """Spacings of the refinement levels: ``step`` halved (rounding up) while at least 2.

    Rounding up keeps an odd spacing's two halves (e.g. 19 -> 9 + 10) within the next
    level, so every pair left by one level is seen by the next.
    """
    spacing = _positive_int(step, "step")
    levels = []
    while spacing >= 2:
        levels.append(spacing)
        spacing = math.ceil(spacing / 2)
    return levels


def boundary_midpoints(labelled: dict[tuple[int, int], str], spacing: int) -> set[tuple[int, int]]:
    """Midpoints between labelled neighbours with different labels, ``spacing`` or less apart.

    For every labelled position ``p`` and each of the 8 directions ``d``, the nearest
    labelled position ``q = p + t d`` along that ray (``t <= spacing`` steps) is taken.
    If it lies more than half the spacing away (``t > spacing / 2``, so odd spacings
    are tolerated) and its label differs, the pair straddles a wall and its midpoint is
    returned. A nearer labelled position means the pair is already split; it is handled at
    a finer spacing. For odd ``t`` the midpoint is rounded towards the pair's end that
    comes first in reading order (smaller row, then smaller column), so both ends of a
    pair give the same point. Midpoints always lie strictly between the two ends, and, as
    the nearest labelled position along the ray is used, are never labelled already.
    """
    spacing = _positive_int(spacing, "spacing")
    found: set[tuple[int, int]] = set()
    for (px, py), label in labelled.items():
        for dx, dy in _DIRECTIONS:
            for t in range(1, spacing + 1):
                q = (px + t * dx, py + t * dy)
                other = labelled.get(q)
                if other is None:
                    continue
                if 2 * t > spacing and other != label and t >= 2:
                    # Start from the end first in reading order, so (p, q) and (q, p) agree.
                    if (py, px) <= (q[1], q[0]):
                        start, sx, sy = (px, py), dx, dy
                    else:
                        start, sx, sy = q, -dx, -dy
                    k = t // 2
                    found.add((start[0] + k * sx, start[1] + k * sy))
                break
    return found


def _spread_subset(
    x: np.ndarray,
    y: np.ndarray,
    k: int,
    seed: int,
    anchors: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Indices of ``k`` of the candidates ``(x, y)``, spread out by farthest-point sampling.

    Each pick is the candidate farthest from those already picked and from ``anchors``
    (positions already labelled); ties are broken by a random order drawn from ``seed``,
    so the choice is reproducible.
    """
    n = len(x)
    if k >= n:
        return np.arange(n)
    order = np.random.default_rng(seed).permutation(n)
    px = x[order].astype(float)
    py = y[order].astype(float)
    dist = np.full(n, np.inf)
    if anchors is not None and len(anchors[0]):
        from scipy.spatial import cKDTree

        tree = cKDTree(np.column_stack([anchors[0], anchors[1]]).astype(float))
        dist, _ = tree.query(np.column_stack([px, py]))
        dist = np.asarray(dist, dtype=float)
    picked = []
    for _ in range(k):
        i = int(np.argmax(dist))
        picked.append(i)
        dist = np.minimum(dist, np.hypot(px - px[i], py - py[i]))
        dist[i] = -1.0
    return np.sort(order[picked])


def _reading_order(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idx = np.lexsort((x, y))
    return x[idx].astype(np.int64), y[idx].astype(np.int64)


def _propose_random(scan_shape, labelled: set, remaining: int, seed: int, excluded: np.ndarray):
    rows, cols = scan_shape
    free = ~excluded
    for x, y in labelled:
        free[y, x] = False
    flat = np.flatnonzero(free)
    take = min(remaining, len(flat))
    chosen = np.random.default_rng(seed).choice(flat, size=take, replace=False)
    y, x = np.unravel_index(chosen, (rows, cols))
    return _reading_order(x, y)


def _propose_adaptive(scan_shape, labels: Labels, remaining: int, step: int, seed: int, excluded: np.ndarray):
    labelled = labels.to_dict()
    gx, gy = coarse_grid(scan_shape, step)
    todo = np.array([(x, y) not in labelled for x, y in zip(gx.tolist(), gy.tolist())], dtype=bool)
    todo &= ~excluded[gy, gx]
    if todo.any():
        # The grid comes first: midpoints need labelled neighbours to be found.
        cx, cy = gx[todo], gy[todo]
        pick = _spread_subset(cx, cy, remaining, seed, anchors=(labels.x, labels.y))
        return _reading_order(cx[pick], cy[pick])
    for spacing in refinement_spacings(step):
        mids = {m for m in boundary_midpoints(labelled, spacing) - labelled.keys() if not excluded[m[1], m[0]]}
        if mids:
            cx = np.array([m[0] for m in mids], np.int64)
            cy = np.array([m[1] for m in mids], np.int64)
            cx, cy = _reading_order(cx, cy)  # a set's order is arbitrary; fix it before drawing
            pick = _spread_subset(cx, cy, remaining, seed)
            return cx[pick], cy[pick]
    return _EMPTY


def uncertainty(probabilities: np.ndarray) -> np.ndarray:
    """One minus the margin between the two most probable classes, per position (0 sure, 1 a coin toss).

    Parameters
    ----------
    probabilities : numpy.ndarray
        Class probabilities (rows, cols, C).

    Returns
    -------
    numpy.ndarray
        (rows, cols) float64 in [0, 1].

    Example
    -------
    >>> uncertainty(np.array([[[0.5, 0.5], [1.0, 0.0]]]))
    array([[1., 0.]])
    """
    p = np.asarray(probabilities, np.float64)
    if p.ndim != 3 or p.shape[-1] < 2:
        raise GhostmapError(f"class probabilities must be (rows, cols, classes >= 2), got shape {p.shape}")
    top = np.sort(p, axis=-1)[..., -2:]
    return 1.0 - (top[..., 1] - top[..., 0])


def spread_by_uncertainty(score: np.ndarray, excluded: np.ndarray, k: int, min_distance: int,
                          seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``k`` positions ``(x, y)``, most uncertain first, no two within ``min_distance``.

    Greedy non-maximum suppression: take the most uncertain position left, then drop every
    position within ``min_distance`` of it (Chebyshev distance), and repeat. Ties are broken
    by a random order drawn from ``seed``. Excluded positions are never taken; if the
    distance leaves fewer than ``k`` positions, it is halved until it does not (or is 0).

    Parameters
    ----------
    score : numpy.ndarray
        (rows, cols) uncertainty, higher first.
    excluded : numpy.ndarray
        (rows, cols) bool, positions never to propose (labelled ones).
    k : int
        Positions wanted.
    min_distance : int
        Positions of one batch lie at least this far apart.
    seed : int
        Seed of the tie-breaking order.

    Returns
    -------
    tuple of numpy.ndarray
        ``(x, y)`` int64, in the order chosen (most uncertain first).

    Example
    -------
    >>> score = np.zeros((5, 5)); score[2, 2] = score[2, 3] = 1
    >>> spread_by_uncertainty(score, np.zeros((5, 5), bool), 2, 2)[0][0]
    np.int64(2)
    """
    score = np.asarray(score, np.float64)
    rows, cols = score.shape
    free = ~np.asarray(excluded, bool)
    shuffle = np.random.default_rng(seed).permutation(score.size)
    flat_score = score.ravel()[shuffle]
    order = shuffle[np.argsort(-flat_score, kind="stable")]
    order = order[free.ravel()[order]]
    distance = max(0, int(min_distance))
    while True:
        blocked = np.zeros((rows, cols), bool)
        picked: list[int] = []
        for flat in order:
            r, c = divmod(int(flat), cols)
            if blocked[r, c]:
                continue
            picked.append(int(flat))
            if len(picked) == k:
                break
            if distance:
                blocked[max(0, r - distance + 1): r + distance, max(0, c - distance + 1): c + distance] = True
        if len(picked) >= min(k, len(order)) or distance == 0:
            break
        distance //= 2
    y, x = np.divmod(np.asarray(picked, np.int64), cols)
    return x.astype(np.int64), y.astype(np.int64)


def _checked_model(model, scan, labels: Labels):
    """A model given as a folder loaded, and a model or prediction checked against the scan and labels."""
    from ghostmap.result import Prediction  # no torch for a prediction already made

    if isinstance(model, (Prediction, np.ndarray)):
        classes = tuple(model.classes) if isinstance(model, Prediction) else None
    else:
        from ghostmap.model import Model

        if not isinstance(model, Model):
            model = Model.load(model)
        if scan is None:
            raise GhostmapError("the active strategy with a model needs the scan to predict")
        from ghostmap.reading import as_scan

        scan = as_scan(scan)
        model.check_scan(scan.detector_shape, scan.source)
        classes = tuple(model.classes)
    if classes is not None:
        unknown = sorted(set(labels.classes) - set(classes))
        if unknown:
            raise GhostmapError(f"the model knows the classes {', '.join(classes)} but the labels also use "
                                f"{', '.join(unknown)}; train a model on these labels first")
    return model, scan


def _probabilities_of(model, scan, scan_shape: tuple[int, int]) -> np.ndarray:
    """The (rows, cols, C) class probabilities the active strategy ranks."""
    from ghostmap.result import Prediction

    if isinstance(model, Prediction):
        probabilities = model.probabilities
    elif isinstance(model, np.ndarray):
        probabilities = model
    else:  # a Model, as _checked_model left it
        from ghostmap.prediction import predict

        probabilities = predict(scan, model).probabilities
    if probabilities.ndim != 3 or probabilities.shape[:2] != tuple(scan_shape):
        raise GhostmapError(f"the model's prediction has shape {probabilities.shape}, but the scan has "
                            f"{scan_shape[0]} x {scan_shape[1]} positions")
    return probabilities


def _propose_active(scan_shape, labels: Labels, remaining: int, step: int, seed: int, model, scan, batch: int,
                    min_distance: int, excluded: np.ndarray):
    if model is not None:
        model, scan = _checked_model(model, scan, labels)
    if model is None or len(labels) < MIN_MODEL_LABELS:
        return _propose_adaptive(scan_shape, labels, remaining, step, seed, excluded)
    probabilities = _probabilities_of(model, scan, scan_shape)
    excluded = excluded.copy()
    excluded[labels.y, labels.x] = True
    x, y = spread_by_uncertainty(uncertainty(probabilities), excluded, min(batch, remaining), min_distance, seed)
    logger.info("active sampling: %d positions, uncertainty %.3f to %.3f", len(x),
                *(lambda u: (u.max(), u.min()) if u.size else (0.0, 0.0))(uncertainty(probabilities)[y, x]))
    return _reading_order(x, y)


def propose(
    scan_shape: tuple[int, int],
    labels: Labels | None,
    budget: int,
    strategy: str = "adaptive",
    step: int | None = None,
    seed: int = 0,
    model=None,
    scan=None,
    batch: int | None = None,
    min_distance: int = DEFAULT_MIN_DISTANCE,
    exclude=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(x, y)`` to label next, so that no more than ``budget`` are labelled in all.

    At most ``budget - len(labels)`` positions are proposed, none already labelled and
    none twice, in reading order (row by row). ``strategy="adaptive"`` proposes the
    unlabelled points of the coarse grid of ``step`` (default :func:`default_step`)
    first, then midpoints across domain walls at ever finer spacings, and nothing once no
    wall is left to refine; ``"random"`` draws uniformly from the unlabelled positions;
    ``"active"`` proposes the adaptive sampler's first batch until a model is given and
    at least :data:`MIN_MODEL_LABELS` labels exist, then up to ``batch`` of the positions
    the model is least sure of, spread out. When more candidates than the budget allows
    are left, a spatially spread subset is taken. Positions in ``exclude`` are never proposed,
    whatever the strategy. Results are reproducible from ``seed``.

    Parameters
    ----------
    scan_shape : tuple of int
        (rows, cols) of the scan.
    labels : Labels or None
        Labels given so far.
    budget : int
        Labels wanted in all, those given included.
    strategy : str
        ``"adaptive"``, ``"random"`` or ``"active"``.
    step : int, optional
        Coarse grid step (default :func:`default_step`).
    seed : int
        Seed of every random choice.
    model : Model, path, Prediction or numpy.ndarray, optional
        ``"active"`` only: a trained model (or its folder; ``scan`` is then classified), a
        :class:`~ghostmap.prediction.Prediction`, or class probabilities (rows, cols, C).
    scan : optional
        The scan, when ``model`` is a model to run.
    batch : int, optional
        ``"active"`` only: positions proposed per call once a model leads (default
        :data:`DEFAULT_BATCH`).
    min_distance : int
        ``"active"`` only: the closest two positions of one batch may lie.
    exclude : numpy.ndarray or tuple of numpy.ndarray, optional
        Positions never to propose: a (rows, cols) bool mask, or ``(x, y)`` arrays. A held-out
        test set, vacuum, a damaged or drifting part of the scan. The budget still counts only
        labels, so the proposals move elsewhere.

    Returns
    -------
    tuple of numpy.ndarray
        ``(x, y)`` int64 arrays.

    Raises
    ------
    GhostmapError
        Unknown strategy, bad numbers, labels outside the scan, or a model whose detector
        shape, scan size or classes do not fit.

    Examples
    --------
    >>> x, y = propose((34, 206), None, 50, step=30)
    >>> len(x)
    14
    """
    rows, cols = _scan_shape(scan_shape)
    budget = _positive_int(budget, "budget")
    if strategy not in STRATEGIES:
        raise GhostmapError(f"unknown sampling strategy {strategy!r} (choose {', '.join(STRATEGIES)})")
    if step is None:
        step = default_step((rows, cols), budget)
    step = _positive_int(step, "step")
    seed = _whole_number(seed, "seed", 0)
    batch = DEFAULT_BATCH if batch is None else _positive_int(batch, "batch")
    min_distance = _whole_number(min_distance, "min_distance", 0)
    if model is not None and strategy != "active":
        raise GhostmapError(f"a model guides only the active strategy, not {strategy!r} (use --strategy active)")
    labels = Labels.empty() if labels is None else labels
    check_in_scan(labels.x, labels.y, (rows, cols), what="label position")
    excluded = exclusion_mask(exclude, (rows, cols))
    remaining = budget - len(labels)
    if remaining <= 0:
        return _EMPTY
    if strategy == "random":
        return _propose_random((rows, cols), set(labels.to_dict()), remaining, seed, excluded)
    if strategy == "active":
        return _propose_active((rows, cols), labels, remaining, step, seed, model, scan, batch, min_distance,
                               excluded)
    return _propose_adaptive((rows, cols), labels, remaining, step, seed, excluded)


def exclusion_mask(exclude, scan_shape: tuple[int, int]) -> np.ndarray:
    """``exclude`` of :func:`propose` as a (rows, cols) bool mask: True = never propose.

    Example
    -------
    >>> exclusion_mask((np.array([2]), np.array([1])), (2, 3)).astype(int)
    array([[0, 0, 0],
           [0, 0, 1]])
    """
    if exclude is None:
        return np.zeros(scan_shape, bool)
    if isinstance(exclude, np.ndarray) and exclude.dtype == bool:
        if exclude.shape != tuple(scan_shape):
            raise GhostmapError(f"the exclusion mask has shape {exclude.shape}, but the scan has "
                                f"{scan_shape[0]} x {scan_shape[1]} positions")
        return exclude.copy()
    try:
        x, y = (np.asarray(v).astype(np.int64, casting="same_kind").ravel() for v in exclude)
    except (TypeError, ValueError) as exc:
        raise GhostmapError("exclude must be a bool mask of the scan or (x, y) integer arrays") from exc
    if len(x) != len(y):
        raise GhostmapError(f"exclude has {len(x)} x and {len(y)} y coordinates")
    check_in_scan(x, y, scan_shape, what="excluded position")
    mask = np.zeros(scan_shape, bool)
    mask[y, x] = True
    return mask
