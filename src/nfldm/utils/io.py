"""Atomic file writes.

Every writer here writes to a temporary file in the destination's folder and then moves it
into place with ``os.replace``, so a reader sees either the old file or the complete new one,
never a partial file (also when the writer is killed half-way).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + ``os.replace``).

    The parent folder is created if needed. ``fsync=True`` also flushes the data to disk
    before the rename (use it for small "commit marker" files such as ``transforms.json``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(obj: Any) -> Any:
    """Make numpy / torch scalars and arrays JSON serialisable."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "tolist"):  # torch.Tensor without importing torch
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def atomic_write_json(path: str | os.PathLike, obj: Any, fsync: bool = True) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (numpy values are converted)."""
    text = json.dumps(obj, indent=2, default=_json_default, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_save_png(path: str | os.PathLike, array: np.ndarray, fsync: bool = False,
                    compress_level: int = 6) -> None:
    """Save an image array as PNG atomically (``compress_level`` 0-9: zlib effort; 1 is about
    twice as fast as the default 6 for a few per cent larger files).

    ``array``: uint8 H x W (grey), H x W x 3 (RGB) or H x W x 4 (RGBA), or uint16 H x W
    (16-bit grey, e.g. depth).
    """
    array = np.ascontiguousarray(array)
    if array.dtype == np.uint16:
        if array.ndim != 2:
            raise ValueError(f"{path}: uint16 PNG must be H x W, got shape {array.shape}")
    elif array.dtype == np.uint8:
        if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
            raise ValueError(f"{path}: uint8 PNG must be H x W [x 3|4], got shape {array.shape}")
    else:
        raise ValueError(f"{path}: PNG array must be uint8 or uint16, got {array.dtype}")
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=compress_level)
    atomic_write_bytes(path, buf.getvalue(), fsync=fsync)
