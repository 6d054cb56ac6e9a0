"""Plot what psi_c costs by the noise level it starts from: FID and paired LPIPS of sample folders
made by SDEdit from each scene's own c (`nfldm sample ... --own-g LAT --own-c --own-c-from T`; T = 0
is `--own-c` alone, 1000 is `--own-g` alone), beside the unconditional samples, the default map
samples and the own latents, all read from a `benchmarks/bev_gap.py --out` JSON
(docs/notes/2026-12-07-where-psi-c-loses-the-views.md).

    python experiments/psi_c_bands.py --gap out/p/gap.json --bands 0:out/p/ownc_s0 500:out/p/sd500_s0 \
        1000:out/p/owng_s0 --default out/p/a8low250_s0 --plot docs/images/psi_c_bands.png
"""
from __future__ import annotations

import argparse
import json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gap", required=True, help="benchmarks/bev_gap.py's JSON holding every folder below")
    ap.add_argument("--bands", nargs="+", required=True, metavar="T:FOLDER",
                    help="the timestep psi_c started from (0: own c; 1000: from noise) and its sample folder")
    ap.add_argument("--default", default=None, help="the default map samples' folder (a dashed line)")
    ap.add_argument("--plot", required=True, help="PNG to write")
    args = ap.parse_args()
    gap = json.load(open(args.gap))
    rows = gap["rows"]

    def num(folder: str, key: str) -> float:
        if folder not in rows:
            raise SystemExit(f"{args.gap}: no row for {folder} (score it with benchmarks/bev_gap.py --cond)")
        return float(rows[folder][key])

    bands = sorted((int(t), f) for t, f in (b.split(":", 1) for b in args.bands))
    own = [f for f, r in rows.items() if r["kind"] == "own"]
    unc = [f for f, r in rows.items() if r["kind"] == "uncond"]
    print("| psi_c starts from t = | folder | FID | paired LPIPS |")
    print("|---|---|---|---|")
    for t, f in bands:
        print(f"| {t} | {f} | {num(f, 'fid'):.2f} | {num(f, 'lpips'):.4f} |")

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4))
    FigureCanvasAgg(fig)
    for k, (key, name) in enumerate((("fid", "Inception FID"), ("lpips", "paired LPIPS"))):
        ax = fig.add_subplot(1, 2, k + 1)
        ax.plot([t for t, _ in bands], [num(f, key) for _, f in bands], "o-", color="C0",
                label="SDEdit from the own c (psi_c runs below t)")
        lines = [("own latents", own, "C2", ":"), ("unconditional", unc, "C3", ":")]
        if args.default:
            lines.append(("map samples (default)", [args.default], "C1", "--"))
        for label, fs, colour, style in lines:
            if fs:
                ax.axhline(sum(num(f, key) for f in fs) / len(fs), color=colour, ls=style, label=label)
        if own and unc:         # the target: half of the gap between unconditional samples and own latents
            u = sum(num(f, key) for f in unc) / len(unc)
            ax.axhline(0.5 * (u + num(own[0], key)), color="grey", lw=0.8, label="half the gap (target)")
        ax.set_xlabel("psi_c starts from timestep t (of 1000)")
        ax.set_title(name, fontsize=10)
        if k == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
    print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
