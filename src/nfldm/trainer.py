"""The project's one training loop, shared by every pipeline stage.

Read top to bottom: config -> distributed set-up -> batch sampling -> lr schedule -> RNG
state -> checkpoint files -> :class:`Trainer` -> loading weights for downstream stages.

A stage hands the trainer a model that implements

    model.training_loss(batch: dict, step: int) -> (loss: Tensor[()], metrics: dict[str, Tensor[()] | float])

(``step`` is the 0-based index of the optimizer update being computed), a map-style dataset
whose items are dicts (optionally with ``set_epoch(epoch)``), a :class:`TrainConfig` and a run
directory. Single process or ``torchrun --nproc_per_node=W``: the code is the same.

Run directory layout (``RUN`` = run_dir)::

    RUN/config.json             full run config (written on a fresh run / resume)
    RUN/checkpoint.safetensors  model.* / ema.* weights, optim.<param>.<name> optimizer tensors
    RUN/checkpoint.json         step, epoch, batch position, optimizer hyper-parameters, RNG
                                states, config hash, ckpt_id (pairs it with the .safetensors)
    RUN/model.safetensors       final weights for downstream use (EMA weights if EMA is on)
    RUN/model.json              {"step", "ema"} (+ "trained_steps", "val_best" with keep_best)
    RUN/best.safetensors        keep_best: the (EMA) weights at the best held-out measurement
    RUN/best.json               {"step", "ema", "val_best"} of those weights
    RUN/snapshots/step_NNNNNN/  snapshot_every: the (EMA) weights at that step as model.safetensors +
                                model.json, with a copy of config.json: a run directory of its own
    RUN/metrics.jsonl           one JSON line per logged step
    RUN/loss_curves.png         plot of metrics.jsonl
    RUN/tb/                     TensorBoard scalars (when tensorboard is installed)

Exact resume: training N steps straight, or k steps and then ``resume=True`` up to N, gives
bit-identical losses and weights (same device / world size). This holds because (1) the
data order is a pure function of (seed, epoch, batch index), (2) the torch / numpy / python
RNG states of every rank are saved in the checkpoint and restored, (3) nothing outside
``training_loss`` draws from the global RNGs: ``dataset.set_epoch`` and callbacks run with
the global RNG state saved and restored around them, and each epoch's DataLoader gets its own
seeded ``generator``. Dataset ``__getitem__`` randomness must be a function of
(seed, epoch, index) (as in :class:`nfldm.data.loader.SceneDataset`) for exactness with
``num_workers > 0``.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import gc
import hashlib
import json
import math
import os
import random
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from nfldm.config import dict_without_added
from nfldm.utils.io import atomic_write_bytes, atomic_write_json, read_json, read_tensors, write_tensors
from nfldm.utils.plot import plot_metrics, read_metrics

__all__ = [
    "dict_without_added",
    "CheckpointError",
    "RunInUseError",
    "GlobalBatchSampler",
    "TrainConfig",
    "Trainer",
    "init_distributed",
    "load_model_weights",
    "half_weights",
    "int8_weights",
    "lr_at",
    "read_run_config",
]

CONFIG_FILE = "config.json"
CKPT_WEIGHTS = "checkpoint.safetensors"
CKPT_STATE = "checkpoint.json"
MODEL_WEIGHTS = "model.safetensors"
MODEL_INFO = "model.json"
BEST_WEIGHTS = "best.safetensors"
BEST_INFO = "best.json"
SNAPSHOTS = "snapshots"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss_curves.png"
LOCK_FILE = "train.lock"
CKPT_FORMAT = "nfldm-trainer-checkpoint"
CKPT_VERSION = 1


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping settings of one training run."""

    steps: int = 1000
    batch_size: int = 4            # GLOBAL batch; each of W DDP ranks gets batch_size // W
    lr: float = 3e-4
    weight_decay: float = 0.01     # AdamW; applied to weights with >= 2 dims only
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 100        # linear warm-up from 0
    decay: str = "cosine"          # "cosine" (to min_lr_ratio * lr at `steps`) | "constant"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0         # 0 = off; clip the global grad norm
    ema_decay: float = 0.0         # 0 = off; else EMA of parameters updated every step
    amp: str = "auto"              # "auto" (bf16 on CUDA, off on CPU) | "bf16" | "fp16" | "off"
    device: str = "auto"           # "auto" -> cuda:LOCAL_RANK if available else cpu
    seed: int = 0
    num_workers: int = 0
    log_every: int = 10
    ckpt_every: int = 500          # 0 = only at the end
    progress: bool = True          # tqdm on rank 0
    max_minutes: float = 0.0       # 0 = no limit; else stop (checkpoint + model) after this much
                                   # training time, counted over resumes; the lr schedule stays
                                   # the one for `steps`
    val_every: int = 0             # 0 = off; else every this many steps the held-out value (below)
                                   # is measured on the validation set given to the Trainer
    val_items: int = 16            # held-out items per measurement (the same items and noise each time)
    val_metric: str = "loss"       # the value of training_loss's (loss, metrics) that is tracked
    patience: int = 0              # 0 = never stop early; else stop (checkpoint + model) after this
                                   # many measurements without a relative improvement of at least
    min_improvement: float = 0.005  # ... this over the best held-out value so far
    keep_best: bool = False        # with val_every: keep the (EMA) weights of the lowest held-out
                                   # value (RUN/best.*; any lower value, not only one that passes
                                   # min_improvement) and make them RUN/model.* at the end
    snapshot_every: int = 0        # 0 = off; else every this many steps RUN/snapshots/step_NNNNNN/
                                   # (the (EMA) weights, model.json, config.json): a run directory the
                                   # loaders take, to choose a step by a sample metric rather than by
                                   # the held-out loss (docs/architecture.md)

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        if (self.steps < 0 or self.batch_size < 1 or self.log_every < 1 or self.ckpt_every < 0
                or self.snapshot_every < 0):
            raise ValueError(f"TrainConfig: need steps >= 0, batch_size >= 1, log_every >= 1, "
                             f"ckpt_every >= 0, snapshot_every >= 0; got {self}")
        if self.decay not in ("cosine", "constant"):
            raise ValueError(f"TrainConfig.decay must be 'cosine' or 'constant', got {self.decay!r}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ValueError(f"TrainConfig.amp must be auto|bf16|fp16|off, got {self.amp!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"TrainConfig.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.val_every < 0 or self.val_items < 1 or self.patience < 0 or self.min_improvement < 0:
            raise ValueError(f"TrainConfig: need val_every >= 0, val_items >= 1, patience >= 0 and "
                             f"min_improvement >= 0; got {self.val_every}, {self.val_items}, {self.patience}, "
                             f"{self.min_improvement}")

    def to_dict(self) -> dict:
        """JSON-serialisable dict (betas as a list)."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise a ValueError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; known: {sorted(known)}")
        return cls(**d)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for the update with 0-based index ``step``.

    Linear warm-up ``lr * (step + 1) / warmup_steps`` for ``step < warmup_steps``, then either
    constant ``lr`` or a cosine from ``lr`` (at ``warmup_steps``) to ``min_lr_ratio * lr``
    (at ``steps``; held there beyond).
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.decay == "constant":
        return cfg.lr
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    min_lr = cfg.min_lr_ratio * cfg.lr
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - min_lr)


# ----------------------------------------------------------------------------------------
# Distributed set-up


def init_distributed(backend: str | None = None) -> tuple[int, int, int]:
    """Read RANK / WORLD_SIZE / LOCAL_RANK (set by torchrun) and join the process group.

    Returns ``(rank, world_size, local_rank)``; ``(0, 1, 0)`` without torchrun. With
    WORLD_SIZE > 1 and no process group yet, initialises one with ``backend`` (default: nccl
    when CUDA is available, else gloo); with nccl the CUDA device is set to LOCAL_RANK.
    Idempotent.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        kwargs = {}
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
            kwargs["device_id"] = torch.device("cuda", local_rank)
        dist.init_process_group(backend=backend, **kwargs)
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return rank, world_size, local_rank


def resolve_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    """"auto" -> cuda:LOCAL_RANK when CUDA is available, else cpu; a bare "cuda" gets the
    local rank as its index."""
    if spec == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def _resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for full precision (always None off CUDA)."""
    if device.type != "cuda":
        if amp in ("bf16", "fp16"):
            warnings.warn(f"amp={amp!r} ignored on {device}: autocast is only used on CUDA")
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


# ----------------------------------------------------------------------------------------
# Data: deterministic, rank-sharded global batches


def _mix(*ints: int) -> int:
    """A well-mixed 63-bit seed from a few non-negative integers."""
    state = np.random.SeedSequence([int(i) for i in ints]).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1


class GlobalBatchSampler:
    """This rank's share of every global batch of one epoch (a DataLoader ``batch_sampler``).

    The epoch order is ``randperm(n_items)`` seeded by (seed, epoch). Global batch ``b`` is
    ``perm[b*B : (b+1)*B]`` (B = global batch size; the ``n_items % B`` left-over items are
    dropped) and rank ``r`` of ``W`` takes the r-th chunk of B/W of it. So a global batch holds
    the same items for any W, and starting at batch ``start`` skips consumed batches without
    drawing anything.
    """

    def __init__(self, n_items: int, global_batch: int, rank: int, world_size: int, seed: int,
                 epoch: int, start: int = 0):
        self.n_batches = n_items // global_batch
        self.n_items, self.global_batch, self.rank, self.world_size = n_items, global_batch, rank, world_size
        self.local_batch = global_batch // world_size
        self.seed, self.epoch, self.start = seed, epoch, start

    def __len__(self) -> int:
        return max(0, self.n_batches - self.start)

    def __iter__(self):
        gen = torch.Generator().manual_seed(_mix(self.seed, self.epoch, 0))
        perm = torch.randperm(self.n_items, generator=gen).tolist()
        for b in range(self.start, self.n_batches):
            lo = b * self.global_batch + self.rank * self.local_batch
            yield perm[lo: lo + self.local_batch]


def _to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move tensors inside nested dicts / lists / tuples to ``device``; leave the rest."""
    if torch.is_tensor(obj):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, dict):
        return {k: _to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device, non_blocking) for v in obj)
    return obj


# ----------------------------------------------------------------------------------------
# RNG state (JSON-serialisable)


def _b64(t: torch.Tensor | np.ndarray) -> str:
    arr = t.numpy() if torch.is_tensor(t) else t
    return base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode("ascii")


def _unb64(s: str, dtype) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=dtype).copy()


def _rng_state(device: torch.device) -> dict:
    """torch CPU (+ this device's CUDA), numpy and python ``random`` states as JSON data."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": _b64(torch.get_rng_state()),
        "numpy": {"kind": np_state[0], "keys": _b64(np_state[1]), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if device.type == "cuda":
        state["cuda"] = _b64(torch.cuda.get_rng_state(device))
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(torch.from_numpy(_unb64(state["torch"], np.uint8)))
    n = state["numpy"]
    np.random.set_state((n["kind"], _unb64(n["keys"], np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(torch.from_numpy(_unb64(state["cuda"], np.uint8)), device)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def _isolated_rng(device: torch.device, seed: int | None = None):
    """Run a block without disturbing the global RNGs (optionally seeding them inside)."""
    saved = _rng_state(device)
    try:
        if seed is not None:
            _seed_all(seed)
        yield
    finally:
        _set_rng_state(saved, device)


# ----------------------------------------------------------------------------------------
# Checkpoint files


class CheckpointError(ValueError):
    """A checkpoint / weights file is missing, corrupt or does not match the model."""


class RunInUseError(RuntimeError):
    """Another process is training the same run directory."""


# run directories this process holds the lock of: {resolved run dir: open lock file}
_HELD_LOCKS: dict[Path, Any] = {}


def _lock_run_dir(run_dir: Path) -> None:
    """Take RUN/train.lock (an exclusive, non-blocking ``flock``) for this process, or raise
    RunInUseError naming the process that holds it: two processes training one run would
    interleave their checkpoints. Re-entrant within a process (a resumed Trainer, DDP's rank 0
    only); released by :func:`_unlock_run_dir` or at process exit, also when the process is killed."""
    try:
        import fcntl
    except ImportError:          # no flock (Windows): no lock
        return
    key = run_dir.resolve()
    if key in _HELD_LOCKS:
        return
    f = open(key / LOCK_FILE, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "a process"
        f.close()
        raise RunInUseError(f"{run_dir}: {holder} is training this run now; wait for it to finish, or "
                            "choose another run directory") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}")
    f.flush()
    _HELD_LOCKS[key] = f


def _unlock_run_dir(run_dir: Path) -> None:
    f = _HELD_LOCKS.pop(run_dir.resolve(), None)
    if f is not None:
        f.close()                # closing the file drops the flock


def _load_module(module: nn.Module, tensors: dict[str, torch.Tensor], prefix: str, path: Path,
                 what: str) -> None:
    """Load ``tensors[prefix + name]`` into ``module`` after checking keys and shapes."""
    expected = module.state_dict()
    got = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [f"{k}: file {tuple(got[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in expected if k in got and got[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        def few(xs):
            return ", ".join(xs[:5]) + (f", ... ({len(xs)} in all)" if len(xs) > 5 else "")
        problems = []
        if missing:
            problems.append(f"missing keys [{few(missing)}]")
        if unexpected:
            problems.append(f"unexpected keys [{few(unexpected)}]")
        if shapes:
            problems.append(f"shape mismatch [{few(shapes)}]")
        raise CheckpointError(f"{path}: the {what} weights do not match the model: "
                              f"{'; '.join(problems)} (was it written by another model/config?)")
    module.load_state_dict(got, strict=True)


def _read_json(path: Path, what: str) -> Any:
    return read_json(path, what, CheckpointError, missing_ok=True, want=None)


def _fused_ok(params: list[torch.Tensor]) -> bool | None:
    """Fused AdamW (one kernel per parameter: on the 2-core CPU 4.4 instead of 14 ms a step for
    psi_c's 3.5 M parameters) where PyTorch has it: floating-point parameters on the CPU or CUDA."""
    return True if all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) else None


def _read_checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors of RUN/checkpoint.safetensors and the matching training state.

    The state is RUN/checkpoint.json when its ``ckpt_id`` equals the one stored in the
    safetensors metadata. If the json is missing or older (a kill between writing the two
    files), the copy of the state embedded in the safetensors metadata is used instead, so
    mismatched files are never paired.
    """
    weights, state_path = run_dir / CKPT_WEIGHTS, run_dir / CKPT_STATE
    tensors, meta = read_tensors(weights, CheckpointError)
    if meta.get("format") != CKPT_FORMAT or "state" not in meta:
        raise CheckpointError(f"{weights}: not a trainer checkpoint (metadata format "
                              f"{meta.get('format')!r}, expected {CKPT_FORMAT!r})")
    state = None
    if state_path.exists():
        state = _read_json(state_path, "the checkpoint state")
        if not isinstance(state, dict):
            raise CheckpointError(f"{state_path}: not a checkpoint state (expected a JSON object)")
    if state is None or state.get("ckpt_id") != meta.get("ckpt_id"):
        embedded = json.loads(meta["state"])
        if state is not None:
            warnings.warn(f"{state_path} (step {state.get('step')}) does not belong to {weights} "
                          f"(step {embedded['step']}); the run was stopped while writing a "
                          "checkpoint; using the state stored inside the .safetensors file")
        state = embedded
    if state.get("version") != CKPT_VERSION:
        raise CheckpointError(f"{state_path}: checkpoint version {state.get('version')!r}, "
                              f"this code reads version {CKPT_VERSION}")
    return tensors, state


def _has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / CKPT_WEIGHTS).exists() or (run_dir / CKPT_STATE).exists()


# ----------------------------------------------------------------------------------------
# Run config helpers


def _jsonable(obj: Any) -> Any:
    """``obj`` after a JSON round trip (tuples -> lists), so it compares equal to the file."""
    try:
        return json.loads(json.dumps(obj, allow_nan=False, default=os.fspath))
    except (TypeError, ValueError) as e:
        raise ValueError(f"run_config must be JSON-serialisable: {e}") from e


def _without_steps(cfg: dict) -> dict:
    """The run config without train.steps / max_minutes / progress (changing them only
    extends or shortens a run), keep_best and snapshot_every (they only write files)."""
    cfg = copy.deepcopy(cfg)
    if isinstance(cfg, dict) and isinstance(cfg.get("train"), dict):
        for k in ("steps", "max_minutes", "progress", "keep_best", "snapshot_every"):
            cfg["train"].pop(k, None)
    return cfg


def _with_device(cfg: dict, other: dict) -> dict:
    """``cfg`` with the train.device of ``other`` (when both have one): runs compare equal across
    devices."""
    dev = other.get("train", {}).get("device") if isinstance(other, dict) else None
    if dev is None or not isinstance(cfg.get("train"), dict) or "device" not in cfg["train"]:
        return cfg
    return {**cfg, "train": {**cfg["train"], "device": dev}}


def _config_hash(cfg: dict) -> str:
    text = json.dumps(_without_steps(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """Dotted path of the first place where two JSON values differ, or None if equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            p = f"{path}.{k}" if path else str(k)
            if k not in a or k not in b:
                return p
            d = _first_difference(a[k], b[k], p)
            if d is not None:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return path or "<root>"
        for i, (x, y) in enumerate(zip(a, b)):
            d = _first_difference(x, y, f"{path}[{i}]")
            if d is not None:
                return d
        return None
    numbers = (int, float)
    if (isinstance(a, numbers) and isinstance(b, numbers)
            and not isinstance(a, bool) and not isinstance(b, bool)):
        return None if a == b else (path or "<root>")
    return None if (type(a) is type(b) and a == b) else (path or "<root>")


def _lookup(cfg: Any, dotted: str) -> Any:
    """Value at a path from :func:`_first_difference` ('<missing>' if absent)."""
    cur = cfg
    for part in dotted.replace("[", ".[").split("."):
        if not part or part == "<root>":
            continue
        try:
            cur = cur[int(part[1:-1])] if part.startswith("[") else cur[part]
        except (KeyError, IndexError, TypeError):
            return "<missing>"
    return cur


def read_run_config(run_dir: str | os.PathLike) -> dict:
    """The run config stored in RUN/config.json (ValueError if RUN is not a run directory)."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{run_dir} is not a run directory: {path} is missing") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{run_dir} is not a run directory: cannot read {path} "
                         f"({type(e).__name__}: {e})") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"{run_dir} is not a run directory: {path} does not hold a JSON object")
    return cfg


# ----------------------------------------------------------------------------------------
# The trainer


class _LossModule(nn.Module):
    """``forward(batch, step) = model.training_loss(batch, step)``, so DDP hooks fire."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict, step: int):
        return self.model.training_loss(batch, step)


class Trainer:
    """Trains ``model`` on ``dataset`` for ``cfg.steps`` AdamW updates (single process or DDP).

    Attributes for callbacks: ``model`` (unwrapped), ``ema_model()``, ``device``, ``rank``,
    ``world_size``, ``run_dir``, ``cfg``, ``step`` (updates done), ``epoch``.

    ``callbacks``: callables ``cb(trainer, step, metrics)`` run on rank 0 after each logged
    step (``step`` = updates done, ``metrics`` = the logged record). They run with the global
    RNG state saved and restored around them and the model is put back in train mode after.

    ``val_dataset`` (with ``cfg.val_every``): every ``val_every`` steps rank 0 measures
    ``cfg.val_metric`` of ``training_loss`` (the EMA model's, when EMA is on; no gradient) on the
    same ``cfg.val_items`` held-out items with the same random draws (noise, views) each time, and
    logs it as ``val_loss`` (with ``val_best``, ``val_best_step``) in metrics.jsonl. With
    ``cfg.patience``, training stops once that many measurements in a row failed to improve the
    best by ``cfg.min_improvement`` (relative): the step at which the stage stops improving on
    held-out data. The record is kept in the checkpoint, so a resumed run continues it (and a
    run that stopped stays stopped); ``trainer.val_state`` holds it.
    """

    def __init__(self, model: nn.Module, dataset, cfg: TrainConfig, run_dir: str | os.PathLike,
                 run_config: dict, resume: bool = False,
                 callbacks: list[Callable[["Trainer", int, dict], Any]] | None = None,
                 val_dataset=None):
        if not callable(getattr(model, "training_loss", None)):
            raise TypeError(f"{type(model).__name__} has no training_loss(batch, step) method")
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.callbacks = list(callbacks or [])
        self.run_config = _jsonable(run_config)
        self.val_dataset = val_dataset if cfg.val_every else None
        if cfg.val_every and (val_dataset is None or len(val_dataset) == 0):
            warnings.warn(f"{run_dir}: val_every={cfg.val_every} but no held-out items: no held-out measurement, "
                          "no early stop")
            self.val_dataset = None
        self.val_state: dict = {"best": None, "best_step": None, "bad": 0, "stopped": False, "last": None}

        # -- processes and device
        owned = not dist.is_initialized()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(cfg.device, local_rank)
        self.rank, self.world_size, self.local_rank = init_distributed(
            "nccl" if self.device.type == "cuda" else "gloo")
        self._owns_process_group = owned and dist.is_initialized()
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if cfg.batch_size % self.world_size:
            raise ValueError(f"batch_size {cfg.batch_size} (global) is not divisible by the "
                             f"world size {self.world_size}")
        self.local_batch = cfg.batch_size // self.world_size
        self.amp_dtype = _resolve_amp(cfg.amp, self.device)

        # -- data
        self.dataset = dataset
        self.batches_per_epoch = len(dataset) // cfg.batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"the dataset has {len(dataset)} items, fewer than one global batch "
                             f"(batch_size={cfg.batch_size}); lower batch_size (--set batch_size=N) or add data")

        # -- run directory: fresh run or resume (every rank checks; rank 0 writes)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            _lock_run_dir(self.run_dir)
        tensors, state = self._check_run_dir(resume)

        # -- model, DDP (broadcasts rank 0's parameters and buffers), EMA, optimizer
        self.model = model.to(self.device)
        if state is not None:
            _load_module(self.model, tensors, "model.", self.run_dir / CKPT_WEIGHTS, "model")
        self._ema: nn.Module | None = None
        if cfg.ema_decay > 0:  # copied before DDP registers its hooks on the parameters
            self._ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self._loss_module: nn.Module = _LossModule(self.model)
        self._wrap_ddp()
        if self._ema is not None:
            if state is not None:
                _load_module(self._ema, tensors, "ema.", self.run_dir / CKPT_WEIGHTS, "EMA")
            else:  # start from the (broadcast) initial weights
                self._ema.load_state_dict(self.model.state_dict())
        self.optimizer = self._make_optimizer()
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None

        # -- position and RNG
        self.step, self.epoch, self.batch_in_epoch, self._elapsed_before = 0, 0, 0, 0.0
        if state is None:
            _seed_all(cfg.seed + self.rank)
        else:
            self._restore(tensors, state)
        self._ckpt_step = self.step if state is not None else -1
        self.last_metrics: dict = {}

        # -- files (rank 0)
        if self.rank == 0:
            atomic_write_json(self.run_dir / CONFIG_FILE, self.run_config)
            metrics = self.run_dir / METRICS_FILE
            if state is None:
                metrics.unlink(missing_ok=True)
            elif metrics.exists():
                self._truncate_metrics(metrics, self.step)
        self._barrier()

    # ---- set-up helpers

    def _check_run_dir(self, resume: bool) -> tuple[dict, dict | None]:
        """Validate fresh-vs-resume; return the checkpoint (tensors, state) or ({}, None)."""
        has_ckpt = _has_checkpoint(self.run_dir)
        if has_ckpt and not resume:
            raise ValueError(f"{self.run_dir} already holds a checkpoint ({self.run_dir / CKPT_WEIGHTS}); "
                             "pass --resume to continue it, or choose another run directory")
        if not resume:
            return {}, None
        cfg_path = self.run_dir / CONFIG_FILE
        stored = read_run_config(self.run_dir) if cfg_path.exists() else None
        # the device is chosen at run time: a run started on the CPU resumes on a GPU and back
        devices = {(stored or {}).get("train", {}).get("device"), self.run_config.get("train", {}).get("device")}
        if stored is not None:
            diff = _first_difference(_without_steps(stored), _without_steps(_with_device(self.run_config, stored)))
            if diff is not None:
                raise ValueError(f"{cfg_path}: the run config differs from the one the run was "
                                 f"started with at key '{diff}' (stored: {_lookup(stored, diff)!r}, "
                                 f"now: {_lookup(self.run_config, diff)!r}); resume with the same "
                                 "config, or choose another run directory")
        if not has_ckpt:
            return {}, None
        tensors, state = _read_checkpoint(self.run_dir)
        hashes = {_config_hash(_with_device(self.run_config, {"train": {"device": d}})) for d in devices if d}
        if state.get("config_hash") not in hashes | {_config_hash(self.run_config)}:
            raise ValueError(f"{self.run_dir / CKPT_STATE}: the checkpoint was written with another "
                             "run config (config hash differs); resume with the same config")
        if state.get("global_batch") != self.cfg.batch_size:
            raise ValueError(f"{self.run_dir / CKPT_STATE}: checkpoint global batch size "
                             f"{state.get('global_batch')} != batch_size {self.cfg.batch_size}")
        return tensors, state

    def _make_optimizer(self) -> torch.optim.Optimizer:
        """AdamW; weight decay on weights with >= 2 dims (matrices, kernels), not on biases/norms."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{type(self.model).__name__} has no trainable parameters")
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": g, "weight_decay": wd}
                  for g, wd in ((decay, self.cfg.weight_decay), (no_decay, 0.0)) if g]
        return torch.optim.AdamW(groups, lr=self.cfg.lr, betas=self.cfg.betas, fused=_fused_ok(params))

    def _restore(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        """Load optimizer / scaler / position / RNG from a checkpoint (weights are loaded already)."""
        path = self.run_dir / CKPT_WEIGHTS
        opt_state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                pid, name = k[len("optim."):].split(".", 1)
                opt_state.setdefault(int(pid), {})[name] = v
        for k, v in state["optimizer"]["scalars"].items():
            pid, name = k.split(".", 1)
            opt_state.setdefault(int(pid), {})[name] = v
        # the implementation (fused / foreach) is this code's choice, not the checkpoint's: a run
        # saved before fused AdamW resumes fused (same update, other rounding)
        impl = {k: self.optimizer.param_groups[0].get(k) for k in ("fused", "foreach")}
        groups = [dict(g, betas=tuple(g["betas"]), **impl) for g in state["optimizer"]["param_groups"]]
        try:
            self.optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"{path}: optimizer state does not match the model ({e})") from e
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self._elapsed_before = float(state.get("elapsed_s", 0.0))
        if state.get("val"):
            self.val_state.update(state["val"])
        rngs = state["rng"]
        if len(rngs) == self.world_size:
            _set_rng_state(rngs[self.rank], self.device)
        else:
            warnings.warn(f"{path}: written by {len(rngs)} processes, resuming with "
                          f"{self.world_size}; random streams are re-seeded (not bit-exact)")
            _seed_all(_mix(self.cfg.seed, self.rank, self.step))

    @staticmethod
    def _truncate_metrics(path: Path, step: int) -> None:
        """Drop lines with step > ``step`` (logged after the checkpoint) and broken lines."""
        keep = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line)
            except (ValueError, KeyError, TypeError):
                continue
        atomic_write_bytes(path, "".join(ln + "\n" for ln in keep).encode())

    def _barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def _wrap_ddp(self) -> None:
        """With several processes, wrap the loss module in DDP (broadcasts rank 0's
        parameters and buffers); a no-op when it is wrapped already or there is one process."""
        if self.world_size > 1 and not isinstance(self._loss_module,
                                                  nn.parallel.DistributedDataParallel):
            self._loss_module = nn.parallel.DistributedDataParallel(
                self._loss_module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=getattr(self.model, "ddp_find_unused_parameters", False),
                gradient_as_bucket_view=True)

    def _release_ddp(self) -> None:
        """Drop the DDP wrapper and collect it now. Its reducer holds the process group:
        left to interpreter shutdown, gloo's threads can be torn down while joinable, which
        aborts the process (SIGABRT, "terminate called without an active exception") after
        training has finished."""
        if isinstance(self._loss_module, nn.parallel.DistributedDataParallel):
            self._loss_module = self._loss_module.module
            gc.collect()

    # ---- public helpers

    def ema_model(self) -> nn.Module:
        """The module holding EMA weights (the model itself when EMA is off)."""
        return self._ema if self._ema is not None else self.model

    # ---- training

    def _make_loader(self) -> DataLoader:
        """DataLoader for the rest of the current epoch (from batch ``batch_in_epoch``)."""
        sampler = GlobalBatchSampler(len(self.dataset), self.cfg.batch_size, self.rank,
                                     self.world_size, self.cfg.seed, self.epoch, self.batch_in_epoch)
        # Own generator: the worker base seed then comes from (seed, epoch), not the global RNG.
        gen = torch.Generator().manual_seed(_mix(self.cfg.seed, self.epoch, 1))
        return DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.cfg.num_workers,
                          pin_memory=self.device.type == "cuda", generator=gen)

    def _train_step(self, batch: dict) -> tuple[torch.Tensor, dict, torch.Tensor | None, float]:
        """One AdamW update on this rank's share of a global batch.

        Returns (loss Tensor[()], metrics, grad_norm Tensor[()] | None, lr); no host sync.
        """
        cfg, step = self.cfg, self.step
        lr = lr_at(step, cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        batch = _to_device(batch, self.device, non_blocking=self.device.type == "cuda")
        autocast = (torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)
                    if self.amp_dtype is not None else contextlib.nullcontext())
        with autocast:
            loss, metrics = self._loss_module(batch, step)
        if not torch.is_tensor(loss) or loss.dim() != 0:
            raise ValueError(f"training_loss must return a scalar loss Tensor, got "
                             f"{type(loss).__name__} {getattr(loss, 'shape', '')}")
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        grad_norm = None
        if cfg.grad_clip > 0:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self._ema is not None:
            self._update_ema()
        self.step += 1
        self.batch_in_epoch += 1
        if self.batch_in_epoch == self.batches_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        metrics = {k: v.detach() if torch.is_tensor(v) else v for k, v in metrics.items()}
        return loss.detach(), metrics, grad_norm, lr

    @torch.no_grad()
    def _update_ema(self) -> None:
        """ema <- decay * ema + (1 - decay) * param; buffers are copied."""
        ema_p, src_p = list(self._ema.parameters()), list(self.model.parameters())
        torch._foreach_lerp_(ema_p, src_p, 1.0 - self.cfg.ema_decay)
        for e, b in zip(self._ema.buffers(), self.model.buffers()):
            e.copy_(b)

    def _reduce_metrics(self, loss: torch.Tensor, metrics: dict, grad_norm) -> dict[str, float]:
        """Mean over ranks of loss and metric scalars (one host sync)."""
        values = {"loss": loss, **{k: v for k, v in metrics.items() if k != "loss"}}
        if grad_norm is not None:
            values["grad_norm"] = grad_norm
        flat = []
        for k, v in values.items():
            if torch.is_tensor(v):
                if v.numel() != 1:
                    raise ValueError(f"metric {k!r} must be a scalar, got shape {tuple(v.shape)}")
                flat.append(v.detach().float().reshape(1).to(self.device))
            else:
                flat.append(torch.tensor([float(v)], device=self.device))
        vec = torch.cat(flat)
        if self.world_size > 1:
            dist.all_reduce(vec, op=dist.ReduceOp.SUM)
            vec /= self.world_size
        return dict(zip(values, vec.tolist()))

    def _out_of_time(self, t_start: float | None) -> bool:
        """Whether cfg.max_minutes of training time are used up (all ranks agree). ``t_start``: when
        this fit began; None counts only the time used before it (a resumed run's)."""
        if not self.cfg.max_minutes:
            return False
        used = self._elapsed_before + (time.perf_counter() - t_start if t_start is not None else 0.0)
        flag = torch.tensor([float(used >= 60.0 * self.cfg.max_minutes)], device=self.device)
        if self.world_size > 1:
            dist.broadcast(flag, 0)
        self.time_limited = bool(flag.item())
        if self.time_limited and self.rank == 0:
            warnings.warn(f"stopping at step {self.step} of {self.cfg.steps}: the time limit "
                          f"max_minutes={self.cfg.max_minutes} is reached")
        return self.time_limited

    def fit(self) -> dict:
        """Train until ``cfg.steps``; return the last logged record (step, lr, loss, ...)."""
        cfg = self.cfg
        is_main = self.rank == 0
        self.time_limited = False
        pbar = tb = metrics_file = None
        try:
            if is_main:
                metrics_file = open(self.run_dir / METRICS_FILE, "a")
                tb = self._open_tensorboard()
                if cfg.progress:
                    pbar = tqdm(total=cfg.steps, initial=min(self.step, cfg.steps),
                                desc=self.run_dir.name, dynamic_ncols=True)
            self._wrap_ddp()  # released at the end of every fit
            self.model.train()
            t_start = time.perf_counter()
            last_log_t, last_log_step = t_start, self.step
            # a run resumed after its time limit (max_minutes) takes no further step; within this fit the
            # limit is checked after every step (below), so a fresh run takes at least one
            while self.step < cfg.steps and not self.val_state["stopped"] and not self._out_of_time(None):
                # set_epoch may draw from the global RNGs: give it its own seeded stream
                if hasattr(self.dataset, "set_epoch"):
                    with _isolated_rng(self.device, seed=_mix(cfg.seed, self.epoch, 2)):
                        self.dataset.set_epoch(self.epoch)
                for batch in self._make_loader():
                    loss, metrics, grad_norm, lr = self._train_step(batch)
                    step = self.step
                    if pbar is not None:
                        pbar.update(1)
                    if step % cfg.log_every == 0 or step == cfg.steps:
                        values = self._reduce_metrics(loss, metrics, grad_norm)
                        now = time.perf_counter()
                        record = {"step": step, "lr": lr, **values,
                                  "steps_per_s": (step - last_log_step) / max(now - last_log_t, 1e-9),
                                  "time": self._elapsed_before + now - t_start, "epoch": self.epoch}
                        last_log_t, last_log_step = now, step
                        self.last_metrics = record
                        if is_main:
                            self._log(record, metrics_file, tb, pbar)
                        if not math.isfinite(values["loss"]):
                            raise FloatingPointError(f"step {step}: loss is {values['loss']}; "
                                                     f"last checkpoint in {self.run_dir}")
                        if is_main:
                            self._run_callbacks(step, record)
                    if self.val_dataset is not None and (step % cfg.val_every == 0 or step == cfg.steps):
                        self._validate(step, metrics_file, tb)
                    if cfg.snapshot_every and step % cfg.snapshot_every == 0 and is_main:
                        self._write_snapshot(step)
                    if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < cfg.steps:
                        self._save_checkpoint(self._elapsed_before + time.perf_counter() - t_start)
                    if self.step >= cfg.steps or self.val_state["stopped"] or self._out_of_time(t_start):
                        break
                if self.time_limited or self.val_state["stopped"]:
                    break
            if self._ckpt_step != self.step:
                self._save_checkpoint(self._elapsed_before + time.perf_counter() - t_start)
            if is_main:
                self._write_model()
                metrics_file.close()
                metrics_file = None
                try:
                    plot_metrics(self.run_dir / METRICS_FILE, self.run_dir / PLOT_FILE)
                except Exception as e:  # a plot must never fail a finished training run
                    warnings.warn(f"could not plot {self.run_dir / METRICS_FILE}: {e}")
            self._barrier()
        finally:
            if pbar is not None:
                pbar.close()
            if tb is not None:
                tb.close()
            if metrics_file is not None:
                metrics_file.close()
            self._release_ddp()
            if is_main:
                _unlock_run_dir(self.run_dir)
            if self._owns_process_group and dist.is_initialized():
                dist.destroy_process_group()
                self._owns_process_group = False
        if not self.last_metrics:
            self.last_metrics = self._last_logged()
        if self.val_state["best"] is not None:
            vs = self.val_state
            self.last_metrics = {**self.last_metrics, "val_best": vs["best"], "val_best_step": vs["best_step"],
                                 "stopped_early": bool(vs["stopped"])}
        return self.last_metrics

    # ---- logging and files (rank 0 unless noted)

    def _open_tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard not installed: logs go to metrics.jsonl only
            return None
        # purge_step drops events logged after the checkpoint we resumed from
        return SummaryWriter(str(self.run_dir / "tb"), purge_step=self.step + 1)

    def _log(self, record: dict, metrics_file, tb, pbar) -> None:
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()
        step = record["step"]
        if tb is not None:
            for k, v in record.items():
                if k not in ("step", "time", "epoch"):
                    tb.add_scalar(k, v, step)
        if pbar is not None:
            pbar.set_postfix(loss=f"{record['loss']:.4g}", steps_per_s=f"{record['steps_per_s']:.2f}")

    @torch.no_grad()
    def _held_out_value(self, step: int) -> float:
        """Mean ``cfg.val_metric`` of the (EMA) model's ``training_loss`` over the first
        ``cfg.val_items`` items of the validation set (evenly spaced), batches of the local batch
        size, under a fixed random stream (the same draws at every measurement)."""
        from torch.utils.data import default_collate

        cfg, ds = self.cfg, self.val_dataset
        n = min(cfg.val_items, len(ds))
        idx = np.unique(np.round(np.linspace(0, len(ds) - 1, n)).astype(int)).tolist()
        model = self.ema_model()
        was = model.training
        model.eval()
        total, count = 0.0, 0
        try:
            with _isolated_rng(self.device, seed=_mix(cfg.seed, 7919)):
                for i in range(0, len(idx), self.local_batch):
                    chunk = idx[i:i + self.local_batch]
                    batch = _to_device(default_collate([ds[j] for j in chunk]), self.device)
                    with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                        enabled=self.amp_dtype is not None):
                        loss, metrics = model.training_loss(batch, step)
                    value = loss if cfg.val_metric == "loss" else metrics.get(cfg.val_metric)
                    if value is None:
                        raise ValueError(f"val_metric {cfg.val_metric!r} is not among the training "
                                         f"metrics {sorted(metrics)}")
                    total, count = total + float(value) * len(chunk), count + len(chunk)
        finally:
            model.train(was)
        return total / max(count, 1)

    def _validate(self, step: int, metrics_file, tb) -> None:
        """Measure the held-out value (rank 0), update the best / patience record, log it, and
        decide (all ranks agree) whether to stop."""
        cfg, vs = self.cfg, self.val_state
        stop = torch.zeros(1, device=self.device)
        if self.rank == 0:
            value = self._held_out_value(step)
            if not math.isfinite(value):
                raise FloatingPointError(f"step {step}: held-out {cfg.val_metric} is {value}")
            if vs["best"] is None or value < vs["best"] * (1.0 - cfg.min_improvement):
                vs.update(best=value, best_step=step, bad=0)
            else:
                vs["bad"] += 1
            if cfg.keep_best and (vs.get("kept") is None or value < vs["kept"]):   # any lower value
                vs.update(kept=value, kept_step=step)
                self._write_best(step, value)
            vs["last"] = value
            if cfg.patience and vs["bad"] >= cfg.patience:
                stop[0] = 1.0
            record = {"step": step, "val_loss": value, "val_best": vs["best"], "val_best_step": vs["best_step"]}
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()
            if tb is not None:
                tb.add_scalar("val_loss", value, step)
        if self.world_size > 1:
            dist.broadcast(stop, 0)
        if bool(stop.item()):
            vs["stopped"] = True
            if self.rank == 0:
                warnings.warn(f"stopping at step {step} of {cfg.steps}: held-out {cfg.val_metric} has not improved "
                              f"by {cfg.min_improvement:.1%} for {cfg.patience} measurements (best "
                              f"{vs['best']:.5g} at step {vs['best_step']})")

    def _run_callbacks(self, step: int, record: dict) -> None:
        for cb in self.callbacks:
            with _isolated_rng(self.device):
                cb(self, step, record)
            self.model.train()

    def _last_logged(self) -> dict:
        try:
            train = [r for r in read_metrics(self.run_dir / METRICS_FILE) if "loss" in r]   # not the held-out lines
        except OSError:
            return {}
        return train[-1] if train else {}

    def _save_checkpoint(self, elapsed: float) -> None:
        """All ranks: gather RNG states; rank 0 writes .safetensors then .json; barrier."""
        rng = _rng_state(self.device)
        if self.world_size > 1:
            rngs: list = [None] * self.world_size
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        if self.rank == 0:
            tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
            if self._ema is not None:
                tensors.update({f"ema.{k}": v for k, v in self._ema.state_dict().items()})
            opt = self.optimizer.state_dict()
            scalars = {}
            for pid, st in opt["state"].items():
                for name, v in st.items():
                    if torch.is_tensor(v):
                        tensors[f"optim.{pid}.{name}"] = v
                    else:
                        scalars[f"{pid}.{name}"] = v
            state = {
                "format": CKPT_FORMAT, "version": CKPT_VERSION, "ckpt_id": uuid.uuid4().hex,
                "weights": CKPT_WEIGHTS, "step": self.step, "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch, "global_batch": self.cfg.batch_size,
                "world_size": self.world_size, "elapsed_s": elapsed,
                "config_hash": _config_hash(self.run_config), "ema": self._ema is not None,
                "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars},
                "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": rngs, "val": self.val_state,
            }
            text = json.dumps(state, indent=1)
            meta = {"format": CKPT_FORMAT, "ckpt_id": state["ckpt_id"], "step": str(self.step),
                    "state": text}
            write_tensors(self.run_dir / CKPT_WEIGHTS, tensors, meta)
            atomic_write_bytes(self.run_dir / CKPT_STATE, (text + "\n").encode(), fsync=True)
        self._ckpt_step = self.step
        self._barrier()

    def _write_weights(self, name: str, info_name: str, tensors: dict, step: int, **info) -> None:
        """RUN/``name`` (weights, "nfldm-model" metadata) + RUN/``info_name`` ({"step", "ema", **info})."""
        ema = self._ema is not None
        write_tensors(self.run_dir / name, dict(tensors), {"format": "nfldm-model", "step": str(step), "ema": str(ema).lower()})
        atomic_write_json(self.run_dir / info_name, {"step": step, "ema": ema, **info})

    def _write_snapshot(self, step: int) -> None:
        """RUN/snapshots/step_NNNNNN/: the (EMA) weights now as model.* beside a copy of the run's
        config: a run directory that load_model_weights (and the stages' loaders) take."""
        sub = f"{SNAPSHOTS}/step_{step:06d}"
        (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        self._write_weights(f"{sub}/{MODEL_WEIGHTS}", f"{sub}/{MODEL_INFO}", self.ema_model().state_dict(), step)
        atomic_write_bytes(self.run_dir / sub / CONFIG_FILE, (self.run_dir / CONFIG_FILE).read_bytes())

    def _write_best(self, step: int, value: float) -> None:
        """RUN/best.safetensors + RUN/best.json: the (EMA) weights of a new lowest held-out value."""
        self._write_weights(BEST_WEIGHTS, BEST_INFO, self.ema_model().state_dict(), step, val_best=value)

    def _write_model(self) -> None:
        """RUN/model.safetensors (EMA weights if EMA is on) + RUN/model.json. With keep_best, the
        weights of the lowest held-out measurement instead (when RUN/best.* holds that step's)."""
        vs = self.val_state
        if self.cfg.keep_best and vs["best_step"] is not None:
            # the kept record covers the best only if keep_best was on when the best was measured
            covered = vs.get("kept") is not None and vs["kept"] <= vs["best"]
            if covered and vs["kept_step"] == self.step:
                pass                                    # the last weights are the kept ones
            elif covered and (best := self._read_best()) is not None:
                self._write_weights(MODEL_WEIGHTS, MODEL_INFO, best[0], best[1]["step"],
                                    trained_steps=self.step, val_best=vs["kept"])
                return
            else:
                warnings.warn(f"{self.run_dir}: keep_best, but {BEST_WEIGHTS} does not hold the best step "
                              f"{vs['best_step']} (measured before keep_best was on, or before a resume); "
                              f"{MODEL_WEIGHTS} holds step {self.step}")
        self._write_weights(MODEL_WEIGHTS, MODEL_INFO, self.ema_model().state_dict(), self.step)

    def _read_best(self) -> tuple[dict, dict] | None:
        """RUN/best.* when they hold the step the held-out record keeps, else None (missing, or
        written after the checkpoint a run was resumed from and not measured again since)."""
        path, info_path = self.run_dir / BEST_WEIGHTS, self.run_dir / BEST_INFO
        if not (path.exists() and info_path.exists()):
            return None
        info = _read_json(info_path, "the best weights' info")
        if not isinstance(info, dict) or info.get("step") != self.val_state.get("kept_step"):
            return None
        tensors, _ = read_tensors(path, CheckpointError)
        return tensors, info


# ----------------------------------------------------------------------------------------
# Downstream: load trained weights


INT8_SCALE = "::int8_scale"      # key suffix of a weight's per-output-channel scale (int8_weights)
INT4_SCALE = "::int4_scale"      # key suffix of a weight's per-group scales (int4_weights)
INT4_SHAPE = "::int4_shape"      # key suffix of a 4-bit weight's shape (int4_weights)
INT4_GROUP = 32                  # weights per scale (along the input dims) in int4_weights


def half_weights(tensors: dict[str, torch.Tensor], params: set[str]) -> dict[str, torch.Tensor]:
    """``tensors`` (a state dict) with the floating parameters in ``params`` as float16, buffers
    (statistics, codebooks' counters) as they are: how bundles store weights."""
    return {k: v.half() if k in params and v.is_floating_point() else v for k, v in tensors.items()}


def _quantisable(tensors: dict[str, torch.Tensor], params: set[str], min_numel: int) -> set[str]:
    """The names of the floating parameters in ``params`` with >= 2 dims and >= ``min_numel``
    values: the weight matrices and kernels that :func:`int8_weights` / :func:`int4_weights` store
    in fewer bits."""
    return {k for k, v in tensors.items()
            if k in params and v.is_floating_point() and v.dim() >= 2 and v.numel() >= min_numel}


def int8_weights(tensors: dict[str, torch.Tensor], params: set[str], min_numel: int = 1024) -> dict[str, torch.Tensor]:
    """``tensors`` (a state dict) for a model.safetensors written with metadata dtype "int8": each
    floating parameter in ``params`` with >= 2 dims and >= ``min_numel`` values as int8 ``q`` with
    a float32 per-output-channel scale ``s`` (key + INT8_SCALE; ``w ~ q * s``, symmetric, ``s =
    max |w| / 127`` over the other dims), the other parameters as float16, buffers as they are.
    :func:`load_model_weights` reads such a file back in float32."""
    big = _quantisable(tensors, params, min_numel)
    out = half_weights({k: v for k, v in tensors.items() if k not in big}, params)
    for k in big:
        w = tensors[k].detach().float()
        scale = w.abs().flatten(1).amax(1).clamp_min(1e-12) / 127.0                         # (out,)
        out[k] = torch.round(w / scale.view((-1,) + (1,) * (w.dim() - 1))).clamp(-127, 127).to(torch.int8)
        out[k + INT8_SCALE] = scale
    return out


def int4_weights(tensors: dict[str, torch.Tensor], params: set[str], group: int = INT4_GROUP,
                 min_numel: int = 1024, only: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """``tensors`` (a state dict) for a model.safetensors written with metadata dtype "int4": each
    floating parameter in ``params`` with >= 2 dims and >= ``min_numel`` values (and, with
    ``only``, whose name it accepts), flattened to out x K, is cut into groups of ``group`` values
    along K (zero-padded), each group stored as 4-bit codes ``q`` in -7..7 with one float16 scale
    ``s = max |w| / 7`` (``w ~ q * s``, symmetric), two codes a byte: uint8 out x ceil(K / group) *
    group / 2 (key), float16 scales out x ceil(K / group) (key + INT4_SCALE), the shape as int64
    (key + INT4_SHAPE). Such parameters that ``only`` refuses are stored in 8 bits as
    :func:`int8_weights` stores them; the other parameters as float16, buffers as they are. About
    0.56 bytes a 4-bit weight at group 32; :func:`load_model_weights` reads such a file back in
    float32."""
    if group < 2 or group % 2:
        raise ValueError(f"int4 group {group}: must be even and >= 2")
    four = {k for k in _quantisable(tensors, params, min_numel) if only is None or only(k)}
    out = int8_weights({k: v for k, v in tensors.items() if k not in four}, params - four, min_numel=min_numel)
    for k in four:
        w = tensors[k].detach().float().flatten(1)                                     # (out, K)
        n_out, K = w.shape
        G = -(-K // group)
        w = torch.nn.functional.pad(w, (0, G * group - K)).view(n_out, G, group)
        # float16 scales, no smaller than float16's least normal value (all-zero groups decode to 0)
        scale = (w.abs().amax(2) / 7.0).clamp_min(2.0 ** -14).half()                  # (out, G)
        q = (torch.round(w / scale.float().unsqueeze(2)).clamp(-7, 7) + 8).to(torch.uint8).view(n_out, -1)
        out[k] = q[:, 0::2] | (q[:, 1::2] << 4)                                        # (out, G * group / 2)
        out[k + INT4_SCALE] = scale
        out[k + INT4_SHAPE] = torch.tensor(tensors[k].shape, dtype=torch.int64)
    return out


def _from_int4(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The float32 weights of a file :func:`int4_weights` wrote (CheckpointError naming ``path`` when
    a packed weight's codes, scales and shape do not fit together)."""
    out = {}
    for k, v in tensors.items():
        if k.endswith((INT4_SCALE, INT4_SHAPE)):
            continue
        scale, shape = tensors.get(k + INT4_SCALE), tensors.get(k + INT4_SHAPE)
        if scale is None and shape is None:
            out[k] = v
            continue
        ok = (scale is not None and shape is not None and v.dtype == torch.uint8 and v.dim() == 2
              and scale.dim() == 2 and shape.dim() == 1 and len(shape) >= 2 and scale.shape[0] == v.shape[0]
              and int(shape[0]) == v.shape[0] and scale.shape[1] > 0 and (2 * v.shape[1]) % scale.shape[1] == 0)
        if ok:
            n_out, G = scale.shape
            group = 2 * v.shape[1] // G
            K = math.prod(int(d) for d in shape[1:])
            ok = (G - 1) * group < K <= G * group
        if not ok:
            raise CheckpointError(f"{path}: {k} is stored as {v.dtype} {tuple(v.shape)} with scales "
                                  f"{None if scale is None else tuple(scale.shape)} and shape "
                                  f"{None if shape is None else shape.tolist()}; the file is corrupt")
        q = torch.stack([v & 15, v >> 4], 2).view(n_out, G, group).float() - 8
        w = (q * scale.float().unsqueeze(2)).view(n_out, -1)[:, :K]
        out[k] = w.reshape([int(d) for d in shape])
    return out


def _from_int8(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The float32 weights of a file :func:`int8_weights` wrote (CheckpointError naming ``path`` when a
    quantised weight has no scale of its output channels' size)."""
    out = {}
    for k, v in tensors.items():
        if k.endswith(INT8_SCALE):
            continue
        scale = tensors.get(k + INT8_SCALE)
        if scale is None:
            out[k] = v
            continue
        if v.dtype != torch.int8 or v.dim() < 2 or scale.shape != (v.shape[0],):
            raise CheckpointError(f"{path}: {k} is stored as {v.dtype} {tuple(v.shape)} with a scale of shape "
                                  f"{tuple(scale.shape)}; the file is corrupt")
        out[k] = v.float() * scale.float().view((-1,) + (1,) * (v.dim() - 1))
    return out


def load_model_weights(run_dir: str | os.PathLike, model: nn.Module, prefer_ema: bool = True) -> dict:
    """Load a run's trained weights into ``model``; return {"path", "step", "ema"}.

    Uses RUN/model.safetensors (written at the end of training; with keep_best, the best
    held-out step's weights) unless RUN/checkpoint.* is newer than the training that wrote it
    (training continued / interrupted) or it holds EMA weights and ``prefer_ema`` is
    False; from the checkpoint, the ``ema.`` weights when present and ``prefer_ema``, else
    ``model.``. Missing / corrupt files or weights that do not fit ``model`` raise
    :class:`CheckpointError` naming the file.
    """
    run_dir = Path(run_dir)
    final, info_path = run_dir / MODEL_WEIGHTS, run_dir / MODEL_INFO
    ckpt_step = None
    if (run_dir / CKPT_STATE).exists():
        ckpt_state = _read_json(run_dir / CKPT_STATE, "the checkpoint state")
        ckpt_step = ckpt_state.get("step") if isinstance(ckpt_state, dict) else None
    if final.exists():
        info = _read_json(info_path, "the model info") if info_path.exists() else {}
        step, ema = info.get("step"), bool(info.get("ema", False))
        trained = info.get("trained_steps", step)     # keep_best: model.* may be older than the last step
        newer_ckpt = ckpt_step is not None and trained is not None and ckpt_step > trained
        if (prefer_ema or not ema) and not newer_ckpt:
            tensors, meta = read_tensors(final, CheckpointError)
            if meta.get("dtype") == "int8":
                tensors = _from_int8(tensors, final)
            elif meta.get("dtype") == "int4":            # 4-bit weights beside 8-bit ones
                tensors = _from_int8(_from_int4(tensors, final), final)
            _load_module(model, tensors, "", final, "model")
            return {"path": str(final), "step": step, "ema": ema}
    if not _has_checkpoint(run_dir):
        if final.exists():
            raise CheckpointError(f"{final} holds EMA weights and {run_dir} has no checkpoint "
                                  "with the raw weights; use prefer_ema=True")
        if not (run_dir / CONFIG_FILE).exists():
            raise CheckpointError(f"{run_dir} is not a run directory (no {CONFIG_FILE})")
        raise CheckpointError(f"{run_dir}: no weights ({MODEL_WEIGHTS} / {CKPT_WEIGHTS}); "
                              "has the run saved a checkpoint yet?")
    tensors, state = _read_checkpoint(run_dir)
    use_ema = prefer_ema and any(k.startswith("ema.") for k in tensors)
    path = run_dir / CKPT_WEIGHTS
    _load_module(model, tensors, "ema." if use_ema else "model.", path, "EMA" if use_ema else "model")
    return {"path": str(path), "step": state["step"], "ema": use_ema}
