"""The ViZDoom collector on the real engine and the Freedoom maps shipped with vizdoom."""

import json
import os

import numpy as np
import pytest
import torch

from nfldm import camera
from nfldm.data.check import check_path
from nfldm.data.consistency import neighbour_pairs, reprojection_errors
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


def test_collection_in_processes_matches_one_process(tmp_path):
    """--workers: the same visits, scene names, poses and maps as one process; frames equal except
    animated surfaces (each process starts its maps in a game of its own)."""
    from nfldm.data.vizdoom import collection_jobs

    cfg = VizdoomConfig(scenes=7, frames=6, seed=1)
    jobs = collection_jobs(cfg)
    assert sum(j["count"] for j in jobs) == 7 and [j["start"] for j in jobs] == sorted(j["start"] for j in jobs)
    assert {j["split"] for j in jobs} == {"train", "val", "test"}
    collect_dataset(cfg, tmp_path / "one", progress=False)
    summary = collect_dataset(cfg, tmp_path / "two", progress=False, workers=2)
    assert summary["scenes"] == 7
    index = json.loads((tmp_path / "one/dataset.json").read_text())
    assert index == json.loads((tmp_path / "two/dataset.json").read_text())
    same = total = 0
    for e in index["scenes"]:
        a, b = tmp_path / "one" / e["name"], tmp_path / "two" / e["name"]
        assert json.loads((a / "transforms.json").read_text()) == json.loads((b / "transforms.json").read_text())
        assert (a / "bev.npz").read_bytes() == (b / "bev.npz").read_bytes()
        for f in sorted((a / "images").iterdir()):
            total += 1
            same += f.read_bytes() == (b / "images" / f.name).read_bytes()
    assert total == 7 * 6 and same >= 0.75 * total
    assert not list((tmp_path / "two").glob(".*partial*"))

def test_geometric_consistency_between_frames(dataset):
    """Poses, intrinsics and depth fit together: frame i's depth reprojected into frame j agrees
    with frame j's depth (median relative error < 1 %) and so do the colours."""
    root, _ = dataset
    ds = SceneDataset(root, split="train")
    sample = ds[0]
    V = sample["images"].shape[0]
    pairs = neighbour_pairs(V)
    rel, col = reprojection_errors(sample, pairs)
    assert rel.numel() > 5000
    median = rel.median().item()
    assert median < 0.01, f"median relative depth error {median:.4f}"
    assert (rel < 0.05).float().mean() > 0.75
    # colours of geometrically consistent pixels agree far better than random pixel pairs
    rgb = sample["images"]
    rand = (rgb[0].reshape(3, -1)[:, torch.randperm(rgb.shape[-1] ** 2)] - rgb[1].reshape(3, -1)).abs().mean(0)
    assert col.median() < 0.04 and col.median() < 0.4 * rand.median()
    # the check is strict: a 10 % wrong focal length breaks it (a wrong fy alone cannot show
    # between level cameras; test_floor_height_needs_doom_pixel_aspect covers it)
    wrong = sample["intrinsics"].double().clone()
    wrong[:, :2] *= 1.1
    rel_wrong, _ = reprojection_errors(sample, pairs, intr=wrong)
    assert rel_wrong.median() > 2 * median


def test_floor_height_needs_doom_pixel_aspect(dataset):
    """Depth of the bottom rows, unprojected to the world where the BEV floor is level with the
    camera's own floor, lies on that floor (within 2 cm) with fy = 1.2 fx; with square pixels
    (fy = fx) it does not."""
    root, _ = dataset
    sample = SceneDataset(root, split="train")[0]
    bev = np.load(root / "scene_0000" / "bev.npz")
    bounds = sample["bounds"].numpy()
    res = bev["floor"].shape[0]

    def floor_error(intr):
        H = sample["depth"].shape[1]
        pts = camera.unproject_depth(sample["depth"].double(), intr, sample["c2w"].double())
        pts, ok = pts[:, -H // 8 :].reshape(-1, 3).numpy(), sample["depth_valid"][:, -H // 8 :].reshape(-1).numpy()
        ij = np.floor((pts[:, :2] - bounds[0, :2]) / (bounds[1, :2] - bounds[0, :2]) * res).astype(int)
        ok &= ((ij >= 0) & (ij < res)).all(1)
        floor = bev["floor"][ij[ok, 0], ij[ok, 1]]
        own = np.abs(floor - (sample["c2w"][0, 2, 3].item() - 41 * 3 / 128)) < 1e-3
        assert own.sum() > 100
        return np.median(np.abs(pts[ok, 2] - floor)[own])

    intr = sample["intrinsics"].double()
    square = intr.clone()
    square[:, 1] = square[:, 0]
    assert floor_error(intr) < 0.02
    assert floor_error(square) > 0.1


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


def test_level_map_reproduces_the_scene_map_and_reaches_past_it(dataset, tmp_path):
    """nfldm data level-map over a scene's own box gives the collector's bev.npz; over a box
    three times as wide it holds that map in its middle and more of the level around it;
    a scene from elsewhere is refused with one line naming its transforms.json."""
    from nfldm.data.bev import crop_bev, read_bev_file
    from nfldm.data.format import DataError
    from nfldm.data.vizdoom import level_bev

    root, _ = dataset
    scene = root / "scene_0000"
    own = read_bev_file(scene / "bev.npz")
    (x0, y0), (x1, y1) = own["bounds_xy"].tolist()
    same = level_bev(scene, [x0, y0, x1, y1], res_per_metre=own["wall"].shape[0] / (x1 - x0))
    for k in ("wall", "inside"):
        assert np.array_equal(same[k], own[k])
    assert np.allclose(same["floor"], own["floor"], equal_nan=True)
    w = x1 - x0
    wide = level_bev(scene, [x0 - w, y0 - w, x1 + w, y1 + w], res_per_metre=own["wall"].shape[0] / w)
    assert wide["wall"].shape[0] == 3 * own["wall"].shape[0]
    middle = crop_bev(wide, [x0, y0, x1, y1])
    assert (middle["wall"] == own["wall"]).mean() > 0.99 and (middle["inside"] == own["inside"]).mean() > 0.99
    assert wide["inside"].sum() > own["inside"].sum()
    other = tmp_path / "other"
    other.mkdir()
    (other / "transforms.json").write_text(json.dumps({"frames": []}))
    with pytest.raises(DataError, match="transforms.json"):
        level_bev(other, [0, 0, 1, 1])


def test_depth_against_exact_geometry():
    """Median relative error of the depth on eye-level walls within 15 m is at most 3 %."""
    r = depth_validation(all_maps()[::30], steps=25)
    assert r["pixels"] > 1000
    assert r["calibrated_buffer"]["median"] <= 0.03
    assert r["final"]["median"] <= 0.03


def test_sector_lookup_matches_brute_force():
    """The geometry read from the WAD is what the engine reports in ``state.sectors``, and the
    banded point-in-sector lookup (per point and on a grid) agrees with the plain even-odd rule
    over all segments."""
    from nfldm.data.doom_map import DoomMap
    from nfldm.data.vizdoom import _private_cwd, load_map, make_game, wad_path

    with _private_cwd():
        geo = make_game("freedoom2.wad", 64, 0, sectors=True)
        try:
            dm = load_map(geo, "MAP15")
        finally:
            geo.close()
    wad = DoomMap.from_wad(wad_path("freedoom2.wad"), "MAP15")
    for k in ("lines", "front", "back", "blocking", "floor", "ceil"):
        assert np.array_equal(getattr(wad, k), getattr(dm, k)), k
    assert all(np.array_equal(a, b) for a, b in zip(wad.sector_lines, dm.sector_lines, strict=True))
    rng = np.random.default_rng(0)
    pts = rng.uniform(dm.lines[:, :2].min(0), dm.lines[:, :2].max(0), (500, 2))
    segs = np.concatenate(dm.sector_lines)
    owner = np.concatenate([np.full(len(s), i) for i, s in enumerate(dm.sector_lines)])
    area = np.array([np.ptp(s[:, [0, 2]]) * np.ptp(s[:, [1, 3]]) for s in dm.sector_lines])
    x1, y1, x2, y2 = segs.T
    ref = []
    for px, py in pts:
        with np.errstate(all="ignore"):
            cross = ((y1 > py) != (y2 > py)) & (px < x1 + (py - y1) * (x2 - x1) / (y2 - y1))
        odd = np.bincount(owner, weights=cross, minlength=len(dm.sector_lines)) % 2 == 1
        ref.append(int(np.argmin(np.where(odd, area, np.inf))) if odd.any() else -1)
    got = dm.sector_at(pts)
    assert (got == np.array(ref)).all() and 0.1 < (got >= 0).mean() < 0.9
    xs, ys = np.sort(pts[:40, 0]), np.sort(pts[:40, 1])
    grid = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)
    assert (dm.sector_grid(xs, ys) == dm.sector_at(grid).reshape(40, 40)).all()


def test_look_from_the_wad_and_add_look(dataset, tmp_path):
    """The collector writes each map's look (sector light, flat and texture colours from the WAD);
    add-look gives a map written without one the same look, keeps its geometry, skips maps that
    have one, and refuses a map whose walls are not the level's."""
    import shutil

    from nfldm.data.bev import BEV_KEYS, LOOK_KEYS, has_look, read_bev_file, write_bev
    from nfldm.data.doom_map import DoomMap, wad_colours
    from nfldm.data.format import DataError
    from nfldm.data.vizdoom import add_look, wad_path

    colours = wad_colours(wad_path("freedoom2.wad"))
    assert len(colours) > 500 and all(v.shape == (3,) and (0 <= v).all() and (v <= 1).all() for v in colours.values())
    dm = DoomMap.from_wad(wad_path("freedoom2.wad"), "MAP15")
    assert dm.light.shape == dm.floor.shape and (dm.light >= 0).all() and (dm.light <= 255).all()
    assert dm.line_rgb.shape == (len(dm.lines), 3) and len(np.unique(dm.line_rgb, axis=0)) > 5
    root, _ = dataset
    own = read_bev_file(root / "scene_0000" / "bev.npz")
    assert has_look(own)
    inside = own["inside"] > 0
    assert np.isfinite(own["light"][inside]).all() and np.isnan(own["light"][~inside]).all()
    walls = own["wall"] > 0
    assert np.isfinite(own["wall_r"][walls]).all() and np.isnan(own["wall_r"][~walls]).all()
    # a copy of the dataset whose maps lost their look gets it back exactly
    data = tmp_path / "data"
    shutil.copytree(root, data)
    for s in ("scene_0000", "scene_0001"):
        write_bev(data / s / "bev.npz", {k: v for k, v in read_bev_file(data / s / "bev.npz").items()
                                         if k not in LOOK_KEYS})
    assert not has_look(read_bev_file(data / "scene_0000" / "bev.npz"))
    assert add_look(data, progress=False) == {"scenes": 3, "added": 2, "skipped": 1}
    back = read_bev_file(data / "scene_0000" / "bev.npz")
    for k in (*BEV_KEYS, *LOOK_KEYS):
        assert np.array_equal(back[k], own[k], equal_nan=True), k
    assert add_look(data, progress=False)["added"] == 0
    # walls that are not the level's: refused, naming the file, the file left as it was
    bad = {k: v for k, v in back.items() if k not in LOOK_KEYS}
    bad["wall"] = np.roll(bad["wall"], 3, 0)
    write_bev(data / "scene_0001" / "bev.npz", bad)
    before = (data / "scene_0001" / "bev.npz").read_bytes()
    with pytest.raises(DataError, match="scene_0001.*bev.npz: its walls differ"):
        add_look(data, progress=False)
    assert (data / "scene_0001" / "bev.npz").read_bytes() == before
