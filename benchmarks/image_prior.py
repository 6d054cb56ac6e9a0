"""What the image prior has learned: its samples against the real test views.

    python benchmarks/image_prior.py --prior RUN --data DATASET [--split test] [--num 384]
                                     [--scale 3] [--steps 25] [--raw] [--diagnose-only]
                                     [--renders SAMPLES] --out DIR

First prints what score distillation depends on (:func:`diagnose`): how much each test frame's own
embedding lowers the prior's noise error at t = 100 / 300 / 600 (the condition's pull), and the
mean colour of its denoised estimate against the frames' (its bias). Then the look gain: how much
lower the noise error of test frames is under their own map's mean embedding than under another
map's, and than under the train frames' mean (y): the kind of condition refinement and style give
(means over many frames); a prior that cannot tell two looks apart cannot be steered by them.
With ``--renders`` (a folder of ``nfldm sample``: the look negative guidance pushes away from),
:func:`domain_gain` too: on real test frames and on those renders, how much lower the noise error
is under their own look's mean embedding (y: the prior's real train frames; y': the renders', as
``nfldm refine --negative auto`` takes it) than under the other look's. Negative guidance steers by
eps(x_t; y) - eps(x_t; y'): a prior for which both are the same cannot steer.

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


def _noised(prior, images: np.ndarray, ts):
    """Frames (uint8 N x S x S x 3) noised to each t, the same noise draws on every call:
    yields (t, x0, noise, x_t, alpha_bar) per t of ``ts``."""
    g = torch.Generator().manual_seed(0)
    dev = next(prior.parameters()).device
    x0 = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1).to(dev)
    for tt in ts:
        t = torch.full((len(x0),), tt, device=dev)
        noise = torch.randn(x0.shape, generator=g).to(dev)
        a = prior.scheduler.alphas_cumprod.to(dev)[t].view(-1, 1, 1, 1)
        yield t, x0, noise, a.sqrt() * x0 + (1 - a).sqrt() * noise, a


def diagnose(prior, images: np.ndarray, emb: torch.Tensor, ts=(100, 300, 600)) -> dict:
    """What score distillation depends on, on real frames (uint8 N x S x S x 3) noised to each t:
    how much the frame's own embedding lowers the noise error against the null embedding (a prior
    that ignores its condition cannot be steered by y / y'), and the mean colour of the denoised
    estimate x0_hat against the frames' (a biased x0_hat drifts SDS)."""
    from nfldm.refine.model import eps_pair

    out = {"t": {}, "lines": []}
    for t, x0, noise, xt, a in _noised(prior, images, ts):
        tt = int(t[0])
        out["real_rgb_mean"] = x0.mean((0, 2, 3)).tolist()
        null, own = eps_pair(prior, xt, t, emb, None)
        e_null, e_own = float(((null - noise) ** 2).mean()), float(((own - noise) ** 2).mean())
        x0h = ((xt - (1 - a).sqrt() * own) / a.sqrt()).mean((0, 2, 3))
        out["t"][tt] = {"eps_mse_null": e_null, "eps_mse_own_embedding": e_own,
                        "condition_gain": 1 - e_own / e_null, "x0_hat_rgb_mean": x0h.tolist()}
        out["lines"].append(f"t={tt}: the frame's own embedding lowers the noise error by {100 * (1 - e_own / e_null):.1f} % "
                            f"({e_null:.4f} -> {e_own:.4f}); x0_hat mean RGB {[round(float(v), 3) for v in x0h]} "
                            f"vs real {[round(float(v), 3) for v in out['real_rgb_mean']]}")
    return out


def domain_gain(prior, images: np.ndarray, y_match: torch.Tensor, y_other: torch.Tensor,
                ts=(100, 300, 600)) -> dict:
    """{t: 1 - noise error under y_match / noise error under y_other} on frames (uint8 N x S x S x 3)
    noised to t (the same noise for both): > 0 when the prior tells the frames' look (y_match)
    from the other one."""
    from nfldm.refine.model import eps_pair

    out = {}
    for t, _, noise, xt, _ in _noised(prior, images, ts):
        other, match = eps_pair(prior, xt, t, y_match, y_other)
        e_o, e_m = float(((other - noise) ** 2).mean()), float(((match - noise) ** 2).mean())
        out[int(t[0])] = 1 - e_m / e_o
    return out


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
    ap.add_argument("--diagnose-only", action="store_true",
                    help="only what SDS depends on (no sampling, no FID): does the prior use its embedding, "
                    "and is its denoised estimate biased")
    ap.add_argument("--renders", default=None, help="a folder of nfldm sample: also measure domain_gain")
    ap.add_argument("--timesteps", default="100,300,600",
                    help="the noise levels (of 1000) the diagnostics measure at, comma-separated")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    ts = tuple(int(v) for v in args.timesteps.split(","))

    from nfldm.ldm.evaluate import cached_features, real_images_by_group, to_view_size
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
    real, groups = real_images_by_group(args.data, args.split, 5000)
    real = to_view_size(real, 64)
    pick = np.round(np.linspace(0, len(real) - 1, min(args.num, len(real)))).astype(int)
    y = embed_images(real[pick], dev)
    diag = diagnose(prior, real[pick][:64], y[:64].to(dev), ts)
    for line in diag["lines"]:
        print(line)
    # a look, not a frame: each frame under its own map's mean embedding (over the picked frames of
    # that map) against another map's mean and against the prior's real train mean (y)
    gp = [groups[i] for i in pick]
    names = list(dict.fromkeys(gp))
    if len(names) > 1:
        means = torch.stack([y[[k for k, g in enumerate(gp) if g == n]].mean(0) for n in names])
        own_k = torch.tensor([names.index(g) for g in gp])
        sel = np.round(np.linspace(0, len(pick) - 1, min(64, len(pick)))).astype(int)
        own, other = means[own_k[sel]].to(dev), means[(own_k[sel] + 1) % len(names)].to(dev)
        frames = real[pick][sel]
        diag["look_gain"] = {
            "own map's mean vs another map's": domain_gain(prior, frames, own, other, ts),
            "own map's mean vs the train frames' mean (y)": domain_gain(
                prior, frames, own, p["mean_embedding"].expand(len(sel), -1), ts)}
        for name, d in diag["look_gain"].items():
            print(f"look gain, {name}: " + ", ".join(f"t={t}: {100 * v:.1f} %" for t, v in d.items()))
    if args.renders:
        from nfldm.ldm.evaluate import generated_images

        rend = to_view_size(generated_images(args.renders), 64)
        rend = rend[np.round(np.linspace(0, len(rend) - 1, min(64, len(rend)))).astype(int)]
        y_real = p["mean_embedding"]
        y_rend = embed_images(to_view_size(generated_images(args.renders), 64), dev).mean(0).to(dev)
        diag["domain_gain"] = {"real frames (y vs y')": domain_gain(prior, real[pick][:64], y_real, y_rend, ts),
                               "renders (y' vs y)": domain_gain(prior, rend, y_rend, y_real, ts)}
        for name, d in diag["domain_gain"].items():
            print(f"domain gain on {name}: " + ", ".join(f"t={t}: {100 * v:.1f} %" for t, v in d.items()))
    if args.diagnose_only:
        (out / "image_prior_diagnosis.json").write_text(json.dumps(diag, indent=2) + "\n")
        return
    var = sample_images(prior, len(pick), y.to(dev), None, args.scale, args.steps, seed=0)
    unc = sample_images(prior, len(pick), None, steps=args.steps, seed=1)
    as_u8 = lambda x: (x.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)      # noqa: E731
    path = wheel_file(*INCEPTION_WHEEL)
    net = InceptionFeatures(path)
    fr = cached_features("inception", file_sha1(path), args.data, args.split, 5000, 64,
                         lambda: extract(net, real, "cpu"))
    res = {"diagnosis": diag, "prior": str(args.prior), "step": p["step"], "weights": "raw" if args.raw else "ema", "num": int(len(pick)), "scale": args.scale,
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
