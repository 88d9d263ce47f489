#!/usr/bin/env python
"""py4DSTEM's own virtual imaging against ghostmap's offset virtual dark field, on one scan.

ghostmap's ``vdf`` baseline finds the Bragg lattice, places ghost-disk apertures halfway between
neighbouring disks, tracks the descan drift and sums each pattern inside the apertures. Here
py4DSTEM does the imaging its usual way on the same scan and the same aperture positions
(ghostmap's, written to ``apertures.json``): hot-pixel filtering (``filter_hot_pixels``), the
probe radius from the mean pattern (``get_probe_size``), the origin of every pattern
(``get_origin``) fitted by a plane (``fit_origin``), and one virtual image per aperture set
(``get_virtual_image``, a mask made of py4DSTEM circular detectors, ``shift_center=True`` so
the mask follows the origin). Both contrast maps ``(horizontal - vertical) / total``, pooled
3 x 3 as ghostmap does, go through the same classifier (ghostmap's two-Gaussian threshold),
and the script reports how well they agree (correlation of the contrast maps, agreement of the
class maps, accuracy of each against the truth) and how long each took.

py4DSTEM is an optional benchmark dependency. Version 0.14 pins ``numpy<2`` and
``scikit-learn<1.5``, which ghostmap's environment does not hold, so py4DSTEM's side runs as a
child process of any Python that has it (``--py4dstem-python``; by default this one)::

    python3 -m venv /tmp/p4venv && /tmp/p4venv/bin/pip install py4DSTEM

By default the scan is the one ``benchmarks/table1.py`` simulates (the paper authors' domain
geometry, 34 x 206 patterns of 128 x 128), made in ``--workdir`` if it is not there yet.

Run it (from the repository root)::

    .venv/bin/python benchmarks/py4dstem_compare.py --py4dstem-python /tmp/p4venv/bin/python
    .venv/bin/python benchmarks/py4dstem_compare.py --scan sim/scan.npy --truth sim/truth.csv --py4dstem-python ...
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scan", type=Path, default=None,
                   help="a .npy scan (default: table1.py's simulated scan, made if missing)")
    p.add_argument("--truth", type=Path, default=None, help="truth labels CSV (x,y,label) for --scan, optional")
    p.add_argument("--detector", type=int, default=128, help="detector size of the default scan (default 128)")
    p.add_argument("--workdir", type=Path, default=HERE / "data", help="where the default scan lives")
    p.add_argument("--py4dstem-python", default=sys.executable,
                   help="a Python interpreter that can import py4DSTEM (default: this one)")
    p.add_argument("--origin-fit", default="plane", choices=("plane", "parabola", "none"),
                   help="py4DSTEM fit of the measured origins (default plane; none: use them as measured)")
    p.add_argument("--hot-pixel-threshold", type=float, default=200.0,
                   help="py4DSTEM filter_hot_pixels threshold, counts above the local mean pattern (default 200)")
    p.add_argument("--pool", type=int, default=3, help="positions pooled before classifying (default 3, as ghostmap)")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- py4DSTEM's side (child process)


def py4dstem_worker(scan_path: str, apertures_path: str, out_path: str, origin_fit: str, hot: float) -> None:
    """Virtual images with py4DSTEM only (imports numpy and py4DSTEM, not ghostmap)."""
    t0 = time.perf_counter()
    import py4DSTEM
    from py4DSTEM.process.calibration import fit_origin, get_origin

    times = {"import": time.perf_counter() - t0}
    t = time.perf_counter()
    dc = py4DSTEM.DataCube(data=np.load(scan_path))  # py4DSTEM works on the scan in memory
    times["load"] = time.perf_counter() - t
    t = time.perf_counter()
    dc.filter_hot_pixels(thresh=hot)
    times["hot_pixels"] = time.perf_counter() - t
    t = time.perf_counter()
    radius, _, _ = dc.get_probe_size(dc.get_dp_mean().data)
    qx0, qy0, _ = get_origin(dc, r=radius)
    if origin_fit != "none":
        qx0, qy0, _, _ = fit_origin((qx0, qy0), fitfunction=origin_fit)
    dc.calibration.set_origin((qx0, qy0))
    times["origin"] = time.perf_counter() - t
    t = time.perf_counter()
    ap = json.loads(Path(apertures_path).read_text())
    images = {}
    for name in ("horizontal", "vertical"):
        mask = np.any([dc.make_detector(dc.Qshape, "circle", ((r, c), ap["radius"])) for r, c in ap[name]], axis=0)
        images[name] = dc.get_virtual_image("mask", mask.astype(float), shift_center=True, subpixel=True,
                                            verbose=False, name=name).data
    images["total"] = dc.get_virtual_image("mask", np.ones(dc.Qshape), verbose=False, name="total").data
    times["virtual_images"] = time.perf_counter() - t
    shift = np.stack([qx0 - qx0.mean(), qy0 - qy0.mean()], axis=-1)
    np.savez(out_path, **images, origin_shift=shift, radius=radius,
             info=json.dumps({"times": times, "version": py4DSTEM.__version__}))


def run_py4dstem(python: str, scan: Path, apertures: Path, workdir: Path, args) -> dict:
    out = workdir / "py4dstem.npz"
    cmd = [python, str(Path(__file__).resolve()), "--worker", str(scan), str(apertures), str(out),
           args.origin_fit, str(args.hot_pixel_threshold)]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"py4dstem_compare: py4DSTEM's side failed:\n{done.stderr[-3000:]}")
    with np.load(out, allow_pickle=False) as f:
        result = {k: f[k] for k in f.files}
    result["info"] = json.loads(str(result["info"]))
    result["info"]["process_seconds"] = seconds
    return result


def check_py4dstem(python: str) -> str:
    """py4DSTEM's version for ``python``, or exit naming the missing package."""
    try:
        done = subprocess.run([python, "-c", "import py4DSTEM; print(py4DSTEM.__version__)"],
                              capture_output=True, text=True)
    except OSError as exc:
        sys.exit(f"py4dstem_compare: cannot run {python}: {exc}")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        sys.exit(f"py4dstem_compare: the optional package py4DSTEM is not installed for {python} ({last}).\n"
                 "py4DSTEM 0.14 needs numpy<2 and scikit-learn<1.5, so give it its own environment:\n"
                 "  python3 -m venv /tmp/p4venv && /tmp/p4venv/bin/pip install py4DSTEM\n"
                 "  .venv/bin/python benchmarks/py4dstem_compare.py --py4dstem-python /tmp/p4venv/bin/python")
    return done.stdout.strip()


# ----------------------------------------------------------------------------- comparison


def default_scan(args) -> tuple[Path, np.ndarray]:
    """table1.py's simulated scan and its truth."""
    sys.path.insert(0, str(HERE))
    from table1 import PAPER_LABELS, paper_truth, simulated_scan

    truth, _, _ = paper_truth(PAPER_LABELS)
    args.workdir.mkdir(parents=True, exist_ok=True)
    return simulated_scan(args.workdir, truth, args.detector, 0), truth


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        py4dstem_worker(*argv[1:5], float(argv[5]))
        return 0
    args = parse_args(argv)
    version = check_py4dstem(args.py4dstem_python)

    from ghostmap.baselines import VDF_CLASSES, classify_contrast, contrast_map, vdf_baseline
    from ghostmap.labels import read_labels, truth_map
    from ghostmap.reading import open_scan

    if args.scan is None:
        scan_path, truth = default_scan(args)
    else:
        scan_path, truth = args.scan, None
    with open_scan(scan_path) as scan:
        shape = scan.scan_shape
        if args.truth is not None:
            truth = truth_map(read_labels(args.truth, scan_shape=shape), shape)
        start = time.perf_counter()
        gm = vdf_baseline(scan, pool=args.pool)
        gm_seconds = time.perf_counter() - start
    n = shape[0] * shape[1]
    with tempfile.TemporaryDirectory() as tmp:
        apertures = Path(tmp) / "apertures.json"
        apertures.write_text(json.dumps(gm.apertures.to_dict()))
        p4 = run_py4dstem(args.py4dstem_python, scan_path, apertures, Path(tmp), args)

    raw = {"ghostmap": (gm.arrays["horizontal_sum"] - gm.arrays["vertical_sum"]) / gm.arrays["total"],
           "py4DSTEM": (p4["horizontal"] - p4["vertical"]) / p4["total"]}
    pooled = {"ghostmap": gm.arrays["contrast"],
              "py4DSTEM": contrast_map(p4["horizontal"], p4["vertical"], p4["total"], pool=args.pool)}
    classes = np.array(VDF_CLASSES)
    maps = {"ghostmap": gm.prediction.label_names(), "py4DSTEM": classes[classify_contrast(pooled["py4DSTEM"])[0]]}
    shifts = (gm.arrays["descan_shift"], p4["origin_shift"])
    report = {
        "scan": str(scan_path), "positions": n, "py4DSTEM": version, "origin_fit": args.origin_fit,
        "contrast_correlation_pooled": correlation(*pooled.values()),
        "contrast_correlation_unpooled": correlation(*raw.values()),
        "class_agreement": float((maps["ghostmap"] == maps["py4DSTEM"]).mean()),
        "descan_correlation": [correlation(shifts[0][..., i], shifts[1][..., i]) for i in (0, 1)],
        "seconds": {"ghostmap_vdf": gm_seconds, "py4DSTEM_process": p4["info"]["process_seconds"],
                    **{f"py4DSTEM_{k}": v for k, v in p4["info"]["times"].items()}},
    }
    if truth is not None:
        report["accuracy"] = {k: float((m == truth).mean()) for k, m in maps.items()}
    t = report["seconds"]
    p4_work = sum(v for k, v in p4["info"]["times"].items() if k != "import")
    lines = [
        f"scan {scan_path} ({shape[0]} x {shape[1]} patterns), py4DSTEM {version}, origin fit: {args.origin_fit}",
        f"contrast maps, (h - v) / total: correlation {report['contrast_correlation_pooled']:.4f} pooled "
        f"{args.pool} x {args.pool}, {report['contrast_correlation_unpooled']:.4f} unpooled",
        f"class maps (same classifier on both contrasts): {100 * report['class_agreement']:.2f}% of positions agree",
        "descan shift, ghostmap (smoothed centroids) vs py4DSTEM (fitted origins): correlation "
        + ", ".join(f"{c:.3f}" for c in report["descan_correlation"]) + " (row, column)",
    ]
    if "accuracy" in report:
        lines.append("accuracy against the truth: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in report["accuracy"].items()))
    lines += [
        "",
        "| | seconds | patterns / s |",
        "|---|---|---|",
        f"| ghostmap vdf baseline (streamed from the file: bad pixels, lattice, descan, sums, classes) "
        f"| {gm_seconds:.1f} | {n / gm_seconds:,.0f} |",
        f"| py4DSTEM: load {t['py4DSTEM_load']:.1f} s, hot pixels {t['py4DSTEM_hot_pixels']:.1f} s, origin "
        f"{t['py4DSTEM_origin']:.1f} s, 3 virtual images {t['py4DSTEM_virtual_images']:.1f} s | {p4_work:.1f} "
        f"| {n / p4_work:,.0f} |",
        f"| py4DSTEM child process, with interpreter start and import ({t['py4DSTEM_import']:.1f} s) "
        f"| {t['py4DSTEM_process']:.1f} | |",
    ]
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
