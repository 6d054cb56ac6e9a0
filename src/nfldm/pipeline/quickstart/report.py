"""``report.html`` of a quickstart folder: one static page a person opens in a browser.

Sections: the data (contact sheet), stage 1 (real vs reconstructed held-out views, a
fly-through, loss curves, metrics), stage 2 (views rendered from original and decoded V, loss
curves, metrics), stage 3 (loss curves of g / c / f, the samples' contact sheet, animated
fly-throughs and mesh previews per sample, generation metrics), the optional stages when they
ran (fine-tuned renderer, BEV-conditioned levels, image prior: their numbers and loss curves),
the bundled model, where the time and memory went, and the config. Pictures made for the page go to OUT/report/; every
link is relative, so the folder can be copied or served as it is.
"""

from __future__ import annotations

import html
import io
import itertools
import json
import math
import time
from pathlib import Path

import numpy as np
from PIL import Image

from nfldm.pipeline.quickstart.card import card_metrics, extra_metrics
from nfldm.pipeline.quickstart.config import EXTRA_NAMES, STAGES, TRAIN_STAGES
from nfldm.utils.io import atomic_write_bytes, read_json
from nfldm.utils.plot import plot_metrics
from nfldm.utils.video import write_video

REPORT = "report.html"
ASSETS = "report"


def _esc(x) -> str:
    return html.escape(str(x))


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    return _esc(v)


def _table(rows: list[list], header: list[str] | None = None) -> str:
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in header) + "</tr>")
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _flat(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested dict -> [(dotted key, scalar)] (numbers and short strings only)."""
    rows = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            rows += _flat(v, key + ".")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            rows.append((key, v))
    return rows


def _img(out: Path, path: Path, alt: str, width: int | None = None) -> str:
    if not path.exists():
        return f"<p class='missing'>({_esc(alt)}: not written)</p>"
    w = f" width='{width}'" if width else ""
    return f"<img src='{_esc(path.relative_to(out).as_posix())}' alt='{_esc(alt)}'{w}>"


def _link(out: Path, path: Path, text: str) -> str:
    if not path.exists():
        return ""
    return f"<a href='{_esc(path.relative_to(out).as_posix())}'>{_esc(text)}</a>"


def _read_json(path: Path) -> dict:
    """The JSON object in ``path``, or {} when it is missing or unreadable (a page of what exists)."""
    try:
        return read_json(path)
    except (OSError, ValueError):
        return {}


def loss_curves(run: Path, dest: Path) -> Path | None:
    """RUN/loss_curves.png, drawn again from RUN/metrics.jsonl if missing (killed run)."""
    png = run / "loss_curves.png"
    if png.exists():
        return png
    if (run / "metrics.jsonl").exists():
        return plot_metrics(run / "metrics.jsonl", dest)
    return None


def sample_gif(sample_dir: Path, dest: Path, scale: int = 2, fps: int = 12) -> Path | None:
    """Animated GIF of a sample's rendered frames (browsers animate GIFs inline)."""
    frames = sorted((sample_dir / "frames").glob("frame_*.png"))
    if not frames:
        return None
    imgs = [np.asarray(Image.open(f).convert("RGB")) for f in frames]
    imgs = [np.repeat(np.repeat(x, scale, 0), scale, 1) for x in imgs]
    return write_video(dest, imgs, fps)


def mesh_preview(mesh_path: Path, dest: Path, bounds=None, size: int = 320, max_faces: int = 20000) -> Path | None:
    """PNG of a mesh seen from above at an angle (matplotlib; vertex colours where the mesh
    has them, else grey shaded by the face normal), inside the scene box ``bounds``
    (2 x 3, drawn as a wire frame) when given."""
    import trimesh
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    if not mesh_path.exists():
        return None
    mesh = trimesh.load(mesh_path, force="mesh", process=False)
    fig = Figure(figsize=(size / 100, size / 100), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111, projection="3d")
    ax.set_axis_off()
    if len(mesh.faces) == 0:
        ax.text2D(0.5, 0.5, "empty mesh (no density above the level)", ha="center", va="center",
                  transform=ax.transAxes, fontsize=7)
    else:
        rng = np.random.default_rng(0)
        keep = np.sort(rng.choice(len(mesh.faces), min(max_faces, len(mesh.faces)), replace=False))
        faces = mesh.faces[keep]
        tris = mesh.vertices[faces]
        normals = mesh.face_normals[keep]
        light = np.clip(normals @ np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8]), 0, 1)
        shade = 0.35 + 0.65 * np.abs(light)[:, None]
        colours = None
        vc = getattr(mesh.visual, "vertex_colors", None)
        if vc is not None and len(vc) == len(mesh.vertices) and np.ptp(np.asarray(vc)[:, :3]) > 0:
            colours = np.asarray(vc)[faces][:, :, :3].mean(1) / 255.0
        if colours is None:
            colours = np.full((len(faces), 3), 0.75)
        ax.add_collection3d(Poly3DCollection(tris, facecolors=np.clip(colours * shade, 0, 1), linewidths=0))
    if bounds is not None:
        lo, hi = np.asarray(bounds, dtype=float)
        corners = np.array(list(itertools.product(*zip(lo, hi))))
        for a, b in itertools.combinations(corners, 2):
            if np.count_nonzero(a != b) == 1:   # the 12 edges of the box
                ax.plot(*zip(a, b), color="0.6", linewidth=0.6)
    elif len(mesh.faces):
        lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
    else:
        lo, hi = np.zeros(3), np.ones(3)
    mid, half = (lo + hi) / 2, (hi - lo).max() / 2 + 1e-6
    ax.set_xlim(mid[0] - half, mid[0] + half)
    ax.set_ylim(mid[1] - half, mid[1] + half)
    ax.set_zlim(mid[2] - half, mid[2] + half)
    ax.view_init(elev=55, azim=-60)
    fig.subplots_adjust(0, 0, 1, 1)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(dest, buf.getvalue())
    return dest


def time_chart(state: dict, dest: Path) -> Path:
    """Horizontal bars: minutes per stage."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [n for n, _ in STAGES if n in state["stages"]]
    mins = [state["stages"][n]["seconds"] / 60 for n in names]
    fig = Figure(figsize=(7, 0.3 * len(names) + 1.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    ax.barh(names[::-1], mins[::-1], color=["tab:orange" if n in TRAIN_STAGES else "tab:blue" for n in names[::-1]])
    ax.set_xlabel("minutes (orange: training)")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(dest, buf.getvalue())
    return dest


CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:0}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left;font-size:90%}
img{max-width:100%;image-rendering:pixelated;margin:.2em}.samples td{vertical-align:top}
pre{background:#f5f5f5;padding:.6em;overflow-x:auto;font-size:80%}.missing{color:#a00}.note{color:#555;font-size:90%}"""


def write_report(out: str | Path, state: dict) -> Path:
    """Write OUT/report.html (and the pictures it needs under OUT/report/); returns its path."""
    out = Path(out)
    assets = out / ASSETS
    assets.mkdir(exist_ok=True)
    qs = _read_json(out / "quickstart.json")
    stages = state.get("stages", {})
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>nfldm quickstart report</title>"
             f"<style>{CSS}</style></head><body>",
             "<h1>nfldm quickstart report</h1>",
             f"<p class='note'>NeuralField-LDM on ViZDoom, written {time.strftime('%Y-%m-%d %H:%M:%S')} "
             f"for <code>{_esc(out)}</code> (preset {_esc(qs.get('preset', '?'))}).</p>"]

    # headline
    total = sum(s["seconds"] for s in stages.values())
    peak = max([s.get("peak_rss_mb", 0.0) for s in stages.values()] or [0.0])
    head = [["stage time in all", f"{total / 60:.1f} min"], ["peak memory (largest process)", f"{peak / 1024:.2f} GiB"]]
    head += [[k, v] for k, v in card_metrics(state).items()]
    head += [[k, v] for part in extra_metrics(state).values() for k, v in part.items()]
    parts += ["<h2>Summary</h2>", _table(head)]

    # data
    parts += ["<h2>Data</h2>", "<p>RGB frames, depth (0-15 m, black = invalid), the bird's-eye-view map and "
              "the camera path of the first scenes.</p>", _img(out, out / "contact_sheet.png", "dataset contact sheet")]

    # stage 1
    sae = out / "scene_ae"
    m1 = _read_json(sae / "metrics_test.json")
    parts.append("<h2>Stage 1: scene auto-encoder</h2>")
    if m1:
        rows = [[name, m1[name].get("psnr"), m1[name].get("ssim"), m1[name].get("depth_abs_rel_median")]
                for name in ("model", "nearest_frame", "mean_colour") if name in m1]
        parts += [f"<p>Held-out views of {m1.get('num_scenes', '?')} test scenes (unseen maps), next to two "
                  "trivial baselines.</p>", _table(rows, ["", "PSNR (dB)", "SSIM", "depth median abs-rel"])]
    parts += ["<p>Rows: ground truth, reconstruction, ground-truth depth, rendered depth (held-out views).</p>",
              _img(out, sae / "metrics_test_views.png", "stage 1 real vs reconstructed"),
              "<p>Fly-through of a test scene encoded from its input views (left RGB, right depth):</p>",
              _img(out, sae / "flythrough.gif", "stage 1 fly-through")]
    curve = loss_curves(sae, assets / "scene_ae_loss.png") if sae.exists() else None
    parts.append(_img(out, curve, "stage 1 loss curves") if curve else "")

    # stage 2
    lae = out / "latent_ae"
    m2 = _read_json(lae / "metrics_test.json")
    parts.append("<h2>Stage 2: latent auto-encoder</h2>")
    if m2:
        rows = [[k, v] for k, v in _flat({k: m2[k] for k in ("voxel", "render", "codebook") if k in m2})]
        parts.append(_table(rows, ["metric (test split)", "value"]))
    parts += ["<p>Rows: ground truth, rendered from the original V, rendered from the decoded V.</p>",
              _img(out, lae / "metrics_test_views.png", "stage 2 views")]
    curve = loss_curves(lae, assets / "latent_ae_loss.png") if lae.exists() else None
    parts.append(_img(out, curve, "stage 2 loss curves") if curve else "")

    # stage 3
    ldm = out / "ldm"
    parts.append("<h2>Stage 3: hierarchical latent diffusion</h2>")
    for lv in ("g", "c", "f"):
        curve = loss_curves(ldm / lv, assets / f"ldm_{lv}_loss.png") if (ldm / lv).exists() else None
        if curve:
            parts += [f"<p>psi_{lv} training loss:</p>", _img(out, curve, f"ldm {lv} loss curves", 700)]
    samples = out / "samples"
    summ = _read_json(samples / "samples.json")
    m3 = _read_json(samples / "metrics.json")
    if m3:
        rows = []
        floor = m3.get("floor", {})
        for key in ("inception", "efficientnet_lite0"):
            v = m3.get(key, {})
            if v and not v.get("skipped"):
                f = floor.get(key, {})
                rows.append([key, v.get("fid", v.get("frechet_distance")), v.get("kid"),
                             f.get("fid", f.get("frechet_distance")), f.get("kid"), v.get("note", "")])
        parts += [f"<p>{m3.get('num_generated', '?')} generated vs {m3.get('num_real', '?')} real test views; "
                  f"floor: real {_esc(floor.get('split', '-'))} views vs the same test views. "
                  f"{_esc(m3.get('protocol', ''))}</p>",
                  _table(rows, ["features", "FID / Frechet distance", "KID", "floor FID", "floor KID", "note"])]
        if m3.get("warning"):
            parts.append(f"<p class='note'>{_esc(m3['warning'])}</p>")
    if summ:
        parts += [f"<p>{summ.get('num')} scenes sampled with {_esc(summ.get('sampler'))} ({summ.get('steps')} steps), "
                  "rendered along their sampled camera paths; last column: top view of the density with the path.</p>",
                  _img(out, samples / summ.get("contact_sheet", "contact_sheet.png"), "samples contact sheet"),
                  "<table class='samples'><tr><th>sample</th><th>fly-through</th><th>mesh of the density</th><th>files</th></tr>"]
        for rec in summ.get("samples", []):
            d = samples / rec["folder"]
            gif = sample_gif(d, assets / f"{rec['folder']}.gif")
            mesh = mesh_preview(d / "mesh.ply", assets / f"{rec['folder']}_mesh.png", summ.get("bounds"))
            files = " ".join(x for x in (_link(out, d / rec.get("video", "flythrough.mp4"), "video"),
                                         _link(out, d / "mesh.glb", "GLB"), _link(out, d / "mesh.ply", "PLY"),
                                         _link(out, d / "V.safetensors", "V"),
                                         _link(out, d / "trajectory.json", "camera path")) if x)
            parts.append(f"<tr><td>{_esc(rec['folder'])}<br>{rec.get('mesh_faces', 0)} faces</td>"
                         f"<td>{_img(out, gif, 'fly-through') if gif else ''}</td>"
                         f"<td>{_img(out, mesh, 'mesh preview') if mesh else ''}</td><td>{files}</td></tr>")
        parts.append("</table>")

    # the optional stages
    extras = [n for n in EXTRA_NAMES if n in stages]
    if extras:
        parts.append("<h2>Optional stages</h2>")
        titles = {"renderer": "Renderer fine-tuned on decoded latents (lift frozen; adversarial + perceptual)",
                  "bev_ldm": "BEV-map-conditioned levels", "image_prior": "Image prior (nfldm refine)"}
        for name in extras:
            parts.append(f"<h3>{_esc(titles[name])}</h3>")
            rows = [[k, v] for k, v in extra_metrics(state).get(name, {}).items()]
            if rows:
                parts.append(_table(rows, ["", "value"]))
            if name == "renderer":
                parts += ["<p>Held-out test views (rows: ground truth, the fine-tuned renderer, nearest input frame):</p>",
                          _img(out, out / "renderer" / "metrics_test_views.png", "renderer views")]
            runs = [(lv, out / "bev_ldm" / lv) for lv in "gcf"] if name == "bev_ldm" else [("", out / name)]
            for lv, run in runs:
                curve = loss_curves(run, assets / f"{name}{'_' + lv if lv else ''}_loss.png") if run.exists() else None
                if curve:
                    parts.append(_img(out, curve, f"{name} {lv} loss curves".replace("  ", " "), 700))

    # bundle
    bundle = _read_json(out / "bundle" / "bundle.json")
    if bundle:
        parts += ["<h2>Bundled model</h2>",
                  f"<p>{bundle['params']:,} parameters, {bundle['bytes'] / 2**20:.1f} MiB as float16: "
                  f"{_link(out, out / 'bundle' / 'MODEL_CARD.md', 'model card')}. "
                  "<code>nfldm sample --run BUNDLE ...</code> samples from it."
                  + "".join(f" With <code>{_esc(k)}/</code>." for k in ("renderer", "bev", "image_prior")
                            if (out / "bundle" / k).is_dir()) + "</p>"]

    # time and memory
    rows = []
    on = set(qs.get("config", {}).get("extras") or ())
    for name, what in STAGES:
        if name in EXTRA_NAMES and name not in on and name not in stages:
            continue               # an optional stage this run does not have
        s = stages.get(name)
        budget = state.get("budgets", {}).get(name)
        rows.append([name, what, f"{budget:.1f}" if budget is not None else "",
                     f"{s['seconds'] / 60:.2f}" if s else "not run", f"{s['peak_rss_mb'] / 1024:.2f}" if s else ""])
    parts += ["<h2>Where the time went</h2>",
              _table(rows, ["stage", "what", "training budget (min)", "minutes", "peak memory so far (GiB)"]),
              _img(out, time_chart(state, assets / "time.png"), "time per stage") if stages else "",
              f"<p class='note'>Sessions (a killed run continued): {len(state.get('sessions', []))}.</p>"]

    # config
    parts += ["<h2>Config</h2>", f"<pre>{_esc(json.dumps(qs, indent=2))}</pre>", "</body></html>"]
    path = out / REPORT
    atomic_write_bytes(path, "\n".join(parts).encode())
    return path
