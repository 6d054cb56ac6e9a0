"""Levers on the BEV levels' paired LPIPS and FID (issue 23), and what the gap is not.

    python experiments/bev_levers.py sample --out D [--seed S] [--guidance W --guidance-levels c
        --guidance-from T0 --guidance-to T1] [--psi-c RUN/c] [--psi-f RUN/f] [--bundle B]
        [--psi-c-low RUN/c --low-below T] [--data DATA --max-scenes 32] [--c-temperature TAU] [--f-temperature TAU]
    python experiments/bev_levers.py oracle SAMPLES [--gain 1.28]
    python experiments/bev_levers.py sheet OUT.png SAMPLES [SAMPLES ...] [--scenes 0 4 8 12]

``sample``: the bundle's BEV levels along the real paths of the first ``--max-scenes`` test
scenes spread over the split (the protocol of docs/ldm.md: one sample each, DPM-Solver++ 20,
look guidance at its defaults), with the map's classifier-free guidance W applied only at the
levels in ``--guidance-levels`` and at the timesteps ``T0 <= t < T1``, and psi_c or psi_f optionally
swapped for another level of the same latent statistics (a run's ``c`` / ``f`` folder, or a copy of
its checkpoint; a level not trained on maps is sampled without the map, e.g. the bundle's own
unconditional ``f``). ``--psi-c-low``: another c level (same latent statistics) that takes psi_c's
steps at t < ``--low-below`` (the map-conditioned level sets the layout at high noise, e.g. the
bundle's unconditional psi_c the detail at low noise). ``--c-temperature`` / ``--f-temperature``: psi_c / psi_f
start from noise of that std (lower-temperature samples). Score the folder with ``nfldm eval generation --samples D --data DATA --split test
--floor-split none``.

``oracle``: how much of a sample folder's paired LPIPS against the real frames is brightness and
colour (each sample's frames scaled to the real scene's mean brightness, to its mean RGB, or frame
by frame to each real frame's), and its Inception FID against the test views after a global
brightness gain (the samples are ~20 % darker than the real scenes). Diagnostics that use the real
frames: not a method. docs/notes/2026-12-06-map-guidance-turned-scenes-and-what-the-gap-is-not.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def sample(args) -> None:
    import nfldm.ldm.sample as ls
    import nfldm.pipeline.generate as generate
    from nfldm.ldm.config import config_from_dict
    from nfldm.ldm.model import LevelDiffusion
    from nfldm.pipeline.maps import conditions_from, spread
    from nfldm.trainer import load_model_weights, read_run_config

    plain_load, plain_guided = generate.load_pipeline, ls.guided_prediction

    def swapped(pipe, level: str, run: str):
        rc = read_run_config(run)
        if rc["stats"] != pipe["config"]["stats"]:
            raise SystemExit(f"error: {run}: trained on latents with other statistics than the bundle's")
        m = LevelDiffusion(config_from_dict(rc["model"]))
        info = load_model_weights(run, m, prefer_ema=True)
        print(f"psi_{level} from {run}, step {info['step']}{'' if m.cfg.bev else ' (not given the map)'}", flush=True)
        pipe["models"][level] = m.to(next(pipe["models"][level].parameters()).device).eval()

    def load(run, device="auto", renderer=None):
        pipe = plain_load(run, device, renderer)
        for level in ("c", "f"):
            if getattr(args, f"psi_{level}"):
                swapped(pipe, level, getattr(args, f"psi_{level}"))
        return pipe

    def guided(model, x, t, ctx, cond, guidance=1.0, g_guidance=1.0, look_guidance=1.0):
        on = model.level in args.guidance_levels and args.guidance_from <= float(t.flatten()[0]) < args.guidance_to
        if not model.cfg.bev:       # a swapped-in unconditional level: no map to give it
            return plain_guided(model, x, t, ctx, None, 1.0, g_guidance, look_guidance)
        return plain_guided(model, x, t, ctx, cond, args.guidance if on else 1.0, g_guidance, look_guidance)

    plain_denoise = ls.denoise

    def denoise(model, *a, **k):
        """psi_f from noise of std ``--f-temperature`` (psi_c's: the library's ``c_temperature``)."""
        return plain_denoise(model, *a, **{**k, "temperature": args.f_temperature} if model.level == "f" else k)

    generate.load_pipeline, ls.guided_prediction, ls.denoise = load, guided, denoise
    conds = spread(conditions_from(args.data, "test"), args.max_scenes)
    generate.sample(args.bundle, num=1, sampler=args.sampler, steps=20, seed=args.seed, out=args.out, conditions=conds,
                    path_from_scene=True, progress=False, guidance=args.guidance,
                    # --psi-c-low: the library's hand-over (nfldm sample --hand-over T --low-noise-c RUN/c)
                    hand_over=int(args.low_below) if args.psi_c_low else 0, low_noise_c=args.psi_c_low,
                    look_guidance=args.look_guidance, look_guidance_from=args.look_from, c_temperature=args.c_temperature)


def oracle(args) -> None:
    from nfldm.ldm.evaluate import MAX_IMAGES, VIEW_SIZE, cached_features, paired_frames, real_images, to_view_size
    from nfldm.metrics.fid import InceptionFeatures, extract, fid_from_features, file_sha1
    from nfldm.metrics.lpips import lpips_distance

    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(np.clip(a, 0, 1))).permute(0, 3, 1, 2).float()  # noqa: E731
    res: dict[str, list] = {"as sampled": [], "scene brightness": [], "scene RGB": [], "frame brightness": []}
    gens = []
    for d in sorted(Path(args.samples).glob("sample_*")):
        pair = paired_frames(d)
        if pair is None:
            raise SystemExit(f"error: {d}: not sampled along a real path (--path-from-scene)")
        gens.append(pair[0])
        gen, real = (a.astype(np.float32) / 255 for a in pair[:2])
        eps = 1e-3
        for key, g in (("as sampled", gen), ("scene brightness", gen * real.mean() / max(gen.mean(), eps)),
                       ("scene RGB", gen * real.mean((0, 1, 2)) / np.maximum(gen.mean((0, 1, 2)), eps)),
                       ("frame brightness", gen * real.mean((1, 2, 3), keepdims=True)
                        / np.maximum(gen.mean((1, 2, 3), keepdims=True), eps))):
            res[key].append(float(lpips_distance(to_t(g), to_t(real)).mean()))
    frames = np.concatenate(gens).astype(np.float32)      # every sample's frames, in generated_images' order
    geometry(args.samples, frames)
    print("paired LPIPS, frames matched to the real ones' " + ", ".join(f"{k}: {np.mean(v):.4f}" for k, v in res.items()))
    net = InceptionFeatures()
    real_f = cached_features("inception", file_sha1(net.path), args.data, "test", MAX_IMAGES, VIEW_SIZE,   # as eval generation
                             lambda: extract(net, to_view_size(real_images(args.data, "test", MAX_IMAGES), VIEW_SIZE), "cpu"))
    for gain in (1.0, args.gain):
        f = extract(net, np.clip(frames * gain, 0, 255).round().astype(np.uint8), "cpu")
        print(f"Inception FID with the frames' brightness x {gain}: {fid_from_features(f, real_f):.2f}")


def geometry(samples: str, frames: np.ndarray) -> None:
    """Where a folder's samples put structure at mid height, against their maps (needs bev.npz: --bev or
    --own-latents samples), and how sharp their ``frames`` (N x H x W x 3) are."""
    import torch.nn.functional as F

    from nfldm.data.bev import bev_grid, read_bev_file
    from nfldm.data.tensors import read_safetensors
    from nfldm.ldm.evaluate import mid_height_occupancy

    st: dict[str, list] = {"on map walls": [], "in the free inside": [], "outside": [], "map walls found": []}
    for d in sorted(Path(samples).glob("sample_*")):
        if not (d / "bev.npz").is_file():
            return
        t, _ = read_safetensors(d / "V.safetensors")
        grid = bev_grid(read_bev_file(d / "bev.npz"), int(t["V"].shape[1]))
        occ = mid_height_occupancy(t["V"].float(), t["bounds"])
        near = lambda m: F.max_pool2d(m.float()[None, None], 3, 1, 1)[0, 0] > 0   # noqa: E731  one cell off counts
        walls = grid[0] > 0
        wall, inside, n = near(walls), grid[1] > 0.5, max(int(occ.sum()), 1)
        st["on map walls"].append(float((occ & wall).sum()) / n)
        st["in the free inside"].append(float((occ & ~wall & inside).sum()) / n)
        st["outside"].append(float((occ & ~wall & ~inside).sum()) / n)
        st["map walls found"].append(float((walls & near(occ)).sum()) / max(int(walls.sum()), 1))
    x = frames.mean(-1)
    sharp = (np.abs(np.diff(x, axis=2)).mean() + np.abs(np.diff(x, axis=1)).mean()) / 2
    print("columns occupied at mid height: " + ", ".join(f"{k}: {np.mean(v):.3f}" for k, v in st.items())
          + f"; frames' mean |neighbour difference| {sharp:.2f}")


def sheet(args) -> None:
    """Per scene: 5 real frames along its path, then the same frames of each sample folder, stacked."""
    from PIL import Image

    from nfldm.ldm.evaluate import paired_frames

    frames, rows = [0, 5, 10, 15, 20], []
    for i in args.scenes:
        pairs = [paired_frames(Path(d) / f"sample_{i:04d}") for d in args.samples]
        if any(p is None for p in pairs):
            raise SystemExit(f"error: sample_{i:04d}: not sampled along a real path in every folder")
        row = [pairs[0][1][frames]] + [p[0][frames] for p in pairs]
        rows += [np.concatenate([np.concatenate(list(r), 1) for r in row], 0)]
        rows += [np.full((4, rows[-1].shape[1], 3), 255, np.uint8)]
    Image.fromarray(np.concatenate(rows[:-1], 0)).save(args.out, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--guidance", type=float, default=1.0)
    s.add_argument("--guidance-levels", default="gcf", help="levels the map guidance applies to (g, c, f)")
    s.add_argument("--guidance-from", type=float, default=0.0)
    s.add_argument("--guidance-to", type=float, default=1000.0)
    s.add_argument("--psi-c", default=None, help="a trained c level (RUN/c) to sample psi_c with")
    s.add_argument("--psi-f", default=None, help="a trained f level (RUN/f, e.g. the bundle's unconditional f) "
                                                 "to sample psi_f with")
    s.add_argument("--psi-c-low", default=None, help="a c level (RUN/c) that takes psi_c's steps at t < --low-below")
    s.add_argument("--low-below", type=float, default=500.0)
    s.add_argument("--bundle", default=None, help="default: the installed bundle")
    s.add_argument("--sampler", default="dpm", help="dpm (the protocol's) or dpm-sde, 20 steps")
    s.add_argument("--data", default="out/release/data")
    s.add_argument("--max-scenes", type=int, default=32)
    s.add_argument("--c-temperature", type=float, default=None, help="psi_c's starting noise std (default: nfldm "
                   "sample's with a map, --c-temperature)")
    s.add_argument("--f-temperature", type=float, default=1.0, help="psi_f's starting noise std (default 1)")
    s.add_argument("--look-guidance", type=float, default=None, help="default: nfldm sample's with a map")
    s.add_argument("--look-from", type=int, default=None, help="look guidance at t >= this only (default: "
                                                                 "nfldm sample's with a map)")
    o = sub.add_parser("oracle")
    o.add_argument("samples")
    o.add_argument("--data", default="out/release/data")
    o.add_argument("--gain", type=float, default=1.28)
    h = sub.add_parser("sheet")
    h.add_argument("out")
    h.add_argument("samples", nargs="+", help="sample folders made along real paths (first: its scenes' real frames too)")
    h.add_argument("--scenes", type=int, nargs="+", default=[0, 4, 8, 12])
    args = ap.parse_args()
    torch.set_num_threads(1)
    {"sample": sample, "oracle": oracle, "sheet": sheet}[args.cmd](args)


if __name__ == "__main__":
    main()
