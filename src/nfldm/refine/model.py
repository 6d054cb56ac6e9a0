"""The image prior: a 2D diffusion model of real frames given an image embedding.

    x: B x 3 x S x S in [-1, 1],  t: B,  e: B x embed_dim (an image embedding, or None)
    e -> (standardised by the training frames' mean / std) [-> top-k principal components, whitened]
      [+ N(0, embed_noise^2) in training] -> Linear -> B x temb  (or the learned null embedding: no
         condition / dropped)
    UNet2DModel(x_t, t, class_labels = that vector)  ->  epsilon (or v) B x 3 x S x S

The condition enters as diffusers' "identity" class embedding: added to the timestep embedding,
which every residual block adds as a shift (``time_scale_shift="default"``) or applies as a scale
and shift of its normalised activations (``"scale_shift"``). :meth:`ImagePrior.eps` gives the
noise estimate SDS uses, for a condition or the null one; :func:`guided_eps` combines two
conditions (classifier-free guidance, or the paper's negative guidance with y' in place of the
null condition).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfldm.refine.config import ImagePriorConfig

__all__ = ["ImagePrior", "guided_eps", "eps_pair", "sample_images"]


class ImagePrior(nn.Module):
    """See the module docstring. Batches for :meth:`training_loss`: {"image": B x 3 x S x S in
    [0, 1], "embedding": B x embed_dim}."""

    def __init__(self, cfg: ImagePriorConfig):
        super().__init__()
        from diffusers import DDPMScheduler, UNet2DModel

        self.cfg = cfg
        ch = cfg.block_out_channels
        n = len(ch)
        down = ["DownBlock2D"] * n
        up = ["UpBlock2D"] * n
        if cfg.attention and n > 1:
            down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
        self.unet = UNet2DModel(sample_size=cfg.image_size, in_channels=3, out_channels=3, block_out_channels=ch,
                                layers_per_block=cfg.layers_per_block, down_block_types=tuple(down),
                                up_block_types=tuple(up), norm_num_groups=cfg.norm_num_groups,
                                class_embed_type="identity", resnet_time_scale_shift=cfg.time_scale_shift)
        temb = ch[0] * 4
        k = cfg.embed_components or cfg.embed_dim
        self.embed = nn.Linear(k, temb)
        self.null = nn.Parameter(torch.zeros(temb))
        if cfg.standardize_embedding:  # set from the training frames' embeddings (train_image_prior)
            self.register_buffer("embed_mean", torch.zeros(cfg.embed_dim))
            self.register_buffer("embed_std", torch.ones(cfg.embed_dim))
        if cfg.embed_components:       # set by set_embedding_statistics
            self.register_buffer("embed_basis", torch.eye(cfg.embed_dim)[:, :k].clone())
            self.register_buffer("embed_scale", torch.ones(k))
        self.scheduler = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                                       prediction_type=cfg.prediction_type, clip_sample=False)

    @torch.no_grad()
    def set_embedding_statistics(self, emb: Tensor) -> None:
        """The standardisation (and, with ``embed_components``, the principal components) from the
        training frames' embeddings, N x embed_dim."""
        if not self.cfg.standardize_embedding:
            return
        emb = emb.float()
        self.embed_mean.copy_(emb.mean(0))
        self.embed_std.copy_(emb.std(0).clamp(min=1e-3))
        k = self.cfg.embed_components
        if k:
            z = (emb - self.embed_mean) / self.embed_std
            evals, evecs = torch.linalg.eigh(z.T @ z / max(len(z) - 1, 1))   # ascending
            self.embed_basis.copy_(evecs[:, -k:].flip(1))
            self.embed_scale.copy_(evals[-k:].flip(0).clamp(min=1e-6).sqrt())

    def condition(self, e: Tensor | None, batch: int, drop: Tensor | None = None, noise: bool = False) -> Tensor:
        """The vector added to the timestep embedding: B x temb (the null one where ``e`` is None
        or ``drop``, B bool, is True; ``noise``: the training-time embed_noise added)."""
        p = self.null
        if e is None:
            return p[None].expand(batch, -1)
        if e.dim() == 1:
            e = e[None].expand(batch, -1)
        if e.shape != (batch, self.cfg.embed_dim):
            raise ValueError(f"the embedding must be {batch} x {self.cfg.embed_dim}, got {tuple(e.shape)}")
        e = e.to(p.dtype)
        if self.cfg.standardize_embedding:
            e = (e - self.embed_mean) / self.embed_std
        if self.cfg.embed_components:
            e = (e @ self.embed_basis) / self.embed_scale
        if noise and self.cfg.embed_noise > 0:
            e = e + self.cfg.embed_noise * torch.randn_like(e)
        v = self.embed(e)
        if drop is not None:
            v = torch.where(drop[:, None], p[None].expand_as(v), v)
        return v

    def forward(self, x: Tensor, t: Tensor, e: Tensor | None = None, drop: Tensor | None = None,
                noise: bool = False) -> Tensor:
        """The model output (epsilon or v) for noisy images x (B x 3 x S x S) at timesteps t (B)."""
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        return self.unet(x, t, class_labels=self.condition(e, x.shape[0], drop, noise)).sample

    def eps(self, x_t: Tensor, t: Tensor, e: Tensor | None = None) -> Tensor:
        """The noise estimate for x_t (whatever the prediction type)."""
        return self.to_eps(self(x_t, t, e), x_t, t)

    def to_eps(self, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The noise estimate a model output (epsilon or v) for x_t at timesteps t (B) implies."""
        if self.cfg.prediction_type == "epsilon":
            return out
        ac = self.scheduler.alphas_cumprod.to(x_t.device)[t].view(-1, 1, 1, 1)
        return ac.sqrt() * out + (1 - ac).sqrt() * x_t         # v -> epsilon

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    @property
    def num_train_timesteps(self) -> int:
        return self.cfg.num_train_timesteps

    @property
    def alphas_cumprod(self) -> Tensor:
        return self.scheduler.alphas_cumprod

    def sds_loss(self, x: Tensor, t: Tensor, y: Tensor, y_neg: Tensor | None, scale: float,
                 generator: torch.Generator, classifier_only: bool = False) -> tuple[Tensor, Tensor]:
        """Score distillation at timesteps t (B) of images x (B x 3 x S x S in [-1, 1], with
        gradient): -> (a scalar whose gradient w.r.t. x is w(t) (eps_guided - eps), the gradient
        itself). eps_guided = :func:`guided_eps` (y_neg None: against the null embedding; scale 1
        without y_neg: the conditional estimate alone), w(t) = 1 - alpha_bar(t).
        ``classifier_only``: w(t) s (eps(x_t; y) - eps(x_t; y')) alone (classifier score
        distillation, Yu et al. 2023: the guidance term without eps(x_t; y') - eps, so an error the
        two branches share cancels)."""
        dev = next(self.parameters()).device
        x = x.to(dev)
        noise = torch.randn(x.shape, generator=generator).to(dev)
        t = t.to(dev)
        with torch.no_grad():
            x_t = self.scheduler.add_noise(x.detach(), noise, t)
            if classifier_only:
                neg, pos = eps_pair(self, x_t, t, y, y_neg)
                diff = scale * (pos - neg)
            elif y_neg is None and scale == 1:
                diff = self.eps(x_t, t, y) - noise
            else:
                diff = guided_eps(self, x_t, t, y, y_neg, scale) - noise
            grad = (1 - self.scheduler.alphas_cumprod.to(dev)[t]).view(-1, 1, 1, 1) * diff
        return (grad * x).sum() / x.shape[0], grad

    def training_loss(self, batch: dict, step: int) -> tuple[Tensor, dict]:
        x0 = batch["image"].float() * 2 - 1
        e = batch["embedding"].float()
        B = x0.shape[0]
        t = torch.randint(0, self.cfg.num_train_timesteps, (B,), device=x0.device)
        noise = torch.randn_like(x0)
        x_t = self.scheduler.add_noise(x0, noise, t)
        drop = torch.rand(B, device=x0.device) < self.cfg.embed_drop_prob
        out = self(x_t, t, e, drop, noise=True)
        target = noise if self.cfg.prediction_type == "epsilon" else self.scheduler.get_velocity(x0, noise, t)
        loss = F.mse_loss(out.float(), target)
        return loss, {"loss": loss.detach()}


def eps_pair(prior: ImagePrior, x_t: Tensor, t: Tensor, y: Tensor | None, y_neg: Tensor | None
             ) -> tuple[Tensor, Tensor]:
    """(eps(x_t; y'), eps(x_t; y)) in one doubled batch (None: the null embedding)."""
    B = x_t.shape[0]
    cond = torch.cat([prior.condition(y_neg, B), prior.condition(y, B)])
    xx, tt = torch.cat([x_t, x_t]), (torch.cat([t, t]) if t.dim() else t.expand(2 * B))
    neg, pos = prior.to_eps(prior.unet(xx, tt, class_labels=cond).sample, xx, tt).chunk(2)
    return neg, pos


def guided_eps(prior: ImagePrior, x_t: Tensor, t: Tensor, y: Tensor | None, y_neg: Tensor | None,
               scale: float) -> Tensor:
    """eps(x_t; y') + s (eps(x_t; y) - eps(x_t; y')): classifier-free guidance with y' = None (the
    null embedding), the paper's negative guidance with y' the embedding of the model's own
    samples. One doubled batch."""
    neg, pos = eps_pair(prior, x_t, t, y, y_neg)
    return neg + scale * (pos - neg)


@torch.no_grad()
def sample_images(prior: ImagePrior, num: int, y: Tensor | None = None, y_neg: Tensor | None = None,
                  scale: float = 1.0, steps: int = 25, seed: int = 0, batch: int = 64) -> Tensor:
    """Images drawn from the prior by DDIM (eta 0, ``steps`` steps) under :func:`guided_eps`
    with condition ``y`` (embed_dim, one for all, or num x embed_dim; None: unconditional),
    negative ``y_neg`` and ``scale`` -> num x 3 x S x S in [0, 1]. What the prior has learned,
    seen directly (and scored against real frames: docs/refine.md)."""
    from diffusers import DDIMScheduler

    dev = next(prior.parameters()).device
    # steps from the noise estimate (any prediction type becomes epsilon), the x0 estimate clipped
    # to the image range as pixel-space DDIM does (at high noise x0 = (x - sqrt(1 - a) eps) / sqrt(a)
    # amplifies the estimate's error 1 / sqrt(a) times), epsilon re-derived from the clipped x0
    sched = DDIMScheduler.from_config(prior.scheduler.config, prediction_type="epsilon", clip_sample=True,
                                      set_alpha_to_one=False)
    gen = torch.Generator().manual_seed(int(seed))
    S = prior.cfg.image_size
    out = []
    for lo in range(0, num, batch):
        B = min(batch, num - lo)
        yb = None if y is None else (y.expand(B, -1) if y.dim() == 1 else y[lo:lo + B]).to(dev)
        nb = None if y_neg is None else (y_neg.expand(B, -1) if y_neg.dim() == 1 else y_neg[lo:lo + B]).to(dev)
        x = torch.randn(B, 3, S, S, generator=gen).to(dev)
        sched.set_timesteps(steps, device=dev)
        for t in sched.timesteps:
            eps = guided_eps(prior, x, t.expand(B), yb, nb, scale) if yb is not None else prior.eps(x, t.expand(B))
            x = sched.step(eps, t, x, use_clipped_model_output=True).prev_sample
        out.append(((x.clamp(-1, 1) + 1) / 2).float().cpu())
    return torch.cat(out)

