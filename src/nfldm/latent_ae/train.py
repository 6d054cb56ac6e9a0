"""Stage 2 entry points: train and evaluate the latent auto-encoder, encode the latents.

    encode_voxels (data.py)  scene-ae run + dataset -> VOXDIR (V per scene)
    train_latent_ae          VOXDIR -> latent-ae run (the shared trainer)
    eval_latent_ae           latent-ae run + scene-ae run + VOXDIR -> metrics.json + picture
    encode_latents           latent-ae run + VOXDIR -> LATDIR ((g, c, f) + trajectory per scene)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from nfldm.config import apply_overrides
from nfldm.data.format import DataError
from nfldm.latent_ae.config import check_latent_mode, preset, run_model_config
from nfldm.latent_ae.evaluate import evaluate
from nfldm.latent_ae.load import STAGE, load_latent_ae
from nfldm.latent_ae.model import LatentAutoEncoder
from nfldm.runs import weights_hash
from nfldm.scene_ae.flythrough import grid_image, to_uint8, upscale
from nfldm.scene_ae.load import load_scene_ae, makes_voxels_of
from nfldm.scene_ae.voxels import INDEX_FILE, VoxelDataset, read_voxel_index
from nfldm.trainer import Trainer, read_run_config
from nfldm.utils.io import atomic_save_png, atomic_write_json

FIXED_BY_VOXELS = ("grid", "channels")


def _scene_ae_of(index: dict) -> dict:
    """The scene-ae identity a voxel folder records (run path, config hash, weights hash)."""
    s = index["scene_ae"]
    return {"run": s["run"], "config_hash": s["config_hash"], "weights_hash": s["weights_hash"]}


def _check_voxels_match(run: str | os.PathLike, rc: dict, voxels: str | os.PathLike, index: dict) -> None:
    """DataError if VOXDIR was not made by the scene-ae whose voxels the LAE was trained on."""
    want, got = rc.get("scene_ae", {}), _scene_ae_of(index)
    path = Path(voxels) / INDEX_FILE
    if want.get("config_hash") != got["config_hash"]:
        raise DataError(f"{path}: made by another scene-ae config ({got['run']}, hash {got['config_hash']}) "
                        f"than the voxels latent-ae run {run} was trained on ({want.get('run')}, hash "
                        f"{want.get('config_hash')})")
    if want.get("weights_hash") != got["weights_hash"]:
        raise DataError(f"{path}: made by other scene-ae weights ({got['run']}) than the voxels latent-ae "
                        f"run {run} was trained on ({want.get('run')})")
    model = rc.get("model", {})
    if list(model.get("grid", [])) != list(index["grid"]) or model.get("channels") != index["channels"]:
        raise DataError(f"{path}: V is {index['channels']} x {index['grid']}, latent-ae run {run} expects "
                        f"{model.get('channels')} x {model.get('grid')}")


def train_latent_ae(voxels: str | os.PathLike, out: str | os.PathLike, preset_name: str = "tiny",
                    steps: int | None = None, resume: bool = False, device: str = "auto",
                    progress: bool = True, overrides: dict | None = None) -> dict:
    """Train stage 2 on the train split of a voxel folder into run directory ``out``.

    The grid and channel count of V come from the voxel folder; the normalisation statistics
    too (stored in the run config and in the weights). With ``w_render > 0`` the frozen
    stage-1 model recorded in the voxel folder renders the image loss.
    """
    index = read_voxel_index(voxels)
    p = preset(preset_name)
    if steps is not None:
        p.train.steps = steps
    p.train.device = device
    p.train.progress = progress
    apply_overrides(p.model, p.train, overrides, "latent-ae", fixed=FIXED_BY_VOXELS,
                    fixed_by=f"the voxel folder ({index['channels']} x {index['grid']})")
    cfg = p.model
    cfg.grid, cfg.channels = tuple(index["grid"]), int(index["channels"])
    check_latent_mode(cfg.latents)
    dataset = VoxelDataset(voxels, "train", index=index)
    torch.manual_seed(p.train.seed)
    model = LatentAutoEncoder(cfg, index["stats"])
    if cfg.w_render > 0:

        sae_run = index["scene_ae"]["run"]
        sae = load_scene_ae(sae_run, device)
        if weights_hash(sae) != index["scene_ae"]["weights_hash"]:
            raise DataError(f"{Path(voxels) / INDEX_FILE}: the scene-ae run {sae_run} has changed since "
                            "these voxels were encoded (its weights differ); re-encode the voxels")
        model.set_renderer(sae)
    run_config = {"stage": STAGE, "preset": preset_name, "voxels": str(Path(voxels).resolve()),
                  "scene_ae": _scene_ae_of(index), "stats": index["stats"], "model": run_model_config(cfg),
                  "train": p.train.to_dict()}
    held_out = None
    if p.train.val_every:
        try:
            held_out = VoxelDataset(voxels, "val", index=index)
        except (DataError, ValueError):
            held_out = None          # no val scenes: the trainer warns
    trainer = Trainer(model, dataset, p.train, out, run_config, resume=resume, val_dataset=held_out)
    return trainer.fit()


def _picture(kept: list, num: int = 6) -> np.ndarray:
    """Rows per scene: ground truth, rendered from the original V, rendered from the decoded V."""
    rows = []
    for k in kept:
        sel = torch.from_numpy(np.round(np.linspace(0, len(k["gt"]) - 1, min(num, len(k["gt"])))).astype(int))
        rows += [to_uint8(k[key][sel]) for key in ("gt", "original", "decoded")]
    n = min(r.shape[0] for r in rows)
    return grid_image([upscale(r[:n], 2) for r in rows])


def _open_run_on_voxels(run, voxels, device: str) -> tuple[dict, dict, LatentAutoEncoder]:
    """(voxel index, run config, model) of a latent-ae run that was trained on ``voxels``;
    ValueError if ``run`` is not a latent-ae run or was trained on other voxels."""
    index = read_voxel_index(voxels)
    rc = read_run_config(run)
    if rc.get("stage") != STAGE:
        raise ValueError(f"{run}: not a latent-ae run (its config.json says stage {rc.get('stage')!r})")
    _check_voxels_match(run, rc, voxels, index)
    return index, rc, load_latent_ae(run, device)


def eval_latent_ae(run, voxels, scene_ae=None, split: str = "test", out=None, data=None,
                   device: str = "auto", max_scenes: int | None = None, progress: bool = True) -> dict:
    """Voxel errors, rendered-view PSNR cost and codebook usage of a latent-ae run on one split.

    ``scene_ae``: the stage-1 run that renders (default: the one recorded in the voxel folder;
    it must be the one that made the voxels). ``data``: the dataset with the ground-truth
    images (default: the one recorded in the voxel folder). Writes ``out`` (JSON) and
    ``<out stem>_views.png`` (rows per scene: ground truth, from original V, from decoded V).
    """
    index, _, lae = _open_run_on_voxels(run, voxels, device)
    dev = next(lae.parameters()).device
    sae_run = scene_ae or index["scene_ae"]["run"]
    sae = load_scene_ae(sae_run, device)
    if not makes_voxels_of(sae_run, sae, index["scene_ae"]):
        raise DataError(f"{Path(voxels) / INDEX_FILE}: these voxels were made by scene-ae run "
                        f"{index['scene_ae']['run']}, not by {sae_run} (config or weights differ, and it "
                        "is not a renderer fine-tuned from that run)")
    res, kept = evaluate(lae, sae, voxels, index, split, data or index["data"], dev,
                         max_scenes=max_scenes, progress=progress, keep=4)
    res = {"run": str(run), "scene_ae": str(sae_run), "voxels": str(voxels), "split": split, **res}
    if out is not None:
        atomic_write_json(out, res)
        if kept:
            atomic_save_png(Path(out).with_name(Path(out).stem + "_views.png"), _picture(kept))
    return res
