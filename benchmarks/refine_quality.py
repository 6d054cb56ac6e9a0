"""Does post-optimisation help? Inception FID of samples before and after `nfldm refine`, with the
paper's negative guidance and with plain guidance (the real-image embedding alone), same budget.

    python benchmarks/refine_quality.py --samples out/s_orig --data out/qsdata --split test \
        --out out/refine_bench [--num 16] [--steps 100] [--guidance 3] [--lr 0.003] ... [--modes auto,none]

For each mode in --modes (auto: y' = the samples' own frames; none: classifier-free guidance
against the null embedding; a folder: y' = those images) refines the first --num samples into
OUT/<mode>, then scores the frames of the originals and of each refined set with Inception FID /
KID against the real frames of --split (the network the prior never sees; the prior embeds with
EfficientNet-Lite0), and prints one line per set with the geometry checks (median relative depth
change; photometric reprojection error before -> after) and seconds per scene. Writes
OUT/refine_quality.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", required=True)
    ap.add_argument("--prior", default=None)
    ap.add_argument("--num", type=int, default=16)
    ap.add_argument("--modes", default="auto,none")
    ap.add_argument("--style", default=None)
    ap.add_argument("--device", default="auto")
    from nfldm.refine.sds import SDSConfig

    defaults = SDSConfig()
    for k in ("steps", "views", "guidance", "t_min", "t_max", "lr", "lr_density", "anchor"):
        ap.add_argument("--" + k.replace("_", "-"), type=type(getattr(defaults, k)), default=getattr(defaults, k))
    ap.add_argument("--freeze-density", action="store_true")
    ap.add_argument("--score", default="sds", choices=("sds", "csd"))
    ap.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    args = ap.parse_args()

    from nfldm.ldm.evaluate import eval_generation
    from nfldm.pipeline.refine import refine_samples, sample_folders

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = SDSConfig(**{k: getattr(args, k) for k in ("steps", "views", "guidance", "t_min", "t_max", "lr",
                                                       "lr_density", "anchor", "freeze_density", "score", "optimizer")})
    # the originals being refined (the first --num), linked into one folder so they score alike
    orig = out / "original"
    shutil.rmtree(orig, ignore_errors=True)
    orig.mkdir()
    for f in sample_folders(args.samples)[: args.num]:
        (orig / f.name).symlink_to(f.resolve())
    sets = {"original": {"folder": orig}}
    modes = [m for m in args.modes.split(",") if m]
    for mode in modes:
        name = Path(mode).name if mode not in ("auto", "none") else mode
        if args.style:
            name = "style_" + name
        d = out / name
        shutil.rmtree(d, ignore_errors=True)
        t = time.time()
        res = refine_samples(args.samples, d, prior=args.prior, negative=mode, style=args.style, cfg=cfg,
                             num=args.num, device=args.device, progress=True)
        sets[name] = {"folder": d, "refine": res["median"], "minutes": (time.time() - t) / 60}
    results = {"args": vars(args), "sets": {}}
    for name, s in sets.items():
        ev = eval_generation(s["folder"], args.data, split=args.split, device=args.device, progress=False,
                             floor_split=None, efficientnet=False)
        inc = ev["inception"]
        entry = {"fid": inc.get("fid"), "kid": inc.get("kid"), "num_generated": ev["num_generated"],
                 **{k: v for k, v in s.items() if k != "folder"}}
        results["sets"][name] = entry
        line = f"{name}: Inception FID {entry['fid']:.1f}, KID {entry['kid']:.4f} ({entry['num_generated']} frames)"
        if "refine" in s:
            r = s["refine"]
            line += (f"; depth change median {100 * r['depth_rel_change']:.1f} %; reprojection photometric "
                     f"{r['photometric_reprojection_before']:.4f} -> {r['photometric_reprojection_after']:.4f}; "
                     f"{r['seconds']:.0f} s/scene")
        print(line, flush=True)
    base = results["sets"]["original"]["fid"]
    for name, e in results["sets"].items():
        e["fid_change_rel"] = (e["fid"] - base) / base
    if args.style:  # how near each set's views are to the style images (Inception features, not the prior's)
        from nfldm.ldm.evaluate import generated_images, to_view_size
        from nfldm.metrics.fid import InceptionFeatures, extract, fid_from_features
        from nfldm.metrics.wheels import INCEPTION_WHEEL, wheel_file
        from nfldm.pipeline.refine import folder_images
        from nfldm.trainer import resolve_device

        net, dev = InceptionFeatures(wheel_file(*INCEPTION_WHEEL)), resolve_device(args.device)
        fs = extract(net, to_view_size(folder_images(args.style, 64, None), 64), dev)
        for name, s in sets.items():
            fg = extract(net, to_view_size(generated_images(s["folder"]), 64), dev)
            fd = fid_from_features(fg, fs)
            results["sets"][name]["fd_to_style"] = fd
            print(f"{name}: Inception Frechet distance to the style images {fd:.1f}", flush=True)
        b = results["sets"]["original"]["fd_to_style"]
        for name, e in results["sets"].items():
            e["fd_to_style_change_rel"] = (e["fd_to_style"] - b) / b
    (out / "refine_quality.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
