"""Reading a stage-3 run: the trained diffusion levels psi_g, psi_c, psi_f.

Run directory (written by :func:`nfldm.ldm.train.train_ldm`): one sub-directory per level (g/, c/,
f/), each a run of the shared trainer whose config.json has ``stage`` "ldm", its ``level``, the
latent folder's statistics and shapes, and the latent-ae and scene-ae behind them. A bundle
(:mod:`nfldm.pipeline.bundle`) has the same layout.
"""

from __future__ import annotations

import os
from pathlib import Path

from nfldm.data.format import DataError
from nfldm.latent_ae.latents import mode_of_shapes
from nfldm.ldm.config import LEVELS_OF_MODE, config_from_dict
from nfldm.ldm.model import LevelDiffusion
from nfldm.trainer import load_model_weights, read_run_config, resolve_device

__all__ = ["STAGE", "load_ldm", "load_level"]

STAGE = "ldm"


def load_ldm(run: str | os.PathLike, device: str = "auto") -> dict:
    """The trained levels of an ldm run (EMA weights when present), in eval mode: g, c, f, or
    those of the latent mode the g level was trained on (g, c for coarse-only, g for
    global-only).

    Returns {"models": {level: LevelDiffusion}, "config": the g level's run config,
    "steps": {level: training step of the weights}, "latents": the latent mode}. ValueError if
    a level is missing or the levels were trained on different latent folders / statistics.
    """
    run = Path(run)
    if not run.is_dir():
        raise ValueError(f"{run}: ldm run directory does not exist")
    if (run / "config.json").is_file() and not (run / "g").is_dir():
        stage = read_run_config(run).get("stage")
        raise ValueError(f"{run}: not an ldm run (its config.json says stage {stage!r}); pass the folder "
                         "that holds g/, c/ and f/ (or a bundle)")
    dev = resolve_device(device)

    def level_config(lv: str) -> dict:
        if not (run / lv / "config.json").is_file():
            raise ValueError(f"{run / lv}: level {lv} is not trained (no config.json); run "
                             f"nfldm train ldm --level {lv} (or all) --out {run}")
        return _level_config(run / lv, lv)

    # the latent mode of the folder the g level was trained on names the other levels
    configs = {"g": level_config("g")}
    try:
        mode = mode_of_shapes(configs["g"].get("shapes", {}))
    except ValueError as e:
        raise DataError(f"{run / 'g' / 'config.json'}: {e}") from e
    for lv in LEVELS_OF_MODE[mode][1:]:
        configs[lv] = level_config(lv)
    models, steps = {}, {}
    for lv, rc in configs.items():
        model = LevelDiffusion(config_from_dict(rc["model"]))
        info = load_model_weights(run / lv, model, prefer_ema=True)
        models[lv], steps[lv] = model.to(dev).eval(), info["step"]
    ref = configs["g"]
    for lv in LEVELS_OF_MODE[mode][1:]:
        key = _other_latents(configs[lv], ref)
        if key:
            raise DataError(f"{run / lv / 'config.json'}: level {lv} was trained on other latents than "
                            f"level g ({key} differs); train all levels on one latent folder")
    if any(m.cfg.cond_dim != models["g"].cfg.cond_dim for m in models.values()):
        raise ValueError(f"{run}: the levels take conditions of different widths (cond_dim)")
    return {"models": models, "config": ref, "steps": steps, "device": dev, "latents": mode}


def _level_config(path: Path, level: str) -> dict:
    """The run config of ``path``, checked to be the ``level`` level of an ldm run."""
    rc = read_run_config(path)
    if rc.get("stage") != STAGE or rc.get("level") != level:
        raise ValueError(f"{path}: not the {level} level of an ldm run (stage {rc.get('stage')!r}, "
                         f"level {rc.get('level')!r})")
    return rc


def _other_latents(rc: dict, ref: dict) -> str | None:
    """The first of latent-ae, statistics and shapes in which two level configs differ (None: the
    same latents). The latent-ae by its config and weights: a bundle's levels name it by a
    relative path."""
    def key_of(key: str, c: dict):
        v = c.get(key)
        return {k: v.get(k) for k in ("config_hash", "weights_hash")} if key == "latent_ae" and isinstance(v, dict) else v

    return next((k for k in ("latent_ae", "stats", "shapes") if key_of(k, rc) != key_of(k, ref)), None)


def load_level(path: str | os.PathLike, level: str, like: dict, device: str = "auto") -> tuple[LevelDiffusion, int]:
    """One trained level of an ldm run or bundle (``path``: e.g. RUN/c, or a bundle's c), its EMA
    weights when present, in eval mode, and their training step. ``like``: the run config of a
    level it is to be sampled with (:func:`load_ldm`'s "config"); DataError if it was trained on
    other latents (latent-ae, statistics, shapes), ValueError if ``path`` is not that level."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"{path}: not a trained ldm level (no config.json)")
    rc = _level_config(path, level)
    key = _other_latents(rc, like)
    if key:
        raise DataError(f"{path / 'config.json'}: trained on other latents than the levels it is to be sampled "
                        f"with ({key} differs)")
    model = LevelDiffusion(config_from_dict(rc["model"]))
    info = load_model_weights(path, model, prefer_ema=True)
    return model.to(resolve_device(device)).eval(), int(info["step"])
