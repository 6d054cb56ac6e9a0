"""Round trip of real ViZDoom scenes through other people's formats and `nfldm data import`.

    python benchmarks/import_roundtrip.py --data out/qsdata --split test --scenes 8 --out out/import_bench

Each scene of our ViZDoom dataset (the real engine) is written the way other captures come:

- nerfstudio: the world turned to y up, yawed and shifted by a random amount, frames cropped to
  64 x 48 (non-square), millimetre depth;
- GSN (their VizDoom release's layout): ``train/<scene>/cameras.json`` with K in pixels and Rt
  world-to-camera, y up, Doom map units, ``000_rgb.png`` and uint8 ``000_depth.png``
  (map units = value / 14 * 100, the engine's buffer step).

Both are imported back (nerfstudio at --size 64x48, GSN at 64) and compared with the original:
the imported world's up against the true up (degrees), camera distances (metres), depth of the
same pixels (relative), and the depth reprojection error of neighbouring frames before and after.
Prints one line per format and writes OUT/import_roundtrip.json.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

Z_UP_TO_Y_UP = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], np.float64)


def _yaw_shift(rng) -> np.ndarray:
    a = rng.uniform(-np.pi, np.pi)
    T = np.eye(4)
    T[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    T[:3, 3] = rng.uniform(-50, 50, 3)
    return T


def export(data: Path, names: list[str], out: Path, seed: int) -> None:
    from nfldm.data import load_frame, read_transforms, write_scene

    rng = np.random.default_rng(seed)
    for name in names:
        meta = read_transforms(data / name)
        frames = [load_frame(meta, i) for i in range(len(meta))]
        rgb = np.stack([(f[0] * 255).round().astype(np.uint8) for f in frames])
        depth = np.stack([np.where(f[2], f[1], 0.0) for f in frames])
        world = Z_UP_TO_Y_UP @ _yaw_shift(rng)
        c2w = world @ meta.c2w
        # nerfstudio: rows 8..56 of the 64 x 64 frames (64 x 48), y up, millimetres
        intr = meta.intr.copy()
        intr[:, 3] -= 8
        write_scene(out / "ns" / name, rgb[:, 8:56], depth[:, 8:56], c2w, intr)
        # GSN: map units, Rt world-to-camera, uint8 depth buffer
        g = out / "gsn" / "train" / name
        g.mkdir(parents=True)
        upm = 128 / 3
        cams = []
        for i in range(len(meta)):
            T = c2w[i].copy()
            T[:3, 3] *= upm
            fx, fy, cx, cy = meta.intr[i]
            cams.append({"K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], "Rt": np.linalg.inv(T).tolist()})
            Image.fromarray(rgb[i]).save(g / f"{i:03d}_rgb.png")
            buf = np.where(depth[i] > 0, np.clip(np.round(depth[i] * upm * 14 / 100), 1, 254), 0).astype(np.uint8)
            Image.fromarray(buf, mode="L").save(g / f"{i:03d}_depth.png")
        (g / "cameras.json").write_text(json.dumps(cams))


def compare(data: Path, out: Path, summary: dict) -> dict:
    """Imported windows against the original scenes."""
    from nfldm.data import load_frame, read_transforms

    tilt, dist_err, depth_err = [], [], []
    for w in summary["windows"]:
        meta = read_transforms(out / w["name"])
        imp = meta.extra["import"]
        src_name = Path(imp["from"]).parent.name
        orig = read_transforms(data / src_name)
        ids = imp["source_frames"]
        # the original world is z up: an imported camera's up vector should make the same angle with +z
        for j, i in enumerate(ids):
            tilt.append(abs(math.degrees(math.acos(np.clip(meta.c2w[j][2, 1], -1, 1)))
                            - math.degrees(math.acos(np.clip(orig.c2w[i][2, 1], -1, 1)))))
        a, b = meta.c2w[:, :3, 3], orig.c2w[ids][:, :3, 3]
        da = np.linalg.norm(a[:, None] - a[None], axis=-1)
        db = np.linalg.norm(b[:, None] - b[None], axis=-1)
        dist_err.append(float(np.abs(da - db).max()))
        for j in range(0, len(ids), max(1, len(ids) // 4)):
            _, d_imp, v_imp = load_frame(meta, j)
            _, d_org, v_org = load_frame(orig, ids[j])
            if d_imp.shape != d_org.shape:  # nerfstudio: the 64 x 48 crop of the 64 x 64 original
                d_org, v_org = d_org[8:56], v_org[8:56]
            ok = v_imp & v_org
            depth_err.append(float(np.median(np.abs(d_imp[ok] - d_org[ok]) / d_org[ok])))
    r = summary["reprojection_median_rel_error"]
    return {"windows": len(summary["windows"]), "splits": summary["splits"],
            "up_error_deg_max": float(max(tilt)), "camera_distance_error_m_max": float(max(dist_err)),
            "depth_rel_error_median": float(np.median(depth_err)),
            "reprojection_source": r["source"], "reprojection_imported_same_pairs": r["imported_same_pairs"],
            "reprojection_imported_windows": r["imported_windows"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from nfldm.data import read_dataset
    from nfldm.data.importer import ImportConfig, import_dataset

    data, out = Path(args.data), Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    names = [e.name for e in read_dataset(data).split(args.split)][: args.scenes]
    export(data, names, out / "src", args.seed)
    res = {}
    for fmt, size in (("ns", (64, 48)), ("gsn", (64, 64))):
        t = time.time()
        summary = import_dataset(out / "src" / fmt, out / fmt, ImportConfig(size=size, min_frames=8), progress=False,
                                 log=lambda s: None)
        res[fmt] = {**compare(data, out / fmt, summary), "seconds": time.time() - t}
        r = res[fmt]
        print(f"{fmt}: {len(names)} scenes -> {r['windows']} windows {r['splits']} in {r['seconds']:.1f} s; "
              f"up error max {r['up_error_deg_max']:.2f} deg; camera distances max error {r['camera_distance_error_m_max']:.3f} m; "
              f"depth vs original median {r['depth_rel_error_median']:.4f}; reprojection median source "
              f"{r['reprojection_source']:.4f} -> imported {r['reprojection_imported_same_pairs']:.4f} "
              f"(windows {r['reprojection_imported_windows']:.4f})")
    (out / "import_roundtrip.json").write_text(json.dumps({"args": vars(args), "scenes": names, **res}, indent=2))


if __name__ == "__main__":
    main()
