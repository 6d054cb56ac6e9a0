"""How much of a scene's coarse latent c its BEV map fixes, and whether the test maps' textures are
ones the train maps have (issue 23's FID / LPIPS gaps; docs/notes/2026-12-07-where-psi-c-loses-the-views.md).

1. Texture coverage: for each val / test level of a ViZDoom dataset, the share of its wall-texture
   length (every sidedef's upper / middle / lower texture, weighted by its line's length) and of
   its sectors' flats that some train level also uses. Low coverage would mean the samples cannot
   know the test levels' look from training.
2. Per-cell predictability: a ridge regression from the map's cells to the own latents' c at each
   of its X x Y cells (c folded: c_ch * Zc numbers a cell), fitted on train scenes, R^2 on test
   scenes, for three feature sets: the geometry (wall, floor, ceiling, inside, averaged over the
   cell's map pixels), + the look (light and mean colours, :data:`nfldm.data.bev.LOOK_KEYS`), +
   the texture identity (per cell the histogram of which wall texture, floor flat and ceiling flat
   its map pixels show, one bin per name of the WADs). A linear read-out, so a lower bound on what
   the map says; it tells which of the map's parts carry c at all.

    python experiments/map_information.py --data out/release/data --latents out/release/latents [--every 4] \
        [--samples SAMPLES]     # 3. also: how well the map's look and SAMPLES predict the real frames' colour
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from nfldm.data import doom_map as dm  # noqa: E402
from nfldm.data.bev import LOOK_KEYS, read_bev_file  # noqa: E402
from nfldm.data.format import read_dataset  # noqa: E402
from nfldm.data.vizdoom import _rasterise_level, _recorded_origin, wad_path  # noqa: E402


def level_textures(wad: str, map_name: str) -> tuple[collections.Counter, collections.Counter]:
    """(wall texture name -> line length using it, map units; flat name -> sectors using it)."""
    verts, lines, sides, sectors = dm.map_lumps(wad_path(wad), map_name)
    walls, flats = collections.Counter(), collections.Counter()
    for ld in lines:
        a, b = verts[ld["v1"]], verts[ld["v2"]]
        length = float(np.hypot(int(a["x"]) - int(b["x"]), int(a["y"]) - int(b["y"])))
        for side in (ld["right"], ld["left"]):
            if side == dm._NO_SIDEDEF:
                continue
            raw = sides[side]["textures"].tobytes()
            for k in range(3):
                name = dm._name(raw[8 * k: 8 * k + 8])
                if name not in ("-", ""):
                    walls[name] += length
    for raw in sectors["flats"].tolist():
        for k in range(2):
            flats[dm._name(raw[8 * k: 8 * k + 8])] += 1
    return walls, flats


def coverage(index) -> None:
    levels = collections.defaultdict(set)
    for s in index.scenes:
        wad, name = s.group.split(":")
        levels[s.split].add((wad, name))
    train_w, train_f = collections.Counter(), collections.Counter()
    for lv in levels["train"]:
        w, f = level_textures(*lv)
        train_w.update(w)
        train_f.update(f)
    print(f"train levels: {len(levels['train'])}, {len(train_w)} wall textures, {len(train_f)} flats")
    print("| split | level | wall textures | share of its wall length whose texture a train level has | share of its flats a train level has |")
    print("|---|---|---|---|---|")
    for split in ("val", "test"):
        for lv in sorted(levels[split]):
            w, f = level_textures(*lv)
            cov_w = sum(v for k, v in w.items() if k in train_w) / max(1e-9, sum(w.values()))
            cov_f = sum(v for k, v in f.items() if k in train_f) / max(1, sum(f.values()))
            print(f"| {split} | {lv[0]} {lv[1]} | {len(w)} | {cov_w:.2f} | {cov_f:.2f} |")


class _TextureIds:
    """Every texture and flat name of the WADs read so far -> an id >= 1 (0: none), stand-in for
    :func:`nfldm.data.doom_map.wad_colours` so that DoomMap's look rasterises ids, not colours."""

    def __init__(self):
        self.ids: dict[str, int] = {}
        self.colours = dm.wad_colours

    def __call__(self, path: str) -> dict[str, np.ndarray]:
        names = self.colours(path)
        for n in sorted(names):
            self.ids.setdefault(n, len(self.ids) + 1)
        return {n: np.full(3, self.ids[n], np.float32) for n in names}


def predictability(index, latents: Path, every: int, lam: float) -> None:
    from safetensors.numpy import load_file

    ids = _TextureIds()
    dm.wad_colours = ids              # DoomMap.from_wad takes its look from this name -> "colour" table
    levels: dict = {}
    rows = []
    for s in index.scenes:
        if s.split not in ("train", "test") or (s.split == "train" and int(s.name.rsplit("_", 1)[-1]) % every):
            continue
        f = latents / f"{s.name}.safetensors"
        if not f.is_file():
            continue
        info, origin, units = _recorded_origin(s.path)
        key = (info["wad"], info["map"])
        if key not in levels:
            levels[key] = dm.DoomMap.from_wad(wad_path(info["wad"]), info["map"])
        bev = read_bev_file(s.path / "bev.npz")
        (x0, y0), (x1, y1) = np.asarray(bev["bounds_xy"], np.float64)
        tex = _rasterise_level(levels[key], origin, units, (x0, y0, x1, y1), bev["wall"].shape[0])
        if not np.array_equal(tex["wall"], bev["wall"]):
            raise SystemExit(f"{s.path / 'bev.npz'}: its walls differ from the level's at the recorded origin")
        rows.append((s.split, bev, tex, load_file(f)["c"]))
    V = len(ids.ids) + 1
    n_train = sum(r[0] == "train" for r in rows)
    print(f"\n{n_train} train scenes (every {every}th), {len(rows) - n_train} test scenes; {V - 1} texture / flat names")

    def pool(a: np.ndarray, n: int) -> np.ndarray:          # S x S -> n x n cell means (NaN as 0)
        k = a.shape[0] // n
        return np.nan_to_num(a).reshape(n, k, n, k).mean((1, 3))

    def histogram(a: np.ndarray, n: int) -> np.ndarray:     # S x S ids -> n*n x V shares
        k = a.shape[0] // n
        cells = np.nan_to_num(a, nan=0).astype(int).reshape(n, k, n, k).transpose(0, 2, 1, 3).reshape(n * n, k * k)
        h = np.zeros((n * n, V), np.float32)
        np.add.at(h, (np.repeat(np.arange(n * n), k * k), np.clip(cells.ravel(), 0, V - 1)), 1.0 / (k * k))
        return h

    def features(bev, tex, n: int, kind: str) -> np.ndarray:
        parts = [np.stack([pool(bev[k], n) for k in ("wall", "floor", "ceiling", "inside")], -1).reshape(n * n, -1)]
        if kind != "geometry":
            parts.append(np.stack([pool(bev[k], n) for k in LOOK_KEYS], -1).reshape(n * n, -1))
        if kind == "+ texture identity":
            parts += [histogram(tex["wall_r"], n), histogram(tex["floor_r"], n), histogram(tex["ceiling_r"], n)]
        return np.concatenate(parts, 1)

    print("| map features | numbers a cell | R^2 of c per cell, train | R^2, test scenes |")
    print("|---|---|---|---|")
    for kind in ("geometry", "+ look", "+ texture identity"):
        X, Y = {"train": [], "test": []}, {"train": [], "test": []}
        for split, bev, tex, c in rows:
            n = c.shape[1]                                   # c: c_ch x X x Y x Zc
            X[split].append(features(bev, tex, n, kind))
            Y[split].append(c.transpose(1, 2, 0, 3).reshape(n * n, -1))
        Xtr, Xte, Ytr, Yte = (np.concatenate(X["train"]), np.concatenate(X["test"]),
                              np.concatenate(Y["train"]), np.concatenate(Y["test"]))
        keep = Xtr.std(0) > 0
        mu, sd = Xtr[:, keep].mean(0), Xtr[:, keep].std(0)
        A = np.c_[(Xtr[:, keep] - mu) / sd, np.ones(len(Xtr))]
        B = np.c_[(Xte[:, keep] - mu) / sd, np.ones(len(Xte))]
        W = np.linalg.solve(A.T @ A + lam * np.eye(A.shape[1]), A.T @ Ytr)
        r2 = lambda y, p: 1 - ((y - p) ** 2).sum() / ((y - Ytr.mean(0)) ** 2).sum()  # noqa: E731
        print(f"| {kind} | {A.shape[1] - 1} | {r2(Ytr, A @ W):.3f} | {r2(Yte, B @ W):.3f} |", flush=True)


def colour_readout(samples: Path) -> None:
    """How well a scene's mean look (its map's :data:`nfldm.data.bev.LOOK_KEYS`, averaged
    over the map's inside / wall cells) predicts its real frames' mean RGB (linear, fitted on even
    test scenes, R^2 on odd ones), and how well a sample folder's frames (along each scene's real
    path) match the real frames' mean RGB."""
    import json

    from PIL import Image

    def mean_rgb(files: list[Path]) -> np.ndarray:
        return np.mean([np.asarray(Image.open(f).convert("RGB"))[::4, ::4].reshape(-1, 3).mean(0) for f in files[::3]], 0)

    X, real, gen = [], [], []
    for d in sorted(samples.glob("sample_*")):
        scene = Path(json.loads((d / "condition.json").read_text())["scene"])
        bev = read_bev_file(scene / "bev.npz")
        inside, wall = bev["inside"] > 0, bev["wall_r"] > 0
        X.append([np.nanmean(bev[k][wall if k.startswith("wall") else inside]) if (wall if k.startswith("wall") else inside).any()
                  else 0.0 for k in LOOK_KEYS])
        real.append(mean_rgb(sorted((scene / "images").glob("*.png"))))
        gen.append(mean_rgb(sorted((d / "frames").glob("*.png"))))
    X, real, gen = np.nan_to_num(np.array(X)), np.array(real), np.array(gen)
    r2 = lambda y, p: 1 - ((y - p) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)  # noqa: E731
    A = np.c_[X, np.ones(len(X))]
    fit = np.arange(len(X)) % 2 == 0
    W = np.linalg.lstsq(A[fit], real[fit], rcond=None)[0]
    print(f"\n{len(X)} scenes of {samples}: mean frame RGB, R^2 per channel (r, g, b)")
    print(f"  the map's mean look -> real frames (linear, held-out odd scenes): {np.round(r2(real[~fit], A[~fit] @ W), 2)}")
    print(f"  the samples' frames as a prediction of the real frames: {np.round(r2(real, gen), 2)}")
    print(f"  std over scenes: real {np.round(real.std(0), 1)}, samples {np.round(gen.std(0), 1)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a ViZDoom dataset (its levels and BEV maps)")
    ap.add_argument("--latents", required=True, help="its latent folder (the own c of each scene)")
    ap.add_argument("--every", type=int, default=4, help="use every Nth train scene (memory and time)")
    ap.add_argument("--ridge", type=float, default=10.0, help="ridge penalty on the standardised features")
    ap.add_argument("--samples", default=None,
                    help="also: a sample folder along the real paths (nfldm sample --bev ... --path-from-scene): "
                    "how well the map's look and the samples predict the real frames' mean colour")
    args = ap.parse_args()
    index = read_dataset(Path(args.data))
    coverage(index)
    predictability(index, Path(args.latents), max(1, args.every), args.ridge)
    if args.samples:
        colour_readout(Path(args.samples))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
