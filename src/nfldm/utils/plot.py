"""Pictures: training curves from a trainer's metrics.jsonl (matplotlib, Agg backend, no pyplot state) and a
colour ramp for maps (depth, heights)."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import numpy as np

from nfldm.utils.io import atomic_write_bytes

# Logged bookkeeping values that are not curves worth plotting by default.
_NOT_CURVES = {"step", "lr", "steps_per_s", "time", "epoch", "grad_norm"}


def read_metrics(jsonl_path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl file (broken lines, e.g. from a kill, are skipped)."""
    records = []
    for line in Path(jsonl_path).read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "step" in rec:
            records.append(rec)
    return records


def _smooth(y: np.ndarray, n: int) -> np.ndarray:
    """Centred moving average over ``n`` points (``n`` <= 1: unchanged)."""
    if n <= 1 or len(y) < n:
        return y
    kernel = np.ones(n) / n
    pad = np.pad(y, (n // 2, n - 1 - n // 2), mode="edge")
    return np.convolve(pad, kernel, mode="valid")


def plot_metrics(jsonl_path: str | os.PathLike, png_path: str | os.PathLike,
                 keys: list[str] | None = None) -> Path:
    """Plot curves of ``keys`` against step, one panel each, and save a PNG atomically.

    ``keys`` default: every numeric key whose name contains "loss" (``loss`` first). Each
    panel shows the raw values (light) and a moving average; the y axis is logarithmic when
    all finite values of that key are positive. Returns ``png_path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_metrics(jsonl_path)
    if keys is None:
        seen: dict[str, None] = {}
        for rec in records:
            for k, v in rec.items():
                if "loss" in k and k not in _NOT_CURVES and isinstance(v, (int, float)):
                    seen[k] = None
        keys = sorted(seen, key=lambda k: (k != "loss", k)) or ["loss"]

    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig = Figure(figsize=(5 * ncols, 3.2 * nrows), dpi=100)
    FigureCanvasAgg(fig)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        pts = [(r["step"], float(r[key])) for r in records
               if isinstance(r.get(key), (int, float)) and math.isfinite(float(r[key]))]
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if not pts:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            continue
        x, y = (np.array(v) for v in zip(*pts))
        ax.plot(x, y, color="tab:blue", alpha=0.3, linewidth=0.8)
        ax.plot(x, _smooth(y, max(1, len(y) // 50)), color="tab:blue", linewidth=1.5,
                marker="o" if len(y) <= 60 else None, markersize=3)       # sparse series (held-out) as points
        if np.all(y > 0):
            ax.set_yscale("log")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(png_path, buf.getvalue())
    return Path(png_path)


_RAMP = np.array(  # dark blue -> purple -> orange -> yellow (an approximation of "magma"/"plasma")
    [[13, 8, 135], [126, 3, 168], [204, 71, 120], [248, 149, 64], [240, 249, 33]], dtype=np.float32
)


def colorize(x: np.ndarray, lo: float, hi: float, invalid: np.ndarray | None = None) -> np.ndarray:
    """Map H x W values to an H x W x 3 uint8 colour ramp; ``invalid`` (or non-finite) pixels black."""
    t = np.clip((np.nan_to_num(x, nan=lo) - lo) / max(hi - lo, 1e-9), 0, 1) * (len(_RAMP) - 1)
    i = np.minimum(t.astype(int), len(_RAMP) - 2)
    w = (t - i)[..., None]
    rgb = _RAMP[i] * (1 - w) + _RAMP[i + 1] * w
    bad = ~np.isfinite(x) if invalid is None else (invalid | ~np.isfinite(x))
    rgb[bad] = 0
    return rgb.astype(np.uint8)
