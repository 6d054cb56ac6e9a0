"""Outpainting (``nfldm extend``): grow a scene past its box, window by window, into a level a
camera can fly through.

    window 0: the scene (a sample folder or an encoded dataset scene; its latents as they are)
    window k: the footprint shifted by s = (1 - overlap) X cells along the direction; the part it
              shares with window k - 1 is known (those latents, shifted), the new part is
              sampled by psi_c, psi_f with replacement + RePaint resampling (ldm.inpaint), g and
              the trajectory vector those of the scene (one look for the whole level); with a
              map (--bev, larger than one window) each window follows its part of it
    stitch:   every window decoded with the latent-ae, its GroupNorm statistics frozen to window
              0's; the windows' V blended with linear ramps over their overlaps into one V
    path:     a level camera at the scene path's height from one end of the level to the other,
              the cheapest route over the footprint that keeps clear of mid-height walls and goes
              round them through openings (a wall crossed only where there is no way round),
              smoothed, looking ahead along it with a smoothed heading

Output folder::

    OUT/sample_0000/        the stitched scene (sample folder: V, frames and fly-through along the path, meshes)
    OUT/windows.safetensors every window's latents (g; c, f: N+1 x ...) and offsets (cells)
    OUT/strip.png           the top-down view of the level with the windows, and a frame strip
    OUT/extend.json         settings, time, frame-to-frame LPIPS along the path, join frames, seam scores
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from nfldm.camera import pose_from_position_yaw
from nfldm.data.bev import bev_grid, crop_bev
from nfldm.data.tensors import write_safetensors
from nfldm.ldm.evaluate import mid_height_occupancy
from nfldm.ldm.inpaint import inpaint_latents
from nfldm.ldm.trajectory import encode_trajectory
from nfldm.pipeline.edit import available_lpips, decode_frozen, load_scene, repaint_pipeline, seam_score
from nfldm.pipeline.generate import SAMPLE_FORMAT, _render_path, write_sample_folder
from nfldm.scene_ae.config import image_size_record
from nfldm.scene_ae.flythrough import grid_image, upscale
from nfldm.utils.io import atomic_save_png, atomic_write_json

__all__ = ["DIRECTIONS", "shift_window", "stitch", "free_space_path", "extend_scene"]

DIRECTIONS = {"+x": (0, 1), "-x": (0, -1), "+y": (1, 1), "-y": (1, -1)}   # footprint axis, sign


def shift_window(lat: Tensor, axis: int, sign: int, s: int) -> tuple[Tensor, Tensor]:
    """The next window's latent (ch x X x Y [x Z]) known from this one's: the shared part moved
    by ``s`` cells against the direction (``axis`` 0: X, 1: Y; ``sign`` +1 / -1), zeros in the new
    part. Returns (values, region: X x Y bool, True on the new part)."""
    dim = 1 + axis
    n = lat.shape[dim]
    if not 0 < s < n:
        raise ValueError(f"the shift must be 1..{n - 1} cells, got {s}")
    out = torch.zeros_like(lat)
    region = torch.zeros(lat.shape[1], lat.shape[2], dtype=torch.bool)
    if sign > 0:
        out.narrow(dim, 0, n - s).copy_(lat.narrow(dim, s, n - s))
        region.narrow(axis, n - s, s).fill_(True)
    else:
        out.narrow(dim, s, n - s).copy_(lat.narrow(dim, 0, n - s))
        region.narrow(axis, 0, s).fill_(True)
    return out, region


def stitch(Vs: list[Tensor], axis: int, sign: int, s: int) -> Tensor:
    """One V from windows (each K x X x Y x Z) shifted by ``s`` cells each along the direction:
    weights ramp linearly across every overlap (a window fades in over the part it shares with
    the one before, and out over the part it shares with the one after), normalised to sum to 1.
    -> K x (X + n s) x Y x Z (axis 0) or K x X x (Y + n s) x Z (axis 1), n = len(Vs) - 1."""
    dim = 1 + axis
    n, X = len(Vs) - 1, Vs[0].shape[dim]
    if not 0 < s <= X:
        raise ValueError(f"windows of {X} cells shifted by {s} would leave gaps or not move (need 0 < s <= {X})")
    total = X + n * s
    shape = list(Vs[0].shape)
    shape[dim] = total
    acc = torch.zeros(shape)
    wsum = torch.zeros(total)
    ov = X - s
    i = torch.arange(X, dtype=torch.float32) + 0.5
    for k, V in enumerate(Vs):
        w = torch.ones(X)
        first, last = k == 0, k == n
        # in the direction of travel, window k's "lower" side meets window k - 1
        lo_side = not first if sign > 0 else not last
        hi_side = not last if sign > 0 else not first
        if ov > 0 and lo_side:
            w = torch.minimum(w, i / ov)
        if ov > 0 and hi_side:
            w = torch.minimum(w, (X - i) / ov)
        start = k * s if sign > 0 else (n - k) * s
        view = [1] * len(shape)
        view[dim] = X
        acc.narrow(dim, start, X).add_(V * w.view(view))
        wsum[start:start + X] += w
    view = [1] * len(shape)
    view[dim] = total
    return acc / wsum.clamp(min=1e-6).view(view)


def free_space_path(V: Tensor, bounds: Tensor, axis: int, sign: int, frames: int, height: float,
                    margin: float = 0.5, clearance: float = 1.0, wall_cost: float = 1000.0, smooth: float = 0.5,
                    look_ahead: float = 2.0, yaw_smooth: float = 3.0) -> Tensor:
    """A level camera path from one end of the box to the other along ``axis`` in the direction
    ``sign``, through the free space of V (K x X x Y x Z over ``bounds`` 2 x 3) at z = ``height``:
    the cheapest route over the footprint's cells (8-connected,
    :func:`skimage.graph.route_through_array`) where a cell costs its length times 1 +
    (``clearance`` metres / its distance to the nearest wall)^2, and a wall (mid-height occupancy;
    the box's sides along the path count as walls) ``wall_cost`` times more. It keeps away from
    walls, goes round them through any opening, and crosses one only where there is no way round.
    It runs from the freest cell ``margin`` metres inside one end to the freest one as far inside
    the other; smoothed (a Gaussian of ``smooth`` metres along the route), ``frames`` cameras
    evenly spaced along it, each looking at the route ``look_ahead`` metres ahead, the heading
    smoothed over ``yaw_smooth`` frames (a Gaussian's sigma on the unwrapped angle; 0: none).
    -> frames x 4 x 4 camera-to-world."""
    from scipy.ndimage import distance_transform_edt, gaussian_filter1d
    from skimage.graph import route_through_array

    if frames < 2:
        raise ValueError(f"a path needs at least 2 frames, got {frames}")
    occ = mid_height_occupancy(V, bounds).numpy()                           # X x Y: walls
    if axis == 1:
        occ = occ.T
    occ = occ.copy()
    occ[:, 0] = occ[:, -1] = True
    A, B = occ.shape
    lo, hi = bounds[0].double().numpy(), bounds[1].double().numpy()
    ax_lo, ax_hi = float(lo[axis]), float(hi[axis])
    cr_lo, cr_hi = float(lo[1 - axis]), float(hi[1 - axis])
    cell_a, cell_c = (ax_hi - ax_lo) / A, (cr_hi - cr_lo) / B
    dist = distance_transform_edt(~occ, sampling=(cell_a, cell_c))          # metres to the nearest wall cell
    cost = (1.0 + (clearance / np.maximum(dist, 0.5 * min(cell_a, cell_c))) ** 2) * np.where(occ, wall_cost, 1.0)
    m = min(A - 1, max(0, int(round(margin / cell_a))))
    a0, a1 = (m, A - 1 - m) if sign > 0 else (A - 1 - m, m)
    route, _ = route_through_array(cost, (a0, int(dist[a0].argmax())), (a1, int(dist[a1].argmax())),
                                   fully_connected=True, geometric=True)
    r = np.asarray(route, dtype=np.float64) + 0.5
    pts = np.stack([ax_lo + r[:, 0] * cell_a, cr_lo + r[:, 1] * cell_c], 1)  # (along, across) metres
    # resample the route evenly (5 cm), smooth it, then place the frames evenly along it
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    if arc[-1] <= 0:
        raise ValueError("the box is too short along the axis for a path")
    u = np.arange(0.0, arc[-1] + 1e-9, 0.05)
    dense = np.stack([np.interp(u, arc, pts[:, 0]), np.interp(u, arc, pts[:, 1])], 1)
    if smooth > 0 and len(dense) > 2:
        dense = gaussian_filter1d(dense, smooth / 0.05, axis=0, mode="nearest", truncate=3.0)
    seg = np.linalg.norm(np.diff(dense, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])

    def at(s: np.ndarray) -> np.ndarray:                                   # points at arc lengths s (extended straight)
        inside = np.stack([np.interp(s, arc, dense[:, 0]), np.interp(s, arc, dense[:, 1])], 1)
        end_dir = dense[-1] - dense[max(0, len(dense) - 11)]
        end_dir = end_dir / max(np.linalg.norm(end_dir), 1e-9)
        return inside + np.maximum(s - arc[-1], 0.0)[:, None] * end_dir

    s = np.linspace(0.0, arc[-1], frames)
    p2, ahead = at(s), at(s + look_ahead)
    pos = np.zeros((frames, 3))
    pos[:, axis], pos[:, 1 - axis], pos[:, 2] = p2[:, 0], p2[:, 1], height
    d = np.zeros((frames, 2))
    d[:, axis], d[:, 1 - axis] = ahead[:, 0] - p2[:, 0], ahead[:, 1] - p2[:, 1]
    yaw = np.unwrap(np.arctan2(d[:, 1], d[:, 0]))
    if yaw_smooth > 0:
        yaw = gaussian_filter1d(yaw, yaw_smooth, mode="nearest", truncate=3.0)
    return pose_from_position_yaw(torch.from_numpy(pos).float(), torch.from_numpy(yaw).float())


def _join_positions(bounds0: Tensor, axis: int, sign: int, n: int, s: int, X: int) -> list[float]:
    """World coordinate along the axis where window k's sampled part meets the known part (k = 1..n)."""
    lo, hi = float(bounds0[0, axis]), float(bounds0[1, axis])
    cell = (hi - lo) / X
    if sign > 0:
        return [lo + ((k - 1) * s + X) * cell for k in range(1, n + 1)]
    return [hi - ((k - 1) * s + X) * cell for k in range(1, n + 1)]


def extend_scene(src: str | os.PathLike, direction: str, out: str | os.PathLike, windows: int = 2,
                 run: str | os.PathLike | None = None, bev: str | os.PathLike | None = None, overlap: float = 0.5,
                 seed: int = 0, steps: int = 25, jump: int = 5, resample: int = 3, guidance: float = 1.0,
                 device: str = "auto", progress: bool = True, renderer: str | os.PathLike | None = None,
                 frames_per_window: int = 24, fps: int = 12, lpips=None, look_guidance: float = 1.0) -> dict:
    """Grow the scene ``src`` by ``windows`` windows along ``direction`` (+x | -x | +y | -y) and
    write ``out`` (layout in the module docstring). ``overlap``: the fraction of a window shared
    with the one before (snapped to whole coarse cells); ``bev``: a map over the whole level
    (bounds_xy in the scene's frame), cropped per window (the bev levels); the other options as
    :func:`nfldm.pipeline.edit.edit_scene`. Returns extend.json's content."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    if windows < 1:
        raise ValueError(f"windows must be >= 1, got {windows}")
    if not 0.0 < overlap < 1.0:
        raise ValueError(f"overlap must be in (0, 1), got {overlap}")
    axis, sign = DIRECTIONS[direction]
    out = Path(out)
    run, pipe, bev_map = repaint_pipeline(run, bev, device, renderer, "extending")
    models, lae, sae = pipe["models"], pipe["lae"], pipe["sae"]
    cm = models["c"]
    scene = load_scene(src, pipe)
    X = scene.f.shape[1 + axis]
    Xc = scene.c.shape[1 + axis]
    d = X // Xc
    sc = min(Xc - 1, max(1, int(round((1 - overlap) * Xc))))
    s = sc * d
    cell = float((scene.bounds[1, axis] - scene.bounds[0, axis]) / X)
    traj = encode_trajectory(scene.path.double(), scene.bounds.double(), models["g"].cfg.traj_frames).float()
    t_start = time.perf_counter()
    cs, fs = [scene.c], [scene.f]
    for k in tqdm(range(1, windows + 1), desc="extending", unit="window", disable=not progress):
        c_known, region_c = shift_window(cs[-1], axis, sign, sc)
        f_known, region_f = shift_window(fs[-1], axis, sign, s)
        bev_t = None
        if bev_map is not None:
            wb = scene.bounds.clone()
            wb[:, axis] += sign * k * s * cell
            bev_t = bev_grid(crop_bev(bev_map, [float(wb[0, 0]), float(wb[0, 1]), float(wb[1, 0]), float(wb[1, 1])]),
                             cm.cfg.bev_size, look=True)
        new = inpaint_latents(models, pipe["stats"], scene.g, traj, c_known, f_known, region_c, region_f, steps, jump,
                              resample, seed + k, bev=bev_t, guidance=guidance, look_guidance=look_guidance)
        cs.append(new["c"])
        fs.append(new["f"])
    V0, stats = decode_frozen(lae, scene.g, scene.c, scene.f)
    Vs = [V0] + [decode_frozen(lae, scene.g, c, f, stats)[0] for c, f in zip(cs[1:], fs[1:])]
    V = stitch(Vs, axis, sign, s)
    bounds = scene.bounds.clone()
    if sign > 0:
        bounds[1, axis] += windows * s * cell
    else:
        bounds[0, axis] -= windows * s * cell
    t_latent = time.perf_counter() - t_start
    height = float(scene.path[:, 2, 3].median())
    frames = frames_per_window * (windows + 1)
    path = free_space_path(V, bounds, axis, sign, frames, height)
    with _samples_scaled(sae, (X + windows * s) / X):
        rgb, depth = _render_path(sae, V, bounds, scene.intrinsics, path)
    keys = path[torch.linspace(0, frames - 1, 8).round().long()]
    t_total = time.perf_counter() - t_start

    # checks: frame-to-frame LPIPS along the path, at the joins vs its median; seam scores across joins
    if lpips is None:
        lpips = available_lpips()
    joins = _join_positions(scene.bounds, axis, sign, windows, s, X)
    cam = path[:, axis, 3]
    # frames the camera takes at or inside a wall: >= 5 % of the pixels nearer than 0.5 m (Doom's player
    # radius is 0.375 m: no real frame is)
    checks: dict = {"join_positions": joins,
                    "frames_at_walls": float(((depth < 0.5).flatten(1).float().mean(1) >= 0.05).float().mean())}
    if lpips is not None:
        step = lpips(rgb[1:], rgb[:-1]).tolist()                          # step i: frame i -> i + 1
        med = float(np.median(step))

        def crossing(j: float) -> tuple[int, float, float]:
            # the steps that cross the plane at j (the path may cross it more than once going round
            # a wall; the nearest step if none does): (the step, the largest of it and its two
            # neighbours, the largest crossing step alone), over the crossings
            over = ((cam[1:] - j) * (cam[:-1] - j) <= 0).nonzero().flatten().tolist()
            over = over or [int(((cam[1:] + cam[:-1]) / 2 - j).abs().argmin())]
            i, around = max(((i, max(step[max(0, i - 1):i + 2])) for i in over), key=lambda x: x[1])
            return i, around, max(step[k] for k in over)

        def spike(v: list[float]) -> float | None:
            return max(v) / med if med > 0 else None

        near, at_join, on_join = (list(x) for x in zip(*[crossing(j) for j in joins]))
        # the control: the same statistics half way between joins (the windows' middles, inside the
        # fly-through), to tell a seam from what the camera meets anywhere in generated content
        mids = [(a + b) / 2 for a, b in zip(joins[:-1], joins[1:])] + [joins[0] - sign * s * cell / 2]
        mid_steps, at_mid, on_mid = (list(x) for x in zip(*[crossing(m) for m in mids]))
        checks.update(frame_lpips=step, frame_lpips_median=med, join_steps=near,
                      join_lpips=at_join, join_spike=spike(at_join), join_step_spike=spike(on_join),
                      control_steps=mid_steps, control_lpips=at_mid, control_spike=spike(at_mid),
                      control_step_spike=spike(on_mid))
    seams = []
    cols = V.shape[1 + axis]
    for j in joins:                        # the stitched V across the join plane vs window 0's texture
        g = int(round((j - float(bounds[0, axis])) / cell))
        region = torch.zeros(V.shape[1], V.shape[2], dtype=torch.bool)
        if sign > 0:
            region.narrow(axis, g, cols - g).fill_(True)
        else:
            region.narrow(axis, 0, g).fill_(True)
        seams.append(seam_score(V, V0, region)["seam_vs_scene"])
    checks["seam"] = seams
    checks["seam_max"] = max(seams) if seams else None

    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": SAMPLE_FORMAT, "version": 1, "run": str(Path(run).resolve()), "extend_of": str(scene.source),
            "direction": direction, "windows": windows}
    rec, fr, top = write_sample_folder(out / "sample_0000", sae, V, {}, keys, path, bounds, scene.intrinsics, meta,
                                       fps, views=(rgb, depth))
    offsets = torch.tensor([k * s * sign for k in range(windows + 1)])
    write_safetensors(out / "windows.safetensors", {"g": scene.g, "c": torch.stack(cs), "f": torch.stack(fs),
                                                    "offsets": offsets, "bounds": scene.bounds},
                      {"format": "nfldm-windows", "axis": str(axis), "direction": direction})
    _strip(out / "strip.png", V, bounds, path, fr, joins, axis, top)
    info = {"source": str(scene.source), "run": str(Path(run).resolve()), "direction": direction, "windows": windows,
            "overlap": 1 - s / X, "shift_cells": s, "shift_metres": s * cell, "bounds": bounds.tolist(),
            "bev": None if bev is None else str(bev), "seed": seed, "steps": steps, "jump": jump,
            "resample": resample, "guidance": guidance, "look_guidance": look_guidance,
            "seconds_latents_and_decode": t_latent, "seconds_with_render": t_total, "device": str(pipe["device"]),
            "frames": frames, "checks": checks}
    atomic_write_json(out / "extend.json", info)
    atomic_write_json(out / "samples.json", {"format": SAMPLE_FORMAT, "run": str(Path(run).resolve()), "num": 1,
                                             "extend": True, **image_size_record(sae.cfg),
                                             "bounds": bounds.tolist(), "intrinsics": scene.intrinsics.tolist(),
                                             "samples": [{"index": 0, **rec}]})
    return info


class _samples_scaled:
    """Render a longer box with proportionally more ray samples (the scene-ae's num_samples and
    num_coarse), so the sample spacing stays that of one window."""

    def __init__(self, sae, factor: float):
        self.sae, self.factor = sae, factor

    def __enter__(self):
        self.cfg = self.sae.cfg
        self.sae.cfg = replace(self.cfg, num_samples=int(math.ceil(self.cfg.num_samples * self.factor)),
                               num_coarse=int(math.ceil(self.cfg.num_coarse * self.factor)))

    def __exit__(self, *exc):
        self.sae.cfg = self.cfg
        return False


def _strip(path: Path, V: Tensor, bounds: Tensor, cams: Tensor, frames: np.ndarray, joins: list[float], axis: int,
           top: np.ndarray) -> None:
    """The level's top-down view (windows' joins as blue lines, the path in red) above a strip of
    frames along the path."""
    from PIL import Image, ImageDraw

    from nfldm.pipeline.generate import topdown_view

    X, Y = V.shape[1:3]
    s = 4
    img = Image.fromarray(topdown_view(V, bounds, cams, max(X, Y) * s)).resize((X * s, Y * s), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    lo, hi = bounds[0].tolist(), bounds[1].tolist()
    for j in joins:
        if axis == 0:
            x = (j - lo[0]) / (hi[0] - lo[0]) * X * s
            draw.line([(x, 0), (x, Y * s)], fill=(40, 120, 255), width=2)
        else:
            y = (hi[1] - j) / (hi[1] - lo[1]) * Y * s
            draw.line([(0, y), (X * s, y)], fill=(40, 120, 255), width=2)
    pick = np.round(np.linspace(0, len(frames) - 1, 8)).astype(int)
    strip = grid_image([upscale(frames[pick], 2)])
    topv = np.asarray(img)
    w = max(topv.shape[1], strip.shape[1])
    pad = lambda a: np.pad(a, ((0, 0), (0, w - a.shape[1]), (0, 0)), constant_values=255)   # noqa: E731
    atomic_save_png(path, np.concatenate([pad(topv), np.full((4, w, 3), 255, np.uint8), pad(strip)], 0))
