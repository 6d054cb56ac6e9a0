"""Would choosing the best of N map samples close issue 23's paired-LPIPS gap? Reads the
`nfldm eval generation --out` JSONs of N sample folders made for the same scenes along their real
paths with different seeds, and prints, per selection rule, the paired LPIPS / PSNR of the chosen
sample of each scene (docs/notes/2026-12-07-best-of-n-by-the-map.md).

    python experiments/best_of_n.py out/bon/s0.json out/bon/s1.json out/bon/s2.json

The rules choose by what a user gives (the map): the sample's wall IoU, its inside IoU, or both
(``map_agreement``). The oracle chooses by the paired LPIPS itself, against the real frames: not a
method, the most any selector among these N samples could buy. Also prints the within-scene
correlation of each map score with paired LPIPS, and the within-scene spread of paired LPIPS.
"""
from __future__ import annotations

import argparse
import json

import numpy as np


def load(paths: list[str]) -> tuple[list[str], dict[str, np.ndarray]]:
    """N JSONs -> the scene names and {metric: N x scenes} (lpips, psnr, wall, inside)."""
    docs = []
    for p in paths:
        try:
            d = json.load(open(p))
            d["paired_views"]["per_sample"], d["map_agreement"]["per_sample"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"{p}: not an nfldm eval generation JSON of map samples along real paths ({e})")
        docs.append(d)

    def scenes(d):
        return {v["scene"]: k for k, v in d["paired_views"]["per_sample"].items()}

    common = sorted(set.intersection(*(set(scenes(d)) for d in docs)))
    if not common:
        raise SystemExit("the JSONs share no scene: score folders made for the same scenes")
    out = {k: [] for k in ("lpips", "psnr", "wall", "inside")}
    for d in docs:
        name = scenes(d)
        pv, ma = d["paired_views"]["per_sample"], d["map_agreement"]["per_sample"]
        out["lpips"].append([pv[name[s]]["lpips"] for s in common])
        out["psnr"].append([pv[name[s]]["psnr"] for s in common])
        out["wall"].append([ma[name[s]]["wall_iou"] for s in common])
        out["inside"].append([ma[name[s]]["inside_iou"] for s in common])
    return common, {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("evals", nargs="+", help="nfldm eval generation JSONs, one per seed, same scenes")
    args = ap.parse_args()
    if len(args.evals) < 2:
        raise SystemExit("give at least two JSONs (seeds) to choose between")
    common, m = load(args.evals)
    n, s = m["lpips"].shape
    cols = np.arange(s)
    print(f"{s} scenes, {n} samples each")
    print("| rule | samples | paired LPIPS | paired PSNR | wall IoU |")
    print("|---|---|---|---|---|")
    for k in range(1, n + 1):
        print(f"| one sample (mean over the first {k} seeds) | 1 | {m['lpips'][:k].mean():.4f} | "
              f"{m['psnr'][:k].mean():.2f} | {m['wall'][:k].mean():.4f} |")
    rules = {"highest wall IoU": m["wall"], "highest inside IoU": m["inside"],
             "highest wall + inside IoU": m["wall"] + m["inside"], "oracle: lowest paired LPIPS": -m["lpips"]}
    for name, score in rules.items():
        for k in range(2, n + 1):
            pick = score[:k].argmax(0)
            print(f"| {name} | {k} | {m['lpips'][pick, cols].mean():.4f} | {m['psnr'][pick, cols].mean():.2f} | "
                  f"{m['wall'][pick, cols].mean():.4f} |")
    centred = {k: v - v.mean(0) for k, v in m.items()}
    for k in ("wall", "inside"):
        r = np.corrcoef(centred[k].ravel(), centred["lpips"].ravel())[0, 1]
        print(f"within-scene correlation of {k} IoU with paired LPIPS: {r:+.3f}")
    between = m["lpips"].mean(0).std()
    print(f"paired LPIPS spread: within a scene (std over seeds) {centred['lpips'].std(0, ddof=1).mean():.4f}, "
          f"between scenes (std of scene means) {between:.4f}")


if __name__ == "__main__":
    main()
