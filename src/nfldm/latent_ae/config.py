"""Configuration of the latent auto-encoder (stage 2), with named presets.

Every choice the paper leaves open is a field here; docs/latent-ae.md says why each default.
The shape of V (``grid``, ``channels``) is not a free choice: training takes it from the voxel
folder (VOXDIR/index.json), so a preset is an architecture that fits grids of the stated size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from nfldm.config import copy_preset, dataclass_from_dict, dict_without_added
from nfldm.trainer import TrainConfig

# which latents the auto-encoder has (the paper's stage-3 ablations, docs/ldm.md "Ablations"):
# "gcf" the full hierarchy (g, c, f); "c" the coarse 3D latent only; "g" the global vector only
LATENT_MODES = ("gcf", "c", "g")


def check_latent_mode(mode) -> str:
    """``mode`` if it is one of :data:`LATENT_MODES`, else a ValueError."""
    if mode not in LATENT_MODES:
        raise ValueError(f"latents must be one of {', '.join(repr(m) for m in LATENT_MODES)} (g + c + f, "
                         f"coarse only, global only), got {mode!r}")
    return mode


@dataclass
class LatentAEConfig:
    # V: channels (1 + C) x X x Y x Z (set from the voxel folder when training)
    grid: tuple[int, int, int] = (64, 64, 64)
    channels: int = 17
    # latents (paper: g 128-d; c 4 x X/4 x Y/4 x Z/2; f 4 x X x Y)
    latents: str = "gcf"                 # which exist: "gcf" (all) | "c" (coarse only) | "g" (global only)
    g_dim: int = 64
    c_channels: int = 4
    c_down: int = 4                      # X, Y downsampling of c (paper: ds = 4)
    c_z_down: int = 4                    # Z downsampling of c: Zc = Z / c_z_down (paper: 2)
    f_channels: int = 4
    g_size: int = 4                      # the g encoder ends with an adaptive pool to g_size x g_size
    # 2D CNNs over X x Y (Z folded into channels)
    f_enc_channels: int = 64             # f encoder width (full resolution)
    c_enc_channels: tuple[int, ...] = (64, 96, 128)   # c encoder width per level (X, X/2, X/4, ...)
    g_enc_channels: tuple[int, ...] = (32, 64, 96, 128)  # g encoder width per level (X/2, X/4, ...)
    dec_channels: int = 96               # decoder width at X x Y
    dec_c_channels: int = 128            # decoder width of the c branch at X/4
    num_res_blocks: int = 2              # ResBlocks per resolution level
    # the decoder's last step, from dec_channels features per column to the (1 + C) Z values of
    # the column: "linear" (a 1 x 1 convolution: every column lies in a dec_channels-dimensional
    # affine subspace) | "mlp" (that convolution plus a per-voxel MLP on head_channels
    # features per height; docs/latent-ae.md, "Output head")
    out_head: str = "linear"
    head_channels: int = 8               # "mlp": features per voxel projected from the column
    head_hidden: int = 32                # "mlp": hidden width of the per-voxel MLP
    # a linear path from the quantised latents straight to V's columns, added to the decoder's
    # output: f_q by a 1 x 1 convolution, c_q (folded) by a 1 x 1 convolution at X/4 x Y/4 and
    # bilinear upsampling (docs/latent-ae.md, "Latent skip")
    latent_skip: bool = False
    # quantisation of c and f: "vq" (VectorQuantize, EMA codebook) | "fsq" | "none"
    quantizer: str = "vq"
    codebook_size: int = 512             # VQ codebook entries (c and f each have their own)
    vq_decay: float = 0.99               # EMA decay of the codebook
    kmeans_init: bool = True
    dead_code_threshold: float = 2.0     # EMA cluster size below which a code is replaced
    commitment_weight: float = 0.25      # VQ commitment loss weight (beta in VQ-VAE)
    fsq_levels: tuple[int, ...] = (8, 5, 5, 5)   # FSQ: 1000 codes from 4 channels
    # normalisation of V (values come from VOXDIR/index.json; stored in the weights)
    occupied_sigma: float = 0.5          # a voxel is occupied if sigma (per metre) exceeds this
    # losses
    w_density: float = 1.0               # weighted MSE of log1p(sigma / sigma_scale)
    w_feature: float = 1.0               # weighted MSE of the RMS-normalised features
    occupied_share: float = 0.5          # share of the voxel loss given to occupied voxels
    dilate: int = 1                      # occupied voxels are dilated by this many voxels
    w_kl: float = 1e-6                   # KL(q(g | V) || N(0, I)), mean over dimensions
    w_render: float = 0.0                # MSE between stage-1 renders of decoded and original V
    render_views: int = 1                # random views per scene for the image loss
    # smoothness of the coarse latent: w_c_smooth x c_roughness(c) (model.c_roughness: 1 for
    # white noise, 0 for a constant map), to make c easier for psi_c (docs/latent-ae.md)
    w_c_smooth: float = 0.0

    def __post_init__(self) -> None:
        check_latent_mode(self.latents)
        if self.out_head not in ("linear", "mlp"):
            raise ValueError(f"out_head must be 'linear' or 'mlp', got {self.out_head!r}")


@dataclass
class LatentAEPreset:
    model: LatentAEConfig
    train: TrainConfig


PRESETS: dict[str, LatentAEPreset] = {
    # unit tests, seconds: V from the stage-1 smoke preset, 9 x 16 x 16 x 8
    "smoke": LatentAEPreset(
        LatentAEConfig(grid=(16, 16, 8), channels=9, g_dim=16, c_z_down=2, f_enc_channels=16,
                       c_enc_channels=(16, 16, 16), g_enc_channels=(16, 16), dec_channels=16,
                       dec_c_channels=16, num_res_blocks=1, codebook_size=32, latent_skip=True),
        TrainConfig(steps=4, batch_size=2, lr=1e-3, warmup_steps=1, log_every=1, ckpt_every=2)),
    # 2-core CPU, 30 minutes: V of the stage-1 tiny preset, 17 x 64 x 64 x 64;
    # c 4 x 16 x 16 x 16, f 4 x 64 x 64 (the paper's compression ratio, about 130x)
    # (w_render=100: every measured stage-2 number used it; the field's default stays 0)
    "tiny": LatentAEPreset(
        LatentAEConfig(latent_skip=True, w_render=100.0),
        TrainConfig(steps=2200, batch_size=2, lr=1e-3, warmup_steps=100, log_every=25,
                    ckpt_every=250, max_minutes=30)),
    "small": LatentAEPreset(
        LatentAEConfig(grid=(96, 96, 64), channels=25, g_dim=128, c_z_down=4, f_enc_channels=96,
                       c_enc_channels=(96, 128, 192), g_enc_channels=(64, 96, 128, 192),
                       dec_channels=128, dec_c_channels=192, codebook_size=1024, latent_skip=True),
        TrainConfig(steps=50_000, batch_size=8, lr=5e-4, warmup_steps=1000, log_every=50,
                    ckpt_every=1000)),
    # the paper's sizes: V 33 x 128 x 128 x 32, g 128, c 4 x 32 x 32 x 16, f 4 x 128 x 128
    "paper": LatentAEPreset(
        LatentAEConfig(grid=(128, 128, 32), channels=33, g_dim=128, c_z_down=2, f_enc_channels=128,
                       c_enc_channels=(128, 192, 256), g_enc_channels=(64, 128, 192, 256, 256),
                       dec_channels=192, dec_c_channels=256, codebook_size=1024, latent_skip=True),
        TrainConfig(steps=200_000, batch_size=16, lr=3e-4, warmup_steps=2000, log_every=100,
                    ckpt_every=2000)),
}


def preset(name: str) -> LatentAEPreset:
    return copy_preset(PRESETS, name, "latent-ae")


def config_from_dict(d: dict) -> LatentAEConfig:
    """Inverse of ``asdict`` (tuples restored); unknown keys are an error."""
    return dataclass_from_dict(LatentAEConfig, d, "latent-ae")


# fields added after runs existed, with the value older runs implicitly had
ADDED_FIELDS = {"latents": "gcf", "out_head": "linear", "head_channels": 8, "head_hidden": 32,
                "latent_skip": False, "w_c_smooth": 0.0}


def run_model_config(cfg: LatentAEConfig) -> dict:
    """``asdict(cfg)`` as stored in a run's config.json: fields of :data:`ADDED_FIELDS` that
    hold the value older runs implicitly had are left out, so runs made before those fields
    existed resume, and hash, exactly as before (a missing key reads back as the default)."""
    return dict_without_added(cfg, ADDED_FIELDS)


__all__ = ["LATENT_MODES", "check_latent_mode", "run_model_config", "LatentAEConfig", "LatentAEPreset", "PRESETS",
           "preset", "config_from_dict", "asdict"]
