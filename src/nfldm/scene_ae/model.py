"""The scene auto-encoder: lift each image to a frustum, splat the frustums into the voxel
grid V, volume-render V from any camera and decode the rendered feature map into RGB.

Names follow the paper: sigma (density per metre), delta (bin length along the ray),
O = T_d * (1 - exp(-sigma_d * delta_d)) (occupancy weight of depth bin d), phi (pixel feature),
V (grid: channel 0 density, channels 1..C the mean of O * phi).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from nfldm import camera
from nfldm.scene_ae.config import PERCEPTUAL_NETS, RENDER_FROM, TRAIN_PARTS, SceneAEConfig, check_image_size
from nfldm.scene_ae.losses import PatchDiscriminator, adversarial_losses, perceptual_distance
from nfldm.scene_ae.render import render_views
from nfldm.scene_ae.splat import splat_mean

VIEW_KEYS = ("images", "depth", "depth_valid", "intrinsics", "c2w", "frame_ids")
# parameters that decide V (lift); the others (decoder, feature_norm, background, disc) render it
ENCODER_PARAMS = ("lift_net.", "density_bias", "depth_prior_scale")


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(max(1, min(8, c // 4)), c)


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1),
                                  _norm(c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class LiftNet(nn.Module):
    """A small U-Net: N x c_in x H x W  ->  N x c_out x H/stride x W/stride.

    ``channels[i]`` is the width at resolution H / 2^i; the encoder goes down to the last
    level (for context) and comes back up to the output level log2(stride).
    """

    def __init__(self, c_in: int, channels: tuple[int, ...], stride: int, c_out: int):
        super().__init__()
        self.out_level = int(round(math.log2(stride)))
        if 2 ** self.out_level != stride or self.out_level >= len(channels):
            raise ValueError(f"lift_stride {stride} must be a power of two below "
                             f"2^{len(channels)} (one level per lift channel entry)")
        self.stem = nn.Conv2d(c_in, channels[0], 3, padding=1)
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels[i - 1], channels[i], 3, stride=2, padding=1),
                          ResBlock(channels[i]))
            for i in range(1, len(channels)))
        self.up = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels[i + 1] + channels[i], channels[i], 3, padding=1),
                          ResBlock(channels[i]))
            for i in reversed(range(self.out_level, len(channels) - 1)))
        c = channels[self.out_level]
        self.head = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, c_out, 1))

    def forward(self, x: Tensor) -> Tensor:
        skips = [self.stem(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        h = skips.pop()
        for up in self.up:
            s = skips.pop()
            h = up(torch.cat([F.interpolate(h, size=s.shape[-2:], mode="nearest"), s], 1))
        return self.head(h)


class Decoder(nn.Module):
    """Rendered feature map (+ opacity, log depth) to RGB: N x c_in x h x w -> N x 3 x h*up x w*up in [0, 1]."""

    def __init__(self, c_in: int, ch: int, up: int):
        super().__init__()
        n_up = int(round(math.log2(up)))
        if 2 ** n_up != up:
            raise ValueError(f"render_down must be a power of two, got {up}")
        layers: list[nn.Module] = [nn.Conv2d(c_in, ch, 3, padding=1), ResBlock(ch), ResBlock(ch)]
        for _ in range(n_up):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch // 2, 3, padding=1),
                       ResBlock(ch // 2)]
            ch //= 2
        layers += [_norm(ch), nn.SiLU(), nn.Conv2d(ch, 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.net(x))


def take_views(batch: dict, idx: Tensor) -> dict:
    """Select views (dim 1) of the per-view entries of a batch; other entries are shared."""
    return {k: (v[:, idx] if k in VIEW_KEYS else v) for k, v in batch.items()}


def scene_batch(item: dict, device) -> dict:
    """One dataset item as a batch of one on ``device`` (tensors get a leading 1; others a list)."""
    return {k: (v[None].to(device) if torch.is_tensor(v) else [v]) for k, v in item.items()}


def downsample_depth(depth: Tensor, valid: Tensor, factor: int) -> tuple[Tensor, Tensor]:
    """Average valid depths over factor x factor blocks; a block is valid if all its pixels are.

    depth, valid: ... x H x W  ->  ... x H/f x W/f (both).
    """
    if factor == 1:
        return depth, valid
    shape = depth.shape[:-2]
    d = depth.reshape(-1, 1, *depth.shape[-2:])
    v = valid.reshape(-1, 1, *valid.shape[-2:]).to(depth.dtype)
    dv = F.avg_pool2d(d * v, factor)
    vv = F.avg_pool2d(v, factor)
    out = dv / vv.clamp(min=1e-6)
    return out.reshape(*shape, *out.shape[-2:]), (vv > 0.999).reshape(*shape, *out.shape[-2:])


def inside_box(depth: Tensor, intr: Tensor, c2w: Tensor, bounds: Tensor) -> Tensor:
    """Whether each pixel's measured surface point lies in the scene box.

    depth: B x T x H x W, intr: B x T x 4, c2w: B x T x 4 x 4, bounds: B x 2 x 3 -> B x T x H x W.
    """
    p = camera.unproject_depth(depth, intr, c2w)
    lo, hi = bounds[:, None, None, None, 0], bounds[:, None, None, None, 1]
    return ((p >= lo) & (p <= hi)).all(-1)


class SceneAutoEncoder(nn.Module):
    """Posed RGB(-D) views -> voxel grid V -> rendered views.

    Batches (from :class:`nfldm.data.loader.SceneDataset`): images B x V x 3 x H x W in [0, 1],
    depth / depth_valid B x V x H x W, intrinsics B x V x 4, c2w B x V x 4 x 4, bounds B x 2 x 3.
    """

    def __init__(self, cfg: SceneAEConfig):
        super().__init__()
        self.cfg = cfg
        D, C = cfg.num_bins, cfg.feat_dim
        c_in = 3 + (2 if cfg.input_depth else 0)
        if cfg.rgb_features and C < 3:
            raise ValueError(f"rgb_features needs feat_dim >= 3, got {C}")
        self.lift_net = LiftNet(c_in, tuple(cfg.lift_channels), cfg.lift_stride,
                                D + C - (3 if cfg.rgb_features else 0))
        # the rendered features are means of O * phi, whose scale depends on how many entries
        # share a voxel: standardise them per image before decoding
        self.feature_norm = nn.GroupNorm(1, C)
        self.decoder = Decoder(C + 2, cfg.decoder_channels, cfg.render_down)
        check_image_size(cfg)       # after the power-of-two checks of lift_stride and render_down
        self.background = nn.Parameter(torch.zeros(C))
        # density logits start low (free space lets rays through), and with RGB-D input the
        # measured depth also enters as a bump at its bin (see depth_prior), so the occupancy
        # weights O are sharp from the first step and the features O * phi are not diluted
        self.density_bias = nn.Parameter(torch.tensor(-3.0))
        self.depth_prior_scale = nn.Parameter(torch.tensor(8.0))
        if cfg.bin_spacing == "log":
            edges = torch.logspace(math.log10(cfg.near), math.log10(cfg.far), D + 1)
        elif cfg.bin_spacing == "linear":
            edges = torch.linspace(cfg.near, cfg.far, D + 1)
        else:
            raise ValueError(f"bin_spacing must be 'log' or 'linear', got {cfg.bin_spacing!r}")
        if cfg.feature_pooling not in ("mean", "occupancy"):
            raise ValueError(f"feature_pooling must be 'mean' or 'occupancy', got {cfg.feature_pooling!r}")
        self.register_buffer("bin_edges", edges, persistent=False)
        if cfg.train_parts not in TRAIN_PARTS:
            raise ValueError(f"train_parts must be one of {TRAIN_PARTS}, got {cfg.train_parts!r}")
        if cfg.w_adv > 0:
            self.disc = PatchDiscriminator(cfg.disc_channels)
        if cfg.train_parts == "render":
            self.freeze_encoder()
        if cfg.perceptual_net not in PERCEPTUAL_NETS:
            raise ValueError(f"perceptual_net must be one of {PERCEPTUAL_NETS}, got {cfg.perceptual_net!r}")
        if cfg.render_from not in RENDER_FROM:
            raise ValueError(f"render_from must be one of {RENDER_FROM}, got {cfg.render_from!r}")
        if cfg.render_from == "latents" and cfg.train_parts != "render":
            raise ValueError("render_from=latents trains the renderer only: set train_parts=render")
        self.latent_source = None      # render_from=latents: a source of V (train_scene_ae(v_source=...)), not saved

    # ------------------------------------------------------------------ parts
    def encoder_state(self) -> dict[str, Tensor]:
        """The state that decides V (lift network, density bias, depth-prior scale)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(ENCODER_PARAMS)}

    def freeze_encoder(self) -> None:
        """Stop training the encoder: V stays what the current weights make."""
        for k, p in self.named_parameters():
            if k.startswith(ENCODER_PARAMS):
                p.requires_grad_(False)

    # ------------------------------------------------------------------ lift + splat
    def depth_prior(self, depth: Tensor, valid: Tensor, size: tuple[int, int]) -> Tensor:
        """Where the measured depth falls in bin space: a Gaussian bump (one bin wide, in
        log-depth for log bins) around the bin of each lift pixel's measured depth, 0 where
        the depth is invalid.

        depth/valid: N x H x W  ->  N x D x h x w.
        """
        f = depth.shape[-1] // size[1]
        d, v = downsample_depth(depth, valid, f)
        c = self.bin_centers
        if self.cfg.bin_spacing == "log":
            x, c = torch.log(d.clamp(min=self.cfg.near))[:, None], torch.log(c)
        else:
            x = d[:, None]
        width = (c[1:] - c[:-1]).mean()
        bump = torch.exp(-0.5 * ((x - c[None, :, None, None]) / width) ** 2)
        return bump * v[:, None]

    @property
    def bin_centers(self) -> Tensor:
        """D z-depths of the frustum entries (bin mid-points)."""
        return 0.5 * (self.bin_edges[1:] + self.bin_edges[:-1])

    def lift(self, images: Tensor, intr: Tensor, depth: Tensor | None = None,
             valid: Tensor | None = None) -> dict:
        """Per-view frustums (paper Sec. 3.1, scene auto-encoder: a 2D CNN gives D densities and C
        features per pixel; occupancy weights O(h,w,d) = exp(-sum_{j<d} sigma_j delta_j)
        (1 - exp(-sigma_d delta_d)), the volume-rendering quadrature along the pixel's ray;
        frustum entries [O phi, sigma]).

        images: N x 3 x H x W, intr: N x 4 (for H x W), depth/valid: N x H x W (used when
        cfg.input_depth)  ->  dict sigma N x D x h x w, phi N x C x h x w, O N x D x h x w,
        T_far N x h x w (transmittance past the last bin), intr N x 4 (for h x w).
        """
        cfg = self.cfg
        H, W = images.shape[-2:]
        x = images * 2 - 1
        if cfg.input_depth:
            if depth is None or valid is None:
                raise ValueError("this scene auto-encoder takes RGB-D input (input_depth=True)")
            v = valid.to(images.dtype)
            logd = torch.log(depth.clamp(min=cfg.near)) / math.log(cfg.far) * v
            x = torch.cat([x, logd[:, None], v[:, None]], 1)
        out = self.lift_net(x)
        h, w = out.shape[-2:]
        out = out.float()
        D = cfg.num_bins
        logits = out[:, :D] + self.density_bias
        if cfg.input_depth:
            logits = logits + self.depth_prior_scale * self.depth_prior(depth, valid, (h, w))
        sigma = F.softplus(logits)
        phi = out[:, D:]
        if cfg.rgb_features:  # the first 3 feature channels are the pixel colour itself
            phi = torch.cat([F.adaptive_avg_pool2d(images.float(), (h, w)) * 2 - 1, phi], 1)
        intr_l = camera.resize_intrinsics(intr, (H, W), (h, w))
        ray_len = camera.camera_dirs(intr_l, h, w).norm(dim=-1)                 # N x h x w
        delta = (self.bin_edges[1:] - self.bin_edges[:-1])[None, :, None, None] * ray_len[:, None]
        tau = sigma * delta
        csum = tau.cumsum(1)
        O = torch.exp(-(csum - tau)) * (1 - torch.exp(-tau))
        return {"sigma": sigma, "phi": phi, "O": O, "T_far": torch.exp(-csum[:, -1]), "intr": intr_l}

    def encode(self, images: Tensor, intr: Tensor, c2w: Tensor, bounds: Tensor,
               depth: Tensor | None = None, valid: Tensor | None = None) -> dict:
        """Views to the voxel grid.

        images: B x V x 3 x H x W, intr: B x V x 4, c2w: B x V x 4 x 4, bounds: B x 2 x 3,
        depth/valid: B x V x H x W  ->  dict V: B x (1 + C) x X x Y x Z plus the lift outputs
        (flattened over B * V).
        """
        B, Vn = images.shape[:2]
        f = self.lift(images.flatten(0, 1), intr.flatten(0, 1),
                      None if depth is None else depth.flatten(0, 1),
                      None if valid is None else valid.flatten(0, 1))
        D, C = self.cfg.num_bins, self.cfg.feat_dim
        h, w = f["O"].shape[-2:]
        parts = [f["sigma"][:, None], f["O"][:, None] * f["phi"][:, :, None]]
        weighted = self.cfg.feature_pooling == "occupancy"
        if weighted:
            parts.append(f["O"][:, None])
        K = 1 + C + int(weighted)
        entries = torch.cat(parts, 1)
        entries = entries.view(B, Vn, K, D, h, w).permute(0, 1, 3, 4, 5, 2).reshape(B, -1, K)
        pts = camera.frustum_points(f["intr"].view(B, Vn, 4), c2w, h, w, self.bin_centers)
        V = splat_mean(pts.reshape(B, -1, 3), entries, bounds, tuple(self.cfg.grid))
        if weighted:  # mean(O * phi) / mean(O): the occupancy-weighted mean of phi
            V = torch.cat([V[:, :1], V[:, 1:1 + C] / (V[:, 1 + C:] + self.cfg.occupancy_eps)], 1)
        return {"V": V, **f}

    def encode_batch(self, batch: dict) -> dict:
        """:meth:`encode` of all views of a batch (keys as in the class docstring)."""
        return self.encode(batch["images"], batch["intrinsics"], batch["c2w"], batch["bounds"],
                           batch.get("depth"), batch.get("depth_valid"))

    # ------------------------------------------------------------------ render + decode
    def render(self, V: Tensor, bounds: Tensor, intr: Tensor, c2w: Tensor, H: int, W: int,
               jitter: bool = False, chunk: int | None = None) -> dict:
        """Render and decode views of V.

        V: B x (1 + C) x X x Y x Z, intr: B x T x 4 (for the H x W output), c2w: B x T x 4 x 4
        ->  dict rgb B x T x 3 x H x W, depth / opacity B x T x h x w (h = H / render_down),
        feature B x T x C x h x w.
        """
        B, T = intr.shape[:2]
        r = self.cfg.render_down
        h, w = H // r, W // r
        intr_r = camera.resize_intrinsics(intr, (H, W), (h, w))
        out = render_views(V, bounds, intr_r, c2w, h, w, self.cfg.num_samples, self.background,
                           jitter=jitter, chunk=chunk, num_coarse=self.cfg.num_coarse)
        logd = torch.log(out["depth"].clamp(min=self.cfg.near)) / math.log(self.cfg.far)
        feat = self.feature_norm(out["feature"].flatten(0, 1))
        x = torch.cat([feat, out["opacity"].flatten(0, 1)[:, None], logd.flatten(0, 1)[:, None]], 1)
        rgb = self.decoder(x).float()
        return {**out, "rgb": rgb.view(B, T, 3, H, W)}

    def forward(self, batch: dict, target_idx: Tensor | None = None) -> dict:
        """Encode all views of ``batch`` and render ``target_idx`` views (default: all)."""
        enc = self.encode_batch(batch)
        tgt = batch if target_idx is None else take_views(batch, target_idx)
        H, W = batch["images"].shape[-2:]
        return {**enc, **self.render(enc["V"], batch["bounds"], tgt["intrinsics"], tgt["c2w"], H, W)}

    # ------------------------------------------------------------------ training
    def split_views(self, num_views: int) -> tuple[Tensor, Tensor]:
        """Random input views and target views (all non-inputs + some inputs), drawn from
        torch's global RNG (so a resumed run draws the same)."""
        cfg = self.cfg
        need = cfg.num_input_views + cfg.num_novel_views
        if num_views < need:
            raise ValueError(f"a training item needs {need} views (num_input_views + "
                             f"num_novel_views), the batch has {num_views}")
        perm = torch.randperm(num_views)[:need]
        inputs = perm[: cfg.num_input_views].sort().values
        targets = torch.cat([perm[cfg.num_input_views:], perm[: cfg.num_input_targets]])
        return inputs, targets

    def losses(self, batch_in: dict, batch_tgt: dict, jitter: bool = True,
               step: int | None = None) -> tuple[Tensor, dict]:
        """Loss of encoding ``batch_in``'s views and rendering ``batch_tgt``'s views. ``step``
        (training step) switches the renderer's adversarial term on at ``cfg.adv_start``."""
        cfg = self.cfg
        if cfg.render_from == "latents":   # V decoded from the scenes' latents (a fixed stage 2)
            if self.latent_source is None:
                raise RuntimeError("render_from=latents: no latent source attached (train_scene_ae attaches it)")
            enc, V = None, self.latent_source.decode(batch_in["name"], batch_in["bounds"].device)
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.train_parts == "all"):
                enc = self.encode_batch(batch_in)
            V = enc["V"]
        H, W = batch_tgt["images"].shape[-2:]
        out = self.render(V, batch_in["bounds"], batch_tgt["intrinsics"], batch_tgt["c2w"],
                          H, W, jitter=jitter)
        gt = batch_tgt["images"].float()
        if cfg.rgb_loss == "l2":
            rgb_loss = F.mse_loss(out["rgb"], gt)
        else:
            rgb_loss = F.l1_loss(out["rgb"], gt)
        mse = F.mse_loss(out["rgb"].detach(), gt)

        # rendered depth and opacity, at the render resolution
        d_gt, v_gt = downsample_depth(batch_tgt["depth"], batch_tgt["depth_valid"], cfg.render_down)
        h, w = d_gt.shape[-2:]
        intr_r = camera.resize_intrinsics(batch_tgt["intrinsics"], (H, W), (h, w))
        in_box = v_gt & inside_box(d_gt, intr_r, batch_tgt["c2w"], batch_in["bounds"])
        rel = (out["depth"] - d_gt).abs() / d_gt.clamp(min=cfg.near)
        depth_loss = (rel * in_box).sum() / in_box.sum().clamp(min=1)
        empty = ~v_gt if cfg.invalid_is_empty else torch.zeros_like(v_gt)
        empty = empty | (v_gt & ~in_box)
        known = in_box | empty
        # BCE written out in float32 (F.binary_cross_entropy refuses to run under autocast)
        op = out["opacity"].float().clamp(1e-4, 1 - 1e-4)
        t = in_box.float()
        bce = -(t * op.log() + (1 - t) * (1 - op).log())
        opacity_loss = (bce * known).sum() / known.sum().clamp(min=1)

        # the lift's occupancy weights against the measured depth bin (input views)
        occ_loss = self._occupancy_loss(batch_in, enc) if enc is not None else torch.zeros((), device=V.device)
        loss = rgb_loss + cfg.w_depth * depth_loss + cfg.w_occ * occ_loss + cfg.w_opacity * opacity_loss
        metrics = {"rgb": rgb_loss.detach(), "psnr": -10 * torch.log10(mse.clamp(min=1e-10)),
                   "depth_rel": depth_loss.detach(), "occ_nll": occ_loss.detach(),
                   "opacity_bce": opacity_loss.detach()}
        if cfg.w_perceptual > 0 or cfg.w_adv > 0:
            pred, real = out["rgb"].flatten(0, 1), gt.flatten(0, 1)
        if cfg.w_perceptual > 0:
            perc = perceptual_distance(cfg.perceptual_weights, pred.device, cfg.perceptual_net)(pred, real)
            loss = loss + cfg.w_perceptual * perc
            metrics["perceptual"] = perc.detach()
        if cfg.w_adv > 0:
            g_loss, d_loss = adversarial_losses(self.disc, pred, real)
            on = float(step is None or step >= cfg.adv_start)
            # one AdamW step serves both (Adam is blind to the scale of the discriminator's term)
            loss = loss + cfg.w_adv * (on * g_loss + d_loss)
            metrics.update(adv_g=g_loss.detach(), adv_d=d_loss.detach())
        return loss, metrics

    def _occupancy_loss(self, batch_in: dict, enc: dict) -> Tensor:
        """NLL of the lift's occupancy weights O (and T_far) at the measured depth bin."""
        cfg = self.cfg
        dl, vl = downsample_depth(batch_in["depth"], batch_in["depth_valid"], cfg.lift_stride)
        dl, vl = dl.flatten(0, 1), vl.flatten(0, 1)
        D = cfg.num_bins
        bins = (torch.searchsorted(self.bin_edges, dl.contiguous()) - 1).clamp(0, D - 1)
        bins = torch.where(dl > cfg.far, torch.full_like(bins, D), bins)
        occ_known = vl | (~vl if cfg.invalid_is_empty else torch.zeros_like(vl))
        bins = torch.where(vl, bins, torch.full_like(bins, D))
        P = torch.cat([enc["O"], enc["T_far"][:, None]], 1)                    # N x (D+1) x h x w
        nll = -torch.log(P.gather(1, bins[:, None]).squeeze(1) + 1e-6)
        return (nll * occ_known).sum() / occ_known.sum().clamp(min=1)


    def training_loss(self, batch: dict, step: int) -> tuple[Tensor, dict]:
        """Trainer protocol: random input / target views of each scene, all losses."""
        inputs, targets = self.split_views(batch["images"].shape[1])
        return self.losses(take_views(batch, inputs), take_views(batch, targets), jitter=True, step=step)
