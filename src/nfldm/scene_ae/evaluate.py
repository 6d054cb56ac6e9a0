"""Evaluation of the scene auto-encoder on held-out views, next to trivial baselines.

Protocol (docs/scene-ae.md): for every scene of the split, ``num_inputs`` evenly spaced
frames are encoded; all OTHER frames are the held-out views. On them we score
- the model (encode the inputs, render + decode the held-out cameras);
- baseline "mean colour": every pixel = the mean colour of the input views; depth = the median
  valid input depth;
- baseline "nearest frame": the input frame whose camera is nearest (position distance in
  metres + ANGLE_WEIGHT x yaw difference in radians), image and depth copied;
- "ground-truth density floor" (depth only): V built from the measured depth of the inputs
  (voxels that hold a measured surface point get density GT_SIGMA, the rest 0), rendered
  with the same renderer at the same resolution: the depth error the grid alone imposes.
PSNR, SSIM and LPIPS (AlexNet, v0.1: :mod:`nfldm.metrics.lpips`) over whole images; depth abs-rel over pixels with valid depth whose surface
point lies in the scene box (the grid cannot represent anything else; the fraction of valid
pixels outside the box is reported), and also over all valid pixels.

Held-out views whose camera coincides with an input camera (:func:`coincident_views`: the
agent stood still, or turned full circle in place and came back to an input's pose) are not
novel views: copying that input scores tens of dB, so they are left out of every number and
counted in ``num_coincident_views_excluded``; the JSON's ``including_coincident_views`` gives
the PSNR over all held-out views as well.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from nfldm import camera, metrics
from nfldm.metrics.lpips import lpips_distance
from nfldm.scene_ae.model import SceneAutoEncoder, inside_box, scene_batch, take_views
from nfldm.scene_ae.render import render_views
from nfldm.scene_ae.splat import splat_mean

ANGLE_WEIGHT = 2.0   # metres per radian of yaw difference, for "nearest camera"
GT_SIGMA = 20.0      # density (per metre) of a voxel holding a measured surface point
COINCIDENT_POS = 0.05   # metres: a held-out camera this close to an input camera ...
COINCIDENT_DEG = 2.0    # ... and looking within this angle of it is not a novel view


def input_split(num_frames: int, num_inputs: int) -> tuple[np.ndarray, np.ndarray]:
    """Evenly spaced input frames and the held-out rest."""
    if num_inputs >= num_frames:
        raise ValueError(f"need more frames than inputs ({num_frames} <= {num_inputs})")
    inputs = np.unique(np.round(np.linspace(0, num_frames - 1, num_inputs)).astype(int))
    return inputs, np.setdiff1d(np.arange(num_frames), inputs)


def split_scene(batch: dict, num_inputs: int) -> tuple[dict, dict, np.ndarray, np.ndarray]:
    """A batch of all frames of a scene -> (input views, held-out views, their frame indices),
    by :func:`input_split`."""
    ins, outs = input_split(batch["images"].shape[1], num_inputs)
    return (take_views(batch, torch.from_numpy(ins)), take_views(batch, torch.from_numpy(outs)),
            ins, outs)


def _pose_gaps(c2w_a: Tensor, c2w_b: Tensor) -> tuple[Tensor, Tensor]:
    """Position distances (metres) and cosines between viewing directions of two camera
    sets. c2w_a: A x 4 x 4, c2w_b: B x 4 x 4 -> (A x B, A x B)."""
    pos = torch.cdist(c2w_a[:, :3, 3], c2w_b[:, :3, 3])
    fa, fb = -c2w_a[:, :3, 2], -c2w_b[:, :3, 2]          # viewing directions
    return pos, (fa @ fb.T).clamp(-1, 1)


def pose_distance(c2w_a: Tensor, c2w_b: Tensor) -> Tensor:
    """Distance between cameras: |position difference| + ANGLE_WEIGHT * viewing-angle
    difference. c2w_a: A x 4 x 4, c2w_b: B x 4 x 4 -> A x B."""
    pos, cos = _pose_gaps(c2w_a, c2w_b)
    return pos + ANGLE_WEIGHT * torch.arccos(cos)


def coincident_views(c2w_out: Tensor, c2w_in: Tensor) -> Tensor:
    """Which held-out cameras coincide with some input camera (same position within
    COINCIDENT_POS metres and viewing direction within COINCIDENT_DEG degrees).

    c2w_out: A x 4 x 4, c2w_in: B x 4 x 4 -> A (bool)."""
    pos, cos = _pose_gaps(c2w_out, c2w_in)
    return ((pos < COINCIDENT_POS) & (cos > math.cos(math.radians(COINCIDENT_DEG)))).any(1)


def gt_density_grid(depth: Tensor, valid: Tensor, intr: Tensor, c2w: Tensor, bounds: Tensor,
                    grid: tuple[int, int, int], num_channels: int) -> Tensor:
    """V from measured depth: density GT_SIGMA where a surface point falls, features zero.

    depth/valid: B x V x H x W, intr: B x V x 4, c2w: B x V x 4 x 4, bounds: B x 2 x 3
    -> B x num_channels x X x Y x Z.
    """
    B = depth.shape[0]
    pts = camera.unproject_depth(depth, intr, c2w).reshape(B, -1, 3)
    far = torch.full_like(pts, 1e9)
    pts = torch.where(valid.reshape(B, -1, 1), pts, far)
    occ = splat_mean(pts, torch.ones_like(pts[..., :1]), bounds, grid)
    V = occ.new_zeros(B, num_channels, *grid)
    V[:, :1] = occ * GT_SIGMA
    return V


def _upsample(x: Tensor, H: int, W: int) -> Tensor:
    """... x h x w -> ... x H x W (bilinear)."""
    shape = x.shape[:-2]
    y = F.interpolate(x.reshape(-1, 1, *x.shape[-2:]), size=(H, W), mode="bilinear",
                      align_corners=False)
    return y.reshape(*shape, H, W)


@torch.no_grad()
def evaluate_scene(model: SceneAutoEncoder, item: dict, num_inputs: int, device) -> dict:
    """Everything needed for the metrics of one scene (batch of one, all frames)."""
    bi, bo, ins, outs = split_scene(scene_batch(item, device), num_inputs)
    H, W = bi["images"].shape[-2:]
    cfg = model.cfg
    enc = model.encode_batch(bi)
    out = model.render(enc["V"], bi["bounds"], bo["intrinsics"], bo["c2w"], H, W, chunk=8192)
    pred_depth = _upsample(out["depth"], H, W)

    h, w = H // cfg.render_down, W // cfg.render_down
    Vgt = gt_density_grid(bi["depth"], bi["depth_valid"], bi["intrinsics"], bi["c2w"], bi["bounds"],
                          tuple(cfg.grid), 1)
    intr_r = camera.resize_intrinsics(bo["intrinsics"], (H, W), (h, w))
    floor_depth = _upsample(render_views(Vgt, bi["bounds"], intr_r, bo["c2w"], h, w,
                                         cfg.num_samples, chunk=8192,
                                         num_coarse=cfg.num_coarse)["depth"], H, W)

    gt, gt_depth, valid = bo["images"][0], bo["depth"][0], bo["depth_valid"][0]
    mean_rgb = bi["images"][0].mean(dim=(0, 2, 3))
    mean_img = mean_rgb[None, :, None, None].expand_as(gt)
    med_depth = bi["depth"][0][bi["depth_valid"][0]].median()
    near = pose_distance(bo["c2w"][0], bi["c2w"][0]).argmin(1)
    in_box = valid & inside_box(gt_depth[None], bo["intrinsics"], bo["c2w"], bo["bounds"])[0]
    return {
        "gt": gt, "gt_depth": gt_depth, "valid": valid, "in_box": in_box,
        "model": (out["rgb"][0].clamp(0, 1), pred_depth[0]),
        "mean_colour": (mean_img, torch.full_like(gt_depth, float(med_depth))),
        "nearest_frame": (bi["images"][0][near], bi["depth"][0][near]),
        "gt_density_floor": (None, floor_depth[0]),
        "inputs": ins, "held_out": outs, "input_images": bi["images"][0],
        "novel": ~coincident_views(bo["c2w"][0], bi["c2w"][0]),
    }


METHODS = ("model", "mean_colour", "nearest_frame", "gt_density_floor")


def evaluate(model: SceneAutoEncoder, dataset, num_inputs: int | None = None, device="cpu",
             max_scenes: int | None = None, progress: bool = True, keep: int = 0) -> tuple[dict, list]:
    """Metrics over the scenes of ``dataset`` (a SceneDataset with num_views=None).

    Returns (metrics dict, the first ``keep`` per-scene results for pictures).
    """
    num_inputs = num_inputs or model.cfg.num_input_views
    model.eval()

    acc = {m: {"psnr": [], "ssim": [], "lpips": [], "rel_in_box": [], "rel_valid": [], "psnr_all": []}
           for m in METHODS}
    n_valid = n_in_box = n_coincident = 0
    kept = []
    n = len(dataset) if max_scenes is None else min(max_scenes, len(dataset))
    for i in tqdm(range(n), desc="evaluating scenes", unit="scene", disable=not progress):
        r = evaluate_scene(model, dataset[i], num_inputs, device)
        if len(kept) < keep:
            kept.append({k: v for k, v in r.items()} | {"name": dataset.entries[i].name})
        nv = r["novel"]
        n_coincident += int((~nv).sum())
        n_valid += int(r["valid"][nv].sum())
        n_in_box += int(r["in_box"][nv].sum())
        for m in METHODS:
            rgb, depth = r[m]
            if rgb is not None:
                p = metrics.psnr(rgb, r["gt"]).cpu()
                acc[m]["psnr_all"].append(p)
                acc[m]["psnr"].append(p[nv.cpu()])
                acc[m]["ssim"].append(metrics.ssim(rgb[nv], r["gt"][nv]).cpu())
                acc[m]["lpips"].append(lpips_distance(rgb[nv].float(), r["gt"][nv].float()).cpu())
            acc[m]["rel_in_box"].append(metrics.abs_rel(depth[nv], r["gt_depth"][nv], r["in_box"][nv]).cpu())
            acc[m]["rel_valid"].append(metrics.abs_rel(depth[nv], r["gt_depth"][nv], r["valid"][nv]).cpu())
    out: dict = {"num_scenes": n, "num_inputs": num_inputs,
                 "num_held_out_views": int(sum(len(x) for x in acc["model"]["psnr"])),
                 "num_coincident_views_excluded": n_coincident,
                 "valid_pixels_outside_box_fraction": 1 - n_in_box / max(n_valid, 1)}
    for m in METHODS:
        a, res = acc[m], {}
        if a["psnr"]:
            p, s = torch.cat(a["psnr"]), torch.cat(a["ssim"])
            res["psnr"], res["ssim"] = float(p.mean()), float(s.mean())
            res["lpips"] = float(torch.cat(a["lpips"]).mean())
        rib, rv = torch.cat(a["rel_in_box"]), torch.cat(a["rel_valid"])
        res["depth_abs_rel_median"] = float(rib.median()) if rib.numel() else math.nan
        res["depth_abs_rel_mean"] = float(rib.mean()) if rib.numel() else math.nan
        res["depth_abs_rel_median_all_valid"] = float(rv.median()) if rv.numel() else math.nan
        out[m] = res
    out["including_coincident_views"] = {
        m: {"psnr": float(torch.cat(acc[m]["psnr_all"]).mean())} for m in METHODS if acc[m]["psnr_all"]}
    best = max(("mean_colour", "nearest_frame"), key=lambda k: out[k]["psnr"])
    out["better_baseline"] = best
    out["psnr_gain_over_better_baseline"] = out["model"]["psnr"] - out[best]["psnr"]
    best_ssim = max(out["mean_colour"]["ssim"], out["nearest_frame"]["ssim"])
    out["ssim_gain_over_better_baseline"] = out["model"]["ssim"] - best_ssim
    out["lpips_gain_over_better_baseline"] = (min(out["mean_colour"]["lpips"], out["nearest_frame"]["lpips"])
                                              - out["model"]["lpips"])     # > 0: the model is nearer
    return out, kept
