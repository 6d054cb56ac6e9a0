"""Splat (mean pooling of frustum entries into V) and volume rendering of V."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from nfldm import camera
from nfldm.scene_ae.render import ray_box, render_rays, render_views
from nfldm.scene_ae.splat import splat_mean, splat_mean_cumsum, splat_mean_reference, voxel_index

SPLATS = [splat_mean, splat_mean_reference, splat_mean_cumsum]


# ------------------------------------------------------------------------------------ splat
def _random_case(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, N, K, grid = 3, 600, 4, (6, 5, 4)
    lo = torch.tensor([[-2.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, -3.0, 2.0]], dtype=dtype)
    size = torch.tensor([[3.0, 2.5, 2.0], [6.0, 5.0, 4.0], [1.5, 1.0, 1.0]], dtype=dtype)
    bounds = torch.stack([lo, lo + size], 1)                                   # B x 2 x 3
    u = torch.rand(B, N, 3, generator=g, dtype=dtype) * 1.6 - 0.3              # ~half outside
    points = lo[:, None] + u * size[:, None]
    values = torch.randn(B, N, K, generator=g, dtype=dtype)
    return points, values, bounds, grid


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_splats_agree_values_and_grads(dtype, tol):
    points, values, bounds, grid = _random_case(dtype)
    idx, inside = voxel_index(points, bounds, grid)
    assert 0.2 < inside.double().mean() < 0.8                                  # points outside
    up = torch.randn(points.shape[0], values.shape[-1], *grid, dtype=dtype,
                     generator=torch.Generator().manual_seed(1))
    outs, grads = [], []
    for fn in SPLATS:
        v = values.clone().requires_grad_()
        out = fn(points, v, bounds, grid)
        out.backward(up)
        assert out.shape == (3, 4, *grid) and out.dtype == dtype and out.is_contiguous()
        outs.append(out.detach())
        grads.append(v.grad)
    counts = torch.zeros(3, math.prod(grid), dtype=dtype)
    counts.scatter_add_(1, idx, inside.to(dtype))
    empty = (counts == 0).view(3, *grid)
    assert empty.any() and (~empty).any()                                     # empty voxels too
    for out, grad in zip(outs[1:], grads[1:]):
        torch.testing.assert_close(out, outs[0], atol=tol, rtol=0)
        torch.testing.assert_close(grad, grads[0], atol=tol, rtol=0)
    for out, grad in zip(outs, grads):
        assert (out.permute(0, 2, 3, 4, 1)[empty] == 0).all()                # empty voxels zero
        assert (grad[~inside] == 0).all()                                     # dropped entries
        assert (grad[inside] != 0).all()


def _hand_case():
    # box [0, 2]^3 in 2 x 2 x 2 voxels of 1 m; voxel (i, j, k) = [i, i+1) x [j, j+1) x [k, k+1)
    bounds = torch.tensor([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
    pts = torch.tensor([[[0.1, 0.2, 0.3],     # (0, 0, 0)
                         [0.9, 0.5, 0.99],    # (0, 0, 0)
                         [0.0, 0.0, 0.0],     # (0, 0, 0): lo is inside
                         [1.5, 0.5, 1.5],     # (1, 0, 1)
                         [2.0, 1.0, 1.0],     # x == hi: outside
                         [-0.1, 1.0, 1.0],    # outside
                         [0.5, 1.5, 0.5],     # (0, 1, 0)
                         [0.6, 1.9, 0.1]]])   # (0, 1, 0)
    vals = torch.tensor([[[1.0, -3.0], [2.0, 0.5], [6.0, 4.0], [5.0, 7.0],
                          [100.0, 100.0], [-100.0, 100.0], [0.25, 1.0], [0.5, -1.0]]])
    return pts, vals, bounds


@pytest.mark.parametrize("fn", SPLATS, ids=lambda f: f.__name__)
def test_splat_hand_case_is_exact_mean(fn):
    pts, vals, bounds = _hand_case()
    v = vals.clone().requires_grad_()
    V = fn(pts, v, bounds, (2, 2, 2))
    expected = torch.zeros(1, 2, 2, 2, 2)
    expected[0, :, 0, 0, 0] = torch.tensor([3.0, 0.5])          # mean of (1, 2, 6), (-3, .5, 4)
    expected[0, :, 1, 0, 1] = torch.tensor([5.0, 7.0])
    expected[0, :, 0, 1, 0] = torch.tensor([0.375, 0.0])
    assert torch.equal(V, expected)                               # exact, empty voxels zero
    V.sum().backward()                                            # d mean / d entry = 1 / count
    expected_grad = torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.0, 0.0, 0.0, 0.5, 0.5])[None, :, None]
    torch.testing.assert_close(v.grad, expected_grad.expand(1, 8, 2), atol=1e-7, rtol=0)


def test_splat_batch_bounds_2x3_and_all_outside():
    pts, vals, bounds = _hand_case()
    pts2 = torch.cat([pts, pts + 10.0])                           # scene 2: everything outside
    vals2 = torch.cat([vals, vals])
    for fn in SPLATS:
        V = fn(pts2, vals2, bounds, (2, 2, 2))                    # bounds 2 x 3 broadcast
        assert torch.equal(V[1], torch.zeros_like(V[1]))
        assert torch.equal(V[0], fn(pts, vals, bounds, (2, 2, 2))[0])


# ------------------------------------------------------------------------------------ render
def test_ray_box_hand_cases():
    bounds = torch.tensor([[[1.0, -1.0, -1.0], [3.0, 1.0, 1.0]]])
    o = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 5.0, 0.0],
                       [0.0, 0.0, 0.0], [4.0, 0.0, 0.0]]])
    d = torch.tensor([[[1.0, 0.0, 0.0],      # along x: enters at 1, leaves at 3
                       [1.0, 0.5, 0.0],      # leaves through y = 1 at t = 2
                       [-1.0, 0.0, 0.0],     # starts inside: t0 = near = 0, leaves at x = 1
                       [1.0, 0.0, 0.0],      # misses (y = 5): t0 == t1
                       [2.0, 0.0, 0.0],      # t is in units of d: 0.5 .. 1.5
                       [1.0, 0.0, 0.0]]])    # box behind: t0 == t1
    t0, t1 = ray_box(o, d, bounds)
    torch.testing.assert_close(t0[0, :3], torch.tensor([1.0, 1.0, 0.0]))
    torch.testing.assert_close(t1[0, :3], torch.tensor([3.0, 2.0, 1.0]))
    torch.testing.assert_close(t0[0, 4], torch.tensor(0.5))
    torch.testing.assert_close(t1[0, 4], torch.tensor(1.5))
    assert t0[0, 3] == t1[0, 3] and t0[0, 5] == t1[0, 5]
    t0n, t1n = ray_box(o, d, bounds, near=0.25)                   # near clamps only the inside ray
    torch.testing.assert_close(t0n[0, 2], torch.tensor(0.25))
    torch.testing.assert_close(t1n[0, 2], torch.tensor(1.0))
    assert ((t0 >= 0) & (t1 >= t0)).all()


def _wall_scene():
    """Box [-4, 12] x [-4, 4] x [-2, 2] in 64 x 32 x 16 voxels of 0.25 m; an opaque wall filling
    x in [3, 3.5) (voxel columns 28, 29); feature 1 everywhere (trilinear interpolation would
    blend a wall-only feature with the empty voxel in front of the face)."""
    bounds = torch.tensor([[[-4.0, -4.0, -2.0], [12.0, 4.0, 2.0]]])
    V = torch.zeros(1, 3, 64, 32, 16)
    V[:, 0, 28:30] = 500.0                                        # sigma per metre
    V[:, 1] = 1.0
    return V, bounds


# (differentiable samples, density-only coarse samples); coarse only where render_rays has it
HAS_COARSE = "num_coarse" in inspect.signature(render_rays).parameters
SAMPLING = [(256, 0)] + ([(64, 64)] if HAS_COARSE else [])


@pytest.mark.parametrize("num_samples,num_coarse", SAMPLING)
def test_render_opaque_wall_depth_and_opacity(num_samples, num_coarse):
    V, bounds = _wall_scene()
    H = W = 8
    intr = torch.tensor([[[8.0, 8.0, 4.0, 4.0]]])                 # ~53 deg: all rays hit the wall
    c2w = camera.pose_from_position_yaw(torch.tensor([[[0.5, 0.5, 0.3]]]), torch.tensor([[0.0]]))
    kw = {"num_coarse": num_coarse} if num_coarse else {}
    out = render_views(V, bounds, intr, c2w, H, W, num_samples=num_samples,
                       background=torch.tensor([-1.0, -1.0]), **kw)
    # a level camera at x = 0.5 looking along +x: the wall face x = 3 is at z-depth 2.5.
    # Trilinear interpolation ramps the density up from the centre of the empty voxel in front
    # (x = 2.875), so the rendered face comes early by up to half a voxel (here ~0.1 m)
    assert (out["depth"] - 2.5).abs().max() < 0.125              # half a voxel
    assert out["opacity"].min() > 0.999
    torch.testing.assert_close(out["feature"][0, 0, 0], torch.ones(H, W), atol=2e-3, rtol=0)
    o, d = camera.pixel_rays(intr, c2w, H, W)
    rays = render_rays(V, bounds, o.reshape(1, -1, 3), d.reshape(1, -1, 3), num_samples, **kw)
    torch.testing.assert_close(rays["depth"], out["depth"].reshape(1, -1))
    _, t_box = ray_box(o.reshape(1, -1, 3), d.reshape(1, -1, 3), bounds)
    if num_coarse:      # the samples stop soon past the wall, not at the box exit (t = 11.5)
        assert (rays["t_exit"] < 4.5).all() and (rays["t"] <= rays["t_exit"][..., None]).all()
    else:
        assert torch.equal(rays["t_exit"], t_box)


def test_render_rays_missing_the_box():
    V, bounds = _wall_scene()
    V[:, 0] = 1000.0                                              # the whole box opaque
    o = torch.tensor([[[13.0, 0.0, 0.0], [0.0, 9.0, 0.0], [-7.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    d = torch.tensor([[[1.0, 0.0, 0.0],       # starts outside, looks away
                       [1.0, 0.0, 0.0],       # passes beside the box
                       [0.0, 0.0, -1.0],      # passes beside (straight down)
                       [1.0, 0.0, 0.0]]])     # from the inside: hits (control)
    out = render_rays(V, bounds, o, d, num_samples=32, background=torch.tensor([2.0, 3.0]))
    assert torch.equal(out["opacity"][0, :3], torch.zeros(3))
    assert torch.equal(out["depth"][0, :3], out["t_exit"][0, :3])
    assert torch.equal(out["feature"][0, :, :3], torch.tensor([[2.0] * 3, [3.0] * 3]))
    assert out["opacity"][0, 3] > 0.999
    _, t1 = ray_box(o, d, bounds, near=0.05)
    torch.testing.assert_close(out["t_exit"], t1)


@pytest.mark.parametrize("num_samples,num_coarse", [(64, 0)] + ([(64, 64)] if HAS_COARSE else []))
def test_render_gradient_reaches_only_voxels_on_the_ray(num_samples, num_coarse):
    # box [0, 8]^3 in 1 m voxels; the ray runs along x through the centres of voxels (i, 4, 4),
    # where trilinear weights of the neighbouring rows are exactly 0
    bounds = torch.tensor([[[0.0, 0.0, 0.0], [8.0, 8.0, 8.0]]])
    V = torch.full((1, 3, 8, 8, 8), 0.05).requires_grad_()
    o = torch.tensor([[[-1.0, 4.5, 4.5]]])
    d = torch.tensor([[[1.0, 0.0, 0.0]]])
    kw = {"num_coarse": num_coarse} if num_coarse else {}
    out = render_rays(V, bounds, o, d, num_samples=num_samples, background=torch.zeros(2), **kw)
    (out["feature"].sum() + out["depth"].sum() + out["opacity"].sum()).backward()
    g = V.grad[0]
    on_ray = torch.zeros(8, 8, 8, dtype=torch.bool)
    on_ray[:, 4, 4] = True
    assert (g[:, ~on_ray] == 0).all()
    assert (g[:, on_ray] != 0).all()                             # every channel, every voxel
