"""Stage-3 data: the latents (g, c, f) of every scene, written by ``nfldm encode-latents``.

LATDIR/<scene>.safetensors holds g (g_dim), c (c_ch x X/d x Y/d x Zc) and f (f_ch x X x Y)
before quantisation, the camera trajectory (c2w N x 4 x 4, intrinsics N x 4), bounds 2 x 3
and input_ids; optionally ``cond`` (L x cond_dim condition tokens, e.g. an encoded BEV map:
the hook for conditional generation). LATDIR/index.json holds the splits, the latent mode
(``latents``), the shapes and the per-channel mean / std of g, c, f over the train split.
A folder of an ablation latent-ae (``latents`` "c" or "g", docs/ldm.md "Ablations") holds
only c or only g; folders written before the switch existed have no ``latents`` key and are
"gcf".

A diffusion model sees standardised latents: per g dimension / per c, f channel
``(x - mean) / std`` with the train-split statistics (:class:`LatentStats`); c with its
vertical axis folded into channels (``fold``: channel k * Zc + z), so psi_c is a 2D model.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from nfldm.data.bev import GRID_CHANNELS, LOOK_CHANNELS, scene_look
from nfldm.data.format import SPLITS, DataError
from nfldm.data.tensors import read_safetensors, scene_file
from nfldm.latent_ae.latents import INDEX_FILE, load_latent_file, read_latent_index
from nfldm.latent_ae.model import fold, unfold
from nfldm.ldm.trajectory import encode_trajectory

__all__ = ["STD_FLOOR", "LatentStats", "LatentDataset", "render_setup", "unfold_c", "decode_items",
           "scene_source", "first_scenes", "look_stats"]

STD_FLOOR = 1e-3     # a (near-)constant latent channel is divided by at most this


class LatentStats:
    """Per-dimension (g) / per-channel (c, f) mean and std of the train split; standardises and
    un-standardises latents. Built from ``index["stats"]`` (a plain dict, stored in run configs;
    an ablation folder has the statistics of its latents only)."""

    def __init__(self, stats: dict):
        def t(key, part):
            return torch.as_tensor(stats[key][part], dtype=torch.float32)

        keys = [k for k in ("g", "c", "f") if k in stats]
        self.mean = {k: t(k, "mean") for k in keys}
        self.std = {k: t(k, "std").clamp(min=STD_FLOOR) for k in keys}

    @staticmethod
    def _view(key: str, x: Tensor, which: dict) -> Tensor:
        """The statistic shaped to broadcast: g over its last axis, c over axis -4 (channels of
        [B x] c_ch x X x Y x Zc), f over axis -3 (channels of [B x] f_ch x X x Y)."""
        v = which[key].to(x.device, x.dtype)
        if key == "g":
            return v
        return v.view(-1, *([1] * (3 if key == "c" else 2)))

    def normalise(self, key: str, x: Tensor) -> Tensor:
        return (x - self._view(key, x, self.mean)) / self._view(key, x, self.std)

    def denormalise(self, key: str, x: Tensor) -> Tensor:
        return x * self._view(key, x, self.std) + self._view(key, x, self.mean)


def scene_source(entry: dict) -> str:
    """The scene an index entry was made from: its ``source`` for a turned / mirrored copy
    (``encode-latents --augment``), else its own name."""
    return entry.get("source", entry["name"])


def first_scenes(index: dict, split: str, max_scenes: int = 0, where: str | os.PathLike = INDEX_FILE) -> list[str]:
    """Names of the scenes of ``split`` in index order; with ``max_scenes`` K > 0 only those of
    the split's first K source scenes, each with its turned / mirrored copies
    (``encode-latents --augment``; a copy's entry names its ``source``). ValueError naming
    ``where`` when the split has fewer than K source scenes."""
    if max_scenes < 0:
        raise ValueError(f"max_scenes must be >= 0, got {max_scenes}")
    entries = [s for s in index["scenes"] if s["split"] == split]
    if not max_scenes:
        return [s["name"] for s in entries]
    sources = list(dict.fromkeys(scene_source(s) for s in entries))
    if max_scenes > len(sources):
        raise ValueError(f"{where}: asked for the first {max_scenes} {split} scenes, but the folder has "
                         f"{len(sources)}")
    keep = set(sources[:max_scenes])
    return [s["name"] for s in entries if scene_source(s) in keep]


class LatentDataset(Dataset):
    """Scenes of one split of a latent folder, standardised; item i = scene i.

    Item: g (g_dim), traj (9 T, :func:`~nfldm.ldm.trajectory.encode_trajectory`), c folded
    (c_ch Zc x X/d x Y/d), f (f_ch x X x Y), all float32 (of g, c, f only those the folder
    holds); ``cond`` (L x cond_dim) when the files hold one; ``bev`` (the map) and, when the map
    carries its look, ``look`` (10, :func:`~nfldm.data.bev.scene_look`, not standardised). Every file of the split is read
    and checked when the dataset is built (they are small and kept in memory).
    """

    def __init__(self, latdir: str | os.PathLike, split: str = "train", traj_frames: int = 8,
                 index: dict | None = None, stats: dict | None = None, max_scenes: int = 0):

        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = Path(latdir)
        self.index = index if index is not None else read_latent_index(latdir)
        self.stats = LatentStats(stats if stats is not None else self.index["stats"])
        self.split, self.traj_frames = split, traj_frames
        self.names = first_scenes(self.index, split, max_scenes, self.root / INDEX_FILE)
        if not self.names:
            raise DataError(f"{self.root / INDEX_FILE}: no scene has split {split!r}")
        self.items = []
        has_cond = None
        for name in self.names:
            path = scene_file(self.root, name)
            t = load_latent_file(path, self.index["shapes"])
            if has_cond is None:
                has_cond = "cond" in t
            elif has_cond != ("cond" in t):
                raise DataError(f"{path}: {'has' if 'cond' in t else 'lacks'} a 'cond' tensor, unlike "
                                "the folder's first scene (all or none must have one)")
            shapes = self.index["shapes"]
            item = {}
            if "g" in shapes:
                item["g"] = self.stats.normalise("g", t["g"])
            item["traj"] = encode_trajectory(t["c2w"], t["bounds"], traj_frames)
            if "c" in shapes:
                item["c"] = fold(self.stats.normalise("c", t["c"])[None])[0]
            if "f" in shapes:
                item["f"] = self.stats.normalise("f", t["f"])
            if "cond" in t:
                item["cond"] = t["cond"]
            if "bev" in t:
                item["bev"] = t["bev"]
                if t["bev"].shape[0] == GRID_CHANNELS + LOOK_CHANNELS and bool(t["bev"][-1].max() > 0):
                    item["look"] = scene_look(t["bev"][None].float())[0]
            self.items.append(item)
        self.has_cond = bool(has_cond)
        self.has_bev = all("bev" in it for it in self.items)
        self.has_look = all("look" in it for it in self.items)
        self.cond_shape = tuple(self.items[0]["cond"].shape) if self.has_cond else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return dict(self.items[i])


def look_stats(ds: LatentDataset) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of the scenes' looks (``scene_look``) over a dataset (the train split), each
    std at least :data:`STD_FLOOR`; DataError when a scene's map carries no look."""
    if not ds.has_look:
        raise DataError(f"{ds.root / INDEX_FILE}: scene_look needs the map's look in every scene's latents (nfldm "
                        "data add-look on the dataset, then nfldm encode-latents --refresh-maps)")
    x = torch.stack([it["look"] for it in ds.items]).double()
    return tuple(x.mean(0).tolist()), tuple(x.std(0).clamp(min=STD_FLOOR).tolist())


def unfold_c(c_folded: Tensor, c_channels: int) -> Tensor:
    """B x (c_ch Zc) x X/d x Y/d -> B x c_ch x X/d x Y/d x Zc (inverse of the dataset's fold)."""
    return unfold(c_folded, c_channels)


@torch.no_grad()
def decode_items(lae, stats: LatentStats, items: list[dict], c_channels: int, device) -> Tensor:
    """V of B :class:`LatentDataset` items (standardised g, folded c, f) decoded by the latent-ae
    ``lae`` as sampled latents are (quantised): -> B x K x X x Y x Z float32 on ``device``."""
    lat = {k: torch.stack([it[k] for it in items]) for k in ("g", "c", "f")}
    g = stats.denormalise("g", lat["g"])
    c = stats.denormalise("c", unfold_c(lat["c"], c_channels))
    f = stats.denormalise("f", lat["f"])
    return lae.decode_latents(g.to(device), c.to(device), f.to(device)).float()


def render_setup(latdir: str | os.PathLike, index: dict) -> dict:
    """Bounds and intrinsics for rendering generated scenes, from the train split: the scenes'
    common box (the mean box, with ``bounds_vary`` True, if they differ) and the first frame's
    intrinsics of the first train scene."""
    names = [s["name"] for s in index["scenes"] if s["split"] == "train"]
    if not names:
        raise DataError(f"{Path(latdir) / INDEX_FILE}: no train scene")
    boxes, intr = [], None
    for name in names:
        t, _ = read_safetensors(scene_file(latdir, name))
        boxes.append(t["bounds"].double())
        if intr is None:
            intr = t["intrinsics"][0].double()
    boxes = torch.stack(boxes)
    vary = bool((boxes - boxes[0]).abs().max() > 1e-4)
    return {"bounds": boxes.mean(0).tolist(), "bounds_vary": vary, "intrinsics": intr.tolist()}
