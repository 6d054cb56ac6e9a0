"""Multi-view consistency of a posed RGB-D scene: do poses, intrinsics and depth fit together?"""

from __future__ import annotations

import torch

from nfldm import camera


def reprojection_errors(sample: dict, pairs: list[tuple[int, int]], intr: torch.Tensor | None = None):
    """Unproject frame i's depth to the world and project it into frame j, for each (i, j).

    sample: a SceneDataset item (images V x 3 x H x W, depth / depth_valid V x H x W,
    intrinsics V x 4, c2w V x 4 x 4); intr: optional V x 4 override (to test wrong intrinsics).
    Only points landing within 0.35 px of a pixel centre of j, in front of j, with valid depth
    in both frames count. Returns (relative depth errors |z_ij - depth_j| / depth_j over those
    points, mean absolute RGB differences of the points whose depth agrees within 3 %).
    """
    rgb, depth, valid = sample["images"], sample["depth"], sample["depth_valid"]
    intr = sample["intrinsics"].double() if intr is None else intr
    c2w = sample["c2w"].double()
    _, _, H, W = rgb.shape
    errs, cols = [], []
    for i, j in pairs:
        pts = camera.unproject_depth(depth[i].double(), intr[i], c2w[i]).reshape(-1, 3)
        uv, z = camera.project(pts, intr[j], c2w[j])
        u, v = uv[:, 0].floor().long(), uv[:, 1].floor().long()
        ok = valid[i].reshape(-1) & (z > 0.1) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        ok &= ((uv - uv.floor() - 0.5).abs() < 0.35).all(-1)
        u, v, z = u[ok], v[ok], z[ok]
        dj = depth[j][v, u].double()
        vj = valid[j][v, u]
        rel = ((z - dj).abs() / dj)[vj]
        errs.append(rel)
        ci = rgb[i].permute(1, 2, 0).reshape(-1, 3)[ok][vj]
        cj = rgb[j].permute(1, 2, 0)[v, u][vj]
        cols.append((ci - cj).abs().mean(-1)[rel < 0.03])
    return torch.cat(errs), torch.cat(cols)


def neighbour_pairs(num_views: int, max_gap: int = 3) -> list[tuple[int, int]]:
    """All ordered frame pairs at most ``max_gap`` apart."""
    return [(i, j) for i in range(num_views) for j in range(num_views) if 0 < abs(i - j) <= max_gap]
