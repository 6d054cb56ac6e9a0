"""Issue 27's targets for a release pipeline, next to a baseline bundle, in one run.

    python benchmarks/release_targets.py --release out/release --out out/release_targets \
        [--baseline BUNDLE] [--num 16] [--fid-num 105] [--bev-scenes 32] [--stage1-scenes 64] \
        [--parts uncond,copies,stage1,bev,edit,refine,speed] [--device auto]

--release is a quickstart folder (``nfldm quickstart --preset release``): its bundle (what ships)
samples, its ``ldm`` run and ``latents`` give the train scenes, its ``data`` test split (maps
never seen in training) is the real set. --baseline is the bundle to beat (default: the one this
install ships; run this before the release bundle replaces it, or point it at a copy of the old
one, e.g. ``git worktree add /tmp/old HEAD~1`` and ``/tmp/old/src/nfldm/weights/tiny``). Every
part uses the same protocol for both models, in this one run:

- uncond: --fid-num unconditional samples of each (default 105: 5,040 views, which ``nfldm eval
  generation`` scores at the metrics protocol's 5,000; DPM-Solver++ 20 steps, seed 0), Inception
  FID / KID against the test views and path agreement; and the same for --num samples (16: 768
  views, the numbers of earlier cards; FID at so few views is biased upwards by an amount that
  differs between models, docs/notes/2026-12-06-fid-at-the-protocols-size.md). Targets: the
  release's FID (at the protocol's size) at least 30 % below the baseline's; path agreement >= 0.4
  (real scenes 0.47-0.55).
- copies: ``experiments/nearest_train.py`` on the release's samples: at most 2 of 16 nearer a
  train scene than the 5th percentile of train-to-other-map distances.
- stage1: ``nfldm eval scene-ae`` of each bundle's stage 1 (and fine-tuned renderer) on the
  same held-out views (the first --stage1-scenes test scenes). Target: release LPIPS lower and
  PSNR higher.
- bev: --bev-scenes test scenes spread over the split, one sample each along the scene's real
  path: conditional (the release bundle's bev levels at nfldm sample's defaults with a map: map guidance 2
  at psi_c, the unconditional psi_c below t = 250), unconditional (its own levels)
  and the scenes' own latents decoded (the upper bound; by the ldm run's float32 latent-ae, which
  encoded them, and the float32 renderer run the bundle's came from). Targets (issue 23): wall IoU >= 0.8 x
  the upper bound's and far above unconditional; Inception FID and paired LPIPS close >= 50 % of
  the gap between unconditional and the upper bound; latent sampling time per scene <= 1.5 x
  unconditional (``benchmarks/bev_sampling.py`` over the same scenes, both in one process).
- edit: --edit-scenes test scenes spread over the split (default: all of them, the metrics protocol's
  size; on 32 one set moved the erased edit's change by 2 points:
  docs/notes/2026-12-07-edits-at-the-protocols-size-and-the-fid-gap.md) at guidance 4
  (``--edit-guidance``) with their maps unedited, with the central 6 x 6 m erased and with a 4 m
  pillar added: wall IoU with the map given within 10 % of the unedited one's. Scored by wall IoU
  alone (no Inception), about 17 min a folder of 205 scenes on one thread.
- refine: ``benchmarks/refine_quality.py`` on the release's unconditional samples with its image
  prior: FID -20 % after refinement, negative guidance below plain guidance (issue 25).
- speed: ``nfldm sample --run BUNDLE --num 4`` in a fresh process, wall seconds (target <= 60
  on the 2-core CPU).

Writes OUT/targets.json (every number, the command behind it, target and whether it is met) and
OUT/targets.md (the same as a table), puts that table in the release bundle's MODEL_CARD.md
(unless --no-card) and prints it. Every part keeps its results under OUT: a rerun (after an
interruption) redoes only what is missing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("uncond", "copies", "stage1", "bev", "edit", "refine", "speed")


def _run(cmd: list[str]) -> float:
    """Run a command (printed), fail loudly; return its wall seconds."""
    print("$ " + " ".join(cmd), flush=True)
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd[:4])} ... exited with {res.returncode}")
    return time.perf_counter() - t


def _gap_closed(lower: float, value: float, upper: float) -> float:
    """Share of the gap lower -> upper that value closes (1: at the upper bound)."""
    return (lower - value) / (lower - upper) if lower != upper else float("nan")


class Targets:
    """The rows of the table: what, release, baseline, target, met, command."""

    def __init__(self):
        self.rows: list[dict] = []

    def add(self, what: str, release, baseline=None, target: str = "", met: bool | None = None, command: str = ""):
        self.rows.append({"what": what, "release": release, "baseline": baseline, "target": target, "met": met,
                          "command": command})
        print(f"  {what}: release {_fmt(release)}" + (f", baseline {_fmt(baseline)}" if baseline is not None else "")
              + (f" (target {target}: {'met' if met else 'MISSED'})" if target and met is not None else ""), flush=True)

    def markdown(self) -> str:
        lines = ["| what | release | baseline | target | met |", "|---|---|---|---|---|"]
        for r in self.rows:
            met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
            lines.append(f"| {r['what']} | {_fmt(r['release'])} | {_fmt(r['baseline'])} | {r['target']} | {met} |")
        cmds = sorted({r["command"] for r in self.rows if r["command"]})
        return "\n".join(lines + ["", "Commands:", ""] + [f"- `{c}`" for c in cmds]) + "\n"


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--release", required=True, help="a quickstart folder (bundle/, ldm/, latents/, data/)")
    ap.add_argument("--baseline", default=None, help="the bundle to beat (default: the shipped one)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--num", type=int, default=16, help="unconditional samples per model (copies, refine, "
                    "and the 768-view FID)")
    ap.add_argument("--fid-num", type=int, default=105,
                    help="unconditional samples per model for the FID target (105 x 48 views: the protocol's 5,000)")
    ap.add_argument("--bev-scenes", type=int, default=32, help="test scenes for the bev part")
    ap.add_argument("--edit-scenes", type=int, default=0, help="test scenes for the edit part (default 0: all)")
    ap.add_argument("--edit-guidance", type=float, default=4.0, help="map guidance of the edit part (default 4)")
    ap.add_argument("--edit-hand-over", type=int, default=None, metavar="T",
                    help="the edit part's hand-over to the unconditional psi_c (default: nfldm sample's; 0: none)")
    ap.add_argument("--stage1-scenes", type=int, default=64, help="test scenes for stage 1's views")
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--look-guidance", type=float, default=3.0,
                    help="guidance on the map's look for bev levels given it (nfldm sample's default 3)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-card", action="store_true",
                    help="do not put the table in the release bundle's model card (done by default)")
    args = ap.parse_args()

    import numpy as np

    from nfldm.ldm.evaluate import eval_generation, sample_map_agreement
    from nfldm.pipeline.bundle import bundled_model
    from nfldm.pipeline.generate import MAP_GUIDANCE, MAP_GUIDANCE_LEVELS, sample
    from nfldm.pipeline.maps import conditions_from, spread
    from nfldm.scene_ae.train import eval_scene_ae

    rel = Path(args.release)
    bundle, data, latents, ldm = rel / "bundle", rel / "data", rel / "latents", rel / "ldm"
    base = Path(args.baseline) if args.baseline else bundled_model()
    for p in (bundle / "bundle.json", base / "bundle.json", data / "dataset.json"):
        if not p.is_file():
            raise SystemExit(f"error: {p}: missing (a finished release quickstart folder and a bundle are needed)")
    parts = [p for p in args.parts.split(",") if p]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise SystemExit(f"error: unknown part(s) {bad}; choose from {', '.join(PARTS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    T = Targets()
    common = dict(sampler="dpm", steps=20, seed=0, device=args.device, progress=False)
    # the bev levels given the map's look sample with look guidance, as nfldm sample does by default
    look = dict(look_guidance=args.look_guidance)

    def uncond(name: str, run: Path, num: int | None = None) -> Path:
        num = args.num if num is None else num
        d = out / (f"uncond_{name}" if num == args.num else f"uncond{num}_{name}")
        if not (d / "samples.json").is_file():
            sample(run, num=num, out=d, **common)
        return d

    def gen_eval(d: Path) -> dict:
        f = d / "eval.json"
        if f.is_file():
            return json.loads(f.read_text())
        return eval_generation(d, data, split="test", out=f, device=args.device, progress=False, floor_split=None,
                               efficientnet=False)

    if "uncond" in parts or "copies" in parts or "refine" in parts:
        s_rel = uncond("release", bundle)
    if "uncond" in parts:
        print("[uncond] unconditional samples, Inception FID and path agreement", flush=True)
        def cmd(num: int) -> str:
            return (f"nfldm sample --run BUNDLE --num {num} --sampler dpm --steps 20 --seed 0 --out S; "
                    f"nfldm eval generation --samples S --data {data} --split test --floor-split none")

        e_rel, e_base = gen_eval(uncond("release", bundle, args.fid_num)), gen_eval(uncond("baseline", base,
                                                                                          args.fid_num))
        views = f"{e_rel['num_generated']} views"
        f_rel, f_base = e_rel["inception"]["fid"], e_base["inception"]["fid"]
        T.add(f"unconditional: Inception FID ({args.fid_num} samples, {views})", f_rel, f_base, "<= 0.7 x baseline",
              f_rel <= 0.7 * f_base, cmd(args.fid_num))
        T.add(f"unconditional: Inception KID ({views})", e_rel["inception"]["kid"], e_base["inception"]["kid"],
              command=cmd(args.fid_num))
        pa_rel, pa_base = e_rel["path_agreement"]["mean"], e_base["path_agreement"]["mean"]
        T.add("unconditional: path agreement", pa_rel, pa_base, ">= 0.4", pa_rel >= 0.4, cmd(args.fid_num))
        if args.fid_num != args.num:
            e16_rel, e16_base = gen_eval(s_rel), gen_eval(uncond("baseline", base))
            T.add(f"unconditional (diagnostic): Inception FID / KID at {args.num} samples "
                  f"({e16_rel['num_generated']} views, biased upwards)",
                  f"{e16_rel['inception']['fid']:.1f} / {e16_rel['inception']['kid']:.4f}",
                  f"{e16_base['inception']['fid']:.1f} / {e16_base['inception']['kid']:.4f}", command=cmd(args.num))
    if "copies" in parts:
        print("[copies] nearest train scene of each sample", flush=True)
        f = out / "nearest_train.json"
        cmd = [sys.executable, "experiments/nearest_train.py", "--samples", str(s_rel), "--run", str(ldm),
               "--device", args.device, "--json", str(f)]
        if not f.is_file():
            _run(cmd)
        row = json.loads(f.read_text())["rows"]["samples"]
        T.add("unconditional: samples nearer a train scene than the 5th percentile of other-map distances",
              f"{row['below_threshold']} / {row['count']}", None, "<= 2 of 16",
              row["below_threshold"] <= 2 * row["count"] / 16, " ".join(cmd[1:]))
    if "stage1" in parts:
        print("[stage1] held-out views of stage 1 and the renderer", flush=True)
        for part in ("scene_ae", "renderer"):
            res = {}
            for name, b in (("release", bundle), ("baseline", base)):
                f = out / f"stage1_{part}_{name}.json"
                if not (b / part).is_dir():
                    continue
                if not f.is_file():
                    eval_scene_ae(b / part, data, "test", f, device=args.device, max_scenes=args.stage1_scenes,
                                  progress=False)
                res[name] = json.loads(f.read_text())["model"]
            if len(res) < 2:
                continue
            cmd = f"nfldm eval scene-ae --run BUNDLE/{part} --data {data} --split test --max-scenes {args.stage1_scenes}"
            r, b = res["release"], res["baseline"]
            T.add(f"stage 1 ({part}): held-out PSNR", r["psnr"], b["psnr"], "> baseline", r["psnr"] > b["psnr"], cmd)
            if "lpips" in r and "lpips" in b:
                T.add(f"stage 1 ({part}): held-out LPIPS", r["lpips"], b["lpips"], "< baseline", r["lpips"] < b["lpips"], cmd)
    if "bev" in parts or "edit" in parts:
        conds = spread(conditions_from(data, "test"), args.bev_scenes)
        free = spread(conditions_from(None, "test", scenes=data), args.bev_scenes)
        bev_run = bundle / "bev"
        if not (bev_run / "g").is_dir():
            raise SystemExit(f"error: {bev_run}: the release bundle has no BEV levels")

        def along(name: str, run: Path, cs, score: bool = True, **kw) -> tuple[dict, float]:
            """Sample the conditions ``cs`` along their real paths into OUT/bev_NAME (once); its eval
            (``score``) or only its mean wall IoU with the maps given, and the seconds per scene."""
            d = out / f"bev_{name}"
            t = 0.0
            if not (d / "samples.json").is_file():
                t0 = time.perf_counter()
                sample(run, num=1, out=d, conditions=cs, path_from_scene=True, **common, **look, **kw)
                t = (time.perf_counter() - t0) / len(cs)
                (d / "seconds_per_scene.txt").write_text(f"{t}\n")
            else:
                t = float((d / "seconds_per_scene.txt").read_text()) if (d / "seconds_per_scene.txt").is_file() else 0.0
            if not score:
                ious = [sample_map_agreement(s)["wall_iou"] for s in sorted(d.glob("sample_*"))]
                return {"map_agreement": {"wall_iou": float(np.mean(ious))}, "num_samples": len(ious)}, t
            return gen_eval(d), t

    if "bev" in parts:
        print(f"[bev] {len(conds)} test scenes along their real paths", flush=True)
        cond, _ = along("cond", bev_run, conds)        # nfldm sample's defaults with a map
        free_e, _ = along("uncond", bundle, free)
        # the latents were encoded by the float32 latent-ae of the run the bundle was exported from
        # (the bundle's is its float16 rounding): decode them with that run, render with its
        # fine-tuned renderer (the float32 run of the bundle's)
        rend = rel / "renderer" if (rel / "renderer" / "config.json").is_file() else None
        own, _ = along("own", ldm, conds, own_latents=latents, renderer=rend)
        cmd = (f"nfldm sample --run BUNDLE/bev --bev {data} --split test --path-from-scene --look-guidance "
               f"{args.look_guidance:g} ({len(conds)} "
               f"test scenes spread over the split) --sampler dpm --steps 20 --seed 0; --run BUNDLE "
               f"--path-from-scene {data}; --run {ldm} --own-latents {latents} --renderer {rel / 'renderer'}; "
               "nfldm eval generation")
        iou = {k: e["map_agreement"]["wall_iou"] for k, e in (("cond", cond), ("uncond", free_e), ("own", own))}
        T.add("BEV: wall IoU conditional / unconditional / own latents",
              f"{iou['cond']:.3f} / {iou['uncond']:.3f} / {iou['own']:.3f}", None, ">= 0.8 x own, far above unconditional",
              iou["cond"] >= 0.8 * iou["own"] and iou["cond"] > 1.5 * iou["uncond"], cmd)
        fid = {k: e["inception"]["fid"] for k, e in (("cond", cond), ("uncond", free_e), ("own", own))}
        T.add("BEV: Inception FID conditional / unconditional / own latents",
              f"{fid['cond']:.1f} / {fid['uncond']:.1f} / {fid['own']:.1f}", None, command=cmd)
        g = _gap_closed(fid["uncond"], fid["cond"], fid["own"])
        T.add("BEV: share of the FID gap closed", g, None, ">= 0.5", fid["cond"] <= fid["own"] or g >= 0.5, cmd)
        lp = {k: e["paired_views"]["lpips"] for k, e in (("cond", cond), ("uncond", free_e), ("own", own))}
        T.add("BEV: paired LPIPS conditional / unconditional / own latents",
              f"{lp['cond']:.3f} / {lp['uncond']:.3f} / {lp['own']:.3f}", None, command=cmd)
        g = _gap_closed(lp["uncond"], lp["cond"], lp["own"])
        T.add("BEV: share of the paired-LPIPS gap closed", g, None, ">= 0.5", g >= 0.5, cmd)
        # diagnostic: the map and path plus the scene's own global latent g (psi_c, psi_f sample the
        # rest; the float32 bev run, whose latent-ae encoded the latents): how much of the paired-LPIPS
        # gap to the own latents is what g carries (the look) rather than the layout the map gives
        own_g, _ = along("cond_own_g", rel / "bev_ldm", conds, guidance=1.0, own_g=latents, renderer=rend)
        T.add("BEV (diagnostic): paired LPIPS / wall IoU given the scene's own g",
              f"{own_g['paired_views']['lpips']:.3f} / {own_g['map_agreement']['wall_iou']:.3f}", None,
              command=f"nfldm sample --run {rel / 'bev_ldm'} --bev {data} --split test --path-from-scene "
                      f"--own-g {latents} --renderer {rel / 'renderer'}")
        # time: latent sampling of both in one process, one after the other (the sample folders above
        # are made whenever a part runs, beside whatever else runs then); run this part alone
        tj = out / "bev_time.json"
        if not tj.is_file():
            _run([sys.executable, "benchmarks/bev_sampling.py", "--run", str(bundle), "--bev-run", str(bev_run),
                  "--data", str(data), "--scenes", str(args.bev_scenes), "--guidance", f"{MAP_GUIDANCE:g}",
                  "--guidance-levels", MAP_GUIDANCE_LEVELS, "--repeat", "1",
                  "--look-guidance", str(args.look_guidance),
                  "--device", args.device, "--json", str(tj)])
        tt = json.loads(tj.read_text())
        T.add("BEV: latent sampling seconds per scene, conditional / unconditional (same process)",
              f"{tt['bev'][f'{MAP_GUIDANCE:g}']:.2f} / {tt['unconditional']:.2f}", None, "<= 1.5x",
              tt["bev"][f"{MAP_GUIDANCE:g}"] <= 1.5 * tt["unconditional"],
              f"python benchmarks/bev_sampling.py --run BUNDLE --bev-run BUNDLE/bev --data {data} "
              f"--scenes {args.bev_scenes} --guidance {MAP_GUIDANCE:g} --guidance-levels {MAP_GUIDANCE_LEVELS} "
              f"--repeat 1 --look-guidance {args.look_guidance:g}")
    if "edit" in parts:
        eg = args.edit_guidance
        every = conditions_from(data, "test")
        n_edit = args.edit_scenes if args.edit_scenes > 0 else len(every)
        econds = spread(every, n_edit)
        print(f"[edit] {len(econds)} maps unedited, erased, with a pillar (guidance {eg:g})", flush=True)
        ho = {} if args.edit_hand_over is None else {"hand_over": args.edit_hand_over}
        tag = ("" if args.edit_hand_over is None else f"_h{args.edit_hand_over}") + f"_n{len(econds)}"
        plain, _ = along(f"g{eg:g}{tag}", bev_run, econds, score=False, guidance=eg, **ho)
        iou0 = plain["map_agreement"]["wall_iou"]
        for name, kw in (("erase", {"erase_boxes": [(-3, -3, 3, 3)]}), ("pillar", {"add_wall_boxes": [(-2, -2, 2, 2)]})):
            edited = spread(conditions_from(data, "test", **kw), n_edit)
            e, _ = along(f"g{eg:g}{tag}_{name}", bev_run, edited, score=False, guidance=eg, **ho)
            iou = e["map_agreement"]["wall_iou"]
            flag = "--erase-box -3 -3 3 3" if name == "erase" else "--add-wall-box -2 -2 2 2"
            T.add(f"BEV edit ({name}): wall IoU with the map given, edited vs unedited", f"{iou:.3f} vs {iou0:.3f}",
                  None, "within 10 %", abs(iou - iou0) <= 0.1 * iou0,
                  f"nfldm sample --run BUNDLE/bev --bev {data} --split test --path-from-scene --guidance {eg:g} "
                  f"--look-guidance {args.look_guidance:g} {flag}"
                  + ("" if args.edit_hand_over is None else f" --hand-over {args.edit_hand_over}"))
    if "refine" in parts:
        print("[refine] score distillation of the release's samples", flush=True)
        d = out / "refine"
        cmd = [sys.executable, "benchmarks/refine_quality.py", "--samples", str(s_rel), "--data", str(data),
               "--split", "test", "--out", str(d), "--prior", str(bundle / "image_prior"), "--num", str(args.num),
               "--modes", "auto,none", "--device", args.device]
        if not (d / "refine_quality.json").is_file():
            _run(cmd)
        sets = json.loads((d / "refine_quality.json").read_text())["sets"]
        c = " ".join(cmd[1:])
        T.add("refine: FID change, negative guidance", sets["auto"]["fid_change_rel"], None, "<= -20 %",
              sets["auto"]["fid_change_rel"] <= -0.2, c)
        T.add("refine: FID negative vs plain guidance", f"{sets['auto']['fid']:.1f} vs {sets['none']['fid']:.1f}", None,
              "negative lower", sets["auto"]["fid"] < sets["none"]["fid"], c)
        r = sets["auto"].get("refine", {})
        if r:
            T.add("refine: median relative depth change", r["depth_rel_change"], None, "<= 10 %",
                  r["depth_rel_change"] <= 0.1, c)
    if "speed" in parts:
        print("[speed] nfldm sample --num 4 in a fresh process", flush=True)
        secs = {}
        for name, b in (("release", bundle), ("baseline", base)):
            d = out / f"speed_{name}"
            shutil.rmtree(d, ignore_errors=True)
            secs[name] = _run([sys.executable, "-m", "nfldm.cli", "sample", "--run", str(b), "--num", "4", "--out", str(d),
                               "--quiet", "--device", args.device])
        T.add("nfldm sample --num 4: wall seconds (fresh process)", secs["release"], secs["baseline"], "<= 60",
              secs["release"] <= 60, "time nfldm sample --run BUNDLE --num 4 --out S")
    (out / "targets.json").write_text(json.dumps({"release": str(rel), "baseline": str(base), "args": vars(args),
                                                  "rows": T.rows}, indent=2, default=str))
    (out / "targets.md").write_text(T.markdown())
    if not args.no_card:
        from nfldm.pipeline.bundle import set_card_targets

        set_card_targets(bundle, T.markdown())
        print(f"(the table is in {bundle / 'MODEL_CARD.md'})")
    print("\n" + T.markdown())


if __name__ == "__main__":
    main()
