#!/usr/bin/env python
"""Every ghostmap command at the paper's scan size: wall time and peak memory, as a user runs it.

`benchmarks/benchmark.py` times predict, train and the baselines against a read floor; this
script covers the rest of the command line on the same paper-size scan (34 x 206 x 512 x 512
uint16, 3.67 GB), each command in its own process: `info` (with and without `--preview`),
`sample` (adaptive, and active from a model), `evaluate`, `import-labels`, a two-scan series
(`predict A B`), `watch` on a folder, and the label page (`ghostmap label`: start-up until the
page answers, then the pattern, overview and state requests a first look makes), and `simulate`
writing a paper-size scan (once: 1.5 min). Run
`benchmarks/benchmark.py` first: this script reuses its scan, labels, truth and model::

    python benchmarks/commands.py [--repeats 3] [--write BENCHMARKS.md]

Seconds are wall time from process start to exit (for the label page, from start to the last
answer); peak RSS is the process's `ru_maxrss`, as in benchmark.py. Medians of ``--repeats``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmark import Run, ghostmap_cmd, machine_info, markdown_table, measured
from markdown_section import put_section

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data"
PAPER_LABELS = ROOT.parent / "shared" / "paper-labels"
START, END = "<!-- commands:start -->", "<!-- commands:end -->"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scan", type=Path, default=DATA / "scan_34x206_det512_seed0.npy")
    p.add_argument("--model", type=Path, default=DATA / "models" / "compact-cpu")
    p.add_argument("--labels", type=Path, default=DATA / "labels.csv")
    p.add_argument("--truth", type=Path, default=DATA / "scan_34x206_det512_seed0_truth.csv")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--write", type=Path, default=None, help="put the table into this markdown file")
    return p.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def label_page(scan: str, labels: str) -> dict:
    """Child mode ``_label``: start ``ghostmap label`` as this process's only child, wait until
    the page answers, make a first look's requests, stop it with Ctrl+C; its peak RSS."""
    import resource

    port = free_port()
    start = time.perf_counter()
    server = subprocess.Popen([*ghostmap_cmd("label", scan, "--labels", labels, "--port", str(port))],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"

    def get(path: str) -> bytes:
        with urllib.request.urlopen(base + path, timeout=60) as r:
            return r.read()

    ready = None
    while ready is None:
        if server.poll() is not None:
            raise SystemExit(f"ghostmap label exited early: {server.stderr.read()[-2000:]}")
        try:
            state = json.loads(get("/api/state"))
            ready = time.perf_counter() - start
        except OSError:
            time.sleep(0.05)
    x, y = state["current"]["x"], state["current"]["y"]
    for path in ("/", f"/api/pattern.png?x={x}&y={y}", f"/api/pattern.png?x={x}&y={y}&view=network",
                 "/api/overview.png", "/api/state"):
        get(path)
    seconds = time.perf_counter() - start
    server.send_signal(signal.SIGINT)
    server.wait(30)
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {"seconds": seconds, "ready": ready, "peak_rss": rss, "returncode": 0}


def commands(args: argparse.Namespace, work: Path) -> list[tuple]:
    """(what, command, prepare[, repeats]) for every command; ``prepare()`` runs before each repeat,
    unmeasured; ``repeats`` (default ``--repeats``) for a command too slow to repeat."""
    scan, model, labels, truth = map(str, (args.scan, args.model, args.labels, args.truth))
    predicted = work / "predicted"
    watched = work / "watched"

    def fresh_watch():
        shutil.rmtree(work / "watch-out", ignore_errors=True)
        shutil.rmtree(watched, ignore_errors=True)
        watched.mkdir()
        os.symlink(args.scan.resolve(), watched / args.scan.name)

    def nothing():
        pass

    rows = [
        ("info", ghostmap_cmd("info", scan), nothing),
        ("info --preview", ghostmap_cmd("info", scan, "--preview", str(work / "preview.png")), nothing),
        ("sample --strategy adaptive (50 labels given, budget 70)",
         ghostmap_cmd("sample", scan, "--labels", labels, "--budget", "70", "--out", str(work / "next.csv")), nothing),
        ("sample --strategy active --model (50 labels given, budget 70)",
         ghostmap_cmd("sample", scan, "--labels", labels, "--budget", "70", "--strategy", "active", "--model", model,
                      "--out", str(work / "next-active.csv")), nothing),
        ("predict", ghostmap_cmd("predict", scan, "--model", model, "--out", str(predicted)), nothing),
        ("evaluate (7,004 positions of truth)",
         ghostmap_cmd("evaluate", str(predicted), "--truth", truth, "--json", str(work / "report.json")), nothing),
        ("predict, a series of two scans (.npy, .h5)",
         ghostmap_cmd("predict", scan, str(args.scan.with_suffix(".h5")), "--model", model,
                      "--out", str(work / "series")), lambda: shutil.rmtree(work / "series", ignore_errors=True)),
        ("watch a folder (one scan, --stop-after 1)",
         ghostmap_cmd("watch", str(watched), "--model", model, "--out", str(work / "watch-out"), "--settle", "0.5",
                      "--poll", "0.2", "--stop-after", "1"), fresh_watch),
        ("label (start-up until the page answers, then a first look)",
         [sys.executable, str(Path(__file__).resolve()), "_label", scan, str(work / "page-labels.csv")],
         lambda: [p.unlink() for p in work.glob("page-labels.csv*")]),
    ]
    yaml = PAPER_LABELS / "paper_data_50_binary_frame_1_labels.yaml"
    if yaml.exists():
        rows.append(("import-labels (the paper's 50-label YAML)",
                     ghostmap_cmd("import-labels", str(yaml), "--out", str(work / "imported.csv")), nothing))
    rows.append(("simulate a paper-size scan (34 x 206 x 512 x 512, one run)",
                 ghostmap_cmd("simulate", str(work / "sim"), "--scan", "34x206", "--detector", "512"),
                 lambda: shutil.rmtree(work / "sim", ignore_errors=True), 1))
    return rows


def main(argv: list[str]) -> None:
    if argv[:1] == ["_label"]:
        print(json.dumps(label_page(argv[1], argv[2])))
        return
    args = parse_args(argv)
    for path in (args.scan, args.scan.with_suffix(".h5"), args.model, args.labels, args.truth):
        if not path.exists():
            raise SystemExit(f"{path} is missing: run benchmarks/benchmark.py first")
    subprocess.run(["cat", str(args.scan), str(args.scan.with_suffix(".h5"))], stdout=subprocess.DEVNULL, check=True)
    started = dt.datetime.now(dt.timezone.utc)
    results = []
    with tempfile.TemporaryDirectory(prefix="ghostmap-commands-") as tmp:
        work = Path(tmp)
        for what, cmd, prepare, *repeats in commands(args, work):
            runs: list[Run] = []
            n = repeats[0] if repeats else args.repeats
            for i in range(n):
                prepare()
                run = measured(cmd, what)
                if cmd[1:2] == [str(Path(__file__).resolve())]:  # the label page's driver reports its own figures
                    run = Run(run.report["seconds"], run.report["peak_rss"], run.report)
                runs.append(run)
                print(f"{what} {i + 1}/{n}: {run.seconds:.2f} s, {run.peak_rss / 1e6:,.0f} MB", flush=True)
            results.append((what, statistics.median(r.seconds for r in runs), max(r.peak_rss for r in runs),
                            runs[-1].report.get("ready")))
    body = [[what, f"{s:.2f}", f"{rss / 1e6:,.0f}" + ("" if ready is None else f" (page answered after {ready:.2f} s)")]
            for what, s, rss, ready in results]
    table = markdown_table(["command", "seconds (median)", "peak RSS (MB)"], body)
    info = machine_info(["cpu"])
    section = (f"{START}\n### Every other command at the paper's scan size\n\n"
               f"Measured {started:%Y-%m-%d %H:%M} UTC on {info['cpu']}, "
               f"{info['cores']} cores, with `python benchmarks/commands.py --repeats {args.repeats}` on the "
               f"scan, labels and model of `benchmarks/benchmark.py` ({args.scan.name}, page cache warm); "
               f"medians of {args.repeats} runs, each a fresh process. `train`, `baseline` and `predict` from HDF5 "
               f"are in the Benchmark table above.\n\n{table}\n{END}\n")
    print(section)
    if args.write:
        put_section(args.write, START, END, section, before="<!-- bigscan:start -->")


if __name__ == "__main__":
    main(sys.argv[1:])
