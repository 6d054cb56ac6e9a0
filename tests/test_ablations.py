"""The stage-3 ablations (docs/ldm.md "Ablations"): latent-ae ``latents`` "c" (coarse only) and
"g" (global only), and the stage-3 levels that follow the latent folder's mode; the default
("gcf") is unchanged."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open

from data_fixtures import make_dataset, random_V
from nfldm.cli import main
from nfldm.latent_ae.config import LatentAEConfig, config_from_dict, preset, run_model_config
from nfldm.latent_ae.model import LatentAutoEncoder

STATS = {"sigma_scale": 0.1, "feature_rms": [0.5] * 8}


def smoke_cfg(**kw):
    return replace(preset("smoke").model, **kw)


# ----------------------------------------------------------------------------------------
# the default is unchanged


def test_default_mode_is_the_full_hierarchy_unchanged():
    cfg = LatentAEConfig()
    assert cfg.latents == "gcf" and not cfg.latent_skip and cfg.out_head == "linear"
    model = LatentAutoEncoder(cfg)
    # recorded before the ablation switch (and the latent skip, the output head) existed:
    # the dataclass defaults, which old runs' config.json files read back as
    assert sum(p.numel() for p in model.parameters()) == 5496900
    assert len(model.state_dict()) == 250
    old_smoke = replace(preset("smoke").model, latent_skip=False)
    assert sum(p.numel() for p in LatentAutoEncoder(old_smoke).parameters()) == 87100
    assert model.latent_names == ("g", "c", "f")
    assert set(model.quantizers) == {"c", "f"}
    # the run config leaves the default out (old runs resume and hash as before) and reads it back
    d = run_model_config(cfg)
    assert not {"latents", "latent_skip", "out_head", "head_channels", "head_hidden"} & set(d)
    assert config_from_dict(d) == cfg
    assert run_model_config(preset("tiny").model)["latent_skip"] is True
    assert run_model_config(smoke_cfg(latents="c"))["latents"] == "c"


def test_default_ldm_levels_unchanged():
    from nfldm.ldm.config import preset as ldm_preset
    from nfldm.ldm.model import LevelDiffusion

    # parameter counts of the smoke levels recorded before the ablation switch existed
    counts = {lv: sum(p.numel() for p in LevelDiffusion(ldm_preset("smoke").level(lv).model).parameters())
              for lv in "gcf"}
    assert counts == {"g": 31240, "c": 271520, "f": 270356}
    # conditioned on [g, traj] and on the trajectory maps (opt-in), the class embedding's first
    # layer grows by traj_dim inputs x the time-embedding width (4 x the first block's
    # channels), the 3 x 3 input convolution by the map channels
    for lv in "cf":
        cfg = replace(ldm_preset("smoke").level(lv).model, g_with_traj=True, traj_map=True)
        n = sum(p.numel() for p in LevelDiffusion(cfg).parameters())
        ch = cfg.block_out_channels[0]
        assert n - counts[lv] == cfg.traj_dim * 4 * ch + cfg.map_channels * 9 * ch


def test_latents_validation():
    with pytest.raises(ValueError, match="latents must be one of"):
        LatentAEConfig(latents="cf")
    cfg = smoke_cfg()
    cfg.latents = "f"                      # as --set does, bypassing __post_init__
    with pytest.raises(ValueError, match="latents must be one of"):
        LatentAutoEncoder(cfg)


# ----------------------------------------------------------------------------------------
# the ablation models


@pytest.mark.parametrize("mode", ["c", "g"])
def test_ablation_model_shapes_and_loss(mode):
    torch.manual_seed(0)
    cfg = smoke_cfg(latents=mode)
    model = LatentAutoEncoder(cfg, STATS)
    V = random_V(cfg=cfg)
    X, Y, Z = cfg.grid
    out = model(V, sample=True)
    assert out["V_hat"].shape == V.shape and torch.isfinite(out["V_hat"]).all()
    absent = {"c": ("g", "g_mu", "g_logvar", "f", "f_q", "f_indices"),
              "g": ("c", "f", "c_q", "f_q", "c_indices", "f_indices")}[mode]
    assert not any(k in out for k in absent)
    if mode == "c":
        assert out["c"].shape == out["c_q"].shape == (2, cfg.c_channels, X // 4, Y // 4, Z // cfg.c_z_down)
        assert model.latent_shapes == {"c": tuple(out["c"].shape[1:])}
        assert not hasattr(model, "g_encoder") and not hasattr(model, "f_encoder")
        assert set(model.quantizers) == {"c"}
    else:
        assert out["g"].shape == out["g_mu"].shape == (2, cfg.g_dim)
        assert model.latent_shapes == {"g": (cfg.g_dim,)}
        assert not hasattr(model, "c_encoder") and not model.quantizers
    loss, metrics = model.losses({"V": V})
    assert torch.isfinite(loss) and all(math.isfinite(float(v)) for v in metrics.values())
    assert ("kl" in metrics) == (mode == "g") and ("commit" in metrics) == (mode == "c")
    assert ("c_perplexity" in metrics) == (mode == "c") and "f_perplexity" not in metrics
    loss.backward()
    # every parameter gets a gradient (after the zero-initialised output layer has moved)
    model.zero_grad()
    with torch.no_grad():
        model.decoder.out.weight.normal_(0, 0.02)
    model.losses({"V": V})[0].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing, missing
    # decode_latents takes None for the absent latents and refuses them when given
    model.eval()
    with torch.no_grad():
        enc = model.encode(V)
        V_dec = model.decode_latents(enc.get("g"), enc.get("c"), enc.get("f"))
        assert torch.allclose(V_dec, model(V)["V_hat"], atol=1e-5)
        with pytest.raises(ValueError, match="has no latent f"):
            model.decode_latents(enc.get("g"), enc.get("c"), torch.zeros(2, 4, X, Y))
        with pytest.raises(ValueError, match="is missing"):
            model.decode_latents(None, None, None)


def test_coarse_only_levels_are_not_conditioned_on_g():
    from nfldm.ldm.config import preset as ldm_preset
    from nfldm.ldm.model import LevelDiffusion

    gm = LevelDiffusion(replace(ldm_preset("smoke").level("g").model, g_dim=0))
    cm = LevelDiffusion(replace(ldm_preset("smoke").level("c").model, g_dim=0))
    assert gm.sample_shape(2) == (2, gm.cfg.traj_dim)
    assert cm.net.unet.class_embedding is None
    batch = {"traj": torch.rand(2, gm.cfg.traj_dim), "c": torch.randn(2, *cm.sample_shape(2)[1:])}
    assert set(cm.context(batch)) == {"traj"}          # the trajectory maps only; no g
    for m in (gm, cm):
        loss, _ = m.training_loss(batch, 0)
        assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="needs g"):
        replace(ldm_preset("smoke").level("f").model, g_dim=0)


# ----------------------------------------------------------------------------------------
# the CLI chain: latent-ae with --set latents=MODE -> encode-latents -> train ldm -> sample


SAE_SETS = ["--set", "num_input_views=2", "--set", "num_novel_views=1"]
Q = ["--quiet"]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    root = tmp_path_factory.mktemp("abl")
    data, sae, vox = root / "data", root / "sae", root / "vox"
    make_dataset(data)
    assert main(["train", "scene-ae", "--data", str(data), "--out", str(sae), "--preset", "smoke", "--steps", "2",
                 *SAE_SETS, *Q]) == 0
    assert main(["encode-voxels", "--scene-ae", str(sae), "--data", str(data), "--out", str(vox), *Q]) == 0
    return {"root": root, "data": data, "sae": sae, "vox": vox}


@pytest.mark.filterwarnings("ignore:the density never reaches")
@pytest.mark.parametrize("mode", ["c", "g"])
def test_ablation_cli_chain(stage1, mode, capsys):
    root = stage1["root"] / mode
    lae, lat, run, smp = root / "lae", root / "lat", root / "ldm", root / "samples"
    vox = str(stage1["vox"])
    assert main(["train", "latent-ae", "--voxels", vox, "--out", str(lae), "--preset", "smoke", "--steps", "2",
                 "--set", f"latents={mode}", *Q]) == 0
    rc = json.loads((lae / "config.json").read_text())
    assert rc["model"]["latents"] == mode
    metrics = [json.loads(x) for x in (lae / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(v) for x in metrics for v in x.values() if isinstance(v, float))
    assert all(("kl" in x) == (mode == "g") for x in metrics)

    # eval latent-ae still works (no codebook at all for the global-only model)
    out = root / "metrics.json"
    assert main(["eval", "latent-ae", "--run", str(lae), "--voxels", vox, "--split", "test", "--out", str(out),
                 *Q]) == 0
    res = json.loads(out.read_text())
    assert all(math.isfinite(v) for v in res["render"].values())
    assert set(res["codebook"]) == ({"c"} if mode == "c" else set())
    if mode == "g":
        assert res["targets"]["codebook_usage_met"] is None

    assert main(["encode-latents", "--run", str(lae), "--voxels", vox, "--out", str(lat), *Q]) == 0
    index = json.loads((lat / "index.json").read_text())
    assert index["latents"] == mode
    assert set(index["shapes"]) == {mode} and {"g", "c", "f"} & set(index["stats"]) == {mode}
    with safe_open(str(lat / "scene_0000.safetensors"), framework="pt") as f:
        assert {"g", "c", "f"} & set(f.keys()) == {mode}

    # only the levels of the mode are trained; another level is an error
    capsys.readouterr()
    assert main(["train", "ldm", "--latents", str(lat), "--out", str(run), "--level", "all", "--preset", "smoke",
                 "--steps", "2", *Q]) == 0
    levels = {"c": {"g", "c"}, "g": {"g"}}[mode]
    assert {p.name for p in run.iterdir() if p.is_dir()} == levels
    g_rc = json.loads((run / "g" / "config.json").read_text())
    assert g_rc["model"]["g_dim"] == (0 if mode == "c" else 16)
    for lv in levels:
        lines = [json.loads(x) for x in (run / lv / "metrics.jsonl").read_text().splitlines()]
        assert [x["step"] for x in lines] == [1, 2] and all(math.isfinite(x["loss"]) for x in lines)
    capsys.readouterr()
    assert main(["train", "ldm", "--latents", str(lat), "--out", str(root / "ldm_f"), "--level", "f", "--preset",
                 "smoke", "--steps", "1", *Q]) == 2
    err = capsys.readouterr().err
    assert "there is no level f" in err and not (root / "ldm_f").exists()

    assert main(["sample", "--run", str(run), "--num", "1", "--sampler", "dpm", "--steps", "2", "--frames", "3",
                 "--out", str(smp), *Q]) == 0
    summary = json.loads((smp / "samples.json").read_text())
    assert summary["latents"] == mode and summary["num"] == 1
    d = smp / "sample_0000"
    assert len(list((d / "frames").glob("frame_*.png"))) == 3
    with safe_open(str(d / "V.safetensors"), framework="pt") as f:
        V = f.get_tensor("V").float()
        assert V.shape == (9, 16, 16, 8) and torch.isfinite(V).all()
        assert {"g", "c", "f"} & set(f.keys()) == {mode}
        assert f.get_tensor("keyframes").shape == (8, 4, 4)


@pytest.mark.filterwarnings("ignore:the density never reaches")
def test_run_ablation_trains_samples_scores_and_resumes(stage1, tmp_path):
    """nfldm.pipeline.ablation (experiments/ablations.py): every mode trained with the same budget,
    then sampled and scored with Inception FID / KID; a second call resumes instead of retraining."""
    from nfldm.pipeline.ablation import ablation_table, run_ablation

    out = tmp_path / "abl"
    kw = dict(lae_minutes=0.03, ldm_minutes=0.01, modes=("c", "g"), num=1, lae_preset="smoke", ldm_preset="smoke",
              lae_overrides={}, ldm_overrides={}, device="cpu", eval_kwargs={"max_images": 16})
    res = run_ablation(stage1["vox"], stage1["data"], out, train_only=True, **kw)
    assert set(res) == {"c", "g"}
    for mode, r in res.items():
        assert r["lae_s"] > 0 and r["ldm_s"] > 0 and "generation" not in r
        assert math.isfinite(r["lae_eval"]["psnr_cost_db"]) and math.isfinite(r["lae_eval"]["lpips_decoded_V"])
        assert json.loads((out / mode / "lae" / "config.json").read_text())["model"]["latents"] == mode
    assert (out / "c" / "ldm" / "c" / "config.json").exists() and not (out / "g" / "ldm" / "c").exists()

    again = run_ablation(stage1["vox"], stage1["data"], out, **kw)     # resumes: only samples and scores
    for mode in ("c", "g"):
        assert again[mode]["lae_s"] == res[mode]["lae_s"] and again[mode]["ldm_s"] == res[mode]["ldm_s"]
        inc = again[mode]["generation"]["inception"]
        assert math.isfinite(inc["fid"]) and inc["feature_dim"] == 2048
        assert "floor" in again[mode]["generation"]
    assert json.loads((out / "results.json").read_text()) == again
    table = ablation_table(again)
    assert "coarse-only c" in table and "global-only g" in table and "floor" in table
    with pytest.raises(ValueError, match="ablation modes"):
        run_ablation(stage1["vox"], stage1["data"], out, modes=("x",))
