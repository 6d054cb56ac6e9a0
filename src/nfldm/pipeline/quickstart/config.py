"""Configuration of ``nfldm quickstart``: the whole pipeline in one resumable command.

A :class:`QuickstartConfig` names the data to collect, the preset of every stage plus the
overrides the quickstart applies to it, the time budget and how it is shared, and the
sampling settings. Three presets: ``default`` (at most ~60 minutes on a 2-core CPU), ``smoke``
(every stage at toy size, at most ~3 minutes) and ``release`` (the project's release recipe:
2,048 scenes, the tiny presets as they are, the optional stages, 24 hours at most, held-out
plateau stopping). docs/quickstart.md says why each value.

Optional training stages (``extras``: "renderer", "bev_ldm", "image_prior") run after "ldm" and
before "sample"; :func:`stage_list` gives the stages a config runs, in the order of STAGES.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from nfldm.config import dataclass_from_dict

#: every stage in the order it runs; (name, what it does). The optional ones (EXTRA_NAMES) run
#: only when QuickstartConfig.extras lists them (:func:`stage_list`).
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
    ("renderer", "fine-tune stage 1's renderer on V decoded from the latents (adversarial + perceptual)"),
    ("bev_ldm", "train the BEV-map-conditioned levels psi_g, psi_c, psi_f on the same latents"),
    ("image_prior", "train the 2D image prior of post-optimisation (nfldm refine) on the train frames"),
    ("sample", "sample scenes: frames, fly-throughs, V, meshes, trajectories"),
    ("eval_generation", "score the samples against real test views (Inception FID / KID, the floor)"),
    ("bundle", "export the trained pipeline as a small fp16 bundle (the shipped pretrained model)"),
    ("report", "write report.html"),
)
STAGE_NAMES = tuple(s for s, _ in STAGES)
#: the optional stages (all trainings), enabled by QuickstartConfig.extras
EXTRA_NAMES = ("renderer", "bev_ldm", "image_prior")
#: every training stage, in order; the first three always run
TRAIN_STAGES = ("scene_ae", "latent_ae", "ldm") + EXTRA_NAMES
BASE_TRAIN_STAGES = TRAIN_STAGES[:3]
#: the QuickstartConfig fields that only matter when some extra stage is on: a config without
#: extras leaves them out of its stored form (to_dict), so quickstart folders made before they
#: existed resume as before
EXTRA_FIELDS = ("extras", "extra_shares", "extra_steps_per_minute", "renderer_set", "bev_ldm_set",
                "bev_from_ldm", "image_prior_preset", "image_prior_set", "image_prior_renders")


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
    # what ends a training stage: "minutes" (its share of budget_minutes is a hard wall-clock cap,
    # so the whole run keeps its time budget: the demo's 60 minutes) or "steps" (the steps its
    # planned minutes give at steps_per_minute, however long the machine takes: the planned model
    # on a busy or slower machine too, each schedule run to its end; no wall-clock cap)
    budget_by: str = "minutes"
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
    # the optional training stages (EXTRA_NAMES), run after "ldm" in the order of STAGES when listed here
    extras: tuple[str, ...] = ()
    # their time shares (renderer, bev_ldm, image_prior), normalised together with train_shares
    # over the training stages that run
    extra_shares: tuple[float, float, float] = (0.08, 0.12, 0.06)
    # rough training speeds on the 2-core CPU (steps per minute): renderer, bev psi_g, psi_c,
    # psi_f (the bev levels share their time by ldm_level_shares), image prior. Where they come
    # from: the renderer 1393 steps in 25 min on ONE thread (docs/scene-ae.md "Sharper views",
    # lat_perc_adv: 56/min; 60 for 2 threads is a guess); the bundle's bev levels at the tiny
    # preset 2732 / 2845 / 1747 steps in 4 / 10 / 16 min (docs/ldm.md, BEV results); the image
    # prior 2291 steps in 30 min (docs/refine.md, the standardised tiny run)
    extra_steps_per_minute: tuple[float, float, float, float, float] = (60.0, 680.0, 280.0, 110.0, 76.0)
    # "renderer": nfldm train scene-ae --init-from SCENE_AE --set train_parts=render --set
    # render_from=latents --set latents=OUT/latents, with the training options of
    # scene_ae_preset and these (the bundle's renderer/: docs/quickstart.md "The bundled model")
    renderer_set: dict = field(default_factory=lambda: {
        "rgb_loss": "l1", "lr": 5e-4, "warmup_steps": 100, "w_perceptual": 0.1, "w_adv": 0.1, "adv_start": 200})
    # "bev_ldm": nfldm train ldm --set bev=true on OUT/latents (they carry every scene's map) with
    # ldm_preset, ldm_set, then these; bev_from_ldm starts the levels from the unconditional ones
    # (ControlNet-style --init-from OUT/ldm; docs/ldm.md: worse than from scratch at the tiny
    # budget, so off: the bundle's bev/ levels were trained from scratch)
    bev_ldm_set: dict = field(default_factory=dict)
    bev_from_ldm: bool = False
    # 4 or 8: the BEV levels train on OUT/latents_aug{N}: the latents plus every train scene turned by
    # 90, 180, 270 degrees (8: and mirrored), encoded again (encode_latents augment, with OUT/latents'
    # statistics, so the BEV levels standardise as the unconditional ones and nfldm sample's hand-over
    # to the unconditional psi_c holds); 1: OUT/latents as they are
    bev_augment: int = 1
    # "image_prior": nfldm train image-prior on OUT/data with this preset and these overrides
    image_prior_preset: str = "tiny"
    image_prior_set: dict = field(default_factory=dict)
    # scenes sampled from the trained ldm (seed + 1, the `sample` stage's sampler and steps, `frames`
    # frames each, rendered as `sample` renders) whose frames join the prior's training set with
    # their own embeddings (nfldm train image-prior --renders: the generator's look becomes a
    # condition the prior knows, which negative guidance needs; docs/refine.md); 0: real frames only
    image_prior_renders: int = 0
    # the diffusion levels the bundle stores in 8 bits (int8 weights, a float32 scale per output
    # channel: half the bytes of float16, samples unchanged within noise), in the unconditional set
    # and the BEV set alike: room for wider levels under the bundle's 60 MB
    bundle_int8: tuple[str, ...] = ()
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
        if self.budget_by not in ("minutes", "steps"):
            raise ValueError(f"budget_by must be minutes or steps, got {self.budget_by!r}")
        if isinstance(self.extras, str):       # --set extras=renderer,bev_ldm
            self.extras = tuple(x.strip() for x in self.extras.split(",") if x.strip())
        self.extras = tuple(self.extras)
        bad = [x for x in self.extras if x not in EXTRA_NAMES]
        if bad or len(set(self.extras)) != len(self.extras):
            raise ValueError(f"extras must be distinct names among {', '.join(EXTRA_NAMES)}, got {self.extras}")
        # the order of STAGES, whatever the order given
        self.extras = tuple(x for x in EXTRA_NAMES if x in self.extras)
        for name in ("train_shares", "ldm_level_shares", "extra_shares"):
            v = getattr(self, name)
            if len(v) != 3 or min(v) <= 0:
                raise ValueError(f"{name} must be three positive numbers, got {v}")
        if len(self.extra_steps_per_minute) != 5 or min(self.extra_steps_per_minute) <= 0:
            raise ValueError("extra_steps_per_minute must be five positive numbers (renderer, bev g, c, f, "
                             f"image prior), got {self.extra_steps_per_minute}")
        if isinstance(self.bundle_int8, str):       # --set bundle_int8=c
            self.bundle_int8 = tuple(x.strip() for x in self.bundle_int8.split(",") if x.strip())
        self.bundle_int8 = tuple(self.bundle_int8)
        if any(lv not in ("g", "c", "f") for lv in self.bundle_int8) or len(set(self.bundle_int8)) != len(self.bundle_int8):
            raise ValueError(f"bundle_int8 must be distinct levels among g, c, f, got {self.bundle_int8}")
        if self.bev_augment not in (1, 4, 8):
            raise ValueError(f"bev_augment must be 1, 4 or 8, got {self.bev_augment}")
        if self.image_prior_renders < 0:
            raise ValueError(f"image_prior_renders must be >= 0, got {self.image_prior_renders}")
        if self.num_samples < 1 or self.sampler_steps < 1 or self.sample_frames < 2:
            raise ValueError("num_samples and sampler_steps must be >= 1 and sample_frames >= 2")
        if self.sampler not in ("ddpm", "ddim", "dpm"):
            raise ValueError(f"sampler must be ddpm, ddim or dpm, got {self.sampler!r}")

    def to_dict(self) -> dict:
        """The fields as a dict; without extras the fields of the extra stages are left out (they
        change nothing then), and budget_by when it is "minutes", so such a config is stored as
        before they existed."""
        d = asdict(self)
        if self.budget_by == "minutes":      # the default: stored as before the field existed
            d.pop("budget_by")
        if not self.bundle_int8:               # likewise
            d.pop("bundle_int8")
        if self.bev_augment == 1:              # likewise
            d.pop("bev_augment")
        if not self.extras:
            for k in EXTRA_FIELDS:
                d.pop(k)
        return d


#: the stages each config field is read by (a tuple per element for the per-stage tuples). A field
#: read by no stage (planning only: budget, shares, time estimates) is not listed. A run folder takes
#: a changed field as long as none of its stages has started (run.open_run_dir).
FIELD_STAGES: dict[str, tuple] = {
    "scenes": ("collect",), "frames": ("collect",), "resolution": ("collect",), "seed": ("collect", "sample"),
    "min_steps": TRAIN_STAGES,
    "steps_per_minute": (("scene_ae",), ("latent_ae",), ("ldm",), ("ldm",), ("ldm",)),
    "ldm_level_shares": ("ldm", "bev_ldm"),
    "scene_ae_preset": ("scene_ae",), "scene_ae_set": ("scene_ae",),
    "latent_ae_preset": ("latent_ae",), "latent_ae_set": ("latent_ae",),
    "ldm_preset": ("ldm", "bev_ldm"), "ldm_set": ("ldm", "bev_ldm"),
    "extras": EXTRA_NAMES,
    "extra_steps_per_minute": (("renderer",), ("bev_ldm",), ("bev_ldm",), ("bev_ldm",), ("image_prior",)),
    "renderer_set": ("renderer",), "bev_ldm_set": ("bev_ldm",), "bev_from_ldm": ("bev_ldm",),
    "bev_augment": ("bev_ldm",),
    "image_prior_preset": ("image_prior",), "image_prior_set": ("image_prior",),
    "image_prior_renders": ("image_prior",),
    "eval_max_scenes": ("eval_scene_ae", "eval_latent_ae", "renderer"),
    "bundle_int8": ("bundle",),
    "num_samples": ("sample",), "sampler": ("sample",), "sampler_steps": ("sample",), "sample_frames": ("sample",),
}
PLANNING_FIELDS = ("budget_minutes", "budget_by", "train_shares", "extra_shares", "fixed_seconds", "seconds_per_scene",
                   "inception_seconds")


def stages_reading(name: str, old, new) -> set[str]:
    """The stages that read config field ``name`` where its value changed from ``old`` to ``new``
    (per element for the per-stage tuples); every stage for a field this table does not know."""
    if name in PLANNING_FIELDS:
        return set()
    spec = FIELD_STAGES.get(name)
    if spec is None:
        return set(STAGE_NAMES)
    if spec and isinstance(spec[0], tuple):          # one entry per element
        if not isinstance(old, (list, tuple)) or not isinstance(new, (list, tuple)) or len(old) != len(new):
            return {s for e in spec for s in e}
        return {s for e, a, b in zip(spec, old, new) if a != b for s in e}
    return set(spec)


def stage_list(cfg: QuickstartConfig) -> tuple[tuple[str, str], ...]:
    """(stage, what) of every stage ``cfg`` runs, in the order of STAGES."""
    return tuple((name, what) for name, what in STAGES if name not in EXTRA_NAMES or name in cfg.extras)


def train_stage_shares(cfg: QuickstartConfig) -> dict[str, float]:
    """{training stage that ``cfg`` runs: its share of the training time} (not normalised)."""
    shares = dict(zip(BASE_TRAIN_STAGES, cfg.train_shares)) | dict(zip(EXTRA_NAMES, cfg.extra_shares))
    return {name: shares[name] for name, _ in stage_list(cfg) if name in TRAIN_STAGES}


PRESETS: dict[str, QuickstartConfig] = {
    "default": QuickstartConfig(),
    # every stage at toy size (the smoke presets): CI's end-to-end test
    "smoke": QuickstartConfig(
        scenes=5, frames=8, budget_minutes=3.0, scene_ae_preset="smoke", latent_ae_preset="smoke",
        ldm_preset="smoke", scene_ae_set={"num_input_views": 3, "num_novel_views": 2},
        latent_ae_set={}, ldm_set={}, steps_per_minute=(40.0, 40.0, 40.0, 40.0, 40.0), min_steps=2,
        fixed_seconds=60.0, seconds_per_scene=3.0, inception_seconds=15.0, eval_max_scenes=2, num_samples=2, sampler_steps=4,
        sample_frames=8, image_prior_preset="smoke", extra_steps_per_minute=(40.0, 40.0, 40.0, 40.0, 40.0),
        renderer_set={"rgb_loss": "l1", "w_perceptual": 0.1, "w_adv": 0.1, "adv_start": 1}),
    # the project's release recipe (docs/quickstart.md "Release recipe"): >= 2,000 windows over
    # every map of the collector's fixed split (54 train, 7 val, 7 test maps: about 30 windows a
    # map), the stages' own tiny presets without the quickstart's narrowing, every optional
    # stage, at most 24 hours; each training stops early when its held-out loss has not improved
    # for `patience` measurements `val_every` steps apart. The renderer has no held-out stop: its
    # loss holds the adversarial term, and its V come from the train scenes' latents only.
    "release": QuickstartConfig(
        scenes=2048, frames=24, resolution=64, budget_minutes=1440.0,
        # the recipe is its steps (planned from 1440 minutes at the measured speeds below): a
        # stage that shares the CPU, or a slower machine, trains the same model, only later
        budget_by="steps",
        extras=("renderer", "bev_ldm", "image_prior"),
        # keep_best: each stage ends at the weights of its best held-out measurement (the trainer's
        # RUN/best.*), not at its last step (the BEV psi_c overfits late: best at 15,500 of 20,000)
        scene_ae_set={"val_every": 500, "patience": 8, "keep_best": True},
        latent_ae_set={"val_every": 500, "patience": 8, "keep_best": True},   # the tiny preset sets w_render=100 itself
        # a key without a level prefix applies to every level (ldm.train._split_overrides). Widths:
        # the tiny preset's levels make 26 MB of float16 per set (unconditional, bev): 52 MB, with
        # stage 2 (11 MB), stage 1, the renderer and the image prior (10 MB) over the 60 MB the
        # bundle may take, and the repository (whose tracked tree holds the bundle) over the 64 MiB
        # the GPU machines take. psi_g 128, psi_c (48, 96), psi_f (32, 64) make ~11 MB a set, ~43 MB
        # in all (the size limits chose them, not a capacity measurement: they may change until the
        # ldm stage starts, run.open_run_dir takes the change). psi_c's 48 / 96 channels take 16
        # GroupNorm groups (the preset's 32 do not divide 48; run.check_stage_configs now refuses such
        # a config when the run starts). Since 2026-12-06 psi_c is 96 / 192 (16 groups), stored in 8
        # bits (bundle_int8): a lower held-out loss at every step and per CPU minute past ~20 minutes,
        # both sets' psi_c fit the 60 MB bundle so (docs/notes/2026-12-06-wide-psi-c-in-8-bits.md)
        # psi_c takes the camera trajectory ([g, traj] and its 4 coverage maps): without it the first
        # release run's layouts were as unrelated to their sampled paths as another scene's (path
        # agreement 0.06), with it 0.46 (docs/notes/2026-12-05-trajectory-psi-c.md; the shipped
        # bundle's psi_c was retrained so after the run, and its BEV psi_f from psi_f:
        # experiments/release_relevel.py). The BEV psi_c takes the trajectory too, as the shipped one
        # (map and path: wall IoU 0.221 vs 0.207 with the map alone, and both map edits within 10 %:
        # docs/notes/2026-12-05-where-the-fid-goes.md); the shipped BEV psi_c and psi_f were started
        # from the unconditional ones after the run (--init-from), a post-step as above.
        ldm_set={"val_every": 500, "patience": 8, "keep_best": True, "g.mlp_width": 128, "c.block_out_channels": (96, 192),
                 "c.norm_num_groups": 16, "f.block_out_channels": (32, 64), "c.g_with_traj": True,
                 "c.traj_map": True},
        # the ldm stages' minutes shared g 10 %, c 60 %, f 30 % (the default 14 / 36 / 50): psi_c is
        # the level that loses the layout (given the real g, c resampled renders at 20 dB against the
        # scene's own latents, f resampled given the real c at 32 dB: docs/notes/2026-11-26-which-
        # level-spoils-the-samples.md), and the scenes it fits grow with its minutes (32 in 10, 64 in
        # 20: docs/notes/2026-11-27-how-many-scenes-psi-c-fits.md); psi_g's 39 minutes are still
        # ~135,000 steps
        ldm_level_shares=(0.10, 0.60, 0.30),
        # the BEV psi_c also reads the map's look (light, flat and texture colours: the collector
        # writes them), as the shipped one does (paired LPIPS 0.440 -> 0.405 with nfldm sample's look
        # guidance 3: docs/notes/2026-12-05-the-maps-look.md)
        bev_ldm_set={"c.bev_look": True},
        # ... on the train scenes and their copies turned by 90, 180, 270 degrees, as the shipped BEV
        # psi_c (fine-tuned so after the run: held-out loss 0.290 against 0.327, and with the hand-over
        # every test scene's FID 131.8 against 133.8: docs/notes/2026-12-06-low-noise-hand-over.md)
        bev_augment=4,
        image_prior_set={"val_every": 500, "patience": 8, "keep_best": True},
        bundle_int8=("c",),
        # the tiny presets' speeds on the 2-core CPU, measured 2026-12-03 on the quickstart's data
        # (`nfldm train scene-ae --data out/qsdata --preset tiny --steps 40`: 76/min; `train latent-ae
        # --voxels out/qsvox --preset tiny --steps 30`: 42.5/min; `train ldm --latents out/qslat
        # --preset tiny`: psi_g 3476, psi_c 392, psi_f 129/min; psi_c at 96 / 192: 6,000 steps in 46
        # minutes on one thread, the shipped psi_c's run, 130/min); they set each run's schedule length
        # (the held-out plateau usually ends it first)
        steps_per_minute=(76.0, 42.5, 3476.0, 130.0, 129.0),
        # the BEV levels likewise (the default's bev psi_c 280/min was at 32 / 64)
        extra_steps_per_minute=(60.0, 680.0, 130.0, 110.0, 76.0),
        # non-training stages, per scene: 0.06 s collecting (measured: 2,048 scenes in 123 s on the
        # 2-core CPU, every one of the 68 maps), ~0.6 s voxel encoding, ~0.05 s latent encoding,
        # ~0.15 s evaluating stages 1 and 2 on the 10 % test scenes, ~0.1 s checking and
        # EfficientNet features; 300 s for sampling 16 scenes, the bundle and the report
        fixed_seconds=300.0, seconds_per_scene=1.0,
        # Inception features: up to 5,000 test + 5,000 floor (val) + 768 generated views at ~5 views/s
        inception_seconds=2200.0,
        num_samples=16, eval_max_scenes=0),
}


def preset(name: str, **overrides) -> QuickstartConfig:
    """A copy of a named preset with some fields replaced."""
    if name not in PRESETS:
        raise ValueError(f"unknown quickstart preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def config_from_dict(d: dict) -> QuickstartConfig:
    return dataclass_from_dict(QuickstartConfig, d, "quickstart")
