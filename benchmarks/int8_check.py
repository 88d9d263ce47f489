#!/usr/bin/env python
"""What the int8 graph changes, on Table 1's simulated scans: `ghostmap predict` against `--precision float32`.

For each kept Table 1 run (``benchmarks/table1.py``'s cache, recipe ``table1.RECIPE``) it trains
the same labels again with the same seed, saves the model (which writes its int8 graphs), runs
``ghostmap predict`` on the scan with the default (int8) and with ``--precision float32``, and
scores both against the truth on the paper's test positions, on every position and on domain
walls, with the expected calibration error. Prints one line per run and a summary::

    python benchmarks/int8_check.py [--scan-seeds 1,2] [--runs adaptive50,active25] [--seeds 5]
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import table1  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scan-seeds", default="1,2")
    p.add_argument("--runs", default="adaptive50,active25", help="strategy+size of the kept runs to repeat")
    p.add_argument("--seeds", type=int, default=5)
    args = p.parse_args()
    from ghostmap.evaluation import expected_calibration_error, wall_mask
    from ghostmap.labels import Labels
    from ghostmap.reading import open_scan
    from ghostmap.training import TrainingOptions, train

    truth, test, _ = table1.paper_truth(table1.PAPER_LABELS)
    walls = wall_mask(truth)
    rows, refused = [], 0
    for scan_seed in (int(s) for s in args.scan_seeds.split(",")):
        scan_path = table1.simulated_scan(DATA, truth, 128, scan_seed)
        for run_name in args.runs.split(","):
            strategy = run_name.rstrip("0123456789")
            size = int(run_name[len(strategy):])
            for seed in range(args.seeds):
                suffix = {"active": "_step30_b0", "adaptive": "_step30"}.get(strategy, "")
                kept = (DATA / "table1_runs" / f"{scan_path.stem}_compact_m1_eauto_{table1.RECIPE}_{strategy}{size}"
                        f"{suffix}_seed{seed}.npz")
                if not kept.exists():
                    print(f"no kept run {kept.name}: run benchmarks/table1.py first", file=sys.stderr)
                    continue
                with np.load(kept) as run:
                    keep = run["trained"]
                    labels = Labels(run["x"][keep], run["y"][keep], run["label"][keep])
                with open_scan(scan_path) as scan, tempfile.TemporaryDirectory() as folder:
                    model = train(scan, labels, TrainingOptions(seed=seed))
                    model.save(Path(folder) / "model")
                    if not (Path(folder) / "model" / "model_int8.onnx").exists():
                        print(f"scan {scan_seed} {run_name} seed {seed}: no int8 graph (saving refused it); "
                              "predict runs float32", flush=True)
                        refused += 1
                        continue
                    scores = {}
                    for precision in ("int8", "float32"):
                        out = Path(folder) / precision
                        subprocess.run([sys.executable, "-m", "ghostmap.cli", "predict", str(scan_path), "--model",
                                        str(Path(folder) / "model"), "--out", str(out), "--precision", precision],
                                       check=True, capture_output=True)
                        with np.load(out / "predictions.npz") as f:
                            probabilities, names = f["probabilities"], f["classes"][f["labels"]]
                        hits = names == truth
                        scores[precision] = {"test": hits[test.y, test.x].mean(), "all": hits.mean(),
                                             "wall": hits[walls].mean(), "probabilities": probabilities,
                                             "ece": expected_calibration_error(probabilities.max(-1), hits)[0],
                                             "names": names}
                a, b = scores["int8"], scores["float32"]
                changed = int((a["names"] != b["names"]).sum())
                dp = float(np.abs(a["probabilities"] - b["probabilities"]).max())
                rows.append((scan_seed, run_name, seed, a, b, changed, dp))
                print(f"scan {scan_seed} {run_name} seed {seed}: test {100 * a['test']:.1f} / {100 * b['test']:.1f}%, "
                      f"all {100 * a['all']:.2f} / {100 * b['all']:.2f}%, walls {100 * a['wall']:.1f} / "
                      f"{100 * b['wall']:.1f}%, ECE {a['ece']:.4f} / {b['ece']:.4f} (int8 / float32); "
                      f"{changed} labels differ, probabilities by at most {dp:.3f}", flush=True)
    if rows:
        def mean(key, precision):
            return np.mean([(r[3] if precision == "int8" else r[4])[key] for r in rows])

        print(f"\n{len(rows)} runs, mean int8 / float32: test {100 * mean('test', 'int8'):.2f} / "
              f"{100 * mean('test', 'float32'):.2f}%, all {100 * mean('all', 'int8'):.3f} / "
              f"{100 * mean('all', 'float32'):.3f}%, walls {100 * mean('wall', 'int8'):.2f} / "
              f"{100 * mean('wall', 'float32'):.2f}%, ECE {mean('ece', 'int8'):.4f} / {mean('ece', 'float32'):.4f}; "
              f"labels differ at {sum(r[5] for r in rows)} of {len(rows) * truth.size} positions "
              f"(at most {max(r[5] for r in rows)} in one run), probabilities by at most {max(r[6] for r in rows):.3f}; "
              f"{refused} models without an int8 graph")
    return 0


if __name__ == "__main__":
    sys.exit(main())
