import math

import pytest
import torch

from nfldm.camera import (
    camera_dirs,
    dihedral_matrix,
    transform_poses,
    camera_to_world,
    crop_intrinsics,
    frustum_points,
    intrinsics_matrix,
    is_valid_pose,
    pixel_centers,
    pixel_rays,
    pose_from_position_yaw,
    project,
    resize_intrinsics,
    rigidity_error,
    unproject_depth,
    world_to_camera,
)

D64 = torch.float64
# ViZDoom-like: 90 deg horizontal FOV on 160 x 120, fy = 1.2 fx.
INTR = torch.tensor([80.0, 96.0, 80.0, 60.0], dtype=D64)
H, W = 120, 160


def random_rotation(gen, batch=()):
    q, r = torch.linalg.qr(torch.randn(*batch, 3, 3, generator=gen, dtype=D64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[..., None, :]
    det = torch.linalg.det(q)
    return q * torch.stack([torch.ones_like(det), torch.ones_like(det), det], -1)[..., None, :]


def random_pose(gen, batch=()):
    c2w = torch.zeros(*batch, 4, 4, dtype=D64)
    c2w[..., :3, :3] = random_rotation(gen, batch)
    c2w[..., :3, 3] = torch.randn(*batch, 3, generator=gen, dtype=D64) * 3
    c2w[..., 3, 3] = 1
    return c2w


def test_pixel_centers_and_dirs():
    uv = pixel_centers(2, 3, dtype=D64)
    assert uv.shape == (2, 3, 2)
    assert uv[1, 2].tolist() == [2.5, 1.5]
    d = camera_dirs(INTR, H, W)
    assert d.shape == (H, W, 3) and d.dtype == D64
    assert torch.all(d[..., 2] == -1)
    # top-left pixel ray points left and up
    assert d[0, 0, 0] < 0 and d[0, 0, 1] > 0
    u, v = 7, 11
    expected = [(u + 0.5 - 80) / 80, -(v + 0.5 - 60) / 96, -1]
    assert torch.allclose(d[v, u], torch.tensor(expected, dtype=D64))


def test_intrinsics_matrix():
    K = intrinsics_matrix(INTR.expand(5, 4))
    assert K.shape == (5, 3, 3)
    assert torch.equal(K[0], torch.tensor([[80.0, 0, 80], [0, 96, 60], [0, 0, 1]], dtype=D64))


def test_project_unproject_roundtrip_batched():
    gen = torch.Generator().manual_seed(0)
    c2w = random_pose(gen, (2, 3))
    intr = INTR.expand(2, 1, 4)  # broadcast against c2w batch
    h, w = 6, 8
    depth = torch.rand(2, 3, h, w, generator=gen, dtype=D64) * 10 + 0.5
    pts = unproject_depth(depth, intr, c2w)
    assert pts.shape == (2, 3, h, w, 3)
    uv, z = project(pts.reshape(2, 3, h * w, 3), intr, c2w)
    assert torch.allclose(uv, pixel_centers(h, w, dtype=D64).reshape(h * w, 2).expand_as(uv))
    assert torch.allclose(z, depth.reshape(2, 3, h * w))


def test_world_camera_inverse():
    gen = torch.Generator().manual_seed(1)
    c2w = random_pose(gen, (4,))
    p = torch.randn(4, 10, 3, generator=gen, dtype=D64)
    assert torch.allclose(camera_to_world(world_to_camera(p, c2w), c2w), p)
    assert torch.allclose(world_to_camera(p, c2w), (torch.linalg.inv(c2w) @ torch.cat(
        [p, torch.ones_like(p[..., :1])], -1).transpose(-1, -2)).transpose(-1, -2)[..., :3])


@pytest.mark.parametrize("normalize", [False, True])
def test_pixel_rays_hit_unprojected_points(normalize):
    gen = torch.Generator().manual_seed(2)
    c2w = random_pose(gen, (3,))
    depth = torch.rand(3, H, W, generator=gen, dtype=D64) * 5 + 0.1
    o, d = pixel_rays(INTR, c2w, H, W, normalize=normalize)
    assert o.shape == d.shape == (3, H, W, 3)
    pts = unproject_depth(depth, INTR, c2w)
    if normalize:
        assert torch.allclose(d.norm(dim=-1), torch.ones((), dtype=D64))
        t = (pts - o).norm(dim=-1)
    else:
        t = depth
    assert torch.allclose(o + t[..., None] * d, pts)


def test_pose_yaw_zero_looks_along_x():
    c2w = pose_from_position_yaw(torch.zeros(3, dtype=D64), torch.tensor(0.0, dtype=D64))
    R = c2w[:3, :3]
    assert torch.allclose(-R[:, 2], torch.tensor([1.0, 0, 0], dtype=D64))  # forward
    assert torch.allclose(R[:, 0], torch.tensor([0.0, -1, 0], dtype=D64))  # right
    assert torch.allclose(R[:, 1], torch.tensor([0.0, 0, 1], dtype=D64))  # up
    c2w = pose_from_position_yaw(torch.zeros(3, dtype=D64), math.pi / 2)
    assert torch.allclose(-c2w[:3, 2], torch.tensor([0.0, 1, 0], dtype=D64))
    yaw = torch.rand(7, dtype=D64) * 10 - 5
    assert is_valid_pose(pose_from_position_yaw(torch.randn(7, 3, dtype=D64), yaw), 1e-9).all()


def test_point_seen_by_several_cameras():
    fx, fy, cx, cy = INTR.tolist()
    X = torch.tensor([[2.0, -1.0, 0.0]], dtype=D64)  # 1 x 3 world point
    cams, expected = [], []
    # yaw 0 at origin: X is 2 m ahead, 1 m to the right
    cams.append(pose_from_position_yaw(torch.tensor([0.0, 0, 0], dtype=D64), 0.0))
    expected.append((cx + fx / 2, cy, 2.0))
    # looking along +y from 3 m behind X: straight ahead
    cams.append(pose_from_position_yaw(torch.tensor([2.0, -4, 0], dtype=D64), math.pi / 2))
    expected.append((cx, cy, 3.0))
    # yaw 0, 1 m below and 4 m behind: X is 1 m up at depth 4
    cams.append(pose_from_position_yaw(torch.tensor([-2.0, -1, -1], dtype=D64), 0.0))
    expected.append((cx, cy - fy / 4, 4.0))
    # general rotation: X = p + 4 forward + 1 right + 0.5 up
    R = random_rotation(torch.Generator().manual_seed(3))
    c2w = torch.eye(4, dtype=D64)
    c2w[:3, :3] = R
    c2w[:3, 3] = X[0] - (4 * -R[:, 2] + 1 * R[:, 0] + 0.5 * R[:, 1])
    cams.append(c2w)
    expected.append((cx + fx / 4, cy - fy * 0.5 / 4, 4.0))

    uv, z = project(X, INTR, torch.stack(cams))  # point broadcast over cameras
    assert uv.shape == (4, 1, 2) and z.shape == (4, 1)
    exp = torch.tensor(expected, dtype=D64)
    assert torch.allclose(uv[:, 0], exp[:, :2])
    assert torch.allclose(z[:, 0], exp[:, 2])


def test_project_behind_camera_is_finite():
    c2w = torch.eye(4, dtype=D64)
    pts = torch.tensor([[0.5, 0, 0.0], [0.5, 0, 2.0], [0, 0, -1.0]], dtype=D64)
    uv, z = project(pts, INTR, c2w)
    assert torch.isfinite(uv).all()
    assert z[0] == 0 and z[1] < 0 and z[2] == 1


def test_crop_intrinsics_matches_cropped_image():
    x0, y0, h, w = 13, 7, 40, 50
    d_full = camera_dirs(INTR, H, W)
    d_crop = camera_dirs(crop_intrinsics(INTR, x0, y0), h, w)
    assert torch.allclose(d_crop, d_full[y0:y0 + h, x0:x0 + w])


def test_resize_intrinsics_block_centres():
    s, h, w = 3, 40, 53  # big image 120 x 159
    intr = torch.tensor([79.5, 95.4, 79.5, 60.0], dtype=D64)
    small = resize_intrinsics(intr, (s * h, s * w), (h, w))
    assert torch.allclose(resize_intrinsics(small, (h, w), (s * h, s * w)), intr)
    # centre pixel of block (i, j) in the big image == pixel (i, j) of the small one
    d_big = camera_dirs(intr, s * h, s * w)
    d_small = camera_dirs(small, h, w)
    assert torch.allclose(d_small, d_big[1::s, 1::s])
    # and a projected point lands at the same place up to the scale factor
    gen = torch.Generator().manual_seed(4)
    c2w = random_pose(gen)
    pts = torch.randn(20, 3, generator=gen, dtype=D64)
    uv_big, _ = project(pts, intr, c2w)
    uv_small, _ = project(pts, small, c2w)
    assert torch.allclose(uv_small * s, uv_big)


def test_frustum_points_matches_unproject():
    gen = torch.Generator().manual_seed(5)
    c2w = random_pose(gen, (2,))
    depths = torch.tensor([0.5, 1.0, 4.0], dtype=D64)
    h, w = 5, 7
    fp = frustum_points(INTR, c2w, h, w, depths)
    assert fp.shape == (2, 3, h, w, 3)
    for k, d in enumerate(depths):
        ref = unproject_depth(torch.full((2, h, w), float(d), dtype=D64), INTR, c2w)
        assert torch.allclose(fp[:, k], ref)
    per_cam = torch.stack([depths, 2 * depths])  # 2 x D
    fp2 = frustum_points(INTR, c2w, h, w, per_cam)
    assert torch.allclose(fp2[1, 0], fp[1, 1])


def test_is_valid_pose():
    gen = torch.Generator().manual_seed(6)
    good = random_pose(gen, (3,))
    assert is_valid_pose(good).all()
    assert rigidity_error(good).max() < 1e-12
    scaled = good.clone()
    scaled[:, :3, :3] *= 1.1
    assert not is_valid_pose(scaled).any()
    nan = good.clone()
    nan[0, 0, 3] = float("nan")
    assert is_valid_pose(nan).tolist() == [False, True, True]
    bad = torch.stack([good[0], good[0], good[0], good[0]])
    bad[0, 0, 1] += 0.1  # shear
    bad[1, :3, 0] *= -1  # reflection (det = -1)
    bad[2, 3, 0] = 0.5  # projective last row
    assert is_valid_pose(bad).tolist() == [False, False, False, True]


def test_gradcheck():
    gen = torch.Generator().manual_seed(7)
    c2w = random_pose(gen).requires_grad_()
    intr = INTR.clone().requires_grad_()
    pts = (torch.randn(4, 3, generator=gen, dtype=D64) + torch.tensor([0, 0, -5.0], dtype=D64))
    pts = camera_to_world(pts, c2w.detach()).requires_grad_()
    depth = (torch.rand(3, 4, generator=gen, dtype=D64) + 1).requires_grad_()
    assert torch.autograd.gradcheck(project, (pts, intr, c2w))
    assert torch.autograd.gradcheck(unproject_depth, (depth, intr, c2w))
    assert torch.autograd.gradcheck(lambda i, c: pixel_rays(i, c, 2, 3, normalize=True), (intr, c2w))
    pos = torch.randn(3, dtype=D64, requires_grad=True)
    yaw = torch.tensor(0.3, dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(pose_from_position_yaw, (pos, yaw))


def test_dihedral_matrix_is_the_group():
    for k in range(4):
        for flip in (False, True):
            M = dihedral_matrix(k, flip)
            assert torch.allclose(M.T @ M, torch.eye(3))
            assert math.isclose(float(torch.linalg.det(M)), -1.0 if flip else 1.0)
            assert torch.equal(M[2], torch.tensor([0.0, 0.0, 1.0]))      # z (up) is kept
    assert torch.allclose(dihedral_matrix(1) @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]))
    assert torch.allclose(dihedral_matrix(1) @ dihedral_matrix(3), torch.eye(3))
    assert torch.allclose(dihedral_matrix(0, True) @ torch.tensor([1.0, 2.0, 3.0]), torch.tensor([-1.0, 2.0, 3.0]))
    with pytest.raises(ValueError):
        dihedral_matrix(1.5)


def test_transform_poses_keeps_poses_rigid_and_moves_what_they_see():
    c2w = pose_from_position_yaw(torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.2, 1.0]]), torch.tensor([0.3, 2.0]))
    intr = torch.tensor([40.0, 48.0, 16.0, 12.0])
    point = torch.tensor([[[4.0, -1.0, 0.7]], [[-2.0, 3.0, 1.2]]])    # one point per camera
    uv, depth = project(point, intr, c2w)
    assert bool((depth > 0).all())
    for k in range(4):
        for flip in (False, True):
            M = dihedral_matrix(k, flip)
            c2 = transform_poses(c2w, M)
            assert bool(is_valid_pose(c2).all())
            uv2, depth2 = project(point @ M.T, intr, c2)
            assert torch.allclose(depth2, depth, atol=1e-5)
            want = torch.stack([2 * intr[2] - uv[..., 0], uv[..., 1]], -1) if flip else uv  # mirrored
            assert torch.allclose(uv2, want, atol=1e-4)
