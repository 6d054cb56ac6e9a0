"""The BEV levels' gaps at the metrics protocol's size (issue 23): Inception FID and paired LPIPS
of map-conditioned samples against unconditional samples along the same camera paths (the lower
bound) and the scenes' own latents decoded (the upper bound), and the share of each gap closed.

    python benchmarks/bev_gap.py --cond D [D ...] --uncond D [D ...] --own D --data DATA
                                 [--split test] [--subset 32] [--out JSON] [--plot PNG]

Each folder holds one sample per test scene along that scene's real path, all over the same
scenes in the same order (their ``--max-scenes`` alike; without it every scene of the split):

    nfldm sample --bev DATA --split test --num 1 --path-from-scene --sampler dpm --steps 20 --seed S --out D
    nfldm sample --path-from-scene DATA --split test --num 1 --sampler dpm --steps 20 --seed S --out D
    nfldm sample --bev DATA --split test --path-from-scene --own-latents LATENTS --out D

(conditional, unconditional, own latents). The release data's whole test split is 205 scenes x 24
frames = 4,920 views: the metrics protocol's size (docs/metrics.md: up to 5,000 views a side).
docs/ldm.md measured the gaps on 32 of them; at that size one set of samples moves the FID by up
to 7 points of a 12-point gap, and FID's small-set bias differs between generators
(docs/notes/2026-12-06-fid-at-the-protocols-size.md).

Per folder: Inception FID / KID of all its views (up to 5,000, evenly spaced, as ``nfldm eval
generation``) against the split's views; paired PSNR / LPIPS against the real frames at the same
cameras; wall IoU against the map given. Per conditional folder: the share of each gap closed,
(lower - value) / (lower - upper), the lower bound the mean over the ``--uncond`` folders. The
same again on interleaved sets of about ``--subset`` scenes (every k-th scene, k = scenes //
subset, each offset one set: the same scenes in every folder), as mean +- std over the sets: what
the 32-scene protocol of the earlier notes can and cannot tell. Inception features are kept in
each folder (``inception_features.npz``), so a folder is scored again without running Inception
again; the paired views are scored each run (about 20 s a folder).

Two diagnostics beside each FID (not targets): its mean term |mu - mu_real|^2 (the rest is the
covariance term), and the FID against the own latents' views instead of the real ones. Every
folder's views come from the same stage-1 and stage-2 decoders, whose own distance from the real
frames is most of every FID against them (the own latents': 123.8 on the release data); against the
own latents' views that shared distance drops out and what is left is what the sampled latents change
(docs/notes/2026-12-07-edits-at-the-protocols-size-and-the-fid-gap.md). The last column gives it on
the interleaved sets (each against the own latents' views of its scenes): on sets of 34 scenes it
told the map's samples from unconditional ones where the FID against the real views could not.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _per_sample(d: Path) -> dict:
    """{sample index: {"lpips", "psnr", "scene", "wall_iou"}} of one folder (about 20 s for 205 samples
    on one thread; not kept, unlike the Inception features)."""
    from nfldm.ldm.evaluate import paired_views, sample_map_agreement

    res = {}
    for s in sorted(d.glob("sample_*")):
        pv, ma = paired_views(s), sample_map_agreement(s)
        if pv is None:
            raise SystemExit(f"error: {s}: not rendered along a real scene's path (no path_from_scene in its "
                             "condition.json); sample with --path-from-scene")
        res[int(s.name.split("_")[1])] = {"lpips": pv["lpips"], "psnr": pv["psnr"], "scene": pv["scene"],
                                          "wall_iou": None if ma is None else ma["wall_iou"]}
    return res


def plot(rows: dict, path: str) -> None:
    """Two panels (FID, paired LPIPS): per folder, the whole split as a bar (from the panel's
    floor) and its interleaved sets as dots, grouped own / unconditional / conditional."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    order = sorted(rows, key=lambda n: ("own", "uncond", "cond").index(rows[n]["kind"]))
    colours = {"own": "C2", "uncond": "C7", "cond": "C0"}
    fig = Figure(figsize=(8.0, 3.4), dpi=110)
    FigureCanvasAgg(fig)
    for k, (key, sets, label) in enumerate((("fid", "set_fids", "Inception FID vs the test views"),
                                            ("lpips", "set_lpips", "paired LPIPS vs the real frames"))):
        ax = fig.add_subplot(1, 2, k + 1)
        lo = min(min(rows[n][sets] + [rows[n][key]]) for n in order)
        hi = max(max(rows[n][sets] + [rows[n][key]]) for n in order)
        floor = lo - 0.15 * (hi - lo)
        for i, n in enumerate(order):
            r = rows[n]
            ax.bar(i, r[key] - floor, bottom=floor, width=0.6, color=colours[r["kind"]], alpha=0.35)
            ax.scatter(np.full(len(r[sets]), i) + np.linspace(-0.2, 0.2, len(r[sets])), r[sets], s=9,
                       color=colours[r["kind"]])
        ax.set_xticks(range(len(order)), [Path(n).name for n in order], rotation=30, fontsize=7)
        ax.set_ylim(floor, hi + 0.1 * (hi - lo))
        ax.set_ylabel(label, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("bars: every test scene (the protocol's size); dots: interleaved sets of ~32 scenes", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cond", nargs="+", required=True, help="map-conditioned sample folders (one per seed)")
    ap.add_argument("--uncond", nargs="+", required=True, help="unconditional sample folders along the same paths")
    ap.add_argument("--own", required=True, help="the scenes' own latents decoded along the same paths")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--subset", type=int, default=32, help="about this many scenes per interleaved set")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None, help="JSON of every number")
    ap.add_argument("--plot", default=None, help="PNG: each folder's FID and paired LPIPS, whole split and per set")
    args = ap.parse_args()

    from nfldm.ldm.evaluate import MAX_IMAGES, _evenly, real_inception_features, sample_inception_features
    from nfldm.metrics.fid import feature_stats, frechet_distance, kid
    from nfldm.trainer import resolve_device
    from nfldm.utils.io import atomic_write_json
    from release_targets import _gap_closed as _gap     # benchmarks/ is sys.path[0] when run as a script

    folders = {"own": [Path(args.own)], "uncond": [Path(p) for p in args.uncond], "cond": [Path(p) for p in args.cond]}
    for kind, ds in folders.items():
        for d in ds:
            if not (d / "samples.json").is_file():
                raise SystemExit(f"error: {d}: not a sample folder (no samples.json); make it with nfldm sample")
    dev = resolve_device(args.device)
    net, net_id, real = real_inception_features(args.data, args.split, dev)
    real_stats = feature_stats(real)

    def fid(stats: tuple[np.ndarray, np.ndarray]) -> float:
        """FID against the real views, from a set's (mean, covariance)."""
        return frechet_distance(*stats, *real_stats)

    scored: dict[str, dict] = {}
    scenes = None
    own_stats = None
    for kind, ds in folders.items():
        for d in ds:
            feats, owner = sample_inception_features(d, net, net_id, dev)
            pick = _evenly(len(feats), MAX_IMAGES)
            stats = feature_stats(feats[pick])
            if own_stats is None:           # the own latents' folder comes first
                own_stats = stats
            per = _per_sample(d)
            order = [per[i]["scene"] for i in sorted(per)]
            if scenes is None:
                scenes = order
            elif order != scenes:
                raise SystemExit(f"error: {d}: its samples follow other scenes than {folders['own'][0]}'s "
                                 "(sample every folder over the same --split and --max-scenes)")
            iou = [r["wall_iou"] for r in per.values() if r["wall_iou"] is not None]
            scored[str(d)] = {"feats": feats, "owner": owner, "per": per,
                              "row": {"kind": kind, "samples": len(per), "views": int(len(pick)), "fid": fid(stats),
                                      "kid": float(kid(feats[pick], real)[0]),
                                      "psnr": float(np.mean([r["psnr"] for r in per.values()])),
                                      "lpips": float(np.mean([r["lpips"] for r in per.values()])),
                                      "wall_iou": float(np.mean(iou)) if iou else None,
                                      "fid_mean_term": float(((stats[0] - real_stats[0]) ** 2).sum()),
                                      "fid_vs_own": max(0.0, frechet_distance(*stats, *own_stats))}}
            r = scored[str(d)]["row"]
            print(f"{d}: {r['views']} views, FID {r['fid']:.2f} (mean term {r['fid_mean_term']:.2f}; against the own "
                  f"latents' views {r['fid_vs_own']:.2f}), KID {r['kid']:.4f}, paired PSNR {r['psnr']:.2f} / "
                  f"LPIPS {r['lpips']:.4f}, wall IoU {'-' if r['wall_iou'] is None else format(r['wall_iou'], '.3f')}",
                  flush=True)

    n = len(scenes)
    k = max(1, n // args.subset)
    sets = [np.arange(o, n, k) for o in range(k)]

    def set_stats(entry: dict, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return feature_stats(entry["feats"][np.isin(entry["owner"], ids)])

    own_set_stats = [set_stats(scored[str(folders["own"][0])], ids) for ids in sets]

    def set_scores(entry: dict, j: int) -> tuple[float, float, float]:
        """Set j's FID, paired LPIPS and FID against the own latents' views of the same scenes."""
        st = set_stats(entry, sets[j])
        return (fid(st), float(np.mean([entry["per"][int(i)]["lpips"] for i in sets[j]])),
                max(0.0, frechet_distance(*st, *own_set_stats[j])))

    by_set = {name: [set_scores(e, j) for j in range(len(sets))] for name, e in scored.items()}
    rows = {name: e["row"] for name, e in scored.items()}
    for name, e in scored.items():
        fs, ls, vo = np.array(by_set[name]).T
        rows[name].update(set_fid_mean=float(fs.mean()), set_fid_std=float(fs.std()), set_fids=fs.tolist(),
                          set_lpips=ls.tolist(), set_fid_vs_own=vo.tolist())
    unc = [str(d) for d in folders["uncond"]]
    own = str(folders["own"][0])
    lo_f, lo_l = np.mean([rows[u]["fid"] for u in unc]), np.mean([rows[u]["lpips"] for u in unc])
    for c in map(str, folders["cond"]):
        full = {"fid": _gap(lo_f, rows[c]["fid"], rows[own]["fid"]), "lpips": _gap(lo_l, rows[c]["lpips"], rows[own]["lpips"])}
        per_set = {m: [_gap(np.mean([by_set[u][j][i] for u in unc]), by_set[c][j][i], by_set[own][j][i])
                       for j in range(len(sets))] for i, m in enumerate(("fid", "lpips"))}
        rows[c].update(gap_closed=full, set_gap_closed=per_set)
    cs = [str(d) for d in folders["cond"]]
    summary = {"fid": _gap(lo_f, np.mean([rows[c]["fid"] for c in cs]), rows[own]["fid"]),
               "lpips": _gap(lo_l, np.mean([rows[c]["lpips"] for c in cs]), rows[own]["lpips"])}

    print(f"\n{n} scenes of split '{args.split}' of {args.data}, {len(real)} real views; {len(sets)} interleaved sets of "
          f"{min(map(len, sets))}-{max(map(len, sets))} scenes")
    print("| folder | kind | views | FID | KID | paired PSNR / LPIPS | wall IoU | FID gap closed | LPIPS gap closed "
          f"| sets of ~{args.subset}: FID mean +- std | sets: FID gap closed, min .. max "
          "| sets: FID vs the own latents' views, mean +- std |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        g = r.get("gap_closed")
        sg = r.get("set_gap_closed")
        print(f"| {name} | {r['kind']} | {r['views']} | {r['fid']:.2f} | {r['kid']:.4f} | {r['psnr']:.2f} / "
              f"{r['lpips']:.4f} | {'-' if r['wall_iou'] is None else format(r['wall_iou'], '.3f')} | "
              f"{'-' if g is None else format(g['fid'], '.0%')} | {'-' if g is None else format(g['lpips'], '.0%')} | "
              f"{r['set_fid_mean']:.2f} +- {r['set_fid_std']:.2f} | "
              f"{'-' if sg is None else format(min(sg['fid']), '.0%') + ' .. ' + format(max(sg['fid']), '.0%')} | "
              f"{np.mean(r['set_fid_vs_own']):.1f} +- {np.std(r['set_fid_vs_own']):.1f} |")
    print(f"conditional folders' mean: FID gap closed {summary['fid']:.0%}, paired-LPIPS gap closed "
          f"{summary['lpips']:.0%} (target: 50 % each)")
    if args.plot:
        plot(rows, args.plot)
    if args.out:
        atomic_write_json(args.out, {"data": args.data, "split": args.split, "num_real": int(len(real)),
                                     "scenes": scenes, "sets": [s.tolist() for s in sets], "rows": rows,
                                     "mean_gap_closed": summary})


if __name__ == "__main__":
    main()
