"""Stored frames per second of the ViZDoom collector, end to end (engine, agent, depth, BEV, PNG
writing), on one core.

    python benchmarks/collect_speed.py [--scenes 8] [--frames 24] [--resolution 64] [--larger-scenes 64]

Target: >= 200 stored frames/s at 64 x 64 on one core. Run with one thread
(the script sets OMP/MKL threads to 1; pin it with `taskset -c 0` for a strict one-core number).

It prints the requested run, end to end, engine start-up included, how much of it was engine
start-up (one game per WAD, a fixed ~0.3 s), and the rate after it; then the same for a larger
run of the same frames per scene (`--larger-scenes`, default 64; 0 skips it). The target is
judged on the larger run end to end (the collector's throughput; a fixed start-up is almost a
third of an 8-scene run), or on the requested run when the larger one is skipped.
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

from nfldm.data import vizdoom  # noqa: E402

torch.set_num_threads(1)
parser = argparse.ArgumentParser()
parser.add_argument("--scenes", type=int, default=8)
parser.add_argument("--frames", type=int, default=24)
parser.add_argument("--resolution", type=int, default=64)
parser.add_argument("--larger-scenes", type=int, default=64, help="also time a run of this many scenes (0: skip)")
args = parser.parse_args()

startup: list[float] = []  # seconds spent starting engines (vizdoom.make_game), per game
_make_game = vizdoom.make_game


def timed_make_game(*a, **kw):
    t = time.perf_counter()
    game = _make_game(*a, **kw)
    startup.append(time.perf_counter() - t)
    return game


vizdoom.make_game = timed_make_game  # collect_dataset looks it up at call time


def timed_run(scenes: int) -> tuple[float, float, int]:
    """-> (seconds end to end, seconds of engine start-up, games started)"""
    startup.clear()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = vizdoom.VizdoomConfig(scenes=scenes, frames=args.frames, resolution=args.resolution)
        t = time.perf_counter()
        vizdoom.collect_dataset(cfg, tmp, progress=False)
        return time.perf_counter() - t, sum(startup), len(startup)


print(f"{'run':<44}{'scenes':>7}{'frames':>8}{'seconds':>9}{'frames/s':>10}")
dt, up, games = timed_run(args.scenes)
n = args.scenes * args.frames
print(f"{f'{args.resolution} x {args.resolution}, end to end':<44}{args.scenes:>7}{n:>8}{dt:>9.2f}{n / dt:>10.1f}")
print(f"{f'  of which engine start-up ({games} games)':<44}{'':>7}{'':>8}{up:>9.2f}")
print(f"{'  rate after start-up':<44}{'':>7}{n:>8}{dt - up:>9.2f}{n / (dt - up):>10.1f}")
if args.larger_scenes > 0:
    dt, up, games = timed_run(args.larger_scenes)
    n = args.larger_scenes * args.frames
    print(f"{'larger run, end to end':<44}{args.larger_scenes:>7}{n:>8}{dt:>9.2f}{n / dt:>10.1f}")
    print(f"{f'  of which engine start-up ({games} games)':<44}{'':>7}{'':>8}{up:>9.2f}")
    print(f"{'  rate after start-up':<44}{'':>7}{n:>8}{dt - up:>9.2f}{n / (dt - up):>10.1f}")
verdict = "met" if n / dt >= 200 else "NOT met"
print(f"target: >= 200 stored frames/s at 64 x 64 on one core (taskset -c 0): {n / dt:.0f} end to end, {verdict}"
      + ("" if len(os.sched_getaffinity(0)) == 1 else " (not pinned to one core)"))
