"""Provenance of runs and the folders they write: short content hashes of configs and weights.

Every stage records, in what it writes, the hashes of the runs it was made from (a voxel folder
names its scene-ae, a latent folder its latent-ae, an ldm run both), so that a later stage can
refuse a run that has changed since. Core layer: imports nothing of nfldm.
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

__all__ = ["config_hash", "weights_hash", "state_hash"]


def config_hash(d) -> str:
    """16 hex digits of sha256 over the canonical JSON of ``d``."""
    text = json.dumps(d, sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_hash(module: nn.Module) -> str:
    """16 hex digits of sha256 over the module's state dict (names, shapes, bytes)."""
    return state_hash(module.state_dict())


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """16 hex digits of sha256 over a state dict (names, shapes, bytes)."""
    h = hashlib.sha256()
    for k, v in sorted(state.items()):
        t = v.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{k}:{tuple(v.shape)}:{t.dtype}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
