"""Where does the FID gap between generated scenes and their own latents lie? (issue 23)

    python experiments/gap_anatomy.py --own O SAMPLES [SAMPLES ...] [--data out/release/data] [--plot PNG]

Every folder is made along the real paths of the same test scenes (``nfldm sample --bev DATA
--path-from-scene`` or ``--path-from-scene DATA``; ``--own``: ``--own-latents``), one sample a scene.
Per folder it prints, beside the own latents' and the real frames':

- the sampled coarse latents c (raw, from each ``V.safetensors``), standardised by the own
  latents' per-channel mean and std: their std, the mean squared difference of neighbouring cells
  (all three axes, and the two map axes), and the std of each sample's std;
- its frames (every third): mean grey level, its 10th and 90th percentiles over frames, contrast
  (std within a frame), fraction of dark pixels (< 10) and sharpness (mean |horizontal neighbour
  difference|);
- Inception FID against the real test views (``nfldm eval generation``'s set), split into its mean
  term |mu - mu_real|^2 and its covariance term, and FID against the own latents' renders (the
  same renderer on both sides, so what is left is what the sampled latents change);
- the k-NN precision and recall (Kynkaanniemi et al. 2019, k = 3) against the real views.

Inception features are read from each folder's ``inception_features.npz`` (computed there when
missing, as ``experiments/fid_count.py`` does). ``--plot``: the FIDs as bars (against the real
views split into their two terms, and against the own latents' views).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def coarse(folder: Path) -> torch.Tensor:
    """The raw c of every sample of a folder: N x C x X x Y x Z."""
    from nfldm.data.tensors import read_safetensors

    cs = []
    for d in sorted(folder.glob("sample_*")):
        t, _ = read_safetensors(d / "V.safetensors")
        cs.append(t["c"].float())
    return torch.stack(cs)


def c_stats(c: torch.Tensor, ref: torch.Tensor) -> str:
    mu, sd = ref.mean((0, 2, 3, 4), keepdim=True), ref.std((0, 2, 3, 4), keepdim=True)
    z = (c - mu) / sd
    nb = np.mean([float((z.diff(dim=k) ** 2).mean()) for k in (2, 3, 4)])
    nbxy = np.mean([float((z.diff(dim=k) ** 2).mean()) for k in (2, 3)])
    per = z.flatten(1).std(1)
    return (f"c: std {float(z.std()):.3f}, neighbour difference {nb:.3f} (map axes {nbxy:.3f}), per-sample std "
            f"{float(per.mean()):.3f} +- {float(per.std()):.3f}")


def frame_stats(files: list[Path]) -> str:
    from PIL import Image

    m, s, dark, sh = [], [], [], []
    for f in files:
        a = np.asarray(Image.open(f).convert("RGB")).astype(np.float32).mean(-1)
        m.append(a.mean())
        s.append(a.std())
        dark.append((a < 10).mean())
        sh.append(np.abs(np.diff(a, axis=1)).mean())
    m = np.array(m)
    return (f"frames: grey {m.mean():.1f} (p10 {np.percentile(m, 10):.1f}, p90 {np.percentile(m, 90):.1f}), "
            f"contrast {np.mean(s):.1f}, dark {np.mean(dark):.3f}, sharpness {np.mean(sh):.2f}")


def fid_parts(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    """(mean term, covariance term) of the Frechet distance between two sets' (mean, covariance)."""
    from nfldm.metrics.fid import frechet_distance

    mean = float(((a[0] - b[0]) ** 2).sum())
    return mean, frechet_distance(*a, *b) - mean


def precision_recall(gen: np.ndarray, real: np.ndarray, k: int = 3) -> tuple[float, float]:
    g, r = torch.from_numpy(gen).float(), torch.from_numpy(real).float()

    def radii(x):
        d = torch.cdist(x, x)
        d.fill_diagonal_(float("inf"))
        return d.kthvalue(k, dim=1).values

    rr, gr = radii(r), radii(g)
    d = torch.cdist(g, r)
    return float((d <= rr[None]).any(1).float().mean()), float((d.T <= gr[None]).any(1).float().mean())


def plot(rows: list[tuple[str, float, float, float]], path: str) -> None:
    """rows: (name, mean term, covariance term, FID vs the own latents' views)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 3.2), dpi=110)
    FigureCanvasAgg(fig)
    names = [r[0] for r in rows]
    x = np.arange(len(rows))
    ax = fig.add_subplot(1, 2, 1)
    ax.bar(x, [r[2] for r in rows], color="C7", alpha=0.5, label="covariance term")
    ax.bar(x, [r[1] for r in rows], bottom=[r[2] for r in rows], color="C0", alpha=0.7, label="mean term")
    for i, r in enumerate(rows):
        ax.text(i, r[1] + r[2] + 1, f"{r[1] + r[2]:.1f}", ha="center", fontsize=7)
    ax.set_title("Inception FID against the real test views", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    ax2 = fig.add_subplot(1, 2, 2)
    ax2.bar(x, [r[3] for r in rows], color="C2", alpha=0.7)
    for i, r in enumerate(rows):
        ax2.text(i, r[3] + 0.5, f"{r[3]:.1f}", ha="center", fontsize=7)
    ax2.set_title("FID against the own latents' views (same renderer)", fontsize=8)
    for a in (ax, ax2):
        a.set_xticks(x, names, rotation=20, fontsize=7)
        a.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("samples", nargs="+")
    ap.add_argument("--own", required=True, help="the scenes' own latents decoded (nfldm sample --own-latents)")
    ap.add_argument("--data", default="out/release/data")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--plot", default=None, help="PNG of the FIDs")
    ap.add_argument("--names", nargs="+", default=None, help="the plot's labels: the own folder's, then each folder's")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from nfldm.ldm.evaluate import real_inception_features, sample_inception_features
    from nfldm.metrics.fid import feature_stats, frechet_distance

    own = Path(args.own)
    ref = coarse(own)
    net, net_id, real_f = real_inception_features(args.data, "test", args.device)
    own_f = sample_inception_features(own, net, net_id, args.device)[0]
    real_st, own_st = feature_stats(real_f), feature_stats(own_f)
    real_files = []
    for d in sorted(own.glob("sample_*")):
        scene = Path(json.loads((d / "condition.json").read_text())["path_from_scene"])
        real_files += sorted((scene / "images").glob("*.png"))[::3]
    print(f"real frames of the own folder's scenes: {frame_stats(real_files)}")
    rows = []
    for folder in [own] + [Path(s) for s in args.samples]:
        f = own_f if folder == own else sample_inception_features(folder, net, net_id, args.device)[0]
        st = own_st if folder == own else feature_stats(f)
        mean, cov = fid_parts(st, real_st)
        p, r = precision_recall(f, real_f)
        vs_own = max(0.0, frechet_distance(*st, *own_st))
        rows.append((folder.name, mean, cov, vs_own))
        print(f"{folder}:\n  {c_stats(coarse(folder), ref)}\n"
              f"  {frame_stats(sorted(folder.glob('sample_*/frames/*.png'))[::3])}\n"
              f"  Inception FID vs real {mean + cov:.2f} (mean term {mean:.2f}, covariance term {cov:.2f}); "
              f"vs the own latents' renders {vs_own:.2f}; precision {p:.3f}, recall {r:.3f}",
              flush=True)
    if args.plot:
        if args.names:
            if len(args.names) != len(rows):
                raise SystemExit(f"error: --names: {len(rows)} labels needed (the own folder's first), got {len(args.names)}")
            rows = [(n, *r[1:]) for n, r in zip(args.names, rows)]
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
