"""How high are the ceilings above the cameras, scene by scene? (ViZDoom datasets)

Reads each scene's BEV maps (``bev.npz``: floor and ceiling heights in metres relative to the
floor under the first camera) at the cameras' positions and prints, over the scenes, the
distribution of the median ceiling height along each path, the floor height, and how much
the ceiling changes along one path. Sampled scenes lose their ceiling but keep their floor
(``experiments/ldm_levels.py``); this says how much less predictable the ceiling's height is.

    python experiments/ceiling_heights.py --data out/ds64 [--top 6]

With ``--levels JSON`` (``python experiments/ldm_levels.py --run RUN --json JSON``) it also
prints, for groups of test scenes by ceiling height, the occupied fraction near the cameras
within 0.5 m of the scene's ceiling (and of its floor) for each row of ldm_levels (stage-1 V,
the scene's own latents, f resampled, c and f resampled given the real g): is the ceiling lost
where its height is unusual?
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from nfldm.data.format import read_transforms


def scene_heights(scene: Path) -> tuple[float, float, float]:
    """(median ceiling, median floor, ceiling max - min) at the cameras of one scene folder."""
    z = np.load(scene / "bev.npz")
    pos = read_transforms(scene).c2w[:, :3, 3]
    lo, hi = z["bounds_xy"]
    n = np.array(z["ceiling"].shape)
    ij = np.clip(((pos[:, :2] - lo) / (hi - lo) * n).astype(int), 0, n - 1)
    ceil, floor = z["ceiling"][ij[:, 0], ij[:, 1]], z["floor"][ij[:, 0], ij[:, 1]]
    return float(np.nanmedian(ceil)), float(np.nanmedian(floor)), float(np.nanmax(ceil) - np.nanmin(ceil))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="dataset folder (nfldm data vizdoom)")
    ap.add_argument("--top", type=float, default=None, help="top of the scene box (m): count ceilings above it")
    ap.add_argument("--levels", default=None, help="per-scene JSON of experiments/ldm_levels.py --json")
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
    if args.levels:
        by_height(json.loads(Path(args.levels).read_text()), {s.name: h for s, h in zip(scenes, r[:, 0])})


def by_height(levels: dict, heights: dict, groups=((0, 3), (3, 3.5), (3.5, 4.5), (4.5, 6))) -> None:
    """Occupied fraction near the cameras within 0.5 m of the ceiling / floor height, per row of
    ldm_levels, for scenes grouped by ceiling height (m)."""
    zlo, zhi = levels["z_range"]
    rows = [k for k in ("V", "real", "f~", "c,f~") if any(sc["cam_profile"].get(k) for sc in levels["scenes"])]
    table = {g: {k: [] for k in rows} for g in groups}
    floors = {k: [] for k in rows}
    for sc in levels["scenes"]:
        h = heights.get(sc["scene"])
        if h is None or not np.isfinite(h):
            continue
        for k in rows:
            prof = sc["cam_profile"].get(k)
            if prof is None:
                continue
            prof = np.asarray(prof)
            z = zlo + (np.arange(len(prof)) + 0.5) * (zhi - zlo) / len(prof)
            floors[k].append(prof[np.abs(z) <= 0.5].mean())
            for g in groups:
                if g[0] <= h < g[1]:
                    table[g][k].append(prof[np.abs(z - h) <= 0.5].mean())
    print(f"\noccupied fraction within 0.5 m of the ceiling, near the cameras ({levels['run']}, "
          f"{levels['split']} scenes); columns: ldm_levels rows")
    print(f"{'ceiling':<12}{'scenes':>7}" + "".join(f"{k:>8}" for k in rows))
    for g in groups:
        n = len(table[g][rows[0]])
        if n:
            print(f"{f'{g[0]:g}-{g[1]:g} m':<12}{n:>7}" + "".join(f"{np.mean(table[g][k]):>8.3f}" for k in rows))
    print(f"{'floor (0 m)':<12}{len(floors[rows[0]]):>7}" + "".join(f"{np.mean(floors[k]):>8.3f}" for k in rows))


if __name__ == "__main__":
    main()
