"""GSN's trajectory folders (the VizDoom and Replica releases of apple/ml-gsn), read-only.

One trajectory folder::

    cameras.json        list of {"K": 3 x 3 (or 4 x 4), "Rt": 4 x 4 world-to-camera}, one per frame
    000_rgb.png         RGB(A), 8-bit
    000_depth.png       VizDoom: the engine's uint8 depth buffer; map units = value / 14 * 100
    000_depth.tiff      Replica: float depth; metres = value * 1000 (as GSN's loader scales it)

A release root holds ``train/`` and ``test/`` (sometimes ``val/``) folders of trajectories.

Conventions (GSN's ``models/nerf_utils.py``): camera axes as OpenGL (x right, y up, looking
along -z), planar z-depth, world up = +y, principal point at the image centre. ``K`` is in
pixels of the stored frames when ``K[0][0] > 8``, otherwise normalised (Replica: K = 1 means
a focal length of half the image width, its 90 degree field of view).

uint8 depth 0 (no hit) and 255 (saturated: sky, far walls) are invalid.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nfldm.data.format import DataError, _open_image, raise_problem, read_image_file

__all__ = ["GSNTrajectory", "find_trajectories", "is_gsn_folder", "read_trajectory", "read_gsn_depth",
           "GSN_SPLITS", "VIZDOOM_DEPTH_UNITS", "DOOM_UNITS_PER_METRE"]

GSN_SPLITS = ("train", "val", "test")
VIZDOOM_DEPTH_UNITS = 100.0 / 14.0   # map units per uint8 depth step (GSN's loader)
REPLICA_DEPTH_SCALE = 1000.0         # GSN's loader: tiff value * 1000
DOOM_UNITS_PER_METRE = 128.0 / 3.0   # Doom's automap grid: 128 map units = 3 m


@dataclass
class GSNTrajectory:
    """One trajectory folder, parsed: N frames of size w x h.

    intr: N x 4 ``[fx, fy, cx, cy]`` pixels (our convention: pixel centres at +0.5);
    c2w: N x 4 x 4 camera-to-world (OpenGL camera axes, GSN's world: y up, its units);
    depth_kind: "uint8" (VizDoom), "uint16" or "float" (tiff); split: train / val / test from
    the release's folder, or None.
    """

    path: Path
    rgb_paths: list[Path]
    depth_paths: list[Path]
    intr: np.ndarray
    c2w: np.ndarray
    w: int
    h: int
    depth_kind: str
    split: str | None

    def __len__(self) -> int:
        return len(self.rgb_paths)


def is_gsn_folder(path: Path) -> bool:
    """A trajectory folder, or a folder of them (any depth below, up to split folders)."""
    return bool(find_trajectories(path, limit=1))


def find_trajectories(root: str | os.PathLike, limit: int | None = None) -> list[tuple[Path, str | None]]:
    """(trajectory folder, split or None) of every folder with a ``cameras.json`` under ``root``
    (the folder itself, its children, or split folders' children), sorted by path."""
    root = Path(root)
    if (root / "cameras.json").is_file():
        return [(root, None)]
    found = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []:
        if (child / "cameras.json").is_file():
            found.append((child, None))
        elif child.name in GSN_SPLITS:
            found += [(t, child.name) for t in sorted(child.iterdir())
                      if t.is_dir() and not t.name.startswith(".") and (t / "cameras.json").is_file()]
        if limit and len(found) >= limit:
            break
    return found


def _matrix(value, shape_ok, where: str) -> np.ndarray:
    try:
        m = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        raise DataError(f"{where} is not an array of numbers") from None
    if m.shape not in shape_ok:
        raise DataError(f"{where} has shape {list(m.shape)}, expected one of {[list(s) for s in shape_ok]}")
    if not np.isfinite(m).all():
        raise DataError(f"{where} has non-finite values (NaN or inf)")
    return m


def _intrinsics(K: np.ndarray, w: int, h: int) -> np.ndarray:
    """GSN ``K`` -> ``[fx, fy, cx, cy]`` in pixels of a w x h frame (see the module docstring)."""
    fx, fy = abs(K[0, 0]), abs(K[1, 1])
    if fx <= 8:  # normalised: 1 = half the image width
        fx, fy = fx * w / 2, fy * w / 2
    cx = K[0, 2] if K[0, 2] > 1 else w / 2
    cy = K[1, 2] if K[1, 2] > 1 else h / 2
    return np.array([fx, fy, cx, cy])


def read_trajectory(path: str | os.PathLike, split: str | None = None) -> GSNTrajectory:
    """Parse one trajectory folder (cameras and file names; frames are read by
    :func:`read_gsn_depth` / ``read_image_file``). Raises DataError naming the file."""
    path = Path(path)
    cams_path = path / "cameras.json"
    try:
        cams = json.loads(cams_path.read_text())
    except FileNotFoundError:
        raise DataError(f"{cams_path}: file is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{cams_path}: cannot read JSON ({type(e).__name__}: {e})") from None
    if not isinstance(cams, list) or not cams:
        raise DataError(f"{cams_path}: must be a non-empty list of {{'K', 'Rt'}} objects")
    rgb = [path / f"{i:03d}_rgb.png" for i in range(len(cams))]
    depth = []
    for i in range(len(cams)):
        for ext in ("png", "tiff", "tif"):
            p = path / f"{i:03d}_depth.{ext}"
            if p.is_file():
                depth.append(p)
                break
        else:
            raise DataError(f"{path / f'{i:03d}_depth.png'}: depth file is missing (nor .tiff) for frame {i} "
                            f"of {len(cams)} in cameras.json")
        if not rgb[i].is_file():
            raise DataError(f"{rgb[i]}: image file is missing for frame {i} of {len(cams)} in cameras.json")
    first = read_image_file(rgb[0], None, None)
    h, w = first.shape[:2]
    intr, c2w = [], []
    for i, cam in enumerate(cams):
        if not isinstance(cam, dict) or "K" not in cam or "Rt" not in cam:
            raise DataError(f"{cams_path}: entry {i} must be an object with keys 'K' and 'Rt'")
        K = _matrix(cam["K"], [(3, 3), (4, 4)], f"{cams_path}: entry {i} 'K'")
        Rt = _matrix(cam["Rt"], [(4, 4)], f"{cams_path}: entry {i} 'Rt'")
        R = Rt[:3, :3]
        if (np.abs(R.T @ R - np.eye(3)).max() > 1e-3 or abs(np.linalg.det(R) - 1) > 1e-3
                or np.abs(Rt[3] - [0, 0, 0, 1]).max() > 1e-6):
            raise DataError(f"{cams_path}: entry {i} 'Rt' is not a rigid world-to-camera transform")
        pose = np.eye(4)
        pose[:3, :3] = R.T
        pose[:3, 3] = -R.T @ Rt[:3, 3]
        intr.append(_intrinsics(K, w, h))
        c2w.append(pose)
    kind = _depth_kind(depth[0])
    return GSNTrajectory(path, rgb, depth, np.stack(intr), np.stack(c2w), w, h, kind, split)


def _open(path: Path) -> tuple[str, np.ndarray]:
    """(PIL mode, array) of a depth file; DataError naming it when missing or undecodable."""
    opened = _open_image(path, "depth", raise_problem)
    assert opened is not None
    return opened


def _kind_of(path: Path, mode: str) -> str:
    if mode == "L":
        return "uint8"
    if mode in ("I;16", "I;16L", "I;16B", "I"):
        return "uint16"
    if mode == "F":
        return "float"
    raise DataError(f"{path}: depth image mode {mode!r} is not one GSN uses (8-bit 'L', 16-bit or float tiff)")


def _depth_kind(path: Path) -> str:
    return _kind_of(path, _open(path)[0])


def read_gsn_depth(path: Path, kind: str, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """One depth file -> (depth float64 h x w in GSN's world units, valid bool h x w).

    uint8: value * 100 / 14 (VizDoom map units; 0 and 255 invalid); float: value * 1000 (GSN's
    Replica loader); uint16: the value itself. Non-finite or non-positive depth is invalid.
    """
    mode, arr = _open(path)
    if arr.shape[:2] != (h, w):
        raise DataError(f"{path}: depth is {arr.shape[1]}x{arr.shape[0]}, but the frames are {w}x{h}")
    if arr.ndim != 2 or _kind_of(path, mode) != kind:
        raise DataError(f"{path}: depth image mode {mode!r} differs from the trajectory's first depth file ({kind})")
    a = arr.astype(np.float64)
    if kind == "uint8":
        valid = (arr > 0) & (arr < 255)
        d = a * VIZDOOM_DEPTH_UNITS
    elif kind == "float":
        d = a * REPLICA_DEPTH_SCALE
        valid = np.isfinite(d) & (d > 0)
    else:
        d, valid = a, arr > 0
    return np.where(valid, d, 0.0), valid


def default_units_per_metre(kind: str) -> float:
    """GSN world units per metre: Doom map units for uint8 (VizDoom) depth, else metres."""
    return DOOM_UNITS_PER_METRE if kind == "uint8" else 1.0
