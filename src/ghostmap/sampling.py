"""Choose which scan positions a person should label next.

Two strategies:

``random``
    A uniform draw, without replacement, from the positions not yet labelled.

``adaptive``
    Algorithm 1 of the paper, made iterative. First a coarse grid of step ``S``; once
    that is labelled, the midpoint of every pair of labelled neighbours (along the 8
    grid directions, at most the current spacing apart) that carry different labels,
    i.e. that straddle a domain wall. Each round of labels halves the spacing, so the
    samples home in on the walls, where a classifier learns the most.

The sampler is stateless: what it proposes follows only from the labels already given,
the budget, the step and the seed. A user can stop and resume at any time, and ask for
new positions after every few labels or after all of them. Only the step must stay the
same between calls (pass the same ``step``, or the same budget for the default).
"""

from __future__ import annotations

import math
import operator

import numpy as np

from ghostmap.errors import GhostmapError
from ghostmap.labels import Labels, check_in_scan

__all__ = ["STRATEGIES", "propose", "default_step", "coarse_grid", "boundary_midpoints", "refinement_spacings"]

STRATEGIES = ("adaptive", "random")

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


def _propose_random(scan_shape, labelled: set, remaining: int, seed: int):
    rows, cols = scan_shape
    free = np.ones((rows, cols), dtype=bool)
    for x, y in labelled:
        free[y, x] = False
    flat = np.flatnonzero(free)
    take = min(remaining, len(flat))
    chosen = np.random.default_rng(seed).choice(flat, size=take, replace=False)
    y, x = np.unravel_index(chosen, (rows, cols))
    return _reading_order(x, y)


def _propose_adaptive(scan_shape, labels: Labels, remaining: int, step: int, seed: int):
    labelled = labels.to_dict()
    gx, gy = coarse_grid(scan_shape, step)
    todo = np.array([(x, y) not in labelled for x, y in zip(gx.tolist(), gy.tolist())], dtype=bool)
    if todo.any():
        # The grid comes first: midpoints need labelled neighbours to be found.
        cx, cy = gx[todo], gy[todo]
        pick = _spread_subset(cx, cy, remaining, seed, anchors=(labels.x, labels.y))
        return _reading_order(cx[pick], cy[pick])
    for spacing in refinement_spacings(step):
        mids = boundary_midpoints(labelled, spacing) - labelled.keys()
        if mids:
            cx = np.array([m[0] for m in mids], np.int64)
            cy = np.array([m[1] for m in mids], np.int64)
            cx, cy = _reading_order(cx, cy)  # a set's order is arbitrary; fix it before drawing
            pick = _spread_subset(cx, cy, remaining, seed)
            return cx[pick], cy[pick]
    return _EMPTY


def propose(
    scan_shape: tuple[int, int],
    labels: Labels | None,
    budget: int,
    strategy: str = "adaptive",
    step: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(x, y)`` to label next, so that no more than ``budget`` are labelled in all.

    At most ``budget - len(labels)`` positions are proposed, none already labelled and
    none twice, in reading order (row by row). ``strategy="adaptive"`` proposes the
    unlabelled points of the coarse grid of ``step`` (default :func:`default_step`)
    first, then midpoints across domain walls at ever finer spacings, and nothing once no
    wall is left to refine; ``"random"`` draws uniformly from the unlabelled positions.
    When more candidates than the budget allows are left, a spatially spread subset is
    taken. Results are reproducible from ``seed``.
    """
    rows, cols = _scan_shape(scan_shape)
    budget = _positive_int(budget, "budget")
    if strategy not in STRATEGIES:
        raise GhostmapError(f"unknown sampling strategy {strategy!r} (choose {' or '.join(STRATEGIES)})")
    if step is None:
        step = default_step((rows, cols), budget)
    step = _positive_int(step, "step")
    seed = _whole_number(seed, "seed", 0)
    labels = Labels.empty() if labels is None else labels
    check_in_scan(labels.x, labels.y, (rows, cols), what="label position")
    remaining = budget - len(labels)
    if remaining <= 0:
        return _EMPTY
    if strategy == "random":
        return _propose_random((rows, cols), set(labels.to_dict()), remaining, seed)
    return _propose_adaptive((rows, cols), labels, remaining, step, seed)
