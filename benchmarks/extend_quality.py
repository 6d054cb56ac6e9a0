"""The checks of outpainting (nfldm extend) over the test scenes of a dataset.

    python benchmarks/extend_quality.py --data DATASET [--split test] [--run RUN] --out DIR
                                        [--direction +x] [--windows 2] [--bev-levels] [--scenes N]
                                        [--resample 3] [--look-guidance W]

Per scene: ``nfldm extend --scene SCENE --direction D --windows N`` into DIR/NAME (skipped when
already there: the script resumes); with ``--bev-levels`` each scene is extended following its
own level's map (``nfldm data level-map`` over the whole level box; the bundle's bev levels;
look guidance ``--look-guidance``, default nfldm extend's).
Prints, over the scenes: the frame-to-frame LPIPS at the window joins / its median along the
fly-through (the worst join per scene, the largest of the step that crosses it and its two
neighbours; how many scenes stay <= 1.5; the same for the crossing step alone; the same statistics
half way between joins as a control: what the camera meets anywhere in generated content; the
share of all steps within 1.5x the median; the share of frames taken at or inside a wall), the seam score across the
joins (the stitched V's gradient there / window 0's mean gradient), the wall IoU of each new
window against the level's map there (followed or not), and the seconds per window.
Writes DIR/extend_quality.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def window_wall_iou(d: Path, scene: Path, bounds0: np.ndarray, axis: int, sign: int, info: dict) -> list[float]:
    """Wall IoU (nfldm.ldm.evaluate.map_agreement) of each new window's part of the stitched V
    against the scene's level map over that window (whether or not the windows followed it)."""
    import torch

    from nfldm.data.tensors import read_safetensors
    from nfldm.data.vizdoom import level_bev
    from nfldm.ldm.evaluate import map_agreement

    t, _ = read_safetensors(d / "sample_0000" / "V.safetensors")
    V = t["V"].float()
    s = info["shift_cells"]
    X = int(round((bounds0[1, axis] - bounds0[0, axis]) / info["shift_metres"] * s))
    n = info["windows"]
    out = []
    for k in range(1, n + 1):
        start = k * s if sign > 0 else (n - k) * s
        Vk = V.narrow(1 + axis, start, X)
        bk = torch.as_tensor(bounds0, dtype=torch.float32).clone()
        bk[:, axis] += sign * k * info["shift_metres"]
        bev = level_bev(scene, [float(bk[0, 0]), float(bk[0, 1]), float(bk[1, 0]), float(bk[1, 1])])
        out.append(map_agreement(Vk, bk, bev)["wall_iou"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--run", default=None, help="ldm run (default: the shipped bundle)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--direction", default="+x")
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--bev-levels", action="store_true", help="follow each scene's level map")
    ap.add_argument("--look-guidance", type=float, default=1.0, help="with --bev-levels (default 1, as nfldm extend)")
    ap.add_argument("--scenes", type=int, default=0, help="only the first N scenes (0: all)")
    ap.add_argument("--resample", type=int, default=3, help="RePaint passes per jump (nfldm extend's default 3)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    from nfldm.data.bev import write_bev
    from nfldm.data.format import read_dataset
    from nfldm.data.vizdoom import level_bev
    from nfldm.pipeline.extend import DIRECTIONS, extend_scene

    out = Path(args.out)
    entries = read_dataset(args.data).split(args.split)
    if args.scenes:
        entries = entries[:args.scenes]
    axis, sign = DIRECTIONS[args.direction]
    rows = {}
    for e in entries:
        d = out / e.name
        if not (d / "extend.json").is_file():
            bev = None
            if args.bev_levels:           # a square box holding the scene and its windows
                lo, hi = np.asarray(e.bounds)[0, :2].astype(float), np.asarray(e.bounds)[1, :2].astype(float)
                side = (hi - lo)[axis] * (1 + args.windows)
                lo2 = lo.copy()
                if sign < 0:
                    lo2[axis] = hi[axis] - side
                lo2[1 - axis] = (lo[1 - axis] + hi[1 - axis] - side) / 2
                bev = d.parent / f"{e.name}_level.npz"
                bev.parent.mkdir(parents=True, exist_ok=True)
                write_bev(bev, level_bev(e.path, [lo2[0], lo2[1], lo2[0] + side, lo2[1] + side]))
            extend_scene(e.path, args.direction, d, windows=args.windows, run=args.run, bev=bev, device=args.device,
                         resample=args.resample, progress=False, look_guidance=args.look_guidance)
        info = json.loads((d / "extend.json").read_text())
        if "window_wall_iou" not in info:
            info["window_wall_iou"] = window_wall_iou(d, e.path, np.asarray(e.bounds, float), axis, sign, info)
            (d / "extend.json").write_text(json.dumps(info, indent=2) + "\n")
        rows[e.name] = info
        c = info["checks"]
        print(f"{e.name}: join spike {c.get('join_spike'):.2f}, seams {[round(s, 2) for s in c['seam']]}, "
              f"{info['seconds_latents_and_decode'] / args.windows:.1f} s per window", flush=True)
    def each(key: str) -> list[float]:
        return [r["checks"][key] for r in rows.values() if r["checks"].get(key) is not None]

    spikes, controls = each("join_spike"), each("control_spike")
    step_spikes, step_controls = each("join_step_spike"), each("control_step_spike")
    at_walls = each("frames_at_walls")
    seams = [s for r in rows.values() for s in r["checks"]["seam"]]
    res = {"scenes": len(rows), "direction": args.direction, "windows": args.windows, "bev_levels": args.bev_levels,
           "resample": args.resample, "look_guidance": next(iter(rows.values())).get("look_guidance"),
           "join_spike_median": float(np.median(spikes)), "join_spike_max": float(max(spikes)),
           "scenes_spike_at_most_1.5": int(sum(s <= 1.5 for s in spikes)),
           "control_spike_median": float(np.median(controls)) if controls else None,
           "control_spike_max": float(max(controls)) if controls else None,
           # the step that crosses each join alone (not its neighbours); runs before 2026-12-06 lack it
           "join_step_spike_median": float(np.median(step_spikes)) if step_spikes else None,
           "scenes_step_spike_at_most_1.5": int(sum(s <= 1.5 for s in step_spikes)),
           "control_step_spike_median": float(np.median(step_controls)) if step_controls else None,
           "path_steps_at_most_1.5x_median": float(np.mean([np.mean(np.asarray(r["checks"]["frame_lpips"])
                                                                    <= 1.5 * r["checks"]["frame_lpips_median"])
                                                            for r in rows.values() if "frame_lpips" in r["checks"]])),
           "frames_at_walls": float(np.mean(at_walls)) if at_walls else None,
           "seam_median": float(np.median(seams)), "seam_max": float(max(seams)),
           "new_windows_wall_iou_mean": float(np.mean([v for r in rows.values() for v in r["window_wall_iou"]])),
           "seconds_per_window": float(np.mean([r["seconds_latents_and_decode"] / args.windows for r in rows.values()])),
           "seconds_with_render": float(np.mean([r["seconds_with_render"] for r in rows.values()]))}
    (out / "extend_quality.json").write_text(json.dumps(res, indent=2) + "\n")
    for k, v in res.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
