#!/usr/bin/env python
"""The CPU cost of every step of `ghostmap predict`, per pattern, on one thread: a CPU budget.

On a machine of C cores, classifying N patterns at R patterns/s leaves C * N / R core-seconds
for everything: start-up, reading, binning, the network, the outputs. This script measures
each step alone, on one thread (torch and NumPy), over a few scan rows, and prints what the
steps cost for the whole scan beside that budget (the parts of the first step, in brackets,
are timed alone on rows read into memory first, and not counted), so one can see which target is reachable
before optimising. Run after benchmarks/benchmark.py (it uses that run's scan and model)::

    python benchmarks/profile_predict.py [SCAN.npy] [MODEL_DIR] [--rows 3] [--rate 2000] [--cores 2]
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads: every step on one thread

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ghostmap.analysis import bright_field_index  # noqa: E402
from ghostmap.counts import bin_counts  # noqa: E402
from ghostmap.inputs import pool_rows  # noqa: E402
from ghostmap.model import Model, export_onnx, fused_for_inference  # noqa: E402
from ghostmap.modelfile import read_description  # noqa: E402
from ghostmap.prediction import default_batch_size  # noqa: E402
from ghostmap.reading import open_scan  # noqa: E402
from ghostmap.runtime import OnnxNetwork  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"


def median_of(n, f):
    times, result = [], None
    for _ in range(n):
        start = time.perf_counter()
        result = f()
        times.append(time.perf_counter() - start)
    return sorted(times)[n // 2], result


def start_up_seconds(repeats: int = 3) -> tuple[float, float, float]:
    """Median seconds of fresh processes importing what ``ghostmap predict`` needs on the CPU
    (the command line, NumPy reading and inputs, ONNX Runtime), only what reading needs, and
    torch + ghostmap.prediction (the torch engine)."""
    def run(code):
        return median_of(repeats, lambda: subprocess.run([sys.executable, "-c", code], check=True))[0]

    return (run("import ghostmap.cli, ghostmap.counts, ghostmap.inputs, ghostmap.runtime, onnxruntime"),
            run("import ghostmap.counts, ghostmap.reading, ghostmap.modelfile"),
            run("import ghostmap.prediction, ghostmap.model"))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scan", nargs="?", default=DATA / "scan_34x206_det512_seed0.npy")
    p.add_argument("model", nargs="?", default=DATA / "models" / "compact-cpu")
    p.add_argument("--rows", type=int, default=3, help="scan rows timed (the middle of the scan)")
    p.add_argument("--batch", type=int, default=None, help="patterns per forward pass (default: predict's)")
    p.add_argument("--rate", type=float, default=2000.0, help="target patterns per second")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    scan, model = open_scan(args.scan), Model.load(args.model)
    prep = model.preprocessing
    counts = prep.count_reduction()
    n_rows, n_cols = scan.scan_shape
    r0 = max(0, n_rows // 2 - args.rows // 2)
    r1 = min(n_rows, r0 + args.rows)
    n = (r1 - r0) * n_cols
    bf = bright_field_index(scan)
    steps = {}
    where = scan.file_extent(r0, r1)
    if where is None:
        raise SystemExit(f"{args.scan}: rows {r0}-{r1 - 1} are not plain counts in the file; predict reads them otherwise")

    def read_and_reduce():
        with open(where[0], "rb", buffering=0) as file:
            return counts.reduce_file(file, where[1], n, scan.detector_shape, scan.dtype, bf)[0]

    steps["read, bin, repair, bright field"], reduced = median_of(args.repeats, read_and_reduce)
    # its parts, each alone on the rows read into memory first (not counted: the step above is what runs)
    parts = {}

    def from_memory_map():  # round three's way: the same steps on a memory map of each row
        for row in range(r0, r1):
            with scan.mapped_rows(row, row + 1) as rows:
                counts.reduce(rows[0])
                rows[0].reshape(n_cols, -1)[:, bf].sum(-1, dtype=np.float64)

    parts["the same from a memory map"], _ = median_of(args.repeats, from_memory_map)
    parts["read (file -> memory)"], raw = median_of(args.repeats, lambda: np.asarray(scan.read_rows(r0, r1)))
    flat = raw.reshape(n, *raw.shape[2:])
    parts["bright-field sums"], _ = median_of(
        args.repeats, lambda: [raw[i].reshape(n_cols, -1)[:, bf].sum(-1, dtype=np.float64) for i in range(len(raw))])
    b = prep.bin
    r0w, c0w, h, w = counts.window(scan.detector_shape)
    window = flat[:, r0w : r0w + h * b, c0w : c0w + w * b]
    parts["bin (integer sums)"], binned = median_of(args.repeats, lambda: bin_counts(window, b))
    parts[f"bad-pixel repair ({len(counts.bad_pixels)} pixels)"], _ = median_of(
        args.repeats, lambda: counts.repair(flat, binned.copy()))
    reduced = reduced.reshape(r1 - r0, n_cols, h, w)
    steps["pool across scan columns"], columns = median_of(args.repeats, lambda: counts.pool_columns(reduced))
    kept = dict(enumerate(columns))  # (cols, channels, h, w) per scan row
    half = prep.pool // 2
    steps["pool across scan rows"], pooled = median_of(
        args.repeats, lambda: pool_rows(kept, 0, len(reduced), 0, len(reduced), half, prep.pool_mode))
    finish = prep.finishing()
    steps["sqrt + normalise (finish)"], inputs = median_of(args.repeats, lambda: finish(pooled))
    x = torch.from_numpy(inputs).reshape(-1, prep.channels, h, w).contiguous(memory_format=torch.channels_last)

    def run(net):
        with torch.inference_mode():
            for i in range(0, n, args.batch):
                net(x[i : i + args.batch])

    args.batch = args.batch or default_batch_size(model.input_shape, network=model.network)
    plain = model.network.eval().to(memory_format=torch.channels_last)
    fused = fused_for_inference(model.network).to(memory_format=torch.channels_last)
    network_plain, _ = median_of(args.repeats, lambda: run(plain))
    network_torch, _ = median_of(args.repeats, lambda: run(fused))
    onnx = OnnxNetwork(export_onnx(model.network, model.input_shape), threads=1)
    # predict's default: the folder's int8 graph for this processor, where the model was trained with one
    int8 = OnnxNetwork.from_folder(args.model, read_description(args.model), threads=1, precision="int8")
    exact, _ = median_of(args.repeats, lambda: onnx.probabilities(inputs))
    if int8 is not None:
        steps["network (ONNX Runtime, int8)"], _ = median_of(args.repeats, lambda: int8.probabilities(inputs))
        network_float = exact
    else:
        steps["network (ONNX Runtime, float32)"], network_float = exact, None
    startup, reading_startup, torch_startup = start_up_seconds()

    total_patterns = n_rows * n_cols
    budget = args.cores * total_patterns / args.rate
    print(f"{n} patterns of {scan.detector_shape[0]} x {scan.detector_shape[1]} timed (scan rows {r0}-{r1 - 1}), "
          f"network input {h} x {w} in batches of {args.batch}, torch {torch.__version__}, one thread; "
          f"medians of {args.repeats}")
    print(f"{'step':38s} {'ms/pattern':>10s} {'core-s, whole scan':>19s}")
    whole = 0.0
    for name, seconds in steps.items():
        per = seconds / n
        whole += per * total_patterns
        print(f"{name:38s} {per * 1e3:10.3f} {per * total_patterns:19.2f}")
        if name.startswith("read, bin"):
            for part, part_seconds in parts.items():
                print(f"{'  (' + part + ')':38s} {part_seconds / n * 1e3:10.3f} {part_seconds / n * total_patterns:19.2f}")
    others = [("(network in torch, fused; not counted)", network_torch),
              ("(network in torch, unfused; not counted)", network_plain)]
    if network_float is not None:
        others.insert(0, ("(network, ONNX Runtime float32; not counted)", network_float))
    for name, seconds in others:
        print(f"{name:38s} {seconds / n * 1e3:10.3f} {seconds / n * total_patterns:19.2f}")
    print(f"{'start-up: predict with ONNX Runtime':38s} {'':10s} {startup:19.2f}")
    print(f"{'(start-up of reading alone)':38s} {'':10s} {reading_startup:19.2f}")
    print(f"{'(start-up with torch; not counted)':38s} {'':10s} {torch_startup:19.2f}")
    whole += startup
    print(f"{'total':38s} {'':10s} {whole:19.2f}")
    print(f"budget for {args.rate:,.0f} patterns/s on {args.cores} cores ({total_patterns} patterns): "
          f"{budget:.2f} core-s; the steps above need {whole / budget:.2f} x that, before the outputs")


if __name__ == "__main__":
    main()
