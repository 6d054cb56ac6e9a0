"""Inpainting in latent space: re-sample c and f inside a footprint region given everything
outside it (the paper's scene editing; outpainting is the same with the known part shifted).

    known latents kept by replacement at every reverse step: x_t[keep] = q(x_t | x_0 = known)
    RePaint resampling (Lugmayr et al. 2022): after every ``jump`` steps down, noise back up
    ``jump`` steps with q(x_t | x_{t'}) and denoise again, ``resample`` passes in all, so the
    unknown region is harmonised with the known one
    psi_c: c_new ~ p(c | g, c[keep])      psi_f: f_new ~ p(f | g, c_new, f[keep])

The reverse steps are DDIM steps with eta = 1 (ancestral, as RePaint's DDPM steps) on an evenly
spaced subset of the training timesteps; the jumps use the closed form
x_t = sqrt(abar_t / abar_t') x_t' + sqrt(1 - abar_t / abar_t') z.

The region lives on the footprint: c (X/d x Y/d) and f (X x Y) are masked on the same cells,
the box snapped outward to whole coarse cells (:func:`footprint_masks`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from tqdm.auto import tqdm

from nfldm.latent_ae.model import fold
from nfldm.ldm.data import LatentStats, unfold_c
from nfldm.ldm.model import LevelDiffusion, guided_prediction, predicted_x0

__all__ = ["repaint_schedule", "repaint", "footprint_masks", "inpaint_latents"]


def repaint_schedule(steps: int, jump: int = 5, resample: int = 3) -> list[tuple[int, int]]:
    """The RePaint walk over step indices 0..steps (index k is timestep k of the evenly spaced
    schedule, high noise first; index ``steps`` is the clean result): a list of transitions
    (k, k + 1) down and (k, k - jump) back up. Every ``jump`` steps down (not at the end), the walk
    goes back ``jump`` steps, ``resample - 1`` times, so each window of steps is denoised
    ``resample`` times. ``resample`` 1: the plain walk (replacement only)."""
    if steps < 1 or jump < 1 or resample < 1:
        raise ValueError(f"steps, jump and resample must be >= 1, got {steps}, {jump}, {resample}")
    out, k, done = [], 0, {}
    while k < steps:
        out.append((k, k + 1))
        k += 1
        if resample > 1 and k % jump == 0 and k < steps and done.get(k, 0) < resample - 1:
            done[k] = done.get(k, 0) + 1
            back = min(jump, k)
            out.append((k, k - back))
            k -= back
    return out


@torch.no_grad()
def repaint(model: LevelDiffusion, batch: int, ctx: dict, cond: Tensor | None, known: tuple[Tensor, Tensor],
            steps: int = 25, jump: int = 5, resample: int = 3, guidance: float = 1.0,
            generator: torch.Generator | None = None, progress: bool = False, desc: str = "",
            look_guidance: float = 1.0) -> Tensor:
    """One level's reverse process with the entries ``known`` = (values, keep) fixed: values
    shaped ``model.sample_shape(batch)`` (standardised latents), keep a bool mask broadcast to it
    (True: kept). Returns the standardised latents, equal to values where keep is True.
    ``cond``: the level's condition (BEV map or tokens) with classifier-free guidance ``guidance``;
    ``look_guidance``: guidance on the map's look, for a level trained with ``bev_look``
    (:func:`~nfldm.ldm.model.guided_prediction`)."""
    dev = next(model.parameters()).device
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    T = model.scheduler.config.num_train_timesteps
    ts = torch.linspace(T - 1, 0, steps).round().long()
    abar = model.scheduler.alphas_cumprod.to(torch.float64)

    def ab(k: int) -> float:                       # index steps: the clean sample
        return 1.0 if k >= steps else float(abar[ts[k]])

    shape = model.sample_shape(batch)
    values = known[0].to(dev, torch.float32).expand(shape)
    keep = known[1].to(dev).expand(shape)
    noise = lambda: torch.randn(shape, generator=gen).to(dev)     # noqa: E731
    x = noise()
    walk = repaint_schedule(steps, jump, resample)
    x0 = None                                     # the last x0 estimate (self-conditioned levels)
    for k, k2 in tqdm(walk, desc=desc, disable=not progress, leave=False):
        if k2 < k:                                    # back up: q(x_t | x_t')
            r = ab(k2) / ab(k)
            x = math.sqrt(r) * x + math.sqrt(1 - r) * noise()
            continue
        a = ab(k)
        x = torch.where(keep, math.sqrt(a) * values + math.sqrt(1 - a) * noise(), x)
        t = ts[k].to(dev)
        out = guided_prediction(model, x, t, model.with_x0_prev(ctx, x0), cond, guidance,
                                look_guidance=look_guidance).float()
        x0 = predicted_x0(model, out, x, t)
        if k2 >= steps:
            x = x0
            continue
        a2 = ab(k2)
        eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
        sigma = math.sqrt((1 - a2) / (1 - a) * (1 - a / a2))          # DDIM eta = 1
        x = math.sqrt(a2) * x0 + math.sqrt(max(1 - a2 - sigma ** 2, 0.0)) * eps + sigma * noise()
    return torch.where(keep, values, x)


def footprint_masks(box, bounds: Tensor, f_size: tuple[int, int], c_size: tuple[int, int]) -> dict:
    """The region of a footprint box (x0, y0, x1, y1 metres, world units of ``bounds`` 2 x 3) on
    the latent grids, snapped outward to whole coarse cells: {"c": Xc x Yc bool, "f": X x Y bool
    (True inside the region), "cells": [i0, j0, i1, j1] f cells (end exclusive), "box": the snapped
    box in metres}. ValueError if the box misses the footprint."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or not (x1 > x0 and y1 > y0):
        raise ValueError(f"a box is x0 y0 x1 y1 with x1 > x0 and y1 > y0 (metres), got {list(box)}")
    lo, hi = bounds[0].double(), bounds[1].double()
    X, Y = f_size
    Xc, Yc = c_size
    d = X // Xc
    cell = ((hi[0] - lo[0]) / X, (hi[1] - lo[1]) / Y)
    # coarse cells the box touches (a box edge on a cell boundary, up to float error, stays there)
    eps = 1e-5
    ci0 = math.floor(float((x0 - lo[0]) / (cell[0] * d)) + eps)
    ci1 = math.ceil(float((x1 - lo[0]) / (cell[0] * d)) - eps)
    cj0 = math.floor(float((y0 - lo[1]) / (cell[1] * d)) + eps)
    cj1 = math.ceil(float((y1 - lo[1]) / (cell[1] * d)) - eps)
    ci0, cj0, ci1, cj1 = max(ci0, 0), max(cj0, 0), min(ci1, Xc), min(cj1, Yc)
    if ci1 <= ci0 or cj1 <= cj0:
        raise ValueError(f"the box {list(box)} misses the scene's footprint "
                         f"(x {float(lo[0]):.2f}..{float(hi[0]):.2f}, y {float(lo[1]):.2f}..{float(hi[1]):.2f} m)")
    c = torch.zeros(Xc, Yc, dtype=torch.bool)
    c[ci0:ci1, cj0:cj1] = True
    f = c.repeat_interleave(d, 0).repeat_interleave(d, 1)
    snapped = [float(lo[0] + ci0 * d * cell[0]), float(lo[1] + cj0 * d * cell[1]),
               float(lo[0] + ci1 * d * cell[0]), float(lo[1] + cj1 * d * cell[1])]
    return {"c": c, "f": f, "cells": [ci0 * d, cj0 * d, ci1 * d, cj1 * d], "box": snapped}


@torch.no_grad()
def inpaint_latents(models: dict[str, LevelDiffusion], stats: LatentStats, g: Tensor, traj: Tensor, c: Tensor,
                    f: Tensor, region_c: Tensor, region_f: Tensor, steps: int = 25, jump: int = 5,
                    resample: int = 3, seed: int = 0, bev: Tensor | None = None, guidance: float = 1.0,
                    progress: bool = False, look_guidance: float = 1.0) -> dict:
    """Re-sample c and f of one scene inside a region, keeping everything else.

    g: g_dim, traj: 9 T (the scene's camera trajectory vector), c: c_ch x Xc x Yc x Zc, f: f_ch x
    X x Y (raw latents, as :meth:`~nfldm.latent_ae.model.LatentAutoEncoder.encode` gives them);
    region_c: Xc x Yc bool, region_f: X x Y bool (True: re-sampled); ``bev``: 4 x S x S map for
    levels trained with ``bev``, with guidance ``guidance`` and, for levels trained with ``bev_look``,
    ``look_guidance`` on its look. Returns raw {"c", "f"} (same shapes), equal to the inputs
    outside the region (bit for bit)."""
    cm, fm = models.get("c"), models.get("f")
    if cm is None or fm is None:
        raise ValueError("inpainting needs the levels psi_c and psi_f (a full g, c, f run)")
    if (bev is not None) != bool(cm.cfg.bev):
        raise ValueError("these levels were trained on BEV maps: give the (edited) map" if cm.cfg.bev else
                         "a map was given but these levels were not trained on BEV maps (use the bev levels)")
    if not (math.isfinite(guidance) and math.isfinite(look_guidance)):
        raise ValueError(f"guidance and look_guidance must be finite numbers, got {guidance}, {look_guidance}")
    for lv, m in (("c", cm), ("f", fm)):      # RePaint runs every timestep: no high-noise expert
        if m.cfg.train_t_from:
            raise ValueError(f"level {lv} was trained at the timesteps t >= {m.cfg.train_t_from} only (train_t_from); "
                             "inpainting needs levels trained on every timestep")
    dev = next(cm.parameters()).device
    gen = torch.Generator().manual_seed(int(seed))
    g_n = stats.normalise("g", g[None].float()).to(dev)
    tr = traj[None].float().to(dev)
    c_n = fold(stats.normalise("c", c[None].float())).to(dev)
    f_n = stats.normalise("f", f[None].float()).to(dev)
    cond = None if bev is None else bev[None].to(dev)
    sampled = {"g": g_n, "traj": tr}
    keep_c = ~region_c.to(dev)[None, None]
    c_new = repaint(cm, 1, cm.context(sampled), cond, (c_n, keep_c), steps, jump, resample, guidance, gen,
                    progress, "psi_c inpaint", look_guidance)
    keep_f = ~region_f.to(dev)[None, None]
    f_new = repaint(fm, 1, fm.context({**sampled, "c": c_new}), cond, (f_n, keep_f), steps, jump, resample,
                    guidance, gen, progress, "psi_f inpaint", look_guidance)
    c_raw = stats.denormalise("c", unfold_c(c_new.float().cpu(), c.shape[0]))[0]
    f_raw = stats.denormalise("f", f_new.float().cpu())[0]
    c_raw = torch.where(region_c[None, :, :, None], c_raw, c.float())
    f_raw = torch.where(region_f[None], f_raw, f.float())
    return {"c": c_raw, "f": f_raw}
