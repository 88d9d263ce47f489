#!/usr/bin/env python
"""Read speed and peak memory of every reader on the paper-size scan (34 x 206 x 512 x 512 uint16).

1. Takes the paper-size ``.npy`` scan (``--source``; made with ``ghostmap simulate`` if absent)
   and writes it, block by block (never whole in memory), in each format: HDF5, zarr (Zstd),
   a Dectris SIMPLON master (bitshuffle + LZ4, 1000 frames per data file), a GMS in-situ
   ``.dm5`` session of two time slices in raw files cut mid-slice, ``.hspy``, ``.mrc`` and a
   Merlin ``.mib``.
2. For each, a child process opens the file with ``ghostmap.io.open_scan`` (or the series'
   slice 1 for ``.dm5``) and reads every scan row in blocks of ``rows_per_block`` rows, under
   ``/usr/bin/time -v``: wall time, MB/s of uncompressed data, peak RSS. The page cache is
   dropped for the file first (``posix_fadvise``) where the OS allows, so reads come from disk.
   Each read is checked against the ``.npy`` on a few patterns.
3. Writes the table into BENCHMARKS.md between ``<!-- readformats:start -->`` and
   ``<!-- readformats:end -->``, and deletes the converted files unless ``--keep``.

    .venv/bin/python benchmarks/read_formats.py                       # paper size, all formats
    .venv/bin/python benchmarks/read_formats.py --scan 8x32 --detector 128 --write /tmp/B.md  # quick check
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from markdown_section import put_section

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "data"
START, END = "<!-- readformats:start -->", "<!-- readformats:end -->"
BEFORE = "<!-- table1:start -->"
FORMATS = ("npy", "h5", "zarr", "simplon", "dm5", "hspy", "mrc", "mib")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scan", default="34x206", help="scan ROWSxCOLS (default: the paper's 34x206)")
    p.add_argument("--detector", type=int, default=512, help="detector N x N (default 512)")
    p.add_argument("--source", type=Path, default=None, help="the .npy scan (default: simulated into benchmarks/data)")
    p.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated subset of {','.join(FORMATS)}")
    p.add_argument("--keep", action="store_true", help="keep the converted files")
    p.add_argument("--write", type=Path, default=ROOT / "BENCHMARKS.md", help="Markdown file to update")
    return p.parse_args(argv)


def blocks(src: np.ndarray, rows: int = 2):
    for r in range(0, src.shape[0], rows):
        yield r, np.ascontiguousarray(src[r : r + rows])


def convert(fmt: str, src: np.ndarray, folder: Path) -> tuple[Path, tuple | None]:
    """Write ``src`` (a memory-mapped scan) as ``fmt``; returns (path to open, --scan-shape or None)."""
    import h5py

    rows, cols, h, w = src.shape
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "h5":
        path = folder / "scan.h5"
        with h5py.File(path, "w") as f:
            ds = f.create_dataset("data", shape=src.shape, dtype=src.dtype, chunks=(1, 1, h, w))
            for r, b in blocks(src):
                ds[r : r + len(b)] = b
        return path, None
    if fmt == "hspy":
        path = folder / "scan.hspy"
        with h5py.File(path, "w") as f:
            f.attrs["file_format"] = "HyperSpy"
            group = f.create_group("Experiments/scan")
            ds = group.create_dataset("data", shape=src.shape, dtype=src.dtype, chunks=(1, 1, h, w))
            for k in range(4):
                group.create_group(f"axis-{k}").attrs.update({"navigate": k < 2, "size": src.shape[k]})
            for r, b in blocks(src):
                ds[r : r + len(b)] = b
        return path, None
    if fmt == "zarr":
        import zarr

        path = folder / "scan.zarr"
        z = zarr.create_array(str(path), shape=src.shape, chunks=(1, 8, h, w), dtype=src.dtype, overwrite=True)
        for r, b in blocks(src):
            z[r : r + len(b)] = b
        return path, None
    if fmt == "simplon":
        import hdf5plugin

        frames = src.reshape(-1, h, w)
        master = folder / "scan_master.h5"
        with h5py.File(master, "w") as f:
            group = f.create_group("entry/data")
            for k, start in enumerate(range(0, len(frames), 1000), start=1):
                name = f"scan_data_{k:06d}.h5"
                part = frames[start : start + 1000]
                with h5py.File(folder / name, "w") as d:
                    ds = d.create_dataset("entry/data/data", shape=part.shape, dtype=part.dtype, chunks=(1, h, w),
                                          **hdf5plugin.Bitshuffle(cname="lz4"))
                    for a in range(0, len(part), 100):
                        ds[a : a + 100] = part[a : a + 100]
                group[f"data_{k:06d}"] = h5py.ExternalLink(name, "/entry/data/data")
        return master, (rows, cols)
    if fmt == "dm5":
        sys.path.insert(0, str(ROOT / "tests"))
        path = folder / "InSitu.dm5"
        with h5py.File(path, "w") as f:  # the director file (as tests/test_io_gatan.py writes it)
            f.create_group("DocumentObjectList/[0]").attrs["ImageSource"] = np.uint32(0)
            f.create_group("ImageSourceList/[0]").attrs["ImageRef"] = np.uint32(1)
            image = f.create_group("ImageList/[1]")
            image.create_dataset("ImageData/Data", shape=src.shape, dtype=src.dtype)
            image.create_group("ImageTags/Meta Data").attrs["Data Order Swapped"] = np.uint8(1)
        cut = int(src.nbytes * 0.6)  # slice 0 ends inside raw_1... slice 1 straddles the cut
        targets = [open(path.with_suffix(".raw"), "wb"), open(path.with_suffix(".raw_1"), "wb")]
        written = 0
        for _ in range(2):
            for _, b in blocks(src):
                raw = b.tobytes()
                while raw:
                    k = 0 if written < cut else 1
                    n = len(raw) if k == 1 else min(len(raw), cut - written)
                    targets[k].write(raw[:n])
                    raw, written = raw[n:], written + n
        for t in targets:
            t.close()
        return path, None
    if fmt == "mrc":
        import mrcfile

        path = folder / "scan.mrc"
        with mrcfile.new_mmap(path, shape=src.shape, mrc_mode=6) as mrc:
            for r, b in blocks(src):
                mrc.data[r : r + len(b)] = b
        return path, None
    if fmt == "mib":
        path = folder / "scan.mib"
        with open(path, "wb") as f:
            for k, frame in enumerate(src.reshape(-1, h, w)):
                head = (f"MQ1,{k + 1:06d},00384,01,{w:04d},{h:04d},U16,   1x1,01,2020-05-18 16:51:49.971626,"
                        "0.000555,0,0,0,1.2E+2,5.1E+2,0,0,0,0,0,0,3RX,175,511,000,000,000,000,000,000,125,255,"
                        "125,125,100,100,082,100,087,030,128,004,255,129,128,176,168,511,511,MQ1A,"
                        "2020-05-18T14:51:49.971626178Z,555000ns,12,")
                f.write(head.ljust(384).encode("ascii"))
                f.write(frame[::-1].astype(">u2").tobytes())
        path.with_suffix(".hdr").write_text(
            f"HDR,\t\nFrames in Acquisition (Number):\t{rows * cols}\nFrames per Trigger (Number):\t{cols}\nEnd\t\n")
        return path, None
    raise ValueError(fmt)


READER = r"""
import json, sys, time
import numpy as np
from ghostmap.io import open_scan, open_time_series, rows_per_block
path, shape, series, source = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
for f in sys.argv[5:]:
    try:
        fd = os.open(f, os.O_RDONLY); os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)
    except Exception:
        pass
t0 = time.perf_counter()
if series:
    ts = open_time_series(path); scan = ts[len(ts) - 1]
else:
    scan = open_scan(path, scan_shape=tuple(shape) if shape else None)
step = rows_per_block(scan)
truth = np.load(source, mmap_mode="r")
checked = 0
for start, block in scan.iter_rows(step):
    if start == 0 or start + len(block) == scan.shape[0]:  # pattern by pattern: no block-sized temporaries
        for i in range(len(block)):
            for j in range(0, block.shape[1], 16):
                assert np.array_equal(block[i, j], truth[start + i, j]), (start + i, j)
        checked += len(block)
print(json.dumps({"seconds": time.perf_counter() - t0, "nbytes": scan.nbytes, "checked_rows": checked,
                  "format": scan.info.format}))
""".replace("import json, sys, time", "import json, os, sys, time")


def measure(path: Path, shape, series: bool, source: Path) -> dict:
    files = [str(p) for p in path.parent.rglob("*") if p.is_file()]
    cmd = [sys.executable, "-c", READER, str(path), json.dumps(shape), "1" if series else "0", str(source), *files]
    timed = ["/usr/bin/time", "-v", *cmd] if Path("/usr/bin/time").exists() else cmd
    run = subprocess.run(timed, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if run.returncode != 0:
        raise RuntimeError(run.stderr[-2000:])
    result = json.loads(run.stdout.strip().splitlines()[-1])
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr)
    result["peak_rss_gb"] = int(peak.group(1)) / 1e6 if peak else float("nan")
    return result


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv=None) -> int:
    args = parse_args(argv)
    rows, cols = (int(n) for n in args.scan.lower().split("x"))
    source = args.source or DATA / f"scan_{rows}x{cols}_det{args.detector}_seed0.npy"
    if not source.exists():
        subprocess.run([str(Path(sys.executable).parent / "ghostmap"), "simulate", str(source), "--scan",
                        f"{rows}x{cols}", "--detector", str(args.detector)], check=True)
    src = np.load(source, mmap_mode="r")
    results = []
    for fmt in args.formats.split(","):
        folder = DATA / "read_formats" / fmt
        shutil.rmtree(folder, ignore_errors=True)
        t0 = time.perf_counter()
        path, shape = (source, None) if fmt == "npy" else convert(fmt, src, folder)
        write_s = time.perf_counter() - t0
        if fmt == "npy":
            folder = source.parent  # measure() drops the page cache of the files beside it
        r = measure(path, shape, fmt == "dm5", source)
        r.update(fmt=fmt, write_s=write_s, disk_gb=(source.stat().st_size if fmt == "npy" else disk_bytes(folder)) / 1e9)
        r["mb_s"] = r["nbytes"] / 1e6 / r["seconds"]
        print(f"{fmt:8s} {r['seconds']:7.1f} s  {r['mb_s']:7.0f} MB/s  peak {r['peak_rss_gb']:.2f} GB  "
              f"disk {r['disk_gb']:.2f} GB  ({r['format']})", flush=True)
        results.append(r)
        if not args.keep and fmt != "npy":
            shutil.rmtree(folder, ignore_errors=True)
    load = os.getloadavg()
    lines = [START, "## Reading each file format", "",
             f"`python benchmarks/read_formats.py` on {dt.date.today()}: the {rows} x {cols} x {args.detector} x "
             f"{args.detector} uint16 scan ({src.nbytes / 1e9:.2f} GB) saved in each format, then read whole, in "
             "blocks of scan rows as `predict` reads it, by a fresh process under `/usr/bin/time -v` (page cache "
             "dropped first where the kernel allows; checked against the `.npy` on every 16th pattern of the first and last rows). "
             "`.dm5`: slice 2 of a two-slice session, which straddles two raw files. One run per format on the "
             f"2 shared CPU cores (load average {load[0]:.1f} at the end): treat speeds as rough.", "",
             "| format | reader | read s | MB/s | peak RSS GB | on disk GB |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['fmt']} | {r['format']} | {r['seconds']:.1f} | {r['mb_s']:.0f} | "
                     f"{r['peak_rss_gb']:.2f} | {r['disk_gb']:.2f} |")
    bound = [f"{r['fmt']} {r['peak_rss_gb']:.2f} GB" for r in results if r["fmt"] in ("simplon", "dm5")]
    if bound:
        lines += ["", f"Peak RSS reading the paper-size scan through the readers issue 11 bounds (< 1.5 GB): "
                      f"{', '.join(bound)}. Each process also holds the Python, NumPy and h5py it imports "
                      "(about 0.1 GB) and one block of rows (two rows, 0.22 GB) plus its copy."]
    lines += ["", END]
    put_section(args.write, START, END, "\n".join(lines) + "\n", before=BEFORE)
    print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
