"""Configuration of ``nfldm quickstart``: the whole pipeline in one resumable command.

A :class:`QuickstartConfig` names the data to collect, the preset of every stage plus the
overrides the quickstart applies to it, the time budget and how it is shared, and the
sampling settings. Two presets: ``default`` (at most ~60 minutes on a 2-core CPU) and
``smoke`` (every stage at toy size, at most ~3 minutes). docs/quickstart.md says why each value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from nfldm.config import dataclass_from_dict

#: stages in the order they run; (name, what it does)
STAGES: tuple[tuple[str, str], ...] = (
    ("collect", "collect posed RGB-D scenes with ViZDoom (bundled Freedoom maps)"),
    ("check", "check the dataset and write its contact sheet"),
    ("scene_ae", "train stage 1, the scene auto-encoder"),
    ("eval_scene_ae", "evaluate stage 1 on held-out views and render a fly-through"),
    ("encode_voxels", "encode the voxel grid V of every scene"),
    ("latent_ae", "train stage 2, the latent auto-encoder"),
    ("eval_latent_ae", "evaluate stage 2 (rendered-view cost, codebook usage)"),
    ("encode_latents", "encode (g, c, f) and the camera trajectory of every scene"),
    ("ldm", "train stage 3, the latent diffusion models psi_g, psi_c, psi_f"),
    ("sample", "sample scenes: frames, fly-throughs, V, meshes, trajectories"),
    ("eval_generation", "score the samples against real test views (Inception FID / KID, the floor)"),
    ("bundle", "export the trained pipeline as a small fp16 bundle (the shipped pretrained model)"),
    ("report", "write report.html"),
)
STAGE_NAMES = tuple(s for s, _ in STAGES)
TRAIN_STAGES = ("scene_ae", "latent_ae", "ldm")


@dataclass
class QuickstartConfig:
    # data: a ViZDoom dataset collected from the bundled maps
    scenes: int = 160
    frames: int = 24
    resolution: int = 64
    seed: int = 0
    # time: the whole run should end within budget_minutes; the non-training stages are
    # estimated from the per-scene costs below (measured on the 2-core CPU), the rest is
    # shared by the three trainings in proportion to train_shares
    budget_minutes: float = 60.0
    train_shares: tuple[float, float, float] = (0.36, 0.28, 0.36)   # scene-ae, latent-ae, ldm
    ldm_level_shares: tuple[float, float, float] = (0.14, 0.36, 0.50)  # g, c, f of the ldm share
    # rough training speeds (steps per minute) used to set each run's step count so that its
    # learning-rate schedule completes inside its time share; max_minutes is the hard cap
    steps_per_minute: tuple[float, float, float, float, float] = (66.0, 75.0, 4000.0, 560.0, 160.0)
    min_steps: int = 2
    # estimated seconds of the non-training stages (fixed part + per scene)
    fixed_seconds: float = 150.0
    seconds_per_scene: float = 1.8
    # estimated seconds of the Inception-v3 features in eval_generation (about 5 views/s on the
    # 2-core CPU: 384 generated + 384 test + 384 floor views), reserved for that stage alone
    inception_seconds: float = 240.0
    # stage presets and the quickstart's overrides of them (smaller networks than the tiny
    # presets: more steps fit the CPU budget, and the bundle stays ~12 MB in float16)
    scene_ae_preset: str = "tiny"
    latent_ae_preset: str = "tiny"
    ldm_preset: str = "tiny"
    scene_ae_set: dict = field(default_factory=lambda: {"ema_decay": 0.995})
    latent_ae_set: dict = field(default_factory=lambda: {
        "c_enc_channels": (32, 48, 64), "g_enc_channels": (16, 32, 48, 64),
        "dec_c_channels": 64, "dec_channels": 64, "w_render": 100.0})
    ldm_set: dict = field(default_factory=lambda: {
        "g.mlp_width": 128, "c.block_out_channels": (32, 64), "f.block_out_channels": (32, 64)})
    # evaluation and sampling
    eval_max_scenes: int = 0             # 0 = every scene of the test split
    num_samples: int = 8
    sampler: str = "dpm"
    sampler_steps: int = 20
    sample_frames: int = 48

    def __post_init__(self) -> None:
        if self.scenes < 3:
            raise ValueError(f"quickstart needs at least 3 scenes (train / val / test), got {self.scenes}")
        if self.frames < 4:
            raise ValueError(f"quickstart needs at least 4 frames per scene, got {self.frames}")
        if self.resolution not in (64, 128, 256):
            raise ValueError(f"resolution must be 64, 128 or 256, got {self.resolution}")
        if not 1.0 <= self.budget_minutes <= 24 * 60:
            raise ValueError(f"budget_minutes must be between 1 and 1440, got {self.budget_minutes}")
        for name in ("train_shares", "ldm_level_shares"):
            v = getattr(self, name)
            if len(v) != 3 or min(v) <= 0:
                raise ValueError(f"{name} must be three positive numbers, got {v}")
        if self.num_samples < 1 or self.sampler_steps < 1 or self.sample_frames < 2:
            raise ValueError("num_samples and sampler_steps must be >= 1 and sample_frames >= 2")
        if self.sampler not in ("ddpm", "ddim", "dpm"):
            raise ValueError(f"sampler must be ddpm, ddim or dpm, got {self.sampler!r}")

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, QuickstartConfig] = {
    "default": QuickstartConfig(),
    # every stage at toy size (the smoke presets): CI's end-to-end test
    "smoke": QuickstartConfig(
        scenes=5, frames=8, budget_minutes=3.0, scene_ae_preset="smoke", latent_ae_preset="smoke",
        ldm_preset="smoke", scene_ae_set={"num_input_views": 3, "num_novel_views": 2},
        latent_ae_set={}, ldm_set={}, steps_per_minute=(40.0, 40.0, 40.0, 40.0, 40.0), min_steps=2,
        fixed_seconds=60.0, seconds_per_scene=3.0, inception_seconds=15.0, eval_max_scenes=2, num_samples=2, sampler_steps=4,
        sample_frames=8),
}


def preset(name: str, **overrides) -> QuickstartConfig:
    """A copy of a named preset with some fields replaced."""
    if name not in PRESETS:
        raise ValueError(f"unknown quickstart preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def config_from_dict(d: dict) -> QuickstartConfig:
    return dataclass_from_dict(QuickstartConfig, d, "quickstart")
