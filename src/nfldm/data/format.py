"""The on-disk scene and dataset format (see ``docs/data-format.md``).

A scene folder holds nerfstudio's ``transforms.json`` plus RGB PNGs and 16-bit depth PNGs; a
dataset root holds ``dataset.json`` listing scene folders with split, group and bounds.

Validation is shared between the loader and the checker (``nfldm.data.check``): every
``parse_*`` / ``read_*_file`` / ``check_*`` function takes a ``report`` callable that receives
one message per problem, each starting with the offending file's path. The loader passes
:func:`raise_problem` (the first problem raises :class:`DataError`), the checker passes
``list.append`` (all problems are collected, and the function carries on where it can).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from nfldm.camera import is_valid_pose, rigidity_error, unproject_depth
from nfldm.utils.io import atomic_save_png, atomic_write_bytes, atomic_write_json, png_bytes

__all__ = [
    "DataError",
    "Frame",
    "SceneMeta",
    "SceneEntry",
    "DatasetIndex",
    "SPLITS",
    "DEFAULT_DEPTH_SCALE",
    "RIGID_TOL",
    "raise_problem",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_save_png",
    "write_scene",
    "write_dataset_index",
    "parse_transforms",
    "read_transforms",
    "parse_dataset",
    "read_dataset",
    "parse_bounds",
    "check_cameras_in_bounds",
    "read_image_file",
    "read_depth_file",
    "read_frame_raw",
    "decode_depth",
    "load_frame",
    "auto_bounds",
]

SPLITS = ("train", "val", "test")
DEFAULT_DEPTH_SCALE = 0.001  # nerfstudio's default: depth PNG values are millimetres
RIGID_TOL = 1e-3  # max |R^T R - I|, |det R - 1|, |last row - [0,0,0,1]| of a valid pose
DATASET_FORMAT = "nfldm-dataset"
DATASET_VERSION = 1
INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy")
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
SCENE_KEYS = ("name", "split", "group", "bounds")
# Everything PIL may raise for a missing-header / truncated / corrupt image file.
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, Image.DecompressionBombError)


class DataError(Exception):
    """A dataset file is missing or invalid. The message starts with the file's path."""


Report = Callable[[str], None]


def raise_problem(message: str) -> None:
    """``report`` callable of the loader: raise the first problem as a :class:`DataError`."""
    raise DataError(message)


# --------------------------------------------------------------------------------------
# Data classes
# --------------------------------------------------------------------------------------


@dataclass
class Frame:
    """One frame of a scene: resolved file paths (None if the entry is broken) and size."""

    image_path: Path | None
    depth_path: Path | None
    w: int | None
    h: int | None


@dataclass
class SceneMeta:
    """Parsed ``transforms.json`` of one scene (N frames).

    intr: N x 4 float64 ``[fx, fy, cx, cy]`` per frame (per-frame values override global ones);
    c2w: N x 4 x 4 float64 camera-to-world (OpenGL camera axes); w, h: the common image size.
    Entries of frames that failed validation are NaN (only seen when parsed by the checker).
    """

    path: Path
    frames: list[Frame]
    intr: np.ndarray
    c2w: np.ndarray
    w: int
    h: int
    depth_unit_scale_factor: float = DEFAULT_DEPTH_SCALE
    extra: dict = field(default_factory=dict)

    @property
    def transforms_path(self) -> Path:
        return self.path / "transforms.json"

    def __len__(self) -> int:
        return len(self.frames)


@dataclass
class SceneEntry:
    """One scene of a dataset. bounds: 2 x 3 float64 ``[[xmin, ymin, zmin], [xmax, ymax, zmax]]``.

    split, group and bounds are None only where invalid, which only the checker sees.
    """

    name: str
    split: str | None
    group: str | None
    bounds: np.ndarray | None
    path: Path


@dataclass
class DatasetIndex:
    """Parsed ``dataset.json`` (``index_path`` is None for a single scene folder)."""

    root: Path
    scenes: list[SceneEntry]
    index_path: Path | None = None

    def split(self, name: str) -> list[SceneEntry]:
        """The scenes of one split, in file order."""
        return [s for s in self.scenes if s.split == name]

    @property
    def source(self) -> Path:
        """The file that defines the scenes (dataset.json, or the single scene's transforms.json)."""
        return self.index_path or self.root / "transforms.json"


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _fmt_items(items: list, limit: int = 5) -> str:
    """``"a, b, c (and 4 more)"``."""
    items = [str(x) for x in items]
    text = ", ".join(items[:limit])
    return text + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


def _fmt_frames(indices: list[int]) -> str:
    return ("frame " if len(indices) == 1 else "frames ") + _fmt_items(indices)


class _Grouped:
    """Collects problems by kind so that each kind gives one line per file.

    ``add(kind, text, item)`` remembers the first text of each kind and all items;
    ``emit(prefix, report, fmt)`` reports ``"{prefix}: {text} ({fmt(items)})"`` per kind.
    """

    def __init__(self) -> None:
        self.kinds: dict[Any, tuple[str, list]] = {}

    def add(self, kind: Any, text: str, item: Any) -> None:
        self.kinds.setdefault(kind, (text, []))[1].append(item)

    def emit(self, prefix: Path, report: Report, fmt: Callable[[list], str]) -> None:
        for text, items in self.kinds.values():
            report(f"{prefix}: {text} ({fmt(items)})")


def _load_json(path: Path, report: Report) -> Any | None:
    """Parse a JSON file; report and return None if it is missing or invalid."""
    if not path.is_file():
        report(f"{path}: file is missing")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        report(f"{path}: cannot read file ({e})")
    except json.JSONDecodeError as e:
        report(f"{path}: invalid JSON ({e})")
    return None


def pose_error(c2w: np.ndarray) -> float:
    """Rigidity error of one pose (4 x 4), see :func:`nfldm.camera.rigidity_error`."""
    return float(rigidity_error(torch.from_numpy(np.asarray(c2w, dtype=np.float64))))


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def _depth_to_raw(depth_m: np.ndarray, scale: float) -> np.ndarray:
    """Metres (N x H x W, 0 / non-finite = invalid) -> uint16 PNG values (0 = invalid)."""
    with np.errstate(invalid="ignore", over="ignore"):
        raw = np.round(np.asarray(depth_m, dtype=np.float64) / scale)
        ok = np.isfinite(raw) & (raw > 0) & (raw <= 65535)
    return np.where(ok, raw, 0).astype(np.uint16)


def _intr_entry(values: np.ndarray) -> dict[str, float]:
    return {k: float(v) for k, v in zip(INTRINSIC_KEYS, values)}


def _check_write_inputs(images, depth_m, c2w, intr) -> None:
    n, h, w = images.shape[:3]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"images must be uint8 N x H x W x 3, got {images.dtype} {images.shape}")
    if depth_m.shape != (n, h, w):
        raise ValueError(f"depth_m must be N x H x W = {(n, h, w)}, got {depth_m.shape}")
    if c2w.shape != (n, 4, 4):
        raise ValueError(f"c2w must be N x 4 x 4 = {(n, 4, 4)}, got {c2w.shape}")
    if intr.shape not in ((4,), (n, 4)):
        raise ValueError(f"intr must be [fx, fy, cx, cy] or N x 4, got shape {intr.shape}")
    if not (np.isfinite(intr).all() and (intr[..., :2] > 0).all()):
        raise ValueError(f"intrinsics must be finite with fx, fy > 0, got {intr.tolist()}")
    bad = np.flatnonzero(~is_valid_pose(torch.from_numpy(c2w), RIGID_TOL).numpy())
    if len(bad):
        raise ValueError(f"c2w[{bad[0]}] is not a finite rigid transform: {c2w[bad[0]].tolist()}")


def write_scene(
    scene_dir: str | os.PathLike,
    images: np.ndarray,
    depth_m: np.ndarray,
    c2w: np.ndarray,
    intr,
    extra: dict | None = None,
    depth_unit_scale_factor: float = DEFAULT_DEPTH_SCALE,
    files: dict[str, bytes] | None = None,
) -> Path:
    """Write one scene folder; returns the path of its ``transforms.json``.

    images: uint8 N x H x W x 3; depth_m: float N x H x W metres (0 or non-finite = invalid;
    depths that do not fit 16 bits at this scale are also stored as 0 = invalid);
    c2w: N x 4 x 4 camera-to-world; intr: ``[fx, fy, cx, cy]`` (or N x 4 per frame);
    extra: dataset-specific JSON data stored under the key ``"nfldm"``; files: more files of
    the scene (relative path -> content), e.g. ``{"bev.npz": ...}``.

    Writes ``images/00000.png``, ``depth/00000.png``, ..., the ``files`` and ``transforms.json``
    into a hidden staging folder next to ``scene_dir``, then commits it: renamed to
    ``scene_dir`` when that does not exist (one rename for the whole scene), otherwise moved
    into it file by file with ``transforms.json`` removed first and put back last. Either way
    a folder with a ``transforms.json`` is a complete scene, also if the writer is killed.
    """
    scene_dir = Path(scene_dir)
    images, depth_m = np.asarray(images), np.asarray(depth_m)
    c2w, intr = np.asarray(c2w, dtype=np.float64), np.asarray(intr, dtype=np.float64)
    _check_write_inputs(images, depth_m, c2w, intr)
    n, h, w = images.shape[:3]
    raw = _depth_to_raw(depth_m, depth_unit_scale_factor)
    intr_n = np.broadcast_to(intr, (n, 4))
    scene_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=scene_dir.parent, prefix=f".{scene_dir.name}.", suffix=".partial"))
    try:
        (staging / "images").mkdir()
        (staging / "depth").mkdir()
        frames = []
        for i in range(n):
            image_rel, depth_rel = f"images/{i:05d}.png", f"depth/{i:05d}.png"
            (staging / image_rel).write_bytes(png_bytes(images[i], compress_level=1))
            (staging / depth_rel).write_bytes(png_bytes(raw[i], compress_level=1))
            frame = {"file_path": image_rel, "depth_file_path": depth_rel, "transform_matrix": c2w[i].tolist()}
            if not np.array_equal(intr_n[i], intr_n[0]):
                frame.update(_intr_entry(intr_n[i]))
            frames.append(frame)
        for rel, data in (files or {}).items():
            dest = staging / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        meta = {"camera_model": "OPENCV", **_intr_entry(intr_n[0]), "w": int(w), "h": int(h)}
        meta.update({k: 0.0 for k in ("k1", "k2", "p1", "p2")})
        meta.update({"depth_unit_scale_factor": float(depth_unit_scale_factor), "frames": frames})
        if extra is not None:
            meta["nfldm"] = extra
        atomic_write_json(staging / "transforms.json", meta)  # fsynced: the commit marker
        _commit_folder(staging, scene_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return scene_dir / "transforms.json"


def _commit_folder(staging: Path, dest: Path) -> None:
    """Move the complete scene folder ``staging`` to ``dest`` (see :func:`write_scene`)."""
    try:
        os.rename(staging, dest)  # fails if dest exists (non-empty on Linux; always on Windows)
        return
    except OSError:
        if not dest.is_dir():
            raise
    marker = dest / "transforms.json"
    marker.unlink(missing_ok=True)  # a half-rewritten scene must not look complete
    for src in sorted(staging.rglob("*")):
        if src.is_file() and src.name != "transforms.json":
            target = dest / src.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, target)
    os.replace(staging / "transforms.json", marker)


def write_dataset_index(root: str | os.PathLike, scenes: list[dict]) -> Path:
    """Write ``<root>/dataset.json`` atomically; returns its path.

    scenes: dicts ``{name, split, group, bounds}`` with bounds 2 x 3
    ``[[xmin, ymin, zmin], [xmax, ymax, zmax]]`` in metres.
    """
    entries = []
    for s in scenes:
        missing = [k for k in SCENE_KEYS if k not in s]
        if missing:
            raise ValueError(f"scene entry {s!r} lacks keys {missing}")
        if s["split"] not in SPLITS:
            raise ValueError(f"scene {s['name']!r}: split {s['split']!r} is not one of {SPLITS}")
        bounds, problem = parse_bounds(s["bounds"])
        if problem:
            raise ValueError(f"scene {s['name']!r}: bounds {problem}")
        extra = {k: v for k, v in s.items() if k not in SCENE_KEYS}
        entries.append({"name": str(s["name"]), "split": s["split"], "group": str(s["group"]),
                        "bounds": bounds.tolist(), **extra})
    index = {"format": DATASET_FORMAT, "version": DATASET_VERSION, "units": "metres", "up": "+z",
             "scenes": entries}
    path = Path(root) / "dataset.json"
    atomic_write_json(path, index)
    return path


# --------------------------------------------------------------------------------------
# transforms.json
# --------------------------------------------------------------------------------------


def _check_camera_model(tf: Path, data: dict, report: Report) -> None:
    model = data.get("camera_model", "OPENCV")
    if model not in ("OPENCV", "PINHOLE"):
        report(f"{tf}: camera_model {model!r} is not supported (nfldm needs a pinhole camera: "
               "OPENCV or PINHOLE without distortion)")
    distorted = [k for k in DISTORTION_KEYS if k in data and data[k] != 0]
    if distorted:
        report(f"{tf}: lens distortion ({', '.join(distorted)} not 0) is not supported; "
               "undistort the images first")


def _depth_scale(tf: Path, data: dict, report: Report) -> float:
    scale = data.get("depth_unit_scale_factor", DEFAULT_DEPTH_SCALE)
    if not (_is_number(scale) and math.isfinite(scale) and scale > 0):
        report(f"{tf}: depth_unit_scale_factor must be a positive finite number, got {scale!r}")
        return DEFAULT_DEPTH_SCALE
    return float(scale)


def _frame_number(key: str, frame: dict, data: dict, i: int, bad: _Grouped, kind: str) -> float:
    """Per-frame value of an intrinsic (frame overrides global); NaN if missing or invalid.

    kind: "positive" (fl_x, fl_y), "finite" (cx, cy) or "size" (w, h: positive integer).
    """
    if key in frame:
        value, where = frame[key], "per-frame"
    elif key in data:
        value, where = data[key], "global"
    else:
        bad.add(("missing", key), f"missing key '{key}' (neither global nor per frame)", i)
        return math.nan
    ok = _is_number(value) and math.isfinite(value)
    if kind != "finite":
        ok = ok and value > 0
    if kind == "size":
        ok = ok and float(value).is_integer()
    if not ok:
        need = {"positive": "a positive finite number", "finite": "a finite number",
                "size": "a positive integer"}[kind]
        bad.add(("bad", key, where), f"{where} '{key}' must be {need}, got {value!r}", i)
        return math.nan
    return float(value)


def _frame_path(scene_dir: Path, key: str, frame: dict, i: int, bad: _Grouped) -> Path | None:
    value = frame.get(key)
    if value is None:
        why = "; nfldm needs a depth image for every frame" if key == "depth_file_path" else ""
        bad.add(("missing", key), f"missing key '{key}'{why}", i)
        return None
    if not isinstance(value, str) or not value:
        bad.add(("bad", key), f"'{key}' must be a non-empty string", i)
        return None
    return scene_dir / value


def _frame_pose(frame: dict, i: int, bad: _Grouped) -> np.ndarray | None:
    """The frame's 4 x 4 transform_matrix, or None (reported) if missing or invalid."""
    if "transform_matrix" not in frame:
        bad.add(("missing", "transform_matrix"), "missing key 'transform_matrix'", i)
        return None
    try:
        m = np.asarray(frame["transform_matrix"], dtype=np.float64)
    except (ValueError, TypeError):
        m = None
    if m is None or m.shape != (4, 4):
        bad.add("pose_shape", "transform_matrix is not a 4x4 array of numbers", i)
        return None
    if not np.isfinite(m).all():
        bad.add("pose_finite", "transform_matrix has non-finite values (NaN or inf)", i)
        return None
    err = pose_error(m)
    if err > RIGID_TOL:
        bad.add("pose_rigid", "transform_matrix is not rigid: its rotation has scale, shear or a "
                f"reflection, or its last row is not [0, 0, 0, 1] (error {err:.3g} > {RIGID_TOL:g})", i)
        return None
    return m


def _parse_frame(scene_dir: Path, frame: Any, data: dict, i: int, bad: _Grouped):
    """-> (Frame, intr 4, c2w 4 x 4) with NaN where invalid (problems go to ``bad``)."""
    nan_pose = np.full((4, 4), np.nan)
    if not isinstance(frame, dict):
        bad.add("frame_type", "frame entry is not a JSON object", i)
        return Frame(None, None, None, None), np.full(4, np.nan), nan_pose
    kinds = {"fl_x": "positive", "fl_y": "positive", "cx": "finite", "cy": "finite"}
    intr = np.array([_frame_number(k, frame, data, i, bad, kinds[k]) for k in INTRINSIC_KEYS])
    w, h = (_frame_number(k, frame, data, i, bad, "size") for k in ("w", "h"))
    size = (None, None) if math.isnan(w) or math.isnan(h) else (int(w), int(h))
    image = _frame_path(scene_dir, "file_path", frame, i, bad)
    depth = _frame_path(scene_dir, "depth_file_path", frame, i, bad)
    pose = _frame_pose(frame, i, bad)
    return Frame(image, depth, *size), intr, nan_pose if pose is None else pose


def parse_transforms(scene_dir: str | os.PathLike, report: Report = raise_problem) -> SceneMeta | None:
    """Parse and validate ``<scene_dir>/transforms.json`` (shared by loader and checker).

    Returns None only if there is no usable frame list; otherwise a :class:`SceneMeta` in
    which invalid per-frame entries are NaN / None (each problem was reported once per kind).
    """
    scene_dir = Path(scene_dir)
    tf = scene_dir / "transforms.json"
    data = _load_json(tf, report)
    if data is None:
        return None
    if not isinstance(data, dict):
        report(f"{tf}: the top level must be a JSON object")
        return None
    _check_camera_model(tf, data, report)
    scale = _depth_scale(tf, data, report)
    frames_raw = data.get("frames")
    if not isinstance(frames_raw, list) or not frames_raw:
        what = "missing key 'frames'" if frames_raw is None else "'frames' must be a non-empty list"
        report(f"{tf}: {what}")
        return None
    bad = _Grouped()
    parsed = [_parse_frame(scene_dir, f, data, i, bad) for i, f in enumerate(frames_raw)]
    bad.emit(tf, report, _fmt_frames)
    frames = [p[0] for p in parsed]
    sizes = sorted({(f.w, f.h) for f in frames if f.w is not None})
    if len(sizes) > 1:
        report(f"{tf}: frames have different image sizes {_fmt_items([f'{w}x{h}' for w, h in sizes])}; "
               "nfldm needs one size per scene")
    extra = data.get("nfldm", {})
    if not isinstance(extra, dict):
        report(f"{tf}: 'nfldm' must be a JSON object")
        extra = {}
    w, h = sizes[0] if sizes else (0, 0)
    return SceneMeta(path=scene_dir, frames=frames, intr=np.stack([p[1] for p in parsed]),
                     c2w=np.stack([p[2] for p in parsed]), w=w, h=h,
                     depth_unit_scale_factor=scale, extra=extra)


def read_transforms(scene_dir: str | os.PathLike) -> SceneMeta:
    """Read and validate a scene's ``transforms.json``; raises :class:`DataError`.

    nerfstudio allows frames without ``depth_file_path``; nfldm needs depth, so that is an
    error here.
    """
    meta = parse_transforms(scene_dir, raise_problem)
    assert meta is not None  # raise_problem raised otherwise
    return meta


# --------------------------------------------------------------------------------------
# Image files
# --------------------------------------------------------------------------------------


def _open_image(path: Path | None, what: str, report: Report) -> tuple[str, np.ndarray] | None:
    """Decode an image file fully -> (PIL mode, array); report missing / undecodable files."""
    if path is None:
        return None
    if not path.is_file():
        report(f"{path}: {what} file is missing")
        return None
    try:
        with Image.open(path) as im:
            im.load()
            return im.mode, np.asarray(im)
    except _IMAGE_ERRORS as e:
        report(f"{path}: cannot decode {what} file, corrupt or truncated? ({type(e).__name__}: {e})")
        return None


def _check_size(path: Path, what: str, arr: np.ndarray, w: int | None, h: int | None,
                report: Report) -> bool:
    got_h, got_w = arr.shape[:2]
    if w is not None and h is not None and (got_w, got_h) != (w, h):
        report(f"{path}: {what} is {got_w}x{got_h}, expected {w}x{h} (w x h from transforms.json)")
        return False
    return True


def read_image_file(path: Path | None, w: int | None, h: int | None,
                    report: Report = raise_problem) -> np.ndarray | None:
    """Decode an RGB(A) PNG/JPEG and check its size -> uint8 H x W x 3 (alpha dropped)."""
    opened = _open_image(path, "image", report)
    if opened is None:
        return None
    mode, arr = opened
    if mode not in ("RGB", "RGBA"):
        report(f"{path}: image mode is {mode!r}, expected 8-bit RGB or RGBA")
        return None
    if not _check_size(path, "image", arr, w, h, report):
        return None
    return np.ascontiguousarray(arr[..., :3])


def read_depth_file(path: Path | None, w: int | None, h: int | None,
                    report: Report = raise_problem) -> np.ndarray | None:
    """Decode a 16-bit single-channel depth PNG and check its size -> uint16 H x W (raw)."""
    opened = _open_image(path, "depth", report)
    if opened is None:
        return None
    mode, arr = opened
    if mode not in ("I;16", "I;16L", "I;16B", "I"):
        report(f"{path}: depth image mode is {mode!r}, expected 16-bit single channel "
               "(PIL mode 'I;16' or 'I')")
        return None
    if not _check_size(path, "depth image", arr, w, h, report):
        return None
    if mode == "I" and arr.size and (arr.min() < 0 or arr.max() > 65535):
        report(f"{path}: depth values outside the 16-bit range 0..65535")
        return None
    return arr.astype(np.uint16)


def read_frame_raw(meta: SceneMeta, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame i as stored -> (rgb uint8 H x W x 3, raw depth uint16 H x W); raises DataError."""
    frame = meta.frames[i]
    if frame.image_path is None or frame.depth_path is None:
        raise DataError(f"{meta.transforms_path}: frame {i} has no valid image or depth path")
    rgb = read_image_file(frame.image_path, meta.w, meta.h)
    raw = read_depth_file(frame.depth_path, meta.w, meta.h)
    return rgb, raw


def decode_depth(raw: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """uint16 ... x H x W -> (depth float32 metres, valid bool); 0 = invalid."""
    return (raw.astype(np.float64) * scale).astype(np.float32), raw > 0


def load_frame(meta: SceneMeta, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame i -> (rgb float32 H x W x 3 in [0, 1], depth float32 H x W metres, valid bool H x W).

    Raises :class:`DataError` for a missing / undecodable file, wrong size or wrong mode.
    """
    rgb, raw = read_frame_raw(meta, i)
    depth, valid = decode_depth(raw, meta.depth_unit_scale_factor)
    return rgb.astype(np.float32) / 255.0, depth, valid


# --------------------------------------------------------------------------------------
# dataset.json
# --------------------------------------------------------------------------------------


def parse_bounds(value: Any) -> tuple[np.ndarray | None, str | None]:
    """-> (bounds 2 x 3 float64, None) or (None, what is wrong)."""
    try:
        b = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        return None, "must be [[xmin, ymin, zmin], [xmax, ymax, zmax]] (a 2x3 array of numbers)"
    if b.shape != (2, 3):
        return None, f"must be [[xmin, ymin, zmin], [xmax, ymax, zmax]] (2x3), got shape {list(b.shape)}"
    if not np.isfinite(b).all():
        return None, "has non-finite values"
    if not (b[0] < b[1]).all():
        return None, "min must be < max on every axis"
    return b, None


def check_cameras_in_bounds(meta: SceneMeta, bounds: np.ndarray, source: Path,
                            report: Report = raise_problem, eps: float = 1e-6) -> None:
    """Report frames whose camera centre lies outside ``bounds`` (2 x 3) given in ``source``."""
    centres = meta.c2w[:, :3, 3]
    inside = ((centres >= bounds[0] - eps) & (centres <= bounds[1] + eps)).all(-1)
    outside = np.nonzero(np.isfinite(centres).all(-1) & ~inside)[0]
    if outside.size:
        i = int(outside[0])
        report(f"{meta.transforms_path}: camera centre outside the scene bounds "
               f"{bounds.tolist()} given in {source} ({_fmt_frames(outside.tolist())}; "
               f"frame {i} is at {np.round(centres[i], 4).tolist()})")


def _valid_name(name: Any) -> bool:
    if not isinstance(name, str) or not name:
        return False
    p = PurePosixPath(name)
    return not p.is_absolute() and ".." not in p.parts and "\\" not in name


def _check_header(dj: Path, data: dict, report: Report) -> None:
    expected = {"format": (DATASET_FORMAT,), "version": (DATASET_VERSION,),
                "units": ("metres", "meters", "m"), "up": ("+z",)}
    for key, allowed in expected.items():
        if key in data and data[key] not in allowed:
            report(f"{dj}: '{key}' is {data[key]!r}, expected {allowed[0]!r}")


def _parse_entry(j: int, s: Any, bad: _Grouped) -> tuple | None:
    """One entry of ``scenes`` -> (name, split, group, bounds) with None for invalid fields."""
    if not isinstance(s, dict):
        bad.add("entry_type", "scene entry is not a JSON object", f"scenes[{j}]")
        return None
    name = s.get("name")
    label = name if _valid_name(name) else f"scenes[{j}]"
    for key in SCENE_KEYS:
        if key not in s:
            bad.add(("missing", key), f"missing key '{key}'", label)
    if "name" in s and not _valid_name(name):
        bad.add("name", "'name' must be a folder name relative to the dataset root", label)
    split = s.get("split")
    if "split" in s and split not in SPLITS:
        bad.add("split", f"split must be one of {', '.join(SPLITS)}", f"{label}: {split!r}")
    group = s.get("group")
    if "group" in s and not (isinstance(group, str) and group):
        bad.add("group", "'group' must be a non-empty string", label)
    bounds = None
    if "bounds" in s:
        bounds, problem = parse_bounds(s["bounds"])
        if problem:
            bad.add(("bounds", problem), f"bounds {problem}", label)
    return (name if _valid_name(name) else None, split if split in SPLITS else None,
            group if isinstance(group, str) and group else None, bounds)


def _check_splits(dj: Path, fields: list[tuple], report: Report) -> None:
    """Groups in one split only, and a non-empty train split."""
    splits_of_group: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for name, split, group, _ in fields:
        if split is not None and group is not None:
            splits_of_group[group][split].append(name)
    clashes = [f"{g!r} is in " + " and ".join(f"{sp} ({_fmt_items(names, 3)})" for sp, names in by.items())
               for g, by in splits_of_group.items() if len(by) > 1]
    if clashes:
        report(f"{dj}: a group may appear in one split only, but group {'; group '.join(clashes)}")
    if not any(split == "train" for _, split, _, _ in fields):
        report(f"{dj}: the train split is empty (no scene has split 'train')")


def parse_dataset(root: str | os.PathLike, report: Report = raise_problem) -> DatasetIndex | None:
    """Parse and validate ``<root>/dataset.json`` (shared by loader and checker).

    Checks the entries (keys, names, split values, bounds), duplicates, that scene folders
    exist, that a group is in one split only and that the train split is not empty. Returns
    the distinct scenes whose folder exists (None if there is no usable scene list).
    """
    root = Path(root)
    dj = root / "dataset.json"
    if not root.is_dir():
        report(f"{root}: folder does not exist")
        return None
    if not dj.is_file():
        report(f"{dj}: file is missing (a dataset root needs dataset.json, a single scene "
               "folder needs transforms.json)")
        return None
    data = _load_json(dj, report)
    if data is None:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("scenes"), list):
        report(f"{dj}: must be a JSON object with a list 'scenes'")
        return None
    _check_header(dj, data, report)
    bad = _Grouped()
    fields = [f for j, s in enumerate(data["scenes"]) if (f := _parse_entry(j, s, bad))]
    counts: dict[str, int] = defaultdict(int)
    scenes = []
    for name, split, group, bounds in fields:
        if name is None:
            continue
        counts[name] += 1
        if counts[name] > 1:
            continue
        if not (root / name).is_dir():
            bad.add("folder", "scene folder does not exist", f"{name}: {root / name}")
        else:  # invalid fields are None (only seen by the checker: the loader raised already)
            scenes.append(SceneEntry(name, split, group, bounds, root / name))
    for name, count in counts.items():
        if count > 1:
            bad.add("duplicate", "scene listed more than once", f"{name}: {count} times")
    bad.emit(dj, report, _fmt_items)
    _check_splits(dj, fields, report)
    return DatasetIndex(root=root, scenes=scenes, index_path=dj)


def read_dataset(root: str | os.PathLike) -> DatasetIndex:
    """Read a dataset root (with ``dataset.json``) or a single scene folder; raises DataError.

    A folder with ``transforms.json`` and no ``dataset.json`` is one scene: split "train",
    group = the folder name, bounds from :func:`auto_bounds` (which reads all depth images).
    """
    root = Path(root)
    if not (root / "dataset.json").is_file() and (root / "transforms.json").is_file():
        meta = read_transforms(root)
        name = root.resolve().name
        entry = SceneEntry(name, "train", name, auto_bounds(meta), root)
        return DatasetIndex(root=root, scenes=[entry], index_path=None)
    index = parse_dataset(root, raise_problem)
    assert index is not None
    return index


# --------------------------------------------------------------------------------------
# Bounds of a user's scene
# --------------------------------------------------------------------------------------


def _frame_points(meta: SceneMeta, i: int, max_points: int) -> np.ndarray:
    """World points (M x 3) of a pixel subsample of frame i's valid depth."""
    raw = read_depth_file(meta.frames[i].depth_path, meta.w, meta.h)
    depth, valid = decode_depth(raw, meta.depth_unit_scale_factor)
    pts = unproject_depth(torch.from_numpy(depth.astype(np.float64)),
                          torch.from_numpy(meta.intr[i]), torch.from_numpy(meta.c2w[i])).numpy()
    stride = max(1, math.ceil(math.sqrt(depth.size / max_points)))
    sub = (slice(None, None, stride), slice(None, None, stride))
    return pts[sub][valid[sub]]


def auto_bounds(meta: SceneMeta, max_points_per_frame: int = 4096, percentiles=(2.0, 98.0),
                pad: float = 0.05) -> np.ndarray:
    """Bounds (2 x 3) for a scene without ``dataset.json``.

    The axis-aligned box of the 2nd..98th percentile (per axis) of the valid-depth world points
    of all frames (a pixel subsample of about ``max_points_per_frame`` per frame), united with
    all camera centres, then padded on each side by ``pad`` (5 %) of its size; an axis of
    size 0 is padded by 5 % of the largest side (or of 1 m). Raises DataError on bad files.
    """
    points = np.concatenate([_frame_points(meta, i, max_points_per_frame) for i in range(len(meta))])
    centres = meta.c2w[:, :3, 3]
    lo, hi = centres.min(0), centres.max(0)
    if len(points):
        lo = np.minimum(lo, np.percentile(points, percentiles[0], axis=0))
        hi = np.maximum(hi, np.percentile(points, percentiles[1], axis=0))
    size = hi - lo
    margin = pad * np.where(size > 0, size, max(size.max(), 1.0))
    return np.stack([lo - margin, hi + margin])
