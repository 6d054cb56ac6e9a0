"""CUDA paths: skipped on machines without a GPU (CI); run on a GPU machine with
``pytest tests/test_cuda.py``.

Checks that the splat and the renderer give the CPU's numbers on the GPU, that the trainer
trains with mixed precision (bf16 autocast, fp16 with a GradScaler) and resumes, and that the
scene auto-encoder's train / eval / render commands and the chain after it (voxels, latent
auto-encoder, latent diffusion, sampling) run end to end on CUDA.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from data_fixtures import make_dataset
from ddp_worker import ToyDataset, ToyModel
from nfldm.cli import main
from nfldm.scene_ae.render import render_views
from nfldm.scene_ae.splat import splat_mean, splat_mean_reference
from nfldm.trainer import TrainConfig, Trainer
from test_splat_render import _random_case
from test_scene_ae import BOUNDS, synthetic_batch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_splat_cuda_matches_cpu():
    points, values, bounds, grid = _random_case(torch.float32)
    up = torch.randn(points.shape[0], values.shape[-1], *grid)
    res = {}
    for dev in ("cpu", "cuda"):
        v = values.clone().to(dev).requires_grad_()
        out = splat_mean(points.to(dev), v, bounds.to(dev), grid)
        (out * up.to(dev)).sum().backward()
        res[dev] = (out.detach().cpu(), v.grad.cpu())
    ref = splat_mean_reference(points, values, bounds, grid)
    assert torch.allclose(res["cuda"][0], ref, atol=1e-5)
    assert torch.allclose(res["cuda"][0], res["cpu"][0], atol=1e-5)
    assert torch.allclose(res["cuda"][1], res["cpu"][1], atol=1e-5)


def test_render_cuda_matches_cpu():
    g = torch.Generator().manual_seed(0)
    batch = synthetic_batch(B=1, V=2, H=16, W=16)
    V = torch.rand(1, 5, 12, 12, 8, generator=g) * torch.tensor([4.0, 1, 1, 1, 1]).view(1, 5, 1, 1, 1)
    bounds = BOUNDS[None]
    intr = batch["intrinsics"] / 4
    outs = {}
    for dev in ("cpu", "cuda"):
        out = render_views(V.to(dev), bounds.to(dev), intr.to(dev), batch["c2w"].to(dev), 16, 16,
                           num_samples=16, num_coarse=32)
        outs[dev] = {k: t.detach().cpu() for k, t in out.items() if torch.is_tensor(t)}
    for k, t in outs["cpu"].items():
        assert torch.allclose(outs["cuda"][k], t, atol=1e-4, rtol=1e-4), k


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_trainer_mixed_precision_trains_and_resumes(tmp_path, amp):
    def cfg(steps):
        return TrainConfig(steps=steps, batch_size=3, lr=1e-2, warmup_steps=2, device="cuda", amp=amp,
                           seed=1, log_every=1, ckpt_every=4, progress=False, ema_decay=0.9)

    def run(steps, resume):
        torch.manual_seed(0)
        rc = {"stage": "toy", "model": {"hidden": 16}, "data": "toy", "train": cfg(8).to_dict()}
        Trainer(ToyModel(hidden=16), ToyDataset(12), cfg(steps), tmp_path / "run", rc, resume=resume).fit()

    run(4, False)
    run(8, True)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in lines]
    assert steps == sorted(set(steps)) and steps[-1] in (7, 8)
    assert all(math.isfinite(r["loss"]) for r in lines)
    assert lines[-1]["loss"] < lines[0]["loss"]


def test_scene_ae_train_eval_render_on_cuda(tmp_path):
    data = tmp_path / "data"
    make_dataset(data)
    run = tmp_path / "run"
    common = ["--data", str(data), "--out", str(run), "--preset", "smoke", "--quiet", "--device", "cuda",
              "--set", "num_input_views=2", "--set", "num_novel_views=1"]
    assert main(["train", "scene-ae", *common, "--steps", "2"]) == 0
    assert main(["train", "scene-ae", *common, "--steps", "4", "--resume"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["amp"] == "auto"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(x["loss"]) for x in lines) and lines[-1]["step"] >= 3

    out = tmp_path / "metrics.json"
    assert main(["eval", "scene-ae", "--run", str(run), "--data", str(data), "--split", "test",
                 "--out", str(out), "--quiet", "--device", "cuda"]) == 0
    res = json.loads(out.read_text())
    assert math.isfinite(res["model"]["psnr"])
    video = tmp_path / "fly.mp4"
    assert main(["render", "--run", str(run), "--data", str(data), "--split", "test", "--out", str(video),
                 "--frames", "4", "--device", "cuda"]) == 0
    assert (video if video.exists() else video.with_suffix(".gif")).stat().st_size > 0


@pytest.mark.filterwarnings("ignore:the density never reaches")
def test_stages_2_and_3_on_cuda(tmp_path):
    """The whole chain after stage 1 on CUDA: voxels, the latent auto-encoder (train, encode),
    the three diffusion levels (bf16 autocast; psi_c also with the x0-weighted v loss) and
    sampling (latents, LAE decoder, renderer, mesh) write finite results."""
    from safetensors.torch import load_file

    data, sae, vox, lae, lat, ldm, out = (tmp_path / n for n in ("data", "sae", "vox", "lae", "lat", "ldm", "out"))
    make_dataset(data)
    dev, q = ["--device", "cuda"], ["--quiet"]
    assert main(["train", "scene-ae", "--data", str(data), "--out", str(sae), "--preset", "smoke", "--steps", "2",
                 "--set", "num_input_views=2", "--set", "num_novel_views=1", *dev, *q]) == 0
    assert main(["encode-voxels", "--scene-ae", str(sae), "--data", str(data), "--out", str(vox), *dev, *q]) == 0
    assert main(["train", "latent-ae", "--voxels", str(vox), "--out", str(lae), "--preset", "smoke", "--steps", "2",
                 *dev, *q]) == 0
    assert main(["encode-latents", "--run", str(lae), "--voxels", str(vox), "--out", str(lat), *dev, *q]) == 0
    assert main(["train", "ldm", "--latents", str(lat), "--out", str(ldm), "--level", "all", "--preset", "smoke",
                 "--set", "c.prediction_type=v_prediction", "--set", "c.loss_weight=x0", *dev, *q]) == 0
    for lv in "gcf":
        lines = [json.loads(x) for x in (ldm / lv / "metrics.jsonl").read_text().splitlines()]
        assert lines and all(math.isfinite(x["loss"]) for x in lines)
    assert main(["sample", "--run", str(ldm), "--num", "2", "--sampler", "dpm", "--steps", "4", "--seed", "0",
                 "--frames", "4", "--out", str(out), *dev, *q]) == 0
    Vs = sorted(out.glob("sample_*/V.safetensors"))
    assert len(Vs) == 2
    for p in Vs:
        assert all(bool(torch.isfinite(t).all()) for t in load_file(p).values())
