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
    path:     a level camera at the scene path's height along the direction, steered through free
              space (dynamic programming over the mid-height occupancy's distance to walls)

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
                    margin: float = 0.5, smooth_cells: float = 6.0, turn_cost: float = 1.0) -> Tensor:
    """A level camera path along ``axis`` in the direction ``sign`` through the free space of V
    (K x X x Y x Z over ``bounds`` 2 x 3) at z = ``height``: for each cell along the axis, the
    cross position that keeps farthest from the walls (mid-height occupancy; a dynamic program
    trades distance against sideways moves, ``turn_cost`` per cell), smoothed, looking along the
    path. The box's sides along the path count as walls. -> frames x 4 x 4 camera-to-world."""
    if frames < 2:
        raise ValueError(f"a path needs at least 2 frames, got {frames}")
    occ = mid_height_occupancy(V, bounds).float()                          # X x Y
    if axis == 1:
        occ = occ.T
    A, B = occ.shape
    occ[:, 0] = occ[:, -1] = 1.0
    far = 12
    dist = torch.full((A, B), float(far))
    reached = occ > 0
    dist[reached] = 0.0
    for r in range(1, far):
        grown = F.max_pool2d(occ[None, None], 2 * r + 1, stride=1, padding=r)[0, 0] > 0
        new = grown & ~reached
        dist[new] = float(r)
        reached |= grown
    # dynamic program over the cross index
    cost = -dist[0].clone()
    back = torch.zeros(A, B, dtype=torch.long)
    idx = torch.arange(B, dtype=torch.float32)
    move = turn_cost * (idx[:, None] - idx[None, :]).abs()                 # from j' to j
    for a in range(1, A):
        tot = cost[None, :] + move                                         # j x j'
        best, arg = tot.min(1)
        cost = best - dist[a]
        back[a] = arg
    cross = torch.zeros(A, dtype=torch.long)
    cross[-1] = int(cost.argmin())
    for a in range(A - 1, 0, -1):
        cross[a - 1] = back[a, cross[a]]
    lo, hi = bounds[0].double(), bounds[1].double()
    ax_lo, ax_hi = float(lo[axis]), float(hi[axis])
    cr_lo, cr_hi = float(lo[1 - axis]), float(hi[1 - axis])
    cell_a, cell_c = (ax_hi - ax_lo) / A, (cr_hi - cr_lo) / B
    c = cross.double().numpy() + 0.5
    if smooth_cells > 0:
        k = np.arange(-int(3 * smooth_cells), int(3 * smooth_cells) + 1)
        ker = np.exp(-0.5 * (k / smooth_cells) ** 2)
        ker /= ker.sum()
        c = np.convolve(np.pad(c, len(k) // 2, mode="edge"), ker, mode="valid")
    along = ax_lo + (np.arange(A) + 0.5) * cell_a
    t = np.linspace(ax_lo + margin, ax_hi - margin, frames)
    if sign < 0:
        t = t[::-1]
    cr = cr_lo + np.interp(t, along, c) * cell_c
    pos = np.zeros((frames, 3))
    pos[:, axis], pos[:, 1 - axis], pos[:, 2] = t, cr, height
    # look along the path: its tangent over about a metre ahead
    look = max(1, int(round(1.0 / max(abs(t[1] - t[0]), 1e-6))))
    ext = np.concatenate([pos, pos[-1:] + (pos[-1:] - pos[-2:-1]) * np.arange(1, look + 1)[:, None]])
    d = ext[look:look + frames] - pos
    yaw = np.arctan2(d[:, 1], d[:, 0])
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
                 frames_per_window: int = 24, fps: int = 12, lpips=None) -> dict:
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
                              resample, seed + k, bev=bev_t, guidance=guidance)
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
    keys = path[torch.linspace(0, frames - 1, 8).round().long()]
    with _samples_scaled(sae, (X + windows * s) / X):
        rgb, depth = _render_path(sae, V, bounds, scene.intrinsics, path)
    t_total = time.perf_counter() - t_start

    # checks: frame-to-frame LPIPS along the path, at the joins vs its median; seam scores across joins
    if lpips is None:
        lpips = available_lpips()
    joins = _join_positions(scene.bounds, axis, sign, windows, s, X)
    cam = path[:, axis, 3]
    checks: dict = {"join_positions": joins}
    if lpips is not None:
        step = lpips(rgb[1:], rgb[:-1]).tolist()                          # step i: frame i -> i + 1
        mid = (cam[1:] + cam[:-1]) / 2
        near = [int((mid - j).abs().argmin()) for j in joins]
        med = float(np.median(step))
        at_join = [max(step[max(0, i - 1):i + 2]) for i in near]
        # the control: the same statistic half way between joins (the windows' middles, inside the
        # fly-through), to tell a seam from what the camera meets anywhere in generated content
        mids = [(a + b) / 2 for a, b in zip(joins[:-1], joins[1:])] + [joins[0] - sign * s * cell / 2]
        mid_steps = [int((mid - m).abs().argmin()) for m in mids]
        at_mid = [max(step[max(0, i - 1):i + 2]) for i in mid_steps]
        checks.update(frame_lpips=step, frame_lpips_median=med, join_steps=near,
                      join_lpips=at_join, join_spike=max(at_join) / med if med > 0 else None,
                      control_steps=mid_steps, control_lpips=at_mid,
                      control_spike=max(at_mid) / med if med > 0 else None)
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
            "resample": resample, "guidance": guidance, "seconds_latents_and_decode": t_latent,
            "seconds_with_render": t_total, "device": str(pipe["device"]), "frames": frames, "checks": checks}
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
