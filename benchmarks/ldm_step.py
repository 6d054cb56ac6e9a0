"""Speed of one training step of a stage-3 level (forward + backward + fused AdamW) on a latent
folder, at the widths a run would use, and where the time goes.

    python benchmarks/ldm_step.py --latents LAT --level c [--set c.block_out_channels=[48,96] ...]
                                  [--steps 40] [--threads 2] [--profile]

The level is built as ``nfldm train ldm`` builds it (``level_configs`` of the tiny preset plus
the --set overrides, the folder's camera set-up); four real batches of the train split are
cycled. Prints ms per step and steps per minute (after as many warm-up steps as batches), and
with --profile torch.profiler's top ops (self CPU time) over 10 steps. The release's widths:
--set g.mlp_width=128 --set c.block_out_channels=[48,96] --set c.norm_num_groups=16
--set f.block_out_channels=[32,64].
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader

from nfldm.cli import _parse_sets
from nfldm.latent_ae.latents import read_latent_index
from nfldm.ldm.data import LatentDataset, render_setup
from nfldm.ldm.model import LevelDiffusion
from nfldm.ldm.train import level_configs, with_camera_setup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latents", required=True)
    ap.add_argument("--level", required=True, choices=("g", "c", "f"))
    ap.add_argument("--set", action="append", metavar="KEY=VALUE")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--autocast", choices=("off", "bf16"), default="off",
                    help="bf16 autocast of the forward pass (CPU: oneDNN bf16 kernels where the CPU has them)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model's training loss")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    index = read_latent_index(args.latents)
    cfg, tcfg = level_configs(index, "tiny", args.level, None, "cpu", False, _parse_sets(args.set))
    if cfg.traj_map:
        cfg = with_camera_setup(cfg, render_setup(args.latents, index))
    ds = LatentDataset(args.latents, "train", cfg.traj_frames, index=index)
    batches = [b for _, b in zip(range(4), DataLoader(ds, batch_size=tcfg.batch_size, shuffle=True, drop_last=True))]
    model = LevelDiffusion(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, fused=True)

    loss_fn = torch.compile(model.training_loss) if args.compile else model.training_loss
    dev = "cpu"

    def step(b):
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=args.autocast == "bf16"):
            loss, _ = loss_fn(b, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for b in batches:
        step(b)
    t = time.perf_counter()
    for i in range(args.steps):
        step(batches[i % len(batches)])
    dt = (time.perf_counter() - t) / args.steps
    print(f"level {args.level}: {sum(p.numel() for p in model.parameters())} parameters, batch {tcfg.batch_size}: "
          f"{1000 * dt:.1f} ms a step, {60 / dt:.0f} steps/min ({torch.get_num_threads()} threads, "
          f"autocast {args.autocast}{', compiled' if args.compile else ''})")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(10):
                step(batches[i % len(batches)])
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
