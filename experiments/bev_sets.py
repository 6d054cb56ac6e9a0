"""The three sets of issue 23's BEV FID comparison along N test scenes' real paths, from a bundle.

    python experiments/bev_sets.py cond|uncond|own [--scenes 105] [--bundle B] [--data D]
                                   [--latents L] [--out DIR] [--device auto]

cond: the bundle's bev levels given each scene's map (guidance 1, look guidance 3); uncond: its
own levels given the scene's path; own: the scenes' own latents decoded by the bundle. The scenes
are spread over the test split as ``benchmarks/release_targets.py``'s bev part picks them; one
sample each, DPM-Solver++ 20, seed 0. Score each folder with ``experiments/fid_count.py``.
"""
import argparse
from pathlib import Path

from nfldm.pipeline.generate import sample
from nfldm.pipeline.maps import conditions_from, spread

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("which", choices=("cond", "uncond", "own"))
ap.add_argument("--scenes", type=int, default=105)
ap.add_argument("--bundle", default="src/nfldm/weights/tiny")
ap.add_argument("--data", default="out/release/data")
ap.add_argument("--latents", default="out/release/latents")
ap.add_argument("--out", default="out/bev105")
ap.add_argument("--device", default="auto")
args = ap.parse_args()
data, bundle, n = Path(args.data), Path(args.bundle), args.scenes
common = dict(sampler="dpm", steps=20, seed=0, device=args.device, progress=False, num=1, path_from_scene=True)
out = Path(args.out) / args.which
if args.which == "cond":
    sample(bundle / "bev", out=out, conditions=spread(conditions_from(data, "test"), n), guidance=1.0,
           look_guidance=3.0, **common)
elif args.which == "uncond":
    sample(bundle, out=out, conditions=spread(conditions_from(None, "test", scenes=data), n), **common)
else:
    sample(bundle, out=out, conditions=spread(conditions_from(data, "test"), n), own_latents=Path(args.latents),
           **common)
print("wrote", out)
