"""Check a dataset root or a single scene folder and list every problem.

Uses the same validation functions as the loader (``nfldm.data.format``), collecting their
messages instead of raising, so ``check_path`` reports exactly what the loader would reject.

    python -m nfldm.data.check PATH
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np

from nfldm.data.format import (
    Report,
    SceneMeta,
    check_cameras_in_bounds,
    parse_dataset,
    parse_transforms,
    read_depth_file,
    read_image_file,
)

__all__ = ["check_path", "check_scene", "check_dataset", "up_warning", "main", "MAX_UP_ANGLE"]

MAX_UP_ANGLE = 45.0  # degrees between the cameras' mean up vector and +z before data check warns


def up_warning(meta: SceneMeta) -> str | None:
    """A warning line when the scene's cameras' mean up vector is more than
    :data:`MAX_UP_ANGLE` degrees from +z (the world is probably not z up), else None."""
    ups = meta.c2w[:, :3, 1]
    ups = ups[np.isfinite(ups).all(1)]
    if not len(ups):
        return None
    mean = ups.mean(0)
    norm = float(np.linalg.norm(mean))
    if norm < 1e-6:
        return None
    angle = math.degrees(math.acos(float(np.clip(mean[2] / norm, -1, 1))))
    if angle <= MAX_UP_ANGLE:
        return None
    vec = ", ".join(f"{x:+.2f}" for x in mean / norm)
    return (f"{meta.transforms_path}: warning: the cameras' mean up vector ({vec}) is {angle:.0f} degrees from +z, "
            f"but nfldm's world is z up; import the scene with `nfldm data import {meta.path} --out DIR` "
            "(it finds the up axis, or give it with --up)")


def check_scene(scene_dir: Path, report: Report, warn: Report | None = None) -> SceneMeta | None:
    """Check transforms.json and decode every image and depth file of one scene; ``warn``
    receives warnings (a world that does not look z up), which are no problems."""
    meta = parse_transforms(scene_dir, report)
    if meta is None:
        return None
    if warn is not None and (line := up_warning(meta)):
        warn(line)
    for frame in meta.frames:
        # Each frame is checked against its own size; different sizes were reported already.
        read_image_file(frame.image_path, frame.w, frame.h, report)
        read_depth_file(frame.depth_path, frame.w, frame.h, report)
    return meta


def check_dataset(root: Path, report: Report, warn: Report | None = None) -> None:
    """Check dataset.json, then every listed scene and that its cameras lie in its bounds."""
    index = parse_dataset(root, report)
    if index is None:
        return
    for entry in index.scenes:
        meta = check_scene(entry.path, report, warn)
        if meta is not None and entry.bounds is not None:
            check_cameras_in_bounds(meta, entry.bounds, index.source, report)


def check_path(path: str | os.PathLike, warnings: list[str] | None = None) -> list[str]:
    """All problems of a dataset root (with dataset.json) or a single scene folder.

    Returns one line per problem (per file and problem kind), each starting with the
    offending file's path; an empty list means the loader will accept the data. Warnings (a
    scene whose world does not look z up) are appended to ``warnings`` when given.
    """
    path = Path(path)
    problems: list[str] = []
    if not path.exists():
        return [f"{path}: does not exist"]
    if not (path / "dataset.json").is_file() and (path / "transforms.json").is_file():
        check_scene(path, problems.append, None if warnings is None else warnings.append)
    else:
        check_dataset(path, problems.append, None if warnings is None else warnings.append)
    return list(dict.fromkeys(problems))  # a file referenced twice is reported once


def main(argv: list[str] | None = None) -> int:
    """Print the problems of each path given; exit status 1 if there are any."""
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m nfldm.data.check PATH [PATH ...]", file=sys.stderr)
        return 2
    warnings: list[str] = []
    problems = [line for p in paths for line in check_path(p, warnings)]
    for line in warnings + problems:
        print(line)
    print(f"{len(problems)} problem(s)" if problems else "OK", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
