"""What the viewer shows: a scene's V with its camera path and the renderer that draws it, read from
whatever the user points ``nfldm view`` at.

``SRC`` may be

- a sample folder (``sample_NNNN/`` with V.safetensors, from ``nfldm sample / edit / extend / refine``),
  or a V file itself (``*.safetensors`` holding ``V``);
- a folder of samples (``nfldm sample --out``): every ``sample_*`` is listed, the first shown;
- a dataset scene folder (transforms.json): encoded by stage 1 (the run's scene-ae) into V;
- a dataset (dataset.json): its scenes listed (test split first), each encoded when chosen;
- an ldm run or a bundle (g/, c/, f/ levels): a first scene is sampled from it when the page opens.

Each is checked up front: a path that is none of these, a file without V, a run missing a stage
raise :class:`~nfldm.data.format.DataError` / ValueError with one line naming the path.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from nfldm.data.format import DataError, read_dataset
from nfldm.data.tensors import read_safetensors
from nfldm.ldm.trajectory import interpolate_path
from nfldm.pipeline.bundle import BUNDLE_FILE, bundle_renderer, bundled_model
from nfldm.pipeline.edit import draw_box
from nfldm.pipeline.generate import topdown_view
from nfldm.pipeline.load import recorded_run
from nfldm.pipeline.refine import renderer_path
from nfldm.scene_ae.load import load_scene_ae
from nfldm.trainer import read_run_config

__all__ = ["ViewScene", "Source", "open_source", "load_item", "is_ldm_run", "topdown_image", "draw_camera", "world_to_map",
           "scene_renderer", "SPLIT_ORDER"]

SPLIT_ORDER = ("test", "val", "train")


@dataclass
class ViewScene:
    """One scene as the viewer holds it.

    V: K x X x Y x Z (channel 0 density per metre, stage-1 units), bounds: 2 x 3 (metres, z up),
    intrinsics: 4 ``[fx, fy, cx, cy]`` for the renderer's H x W, path: N x 4 x 4 and keyframes:
    T x 4 x 4 camera-to-world poses (OpenGL axes, :mod:`nfldm.camera`). ``folder``: the sample or
    scene folder it came from (what edit / extend / refine are given), ``kind``: "sample" or
    "scene"; ``run``: the ldm run that made it (None: unknown, the bundle is used); ``renderer``:
    the stage-1 run that renders it (``sae``: that model, loaded); ``editable``: it holds its latents
    g, c, f (a refined or extended sample does not).
    """

    name: str
    V: Tensor
    bounds: Tensor
    intrinsics: Tensor
    path: Tensor
    keyframes: Tensor
    folder: Path
    kind: str
    renderer: Path
    run: Path | None = None
    editable: bool = False
    info: dict = field(default_factory=dict)
    sae: object = field(default=None, repr=False)   # the loaded ``renderer`` (a SceneAutoEncoder)


@dataclass
class Source:
    """What ``nfldm view SRC`` was given: ``items`` (label, path) the user can switch between (empty
    for a run), ``run``: the ldm run / bundle actions sample with (None: the scene's own, else the
    bundle), ``kind``: "samples", "scene", "dataset" or "run"."""

    path: Path
    kind: str
    items: list[tuple[str, Path]]
    run: Path | None = None


def is_ldm_run(p: Path) -> bool:
    """An ldm run or a bundle: a folder with a g/ level (or bundle.json)."""
    return p.is_dir() and ((p / "g" / "config.json").is_file() or (p / BUNDLE_FILE).is_file())


def _sample_dirs(p: Path) -> list[Path]:
    return sorted(q for q in p.glob("sample_*") if (q / "V.safetensors").is_file())


def _check_run(run: Path) -> None:
    """ValueError naming the run when a level it needs is missing (view needs g, c, f to sample)."""
    missing = [lv for lv in ("g", "c", "f") if not (run / lv / "config.json").is_file()]
    if missing:
        raise ValueError(f"{run}: an ldm run without its {', '.join(missing)} level(s) (no {missing[0]}/config.json); "
                         "nfldm view samples with a full g, c, f run (train it with --level all)")
    rc = read_run_config(run / "g")
    for stage in ("scene_ae", "latent_ae"):
        rec = rc.get(stage) or {}
        where = recorded_run(run, rec) if rec.get("run") else None
        if where is None or not (where / "config.json").is_file():
            raise ValueError(f"{run}: the {stage.replace('_', '-')} run its levels were trained on "
                             f"({where}) is missing")


def open_source(src: str | os.PathLike, run: str | os.PathLike | None = None) -> Source:
    """Classify ``src`` (module docstring). DataError / ValueError with one line naming it when it is
    no scene, a file without V, or a run missing a stage."""
    p = Path(src)
    run_p = None if run is None else Path(run)
    if run_p is not None:
        if not is_ldm_run(run_p):
            raise ValueError(f"{run_p}: not an ldm run or bundle (no g/config.json)")
        _check_run(run_p)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    if p.is_file():
        if p.suffix != ".safetensors":
            raise DataError(f"{p}: not a scene (view takes a sample folder, a V .safetensors file, a folder of "
                            "samples, a dataset or dataset scene, or an ldm run / bundle)")
        _read_v_file(p)                   # checked now: one line if it holds no V
        return Source(p, "samples", [(p.stem, p)], run_p)
    if (p / "V.safetensors").is_file():
        return Source(p, "samples", [(p.name, p)], run_p)
    if is_ldm_run(p):
        if (p / "config.json").is_file() and not (p / "g").is_dir():
            raise ValueError(f"{p}: not an ldm run")
        _check_run(p)
        return Source(p, "run", [], p)
    if (p / "transforms.json").is_file():
        return Source(p, "scene", [(p.name, p)], run_p)
    if (p / "dataset.json").is_file():
        ds = read_dataset(p)
        scenes = sorted(ds.scenes, key=lambda e: (SPLIT_ORDER.index(e.split) if e.split in SPLIT_ORDER else 9, e.name))
        if not scenes:
            raise DataError(f"{p / 'dataset.json'}: lists no scenes")
        return Source(p, "dataset", [(f"{e.split}/{e.name}", Path(e.path)) for e in scenes], run_p)
    dirs = _sample_dirs(p)
    if dirs:
        return Source(p, "samples", [(d.name, d) for d in dirs], run_p)
    if (p / "config.json").is_file():
        try:
            stage = read_run_config(p).get("stage")
        except (ValueError, DataError):
            stage = None
        raise ValueError(f"{p}: a {stage or 'training'} run, not a scene; view an ldm run (g/, c/, f/), a bundle, "
                         "or a sample / scene folder")
    raise DataError(f"{p}: not a scene (no V.safetensors, sample_* folders, transforms.json, dataset.json or "
                    "g/ level in it)")


def _read_v_file(f: Path) -> tuple[dict, dict]:
    try:
        t, meta = read_safetensors(f)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file is one line
        raise DataError(f"{f}: cannot read it as safetensors ({type(e).__name__}: {e})") from None
    if "V" not in t:
        raise DataError(f"{f}: holds no V (a K x X x Y x Z voxel grid); not a sample file")
    V = t["V"]
    if V.dim() != 4 or V.shape[0] < 2:
        raise DataError(f"{f}: V is {tuple(V.shape)}, expected K x X x Y x Z with K >= 2")
    if not bool(torch.isfinite(V.float()).all()):
        raise DataError(f"{f}: V holds NaN / inf values")
    if "bounds" in t and tuple(t["bounds"].shape) != (2, 3):
        raise DataError(f"{f}: bounds is {tuple(t['bounds'].shape)}, expected 2 x 3")
    return t, meta


def _summary_of(folder: Path) -> dict | None:
    for cand in (folder / "samples.json", folder.parent / "samples.json"):
        if cand.is_file():
            try:
                return json.loads(cand.read_text())
            except (OSError, ValueError):
                return None
    return None


def scene_renderer(run: Path | None) -> tuple[Path, Path]:
    """(the renderer to draw decoded V with, the stage-1 run that encodes real scenes) of an ldm run
    or bundle (None: the shipped bundle)."""
    run = Path(run) if run is not None else bundled_model()
    rc = read_run_config(run / "g")
    base = recorded_run(run, rc["scene_ae"])
    return (bundle_renderer(run) or base), base


def _default_path(bounds: Tensor, n: int = 48) -> tuple[Tensor, Tensor]:
    """A slow turn at the box centre, eye height 1.6 m above its floor z=0 (scenes without a path)."""
    from nfldm.camera import pose_from_position_yaw

    centre = (bounds[0] + bounds[1]) / 2
    pos = torch.tensor([float(centre[0]), float(centre[1]), 1.6]).expand(8, 3)
    yaw = torch.linspace(0, 2 * math.pi * 7 / 8, 8)
    keys = pose_from_position_yaw(pos, yaw).float()
    return keys, interpolate_path(keys, n)


def load_item(path: Path, run: Path | None, device: str = "cpu", cache: dict | None = None) -> ViewScene:
    """The scene at ``path`` (a sample folder, a V file or a dataset scene folder). ``run``: the
    ldm run to take the stage-1 model from when the item does not say (None: the bundle).
    ``cache``: loaded stage-1 models by path (shared between calls)."""
    cache = {} if cache is None else cache

    def sae_of(p: Path):
        key = str(Path(p).resolve())
        if key not in cache:
            cache[key] = load_scene_ae(p, device).requires_grad_(False)
        return cache[key]

    path = Path(path)
    if path.is_dir() and (path / "transforms.json").is_file() and not (path / "V.safetensors").is_file():
        return _encode_scene(path, run, sae_of)
    f = path if path.is_file() else path / "V.safetensors"
    if not f.is_file():
        raise DataError(f"{path}: no V.safetensors in it")
    t, meta = _read_v_file(f)
    folder = f.parent
    summary = _summary_of(folder)
    item_run = run
    if item_run is None:
        rec = meta.get("run") or (summary or {}).get("run")
        if rec and is_ldm_run(Path(rec)):
            item_run = Path(rec)
    rpath = renderer_path(summary, None, folder)
    sae = sae_of(rpath)
    V = t["V"].float()
    if V.shape[0] != 1 + sae.cfg.feat_dim:
        raise DataError(f"{f}: V has {V.shape[0]} channels, its renderer {rpath} takes {1 + sae.cfg.feat_dim} "
                        "(a sample of another model)")
    H, W = sae.cfg.image_hw()
    bounds = t["bounds"].float() if "bounds" in t else torch.tensor((summary or {}).get("bounds", [[-8, -8, -2], [8, 8, 6]]),
                                                                    dtype=torch.float32)
    intr = t["intrinsics"].float() if "intrinsics" in t else torch.tensor([W / 2, H / 2, W / 2, H / 2])
    if "path" in t and len(t["path"]) >= 2:
        path_t = t["path"].float()
        keys = t["keyframes"].float() if "keyframes" in t else path_t[torch.linspace(0, len(path_t) - 1, 8).round().long()]
    else:
        keys, path_t = _default_path(bounds)
    if not bool(torch.isfinite(path_t).all()):
        raise DataError(f"{f}: its camera path holds NaN / inf values")
    editable = all(k in t for k in ("g", "c", "f")) and not meta.get("refined_from")
    name = folder.name if f.name == "V.safetensors" else f.stem
    return ViewScene(name, V, bounds, intr, path_t, keys, folder if f.name == "V.safetensors" else f, "sample",
                     rpath, item_run, editable, {k: v for k, v in meta.items() if isinstance(v, (str, int, float))},
                     sae)


@torch.no_grad()
def _encode_scene(path: Path, run: Path | None, sae_of) -> ViewScene:
    """A dataset scene encoded into V by the run's stage 1 (scene-ae), rendered by it."""
    from nfldm.data.loader import scene_item
    from nfldm.scene_ae.evaluate import split_scene
    from nfldm.scene_ae.model import scene_batch

    _, base = scene_renderer(run)
    sae = sae_of(base)
    item = scene_item(path)
    H, W = sae.cfg.image_hw()
    if tuple(item["images"].shape[-2:]) != (H, W):
        raise DataError(f"{path}: frames are {item['images'].shape[-1]}x{item['images'].shape[-2]}, the run's "
                        f"scene-ae ({base}) takes {W}x{H}")
    dev = next(sae.parameters()).device
    batch = scene_batch(item, dev)
    k = sae.cfg.num_input_views            # the inputs stage 1 was trained with (all frames of a shorter scene)
    bi = split_scene(batch, k)[0] if batch["images"].shape[1] > k else batch
    V = sae.encode_batch(bi)["V"][0].float().cpu()
    c2w = item["c2w"].float()
    keys = c2w[torch.linspace(0, len(c2w) - 1, 8).round().long()]
    return ViewScene(path.name, V, item["bounds"].float(), item["intrinsics"][0].float(), c2w, keys, path, "scene",
                     Path(base), run, True, {}, sae)


def world_to_map(xy, bounds: Tensor, size: int) -> tuple[float, float]:
    """World (x, y) metres -> pixel (column, row) of a size x size top-down map (x right, y up)."""
    lo, hi = bounds[0].tolist(), bounds[1].tolist()
    return ((float(xy[0]) - lo[0]) / (hi[0] - lo[0]) * size, (hi[1] - float(xy[1])) / (hi[1] - lo[1]) * size)


def topdown_image(scene: ViewScene, size: int = 192, box=None) -> np.ndarray:
    """The top-down opacity of V with the camera path (:func:`nfldm.pipeline.generate.topdown_view`:
    dark = opaque, x right, y up) as size x size x 3 uint8, ``box`` (x0, y0, x1, y1 metres) outlined
    in orange."""
    img = topdown_view(scene.V, scene.bounds, scene.path, size)
    return img if box is None else draw_box(img, box, scene.bounds, colour=(255, 140, 0))


def draw_camera(img: np.ndarray, camera: Tensor, bounds: Tensor) -> np.ndarray:
    """A copy of the square top-down ``img`` of ``bounds`` with ``camera`` (4 x 4 c2w) as a blue dot
    and its view direction."""
    from PIL import Image, ImageDraw

    size = img.shape[0]
    pic = Image.fromarray(img)
    draw = ImageDraw.Draw(pic)
    c = world_to_map(camera[:2, 3], bounds, size)
    fwd = -camera[:3, 2]
    n = float(torch.linalg.vector_norm(fwd[:2])) or 1.0
    tip = (c[0] + float(fwd[0]) / n * size / 12, c[1] - float(fwd[1]) / n * size / 12)
    draw.line([c, tip], fill=(30, 90, 255), width=2)
    r = max(2.0, size / 64)
    draw.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=(30, 90, 255))
    return np.asarray(pic)
