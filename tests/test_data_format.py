"""Round trip of the scene / dataset format and the SceneDataset loader (with and without cache)."""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import PIL.Image
import pytest
import torch
from torch.utils.data import DataLoader

import nfldm.data.format as fmt
from data_fixtures import BOUNDS, H, INTR, N_FRAMES, SCENES, W, make_dataset, make_scene_arrays
from nfldm.data import (
    DataError,
    SceneDataset,
    check_path,
    load_frame,
    pack_dataset,
    read_dataset,
    read_transforms,
    write_scene,
)
from nfldm.data.loader import cache_path
from nfldm.utils.io import atomic_write_json, png_bytes

SCALE = 0.001


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    root = tmp_path_factory.mktemp("template")
    arrays = make_dataset(root)
    return root, arrays


@pytest.fixture
def dataset(template, tmp_path):
    src, arrays = template
    root = tmp_path / "ds"
    shutil.copytree(src, root)
    return root, arrays


def test_round_trip(dataset):
    root, arrays = dataset
    images, depth, c2w = arrays["scene_0000"]
    meta = read_transforms(root / "scene_0000")
    assert (meta.w, meta.h, len(meta)) == (W, H, N_FRAMES)
    assert meta.depth_unit_scale_factor == SCALE
    assert meta.extra == {"map": "wad:MAP01", "seed": 0}
    np.testing.assert_array_equal(meta.intr, np.tile(INTR, (N_FRAMES, 1)))
    np.testing.assert_array_equal(meta.c2w, c2w)
    for i in range(N_FRAMES):
        rgb, d, valid = load_frame(meta, i)
        assert rgb.dtype == np.float32 and rgb.shape == (H, W, 3)
        np.testing.assert_array_equal(np.round(rgb * 255).astype(np.uint8), images[i])
        expect_valid = np.isfinite(depth[i]) & (depth[i] > 0)
        np.testing.assert_array_equal(valid, expect_valid)
        assert np.abs(d[valid] - depth[i][valid]).max() <= SCALE / 2 + 1e-6
        assert (d[~valid] == 0).all()


def test_png_files_and_no_temp_files(dataset):
    root, _ = dataset
    scene = root / "scene_0000"
    assert sorted(p.name for p in scene.iterdir()) == ["depth", "images", "transforms.json"]
    with PIL.Image.open(scene / "depth" / "00000.png") as im:
        assert im.mode == "I;16"
    with PIL.Image.open(scene / "images" / "00000.png") as im:
        assert im.mode == "RGB"
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]
    data = json.loads((scene / "transforms.json").read_text())
    assert data["camera_model"] == "OPENCV"
    assert all(data[k] == 0 for k in ("k1", "k2", "p1", "p2"))
    assert data["frames"][0]["file_path"] == "images/00000.png"


def test_depth_overflow_and_per_frame_intrinsics(tmp_path):
    images, depth, c2w = make_scene_arrays(0, n=2)
    depth[0, 5, 5] = 70.0  # 70000 mm does not fit uint16 -> invalid
    intr = np.array([INTR, [41.0, 49.0, 31.5, 32.5]])
    write_scene(tmp_path / "s", images, depth, c2w, intr)
    meta = read_transforms(tmp_path / "s")
    np.testing.assert_array_equal(meta.intr, intr)
    _, d, valid = load_frame(meta, 0)
    assert not valid[5, 5] and d[5, 5] == 0


def test_default_depth_scale_and_global_override(tmp_path):
    images, depth, c2w = make_scene_arrays(0, n=2)
    write_scene(tmp_path / "s", images, depth, c2w, INTR, depth_unit_scale_factor=0.002)
    tf = tmp_path / "s" / "transforms.json"
    data = json.loads(tf.read_text())
    del data["depth_unit_scale_factor"]
    data["frames"][1]["fl_x"] = 99.0
    atomic_write_json(tf, data)
    meta = read_transforms(tmp_path / "s")
    assert meta.depth_unit_scale_factor == 0.001
    assert meta.intr[0, 0] == INTR[0] and meta.intr[1, 0] == 99.0


def _fail_third_png(monkeypatch):
    """Make write_scene's third PNG encoding raise (a disk-full stand-in)."""
    calls = []
    real = fmt.png_bytes

    def failing(array, compress_level=6):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(array, compress_level)

    monkeypatch.setattr(fmt, "png_bytes", failing)


def test_failed_write_leaves_no_scene_and_no_staging(tmp_path, monkeypatch):
    images, depth, c2w = make_scene_arrays(0, n=3)
    _fail_third_png(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        write_scene(tmp_path / "s", images, depth, c2w, INTR)
    assert list(tmp_path.iterdir()) == []  # no scene folder, no hidden staging folder


def test_failed_rewrite_keeps_the_old_scene(tmp_path, monkeypatch):
    images, depth, c2w = make_scene_arrays(0, n=3)
    write_scene(tmp_path / "s", images, depth, c2w, INTR, files={"bev.npz": b"old"})
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    _fail_third_png(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        write_scene(tmp_path / "s", images[::-1].copy(), depth, c2w, INTR)
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # untouched: the new files never left the staging folder


def test_rewrite_replaces_the_scene(tmp_path):
    images, depth, c2w = make_scene_arrays(0, n=3)
    write_scene(tmp_path / "s", images, depth, c2w, INTR, files={"bev.npz": b"old"})
    new_images = images[::-1].copy()
    write_scene(tmp_path / "s", new_images, depth, c2w, INTR, files={"bev.npz": b"new"})
    meta = read_transforms(tmp_path / "s")
    for i in range(3):
        rgb, _, _ = load_frame(meta, i)
        np.testing.assert_array_equal(np.round(rgb * 255).astype(np.uint8), new_images[i])
    assert (tmp_path / "s" / "bev.npz").read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["s"]


@pytest.mark.parametrize("kind", ["grey8", "rgb", "rgba", "grey16"])
def test_png_bytes_decodes_exactly(kind):
    rng = np.random.default_rng(0)
    array = {
        "grey8": rng.integers(0, 256, (7, 5), dtype=np.uint8),
        "rgb": rng.integers(0, 256, (7, 5, 3), dtype=np.uint8),
        "rgba": rng.integers(0, 256, (7, 5, 4), dtype=np.uint8),
        "grey16": rng.integers(0, 65536, (7, 5), dtype=np.uint16),
    }[kind]
    with PIL.Image.open(io.BytesIO(png_bytes(array, compress_level=1))) as im:
        decoded = np.array(im)
    np.testing.assert_array_equal(decoded.astype(array.dtype), array)
    assert decoded.shape == array.shape
    with pytest.raises(ValueError, match="uint8 or uint16"):
        png_bytes(array.astype(np.float32))


def test_write_rejects_bad_input(tmp_path):
    images, depth, c2w = make_scene_arrays(0, n=2)
    bad = c2w.copy()
    bad[0, :3, :3] *= 2
    with pytest.raises(ValueError, match="rigid"):
        write_scene(tmp_path / "s", images, depth, bad, INTR)
    with pytest.raises(ValueError, match="depth_m"):
        write_scene(tmp_path / "s", images, depth[:, :10], c2w, INTR)


def test_read_dataset(dataset):
    root, _ = dataset
    index = read_dataset(root)
    assert [(s.name, s.split, s.group) for s in index.scenes] == SCENES
    assert [s.name for s in index.split("train")] == ["scene_0000", "scene_0001"]
    np.testing.assert_array_equal(index.scenes[0].bounds, BOUNDS)
    assert index.scenes[2].path == root / "scene_0002"


def test_single_scene_folder(dataset):
    root, arrays = dataset
    scene = root / "scene_0001"
    index = read_dataset(scene)
    assert len(index.scenes) == 1
    entry = index.scenes[0]
    assert (entry.name, entry.split, entry.group) == ("scene_0001", "train", "scene_0001")
    lo, hi = entry.bounds
    centres = arrays["scene_0001"][2][:, :3, 3]
    assert (centres > lo).all() and (centres < hi).all()
    assert (hi - lo > 3.0).all()  # the depth points (2..2.5 m away) widen the box
    assert check_path(scene) == []
    item = SceneDataset(scene)[0]
    assert item["images"].shape == (N_FRAMES, 3, H, W)


def _assert_items_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k]


def test_item_contents(dataset):
    root, arrays = dataset
    images, depth, c2w = arrays["scene_0001"]
    item = SceneDataset(root, "train")[1]
    assert item["name"] == "scene_0001"
    assert item["images"].dtype == torch.float32
    assert torch.equal((item["images"] * 255).round().byte(), torch.from_numpy(images).permute(0, 3, 1, 2))
    valid = np.isfinite(depth) & (depth > 0)
    assert torch.equal(item["depth_valid"], torch.from_numpy(valid))
    err = (item["depth"] - torch.from_numpy(np.nan_to_num(depth)).float()).abs()[item["depth_valid"]]
    assert err.max() <= SCALE / 2 + 1e-6
    assert torch.equal(item["c2w"], torch.from_numpy(c2w).float())
    assert torch.equal(item["intrinsics"], torch.tensor([INTR] * N_FRAMES))
    assert torch.equal(item["bounds"], torch.tensor(BOUNDS))


def test_dataloader_batches(dataset):
    root, _ = dataset
    batch = next(iter(DataLoader(SceneDataset(root, "train", num_views=3), batch_size=2)))
    assert batch["images"].shape == (2, 3, 3, H, W)
    assert batch["depth"].shape == batch["depth_valid"].shape == (2, 3, H, W)
    assert batch["intrinsics"].shape == (2, 3, 4)
    assert batch["c2w"].shape == (2, 3, 4, 4)
    assert batch["bounds"].shape == (2, 2, 3)
    assert batch["name"] == ["scene_0000", "scene_0001"]


def test_num_views_subsets(dataset):
    root, _ = dataset
    full = SceneDataset(root, "train")
    ds = SceneDataset(root, "train", num_views=2, seed=3)
    draws = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        item = ds[0]
        ids = item["frame_ids"]
        assert len(ids) == 2 and (ids[1:] > ids[:-1]).all()
        assert torch.equal(ds[0]["frame_ids"], ids)  # deterministic within an epoch
        assert torch.equal(item["images"], full[0]["images"][ids])
        draws.add(tuple(ids.tolist()))
    assert len(draws) > 1  # set_epoch re-draws


def test_cache_identical_and_skips_png_decoding(dataset, monkeypatch):
    root, _ = dataset
    plain = SceneDataset(root, "train", num_views=3)
    cached = SceneDataset(root, "train", num_views=3, cache=True)
    refs = [plain[i] for i in range(len(plain))]
    for i in range(len(plain)):
        _assert_items_equal(refs[i], cached[i])  # builds the cache
    assert cache_path(root, "scene_0000").is_file()

    def no_open(*args, **kwargs):
        raise AssertionError("PIL.Image.open called on a cached read")

    monkeypatch.setattr(PIL.Image, "open", no_open)
    for i in range(len(cached)):
        _assert_items_equal(refs[i], cached[i])
    with pytest.raises(AssertionError):
        plain[0]  # the uncached path does decode PNGs


def test_stale_cache_is_rebuilt(dataset):
    root, _ = dataset
    ds = SceneDataset(root, "train", cache=True)
    before = ds[0]["images"].clone()
    path = root / "scene_0000" / "images" / "00000.png"
    PIL.Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    after = ds[0]["images"]
    assert after[0].max() == 0 and torch.equal(after[1:], before[1:])


def test_pack_dataset(dataset):
    root, _ = dataset
    paths = pack_dataset(root, progress=False)
    assert paths == [cache_path(root, n) for n, _, _ in SCENES]
    assert all(p.is_file() for p in paths)


def test_split_needs_one_image_size(dataset):
    root, _ = dataset
    images, depth, c2w = make_scene_arrays(5, h=32, w=32)
    shutil.rmtree(root / "scene_0001")
    write_scene(root / "scene_0001", images, depth, c2w, [20.0, 24.0, 16.0, 16.0])
    with pytest.raises(DataError, match="scene_0001"):
        SceneDataset(root, "train")
    SceneDataset(root, "test")  # the other split is fine


def test_num_views_needs_enough_frames(dataset):
    root, _ = dataset
    with pytest.raises(DataError, match="fewer than num_views"):
        SceneDataset(root, "train", num_views=N_FRAMES + 1)
    with pytest.raises(DataError, match="no scene has split 'val'"):
        SceneDataset(root, "val")
