"""The paper's kind of prior, when a user has its weights: a Stable Diffusion image-variations
pipeline (diffusers ``StableDiffusionImageVariationPipeline`` with its CLIP image encoder) loaded
from a local folder, never downloaded (``local_files_only``).

    nfldm refine --samples S --prior sd-image-variations:LOCAL_DIR --real DATA --out R

LOCAL_DIR is a ``save_pretrained`` folder of the pipeline (``model_index.json``, ``unet/``,
``vae/``, ``image_encoder/``, ``feature_extractor/``, ``scheduler/``). Score distillation runs in
its latent space: the rendered views (upsampled to the UNet's image size) are encoded by the VAE
(with gradient), noised, and the UNet's guided noise estimate, conditioned on CLIP image
embeddings (zeros = unconditional, as the pipeline's classifier-free guidance), gives the
gradient on the latents. The weights are the user's to supply; nfldm ships none of them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfldm.data.format import DataError

__all__ = ["SDImageVariationsPrior", "SD_PREFIX", "REQUIRED_PARTS"]

SD_PREFIX = "sd-image-variations:"
REQUIRED_PARTS = ("model_index.json", "unet", "vae", "image_encoder", "feature_extractor", "scheduler")


class SDImageVariationsPrior(nn.Module):
    """SDS prior of a local Stable Diffusion image-variations pipeline (module docstring).

    image_size: the pixel size views are resized to; num_train_timesteps, alphas_cumprod: its
    diffusion schedule. Embeddings: 1 x D (CLIP image_embeds) per image."""

    def __init__(self, folder: str | os.PathLike, device: str | torch.device = "cpu"):
        super().__init__()
        folder = Path(folder)
        missing = [p for p in REQUIRED_PARTS if not (folder / p).exists()]
        if missing:
            raise DataError(f"{folder}: not a saved StableDiffusionImageVariationPipeline (missing {', '.join(missing)})")
        try:
            from diffusers import DDPMScheduler, StableDiffusionImageVariationPipeline
        except ImportError as e:  # transformers (the CLIP image encoder) is an optional dependency
            raise DataError(f"{folder}: loading it needs the transformers package ({e}); pip install transformers") from None
        pipe = StableDiffusionImageVariationPipeline.from_pretrained(
            folder, local_files_only=True, safety_checker=None, requires_safety_checker=False)
        self.unet, self.vae, self.image_encoder = pipe.unet, pipe.vae, pipe.image_encoder
        self.feature_extractor = pipe.feature_extractor
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_size = int(self.unet.config.sample_size) * self.vae_scale
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self.source = str(folder)
        self.to(device).eval().requires_grad_(False)

    @property
    def alphas_cumprod(self) -> Tensor:
        return self.scheduler.alphas_cumprod

    @torch.no_grad()
    def embed_images(self, images: np.ndarray) -> Tensor:
        """uint8 N x H x W x 3 -> CLIP image embeddings N x D."""
        dev = next(self.parameters()).device
        out = []
        for lo in range(0, len(images), 32):
            px = self.feature_extractor(images=list(images[lo:lo + 32]), return_tensors="pt").pixel_values
            out.append(self.image_encoder(px.to(dev, next(self.image_encoder.parameters()).dtype)).image_embeds.float())
        return torch.cat(out)

    def sds_loss(self, x: Tensor, t: Tensor, y: Tensor, y_neg: Tensor | None, scale: float,
                 generator: torch.Generator, classifier_only: bool = False) -> tuple[Tensor, Tensor]:
        """x: B x 3 x h x w in [-1, 1] (with gradient), t: B timesteps, y / y_neg: D embeddings (y_neg
        None: zeros, the unconditional; ``classifier_only`` as ImagePrior.sds_loss) -> (a scalar whose gradient w.r.t. x is the SDS gradient
        through the VAE encoder, the gradient on the latents B x 4 x s x s)."""
        dev = next(self.parameters()).device
        B = x.shape[0]
        x = F.interpolate(x.to(dev), size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        z = self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor
        noise = torch.randn(z.shape, generator=generator).to(dev)
        t = t.to(dev)
        with torch.no_grad():
            z_t = self.scheduler.add_noise(z.detach(), noise, t)
            pos = y.to(dev).float().view(1, 1, -1).expand(B, 1, -1)
            neg = torch.zeros_like(pos) if y_neg is None else y_neg.to(dev).float().view(1, 1, -1).expand(B, 1, -1)
            dtype = next(self.unet.parameters()).dtype
            e = self.unet(torch.cat([z_t, z_t]).to(dtype), torch.cat([t, t]),
                          encoder_hidden_states=torch.cat([neg, pos]).to(dtype)).sample.float()
            e_neg, e_pos = e.chunk(2)
            diff = scale * (e_pos - e_neg) if classifier_only else e_neg + scale * (e_pos - e_neg) - noise
            w = (1 - self.scheduler.alphas_cumprod.to(dev)[t]).view(-1, 1, 1, 1)
            grad = w * diff
        return (grad * z).sum() / B, grad
