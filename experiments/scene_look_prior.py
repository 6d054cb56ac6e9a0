"""Does psi_g sample the scenes' looks as the data has them? (levels trained with ``scene_look``)

    python experiments/scene_look_prior.py --run out/slook [--latents LATDIR] [--num 256] [--seed 0]

Samples ``--num`` [g, traj, look] from the run's psi_g (DPM-Solver++ 20 steps) and prints, per look
number (light, floor / ceiling / wall colours: ``data.bev.LOOK_KEYS``), the mean and std of the
sampled looks beside the train split's (the latent folder the run was trained on, unless
``--latents``), and the median distance (standardised units) from a sampled look to its nearest
train look (those after the first ``--num``) against the same for the first ``--num`` train looks
(copies would be near 0).
docs/notes/2026-12-05-the-scenes-look-as-a-latent.md.
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="an ldm run whose g level was trained with scene_look")
    ap.add_argument("--latents", default=None)
    ap.add_argument("--num", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from nfldm.data.bev import LOOK_KEYS
    from nfldm.ldm.data import LatentDataset
    from nfldm.ldm.load import load_ldm
    from nfldm.ldm.sample import denoise

    pipe = load_ldm(args.run, "cpu")
    gm = pipe["models"]["g"]
    if not gm.cfg.scene_look:
        raise SystemExit(f"error: {args.run}: its g level was not trained with scene_look")
    ds = LatentDataset(args.latents or pipe["config"]["latents"], "train")
    real = torch.stack([it["look"] for it in ds.items])
    x = denoise(gm, args.num, {}, None, 1.0, "dpm", 20, torch.Generator().manual_seed(args.seed), False, "psi_g")
    look = gm.denormalise_look(x[:, -gm.cfg.scene_look_dim:])
    print(f"{'look':>10} {'train mean':>11} {'sampled':>8} {'train std':>10} {'sampled':>8}")
    for k, name in enumerate(LOOK_KEYS):
        print(f"{name:>10} {real[:, k].mean():11.3f} {look[:, k].mean():8.3f} {real[:, k].std():10.3f} "
              f"{look[:, k].std():8.3f}")
    rn, ln = gm.normalise_look(real), gm.normalise_look(look)
    q, ref = rn[:args.num], rn[args.num:]        # the first --num train looks against the rest, as the samples
    print(f"median distance to the nearest of the train looks after the first {args.num}: sampled "
          f"{torch.cdist(ln, ref).min(1).values.median():.2f}, the first {args.num} train looks "
          f"{torch.cdist(q, ref).min(1).values.median():.2f}")


if __name__ == "__main__":
    main()
