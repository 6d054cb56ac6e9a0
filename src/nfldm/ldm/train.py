"""Stage 3 entry points: train the three diffusion models, load them for sampling.

    train_ldm   LATDIR -> RUN/g, RUN/c, RUN/f (one shared-trainer run per level)
    load_ldm    RUN -> the three LevelDiffusion models (EMA weights) + what sampling needs

The levels follow the latent folder's mode (docs/ldm.md "Ablations"): g, c, f for the full
hierarchy; g (trajectory only) and c for coarse-only; g alone for global-only.

Each level's run config records the latent folder, the latent-ae and scene-ae runs that made
it (path, config hash, weights hash), the latent statistics, and the box / intrinsics that
generated scenes are rendered with; so sampling needs only RUN.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.distributed as dist

from nfldm.data.format import DataError
from nfldm.config import apply_overrides
from nfldm.latent_ae.latents import latent_mode, read_latent_index
from nfldm.ldm.config import (FIXED_BY_LATENTS, LEVELS, LEVELS_OF_MODE, LDMConfig, config_from_dict, preset,
                              run_model_config)
from nfldm.ldm.data import LatentDataset, look_stats, render_setup
from nfldm.ldm.load import STAGE
from nfldm.ldm.model import LevelDiffusion
from nfldm.ldm.trajectory import fov_degrees
from nfldm.runs import config_hash, weights_hash
from nfldm.trainer import Trainer, init_distributed, load_model_weights, read_run_config, resolve_device

__all__ = ["train_ldm", "level_configs", "with_camera_setup", "init_level_from"]


def _split_overrides(overrides: dict | None) -> dict[str, dict]:
    """``--set`` pairs per level: ``key=v`` applies to every level, ``g.key=v`` to one."""
    out: dict[str, dict] = {k: {} for k in LEVELS}
    for k, v in (overrides or {}).items():
        if "." in k:
            lv, key = k.split(".", 1)
            if lv not in LEVELS:
                raise ValueError(f"--set {k}: the prefix must be a level ({', '.join(LEVELS)})")
            out[lv][key] = v
        else:
            for lv in LEVELS:
                out[lv].setdefault(k, v)
    return out


def level_configs(index: dict, preset_name: str, level: str, steps: int | None = None,
                  device: str = "auto", progress: bool = True, overrides: dict | None = None):
    """(LDMConfig, TrainConfig) of one level: the preset, the latent shapes of the folder,
    then the overrides. A shape the folder does not have (an ablation folder) keeps the
    preset's value, unused (g_dim: 0, which tells the levels there is no g)."""
    p = preset(preset_name).level(level)
    model, train = p.model, p.train
    if steps is not None:
        train.steps = steps
    train.device, train.progress = device, progress
    apply_overrides(model, train, _split_overrides(overrides)[level], "ldm", fixed=FIXED_BY_LATENTS,
                    fixed_by="the latent folder and the level")
    shapes = index["shapes"]
    d = asdict(model)
    d.update(level=level, g_dim=int(shapes["g"][0]) if "g" in shapes else 0)
    if "c" in shapes:
        d["c_shape"] = tuple(shapes["c"])
    if "f" in shapes:
        d["f_shape"] = tuple(shapes["f"])
    if d.get("bev") and "bev" in index:
        d["bev_size"] = int(index["bev"]["size"])
    try:
        model = config_from_dict(d)
        train.__post_init__()
    except (TypeError, ValueError) as e:
        raise ValueError(f"level {level}: {e}") from e
    return model, train


def with_camera_setup(cfg: LDMConfig, setup: dict) -> LDMConfig:
    """The trajectory maps' camera field of view and box aspect from the latent folder's
    render set-up (:func:`~nfldm.ldm.data.render_setup`: intrinsics fx, fy, cx, cy with
    cx = W / 2; bounds 2 x 3)."""
    fx, _, cx, _ = setup["intrinsics"]
    (lx, ly, _), (hx, hy, _) = setup["bounds"]
    return replace(cfg, traj_map_hfov=fov_degrees(fx, 2 * cx), traj_map_aspect=(hy - ly) / (hx - lx))


def init_level_from(model: LevelDiffusion, run: str | os.PathLike, stats: dict | None = None) -> dict:
    """Start ``model`` (one level) from the same level of the trained ldm run ``run`` (EMA
    weights), ControlNet-style (Zhang et al. 2023): a conditional level fine-tuned from an
    unconditional one starts as exactly that model. Tensors of the same name and shape are
    copied; an input convolution that gained input channels (the BEV maps concatenated to the
    noisy latent), or a linear layer that gained inputs (the class embedding's, given the map's
    mean look), keeps the old weights and gets zeros for the new inputs; when ``run``'s level has
    no BEV encoder, the BEV encoder's token projection starts at zero with the run's null token
    as its bias (so every map token is the null token the unconditional level was trained with)
    and its position embedding at zero. ``stats``: the latent statistics this model trains on; ValueError if
    ``run``'s differ by more than 1 % of a standard deviation (the latents would mean something else).
    Returns the record stored in the run config (``init_from``)."""
    run = Path(run)
    lv = model.level
    if not (run / lv / "config.json").is_file():
        raise ValueError(f"{run / lv}: --init-from needs an ldm run (or bundle) with level {lv}")
    rc = read_run_config(run / lv)
    if rc.get("stage") != STAGE or rc.get("level") != lv:
        raise ValueError(f"{run / lv}: not the {lv} level of an ldm run")
    if stats is not None:
        for key, st in stats.items():
            if not isinstance(st, dict) or key not in rc.get("stats", {}):
                continue
            mine, theirs = torch.tensor(st["mean"]), torch.tensor(rc["stats"][key]["mean"])
            std = torch.tensor(st["std"])
            if mine.shape != theirs.shape or bool(((mine - theirs).abs() > 0.01 * std).any()):
                raise ValueError(f"{run / lv / 'config.json'}: its latent statistics of {key} differ from this "
                                 "latent folder's; --init-from needs a run trained on latents of the same latent-ae "
                                 "and data")
    base = LevelDiffusion(config_from_dict(rc["model"]))
    info = load_model_weights(run / lv, base, prefer_ema=True)
    own, src = model.state_dict(), base.state_dict()
    load, widened, narrowed = {}, [], []
    dropped_map = base.bev is not None and model.bev is None
    if dropped_map and not base.cfg.cond_drop_prob:
        raise ValueError(f"{run / lv}: a BEV level starts an unconditional one only when its maps were dropped "
                         "in training (cond_drop_prob > 0): it has no unconditional branch")
    for k, v in own.items():
        b = src.get(k)
        if b is None:
            continue
        if b.shape == v.shape:
            load[k] = b
        elif (v.dim() in (2, 4) and b.dim() == v.dim() and v.shape[0] == b.shape[0] and v.shape[2:] == b.shape[2:]
              and v.shape[1] > b.shape[1]):          # a conv / linear that gained inputs (appended last)
            w = torch.zeros_like(v)
            w[:, :b.shape[1]] = b
            load[k], widened = w, widened + [k]
        elif (dropped_map and v.dim() in (2, 4) and b.dim() == v.dim() and v.shape[0] == b.shape[0]
              and v.shape[2:] == b.shape[2:] and v.shape[1] < b.shape[1]):
            # a conv / linear that loses its map inputs (appended last: the BEV maps, the map's
            # mean look), which were zeros whenever the map was dropped: the level's
            # unconditional branch, exactly
            load[k], narrowed = b[:, :v.shape[1]].clone(), narrowed + [k]
    model.load_state_dict(load, strict=False)
    if model.bev is not None and model.bev.to_tokens is not None and base.bev is None:
        with torch.no_grad():
            model.bev.to_tokens.weight.zero_()
            model.bev.to_tokens.bias.copy_(model.tokens.null.reshape(-1))
            model.bev.pos.zero_()
    fresh = sorted({k.rsplit(".", 1)[0] for k in own if k not in load})
    return {"run": str(run.resolve()), "level": lv, "step": info["step"], "config_hash": config_hash(rc["model"]),
            "weights_hash": weights_hash(base), "widened": widened, "fresh": fresh,
            **({"narrowed": narrowed} if narrowed else {})}


def train_ldm(latents: str | os.PathLike, out: str | os.PathLike, level: str = "all", preset_name: str = "tiny",
              steps: int | None = None, resume: bool = False, device: str = "auto", progress: bool = True,
              overrides: dict | None = None, train_scenes: int = 0,
              init_from: str | os.PathLike | None = None) -> dict[str, dict]:
    """Train one level (``g`` | ``c`` | ``f``) or all the folder's levels in turn (``all``) on
    the train split of a latent folder, into RUN/<level>. Each level trains on the CLEAN
    latents of the coarser ones. The levels are those of the folder's latent mode (g, c, f;
    g, c for coarse-only; g for global-only); another level is a ValueError.
    ``train_scenes`` K > 0: only the split's first K scenes (with their augmented copies;
    recorded in the run config), for studies of how many scenes a budget can fit (docs/ldm.md
    "How many scenes"). The latent statistics stay those of the whole train split, so levels
    trained on different subsets of one folder can be combined. Returns
    {level: last logged metrics}. ``init_from``: an ldm run (or bundle) whose levels start
    these (:func:`init_level_from`; e.g. BEV-conditioned levels fine-tuned from unconditional ones)."""
    if level != "all" and level not in LEVELS:
        raise ValueError(f"level must be g, c, f or all, got {level!r}")
    index = read_latent_index(latents)
    mode = latent_mode(index)
    have = LEVELS_OF_MODE[mode]
    levels = have if level == "all" else (level,)
    if level not in have and level != "all":
        raise ValueError(f"{latents}: the latent folder has latents {mode!r}, so its levels are "
                         f"{', '.join(have)}; there is no level {level}")
    setup = render_setup(latents, index)
    if setup["bounds_vary"]:
        warnings.warn(f"{latents}: the train scenes have different bounds; generated scenes are "
                      "rendered in their mean box")
    cfgs = {lv: level_configs(index, preset_name, lv, steps, device, progress, overrides) for lv in levels}
    cfgs = {lv: (with_camera_setup(m, setup) if m.traj_map else m, t) for lv, (m, t) in cfgs.items()}
    # under torchrun, one process group for all levels (the trainer leaves a group it did not
    # create alone)
    owned = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dev = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")))
        init_distributed("nccl" if dev.type == "cuda" else "gloo")
        owned = True
    try:
        return _train_levels(latents, out, levels, cfgs, index, setup, preset_name, resume, train_scenes, init_from)
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


def _train_levels(latents, out, levels, cfgs, index, setup, preset_name, resume, train_scenes=0,
                  init_from=None) -> dict[str, dict]:
    results = {}
    datasets: dict[int, LatentDataset] = {}
    look_sets: dict[int, tuple] = {}
    for lv in levels:
        cfg, tcfg = cfgs[lv]
        if cfg.traj_frames not in datasets:
            datasets[cfg.traj_frames] = LatentDataset(latents, "train", cfg.traj_frames, index=index,
                                                      max_scenes=train_scenes)
        ds = datasets[cfg.traj_frames]
        if cfg.scene_look:        # the look's standardisation: the train split's (also when a subset trains)
            if cfg.traj_frames not in look_sets:
                look_sets[cfg.traj_frames] = look_stats(LatentDataset(latents, "train", cfg.traj_frames, index=index)
                                                        if train_scenes else ds)
            cfg = replace(cfg, look_mean=look_sets[cfg.traj_frames][0], look_std=look_sets[cfg.traj_frames][1])
        if ds.has_cond and cfg.cond_dim != ds.cond_shape[1]:
            raise ValueError(f"{latents}: the latents hold condition tokens of width {ds.cond_shape[1]}; "
                             f"set cond_dim={ds.cond_shape[1]}")
        if not ds.has_cond and cfg.cond_dim:
            raise ValueError(f"{latents}: cond_dim={cfg.cond_dim} but the latents hold no condition tokens")
        if cfg.bev and not ds.has_bev:
            raise ValueError(f"{latents}: bev=true but the latents hold no BEV maps (nfldm encode-latents stores "
                             "them when the dataset's scenes have a bev.npz; encode into a new folder)")
        if cfg.bev and cfg.bev_look and not index.get("bev", {}).get("look"):
            raise ValueError(f"{latents}: bev_look=true but the latents' maps carry no look (nfldm data add-look on "
                             "the dataset, then nfldm encode-latents --refresh-maps)")
        if tcfg.batch_size > len(ds):
            warnings.warn(f"level {lv}: batch_size {tcfg.batch_size} is larger than the {len(ds)} train scenes "
                          f"of {latents}; using batch_size={len(ds)}")
            tcfg.batch_size = len(ds)
        torch.manual_seed(tcfg.seed)
        model = LevelDiffusion(cfg)
        run_config = {"stage": STAGE, "level": lv, "preset": preset_name,
                      "latents": str(Path(latents).resolve()), "latent_ae": index["latent_ae"],
                      "scene_ae": index["scene_ae"], "shapes": index["shapes"], "stats": index["stats"],
                      "render": setup, "model": run_model_config(cfg), "train": tcfg.to_dict()}
        if cfg.bev:             # the map's size and the dataset's typical heights (floor plans)
            run_config["bev"] = index["bev"]
        if init_from is not None:   # (a resumed run then loads its own checkpoint over it)
            run_config["init_from"] = init_level_from(model, init_from, index["stats"])
        if train_scenes:        # absent otherwise, so earlier runs resume as before
            run_config["train_scenes"] = {"first": train_scenes, "files": len(ds)}
        held_out = None
        if tcfg.val_every:
            try:
                held_out = LatentDataset(latents, "val", cfg.traj_frames, index=index)
            except (DataError, ValueError):
                held_out = None      # no val scenes: the trainer warns
        trainer = Trainer(model, ds, tcfg, Path(out) / lv, run_config, resume=resume, val_dataset=held_out)
        results[lv] = trainer.fit()
    return results
