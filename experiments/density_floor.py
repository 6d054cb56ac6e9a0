"""Does removing low density ("floaters") from sampled scenes change the generation metric?

    python experiments/density_floor.py --samples SAMPLES --scene-ae RUN1 --data DATASET
                                       [--fractions 0.25 0.5 1 2] [--out out/density_floor]

For every sample folder of an ``nfldm sample`` output: V (``V.safetensors``) with every
density below ``fraction x`` the mesh level (ln 2 / mean voxel edge) set to zero, re-rendered
along the sample's own path with the stage-1 model ``RUN1``; then the offline
EfficientNet-Lite0 Frechet distance / KID of those frames against the test views of DATASET
(``nfldm eval generation``; not comparable to published FIDs). Prints one row per fraction,
fraction 0 being the samples as they are, and writes OUT/floor_<fraction>/ (frames) and
OUT/compare.png (four samples: frames without the floor above frames with floor 1).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def floor_density(V: torch.Tensor, bounds: torch.Tensor, fraction: float) -> torch.Tensor:
    """V: K x X x Y x Z; density below ``fraction`` x ln 2 / (mean voxel edge) set to 0."""
    from nfldm.pipeline.generate import surface_level

    V = V.clone()
    V[0] = torch.where(V[0] < fraction * surface_level(bounds, V.shape[1:]), torch.zeros_like(V[0]), V[0])
    return V


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", required=True)
    ap.add_argument("--scene-ae", required=True, help="the stage-1 run that renders the samples")
    ap.add_argument("--data", required=True, help="dataset with a test split (the real views)")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0])
    ap.add_argument("--out", default="out/density_floor")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from tqdm.auto import tqdm

    from nfldm.data.tensors import read_safetensors
    from nfldm.ldm.evaluate import eval_generation
    from nfldm.pipeline.generate import _render_path
    from nfldm.scene_ae.flythrough import grid_image, to_uint8
    from nfldm.scene_ae.load import load_scene_ae
    from nfldm.utils.io import atomic_save_png

    sae = load_scene_ae(args.scene_ae, args.device)
    folders = sorted(Path(args.samples).glob("sample_*"))
    if not folders:
        raise SystemExit(f"error: {args.samples}: no sample_* folders")
    out = Path(args.out)
    rows, strips = [], {}
    for frac in [0.0, *args.fractions]:
        d_out = Path(args.samples) if frac == 0 else out / f"floor_{frac:g}"
        if frac > 0:
            for d in tqdm(folders, desc=f"floor {frac:g}", unit="scene"):
                t, _ = read_safetensors(d / "V.safetensors")
                V = floor_density(t["V"].float(), t["bounds"].float(), frac)
                rgb, _ = _render_path(sae, V, t["bounds"].float(), t["intrinsics"].float(), t["path"].float())
                for k, fr in enumerate(to_uint8(rgb)):
                    atomic_save_png(d_out / d.name / "frames" / f"frame_{k:04d}.png", fr, compress_level=1)
        r = eval_generation(d_out, args.data, "test", out / f"floor_{frac:g}" / "metrics.json",
                            device=args.device, progress=False)["efficientnet_lite0"]
        rows.append((frac, r["frechet_distance"], r["kid"]))
        from PIL import Image
        strips[frac] = [np.concatenate([np.asarray(Image.open(p).convert("RGB")) for p in
                                        sorted((d_out / d.name / "frames").glob("*.png"))[::8]], 1)
                        for d in folders[:4]]
    print(f"\n{len(folders)} samples of {args.samples}; offline EfficientNet-Lite0 FD / KID vs the test views")
    print(f"{'floor (x mesh level)':>21} {'FD':>7} {'KID':>7}")
    for frac, fd, kid in rows:
        print(f"{frac:>21g} {fd:>7.1f} {kid:>7.3f}")
    top = 1.0 if 1.0 in args.fractions else max(args.fractions)
    pic = [np.stack([a, b]) for a, b in zip(strips[0.0], strips[top])]
    atomic_save_png(out / "compare.png", grid_image([np.concatenate(list(p), 0)[None] for p in pic]))
    print(f"frames without / with floor {top:g} -> {out / 'compare.png'}")


if __name__ == "__main__":
    main()
