"""``nfldm quickstart``: end to end at smoke size (killed with SIGKILL and resumed), the report's
artefacts, the bundle, ``nfldm sample`` without ``--run``, and one-line user errors; the optional
stages (renderer, BEV levels, image prior) end to end at smoke size, and the release preset's
config and plan (never trained here)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nfldm.pipeline.quickstart.config import STAGE_NAMES, preset, stage_list

SMOKE_STAGES = [n for n, _ in stage_list(preset("smoke"))]

CLI = [sys.executable, "-m", "nfldm.cli"]


def nfldm(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


def one_line_error(res: subprocess.CompletedProcess) -> str:
    assert res.returncode != 0, res.stdout[-2000:]
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr[-3000:]
    assert lines[0].startswith("error: ")
    return lines[0]


def finite_numbers(d) -> list[float]:
    if isinstance(d, dict):
        return [x for v in d.values() for x in finite_numbers(v)]
    if isinstance(d, list):
        return [x for v in d for x in finite_numbers(v)]
    if isinstance(d, (int, float)) and not isinstance(d, bool):
        return [float(d)]
    return []


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """A smoke quickstart killed (SIGKILL) while the ldm trains, then run again to the end."""
    out = tmp_path_factory.mktemp("qs") / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([*CLI, "quickstart", "--smoke", "--out", str(out), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    state_path = out / "state.json"
    killed_in = None
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < 300:
        try:
            state = json.loads(state_path.read_text())
        except (OSError, ValueError):
            state = {}
        if "ldm" in state.get("budgets", {}):
            time.sleep(1.0)                       # inside the ldm training
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed_in = "ldm"
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    first = json.loads(state_path.read_text())
    res = nfldm("quickstart", "--smoke", "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    return {"out": out, "killed_in": killed_in, "first": first, "stdout": res.stdout}


def test_killed_run_resumes_and_finishes(run):
    out = run["out"]
    state = json.loads((out / "state.json").read_text())
    assert list(state["stages"]) == SMOKE_STAGES
    assert len(state["sessions"]) == 2
    first = run["first"]["stages"]
    if run["killed_in"] == "ldm" and "ldm" not in first:
        # the finished stages were not redone: their records are the ones of the first session
        for name in ("collect", "scene_ae", "latent_ae", "encode_latents"):
            assert state["stages"][name] == first[name]
        # the killed training continued from a checkpoint written before the kill
        from nfldm.utils.plot import read_metrics

        assert read_metrics(out / "ldm" / "g" / "metrics.jsonl"), "psi_g logged nothing"
    for s in state["stages"].values():
        assert s["seconds"] >= 0 and s["peak_rss_mb"] > 0
        assert s["machine"].startswith("cpu (") and s["machine"].endswith(" cores)")
    assert all(s["command"].startswith("nfldm quickstart") and " --smoke" in s["command"] for s in state["sessions"])
    total = sum(s["seconds"] for s in state["stages"].values())
    assert total < 180, f"the smoke run took {total:.0f} s of stage time (budget: 3 minutes)"


def test_report_artefacts_exist_and_decode(run):
    out = run["out"]
    html = (out / "report.html").read_text()
    for section in ("Stage 1", "Stage 2", "Stage 3", "Where the time went", "Config", "Bundled model"):
        assert section in html
    srcs = re.findall(r"<img src='([^']+)'", html)
    hrefs = re.findall(r"<a href='([^']+)'", html)
    assert len(srcs) >= 10 and "class='missing'" not in html
    gifs = 0
    for s in srcs:
        path = out / s
        assert path.is_file(), s
        with Image.open(path) as im:
            im.load()
            assert im.size[0] > 8 and im.size[1] > 8
            if path.suffix == ".gif":
                gifs += 1
                assert getattr(im, "n_frames", 1) > 1, f"{s} is not animated"
    assert gifs >= 3                           # stage-1 fly-through + one per sample
    for h in hrefs:
        assert (out / h).is_file(), h
    # metrics of every stage are finite
    m1 = json.loads((out / "scene_ae" / "metrics_test.json").read_text())
    m2 = json.loads((out / "latent_ae" / "metrics_test.json").read_text())
    m3 = json.loads((out / "samples" / "metrics.json").read_text())
    for m in (m1["model"], m2["render"], m3["efficientnet_lite0"]):
        nums = finite_numbers(m)
        assert nums and all(math.isfinite(x) for x in nums), m


def test_rerun_is_a_no_op_and_other_options_are_refused(run):
    out = run["out"]
    before = (out / "state.json").read_text()
    res = nfldm("quickstart", "--smoke", "--out", str(out), "--quiet")
    assert res.returncode == 0
    assert res.stdout.count(" done ") >= len(SMOKE_STAGES)
    after = json.loads((out / "state.json").read_text())
    assert after["stages"] == json.loads(before)["stages"]
    line = one_line_error(nfldm("quickstart", "--smoke", "--out", str(out), "--scenes", "6"))
    assert "another config" in line and "scenes" in line and "started" in line


def test_changes_to_stages_not_started_are_taken(tmp_path):
    """A long run's folder takes a config change read only by stages that have not started (the
    release run's later widths and budgets), records it, and refuses one read by a started stage."""
    from nfldm.pipeline.quickstart.config import preset
    from nfldm.pipeline.quickstart.run import QuickstartError, open_run_dir

    out = tmp_path / "rel"
    cfg = preset("release")
    open_run_dir(out, cfg, "release")
    (out / "state.json").write_text(json.dumps({"stages": {"collect": {}, "check": {}}, "budgets": {"scene_ae": 390.0}}))
    wider = preset("release", ldm_set={**cfg.ldm_set, "c.block_out_channels": (64, 128)},
                   steps_per_minute=cfg.steps_per_minute[:3] + (500.0, 129.0), budget_minutes=1200.0)
    state = open_run_dir(out, wider, "release")
    stored = json.loads((out / "quickstart.json").read_text())["config"]
    assert stored["ldm_set"]["c.block_out_channels"] == [64, 128] and stored["budget_minutes"] == 1200.0
    assert sorted(state["config_changes"][-1]["changed"]) == ["budget_minutes", "ldm_set", "steps_per_minute"]
    for bad in (preset("release", scene_ae_set={"val_every": 100, "patience": 8}),
                preset("release", steps_per_minute=(10.0,) + cfg.steps_per_minute[1:]),
                preset("release", scenes=4096)):
        with pytest.raises(QuickstartError, match="started"):
            open_run_dir(out, bad, "release")
    with pytest.raises(QuickstartError, match="preset"):
        open_run_dir(out, wider, "default")
    # a stage config its stage would refuse fails when the run starts, not hours later, and the
    # folder keeps its config
    before = (out / "quickstart.json").read_text()
    for bad, what in ((preset("release", ldm_set={**cfg.ldm_set, "c.norm_num_groups": 64}), "stage ldm: level c"),
                      (preset("release", bev_ldm_set={"f.block_out_channels": (40, 80)}), "stage bev_ldm: level f"),
                      (preset("release", latent_ae_set={"codebook_sise": 512}), "stage latent_ae"),
                      (preset("release", image_prior_set={"image_size": 30}), "stage image_prior")):
        with pytest.raises(QuickstartError, match=what):
            open_run_dir(out, bad, "release")
    assert (out / "quickstart.json").read_text() == before


def test_quickstart_refuses_foreign_folders_and_bad_options(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert "not a quickstart run" in one_line_error(nfldm("quickstart", "--smoke", "--out", str(foreign)))
    assert (foreign / "notes.txt").read_text() == "mine"
    assert "budget_minutes" in one_line_error(nfldm("quickstart", "--out", str(tmp_path / "a"),
                                                    "--budget-minutes", "0"))
    assert "at least 3 scenes" in one_line_error(nfldm("quickstart", "--out", str(tmp_path / "b"), "--scenes", "1"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_bundle_is_small_and_samples(run, tmp_path):
    bundle = run["out"] / "bundle"
    info = json.loads((bundle / "bundle.json").read_text())
    size = sum(p.stat().st_size for p in bundle.rglob("*.safetensors"))
    assert info["bytes"] == size and info["params"] > 0
    assert "nfldm quickstart" in (bundle / "MODEL_CARD.md").read_text()
    # a copied bundle is self-contained (paths relative to it)
    moved = tmp_path / "moved"
    shutil.copytree(bundle, moved)
    res = nfldm("sample", "--run", str(moved), "--num", "1", "--sampler", "dpm", "--steps", "2", "--frames", "3",
                "--out", str(tmp_path / "s"), "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(list((tmp_path / "s" / "sample_0000" / "frames").glob("*.png"))) == 3
    # a table of measured targets goes into the card (benchmarks/release_targets.py); the card
    # keeps the rest, and a quickstart-budget card says it was trained for minutes
    from nfldm.pipeline.bundle import set_card_targets

    before = (moved / "MODEL_CARD.md").read_text()
    assert "Trained for minutes" in before and "## Targets" not in before
    set_card_targets(moved, "| what | release |\n|---|---|\n| FID | 12.5 |\n")
    card = (moved / "MODEL_CARD.md").read_text()
    assert "## Targets" in card and "| FID | 12.5 |" in card and "nfldm quickstart" in card
    # the release recipe's bundle_int8: psi_c exported in 8 bits, the other levels in float16
    from nfldm.data.tensors import read_safetensors
    from nfldm.pipeline.bundle import export_bundle
    from nfldm.trainer import INT8_SCALE

    info8 = export_bundle(run["out"] / "ldm", tmp_path / "b8", int8_levels=("c",))
    stored = {lv: read_safetensors(tmp_path / "b8" / lv / "model.safetensors")[0] for lv in ("g", "c")}
    assert any(k.endswith(INT8_SCALE) for k in stored["c"]) and not any(k.endswith(INT8_SCALE) for k in stored["g"])
    assert info8["int8"] == ["c"] and info8["bytes"] < info["bytes"]
    assert "In 8 bits: c" in (tmp_path / "b8" / "MODEL_CARD.md").read_text()
    with pytest.raises(ValueError, match="not levels"):
        export_bundle(run["out"] / "ldm", tmp_path / "b9", int8_levels=("scene_ae",))
    assert preset("release").bundle_int8 == ("c",) and preset("smoke", bundle_int8="c").bundle_int8 == ("c",)
    with pytest.raises(ValueError, match="bundle_int8"):
        preset("smoke", bundle_int8=("c", "x"))
    assert json.loads((moved / "bundle.json").read_text())["card"]["targets"].startswith("| what")
    # the bundle's stages 1 and 2 encode new scenes: its latent-ae accepts its own scene-ae's voxels
    res = nfldm("encode-voxels", "--scene-ae", str(moved / "scene_ae"), "--data", str(run["out"] / "data"),
                "--out", str(tmp_path / "vox"), "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    res = nfldm("encode-latents", "--run", str(moved / "latent_ae"), "--voxels", str(tmp_path / "vox"),
                "--out", str(tmp_path / "lat"), "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    index = json.loads((tmp_path / "lat" / "index.json").read_text())
    assert index["scenes"] and all((tmp_path / "lat" / sc["file"]).exists() for sc in index["scenes"])


def test_package_data_ships_every_file_of_the_bundle():
    """pyproject's package-data globs (what a wheel or a non-editable install carries) match every
    file of the packaged bundle, its extra level sets (bev/{g,c,f}) included: an editable install
    reads the source tree and would not notice a missing one."""
    import glob
    import tomllib

    from nfldm.pipeline.bundle import PACKAGED

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["nfldm"]
    package = root / "src" / "nfldm"
    if PACKAGED.resolve().parents[1] != package.resolve():
        pytest.skip("nfldm is installed from elsewhere than this checkout")
    shipped = {Path(p).resolve() for pat in patterns for p in glob.glob(str(package / pat))}
    files = {p.resolve() for p in PACKAGED.rglob("*") if p.is_file()}
    assert any(p.parent.parent.name == "bev" for p in files), "the bundle has no bev levels"
    assert sorted(str(p.relative_to(package.resolve())) for p in files - shipped) == []


def test_packaged_model_samples_without_run(tmp_path):
    from nfldm.pipeline.bundle import PACKAGED

    if not (PACKAGED / "bundle.json").exists():
        pytest.fail(f"no bundled model at {PACKAGED}")
    res = nfldm("sample", "--num", "1", "--sampler", "dpm", "--steps", "2", "--frames", "3",
                "--out", str(tmp_path / "s"), "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert summary["num"] == 1 and Path(summary["run"]) == PACKAGED
    # the packaged latent-ae names the packaged (float16) scene-ae's weights, so both encode new data
    from nfldm.runs import weights_hash
    from nfldm.scene_ae.load import load_scene_ae

    lae_rc = json.loads((PACKAGED / "latent_ae" / "config.json").read_text())
    assert lae_rc["scene_ae"]["weights_hash"] == weights_hash(load_scene_ae(PACKAGED / "scene_ae", "cpu"))
    # its bev levels follow a drawn floor plan (a map without a look; look guidance on by default)
    plan = np.full((32, 32, 3), 255, np.uint8)
    plan[[0, -1]] = plan[:, [0, -1]] = plan[16, :20] = 0
    Image.fromarray(plan).save(tmp_path / "plan.png")
    res = nfldm("sample", "--bev", str(tmp_path / "plan.png"), "--num", "1", "--sampler", "dpm", "--steps", "2",
                "--frames", "2", "--out", str(tmp_path / "b"), "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "b" / "samples.json").read_text())
    assert summary["bev"] is True and summary["look_guidance"] == 3.0 and summary["look_guidance_from"] == 500
    assert summary["c_temperature"] == 1.0          # psi_c from noise of std 1 (--c-temperature)
    # ... and map guidance 2 at psi_c alone by default; a --guidance given applies to every level
    assert summary["guidance"] == 2.0 and summary["guidance_levels"] == "c"
    # ... and the bundle's unconditional psi_c takes the steps below t = 250
    assert summary["hand_over"] == 250 and Path(summary["low_noise_c"]) == (PACKAGED / "c").resolve()
    res = nfldm("sample", "--bev", str(tmp_path / "plan.png"), "--num", "1", "--sampler", "dpm", "--steps", "2",
                "--frames", "2", "--guidance", "3", "--hand-over", "0", "--out", str(tmp_path / "b3"), "--quiet")
    summary = json.loads((tmp_path / "b3" / "samples.json").read_text())
    assert res.returncode == 0 and summary["guidance"] == 3.0 and summary["guidance_levels"] == "gcf"
    assert summary["hand_over"] == 0 and summary["low_noise_c"] is None
    line = one_line_error(nfldm("sample", "--bev", str(tmp_path / "plan.png"), "--num", "1", "--steps", "2",
                                "--low-noise-c", str(PACKAGED / "g"), "--out", str(tmp_path / "bad")))
    assert "not the c level" in line and str(PACKAGED / "g") in line and not (tmp_path / "bad").exists()
    # its psi_c levels are stored in 8 bits (half the bytes of float16) and load in float32
    from nfldm.data.tensors import read_safetensors

    for lv in (PACKAGED / "c", PACKAGED / "bev" / "c"):
        _, meta = read_safetensors(lv / "model.safetensors")
        assert meta["dtype"] == "int8", lv


def test_user_errors_are_one_clear_line(run, tmp_path):
    out = run["out"]
    # bad path
    line = one_line_error(nfldm("train", "scene-ae", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")))
    assert "nope" in line
    # wrong kind of run directory
    line = one_line_error(nfldm("eval", "scene-ae", "--run", str(out / "latent_ae"), "--data", str(out / "data")))
    assert "not a scene-ae run" in line
    line = one_line_error(nfldm("sample", "--run", str(out / "scene_ae"), "--out", str(tmp_path / "s")))
    assert "scene_ae" in line
    # corrupt checkpoint
    broken = tmp_path / "broken"
    shutil.copytree(out / "bundle", broken)
    weights = broken / "scene_ae" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    line = one_line_error(nfldm("sample", "--run", str(broken), "--out", str(tmp_path / "s2")))
    assert "model.safetensors" in line
    # out-of-range options
    for args, word in ((("--num", "0"), "num"), (("--steps", "0"), "steps")):
        line = one_line_error(nfldm("sample", "--run", str(out / "bundle"), *args, "--out", str(tmp_path / "s3")))
        assert word in line
    assert not (tmp_path / "s2").exists() and not (tmp_path / "s3").exists()


def test_bundle_takes_a_fine_tuned_renderer(run, tmp_path):
    """A renderer fine-tuned from a bundle's scene-ae (its lift frozen) is added to the bundle
    with nfldm.pipeline.bundle.add_renderer; nfldm sample then renders with it by default, and with the
    original through --renderer BUNDLE/scene_ae. A renderer of another scene-ae is refused."""
    from nfldm.pipeline.bundle import add_renderer

    bundle = tmp_path / "bundle"
    shutil.copytree(run["out"] / "bundle", bundle)
    ft = tmp_path / "ft"
    res = nfldm("train", "scene-ae", "--data", str(run["out"] / "data"), "--out", str(ft), "--preset", "smoke",
                "--steps", "2", "--init-from", str(bundle / "scene_ae"), "--set", "train_parts=render",
                "--set", "w_adv=0.1", "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    info = add_renderer(bundle, ft, {"note": "smoke"})
    assert info["renderer"] == "renderer" and (bundle / "renderer" / "model.safetensors").exists()
    assert "## Renderer" in (bundle / "MODEL_CARD.md").read_text()
    for extra, want in (([], "renderer"), (["--renderer", str(bundle / "scene_ae")], "scene_ae")):
        out = tmp_path / f"s_{want}"
        res = nfldm("sample", "--run", str(bundle), "--num", "1", "--sampler", "dpm", "--steps", "2", "--frames", "3",
                    "--out", str(out), *extra, "--quiet")
        assert res.returncode == 0, res.stderr[-3000:]
        assert Path(json.loads((out / "samples.json").read_text())["renderer"] or "scene_ae").name == want
    other = tmp_path / "other"
    res = nfldm("train", "scene-ae", "--data", str(run["out"] / "data"), "--out", str(other), "--preset", "smoke",
                "--steps", "1", "--init-from", str(bundle / "scene_ae"), "--quiet")   # the lift trains too
    assert res.returncode == 0, res.stderr[-3000:]
    with pytest.raises(ValueError, match="not a renderer"):
        add_renderer(bundle, other)


def test_scene_look_levels_replace_the_bundles_own_after_the_data_is_encoded_again(run, tmp_path):
    """The release data encoded again for a bundle (encode-latents --stats-from BUNDLE keeps the
    statistics its levels standardise with); psi_g and psi_c retrained there with the scene's look
    (scene_look) replace the bundle's own (replace_levels: psi_f and the rest byte for byte); its
    samples then carry the look psi_g sampled."""
    from nfldm.data.tensors import read_safetensors
    from nfldm.pipeline.bundle import replace_levels

    out = run["out"]
    bundle = tmp_path / "bundle"
    shutil.copytree(out / "bundle", bundle)
    vox, lat, ldm = tmp_path / "vox", tmp_path / "lat", tmp_path / "ldm"
    for args in (("encode-voxels", "--scene-ae", str(bundle / "scene_ae"), "--data", str(out / "data"), "--out", str(vox)),
                 ("encode-latents", "--run", str(bundle / "latent_ae"), "--voxels", str(vox), "--out", str(lat),
                  "--stats-from", str(bundle))):
        res = nfldm(*args, "--quiet")
        assert res.returncode == 0, res.stderr[-3000:]
    kept = json.loads((bundle / "g" / "config.json").read_text())["stats"]
    assert json.loads((lat / "index.json").read_text())["stats"] == kept
    line = one_line_error(nfldm("encode-latents", "--run", str(bundle / "latent_ae"), "--voxels", str(vox), "--out",
                                str(tmp_path / "lat2"), "--stats-from", str(tmp_path), "--quiet"))
    assert "neither a latent folder" in line
    shutil.copytree(bundle / "f", ldm / "f")
    for lv in ("g", "c"):
        res = nfldm("train", "ldm", "--latents", str(lat), "--out", str(ldm), "--level", lv, "--preset", "smoke",
                    "--set", f"{lv}.scene_look=true", "--init-from", str(bundle), "--steps", "2", "--quiet")
        assert res.returncode == 0, res.stderr[-3000:]
    rc = json.loads((ldm / "c" / "config.json").read_text())
    assert rc["model"]["scene_look"] and len(rc["model"]["look_mean"]) == 10
    assert rc["init_from"]["widened"] == ["net.unet.class_embedding.linear_1.weight"]
    f_before = (bundle / "f" / "model.safetensors").read_bytes()
    info = replace_levels(bundle, ldm, ("g", "c"), note="the scene's look")
    assert (bundle / "f" / "model.safetensors").read_bytes() == f_before and not list(bundle.glob("*.old"))
    assert info["card"]["retrained"][-1]["levels"] == ["g", "c"] and info["steps"]["c"] == 2
    assert "Retrained after: g, c" in (bundle / "MODEL_CARD.md").read_text()
    samples = tmp_path / "s"
    res = nfldm("sample", "--run", str(bundle), "--num", "2", "--sampler", "dpm", "--steps", "2", "--frames", "2",
                "--out", str(samples), "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    t, _ = read_safetensors(samples / "sample_0000" / "V.safetensors")
    assert t["look"].shape == (10,) and torch.isfinite(t["look"]).all()
    with pytest.raises(ValueError, match="no level x"):
        replace_levels(bundle, ldm, ("x",))


@pytest.mark.filterwarnings("ignore:the density never reaches")
def test_bev_levels_join_the_bundle_and_follow_maps(run, tmp_path):
    """On the real engine's maps: latents encoded with a bundle's own auto-encoders carry each
    scene's BEV map; levels trained with --set bev=true join the bundle (add_levels) and
    nfldm sample --bev follows a scene's map along its real path (edits applied, the map kept
    in the sample folder); nfldm eval generation scores the map agreement and the paired views."""
    from nfldm.data.bev import read_bev_file
    from nfldm.pipeline.bundle import add_levels
    from nfldm.pipeline.maps import comparison_sheet

    from nfldm.data.bev import LOOK_KEYS, write_bev
    from nfldm.data.tensors import read_safetensors
    from nfldm.ldm.config import config_from_dict
    from nfldm.ldm.model import LevelDiffusion

    out = run["out"]
    bundle = tmp_path / "bundle"
    shutil.copytree(out / "bundle", bundle)
    # the maps as collected before the collector wrote their look: add-look later
    data_old = tmp_path / "data_old"
    shutil.copytree(out / "data", data_old)
    for f in data_old.glob("scene_*/bev.npz"):
        write_bev(f, {k: v for k, v in read_bev_file(f).items() if k not in LOOK_KEYS})
    vox, lat, ldm = tmp_path / "vox", tmp_path / "lat", tmp_path / "ldm"
    for args in (("encode-voxels", "--scene-ae", str(bundle / "scene_ae"), "--data", str(data_old), "--out", str(vox)),
                 ("encode-latents", "--run", str(bundle / "latent_ae"), "--voxels", str(vox), "--out", str(lat)),
                 ("train", "ldm", "--latents", str(lat), "--out", str(ldm), "--preset", "smoke", "--set", "bev=true")):
        res = nfldm(*args, "--quiet")
        assert res.returncode == 0, res.stderr[-3000:]
    index = json.loads((lat / "index.json").read_text())
    assert index["bev"]["channels"] == 4 and not index["bev"]["look"] and len(index["bev"]["typical_heights"]) == 2
    # a look level on such latents: one line saying how to give them the look
    line = one_line_error(nfldm("train", "ldm", "--latents", str(lat), "--out", str(tmp_path / "nolook"), "--level", "c",
                                "--preset", "smoke", "--set", "bev=true", "--set", "bev_look=true", "--quiet"))
    assert "add-look" in line
    # add-look, then the latents' maps refreshed (nothing encoded again): 15 channels, latents kept
    first = sorted(lat.glob("scene_*.safetensors"))[0]
    before, _ = read_safetensors(first)
    for args in (("data", "add-look", "--data", str(data_old)),
                 ("encode-latents", "--run", str(bundle / "latent_ae"), "--voxels", str(vox), "--out", str(lat),
                  "--refresh-maps")):
        res = nfldm(*args, "--quiet")
        assert res.returncode == 0, res.stderr[-3000:]
    assert "0 encoded" in res.stdout
    index = json.loads((lat / "index.json").read_text())
    assert index["bev"]["channels"] == 15 and index["bev"]["look"]
    after, _ = read_safetensors(first)
    assert after["bev"].shape[0] == 15 and torch.equal(after["bev"][:4], before["bev"])
    assert all(torch.equal(after[k], before[k]) for k in ("g", "c", "f"))
    # psi_c given the look, started from the level without it (its look weights start at zero)
    look = tmp_path / "ldm_look"
    shutil.copytree(ldm / "g", look / "g")
    shutil.copytree(ldm / "f", look / "f")
    res = nfldm("train", "ldm", "--latents", str(lat), "--out", str(look), "--level", "c", "--preset", "smoke",
                "--set", "bev=true", "--set", "bev_look=true", "--init-from", str(ldm), "--steps", "2", "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    rc = json.loads((look / "c" / "config.json").read_text())
    assert rc["model"]["bev_look"] is True and "bev.stem.0.weight" in rc["init_from"]["widened"]
    data = json.loads((out / "data" / "dataset.json").read_text())
    scene = out / "data" / next(s["name"] for s in data["scenes"] if s["split"] == "test")
    plan = np.full((16, 16, 3), 255, np.uint8)          # one room: walls on the border, floor inside
    plan[[0, -1]] = plan[:, [0, -1]] = 0
    Image.fromarray(plan).save(tmp_path / "rooms.png")
    for src in (scene, tmp_path / "rooms.png"):          # a map with its look, a floor plan without one
        res = nfldm("sample", "--run", str(look), "--bev", str(src), "--num", "1", "--sampler", "dpm", "--steps", "2",
                    "--frames", "2", "--look-guidance", "2", "--look-guidance-from", "500",
                    "--out", str(tmp_path / f"look_{src.stem}"), "--quiet")
        assert res.returncode == 0, res.stderr[-3000:]
        summary = json.loads((tmp_path / f"look_{src.stem}" / "samples.json").read_text())
        assert summary["look_guidance"] == 2.0 and summary["look_guidance_from"] == 500
    rc = json.loads((ldm / "c" / "config.json").read_text())
    assert rc["model"]["bev"] is True and rc["model"]["bev_size"] == index["bev"]["size"] and "bev" in rc
    # levels trained on the latents of another latent-ae are refused (the shipped bundle's is another;
    # OUT/ldm is not: it was trained on the run this bundle's latent-ae was exported from)
    from nfldm.pipeline.bundle import PACKAGED

    shipped = tmp_path / "shipped"
    shutil.copytree(PACKAGED, shipped, ignore=shutil.ignore_patterns("bev", "image_prior", "renderer"))
    with pytest.raises(ValueError, match="another latent-ae"):
        add_levels(shipped, ldm)
    info = add_levels(bundle, ldm)
    assert set(info["levels"]["bev"]["steps"]) == {"g", "c", "f"} and (bundle / "bev" / "c" / "model.safetensors").exists()
    assert "BEV-map-conditioned levels" in (bundle / "MODEL_CARD.md").read_text()
    # a wider psi_c in 8 bits takes the place of the bev level (only c trained in that run); the
    # samples below use it; g and f stay byte for byte
    from nfldm.pipeline.bundle import replace_levels
    from nfldm.trainer import INT4_SCALE, INT8_SCALE, load_model_weights

    (tmp_path / "only_c").mkdir()
    shutil.copytree(ldm / "c", tmp_path / "only_c" / "c")
    g_before = (bundle / "bev" / "g" / "model.safetensors").read_bytes()
    info = replace_levels(bundle, tmp_path / "only_c", ("c",), note="8 bits", part="bev", int8=True)
    assert (bundle / "bev" / "g" / "model.safetensors").read_bytes() == g_before
    assert info["card"]["retrained"][-1]["levels"] == ["bev/c"] and info["card"]["retrained"][-1]["int8"]
    assert "bev/c from" in (bundle / "MODEL_CARD.md").read_text() and not list((bundle / "bev").glob("c.*"))
    stored, _ = read_safetensors(bundle / "bev" / "c" / "model.safetensors")
    assert any(k.endswith(INT8_SCALE) for k in stored)
    ref, back = (LevelDiffusion(config_from_dict(json.loads((ldm / "c" / "config.json").read_text())["model"]))
                 for _ in range(2))
    load_model_weights(ldm / "c", ref)
    load_model_weights(bundle / "bev" / "c", back)
    for (k, a), b in zip(ref.state_dict().items(), back.state_dict().values()):
        assert (a - b).abs().max() <= a.abs().max() / 254 + 1e-6, k
    # the same level in 4 bits: a quarter of float16's bytes, the bundle's lists follow
    info = replace_levels(bundle, tmp_path / "only_c", ("c",), note="4 bits", part="bev", int4=True)
    assert info["levels"]["bev"].get("int4") == ["c"] and "c" not in info["levels"]["bev"].get("int8", [])
    assert "In 4 bits: bev/c" in (bundle / "MODEL_CARD.md").read_text()
    stored, meta = read_safetensors(bundle / "bev" / "c" / "model.safetensors")
    assert meta["dtype"] == "int4" and any(k.endswith(INT4_SCALE) for k in stored)
    load_model_weights(bundle / "bev" / "c", back)
    for (k, a), b in zip(ref.state_dict().items(), back.state_dict().values()):
        assert (a - b).abs().max() <= a.abs().max() / 14 + 1e-6, k
    with pytest.raises(ValueError, match="one of them"):
        replace_levels(bundle, tmp_path / "only_c", ("c",), part="bev", int8=True, int4=True)
    with pytest.raises(ValueError, match="no part 'nope'"):
        replace_levels(bundle, tmp_path / "only_c", ("c",), part="nope")
    samples = tmp_path / "s"
    res = nfldm("sample", "--run", str(bundle / "bev"), "--bev", str(scene), "--path-from-scene", "--guidance", "2",
                "--erase-box", "-1", "-1", "1", "1", "--num", "2", "--sampler", "dpm", "--steps", "2",
                "--out", str(samples), "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((samples / "samples.json").read_text())
    assert summary["num"] == 2 and summary["bev"] is True and summary["path_from_scene"] is True
    # this bundle's own psi_c was trained on other latent statistics than its bev levels: no hand-over
    # by default; asked for, one line naming the level
    assert summary["hand_over"] == 0 and summary["low_noise_c"] is None
    line = one_line_error(nfldm("sample", "--run", str(bundle / "bev"), "--bev", str(scene), "--hand-over", "250",
                                "--num", "1", "--steps", "2", "--out", str(tmp_path / "ho")))
    assert "trained on other latents" in line and str(bundle / "c") in line and not (tmp_path / "ho").exists()
    n_frames = len(json.loads((scene / "transforms.json").read_text())["frames"])
    for k in range(2):
        d = samples / f"sample_{k:04d}"
        assert len(list((d / "frames").glob("*.png"))) == n_frames
        assert (d / "map.png").exists()
        cond = json.loads((d / "condition.json").read_text())
        assert cond["conditioned_on_map"] and cond["edits"] == ["erase-box -1 -1 1 1"]
        # the kept map is the edited one
        assert read_bev_file(d / "bev.npz")["wall"].sum() <= read_bev_file(scene / "bev.npz")["wall"].sum()
    res = nfldm("eval", "generation", "--samples", str(samples), "--data", str(out / "data"), "--inception", "none",
                "--floor-split", "none", "--out", str(tmp_path / "eval.json"), "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert 0.0 <= ev["map_agreement"]["wall_iou"] <= 1.0 and ev["map_agreement"]["num_samples"] == 2
    assert ev["paired_views"]["num_samples"] == 2 and 0.0 <= ev["paired_views"]["lpips"]
    # the upper bound: the scene's own latents, decoded, along its own path
    res = nfldm("sample", "--run", str(bundle / "bev"), "--bev", str(scene), "--path-from-scene",
                "--own-latents", str(lat), "--out", str(tmp_path / "own"), "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((tmp_path / "own" / "samples.json").read_text())["num"] == 1
    # a dataset folder's scenes of a split, at most N of them (spread over the split)
    n_train = sum(s["split"] == "train" for s in data["scenes"])
    res = nfldm("sample", "--run", str(bundle / "bev"), "--bev", str(out / "data"), "--split", "train",
                "--path-from-scene", "--own-latents", str(lat), "--max-scenes", "2", "--out", str(tmp_path / "own2"),
                "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((tmp_path / "own2" / "samples.json").read_text())["num"] == 2 < n_train
    sheet = comparison_sheet({"conditional": samples, "own latents": tmp_path / "own"}, tmp_path / "sheet.png", frames=3)
    assert Image.open(sheet).size[1] > 64
    # a map for an unconditional run, and a floor plan that is not an image: one line each
    line = one_line_error(nfldm("sample", "--run", str(bundle), "--bev", str(scene), "--out", str(tmp_path / "x")))
    assert "not trained on BEV maps" in line
    (tmp_path / "plan.png").write_bytes(b"not a png")
    line = one_line_error(nfldm("sample", "--run", str(bundle / "bev"), "--bev", str(tmp_path / "plan.png"),
                                "--out", str(tmp_path / "y")))
    assert "plan.png" in line


@pytest.mark.filterwarnings("ignore:the density never reaches")
def test_edit_and_extend_a_scene(run, tmp_path):
    """nfldm edit re-generates a box of a real test scene (encoded by the bundle's stages 1 and 2)
    and keeps the rest: V beyond the decoder's receptive field unchanged to float error, the
    latents outside the region identical; the edited sample folder can be edited again; nfldm
    extend grows a sample by two windows into one longer V with a fly-through across the joins;
    bad input gets one line."""
    from nfldm.data.tensors import read_safetensors

    out = run["out"]
    bundle = out / "bundle"
    data = json.loads((out / "data" / "dataset.json").read_text())
    scene = out / "data" / next(s["name"] for s in data["scenes"] if s["split"] == "test")
    ed = tmp_path / "edit"
    res = nfldm("edit", "--run", str(bundle), "--scene", str(scene), "--box", "-1", "-1", "1", "1",
                "--steps", "4", "--jump", "2", "--resample", "2", "--out", str(ed), "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads((ed / "edit.json").read_text())
    c = info["checks"]
    assert c["kept_max_abs_rf"] is None or c["kept_max_abs_rf"] < 1e-3
    assert c["changed_max_abs"] > 0 and c["seam"] > 0
    # the views written: the unedited pixels where the rays miss the box, exactly
    assert info["paste"] and c["pasted"] and c["shown_outside_max_abs"] in (None, 0.0)
    assert info["real_scene"] and len(info["region_box"]) == 4
    before, _ = read_safetensors(ed / "before" / "V.safetensors")
    after, meta = read_safetensors(ed / "sample_0000" / "V.safetensors")
    i0, j0, i1, j1 = info["region_cells"]
    outside = torch.ones(after["f"].shape[1:], dtype=torch.bool)
    outside[i0:i1, j0:j1] = False
    assert torch.equal(after["f"][:, outside], before["f"][:, outside])
    assert not torch.equal(after["f"], before["f"])
    n_frames = len(json.loads((scene / "transforms.json").read_text())["frames"])
    assert len(list((ed / "sample_0000" / "frames").glob("*.png"))) == n_frames
    assert Image.open(ed / "before_after.png").size[1] > 64
    assert json.loads((ed / "samples.json").read_text())["num"] == 1
    # the edited scene is a sample folder: edit it again (automatic box), then extend it
    res = nfldm("edit", "--run", str(bundle), "--scene", str(ed / "sample_0000"), "--steps", "3", "--jump", "3",
                "--resample", "1", "--out", str(tmp_path / "edit2"), "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    ext = tmp_path / "ext"
    res = nfldm("extend", "--run", str(bundle), "--scene", str(ed / "sample_0000"), "--direction=-y",
                "--windows", "2", "--steps", "3", "--jump", "3", "--resample", "1", "--frames-per-window", "4",
                "--out", str(ext), "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    xinfo = json.loads((ext / "extend.json").read_text())
    V, _ = read_safetensors(ext / "sample_0000" / "V.safetensors")
    X, Y = before["V"].shape[1:3]
    s = xinfo["shift_cells"]
    assert tuple(V["V"].shape[1:3]) == (X, Y + 2 * s)
    assert xinfo["bounds"][0][1] < float(before["bounds"][0, 1]) and len(xinfo["checks"]["seam"]) == 2
    assert len(list((ext / "sample_0000" / "frames").glob("*.png"))) == 12 and (ext / "strip.png").exists()
    # one line for bad input
    line = one_line_error(nfldm("edit", "--run", str(bundle), "--scene", str(tmp_path / "nothing"), "--out",
                                str(tmp_path / "e3")))
    assert "nothing" in line
    line = one_line_error(nfldm("edit", "--run", str(bundle), "--scene", str(scene), "--box", "50", "50", "60", "60",
                                "--out", str(tmp_path / "e4")))
    assert "misses" in line
    line = one_line_error(nfldm("extend", "--run", str(bundle), "--scene", str(scene), "--direction", "+x",
                                "--overlap", "1.5", "--out", str(tmp_path / "e5")))
    assert "overlap" in line


# ------------------------------------------------------------------ presets and the optional stages

BASE_STAGES = ["collect", "check", "scene_ae", "eval_scene_ae", "encode_voxels", "latent_ae", "eval_latent_ae",
               "encode_latents", "ldm", "sample", "eval_generation", "bundle", "report"]
EXTRAS = ("renderer", "bev_ldm", "image_prior")


def test_default_and_smoke_presets_keep_their_stages_and_budgets():
    from nfldm.pipeline.quickstart.config import EXTRA_FIELDS
    from nfldm.pipeline.quickstart.run import plan

    for name in ("default", "smoke"):
        cfg = preset(name)
        assert cfg.extras == ()
        rows = plan(cfg)
        assert [r[0] for r in rows] == BASE_STAGES
        minutes = {r[0]: r[2] for r in rows}
        total = sum(minutes[k] for k in ("scene_ae", "latent_ae", "ldm"))
        for k, share in zip(("scene_ae", "latent_ae", "ldm"), cfg.train_shares):
            assert minutes[k] == pytest.approx(total * share / sum(cfg.train_shares))
        assert sum(minutes.values()) == pytest.approx(cfg.budget_minutes)
        # stored as before the optional stages existed: old folders resume
        assert not set(EXTRA_FIELDS) & set(cfg.to_dict())
    assert plan(preset("default"))[2][2] == pytest.approx(17.53, abs=0.01)     # scene_ae's minutes, as before


def test_release_preset_config_and_plan():
    """The release recipe: >= 2,000 windows spread over every map of the collector's fixed split,
    the stages' own tiny presets (no narrowing), every optional stage with a positive budget,
    held-out plateau stopping in each stage, all within the 24-hour cap. Only configs are built."""
    from nfldm.config import apply_overrides
    from nfldm.data.vizdoom import map_split
    from nfldm.latent_ae.config import preset as lae_preset
    from nfldm.ldm.config import preset as ldm_preset
    from nfldm.ldm.train import _split_overrides
    from nfldm.pipeline.quickstart.run import fixed_estimate_s, plan
    from nfldm.refine.config import preset as prior_preset
    from nfldm.scene_ae.config import preset as sae_preset

    cfg = preset("release")
    assert cfg.scenes >= 2000 and (cfg.frames, cfg.resolution) == (24, 64)
    assert cfg.extras == EXTRAS and cfg.budget_minutes == 1440
    # as the collector shares the scenes out (10 % test, 10 % val): every map of every split gets some
    n_test, n_val = round(0.1 * cfg.scenes), round(0.1 * cfg.scenes)
    split = map_split()
    for name, n in (("train", cfg.scenes - n_test - n_val), ("val", n_val), ("test", n_test)):
        assert n >= len(split[name]), name
    rows = plan(cfg)
    assert [r[0] for r in rows] == list(STAGE_NAMES)
    minutes = {r[0]: r[2] for r in rows}
    assert all(minutes[k] > 30 for k in EXTRAS)
    assert sum(minutes.values()) <= cfg.budget_minutes + 1e-6
    train = ("scene_ae", "latent_ae", "ldm") + EXTRAS
    shares = dict(zip(train, cfg.train_shares + cfg.extra_shares))
    total = sum(minutes[k] for k in train)
    assert total == pytest.approx(cfg.budget_minutes - fixed_estimate_s(cfg) / 60)
    for k in train:
        assert minutes[k] == pytest.approx(total * shares[k] / sum(shares.values()))
    # the tiny presets (psi_c, psi_f narrowed to fit the 60 MB bundle), plus the held-out stop
    val = {"val_every": 500, "patience": 8, "keep_best": True}
    assert cfg.scene_ae_set == val and cfg.latent_ae_set == val and cfg.image_prior_set == val
    assert cfg.ldm_set == {**val, "g.mlp_width": 128, "c.block_out_channels": (96, 192), "c.norm_num_groups": 16,
                           "f.block_out_channels": (32, 64), "c.g_with_traj": True, "c.traj_map": True}
    # psi_c is given the camera trajectory, and so is the BEV psi_c (map and path), as the shipped ones;
    # the BEV psi_c also reads the map's look
    assert cfg.bev_ldm_set == {"c.bev_look": True}
    assert cfg.bev_augment == 4                              # ... on the train scenes turned, as the shipped one
    assert cfg.ldm_level_shares == (0.10, 0.60, 0.30)       # psi_c, the level that loses the layout, gets most
    assert (cfg.scene_ae_preset, cfg.latent_ae_preset, cfg.ldm_preset, cfg.image_prior_preset) == ("tiny",) * 4
    for p, sets in ((sae_preset("tiny"), cfg.scene_ae_set), (lae_preset("tiny"), cfg.latent_ae_set),
                    (prior_preset("tiny"), cfg.image_prior_set)):
        apply_overrides(p.model, p.train, sets, "test")
        assert (p.train.val_every, p.train.patience, p.train.keep_best) == (500, 8, True)
    for lv, sets in _split_overrides(cfg.ldm_set).items():       # a key without a level applies to all
        p = ldm_preset("tiny").level(lv)
        apply_overrides(p.model, p.train, sets, "test")
        assert (p.train.val_every, p.train.patience, p.train.keep_best) == (500, 8, True), lv
    assert cfg.num_samples == 16 and cfg.eval_max_scenes == 0
    with pytest.raises(ValueError, match="budget_minutes"):
        preset("release", budget_minutes=1441)
    with pytest.raises(ValueError, match="extras"):
        preset("smoke", extras=("renderer", "sharpen"))
    with pytest.raises(ValueError, match="bev_augment"):
        preset("smoke", bev_augment=2)
    # a folder made before bev_augment existed stores no such field, and resumes as before
    assert "bev_augment" not in preset("smoke").to_dict() and preset("release").to_dict()["bev_augment"] == 4


def test_quickstart_cli_presets(monkeypatch):
    """--preset release runs the release config into ./release; --smoke is --preset smoke; the
    CLI only parses (the run itself is replaced here)."""
    import nfldm.pipeline.quickstart as qs
    from nfldm.cli import main

    calls = []
    monkeypatch.setattr(qs, "quickstart", lambda out, cfg, name, **kw: calls.append((out, cfg, name, kw)))
    assert main(["quickstart", "--preset", "release", "--device", "cuda", "--quiet"]) == 0
    out, cfg, name, kw = calls[-1]
    assert (out, name, kw["device"]) == ("release", "release", "cuda") and cfg == preset("release")
    assert main(["quickstart", "--smoke", "--quiet"]) == 0
    assert calls[-1][:3] == ("quickstart_smoke", preset("smoke"), "smoke")
    assert main(["quickstart", "--preset", "smoke", "--set", "extras=renderer,image_prior", "--quiet"]) == 0
    assert calls[-1][1].extras == ("renderer", "image_prior")
    assert main(["quickstart", "--quiet"]) == 0
    assert calls[-1][:3] == ("quickstart", preset("default"), "default")
    line = one_line_error(nfldm("quickstart", "--smoke", "--preset", "release"))
    assert "--smoke" in line


@pytest.fixture(scope="module")
def extras_run(tmp_path_factory) -> dict:
    """A smoke quickstart with every optional stage and the release's held-out stop (at smoke
    step counts), through the CLI."""
    out = tmp_path_factory.mktemp("qsx") / "run"
    val = "'val_every': 2, 'patience': 2"
    args = ("quickstart", "--smoke", "--out", str(out), "--quiet", "--set", "extras=" + ",".join(EXTRAS),
            "--set", f"scene_ae_set={{'num_input_views': 3, 'num_novel_views': 2, {val}}}",
            "--set", f"latent_ae_set={{{val}}}", "--set", f"ldm_set={{{val}}}", "--set", f"image_prior_set={{{val}}}",
            "--set", "image_prior_renders=2", "--set", "bev_augment=4")
    t0 = time.time()
    res = nfldm(*args)
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    return {"out": out, "args": args, "seconds": time.time() - t0}


@pytest.mark.filterwarnings("ignore:the density never reaches")
def test_optional_stages_run_and_join_the_bundle(extras_run, tmp_path):
    from nfldm.refine.train import load_image_prior

    out = extras_run["out"]
    state = json.loads((out / "state.json").read_text())
    assert list(state["stages"]) == list(STAGE_NAMES)
    assert set(EXTRAS) <= set(state["budgets"]) and all(state["budgets"][k] > 0 for k in EXTRAS)
    r = state["stages"]["renderer"]["result"]
    assert r["steps"] >= 2 and math.isfinite(r["metrics"]["model"]["psnr"])
    rc = json.loads((out / "renderer" / "config.json").read_text())
    assert rc["model"]["train_parts"] == "render" and rc["model"]["render_from"] == "latents"
    assert rc["model"]["w_adv"] > 0 and rc["model"]["w_perceptual"] > 0
    bev_c = json.loads((out / "bev_ldm" / "c" / "config.json").read_text())
    assert bev_c["model"]["bev"] is True
    # bev_augment 4: the BEV levels trained on the latents plus the train scenes turned three times,
    # standardised with the unconditional levels' statistics
    aug = json.loads((out / "latents_aug4" / "index.json").read_text())
    plain = json.loads((out / "latents" / "index.json").read_text())
    n_train = sum(s["split"] == "train" for s in plain["scenes"])
    assert aug["augment"] == 4 and len(aug["scenes"]) == len(plain["scenes"]) + 3 * n_train
    assert aug["stats"] == plain["stats"] and Path(bev_c["latents"]) == (out / "latents_aug4").resolve()
    assert state["stages"]["bev_ldm"]["result"]["latents"] == "latents_aug4"
    assert json.loads((out / "ldm" / "c" / "config.json").read_text())["latents"] == str((out / "latents").resolve())
    # the prior also learned the look of 2 scenes sampled from the trained ldm (seed + 1)
    renders = json.loads((out / "prior_renders" / "samples.json").read_text())
    assert renders["num"] == 2 and renders["seed"] == 1
    prc = json.loads((out / "image_prior" / "config.json").read_text())
    assert prc["renders"]["folders"] == [str((out / "prior_renders").resolve())] and prc["renders"]["frames"] > 0
    assert state["stages"]["image_prior"]["result"]["render_scenes"] == 2
    # the held-out stop was on in every stage that has it
    for run in ("scene_ae", "latent_ae", "ldm/g", "bev_ldm/f", "image_prior"):
        lines = (out / run / "metrics.jsonl").read_text().splitlines()
        assert any("val_loss" in ln for ln in lines), run
    # the samples were rendered by the fine-tuned renderer
    assert Path(json.loads((out / "samples" / "samples.json").read_text())["renderer"]).name == "renderer"
    bundle = out / "bundle"
    info = json.loads((bundle / "bundle.json").read_text())
    assert info["renderer"] == "renderer" and info["image_prior"] == "image_prior" and "bev" in info["levels"]
    for part in ("renderer/model.safetensors", "bev/c/model.safetensors", "image_prior/model.safetensors"):
        assert (bundle / part).is_file(), part
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "## Renderer" in card and "## Image prior" in card and "BEV-map-conditioned levels" in card
    assert "held-out view PSNR" in card
    html = (out / "report.html").read_text()
    assert "Optional stages" in html and "class='missing'" not in html
    for s in re.findall(r"<img src='([^']+)'", html):
        assert (out / s).is_file(), s
    # the bundle loads and samples, copied elsewhere: with its renderer, and its bev levels with a map
    moved = tmp_path / "moved"
    shutil.copytree(bundle, moved)
    res = nfldm("sample", "--run", str(moved), "--num", "1", "--sampler", "dpm", "--steps", "2", "--frames", "3",
                "--out", str(tmp_path / "s"), "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    assert Path(json.loads((tmp_path / "s" / "samples.json").read_text())["renderer"]).name == "renderer"
    data = json.loads((out / "data" / "dataset.json").read_text())
    scene = out / "data" / next(s["name"] for s in data["scenes"] if s["split"] == "test")
    res = nfldm("sample", "--run", str(moved / "bev"), "--bev", str(scene), "--num", "1", "--sampler", "dpm",
                "--steps", "2", "--frames", "3", "--out", str(tmp_path / "b"), "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((tmp_path / "b" / "samples.json").read_text())["bev"] is True
    assert load_image_prior(moved / "image_prior", "cpu")["mean_embedding"].numel() > 0


def test_optional_stages_resume(extras_run):
    """The optional stages are idempotent: a run that died after their trainings (state.json
    without them) finishes them again without training further, and re-makes the bundle."""
    out = extras_run["out"]
    state = json.loads((out / "state.json").read_text())
    before = {k: state["stages"][k]["result"] for k in EXTRAS}
    steps = {run: json.loads((out / run / "model.json").read_text())["step"]
             for run in ("renderer", "bev_ldm/g", "bev_ldm/f", "image_prior")}
    for k in (*EXTRAS, "bundle", "report"):
        del state["stages"][k]
    (out / "state.json").write_text(json.dumps(state))
    shutil.rmtree(out / "bundle")
    res = nfldm(*extras_run["args"])
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    after = json.loads((out / "state.json").read_text())
    assert sorted(after["stages"]) == sorted(STAGE_NAMES)          # the re-run ones recorded last
    for k in EXTRAS:
        assert after["stages"][k]["result"].get("steps") == before[k].get("steps")
        assert after["stages"][k]["result"].get("levels") == before[k].get("levels")
    for run, step in steps.items():
        assert json.loads((out / run / "model.json").read_text())["step"] == step, run
    assert (out / "bundle" / "renderer").is_dir() and (out / "bundle" / "bev").is_dir()
    # and a finished run is a no-op
    res = nfldm(*extras_run["args"])
    assert res.returncode == 0 and res.stdout.count(" done ") >= len(STAGE_NAMES)


def test_status_of_a_run_under_way(tmp_path):
    """--status reads a folder while it runs: finished stages with their time, the training under way
    with its step, minutes and held-out measurements, the stages to do, the config changes; a folder
    that is no quickstart run is one line."""
    from nfldm.pipeline.quickstart.config import preset
    from nfldm.pipeline.quickstart.run import open_run_dir

    out = tmp_path / "rel"
    open_run_dir(out, preset("release"), "release")
    (out / "state.json").write_text(json.dumps({"stages": {"collect": {"seconds": 120.0, "finished": "t"},
                                                           "check": {"seconds": 6.0}},
                                                "budgets": {"scene_ae": 390.0},
                                                "config_changes": [{"time": "t", "changed": {"ldm_set": [1, 2]}}]}))
    run = out / "scene_ae"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"train": {"steps": 29653, "max_minutes": 390.0}}))
    recs = [{"step": 500, "loss": 0.05, "time": 420.0, "steps_per_s": 1.3},
            {"step": 500, "val_loss": 0.061, "val_best": 0.061, "val_best_step": 500}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    res = nfldm("quickstart", "--status", "--out", str(out), "--curves", str(tmp_path / "c.png"))
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert "done     collect" in text and "running  scene_ae" in text and "to do    ldm" in text
    assert "step 500 of 29653" in text and "7.0 of 390.0 min" in text and "held-out 0.061" in text
    assert "config change t: ldm_set" in text and (tmp_path / "c.png").is_file()
    assert "not a readable quickstart run" in one_line_error(nfldm("quickstart", "--status", "--out", str(tmp_path)))


def test_release_budget_is_its_steps(tmp_path, monkeypatch):
    """budget_by "steps" (the release): a training's budget is its minutes in the plan whatever the
    stages before took, its steps come from them and no wall-clock cap is passed, so a stage that
    shares the CPU trains the planned model, only later; "minutes" (the demo) keeps the hard cap
    and shares what is left. The switch is a planning field: a run under way takes it."""
    from nfldm.pipeline.quickstart import run as qs
    from nfldm.pipeline.quickstart.run import open_run_dir, plan, train_minutes

    rel = preset("release")
    assert rel.budget_by == "steps" and preset("default").budget_by == "minutes"
    assert "budget_by" not in preset("default").to_dict() and rel.to_dict()["budget_by"] == "steps"
    planned = {r[0]: r[2] for r in plan(rel)}
    slow = {"stages": {"collect": {"seconds": 3600.0}, "check": {"seconds": 10.0},
                       "scene_ae": {"seconds": 3 * 60 * planned["scene_ae"]}}, "budgets": {}}
    assert train_minutes(rel, "latent_ae", slow) == pytest.approx(planned["latent_ae"])
    demo = preset("default")
    demo_slow = {"stages": {"collect": {"seconds": 600.0}}, "budgets": {}}
    assert train_minutes(demo, "scene_ae", demo_slow) < {r[0]: r[2] for r in plan(demo)}["scene_ae"]

    seen = {}

    def fake_train(data, run, preset_name, steps, resume, device, progress, overrides):
        seen.update(overrides, steps=steps)
        return {}

    monkeypatch.setattr(qs, "train_scene_ae", fake_train)
    ctx = {"budget": 100.0, "device": "cpu", "progress": False}
    qs._stage_scene_ae(tmp_path, rel, ctx)
    assert seen["max_minutes"] == 0 and seen["steps"] == round(100.0 * rel.steps_per_minute[0])
    qs._stage_scene_ae(tmp_path, demo, ctx)
    assert seen["max_minutes"] == 100.0
    sets = {}
    levels = qs._level_plan(rel, 100.0, rel.steps_per_minute[2:5], sets)
    assert all(sets[f"{lv}.max_minutes"] == 0 and levels[lv]["steps"] > 0 for lv in "gcf")

    # a release folder started before the switch (minutes) takes it while scene_ae trains
    out = tmp_path / "rel"
    open_run_dir(out, preset("release", budget_by="minutes"), "release")
    (out / "state.json").write_text(json.dumps({"stages": {"collect": {}, "check": {}}, "budgets": {"scene_ae": 390.0}}))
    state = open_run_dir(out, rel, "release")
    assert list(state["config_changes"][-1]["changed"]) == ["budget_by"]
    with pytest.raises(ValueError, match="budget_by"):
        preset("release", budget_by="hours")


def test_card_time_counts_every_session_of_a_stage_on_its_machine():
    from nfldm.pipeline.quickstart.card import stage_seconds, time_by_machine

    state = {"stages": {
        "collect": {"seconds": 120.0, "machine": "cpu (2 cores)", "result": {"scenes": 8}},
        # a training resumed in a later session: its own clock saw only the last part, the trainer's all
        "scene_ae": {"seconds": 60.0, "machine": "cuda (NVIDIA H200)", "result": {"last": {"time": 300.0}}},
        "ldm": {"seconds": 100.0, "machine": "cpu (2 cores)",
                "result": {"last": {"g": {"time": 1800.0}, "c": {"time": 3600.0}, "f": {"time": 1800.0}}}},
        "old": {"seconds": 30.0, "result": {}},
    }}
    assert stage_seconds(state["stages"]["scene_ae"]) == 300.0
    assert stage_seconds(state["stages"]["ldm"]) == 7200.0 and stage_seconds(state["stages"]["collect"]) == 120.0
    text = time_by_machine(state)
    assert text.startswith("2.1 h (") and "2.0 h on cpu (2 cores)" in text
    assert "5.0 min on cuda (NVIDIA H200)" in text and "0.5 min on machine not recorded" in text


def test_one_optional_stage_trains_alone_beside_the_run(tmp_path, monkeypatch):
    """nfldm quickstart --only STAGE: the stage's own training with the recipe's budget (the plan's,
    as the run's process would give it), state.json left to the run's process; refused for a
    folder of other options, a recipe budgeted by minutes, a stage the config does not train, or
    one whose input has not been made."""
    from nfldm.pipeline.quickstart import run as qs
    from nfldm.pipeline.quickstart.run import QuickstartError, open_run_dir, plan, train_stage_alone

    rel = preset("release")
    out = tmp_path / "rel"
    with pytest.raises(QuickstartError, match="not a quickstart run"):
        train_stage_alone(out, rel, "release", "image_prior")
    open_run_dir(out, rel, "release")
    with pytest.raises(QuickstartError, match="image_prior reads what check writes"):
        train_stage_alone(out, rel, "release", "image_prior")
    (out / "state.json").write_text(json.dumps({"stages": {"collect": {}, "check": {}}, "budgets": {}}))
    before = (out / "state.json").read_bytes()
    seen = {}
    monkeypatch.setitem(qs.RUNNERS, "image_prior", lambda o, c, ctx: seen.update(out=o, budget=ctx["budget"]) or {"ok": 1})
    assert train_stage_alone(out, rel, "release", "image_prior", log=lambda *a: None) == {"ok": 1}
    assert seen == {"out": out.resolve(), "budget": pytest.approx({r[0]: r[2] for r in plan(rel)}["image_prior"])}
    assert (out / "state.json").read_bytes() == before
    with pytest.raises(QuickstartError, match="bev_ldm reads what encode_latents writes"):
        train_stage_alone(out, rel, "release", "bev_ldm")
    with pytest.raises(QuickstartError, match="other options.*num_samples"):
        train_stage_alone(out, preset("release", num_samples=3), "release", "image_prior")
    with pytest.raises(QuickstartError, match="budgeted by steps"):
        train_stage_alone(out, preset("release", budget_by="minutes"), "release", "image_prior")
    with pytest.raises(QuickstartError, match="does not train renderer"):
        train_stage_alone(out, preset("release", extras=("image_prior",)), "release", "renderer")
    # a finished stage is not trained again
    (out / "state.json").write_text(json.dumps({"stages": {"check": {}, "image_prior": {"result": {"steps": 5}}}}))
    assert train_stage_alone(out, rel, "release", "image_prior", log=lambda *a: None) == {"steps": 5}
    # through the CLI: one clear line
    line = one_line_error(nfldm("quickstart", "--preset", "release", "--out", str(out), "--only", "bev_ldm"))
    assert "encode_latents" in line
