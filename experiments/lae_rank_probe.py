"""Where does the latent auto-encoder's rendered-PSNR cost come from? Codes of V's columns
with no network in between, scored by the stage-1 renderer.

The LAE folds Z into channels, so V is X x Y columns of (1 + C) Z values, and its decoder
ends in a 1 x 1 convolution from ``dec_channels`` features: every decoded column lies in an
affine subspace of that dimension. Two probes, both on the LAE's own normalisation and loss
weights, trained on the train split and scored like ``nfldm eval latent-ae`` (held-out views
of the test split rendered from V and from the coded V; cost = the PSNR difference):

- ``--ranks K ...``: PCA of the columns, keeping the top K components (the best linear code of
  K numbers per column for the weighted squared error). ``--keep density|features|colour``
  takes those channels from the original V instead (which channels the cost is in);
  ``--colour-weight W`` weights V's colour channels (1..3, stage 1's rgb_features) W times in
  the squared error.
- ``--learned K ...``: a column auto-encoder with a K-number code per column (a linear encoder),
  with a linear decoder and with the LAE's ``out_head="mlp"`` decoder (a per-voxel MLP on 8
  features per height, plus the linear map), trained ``--minutes`` each on random columns.

    python experiments/lae_rank_probe.py --voxels out/qs/voxels --ranks 16 32 64 128 256 512
    python experiments/lae_rank_probe.py --voxels out/qs/voxels --ranks 64 --keep none density features colour
    python experiments/lae_rank_probe.py --voxels out/qs/voxels --learned 8 16 64 --minutes 2
"""

import argparse
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nfldm import metrics
from nfldm.latent_ae.config import LatentAEConfig
from nfldm.latent_ae.evaluate import _gt_dataset, render_views_of
from nfldm.latent_ae.model import LatentAutoEncoder, fold, unfold
from nfldm.scene_ae.load import load_scene_ae
from nfldm.scene_ae.voxels import load_voxels, read_voxel_index

parser = argparse.ArgumentParser()
parser.add_argument("--voxels", required=True)
parser.add_argument("--ranks", type=int, nargs="*", default=[])
parser.add_argument("--learned", type=int, nargs="*", default=[])
parser.add_argument("--minutes", type=float, default=2.0, help="training time of each learned column code")
parser.add_argument("--max-scenes", type=int, default=8, help="test scenes scored")
parser.add_argument("--train-scenes", type=int, default=48)
parser.add_argument("--keep", choices=["none", "density", "features", "colour"], nargs="+", default=["none"],
                    help="channels taken from the original V instead of the coded one")
parser.add_argument("--colour-weight", type=float, default=1.0,
                    help="weight of V's colour channels (1..3) in the PCA's squared error")
args = parser.parse_args()
torch.manual_seed(0)

index = read_voxel_index(args.voxels)
scene_ae = load_scene_ae(index["scene_ae"]["run"], "cpu").eval()
K, (X, Y, Z) = index["channels"], index["grid"]
lae = LatentAutoEncoder(LatentAEConfig(grid=(X, Y, Z), channels=K), stats=index["stats"])  # its normalisation
colour_scale = args.colour_weight ** 0.5
EXACT = {"none": [], "density": [0], "features": list(range(1, K)), "colour": [1, 2, 3]}


def columns(vox: dict):
    """A voxel file's V -> (V 1 x K x X x Y x Z, normalised columns (XY) x (K Z), per-value loss
    weights (XY) x (K Z))."""
    V = vox["V"].float()[None]
    Vn = lae.normalise(V)
    Vn[:, 1:4] *= colour_scale
    w = lae.voxel_weights(V).expand_as(Vn)
    return V, fold(Vn)[0].flatten(1).T, fold(w)[0].flatten(1).T


def train_columns():
    """Normalised columns and weights of the train scenes, concatenated."""
    xs, ws = zip(*[columns(load_voxels(args.voxels, n, index))[1:] for n in train])
    return torch.cat(xs), torch.cat(ws)


train = [s["name"] for s in index["scenes"] if s["split"] == "train"][: args.train_scenes]
test = [s["name"] for s in index["scenes"] if s["split"] == "test"][: args.max_scenes]
ds, where = _gt_dataset(index["data"], "test", test)
size = scene_ae.cfg.image_size


@torch.no_grad()
def cost(code, keep: str = "none") -> tuple[float, float]:
    """code: normalised columns N x KZ -> coded columns. -> (PSNR from V, PSNR from coded V)."""
    psnr_o, psnr_c = [], []
    for name in test:
        vox = load_voxels(args.voxels, name, index)
        V, x, _ = columns(vox)
        Vcn = unfold(code(x).T.reshape(1, -1, X, Y), K)
        Vcn[:, 1:4] /= colour_scale
        Vc = lae.denormalise(Vcn)
        Vc[:, EXACT[keep]] = V[:, EXACT[keep]]
        item = ds[where[name]]
        held = torch.from_numpy(np.setdiff1d(np.arange(item["images"].shape[0]), vox["input_ids"].numpy()))
        gt, intr, c2w, b = item["images"][held], vox["intrinsics"][held], vox["c2w"][held], vox["bounds"]
        psnr_o.append(metrics.psnr(render_views_of(scene_ae, V[0], b, intr, c2w, size), gt))
        psnr_c.append(metrics.psnr(render_views_of(scene_ae, Vc[0], b, intr, c2w, size), gt))
    return float(torch.cat(psnr_o).mean()), float(torch.cat(psnr_c).mean())


print(f"{len(train)} train scenes, {len(test)} test scenes, {K * Z} values per column")
print(f"{'code':<28}{'exact':>10}{'PSNR from V':>13}{'PSNR coded':>12}{'cost dB':>9}")
if args.ranks:
    x, w = train_columns()
    x, w = x.double(), w.double().mean(1, keepdim=True)  # one weight per column
    mu = (w * x).sum(0) / w.sum()
    cov = ((w * (x - mu)).T @ (x - mu)) / w.sum()
    evals, evecs = torch.linalg.eigh(cov)
    evals, evecs = evals.flip(0), evecs.flip(1).float()
    for k in args.ranks:
        P, m = evecs[:, :k], mu.float()
        kept = float(evals[:k].sum() / evals.sum())
        for keep in args.keep:
            po, pc = cost(lambda c: (c - m) @ P @ P.T + m, keep)
            print(f"{f'PCA rank {k} ({kept:.3f} var.)':<28}{keep:>10}{po:>13.2f}{pc:>12.2f}{po - pc:>9.2f}", flush=True)


class ColumnAE(nn.Module):
    """A K-number linear code per column; decoder linear, or linear + per-voxel MLP (the LAE's
    ``out_head="mlp"``: 8 features per height -> 32 hidden -> 1 + C values)."""

    def __init__(self, k: int, mlp: bool, e: int = 8, hidden: int = 32):
        super().__init__()
        self.enc, self.dec = nn.Linear(K * Z, k), nn.Linear(k, K * Z)
        self.e = e
        self.head = nn.Sequential(nn.Linear(k, e * Z), nn.SiLU(), nn.Unflatten(1, (e, Z))) if mlp else None
        self.mlp = nn.Sequential(nn.Linear(e, hidden), nn.SiLU(), nn.Linear(hidden, K)) if mlp else None

    def forward(self, x):
        code = self.enc(x)
        y = self.dec(code)
        if self.head is not None:  # N x e x Z -> N x Z x K -> N x (K Z) in the fold layout
            y = y + self.mlp(self.head(code).transpose(1, 2)).transpose(1, 2).flatten(1)
        return y


if args.learned:
    x, w = train_columns()
    w = w / w.mean()
    for k in args.learned:
        for mlp in (False, True):
            torch.manual_seed(0)
            model = ColumnAE(k, mlp)
            opt = torch.optim.AdamW(model.parameters(), 1e-3)
            t, steps = time.time(), 0
            while time.time() - t < 60 * args.minutes:
                i = torch.randint(0, len(x), (1024,))
                loss = ((model(x[i]) - x[i]) ** 2 * w[i]).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                steps += 1
            model.eval()
            for keep in args.keep:
                po, pc = cost(model, keep)
                name = f"learned {k}, {'mlp' if mlp else 'linear'} ({steps} st.)"
                print(f"{name:<28}{keep:>10}{po:>13.2f}{pc:>12.2f}{po - pc:>9.2f}", flush=True)
