"""Novel camera paths through an encoded scene and pictures of the reconstruction."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from nfldm import camera
from nfldm.utils.plot import colorize


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along axis 0 with edge padding. x: N x K."""
    r = max(1, int(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    xp = np.pad(x, ((r, r), (0, 0)), mode="edge")
    return np.stack([np.convolve(xp[:, j], k, mode="valid") for j in range(x.shape[1])], 1)


def novel_path(c2w: Tensor, bounds: Tensor, num_frames: int = 96, sway: float = 0.6,
               yaw_sweep_deg: float = 35.0, margin: float = 0.5) -> Tensor:
    """A smooth camera path near (not on) the recorded one.

    The recorded positions and yaws are smoothed and resampled to ``num_frames``; then the
    camera sways sideways by up to ``sway`` metres and its yaw swings by up to
    ``yaw_sweep_deg`` around the path direction, so most frames are views never recorded.
    Positions stay ``margin`` inside the box; the eye height follows the recorded one.

    c2w: F x 4 x 4 (recorded), bounds: 2 x 3  ->  num_frames x 4 x 4.
    """
    pos = c2w[:, :3, 3].double().numpy()
    fwd = -c2w[:, :3, 2].double().numpy()
    yaw = np.unwrap(np.arctan2(fwd[:, 1], fwd[:, 0]))
    sig = max(1.0, len(pos) / 12)
    track = _smooth(np.concatenate([pos, yaw[:, None]], 1), sig)
    s = np.linspace(0, len(pos) - 1, num_frames)
    track = np.stack([np.interp(s, np.arange(len(pos)), track[:, j]) for j in range(4)], 1)
    phase = np.linspace(0, 2 * math.pi, num_frames)
    yaw_new = track[:, 3] + math.radians(yaw_sweep_deg) * np.sin(phase)
    side = np.stack([np.sin(track[:, 3]), -np.cos(track[:, 3])], 1)     # right of the heading
    xy = track[:, :2] + sway * np.sin(2 * phase)[:, None] * side
    lo, hi = bounds[0, :2].double().numpy() + margin, bounds[1, :2].double().numpy() - margin
    xy = np.clip(xy, lo, hi)
    p = torch.from_numpy(np.concatenate([xy, track[:, 2:3]], 1)).float()
    return camera.pose_from_position_yaw(p, torch.from_numpy(yaw_new).float())


def to_uint8(images: Tensor) -> np.ndarray:
    """N x 3 x H x W in [0, 1] -> N x H x W x 3 uint8."""
    return (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def depth_to_rgb(depth: Tensor, valid: Tensor | None = None, hi: float = 12.0) -> np.ndarray:
    """N x H x W metres -> N x H x W x 3 uint8 (log colour ramp, invalid black)."""
    d = depth.cpu().numpy()
    inv = None if valid is None else ~valid.cpu().numpy()
    return np.stack([colorize(np.log(np.maximum(x, 0.1)), math.log(0.5), math.log(hi),
                              None if inv is None else inv[i]) for i, x in enumerate(d)])


def upscale(img: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of ... x H x W x 3."""
    return img.repeat(factor, -3).repeat(factor, -2)


def pad_to(img: np.ndarray, H: int, W: int, value: int = 255) -> np.ndarray:
    """Pad ... x h x w x 3 (h <= H, w <= W) to ... x H x W x 3, centred, with ``value``: a square
    picture (top-down view, map) beside non-square frames. Unchanged when already H x W."""
    h, w = img.shape[-3:-1]
    if (h, w) == (H, W):
        return img
    if h > H or w > W:
        raise ValueError(f"cannot pad a {w}x{h} picture to {W}x{H}")
    top, left = (H - h) // 2, (W - w) // 2
    pad = [(0, 0)] * (img.ndim - 3) + [(top, H - h - top), (left, W - w - left), (0, 0)]
    return np.pad(img, pad, constant_values=value)


def grid_image(rows: list[np.ndarray], pad: int = 2) -> np.ndarray:
    """Stack rows (each N x H x W x 3, same N/H/W) into one image with padding."""
    n, H, W = rows[0].shape[:3]
    out = np.full((len(rows) * (H + pad) + pad, n * (W + pad) + pad, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for i in range(n):
            y, x = pad + r * (H + pad), pad + i * (W + pad)
            out[y:y + H, x:x + W] = row[i]
    return out
