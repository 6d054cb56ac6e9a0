"""Tests of the shared trainer (nfldm.trainer) with a toy MLP on CPU."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from ddp_worker import ToyDataset, ToyModel, ddp_config, run_one_step
from safetensors.torch import load_file

from nfldm.trainer import (INT4_SCALE, INT4_SHAPE, INT8_SCALE, CheckpointError, GlobalBatchSampler, TrainConfig,
                           Trainer, int4_weights, int8_weights, load_model_weights, lr_at, read_run_config)

REPO = Path(__file__).resolve().parents[1]


def make_cfg(**kw) -> TrainConfig:
    base = dict(steps=12, batch_size=3, lr=1e-2, warmup_steps=3, decay="cosine", grad_clip=0.5,
                ema_decay=0.9, device="cpu", seed=7, log_every=1, ckpt_every=2, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def run_config(cfg: TrainConfig, hidden: int = 16) -> dict:
    return {"stage": "toy", "model": {"hidden": hidden}, "data": "toy", "train": cfg.to_dict()}


def new_trainer(run_dir, cfg=None, hidden=16, model_seed=0, resume=False, callbacks=None, n=10,
                rc=None):
    cfg = cfg or make_cfg()
    torch.manual_seed(model_seed)
    model = ToyModel(hidden=hidden)
    return Trainer(model, ToyDataset(n), cfg, run_dir, rc or run_config(cfg, hidden),
                   resume=resume, callbacks=callbacks)


def losses(run_dir) -> list[tuple[int, float]]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if "loss" in r]


def rng_eater(trainer, step, metrics):
    """A callback that draws from the global RNGs (must not change training)."""
    torch.rand(5)


class Stop(Exception):
    pass


def stop_at(k):
    def cb(trainer, step, metrics):
        if step == k:
            raise Stop
    return cb


def test_resume_is_exact(tmp_path):
    # 10 items, global batch 3 -> 3 batches per epoch; killed at step 5 after the checkpoint at
    # step 4 (epoch 1, batch 1): the resumed run must skip the consumed batch, drop metrics
    # line 5 and reproduce losses, weights and EMA bit for bit.
    straight = new_trainer(tmp_path / "a", callbacks=[rng_eater])
    out = straight.fit()
    assert out["step"] == 12 and math.isfinite(out["loss"])

    with pytest.raises(Stop):
        new_trainer(tmp_path / "b", callbacks=[rng_eater, stop_at(5)]).fit()
    assert [s for s, _ in losses(tmp_path / "b")] == [1, 2, 3, 4, 5]
    resumed = new_trainer(tmp_path / "b", model_seed=99, resume=True, callbacks=[rng_eater])
    assert (resumed.step, resumed.epoch, resumed.batch_in_epoch) == (4, 1, 1)
    resumed.fit()

    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert [s for s, _ in lb] == list(range(1, 13))
    assert la == lb
    for name in ("model.safetensors", "checkpoint.safetensors"):
        wa, wb = load_file(tmp_path / "a" / name), load_file(tmp_path / "b" / name)
        assert wa.keys() == wb.keys()
        for k in wa:
            if not k.startswith("optim."):
                assert torch.equal(wa[k], wb[k]), (name, k)

    # files of a finished run
    run = tmp_path / "a"
    for f in ("config.json", "checkpoint.json", "model.json", "loss_curves.png", "metrics.jsonl"):
        assert (run / f).is_file(), f
    assert any((run / "tb").iterdir())
    rec = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"step", "lr", "loss", "mse", "const", "grad_norm", "steps_per_s", "time"} <= rec.keys()
    assert all(math.isfinite(l) for _, l in la)
    assert json.loads((run / "model.json").read_text()) == {"step": 12, "ema": True}
    assert read_run_config(run) == run_config(make_cfg())


def test_sampler_same_global_batch_for_any_world_size():
    one = list(GlobalBatchSampler(11, 4, 0, 1, seed=5, epoch=2))
    two = [list(GlobalBatchSampler(11, 4, r, 2, seed=5, epoch=2)) for r in range(2)]
    assert len(one) == 2 and all(len(b) == 4 for b in one)
    assert [two[0][b] + two[1][b] for b in range(2)] == one
    assert list(GlobalBatchSampler(11, 4, 0, 1, seed=5, epoch=2, start=1)) == one[1:]
    assert list(GlobalBatchSampler(11, 4, 0, 1, seed=5, epoch=3)) != one


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TEARDOWN_ABORT = "terminate called without an active exception"


def test_ddp_matches_single_process(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(REPO / "src"), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))

    def torchrun() -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               f"--master_port={_free_port()}", str(REPO / "tests" / "ddp_worker.py"),
               str(tmp_path / "ddp")]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)

    proc = torchrun()
    if proc.returncode != 0 and TEARDOWN_ABORT in proc.stderr:
        # a C++ abort in torch's gloo teardown after training finished, seen once in CI
        # (the trainer now releases DDP before destroying the group); retry once, loudly
        warnings.warn(f"torchrun worker aborted at teardown, retrying once: {TEARDOWN_ABORT}")
        shutil.rmtree(tmp_path / "ddp", ignore_errors=True)
        proc = torchrun()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    run_one_step(str(tmp_path / "single"))
    ddp, single = load_file(tmp_path / "ddp" / "model.safetensors"), \
        load_file(tmp_path / "single" / "model.safetensors")
    torch.manual_seed(0)
    init = ToyModel(noise=False).state_dict()
    assert ddp.keys() == single.keys()
    for k in single:
        assert not torch.equal(single[k], init[k]), k  # the step changed the weights
        torch.testing.assert_close(ddp[k], single[k], atol=1e-6, rtol=0)
    (l_ddp,), (l_single,) = losses(tmp_path / "ddp"), losses(tmp_path / "single")
    assert l_ddp[0] == l_single[0] == 1 and l_ddp[1] == pytest.approx(l_single[1], abs=1e-6)
    assert ddp_config().batch_size == 4
    assert json.loads((tmp_path / "ddp" / "checkpoint.json").read_text())["world_size"] == 2


def test_run_dir_errors(tmp_path):
    cfg = make_cfg(steps=4, ema_decay=0.0)
    run = tmp_path / "run"
    new_trainer(run, cfg).fit()

    # fresh run into a directory with a checkpoint
    with pytest.raises(ValueError, match="--resume"):
        new_trainer(run, cfg)
    # resume with another config -> names config.json and the first differing key
    other = make_cfg(steps=4, ema_decay=0.0, lr=5e-3)
    with pytest.raises(ValueError, match=r"config\.json.*'train\.lr'"):
        new_trainer(run, other, resume=True)
    # extending the run (only train.steps differs) is fine
    longer = make_cfg(steps=6, ema_decay=0.0)
    t = new_trainer(run, longer, resume=True)
    assert t.step == 4
    # checkpoint from another model (same run config) -> shape mismatch, naming the file
    with pytest.raises(CheckpointError, match=r"checkpoint\.safetensors.*shape mismatch"):
        new_trainer(run, cfg, hidden=8, resume=True, rc=run_config(cfg, 16))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*shape mismatch"):
        load_model_weights(run, ToyModel(hidden=8))
    # weights load into a matching model
    info = load_model_weights(run, ToyModel())
    assert info["step"] == 4 and info["ema"] is False

    # corrupt checkpoint (garbage, then truncated) -> one clear error naming the file
    good = (run / "checkpoint.safetensors").read_bytes()
    for bad in (b"not a safetensors file at all", good[: len(good) // 2]):
        (run / "checkpoint.safetensors").write_bytes(bad)
        with pytest.raises(CheckpointError, match=r"checkpoint\.safetensors.*corrupt"):
            new_trainer(run, cfg, resume=True)

    # not a run directory
    with pytest.raises(ValueError, match="not a run directory"):
        read_run_config(tmp_path / "nothing")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{oops")
    with pytest.raises(ValueError, match="not a run directory"):
        read_run_config(tmp_path / "broken")

    # too small a dataset / indivisible batch
    with pytest.raises(ValueError, match="fewer than one global batch"):
        new_trainer(tmp_path / "small", make_cfg(batch_size=4), n=3)


def test_stale_checkpoint_json_is_not_paired(tmp_path):
    # Simulate a kill between writing checkpoint.safetensors (step 4) and checkpoint.json:
    # the json still describes step 2. Resume must use the state stored with the weights.
    run = tmp_path / "run"
    cfg = make_cfg(steps=4, ema_decay=0.0)

    def keep_json(trainer, step, metrics):
        if step == 3:
            shutil.copy(run / "checkpoint.json", tmp_path / "old.json")
    new_trainer(run, cfg, callbacks=[keep_json]).fit()
    shutil.copy(tmp_path / "old.json", run / "checkpoint.json")
    with pytest.warns(UserWarning, match="stopped while writing a checkpoint"):
        t = new_trainer(run, cfg, resume=True)
    assert t.step == 4


def test_ema_weights(tmp_path):
    cfg = make_cfg(steps=2, ema_decay=0.5, ckpt_every=0, grad_clip=0.0)
    seen = []

    def record(trainer, step, metrics):
        seen.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
    t = new_trainer(tmp_path / "run", cfg, callbacks=[record])
    init = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.fit()
    assert len(seen) == 2
    final = load_file(tmp_path / "run" / "model.safetensors")
    ckpt = load_file(tmp_path / "run" / "checkpoint.safetensors")
    assert json.loads((tmp_path / "run" / "model.json").read_text()) == {"step": 2, "ema": True}
    for k in init:
        ema = init[k]
        for p in seen:
            ema = 0.5 * ema + 0.5 * p[k]
        torch.testing.assert_close(final[k], ema, atol=1e-6, rtol=0)
        assert torch.equal(ckpt[f"model.{k}"], seen[-1][k])
        assert torch.equal(ckpt[f"ema.{k}"], final[k])
        assert not torch.allclose(final[k], seen[-1][k])
    # prefer_ema=False gives the raw weights (from the checkpoint)
    m = ToyModel()
    info = load_model_weights(tmp_path / "run", m, prefer_ema=False)
    assert info["ema"] is False and torch.equal(m.net[0].weight, seen[-1]["net.0.weight"])
    assert t.ema_model() is not t.model


def test_int8_weights_load_back_within_half_a_step_of_each_channel(tmp_path):
    """A model.safetensors in 8 bits (int8_weights, as bundles store their wide levels) loads back in
    float32: each quantised weight within half a quantisation step of its output channel, the small
    parameters as float16, half the bytes of float16; a scale that does not fit is one clear error."""
    from nfldm.utils.io import write_tensors

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.Conv2d(48, 32, 3), torch.nn.LayerNorm(32))
    params = {n for n, _ in m.named_parameters()}
    q = int8_weights(m.state_dict(), params)
    assert q["0.weight"].dtype == q["1.weight"].dtype == torch.int8 and q["1.weight" + INT8_SCALE].shape == (32,)
    assert q["0.bias"].dtype == q["2.weight"].dtype == torch.float16       # small / 1-D: float16
    run = tmp_path / "run"
    write_tensors(run / "model.safetensors", q, {"format": "nfldm-model", "dtype": "int8"})
    (run / "model.json").write_text(json.dumps({"step": 3, "ema": True}))
    back = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.Conv2d(48, 32, 3), torch.nn.LayerNorm(32))
    assert load_model_weights(run, back)["step"] == 3
    for k in ("0.weight", "1.weight"):
        w, b = m.state_dict()[k], back.state_dict()[k]
        step = w.abs().flatten(1).amax(1) / 127
        assert ((w - b).abs().flatten(1).amax(1) <= step / 2 + 1e-7).all() and not torch.equal(w, b)
    torch.testing.assert_close(back[0].bias, m[0].bias.half().float(), rtol=0, atol=0)
    half = {k: v.half() for k, v in m.state_dict().items()}
    write_tensors(tmp_path / "half.safetensors", half, {})
    assert (run / "model.safetensors").stat().st_size < 0.6 * (tmp_path / "half.safetensors").stat().st_size
    q["1.weight" + INT8_SCALE] = q["1.weight" + INT8_SCALE][:5]
    write_tensors(run / "model.safetensors", q, {"format": "nfldm-model", "dtype": "int8"})
    with pytest.raises(CheckpointError, match=r"model.safetensors: 1.weight is stored as torch.int8"):
        load_model_weights(run, back)


def test_int4_weights_load_back_within_half_a_step_of_each_group(tmp_path):
    """A model.safetensors in 4 bits (int4_weights: codes in -7..7, two a byte, a float16 scale per
    32 weights of an output channel) loads back in float32: each quantised weight within half a
    step of its group (input sizes that are not a multiple of the group included), weights that
    ``only`` refuses in 8 bits, the small parameters as float16, under 0.4 of float16's bytes here
    (200 inputs take 224 codes); codes that do not fit their scales or shape are one clear error."""
    from nfldm.utils.io import write_tensors

    torch.manual_seed(0)
    make = lambda: torch.nn.Sequential(torch.nn.Linear(200, 48), torch.nn.Conv2d(48, 32, 3),    # noqa: E731
                                       torch.nn.LayerNorm(32), torch.nn.Linear(256, 64), torch.nn.Linear(64, 64))
    m = make()
    with torch.no_grad():
        m[3].weight[:, :64] = 0                      # an all-zero group decodes to zeros
    params = {n for n, _ in m.named_parameters()}
    q = int4_weights(m.state_dict(), params, only=lambda k: not k.startswith("4."))
    assert q["0.weight"].dtype == torch.uint8 and q["0.weight"].shape == (48, 7 * 32 // 2)    # 200 -> 7 groups
    assert q["1.weight" + INT4_SCALE].shape == (32, 14) and q["1.weight" + INT4_SCALE].dtype == torch.float16
    assert q["4.weight"].dtype == torch.int8 and q["4.weight" + INT8_SCALE].shape == (64,)   # refused: 8 bits
    assert q["1.weight" + INT4_SHAPE].tolist() == [32, 48, 3, 3]
    assert q["0.bias"].dtype == q["2.weight"].dtype == torch.float16
    run = tmp_path / "run"
    write_tensors(run / "model.safetensors", q, {"format": "nfldm-model", "dtype": "int4"})
    (run / "model.json").write_text(json.dumps({"step": 5, "ema": True}))
    back = make()
    assert load_model_weights(run, back)["step"] == 5
    for k in ("0.weight", "1.weight", "3.weight"):
        w, b = m.state_dict()[k].flatten(1), back.state_dict()[k].flatten(1)
        assert b.shape == w.shape
        K = w.shape[1]
        pad = torch.nn.functional.pad(w, (0, -K % 32)).view(w.shape[0], -1, 32)
        step = (pad.abs().amax(2) / 7).clamp_min(2.0 ** -14)          # (out, groups)
        err = torch.nn.functional.pad((w - b).abs(), (0, -K % 32)).view(w.shape[0], -1, 32).amax(2)
        assert (err <= step * 0.5 * (1 + 1e-3) + 1e-7).all(), k
    assert back[3].weight[:, :64].abs().max() == 0
    w8, b8 = m[4].weight, back[4].weight
    assert ((w8 - b8).abs().amax(1) <= w8.abs().amax(1) / 254 + 1e-7).all()
    torch.testing.assert_close(back[0].bias, m[0].bias.half().float(), rtol=0, atol=0)
    big = {k: v.half() for k, v in m.state_dict().items()}
    write_tensors(tmp_path / "half.safetensors", big, {})
    assert (run / "model.safetensors").stat().st_size < 0.4 * (tmp_path / "half.safetensors").stat().st_size
    with pytest.raises(ValueError, match="even"):
        int4_weights(m.state_dict(), params, group=7)
    q["1.weight" + INT4_SCALE] = q["1.weight" + INT4_SCALE][:, :3]
    write_tensors(run / "model.safetensors", q, {"format": "nfldm-model", "dtype": "int4"})
    with pytest.raises(CheckpointError, match=r"model.safetensors: 1.weight is stored as torch.uint8"):
        load_model_weights(run, back)


def test_lr_schedule():
    cfg = TrainConfig(steps=110, lr=1.0, warmup_steps=10, decay="cosine", min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(4, cfg) == pytest.approx(0.5)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)           # half-way: (1 + 0.1) / 2
    assert lr_at(110, cfg) == pytest.approx(0.1)
    assert lr_at(500, cfg) == pytest.approx(0.1)
    const = TrainConfig(steps=110, lr=2.0, warmup_steps=0, decay="constant")
    assert lr_at(0, const) == lr_at(109, const) == 2.0
    with pytest.raises(ValueError):
        TrainConfig(decay="linear")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_set_switches_take_words_and_refuse_other_values():
    from dataclasses import dataclass

    from nfldm.config import apply_overrides

    @dataclass
    class M:
        flag: bool = False
        width: int = 4

    for word, want in (("true", True), ("False", False), ("on", True), ("0", False), (1, True), (True, True)):
        m, t = M(), TrainConfig()
        apply_overrides(m, t, {"flag": word, "progress": word}, "test")
        assert m.flag is want and t.progress is want, word
    m = M()
    apply_overrides(m, TrainConfig(), {"width": 8}, "test")
    assert m.width == 8
    with pytest.raises(ValueError, match="'flag' is a switch"):
        apply_overrides(M(), TrainConfig(), {"flag": "maybe"}, "test")
    with pytest.raises(ValueError, match="is a switch"):
        apply_overrides(M(), TrainConfig(), {"flag": 2}, "test")


def val_lines(run_dir) -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "val_loss" in r]


def test_held_out_measurement_and_plateau_stop(tmp_path):
    """val_every measures the held-out value with the same draws each time (a model that does not
    change measures the same number), patience stops training at the plateau, a stopped run stays
    stopped on resume, and a killed + resumed run measures the same held-out values."""
    held_out = ToyDataset(6)
    # lr 0: the weights never change, so every measurement is the same number: stops after 2 more
    cfg = make_cfg(lr=0.0, val_every=2, patience=2, val_metric="mse")
    torch.manual_seed(0)
    tr = Trainer(ToyModel(), ToyDataset(10), cfg, tmp_path / "flat", run_config(cfg), val_dataset=held_out)
    with pytest.warns(UserWarning, match="held-out mse has not improved"):
        out = tr.fit()
    vals = val_lines(tmp_path / "flat")
    assert [v["step"] for v in vals] == [2, 4, 6] and out["step"] == 6
    assert vals[0]["val_loss"] == vals[1]["val_loss"] == vals[2]["val_loss"]
    assert out["stopped_early"] and out["val_best_step"] == 2
    again = Trainer(ToyModel(), ToyDataset(10), cfg, tmp_path / "flat", run_config(cfg), resume=True,
                    val_dataset=held_out)
    assert again.val_state["stopped"] and again.fit()["step"] == 6

    # learning: held-out values fall, no stop; killed at step 5 and resumed: the same values
    cfg = make_cfg(val_every=2, patience=50)

    def trainer(run, resume=False, callbacks=None):
        torch.manual_seed(0)
        return Trainer(ToyModel(), ToyDataset(10), cfg, run, run_config(cfg), resume=resume, callbacks=callbacks,
                       val_dataset=held_out)

    out = trainer(tmp_path / "a").fit()
    assert out["step"] == 12 and not out["stopped_early"]
    va = val_lines(tmp_path / "a")
    assert [v["step"] for v in va] == [2, 4, 6, 8, 10, 12] and va[-1]["val_loss"] < va[0]["val_loss"]
    with pytest.raises(Stop):
        trainer(tmp_path / "b", callbacks=[stop_at(5)]).fit()
    trainer(tmp_path / "b", resume=True).fit()
    assert val_lines(tmp_path / "b") == va
    assert losses(tmp_path / "a") == losses(tmp_path / "b")        # training itself untouched by measuring
    with pytest.raises(ValueError, match="patience"):
        make_cfg(patience=-1)


def test_keep_best_makes_the_best_held_out_weights_the_model(tmp_path, monkeypatch):
    """keep_best: RUN/best.* holds the EMA weights of the lowest held-out value (also one below the
    best by less than min_improvement) and becomes RUN/model.* at the end (loaded by
    load_model_weights, not the newer checkpoint); switching it on when resuming is allowed (it
    changes no training); a resumed run that trains on loads the checkpoint again; the losses are
    those of a run without keep_best."""
    held_out = ToyDataset(6)
    values = [3.0, 1.0, 0.999, 2.5, 2.5, 2.5]        # steps 2, 4, ..., 12: best at 4, lowest at 6
    script = iter(values)
    monkeypatch.setattr(Trainer, "_held_out_value", lambda self, step: next(script))
    seen = {}

    def snapshot(trainer, step, metrics):
        if step == 6:
            seen[6] = {k: v.clone() for k, v in trainer.ema_model().state_dict().items()}

    def trainer(run, cfg, resume=False, callbacks=None):
        torch.manual_seed(0)
        return Trainer(ToyModel(), ToyDataset(10), cfg, run, run_config(cfg), resume=resume,
                       callbacks=callbacks, val_dataset=held_out)

    plain = make_cfg(val_every=2, steps=6)
    trainer(tmp_path / "a", plain).fit()
    assert not (tmp_path / "a" / "best.safetensors").exists()
    on = make_cfg(val_every=2, steps=12, keep_best=True)
    with pytest.warns(UserWarning, match="does not hold the best step 4"):
        out = trainer(tmp_path / "a", on, resume=True).fit()    # no best.* for step 4: keeps the last
    assert out["val_best_step"] == 4 and json.loads((tmp_path / "a" / "model.json").read_text())["step"] == 12

    script = iter(values)
    out = trainer(tmp_path / "b", on, callbacks=[snapshot]).fit()
    assert out["step"] == 12 and out["val_best_step"] == 4
    assert json.loads((tmp_path / "b" / "best.json").read_text()) == {"step": 6, "ema": True, "val_best": 0.999}
    info = json.loads((tmp_path / "b" / "model.json").read_text())
    assert (info["step"], info["trained_steps"], info["val_best"]) == (6, 12, 0.999)
    model = ToyModel()
    got = load_model_weights(tmp_path / "b", model)
    assert got["step"] == 6 and got["path"].endswith("model.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(v, seen[6][k]), k
    script = iter(values)
    trainer(tmp_path / "c", make_cfg(val_every=2, steps=12)).fit()
    assert losses(tmp_path / "b") == losses(tmp_path / "c")
    # trained on to 14 steps: a new lowest value at 14 (the last step) -> model.* is the last step's
    longer = make_cfg(val_every=2, steps=14, keep_best=True)
    script = iter([0.5])
    trainer(tmp_path / "b", longer, resume=True).fit()
    info = json.loads((tmp_path / "b" / "model.json").read_text())
    assert info["step"] == 14 and load_model_weights(tmp_path / "b", ToyModel())["step"] == 14
    # best.* from after the checkpoint a run resumes from (killed between the two): the last weights, warned
    script = iter(values)
    trainer(tmp_path / "d", on).fit()
    (tmp_path / "d" / "best.json").write_text(json.dumps({"step": 99, "ema": True, "val_best": 0.1}))
    script = iter([5.0])
    with pytest.warns(UserWarning, match="does not hold the best step"):
        trainer(tmp_path / "d", longer, resume=True).fit()
    assert json.loads((tmp_path / "d" / "model.json").read_text())["step"] == 14


def test_snapshots_are_run_directories_of_their_step(tmp_path):
    """snapshot_every: RUN/snapshots/step_NNNNNN/ holds the EMA weights of that step with the run's
    config, and load_model_weights takes it as a run directory; switching it on when resuming is
    allowed (it changes no training: the losses are those of a run without it)."""
    seen = {}

    def keep(trainer, step, metrics):
        seen[step] = {k: v.clone() for k, v in trainer.ema_model().state_dict().items()}

    def trainer(run, cfg, resume=False, callbacks=()):
        torch.manual_seed(0)
        return Trainer(ToyModel(), ToyDataset(10), cfg, run, run_config(cfg), resume=resume, callbacks=list(callbacks))

    trainer(tmp_path / "a", make_cfg(steps=4)).fit()
    assert not (tmp_path / "a" / "snapshots").exists()
    trainer(tmp_path / "a", make_cfg(steps=8, snapshot_every=3), resume=True, callbacks=[keep]).fit()
    snaps = sorted(d.name for d in (tmp_path / "a" / "snapshots").iterdir())
    assert snaps == ["step_000006"]
    snap = tmp_path / "a" / "snapshots" / "step_000006"
    assert json.loads((snap / "model.json").read_text()) == {"step": 6, "ema": True}
    assert (snap / "config.json").read_bytes() == (tmp_path / "a" / "config.json").read_bytes()
    model = ToyModel()
    got = load_model_weights(snap, model)
    assert got["step"] == 6 and got["path"].endswith("model.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(v, seen[6][k]), k
    trainer(tmp_path / "b", make_cfg(steps=8)).fit()
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    with pytest.raises(ValueError, match="snapshot_every"):
        make_cfg(snapshot_every=-1)


def test_resume_on_another_device_setting(tmp_path):
    """The device is chosen at run time: a run started with device=cpu resumes with another device
    setting (here "auto", which is the CPU on this machine; "cuda" on a GPU machine) exactly, and
    back; another change of the config is still refused."""
    straight = new_trainer(tmp_path / "a")
    straight.fit()
    with pytest.raises(Stop):
        new_trainer(tmp_path / "b", callbacks=[stop_at(5)]).fit()
    other = make_cfg(device="auto")
    resumed = new_trainer(tmp_path / "b", cfg=other, model_seed=99, resume=True, rc=run_config(other))
    assert resumed.step == 4
    resumed.fit()
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    back = make_cfg(device="cpu", steps=14)
    new_trainer(tmp_path / "b", cfg=back, resume=True, rc=run_config(back)).fit()      # and back, extended
    with pytest.raises(ValueError, match="differs"):
        changed = make_cfg(device="auto", lr=0.5)
        new_trainer(tmp_path / "b", cfg=changed, resume=True, rc=run_config(changed))


def test_adamw_is_fused_and_a_run_saved_unfused_resumes_fused(tmp_path):
    # fused AdamW (one kernel per parameter) on the CPU; a checkpoint written before it (its
    # param groups say fused None) resumes fused, and its steps equal the unfused update to rounding
    t = new_trainer(tmp_path / "a")
    assert t.optimizer.param_groups[0]["fused"] is True
    with pytest.raises(Stop):
        new_trainer(tmp_path / "a", callbacks=[stop_at(5)]).fit()
    state_path = tmp_path / "a" / "checkpoint.json"
    state = json.loads(state_path.read_text())
    for g in state["optimizer"]["param_groups"]:
        g["fused"] = None
    state_path.write_text(json.dumps(state))
    resumed = new_trainer(tmp_path / "a", resume=True)
    assert resumed.optimizer.param_groups[0]["fused"] is True
    resumed.fit()
    straight = new_trainer(tmp_path / "b")
    groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in straight.optimizer.param_groups]
    straight.optimizer = torch.optim.AdamW(groups, lr=straight.cfg.lr, betas=straight.cfg.betas, fused=False)
    assert not straight.optimizer.param_groups[0]["fused"]
    straight.fit()
    la, lb = dict(losses(tmp_path / "a")), dict(losses(tmp_path / "b"))
    assert la.keys() == lb.keys() and all(abs(la[k] - lb[k]) <= 1e-4 * max(1.0, abs(lb[k])) for k in la)


def test_a_run_trained_by_another_process_is_refused(tmp_path):
    """Two processes never train one run directory at once: the second gets one line naming the
    folder and the process that holds it; the folder is usable again once that process is gone."""
    from nfldm.trainer import RunInUseError

    cfg = make_cfg(steps=4, ema_decay=0.0)
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from nfldm.trainer import _lock_run_dir; "
         "_lock_run_dir(Path(sys.argv[1])); print('locked', flush=True); time.sleep(60)", str(run)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunInUseError, match=rf"{run.name}: pid {holder.pid} is training this run now"):
            new_trainer(run, cfg)
        assert not (run / "checkpoint.safetensors").exists()      # nothing written
    finally:
        holder.kill()
        holder.wait()
    new_trainer(run, cfg).fit()                 # the lock went with the process
    # within one process the lock is re-entrant, and fit() gives it back
    t = new_trainer(run, make_cfg(steps=6, ema_decay=0.0), resume=True)
    t.fit()
    assert t.step == 6


def test_a_run_stopped_by_its_time_limit_resumes_without_training_further(tmp_path):
    cfg = make_cfg(steps=50, ema_decay=0.0, max_minutes=1e-7)
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = new_trainer(run, cfg)
        t.fit()
        assert t.time_limited and t.step == 1
        again = new_trainer(run, cfg, resume=True)
        again.fit()
    assert again.time_limited and again.step == 1
    assert json.loads((run / "model.json").read_text())["step"] == 1
