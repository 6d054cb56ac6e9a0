"""The image prior of post-optimisation (nfldm.refine): the network and its conditions, guidance,
training with the shared trainer on a dataset's frames (exact resume), loading, and bad runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data_fixtures import make_dataset
from nfldm.refine.config import ImagePriorConfig, preset
from nfldm.refine.model import ImagePrior, guided_eps
from nfldm.refine.train import FrameEmbeddings, load_image_prior, train_image_prior


class ProxyEmbedder(torch.nn.Module):
    """A stand-in for EfficientNet-Lite0 (tests): uint8 N x H x W x 3 -> N x 1280, a fixed
    random projection of the frame's 4 x 4 mean colours."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(48, 1280)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))

    @torch.no_grad()
    def forward(self, images):
        x = images.permute(0, 3, 1, 2).float() / 255.0
        return self.proj(torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


def small_prior(**kw) -> ImagePrior:
    return ImagePrior(ImagePriorConfig(image_size=16, block_out_channels=(8, 16), attention=False, **kw)).eval()


def test_conditions_null_and_guidance():
    """The embedding changes the prediction; None and dropped rows give the null condition;
    guidance with scale 1 is the conditional prediction, with the null negative it is
    classifier-free guidance, and a negative embedding y' replaces the null branch."""
    torch.manual_seed(0)
    m = small_prior()
    with torch.no_grad():
        m.null.normal_()
        for p in m.unet.parameters():         # diffusers zero-initialises nothing here, but be sure
            p.add_(torch.randn_like(p) * 1e-3)
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([10, 500, 900])
    e = torch.randn(3, 1280)
    with torch.no_grad():
        c, u = m(x, t, e), m(x, t, None)
        assert not torch.allclose(c, u)
        dropped = m(x, t, e, drop=torch.tensor([True, False, True]))
        assert torch.allclose(dropped[0], u[0], atol=1e-6) and torch.allclose(dropped[1], c[1], atol=1e-6)
        assert torch.allclose(guided_eps(m, x, t, e, None, 1.0), c, atol=1e-5)
        g3 = guided_eps(m, x, t, e, None, 3.0)
        assert torch.allclose(g3, u + 3 * (c - u), atol=1e-4)
        y_neg = torch.randn(1280)
        n = m(x, t, y_neg)
        assert torch.allclose(guided_eps(m, x, t, e, y_neg, 2.0), n + 2 * (c - n), atol=1e-4)
    with pytest.raises(ValueError, match="embedding must be"):
        m(x, t, torch.randn(3, 7))


def test_v_prediction_gives_epsilon():
    """eps() turns a v-prediction into the noise estimate: for the exact v of (x0, noise), it
    returns the noise."""
    m = small_prior(prediction_type="v_prediction")
    x0, noise, t = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16), torch.tensor([100, 700])
    x_t = m.scheduler.add_noise(x0, noise, t)
    v = m.scheduler.get_velocity(x0, noise, t)
    ac = m.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(ac.sqrt() * v + (1 - ac).sqrt() * x_t, noise, atol=1e-5)


def test_bad_configs():
    with pytest.raises(ValueError, match="divisible"):
        ImagePriorConfig(image_size=18, block_out_channels=(8, 16, 32))
    with pytest.raises(ValueError, match="embed_drop_prob"):
        ImagePriorConfig(embed_drop_prob=1.0)
    with pytest.raises(ValueError, match="needs standardize_embedding"):
        ImagePriorConfig(embed_components=8)
    with pytest.raises(ValueError, match="embed_components"):
        ImagePriorConfig(embed_components=2000, standardize_embedding=True)
    with pytest.raises(ValueError, match="embed_noise"):
        ImagePriorConfig(embed_noise=-1.0)
    with pytest.raises(ValueError, match="time_scale_shift"):
        ImagePriorConfig(time_scale_shift="film")


def test_principal_component_condition_and_training_noise():
    """With embed_components=k the condition is the training embeddings' top-k principal
    components, whitened: on those embeddings they have unit variance and no correlation, and the
    leading one follows the direction they vary along most. embed_noise perturbs the condition in
    training only; the scale-shift block variant builds and conditions as well."""
    gen = torch.Generator().manual_seed(0)
    m = small_prior(standardize_embedding=True, embed_components=4, embed_noise=0.5,
                    time_scale_shift="scale_shift")
    direction = torch.randn(1280, generator=gen)
    emb = torch.randn(512, 1280, generator=gen) * 0.1 + torch.randn(512, 1, generator=gen) * direction
    m.set_embedding_statistics(emb)
    z = ((emb - m.embed_mean) / m.embed_std) @ m.embed_basis / m.embed_scale
    assert torch.allclose(z.std(0), torch.ones(4), atol=1e-3)
    cov = torch.cov(z.T)
    assert (cov - torch.diag(torch.diag(cov))).abs().max() < 1e-3
    lead = m.embed_basis[:, 0]
    assert abs(float(torch.nn.functional.cosine_similarity(lead, direction / m.embed_std, dim=0))) > 0.99
    e = emb[:3]
    with torch.no_grad():
        a, b = m.condition(e, 3), m.condition(e, 3)
        assert torch.equal(a, b)                                  # no noise outside training
        n1, n2 = m.condition(e, 3, noise=True), m.condition(e, 3, noise=True)
        assert not torch.allclose(n1, n2) and not torch.allclose(n1, a)
        x, t = torch.randn(3, 3, 16, 16), torch.tensor([10, 500, 900])
        for p in m.unet.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
        assert not torch.allclose(m(x, t, e), m(x, t, None))


def test_train_resume_load(tmp_path):
    """nfldm train image-prior on a dataset's train frames: the run trains (finite loss), keeps
    the frames' mean embedding, resumes exactly (a run continued from its checkpoint ends with
    the weights of one run straight through), and loads with its EMA weights; another stage's
    run is refused."""
    data = tmp_path / "data"
    make_dataset(data)
    emb = ProxyEmbedder()
    a = tmp_path / "a"
    m = train_image_prior(data, a, preset_name="smoke", steps=4, device="cpu", progress=False, embedder=emb)
    assert m["loss"] == m["loss"] and m["loss"] > 0
    rc = json.loads((a / "config.json").read_text())
    assert rc["stage"] == "image-prior" and rc["frames"] > 0
    loaded = load_image_prior(a, "cpu")
    assert loaded["mean_embedding"].shape == (1280,) and loaded["step"] == 4
    # the embeddings are standardised by the training frames' statistics, kept with the weights
    pri = loaded["prior"]
    assert pri.cfg.standardize_embedding and torch.allclose(pri.embed_mean, loaded["mean_embedding"], atol=1e-5)
    assert (pri.embed_std > 0).all() and not torch.allclose(pri.embed_std, torch.ones(1280))
    assert not loaded["prior"].training
    # resume: 2 steps, then continue to 4 == 4 straight
    b = tmp_path / "b"
    train_image_prior(data, b, preset_name="smoke", steps=4, device="cpu", progress=False, embedder=emb,
                      overrides={"max_minutes": 0.0, "ckpt_every": 2})
    c = tmp_path / "c"
    train_image_prior(data, c, preset_name="smoke", steps=2, device="cpu", progress=False, embedder=emb,
                      overrides={"ckpt_every": 2})
    cfg = json.loads((c / "config.json").read_text())
    cfg["train"]["steps"] = 4
    (c / "config.json").write_text(json.dumps(cfg))
    train_image_prior(data, c, preset_name="smoke", steps=4, device="cpu", progress=False, embedder=emb,
                      resume=True, overrides={"ckpt_every": 2})
    pb, pc = load_image_prior(b, "cpu")["prior"], load_image_prior(c, "cpu")["prior"]
    for (k, v), (_, w) in zip(pb.state_dict().items(), pc.state_dict().items()):
        assert torch.allclose(v, w, atol=1e-6), k
    # the principal-component condition: its basis is computed from the frames and kept with the weights
    d = tmp_path / "d"
    train_image_prior(data, d, preset_name="smoke", steps=2, device="cpu", progress=False, embedder=emb,
                      overrides={"embed_components": 3, "embed_noise": 0.2})
    pd = load_image_prior(d, "cpu")["prior"]
    assert pd.cfg.embed_components == 3 and pd.embed.in_features == 3
    assert torch.allclose(pd.embed_basis.T @ pd.embed_basis, torch.eye(3), atol=1e-4)
    with pytest.raises(ValueError, match="not an image-prior run"):
        rc["stage"] = "ldm"
        (a / "config.json").write_text(json.dumps(rc))
        load_image_prior(a, "cpu")


def test_embedding_pass_survives_a_kill_before_training(tmp_path, monkeypatch):
    """The frames' embeddings are kept (a partial file) as soon as they are computed: a run
    killed before its trainer starts reuses them on resume instead of embedding again, a fresh
    run (no resume) or another data folder computes its own, and the finished run's file
    replaces the partial one."""
    import nfldm.refine.train as tr

    data = tmp_path / "data"
    make_dataset(data)
    calls = []
    real_embed = tr.embed_images
    monkeypatch.setattr(tr, "embed_images", lambda *a, **k: calls.append(1) or real_embed(*a, **k))

    class Killed(Exception):
        pass

    real_trainer = tr.Trainer

    def dying_trainer(*a, **k):
        raise Killed

    monkeypatch.setattr(tr, "Trainer", dying_trainer)
    run = tmp_path / "run"
    with pytest.raises(Killed):
        train_image_prior(data, run, preset_name="smoke", steps=2, device="cpu", progress=False,
                          embedder=ProxyEmbedder(), overrides={"val_every": 0}, resume=True)
    assert len(calls) == 1
    assert (run / "embeddings.safetensors.partial").is_file() and not (run / "embeddings.safetensors").exists()
    monkeypatch.setattr(tr, "Trainer", real_trainer)
    train_image_prior(data, run, preset_name="smoke", steps=2, device="cpu", progress=False,
                      embedder=ProxyEmbedder(), overrides={"val_every": 0}, resume=True)
    assert len(calls) == 1        # not embedded again
    assert (run / "embeddings.safetensors").is_file() and not (run / "embeddings.safetensors.partial").exists()
    # not resumed: computed again, even with a partial file beside it
    other = tmp_path / "other"
    monkeypatch.setattr(tr, "Trainer", dying_trainer)
    with pytest.raises(Killed):
        train_image_prior(data, other, preset_name="smoke", steps=2, device="cpu", progress=False,
                          embedder=ProxyEmbedder(), overrides={"val_every": 0})
    monkeypatch.setattr(tr, "Trainer", real_trainer)
    n = len(calls)
    train_image_prior(data, other, preset_name="smoke", steps=2, device="cpu", progress=False, embedder=ProxyEmbedder(), overrides={"val_every": 0})
    assert len(calls) == n + 1


def test_train_with_renders_of_the_generator(tmp_path):
    """--renders: frames of sample folders join the training set with their own embeddings (the
    negative look the prior then knows); y stays the real frames' mean, the renders' mean is kept
    beside it, the run config says where they came from; a folder without frames is one error."""
    from PIL import Image

    from nfldm.data.format import DataError
    from nfldm.data.tensors import read_safetensors
    from nfldm.ldm.evaluate import real_images, real_images_by_group

    data = tmp_path / "data"
    make_dataset(data)
    renders = tmp_path / "s"
    rng = np.random.default_rng(0)
    for k in range(2):
        (renders / f"sample_{k:04d}" / "frames").mkdir(parents=True)
        for i in range(3):     # 32 px: resized to the dataset's frame size
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                renders / f"sample_{k:04d}" / "frames" / f"{i:04d}.png")
    emb = ProxyEmbedder()
    run = tmp_path / "p"
    train_image_prior(data, run, preset_name="smoke", steps=2, device="cpu", progress=False, embedder=emb,
                      renders=[renders])
    real = real_images(data, "train")
    by_group, groups = real_images_by_group(data, "train")
    index = json.loads((data / "dataset.json").read_text())["scenes"]
    train = [sc for sc in index if sc["split"] == "train"]
    assert np.array_equal(by_group, real) and groups == [sc["group"] for sc in train
                                                         for _ in range(len(real) // len(train))]
    rc = json.loads((run / "config.json").read_text())
    assert rc["frames"] == len(real) + 6 and rc["renders"] == {"folders": [str(renders.resolve())], "frames": 6}
    t, meta = read_safetensors(run / "embeddings.safetensors")
    assert t["frames"].shape[0] == len(real) + 6 and meta["renders"] == "6"
    assert torch.allclose(t["mean"], t["frames"][:len(real)].mean(0)) and torch.allclose(
        t["renders_mean"], t["frames"][len(real):].mean(0))
    assert torch.allclose(load_image_prior(run, "cpu")["mean_embedding"], t["mean"])
    with pytest.raises(DataError, match="no generated frames"):
        train_image_prior(data, tmp_path / "q", preset_name="smoke", steps=2, device="cpu", progress=False,
                          embedder=emb, renders=[tmp_path])


def test_frame_dataset_resizes_and_checks():
    import numpy as np

    imgs = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    ds = FrameEmbeddings(imgs, torch.randn(5, 1280), 16)
    item = ds[2]
    assert item["image"].shape == (3, 16, 16) and 0 <= float(item["image"].min()) <= float(item["image"].max()) <= 1
    with pytest.raises(ValueError, match="embeddings"):
        FrameEmbeddings(imgs, torch.randn(4, 1280), 16)
    assert preset("tiny").model.image_size == 64


def test_sample_images_shape_range_and_seed():
    """DDIM samples of the prior: num x 3 x S x S in [0, 1], the same for the same seed, other
    for another; a batch split does not change them."""
    from nfldm.refine.model import sample_images

    torch.manual_seed(0)
    m = small_prior()
    y = torch.randn(1280)
    a = sample_images(m, 5, y, None, 2.0, steps=3, seed=1, batch=5)
    b = sample_images(m, 5, y, None, 2.0, steps=3, seed=1, batch=5)
    assert a.shape == (5, 3, 16, 16) and float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, sample_images(m, 5, y, None, 2.0, steps=3, seed=2, batch=5))
    assert sample_images(m, 2, None, steps=2).shape == (2, 3, 16, 16)


# --------------------------------------------------------------------------------------
# score distillation (nfldm.refine.sds) and nfldm refine (nfldm.pipeline.refine)
# --------------------------------------------------------------------------------------


def _smoke_renderer():
    from nfldm.scene_ae.config import preset as sae_preset
    from nfldm.scene_ae.model import SceneAutoEncoder

    torch.manual_seed(0)
    return SceneAutoEncoder(sae_preset("smoke").model).eval()


def _scene(sae):
    from nfldm.camera import pose_from_position_yaw

    K = 1 + sae.cfg.feat_dim
    gen = torch.Generator().manual_seed(1)
    V = torch.rand(K, *sae.cfg.grid, generator=gen)
    V[0] *= 4
    bounds = torch.tensor([[-4.0, -4.0, -1.0], [4.0, 4.0, 3.0]])
    path = pose_from_position_yaw(torch.tensor([[0.0, 0.0, 1.0]]).expand(6, 3),
                                  torch.linspace(0, 3.0, 6))
    return V, bounds, path, torch.tensor([32.0, 32.0, 32.0, 32.0])


def test_sds_moves_the_views_towards_the_priors_denoised_image(monkeypatch):
    """With a prior whose guided noise estimate points at a grey image (eps = (x_t - sqrt(a) x0) /
    sqrt(1 - a), x0 grey), score distillation through the renderer makes the rendered views
    greyer; density stays >= 0, and frozen density stays exactly as it was."""
    import nfldm.refine.model as model
    import nfldm.refine.sds as sds

    sae = _smoke_renderer()
    prior = small_prior()
    V, bounds, path, intr = _scene(sae)
    grey = torch.zeros(1, 3, 16, 16)  # 0.5 in [0, 1]

    def toward_grey(p, x_t, t, y, y_neg, scale):
        a = p.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * grey) / (1 - a).sqrt()

    monkeypatch.setattr(model, "guided_eps", toward_grey)
    H, W = sae.cfg.image_hw()

    def distance(Vx):
        with torch.no_grad():
            rgb = sae.render(Vx[None], bounds[None], intr.expand(1, 6, 4), path[None], H, W)["rgb"][0]
        return float((rgb - 0.5).abs().mean())

    cfg = sds.SDSConfig(steps=25, views=3, lr=0.05, lr_density=0.05, guidance=2.0)
    V1, logs = sds.sds_refine(V, bounds, path, intr, sae, prior, torch.zeros(1280), None, cfg)
    assert len(logs) == 25 and all(torch.isfinite(torch.tensor(lg["grad_norm"])) for lg in logs)
    assert distance(V1) < 0.8 * distance(V)
    assert (V1[0] >= 0).all()
    V2, _ = sds.sds_refine(V, bounds, path, intr, sae, prior, torch.zeros(1280), None,
                           sds.SDSConfig(steps=3, views=2, freeze_density=True, guidance=2.0))
    assert torch.equal(V2[0], V[0]) and not torch.equal(V2[1:], V[1:])
    with pytest.raises(ValueError, match="t_min < t_max"):
        sds.SDSConfig(t_min=0.5, t_max=0.2)


def test_refine_samples_writes_sample_folders_and_checks(tmp_path):
    """nfldm refine on samples of the shipped bundle with a smoke prior: refined sample folders in
    nfldm sample's layout (frames the eval reads, V, trajectory), before_after.png, refine.json with
    finite geometry checks; negative none / a folder and a style folder work; bad input is refused."""
    from PIL import Image

    from nfldm.data.format import DataError
    from nfldm.ldm.evaluate import generated_images
    from nfldm.pipeline.generate import sample
    from nfldm.pipeline.refine import refine_samples
    from nfldm.refine.sds import SDSConfig

    samples = tmp_path / "s"
    sample(None, num=2, sampler="ddim", steps=2, seed=0, out=samples, device="cpu", progress=False, num_frames=6)
    data = tmp_path / "data"
    make_dataset(data)
    prior = tmp_path / "prior"
    emb = ProxyEmbedder()
    train_image_prior(data, prior, preset_name="smoke", steps=2, device="cpu", progress=False, embedder=emb)
    out = tmp_path / "r"
    cfg = SDSConfig(steps=2, views=2)
    res = refine_samples(samples, out, prior=str(prior), cfg=cfg, device="cpu", progress=False, embedder=emb)
    assert res["num"] == 2 and "own frames" in res["y_neg"]
    for k in ("depth_rel_change", "photometric_reprojection_before", "photometric_reprojection_after"):
        assert res["median"][k] == res["median"][k] and res["median"][k] >= 0
    for name in ("samples.json", "refine.json", "before_after.png", "contact_sheet.png"):
        assert (out / name).is_file()
    for d in ("sample_0000", "sample_0001"):
        assert len(list((out / d / "frames").glob("*.png"))) == 6
        assert (out / d / "V.safetensors").is_file() and (out / d / "trajectory.json").is_file()
    assert generated_images(out).shape == (12, 64, 64, 3)
    summary = json.loads((out / "samples.json").read_text())
    assert summary["refined"]["prior"] == str(prior) and len(summary["samples"]) == 2
    from nfldm.pipeline.bundle import bundled_model
    from nfldm.pipeline.edit import load_scene
    from nfldm.pipeline.load import load_stages

    with pytest.raises(DataError, match="refined sample"):   # nfldm edit points at the unrefined sample
        load_scene(out / "sample_0000", load_stages(bundled_model(), "cpu"))

    style = tmp_path / "style"
    style.mkdir()
    for i in range(3):
        Image.fromarray((torch.rand(40, 50, 3) * 255).byte().numpy()).save(style / f"{i}.png")
    res = refine_samples(samples / "sample_0000", tmp_path / "r2", prior=str(prior), negative="none",
                         style=str(style), cfg=cfg, device="cpu", progress=False, embedder=emb)
    assert res["num"] == 1 and res["y"].startswith("style images") and res["y_neg"].startswith("none")
    res = refine_samples(samples, tmp_path / "r3", prior=str(prior), negative=str(style), cfg=cfg, num=1,
                         device="cpu", progress=False, embedder=emb)
    assert res["y_neg"].startswith("images")

    with pytest.raises(DataError, match="no sample folders"):
        refine_samples(tmp_path / "data", tmp_path / "x", prior=str(prior), cfg=cfg, progress=False, embedder=emb)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        refine_samples(samples, tmp_path / "x", prior=str(prior), style=str(tmp_path / "empty"), cfg=cfg,
                       progress=False, embedder=emb)
    with pytest.raises(ValueError, match="new folder"):
        refine_samples(samples, samples / "inside", prior=str(prior), cfg=cfg, progress=False, embedder=emb)
    with pytest.raises(DataError, match="no such image-prior run"):
        refine_samples(samples, tmp_path / "x", prior=str(tmp_path / "nope"), cfg=cfg, progress=False, embedder=emb)


def _tiny_sd_image_variations(folder):
    """A randomly initialised StableDiffusionImageVariationPipeline in the folder layout of
    save_pretrained (what a user's local copy of the real weights looks like)."""
    pytest.importorskip("transformers")
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionImageVariationPipeline, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                layers_per_block=1, norm_num_groups=8, cross_attention_dim=16, attention_head_dim=4,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2)
    enc = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=16, projection_dim=16, num_hidden_layers=1,
                                                         num_attention_heads=2, intermediate_size=32, image_size=32,
                                                         patch_size=8))
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pipe = StableDiffusionImageVariationPipeline(vae=vae, image_encoder=enc, unet=unet, scheduler=DDPMScheduler(),
                                                 safety_checker=None, feature_extractor=proc,
                                                 requires_safety_checker=False)
    pipe.save_pretrained(folder)


def test_sd_image_variations_prior_from_a_local_folder(tmp_path, monkeypatch):
    """--prior sd-image-variations:DIR loads a saved pipeline with local_files_only (no network:
    HF_HUB_OFFLINE), embeds with its CLIP image encoder, and refines a sample in its latent space;
    a folder missing parts, or no --real, is refused."""
    from nfldm.data.format import DataError
    from nfldm.pipeline.generate import sample
    from nfldm.pipeline.refine import refine_samples
    from nfldm.refine.sd import SDImageVariationsPrior
    from nfldm.refine.sds import SDSConfig

    sd = tmp_path / "sd"
    _tiny_sd_image_variations(sd)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    prior = SDImageVariationsPrior(sd)
    assert prior.image_size == 16 and prior.embed_images(torch.randint(0, 255, (3, 20, 24, 3), dtype=torch.uint8).numpy()).shape == (3, 16)
    x = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_(True)
    loss, grad = prior.sds_loss(x, torch.tensor([100, 400]), torch.randn(16), None, 3.0, torch.Generator().manual_seed(0))
    loss.backward()
    assert grad.shape == (2, 4, 8, 8) and x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0

    samples = tmp_path / "s"
    sample(None, num=1, sampler="ddim", steps=2, seed=0, out=samples, device="cpu", progress=False, num_frames=4)
    data = tmp_path / "data"
    make_dataset(data)
    cfg = SDSConfig(steps=2, views=2)
    res = refine_samples(samples, tmp_path / "r", prior=f"sd-image-variations:{sd}", real=str(data), cfg=cfg,
                         device="cpu", progress=False)
    assert res["num"] == 1 and res["prior"].startswith("sd-image-variations:") and res["y"].startswith("real frames")
    with pytest.raises(ValueError, match="--real"):
        refine_samples(samples, tmp_path / "r2", prior=f"sd-image-variations:{sd}", cfg=cfg, progress=False)
    (sd / "unet" / "config.json").rename(sd / "unet" / "config.bak")
    import shutil
    shutil.rmtree(sd / "vae")
    with pytest.raises(DataError, match="missing vae"):
        SDImageVariationsPrior(sd)
