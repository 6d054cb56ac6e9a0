"""The bird's-eye-view (BEV) map of a scene: its file (``bev.npz``, written by the ViZDoom
collector), a floor plan drawn as a PNG, map edits, and the map as a tensor the diffusion
levels are conditioned on.

A BEV map is a dict of float32 R x R arrays indexed [x, y] over the scene box's footprint
(``bounds_xy`` 2 x 2 metres, [[x0, y0], [x1, y1]]; cell (i, j) covers x in cell i, y in cell j,
as the voxel grid's X x Y footprint):

    wall     1 where an impassable line (a wall) passes through the cell
    inside   1 where the cell centre is inside the map (on some floor)
    floor    floor height, metres relative to the scene's z = 0 (NaN outside the map)
    ceiling  ceiling height, metres (NaN outside the map)

and, optionally, its look (:data:`LOOK_KEYS`; the ViZDoom collector writes it from the WAD,
``nfldm data add-look`` adds it to scenes collected before it did):

    light                      sector light level / 255 (NaN outside the map)
    floor_r/g/b, ceiling_r/g/b mean colour of the floor / ceiling flat, RGB in [0, 1] (NaN outside)
    wall_r/g/b                 mean colour of a wall's texture (NaN where no wall passes)

:func:`bev_grid` turns it into the condition tensor (4 x S x S: wall, inside, floor / 4 m,
ceiling / 4 m, the heights 0 outside the map; with ``look``, 4 + 11 channels: the look's 10
averaged over the cell's inside / wall part, 0 where there is none, and a look-presence channel,
1 when the map has its look, all 11 zero when it has not, e.g. a drawn floor plan) at the
latent footprint's size S.

A floor plan PNG (:func:`read_floor_plan`), north up (image rows run from +y down to -y,
columns from -x to +x), covering the whole box: dark pixels (luminance < 0.3, e.g. black) are
walls, light pixels (> 0.7, e.g. white) are floor, anything between (e.g. mid grey) or
transparent is outside the map. Floor and ceiling heights are the defaults given (the
dataset's typical ones).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nfldm.data.format import DataError, read_transforms
from nfldm.utils.io import atomic_write_bytes
from nfldm.utils.plot import colorize

__all__ = ["BEV_KEYS", "LOOK_KEYS", "GRID_CHANNELS", "LOOK_CHANNELS", "SCENE_LOOK_DIM", "scene_look", "has_look", "HEIGHT_SCALE", "BEV_FILE", "read_bev", "read_bev_file", "read_floor_plan",
           "bev_grid", "erase_box", "add_wall_box", "write_bev", "bev_image", "typical_heights", "scene_bev_file",
           "crop_bev", "square_box", "masked_mean_pool"]

BEV_KEYS = ("wall", "inside", "floor", "ceiling")
LOOK_KEYS = ("light", "floor_r", "floor_g", "floor_b", "ceiling_r", "ceiling_g", "ceiling_b", "wall_r", "wall_g", "wall_b")
GRID_CHANNELS = 4            # the condition tensor: wall, inside, floor / HEIGHT_SCALE, ceiling / HEIGHT_SCALE
LOOK_CHANNELS = len(LOOK_KEYS) + 1   # ... with ``look``: the look's channels and its presence
SCENE_LOOK_DIM = len(LOOK_KEYS)      # a scene's overall look (:func:`scene_look`)
HEIGHT_SCALE = 4.0           # metres per unit of the height channels
BEV_FILE = "bev.npz"
DEFAULT_BOUNDS_XY = ((-8.0, -8.0), (8.0, 8.0))   # the ViZDoom collector's box (extent 16 m)


def scene_bev_file(scene_dir: str | os.PathLike) -> Path | None:
    """The BEV file of a dataset scene folder (``nfldm.bev_file_path`` of its transforms.json),
    or None when the scene has none."""
    meta = read_transforms(scene_dir)
    name = meta.extra.get("bev_file_path")
    if not name:
        return None
    path = Path(scene_dir) / name
    return path if path.is_file() else None


def _check(bev: dict, where) -> dict:
    for key in BEV_KEYS:
        if key not in bev:
            raise DataError(f"{where}: BEV array {key!r} is missing (a BEV map holds {', '.join(BEV_KEYS)})")
    shape = bev["wall"].shape
    if len(shape) != 2 or shape[0] < 2 or shape[0] != shape[1]:
        raise DataError(f"{where}: BEV arrays must be square R x R, got wall {shape}")
    for key in BEV_KEYS:
        if bev[key].shape != shape:
            raise DataError(f"{where}: BEV array {key} has shape {bev[key].shape}, wall has {shape}")
    for key in ("wall", "inside"):
        if not np.isfinite(bev[key]).all():
            raise DataError(f"{where}: BEV array {key} holds NaN or infinite values")
    b = np.asarray(bev.get("bounds_xy", DEFAULT_BOUNDS_XY), dtype=np.float32)
    if b.shape != (2, 2) or not np.isfinite(b).all() or not (b[1] > b[0]).all():
        raise DataError(f"{where}: bounds_xy must be 2 x 2 [[x0, y0], [x1, y1]] with x1 > x0, y1 > y0, got {b.tolist()}")
    looks = [k for k in LOOK_KEYS if k in bev]
    if looks and len(looks) != len(LOOK_KEYS):
        missing = ", ".join(k for k in LOOK_KEYS if k not in bev)
        raise DataError(f"{where}: the map's look is incomplete ({missing} missing; a look is {', '.join(LOOK_KEYS)})")
    for key in looks:
        if bev[key].shape != shape:
            raise DataError(f"{where}: BEV array {key} has shape {bev[key].shape}, wall has {shape}")
        if np.isinf(bev[key]).any():
            raise DataError(f"{where}: BEV array {key} holds infinite values")
    out = {k: np.asarray(bev[k], dtype=np.float32) for k in (*BEV_KEYS, *looks)}
    out["bounds_xy"] = b
    return out


def has_look(bev: dict) -> bool:
    """Whether a BEV map carries its look (:data:`LOOK_KEYS`)."""
    return all(k in bev for k in LOOK_KEYS)


def read_bev_file(path: str | os.PathLike) -> dict:
    """A ``bev.npz`` (arrays wall, inside, floor, ceiling, optional bounds_xy); DataError naming
    the file if it is missing, corrupt or malformed."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            bev = {k: z[k] for k in z.files}
    except FileNotFoundError as e:
        raise DataError(f"{path}: file is missing") from e
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the BEV map ({type(e).__name__}: {e})") from e
    return _check(bev, path)


def read_floor_plan(path: str | os.PathLike, floor: float = 0.0, ceiling: float = 3.5,
                    bounds_xy=DEFAULT_BOUNDS_XY) -> dict:
    """A floor plan PNG drawn in a paint program (module docstring: dark = wall, light = floor,
    mid grey / transparent = outside; north up) -> a BEV map at the image's size (a non-square
    image is stretched to a square), heights ``floor`` and ``ceiling`` (metres)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im = im.convert("RGBA")
            side = max(im.size)
            if im.size[0] != im.size[1]:
                im = im.resize((side, side), Image.NEAREST)
            a = np.asarray(im).astype(np.float32) / 255.0
    except FileNotFoundError as e:
        raise DataError(f"{path}: file is missing") from e
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"{path}: cannot read the floor plan image ({type(e).__name__}: {e})") from e
    if not floor < ceiling:
        raise DataError(f"{path}: the floor height {floor} m must be below the ceiling height {ceiling} m")
    lum = 0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]
    opaque = a[..., 3] > 0.5
    wall = opaque & (lum < 0.3)
    inside = opaque & ((lum > 0.7) | wall)
    if not wall.any() and not inside.any():
        raise DataError(f"{path}: the floor plan has neither walls (dark pixels) nor floor (light pixels)")
    # image rows run from +y down to -y, columns from -x to +x -> index [x, y]
    to_xy = lambda m: np.ascontiguousarray(np.flip(m, 0).T)          # noqa: E731
    inside_xy = to_xy(inside).astype(np.float32)
    bev = {"wall": to_xy(wall).astype(np.float32), "inside": inside_xy,
           "floor": np.where(inside_xy > 0, floor, np.nan).astype(np.float32),
           "ceiling": np.where(inside_xy > 0, ceiling, np.nan).astype(np.float32), "bounds_xy": bounds_xy}
    return _check(bev, path)


def read_bev(src: str | os.PathLike, floor: float = 0.0, ceiling: float = 3.5) -> dict:
    """A BEV map from ``src``: a dataset scene folder (its bev.npz), a ``.npz`` file, or a floor
    plan ``.png`` (heights ``floor`` / ``ceiling``). DataError naming ``src`` otherwise."""
    src = Path(src)
    if src.is_dir():
        if not (src / "transforms.json").is_file():
            raise DataError(f"{src}: not a dataset scene folder (no transforms.json); pass a scene folder, "
                            "a bev.npz or a floor plan .png")
        path = scene_bev_file(src)
        if path is None:
            raise DataError(f"{src}: the scene has no BEV map (its transforms.json names no existing "
                            "nfldm.bev_file_path)")
        return read_bev_file(path)
    if src.suffix.lower() == ".npz":
        return read_bev_file(src)
    if src.suffix.lower() == ".png":
        return read_floor_plan(src, floor, ceiling)
    if not src.exists():
        raise DataError(f"{src}: file is missing")
    raise DataError(f"{src}: not a BEV map (a scene folder, a .npz or a .png floor plan)")


def bev_grid(bev: dict, size: int, look: bool = False) -> Tensor:
    """The condition tensor of a BEV map at the latent footprint's size: 4 x size x size float32,
    channels wall (1 where any wall passes through the cell), inside (the fraction of the
    cell inside the map), floor and ceiling (mean height over the cell's inside part / 4 m;
    0 where no part is inside). A map of R < size cells is sampled nearest.

    ``look``: (4 + 11) x size x size: then light and the floor and ceiling colours (mean over
    the cell's inside part), the wall colour (mean over its wall part), 0 where there is none,
    and the look's presence (1 everywhere when the map has a look; the 11 channels all 0 when
    it has none)."""
    grid = _geometry_grid(bev, size)
    if not look:
        return grid
    extra = torch.zeros(LOOK_CHANNELS, size, size)
    if has_look(bev):
        def pooled(keys, where):
            m = torch.from_numpy((np.asarray(where) > 0).astype(np.float32))[None, None]
            a = torch.from_numpy(np.stack([np.nan_to_num(np.asarray(bev[k], np.float32)) for k in keys]))[None]
            if m.shape[-1] < size:
                a, m = (F.interpolate(x, size=(size, size), mode="nearest") for x in (a, m))
            return masked_mean_pool(a, m, size)[0]
        wall = np.asarray(bev["wall"]) > 0
        extra[:7] = pooled(LOOK_KEYS[:7], np.asarray(bev["inside"]) > 0)
        extra[7:10] = pooled(LOOK_KEYS[7:], wall & np.isfinite(np.asarray(bev["wall_r"])))
        extra[10] = 1.0
    return torch.cat([grid, extra], 0)


def scene_look(maps: Tensor) -> Tensor:
    """A scene's overall look from maps with the look's 11 channels last and wall, inside first
    (:func:`bev_grid` with ``look``, B x 15 x H x W; or a level's BEV maps): light and the floor /
    ceiling colours averaged over the inside (weighted by the inside fraction), the wall colour
    over the wall cells -> B x 10 (:data:`LOOK_KEYS`' order; 0 for a map without its look)."""
    look, wall, inside = maps[:, -LOOK_CHANNELS:].float(), maps[:, 0:1].float(), maps[:, 1:2].float()
    by = lambda x, w: (x * w).sum((2, 3)) / w.sum((2, 3)).clamp(min=1e-6)     # noqa: E731
    return torch.cat([by(look[:, :7], inside), by(look[:, 7:10], (wall > 0).float())], 1)


def masked_mean_pool(values: Tensor, support: Tensor, size) -> Tensor:
    """``values`` (B x C x H x W) averaged over the cells where ``support`` (B x 1 x H x W) is
    > 0, pooled to ``size`` (adaptive): B x C x size; 0 where a pooled cell has no support."""
    w = (support > 0).to(values.dtype)
    frac = F.adaptive_avg_pool2d(w, size)
    return F.adaptive_avg_pool2d(values * w, size) / frac.clamp(min=1e-6) * (frac > 0)


def _geometry_grid(bev: dict, size: int) -> Tensor:
    """:func:`bev_grid`'s 4 geometry channels."""
    wall = torch.from_numpy(np.asarray(bev["wall"], np.float32))[None, None]
    inside = torch.from_numpy(np.asarray(bev["inside"], np.float32))[None, None]
    heights = [torch.from_numpy(np.nan_to_num(np.asarray(bev[k], np.float32) * (np.asarray(bev["inside"]) > 0)))
               [None, None] for k in ("floor", "ceiling")]
    R = wall.shape[-1]
    if R < size:
        up = lambda x: F.interpolate(x, size=(size, size), mode="nearest")   # noqa: E731
        wall, inside, heights = up(wall), up(inside), [up(h) for h in heights]
    w = F.adaptive_max_pool2d(wall, size)
    ins = F.adaptive_avg_pool2d(inside, size)
    hs = [F.adaptive_avg_pool2d(h * (inside > 0), size) / ins.clamp(min=1e-6) * (ins > 0) / HEIGHT_SCALE
          for h in heights]
    return torch.cat([w, ins, *hs], 1)[0].float()


def _box_cells(bev: dict, box) -> tuple[slice, slice]:
    """Cells of the map whose centres lie in ``box`` (x0, y0, x1, y1 metres)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"a box is x0 y0 x1 y1 with x1 > x0 and y1 > y0 (metres), got {list(box)}")
    b = bev["bounds_xy"]
    R = bev["wall"].shape[0]
    cell = (b[1] - b[0]) / R
    centres = [b[0, a] + (np.arange(R) + 0.5) * cell[a] for a in (0, 1)]
    ix = np.nonzero((centres[0] >= x0) & (centres[0] <= x1))[0]
    iy = np.nonzero((centres[1] >= y0) & (centres[1] <= y1))[0]
    if not len(ix) or not len(iy):
        raise ValueError(f"the box {list(box)} holds no cell of the map (bounds {b.tolist()})")
    return slice(ix[0], ix[-1] + 1), slice(iy[0], iy[-1] + 1)


def erase_box(bev: dict, box, floor: float | None = None, ceiling: float | None = None) -> dict:
    """A copy of the map with the walls in ``box`` (x0, y0, x1, y1 metres) removed and the box
    made floor: inside 1, heights kept where the map had them, else ``floor`` / ``ceiling``
    (default: the median of the map's inside cells)."""
    out = {k: np.array(v, copy=True) for k, v in bev.items()}
    sx, sy = _box_cells(bev, box)
    fl, ce = typical_heights([bev]) if floor is None or ceiling is None else (floor, ceiling)
    floor = fl if floor is None else floor
    ceiling = ce if ceiling is None else ceiling
    out["wall"][sx, sy] = 0.0
    had = out["inside"][sx, sy] > 0
    out["inside"][sx, sy] = 1.0
    out["floor"][sx, sy] = np.where(had, out["floor"][sx, sy], floor)
    out["ceiling"][sx, sy] = np.where(had, out["ceiling"][sx, sy], ceiling)
    if has_look(bev):           # new floor takes the map's median look; erased walls take none
        ins = np.asarray(bev["inside"]) > 0
        for k in LOOK_KEYS[:7]:
            vals = np.asarray(bev[k])[ins & np.isfinite(bev[k])]
            out[k][sx, sy] = np.where(had, out[k][sx, sy], float(np.median(vals)) if vals.size else np.nan)
        for k in LOOK_KEYS[7:]:
            out[k][sx, sy] = np.nan
    return out


def add_wall_box(bev: dict, box) -> dict:
    """A copy of the map with a solid block in ``box`` (x0, y0, x1, y1 metres), as Doom draws a
    pillar: the box's cells leave the map (inside 0, no heights) and its border cells are walls."""
    out = {k: np.array(v, copy=True) for k, v in bev.items()}
    sx, sy = _box_cells(bev, box)
    out["inside"][sx, sy] = 0.0
    out["floor"][sx, sy] = np.nan
    out["ceiling"][sx, sy] = np.nan
    block = np.zeros_like(out["wall"][sx, sy])
    block[0, :] = block[-1, :] = block[:, 0] = block[:, -1] = 1.0
    out["wall"][sx, sy] = np.maximum(out["wall"][sx, sy], block)
    out["wall"][sx, sy][1:-1, 1:-1] = 0.0
    if has_look(bev):           # the block leaves the map; its walls take the map's median wall colour
        walls = (np.asarray(bev["wall"]) > 0) & np.isfinite(bev["wall_r"])
        for k in LOOK_KEYS[:7]:
            out[k][sx, sy] = np.nan
        for k in LOOK_KEYS[7:]:
            vals = np.asarray(bev[k])[walls]
            med = float(np.median(vals)) if vals.size else 0.5
            out[k][sx, sy] = np.where(out["wall"][sx, sy] > 0, np.where(np.isfinite(out[k][sx, sy]), out[k][sx, sy], med),
                                      np.nan)
    return out


def square_box(box, what: str = "box") -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of a square footprint box in metres; ValueError naming ``what`` otherwise."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0) or abs((x1 - x0) - (y1 - y0)) > 1e-6 * (x1 - x0):
        raise ValueError(f"a {what} is a square x0 y0 x1 y1 (metres), got {list(box)}")
    return x0, y0, x1, y1


def crop_bev(bev: dict, box) -> dict:
    """The part of a map over a square footprint ``box`` (x0, y0, x1, y1 metres, x1 - x0 == y1 - y0),
    as a map of its own (bounds_xy = the box) at the map's cell size: cells whose centres lie in
    the box; parts of the box beyond the map are outside the map (inside 0, no walls). Used by
    ``nfldm extend --bev`` to give each window its part of a map larger than one window."""
    x0, y0, x1, y1 = square_box(box, "crop box")
    b = np.asarray(bev["bounds_xy"], np.float64)
    R = bev["wall"].shape[0]
    cell = (b[1] - b[0]) / R
    n = max(2, int(round((x1 - x0) / cell[0])))
    # the crop's cell centres, and the source cell each falls in (-1: beyond the map)
    cx = x0 + (np.arange(n) + 0.5) * (x1 - x0) / n
    cy = y0 + (np.arange(n) + 0.5) * (y1 - y0) / n
    ix = np.floor((cx - b[0, 0]) / cell[0]).astype(int)
    iy = np.floor((cy - b[0, 1]) / cell[1]).astype(int)
    okx, oky = (ix >= 0) & (ix < R), (iy >= 0) & (iy < R)
    out = {}
    for k in (*BEV_KEYS, *(LOOK_KEYS if has_look(bev) else ())):
        fill = 0.0 if k in ("wall", "inside") else np.nan
        a = np.full((n, n), fill, np.float32)
        src = np.asarray(bev[k], np.float32)[np.clip(ix, 0, R - 1)][:, np.clip(iy, 0, R - 1)]
        m = okx[:, None] & oky[None, :]
        a[m] = src[m]
        out[k] = a
    out["bounds_xy"] = np.asarray([[x0, y0], [x1, y1]], np.float32)
    return out


def typical_heights(bevs: list[dict]) -> tuple[float, float]:
    """Median floor and ceiling height (metres) over the inside cells of the given maps."""
    fl = [b["floor"][(b["inside"] > 0) & np.isfinite(b["floor"])] for b in bevs]
    ce = [b["ceiling"][(b["inside"] > 0) & np.isfinite(b["ceiling"])] for b in bevs]
    fl, ce = np.concatenate(fl), np.concatenate(ce)
    if not fl.size or not ce.size:
        return 0.0, 3.5
    return float(np.median(fl)), float(np.median(ce))


def write_bev(path: str | os.PathLike, bev: dict) -> None:
    """Write a BEV map as a ``bev.npz`` (atomically)."""
    buf = io.BytesIO()
    keys = (*BEV_KEYS, *(LOOK_KEYS if has_look(bev) else ()), "bounds_xy")
    np.savez_compressed(buf, **{k: np.asarray(bev[k], np.float32) for k in keys})
    atomic_write_bytes(path, buf.getvalue())


def bev_image(bev: dict, size: int) -> np.ndarray:
    """BEV (index [x, y]) -> size x size x 3 uint8 image, north up: floor height coloured,
    walls white, outside the map black."""
    from PIL import Image

    floor = np.where(np.asarray(bev["inside"]) > 0, bev["floor"], np.nan)
    finite = floor[np.isfinite(floor)]
    lo, hi = (finite.min(), finite.max() + 1e-3) if finite.size else (0.0, 1.0)
    img = colorize(floor, lo, hi)
    img = (img * 0.8).astype(np.uint8)
    img[np.asarray(bev["wall"]) > 0] = 255
    img = np.flip(img.transpose(1, 0, 2), 0)  # [x, y] -> rows = -y, cols = x
    # shrinking averages (a one-cell wall stays visible as a lighter line), enlarging repeats cells
    resample = Image.BOX if size < img.shape[0] else Image.NEAREST
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((size, size), resample))
