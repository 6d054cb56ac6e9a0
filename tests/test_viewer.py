"""nfldm view: the browser camera's conventions, the server (a headless client connects, moves the
camera, gets the renderer's frame back, and drives the page's actions), and bad input."""

from __future__ import annotations

import json
import math
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nfldm.camera import pose_from_position_yaw
from nfldm.viewer.live import c2w_from_viser, matrix_to_quat, quat_to_matrix, view_intrinsics, view_size, viser_from_c2w


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_camera_conventions_round_trip():
    """viser's OpenCV pose (+z forward, +y down) and nfldm's OpenGL c2w (-z forward, +y up) describe the
    same camera: the optical axis and image-up agree, and the conversion inverts."""
    torch.manual_seed(0)
    for _ in range(20):
        q = torch.randn(4)
        q = q / q.norm()
        R = quat_to_matrix(q.tolist())
        assert torch.allclose(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-9)
        q2 = torch.tensor(matrix_to_quat(R), dtype=torch.float64)
        assert torch.allclose(q2, q.double() * torch.sign(q[0]), atol=1e-6)
        c2w = c2w_from_viser(q.tolist(), (1.0, -2.0, 0.5))
        wxyz, pos = viser_from_c2w(c2w)
        assert torch.allclose(c2w_from_viser(wxyz, pos), c2w, atol=1e-5)
        assert pos == pytest.approx((1.0, -2.0, 0.5), abs=1e-6)
        # OpenCV +z (forward) is OpenGL -z; OpenCV -y (image up) is OpenGL +y
        assert torch.allclose(-c2w[:3, 2].double(), R[:, 2], atol=1e-5)
        assert torch.allclose(c2w[:3, 1].double(), -R[:, 1], atol=1e-5)
    # a level camera looking along +x (yaw 0 in nfldm.camera): viser's forward is +x too
    c2w = pose_from_position_yaw(torch.tensor([0.0, 0.0, 1.6]), torch.tensor(0.0))
    wxyz, _ = viser_from_c2w(c2w)
    fwd = quat_to_matrix(wxyz)[:, 2]
    assert torch.allclose(fwd, -c2w[:3, 2].double(), atol=1e-6)


def test_view_size_and_intrinsics():
    assert view_size(64, 1.0, 2) == (64, 64)
    assert view_size(64, 1.5, 2) == (64, 96)
    assert view_size(63, 1.0, 4) == (64, 64)
    intr = view_intrinsics(math.radians(90), 64, 96)
    assert intr.tolist() == pytest.approx([32.0, 32.0, 48.0, 32.0])


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    """Two samples of the shipped bundle (2 DDIM steps: any scene will do)."""
    from nfldm.pipeline.generate import sample

    out = tmp_path_factory.mktemp("view") / "samples"
    sample(None, num=2, sampler="ddim", steps=2, seed=0, out=out, device="cpu", progress=False, num_frames=6)
    return out


def _wait_action(viewer, after: int, timeout: float = 240.0) -> dict:
    """The record of the first action to finish after ``after`` actions (len(viewer.history) before it
    was started)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if len(viewer.history) > after:
            return viewer.history[after]
        time.sleep(0.1)
    raise TimeoutError(f"no action finished: {viewer.status.content!r}")


def test_server_renders_the_camera_and_runs_the_actions(samples, tmp_path):
    """Start the server on a free port, connect a client, move the camera: the frame that comes back
    is stage 1's render of V from that camera. Then drive the panel as a user would: switch scene,
    sample a new scene, pick a box with two clicks on the floor, inpaint it, save with a flown
    camera path; and stop the server."""
    from nfldm.viewer.client import ViewerClient, decode_image, look_at_wxyz
    from nfldm.viewer.server import Viewer, ViewerConfig

    port = free_port()
    cfg = ViewerConfig(port=port, device="cpu", workdir=str(tmp_path / "work"), upscale=1, image_format="png")
    viewer = Viewer(samples, cfg).start()
    try:
        assert [lab for lab, _ in viewer.source.items] == ["sample_0000", "sample_0001"]
        with ViewerClient(f"ws://127.0.0.1:{port}") as c:
            c.wait_for("ReplayDoneMessage")
            # the browser's first camera message makes it a client: the server puts its camera at the path's start
            c.send_camera((0.0, 0.0, 1.6), look_at_wxyz((0.0, 0.0, 1.6), (1.0, 0.0, 1.6)), 1.0, (300, 450))
            deadline = time.time() + 30
            while not viewer.clients and time.time() < deadline:
                time.sleep(0.05)
            cv = next(iter(viewer.clients.values()))
            start, _ = viser_from_c2w(viewer.scene.path[0])
            assert np.allclose(np.abs(np.dot(cv.client.camera.wxyz, start)), 1.0, atol=1e-4)
            frames = []
            for k, pos in enumerate([(0.0, -3.0, 1.6), (2.0, 1.0, 1.2)]):
                n = c.count("BackgroundImageMessage")
                target = (0.0, 0.0, 1.6) if k == 0 else (-3.0, 2.0, 1.0)
                wxyz = look_at_wxyz(pos, target)
                c.send_camera(pos, wxyz, fov=1.0, image_hw=(300, 450), look_at=target)
                msg = c.wait_for("BackgroundImageMessage", after=n, timeout=60)
                while msg.get("rgb_data") is None:      # the replayed, empty background
                    n += 1
                    msg = c.wait_for("BackgroundImageMessage", after=n, timeout=60)
                img = decode_image(msg)
                # wait until the frame for this very pose has been rendered (the camera may be re-sent)
                deadline = time.time() + 30
                while time.time() < deadline:
                    if cv.last_c2w is not None and torch.allclose(cv.last_c2w, c2w_from_viser(wxyz, pos), atol=1e-4):
                        break
                    time.sleep(0.05)
                time.sleep(0.5)                             # its image, sent right after, has arrived
                img = decode_image(c.messages("BackgroundImageMessage")[-1])
                assert img.shape == (64, 96, 3)             # 64 rows, the browser's 3:2 aspect
                ref, _, _ = viewer.renderer.render(c2w_from_viser(wxyz, pos), 1.0, 64, 450 / 300)
                err = np.abs(img.astype(float) - ref.astype(float)).mean()
                assert err < 0.01, err                       # the very same frame (PNG: lossless)
                frames.append(img)
            assert np.abs(frames[0].astype(float) - frames[1].astype(float)).mean() > 5.0

            # switch to the second sample
            n = len(viewer.history)
            c.set_value("scene", "sample_0001")
            assert _wait_action(viewer, n)["ok"]
            assert viewer.scene.name == "sample_0001"

            # sample a new scene (2 steps)
            c.set_value("steps", 2)
            n = len(viewer.history)
            c.click("Sample a new scene")
            assert _wait_action(viewer, n)["ok"]
            assert Path(viewer.scene.folder).parent.parent == tmp_path / "work"
            sampled = viewer.scene

            # pick a box: two clicks on the floor (rays from above hitting z = 0)
            c.click("Pick box on the floor map (2 clicks)")
            time.sleep(0.5)
            for x, y in ((-3.0, -3.0), (1.0, 1.0)):
                c.send_message({"type": "ScenePointerMessage", "event_type": "click", "ray_origin": (x, y, 5.0),
                                "ray_direction": (0.0, 0.0, -1.0), "screen_pos": [(0.5, 0.5)],
                                "modifier": None})
                time.sleep(0.5)
            assert viewer.box == pytest.approx([-3.0, -3.0, 1.0, 1.0])
            # these samples followed no map: editing the map is refused with a line saying so
            n = len(viewer.history)
            c.click("Erase the box from the map, generate again")
            rec = _wait_action(viewer, n)
            assert not rec["ok"] and "holds no BEV map" in rec["note"] and viewer.scene is sampled
            c.set_value("RePaint steps", 3)
            n = len(viewer.history)
            c.click("Inpaint the box")
            assert _wait_action(viewer, n)["ok"]
            assert viewer.scene.folder != sampled.folder and viewer.scene.editable
            assert not torch.equal(viewer.scene.V, sampled.V)

            # save with a flown path of two keyframes
            c.click("Add the camera as a keyframe")
            time.sleep(0.3)
            c.send_camera((1.0, 1.0, 1.6), look_at_wxyz((1.0, 1.0, 1.6), (4.0, 1.0, 1.6)), 1.0, (300, 300))
            time.sleep(0.5)
            c.click("Add the camera as a keyframe")
            time.sleep(0.3)
            assert len(viewer.user_keys) == 2
            dest = tmp_path / "saved"
            c.set_value("save to", str(dest))
            time.sleep(0.3)
            n = len(viewer.history)
            c.click("Save scene and camera path")
            assert "saved to" in _wait_action(viewer, n)["note"]
            assert (dest / "V.safetensors").is_file() and (dest / "view_path.json").is_file()
            assert any(dest.glob("view_flythrough.*"))
            # saving over it again is refused, nothing lost
            n = len(viewer.history)
            c.click("Save scene and camera path")
            rec = _wait_action(viewer, n)
            assert not rec["ok"] and "not empty" in rec["note"]
            assert (dest / "V.safetensors").is_file()

            # extend the edited scene by a window along +x, refine it (2 SDS steps); a refined scene has no
            # latents, so inpainting it is refused with a line saying so
            before = viewer.scene.V.shape
            n = len(viewer.history)
            c.click("Extend the scene")
            rec = _wait_action(viewer, n)
            assert rec["ok"], rec
            assert viewer.scene.V.shape[1] > before[1] and viewer.scene.V.shape[2:] == before[2:]
            c.set_value("SDS steps", 2)
            n = len(viewer.history)
            c.click("Refine (post-optimisation)")
            rec = _wait_action(viewer, n)
            assert rec["ok"], rec
            assert Path(viewer.scene.folder).parent.name.endswith("_refine") and not viewer.scene.editable
            n = len(viewer.history)
            c.click("Inpaint the box")
            rec = _wait_action(viewer, n)
            assert not rec["ok"] and "no latents" in rec["note"]
    finally:
        viewer.stop()
    # the port is free again
    assert socket.socket().connect_ex(("127.0.0.1", port)) != 0


def one_line_error(res) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_view_bad_input(samples, tmp_path):
    """A path that is no scene, a run missing a stage, a file without V, a port in use: one line, exit 2."""
    import subprocess
    import sys

    from nfldm.pipeline.bundle import bundled_model

    def view(*args):
        return subprocess.run([sys.executable, "-m", "nfldm.cli", "view", *args], capture_output=True, text=True,
                              timeout=120)

    assert "no such file" in one_line_error(view(str(tmp_path / "nothing")))
    (tmp_path / "empty").mkdir()
    assert "not a scene" in one_line_error(view(str(tmp_path / "empty")))
    run = tmp_path / "run"
    shutil.copytree(bundled_model(), run, ignore=shutil.ignore_patterns("f"))
    line = one_line_error(view(str(run)))
    assert "f level" in line and str(run) in line
    bad = tmp_path / "bad.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(bad))
    assert "holds no V" in one_line_error(view(str(bad)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert "in use" in one_line_error(view(str(samples), "--port", str(port)))


def test_viewer_opens_a_dataset_scene_and_samples_from_a_run(tmp_path):
    """A dataset lists its scenes (test split first) and shows the first encoded by the bundle's stage 1;
    a run / bundle as SRC samples a first scene into the work folder."""
    from data_fixtures import make_dataset

    from nfldm.pipeline.bundle import bundled_model
    from nfldm.viewer.scene import open_source
    from nfldm.viewer.server import Viewer, ViewerConfig

    make_dataset(tmp_path / "data")
    src = open_source(tmp_path / "data")
    assert src.kind == "dataset" and src.items[0][0].startswith("test/")
    viewer = Viewer(tmp_path / "data", ViewerConfig(port=free_port(), device="cpu"))
    try:
        sc = viewer.scene
        assert sc.kind == "scene" and sc.editable and tuple(sc.V.shape) == (17, 64, 64, 64)
        assert len(sc.path) == 4 and torch.isfinite(sc.V).all() and float(sc.V[0].max()) > 0
        rgb, depth, _ = viewer.renderer.render(sc.path[0], viewer.fov_y(), 64, 1.0)
        assert rgb.shape == (64, 64, 3) and rgb.std() > 1.0 and np.isfinite(depth).all()
    finally:
        viewer.stop()
    viewer = Viewer(bundled_model(), ViewerConfig(port=free_port(), device="cpu", sample_steps=2,
                                                  workdir=str(tmp_path / "work")))
    try:
        assert viewer.source.kind == "run" and viewer.scene.kind == "sample" and viewer.scene.editable
        assert Path(viewer.scene.folder).parent.parent == tmp_path / "work"
    finally:
        viewer.stop()


def test_viewer_edits_the_map_and_generates_again(tmp_path):
    """A dataset scene with a map: erase the walls of a box from its map and generate the scene again
    (the bundle's BEV levels) along the scene's camera path; then put a wall block in another box of
    that sample's map: the new sample keeps both edits, the map with both, and the same path."""
    from data_fixtures import make_dataset

    from nfldm.data.bev import read_bev_file, scene_bev_file
    from nfldm.viewer.server import MAP_EDIT_GUIDANCE, Viewer, ViewerConfig

    # the bundle's scene box (its levels follow a camera path only in the box they were trained in)
    make_dataset(tmp_path / "data", bev=True, bounds=[[-8.0, -8.0, -2.0], [8.0, 8.0, 6.0]], bev_res=64)
    viewer = Viewer(tmp_path / "data", ViewerConfig(port=free_port(), device="cpu", sample_steps=2,
                                                    workdir=str(tmp_path / "work"))).start()
    try:
        scene = Path(viewer.scene.folder)
        original = read_bev_file(scene_bev_file(scene))
        viewer.seed.value = 3
        viewer.set_box([-8.0, -8.0, -6.0, -6.0])            # the room's corner: walls in the box
        assert viewer.wait(viewer._act(None, "map edit", lambda: viewer._map_edit_action("erase")), 300) is not None, \
            viewer.history[-1]
        first = Path(viewer.scene.folder)
        assert viewer.scene.kind == "sample" and first.parent.parent == tmp_path / "work"
        cond = json.loads((first / "condition.json").read_text())
        assert cond["edits"] == ["erase-box -8 -8 -6 -6"] and cond["conditioned_on_map"]
        assert cond["path_from_scene"] == str(scene.resolve())
        summary = json.loads((first.parent / "samples.json").read_text())
        assert summary["seed"] == 3 and summary["guidance"] == MAP_EDIT_GUIDANCE and summary["path_from_scene"]
        assert len(list((first / "frames").glob("*.png"))) == len(json.loads((scene / "transforms.json").read_text())["frames"])
        bev = read_bev_file(first / "bev.npz")
        box = (slice(0, 8), slice(0, 8))                    # the box's cells (0.25 m over the footprint)
        assert original["wall"][box].sum() > 0 and bev["wall"][box].sum() == 0 and (bev["inside"][box] > 0).all()
        assert np.array_equal(bev["wall"][8:, 8:], original["wall"][8:, 8:])

        viewer.set_box([-1.0, -1.0, 1.0, 1.0])
        assert viewer.wait(viewer._act(None, "map edit", lambda: viewer._map_edit_action("wall")), 300) is not None, \
            viewer.history[-1]
        second = Path(viewer.scene.folder)
        cond = json.loads((second / "condition.json").read_text())
        assert cond["edits"] == ["erase-box -8 -8 -6 -6", "add-wall-box -1 -1 1 1"]
        assert cond["path_from_scene"] == str(scene.resolve())
        both = read_bev_file(second / "bev.npz")
        block = (slice(28, 36), slice(28, 36))
        assert both["wall"][box].sum() == 0 and both["wall"][block].sum() > 0 and (both["inside"][block] == 0).all()
        assert all(r["ok"] for r in viewer.history)
    finally:
        viewer.stop()
