"""``nfldm quickstart``: collect -> stage 1 -> stage 2 -> stage 3 -> samples -> report, resumable.

Layout of the output folder OUT::

    OUT/quickstart.json     the QuickstartConfig (a rerun with another config is refused)
    OUT/state.json          finished stages: seconds, peak memory, results, training budgets
    OUT/data/               the ViZDoom dataset (written to data.partial, then renamed)
    OUT/contact_sheet.png
    OUT/scene_ae/           stage-1 run (+ metrics_test.json, metrics_test_views.png, flythrough.gif)
    OUT/voxels/             V of every scene
    OUT/latent_ae/          stage-2 run (+ metrics_test.json, metrics_test_views.png)
    OUT/latents/            (g, c, f) + trajectory of every scene
    OUT/ldm/{g,c,f}/        stage-3 runs
    OUT/renderer/           optional: stage 1's renderer fine-tuned on decoded latents (+ metrics_test.json)
    OUT/latents_augN/       optional (bev_augment N): the latents and the train scenes turned, for bev_ldm
    OUT/bev_ldm/{g,c,f}/    optional: the BEV-map-conditioned levels
    OUT/image_prior/        optional: the image prior of nfldm refine
    OUT/samples/            generated scenes (+ metrics.json; rendered by OUT/renderer when trained)
    OUT/bundle/             the fp16 pretrained bundle (what ships with the package; with renderer/,
                            bev/ and image_prior/ when those stages ran)
    OUT/report/             pictures made for the report
    OUT/report.html

Every stage is idempotent: a killed run (even SIGKILL) continues, on the same command, from
the last finished stage, and the trainings from their last checkpoint (the trainer's exact
resume, with training time counted over resumes).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import time
from pathlib import Path

from nfldm.data.check import check_path
from nfldm.data.format import DataError
from nfldm.data.preview import contact_sheet
from nfldm.latent_ae.latents import encode_latents
from nfldm.latent_ae.train import eval_latent_ae, train_latent_ae
from nfldm.ldm.evaluate import eval_generation
from nfldm.ldm.train import train_ldm
from nfldm.pipeline.bundle import add_image_prior, add_levels, add_renderer, export_bundle
from nfldm.pipeline.generate import sample
from nfldm.pipeline.quickstart.card import card_metrics, extra_metrics, stage_seconds, time_by_machine
from nfldm.pipeline.quickstart.config import (STAGES, stages_reading, TRAIN_STAGES, QuickstartConfig, stage_list,
                                              train_stage_shares)
from nfldm.pipeline.quickstart.report import write_report
from nfldm.scene_ae.train import eval_scene_ae, render_flythrough, train_scene_ae
from nfldm.scene_ae.voxels import encode_voxels
from nfldm.utils.io import atomic_write_json

CONFIG_FILE = "quickstart.json"
STATE_FILE = "state.json"
FORMAT = "nfldm-quickstart"

# share of the estimated non-training time each non-training stage takes (for the plan)
FIXED_WEIGHTS = {"collect": 0.15, "check": 0.02, "eval_scene_ae": 0.06, "encode_voxels": 0.35,
                 "eval_latent_ae": 0.08, "encode_latents": 0.12, "sample": 0.1, "eval_generation": 0.06,
                 "bundle": 0.02, "report": 0.04}


class QuickstartError(ValueError):
    """A quickstart folder that cannot be used (other config, not a quickstart folder)."""


def _normalise(d):
    return json.loads(json.dumps(d))


def _peak_rss_mb() -> float:
    """Peak resident memory of this process and its finished children, MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024.0


def machine_label(device: str) -> str:
    """What a stage ran on, for the model card: "cuda (NVIDIA H200)" or "cpu (2 cores)"."""
    import torch

    from nfldm.trainer import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    return f"{dev.type} ({len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} cores)"


def check_stage_configs(cfg: QuickstartConfig) -> None:
    """Build every training stage's config (its preset, then the quickstart's overrides) the way
    the stage will, so that a bad width or option fails when the run starts, not hours later when
    its stage begins. The shapes the data sets later (grids, latent shapes) keep the presets'
    values. ValueError naming the stage and the problem."""
    from dataclasses import asdict

    from nfldm.config import apply_overrides
    from nfldm.latent_ae.config import preset as lae_preset
    from nfldm.ldm.train import level_configs
    from nfldm.refine.config import preset as prior_preset
    from nfldm.scene_ae.config import preset as sae_preset

    checks = [("scene_ae", sae_preset, cfg.scene_ae_preset, cfg.scene_ae_set),
              ("latent_ae", lae_preset, cfg.latent_ae_preset, cfg.latent_ae_set)]
    if "renderer" in cfg.extras:
        checks.append(("renderer", sae_preset, cfg.scene_ae_preset,
                       {**cfg.renderer_set, "train_parts": "render", "render_from": "latents", "latents": "LATENTS"}))
    if "image_prior" in cfg.extras:
        checks.append(("image_prior", prior_preset, cfg.image_prior_preset, cfg.image_prior_set))
    for stage, get, name, sets in checks:
        try:
            p = get(name)
            apply_overrides(p.model, p.train, sets, stage)
            type(p.model)(**asdict(p.model))          # the config's own checks, after the overrides
            p.train.__post_init__()
        except (TypeError, ValueError) as e:
            raise ValueError(f"stage {stage}: {e}") from None
    g_dim = lae_preset(cfg.latent_ae_preset).model.g_dim
    ldm_sets = [("ldm", cfg.ldm_set)]
    if "bev_ldm" in cfg.extras:
        ldm_sets.append(("bev_ldm", {**cfg.ldm_set, **cfg.bev_ldm_set, "bev": True}))
    for stage, sets in ldm_sets:
        for lv in "gcf":
            try:
                level_configs({"shapes": {"g": [g_dim]}}, cfg.ldm_preset, lv, progress=False, device="cpu",
                              overrides=sets)
            except (TypeError, ValueError) as e:
                raise ValueError(f"stage {stage}: {e}") from None


def _read_stored_config(cfg_path: Path) -> dict:
    """OUT/quickstart.json; QuickstartError when unreadable or not a quickstart config."""
    try:
        stored = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise QuickstartError(f"{cfg_path}: unreadable quickstart config ({e})") from e
    if not isinstance(stored, dict) or stored.get("format") != FORMAT:
        raise QuickstartError(f"{cfg_path}: not a quickstart config")
    return stored


def _config_diff(old: dict, new: dict) -> list[str]:
    """The config fields whose values differ (sorted)."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def open_run_dir(out: Path, cfg: QuickstartConfig, preset_name: str) -> dict:
    """Create OUT (or check that it was made with this config); return the state. QuickstartError
    when a stage's config would be refused (:func:`check_stage_configs`)."""
    try:
        check_stage_configs(cfg)
    except ValueError as e:
        raise QuickstartError(f"{out}: {e}") from None
    want = {"format": FORMAT, "version": 1, "preset": preset_name, "config": _normalise(cfg.to_dict())}
    cfg_path = out / CONFIG_FILE
    if cfg_path.exists():
        stored = _read_stored_config(cfg_path)
        old = stored.get("config", {})
        diff = _config_diff(old, want["config"])
        state = _load_state(out)
        started = set(state["stages"]) | set(state["budgets"])     # finished, or trainings begun
        # a change is taken when no stage reading the changed fields has started (FIELD_STAGES):
        # a long run's later stages can still be re-planned (widths, budgets, samples)
        blocked = [k for k in diff if stages_reading(k, old.get(k), want["config"].get(k)) & started]
        if blocked or stored.get("preset") != preset_name:
            what = ", ".join(f"{k}: {old.get(k)!r} there, {want['config'].get(k)!r} now" for k in blocked[:4])
            if stored.get("preset") != preset_name:
                what = f"preset: {stored.get('preset')!r} there, {preset_name!r} now" + (f"; {what}" if what else "")
            raise QuickstartError(f"{out}: this folder holds a quickstart run made with another config "
                                  f"({what}) read by stages that have started; rerun with the same options, "
                                  "or choose another --out")
        if diff:
            atomic_write_json(cfg_path, want)
            state.setdefault("config_changes", []).append(
                {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "changed": {k: [old.get(k), want["config"].get(k)]
                                                                         for k in diff}})
            atomic_write_json(out / STATE_FILE, state)
        return state
    if out.exists() and any(out.iterdir()):
        raise QuickstartError(f"{out}: the folder exists, is not empty and is not a quickstart run "
                              f"(no {CONFIG_FILE}); choose a new or empty --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg_path, want)
    return _load_state(out)


def _load_state(out: Path) -> dict:
    """OUT/state.json with its lists in place ({} when absent); QuickstartError when unreadable."""
    state_path = out / STATE_FILE
    if state_path.exists():
        try:
            state = json.loads(state_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise QuickstartError(f"{state_path}: unreadable quickstart state ({e}); delete it to redo "
                                  "every stage (finished trainings resume from their checkpoints)") from e
    else:
        state = {}
    state.setdefault("stages", {})
    state.setdefault("budgets", {})
    state.setdefault("sessions", [])
    return state


def status(out: str | os.PathLike, curves: str | os.PathLike | None = None) -> str:
    """What a quickstart folder has done and is doing, as text: every stage of its config with its
    time (finished), or for the training under way its step, planned steps, training minutes used of
    its budget and its held-out measurements (best, and at which step); the config changes taken.
    ``curves``: also draw the training under way's loss curves (train and held-out) to this PNG.
    Reads only; QuickstartError for a folder that is no quickstart run."""
    from nfldm.pipeline.quickstart.config import config_from_dict
    from nfldm.utils.plot import plot_metrics, read_metrics

    out = Path(out)
    try:
        stored = json.loads((out / CONFIG_FILE).read_text())
        cfg = config_from_dict(stored["config"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise QuickstartError(f"{out / CONFIG_FILE}: not a readable quickstart run ({e})") from None
    state = _load_state(out)
    done, budgets = state.get("stages", {}), state.get("budgets", {})
    lines = [f"{out} ({stored.get('preset')}): {cfg.scenes} scenes, budget {cfg.budget_minutes:g} min; "
             f"{sum(stage_seconds(v) for v in done.values()) / 60:.1f} min of finished stages"]
    for name, what in stage_list(cfg):
        if name in done:      # a training's time over all its sessions and processes (--only), as the card's
            lines.append(f"  done     {name:16s} {stage_seconds(done[name]) / 60:7.1f} min  ({done[name].get('finished', '')})")
        elif name in budgets:
            unit = "min" if cfg.budget_by == "minutes" else "min planned (the steps they give end it)"
            lines.append(f"  running  {name:16s} budget {budgets[name]:.1f} {unit}")
            for run in _runs_of(out, name):
                lines.append("           " + _run_progress(run))
                if curves is not None and (run / "metrics.jsonl").exists() and read_metrics(run / "metrics.jsonl"):
                    plot_metrics(run / "metrics.jsonl", curves)
        else:
            lines.append(f"  to do    {name:16s} {what}")
    for ch in state.get("config_changes", []):
        lines.append(f"  config change {ch.get('time')}: {', '.join(ch.get('changed', {}))}")
    return "\n".join(lines)


def _runs_of(out: Path, stage: str) -> list[Path]:
    """The trainer run folders of a training stage (the ldm stages: one per level)."""
    base = out / stage
    if (base / "config.json").exists() or (base / "checkpoint.json").exists():
        return [base]
    return [base / lv for lv in "gcf" if (base / lv / "config.json").exists()]


def _run_progress(run: Path) -> str:
    """One line: the run's step of its planned steps, training minutes, last loss, held-out best."""
    from nfldm.utils.plot import read_metrics

    try:
        planned = json.loads((run / "config.json").read_text())["train"]
    except (OSError, json.JSONDecodeError, KeyError):
        return f"{run.name}: not started"
    recs = read_metrics(run / "metrics.jsonl") if (run / "metrics.jsonl").exists() else []
    train = [r for r in recs if "loss" in r]
    held = [r for r in recs if "val_loss" in r]
    if not train:
        return f"{run.name}: step 0 of {planned.get('steps')}"
    last = train[-1]
    cap = planned.get("max_minutes", 0)
    used = f"{last.get('time', 0) / 60:.1f} of {cap:.1f} min" if cap else f"{last.get('time', 0) / 60:.1f} min"
    text = (f"{run.name}: step {last['step']} of {planned.get('steps')}, {used}, loss {last['loss']:.4g}, {last.get('steps_per_s', 0) * 60:.0f} steps/min")
    if held:
        h = held[-1]
        text += (f"; held-out {h['val_loss']:.4g} (best {h['val_best']:.4g} at step {h['val_best_step']}, "
                 f"{len(held)} measurements)")
    return text


def fixed_estimate_s(cfg: QuickstartConfig) -> float:
    """Estimated seconds of all the non-training stages together."""
    return _shared_estimate_s(cfg) + cfg.inception_seconds


def _shared_estimate_s(cfg: QuickstartConfig) -> float:
    """The part of :func:`fixed_estimate_s` shared among the non-training stages by FIXED_WEIGHTS
    (the Inception features are reserved for eval_generation alone)."""
    return cfg.fixed_seconds + cfg.seconds_per_scene * cfg.scenes


def _fixed_left_s(cfg: QuickstartConfig, done: dict) -> float:
    """Estimated seconds of the non-training stages not done yet."""
    left = _shared_estimate_s(cfg) * sum(w for k, w in FIXED_WEIGHTS.items() if k not in done)
    return left + (cfg.inception_seconds if "eval_generation" not in done else 0.0)


def train_minutes(cfg: QuickstartConfig, stage: str, state: dict) -> float:
    """Minutes of training for ``stage``: what is left of the budget after the finished stages
    and the estimate of the remaining non-training stages, shared among the remaining trainings
    (cfg.budget_by "minutes"); its minutes in :func:`plan`, whatever the stages before took
    ("steps": the plan is the recipe)."""
    if cfg.budget_by == "steps":
        return next(m for name, _, m in plan(cfg) if name == stage)
    done = state["stages"]
    spent = sum(s["seconds"] for s in done.values())
    fixed_left = _fixed_left_s(cfg, done)
    shares = train_stage_shares(cfg)
    left = [k for k in shares if k not in done]
    minutes = (cfg.budget_minutes * 60.0 - spent - fixed_left) / 60.0 * shares[stage] / sum(shares[k] for k in left)
    return max(minutes, 0.25)


def plan(cfg: QuickstartConfig) -> list[tuple[str, str, float]]:
    """(stage, what, budgeted minutes) of every stage ``cfg`` runs, before anything runs."""
    fixed = fixed_estimate_s(cfg)
    train_total = max(cfg.budget_minutes * 60.0 - fixed, 60.0) / 60.0
    shares = train_stage_shares(cfg)
    total_share = sum(shares.values())
    rows = []
    for name, what in stage_list(cfg):
        if name in TRAIN_STAGES:
            rows.append((name, what, train_total * shares[name] / total_share))
        else:
            extra = cfg.inception_seconds if name == "eval_generation" else 0.0
            rows.append((name, what, (_shared_estimate_s(cfg) * FIXED_WEIGHTS[name] + extra) / 60.0))
    return rows


def _cap(cfg: QuickstartConfig, minutes: float) -> float:
    """A training's max_minutes: its budget (budget_by "minutes"), or 0, no wall-clock cap ("steps")."""
    return minutes if cfg.budget_by == "minutes" else 0.0


def _steps(cfg: QuickstartConfig, k: int, minutes: float, rates: tuple | None = None) -> int:
    """Steps of a training of ``minutes`` at ``rates[k]`` steps per minute (cfg.steps_per_minute)."""
    return max(cfg.min_steps, int(round((rates or cfg.steps_per_minute)[k] * minutes)))


def _level_plan(cfg: QuickstartConfig, minutes: float, rates: tuple, sets: dict) -> dict:
    """Share an ldm stage's ``minutes`` among its levels (cfg.ldm_level_shares) and set each
    level's max_minutes and steps (``rates``: g, c, f steps per minute) in ``sets``."""
    total = sum(cfg.ldm_level_shares)
    plan_levels = {}
    for k, lv in enumerate("gcf"):
        m = minutes * cfg.ldm_level_shares[k] / total
        steps = _steps(cfg, k, m, rates)
        sets[f"{lv}.max_minutes"], sets[f"{lv}.steps"] = _cap(cfg, m), steps
        plan_levels[lv] = {"steps": steps, "max_minutes": _cap(cfg, m)}
    return plan_levels


# ---------------------------------------------------------------------------------- stages


def _stage_collect(out: Path, cfg: QuickstartConfig, ctx: dict) -> dict:
    from nfldm.data.vizdoom import VizdoomConfig, collect_dataset

    data = out / "data"
    if (data / "dataset.json").exists():
        return {"scenes": len(json.loads((data / "dataset.json").read_text())["scenes"]), "resumed": True}
    tmp = out / "data.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    vcfg = VizdoomConfig(scenes=cfg.scenes, frames=cfg.frames, resolution=cfg.resolution, seed=cfg.seed)
    summary = collect_dataset(vcfg, tmp, progress=ctx["progress"], workers=ctx.get("workers", 1))
    # the dataset records absolute paths nowhere; a rename keeps it valid
    os.replace(tmp, data)
    return {"scenes": summary["scenes"]}


def _stage_check(out: Path, cfg: QuickstartConfig, ctx: dict) -> dict:

    problems = check_path(out / "data")
    if problems:
        raise DataError(f"{out / 'data'}: the collected dataset has {len(problems)} problem(s), first: "
                        f"{problems[0]}")
    contact_sheet(out / "data", out / "contact_sheet.png", max_scenes=8, frames_per_scene=6)
    return {"problems": 0}


def _train(fn, k: int, data: Path, run: Path, preset_name: str, sets: dict, cfg: QuickstartConfig, ctx: dict) -> dict:
    """One budgeted, resumable training: ``fn`` is train_scene_ae or train_latent_ae; ``k``
    indexes cfg.steps_per_minute."""
    minutes = ctx["budget"]
    steps = _steps(cfg, k, minutes)
    res = fn(data, run, preset_name, steps=steps, resume=True, device=ctx["device"], progress=ctx["progress"],
             overrides={**sets, "max_minutes": _cap(cfg, minutes)})
    return {"steps": steps, "max_minutes": _cap(cfg, minutes), "last": res}


def _stage_scene_ae(out: Path, cfg: QuickstartConfig, ctx: dict) -> dict:

    return _train(train_scene_ae, 0, out / "data", out / "scene_ae", cfg.scene_ae_preset, cfg.scene_ae_set, cfg, ctx)


def _stage_eval_scene_ae(out: Path, cfg: QuickstartConfig, ctx: dict) -> dict:

    run = out / "scene_ae"
    res = eval_scene_ae(run, out / "data", "test", run / "metrics_test.json", device=ctx["device"],
                        max_scenes=cfg.eval_max_scenes or None, progress=ctx["progress"])
    fly = render_flythrough(run, out / "data", None, run / "flythrough.gif", split="test", num_frames=48, fps=12,
                            scale=2, device=ctx["device"])
    return {"metrics": {k: v for k, v in res.items() if k in ("model", "nearest_frame", "mean_colour")},
            "flythrough": str(Path(fly["video"]).relative_to(out))}


def _stage_encode_voxels(out: Path, cfg: QuickstartConfig, ctx: dict) -> dict:

    res = encode_voxels(out / "scene_ae", out / "data", out / "voxels", device=ctx["device"],
                        progress=ctx["progress"])
    return {"scenes": res["scenes"]}


def _stage_latent_ae(out: Path, cfg: QuickstartConfig, ctx: dict) -> dict:

    return _train(train_latent_ae, 1, out / "voxels", out / "latent_ae", cfg.latent_ae_preset, cfg.latent_ae_set,
                  cfg, ctx)


def _stage_eval_latent_ae(out: Path, cfg: QuickstartConfig, ctx: dict) -> dict:

    run = out / "latent_ae"
    res = eval_latent_ae(run, out / "voxels", split="test", out=run / "metrics_test.json", device=ctx["device"],
                         max_scenes=cfg.eval_max_scenes or None, progress=ctx["progress"])
    return {"metrics": res}


def _stage_encode_latents(out: Path, cfg: QuickstartConfig, ctx: dict) -> dict:

    res = encode_latents(out / "latent_ae", out / "voxels", out / "latents", device=ctx["device"],
                         progress=ctx["progress"])
    return {"scenes": res["scenes"]}


def _stage_ldm(out: Path, cfg: QuickstartConfig, ctx: dict) -> dict:

    sets = dict(cfg.ldm_set)
    plan_levels = _level_plan(cfg, ctx["budget"], cfg.steps_per_minute[2:5], sets)
    res = train_ldm(out / "latents", out / "ldm", "all", cfg.ldm_preset, resume=True, device=ctx["device"],
                    progress=ctx["progress"], overrides=sets)
    return {"levels": plan_levels, "last": res}


# the optional stages (cfg.extras); each is a budgeted, resumable training like the ones above


def _stage_renderer(out: Path, cfg: QuickstartConfig, ctx: dict) -> dict:
    """Stage 1's renderer fine-tuned, its lift frozen, on V decoded by stage 2 from the latents
    (docs/scene-ae.md "Sharper views"), then evaluated on the held-out test views."""
    from nfldm.pipeline.renderer import train_scene_ae as train_renderer

    minutes = ctx["budget"]
    steps = _steps(cfg, 0, minutes, cfg.extra_steps_per_minute)
    sets = {**cfg.renderer_set, "train_parts": "render", "render_from": "latents", "latents": str(out / "latents"),
            "max_minutes": _cap(cfg, minutes)}
    res = train_renderer(out / "data", out / "renderer", cfg.scene_ae_preset, steps=steps, resume=True,
                         device=ctx["device"], progress=ctx["progress"], overrides=sets, init_from=out / "scene_ae")
    run = out / "renderer"
    ev = eval_scene_ae(run, out / "data", "test", run / "metrics_test.json", device=ctx["device"],
                       max_scenes=cfg.eval_max_scenes or None, progress=ctx["progress"])
    return {"steps": steps, "max_minutes": _cap(cfg, minutes), "last": res,
            "metrics": {k: v for k, v in ev.items() if k in ("model", "nearest_frame", "mean_colour")}}


def _stage_bev_ldm(out: Path, cfg: QuickstartConfig, ctx: dict) -> dict:
    """psi_g, psi_c, psi_f conditioned on the BEV map (``bev=true``), on the same latents (the
    collector gives every scene a map and encode_latents stores it with the latents), with the
    ldm stage's preset and overrides, then bev_ldm_set; from the unconditional levels with
    cfg.bev_from_ldm. With cfg.bev_augment N > 1, on OUT/latents_augN instead: the latents and every
    train scene turned (and with 8 mirrored) and encoded again, with OUT/latents' statistics
    (resumable: the scenes already encoded are skipped)."""
    sets = {**cfg.ldm_set, **cfg.bev_ldm_set, "bev": True}
    latents, record = out / "latents", {}
    if cfg.bev_augment > 1:
        latents = out / f"latents_aug{cfg.bev_augment}"
        enc = encode_latents(out / "latent_ae", out / "voxels", latents, device=ctx["device"], progress=ctx["progress"],
                             augment=cfg.bev_augment, stats_from=out / "latents")
        record = {"latents": latents.name, "augment": cfg.bev_augment, "scenes": enc["scenes"]}
    plan_levels = _level_plan(cfg, ctx["budget"], cfg.extra_steps_per_minute[1:4], sets)
    res = train_ldm(latents, out / "bev_ldm", "all", cfg.ldm_preset, resume=True, device=ctx["device"],
                    progress=ctx["progress"], overrides=sets, init_from=out / "ldm" if cfg.bev_from_ldm else None)
    return {"levels": plan_levels, "last": res, **record}


def _stage_image_prior(out: Path, cfg: QuickstartConfig, ctx: dict) -> dict:
    """The image prior of post-optimisation (``nfldm train image-prior``) on the train frames, and
    on the frames of cfg.image_prior_renders scenes sampled from the trained ldm (OUT/prior_renders,
    sampled once, kept; seed cfg.seed + 1, apart from the `sample` stage's scenes)."""
    from nfldm.refine.train import train_image_prior

    minutes = ctx["budget"]
    steps = _steps(cfg, 4, minutes, cfg.extra_steps_per_minute)
    renders = None
    if cfg.image_prior_renders:
        _sample_once(out, "prior_renders", cfg, ctx, cfg.image_prior_renders, cfg.seed + 1, cfg.frames)
        renders = [out / "prior_renders"]
    res = train_image_prior(out / "data", out / "image_prior", cfg.image_prior_preset, steps=steps, resume=True,
                            device=ctx["device"], progress=ctx["progress"],
                            overrides={**cfg.image_prior_set, "max_minutes": _cap(cfg, minutes)}, renders=renders)
    return {"steps": steps, "max_minutes": _cap(cfg, minutes), "last": res,
            **({"render_scenes": cfg.image_prior_renders} if renders else {})}


def _sample_once(out: Path, name: str, cfg: QuickstartConfig, ctx: dict, num: int, seed: int,
                 num_frames: int) -> dict | None:
    """``num`` scenes of the trained ldm into OUT/name (written as OUT/name.partial, then renamed),
    rendered by the fine-tuned renderer when the config trains one; None when OUT/name is already
    complete, else sample's summary."""
    dest = out / name
    if (dest / "samples.json").exists():
        return None
    tmp = out / f"{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    renderer = out / "renderer" if "renderer" in cfg.extras else None     # trained by then (stage order)
    res = sample(out / "ldm", num=num, sampler=cfg.sampler, steps=cfg.sampler_steps, seed=seed, out=tmp,
                 device=ctx["device"], progress=ctx["progress"], num_frames=num_frames, fps=12, renderer=renderer)
    os.replace(tmp, dest)
    return res


def _stage_sample(out: Path, cfg: QuickstartConfig, ctx: dict) -> dict:

    t0 = time.perf_counter()
    res = _sample_once(out, "samples", cfg, ctx, cfg.num_samples, cfg.seed, cfg.sample_frames)
    if res is None:
        return {"num": json.loads((out / "samples" / "samples.json").read_text())["num"], "resumed": True}
    return {"num": res["num"], "seconds_per_scene": (time.perf_counter() - t0) / res["num"]}


def _stage_eval_generation(out: Path, cfg: QuickstartConfig, ctx: dict) -> dict:

    res = eval_generation(out / "samples", out / "data", split="test", out=out / "samples" / "metrics.json",
                          device=ctx["device"], progress=ctx["progress"])
    return {"metrics": res}


def _stage_bundle(out: Path, cfg: QuickstartConfig, ctx: dict) -> dict:

    metrics = card_metrics(ctx["state"])
    info = export_bundle(out / "ldm", out / "bundle", int8_levels=cfg.bundle_int8,
                         card={"command": ctx.get("command", ""), "quickstart_config": cfg.to_dict(),
                               "data": f"{cfg.scenes} ViZDoom scenes x {cfg.frames} frames at {cfg.resolution}^2, "
                                       f"seed {cfg.seed} (nfldm data vizdoom)", "metrics": metrics,
                               "time": f"{time_by_machine(ctx['state'])} of stage time before the export (budget "
                                       f"{cfg.budget_minutes:g} min), peak memory {_peak_rss_mb() / 1024:.2f} GiB",
                               "commands": sorted({s["command"] for s in ctx["state"]["sessions"] if s.get("command")})})
    # the optional stages' networks; trained on the float32 runs the bundle was exported from,
    # which add_renderer / add_levels accept (rounded to float16 they are the bundle's stages)
    extra = extra_metrics(ctx["state"])
    if "renderer" in cfg.extras:
        info = add_renderer(out / "bundle", out / "renderer", extra.get("renderer"))
    if "bev_ldm" in cfg.extras:
        info = add_levels(out / "bundle", out / "bev_ldm", card=extra.get("bev_ldm"), int8_levels=cfg.bundle_int8)
    if "image_prior" in cfg.extras:
        info = add_image_prior(out / "bundle", out / "image_prior", extra.get("image_prior"))
    res = {"bytes": info["bytes"], "params": info["params"]}
    if cfg.extras:
        res["bytes_with_extras"] = sum(f.stat().st_size for f in (out / "bundle").rglob("*.safetensors"))
        res["parts"] = [p for p in ("renderer", "bev", "image_prior") if (out / "bundle" / p).is_dir()]
    return res


def _stage_report(out: Path, cfg: QuickstartConfig, ctx: dict) -> dict:

    path = write_report(out, ctx["state"])
    return {"report": str(path.relative_to(out))}


RUNNERS = {name: globals()[f"_stage_{name}"] for name, _ in STAGES}


#: what each optional training reads: the stage that must have finished before it can run alone
ONLY_NEEDS = {"renderer": "encode_latents", "bev_ldm": "encode_latents", "image_prior": "check"}


def train_stage_alone(out: str | os.PathLike, cfg: QuickstartConfig, preset_name: str, stage: str,
                      device: str = "auto", progress: bool = True, log=print) -> dict:
    """Train one optional stage (renderer, bev_ldm, image_prior) of the quickstart run in OUT now,
    in this process, beside the run's own process (``nfldm quickstart --only STAGE``): on a machine
    with more cores than one training uses, the trainings that do not read each other run at once.
    Exactly the stage's own training (the recipe's steps and options), written where the stage
    writes it; OUT/state.json is left to the main process, which finds the training finished when
    it reaches the stage (each trainer locks its folder: the two never train one run at once).
    Needs a recipe budgeted by steps (the release's): a budget in minutes depends on the order
    the stages ran in. Returns the stage's result; QuickstartError for an unusable OUT."""
    out = Path(out).resolve()
    if stage not in ONLY_NEEDS:
        raise QuickstartError(f"--only takes one of {sorted(ONLY_NEEDS)}, not {stage!r}")
    if stage not in cfg.extras:
        raise QuickstartError(f"{out}: the config does not train {stage} (extras: {', '.join(cfg.extras) or 'none'})")
    if cfg.budget_by != "steps":
        raise QuickstartError(f"{out}: --only needs a recipe budgeted by steps (budget_by=steps, as the release "
                              f"preset); this one is budgeted by {cfg.budget_by!r}, whose stage budgets depend on "
                              "the order the stages ran in")
    cfg_path = out / CONFIG_FILE
    if not cfg_path.exists():
        raise QuickstartError(f"{out}: not a quickstart run (no {CONFIG_FILE}); start it with nfldm quickstart first")
    stored = _read_stored_config(cfg_path)
    diff = _config_diff(stored.get("config", {}), _normalise(cfg.to_dict()))
    if diff or stored.get("preset") != preset_name:
        raise QuickstartError(f"{cfg_path}: the run was made with other options ({', '.join(diff[:4]) or 'preset'}"
                              "); pass the run's own --preset and --set options")
    state = _load_state(out)
    if stage in state["stages"]:
        log(f"{stage}: already finished in {out}")
        return state["stages"][stage]["result"]
    need = ONLY_NEEDS[stage]
    if need not in state["stages"]:
        raise QuickstartError(f"{out}: {stage} reads what {need} writes, and {need} has not finished yet")
    budget = state["budgets"].get(stage, train_minutes(cfg, stage, state))
    log(f"{stage} of {out} alone ({budget:.1f} min of training in the recipe); the run's own process "
        "records it when it reaches the stage")
    ctx = {"device": device, "progress": progress, "state": state, "command": "", "workers": 1, "budget": budget}
    return RUNNERS[stage](out, cfg, ctx)


def quickstart(out: str | os.PathLike, cfg: QuickstartConfig, preset_name: str = "default", device: str = "auto",
               progress: bool = True, log=print, command: str = "", workers: int = 1) -> dict:
    """Run every unfinished stage of the quickstart in OUT; return the state (also in
    OUT/state.json). Raises QuickstartError for an unusable OUT; stage errors propagate.
    ``workers``: processes that collect the dataset (like ``device``, not part of the recipe)."""
    out = Path(out).resolve()
    state = open_run_dir(out, cfg, preset_name)
    machine = machine_label(device)
    state["sessions"].append({"started": time.strftime("%Y-%m-%d %H:%M:%S"), "device": device, "machine": machine,
                              "command": command})
    atomic_write_json(out / STATE_FILE, state)
    rows = plan(cfg)               # the stages this config runs (stage_list), in order
    done = state["stages"]
    log(f"nfldm quickstart ({preset_name}): {cfg.scenes} ViZDoom scenes of {cfg.frames} frames at "
        f"{cfg.resolution}^2, budget {cfg.budget_minutes:g} min, output {out}")
    for k, (name, what, minutes) in enumerate(rows):
        mark = "done" if name in done else f"~{minutes:5.1f} min"
        log(f"  [{k + 1:2d}/{len(rows)}] {name:16s} {mark:>10s}  {what}")
    t_all = time.perf_counter()
    for k, (name, what, _) in enumerate(rows):
        if name in done:
            continue
        ctx = {"device": device, "progress": progress, "state": state, "command": command, "workers": workers}
        if name in TRAIN_STAGES:
            if name not in state["budgets"]:
                state["budgets"][name] = train_minutes(cfg, name, state)
                atomic_write_json(out / STATE_FILE, state)
            ctx["budget"] = state["budgets"][name]
            log(f"[{k + 1}/{len(rows)}] {name}: {what} ({ctx['budget']:.1f} min of training)")
        else:
            log(f"[{k + 1}/{len(rows)}] {name}: {what}")
        t0 = time.perf_counter()
        result = RUNNERS[name](out, cfg, ctx)
        seconds = time.perf_counter() - t0
        state["stages"][name] = {"seconds": seconds, "peak_rss_mb": _peak_rss_mb(), "result": result,
                                 "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine}
        atomic_write_json(out / STATE_FILE, state)
        log(f"      {name} finished in {seconds / 60:.1f} min (peak memory so far {_peak_rss_mb() / 1024:.2f} GiB)")
    total = sum(s["seconds"] for s in state["stages"].values())
    log(f"quickstart finished: {total / 60:.1f} min of stage time in all "
        f"({(time.perf_counter() - t_all) / 60:.1f} min in this session); report: {out / 'report.html'}")
    return state

