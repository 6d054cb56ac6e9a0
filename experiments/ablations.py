"""Stage-3 ablations at one time budget: full hierarchy (g + c + f) vs coarse-only (c) vs
global-only (g, GAUDI-like), scored with Inception FID / KID (``nfldm.pipeline.ablation``).

    python experiments/ablations.py --voxels VOXDIR --data DATASET [--out out/ablations]
                                    [--lae-minutes 6] [--ldm-minutes 8] [--modes gcf,c,g] [--num 16]
                                    [--augment 1|4|8] [--fixed-steps] [--train-only]

Resumable: run it again after an interruption. Prints one table; OUT/results.json holds every
number. The paper (Carla): full 35.69 < coarse-only 46.43 (Inception FID).
"""

from __future__ import annotations

import argparse

from nfldm.pipeline.ablation import ablation_table, run_ablation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--voxels", required=True, help="voxel folder (nfldm encode-voxels)")
    ap.add_argument("--data", required=True, help="dataset with a test split (the real views)")
    ap.add_argument("--out", default="out/ablations")
    ap.add_argument("--lae-minutes", type=float, default=6.0)
    ap.add_argument("--ldm-minutes", type=float, default=8.0)
    ap.add_argument("--modes", default="gcf,c,g")
    ap.add_argument("--num", type=int, default=16)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--augment", type=int, default=1, choices=(1, 4, 8),
                    help="encode-latents --augment: train scenes turned (4) and mirrored (8) for stage 3")
    ap.add_argument("--fixed-steps", action="store_true",
                    help="train each run for the steps its minutes stand for (the measured speeds), with a loose "
                         "time cap (10x): results then do not depend on how busy the machine is")
    ap.add_argument("--train-only", action="store_true", help="train (and evaluate stage 2) only; sample and score later")
    args = ap.parse_args()
    res = run_ablation(args.voxels, args.data, args.out, args.lae_minutes, args.ldm_minutes,
                       tuple(args.modes.split(",")), args.num, args.seed, args.augment, args.fixed_steps,
                       args.train_only, args.device)
    print(ablation_table(res))


if __name__ == "__main__":
    main()
