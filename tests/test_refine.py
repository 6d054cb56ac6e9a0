"""The image prior of post-optimisation (nfldm.refine): the network and its conditions, guidance,
training with the shared trainer on a dataset's frames (exact resume), loading, and bad runs."""

from __future__ import annotations

import json

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
    with pytest.raises(ValueError, match="not an image-prior run"):
        rc["stage"] = "ldm"
        (a / "config.json").write_text(json.dumps(rc))
        load_image_prior(a, "cpu")


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
