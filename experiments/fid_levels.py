"""Where the FID of generated scenes goes: the levels sampled one by one, along real paths.

    python experiments/fid_levels.py --run out/release_trajc2 --latents out/release/latents \
        --data out/release/data --renderer out/release/renderer --out out/fid_levels [--scenes 32]

For ``--scenes`` test scenes spread over the split, rendered at their own cameras (frame k = real
frame k), four ways that differ in which latents are the scene's own and which are sampled:

- ``path``: psi_g samples g given the real path, psi_c and psi_f sample given it (as the BEV
  issue's unconditional row);
- ``own_g``: the scene's own g; psi_c and psi_f sample (``nfldm sample --own-g``);
- ``own_gc``: the scene's own g and c; psi_f samples (``--own-g --own-c``);
- ``own``: the scene's own g, c, f decoded (the upper bound, ``--own-latents``);
- ``own_look``: for levels trained with ``scene_look``: as ``path``, with the scene's own look
  (its map's light and colours) given to psi_g, psi_c and psi_f (``nfldm sample --own-look``).

Each gets ``nfldm eval generation`` (Inception FID / KID, paired LPIPS / PSNR against the real
frames); the steps between rows are what each level costs. Sample folders are reused when there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

WAYS = ("path", "own_g", "own_gc", "own", "own_look")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="an ldm run (g, c, f) or bundle")
    ap.add_argument("--latents", required=True, help="the latent folder the run was trained on")
    ap.add_argument("--data", required=True, help="the dataset (its test split is used)")
    ap.add_argument("--renderer", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--scenes", type=int, default=32)
    ap.add_argument("--ways", default=",".join(WAYS))
    ap.add_argument("--sampler", default="dpm")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--look-guidance", type=float, default=None, help="nfldm sample --look-guidance")
    args = ap.parse_args()

    from nfldm.ldm.evaluate import eval_generation
    from nfldm.pipeline.generate import sample
    from nfldm.pipeline.maps import conditions_from, spread

    conds = spread(conditions_from(None, "test", scenes=args.data), args.scenes)
    out = Path(args.out)
    rows = {}
    for way in [w for w in args.ways.split(",") if w]:
        if way not in WAYS:
            raise SystemExit(f"error: unknown way {way!r}; choose from {', '.join(WAYS)}")
        d = out / way
        kw = {"path": {}, "own_g": {"own_g": args.latents}, "own_gc": {"own_g": args.latents, "own_c": True},
              "own": {"own_latents": args.latents}, "own_look": {"own_look": True}}[way]
        if not (d / "samples.json").is_file():
            sample(args.run, num=1, out=d, conditions=conds, path_from_scene=way != "own", sampler=args.sampler,
                   steps=args.steps, seed=0, device=args.device, progress=False, renderer=args.renderer,
                   look_guidance=args.look_guidance, **kw)
        f = d / "eval.json"
        e = json.loads(f.read_text()) if f.is_file() else eval_generation(
            d, args.data, split="test", out=f, device=args.device, progress=False, floor_split=None,
            efficientnet=False)
        rows[way] = {"fid": e["inception"]["fid"], "kid": e["inception"]["kid"],
                     "paired_lpips": e["paired_views"]["lpips"], "paired_psnr": e["paired_views"]["psnr"]}
        print(f"{way:7s} FID {rows[way]['fid']:.1f}  KID {rows[way]['kid']:.4f}  paired LPIPS "
              f"{rows[way]['paired_lpips']:.3f}  PSNR {rows[way]['paired_psnr']:.2f}", flush=True)
    (out / "levels.json").write_text(json.dumps({"run": str(args.run), "scenes": len(conds), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
