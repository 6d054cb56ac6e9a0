"""The paper's stage-3 ablation: the full hierarchy (g + c + f) against coarse-only (c) and
global-only (g, GAUDI-like), each trained with the same budget and scored the same way
(docs/ldm.md "Ablations").

For each mode: a latent auto-encoder (the quickstart's networks and ``latents=MODE``) trained
for ``lae_minutes`` on a voxel folder and evaluated on the test split, its latents, the mode's
diffusion levels trained for ``ldm_minutes`` in all (shares in :data:`LEVEL_SHARES`), ``num``
samples with DPM-Solver++ 20 steps, and ``nfldm eval generation`` (Inception FID / KID, the floor,
the offline EfficientNet-Lite0 distance) against the test views. Step counts come from the
quickstart's measured speeds so that each learning-rate schedule ends with its minutes;
``fixed_steps`` makes the minutes a loose cap (10x), so the result does not depend on how busy
the machine is. Resumable: a finished part of a mode (recorded in OUT/results.json) is skipped,
and the trainings resume from their checkpoints.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from nfldm.latent_ae.latents import encode_latents
from nfldm.latent_ae.train import eval_latent_ae, train_latent_ae
from nfldm.ldm.evaluate import eval_generation
from nfldm.ldm.train import train_ldm
from nfldm.pipeline.generate import sample
from nfldm.pipeline.quickstart.config import QuickstartConfig
from nfldm.utils.io import atomic_write_json, read_json

__all__ = ["LEVEL_SHARES", "MODE_NAMES", "run_ablation", "ablation_table"]

#: the share of the stage-3 minutes each level of a mode gets
LEVEL_SHARES = {"gcf": {"g": 0.14, "c": 0.36, "f": 0.50}, "c": {"g": 0.14, "c": 0.86}, "g": {"g": 1.0}}
MODE_NAMES = {"gcf": "full g + c + f", "c": "coarse-only c", "g": "global-only g"}
GENERATION_KEYS = ("inception", "efficientnet_lite0", "floor", "num_generated", "num_real", "protocol")


def run_ablation(voxels: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike,
                 lae_minutes: float = 6.0, ldm_minutes: float = 8.0, modes: tuple[str, ...] = ("gcf", "c", "g"),
                 num: int = 16, seed: int = 0, augment: int = 1, fixed_steps: bool = False,
                 train_only: bool = False, device: str = "auto", lae_preset: str = "tiny", ldm_preset: str = "tiny",
                 lae_overrides: dict | None = None, ldm_overrides: dict | None = None, min_steps: int = 1,
                 eval_kwargs: dict | None = None) -> dict:
    """Train, sample and score every mode of ``modes`` (see the module docstring) into ``out``.

    ``lae_overrides`` / ``ldm_overrides`` default to the quickstart's narrower networks;
    ``eval_kwargs`` go to :func:`nfldm.ldm.evaluate.eval_generation`. Returns {mode: record}
    with ``lae_s``, ``lae_eval`` (stage 2's rendered-view metrics on the test split), ``ldm_s``,
    ``sample_s_per_scene`` and ``generation`` (the scores); also written to OUT/results.json
    after every part."""
    unknown = [m for m in modes if m not in LEVEL_SHARES]
    if unknown:
        raise ValueError(f"ablation modes must be among {sorted(LEVEL_SHARES)}, got {unknown}")
    qs = QuickstartConfig()
    spm = dict(zip(("lae", "g", "c", "f"), qs.steps_per_minute[1:]))
    cap = 10.0 if fixed_steps else 1.0
    lae_sets = dict(qs.latent_ae_set if lae_overrides is None else lae_overrides)
    ldm_sets = dict(qs.ldm_set if ldm_overrides is None else ldm_overrides)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = read_json(results_path) if results_path.exists() else {}

    def save(mode: str, r: dict) -> None:
        results[mode] = r
        atomic_write_json(results_path, results)

    for mode in modes:
        d = out / mode
        r = results.get(mode, {})
        if "lae_s" not in r:
            t0 = time.perf_counter()
            train_latent_ae(voxels, d / "lae", lae_preset, steps=max(min_steps, round(spm["lae"] * lae_minutes)),
                            resume=True, device=device, progress=False,
                            overrides={**lae_sets, "latents": mode, "max_minutes": lae_minutes * cap})
            r["lae_s"] = time.perf_counter() - t0
            save(mode, r)
        if "lae_eval" not in r:
            m = eval_latent_ae(d / "lae", voxels, split="test", out=d / "lae" / "metrics_test.json", device=device,
                               progress=False)
            r["lae_eval"] = m["render"]
            save(mode, r)
        if "ldm_s" not in r:
            encode_latents(d / "lae", voxels, d / "lat", device=device, progress=False, augment=augment)
            sets = {k: v for k, v in ldm_sets.items() if k.split(".")[0] in LEVEL_SHARES[mode]}
            for lv, share in LEVEL_SHARES[mode].items():
                sets[f"{lv}.max_minutes"] = ldm_minutes * share * cap
                sets[f"{lv}.steps"] = max(min_steps, round(spm[lv] * ldm_minutes * share))
            t1 = time.perf_counter()
            train_ldm(d / "lat", d / "ldm", "all", ldm_preset, resume=True, device=device, progress=False,
                      overrides=sets)
            r["ldm_s"] = time.perf_counter() - t1
            save(mode, r)
        if train_only:
            continue
        if "sample_s_per_scene" not in r:
            t1 = time.perf_counter()
            sample(d / "ldm", num=num, sampler="dpm", steps=20, seed=seed, out=d / "samples", device=device,
                   progress=False)
            r["sample_s_per_scene"] = (time.perf_counter() - t1) / num
            save(mode, r)
        if "inception" not in r.get("generation", {}):
            g = eval_generation(d / "samples", data, "test", d / "samples" / "metrics.json", device=device,
                                progress=False, **(eval_kwargs or {}))
            r["generation"] = {k: g[k] for k in GENERATION_KEYS if k in g}
            save(mode, r)
    return results


def ablation_table(results: dict) -> str:
    """One row per mode: minutes, stage 2's rendered PSNR cost and LPIPS of decoded V, Inception
    FID / KID, the offline EfficientNet-Lite0 distance; then the floor."""
    nan = float("nan")
    lines = [f"{'mode':16s} {'LAE min':>7s} {'LDM min':>7s} {'LAE cost dB':>11s} {'LAE LPIPS':>9s} "
             f"{'FID':>7s} {'KID':>7s} {'FD (EffNet)':>11s}"]
    floor = None
    for mode, r in results.items():
        g, lae = r.get("generation", {}), r.get("lae_eval", {})
        inc, eff = g.get("inception", {}), g.get("efficientnet_lite0", {})
        floor = floor or g.get("floor")
        lines.append(f"{MODE_NAMES.get(mode, mode):16s} {r.get('lae_s', 0) / 60:7.1f} {r.get('ldm_s', 0) / 60:7.1f} "
                     f"{lae.get('psnr_cost_db', nan):11.2f} {lae.get('lpips_decoded_V', nan):9.3f} "
                     f"{inc.get('fid', nan):7.1f} {inc.get('kid', nan):7.3f} {eff.get('frechet_distance', nan):11.1f}")
    if floor and "inception" in floor:
        lines.append(f"floor: real {floor['split']} views vs the test views: FID {floor['inception']['fid']:.1f}, "
                     f"KID {floor['inception']['kid']:.3f}")
    return "\n".join(lines)
