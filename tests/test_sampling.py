"""Tests for ghostmap.sampling: the coarse grid, wall midpoints, halving, budgets, the full loop."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import PAPER_LABELS, needs_paper

from ghostmap.errors import GhostmapError
from ghostmap.labels import Labels, import_paper_yaml, labels_from_truth, truth_map
from ghostmap.sampling import (
    boundary_midpoints,
    coarse_grid,
    default_step,
    propose,
    refinement_spacings,
)

PAPER_SCAN = (34, 206)


def positions(x, y) -> list[tuple[int, int]]:
    return list(zip(np.asarray(x).tolist(), np.asarray(y).tolist()))


def wall_map(shape=(20, 30), wall_col=13) -> np.ndarray:
    """Two domains: 'vertical' left of ``wall_col``, 'horizontal' from it on."""
    _, xx = np.mgrid[: shape[0], : shape[1]]
    return np.where(xx < wall_col, "vertical", "horizontal")


def diagonal_map(shape=(40, 80)) -> tuple[np.ndarray, np.ndarray]:
    """Two domains split by the line x = 2 y + 20; also returns each position's distance to it."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    truth = np.where(xx > 2 * yy + 20, "horizontal", "vertical")
    distance = np.abs(xx - 2 * yy - 20) / np.sqrt(5)
    return truth, distance


def run_loop(truth, budget, step=None, seed=0, max_rounds=200, strategy="adaptive"):
    """Sample -> label from ``truth`` -> sample ..., checking every round's proposal."""
    labels = Labels.empty()
    rounds = []
    for _ in range(max_rounds):
        x, y = propose(truth.shape, labels, budget, strategy=strategy, step=step, seed=seed)
        assert x.dtype == np.int64 and y.dtype == np.int64
        new = positions(x, y)
        assert len(set(new)) == len(new), "a position proposed twice"
        assert not set(new) & set(labels.to_dict()), "a labelled position proposed again"
        assert len(labels) + len(new) <= budget, "budget exceeded"
        if not new:
            return labels, rounds
        rounds.append(new)
        labels = labels.merged(labels_from_truth(truth, x, y))
    raise AssertionError(f"no end after {max_rounds} rounds")


# -- the coarse grid ----------------------------------------------------------------------
def test_coarse_grid_exact_with_partial_last_row_and_column():
    x, y = coarse_grid((7, 11), 5)
    assert positions(x, y) == [(0, 0), (5, 0), (10, 0), (0, 5), (5, 5), (10, 5)]
    x, y = coarse_grid((10, 10), 5)  # the paper's loop would also visit 10, outside the scan
    assert positions(x, y) == [(0, 0), (5, 0), (0, 5), (5, 5)]
    x, y = coarse_grid((3, 2), 1)
    assert len(x) == 6 and x.dtype == np.int64
    assert positions(*coarse_grid((3, 4), 100)) == [(0, 0)]


def test_grid_proposed_first():
    x, y = propose((7, 11), None, budget=50, step=5)
    assert positions(x, y) == positions(*coarse_grid((7, 11), 5))
    # Some of the grid labelled (even across a wall): only the rest of the grid comes next.
    labels = Labels([0, 10], [0, 5], ["none", "vertical"])
    x, y = propose((7, 11), labels, budget=50, step=5)
    assert positions(x, y) == [(5, 0), (10, 0), (0, 5), (5, 5)]


def test_grid_limited_by_budget_spread_and_reproducible():
    shape, step = (30, 60), 10  # 3 x 6 = 18 grid points
    labels = Labels([0], [0], ["none"])
    x, y = propose(shape, labels, budget=5, step=step, seed=3)
    assert len(x) == 4
    grid = set(positions(*coarse_grid(shape, step)))
    assert set(positions(x, y)) <= grid - {(0, 0)}
    assert positions(*propose(shape, labels, budget=5, step=step, seed=3)) == positions(x, y)
    # Spread out: no two picks are grid neighbours, and none neighbours the labelled corner.
    picks = positions(x, y) + [(0, 0)]
    gaps = [max(abs(a[0] - b[0]), abs(a[1] - b[1])) for i, a in enumerate(picks) for b in picks[i + 1 :]]
    assert min(gaps) >= 2 * step


def test_budget_already_used():
    labels = Labels([0, 1], [0, 0], ["none", "vertical"])
    for budget in (1, 2):
        x, y = propose((10, 10), labels, budget=budget)
        assert len(x) == len(y) == 0 and x.dtype == np.int64


# -- midpoints and halving ----------------------------------------------------------------
def test_midpoints_straddle_the_wall_including_diagonals():
    truth = wall_map((20, 30), wall_col=13)
    gx, gy = coarse_grid(truth.shape, 10)  # x = 0, 10, 20; y = 0, 10
    grid = labels_from_truth(truth, gx, gy)
    # Horizontal pairs (10, y)-(20, y) straddle the wall; so do the diagonals
    # (10, 0)-(20, 10) and (20, 0)-(10, 10), whose midpoints coincide at (15, 5).
    expected = {(15, 0), (15, 10), (15, 5)}
    assert boundary_midpoints(grid.to_dict(), 10) == expected
    assert set(positions(*propose(truth.shape, grid, budget=100, step=10))) == expected
    # One domain only: no wall, no midpoints.
    assert boundary_midpoints(labels_from_truth(wall_map(wall_col=0), gx, gy).to_dict(), 10) == set()


def test_midpoint_rounding_is_symmetric():
    # Odd distances: both ends of a pair give one point, strictly between them, on the line.
    for p, q, m in [
        ((0, 0), (5, 0), (2, 0)),
        ((0, 0), (0, 5), (0, 2)),
        ((0, 0), (5, 5), (2, 2)),
        ((5, 0), (0, 5), (3, 2)),  # anti-diagonal: rounded towards the end in the first row
        ((0, 0), (3, 0), (1, 0)),
    ]:
        assert boundary_midpoints({p: "none", q: "vertical"}, 5) == {m}
        assert boundary_midpoints({q: "none", p: "vertical"}, 5) == {m}
    # Too close for the spacing (t <= s / 2) or adjacent: nothing to split at this level.
    assert boundary_midpoints({(0, 0): "none", (2, 0): "vertical"}, 5) == set()
    assert boundary_midpoints({(0, 0): "none", (1, 0): "vertical"}, 2) == set()
    # A labelled point between them means the pair is already split.
    assert boundary_midpoints({(0, 0): "none", (5, 0): "none", (10, 0): "vertical"}, 10) == set()


def test_refinement_spacings_halve_with_ceiling():
    assert refinement_spacings(19) == [19, 10, 5, 3, 2]
    assert refinement_spacings(30) == [30, 15, 8, 4, 2]
    assert refinement_spacings(2) == [2]
    assert refinement_spacings(1) == []


def test_halving_moves_towards_the_wall():
    truth = wall_map((20, 30), wall_col=13)  # the wall lies between columns 12 and 13
    labels = labels_from_truth(truth, *coarse_grid(truth.shape, 10))
    expected_rounds = [
        {(15, 0), (15, 5), (15, 10)},  # spacing 10
        {(12, 0), (12, 2), (13, 7), (12, 10)},  # spacing 5
        {(13, 0), (13, 3), (12, 8), (13, 10)},  # spacing 3
    ]
    gaps, walls = [], []
    for expected in expected_rounds:
        x, y = propose(truth.shape, labels, budget=100, step=10)
        assert set(positions(x, y)) == expected
        # How far each new point is from its nearest labelled one: the spacing being split.
        gap = [min(max(abs(px - qx), abs(py - qy)) for qx, qy in labels.to_dict()) for px, py in zip(x, y)]
        gaps.append(max(gap))
        walls.append(np.abs(x - 12.5).max())
        labels = labels.merged(labels_from_truth(truth, x, y))
    assert gaps == [5, 2, 1]
    assert walls == [2.5, 0.5, 0.5]  # at the wall after two rounds; the third pins its last rows


def test_midpoints_limited_by_budget_spread():
    truth = wall_map((100, 30), wall_col=13)
    labels = labels_from_truth(truth, *coarse_grid(truth.shape, 10))  # 30 labels
    all_mids = positions(*propose(truth.shape, labels, budget=1000, step=10))
    assert len(all_mids) == 19  # 10 rows at x=15 and 9 diagonal crossings between them
    x, y = propose(truth.shape, labels, budget=33, step=10)
    assert len(x) == 3 and set(positions(x, y)) <= set(all_mids)
    assert np.ptp(y) >= 70  # spread along the wall, not bunched at one end
    assert positions(*propose(truth.shape, labels, budget=33, step=10)) == positions(x, y)


# -- the iterative loop -------------------------------------------------------------------
def test_loop_never_exceeds_budget_nor_repeats():
    truth, _ = diagonal_map()
    for budget in (1, 7, 40, 120):
        labels, rounds = run_loop(truth, budget)
        flat = [p for r in rounds for p in r]
        assert len(flat) == len(set(flat)) == len(labels) <= budget
    labels, _ = run_loop(truth, 120)
    assert len(labels) == 120  # a wall this long uses the whole budget


def test_loop_concentrates_on_a_diagonal_wall():
    truth, distance = diagonal_map()
    budget, step = 120, 8
    labels, rounds = run_loop(truth, budget, step=step)
    grid = set(positions(*coarse_grid(truth.shape, step)))
    refined = [p for p in labels.to_dict() if p not in grid]
    assert len(refined) == budget - len(grid)
    rx, ry = np.array(refined).T
    refined_distance = distance[ry, rx].mean()

    random_labels, _ = run_loop(truth, budget, strategy="random", seed=1)
    random_distance = distance[random_labels.y, random_labels.x].mean()
    assert refined_distance < 2.0
    assert refined_distance < 0.2 * random_distance


def test_loop_ends_when_no_wall_is_left():
    truth = wall_map((20, 30), wall_col=13)
    labels, rounds = run_loop(truth, budget=truth.size, step=10)
    assert len(rounds) <= 10
    assert len(labels) < truth.size // 4
    table = labels.to_dict()
    # The wall is pinned to one column step on each grid row.
    for y in (0, 10):
        assert table[(12, y)] == "vertical" and table[(13, y)] == "horizontal"
    # One domain only: the grid and then nothing.
    labels, rounds = run_loop(wall_map(wall_col=0), budget=600, step=10)
    assert len(rounds) == 1 and len(labels) == 6


def test_three_classes():
    yy, xx = np.mgrid[:30, :60]
    truth = np.where(xx < 20, "vertical", np.where(xx < 40, "none", "horizontal"))
    labels, _ = run_loop(truth, budget=truth.size, step=10)
    table = labels.to_dict()
    for y in (0, 10, 20):
        assert table[(19, y)] == "vertical" and table[(20, y)] == "none"
        assert table[(39, y)] == "none" and table[(40, y)] == "horizontal"


# -- random sampling ----------------------------------------------------------------------
def test_random_reproducible_and_seeded():
    labels = Labels([0, 1, 2], [0, 0, 0], ["none", "vertical", "none"])
    a = positions(*propose((20, 30), labels, 40, strategy="random", seed=5))
    b = positions(*propose((20, 30), labels, 40, strategy="random", seed=5))
    c = positions(*propose((20, 30), labels, 40, strategy="random", seed=6))
    assert a == b and set(a) != set(c)
    assert len(a) == 37 and len(set(a)) == 37 and not set(a) & set(labels.to_dict())
    # Asking for more than the scan holds gives every unlabelled position once.
    everything = positions(*propose((3, 4), labels, 100, strategy="random"))
    assert len(everything) == 9 and len(set(everything)) == 9


# -- defaults and bad arguments -----------------------------------------------------------
def test_default_step():
    steps = {budget: default_step(PAPER_SCAN, budget) for budget in (50, 100, 250)}
    assert 18 <= steps[50] <= 20
    assert steps[50] > steps[100] > steps[250] >= 1
    for budget, step in steps.items():
        share = len(coarse_grid(PAPER_SCAN, step)[0]) / budget
        assert 1 / 3 <= share <= 1 / 2, (budget, step, share)
    assert default_step((5, 5), 1) == 5  # a single grid point
    assert default_step((5, 5), 10**6) == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(budget=0), "budget must be at least 1"),
        (dict(budget=10, step=0), "step must be at least 1"),
        (dict(budget=10, strategy="clever"), "unknown sampling strategy 'clever'"),
        (dict(budget=10, labels=Labels([30], [0], ["none"])), "x=30, y=0 is outside the scan (30 columns x 20 rows)"),
        (dict(budget=2.5), "budget must be a whole number"),
        (dict(budget=10, seed=-1), "seed must not be negative"),
    ],
)
def test_bad_arguments(kwargs, message):
    kwargs.setdefault("labels", None)
    with pytest.raises(GhostmapError) as excinfo:
        propose((20, 30), **kwargs)
    assert message in str(excinfo.value)


# -- against the paper's data -------------------------------------------------------------
@needs_paper
def test_paper_scan_loop_has_no_repeats_unlike_the_published_file():
    import yaml
    from scipy import ndimage

    # The authors' published 50-label adaptive file lists positions twice.
    raw = yaml.safe_load((PAPER_LABELS / "paper_data_50_binary_frame_1_labels.yaml").read_text())["labels"]
    names = [entry["file"] for entry in raw]
    assert len(names) == 50 and len(set(names)) < 50

    # A truth map for their scan: every position takes the label of the nearest test label.
    test = import_paper_yaml(PAPER_LABELS / "test_data.yaml", scan_shape=PAPER_SCAN)
    sparse = truth_map(test, PAPER_SCAN)
    _, (iy, ix) = ndimage.distance_transform_edt(sparse == "", return_indices=True)
    truth = sparse[iy, ix]
    assert (truth != "").all() and set(np.unique(truth)) == {"none", "vertical", "horizontal"}

    for budget, step in [(50, 30), (50, None), (100, 10), (250, 6)]:
        labels, rounds = run_loop(truth, budget, step=step)
        flat = [p for r in rounds for p in r]
        assert len(flat) == len(set(flat)) == len(labels) == budget, (budget, step)
        assert len(rounds) >= 2  # the grid, then refinement


# ----------------------------------------------------------------------------- active sampling


def wall_probabilities(truth: np.ndarray, blur: float = 2.0) -> np.ndarray:
    """Probabilities of a model that is sure inside domains and unsure near walls (two classes)."""
    import scipy.ndimage as ndi

    horizontal = ndi.gaussian_filter((truth == "horizontal").astype(float), blur)
    return np.stack([1 - horizontal, horizontal], -1)  # classes (vertical, horizontal)


def test_active_without_model_is_the_adaptive_first_batch():
    truth = wall_map()
    for labels in (None, labels_from_truth(truth, [0, 10], [0, 0])):
        active = positions(*propose(truth.shape, labels, 40, strategy="active", step=5, seed=2))
        adaptive = positions(*propose(truth.shape, labels, 40, strategy="adaptive", step=5, seed=2))
        assert active == adaptive and len(active) > 0
    # too few labels for a model: still the adaptive batch, even with probabilities given
    few = labels_from_truth(truth, [0, 5, 10], [0, 0, 0])
    probs = wall_probabilities(truth)
    assert positions(*propose(truth.shape, few, 40, strategy="active", step=5, model=probs)) == \
        positions(*propose(truth.shape, few, 40, strategy="adaptive", step=5))


def test_active_proposes_uncertain_spread_unlabelled_positions_within_budget():
    from ghostmap.sampling import uncertainty

    truth = wall_map(wall_col=13)
    probs = wall_probabilities(truth)
    gx, gy = coarse_grid(truth.shape, 5)
    labels = labels_from_truth(truth, np.r_[gx, 12, 13], np.r_[gy, 4, 4])  # two labels on the wall itself
    x, y = propose(truth.shape, labels, 60, strategy="active", model=probs, batch=4, min_distance=3)
    got = positions(x, y)
    assert len(got) == 4 and len(set(got)) == 4  # the batch, no repeats
    assert not set(got) & set(labels.to_dict())  # never a labelled position
    assert all(0 <= a < truth.shape[1] and 0 <= b < truth.shape[0] for a, b in got)
    assert got == sorted(got, key=lambda p: (p[1], p[0]))  # reading order
    assert all(abs(a - 12.5) <= 2 for a, _ in got)  # on the wall, where the model is unsure
    assert (uncertainty(probs)[y, x] > 0.5).all()
    # spread: no two closer than the minimum distance
    cheb = np.maximum(np.abs(x[:, None] - x[None]), np.abs(y[:, None] - y[None]))
    assert cheb[~np.eye(len(x), dtype=bool)].min() >= 3
    # never past the budget, header-only when it is spent
    x, y = propose(truth.shape, labels, len(labels) + 3, strategy="active", model=probs, batch=8)
    assert len(x) == 3
    x, y = propose(truth.shape, labels, len(labels), strategy="active", model=probs)
    assert len(x) == 0


def test_active_is_reproducible_and_relaxes_spacing_on_a_small_scan():
    truth = wall_map(shape=(4, 4), wall_col=2)
    probs = wall_probabilities(truth, blur=0.5)
    labels = labels_from_truth(truth, [0, 3, 0, 3], [0, 0, 3, 3])
    a = positions(*propose(truth.shape, labels, 16, strategy="active", model=probs, batch=12, seed=4))
    b = positions(*propose(truth.shape, labels, 16, strategy="active", model=probs, batch=12, seed=4))
    assert a == b and len(a) == 12  # every unlabelled position, the spacing relaxed to fit them


def test_active_refuses_what_does_not_fit():
    truth = wall_map()
    probs = wall_probabilities(truth)
    labels = labels_from_truth(truth, [0, 5, 10, 20], [0, 0, 0, 0])
    with pytest.raises(GhostmapError, match="positions"):
        propose(truth.shape, labels, 40, strategy="active", model=probs[:5])
    with pytest.raises(GhostmapError, match="only the active strategy"):
        propose(truth.shape, labels, 40, strategy="adaptive", model=probs)
    with pytest.raises(GhostmapError, match="batch must be at least 1"):
        propose(truth.shape, labels, 40, strategy="active", model=probs, batch=0)


@pytest.mark.parametrize("strategy", ["adaptive", "random", "active"])
def test_excluded_positions_are_never_proposed_and_the_budget_goes_elsewhere(strategy):
    truth = wall_map()
    probs = wall_probabilities(truth)
    held_out = np.zeros(truth.shape, bool)
    held_out[:, 10:16] = True  # the whole wall, and grid points on it
    held_out[::4, ::3] = True
    labels = Labels.empty()
    budget = 30
    while True:  # the loop a user runs, with the active model's probabilities once labels allow
        model = probs if strategy == "active" and len(labels) >= 4 else None
        x, y = propose(truth.shape, labels, budget, strategy=strategy, step=5, seed=1, model=model,
                       exclude=held_out)
        if len(x) == 0:
            break
        assert not held_out[y, x].any(), "an excluded position proposed"
        labels = labels.merged(labels_from_truth(truth, x, y))
    assert not held_out[labels.y, labels.x].any()
    if strategy != "adaptive":  # adaptive stops once no wall is left to refine outside the exclusion
        assert len(labels) == budget
    # the same positions given as (x, y) arrays
    ys, xs = np.nonzero(held_out)
    assert positions(*propose(truth.shape, None, budget, strategy=strategy, step=5, seed=1, exclude=(xs, ys))) == \
        positions(*propose(truth.shape, None, budget, strategy=strategy, step=5, seed=1, exclude=held_out))


def test_exclusion_that_does_not_fit_the_scan_is_refused():
    truth = wall_map()
    with pytest.raises(GhostmapError, match="exclusion mask has shape"):
        propose(truth.shape, None, 10, exclude=np.zeros((3, 3), bool))
    with pytest.raises(GhostmapError, match="excluded position"):
        propose(truth.shape, None, 10, exclude=(np.array([99]), np.array([0])))
    with pytest.raises(GhostmapError, match="exclude must be"):
        propose(truth.shape, None, 10, exclude=(np.array([1.5]), np.array([0.0])))
    with pytest.raises(GhostmapError, match="2 x and 1 y"):
        propose(truth.shape, None, 10, exclude=([1, 2], [0]))
