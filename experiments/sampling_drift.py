"""Does a diffusion level stay on the data while it samples? (exposure bias)

    python experiments/sampling_drift.py --run LDM_RUN [--level c] [--num 6] [--sampler ddim]
                                        [--steps 25] [--seed 0] [--device auto]

For test scenes of the latent folder the run was trained on, the level (EMA weights,
conditioned on each scene's own clean coarser latents, as in ``denoise_by_t.py``) samples its
latent from pure noise. At every sampler step the script prints the roughness
(``nfldm.latent_ae.model.c_roughness`` over the two map axes: 1 - the lag-1 autocorrelation,
1 for white noise, 0 for a constant map) of

- ``x_t path``: the sampler's current x_t;
- ``x0_hat path``: the level's x0 prediction from that x_t;
- ``x0_hat real``: its x0 prediction from the scene's own latent noised to the same t with
  fresh noise, which is what training showed it;

then the roughness of the real latents and of the final samples. A level that samples well
keeps the two x0_hat columns close and ends near the real roughness; when ``x0_hat path``
grows rougher than ``x0_hat real`` as t falls, the level reads the noise it carries along its
own path as content: its predictions are only good near the training data (exposure bias,
Ning et al. 2023), the sign of an undertrained denoiser (docs/ldm.md).
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="ldm run (RUN with g/, c/, f/)")
    ap.add_argument("--level", default="c", choices=("c", "f"))
    ap.add_argument("--num", type=int, default=6, help="test scenes")
    ap.add_argument("--sampler", default="ddim", choices=("ddim", "ddpm", "dpm"))
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    from denoise_by_t import split_batch

    from nfldm.latent_ae.model import c_roughness
    from nfldm.ldm.model import predicted_x0
    from nfldm.ldm.sample import denoise
    from nfldm.pipeline.generate import load_pipeline

    pipe = load_pipeline(args.run, args.device)
    models, dev = pipe["models"], pipe["device"]
    if args.level not in models:
        raise SystemExit(f"error: {args.run} has no level {args.level} (levels: {sorted(models)})")
    m = models[args.level]
    batch = split_batch(pipe, "test", args.num)
    x0 = m.target(batch)
    ctx = m.context(batch)
    B = x0.shape[0]
    ac = m.scheduler.alphas_cumprod.to(dev)
    real_noise = torch.Generator().manual_seed(args.seed + 1)   # apart from the sampler's noise

    def rough(x: torch.Tensor) -> float:       # B x C x X x Y: the map axes only
        return float(c_roughness(x.unsqueeze(-1)))

    def on_step(t, x, out):
        a, s = ac[t].sqrt(), (1 - ac[t]).sqrt()
        xr = a * x0 + s * torch.randn(x0.shape, generator=real_noise).to(dev)
        out_r = m.predict(xr, t.to(dev).expand(B), ctx, m.tokens(None, B)).float()
        print(f"{int(t):5d}{rough(x):11.3f}{rough(predicted_x0(m, out.float(), x, t)):13.3f}"
              f"{rough(predicted_x0(m, out_r, xr, t)):13.3f}")

    print(f"{args.run} level {args.level}: {B} test scenes, {args.sampler}-{args.steps}, roughness "
          f"(1 = white noise); real latents {rough(x0):.3f}")
    print(f"{'t':>5s}{'x_t path':>11s}{'x0_hat path':>13s}{'x0_hat real':>13s}")
    x = denoise(m, B, ctx, None, 1.0, args.sampler, args.steps, torch.Generator().manual_seed(args.seed),
                on_step=on_step)
    print(f"final samples: roughness {rough(x):.3f}, std {float(x.std()):.3f} "
          f"(real: {rough(x0):.3f}, std {float(x0.std()):.3f})")


if __name__ == "__main__":
    main()
