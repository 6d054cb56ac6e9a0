"""Brightness, contrast and detail of frames at each stage: where do generated views lose them?

    python benchmarks/frame_stats.py --run LDM_RUN [--samples DIR ...] [--split test] [--num 16]
                                     [--device auto]
    python benchmarks/frame_stats.py --voxels VOXDIR [--split test] [--num 16]    # stage 1 only

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
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    if (args.run is None) == (args.voxels is None):
        raise SystemExit("error: give one of --run and --voxels")

    from tqdm.auto import tqdm

    from nfldm.data.format import read_transforms
    from nfldm.latent_ae.data import load_voxels, read_voxel_index
    from nfldm.ldm.sample import _render_path

    rows = {"real frames": [], "V (stage 1)": []}
    if args.run is not None:
        from ldm_levels import load_gcf
        from nfldm.ldm.data import unfold_c

        pipe, ds, lindex = load_gcf(args.run, args.split, args.device)
        sae, lae, stats, dev = pipe["sae"], pipe["lae"], pipe["stats"], pipe["device"]
        source = Path(pipe["config"]["latents"])
        voxdir, names = Path(lindex["voxels"]), ds.names
        c_ch = pipe["models"]["g"].cfg.c_shape[0]
        rows["decoded latents (stage 2)"] = []
    else:
        from nfldm.scene_ae.train import load_scene_ae
        from nfldm.trainer import resolve_device

        voxdir = source = Path(args.voxels)
        dev = resolve_device(args.device)
    vindex = read_voxel_index(voxdir)
    if args.run is None:
        names = [sc["name"] for sc in vindex["scenes"] if sc["split"] == args.split]
        sae = load_scene_ae(vindex["scene_ae"]["run"], dev)
    data = Path(vindex["data"])
    num = min(args.num, len(names))
    inputs, others = [], []
    for i in tqdm(range(num), desc="scenes", unit="scene"):
        name = names[i]
        vox = load_voxels(voxdir, name, vindex)
        Vs = [("V (stage 1)", vox["V"])]
        if args.run is not None:
            item = ds[i]
            g = stats.denormalise("g", item["g"][None])
            c = stats.denormalise("c", unfold_c(item["c"][None], c_ch))
            f = stats.denormalise("f", item["f"][None])
            with torch.no_grad():
                Vs.append(("decoded latents (stage 2)",
                           lae.decode_latents(g.to(dev), c.to(dev), f.to(dev))[0].float().cpu()))
        intr = vox["intrinsics"][0]
        for key, V in Vs:
            rgb, _ = _render_path(sae, V, vox["bounds"], intr, vox["c2w"])
            rows[key].append(rgb.clamp(0, 1).permute(0, 2, 3, 1).numpy())
            if key == "V (stage 1)":       # the cameras V was encoded from, and the others
                is_input = torch.zeros(len(rgb), dtype=torch.bool)
                is_input[vox["input_ids"].long()] = True
                inputs.append(rows[key][-1][is_input.numpy()])
                others.append(rows[key][-1][~is_input.numpy()])
        meta = read_transforms(data / name)
        if len(meta.frames) != len(vox["c2w"]):
            raise SystemExit(f"error: {data / name}: {len(meta.frames)} frames, its voxel file "
                             f"{len(vox['c2w'])} cameras")
        rows["real frames"].append(read_pngs([fr.image_path for fr in meta.frames]))
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
    print(f"\n{num} {args.split} scenes of {source}")
    print(f"{'frames':<46} {'n':>5} {'lum':>6} {'R':>6} {'G':>6} {'B':>6} {'contrast':>9} {'detail':>7}")
    for key, parts in rows.items():
        st = frame_stats(np.concatenate(parts))
        print(f"{key:<46} {st['n']:>5} {st['lum']:>6.3f} " + " ".join(f"{v:>6.3f}" for v in st["rgb"])
              + f" {st['contrast']:>9.3f} {st['detail']:>7.4f}")


if __name__ == "__main__":
    main()
