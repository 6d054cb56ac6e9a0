"""What a conditional sample is generated from: a BEV map (from a dataset scene, a ``bev.npz`` or a
floor plan PNG, optionally edited) and, with ``--path-from-scene``, a real scene's camera path.

    conditions_from(SRC)  ->  [SceneCondition]   one per map: a dataset folder gives every
                                                 scene of a split, a scene folder / file one

Used by :func:`nfldm.pipeline.generate.sample` (``nfldm sample --bev SRC``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nfldm.data.bev import add_wall_box, bev_image, erase_box, read_bev, read_bev_file, scene_bev_file
from nfldm.data.format import SPLITS, DataError, read_dataset, read_transforms
from nfldm.data.loader import read_scene_raw
from nfldm.utils.io import atomic_save_png, read_json

__all__ = ["SceneCondition", "conditions_from", "scene_path", "spread", "comparison_sheet"]


@dataclass
class SceneCondition:
    """One map to generate from. ``bev``: the map (:mod:`nfldm.data.bev` dict; None: no map);
    ``conditioned``: whether the samples are conditioned on it (False: an unconditional sample
    along ``scene``'s path, which keeps the scene's map only to be scored against it);
    ``scene``: the dataset scene folder it came from (None for a file); ``edits``: the edits
    applied, as text; ``source``: what was given."""

    source: str
    bev: dict | None
    scene: Path | None = None
    bounds: list | None = None          # the scene's box (dataset.json), 2 x 3
    edits: list[str] = field(default_factory=list)
    conditioned: bool = True


def _edit(bev: dict, erase_boxes, add_wall_boxes, heights) -> tuple[dict, list[str]]:
    edits = []
    for box in erase_boxes or ():
        bev = erase_box(bev, box, *heights)
        edits.append("erase-box " + " ".join(f"{v:g}" for v in box))
    for box in add_wall_boxes or ():
        bev = add_wall_box(bev, box)
        edits.append("add-wall-box " + " ".join(f"{v:g}" for v in box))
    return bev, edits


def conditions_from(src: str | os.PathLike | None, split: str = "test", scenes: str | os.PathLike | None = None,
                    erase_boxes=(), add_wall_boxes=(), heights: tuple[float, float] = (0.0, 3.5)) -> list[SceneCondition]:
    """The maps of ``src`` (None: no map) and the scenes of ``scenes`` (None: ``src``'s own, if it is a
    dataset or scene folder) whose camera paths the samples follow:

    - a dataset folder (dataset.json): every scene of ``split``, in the dataset's order;
    - a dataset scene folder: that scene;
    - a ``.npz`` BEV file or a ``.png`` floor plan (heights ``heights`` = floor, ceiling metres).

    ``erase_boxes`` / ``add_wall_boxes`` (x0, y0, x1, y1 metres each) edit every map
    (:func:`nfldm.data.bev.erase_box`, :func:`~nfldm.data.bev.add_wall_box`). DataError naming the
    source when it cannot be read."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if src is None and scenes is None:
        return []
    out = []
    for scene_dir, bounds in _scenes_of(src if scenes is None else scenes, split):
        out.append(SceneCondition(source=str(scene_dir), bev=None, scene=scene_dir.resolve(), bounds=bounds))
    if src is None:                         # unconditional along real paths: the scenes' maps, to score against
        for c in out:
            c.conditioned = False
            if scene_bev_file(c.scene) is not None:
                c.bev = read_bev(c.scene, *heights)
    else:
        if scenes is None and out:          # maps of the scenes themselves
            for c in out:
                c.bev = read_bev(c.scene, *heights)
        else:
            bev = read_bev(src, *heights)
            if not out:
                out = [SceneCondition(source=str(src), bev=bev)]
            for c in out:
                c.bev, c.source = bev, str(src)
    if not out:
        raise DataError(f"{scenes}: not a dataset or scene folder (a camera path comes from a scene)")
    if (erase_boxes or add_wall_boxes) and src is None:
        raise ValueError("map edits (--erase-box, --add-wall-box) need a map (--bev)")
    for c in out:
        if c.bev is not None and c.conditioned:
            c.bev, c.edits = _edit(c.bev, erase_boxes, add_wall_boxes, heights)
    return out


def spread(items: list, k: int) -> list:
    """k items evenly spread over the list (all of them if it has no more): the conditions a
    benchmark uses out of a whole split."""
    if k >= len(items):
        return list(items)
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)] if k > 1 else items[:1]


def _scenes_of(src, split: str) -> list[tuple[Path, list | None]]:
    """[(scene folder, its box 2 x 3)] of a dataset folder's split or of one scene folder; [] for a
    file."""
    if src is None:
        return []
    p = Path(src)
    if (p / "dataset.json").is_file():
        ds = read_dataset(p)
        entries = ds.split(split)
        if not entries:
            raise DataError(f"{p / 'dataset.json'}: no scene has split {split!r}")
        return [(Path(e.path), np.asarray(e.bounds).tolist() if e.bounds is not None else None) for e in entries]
    if (p / "transforms.json").is_file():
        bounds = None
        parent = p.parent
        if (parent / "dataset.json").is_file():
            for e in read_dataset(parent).scenes:
                if Path(e.path).resolve() == p.resolve():
                    bounds = np.asarray(e.bounds).tolist() if e.bounds is not None else None
        return [(p, bounds)]
    if p.is_dir():
        raise DataError(f"{p}: neither a dataset folder (dataset.json) nor a scene folder (transforms.json)")
    return []


def scene_path(cond: SceneCondition, render_bounds: torch.Tensor) -> torch.Tensor:
    """The camera path of ``cond.scene`` (N x 4 x 4 camera-to-world, the scene's frame), checked to
    lie in the box the run renders in: DataError naming the scene when its box differs (a scene
    in another convention) or a camera is outside the box."""
    meta = read_transforms(cond.scene)
    c2w = torch.as_tensor(np.asarray(meta.c2w), dtype=torch.float32)
    if cond.bounds is not None:
        b = torch.as_tensor(cond.bounds, dtype=torch.float32)
        if b.shape != render_bounds.shape or (b - render_bounds).abs().max() > 1e-3:
            raise DataError(f"{cond.scene}: the scene's box {b.tolist()} is not the box the run renders in "
                            f"{render_bounds.tolist()}; its camera path cannot be followed")
    pos = c2w[:, :3, 3]
    if bool(((pos < render_bounds[0]) | (pos > render_bounds[1])).any()):
        raise DataError(f"{cond.scene}: a camera lies outside the box {render_bounds.tolist()}")
    return c2w


def comparison_sheet(columns: dict[str, str | os.PathLike], out: str | os.PathLike, frames: int = 4,
                     max_rows: int = 16, size: int = 64) -> Path:
    """A PNG contact sheet comparing sample folders made along the same real paths (``nfldm sample
    --path-from-scene``): one row per scene with its map, ``frames`` real frames, then the same
    frames of each folder in ``columns`` ({label: folder}, e.g. conditional, unconditional), each
    folder's frames followed by its top-down map picture. Rows follow the first folder's samples;
    a folder is matched by scene. Returns the path written."""
    def samples_of(folder) -> dict[str, Path]:
        got = {}
        for d in sorted(Path(folder).glob("sample_*")):
            c = read_json(d / "condition.json", "sample condition", DataError)
            if c.get("path_from_scene"):
                got.setdefault(c["path_from_scene"], d)
        if not got:
            raise DataError(f"{folder}: no sample made along a real path (nfldm sample --path-from-scene)")
        return got

    def fit(img: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(img).resize((size, size), Image.NEAREST))

    labels = list(columns)
    per = {k: samples_of(v) for k, v in columns.items()}
    rows = []
    for scene in list(per[labels[0]])[:max_rows]:
        meta = read_transforms(scene)
        pick = np.round(np.linspace(0, len(meta) - 1, frames)).astype(int)
        real = read_scene_raw(meta, pick)["images"]
        d0 = per[labels[0]][scene]
        bev = read_bev_file(d0 / "bev.npz") if (d0 / "bev.npz").is_file() else None
        tiles = [fit(bev_image(bev, size)) if bev is not None else np.zeros((size, size, 3), np.uint8)]
        tiles += [fit(im) for im in real]
        for k in labels:
            d = per[k].get(scene)
            if d is None:
                tiles += [np.zeros((size, size, 3), np.uint8)] * (frames + 1)
                continue
            for i in pick:
                tiles.append(fit(np.asarray(Image.open(d / "frames" / f"frame_{i:04d}.png").convert("RGB"))))
            pic = np.asarray(Image.open(d / "map.png").convert("RGB")) if (d / "map.png").is_file() else None
            tiles.append(fit(pic[:, -pic.shape[0]:]) if pic is not None else np.zeros((size, size, 3), np.uint8))
        gap = np.full((size, 2, 3), 255, np.uint8)
        rows.append(np.concatenate([x for t in tiles for x in (t, gap)], 1))
    sheet = np.concatenate([x for r in rows for x in (r, np.full((2, r.shape[1], 3), 255, np.uint8))], 0)
    atomic_save_png(out, sheet)
    return Path(out)
