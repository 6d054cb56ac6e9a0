"""A finished release folder with some diffusion levels retrained: a new release folder and bundle.

    python experiments/release_relevel.py --release out/release --out out/release2 \
        [--ldm out/release_trajc] [--bev-ldm out/release_bevf] [--note TEXT]

--ldm / --bev-ldm are ldm run folders with all three levels g, c, f (copy the release's unchanged
levels into them before training the one that changes), trained on the release's latents. OUT
becomes a release folder as ``benchmarks/release_targets.py --release`` reads it: the release's
data, voxels, latents, stages 1-2, renderer and image prior linked, ``ldm`` and ``bev_ldm`` linked to
the given runs (or the release's), and a new ``bundle`` exported from them as ``nfldm quickstart``
exports (export_bundle, add_renderer, add_levels, add_image_prior), whose model card keeps the
release's data, commands and time, names the retrained levels (--note) and drops the release's
stage-3 sample metrics (they were of the old levels: release_targets.py writes the new ones).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nfldm.pipeline.bundle import BUNDLE_FILE, add_image_prior, add_levels, add_renderer, export_bundle

LINKED = ("data", "voxels", "latents", "scene_ae", "latent_ae", "renderer", "image_prior")


def _link(src: Path, dst: Path) -> None:
    if dst.is_symlink() or dst.exists():
        if not dst.is_symlink():
            raise SystemExit(f"error: {dst}: exists and is not a link; choose another --out")
        dst.unlink()
    dst.symlink_to(src.resolve(), target_is_directory=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--release", required=True, help="a finished release quickstart folder")
    ap.add_argument("--out", required=True, help="the new release folder")
    ap.add_argument("--ldm", default=None, help="an ldm run (g, c, f) replacing RELEASE/ldm")
    ap.add_argument("--bev-ldm", default=None, help="an ldm run (g, c, f; bev=true) replacing RELEASE/bev_ldm")
    ap.add_argument("--note", default="", help="what was retrained, for the model card")
    args = ap.parse_args()
    rel, out = Path(args.release), Path(args.out)
    old = rel / "bundle" / BUNDLE_FILE
    if not old.is_file():
        raise SystemExit(f"error: {old}: missing (a finished release folder is needed)")
    runs = {"ldm": Path(args.ldm) if args.ldm else rel / "ldm",
            "bev_ldm": Path(args.bev_ldm) if args.bev_ldm else rel / "bev_ldm"}
    for name, run in runs.items():
        for lv in "gcf":
            if not (run / lv / "model.safetensors").is_file():
                raise SystemExit(f"error: {run / lv}: no trained level {lv} ({name} needs g, c and f)")
    out.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        _link(rel / name, out / name)
    for name, run in runs.items():
        _link(run, out / name)
    info = json.loads(old.read_text())
    card = {k: v for k, v in info["card"].items() if k not in ("renderer", "image_prior", "targets")}
    card["metrics"] = {k: v for k, v in card.get("metrics", {}).items() if not k.startswith("stage 3")}
    if args.note:
        card["metrics"]["retrained after the run"] = args.note
    export_bundle(out / "ldm", out / "bundle", card=card)
    add_renderer(out / "bundle", out / "renderer", info["card"].get("renderer", {}).get("metrics"))
    bev_card = dict(info.get("levels", {}).get("bev", {}).get("card", {}))
    if args.bev_ldm:                  # the release's BEV lines describe the levels that were replaced
        bev_card = {"source": str(runs["bev_ldm"].resolve())}
    add_levels(out / "bundle", out / "bev_ldm", card=bev_card)
    new = add_image_prior(out / "bundle", out / "image_prior", info["card"].get("image_prior", {}).get("metrics"))
    size = sum(f.stat().st_size for f in (out / "bundle").rglob("*.safetensors"))
    print(f"{out / 'bundle'}: {size / 1e6:.1f} MB of weights; steps {new['steps']}")


if __name__ == "__main__":
    main()
