#!/usr/bin/env python
"""How fast is ghostmap, how much memory does it use, and how good are its maps?

One run of this script, on a simulated scan the size of the paper's (34 x 206 patterns of
512 x 512 uint16 counts, 3.7 GB per file):

1. simulates the scan once into ``--workdir`` as ``.npy`` and as chunked HDF5, with its
   ground truth (reused by later runs while the parameters and the simulator are unchanged;
   a JSON sidecar beside each file records them);
2. labels ``--labels`` positions from the truth with ghostmap's adaptive sampling loop;
3. trains the default (``compact``) and the paper's network with ``ghostmap train``,
   timed, and scores each map against the truth with ``ghostmap evaluate`` (accuracy on
   all positions and on domain-wall positions);
4. for each file format measures patterns/s and peak RSS of:
   a. a bare read pass (read blocks of scan rows, sum each pattern): the floor;
   b. ``ghostmap predict`` with the compact model, end to end;
   c. ``ghostmap predict`` with the paper model;
   d. a naive loop like the paper authors' code (one pattern at a time: read, preprocess,
      paper network on a batch of 1), timed on the first ``--naive-patterns`` patterns and
      extrapolated to the whole scan;
5. prints a table and writes it, with the machine and the command, into BENCHMARKS.md
   between ``<!-- benchmark:start -->`` and ``<!-- benchmark:end -->``.

Every measured step runs in its own child process (as a user would run it, so times include
interpreter start-up and imports); peak RSS is that process's ``ru_maxrss``. Each is run
``--repeats`` times and the median time is reported. The page cache is warmed by one
unmeasured read pass per file first, so all runs read from memory, not from the disk.

Run it (from the repository root; ``make benchmark`` does the first)::

    .venv/bin/python benchmarks/benchmark.py                    # the full benchmark, ~8 GB of disk
    .venv/bin/python benchmarks/benchmark.py --scan 4x206 --detector 256 --repeats 1 \\
        --labels 30 --write /tmp/B.md                           # a quick check
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from markdown_section import put_section

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"
FORMATS = ("npy", "h5")
ARCHS = ("compact", "paper")
# what each engine of the throughput table adds to `ghostmap predict`
ENGINES = {"onnx": ("--engine", "onnx"), "onnx-int8": ("--engine", "onnx", "--precision", "int8"),
           "onnx-float32": ("--engine", "onnx", "--precision", "float32"), "torch": ("--engine", "torch")}


# ----------------------------------------------------------------------------- options


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scan", default="34x206", help="scan size ROWSxCOLS (default: the paper's 34x206)")
    p.add_argument("--detector", type=int, default=512, help="detector size N (N x N pixels; default 512)")
    p.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "data",
                   help="where the scans, labels, models and predictions go (default benchmarks/data)")
    p.add_argument("--labels", type=int, default=50, help="label budget (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--formats", default="npy,h5", help="comma-separated file formats: npy, h5 (default both)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each measured step; medians reported (default 3)")
    p.add_argument("--skip-naive", action="store_true", help="skip the naive one-pattern-at-a-time loop")
    p.add_argument("--skip-baselines", action="store_true", help="skip the conventional baselines (vdf, cluster)")
    p.add_argument("--archs", default=",".join(ARCHS), help="networks to train and time (default compact,paper)")
    p.add_argument("--reuse-models", action="store_true",
                   help="use models already in --workdir/models instead of training (their training is not re-timed)")
    p.add_argument("--naive-patterns", type=int, default=300,
                   help="patterns the naive loop is timed on before extrapolating (default 300)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: ghostmap's; for quick checks)")
    p.add_argument("--paper-epochs", type=int, default=None,
                   help="training epochs for the paper network only (its 400 default epochs take long on a CPU)")
    p.add_argument("--write", type=Path, default=ROOT / "BENCHMARKS.md",
                   help="Markdown file to update (default BENCHMARKS.md)")
    p.add_argument("--engines", default="onnx,onnx-int8,onnx-float32,torch",
                   help="predict's engines timed on the CPU, side by side: onnx (its default: the int8 graph with "
                        "AVX-512, else float32), onnx-int8 (--precision int8), onnx-float32 (--precision float32), "
                        "torch (default: all four)")
    p.add_argument("--device", default=None,
                   help="comma-separated devices, e.g. cpu or cpu,cuda (default: cpu, plus cuda if available)")
    args = p.parse_args(argv)
    try:
        rows, cols = (int(v) for v in args.scan.lower().split("x"))
    except ValueError:
        p.error(f"--scan must look like ROWSxCOLS, got {args.scan!r}")
    if rows < 2 or cols < 2:
        p.error("--scan needs at least 2 x 2 positions")
    args.scan_shape = (rows, cols)
    args.formats = [f.strip().lower() for f in args.formats.split(",") if f.strip()]
    args.archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not args.engines or set(args.engines) - set(ENGINES):
        p.error(f"--engines takes {', '.join(ENGINES)}; got {args.engines}")
    if not args.archs or set(args.archs) - set(ARCHS):
        p.error(f"--archs takes {', '.join(ARCHS)}; got {args.archs}")
    unknown = sorted(set(args.formats) - set(FORMATS))
    if unknown or not args.formats:
        p.error(f"--formats takes {', '.join(FORMATS)}; got {args.formats}")
    if args.repeats < 1 or args.labels < 4 or args.naive_patterns < 1:
        p.error("--repeats and --naive-patterns must be at least 1, --labels at least 4")
    return args


def pick_devices(text: str | None) -> list[str]:
    import torch

    if text:
        return [d.strip() for d in text.split(",") if d.strip()]
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run, every option spelled out."""
    parts = ["python", "benchmarks/benchmark.py", "--scan", args.scan, "--detector", str(args.detector),
             "--labels", str(args.labels), "--seed", str(args.seed), "--formats", ",".join(args.formats),
             "--repeats", str(args.repeats)]
    parts += ["--skip-naive"] if args.skip_naive else ["--naive-patterns", str(args.naive_patterns)]
    parts += ["--skip-baselines"] if args.skip_baselines else []
    parts += ["--archs", ",".join(args.archs)] if args.archs != list(ARCHS) else []
    parts += ["--reuse-models"] if args.reuse_models else []
    if args.epochs:
        parts += ["--epochs", str(args.epochs)]
    if args.paper_epochs:
        parts += ["--paper-epochs", str(args.paper_epochs)]
    parts += ["--device", ",".join(args.devices)]
    return shlex.join(parts)


# ------------------------------------------------------------------ measured children


def child_main(argv: list[str]) -> None:
    """The script's own child modes: ``_measure -- CMD...``, ``_read PATH``, ``_naive PATH MODEL N DEVICE``."""
    mode, rest = argv[0], argv[1:]
    if mode == "_measure":
        print(json.dumps(measure_child(rest[1:] if rest[:1] == ["--"] else rest)))
    elif mode == "_read":
        print(json.dumps(read_pass(rest[0])))
    elif mode == "_naive":
        print(json.dumps(naive_loop(rest[0], rest[1], int(rest[2]), rest[3])))
    else:
        sys.exit(f"unknown mode {mode}")


def measure_child(cmd: list[str]) -> dict:
    """Run ``cmd``, its only child: its wall time and peak RSS (``RUSAGE_CHILDREN`` is exactly its own)."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    rss_bytes = maxrss if sys.platform == "darwin" else maxrss * 1024  # Linux reports KiB
    return {"seconds": seconds, "peak_rss": rss_bytes, "returncode": proc.returncode,
            "stdout": proc.stdout, "stderr": proc.stderr}


def read_pass(path: str) -> dict:
    """One sequential pass over the scan, in blocks of rows, summing every pattern: the floor.

    This process imports NumPy, h5py and :mod:`ghostmap.reading` and nothing else (no PyTorch,
    which would add the very start-up cost the floor is measured against).
    """
    import numpy as np

    from ghostmap.reading import open_scan, rows_per_block

    start = time.perf_counter()
    with open_scan(path) as scan:
        total = 0
        for _, block in scan.iter_rows(rows_per_block(scan, 32 * 2**20)):  # predict's block size
            total += int(block.sum(axis=(2, 3), dtype=np.int64).sum())
        n = scan.n_patterns
    return {"patterns": n, "loop_seconds": time.perf_counter() - start, "checksum": total,
            "torch_imported": "torch" in sys.modules}


def naive_loop(path: str, model_dir: str, limit: int, device: str) -> dict:
    """The paper authors' way: for each pattern, read it, preprocess it, classify a batch of one."""
    import torch

    from ghostmap.model import Model
    from ghostmap.reading import open_scan

    model = Model.load(model_dir)
    network = model.network.to(device).eval()
    prep = model.preprocessing
    with open_scan(path) as scan, torch.no_grad():
        rows, cols = scan.scan_shape
        done = min(limit, scan.n_patterns)
        for i in range(done):
            if i == 1:  # the first pattern pays one-off set-up costs; time the steady rate after it
                start = time.perf_counter()
            pattern = scan.read_pattern(i // cols, i % cols)
            x = prep.apply(pattern[None]).unsqueeze(1).to(device)
            int(network(x).argmax(1)[0])  # wait for the answer, as a per-pattern loop does
        loop = time.perf_counter() - start if done > 1 else 0.0
        n = scan.n_patterns
    return {"patterns": done, "timed_patterns": done - 1, "loop_seconds": loop, "total_patterns": n}


@dataclass
class Run:
    seconds: float
    peak_rss: int
    report: dict = field(default_factory=dict)  # the JSON a child mode printed, if any


def measured(cmd: list[str], what: str) -> Run:
    """Run ``cmd`` in a fresh wrapper process; its wall time, peak RSS and JSON output."""
    env = {k: v for k, v in os.environ.items() if k != "GHOSTMAP_PROGRESS"}
    wrapper = subprocess.run([sys.executable, str(Path(__file__).resolve()), "_measure", "--", *cmd],
                             capture_output=True, text=True, env=env)
    if wrapper.returncode != 0:
        raise SystemExit(f"{what}: the measuring wrapper failed:\n{wrapper.stderr}")
    result = json.loads(wrapper.stdout)
    if result["returncode"] != 0:
        tail = "\n".join((result["stderr"] or result["stdout"]).strip().splitlines()[-15:])
        raise SystemExit(f"{what} failed (exit {result['returncode']}): {shlex.join(cmd)}\n{tail}")
    report = {}
    lines = result["stdout"].strip().splitlines()
    if lines and lines[-1].startswith("{"):
        report = json.loads(lines[-1])
    return Run(result["seconds"], result["peak_rss"], report)


def ghostmap_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ghostmap.cli", *args]


def self_cmd(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


# ------------------------------------------------------------------------- the data


def simulator_hash() -> str:
    import ghostmap.simulate

    return hashlib.sha256(Path(ghostmap.simulate.__file__).read_bytes()).hexdigest()[:16]


def simulated_scan(args: argparse.Namespace, fmt: str, say) -> Path:
    """The scan file for ``fmt``, simulated now unless a matching one is already there."""
    from ghostmap.simulate import write_simulated_scan, write_truth_csv

    rows, cols = args.scan_shape
    stem = f"scan_{rows}x{cols}_det{args.detector}_seed{args.seed}"
    path = args.workdir / f"{stem}.{fmt}"
    truth_path = args.workdir / f"{stem}_truth.csv"
    sidecar = path.with_name(path.name + ".json")
    wanted = {"scan_shape": [rows, cols], "detector": args.detector, "seed": args.seed, "format": fmt,
              "simulator_sha256": simulator_hash()}
    if path.is_file() and truth_path.is_file() and sidecar.is_file():
        try:
            stored = json.loads(sidecar.read_text())
        except ValueError:
            stored = {}
        if {k: stored.get(k) for k in wanted} == wanted and stored.get("bytes") == path.stat().st_size:
            say(f"reusing {path}")
            return path
    say(f"simulating {rows} x {cols} patterns of {args.detector} x {args.detector} into {path}")
    start = time.perf_counter()
    truth = write_simulated_scan(path, (rows, cols), args.detector, seed=args.seed)
    write_truth_csv(truth_path, truth)
    seconds = time.perf_counter() - start
    sidecar.write_text(json.dumps({**wanted, "bytes": path.stat().st_size, "seconds": round(seconds, 1)}, indent=2))
    say(f"  simulated in {seconds:.0f} s")
    return path


def truth_of(scan_path: Path, shape: tuple[int, int]):
    from ghostmap.labels import read_labels, truth_map

    truth_path = scan_path.with_name(scan_path.stem + "_truth.csv")
    return truth_path, truth_map(read_labels(truth_path, scan_shape=shape), shape)


def make_labels(args: argparse.Namespace, truth) -> tuple[Path, int, int]:
    """Label positions from the truth with the adaptive loop; the CSV path, labels and rounds."""
    from ghostmap.demo import label_loop
    from ghostmap.labels import write_labels

    labels, rounds = label_loop(truth, args.labels, seed=args.seed)
    path = args.workdir / "labels.csv"
    write_labels(path, labels)
    return path, len(labels), rounds


# --------------------------------------------------------------------------- the steps


@dataclass
class Row:
    step: str
    fmt: str
    device: str
    patterns: int
    seconds: float  # median, whole process (extrapolated for the naive loop)
    peak_rss: int  # the largest over the repeats
    note: str = ""


def median_run(runs: list[Run]) -> tuple[float, int]:
    return statistics.median(r.seconds for r in runs), max(r.peak_rss for r in runs)


def train_models(args, scan_path: Path, labels_path: Path, truth_path: Path, device: str, say) -> list[dict]:
    """Train both architectures once on ``device``; time each and score its map against the truth."""
    results = []
    for arch in args.archs:
        model_dir = args.workdir / "models" / f"{arch}-{device}"
        cmd = ghostmap_cmd("train", str(scan_path), "--labels", str(labels_path), "--out", str(model_dir),
                           "--arch", arch, "--seed", str(args.seed), "--device", device)
        epochs = args.paper_epochs if arch == "paper" and args.paper_epochs else args.epochs
        if epochs:
            cmd += ["--epochs", str(epochs)]
        if args.reuse_models and (model_dir / "model.json").is_file():
            say(f"reusing {model_dir} (training not re-timed)")
            run = Run(float("nan"), 0)
        else:
            say(f"training {arch} on {device}")
            run = measured(cmd, f"training {arch}")
        metrics = json.loads((model_dir / "model.json").read_text())["metrics"]
        out_dir = args.workdir / "predictions" / f"{arch}-{device}-eval"
        measured(ghostmap_cmd("predict", str(scan_path), "--model", str(model_dir), "--out", str(out_dir),
                              "--device", device), f"predicting with {arch}")
        measured(ghostmap_cmd("evaluate", str(out_dir), "--truth", str(truth_path)), f"evaluating {arch}")
        report = json.loads((out_dir / "evaluation.json").read_text())
        results.append({"arch": arch, "device": device, "seconds": run.seconds, "peak_rss": run.peak_rss,
                        "epochs": metrics["epochs"], "best_epoch": metrics["best_epoch"],
                        "accuracy": report["accuracy"], "wall_accuracy": report.get("wall_accuracy"),
                        "model": model_dir, "predictions": out_dir})
        say(f"  {run.seconds:.1f} s, accuracy {report['accuracy']:.1%}, walls {report.get('wall_accuracy') or 0:.1%}")
    return results


def bench_read(args, path: Path, fmt: str, say) -> tuple[Row, float]:
    """The bare read pass, and (second) the median seconds of its loop alone, start-up excluded."""
    runs = []
    for i in range(args.repeats):
        runs.append(measured(self_cmd("_read", str(path)), f"read pass {fmt}"))
        say(f"read pass {fmt} {i + 1}/{args.repeats}: {runs[-1].seconds:.2f} s")
    if any(r.report.get("torch_imported") for r in runs):
        raise SystemExit("the read pass imported torch: it would no longer be a bare floor")
    seconds, rss = median_run(runs)
    loop = statistics.median(r.report["loop_seconds"] for r in runs)
    return Row("read pass (floor)", fmt, "-", runs[0].report["patterns"], seconds, rss), loop


def with_onnx_graph(model_dir: Path, say) -> None:
    """Give a model folder saved before model.onnx existed its graph (same weights), so that
    --reuse-models times ONNX Runtime too; not timed."""
    if not (model_dir / "model.onnx").is_file():
        say(f"adding model.onnx to {model_dir} (same weights)")
        measured([sys.executable, "-c", f"from ghostmap import Model; Model.load({str(model_dir)!r}).save({str(model_dir)!r})"],
                 "re-saving the model")
    if not (model_dir / "model_int8.onnx").is_file():  # its ranges come from the training scan: only train makes it
        say(f"{model_dir} has no int8 graph (saved before ghostmap made one): the onnx rows run float32; retrain for int8")


def bench_predict(args, path: Path, fmt: str, model: dict, engine: str, say) -> tuple[Row, Path]:
    arch, device = model["arch"], model["device"]
    out_dir = args.workdir / "predictions" / f"{arch}-{device}-{engine}-{fmt}"
    runs = []
    for i in range(args.repeats):
        runs.append(measured(ghostmap_cmd("predict", str(path), "--model", str(model["model"]), "--out", str(out_dir),
                                          "--device", device, *ENGINES[engine]), f"predict {arch} {engine} {fmt}"))
        say(f"predict {arch} {fmt} {device} {engine} {i + 1}/{args.repeats}: {runs[-1].seconds:.2f} s")
    seconds, rss = median_run(runs)
    rows, cols = args.scan_shape
    return Row(f"ghostmap predict, {arch}, {engine}", fmt, device, rows * cols, seconds, rss), out_dir


def bench_baseline(args, path: Path, fmt: str, method: str, say) -> tuple[Row, Path]:
    """``ghostmap baseline --method METHOD`` end to end, as a user runs it."""
    out_dir = args.workdir / "predictions" / f"baseline-{method}-{fmt}"
    runs = []
    for i in range(args.repeats):
        runs.append(measured(ghostmap_cmd("baseline", str(path), "--method", method, "--out", str(out_dir)),
                             f"baseline {method} {fmt}"))
        say(f"baseline {method} {fmt} {i + 1}/{args.repeats}: {runs[-1].seconds:.2f} s")
    seconds, rss = median_run(runs)
    rows, cols = args.scan_shape
    return Row(f"ghostmap baseline --method {method}", fmt, "cpu", rows * cols, seconds, rss), out_dir


def bench_naive(args, path: Path, fmt: str, model: dict, say) -> Row:
    device = model["device"]
    runs = []
    for i in range(args.repeats):
        runs.append(measured(self_cmd("_naive", str(path), str(model["model"]), str(args.naive_patterns), device),
                             f"naive loop {fmt}"))
        say(f"naive loop {fmt} {device} {i + 1}/{args.repeats}: {runs[-1].seconds:.2f} s")
    # whole-scan time = this run's wall time + the patterns it left out at its steady per-pattern rate
    estimates = []
    for r in runs:
        rep = r.report
        rate = rep["loop_seconds"] / max(rep["timed_patterns"], 1)
        estimates.append(r.seconds + rate * (rep["total_patterns"] - rep["patterns"]))
    done, total = runs[0].report["patterns"], runs[0].report["total_patterns"]
    note = f"timed on the first {done:,} of {total:,} patterns, extrapolated" if done < total else ""
    return Row("naive loop, paper", fmt, device, total, statistics.median(estimates),
               max(r.peak_rss for r in runs), note)


def engine_comparison(engine_dirs: dict[tuple, Path]) -> str:
    """A sentence on how the int8 and float32 engines' predictions of the same scan differ."""
    parts = []
    for (arch, device, engine), out_dir in engine_dirs.items():
        exact = engine_dirs.get((arch, device, "onnx-float32")) or engine_dirs.get((arch, device, "torch"))
        if engine == "onnx-int8" and exact is not None:
            n, dp = label_differences(out_dir, exact)
            parts.append(f"{arch} on {device}: the int8 graph's labels differ from the float32 network's at {n} "
                         f"positions, its probabilities by at most {dp:.3f}")
        if engine == "torch" and (arch, device, "onnx-float32") in engine_dirs:
            n, dp = label_differences(out_dir, engine_dirs[(arch, device, "onnx-float32")])
            parts.append(f"float32 in ONNX Runtime against PyTorch: {n} labels differ, probabilities by at most {dp:.1e}")
    return "; ".join(parts) + "." if parts else ""


def label_differences(a: Path, b: Path) -> tuple[int, float]:
    """Positions whose labels differ between two predictions.npz, and the largest probability difference."""
    import numpy as np

    with np.load(a / "predictions.npz") as x, np.load(b / "predictions.npz") as y:
        return (int((x["labels"] != y["labels"]).sum()),
                float(np.abs(x["probabilities"] - y["probabilities"]).max()))


def same_predictions(dirs: list[Path]) -> bool:
    """Whether every predictions.npz in ``dirs`` holds the same labels."""
    import numpy as np

    labels = [np.load(d / "predictions.npz")["labels"] for d in dirs]
    return all(np.array_equal(labels[0], other) for other in labels[1:])


# ------------------------------------------------------------------------ the machine


def machine_info(devices: list[str]) -> dict:
    import h5py
    import numpy
    import torch

    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == (platform.processor() or platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    if flags:  # the same model name covers processors with and without AVX-512, which predict's graphs depend on
        cpu += f" ({vector_extensions(flags)})"
    ram = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    thread_env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ}
    return {"cpu": cpu, "cores": os.cpu_count(), "ram": ram, "gpu": gpu, "os": platform.platform(),
            "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None, "thread_env": thread_env,
            "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "numpy": numpy.__version__, "h5py": h5py.__version__, "commit": commit, "devices": devices}


def vector_extensions(flags: set[str]) -> str:
    """The vector instructions that decide which of predict's graphs runs and how fast, in words."""
    if "avx512f" in flags:
        return "AVX-512" + (" with VNNI" if "avx512_vnni" in flags else "")
    if "avx2" in flags:
        return "AVX2" + (" with VNNI" if "avx_vnni" in flags else "") + ", no AVX-512"
    return "no AVX2"


# ------------------------------------------------------------------------- reporting


@dataclass
class Table:
    title: str
    head: list[str]
    body: list[list[str]]
    footnotes: list[str] = field(default_factory=list)


def mb(n: int) -> str:
    return f"{n / 1e6:,.0f}"


def pct(v) -> str:
    return "-" if v is None else f"{v:.1%}"


def throughput_table(rows: list[Row], floor: dict[str, float]) -> Table:
    head = ["step", "format", "device", "patterns/s", "seconds", "x read pass", "peak RSS (MB)"]
    body, notes = [], []
    for r in rows:
        name = r.step
        if r.note:
            if r.note not in notes:
                notes.append(r.note)
            name += f" [{notes.index(r.note) + 1}]"
        if not r.patterns:  # start-up: seconds only
            body.append([name, r.fmt, r.device, "-", f"{r.seconds:,.2f}", "-", "-"])
            continue
        ratio = r.seconds / floor[r.fmt] if floor.get(r.fmt) else float("nan")
        body.append([name, r.fmt, r.device, f"{r.patterns / r.seconds:,.1f}", f"{r.seconds:,.2f}",
                     f"{ratio:,.1f}", mb(r.peak_rss)])
    return Table("Throughput (medians)", head, body, [f"[{i + 1}] {n}" for i, n in enumerate(notes)])


def training_table(models: list[dict]) -> Table:
    head = ["network", "device", "train seconds", "epochs (best)", "peak RSS (MB)", "accuracy, all positions",
            "accuracy, domain walls"]
    body = [[m["arch"], m["device"], "not re-timed" if m["seconds"] != m["seconds"] else f"{m['seconds']:.1f}",
             f"{m['epochs']} ({m['best_epoch']})", mb(m["peak_rss"]) if m["peak_rss"] else "-",
             pct(m["accuracy"]), pct(m["wall_accuracy"])] for m in models]
    return Table("Training and accuracy", head, body)


def markdown_table(head: list[str], body: list[list[str]]) -> str:
    numeric = [i for i in range(len(head)) if all(_is_number(row[i]) for row in body)]
    align = ["---:" if i in numeric else "---" for i in range(len(head))]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", "").split(" ")[0].rstrip("%"))
        return True
    except ValueError:
        return text == "-"


def print_tables(tables: list[Table]) -> None:
    try:
        from rich import box
        from rich.console import Console
        from rich.table import Table as RichTable
    except ImportError:
        for t in tables:
            print("\n".join([f"\n{t.title}", markdown_table(t.head, t.body), *t.footnotes]))
        return
    console = Console()
    if not console.is_terminal:
        console = Console(width=130)
    for t in tables:
        table = RichTable(title=t.title, title_justify="left", box=box.SIMPLE_HEAD,
                          caption="\n".join(t.footnotes) or None, caption_justify="left")
        for h in t.head:
            table.add_column(h, justify="left" if h in ("step", "format", "device", "network") else "right")
        for row in t.body:
            table.add_row(*row)
        console.print(table)


def markdown_section(args, info: dict, data: dict, tables: list[Table], notes: list[str]) -> str:
    rows, cols = args.scan_shape
    ram = f"{info['ram'] / 2**30:.0f} GiB" if info["ram"] else "unknown"
    parts = [
        START,
        "## Benchmark",
        "",
        f"Measured {dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')} at commit "
        f"`{info['commit'] or 'unknown'}`. Reproduce with:",
        "",
        "```sh",
        command_line(args),
        "```",
        "",
        f"- **Machine:** {info['cpu']}, {info['cores']} logical cores, {ram} RAM; "
        f"GPU: {info['gpu'] or 'none'}; {info['os']}; load average {info['load_start']:.2f} at the start, "
        f"{info['load_end']:.2f} at the end",
        f"- **Software:** Python {info['python']}, torch {info['torch']} ({info['threads']} threads"
        + "".join(f", {k}={v}" for k, v in info["thread_env"].items()) + "), "
        f"numpy {info['numpy']}, h5py {info['h5py']}",
        f"- **Scan:** simulated, {rows} x {cols} = {rows * cols:,} patterns of {args.detector} x {args.detector} "
        f"uint16 ({data['nbytes'] / 1e9:.2f} GB per file); .npy memory-mapped, HDF5 chunked one scan row per chunk, "
        "uncompressed",
        f"- **Labels:** {data['n_labels']} from the ground truth by adaptive sampling ({data['rounds']} rounds), "
        f"seed {args.seed}",
        "",
    ]
    for t in tables:
        parts += [f"**{t.title}**", "", markdown_table(t.head, t.body), ""]
        parts += [f"{n}  " for n in t.footnotes] + ([""] if t.footnotes else [])
    parts += ["How it was measured:", ""] + [f"- {n}" for n in notes] + ["", END]
    return "\n".join(parts) + "\n"


def main(argv: list[str]) -> None:
    from ghostmap.runtime import has_avx512

    args = parse_args(argv)
    args.devices = pick_devices(args.device)
    args.workdir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()

    def say(text: str) -> None:
        print(f"[{time.perf_counter() - began:7.1f} s] {text}", file=sys.stderr, flush=True)

    info = machine_info(args.devices)
    info["load_start"] = info["load"] or 0.0
    if info["load_start"] > 0.25 * (os.cpu_count() or 1):
        say(f"warning: load average {info['load_start']:.2f} on {os.cpu_count()} cores; "
            "other work will skew the timings")
    paths = {fmt: simulated_scan(args, fmt, say) for fmt in args.formats}
    first = paths[args.formats[0]]
    truth_path, truth = truth_of(first, args.scan_shape)
    labels_path, n_labels, rounds = make_labels(args, truth)
    say(f"{n_labels} labels in {rounds} rounds -> {labels_path}")

    models = []
    for device in args.devices:
        models += train_models(args, first, labels_path, truth_path, device, say)

    for fmt, path in paths.items():  # warm the page cache: every measured run reads from memory
        measured(self_cmd("_read", str(path)), f"warm-up read {fmt}")
    say("page cache warmed")

    startup = statistics.median(measured([sys.executable, "-c", "import ghostmap.prediction"], "import ghostmap.prediction").seconds
                                for _ in range(args.repeats))
    bare = statistics.median(measured([sys.executable, "-c", "import ghostmap.reading"], "import ghostmap.reading").seconds
                             for _ in range(args.repeats))
    before_reading = statistics.median(measured(
        [sys.executable, "-c", "import ghostmap.cli, ghostmap.counts, ghostmap.modelfile, ghostmap.analysis"],
        "import what predict loads before it reads").seconds for _ in range(args.repeats))
    rows: list[Row] = [Row("start-up: import ghostmap.prediction (torch)", "-", "-", 0, startup, 0),
                       Row("start-up: what ghostmap predict imports before it starts reading (no torch)",
                           "-", "-", 0, before_reading, 0),
                       Row("start-up: import ghostmap.reading (floor's)", "-", "-", 0, bare, 0)]
    baseline_dirs: dict[str, list[Path]] = {}
    floor: dict[str, float] = {}
    read_loops: dict[str, float] = {}
    same: dict[str, bool] = {}
    engine_dirs: dict[tuple, Path] = {}
    for fmt, path in paths.items():
        read, read_loops[fmt] = bench_read(args, path, fmt, say)
        floor[fmt] = read.seconds
        rows.append(read)
        for model in models:
            for engine in (args.engines if model["device"] == "cpu" else ["torch"]):
                if engine in ("onnx", "onnx-int8"):
                    with_onnx_graph(model["model"], say)
                row, out_dir = bench_predict(args, path, fmt, model, engine, say)
                rows.append(row)
                key = f"{model['arch']} on {model['device']}, {engine}"
                first = engine_dirs.setdefault((model["arch"], model["device"], engine), out_dir)
                same[key] = same.get(key, True) and same_predictions([first, out_dir])
        if not args.skip_baselines:
            for method in ("vdf", "cluster"):
                row, out_dir = bench_baseline(args, path, fmt, method, say)
                rows.append(row)
                key = f"{method} baseline"
                baseline_dirs.setdefault(key, []).append(out_dir)
        if not args.skip_naive:
            for model in models:
                if model["arch"] == "paper":
                    rows.append(bench_naive(args, path, fmt, model, say))

    n_patterns = args.scan_shape[0] * args.scan_shape[1]
    nbytes = n_patterns * args.detector ** 2 * 2
    info["load_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    notes = [
        f"Each throughput figure is the median of {args.repeats} run(s); peak RSS is the largest of them.",
        "Every step runs as its own process, as a user would run it, so its seconds are the process's wall time "
        "including interpreter start-up, imports and model loading; patterns/s = all patterns / those seconds.",
        f"Start-up alone (`python -c 'import ghostmap.prediction'`, which imports torch) takes {startup:.2f} s; without "
        "start-up the read pass's loop takes " + ", ".join(
            f"{s:.2f} s on {f} ({n_patterns / s:,.0f} patterns/s)" for f, s in read_loops.items()) + ".",
        "Peak RSS is the process's `ru_maxrss` (read from `RUSAGE_CHILDREN` in a wrapper whose only child it is). "
        "Rows of a .npy are read with plain file reads, not through the memory map, so file pages don't count.",
        "The page cache was warm: one unmeasured read pass over each file came first, so no run waited on the "
        "disk (dropping the cache needs root). Cold-cache times on a slow disk will be longer.",
        "The read pass is a fresh process that imports only NumPy, h5py and `ghostmap.reading` (never PyTorch: the "
        "script refuses a floor that did), opens the scan with `open_scan`, reads blocks of scan rows of up to 32 MB "
        "(as `ghostmap predict` does) and sums each pattern; it is the floor for any program that looks at every "
        "pattern once. \"x read pass\" is seconds / that floor for the same format.",
        "`ghostmap predict` runs end to end: read, preprocess (bad pixels, bin, 3 x 3 pooling, sqrt, normalise), "
        "classify, and write predictions.npz, domain_map.png and summary.png.",
        "The naive loop imitates the paper authors' published code: for each pattern in turn it reads it, "
        "preprocesses it (ghostmap's `Preprocessing.apply`, no pooling) and runs the paper network on a batch of 1 "
        "under `torch.no_grad`. "
        + (f"It runs on the first {args.naive_patterns} patterns only; its seconds are that run's wall time plus "
           "the remaining patterns at the rate measured after the first pattern." if not args.skip_naive
           else "It was skipped (--skip-naive)."),
        f"Training runs `ghostmap train` on the {args.formats[0]} file once per network and device "
        "(wall seconds of the whole process, default "
        "epochs unless --epochs); accuracy comes from `ghostmap evaluate` against the simulated truth on every "
        "position; domain walls are positions whose true class is none or within 2 positions of a class change.",
        "Predictions from the different file formats were identical: "
        + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in same.items())
        + "".join(f", {k}: {'yes' if same_predictions(d) else 'NO'}" for k, d in baseline_dirs.items()) + ".",
        "The start-up rows are a bare `python -c 'import ...'`: the first is what loading PyTorch and ghostmap's "
        "prediction costs; `ghostmap predict` starts reading and binning the scan in a background thread after only "
        "the second (the command line, the torch-free reading and binning, the model's JSON); with the onnx engine "
        "(the default on the CPU) it never imports torch, with the torch engine it imports torch while that thread "
        "works; the third is what the read pass pays.",
        "Engines: `onnx` is predict's default on the CPU, ONNX Runtime running the model folder's int8 graph "
        "on a processor with AVX-512 and its float32 model.onnx elsewhere (here: "
        f"{'int8' if has_avx512() else 'float32'}); `onnx-int8` is `--precision int8` (model_int8_avx512.onnx "
        "with AVX-512, else model_int8.onnx); `onnx-float32` is `--precision float32`, the float32 model.onnx; "
        "`torch` is `--engine torch`, the safetensors weights in PyTorch (batch norm folded). "
        + engine_comparison(engine_dirs),
        "`ghostmap baseline` runs end to end (mean pattern, lattice, drift, one pass of sums; or PCA + k-means) "
        "and writes the same files as predict.",
    ]
    tables = [throughput_table(rows, floor), training_table(models)]
    print_tables(tables)
    data = {"nbytes": nbytes, "n_labels": n_labels, "rounds": rounds}
    put_section(args.write, START, END, markdown_section(args, info, data, tables, notes))
    say(f"wrote {args.write}; the whole benchmark took {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("_measure", "_read", "_naive"):
        child_main(sys.argv[1:])
    else:
        main(sys.argv[1:])
