"""Generating scenes with a whole pipeline: sample latents g -> c -> f (stage 3), decode them to V
(stage 2), render V along the sampled trajectory (stage 1), and write the sample folder.

    psi_g: [g, traj] ~ p(g, traj | cond)
    psi_c: c ~ p(c | g, cond)            (g: the sampled one)
    psi_f: f ~ p(f | g, c, cond)         (g, c: the sampled ones)
    un-standardise -> latent-ae decode_latents (quantise, decode) -> V
    decode traj -> camera keyframes -> smooth path -> stage-1 render of V

Ablations (docs/ldm.md): coarse-only runs sample traj ~ psi_g, c ~ psi_c (unconditional) and
decode c alone; global-only runs sample [g, traj] ~ psi_g and decode g alone.

Output folder (``sample(out=DIR)``)::

    DIR/samples.json             settings, runs, per-sample summary
    DIR/contact_sheet.png        one row per sample (the first 64): frames along the path + top-down
                                 opacity map with the path
    DIR/sample_NNNN/frames/frame_MMMM.png   RGB frames along the sampled path
    DIR/sample_NNNN/flythrough.mp4          RGB | depth (GIF if ffmpeg is unavailable)
    DIR/sample_NNNN/V.safetensors           V (float16, stage-1 units), g, c, f (those the run
                                            has), keyframes, path, bounds, intrinsics; the
                                            scene's look psi_g sampled (``look``, 10: levels
                                            trained with scene_look)
    DIR/sample_NNNN/mesh.ply, mesh.glb      marching cubes of the density (world units)
    DIR/sample_NNNN/trajectory.json         nerfstudio camera-path style
    DIR/sample_NNNN/bev.npz, map.png        conditional samples: the map given, and a picture of it
                                            beside the top-down view of the sample
    DIR/sample_NNNN/condition.json          conditional samples: the map's source, edits, the scene
                                            whose camera path was followed

Every file is written atomically.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from nfldm.data.bev import bev_grid, bev_image, has_look, scene_look, write_bev
from nfldm.data.format import DataError
from nfldm.data.tensors import read_safetensors, scene_file, write_safetensors
from nfldm.latent_ae.latents import load_latent_file, read_latent_index
from nfldm.ldm.data import LatentStats
from nfldm.ldm.evaluate import top_down_opacity
from nfldm.ldm.sample import check_temperature, level_guidance, render_path, sample_latents
from nfldm.ldm.trajectory import decode_trajectory, encode_trajectory, fov_degrees
from nfldm.ldm.load import load_level
from nfldm.pipeline.bundle import bundle_renderer, bundle_unconditional_c, bundled_bev_model, bundled_model
from nfldm.pipeline.load import load_stages, recorded_run
from nfldm.pipeline.maps import SceneCondition, scene_path
from nfldm.scene_ae.config import image_size_record
from nfldm.scene_ae.flythrough import depth_to_rgb, grid_image, pad_to, to_uint8, upscale
from nfldm.scene_ae.load import load_scene_ae, makes_voxels_of
from nfldm.scene_ae.render import sample_grid
from nfldm.utils.io import atomic_save_png, atomic_write_bytes, atomic_write_json, read_json
from nfldm.utils.video import write_video

__all__ = ["sample", "LOOK_GUIDANCE", "LOOK_GUIDANCE_FROM", "MAP_C_TEMPERATURE", "MAP_GUIDANCE", "MAP_GUIDANCE_LEVELS", "read_condition", "map_heights", "load_pipeline", "surface_level", "density_mesh", "camera_path_json", "SAMPLE_FORMAT", "topdown_view",
           "write_sample_folder"]

SAMPLE_FORMAT = "nfldm-sample"
SHEET_MAX_ROWS = 64     # the contact sheet shows the first 64 samples
# guidance on the map's look for levels trained with bev_look (nfldm sample --look-guidance): measured on
# the release model's 32 test maps, 3 closes 31 % of the paired-LPIPS gap at the unconditional FID, 6
# 35 % at 3 points of FID (docs/ldm.md "The map's look")
LOOK_GUIDANCE = 3.0
LOOK_GUIDANCE_FROM = 500    # look guidance at the timesteps t >= this (of 1000) only (docs/notes/2026-12-06-wide-psi-c-in-8-bits.md)
# classifier-free guidance on the map (nfldm sample --guidance) when none is given, at psi_c only: on every
# test scene it lowers paired LPIPS at the same FID, and map guidance at psi_g / psi_f buys nothing
# (docs/notes/2026-12-06-bev-gaps-at-the-protocols-size.md, docs/notes/2026-12-06-map-guidance-by-default.md)
MAP_GUIDANCE = 2.0
MAP_GUIDANCE_LEVELS = "c"
# the std of the noise psi_c starts from with a map (nfldm sample --c-temperature; without a map 1)
MAP_C_TEMPERATURE = 1.0
# with a map and a bundle's BEV levels, the bundle's unconditional psi_c takes psi_c's steps at the
# timesteps t < this (of 1000; the last 5 of DPM-Solver++ 20): the map sets layout and look at high
# noise, and costs realism (FID) at low noise (docs/notes/2026-12-06-map-guidance-by-default.md,
# docs/notes/2026-12-06-low-noise-hand-over.md)
MAP_HAND_OVER = 250


# ----------------------------------------------------------------------------------------
# Mesh, camera path, pictures


def surface_level(bounds, grid_shape) -> float:
    """The density (per metre) at which one voxel length has opacity 1/2: ln 2 / (mean voxel
    edge), for a grid of ``grid_shape`` (X, Y, Z) over ``bounds`` (2 x 3, tensor or array).
    The mesh level of :func:`density_mesh` and the "occupied" threshold of the benchmarks."""
    b = np.asarray(bounds.detach().cpu().double() if isinstance(bounds, Tensor) else bounds, dtype=np.float64)
    size = (b[1] - b[0]) / np.asarray(grid_shape, dtype=np.float64)
    return math.log(2.0) / float(size.mean())


def density_mesh(V: Tensor, bounds: Tensor, level: float | None = None, colour: bool = True):
    """Marching cubes of V's density channel, in world units. Returns (trimesh.Trimesh, level).

    V: K x X x Y x Z (channel 0 sigma per metre; with ``colour`` and K >= 4, channels 1-3 are
    taken as the colour in [-1, 1], as stage 1 stores it with ``rgb_features`` (``2 rgb - 1``;
    exact for ``feature_pooling="occupancy"``, scaled by the occupancy for "mean"), and
    sampled at the vertices), bounds 2 x 3. ``level`` (per metre):
    default ln 2 / (mean voxel edge), the density at which one voxel length has opacity 1/2.
    The grid is padded with one layer of empty voxels, so surfaces at the box edge are
    closed. Voxel i's centre is lo + (i + 1/2) * size (the renderer's convention). A level
    the density never crosses gives an empty mesh (with a warning).
    """
    import trimesh
    from skimage.measure import marching_cubes


    sigma = V[0].double().cpu().numpy()
    lo, hi = bounds[0].double().cpu().numpy(), bounds[1].double().cpu().numpy()
    size = (hi - lo) / np.array(sigma.shape)
    if level is None:
        level = surface_level(bounds, sigma.shape)
    padded = np.pad(sigma, 1)
    if not padded.min() < level < padded.max():
        warnings.warn(f"the density never reaches the mesh level {level:.3g} /m (max {padded.max():.3g}); "
                      "writing an empty mesh")
        return trimesh.Trimesh(vertices=np.zeros((0, 3)), faces=np.zeros((0, 3), dtype=np.int64)), float(level)
    verts, faces, normals, _ = marching_cubes(padded, level=level, spacing=tuple(size))
    verts = verts - size + lo + 0.5 * size
    colours = None
    if colour and V.shape[0] >= 4:
        pts = torch.from_numpy(verts).float()[None, :, None]                    # 1 x n x 1 x 3
        rgb = sample_grid(V[None, 1:4].float().cpu(), bounds[None].float().cpu(), pts)[0, :, :, 0]
        colours = (((rgb.T + 1) / 2).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    # marching_cubes orients faces so that normals point towards lower values (outwards)
    mesh = trimesh.Trimesh(vertices=verts, faces=faces[:, ::-1], vertex_normals=-normals,
                           vertex_colors=colours, process=False)
    return mesh, float(level)


def camera_path_json(path: Tensor, keyframes: Tensor, intrinsics: Tensor, H: int, W: int, fps: int,
                     bounds: Tensor) -> dict:
    """nerfstudio camera-path style: ``camera_path`` = list of {camera_to_world (4 x 4
    row-major, flattened; OpenGL axes as nerfstudio), fov (vertical, degrees), aspect}."""
    fx, fy = float(intrinsics[0]), float(intrinsics[1])
    fov = fov_degrees(fy, H)
    return {
        "camera_type": "perspective", "render_height": H, "render_width": W, "fps": fps,
        "seconds": len(path) / fps, "smoothness_value": 0.0, "is_cycle": False,
        "camera_path": [{"camera_to_world": p.reshape(-1).tolist(), "fov": fov, "aspect": W / H}
                        for p in path.double()],
        "nfldm": {"keyframes": [k.reshape(-1).tolist() for k in keyframes.double()],
                  "intrinsics": [float(x) for x in intrinsics], "fov_x": fov_degrees(fx, W),
                  "bounds": bounds.tolist(), "units": "metres, world z up"},
    }


def topdown_view(V: Tensor, bounds: Tensor, path: Tensor, size: int) -> np.ndarray:
    """Top-down opacity 1 - exp(-sum_z sigma dz) as a size x size RGB image (x to the right,
    y up; dark = opaque), the camera path drawn in red, its start as a red dot."""
    from PIL import Image, ImageDraw

    op = top_down_opacity(V.cpu(), bounds.cpu()).numpy()                  # X x Y
    grey = (255 * (1 - op.T[::-1])).astype(np.uint8)                      # rows = -y
    img = Image.fromarray(np.ascontiguousarray(grey)).convert("RGB").resize((size, size), Image.NEAREST)
    lo, hi = bounds[0].cpu().numpy(), bounds[1].cpu().numpy()
    p = path[:, :3, 3].cpu().numpy()
    pts = [(float((q[0] - lo[0]) / (hi[0] - lo[0]) * size), float((hi[1] - q[1]) / (hi[1] - lo[1]) * size))
           for q in p]
    draw = ImageDraw.Draw(img)
    draw.line(pts, fill=(220, 30, 30), width=max(1, size // 48))
    r = max(1.5, size / 40)
    draw.ellipse([pts[0][0] - r, pts[0][1] - r, pts[0][0] + r, pts[0][1] + r], fill=(220, 30, 30))
    return np.asarray(img)


# ----------------------------------------------------------------------------------------
# The pipeline


def load_pipeline(run: str | os.PathLike, device: str = "auto", renderer: str | os.PathLike | None = None) -> dict:
    """The ldm levels, the latent-ae and the scene-ae an ldm run records (checked against the
    weights hashes recorded when the latents were made). ``renderer``: another scene-ae run to
    render V with, which must be a renderer fine-tuned from the recorded one (its V unchanged:
    ``nfldm train scene-ae --init-from ... --set train_parts=render``)."""
    pipe = load_stages(run, device)
    rc, dev, sae = pipe["config"], pipe["device"], pipe["scene_ae"]
    if renderer is None:         # a bundle may carry a fine-tuned renderer (nfldm.pipeline.bundle.add_renderer)
        renderer = bundle_renderer(run)
    base = sae
    if renderer is not None:
        sae = load_scene_ae(renderer, str(dev))
        if not makes_voxels_of(renderer, sae, rc["scene_ae"]):
            raise DataError(f"{renderer}: not a renderer of the scene-ae behind {run} "
                            f"({recorded_run(run, rc['scene_ae'])}): it was not "
                            "fine-tuned from it with train_parts=render, or its encoder changed")
    return {**pipe, "sae": sae, "scene_ae": base, "renderer": None if renderer is None else str(renderer),
            "stats": LatentStats(rc["stats"])}


@torch.no_grad()
def _render_path(sae, V: Tensor, bounds: Tensor, intr: Tensor, path: Tensor, chunk: int = 16):
    """RGB N x 3 x H x W and depth N x h x w of V along a path (N x 4 x 4)."""
    dev = next(sae.parameters()).device
    H, W = sae.cfg.image_hw()
    rgbs, depths = [], []
    for i in range(0, len(path), chunk):
        p = path[i:i + chunk].to(dev)
        r = sae.render(V[None].to(dev), bounds[None].to(dev), intr.to(dev).expand(1, len(p), 4), p[None],
                       H, W, chunk=8192)
        rgbs.append(r["rgb"][0].float().cpu())
        depths.append(r["depth"][0].float().cpu())
    return torch.cat(rgbs), torch.cat(depths)



def write_sample_folder(d: Path, sae, V: Tensor, latents: dict, keys: Tensor, path: Tensor, bounds: Tensor,
                        intr: Tensor, meta: dict, fps: int = 12, mesh_level: float | None = None,
                        views: tuple[Tensor, Tensor] | None = None) -> tuple[dict, np.ndarray, np.ndarray]:
    """Write one sample folder ``d`` (layout in the module docstring): V (K x X x Y x Z) rendered
    by ``sae`` along ``path`` (N x 4 x 4; ``views`` = (rgb N x 3 x H x W, depth N x h x w) if
    already rendered), frames, fly-through, V.safetensors (V, the raw ``latents``, keyframes,
    path, bounds, intrinsics; ``meta`` in its header), meshes, trajectory.json. Returns (the
    sample's record for samples.json, the frames N x H x W x 3 uint8, the top-down view: square,
    min(H, W) a side)."""
    H, W = sae.cfg.image_hw()
    scale = max(1, 256 // H)
    rgb, depth = views if views is not None else _render_path(sae, V, bounds, intr, path)
    frames = to_uint8(rgb)
    for k, fr in enumerate(frames):
        atomic_save_png(d / "frames" / f"frame_{k:04d}.png", fr, compress_level=1)
    dep = torch.nn.functional.interpolate(depth[:, None], size=(H, W), mode="nearest")[:, 0]
    video = np.concatenate([upscale(frames, scale), upscale(depth_to_rgb(dep), scale)], 2)
    video_path = write_video(d / "flythrough.mp4", list(video), fps)
    V16 = V.half()
    if not bool(torch.isfinite(V16).all()):
        raise RuntimeError(f"{d}: V exceeds the float16 range")
    write_safetensors(d / "V.safetensors",
                      {"V": V16, **latents, "keyframes": keys, "path": path, "bounds": bounds, "intrinsics": intr},
                      meta)
    use_colour = bool(getattr(sae.cfg, "rgb_features", False))
    mesh, level = density_mesh(V, bounds, mesh_level, colour=use_colour)
    atomic_write_bytes(d / "mesh.ply", mesh.export(file_type="ply"))
    atomic_write_bytes(d / "mesh.glb", mesh.export(file_type="glb"))
    atomic_write_json(d / "trajectory.json", camera_path_json(path, keys, intr, H, W, fps, bounds))
    top = topdown_view(V, bounds, path, min(H, W))
    record = {"folder": d.name, "video": video_path.name, "mesh_level": level,
              "mesh_vertices": int(len(mesh.vertices)), "mesh_faces": int(len(mesh.faces)),
              "max_density": float(V[0].max()), "occupied_fraction": float((V[0] > level).float().mean())}
    return record, frames, top

def map_heights(run: str | os.PathLike | None, floor: float | None = None,
                ceiling: float | None = None) -> tuple[float, float]:
    """Floor and ceiling heights (metres) for floor plans: those given, else the typical ones of the
    maps the run's BEV levels were trained on (its g level's config), else 0 and 3.5."""
    typical = (0.0, 3.5)
    try:
        g = Path(bundled_bev_model() if run is None else run) / "g" / "config.json"
        typical = tuple(read_json(g, "ldm level config", DataError).get("bev", {}).get("typical_heights", typical))
    except (ValueError, DataError):
        pass
    return (typical[0] if floor is None else floor, typical[1] if ceiling is None else ceiling)


def read_condition(path: str | os.PathLike) -> Tensor:
    """Condition tokens from a safetensors file's tensor ``cond`` (L x cond_dim, or N x L x cond_dim
    per sample), as float; DataError naming the file if it is unreadable or has no ``cond``."""
    tensors, _ = read_safetensors(Path(path))
    if "cond" not in tensors:
        raise DataError(f"{path}: no tensor named 'cond' (L x cond_dim or N x L x cond_dim)")
    return tensors["cond"].float()


def hand_over_source(run: str | os.PathLike, hand_over: int | None, low_noise_c: str | os.PathLike | None,
                     maps: bool) -> tuple[Path | None, int]:
    """(the c level that takes psi_c's steps at t < T, T) for sampling ``run``: ``low_noise_c`` if given,
    else, with ``maps`` and a bundle's BEV levels, the bundle's unconditional c; T = ``hand_over``, or
    None: :data:`MAP_HAND_OVER` when there is such a level, else 0 (then no level). ValueError for
    T < 0, or T > 0 with no level to hand over to."""
    src = Path(low_noise_c) if low_noise_c is not None else (bundle_unconditional_c(run) if maps else None)
    T = (MAP_HAND_OVER if src is not None else 0) if hand_over is None else int(hand_over)
    if T < 0 or T > 0 and src is None:
        raise ValueError(f"hand_over must be >= 0 and needs a low-noise c level (low_noise_c) to hand over to, "
                         f"got {T} with {'none' if src is None else src}")
    return (src if T > 0 else None), T


def sample(run: str | os.PathLike | None, num: int = 4, sampler: str = "ddim", steps: int = 50, seed: int = 0,
           out: str | os.PathLike | None = None, cond: Tensor | None = None, guidance: float | None = None,
           device: str = "auto", progress: bool = True, num_frames: int = 48, fps: int = 12,
           mesh_level: float | None = None, batch_size: int = 8, sheet_frames: int = 6,
           g_guidance: float = 1.0, renderer: str | os.PathLike | None = None,
           conditions: list[SceneCondition] | None = None, path_from_scene: bool = False,
           own_latents: str | os.PathLike | None = None, own_g: str | os.PathLike | None = None,
           own_c: bool = False, look_guidance: float | None = None, own_look: bool = False,
           look_guidance_from: int | None = None, guidance_levels: str | None = None,
           hand_over: int | None = None, low_noise_c: str | os.PathLike | None = None, own_c_from: int = 0,
           c_temperature: float | None = None) -> dict:
    """Generate ``num`` scenes with the ldm run ``run`` (None: the bundle the package ships) and
    write them to ``out`` (layout in the module docstring). ``renderer``: a fine-tuned renderer of the run's scene-ae to render with
    (:func:`load_pipeline`). ``cond``: condition tokens (L x cond_dim for all samples, or
    num x L x cond_dim) with classifier-free guidance scale ``guidance`` at the levels named in
    ``guidance_levels`` (some of "gcf"; the others unguided). Neither given: with a map
    :data:`MAP_GUIDANCE` at :data:`MAP_GUIDANCE_LEVELS`, else 1; ``guidance`` alone: every level.
    ``g_guidance``: guidance
    on g for the levels trained with g_drop_prob (docs/notes/2026-11-26-psi-c-on-a-gpu.md "Guidance on g"); ``look_guidance``:
    guidance on the map's look for the levels trained with ``bev_look`` (docs/ldm.md "The map's
    look"), and on the scene's look for levels trained with ``scene_look`` (None: :data:`LOOK_GUIDANCE`
    with a map, 1 without one: on the scene's look 3 was measured worse than none), applied at the
    diffusion timesteps t >= ``look_guidance_from`` only (None: :data:`LOOK_GUIDANCE_FROM` with a
    map, 0 without one). Returns the summary written to ``out``/samples.json.

    ``conditions`` (:func:`nfldm.pipeline.maps.conditions_from`): ``num`` samples per condition,
    each conditioned on its BEV map (levels trained with ``bev``; None: the bundle's ``bev/``
    levels) with guidance ``guidance``; each sample folder keeps its map (bev.npz, map.png beside
    the top-down view) and condition.json. ``path_from_scene``: psi_g samples g given the
    condition scene's own camera trajectory and the frames are rendered at the scene's own
    cameras (frame k = real frame k: ``nfldm eval generation`` compares them). ``own_latents``: a
    latent folder of the run's latent-ae; instead of sampling, each condition scene's own latents
    are decoded (the upper bound of generation). ``own_g``: such a latent folder; psi_c and psi_f
    sample given each condition scene's own g and path (needs ``path_from_scene``): what the
    global latent carries of a scene, beside what the map carries. ``own_c``: with ``own_g``, the
    scene's own c too; only psi_f samples (what the fine level alone costs). ``own_c_from`` T > 0:
    with ``own_c``, psi_c does run, from the scene's own c noised to timestep T (of 1000; SDEdit): a
    variation of the real scene that keeps what its c holds above that noise level (which noise
    band of psi_c costs what). ``own_look``: with
    ``path_from_scene``, levels trained with ``scene_look`` are given each scene's own look (its
    map's light and colours): psi_g samples g given it, psi_c and psi_f are given it.

    ``hand_over`` T: the c level ``low_noise_c`` (e.g. RUN/c; same latents as ``run``'s levels) takes
    psi_c's steps at the timesteps t < T (:func:`~nfldm.ldm.sample.sample_latents` ``low_noise``).
    ``low_noise_c`` None: with a map and a bundle's BEV levels, the bundle's unconditional c. ``hand_over``
    None: :data:`MAP_HAND_OVER` when there is such a level trained on the same latents as the BEV
    levels, else 0 (none).

    ``c_temperature``: psi_c starts from noise of that std (:func:`~nfldm.ldm.sample.denoise`
    ``temperature``; None: :data:`MAP_C_TEMPERATURE` with a map, else 1)."""
    if out is None:
        raise ValueError("sample needs an output folder (out)")
    has_maps = bool(conditions) and any(c.bev is not None and c.conditioned for c in conditions)
    if run is None:
        run = bundled_bev_model() if has_maps else bundled_model()
    if num < 1 or steps < 1 or batch_size < 1:
        raise ValueError(f"num, steps and batch_size must be >= 1 (got num={num}, steps={steps}, "
                         f"batch_size={batch_size})")
    if guidance_levels is None:
        guidance_levels = MAP_GUIDANCE_LEVELS if has_maps and guidance is None else "gcf"
    guidance = (MAP_GUIDANCE if has_maps else 1.0) if guidance is None else float(guidance)
    level_guidance(guidance, guidance_levels)      # bad levels are refused before anything is loaded
    by_default = hand_over is None and low_noise_c is None     # the bundle's own c, unless it does not fit
    if own_c_from and (not own_c or own_c_from < 0 or own_c_from > 1000):
        raise ValueError(f"own_c_from must be a timestep in 1..1000 with own_c, got {own_c_from}")
    psi_c_runs = own_latents is None and (not own_c or bool(own_c_from))
    low_src, hand_over = hand_over_source(run, hand_over, low_noise_c if psi_c_runs else None,
                                          has_maps and psi_c_runs)
    look_guidance = (LOOK_GUIDANCE if has_maps else 1.0) if look_guidance is None else float(look_guidance)
    look_from = (LOOK_GUIDANCE_FROM if has_maps else 0) if look_guidance_from is None else int(look_guidance_from)
    c_temperature = check_temperature((MAP_C_TEMPERATURE if has_maps else 1.0) if c_temperature is None
                                      else c_temperature, "c_temperature")    # refused before anything is loaded
    if not math.isfinite(guidance) or not math.isfinite(g_guidance) or not math.isfinite(look_guidance):
        raise ValueError(f"guidance, g_guidance and look_guidance must be finite numbers, got {guidance}, {g_guidance}, "
                         f"{look_guidance}")
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2, got {num_frames}")
    if (path_from_scene or own_latents is not None) and not (conditions and all(c.scene for c in conditions)):
        raise ValueError("path_from_scene and own_latents need the scenes to follow (dataset or scene folders)")
    if own_g is not None and (not path_from_scene or own_latents is not None):
        raise ValueError("own_g samples along the scenes' own paths: give path_from_scene, not own_latents")
    if own_c and own_g is None:
        raise ValueError("own_c takes the scenes' c from the latent folder of own_g: give own_g")
    if own_look and (not path_from_scene or own_latents is not None):
        raise ValueError("own_look gives the levels each scene's own look along its path: give path_from_scene")
    if has_maps and not all(c.bev is not None and c.conditioned for c in conditions):
        raise ValueError("either every condition has a map to follow or none has")
    if own_latents is not None:
        num = 1                 # a scene has one set of latents
    pipe = load_pipeline(run, device, renderer)
    models, rc, sae, lae = pipe["models"], pipe["config"], pipe["sae"], pipe["lae"]
    dev = pipe["device"]
    low = {}
    if low_src is not None:
        try:
            low = {"c": load_level(low_src, "c", rc, str(dev))[0]}
        except DataError:
            if not by_default:
                raise
            low_src, hand_over = None, 0    # a bundle whose bev levels were trained on other latents
    low_record = None if low_src is None else str(Path(low_src).resolve())
    setup = rc["render"]
    bounds = torch.tensor(setup["bounds"], dtype=torch.float32)
    intr = torch.tensor(setup["intrinsics"], dtype=torch.float32)
    per = [conditions[i // num] for i in range(len(conditions) * num)] if conditions else None
    total = len(per) if per else num
    gm = models["g"]
    bev = traj = paths = None
    if has_maps and own_latents is None:
        if not gm.cfg.bev:
            raise ValueError(f"{run}: its levels were not trained on BEV maps; sample a run trained with "
                             "--set bev=true (or leave out --run for the bundle's bev levels)")
        # once per condition; sample i follows condition i // num
        bev = torch.stack([bev_grid(c.bev, gm.cfg.bev_size, look=True) for c in conditions]).repeat_interleave(num, 0)
    if path_from_scene or own_latents is not None:
        scene_paths = [scene_path(c, bounds) for c in conditions]
        paths = [scene_paths[i // num] for i in range(total)]
        traj = torch.stack([encode_trajectory(p.double(), bounds.double(), gm.cfg.traj_frames).float()
                            for p in scene_paths]).repeat_interleave(num, 0)
    look = None
    if own_look:
        if not gm.cfg.scene_look:
            raise ValueError(f"{run}: its levels were not trained with the scene's look (scene_look)")
        missing = [str(c.scene or c.source) for c in conditions if c.bev is None or not has_look(c.bev)]
        if missing:
            raise DataError(f"{missing[0]}: its map carries no look (nfldm data add-look)")
        look = scene_look(torch.stack([bev_grid(c.bev, gm.cfg.bev_size, look=True) for c in conditions])
                          ).repeat_interleave(num, 0)
    if own_latents is not None:
        lat = _own_latents(own_latents, per, rc, gm.cfg.traj_frames, bounds)
    else:
        known = {} if own_g is None else _own_latents(own_g, per, rc, gm.cfg.traj_frames, bounds)
        lat = sample_latents(models, pipe["stats"], total, sampler, steps, seed, cond, guidance, batch_size, progress,
                             g_guidance, bev=bev, traj=traj, g=known.get("g"), c=known.get("c") if own_c else None,
                             look_guidance=look_guidance, look=look, look_from=look_from,
                             guidance_levels=guidance_levels, low_noise=low, low_below=hand_over,
                             c_from=int(own_c_from), c_temperature=c_temperature)

    H, W = sae.cfg.image_hw()
    side = min(H, W)                # the square pictures (top-down view, map), padded to H x W in the sheet
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, records = [], []
    for i in tqdm(range(total), desc="decoding and rendering", unit="scene", disable=not progress):
        d = out / f"sample_{i:04d}"
        g, c, f = (lat[k][i:i + 1].to(dev) if k in lat else None for k in ("g", "c", "f"))
        with torch.no_grad():
            V = lae.decode_latents(g, c, f)[0].float().cpu()
        if not bool(torch.isfinite(V).all()):
            raise RuntimeError(f"sample {i}: the decoded V holds NaN / inf values")
        if paths is not None:           # the scene's own cameras: frame k = real frame k
            keys, path = decode_trajectory(traj[i].double(), bounds.double()).float(), paths[i]
        else:
            keys, path = render_path(lat["traj"][i], bounds, num_frames)
        meta = {"format": SAMPLE_FORMAT, "version": 1, "run": str(Path(run).resolve()),
                "sampler": sampler, "steps": steps, "seed": seed, "index": i, "guidance": guidance,
                "guidance_levels": guidance_levels, "hand_over": hand_over,
                "low_noise_c": low_record,
                "g_guidance": g_guidance, "look_guidance": look_guidance, "look_guidance_from": look_from,
                "c_temperature": c_temperature}
        if per:
            meta["scene"] = str(per[i].scene or per[i].source)
        record, frames, top = write_sample_folder(d, sae, V, {k: lat[k][i] for k in ("g", "c", "f", "look") if k in lat},
                                                  keys, path, bounds, intr, meta, fps, mesh_level)
        record = {"index": i, **record}
        pick = np.round(np.linspace(0, len(frames) - 1, min(sheet_frames, len(frames)))).astype(int)
        row = [frames[pick], pad_to(top, H, W)[None]]
        if per:
            record.update(_write_condition(d, per[i], path_from_scene or own_latents is not None, own_latents, top, side))
            if per[i].bev is not None:
                row.append(pad_to(bev_image(per[i].bev, side), H, W)[None])
            elif has_maps or any(c.bev is not None for c in conditions):
                row.append(np.zeros((1, H, W, 3), np.uint8))
        if i < SHEET_MAX_ROWS:
            rows.append(np.concatenate(row, 0))
        records.append(record)
    sheet = out / "contact_sheet.png"
    atomic_save_png(sheet, grid_image([upscale(r, 2) for r in rows]))
    summary = {"format": SAMPLE_FORMAT, "run": str(Path(run).resolve()), "steps_trained": pipe["steps"],
               "latent_ae": rc["latent_ae"]["run"], "scene_ae": rc["scene_ae"]["run"], "renderer": pipe["renderer"],
               "latents": pipe["latents"],
               "num": total,
               "sampler": sampler, "steps": steps, "seed": seed, "batch_size": batch_size, "guidance": guidance,
               "guidance_levels": guidance_levels, "hand_over": hand_over,
               "low_noise_c": low_record,
               "g_guidance": g_guidance, "look_guidance": look_guidance, "look_guidance_from": look_from,
               "c_temperature": c_temperature,
               "conditional": cond is not None or has_maps, "num_frames": num_frames, "fps": fps, **image_size_record(sae.cfg),
               "bounds": bounds.tolist(), "intrinsics": intr.tolist(), "contact_sheet": sheet.name,
               "contact_sheet_rows": len(rows),
               "samples": records}
    if per:
        summary.update(samples_per_condition=num, conditions=len(conditions), bev=has_maps,
                       path_from_scene=bool(path_from_scene), own_latents=None if own_latents is None else
                       str(Path(own_latents).resolve()), own_g=None if own_g is None else str(Path(own_g).resolve()),
                       own_c=bool(own_c), own_c_from=int(own_c_from), own_look=bool(own_look))
    atomic_write_json(out / "samples.json", summary)
    return summary


def _write_condition(d: Path, c: SceneCondition, along_scene: bool, own_latents, top: np.ndarray, size: int) -> dict:
    """A conditional sample's map (bev.npz; map.png: the map beside the sample's top-down view) and
    condition.json; returns the record's entries."""
    info = {"source": c.source, "scene": None if c.scene is None else str(c.scene), "edits": c.edits,
            "conditioned_on_map": c.bev is not None and c.conditioned and own_latents is None,
            "path_from_scene": str(c.scene) if along_scene else None,
            "own_latents": None if own_latents is None else str(Path(own_latents).resolve())}
    if c.bev is not None:
        write_bev(d / "bev.npz", c.bev)
        big = max(size, 128)
        pic = np.concatenate([bev_image(c.bev, big), np.full((big, 4, 3), 255, np.uint8),
                              upscale(top, max(1, big // top.shape[0]))[:big, :big]], 1)
        atomic_save_png(d / "map.png", pic)
    atomic_write_json(d / "condition.json", info)
    return {"condition": info}


def _own_latents(latdir: str | os.PathLike, per: list[SceneCondition], rc: dict, traj_frames: int,
                 bounds: Tensor) -> dict:
    """The latents (raw g, c, f) and trajectories of the condition scenes, from a latent folder
    made with the run's latent-ae (DataError naming the folder otherwise)."""
    index = read_latent_index(latdir)
    if index["latent_ae"]["weights_hash"] != rc["latent_ae"]["weights_hash"]:
        raise DataError(f"{latdir}: encoded by another latent-ae than the run's ({rc['latent_ae']['run']})")
    names = {s["name"] for s in index["scenes"]}
    parts: dict[str, list] = {}
    for c in per:
        if c.scene.name not in names:
            raise DataError(f"{Path(latdir) / 'index.json'}: no scene {c.scene.name!r}")
        t = load_latent_file(scene_file(latdir, c.scene.name), index["shapes"])
        for k in index["shapes"]:
            parts.setdefault(k, []).append(t[k])
        parts.setdefault("traj", []).append(encode_trajectory(t["c2w"].double(), bounds.double(), traj_frames).float())
    return {k: torch.stack(v) for k, v in parts.items()}
