"""Score distillation of an image prior into a scene's voxels V (paper Sec. 4, post-optimisation).

Each step renders a few views of V near the scene's camera path with the stage-1 renderer, noises
them to a random timestep t, asks the prior for its guided noise estimate and pushes the views
towards it (DreamFusion's score distillation sampling):

    x = render(V) * 2 - 1                      B x 3 x S x S
    x_t = sqrt(a_t) x + sqrt(1 - a_t) eps      eps ~ N(0, I), t ~ U[t_min, t_max] * T
    e = eps(x_t; y') + s (eps(x_t; y) - eps(x_t; y'))            (negative guidance; y' = None: CFG)
    grad_x = w(t) (e - eps),  w(t) = 1 - a_t   (no gradient through the prior)

and back through the renderer into V (Adam; the density channel with its own step size, or
frozen). y is the embedding of the look wanted (real frames' mean, or style images'), y' that of
the model's own renders (negative guidance) or None. An optional anchor (weight * mean (V - V0)^2)
keeps V near where it started.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


__all__ = ["SDSConfig", "sds_refine", "jitter_cameras"]


@dataclass
class SDSConfig:
    """Score distillation settings (docs/refine.md says why each default)."""

    steps: int = 60
    views: int = 4                 # views rendered per step
    lr: float = 0.0005             # step of the feature channels (their std is about 0.03)
    lr_density: float = 0.005      # step of the density channel (0 .. ~25)
    freeze_density: bool = False
    t_min: float = 0.02            # timesteps drawn from [t_min, t_max] * num_train_timesteps
    t_max: float = 0.5
    guidance: float = 3.0          # s
    score: str = "sds"             # "sds" or "csd": the guidance term alone (classifier score distillation)
    optimizer: str = "adam"        # "adam" (steps of lr whatever the gradient's size) or "sgd" (steps ~ gradient)
    anchor: float = 0.0            # weight of mean (V - V0)^2
    jitter_m: float = 0.5          # camera position jitter (metres, horizontal)
    jitter_deg: float = 10.0       # camera yaw jitter
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.t_min < self.t_max <= 1:
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got {self.t_min}, {self.t_max}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be adam or sgd, got {self.optimizer!r}")
        if self.score not in ("sds", "csd"):
            raise ValueError(f"score must be sds or csd, got {self.score!r}")
        if self.steps < 0 or self.views < 1:
            raise ValueError("steps must be >= 0 and views >= 1")


def jitter_cameras(c2w: Tensor, bounds: Tensor, metres: float, degrees: float, gen: torch.Generator) -> Tensor:
    """Cameras near ``c2w`` (B x 4 x 4): moved up to ``metres`` horizontally (kept inside the
    bounds' footprint, 0.5 m from its edges) and turned up to ``degrees`` about world z."""
    B = c2w.shape[0]
    a = (torch.rand(B, generator=gen) * 2 - 1) * math.radians(degrees)
    c, s = torch.cos(a), torch.sin(a)
    Rz = torch.zeros(B, 3, 3)
    Rz[:, 0, 0], Rz[:, 0, 1], Rz[:, 1, 0], Rz[:, 1, 1], Rz[:, 2, 2] = c, -s, s, c, 1
    out = c2w.clone()
    out[:, :3, :3] = Rz.to(c2w.dtype) @ c2w[:, :3, :3]
    shift = (torch.rand(B, 2, generator=gen) * 2 - 1) * metres
    xy = out[:, :2, 3] + shift.to(c2w.dtype)
    lo, hi = bounds[0, :2] + 0.5, bounds[1, :2] - 0.5
    out[:, :2, 3] = torch.maximum(torch.minimum(xy, hi), lo)
    return out


def sds_refine(V0: Tensor, bounds: Tensor, path: Tensor, intr: Tensor, renderer, prior,
               y: Tensor, y_neg: Tensor | None, cfg: SDSConfig,
               progress: Callable[[int, dict], None] | None = None) -> tuple[Tensor, list[dict]]:
    """Refine V0 (K x X x Y x Z, K = 1 + C: density, features) by score distillation.

    bounds: 2 x 3, path: N x 4 x 4 (the scene's cameras), intr: 4 (for the renderer's H x W);
    renderer: a stage-1 SceneAutoEncoder (its render(); its weights stay fixed); prior: the image
    prior (fixed): an :class:`~nfldm.refine.model.ImagePrior` or an
    :class:`~nfldm.refine.sd.SDImageVariationsPrior` (anything with image_size,
    num_train_timesteps and ``sds_loss``); y: its embedding of the look wanted, y_neg: of the look
    to move away from, or None. Returns (V, one log
    dict per step: t, the SDS gradient's norm, the anchor term). ``progress(step, log)`` is
    called after each step.
    """
    dev = next(renderer.parameters()).device
    H, W = renderer.cfg.image_hw()
    S = prior.image_size
    gen = torch.Generator().manual_seed(int(cfg.seed))
    V0 = V0.to(dev).float()
    dens = V0[:1].clone().requires_grad_(not cfg.freeze_density)
    feat = V0[1:].clone().requires_grad_(True)
    groups = [{"params": [feat], "lr": cfg.lr}]
    if not cfg.freeze_density:
        groups.append({"params": [dens], "lr": cfg.lr_density})
    opt = torch.optim.Adam(groups, betas=(0.9, 0.99)) if cfg.optimizer == "adam" else torch.optim.SGD(groups, momentum=0.5)
    renderer.requires_grad_(False)
    prior.requires_grad_(False)
    T = prior.num_train_timesteps
    lo_t, hi_t = int(cfg.t_min * (T - 1)), int(cfg.t_max * (T - 1))
    b = bounds.to(dev).float()[None]
    logs = []
    for step in range(cfg.steps):
        pick = torch.randint(0, len(path), (cfg.views,), generator=gen)
        cams = jitter_cameras(path[pick].float(), bounds.float(), cfg.jitter_m, cfg.jitter_deg, gen).to(dev)
        V = torch.cat([dens, feat], 0)
        rgb = renderer.render(V[None], b, intr.to(dev).float().expand(1, cfg.views, 4), cams[None], H, W)["rgb"][0]
        x = rgb.float() * 2 - 1
        if (H, W) != (S, S):
            x = F.interpolate(x, size=(S, S), mode="bilinear", align_corners=False, antialias=S < min(H, W))
        t = torch.randint(lo_t, hi_t + 1, (cfg.views,), generator=gen)
        loss, grad = prior.sds_loss(x, t, y, y_neg, cfg.guidance, gen, classifier_only=cfg.score == "csd")
        reg = torch.zeros((), device=dev)
        if cfg.anchor > 0:
            reg = cfg.anchor * ((torch.cat([dens, feat], 0) - V0) ** 2).mean()
            loss = loss + reg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            dens.clamp_(min=0)
        log = {"step": step + 1, "t": t.float().mean().item(), "grad_norm": float(grad.norm() / math.sqrt(cfg.views)),
               "anchor": float(reg)}
        logs.append(log)
        if progress is not None:
            progress(step + 1, log)
    return torch.cat([dens, feat], 0).detach(), logs
