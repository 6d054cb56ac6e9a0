"""Evaluation of the latent auto-encoder: what does squeezing V through (g, c, f) cost?

For every scene of the split (V from the voxel folder):
- decode(quantise(encode(V))) with g = mu (deterministic);
- voxel errors in original units: density MAE on occupied voxels (sigma > occupied_sigma) and
  on the others, feature MSE on occupied voxels; the normalised, weighted training terms;
- the held-out views of the stage-1 protocol (frames not encoded into V) rendered with the
  frozen stage-1 renderer + decoder from the original V and from the decoded V: PSNR / SSIM
  and LPIPS (AlexNet) of each against the ground-truth images, their difference (the LAE's cost
  in dB and in LPIPS), and the PSNR / LPIPS of the decoded-V renders against the original-V renders;
- codebook usage over the split per quantiser: perplexity and the fraction of codes used
  (only the quantised latents the model has: none for the global-only ablation).
Any NaN / inf in the latents or the decoded V is an error.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nfldm import metrics
from nfldm.data.format import DataError
from nfldm.data.loader import SceneDataset
from nfldm.data.tensors import check_finite
from nfldm.latent_ae.model import LatentAutoEncoder, codebook_usage
from nfldm.metrics.lpips import lpips_distance
from nfldm.scene_ae.voxels import load_voxels

PSNR_COST_TARGET_DB = 1.5       # the LAE may cost at most this much PSNR on rendered views
CODEBOOK_USE_TARGET = 0.5       # at least this fraction of each codebook in use


def _gt_dataset(data_root: str | os.PathLike, split: str, names: list[str]):
    """The stage-1 dataset of ``split`` and {scene name: item index}; DataError if a scene
    of the voxel folder is not in it."""
    ds = SceneDataset(data_root, split, cache=True)
    where = {e.name: i for i, e in enumerate(ds.entries)}
    missing = [n for n in names if n not in where]
    if missing:
        raise DataError(f"{ds.index.source}: scenes {missing[:5]} of the voxel folder are not in split "
                        f"{split!r} of this dataset (pass the data folder the voxels were made from)")
    return ds, where


@torch.no_grad()
def render_views_of(scene_ae, V: torch.Tensor, bounds: torch.Tensor, intr: torch.Tensor,
                    c2w: torch.Tensor, size: int | tuple[int, int], per_call: int = 16) -> torch.Tensor:
    """Stage-1 RGB renders of V (K x X x Y x Z) from T cameras (intr T x 4, c2w T x 4 x 4) at
    ``size`` (H = W, or (H, W)): -> T x 3 x H x W in [0, 1]."""
    H, W = (size, size) if isinstance(size, int) else size
    out = []
    for i in range(0, len(c2w), per_call):
        r = scene_ae.render(V[None], bounds[None], intr[None, i:i + per_call], c2w[None, i:i + per_call],
                            H, W, chunk=8192)
        out.append(r["rgb"][0].clamp(0, 1))
    return torch.cat(out)


@torch.no_grad()
def evaluate(lae: LatentAutoEncoder, scene_ae, voxdir: str | os.PathLike, index: dict, split: str,
             data_root: str | os.PathLike, device, max_scenes: int | None = None,
             progress: bool = True, keep: int = 0) -> tuple[dict, list]:
    """Metrics of ``lae`` over the scenes of ``split`` of a voxel folder (see the module
    docstring). Returns (metrics dict, the first ``keep`` scenes' images for pictures)."""
    lae.eval()
    scene_ae.eval()
    names = [s["name"] for s in index["scenes"] if s["split"] == split]
    if not names:
        raise DataError(f"{Path(voxdir) / 'index.json'}: no scene has split {split!r}")
    if max_scenes is not None:
        names = names[:max_scenes]
    ds, where = _gt_dataset(data_root, split, names)
    size = scene_ae.cfg.image_hw()
    occ_sigma = lae.cfg.occupied_sigma
    counts = {k: torch.zeros(q.codebook_size, dtype=torch.long) for k, q in lae.quantizers.items()}
    acc: dict[str, list] = {k: [] for k in ("density_mae_occupied", "density_mae_empty", "feature_mse_occupied",
                                            "density_loss", "feature_loss")}

    views: dict[str, list] = {k: [] for k in ("psnr_original", "psnr_decoded", "ssim_original", "ssim_decoded",
                                              "psnr_decoded_vs_original", "lpips_original", "lpips_decoded",
                                              "lpips_decoded_vs_original")}
    kept = []
    for name in tqdm(names, desc="evaluating scenes", unit="scene", disable=not progress):
        vox = load_voxels(voxdir, name, index)
        V = vox["V"].to(device)[None]
        out = lae(V)
        check_finite(f"scene {name}", **{k: out[k] for k in lae.latent_names}, V_hat=out["V_hat"])
        V_hat = out["V_hat"]
        for k in counts:
            counts[k] += torch.bincount(out[f"{k}_indices"].flatten().cpu(), minlength=len(counts[k]))

        # voxel errors (original units, undilated occupancy)
        occ = V[:, 0] > occ_sigma
        d_err = (V_hat[:, 0] - V[:, 0]).abs()
        acc["density_mae_occupied"].append(float(d_err[occ].mean()) if occ.any() else float("nan"))
        acc["density_mae_empty"].append(float(d_err[~occ].mean()) if (~occ).any() else float("nan"))
        f_err = ((V_hat[:, 1:] - V[:, 1:]) ** 2).mean(1)
        acc["feature_mse_occupied"].append(float(f_err[occ].mean()) if occ.any() else float("nan"))
        w = lae.voxel_weights(V)
        err = (out["Vn_hat"] - out["Vn"]) ** 2
        acc["density_loss"].append(float((err[:, :1] * w).sum()))
        acc["feature_loss"].append(float((err[:, 1:] * w).sum() / max(1, V.shape[1] - 1)))

        # held-out views rendered from the original and the decoded V
        item = ds[where[name]]
        n = item["images"].shape[0]
        if n != vox["c2w"].shape[0]:
            raise DataError(f"{ds.entries[where[name]].path}: has {n} frames, the voxel file of scene "
                            f"{name} has {vox['c2w'].shape[0]} cameras (another dataset?)")
        held = torch.from_numpy(np.setdiff1d(np.arange(n), vox["input_ids"].numpy()))
        if len(held) == 0:
            continue
        gt = item["images"][held].to(device)
        intr, c2w = vox["intrinsics"][held].to(device), vox["c2w"][held].to(device)
        bounds = vox["bounds"].to(device)
        rgb_o = render_views_of(scene_ae, V[0], bounds, intr, c2w, size)
        rgb_d = render_views_of(scene_ae, V_hat[0], bounds, intr, c2w, size)
        check_finite(f"scene {name}", renders=rgb_d)
        views["psnr_original"].append(metrics.psnr(rgb_o, gt).cpu())
        views["psnr_decoded"].append(metrics.psnr(rgb_d, gt).cpu())
        views["ssim_original"].append(metrics.ssim(rgb_o, gt).cpu())
        views["ssim_decoded"].append(metrics.ssim(rgb_d, gt).cpu())
        views["psnr_decoded_vs_original"].append(metrics.psnr(rgb_d, rgb_o).cpu())
        views["lpips_original"].append(lpips_distance(rgb_o, gt).cpu())
        views["lpips_decoded"].append(lpips_distance(rgb_d, gt).cpu())
        views["lpips_decoded_vs_original"].append(lpips_distance(rgb_d, rgb_o).cpu())
        if len(kept) < keep:
            kept.append({"name": name, "gt": gt.cpu(), "original": rgb_o.cpu(), "decoded": rgb_d.cpu()})

    def mean(xs):
        xs = [x for x in xs if x == x]
        return float(np.mean(xs)) if xs else float("nan")

    res: dict = {"num_scenes": len(names),
                 "num_held_out_views": int(sum(len(x) for x in views["psnr_original"])),
                 "voxel": {k: mean(v) for k, v in acc.items()}}
    res["voxel"]["occupied_sigma"] = occ_sigma
    if views["psnr_original"]:
        v = {k: float(torch.cat(x).mean()) for k, x in views.items()}
        res["render"] = {"psnr_original_V": v["psnr_original"], "psnr_decoded_V": v["psnr_decoded"],
                         "psnr_cost_db": v["psnr_original"] - v["psnr_decoded"],
                         "ssim_original_V": v["ssim_original"], "ssim_decoded_V": v["ssim_decoded"],
                         "psnr_decoded_vs_original_V": v["psnr_decoded_vs_original"],
                         "lpips_original_V": v["lpips_original"], "lpips_decoded_V": v["lpips_decoded"],
                         "lpips_cost": v["lpips_decoded"] - v["lpips_original"],
                         "lpips_decoded_vs_original_V": v["lpips_decoded_vs_original"]}
    res["codebook"] = {k: {"quantizer": lae.cfg.quantizer, **codebook_usage(c)} for k, c in counts.items()}
    res["targets"] = {
        "psnr_cost_max_db": PSNR_COST_TARGET_DB,
        "psnr_cost_met": bool(res.get("render", {}).get("psnr_cost_db", float("inf")) <= PSNR_COST_TARGET_DB),
        "codebook_used_fraction_min": CODEBOOK_USE_TARGET,
        # None: nothing is quantised (the global-only ablation)
        "codebook_usage_met": (all(res["codebook"][k]["used_fraction"] >= CODEBOOK_USE_TARGET for k in counts)
                               if counts else None),
    }
    return res, kept
