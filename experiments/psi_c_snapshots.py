"""Choose a BEV psi_c by its samples, not its held-out loss: every snapshot of a run
(``--set snapshot_every=N``: RUN/snapshots/step_NNNNNN/) and any other c level given, sampled along
test scenes' real paths (spread over the split) with `nfldm sample --bev`'s defaults (``bev_levers.py sample``,
the hand-over to the bundle's unconditional psi_c below t = 250), scored by Inception FID / KID
against every test view (``fid_count.py --protocol-only``) and paired LPIPS against the real frames,
beside the run's held-out loss at that step (docs/notes/2026-12-07-more-windows-for-psi-c.md).

    python experiments/psi_c_snapshots.py --run out/snap/run/c --also src/nfldm/weights/tiny/bev/c \\
        --out out/p/snap --max-scenes 34 [--plot P.png]

Folders already scored (OUT_<name>/fid.json, lpips.json) are not sampled or scored again; snapshots that do
not exist yet are skipped, so it can run beside the training and again after it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def score(level: Path, out: Path, args) -> dict:
    """Sample ``out`` with psi_c from ``level`` (unless done) -> {"fid", "kid", "lpips", "samples"}."""
    if not (out / "inception_features.npz").exists():
        from nfldm.pipeline.bundle import bundled_bev_model
        from nfldm.pipeline.generate import MAP_GUIDANCE, MAP_GUIDANCE_LEVELS, hand_over_source

        low_src, hand_over = hand_over_source(bundled_bev_model(), None, None, True)   # nfldm sample --bev's
        subprocess.run([sys.executable, str(ROOT / "experiments" / "bev_levers.py"), "sample", "--out", str(out),
                        "--seed", str(args.seed), "--max-scenes", str(args.max_scenes), "--guidance", str(MAP_GUIDANCE),
                        "--guidance-levels", MAP_GUIDANCE_LEVELS, "--psi-c", str(level), "--psi-c-low", str(low_src),
                        "--low-below", str(hand_over), "--sampler", "dpm", "--data", args.data], check=True)
    return folder_scores(out, args.data)


def folder_scores(out: Path, data: str) -> dict:
    """{"fid", "kid", "lpips", "samples"} of a sample folder made along the real test paths: Inception
    FID / KID against every test view (``fid_count.py --protocol-only``, OUT/fid.json) and paired LPIPS
    against the real frames (OUT/lpips.json); each computed once a folder."""
    res = out / "fid.json"
    if not res.exists():
        subprocess.run([sys.executable, str(ROOT / "experiments" / "fid_count.py"), "--samples", str(out), "--data", data,
                        "--protocol-only", "--out", str(res)], check=True)
    row = next(iter(json.loads(res.read_text())["rows"].values()))
    paired = out / "lpips.json"              # once a folder: the script is run again while a run trains
    if not paired.exists():
        from nfldm.ldm.evaluate import paired_views

        lp = [paired_views(s)["lpips"] for s in sorted(out.glob("sample_*"))]
        paired.write_text(json.dumps({"lpips": float(np.mean(lp)), "samples": len(lp)}))
    return {"fid": row["fid"], "kid": row["kid"], **json.loads(paired.read_text())}


def held_out(run: Path) -> dict[int, float]:
    """{step: val_loss} of the run's metrics.jsonl."""
    f = run / "metrics.jsonl"
    lines = f.read_text().splitlines() if f.exists() else []
    return {r["step"]: r["val_loss"] for r in map(json.loads, lines) if "val_loss" in r}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a c level's run directory with snapshots/ (RUN/c)")
    ap.add_argument("--also", nargs="*", default=[], help="other c levels to score the same way (e.g. the bundle's bev/c)")
    ap.add_argument("--out", required=True, help="prefix of the sample folders (OUT_<name>)")
    ap.add_argument("--data", default="out/release/data")
    ap.add_argument("--max-scenes", type=int, default=34)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", default=None, help="PNG: FID and paired LPIPS against the snapshot's step")
    args = ap.parse_args()
    run = Path(args.run)
    levels = [(p.name, p) for p in sorted((run / "snapshots").glob("step_*")) if (p / "model.json").exists()]
    levels += [(Path(a).parent.name + "_" + Path(a).name, Path(a)) for a in args.also]
    val = held_out(run)
    rows = {}
    print("| psi_c | held-out loss | FID | KID | paired LPIPS | samples |\n|---|---|---|---|---|---|")
    for name, level in levels:
        r = score(level, Path(f"{args.out}_{name}"), args)
        step = int(name.split("_")[1]) if name.startswith("step_") else None
        rows[name] = {**r, "step": step, "val_loss": val.get(step)}
        v = "-" if rows[name]["val_loss"] is None else f"{rows[name]['val_loss']:.4f}"
        print(f"| {name} | {v} | {r['fid']:.2f} | {r['kid']:.4f} | {r['lpips']:.4f} | {r['samples']} |", flush=True)
    if args.plot:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(8.0, 3.2), dpi=110)
        FigureCanvasAgg(fig)
        snaps = sorted((r["step"], r) for r in rows.values() if r["step"] is not None)
        for k, key in enumerate(("fid", "lpips")):
            ax = fig.add_subplot(1, 2, k + 1)
            ax.plot([s for s, _ in snaps], [r[key] for _, r in snaps], "o-", label="snapshots")
            others = [(name, r) for name, r in rows.items() if r["step"] is None]
            for i, (name, r) in enumerate(others):
                ax.axhline(r[key], ls=("--", ":", "-.")[i % 3], color=f"C{i + 1}", label=name)
            ax.set_xlabel("step")
            ax.set_title({"fid": "Inception FID", "lpips": "paired LPIPS"}[key])
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
