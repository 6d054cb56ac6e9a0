"""Speed of one training step of the scene auto-encoder (forward + backward + optimizer), its
achieved FLOP rate and where the time goes.

    python benchmarks/train_step.py [--preset tiny] [--steps 5] [--threads N] [--device cpu|cuda]
                                    [--amp auto|bf16|off] [--profile]

The step is the trainer's (``nfldm.trainer.Trainer._train_step``): ``model.training_loss(batch,
step)`` (random input / target views of each scene, all losses), ``backward``, global grad-norm
clipping (``train.grad_clip``), AdamW (weight decay on >= 2-dim weights only), zero_grad and
the EMA update (``train.ema_decay``), on a synthetic batch of the preset's shapes:
``train.batch_size`` scenes x (num_input_views + num_novel_views) views of image_size^2 RGB in
[0, 1], valid depth uniform in 1..10 m, level cameras at random positions / yaws inside the
16 x 16 x 8 m box [[-8, -8, -2], [8, 8, 6]], 90 degree horizontal field of view.

Printed:
- steps/s: the median (and best) of ``--steps`` steps after two warm-up steps; on CUDA the device
  is synchronised around each step.
- FLOPs of one step counted by ``torch.utils.flop_counter.FlopCounterMode`` (forward + backward)
  and the achieved GFLOP/s = counted FLOPs / median step time, as a fraction of this machine's
  float32 matmul rate (2048 x 2048 @ 2048 x 2048, measured here with the same thread count /
  device; best of 5). FlopCounterMode counts only matmul-like ops (mm, bmm, addmm, einsum via
  bmm, convolution and its backward, attention); it does NOT count grid_sample (render),
  index_add / scatter / bincount (splat), cumsum, interpolate, normalisations, activations,
  other elementwise ops or the optimizer, so the "achieved" rate understates the work done and
  says how much of the step is spent in dense math.
- a per-part breakdown (median over the timed steps, measured in a second pass with timers):
  forward parts timed by wrapping ``model.lift`` (LiftNet + occupancy weights), the module-level
  ``splat_mean`` and ``render_views`` that ``nfldm.scene_ae.model`` calls, and
  ``model.decoder``; "fwd other" is the rest of the forward (frustum points, entry assembly,
  losses). The backward is split by gradient hooks at the part boundaries: autograd reaches
  the decoder input ("bwd decoder+loss"), then V ("bwd render" done), then the splatted
  entries ("bwd splat" done), then finishes ("bwd lift+entries": the entry assembly
  [sigma, O * phi], the occupancy weights and the LiftNet); the loss terms' own backward nodes
  fall into whichever segment autograd runs them in (they are cheap). "optimizer" is clipping,
  AdamW, zero_grad and EMA. On CUDA every timer and hook synchronises the device.
- ``--profile``: also the torch.profiler table of the top ops of one step (self time).

Run with the thread count you train with (``--threads``; default torch's, normally the core
count). On a shared machine the numbers are noisy: rerun and compare the best columns.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import nfldm.scene_ae.model as model_mod
from nfldm import camera
from nfldm.scene_ae.config import preset
from nfldm.scene_ae.model import SceneAutoEncoder

BOUNDS = ((-8.0, -8.0, -2.0), (8.0, 8.0, 6.0))


def make_batch(cfg, batch_size: int, device, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    B, V, S = batch_size, cfg.num_input_views + cfg.num_novel_views, cfg.image_size
    lo, hi = torch.tensor(BOUNDS[0]), torch.tensor(BOUNDS[1])
    xy = lo[:2] + 1.0 + torch.rand(B, V, 2, generator=g) * (hi[:2] - lo[:2] - 2.0)
    z = lo[2] + 0.5 + torch.rand(B, V, 1, generator=g)
    yaw = torch.rand(B, V, generator=g) * 2 * math.pi
    batch = {
        "images": torch.rand(B, V, 3, S, S, generator=g),
        "depth": 1.0 + 9.0 * torch.rand(B, V, S, S, generator=g),
        "depth_valid": torch.ones(B, V, S, S, dtype=torch.bool),
        "intrinsics": torch.tensor([S / 2, S / 2, S / 2, S / 2]).expand(B, V, 4).contiguous(),
        "c2w": camera.pose_from_position_yaw(torch.cat([xy, z], -1), yaw),
        "bounds": torch.tensor(BOUNDS).expand(B, 2, 3).contiguous(),
    }
    return {k: v.to(device) for k, v in batch.items()}


class Step:
    """The trainer's update: loss, backward, clip, AdamW, zero_grad, EMA."""

    def __init__(self, model: SceneAutoEncoder, train_cfg, device, amp_dtype):
        self.model, self.cfg, self.device, self.amp_dtype = model, train_cfg, device, amp_dtype
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": train_cfg.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        self.opt = torch.optim.AdamW(groups, lr=train_cfg.lr, betas=tuple(train_cfg.betas))
        self.ema = copy.deepcopy(model).requires_grad_(False) if train_cfg.ema_decay > 0 else None
        self.step = 0
        self.hooks: list = []       # (name, callback) pairs set by the breakdown pass

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def forward(self, batch):
        with self.autocast():
            return self.model.training_loss(batch, self.step)

    def backward_and_update(self, loss, marks: dict | None = None):
        if marks is not None:
            sync(self.device)
            marks["bwd_start"] = time.perf_counter()
        loss.backward()
        if marks is not None:
            sync(self.device)
            marks["bwd_end"] = time.perf_counter()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()),
                                     1.0 - self.cfg.ema_decay)
        self.step += 1

    def __call__(self, batch):
        loss, _ = self.forward(batch)
        self.backward_and_update(loss)
        return loss


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(device, n: int = 2048, reps: int = 5) -> tuple[float, float]:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    ts = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        ts.append(time.perf_counter() - t)
    flops = 2 * n ** 3
    return flops / min(ts) / 1e9, flops / statistics.median(ts) / 1e9


# ------------------------------------------------------------------------------- breakdown
@contextlib.contextmanager
def part_timers(model: SceneAutoEncoder, device, times: dict, marks: dict):
    """Time the forward parts (wrappers) and mark backward boundaries (grad hooks)."""

    def stamp(key):
        def hook(grad):
            sync(device)
            marks.setdefault(key, time.perf_counter())   # first arrival of the part's grad
            return None
        return hook

    def timed(name, fn, pre=None, post=None):
        def wrapper(*args, **kwargs):
            if pre is not None:
                pre(args)
            sync(device)
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            sync(device)
            times[name] = times.get(name, 0.0) + time.perf_counter() - t
            if post is not None:
                post(out)
            return out
        return wrapper

    def hook_values(args):          # splat_mean(points, values, ...): the entries
        if args[1].requires_grad:
            args[1].register_hook(stamp("entries"))

    def hook_V(out):
        if out.requires_grad:
            out.register_hook(stamp("V"))

    def hook_dec_in(args):
        if args[0].requires_grad:
            args[0].register_hook(stamp("decoder_in"))

    old = (model_mod.splat_mean, model_mod.render_views)
    model_mod.splat_mean = timed("splat", old[0], pre=hook_values, post=hook_V)
    model_mod.render_views = timed("render", old[1])
    model.lift = timed("lift", model.lift)
    model.decoder.forward = timed("decoder", model.decoder.forward, pre=hook_dec_in)
    try:
        yield
    finally:
        model_mod.splat_mean, model_mod.render_views = old
        del model.lift
        del model.decoder.forward


def breakdown(step: Step, batch: dict, n: int, device) -> dict[str, list[float]]:
    parts: dict[str, list[float]] = {}
    for _ in range(n):
        times, marks = {}, {}
        with part_timers(step.model, device, times, marks):
            sync(device)
            t0 = time.perf_counter()
            loss, _ = step.forward(batch)
            sync(device)
            t1 = time.perf_counter()
            step.backward_and_update(loss, marks)
            sync(device)
            t2 = time.perf_counter()
        fwd = t1 - t0
        row = {k: times.get(k, 0.0) for k in ("lift", "splat", "render", "decoder")}
        row["fwd other"] = fwd - sum(row.values())
        # backward segments between the boundary marks, in the order autograd reaches them; a
        # mark that did not fire (the model changed) merges its segment into the next one
        prev, label = marks["bwd_start"], []
        for name, key in (("bwd decoder+loss", "decoder_in"), ("bwd render", "V"),
                          ("bwd splat", "entries"), ("bwd lift+entries", "bwd_end")):
            label.append(name)
            if key in marks and marks[key] >= prev:
                row[" + ".join(label)] = marks[key] - prev
                prev, label = marks[key], []
        row["optimizer"] = t2 - marks["bwd_end"]
        row["total"] = t2 - t0
        for k, v in row.items():
            parts.setdefault(k, []).append(v)
    return parts


def table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
           for r in cells]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up steps)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"],
                    help="autocast dtype like the trainer: auto = bf16 on CUDA, off on CPU")
    ap.add_argument("--profile", action="store_true", help="also print torch.profiler's top ops")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available")
    amp_dtype = None
    if device.type == "cuda" and args.amp in ("auto", "bf16"):
        amp_dtype = torch.bfloat16

    torch.manual_seed(0)
    p = preset(args.preset)
    cfg = p.model
    model = SceneAutoEncoder(cfg).to(device)
    step = Step(model, p.train, device, amp_dtype)
    batch = make_batch(cfg, p.train.batch_size, device)
    nparams = sum(q.numel() for q in model.parameters())
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU, {torch.get_num_threads()} threads")
    print(f"torch {torch.__version__}, {where}, autocast {amp_dtype}")
    nviews = cfg.num_input_views + cfg.num_novel_views
    ntgt = cfg.num_novel_views + cfg.num_input_targets
    r = cfg.image_size // cfg.render_down
    print(f"preset {args.preset}: {nparams / 1e6:.2f} M parameters; batch {p.train.batch_size} scenes x "
          f"{nviews} views of {cfg.image_size}x{cfg.image_size} ({cfg.num_input_views} inputs lifted to "
          f"{cfg.image_size // cfg.lift_stride}^2 x D {cfg.num_bins}, grid {'x'.join(map(str, cfg.grid))} x "
          f"{1 + cfg.feat_dim} ch, {ntgt} targets rendered at {r}x{r} x {cfg.num_samples} samples)")
    print(f"step = training_loss + backward + clip {p.train.grad_clip} + AdamW + EMA {p.train.ema_decay}")

    for _ in range(2):                                           # warm-up
        step(batch)
    sync(device)
    ts = []
    for _ in range(args.steps):
        sync(device)
        t = time.perf_counter()
        step(batch)
        sync(device)
        ts.append(time.perf_counter() - t)
    t_med, t_best = statistics.median(ts), min(ts)

    flop_counter = FlopCounterMode(display=False)
    with flop_counter:
        loss, _ = step.forward(batch)
        loss.backward()
    step.opt.zero_grad(set_to_none=True)
    flops = flop_counter.get_total_flops()
    by_op: dict[str, int] = {}
    for op, n in flop_counter.get_flop_counts().get("Global", {}).items():
        name = str(op).replace("aten.", "")
        by_op[name] = by_op.get(name, 0) + n
    mm_best, mm_med = matmul_gflops(device)

    print()
    rows = [[args.preset, args.steps, f"{1e3 * t_med:.0f}", f"{1e3 * t_best:.0f}", f"{1 / t_med:.2f}",
             f"{1 / t_best:.2f}", f"{flops / 1e9:.1f}",
             f"{flops / t_med / 1e9:.1f} / {flops / t_best / 1e9:.1f}", f"{mm_best:.1f}",
             f"{100 * flops / t_med / 1e9 / mm_best:.1f} / {100 * flops / t_best / 1e9 / mm_best:.1f}"]]
    print(table(rows, ["preset", "n", "step ms", "best ms", "steps/s", "best steps/s", "GFLOP/step",
                       "GFLOP/s med/best", "matmul GFLOP/s", "% of matmul med/best"]))
    print("counted FLOPs by op: " + ", ".join(f"{k} {v / 1e9:.2f} G" for k, v in
                                               sorted(by_op.items(), key=lambda kv: -kv[1])))
    print(f"matmul {2048}^3 float32: best {mm_best:.1f}, median {mm_med:.1f} GFLOP/s. Not counted by "
          "FlopCounterMode: grid_sample (render), index_add/bincount (splat), cumsum, norms, "
          "activations, elementwise, AdamW.")

    print()
    parts = breakdown(step, batch, max(3, args.steps), device)
    total = statistics.median(parts["total"])
    rows = [[k, f"{1e3 * statistics.median(v):.1f}", f"{1e3 * min(v):.1f}",
             f"{100 * statistics.median(v) / total:.1f}"] for k, v in parts.items()]
    print("per-part time (median over steps; forward by wrappers, backward by grad hooks)")
    print(table(rows, ["part", "median ms", "best ms", "% of step"]))

    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            step(batch)
            sync(device)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print()
        print(prof.key_averages().table(sort_by=key, row_limit=25))


if __name__ == "__main__":
    main()
