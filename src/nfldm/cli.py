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
