"""Contact sheet of a dataset: RGB, depth and BEV per scene, and the camera path seen from above."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from nfldm.data.bev import bev_image, read_bev_file
from nfldm.data.format import load_frame, read_dataset, read_transforms
from nfldm.utils.plot import colorize
from nfldm.utils.io import atomic_save_png

def draw_path(img: np.ndarray, c2w: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Draw camera positions and view directions (c2w: N x 4 x 4) on a north-up BEV image."""
    size = img.shape[0]
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    lo, hi = bounds[0, :2], bounds[1, :2]

    def to_px(p):
        u = (p[0] - lo[0]) / (hi[0] - lo[0]) * size
        v = (1 - (p[1] - lo[1]) / (hi[1] - lo[1])) * size
        return float(u), float(v)

    pts = [to_px(T[:3, 3]) for T in c2w]
    draw.line(pts, fill=(0, 255, 0), width=1)
    for T, (u, v) in zip(c2w, pts):
        fwd = -T[:3, 2]
        u2, v2 = to_px(T[:3, 3] + 0.8 * fwd)
        draw.line([(u, v), (u2, v2)], fill=(255, 0, 0), width=1)
        draw.ellipse([u - 1.5, v - 1.5, u + 1.5, v + 1.5], fill=(0, 255, 0))
    return np.asarray(pil)


def contact_sheet(root: str | Path, out: str | Path, max_scenes: int = 6, frames_per_scene: int = 4, cell: int = 128) -> Path:
    """Write a PNG: one row per scene with ``frames_per_scene`` RGB frames, their depth maps,
    the BEV map and the camera path over it. Depth is coloured over 0-15 m (black = invalid)."""
    index = read_dataset(root)
    rows = []
    for entry in index.scenes[:max_scenes]:
        meta = read_transforms(entry.path)
        idx = np.linspace(0, len(meta.frames) - 1, frames_per_scene).round().astype(int)
        tiles = []
        depths = []
        for i in idx:
            rgb, depth, valid = load_frame(meta, int(i))
            tiles.append((rgb * 255).round().astype(np.uint8))
            depths.append(colorize(depth, 0.0, 15.0, invalid=~valid))
        tiles = [np.asarray(Image.fromarray(t).resize((cell, cell), Image.NEAREST)) for t in tiles + depths]
        bev_file = meta.extra.get("bev_file_path")
        if bev_file and (Path(entry.path) / bev_file).exists():
            bev = read_bev_file(Path(entry.path) / bev_file)
            top = bev_image(bev, cell)
        else:
            top = np.full((cell, cell, 3), 40, np.uint8)
        tiles.append(draw_path(np.ascontiguousarray(top), meta.c2w, np.asarray(entry.bounds)))
        rows.append(np.concatenate(tiles, 1))
    sheet = np.concatenate(rows, 0)
    atomic_save_png(out, sheet)
    return Path(out)
