"""More train windows for stage 3 without a second stage 1 / stage 2: encode the train scenes of a
second ViZDoom collection (another seed, the same fixed map split) with the bundle's scene-ae and
latent-ae, and merge their latents into an existing latent folder (docs/notes/2026-12-07-more-windows-for-psi-c.md).

The voxels take ~8.5 MB a scene, so the train scenes go through in chunks whose voxel folders are
deleted once their latents are written. The merged folder holds symlinks: the base folder's files as
they are, the new scenes' as ``more_<name>`` (their turned copies too), with the base folder's
statistics (``--stats-from``), splits and val / test scenes, so held-out losses stay comparable.

    nfldm data vizdoom --out out/more/data --scenes 2048 --seed 1 --workers 2    # 2 min
    python experiments/more_windows.py --data out/more/data --base out/lat_aug4 --work out/more \\
        --out out/more/lat_all --augment 4                                       # 15 min
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from nfldm.latent_ae.latents import INDEX_FILE, encode_latents  # noqa: E402
from nfldm.scene_ae.voxels import encode_voxels  # noqa: E402

BUNDLE = Path(__file__).resolve().parents[1] / "src" / "nfldm" / "weights" / "tiny"


def train_chunks(data: Path, work: Path, size: int) -> list[Path]:
    """Dataset folders of at most ``size`` of ``data``'s train scenes each (symlinked scene folders)."""
    index = json.loads((data / "dataset.json").read_text())
    train = [s for s in index["scenes"] if s["split"] == "train"]
    roots = []
    for k in range(0, len(train), size):
        root = work / f"d{k // size}"
        root.mkdir(parents=True, exist_ok=True)
        for s in train[k:k + size]:
            if not (root / s["name"]).exists():
                os.symlink((data / s["name"]).resolve(), root / s["name"])
        meta = {key: v for key, v in index.items() if key != "scenes"}
        (root / "dataset.json").write_text(json.dumps({**meta, "scenes": train[k:k + size]}, indent=1))
        roots.append(root)
    return roots


def merge(base: Path, parts: list[Path], out: Path) -> dict:
    """OUT/index.json: the base folder's scenes and every part's, as symlinks (parts' names ``more_``)."""
    index = json.loads((base / INDEX_FILE).read_text())
    out.mkdir(parents=True, exist_ok=True)
    scenes = []
    for folder, prefix in [(base, "")] + [(p, "more_") for p in parts]:
        part = index if folder == base else json.loads((folder / INDEX_FILE).read_text())
        if part["stats"] != index["stats"]:
            raise SystemExit(f"error: {folder / INDEX_FILE}: its statistics are not {base}'s (encode with --stats-from)")
        for s in part["scenes"]:
            s = {**s, "name": prefix + s["name"], "file": prefix + s["file"]}
            if "source" in s:
                s["source"] = prefix + s["source"]
            if not (out / s["file"]).exists():
                os.symlink((folder / s["file"][len(prefix):]).resolve(), out / s["file"])
            scenes.append(s)
    (out / INDEX_FILE).write_text(json.dumps({**index, "scenes": scenes}, indent=1))
    return {"scenes": len(scenes), "train": sum(s["split"] == "train" for s in scenes)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the second collection (nfldm data vizdoom --seed K)")
    ap.add_argument("--base", required=True, help="the latent folder to add to (its statistics are kept)")
    ap.add_argument("--work", required=True, help="folder for the chunks' datasets, voxels (deleted) and latents")
    ap.add_argument("--out", required=True, help="the merged latent folder to write")
    ap.add_argument("--augment", type=int, default=4, help="turned copies per train scene (encode-latents --augment)")
    ap.add_argument("--chunk", type=int, default=819, help="train scenes a chunk (its voxels ~8.5 MB each)")
    ap.add_argument("--scene-ae", default=str(BUNDLE / "scene_ae"))
    ap.add_argument("--latent-ae", default=str(BUNDLE / "latent_ae"))
    args = ap.parse_args()
    work, parts = Path(args.work), []
    for root in train_chunks(Path(args.data), work, args.chunk):
        lat, vox = work / f"lat{root.name[1:]}", work / f"vox{root.name[1:]}"
        if not (lat / INDEX_FILE).exists():
            encode_voxels(args.scene_ae, root, vox)
            encode_latents(args.latent_ae, vox, lat, augment=args.augment, stats_from=args.base)
            shutil.rmtree(vox)
        parts.append(lat)
    print(merge(Path(args.base), parts, Path(args.out)))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
