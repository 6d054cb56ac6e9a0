"""Stage 1's renderer trained on V decoded by stage 2 (``render_from=latents``): what generated
scenes look like to the renderer (docs/scene-ae.md "Sharper views").

Stage 1 knows nothing of latents: :func:`train_scene_ae` hands its trainer a source of V
(:class:`LatentSource`) built from a latent folder and the latent-ae that made it.
"""

from __future__ import annotations

import os

import torch

from nfldm.data.format import DataError
from nfldm.latent_ae.latents import read_latent_index
from nfldm.latent_ae.load import load_latent_ae
from nfldm.ldm.data import LatentDataset, decode_items
from nfldm.runs import weights_hash
from nfldm.scene_ae import train as stage1
from nfldm.scene_ae.load import makes_voxels_of

__all__ = ["LatentSource", "latent_v_source", "train_scene_ae"]


class LatentSource:
    """V of training scenes decoded from their latents by the latent-ae that made them.

    Holds the scenes of a latent folder (``nfldm encode-latents``) and its latent-ae, frozen.
    ``decode(names, device)``: B scene names -> V B x K x X x Y x Z (no gradient).
    """

    def __init__(self, latdir: str | os.PathLike, names: list[str], device: torch.device | str):
        index = read_latent_index(latdir)
        if index.get("latents") != "gcf":
            raise DataError(f"{latdir}: render_from=latents needs a latent folder with g, c and f "
                            f"(this one holds {index.get('latents')!r})")
        self.ds = LatentDataset(latdir, "train", index=index)
        missing = sorted(set(names) - set(self.ds.names))
        if missing:
            raise DataError(f"{latdir}: no train latents for {len(missing)} train scenes of the data "
                            f"(e.g. {missing[0]!r}); encode the latents of this dataset")
        self.lae = load_latent_ae(index["latent_ae"]["run"], str(device)).requires_grad_(False)
        if weights_hash(self.lae) != index["latent_ae"]["weights_hash"]:
            raise DataError(f"{latdir}: the latent-ae run {index['latent_ae']['run']} has changed since "
                            "these latents were encoded")
        self.scene_ae = index["scene_ae"]
        self.c_ch = int(index["shapes"]["c"][0])
        self.row = {n: i for i, n in enumerate(self.ds.names)}

    def decode(self, names: list[str], device: torch.device | str) -> torch.Tensor:
        self.lae.to(device)
        return decode_items(self.lae, self.ds.stats, [self.ds.items[self.row[n]] for n in names], self.c_ch, device)


def latent_v_source(cfg, names: list[str], base, init_from) -> LatentSource:
    """The ``v_source`` of :func:`nfldm.scene_ae.train.train_scene_ae` for ``render_from=latents``:
    the latents of ``cfg.latents``, which must have been made from the voxels of ``init_from``."""
    if not cfg.latents:
        raise ValueError("render_from=latents needs --set latents=LATDIR (nfldm encode-latents output)")
    source = LatentSource(cfg.latents, names, "cpu")
    if init_from is None or not makes_voxels_of(init_from, base, source.scene_ae):
        raise DataError(f"{cfg.latents}: its latents were made from the voxels of scene-ae "
                        f"{source.scene_ae['run']}; --init-from that run")
    return source


def train_scene_ae(*args, **kwargs) -> dict:
    """:func:`nfldm.scene_ae.train.train_scene_ae` with the latents' source of V, so that
    ``--set render_from=latents --set latents=LATDIR`` works (same arguments)."""
    return stage1.train_scene_ae(*args, v_source=latent_v_source, **kwargs)
