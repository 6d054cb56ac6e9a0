"""How high are the ceilings above the cameras, scene by scene? (ViZDoom datasets)

Reads each scene's BEV maps (``bev.npz``: floor and ceiling heights in metres relative to the
floor under the first camera) at the cameras' positions and prints, over the scenes, the
distribution of the median ceiling height along each path, the floor height, and how much
the ceiling changes along one path. Sampled scenes lose their ceiling but keep their floor
(``benchmarks/ldm_levels.py``); this says how much less predictable the ceiling's height is.

    python benchmarks/ceiling_heights.py --data out/ds64 [--top 6]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def scene_heights(scene: Path) -> tuple[float, float, float]:
    """(median ceiling, median floor, ceiling max - min) at the cameras of one scene folder."""
    z = np.load(scene / "bev.npz")
    frames = json.loads((scene / "transforms.json").read_text())["frames"]
    pos = np.array([f["transform_matrix"] for f in frames], dtype=np.float64)[:, :3, 3]
    lo, hi = z["bounds_xy"]
    n = np.array(z["ceiling"].shape)
    ij = np.clip(((pos[:, :2] - lo) / (hi - lo) * n).astype(int), 0, n - 1)
    ceil, floor = z["ceiling"][ij[:, 0], ij[:, 1]], z["floor"][ij[:, 0], ij[:, 1]]
    return float(np.nanmedian(ceil)), float(np.nanmedian(floor)), float(np.nanmax(ceil) - np.nanmin(ceil))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="dataset folder (nfldm data vizdoom)")
    ap.add_argument("--top", type=float, default=None, help="top of the scene box (m): count ceilings above it")
    args = ap.parse_args()
    scenes = sorted(p for p in Path(args.data).glob("*/") if (p / "bev.npz").is_file())
    if not scenes:
        raise SystemExit(f"{args.data}: no scene folder with a bev.npz")
    r = np.array([scene_heights(s) for s in scenes])
    ceil = r[:, 0][np.isfinite(r[:, 0])]
    p = np.percentile
    print(f"{args.data}: {len(scenes)} scenes; heights in metres above the floor under the first camera")
    print(f"ceiling at the cameras (median per scene): median {np.median(ceil):.2f}, p10 {p(ceil, 10):.2f}, "
          f"p90 {p(ceil, 90):.2f}, std {ceil.std():.2f}")
    print(f"floor at the cameras: median {np.nanmedian(r[:, 1]):.2f}, p10 {np.nanpercentile(r[:, 1], 10):.2f}, "
          f"p90 {np.nanpercentile(r[:, 1], 90):.2f}")
    print(f"ceiling change along one path (max - min): median {np.nanmedian(r[:, 2]):.2f}, "
          f"p90 {np.nanpercentile(r[:, 2], 90):.2f}")
    edges = [0, 2, 2.5, 3, 3.5, 4, 4.5, 5, 6, 8, np.inf]
    counts, _ = np.histogram(ceil, bins=edges)
    print("histogram: " + ", ".join(f"[{a:g}, {b:g}) m: {c}" for a, b, c in zip(edges[:-1], edges[1:], counts)))
    if args.top is not None:
        print(f"ceilings above the box top ({args.top:g} m): {int((ceil > args.top).sum())} of {len(ceil)}")


if __name__ == "__main__":
    main()
