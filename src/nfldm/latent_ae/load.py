"""Reading a stage-2 run: the trained latent auto-encoder.

Run directory (written by :func:`nfldm.latent_ae.train.train_latent_ae`): config.json (``stage``:
"latent-ae", the model config, the voxel statistics, the scene-ae it was trained on),
model.safetensors / ema.safetensors, metrics.jsonl.
"""

from __future__ import annotations

import os

from nfldm.latent_ae.config import config_from_dict
from nfldm.latent_ae.model import LatentAutoEncoder
from nfldm.trainer import load_model_weights, read_run_config, resolve_device

__all__ = ["STAGE", "load_latent_ae"]

STAGE = "latent-ae"


def load_latent_ae(run: str | os.PathLike, device: str = "auto") -> LatentAutoEncoder:
    """The trained model of a stage-2 run directory, in eval mode."""
    rc = read_run_config(run)
    if rc.get("stage") != STAGE:
        raise ValueError(f"{run}: not a latent-ae run (its config.json says stage {rc.get('stage')!r})")
    model = LatentAutoEncoder(config_from_dict(rc["model"]), rc.get("stats"))
    load_model_weights(run, model, prefer_ema=True)
    return model.to(resolve_device(device)).eval()
