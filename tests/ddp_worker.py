"""Toy model / dataset for the trainer tests, and a torchrun worker for the DDP test.

As a worker: ``python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py RUN_DIR``
trains the deterministic toy model for one step (config from :func:`ddp_config`) into RUN_DIR.
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from torch.utils.data import Dataset

from nfldm.trainer import TrainConfig, Trainer


class ToyDataset(Dataset):
    """n items {"x": 4 floats, "y": float, "name": str}; ``set_epoch`` shifts x by 0.01*epoch
    and also draws from the global torch RNG (the trainer must isolate that)."""

    def __init__(self, n: int = 10):
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, 4, generator=g)
        self.y = torch.randn(n, generator=g)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        torch.rand(3)  # a careless dataset: consumes global randomness

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i] + 0.01 * self.epoch, "y": self.y[i], "name": f"item{i}"}


class ToyModel(nn.Module):
    """MLP 4 -> hidden -> 1; training_loss = MSE, with x + 0.1 * U(0,1) noise when ``noise``."""

    def __init__(self, hidden: int = 16, noise: bool = True):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.noise = noise

    def training_loss(self, batch: dict, step: int):
        x, y = batch["x"], batch["y"]                      # B x 4, B
        assert isinstance(batch["name"], list) and isinstance(batch["name"][0], str)
        if self.noise:
            x = x + 0.1 * torch.rand_like(x)
        pred = self.net(x).squeeze(-1)                     # B
        loss = ((pred - y) ** 2).mean()
        return loss, {"mse": loss.detach(), "const": 1.0}


def ddp_config() -> TrainConfig:
    return TrainConfig(steps=1, batch_size=4, lr=1e-2, warmup_steps=0, decay="constant",
                       grad_clip=1.0, device="cpu", seed=3, log_every=1, ckpt_every=0,
                       progress=False)


def run_one_step(run_dir: str) -> None:
    cfg = ddp_config()
    torch.manual_seed(0)
    model = ToyModel(noise=False)
    Trainer(model, ToyDataset(8), cfg, run_dir, {"stage": "toy", "train": cfg.to_dict()}).fit()


if __name__ == "__main__":
    torch.set_num_threads(1)
    run_one_step(sys.argv[1])
