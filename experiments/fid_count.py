"""How the Inception FID of ``nfldm sample`` folders depends on how many samples it is computed from.

    python experiments/fid_count.py --samples S1 [S2 ...] --data DATA [--split test] [--subset 16]
                                    [--out JSON] [--plot PNG] [--from-json JSON ...]

FID is biased upwards for small sets, by an amount that depends on the generator (Chong and
Forsyth 2020, "Effectively unbiased FID and Inception score and where to find them"): comparing two
models' FIDs at 768 views is not comparing them at 5,000. Per folder (each a ``nfldm sample``
folder of many samples; its Inception features are computed once and kept in
``SAMPLES/inception_features.npz``), against the real views of ``--split`` (the same set, counts
and cache as ``nfldm eval generation``):

- ``protocol``: FID / KID of up to 5,000 views, evenly subsampled, exactly as ``nfldm eval
  generation`` scores the folder (the metrics page's protocol at its full size);
- ``subsets``: FID of disjoint sets of ``--subset`` samples (the release targets' 16-sample
  protocol), their mean and standard deviation;
- ``fid_infinity``: the FID extrapolated to infinitely many views: FIDs of random sets of whole
  samples of growing size (5 draws each), a line FID = FID_inf + k / N fitted over the views N.

Prints one table row per folder; ``--plot`` draws FID against 1 / N with the fitted lines.
``--from-json`` redraws / reprints from earlier ``--out`` files without computing anything.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _row(name: str, r: dict) -> str:
    if "subset_fids" not in r:          # --protocol-only
        return f"| {name} | {r['num_views']} | {r['fid']:.2f} | {r['kid']:.4f} | - | - |"
    return (f"| {name} | {r['num_views']} | {r['fid']:.2f} | {r['kid']:.4f} | {r['subset_fid_mean']:.2f} +- "
            f"{r['subset_fid_std']:.2f} ({len(r['subset_fids'])}) | {r['fid_infinity']:.2f} |")


def plot(rows: dict, path: str) -> None:
    """FID against 1 / views for every folder: the random sets, the fitted line to 1 / N = 0."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for i, (name, r) in enumerate((k, v) for k, v in rows.items() if "fit_points" in v):
        x, y = np.array(r["fit_points"]).T
        col = f"C{i}"
        ax.scatter(x * 1e3, y, s=10, color=col, label=f"{Path(name).name}: FID_inf {r['fid_infinity']:.1f}")
        xs = np.array([0.0, x.max()])
        ax.plot(xs * 1e3, r["fid_infinity"] + r["fid_slope"] * xs, color=col, lw=1)
    ax.set_xlabel("1000 / generated views (768 views = 16 samples at 1.30; 5,040 at 0.20)")
    ax.set_ylabel("Inception FID vs the test views")
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", nargs="+", default=[])
    ap.add_argument("--data", default=None)
    ap.add_argument("--plot", default=None, help="PNG: FID against 1 / views, every folder, with its fit")
    ap.add_argument("--from-json", nargs="+", default=[], help="rows of earlier --out files (nothing computed)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--subset", type=int, default=16, help="samples per disjoint subset (the 16-sample protocol)")
    ap.add_argument("--draws", type=int, default=5, help="random sets per size for the extrapolation")
    ap.add_argument("--protocol-only", action="store_true", help="only the FID / KID at up to 5,000 views")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.from_json:
        rows = {}
        for f in args.from_json:
            rows.update(json.loads(Path(f).read_text())["rows"])
        for s, r in rows.items():
            print(_row(s, r))
        if args.plot:
            plot(rows, args.plot)
        return
    if not args.samples or not args.data:
        ap.error("--samples and --data are needed (or --from-json)")

    from nfldm.ldm.evaluate import MAX_IMAGES, _evenly, real_inception_features, sample_inception_features
    from nfldm.metrics.fid import feature_stats, frechet_distance, kid
    from nfldm.trainer import resolve_device
    from nfldm.utils.io import atomic_write_json

    dev = resolve_device(args.device)
    net, net_id, real = real_inception_features(args.data, args.split, dev)
    real_stats = feature_stats(real)           # once: every FID below is against the same real set

    def fid(gen: np.ndarray) -> float:      # nfldm.metrics.fid.fid_from_features(gen, real), real stats kept
        return frechet_distance(*feature_stats(gen), *real_stats)

    rows = {}
    print(f"{len(real)} real views of split '{args.split}' of {args.data}")
    print("| samples | views | FID (protocol, up to 5,000 views) | KID | FID of disjoint sets of "
          f"{args.subset} samples: mean +- std (sets) | FID_inf (fit) |")
    print("|---|---|---|---|---|---|")
    for s in args.samples:
        feats, owner = sample_inception_features(s, net, net_id, dev)
        ids = np.unique(owner)
        pick = _evenly(len(feats), MAX_IMAGES)
        fid_full = fid(feats[pick])
        kid_full = kid(feats[pick], real)[0]
        if args.protocol_only:
            rows[s] = {"num_samples": int(len(ids)), "num_views": int(len(pick)), "fid": fid_full, "kid": kid_full}
            print(_row(s, rows[s]), flush=True)
            continue
        sub = [fid(feats[np.isin(owner, ids[i:i + args.subset])])
               for i in range(0, len(ids) - args.subset + 1, args.subset)]
        rng = np.random.default_rng(0)
        sizes = sorted({int(round(x)) for x in np.linspace(args.subset, len(ids), 6)})
        pts = []
        for n in sizes:
            for _ in range(args.draws if n < len(ids) else 1):
                m = np.isin(owner, rng.choice(ids, n, replace=False))
                pts.append((1.0 / m.sum(), fid(feats[m])))
        x, y = np.array(pts).T
        # a line needs two sizes: a folder of at most --subset samples has no FID_inf
        slope, inf = np.polyfit(x, y, 1) if len(set(x)) > 1 else (float("nan"), float("nan"))
        rows[s] = {"num_samples": int(len(ids)), "num_views": int(len(pick)), "fid": fid_full, "kid": kid_full,
                   "subset": args.subset, "subset_fids": sub, "subset_fid_mean": float(np.mean(sub)),
                   "subset_fid_std": float(np.std(sub)), "fid_infinity": float(inf), "fid_slope": float(slope),
                   "fit_points": [[float(a), float(b)] for a, b in pts]}
        print(_row(s, rows[s]), flush=True)
    if args.plot:
        plot(rows, args.plot)
    if args.out:
        atomic_write_json(args.out, {"data": args.data, "split": args.split, "num_real": int(len(real)),
                                     "rows": rows})


if __name__ == "__main__":
    main()
