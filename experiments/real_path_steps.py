"""How spiky are real fly-throughs? The join statistic of ``nfldm extend`` on real frames.

``benchmarks/extend_quality.py`` scores a fly-through by the frame-to-frame LPIPS at each window
join / its median along the path: the step crossing the join alone, and the largest of it and its
two neighbours, worst of the joins (2 joins for 2 windows). This script takes the real frames of
each scene of a split, in the order the collector recorded them, and scores the same statistics
at 2 positions per scene drawn at random (no join there: what real content gives), so the
generated fly-throughs' numbers can be read against real ones.

    python experiments/real_path_steps.py --data out/release/data --split test [--scenes 64] [--seed 0]

Prints, over the scenes: the median of the worst 3-step statistic / median and of the single-step
one, the share of scenes within 1.5, the share of all steps within 1.5x their path's median, and
the path's step length and turn per frame (to compare with the fly-through's).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--scenes", type=int, default=0, help="only the first N scenes (0: all)")
    ap.add_argument("--positions", type=int, default=2, help="positions per scene (extend: one per join)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = ap.parse_args()

    from nfldm.data.format import read_dataset, read_transforms
    from nfldm.data.loader import read_scene_raw
    from nfldm.metrics.lpips import lpips_distance

    rng = np.random.default_rng(args.seed)
    entries = read_dataset(args.data).split(args.split)
    if args.scenes:
        entries = entries[:args.scenes]
    worst3, worst1, within, moves, turns = [], [], [], [], []
    for e in entries:
        raw = read_scene_raw(read_transforms(e.path))          # frames in their recorded order
        rgb = torch.from_numpy(raw["images"]).permute(0, 3, 1, 2).float() / 255.0
        with torch.no_grad():
            step = lpips_distance(rgb[1:], rgb[:-1]).tolist()
        med = float(np.median(step))
        pos = rng.choice(np.arange(1, len(step) - 1), size=args.positions, replace=False)
        worst3.append(max(max(step[i - 1:i + 2]) for i in pos) / med)
        worst1.append(max(step[i] for i in pos) / med)
        within.append(float(np.mean(np.asarray(step) <= 1.5 * med)))
        c2w = raw["c2w"].astype(float)
        moves.append(float(np.median(np.linalg.norm(np.diff(c2w[:, :3, 3], axis=0), axis=1))))
        fwd = -c2w[:, :3, 2]                       # OpenGL / nerfstudio cameras look along -z
        cos = np.clip((fwd[1:] * fwd[:-1]).sum(1) / (np.linalg.norm(fwd[1:], axis=1) * np.linalg.norm(fwd[:-1], axis=1)), -1, 1)
        turns.append(float(np.degrees(np.median(np.arccos(cos)))))
    res = {"scenes": len(entries), "positions": args.positions, "steps_per_path": len(step),
           "worst_3_step_median": float(np.median(worst3)), "scenes_3_step_at_most_1.5": int(sum(w <= 1.5 for w in worst3)),
           "worst_step_median": float(np.median(worst1)), "scenes_step_at_most_1.5": int(sum(w <= 1.5 for w in worst1)),
           "path_steps_at_most_1.5x_median": float(np.mean(within)),
           "step_length_median_m": float(np.median(moves)), "turn_median_deg": float(np.median(turns))}
    for k, v in res.items():
        print(f"{k}: {v}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
