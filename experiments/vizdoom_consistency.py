"""Multi-view consistency of collected ViZDoom scenes: frame i's depth reprojected into frame j
(|i - j| <= 3) against frame j's depth, over every scene of a fresh collection.

    python experiments/vizdoom_consistency.py [--scenes 8] [--frames 24] [--resolution 64]
"""

import argparse
import tempfile

import torch

from nfldm.data.consistency import neighbour_pairs, reprojection_errors
from nfldm.data.loader import SceneDataset
from nfldm.data.vizdoom import VizdoomConfig, collect_dataset

parser = argparse.ArgumentParser()
parser.add_argument("--scenes", type=int, default=8)
parser.add_argument("--frames", type=int, default=24)
parser.add_argument("--resolution", type=int, default=64)
args = parser.parse_args()
with tempfile.TemporaryDirectory() as tmp:
    collect_dataset(VizdoomConfig(scenes=args.scenes, frames=args.frames, resolution=args.resolution), tmp, progress=False)
    rels, cols = [], []
    for split in ("train", "val", "test"):
        ds = SceneDataset(tmp, split=split)
        for k in range(len(ds)):
            s = ds[k]
            r, c = reprojection_errors(s, neighbour_pairs(s["images"].shape[0]))
            rels.append(r)
            cols.append(c)
rel, col = torch.cat(rels), torch.cat(cols)
print(f"{'points':>10}{'median rel':>12}{'<1%':>8}{'<5%':>8}{'median |dRGB|':>15}")
print(f"{rel.numel():>10}{100 * rel.median().item():>11.2f}%{100 * (rel < 0.01).float().mean().item():>7.1f}%"
      f"{100 * (rel < 0.05).float().mean().item():>7.1f}%{col.median().item():>15.4f}")
