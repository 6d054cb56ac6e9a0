"""Latent sampling time per scene: BEV-conditioned levels vs unconditional ones.

    python benchmarks/bev_sampling.py --bev-run RUN_BEV [--run RUN] --data DATASET [--split test]
                                      [--sampler dpm] [--steps 20] [--guidance 1 2] [--guidance-levels gcf] [--repeat 2] [--scenes N] [--json F]
                                      [--hand-over T] [--low-noise-c RUN/c]

Times ``nfldm.ldm.sample.sample_latents`` (g -> c -> f, batch 8) over one sample per scene of
the split: the unconditional run (default: the shipped bundle) given each scene's real camera
path, then the BEV run given each scene's map and path, once per guidance scale (a scale other
than 1 runs the conditional and the unconditional prediction in one doubled batch, at the levels
named by ``--guidance-levels``; with look guidance too, one tripled batch; below ``--hand-over`` psi_c's steps are the low-noise c level's, nfldm sample's
default with a bundle's bev levels). Prints
seconds per scene and the ratio to the unconditional run; the best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bev-run", required=True, help="ldm run trained with --set bev=true")
    ap.add_argument("--run", default=None, help="unconditional ldm run (default: the shipped bundle)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--sampler", default="dpm")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0])
    ap.add_argument("--guidance-levels", default="gcf", help="the levels the map guidance applies to (of g, c, f)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--look-guidance", type=float, default=3.0,
                    help="guidance on the map's look, for bev levels given it (nfldm sample's default 3)")
    ap.add_argument("--look-guidance-from", type=int, default=None, metavar="T",
                    help="look guidance at timesteps t >= T only (default: nfldm sample's, LOOK_GUIDANCE_FROM)")
    ap.add_argument("--hand-over", type=int, default=None, metavar="T",
                    help="the low-noise c level takes psi_c's steps at t < T (default: nfldm sample's, MAP_HAND_OVER, "
                         "with a bundle's bev levels; 0: none)")
    ap.add_argument("--low-noise-c", default=None, metavar="RUN/c",
                    help="the c level handed over to (default: the bundle's unconditional c, for a bundle's bev levels)")
    ap.add_argument("--scenes", type=int, default=0, help="only N scenes spread over the split (0: all)")
    ap.add_argument("--json", default=None, help="also write the seconds per scene to this file")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    from nfldm.data.bev import bev_grid
    from nfldm.ldm.sample import sample_latents
    from nfldm.ldm.trajectory import encode_trajectory
    from nfldm.ldm.load import load_level
    from nfldm.pipeline.bundle import bundled_model
    from nfldm.pipeline.generate import LOOK_GUIDANCE_FROM, hand_over_source, load_pipeline
    from nfldm.pipeline.maps import conditions_from, scene_path, spread

    conds = conditions_from(args.data, args.split)
    if args.scenes > 0:                    # spread over the split, as release_targets.py picks them
        conds = spread(conds, args.scenes)
    n = len(conds)

    def timed(pipe, **kw) -> float:
        rc = pipe["config"]
        bounds = torch.tensor(rc["render"]["bounds"], dtype=torch.float32)
        frames = pipe["models"]["g"].cfg.traj_frames
        traj = torch.stack([encode_trajectory(scene_path(c, bounds).double(), bounds.double(), frames).float()
                            for c in conds])
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            sample_latents(pipe["models"], pipe["stats"], n, args.sampler, args.steps, 0, progress=False, traj=traj,
                           **kw)
            if pipe["device"].type == "cuda":
                torch.cuda.synchronize()
            best = min(best, (time.perf_counter() - t0) / n)
        return best

    base = timed(load_pipeline(args.run or bundled_model(), args.device))
    print(f"{n} scenes of split {args.split!r}, {args.sampler} {args.steps} steps, given the real camera paths")
    print(f"unconditional: {base:.3f} s/scene")
    pipe = load_pipeline(args.bev_run, args.device)
    S = pipe["models"]["g"].cfg.bev_size
    bev = torch.stack([bev_grid(c.bev, S, look=True) for c in conds])
    look_from = LOOK_GUIDANCE_FROM if args.look_guidance_from is None else args.look_guidance_from
    low_src, hand_over = hand_over_source(args.bev_run, args.hand_over, args.low_noise_c, maps=True)
    low = {} if low_src is None else {"c": load_level(low_src, "c", pipe["config"], str(pipe["device"]))[0]}
    res = {"scenes": n, "unconditional": base, "guidance_levels": args.guidance_levels,
           "look_guidance": args.look_guidance, "look_guidance_from": look_from, "hand_over": hand_over, "bev": {}}
    for g in args.guidance:
        t = timed(pipe, bev=bev, guidance=g, look_guidance=args.look_guidance, look_from=look_from,
                  guidance_levels=args.guidance_levels, low_noise=low, low_below=hand_over)
        res["bev"][f"{g:g}"] = t
        print(f"BEV-conditioned, guidance {g:g} on {args.guidance_levels}, hand-over below t = {hand_over}: "
              f"{t:.3f} s/scene ({t / base:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
