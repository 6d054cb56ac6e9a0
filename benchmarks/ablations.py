"""Stage-3 ablations at one time budget: full hierarchy (g + c + f) vs coarse-only (c) vs
global-only (g, GAUDI-like), scored with the same metric.

    python benchmarks/ablations.py --voxels VOXDIR --data DATASET [--out out/ablations]
                                   [--lae-minutes 6] [--ldm-minutes 8] [--modes gcf,c,g] [--num 16]
                                   [--augment 1|4|8]

For each mode: a latent auto-encoder (tiny preset with the quickstart's narrower networks and
``--set latents=MODE``) trained for --lae-minutes on the voxel folder, its latents, the
diffusion levels of the mode trained for --ldm-minutes in all (full: g / c / f get 14 / 36 / 50 %;
coarse-only: the trajectory level g 14 %, c 86 %; global-only: g 100 %), --num scenes sampled
with DPM-Solver++ 20 steps, and the offline EfficientNet-Lite0 Frechet distance / KID of their
frames against the test split (NOT comparable to published Inception FIDs), plus the latent
auto-encoder's rendered-view cost. Every mode gets the same minutes, data and metric. Steps are
set from the quickstart's measured speeds (so each learning-rate schedule ends with its time);
the trainer's max_minutes is the hard cap. ``--augment`` turns (and mirrors) the train scenes
before stage 3 (``nfldm encode-latents --augment``). Resumable: finished parts are skipped. Prints a
table and writes OUT/results.json. The paper: full 35.69 < coarse-only 46.43 (Inception FID).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

LEVEL_SHARES = {"gcf": {"g": 0.14, "c": 0.36, "f": 0.50}, "c": {"g": 0.14, "c": 0.86}, "g": {"g": 1.0}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--voxels", required=True, help="voxel folder (nfldm encode-voxels)")
    ap.add_argument("--data", required=True, help="dataset with a test split (the real views)")
    ap.add_argument("--out", default="out/ablations")
    ap.add_argument("--lae-minutes", type=float, default=6.0)
    ap.add_argument("--ldm-minutes", type=float, default=8.0)
    ap.add_argument("--modes", default="gcf,c,g")
    ap.add_argument("--num", type=int, default=16)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fixed-steps", action="store_true",
                    help="train each run for the steps its minutes stand for (the measured speeds), with a loose "
                         "time cap (10x): results then do not depend on how busy the machine is")
    ap.add_argument("--train-only", action="store_true", help="train (and evaluate stage 2) only; sample and score later")
    ap.add_argument("--augment", type=int, default=1, choices=(1, 4, 8),
                    help="encode-latents --augment: train scenes turned (4) and mirrored (8) for stage 3")
    args = ap.parse_args()

    from nfldm.latent_ae.latents import encode_latents
    from nfldm.latent_ae.train import eval_latent_ae, train_latent_ae
    from nfldm.ldm.evaluate import eval_generation
    from nfldm.ldm.train import train_ldm
    from nfldm.pipeline.generate import sample
    from nfldm.pipeline.quickstart.config import QuickstartConfig
    from nfldm.utils.io import atomic_write_json

    qs = QuickstartConfig()
    spm = dict(zip(("lae", "g", "c", "f"), qs.steps_per_minute[1:]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for mode in args.modes.split(","):
        d = out / mode
        r = results.get(mode, {})
        t0 = time.perf_counter()
        if "lae_s" not in r:
            train_latent_ae(args.voxels, d / "lae", "tiny", steps=round(spm["lae"] * args.lae_minutes), resume=True,
                            device=args.device,
                            overrides={**qs.latent_ae_set, "latents": mode,
                                       "max_minutes": args.lae_minutes * (10 if args.fixed_steps else 1)})
            r["lae_s"] = time.perf_counter() - t0
        if "lae_eval" not in r:
            m = eval_latent_ae(d / "lae", args.voxels, split="test", out=d / "lae" / "metrics_test.json",
                               device=args.device, progress=False)
            r["lae_eval"] = m["render"]
        if "ldm_s" not in r:
            encode_latents(d / "lae", args.voxels, d / "lat", device=args.device, progress=False,
                           augment=args.augment)
            sets = {k: v for k, v in qs.ldm_set.items() if k.split(".")[0] in LEVEL_SHARES[mode]}
            for lv, share in LEVEL_SHARES[mode].items():
                minutes = args.ldm_minutes * share
                sets[f"{lv}.max_minutes"] = minutes * (10 if args.fixed_steps else 1)
                sets[f"{lv}.steps"] = round(spm[lv] * minutes)
            t1 = time.perf_counter()
            train_ldm(d / "lat", d / "ldm", "all", "tiny", resume=True, device=args.device, overrides=sets)
            r["ldm_s"] = time.perf_counter() - t1
        if not args.train_only and "sample_s_per_scene" not in r:
            t1 = time.perf_counter()
            sample(d / "ldm", num=args.num, sampler="dpm", steps=20, seed=args.seed, out=d / "samples",
                   device=args.device, progress=False)
            r["sample_s_per_scene"] = (time.perf_counter() - t1) / args.num
        if not args.train_only and "inception" not in r.get("generation", {}):
            g = eval_generation(d / "samples", args.data, "test", d / "samples" / "metrics.json",
                                device=args.device, progress=False)
            r["generation"] = {k: g[k] for k in ("efficientnet_lite0", "inception", "floor", "num_generated",
                                                 "num_real", "protocol") if k in g}
        results[mode] = r
        atomic_write_json(results_path, results)

    names = {"gcf": "full g + c + f", "c": "coarse-only c", "g": "global-only g"}
    print(f"\n{'mode':18s} {'LAE min':>8s} {'LDM min':>8s} {'LAE PSNR cost':>14s} {'FD (offline)':>13s} {'KID':>7s}")
    for mode, r in results.items():
        e, lae = r.get("generation", {}), r.get("lae_eval", {})
        print(f"{names.get(mode, mode):18s} {r.get('lae_s', 0) / 60:8.1f} {r.get('ldm_s', 0) / 60:8.1f} "
              f"{lae.get('psnr_cost_db', float('nan')):14.2f} {e.get('frechet_distance', float('nan')):13.1f} "
              f"{e.get('kid', float('nan')):7.3f}")
    print("(offline EfficientNet-Lite0 Frechet distance: NOT comparable to published Inception FIDs)")


if __name__ == "__main__":
    main()
