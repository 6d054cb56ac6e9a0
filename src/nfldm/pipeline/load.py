"""Loading the stages behind an ldm run (or a bundle): its diffusion levels, and the latent-ae and
scene-ae its config records, each checked against the weights hash recorded when the latents
were made. Used by :func:`nfldm.pipeline.generate.load_pipeline` and by the bundle export.
"""

from __future__ import annotations

import os
from pathlib import Path

from nfldm.data.format import DataError
from nfldm.latent_ae.load import load_latent_ae
from nfldm.ldm.load import load_ldm
from nfldm.runs import weights_hash
from nfldm.scene_ae.load import load_scene_ae

__all__ = ["load_stages", "recorded_run"]


def recorded_run(run: str | os.PathLike, record: dict) -> Path:
    """The run a level's config records (``record["run"]``); a bundle names it relative to itself."""
    p = Path(record["run"])
    return p if p.is_absolute() else Path(run) / p


def load_stages(run: str | os.PathLike, device: str = "auto") -> dict:
    """:func:`nfldm.ldm.load.load_ldm` of ``run`` plus ``lae`` (its latent-ae) and ``scene_ae`` (its
    scene-ae); DataError naming the run whose weights differ from the recorded hash."""
    ldm = load_ldm(run, device)
    rc, dev = ldm["config"], str(ldm["device"])
    lae_run, sae_run = recorded_run(run, rc["latent_ae"]), recorded_run(run, rc["scene_ae"])
    lae = load_latent_ae(lae_run, dev)
    if weights_hash(lae) != rc["latent_ae"]["weights_hash"]:
        raise DataError(f"{lae_run}: the latent-ae run has changed since the latents of {run} were encoded "
                        "(its weights differ); re-encode the latents and retrain")
    sae = load_scene_ae(sae_run, dev)
    if weights_hash(sae) != rc["scene_ae"]["weights_hash"]:
        raise DataError(f"{sae_run}: the scene-ae run has changed since the voxels behind {run} were "
                        "encoded (its weights differ)")
    return {**ldm, "lae": lae, "scene_ae": sae}
