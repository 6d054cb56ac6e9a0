"""check_path and the loader on corrupted copies of a small synthetic dataset.

Each corruption returns (offending file, words the problem line must contain); check_path must
report a line starting with that file and containing the words, and SceneDataset must raise a
DataError whose message names the file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from data_fixtures import SCENES, make_dataset
from nfldm.data import DataError, SceneDataset, check_path

S0 = "scene_0000"


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    root = tmp_path_factory.mktemp("template")
    make_dataset(root)
    return root


@pytest.fixture
def root(template, tmp_path) -> Path:
    dst = tmp_path / "ds"
    shutil.copytree(template, dst)
    return dst


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))  # json writes NaN as the (accepted) literal NaN


def _edit_transforms(root: Path, edit, scene: str = S0) -> Path:
    tf = root / scene / "transforms.json"
    _edit_json(tf, edit)
    return tf


def _edit_scenes(root: Path, edit) -> Path:
    dj = root / "dataset.json"
    _edit_json(dj, lambda d: edit({s["name"]: s for s in d["scenes"]}, d))
    return dj


# --- corruptions: root -> (offending file, expected words) ---------------------------------


def delete_png(root):
    p = root / S0 / "images" / "00001.png"
    p.unlink()
    return p, "image file is missing"


def truncate_png(root):
    p = root / S0 / "images" / "00002.png"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p, "cannot decode image file"


def garbage_depth(root):
    p = root / S0 / "depth" / "00000.png"
    p.write_bytes(b"this is not a png")
    return p, "cannot decode depth file"


def small_depth(root):
    p = root / S0 / "depth" / "00002.png"
    PIL.Image.fromarray(np.full((32, 32), 2000, np.uint16)).save(p)
    return p, "depth image is 32x32, expected 64x64"


def small_image(root):
    p = root / S0 / "images" / "00003.png"
    PIL.Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(p)
    return p, "image is 32x32, expected 64x64"


def eight_bit_depth(root):
    p = root / S0 / "depth" / "00001.png"
    PIL.Image.fromarray(np.full((64, 64), 7, np.uint8)).save(p)
    return p, "depth image mode is 'L'"


def grey_image(root):
    p = root / S0 / "images" / "00001.png"
    PIL.Image.fromarray(np.full((64, 64), 7, np.uint8)).save(p)
    return p, "image mode is 'L'"


def nan_pose(root):
    return _edit_transforms(root, lambda d: d["frames"][1]["transform_matrix"][0].__setitem__(3, float("nan"))), \
        "non-finite"


def scaled_rotation(root):
    def edit(d):
        m = np.array(d["frames"][2]["transform_matrix"])
        m[:3, :3] *= 2
        d["frames"][2]["transform_matrix"] = m.tolist()
    return _edit_transforms(root, edit), "not rigid"


def pose_not_4x4(root):
    return _edit_transforms(root, lambda d: d["frames"][0]["transform_matrix"].pop()), "not a 4x4"


def missing_fl_x(root):
    return _edit_transforms(root, lambda d: d.pop("fl_x")), "missing key 'fl_x'"


def missing_depth_path(root):
    return _edit_transforms(root, lambda d: d["frames"][3].pop("depth_file_path")), \
        "missing key 'depth_file_path'"


def missing_frames(root):
    return _edit_transforms(root, lambda d: d.pop("frames")), "missing key 'frames'"


def negative_focal(root):
    return _edit_transforms(root, lambda d: d.__setitem__("fl_y", -3.0)), "'fl_y' must be a positive"


def nan_cx(root):
    return _edit_transforms(root, lambda d: d["frames"][0].__setitem__("cx", float("nan"))), \
        "'cx' must be a finite number"


def invalid_json(root):
    p = root / S0 / "transforms.json"
    p.write_text(p.read_text()[:-20])
    return p, "invalid JSON"


def missing_transforms(root):
    p = root / S0 / "transforms.json"
    p.unlink()
    return p, "file is missing"


def missing_dataset_json(root):
    p = root / "dataset.json"
    p.unlink()
    return p, "file is missing"


def bad_split(root):
    return _edit_scenes(root, lambda s, d: s[S0].__setitem__("split", "training")), \
        "split must be one of train, val, test"


def group_in_two_splits(root):
    return _edit_scenes(root, lambda s, d: s["scene_0002"].__setitem__("group", s[S0]["group"])), \
        "a group may appear in one split only"


def empty_train(root):
    def edit(s, d):
        for e in s.values():
            e["split"] = "test"
    return _edit_scenes(root, edit), "train split is empty"


def duplicate_scene(root):
    return _edit_scenes(root, lambda s, d: d["scenes"].append(dict(s[S0]))), "listed more than once"


def missing_folder(root):
    shutil.rmtree(root / "scene_0001")
    return root / "dataset.json", "scene folder does not exist"


def bounds_not_2x3(root):
    return _edit_scenes(root, lambda s, d: s[S0].__setitem__("bounds", [[0, 0, 0]])), "bounds must be"


def bounds_min_ge_max(root):
    return _edit_scenes(root, lambda s, d: s[S0].__setitem__("bounds", [[0, 0, 0], [1, 0, 1]])), \
        "min must be < max"


def missing_bounds(root):
    return _edit_scenes(root, lambda s, d: s[S0].pop("bounds")), "missing key 'bounds'"


def camera_outside_bounds(root):
    return _edit_transforms(root, lambda d: d["frames"][1]["transform_matrix"][0].__setitem__(3, 50.0)), \
        "camera centre outside the scene bounds"


CORRUPTIONS = [
    delete_png, truncate_png, garbage_depth, small_depth, small_image, eight_bit_depth, grey_image,
    nan_pose, scaled_rotation, pose_not_4x4, missing_fl_x, missing_depth_path, missing_frames,
    negative_focal, nan_cx, invalid_json, missing_transforms, missing_dataset_json, bad_split,
    group_in_two_splits, empty_train, duplicate_scene, missing_folder, bounds_not_2x3,
    bounds_min_ge_max, missing_bounds, camera_outside_bounds,
]


def _load_everything(root: Path) -> None:
    for split in ("train", "test"):
        ds = SceneDataset(root, split)
        for i in range(len(ds)):
            ds[i]


def test_valid_dataset_has_no_problems(root):
    assert check_path(root) == []
    for name, _, _ in SCENES:
        assert check_path(root / name) == []
    _load_everything(root)


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__)
def test_problem_is_reported(root, corrupt):
    path, words = corrupt(root)
    problems = check_path(root)
    hits = [p for p in problems if p.startswith(f"{path}: ") and words in p]
    assert hits, f"no line for {path} with {words!r} in:\n" + "\n".join(problems)
    with pytest.raises(DataError) as err:
        _load_everything(root)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("corrupt", [delete_png, truncate_png, small_depth, nan_pose, missing_fl_x],
                         ids=lambda f: f.__name__)
def test_problem_in_single_scene_folder(root, corrupt):
    path, words = corrupt(root)
    assert any(p.startswith(f"{path}: ") and words in p for p in check_path(root / S0))
    with pytest.raises(DataError, match=str(path.name)):
        _ = SceneDataset(root / S0)[0]


def test_keeps_going_and_groups_repeats(root):
    delete_png(root)
    small_depth(root)
    bad_split(root)
    # the same problem in every frame of scene_0001 gives one line
    def edit(d):
        for f in d["frames"]:
            f.pop("depth_file_path")
    _edit_transforms(root, edit, scene="scene_0001")
    problems = check_path(root)
    assert len(problems) == 4, "\n".join(problems)
    assert any("frames 0, 1, 2, 3" in p for p in problems)


def test_nonexistent_path(tmp_path):
    missing = tmp_path / "nope"
    assert check_path(missing) == [f"{missing}: does not exist"]
