"""The three denoisers of the hierarchical latent diffusion model and their training loss.

    psi_g   x = [g, traj] (g_dim + 9 T)   residual MLP; timestep by adaLN-zero; condition
                                          tokens by cross-attention (the vector is one query)
    psi_c   x = fold(c) (c_ch Zc x X/d x Y/d)  UNet2DConditionModel; g (opt-in
                                          ``g_with_traj``: [g, traj]) by the class embedding
                                          ("projection": an MLP of g added to the timestep
                                          embedding, which scales / shifts every ResNet's
                                          GroupNorm); condition tokens by cross-attention
    psi_f   x = f (f_ch x X x Y), input [x_t, upsample(fold(c))] (nearest, to X x Y), g as in psi_c

With the opt-in ``traj_map`` psi_c and psi_f also take 4 maps of the trajectory over their footprint as
input channels (camera coverage, nearness to the path, x, y: ``camera_coverage``).

With ``bev`` every level is conditioned on the scene's BEV map (B x 4 x S x S) through
:class:`BEVEncoder`: its tokens replace the condition tokens of the cross-attention (the
paper's way), and psi_c / psi_f also take maps of it over their footprint as input channels
(:meth:`BEVEncoder.forward`). Dropping the map (classifier-free guidance) gives the null tokens
and all-zero maps (the presence channel 0).

With ``scene_look`` psi_g's x is [g, traj, look] (+ 10: the scene's look, standardised) and psi_c /
psi_f get the look at the end of their global vector.

Ablations (docs/ldm.md): with ``g_dim = 0`` (a coarse-only latent folder) psi_g generates the
trajectory alone and psi_c has no class embedding (it is conditioned on no latent; with
``traj_map`` it still sees the trajectory maps); a global-only folder has the psi_g level only.

All latents are standardised (:class:`~nfldm.ldm.data.LatentStats`). Without a condition (or
when it is dropped for classifier-free guidance) the cross-attention sees a learned null
token. :class:`LevelDiffusion` holds one denoiser and the training scheduler
(diffusers ``DDPMScheduler``) and implements the trainer protocol ``training_loss``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from nfldm.data.bev import GRID_CHANNELS, LOOK_CHANNELS, SCENE_LOOK_DIM, masked_mean_pool, scene_look
from nfldm.ldm.config import LDMConfig
from nfldm.ldm.trajectory import camera_coverage

__all__ = ["timestep_embedding", "CondTokens", "BEVEncoder", "GDenoiser", "UNetDenoiser", "LevelDiffusion",
           "make_train_scheduler", "make_sampler", "guided_prediction", "predicted_x0", "SAMPLERS"]

SAMPLERS = ("ddpm", "ddim", "dpm", "dpm-sde")


# ----------------------------------------------------------------------------------------
# Schedulers


def make_train_scheduler(cfg: LDMConfig):
    """The training scheduler: ``DDPMScheduler`` with clip_sample off (latents are not in
    [-1, 1]); every sampler is built from its config."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         prediction_type=cfg.prediction_type, clip_sample=False, thresholding=False,
                         timestep_spacing=cfg.timestep_spacing)


def make_sampler(train_scheduler, sampler: str):
    """A fresh sampling scheduler built from the training scheduler's config (same betas,
    prediction type, timestep spacing; clip_sample off): ``ddpm`` (ancestral), ``ddim``
    (eta = 0), ``dpm`` (DPM-Solver++, 2nd order multistep) or ``dpm-sde`` (its stochastic form,
    SDE-DPM-Solver++ 2M, Lu et al. 2022: fresh noise at every step). Call ``set_timesteps`` before
    every run (DPM-Solver keeps state)."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    config = train_scheduler.config
    if sampler == "ddpm":
        return DDPMScheduler.from_config(config, clip_sample=False)
    if sampler == "ddim":
        return DDIMScheduler.from_config(config, clip_sample=False, set_alpha_to_one=False)
    if sampler == "dpm":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2,
                                                       thresholding=False)
    if sampler == "dpm-sde":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="sde-dpmsolver++", solver_order=2,
                                                       thresholding=False)
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")


# ----------------------------------------------------------------------------------------
# Building blocks


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of (integer or real) timesteps: B -> B x dim ([cos, sin])."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], -1)
    return F.pad(emb, (0, dim % 2))


class CondTokens(nn.Module):
    """Condition tokens for the cross-attention: the data's ``cond`` (B x L x cond_dim),
    projected to ``dim``, or a learned null token (repeated L times) where there is no
    condition or it is dropped. Repeating the null token does not change the attention
    output (identical keys give identical weights)."""

    def __init__(self, cond_dim: int, dim: int):
        super().__init__()
        self.cond_dim, self.dim = cond_dim, dim
        self.null = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.proj = nn.Linear(cond_dim, dim) if cond_dim > 0 else None

    def forward(self, cond: Tensor | None, batch: int, drop: Tensor | None = None, length: int = 1) -> Tensor:
        """-> B x L x dim. ``drop`` (B bool): samples whose condition becomes the null token;
        ``length``: L of the null tokens when ``cond`` is None."""
        if cond is None:
            return self.null.expand(batch, length, self.dim)
        if self.proj is None:
            raise ValueError("this model was trained without a condition (cond_dim = 0); sample it "
                             "without one")
        if cond.dim() != 3 or cond.shape[-1] != self.cond_dim:
            raise ValueError(f"cond must be B x L x {self.cond_dim}, got {tuple(cond.shape)}")
        tok = self.proj(cond.to(self.null.dtype))
        if drop is not None:
            tok = torch.where(drop[:, None, None], self.null.expand_as(tok), tok)
        return tok


class BEVEncoder(nn.Module):
    """A small CNN over the BEV map (B x C x S x S, C = ``cfg.bev_channels``: wall, inside, floor,
    ceiling, and with ``bev_look`` the look's 11; :func:`nfldm.data.bev.bev_grid`): a conv stem, then stride-2 convs down to S/8. The stem runs
    at S only for a level whose maps are at S (psi_f); psi_g and psi_c first pool the map to
    S/2 (walls max-pooled, the rest averaged), which quarters the encoder's cost.

    :meth:`forward` -> tokens B x (S/8)^2 x ``dim`` for the cross-attention (a 1 x 1 conv of the
    S/8 features plus a learned position embedding), and maps B x (C + k + 1) x H x W over the
    level's footprint: the map's geometry pooled to H x W (walls max-pooled, the rest averaged), k
    learned channels (a 1 x 1 conv of the features at H, or of the stem's pooled to H), a
    presence channel of ones, and with ``bev_look`` the look pooled to H x W (:meth:`pool_look`; last, so a level
    trained without it widens to it: :func:`nfldm.ldm.train.init_level_from`). A map with more
    channels than the level reads (the look, for a level without ``bev_look``) is cut to its
    first C."""

    def __init__(self, cfg: LDMConfig, size: tuple[int, int] | None):
        super().__init__()
        w, S = cfg.bev_width, cfg.bev_size
        self.size, self.S, self.channels = size, S, cfg.bev_channels
        self.start = S if size is not None and size[0] >= S else S // 2      # the stem's resolution
        act = nn.SiLU()
        self.stem = nn.Sequential(nn.Conv2d(self.channels, w, 3, padding=1), act, nn.Conv2d(w, w, 3, padding=1), act)
        n_down = 3 if self.start == S else 2
        self.down = nn.ModuleList([nn.Sequential(nn.Conv2d(a, 2 * w, 3, stride=2, padding=1), act)
                                   for a in (w, 2 * w, 2 * w)[:n_down]])
        self.to_tokens = None
        if cfg.bev_tokens:
            self.to_tokens = nn.Conv2d(2 * w, cfg.cross_attention_dim, 1)
            self.pos = nn.Parameter(torch.randn(1, (S // 8) ** 2, cfg.cross_attention_dim) * 0.02)
        self.to_map = None
        if size is not None:
            # features at the level's resolution: the stem's, or those after the k-th down
            res = [self.start // 2 ** k for k in range(n_down + 1)]
            self.map_from = res.index(size[0]) if size[0] in res else 0
            self.to_map = nn.Conv2d(w if self.map_from == 0 else 2 * w, cfg.bev_map_channels, 1)

    @property
    def num_tokens(self) -> int:
        return (self.S // 8) ** 2

    @staticmethod
    def pool(bev: Tensor, size) -> Tensor:
        """The map at another size: walls max-pooled, the other channels averaged."""
        return torch.cat([F.adaptive_max_pool2d(bev[:, :1], size), F.adaptive_avg_pool2d(bev[:, 1:], size)], 1)

    @staticmethod
    def pool_look(bev: Tensor, size) -> Tensor:
        """The look's channels of a map (B x 15 x S x S; B x 0 x H x W for a 4-channel one) at
        another size, each averaged over where it is defined: light and the floor / ceiling
        colours over the inside cells, the wall colour over the wall cells (0 where there are
        none), the presence averaged."""
        if bev.shape[1] <= GRID_CHANNELS:
            return bev[:, :0].new_zeros(bev.shape[0], 0, *size)
        look = bev[:, GRID_CHANNELS:]
        return torch.cat([masked_mean_pool(look[:, :7], bev[:, 1:2], size),
                          masked_mean_pool(look[:, 7:10], bev[:, 0:1], size),
                          F.adaptive_avg_pool2d(look[:, 10:], size)], 1)

    def forward(self, bev: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """-> (tokens B x (S/8)^2 x dim or None, maps B x (C + k + 1) x H x W or None)."""
        C = self.channels
        if bev.dim() != 4 or bev.shape[1] not in {C, GRID_CHANNELS + LOOK_CHANNELS} or tuple(bev.shape[2:]) != (self.S, self.S):
            need = f"{C}" if C > GRID_CHANNELS else f"{GRID_CHANNELS} (or {GRID_CHANNELS + LOOK_CHANNELS} with the look)"
            hint = ("; this level reads the map's look (bev_look): its latents' maps must carry it (nfldm data add-look, "
                    "encode-latents --refresh-maps)" if C > GRID_CHANNELS and bev.dim() == 4 and bev.shape[1] == GRID_CHANNELS else "")
            raise ValueError(f"the BEV map must be B x {need} x {self.S} x {self.S}, got {tuple(bev.shape)}{hint}")
        bev = bev[:, :C]
        bev = bev.to(self.stem[0].weight.dtype)
        x = bev if self.start == self.S else self.pool(bev, self.start)
        feats = [self.stem(x)]
        for d in self.down:
            feats.append(d(feats[-1]))
        tokens = None
        if self.to_tokens is not None:
            tokens = self.to_tokens(feats[-1]).flatten(2).transpose(1, 2) + self.pos
        maps = None
        if self.to_map is not None:
            H, W = self.size
            f = feats[self.map_from]
            if tuple(f.shape[-2:]) != (H, W):
                f = F.adaptive_avg_pool2d(f, (H, W))
            raw = self.pool(bev[:, :GRID_CHANNELS], (H, W))
            maps = torch.cat([raw, self.to_map(f), torch.ones_like(raw[:, :1]),
                              self.pool_look(bev, (H, W))], 1)
        return tokens, maps


class _MLPBlock(nn.Module):
    """x + gate * MLP(adaLN(x)), then x + CrossAttention(LN(x), tokens). adaLN-zero: the
    modulation (scale, shift, gate) comes from the timestep embedding and starts at zero."""

    def __init__(self, width: int, tok_dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.ada = nn.Linear(width, 3 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.SiLU(), nn.Linear(2 * width, width))
        self.norm2 = nn.LayerNorm(width)
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(tok_dim, 2 * width)
        self.o = nn.Linear(width, width)
        nn.init.zeros_(self.o.weight)
        nn.init.zeros_(self.o.bias)

    def forward(self, x: Tensor, temb: Tensor, tokens: Tensor) -> Tensor:
        scale, shift, gate = self.ada(temb).chunk(3, -1)
        x = x + gate * self.mlp(self.norm1(x) * (1 + scale) + shift)
        B, W = x.shape
        h = self.heads
        q = self.q(self.norm2(x)).view(B, h, 1, W // h)
        k, v = self.kv(tokens).view(B, -1, 2, h, W // h).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype))     # B x h x 1 x W/h
        return x + self.o(a.reshape(B, W))


class GDenoiser(nn.Module):
    """psi_g: B x D noisy [g, traj], timesteps B, tokens B x L x tok_dim -> B x D."""

    def __init__(self, dim: int, width: int, blocks: int, tok_dim: int, heads: int):
        super().__init__()
        self.width = width
        self.inp = nn.Linear(dim, width)
        self.time = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.act = nn.SiLU()
        self.blocks = nn.ModuleList([_MLPBlock(width, tok_dim, heads) for _ in range(blocks)])
        self.out_norm = nn.LayerNorm(width, elementwise_affine=False)
        self.out_ada = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, dim)
        for lin in (self.out_ada, self.out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor, t: Tensor, tokens: Tensor) -> Tensor:
        temb = self.act(self.time(timestep_embedding(t, self.width).to(x.dtype)))
        h = self.inp(x)
        for blk in self.blocks:
            h = blk(h, temb, tokens)
        scale, shift = self.out_ada(temb).chunk(2, -1)
        return self.out(self.out_norm(h) * (1 + scale) + shift)


class UNetDenoiser(nn.Module):
    """psi_c / psi_f: a diffusers ``UNet2DConditionModel``. x: B x in_ch x H x W, t: B,
    g: B x cfg.context_dim, the global vector g or [g, traj] (class embedding, "projection";
    None and no class embedding when ``cfg.context_dim`` is 0), tokens: B x L x tok_dim -> B x out_ch x H x W.
    The first (full-resolution) level has no attention; the others and the middle block have
    self- and cross-attention."""

    def __init__(self, in_ch: int, out_ch: int, size: tuple[int, int], cfg: LDMConfig):
        super().__init__()
        from diffusers import UNet2DConditionModel

        n = len(cfg.block_out_channels)
        if min(size) % 2 ** (n - 1):
            raise ValueError(f"a {size[0]} x {size[1]} latent cannot be halved {n - 1} times "
                             f"(block_out_channels {cfg.block_out_channels}); use fewer levels")
        self.unet = UNet2DConditionModel(
            sample_size=tuple(size), in_channels=in_ch, out_channels=out_ch,
            down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
            up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
            mid_block_type="UNetMidBlock2DCrossAttn",
            block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
            norm_num_groups=cfg.norm_num_groups, cross_attention_dim=cfg.cross_attention_dim,
            attention_head_dim=cfg.attention_heads, class_embed_type="projection" if cfg.context_dim else None,
            projection_class_embeddings_input_dim=cfg.context_dim or None, resnet_time_scale_shift=cfg.time_scale_shift)

    def forward(self, x: Tensor, t: Tensor, g: Tensor | None, tokens: Tensor) -> Tensor:
        return self.unet(x, t, encoder_hidden_states=tokens.to(x.dtype),
                         class_labels=None if g is None else g.to(x.dtype), return_dict=False)[0]


# ----------------------------------------------------------------------------------------
# One level: denoiser + diffusion process


class LevelDiffusion(nn.Module):
    """The diffusion model of one latent level (``cfg.level`` in g | c | f).

    Batches are :class:`~nfldm.ldm.data.LatentDataset` items (standardised g, traj, folded c,
    f, optionally cond). :meth:`target` is what this level generates, :meth:`context` what it
    is conditioned on (the CLEAN coarser latents in training, the sampled ones at sampling).
    """

    def __init__(self, cfg: LDMConfig):
        super().__init__()
        self.cfg = cfg
        self.level = cfg.level
        c_ch, Xc, Yc, Zc = cfg.c_shape
        f_ch, X, Y = cfg.f_shape
        self.c_folded = c_ch * Zc
        self.c_up = X // Xc
        if self.level == "f" and (X % Xc or Y % Yc or X // Xc != Y // Yc):
            raise ValueError(f"f's footprint {X} x {Y} must be an integer multiple of c's {Xc} x {Yc}")
        self.tokens = CondTokens(cfg.cond_dim, cfg.cross_attention_dim)
        self.map_size = None if self.level == "g" else ((Xc, Yc) if self.level == "c" else (X, Y))
        self.bev = None
        if cfg.bev:
            self.bev = BEVEncoder(cfg, self.map_size if cfg.bev_maps else None)
        # self-conditioning: the level's own previous x0 estimate, appended last to the input
        self.self_cond_channels = 0 if self.level == "g" or not cfg.self_cond else (
            self.c_folded if self.level == "c" else f_ch)
        if self.level == "g":
            self.net = GDenoiser(cfg.g_dim + cfg.traj_dim + cfg.scene_look_dim, cfg.mlp_width, cfg.mlp_blocks,
                                 cfg.cross_attention_dim, cfg.mlp_heads)
        elif self.level == "c":
            self.net = UNetDenoiser(self.c_folded + cfg.map_channels + self.self_cond_channels, self.c_folded,
                                    (Xc, Yc), cfg)
        elif self.level == "f":
            self.net = UNetDenoiser(f_ch + self.c_folded + cfg.map_channels + self.self_cond_channels, f_ch,
                                    (X, Y), cfg)
        self.scheduler = make_train_scheduler(cfg)
        # DDP: the null token / condition projection are unused in some batches
        self.ddp_find_unused_parameters = cfg.cond_dim > 0 or cfg.bev

    # ------------------------------------------------------------------ shapes and inputs
    def sample_shape(self, batch: int) -> tuple[int, ...]:
        """Shape of this level's (standardised) latent for ``batch`` samples."""
        cfg = self.cfg
        if self.level == "g":
            return (batch, cfg.g_dim + cfg.traj_dim + cfg.scene_look_dim)
        if self.level == "c":
            return (batch, self.c_folded, cfg.c_shape[1], cfg.c_shape[2])
        return (batch, *cfg.f_shape)

    def target(self, batch: dict) -> Tensor:
        """The clean latent this level generates ([g, traj], [g, traj, look] with ``scene_look``,
        or traj alone when g_dim = 0)."""
        if self.level == "g":
            if self.cfg.g_dim == 0:
                return batch["traj"].float()
            parts = [batch["g"], batch["traj"]]
            if self.cfg.scene_look:
                parts.append(self.normalise_look(self._batch_look(batch)))
            return torch.cat(parts, -1).float()
        return batch[self.level].float()

    def _batch_look(self, batch: dict) -> Tensor:
        if "look" not in batch:
            raise ValueError("this level models the scene's look (scene_look) but the latents' maps carry none "
                             "(nfldm data add-look on the dataset, then nfldm encode-latents --refresh-maps)")
        return batch["look"]

    def _look_stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        if not self.cfg.look_mean:
            raise ValueError("scene_look without look_mean / look_std (set from the latent folder when training)")
        return (torch.tensor(self.cfg.look_mean, device=like.device, dtype=like.dtype),
                torch.tensor(self.cfg.look_std, device=like.device, dtype=like.dtype))

    def normalise_look(self, look: Tensor) -> Tensor:
        """A scene's look (B x 10, :func:`~nfldm.data.bev.scene_look`) standardised by the train split's."""
        mean, std = self._look_stats(look.float())
        return (look.float() - mean) / std

    def denormalise_look(self, look_n: Tensor) -> Tensor:
        mean, std = self._look_stats(look_n.float())
        return look_n.float() * std + mean

    def context(self, batch: dict) -> dict:
        """The coarser latents this level is conditioned on, picked from ``batch`` (the clean
        ones in training, the sampled ones at sampling): g and traj (psi_c), plus c (psi_f);
        traj alone for psi_c when g_dim = 0 (coarse-only). :meth:`predict` uses traj
        with ``g_with_traj`` (in the global vector) and ``traj_map`` (as maps)."""
        if self.level == "g":
            return {}
        ctx = {"traj": batch["traj"].float()}
        if self.cfg.g_dim > 0:
            ctx["g"] = batch["g"].float()
        if self.cfg.scene_look and batch.get("look") is not None:
            ctx["look"] = self.normalise_look(batch["look"])
        if self.level == "f":
            ctx["c"] = batch["c"].float()
        return ctx

    def predict(self, x: Tensor, t: Tensor, ctx: dict, tokens: Tensor) -> Tensor:
        """Model output (v, epsilon or x0 per ``prediction_type``) for noisy x at timesteps t (B).
        A self-conditioned level (``self_cond``) also reads ``ctx["x0_prev"]`` (the shape of x: its
        x0 estimate of the previous sampling step; zeros when absent)."""
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if self.level == "g":
            return self.net(x, t, tokens)
        x0_prev = None
        if self.self_cond_channels:
            x0_prev = ctx.get("x0_prev")
            if x0_prev is None:
                x0_prev = torch.zeros_like(x)
            elif x0_prev.shape != x.shape:
                raise ValueError(f"x0_prev must have the shape of x {tuple(x.shape)}, got {tuple(x0_prev.shape)}")
        if self.level == "f":
            c = F.interpolate(ctx["c"].to(x.dtype), scale_factor=self.c_up, mode="nearest")
            x = torch.cat([x, c], 1)
        if self.cfg.traj_map:
            x = torch.cat([x, self.trajectory_map(ctx, x.shape[-2:]).to(x.dtype)], 1)
        if self.cfg.bev_map_total:
            if "bev_maps" not in ctx:
                raise ValueError("this level takes BEV maps (bev_maps) but none were given; build them with "
                                 "LevelDiffusion.condition")
            x = torch.cat([x, ctx["bev_maps"].to(x.dtype)], 1)
        if x0_prev is not None:
            x = torch.cat([x, x0_prev.to(x.dtype)], 1)
        return self.net(x, t, self.global_vector(ctx), tokens)

    def with_x0_prev(self, ctx: dict, x0_prev: Tensor | None) -> dict:
        """``ctx`` with ``x0_prev`` (a previous x0 estimate, the shape of this level's latent) for a
        self-conditioned level; ``ctx`` itself otherwise, or when there is no estimate yet."""
        return {**ctx, "x0_prev": x0_prev} if self.self_cond_channels and x0_prev is not None else ctx

    def condition(self, cond: Tensor | None, batch: int, drop: Tensor | None = None,
                  length: int = 1) -> tuple[Tensor, Tensor | None]:
        """What the condition brings into the denoiser: (tokens B x L x dim, BEV maps
        B x C x H x W or None). ``cond``: the BEV map (B x 4 x S x S) for a ``bev`` level, else
        condition tokens from the data (B x L x cond_dim); None, or the rows of ``drop`` (B bool),
        give the null tokens (and all-zero maps). ``length``: L of the null tokens without a
        condition (a ``bev`` level uses its own token count)."""
        if self.bev is None:
            return self.tokens(cond, batch, drop, length), None
        null_len = self.bev.num_tokens if self.cfg.bev_tokens else 1
        if cond is not None and drop is None and not torch.is_grad_enabled():
            # sampling: one map (two with look guidance: with and without its look), many
            # denoising steps: encode each once
            cache = getattr(self, "_bev_cache", None) or []
            for c, out in cache:
                if c is cond:
                    return out
            out = self._condition_bev(cond, batch, None, null_len)
            self._bev_cache = (cache + [(cond, out)])[-2:]
            return out
        return self._condition_bev(cond, batch, drop, null_len)

    def _condition_bev(self, cond: Tensor | None, batch: int, drop: Tensor | None, null_len: int):
        if cond is None:
            maps = None
            if self.cfg.bev_map_total:
                maps = self.null_bev_maps(batch)
            return self.tokens(None, batch, length=null_len), maps
        tok, maps = self.bev(cond)
        if tok is None:
            tok = self.tokens(None, batch, length=null_len)
        elif drop is not None:
            tok = torch.where(drop[:, None, None], self.tokens.null.expand_as(tok).to(tok.dtype), tok)
        if maps is not None and drop is not None:
            maps = maps * (~drop).to(maps.dtype)[:, None, None, None]
        return tok, maps

    def train(self, mode: bool = True):
        self._bev_cache = None           # weights may change: encode the map again
        return super().train(mode)

    def without_look(self, cond: Tensor) -> Tensor:
        """The BEV map ``cond`` (B x 15 x S x S) with its look's channels zero (as dropped in
        training); the same tensor for the same map (so its encoding is cached)."""
        kept = getattr(self, "_no_look", None)
        if kept is None or kept[0] is not cond:
            self._no_look = (cond, torch.cat([cond[:, :GRID_CHANNELS], torch.zeros_like(cond[:, GRID_CHANNELS:])], 1))
        return self._no_look[1]

    @staticmethod
    def mean_look(maps: Tensor) -> Tensor:
        """The map's look averaged over the level's footprint, from its BEV maps (B x C x H x W,
        the look's 11 channels last, :class:`BEVEncoder`): light and the floor / ceiling colours
        weighted by the inside channel, the wall colour by the walls, and the look's presence ->
        B x 11 (all 0 for a dropped map or look)."""
        return torch.cat([scene_look(maps), maps[:, -1:].float().mean((2, 3))], 1)

    def null_bev_maps(self, batch: int) -> Tensor:
        """The BEV maps of a dropped / absent map: B x C x H x W zeros."""
        H, W = self.map_size
        p = self.tokens.null
        return torch.zeros(batch, self.cfg.bev_map_total, H, W, device=p.device, dtype=p.dtype)

    def trajectory_map(self, ctx: dict, size) -> Tensor:
        """B x 4 x H x W camera-coverage maps of ctx["traj"] over this level's footprint
        (:func:`~nfldm.ldm.trajectory.camera_coverage`)."""
        if "traj" not in ctx:
            raise ValueError("this level takes trajectory maps (traj_map) but no traj was given")
        return camera_coverage(ctx["traj"], tuple(size), self.cfg.traj_map_hfov, self.cfg.traj_map_aspect)

    def global_vector(self, ctx: dict) -> Tensor | None:
        """What psi_c / psi_f's class embedding sees: B x cfg.context_dim, [g, traj] with
        ``g_with_traj``, else g, then with ``bev_look`` the map's mean look (:meth:`mean_look`);
        None without g (coarse-only)."""
        g = ctx.get("g")
        if g is None or self.cfg.context_dim == 0:
            return None
        if self.cfg.g_with_traj:
            if "traj" not in ctx:
                raise ValueError("this level is conditioned on [g, traj] (g_with_traj) but no traj was given")
            g = torch.cat([g, ctx["traj"].to(g.dtype)], -1)
        if self.cfg.look_dim:
            maps = ctx.get("bev_maps")
            look = (self.mean_look(maps) if maps is not None
                    else torch.zeros(g.shape[0], self.cfg.look_dim, device=g.device))
            g = torch.cat([g, look.to(g.dtype)], -1)
        if self.cfg.scene_look_dim:
            # the scene's look (standardised); zeros where it is unknown or dropped (look_keep 0)
            look = ctx.get("look")
            look = torch.zeros(g.shape[0], self.cfg.scene_look_dim, device=g.device) if look is None else look
            if "look_keep" in ctx:
                look = look * ctx["look_keep"].to(look.dtype).view(-1, 1)
            g = torch.cat([g, look.to(g.dtype)], -1)
        if "g_keep" in ctx:      # guidance on g: rows with g_keep = 0 get the null (zero) vector
            g = g * ctx["g_keep"].to(g.dtype).view(-1, 1)
        return g

    # ------------------------------------------------------------------ training
    def draw_timesteps(self, batch: int, device) -> Tensor:
        """Training timesteps (B): uniform over [train_t_from, train_t_below or T) ([0, T) by default;
        a low-noise expert sets train_t_below, a high-noise one train_t_from), with ``high_t_share``
        of them drawn from [high_t_from, T) instead."""
        T = self.cfg.num_train_timesteps
        t = torch.randint(self.cfg.train_t_from, self.cfg.train_t_below or T, (batch,), device=device)
        if self.cfg.high_t_share > 0:
            high = torch.rand(batch, device=device) < self.cfg.high_t_share
            t = torch.where(high, torch.randint(self.cfg.high_t_from, T, (batch,), device=device), t)
        return t

    def training_loss(self, batch: dict, step: int) -> tuple[Tensor, dict]:
        """Trainer protocol: MSE between the denoiser output and the prediction target at a
        uniformly drawn timestep; conditions dropped with probability ``cond_drop_prob``."""
        x0 = self.target(batch)
        B = x0.shape[0]
        noise = torch.randn_like(x0)
        t = self.draw_timesteps(B, x0.device)
        gamma = self.cfg.input_perturbation
        # DDPM-IP: the input carries eps + gamma xi, the target stays that of eps
        x_t = self.scheduler.add_noise(x0, noise + gamma * torch.randn_like(noise) if gamma else noise, t)
        cond = batch.get("bev" if self.cfg.bev else "cond")
        if self.cfg.bev and cond is None:
            raise ValueError("this level is conditioned on the BEV map (bev) but the latents hold no maps "
                             "(encode-latents stores them when the dataset's scenes have a bev.npz)")
        if not self.cfg.bev and cond is not None and self.cfg.cond_dim == 0:
            raise ValueError(f"the latents hold condition tokens ({tuple(cond.shape[1:])}) but cond_dim = 0; "
                             f"set cond_dim={cond.shape[-1]}")
        if cond is None and self.cfg.cond_dim > 0:
            raise ValueError(f"cond_dim = {self.cfg.cond_dim} but the latents hold no condition tokens")
        drop = (torch.rand(B, device=x0.device) < self.cfg.cond_drop_prob) if cond is not None else None
        if self.cfg.bev and self.cfg.bev_look and cond is not None and self.cfg.bev_look_drop > 0:
            if cond.shape[1] < self.cfg.bev_channels:
                raise ValueError(f"this level reads the map's look (bev_look) but the latents' maps have {cond.shape[1]} "
                                 "channels (nfldm data add-look, then encode-latents --refresh-maps)")
            keep = (torch.rand(B, device=x0.device) >= self.cfg.bev_look_drop).to(cond.dtype)
            cond = torch.cat([cond[:, :GRID_CHANNELS], cond[:, GRID_CHANNELS:] * keep[:, None, None, None]], 1)
        tokens, maps = self.condition(cond, B, drop)
        ctx = self.context(batch)
        if maps is not None:
            ctx["bev_maps"] = maps
        if self.cfg.scene_look_dim and self.level != "g":
            if "look" not in ctx:
                self._batch_look(batch)         # the error naming what is missing
            ctx["look_keep"] = (torch.rand(B, device=x0.device) >= self.cfg.scene_look_drop).float()
        if self.cfg.g_drop_prob > 0 and self.global_vector(ctx) is not None:
            ctx["g_keep"] = (torch.rand(B, device=x0.device) >= self.cfg.g_drop_prob).float()
        if self.self_cond_channels and self.cfg.self_cond_prob > 0:
            # self-conditioning (Analog Bits): a share of the samples gets the x0 estimate of a first
            # pass without gradients, the rest zeros (the first sampling step's input)
            with torch.no_grad():
                first = predicted_x0(self, self.predict(x_t, t, ctx, tokens).float(), x_t, t)
            keep = (torch.rand(B, device=x0.device) < self.cfg.self_cond_prob).to(first.dtype)
            ctx["x0_prev"] = first * keep.reshape(-1, *([1] * (first.dim() - 1)))
        out = self.predict(x_t, t, ctx, tokens).float()
        if self.cfg.prediction_type == "v_prediction":
            tgt = self.scheduler.get_velocity(x0, noise, t)
        elif self.cfg.prediction_type == "epsilon":
            tgt = noise
        else:
            tgt = x0
        per = ((out - tgt) ** 2).flatten(1).mean(1)
        if self.cfg.loss_weight == "x0" and self.cfg.prediction_type == "v_prediction":
            # x0_hat - x0 = -sigma_t (v_hat - v): the v error weighted by sigma_t^2
            ac = self.scheduler.alphas_cumprod.to(per.device)[t]
            per = per * (1 - ac)
        loss = per.mean()
        with torch.no_grad():
            per = per.detach()
            hi = t >= self.cfg.num_train_timesteps // 2
            metrics = {"mse_low_t": per[~hi].mean() if bool((~hi).any()) else per.new_zeros(()),
                       "mse_high_t": per[hi].mean() if bool(hi.any()) else per.new_zeros(())}
        return loss, metrics


def predicted_x0(model: "LevelDiffusion", out: Tensor, x_t: Tensor, t: Tensor | int) -> Tensor:
    """The x0 estimate a model output implies for noisy x_t at timestep(s) t (an int or a
    tensor of B timesteps), per the level's ``prediction_type``:
    v: alpha_t x_t - sigma_t v; epsilon: (x_t - sigma_t eps) / alpha_t; sample: the output."""
    pt = model.cfg.prediction_type
    if pt == "sample":
        return out
    ac = model.scheduler.alphas_cumprod.to(x_t.device)[torch.as_tensor(t, device=x_t.device)]
    ac = ac.reshape(-1, *([1] * (x_t.dim() - 1))) if ac.dim() else ac
    a, s = ac.sqrt(), (1 - ac).sqrt()
    if pt == "v_prediction":
        return a * x_t - s * out
    return (x_t - s * out) / a


@torch.no_grad()
def guided_prediction(model: LevelDiffusion, x: Tensor, t: Tensor, ctx: dict, cond: Tensor | None,
                      guidance: float = 1.0, g_guidance: float = 1.0, look_guidance: float = 1.0) -> Tensor:
    """Classifier-free guidance: ``u + s (c - u)`` with u the prediction under the null token
    and c the one under ``cond`` (B x L x cond_dim); s = ``guidance``. Without a condition the
    (unconditional) prediction itself; with s = 1 the conditional prediction (one pass).

    ``g_guidance`` s_g, for a level trained with ``g_drop_prob`` > 0 (ignored otherwise): the
    same on the global vector, ``u_g + s_g (p - u_g)`` with p the prediction above and u_g the
    one with g replaced by the null (zero) vector.

    ``look_guidance`` s_l, for a level given the map's look (``bev_look``; ignored otherwise or
    without a map): ``u_l + s_l (p - u_l)`` with u_l the prediction given the same map without its
    look (which the level learned through ``bev_look_drop``): the look's effect alone amplified,
    the geometry's left as ``guidance`` sets it. For a psi_c / psi_f given the scene's look
    (``scene_look``) the same with u_l given the context without it (``scene_look_drop``)."""
    if look_guidance != 1.0 and cond is not None and model.cfg.bev and model.cfg.bev_look:
        if guidance != 1.0 and (g_guidance == 1.0 or model.cfg.g_drop_prob <= 0 or model.global_vector(ctx) is None):
            return _map_and_look_guided(model, x, t, ctx, cond, guidance, look_guidance)
        p = guided_prediction(model, x, t, ctx, cond, guidance, g_guidance)
        u = guided_prediction(model, x, t, ctx, model.without_look(cond), guidance, g_guidance)
        return u + look_guidance * (p - u)
    if look_guidance != 1.0 and model.cfg.scene_look_dim and model.level != "g" and ctx.get("look") is not None:
        # the scene's look (scene_look): u_l given the same context without it (scene_look_drop)
        p = guided_prediction(model, x, t, ctx, cond, guidance, g_guidance)
        u = guided_prediction(model, x, t, {k: v for k, v in ctx.items() if k != "look"}, cond, guidance, g_guidance)
        return u + look_guidance * (p - u)
    out = _cond_guided(model, x, t, ctx, cond, guidance)
    if g_guidance == 1.0 or model.cfg.g_drop_prob <= 0 or model.global_vector(ctx) is None:
        return out
    null = {**ctx, "g_keep": torch.zeros(x.shape[0], device=x.device)}
    u = _cond_guided(model, x, t, null, cond, guidance)
    return u + g_guidance * (out - u)


def _map_and_look_guided(model: LevelDiffusion, x: Tensor, t: Tensor, ctx: dict, cond: Tensor, guidance: float,
                         look_guidance: float) -> Tensor:
    """Map guidance s and look guidance s_l together in one tripled batch: n (null map), m (the
    map without its look), p (the map) -> ``n + s (m - n) + s_l s (p - m)``, which is what the
    nested form of :func:`guided_prediction` computes with four passes (its two guided predictions
    share n)."""
    n, m, p = _predictions(model, x, t, ctx, [None, model.without_look(cond), cond], cond.shape[1])
    return n + guidance * (m - n) + look_guidance * guidance * (p - m)


def _cond_guided(model: LevelDiffusion, x: Tensor, t: Tensor, ctx: dict, cond: Tensor | None,
                 guidance: float) -> Tensor:
    if cond is None or guidance == 1.0:
        return _predictions(model, x, t, ctx, [cond])[0]
    u, c = _predictions(model, x, t, ctx, [None, cond], cond.shape[1])
    return u + guidance * (c - u)


def _predictions(model: LevelDiffusion, x: Tensor, t: Tensor, ctx: dict, conds: list[Tensor | None],
                 null_length: int = 1) -> tuple[Tensor, ...]:
    """The model's predictions for x (B x ...) under each condition of ``conds`` (None: the null
    condition, ``null_length`` tokens), in one batch of len(conds) x B."""
    B, k = x.shape[0], len(conds)
    if t.dim() == 0:
        t = t.expand(B)
    parts = [model.condition(c, B, length=null_length) if c is None else model.condition(c, B) for c in conds]
    tokens, maps = torch.cat([tok for tok, _ in parts]), parts[-1][1]
    if k > 1:
        ctx = {key: torch.cat([v] * k) for key, v in ctx.items()}
        x, t = torch.cat([x] * k), torch.cat([t] * k)
        maps = None if maps is None else torch.cat([m for _, m in parts])
    if maps is not None:
        ctx = {**ctx, "bev_maps": maps}
    return model.predict(x, t, ctx, tokens).chunk(k)
