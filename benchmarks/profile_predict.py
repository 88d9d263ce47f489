#!/usr/bin/env python
"""Split `ghostmap predict`'s time per pattern into preprocessing and the network.

Run after benchmarks/benchmark.py (it uses that run's scan and model)::

    python benchmarks/profile_predict.py [SCAN.npy] [MODEL_DIR] [--rows 12]
"""

import argparse
import time
from pathlib import Path

import torch

from ghostmap.model import Model
from ghostmap.preprocessing import stream_rows
from ghostmap.reading import open_scan

DATA = Path(__file__).resolve().parent / "data"


def best_of(n, f):
    times = []
    for _ in range(n):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scan", nargs="?", default=DATA / "scan_34x206_det512_seed0.npy")
    p.add_argument("model", nargs="?", default=DATA / "models" / "compact-cpu")
    p.add_argument("--rows", type=int, default=12)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    scan, model = open_scan(args.scan), Model.load(args.model)
    start = time.perf_counter()
    parts = [x for _, _, x in stream_rows(scan, model.preprocessing, 0, args.rows)]
    preprocess = time.perf_counter() - start
    x = torch.cat(parts).reshape(-1, 1, *model.input_shape)
    n = x.shape[0]

    def run(net, inputs):
        with torch.inference_mode():
            for i in range(0, n, args.batch):
                net(inputs[i : i + args.batch])

    net = model.network.eval()
    plain = best_of(3, lambda: run(net, x))
    net_cl, x_cl = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    channels_last = best_of(3, lambda: run(net_cl, x_cl))
    print(f"{n} patterns, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"read + preprocess: {preprocess / n * 1000:.3f} ms/pattern")
    print(f"network:           {plain / n * 1000:.3f} ms/pattern")
    print(f"network, channels-last: {channels_last / n * 1000:.3f} ms/pattern")


if __name__ == "__main__":
    main()
