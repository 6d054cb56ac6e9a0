"""Datasets: the on-disk format (``format``), its checker (``check``) and the loader (``loader``)."""

from nfldm.data.check import check_path
from nfldm.data.format import (
    SPLITS,
    DataError,
    DatasetIndex,
    Frame,
    SceneEntry,
    SceneMeta,
    auto_bounds,
    load_frame,
    read_dataset,
    read_transforms,
    write_dataset_index,
    write_scene,
)
from nfldm.data.loader import SceneDataset, pack_dataset

__all__ = [
    "SPLITS",
    "DataError",
    "DatasetIndex",
    "Frame",
    "SceneEntry",
    "SceneMeta",
    "auto_bounds",
    "check_path",
    "load_frame",
    "pack_dataset",
    "read_dataset",
    "read_transforms",
    "SceneDataset",
    "write_dataset_index",
    "write_scene",
]
