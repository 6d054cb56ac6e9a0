"""Speed and memory of the scene auto-encoder's splat and volume render (forward + backward).

    python benchmarks/splat_render.py [--sizes tiny,paper] [--repeats 5] [--device cpu|cuda]
                                      [--threads N] [--no-memory] [--budget 90]

Three tables:

1. Splat agreement: the max abs difference of ``splat_mean_reference`` and ``splat_mean_cumsum``
   from the model's ``splat_mean`` (forward values and gradients of the values).
2. Splat forward + backward for the three implementations in ``nfldm.scene_ae.splat``: time and
   peak memory. Target (from the issue): the model's ``splat_mean`` faster than the
   Lift-Splat-Shoot cumsum trick at every size; the script prints PASS / FAIL.
3. Render forward + backward (``render_views`` with stratified jitter, gradient w.r.t. V and the
   background): rays per second and peak memory.

Sizes. tiny takes all its numbers from the ``nfldm.scene_ae.config`` preset ``tiny`` when that
imports (the table says "preset"); paper keeps the issue's geometry below and takes only the
samples per ray from the preset ``paper`` ("issue+preset"); without presets both use the
constants in :func:`sizes` ("constants"). The sizes table prints what was used.

- tiny (the ``tiny`` preset): train.batch_size = 2 scenes x num_input_views = 8 views of
  64 x 64 lifted at lift_stride 2 (32 x 32 feature pixels), D = 32 bins, C = 16 features
  (+1 density -> K = 17 values per frustum entry), grid 64 x 64 x 32; render: V of
  2 x 17 x 64 x 64 x 32, 2 scenes x (num_novel_views + num_input_targets) target views of
  32 x 32 rays (image / render_down), the preset's num_samples differentiable samples per ray
  (+ num_coarse density-only samples where the preset and ``render_views`` have them).
- paper (the issue's numbers): 1 scene x 4 views of 256 x 256 at output stride 4 (64 x 64), D = 64,
  C = 32 (K = 33), grid 128 x 128 x 32; render: V = 1 x 33 x 128 x 128 x 32, 4 views x 64 x 64
  rays (image / 4), the ``paper`` preset's num_samples (+ num_coarse).

The frustum points are realistic, not uniform noise: cameras at random positions (1 m away from
the walls, 0.5 to 1.5 m above the floor) and yaws inside the 16 x 16 x 8 m box
[[-8, -8, -2], [8, 8, 6]], 90 degree horizontal field of view, D log-spaced bin centres between
0.25 and 24 m (the model's bins), so the fraction of entries inside the box (printed) and the
collision pattern (many entries per near voxel, few far away) are those of training. The splat
values are channel 0 >= 0 (a density, softplus of a normal), the rest normal * 0.5.

Timing: one warm-up call, then the median (and the best) of ``--repeats`` calls, each
``forward`` + ``backward`` of a fixed random upstream gradient (made outside the timed region);
on CUDA the device is synchronised before reading the clock. The three splats of a size are
timed round-robin (repeat r of each before repeat r + 1) so that load from other processes hits
them alike; ``fwd ms`` is a separate forward-only call under ``no_grad``. A case whose warm-up is slow runs
fewer repeats so that it takes about ``--budget`` seconds (the ``n`` column says how many ran).
On a shared CPU the numbers are noisy: rerun, compare the best column too. ``cpu ms`` is the
median process CPU time of a forward + backward (all threads summed, OpenMP spin-waits
included): it is far less sensitive to other processes than the wall clock; with
``--threads 1`` it is the most stable comparison between implementations.

Peak memory (``peak MB``: the most memory in use during one forward + backward, above what the
inputs already took):
- CUDA: ``torch.cuda.max_memory_allocated()`` minus ``memory_allocated()`` before the call,
  after ``reset_peak_memory_stats()`` (the caching allocator's view: tensors, not the cache).
- CPU: ``tracemalloc`` cannot see torch's allocations, so each case runs in a fresh Python
  process (this script re-invoked with a hidden ``--_child`` flag). The child builds the inputs,
  runs one warm-up call, frees its outputs, resets the kernel's peak-RSS counter (writes "5" to
  ``/proc/self/clear_refs``, Linux >= 4.0), records the current RSS, runs one forward + backward
  and reports ``VmHWM - VmRSS_before`` from ``/proc/self/status``. The child runs with
  ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc returns freed blocks to the kernel instead of
  recycling the warm-up's memory unseen. Where clear_refs cannot be written, the child skips the
  warm-up and reports the growth of ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` across the
  first call (marked with ``*``; slightly high, it includes one-time initialisation).
  The figure includes the gradient of the values (the size of the values themselves, printed
  as ``values MB``) and the output grid.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from nfldm import camera
from nfldm.scene_ae.render import render_views
from nfldm.scene_ae.splat import splat_mean, splat_mean_cumsum, splat_mean_reference, voxel_index

BOUNDS = ((-8.0, -8.0, -2.0), (8.0, 8.0, 6.0))
NEAR, FAR = 0.25, 24.0
RENDER_HAS_COARSE = "num_coarse" in inspect.signature(render_views).parameters
IMPLS = {"splat_mean": splat_mean, "reference": splat_mean_reference, "cumsum": splat_mean_cumsum}


@dataclass
class Size:
    name: str
    scenes: int            # B
    views: int             # input views per scene (splat)
    image: int             # H = W of the input frames
    lift_stride: int
    bins: int              # D
    feat: int              # C (K = 1 + C)
    grid: tuple[int, int, int]
    render_scenes: int
    render_views: int      # target views per scene
    render_down: int
    samples: int           # differentiable samples per ray
    coarse: int = 0        # density-only samples that find where the ray ends (0 = off)
    source: str = "constants"

    @property
    def h(self) -> int:
        return self.image // self.lift_stride

    @property
    def K(self) -> int:
        return 1 + self.feat

    @property
    def entries(self) -> int:
        return self.views * self.bins * self.h * self.h

    @property
    def rh(self) -> int:
        return self.image // self.render_down


def sizes() -> dict[str, Size]:
    out = {
        "tiny": Size("tiny", 2, 8, 64, 2, 32, 16, (64, 64, 32), 2, 3, 2, 32, 128 * RENDER_HAS_COARSE),
        # the issue: 4 views of 256 x 256 at stride 4, one scene; render 4 views at image / 4
        "paper": Size("paper", 1, 4, 256, 4, 64, 32, (128, 128, 32), 1, 4, 4, 64, 256 * RENDER_HAS_COARSE),
    }
    try:
        from nfldm.scene_ae.config import preset
    except Exception as e:  # noqa: BLE001 - config needs nfldm.trainer, optional here
        print(f"(presets not importable: {type(e).__name__}: {e}; using the constants)")
        return out
    for name, s in out.items():
        p = preset(name)
        m = p.model
        s.samples = m.num_samples
        s.coarse = getattr(m, "num_coarse", 0) if RENDER_HAS_COARSE else 0
        if name == "tiny":              # everything from the preset
            s.image, s.lift_stride, s.bins, s.feat = m.image_size, m.lift_stride, m.num_bins, m.feat_dim
            s.grid, s.render_down = tuple(m.grid), m.render_down
            s.scenes = s.render_scenes = p.train.batch_size
            s.views = m.num_input_views
            s.render_views = m.num_novel_views + m.num_input_targets
            s.source = "preset"
        else:                           # the geometry, the preset's samples per ray
            s.source = "issue+preset"
            ours = (s.image, s.lift_stride, s.bins, s.feat, s.grid, s.render_down)
            theirs = (m.image_size, m.lift_stride, m.num_bins, m.feat_dim, tuple(m.grid), m.render_down)
            if ours != theirs:
                print(f"(note: preset {name!r} (image, lift_stride, D, C, grid, render_down) = "
                      f"{theirs} differs from the issue's {ours}, which this benchmark uses)")
    return out


# ---------------------------------------------------------------------------------- inputs
def cameras(B: int, T: int, h: int, w: int, gen: torch.Generator,
            device) -> tuple[torch.Tensor, torch.Tensor]:
    """Level cameras at random positions / yaws inside BOUNDS, 90 deg hfov: (intr B x T x 4, c2w)."""
    lo, hi = torch.tensor(BOUNDS[0]), torch.tensor(BOUNDS[1])
    xy = lo[:2] + 1.0 + torch.rand(B, T, 2, generator=gen) * (hi[:2] - lo[:2] - 2.0)
    z = 0.5 + torch.rand(B, T, 1, generator=gen)                 # 0.5 .. 1.5 m above the floor
    z = lo[2] + z
    yaw = torch.rand(B, T, generator=gen) * 2 * math.pi
    c2w = camera.pose_from_position_yaw(torch.cat([xy, z], -1), yaw)
    f = w / 2.0
    intr = torch.tensor([f, f, w / 2.0, h / 2.0]).expand(B, T, 4).contiguous()
    return intr.to(device), c2w.to(device)


def bin_centers(D: int) -> torch.Tensor:
    edges = torch.logspace(math.log10(NEAR), math.log10(FAR), D + 1)
    return 0.5 * (edges[1:] + edges[:-1])


def splat_inputs(s: Size, device, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    intr, c2w = cameras(s.scenes, s.views, s.h, s.h, gen, "cpu")
    pts = camera.frustum_points(intr, c2w, s.h, s.h, bin_centers(s.bins)).reshape(s.scenes, -1, 3)
    N = pts.shape[1]
    vals = torch.randn(s.scenes, N, s.K, generator=gen) * 0.5
    vals[..., 0] = torch.nn.functional.softplus(vals[..., 0] * 2)
    bounds = torch.tensor(BOUNDS).expand(s.scenes, 2, 3).contiguous()
    X, Y, Z = s.grid
    grad = torch.randn(s.scenes, s.K, X, Y, Z, generator=gen)
    return {"points": pts.to(device), "values": vals.to(device).requires_grad_(),
            "bounds": bounds.to(device), "grid": tuple(s.grid), "grad": grad.to(device)}


def render_inputs(s: Size, device, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    B, X, Y, Z = s.render_scenes, *s.grid
    intr, c2w = cameras(B, s.render_views, s.rh, s.rh, gen, "cpu")
    V = torch.randn(B, s.K, X, Y, Z, generator=gen)
    V[:, 0] = torch.nn.functional.softplus(V[:, 0])               # density >= 0, per metre
    bounds = torch.tensor(BOUNDS).expand(B, 2, 3).contiguous()
    gf = torch.randn(B, s.render_views, s.feat, s.rh, s.rh, generator=gen)
    return {"V": V.to(device).requires_grad_(), "bounds": bounds.to(device), "intr": intr.to(device),
            "c2w": c2w.to(device), "background": torch.zeros(s.feat, device=device, requires_grad=True),
            "gf": gf.to(device), "hw": s.rh, "samples": s.samples, "coarse": s.coarse}


# ---------------------------------------------------------------------------------- cases
def splat_step(fn, x: dict, backward: bool = True) -> torch.Tensor:
    x["values"].grad = None
    out = fn(x["points"], x["values"], x["bounds"], x["grid"])
    if backward:
        out.backward(x["grad"])
    return out


def render_step(x: dict, backward: bool = True) -> dict:
    x["V"].grad = x["background"].grad = None
    hw = x["hw"]
    kw = {"num_coarse": x["coarse"]} if x["coarse"] else {}
    out = render_views(x["V"], x["bounds"], x["intr"], x["c2w"], hw, hw, x["samples"],
                       x["background"], jitter=True, **kw)
    if backward:
        loss = (out["feature"] * x["gf"]).sum() + out["depth"].mean() + out["opacity"].mean()
        loss.backward()
    return out


def make_case(kind: str, size: Size, impl: str, device):
    """A callable running one forward(+backward) of a case, and its inputs."""
    if kind == "splat":
        x = splat_inputs(size, device)
        fn = IMPLS[impl]
        return (lambda bw=True: splat_step(fn, x, bw)), x
    x = render_inputs(size, device)
    return (lambda bw=True: render_step(x, bw)), x


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_cases(steps: dict, device, repeats: int, budget: float) -> dict[str, dict]:
    """Time several cases round-robin (repeat r of every case before repeat r + 1), so that
    load from other processes hits all of them alike. Returns per case: n, fwd (median),
    fb (median fwd+bwd), fb_best, cpu (median process CPU time of a fwd+bwd)."""
    warm = 0.0
    for step in steps.values():
        sync(device)
        t = time.perf_counter()
        step()
        sync(device)
        warm += time.perf_counter() - t
    n = max(1, min(repeats, int(budget / max(2 * warm, 1e-9))))   # fwd-only + fwd+bwd per repeat
    res = {k: {"fwd": [], "fb": [], "cpu": []} for k in steps}
    for _ in range(n):
        for k, step in steps.items():
            sync(device)
            t = time.perf_counter()
            with torch.no_grad():
                step(False)
            sync(device)
            res[k]["fwd"].append(time.perf_counter() - t)
            t, c = time.perf_counter(), time.process_time()
            step()
            sync(device)
            res[k]["fb"].append(time.perf_counter() - t)
            res[k]["cpu"].append(time.process_time() - c)
    return {k: {"n": n, "fwd": statistics.median(r["fwd"]), "fb": statistics.median(r["fb"]),
                "fb_best": min(r["fb"]), "cpu": statistics.median(r["cpu"])} for k, r in res.items()}


# ---------------------------------------------------------------------------------- memory
def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def child_peak(kind: str, size: Size, impl: str) -> None:
    """Runs in a fresh process: print 'PEAK_KB <kb> <method>'."""
    step, x = make_case(kind, size, impl, "cpu")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        can_reset = True
    except OSError:
        can_reset = False
    if can_reset:
        step()
        x.get("values", x.get("V")).grad = None
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status_kb("VmRSS")
        step()
        peak, method = _status_kb("VmHWM") - base, "hwm"
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        step()
        peak, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base, "maxrss"
    print(f"PEAK_KB {peak} {method}", flush=True)


def peak_mb(kind: str, size: Size, impl: str, device, threads: int) -> str:
    if torch.device(device).type == "cuda":
        step, x = make_case(kind, size, impl, device)
        step()
        x.get("values", x.get("V")).grad = None
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return f"{(torch.cuda.max_memory_allocated() - base) / 2**20:.0f}"
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", f"{kind}:{size.name}:{impl}",
           "--threads", str(threads)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in r.stdout.splitlines():
        if line.startswith("PEAK_KB"):
            _, kb, method = line.split()
            return f"{int(kb) / 1024:.0f}" + ("" if method == "hwm" else "*")
    return "err"


# ---------------------------------------------------------------------------------- tables
def table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def agreement(s: Size, device) -> list:
    x = splat_inputs(s, device)
    res = {}
    for name, fn in IMPLS.items():
        out = splat_step(fn, x)
        res[name] = (out.detach(), x["values"].grad.clone())
    ref_out, ref_g = res["splat_mean"]
    rows = []
    for name in ("reference", "cumsum"):
        out, g = res[name]
        rows.append([s.name, name, f"{(out - ref_out).abs().max().item():.2e}",
                     f"{(out[:, 0] - ref_out[:, 0]).abs().max().item():.2e}",
                     f"{(out[:, 1:] - ref_out[:, 1:]).abs().max().item():.2e}",
                     f"{(g - ref_g).abs().max().item():.2e}", f"{ref_out.abs().max().item():.2f}"])
    # the cumsum trick's running sum of the density channel ends at the sum over all in-box entries
    _, inside = voxel_index(x["points"], x["bounds"], x["grid"])
    top = x["values"].detach()[..., 0][inside].sum().item()
    rows[-1].append(f"{top:.3g} (float32 step {2.0 ** (math.floor(math.log2(top)) - 23):.2g})")
    rows[0].append("")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="tiny,paper")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--budget", type=float, default=90.0, help="seconds per timed case, roughly")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    all_sizes = sizes() if args._child is None else _quiet_sizes()
    if args._child:
        kind, name, impl = args._child.split(":")
        child_peak(kind, all_sizes[name], impl)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available")
    names = [n for n in args.sizes.split(",") if n]
    for n in names:
        if n not in all_sizes:
            sys.exit(f"unknown size {n!r}; choose from {sorted(all_sizes)}")
    dev = torch.device(args.device)
    where = (torch.cuda.get_device_name(dev) if dev.type == "cuda"
             else f"CPU, {torch.get_num_threads()} threads")
    print(f"torch {torch.__version__}, {where}; repeats {args.repeats}")
    print()
    print("sizes")
    rows = []
    for n in names:
        s = all_sizes[n]
        x = splat_inputs(s, "cpu")
        _, inside = voxel_index(x["points"], x["bounds"], x["grid"])
        rows.append([n, s.source, s.scenes, f"{s.views} x {s.h}x{s.h}", s.bins, s.K,
                     "x".join(map(str, s.grid)), f"{s.scenes * s.entries:,}",
                     f"{100 * inside.float().mean().item():.1f}",
                     f"{s.render_scenes} x {s.render_views} x {s.rh}x{s.rh}",
                     f"{s.samples}" + (f" (+{s.coarse} coarse)" if s.coarse else "")])
    print(table(rows, ["size", "from", "B", "views x feat px", "D", "K", "grid", "entries",
                       "in box %", "render rays", "samples"]))

    print()
    print("splat agreement with splat_mean (max abs difference; float32)")
    rows = [r for n in names for r in agreement(all_sizes[n], dev)]
    print(table(rows, ["size", "impl", "values", "density ch", "feature ch", "grad", "max |V|",
                       "cumsum's last density running sum"]))
    print("(the cumsum trick takes voxel sums as differences of a running sum over all in-box "
          "entries; the density channel (all >= 0) grows to the last column, where float32 "
          "numbers are that far apart: its error. The zero-mean feature channels stay small.)")

    print()
    print("splat forward + backward")
    rows, verdict = [], []
    for n in names:
        s = all_sizes[n]
        cases = {impl: make_case("splat", s, impl, dev)[0] for impl in IMPLS}
        times = time_cases(cases, dev, args.repeats, args.budget)
        del cases
        gc.collect()
        for impl, t in times.items():
            mem = "-" if args.no_memory else peak_mb("splat", s, impl, dev, torch.get_num_threads())
            values_mb = s.scenes * s.entries * s.K * 4 / 2**20
            rows.append([n, impl, t["n"], f"{1e3 * t['fwd']:.1f}", f"{1e3 * t['fb']:.1f}",
                         f"{1e3 * t['fb_best']:.1f}", f"{1e3 * t['cpu']:.1f}", f"{values_mb:.0f}", mem])
        ok = times["splat_mean"]["fb"] < times["cumsum"]["fb"]
        verdict.append(f"{n}: splat_mean {1e3 * times['splat_mean']['fb']:.1f} ms vs cumsum "
                       f"{1e3 * times['cumsum']['fb']:.1f} ms "
                       f"({times['cumsum']['fb'] / times['splat_mean']['fb']:.2f}x)"
                       f" -> {'PASS' if ok else 'FAIL'}")
    print(table(rows, ["size", "impl", "n", "fwd ms", "fwd+bwd ms", "best ms", "cpu ms", "values MB",
                       "peak MB"]))
    print("target: the model's splat_mean faster (fwd+bwd, median) than the cumsum trick at every size")
    for v in verdict:
        print("  " + v)
    overall = all(v.endswith("PASS") for v in verdict)
    print(f"splat target: {'PASS' if overall else 'FAIL'}")

    print()
    print("render forward + backward (render_views, jitter, grad w.r.t. V and background)")
    rows = []
    for n in names:
        s = all_sizes[n]
        t = time_cases({"render": make_case("render", s, "", dev)[0]}, dev, args.repeats,
                       args.budget)["render"]
        rays = s.render_scenes * s.render_views * s.rh * s.rh
        gc.collect()
        mem = "-" if args.no_memory else peak_mb("render", s, "", dev, torch.get_num_threads())
        X, Y, Z = s.grid
        rows.append([n, f"{s.render_scenes}x{s.K}x{X}x{Y}x{Z}", f"{rays:,}",
                     f"{s.samples}" + (f"+{s.coarse}c" if s.coarse else ""), t["n"],
                     f"{1e3 * t['fwd']:.0f}", f"{1e3 * t['fb']:.0f}", f"{rays / t['fb']:,.0f}",
                     f"{rays / t['fb_best']:,.0f}", f"{1e3 * t['cpu']:.0f}", mem])
    print(table(rows, ["size", "V", "rays", "samples", "n", "fwd ms", "fwd+bwd ms", "rays/s",
                       "best rays/s", "cpu ms", "peak MB"]))
    if not args.no_memory and dev.type == "cpu":
        print("peak MB: extra process RSS during one fwd+bwd, fresh process per case (see docstring);"
              " * = ru_maxrss fallback")


def _quiet_sizes() -> dict[str, Size]:
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        return sizes()


if __name__ == "__main__":
    main()
