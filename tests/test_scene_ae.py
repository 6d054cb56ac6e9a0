"""Stage 1 (scene auto-encoder): model behaviour, evaluation protocol and the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
import pytest
import torch

from nfldm import camera
from nfldm.cli import main
from nfldm.data.loader import SceneDataset
from nfldm.data.vizdoom import VizdoomConfig, collect_dataset
from nfldm.scene_ae.config import preset
from nfldm.scene_ae.evaluate import coincident_views, evaluate, gt_density_grid, input_split, pose_distance
from nfldm.scene_ae.model import SceneAutoEncoder, downsample_depth
from nfldm.scene_ae.render import render_views

BOUNDS = torch.tensor([[-4.0, -4.0, -1.0], [4.0, 4.0, 3.0]])


@pytest.fixture(scope="module")
def doom(tmp_path_factory):
    """A real ViZDoom dataset: 2 train, 1 val, 1 test scene of 12 frames at 64 x 64."""
    root = tmp_path_factory.mktemp("doom") / "data"
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    try:
        collect_dataset(VizdoomConfig(scenes=4, frames=12, seed=3), root, progress=False)
    finally:
        os.chdir(cwd)
    return root


def synthetic_batch(B=2, V=5, H=64, W=64, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(B, V, 3, generator=g) * torch.tensor([4.0, 4.0, 0.5]) - torch.tensor([2.0, 2.0, 0.0])
    yaw = torch.rand(B, V, generator=g) * 2 * math.pi
    depth = 1.0 + 4.0 * torch.rand(B, V, H, W, generator=g)
    valid = torch.rand(B, V, H, W, generator=g) > 0.1
    return {
        "images": torch.rand(B, V, 3, H, W, generator=g),
        "depth": depth * valid, "depth_valid": valid,
        "intrinsics": torch.tensor([42.67, 51.2, 32.0, 32.0]).expand(B, V, 4).clone(),
        "c2w": camera.pose_from_position_yaw(pos, yaw),
        "bounds": BOUNDS.expand(B, 2, 3).clone(),
        "frame_ids": torch.arange(V).expand(B, V).clone(),
    }


def test_shapes_and_gradients():
    cfg = preset("smoke").model
    model = SceneAutoEncoder(cfg)
    batch = synthetic_batch(V=cfg.num_input_views + cfg.num_novel_views)
    out = model(batch)
    X, Y, Z = cfg.grid
    assert out["V"].shape == (2, 1 + cfg.feat_dim, X, Y, Z)
    assert out["rgb"].shape == batch["images"].shape
    assert out["depth"].shape == (2, batch["images"].shape[1], 64 // cfg.render_down, 64 // cfg.render_down)
    # occupancy weights + transmittance past the far bin form a distribution per pixel
    total = out["O"].sum(1) + out["T_far"]
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)
    loss, metrics = model.training_loss(batch, 0)
    assert torch.isfinite(loss) and all(math.isfinite(float(v)) for v in metrics.values())
    loss.backward()
    for name in ("lift_net.stem.weight", "decoder.net.0.weight", "background"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_novel_views_are_not_inputs():
    cfg = preset("smoke").model
    model = SceneAutoEncoder(cfg)
    torch.manual_seed(0)
    for _ in range(20):
        ins, tgt = model.split_views(7)
        novel = tgt[: cfg.num_novel_views]
        assert len(set(ins.tolist()) & set(novel.tolist())) == 0
        assert len(tgt) == cfg.num_novel_views + cfg.num_input_targets


def test_downsample_depth_keeps_only_fully_valid_blocks():
    d = torch.tensor([[1.0, 3.0, 2.0, 2.0], [1.0, 3.0, 0.0, 2.0]])
    v = d > 0
    dd, vv = downsample_depth(d, v, 2)
    assert dd[0, 0] == 2.0 and vv[0, 0] and not vv[0, 1]


def test_ground_truth_density_renders_measured_depth():
    """Splat measured depth of 4 views into the grid and render a 5th, nearby view: rendered
    depth matches its own measured depth (a planar wall) to within about one voxel."""
    H = W = 32
    intr = torch.tensor([21.3, 25.6, 16.0, 16.0])
    yaws = torch.tensor([0.0, 0.15, -0.15, 0.3, 0.05])
    c2w = camera.pose_from_position_yaw(torch.tensor([[0.0, 0.0, 0.5]]).expand(5, 3), yaws)
    # a wall at x = 3: z-depth of each pixel by intersecting its ray with the plane
    o, d = camera.pixel_rays(intr.expand(5, 4), c2w, H, W)
    depth = (3.0 - o[..., 0]) / d[..., 0]
    valid = depth > 0
    grid = (32, 32, 16)
    V = gt_density_grid(depth[None, :4], valid[None, :4], intr.expand(1, 4, 4), c2w[None, :4],
                        BOUNDS[None], grid, 1)
    out = render_views(V, BOUNDS[None], intr[None, None], c2w[None, 4:], H, W, 128)
    voxel = (BOUNDS[1, 0] - BOUNDS[0, 0]) / grid[0]
    err = (out["depth"][0, 0] - depth[4]).abs()
    seen = out["opacity"][0, 0] > 0.9
    assert seen.float().mean() > 0.5
    assert err[seen].median() < voxel


def test_eval_protocol_helpers():
    ins, outs = input_split(24, 8)
    assert len(ins) == 8 and len(outs) == 16 and ins[0] == 0 and ins[-1] == 23
    assert set(ins) | set(outs) == set(range(24))
    c2w = camera.pose_from_position_yaw(torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0.0, 0, 0]]),
                                        torch.tensor([0.0, 0.0, math.pi]))
    dist = pose_distance(c2w[:1], c2w)
    assert dist[0, 0] == 0 and torch.isclose(dist[0, 1], torch.tensor(1.0))
    assert dist[0, 2] > dist[0, 1]  # same place, looking the other way, is farther


def test_coincident_views():
    pos = torch.tensor([[0.0, 0, 0], [0.03, 0, 0], [0.2, 0, 0], [0.0, 0, 0], [0.0, 0, 0]])
    yaw = torch.tensor([0.0, 0.0, 0.0, math.radians(1.0), math.radians(5.0)])
    c2w = camera.pose_from_position_yaw(pos, yaw)
    # same pose within 5 cm and 2 degrees: coincident; 20 cm away or 5 degrees off: novel
    assert coincident_views(c2w[1:], c2w[:1]).tolist() == [True, False, True, False]


class _ListDataset:
    """A stand-in for SceneDataset(num_views=None): given items, in order."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_eval_leaves_out_views_that_repeat_an_input(doom):
    """A held-out frame with an input's camera and image (the agent turned full circle in
    place) is not a novel view: copying the input would score ~100 dB. The protocol drops it
    from every number and counts it."""
    torch.manual_seed(0)
    model = SceneAutoEncoder(preset("smoke").model).eval()
    item = SceneDataset(doom, "test")[0]
    ins, outs = input_split(12, 4)
    rep = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in item.items()}
    for k in ("images", "depth", "depth_valid", "c2w"):
        rep[k][outs[0]] = rep[k][ins[1]]
    base, _ = evaluate(model, _ListDataset([item]), num_inputs=4, progress=False)
    res, _ = evaluate(model, _ListDataset([rep]), num_inputs=4, progress=False)
    assert res["num_coincident_views_excluded"] == base["num_coincident_views_excluded"] + 1
    assert res["num_held_out_views"] == base["num_held_out_views"] - 1
    # the copied input scores far above every other view only when it is counted
    assert res["including_coincident_views"]["nearest_frame"]["psnr"] > res["nearest_frame"]["psnr"] + 3
    assert res["nearest_frame"]["psnr"] < 60


def test_train_eval_render_cli(doom, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "scene-ae", "--data", str(doom), "--out", str(run), "--preset", "smoke",
                 "--quiet", "--set", "num_input_views=4", "--set", "num_novel_views=2"]) == 0
    assert (run / "model.safetensors").exists() and (run / "metrics.jsonl").exists()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(x["loss"]) for x in lines)

    out = tmp_path / "metrics.json"
    assert main(["eval", "scene-ae", "--run", str(run), "--data", str(doom), "--split", "test",
                 "--out", str(out), "--quiet"]) == 0
    res = json.loads(out.read_text())
    for m in ("model", "mean_colour", "nearest_frame"):
        assert math.isfinite(res[m]["psnr"]) and math.isfinite(res[m]["ssim"])
        assert math.isfinite(res[m]["depth_abs_rel_median"])
    assert res["num_held_out_views"] + res["num_coincident_views_excluded"] == 12 - 4
    # nearest-frame baseline copies real frames: better than a flat colour on structure
    assert res["nearest_frame"]["ssim"] > res["mean_colour"]["ssim"]
    for m in ("model", "mean_colour", "nearest_frame"):     # LPIPS (AlexNet) next to PSNR / SSIM
        assert 0 < res[m]["lpips"] < 2
    assert res["nearest_frame"]["lpips"] < res["mean_colour"]["lpips"]
    assert res["lpips_gain_over_better_baseline"] == pytest.approx(
        min(res["nearest_frame"]["lpips"], res["mean_colour"]["lpips"]) - res["model"]["lpips"])
    assert (tmp_path / "metrics_views.png").exists()

    name = SceneDataset(doom, "test").entries[0].name
    video = tmp_path / "fly.mp4"
    assert main(["render", "--run", str(run), "--data", str(doom), "--scene", name,
                 "--out", str(video), "--frames", "8"]) == 0
    written = video if video.exists() else video.with_suffix(".gif")
    assert written.stat().st_size > 0
    assert (tmp_path / "fly_strip.png").exists()


def test_cli_errors_are_one_line(doom, tmp_path, capsys):
    assert main(["eval", "scene-ae", "--run", str(tmp_path / "nope"), "--data", str(doom)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert main(["train", "scene-ae", "--data", str(tmp_path / "missing"), "--out",
                 str(tmp_path / "r"), "--preset", "smoke", "--quiet"]) == 2
    assert "error:" in capsys.readouterr().err
    # data at 64 x 64 but a config for 128 x 128
    assert main(["train", "scene-ae", "--data", str(doom), "--out", str(tmp_path / "r2"),
                 "--preset", "smoke", "--quiet", "--set", "image_size=128"]) == 2
    assert "expects 128x128" in capsys.readouterr().err


@pytest.mark.parametrize("pooling", ["mean", "occupancy"])
def test_feature_pooling(pooling):
    """Both poolings give C feature channels; 'occupancy' equals mean(O * phi) / (mean(O) + eps)
    and 'mean' equals mean(O * phi) (checked against a direct splat of the lift's entries)."""
    from dataclasses import replace

    from nfldm.scene_ae.splat import splat_mean

    cfg = replace(preset("smoke").model, feature_pooling=pooling)
    model = SceneAutoEncoder(cfg).eval()
    batch = synthetic_batch(B=1, V=3)
    with torch.no_grad():
        enc = model.encode(batch["images"], batch["intrinsics"], batch["c2w"], batch["bounds"],
                           batch["depth"], batch["depth_valid"])
        D, C = cfg.num_bins, cfg.feat_dim
        h, w = enc["O"].shape[-2:]
        pts = camera.frustum_points(enc["intr"].view(1, 3, 4), batch["c2w"], h, w, model.bin_centers)
        Ophi = (enc["O"][:, None] * enc["phi"][:, :, None]).view(1, 3, C, D, h, w)
        Ophi = Ophi.permute(0, 1, 3, 4, 5, 2).reshape(1, -1, C)
        O = enc["O"].view(1, 3, D, h, w).reshape(1, -1, 1)
        pts = pts.reshape(1, -1, 3)
        m_ophi = splat_mean(pts, Ophi, batch["bounds"], cfg.grid)
        m_o = splat_mean(pts, O, batch["bounds"], cfg.grid)
    expect = m_ophi if pooling == "mean" else m_ophi / (m_o + cfg.occupancy_eps)
    assert enc["V"].shape[1] == 1 + C
    assert torch.allclose(enc["V"][:, 1:], expect, atol=1e-5)


def test_adversarial_losses_reach_only_their_side():
    """g_loss moves the renderer's output, not the discriminator; d_loss the discriminator only."""
    from nfldm.scene_ae.losses import PatchDiscriminator, adversarial_losses

    torch.manual_seed(0)
    disc = PatchDiscriminator(8)
    fake = torch.rand(3, 3, 32, 32, requires_grad=True)
    real = torch.rand(3, 3, 32, 32)
    assert disc(real).shape == (3, 1, 8, 8)
    g_loss, d_loss = adversarial_losses(disc, fake, real)
    g_loss.backward(retain_graph=True)
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in disc.parameters())
    fake.grad = None
    d_loss.backward()
    assert fake.grad is None
    assert all(p.grad is not None for p in disc.parameters())
    assert float(d_loss) >= 0


def test_perceptual_distance_is_zero_on_equal_images_and_has_gradients():
    from nfldm.metrics import efficientnet_lite0
    from nfldm.scene_ae.losses import PerceptualDistance

    torch.manual_seed(0)
    dist = PerceptualDistance(efficientnet_lite0(pretrained=False))
    a = torch.rand(2, 3, 64, 64)
    assert float(dist(a, a)) < 1e-6
    b = a.clone().requires_grad_(True)
    with torch.no_grad():
        b += 0.2 * torch.randn_like(b)
    d = dist(b, a)
    assert float(d) > 0
    d.backward()
    assert b.grad is not None and torch.isfinite(b.grad).all() and b.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in dist.parameters())


def test_new_loss_switches_stay_out_of_old_configs():
    """Configs at the defaults of the fields added for fine-tuning store (and hash) as before."""
    from nfldm.scene_ae.config import ADDED_FIELDS, config_dict

    cfg = preset("tiny").model
    assert not set(ADDED_FIELDS) & set(config_dict(cfg))
    cfg.w_adv = 0.1
    assert config_dict(cfg)["w_adv"] == 0.1
    with pytest.raises(ValueError, match="train_parts"):
        SceneAutoEncoder(dataclasses.replace(preset("smoke").model, train_parts="lift"))
    cfg.perceptual_net = "lpips-vgg"
    assert config_dict(cfg)["perceptual_net"] == "lpips-vgg"
    with pytest.raises(ValueError, match="perceptual_net"):
        SceneAutoEncoder(dataclasses.replace(preset("smoke").model, perceptual_net="clip"))


# ---------------------------------------------------------------------------- non-square frames
NS_H, NS_W = 32, 48


def _write_nonsquare_dataset(root, w: int = NS_W, h: int = NS_H, frames: int = 6):
    """2 train scenes and 1 test scene of ``frames`` w x h frames: cameras 0.5-1 m high inside the
    box, turning on the spot, surfaces 1-2 m away (inside the box)."""
    from nfldm.data.format import write_dataset_index, write_scene

    scenes = [("scene_0000", "train"), ("scene_0001", "train"), ("scene_0002", "test")]
    for k, (name, _) in enumerate(scenes):
        rng = np.random.default_rng(k)
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx / w, yy / h, 0.5 + 0.5 * np.sin(xx / 5.0 + k)], -1)
        images = (255 * np.clip(base[None] + 0.1 * rng.random((frames, h, w, 3)), 0, 1)).astype(np.uint8)
        depth = 1.0 + rng.random((frames, h, w))
        pos = torch.from_numpy(rng.uniform([-1, -1, 0.5], [1, 1, 1.0], size=(frames, 3)))
        yaw = torch.linspace(0, 2 * math.pi, frames + 1, dtype=torch.float64)[:-1]
        c2w = camera.pose_from_position_yaw(pos, yaw).numpy()
        write_scene(root / name, images, depth, c2w, [30.0, 30.0, w / 2, h / 2], extra={"seed": k})
    write_dataset_index(root, [{"name": n, "split": s, "group": f"g{i}", "bounds": BOUNDS.tolist()}
                               for i, (n, s) in enumerate(scenes)])
    return root


def test_non_square_frames_train_and_fly_through(tmp_path):
    """Stage 1 end to end on 48 x 32 frames: train (smoke, image_size=32, image_width=48), then
    fly-through frames and video are 32 high and 48 wide (RGB | depth side by side), finite, and
    the held-out-view evaluation runs."""
    from PIL import Image

    from nfldm.scene_ae.load import load_scene_ae
    from nfldm.scene_ae.train import eval_scene_ae, flythrough_views, render_flythrough, train_scene_ae

    data = _write_nonsquare_dataset(tmp_path / "data")
    run = tmp_path / "run"
    train_scene_ae(data, run, "smoke", steps=2, device="cpu", progress=False,
                   overrides={"image_size": NS_H, "image_width": NS_W})
    stored = json.loads((run / "config.json").read_text())["model"]
    assert (stored["image_size"], stored["image_width"]) == (NS_H, NS_W)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines and all(math.isfinite(x["loss"]) for x in lines)

    model = load_scene_ae(run, "cpu")
    assert model.cfg.image_hw() == (NS_H, NS_W)
    item = SceneDataset(data, "test")[0]
    views = flythrough_views(model, item, num_frames=5)
    assert views["rgb"].shape == (5, 3, NS_H, NS_W) and views["depth"].shape == (5, NS_H, NS_W)
    assert torch.isfinite(views["rgb"]).all() and torch.isfinite(views["depth"]).all()

    res = render_flythrough(run, data, None, tmp_path / "fly.gif", split="test", num_frames=5, scale=1,
                            device="cpu")
    assert res["frames"] == 5
    with Image.open(res["video"]) as gif:
        assert gif.size == (2 * NS_W, NS_H) and gif.n_frames == 5       # RGB | depth, each 48 x 32
    with Image.open(res["strip"]) as strip:         # 4 rows of 32-high frames (upscaled 2x), 2-pixel gaps
        assert strip.size[1] == 4 * (2 * NS_H + 2) + 2

    m = eval_scene_ae(run, data, "test", out=tmp_path / "metrics.json", device="cpu", progress=False)
    assert all(math.isfinite(m["model"][k]) for k in ("psnr", "ssim", "lpips", "depth_abs_rel_median"))
    assert (tmp_path / "metrics_views.png").exists()


def test_check_data_names_file_and_both_sizes(tmp_path):
    """A 48 x 32 dataset and the square 64 config: refused, naming the scene's transforms.json,
    both sizes and the two ways out; the matching non-square config takes it."""
    from nfldm.data.format import DataError
    from nfldm.scene_ae.config import SceneAEConfig
    from nfldm.scene_ae.train import check_data

    ds = SceneDataset(_write_nonsquare_dataset(tmp_path / "data", frames=2), "train")
    with pytest.raises(DataError) as e:
        check_data(ds, SceneAEConfig())
    msg = str(e.value)
    assert str(ds.metas[0].transforms_path) in msg and "transforms.json" in msg
    assert f"frames are {NS_W}x{NS_H}" in msg and "expects 64x64" in msg
    assert "--size 64" in msg and f"--set image_size={NS_H} --set image_width={NS_W}" in msg
    check_data(ds, SceneAEConfig(image_size=NS_H, image_width=NS_W))
    with pytest.raises(DataError, match=f"expects {NS_H}x{NS_W}"):       # W and H swapped
        check_data(ds, SceneAEConfig(image_size=NS_W, image_width=NS_H))


def test_image_width_validation():
    cfg = preset("smoke").model
    SceneAutoEncoder(dataclasses.replace(cfg, image_size=32, image_width=48))
    with pytest.raises(ValueError, match="image_width"):
        SceneAutoEncoder(dataclasses.replace(cfg, image_width=-1))
    with pytest.raises(ValueError, match="lift_stride=2 must divide both sides of the 47x32 frames"):
        SceneAutoEncoder(dataclasses.replace(cfg, image_size=32, image_width=47))
    with pytest.raises(ValueError, match="render_down=4 must divide both sides of the 34x32 frames"):
        SceneAutoEncoder(dataclasses.replace(cfg, image_size=32, image_width=34, render_down=4))


def test_image_width_leaves_square_configs_and_hashes_unchanged():
    """image_width at 0 is left out of the stored config (so of its hash) and of the encoder
    hash: square runs, the shipped one included, hash as before the field existed."""
    from pathlib import Path

    import nfldm
    from nfldm.runs import config_hash
    from nfldm.scene_ae.config import SceneAEConfig, config_dict, encoder_fields, image_size_record
    from nfldm.scene_ae.load import encoder_hash, load_scene_ae

    assert "image_width" not in config_dict(SceneAEConfig())
    assert "image_width" not in encoder_fields(SceneAEConfig())
    assert SceneAEConfig().image_hw() == (64, 64)
    assert image_size_record(SceneAEConfig()) == {"image_size": 64}
    wide = SceneAEConfig(image_size=32, image_width=48)
    assert config_dict(wide)["image_width"] == 48 and encoder_fields(wide)["image_width"] == 48
    assert image_size_record(wide) == {"image_size": 32, "image_width": 48}

    torch.manual_seed(0)
    sq = SceneAutoEncoder(preset("smoke").model)
    same = SceneAutoEncoder(dataclasses.replace(preset("smoke").model, image_width=64))   # W = H: the same V
    other = SceneAutoEncoder(dataclasses.replace(preset("smoke").model, image_size=32, image_width=48))
    same.load_state_dict(sq.state_dict())
    other.load_state_dict(sq.state_dict())
    assert encoder_hash(same) == encoder_hash(sq) != encoder_hash(other)

    # the shipped renderer recorded its scene-ae's hashes when it was fine-tuned: they still match
    tiny = Path(nfldm.__file__).parent / "weights" / "tiny"
    init = json.loads((tiny / "renderer" / "config.json").read_text())["init_from"]
    base = load_scene_ae(tiny / "scene_ae", "cpu")
    assert encoder_hash(base) == init["encoder_hash"]
    assert config_hash(config_dict(base.cfg)) == init["config_hash"]
