"""Path agreement of real scenes: the reference for ``nfldm eval generation``'s path agreement.

    python experiments/path_agreement_real.py --voxels out/release/voxels --split test

For every scene of a voxel folder (``nfldm encode-voxels``: stage 1's V of the real frames, with
the scene's cameras), the same number eval_generation gives a sample
(:func:`nfldm.ldm.evaluate.path_agreement` of :func:`top_down_opacity`), once with the scene's own
camera path (what a sample whose layout lies where its sampled path looks reaches) and once with
the next scene's path (a layout unrelated to its path). Prints mean and median of both.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--voxels", required=True, help="a voxel folder (index.json, one file per scene)")
    ap.add_argument("--split", default="test")
    args = ap.parse_args()

    from nfldm.data.format import DataError
    from nfldm.ldm.evaluate import path_agreement, top_down_opacity
    from nfldm.ldm.trajectory import fov_degrees
    from nfldm.scene_ae.voxels import load_voxels, read_voxel_index

    try:
        index = read_voxel_index(args.voxels)
        scenes = [s["name"] for s in index["scenes"] if s["split"] == args.split]
        if len(scenes) < 2:
            raise SystemExit(f"error: {args.voxels}: fewer than 2 scenes in split {args.split!r}")
        maps = []
        for name in scenes:
            t = load_voxels(args.voxels, name, index)
            intr = t["intrinsics"][0]
            maps.append((top_down_opacity(t["V"], t["bounds"]), t["c2w"], t["bounds"],
                         fov_degrees(float(intr[0]), 2 * float(intr[2]))))
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    own = [path_agreement(op, c2w, b, h) for op, c2w, b, h in maps]
    other = [path_agreement(op, maps[(i + 1) % len(maps)][1], b, h) for i, (op, _, b, h) in enumerate(maps)]
    print(f"{len(maps)} {args.split} scenes of {args.voxels}: path agreement with their own path mean "
          f"{statistics.mean(own):.3f} (median {statistics.median(own):.3f}); with the next scene's path mean "
          f"{statistics.mean(other):.3f} (median {statistics.median(other):.3f})")


if __name__ == "__main__":
    main()
