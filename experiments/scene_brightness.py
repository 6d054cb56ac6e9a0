"""How bright generated scenes are, scene by scene, against the real scenes they stand beside.

    python experiments/scene_brightness.py SAMPLES [SAMPLES ...] [--data DATA --split test]

Per sample folder (``nfldm sample`` layout): each sample's mean frame brightness (the mean of its
frames' 8-bit RGB values), and over the folder their mean and standard deviation. For samples made
along a real scene's path (``condition.json`` names the scene: ``--path-from-scene``, ``--bev``,
``--own-latents``) also the real frames' brightness and the correlation between the two. With
``--data``: the same statistics of the real scenes of ``--split`` (every 4th), the distribution
unconditional samples should match. For samples of levels trained with ``scene_look`` (their
V.safetensors hold the look psi_g sampled) also the correlation of brightness with the sampled light. A scene's brightness is set by the light levels of its
sectors (the maps' mean light predicts it with correlation 0.89 on the release test scenes);
docs/notes/2026-12-05-the-maps-look.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image


def brightness(folder: Path, pattern: str, every: int = 3) -> float:
    files = sorted(folder.glob(pattern))[::every]
    if not files:
        raise SystemExit(f"error: {folder}: no {pattern}")
    return float(np.mean([np.asarray(Image.open(f).convert("RGB"), np.float32).mean() for f in files]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("samples", nargs="+")
    ap.add_argument("--data", default=None)
    ap.add_argument("--split", default="test")
    args = ap.parse_args()
    if args.data:
        from nfldm.data.format import read_dataset

        real = [brightness(e.path, "images/*.png") for e in read_dataset(args.data).split(args.split)[::4]]
        print(f"{args.data} ({args.split}, every 4th scene): {len(real)} scenes, brightness mean {np.mean(real):.1f} "
              f"std {np.std(real):.1f}")
    from nfldm.data.tensors import read_safetensors

    for s in args.samples:
        gen, paired, light = [], [], []
        for d in sorted(Path(s).glob("sample_*")):
            gen.append(brightness(d, "frames/*.png"))
            cond = d / "condition.json"
            scene = json.loads(cond.read_text()).get("scene") if cond.is_file() else None
            paired.append(brightness(Path(scene), "images/*.png") if scene else None)
            t = read_safetensors(d / "V.safetensors")[0] if (d / "V.safetensors").is_file() else {}
            light.append(float(t["look"][0]) if "look" in t else None)    # the light psi_g sampled (scene_look)
        line = f"{s}: {len(gen)} samples, brightness mean {np.mean(gen):.1f} std {np.std(gen):.1f}"
        if all(p is not None for p in paired) and len(gen) > 2:
            line += (f"; their real scenes mean {np.mean(paired):.1f} std {np.std(paired):.1f}, correlation "
                     f"{np.corrcoef(gen, paired)[0, 1]:.2f}")
        if all(v is not None for v in light) and len(gen) > 2:
            line += f"; correlation with the sampled look's light {np.corrcoef(gen, light)[0, 1]:.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
