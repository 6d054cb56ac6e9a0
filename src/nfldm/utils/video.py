"""Write frame sequences as MP4 (imageio-ffmpeg, whose wheel bundles ffmpeg) or GIF (Pillow).

Both are written to a temporary file in the destination folder and renamed into place.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image


def _gif(frames: list[np.ndarray], path: Path, fps: int) -> None:
    imgs = [Image.fromarray(f) for f in frames]
    imgs[0].save(path, format="GIF", save_all=True, append_images=imgs[1:],
                 duration=max(1, round(1000 / fps)), loop=0)


def _mp4(frames: list[np.ndarray], path: Path, fps: int) -> None:
    import imageio.v2 as imageio

    with imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                            quality=8, macro_block_size=1, pixelformat="yuv420p") as w:
        for f in frames:
            w.append_data(f)


def write_video(path: str | os.PathLike, frames: list[np.ndarray], fps: int = 24) -> Path:
    """Write uint8 H x W x 3 frames to ``path`` (.mp4 or .gif).

    For .mp4, if ffmpeg is unavailable or fails, a GIF is written next to it instead (same
    name, .gif) with a warning. Returns the path written.
    """
    path = Path(path)
    if not frames:
        raise ValueError(f"{path}: no frames to write")
    frames = [np.ascontiguousarray(f, dtype=np.uint8) for f in frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix not in (".mp4", ".gif"):
        raise ValueError(f"{path}: video must end in .mp4 or .gif")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=suffix)
    os.close(fd)
    try:
        if suffix == ".mp4":
            try:
                _mp4(frames, Path(tmp), fps)
            except Exception as e:  # no ffmpeg binary, codec problem, ...
                warnings.warn(f"{path}: MP4 writing failed ({e}); writing a GIF instead")
                Path(tmp).unlink(missing_ok=True)
                return write_video(path.with_suffix(".gif"), frames, fps)
        else:
            _gif(frames, Path(tmp), fps)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
