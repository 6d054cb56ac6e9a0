"""Held-out diffusion loss of one level of several ldm runs, under the same random draws.

    python experiments/heldout_loss.py --latents LATDIR --level c --runs RUN [RUN ...]
                                       [--split test] [--num 0] [--draws 4] [--seed 0]

The trainer's held-out value (``val_loss`` in metrics.jsonl) is each run's own fixed stream of 16
items, and a run whose training draws one more random number (``bev_look``'s look dropout) sees
other noise and timesteps: it cannot compare runs. This script scores every run's level (EMA
weights) on the same scenes of ``--split`` (all, or the first --num), ``--draws`` noise and
timestep draws per scene, identical for every run; condition dropout and look dropout off (the
full condition each level takes: a BEV level its map, with the look when it reads it). Prints the
mean loss per run with its standard error over scenes, and each run's paired difference to the
first run (the same draws, so the difference is much tighter than either).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch
from torch.utils.data import default_collate

from nfldm.ldm.data import LatentDataset
from nfldm.ldm.load import load_ldm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latents", required=True, help="a latent folder the runs' levels read (maps included)")
    ap.add_argument("--level", default="c", choices=("g", "c", "f"))
    ap.add_argument("--runs", nargs="+", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--num", type=int, default=0, help="first N scenes of the split (0: all)")
    ap.add_argument("--draws", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    per_run = {}
    for run in args.runs:
        model = load_ldm(run, device="cpu")["models"][args.level]
        model.cfg = replace(model.cfg, cond_drop_prob=0.0, bev_look_drop=0.0, g_drop_prob=0.0)
        model.eval()
        ds = LatentDataset(args.latents, args.split, model.cfg.traj_frames, max_scenes=args.num)
        losses = torch.zeros(len(ds), args.draws)
        with torch.no_grad():
            for d in range(args.draws):
                for i in range(0, len(ds), args.batch):
                    idx = list(range(i, min(i + args.batch, len(ds))))
                    batch = default_collate([ds[j] for j in idx])
                    for j, k in enumerate(idx):     # per item: its own draws, whatever the batch
                        torch.manual_seed(args.seed * 1_000_003 + d * 10_007 + k)
                        item = {key: v[j:j + 1] for key, v in batch.items()}
                        losses[k, d] = model.training_loss(item, 0)[0]
        per_run[run] = losses.mean(1)
        print(f"{run}: level {args.level} held-out loss {float(per_run[run].mean()):.4f} "
              f"+- {float(per_run[run].std() / len(ds) ** 0.5):.4f} ({len(ds)} {args.split} scenes x {args.draws} draws)",
              flush=True)
    first = args.runs[0]
    for run in args.runs[1:]:
        diff = per_run[run] - per_run[first]
        print(f"{run} - {first}: {float(diff.mean()):+.4f} +- {float(diff.std() / len(diff) ** 0.5):.4f}")


if __name__ == "__main__":
    main()
