"""Hierarchical sampling of latents g -> c -> f (stage 3 alone).

    psi_g: [g, traj] ~ p(g, traj | cond)
    psi_c: c ~ p(c | g, cond)            (g: the sampled one)
    psi_f: f ~ p(f | g, c, cond)         (g, c: the sampled ones)

Ablations (docs/ldm.md): coarse-only runs sample traj ~ psi_g, c ~ psi_c (unconditional);
global-only runs sample [g, traj] ~ psi_g. :func:`render_path` turns a sampled trajectory into
camera keyframes and a smooth path. Decoding to V, rendering, meshes and the sample folder
(``nfldm sample``) span stages: :mod:`nfldm.pipeline.generate`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from nfldm.latent_ae.model import fold
from nfldm.ldm.data import LatentStats, unfold_c
from nfldm.ldm.model import SAMPLERS, LevelDiffusion, guided_prediction, make_sampler, predicted_x0
from nfldm.ldm.trajectory import decode_trajectory, interpolate_path

__all__ = ["denoise", "check_temperature", "level_guidance", "sample_latents", "render_path"]


# ----------------------------------------------------------------------------------------
# Latents


@torch.no_grad()
def denoise(model: LevelDiffusion, batch: int, ctx: dict, cond: Tensor | None, guidance: float,
            sampler: str, steps: int, generator: torch.Generator, progress: bool = False,
            desc: str = "", on_step=None, g_guidance: float = 1.0, known: tuple[Tensor, Tensor] | None = None,
            guide: tuple[LevelDiffusion, dict, float] | None = None, look_guidance: float = 1.0,
            start: tuple[Tensor, int] | None = None, look_from: int = 0,
            low: tuple[LevelDiffusion, dict, int] | None = None, temperature: float = 1.0) -> Tensor:
    """One level's reverse process from pure noise: standardised latents of shape
    ``model.sample_shape(batch)``. ``generator``: a CPU generator (same noise on any device).
    ``on_step(t, x_t, out)``, if given, sees every step's input and model output before the
    step (experiments/sampling_drift.py). ``g_guidance``: classifier-free guidance on g
    (:func:`~nfldm.ldm.model.guided_prediction`; only for a level trained with g_drop_prob);
    ``look_guidance``: on the map's look (only for a level trained with ``bev_look``), at the
    steps whose timestep t >= ``look_from`` only (guidance in a limited interval, Kynkaenniemi et
    al. 2024: the look is settled at high noise, and guidance at low noise costs FID).

    ``known`` = (values, mask): entries fixed by replacement (inpainting, Lugmayr et al. 2022
    without resampling): before every step the entries where ``mask`` (broadcast to x) is True
    are overwritten with ``values`` noised to the step's t, q(x_t | x_0) = N(sqrt(abar_t) x_0,
    (1 - abar_t) I); the result holds ``values`` there exactly.

    ``guide`` = (model, its context, w): guidance by another denoiser of the same level and
    parameterisation, ``D_guide + w (D - D_guide)`` (autoguidance, Karras et al. 2024, when the
    guide is a weaker version of the model; classifier-free guidance by a separately trained
    model, Ho & Salimans 2022, when the guide lacks one of the model's conditions). It is given
    the same noisy input and its own context; w = 1 is the model alone.

    ``start`` = (x0, t0): begin at the first sampling step t <= t0 from q(x_t | x0) instead of
    pure noise (SDEdit, Meng et al. 2022; x0 of shape ``model.sample_shape(batch)``): the steps
    above t0 are skipped.

    A self-conditioned level (``self_cond``; also ``low`` or ``guide``) is given the x0 estimate
    that the previous step's (guided) output implies; zeros at the first step.

    ``temperature``: the starting noise x_T (or SDEdit's noise) is drawn with std ``temperature``
    instead of 1, the same draws scaled (a lower-temperature sample, as Glow's, Kingma & Dhariwal
    2018: with DPM-Solver++ or DDIM the ODE from a narrower start; a stochastic sampler's later
    noise is not scaled).

    ``low`` = (model, its context, t1): another denoiser of the same level and parameterisation
    takes the steps whose timestep t < t1 (a hand-over between denoisers by noise level, as
    eDiff-I's expert denoisers, Balaji et al. 2022: e.g. a map-conditioned level sets the layout
    at high noise, an unconditional one the detail at low noise). It is given the condition, the
    guidance and the look guidance only when it was trained on a condition alike (``bev``,
    ``cond_dim``); ``guide`` applies at the other steps only. A level trained at t >= ``train_t_from``
    only (a high-noise expert) needs ``low`` with t1 >= train_t_from."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    check_temperature(temperature)
    t_from = model.cfg.train_t_from      # a high-noise expert never takes the steps below its band
    if t_from > (int(low[2]) if low is not None else 0):
        raise ValueError(f"level {model.cfg.level} was trained at the timesteps t >= {t_from} only (train_t_from): "
                         f"hand its steps below {t_from} to another level (low, or sample_latents' low_noise with "
                         f"low_below >= {t_from}; nfldm sample --hand-over {t_from} or more)")
    dev = next(model.parameters()).device
    sched = make_sampler(model.scheduler, sampler)
    sched.set_timesteps(steps, device=dev)            # before every run: DPM-Solver keeps state
    x = torch.randn(model.sample_shape(batch), generator=generator).to(dev) * (sched.init_noise_sigma * temperature)
    timesteps = sched.timesteps
    if start is not None:
        timesteps = timesteps[timesteps <= int(start[1])]
        if not len(timesteps):
            raise ValueError(f"no sampling step at or below t0 = {start[1]}")
        x = model.scheduler.add_noise(start[0].to(dev, x.dtype), x, timesteps[:1])
    if known is not None:
        values, mask = known[0].to(dev, x.dtype).expand_as(x), known[1].to(dev).expand_as(x)
        fresh = model.scheduler        # the training scheduler's q(x_t | x_0)
    if guide is not None:              # the guide takes the condition only when it was trained on one alike
        same = guide[0].cfg.bev == model.cfg.bev and guide[0].cfg.cond_dim == model.cfg.cond_dim
        guide_cond, guide_guidance = (cond, guidance) if same else (None, 1.0)
    if low is not None:
        alike = low[0].cfg.bev == model.cfg.bev and low[0].cfg.cond_dim == model.cfg.cond_dim
    prev = None                        # the previous step's x0 estimate, for self-conditioned levels
    track = bool(model.self_cond_channels) or any(m is not None and m[0].self_cond_channels for m in (low, guide))
    for t in tqdm(timesteps, desc=desc, disable=not progress, leave=False):
        if known is not None:
            noise = torch.randn(x.shape, generator=generator).to(dev, x.dtype)
            x = torch.where(mask, fresh.add_noise(values, noise, t.reshape(1).to(dev)), x)
        inp = sched.scale_model_input(x, t)
        use_low = low is not None and int(t) < low[2]
        if use_low:
            out = guided_prediction(low[0], inp, t.to(dev), low[0].with_x0_prev(low[1], prev), cond if alike else None,
                                    guidance if alike else 1.0, g_guidance,
                                    look_guidance if alike and int(t) >= look_from else 1.0)
        else:
            out = guided_prediction(model, inp, t.to(dev), model.with_x0_prev(ctx, prev), cond, guidance, g_guidance,
                                    look_guidance if int(t) >= look_from else 1.0)
        if guide is not None and guide[2] != 1.0 and not use_low:
            weak = guided_prediction(guide[0], inp, t.to(dev), guide[0].with_x0_prev(guide[1], prev), guide_cond,
                                     guide_guidance, g_guidance)
            out = weak + guide[2] * (out - weak)
        if track:
            prev = predicted_x0(low[0] if use_low else model, out.float(), inp.float(), t.to(dev)).to(x.dtype)
        if on_step is not None:
            on_step(t, x, out)
        if sampler == "dpm":
            x = sched.step(out, t, x, return_dict=False)[0]
        else:
            x = sched.step(out, t, x, generator=generator, return_dict=False)[0]
    if known is not None:
        x = torch.where(mask, values, x)
    return x


def check_temperature(value: float, name: str = "temperature") -> float:
    """``value`` as a float if it is a usable starting-noise std (:func:`denoise` ``temperature``),
    in (0, 10]; ValueError naming ``name`` otherwise (NaN included)."""
    if not 0 < value <= 10:
        raise ValueError(f"{name} must be in (0, 10], got {value}")
    return float(value)


def _cond_batch(cond: Tensor | None, lo: int, hi: int, dev, per_sample_dims: int = 3) -> Tensor | None:
    """Rows lo..hi of a per-sample condition (``per_sample_dims`` dims), or one shared
    condition repeated."""
    if cond is None:
        return None
    if cond.dim() == per_sample_dims:
        return cond[lo:hi].to(dev)
    return cond[None].expand(hi - lo, *cond.shape).to(dev)


def level_guidance(guidance: float, levels: str) -> dict[str, float]:
    """{level: classifier-free guidance scale}: ``guidance`` at the levels named in ``levels`` (some
    of "gcf"), 1 (unguided) at the others; ValueError for any other string."""
    if not levels or set(levels) - set("gcf"):
        raise ValueError(f"guidance_levels must name some of the levels g, c, f, got {levels!r}")
    return {lv: guidance if lv in levels else 1.0 for lv in "gcf"}


@torch.no_grad()
def sample_latents(models: dict[str, LevelDiffusion], stats: LatentStats, num: int, sampler: str = "ddim",
                   steps: int = 50, seed: int = 0, cond: Tensor | None = None, guidance: float = 1.0,
                   batch_size: int = 8, progress: bool = True, g_guidance: float = 1.0, bev: Tensor | None = None,
                   traj: Tensor | None = None, g: Tensor | None = None, c: Tensor | None = None,
                   guides: dict[str, LevelDiffusion] | None = None, guide_scale: float = 1.0,
                   look_guidance: float = 1.0, look: Tensor | None = None, look_from: int = 0,
                   guidance_levels: str = "gcf", low_noise: dict[str, LevelDiffusion] | None = None,
                   low_below: int = 0, c_from: int = 0, c_temperature: float = 1.0) -> dict:
    """``num`` samples of (g, traj, c, f): g -> c -> f, each level conditioned on the sampled
    coarser latents (paper Sec. 3.3: p(g, c, f) = p(g) p(c | g) p(f | g, c), sampled
    coarse to fine; the camera trajectory is sampled with g). Returns standardised (``g_n``, ``c_n`` folded, ``f_n``) and raw (``g``,
    ``c`` c_ch x X/d x Y/d x Zc, ``f``) latents and the trajectory vectors ``traj``, on the CPU.
    Sample i depends on (seed, batch_size, i). ``models`` holds the levels of an ablation run
    (g, c for coarse-only, whose g level has g_dim 0; g for global-only); the latents it lacks
    are absent from the result.

    ``bev``: the BEV map (4 x S x S for all samples, or num x 4 x S x S) of levels trained with
    ``bev``, with classifier-free guidance scale ``guidance`` at the levels named in ``guidance_levels``
    (of "gcf"; the others take the condition unguided, scale 1). ``traj``: a known camera
    trajectory (9 T, or num x 9 T; :func:`~nfldm.ldm.trajectory.encode_trajectory`): psi_g
    samples g given it by replacement (:func:`denoise` ``known``), and the result's traj is it.
    ``g``: a known raw global latent (g_dim, or num x g_dim; needs ``traj``): psi_g is not run,
    psi_c and psi_f sample given it (e.g. a real scene's own g: what the global latent carries).
    ``c``: with ``g``, a known raw coarse latent (c_ch x X/d x Y/d x Zc, or num x ...): psi_c is not
    run either, psi_f samples given g and c (what psi_f alone costs). With ``c_from`` = t0 > 0, psi_c
    does run, from that c noised to its first sampling step t <= t0 (SDEdit, :func:`denoise`
    ``start``): a variation of the scene that keeps what c holds above t0's noise level (its layout
    and look at t0 = 500-800; a new scene at 1000). Measures which noise band of psi_c costs what.

    ``look_guidance``: guidance on the map's look for levels trained with ``bev_look``, and on
    the scene's look that psi_g samples for levels trained with ``scene_look`` (see
    :func:`~nfldm.ldm.model.guided_prediction`); the result then also holds ``look_n`` and ``look``
    (num x 10, :func:`~nfldm.data.bev.scene_look`). ``look_from``: look guidance only at timesteps
    t >= look_from (:func:`denoise`).

    ``look``: a known scene look (10, or num x 10, raw: :func:`~nfldm.data.bev.scene_look`) for levels
    trained with ``scene_look``: psi_g samples [g, traj] given it (by replacement, as a known
    trajectory), psi_c and psi_f are given it.

    ``guides``: {level: a denoiser of that level} guiding it with scale ``guide_scale`` (see
    :func:`denoise` ``guide``; same latent statistics and prediction type).

    ``low_noise``: {level: a denoiser of that level} that takes the level's steps at timesteps t <
    ``low_below`` (:func:`denoise` ``low``; same latent statistics and prediction type), given its
    own context; e.g. the bundle's unconditional psi_c below a map-conditioned psi_c.

    ``c_temperature``: psi_c starts from noise of that std (:func:`denoise` ``temperature``)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    scale = level_guidance(guidance, guidance_levels)
    if cond is not None:
        if cond.dim() not in (2, 3) or (cond.dim() == 3 and len(cond) != num):
            raise ValueError(f"cond must be L x cond_dim or num x L x cond_dim, got {tuple(cond.shape)}")
    gm, cm, fm = models["g"], models.get("c"), models.get("f")
    if bev is not None:
        if not gm.cfg.bev:
            raise ValueError("a BEV map was given but this run's levels were not trained on maps (bev); sample "
                             "with a run trained with --set bev=true (or the bundle's bev levels)")
        if cond is not None:
            raise ValueError("give either condition tokens (cond) or a BEV map (bev), not both")
        if bev.dim() not in (3, 4) or (bev.dim() == 4 and len(bev) != num):
            raise ValueError(f"bev must be 4 x S x S or num x 4 x S x S, got {tuple(bev.shape)}")
    if traj is not None:
        if traj.shape[-1] != gm.cfg.traj_dim or traj.dim() not in (1, 2) or (traj.dim() == 2 and len(traj) != num):
            raise ValueError(f"traj must be {gm.cfg.traj_dim} or num x {gm.cfg.traj_dim} "
                             f"(encode_trajectory of {gm.cfg.traj_frames} poses), got {tuple(traj.shape)}")
    guides, low_noise = dict(guides or {}), dict(low_noise or {})
    for what, others in (("guide", guides), ("low-noise level", low_noise)):
        for lv, gd in others.items():
            m = models.get(lv)
            if m is None or gd.cfg.prediction_type != m.cfg.prediction_type or tuple(
                    gd.sample_shape(1)) != tuple(m.sample_shape(1)):
                raise ValueError(f"the {what} of level {lv} must denoise the same latents with the same prediction "
                                 "type as the level")
    if look is not None:
        if not gm.cfg.scene_look:
            raise ValueError("a scene look was given but this run's g level was not trained with scene_look")
        if look.shape[-1] != gm.cfg.scene_look_dim or look.dim() not in (1, 2) or (look.dim() == 2 and len(look) != num):
            raise ValueError(f"look must be {gm.cfg.scene_look_dim} or num x {gm.cfg.scene_look_dim}, got "
                             f"{tuple(look.shape)}")
        look_known = gm.normalise_look(look.float().expand(num, gm.cfg.scene_look_dim).cpu())
    dev = next(gm.parameters()).device
    gen = torch.Generator().manual_seed(int(seed))

    def guide_of(lv: str, sampled: dict):
        gd = guides.get(lv)
        return None if gd is None else (gd, gd.context(sampled), float(guide_scale))

    def low_of(lv: str, sampled: dict):
        m = low_noise.get(lv)
        return None if m is None or low_below <= 0 else (m, m.context(sampled), int(low_below))

    g_dim, c_ch = gm.cfg.g_dim, gm.cfg.c_shape[0]
    if g is not None:
        if traj is None or g_dim == 0:
            raise ValueError("a known g needs the trajectory (traj) and levels with a global latent")
        if g.shape[-1] != g_dim or g.dim() not in (1, 2) or (g.dim() == 2 and len(g) != num):
            raise ValueError(f"g must be {g_dim} or num x {g_dim}, got {tuple(g.shape)}")
        g_known = stats.normalise("g", g.float().expand(num, g_dim).cpu())
    if c is not None:
        if g is None or cm is None:
            raise ValueError("a known c needs a known g (g) and levels with a coarse latent")
        c_shape = tuple(cm.cfg.c_shape)
        if tuple(c.shape[-4:]) != c_shape or c.dim() not in (4, 5) or (c.dim() == 5 and len(c) != num):
            raise ValueError(f"c must be {c_shape} or num x {c_shape}, got {tuple(c.shape)}")
        c_known = fold(stats.normalise("c", c.float().expand(num, *c_shape).cpu()))
    if c_from < 0 or c_from > 0 and c is None:
        raise ValueError(f"c_from must be 0 or a timestep > 0 with a known c, got {c_from}")
    has_g = g_dim > 0          # 0: coarse-only, the g level generates the trajectory alone
    keys = [k for k, m in (("g_n", has_g), ("traj", True), ("c_n", cm is not None), ("f_n", fm is not None),
                           ("look_n", bool(gm.cfg.scene_look_dim) and (g is None or look is not None))) if m]
    parts: dict[str, list] = {k: [] for k in keys}
    for lo in range(0, num, batch_size):
        hi = min(num, lo + batch_size)
        B = hi - lo
        cb = _cond_batch(cond, lo, hi, dev) if bev is None else _cond_batch(bev, lo, hi, dev, per_sample_dims=4)
        tag = f"{lo}-{hi - 1}"
        known = None
        T9, L = gm.cfg.traj_dim, gm.cfg.scene_look_dim
        lb = look_known[lo:hi].to(dev) if look is not None else None
        if traj is not None or lb is not None:   # known entries of psi_g's [g, traj(, look)]: the trajectory, the look
            tb = (_cond_batch(traj, lo, hi, dev, per_sample_dims=2).float() if traj is not None
                  else torch.zeros(B, T9, device=dev))
            pos = torch.arange(g_dim + T9 + L, device=dev)
            mask = ((pos >= g_dim) & (pos < g_dim + T9) & (traj is not None)) | ((pos >= g_dim + T9) & (lb is not None))
            known = (torch.cat([torch.zeros(B, g_dim, device=dev), tb,
                                lb if lb is not None else torch.zeros(B, L, device=dev)], 1), mask[None])
        if g is not None:           # psi_g is not needed: g and the trajectory are known
            got = {"g_n": g_known[lo:hi].to(dev), "traj": tb}
            if lb is not None:
                got["look_n"] = lb
        else:
            x = denoise(gm, B, {}, cb, scale["g"], sampler, steps, gen, progress, f"psi_g {tag}", known=known,
                        low=low_of("g", {}))
            got = {"g_n": x[:, :g_dim], "traj": x[:, g_dim:g_dim + T9]}
            if L:                   # the scene's look (scene_look), standardised
                got["look_n"] = x[:, g_dim + T9:]
        # each level picks what it is conditioned on from the sampled coarser latents, as it
        # does from the clean ones in training (LevelDiffusion.context)
        sampled = {"g": got["g_n"], "traj": got["traj"]}
        if "look_n" in got:
            sampled["look"] = gm.denormalise_look(got["look_n"])
        if c is not None and not c_from:
            got["c_n"] = c_known[lo:hi].to(dev)
        elif cm is not None:
            got["c_n"] = denoise(cm, B, cm.context(sampled), cb, scale["c"], sampler, steps, gen, progress,
                                 f"psi_c {tag}", g_guidance=g_guidance, guide=guide_of("c", sampled),
                                 look_guidance=look_guidance, look_from=look_from, low=low_of("c", sampled),
                                 start=(c_known[lo:hi], c_from) if c_from else None, temperature=c_temperature)
        if fm is not None:
            got["f_n"] = denoise(fm, B, fm.context({**sampled, "c": got["c_n"]}), cb, scale["f"], sampler, steps, gen,
                                 progress, f"psi_f {tag}", g_guidance=g_guidance,
                                 guide=guide_of("f", {**sampled, "c": got["c_n"]}), look_guidance=look_guidance,
                                 look_from=look_from, low=low_of("f", {**sampled, "c": got["c_n"]}))
        for k in keys:
            parts[k].append(got[k].float().cpu())
    out = {k: torch.cat(v) for k, v in parts.items()}
    if has_g:
        out["g"] = stats.denormalise("g", out["g_n"])
    if "look_n" in out:
        out["look"] = gm.denormalise_look(out["look_n"])
    if cm is not None:
        out["c"] = stats.denormalise("c", unfold_c(out["c_n"], c_ch))
    if fm is not None:
        out["f"] = stats.denormalise("f", out["f_n"])
    for k, v in out.items():
        if not bool(torch.isfinite(v).all()):
            raise RuntimeError(f"sampling produced NaN / inf values in {k}")
    return out


def render_path(traj: Tensor, bounds: Tensor, num_frames: int, margin: float = 0.02) -> tuple[Tensor, Tensor]:
    """A sampled trajectory vector (9 T) -> (keyframes T x 4 x 4, path num_frames x 4 x 4)
    in the world units of ``bounds`` (2 x 3): keyframe positions clamped to the box shrunk by
    ``margin`` x its size per side, a Catmull-Rom path through them, clamped again (the spline
    may overshoot). A position slightly outside the box would look at the grid from outside."""
    m = margin * (bounds[1] - bounds[0])
    lo, hi = bounds[0] + m, bounds[1] - m
    keys = decode_trajectory(traj.double(), bounds.double()).float()
    keys[:, :3, 3] = torch.maximum(torch.minimum(keys[:, :3, 3], hi), lo)
    path = interpolate_path(keys, num_frames)
    path[:, :3, 3] = torch.maximum(torch.minimum(path[:, :3, 3], hi), lo)
    return keys, path
