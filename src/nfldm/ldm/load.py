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

__all__ = ["STAGE", "load_ldm"]

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
        rc = read_run_config(run / lv)
        if rc.get("stage") != STAGE or rc.get("level") != lv:
            raise ValueError(f"{run / lv}: not the {lv} level of an ldm run (stage {rc.get('stage')!r}, "
                             f"level {rc.get('level')!r})")
        return rc

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

    def same_latents(key: str, rc: dict):
        # the latent-ae by its config and weights (a bundle's levels name it by a relative path)
        v = rc.get(key)
        return {k: v.get(k) for k in ("config_hash", "weights_hash")} if key == "latent_ae" and isinstance(v, dict) else v

    for lv in LEVELS_OF_MODE[mode][1:]:
        for key in ("latent_ae", "stats", "shapes"):
            if same_latents(key, configs[lv]) != same_latents(key, ref):
                raise DataError(f"{run / lv / 'config.json'}: level {lv} was trained on other latents than "
                                f"level g ({key} differs); train all levels on one latent folder")
    if any(m.cfg.cond_dim != models["g"].cfg.cond_dim for m in models.values()):
        raise ValueError(f"{run}: the levels take conditions of different widths (cond_dim)")
    return {"models": models, "config": ref, "steps": steps, "device": dev, "latents": mode}
