"""Does the latent auto-encoder reconstruct turned and mirrored scenes as well as the originals?

    python experiments/lae_dihedral.py --lae runs/lae_tiny_4k --voxels out/vox64 [--num 8] [--views 6]

For ``--num`` test scenes of the voxel folder and each of (k, flip) in (0, no), (1, no),
(2, no), (3, no), (1, yes): turn the stage-1 voxel grid and its cameras together
(``dihedral_voxels``, ``camera.transform_poses``), encode and decode it with the LAE, and
print the mean PSNR of the stage-1 renders of the decoded grid against the renders of the
turned grid, from ``--views`` of the scene's cameras. Equal numbers mean augmented latents
(``nfldm encode-latents --augment``) are as good as the originals. ~1 min on 2 cores.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lae", required=True, help="latent-ae run")
    ap.add_argument("--voxels", required=True, help="voxel folder the LAE was trained on")
    ap.add_argument("--num", type=int, default=8)
    ap.add_argument("--views", type=int, default=6)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    from tqdm.auto import tqdm

    from nfldm import camera
    from nfldm.latent_ae.evaluate import render_views_of
    from nfldm.latent_ae.load import load_latent_ae
    from nfldm.scene_ae.load import load_scene_ae
    from nfldm.scene_ae.voxels import dihedral_voxels, load_voxels, read_voxel_index

    index = read_voxel_index(args.voxels)
    lae = load_latent_ae(args.lae, args.device).eval()
    dev = next(lae.parameters()).device
    sae = load_scene_ae(index["scene_ae"]["run"], args.device).eval()
    names = [s["name"] for s in index["scenes"] if s["split"] == "test"][:args.num]
    turns = [(0, False), (1, False), (2, False), (3, False), (1, True)]
    res: dict = {t: [] for t in turns}
    with torch.no_grad():
        for name in tqdm(names, desc="scenes", unit="scene"):
            vox = load_voxels(args.voxels, name, index)
            pick = torch.linspace(0, len(vox["c2w"]) - 1, args.views).round().long()
            c2w, intr, b = vox["c2w"][pick], vox["intrinsics"][pick].to(dev), vox["bounds"].to(dev)
            for k, flip in turns:
                Vt = dihedral_voxels(vox["V"], k, flip).to(dev)
                ct = camera.transform_poses(c2w, camera.dihedral_matrix(k, flip)).to(dev)
                ref = render_views_of(sae, Vt, b, intr, ct, sae.cfg.image_size)
                enc = lae.encode(Vt[None])
                Vr = lae.decode_latents(enc.get("g_mu"), enc.get("c"), enc.get("f"))[0]
                rec = render_views_of(sae, Vr, b, intr, ct, sae.cfg.image_size)
                res[(k, flip)].append(float(-10 * torch.log10(((rec - ref) ** 2).mean())))
    print(f"\n{len(names)} test scenes of {args.voxels}, LAE {args.lae}: decoded-V renders vs V renders")
    for (k, flip), v in res.items():
        print(f"turned {90 * k:>3} deg{', mirrored' if flip else '          '}: {np.mean(v):6.2f} dB")


if __name__ == "__main__":
    main()
