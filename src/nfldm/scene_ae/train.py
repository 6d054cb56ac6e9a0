"""Stage 1 entry points: train, evaluate and render the scene auto-encoder."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import torch

from nfldm.config import apply_overrides
from nfldm.data.format import DataError
from nfldm.data.loader import SceneDataset
from nfldm.runs import config_hash, weights_hash
from nfldm.scene_ae.config import ENCODER_FIELDS, SceneAEConfig, check_image_size, config_dict, encoder_fields, preset
from nfldm.scene_ae.evaluate import evaluate, split_scene
from nfldm.scene_ae.flythrough import depth_to_rgb, grid_image, novel_path, to_uint8, upscale
from nfldm.scene_ae.load import STAGE, encoder_hash, load_scene_ae
from nfldm.scene_ae.model import SceneAutoEncoder, scene_batch, take_views
from nfldm.trainer import Trainer
from nfldm.utils.io import atomic_save_png, atomic_write_json
from nfldm.utils.video import write_video


def check_data(ds: SceneDataset, cfg: SceneAEConfig) -> None:
    """DataError naming the scene's transforms.json unless the frames of ``ds`` are the
    W x H of ``cfg`` (:meth:`~nfldm.scene_ae.config.SceneAEConfig.image_hw`)."""
    m = ds.metas[0]
    H, W = cfg.image_hw()
    if (m.w, m.h) != (W, H):
        fix = f"--set image_size={m.h}"
        if m.w != m.h or cfg.image_width:
            fix += f" --set image_width={m.w if m.w != m.h else 0}"
        size = str(H) if H == W else f"{W}x{H}"
        raise DataError(f"{m.transforms_path}: frames are {m.w}x{m.h}, but the scene-ae config "
                        f"expects {W}x{H} (import the scene with `nfldm data import SRC --out DIR "
                        f"--size {size}`, or train with {fix})")


class PreviewCallback:
    """Writes RUN/previews/step_XXXXXXX.png (held-out views of a validation scene: ground
    truth over reconstruction) every ``every`` steps."""

    def __init__(self, dataset: SceneDataset | None, every: int):
        self.dataset, self.every = dataset, every

    def __call__(self, trainer, step: int, metrics: dict) -> None:
        if self.dataset is None or step % self.every and step != trainer.cfg.steps:
            return
        model = trainer.ema_model()
        was = model.training
        img = reconstruction_strip(model, self.dataset[0], trainer.device, num=6)
        model.train(was)
        atomic_save_png(Path(trainer.run_dir) / "previews" / f"step_{step:07d}.png", img)


def init_from_run(model: SceneAutoEncoder, run: str | os.PathLike, base: SceneAutoEncoder) -> dict:
    """Start ``model`` from the trained weights of scene-ae run ``run`` (``base``, loaded by
    :func:`load_scene_ae`: EMA weights when present).

    With ``train_parts="render"`` the encoder fields must match (V must stay what ``run``
    makes) and every encoder tensor is copied; renderer tensors whose shape changed (e.g. a
    new ``render_down`` or ``decoder_channels``) start fresh, and so does the discriminator.
    Returns the record stored in the new run's config (``init_from``): the run, its config and
    weights hashes and the encoder hash.
    """
    cfg = model.cfg
    if cfg.train_parts == "render":
        theirs, mine = encoder_fields(base.cfg), encoder_fields(cfg)
        for k in ENCODER_FIELDS:
            if theirs.get(k) != mine.get(k):
                a, b = (c.image_hw()[1] if k == "image_width" else getattr(c, k) for c in (base.cfg, cfg))
                raise ValueError(f"{run}: --init-from with train_parts=render needs the same {k} "
                                 f"(that run: {a!r}, this config: {b!r}); V would differ")
    own = model.state_dict()
    src = {k: v for k, v in base.state_dict().items() if k in own and own[k].shape == v.shape}
    missing_enc = [k for k in model.encoder_state() if k not in src]
    if cfg.train_parts == "render" and missing_enc:
        raise ValueError(f"{run}: its encoder lacks {missing_enc[:3]}; cannot keep its V")
    model.load_state_dict(src, strict=False)
    return {"run": str(Path(run).resolve()), "config_hash": config_hash(config_dict(base.cfg)),
            "weights_hash": weights_hash(base), "encoder_hash": encoder_hash(base),
            "fresh": sorted({k.split(".")[0] for k in own if k not in src})}


def train_scene_ae(data: str | os.PathLike, out: str | os.PathLike, preset_name: str = "tiny",
                   steps: int | None = None, resume: bool = False, device: str = "auto",
                   progress: bool = True, overrides: dict | None = None,
                   init_from: str | os.PathLike | None = None, v_source=None) -> dict:
    """Train stage 1 on the train split of ``data`` into run directory ``out``; ``init_from``:
    a scene-ae run whose weights and model config to start from (``overrides`` change the
    config on top of it; the preset gives the training options; see :func:`init_from_run`).

    ``v_source``: with ``render_from="latents"`` the renderer trains on V that a later stage
    makes; stage 1 knows nothing of it. ``v_source(cfg, names, base, init_from)`` (cfg: the
    resolved config, names: the train scenes, base: the ``init_from`` model) returns an object
    whose ``decode(names, device)`` gives V B x K x X x Y x Z for B scene names.
    ``nfldm.pipeline.renderer.train_scene_ae`` passes the latents' one."""
    p = preset(preset_name)
    base = None
    if init_from is not None:     # fine-tuning: the model config is the run's (then --set on top)
        base = load_scene_ae(init_from, "cpu")
        p.model = dataclasses.replace(base.cfg)
    if steps is not None:
        p.train.steps = steps
    p.train.device = device
    p.train.progress = progress
    apply_overrides(p.model, p.train, overrides, "scene-ae")
    cfg = p.model
    check_image_size(cfg)           # before the data is compared with it
    need = cfg.num_input_views + cfg.num_novel_views
    train_ds = SceneDataset(data, "train", num_views=need, cache=True, seed=p.train.seed)
    check_data(train_ds, cfg)
    try:
        val_ds = SceneDataset(data, "val", cache=True)
    except DataError:
        val_ds = None
    if cfg.train_parts == "render" and init_from is None:
        raise ValueError("train_parts=render trains the renderer of a trained model: give --init-from RUN")
    torch.manual_seed(p.train.seed)
    model = SceneAutoEncoder(cfg)
    run_config = {"stage": STAGE, "preset": preset_name, "data": str(Path(data).resolve()),
                  "model": config_dict(cfg), "train": p.train.to_dict()}
    if init_from is not None:
        run_config["init_from"] = init_from_run(model, init_from, base)
    source = None
    if cfg.render_from == "latents":
        if v_source is None:
            raise ValueError("render_from=latents renders V decoded by stage 2: train it with nfldm train scene-ae "
                             "(the CLI) or nfldm.pipeline.renderer.train_scene_ae")
        source = v_source(cfg, [e.name for e in train_ds.entries], base, init_from)
    every = max(p.train.ckpt_every, p.train.log_every)
    held_out = None
    if p.train.val_every and val_ds is not None:   # the val scenes drawn as the train ones are
        held_out = SceneDataset(data, "val", num_views=need, cache=True, seed=p.train.seed)
    trainer = Trainer(model, train_ds, p.train, out, run_config, resume=resume,
                      callbacks=[PreviewCallback(val_ds, every)], val_dataset=held_out)
    trainer.model.latent_source = source      # after the EMA copy: it needs no second one
    return trainer.fit()


@torch.no_grad()
def reconstruction_strip(model: SceneAutoEncoder, item: dict, device, num: int = 8) -> np.ndarray:
    """PNG strip for one scene: rows = ground truth, reconstruction, GT depth, rendered depth,
    for ``num`` held-out frames (not given to the encoder)."""
    model.eval()
    bi, bo, _, outs = split_scene(scene_batch(item, device), model.cfg.num_input_views)
    pick = np.round(np.linspace(0, len(outs) - 1, min(num, len(outs)))).astype(int)
    bo = take_views(bo, torch.from_numpy(pick))
    H, W = bi["images"].shape[-2:]
    enc = model.encode_batch(bi)
    r = model.render(enc["V"], bi["bounds"], bo["intrinsics"], bo["c2w"], H, W, chunk=8192)
    d = torch.nn.functional.interpolate(r["depth"][0][:, None], size=(H, W), mode="nearest")[:, 0]
    rows = [to_uint8(bo["images"][0]), to_uint8(r["rgb"][0]),
            depth_to_rgb(bo["depth"][0], bo["depth_valid"][0]), depth_to_rgb(d)]
    return grid_image([upscale(x, 2) for x in rows])


def eval_scene_ae(run, data, split: str = "test", out=None, device: str = "auto",
                  max_scenes: int | None = None, progress: bool = True) -> dict:
    """Held-out-view metrics of the model and the trivial baselines; writes ``out`` (JSON)
    and a picture next to it (``<out stem>_views.png``)."""
    model = load_scene_ae(run, device)
    ds = SceneDataset(data, split, cache=True)
    check_data(ds, model.cfg)
    dev = next(model.parameters()).device
    res, kept = evaluate(model, ds, device=dev, max_scenes=max_scenes, progress=progress, keep=4)
    res = {"run": str(run), "data": str(data), "split": split, **res}
    if out is not None:
        atomic_write_json(out, res)
        rows = []
        for k in kept:
            sel = np.round(np.linspace(0, len(k["held_out"]) - 1, 6)).astype(int)
            rows += [to_uint8(k["gt"][sel]), to_uint8(k["model"][0][sel]),
                     to_uint8(k["nearest_frame"][0][sel])]
        if rows:
            atomic_save_png(Path(out).with_name(Path(out).stem + "_views.png"),
                            grid_image([upscale(x, 2) for x in rows]))
    return res


@torch.no_grad()
def flythrough_views(model: SceneAutoEncoder, item: dict, num_frames: int = 96, device=None) -> dict:
    """Encode one scene (a dataset item) from its input views and render
    :func:`~nfldm.scene_ae.flythrough.novel_path` through it at the frames' H x W: rgb
    N x 3 x H x W in [0, 1], depth N x H x W (metres, the rendered depth map upsampled, nearest),
    path N x 4 x 4."""
    dev = next(model.parameters()).device if device is None else device
    bi, _, _, _ = split_scene(scene_batch(item, dev), model.cfg.num_input_views)
    H, W = bi["images"].shape[-2:]
    path = novel_path(item["c2w"], item["bounds"], num_frames).to(dev)
    enc = model.encode_batch(bi)
    intr = bi["intrinsics"][:, :1].expand(1, len(path), 4)
    rgbs, depths = [], []
    for i in range(0, len(path), 16):
        r = model.render(enc["V"], bi["bounds"], intr[:, i:i + 16], path[None, i:i + 16], H, W, chunk=8192)
        rgbs.append(r["rgb"][0])
        depths.append(torch.nn.functional.interpolate(r["depth"][0][:, None], size=(H, W))[:, 0])
    return {"rgb": torch.cat(rgbs), "depth": torch.cat(depths), "path": path}


def render_flythrough(run, data, scene: str | None, out, split: str | None = None, num_frames: int = 96,
                      fps: int = 24, scale: int = 4, device: str = "auto") -> dict:
    """Encode one scene from its input views, render a smooth novel path through it
    (video ``out``), and write ``<out stem>_strip.png`` (ground truth vs reconstruction)."""
    model = load_scene_ae(run, device)
    dev = next(model.parameters()).device
    ds = None
    if scene is None:
        ds = SceneDataset(data, split or "test", cache=True)
        scene = ds.entries[0].name
    for sp in ([] if ds is not None else [split] if split else ["train", "val", "test"]):
        try:
            cand = SceneDataset(data, sp, cache=True)
        except DataError:
            continue
        if scene in [e.name for e in cand.entries]:
            ds = cand
            break
    if ds is None:
        raise DataError(f"{data}: no scene named {scene!r}" + (f" in split {split!r}" if split else ""))
    check_data(ds, model.cfg)
    item = ds[[e.name for e in ds.entries].index(scene)]
    views = flythrough_views(model, item, num_frames, dev)
    frames = list(np.concatenate([upscale(to_uint8(views["rgb"]), scale),
                                  upscale(depth_to_rgb(views["depth"]), scale)], 2))
    written = write_video(out, frames, fps)
    strip = Path(out).with_name(Path(out).stem + "_strip.png")
    atomic_save_png(strip, reconstruction_strip(model, item, dev))
    return {"video": str(written), "strip": str(strip), "frames": len(frames)}
