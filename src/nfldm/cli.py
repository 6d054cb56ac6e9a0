"""The ``nfldm`` command line. It only parses arguments and calls library functions."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields, replace


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


def _config_from_args(args, cls, preset):
    overrides = {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
    return replace(preset, **overrides)


def cmd_data_vizdoom(args) -> int:
    from nfldm.data.vizdoom import PRESETS, VizdoomConfig, collect_dataset

    cfg = _config_from_args(args, VizdoomConfig, PRESETS[args.preset])
    summary = collect_dataset(cfg, args.out, progress=not args.quiet)
    print(f"wrote {summary['scenes']} scenes to {summary['out']}")
    return 0


def cmd_data_check(args) -> int:
    from nfldm.data.check import check_path

    problems = check_path(args.path)
    for line in problems:
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
    from nfldm.scene_ae.train import train_scene_ae

    res = train_scene_ae(args.data, args.out, args.preset, steps=args.steps, resume=args.resume,
                         device=args.device, progress=not args.quiet, overrides=_parse_sets(args.set))
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


SCENE_AE_PRESETS = ("smoke", "tiny", "small", "paper")


def build_parser() -> argparse.ArgumentParser:
    from nfldm.data.vizdoom import PRESETS, VizdoomConfig

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
    _add_config_args(p, VizdoomConfig)
    p.set_defaults(func=cmd_data_vizdoom)

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
    p.add_argument("--out", required=True, help="run directory (checkpoints, logs, previews)")
    p.add_argument("--preset", default="tiny", choices=SCENE_AE_PRESETS, help="default: tiny")
    p.add_argument("--steps", type=int, default=None, help="training steps (preset value if omitted)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a model or training option, e.g. --set num_samples=48 --set lr=5e-4")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train_scene_ae)

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
    return parser


def main(argv: list[str] | None = None) -> int:
    from nfldm.data.format import DataError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
