"""Per-scene safetensors files, as the voxel folder (stage 1), the latent folder (stage 2) and
sample folders use them: ``<root>/<scene>.safetensors`` with string metadata, written
atomically, read with one clear error naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import safe_open

from nfldm.data.format import DataError
from nfldm.utils.io import read_tensors, write_tensors

__all__ = ["scene_file", "write_safetensors", "peek_safetensors", "read_safetensors", "check_finite"]


def scene_file(root: str | os.PathLike, name: str) -> Path:
    """``<root>/<name>.safetensors`` ('/' in a nested scene name becomes '__')."""
    return Path(root) / (name.replace("/", "__") + ".safetensors")


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write tensors atomically (metadata values as strings)."""
    write_tensors(Path(path), tensors, {k: str(v) for k, v in metadata.items()})


def peek_safetensors(path: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """Metadata and tensor shapes of a safetensors file without reading the tensors;
    DataError naming the file if it is missing or unreadable."""
    if not path.is_file():
        raise DataError(f"{path}: file is missing")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise DataError(f"{path}: cannot read the file ({type(e).__name__}: {e}); it is corrupt "
                        "or not a safetensors file") from e
    return meta, shapes


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file; DataError naming the file if bad."""
    return read_tensors(Path(path), DataError)


def check_finite(what: str, **tensors: torch.Tensor) -> None:
    """RuntimeError naming ``what`` and the tensor if any value is NaN or infinite."""
    for k, t in tensors.items():
        if not bool(torch.isfinite(t).all()):
            raise RuntimeError(f"{what}: {k} holds NaN or infinite values")
