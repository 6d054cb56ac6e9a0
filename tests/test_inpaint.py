"""Editing and outpainting: frozen GroupNorm statistics, the RePaint walk and latent inpainting,
footprint boxes, window shifts / stitching / the free-space path of ``nfldm extend``, map crops,
the seam score, and conditional levels initialised from unconditional runs."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from data_fixtures import BOUNDS, make_bev, randomise_zero_init, with_look
from torch import nn

from nfldm.camera import is_valid_pose
from nfldm.data.bev import bev_grid, crop_bev
from nfldm.ldm.config import preset, run_model_config
from nfldm.ldm.data import LatentStats
from nfldm.ldm.evaluate import WALL_BAND, WALL_DENSITY, mid_height_occupancy
from nfldm.ldm.inpaint import footprint_masks, inpaint_latents, repaint, repaint_schedule
from nfldm.ldm.model import LevelDiffusion, guided_prediction
from nfldm.pipeline.edit import seam_score
from nfldm.pipeline.extend import free_space_path, shift_window, stitch
from nfldm.utils.norms import record_norms, replay_norms


def smoke_cfg(level: str, **kw):
    return replace(preset("smoke").level(level).model, **kw)


def bev_cfg(level: str, **kw):
    return smoke_cfg(level, **{"bev": True, "bev_size": 16, **kw})


def tiny_models(make_cfg, seed: int = 0) -> dict[str, LevelDiffusion]:
    """g, c, f levels of one config family, zero-initialised layers randomised, in eval mode."""
    models = {}
    for k, lv in enumerate(("g", "c", "f")):
        torch.manual_seed(seed + k)
        m = LevelDiffusion(make_cfg(lv))
        randomise_zero_init(m, seed + k)
        models[lv] = m.eval()
    return models


def stats_for(cfg) -> LatentStats:
    c_ch, f_ch = cfg.c_shape[0], cfg.f_shape[0]
    return LatentStats({"g": {"mean": [0.1] * cfg.g_dim, "std": [2.0] * cfg.g_dim},
                        "c": {"mean": [0.5, -0.5, 0.0, 1.0][:c_ch], "std": [1.5, 0.5, 1.0, 2.0][:c_ch]},
                        "f": {"mean": [-0.2] * f_ch, "std": [0.7] * f_ch}})


def scene_latents(cfg, seed: int = 0) -> dict:
    """Raw latents of one scene (g, traj, c: c_ch x Xc x Yc x Zc, f: f_ch x X x Y) and a region of
    2 x 2 coarse cells (region_c Xc x Yc, region_f: the same cells of f)."""
    gen = torch.Generator().manual_seed(seed)
    _, Xc, Yc, _ = cfg.c_shape
    d = cfg.f_shape[1] // Xc
    region_c = torch.zeros(Xc, Yc, dtype=torch.bool)
    region_c[1:3, 2:4] = True
    return {"g": torch.randn(cfg.g_dim, generator=gen), "traj": torch.rand(cfg.traj_dim, generator=gen) * 2 - 1,
            "c": torch.randn(*cfg.c_shape, generator=gen), "f": torch.randn(*cfg.f_shape, generator=gen),
            "region_c": region_c, "region_f": region_c.repeat_interleave(d, 0).repeat_interleave(d, 1)}


@pytest.fixture(scope="module")
def plain_models():
    return tiny_models(smoke_cfg)


@pytest.fixture(scope="module")
def bev_models():
    return tiny_models(bev_cfg, seed=10)


# ----------------------------------------------------------------------------------------
# frozen GroupNorm statistics


def small_net() -> nn.Module:
    """Fully convolutional, two 3 x 3 convs (receptive field radius 2) around a GroupNorm."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.SiLU(),
                         nn.Conv2d(8, 3, 3, padding=1)).eval()


def test_replayed_statistics_reproduce_the_recorded_output():
    """Replaying the statistics of an input on that same input gives the recorded output, and
    the k-th call of a GroupNorm uses the k-th recorded statistics."""
    net = small_net()
    a, b = torch.randn(2, 2, 16, 16), 3 * torch.randn(2, 2, 16, 16) + 1
    with torch.no_grad():
        with record_norms(net) as stats:
            ya, yb = net(a), net(b)
        gn = net[1]
        assert len(stats[gn]) == 2 and stats[gn][0][0].shape == (2, 4) and stats[gn][0][1].shape == (2, 4)
        assert torch.allclose(ya, net(a), atol=1e-6)                  # recording computes as usual
        with replay_norms(net, stats):
            ra, rb = net(a), net(b)
        assert torch.allclose(ra, ya, atol=1e-5) and torch.allclose(rb, yb, atol=1e-5)
        with replay_norms(net, stats):                                 # b with a's statistics
            rba = net(b)
        assert not torch.allclose(rba, yb, atol=1e-2)


def test_frozen_statistics_make_the_net_local():
    """Changing one input pixel moves every output with live GroupNorm statistics, but with the
    statistics replayed only outputs within the receptive field (2 pixels) change."""
    net = small_net()
    x0 = torch.randn(1, 2, 16, 16)
    x1 = x0.clone()
    x1[0, :, 3, 3] += 10.0
    with torch.no_grad():
        with record_norms(net) as stats:
            y0 = net(x0)
        live = net(x1)
        with replay_norms(net, stats):
            r0 = net(x0)
        with replay_norms(net, stats):
            r1 = net(x1)
    ii, jj = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    far = torch.maximum((ii - 3).abs(), (jj - 3).abs()) > 2
    assert (live - y0).abs()[0, :, far].amax() > 1e-3                  # GroupNorm is global
    assert (r1 - r0).abs()[0, :, far].amax() < 1e-6                    # frozen: local
    assert torch.allclose(r1[0, :, far], y0[0, :, far], atol=1e-5)
    assert (r1 - r0).abs()[0, :, 3, 3].amax() > 1e-2                   # the change itself shows


def test_replay_errors_and_the_forward_is_restored():
    """Replay with another batch size or more calls than recorded is a RuntimeError; after each
    context (also one left by an error) the GroupNorm's own forward is back."""
    net = small_net()
    gn = net[1]
    x = torch.randn(2, 2, 16, 16)
    with torch.no_grad():
        plain = net(x)
        with record_norms(net) as stats:
            net(x)
        assert "forward" not in gn.__dict__
        with pytest.raises(RuntimeError, match="batch of 1 where 2"):
            with replay_norms(net, stats):
                net(x[:1])
        assert "forward" not in gn.__dict__
        with pytest.raises(RuntimeError, match="more GroupNorm calls"):
            with replay_norms(net, stats):
                net(x)
                net(x)
        assert "forward" not in gn.__dict__
        with pytest.raises(RuntimeError, match="more GroupNorm calls"):
            with replay_norms(net, {}):                                # nothing recorded
                net(x)
        assert "forward" not in gn.__dict__
        assert torch.equal(net(x), plain)


# ----------------------------------------------------------------------------------------
# the RePaint walk


def test_repaint_schedule_without_resampling_is_the_plain_walk():
    """resample 1: steps transitions down, nothing else."""
    assert repaint_schedule(5, 2, 1) == [(k, k + 1) for k in range(5)]
    assert repaint_schedule(1, 1, 1) == [(0, 1)]


@pytest.mark.parametrize("steps,jump,resample", [(10, 5, 3), (25, 5, 3), (7, 3, 2), (6, 1, 4), (4, 4, 3),
                                                 (9, 10, 2), (12, 4, 1)])
def test_repaint_schedule_walks_down_and_jumps_back(steps, jump, resample):
    """A connected walk from 0 to ``steps``: each transition is one step down or ``jump`` steps
    back up (never above index 0), each jump point (multiples of jump below steps) is passed
    ``resample`` times, so the walk has steps + (resample - 1) jump n_points steps down."""
    walk = repaint_schedule(steps, jump, resample)
    assert walk[0][0] == 0 and walk[-1][1] == steps
    for (a, b), (c, _) in zip(walk, walk[1:]):
        assert b == c                                             # connected
    for a, b in walk:
        assert b == a + 1 or (b < a and a - b == min(jump, a))
        assert 0 <= b <= steps
    points = len([k for k in range(jump, steps, jump)])
    downs = [t for t in walk if t[1] == t[0] + 1]
    ups = [t for t in walk if t[1] < t[0]]
    assert len(downs) == steps + (resample - 1) * jump * points
    assert len(ups) == (resample - 1) * points
    # the last step down is always to the clean sample, never followed by a jump
    assert walk[-1] == (steps - 1, steps)
    for k in range(jump, steps, jump):
        assert sum(1 for t in downs if t[1] == k) == resample      # each window denoised resample times


def test_repaint_schedule_rejects_bad_arguments():
    """steps, jump and resample below 1 are ValueErrors."""
    for args in ((0, 5, 3), (5, 0, 3), (5, 5, 0), (-1, 1, 1)):
        with pytest.raises(ValueError, match=">= 1"):
            repaint_schedule(*args)


# ----------------------------------------------------------------------------------------
# repaint on one level


def test_repaint_keeps_the_known_part_and_uses_it(plain_models):
    """The known entries come back bit for bit, the rest is finite; the same generator seed
    gives the same result; what ``values`` hold where keep is False does not matter, but the
    known values do (the model sees them)."""
    cm = plain_models["c"]
    cfg = cm.cfg
    sc = scene_latents(cfg)
    ctx = cm.context({"g": sc["g"][None], "traj": sc["traj"][None]})
    shape = cm.sample_shape(1)
    gen = torch.Generator().manual_seed(3)
    values = torch.randn(shape, generator=gen)
    keep = ~sc["region_c"][None, None]

    def run(vals, seed=0):
        return repaint(cm, 1, ctx, None, (vals, keep), steps=3, jump=1, resample=2,
                       generator=torch.Generator().manual_seed(seed))

    out = run(values)
    k = keep.expand(shape)
    assert out.shape == shape
    assert torch.equal(out[k], values[k]) and torch.isfinite(out).all()
    assert not torch.allclose(out[~k], values[~k], atol=1e-3)
    assert torch.equal(run(values), out)
    assert not torch.allclose(run(values, seed=1)[~k], out[~k], atol=1e-4)
    # the unknown part of values is ignored
    other_unknown = torch.where(k, values, torch.randn(shape, generator=gen) * 5)
    assert torch.equal(run(other_unknown), out)
    # the known part conditions the sampled part
    other_known = torch.where(k, -values, values)
    moved = run(other_known)
    assert torch.equal(moved[k], -values[k])
    assert not torch.allclose(moved[~k], out[~k], atol=1e-4)


# ----------------------------------------------------------------------------------------
# footprint boxes


def test_footprint_masks_snap_to_coarse_cells():
    """A box in metres covers the coarse cells it touches, f the same cells; the snapped box is
    their extent and snaps to itself."""
    bounds = torch.tensor([[-8.0, -8.0, -2.0], [8.0, 8.0, 6.0]])
    r = footprint_masks([0, 0, 1.5, 1.5], bounds, (64, 64), (16, 16))
    c = torch.zeros(16, 16, dtype=torch.bool)
    c[8:10, 8:10] = True
    assert torch.equal(r["c"], c)
    assert torch.equal(r["f"], c.repeat_interleave(4, 0).repeat_interleave(4, 1))
    assert r["f"].sum() == 64 and r["cells"] == [32, 32, 40, 40]
    assert r["box"] == pytest.approx([0.0, 0.0, 2.0, 2.0])
    again = footprint_masks(r["box"], bounds, (64, 64), (16, 16))
    assert torch.equal(again["c"], r["c"]) and again["box"] == pytest.approx(r["box"])
    # a box over the edge is cut to the footprint; a box inside one cell takes that cell
    edge = footprint_masks([7.2, -9.0, 12.0, -7.5], bounds, (64, 64), (16, 16))
    assert edge["cells"] == [60, 0, 64, 4] and edge["box"] == pytest.approx([7.0, -8.0, 8.0, -7.0])
    small = footprint_masks([-0.9, 3.1, -0.8, 3.2], bounds, (64, 64), (16, 16))
    assert int(small["c"].sum()) == 1 and bool(small["c"][7, 11])


def test_footprint_masks_reject_bad_boxes():
    """Boxes that miss the footprint, are empty or reversed, or hold NaN are ValueErrors."""
    bounds = torch.tensor([[-8.0, -8.0, -2.0], [8.0, 8.0, 6.0]])
    for box, msg in (([20, 20, 21, 21], "misses"), ([8.0, 0, 9.0, 1], "misses"), ([1, 0, 1, 1], "x1 > x0"),
                     ([2, 0, 1, 1], "x1 > x0"), ([0, 1, 1, 0.5], "x1 > x0"), ([0, 0, float("nan"), 1], "x1 > x0"),
                     ([0, 0, 1, float("inf")], "x1 > x0")):
        with pytest.raises(ValueError, match=msg):
            footprint_masks(box, bounds, (64, 64), (16, 16))


def test_footprint_masks_keep_a_box_already_on_coarse_cells():
    """A box lying exactly on coarse-cell boundaries is its own snapped box."""
    bounds = torch.tensor([[-4.8, -4.8, -2.0], [4.8, 4.8, 6.0]])      # coarse cells of 1.2 m
    r = footprint_masks([-3.6, -3.6, -1.2, 1.2], bounds, (32, 32), (8, 8))
    assert r["cells"] == [4, 4, 12, 20]


# ----------------------------------------------------------------------------------------
# inpainting a scene's latents


def test_inpaint_latents_changes_only_the_region(plain_models):
    """Raw c and f come back bit for bit outside the region and re-sampled inside it; the same
    seed repeats the result, another seed gives another one."""
    cfg = plain_models["c"].cfg
    stats = stats_for(cfg)
    sc = scene_latents(cfg)
    args = (plain_models, stats, sc["g"], sc["traj"], sc["c"], sc["f"], sc["region_c"], sc["region_f"])
    out = inpaint_latents(*args, steps=2, jump=1, resample=2, seed=0)
    rc, rf = sc["region_c"], sc["region_f"]
    assert out["c"].shape == sc["c"].shape and out["f"].shape == sc["f"].shape
    assert torch.equal(out["c"][:, ~rc], sc["c"][:, ~rc]) and torch.equal(out["f"][:, ~rf], sc["f"][:, ~rf])
    assert torch.isfinite(out["c"]).all() and torch.isfinite(out["f"]).all()
    assert (out["c"][:, rc] != sc["c"][:, rc]).all() and (out["f"][:, rf] != sc["f"][:, rf]).all()
    again = inpaint_latents(*args, steps=2, jump=1, resample=2, seed=0)
    assert torch.equal(again["c"], out["c"]) and torch.equal(again["f"], out["f"])
    other = inpaint_latents(*args, steps=2, jump=1, resample=2, seed=1)
    assert not torch.allclose(other["f"][:, rf], out["f"][:, rf], atol=1e-4)
    assert torch.equal(other["f"][:, ~rf], sc["f"][:, ~rf])
    with pytest.raises(ValueError, match="psi_c and psi_f"):
        inpaint_latents({"g": plain_models["g"], "c": plain_models["c"]}, *args[1:], steps=2)
    bev = bev_grid(make_bev(0), 16)
    with pytest.raises(ValueError, match="not trained on BEV maps"):
        inpaint_latents(*args, steps=2, bev=bev)
    expert = dict(plain_models, c=LevelDiffusion(replace(cfg, train_t_from=250)))   # a high-noise expert
    with pytest.raises(ValueError, match="level c was trained at the timesteps t >= 250 only"):
        inpaint_latents(expert, *args[1:], steps=2)


def test_inpaint_latents_with_bev_levels(bev_models):
    """Levels trained on BEV maps need a map (ValueError without one); with a 4 x S x S map the
    region is re-sampled, the rest kept bit for bit, and another map gives another result."""
    cfg = bev_models["c"].cfg
    stats = stats_for(cfg)
    sc = scene_latents(cfg, seed=1)
    args = (bev_models, stats, sc["g"], sc["traj"], sc["c"], sc["f"], sc["region_c"], sc["region_f"])
    with pytest.raises(ValueError, match="trained on BEV maps"):
        inpaint_latents(*args, steps=2, jump=1, resample=1)
    rc, rf = sc["region_c"], sc["region_f"]
    maps = [bev_grid(make_bev(k), cfg.bev_size) for k in (0, 1)]
    assert maps[0].shape == (4, 16, 16)
    outs = [inpaint_latents(*args, steps=2, jump=1, resample=2, seed=0, bev=m) for m in maps]
    for out in outs:
        assert torch.equal(out["c"][:, ~rc], sc["c"][:, ~rc]) and torch.equal(out["f"][:, ~rf], sc["f"][:, ~rf])
        assert torch.isfinite(out["f"]).all() and (out["f"][:, rf] != sc["f"][:, rf]).all()
    assert not torch.allclose(outs[0]["f"][:, rf], outs[1]["f"][:, rf], atol=1e-4)
    # guidance > 1 (a conditional and an unconditional pass) works too
    g2 = inpaint_latents(*args, steps=1, jump=1, resample=1, seed=0, bev=maps[0], guidance=2.0)
    assert torch.equal(g2["f"][:, ~rf], sc["f"][:, ~rf]) and torch.isfinite(g2["f"]).all()


def test_inpaint_latents_look_guidance():
    """Levels trained with bev_look: look guidance (as nfldm sample's) moves the re-sampled region
    and nothing outside it; on a map without a look it changes nothing (the look-less prediction is
    the prediction); a non-finite scale is refused."""
    models = tiny_models(lambda lv: bev_cfg(lv, bev_look=True), seed=20)
    cfg = models["c"].cfg
    stats = stats_for(cfg)
    sc = scene_latents(cfg, seed=2)
    rc, rf = sc["region_c"], sc["region_f"]
    args = (models, stats, sc["g"], sc["traj"], sc["c"], sc["f"], rc, rf)
    look = bev_grid(with_look(make_bev(0), seed=3), cfg.bev_size, look=True)
    run = dict(steps=2, jump=1, resample=2, seed=0)
    one, three = (inpaint_latents(*args, **run, bev=look, look_guidance=w) for w in (1.0, 3.0))
    for out in (one, three):
        assert torch.equal(out["c"][:, ~rc], sc["c"][:, ~rc]) and torch.equal(out["f"][:, ~rf], sc["f"][:, ~rf])
        assert torch.isfinite(out["c"]).all() and torch.isfinite(out["f"]).all()
    assert not torch.allclose(one["c"][:, rc], three["c"][:, rc], atol=1e-4)
    plain = bev_grid(make_bev(0), cfg.bev_size, look=True)          # a drawn plan: no look
    a, b = (inpaint_latents(*args, **run, bev=plain, look_guidance=w) for w in (1.0, 3.0))
    assert torch.allclose(a["c"], b["c"], atol=1e-5) and torch.allclose(a["f"], b["f"], atol=1e-5)
    with pytest.raises(ValueError, match="finite"):
        inpaint_latents(*args, **run, bev=look, look_guidance=float("nan"))


# ----------------------------------------------------------------------------------------
# outpainting: windows


def test_shift_window_moves_the_shared_part():
    """The next window along +x / -x / +y holds this one's shared part moved by s cells, zeros
    in the new part, which the region marks; s outside 1..n-1 is a ValueError."""
    lat = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(2, 8, 8) + 1
    s = 3
    out, region = shift_window(lat, 0, 1, s)                        # +x
    assert torch.equal(out[:, :5], lat[:, 3:]) and (out[:, 5:] == 0).all()
    exp = torch.zeros(8, 8, dtype=torch.bool)
    exp[5:] = True
    assert torch.equal(region, exp)
    out, region = shift_window(lat, 0, -1, s)                       # -x
    assert torch.equal(out[:, 3:], lat[:, :5]) and (out[:, :3] == 0).all()
    exp = torch.zeros(8, 8, dtype=torch.bool)
    exp[:3] = True
    assert torch.equal(region, exp)
    out, region = shift_window(lat, 1, 1, s)                        # +y
    assert torch.equal(out[:, :, :5], lat[:, :, 3:]) and (out[:, :, 5:] == 0).all()
    exp = torch.zeros(8, 8, dtype=torch.bool)
    exp[:, 5:] = True
    assert torch.equal(region, exp)
    out, region = shift_window(lat, 1, -1, 1)                       # -y
    assert torch.equal(out[:, :, 1:], lat[:, :, :7]) and (out[:, :, 0] == 0).all() and region[:, 0].all()
    assert int(region.sum()) == 8
    # c latents (ch x Xc x Yc x Zc): the region is over the footprint
    c = torch.randn(3, 4, 4, 2)
    out, region = shift_window(c, 0, 1, 1)
    assert region.shape == (4, 4) and torch.equal(out[:, :3], c[:, 1:]) and (out[:, 3] == 0).all()
    for bad in (0, 8, -1):
        with pytest.raises(ValueError, match="shift must be"):
            shift_window(lat, 0, 1, bad)
    assert not lat.eq(0).any()                                      # the input is left alone


def _field(K, L, Y, Z, axis, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = [K, L, Y, Z] if axis == 0 else [K, Y, L, Z]
    return torch.randn(shape, generator=g)


@pytest.mark.parametrize("axis,sign", [(0, 1), (0, -1), (1, 1), (1, -1)])
@pytest.mark.parametrize("X,s,n", [(8, 4, 1), (8, 3, 2), (8, 2, 3), (8, 7, 2)])
def test_stitch_puts_the_windows_back_together(axis, sign, X, s, n):
    """Windows cut from one field (window k moved k s cells along the direction) stitch back into
    that field (K x (X + n s) x Y x Z along the axis): every weight is a convex combination."""
    L = X + n * s
    full = _field(2, L, 5, 3, axis)
    dim = 1 + axis
    Vs = [full.narrow(dim, k * s if sign > 0 else (n - k) * s, X) for k in range(n + 1)]
    out = stitch(Vs, axis, sign, s)
    assert out.shape == full.shape
    assert torch.allclose(out, full, atol=1e-5)


@pytest.mark.parametrize("axis,sign", [(0, 1), (0, -1), (1, 1), (1, -1)])
def test_stitch_constants_and_ramps(axis, sign):
    """Equal constant windows stitch to that constant; two windows of different constants keep
    their own values off the overlap and blend monotonically (strictly between them) across it."""
    X, s, dim = 8, 4, 1 + axis
    shape = [3, X, 6, 2] if axis == 0 else [3, 6, X, 2]
    same = stitch([torch.full(shape, 2.5) for _ in range(3)], axis, sign, s)
    exp_shape = list(shape)
    exp_shape[dim] = X + 2 * s
    assert list(same.shape) == exp_shape and torch.allclose(same, torch.full(exp_shape, 2.5))
    out = stitch([torch.zeros(shape), torch.ones(shape)], axis, sign, s)   # window 0: 0, window 1: 1
    line = out.select(3, 0).select(2 - axis, 0)[0]                         # along the axis, 12 values
    assert torch.allclose(out, line.view([1] * dim + [-1] + [1] * (3 - dim)).expand_as(out))
    if sign < 0:
        line = line.flip(0)                                               # along the direction of travel
    assert (line[:4] == 0).all() and (line[8:] == 1).all()
    mid = line[4:8]
    assert ((mid > 0) & (mid < 1)).all() and (mid.diff() > 0).all()
    assert torch.allclose(mid, (torch.arange(4) + 0.5) / 4)


# ----------------------------------------------------------------------------------------
# the level's camera path


def _corridor(wall_cols: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """V (1 + 3 channels) over an 8 x 4 x 4 m box, 0.25 m cells, a floor (the lowest cells) and
    a wall of density 50 over the y columns ``wall_cols`` at mid height."""
    bounds = torch.tensor([[0.0, 0.0, 0.0], [8.0, 4.0, 4.0]])
    V = torch.zeros(4, 32, 16, 16)
    z = (torch.arange(16) + 0.5) * 0.25
    band = (z >= WALL_BAND[0]) & (z <= WALL_BAND[1])
    assert 50 > WALL_DENSITY and band.any()
    V[0, :, wall_cols, band] = 50.0
    V[0, :, :, 0] = 50.0
    V[1:] = torch.randn(3, 32, 16, 16)
    return V, bounds


@pytest.mark.parametrize("sign", [1, -1])
def test_free_space_path_runs_along_the_axis_away_from_walls(sign):
    """A rigid, level path of the asked length at the asked height, inside the box, moving
    monotonically in the direction and looking along it, keeping to the free half of a box whose
    other half (y < 2 m) is walled."""
    V, bounds = _corridor(slice(0, 8))
    path = free_space_path(V, bounds, 0, sign, 12, 1.25)
    assert path.shape == (12, 4, 4) and is_valid_pose(path).all()
    pos = path[:, :3, 3]
    assert torch.allclose(pos[:, 2], torch.full((12,), 1.25))
    assert (pos[:, 0] > 0).all() and (pos[:, 0] < 8).all() and (pos[:, 1] > 0).all() and (pos[:, 1] < 4).all()
    assert (sign * pos[:, 0].diff() > 0).all()
    assert (pos[:, 1] > 2.2).all()
    forward = -path[:, :3, 2]                                   # the camera looks along -z_cam
    assert (sign * forward[:, 0] > 0.9).all() and forward[:, 2].abs().max() < 1e-5
    # the wall on the other side: the path keeps to y < 2 m
    V2, _ = _corridor(slice(8, 16))
    other = free_space_path(V2, bounds, 0, sign, 12, 1.25)
    assert (other[:, 1, 3] < 1.8).all()


def test_free_space_path_goes_round_walls_through_their_doors():
    """Two walls across the corridor with doors at opposite sides (x 2.5-3 m, door y 0.25-1.25 m; x
    5.25-5.75 m, door y 2.75-3.75 m): the path zig-zags through both doors, no camera inside a wall
    (a path monotone along the axis that trades clearance against sideways moves cut through them),
    without whipping round (at most 20 degrees of heading a frame); with the doors shut it still runs
    from end to end (through the walls: no way round)."""
    V, bounds = _corridor(slice(0, 0))
    z = (torch.arange(16) + 0.5) * 0.25
    band = (z >= WALL_BAND[0]) & (z <= WALL_BAND[1])
    shut = V.clone()
    shut[0, 10:12, :, band] = 50.0
    shut[0, 21:23, :, band] = 50.0
    doors = shut.clone()
    doors[0, 10:12, 1:5] = 0.0
    doors[0, 21:23, 11:15] = 0.0
    path = free_space_path(doors, bounds, 0, 1, 48, 1.25)
    pos = path[:, :3, 3]
    assert is_valid_pose(path).all() and pos[0, 0] < 1.0 and pos[-1, 0] > 7.0
    occ = mid_height_occupancy(doors, bounds)
    ix, iy = (pos[:, 0] / 0.25).long().clamp(0, 31), (pos[:, 1] / 0.25).long().clamp(0, 15)
    assert not occ[ix, iy].any()
    first, second = (pos[:, 0] > 2.4) & (pos[:, 0] < 3.1), (pos[:, 0] > 5.15) & (pos[:, 0] < 5.85)
    assert first.any() and (pos[first, 1] < 1.3).all() and second.any() and (pos[second, 1] > 2.7).all()
    forward = -path[:, :3, 2]
    yaw = torch.atan2(forward[:, 1], forward[:, 0])
    turn = torch.remainder(yaw.diff() + math.pi, 2 * math.pi) - math.pi
    assert turn.abs().max() < math.radians(20)
    path = free_space_path(shut, bounds, 0, 1, 48, 1.25)
    assert is_valid_pose(path).all() and path[0, 0, 3] < 1.0 and path[-1, 0, 3] > 7.0


def test_free_space_path_along_y():
    """Along +y in a box walled for x < 4 m at mid height, the path keeps to x > 4 m."""
    bounds = torch.tensor([[0.0, 0.0, 0.0], [8.0, 8.0, 4.0]])
    V = torch.zeros(4, 32, 32, 16)
    z = (torch.arange(16) + 0.5) * 0.25
    V[0, :16, :, (z >= 0.5) & (z <= 1.5)] = 50.0
    path = free_space_path(V, bounds, 1, 1, 10, 1.0)
    pos = path[:, :3, 3]
    assert is_valid_pose(path).all() and (pos[:, 1].diff() > 0).all()
    assert (pos[:, 0] > 4.2).all() and (pos[:, 0] < 8).all()


# ----------------------------------------------------------------------------------------
# map crops


def test_crop_bev_of_the_maps_own_box_is_the_map():
    """Cropping a map to its own bounds gives back the same arrays."""
    bev = make_bev(1)
    b = bev["bounds_xy"]
    crop = crop_bev(bev, [b[0, 0], b[0, 1], b[1, 0], b[1, 1]])
    for k in ("wall", "inside", "floor", "ceiling"):
        assert crop[k].shape == bev[k].shape and crop[k].dtype == np.float32
        assert np.array_equal(crop[k], bev[k], equal_nan=True)
    assert np.allclose(crop["bounds_xy"], b)


def test_crop_bev_beyond_the_map_is_outside():
    """A crop half beyond the map: the source cells on the part over the map, outside the map
    (inside 0, no walls, NaN heights) on the rest; a non-square box is a ValueError."""
    bev = make_bev(0)                                   # 32 cells over -4..4 m: 0.25 m cells
    assert np.allclose(bev["bounds_xy"], np.asarray(BOUNDS)[:, :2])
    crop = crop_bev(bev, [0.0, -4.0, 8.0, 4.0])         # shifted +4 m along x
    assert crop["wall"].shape == (32, 32)
    assert np.allclose(crop["bounds_xy"], [[0.0, -4.0], [8.0, 4.0]])
    for k in ("wall", "inside", "floor", "ceiling"):
        assert np.array_equal(crop[k][:16], bev[k][16:], equal_nan=True)
    assert (crop["inside"][16:] == 0).all() and (crop["wall"][16:] == 0).all()
    assert np.isnan(crop["floor"][16:]).all() and np.isnan(crop["ceiling"][16:]).all()
    assert crop["wall"][:16].sum() > 0                  # the room's walls came along
    down = crop_bev(bev, [-4.0, -6.0, 4.0, 2.0])        # shifted -2 m along y
    assert np.array_equal(down["inside"][:, 8:], bev["inside"][:, :24]) and (down["inside"][:, :8] == 0).all()
    grid = bev_grid(crop, 16)                           # the condition tensor of a crop is finite
    assert torch.isfinite(grid).all() and grid[1, 8:].sum() == 0
    for box in ([0.0, 0.0, 4.0, 2.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]):
        with pytest.raises(ValueError, match="square"):
            crop_bev(bev, box)


# ----------------------------------------------------------------------------------------
# seam score


def test_seam_score_is_one_without_a_seam_and_large_with_one():
    """An unedited V (i.i.d. noise) scores about 1; an offset of 5 std inside the region makes
    the boundary a seam (score > 3); a region without a boundary gives NaN."""
    g = torch.Generator().manual_seed(0)
    V = torch.randn(4, 24, 24, 4, generator=g) * torch.tensor([3.0, 1.0, 0.5, 2.0]).view(4, 1, 1, 1)
    region = torch.zeros(24, 24, dtype=torch.bool)
    region[6:16, 8:18] = True
    res = seam_score(V, V, region)
    assert res["seam"] == pytest.approx(1.0) and 0.7 < res["seam_vs_scene"] < 1.3 and res["reference"] > 0
    std = V.flatten(1).std(1).view(4, 1, 1, 1)
    edited = V + 5 * std * region[None, :, :, None]
    hit = seam_score(edited, V, region)
    assert hit["seam"] > 3 and hit["seam_vs_scene"] > 3 and hit["reference"] == pytest.approx(res["reference"])
    # a fresh field of the same texture inside the region is no seam either
    fresh = torch.where(region[None, :, :, None], torch.randn(V.shape, generator=g) * std, V)
    assert 0.7 < seam_score(fresh, V, region)["seam"] < 1.3
    assert math.isnan(seam_score(V, V, torch.zeros(24, 24, dtype=torch.bool))["seam"])
    # against a reference of another footprint (a level's first window): only the scene-relative score
    wide = torch.cat([V, V], 1)
    other = seam_score(wide, V, torch.cat([region, region], 0))
    assert "seam_before_vs_scene" not in other and 0.7 < other["seam_vs_scene"] < 1.3


def test_paste_back_keeps_unseen_pixels_and_feathers_inside_the_seen_ones():
    """Unseen pixels are the unedited view exactly; seen pixels d pixels from the nearest unseen
    one take min(d, feather) / feather of the edited view; the paste edge of an edit that
    changes only seen pixels scores 1, a constant offset pasted over a noise field more."""
    from nfldm.pipeline.edit import image_seam, paste_back

    g = torch.Generator().manual_seed(0)
    before, after = torch.rand(2, 3, 16, 20, generator=g), torch.rand(2, 3, 16, 20, generator=g)
    seen = torch.zeros(2, 16, 20, dtype=torch.bool)
    seen[:, 4:12, 6:20] = True                                    # touches the right edge of the frame
    out = paste_back(after, before, seen, feather=3)
    assert torch.equal(out[:, :, ~seen[0]], before[:, :, ~seen[0]])
    alpha = (out - before) / (after - before)
    assert torch.allclose(alpha[:, :, 4, 10], torch.full((2, 3), 1 / 3), atol=1e-5)    # next to unseen
    assert torch.allclose(alpha[:, :, 5, 10], torch.full((2, 3), 2 / 3), atol=1e-5)
    assert torch.allclose(alpha[:, :, 7, 12], torch.ones(2, 3), atol=1e-5)            # deep inside
    assert torch.allclose(alpha[:, :, 7, 19], torch.ones(2, 3), atol=1e-5)            # the frame's edge
    # an edit confined to the seen pixels: pasting changes nothing, no paste edge
    inside = torch.where(seen[:, None], after, before)
    assert torch.equal(paste_back(inside, before, seen, feather=1), inside)
    assert image_seam(inside, inside, seen) == pytest.approx(1.0)
    # a nearly flat raw render with an offset everywhere: pasting it without feather makes an edge
    smooth = torch.full_like(before, 0.5)
    raw = smooth + 0.3 + 0.01 * torch.rand(before.shape, generator=g)
    assert image_seam(paste_back(raw, smooth, seen, feather=1), raw, seen) > 5
    assert image_seam(paste_back(raw, smooth, seen, feather=3), raw, seen) < \
        image_seam(paste_back(raw, smooth, seen, feather=1), raw, seen)


# ----------------------------------------------------------------------------------------
# conditional levels initialised from an unconditional run


def _write_run(root, model: LevelDiffusion, stats: dict) -> None:
    """An ldm run folder holding one trained level, as the trainer leaves it (config.json,
    model.safetensors with EMA weights, model.json)."""
    from nfldm.ldm.load import STAGE
    from nfldm.trainer import CONFIG_FILE, MODEL_INFO, MODEL_WEIGHTS
    from nfldm.utils.io import write_tensors

    d = root / model.level
    d.mkdir(parents=True)
    (d / CONFIG_FILE).write_text(json.dumps({"stage": STAGE, "level": model.level, "stats": stats,
                                             "model": run_model_config(model.cfg)}))
    write_tensors(d / MODEL_WEIGHTS, dict(model.state_dict()), {"format": "nfldm-model", "step": "7", "ema": "true"})
    (d / MODEL_INFO).write_text(json.dumps({"step": 7, "ema": True}))


@pytest.mark.parametrize("level", ["c", "f"])
def test_bev_level_initialised_from_an_unconditional_run_predicts_as_it(level, tmp_path):
    """A bev level started from the same level of an unconditional run (init_level_from) predicts
    exactly what that level predicts, whatever the map; the widened input conv is recorded;
    different latent statistics and a run without the level are ValueErrors."""
    from nfldm.ldm.train import init_level_from

    torch.manual_seed(0)
    base = LevelDiffusion(smoke_cfg(level))
    randomise_zero_init(base, 1)
    base.eval()
    cfg = base.cfg
    stats = {"g": {"mean": [0.0] * cfg.g_dim, "std": [1.0] * cfg.g_dim},
             "c": {"mean": [0.1] * 4, "std": [1.0] * 4}, "f": {"mean": [0.2] * 4, "std": [2.0] * 4}}
    _write_run(tmp_path / "run", base, stats)
    torch.manual_seed(5)
    model = LevelDiffusion(bev_cfg(level))
    randomise_zero_init(model, 5)                 # fresh weights that would change the prediction
    rec = init_level_from(model, tmp_path / "run", stats)
    model.eval()
    assert rec["level"] == level and rec["step"] == 7
    assert any("conv_in" in k for k in rec["widened"]) and rec["fresh"]
    gen = torch.Generator().manual_seed(2)
    c_ch, Xc, Yc, Zc = cfg.c_shape
    batch = {"g": torch.randn(2, cfg.g_dim, generator=gen), "traj": torch.rand(2, cfg.traj_dim, generator=gen) * 2 - 1,
             "c": torch.randn(2, c_ch * Zc, Xc, Yc, generator=gen)}
    x = torch.randn(model.sample_shape(2), generator=gen)
    t = torch.tensor(400)
    ref = guided_prediction(base, x, t, base.context(batch), None, 1.0)
    for seeds in ((0, 1), (2, 2)):
        bev = torch.stack([bev_grid(make_bev(k), 16) for k in seeds])
        got = guided_prediction(model, x, t, model.context(batch), bev, 1.0)
        assert torch.allclose(got, ref, atol=1e-5)
    assert ref.abs().max() > 1e-3                 # the prediction is not trivially zero
    shifted = {**stats, "f": {"mean": [0.2, 0.2, 0.2, 0.5], "std": [2.0] * 4}}
    with pytest.raises(ValueError, match="statistics of f differ"):
        init_level_from(model, tmp_path / "run", shifted)       # checked before any weight is loaded
    with pytest.raises(ValueError, match="needs an ldm run"):
        init_level_from(LevelDiffusion(bev_cfg("g")), tmp_path / "run", stats)


@pytest.mark.parametrize("level", ["c", "f"])
def test_unconditional_level_started_from_a_bev_level_is_its_unconditional_branch(level, tmp_path):
    """The other way round: an unconditional level started from a bev level (given the map's look,
    its maps dropped in training) predicts exactly what the bev level predicts without a map; the
    input conv and the class embedding lose their map inputs (recorded as narrowed). A bev level
    that never dropped its map has no such branch: ValueError."""
    from nfldm.ldm.train import init_level_from

    torch.manual_seed(0)
    base = LevelDiffusion(bev_cfg(level, bev_look=True, g_with_traj=True))
    randomise_zero_init(base, 1)
    base.eval()
    cfg = base.cfg
    stats = {"g": {"mean": [0.0] * cfg.g_dim, "std": [1.0] * cfg.g_dim}}
    _write_run(tmp_path / "run", base, stats)
    model = LevelDiffusion(smoke_cfg(level, g_with_traj=True))
    randomise_zero_init(model, 5)
    rec = init_level_from(model, tmp_path / "run", stats)
    model.eval()
    assert sorted(rec["narrowed"]) == ["net.unet.class_embedding.linear_1.weight", "net.unet.conv_in.weight"]
    assert not rec["fresh"] and not rec["widened"]
    gen = torch.Generator().manual_seed(2)
    c_ch, Xc, Yc, Zc = cfg.c_shape
    batch = {"g": torch.randn(2, cfg.g_dim, generator=gen), "traj": torch.rand(2, cfg.traj_dim, generator=gen) * 2 - 1,
             "c": torch.randn(2, c_ch * Zc, Xc, Yc, generator=gen)}
    x = torch.randn(model.sample_shape(2), generator=gen)
    for t in (torch.tensor(700), torch.tensor(40)):
        ref = guided_prediction(base, x, t, base.context(batch), None, 1.0)
        got = guided_prediction(model, x, t, model.context(batch), None, 1.0)
        assert torch.allclose(got, ref, atol=1e-5) and ref.abs().max() > 1e-3
    never = LevelDiffusion(bev_cfg(level, cond_drop_prob=0.0))
    _write_run(tmp_path / "never", never, stats)
    with pytest.raises(ValueError, match="no unconditional branch"):
        init_level_from(LevelDiffusion(smoke_cfg(level)), tmp_path / "never", stats)


def test_edit_and_extend_repaint_defaults():
    """nfldm edit resamples every jump window 10 times (its box departs from what was there, the
    seam kept: docs/editing.md); extend keeps 3."""
    from nfldm.cli import build_parser

    p = build_parser()
    edit = p.parse_args(["edit", "--scene", "S", "--out", "O"])
    ext = p.parse_args(["extend", "--scene", "S", "--direction", "+x", "--out", "O"])
    assert (edit.steps, edit.jump, edit.resample) == (25, 5, 10)
    assert (ext.steps, ext.jump, ext.resample) == (25, 5, 3)
    assert edit.look_guidance == 1.0 and ext.look_guidance == 1.0            # none by default (docs/editing.md)
    assert p.parse_args(["edit", "--scene", "S", "--out", "O", "--look-guidance", "2"]).look_guidance == 2.0
