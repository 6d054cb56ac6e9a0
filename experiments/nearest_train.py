"""Are the samples new scenes or copies of train scenes? Nearest train scene of each sample.

    python experiments/nearest_train.py --samples DIR --run LDM_RUN [--num-test 16] [--device auto] [--json FILE]

For every sample of DIR (``nfldm sample``), for the test scenes and for the train scenes
themselves, the nearest train scene of the latent folder RUN was trained on (only the first K
when its psi_c was trained with ``--train-scenes K``), by two measures:

    c dist   the RMS difference of the standardised coarse latents c (the layout); for a train
             scene its nearest OTHER train scene
    bev r    the Pearson correlation of the top-down opacity of the decoded V (what the
             contact sheets show); for a train scene its nearest other train scene

Test scenes come from maps no train scene comes from (docs/vizdoom.md "Split by map"), and
train scenes cut from one map overlap (near-duplicates), so the reference for "a new scene"
is a train scene's nearest train scene of ANOTHER map. The last column counts the rows whose
c dist is below the 5th percentile of that reference: copies of a train scene (or of a scene
of its map).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a: N x D, b: M x D -> N x M Pearson correlations."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    a = a / a.norm(dim=1, keepdim=True).clamp(min=1e-8)
    b = b / b.norm(dim=1, keepdim=True).clamp(min=1e-8)
    return a @ b.T


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", required=True, help="folder of nfldm sample")
    ap.add_argument("--run", required=True, help="the ldm run the samples came from")
    ap.add_argument("--num-test", type=int, default=16)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default=None, help="also write the table's numbers to this JSON file")
    args = ap.parse_args()

    from safetensors.torch import load_file
    from tqdm.auto import tqdm

    from ldm_levels import load_gcf
    from nfldm.latent_ae.model import fold
    from nfldm.ldm.data import LatentDataset, decode_items, scene_source
    from nfldm.ldm.evaluate import top_down_opacity
    from nfldm.trainer import read_run_config

    pipe, test_ds, lindex = load_gcf(args.run, "test", args.device)
    lae, stats, dev = pipe["lae"], pipe["stats"], pipe["device"]
    k = (read_run_config(Path(args.run) / "c").get("train_scenes") or {}).get("first", 0)
    train_ds = LatentDataset(pipe["config"]["latents"], "train", test_ds.traj_frames, index=lindex,
                             stats=pipe["config"]["stats"], max_scenes=k)
    c_ch = pipe["models"]["g"].cfg.c_shape[0]
    bounds = torch.as_tensor(pipe["config"]["render"]["bounds"], dtype=torch.float32)

    def real(ds, n):
        cs, bevs = [], []
        for i in tqdm(range(n), desc=f"decoding {ds.split} latents", unit="scene"):
            it = ds[i]
            with torch.no_grad():
                V = decode_items(lae, stats, [it], c_ch, dev)[0].cpu()
            cs.append(it["c"].reshape(-1))
            bevs.append(top_down_opacity(V, bounds).reshape(-1))
        return torch.stack(cs), torch.stack(bevs)

    lindex_source = {e["name"]: scene_source(e) for e in lindex["scenes"]}
    c_tr, b_tr = real(train_ds, len(train_ds))
    c_te, b_te = real(test_ds, min(args.num_test, len(test_ds)))
    files = sorted(Path(args.samples).glob("sample_*/V.safetensors"))
    if not files:
        raise SystemExit(f"error: {args.samples}: no sample_*/V.safetensors")
    c_s, b_s = [], []
    for p in files:
        t = load_file(str(p))
        c = stats.normalise("c", t["c"].float()[None])
        c_s.append(fold(c)[0].reshape(-1))
        b_s.append(top_down_opacity(t["V"].float(), bounds).reshape(-1))
    c_s, b_s = torch.stack(c_s), torch.stack(b_s)

    # the map of each train scene (ViZDoom windows of one map overlap: near-duplicates)
    groups = {}
    ds_index = Path(lindex.get("data") or "") / "dataset.json"
    if ds_index.is_file():
        groups = {s["name"]: s.get("group", s["name"]) for s in json.loads(ds_index.read_text())["scenes"]}
    src = [lindex_source.get(n, n) for n in train_ds.names]
    gr = [groups.get(n, n) for n in src]

    def nearest(c, b, exclude=None):
        d = torch.cdist(c, c_tr) / c.shape[1] ** 0.5
        r = _corr(b, b_tr)
        if exclude is not None:
            d[exclude] = float("inf")
            r[exclude] = -float("inf")
        return d.min(1).values, r.max(1).values, d.argmin(1)

    same_scene = torch.tensor([[a == b for b in src] for a in src])
    same_map = torch.tensor([[a == b for b in gr] for a in gr])
    rows = {"samples": nearest(c_s, b_s), "test scenes (unseen maps)": nearest(c_te, b_te),
            "train, nearest other scene": nearest(c_tr, b_tr, same_scene),
            "train, nearest of another map": nearest(c_tr, b_tr, same_map)}
    bar = float(np.percentile(rows["train, nearest of another map"][0].numpy(), 5))
    print(f"\n{len(files)} samples of {args.samples}; nearest of {len(train_ds)} train files "
          f"({k or 'all'} scenes, {len(set(gr))} maps) of {pipe['config']['latents']}")
    print(f"{'':<30} {'c dist mean':>11} {'min':>6} {'bev r mean':>10} {'max':>6}  {'c dist < ' + format(bar, '.3f'):>16}")
    for name, (d, r, _) in rows.items():
        near = f"{int((d < bar).sum())} / {len(d)}"
        print(f"{name:<30} {float(d.mean()):>11.3f} {float(d.min()):>6.3f} {float(r.mean()):>10.3f} "
              f"{float(r.max()):>6.3f}  {near:>16}")
    print(f"({bar:.3f}: the 5th percentile of the train scenes' distance to the nearest scene of another map)")
    idx = rows["samples"][2].tolist()
    print(f"distinct nearest train scenes of the samples: {len(set(idx))} "
          f"({', '.join(train_ds.names[i] for i in sorted(set(idx))[:8])}{', ...' if len(set(idx)) > 8 else ''})")
    print(f"c dist of the standardised c of two unrelated scenes is about sqrt(2) = {np.sqrt(2):.3f} "
          "when c is unit-variance and uncorrelated between scenes")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "samples": str(args.samples), "num_samples": len(files), "train_files": len(train_ds),
            "train_maps": len(set(gr)), "copy_threshold": bar,
            "rows": {name: {"c_dist_mean": float(d.mean()), "c_dist_min": float(d.min()), "bev_r_mean": float(r.mean()),
                            "bev_r_max": float(r.max()), "below_threshold": int((d < bar).sum()), "count": len(d)}
                     for name, (d, r, _) in rows.items()},
            "distinct_nearest": len(set(idx))}, indent=2))


if __name__ == "__main__":
    main()
