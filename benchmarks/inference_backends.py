#!/usr/bin/env python
"""Network-only throughput of the inference paths tried for `ghostmap predict` on the CPU.

Candidates, each run on the same preprocessed patterns, in the same process, interleaved
round by round (the order rotates every round, so drift in the machine's load hits all alike):

* ``eager``        — today's path: eval mode, channels-last, float32 (``prepare_network``);
* ``compile``      — ``torch.compile`` (inductor, CPU, static shapes) of that network;
* ``compile-freeze`` — the same with inductor's ``freezing`` (weights folded and pre-packed);
* ``bf16``         — eager under ``torch.autocast("cpu", dtype=torch.bfloat16)``;
* ``compile-bf16`` — ``torch.compile`` under bf16 autocast;
* ``jit-freeze``   — ``torch.jit.trace`` + ``torch.jit.optimize_for_inference`` (oneDNN fusions);
* ``onnx``         — exported with ``torch.onnx.export`` and run by ONNX Runtime (CPU provider).

``NAME@B`` runs candidate NAME with batches of B instead of ``--batch`` (``eager@256``, say).

Patterns go through :func:`ghostmap.prediction.classify` in blocks of one scan row, in batches
of ``--batch`` (default: the batch ``predict`` uses on the CPU), exactly as ``predict``
feeds them, so partial last batches are included. Reported: set-up seconds (building the
candidate plus its first pass: compilation, export, session creation), the median seconds
per pass over ``--rounds`` rounds, ms/pattern, the ratio to eager from the same rounds, and
how far its probabilities are from eager's (largest absolute difference, labels that differ).

With ``--end-to-end N`` it times instead whole ``ghostmap predict`` runs on the scan, N rounds
of one fresh process per ``compile`` mode of :func:`ghostmap.prediction.predict` (``--modes``),
interleaved: wall seconds of the process (start-up, model loading, compilation, reading,
preprocessing, classifying, writing predictions.npz and the figures) and its peak RSS.
``MODE@MB`` runs MODE with ``CPU_ACTIVATION_BUDGET`` set to MB megabytes; ``onnx`` and
``onnx-nospin`` (ONNX Runtime threads not spin-waiting) swap this script's ONNX Runtime
network into ``predict``, since ghostmap itself has no ONNX path.

    .venv/bin/python benchmarks/inference_backends.py                 # the benchmark's compact model and scan
    .venv/bin/python benchmarks/inference_backends.py --rows 2 --rounds 7 --candidates eager,compile,onnx
    .venv/bin/python benchmarks/inference_backends.py --end-to-end 5 --modes none,onnx,bf16,inductor
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ghostmap.model import Model, input_channels
from ghostmap.prediction import classify, default_batch_size, prepare_network

DATA = Path(__file__).resolve().parent / "data"
ALL = ("eager", "compile", "compile-freeze", "bf16", "compile-bf16", "jit-freeze", "onnx")


class Autocast(torch.nn.Module):
    """Run ``inner`` under CPU bf16 autocast; float32 logits out."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.inner(x).float()


class OnnxNetwork:
    """An ONNX Runtime session that :func:`classify` can call like a torch module."""

    def __init__(self, network, input_shape, threads, spin=True):
        import onnxruntime as ort

        buffer = io.BytesIO()
        example = torch.zeros(2, input_channels(network), *input_shape).contiguous(memory_format=torch.channels_last)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(network, (example,), buffer, input_names=["x"], output_names=["logits"],
                              dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}}, dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])

    def __call__(self, x):
        return torch.from_numpy(self.session.run(None, {"x": x.contiguous().numpy()})[0])


def build(name: str, model: Model):
    net = prepare_network(model, torch.device("cpu"))
    if name == "eager":
        return net
    if name == "compile":
        return torch.compile(net, dynamic=False)
    if name == "compile-freeze":
        return torch.compile(net, dynamic=False, options={"freezing": True})
    if name == "bf16":
        return Autocast(net)
    if name == "compile-bf16":
        return torch.compile(Autocast(net), dynamic=False)
    if name == "jit-freeze":
        example = torch.zeros(2, model.preprocessing.channels, *model.input_shape).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            return torch.jit.optimize_for_inference(torch.jit.trace(net, example))
    if name == "onnx":
        return OnnxNetwork(net, model.input_shape, torch.get_num_threads())
    raise SystemExit(f"unknown candidate {name}; choose from {', '.join(ALL)}")


END_TO_END = """
import json, resource, sys, time
start = time.perf_counter()
from ghostmap.model import Model
from ghostmap.outputs import save_prediction
from ghostmap.prediction import predict
from ghostmap.reading import open_scan
import ghostmap.prediction
scan_path, model_dir, out_dir, mode, here = sys.argv[1:6]
if "@" in mode:  # MODE@MB: a CPU activation budget of MB megabytes instead of the default
    mode, mb = mode.split("@")
    ghostmap.prediction.CPU_ACTIVATION_BUDGET = int(mb) * 2**20
if mode.startswith("onnx"):
    import torch
    sys.path.insert(0, here)
    from inference_backends import OnnxNetwork
    plain_prepare = ghostmap.prediction.prepare_network
    ghostmap.prediction.prepare_network = lambda model, device, compile=None: OnnxNetwork(
        plain_prepare(model, device), model.input_shape, torch.get_num_threads(), spin=mode != "onnx-nospin")
    mode = "none"
with open_scan(scan_path) as scan:
    result = predict(scan, Model.load(model_dir), batch_size=256, compile=None if mode == "none" else mode)
save_prediction(out_dir, result)
print(json.dumps({"seconds_inside": time.perf_counter() - start,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def end_to_end(args) -> None:
    """Whole predict runs, one process each, modes interleaved; like ``ghostmap predict`` (batch 256)."""
    import numpy as np

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    runs = {m: [] for m in modes}
    labels = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.end_to_end):
            for mode in modes[r % len(modes):] + modes[: r % len(modes)]:
                out = Path(tmp) / mode
                start = time.perf_counter()
                proc = subprocess.run([sys.executable, "-c", END_TO_END, str(args.scan), str(args.model), str(out), mode,
                                       str(Path(__file__).resolve().parent)],
                                      capture_output=True, text=True)
                seconds = time.perf_counter() - start
                if proc.returncode:
                    raise SystemExit(f"{mode} failed:\n{proc.stderr[-2000:]}")
                report = json.loads(proc.stdout.strip().splitlines()[-1])
                runs[mode].append((seconds, report["peak_rss"]))
                labels[mode] = np.load(out / "predictions.npz")["labels"]
                warned = [line for line in proc.stderr.splitlines() if "Warning" in line]
                print(f"  round {r + 1} {mode}: {seconds:.2f} s, peak RSS {report['peak_rss'] / 1e6:,.0f} MB"
                      + (f"  [{warned[0][:150]}]" if warned else ""), flush=True)
    n = labels[modes[0]].size
    ref = modes[0]
    print(f"\n{'mode':<10} {'median s':>9} {'patterns/s':>11} {'x ' + ref:>8} {'runs':<30} {'peak RSS MB':>12} {'labels differ':>14}")
    for mode in modes:
        secs = [t for t, _ in runs[mode]]
        ratios = [t / e for (t, _), (e, _) in zip(runs[mode], runs[ref])]
        med = statistics.median(secs)
        differ = int((labels[mode] != labels[ref]).sum())
        print(f"{mode:<10} {med:>9.2f} {n / med:>11,.0f} {statistics.median(ratios):>8.2f} "
              f"{', '.join(f'{t:.1f}' for t in secs):<30} {max(m for _, m in runs[mode]) / 1e6:>12,.0f} {differ:>7} of {n}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scan", type=Path, default=DATA / "scan_34x206_det512_seed0.npy")
    p.add_argument("--model", type=Path, default=DATA / "models" / "compact-cpu")
    p.add_argument("--rows", type=int, default=2, help="scan rows of real patterns to classify per pass (default 2)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: default_batch_size of the input)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--candidates", default=",".join(ALL))
    p.add_argument("--end-to-end", type=int, default=0, metavar="N",
                   help="time N rounds of whole predict runs per compile mode instead")
    p.add_argument("--modes", default="none,onnx,bf16,inductor", help="compile modes for --end-to-end")
    args = p.parse_args()
    if args.end_to_end:
        return end_to_end(args)
    model = Model.load(args.model)
    batch = args.batch or default_batch_size(model.input_shape, network=model.network)  # as predict's on the CPU
    if args.scan.is_file():
        from ghostmap.preprocessing import stream_rows
        from ghostmap.reading import open_scan

        with open_scan(args.scan) as scan:
            blocks = [x.reshape(-1, model.preprocessing.channels, *model.input_shape) for _, _, x in
                      stream_rows(scan, model.preprocessing, 0, args.rows, rows_per_block=1)]
        source = f"{args.rows} scan rows of {args.scan.name}"
    else:  # no benchmark scan: random inputs of the same size (speed only)
        blocks = [torch.randn(206, model.preprocessing.channels, *model.input_shape) for _ in range(args.rows)]
        source = f"{args.rows} blocks of 206 random inputs"
    n = sum(b.shape[0] for b in blocks)
    cpu = torch.device("cpu")

    def run(net, size):
        return np.concatenate([classify(net, b, size, cpu) for b in blocks])

    names = [c.strip() for c in args.candidates.split(",") if c.strip()]
    sizes = {name: int(name.split("@")[1]) if "@" in name else batch for name in names}
    print(f"{model.arch} network, input {model.input_shape}, batch {batch}, {n} patterns ({source}); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"oneDNN bf16 supported: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}", flush=True)
    nets, setup, first = {}, {}, {}
    for name in names:
        start = time.perf_counter()
        try:
            nets[name] = build(name.split("@")[0], model)
            first[name] = run(nets[name], sizes[name])
        except Exception as exc:  # report and go on: a candidate that fails is a result too
            print(f"  {name}: FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", flush=True)
            nets.pop(name, None)
            continue
        setup[name] = time.perf_counter() - start
        print(f"  {name}: set-up + first pass {setup[name]:.2f} s", flush=True)
    times = {name: [] for name in nets}
    order = list(nets)
    for r in range(args.rounds):
        for name in order[r % len(order):] + order[: r % len(order)]:
            start = time.perf_counter()
            run(nets[name], sizes[name])
            times[name].append(time.perf_counter() - start)
    ref = "eager" if "eager" in nets else order[0]
    print(f"\n{'candidate':<18} {'set-up s':>9} {'median s':>9} {'ms/pattern':>11} {'x ' + ref:>9} "
          f"{'ratio range':>14} {'max |dp|':>9} {'labels differ':>13}")
    for name in order:
        med = statistics.median(times[name])
        ratios = [t / e for t, e in zip(times[name], times[ref])]
        diff = float(np.abs(first[name] - first[ref]).max())
        differ = int((first[name].argmax(1) != first[ref].argmax(1)).sum())
        print(f"{name:<18} {setup[name]:>9.2f} {med:>9.3f} {med / n * 1000:>11.3f} {statistics.median(ratios):>9.2f} "
              f"{min(ratios):>6.2f}-{max(ratios):<6.2f} {diff:>9.1e} {differ:>6} of {n}")


if __name__ == "__main__":
    main()
