"""Check a dataset root or a single scene folder and list every problem.

Uses the same validation functions as the loader (``nfldm.data.format``), collecting their
messages instead of raising, so ``check_path`` reports exactly what the loader would reject.

    python -m nfldm.data.check PATH
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from nfldm.data.format import (
    Report,
    SceneMeta,
    check_cameras_in_bounds,
    parse_dataset,
    parse_transforms,
    read_depth_file,
    read_image_file,
)

__all__ = ["check_path", "check_scene", "check_dataset", "main"]


def check_scene(scene_dir: Path, report: Report) -> SceneMeta | None:
    """Check transforms.json and decode every image and depth file of one scene."""
    meta = parse_transforms(scene_dir, report)
    if meta is None:
        return None
    for frame in meta.frames:
        # Each frame is checked against its own size; different sizes were reported already.
        read_image_file(frame.image_path, frame.w, frame.h, report)
        read_depth_file(frame.depth_path, frame.w, frame.h, report)
    return meta


def check_dataset(root: Path, report: Report) -> None:
    """Check dataset.json, then every listed scene and that its cameras lie in its bounds."""
    index = parse_dataset(root, report)
    if index is None:
        return
    for entry in index.scenes:
        meta = check_scene(entry.path, report)
        if meta is not None and entry.bounds is not None:
            check_cameras_in_bounds(meta, entry.bounds, index.source, report)


def check_path(path: str | os.PathLike) -> list[str]:
    """All problems of a dataset root (with dataset.json) or a single scene folder.

    Returns one line per problem (per file and problem kind), each starting with the
    offending file's path; an empty list means the loader will accept the data.
    """
    path = Path(path)
    problems: list[str] = []
    if not path.exists():
        return [f"{path}: does not exist"]
    if not (path / "dataset.json").is_file() and (path / "transforms.json").is_file():
        check_scene(path, problems.append)
    else:
        check_dataset(path, problems.append)
    return list(dict.fromkeys(problems))  # a file referenced twice is reported once


def main(argv: list[str] | None = None) -> int:
    """Print the problems of each path given; exit status 1 if there are any."""
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m nfldm.data.check PATH [PATH ...]", file=sys.stderr)
        return 2
    problems = [line for p in paths for line in check_path(p)]
    for line in problems:
        print(line)
    print(f"{len(problems)} problem(s)" if problems else "OK", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
