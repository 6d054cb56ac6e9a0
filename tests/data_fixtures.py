"""Small synthetic datasets for the data tests (written with nfldm.data.format)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from nfldm.camera import pose_from_position_yaw
from nfldm.data.format import write_dataset_index, write_scene

H = W = 64
N_FRAMES = 4
INTR = [40.0, 48.0, 32.0, 32.0]
BOUNDS = [[-4.0, -4.0, -1.0], [4.0, 4.0, 3.0]]
# name, split, group
SCENES = [("scene_0000", "train", "wad:MAP01"), ("scene_0001", "train", "wad:MAP02"),
          ("scene_0002", "test", "wad:MAP03")]


def make_scene_arrays(seed: int, n: int = N_FRAMES, h: int = H, w: int = W):
    """-> images uint8 n x h x w x 3, depth float n x h x w (some invalid), c2w n x 4 x 4."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
    depth = 2.0 + 0.5 * rng.random((n, h, w))
    depth[:, 0, :4] = 0.0  # invalid pixels
    depth[:, 1, :4] = np.nan
    pos = torch.from_numpy(rng.uniform([-2, -2, 0], [2, 2, 1.5], size=(n, 3)))
    yaw = torch.from_numpy(rng.uniform(-math.pi, math.pi, size=n))
    c2w = pose_from_position_yaw(pos, yaw).numpy()
    return images, depth, c2w


def make_bev(seed: int, res: int = 32, bounds=None) -> dict:
    """A BEV map over the footprint of ``bounds`` (None: BOUNDS): a rectangular room (walls on its
    border, floor 0 m, ceiling 2.5 m inside) whose size depends on ``seed``; outside it NaN heights."""
    wall = np.zeros((res, res), np.float32)
    inside = np.zeros((res, res), np.float32)
    a, b = 2 + seed % 3, res - 3 - (seed % 2) * 4
    inside[a:b + 1, a:b + 1] = 1.0
    wall[a, a:b + 1] = wall[b, a:b + 1] = wall[a:b + 1, a] = wall[a:b + 1, b] = 1.0
    floor = np.where(inside > 0, 0.0, np.nan).astype(np.float32)
    ceiling = np.where(inside > 0, 2.5, np.nan).astype(np.float32)
    return {"wall": wall, "inside": inside, "floor": floor, "ceiling": ceiling,
            "bounds_xy": np.asarray(BOUNDS if bounds is None else bounds, np.float32)[:, :2]}


def with_look(bev: dict, light: float = 0.6, seed: int = 0) -> dict:
    """``bev`` with a look: uniform light, floor / ceiling colours by seed, wall colour on its walls."""
    from nfldm.data.bev import LOOK_KEYS

    rng = np.random.default_rng(seed)
    inside, wall = bev["inside"] > 0, bev["wall"] > 0
    out = dict(bev)
    vals = dict(zip(LOOK_KEYS, [light, *rng.uniform(0, 1, 9)]))
    for k in LOOK_KEYS:
        out[k] = np.where(wall if k.startswith("wall") else inside, vals[k], np.nan).astype(np.float32)
    return out


def bev_bytes(bev: dict) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **bev)
    return buf.getvalue()


def make_dataset(root: Path, bev: bool = False, bounds=None, bev_res: int = 32) -> dict:
    """Write the 3-scene dataset of SCENES into root (with ``bev``, each scene with a bev.npz of
    :func:`make_bev` at ``bev_res`` cells); ``bounds``: the scenes' box (None: BOUNDS); returns
    {name: (images, depth, c2w)}."""
    arrays = {}
    for k, (name, _, group) in enumerate(SCENES):
        arrays[name] = make_scene_arrays(k)
        extra = {"map": group, "seed": k}
        files = None
        if bev:
            extra["bev_file_path"] = "bev.npz"
            files = {"bev.npz": bev_bytes(make_bev(k, bev_res, bounds))}
        write_scene(root / name, *arrays[name], INTR, extra=extra, files=files)
    write_dataset_index(root, [{"name": n, "split": s, "group": g, "bounds": BOUNDS if bounds is None else bounds}
                               for n, s, g in SCENES])
    return arrays


def random_V(B: int = 2, seed: int = 0, cfg=None):
    """V like stage 1's for a latent-ae config (default: the smoke preset): sigma >= 0 with
    exact zeros (unseen) and a few dense voxels, features zero where sigma is zero.
    B x channels x X x Y x Z."""
    if cfg is None:
        from nfldm.latent_ae.config import preset

        cfg = preset("smoke").model
    g = torch.Generator().manual_seed(seed)
    X, Y, Z = cfg.grid
    sigma = torch.rand(B, 1, X, Y, Z, generator=g) ** 6 * 20
    sigma = sigma * (torch.rand(B, 1, X, Y, Z, generator=g) > 0.5)
    feat = 0.5 * torch.randn(B, cfg.channels - 1, X, Y, Z, generator=g) * (sigma > 0)
    return torch.cat([sigma, feat], 1)


def randomise_zero_init(model: torch.nn.Module, seed: int = 0) -> None:
    """Zero-initialised output layers make a fresh model ignore its inputs; give them values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if bool((p == 0).all()):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
