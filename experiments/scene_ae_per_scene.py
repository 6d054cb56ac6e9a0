"""Stage 1 per scene: held-out-view PSNR of the model next to the nearest-frame baseline.

    python experiments/scene_ae_per_scene.py --run RUN --data DATASET [--split test] [--device cpu]

The protocol of ``nfldm eval scene-ae`` (8 evenly spaced inputs, the other frames held out),
one row per scene: how far the camera moves (horizontal span of its positions, metres), how
many held-out views repeat an input camera (``coincident``, left out of the eval's numbers),
and the mean PSNR of the model and of copying the nearest input frame over the NOVEL held-out
views and over all held-out views. A scene whose camera stands still shows why the
coincident views are left out: copying its inputs scores up to 100 dB.
"""

from __future__ import annotations

import argparse

import torch

from nfldm import metrics
from nfldm.data.loader import SceneDataset
from nfldm.scene_ae.evaluate import evaluate_scene
from nfldm.scene_ae.load import load_scene_ae


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a stage-1 run")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    model = load_scene_ae(args.run, args.device)
    dev = next(model.parameters()).device
    ds = SceneDataset(args.data, args.split, cache=True)
    rows, gains = [], []
    for i in range(len(ds)):
        item = ds[i]
        r = evaluate_scene(model, item, model.cfg.num_input_views, dev)
        p_model = metrics.psnr(r["model"][0], r["gt"]).cpu()
        p_near = metrics.psnr(r["nearest_frame"][0], r["gt"]).cpu()
        novel = r["novel"].cpu()
        pos = item["c2w"][:, :2, 3]
        span = float((pos.amax(0) - pos.amin(0)).max())
        nm = float(p_model[novel].mean()) if novel.any() else float("nan")
        nn_ = float(p_near[novel].mean()) if novel.any() else float("nan")
        if novel.any():
            gains.append(nm - nn_)
        rows.append((ds.entries[i].name, span, int((~novel).sum()), nm, nn_,
                     float(p_model.mean()), float(p_near.mean())))
    print(f"{args.run} on {args.data} ({args.split}): mean PSNR (dB) of held-out views")
    print(f"{'scene':<12}{'span m':>7}{'coinc.':>7} | {'novel: model':>13}{'nearest':>8}{'gain':>7} | "
          f"{'all: model':>11}{'nearest':>8}")
    for name, span, nc, nm, nn_, am, an in rows:
        print(f"{name:<12}{span:>7.2f}{nc:>7d} | {nm:>13.2f}{nn_:>8.2f}{nm - nn_:>+7.2f} | {am:>11.2f}{an:>8.2f}")
    g = torch.tensor(gains)
    print(f"per-scene gain over the nearest frame on novel views: median {float(g.median()):+.2f} dB, "
          f"min {float(g.min()):+.2f}, max {float(g.max()):+.2f}; {int((g >= 2).sum())} of {len(g)} "
          "scenes at least +2 dB")


if __name__ == "__main__":
    main()
