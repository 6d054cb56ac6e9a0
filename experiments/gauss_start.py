"""psi_c started from a Gaussian model of c: does the analytic high-noise band restore the spread
of brightness that psi_c loses when it samples from pure noise?

    python experiments/gauss_start.py --latents out/release/latents --out D [--run RUN] [--t0 900]
        [--num 16] [--seed 0] [--renderer R] [--ridge 10]

The Gaussian: c (standardised, folded) given psi_c's global context [g, traj] by ridge regression
on the train split, c ~ N(mu + B [g, traj], Sigma_res) with Sigma_res the train residuals' empirical
covariance (a sample: mu + B x + R^T z / sqrt(N - 1), z ~ N(0, I_N), R the N x D residuals). For
t >= t0 the Gaussian's own reverse process is exact in the Gaussian model, so starting psi_c at
q(x_t0 | c_gauss) is the Gaussian model's sampler above t0 and psi_c's below (Wang & Vastola 2023:
diffusion models' high-noise band is close to the data's Gaussian approximation). psi_g and psi_f
are the run's own. Writes an ``nfldm sample`` folder (score it with ``nfldm eval generation`` and
``experiments/scene_brightness.py``).
"""

from __future__ import annotations

import argparse
import time

import torch


def fit_gauss(latdir: str, stats: dict, traj_frames: int, ridge: float) -> dict:
    """Ridge regression of folded, standardised c on [1, g, traj] over the train split, and the
    residuals. -> {B: (1 + g + 9T) x D, R: N x D}"""
    from nfldm.ldm.data import LatentDataset

    ds = LatentDataset(latdir, "train", traj_frames=traj_frames, stats=stats)
    X = torch.stack([torch.cat([torch.ones(1), it["g"], it["traj"]]) for it in ds.items]).double()
    C = torch.stack([it["c"].flatten() for it in ds.items]).double()
    reg = ridge * torch.eye(X.shape[1], dtype=torch.float64)
    reg[0, 0] = 0.0
    B = torch.linalg.solve(X.T @ X + reg, X.T @ C)
    R = C - X @ B
    print(f"gauss: {len(ds)} train windows, c dims {C.shape[1]}; residual variance "
          f"{float(R.var()):.3f} of {float(C.var()):.3f}", flush=True)
    return {"B": B.float(), "R": R.float(), "shape": tuple(ds.items[0]["c"].shape)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latents", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--run", default=None)
    ap.add_argument("--renderer", default=None)
    ap.add_argument("--t0", type=int, default=900)
    ap.add_argument("--num", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--ridge", type=float, default=10.0)
    ap.add_argument("--scale", type=float, default=1.0, help="the residual's scale (1: the train covariance)")
    args = ap.parse_args()

    import nfldm.ldm.sample as ls
    import nfldm.pipeline.generate as generate
    from pathlib import Path

    from nfldm.ldm.load import load_ldm

    run = args.run or str(Path(generate.__file__).parents[1] / "weights" / "tiny")
    ldm = load_ldm(run, "cpu")
    cm = ldm["models"]["c"]
    gs = fit_gauss(args.latents, ldm["config"]["stats"], cm.cfg.traj_frames, args.ridge)
    gen = torch.Generator().manual_seed(10_000 + args.seed)
    plain = ls.denoise

    def denoise(model, batch, ctx, *a, **kw):
        if model.level != "c" or kw.get("start") is not None:
            return plain(model, batch, ctx, *a, **kw)
        x = torch.cat([torch.ones(batch, 1), ctx["g"].cpu().float(), ctx["traj"].cpu().float()], 1)
        z = torch.randn(batch, gs["R"].shape[0], generator=gen)
        c0 = x @ gs["B"] + args.scale * z @ gs["R"] / (gs["R"].shape[0] - 1) ** 0.5
        return plain(model, batch, ctx, *a, start=(c0.view(batch, *gs["shape"]), args.t0), **kw)

    ls.denoise = denoise
    t = time.perf_counter()
    try:
        generate.sample(args.run, num=args.num, sampler="dpm", steps=args.steps, seed=args.seed, out=args.out,
                        renderer=args.renderer)
    finally:
        ls.denoise = plain
    print(f"{args.num} samples in {time.perf_counter() - t:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
