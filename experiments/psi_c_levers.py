"""Sampling-side levers on psi_c, scored as the release targets score unconditional samples.

    python experiments/psi_c_levers.py --run out/release_trajc2 --renderer out/release/renderer \
        --data out/release/data --out D [--guide RUN --guide-scale W] [--c-scale S] [--c-dc-from-train]
        [--num 16] [--seed 0]

``--guide RUN``: psi_c is guided by the c level of another ldm run on the same latents,
``D_guide + W (D - D_guide)`` (``sample_latents(guides=...)``: autoguidance when RUN is a weaker
psi_c, classifier-free guidance by a separate model when RUN lacks one of psi_c's conditions).
``--c-scale S``: the sampled standardised c is multiplied by S before decoding (f is sampled
from the unscaled c). ``--c-dc-from-train``: each sample's scene-level part of c (the spatial mean of
every folded standardised channel, its "DC": a linear read-out of it predicts a scene's mean
brightness, test R^2 0.90) is replaced by that of a random train scene, and psi_f samples f again
given the new c (the DC distributed as the data's, the rest of c as psi_c samples it). Then ``nfldm eval generation`` (Inception FID / KID, path agreement) of the
D folder against the test split, and the std / neighbour differences of the sampled standardised c
beside the test scenes' (the contrast the levers change). docs/notes/2026-12-05-where-the-fid-goes.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="ldm run (g, c, f) or bundle")
    ap.add_argument("--renderer", default=None)
    ap.add_argument("--data", required=True, help="the dataset whose test split the samples are scored on")
    ap.add_argument("--out", required=True)
    ap.add_argument("--guide", default=None, help="ldm run whose c level guides psi_c")
    ap.add_argument("--guide-scale", type=float, default=2.0)
    ap.add_argument("--c-scale", type=float, default=1.0)
    ap.add_argument("--c-dc-from-train", action="store_true")
    ap.add_argument("--num", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    import nfldm.pipeline.generate as generate
    from nfldm.ldm.data import LatentDataset, unfold_c
    from nfldm.ldm.evaluate import eval_generation
    from nfldm.ldm.load import load_ldm

    guide = load_ldm(args.guide, args.device)["models"]["c"] if args.guide else None
    import torch

    latdir = json.loads((Path(args.run) / "c" / "config.json").read_text())["latents"]
    train_dc = None
    if args.c_dc_from_train:
        train = LatentDataset(latdir, "train")
        train_dc = torch.stack([it["c"].mean((1, 2)) for it in train.items])      # N x c_ch Zc
    plain = generate.sample_latents
    seen = {}

    def levered(models, stats, *a, **kw):
        lat = plain(models, stats, *a, **kw, **({"guides": {"c": guide}, "guide_scale": args.guide_scale}
                                                 if guide is not None else {}))
        if args.c_scale != 1.0:
            lat["c_n"] = lat["c_n"] * args.c_scale
            lat["c"] = stats.denormalise("c", unfold_c(lat["c_n"], models["g"].cfg.c_shape[0]))
        if train_dc is not None:
            gen = torch.Generator().manual_seed(args.seed)
            pick = train_dc[torch.randint(len(train_dc), (len(lat["c_n"]),), generator=gen)]
            c_n = lat["c_n"] - lat["c_n"].mean((2, 3), keepdim=True) + pick[..., None, None]
            c = stats.denormalise("c", unfold_c(c_n, models["g"].cfg.c_shape[0]))
            kw = {k: v for k, v in kw.items() if k not in ("traj", "g", "c")}
            lat = plain(models, stats, *a, **kw, traj=lat["traj"], g=lat["g"], c=c)
        seen["c_n"] = lat["c_n"]
        return lat

    generate.sample_latents = levered       # sample() calls it by this name
    try:
        generate.sample(args.run, num=args.num, sampler="dpm", steps=20, seed=args.seed, out=args.out,
                        device=args.device, progress=False, renderer=args.renderer)
    finally:
        generate.sample_latents = plain
    e = eval_generation(args.out, args.data, split="test", out=Path(args.out) / "eval.json", device=args.device,
                        progress=False, floor_split=None, efficientnet=False)
    test = LatentDataset(latdir, "test")

    real = torch.stack([test[i]["c"] for i in range(0, len(test), max(1, len(test) // 64))])

    def contrast(x):
        return x.std().item(), (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean().item()

    (s_std, s_hf), (r_std, r_hf) = contrast(seen["c_n"]), contrast(real)
    print(f"Inception FID {e['inception']['fid']:.1f} / KID {e['inception']['kid']:.4f}; path agreement "
          f"{e['path_agreement']['mean']:.3f}; standardised c std {s_std:.2f} (test scenes {r_std:.2f}), "
          f"neighbour difference {s_hf:.2f} ({r_hf:.2f})")


if __name__ == "__main__":
    main()
