"""The latent auto-encoder (LAE): the voxel grid V of stage 1 to the latents (g, c, f) and back.

Names follow the paper: V (channel 0 density sigma per metre, channels 1..C features),
g (global vector, KL-regularised), c (coarse 3D latent, quantised), f (fine 2D latent,
quantised). The vertical axis Z of V is folded into channels, so every encoder and the
decoder is a 2D CNN over the X x Y footprint:

    V: B x (1 + C) x X x Y x Z  --normalise, fold-->  B x ((1 + C) Z) x X x Y
    g encoder: -> mu, logvar     B x g_dim                 (g = mu + exp(logvar / 2) eps)
    c encoder: -> c              B x c_ch x X/4 x Y/4 x Zc  (Zc = Z / c_z_down)
    f encoder: -> f              B x f_ch x X x Y
    quantise c and f (VectorQuantize with an EMA codebook, or FSQ)
    decoder: fold(c_q) -> conv, upsample x4 -> concat f_q -> ResBlocks whose GroupNorms are
             modulated by g -> B x ((1 + C) Z) x X x Y --unfold, denormalise--> V_hat

Diffusion (stage 3) models the PRE-quantisation c and f (and g = mu): :meth:`encode` returns
them, :meth:`decode_latents` quantises and decodes them.

Ablations (``cfg.latents``, docs/latent-ae.md): "gcf" is the above; "c" has only the c
encoder / quantiser and decodes V from c alone (no f concatenated, plain unmodulated
GroupNorms); "g" has only the g encoder and decodes V from g alone (g -> linear -> a learned
c_ch Zc x X/4 x Y/4 map, which takes the place of folded c in the same decoder, g-modulated
GroupNorms, no f). Absent latents are absent from every output; :meth:`decode_latents` takes
None for them.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from nfldm.latent_ae.config import LatentAEConfig, check_latent_mode
from nfldm.scene_ae.model import ResBlock


def _groups(c: int) -> int:
    return max(1, min(8, c // 4))


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(_groups(c), c)


def _log2(n: int, what: str) -> int:
    k = int(round(math.log2(n))) if n > 0 else -1
    if k < 0 or 2 ** k != n:
        raise ValueError(f"{what} must be a power of two, got {n}")
    return k


# ----------------------------------------------------------------------------------------
# Folding Z into channels


def fold(V: Tensor) -> Tensor:
    """B x K x X x Y x Z -> B x (K Z) x X x Y (channel k * Z + z)."""
    B, K, X, Y, Z = V.shape
    return V.permute(0, 1, 4, 2, 3).reshape(B, K * Z, X, Y)


def unfold(x: Tensor, K: int) -> Tensor:
    """Inverse of :func:`fold`: B x (K Z) x X x Y -> B x K x X x Y x Z."""
    B, KZ, X, Y = x.shape
    return x.view(B, K, KZ // K, X, Y).permute(0, 1, 3, 4, 2)


# ----------------------------------------------------------------------------------------
# Building blocks


class AdaGroupNorm(nn.Module):
    """GroupNorm whose scale and shift come from g: norm(x) * (1 + s(g)) + b(g).

    x: B x c x H x W, g: B x g_dim -> B x c x H x W. Zero-initialised, so it starts as a
    plain (affine-free) GroupNorm.
    """

    def __init__(self, c: int, g_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(c), c, affine=False)
        self.proj = nn.Linear(g_dim, 2 * c)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, g: Tensor) -> Tensor:
        scale, shift = self.proj(g)[:, :, None, None].chunk(2, dim=1)
        return self.norm(x) * (1 + scale) + shift


class AdaResBlock(nn.Module):
    """ResBlock with g-modulated GroupNorms. x: B x c x H x W, g: B x g_dim."""

    def __init__(self, c: int, g_dim: int):
        super().__init__()
        self.n1, self.c1 = AdaGroupNorm(c, g_dim), nn.Conv2d(c, c, 3, padding=1)
        self.n2, self.c2 = AdaGroupNorm(c, g_dim), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: Tensor, g: Tensor) -> Tensor:
        h = self.c1(F.silu(self.n1(x, g)))
        return x + self.c2(F.silu(self.n2(h, g)))


def _down(c_in: int, c_out: int, n_res: int) -> nn.Sequential:
    """Stride-2 conv + ResBlocks: B x c_in x H x W -> B x c_out x H/2 x W/2."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1),
                         *[ResBlock(c_out) for _ in range(n_res)])


class FEncoder(nn.Module):
    """Folded V -> f: B x K x X x Y -> B x f_ch x X x Y (full resolution)."""

    def __init__(self, c_in: int, width: int, f_ch: int, n_res: int, skip: bool = False):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(c_in, width, 1), *[ResBlock(width) for _ in range(n_res)],
                                 _norm(width), nn.SiLU(), nn.Conv2d(width, f_ch, 3, padding=1))
        self.skip = nn.Conv2d(c_in, f_ch, 1) if skip else None  # a linear code of each column

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x) if self.skip is None else self.net(x) + self.skip(x)


class CEncoder(nn.Module):
    """Folded V -> c: B x K x X x Y -> B x c_ch x X/d x Y/d x Zc (d = 2^(len(widths) - 1))."""

    def __init__(self, c_in: int, widths: tuple[int, ...], c_ch: int, Zc: int, n_res: int, skip: bool = False):
        super().__init__()
        self.c_ch, self.Zc = c_ch, Zc
        layers: list[nn.Module] = [nn.Conv2d(c_in, widths[0], 1), *[ResBlock(widths[0]) for _ in range(n_res)]]
        for a, b in zip(widths[:-1], widths[1:]):
            layers.append(_down(a, b, n_res))
        layers += [_norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], c_ch * Zc, 3, padding=1)]
        self.net = nn.Sequential(*layers)
        # a linear code of each d x d block of columns (mean-pooled)
        self.skip = (nn.Sequential(nn.AvgPool2d(2 ** (len(widths) - 1)), nn.Conv2d(c_in, c_ch * Zc, 1))
                     if skip else None)

    def forward(self, x: Tensor) -> Tensor:
        h = self.net(x) if self.skip is None else self.net(x) + self.skip(x)
        return unfold(h, self.c_ch)


class GEncoder(nn.Module):
    """Folded V -> (mu, logvar) of g: B x K x X x Y -> 2 x (B x g_dim).

    Average-pools X x Y by 2, then one level per width (stride-2 convs), then an adaptive
    average pool to g_size x g_size, flatten, linear.
    """

    def __init__(self, c_in: int, widths: tuple[int, ...], g_dim: int, g_size: int, n_res: int):
        super().__init__()
        self.g_size = g_size
        layers: list[nn.Module] = [nn.AvgPool2d(2), nn.Conv2d(c_in, widths[0], 1),
                                   *[ResBlock(widths[0]) for _ in range(n_res)]]
        for a, b in zip(widths[:-1], widths[1:]):
            layers.append(_down(a, b, n_res))
        layers += [_norm(widths[-1]), nn.SiLU(), nn.AdaptiveAvgPool2d(g_size)]
        self.net = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1] * g_size * g_size, 2 * g_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.head(self.net(x).flatten(1)).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)


class Decoder(nn.Module):
    """(g, c_q, f_q) -> normalised folded V: B x g_dim, B x c_ch x X/d x Y/d x Zc,
    B x f_ch x X x Y -> B x (K Z) x X x Y.

    c is folded to channels, convolved and upsampled x2 per level (nearest + conv) to X x Y,
    concatenated with f, and passed through ResBlocks whose GroupNorms are modulated by g.

    Ablations (``cfg.latents``): "c": no f, and the ResBlocks / output norm are plain
    (affine) GroupNorms, not modulated (g and f are None); "g": ``g_map`` (a linear layer)
    turns g into a c_ch Zc x X/d x Y/d map that enters the c branch in place of fold(c), no f,
    g-modulated GroupNorms as in "gcf" (c and f are None).

    ``latent_skip``: the output also gets a 1 x 1 conv of f_q and a bilinearly upsampled 1 x 1
    conv of fold(c_q), straight to the columns (not in "g"). ``out_head="mlp"``: see
    :meth:`_head`.
    """

    def __init__(self, cfg: LatentAEConfig, Zc: int):
        super().__init__()
        mode = check_latent_mode(cfg.latents)
        self.from_g, self.has_g, self.has_f = mode == "g", "g" in mode, "f" in mode
        n_up = _log2(cfg.c_down, "c_down")
        wc, wd, n = cfg.dec_c_channels, cfg.dec_channels, cfg.num_res_blocks
        c_layers: list[nn.Module] = [nn.Conv2d(cfg.c_channels * Zc, wc, 3, padding=1),
                                     *[ResBlock(wc) for _ in range(n)]]
        w = wc
        for i in range(n_up):
            w_next = wd if i == n_up - 1 else max(wd, wc // 2 ** (i + 1))
            c_layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w, w_next, 3, padding=1),
                         *[ResBlock(w_next) for _ in range(n)]]
            w = w_next
        self.c_branch = nn.Sequential(*c_layers)
        self.fuse = nn.Conv2d(w + (cfg.f_channels if self.has_f else 0), wd, 3, padding=1)
        if self.has_g:
            self.blocks = nn.ModuleList(AdaResBlock(wd, cfg.g_dim) for _ in range(n + 1))
            self.out_norm = AdaGroupNorm(wd, cfg.g_dim)
        else:
            self.blocks = nn.ModuleList(ResBlock(wd) for _ in range(n + 1))
            self.out_norm = _norm(wd)
        self.out = nn.Conv2d(wd, cfg.channels * cfg.grid[2], 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.skip = None
        if cfg.latent_skip and mode != "g":
            KZ = cfg.channels * cfg.grid[2]
            self.skip = nn.ModuleDict({"c": nn.Conv2d(cfg.c_channels * Zc, KZ, 1)})
            if self.has_f:
                self.skip["f"] = nn.Conv2d(cfg.f_channels, KZ, 1)
            for conv in self.skip.values():
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)
        self.mlp_head = cfg.out_head == "mlp"
        if self.mlp_head:  # per height z: head_channels features of the column -> MLP -> 1 + C values
            self.head_proj = nn.Conv2d(wd, cfg.head_channels * cfg.grid[2], 1)
            self.head_mlp = nn.Sequential(nn.Conv3d(cfg.head_channels, cfg.head_hidden, 1), nn.SiLU(),
                                          nn.Conv3d(cfg.head_hidden, cfg.channels, 1))
            nn.init.zeros_(self.head_mlp[-1].weight)
            nn.init.zeros_(self.head_mlp[-1].bias)
        if self.from_g:
            X, Y, _ = cfg.grid
            self.map_shape = (cfg.c_channels * Zc, X // cfg.c_down, Y // cfg.c_down)
            self.g_map = nn.Linear(cfg.g_dim, math.prod(self.map_shape))

    def forward(self, g: Tensor | None, c_q: Tensor | None, f_q: Tensor | None) -> Tensor:
        x = self.g_map(g).view(g.shape[0], *self.map_shape) if self.from_g else fold(c_q)
        h = self.c_branch(x)
        h = self.fuse(torch.cat([h, f_q], 1) if self.has_f else h)
        if not self.has_g:
            for blk in self.blocks:
                h = blk(h)
            y = self._head(F.silu(self.out_norm(h)))
        else:
            for blk in self.blocks:
                h = blk(h, g)
            y = self._head(F.silu(self.out_norm(h, g)))
        if self.skip is not None:
            y = y + F.interpolate(self.skip["c"](x), size=y.shape[-2:], mode="bilinear", align_corners=False)
            if self.has_f:
                y = y + self.skip["f"](f_q)
        return y

    def _head(self, a: Tensor) -> Tensor:
        """B x dec_channels x X x Y -> B x (K Z) x X x Y: the linear map, plus (``out_head="mlp"``)
        a per-voxel MLP on head_channels features per voxel (B x head_channels x Z x X x Y)."""
        y = self.out(a)
        if self.mlp_head:
            B, _, X, Y = a.shape
            # channel k * Z + z (the fold layout) viewed as B x k x Z x X x Y: 1x1x1 convs are per voxel
            per_voxel = self.head_proj(a).view(B, self.head_mlp[0].in_channels, -1, X, Y)
            y = y + self.head_mlp(F.silu(per_voxel)).reshape(y.shape)
        return y


# ----------------------------------------------------------------------------------------
# Quantisation


class Quantizer(nn.Module):
    """Quantises the channel vectors of a latent map.

    z: B x D x *S -> dict z_q (B x D x *S, straight-through gradients when training),
    indices (B x *S, int64), loss (scalar: the VQ commitment loss, 0 for FSQ / none).

    kind "vq": ``vector_quantize_pytorch.VectorQuantize`` (EMA codebook of ``codebook_size``
    codes, k-means initialisation on the first batch, dead-code replacement); "fsq":
    ``FSQ(levels)`` (prod(levels) codes, no codebook to learn); "none": identity (indices 0).
    """

    def __init__(self, dim: int, cfg: LatentAEConfig):
        super().__init__()
        self.kind = cfg.quantizer
        if self.kind == "vq":
            from vector_quantize_pytorch import VectorQuantize

            self.q = VectorQuantize(dim=dim, codebook_size=cfg.codebook_size, decay=cfg.vq_decay,
                                    kmeans_init=cfg.kmeans_init,
                                    threshold_ema_dead_code=cfg.dead_code_threshold,
                                    commitment_weight=cfg.commitment_weight,
                                    # codebook statistics all-reduced over DDP ranks (the process
                                    # group does not exist yet when the model is built)
                                    sync_codebook=int(os.environ.get("WORLD_SIZE", "1")) > 1)
            self.codebook_size = cfg.codebook_size
        elif self.kind == "fsq":
            from vector_quantize_pytorch import FSQ

            self.q = FSQ(levels=list(cfg.fsq_levels), dim=dim)
            self.codebook_size = int(math.prod(cfg.fsq_levels))
        elif self.kind == "none":
            self.q = None
            self.codebook_size = 1
        else:
            raise ValueError(f"quantizer must be 'vq', 'fsq' or 'none', got {self.kind!r}")

    def forward(self, z: Tensor) -> dict:
        B, D, S = z.shape[0], z.shape[1], z.shape[2:]
        if self.q is None:
            return {"z_q": z, "indices": z.new_zeros(B, *S, dtype=torch.long), "loss": z.new_zeros(())}
        x = z.flatten(2).transpose(1, 2).float()                     # B x N x D
        if self.kind == "vq":
            q, idx, loss = self.q(x)
        else:
            q, idx = self.q(x)
            loss = x.new_zeros(())
        z_q = q.transpose(1, 2).reshape(B, D, *S).to(z.dtype)
        return {"z_q": z_q, "indices": idx.reshape(B, *S).long(), "loss": loss.reshape(())}


def c_roughness(c: Tensor) -> Tensor:
    """How little the coarse latent agrees with its neighbours: the mean squared difference of
    adjacent cells (along X, Y and Z) over twice c's variance, i.e. 1 - the mean lag-1
    autocorrelation. About 1 for white noise, 0 for a constant map, and unchanged by rescaling
    c (so penalising it cannot be met by shrinking c).

    c: B x C x Xc x Yc x Zc (pre-quantisation) -> scalar."""
    c = c.float()
    diffs = [((c.narrow(d, 1, c.shape[d] - 1) - c.narrow(d, 0, c.shape[d] - 1)) ** 2).mean()
             for d in (2, 3, 4) if c.shape[d] > 1]
    return sum(diffs) / (2 * max(len(diffs), 1) * c.var().clamp(min=1e-8))


def codebook_usage(counts: Tensor) -> dict:
    """Usage of a codebook from how often each code was picked (counts: K).

    -> {"perplexity": exp(entropy of the code frequencies) (K when all are used equally),
        "used": codes picked at least once, "used_fraction": used / K, "codebook_size": K}.
    """
    counts = counts.double()
    total = counts.sum()
    p = counts / total.clamp(min=1)
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    used = int((counts > 0).sum())
    return {"perplexity": float(entropy.exp()) if total > 0 else 0.0, "used": used,
            "used_fraction": used / len(counts), "codebook_size": len(counts)}


# ----------------------------------------------------------------------------------------
# The latent auto-encoder


class LatentAutoEncoder(nn.Module):
    """V <-> (g, c, f), or only c or only g (``cfg.latents``: "gcf" | "c" | "g"; absent latents
    are absent from every output). Shapes (K = 1 + C channels of V, Zc = Z / c_z_down, d = c_down):

    V        B x K x X x Y x Z     stage-1 voxels (density sigma >= 0, features), original units
    g        B x g_dim             global latent (mu of the posterior when not sampling)
    c        B x c_ch x X/d x Y/d x Zc   coarse latent, before quantisation
    f        B x f_ch x X x Y      fine latent, before quantisation

    ``stats`` (from VOXDIR/index.json): {"sigma_scale": s, "feature_rms": [C]}; normalised V
    is [log1p(sigma / s), features / rms]. They are buffers, saved with the weights.
    """

    def __init__(self, cfg: LatentAEConfig, stats: dict | None = None):
        super().__init__()
        self.cfg = cfg
        mode = check_latent_mode(cfg.latents)      # --set bypasses the config's __post_init__
        self.latent_names = tuple(k for k in ("g", "c", "f") if k in mode)
        X, Y, Z = cfg.grid
        K = cfg.channels
        if K < 1:
            raise ValueError(f"channels must be >= 1 (density + features), got {K}")
        _log2(cfg.c_down, "c_down")
        if "c" in mode and len(cfg.c_enc_channels) != _log2(cfg.c_down, "c_down") + 1:
            raise ValueError(f"c_enc_channels needs log2(c_down) + 1 = {_log2(cfg.c_down, 'c_down') + 1} "
                             f"widths (one per level), got {tuple(cfg.c_enc_channels)}")
        if X % cfg.c_down or Y % cfg.c_down or Z % cfg.c_z_down:
            raise ValueError(f"grid {tuple(cfg.grid)} must be divisible by c_down={cfg.c_down} in X, Y "
                             f"and by c_z_down={cfg.c_z_down} in Z")
        if "g" in mode and min(X, Y) // 2 // 2 ** (len(cfg.g_enc_channels) - 1) < 1:
            raise ValueError(f"g_enc_channels has too many levels ({len(cfg.g_enc_channels)}) for an "
                             f"{X} x {Y} footprint")
        self.Zc = Z // cfg.c_z_down
        n = cfg.num_res_blocks
        # (built in this order in every mode: "gcf" draws the same initial weights as before the
        # ablation switch existed)
        if "g" in mode:
            self.g_encoder = GEncoder(K * Z, tuple(cfg.g_enc_channels), cfg.g_dim, cfg.g_size, n)
        if "c" in mode:
            self.c_encoder = CEncoder(K * Z, tuple(cfg.c_enc_channels), cfg.c_channels, self.Zc, n, cfg.latent_skip)
        if "f" in mode:
            self.f_encoder = FEncoder(K * Z, cfg.f_enc_channels, cfg.f_channels, n, cfg.latent_skip)
        if "c" in mode:
            self.c_quantizer = Quantizer(cfg.c_channels, cfg)
        if "f" in mode:
            self.f_quantizer = Quantizer(cfg.f_channels, cfg)
        self.decoder = Decoder(cfg, self.Zc)
        stats = stats or {}
        rms = torch.as_tensor(stats.get("feature_rms", [1.0] * (K - 1)), dtype=torch.float32)
        if rms.shape != (K - 1,) or not bool((rms > 0).all()):
            raise ValueError(f"stats feature_rms must hold {K - 1} positive numbers, got {rms.tolist()}")
        self.register_buffer("sigma_scale", torch.tensor(float(stats.get("sigma_scale", 1.0))))
        self.register_buffer("feature_rms", rms)
        self._renderer: list = []   # frozen stage-1 model for the image loss (not a submodule)

    # ------------------------------------------------------------------ shapes
    @property
    def latent_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-scene shapes of the latents this model has (g, c, f in "gcf" mode)."""
        X, Y, _ = self.cfg.grid
        d = self.cfg.c_down
        shapes = {"g": (self.cfg.g_dim,), "c": (self.cfg.c_channels, X // d, Y // d, self.Zc),
                  "f": (self.cfg.f_channels, X, Y)}
        return {k: shapes[k] for k in self.latent_names}

    @property
    def quantizers(self) -> dict[str, "Quantizer"]:
        """The quantisers of the latents this model has: {"c": ..., "f": ...} in "gcf" mode."""
        return {k: getattr(self, f"{k}_quantizer") for k in ("c", "f") if k in self.latent_names}

    def _check_latents(self, **latents: Tensor | None) -> None:
        """ValueError if a latent this model has is None, or one it lacks is given."""
        for k, v in latents.items():
            if k in self.latent_names and v is None:
                raise ValueError(f"latent {k} is missing (this latent auto-encoder has latents "
                                 f"{self.cfg.latents!r})")
            if k not in self.latent_names and v is not None:
                raise ValueError(f"this latent auto-encoder has no latent {k} (latents={self.cfg.latents!r}); "
                                 "pass None for it")

    # ------------------------------------------------------------------ normalisation
    def normalise(self, V: Tensor) -> Tensor:
        """B x K x X x Y x Z original units -> normalised: [log1p(sigma / s), features / rms]."""
        sigma = V[:, :1].float().clamp(min=0)
        feat = V[:, 1:].float() / self.feature_rms.view(1, -1, 1, 1, 1)
        return torch.cat([torch.log1p(sigma / self.sigma_scale), feat], 1)

    def denormalise(self, Vn: Tensor) -> Tensor:
        """Inverse of :meth:`normalise` (negative normalised densities become 0)."""
        sigma = torch.expm1(Vn[:, :1].float().clamp(min=0)) * self.sigma_scale
        feat = Vn[:, 1:].float() * self.feature_rms.view(1, -1, 1, 1, 1)
        return torch.cat([sigma, feat], 1)

    def occupancy(self, V: Tensor) -> Tensor:
        """Occupied voxels of V (sigma > occupied_sigma), dilated by ``dilate`` voxels.

        V: B x K x X x Y x Z (original units) -> B x 1 x X x Y x Z bool.
        """
        occ = (V[:, :1] > self.cfg.occupied_sigma).float()
        r = self.cfg.dilate
        if r > 0:
            occ = F.max_pool3d(occ, 2 * r + 1, stride=1, padding=r)
        return occ > 0

    def voxel_weights(self, V: Tensor) -> Tensor:
        """Per-voxel loss weights, summing to 1 per scene: occupied voxels share
        ``occupied_share``, empty voxels the rest (all to one class if the other is absent).

        V: B x K x X x Y x Z -> B x 1 x X x Y x Z.
        """
        occ = self.occupancy(V).float()
        emp = 1 - occ
        n_occ = occ.sum(dim=(1, 2, 3, 4), keepdim=True)
        n_emp = emp.sum(dim=(1, 2, 3, 4), keepdim=True)
        s = self.cfg.occupied_share
        s_occ = torch.where(n_emp == 0, torch.ones_like(n_occ), torch.where(n_occ == 0, torch.zeros_like(n_occ),
                                                                             torch.full_like(n_occ, s)))
        return s_occ * occ / n_occ.clamp(min=1) + (1 - s_occ) * emp / n_emp.clamp(min=1)

    # ------------------------------------------------------------------ encode / decode
    def encode(self, V: Tensor, sample: bool = False) -> dict:
        """V (original units) -> dict g_mu, g_logvar, g (a posterior sample if ``sample``,
        else mu), c, f (both before quantisation); shapes in the class docstring. Only the
        latents this model has."""
        return self._encode_folded(fold(self.normalise(V)), sample)

    def _encode_folded(self, x: Tensor, sample: bool) -> dict:
        """:meth:`encode` of the folded normalised V, x: B x (K Z) x X x Y."""
        out = {}
        if "g" in self.latent_names:
            mu, logvar = self.g_encoder(x)
            g = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if sample else mu
            out.update(g_mu=mu, g_logvar=logvar, g=g)
        if "c" in self.latent_names:
            out["c"] = self.c_encoder(x)
        if "f" in self.latent_names:
            out["f"] = self.f_encoder(x)
        return out

    def quantize(self, c: Tensor | None, f: Tensor | None) -> dict:
        """Pre-quantisation c, f -> dict c_q, f_q (same shapes), c_indices B x X/d x Y/d x Zc,
        f_indices B x X x Y, commit (scalar: sum of the commitment losses). Only the latents
        this model has (None for the others); commit is 0 when it quantises nothing."""
        self._check_latents(c=c, f=f)
        out, commit = {}, None
        for name, z in (("c", c), ("f", f)):
            if z is None:
                continue
            q = self.quantizers[name](z)
            out[f"{name}_q"], out[f"{name}_indices"] = q["z_q"], q["indices"]
            commit = q["loss"] if commit is None else commit + q["loss"]
        out["commit"] = commit if commit is not None else self.sigma_scale.new_zeros(())
        return out

    def decode(self, g: Tensor | None, c_q: Tensor | None, f_q: Tensor | None) -> Tensor:
        """Quantised latents (None for those this model lacks) -> normalised V: B x K x X x Y x Z."""
        self._check_latents(g=g, c=c_q, f=f_q)
        return unfold(self.decoder(g, c_q, f_q), self.cfg.channels)

    def decode_latents(self, g: Tensor | None, c: Tensor | None = None, f: Tensor | None = None) -> Tensor:
        """What stage 3 calls on (sampled) pre-quantisation latents: quantise, decode,
        denormalise -> V: B x K x X x Y x Z in original units. None for absent latents."""
        self._check_latents(g=g)
        q = self.quantize(c, f)
        return self.denormalise(self.decode(g, q.get("c_q"), q.get("f_q")))

    def forward(self, V: Tensor, sample: bool = False) -> dict:
        """V -> encode, quantise, decode: the encoder outputs, the quantiser outputs, and
        Vn (normalised input), Vn_folded (fold(Vn), B x (K Z) x X x Y), Vn_hat (normalised
        reconstruction), V_hat (original units)."""
        Vn = self.normalise(V)
        x = fold(Vn)
        enc = self._encode_folded(x, sample)
        q = self.quantize(enc.get("c"), enc.get("f"))
        Vn_hat = self.decode(enc.get("g"), q.get("c_q"), q.get("f_q"))
        return {**enc, **q, "Vn": Vn, "Vn_folded": x, "Vn_hat": Vn_hat, "V_hat": self.denormalise(Vn_hat)}

    # ------------------------------------------------------------------ training
    def set_renderer(self, scene_ae: nn.Module | None) -> None:
        """The frozen stage-1 model used by the image loss (w_render > 0). Kept outside the
        module tree: it is neither trained nor saved with the LAE."""
        if scene_ae is not None:
            scene_ae.eval().requires_grad_(False)
        self._renderer = [] if scene_ae is None else [scene_ae]

    def render_loss(self, V: Tensor, V_hat: Tensor, batch: dict) -> Tensor:
        """MSE between the stage-1 renders (RGB) of V_hat and of V from ``render_views``
        random cameras of each scene's trajectory (batch c2w B x N x 4 x 4, intrinsics
        B x N x 4, bounds B x 2 x 3)."""
        if not self._renderer:
            raise ValueError("w_render > 0 needs the stage-1 model: call set_renderer(scene_ae)")
        sae = self._renderer[0]
        if next(sae.parameters()).device != V.device:
            sae.to(V.device)
        B, N = batch["c2w"].shape[:2]
        idx = torch.randint(0, N, (B, self.cfg.render_views), device=V.device)
        c2w = torch.gather(batch["c2w"], 1, idx[..., None, None].expand(-1, -1, 4, 4))
        intr = torch.gather(batch["intrinsics"], 1, idx[..., None].expand(-1, -1, 4))
        H, W = sae.cfg.image_hw()
        with torch.no_grad():
            ref = sae.render(V, batch["bounds"], intr, c2w, H, W)["rgb"]
        out = sae.render(V_hat, batch["bounds"], intr, c2w, H, W)["rgb"]
        return F.mse_loss(out.float(), ref.float())

    def losses(self, batch: dict) -> tuple[Tensor, dict]:
        """Loss of one batch (batch["V"]: B x K x X x Y x Z, original units): paper Sec. 3.2, the
        reconstruction of V (density and features, weighted per voxel), a small KL penalty on g,
        KL = 0.5 mean(mu^2 + exp(logvar) - 1 - logvar), and the VQ commitment terms of c and f."""
        cfg = self.cfg
        V = batch["V"].float()
        out = self(V, sample=True)
        B, K, X, Y, Z = V.shape
        # in the decoder's folded layout (channel k * Z + z, contiguous): the same sums as over
        # B x K x X x Y x Z, without strided elementwise passes over the permuted V
        w = fold(self.voxel_weights(V)).unsqueeze(1)                        # B x 1 x Z x X x Y
        err = ((fold(out["Vn_hat"]).float() - out["Vn_folded"]) ** 2).view(B, K, Z, X, Y)
        density = (err[:, :1] * w).sum() / B
        feature = (err[:, 1:] * w).sum() / (B * max(1, cfg.channels - 1))
        loss = cfg.w_density * density + cfg.w_feature * feature
        metrics = {"density": density.detach(), "feature": feature.detach()}
        if "g" in self.latent_names:
            mu, logvar = out["g_mu"].float(), out["g_logvar"].float()
            kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).mean()
            loss = loss + cfg.w_kl * kl
            metrics["kl"] = kl.detach()
        if self.quantizers:
            loss = loss + out["commit"]
            metrics["commit"] = out["commit"].detach()
        if cfg.w_render > 0:
            render = self.render_loss(V, out["V_hat"], batch)
            loss = loss + cfg.w_render * render
            metrics["render_mse"] = render.detach()
        if "c" in self.latent_names:
            rough = c_roughness(out["c"])
            if cfg.w_c_smooth > 0:
                loss = loss + cfg.w_c_smooth * rough
            metrics["c_roughness"] = rough.detach()
        for name, q in self.quantizers.items():
            counts = torch.bincount(out[f"{name}_indices"].flatten(), minlength=q.codebook_size)
            p = counts.float() / counts.sum()
            metrics[f"{name}_perplexity"] = torch.exp(-(p * torch.log(p.clamp(min=1e-12))).sum())
        return loss, metrics

    def training_loss(self, batch: dict, step: int) -> tuple[Tensor, dict]:
        """Trainer protocol."""
        return self.losses(batch)
