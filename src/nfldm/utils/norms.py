"""Frozen normalisation statistics: run a network once, record what its GroupNorms computed, and
run it again on edited inputs with those statistics. A GroupNorm normalises by the mean and
variance over a whole feature map, so a change in one region moves every output a little; with
the statistics frozen, a fully convolutional network is local again (an output changes only
where its receptive field sees the change). Local edits (``nfldm edit``, ``nfldm extend``) decode
and render through :func:`replay_norms` with the statistics of the unedited scene.

    with record_norms(net) as stats:      # stats: {module: [(mean, var) per call]}
        y0 = net(x0)
    with replay_norms(net, stats):
        y1 = net(x1)                      # y1 == y0 wherever x1's change is out of reach
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["record_norms", "replay_norms"]


def _stats(m: nn.GroupNorm, x: Tensor) -> tuple[Tensor, Tensor]:
    """Per (sample, group) mean and biased variance of x (B x C x ...), as F.group_norm uses."""
    g = x.reshape(x.shape[0], m.num_groups, -1).float()
    return g.mean(-1), g.var(-1, unbiased=False)


def _normalise(m: nn.GroupNorm, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    B, C = x.shape[:2]
    g = x.reshape(B, m.num_groups, -1).float()
    y = ((g - mean[..., None]) / torch.sqrt(var[..., None] + m.eps)).reshape(x.shape).to(x.dtype)
    if m.affine:
        shape = (1, C) + (1,) * (x.dim() - 2)
        y = y * m.weight.reshape(shape) + m.bias.reshape(shape)
    return y


@contextlib.contextmanager
def _patched(net: nn.Module, make_forward) -> Iterator[None]:
    mods = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    before = {m: m.__dict__.get("forward") for m in mods}     # an enclosing patch, if any
    for m in mods:
        m.forward = make_forward(m)            # instance attribute shadows the class method
    try:
        yield
    finally:
        for m in mods:
            if before[m] is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = before[m]


@contextlib.contextmanager
def record_norms(net: nn.Module) -> Iterator[dict]:
    """Inside the block, every GroupNorm of ``net`` computes as usual and appends its
    (mean, var) (each B x groups) to the yielded dict, one entry per call."""
    stats: dict[nn.Module, list[tuple[Tensor, Tensor]]] = {}

    def make(m):
        def forward(x: Tensor) -> Tensor:
            stats.setdefault(m, []).append(tuple(s.detach() for s in _stats(m, x)))
            return F.group_norm(x, m.num_groups, m.weight, m.bias, m.eps)
        return forward

    with _patched(net, make):
        yield stats


@contextlib.contextmanager
def replay_norms(net: nn.Module, stats: dict) -> Iterator[None]:
    """Inside the block, the k-th call of each GroupNorm of ``net`` normalises with the k-th
    recorded (mean, var) of :func:`record_norms`: the same calls in the same order (same batch
    sizes) as when they were recorded, else a RuntimeError."""
    calls: dict[nn.Module, int] = {}

    def make(m):
        def forward(x: Tensor) -> Tensor:
            k = calls.get(m, 0)
            rec = stats.get(m, [])
            if k >= len(rec):
                raise RuntimeError("replay_norms: more GroupNorm calls than were recorded (run the network on "
                                   "the same batches as when recording)")
            mean, var = rec[k]
            if mean.shape[0] != x.shape[0]:
                raise RuntimeError(f"replay_norms: batch of {x.shape[0]} where {mean.shape[0]} was recorded")
            calls[m] = k + 1
            return _normalise(m, x, mean.to(x.device), var.to(x.device))
        return forward

    with _patched(net, make):
        yield
