"""Does a stage-2 decoder trained on perturbed latents turn sampled latents into cleaner scenes?

    python experiments/robust_decoder.py --run LDM_RUN --data DATASET [--noise 0 0.5] [--minutes 5]
                                        [--num 16] [--out out/robust_decoder]

``experiments/ldm_levels.py`` found that small errors of sampled latents in empty regions decode
to scattered density ("floaters"). This experiment fine-tunes ONLY the decoder of the ldm run's
latent auto-encoder (encoders and codebooks frozen, so the latents and the trained diffusion
levels stay valid) for ``--minutes`` per setting, with Gaussian noise of ``noise`` x the
per-channel std of the latents added to c and f BEFORE quantisation (so codes flip as they do
for sampled latents), on the stage-2 losses of the run (voxel + image loss). ``noise 0`` is the
control: the same extra training without perturbation.

For each setting, and for the decoder as it was: the stage-2 cost proxy (renders of decoded
REAL test latents against renders of the stage-1 voxels, PSNR), the density statistics of
``ldm_levels.py`` on decoded SAMPLED latents (the same samples for every decoder), and the
offline EfficientNet-Lite0 Frechet distance / KID of their frames along the sampled paths
against the test views (not comparable to published FIDs). Writes OUT/<setting>/sample_*/frames
and OUT/topdown.png (rows: samples; columns: decoders).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="ldm run (full g + c + f model)")
    ap.add_argument("--data", required=True, help="dataset with a test split (the real views)")
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.5])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--num", type=int, default=16)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/robust_decoder")
    args = ap.parse_args()

    import sys

    from tqdm.auto import tqdm

    sys.path.insert(0, str(Path(__file__).parent))
    from ldm_levels import density_stats, psnr

    from nfldm.latent_ae.latents import read_latent_index
    from nfldm.ldm.evaluate import eval_generation
    from nfldm.ldm.sample import render_path, sample_latents
    from nfldm.pipeline.generate import _render_path
    from nfldm.scene_ae.flythrough import grid_image, to_uint8, upscale
    from nfldm.scene_ae.voxels import VoxelDataset, load_voxels, read_voxel_index
    from nfldm.utils.io import atomic_save_png

    torch.manual_seed(args.seed)
    from nfldm.pipeline.generate import load_pipeline

    pipe = load_pipeline(args.run, "cpu")
    lae0, sae, stats, rc = pipe["lae"], pipe["sae"], pipe["stats"], pipe["config"]
    for p in sae.parameters():
        p.requires_grad_(False)              # the image loss needs gradients into V only
    lindex = read_latent_index(rc["latents"])
    voxdir = lindex["voxels"]
    vindex = read_voxel_index(voxdir)
    train = VoxelDataset(voxdir, "train", index=vindex)
    test_names = [s["name"] for s in lindex["scenes"] if s["split"] == "test"][:8]

    # the same sampled latents and paths for every decoder
    lat = sample_latents(pipe["models"], stats, args.num, "dpm", 20, args.seed, progress=False)
    setup = rc["render"]
    bounds = torch.tensor(setup["bounds"], dtype=torch.float32)
    intr = torch.tensor(setup["intrinsics"], dtype=torch.float32)
    paths = [render_path(lat["traj"][i], bounds, args.frames)[1] for i in range(args.num)]   # as `nfldm sample`

    def fine_tune(noise: float):
        lae = copy.deepcopy(lae0)
        lae.set_renderer(sae)
        for p in lae.parameters():
            p.requires_grad_(False)
        params = list(lae.decoder.parameters())
        for p in params:
            p.requires_grad_(True)
        lae.eval()
        lae.decoder.train()
        quantize = lae.quantize

        def noisy(c, f):
            if c is not None and noise > 0:
                c = c + noise * stats._view("c", c, stats.std) * torch.randn_like(c)
            if f is not None and noise > 0:
                f = f + noise * stats._view("f", f, stats.std) * torch.randn_like(f)
            return quantize(c, f)

        lae.quantize = noisy
        opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
        t0, step = time.time(), 0
        g = torch.Generator().manual_seed(args.seed)
        bar = tqdm(desc=f"decoder, noise {noise:g}", unit="step")
        while time.time() - t0 < args.minutes * 60:
            idx = torch.randint(0, len(train), (2,), generator=g).tolist()
            items = [train[i] for i in idx]
            batch = {k: torch.stack([it[k] for it in items]) for k in ("V", "c2w", "intrinsics", "bounds")}
            loss, m = lae.losses(batch)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss):.3f}")
        bar.close()
        del lae.quantize
        lae.eval()
        return lae, step

    decoders = [("as trained", lae0, 0)]
    for noise in args.noise:
        lae, steps = fine_tune(noise)
        decoders.append((f"+{args.minutes:g} min, noise {noise:g}", lae, steps))

    out = Path(args.out)
    rows, tops = [], []
    for k, (name, lae, steps) in enumerate(decoders):
        with torch.no_grad():
            # stage-2 cost proxy on real test latents
            ps = []
            for n in test_names:
                v = load_voxels(voxdir, n, vindex)
                Vd = lae(v["V"][None])["V_hat"][0].float()
                cams = v["c2w"][::3]
                ref, _ = _render_path(sae, v["V"], v["bounds"], v["intrinsics"][0], cams)
                got, _ = _render_path(sae, Vd, v["bounds"], v["intrinsics"][0], cams)
                ps.append(psnr(got, ref))
            st = {"occ": [], "isolated": [], "bev_tv": []}
            top = []
            d_out = out / f"decoder_{k}"
            for i in tqdm(range(args.num), desc=name, unit="scene"):
                V = lae.decode_latents(*(lat[key][i:i + 1] for key in ("g", "c", "f")))[0].float()
                s = density_stats(V, bounds)
                for key in st:
                    st[key].append(s[key])
                top.append(s["bev"])
                rgb, _ = _render_path(sae, V, bounds, intr, paths[i])
                for j, fr in enumerate(to_uint8(rgb)):
                    atomic_save_png(d_out / f"sample_{i:04d}" / "frames" / f"frame_{j:04d}.png", fr,
                                    compress_level=1)
        e = eval_generation(d_out, args.data, "test", d_out / "metrics.json", device="cpu",
                            progress=False)["efficientnet_lite0"]
        rows.append((name, steps, float(np.mean(ps)), *(float(np.mean(st[key])) for key in st),
                     e["frechet_distance"], e["kid"]))
        tops.append(top)

    print(f"\n{args.num} samples of {args.run} (DPM-Solver++ 20, seed {args.seed}); decoder fine-tuned "
          f"{args.minutes:g} min per setting")
    print(f"{'decoder':<24} {'steps':>6} {'real: dB vs V':>14} {'occ':>6} {'isolated':>9} {'bev_tv':>7} "
          f"{'FD':>7} {'KID':>6}")
    for name, steps, p, occ, iso, tv, fd, kid in rows:
        print(f"{name:<24} {steps:>6} {p:>14.2f} {occ:>6.3f} {iso:>9.3f} {tv:>7.3f} {fd:>7.1f} {kid:>6.3f}")
    pics = []
    for i in range(min(8, args.num)):
        tiles = [np.repeat((255 * (1 - t[i].T.flip(0).clamp(0, 1))).to(torch.uint8).numpy()[..., None], 3, -1)
                 for t in tops]
        pics.append(upscale(np.stack(tiles), 2))
    atomic_save_png(out / "topdown.png", grid_image(pics))
    print(f"top-down opacity (columns: {', '.join(r[0] for r in rows)}) -> {out / 'topdown.png'}")


if __name__ == "__main__":
    main()
