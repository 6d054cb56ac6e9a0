"""Reading a stage-1 run: the trained scene auto-encoder, and whether a model makes the V that
some voxels were encoded with (a renderer fine-tuned from it keeps its lift, so its V).

Run directory (written by :func:`nfldm.scene_ae.train.train_scene_ae` through the shared trainer):
config.json (``stage``: "scene-ae", the model config, ``init_from`` for fine-tuned renderers),
model.safetensors / ema.safetensors, metrics.jsonl.
"""

from __future__ import annotations

import os

from nfldm.runs import config_hash, state_hash, weights_hash
from nfldm.scene_ae.config import config_dict, config_from_dict, encoder_fields
from nfldm.scene_ae.model import SceneAutoEncoder
from nfldm.trainer import load_model_weights, read_run_config, resolve_device

__all__ = ["STAGE", "load_scene_ae", "encoder_hash", "makes_voxels_of"]

STAGE = "scene-ae"


def load_scene_ae(run: str | os.PathLike, device: str = "auto") -> SceneAutoEncoder:
    """The trained model of a stage-1 run directory (EMA weights when present)."""
    rc = read_run_config(run)
    if rc.get("stage") != STAGE:
        raise ValueError(f"{run}: not a scene-ae run (its config.json says stage "
                         f"{rc.get('stage')!r})")
    model = SceneAutoEncoder(config_from_dict(rc["model"]))
    load_model_weights(run, model, prefer_ema=True)
    return model.to(resolve_device(device)).eval()


def encoder_hash(model: SceneAutoEncoder) -> str:
    """16 hex digits over what decides V: the encoder's weights and
    :data:`~nfldm.scene_ae.config.ENCODER_FIELDS` (:func:`~nfldm.scene_ae.config.encoder_fields`:
    image_width only for non-square frames, so square runs hash as before it existed)."""
    return config_hash({"fields": encoder_fields(model.cfg),
                        "weights": state_hash(model.encoder_state())})


def makes_voxels_of(run: str | os.PathLike, model: SceneAutoEncoder, record: dict) -> bool:
    """Whether ``model`` (loaded from scene-ae ``run``) makes the V described by ``record``
    (``config_hash``, ``weights_hash`` of the scene-ae that encoded some voxels): it is that
    scene-ae, or a renderer fine-tuned from it (``--init-from`` it with ``train_parts=render``,
    its encoder unchanged)."""
    if (config_hash(config_dict(model.cfg)) == record["config_hash"]
            and weights_hash(model) == record["weights_hash"]):
        return True
    init = read_run_config(run).get("init_from")
    return (bool(init) and model.cfg.train_parts == "render"
            and init.get("config_hash") == record["config_hash"]
            and init.get("weights_hash") == record["weights_hash"]
            and init.get("encoder_hash") == encoder_hash(model))
