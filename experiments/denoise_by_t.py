"""How much does each diffusion level denoise, noise level by noise level?

    python experiments/denoise_by_t.py --run LDM_RUN [--num 16] [--t 20 100 200 400 600 800 950]
                                      [--seed 0] [--device auto] [--out FILE.png]

For each level of the run (g, c, f) and for the train and test splits of the latent folder it
was trained on: the scenes' standardised latents x0 are noised to x_t = alpha_t x0 + sigma_t eps,
the level (EMA weights, conditioned on the scene's own CLEAN coarser latents and trajectory,
as in training) predicts x0_hat (alpha_t x_t - sigma_t v_hat for v-prediction), and the script prints the mean
squared error of x0_hat next to sigma_t^2, the error of the structure-blind estimate alpha_t x_t
(the posterior mean for zero-mean, unit-variance data without any structure). Their ratio is
the share of the noise the level fails to remove: 1 = no denoising at all.

For c and f it also prints the pre-quantisation "jitter": the mean squared distance, in
standardised units, between the latents the diffusion models (pre-quantisation, docs/latent-ae.md)
and their codebook vectors, with the noise level t at which sigma_t^2 equals it (below that t
added noise is no larger than the jitter, which the decoder's quantiser removes anyway), and
the number of distinct codes a scene uses.

``--out``: a picture of c for 6 test scenes, one row each: 4 of the scene's c channels (folded
channels 0, 5, 21, 40, each scaled to its own range), then the same channels of a c that psi_c
samples given the scene's g (and trajectory, for runs that take it; DPM-Solver++ 20 steps).
"""

from __future__ import annotations

import argparse

import torch


def split_batch(pipe: dict, split: str, num: int) -> dict:
    """The first ``num`` scenes of ``split`` of the latent folder a loaded pipeline
    (``nfldm.pipeline.generate.load_pipeline``) was trained on, standardised as in training, stacked
    into one batch on its device: g, traj, c (folded), f (those the folder has)."""
    from pathlib import Path

    from nfldm.latent_ae.latents import read_latent_index
    from nfldm.ldm.data import LatentDataset

    latdir = Path(pipe["config"]["latents"])
    ds = LatentDataset(latdir, split, pipe["models"]["g"].cfg.traj_frames, index=read_latent_index(latdir),
                       stats=pipe["config"]["stats"])
    items = [ds[i] for i in range(min(num, len(ds)))]
    return {k: torch.stack([it[k] for it in items]).to(pipe["device"]) for k in ("g", "traj", "c", "f")
            if k in items[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="ldm run (RUN with g/, c/, f/)")
    ap.add_argument("--num", type=int, default=16, help="scenes per split")
    ap.add_argument("--t", type=int, nargs="+", default=[20, 100, 200, 400, 600, 800, 950])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None, help="PNG: real vs sampled c channels of 6 test scenes")
    args = ap.parse_args()

    from pathlib import Path

    from nfldm.ldm.data import unfold_c
    from nfldm.ldm.model import predicted_x0
    from nfldm.pipeline.generate import load_pipeline

    pipe = load_pipeline(args.run, args.device)
    models, rc, lae, stats, dev = pipe["models"], pipe["config"], pipe["lae"], pipe["stats"], pipe["device"]
    c_ch = models["g"].cfg.c_shape[0]
    print(f"{args.run}: x0-prediction MSE / sigma_t^2 (standardised latents; {args.num} scenes per split)")
    print(f"{'level':6s}{'split':7s}" + "".join(f"{'t=' + str(t):>16s}" for t in args.t))
    batches = {split: split_batch(pipe, split, args.num) for split in ("train", "test")}
    for lv, model in models.items():
        ac = model.scheduler.alphas_cumprod.to(dev)
        for split, batch in batches.items():
            x0 = model.target(batch)
            ctx = model.context(batch)
            B = x0.shape[0]
            gen = torch.Generator().manual_seed(args.seed)
            cells = []
            for t in args.t:
                a, s = ac[t].sqrt(), (1 - ac[t]).sqrt()
                eps = torch.randn(x0.shape, generator=gen).to(dev)
                x_t = a * x0 + s * eps
                with torch.no_grad():
                    out = model.predict(x_t, torch.full((B,), t, device=dev), ctx, model.tokens(None, B))
                err = float(((predicted_x0(model, out.float(), x_t, t) - x0) ** 2).mean())
                cells.append(f"{err:7.3f} / {float(s ** 2):5.3f}")
            print(f"{lv:6s}{split:7s}" + "".join(f"{c:>16s}" for c in cells))
    # pre-quantisation jitter of c and f
    if lae is not None and "c" in models:
        batch = batches["train"]
        raw = {"c": stats.denormalise("c", unfold_c(batch["c"].cpu(), c_ch))}
        if "f" in models:
            raw["f"] = stats.denormalise("f", batch["f"].cpu())
        lae_dev = next(lae.parameters()).device
        with torch.no_grad():
            q = lae.quantize(raw["c"].to(lae_dev), raw["f"].to(lae_dev) if "f" in raw else None)
        ac = models["c"].scheduler.alphas_cumprod
        print("pre-quantisation jitter (train scenes, standardised units), where sigma_t^2 equals it, codes per scene:")
        for k, x in raw.items():
            d = stats.normalise(k, x) - stats.normalise(k, q[f"{k}_q"].cpu())
            jit = float((d ** 2).mean())
            t_eq = int(torch.searchsorted(1 - ac.double(), torch.tensor([jit], dtype=torch.float64))[0])
            used = [int(q[f"{k}_indices"][i].unique().numel()) for i in range(len(x))]
            print(f"  {k}: jitter {jit:.3f} (sigma_t^2 = jitter at t = {t_eq}); codes per scene "
                  f"{min(used)}-{max(used)} of {lae.cfg.codebook_size}")
    if args.out and "c" in models:
        picture(models["c"], batches["test"], args.out, args.seed)


def picture(model, batch: dict, out: str, seed: int, channels=(0, 5, 21, 40)) -> None:
    import numpy as np

    from nfldm.ldm.sample import denoise
    from nfldm.utils.io import atomic_save_png

    n = min(6, batch["c"].shape[0])
    sub = {k: v[:n] for k, v in batch.items()}
    x = denoise(model, n, model.context(sub), None, 1.0, "dpm", 20, torch.Generator().manual_seed(seed))
    chans = [k for k in channels if k < x.shape[1]]

    def tile(a):
        a = a.float().cpu().numpy()
        a = (a - a.min()) / (a.max() - a.min() + 1e-8)
        return np.pad(a, 1, constant_values=1.0)

    rows = [np.concatenate([tile(sub["c"][i, k]) for k in chans] + [np.ones((sub["c"].shape[2] + 2, 4))] +
                           [tile(x[i, k]) for k in chans], 1) for i in range(n)]
    img = np.kron(np.concatenate(rows, 0), np.ones((6, 6)))
    atomic_save_png(out, (img * 255).astype(np.uint8))
    print(f"real c channels {chans} | sampled -> {out}")


if __name__ == "__main__":
    main()
