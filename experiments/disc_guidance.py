"""Discriminator guidance for the map-conditioned psi_c (Kim et al. 2023, "Refining generative
process with discriminator guidance in score-based diffusion models"), issue 23.

The band study (docs/notes/2026-12-07-where-psi-c-loses-the-views.md) put the FID the map's samples
lose in psi_c's steps between t = 900 and t = 250: from a real c noised there, psi_c's own steps
move the views away from the real ones. A discriminator d(c_t, t, map) trained to tell real c
noised to t from psi_c's samples noised to t estimates log p_data(c_t | map) - log p_model(c_t | map)
by its logit; adding w times its gradient to psi_c's score at those steps corrects the score towards
the data's (w = 1 with a perfect discriminator). The discriminator is a small CNN on the latents,
not an image network, so it shares nothing with Inception FID or LPIPS.

    # 1. psi_c's samples for train windows (the defaults of nfldm sample --bev, given each window's
    #    own g and path, as sampling along a real path does)
    python experiments/disc_guidance.py gen --latents out/lat_aug4 --out out/dg/fake.safetensors --num 768
    # 2. the discriminator (real: those windows' own c; fake: psi_c's), held-out accuracy by t band
    python experiments/disc_guidance.py train --latents out/lat_aug4 --fake out/dg/fake.safetensors --out out/dg/d
    # 3. sample test scenes (spread over the split) with the guidance; --score: FID / KID against every test view, paired LPIPS
    python experiments/disc_guidance.py sample --disc out/dg/d --weight 1 --out D --max-scenes 34 --score

The guidance acts on psi_c's steps with ``--t-low <= t <= --t-high`` (default 250..950: above the
hand-over to the unconditional psi_c, below the first step, where alpha_t is ~0 and an x0
correction (1 - abar_t) / sqrt(abar_t) grad would be unbounded).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "experiments"))


# ----------------------------------------------------------------------------------------
# the discriminator


class Discriminator(nn.Module):
    """d(c_t, t, map) -> logit (B): c_t folded and standardised (B x C x X x Y), t (B) integer
    timesteps, the map (B x M x S x S, pooled to X x Y). Residual conv blocks with the timestep by
    FiLM, two downsamplings, global mean."""

    def __init__(self, c_channels: int, map_channels: int, width: int = 96):
        super().__init__()
        self.c_channels, self.map_channels, self.width = c_channels, map_channels, width
        self.inp = nn.Conv2d(c_channels + map_channels, width, 3, padding=1)
        self.temb = nn.Sequential(nn.Linear(64, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList()
        self.films = nn.ModuleList()
        for _ in range(4):
            self.blocks.append(nn.ModuleList([nn.GroupNorm(16, width), nn.Conv2d(width, width, 3, padding=1),
                                              nn.GroupNorm(16, width), nn.Conv2d(width, width, 3, padding=1)]))
            self.films.append(nn.Linear(width, 2 * width))
        self.out = nn.Sequential(nn.GroupNorm(16, width), nn.SiLU(), nn.Linear(width, 1))

    def config(self) -> dict:
        return {"c_channels": self.c_channels, "map_channels": self.map_channels, "width": self.width}

    def forward(self, x: torch.Tensor, t: torch.Tensor, bev: torch.Tensor) -> torch.Tensor:
        from nfldm.ldm.model import timestep_embedding

        m = F.adaptive_avg_pool2d(bev.float(), x.shape[-2:])
        h = self.inp(torch.cat([x, m], 1))
        e = self.temb(timestep_embedding(t.reshape(-1).expand(len(x)), 64))
        for i, (blk, film) in enumerate(zip(self.blocks, self.films)):
            scale, shift = film(e)[..., None, None].chunk(2, 1)
            r = blk[1](F.silu(blk[0](h)))
            r = blk[3](F.silu(blk[2](r) * (1 + scale) + shift))
            h = h + r
            if i in (1, 2):
                h = F.avg_pool2d(h, 2)
        h = self.out[1](self.out[0](h)).mean((-2, -1))
        return self.out[2](h).squeeze(-1)


def load_disc(path: Path) -> Discriminator:
    from safetensors.torch import load_file

    f = path / "config.json"
    if not f.exists():
        raise SystemExit(f"error: {f}: missing (not a discriminator directory of disc_guidance.py train)")
    d = Discriminator(**json.loads(f.read_text())["model"])
    d.load_state_dict(load_file(str(path / "model.safetensors")))
    return d.eval()


# ----------------------------------------------------------------------------------------
# 1. psi_c's samples on train windows


def bundle_levels():
    """(pipe, models {g, c}, low-noise c, hand-over t) of the bundle's BEV levels as nfldm sample
    --bev uses them."""
    from nfldm.ldm.load import load_level
    from nfldm.pipeline.bundle import bundled_bev_model
    from nfldm.pipeline.generate import hand_over_source, load_pipeline

    run = bundled_bev_model()
    pipe = load_pipeline(run, "cpu")
    low_src, hand_over = hand_over_source(run, None, None, True)
    low = load_level(low_src, "c", pipe["config"], "cpu")[0] if low_src is not None else None
    return pipe, {"g": pipe["models"]["g"], "c": pipe["models"]["c"]}, low, int(hand_over)


def gen(args) -> None:
    from safetensors.torch import save_file

    from nfldm.ldm.data import LatentDataset
    from nfldm.ldm.sample import sample_latents
    from nfldm.pipeline.generate import LOOK_GUIDANCE, LOOK_GUIDANCE_FROM, MAP_GUIDANCE, MAP_GUIDANCE_LEVELS

    pipe, models, low, hand_over = bundle_levels()
    ds = LatentDataset(args.latents, "train", traj_frames=models["g"].cfg.traj_frames)
    if ds.index["stats"] != pipe["config"]["stats"]:
        raise SystemExit(f"error: {args.latents}: latent statistics differ from the bundle's")
    gen_ = torch.Generator().manual_seed(args.seed)
    pick = torch.randperm(len(ds), generator=gen_)[:args.num].tolist()
    fake, real, bevs, ts = [], [], [], time.time()
    for lo in range(0, len(pick), args.batch):
        items = [ds[i] for i in pick[lo:lo + args.batch]]
        g = ds.stats.denormalise("g", torch.stack([it["g"] for it in items]))
        lat = sample_latents(models, pipe["stats"], len(items), "dpm", 20, args.seed + lo, guidance=MAP_GUIDANCE,
                             batch_size=args.batch, progress=False, bev=torch.stack([it["bev"] for it in items]),
                             traj=torch.stack([it["traj"] for it in items]), g=g, look_guidance=LOOK_GUIDANCE,
                             look_from=LOOK_GUIDANCE_FROM, guidance_levels=MAP_GUIDANCE_LEVELS,
                             low_noise={"c": low} if low is not None else None, low_below=hand_over)
        fake.append(lat["c_n"])
        real.append(torch.stack([it["c"] for it in items]))
        bevs.append(torch.stack([it["bev"] for it in items]).half())
        done = lo + len(items)
        print(f"gen {done}/{len(pick)}  {(time.time() - ts) / done:.2f} s/window", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file({"fake": torch.cat(fake).contiguous(), "real": torch.cat(real).contiguous(),
               "bev": torch.cat(bevs).contiguous(), "index": torch.tensor(pick)}, str(tmp))
    tmp.rename(out)
    print(f"{len(pick)} windows -> {out}")


# ----------------------------------------------------------------------------------------
# 2. the discriminator


def noised(sched, x: torch.Tensor, t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return sched.add_noise(x, torch.randn(x.shape, generator=gen), t)


def load_windows(path: str, val_share: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(fake, real, bev, n_val) of ``gen``'s file: psi_c's and the real c (N x C x X x Y), the maps;
    the last n_val windows are held out."""
    from safetensors.torch import load_file

    d = load_file(path)
    return d["fake"].float(), d["real"].float(), d["bev"].float(), max(1, int(round(len(d["fake"]) * val_share)))


def train(args) -> None:
    from safetensors.torch import save_file

    from nfldm.ldm.model import make_train_scheduler
    from nfldm.ldm.config import config_from_dict
    from nfldm.pipeline.bundle import bundled_bev_model
    from nfldm.trainer import read_run_config

    torch.manual_seed(args.seed)
    fake, real, bev, n_val = load_windows(args.fake, args.val_share)
    n = len(fake)
    tr, va = slice(0, n - n_val), slice(n - n_val, n)
    cfg = config_from_dict(read_run_config(Path(bundled_bev_model()) / "c")["model"])
    sched = make_train_scheduler(cfg)
    D = Discriminator(fake.shape[1], bev.shape[1], args.width)
    opt = torch.optim.AdamW(D.parameters(), lr=args.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(args.seed)

    def batch(part: slice, B: int, t: torch.Tensor | None = None):
        idx = torch.randint(part.start, part.stop, (B,), generator=gen)
        tt = t if t is not None else torch.randint(args.t_low, args.t_high + 1, (B,), generator=gen)
        x = torch.cat([noised(sched, real[idx], tt, gen), noised(sched, fake[idx], tt, gen)])
        # the four turns of the box (the latents' x, y axes): the data's symmetry, more windows
        k = int(torch.randint(0, 4, (1,), generator=gen))
        x, m = torch.rot90(x, k, (-2, -1)), torch.rot90(torch.cat([bev[idx], bev[idx]]), k, (-2, -1))
        y = torch.cat([torch.ones(B), torch.zeros(B)])
        return x, torch.cat([tt, tt]), m, y

    @torch.no_grad()
    def held_out(t: int, reps: int = 4) -> float:
        """The accuracy on the held-out windows, both noised to t (reps draws of the noise)."""
        D.eval()
        acc = []
        for _ in range(reps):
            x, tt, m, y = batch(va, n_val, torch.full((n_val,), t))
            acc.append(((D(x, tt, m) > 0).float() == y).float().mean())
        D.train()
        return float(torch.stack(acc).mean())

    bands = [t for t in (250, 400, 500, 650, 800, 900, 950) if args.t_low <= t <= args.t_high]
    log = []
    ts = time.time()
    for step in range(1, args.steps + 1):
        x, tt, m, y = batch(tr, args.batch)
        if args.r1 > 0:          # R1 (Mescheder et al. 2018): gamma / 2 E_real |grad_x d|^2, a smoother d
            x = x.requires_grad_(True)
        z = D(x, tt, m)
        loss = F.binary_cross_entropy_with_logits(z, y)
        if args.r1 > 0:
            g = torch.autograd.grad(z[:args.batch].sum(), x, create_graph=True)[0][:args.batch]
            loss = loss + args.r1 / 2 * g.pow(2).sum((1, 2, 3)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.eval_every == 0 or step == args.steps:
            row = {"step": step, "train_loss": float(loss.detach()), "s": round(time.time() - ts, 1)}
            row.update({f"acc_{t}": held_out(t) for t in bands})
            log.append(row)
            print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in D.state_dict().items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({"model": D.config(), "fake": str(args.fake), "windows": n,
                                                 "held_out": n_val, "r1": args.r1, "t_low": args.t_low, "t_high": args.t_high,
                                                 "steps": args.steps, "log": log}, indent=1))
    print(f"discriminator -> {out}")


def probe(args) -> None:
    """Clean statistics of psi_c's c against the real c of the same windows: per-channel std ratio,
    per-window std, neighbour difference, and a ridge read-out of each window's 64 channel means and
    stds telling the two apart, fitted on the windows the discriminator trains on and scored on its
    held-out ones."""
    import numpy as np

    fake, real, _, n_val = load_windows(args.fake, args.val_share)
    n = len(fake)
    ratio = fake.std((0, 2, 3)) / real.std((0, 2, 3))
    print(f"{n} windows: channel std ratio (psi_c / real) {float(ratio.min()):.3f} .. {float(ratio.max()):.3f}; "
          f"per-window std {float(fake.std((1, 2, 3)).mean()):.3f} / {float(real.std((1, 2, 3)).mean()):.3f}; "
          f"neighbour difference {float((fake[..., 1:, :] - fake[..., :-1, :]).pow(2).mean()):.3f} / "
          f"{float((real[..., 1:, :] - real[..., :-1, :]).pow(2).mean()):.3f}")

    def feats(x):
        return torch.cat([x.mean((2, 3)), x.std((2, 3)), torch.ones(len(x), 1)], 1).double().numpy()

    def xy(sl):
        return np.r_[feats(fake[sl]), feats(real[sl])], np.r_[-np.ones(len(fake[sl])), np.ones(len(real[sl]))]

    a, y = xy(slice(0, n - n_val))
    w = np.linalg.solve(a.T @ a + args.ridge * np.eye(a.shape[1]), a.T @ y)
    b, yb = xy(slice(n - n_val, n))
    print(f"ridge read-out of the channel means and stds: accuracy {np.mean((b @ w > 0) == (yb > 0)):.3f} "
          f"on the {n_val} held-out windows (both sides), {np.mean((a @ w > 0) == (y > 0)):.3f} on the rest")


# ----------------------------------------------------------------------------------------
# 3. sampling with the guidance


def sample(args) -> None:
    import bev_levers

    import nfldm.ldm.sample as ls
    from nfldm.pipeline.bundle import bundled_bev_model
    from nfldm.pipeline.generate import MAP_GUIDANCE, MAP_GUIDANCE_LEVELS, hand_over_source

    D = load_disc(Path(args.disc))
    for p in D.parameters():
        p.requires_grad_(False)
    plain = ls.guided_prediction
    stats = {"grad_rms": [], "logit": {}}

    def guided(model, x, t, ctx, cond, guidance=1.0, g_guidance=1.0, look_guidance=1.0):
        out = plain(model, x, t, ctx, cond, guidance, g_guidance, look_guidance)
        ti = int(t.flatten()[0])
        if model.level != "c" or not model.cfg.bev or cond is None or not args.t_low <= ti <= args.t_high:
            return out
        if model.cfg.prediction_type != "sample":
            raise SystemExit("error: disc_guidance.py corrects an x0 (sample) prediction; this psi_c predicts "
                             f"{model.cfg.prediction_type}")
        with torch.enable_grad():
            xg = x.detach().float().requires_grad_(True)
            z = D(xg, torch.full((len(x),), ti), cond)
            grad = torch.autograd.grad(z.sum(), xg)[0]
        ab = float(model.scheduler.alphas_cumprod[ti])
        stats["grad_rms"].append(float(grad.pow(2).mean().sqrt()))
        stats["logit"].setdefault(ti, []).append(float(z.mean()))
        # Tweedie: x0 = (x_t + (1 - abar) score) / sqrt(abar); score += w grad log(d / (1 - d))
        return out + args.weight * (1 - ab) / math.sqrt(ab) * grad.to(out.dtype)

    ls.guided_prediction = guided
    # the defaults of nfldm sample --bev, as gen samples
    low_src, hand_over = hand_over_source(bundled_bev_model(), None, None, True)
    args.guidance, args.guidance_levels, args.guidance_from, args.guidance_to = MAP_GUIDANCE, MAP_GUIDANCE_LEVELS, 0.0, 1e9
    args.psi_f, args.bundle, args.psi_c_low, args.low_below = None, None, str(low_src), int(hand_over)
    args.look_guidance, args.look_from, args.sampler = None, None, "dpm"
    bev_levers.sample(args)
    rms = stats["grad_rms"]
    (Path(args.out) / "disc_guidance.json").write_text(json.dumps(
        {"disc": str(args.disc), "weight": args.weight, "t_low": args.t_low, "t_high": args.t_high,
         "guided_steps": len(rms), "grad_rms_mean": sum(rms) / max(1, len(rms)),
         # the discriminator's mean logit on x_t at each guided timestep (> 0: "real"), over the batches
         "logit_by_t": {t: sum(v) / len(v) for t, v in sorted(stats["logit"].items(), reverse=True)}}, indent=1))
    if args.score:
        from psi_c_snapshots import folder_scores

        r = folder_scores(Path(args.out), args.data)
        print(f"{args.out}: FID {r['fid']:.2f} KID {r['kid']:.4f} paired LPIPS {r['lpips']:.4f} ({r['samples']} samples)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("--latents", required=True)
    g.add_argument("--out", required=True)
    g.add_argument("--num", type=int, default=768)
    g.add_argument("--batch", type=int, default=8)
    g.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("train")
    t.add_argument("--fake", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=3000)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--width", type=int, default=96)
    t.add_argument("--val-share", type=float, default=0.1)
    t.add_argument("--t-low", type=int, default=250)
    t.add_argument("--t-high", type=int, default=950)
    t.add_argument("--eval-every", type=int, default=250)
    t.add_argument("--r1", type=float, default=0.0, help="R1 gradient penalty weight gamma on the real windows")
    t.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("probe")
    p.add_argument("--fake", required=True)
    p.add_argument("--val-share", type=float, default=0.1)
    p.add_argument("--ridge", type=float, default=0.1)
    s = sub.add_parser("sample")
    s.add_argument("--disc", required=True)
    s.add_argument("--weight", type=float, default=1.0)
    s.add_argument("--t-low", type=int, default=250)
    s.add_argument("--t-high", type=int, default=950)
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--max-scenes", type=int, default=34)
    s.add_argument("--psi-c", default=None)
    s.add_argument("--data", default="out/release/data")
    s.add_argument("--score", action="store_true", help="then FID / KID against every test view and paired LPIPS")
    args = ap.parse_args()
    {"gen": gen, "train": train, "probe": probe, "sample": sample}[args.cmd](args)


if __name__ == "__main__":
    main()
