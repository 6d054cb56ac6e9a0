"""``nfldm data import``: any posed RGB-D capture -> a dataset the presets train on.

Sources: nerfstudio scene folders with depth (``transforms.json``; a folder of them), and GSN's
trajectory folders (``cameras.json``; ``nfldm.data.gsn``). What the import does, in order:

1. **Frames**: every frame is resized so that it covers the output size (``--size 64`` =
   64 x 64, ``--size 96x72`` = W x H) and centre-cropped to it (area resampling for RGB, the
   nearest source pixel for depth, so no depth is blended across an edge); intrinsics follow
   (``nfldm.camera.resize_intrinsics`` / ``crop_intrinsics`` semantics). Cropping, not padding:
   padded borders would be pixels without depth that the renderer learns to paint black.
2. **Up**: the world is rotated so that up is +z. ``auto``: the mean of the cameras' up vectors
   (nerfstudio's auto-orient "up"), refined by the horizontal surfaces in depth: the direction
   within 15 degrees of it along which the depth points' heights are sharpest (floors and
   ceilings at any height pile up only along the true up; :func:`estimate_up`), which corrects a
   capture held tilted on average. Or an axis: ``+y`` etc.
3. **Scale**: world units / ``units_per_metre`` (auto: 1 for nerfstudio, whose depth is metres
   by its ``depth_unit_scale_factor``; Doom map units for GSN's uint8 VizDoom depth). The floor
   goes to z = 0.
4. **Windows**: a scene larger than the box (``--box 16x16x8`` metres, the presets' box) is cut
   into boxes every ``stride`` metres (default half the box) along x and y; a window keeps the
   frames whose camera lies inside it and at least ``min_inside`` of whose depth points fall in
   it, and needs ``min_frames`` of them. Each window is centred (x, y = 0; z from -1/4 to 3/4
   of the box height, as the ViZDoom scenes' -2 .. 6 m; cameras 1/8 of the side inside it, as
   their 2 m).
5. **Split**: GSN's own train / test folders when present; else by scene when there are >= 3
   source scenes (whole scenes go to val / test), else by region: windows ordered along the
   scene's longer axis, the last ones test, those before them val, and windows overlapping a
   window of another split dropped, so no test voxel was seen in training.
6. **Checks**: the depth reprojection error between neighbouring frames (``data.consistency``)
   of the source frames and of the imported windows, and which scale of the camera motion fits
   the depth best (a units mismatch shows as a best scale far from 1).

Writes OUT/dataset.json, one scene folder per window, OUT/import.json (every choice and
number) and OUT/import_map.png (top-down: depth points, cameras, windows coloured by split).
OUT is built in a hidden staging folder and renamed into place at the end.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from nfldm.camera import unproject_depth
from nfldm.data.consistency import neighbour_pairs, reprojection_errors
from nfldm.data.format import (
    DataError,
    decode_depth,
    read_frame_raw,
    read_image_file,
    read_transforms,
    write_dataset_index,
    write_scene,
)
from nfldm.data.gsn import default_units_per_metre, find_trajectories, read_gsn_depth, read_trajectory
from nfldm.utils.io import atomic_save_png, atomic_write_json

__all__ = ["ImportConfig", "Source", "open_sources", "import_dataset", "parse_size", "parse_box",
           "estimate_up", "rotation_to_z", "resize_frame", "tile_windows", "UP_AXES", "FORMATS"]

FORMATS = ("auto", "nerfstudio", "gsn")
UP_AXES = {"+x": (1, 0, 0), "-x": (-1, 0, 0), "+y": (0, 1, 0), "-y": (0, -1, 0), "+z": (0, 0, 1), "-z": (0, 0, -1)}
Z_BELOW = 0.25  # part of the box height below the floor (as the ViZDoom scenes: 2 of 8 m)
CAMERA_MARGIN = 0.125  # cameras stay this part of the box side inside it (ViZDoom scenes: 2 of 16 m)


@dataclass
class ImportConfig:
    """What ``nfldm data import`` does (module docstring). Lengths in metres."""

    format: str = "auto"                 # auto | nerfstudio | gsn
    size: tuple[int, int] = (64, 64)     # output W x H
    up: str = "auto"                     # auto | +x | -x | +y | -y | +z | -z (source axis that is up)
    units_per_metre: float = 0.0         # source world units per metre; 0 = auto
    box: tuple[float, float, float] = (16.0, 16.0, 8.0)
    windows: str = "auto"                # auto (cut scenes bigger than the box) | single (one box per scene)
    stride: float = 0.0                  # window stride; 0 = half the box
    min_frames: int = 12                 # a window needs this many frames
    min_inside: float = 0.5              # part of a frame's depth points inside its window
    val_fraction: float = 0.125
    test_fraction: float = 0.125
    seed: int = 0

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"--format must be one of {FORMATS}, got {self.format!r}")
        if self.up != "auto" and self.up not in UP_AXES:
            raise ValueError(f"--up must be auto or one of {list(UP_AXES)}, got {self.up!r}")
        if self.windows not in ("auto", "single"):
            raise ValueError(f"--windows must be auto or single, got {self.windows!r}")
        if min(self.size) < 8:
            raise ValueError(f"--size must be at least 8 pixels, got {self.size}")
        if min(self.box) <= 0 or self.stride < 0 or self.units_per_metre < 0:
            raise ValueError("--box, --stride and --units-per-metre must be positive")
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1
                and self.val_fraction + self.test_fraction < 1):
            raise ValueError("--val-fraction and --test-fraction must be in [0, 1) and sum below 1")


def parse_size(text: str) -> tuple[int, int]:
    """``"64"`` -> (64, 64); ``"96x72"`` -> (96, 72) (W x H)."""
    parts = str(text).lower().split("x")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"--size takes S or WxH in pixels, got {text!r}") from None
    if len(vals) not in (1, 2) or min(vals) <= 0:
        raise ValueError(f"--size takes S or WxH in pixels, got {text!r}")
    return (vals[0], vals[-1])


def parse_box(text: str) -> tuple[float, float, float]:
    """``"16x16x8"`` -> (16.0, 16.0, 8.0) metres."""
    try:
        vals = tuple(float(p) for p in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"--box takes XxYxZ in metres, got {text!r}") from None
    if len(vals) != 3 or min(vals) <= 0:
        raise ValueError(f"--box takes XxYxZ in metres, got {text!r}")
    return vals


# --------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------


@dataclass
class Source:
    """One source scene. intr: N x 4 pixels of w x h frames; c2w: N x 4 x 4 (OpenGL camera axes,
    source world and units); read(i) -> (rgb uint8 h x w x 3, depth float64 h x w in source
    units, valid bool h x w); units_per_metre: the format's default."""

    name: str
    path: Path
    format: str
    intr: np.ndarray
    c2w: np.ndarray
    w: int
    h: int
    read: Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]]
    units_per_metre: float
    split: str | None = None

    def __len__(self) -> int:
        return len(self.c2w)


def _nerfstudio_source(path: Path, name: str) -> Source:
    meta = read_transforms(path)

    def read(i):
        rgb, raw = read_frame_raw(meta, i)
        depth, valid = decode_depth(raw, meta.depth_unit_scale_factor)
        return rgb, depth.astype(np.float64), valid

    return Source(name, meta.transforms_path, "nerfstudio", meta.intr, meta.c2w, meta.w, meta.h, read, 1.0)


def _gsn_source(path: Path, split: str | None, name: str) -> Source:
    t = read_trajectory(path, split)

    def read(i):
        rgb = read_image_file(t.rgb_paths[i], t.w, t.h)
        depth, valid = read_gsn_depth(t.depth_paths[i], t.depth_kind, t.w, t.h)
        return rgb, depth, valid

    return Source(name, path / "cameras.json", "gsn", t.intr, t.c2w, t.w, t.h, read,
                  default_units_per_metre(t.depth_kind), split)


def _safe_name(rel: Path) -> str:
    return "_".join(rel.parts) or "scene"


def open_sources(src: str | os.PathLike, fmt: str = "auto") -> list[Source]:
    """The source scenes under ``src`` (a scene folder, or a folder of them; for GSN also a
    release root with split folders). Raises DataError naming ``src`` when none is found."""
    src = Path(src)
    if not src.exists():
        raise DataError(f"{src}: does not exist")
    if fmt in ("auto", "nerfstudio"):
        if (src / "transforms.json").is_file():
            return [_nerfstudio_source(src, src.name)]
        scenes = sorted(p.parent for p in src.glob("*/transforms.json"))
        if scenes:
            return [_nerfstudio_source(p, p.name) for p in scenes]
        if fmt == "nerfstudio":
            raise DataError(f"{src}: no transforms.json in it or its sub-folders (not a nerfstudio scene)")
    trajectories = find_trajectories(src) if src.is_dir() else []
    if not trajectories:
        raise DataError(f"{src}: no transforms.json (nerfstudio) or cameras.json (GSN) in it or its sub-folders")
    return [_gsn_source(p, split, _safe_name(p.relative_to(src)) if p != src else src.name)
            for p, split in trajectories]


# --------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------


def crop_box(w: int, h: int, out_w: int, out_h: int) -> tuple[float, float, float, float]:
    """The centred source region (x0, y0, x1, y1) with the output's aspect ratio, as large as fits."""
    scale = max(out_w / w, out_h / h)
    cw, ch = out_w / scale, out_h / scale
    x0, y0 = (w - cw) / 2, (h - ch) / 2
    return x0, y0, x0 + cw, y0 + ch


def _sample_depth(depth: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Depth (h x w, 0 = invalid) at continuous image points (columns xs, rows ys; pixel centres
    at +0.5) -> float32 len(ys) x len(xs). Inverse depth is interpolated bilinearly (exact on a
    plane) where the four pixels around the point are valid and within 5 % of each other; at
    edges and holes the nearest pixel's depth is taken, so depth is never blended across an edge."""
    h, w = depth.shape
    x, y = np.clip(xs - 0.5, 0, w - 1), np.clip(ys - 0.5, 0, h - 1)
    x0, y0 = np.minimum(np.floor(x).astype(int), w - 2 if w > 1 else 0), np.minimum(np.floor(y).astype(int), h - 2 if h > 1 else 0)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[None, :], (y - y0)[:, None]
    q = [depth[np.ix_(yy, xx)] for yy in (y0, y1) for xx in (x0, x1)]
    stack = np.stack(q)
    smooth = (stack > 0).all(0) & (stack.max(0) <= 1.05 * stack.min(0))
    inv = 1 / np.where(stack > 0, stack, 1.0)
    bil = (inv[0] * (1 - fx) * (1 - fy) + inv[1] * fx * (1 - fy) + inv[2] * (1 - fx) * fy + inv[3] * fx * fy)
    near = depth[np.ix_(np.clip(np.floor(ys).astype(int), 0, h - 1), np.clip(np.floor(xs).astype(int), 0, w - 1))]
    return np.where(smooth, 1 / bil, near).astype(np.float32)


def resize_frame(rgb: np.ndarray, depth: np.ndarray, valid: np.ndarray, intr: np.ndarray,
                 size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre-crop and resize one frame to ``size`` = (W, H).

    rgb uint8 h x w x 3, depth / valid h x w, intr 4 -> (rgb uint8 H x W x 3, depth float32
    H x W (0 = invalid), intr 4). RGB is area-resampled over the crop; depth is sampled at each
    output pixel centre (:func:`_sample_depth`). Pixel centres at +0.5: the crop maps x -> (x - x0) * s.
    """
    h, w = depth.shape
    W, H = size
    x0, y0, x1, y1 = crop_box(w, h, W, H)
    sx, sy = W / (x1 - x0), H / (y1 - y0)
    out_rgb = np.asarray(Image.fromarray(rgb).resize((W, H), Image.Resampling.BOX, box=(x0, y0, x1, y1)))
    d = _sample_depth(np.where(valid, depth, 0.0), x0 + (np.arange(W) + 0.5) / sx, y0 + (np.arange(H) + 0.5) / sy)
    fx, fy, cx, cy = intr
    return out_rgb, d, np.array([fx * sx, fy * sy, (cx - x0) * sx, (cy - y0) * sy])


# --------------------------------------------------------------------------------------
# Orientation and scale
# --------------------------------------------------------------------------------------


def rotation_to_z(up: np.ndarray) -> np.ndarray:
    """The smallest rotation (3 x 3) taking the unit vector ``up`` to +z."""
    a = np.asarray(up, dtype=np.float64) / np.linalg.norm(up)
    z = np.array([0.0, 0.0, 1.0])
    v, c = np.cross(a, z), float(a @ z)
    if c < -1 + 1e-12:  # up = -z: half a turn about x
        return np.diag([1.0, -1.0, -1.0])
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1 + c)


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    return math.degrees(math.acos(float(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))


def _sharpness(heights: np.ndarray, width: float) -> float:
    """How much the points pile up at a few heights: sum of squared histogram shares (bins of
    ``width``, averaged over two bin offsets so a peak on a bin edge counts in full)."""
    total = 0.0
    for shift in (0.0, 0.5):
        idx = np.floor((heights - heights.min()) / width + shift).astype(np.int64)
        counts = np.bincount(idx).astype(np.float64)
        total += float((counts ** 2).sum()) / len(heights) ** 2
    return total / 2


def estimate_up(c2w: np.ndarray, points: np.ndarray, max_change_deg: float = 15.0) -> tuple[np.ndarray, dict]:
    """World up (unit 3-vector) of a capture: the cameras' mean up vector, refined by the
    horizontal surfaces in depth.

    c2w: N x 4 x 4 (OpenGL: the camera's up is column 1); points: M x 3 world depth points.
    Floors and ceilings (every one of them, at any height: stairs, several rooms) are flat only
    along the true up, so their points pile up at a few heights exactly there: the up is the
    direction within ``max_change_deg`` of the cameras' up whose point heights are sharpest
    (:func:`_sharpness`, bins of 0.25 % of the scene's extent; a 1-degree grid, then 0.1 degree).
    Kept only when it is clearly sharper (by 10 %) than the cameras' up. Returns (up, info).
    """
    mean_up = c2w[:, :3, 1].mean(0)
    agreement = float(np.linalg.norm(mean_up))
    u0 = mean_up / max(agreement, 1e-12)
    info = {"cameras_up": u0.tolist(), "cameras_agreement": agreement, "surfaces": None}
    if len(points) < 100:
        return u0, info
    if len(points) > 60000:
        points = points[np.random.default_rng(0).choice(len(points), 60000, replace=False)]
    extent = float(np.linalg.norm(np.percentile(points, 98, 0) - np.percentile(points, 2, 0)))
    width = 0.0025 * max(extent, 1e-9)
    e1 = np.cross(u0, [1.0, 0, 0] if abs(u0[0]) < 0.9 else [0, 1.0, 0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(u0, e1)

    def direction(a, b):
        n = u0 + math.tan(math.radians(a)) * e1 + math.tan(math.radians(b)) * e2
        return n / np.linalg.norm(n)

    base = _sharpness(points @ u0, width)
    best, (ba, bb) = base, (0.0, 0.0)
    for step, reach in ((1.0, max_change_deg), (0.1, 1.0)):
        ca, cb = ba, bb
        for a in np.arange(-reach, reach + 1e-9, step):
            for b in np.arange(-reach, reach + 1e-9, step):
                if math.hypot(ca + a, cb + b) > max_change_deg:
                    continue
                sh = _sharpness(points @ direction(ca + a, cb + b), width)
                if sh > best:
                    best, (ba, bb) = sh, (ca + a, cb + b)
    n = direction(ba, bb)
    if best < 1.1 * base:
        return u0, info
    info["surfaces"] = {"normal": n.tolist(), "change_from_cameras_deg": _angle(n, u0),
                        "sharpness_gain": best / base}
    return n, info


# --------------------------------------------------------------------------------------
# Windows and splits
# --------------------------------------------------------------------------------------


def tile_windows(lo: np.ndarray, hi: np.ndarray, box: tuple[float, float, float], stride: float) -> list[np.ndarray]:
    """Window centres (x, y) covering the footprint [lo, hi] (2-vectors, metres): one per axis
    when the footprint fits the box, else evenly spaced from edge to edge at most ``stride`` apart."""
    axes = []
    for k in range(2):
        length, b = hi[k] - lo[k], box[k]
        if length <= b:
            axes.append(np.array([(lo[k] + hi[k]) / 2]))
        else:
            n = math.ceil((length - b) / stride) + 1
            axes.append(np.linspace(lo[k] + b / 2, hi[k] - b / 2, n))
    return [np.array([x, y]) for x in axes[0] for y in axes[1]]


def _overlaps(a: np.ndarray, b: np.ndarray, box) -> bool:
    return bool(np.all(np.abs(a - b) < np.asarray(box[:2]) - 1e-9))


def _split_units(n: int, val_fraction: float, test_fraction: float) -> list[str]:
    """Splits of n ordered units: the last ones test, the ones before them val, at least one train."""
    if n < 3:
        return ["train"] * n
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 and n >= 4 else 0
    n_train = n - n_test - n_val
    return ["train"] * n_train + ["val"] * n_val + ["test"] * n_test


def region_split(windows: list[dict], cfg: ImportConfig) -> list[dict]:
    """Splits of one scene's windows (dicts with ``centre``) by region; returns those kept, each
    with ``split``. Along the scene's longer axis: the last ones test, then (after dropping the
    windows that overlap a test window) val, then (after dropping those overlapping val) train.
    With too few windows val, then test, is left out: a train window comes first."""
    if len(windows) < 3:
        return [{**w, "split": "train"} for w in windows]
    cs = np.stack([w["centre"] for w in windows])
    axis = int(np.argmax(cs.max(0) - cs.min(0)))
    order = sorted(windows, key=lambda w: (-w["centre"][axis], -w["centre"][1 - axis]))
    n = len(windows)
    for fractions in ((cfg.test_fraction, cfg.val_fraction), (cfg.test_fraction, 0.0), (0.0, 0.0)):
        rest, out = list(order), []
        for split, frac in zip(("test", "val"), fractions):
            if frac <= 0:
                continue
            taken = rest[:max(1, round(n * frac))]
            out += [{**w, "split": split} for w in taken]
            rest = [w for w in rest[len(taken):] if not any(_overlaps(w["centre"], t["centre"], cfg.box) for t in taken)]
        if rest:
            return out + [{**w, "split": "train"} for w in rest]
    return [{**w, "split": "train"} for w in windows]


# --------------------------------------------------------------------------------------
# The import
# --------------------------------------------------------------------------------------


@dataclass
class _Scene:
    """A source scene after reading: frames at the output size, poses in metres, z up."""

    source: Source
    rgb: np.ndarray      # N x H x W x 3 uint8
    depth: np.ndarray    # N x H x W float32 metres (0 = invalid)
    intr: np.ndarray     # N x 4
    c2w: np.ndarray      # N x 4 x 4, z up, metres, floor at z = 0
    points: list[np.ndarray]  # per frame: world points M x 3 (every 2nd valid depth pixel), same frame
    info: dict


def _points(depth: np.ndarray, intr: np.ndarray, c2w: np.ndarray, step: int = 2) -> list[np.ndarray]:
    """Per frame: world points (M x 3) of every ``step``-th valid depth pixel."""
    out = []
    for d, k, T in zip(depth, intr, c2w):
        sub = np.zeros_like(d, dtype=bool)
        sub[::step, ::step] = True
        pts = _unproject(d, k, T)
        out.append(pts[(d > 0) & sub])
    return out


def _unproject(depth: np.ndarray, intr: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    return unproject_depth(torch.from_numpy(np.asarray(depth, np.float64)), torch.from_numpy(intr),
                           torch.from_numpy(c2w)).numpy()


def _consistency(rgb, depth, intr, c2w, max_pairs: int = 48, scale: float = 1.0) -> dict:
    """Median relative depth reprojection error of neighbouring frames (and the share < 3 %);
    ``scale`` multiplies the camera positions (to find which motion scale fits the depth)."""
    n = len(depth)
    pairs = neighbour_pairs(n, max_gap=2)
    if len(pairs) > max_pairs:
        pairs = [pairs[i] for i in np.linspace(0, len(pairs) - 1, max_pairs).round().astype(int)]
    if not pairs:
        return {"pairs": 0, "median_rel_error": None, "share_within_3pct": None}
    T = np.array(c2w, dtype=np.float64)
    T[:, :3, 3] *= scale
    d = torch.from_numpy(np.asarray(depth, np.float32))
    sample = {"images": torch.from_numpy(np.asarray(rgb)).permute(0, 3, 1, 2).float() / 255, "depth": d,
              "depth_valid": d > 0, "intrinsics": torch.from_numpy(np.asarray(intr, np.float64)),
              "c2w": torch.from_numpy(T)}
    errs, _ = reprojection_errors(sample, pairs)
    if len(errs) == 0:
        return {"pairs": len(pairs), "median_rel_error": None, "share_within_3pct": None}
    return {"pairs": len(pairs), "points": int(len(errs)), "median_rel_error": float(errs.median()),
            "share_within_3pct": float((errs < 0.03).float().mean())}


def _pairs_error(rgb, depth, intr, c2w, ids: list[int]) -> float | None:
    """Median over frames i in ``ids`` of the median relative reprojection error of (i, i + 1)."""
    errs = [_consistency(rgb[i:i + 2], depth[i:i + 2], intr[i:i + 2], c2w[i:i + 2])["median_rel_error"] for i in ids]
    errs = [e for e in errs if e is not None]
    return float(np.median(errs)) if errs else None


def _best_motion_scale(rgb, depth, intr, c2w) -> dict:
    """The camera-motion scale (1/1000 .. 1000) at which the frames' depth agrees best."""
    moved = np.linalg.norm(c2w[:, :3, 3] - c2w[:1, :3, 3], axis=1).max()
    if moved <= 0:
        return {"best_scale": None, "why": "the cameras do not move"}
    grid = 10.0 ** np.arange(-3, 3.01, 0.25)
    errs = [_consistency(rgb, depth, intr, c2w, max_pairs=12, scale=s)["median_rel_error"] for s in grid]
    errs = [math.inf if e is None else e for e in errs]
    k = int(np.argmin(errs))
    return {"best_scale": float(grid[k]), "error_at_best": errs[k], "error_at_1": errs[int(np.argmin(np.abs(grid - 1)))]}


def _read_scene(src: Source, cfg: ImportConfig, progress: bool) -> _Scene:
    """Read, resize, orient and scale one source scene."""
    n = len(src)
    W, H = cfg.size
    rgb = np.zeros((n, H, W, 3), np.uint8)
    depth = np.zeros((n, H, W), np.float32)
    intr = np.zeros((n, 4))
    source_check = []
    check_ids = set(np.linspace(0, n - 1, min(n, 6)).round().astype(int).tolist())
    prev = None  # frame i - 1 at full resolution when it is a check frame
    for i in tqdm(range(n), desc=f"read {src.name}", disable=not progress, leave=False):
        r, d, v = src.read(i)
        rgb[i], depth[i], intr[i] = resize_frame(r, d, v, src.intr[i], cfg.size)
        if prev is not None:  # the source frames' own consistency, at their resolution
            r0, d0, v0 = prev
            source_check.append((r0, r, np.where(v0, d0, 0), np.where(v, d, 0), src.intr[i - 1:i + 1],
                                 src.c2w[i - 1:i + 1]))
        prev = (r, d, v) if i in check_ids else None
    src_errs = []
    for r, r2, d, d2, k, T in source_check:
        c = _consistency(np.stack([r, r2]), np.stack([d, d2]), k, T)
        if c["median_rel_error"] is not None:
            src_errs.append(c["median_rel_error"])
    pair_ids = sorted(i for i in check_ids if i + 1 < n)
    upm = cfg.units_per_metre or src.units_per_metre
    per_frame = _points(depth, intr, src.c2w)
    pts = np.concatenate(per_frame + [np.zeros((0, 3))])
    if cfg.up == "auto":
        up, up_info = estimate_up(src.c2w, pts)
    else:
        up, up_info = np.asarray(UP_AXES[cfg.up], dtype=np.float64), {"given": cfg.up}
    R = rotation_to_z(up)
    c2w = np.array(src.c2w)
    c2w[:, :3, :3] = R @ c2w[:, :3, :3]
    c2w[:, :3, 3] = c2w[:, :3, 3] @ R.T / upm
    depth_m = depth / upm
    heights = (pts @ R.T / upm)[:, 2] if len(pts) else c2w[:, 2, 3]
    floor_z = _floor_height(heights)
    c2w[:, 2, 3] -= floor_z
    points = [p @ R.T / upm - [0.0, 0.0, floor_z] for p in per_frame]   # as unprojected with c2w, depth_m
    info = {"source": str(src.path), "format": src.format, "frames": n, "source_size": [src.w, src.h],
            "up": up.tolist(), "up_estimate": up_info, "rotation": R.tolist(), "units_per_metre": upm,
            "floor_z_removed_m": floor_z,
            "source_reprojection_median_rel_error": float(np.median(src_errs)) if src_errs else None,
            "imported_reprojection_median_rel_error": _pairs_error(rgb, depth_m, intr, c2w, pair_ids),
            "motion_scale_check": _best_motion_scale(rgb, depth_m, intr, c2w)}
    return _Scene(src, rgb, depth_m, intr, c2w, points, info)


def _floor_height(heights: np.ndarray) -> float:
    """The height (metres) of the most common surface among the lowest fifth of the points."""
    low = heights[heights <= np.percentile(heights, 20)]
    if len(low) < 10:
        return float(np.percentile(heights, 2)) if len(heights) else 0.0
    counts, edges = np.histogram(low, bins=max(1, int((low.max() - low.min()) / 0.05) + 1))
    k = int(np.argmax(counts))
    return float(np.median(low[(low >= edges[k]) & (low <= edges[k + 1])]))


def _window_bounds(centre: np.ndarray, box) -> np.ndarray:
    """Bounds (2 x 3) of the window at ``centre`` in the scene's frame (floor at z = 0)."""
    half = np.array(box[:2]) / 2
    return np.array([[centre[0] - half[0], centre[1] - half[1], -Z_BELOW * box[2]],
                     [centre[0] + half[0], centre[1] + half[1], (1 - Z_BELOW) * box[2]]])


def _windows_of(scene: _Scene, cfg: ImportConfig) -> list[dict]:
    """The windows of one scene: centre, bounds, frame ids (before the split)."""
    pts = scene.points
    allp = np.concatenate(pts + [np.zeros((0, 3))])
    cams = scene.c2w[:, :3, 3]
    lo, hi = cams[:, :2].min(0), cams[:, :2].max(0)
    if len(allp):
        lo = np.minimum(lo, np.percentile(allp[:, :2], 2, 0))
        hi = np.maximum(hi, np.percentile(allp[:, :2], 98, 0))
    if cfg.windows == "single":
        centres = [np.median(cams[:, :2], 0)]
    else:
        centres = tile_windows(lo, hi, cfg.box, cfg.stride or min(cfg.box[:2]) / 2)
    margin = CAMERA_MARGIN * min(cfg.box[:2])
    out = []
    for c in centres:
        b = _window_bounds(c, cfg.box)
        cam_in = np.all((cams > b[0] + [margin, margin, 0]) & (cams < b[1] - [margin, margin, 0]), axis=1)
        ids = []
        for i in np.flatnonzero(cam_in):
            p = pts[i]
            inside = np.all((p >= b[0]) & (p <= b[1]), axis=1).mean() if len(p) else 0.0
            if inside >= cfg.min_inside:
                ids.append(int(i))
        out.append({"centre": c, "bounds": b, "frames": ids})
    return out


def import_dataset(src: str | os.PathLike, out: str | os.PathLike, cfg: ImportConfig | None = None,
                   progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Import every source scene under ``src`` into a new dataset folder ``out`` (module docstring).

    Returns the summary also written to OUT/import.json. Raises DataError (bad source files,
    nothing importable, OUT already a dataset) with one line naming the file.
    """
    cfg = cfg or ImportConfig()
    out = Path(out)
    sources = open_sources(src, cfg.format)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: already exists and is not empty; choose another --out (nothing was written)")
    scenes = []
    for s in sources:
        scene = _read_scene(s, cfg, progress)
        scenes.append(scene)
        i = scene.info
        log(f"{s.path}: {len(s)} frames {s.w}x{s.h} -> {cfg.size[0]}x{cfg.size[1]}; up {_fmt_vec(i['up'])} "
            f"({_up_words(i)}); {i['units_per_metre']:g} units per metre")
        check = i["motion_scale_check"]
        if check.get("best_scale") and check["error_at_1"] > 0.05 and not 0.5 <= check["best_scale"] <= 2:
            log(f"{s.path}: warning: depth agrees best with the camera motion scaled by {check['best_scale']:g} "
                f"(median reprojection error {check['error_at_best']:.3f} vs {check['error_at_1']:.3f} as given): "
                "the depth's units and the poses' units differ")

    # windows and splits
    windows = []  # (scene index, window dict)
    for k, scene in enumerate(scenes):
        for w in _windows_of(scene, cfg):
            windows.append((k, w))
    kept = [(k, w) for k, w in windows if len(w["frames"]) >= cfg.min_frames]
    dropped_small = len(windows) - len(kept)
    gsn_splits = all(s.split for s in sources)
    if gsn_splits:
        rule = "the source's split folders"
        for k, w in kept:
            w["split"] = sources[k].split
            w["group"] = scenes[k].source.name
    elif len(sources) >= 3:
        rule = "by source scene"
        names = sorted({k for k, _ in kept})
        order = np.random.default_rng(cfg.seed).permutation(len(names))
        splits = _split_units(len(names), cfg.val_fraction, cfg.test_fraction)
        by_scene = {names[j]: splits[r] for r, j in enumerate(order)}
        for k, w in kept:
            w["split"], w["group"] = by_scene[k], scenes[k].source.name
    else:
        rule = "by region along each scene's longer axis"
        regrouped = []
        for k in sorted({k for k, _ in kept}):
            for w in region_split([w for kk, w in kept if kk == k], cfg):
                w["group"] = f"{scenes[k].source.name}:{w['split']}"
                regrouped.append((k, w))
        kept = regrouped
    dropped_overlap = len(windows) - dropped_small - len(kept)
    if not any(w["split"] == "train" for _, w in kept):
        raise DataError(f"{src}: no training window with >= {cfg.min_frames} frames "
                        f"({len(windows)} windows of {cfg.box} m; try --min-frames, --box or --windows single)")

    # write into a staging folder, then rename it into place
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    try:
        entries, written = [], []
        per_scene_count: dict[int, int] = {}
        windows_of_scene = Counter(k for k, _ in kept)
        for k, w in tqdm(kept, desc="write windows", disable=not progress, leave=False):
            scene = scenes[k]
            j = per_scene_count.get(k, 0)
            per_scene_count[k] = j + 1
            name = f"{scene.source.name}_w{j:02d}" if windows_of_scene[k] > 1 else scene.source.name
            ids = w["frames"]
            offset = np.array([w["centre"][0], w["centre"][1], 0.0])
            c2w = scene.c2w[ids].copy()
            c2w[:, :3, 3] -= offset
            bounds = w["bounds"] - offset
            extra = {"source": "import", "import": {"from": str(scene.source.path), "format": scene.source.format,
                                                     "source_frames": ids, "offset_m": offset.tolist(),
                                                     "rotation": scene.info["rotation"],
                                                     "units_per_metre": scene.info["units_per_metre"],
                                                     "floor_z_removed_m": scene.info["floor_z_removed_m"]}}
            write_scene(staging / name, scene.rgb[ids], scene.depth[ids], c2w, scene.intr[ids], extra=extra)
            check = _consistency(scene.rgb[ids], scene.depth[ids], scene.intr[ids], c2w)
            entries.append({"name": name, "split": w["split"], "group": w["group"], "bounds": bounds.tolist()})
            written.append({"name": name, "split": w["split"], "group": w["group"], "frames": len(ids),
                            "centre_m": w["centre"].tolist(), "reprojection": check})
        write_dataset_index(staging, entries)
        def med(key):
            vals = [s.info[key] for s in scenes if s.info[key] is not None]
            return float(np.median(vals)) if vals else None

        win = [w["reprojection"]["median_rel_error"] for w in written if w["reprojection"]["median_rel_error"] is not None]
        summary = {"config": {**asdict(cfg)}, "source": str(src), "split_rule": rule, "scenes": [s.info for s in scenes],
                   "windows": written, "windows_considered": len(windows),
                   "windows_dropped_few_frames": dropped_small, "windows_dropped_overlap": dropped_overlap,
                   "splits": {sp: sum(1 for w in written if w["split"] == sp) for sp in ("train", "val", "test")},
                   "reprojection_median_rel_error": {
                       "source": med("source_reprojection_median_rel_error"),
                       "imported_same_pairs": med("imported_reprojection_median_rel_error"),
                       "imported_windows": float(np.median(win)) if win else None}}
        atomic_write_json(staging / "import.json", summary)
        atomic_save_png(staging / "import_map.png", import_map(scenes, kept, cfg))
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.rename(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    r = summary["reprojection_median_rel_error"]
    log(f"wrote {len(written)} windows to {out} ({summary['splits']['train']} train, {summary['splits']['val']} val, "
        f"{summary['splits']['test']} test; split {rule}; {dropped_small} windows with < {cfg.min_frames} frames "
        f"and {dropped_overlap} overlapping another split dropped)")
    log(f"depth reprojection between neighbouring frames, median relative error: source frames "
        f"{_fmt_err(r['source'])}, the same pairs imported {_fmt_err(r['imported_same_pairs'])}, the windows' "
        f"frames (up to 2 apart) {_fmt_err(r['imported_windows'])}; map {out / 'import_map.png'}")
    return summary


def _fmt_vec(v) -> str:
    return "(" + ", ".join(f"{x:+.3f}" for x in v) + ")"


def _fmt_err(e) -> str:
    return "n/a" if e is None else f"{e:.4f}"


def _up_words(info: dict) -> str:
    est = info["up_estimate"]
    if "given" in est:
        return f"given: {est['given']}"
    if est.get("surfaces"):
        return f"auto: cameras' up refined by the floors and ceilings, {est['surfaces']['change_from_cameras_deg']:.1f} deg"
    return "auto: cameras' up (the floors and ceilings agree)"


def import_map(scenes: list[_Scene], kept: list[tuple[int, dict]], cfg: ImportConfig, size: int = 512,
               max_scenes: int = 6) -> np.ndarray:
    """Top-down picture (size x size RGB, north up) of each scene (the first ``max_scenes``) side by side: depth points
    (grey), camera path (green), windows (train blue, val yellow, test red)."""
    tiles = []
    colours = {"train": (80, 140, 255), "val": (255, 210, 0), "test": (255, 60, 60)}
    for k, scene in enumerate(scenes[:max_scenes]):
        pts = np.concatenate(scene.points + [np.zeros((0, 3))])
        cams = scene.c2w[:, :3, 3]
        corners = [w["bounds"][:, :2] for kk, w in kept if kk == k]
        xy = np.concatenate([pts[:, :2], cams[:, :2]] + corners)
        lo, hi = xy.min(0) - 1, xy.max(0) + 1
        span = float((hi - lo).max())
        lo = (lo + hi) / 2 - span / 2  # centred
        img = np.full((size, size, 3), 20, np.uint8)

        def px(p):
            return ((p[..., 0] - lo[0]) / span * (size - 1), (1 - (p[..., 1] - lo[1]) / span) * (size - 1))

        if len(pts):
            u, v = px(pts)
            img[np.clip(v.astype(int), 0, size - 1), np.clip(u.astype(int), 0, size - 1)] = (150, 150, 150)
        pil = Image.fromarray(img)
        draw = ImageDraw.Draw(pil)
        for kk, w in kept:
            if kk != k:
                continue
            (u0, v0), (u1, v1) = px(w["bounds"][0, :2]), px(w["bounds"][1, :2])
            draw.rectangle([u0, v1, u1, v0], outline=colours[w["split"]], width=2)
        u, v = px(cams)
        draw.line(list(zip(u.tolist(), v.tolist())), fill=(0, 220, 0), width=1)
        tiles.append(np.asarray(pil))
    return np.concatenate(tiles, 1)
