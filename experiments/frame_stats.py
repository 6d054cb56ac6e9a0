"""Brightness, contrast and detail of frames at each stage: where do generated views lose them?

    python experiments/frame_stats.py --run LDM_RUN [--samples DIR ...] [--split test] [--num 16]
                                     [--device auto]
    python experiments/frame_stats.py --voxels VOXDIR [--split test] [--num 16]    # stage 1 only
    ... [--renderer RUN ...] [--fd]

For the first ``--num`` scenes of ``--split`` of the latent folder the ldm run was trained on,
every camera of the scene is rendered twice: from V (the stage-1 voxels) and from
decode(g, c, f) of the scene's own latents (stage 2). With ``--voxels`` instead of ``--run``:
the scenes of a voxel folder (``nfldm encode-voxels``), rendered from V by the scene-ae that made
it. Those frames, the real frames of the
same cameras (and V's renders split into the cameras V was encoded from and the others), and
the frames of each ``--samples`` folder (``nfldm sample``) are summarised by:

    lum       mean luminance (mean of R, G, B in [0, 1])
    rgb       mean R, G, B
    contrast  standard deviation of the luminance within a frame, averaged over frames
    detail    mean absolute difference of horizontally adjacent luminance pixels

Stage 1 blurs (contrast and detail fall from the real frames to V's renders), stage 2 blurs
further, and a sample folder shows what stage 3 adds on top. For scale, the real frames are
also summarised after shrinking them k times (mean of k x k pixels) and enlarging them back
(bilinear), k = 2, 4, 8: a stage whose detail matches the k-times row renders about as sharply
as a 64 / k pixel image.

``--consistency``: a column ``reproj``, the mean absolute RGB difference between frame i's pixels
unprojected with their depth and projected into frame j of the same scene, over all pairs at
most 3 frames apart, where the depths agree within 3 % (``nfldm.data.consistency``): the
measured depth for the real frames, the rendered depth for V's rows. A renderer that invents
detail differently from view to view (flicker) scores higher than one that is consistent.

``--renderer RUN ...``: renderers fine-tuned from the scene-ae that made the voxels (``nfldm train
scene-ae --init-from ... --set train_parts=render``) render the same V (and decoded latents) too,
one row each. ``--fd``: a column with the offline Frechet distance (EfficientNet-Lite0 features,
NOT comparable to published FIDs) of each row's frames to the real frames; with about 400
frames per row it is biased upwards, so compare rows with each other only. A renderer trained
with ``w_perceptual`` was trained on features of the same network: its FD is flattered.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def frame_stats(frames: np.ndarray) -> dict:
    """frames: N x H x W x 3 in [0, 1] -> the statistics of the module docstring."""
    lum = frames.mean(-1)
    return {"n": int(len(frames)), "lum": float(lum.mean()), "rgb": [float(v) for v in frames.mean((0, 1, 2))],
            "contrast": float(lum.std((1, 2)).mean()), "detail": float(np.abs(np.diff(lum, axis=2)).mean())}


def reprojection_colour(rgb: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor, intr: torch.Tensor,
                        c2w: torch.Tensor) -> torch.Tensor:
    """Per-point |RGB_i - RGB_j| of frame pairs at most 3 apart (``nfldm.data.consistency``).

    rgb: N x 3 x H x W, depth / valid: N x H x W, intr: 4 (shared), c2w: N x 4 x 4 -> M."""
    from nfldm.data.consistency import neighbour_pairs, reprojection_errors

    n = len(rgb)
    item = {"images": rgb.float(), "depth": depth.float(), "depth_valid": valid,
            "intrinsics": intr.reshape(1, 4).expand(n, 4), "c2w": c2w}
    return reprojection_errors(item, neighbour_pairs(n, 3))[1]


def read_pngs(files: list[Path]) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255.0 for f in files])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default=None, help="ldm run (its latent folder names the voxels and the data)")
    ap.add_argument("--voxels", default=None, help="a voxel folder instead of --run: stage 1 only")
    ap.add_argument("--samples", nargs="*", default=[], help="nfldm sample folders")
    ap.add_argument("--split", default="test")
    ap.add_argument("--num", type=int, default=16)
    ap.add_argument("--renderer", nargs="*", default=[], help="fine-tuned renderers of the voxels' scene-ae")
    ap.add_argument("--consistency", action="store_true", help="add the reprojection colour difference")
    ap.add_argument("--fd", action="store_true", help="add the offline Frechet distance to the real frames")
    ap.add_argument("--sheet", default=None, help="PNG: the same 8 cameras of each V row and the real frames")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    if (args.run is None) == (args.voxels is None):
        raise SystemExit("error: give one of --run and --voxels")

    from tqdm.auto import tqdm

    from nfldm.data.format import read_transforms
    from nfldm.pipeline.generate import _render_path
    from nfldm.scene_ae.voxels import load_voxels, read_voxel_index

    rows = {"real frames": [], "V (stage 1)": []}
    reproj: dict[str, list] = {}
    if args.run is not None:
        from ldm_levels import load_gcf

        from nfldm.ldm.data import decode_items

        pipe, ds, lindex = load_gcf(args.run, args.split, args.device)
        sae, lae, stats, dev = pipe["scene_ae"], pipe["lae"], pipe["stats"], pipe["device"]
        source = Path(pipe["config"]["latents"])
        voxdir, names = Path(lindex["voxels"]), ds.names
        c_ch = pipe["models"]["g"].cfg.c_shape[0]
        rows["decoded latents (stage 2)"] = []
    else:
        from nfldm.scene_ae.load import load_scene_ae
        from nfldm.trainer import resolve_device

        voxdir = source = Path(args.voxels)
        dev = resolve_device(args.device)
    vindex = read_voxel_index(voxdir)
    if args.run is None:
        names = [sc["name"] for sc in vindex["scenes"] if sc["split"] == args.split]
        sae = load_scene_ae(vindex["scene_ae"]["run"], dev)
    data = Path(vindex["data"])
    renderers = [("", sae)]
    for r in args.renderer:
        from nfldm.scene_ae.load import load_scene_ae, makes_voxels_of

        m = load_scene_ae(r, dev)
        if not makes_voxels_of(r, m, vindex["scene_ae"]):
            raise SystemExit(f"error: {r}: not a renderer fine-tuned from {vindex['scene_ae']['run']}")
        renderers.append((f" via {Path(r).name}", m))
        rows[f"V (stage 1) via {Path(r).name}"] = []
        if args.run is not None:
            rows[f"decoded latents (stage 2) via {Path(r).name}"] = []
    num = min(args.num, len(names))
    inputs, others = [], []
    for i in tqdm(range(num), desc="scenes", unit="scene"):
        name = names[i]
        vox = load_voxels(voxdir, name, vindex)
        Vs = [("V (stage 1)", vox["V"])]
        if args.run is not None:
            Vs.append(("decoded latents (stage 2)", decode_items(lae, stats, [ds[i]], c_ch, dev)[0].cpu()))
        intr = vox["intrinsics"][0]
        for (key, V), (via, model) in [(kv, r) for r in renderers for kv in Vs]:
            rgb, depth = _render_path(model, V, vox["bounds"], intr, vox["c2w"])
            rows[key + via].append(rgb.clamp(0, 1).permute(0, 2, 3, 1).numpy())
            if args.consistency:
                d = torch.nn.functional.interpolate(depth[:, None], size=rgb.shape[-2:], mode="nearest")[:, 0]
                reproj.setdefault(key + via, []).append(
                    reprojection_colour(rgb.clamp(0, 1), d, torch.ones_like(d, dtype=torch.bool), intr, vox["c2w"]))
            if key + via == "V (stage 1)":       # the cameras V was encoded from, and the others
                is_input = torch.zeros(len(rgb), dtype=torch.bool)
                is_input[vox["input_ids"].long()] = True
                inputs.append(rows[key][-1][is_input.numpy()])
                others.append(rows[key][-1][~is_input.numpy()])
        meta = read_transforms(data / name)
        if len(meta.frames) != len(vox["c2w"]):
            raise SystemExit(f"error: {data / name}: {len(meta.frames)} frames, its voxel file "
                             f"{len(vox['c2w'])} cameras")
        rows["real frames"].append(read_pngs([fr.image_path for fr in meta.frames]))
        if args.consistency:
            from nfldm.data.format import load_frame

            dv = [load_frame(meta, j)[1:] for j in range(len(meta.frames))]
            real = torch.from_numpy(rows["real frames"][-1]).permute(0, 3, 1, 2)
            depth = torch.stack([torch.from_numpy(d) for d, _ in dv]).float()
            valid = torch.stack([torch.from_numpy(v) for _, v in dv])
            reproj.setdefault("real frames", []).append(
                reprojection_colour(real, depth, valid, intr, vox["c2w"]))
    rows["V (stage 1), its input cameras"] = inputs
    rows["V (stage 1), the other cameras"] = others
    real = torch.from_numpy(np.concatenate(rows["real frames"])).permute(0, 3, 1, 2)
    for k in (2, 4, 8):
        small = torch.nn.functional.avg_pool2d(real, k)
        back = torch.nn.functional.interpolate(small, size=real.shape[-2:], mode="bilinear", align_corners=False)
        rows[f"real frames at 1/{k} resolution"] = [back.permute(0, 2, 3, 1).numpy()]
    for s in args.samples:
        files = sorted(Path(s).glob("sample_*/frames/*.png"))
        if not files:
            raise SystemExit(f"error: {s}: no sample_*/frames/*.png")
        rows[f"samples {s}"] = [read_pngs(files)]
    if args.sheet:
        from nfldm.scene_ae.flythrough import grid_image, upscale
        from nfldm.utils.io import atomic_save_png

        keys = [k for k in rows if k == "real frames" or k.startswith(("V (stage 1)", "decoded latents"))
                and "cameras" not in k]
        n0 = len(rows["real frames"][0])
        pick = np.round(np.linspace(0, n0 - 1, min(8, n0))).astype(int)
        sheet = [upscale((rows[k][0][pick] * 255).round().astype(np.uint8), 2) for k in keys]
        atomic_save_png(args.sheet, grid_image(sheet))
        print(f"wrote {args.sheet}: rows " + ", ".join(keys))
    fd = {}
    if args.fd:
        from nfldm.ldm.evaluate import EfficientNetLite0Features, extract, feature_stats, frechet_distance

        net = EfficientNetLite0Features()
        feats = {k: extract(net, (np.concatenate(v) * 255).round().astype(np.uint8), dev) for k, v in rows.items()}
        ref = feature_stats(feats["real frames"])
        fd = {k: frechet_distance(*feature_stats(f), *ref) for k, f in feats.items()}
    rep = {k: float(torch.cat(v).mean()) for k, v in reproj.items()}
    print(f"\n{num} {args.split} scenes of {source}")
    print(f"{'frames':<52} {'n':>5} {'lum':>6} {'R':>6} {'G':>6} {'B':>6} {'contrast':>9} {'detail':>7}"
          + (f" {'FD':>7}" if fd else "") + (f" {'reproj':>7}" if rep else ""))
    for key, parts in rows.items():
        st = frame_stats(np.concatenate(parts))
        print(f"{key:<52} {st['n']:>5} {st['lum']:>6.3f} " + " ".join(f"{v:>6.3f}" for v in st["rgb"])
              + f" {st['contrast']:>9.3f} {st['detail']:>7.4f}" + (f" {fd[key]:>7.1f}" if fd else "")
              + ((f" {rep[key]:>7.4f}" if key in rep else f" {'':>7}") if rep else ""))


if __name__ == "__main__":
    main()
