"""How much of a BEV sample folder's Inception FID and paired LPIPS is each scene's colour and
contrast? An oracle diagnostic (uses the real frames; not a method).

    python experiments/look_oracle.py SAMPLES [--data out/release/data] [--modes mean,affine]

For every sample made along a real path (``nfldm sample --bev DATA --path-from-scene``), its
frames are transformed per scene (the same transform for all its views, so the scene stays
3D-consistent) to match its real scene's frames:

- ``mean``: per RGB channel, the scene's mean scaled to the real one's;
- ``affine``: per RGB channel, mean and standard deviation over the scene's frames matched.

Prints Inception FID against the test views (``nfldm eval generation``'s real set and view size)
and paired LPIPS against the real frames, as sampled and after each transform.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("samples")
    ap.add_argument("--data", default="out/release/data")
    ap.add_argument("--modes", default="mean,affine")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from nfldm.ldm.evaluate import (VIEW_SIZE, paired_frames, real_inception_features, sample_inception_features,
                                    to_view_size)
    from nfldm.metrics.fid import extract, fid_from_features
    from nfldm.metrics.lpips import lpips_distance

    def fit(gen: np.ndarray, real: np.ndarray, mode: str) -> np.ndarray:
        g, r = gen.astype(np.float32), real.astype(np.float32)
        gm, rm = g.mean((0, 1, 2)), r.mean((0, 1, 2))
        if mode == "mean":
            out = g * rm / np.maximum(gm, 1e-3)
        else:
            out = (g - gm) * r.std((0, 1, 2)) / np.maximum(g.std((0, 1, 2)), 1e-3) + rm
        return np.clip(out, 0, 255).round().astype(np.uint8)

    to_t = lambda a: torch.from_numpy(a.astype(np.float32) / 255).permute(0, 3, 1, 2)  # noqa: E731
    modes = ["as sampled"] + [m for m in args.modes.split(",") if m]
    frames: dict[str, list] = {m: [] for m in modes}
    lp: dict[str, list] = {m: [] for m in modes}
    for d in sorted(Path(args.samples).glob("sample_*")):
        pair = paired_frames(d)
        if pair is None:
            raise SystemExit(f"error: {d}: not sampled along a real path (--path-from-scene)")
        gen, real = pair[:2]
        for m in modes:
            x = gen if m == "as sampled" else fit(gen, real, m)
            frames[m].append(x)
            lp[m].append(float(lpips_distance(to_t(x), to_t(real)).mean()))
    net, net_id, real_f = real_inception_features(args.data, "test", "cpu")
    for m in modes:
        f = (sample_inception_features(args.samples, net, net_id, "cpu")[0] if m == "as sampled"   # kept in the folder
             else extract(net, to_view_size(np.concatenate(frames[m]), VIEW_SIZE), "cpu"))
        print(f"{m:>12s}: Inception FID {fid_from_features(f, real_f):.2f}, paired LPIPS {np.mean(lp[m]):.4f}",
              flush=True)


if __name__ == "__main__":
    main()
