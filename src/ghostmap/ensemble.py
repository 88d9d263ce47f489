"""A small ensemble of compact networks in one module, and the temperature that calibrates it.

A few dozen labels cannot pick a checkpoint (a validation split of 4 labels said 100 % for
models that scored 92 % and 97 %), and one network's probabilities are over-confident. An
ensemble answers both: ``K`` compact networks, each trained with a fixed schedule on all
labels but one fold of them (a stratified K-fold split), are averaged. Every label is
trained on by ``K - 1`` members, and each label's held-out prediction by the one member that
never saw it gives an honest cross-validated accuracy and the data to fit a temperature
(Guo et al., 2017) that makes the probabilities mean what they say.

The ``K`` members run as one network: convolutions with ``groups=K`` and a grouped dense
head, so one forward pass computes all of them and the weights sit in one safetensors file.
:meth:`EnsembleNet.forward` returns the members' mean logits divided by the temperature, so
``softmax`` of its output is the ensemble's calibrated probability and every caller that
treats a network's output as logits (prediction, the Dask and LiberTEM paths) works unchanged.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from torch import nn

from .errors import GhostmapError

logger = logging.getLogger(__name__)

__all__ = ["EnsembleNet", "fit_temperature", "neighbour_classes", "overruled_classes", "scan_temperature", "tempered"]


def _stage(cin: int, cout: int, members: int, first: bool = False, stem: str = "pool") -> list[nn.Module]:
    # the first stage reads the input's channels: a plain convolution to K x cout filters is each
    # member's own first convolution; with the "stride" stem it halves the size itself
    stride = 2 if first and stem == "stride" else 1
    conv = nn.Conv2d(cin if first else members * cin, members * cout, 3, stride=stride, padding=1, bias=False,
                     groups=1 if first else members)
    layers = [conv, nn.BatchNorm2d(members * cout), nn.ReLU(inplace=True)]
    return layers if stride == 2 else layers + [nn.MaxPool2d(2)]


class EnsembleNet(nn.Module):
    """``members`` compact networks (see :class:`ghostmap.model.CompactNet`) computed side by side.

    Parameters
    ----------
    n_classes : int
        Outputs per member.
    input_shape : tuple of int
        (h, w) of the network input; any size works (adaptive pooling before the head).
    members : int
        Networks in the ensemble.
    width : int
        Channels of each member's first stage (the compact network's 8).
    stem : str, optional
        Each member's first stage, as the compact network's (:func:`ghostmap.model.stem_layers`).
    channels : int, optional
        Of the input (:attr:`ghostmap.preprocessing.Preprocessing.channels`).

    Example
    -------
    >>> net = EnsembleNet(3, (64, 64), members=4)
    >>> net.member_logits(torch.zeros(2, 1, 64, 64)).shape
    torch.Size([2, 4, 3])
    """

    def __init__(self, n_classes: int, input_shape: tuple[int, int], members: int = 4, width: int = 8,
                 stem: str = "pool", channels: int = 1):
        super().__init__()
        from .model import STEMS

        if members < 1:
            raise ValueError(f"an ensemble needs at least one member, got {members}")
        self.stem = stem
        if stem not in STEMS:
            raise GhostmapError(f"unknown stem '{stem}'; choose one of {', '.join(STEMS)}")
        k = self.members = int(members)
        self.n_classes = int(n_classes)
        c1, c2, c3, c4 = width, 2 * width, 4 * width, 4 * width
        self.c4 = c4
        self.features = nn.Sequential(
            *_stage(channels, c1, k, first=True, stem=stem), *_stage(c1, c2, k), *_stage(c2, c3, k),
            nn.Conv2d(k * c3, k * c4, 3, padding=1, bias=False, groups=k), nn.BatchNorm2d(k * c4),
            nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(4),
        )
        # each member's dense head (c4 x 4 x 4 -> 64 -> classes) as grouped 1 x 1 convolutions
        self.head = nn.Sequential(
            nn.Dropout(0.2), nn.Conv1d(k * c4 * 16, k * 64, 1, groups=k), nn.ReLU(inplace=True),
            nn.Conv1d(k * 64, k * n_classes, 1, groups=k),
        )
        self.register_buffer("temperature", torch.ones(()))

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Uncalibrated logits of every member, (N, members, classes)."""
        f = self.features(x)  # (N, K * c4, 4, 4), member k's channels contiguous
        f = f.reshape(f.shape[0], self.members * self.c4 * 16, 1)
        return self.head(f).reshape(-1, self.members, self.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The members' mean logits divided by the temperature, (N, classes).

        Logits are averaged rather than probabilities: the mean of probabilities is less sure
        than any member wherever members disagree, so a temperature fitted to single members'
        held-out logits would leave it under-confident; the mean logit keeps their scale.
        """
        return self.member_logits(x).mean(1) / self.temperature


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, low: float = 0.25, high: float = 8.0) -> float:
    """The temperature ``T`` that minimises the negative log-likelihood of ``softmax(logits / T)``.

    A one-dimensional search over ``log T`` (a fine grid, then golden-section refinement),
    bounded to [``low``, ``high``] so a handful of held-out labels cannot drive it to an
    extreme. Dividing logits by a positive ``T`` never changes which class wins.

    Parameters
    ----------
    logits : torch.Tensor
        Held-out logits (N, C).
    targets : torch.Tensor
        True class indices (N,).

    Returns
    -------
    float
        The fitted temperature (1.0 when there is nothing to fit).

    Example
    -------
    >>> fit_temperature(torch.tensor([[4.0, 0.0], [4.0, 0.0]]), torch.tensor([0, 1])) > 1
    True
    """
    logits = torch.as_tensor(logits, dtype=torch.float64)
    targets = torch.as_tensor(targets, dtype=torch.long)
    if logits.shape[0] == 0:
        return 1.0

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits / math.exp(log_t), targets))

    grid = np.linspace(math.log(low), math.log(high), 81)
    values = [nll(v) for v in grid]
    i = int(np.argmin(values))
    a, b = grid[max(0, i - 1)], grid[min(len(grid) - 1, i + 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if nll(c) < nll(d):
            b = d
        else:
            a = c
    return float(math.exp((a + b) / 2))


def neighbour_classes(classes: np.ndarray, n_classes: int, radius: int = 1, own_vote: bool = True) -> np.ndarray:
    """The class most often predicted in each position's window: a majority filter of the map.

    The window is (2 ``radius`` + 1) positions square, cut at the scan's edges (never wrapped);
    with ``own_vote`` the position votes too, without it only its neighbours do. Ties go to the
    lower class index.

    Parameters
    ----------
    classes : numpy.ndarray
        Predicted class index per scan position, (rows, cols).
    n_classes : int
        Number of classes.
    radius : int
        Half-width of the window, scan positions (1: 3 x 3).
    own_vote : bool
        Whether the position's own class is one of the votes.

    Returns
    -------
    numpy.ndarray
        (rows, cols) class indices.

    Example
    -------
    >>> int(neighbour_classes(np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]]), 2)[1, 1])
    0
    """
    classes = np.asarray(classes)
    size = 2 * int(radius) + 1
    votes = np.stack([ndi.uniform_filter((classes == k).astype(np.float64), size, mode="constant", cval=0.0)
                      for k in range(n_classes)], axis=-1) * size * size
    if not own_vote:
        votes -= np.eye(n_classes)[classes]
    return votes.round().argmax(-1)


def overruled_classes(classes: np.ndarray, n_classes: int, at_least: int = 6) -> np.ndarray:
    """A stricter stand-in than :func:`neighbour_classes`: a position's own class, changed to the
    class most of its 8 neighbours share only where at least ``at_least`` of them do (counted out
    of 8, scaled to the neighbours inside the scan at its edges).

    A wall two positions wide keeps its class, as does one a position wide between two different
    domains; a lone position inside a domain does not.

    Parameters
    ----------
    classes : numpy.ndarray
        Predicted class index per scan position, (rows, cols).
    n_classes : int
        Number of classes.
    at_least : int
        Neighbours (of 8) that must share another class to overrule the position's own.

    Returns
    -------
    numpy.ndarray
        (rows, cols) class indices.

    Example
    -------
    >>> c = np.zeros((3, 5), int); c[:, 1:3] = 1  # a wall two positions wide
    >>> overruled_classes(c, 2).tolist() == c.tolist()
    True
    >>> c[:, 1:3] = 0; c[1, 2] = 1  # a lone position
    >>> int(overruled_classes(c, 2)[1, 2])
    0
    """
    classes = np.asarray(classes)
    rows, cols = classes.shape
    padded = np.pad(classes, 1, constant_values=-1)
    counts = np.zeros((rows, cols, n_classes), int)
    present = np.zeros((rows, cols), int)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if dr or dc:
                neighbour = padded[1 + dr : 1 + dr + rows, 1 + dc : 1 + dc + cols]
                present += neighbour >= 0
                counts += neighbour[..., None] == np.arange(n_classes)
    best, top = counts.argmax(-1), counts.max(-1)
    flip = (best != classes) & (top >= np.ceil(at_least / 8 * present))
    return np.where(flip, best, classes)


def scan_temperature(probabilities: np.ndarray, radius: int = 1, shrink: float = 1.0, own_vote: bool = True,
                     at_least: int | None = None) -> float:
    """A temperature for a network's probabilities over a whole scan, with no held-out labels:
    fitted to the class the map's majority filter gives each position.

    Polarization domains span many scan positions, so the class most positions of a small
    window are predicted to have (:func:`neighbour_classes`) stands in for a position's true
    class, and :func:`fit_temperature` fits the temperature ``T_fit`` that makes
    ``softmax(log p / T)`` predict it best; the temperature returned is ``T_fit ** shrink``.
    The window must not outvote what the network gets right: a wall is a few positions wide,
    and a network that sees each position's own pattern resolves it. On 15 trainings of Table 1's
    scan 1 (25 and 50 labels, 96.4-99.1% right), a 5 x 5 window of neighbours only, its fitted
    temperature square-rooted, agreed with the network on 96-97.5% of positions, wrongly flagging
    walls: calibration error 0.0210 on average (0.042 at worst). The 3 x 3 window with the
    position's own vote, unshrunk (the default): 0.0113 (0.024), against 0.0040 for the best
    temperature in hindsight (BENCHMARKS.md, issue 12, session 8).

    Parameters
    ----------
    probabilities : numpy.ndarray
        (rows, cols, classes) probabilities at temperature 1 (softmax of the logits).
    radius : int
        Half-width of the window, scan positions (1: 3 x 3 positions).
    shrink : float
        Exponent applied to the fitted temperature (1: as fitted, 0: always 1).
    own_vote : bool
        Whether a position's own class votes in its window.
    at_least : int, optional
        Use :func:`overruled_classes` with this many neighbours as the stand-in instead of the
        majority filter (``radius`` and ``own_vote`` then do not apply): for a model that resolves
        walls (an ensemble), whose thin walls the majority vote would count as errors.

    Returns
    -------
    float
        The temperature to divide the logits by (1.0 for a scan with fewer than 2 positions).

    Example
    -------
    >>> p = np.tile([0.7, 0.3], (6, 6, 1))  # every position 'class 0' at 70 %, all neighbours agree
    >>> scan_temperature(p, radius=1) < 1
    True
    """
    p = np.asarray(probabilities, np.float64)
    rows, cols, n_classes = p.shape
    if rows * cols < 2:
        return 1.0
    stand_in = (neighbour_classes(p.argmax(-1), n_classes, radius, own_vote) if at_least is None
                else overruled_classes(p.argmax(-1), n_classes, at_least))
    log_p = torch.log(torch.as_tensor(p.reshape(-1, n_classes)).clamp_min(1e-30))
    return fit_temperature(log_p, torch.as_tensor(stand_in.reshape(-1))) ** float(shrink)


def tempered(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities at temperature 1 as the same network gives them at ``temperature``:
    ``softmax(log p / T)``, the winning class unchanged (float32, same shape).

    Example
    -------
    >>> tempered(np.array([[0.8, 0.2]]), 0.5).round(3)
    array([[0.941, 0.059]], dtype=float32)
    """
    log_p = np.log(np.clip(np.asarray(probabilities, np.float64), 1e-30, None)) / float(temperature)
    log_p -= log_p.max(-1, keepdims=True)
    p = np.exp(log_p)
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)
