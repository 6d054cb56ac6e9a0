"""A ray-cast room for the import tests: exact RGB-D frames of a box room with pillars, written
as a nerfstudio scene (any up axis, any frame size, millimetre depth) or a GSN trajectory folder
(uint8 VizDoom-style depth, Rt world-to-camera, y up, map units)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from nfldm.data.format import write_scene

# z-up world, metres: the room [0, L] x [0, 8] x [0, 3] and two pillars
HEIGHT = 3.0
FACE_COLOURS = np.array([[200, 60, 60], [60, 200, 60], [60, 60, 200], [200, 200, 60],
                         [200, 60, 200], [60, 200, 200], [220, 220, 220], [120, 90, 60]], np.float64)


def boxes(length: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pillars (lo, hi) spaced along the room."""
    out = []
    for x in np.arange(3.0, length - 2.0, 6.0):
        y = 2.5 if int(x) % 12 < 6 else 5.0
        out.append((np.array([x, y, 0.0]), np.array([x + 0.8, y + 0.8, HEIGHT])))
    return out


def cast(origins: np.ndarray, dirs: np.ndarray, length: float):
    """Rays (M x 3 each) -> (distance along dirs M, face id M, hit points M x 3)."""
    room_lo, room_hi = np.array([0.0, 0.0, 0.0]), np.array([length, 8.0, HEIGHT])
    # inside the room: exit distance per axis
    with np.errstate(divide="ignore", invalid="ignore"):
        t_hi = np.where(dirs > 0, (room_hi - origins) / dirs, np.inf)
        t_lo = np.where(dirs < 0, (room_lo - origins) / dirs, np.inf)
    t_axes = np.minimum(t_hi, t_lo)
    axis = t_axes.argmin(1)
    t = t_axes[np.arange(len(t_axes)), axis]
    face = axis * 2 + (np.take_along_axis(dirs, axis[:, None], 1)[:, 0] > 0)
    for k, (lo, hi) in enumerate(boxes(length)):
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (lo - origins) / dirs, (hi - origins) / dirs
        tmin = np.nanmax(np.minimum(t1, t2), 1)
        tmax = np.nanmin(np.maximum(t1, t2), 1)
        hit = (tmax >= tmin) & (tmin > 1e-6) & (tmin < t)
        t = np.where(hit, tmin, t)
        face = np.where(hit, 6 + k % 2, face)
    return t, face, origins + t[:, None] * dirs


def render(c2w: np.ndarray, intr, w: int, h: int, length: float):
    """One frame: (rgb uint8 h x w x 3, planar z-depth h x w metres). c2w in the z-up world."""
    fx, fy, cx, cy = intr
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    d_cam = np.stack([(u - cx) / fx, -(v - cy) / fy, -np.ones_like(u)], -1).reshape(-1, 3)
    dirs = d_cam @ c2w[:3, :3].T
    origins = np.broadcast_to(c2w[:3, 3], dirs.shape)
    t, face, p = cast(origins, dirs, length)
    checker = (np.floor(p[:, 0] / 0.5) + np.floor(p[:, 1] / 0.5) + np.floor(p[:, 2] / 0.5)) % 2
    rgb = FACE_COLOURS[face] * (0.65 + 0.35 * checker[:, None])
    return rgb.reshape(h, w, 3).round().astype(np.uint8), t.reshape(h, w)  # d_cam z = -1: t is z-depth


def path(n: int, length: float, tilt_deg: float = 0.0, seed: int = 0) -> np.ndarray:
    """n camera-to-world poses (z-up world) walking along the room at 1.5 m, turning, with
    random pitch / roll up to ``tilt_deg``."""
    rng = np.random.default_rng(seed)
    xs = np.linspace(1.0, length - 1.0, n)
    ys = 4.0 + 2.5 * np.sin(xs / 3.0)
    poses = []
    for i, (x, y) in enumerate(zip(xs, ys)):
        yaw = 0.6 * np.sin(i / 2.0) + (np.pi if i % 5 == 4 else 0.0)
        pitch, roll = np.radians(rng.uniform(-tilt_deg, tilt_deg, 2))
        fwd = np.array([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), np.sin(pitch)])
        right = np.cross(fwd, [0, 0, 1.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, fwd)
        c, s = np.cos(roll), np.sin(roll)
        right, up = c * right + s * up, -s * right + c * up
        T = np.eye(4)
        T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = right, up, -fwd, [x, y, 1.5]
        poses.append(T)
    return np.stack(poses)


Z_UP_TO_Y_UP = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], np.float64)  # (x, y, z) -> (x, z, -y)


def write_nerfstudio_room(folder: Path, n: int = 16, w: int = 96, h: int = 72, length: float = 14.0,
                          tilt_deg: float = 0.0, world: np.ndarray = Z_UP_TO_Y_UP, seed: int = 0) -> dict:
    """A nerfstudio scene (millimetre depth PNGs) of the room seen from ``path``, its world
    rotated by ``world`` (default: y up). Returns the true z-up poses and intrinsics."""
    intr = [0.55 * w, 0.55 * w, w / 2, h / 2]
    c2w = path(n, length, tilt_deg, seed)
    frames = [render(T, intr, w, h, length) for T in c2w]
    write_scene(folder, np.stack([f[0] for f in frames]), np.stack([f[1] for f in frames]),
                world @ c2w, intr)
    return {"c2w": c2w, "intr": intr}


def write_gsn_room(folder: Path, n: int = 16, w: int = 80, h: int = 60, length: float = 14.0,
                   units_per_metre: float = 128 / 3, seed: int = 0) -> dict:
    """A GSN VizDoom-style trajectory folder: cameras.json (K pixels, Rt world-to-camera, y-up
    world in map units), 000_rgb.png, 000_depth.png (uint8, map units = value / 14 * 100)."""
    folder.mkdir(parents=True, exist_ok=True)
    intr = [0.5 * w, 0.5 * w, w / 2, h / 2]
    c2w = path(n, length, 0.0, seed)
    cams = []
    for i, T in enumerate(c2w):
        rgb, depth = render(T, intr, w, h, length)
        Ty = Z_UP_TO_Y_UP @ T
        Ty[:3, 3] *= units_per_metre
        K = [[intr[0], 0, intr[2]], [0, intr[1], intr[3]], [0, 0, 1]]
        cams.append({"K": K, "Rt": np.linalg.inv(Ty).tolist()})
        Image.fromarray(rgb).save(folder / f"{i:03d}_rgb.png")
        buf = np.clip(np.round(depth * units_per_metre * 14 / 100), 1, 254).astype(np.uint8)
        Image.fromarray(buf, mode="L").save(folder / f"{i:03d}_depth.png")
    (folder / "cameras.json").write_text(json.dumps(cams))
    return {"c2w": c2w, "intr": intr}
