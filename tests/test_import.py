"""nfldm data import: nerfstudio and GSN captures of a ray-cast room -> datasets the presets train on."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from nfldm.cli import main as cli_main
from nfldm.data import DataError, SceneDataset, check_path, read_dataset, read_transforms
from nfldm.data.format import load_frame
from nfldm.data.importer import (
    ImportConfig,
    _sample_depth,
    estimate_up,
    import_dataset,
    parse_box,
    parse_size,
    region_split,
    rotation_to_z,
)
from room import path, render, write_gsn_room, write_nerfstudio_room


def _angle(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return math.degrees(math.acos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1)))


def _train_and_render(data, tmp_path, overrides=None):
    """A smoke stage 1 on the imported data, then a fly-through of its first test (or train) scene."""
    from nfldm.pipeline.renderer import train_scene_ae
    from nfldm.scene_ae.train import render_flythrough

    run = tmp_path / "run"
    res = train_scene_ae(data, run, "smoke", progress=False, overrides={"batch_size": 1, **(overrides or {})})
    assert math.isfinite(res["loss"])
    index = read_dataset(data)
    split = "test" if index.split("test") else "train"
    out = render_flythrough(run, data, None, tmp_path / "fly.gif", split=split, num_frames=4, fps=4)
    assert out["frames"] == 4
    return out


def _true_check(summary, out, truth, n_frames=3):
    """Imported frames against the ray-cast truth: depth at the imported intrinsics, camera
    rotations and relative positions. Returns (median relative depth error, max rotation error
    in degrees, max relative position error in metres)."""
    depth_errs, rot_errs, pos_errs = [], [], []
    for w in summary["windows"]:
        meta = read_transforms(out / w["name"])
        ids = meta.extra["import"]["source_frames"]
        length = 56.0 if "big" in str(meta.extra["import"]["from"]) else 14.0
        for j in range(min(n_frames, len(ids))):
            _, depth, valid = load_frame(meta, j)
            exact = render(truth["c2w"][ids[j]], meta.intr[j], meta.w, meta.h, length)[1]
            depth_errs.append(np.median(np.abs(depth[valid] - exact[valid]) / exact[valid]))
            rot_errs.append(_angle_between(meta.c2w[j][:3, :3], truth["c2w"][ids[j]][:3, :3]))
        true_rel = truth["c2w"][ids][:, :3, 3] - truth["c2w"][ids[0]][:3, 3]
        imp_rel = meta.c2w[:, :3, 3] - meta.c2w[0, :3, 3]
        pos_errs.append(np.abs(true_rel - imp_rel).max())
    return float(np.median(depth_errs)), float(max(rot_errs)), float(max(pos_errs))


def _angle_between(R1, R2) -> float:
    return math.degrees(math.acos(np.clip((np.trace(R1.T @ R2) - 1) / 2, -1, 1)))


# --------------------------------------------------------------------------------------
# units
# --------------------------------------------------------------------------------------


def test_parse_size_and_box():
    assert parse_size("64") == (64, 64)
    assert parse_size("96x72") == (96, 72)
    assert parse_box("16x16x8") == (16.0, 16.0, 8.0)
    for bad in ("0", "64x", "axb", "1x2x3"):
        with pytest.raises(ValueError):
            parse_size(bad)
    with pytest.raises(ValueError):
        parse_box("16x16")


@pytest.mark.parametrize("up", [(0, 1, 0), (0, 0, -1), (1, 2, 3), (0, 0, 1), (-0.2, -1, 0.1)])
def test_rotation_to_z_is_a_rotation_taking_up_to_z(up):
    R = rotation_to_z(np.array(up, float))
    assert np.allclose(R.T @ R, np.eye(3), atol=1e-12) and np.isclose(np.linalg.det(R), 1)
    assert np.allclose(R @ (np.array(up) / np.linalg.norm(up)), [0, 0, 1], atol=1e-12)


def test_depth_sampling_is_exact_on_a_plane_and_never_blends_an_edge():
    h, w = 20, 30
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    plane = 1 / (0.2 + 0.002 * u + 0.001 * v)  # a plane's z-depth: 1/z affine in the image
    xs, ys = np.linspace(3.3, 25.1, 11), np.linspace(2.2, 17.9, 7)
    U, Vv = np.meshgrid(xs, ys)
    assert np.allclose(_sample_depth(plane, xs, ys), 1 / (0.2 + 0.002 * U + 0.001 * Vv), rtol=1e-5)
    step = np.where(u < 15, 2.0, 6.0)  # an edge: every sample is one of the two depths
    got = _sample_depth(step, np.linspace(0.5, 29.5, 40), ys)
    assert set(np.unique(got).tolist()) == {2.0, 6.0}
    holes = plane.copy()
    holes[:, 10:12] = 0  # invalid pixels stay invalid, never average into their neighbours
    got = _sample_depth(holes, np.array([10.9, 11.5]), ys)
    assert (got == 0).all()


def test_up_from_the_floor_beats_the_mean_of_tilted_cameras():
    c2w = path(24, 14.0, tilt_deg=12, seed=3)
    intr = [40.0, 40.0, 32.0, 32.0]
    pts = []
    from nfldm.camera import unproject_depth
    for T in c2w:
        d = render(T, intr, 64, 64, 14.0)[1]
        pts.append(unproject_depth(torch.from_numpy(d), torch.tensor(intr, dtype=torch.float64),
                                   torch.from_numpy(T)).numpy()[::3, ::3].reshape(-1, 3))
    up, info = estimate_up(c2w, np.concatenate(pts))
    assert info["surfaces"] is not None
    assert _angle(up, [0, 0, 1]) < 0.2 < _angle(info["cameras_up"], [0, 0, 1])


def test_region_split_keeps_test_windows_apart_from_train():
    cfg = ImportConfig()
    wins = [{"centre": np.array([x, 4.0])} for x in np.arange(8.0, 80.0, 8.0)]  # 9 windows, stride 8, box 16
    out = region_split(wins, cfg)
    by = {sp: [w["centre"][0] for w in out if w["split"] == sp] for sp in ("train", "val", "test")}
    assert by["test"] and by["val"] and by["train"]
    for a in ("train", "val"):
        for b in ("val", "test"):
            if a != b:
                assert all(abs(x - y) >= 16 for x in by[a] for y in by[b])
    assert region_split(wins[:2], cfg)[0]["split"] == "train"


# --------------------------------------------------------------------------------------
# whole imports
# --------------------------------------------------------------------------------------


def test_nerfstudio_scene_y_up_non_square_mm_depth(tmp_path):
    src = tmp_path / "room"
    truth = write_nerfstudio_room(src, n=16, w=96, h=72, tilt_deg=6)
    warnings: list[str] = []
    assert check_path(src, warnings) == []
    assert len(warnings) == 1 and str(src / "transforms.json") in warnings[0] and "nfldm data import" in warnings[0]

    out = tmp_path / "ds"
    summary = import_dataset(src, out, ImportConfig(min_frames=6), progress=False, log=lambda s: None)
    warnings = []
    assert check_path(out, warnings) == [] and warnings == []
    scene = summary["scenes"][0]
    assert _angle(scene["up"], [0, 1, 0]) < 0.3  # the source world's up is +y
    assert scene["up_estimate"]["surfaces"] is not None
    depth_err, rot_err, pos_err = _true_check(summary, out, truth)
    assert depth_err < 0.01 and rot_err < 0.3 and pos_err < 0.03
    rep = summary["reprojection_median_rel_error"]
    assert rep["imported_same_pairs"] < 0.02 and rep["imported_windows"] < 0.02
    assert (out / "import_map.png").is_file() and json.loads((out / "import.json").read_text())["windows"]
    ds = SceneDataset(out, "train", num_views=4)
    assert ds[0]["images"].shape[-2:] == (64, 64)
    _train_and_render(out, tmp_path)


def test_non_square_import_trains_a_non_square_stage_1(tmp_path):
    src = tmp_path / "room"
    write_nerfstudio_room(src, n=12, w=96, h=72)
    out = tmp_path / "ds"
    import_dataset(src, out, ImportConfig(size=(64, 48), min_frames=6), progress=False, log=lambda s: None)
    meta = read_transforms(out / read_dataset(out).scenes[0].name)
    assert (meta.w, meta.h) == (64, 48)
    _train_and_render(out, tmp_path, {"image_size": 48, "image_width": 64})


def test_gsn_vizdoom_folders_keep_their_split_and_units(tmp_path):
    src = tmp_path / "gsn"
    truth = write_gsn_room(src / "train" / "00", n=16)
    write_gsn_room(src / "test" / "01", n=16, seed=1)
    out = tmp_path / "ds"
    summary = import_dataset(src, out, ImportConfig(min_frames=6), progress=False, log=lambda s: None)
    assert check_path(out) == []
    assert summary["splits"] == {"train": 1, "val": 0, "test": 1}
    assert math.isclose(summary["scenes"][0]["units_per_metre"], 128 / 3)
    assert _angle(summary["scenes"][0]["up"], [0, 1, 0]) < 0.3
    train = [w for w in summary["windows"] if w["split"] == "train"]
    depth_err, rot_err, pos_err = _true_check({"windows": train}, out, truth)
    assert depth_err < 0.05 and rot_err < 0.3 and pos_err < 0.03  # uint8 depth: 0.17 m steps
    assert summary["reprojection_median_rel_error"]["imported_windows"] < 0.05
    _train_and_render(out, tmp_path)


def test_a_large_scene_becomes_windows_split_by_region(tmp_path):
    src = tmp_path / "big"
    truth = write_nerfstudio_room(src, n=48, length=56.0)
    out = tmp_path / "ds"
    summary = import_dataset(src, out, ImportConfig(min_frames=6), progress=False, log=lambda s: None)
    assert check_path(out) == []
    wins = summary["windows"]
    assert len(wins) >= 3 and {w["split"] for w in wins} >= {"train", "test"}
    for a in wins:
        for b in wins:
            if a["split"] != b["split"]:  # no voxel of a test window is in a train window
                assert np.abs(np.subtract(a["centre_m"], b["centre_m"])).max() >= 16 - 1e-6
    index = read_dataset(out)
    for e in index.scenes:
        assert np.allclose(e.bounds, [[-8, -8, -2], [8, 8, 6]])
    depth_err, rot_err, pos_err = _true_check(summary, out, truth, n_frames=1)
    assert depth_err < 0.01 and pos_err < 0.03
    _train_and_render(out, tmp_path)


# --------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------


def test_bad_sources_get_one_line_and_nothing_is_written(tmp_path, capsys):
    src = tmp_path / "gsn"
    write_gsn_room(src / "00", n=4)
    cams = json.loads((src / "00" / "cameras.json").read_text())

    def fails(expect: str):
        out = tmp_path / "out"
        with pytest.raises(DataError, match=expect):
            import_dataset(src, out, ImportConfig(min_frames=2), progress=False, log=lambda s: None)
        assert not out.exists()

    (src / "00" / "cameras.json").write_text("{not json")
    fails("cameras.json: cannot read JSON")
    bad = json.loads(json.dumps(cams))
    bad[1]["Rt"][0][0] = float("nan")
    (src / "00" / "cameras.json").write_text(json.dumps(bad).replace("NaN", "NaN"))
    fails("entry 1 'Rt' has non-finite")
    bad = json.loads(json.dumps(cams))
    bad[2]["Rt"][0][0] = 3.0
    (src / "00" / "cameras.json").write_text(json.dumps(bad))
    fails("entry 2 'Rt' is not a rigid")
    (src / "00" / "cameras.json").write_text(json.dumps(cams))
    (src / "00" / "003_depth.png").unlink()
    fails("003_depth.png: depth file is missing")

    # an existing dataset is never overwritten; the CLI says so in one line and exits 2
    ok = tmp_path / "room"
    write_nerfstudio_room(ok, n=8)
    keep = tmp_path / "existing"
    keep.mkdir()
    (keep / "dataset.json").write_text("{}")
    assert cli_main(["data", "import", str(ok), "--out", str(keep), "--min-frames", "4", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(keep) in err[0] and "already exists" in err[0]
    assert (keep / "dataset.json").read_text() == "{}"
    assert cli_main(["data", "import", str(tmp_path / "nothing"), "--out", str(tmp_path / "o2")]) == 2
    assert "does not exist" in capsys.readouterr().err
