"""Does a map edit show up? Wall / inside IoU of sample folders against the map each sample was
given (the edited one) and against its scene's original map.

    python experiments/bev_edit.py out/bev_free out/bev_erase out/bev_pillar

Each folder is an ``nfldm sample --bev DATASET ...`` output (with or without --erase-box /
--add-wall-box); per folder the mean over its samples (nfldm.ldm.evaluate.map_agreement).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from nfldm.data.bev import read_bev, read_bev_file
from nfldm.data.tensors import read_safetensors
from nfldm.ldm.evaluate import map_agreement
from nfldm.utils.io import read_json

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("folders", nargs="+")
args = ap.parse_args()
print(f"{'folder':<24}{'edits':<28}{'wall IoU given':>16}{'wall IoU orig':>15}{'inside given':>14}{'inside orig':>13}")
for folder in args.folders:
    rows, edits = [], set()
    for d in sorted(Path(folder).glob("sample_*")):
        cond = read_json(d / "condition.json")
        t, _ = read_safetensors(d / "V.safetensors")
        given = map_agreement(t["V"], t["bounds"], read_bev_file(d / "bev.npz"))
        orig = map_agreement(t["V"], t["bounds"], read_bev(cond["scene"]))
        rows.append([given["wall_iou"], orig["wall_iou"], given["inside_iou"], orig["inside_iou"]])
        edits.update(cond["edits"])
    m = np.mean(rows, 0)
    print(f"{Path(folder).name:<24}{'; '.join(sorted(edits)) or '-':<28}{m[0]:>16.3f}{m[1]:>15.3f}{m[2]:>14.3f}"
          f"{m[3]:>13.3f}")
