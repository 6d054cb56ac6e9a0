"""The ViZDoom collector on the real engine and the Freedoom maps shipped with vizdoom."""

import json
import os

import numpy as np
import pytest
import torch

from nfldm import camera
from nfldm.data.check import check_path
from nfldm.data.loader import SceneDataset
from nfldm.data.vizdoom import VizdoomConfig, all_maps, collect_dataset, depth_validation, map_split


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("vizdoom")
    run_dir = tmp_path_factory.mktemp("cwd")
    old = os.getcwd()
    os.chdir(run_dir)
    try:
        collect_dataset(VizdoomConfig(scenes=3, frames=16, seed=0), root / "data", progress=False)
    finally:
        os.chdir(old)
    return root / "data", run_dir


def test_dataset_is_valid_and_leaves_no_stray_files(dataset):
    root, run_dir = dataset
    assert check_path(root) == []
    assert os.listdir(run_dir) == []  # no _vizdoom.ini / _vizdoom/ where the command ran
    index = json.loads((root / "dataset.json").read_text())
    assert sorted(s["split"] for s in index["scenes"]) == ["test", "train", "val"]
    groups = {s["split"]: s["group"] for s in index["scenes"]}
    assert len(set(groups.values())) == 3


def test_map_split_is_by_map_and_covers_all_maps():
    split = map_split()
    seen = [m for maps in split.values() for m in maps]
    assert sorted(seen) == sorted(all_maps()) and len(set(seen)) == len(seen) == 68
    assert len(split["test"]) >= 6 and len(split["val"]) >= 6


def test_collection_is_reproducible(tmp_path):
    a = collect_dataset(VizdoomConfig(scenes=1, frames=6, seed=3), tmp_path / "a", progress=False)
    b = collect_dataset(VizdoomConfig(scenes=1, frames=6, seed=3), tmp_path / "b", progress=False)
    ta = json.loads((tmp_path / "a/scene_0000/transforms.json").read_text())
    tb = json.loads((tmp_path / "b/scene_0000/transforms.json").read_text())
    assert ta["frames"] == tb["frames"] and a["scenes"] == b["scenes"] == 1
    for f in ta["frames"]:
        assert (tmp_path / "a/scene_0000" / f["file_path"]).read_bytes() == (tmp_path / "b/scene_0000" / f["file_path"]).read_bytes()


def _reprojection(sample, pairs, intr_override=None):
    """Unproject frame i's depth, project into frame j; on pixels that land inside j with valid
    depth in both, return (relative depth errors, colour differences of depth-consistent pixels)."""
    rgb, depth, valid = sample["images"], sample["depth"], sample["depth_valid"]
    intr = sample["intrinsics"].double() if intr_override is None else intr_override
    c2w = sample["c2w"].double()
    V, _, H, W = rgb.shape
    errs, cols = [], []
    for i, j in pairs:
        pts = camera.unproject_depth(depth[i].double(), intr[i], c2w[i]).reshape(-1, 3)
        uv, z = camera.project(pts, intr[j], c2w[j])
        u, v = uv[:, 0].floor().long(), uv[:, 1].floor().long()
        ok = valid[i].reshape(-1) & (z > 0.1) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        # keep points whose projection is near a pixel centre, so the nearest pixel samples them
        frac = uv - uv.floor() - 0.5
        ok &= (frac.abs() < 0.35).all(-1)
        u, v, z = u[ok], v[ok], z[ok]
        dj = depth[j][v, u].double()
        vj = valid[j][v, u]
        rel = ((z - dj).abs() / dj)[vj]
        errs.append(rel)
        ci = rgb[i].permute(1, 2, 0).reshape(-1, 3)[ok][vj]
        cj = rgb[j].permute(1, 2, 0)[v, u][vj]
        cols.append((ci - cj).abs().mean(-1)[rel < 0.03])
    return torch.cat(errs), torch.cat(cols)


def test_geometric_consistency_between_frames(dataset):
    """Poses, intrinsics and depth fit together: frame i's depth reprojected into frame j agrees
    with frame j's depth (median relative error < 2 %) and so do the colours."""
    root, _ = dataset
    ds = SceneDataset(root, split="train")
    sample = ds[0]
    V = sample["images"].shape[0]
    pairs = [(i, j) for i in range(V) for j in range(V) if 0 < abs(i - j) <= 3]
    rel, col = _reprojection(sample, pairs)
    assert rel.numel() > 5000
    median = rel.median().item()
    assert median < 0.02, f"median relative depth error {median:.4f}"
    assert (rel < 0.05).float().mean() > 0.75
    # colours of geometrically consistent pixels agree far better than random pixel pairs
    rgb = sample["images"]
    rand = (rgb[0].reshape(3, -1)[:, torch.randperm(rgb.shape[-1] ** 2)] - rgb[1].reshape(3, -1)).abs().mean(0)
    assert col.median() < 0.04 and col.median() < 0.4 * rand.median()
    # the check is strict: square pixels (fy = fx, the classic mistake) break it
    wrong = sample["intrinsics"].double().clone()
    wrong[:, 1] = wrong[:, 0]
    rel_wrong, _ = _reprojection(sample, pairs, intr_override=wrong)
    assert rel_wrong.median() > 2 * median


def test_bev_matches_camera_floor(dataset):
    """The BEV's floor height under each camera is the camera's floor (eye height 41 units)."""
    root, _ = dataset
    ds = SceneDataset(root, split="train")
    sample = ds[0]
    meta = json.loads((root / "scene_0000/transforms.json").read_text())
    bev = np.load(root / "scene_0000" / meta["nfldm"]["bev_file_path"])
    bounds = sample["bounds"].numpy()
    res = bev["floor"].shape[0]
    pos = sample["c2w"][:, :3, 3].numpy()
    ij = np.floor((pos[:, :2] - bounds[0, :2]) / (bounds[1, :2] - bounds[0, :2]) * res).astype(int)
    floor = bev["floor"][ij[:, 0], ij[:, 1]]
    assert (bev["inside"][ij[:, 0], ij[:, 1]] == 1).all()
    eye = 41 * 3 / 128
    assert np.median(np.abs(pos[:, 2] - eye - floor)) < 0.05
    assert 0 < bev["wall"].mean() < 0.5


def test_depth_against_exact_geometry():
    """Median relative error of the depth on eye-level walls within 15 m is at most 3 %."""
    r = depth_validation(all_maps()[::30], steps=25)
    assert r["pixels"] > 1000
    assert r["calibrated_buffer"]["median"] <= 0.03
    assert r["final"]["median"] <= 0.03
