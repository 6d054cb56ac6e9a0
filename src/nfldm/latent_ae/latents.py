"""The latent folder: (g, c, f) and the camera trajectory of every scene, encoded by a trained
latent auto-encoder from a voxel folder (its writer, reader and format; stage 3 trains on it).

    LATDIR/<scene>.safetensors   g, c, f (those of the folder's latent mode; pre-quantisation for c
                                 and f), traj (the camera trajectory vector), ``bev`` (the scene's
                                 BEV map as a 4 x X x Y condition tensor, :func:`nfldm.data.bev.bev_grid`,
                                 when the dataset scene has one; 4 + 11 channels with its look when
                                 every scene's map has one), metadata: format, version, scene,
                                 split, the latent-ae's weights hash
    LATDIR/index.json            format, version, scenes and splits (turned / mirrored copies name
                                 their source), shapes, per-channel statistics of the train split,
                                 the latent-ae and scene-ae runs behind them, ``bev`` (size and the
                                 train maps' typical floor / ceiling heights) when the files hold maps

Written by :func:`encode_latents` (``nfldm encode-latents``; resumable: scenes already written
with the same latent-ae are skipped), read by :func:`read_latent_index` and
:func:`load_latent_file`.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

from nfldm import camera
from nfldm.data.bev import GRID_CHANNELS, LOOK_CHANNELS, bev_grid, has_look, read_bev_file, scene_bev_file, typical_heights
from nfldm.data.format import DataError, read_dataset
from nfldm.data.tensors import check_finite, peek_safetensors, read_safetensors, scene_file, write_safetensors
from nfldm.latent_ae.config import LATENT_MODES
from nfldm.latent_ae.train import _open_run_on_voxels, _scene_ae_of
from nfldm.runs import config_hash, weights_hash
from nfldm.scene_ae.voxels import dihedral_voxels, load_voxels
from nfldm.utils.io import atomic_write_json, read_json

__all__ = ["LATENT_FORMAT", "LATENT_VERSION", "INDEX_FILE", "AUGMENTS", "encode_latents", "latent_stats",
           "augmented_name", "read_latent_index", "load_latent_file", "latent_mode", "mode_of_shapes"]

LATENT_FORMAT = "nfldm-latents"
LATENT_VERSION = 1
INDEX_FILE = "index.json"


def mode_of_shapes(shapes: dict) -> str:
    """The latent mode ("gcf", "c" or "g") whose latents are the keys of ``shapes``;
    ValueError for any other set."""
    for mode in LATENT_MODES:
        if set(shapes) == set(mode):
            return mode
    raise ValueError(f"latent shapes of {sorted(shapes)}: not one of the latent modes {LATENT_MODES}")


def latent_mode(index: dict) -> str:
    """The latent mode of a latent folder index (``index["latents"]``, "gcf" when absent)."""
    return index.get("latents", "gcf")


def read_latent_index(latdir: str | os.PathLike) -> dict:
    """LATDIR/index.json (DataError naming the file if missing, corrupt or incomplete)."""
    root = Path(latdir)
    path = root / INDEX_FILE
    if not root.is_dir():
        raise DataError(f"{latdir}: latent folder does not exist (make it with nfldm encode-latents)")
    if not path.is_file():
        raise DataError(f"{path}: file is missing (nfldm encode-latents writes it when it has encoded "
                        "every scene; run it again to finish the folder)")
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the latent folder index ({type(e).__name__}: {e})") from e
    if not isinstance(index, dict) or index.get("format") != LATENT_FORMAT:
        raise DataError(f"{path}: not a latent folder index (format "
                        f"{index.get('format') if isinstance(index, dict) else None!r}, expected {LATENT_FORMAT!r})")
    if index.get("version") != LATENT_VERSION:
        raise DataError(f"{path}: latent folder version {index.get('version')!r}, this code reads {LATENT_VERSION}")
    for key in ("scenes", "shapes", "stats", "latent_ae", "scene_ae"):
        if key not in index:
            raise DataError(f"{path}: key {key!r} is missing")
    mode = latent_mode(index)
    if mode not in LATENT_MODES:
        raise DataError(f"{path}: latents {mode!r} is not one of {LATENT_MODES}")
    if set(index["shapes"]) != set(mode):
        raise DataError(f"{path}: the shapes are of {sorted(index['shapes'])}, but the folder's latents are "
                        f"{mode!r}")
    for key in mode:
        if key not in index["stats"]:
            raise DataError(f"{path}: no statistics of {key!r} (the folder has no train scene?)")
    return index


def load_latent_file(path: Path, shapes: dict) -> dict:
    """All tensors of one latent file, checked; DataError naming the file if it is missing,
    corrupt, has the wrong keys / shapes, or holds NaN / inf."""
    t, meta = read_safetensors(path)
    if meta.get("format") != LATENT_FORMAT:
        raise DataError(f"{path}: not a latent file (metadata format {meta.get('format')!r}, expected "
                        f"{LATENT_FORMAT!r})")
    for key in (*shapes, "c2w", "intrinsics", "bounds"):
        if key not in t:
            raise DataError(f"{path}: tensor {key!r} is missing")
    for key in shapes:
        if tuple(t[key].shape) != tuple(shapes[key]):
            raise DataError(f"{path}: {key} has shape {tuple(t[key].shape)}, the folder index says "
                            f"{tuple(shapes[key])}")
    n = t["c2w"].shape[0] if t["c2w"].dim() == 3 else 0
    if n < 1 or tuple(t["c2w"].shape) != (n, 4, 4) or tuple(t["intrinsics"].shape) != (n, 4) \
            or tuple(t["bounds"].shape) != (2, 3):
        raise DataError(f"{path}: bad camera shapes (c2w {tuple(t['c2w'].shape)}, intrinsics "
                        f"{tuple(t['intrinsics'].shape)}, bounds {tuple(t['bounds'].shape)})")
    if "cond" in t and t["cond"].dim() != 2:
        raise DataError(f"{path}: cond must be L x cond_dim, got {tuple(t['cond'].shape)}")
    if "bev" in t and (t["bev"].dim() != 3 or t["bev"].shape[0] not in (GRID_CHANNELS, GRID_CHANNELS + LOOK_CHANNELS)
                       or t["bev"].shape[1] != t["bev"].shape[2]):
        raise DataError(f"{path}: bev must be {GRID_CHANNELS} (or {GRID_CHANNELS + LOOK_CHANNELS} with the look) x S x S, "
                        f"got {tuple(t['bev'].shape)}")
    for key, v in t.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise DataError(f"{path}: {key} holds NaN or infinite values")
    if not bool((t["bounds"][1] > t["bounds"][0]).all()):
        raise DataError(f"{path}: bounds {t['bounds'].tolist()} are empty")
    return {k: (v.float() if v.is_floating_point() else v) for k, v in t.items()}


AUGMENTS = {1: [(0, False)], 4: [(k, False) for k in range(4)],
            8: [(k, f) for f in (False, True) for k in range(4)]}


def augmented_name(name: str, k: int, flip: bool) -> str:
    """Name of a dihedral copy of a scene: the name itself for (0, False), else
    ``<name>_d<k>`` (rotated k x 90 degrees) or ``<name>_d<k>m`` (mirrored, then rotated)."""
    return name if (k, flip) == (0, False) else f"{name}_d{k}{'m' if flip else ''}"


def _dihedral_scene(vox: dict, k: int, flip: bool, path: Path) -> dict:
    """A voxel scene (load_voxels) turned by ``camera.dihedral_matrix(k, flip)``: V and the
    poses together. DataError naming ``path`` when the box is not symmetric about the z axis
    with equal x and y extents (the transform would not map it onto itself)."""
    lo, hi = vox["bounds"][0], vox["bounds"][1]
    X, Y = vox["V"].shape[1:3]
    if not (torch.allclose(lo[:2], -hi[:2], atol=1e-4) and abs(float(hi[0] - hi[1])) < 1e-4 and X == Y):
        raise DataError(f"{path}: cannot augment a scene whose box {vox['bounds'].tolist()} (grid "
                        f"{X} x {Y}) is not centred on the z axis with equal x and y sides")
    M = camera.dihedral_matrix(k, flip)
    out = {**vox, "V": dihedral_voxels(vox["V"], k, flip), "c2w": camera.transform_poses(vox["c2w"], M)}
    if "bev" in vox:        # the map's [x, y] footprint turns with the grid's
        out["bev"] = dihedral_voxels(vox["bev"][..., None], k, flip)[..., 0]
    return out


def _scene_maps(data: str | os.PathLike) -> dict[str, Path]:
    """{scene: its BEV file} of the dataset a voxel folder was made from (empty when the
    dataset is gone or its scenes have no maps)."""
    try:
        ds = read_dataset(data)
    except DataError:
        return {}
    out = {}
    for entry in ds.scenes:
        try:
            path = scene_bev_file(entry.path)
        except DataError:
            path = None
        if path is not None:
            out[entry.name] = path
    return out


def encode_latents(run: str | os.PathLike, voxels: str | os.PathLike, out: str | os.PathLike,
                   device: str = "auto", progress: bool = True, augment: int = 1,
                   stats_from: str | os.PathLike | None = None, refresh_maps: bool = False) -> dict:
    """(g, c, f) of every scene of a voxel folder, for stage 3.

    ``augment`` 4 or 8 also encodes every TRAIN scene turned by 90, 180 and 270 degrees about
    the vertical axis (and, with 8, mirrored) as extra train scenes: the voxel grid and the
    camera poses are transformed together (``dihedral_voxels``, ``camera.dihedral_matrix``),
    which is exact for the symmetric, axis-aligned scene box, and encoded again (latents of
    a turned grid are not a turned latent grid). Test scenes are never augmented.

    Writes OUT/<scene>.safetensors with g (g_dim,), c (c_ch x X/d x Y/d x Zc) and f
    (f_ch x X x Y) BEFORE quantisation (g = mu of the posterior), the camera trajectory
    (c2w N x 4 x 4, intrinsics N x 4), bounds 2 x 3 and input_ids, and, when every scene of
    the voxel folder's dataset has a BEV map (ViZDoom), the map as ``bev`` (4 x X x Y,
    :func:`~nfldm.data.bev.bev_grid` at the voxel grid's footprint; turned with the scene for
    augmented copies); and OUT/index.json with
    the scenes and splits, the latent mode (``latents``: "gcf", "c" or "g"), the latent
    shapes and per-channel mean / std of each latent over the train split. An ablation run
    (``latents`` "c" or "g") writes only its latents. Resumable (files of the same latent-ae
    run that read are skipped) and atomic. Returns {"out", "encoded", "skipped", "scenes"}.

    ``stats_from``: another latent folder of the same latent-ae whose statistics this one's
    index keeps instead of its own (e.g. an ``augment`` 4 copy of a folder whose levels were
    trained: a level retrained on the copy then standardises as they do, and combines with
    them in one run; the loader requires one set of statistics for all levels), or an ldm run
    or bundle, whose levels' configs hold the statistics of the folder they were trained on
    (the data encoded again for the shipped bundle: ``--run`` its ``latent_ae``).

    The maps carry the look (``bev`` 15 x X x Y, ``bev_grid(..., look=True)``) when every
    scene's bev.npz has one (``nfldm data add-look``). ``refresh_maps``: files already encoded
    get their ``bev`` written again from the dataset's current maps (their latents kept, nothing
    encoded): how a folder encoded before ``add-look`` gains the look.
    """
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {sorted(AUGMENTS)}, got {augment}")
    index, rc, lae = _open_run_on_voxels(run, voxels, device)
    dev = next(lae.parameters()).device
    lae_id = {"run": str(Path(run).resolve()), "config_hash": config_hash(rc["model"]),
              "weights_hash": weights_hash(lae)}
    shapes = {k: list(v) for k, v in lae.latent_shapes.items()}
    kept_stats = None
    if stats_from is not None:
        other, where = _stats_source(stats_from)
        if other["latent_ae"]["weights_hash"] != lae_id["weights_hash"] or other.get("shapes") != shapes:
            raise DataError(f"{where}: made with another latent-ae than {run}; its statistics would mean something "
                            "else")
        kept_stats = other["stats"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    encoded = skipped = 0
    scenes = []
    jobs = [(s, rot, flip) for s in index["scenes"]
            for rot, flip in (AUGMENTS[augment] if s["split"] == "train" else AUGMENTS[1])]
    maps = _scene_maps(index["data"])
    if not all(s["name"] in maps for s in index["scenes"]):
        maps = {}           # all or none: a folder's scenes all carry a map, or none does
    map_size = int(index["grid"][0])        # the maps at the voxel grid's X x Y footprint
    look = bool(maps) and all(has_look(read_bev_file(p)) for p in maps.values())

    def scene_map(name: str, rot: int, flip: bool):
        bev = bev_grid(read_bev_file(maps[name]), map_size, look=look)
        return bev if (rot, flip) == (0, False) else dihedral_voxels(bev[..., None], rot, flip)[..., 0]

    source = (None, None)   # (name, voxels) of the last scene read: its copies come in a row
    for s, rot, flip in tqdm(jobs, desc="encoding latents", unit="scene", disable=not progress):
        name = augmented_name(s["name"], rot, flip)
        path = scene_file(out, name)
        entry = {"name": name, "split": s["split"], "file": path.name, "num_frames": s.get("num_frames")}
        if (rot, flip) != (0, False):
            entry.update(source=s["name"], dihedral=[rot, flip])
        scenes.append(entry)
        if path.exists():
            try:
                meta, fshapes = peek_safetensors(path)
            except DataError as e:
                warnings.warn(f"{e}; encoding it again")
                meta = None
            if meta is not None:
                if meta.get("format") != LATENT_FORMAT or meta.get("lae_weights_hash") != lae_id["weights_hash"]:
                    raise DataError(f"{path}: made by another latent-ae run or weights; encode into a new folder")
                if any(tuple(fshapes.get(k, ())) != tuple(v) for k, v in shapes.items()):
                    raise DataError(f"{path}: latent shapes {fshapes} differ from {shapes}")
                if refresh_maps and maps:
                    t, meta = read_safetensors(path)
                    write_safetensors(path, {**t, "bev": scene_map(s["name"], rot, flip)}, meta)
                skipped += 1
                continue
        if source[0] != s["name"]:
            vox = load_voxels(voxels, s["name"], index)
            if maps:
                vox["bev"] = scene_map(s["name"], 0, False)
            source = (s["name"], vox)
        vox = source[1]
        if (rot, flip) != (0, False):
            vox = _dihedral_scene(vox, rot, flip, scene_file(voxels, s["name"]))
        with torch.no_grad():
            enc = lae.encode(vox["V"][None].to(dev))
        lat = {k: enc["g_mu" if k == "g" else k][0].cpu() for k in lae.latent_names}
        check_finite(f"scene {name}", **lat)
        extra = {"bev": vox["bev"]} if "bev" in vox else {}
        write_safetensors(path, {**lat, "c2w": vox["c2w"], "intrinsics": vox["intrinsics"],
                                 "bounds": vox["bounds"], "input_ids": vox["input_ids"], **extra},
                          {"format": LATENT_FORMAT, "version": LATENT_VERSION, "scene": name,
                           "split": s["split"], "lae_config_hash": lae_id["config_hash"],
                           "lae_weights_hash": lae_id["weights_hash"]})
        encoded += 1
    stats = kept_stats if kept_stats is not None else latent_stats(
        out, [s["name"] for s in scenes if s["split"] == "train"], progress)
    bev = {}
    if maps:
        train = [read_bev_file(maps[s["name"]]) for s in index["scenes"] if s["split"] == "train"]
        bev = {"bev": {"channels": GRID_CHANNELS + (LOOK_CHANNELS if look else 0), "look": look, "size": map_size,
                       "typical_heights": list(typical_heights(train)) if train else [0.0, 3.5]}}
    atomic_write_json(out / INDEX_FILE, {
        "format": LATENT_FORMAT, "version": LATENT_VERSION, "latent_ae": lae_id,
        "voxels": str(Path(voxels).resolve()), "data": index["data"], "scene_ae": _scene_ae_of(index),
        "quantizer": lae.cfg.quantizer, "pre_quantisation": True, "latents": lae.cfg.latents, "shapes": shapes,
        "augment": augment, **bev,
        **({"stats_from": str(Path(stats_from).resolve())} if stats_from is not None else {}),
        "scenes": scenes,
        "stats": stats})
    return {"out": str(out), "encoded": encoded, "skipped": skipped, "scenes": len(scenes)}


def _stats_source(path: str | os.PathLike) -> tuple[dict, Path]:
    """The latent statistics to keep (``encode_latents`` ``stats_from``) and the file they come
    from: a latent folder's index.json, or the config of an ldm run's (or a bundle's) level, whose
    ``stats``, ``shapes`` and ``latent_ae`` are those of the folder it was trained on (how a lost
    latent folder is encoded again for the shipped bundle's levels)."""
    path = Path(path)
    if (path / INDEX_FILE).is_file():
        return read_latent_index(path), path / INDEX_FILE
    for lv in ("g", "c", "f"):
        cfg = path / lv / "config.json"
        if cfg.is_file():
            rc = read_json(cfg, "ldm level config", DataError)
            if rc.get("stage") != "ldm" or not all(k in rc for k in ("stats", "shapes", "latent_ae")):
                raise DataError(f"{cfg}: not the config of an ldm level (no latent statistics)")
            return rc, cfg
    raise DataError(f"{path}: neither a latent folder ({INDEX_FILE}) nor an ldm run or bundle (g/config.json)")


def latent_stats(latdir: Path, names: list[str], progress: bool = True) -> dict:
    """Per-channel mean and std of g (per dimension), c and f (per channel, over all
    positions) over the given (train) scenes of a latent folder (those of g, c, f the files
    hold)."""
    if not names:
        return {}
    sums: dict[str, list] = {}
    for name in tqdm(names, desc="latent statistics", unit="scene", disable=not progress):
        t, _ = read_safetensors(scene_file(latdir, name))
        for k in ("g", "c", "f"):
            if k not in t:
                continue
            x = t[k].double()
            x = x[:, None] if k == "g" else x.flatten(1)            # channels x positions
            s = sums.setdefault(k, [0, torch.zeros(len(x), dtype=torch.float64), torch.zeros(len(x), dtype=torch.float64)])
            s[0] += x.shape[1]
            s[1] += x.sum(1)
            s[2] += (x ** 2).sum(1)
    out = {"split": "train", "num_scenes": len(names)}
    for k, (n, s1, s2) in sums.items():
        mean = s1 / n
        out[k] = {"mean": mean.tolist(), "std": (s2 / n - mean ** 2).clamp(min=0).sqrt().tolist()}
    return out
