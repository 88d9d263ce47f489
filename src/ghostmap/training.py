"""Train a classifier on a few dozen labelled patterns.

The optimiser follows the paper (AdamW, weight decay 2e-3, betas 0.9/0.999, cross-entropy)
and mends what made the authors' own code collapse on realistic data. With a few dozen labels
a held-out split of 4-10 of them cannot choose a checkpoint (with the same 25 labels, five
training seeds of that recipe scored 63-97 %), and the labels it holds out are never learnt from. So the compact
network (the default) trains on **every** label with a fixed warm-up + cosine schedule and
keeps its final weights; a network that does not fit its own labels is trained again from a
fresh start derived from the seed. The paper's network keeps the paper's recipe (stratified
80:20 split, reduce-on-plateau with a floor, the checkpoint with the lowest validation loss).

Augmentation respects the physics: flipping a pattern keeps its class, and transposing
it swaps horizontal and vertical polarization. Sub-pixel shifts (descan drift) and intensity
exponents (thickness) change every pattern in ways no class explains: few labels often share
a scan row, and so a drift or thickness the network would otherwise learn as the class.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .ensemble import EnsembleNet, fit_temperature
from .errors import GhostmapError
from .labels import Labels, check_in_scan, class_order, read_labels, require_trainable
from .model import CompactNet, Model, build_network, pick_device
from .preprocessing import Preprocessing, fit_preprocessing, preprocess_positions
from .reading import as_scan

logger = logging.getLogger(__name__)

# Weights and batches in channels-last order: a training step of the compact network at 128 x 128
# (batch 16) took 27-36 ms against 45 ms on the CPU (BENCHMARKS.md).
CHANNELS_LAST = torch.channels_last

# Positions whose inputs give the int8 graph its ranges: up to this many labelled ones and as
# many drawn at random from the rest of the scan. ONNX Runtime keeps every example's activations
# while it takes the ranges (about 1 MB each at 128 x 128), so they are capped. On the paper-size
# scan 50 labelled and 64 random positions gave the same labels as float32 at every position
# (BENCHMARKS.md, seventh round).
EXAMPLE_POSITIONS = 64
#: Class weightings of the compact network's loss (:func:`loss_for`): the inverse of each class's
#: share of the labels, its square root, or none.
CLASS_WEIGHTS = ("balanced", "sqrt", "none")
#: An ensemble on every label is calibrated on its scan with :func:`ghostmap.ensemble.overruled_classes`
#: (a position's class overruled by 6 of its 8 neighbours) as the stand-in truth: it resolves walls,
#: which the single network's 3 x 3 majority vote would count as errors (BENCHMARKS.md, session 12).
ENSEMBLE_OVERRULED_BY = 6


@dataclass
class TrainingOptions:
    """Knobs of :func:`train`; the defaults are the paper's optimiser settings.

    Parameters
    ----------
    arch : str
        ``"compact"`` (the default, 128 px input) or ``"paper"`` (the paper's network).
    epochs : int, optional
        Training epochs; None gives enough for about 1,500 optimiser steps, within 60-400.
    batch_size : int
        Labelled patterns per optimiser step.
    lr : float, optional
        Peak learning rate; None: 4e-4 for the paper network, 1e-3 for compact.
    weight_decay : float
        AdamW weight decay.
    min_lr : float
        Floor of the learning-rate schedule.
    patience : int
        Epochs without improvement before the plateau schedule lowers the rate.
    schedule : str, optional
        ``"plateau"`` (the paper's) or ``"cosine"``; None: plateau for paper, cosine otherwise.
    plateau_factor : float
        Factor the plateau schedule multiplies the rate by.
    val_fraction : float
        Share of the labels held out to choose the checkpoint (``checkpoint="best"`` only).
    augment : bool
        Random detector flips, and transposes that swap horizontal and vertical; with it,
        ``shift`` and ``power``.
    seed : int
        Seed of the split, the initial weights and the augmentation.
    device : str, optional
        ``"cpu"``, ``"cuda"`` ...; None: CUDA when present, else the CPU.
    members : int
        Compact network only: an ensemble of this many networks (see ``ensemble``); 1 (the
        default) trains one network. Four members cost about 4x the training time, and
        ``predict`` runs them all.
    checkpoint : str, optional
        One network: ``"final"`` (the compact network's default) trains on every label and
        keeps the final weights; ``"best"`` (the paper network's) holds out ``val_fraction``
        and keeps the checkpoint with the lowest loss on it.
    refits : int
        ``"final"``: trainings again from a fresh start when a network gets fewer than
        ``min_fit`` of its own labels right or predicts one class for all; the best fit is kept.
    min_fit : float
        ``"final"``: the share of its own labels a network must fit.
    shift : float, optional
        Augmentation: random sub-pixel shifts of up to this many pixels of a 128-px network
        input (scaled with the input's size, none below 128 px: see :func:`input_shift`); None: 1.0
        for the compact network, 0 for the paper's.
    power : float, optional
        Augmentation: random intensity exponents within 1 +- power; None: 0.2 for the
        compact network, 0 for the paper's.
    clean_tail : float
        ``"final"``: share of the last epochs trained without ``shift`` and ``power``.
    calibration : str, optional
        One compact network: how its probabilities are calibrated (a temperature, which never
        changes the winning class). ``"scan"`` classifies the training scan and fits the
        temperature to the class each position's neighbours are predicted to be
        (:func:`ghostmap.ensemble.scan_temperature`); ``"none"``. None: ``"scan"`` for the
        compact network, ``"none"`` for the paper's.
    class_weights : str, optional
        ``"final"``: ``"balanced"`` weights each class's cross-entropy by the inverse of its share
        of the labels, ``"sqrt"`` by the square root of that, ``"none"`` not; None: balanced for
        the compact network, none for the paper's. With the adaptive grid's labels (11 of 25 on one
        row of ``none``) the unweighted loss let one training seed in five call 22% of the vertical
        domain ``none`` on an untuned scan (90.0% against 96.7% balanced). With 50 actively
        sampled labels (about 60% of them ``none``, on walls) balanced weights let the network
        call 1-9 of its own labels another class (mean 5.1 over 10 runs), sqrt 1-5 on the same
        labels (2.3); in the whole sampling loop sqrt was 0.5-0.7 points more right at 50 labels,
        with a larger calibration error (BENCHMARKS.md, session 11). An ensemble weights as one
        network does; unweighted, it was the most accurate on wall-heavy active labels, but with the
        benchmark's 50 adaptive labels (7 of them ``none``) it called 35% of the ``none`` positions
        polar (session 12).

    ensemble : str
        ``members > 1``: ``"all"`` (the default) trains every member on every label with one
        network's recipe, each from its own initial weights, and calibrates the mean logit on the
        scan (a stricter stand-in truth than one network's: :data:`ENSEMBLE_OVERRULED_BY`);
        ``"folds"`` trains each member on all labels but one stratified fold and fits the
        temperature to the out-of-fold logits (which also gives a cross-validated accuracy). With
        the 50 actively sampled labels of 10 Table 1 runs, ``"all"`` with ``class_weights="none"``
        got 99.0-99.9% of the test positions right (one network: 97.0-99.0%); with the balanced
        default 97.4-98.8% over seeds 0-2 (BENCHMARKS.md, issue 12, session 12).
    stem : str
        Compact network: its first stage. ``"pool"`` (the default) is a convolution at the input's
        full size and a 2 x 2 max-pool; ``"stride"`` a stride-2 convolution. At 128 px the stride
        stem's network is 1.7 x faster on the CPU (0.26 against 0.44 ms a pattern) and ``predict``
        about 1.3 x, but it learnt less from few labels: a median of 96.2% against 97.3% over 5
        seeds with 25 actively sampled labels, 97.4 +- 0.5% against 97.6 +- 0.5% with 25 fixed ones
        over three scans, and far less on 32 px patterns (BENCHMARKS.md, issue 13's fourth round).

    Examples
    --------
    >>> options = TrainingOptions(epochs=30, seed=1)
    >>> options.arch, options.members
    ('compact', 1)
    """

    arch: str = "compact"
    epochs: int | None = None  # None: enough for about 1,500 optimiser steps, within 60-400 epochs
    batch_size: int = 16
    lr: float | None = None  # None: the paper's 4e-4 for the paper network, 1e-3 for compact
    weight_decay: float = 2e-3
    min_lr: float = 3e-5
    patience: int = 2
    schedule: str | None = None  # "plateau" (the paper's) or "cosine"; None: plateau for paper, cosine otherwise
    plateau_factor: float = 0.5
    val_fraction: float = 0.2
    augment: bool = True
    seed: int = 0
    device: str | None = None
    # compact network: an ensemble of this many (see ensemble); 1 (the default) = one network.
    # Not the default: 4 members cost about 4x the training time and the network's share of predict
    members: int = 1
    # one network: "final" weights of the fixed schedule on all labels (compact's default) or the "best"
    # checkpoint on a held-out split (the paper's; plateau schedule); None: by architecture
    checkpoint: str | None = None
    refits: int = 2  # "final": trainings again from a fresh start when a network does not fit its labels
    min_fit: float = 0.75  # "final": the share of its own labels a network must get right
    # augmentation: random sub-pixel shifts up to this many input pixels (descan drift) and intensity
    # exponents within 1 +- power (thickness); None: 1.0 and 0.2 for compact, none for paper
    shift: float | None = None
    power: float | None = None
    clean_tail: float = 0.15  # "final": share of the last epochs trained without shift and power
    # one compact network: "scan" (temperature from the training scan's neighbour consistency) or "none";
    # None: scan for compact, none for paper
    calibration: str | None = None
    # "final": "balanced" (cross-entropy weighted by inverse class frequency), "sqrt" (its square root) or
    # "none"; None: balanced for compact, none for paper
    class_weights: str | None = None
    # compact network: its first stage, "pool" (convolution at full size, then max-pool) or "stride"
    # (a stride-2 convolution: a faster network that learnt less from few labels)
    stem: str = "pool"
    # members > 1: "all" (every member on every label, temperature fitted on the scan) or "folds"
    # (each member on all labels but one fold, temperature from the held-out folds)
    ensemble: str = "all"


def stratified_split(y: np.ndarray, val_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices with every class represented in both where it can be.

    A class with a single label stays in training: every label counts.
    """
    train, val = [], []
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        n_val = int(round(val_fraction * len(idx)))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        else:
            n_val = 0
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return np.sort(np.array(train, int)), np.sort(np.array(val, int))


def swap_pairs(classes: tuple[str, ...]) -> torch.Tensor | None:
    """Class index after transposing a pattern, or None if transposing doesn't map classes."""
    if "horizontal" not in classes or "vertical" not in classes:
        return None
    mapping = list(range(len(classes)))
    h, v = classes.index("horizontal"), classes.index("vertical")
    mapping[h], mapping[v] = v, h
    return torch.tensor(mapping)


def augment_batch(x: torch.Tensor, y: torch.Tensor, swap: torch.Tensor | None, gen: torch.Generator):
    """Random flips of both detector axes, and transposes that swap horizontal and vertical.

    Only the drawn patterns are flipped, in a copy of ``x``: half the work of flipping every
    pattern and choosing, with the same result.
    """
    n = x.shape[0]
    flip_r = torch.rand(n, generator=gen) < 0.5
    flip_c = torch.rand(n, generator=gen) < 0.5
    x = x.clone()
    x[flip_r] = x[flip_r].flip(2)
    x[flip_c] = x[flip_c].flip(3)
    if swap is not None and x.shape[2] == x.shape[3]:
        tr = torch.rand(n, generator=gen) < 0.5
        x[tr] = x[tr].transpose(2, 3)
        y = torch.where(tr, swap[y], y)
    return x, y


def nuisance_batch(x: torch.Tensor, shift: float, power: float, gen: torch.Generator) -> torch.Tensor:
    """Patterns as a drifting beam and a changing thickness would make them: what no label should explain.

    Each pattern is moved by a random sub-pixel shift of up to ``shift`` input pixels in each
    direction (descan drift; bilinear, edges repeated) and its intensities are raised to a
    random power within ``1 +- power`` (thickness moves counts between the central disk and
    the scattering), then standardised again. Neither changes the ghost-disk geometry that
    tells the classes apart.

    Parameters
    ----------
    x : torch.Tensor
        Network inputs (n, channels, h, w), each channel standardised per pattern; every
        channel of a pattern gets the same shift and power.
    shift : float
        Largest shift, input pixels (0: none).
    power : float
        Largest change of the intensity exponent (0: none).
    gen : torch.Generator
        The random source.

    Returns
    -------
    torch.Tensor
        The altered inputs, same shape.

    Example
    -------
    >>> x = torch.randn(4, 1, 16, 16)
    >>> nuisance_batch(x, 0.5, 0.1, torch.Generator().manual_seed(0)).shape
    torch.Size([4, 1, 16, 16])
    """
    n, c, h, w = x.shape
    if power:
        low = x.amin(dim=(2, 3), keepdim=True)
        exponent = 1 + power * (2 * torch.rand(n, 1, 1, 1, generator=gen) - 1)
        x = (x - low).clamp_min_(0).pow_(exponent)
        flat = x.reshape(n, c, -1)
        mean, std = flat.mean(2).view(n, c, 1, 1), flat.std(2).clamp_min(1e-6).view(n, c, 1, 1)
        x = x.sub_(mean).div_(std)
    if shift:
        move = shift * (2 * torch.rand(n, 2, generator=gen) - 1)  # (dy, dx) in input pixels
        # grid coordinates span 2 over the width; x first, as grid_sample reads them
        offset = torch.stack([2 * move[:, 1] / w, 2 * move[:, 0] / h], 1).to(x.device, x.dtype)
        grid = identity_grid(h, w, x.dtype, x.device) + offset.view(n, 1, 1, 2)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return x


@functools.lru_cache(maxsize=8)
def identity_grid(h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The sampling grid (h, w, 2) that ``F.affine_grid`` makes for the identity (``align_corners=False``),
    to which a pure shift only adds: the same coordinates without a matrix product per pattern."""
    rows = torch.linspace(-1, 1, h, dtype=dtype, device=device) * (h - 1) / h
    cols = torch.linspace(-1, 1, w, dtype=dtype, device=device) * (w - 1) / w
    return torch.stack(torch.broadcast_tensors(cols.view(1, w), rows.view(h, 1)), -1)


def input_shift(shift: float, input_shape) -> float:
    """The drift augmentation's largest shift in pixels of this input: ``shift`` is given for a 128-px
    input (a 512-px detector binned by 4) and scales with the input's size; none below 128 px.

    The bilinear shift smooths the noise of every training pattern. At 128 px that helped
    (25 labels, 5 seeds: 97.7-98.8% on the test positions against 92.1-98.1% with a Fourier
    shift that keeps the noise); on a 32-px, low-dose scan it cost 25 points (60% against 85%)
    and on the tutorial's 64-px scan 2 (89.2% against 91.3%, one seed).

    Example
    -------
    >>> input_shift(1.0, (128, 128)), input_shift(1.0, (256, 128)), input_shift(1.0, (64, 64))
    (1.0, 2.0, 0.0)
    """
    side = max(int(n) for n in input_shape)
    return 0.0 if side < 128 else float(shift) * side / 128


def nuisance_of(options: TrainingOptions) -> tuple[float, float]:
    """(shift, power) of the drift and thickness augmentation: the options', else 1.0 and 0.2 for the
    compact network and none for the paper's (which keeps the paper's recipe)."""
    compact = options.arch == "compact"
    shift = options.shift if options.shift is not None else (1.0 if compact else 0.0)
    power = options.power if options.power is not None else (0.2 if compact else 0.0)
    return float(shift), float(power)


def one_cycle(total_steps: int, floor: float, warmup: float = 0.1) -> Callable[[int], float]:
    """Learning-rate factor per step: a linear warm-up, then a cosine decay down to ``floor``."""
    ramp = max(1, int(round(warmup * total_steps)))
    decay = max(1, total_steps - ramp)

    def factor(step: int) -> float:
        if step < ramp:
            return (step + 1) / ramp
        t = min(1.0, (step - ramp) / decay)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


def default_epochs(n_train: int, batch_size: int) -> int:
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    return int(min(400, max(60, round(1500 / steps_per_epoch))))


def default_input_size(arch: str) -> int:
    """Binning target: the paper bins 512 -> 256; the compact network reads 128 x 128, which
    measured as accurate on the simulated 512 x 512 scan at a quarter of the cost."""
    return 256 if arch == "paper" else 128


def training_preprocessing(scan, arch: str = "compact", **options) -> Preprocessing:
    """The preprocessing ``ghostmap train`` fits: ``options`` over the defaults for ``arch``.

    The one place the training input size is chosen, so the command line, the label page's
    preview and the Python API fit identical models from identical labels.

    Example
    -------
    >>> prep = training_preprocessing(scan)  # doctest: +SKIP
    >>> prep.output_shape(scan.detector_shape)  # doctest: +SKIP
    (128, 128)
    """
    options = {k: v for k, v in options.items() if v is not None}
    options.setdefault("target_size", default_input_size(arch))
    options.setdefault("own_pattern", arch == "compact" and int(options.get("pool", Preprocessing.pool)) > 1)
    return fit_preprocessing(as_scan(scan), **options)


def train(
    scan,
    labels: Labels,
    options: TrainingOptions | None = None,
    preprocessing: Preprocessing | None = None,
    progress: Callable[[int, int, dict], None] | None = None,
    int8_examples: bool = True,
) -> Model:
    """Fit a classifier to ``labels`` on ``scan`` and return it with its training metrics.

    By default one compact network is trained on every label with a fixed schedule and its final
    weights kept, then calibrated on the scan. With ``options.members > 1`` the model is an
    ensemble (:mod:`ghostmap.ensemble`) of that many, trained as ``options.ensemble`` says. With
    the paper's network one network is trained on a stratified 80 % and the checkpoint with the
    lowest loss on the other 20 % is kept, as in the paper.

    Parameters
    ----------
    scan
        Anything :func:`ghostmap.reading.as_scan` takes (a path, a NumPy array, an h5py
        dataset, a hyperspy or py4DSTEM object).
    labels : Labels or path
        At least 4 labels in at least two classes, inside the scan.
    options : TrainingOptions, optional
        Network, schedule and seed; the defaults are ``ghostmap train``'s.
    preprocessing : Preprocessing, optional
        Default: :func:`training_preprocessing` for the scan and architecture.
    progress : callable, optional
        ``progress(epoch, epochs, stats)``, called after every epoch.
    int8_examples : bool
        Read the positions the int8 graph is calibrated on (``model.sample_inputs``, about
        0.7 s on a 512 px detector), which :meth:`Model.save` needs to write that graph. A
        caller that never saves the model (the label page's preview) passes False.

    Returns
    -------
    Model
        The trained model; ``model.metrics`` holds the training figures, and
        ``model.scan_prediction`` the scan's classification where the compact network was
        calibrated on it.

    Raises
    ------
    GhostmapError
        Fewer than 4 labels or fewer than two classes, a label outside the scan, a
        preprocessing fitted for another detector, or an unknown device or option.

    Examples
    --------
    A few epochs on a tiny simulated scan, to keep the example quick:

    >>> import numpy as np
    >>> import ghostmap as gm
    >>> data, truth = gm.simulate_scan((6, 8), detector=32, seed=0)
    >>> ys, xs = np.divmod(np.arange(0, 48, 3), 8)
    >>> labels = gm.labels_from_truth(truth, xs, ys)
    >>> model = gm.train(data, labels, gm.TrainingOptions(epochs=2, device="cpu"))
    >>> sorted(model.classes) == sorted(set(labels.label))
    True
    """
    options = options or TrainingOptions()
    scan = as_scan(scan)
    labels = checked_labels(scan, labels)
    classes = class_order(labels.label)
    prep = preprocessing or training_preprocessing(scan, options.arch)
    prep.check_detector(scan.detector_shape)
    torch.manual_seed(options.seed)
    inputs = preprocess_positions(scan, labels.y, labels.x, prep)
    targets = torch.as_tensor([classes.index(str(name)) for name in labels.label])
    members = ensemble_members(options, len(labels))
    start = time.perf_counter()
    if members > 1 and options.ensemble == "all":
        network, metrics = fit_ensemble_on_all(inputs, targets, classes, members, options, progress)
    elif members > 1:
        network, metrics = fit_ensemble(inputs, targets, classes, members, options, progress)
    else:
        network, metrics = fit_single(inputs, targets, classes, options, progress)
        metrics["class_weights"] = class_weighting(options)
    network.eval().cpu()
    metrics.update(label_fit_metrics(network, inputs, targets, classes))
    # only one compact network gets an int8 graph (Model.save): no examples read for the others
    examples = (example_inputs(scan, labels, prep, inputs, options.seed)
                if int8_examples and isinstance(network, CompactNet) else None)
    model = Model(network, classes, options.arch, prep, tuple(scan.detector_shape), metrics, sample_inputs=examples)
    if members == 1 and calibration_of(options) == "scan":
        metrics.update(calibrate_on_scan(scan, model, options.device))
    elif options.ensemble == "all" and calibration_of(options) == "scan":
        metrics.update(calibrate_on_scan(scan, model, options.device, at_least=ENSEMBLE_OVERRULED_BY))
    metrics.update(n_labels=int(len(labels)), seconds=round(time.perf_counter() - start, 2), seed=options.seed,
                   augment=options.augment)
    if metrics["collapsed"]:
        logger.info("the model predicts '%s' for every labelled pattern", metrics["predicted_classes"][0])
    return model


def example_inputs(scan, labels: Labels, prep: Preprocessing, labelled: torch.Tensor, seed: int = 0,
                   others: int = EXAMPLE_POSITIONS) -> np.ndarray:
    """Network inputs (n, channels, h, w) of up to ``others`` labelled positions (``labelled``,
    the inputs of ``labels`` in order) and of up to ``others`` more drawn at random from the rest
    of the scan: what the int8 graph's ranges are taken from
    (:attr:`ghostmap.model.Model.sample_inputs`), so that they cover the scan, not only the labels."""
    rng = np.random.default_rng(seed)
    n_rows, n_cols = scan.scan_shape
    taken = np.zeros(n_rows * n_cols, bool)
    taken[np.asarray(labels.y, int) * n_cols + np.asarray(labels.x, int)] = True
    free = np.flatnonzero(~taken)
    drawn = np.sort(rng.choice(free, min(others, free.size), replace=False))
    more = preprocess_positions(scan, drawn // n_cols, drawn % n_cols, prep)
    kept = np.sort(rng.choice(len(labelled), min(others, len(labelled)), replace=False))
    return torch.cat([labelled.cpu()[torch.from_numpy(kept)], more]).numpy().astype(np.float32, copy=False)


def calibration_of(options: TrainingOptions) -> str:
    """How one network's probabilities are calibrated: the option's, else ``"scan"`` for the compact network."""
    calibration = options.calibration or ("scan" if options.arch == "compact" else "none")
    if calibration not in ("scan", "none"):
        raise GhostmapError(f"unknown calibration '{calibration}'; choose scan or none")
    if calibration != "none" and options.arch != "compact":
        raise GhostmapError(f"calibration '{calibration}' is for the compact network; the paper's keeps none")
    return calibration


def calibrate_on_scan(scan, model: Model, device=None, at_least: int | None = None) -> dict:
    """Classify the training scan with ``model`` (temperature 1) and set the temperature that
    :func:`ghostmap.ensemble.scan_temperature` fits; returns the metrics that describe it, and
    keeps the scan's classification at that temperature as ``model.scan_prediction``.

    No label is held out for this: the stand-in truth is the class most of each position's
    3 x 3 window (itself included) is predicted to be, which holds wherever domains span several
    positions; with ``at_least`` (an ensemble, which resolves walls) a position's own class,
    overruled only where that many of its 8 neighbours share another
    (:func:`ghostmap.ensemble.overruled_classes`).
    """
    from .ensemble import neighbour_classes, scan_temperature, tempered
    from .runtime import predict_in_process

    model.network.temperature.fill_(1.0)
    result = predict_in_process(scan, model, device)  # ONNX Runtime on the CPU
    probabilities = result.probabilities
    temperature = round(scan_temperature(probabilities, at_least=at_least), 4)
    model.network.temperature.fill_(temperature)
    model.scan_prediction = replace(result, probabilities=tempered(probabilities, temperature))
    classes = probabilities.argmax(-1)
    agreement = float((neighbour_classes(classes, probabilities.shape[-1]) == classes).mean())
    logger.info("calibration on the scan: temperature %.2f (%.1f%% of positions agree with their 3 x 3 window)",
                temperature, 100 * agreement)
    stand_in = ("the majority class of each position's 3 x 3 window, itself included" if at_least is None else
                f"each position's own class, overruled where {at_least} of its 8 neighbours share another")
    return {"temperature": temperature, "neighbour_agreement": round(agreement, 4),
            "calibration": f"temperature fitted on the training scan to {stand_in} (no label held out)"}


def checked_labels(scan, labels) -> Labels:
    """``labels`` (a :class:`Labels` or a label file) once checked trainable and inside ``scan``."""
    if not isinstance(labels, Labels):
        labels = read_labels(labels, scan_shape=scan.scan_shape)
    require_trainable(labels, "the labels")
    if len(labels) < 4:
        raise GhostmapError(f"only {len(labels)} labels; training needs at least 4")
    check_in_scan(labels.x, labels.y, scan.scan_shape, what="label at")
    return labels


ENSEMBLES = ("all", "folds")


def ensemble_members(options: TrainingOptions, n_labels: int) -> int:
    """Networks in the model: ``options.members`` for the compact network (at most one per label), else 1."""
    if options.members < 1:
        raise GhostmapError(f"members must be at least 1, got {options.members}")
    if options.ensemble not in ENSEMBLES:
        raise GhostmapError(f"unknown ensemble '{options.ensemble}'; choose {' or '.join(ENSEMBLES)}")
    if options.arch != "compact":
        return 1
    return int(min(options.members, n_labels))


def stratified_folds(y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Fold index (0 .. k-1) of every label: each class dealt round the folds in a random order.

    Consecutive classes continue where the previous one stopped, so folds differ in size by
    at most one label.

    Example
    -------
    >>> np.bincount(stratified_folds(np.array([0, 0, 0, 1, 1, 1, 1]), 3, np.random.default_rng(0)))
    array([3, 2, 2])
    """
    folds = np.empty(len(y), np.int64)
    offset = 0
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        folds[idx] = (offset + np.arange(len(idx))) % k
        offset += len(idx)
    return folds


def make_optimiser(network: torch.nn.Module, options: TrainingOptions, n_train: int, epochs: int, schedule: str):
    """AdamW with the paper's betas and weight decay, and its learning-rate schedule."""
    lr = options.lr or (4e-4 if options.arch == "paper" else 1e-3)
    # foreach: one call per step for all parameters (torch's default on CUDA only); the same weights bit for bit
    optimiser = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=options.weight_decay, betas=(0.9, 0.999),
                                  foreach=True)
    if schedule == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimiser, factor=options.plateau_factor, patience=options.patience, min_lr=options.min_lr)
    elif schedule == "cosine":
        total = epochs * math.ceil(n_train / options.batch_size)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, one_cycle(total, options.min_lr / lr))
    else:
        raise GhostmapError(f"unknown schedule '{schedule}'; choose plateau or cosine")
    return optimiser, scheduler


def run_epoch(network, inputs, targets, order, options: TrainingOptions, optimiser, scheduler, step_each_batch: bool,
              swap, gen: torch.Generator, loss_of, device, nuisance: bool = True) -> dict:
    """One pass over the training labels in ``order``; returns the epoch's loss and accuracy."""
    network.train()
    total, correct, seen = 0.0, 0, 0
    for b in range(0, len(order), options.batch_size):
        idx = order[b : b + options.batch_size]
        xb, yb = inputs[idx], targets[idx]
        if options.augment:
            xb, yb = augment_batch(xb, yb, swap, gen)
            shift, power = nuisance_of(options)
            if nuisance and (shift or power):
                xb = nuisance_batch(xb, input_shift(shift, xb.shape[-2:]), power, gen)
        xb, yb = xb.to(device).contiguous(memory_format=CHANNELS_LAST), yb.to(device)
        loss, predicted = loss_of(network, xb, yb, idx)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step_each_batch:
            scheduler.step()
        total += loss.item() * len(idx)
        correct += int((predicted == yb).sum())
        seen += len(idx)
    return {"loss": total / seen, "accuracy": correct / seen, "lr": optimiser.param_groups[0]["lr"]}


def fit_epochs(network, inputs, targets, epochs: int, options: TrainingOptions, optimiser, scheduler, swap,
               gen: torch.Generator, loss_of, device, progress=None, clean_from: int | None = None) -> list[dict]:
    """``epochs`` passes over every label, each in a fresh random order, the schedule stepped every
    batch (the fixed-schedule recipes: final weights, and the ensemble's members). From epoch
    ``clean_from`` on, without the drift/thickness augmentation. Returns the epochs' figures."""
    everything = np.arange(len(targets))
    history = []
    for epoch in range(1, epochs + 1):
        order = everything[torch.randperm(len(everything), generator=gen).numpy()]
        stats = run_epoch(network, inputs, targets, order, options, optimiser, scheduler, True, swap, gen,
                          loss_of, device, nuisance=clean_from is None or epoch < clean_from)
        stats = {"epoch": epoch, **stats, "val_loss": math.nan, "val_accuracy": math.nan}
        history.append(stats)
        if progress:
            progress(epoch, epochs, stats)
    return history


def class_weighting(options: TrainingOptions) -> str:
    """The option's class weighting, else ``"balanced"`` for the compact network (one or an ensemble),
    ``"none"`` for the paper's."""
    weights = options.class_weights or ("balanced" if options.arch == "compact" else "none")
    if weights not in CLASS_WEIGHTS:
        raise GhostmapError(f"unknown class_weights '{options.class_weights}'; choose {', '.join(CLASS_WEIGHTS)}")
    return weights


def loss_for(options: TrainingOptions, targets: torch.Tensor, n_classes: int):
    """The training loss of one network: cross-entropy, each class weighted by the inverse of its
    share of the labels (``"balanced"``), by its square root (``"sqrt"``) or not (``"none"``; see
    :class:`TrainingOptions`)."""
    weight = class_weight_vector(options, targets, n_classes)
    if weight is None:
        return _plain_loss

    def balanced(network, xb, yb, idx):
        logits = network(xb)
        return F.cross_entropy(logits, yb, weight=weight.to(logits.device)), logits.argmax(1)

    return balanced


def class_weight_vector(options: TrainingOptions, targets: torch.Tensor, n_classes: int) -> torch.Tensor | None:
    """Each class's weight in the loss under :func:`class_weighting` (None: unweighted)."""
    weights = class_weighting(options)
    if weights == "none":
        return None
    counts = torch.bincount(targets, minlength=n_classes).float()
    power = 1.0 if weights == "balanced" else 0.5
    return torch.where(counts > 0, (counts.sum() / (n_classes * counts.clamp_min(1))) ** power, torch.zeros(()))


def _plain_loss(network, xb, yb, idx):
    logits = network(xb)
    return F.cross_entropy(logits, yb), logits.argmax(1)


def fit_single(inputs, targets, classes, options: TrainingOptions, progress=None) -> tuple[torch.nn.Module, dict]:
    """One network: the final weights of a fixed schedule on every label, or (the paper's way) a checkpoint.

    ``checkpoint="final"`` (the compact network's default) trains on all labels with the
    warm-up + cosine schedule and keeps the last weights; a network that does not fit its own
    labels (train accuracy below ``min_fit``, or one class for everything) is trained again
    from a fresh initialisation derived from the seed, up to ``refits`` times, and the best
    fitting one is kept. ``checkpoint="best"`` holds out a stratified ``val_fraction`` and keeps
    the checkpoint with the lowest loss on it, as in the paper.
    """
    checkpoint = options.checkpoint or ("best" if options.arch == "paper" else "final")
    if checkpoint == "best":
        return _fit_best_checkpoint(inputs, targets, classes, options, progress)
    if checkpoint != "final":
        raise GhostmapError(f"unknown checkpoint '{checkpoint}'; choose best or final")
    if options.schedule not in (None, "cosine"):
        raise GhostmapError("the final-weights recipe needs the cosine schedule; use checkpoint 'best' for plateau")
    if options.refits < 0:
        raise GhostmapError(f"refits must be at least 0, got {options.refits}")
    device = pick_device(options.device)
    everything = np.arange(len(targets))
    epochs = options.epochs or default_epochs(len(everything), options.batch_size)
    swap = swap_pairs(classes) if options.augment else None
    best, fits = None, []
    for attempt in range(options.refits + 1):
        seed = refit_seed(options.seed, attempt)
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        network = build_network(options.arch, len(classes), tuple(inputs.shape[2:]), stem=options.stem,
                                channels=inputs.shape[1]).to(device, memory_format=CHANNELS_LAST)
        optimiser, scheduler = make_optimiser(network, options, len(everything), epochs, "cosine")
        history = fit_epochs(network, inputs, targets, epochs, options, optimiser, scheduler, swap, gen,
                             loss_for(options, targets, len(classes)),
                             device, progress, clean_from=epochs - round(options.clean_tail * epochs) + 1)
        network.eval()
        with torch.inference_mode():
            logits = torch.cat([network(inputs[b : b + 256].to(device)).cpu() for b in range(0, len(targets), 256)])
        fit = float((logits.argmax(1) == targets).float().mean())
        fit_loss = float(F.cross_entropy(logits, targets))
        fits.append(round(fit, 4))
        if best is None or (fit, -fit_loss) > (best[1], -best[2]):
            best = (network, fit, fit_loss, history)
        if fit >= options.min_fit and len(torch.unique(logits.argmax(1))) > 1:
            break
        logger.warning("the network fits only %.0f%% of its own labels (attempt %d of %d)%s", 100 * fit, attempt + 1,
                       options.refits + 1, "; training it again from a fresh start" if attempt < options.refits else "")
    network, fit, fit_loss, history = best
    metrics = {"members": 1, "n_train": int(len(everything)), "n_validation": 0, "epochs": epochs,
               "best_epoch": epochs, "checkpoint": "final", "val_loss": fit_loss, "val_accuracy": fit,
               "validation": "none: every label trained on; val_loss and val_accuracy are on the training labels",
               "refits": len(fits) - 1, "fit_per_attempt": fits, "history": _rounded(history)}
    return network, metrics


def refit_seed(seed: int, attempt: int) -> int:
    """The seed of the ``attempt``-th training (0: ``seed`` itself), so refits stay reproducible."""
    return int(seed) if attempt == 0 else int(np.random.SeedSequence([int(seed), attempt]).generate_state(1)[0])


def _fit_best_checkpoint(inputs, targets, classes, options: TrainingOptions,
                         progress=None) -> tuple[torch.nn.Module, dict]:
    """One network on a stratified split, keeping the checkpoint with the lowest validation loss."""
    device = pick_device(options.device)
    rng = np.random.default_rng(options.seed)
    gen = torch.Generator().manual_seed(options.seed)
    train_idx, val_idx = stratified_split(targets.numpy(), options.val_fraction, rng)
    held_out = len(val_idx) > 0
    if not held_out:
        val_idx = train_idx  # too few labels to hold any out; say so in the metrics
    network = build_network(options.arch, len(classes), tuple(inputs.shape[2:]), stem=options.stem,
                            channels=inputs.shape[1]).to(device, memory_format=CHANNELS_LAST)
    epochs = options.epochs or default_epochs(len(train_idx), options.batch_size)
    schedule = options.schedule or ("plateau" if options.arch == "paper" else "cosine")
    optimiser, scheduler = make_optimiser(network, options, len(train_idx), epochs, schedule)
    swap = swap_pairs(classes) if options.augment else None
    x_val, y_val = inputs[val_idx].to(device), targets[val_idx].to(device)
    best, best_state, history = {"val_loss": math.inf}, None, []
    for epoch in range(1, epochs + 1):
        order = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
        stats = run_epoch(network, inputs, targets, order, options, optimiser, scheduler, schedule == "cosine",
                          swap, gen, _plain_loss, device)
        network.eval()
        with torch.inference_mode():
            val_logits = network(x_val)
            val_loss = float(F.cross_entropy(val_logits, y_val))
            val_acc = float((val_logits.argmax(1) == y_val).float().mean())
        if schedule == "plateau":
            scheduler.step(val_loss)
        stats = {"epoch": epoch, "loss": stats["loss"], "accuracy": stats["accuracy"], "val_loss": val_loss,
                 "val_accuracy": val_acc, "lr": optimiser.param_groups[0]["lr"]}
        history.append(stats)
        if val_loss < best["val_loss"]:
            best = dict(stats)
            best_state = copy.deepcopy(network.state_dict())
        if progress:
            progress(epoch, epochs, stats)
    network.load_state_dict(best_state)
    metrics = {"members": 1, "n_train": int(len(train_idx)), "n_validation": int(len(val_idx)) if held_out else 0,
               "epochs": epochs, "best_epoch": best["epoch"], "val_loss": best["val_loss"],
               "val_accuracy": best["val_accuracy"], "checkpoint": "best", "history": _rounded(history)}
    return network, metrics


def fit_members(inputs, targets, classes, trains_on: torch.Tensor, options: TrainingOptions, progress=None,
                clean_tail: bool = False) -> tuple[torch.nn.Module, int, list[dict]]:
    """An :class:`~ghostmap.ensemble.EnsembleNet` of ``trains_on.shape[1]`` compact networks trained
    side by side with a fixed schedule, member ``k`` on the labels where ``trains_on[:, k]``; the
    loss is every member's class-weighted mean cross-entropy, summed. With ``clean_tail`` the last
    ``options.clean_tail`` of the epochs go without the drift/thickness augmentation, as for one
    network. Returns the network (in eval mode), the epochs and their figures."""
    device = pick_device(options.device)
    members = int(trains_on.shape[1])
    gen = torch.Generator().manual_seed(options.seed)
    network = EnsembleNet(len(classes), tuple(inputs.shape[2:]), members=members, stem=options.stem,
                          channels=inputs.shape[1]).to(device, memory_format=CHANNELS_LAST)
    n = len(targets)
    epochs = options.epochs or default_epochs(n, options.batch_size)
    optimiser, scheduler = make_optimiser(network, options, n, epochs, "cosine")
    swap = swap_pairs(classes) if options.augment else None
    weight = class_weight_vector(options, targets, len(classes))

    def loss_of(net, xb, yb, idx):
        z = net.member_logits(xb)  # (B, K, C)
        w = torch.ones(len(classes), device=xb.device) if weight is None else weight.to(xb.device)
        mask = trains_on[torch.as_tensor(idx)].to(xb.device).float() * w[yb, None]
        each = F.cross_entropy(z.reshape(-1, z.shape[-1]), yb.repeat_interleave(members), reduction="none")
        each = each.reshape(-1, members) * mask
        loss = (each.sum(0) / mask.sum(0).clamp(min=1e-12)).sum()  # every member's weighted mean loss, summed
        return loss, z.mean(1).argmax(1)

    clean_from = epochs - round(options.clean_tail * epochs) + 1 if clean_tail else None
    history = fit_epochs(network, inputs, targets, epochs, options, optimiser, scheduler, swap, gen, loss_of, device,
                         progress, clean_from=clean_from)
    return network.eval(), epochs, history


def fit_ensemble(inputs, targets, classes, members: int, options: TrainingOptions,
                 progress=None) -> tuple[torch.nn.Module, dict]:
    """``members`` compact networks, each on all labels but one fold, then a temperature from the held-out folds.

    A fixed schedule (no checkpoint chosen on a handful of labels); ``val_loss`` and
    ``val_accuracy`` are the cross-validated figures (every label predicted by the member that
    never saw it), the loss after calibration.
    """
    rng = np.random.default_rng(options.seed)
    folds = torch.as_tensor(stratified_folds(targets.numpy(), members, rng))
    trains_on = F.one_hot(folds, members) == 0  # (N, members): member k trains on every label outside fold k
    network, epochs, history = fit_members(inputs, targets, classes, trains_on, options, progress)
    n = len(targets)
    with torch.inference_mode():
        z = torch.cat([network.member_logits(inputs[b : b + 256].to(network.temperature.device)).cpu()
                       for b in range(0, n, 256)])
    held_out = z[torch.arange(n), folds]  # each label's logits from the member that never saw it
    temperature = fit_temperature(held_out, targets)
    network.temperature.fill_(temperature)
    cv_loss_raw = float(F.cross_entropy(held_out, targets))
    cv_loss = float(F.cross_entropy(held_out / temperature, targets))
    cv_acc = float((held_out.argmax(1) == targets).float().mean())
    history[-1].update(val_loss=cv_loss, val_accuracy=cv_acc)
    logger.info("ensemble of %d: cross-validated accuracy %.3f, temperature %.2f", members, cv_acc, temperature)
    metrics = {"members": members, "ensemble": "folds", "class_weights": class_weighting(options), "n_train": n,
               "n_validation": 0, "cross_validated": n, "epochs": epochs,
               "best_epoch": epochs, "val_loss": cv_loss, "val_accuracy": cv_acc, "val_loss_uncalibrated": cv_loss_raw,
               "temperature": round(temperature, 4), "calibration": "temperature scaling on out-of-fold predictions",
               "history": _rounded(history)}
    return network, metrics


def fit_ensemble_on_all(inputs, targets, classes, members: int, options: TrainingOptions,
                        progress=None) -> tuple[torch.nn.Module, dict]:
    """``members`` compact networks, every one on every label with one network's recipe (fixed
    schedule, final weights, class-weighted loss); they differ in their initial weights and dropout.
    Nothing is held out, so :func:`train` calibrates the ensemble on the scan as it does one network."""
    torch.manual_seed(options.seed)
    trains_on = torch.ones(len(targets), members, dtype=torch.bool)
    network, epochs, history = fit_members(inputs, targets, classes, trains_on, options, progress, clean_tail=True)
    with torch.inference_mode():
        logits = torch.cat([network(inputs[b : b + 256].to(network.temperature.device)).cpu()
                            for b in range(0, len(targets), 256)])
    fit = float((logits.argmax(1) == targets).float().mean())
    metrics = {"members": members, "ensemble": "all", "n_train": len(targets), "n_validation": 0, "epochs": epochs,
               "best_epoch": epochs, "checkpoint": "final", "val_loss": float(F.cross_entropy(logits, targets)),
               "val_accuracy": fit, "class_weights": class_weighting(options),
               "validation": "none: every member trained on every label; val_loss and val_accuracy are on the "
                             "training labels", "history": _rounded(history)}
    return network, metrics


def label_fit_metrics(network, inputs, targets, classes) -> dict:
    """How the trained network fits its own labels, and whether it collapsed to one class."""
    with torch.inference_mode():
        predicted = torch.cat([network(inputs[b : b + 256]).argmax(1) for b in range(0, len(inputs), 256)])
    counts = np.bincount(targets.numpy(), minlength=len(classes))
    share = counts[counts > 0] / counts.sum()
    return {
        "label_counts": {c: int(k) for c, k in zip(classes, counts)},
        "train_accuracy_all_labels": float((predicted == targets).float().mean()),
        "prior_entropy": float(-(share * np.log(share)).sum()),
        "collapsed": bool(len(torch.unique(predicted)) == 1),
        "predicted_classes": sorted({classes[i] for i in predicted.tolist()}),
    }


def _rounded(history: list[dict]) -> list[dict]:
    return [{k: (round(v, 5) if isinstance(v, float) and math.isfinite(v) else (None if isinstance(v, float) else v))
             for k, v in h.items()} for h in history]
