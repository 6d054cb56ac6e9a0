"""Does a map edit show up? Wall / inside IoU of sample folders against the map each sample was
given (the edited one) and against its scene's original map, and where the edit changed the map,
how much of it the samples follow.

    python experiments/bev_edit.py out/bev_free out/bev_erase out/bev_pillar

Each folder is an ``nfldm sample --bev DATASET ...`` output (with or without --erase-box /
--add-wall-box); per folder the mean over its samples (nfldm.ldm.evaluate.map_agreement). For an
edited folder also: of the footprint cells whose walls the edit removed, the share still occupied at
mid height (one cell off counts), and of the cells it added walls to, the share occupied; in
brackets the same cells in the first folder's samples (unedited maps, the same scenes in the same
order), which is what the scenes would have there without the edit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch.nn.functional as F

from nfldm.data.bev import bev_grid, read_bev, read_bev_file
from nfldm.data.tensors import read_safetensors
from nfldm.ldm.evaluate import map_agreement, mid_height_occupancy
from nfldm.utils.io import read_json


def near(m):
    """Cells within one cell of a True one (walls are one cell thin)."""
    return F.max_pool2d(m.float()[None, None], 3, 1, 1)[0, 0] > 0


ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("folders", nargs="+")
args = ap.parse_args()
print(f"{'folder':<24}{'edits':<28}{'wall IoU given':>16}{'wall IoU orig':>15}{'inside given':>14}{'inside orig':>13}"
      f"{'removed kept (unedited)':>26}{'added found (unedited)':>25}")
occ0 = None
for n, folder in enumerate(args.folders):
    rows, edits, occs, kept, found = [], set(), [], [], []
    for i, d in enumerate(sorted(Path(folder).glob("sample_*"))):
        cond = read_json(d / "condition.json")
        t, _ = read_safetensors(d / "V.safetensors")
        given_map, orig_map = read_bev_file(d / "bev.npz"), read_bev(cond["scene"])
        given = map_agreement(t["V"], t["bounds"], given_map)
        orig = map_agreement(t["V"], t["bounds"], orig_map)
        rows.append([given["wall_iou"], orig["wall_iou"], given["inside_iou"], orig["inside_iou"]])
        edits.update(cond["edits"])
        occ = near(mid_height_occupancy(t["V"].float(), t["bounds"]))
        occs.append(occ)
        S = int(t["V"].shape[1])
        wg, wo = bev_grid(given_map, S)[0] > 0, bev_grid(orig_map, S)[0] > 0
        for cells, out in ((wo & ~near(wg), kept), (wg & ~near(wo), found)):
            if cells.any():
                base = float(occ0[i][cells].float().mean()) if occ0 is not None and i < len(occ0) else np.nan
                out.append((float(occ[cells].float().mean()), base))
    if n == 0:
        occ0 = occs
    m = np.mean(rows, 0)
    cols = "".join(f"{np.mean([a for a, _ in v]):>14.3f} ({np.nanmean([b for _, b in v]):.3f})" + " " * 2
                   if v else f"{'-':>25}" for v in (kept, found))
    print(f"{Path(folder).name:<24}{'; '.join(sorted(edits)) or '-':<28}{m[0]:>16.3f}{m[1]:>15.3f}{m[2]:>14.3f}"
          f"{m[3]:>13.3f}  {cols}")
