#!/usr/bin/env python
"""Peak memory of `ghostmap predict` on a scan larger than half this machine's RAM.

1. Builds a large ``.npy`` scan on disk cheaply: the paper-size scan's rows (``--source``,
   made by benchmarks/benchmark.py) repeated down the scan until the file is ``--gb`` GB
   (15 GB: 139 x 206 patterns of 512 x 512 uint16). It is written block by block with plain
   file writes, never held in memory, then its pages are dropped from the page cache
   (``posix_fadvise``), so prediction reads it from the disk, as a scan this size would be.
2. Runs ``ghostmap predict`` on it in a child process under ``/usr/bin/time -v`` (or, without
   it, ``getrusage`` of the child) and reports its peak RSS, wall time, patterns/s and the
   scan size against the RAM.
3. Checks that the prediction repeats with the data: every copy of the source's rows gets the
   labels of the first copy (away from the seams, where the pooling neighbours differ).
4. Writes the result into BENCHMARKS.md between ``<!-- bigscan:start -->`` and
   ``<!-- bigscan:end -->`` (added before the Table 1 section if absent), and deletes the big
   file unless ``--keep``.

    .venv/bin/python benchmarks/big_scan.py                  # 15 GB (needs 17 GB of free disk), the compact model
    .venv/bin/python benchmarks/big_scan.py --gb 2 --write /tmp/B.md    # a quick check
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from markdown_section import put_section

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "data"
START, END = "<!-- bigscan:start -->", "<!-- bigscan:end -->"
BEFORE = "<!-- table1:start -->"  # where the section goes the first time


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gb", type=float, default=15.0, help="size of the big scan file in GB (default 15)")
    p.add_argument("--source", type=Path, default=DATA / "scan_34x206_det512_seed0.npy",
                   help="the scan whose rows are repeated (default: benchmark.py's paper-size scan)")
    p.add_argument("--model", type=Path, default=DATA / "models" / "compact-cpu",
                   help="model folder (default: benchmark.py's compact model)")
    p.add_argument("--path", type=Path, default=DATA / "big_scan.npy", help="where the big scan is written")
    p.add_argument("--keep", action="store_true", help="keep the big scan file afterwards")
    p.add_argument("--write", type=Path, default=ROOT / "BENCHMARKS.md", help="Markdown file to update")
    return p.parse_args(argv)


def ram_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def write_big_scan(source: Path, path: Path, gb: float, say) -> tuple[tuple[int, ...], float]:
    """Repeat ``source``'s scan rows into a ``gb`` GB .npy at ``path``; its shape and the seconds taken."""
    src = np.load(source, mmap_mode="r")
    rows, cols = src.shape[:2]
    row_bytes = src[0].nbytes
    n_rows = max(1, int(round(gb * 1e9 / row_bytes)))
    shape = (n_rows, *src.shape[1:])
    need = n_rows * row_bytes
    free = shutil.disk_usage(path.parent).free
    if free < need + 2e9:
        raise SystemExit(f"{path.parent} has {free / 1e9:.1f} GB free; the scan needs {need / 1e9:.1f} GB plus 2 GB spare")
    say(f"writing {shape[0]} x {shape[1]} patterns of {shape[2]} x {shape[3]} {src.dtype} ({need / 1e9:.2f} GB) to {path}")
    start = time.perf_counter()
    with open(source, "rb") as fin, open(path, "wb") as fout:
        np.lib.format.write_array_header_1_0(
            fout, {"descr": np.lib.format.dtype_to_descr(src.dtype), "fortran_order": False, "shape": shape})
        for r in range(n_rows):  # one scan row at a time, plain reads and writes, no memory map
            fin.seek(src.offset + (r % rows) * row_bytes)
            fout.write(fin.read(row_bytes))
        fout.flush()
        os.fsync(fout.fileno())
        if hasattr(os, "posix_fadvise"):  # the scan is read from the disk, not from the cache the writes filled
            os.posix_fadvise(fout.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return shape, time.perf_counter() - start


def run_predict(scan: Path, model: Path, out: Path) -> dict:
    """``ghostmap predict`` in a child process: wall seconds, peak RSS and what /usr/bin/time -v says."""
    cmd = [sys.executable, "-m", "ghostmap.cli", "predict", str(scan), "--model", str(model), "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "GHOSTMAP_PROGRESS"}
    timer = "/usr/bin/time" if Path("/usr/bin/time").exists() else None
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as report:
        full = [timer, "-v", "-o", report.name, *cmd] if timer else cmd
        start = time.perf_counter()
        proc = subprocess.run(full, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - start
        text = report.read() if timer else ""
    if proc.returncode != 0:
        raise SystemExit(f"ghostmap predict failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    fields = dict(re.findall(r"^\s*(.+?):\s+(.*)$", text, re.M))
    if "Maximum resident set size (kbytes)" in fields:
        peak = int(fields["Maximum resident set size (kbytes)"]) * 1024
        how = "`/usr/bin/time -v`'s maximum resident set size of the `ghostmap predict` process"
    else:
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        how = "`ru_maxrss` of the `ghostmap predict` child process (`getrusage(RUSAGE_CHILDREN)`)"
    shown = ["ghostmap", "predict", _relative(scan), "--model", _relative(model), "--out", "OUT"]
    return {"seconds": seconds, "peak_rss": peak, "how": how, "command": shlex.join(shown),
            "major_faults": fields.get("Major (requiring I/O) page faults"),
            "fs_inputs": fields.get("File system inputs"), "cpu_percent": fields.get("Percent of CPU this job got")}


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def repeats_with_the_data(out: Path, source_rows: int) -> tuple[int, int]:
    """Positions in later copies of the source rows (seams excluded) whose label equals the first copy's."""
    with np.load(out / "predictions.npz") as npz:
        labels = npz["labels"]
    first = labels[1 : source_rows - 1]
    same = total = 0
    for k in range(1, labels.shape[0] // source_rows):
        copy = labels[k * source_rows + 1 : (k + 1) * source_rows - 1]
        same += int((copy == first).sum())
        total += copy.size
    return same, total


def section(args, shape, nbytes, ram, make_seconds, result, same, total) -> str:
    n = shape[0] * shape[1]
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    import torch

    lines = [
        START,
        "### Bounded memory on a scan larger than half the RAM",
        "",
        f"Measured {now}" + (f" on the working tree at commit `{commit}`" if commit else "")
        + f" ({platform.machine()}, {os.cpu_count()} cores shared with other work, "
        f"{ram / 1e9:.1f} GB RAM, torch {torch.__version__}). Reproduce with:",
        "",
        "```sh",
        f"python benchmarks/big_scan.py --gb {args.gb:g}",
        "```",
        "",
        f"The paper-size scan's 34 rows repeated down the scan into one {nbytes / 1e9:.1f} GB `.npy` "
        f"(**{shape[0]} x {shape[1]} = {n:,} patterns** of {shape[2]} x {shape[3]} uint16; "
        f"{nbytes / ram:.0%} of the RAM), written in {make_seconds:.0f} s and dropped from the page cache, then:",
        "",
        "```sh",
        result["command"],
        "```",
        "",
        "| scan | RAM | peak RSS | wall time | patterns/s |",
        "|---:|---:|---:|---:|---:|",
        f"| {nbytes / 1e9:.1f} GB | {ram / 1e9:.1f} GB | **{result['peak_rss'] / 1e6:,.0f} MB** | "
        f"{result['seconds']:.1f} s | {n / result['seconds']:,.0f} |",
        "",
        f"- Peak RSS is {result['how']}. The scan rows are read from the file a few patterns at a time "
        "into one small buffer and binned there, so the file's pages never count in the peak; the page "
        "cache the reads fill is the kernel's, not the process's.",
        "- Wall time is the whole process (start-up, reading from the disk, preprocessing, classifying, "
        "writing predictions.npz and the figures)"
        + (f"; it read {int(result['fs_inputs']) * 512 / 1e9:.1f} GB from the disk (file system inputs) and "
           f"used {result['cpu_percent']} CPU" if result.get("fs_inputs") is not None else "") + ".",
        (f"- Every later copy of the source rows (seams excluded, where pooling's neighbours differ) got the "
         f"labels of the first copy at {same:,} of {total:,} positions." if total else
         "- The scan holds no second copy of the source rows, so the repeat check had nothing to compare."),
        END,
    ]
    return "\n".join(lines) + "\n"


def main(argv):
    args = parse_args(argv)
    began = time.perf_counter()

    def say(text):
        print(f"[{time.perf_counter() - began:7.1f} s] {text}", file=sys.stderr, flush=True)

    if not args.source.is_file():
        raise SystemExit(f"no source scan at {args.source}; run benchmarks/benchmark.py first (or pass --source)")
    ram = ram_bytes() or 0
    args.path.parent.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="bigscan-predictions-", dir=args.path.parent))
    try:
        shape, make_seconds = write_big_scan(args.source, args.path, args.gb, say)
        nbytes = args.path.stat().st_size
        say(f"written in {make_seconds:.0f} s; {nbytes / 1e9:.2f} GB = {nbytes / ram:.0%} of {ram / 1e9:.1f} GB RAM")
        say("running ghostmap predict")
        result = run_predict(args.path, args.model, out)
        n = shape[0] * shape[1]
        say(f"predict: {result['seconds']:.1f} s, {n / result['seconds']:,.0f} patterns/s, "
            f"peak RSS {result['peak_rss'] / 1e6:,.0f} MB")
        same, total = repeats_with_the_data(out, np.load(args.source, mmap_mode="r").shape[0])
        say(f"labels repeat with the data at {same:,} of {total:,} positions")
        put_section(args.write, START, END, section(args, shape, nbytes, ram, make_seconds, result, same, total),
                    before=BEFORE)
        say(f"wrote {args.write}")
        print(json.dumps({"shape": shape, "bytes": nbytes, "ram": ram, **{k: v for k, v in result.items()},
                          "labels_repeat": [same, total]}))
    finally:
        shutil.rmtree(out, ignore_errors=True)
        if not args.keep and args.path.exists():
            args.path.unlink()
            say(f"deleted {args.path} (--keep keeps it)")


if __name__ == "__main__":
    main(sys.argv[1:])
