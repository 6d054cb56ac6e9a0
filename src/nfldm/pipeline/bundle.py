"""Pretrained bundles: a whole trained pipeline (scene-ae, latent-ae, ldm g / c / f) in one
small folder, with its parameters stored as float16.

Layout (the folder is itself an ldm run directory, so ``nfldm sample --run BUNDLE`` works)::

    BUNDLE/bundle.json               format, sizes, the model card data
    BUNDLE/MODEL_CARD.md             how it was made, on what, with which metrics
    BUNDLE/scene_ae/{config.json, model.safetensors, model.json}
    BUNDLE/latent_ae/{config.json, model.safetensors, model.json}
    BUNDLE/{g,c,f}/{config.json, model.safetensors, model.json}
    BUNDLE/renderer/{config.json, model.safetensors, model.json}    optional (add_renderer)

A level may be stored in 8 bits instead (:func:`replace_levels` ``int8``: its weight matrices and
kernels as int8 with one float32 scale per output channel, metadata dtype "int8"), which
:func:`nfldm.trainer.load_model_weights` reads back in float32: half the bytes of float16, for a
wider level within the bundle's size (measured on the 96 / 192 BEV psi_c: the same samples'
FID / LPIPS within 0.15 / 0.001 of float16's, docs/notes/2026-12-06-wide-psi-c-in-8-bits.md),
or in 4 bits (``int4``: the U-Net's blocks as 4-bit codes with a float16 scale per 32 weights of
an output channel, :func:`nfldm.trainer.int4_weights`, its stem, head, embeddings and map encoder
in 8 bits; metadata dtype "int4"; 0.29 of float16's bytes). On the 96 / 192 BEV psi_c every
weight in 4 bits raised the held-out loss by 9 %, the blocks alone by 2 %, and the blocks alone
gave the 8-bit level's views within the noise (34 test scenes: FID 150.2 vs 151.4, paired LPIPS
0.383 vs 0.382; docs/notes/2026-12-07-psi-c-in-4-bits-and-a-wheel-without-its-maps.md).

The levels' configs name the latent-ae and the scene-ae by paths relative to BUNDLE and carry
the weights hashes of the float16-rounded weights, so :func:`nfldm.pipeline.generate.load_pipeline`
checks them as for any run. The package ships one bundle (``nfldm/weights/tiny``), made by
``nfldm quickstart``; :func:`bundled_model` finds it.

The optional ``bev/`` holds BEV-map-conditioned levels ``bev/{g,c,f}`` trained on the same
latent-ae's latents (:func:`add_levels`; ``nfldm sample --bev SRC`` uses them): an ldm run of
its own whose levels name ``../latent_ae`` and ``../scene_ae``, and whose bundle.json names
``../renderer``.

The optional ``renderer`` is a scene-ae whose renderer was fine-tuned from ``scene_ae`` with
its lift frozen (``nfldm train scene-ae --init-from BUNDLE/scene_ae --set train_parts=render``,
docs/scene-ae.md "Sharper views"): ``nfldm sample`` renders a bundle's scenes with it when
present (``--renderer BUNDLE/scene_ae`` for the original).

:func:`add_renderer` and :func:`add_levels` also take a renderer or levels trained on the runs
the bundle was exported FROM (float32: ``nfldm quickstart`` trains its optional stages before it
exports): rounded to float16 as the bundle stores them, those runs are the bundle's stages.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from pathlib import Path

import torch

from nfldm.latent_ae.load import load_latent_ae
from nfldm.ldm.config import config_from_dict
from nfldm.ldm.load import load_ldm
from nfldm.ldm.model import LevelDiffusion
from nfldm.pipeline.load import load_stages, recorded_run
from nfldm.runs import weights_hash
from nfldm.scene_ae.load import encoder_hash, load_scene_ae, makes_voxels_of
from nfldm.trainer import (CONFIG_FILE, MODEL_INFO, MODEL_WEIGHTS, half_weights, int4_weights, int8_weights,
                           load_model_weights, read_run_config)
from nfldm.utils.io import atomic_write_bytes, atomic_write_json, write_tensors

BUNDLE_FILE = "bundle.json"
BUNDLE_FORMAT = "nfldm-bundle"
PACKAGED = Path(__file__).resolve().parents[1] / "weights" / "tiny"
RENDERER = "renderer"
BEV_LEVELS = "bev"
IMAGE_PRIOR = "image_prior"


def bundle_renderer(run: str | os.PathLike) -> Path | None:
    """The renderer a bundle names in its bundle.json (None for a plain run or a bundle without one)."""
    f = Path(run) / BUNDLE_FILE
    if not f.is_file():
        return None
    name = json.loads(f.read_text()).get("renderer")
    return Path(run) / name if name else None


def bundled_model() -> Path:
    """The bundle shipped with the package; ValueError if this install has none."""
    if not (PACKAGED / BUNDLE_FILE).is_file():
        raise ValueError(f"this nfldm install ships no pretrained model ({PACKAGED / BUNDLE_FILE} is missing); "
                         "pass --run with an ldm run directory or a bundle")
    return PACKAGED


def bundled_bev_model() -> Path:
    """The BEV-conditioned levels of the shipped bundle; ValueError if this install has none."""
    run = bundled_model() / BEV_LEVELS
    if not (run / "g" / CONFIG_FILE).is_file():
        raise ValueError(f"the shipped model has no BEV-conditioned levels ({run} is missing); pass --run with an "
                         "ldm run trained with --set bev=true")
    return run


def bundle_unconditional_c(run: str | os.PathLike) -> Path | None:
    """The unconditional c level of the bundle whose BEV-conditioned levels ``run`` is (BUNDLE/bev ->
    BUNDLE/c); None for any other run."""
    run = Path(run)
    home = run.parent
    if run.name != BEV_LEVELS or not (home / BUNDLE_FILE).is_file() or not (home / "c" / CONFIG_FILE).is_file():
        return None
    return home / "c"


def bundled_image_prior() -> Path:
    """The image prior of the shipped bundle (``nfldm refine`` without --prior); ValueError if none."""
    run = bundled_model() / IMAGE_PRIOR
    if not (run / CONFIG_FILE).is_file():
        raise ValueError(f"the shipped model has no image prior ({run} is missing); pass --prior with an "
                         "image-prior run (nfldm train image-prior)")
    return run


def add_image_prior(bundle: str | os.PathLike, prior_run: str | os.PathLike, metrics: dict | None = None) -> dict:
    """Add (or replace) a bundle's image prior: the EMA weights of ``prior_run`` (an ``nfldm train
    image-prior`` run) as float16 in BUNDLE/image_prior with the real frames' mean embedding only
    (not every frame's), named in bundle.json and its model card. Returns bundle.json."""
    from nfldm.data.tensors import write_safetensors
    from nfldm.refine.train import EMBEDDINGS_FILE, load_image_prior

    bundle, prior_run = Path(bundle), Path(prior_run)
    info = json.loads((bundle / BUNDLE_FILE).read_text())
    loaded = load_image_prior(prior_run, "cpu")
    tmp = bundle / (IMAGE_PRIOR + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    atomic_write_json(tmp / CONFIG_FILE, read_run_config(prior_run))
    size = _save_half(loaded["prior"], tmp, loaded["step"])
    write_safetensors(tmp / EMBEDDINGS_FILE, {"mean": loaded["mean_embedding"].float()},
                      {"format": "nfldm-image-embeddings", "from": str(prior_run.resolve())})
    load_image_prior(tmp, "cpu")            # loads as a run
    if (bundle / IMAGE_PRIOR).exists():
        shutil.rmtree(bundle / IMAGE_PRIOR)
    os.replace(tmp, bundle / IMAGE_PRIOR)
    info["image_prior"] = IMAGE_PRIOR
    info.setdefault("steps", {})["image_prior"] = loaded["step"]
    info["card"] = {**info.get("card", {}), "image_prior": {"trained_run": str(prior_run.resolve()),
                                                             "bytes": size, "metrics": metrics or {}}}
    _write_info(bundle, info)
    return info


#: the weights a level stores in 4 bits: its U-Net's down, mid and up blocks (the rest in 8 bits)
INT4_BLOCKS = re.compile(r"net\.unet\.(down_blocks|up_blocks|mid_block)\.")
_STORE = {16: ("float16", half_weights), 8: ("int8", int8_weights),
          4: ("int4", lambda sd, params: int4_weights(sd, params, only=lambda k: bool(INT4_BLOCKS.match(k))))}


def _save_half(model: torch.nn.Module, run_dir: Path, step, bits: int = 16) -> int:
    """Parameters as float16, buffers (statistics, codebooks' counters) as they are; returns
    the size of the weights file in bytes. ``bits`` 8: the weight matrices and kernels as int8
    with per-output-channel scales (:func:`nfldm.trainer.int8_weights`; half the bytes); ``bits``
    4: the U-Net's blocks (INT4_BLOCKS) as 4-bit codes with per-group scales, the other weight
    matrices in 8 bits (:func:`nfldm.trainer.int4_weights`; about 0.3 of the bytes). Fewer than
    16 bits for the diffusion levels only (the auto-encoders' weights hashes name their float16
    values)."""
    if bits not in _STORE:
        raise ValueError(f"bits {bits}: a level is stored in 16, 8 or 4 bits")
    dtype, store = _STORE[bits]
    params = {n for n, _ in model.named_parameters()}
    tensors = store(model.state_dict(), params)
    write_tensors(run_dir / MODEL_WEIGHTS, tensors, {"format": "nfldm-model", "step": str(step), "ema": "true",
                                                     "dtype": dtype})
    atomic_write_json(run_dir / MODEL_INFO, {"step": step, "ema": True})
    return (run_dir / MODEL_WEIGHTS).stat().st_size


def _rounded(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose parameters hold what :func:`_save_half` stores (float16 values,
    same dtype), so its hashes are those of the model loaded back from a bundle."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.copy_(p.half().to(p.dtype))
    return model


def _source_lae_matches(bundle: Path, trained_hash: str, bundle_hash: str) -> bool:
    """Whether ``trained_hash`` is the latent-ae run the bundle's latent-ae was exported from
    (its levels' configs name it as ``trained_run``), unchanged since: the run's weights hash
    is ``trained_hash`` and, rounded to float16, ``bundle_hash``."""
    src = read_run_config(bundle / "g")["latent_ae"].get("trained_run")
    if not src or not Path(src).is_dir():
        return False
    try:
        lae = load_latent_ae(src, "cpu")
    except (OSError, ValueError):
        return False
    return weights_hash(lae) == trained_hash and weights_hash(_rounded(lae)) == bundle_hash


def _write_info(bundle: Path, info: dict) -> None:
    """BUNDLE/bundle.json and the MODEL_CARD.md made from it."""
    atomic_write_json(bundle / BUNDLE_FILE, info)
    atomic_write_bytes(bundle / "MODEL_CARD.md", _card(info).encode())


def _card(info: dict) -> str:
    card = info.get("card", {})
    qc = card.get("quickstart_config") or {}
    budget = qc.get("budget_minutes")
    lines = ["# nfldm pretrained pipeline", "",
             "A complete NeuralField-LDM pipeline at the tiny presets' sizes: scene auto-encoder "
             "(stage 1), latent auto-encoder (stage 2) and the three latent diffusion levels psi_g, "
             "psi_c, psi_f (stage 3), trained on ViZDoom scenes of the Freedoom maps that the vizdoom "
             "package ships. Parameters are stored as float16 (buffers as trained), those of levels "
             "\"in 8 bits\" (below) as int8 with a scale per output channel; levels \"in 4 bits\" have "
             "their U-Net's blocks as 4-bit codes with a float16 scale per 32 weights of an output "
             "channel and their other weight matrices in 8 bits.", "",
             f"- Parameters: {info['params']:,} ({info['bytes'] / 2**20:.1f} MiB on disk)",
             "- Training steps: " + ", ".join(f"{k} {v}" for k, v in info["steps"].items())]
    if info.get("int8"):
        lines += ["- In 8 bits: " + ", ".join(info["int8"])]
    if info.get("int4"):
        lines += ["- In 4 bits: " + ", ".join(info["int4"])]
    for name, part in info.get("levels", {}).items():
        if part.get("int8"):
            lines += [f"- In 8 bits: {', '.join(f'{name}/{lv}' for lv in part['int8'])}"]
        if part.get("int4"):
            lines += [f"- In 4 bits: {', '.join(f'{name}/{lv}' for lv in part['int4'])}"]
    if card.get("command"):
        lines += [f"- Made with: `{card['command']}`"]
    other = [c for c in card.get("commands", []) if c != card.get("command")]
    if other:          # a run continued with other commands (another device, collection processes)
        lines += ["- Earlier sessions of the same run: " + "; ".join(f"`{c}`" for c in other)]
    if card.get("data"):
        lines += [f"- Data: {card['data']}"]
    if card.get("time"):
        lines += [f"- Time: {card['time']}"]
    for r in card.get("retrained", []):     # levels replaced after the bundle was made (replace_levels)
        bits = ", weights in 8 bits" if r.get("int8") else ", weights in 4 bits" if r.get("int4") else ""
        lines += [f"- Retrained after: {', '.join(r['levels'])} from `{r['run']}` (steps "
                  + ", ".join(f"{k} {v}" for k, v in r["steps"].items()) + ")" + bits
                  + (f": {r['note']}" if r.get("note") else "")]
    if card.get("metrics"):
        lines += ["", "## Metrics (test split: maps not seen in training)", ""]
        lines += [f"- {k}: {v}" for k, v in card["metrics"].items()]
    if card.get("targets"):     # benchmarks/release_targets.py: every target, next to the bundle it replaced
        lines += ["", "## Targets (benchmarks/release_targets.py, against the bundle this one replaced)", "",
                  card["targets"].strip()]
    if budget is not None and budget > 120:
        limits = (f"Trained with a budget of {budget / 60:g} h (the time above says where it ran): views are "
                  "64 x 64 and still softer than real ViZDoom views; the targets above say which of the "
                  "project's quality targets this model meets.")
    else:
        limits = ("Trained for minutes on a 2-core CPU: generated scenes are blurry and dark next to real "
                  "ViZDoom views; see the metrics above and docs/quickstart.md.")
    lines += ["", "## Use", "", "    nfldm sample --num 4 --sampler dpm --steps 20 --out samples",
              "", "## Limits", "", limits, ""]
    parts = {"renderer": ("Renderer", "`renderer/` is the scene auto-encoder with its renderer (decoder) fine-tuned "
                          "with adversarial and perceptual losses, its lift frozen (docs/scene-ae.md \"Sharper "
                          "views\"); `nfldm sample` renders with it (`--renderer BUNDLE/scene_ae` for the original)."),
             "image_prior": ("Image prior", "`image_prior/` is the 2D diffusion prior of post-optimisation "
                             "(`nfldm refine`, docs/refine.md): a diffusers UNet of the real train frames conditioned "
                             "on their EfficientNet-Lite0 embedding, with the frames' mean embedding.")}
    for key, (title, text) in parts.items():
        if card.get(key):
            r = card[key]
            lines += [f"## {title}", "", text, "", f"- Trained from: `{r.get('trained_run')}`"]
            lines += [f"- {k}: {v}" for k, v in r.get("metrics", {}).items()]
            lines += [""]
    for name, lv in info.get("levels", {}).items():
        lines += [f"## `{name}/`: BEV-map-conditioned levels", "",
                  "psi_g, psi_c, psi_f conditioned on a bird's-eye-view map (docs/ldm.md \"Conditioning on a "
                  "BEV map\"), trained on the latents of this bundle's latent-ae; "
                  "`nfldm sample --bev SCENE_OR_MAP --out S` samples them.", "",
                  "- Training steps: " + ", ".join(f"{k} {v}" for k, v in lv["steps"].items())]
        lines += [f"- {k}: {v}" for k, v in lv.get("card", {}).items()]
        lines += [""]
    if card.get("quickstart_config"):
        lines += ["## Quickstart config", "", "```json", json.dumps(card["quickstart_config"], indent=2), "```", ""]
    return "\n".join(lines)


def set_card_targets(bundle: str | os.PathLike, markdown: str) -> dict:
    """Put a table of measured targets (benchmarks/release_targets.py's targets.md) in a bundle's
    model card (bundle.json's ``card.targets``; MODEL_CARD.md rewritten). Returns bundle.json."""
    bundle = Path(bundle)
    info = json.loads((bundle / BUNDLE_FILE).read_text())
    info["card"] = {**info.get("card", {}), "targets": markdown}
    _write_info(bundle, info)
    return info


def add_renderer(bundle: str | os.PathLike, renderer_run: str | os.PathLike, metrics: dict | None = None) -> dict:
    """Add (or replace) a bundle's fine-tuned renderer: ``renderer_run`` (a scene-ae trained with
    ``--init-from BUNDLE/scene_ae --set train_parts=render``, or from the run BUNDLE/scene_ae was
    exported from: its lift rounded to float16 must be the bundle's) is stored as BUNDLE/renderer in
    float16, checked to render the bundle's V, and named in bundle.json (with ``metrics`` in
    the model card). Written as BUNDLE/renderer.partial, then renamed. Returns bundle.json."""
    bundle, renderer_run = Path(bundle), Path(renderer_run)
    info = json.loads((bundle / BUNDLE_FILE).read_text())
    record = read_run_config(bundle / "g")["scene_ae"]
    model = load_scene_ae(renderer_run, "cpu")
    lift = encoder_hash(_rounded(model))      # the lift as the bundle will store it
    if not makes_voxels_of(renderer_run, model, record) and not (
            # fine-tuned (lift frozen) from the run the bundle's scene-ae was exported from
            model.cfg.train_parts == "render" and read_run_config(renderer_run).get("init_from")
            and lift == encoder_hash(load_scene_ae(bundle / "scene_ae", "cpu"))):
        raise ValueError(f"{renderer_run}: not a renderer fine-tuned from {bundle / 'scene_ae'} "
                         "(--init-from it with --set train_parts=render)")
    rc = read_run_config(renderer_run)
    if rc.get("init_from"):     # name the bundle's scene-ae relative to the bundle, as the levels do
        rc["init_from"] = {**rc["init_from"], "run": "../scene_ae", "config_hash": record["config_hash"],
                           "weights_hash": record["weights_hash"], "encoder_hash": lift,
                           "trained_run": str(renderer_run.resolve())}
    tmp = bundle / (RENDERER + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    step = json.loads((renderer_run / MODEL_INFO).read_text()).get("step") if (renderer_run / MODEL_INFO).exists() else None
    atomic_write_json(tmp / CONFIG_FILE, rc)
    size = _save_half(model, tmp, step)
    if not makes_voxels_of(tmp, load_scene_ae(tmp, "cpu"), record):   # float16 keeps the lift exact
        raise ValueError(f"{renderer_run}: its lift changes when stored as float16; not added")
    if (bundle / RENDERER).exists():
        shutil.rmtree(bundle / RENDERER)
    os.replace(tmp, bundle / RENDERER)
    info["renderer"] = RENDERER
    info["steps"]["renderer"] = step
    info["card"] = {**info.get("card", {}), "renderer": {"trained_run": str(renderer_run.resolve()),
                                                          "bytes": size, "metrics": metrics or {}}}
    _write_info(bundle, info)
    return info


def _bundle_hashes(bundle: Path) -> dict:
    """The weights hashes of the bundle's scene-ae and latent-ae (as stored)."""
    return {"scene_ae": weights_hash(load_scene_ae(bundle / "scene_ae", "cpu")),
            "latent_ae": weights_hash(load_latent_ae(bundle / "latent_ae", "cpu"))}


def _check_on_bundle(bundle: Path, run: Path, rc: dict, hashes: dict) -> None:
    """ValueError when the level or run ``run`` (run config ``rc``) was trained on latents of another
    latent-ae than the bundle's or the run it was exported from."""
    trained = rc["latent_ae"]["weights_hash"]
    if trained != hashes["latent_ae"] and not _source_lae_matches(bundle, trained, hashes["latent_ae"]):
        raise ValueError(f"{run}: trained on the latents of another latent-ae than {bundle / 'latent_ae'} "
                         "(encode the latents with the bundle's latent-ae, then train)")


def _ldm_on_bundle(bundle: Path, ldm_run: Path) -> tuple[dict, dict]:
    """(``load_ldm`` of ``ldm_run``, the weights hashes of the bundle's scene-ae and latent-ae);
    ValueError when the run was trained on latents of another latent-ae than the bundle's or the
    run it was exported from."""
    ldm = load_ldm(ldm_run, "cpu")
    hashes = _bundle_hashes(bundle)
    _check_on_bundle(bundle, ldm_run, ldm["config"], hashes)
    return ldm, hashes


def _save_bundle_level(rc: dict, model: LevelDiffusion, step, dest: Path, hashes: dict, prefix: str,
                       bits: int = 16) -> int:
    """A level (its run config ``rc``, trained ``model`` at ``step``) into the bundle folder ``dest``
    in ``bits`` 16 (float16), 8 or 4 (:func:`_save_half`), its config naming the bundle's scene-ae
    and latent-ae as ``prefix`` + their folder (relative to ``dest``) with their ``hashes``; returns
    the weights' bytes."""
    rc = copy.deepcopy(rc)
    for key in ("scene_ae", "latent_ae"):
        rc[key] = {**rc[key], "run": f"{prefix}{key}", "weights_hash": hashes[key], "trained_run": str(rc[key]["run"])}
    atomic_write_json(dest / CONFIG_FILE, rc)
    return _save_half(model, dest, step, bits=bits)


def add_levels(bundle: str | os.PathLike, ldm_run: str | os.PathLike, name: str = BEV_LEVELS,
               card: dict | None = None, int8_levels: tuple[str, ...] = ()) -> dict:
    """Add (or replace) the levels of another ldm run trained on the bundle's own latent-ae
    (e.g. BEV-conditioned levels) as BUNDLE/``name``/{g,c,f} in float16 (those in ``int8_levels``
    in 8 bits, :func:`_save_half`): their configs name the
    bundle's latent-ae and scene-ae (``../latent_ae``, ``../scene_ae``) and its renderer; checked
    to load as a whole pipeline. ValueError when the run was trained on latents of another
    latent-ae than the bundle's or the run it was exported from. Written as BUNDLE/NAME.partial,
    then renamed. Returns bundle.json."""
    bundle, ldm_run = Path(bundle), Path(ldm_run)
    info = json.loads((bundle / BUNDLE_FILE).read_text())
    ldm, hashes = _ldm_on_bundle(bundle, ldm_run)
    tmp = bundle / (name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    steps, size = {}, 0
    for lv in ldm["models"]:
        (tmp / lv).mkdir()
        steps[lv] = ldm["steps"][lv]
        size += _save_bundle_level(read_run_config(ldm_run / lv), ldm["models"][lv], steps[lv], tmp / lv, hashes, "../",
                                   bits=8 if lv in int8_levels else 16)
    sub = {"format": BUNDLE_FORMAT, "version": 1, "levels_of": "..", "source": str(ldm_run.resolve()), "steps": steps}
    if info.get("renderer"):
        sub["renderer"] = f"../{info['renderer']}"
    atomic_write_json(tmp / BUNDLE_FILE, sub)
    load_stages(tmp, "cpu")              # loads as a whole pipeline (hashes match)
    if (bundle / name).exists():
        shutil.rmtree(bundle / name)
    os.replace(tmp, bundle / name)
    info.setdefault("levels", {})[name] = {"steps": steps, "bytes": size, "source": str(ldm_run.resolve()),
                                           "card": card or {}}
    int8 = [lv for lv in ldm["models"] if lv in int8_levels]
    if int8:
        info["levels"][name]["int8"] = int8
    _write_info(bundle, info)
    return info


def replace_levels(bundle: str | os.PathLike, ldm_run: str | os.PathLike, levels: tuple[str, ...],
                   note: str = "", part: str | None = None, int8: bool = False, int4: bool = False) -> dict:
    """Replace some of the bundle's own (unconditional) levels by those of ``ldm_run``, an ldm run
    (it may hold only those levels) trained on the latents of the bundle's latent-ae with the
    bundle's latent statistics (e.g. a level retrained on a folder encoded again with
    ``encode-latents --stats-from BUNDLE``), in float16; the other levels, the auto-encoders and
    every other part stay byte for byte. ``part``: replace levels of BUNDLE/``part`` (e.g. "bev",
    the BEV-conditioned levels of :func:`add_levels`) instead. ``int8``: store the new levels'
    weight matrices and kernels in 8 bits (:func:`nfldm.trainer.int8_weights`), for a wider level
    within the bundle's size; ``int4``: their U-Net's blocks in 4 bits (:func:`_save_half`).
    bundle.json's "int8" / "int4" lists (of the bundle or of ``part``) follow the new levels'
    storage. The whole pipeline is checked to load before the old levels are removed (on a failure
    they are put back). ``note`` (what was retrained and why) joins the model card's ``retrained``
    list with the levels, the run and their steps. Returns bundle.json."""
    bundle, ldm_run = Path(bundle), Path(ldm_run)
    if int8 and int4:
        raise ValueError("int8 and int4: a level is stored in one of them")
    bits = 4 if int4 else 8 if int8 else 16
    info = json.loads((bundle / BUNDLE_FILE).read_text())
    if part is not None and part not in info.get("levels", {}):
        raise ValueError(f"{bundle}: no part {part!r} (it has: {', '.join(info.get('levels', {})) or 'none'})")
    home = bundle / part if part else bundle
    have = info["levels"][part]["steps"] if part else info.get("steps", {})
    bad = [lv for lv in levels if lv not in have or not (home / lv).is_dir()]
    if bad or not levels:
        raise ValueError(f"{home}: no level {', '.join(bad) or '(none given)'} to replace")
    hashes = _bundle_hashes(bundle)
    kept = read_run_config(home / "g")
    models, steps, configs = {}, {}, {}
    for lv in levels:
        rc = read_run_config(ldm_run / lv)
        if rc.get("stage") != "ldm" or rc.get("level") != lv:
            raise ValueError(f"{ldm_run / lv}: not the {lv} level of an ldm run (stage {rc.get('stage')!r}, "
                             f"level {rc.get('level')!r})")
        _check_on_bundle(bundle, ldm_run / lv, rc, hashes)
        if rc.get("stats") != kept.get("stats"):
            raise ValueError(f"{ldm_run / lv}: trained with other latent statistics than the bundle's levels "
                             "(encode the latents with --stats-from the bundle, then train)")
        models[lv] = LevelDiffusion(config_from_dict(rc["model"]))
        steps[lv], configs[lv] = load_model_weights(ldm_run / lv, models[lv], prefer_ema=True)["step"], rc
    old_bytes = {lv: (home / lv / MODEL_WEIGHTS).stat().st_size for lv in levels}
    old_params = sum(p.numel() for lv in levels for p in LevelDiffusion(
        config_from_dict(read_run_config(home / lv)["model"])).parameters())      # the shapes say it
    new_bytes = {}
    for lv in levels:
        tmp = home / (lv + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        new_bytes[lv] = _save_bundle_level(configs[lv], models[lv], steps[lv], tmp, hashes,
                                           "../" if part else "", bits=bits)
    for lv in levels:
        os.replace(home / lv, home / (lv + ".old"))
        os.replace(home / (lv + ".partial"), home / lv)
    try:
        load_stages(home, "cpu")
    except Exception:
        for lv in levels:
            shutil.rmtree(home / lv)
            os.replace(home / (lv + ".old"), home / lv)
        raise
    for lv in levels:
        shutil.rmtree(home / (lv + ".old"))
    new_params = sum(p.numel() for m in models.values() for p in m.parameters()) - old_params
    entry = info["levels"][part] if part else info          # the steps, bytes and storage lists to update
    if part:
        sub = json.loads((home / BUNDLE_FILE).read_text())
        sub["steps"].update(steps)
        atomic_write_json(home / BUNDLE_FILE, sub)
    else:
        info["params"] += new_params
    entry["steps"].update(steps)
    entry["bytes"] += sum(new_bytes.values()) - sum(old_bytes.values())
    done = {"levels": [f"{part}/{lv}" if part else lv for lv in levels], "run": str(ldm_run.resolve()),
            "steps": steps, "note": note}
    for key, b in (("int8", 8), ("int4", 4)):      # which levels are stored in how many bits
        kept_lv = [lv for lv in entry.get(key, []) if lv not in levels]
        now = kept_lv + (list(levels) if bits == b else [])
        if now:
            entry[key] = now
        else:
            entry.pop(key, None)
    if int8:
        done["int8"] = True
    if int4:
        done["int4"] = True
    info["card"] = {**info.get("card", {}), "retrained": [*info.get("card", {}).get("retrained", []), done]}
    _write_info(bundle, info)
    return info


def export_bundle(ldm_run: str | os.PathLike, dest: str | os.PathLike, card: dict | None = None,
                  int8_levels: tuple[str, ...] = ()) -> dict:
    """Write the pipeline behind ``ldm_run`` as a float16 bundle ``dest`` (written next to it
    as DEST.partial, then renamed); the levels named in ``int8_levels`` (of g, c, f) in 8 bits
    (:func:`_save_half`). Returns the bundle.json data."""
    bad = [lv for lv in int8_levels if lv not in ("g", "c", "f")]
    if bad:
        raise ValueError(f"int8_levels: {bad} are not levels (g, c, f)")
    ldm_run, dest = Path(ldm_run), Path(dest)
    pipe = load_stages(ldm_run, "cpu")
    rc_g = pipe["config"]
    runs = {k: recorded_run(ldm_run, rc_g[k]) for k in ("scene_ae", "latent_ae")}
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    total_bytes, params, steps = 0, 0, {}
    parts = [("scene_ae", pipe["scene_ae"], runs["scene_ae"]), ("latent_ae", pipe["lae"], runs["latent_ae"])]
    levels = list(pipe["models"])          # g, c, f (fewer for the ablations)
    parts += [(lv, pipe["models"][lv], ldm_run / lv) for lv in levels]
    for name, model, run in parts:
        (tmp / name).mkdir()
        rc = read_run_config(run)
        step = json.loads((run / MODEL_INFO).read_text()).get("step") if (run / MODEL_INFO).exists() else None
        steps[name] = step if step is not None else pipe["steps"].get(name)
        atomic_write_json(tmp / name / CONFIG_FILE, rc)
        bits = 8 if name in levels and name in int8_levels else 16
        total_bytes += _save_half(model, tmp / name, steps[name], bits=bits)
        params += sum(p.numel() for p in model.parameters())
    # the levels name the auto-encoders relative to the bundle, with the hashes of the rounded weights
    hashes = {"scene_ae": weights_hash(load_scene_ae(tmp / "scene_ae", "cpu")),
              "latent_ae": weights_hash(load_latent_ae(tmp / "latent_ae", "cpu"))}
    for lv in levels:
        rc = read_run_config(tmp / lv)
        for key in ("scene_ae", "latent_ae"):
            rc[key] = {**rc[key], "run": key, "weights_hash": hashes[key], "trained_run": str(runs[key])}
        atomic_write_json(tmp / lv / CONFIG_FILE, rc)
    # ... and so does the latent-ae: voxels encoded with the bundle's scene_ae then pass its check,
    # so a user can encode new scenes with the bundle (nfldm encode-voxels, then encode-latents)
    rc = read_run_config(tmp / "latent_ae")
    rc["scene_ae"] = {**rc["scene_ae"], "run": "../scene_ae", "weights_hash": hashes["scene_ae"],
                      "trained_run": str(runs["scene_ae"])}
    atomic_write_json(tmp / "latent_ae" / CONFIG_FILE, rc)
    load_ldm(tmp, "cpu")          # the bundle loads as an ldm run ...
    info = {"format": BUNDLE_FORMAT, "version": 1, "params": params, "bytes": total_bytes, "steps": steps,
            "source": str(ldm_run.resolve()), "card": card or {}}
    if any(lv in int8_levels for lv in levels):
        info["int8"] = [lv for lv in levels if lv in int8_levels]
    _write_info(tmp, info)
    load_stages(tmp, "cpu")              # ... and as a whole pipeline (hashes match)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return info
