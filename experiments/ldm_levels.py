"""Which diffusion level spoils the samples? Resample one level at a time on real scenes.

    python experiments/ldm_levels.py --run LDM_RUN [--split test] [--num 16] [--sampler dpm --steps 20]
                                    [--views 8] [--seed 0] [--device auto] [--out FILE.png]
                                    [--views-out VIEWS.png] [--renderer FINE_TUNED_RUN]

For ``--num`` scenes of ``--split`` of the latent folder the ldm run was trained on:

    V        the stage-1 voxels (the voxel folder behind the latents)
    real     decode(g, c, f): the scene's own latents (the stage-2 cost alone)
    f~       decode(g, c, f ~ psi_f(f | g, traj, c))      psi_f's share
    c,f~     decode(g, c ~ psi_c(c | g, traj), f ~ psi_f(f | g, traj, c~))   (traj: the scene's own)
    all~     (g, traj, c, f) ~ the full sampler (no relation to the scene: statistics only)

Rows 2-4 are rendered from the scene's own cameras and scored (PSNR) against the renders of
``real``: how far resampling a level moves the scene. p(f | g, c) is not deterministic, so
"f~" need not reach ``real``, but with the layout fixed by c it should stay close.

Every row also gets statistics of its density, compared with those of the stage-1 voxels:
``occ`` the fraction of voxels above the mesh level ln 2 / voxel edge; ``isolated`` the
fraction of occupied voxels with at most one occupied 6-neighbour (speckle); ``prof`` the
L1 distance of the per-height occupancy profile from the stage-1 voxels' mean profile;
``bev_tv`` the mean absolute difference between neighbouring cells of the top-down opacity
(high = scattered); ``op@cam`` the mean top-down opacity of the columns within 1 m of the
cameras (the scene's own; for all~ the sampled keyframes): real scenes have floor and ceiling
there, so it is near 1; below the table, the occupied fraction of those columns by height
(8 bands). ``path r`` (``nfldm.ldm.evaluate.path_agreement``) the Pearson correlation between
the top-down opacity and where the trajectory's cameras look (the fraction of the keyframes
whose field of view holds the column): the scene's own trajectory for V, real, f~ and c,f~,
the sampled one for all~. Real scenes are the space their cameras saw, so a sampled scene whose
path looks into it scores like real; below the table, real latents with ANOTHER scene's
trajectory give the level of a path that has nothing to do with the scene. ``--out`` writes a
picture: per scene one row of top-down opacity maps; ``--views-out`` one of views: per scene
(the first 8) one row, two of the scene's cameras per level (all~ too: the sampled scene seen
from the real scene's cameras).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def density_stats(V: torch.Tensor, bounds: torch.Tensor, cams: torch.Tensor | None = None,
                  radius: float = 1.0) -> dict:
    """V: K x X x Y x Z (channel 0 sigma per metre), bounds 2 x 3, cams N x 3 camera positions
    -> statistics (see docstring); ``op_cam``: the mean top-down opacity of the columns within
    ``radius`` metres (horizontally) of a camera."""
    from nfldm.ldm.evaluate import top_down_opacity
    from nfldm.pipeline.generate import surface_level

    sigma = V[0].float()
    size = (bounds[1] - bounds[0]).float() / torch.tensor(sigma.shape, dtype=torch.float32)   # voxel edges (m)
    occ = sigma > surface_level(bounds, sigma.shape)
    o = occ.float()
    nb = torch.zeros_like(o)
    for dim in range(3):
        for s in (1, -1):
            nb += torch.roll(torch.nn.functional.pad(o, (1, 1, 1, 1, 1, 1)), s, dims=dim)[1:-1, 1:-1, 1:-1]
    iso = float(((nb <= 1) & occ).float().sum() / occ.float().sum().clamp(min=1))
    op = top_down_opacity(V, bounds)
    tv = float(0.5 * ((op[1:] - op[:-1]).abs().mean() + (op[:, 1:] - op[:, :-1]).abs().mean()))
    op_cam, cam_profile = float("nan"), None
    if cams is not None:
        lo = bounds[0, :2].float()
        xs = [lo[d] + (torch.arange(op.shape[d]) + 0.5) * size[d] for d in range(2)]
        cells = torch.stack(torch.meshgrid(*xs, indexing="ij"), -1)                 # X x Y x 2
        near = (torch.cdist(cells.reshape(-1, 2), cams[:, :2].float()).min(-1).values <= radius)
        op_cam = float(op.reshape(-1)[near].mean()) if bool(near.any()) else float("nan")
        cam_profile = o.reshape(-1, o.shape[-1])[near].mean(0) if bool(near.any()) else None
    return {"occ": float(o.mean()), "isolated": iso, "profile": o.mean((0, 1)), "bev_tv": tv, "bev": op,
            "op_cam": op_cam, "cam_profile": cam_profile}


def load_gcf(run: str, split: str, device: str = "auto", renderer: str | None = None):
    """A full (g + c + f) ldm run and the latents of one split of the folder it was trained on:
    (``load_pipeline``'s dict, the LatentDataset, the latent folder's index). Exits with one line
    for an ablation run. ``renderer``: a renderer fine-tuned from the run's scene-ae
    (``nfldm sample --renderer``); default the run's own (or its bundle's)."""
    from nfldm.latent_ae.latents import read_latent_index
    from nfldm.ldm.data import LatentDataset
    from nfldm.pipeline.generate import load_pipeline

    pipe = load_pipeline(run, device, renderer=renderer)
    if pipe["latents"] != "gcf":
        raise SystemExit(f"error: {run} is a {pipe['latents']!r} ablation run; this needs g, c and f")
    latdir = Path(pipe["config"]["latents"])
    lindex = read_latent_index(latdir)
    ds = LatentDataset(latdir, split, pipe["models"]["g"].cfg.traj_frames, index=lindex,
                       stats=pipe["config"]["stats"])
    return pipe, ds, lindex


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a.clamp(0, 1) - b.clamp(0, 1)) ** 2).mean().clamp(min=1e-10)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="ldm run (full g + c + f model)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--num", type=int, default=16)
    ap.add_argument("--sampler", default="dpm")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--views", type=int, default=8, help="cameras per scene rendered for the PSNR")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--g-guidance", type=float, default=1.0,
                    help="guidance on g for levels trained with g_drop_prob (nfldm sample --g-guidance)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--renderer", default=None,
                    help="render V with this renderer fine-tuned from the run's scene-ae (nfldm sample --renderer)")
    ap.add_argument("--out", default=None, help="PNG of the top-down opacity maps")
    ap.add_argument("--views-out", default=None,
                    help="PNG of views: per scene, each row rendered from two of the scene's cameras")
    ap.add_argument("--json", default=None,
                    help="per-scene results (scene name; per row the occupied fraction by voxel height "
                         "within 1 m of the cameras)")
    args = ap.parse_args()

    from tqdm.auto import tqdm

    from nfldm.ldm.data import unfold_c
    from nfldm.ldm.evaluate import path_agreement
    from nfldm.ldm.sample import denoise, sample_latents
    from nfldm.ldm.trajectory import decode_trajectory, fov_degrees
    from nfldm.pipeline.generate import _render_path
    from nfldm.scene_ae.voxels import load_voxels, read_voxel_index

    pipe, ds, lindex = load_gcf(args.run, args.split, args.device, args.renderer)
    models, rc, sae, lae, stats = pipe["models"], pipe["config"], pipe["sae"], pipe["lae"], pipe["stats"]
    dev = pipe["device"]
    latdir = Path(rc["latents"])
    vindex = read_voxel_index(lindex["voxels"])
    c_ch = models["g"].cfg.c_shape[0]
    gen = torch.Generator().manual_seed(args.seed)
    rows = ["V", "real", "f~", "c,f~", "all~"]
    res = {r: {"psnr": [], "occ": [], "isolated": [], "profile": [], "bev_tv": [], "op_cam": [], "cam_profile": [],
               "path_r": []} for r in rows}
    real_paths = []      # per scene: (real bev, own trajectory, bounds, hfov)
    bevs, seen, per_scene = [], [], []
    n = min(args.num, len(ds))
    allsamp = sample_latents(models, stats, n, args.sampler, args.steps, args.seed + 1, progress=False,
                             g_guidance=args.g_guidance)
    for i in tqdm(range(n), desc="scenes", unit="scene"):
        name = ds.names[i]
        item = ds[i]
        vox = load_voxels(lindex["voxels"], name, vindex)
        bounds = vox["bounds"]
        g_n = item["g"][None].to(dev)
        c_n = item["c"][None].to(dev)
        tr = item["traj"][None].to(dev)
        with torch.no_grad():
            f_s = denoise(models["f"], 1, {"g": g_n, "traj": tr, "c": c_n}, None, 1.0, args.sampler, args.steps, gen,
                         g_guidance=args.g_guidance)
            c_s = denoise(models["c"], 1, {"g": g_n, "traj": tr}, None, 1.0, args.sampler, args.steps, gen,
                         g_guidance=args.g_guidance)
            f_s2 = denoise(models["f"], 1, {"g": g_n, "traj": tr, "c": c_s}, None, 1.0, args.sampler, args.steps,
                           gen, g_guidance=args.g_guidance)
        g = stats.denormalise("g", g_n.cpu())
        c_real = stats.denormalise("c", unfold_c(c_n.cpu(), c_ch))
        f_real = stats.denormalise("f", item["f"][None])
        lat = {"real": (g, c_real, f_real),
               "f~": (g, c_real, stats.denormalise("f", f_s.cpu())),
               "c,f~": (g, stats.denormalise("c", unfold_c(c_s.cpu(), c_ch)), stats.denormalise("f", f_s2.cpu())),
               "all~": tuple(allsamp[k][i:i + 1] for k in ("g", "c", "f"))}
        Vs = {"V": vox["V"]}
        with torch.no_grad():
            for k, (a, b, c) in lat.items():
                Vs[k] = lae.decode_latents(a.to(dev), b.to(dev), c.to(dev))[0].float().cpu()
        pick = np.round(np.linspace(0, len(vox["c2w"]) - 1, args.views)).astype(int)
        path = vox["c2w"][pick]
        intr = vox["intrinsics"][0]
        ref, _ = _render_path(sae, Vs["real"], bounds, intr, path)
        bev_row = []
        if args.views_out and i < 8:
            two = vox["c2w"][[len(vox["c2w"]) // 4, 3 * len(vox["c2w"]) // 4]]
            seen.append([_render_path(sae, Vs[k], bounds, intr, two)[0] for k in rows])
        own = vox["c2w"][:, :3, 3]
        per_scene.append({"scene": name, "cam_profile": {}})
        drawn = decode_trajectory(allsamp["traj"][i], bounds)[:, :3, 3]     # the sampled keyframes
        hfov = fov_degrees(float(intr[0]), 2 * float(intr[2]))
        for k in rows:
            st = density_stats(Vs[k], bounds, drawn if k == "all~" else own)
            res[k]["path_r"].append(path_agreement(st["bev"], allsamp["traj"][i] if k == "all~" else item["traj"],
                                                   bounds, hfov))
            if k == "real":
                real_paths.append((st["bev"], item["traj"], bounds, hfov))
            for key in ("occ", "isolated", "profile", "bev_tv", "op_cam"):
                res[k][key].append(st[key])
            if st["cam_profile"] is not None:
                res[k]["cam_profile"].append(st["cam_profile"])
            per_scene[-1]["cam_profile"][k] = None if st["cam_profile"] is None else st["cam_profile"].tolist()
            bev_row.append(st["bev"])
            if k in ("V", "f~", "c,f~"):
                rgb, _ = _render_path(sae, Vs[k], bounds, intr, path)
                res[k]["psnr"].append(psnr(rgb, ref))
        bevs.append(bev_row)

    other_r = [path_agreement(bev, real_paths[(i + 1) % n][1], b, h) for i, (bev, _, b, h) in enumerate(real_paths)]
    prof_ref = torch.stack(res["V"]["profile"]).mean(0)
    print(f"\n{n} {args.split} scenes of {latdir}, sampler {args.sampler}-{args.steps}, seed {args.seed}"
          + (f", g guidance {args.g_guidance}" if args.g_guidance != 1.0 else ""))
    print(f"{'row':<6} {'PSNR vs real (dB)':>18} {'occ':>7} {'isolated':>9} {'prof L1':>8} {'bev_tv':>7} "
          f"{'op@cam':>7} {'path r':>7}")
    for k in rows:
        r = res[k]
        p = f"{np.mean(r['psnr']):.2f}" if r["psnr"] else "-"
        prof = float(torch.stack(r["profile"]).sub(prof_ref).abs().sum(-1).mean())
        print(f"{k:<6} {p:>18} {np.mean(r['occ']):>7.3f} {np.mean(r['isolated']):>9.3f} {prof:>8.3f} "
              f"{np.mean(r['bev_tv']):>7.3f} {np.nanmean(r['op_cam']):>7.3f} {np.mean(r['path_r']):>7.3f}")
    print(f"path r of real latents with another scene's trajectory: {np.mean(other_r):.3f}")
    zlo, zhi = float(bounds[0, 2]), float(bounds[1, 2])
    edges = np.linspace(zlo, zhi, 9)
    print(f"\noccupied fraction by height within 1 m of the cameras (8 bands from z = {zlo:g} to {zhi:g} m; "
          f"z = 0 is the floor under the first camera)")
    print(f"{'row':<6} " + " ".join(f"{a:>5.1f}.." for a in edges[:-1]))
    for k in rows:
        if res[k]["cam_profile"]:
            prof = torch.stack(res[k]["cam_profile"]).mean(0)                    # Z
            bands = [part.mean() for part in prof.tensor_split(8)]
            print(f"{k:<6} " + " ".join(f"{float(b):>7.3f}" for b in bands))
    if args.json:
        from nfldm.utils.io import atomic_write_json

        atomic_write_json(args.json, {"run": args.run, "split": args.split, "z_range": [zlo, zhi],
                                      "scenes": per_scene})
        print(f"per-scene results -> {args.json}")
    if args.out:
        from nfldm.scene_ae.flythrough import grid_image, upscale
        from nfldm.utils.io import atomic_save_png

        pics = []
        for row in bevs[:8]:
            tiles = [np.repeat((255 * (1 - b.T.flip(0).clamp(0, 1))).to(torch.uint8).numpy()[..., None], 3, -1)
                     for b in row]
            pics.append(upscale(np.stack(tiles), 2))
        atomic_save_png(Path(args.out), grid_image(pics))
        print(f"top-down opacity (columns: {', '.join(rows)}) -> {args.out}")
    if args.views_out:
        from nfldm.scene_ae.flythrough import grid_image, upscale
        from nfldm.utils.io import atomic_save_png

        pics = []
        for row in seen:  # row: per level, 2 x 3 x H x W in [0, 1]
            tiles = torch.cat(row).clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1)
            pics.append(upscale(tiles.numpy(), 2))
        atomic_save_png(Path(args.views_out), grid_image(pics))
        print(f"views from the scenes' own cameras (pairs of columns: {', '.join(rows)}) -> {args.views_out}")


if __name__ == "__main__":
    main()
