"""BEV maps: the file and floor-plan readers, the condition tensor, map edits, the BEV-conditioned
levels (tokens, maps, dropout, guidance), known trajectories, and the map metrics."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from data_fixtures import BOUNDS, bev_bytes, make_bev, randomise_zero_init, with_look
from PIL import Image

from nfldm.data.bev import (HEIGHT_SCALE, add_wall_box, bev_grid, erase_box, read_bev, read_bev_file,
                            read_floor_plan, write_bev)
from nfldm.data.format import DataError
from nfldm.ldm.config import preset
from nfldm.ldm.evaluate import inside_iou, mid_height_occupancy, wall_iou
from nfldm.ldm.model import LevelDiffusion, guided_prediction


def bev_cfg(level: str, **kw):
    return replace(preset("smoke").level(level).model, **{"bev": True, "bev_size": 16, **kw})


def batch_for(cfg, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    c_ch, Xc, Yc, Zc = cfg.c_shape
    bev = torch.stack([bev_grid(make_bev(k), cfg.bev_size) for k in range(B)])
    return {"g": torch.randn(B, cfg.g_dim, generator=g), "traj": torch.rand(B, cfg.traj_dim, generator=g) * 2 - 1,
            "c": torch.randn(B, c_ch * Zc, Xc, Yc, generator=g), "f": torch.randn(B, *cfg.f_shape, generator=g),
            "bev": bev}


# ----------------------------------------------------------------------------------------
# the map


def test_bev_grid_pools_walls_inside_and_heights():
    bev = make_bev(1, res=32)              # room cells 3..25, walls on its border
    grid = bev_grid(bev, 16)
    assert grid.shape == (4, 16, 16) and grid.dtype == torch.float32
    assert grid[0, 1, 5] == 1.0            # cells 2-3 hold the x = 2 wall
    assert grid[0, 5, 5] == 0.0
    assert grid[1, 5, 5] == 1.0 and grid[1, 0, 0] == 0.0
    assert torch.isclose(grid[1, 1, 5], torch.tensor(0.5))     # cell 3 of cells 2-3 is inside
    assert torch.isclose(grid[3, 5, 5], torch.tensor(2.5 / HEIGHT_SCALE))
    assert grid[3, 0, 0] == 0.0 and torch.isfinite(grid).all()
    # a coarser map is sampled nearest
    assert bev_grid(make_bev(0, res=8), 16).shape == (4, 16, 16)


def test_floor_plan_colours_and_orientation(tmp_path):
    img = np.full((20, 20, 3), 128, np.uint8)       # outside
    img[5:15, 5:15] = 255                           # floor
    img[5, 5:15] = 0                                # a wall along the top row: the +y side
    Image.fromarray(img).save(tmp_path / "plan.png")
    bev = read_floor_plan(tmp_path / "plan.png", floor=0.25, ceiling=3.0)
    assert bev["wall"].shape == (20, 20)
    # row 5 from the top = y index 14; columns 5..14 = x 5..14
    assert bev["wall"][5:15, 14].all() and bev["wall"].sum() == 10
    assert bev["inside"][10, 10] == 1 and bev["inside"][0, 0] == 0
    assert bev["floor"][10, 10] == 0.25 and np.isnan(bev["floor"][0, 0]) and bev["ceiling"][10, 10] == 3.0
    assert read_bev(tmp_path / "plan.png")["wall"].sum() == 10
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(DataError, match="empty.png"):
        read_floor_plan(tmp_path / "empty.png")


def test_map_edits():
    bev = make_bev(0, res=32)
    b = bev["bounds_xy"]
    cell = (b[1, 0] - b[0, 0]) / 32
    # erase the x = cell 2 wall around y = 0
    x_wall = b[0, 0] + 2.5 * cell
    erased = erase_box(bev, (x_wall - 0.1, -1.0, x_wall + 0.1, 1.0))
    assert erased["wall"].sum() < bev["wall"].sum() and bev["wall"][2, 16] == 1 and erased["wall"][2, 16] == 0
    assert erased["inside"][2, 16] == 1 and np.isfinite(erased["floor"][2, 16])
    pillar = add_wall_box(bev, (-1.0, -1.0, 1.0, 1.0))
    ix = np.nonzero(pillar["wall"][:, 16] - bev["wall"][:, 16])[0]
    assert len(ix) == 2                                  # the block's two border cells along x
    assert pillar["inside"][16, 16] == 0 and np.isnan(pillar["floor"][16, 16])
    with pytest.raises(ValueError, match="x1 > x0"):
        erase_box(bev, (1.0, 0.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="holds no cell"):
        add_wall_box(bev, (50.0, 50.0, 51.0, 51.0))


def test_bev_files_round_trip_and_bad_files(tmp_path):
    bev = make_bev(1)
    write_bev(tmp_path / "bev.npz", bev)
    back = read_bev_file(tmp_path / "bev.npz")
    assert np.array_equal(back["wall"], bev["wall"]) and np.allclose(back["bounds_xy"], bev["bounds_xy"])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="bad.npz: cannot read"):
        read_bev_file(tmp_path / "bad.npz")
    (tmp_path / "partial.npz").write_bytes(bev_bytes({k: v for k, v in bev.items() if k != "inside"}))
    with pytest.raises(DataError, match="partial.npz: BEV array 'inside' is missing"):
        read_bev_file(tmp_path / "partial.npz")
    with pytest.raises(DataError, match="missing.npz: file is missing"):
        read_bev(tmp_path / "missing.npz")
    with pytest.raises(DataError, match="not a BEV map"):
        (tmp_path / "x.txt").write_text("x")
        read_bev(tmp_path / "x.txt")


# ----------------------------------------------------------------------------------------
# the conditioned levels


@pytest.mark.parametrize("level", ["g", "c", "f"])
def test_bev_levels_train_and_the_map_matters(level):
    cfg = bev_cfg(level)
    torch.manual_seed(0)
    model = LevelDiffusion(cfg)
    randomise_zero_init(model)
    batch = batch_for(cfg)
    loss, _ = model.training_loss(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.bev.stem[0].weight.grad is not None and model.bev.stem[0].weight.grad.abs().sum() > 0
    tokens, maps = model.condition(batch["bev"], 2)
    assert tokens.shape == (2, (cfg.bev_size // 8) ** 2, cfg.cross_attention_dim)
    if level == "g":
        assert maps is None
    else:
        assert maps.shape == (2, cfg.bev_map_total, *model.map_size) and (maps[:, -1] == 1).all()
        # the map's own walls, max-pooled to the level's footprint, are the first channel
        assert torch.equal(maps[:, 0], torch.nn.functional.adaptive_max_pool2d(batch["bev"][:, 0], model.map_size))
    # dropped rows get the null tokens and all-zero maps
    tok_d, maps_d = model.condition(batch["bev"], 2, drop=torch.tensor([True, False]))
    assert torch.equal(tok_d[0], model.tokens.null[0].expand_as(tok_d[0])) and torch.equal(tok_d[1], tokens[1])
    if maps is not None:
        assert (maps_d[0] == 0).all() and torch.equal(maps_d[1], maps[1])
    # guidance 1 = the conditional prediction, 0 = the unconditional one; another map changes it
    x = torch.randn(model.sample_shape(2))
    t = torch.tensor(500)
    ctx = model.context(batch)
    with torch.no_grad():
        cond = guided_prediction(model, x, t, ctx, batch["bev"], 1.0)
        unc = guided_prediction(model, x, t, ctx, None, 1.0)
        assert torch.allclose(guided_prediction(model, x, t, ctx, batch["bev"], 0.0), unc, atol=1e-5)
        assert torch.allclose(guided_prediction(model, x, t, ctx, batch["bev"], 3.0), unc + 3 * (cond - unc),
                              atol=1e-4)
        other = guided_prediction(model, x, t, ctx, batch["bev"].flip(0), 1.0)
    assert not torch.allclose(cond, unc) and not torch.allclose(cond, other)


def test_tokens_only_and_bad_bev_configs():
    cfg = bev_cfg("c", bev_maps=False)
    model = LevelDiffusion(cfg)
    assert cfg.map_channels == 0 and model.bev.to_map is None
    assert torch.isfinite(model.training_loss(batch_for(cfg), 0)[0])
    with pytest.raises(ValueError, match="neither bev_tokens nor bev_maps"):
        bev_cfg("g", bev_tokens=False)
    with pytest.raises(ValueError, match="multiple of 8"):
        bev_cfg("c", bev_size=12)
    with pytest.raises(ValueError, match="not both"):
        bev_cfg("c", cond_dim=4)
    batch = batch_for(bev_cfg("c"))
    del batch["bev"]
    with pytest.raises(ValueError, match="hold no maps"):
        LevelDiffusion(bev_cfg("c")).training_loss(batch, 0)


def test_known_trajectory_is_kept_and_g_follows_it():
    from nfldm.ldm.data import LatentStats
    from nfldm.ldm.sample import denoise, sample_latents

    torch.manual_seed(0)
    models = {lv: LevelDiffusion(bev_cfg(lv)).eval() for lv in ("g", "c", "f")}
    for m in models.values():
        randomise_zero_init(m)
    cfg = models["g"].cfg
    stats = LatentStats({"g": {"mean": [0.0] * cfg.g_dim, "std": [1.0] * cfg.g_dim},
                         "c": {"mean": [0.0] * 4, "std": [1.0] * 4}, "f": {"mean": [0.0] * 4, "std": [1.0] * 4}})
    traj = torch.rand(2, cfg.traj_dim) * 2 - 1
    bev = torch.stack([bev_grid(make_bev(k), 16) for k in range(2)])
    out = sample_latents(models, stats, 2, "ddim", 3, 0, bev=bev, traj=traj, guidance=2.0, progress=False)
    assert torch.equal(out["traj"], traj)
    other = sample_latents(models, stats, 2, "ddim", 3, 0, bev=bev, traj=-traj, guidance=2.0, progress=False)
    assert not torch.allclose(out["g"], other["g"])          # g is sampled given the trajectory
    assert all(torch.isfinite(v).all() for v in out.values())
    # map guidance at psi_c only: g as unguided (scale 1), c as guided at every level up to there
    plain = sample_latents(models, stats, 2, "ddim", 3, 0, bev=bev, traj=traj, progress=False)
    only_c = sample_latents(models, stats, 2, "ddim", 3, 0, bev=bev, traj=traj, guidance=2.0, guidance_levels="c",
                            progress=False)
    assert torch.equal(only_c["g"], plain["g"]) and not torch.allclose(only_c["c"], plain["c"])
    g_only = sample_latents(models, stats, 2, "ddim", 3, 0, bev=bev, traj=traj, guidance=2.0, guidance_levels="g",
                            progress=False)
    assert torch.equal(g_only["g"], out["g"])
    with pytest.raises(ValueError, match="guidance_levels"):
        sample_latents(models, stats, 2, "ddim", 2, 0, bev=bev, guidance=2.0, guidance_levels="cx", progress=False)
    with pytest.raises(ValueError, match="traj must be"):
        sample_latents(models, stats, 2, "ddim", 2, 0, traj=torch.zeros(3, cfg.traj_dim), progress=False)
    # a known g: kept exactly, psi_c / psi_f sample given it (another g, another c)
    g = torch.randn(2, cfg.g_dim)
    known = sample_latents(models, stats, 2, "ddim", 3, 0, bev=bev, traj=traj, g=g, progress=False)
    assert torch.allclose(known["g"], g, atol=1e-6) and torch.equal(known["traj"], traj)
    again = sample_latents(models, stats, 2, "ddim", 3, 0, bev=bev, traj=traj, g=-g, progress=False)
    assert not torch.allclose(known["c"], again["c"])
    with pytest.raises(ValueError, match="needs the trajectory"):
        sample_latents(models, stats, 2, "ddim", 2, 0, g=g, progress=False)
    # a known g and c: both kept exactly, psi_f samples given them (another c, another f)
    c = torch.randn(2, *cfg.c_shape)
    kc = sample_latents(models, stats, 2, "ddim", 3, 0, bev=bev, traj=traj, g=g, c=c, progress=False)
    assert torch.allclose(kc["c"], c, atol=1e-5) and torch.allclose(kc["g"], g, atol=1e-6)
    kc2 = sample_latents(models, stats, 2, "ddim", 3, 0, bev=bev, traj=traj, g=g, c=-c, progress=False)
    assert not torch.allclose(kc["f"], kc2["f"])
    # SDEdit from a known c: psi_c runs from c noised to t0, neither keeping c nor starting from noise
    sd = {t0: sample_latents(models, stats, 2, "ddim", 4, 0, bev=bev, traj=traj, g=g, c=c, c_from=t0, progress=False)
          for t0 in (300, 1000)}      # DDIM 4 (trailing): steps 999, 749, 499, 249
    fresh = sample_latents(models, stats, 2, "ddim", 4, 0, bev=bev, traj=traj, g=g, progress=False)
    assert not torch.allclose(sd[300]["c"], c, atol=1e-3) and torch.allclose(sd[300]["g"], g, atol=1e-6)
    assert not torch.allclose(sd[300]["c"], fresh["c"], atol=1e-3)
    assert not torch.allclose(sd[300]["c"], sd[1000]["c"], atol=1e-3)
    with pytest.raises(ValueError, match="no sampling step at or below"):
        sample_latents(models, stats, 2, "ddim", 4, 0, bev=bev, traj=traj, g=g, c=c, c_from=100, progress=False)
    with pytest.raises(ValueError, match="c_from must be"):
        sample_latents(models, stats, 2, "ddim", 2, 0, bev=bev, traj=traj, g=g, c_from=500, progress=False)
    # a lower temperature at psi_c: its starting noise scaled, psi_g's samples untouched
    cool = sample_latents(models, stats, 2, "ddim", 3, 0, bev=bev, traj=traj, c_temperature=0.5, progress=False)
    assert torch.equal(cool["g"], plain["g"]) and not torch.allclose(cool["c"], plain["c"], atol=1e-3)
    assert torch.equal(sample_latents(models, stats, 2, "ddim", 3, 0, bev=bev, traj=traj, c_temperature=1.0,
                                      progress=False)["c"], plain["c"])
    starts = {}
    for tau in (1.0, 0.5):
        seen = []
        denoise(models["g"], 2, {}, bev, 1.0, "dpm", 3, torch.Generator().manual_seed(0), temperature=tau,
                on_step=lambda tt, xt, o: seen.append(xt.clone()))
        starts[tau] = seen[0]
    assert torch.allclose(starts[0.5], 0.5 * starts[1.0])
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature must be in"):
            denoise(models["g"], 2, {}, bev, 1.0, "dpm", 3, torch.Generator().manual_seed(0), temperature=bad)
    with pytest.raises(ValueError, match="a known c needs a known g"):
        sample_latents(models, stats, 2, "ddim", 2, 0, traj=traj, c=c, progress=False)
    with pytest.raises(ValueError, match="c must be"):
        sample_latents(models, stats, 2, "ddim", 2, 0, traj=traj, g=g, c=torch.zeros(2, 3, 2, 2, 2), progress=False)
    with pytest.raises(ValueError, match="g must be"):
        sample_latents(models, stats, 2, "ddim", 2, 0, traj=traj, g=torch.zeros(3, cfg.g_dim), progress=False)
    plain = {lv: LevelDiffusion(replace(m.cfg, bev=False)) for lv, m in models.items()}
    with pytest.raises(ValueError, match="not trained on maps"):
        sample_latents(plain, stats, 2, "ddim", 2, 0, bev=bev, progress=False)


def test_guide_model_autoguidance():
    from nfldm.ldm.data import LatentStats
    from nfldm.ldm.sample import sample_latents

    torch.manual_seed(0)
    models = {lv: LevelDiffusion(bev_cfg(lv)).eval() for lv in ("g", "c", "f")}
    for m in models.values():
        randomise_zero_init(m)
    weak = LevelDiffusion(bev_cfg("c")).eval()
    randomise_zero_init(weak)
    cfg = models["g"].cfg
    stats = LatentStats({"g": {"mean": [0.0] * cfg.g_dim, "std": [1.0] * cfg.g_dim},
                         "c": {"mean": [0.0] * 4, "std": [1.0] * 4}, "f": {"mean": [0.0] * 4, "std": [1.0] * 4}})
    kw = dict(progress=False)
    plain = sample_latents(models, stats, 2, "ddim", 3, 0, **kw)
    # scale 1: the level alone, bit for bit; another scale: D_weak + w (D - D_weak) moves c
    same = sample_latents(models, stats, 2, "ddim", 3, 0, guides={"c": weak}, guide_scale=1.0, **kw)
    assert torch.equal(plain["c"], same["c"])
    guided = sample_latents(models, stats, 2, "ddim", 3, 0, guides={"c": weak}, guide_scale=2.0, **kw)
    assert torch.equal(plain["g"], guided["g"]) and not torch.allclose(plain["c"], guided["c"])
    assert all(torch.isfinite(v).all() for v in guided.values())
    kind = "epsilon" if models["c"].cfg.prediction_type != "epsilon" else "sample"
    other = LevelDiffusion(replace(bev_cfg("c"), prediction_type=kind))
    with pytest.raises(ValueError, match="the guide of level c must denoise the same latents"):
        sample_latents(models, stats, 2, "ddim", 2, 0, guides={"c": other}, guide_scale=2.0, **kw)


def test_low_noise_hand_over():
    from nfldm.ldm.data import LatentStats
    from nfldm.ldm.sample import denoise, sample_latents

    torch.manual_seed(0)
    models = {lv: LevelDiffusion(bev_cfg(lv)).eval() for lv in ("g", "c", "f")}
    low = LevelDiffusion(replace(bev_cfg("c"), bev=False)).eval()      # an unconditional psi_c
    for m in (*models.values(), low):
        randomise_zero_init(m)
    cfg = models["g"].cfg
    stats = LatentStats({"g": {"mean": [0.0] * cfg.g_dim, "std": [1.0] * cfg.g_dim},
                         "c": {"mean": [0.0] * 4, "std": [1.0] * 4}, "f": {"mean": [0.0] * 4, "std": [1.0] * 4}})
    bev = torch.stack([bev_grid(make_bev(k), 16) for k in range(2)])
    kw = dict(bev=bev, guidance=2.0, guidance_levels="c", progress=False)
    plain = sample_latents(models, stats, 2, "ddim", 4, 0, **kw)
    # below t = 0 nothing is handed over: bit for bit the level alone
    none = sample_latents(models, stats, 2, "ddim", 4, 0, low_noise={"c": low}, low_below=0, **kw)
    assert torch.equal(plain["c"], none["c"]) and torch.equal(plain["f"], none["f"])
    half = sample_latents(models, stats, 2, "ddim", 4, 0, low_noise={"c": low}, low_below=500, **kw)
    assert torch.equal(plain["g"], half["g"]) and not torch.allclose(plain["c"], half["c"])
    assert all(torch.isfinite(v).all() for v in half.values())
    # which denoiser saw which step: the map's level at t >= 500 (its guided pair, a doubled batch), the
    # unconditional one below (one pass)
    seen = []
    for name, m in (("map", models["c"]), ("low", low)):
        m.predict = (lambda name, plain: lambda x_, t_, *a, **k: seen.append((name, int(t_.flatten()[0]), len(x_)))
                     or plain(x_, t_, *a, **k))(name, m.predict)
    gen = torch.Generator().manual_seed(0)
    sampled = {"g": half["g_n"], "traj": half["traj"]}
    denoise(models["c"], 2, models["c"].context(sampled), bev, 2.0, "ddim", 4, gen, low=(low, low.context(sampled), 500))
    assert [(n, b) for n, _, b in seen] == [("map", 4)] * 2 + [("low", 2)] * 2
    assert all(t >= 500 for n, t, _ in seen if n == "map") and all(t < 500 for n, t, _ in seen if n == "low")
    kind = "epsilon" if models["c"].cfg.prediction_type != "epsilon" else "sample"
    other = LevelDiffusion(replace(bev_cfg("c"), prediction_type=kind))
    with pytest.raises(ValueError, match="the low-noise level of level c must denoise the same latents"):
        sample_latents(models, stats, 2, "ddim", 2, 0, low_noise={"c": other}, low_below=500, progress=False)
    # a high-noise expert (train_t_from) samples only with its steps below that handed over
    high = dict(models, c=LevelDiffusion(replace(bev_cfg("c"), train_t_from=500)).eval())
    randomise_zero_init(high["c"])
    for below in (0, 250):
        with pytest.raises(ValueError, match="level c was trained at the timesteps t >= 500 only"):
            sample_latents(high, stats, 2, "ddim", 4, 0, low_noise={"c": low}, low_below=below, **kw)
    assert torch.isfinite(sample_latents(high, stats, 2, "ddim", 4, 0, low_noise={"c": low}, low_below=500, **kw)["c"]).all()


def test_own_c_needs_own_g(tmp_path):
    from nfldm.pipeline.generate import sample

    with pytest.raises(ValueError, match="own_c takes the scenes' c from the latent folder of own_g"):
        sample(None, num=1, out=tmp_path / "s", own_c=True)
    with pytest.raises(ValueError, match="own_c_from must be a timestep in 1..1000 with own_c"):
        sample(None, num=1, out=tmp_path / "s", own_c_from=500)


# ----------------------------------------------------------------------------------------
# map metrics


def test_wall_and_inside_iou():
    bounds = torch.tensor(BOUNDS)                       # z from -1 to 3 m
    bev = make_bev(0, res=16)
    grid = bev_grid(bev, 16)
    V = torch.zeros(4, 16, 16, 8)
    z = -1 + (torch.arange(8) + 0.5) * 0.5              # voxel centres
    band = (z >= 0.5) & (z <= 1.5)
    walls = grid[0] > 0
    V[0][walls] = torch.where(band, 5.0, 0.0)           # walls at mid height
    V[0][..., 1][grid[1] > 0.5] = 10.0                  # a floor under the room
    assert torch.equal(mid_height_occupancy(V, bounds), walls)
    assert wall_iou(V, bounds, grid) == 1.0
    assert inside_iou(V, bounds, grid) == 1.0
    empty = torch.zeros_like(V)
    assert wall_iou(empty, bounds, grid) == 0.0 and inside_iou(empty, bounds, grid) == 0.0
    # walls one cell off still count (2 x 2 pooling), a wall of another room mostly does not
    shifted = torch.zeros_like(V)
    shifted[0][walls.roll(1, 0)] = torch.where(band, 5.0, 0.0)
    assert wall_iou(shifted, bounds, grid) > 0.5
    other = bev_grid(make_bev(1, res=16), 16)
    assert wall_iou(V, bounds, other) < 0.9


# ----------------------------------------------------------------------------------------
# the map's look


def test_bev_grid_look_channels_edits_and_files(tmp_path):
    from nfldm.data.bev import GRID_CHANNELS, LOOK_CHANNELS, LOOK_KEYS, crop_bev, has_look

    bev = with_look(make_bev(1, res=32))
    grid = bev_grid(bev, 16, look=True)
    assert grid.shape == (GRID_CHANNELS + LOOK_CHANNELS, 16, 16) and torch.isfinite(grid).all()
    assert torch.equal(grid[:4], bev_grid(bev, 16))                 # the geometry as without the look
    assert torch.isclose(grid[4, 5, 5], torch.tensor(0.6)) and grid[4, 0, 0] == 0      # light inside only
    # the wall colour is the walls' own (not diluted by the cell's floor part), 0 where no wall
    assert torch.isclose(grid[11, 1, 5], torch.tensor(float(np.nanmax(bev["wall_r"])))) and grid[11, 5, 5] == 0
    assert (grid[14] == 1).all()
    # a map without a look (a drawn floor plan): the look's channels and its presence all 0
    plain = bev_grid(make_bev(1, res=32), 16, look=True)
    assert torch.equal(plain[:4], grid[:4]) and (plain[4:] == 0).all()
    # files keep the look; a partial look is refused naming the file
    write_bev(tmp_path / "bev.npz", bev)
    back = read_bev_file(tmp_path / "bev.npz")
    assert has_look(back) and all(np.array_equal(back[k], bev[k], equal_nan=True) for k in LOOK_KEYS)
    (tmp_path / "partial.npz").write_bytes(bev_bytes({k: v for k, v in bev.items() if k != "wall_g"}))
    with pytest.raises(DataError, match="partial.npz: the map's look is incomplete \\(wall_g missing"):
        read_bev_file(tmp_path / "partial.npz")
    # edits: erased walls lose their colour, the new floor takes the map's median look; a pillar's
    # inside leaves the map, its walls take the median wall colour; a crop keeps the look
    b = bev["bounds_xy"]
    cell = (b[1, 0] - b[0, 0]) / 32
    x_wall = b[0, 0] + 3.5 * cell
    erased = erase_box(bev, (x_wall - 0.1, -1.0, x_wall + 0.1, 1.0))
    assert erased["wall"][3, 16] == 0 and np.isnan(erased["wall_r"][3, 16])
    assert np.isfinite(erased["light"][3, 16])
    pillar = add_wall_box(bev, (-1.0, -1.0, 1.0, 1.0))
    assert np.isnan(pillar["light"][16, 16])
    ring = (pillar["wall"] > 0) & (bev["wall"] == 0)
    assert ring.any() and np.isfinite(pillar["wall_r"][ring]).all()
    assert has_look(crop_bev(bev, [-4.0, -4.0, 4.0, 4.0]))


def test_look_levels_drop_the_look_and_widen_from_a_level_without_it(tmp_path):
    """A bev_look level reads 15 channels (the look's appended last, so a level trained without it
    starts as exactly that level: its outputs are unchanged on any map); it drops the look alone
    in training; a level without it reads the geometry of a 15-channel map; a 4-channel map is
    refused by a look level with a hint."""
    from nfldm.ldm.train import init_level_from

    cfg0 = bev_cfg("c")
    torch.manual_seed(0)
    base = LevelDiffusion(cfg0)
    randomise_zero_init(base)
    run = tmp_path / "run"
    (run / "c").mkdir(parents=True)
    from safetensors.torch import save_file

    from nfldm.ldm.config import run_model_config
    from nfldm.utils.io import atomic_write_json
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(run / "c" / "model.safetensors"))
    atomic_write_json(run / "c" / "config.json", {"stage": "ldm", "level": "c", "model": run_model_config(cfg0)})
    cfg = replace(cfg0, bev_look=True)
    model = LevelDiffusion(cfg)
    rec = init_level_from(model, run, None)
    assert set(rec["widened"]) == {"bev.stem.0.weight", "net.unet.conv_in.weight",
                                   "net.unet.class_embedding.linear_1.weight"} and not rec["fresh"]
    B = 2
    batch = batch_for(cfg0, B)
    look = torch.stack([bev_grid(with_look(make_bev(k), seed=k), cfg.bev_size, look=True) for k in range(B)])
    x = torch.randn(model.sample_shape(B))
    t = torch.tensor(300)
    ctx = model.context(batch)
    with torch.no_grad():
        before = guided_prediction(base, x, t, ctx, batch["bev"], 1.0)
        assert torch.allclose(guided_prediction(base, x, t, ctx, look, 1.0), before)        # geometry only
        assert torch.allclose(guided_prediction(model, x, t, ctx, look, 1.0), before, atol=1e-5)
    with pytest.raises(ValueError, match="reads the map's look"):
        model.condition(batch["bev"], B)
    # the map's mean look joins the global vector (FiLM): light 0.6 everywhere inside, presence 1;
    # all zero for a dropped map
    _, maps = model.condition(look, B)
    mean = model.mean_look(maps)
    assert mean.shape == (B, 11) and torch.allclose(mean[:, 0], torch.tensor(0.6), atol=1e-5) and (mean[:, 10] == 1).all()
    _, dropped = model.condition(look, B, drop=torch.tensor([True, True]))
    assert (model.mean_look(dropped) == 0).all()
    assert model.global_vector({**ctx, "bev_maps": maps}).shape == (B, cfg.context_dim)
    # once the look's weights are trained (here: random) the look matters; dropped alone (bev_look_drop
    # 1) the loss is that of the map without its look
    with torch.no_grad():
        model.bev.stem[0].weight[:, 4:].normal_(0, 0.5)
        model.net.unet.conv_in.weight[:, -(cfg.bev_map_total - cfg0.bev_map_total):].normal_(0, 0.5)
    no_look = torch.cat([look[:, :4], torch.zeros_like(look[:, 4:])], 1)
    # guidance on the look alone: u_l + s (p - u_l), u_l given the map without its look; the model
    # encodes each of the two maps once over the steps (its cache keeps both)
    model.eval()
    with torch.no_grad():
        p = guided_prediction(model, x, t, ctx, look, 2.0)
        u = guided_prediction(model, x, t, ctx, no_look, 2.0)
        assert not torch.allclose(p, u)
        assert torch.allclose(guided_prediction(model, x, t, ctx, look, 2.0, look_guidance=3.0), u + 3.0 * (p - u), atol=1e-5)
        # ... computed in one tripled batch (null map, map without its look, map), not four passes
        calls, plain = [], model.predict
        model.predict = lambda x_, *a, **k: calls.append(len(x_)) or plain(x_, *a, **k)
        guided_prediction(model, x, t, ctx, look, 2.0, look_guidance=3.0)
        del model.predict
        assert calls == [3 * B]
        assert torch.equal(guided_prediction(model, x, t, ctx, look, 2.0, look_guidance=1.0), p)
        assert torch.equal(guided_prediction(base, x, t, ctx, look, 1.0, look_guidance=3.0),
                           guided_prediction(base, x, t, ctx, look, 1.0))          # a level without the look
        assert model.without_look(look) is model.without_look(look) and len(model._bev_cache) == 2
        # look guidance in an interval (look_from): the steps at t >= look_from are those of full look
        # guidance, the later ones differ; past every step it is no look guidance at all
        from nfldm.ldm.sample import denoise

        def run(lg, frm):
            seen = []
            x = denoise(model, B, ctx, look, 1.0, "dpm", 4, torch.Generator().manual_seed(3), look_guidance=lg,
                        look_from=frm, on_step=lambda t, x_t, out: seen.append((int(t), out.clone())))
            return x, seen
        (full, s_full), (part, s_part), (none, _), (never, _) = run(3.0, 0), run(3.0, 500), run(1.0, 0), run(3.0, 1000)
        assert torch.equal(never, none) and not torch.equal(full, none) and not torch.equal(part, full)
        assert all(torch.equal(a, b) == (t >= 500) for (t, a), (_, b) in zip(s_full, s_part))
        assert {t >= 500 for t, _ in s_full} == {True, False}
    model.train()
    losses = {}
    for p in (0.0, 1.0):
        m = LevelDiffusion(replace(cfg, bev_look_drop=p, cond_drop_prob=0.0))
        m.load_state_dict(model.state_dict())
        for name, bev in (("look", look), ("none", no_look)):
            torch.manual_seed(1)
            losses[p, name] = m.training_loss({**batch, "bev": bev}, 0)[0]
    assert not torch.isclose(losses[0.0, "look"], losses[0.0, "none"])
    assert torch.isclose(losses[1.0, "look"], losses[1.0, "none"])


def test_scene_look_is_a_global_latent_psi_g_samples_and_psi_c_follows(tmp_path):
    """scene_look: the map's overall look (10 numbers) joins psi_g's [g, traj] and psi_c's global
    vector; psi_c drops it in training (scene_look_drop) and look guidance amplifies it; a psi_c
    widened from a level without it starts as exactly that level; sampling returns the look."""
    from nfldm.data.bev import SCENE_LOOK_DIM, scene_look
    from nfldm.ldm.sample import sample_latents
    from nfldm.ldm.data import LatentStats
    from nfldm.ldm.train import init_level_from

    B = 3
    maps = torch.stack([bev_grid(with_look(make_bev(k), light=0.2 + 0.2 * k, seed=k), 16, look=True) for k in range(B)])
    look = scene_look(maps)
    assert look.shape == (B, SCENE_LOOK_DIM) and torch.allclose(look[:, 0], torch.tensor([0.2, 0.4, 0.6]), atol=1e-5)
    assert (scene_look(bev_grid(make_bev(0), 16, look=True)[None]) == 0).all()      # a map without a look
    stats = dict(look_mean=tuple(look.mean(0).tolist()), look_std=tuple(look.std(0).clamp(min=1e-3).tolist()))
    base = preset("smoke")
    gcfg = replace(base.g.model, scene_look=True, **stats)
    ccfg0 = replace(base.c.model, g_with_traj=True)
    ccfg = replace(ccfg0, scene_look=True, **stats)
    with pytest.raises(ValueError, match="look_mean / look_std need 10"):
        replace(ccfg, look_mean=(0.0,))
    torch.manual_seed(0)
    gm, c0 = LevelDiffusion(gcfg), LevelDiffusion(ccfg0)
    randomise_zero_init(gm)
    randomise_zero_init(c0)
    batch = {**batch_for(gcfg, B), "look": look}
    # psi_g generates [g, traj, look_n]
    assert gm.sample_shape(B) == (B, gcfg.g_dim + gcfg.traj_dim + SCENE_LOOK_DIM)
    tgt = gm.target(batch)
    assert torch.allclose(tgt[:, -SCENE_LOOK_DIM:], gm.normalise_look(look)) and torch.allclose(
        gm.denormalise_look(tgt[:, -SCENE_LOOK_DIM:]), look, atol=1e-5)
    assert torch.isfinite(gm.training_loss(batch, 0)[0])
    with pytest.raises(ValueError, match="carry none"):
        gm.training_loss({k: v for k, v in batch.items() if k != "look"}, 0)
    # psi_c widened from a level without the look: the same model until its look weights train
    run = tmp_path / "run"
    (run / "c").mkdir(parents=True)
    from safetensors.torch import save_file

    from nfldm.ldm.config import run_model_config
    from nfldm.utils.io import atomic_write_json
    save_file({k: v.contiguous() for k, v in c0.state_dict().items()}, str(run / "c" / "model.safetensors"))
    atomic_write_json(run / "c" / "config.json", {"stage": "ldm", "level": "c", "model": run_model_config(ccfg0)})
    cm = LevelDiffusion(ccfg)
    rec = init_level_from(cm, run, None)
    assert rec["widened"] == ["net.unet.class_embedding.linear_1.weight"] and not rec["fresh"]
    x, t = torch.randn(cm.sample_shape(B)), torch.tensor(500)
    ctx = cm.context(batch)
    assert torch.allclose(ctx["look"], cm.normalise_look(look))
    assert cm.global_vector(ctx).shape == (B, ccfg.context_dim) == (B, ccfg0.context_dim + SCENE_LOOK_DIM)
    cm.eval()
    c0.eval()
    with torch.no_grad():
        assert torch.allclose(guided_prediction(cm, x, t, ctx, None), guided_prediction(c0, x, t, c0.context(batch), None),
                              atol=1e-5)
        cm.net.unet.class_embedding.linear_1.weight[:, -SCENE_LOOK_DIM:].normal_(0, 0.5)
        p = guided_prediction(cm, x, t, ctx, None)
        no = {k: v for k, v in ctx.items() if k != "look"}
        u = guided_prediction(cm, x, t, no, None)
        assert not torch.allclose(p, u)
        # a dropped look is the missing one (look_keep 0); look guidance: u + s (p - u)
        assert torch.allclose(guided_prediction(cm, x, t, {**ctx, "look_keep": torch.zeros(B)}, None), u, atol=1e-6)
        assert torch.allclose(guided_prediction(cm, x, t, ctx, None, look_guidance=3.0), u + 3.0 * (p - u), atol=1e-5)
    cm.train()
    losses = {}
    for drop in (0.0, 1.0):
        m = LevelDiffusion(replace(ccfg, scene_look_drop=drop))
        m.load_state_dict(cm.state_dict())
        for name, lk in (("look", look), ("other", look.flip(0))):
            torch.manual_seed(1)
            losses[drop, name] = m.training_loss({**batch, "look": lk}, 0)[0]
    assert not torch.isclose(losses[0.0, "look"], losses[0.0, "other"])
    assert torch.isclose(losses[1.0, "look"], losses[1.0, "other"])
    # sampling: psi_g's look reaches psi_c, and comes back raw; a known trajectory stays known
    cm.eval()
    st = LatentStats({"g": {"mean": [0.0] * gcfg.g_dim, "std": [1.0] * gcfg.g_dim},
                      "c": {"mean": [0.0] * gcfg.c_shape[0], "std": [1.0] * gcfg.c_shape[0]}})
    traj = batch["traj"]
    out = sample_latents({"g": gm, "c": cm}, st, B, sampler="ddim", steps=3, progress=False, traj=traj,
                         look_guidance=2.0)
    assert out["look"].shape == (B, SCENE_LOOK_DIM) and torch.allclose(out["look"], gm.denormalise_look(out["look_n"]))
    assert torch.allclose(out["traj"], traj, atol=1e-5) and torch.isfinite(out["c"]).all()
    own = sample_latents({"g": gm, "c": cm}, st, B, sampler="ddim", steps=3, progress=False, traj=traj,
                         g=torch.zeros(gcfg.g_dim))
    assert "look" not in own                      # psi_g not run: psi_c samples without the look
    # a known look (a scene's own): psi_g samples g given it, psi_c is given it
    given = sample_latents({"g": gm, "c": cm}, st, B, sampler="ddim", steps=3, progress=False, traj=traj, look=look)
    assert torch.allclose(given["look"], look, atol=1e-5) and torch.allclose(given["traj"], traj, atol=1e-5)
    given = sample_latents({"g": gm, "c": cm}, st, B, sampler="ddim", steps=3, progress=False, traj=traj,
                           g=torch.zeros(gcfg.g_dim), look=look[0])
    assert torch.allclose(given["look"], look[:1].expand(B, -1), atol=1e-5)
    with pytest.raises(ValueError, match="look must be 10"):
        sample_latents({"g": gm, "c": cm}, st, B, steps=2, progress=False, look=look[:, :3])
