"""Stage 2 (latent auto-encoder): model behaviour, the voxel / latent folders and the CLI."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from data_fixtures import SCENES, make_dataset, random_V
from safetensors import safe_open

from nfldm.camera import dihedral_matrix, transform_poses
from nfldm.cli import main
from nfldm.latent_ae.config import LatentAEConfig, config_from_dict, preset
from nfldm.latent_ae.load import load_latent_ae
from nfldm.latent_ae.model import LatentAutoEncoder, c_roughness, codebook_usage, fold, unfold
from nfldm.scene_ae.voxels import dihedral_voxels, load_voxels, read_voxel_index

STATS = {"sigma_scale": 0.1, "feature_rms": [0.5] * 8}


def smoke_cfg(**kw):
    return replace(preset("smoke").model, **kw)


# ----------------------------------------------------------------------------------------
# model


def test_shapes_of_latents_and_reconstruction():
    cfg = smoke_cfg()
    model = LatentAutoEncoder(cfg, STATS)
    V = random_V(cfg=cfg)
    out = model(V)
    X, Y, Z = cfg.grid
    Zc = Z // cfg.c_z_down
    assert out["g"].shape == (2, cfg.g_dim) and out["g_mu"].shape == out["g_logvar"].shape == (2, cfg.g_dim)
    assert out["c"].shape == out["c_q"].shape == (2, cfg.c_channels, X // 4, Y // 4, Zc)
    assert out["f"].shape == out["f_q"].shape == (2, cfg.f_channels, X, Y)
    assert out["c_indices"].shape == (2, X // 4, Y // 4, Zc) and out["f_indices"].shape == (2, X, Y)
    assert out["V_hat"].shape == V.shape
    assert model.latent_shapes == {"g": (cfg.g_dim,), "c": tuple(out["c"].shape[1:]),
                                   "f": tuple(out["f"].shape[1:])}
    # the paper preset's sizes: c 4 x 32 x 32 x 16, f 4 x 128 x 128, g 128
    paper = LatentAutoEncoder(preset("paper").model)
    assert paper.latent_shapes == {"g": (128,), "c": (4, 32, 32, 16), "f": (4, 128, 128)}


def test_fold_unfold_round_trip():
    V = torch.randn(2, 3, 4, 5, 6)
    x = fold(V)
    assert x.shape == (2, 18, 4, 5)
    assert torch.equal(x[:, 1 * 6 + 2], V[:, 1, :, :, 2])       # channel k * Z + z
    assert torch.equal(unfold(x, 3), V)


def test_gradients_reach_all_three_encoders():
    """The decoder's output conv and the g-modulations start at zero (so a fresh model
    predicts empty space): after two updates every encoder gets gradient."""
    torch.manual_seed(0)
    cfg = smoke_cfg()
    model = LatentAutoEncoder(cfg, STATS)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    V = random_V(cfg=cfg)
    for _ in range(3):
        opt.zero_grad()
        loss, metrics = model.training_loss({"V": V}, 0)
        assert torch.isfinite(loss) and all(math.isfinite(float(v)) for v in metrics.values())
        loss.backward()
        grads = {name: float(p.grad.abs().sum()) if p.grad is not None else 0.0
                 for name, p in model.named_parameters()}
        opt.step()
    for enc in ("g_encoder", "c_encoder", "f_encoder"):
        first = next(n for n in grads if n.startswith(enc))
        assert grads[first] > 0, first


def test_latent_skip_and_mlp_head_start_empty_and_learn():
    """The presets' linear latent skip (encoder: a 1 x 1 code of the columns; decoder: f_q and
    c_q straight to the columns) and the optional per-voxel MLP head: a fresh model still
    predicts empty V, the skip and head weights get gradient, and a few updates lower the loss."""
    torch.manual_seed(0)
    for head in ("linear", "mlp"):
        cfg = replace(smoke_cfg(), latent_skip=True, out_head=head)
        model = LatentAutoEncoder(cfg, STATS)
        V = random_V(cfg=cfg)
        with torch.no_grad():
            assert (model(V)["Vn_hat"] == 0).all()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(6):
            opt.zero_grad()
            loss, _ = model.training_loss({"V": V}, 0)
            loss.backward()
            grads = {n: float(p.grad.abs().sum()) for n, p in model.named_parameters() if p.grad is not None}
            opt.step()
            losses.append(float(loss))
        names = ["f_encoder.skip.weight", "c_encoder.skip.1.weight", "decoder.skip.f.weight", "decoder.skip.c.weight"]
        if head == "mlp":
            names += ["decoder.head_proj.weight", "decoder.head_mlp.2.weight"]
        for name in names:
            assert grads.get(name, 0.0) > 0, (head, name)
        assert losses[-1] < losses[0]


def test_mlp_head_is_per_voxel():
    """out_head="mlp": the value of voxel (x, y, z) is the linear map's plus MLP(head features
    of height z of column (x, y)), in the fold layout (channel k * Z + z)."""
    torch.manual_seed(0)
    cfg = replace(smoke_cfg(), out_head="mlp")
    dec = LatentAutoEncoder(cfg, STATS).decoder
    with torch.no_grad():
        for p in dec.head_mlp.parameters():
            p.normal_()
        a = torch.randn(1, cfg.dec_channels, 5, 6)
        extra = unfold(dec._head(a) - dec.out(a), cfg.channels)  # 1 x K x 5 x 6 x Z
        x, y, z = 3, 2, cfg.grid[2] - 1
        e = torch.nn.functional.silu(dec.head_proj(a).view(1, cfg.head_channels, cfg.grid[2], 5, 6)[:, :, z, x, y])
        want = dec.head_mlp(e[:, :, None, None, None])[0, :, 0, 0, 0]
    torch.testing.assert_close(extra[0, :, x, y, z], want)
    with pytest.raises(ValueError, match="out_head"):
        LatentAEConfig(out_head="conv")


def test_normalise_denormalise_round_trip():
    cfg = smoke_cfg()
    model = LatentAutoEncoder(cfg, STATS)
    V = random_V(cfg=cfg)
    Vn = model.normalise(V)
    assert torch.allclose(model.denormalise(Vn), V, rtol=1e-5, atol=1e-6)
    empty = V[:, :1] == 0
    assert bool((Vn[:, :1][empty] == 0).all())                    # empty stays exactly 0
    assert bool((Vn[:, 1:] == 0)[empty.expand_as(Vn[:, 1:])].all())
    assert torch.allclose(Vn[:, :1], torch.log1p(V[:, :1] / 0.1))
    assert torch.allclose(Vn[:, 1:], V[:, 1:] / 0.5)
    neg = model.denormalise(-torch.ones_like(Vn))                 # decoded densities stay >= 0
    assert bool((neg[:, 0] == 0).all())


def test_loss_weighting_balances_occupied_and_empty():
    cfg = smoke_cfg(dilate=1, occupied_share=0.5)
    model = LatentAutoEncoder(cfg, STATS)
    X, Y, Z = cfg.grid
    V = torch.zeros(2, cfg.channels, X, Y, Z)
    V[0, 0, 5, 5, 4] = 10.0            # one occupied voxel (27 after dilation)
    V[0, 0, 9, 9, 2] = 0.2             # below occupied_sigma: empty
    w = model.voxel_weights(V)
    assert torch.allclose(w.sum(dim=(1, 2, 3, 4)), torch.ones(2))
    occ = model.occupancy(V)
    assert int(occ[0].sum()) == 27 and int(occ[1].sum()) == 0
    assert torch.isclose(w[0][occ[0]].sum(), torch.tensor(0.5))
    assert torch.isclose(w[0, 0, 5, 5, 4], torch.tensor(0.5 / 27))
    assert torch.isclose(w[0, 0, 0, 0, 0], torch.tensor(0.5 / (X * Y * Z - 27)))
    # a scene without occupied voxels gives all the weight to its empty voxels
    assert torch.allclose(w[1], torch.full_like(w[1], 1 / (X * Y * Z)))
    # so one occupied voxel reconstructed wrong costs as much as all empty voxels wrong
    err_occ = torch.zeros_like(w[0])
    err_occ[occ[0]] = 1.0
    assert torch.isclose((w[0] * err_occ).sum(), (w[0] * (1 - err_occ)).sum())


def test_c_roughness_and_its_loss():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 4, 8, 8, 6, generator=g)
    assert abs(float(c_roughness(noise)) - 1.0) < 0.1           # white noise: about 1
    x = torch.linspace(0, 1, 8)
    ramp = (x[:, None, None] + x[None, :, None] + x[None, None, :6]).expand(2, 4, 8, 8, 6)
    assert float(c_roughness(ramp)) < 0.05                        # smooth: near 0
    assert torch.isclose(c_roughness(7 * noise), c_roughness(noise))   # scale-free
    # the loss adds w_c_smooth x roughness (same weights, same draw), and is logged either way
    cfg0, cfg1 = smoke_cfg(), smoke_cfg(w_c_smooth=0.5)
    m0, m1 = LatentAutoEncoder(cfg0, STATS), LatentAutoEncoder(cfg1, STATS)
    m1.load_state_dict(m0.state_dict())
    V = random_V(cfg=cfg0)
    torch.manual_seed(1)
    l0, met0 = m0.losses({"V": V})
    torch.manual_seed(1)
    l1, met1 = m1.losses({"V": V})
    assert torch.isclose(met0["c_roughness"], met1["c_roughness"])
    assert torch.isclose(l1 - l0, 0.5 * met1["c_roughness"], atol=1e-5)
    # a gradient step on the penalty alone makes c smoother
    opt = torch.optim.SGD(m1.c_encoder.parameters(), lr=0.5)
    before = c_roughness(m1.encode(V)["c"])
    before.backward()
    opt.step()
    assert c_roughness(m1.encode(V)["c"]) < before


def test_fsq_switch():
    torch.manual_seed(0)
    cfg = smoke_cfg(quantizer="fsq", fsq_levels=(8, 5, 5, 5))
    model = LatentAutoEncoder(cfg, STATS)
    assert model.c_quantizer.codebook_size == model.f_quantizer.codebook_size == 1000
    V = random_V(cfg=cfg)
    out = model(V)
    for k in ("c", "f"):
        idx = out[f"{k}_indices"]
        assert idx.min() >= 0 and idx.max() < 1000
        # FSQ codes: per channel a level of {-1, ..., 1} (L levels, L // 2 per side)
        half = torch.tensor([4.0, 2, 2, 2]).view(1, 4, *[1] * (out[f"{k}_q"].dim() - 2))
        scaled = out[f"{k}_q"] * half
        assert torch.allclose(scaled, scaled.round(), atol=1e-5)
    assert float(out["commit"]) == 0.0
    loss, _ = model.training_loss({"V": V}, 0)
    loss.backward()                                               # straight-through gradients
    assert model.decoder.out.weight.grad.abs().sum() > 0


def test_vq_codebook_init_and_usage_reporting():
    torch.manual_seed(0)
    u = codebook_usage(torch.tensor([5, 5, 5, 5, 0, 0, 0, 0]))
    assert u["used"] == 4 and u["used_fraction"] == 0.5 and math.isclose(u["perplexity"], 4.0)
    u = codebook_usage(torch.tensor([10, 0, 0, 0]))
    assert math.isclose(u["perplexity"], 1.0) and u["used_fraction"] == 0.25

    cfg = smoke_cfg(codebook_size=16)
    model = LatentAutoEncoder(cfg, STATS)
    assert not bool(model.c_quantizer.q._codebook.initted)
    model.train()
    model(random_V(cfg=cfg))                                      # k-means init on the first batch
    assert bool(model.c_quantizer.q._codebook.initted) and bool(model.f_quantizer.q._codebook.initted)
    model.eval()
    out = model(random_V(cfg=cfg, seed=1))
    counts = torch.bincount(out["f_indices"].flatten(), minlength=16)
    usage = codebook_usage(counts)
    assert usage["codebook_size"] == 16 and usage["used"] >= 2
    assert 1.0 <= usage["perplexity"] <= usage["used"] + 1e-9


def test_decode_latents_snaps_pre_quantisation_latents():
    """What stage 3 gets (pre-quantisation c, f and g = mu) decodes to the LAE's own
    reconstruction: the quantiser is part of decoding."""
    torch.manual_seed(0)
    cfg = smoke_cfg()
    model = LatentAutoEncoder(cfg, STATS)
    V = random_V(cfg=cfg)
    model.train()
    model(V)                                                      # initialise the codebooks
    model.eval()
    with torch.no_grad():
        enc = model.encode(V)
        out = model(V)
        V_dec = model.decode_latents(enc["g_mu"], enc["c"], enc["f"])
        # a small perturbation of the latents snaps back to the same codes almost everywhere
        q0 = model.quantize(enc["c"], enc["f"])
        q1 = model.quantize(enc["c"] + 1e-4 * torch.randn_like(enc["c"]), enc["f"])
    assert torch.allclose(V_dec, out["V_hat"], atol=1e-5)
    assert (q0["c_indices"] == q1["c_indices"]).float().mean() > 0.95


def test_config_round_trip_and_validation():
    cfg = preset("tiny").model
    from dataclasses import asdict

    assert config_from_dict(json.loads(json.dumps(asdict(cfg)))) == cfg
    with pytest.raises(ValueError, match="unknown latent-ae config keys"):
        config_from_dict({"nope": 1})
    with pytest.raises(ValueError, match="divisible"):
        LatentAutoEncoder(smoke_cfg(c_z_down=3))
    with pytest.raises(ValueError, match="quantizer"):
        LatentAutoEncoder(smoke_cfg(quantizer="lfq"))


# ----------------------------------------------------------------------------------------
# CLI end to end on the synthetic dataset


SAE_SETS = ["--set", "num_input_views=2", "--set", "num_novel_views=1"]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """The 3-scene synthetic dataset, a smoke scene-ae trained 2 steps, and its voxel folder."""
    root = tmp_path_factory.mktemp("lae")
    data = root / "data"
    make_dataset(data)
    sae = root / "sae"
    assert main(["train", "scene-ae", "--data", str(data), "--out", str(sae), "--preset", "smoke",
                 "--quiet", "--steps", "2", *SAE_SETS]) == 0
    vox = root / "vox"
    assert main(["encode-voxels", "--scene-ae", str(sae), "--data", str(data), "--out", str(vox),
                 "--quiet"]) == 0
    return {"root": root, "data": data, "sae": sae, "vox": vox}


def test_encode_voxels_writes_and_resumes(stage1, capsys):
    vox = stage1["vox"]
    index = json.loads((vox / "index.json").read_text())
    assert [s["name"] for s in index["scenes"]] == [n for n, _, _ in SCENES]
    assert index["grid"] == [16, 16, 8] and index["channels"] == 9
    assert index["stats"]["split"] == "train" and len(index["stats"]["feature_rms"]) == 8
    assert index["scene_ae"]["run"] == str(stage1["sae"].resolve())
    with safe_open(str(vox / "scene_0000.safetensors"), framework="pt") as f:
        assert f.get_tensor("V").dtype == torch.float16 and f.get_tensor("V").shape == (9, 16, 16, 8)
        assert f.get_tensor("c2w").shape == (4, 4, 4) and f.get_tensor("input_ids").tolist() == [0, 3]
    mtimes = {p.name: p.stat().st_mtime_ns for p in vox.glob("*.safetensors")}
    capsys.readouterr()
    assert main(["encode-voxels", "--scene-ae", str(stage1["sae"]), "--data", str(stage1["data"]),
                 "--out", str(vox), "--quiet"]) == 0
    assert "0 encoded, 3 already there" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in vox.glob("*.safetensors")} == mtimes


def test_train_resume_eval_encode_latents_cli(stage1, tmp_path):
    vox, run = stage1["vox"], tmp_path / "lae"
    common = ["train", "latent-ae", "--voxels", str(vox), "--out", str(run), "--preset", "smoke", "--quiet"]
    assert main([*common, "--steps", "2"]) == 0
    assert main([*common, "--steps", "4", "--resume"]) == 0
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4]
    assert all(math.isfinite(v) for x in lines for v in x.values())
    rc = json.loads((run / "config.json").read_text())
    assert rc["stage"] == "latent-ae" and rc["scene_ae"]["run"] == str(stage1["sae"].resolve())
    # exact resume: codebooks (EMA buffers, k-means state) included
    straight = tmp_path / "lae_straight"
    assert main(["train", "latent-ae", "--voxels", str(vox), "--out", str(straight), "--preset", "smoke",
                 "--quiet", "--steps", "4"]) == 0
    with safe_open(str(run / "model.safetensors"), framework="pt") as a, \
            safe_open(str(straight / "model.safetensors"), framework="pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        assert any("codebook" in k for k in a.keys())
        for k in a.keys():
            assert torch.equal(a.get_tensor(k), b.get_tensor(k)), k

    out = tmp_path / "metrics.json"
    assert main(["eval", "latent-ae", "--run", str(run), "--scene-ae", str(stage1["sae"]), "--voxels", str(vox),
                 "--split", "test", "--out", str(out), "--quiet"]) == 0
    res = json.loads(out.read_text())
    assert res["num_scenes"] == 1 and res["num_held_out_views"] == 2
    for group in ("voxel", "render"):
        assert all(math.isfinite(v) for v in res[group].values()), res[group]
    assert math.isclose(res["render"]["psnr_cost_db"],
                        res["render"]["psnr_original_V"] - res["render"]["psnr_decoded_V"])
    r = res["render"]    # LPIPS (AlexNet) of both renders, their difference and their distance
    assert 0 < r["lpips_original_V"] < 2 and 0 < r["lpips_decoded_V"] < 2 and r["lpips_decoded_vs_original_V"] >= 0
    assert math.isclose(r["lpips_cost"], r["lpips_decoded_V"] - r["lpips_original_V"])
    for k in ("c", "f"):
        assert res["codebook"][k]["codebook_size"] == 32 and 0 < res["codebook"][k]["used_fraction"] <= 1
    assert (tmp_path / "metrics_views.png").stat().st_size > 0

    lat = tmp_path / "lat"
    assert main(["encode-latents", "--run", str(run), "--voxels", str(vox), "--out", str(lat), "--quiet"]) == 0
    index = json.loads((lat / "index.json").read_text())
    assert index["shapes"] == {"g": [16], "c": [4, 4, 4, 4], "f": [4, 16, 16]}
    assert index["pre_quantisation"] and [s["split"] for s in index["scenes"]] == ["train", "train", "test"]
    assert len(index["stats"]["c"]["mean"]) == 4 and len(index["stats"]["g"]["std"]) == 16
    with safe_open(str(lat / "scene_0002.safetensors"), framework="pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
    assert t["g"].shape == (16,) and t["c"].shape == (4, 4, 4, 4) and t["f"].shape == (4, 16, 16)
    assert t["c2w"].shape == (4, 4, 4) and t["intrinsics"].shape == (4, 4) and t["bounds"].shape == (2, 3)
    # second run skips every scene
    before = {p.name: p.stat().st_mtime_ns for p in lat.glob("*.safetensors")}
    assert main(["encode-latents", "--run", str(run), "--voxels", str(vox), "--out", str(lat), "--quiet"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in lat.glob("*.safetensors")} == before

    # --augment 8: every train scene 8 times (turned and mirrored, encoded again), test once
    aug = tmp_path / "lat_aug"
    assert main(["encode-latents", "--run", str(run), "--voxels", str(vox), "--out", str(aug), "--quiet",
                 "--augment", "8"]) == 0
    aindex = json.loads((aug / "index.json").read_text())
    assert aindex["augment"] == 8 and len(aindex["scenes"]) == 2 * 8 + 1
    assert [s["name"] for s in aindex["scenes"] if s["split"] == "test"] == ["scene_0002"]
    entry = next(s for s in aindex["scenes"] if s["name"] == "scene_0001_d3m")
    assert entry["source"] == "scene_0001" and entry["dihedral"] == [3, True]
    lae = load_latent_ae(run, "cpu").eval()
    vindex = read_voxel_index(vox)
    src = load_voxels(vox, "scene_0001", vindex)
    with safe_open(str(aug / "scene_0001_d3m.safetensors"), framework="pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
    assert torch.allclose(t["c2w"], transform_poses(src["c2w"], dihedral_matrix(3, True)))
    with torch.no_grad():
        enc = lae.encode(dihedral_voxels(src["V"], 3, True)[None])
    assert torch.allclose(t["g"], enc["g_mu"][0], atol=1e-5) and torch.allclose(t["c"], enc["c"][0], atol=1e-5)
    assert not torch.allclose(t["c"], lae.encode(src["V"][None])["c"][0].detach(), atol=1e-3)
    # the original scenes' latents are those of the plain folder; statistics cover all 16
    with safe_open(str(lat / "scene_0001.safetensors"), framework="pt") as a, \
            safe_open(str(aug / "scene_0001.safetensors"), framework="pt") as b:
        assert torch.equal(a.get_tensor("c"), b.get_tensor("c"))
    assert aindex["stats"]["num_scenes"] == 16
    # --stats-from: the copy standardises as the plain folder does (its levels combine with them)
    kept = tmp_path / "lat_aug_kept"
    assert main(["encode-latents", "--run", str(run), "--voxels", str(vox), "--out", str(kept), "--quiet",
                 "--augment", "4", "--stats-from", str(lat)]) == 0
    kindex = json.loads((kept / "index.json").read_text())
    assert kindex["stats"] == index["stats"] and len(kindex["scenes"]) == 2 * 4 + 1
    assert kindex["stats_from"] == str(lat.resolve())


def test_image_loss_through_frozen_renderer(stage1, tmp_path):
    run = tmp_path / "lae_r"
    assert main(["train", "latent-ae", "--voxels", str(stage1["vox"]), "--out", str(run), "--preset", "smoke",
                 "--quiet", "--steps", "2", "--set", "w_render=1.0"]) == 0
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(x["render_mse"]) and x["render_mse"] >= 0 for x in lines)
    # the renderer is frozen and not part of the LAE's weights
    with safe_open(str(run / "model.safetensors"), framework="pt") as f:
        assert not any("lift_net" in k for k in f.keys())


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    return err[0]


def test_corrupt_voxel_file_is_one_line_error(stage1, tmp_path, capsys):
    vox = tmp_path / "vox_bad"
    vox.mkdir()
    for p in stage1["vox"].iterdir():
        (vox / p.name).write_bytes(p.read_bytes())
    (vox / "scene_0001.safetensors").write_bytes(b"\x00garbage" * 10)
    assert main(["train", "latent-ae", "--voxels", str(vox), "--out", str(tmp_path / "r"), "--preset", "smoke",
                 "--quiet", "--steps", "1"]) == 2
    line = _one_line_error(capsys)
    assert "scene_0001.safetensors" in line and "corrupt" in line
    # encode-voxels re-encodes a file that does not read
    with pytest.warns(UserWarning, match="encoding it again"):
        assert main(["encode-voxels", "--scene-ae", str(stage1["sae"]), "--data", str(stage1["data"]),
                     "--out", str(vox), "--quiet"]) == 0
    assert "1 encoded, 2 already there" in capsys.readouterr().out


def test_voxels_of_another_scene_ae_config_are_one_line_errors(stage1, tmp_path, capsys):
    run = tmp_path / "lae"
    assert main(["train", "latent-ae", "--voxels", str(stage1["vox"]), "--out", str(run), "--preset", "smoke",
                 "--quiet", "--steps", "1"]) == 0
    other = tmp_path / "sae2"
    assert main(["train", "scene-ae", "--data", str(stage1["data"]), "--out", str(other), "--preset", "smoke",
                 "--quiet", "--steps", "1", *SAE_SETS, "--set", "num_bins=6"]) == 0
    capsys.readouterr()
    # encoding into a folder made by another scene-ae
    assert main(["encode-voxels", "--scene-ae", str(other), "--data", str(stage1["data"]),
                 "--out", str(stage1["vox"]), "--quiet"]) == 2
    assert "another scene-ae config" in _one_line_error(capsys)
    vox2 = tmp_path / "vox2"
    assert main(["encode-voxels", "--scene-ae", str(other), "--data", str(stage1["data"]), "--out", str(vox2),
                 "--quiet"]) == 0
    capsys.readouterr()
    for cmd in (["eval", "latent-ae", "--run", str(run), "--voxels", str(vox2), "--out", str(tmp_path / "m.json")],
                ["encode-latents", "--run", str(run), "--voxels", str(vox2), "--out", str(tmp_path / "lat")]):
        assert main([*cmd, "--quiet"]) == 2
        line = _one_line_error(capsys)
        assert "another scene-ae config" in line and "index.json" in line
    # rendering with a scene-ae that did not make the voxels
    assert main(["eval", "latent-ae", "--run", str(run), "--scene-ae", str(other), "--voxels",
                 str(stage1["vox"]), "--quiet"]) == 2
    assert "not by" in _one_line_error(capsys)
    # a missing run
    assert main(["eval", "latent-ae", "--run", str(tmp_path / "nope"), "--voxels", str(stage1["vox"]),
                 "--quiet"]) == 2
    _one_line_error(capsys)
    # grid / channels come from the voxel folder
    assert main(["train", "latent-ae", "--voxels", str(stage1["vox"]), "--out", str(tmp_path / "r3"),
                 "--preset", "smoke", "--quiet", "--set", "channels=5"]) == 2
    assert "set by the voxel folder" in _one_line_error(capsys)


def test_tiny_preset_fits_stage1_tiny_voxels():
    """The tiny preset's latents for the stage-1 tiny V (17 x 64^3): c 4 x 16^3, f 4 x 64^2."""
    from nfldm.scene_ae.config import preset as scene_ae_preset

    cfg = preset("tiny").model
    sae = scene_ae_preset("tiny").model
    assert tuple(cfg.grid) == tuple(sae.grid) and cfg.channels == 1 + sae.feat_dim
    model = LatentAutoEncoder(cfg)
    assert model.latent_shapes == {"g": (64,), "c": (4, 16, 16, 16), "f": (4, 64, 64)}


def test_dihedral_voxels_render_like_the_turned_scene():
    from nfldm.camera import pose_from_position_yaw
    from nfldm.scene_ae.render import render_views

    g = torch.Generator().manual_seed(0)
    V = torch.rand(3, 8, 8, 6, generator=g) * 4            # sigma + 2 feature channels
    bounds = torch.tensor([[-2.0, -2.0, -1.0], [2.0, 2.0, 2.0]])
    c2w = pose_from_position_yaw(torch.tensor([[0.5, -0.3, 0.4], [-0.2, 0.6, 0.1]]), torch.tensor([0.4, 2.5]))
    intr = torch.tensor([[8.0, 8.0, 6.0, 5.0]]).expand(2, 4)

    def render(V, c2w):
        r = render_views(V[None], bounds[None], intr[None], c2w[None], 10, 12, 48)
        return r["depth"][0], r["feature"][0]

    d0, f0 = render(V, c2w)
    for k in range(4):
        for flip in (False, True):
            Vt = dihedral_voxels(V, k, flip)
            assert sorted(Vt.flatten().tolist()) == sorted(V.flatten().tolist())   # a permutation
            d, f = render(Vt, transform_poses(c2w, dihedral_matrix(k, flip)))
            if flip:
                d, f = d.flip(-1), f.flip(-1)
            assert torch.allclose(d, d0, atol=1e-4) and torch.allclose(f, f0, atol=1e-4), (k, flip)
    with pytest.raises(ValueError, match="X == Y"):
        dihedral_voxels(torch.zeros(1, 4, 6, 2), 1)


def test_augmenting_an_off_centre_box_names_the_file(tmp_path):
    from nfldm.data.format import DataError
    from nfldm.latent_ae.latents import _dihedral_scene

    vox = {"V": torch.zeros(2, 4, 4, 2), "bounds": torch.tensor([[0.0, -1.0, 0.0], [2.0, 1.0, 1.0]]),
           "c2w": torch.eye(4)[None]}
    with pytest.raises(DataError, match=r"scene_x\.safetensors: cannot augment .* not centred"):
        _dihedral_scene(vox, 1, False, tmp_path / "scene_x.safetensors")
    vox["bounds"] = torch.tensor([[-1.0, -1.0, 0.0], [1.0, 1.0, 1.0]])
    assert _dihedral_scene(vox, 1, False, tmp_path / "scene_x.safetensors")["c2w"].shape == (1, 4, 4)
