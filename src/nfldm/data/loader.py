"""PyTorch dataset of scenes (one item = V views of one scene), with an optional pack cache.

Cache: ``cache=True`` packs each scene once into ``<root>/.nfldm_cache/<scene>.safetensors``
(uint8 images N x H x W x 3, uint16 raw depth N x H x W, float64 intrinsics N x 4 and c2w
N x 4 x 4). Its metadata holds a fingerprint of the source files (paths, sizes, mtimes), so
a cache whose sources changed is rebuilt. Cached reads never decode PNGs.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as safetensors_save
from torch.utils.data import Dataset
from tqdm import tqdm

from nfldm.data.format import (
    SPLITS,
    DataError,
    SceneEntry,
    SceneMeta,
    check_cameras_in_bounds,
    decode_depth,
    read_dataset,
    read_frame_raw,
    read_transforms,
)
from nfldm.utils.io import atomic_write_bytes

__all__ = ["SceneDataset", "scene_item", "pack_dataset", "cache_path", "load_scene_arrays", "CACHE_DIR"]

CACHE_DIR = ".nfldm_cache"
CACHE_FORMAT = "nfldm-scene-cache"
CACHE_VERSION = "1"


def cache_path(root: str | os.PathLike, name: str) -> Path:
    """``<root>/.nfldm_cache/<name>.safetensors`` ('/' in a nested scene name becomes '__')."""
    return Path(root) / CACHE_DIR / (name.replace("/", "__") + ".safetensors")


def scene_fingerprint(meta: SceneMeta) -> str:
    """sha256 over (relative path, size, mtime_ns) of transforms.json and all frame files."""
    files = [meta.transforms_path]
    for f in meta.frames:
        files += [f.image_path, f.depth_path]
    digest = hashlib.sha256()
    for path in files:
        try:
            st = path.stat()
        except FileNotFoundError:
            raise DataError(f"{path}: file is missing") from None
        rel = os.path.relpath(path, meta.path)
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def read_scene_raw(meta: SceneMeta, frame_ids=None) -> dict[str, np.ndarray]:
    """Decode (and validate) frames from PNGs -> dict of V-frame arrays (V = len(frame_ids)).

    images uint8 V x H x W x 3, depth_raw uint16 V x H x W, intrinsics V x 4, c2w V x 4 x 4.
    """
    ids = list(range(len(meta))) if frame_ids is None else [int(i) for i in frame_ids]
    frames = [read_frame_raw(meta, i) for i in ids]
    return {
        "images": np.stack([f[0] for f in frames]),
        "depth_raw": np.stack([f[1] for f in frames]),
        "intrinsics": meta.intr[ids],
        "c2w": meta.c2w[ids],
    }


def _read_cache(path: Path, fingerprint: str, meta: SceneMeta) -> dict[str, np.ndarray] | None:
    """The cached arrays if the cache exists, is readable and matches ``fingerprint``."""
    if not path.is_file():
        return None
    try:
        with safe_open(path, framework="np") as f:
            md = f.metadata() or {}
            if md.get("fingerprint") != fingerprint or md.get("version") != CACHE_VERSION:
                return None
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, SafetensorError) as e:
        warnings.warn(f"{path}: unreadable cache, rebuilding it ({e})")
        return None
    if arrays.get("images") is None or arrays["images"].shape != (len(meta), meta.h, meta.w, 3):
        warnings.warn(f"{path}: cache does not match {meta.transforms_path}, rebuilding it")
        return None
    return arrays


def load_scene_arrays(meta: SceneMeta, cache_file: Path | None) -> dict[str, np.ndarray]:
    """All N frames of a scene as arrays (see :func:`read_scene_raw`).

    With ``cache_file``: read it if it is up to date, else decode the PNGs (validating them)
    and write it atomically. The fingerprint is taken before decoding, so files changed while
    packing make the cache stale rather than wrong.
    """
    if cache_file is None:
        return read_scene_raw(meta)
    fingerprint = scene_fingerprint(meta)
    arrays = _read_cache(cache_file, fingerprint, meta)
    if arrays is None:
        arrays = read_scene_raw(meta)
        md = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "fingerprint": fingerprint}
        atomic_write_bytes(cache_file, safetensors_save(arrays, metadata=md))
    return arrays


def _seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 64-bit seed from (seed, epoch, index)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0])


class SceneDataset(Dataset):
    """Scenes of one split; item i = V views of scene i.

    Item (a dict; the default DataLoader collation stacks it to B x V x ...):
      images      V x 3 x H x W float32 in [0, 1]
      depth       V x H x W float32 metres (0 where invalid)
      depth_valid V x H x W bool
      intrinsics  V x 4 float32 [fx, fy, cx, cy] (pixels)
      c2w         V x 4 x 4 float32 camera-to-world (OpenGL camera axes, z-up world)
      bounds      2 x 3 float32 [[xmin, ymin, zmin], [xmax, ymax, zmax]]
      frame_ids   V int64 indices of the views in the scene's frame list
      name        str

    num_views=None: all frames in order (scenes may differ in frame count: imported windows do;
    such items are not batched, every consumer takes one scene at a time);
    num_views=k: k distinct frames, sorted, drawn with a torch Generator seeded by
    (seed, epoch, index) so draws are reproducible and independent of DataLoader workers;
    call :meth:`set_epoch` to re-draw (before creating the DataLoader iterator; persistent
    workers keep the epoch they were started with).

    transforms.json of all scenes is validated when the dataset is built (image sizes must
    agree within the split, cameras must lie in the bounds); image files are validated when a
    scene is first read. Any problem raises :class:`DataError`; nothing is skipped.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", num_views: int | None = None,
                 cache: bool = False, seed: int = 0):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if num_views is not None and num_views < 1:
            raise ValueError(f"num_views must be None or >= 1, got {num_views}")
        self.root, self.split, self.num_views = Path(root), split, num_views
        self.cache, self.seed, self.epoch = cache, seed, 0
        self.index = read_dataset(root)
        self.entries: list[SceneEntry] = self.index.split(split)
        if not self.entries:
            raise DataError(f"{self.index.source}: no scene has split {split!r}")
        self.metas = [read_transforms(e.path) for e in self.entries]
        for entry, meta in zip(self.entries, self.metas):
            check_cameras_in_bounds(meta, entry.bounds, self.index.source)
        self._check_uniform()

    def _check_uniform(self) -> None:
        first, m0 = self.entries[0].name, self.metas[0]
        for meta in self.metas:
            tf = meta.transforms_path
            if (meta.w, meta.h) != (m0.w, m0.h):
                raise DataError(f"{tf}: images are {meta.w}x{meta.h}, but scene {first!r} of split "
                                f"{self.split!r} has {m0.w}x{m0.h}; a split needs one image size")
            if self.num_views is not None and len(meta) < self.num_views:
                raise DataError(f"{tf}: has {len(meta)} frames, fewer than num_views={self.num_views}")

    def set_epoch(self, epoch: int) -> None:
        """Re-draw the random view subsets (num_views=k) for this epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.entries)

    def frame_ids(self, i: int) -> np.ndarray:
        """Indices (V, sorted) of the views of scene i for the current epoch."""
        n = len(self.metas[i])
        if self.num_views is None:
            return np.arange(n)
        gen = torch.Generator().manual_seed(_seed(self.seed, self.epoch, i))
        return np.sort(torch.randperm(n, generator=gen)[: self.num_views].numpy())

    def __getitem__(self, i: int) -> dict:
        meta, entry, ids = self.metas[i], self.entries[i], self.frame_ids(i)
        if self.cache:
            arrays = load_scene_arrays(meta, cache_path(self.root, entry.name))
            arrays = {k: v[ids] for k, v in arrays.items()}
        else:
            arrays = read_scene_raw(meta, ids)
        depth, valid = decode_depth(arrays["depth_raw"], meta.depth_unit_scale_factor)
        return {
            "images": torch.from_numpy(arrays["images"]).permute(0, 3, 1, 2).float() / 255.0,
            "depth": torch.from_numpy(depth),
            "depth_valid": torch.from_numpy(valid),
            "intrinsics": torch.from_numpy(arrays["intrinsics"]).float(),
            "c2w": torch.from_numpy(arrays["c2w"]).float(),
            "bounds": torch.from_numpy(entry.bounds).float(),
            "frame_ids": torch.from_numpy(ids).long(),
            "name": entry.name,
        }


def scene_item(path: str | os.PathLike) -> dict:
    """The :class:`SceneDataset` item (all frames) of one scene folder: read through its dataset
    (dataset.json one folder up; its split) when it belongs to one, else as a one-scene dataset."""
    from nfldm.data.format import read_dataset

    path = Path(path)
    root, split = path, "train"
    if (path.parent / "dataset.json").is_file():
        for e in read_dataset(path.parent).scenes:
            if Path(e.path).resolve() == path.resolve():
                root, split = path.parent, e.split
    ds = SceneDataset(root, split)
    names = [e.name for e in ds.entries]
    return ds[names.index(path.name) if path.name in names else 0]


def pack_dataset(root: str | os.PathLike, progress: bool = True) -> list[Path]:
    """Build (or refresh) the cache of every scene of every split; returns the cache files.

    Validates everything the loader validates and raises :class:`DataError` on a problem.
    """
    index = read_dataset(root)
    paths = []
    for entry in tqdm(index.scenes, desc="packing scenes", unit="scene", disable=not progress):
        meta = read_transforms(entry.path)
        check_cameras_in_bounds(meta, entry.bounds, index.source)
        path = cache_path(root, entry.name)
        load_scene_arrays(meta, path)
        paths.append(path)
    return paths
