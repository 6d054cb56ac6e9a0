"""A scene's camera trajectory as a fixed-length vector (psi_g generates it together with g).

Encoding (docs/ldm.md, "Choices": trajectory encoding):

1. resample the scene's N camera-to-world poses to T poses evenly spaced along the sequence
   (frame index s_j = j (N - 1) / (T - 1)): positions interpolated linearly between the two
   neighbouring frames, rotations by interpolating the rotation matrices entry-wise and
   re-orthonormalising (Gram-Schmidt on the first two columns, below);
2. per pose 9 numbers: the position normalised by the scene bounds to [-1, 1]
   (``2 (p - lo) / (hi - lo) - 1``), then the first two columns of the rotation (the
   continuous 6D representation of Zhou et al., CVPR 2019: the camera's x (right) and y (up)
   axes in world coordinates, each a unit vector);
3. the T x 9 numbers flattened pose-major: ``[p_0, r1_0, r2_0, p_1, ...]`` (9 T values).

Decoding maps positions back with the bounds and rebuilds each rotation from its 6D part by
Gram-Schmidt (b1 = a1 / |a1|, b2 = unit(a2 - (b1 . a2) b1), b3 = b1 x b2), so any 9 T
numbers a sampler produces decode to valid rigid poses. Every value of an encoded trajectory
lies in [-1, 1] already (positions inside the box, unit vectors), so the diffusion model uses
it as it is, next to the standardised g.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["POSE_DIM", "resample_poses", "rotation_from_6d", "encode_trajectory", "decode_trajectory",
           "interpolate_path", "fov_degrees", "camera_coverage", "COVERAGE_CHANNELS"]

POSE_DIM = 9


def rotation_from_6d(a: Tensor, eps: float = 1e-8) -> Tensor:
    """Gram-Schmidt: ... x 6 (two 3-vectors a1, a2) -> ... x 3 x 3 rotation with columns
    b1, b2, b3 (b1 along a1, b2 in the a1-a2 plane, b3 = b1 x b2; right-handed)."""
    a1, a2 = a[..., :3], a[..., 3:6]
    b1 = a1 / a1.norm(dim=-1, keepdim=True).clamp(min=eps)
    u2 = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    b2 = u2 / u2.norm(dim=-1, keepdim=True).clamp(min=eps)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], -1)


def _pose(R: Tensor, t: Tensor) -> Tensor:
    """... x 3 x 3, ... x 3 -> ... x 4 x 4."""
    out = torch.zeros(*R.shape[:-2], 4, 4, dtype=R.dtype, device=R.device)
    out[..., :3, :3] = R
    out[..., :3, 3] = t
    out[..., 3, 3] = 1.0
    return out


def resample_poses(c2w: Tensor, num: int) -> Tensor:
    """N x 4 x 4 poses -> num x 4 x 4 poses evenly spaced along the sequence (positions
    linear, rotations entry-wise linear + Gram-Schmidt). Exact at the sample points that fall
    on recorded frames (e.g. all of them when num == N)."""
    if c2w.dim() != 3 or c2w.shape[-2:] != (4, 4) or len(c2w) == 0:
        raise ValueError(f"c2w must be N x 4 x 4 with N >= 1, got {tuple(c2w.shape)}")
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    n = len(c2w)
    s = torch.linspace(0, n - 1, num, dtype=torch.float64) if num > 1 else torch.zeros(1, dtype=torch.float64)
    i0 = s.floor().long().clamp(max=n - 1)
    i1 = (i0 + 1).clamp(max=n - 1)
    w = (s - i0.double()).to(c2w.dtype)[:, None]
    t = c2w[i0, :3, 3] * (1 - w) + c2w[i1, :3, 3] * w
    cols = c2w[:, :3, :2].transpose(-1, -2).reshape(n, 6)        # [x axis, y axis]
    r6 = cols[i0] * (1 - w) + cols[i1] * w
    return _pose(rotation_from_6d(r6), t)


def encode_trajectory(c2w: Tensor, bounds: Tensor, num: int = 8) -> Tensor:
    """N x 4 x 4 camera-to-world poses + bounds 2 x 3 -> the 9 num trajectory vector."""
    poses = resample_poses(c2w.double(), num)
    lo, hi = bounds[0].double(), bounds[1].double()
    p = 2.0 * (poses[:, :3, 3] - lo) / (hi - lo) - 1.0
    r = poses[:, :3, :2].transpose(-1, -2).reshape(num, 6)
    return torch.cat([p, r], -1).reshape(-1).to(c2w.dtype)


def decode_trajectory(vec: Tensor, bounds: Tensor) -> Tensor:
    """Inverse of :func:`encode_trajectory`: ... x 9 T (bounds 2 x 3, or ... x 2 x 3) ->
    ... x T x 4 x 4 rigid poses (positions in the bounds' world units, not clamped)."""
    if vec.shape[-1] % POSE_DIM:
        raise ValueError(f"a trajectory vector has 9 T values, got {vec.shape[-1]}")
    x = vec.reshape(*vec.shape[:-1], -1, POSE_DIM)
    lo, hi = bounds[..., 0, :], bounds[..., 1, :]
    if bounds.dim() > 2:
        lo, hi = lo[..., None, :], hi[..., None, :]
    p = (x[..., :3] + 1.0) * 0.5 * (hi - lo) + lo
    return _pose(rotation_from_6d(x[..., 3:]), p)


def interpolate_path(keyframes: Tensor, num: int, smooth: bool = True) -> Tensor:
    """A camera path of ``num`` poses through T keyframe poses (T x 4 x 4).

    ``smooth``: positions follow a Catmull-Rom spline through the keyframes (rotations as in
    :func:`resample_poses`); else both are linear between keyframes.
    """
    if not smooth or len(keyframes) < 3:
        return resample_poses(keyframes, num)
    out = resample_poses(keyframes, num)
    p = keyframes[:, :3, 3].double()
    T = len(p)
    pp = torch.cat([2 * p[:1] - p[1:2], p, 2 * p[-1:] - p[-2:-1]])  # padded ends
    s = torch.linspace(0, T - 1, num, dtype=torch.float64)
    i = s.floor().long().clamp(max=T - 2)
    u = (s - i.double())[:, None]
    p0, p1, p2, p3 = pp[i], pp[i + 1], pp[i + 2], pp[i + 3]
    pos = 0.5 * (2 * p1 + (-p0 + p2) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u ** 2
                 + (-p0 + 3 * p1 - 3 * p2 + p3) * u ** 3)
    out[:, :3, 3] = pos.to(out.dtype)
    return out


def fov_degrees(focal: float, size: int) -> float:
    """Field of view (degrees) of ``size`` pixels at focal length ``focal`` (pixels)."""
    return math.degrees(2.0 * math.atan(0.5 * size / focal))


COVERAGE_CHANNELS = 4


def camera_coverage(traj: Tensor, size: tuple[int, int], hfov_deg: float, aspect: float = 1.0,
                    edge: float = 0.1, near: float = 0.25) -> Tensor:
    """Where a trajectory's cameras look, as maps over the box's x-y footprint (top-down).

    traj: B x 9 T trajectory vectors (:func:`encode_trajectory`); size (H, W): cells along the
    box's x and y (cell (i, j) centred at normalised x = (i + 1/2) 2 / H - 1,
    y = (j + 1/2) 2 / W - 1, the layout of V's X x Y footprint). ``hfov_deg``: the cameras'
    horizontal field of view; ``aspect``: the box's y extent / x extent (angles are measured in
    metric, not normalised, coordinates). Returns B x 4 x H x W, every channel in [-1, 1]:

    0. 2 k - 1, k = the fraction of the T keyframe cameras whose horizontal field of view
       contains the cell centre (soft: a sigmoid of the angle inside the half field of view,
       scale ``edge`` radians; a cell within about one cell of a camera counts as seen);
    1. 2 exp(-d / ``near``) - 1, d = the normalised distance to the nearest keyframe position;
    2. and 3. the cell's normalised x and y (the convolutions see absolute position).

    Pitch is ignored (the forward axis -z projected on the ground plane); a camera looking
    straight down sees no direction."""
    if traj.dim() != 2 or traj.shape[-1] % POSE_DIM:
        raise ValueError(f"traj must be B x 9 T, got {tuple(traj.shape)}")
    H, W = size
    B = traj.shape[0]
    x = traj.float().reshape(B, -1, POSE_DIM)
    pos = x[..., :2]                                                   # B x T x 2 (normalised x, y)
    fwd = -rotation_from_6d(x[..., 3:])[..., :2, 2]                    # B x T x 2 (world x, y of -z)
    fwd = fwd / fwd.norm(dim=-1, keepdim=True).clamp(min=1e-6)
    dev = traj.device
    gx = (torch.arange(H, device=dev, dtype=torch.float32) + 0.5) * 2.0 / H - 1.0
    gy = (torch.arange(W, device=dev, dtype=torch.float32) + 0.5) * 2.0 / W - 1.0
    dx = gx[None, None, :, None] - pos[..., 0, None, None]             # B x T x H x 1
    dy = (gy[None, None, None, :] - pos[..., 1, None, None]) * aspect  # B x T x 1 x W
    dist = torch.sqrt(dx ** 2 + dy ** 2 + 1e-12)                       # B x T x H x W
    cos = (dx * fwd[..., 0, None, None] + dy * fwd[..., 1, None, None]) / dist
    angle = torch.acos(cos.clamp(-1.0, 1.0))
    inside = torch.sigmoid((math.radians(hfov_deg) / 2 - angle) / edge)
    cell = 2.0 / min(H, W)
    inside = 1.0 - (1.0 - inside) * (1.0 - torch.exp(-(dist / cell) ** 2))
    cov = inside.mean(1)
    nearest = torch.exp(-dist.amin(1) / near)
    xy = torch.stack(torch.meshgrid(gx, gy, indexing="ij"))[None].expand(B, 2, H, W)
    return torch.cat([torch.stack([2 * cov - 1, 2 * nearest - 1], 1), xy], 1)
