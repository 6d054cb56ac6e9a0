"""Pinhole camera geometry: rays, projection, unprojection and poses.

Convention (the whole code base uses it, see ``docs/data-format.md``):

- World units are metres and world up is **+z**.
- A pose ``c2w`` is a camera-to-world 4 x 4 matrix in OpenGL camera axes: x right, y up,
  the camera looks along -z (nerfstudio's ``transform_matrix``).
- Intrinsics ``intr`` are a tensor ``... x 4`` holding ``[fx, fy, cx, cy]`` in pixels
  (fx and fy differ in general, e.g. ViZDoom has fy = 1.2 fx).
- Pixel (u, v) (u = column, v = row growing downwards, both integer indices) has its
  centre at continuous coordinates (u + 0.5, v + 0.5); its ray in camera axes is
  ``((u + 0.5 - cx) / fx, -(v + 0.5 - cy) / fy, -1)``.
- Depth is planar z-depth: the positive distance along the viewing axis, so a point at
  depth d has camera-space z = -d.

All functions are batched over arbitrary leading dims ``...`` that broadcast between
``intr`` and ``c2w``, are differentiable, and follow the device/dtype of their inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "intrinsics_matrix",
    "pixel_centers",
    "camera_dirs",
    "pixel_rays",
    "world_to_camera",
    "camera_to_world",
    "project",
    "unproject_depth",
    "frustum_points",
    "crop_intrinsics",
    "resize_intrinsics",
    "pose_from_position_yaw",
    "rigidity_error",
    "is_valid_pose",
    "dihedral_matrix",
    "transform_poses",
]


def intrinsics_matrix(intr: Tensor) -> Tensor:
    """OpenCV-style calibration matrix ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``.

    intr: ... x 4 ``[fx, fy, cx, cy]``  ->  K: ... x 3 x 3.

    K maps OpenCV camera axes (x right, y down, z forward = diag(1, -1, -1) applied to our
    OpenGL axes) to continuous pixel coordinates in *this* module's convention (pixel centres
    at +0.5). OpenCV itself puts pixel centres at integers: subtract 0.5 from cx, cy for it.
    """
    fx, fy, cx, cy = intr.unbind(-1)
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    rows = [
        torch.stack([fx, zero, cx], -1),
        torch.stack([zero, fy, cy], -1),
        torch.stack([zero, zero, one], -1),
    ]
    return torch.stack(rows, -2)


def pixel_centers(H: int, W: int, device=None, dtype=None) -> Tensor:
    """Continuous coordinates of all pixel centres.

    Returns: H x W x 2, entry [v, u] = (u + 0.5, v + 0.5).
    """
    dtype = dtype or torch.get_default_dtype()
    v = torch.arange(H, device=device, dtype=dtype) + 0.5
    u = torch.arange(W, device=device, dtype=dtype) + 0.5
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([uu, vv], -1)


def camera_dirs(intr: Tensor, H: int, W: int) -> Tensor:
    """Camera-axes ray directions of all pixels, scaled to z = -1 (so point = depth * dir).

    intr: ... x 4  ->  dirs: ... x H x W x 3.
    """
    uv = pixel_centers(H, W, device=intr.device, dtype=intr.dtype)
    fx, fy, cx, cy = (intr[..., None, None, i] for i in range(4))  # ... x 1 x 1 each
    x = (uv[..., 0] - cx) / fx
    y = -(uv[..., 1] - cy) / fy
    return torch.stack([x, y, -torch.ones_like(x)], -1)


def pixel_rays(
    intr: Tensor, c2w: Tensor, H: int, W: int, normalize: bool = False
) -> tuple[Tensor, Tensor]:
    """World-space rays through all pixel centres.

    intr: ... x 4, c2w: ... x 4 x 4  ->  (origins: ... x H x W x 3, dirs: ... x H x W x 3).

    With ``normalize=False`` the point ``o + t * d`` has z-depth t; with ``normalize=True``
    the directions have unit length (t is then the distance along the ray).
    """
    dirs = camera_dirs(intr, H, W) @ c2w[..., None, :3, :3].transpose(-1, -2)
    if normalize:
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origins = c2w[..., None, None, :3, 3].expand_as(dirs)
    return origins, dirs


def world_to_camera(points: Tensor, c2w: Tensor) -> Tensor:
    """World points into camera axes: ``R^T (p - t)``.

    points: ... x N x 3, c2w: ... x 4 x 4  ->  ... x N x 3.
    """
    return (points - c2w[..., None, :3, 3]) @ c2w[..., :3, :3]


def camera_to_world(points: Tensor, c2w: Tensor) -> Tensor:
    """Camera-axes points into the world: ``R p + t``.

    points: ... x N x 3, c2w: ... x 4 x 4  ->  ... x N x 3.
    """
    return points @ c2w[..., :3, :3].transpose(-1, -2) + c2w[..., None, :3, 3]


def project(
    points: Tensor, intr: Tensor, c2w: Tensor, eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """Project world points into the image.

    points: ... x N x 3, intr: ... x 4, c2w: ... x 4 x 4
    ->  (uv: ... x N x 2 continuous pixel coordinates, depth: ... x N z-depth).

    The centre of pixel (u, v) maps to (u + 0.5, v + 0.5). ``depth <= 0`` means the point is
    behind (or in the plane of) the camera; callers must mask those. To avoid division by
    zero the denominator is clamped to magnitude >= ``eps`` keeping its sign (zero counts as
    positive), so uv stays finite but is meaningless for such points.
    """
    pc = world_to_camera(points, c2w)
    depth = -pc[..., 2]
    denom = torch.where(depth >= 0, depth.clamp(min=eps), depth.clamp(max=-eps))
    fx, fy, cx, cy = (intr[..., None, i] for i in range(4))  # ... x 1 each
    u = cx + fx * pc[..., 0] / denom
    v = cy - fy * pc[..., 1] / denom
    return torch.stack([u, v], -1), depth


def unproject_depth(depth: Tensor, intr: Tensor, c2w: Tensor) -> Tensor:
    """World points of every pixel of a z-depth map.

    depth: ... x H x W, intr: ... x 4, c2w: ... x 4 x 4  ->  ... x H x W x 3.
    """
    H, W = depth.shape[-2:]
    pc = depth[..., None] * camera_dirs(intr, H, W)
    return camera_to_world(pc, c2w[..., None, :, :])


def frustum_points(intr: Tensor, c2w: Tensor, H: int, W: int, depths: Tensor) -> Tensor:
    """World points of every pixel at each of D z-depths.

    intr: ... x 4, c2w: ... x 4 x 4, depths: D or ... x D  ->  ... x D x H x W x 3.
    """
    pc = depths[..., :, None, None, None] * camera_dirs(intr, H, W)[..., None, :, :, :]
    return camera_to_world(pc, c2w[..., None, None, :, :])


def crop_intrinsics(intr: Tensor, x0, y0) -> Tensor:
    """Intrinsics of the crop whose top-left pixel is (x0, y0) (column, row).

    intr: ... x 4  ->  ... x 4 with cx - x0, cy - y0 (x0, y0: numbers or tensors ``...``).
    """
    fx, fy, cx, cy = intr.unbind(-1)
    return torch.stack([fx, fy, cx - x0, cy - y0], -1)


def resize_intrinsics(intr: Tensor, old_hw: tuple[int, int], new_hw: tuple[int, int]) -> Tensor:
    """Intrinsics after resizing the image from ``old_hw = (H, W)`` to ``new_hw = (H2, W2)``.

    intr: ... x 4  ->  ... x 4: fx * W2/W, fy * H2/H, cx * W2/W, cy * H2/H.

    Because pixel centres sit at +0.5, continuous coordinates span [0, W] edge to edge and a
    resize (as done by area / ``align_corners=False`` resampling) is the pure scaling
    x -> x * W2/W; so cx scales like fx with no half-pixel correction. (With OpenCV's
    integer-centre convention one would need cx' = (cx + 0.5) * s - 0.5.)
    """
    (H, W), (H2, W2) = old_hw, new_hw
    sx, sy = W2 / W, H2 / H
    fx, fy, cx, cy = intr.unbind(-1)
    return torch.stack([fx * sx, fy * sy, cx * sx, cy * sy], -1)


def pose_from_position_yaw(position: Tensor, yaw: Tensor) -> Tensor:
    """Pose of a level camera (pitch 0, roll 0) in the z-up world.

    position: ... x 3 (metres), yaw: ... (radians)  ->  c2w: ... x 4 x 4.

    yaw = 0 looks along +x, counter-clockwise seen from above (yaw = pi/2 looks along +y).
    Columns: right = (sin, -cos, 0), up = (0, 0, 1), z_cam = -forward = (-cos, -sin, 0).
    """
    yaw = torch.as_tensor(yaw, dtype=position.dtype, device=position.device)
    position, yaw = torch.broadcast_tensors(position, yaw[..., None])
    yaw = yaw[..., 0]
    c, s = torch.cos(yaw), torch.sin(yaw)
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    rows = [
        torch.stack([s, zero, -c, position[..., 0]], -1),
        torch.stack([-c, zero, -s, position[..., 1]], -1),
        torch.stack([zero, one, zero, position[..., 2]], -1),
        torch.stack([zero, zero, zero, one], -1),
    ]
    return torch.stack(rows, -2)


def rigidity_error(c2w: Tensor) -> Tensor:
    """How far a pose is from a rigid transform.

    c2w: ... x 4 x 4  ->  ...: the max of |R^T R - I|, |det R - 1| and |last row - [0,0,0,1]|.
    """
    R = c2w[..., :3, :3]
    eye = torch.eye(3, dtype=c2w.dtype, device=c2w.device)
    last = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=c2w.dtype, device=c2w.device)
    errs = [
        (R.transpose(-1, -2) @ R - eye).abs().amax((-2, -1)),
        (torch.linalg.det(R) - 1).abs(),
        (c2w[..., 3, :] - last).abs().amax(-1),
    ]
    return torch.stack(errs, -1).amax(-1)


def is_valid_pose(c2w: Tensor, tol: float = 1e-3) -> Tensor:
    """Whether each pose is finite and rigid within ``tol``.

    c2w: ... x 4 x 4  ->  bool tensor ...
    """
    finite = torch.isfinite(c2w).all(-1).all(-1)
    return finite & (torch.nan_to_num(rigidity_error(c2w), nan=float("inf")) <= tol)


def dihedral_matrix(k: int, flip: bool = False, dtype=torch.float32) -> Tensor:
    """World transform of the horizontal dihedral group: mirror x (x -> -x) when ``flip``,
    then rotate k x 90 degrees counter-clockwise about +z (seen from above).

    -> M: 3 x 3 (det -1 when ``flip``). For a scene box symmetric about the z axis
    (lo_x = -hi_x, lo_y = -hi_y, equal x and y extents) M maps the box onto itself; the
    voxel grid's matching transform is ``nfldm.scene_ae.voxels.dihedral_voxels``.
    """
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"k must be an integer, got {k!r}")
    c, s = [(1, 0), (0, 1), (-1, 0), (0, -1)][k % 4]
    R = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=dtype)
    F = torch.diag(torch.tensor([-1.0 if flip else 1.0, 1.0, 1.0], dtype=dtype))
    return R @ F


def transform_poses(c2w: Tensor, M: Tensor) -> Tensor:
    """Poses of a scene whose world was transformed by the orthogonal M (3 x 3).

    c2w: ... x 4 x 4  ->  ... x 4 x 4: position M t, rotation M R. A mirror (det M < 0) would
    make the camera frame left-handed, so the camera's x (right) axis is negated as well:
    the pose stays rigid and sees the mirror image of what the original camera saw (pixel
    column u shows what column W - 1 - u showed when cx = W / 2).
    """
    M = M.to(c2w)
    out = c2w.clone()
    out[..., :3, :3] = M @ c2w[..., :3, :3]
    out[..., :3, 3] = (M @ c2w[..., :3, 3, None])[..., 0]
    if float(torch.linalg.det(M)) < 0:
        out[..., :3, 0] = -out[..., :3, 0]
    return out
