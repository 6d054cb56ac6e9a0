"""``nfldm refine``: post-optimisation of generated scenes by score distillation (paper Sec. 4).

For each sample of an ``nfldm sample`` folder: its V is refined by :func:`nfldm.refine.sds.sds_refine`
(views near its camera path, the image prior's score with negative guidance), then rendered along
the same path and written as a sample folder of the same layout (so every eval runs on it).

Conditions (embeddings of the image prior's EfficientNet-Lite0):

- y: the look wanted: the prior's real train frames' mean embedding, or with ``style`` the mean
  embedding of a folder of style images;
- y' (``negative``): "auto" = the mean embedding of the input samples' own frames (the paper's
  negative guidance: away from what the model makes), "none" = the prior's null embedding (plain
  classifier-free guidance), or a folder of images.

Output folder::

    OUT/samples.json, contact_sheet.png, sample_NNNN/...   as ``nfldm sample`` writes them
    OUT/before_after.png     per sample: frames before (top) and after (bottom) along its path
    OUT/refine.json          settings, embeddings used, per-sample checks and timings:
                             depth change (median relative change of rendered depth), multi-view
                             consistency before / after (photometric error of a frame reprojected
                             into the next with rendered depth), SDS log
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from nfldm.data.consistency import reprojection_errors
from nfldm.data.format import DataError
from nfldm.data.tensors import read_safetensors
from nfldm.pipeline.bundle import bundle_renderer, bundled_image_prior, bundled_model
from nfldm.pipeline.generate import SAMPLE_FORMAT, _render_path, write_sample_folder
from nfldm.refine.sd import SD_PREFIX, SDImageVariationsPrior
from nfldm.refine.sds import SDSConfig, sds_refine
from nfldm.refine.train import embed_images, load_image_prior
from nfldm.scene_ae.flythrough import grid_image, pad_to, to_uint8, upscale
from nfldm.scene_ae.load import load_scene_ae
from nfldm.trainer import resolve_device
from nfldm.utils.io import atomic_save_png, atomic_write_json

__all__ = ["refine_samples", "renderer_path", "sample_folders", "folder_images", "real_frames", "view_checks"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SHEET_FRAMES = 6


def sample_folders(src: str | os.PathLike) -> list[Path]:
    """The sample folders of ``src``: an ``nfldm sample`` folder (its ``sample_*``) or one sample
    folder (V.safetensors). DataError naming ``src`` when there is none."""
    src = Path(src)
    if (src / "V.safetensors").is_file():
        return [src]
    found = sorted(p for p in src.glob("sample_*") if (p / "V.safetensors").is_file())
    if not found:
        raise DataError(f"{src}: no sample folders (sample_*/V.safetensors); make them with nfldm sample")
    return found


def folder_images(folder: str | os.PathLike, size: int, limit: int | None = 512) -> np.ndarray:
    """The images of a folder (and its sub-folders; png / jpg / bmp / webp), resized to size x size
    (antialiased; non-square images centre-cropped first) -> uint8 N x size x size x 3 (at most
    ``limit``, evenly spaced). DataError naming the folder or file when none or unreadable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no images (png, jpg, bmp, webp) in it")
    if limit is not None and len(files) > limit:
        files = [files[i] for i in np.linspace(0, len(files) - 1, limit).round().astype(int)]
    out = []
    for p in files:
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                w, h = im.size
                s = min(w, h)
                im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
                out.append(np.asarray(im.resize((size, size), Image.Resampling.LANCZOS)))
        except (OSError, ValueError) as e:
            raise DataError(f"{p}: cannot read the image ({type(e).__name__}: {e})") from None
    return np.stack(out)


def real_frames(src: str | os.PathLike, size: int, limit: int = 512) -> np.ndarray:
    """Real frames for y: a dataset's train frames (dataset.json) or a folder of images, resized to
    size x size -> uint8 N x size x size x 3 (at most ``limit``, evenly spaced)."""
    from nfldm.ldm.evaluate import real_images

    src = Path(src)
    if (src / "dataset.json").is_file():
        imgs = real_images(src, "train", limit)
        if imgs.shape[1:3] != (size, size):
            imgs = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.LANCZOS)) for im in imgs])
        return imgs
    return folder_images(src, size, limit)


def _load_prior(spec: str | None, device) -> dict:
    """The image prior: a run / bundle folder of ``nfldm train image-prior``, the bundle's, or
    ``sd-image-variations:LOCAL_DIR`` (no real-frame embedding: "mean_embedding" None)."""
    if spec is not None and spec.startswith(SD_PREFIX):
        prior = SDImageVariationsPrior(spec[len(SD_PREFIX):], device)
        return {"prior": prior, "mean_embedding": None, "step": None, "source": spec}
    if spec is None:
        run = bundled_image_prior()
    else:
        run = Path(spec)
        if not run.exists():
            raise DataError(f"{run}: no such image-prior run")
    info = load_image_prior(run, device)
    info["source"] = str(run)
    return info


def renderer_path(summary: dict | None, renderer: str | None, src: Path) -> Path:
    """The stage-1 run that renders the samples of ``src``: ``renderer`` if given, else the one their
    samples.json ``summary`` names (renderer, then scene_ae; absolute, or relative to ``src`` or the
    run), else the shipped bundle's renderer."""
    if renderer is not None:
        return Path(renderer)
    for key in ("renderer", "scene_ae"):
        r = (summary or {}).get(key)
        if r:
            for cand in (Path(r), src / r, Path((summary or {}).get("run", "")) / r):
                if (cand / "config.json").is_file():
                    return cand
    b = bundled_model()
    return bundle_renderer(b) or b / "scene_ae"


def view_checks(sae, V0: torch.Tensor, V1: torch.Tensor, bounds, intr, path, views0=None) -> dict:
    """Geometry kept? Rendered depth along ``path`` before (V0) and after (V1): the median relative
    change over pixels with depth in both; and multi-view consistency of each: frame i reprojected
    into frame i + 1 with its rendered depth (``data.consistency``), the mean absolute RGB
    difference of the points whose depth agrees within 3 %."""
    rgb0, d0 = views0 if views0 is not None else _render_path(sae, V0, bounds, intr, path)
    rgb1, d1 = _render_path(sae, V1, bounds, intr, path)
    near = sae.cfg.near
    ok = (d0 > near) & (d1 > near)
    change = float(((d1 - d0).abs() / d0.clamp(min=near))[ok].median()) if ok.any() else float("nan")

    def consistency(rgb, d):
        H, W = rgb.shape[-2:]
        dd = F.interpolate(d[:, None], size=(H, W), mode="nearest")[:, 0]
        sample = {"images": rgb.clamp(0, 1), "depth": dd, "depth_valid": dd > near,
                  "intrinsics": intr.double().expand(len(path), 4), "c2w": path.double()}
        pairs = [(i, i + 1) for i in range(len(path) - 1)]
        _, cols = reprojection_errors(sample, pairs)
        return float(cols.mean()) if len(cols) else float("nan")

    return {"depth_rel_change_median": change, "photometric_reprojection_before": consistency(rgb0, d0),
            "photometric_reprojection_after": consistency(rgb1, d1)}, (rgb1, d1)


def refine_samples(samples: str | os.PathLike, out: str | os.PathLike, prior: str | None = None,
                   negative: str = "auto", style: str | None = None, cfg: SDSConfig | None = None,
                   renderer: str | None = None, num: int | None = None, device: str = "auto",
                   progress: bool = True, embedder: torch.nn.Module | None = None,
                   real: str | None = None) -> dict:
    """Refine the samples of ``samples`` into ``out`` (module docstring); returns refine.json's dict.

    ``real``: a dataset (its train frames) or a folder of images whose mean embedding is y (needed
    by a prior without a stored one: sd-image-variations); ``embedder`` replaces the
    EfficientNet-Lite0 embedding network of nfldm's own prior (tests with a random one)."""
    cfg = cfg or SDSConfig()
    src, out = Path(samples), Path(out)
    folders = sample_folders(src)[:num]
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise ValueError(f"{out}: write the refined samples to a new folder, not into {src}")
    summary_in = json.loads((src / "samples.json").read_text()) if (src / "samples.json").is_file() else None
    dev = resolve_device(device)
    pinfo = _load_prior(prior, dev)
    pri = pinfo["prior"]
    S = 64 if isinstance(pri, SDImageVariationsPrior) else pri.image_size   # the size frames are embedded at
    rpath = renderer_path(summary_in, renderer, src)
    sae = load_scene_ae(rpath, str(dev))

    def embed(imgs: np.ndarray) -> torch.Tensor:
        if hasattr(pri, "embed_images"):         # sd-image-variations: its CLIP image encoder
            return pri.embed_images(imgs).mean(0).to(dev)
        return embed_images(imgs, dev, embedder=embedder).mean(0).to(dev)

    if style is not None:
        y, y_what = embed(folder_images(style, S)), f"style images {style}"
    elif real is not None:
        y, y_what = embed(real_frames(real, S)), f"real frames of {real}"
    elif pinfo["mean_embedding"] is not None:
        y, y_what = pinfo["mean_embedding"], "the prior's real train frames (mean embedding)"
    else:
        raise ValueError(f"the prior {pinfo['source']} stores no real-frame embedding: give --real DATA "
                         "(a dataset or a folder of real frames) or --style IMAGES")
    if negative == "auto":
        frames = [p for f in folders for p in sorted((f / "frames").glob("*.png"))]
        if not frames:
            raise DataError(f"{src}: its samples have no frames (sample_*/frames/*.png) to take y' from")
        imgs = np.stack([np.asarray(Image.open(p).convert("RGB").resize((S, S), Image.Resampling.LANCZOS))
                         for p in frames[:: max(1, len(frames) // 256)]])
        y_neg, neg_what = embed(imgs), f"the input samples' own frames ({len(imgs)})"
    elif negative == "none":
        y_neg, neg_what = None, "none: classifier-free guidance against the null embedding"
    else:
        y_neg, neg_what = embed(folder_images(negative, S)), f"images {negative}"

    out.mkdir(parents=True, exist_ok=True)
    H, W = sae.cfg.image_hw()
    records, sheet_rows, ba_rows, per = [], [], [], []
    bar = tqdm(folders, desc="refining", unit="scene", disable=not progress)
    for k, folder in enumerate(bar):
        t, meta = read_safetensors(folder / "V.safetensors")
        missing = [n for n in ("V", "path", "keyframes", "bounds", "intrinsics") if n not in t]
        if missing:
            raise DataError(f"{folder / 'V.safetensors'}: no {', '.join(missing)} (not a sample of nfldm sample)")
        V0 = t["V"].float()
        if V0.shape[0] != 1 + sae.cfg.feat_dim:
            raise DataError(f"{folder / 'V.safetensors'}: V has {V0.shape[0]} channels, the renderer {rpath} takes "
                            f"{1 + sae.cfg.feat_dim}: a sample of another scene auto-encoder (--renderer)")
        bounds, intr, path, keys = (t[n].float() for n in ("bounds", "intrinsics", "path", "keyframes"))
        start = time.time()
        views0 = _render_path(sae, V0, bounds, intr, path)

        def tick(step, log, _bar=bar):
            if step % 10 == 0 or step == cfg.steps:
                _bar.set_postfix(step=f"{step}/{cfg.steps}", t=f"{log['t']:.0f}")

        V1, logs = sds_refine(V0, bounds, path, intr, sae, pri, y, y_neg, dataclasses.replace(cfg, seed=cfg.seed + k),
                              progress=tick)
        V1 = V1.cpu()
        seconds = time.time() - start
        checks, views1 = view_checks(sae, V0, V1, bounds, intr, path, views0)
        checks = {kk: (v if np.isfinite(v) else None) for kk, v in checks.items()}   # None: nothing to compare
        d = out / folder.name
        m = {**{kk: v for kk, v in meta.items()}, "format": SAMPLE_FORMAT, "refined_from": str(folder.resolve()),
             "refine_steps": str(cfg.steps)}
        record, frames, top = write_sample_folder(d, sae, V1, {}, keys, path, bounds, intr, m, views=views1)
        before = to_uint8(views0[0])
        pick = np.round(np.linspace(0, len(frames) - 1, min(SHEET_FRAMES, len(frames)))).astype(int)
        ba_rows.append(np.concatenate([before[pick], frames[pick]], 0))
        sheet_rows.append(np.concatenate([frames[pick], pad_to(top, H, W)[None]], 0))
        rec = {"index": k, **record, "refined_from": str(folder.resolve()), "seconds": seconds, **checks}
        records.append(rec)
        per.append({"sample": folder.name, "seconds": seconds, **checks,
                    "sds_grad_norm_first_last": [logs[0]["grad_norm"], logs[-1]["grad_norm"]] if logs else None})
    atomic_save_png(out / "contact_sheet.png", grid_image([upscale(r, 2) for r in sheet_rows]))
    atomic_save_png(out / "before_after.png", _before_after(ba_rows))

    def med(key):
        vals = [p[key] for p in per if p[key] is not None]
        return float(np.median(vals)) if vals else None

    result = {"samples": str(src), "out": str(out), "prior": pinfo["source"], "prior_step": pinfo["step"],
              "renderer": str(rpath), "y": y_what, "y_neg": neg_what, "sds": dataclasses.asdict(cfg),
              "device": str(dev), "num": len(per), "per_sample": per,
              "median": {"seconds": med("seconds"), "depth_rel_change": med("depth_rel_change_median"),
                         "photometric_reprojection_before": med("photometric_reprojection_before"),
                         "photometric_reprojection_after": med("photometric_reprojection_after")}}
    summary = dict(summary_in or {"format": SAMPLE_FORMAT})
    summary.update({"num": len(records), "samples": records, "contact_sheet": "contact_sheet.png",
                    "contact_sheet_rows": len(sheet_rows), "refined": {k: v for k, v in result.items()
                                                                        if k not in ("per_sample",)}})
    atomic_write_json(out / "samples.json", summary)
    atomic_write_json(out / "refine.json", result)
    return result


def _before_after(rows: list[np.ndarray]) -> np.ndarray:
    """One block per sample: its before frames over its after frames, blocks stacked."""
    blocks = []
    for r in rows:
        n = len(r) // 2
        top, bottom = np.concatenate(list(r[:n]), 1), np.concatenate(list(r[n:]), 1)
        blocks.append(np.concatenate([top, bottom], 0))
        blocks.append(np.full((4, top.shape[1], 3), 255, np.uint8))
    return upscale(np.concatenate(blocks[:-1], 0), 2)
