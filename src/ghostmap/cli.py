"""The ``ghostmap`` command line: a thin layer over the Python API.

Every command opens its inputs lazily, reports progress with Rich, writes its outputs
atomically, and turns a problem with the input into one line on stderr and exit code 1.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .errors import GhostmapError
from .labels import format_fractions

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Map ferroelectric polarization domains in 4D-STEM scans from a few labelled diffraction patterns.",
)
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

DatasetOpt = typer.Option(None, "--dataset", help="Path of the 4-D dataset inside an HDF5/EMD/zarr file.")
ScanShapeOpt = typer.Option(None, "--scan-shape", help="ROWSxCOLS, for files of flat frames that don't record it "
                                                       "(Dectris masters, .mib, 3-D HDF5/zarr/.npy/.mrc stacks, TVIPS).")


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        out.print(f"ghostmap {__version__}", highlight=False)
        raise typer.Exit(0)


@app.callback()
def _main_options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
):
    """Map ferroelectric polarization domains in 4D-STEM scans from a few labelled diffraction patterns."""


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
        disable=not console.is_terminal and os.environ.get("GHOSTMAP_PROGRESS") != "1",
    )


def _shape(text: str, what: str) -> tuple[int, int]:
    try:
        a, b = text.lower().replace(" ", "").split("x")
        shape = (int(a), int(b))
    except ValueError:
        raise GhostmapError(f"{what} must look like ROWSxCOLS (e.g. 34x206), got '{text}'") from None
    if min(shape) < 1:
        raise GhostmapError(f"{what} must be positive, got '{text}'")
    return shape


def _open(data: Path, dataset: Optional[str], scan_shape: Optional[str] = None):
    from .reading import open_scan

    return open_scan(data, dataset=dataset, scan_shape=_shape(scan_shape, "--scan-shape") if scan_shape else None)


@app.command()
def info(
    data: Path = typer.Argument(..., help="The scan: .npy, .h5/.emd/.nxs, Dectris master, .zarr, .hspy/.zspy, .dm3/.dm4, "
                                          ".dm5 series, .mib, .blo, .tvips, .mrc or EMPAD .xml."),
    dataset: Optional[str] = DatasetOpt,
    scan_shape: Optional[str] = ScanShapeOpt,
    preview: Optional[Path] = typer.Option(None, "--preview", help="Write a PNG: mean pattern (log) and virtual bright field."),
):
    """Print a scan's shape, dtype and size, its format and calibrations; optionally write a preview image.

    For a time series (a .dm5 session, a 5-D dataset) the lines describe one time slice and
    a 'slices:' line gives their number.
    """
    from .reading import describe, open_time_series, save_preview, time_series_length

    n_slices = time_series_length(data, dataset) if scan_shape is None and data.exists() else None
    if n_slices is not None:
        series = open_time_series(data, dataset)
        scan = series[0]
        scan._closers.append(series.close)  # the slice owns the series while it is open
    else:
        scan = _open(data, dataset, scan_shape)
    with scan:
        d = describe(scan)
        rows, cols = d["scan_shape"]
        out.print(f"scan:      {rows} rows x {cols} columns ({d['n_patterns']} patterns)")
        out.print(f"detector:  {d['detector_shape'][0]} x {d['detector_shape'][1]} pixels")
        out.print(f"dtype:     {d['dtype']}")
        out.print(f"size:      {_bytes(d['nbytes'])} uncompressed" +
                  (f", {_bytes(d['file_size'])} on disk" if d.get("file_size") is not None else ""),
                  highlight=False)
        if d.get("format"):
            out.print(f"format:    {d['format']}", highlight=False, markup=False)
            out.print(f"reader:    {d['reader']}", highlight=False, markup=False)
        if n_slices is not None:
            out.print(f"slices:    {n_slices} time slices (the lines above describe one; "
                      f"{_bytes(d['nbytes'] * n_slices)} in all)", highlight=False)
        for axis, origin, scale, units in d.get("calibrations", []):
            out.print(f"calibration: {axis}: {scale:g} {units} per pixel, origin {origin:g}", highlight=False, markup=False)
        if preview:
            save_preview(scan, preview)
            out.print(f"preview:   {preview}")


@app.command()
def simulate(
    out_path: Path = typer.Argument(..., metavar="OUT", help="A folder (scan.npy + truth.csv go in it) or a .npy/.h5 file."),
    scan: str = typer.Option("34x206", "--scan", help="Scan size ROWSxCOLS."),
    detector: int = typer.Option(128, "--detector", help="Detector size N (N x N pixels)."),
    seed: int = typer.Option(0, "--seed"),
    steps: int = typer.Option(1, "--steps", help="Simulate an in-situ series of this many scans "
                                                 "(OUT is then a folder of scan_NNNN.npy + truth_NNNN.csv)."),
    wall_shift: int = typer.Option(2, "--wall-shift", help="With --steps: scan columns the domain walls move per step."),
):
    """Write a synthetic boracite-like scan and its ground-truth labels (x,y,label)."""
    from .simulate import moving_domain_maps, write_simulated_scan, write_truth_csv

    scan_shape = _shape(scan, "--scan")
    if detector < 16:
        raise GhostmapError(f"--detector must be at least 16 pixels, got {detector}")
    if steps < 1 or wall_shift < 0:
        raise GhostmapError("--steps must be at least 1 and --wall-shift not negative")
    if steps == 1:
        targets = [simulation_paths(out_path)]
        truths = [None]
    else:
        if out_path.suffix.lower() in (".npy", ".h5", ".hdf5"):
            raise GhostmapError("a simulated series goes into a folder; give OUT without a file suffix")
        targets = [(out_path / f"scan_{t:04d}.npy", out_path / f"truth_{t:04d}.csv") for t in range(steps)]
        truths = list(moving_domain_maps(scan_shape, steps, wall_shift, seed=seed))
    with _progress() as progress:
        task = progress.add_task("simulating", total=scan_shape[0] * steps, info="scan rows")
        for t, ((scan_path, truth_path), truth) in enumerate(zip(targets, truths)):
            done = t * scan_shape[0]
            truth = write_simulated_scan(scan_path, scan_shape, detector, seed=seed, truth=truth, noise_seed=seed + t,
                                         progress=lambda d, total, done=done: progress.update(task, completed=done + d))
            write_truth_csv(truth_path, truth)
    first, last = targets[0][0], targets[-1][0]
    what = f"{scan_path}" if steps == 1 else f"{first} ... {last.name} ({steps} steps, walls moving {wall_shift} columns per step)"
    out.print(f"scan:   {what} ({scan_shape[0]} x {scan_shape[1]} patterns of {detector} x {detector}, uint16)")
    out.print(f"truth:  {targets[0][1]}" + ("" if steps == 1 else f" ... {targets[-1][1].name}"))


def simulation_paths(target: Path) -> tuple[Path, Path]:
    """Where ``simulate`` writes the scan and its truth labels."""
    if target.suffix.lower() in (".npy", ".h5", ".hdf5"):
        return target, target.with_name(target.stem + "_truth.csv")
    return target / "scan.npy", target / "truth.csv"


@app.command()
def sample(
    data: Path = typer.Argument(..., help="The scan (only its shape is read, unless --model is given)."),
    labels: Path = typer.Option(..., "--labels", help="Labels given so far (x,y,label); may be absent or empty."),
    budget: int = typer.Option(..., "--budget", help="Total number of labels wanted, those given included."),
    strategy: str = typer.Option("adaptive", "--strategy", help="adaptive (refine domain walls), random, or active "
                                 "(the positions a model is least sure of; the adaptive grid until --model is given)."),
    step: Optional[int] = typer.Option(None, "--step", help="Coarse grid step (default: from scan size and budget)."),
    out_path: Path = typer.Option(..., "--out", help="CSV (x,y) of the positions to label next."),
    seed: int = typer.Option(0, "--seed"),
    model_dir: Optional[Path] = typer.Option(None, "--model", help="With --strategy active: model folder written by "
                                             "'ghostmap train' on these labels; the scan is classified to rank positions."),
    batch: Optional[int] = typer.Option(None, "--batch", help="With --strategy active and --model: positions per call "
                                        "(default 10)."),
    exclude: Optional[Path] = typer.Option(None, "--exclude", help="CSV (x,y) of positions never to propose: a "
                                           "held-out test set, vacuum, a damaged area. A label file works too."),
    dataset: Optional[str] = DatasetOpt,
    scan_shape: Optional[str] = ScanShapeOpt,
):
    """Propose the next positions to label."""
    from .labels import read_labels, read_positions, write_positions
    from .sampling import MIN_MODEL_LABELS, propose

    if (model_dir is not None or batch is not None) and strategy != "active":
        raise GhostmapError(f"--model and --batch work with --strategy active, not {strategy}")
    with _open(data, dataset, scan_shape) as scan:
        shape = scan.scan_shape
        given = read_labels(labels, scan_shape=shape, missing_ok=True)
        excluded = None if exclude is None else read_positions(exclude, scan_shape=shape)
        model = model_dir
        if model_dir is not None and MIN_MODEL_LABELS <= len(given) < budget:
            # the scan classified as 'ghostmap predict' classifies it: the uncertainty ranked is that of its maps
            model = _classify(scan, model_dir, f"classifying {data.name}")
        x, y = propose(shape, given, budget, strategy=strategy, step=step, seed=seed, model=model,
                       scan=scan if model_dir is not None else None, batch=batch, exclude=excluded)
    write_positions(out_path, x, y)
    if len(x):
        out.print(f"{len(x)} positions to label -> {out_path} ({len(given)} labelled, budget {budget})")
    else:
        out.print(f"nothing left to propose ({len(given)} labelled, budget {budget}); wrote a header-only {out_path}")


@app.command(name="import-labels")
def import_labels(
    source: Path = typer.Argument(..., help="A label file: the paper authors' YAML or a CSV."),
    out_path: Path = typer.Option(..., "--out", help="CSV to write (x,y,label)."),
):
    """Convert the paper authors' YAML labels (X_Y_boxsize5.png, na -> none) to ghostmap's CSV."""
    from .labels import read_labels, write_labels

    given = read_labels(source)
    write_labels(out_path, given)
    counts = {c: int((given.label == c).sum()) for c in given.classes}
    out.print(f"{len(given)} labels -> {out_path} " + ", ".join(f"{c}: {n}" for c, n in counts.items()))


@app.command()
def train(
    data: Path = typer.Argument(..., help="The scan."),
    labels: Path = typer.Option(..., "--labels", help="CSV x,y,label (or the paper's YAML)."),
    out_path: Path = typer.Option(..., "--out", help="Model folder to write (model.safetensors + model.json)."),
    arch: str = typer.Option("compact", "--arch", help="compact (default, fast) or paper (the paper's CNN)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Default: from the number of labels."),
    seed: int = typer.Option(0, "--seed"),
    bin_factor: Optional[int] = typer.Option(None, "--bin", help="Sum b x b detector pixels (default: down to 128 px for compact, 256 for paper)."),
    crop: Optional[str] = typer.Option(None, "--crop", help="Detector window ROW0:ROW1,COL0:COL1."),
    transform: str = typer.Option("sqrt", "--transform", help="sqrt, log, gamma or none."),
    gamma: float = typer.Option(0.5, "--gamma"),
    pool: int = typer.Option(3, "--pool", help="Pool k x k neighbouring probe positions (odd k; 1 = off)."),
    pool_mode: str = typer.Option("mean", "--pool-mode", help="mean (default) or max."),
    own_pattern: Optional[bool] = typer.Option(
        None, "--own-pattern/--no-own-pattern",
        help="Give the network each position's own pattern beside the pooled one, so pooling does not blur "
             "domain walls (default: on for compact with --pool above 1; off for paper)."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Flips and transposes that respect the classes."),
    stem: str = typer.Option("pool", "--stem", help="compact: its first stage, pool (default) or stride (a 1.7 x faster "
                             "network that learnt less from few labels; BENCHMARKS.md)."),
    members: int = typer.Option(1, "--members", help="compact: 1 (default) = one network trained on every label; "
                                "K > 1 = a calibrated ensemble of K (about K x slower to train, slower to predict)."),
    ensemble: str = typer.Option("all", "--ensemble", help="with --members K > 1: all (default; every member on every "
                                 "label, calibrated on the scan) or folds (each on all labels but one fold, calibrated "
                                 "on the held-out folds, with a cross-validated accuracy)."),
    class_weights: Optional[str] = typer.Option(
        None, "--class-weights", help="compact: balanced (default; each class's loss by the inverse of its share of "
        "the labels), sqrt (the square root of that: wall-heavy active labels are overruled less) or none."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: CUDA if present)."),
    dataset: Optional[str] = DatasetOpt,
    scan_shape: Optional[str] = ScanShapeOpt,
):
    """Train a classifier on labelled patterns."""
    from .labels import read_labels, require_trainable
    from .model import STEMS
    from .training import CLASS_WEIGHTS, ENSEMBLES, TrainingOptions, training_preprocessing
    from .training import train as train_model

    if stem not in STEMS:
        raise typer.BadParameter(f"'{stem}' is not one of {', '.join(STEMS)}", param_hint="--stem")
    if ensemble not in ENSEMBLES:
        raise typer.BadParameter(f"'{ensemble}' is not one of {', '.join(ENSEMBLES)}", param_hint="--ensemble")
    if class_weights is not None and class_weights not in CLASS_WEIGHTS:
        raise typer.BadParameter(f"'{class_weights}' is not one of {', '.join(CLASS_WEIGHTS)}",
                                 param_hint="--class-weights")
    reuse_freed_memory(*TRAINING_ALLOCATOR)  # this command's own process: each step frees and allocates tens of MB
    with _open(data, dataset, scan_shape) as scan:
        given = read_labels(labels, scan_shape=scan.scan_shape)
        require_trainable(given, str(labels))
        prep = training_preprocessing(scan, arch, bin=bin_factor, crop=_crop(crop), transform=transform, gamma=gamma,
                                      pool=pool, pool_mode=pool_mode, own_pattern=own_pattern)
        options = TrainingOptions(arch=arch, epochs=epochs, seed=seed, augment=augment, device=device, members=members,
                                  ensemble=ensemble, stem=stem, class_weights=class_weights)
        with _progress() as progress:
            task = progress.add_task("training", total=None, info="")

            def report(epoch, total, s):
                held_out = "" if s["val_loss"] != s["val_loss"] else (  # NaN: an ensemble, validated at the end
                    f" val loss {s['val_loss']:.3f} val acc {s['val_accuracy']:.0%}")
                progress.update(task, total=total, completed=epoch,
                                info=f"loss {s['loss']:.3f} acc {s['accuracy']:.0%}{held_out}")

            model = train_model(scan, given, options, preprocessing=prep, progress=report)
    model.save(out_path)
    m = model.metrics
    out.print(f"trained {arch} on {m['n_train']} labels (validation {m['n_validation']}), best epoch "
              f"{m['best_epoch']}/{m['epochs']}: val loss {m['val_loss']:.3f}, val accuracy {m['val_accuracy']:.1%} "
              f"({m['seconds']:.0f} s)")
    if m.get("checkpoint") == "final":
        out.print(f"no labels held out: the final weights after {m['epochs']} epochs on every label are kept, and the "
                  "val figures above are on the training labels" + (f"; trained {m['refits']} more time(s) from a fresh "
                  "start to fit the labels" if m.get("refits") else ""))
    if "cross_validated" in m:
        out.print(f"ensemble of {m['members']} networks: cross-validated accuracy {m['val_accuracy']:.1%} on "
                  f"{m['cross_validated']} labels; probabilities calibrated (temperature {m['temperature']:.2f})")
    elif m.get("members", 1) > 1:
        out.print(f"ensemble of {m['members']} networks, each trained on every label")
    if "neighbour_agreement" in m:
        out.print(f"probabilities calibrated on the scan (temperature {m['temperature']:.2f}; "
                  f"{m['neighbour_agreement']:.1%} of positions agree with their neighbours)")
    missed = round(m["n_labels"] * (1 - m["train_accuracy_all_labels"]))
    if missed:
        out.print(f"the model calls {missed} of the {m['n_labels']} labelled patterns another class than their label; "
                  "those are where the map disagrees with you (often on domain walls)")
    if prep.bad_pixels:
        out.print(f"masked {len(prep.bad_pixels)} bad detector pixels")
    if m["collapsed"]:
        console.print(f"[bold red]warning: the model has collapsed: it predicts '{m['predicted_classes'][0]}' for every "
                      "labelled pattern. Check the labels, or try --pool 3, more epochs or more labels.[/]")
    out.print(f"model: {out_path}")


def _crop(text: Optional[str]):
    if not text:
        return None
    try:
        rows, cols = text.split(",")
        r0, r1 = (int(v) for v in rows.split(":"))
        c0, c1 = (int(v) for v in cols.split(":"))
    except ValueError:
        raise GhostmapError(f"--crop must look like ROW0:ROW1,COL0:COL1 (e.g. 64:448,64:448), got '{text}'") from None
    return (r0, r1, c0, c1)


@app.command()
def predict(
    data: list[Path] = typer.Argument(..., help="The scan; or several scans, a quoted glob ('run/scan_*.h5') or a 5-D "
                                                "(time, scan_row, scan_col, det_row, det_col) dataset for a time series."),
    model_dir: Path = typer.Option(..., "--model", help="Model folder written by 'ghostmap train'."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for predictions.npz, domain_map.png, summary.png "
                                                   "(a series: one step_NNNN folder per scan plus series.npz, series.csv, "
                                                   "fractions.png, domain_maps.gif)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Patterns per forward pass (default: by input size)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda ... (default: CUDA if present)."),
    compile_mode: str = typer.Option("none", "--compile", help="none (default, exact), bf16 (bfloat16 where the "
                                     "hardware has it: faster, probabilities within ~1e-2) or inductor (torch.compile)."),
    executor: str = typer.Option("local", "--executor", help="local (default, fastest on one machine) or dask."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Dask scheduler address (tcp://host:8786); implies --executor dask."),
    workers: Optional[int] = typer.Option(None, "--workers", help="With --executor dask and no --scheduler: local cluster workers (default 2)."),
    dataset: Optional[str] = DatasetOpt,
    scan_shape: Optional[str] = ScanShapeOpt,
    readahead: int = typer.Option(256, "--readahead", help="MB of binned scan rows that may wait for the network "
                                  "(local executor): reading starts before torch loads and runs this far ahead."),
    engine: str = typer.Option("auto", "--engine", help="auto (default: ONNX Runtime on the CPU where the model folder "
                               "has model.onnx, else PyTorch), onnx or torch. ONNX Runtime needs no torch at all."),
    precision: str = typer.Option("auto", "--precision", help="auto (default: ONNX Runtime runs the model folder's "
                                  "int8 graph on a processor with AVX-512, where it is faster, else float32), int8 "
                                  "or float32 (the exact network; PyTorch always computes in float32)."),
):
    """Classify every pattern and write the domain map; for several scans, follow the series."""
    from .modelfile import read_description
    from .series import Step, is_series

    if executor not in ("local", "dask"):
        raise typer.BadParameter(f"choose local or dask, not '{executor}'", param_hint="--executor")
    if scheduler:
        executor = "dask"
    if batch_size is not None and batch_size < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--batch-size")
    if readahead < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--readahead")
    if engine not in ENGINES:
        raise typer.BadParameter(f"choose one of {', '.join(ENGINES)}, not '{engine}'", param_hint="--engine")
    from .runtime import PRECISIONS

    if precision not in PRECISIONS:
        raise typer.BadParameter(f"choose one of {', '.join(PRECISIONS)}, not '{precision}'", param_hint="--precision")
    if precision == "int8" and engine == "torch":
        raise typer.BadParameter("the int8 graph runs in ONNX Runtime: use --engine onnx or auto", param_hint="--precision")
    description = read_description(model_dir)  # checked without torch
    shape = _shape(scan_shape, "--scan-shape") if scan_shape else None
    if executor == "local" and not is_series(data, dataset):
        reuse_freed_memory()  # this command's own process only: the library leaves the allocator alone
        step = Step(data[0], None, dataset, shape)
        with step.open() as scan:
            result = _classify(scan, model_dir, f"classifying {data[0].name}", description=description, step=step,
                               engine=engine, precision=precision, device=device, compile_mode=compile_mode,
                               batch_size=batch_size, readahead=readahead)
        _report_prediction(out_dir, result, data[0].name)
        return
    if executor == "dask" and (engine == "onnx" or precision == "int8"):
        raise GhostmapError(f"--{'engine onnx' if engine == 'onnx' else 'precision int8'} classifies on this machine "
                            "(the local executor), not on a Dask cluster")
    from .model import Model

    model = Model.load(model_dir)
    with _predictor(executor, scheduler, workers, batch_size, device, compile_mode, model_dir=model_dir, engine=engine,
                    precision=precision) as predict_step:
        if is_series(data, dataset):
            _predict_series(data, model, out_dir, predict_step, dataset, shape)
            return
        step = Step(data[0], None, dataset, shape)
        with step.open() as scan:
            result = predict_step(step, scan, model, f"classifying {data[0].name}")
    _report_prediction(out_dir, result, data[0].name)


def _report_prediction(out_dir: Path, result, name: str) -> None:
    from .outputs import save_prediction

    paths = save_prediction(out_dir, result, title=str(name))
    out.print(f"classified {result.labels.size} patterns: {format_fractions(result.labels, result.classes)}")
    for p in paths.values():
        out.print(f"  {p}")


class _ProgressThenImport:
    """``progress(done, total)`` for a bar's task that, at the first call after ``ready()``
    (default: the first call), starts importing ``ghostmap.outputs`` (matplotlib, 0.25 s) in a
    daemon thread: by then the network runs in code that releases the GIL, so the import
    overlaps it instead of delaying the first rows.

    A thread running Python holds up a NumPy reading thread as if they shared one core (each
    NumPy call waits for the GIL): on the paper-size scan, importing matplotlib beside the
    reading slowed it by the import's whole 0.2-0.3 s. The ONNX path passes ``ready`` = "all
    rows read", so the import overlaps only the network's last blocks."""

    def __init__(self, bar, task, ready: Callable[[], bool] | None = None):
        self.bar, self.task, self.ready, self.started = bar, task, ready, False

    def __call__(self, done: int, total: int) -> None:
        if not self.started and (self.ready is None or self.ready() or done >= total):
            import importlib
            import threading

            def load():
                try:
                    importlib.import_module("ghostmap.outputs")
                except Exception:  # noqa: BLE001 - the import where the module is used reports it
                    pass

            threading.Thread(target=load, name="import ghostmap.outputs", daemon=True).start()
            self.started = True
        self.bar.update(self.task, completed=done)


ENGINES = ("auto", "onnx", "torch")


def _onnx_network(model_dir: Path, description: dict, engine: str, device, compile_mode: str, batch_size, reader,
                  precision: str = "auto"):
    """The model's network in ONNX Runtime where predict runs it so, else None (PyTorch then runs it).

    ``auto``: on the CPU as it is (no --compile), where the model folder has a matching
    model.onnx and the scan is read before torch would load. Without --device, a machine that
    may have an NVIDIA GPU is left to torch, which picks CUDA where it sees one: finding out
    for sure would mean importing torch, the cost this path avoids. ``onnx``: the same, or a
    one-line error saying why not. ``precision`` int8 (the folder's model_int8.onnx) must run
    here, or it is a one-line error.
    """
    if engine == "torch":
        return None
    if precision == "int8":
        engine = "onnx"
    why = None
    if compile_mode != "none":
        why = "--compile is a PyTorch option"
    elif device is not None and device != "cpu":
        why = f"ONNX Runtime runs on the CPU here, not on '{device}'"
    elif reader is None:
        why = "the model does not fit this scan's detector or counts (ONNX Runtime reads integer counts binned at least 2 x 2)"
    if why is None and engine == "auto" and device is None and (
            os.path.exists("/dev/nvidia0") or os.path.exists("/proc/driver/nvidia")):
        return None
    if why is None:
        from .runtime import OnnxNetwork

        network = OnnxNetwork.from_folder(model_dir, description, batch_size=batch_size, precision=precision)
        if network is not None:
            return network
        if precision == "int8":
            why = (f"{model_dir} has no usable model_int8.onnx (ghostmap train writes one for the compact network: "
                   "retrain) or ONNX Runtime is missing")
        else:
            why = f"{model_dir} has no usable model.onnx (retrain or re-save the model) or ONNX Runtime is missing"
    if engine == "onnx":
        raise GhostmapError(f"--{'precision int8' if precision == 'int8' else 'engine onnx'}: {why}")
    return None


def _predict_with_onnx(scan, reader, network, description: dict, title: str):
    from .runtime import predict_with_onnx

    with _progress() as progress:
        task = progress.add_task(title, total=scan.n_patterns, info="patterns")
        return predict_with_onnx(scan, reader, network, description["classes"],
                                 progress=_ProgressThenImport(progress, task, ready=lambda: reader.finished))


def _classify(scan, model_dir: Path, title: str, *, description: dict | None = None, step=None,
              with_torch: Callable | None = None, engine: str = "auto", precision: str = "auto", device=None,
              compile_mode: str = "none", batch_size=None, readahead: int = 256):
    """One opened scan classified as ``ghostmap predict`` classifies it: read and binned in a background
    thread from the start, then ONNX Runtime on the CPU where the model folder allows
    (:func:`_onnx_network`), else in PyTorch: ``with_torch(reader)`` (default: the folder's model
    loaded only now, run here), which gets the reader already started."""
    from .modelfile import read_description

    description = description or read_description(model_dir)
    reader = _start_reading(scan, description, readahead, model_dir)
    try:
        network = _onnx_network(model_dir, description, engine, device, compile_mode, batch_size, reader, precision)
        if network is not None:  # the CPU, without torch
            return _predict_with_onnx(scan, reader, network, description, title)
        if with_torch is not None:
            return with_torch(reader)
        from .model import Model

        with _predictor("local", None, None, batch_size, device, compile_mode) as predict_step:
            return predict_step(step, scan, Model.load(model_dir), title, reader=reader)
    finally:
        if reader is not None:
            reader.close()


def _start_reading(scan, description: dict, readahead: int, model_dir: Path):
    """Start reading ``scan`` and making the described model's network inputs, before torch loads.

    None where that cannot start early (counts that need torch to reduce, or a model that does
    not fit the scan, which prediction then reports in its own words).
    """
    from .analysis import bright_field_index_of_block
    from .counts import CountReduction, block_rows, scan_reader
    from .inputs import Finish, NetworkInputs
    from .modelfile import read_reference

    try:
        reduction = CountReduction.from_dict(description["preprocessing"])
        detector_shape = tuple(int(v) for v in description["detector_shape"])
        reference = read_reference(model_dir) if description["preprocessing"].get("subtract_mean") else None
    except (KeyError, TypeError, ValueError, GhostmapError):
        return None
    if tuple(scan.detector_shape) != detector_shape or not reduction.fits_dtype(scan.dtype):
        return None
    step = block_rows(scan)
    n_rows = scan.scan_shape[0]
    _, _, h, w = reduction.window(scan.detector_shape)
    ahead = max(1, readahead * 2**20 // (step * scan.scan_shape[1] * h * w * 4))  # float32 blocks in that many MB
    inputs = NetworkInputs(n_rows, 0, n_rows, reduction.pool, reduction.pool_mode,
                           Finish.from_dict(description["preprocessing"], reference))
    # the whole scan: the first block starts at scan row 0, where the bright-field disk is found
    return scan_reader(scan, reduction, rows_per_block=step, ahead=ahead, then=inputs,
                       bright_field_index=bright_field_index_of_block)


# Training's activations are 8-32 MB: lower thresholds than predict's keep them out of mmap with
# less memory held back (a 4-member ensemble on the demo scan: 1.43 GB peak against 1.86 GB).
TRAINING_ALLOCATOR = (64 * 2**20, 128 * 2**20)


def reuse_freed_memory(mmap_threshold: int = 256 * 2**20, trim_threshold: int = 512 * 2**20) -> bool:
    """Ask glibc to recycle freed block buffers instead of returning them to the OS.

    This changes the whole process's allocator, so it lives in the command line and the library
    never calls it: only the ``ghostmap predict``, ``train`` and ``label`` commands do, for their
    own process (a notebook user's process is left alone). Each block of a prediction, and each
    training step, allocates tens of MB of temporaries; by default glibc hands those to ``mmap``
    and back every time, and the fresh pages' faults cost more than the arithmetic (``train`` on
    50 labels at the paper's size: about 2 s of system time instead of 10-33 s; see BENCHMARKS.md).
    Memory stays bounded by ``trim_threshold``. A no-op where glibc isn't the C library; returns
    whether both settings took.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, mmap_threshold)) and bool(
            libc.mallopt(m_trim_threshold, trim_threshold))
    except (OSError, AttributeError):
        return False


class _predictor:
    """Context manager giving ``predict_step(step, scan, model, title)`` with a progress bar,
    run here or on a Dask cluster (kept open across the steps of a series).

    Given the model's folder, each scan classified here goes the way ``ghostmap predict`` takes
    one scan (:func:`_classify`: ONNX Runtime on the CPU where the folder allows); else, and on a
    cluster, PyTorch classifies it.
    """

    def __init__(self, executor, scheduler, workers, batch_size, device, compile_mode="none", *,
                 model_dir: Path | None = None, engine: str = "auto", precision: str = "auto"):
        from .prediction import COMPILE_MODES

        if compile_mode not in COMPILE_MODES:
            raise typer.BadParameter(f"choose one of {', '.join(COMPILE_MODES)}, not '{compile_mode}'",
                                     param_hint="--compile")
        if executor == "dask" and compile_mode != "none":
            raise typer.BadParameter("applies to the local executor only", param_hint="--compile")
        self.executor, self.scheduler, self.workers = executor, scheduler, workers
        self.batch_size, self.device, self.compile = batch_size, device, compile_mode
        self.model_dir, self.engine, self.precision = model_dir, engine, precision
        self.client, self._context = None, None

    def __enter__(self):
        if self.executor == "dask":
            from .cluster import cluster_client

            self._context = cluster_client(self.scheduler, self.workers)
            self.client = self._context.__enter__()
            info = self.client.scheduler_info()
            console.print(f"Dask cluster at {info.get('address', self.scheduler)}: "
                          f"{len(info.get('workers', {}))} workers", highlight=False)
        return self.predict

    def __exit__(self, *exc):
        if self._context is not None:
            self._context.__exit__(*exc)

    def predict(self, step, scan, model, title, reader=None):
        reuse_freed_memory()  # this command's own process only: the library leaves the allocator alone
        if self.client is None and reader is None and self.model_dir is not None:
            return _classify(scan, self.model_dir, title, step=step,
                             with_torch=lambda started: self._with_torch(step, scan, model, title, started),
                             engine=self.engine, precision=self.precision, device=self.device,
                             compile_mode=self.compile, batch_size=self.batch_size)
        return self._with_torch(step, scan, model, title, reader)

    def _with_torch(self, step, scan, model, title, reader):
        from .prediction import predict as predict_scan

        with _progress() as progress:
            task = progress.add_task(title, total=scan.n_patterns, info="patterns")
            report = _ProgressThenImport(progress, task)
            if self.client is None:
                return predict_scan(scan, model, batch_size=self.batch_size, device=self.device, progress=report,
                                    compile=self.compile, reader=reader)
            from .cluster import predict_on_cluster

            return predict_on_cluster(step, model, client=self.client, batch_size=self.batch_size, progress=report)


def _predict_series(data, model, out_dir, predict_step, dataset, shape):
    from .series import predict_series, series_steps

    steps = series_steps(data, dataset=dataset, scan_shape=shape)
    out.print(f"series of {len(steps)} scans -> {out_dir}")

    def on_step(i, total, step, status):
        kept = ": already classified, kept" if status == "skipped" else ": done"
        out.print(f"step {i}/{total - 1} {Path(step.source).name}{kept}", highlight=False)

    writer = predict_series(steps, model, out_dir, on_step=on_step,
                            predict_step=lambda step, scan, m: predict_step(step, scan, m, f"step {steps.index(step)}"))
    _print_series(writer)


def _print_series(writer) -> None:
    import math

    arrays = writer.summary()
    classes = [str(c) for c in arrays["classes"]]
    out.print("step  " + "  ".join(f"{c:>10}" for c in classes) + "   changed  wall shift  source")
    for t, source in enumerate(arrays["sources"]):
        shift = arrays["wall_shift"][t]
        out.print(f"{t:>4}  " + "  ".join(f"{f:>10.1%}" for f in arrays["fractions"][t])
                  + f"  {int(arrays['changed'][t]):>8}  " + ("         -" if math.isnan(shift) else f"{shift:>10.2f}")
                  + f"  {Path(str(source)).name}", highlight=False)
    for name in ("series.npz", "series.csv", "fractions.png", "domain_maps.gif"):
        out.print(f"  {writer.out_dir / name}")


@app.command()
def watch(
    folder: Path = typer.Argument(..., help="Folder the acquisition software writes scans into."),
    model_dir: Path = typer.Option(..., "--model", help="Model folder written by 'ghostmap train'."),
    out_dir: Path = typer.Option(..., "--out", help="Series folder (as 'ghostmap predict' writes for several scans); resumed if it exists."),
    pattern: Optional[list[str]] = typer.Option(None, "--pattern", help="File names to take, e.g. '*.h5' (repeatable; default: every scan format)."),
    settle: float = typer.Option(2.0, "--settle", help="Seconds a file must stay unchanged before it is read."),
    poll: float = typer.Option(1.0, "--poll", help="Seconds between looks at the folder."),
    incomplete_after: float = typer.Option(600.0, "--incomplete-after", help="Skip (and report) a file that stays unreadable this long."),
    stop_after: Optional[int] = typer.Option(None, "--stop-after", help="Stop after this many new scans."),
    idle_exit: Optional[float] = typer.Option(None, "--idle-exit", help="Stop after this many seconds with nothing new."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda ... (default: CUDA if present)."),
    executor: str = typer.Option("local", "--executor", help="local (default) or dask."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Dask scheduler address; implies --executor dask."),
    workers: Optional[int] = typer.Option(None, "--workers"),
    dataset: Optional[str] = DatasetOpt,
    scan_shape: Optional[str] = ScanShapeOpt,
):
    """Classify each new scan in FOLDER as soon as it is completely written, growing a series (Ctrl+C stops; run again to resume)."""
    import signal

    from .model import Model
    from .watch import DEFAULT_PATTERNS, Watcher, WatchOptions

    for name, value in (("--settle", settle), ("--incomplete-after", incomplete_after)):
        if value < 0:
            raise typer.BadParameter("must not be negative", param_hint=name)
    if poll <= 0:
        raise typer.BadParameter("must be positive", param_hint="--poll")
    if executor not in ("local", "dask"):
        raise typer.BadParameter(f"choose local or dask, not '{executor}'", param_hint="--executor")
    model = Model.load(model_dir)
    options = WatchOptions(patterns=tuple(pattern) if pattern else DEFAULT_PATTERNS, settle=settle, poll=poll,
                           incomplete_after=incomplete_after, stop_after=stop_after, idle_exit=idle_exit,
                           dataset=dataset, scan_shape=_shape(scan_shape, "--scan-shape") if scan_shape else None)

    def report(event: str, text: str) -> None:
        style = {"done": "green", "rejected": "bold red", "changed": "yellow", "waiting": "dim"}.get(event)
        line = f"[{style}]{text}[/]" if style else text
        console.print(line, highlight=False)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # a service manager's stop finishes like Ctrl+C
    with _predictor("dask" if scheduler else executor, scheduler, workers, batch_size, device,
                    model_dir=model_dir) as predict_step:
        watcher = Watcher(folder, model, out_dir, options, report=report,
                          predict_step=lambda step, scan, m: predict_step(step, scan, m, f"classifying {step.path.name}"))
        done = len(watcher.writer)
        console.print(f"watching {folder} ({done} step{'' if done == 1 else 's'} already in {out_dir}); "
                      "Ctrl+C to stop", highlight=False)
        try:
            watcher.run()
        except KeyboardInterrupt:  # the usual way to stop watching
            console.print(f"stopped; {len(watcher.writer)} steps in {out_dir}", highlight=False)
    if len(watcher.writer):
        _print_series(watcher.writer)


@app.command()
def evaluate(
    out_dir: Path = typer.Argument(..., help="Folder (or predictions.npz) written by 'ghostmap predict'."),
    truth: Path = typer.Option(..., "--truth", help="Ground-truth labels (x,y,label)."),
    report_path: Optional[Path] = typer.Option(None, "--json", help="Where to write the report (default OUT_DIR/evaluation.json)."),
):
    """Accuracy, per-class recall and confusion matrix against ground-truth labels."""
    from .atomic import write_text
    from .evaluation import evaluate as evaluate_map
    from .evaluation import format_report
    from .labels import read_labels
    from .outputs import load_prediction

    result = load_prediction(out_dir)
    truth_labels = read_labels(truth, scan_shape=result.labels.shape)
    report = evaluate_map(result.label_names(), truth_labels, probabilities=result.probabilities)
    out.print(format_report(report))
    results = out_dir if out_dir.is_dir() else out_dir.parent
    target = report_path or results / "evaluation.json"
    write_text(target, json.dumps(report, indent=2) + "\n")
    out.print(f"report: {target}")
    if "reliability" in report:
        from .outputs import RELIABILITY_FILE, save_reliability_figure

        out.print(f"reliability diagram: {save_reliability_figure(results / RELIABILITY_FILE, report)}")


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("ghostmap-demo"), "--out", help="Folder for everything the demo writes."),
    budget: int = typer.Option(50, "--budget", help="Labels to spend."),
    scan: str = typer.Option("34x206", "--scan", help="Simulated scan size ROWSxCOLS."),
    detector: int = typer.Option(128, "--detector"),
    seed: int = typer.Option(0, "--seed"),
):
    """Run the whole loop on a simulated scan, the ground truth standing in for the person labelling."""
    from .demo import run_demo

    with _progress() as progress:
        task = progress.add_task("demo", total=None, info="")
        result = run_demo(out_dir, budget=budget, scan_shape=_shape(scan, "--scan"), detector=detector, seed=seed,
                          say=lambda text: progress.update(task, info=text))
    out.print(result["summary"])


@app.command()
def label(
    data: Optional[Path] = typer.Argument(None, help="The scan (leave out with --demo)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Label file (x,y,label), written after every label; created if absent."),
    budget: int = typer.Option(50, "--budget", help="Total number of labels the sampler aims for."),
    strategy: str = typer.Option("adaptive", "--strategy", help="adaptive (refine domain walls) or random."),
    step: Optional[int] = typer.Option(None, "--step", help="Coarse grid step (default: from scan size and budget)."),
    seed: int = typer.Option(0, "--seed"),
    classes: Optional[str] = typer.Option(None, "--classes", help="Class names, e.g. horizontal,vertical,none (default: the label file's, or those three)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to serve on; the default is reachable from this machine only."),
    port: int = typer.Option(8000, "--port", help="Port to serve on (0: any free port)."),
    open_browser: bool = typer.Option(False, "--open", help="Open the page in a web browser."),
    demo: bool = typer.Option(False, "--demo", help="Label the built-in simulated scan, kept in ghostmap-label-demo/."),
    dataset: Optional[str] = DatasetOpt,
    scan_shape: Optional[str] = ScanShapeOpt,
):
    """Label patterns in a local web page, guided by the adaptive sampler (needs the 'web' extra)."""
    try:
        from .webapp.app import LOCAL_HOSTS, create_app
        from .webapp.server import DEMO_DIR, bind, is_loopback, parse_classes, prepare_demo, serve, url_of
    except ImportError as exc:
        raise GhostmapError(f"the label app needs FastAPI and uvicorn ({exc}); install them with "
                            "pip install 'ghostmap[web]'") from None
    if demo == (data is not None):
        raise typer.BadParameter("give the scan DATA, or --demo for the built-in simulated scan", param_hint="DATA")
    if demo:
        data, demo_labels = prepare_demo(DEMO_DIR, say=lambda text: console.print(text, highlight=False))
        labels = labels or demo_labels
    if labels is None:
        raise typer.BadParameter("name the label file to write, e.g. --labels labels.csv", param_hint="--labels")
    sock = bind(host, port)
    reuse_freed_memory(*TRAINING_ALLOCATOR)  # this command's own process, where "Train and preview" trains
    try:
        with _open(data, dataset, scan_shape) as scan:
            console.print(f"preparing {data.name} (overview image, preprocessing) ...", highlight=False)
            web = create_app(scan, labels, classes=parse_classes(classes), budget=budget, strategy=strategy,
                             step=step, seed=seed, allowed_hosts=LOCAL_HOSTS if is_loopback(host) else None)
            for warning in web.state.session.warnings:
                console.print(f"[yellow]warning:[/] {warning}", highlight=False)
            if not is_loopback(host):
                console.print(f"[bold yellow]warning:[/] serving on {host}: anyone who can reach this machine can "
                              "see the scan and change the labels", highlight=False)
            url = url_of(sock, host)
            out.print(f"labelling {data.name} into {labels}: open {url} (Ctrl+C to stop)", highlight=False)
            try:
                serve(web, sock, url, open_browser=open_browser)
            except KeyboardInterrupt:  # uvicorn has shut down cleanly and re-raised the Ctrl+C
                pass
    finally:
        sock.close()
    n = len(web.state.session.labels)
    out.print(f"stopped; {n} label{'' if n == 1 else 's'} in {labels}", highlight=False)


@app.command()
def baseline(
    data: Path = typer.Argument(..., help="The scan."),
    method: str = typer.Option("vdf", "--method", help="vdf (virtual dark field on the ghost disks) or cluster (label-free PCA + k-means)."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for predictions.npz, domain_map.png, summary.png, baseline.npz."),
    apertures: Optional[Path] = typer.Option(None, "--apertures", help="vdf: JSON with 'horizontal' and 'vertical' [row, col] lists and 'radius' (default: found from the mean pattern)."),
    radius: Optional[float] = typer.Option(None, "--radius", help="vdf: aperture radius in detector pixels (default: the central disk's)."),
    k: int = typer.Option(3, "--k", help="cluster: number of clusters."),
    pool: int = typer.Option(3, "--pool", help="Pool k x k neighbouring probe positions (1 = off)."),
    descan: bool = typer.Option(True, "--descan/--no-descan", help="Follow the pattern's drift across the scan (central-disk position)."),
    seed: int = typer.Option(0, "--seed", help="cluster: k-means seed."),
    dataset: Optional[str] = DatasetOpt,
    scan_shape: Optional[str] = ScanShapeOpt,
):
    """Conventional baselines without labels: offset virtual dark field (vdf) or clustering, written like 'predict'."""
    from .baselines import METHODS, read_apertures, run_baseline, save_baseline

    if method not in METHODS:
        raise GhostmapError(f"unknown --method '{method}'; choose one of {', '.join(METHODS)}")
    if method == "vdf":
        options = {"radius": radius, "pool": pool, "descan": descan}
    else:
        if apertures is not None or radius is not None:
            raise GhostmapError("--apertures and --radius apply to --method vdf only")
        options = {"k": k, "pool": pool, "descan": descan, "seed": seed}
    with _open(data, dataset, scan_shape) as scan:
        if apertures is not None:
            options["apertures"] = read_apertures(apertures, scan.detector_shape, radius=radius)
        if method == "vdf":  # this command's own process: block buffers recycled, not page-faulted afresh
            reuse_freed_memory()  # (cluster: no faster with it, and 0.26 GB more resident)
        with _progress() as progress:
            task = progress.add_task(method, total=None, info="patterns")
            result = run_baseline(scan, method, **options,
                                  progress=lambda done, total: progress.update(task, completed=done, total=total))
    paths = save_baseline(out_dir, result, title=str(data.name))
    prediction = result.prediction
    out.print(f"{method} baseline on {prediction.labels.size} patterns: "
              f"{format_fractions(prediction.labels, prediction.classes)}")
    if method == "vdf":
        info = result.info
        out.print(f"{info['n_apertures'][0]} horizontal + {info['n_apertures'][1]} vertical apertures of radius "
                  f"{info['aperture_radius']:.2f} px; contrast split {info['separation']:.1f} noise widths apart")
    for p in paths.values():
        out.print(f"  {p}")


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1000
    return f"{n} B"


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning problems into one line on stderr and an exit code."""
    debug = os.environ.get("GHOSTMAP_DEBUG") == "1"
    if not debug:  # a library warning is one line for the user, not a file name and a source line
        import warnings

        warnings.showwarning = lambda message, category, *args, **kwargs: console.print(
            f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
    try:
        app(args=argv, standalone_mode=False, prog_name="ghostmap")
        return 0
    except GhostmapError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        code = 1
    except (typer.Exit, typer.Abort, KeyboardInterrupt) as exc:
        code = getattr(exc, "exit_code", None)
        if code is None:
            console.print("interrupted; files already on disk are unchanged", highlight=False)
            code = 130
    except MemoryError:
        console.print("[bold red]error:[/] out of memory", highlight=False)
        code = 1
    except OSError as exc:
        if debug:
            raise
        console.print(f"[bold red]error:[/] {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""),
                      highlight=False, soft_wrap=True)
        code = 1
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        if debug:
            raise
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # click's usage errors, as typer raises them
            if type(exc).__name__ == "NoArgsIsHelpError":
                out.print(exc.format_message(), highlight=False, markup=False)
                sys.exit(0)
            message = " ".join(str(exc.format_message()).split())
            console.print(f"[bold red]error:[/] {message} (see 'ghostmap --help')", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        console.print(f"[bold red]internal error[/] ({type(exc).__name__}): {str(exc).splitlines()[0] if str(exc) else ''}"
                      " — please report it; GHOSTMAP_DEBUG=1 shows the traceback", highlight=False, soft_wrap=True)
        code = 3
    sys.exit(code)


if __name__ == "__main__":
    main()
