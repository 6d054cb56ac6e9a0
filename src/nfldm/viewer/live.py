"""Live rendering for the viewer: a browser camera (viser's pose, OpenCV axes) to an nfldm pose
(OpenGL axes, :mod:`nfldm.camera`) and intrinsics, and stage 1's renderer drawing V from it.

The browser sends its camera as T_world_camera with OpenCV axes (x right, y down, +z forward) and a
vertical field of view; nfldm's ``c2w`` uses OpenGL axes (x right, y up, -z forward), so
``c2w = T_world_camera @ diag(1, -1, -1, 1)``. Pixels are square in the browser, so ``fx = fy``.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import torch
from torch import Tensor

from nfldm.scene_ae.flythrough import to_uint8

__all__ = ["OPENCV_TO_OPENGL", "c2w_from_viser", "viser_from_c2w", "view_intrinsics", "view_size", "LiveRenderer",
           "quat_to_matrix", "matrix_to_quat"]

OPENCV_TO_OPENGL = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


def quat_to_matrix(wxyz) -> Tensor:
    """A unit quaternion (w, x, y, z) -> 3 x 3 rotation (float64)."""
    w, x, y, z = (float(v) for v in wxyz)
    n = math.sqrt(w * w + x * x + y * y + z * z) or 1.0
    w, x, y, z = w / n, x / n, y / n, z / n
    return torch.tensor([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                         [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                         [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]], dtype=torch.float64)


def matrix_to_quat(R: Tensor) -> tuple[float, float, float, float]:
    """A 3 x 3 rotation -> unit quaternion (w, x, y, z), w >= 0 (Shepperd's method)."""
    m = R.double().tolist()
    tr = m[0][0] + m[1][1] + m[2][2]
    if tr > 0:
        s = math.sqrt(tr + 1.0) * 2
        q = (0.25 * s, (m[2][1] - m[1][2]) / s, (m[0][2] - m[2][0]) / s, (m[1][0] - m[0][1]) / s)
    elif m[0][0] > m[1][1] and m[0][0] > m[2][2]:
        s = math.sqrt(1.0 + m[0][0] - m[1][1] - m[2][2]) * 2
        q = ((m[2][1] - m[1][2]) / s, 0.25 * s, (m[0][1] + m[1][0]) / s, (m[0][2] + m[2][0]) / s)
    elif m[1][1] > m[2][2]:
        s = math.sqrt(1.0 + m[1][1] - m[0][0] - m[2][2]) * 2
        q = ((m[0][2] - m[2][0]) / s, (m[0][1] + m[1][0]) / s, 0.25 * s, (m[1][2] + m[2][1]) / s)
    else:
        s = math.sqrt(1.0 + m[2][2] - m[0][0] - m[1][1]) * 2
        q = ((m[1][0] - m[0][1]) / s, (m[0][2] + m[2][0]) / s, (m[1][2] + m[2][1]) / s, 0.25 * s)
    if q[0] < 0:
        q = tuple(-v for v in q)
    return q


def c2w_from_viser(wxyz, position) -> Tensor:
    """viser's camera (orientation wxyz, position; OpenCV axes) -> c2w 4 x 4 (OpenGL axes), float32."""
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3] = quat_to_matrix(wxyz)
    T[:3, 3] = torch.tensor([float(v) for v in position], dtype=torch.float64)
    return (T @ OPENCV_TO_OPENGL).float()


def viser_from_c2w(c2w: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """c2w 4 x 4 (OpenGL axes) -> (wxyz, position) of viser's camera (OpenCV axes)."""
    T = c2w.double() @ OPENCV_TO_OPENGL
    return matrix_to_quat(T[:3, :3]), tuple(float(v) for v in T[:3, 3])


def view_size(height: int, aspect: float, multiple: int) -> tuple[int, int]:
    """(H, W) of a view ``height`` pixels high with the browser's ``aspect`` (W / H), both multiples
    of ``multiple`` (the renderer's render_down)."""
    H = max(multiple, int(round(height / multiple)) * multiple)
    W = max(multiple, int(round(height * max(aspect, 1e-3) / multiple)) * multiple)
    return H, W


def view_intrinsics(fov_y: float, H: int, W: int) -> Tensor:
    """Square-pixel intrinsics [fx, fy, cx, cy] of an H x W view with vertical field of view ``fov_y``
    (radians)."""
    f = (H / 2) / math.tan(fov_y / 2)
    return torch.tensor([f, f, W / 2, H / 2], dtype=torch.float32)


class LiveRenderer:
    """Stage 1's renderer drawing one V from any camera, fast: V stays on the device, no gradient.

    ``render(c2w, fov_y, height, aspect)`` -> (RGB H x W x 3 uint8, depth h x w float32 z-depth in
    metres, seconds). Thread-safe (one render at a time); ``set_scene`` swaps V between frames.
    """

    def __init__(self, sae, V: Tensor, bounds: Tensor):
        self.sae = sae
        self.device = next(sae.parameters()).device
        self.lock = threading.Lock()
        self.set_scene(sae, V, bounds)

    def set_scene(self, sae, V: Tensor, bounds: Tensor) -> None:
        """V: K x X x Y x Z, bounds: 2 x 3."""
        with self.lock:
            self.sae = sae
            self.device = next(sae.parameters()).device
            self.V = V.float()[None].contiguous().to(self.device)
            self.bounds = bounds.float()[None].to(self.device)

    @torch.inference_mode()
    def render(self, c2w: Tensor, fov_y: float, height: int = 64, aspect: float = 1.0) -> tuple[np.ndarray, np.ndarray, float]:
        t0 = time.perf_counter()
        with self.lock:
            sae = self.sae
            H, W = view_size(height, aspect, sae.cfg.render_down)
            intr = view_intrinsics(fov_y, H, W).to(self.device)[None, None]
            out = sae.render(self.V, self.bounds, intr, c2w.float().to(self.device)[None, None], H, W)
        rgb = to_uint8(out["rgb"][0].float().cpu())[0]
        depth = out["depth"][0, 0].float().cpu().numpy()
        return rgb, depth, time.perf_counter() - t0
