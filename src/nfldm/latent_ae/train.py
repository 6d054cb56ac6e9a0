"""Stage 2 entry points: train and evaluate the latent auto-encoder, encode the latents.

    encode_voxels (data.py)  scene-ae run + dataset -> VOXDIR (V per scene)
    train_latent_ae          VOXDIR -> latent-ae run (the shared trainer)
    eval_latent_ae           latent-ae run + scene-ae run + VOXDIR -> metrics.json + picture
    encode_latents           latent-ae run + VOXDIR -> LATDIR ((g, c, f) + trajectory per scene)
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nfldm import camera
from nfldm.data.format import DataError
from nfldm.latent_ae.config import check_latent_mode, preset, run_model_config
from nfldm.latent_ae.data import (INDEX_FILE, VoxelDataset, check_finite, config_hash, dihedral_voxels, load_voxels,
                                  peek_safetensors, read_safetensors, read_voxel_index, scene_file, weights_hash,
                                  write_safetensors)
from nfldm.latent_ae.evaluate import evaluate
from nfldm.latent_ae.load import STAGE, load_latent_ae
from nfldm.latent_ae.model import LatentAutoEncoder
from nfldm.scene_ae.flythrough import grid_image, to_uint8, upscale
from nfldm.scene_ae.load import load_scene_ae, makes_voxels_of
from nfldm.trainer import Trainer, apply_overrides, read_run_config
from nfldm.utils.io import atomic_save_png, atomic_write_json

LATENT_FORMAT = "nfldm-latents"
LATENT_VERSION = 1
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
    trainer = Trainer(model, dataset, p.train, out, run_config, resume=resume)
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


AUGMENTS = {1: [(0, False)], 4: [(k, False) for k in range(4)],
            8: [(k, f) for f in (False, True) for k in range(4)]}


def augmented_name(name: str, k: int, flip: bool) -> str:
    """Name of a dihedral copy of a scene: the name itself for (0, False), else
    ``<name>_d<k>`` (rotated k x 90 degrees) or ``<name>_d<k>m`` (mirrored, then rotated)."""
    return name if (k, flip) == (0, False) else f"{name}_d{k}{'m' if flip else ''}"


def _dihedral_scene(vox: dict, k: int, flip: bool, path: Path) -> dict:
    """A voxel scene (load_voxels) turned by ``camera.dihedral_matrix(k, flip)``: V and the
    poses together. DataError naming ``path`` when the box is not symmetric about the z axis
    with equal x and y extents (the transform would not map it onto itself)."""
    lo, hi = vox["bounds"][0], vox["bounds"][1]
    X, Y = vox["V"].shape[1:3]
    if not (torch.allclose(lo[:2], -hi[:2], atol=1e-4) and abs(float(hi[0] - hi[1])) < 1e-4 and X == Y):
        raise DataError(f"{path}: cannot augment a scene whose box {vox['bounds'].tolist()} (grid "
                        f"{X} x {Y}) is not centred on the z axis with equal x and y sides")
    M = camera.dihedral_matrix(k, flip)
    return {**vox, "V": dihedral_voxels(vox["V"], k, flip), "c2w": camera.transform_poses(vox["c2w"], M)}


def encode_latents(run: str | os.PathLike, voxels: str | os.PathLike, out: str | os.PathLike,
                   device: str = "auto", progress: bool = True, augment: int = 1) -> dict:
    """(g, c, f) of every scene of a voxel folder, for stage 3.

    ``augment`` 4 or 8 also encodes every TRAIN scene turned by 90, 180 and 270 degrees about
    the vertical axis (and, with 8, mirrored) as extra train scenes: the voxel grid and the
    camera poses are transformed together (``dihedral_voxels``, ``camera.dihedral_matrix``),
    which is exact for the symmetric, axis-aligned scene box, and encoded again (latents of
    a turned grid are not a turned latent grid). Test scenes are never augmented.

    Writes OUT/<scene>.safetensors with g (g_dim,), c (c_ch x X/d x Y/d x Zc) and f
    (f_ch x X x Y) BEFORE quantisation (g = mu of the posterior), the camera trajectory
    (c2w N x 4 x 4, intrinsics N x 4), bounds 2 x 3 and input_ids; and OUT/index.json with
    the scenes and splits, the latent mode (``latents``: "gcf", "c" or "g"), the latent
    shapes and per-channel mean / std of each latent over the train split. An ablation run
    (``latents`` "c" or "g") writes only its latents. Resumable (files of the same latent-ae
    run that read are skipped) and atomic. Returns {"out", "encoded", "skipped", "scenes"}.
    """
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {sorted(AUGMENTS)}, got {augment}")
    index, rc, lae = _open_run_on_voxels(run, voxels, device)
    dev = next(lae.parameters()).device
    lae_id = {"run": str(Path(run).resolve()), "config_hash": config_hash(rc["model"]),
              "weights_hash": weights_hash(lae)}
    shapes = {k: list(v) for k, v in lae.latent_shapes.items()}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    encoded = skipped = 0
    scenes = []
    jobs = [(s, rot, flip) for s in index["scenes"]
            for rot, flip in (AUGMENTS[augment] if s["split"] == "train" else AUGMENTS[1])]
    source = (None, None)   # (name, voxels) of the last scene read: its copies come in a row
    for s, rot, flip in tqdm(jobs, desc="encoding latents", unit="scene", disable=not progress):
        name = augmented_name(s["name"], rot, flip)
        path = scene_file(out, name)
        entry = {"name": name, "split": s["split"], "file": path.name, "num_frames": s.get("num_frames")}
        if (rot, flip) != (0, False):
            entry.update(source=s["name"], dihedral=[rot, flip])
        scenes.append(entry)
        if path.exists():
            try:
                meta, fshapes = peek_safetensors(path)
            except DataError as e:
                warnings.warn(f"{e}; encoding it again")
                meta = None
            if meta is not None:
                if meta.get("format") != LATENT_FORMAT or meta.get("lae_weights_hash") != lae_id["weights_hash"]:
                    raise DataError(f"{path}: made by another latent-ae run or weights; encode into a new folder")
                if any(tuple(fshapes.get(k, ())) != tuple(v) for k, v in shapes.items()):
                    raise DataError(f"{path}: latent shapes {fshapes} differ from {shapes}")
                skipped += 1
                continue
        if source[0] != s["name"]:
            source = (s["name"], load_voxels(voxels, s["name"], index))
        vox = source[1]
        if (rot, flip) != (0, False):
            vox = _dihedral_scene(vox, rot, flip, scene_file(voxels, s["name"]))
        with torch.no_grad():
            enc = lae.encode(vox["V"][None].to(dev))
        lat = {k: enc["g_mu" if k == "g" else k][0].cpu() for k in lae.latent_names}
        check_finite(f"scene {name}", **lat)
        write_safetensors(path, {**lat, "c2w": vox["c2w"], "intrinsics": vox["intrinsics"],
                                 "bounds": vox["bounds"], "input_ids": vox["input_ids"]},
                          {"format": LATENT_FORMAT, "version": LATENT_VERSION, "scene": name,
                           "split": s["split"], "lae_config_hash": lae_id["config_hash"],
                           "lae_weights_hash": lae_id["weights_hash"]})
        encoded += 1
    stats = latent_stats(out, [s["name"] for s in scenes if s["split"] == "train"], progress)
    atomic_write_json(out / INDEX_FILE, {
        "format": LATENT_FORMAT, "version": LATENT_VERSION, "latent_ae": lae_id,
        "voxels": str(Path(voxels).resolve()), "data": index["data"], "scene_ae": _scene_ae_of(index),
        "quantizer": lae.cfg.quantizer, "pre_quantisation": True, "latents": lae.cfg.latents, "shapes": shapes,
        "augment": augment,
        "scenes": scenes,
        "stats": stats})
    return {"out": str(out), "encoded": encoded, "skipped": skipped, "scenes": len(scenes)}


def latent_stats(latdir: Path, names: list[str], progress: bool = True) -> dict:
    """Per-channel mean and std of g (per dimension), c and f (per channel, over all
    positions) over the given (train) scenes of a latent folder (those of g, c, f the files
    hold)."""

    if not names:
        return {}
    sums: dict[str, list] = {}
    for name in tqdm(names, desc="latent statistics", unit="scene", disable=not progress):
        t, _ = read_safetensors(scene_file(latdir, name))
        for k in ("g", "c", "f"):
            if k not in t:
                continue
            x = t[k].double()
            x = x[:, None] if k == "g" else x.flatten(1)            # channels x positions
            s = sums.setdefault(k, [0, torch.zeros(len(x), dtype=torch.float64), torch.zeros(len(x), dtype=torch.float64)])
            s[0] += x.shape[1]
            s[1] += x.sum(1)
            s[2] += (x ** 2).sum(1)
    out = {"split": "train", "num_scenes": len(names)}
    for k, (n, s1, s2) in sums.items():
        mean = s1 / n
        out[k] = {"mean": mean.tolist(), "std": (s2 / n - mean ** 2).clamp(min=0).sqrt().tolist()}
    return out
