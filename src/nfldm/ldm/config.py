"""Configuration of the hierarchical latent diffusion models (stage 3), with named presets.

Three denoisers, one per latent level (the paper's psi_g, psi_c, psi_f); each is trained by the
shared trainer into its own run directory (RUN/g, RUN/c, RUN/f) with its own
:class:`LDMConfig` and :class:`~nfldm.trainer.TrainConfig`. Every choice the paper leaves open
is a field here; docs/ldm.md says why each default.

The latent shapes (``g_dim``, ``c_shape``, ``f_shape``) are not free choices: training takes
them from the latent folder (LATDIR/index.json), so a preset is an architecture for latents of
the stated size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from nfldm.config import copy_preset, dataclass_from_dict, dict_without_added
from nfldm.data.bev import GRID_CHANNELS, LOOK_CHANNELS, SCENE_LOOK_DIM
from nfldm.ldm.trajectory import COVERAGE_CHANNELS
from nfldm.trainer import TrainConfig

LEVELS = ("g", "c", "f")
FIXED_BY_LATENTS = ("level", "g_dim", "c_shape", "f_shape", "traj_map_hfov", "traj_map_aspect", "bev_size",
                    "look_mean", "look_std")
# the levels of each latent mode (the latent folder's ``latents``, docs/ldm.md "Ablations"):
# coarse-only keeps a g level that generates the camera trajectory alone (g_dim = 0)
LEVELS_OF_MODE = {"gcf": ("g", "c", "f"), "c": ("g", "c"), "g": ("g",)}


@dataclass
class LDMConfig:
    """One level's denoiser and diffusion process."""

    level: str = "g"                     # "g" | "c" | "f" (which latent this model generates)
    # latent shapes (set from LATDIR/index.json when training); g_dim = 0: the folder has no g
    # (coarse-only ablation: psi_g generates the trajectory alone, psi_c is not conditioned on g)
    g_dim: int = 64
    c_shape: tuple[int, int, int, int] = (4, 16, 16, 16)   # c_ch x X/4 x Y/4 x Zc
    f_shape: tuple[int, int, int] = (4, 64, 64)            # f_ch x X x Y
    traj_frames: int = 8                 # T poses in psi_g's trajectory vector (9 numbers each)
    # opt-in (docs/notes/2026-11-26-trajectory-conditioned-psi-c.md; no gain measured yet at the
    # CPU budget): psi_c / psi_f conditioned on the paper's global latent [g, traj] (the camera
    # path says where the seen part of the scene lies) instead of g alone. No effect when
    # g_dim = 0 (coarse-only: no global vector)
    g_with_traj: bool = False
    # opt-in: psi_c / psi_f also get the trajectory as maps over their footprint (concatenated
    # to the noisy input): where the keyframe cameras look, how near the path is, and x / y
    # (:func:`~nfldm.ldm.trajectory.camera_coverage`); a UNet cannot place the seen region
    # from a global vector alone. hfov / aspect are set from the latent folder when training
    traj_map: bool = False
    traj_map_hfov: float = 90.0          # cameras' horizontal field of view, degrees
    traj_map_aspect: float = 1.0         # the box's y extent / x extent
    # diffusion (diffusers DDPMScheduler; the samplers are built from its config)
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"   # cosine schedule (Nichol & Dhariwal)
    prediction_type: str = "v_prediction"      # "v_prediction" | "epsilon" | "sample"
    timestep_spacing: str = "trailing"         # sampling timesteps include t = T - 1
    # the training loss: "uniform" = MSE of the model's output against its target (v, epsilon
    # or x0); "x0" = MSE of the x0 estimate the output implies, i.e. the v loss weighted by
    # sigma_t^2 (v_prediction only; the same as "uniform" for "sample"). With v_prediction +
    # "x0" the denoiser keeps v's identity path at low noise (x0_hat = alpha_t x_t - sigma_t v,
    # so a nearly clean input comes back nearly unchanged) and x0's emphasis on the high-noise
    # steps that set the layout (docs/notes/2026-11-26-psi-c-on-a-gpu.md "psi_c's low-noise floor")
    loss_weight: str = "uniform"
    # opt-in input perturbation (DDPM-IP, Ning et al. 2023): training noises x0 with
    # eps + gamma xi (xi ~ N(0, I)) but keeps the target of eps, so the denoiser learns inputs a
    # little off the training data, as its own sampling path is (exposure bias; docs/ldm.md)
    input_perturbation: float = 0.0
    # opt-in: this share of the training timesteps is drawn from the high-noise band t >= high_t_from
    # (the rest uniform over all t). psi_c decides a scene's overall brightness in its first
    # sampling step (SDEdit from t = 950 keeps it, from pure noise it is lost), a band uniform t
    # gives 5 % of the steps (docs/notes/2026-12-05-the-maps-look.md)
    high_t_share: float = 0.0
    high_t_from: int = 900
    # opt-in: train only at the timesteps t < train_t_below (0: every t): a low-noise expert, which
    # a level trained on every t hands its last steps to when sampling (nfldm sample --hand-over,
    # --low-noise-c; eDiff-I's denoisers per noise interval, Balaji et al. 2022)
    train_t_below: int = 0
    # opt-in: train only at the timesteps t >= train_t_from (0: from t = 0): a high-noise expert for
    # the composition, which hands its steps below train_t_from to another level when sampling (the
    # default hand-over of ``nfldm sample --bev`` gives t < 250 to the unconditional psi_c)
    train_t_from: int = 0
    # opt-in self-conditioning for psi_c / psi_f (Chen, Zhang & Hinton 2023, "Analog Bits"): the
    # denoiser also takes its own x0 estimate of the previous sampling step (channels appended last
    # to its input; zeros at the first step). In training, for a share ``self_cond_prob`` of the
    # samples, a first pass without gradients gives the estimate that the second pass then takes;
    # the others get zeros, so the level also denoises without one. Ignored by psi_g
    self_cond: bool = False
    self_cond_prob: float = 0.5
    # condition tokens through cross-attention (classifier-free guidance)
    cond_dim: int = 0                    # width of the condition tokens in the data; 0 = none
    cross_attention_dim: int = 64        # width of the tokens inside the denoiser
    cond_drop_prob: float = 0.1          # training: a sample's condition is replaced by the null token
    # BEV-map conditioning (docs/ldm.md "Conditioning on a BEV map"; ``--set bev=true``): every
    # level is conditioned on the scene's map (the latent folder's ``bev``, 4 x S x S: wall,
    # inside, floor, ceiling) through a small CNN (:class:`~nfldm.ldm.model.BEVEncoder`), whose
    # output enters as cross-attention tokens (``bev_tokens``: (S/8)^2 of them, the paper's way)
    # and, for psi_c / psi_f, as maps concatenated to the noisy input, aligned with the level's
    # footprint (``bev_maps``: the map itself pooled to the level's size, ``bev_map_channels``
    # learned channels and a presence channel). Dropped with ``cond_drop_prob`` (classifier-free
    # guidance: ``nfldm sample --bev SRC --guidance S``)
    bev: bool = False
    bev_size: int = 64                   # S, the map's size (set from the latent folder)
    bev_tokens: bool = True
    bev_maps: bool = True
    bev_width: int = 32                  # the BEV encoder's channels
    bev_map_channels: int = 8
    # the map's look too (``--set bev_look=true``; the latent folder's maps must carry it: ``nfldm
    # data add-look``, ``encode-latents --refresh-maps``): sector light and the mean colours of the
    # floor / ceiling flats and wall textures, 11 more channels (the last one the look's presence),
    # appended after the geometry's; psi_c / psi_f also get the look averaged over the map (11
    # numbers) in their global vector (class embedding: FiLM in every resnet), since a look that
    # is the same over the whole input map (a scene's overall light and palette) is mostly taken
    # out again by the UNet's GroupNorms. In training a sample's look alone is dropped (zeros) with
    # ``bev_look_drop``, so the level also follows maps without one (drawn floor plans)
    bev_look: bool = False
    bev_look_drop: float = 0.2
    # opt-in (docs/ldm.md "The scene's look as a global latent"): the scene's overall look (its map's
    # light and floor / ceiling / wall colours averaged over the map, 10 numbers,
    # :func:`~nfldm.data.bev.scene_look`; the latent folder's maps must carry the look) joins the
    # global latent: psi_g generates [g, traj, look], psi_c / psi_f take the look in their global
    # vector (FiLM), dropped (zeros) with ``scene_look_drop`` in training so that ``nfldm sample
    # --look-guidance`` can amplify it. psi_c decides a scene's brightness in its first sampling
    # step from g and the path, which carry none of it (docs/notes/2026-12-05-the-maps-look.md).
    # look_mean / look_std standardise it (the train split's; set from the latent folder)
    scene_look: bool = False
    scene_look_drop: float = 0.2
    look_mean: tuple[float, ...] = ()
    look_std: tuple[float, ...] = ()
    # opt-in classifier-free guidance on g (psi_c / psi_f): in training a sample's global vector
    # (g, or [g, traj]) is replaced by zeros with this probability, so the level also learns
    # the unconditional model; `nfldm sample --g-guidance S` then extrapolates from it towards
    # the g-conditional one (docs/notes/2026-11-26-psi-c-on-a-gpu.md "Guidance on g"). No effect on psi_g or without g
    g_drop_prob: float = 0.0
    # psi_g: residual MLP with adaLN-zero timestep modulation and cross-attention
    mlp_width: int = 256
    mlp_blocks: int = 4
    mlp_heads: int = 4
    # psi_c / psi_f: diffusers UNet2DConditionModel over X x Y (Z folded into channels)
    block_out_channels: tuple[int, ...] = (64, 128)
    layers_per_block: int = 2
    attention_heads: int = 4             # diffusers' `attention_head_dim` (= number of heads)
    norm_num_groups: int = 32
    time_scale_shift: str = "scale_shift"   # resnets: FiLM (adaptive GroupNorm) by time + g

    def __post_init__(self) -> None:
        self.c_shape = tuple(int(x) for x in self.c_shape)
        self.f_shape = tuple(int(x) for x in self.f_shape)
        self.block_out_channels = tuple(int(x) for x in self.block_out_channels)
        self.look_mean = tuple(float(x) for x in self.look_mean)
        self.look_std = tuple(float(x) for x in self.look_std)
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {self.level!r}")
        if len(self.c_shape) != 4 or len(self.f_shape) != 3:
            raise ValueError(f"c_shape needs 4 numbers (c_ch, X/d, Y/d, Zc) and f_shape 3 (f_ch, X, Y); "
                             f"got {self.c_shape}, {self.f_shape}")
        if self.prediction_type not in ("v_prediction", "epsilon", "sample"):
            raise ValueError(f"prediction_type must be v_prediction | epsilon | sample, got "
                             f"{self.prediction_type!r}")
        if self.loss_weight not in ("uniform", "x0"):
            raise ValueError(f"loss_weight must be uniform | x0, got {self.loss_weight!r}")
        if self.loss_weight == "x0" and self.prediction_type == "epsilon":
            raise ValueError("loss_weight='x0' needs prediction_type v_prediction or sample (with epsilon the "
                             "weight sigma_t^2 / alpha_t^2 is unbounded at t = T)")
        if self.g_dim < 0:
            raise ValueError(f"g_dim must be >= 0, got {self.g_dim}")
        if self.level == "f" and self.g_dim == 0:
            raise ValueError("the f level needs g (g_dim > 0)")
        if not 0.0 < self.traj_map_hfov < 180.0 or self.traj_map_aspect <= 0:
            raise ValueError(f"traj_map_hfov must be in (0, 180) degrees and traj_map_aspect > 0, got "
                             f"{self.traj_map_hfov}, {self.traj_map_aspect}")
        if self.traj_frames < 2:
            raise ValueError(f"traj_frames must be >= 2, got {self.traj_frames}")
        if not 0 <= self.train_t_below <= self.num_train_timesteps or (self.train_t_below and self.high_t_share > 0):
            raise ValueError(f"train_t_below must be in [0, num_train_timesteps] and not set beside high_t_share, "
                             f"got {self.train_t_below} (high_t_share {self.high_t_share})")
        if not 0 <= self.train_t_from < (self.train_t_below or self.num_train_timesteps) or (
                self.train_t_from and self.high_t_share > 0):
            raise ValueError(f"train_t_from must be in [0, train_t_below or num_train_timesteps) and not set beside "
                             f"high_t_share, got {self.train_t_from} (train_t_below {self.train_t_below}, "
                             f"high_t_share {self.high_t_share})")
        if not 0.0 <= self.high_t_share <= 1.0 or not 0 <= self.high_t_from < self.num_train_timesteps:
            raise ValueError(f"high_t_share must be in [0, 1] and high_t_from in [0, num_train_timesteps), got "
                             f"{self.high_t_share}, {self.high_t_from}")
        if not 0.0 <= self.input_perturbation < 1.0:
            raise ValueError(f"input_perturbation must be in [0, 1), got {self.input_perturbation}")
        if not 0.0 <= self.g_drop_prob < 1.0:
            raise ValueError(f"g_drop_prob must be in [0, 1), got {self.g_drop_prob}")
        if not 0.0 <= self.self_cond_prob <= 1.0:
            raise ValueError(f"self_cond_prob must be in [0, 1], got {self.self_cond_prob}")
        if not 0.0 <= self.cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1], got {self.cond_drop_prob}")
        for ch in self.block_out_channels:
            if ch % self.norm_num_groups or ch % self.attention_heads:
                raise ValueError(f"block_out_channels {self.block_out_channels} must be divisible by "
                                 f"norm_num_groups={self.norm_num_groups} and attention_heads="
                                 f"{self.attention_heads}")
        if self.bev and self.cond_dim:
            raise ValueError("a level takes either condition tokens from the data (cond_dim) or the BEV map (bev), "
                             "not both")
        if self.bev and not (self.bev_tokens or (self.bev_maps and self.level != "g")):
            raise ValueError(f"level {self.level}: bev is on but neither bev_tokens nor bev_maps (psi_c / psi_f "
                             "only) brings the map in")
        if self.bev and (self.bev_size < 8 or self.bev_size % 8):
            raise ValueError(f"bev_size must be a multiple of 8 (the encoder halves it 3 times), got {self.bev_size}")
        if not 0.0 <= self.bev_look_drop <= 1.0:
            raise ValueError(f"bev_look_drop must be in [0, 1], got {self.bev_look_drop}")
        if not 0.0 <= self.scene_look_drop <= 1.0:
            raise ValueError(f"scene_look_drop must be in [0, 1], got {self.scene_look_drop}")
        if self.look_mean and (len(self.look_mean) != SCENE_LOOK_DIM or len(self.look_std) != SCENE_LOOK_DIM
                               or min(self.look_std) <= 0):
            raise ValueError(f"look_mean / look_std need {SCENE_LOOK_DIM} numbers each (std > 0), got "
                             f"{self.look_mean}, {self.look_std}")
        if self.scene_look and self.g_dim == 0:
            raise ValueError("scene_look needs a global latent (g_dim > 0)")
        if self.mlp_width % self.mlp_heads:
            raise ValueError(f"mlp_width {self.mlp_width} must be divisible by mlp_heads {self.mlp_heads}")

    @property
    def traj_dim(self) -> int:
        return 9 * self.traj_frames

    @property
    def bev_channels(self) -> int:
        """Channels of the BEV condition tensor the level reads: 4 (geometry), + 11 with ``bev_look``."""
        return GRID_CHANNELS + (LOOK_CHANNELS if self.bev_look else 0)

    @property
    def bev_map_total(self) -> int:
        """BEV-map channels psi_c / psi_f add to their input: the map, the learned channels and
        the presence channel (0 without ``bev`` / ``bev_maps``, and for psi_g)."""
        return self.bev_channels + self.bev_map_channels + 1 if self.bev and self.bev_maps and self.level != "g" else 0

    @property
    def map_channels(self) -> int:
        """Channels psi_c / psi_f add to their input: the trajectory maps (``traj_map``) and the
        BEV maps (``bev`` with ``bev_maps``)."""
        return (COVERAGE_CHANNELS if self.traj_map and self.level != "g" else 0) + self.bev_map_total

    @property
    def context_dim(self) -> int:
        """Width of the global vector psi_c / psi_f are conditioned on: g_dim (+ traj_dim
        with ``g_with_traj``); 0 when there is no g (coarse-only)."""
        if self.g_dim == 0:
            return 0
        return self.g_dim + (self.traj_dim if self.g_with_traj else 0) + self.look_dim + self.scene_look_dim

    @property
    def scene_look_dim(self) -> int:
        """Entries of the scene's look (``scene_look``): at the end of psi_g's [g, traj, look] and of
        psi_c / psi_f's global vector."""
        return SCENE_LOOK_DIM if self.scene_look else 0

    @property
    def look_dim(self) -> int:
        """Entries of the map's mean look in psi_c / psi_f's global vector (``bev_look``)."""
        return LOOK_CHANNELS if self.bev and self.bev_look and self.bev_maps and self.level != "g" else 0


@dataclass
class LevelPreset:
    model: LDMConfig
    train: TrainConfig


@dataclass
class LDMPreset:
    """One :class:`LevelPreset` per level. ``--level all`` trains g, c, f in turn; each level's
    ``train.max_minutes`` is its share of the preset's time budget (:attr:`max_minutes`)."""

    g: LevelPreset
    c: LevelPreset
    f: LevelPreset

    def level(self, name: str) -> LevelPreset:
        if name not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {name!r}")
        return getattr(self, name)

    @property
    def max_minutes(self) -> float:
        return sum(self.level(k).train.max_minutes for k in LEVELS)


def _levels(model: dict, train: dict, per_level: dict) -> LDMPreset:
    """A preset from shared model / train settings plus per-level ones."""
    out = {}
    for k in LEVELS:
        m = {**model, **per_level.get(k, {}).get("model", {})}
        t = {**train, **per_level.get(k, {}).get("train", {})}
        out[k] = LevelPreset(LDMConfig(level=k, **m), TrainConfig(**t))
    return LDMPreset(**out)


# psi_c predicts x0 in every preset: with v-prediction its samples drift off the data into
# white noise at CPU-length training (experiments/sampling_drift.py; docs/notes/2026-11-26-psi-c-drift-x0-prediction.md). psi_g and psi_f keep v-prediction (the LDMConfig default).
C_PREDICTION = "sample"

PRESETS: dict[str, LDMPreset] = {
    # unit tests, seconds: latents of the latent-ae smoke preset (g 16, c 4 x 4^3, f 4 x 16^2)
    "smoke": _levels(
        dict(g_dim=16, c_shape=(4, 4, 4, 4), f_shape=(4, 16, 16), cross_attention_dim=16, mlp_width=32,
             mlp_blocks=2, mlp_heads=2, block_out_channels=(16, 32), layers_per_block=1, attention_heads=2,
             norm_num_groups=8),
        dict(steps=4, batch_size=2, lr=1e-3, warmup_steps=1, log_every=1, ckpt_every=2, ema_decay=0.5),
        {"c": {"model": dict(prediction_type=C_PREDICTION)}}),
    # 2-core CPU, 30 minutes in all: latents of the latent-ae tiny preset
    # (g 64, c 4 x 16^3 -> 64 x 16 x 16 folded, f 4 x 64^2). Measured without data loading:
    # g 0.019 s/step (batch 32), c 0.18 s/step (batch 8), f 0.47 s/step (batch 4); the EMA
    # decay of each level is short enough that the initial weights fade (decay^steps < 1 %)
    "tiny": _levels(
        dict(),
        dict(lr=2e-4, warmup_steps=100, log_every=25, ckpt_every=250, grad_clip=1.0),
        {"g": {"model": dict(mlp_width=256, mlp_blocks=4),
               "train": dict(steps=6000, batch_size=32, max_minutes=4, lr=5e-4, ema_decay=0.999)},
         "c": {"model": dict(block_out_channels=(64, 128), layers_per_block=2, prediction_type=C_PREDICTION),
               "train": dict(steps=3000, batch_size=8, max_minutes=10, ema_decay=0.998)},
         "f": {"model": dict(block_out_channels=(32, 64, 128), layers_per_block=1),
               "train": dict(steps=1800, batch_size=4, max_minutes=16, ema_decay=0.997)}}),
    "small": _levels(
        dict(g_dim=128, c_shape=(4, 24, 24, 16), f_shape=(4, 96, 96), cross_attention_dim=128),
        dict(lr=1e-4, warmup_steps=1000, log_every=50, ckpt_every=2000, ema_decay=0.9999),
        {"g": {"model": dict(mlp_width=512, mlp_blocks=6),
               "train": dict(steps=100_000, batch_size=64, lr=2e-4)},
         "c": {"model": dict(block_out_channels=(128, 256, 256), layers_per_block=2, attention_heads=8,
                             prediction_type=C_PREDICTION),
               "train": dict(steps=100_000, batch_size=16)},
         "f": {"model": dict(block_out_channels=(64, 128, 256, 256), layers_per_block=2, attention_heads=8),
               "train": dict(steps=100_000, batch_size=16)}}),
    # the paper's latent sizes: g 128, c 4 x 32 x 32 x 16, f 4 x 128 x 128
    "paper": _levels(
        dict(g_dim=128, c_shape=(4, 32, 32, 16), f_shape=(4, 128, 128), cross_attention_dim=256),
        dict(lr=1e-4, warmup_steps=2000, log_every=100, ckpt_every=5000, ema_decay=0.9999),
        {"g": {"model": dict(mlp_width=1024, mlp_blocks=8, mlp_heads=8),
               "train": dict(steps=200_000, batch_size=128, lr=2e-4)},
         "c": {"model": dict(block_out_channels=(256, 384, 512), layers_per_block=2, attention_heads=8,
                             prediction_type=C_PREDICTION),
               "train": dict(steps=300_000, batch_size=32)},
         "f": {"model": dict(block_out_channels=(128, 256, 384, 512), layers_per_block=2, attention_heads=8),
               "train": dict(steps=300_000, batch_size=32)}}),
}


def preset(name: str) -> LDMPreset:
    """A fresh copy of a named preset."""
    return copy_preset(PRESETS, name, "ldm")


# fields added after runs were made, with the value those runs implicitly had
ADDED_FIELDS = {"g_with_traj": False, "traj_map": False, "traj_map_hfov": 90.0, "traj_map_aspect": 1.0,
                "input_perturbation": 0.0, "loss_weight": "uniform", "g_drop_prob": 0.0,
                "bev": False, "bev_size": 64, "bev_tokens": True, "bev_maps": True, "bev_width": 32,
                "bev_map_channels": 8, "bev_look": False, "bev_look_drop": 0.2,
                "high_t_share": 0.0, "high_t_from": 900, "scene_look": False, "scene_look_drop": 0.2,
                "look_mean": (), "look_std": (), "train_t_below": 0, "train_t_from": 0,
                "self_cond": False, "self_cond_prob": 0.5}


def run_model_config(cfg: LDMConfig) -> dict:
    """``asdict(cfg)`` as stored in a run's config.json: fields of :data:`ADDED_FIELDS` that
    hold the value older runs implicitly had are left out, so runs made before those fields
    existed resume, and hash, exactly as before (a missing key reads back as the default)."""
    return dict_without_added(cfg, ADDED_FIELDS)


def config_from_dict(d: dict) -> LDMConfig:
    """Inverse of ``asdict`` (tuples restored); unknown keys are an error."""
    return dataclass_from_dict(LDMConfig, d, "ldm")


__all__ = ["LEVELS", "LEVELS_OF_MODE", "FIXED_BY_LATENTS", "ADDED_FIELDS", "LDMConfig", "LevelPreset", "LDMPreset",
           "PRESETS", "preset", "run_model_config", "config_from_dict", "asdict"]
