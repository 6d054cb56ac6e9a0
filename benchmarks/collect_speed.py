"""Stored frames per second of the ViZDoom collector, end to end (engine, agent, depth, BEV, PNG
writing), on one core.

    python benchmarks/collect_speed.py [--scenes 8] [--frames 24] [--resolution 64]

Target: >= 200 stored frames/s at 64 x 64 on one core. Run with one thread
(the script sets OMP/MKL threads to 1; pin it with `taskset -c 0` for a strict one-core number).
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

from nfldm.data.vizdoom import VizdoomConfig, collect_dataset  # noqa: E402

torch.set_num_threads(1)
parser = argparse.ArgumentParser()
parser.add_argument("--scenes", type=int, default=8)
parser.add_argument("--frames", type=int, default=24)
parser.add_argument("--resolution", type=int, default=64)
args = parser.parse_args()
with tempfile.TemporaryDirectory() as tmp:
    t = time.perf_counter()
    collect_dataset(VizdoomConfig(scenes=args.scenes, frames=args.frames, resolution=args.resolution), tmp, progress=False)
    dt = time.perf_counter() - t
n = args.scenes * args.frames
print(f"{'resolution':<12}{'scenes':>8}{'frames':>8}{'seconds':>10}{'frames/s':>10}")
print(f"{args.resolution:<12}{args.scenes:>8}{n:>8}{dt:>10.2f}{n / dt:>10.1f}")
