"""The voxel folder: the grids V of every scene, encoded once by a trained stage-1 model (its
writer, reader and format; stage 2 trains on it).

``encode_voxels`` writes a voxel folder (VOXDIR)::

    VOXDIR/<scene>.safetensors   V          float16  (1 + C) x X x Y x Z   (channel 0 = sigma)
                                 bounds     float32  2 x 3
                                 c2w        float32  N x 4 x 4   all frames of the scene
                                 intrinsics float32  N x 4       all frames [fx, fy, cx, cy]
                                 input_ids  int64    K           frames encoded into V
                                 metadata: format, version, scene, split, scene_ae_config_hash,
                                           scene_ae_weights_hash
    VOXDIR/index.json            scenes and splits, the data folder, the scene-ae run (path,
                                 config, hashes), the grid, normalisation statistics of the
                                 TRAIN split (see :func:`voxel_stats`)

V is encoded from the input views of the stage-1 evaluation protocol (``num_input_views``
evenly spaced frames, :func:`nfldm.scene_ae.evaluate.input_split`); the other frames are the
held-out views on which ``nfldm eval latent-ae`` scores renders. Every file is written
atomically (temp file + rename); a re-run skips scenes whose file exists and reads.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from nfldm.data.format import SPLITS, DataError, read_dataset
from nfldm.data.loader import SceneDataset
from nfldm.data.tensors import peek_safetensors, read_safetensors, scene_file, write_safetensors
from nfldm.runs import config_hash, weights_hash
from nfldm.scene_ae.config import config_dict, image_size_record
from nfldm.scene_ae.evaluate import split_scene
from nfldm.scene_ae.load import load_scene_ae
from nfldm.scene_ae.model import scene_batch
from nfldm.scene_ae.train import check_data
from nfldm.utils.io import atomic_write_json, read_json

__all__ = [
    "VOXEL_FORMAT", "SIGMA_SCALE", "OCCUPIED_SIGMA", "INDEX_FILE", "encode_voxels", "read_voxel_index",
    "voxel_stats", "load_voxels", "dihedral_voxels", "VoxelDataset",
]

VOXEL_FORMAT = "nfldm-voxels"
VOXEL_VERSION = 1
INDEX_FILE = "index.json"
SIGMA_SCALE = 0.1       # normalised density = log1p(sigma / SIGMA_SCALE), sigma per metre
OCCUPIED_SIGMA = 0.5    # a voxel is "occupied" for the feature statistics if sigma > this



def _read_json(path: Path, what: str) -> dict:
    return read_json(path, what, DataError)


# ----------------------------------------------------------------------------------------
# The voxel folder


def read_voxel_index(voxdir: str | os.PathLike) -> dict:
    """VOXDIR/index.json (DataError if missing, corrupt or not a voxel folder)."""
    path = Path(voxdir) / INDEX_FILE
    if not Path(voxdir).is_dir():
        raise DataError(f"{voxdir}: voxel folder does not exist (make it with nfldm encode-voxels)")
    if not path.is_file():
        raise DataError(f"{path}: file is missing (nfldm encode-voxels writes it when it has encoded "
                        "every scene; run it again to finish the folder)")
    index = _read_json(path, "the voxel folder index")
    if index.get("format") != VOXEL_FORMAT or index.get("version") != VOXEL_VERSION:
        raise DataError(f"{path}: not a voxel folder index (format {index.get('format')!r} "
                        f"version {index.get('version')!r}, expected {VOXEL_FORMAT!r} {VOXEL_VERSION})")
    for key in ("scenes", "grid", "channels", "scene_ae", "stats"):
        if key not in index:
            raise DataError(f"{path}: key {key!r} is missing")
    return index


def _check_voxel_file(path: Path, meta: dict, shapes: dict, expect: dict) -> None:
    """Raise DataError naming ``path`` if a voxel file does not match ``expect``
    (keys: config_hash, weights_hash, shape (of V), split (optional))."""
    if meta.get("format") != VOXEL_FORMAT:
        raise DataError(f"{path}: not a voxel file (metadata format {meta.get('format')!r}, "
                        f"expected {VOXEL_FORMAT!r})")
    if meta.get("scene_ae_config_hash") != expect["config_hash"]:
        raise DataError(f"{path}: made by another scene-ae config (hash {meta.get('scene_ae_config_hash')}, "
                        f"expected {expect['config_hash']}); voxels of different stage-1 models cannot be "
                        "mixed: encode into a new folder")
    if meta.get("scene_ae_weights_hash") != expect["weights_hash"]:
        raise DataError(f"{path}: made by other scene-ae weights (hash {meta.get('scene_ae_weights_hash')}, "
                        f"expected {expect['weights_hash']}); encode into a new folder")
    for key in ("V", "bounds", "c2w", "intrinsics", "input_ids"):
        if key not in shapes:
            raise DataError(f"{path}: tensor {key!r} is missing")
    if shapes["V"] != tuple(expect["shape"]):
        raise DataError(f"{path}: V has shape {shapes['V']}, expected {tuple(expect['shape'])}")
    n = shapes["c2w"][0] if shapes["c2w"] else 0
    if shapes["bounds"] != (2, 3) or shapes["c2w"] != (n, 4, 4) or shapes["intrinsics"] != (n, 4):
        raise DataError(f"{path}: bad camera shapes (bounds {shapes['bounds']}, c2w {shapes['c2w']}, "
                        f"intrinsics {shapes['intrinsics']})")


def _expect_from_index(index: dict) -> dict:
    sae = index["scene_ae"]
    return {"config_hash": sae["config_hash"], "weights_hash": sae["weights_hash"],
            "shape": (index["channels"], *index["grid"])}


def load_voxels(voxdir: str | os.PathLike, name: str, index: dict) -> dict:
    """One scene of a voxel folder: V float32 (1 + C) x X x Y x Z, bounds 2 x 3, c2w N x 4 x 4,
    intrinsics N x 4, input_ids K; DataError naming the file if it is missing, corrupt or
    does not match the folder's index."""
    path = scene_file(voxdir, name)
    tensors, meta = read_safetensors(path)
    _check_voxel_file(path, meta, {k: tuple(v.shape) for k, v in tensors.items()}, _expect_from_index(index))
    V = tensors["V"].float()
    if not bool(torch.isfinite(V).all()):
        raise DataError(f"{path}: V holds NaN or infinite values")
    return {"V": V, "bounds": tensors["bounds"].float(), "c2w": tensors["c2w"].float(),
            "intrinsics": tensors["intrinsics"].float(), "input_ids": tensors["input_ids"].long()}


def dihedral_voxels(V: torch.Tensor, k: int, flip: bool = False) -> torch.Tensor:
    """The voxel grid of a scene mirrored in x (when ``flip``), then rotated k x 90 degrees
    counter-clockwise about +z: the grid transform of ``camera.dihedral_matrix(k, flip)`` for
    a box symmetric about the z axis with equal x and y extents.

    V: ... x X x Y x Z (X == Y when k is odd)  ->  same shape; exact (a permutation of voxels).
    """
    if k % 2 and V.shape[-3] != V.shape[-2]:
        raise ValueError(f"a 90-degree rotation needs X == Y, got a {tuple(V.shape[-3:])} grid")
    if flip:
        V = V.flip(-3)
    return torch.rot90(V, k % 4, dims=(-3, -2))


def voxel_stats(voxdir: str | os.PathLike, index: dict, progress: bool = True) -> dict:
    """Normalisation statistics over the TRAIN split of a voxel folder.

    sigma_scale: the density scale s of the normalised density log1p(sigma / s) (fixed,
    SIGMA_SCALE); per feature channel over occupied voxels (sigma > OCCUPIED_SIGMA): mean, std
    and rms (sqrt of the mean square; the features are divided by it, which keeps empty
    voxels exactly 0); occupied and non-zero voxel fractions.
    """
    names = [s["name"] for s in index["scenes"] if s["split"] == "train"]
    if not names:
        raise DataError(f"{Path(voxdir) / INDEX_FILE}: no train scene to compute normalisation statistics on")
    C = index["channels"] - 1
    n_occ = 0
    n_nonzero = n_total = 0
    s1 = torch.zeros(C, dtype=torch.float64)
    s2 = torch.zeros(C, dtype=torch.float64)
    for name in tqdm(names, desc="voxel statistics", unit="scene", disable=not progress):
        V = load_voxels(voxdir, name, index)["V"]
        occ = V[0] > OCCUPIED_SIGMA
        f = V[1:][:, occ].double()                                  # C x n
        n_occ += int(occ.sum())
        n_nonzero += int((V[0] > 0).sum())
        n_total += V[0].numel()
        s1 += f.sum(1)
        s2 += (f ** 2).sum(1)
    mean = s1 / max(n_occ, 1)
    ms = s2 / max(n_occ, 1)
    std = (ms - mean ** 2).clamp(min=0).sqrt()
    rms = ms.sqrt()
    rms = torch.where(rms > 1e-6, rms, torch.ones_like(rms))       # channels that are all zero
    return {"split": "train", "num_scenes": len(names), "sigma_scale": SIGMA_SCALE,
            "occupied_sigma": OCCUPIED_SIGMA, "occupied_fraction": n_occ / max(n_total, 1),
            "nonzero_fraction": n_nonzero / max(n_total, 1), "feature_mean": mean.tolist(),
            "feature_std": std.tolist(), "feature_rms": rms.tolist()}


def encode_voxels(scene_ae_run: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike,
                  device: str = "auto", progress: bool = True) -> dict:
    """Encode V for every scene of every split of ``data`` with a trained stage-1 model.

    Resumable: scenes whose file exists and reads (and was made by the same scene-ae config
    and weights) are skipped; a file that does not read is encoded again. Writes
    OUT/index.json at the end. Returns {"out", "encoded", "skipped", "scenes"}.
    """
    out = Path(out)
    model = load_scene_ae(scene_ae_run, device)
    dev = next(model.parameters()).device
    cfg = model.cfg
    sae = {"run": str(Path(scene_ae_run).resolve()), "config": config_dict(cfg),
           "config_hash": config_hash(config_dict(cfg)), "weights_hash": weights_hash(model)}
    index_path = out / INDEX_FILE
    if index_path.exists():
        old = read_voxel_index(out)
        if old["scene_ae"].get("config_hash") != sae["config_hash"]:
            raise DataError(f"{index_path}: this voxel folder was made by another scene-ae config "
                            f"({old['scene_ae'].get('run')}); encode into a new folder")
        if old["scene_ae"].get("weights_hash") != sae["weights_hash"]:
            raise DataError(f"{index_path}: this voxel folder was made by other scene-ae weights "
                            f"({old['scene_ae'].get('run')}); encode into a new folder")
    shape = (1 + cfg.feat_dim, *cfg.grid)
    expect = {"config_hash": sae["config_hash"], "weights_hash": sae["weights_hash"], "shape": shape}

    dindex = read_dataset(data)
    datasets = {}
    for split in SPLITS:
        if dindex.split(split):
            datasets[split] = SceneDataset(data, split, cache=True)
            check_data(datasets[split], cfg)
    todo = [(split, i) for split, ds in datasets.items() for i in range(len(ds))]
    scenes, encoded, skipped = [], 0, 0
    out.mkdir(parents=True, exist_ok=True)
    for split, i in tqdm(todo, desc="encoding voxels", unit="scene", disable=not progress):
        ds = datasets[split]
        entry, meta = ds.entries[i], ds.metas[i]
        path = scene_file(out, entry.name)
        scenes.append({"name": entry.name, "split": split, "file": path.name, "num_frames": len(meta)})
        if path.exists():
            try:
                fmeta, shapes = peek_safetensors(path)
                readable = True
            except DataError as e:
                warnings.warn(f"{e}; encoding it again")
                readable = False
            if readable:
                _check_voxel_file(path, fmeta, shapes, expect)   # another model's file: error
                skipped += 1
                continue
        item = ds[i]
        bi, _, ins, _ = split_scene(scene_batch(item, dev), cfg.num_input_views)
        with torch.no_grad():
            V = model.encode_batch(bi)["V"][0].float().cpu()
        V16 = V.half()
        if not bool(torch.isfinite(V16).all()):
            raise RuntimeError(f"scene {entry.name}: V holds NaN/inf values (or exceeds float16)")
        write_safetensors(path, {"V": V16, "bounds": item["bounds"], "c2w": item["c2w"],
                                 "intrinsics": item["intrinsics"], "input_ids": torch.from_numpy(ins).long()},
                          {"format": VOXEL_FORMAT, "version": VOXEL_VERSION, "scene": entry.name,
                           "split": split, "scene_ae_config_hash": sae["config_hash"],
                           "scene_ae_weights_hash": sae["weights_hash"]})
        encoded += 1
    index = {"format": VOXEL_FORMAT, "version": VOXEL_VERSION, "data": str(Path(data).resolve()),
             "scene_ae": sae, "grid": list(cfg.grid), "channels": 1 + cfg.feat_dim,
             **image_size_record(cfg), "num_input_views": cfg.num_input_views, "scenes": scenes}
    index["stats"] = voxel_stats(out, index, progress=progress)
    atomic_write_json(index_path, index)
    return {"out": str(out), "encoded": encoded, "skipped": skipped, "scenes": len(scenes)}


class VoxelDataset(Dataset):
    """Scenes of one split of a voxel folder; item i = scene i.

    Item: V (1 + C) x X x Y x Z float32 (original units), bounds 2 x 3, c2w N x 4 x 4,
    intrinsics N x 4, input_ids K, name (str). All files of the split are checked (header
    only) when the dataset is built; a missing, corrupt or mismatched file raises DataError.
    """

    def __init__(self, voxdir: str | os.PathLike, split: str = "train", index: dict | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = Path(voxdir)
        self.index = index if index is not None else read_voxel_index(voxdir)
        self.split = split
        self.names = [s["name"] for s in self.index["scenes"] if s["split"] == split]
        if not self.names:
            raise DataError(f"{self.root / INDEX_FILE}: no scene has split {split!r}")
        expect = _expect_from_index(self.index)
        for name in self.names:
            path = scene_file(self.root, name)
            meta, shapes = peek_safetensors(path)
            _check_voxel_file(path, meta, shapes, expect)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict:
        return {**load_voxels(self.root, self.names[i], self.index), "name": self.names[i]}
