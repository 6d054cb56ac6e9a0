"""Held-out diffusion loss of trained ldm levels on the same draws: compare levels of different
widths or recipes (the trainer's own held-out value uses its run's first items and seed).

    python experiments/heldout_level.py --latents LAT [--split val] [--draws 4] [--t-below T] [--t-from T]
        LEVEL_DIR [LEVEL_DIR ...]

LEVEL_DIR: a level folder (config.json + weights, e.g. RUN/c or a bundle's bev/c). Every level is
scored with its EMA weights on every scene of the split, ``--draws`` times, draw k under seed k
(timesteps, noise and condition dropout as in training): levels of one config family consume the
same random stream, so they see the same draws. Prints the mean loss (and the low / high-t parts
the loss reports) per level. ``--t-below T``: every level scored at the timesteps t < T only (a
low-noise expert, ``train_t_below``, against levels trained on every t); ``--t-from T``: at t >= T
only (a high-noise expert, ``train_t_from``).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latents", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--draws", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--t-below", type=int, default=0, help="score at the timesteps t < T only (0: every t)")
    ap.add_argument("--t-from", type=int, default=0, help="score at the timesteps t >= T only (0: every t)")
    ap.add_argument("levels", nargs="+")
    args = ap.parse_args()

    from torch.utils.data import default_collate

    from nfldm.ldm.config import config_from_dict
    from nfldm.ldm.data import LatentDataset
    from nfldm.ldm.model import LevelDiffusion
    from nfldm.trainer import load_model_weights, read_run_config

    datasets = {}
    for d in args.levels:
        rc = read_run_config(d)
        cfg = config_from_dict(rc["model"])
        band = {k: v for k, v in (("train_t_below", args.t_below), ("train_t_from", args.t_from)) if v}
        model = LevelDiffusion(replace(cfg, **band) if band else cfg)
        info = load_model_weights(d, model, prefer_ema=True)
        model.eval()
        key = (model.cfg.traj_frames, str(rc["stats"]))
        if key not in datasets:
            datasets[key] = LatentDataset(args.latents, args.split, traj_frames=model.cfg.traj_frames,
                                          stats=rc["stats"])
        ds = datasets[key]
        sums: dict[str, float] = {}
        n = 0
        with torch.no_grad():
            for k in range(args.draws):
                torch.manual_seed(k)
                for i in range(0, len(ds), args.batch):
                    batch = default_collate([ds[j] for j in range(i, min(len(ds), i + args.batch))])
                    loss, metrics = model.training_loss(batch, 0)
                    B = len(batch["traj"])
                    for name, v in {"loss": loss, **metrics}.items():
                        if torch.is_tensor(v) and v.numel() == 1 or isinstance(v, float):
                            sums[name] = sums.get(name, 0.0) + float(v) * B
                    n += B
        params = sum(p.numel() for p in model.parameters())
        parts = ", ".join(f"{k} {v / n:.4f}" for k, v in sums.items())
        print(f"{d}: step {info['step']}, {params / 1e6:.2f} M parameters, {len(ds)} {args.split} scenes x "
              f"{args.draws} draws: {parts}", flush=True)


if __name__ == "__main__":
    main()
