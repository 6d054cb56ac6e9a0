"""Where does psi_c lose a scene's brightness? SDEdit on c: each test scene's own c noised to step t
and denoised back by psi_c (given the scene's own g and path, DDIM), decoded with the scene's own g
and f, rendered along its real path; the frames' brightness against the scene's own latents'.

    python experiments/psi_c_sdedit.py --run out/release_trajc2 --latents out/release/latents \
        --data out/release/data --renderer out/release/renderer --out D [--t 200 500 800 950] [--scenes 16]

Prints per t: the samples' brightness mean / std and their correlation with the real scenes' (the
own latents decoded are t = 0). If brightness survives moderate t and collapses only near t = T,
psi_c loses it where it must decide it from almost nothing (the high-noise steps); if it fades
already at moderate t, psi_c pulls every scene to the mean at all noise levels.
docs/notes/2026-12-05-the-maps-look.md.
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--latents", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--renderer", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--t", type=int, nargs="+", default=[200, 500, 800, 950])
    ap.add_argument("--scenes", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()

    from PIL import Image

    import nfldm.pipeline.generate as generate
    from nfldm.ldm.data import LatentStats, fold, unfold_c
    from nfldm.ldm.load import load_ldm
    from nfldm.ldm.model import guided_prediction, make_sampler
    from nfldm.pipeline.maps import conditions_from, spread

    ldm = load_ldm(args.run, "cpu")
    cm = ldm["models"]["c"]
    stats = LatentStats(ldm["config"]["stats"])
    plain = generate._own_latents
    conds = spread(conditions_from(args.data, "test"), args.scenes)

    def brightness(folder: Path, sub: str) -> float:
        fs = sorted(folder.glob(sub))[::3]
        return float(np.mean([np.asarray(Image.open(f).convert("RGB"), np.float32).mean() for f in fs]))

    real = np.array([brightness(Path(c.scene), "images/*.png") for c in conds])
    for t_start in [0, *args.t]:
        def edited(*a, **kw):
            lat = plain(*a, **kw)
            if t_start == 0:
                return lat
            gen = torch.Generator().manual_seed(0)
            c_n = fold(stats.normalise("c", lat["c"]))
            g_n = stats.normalise("g", lat["g"])
            sched = make_sampler(cm.scheduler, "ddim")
            sched.set_timesteps(args.steps)
            ts = [t for t in sched.timesteps if int(t) <= t_start]
            x = cm.scheduler.add_noise(c_n, torch.randn(c_n.shape, generator=gen), torch.tensor([int(ts[0])]))
            ctx = cm.context({"g": g_n, "traj": lat["traj"]})
            with torch.no_grad():
                for t in ts:
                    out = guided_prediction(cm, sched.scale_model_input(x, t), t, ctx, None, 1.0)
                    x = sched.step(out, t, x, generator=gen, return_dict=False)[0]
            lat["c"] = stats.denormalise("c", unfold_c(x, cm.cfg.c_shape[0]))
            return lat

        generate._own_latents = edited
        d = Path(args.out) / f"t{t_start}"
        try:
            if not (d / "samples.json").is_file():
                generate.sample(args.run, num=1, out=d, conditions=conds, path_from_scene=True, own_latents=args.latents,
                                renderer=args.renderer, progress=False, num_frames=8)
        finally:
            generate._own_latents = plain
        b = np.array([brightness(p, "frames/*.png") for p in sorted(d.glob("sample_*"))])
        print(f"t = {t_start}: brightness mean {b.mean():.1f} std {b.std():.1f}, correlation with the real scenes "
              f"{np.corrcoef(b, real)[0, 1]:.2f} (real: mean {real.mean():.1f} std {real.std():.1f})", flush=True)


if __name__ == "__main__":
    main()
