"""``nfldm view``: a viser page to fly through a scene and act on it.

    browser camera (mouse, WASD) --websocket--> LiveRenderer (stage 1 renders V from it)
        --> the page's background image (RGB), a small live image in the panel, the top-down map
            with the camera on it
    the 3D scene: V's mesh (marching cubes of the density, toggled), the camera path and its
    keyframes, the top-down map lying on the floor (z = 0), the edit box
    the panel: pick a scene (folders of samples, datasets); sample a new one (seed, sampler,
    steps, guidance, optional BEV map); inpaint a box picked by two clicks on the floor map or
    typed in; edit the scene's BEV map in that box (erase its walls, or put a wall block there) and
    generate the scene again from the edited map; extend the scene; refine it (SDS); save the scene
    with the camera path flown
    (keyframes added with a button) and a fly-through along it

Every action runs the library function the command of the same name runs (``nfldm sample / edit /
extend / refine``) in one worker thread, into the session's work folder; its result (a sample
folder) becomes the scene shown. One scene is shown to every connected browser; each browser has
its own camera, resolution and frame counter.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import tempfile
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nfldm.data.bev import scene_bev_file
from nfldm.data.format import DataError
from nfldm.data.tensors import write_safetensors
from nfldm.ldm.trajectory import fov_degrees, interpolate_path
from nfldm.pipeline.generate import (MAP_GUIDANCE, MAP_GUIDANCE_LEVELS, SAMPLE_FORMAT, camera_path_json, density_mesh,
                                     write_sample_folder)
from nfldm.scene_ae.flythrough import upscale
from nfldm.trainer import resolve_device
from nfldm.utils.io import atomic_write_json, read_json
from nfldm.utils.video import write_video
from nfldm.viewer.live import LiveRenderer, c2w_from_viser, view_intrinsics, viser_from_c2w
from nfldm.viewer.scene import ViewScene, draw_camera, load_item, open_source, topdown_image

__all__ = ["ViewerConfig", "Viewer", "port_free", "serve"]

SAMPLERS = ("dpm", "ddim", "ddpm")
DIRECTIONS = ("+x", "-x", "+y", "-y")
MAP_SIZE = 192                  # pixels of the top-down map in the panel
MAP_EDIT_GUIDANCE = 6.0         # map guidance of a regeneration from an edited map: the guidance the
                                # edit targets were measured at (docs/notes/2026-12-07-edits-at-the-protocols-size-and-the-fid-gap.md)
FLOOR_Z = 0.0                   # the floor plane the map lies on (scenes have their floor at z = 0)


@dataclass
class ViewerConfig:
    """``host``/``port``: where the page is served; ``resolution``: the initial view height in
    pixels (the slider goes from 16 to ``max_resolution``); ``device``: auto | cpu | cuda;
    ``workdir``: where actions write their sample folders (None: a temporary folder, removed at
    exit); ``run``: the ldm run / bundle actions sample with (None: the scene's own, else the
    bundle); ``upscale``: the background image is sent at this many screen pixels per rendered
    pixel (nearest, so the renderer's pixels stay visible); ``image_format``: jpeg or png (lossless);
    ``start_frame``: the frame of the scene's camera path a browser starts at."""

    host: str = "127.0.0.1"
    port: int = 8080
    resolution: int = 64
    max_resolution: int = 256
    device: str = "auto"
    workdir: str | None = None
    run: str | None = None
    upscale: int = 4
    image_format: str = "jpeg"          # of the frames sent: jpeg (small) or png (lossless)
    jpeg_quality: int = 90
    sample_steps: int = 20
    edit_steps: int = 25
    refine_steps: int = 60
    start_frame: int = 0                # a browser starts at this frame of the scene's camera path


def port_free(host: str, port: int) -> bool:
    """Whether ``port`` on ``host`` can be served on now (nobody listens on it; connections of a server
    that just stopped, in TIME_WAIT, do not count: the server binds with SO_REUSEADDR as well)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class _ClientView:
    """One browser: its render thread, resolution, frame counter and panel images."""

    def __init__(self, viewer: "Viewer", client):
        self.viewer, self.client = viewer, client
        self.wake = threading.Event()
        self.alive = True
        self.frames, self.t_first, self.last_seconds = 0, None, 0.0
        self.render_times: list[float] = []
        self.last_c2w = None
        with client.gui.add_folder("Live view", order=0):
            self.resolution = client.gui.add_slider("resolution", 16, viewer.cfg.max_resolution, 16,
                                                    viewer.cfg.resolution, hint="view height in rendered pixels")
            self.live = client.gui.add_image(np.zeros((8, 8, 3), np.uint8), label="rendered view", format="png")
            self.stats = client.gui.add_markdown("")
            self.map = client.gui.add_image(np.zeros((8, 8, 3), np.uint8), label="top-down map", format="png")
        self.resolution.on_update(lambda _: self.wake.set())
        client.camera.on_update(lambda _: self.wake.set())
        self.thread = threading.Thread(target=self._loop, name=f"render-{client.client_id}", daemon=True)
        self.thread.start()

    def goto(self, c2w: torch.Tensor, fov_y: float) -> None:
        """Put this browser's camera at ``c2w`` (4 x 4, OpenGL axes), looking along its -z."""
        wxyz, pos = viser_from_c2w(c2w)
        fwd = -c2w[:3, 2].double()
        with self.client.atomic():
            self.client.camera.fov = fov_y
            self.client.camera.position = pos
            self.client.camera.look_at = tuple(float(p + f) for p, f in zip(pos, fwd))
            self.client.camera.wxyz = wxyz
        self.wake.set()

    def _loop(self) -> None:
        last_map, pending = 0.0, None
        while self.alive and not self.viewer.stopped.is_set():
            if not self.wake.wait(0.25):
                if pending is not None and self.alive:      # the camera stopped: show its last frame in the panel
                    self._panel(*pending)
                    pending = None
                continue
            self.wake.clear()
            try:
                cam = self.client.camera
                c2w = c2w_from_viser(cam.wxyz, cam.position)
                rgb, _, dt = self.viewer.renderer.render(c2w, float(cam.fov), int(self.resolution.value),
                                                         float(cam.aspect or 1.0))
            except Exception:  # noqa: BLE001 - a client gone mid-frame, or a scene swapped: try the next
                if not self.alive:
                    return
                traceback.print_exc()
                continue
            self.last_c2w = c2w
            self.frames += 1
            self.viewer.frames += 1
            now = time.perf_counter()
            self.t_first = self.t_first or now
            self.render_times = (self.render_times + [dt])[-30:]
            big = upscale(rgb[None], max(1, self.viewer.cfg.upscale))[0]
            if not self.alive:
                return
            if self.viewer.show_render.value:
                self.client.scene.set_background_image(big, format=self.viewer.cfg.image_format,
                                                       jpeg_quality=self.viewer.cfg.jpeg_quality)
            pending = (big, rgb.shape[:2], c2w)
            if now - last_map > 0.25:         # the panel's pictures at 4 Hz: they cost as much as a frame
                last_map = now
                self._panel(*pending)
                pending = None

    def _panel(self, big: np.ndarray, hw: tuple[int, int], c2w: torch.Tensor) -> None:
        """The panel's live image, frame statistics and top-down map with the camera."""
        self.live.image = big
        mean = sum(self.render_times) / max(1, len(self.render_times))
        self.stats.content = (f"{hw[1]} x {hw[0]} px · render {1000 * mean:.0f} ms "
                              f"(up to {1 / max(mean, 1e-6):.0f} frames/s) · frame {self.frames}")
        self.map.image = self.viewer.map_image(c2w)

    def close(self) -> None:
        self.alive = False
        self.wake.set()


class Viewer:
    """The viewer of ``src`` (:func:`nfldm.viewer.scene.open_source`) served at ``cfg.host:cfg.port``.
    ``start()`` serves in the background (tests); :func:`serve` serves until interrupted."""

    def __init__(self, src: str | os.PathLike, cfg: ViewerConfig | None = None, progress: bool = False):
        self.cfg = cfg = cfg or ViewerConfig()
        if cfg.image_format not in ("jpeg", "png"):
            raise ValueError(f"image_format must be jpeg or png, got {cfg.image_format!r}")
        self.source = open_source(src, cfg.run)
        if not port_free(cfg.host, cfg.port):
            raise OSError(f"port {cfg.port} on {cfg.host} is in use; pick another with --port")
        self.device = str(resolve_device(cfg.device))
        self.progress = progress
        self._tmp = None
        if cfg.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="nfldm_view_")
            self.workdir = Path(self._tmp.name)
        else:
            self.workdir = Path(cfg.workdir)
            self.workdir.mkdir(parents=True, exist_ok=True)
        self.cache: dict = {}
        self.counter = 0
        self.user_keys: list[torch.Tensor] = []
        self.box: list[float] | None = None
        self.picking: list[tuple[float, float]] | None = None
        self.stopped = threading.Event()
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nfldm-view-action")
        self.busy = threading.Lock()
        self.clients: dict[int, _ClientView] = {}
        self._views: list[_ClientView] = []     # every browser's view, connected or gone (joined at stop)
        self.history: list[dict] = []       # every action run: action, ok, seconds, note
        self.frames = 0                     # frames rendered for all browsers
        self._map: tuple = (None, None)     # (scene and box it shows, the panel's map without the camera)
        self.server = None
        # the first scene: the source's first item, or a sample of the run
        if self.source.kind == "run":
            self.scene = self._sample(seed=0, sampler="dpm", steps=cfg.sample_steps, guidance=1.0)
        else:
            self.scene = self._load(self.source.items[0][1])
        self.renderer = LiveRenderer(self.scene.sae, self.scene.V.to(self.device), self.scene.bounds)

    # ------------------------------------------------------------------------------- scenes
    def _load(self, path: Path) -> ViewScene:
        run = self.source.run
        return load_item(path, run, self.device, self.cache)

    def map_image(self, camera: torch.Tensor | None = None) -> np.ndarray:
        """The panel's top-down map (MAP_SIZE square) with the box and ``camera``; the map without the
        camera is drawn once per scene and box, the camera on a copy at every call."""
        key = (id(self.scene), None if self.box is None else tuple(self.box))
        if self._map[0] != key:
            self._map = (key, topdown_image(self.scene, MAP_SIZE, self.box))
        base = self._map[1]
        return base if camera is None else draw_camera(base, camera, self.scene.bounds)

    def overview_pose(self) -> torch.Tensor:
        """A camera above and south of the box looking down at its centre (c2w 4 x 4, OpenGL axes)."""
        lo, hi = self.scene.bounds[0].double(), self.scene.bounds[1].double()
        centre = (lo + hi) / 2
        centre[2] = FLOOR_Z
        size = float((hi - lo)[:2].max())
        eye = centre + torch.tensor([0.0, -0.75 * size, 0.9 * size], dtype=torch.float64)
        back = (eye - centre) / torch.linalg.vector_norm(eye - centre)           # camera +z (it looks along -z)
        right = torch.linalg.cross(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), back)
        right = right / torch.linalg.vector_norm(right)
        up = torch.linalg.cross(back, right)
        c2w = torch.eye(4, dtype=torch.float64)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, back, eye
        return c2w.float()

    def fov_y(self) -> float:
        H, _ = self.scene.sae.cfg.image_hw()
        return 2 * math.atan((H / 2) / float(self.scene.intrinsics[1]))

    def set_scene(self, scene: ViewScene, move_cameras: bool = True) -> None:
        """Show ``scene``: swap the renderer's V, rebuild the 3D scene, reset the box and keyframes."""
        self.scene = scene
        self.renderer.set_scene(scene.sae, scene.V.to(self.device), scene.bounds)
        self.box, self.picking = None, None
        self.user_keys = []
        if self.server is not None:
            self._build_scene()
            self._refresh_panel()
            for cv in list(self.clients.values()):
                if move_cameras:
                    cv.goto(self.start_pose(), self.fov_y())
                cv.wake.set()

    # ------------------------------------------------------------------------------- serving
    def start(self) -> "Viewer":
        import viser

        self.server = viser.ViserServer(host=self.cfg.host, port=self.cfg.port, label="nfldm", verbose=False)
        if self.server.get_port() != self.cfg.port:         # viser moves to a free port itself: refuse instead
            self.server.stop()
            raise OSError(f"port {self.cfg.port} on {self.cfg.host} is in use; pick another with --port")
        self.server.scene.set_up_direction("+z")
        self._build_panel()
        self._build_scene()
        self._refresh_panel()
        self.server.on_client_connect(self._connect)
        self.server.on_client_disconnect(self._disconnect)
        return self

    def url(self) -> str:
        return f"http://{self.cfg.host}:{self.cfg.port}"

    def stop(self) -> None:
        self.stopped.set()
        for cv in self._views:
            cv.close()
        for cv in self._views:               # a render thread left running at exit aborts the interpreter
            cv.thread.join(timeout=30)
        self.worker.shutdown(wait=True, cancel_futures=True)
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _connect(self, client) -> None:
        cv = _ClientView(self, client)
        self._views.append(cv)
        self.clients[client.client_id] = cv
        cv.goto(self.start_pose(), self.fov_y())

    def start_pose(self) -> torch.Tensor:
        """The camera a browser starts at: frame ``cfg.start_frame`` of the scene's path (clamped)."""
        return self.scene.path[min(max(0, self.cfg.start_frame), len(self.scene.path) - 1)]

    def _disconnect(self, client) -> None:
        cv = self.clients.pop(client.client_id, None)
        if cv is not None:
            cv.close()

    # ------------------------------------------------------------------------------- 3D scene
    def _build_scene(self) -> None:
        s, sc = self.server.scene, self.scene
        mesh, _ = density_mesh(sc.V, sc.bounds, colour=sc.V.shape[0] >= 4)
        if len(mesh.vertices):
            s.add_mesh_trimesh("/mesh", mesh, visible=bool(self.show_mesh.value))
        else:
            s.remove_by_name("/mesh")
        pos = sc.path[:, :3, 3].numpy()
        s.add_spline_catmull_rom("/path", pos, thickness=3.0, thickness_units="screen", color=(220, 30, 30),
                                 visible=bool(self.show_path.value))
        H = 2 * float(sc.intrinsics[3])
        W = 2 * float(sc.intrinsics[2])
        fov, aspect = 2 * math.atan((H / 2) / float(sc.intrinsics[1])), (W / float(sc.intrinsics[0])) / (H / float(sc.intrinsics[1]))
        for h in getattr(self, "_key_handles", []):
            h.remove()
        self._key_handles = []
        for k, key in enumerate(sc.keyframes):
            wxyz, p = viser_from_c2w(key)
            self._key_handles.append(s.add_camera_frustum(f"/keyframes/{k}", fov, aspect, scale=0.4, color=(220, 30, 30),
                                                          wxyz=wxyz, position=p, visible=bool(self.show_path.value)))
        lo, hi = sc.bounds[0].tolist(), sc.bounds[1].tolist()
        s.add_image("/map", topdown_image(sc, 256), hi[0] - lo[0], hi[1] - lo[1],
                    position=((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, FLOOR_Z - 0.02), format="png",
                    visible=bool(self.show_floor_map.value))
        self._draw_box()
        self._draw_user_keys()

    def _draw_box(self) -> None:
        s = self.server.scene
        if self.box is None:
            s.remove_by_name("/box")
            return
        x0, y0, x1, y1 = self.box
        s.add_box("/box", color=(255, 140, 0), dimensions=(abs(x1 - x0), abs(y1 - y0), 3.0), opacity=0.35,
                  position=((x0 + x1) / 2, (y0 + y1) / 2, FLOOR_Z + 1.5))

    def _draw_user_keys(self) -> None:
        s = self.server.scene
        s.remove_by_name("/flown")
        for k, key in enumerate(self.user_keys):
            wxyz, p = viser_from_c2w(key)
            s.add_camera_frustum(f"/flown/{k}", 1.0, 1.0, scale=0.3, color=(30, 90, 255), wxyz=wxyz, position=p)

    def _click(self, event) -> None:
        """Clicks on the 3D view pick the edit box's corners on the floor plane (registered while picking)."""
        if self.picking is None or event.ray_origin is None or event.ray_direction is None:
            return
        o, d = np.asarray(event.ray_origin, float), np.asarray(event.ray_direction, float)
        if abs(d[2]) < 1e-6 or (FLOOR_Z - o[2]) / d[2] <= 0:
            event.client.add_notification("Missed the floor", "Click on the map lying on the floor.",
                                          auto_close_seconds=3.0)
            return
        p = o + (FLOOR_Z - o[2]) / d[2] * d
        lo, hi = self.scene.bounds[0].tolist(), self.scene.bounds[1].tolist()
        xy = (min(max(p[0], lo[0]), hi[0]), min(max(p[1], lo[1]), hi[1]))
        self.picking.append(xy)
        if len(self.picking) == 2:
            (a, b), (c, d2) = self.picking
            self.set_box([min(a, c), min(b, d2), max(a, c), max(b, d2)])
            self.picking = None
            self.server.scene.remove_click_callback(self._click)     # clicks orbit the camera again
            self.pick_button.label = "Pick box on the floor map (2 clicks)"
        else:
            self.pick_button.label = "... now click the opposite corner"

    def set_box(self, box) -> None:
        """The edit box (x0, y0, x1, y1 metres), drawn in 3D and on the maps."""
        self.box = [float(v) for v in box]
        self.box_min.value = (self.box[0], self.box[1])
        self.box_max.value = (self.box[2], self.box[3])
        self._draw_box()
        for cv in list(self.clients.values()):
            cv.wake.set()

    # ------------------------------------------------------------------------------- panel
    def _build_panel(self) -> None:
        g, cfg = self.server.gui, self.cfg
        g.configure_theme(control_width="large")
        with g.add_folder("Scene", order=1):
            self.info = g.add_markdown("")
            labels = [lab for lab, _ in self.source.items]
            self.pick_scene = g.add_dropdown("scene", labels or ["(sampled)"], initial_value=(labels or ["(sampled)"])[0],
                                             visible=len(labels) > 1)
            self.pick_scene.on_update(lambda ev: self._act(ev, "open", self._open_item))
            self.show_render = g.add_checkbox("live render (background)", True)
            self.show_mesh = g.add_checkbox("mesh", False)
            self.show_path = g.add_checkbox("camera path", False, hint="the scene's path and keyframes (red)")
            self.show_floor_map = g.add_checkbox("map on the floor", False,
                                                 hint="the top-down map lying at z = 0 (shown while picking a box)")
            self.show_render.on_update(lambda _: self._toggle())
            self.show_mesh.on_update(lambda _: self._toggle())
            self.show_path.on_update(lambda _: self._toggle())
            self.show_floor_map.on_update(lambda _: self._toggle())
            g.add_button("Go to the path's start").on_click(
                lambda ev: self.clients[ev.client.client_id].goto(self.start_pose(), self.fov_y()))
            g.add_button("Overview from above").on_click(self._overview)
        with g.add_folder("Sample", order=2, expand_by_default=False):
            self.seed = g.add_number("seed", 0, min=0, step=1)
            self.sampler = g.add_dropdown("sampler", SAMPLERS, initial_value="dpm")
            self.steps = g.add_number("steps", cfg.sample_steps, min=1, max=1000, step=1)
            self.guidance = g.add_number("guidance", MAP_GUIDANCE, min=0.0, max=20.0, step=0.5,
                                         hint="classifier-free guidance on the map at psi_c (BEV levels; nfldm "
                                              "sample's default)")
            self.bev = g.add_text("BEV map", "", hint="optional: a dataset scene folder, a bev.npz or a drawn plan.png")
            g.add_button("Sample a new scene").on_click(lambda ev: self._act(ev, "sample", self._sample_action))
        with g.add_folder("Edit", order=3, expand_by_default=False):
            self.box_min = g.add_vector2("box min (x, y m)", (-2.0, -2.0), step=0.5)
            self.box_max = g.add_vector2("box max (x, y m)", (2.0, 2.0), step=0.5)
            self.box_min.on_update(self._box_from_fields)
            self.box_max.on_update(self._box_from_fields)
            self.pick_button = g.add_button("Pick box on the floor map (2 clicks)")
            self.pick_button.on_click(lambda _: self._start_picking())
            self.edit_steps = g.add_number("RePaint steps", cfg.edit_steps, min=1, max=1000, step=1)
            g.add_button("Inpaint the box").on_click(lambda ev: self._act(ev, "edit", self._edit_action))
            self.map_guidance = g.add_number("map-edit guidance", MAP_EDIT_GUIDANCE, min=0.0, max=20.0, step=0.5,
                                             hint="map guidance at psi_c when generating again from the edited map "
                                                  "(the sample's seed, sampler and steps)")
            g.add_button("Erase the box from the map, generate again").on_click(
                lambda ev: self._act(ev, "map edit", lambda: self._map_edit_action("erase")))
            g.add_button("Wall block in the box, generate again").on_click(
                lambda ev: self._act(ev, "map edit", lambda: self._map_edit_action("wall")))
            self.direction = g.add_dropdown("extend towards", DIRECTIONS, initial_value="+x")
            self.windows = g.add_number("new windows", 1, min=1, max=8, step=1)
            g.add_button("Extend the scene").on_click(lambda ev: self._act(ev, "extend", self._extend_action))
        with g.add_folder("Refine", order=4, expand_by_default=False):
            self.refine_steps = g.add_number("SDS steps", cfg.refine_steps, min=1, max=2000, step=1)
            g.add_button("Refine (post-optimisation)").on_click(lambda ev: self._act(ev, "refine", self._refine_action))
        with g.add_folder("Save", order=5, expand_by_default=False):
            self.keys_info = g.add_markdown("0 camera keyframes flown")
            g.add_button("Add the camera as a keyframe").on_click(lambda ev: self._add_key(ev.client))
            g.add_button("Clear the keyframes").on_click(lambda _: self._clear_keys())
            self.save_to = g.add_text("save to", str(Path.cwd() / "nfldm_view_saves" / "scene"))
            g.add_button("Save scene and camera path").on_click(lambda ev: self._act(ev, "save", self._save_action))
        self.status = g.add_markdown("", order=6)
        self.bar = g.add_progress_bar(0.0, visible=False, animated=True, order=7)

    def _refresh_panel(self) -> None:
        sc = self.scene
        what = {"sample": "sample", "scene": "dataset scene (encoded by stage 1)"}[sc.kind]
        lo, hi = sc.bounds[0].tolist(), sc.bounds[1].tolist()
        notes = [] if sc.editable else ["no latents (refined or extended): edit / extend its source instead"]
        self.info.content = (f"**{sc.name}** · {what}  \n`{sc.folder}`  \nbox x {lo[0]:g}..{hi[0]:g}, "
                             f"y {lo[1]:g}..{hi[1]:g}, z {lo[2]:g}..{hi[2]:g} m · V {tuple(sc.V.shape)}  \n"
                             f"renderer `{sc.renderer}`" + "".join(f"  \n*{n}*" for n in notes))
        self.keys_info.content = f"{len(self.user_keys)} camera keyframes flown"

    def _overview(self, event) -> None:
        """The browser's camera above the scene, the mesh and the camera path shown."""
        self.show_mesh.value = True
        self.show_path.value = True
        cv = self.clients.get(event.client.client_id)
        if cv is not None:
            cv.goto(self.overview_pose(), math.radians(50))

    def _toggle(self) -> None:
        s = self.server.scene
        for name, on in (("/mesh", self.show_mesh.value), ("/path", self.show_path.value),
                         ("/map", self.show_floor_map.value)):
            h = s.get_handle_by_name(name)
            if h is not None:
                h.visible = bool(on)
        for h in getattr(self, "_key_handles", []):
            h.visible = bool(self.show_path.value)
        if not self.show_render.value:
            for cv in list(self.clients.values()):
                cv.client.scene.set_background_image(None)
        for cv in list(self.clients.values()):
            cv.wake.set()

    def _box_from_fields(self, event) -> None:
        if getattr(event, "client", None) is None:        # set by the server (set_box), not typed in
            return
        (x0, y0), (x1, y1) = self.box_min.value, self.box_max.value
        if x1 > x0 and y1 > y0 and [x0, y0, x1, y1] != self.box:
            self.box = [float(x0), float(y0), float(x1), float(y1)]
            self._draw_box()

    def _start_picking(self) -> None:
        if self.picking is None:
            self.server.scene.on_click()(self._click)
        self.picking = []
        self.show_floor_map.value = True                   # the map to click on
        self.pick_button.label = "... click one corner on the floor map"

    def _add_key(self, client) -> None:
        cv = self.clients.get(client.client_id)
        if cv is None:
            return
        cam = client.camera
        self.user_keys.append(c2w_from_viser(cam.wxyz, cam.position))
        self._draw_user_keys()
        self.keys_info.content = f"{len(self.user_keys)} camera keyframes flown"

    def _clear_keys(self) -> None:
        self.user_keys = []
        self._draw_user_keys()
        self.keys_info.content = "0 camera keyframes flown"

    # ------------------------------------------------------------------------------- actions
    def _act(self, event, name: str, fn) -> Future | None:
        """Run ``fn()`` (returns a ViewScene to show, or a line for the status) in the worker; one action at
        a time."""
        client = getattr(event, "client", None)
        if not self.busy.acquire(blocking=False):
            if client is not None:
                client.add_notification("Busy", "Another action is running; wait for it to finish.",
                                        auto_close_seconds=3.0)
            return None

        def run() -> ViewScene | None:
            t0 = time.perf_counter()
            self.status.content = f"**{name}** running ..."
            self.bar.visible = True
            try:
                scene = fn()
                if isinstance(scene, ViewScene):
                    self.set_scene(scene)
                note = f": {scene}" if isinstance(scene, str) else ""
                self.status.content = f"**{name}** done in {time.perf_counter() - t0:.1f} s{note}"
                self.history.append({"action": name, "ok": True, "seconds": time.perf_counter() - t0,
                                     "note": note[2:]})
                return scene
            except (DataError, ValueError, RuntimeError, OSError) as e:
                self.status.content = f"**{name}** failed: {e}"
                self.history.append({"action": name, "ok": False, "seconds": time.perf_counter() - t0,
                                     "note": str(e)})
                if client is not None:
                    client.add_notification(f"{name} failed", str(e), color="red")
                return None
            finally:
                self.bar.visible = False
                self.busy.release()

        return self.worker.submit(run)

    def _out(self, name: str) -> Path:
        self.counter += 1
        return self.workdir / f"{self.counter:03d}_{name}"

    def _run_of_scene(self) -> Path | None:
        return self.source.run or self.scene.run

    def _bev_of_scene(self) -> Path | None:
        f = Path(self.scene.folder) / "bev.npz" if Path(self.scene.folder).is_dir() else None
        return f if f is not None and f.is_file() else None

    def _open_item(self) -> ViewScene:
        labels = dict(self.source.items)
        return self._load(labels[self.pick_scene.value])

    def _map_run(self) -> Path | None:
        """The run a map samples with: the one given as SRC, else the bundle's BEV levels (None)."""
        return self.source.run if self.source.kind == "run" else None

    def _sample(self, seed: int, sampler: str, steps: int, guidance: float, conditions=None,
                path_from_scene: bool = False, name: str = "sample") -> ViewScene:
        """One scene sampled into the work folder (``conditions``: its map, :func:`conditions_from`)."""
        from nfldm.pipeline.generate import sample

        out = self._out(name)
        run = self._map_run() if conditions else self.source.run
        sample(run, num=1, sampler=sampler, steps=int(steps), seed=int(seed), out=out, guidance=float(guidance),
               guidance_levels=MAP_GUIDANCE_LEVELS, device=self.device, progress=self.progress, conditions=conditions,
               path_from_scene=path_from_scene)
        return self._load(out / "sample_0000")

    def _sample_action(self) -> ViewScene:
        from nfldm.pipeline.maps import conditions_from

        bev = self.bev.value.strip()
        return self._sample(self.seed.value, self.sampler.value, self.steps.value, self.guidance.value,
                            conditions_from(bev)[:1] if bev else None)

    def _need_latents(self, what: str) -> None:
        if not self.scene.editable:
            raise ValueError(f"{self.scene.folder}: holds no latents (a refined or extended sample); {what} the "
                             "sample it came from")

    def _edit_action(self) -> ViewScene:
        from nfldm.pipeline.edit import edit_scene

        self._need_latents("edit")
        if self.box is None:
            raise ValueError("pick a box first (two clicks on the floor map, or type its corners)")
        out = self._out("edit")
        edit_scene(self.scene.folder, self.box, out, run=self._run_of_scene(), bev=self._bev_of_scene(),
                   seed=int(self.seed.value), steps=int(self.edit_steps.value), device=self.device,
                   progress=self.progress)
        return self._load(out / "sample_0000")

    def _map_of_scene(self) -> tuple[Path, Path | None, list[str]]:
        """The shown scene's BEV map, the dataset scene whose camera path a regeneration follows (None:
        psi_g samples a path) and the map edits made before: a dataset scene gives its own map and path; a
        sample that followed a map gives its bev.npz, and the scene and edits its condition.json
        records (the path only while that scene folder exists)."""
        folder = Path(self.scene.folder)
        if self.scene.kind == "scene":
            if scene_bev_file(folder) is None:
                raise ValueError(f"{folder}: has no BEV map (bev.npz); collect it with the ViZDoom collector or "
                                 "sample from a drawn plan (Sample > BEV map)")
            return folder, folder, []
        bev = self._bev_of_scene()
        if bev is None:
            raise ValueError(f"{folder}: holds no BEV map (bev.npz); sample a scene from a map first "
                             "(Sample > BEV map)")
        info = read_json(folder / "condition.json", "condition file", DataError) \
            if (folder / "condition.json").is_file() else {}
        scene = info.get("path_from_scene")
        scene = Path(scene) if scene and Path(scene).is_dir() else None
        return bev, scene, [str(e) for e in info.get("edits") or []]

    def _map_edit_action(self, kind: str) -> ViewScene:
        """Edit the shown scene's map in the box (``kind`` "erase": its walls removed, floor there; "wall": a
        solid block) and generate a scene from the edited map with the panel's seed, sampler and steps at
        guidance ``map-edit guidance`` (what ``nfldm sample --bev MAP --erase-box / --add-wall-box`` does,
        along the same camera path when the map came with one)."""
        from nfldm.pipeline.generate import map_heights
        from nfldm.pipeline.maps import conditions_from

        if kind not in ("erase", "wall"):
            raise ValueError(f"map edit must be erase or wall, got {kind!r}")
        if self.box is None:
            raise ValueError("pick a box first (two clicks on the floor map, or type its corners)")
        src, scene, before = self._map_of_scene()
        box = [list(self.box)]
        conditions = conditions_from(src, scenes=scene, erase_boxes=box if kind == "erase" else (),
                                     add_wall_boxes=box if kind == "wall" else (),
                                     heights=map_heights(self._map_run()))[:1]
        conditions[0].edits = before + conditions[0].edits
        return self._sample(self.seed.value, self.sampler.value, self.steps.value, self.map_guidance.value, conditions,
                            path_from_scene=scene is not None, name="map_edit")

    def _extend_action(self) -> ViewScene:
        from nfldm.pipeline.extend import extend_scene

        self._need_latents("extend")
        out = self._out("extend")
        # a sample that followed a map: its map ends at its box, so the new windows are unconditional
        run = None if self._bev_of_scene() is not None and self.cfg.run is None else self._run_of_scene()
        extend_scene(self.scene.folder, self.direction.value, out, windows=int(self.windows.value),
                     run=run, bev=None, seed=int(self.seed.value), steps=int(self.edit_steps.value),
                     device=self.device, progress=self.progress)
        return self._load(out / "sample_0000")

    def _refine_action(self) -> ViewScene:
        from nfldm.pipeline.refine import refine_samples
        from nfldm.refine.sds import SDSConfig

        if self.scene.kind != "sample":
            raise ValueError("refine works on generated samples; sample or save this scene as a sample first")
        out = self._out("refine")
        refine_samples(self.scene.folder, out, cfg=SDSConfig(steps=int(self.refine_steps.value)),
                       renderer=str(self.scene.renderer), device=self.device, progress=self.progress)
        return self._load(out / "sample_0000")

    def _save_action(self) -> str:
        dest = Path(self.save_to.value).expanduser()
        return f"saved to `{save_scene(self, dest)}`"

    # ------------------------------------------------------------------------------- run
    def wait(self, future: Future | None, timeout: float | None = None):
        """The result of an action's future (tests)."""
        return None if future is None else future.result(timeout)


def save_scene(viewer: Viewer, dest: Path, frames_per_key: int = 12, fps: int = 12) -> Path:
    """Write the shown scene and the camera path flown to ``dest`` (refused if it exists and is not
    empty): a sample folder (the scene's own, copied; a dataset scene written as one), plus
    view_path.json (nerfstudio camera path through the keyframes added, or the scene's path when
    none) and view_flythrough.mp4 rendered along it at the renderer's size."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise ValueError(f"{dest}: exists and is not empty; choose another folder to save to")
    sc = viewer.scene
    sae = sc.sae
    H, W = sae.cfg.image_hw()
    stage = dest.with_name(dest.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    stage.parent.mkdir(parents=True, exist_ok=True)
    if sc.kind == "sample" and Path(sc.folder).is_dir():
        shutil.copytree(sc.folder, stage)
    else:
        meta = {"format": SAMPLE_FORMAT, "version": 1, "saved_from": str(sc.folder),
                "run": str(sc.run) if sc.run else ""}
        write_sample_folder(stage, sae, sc.V, {}, sc.keyframes, sc.path, sc.bounds, sc.intrinsics, meta, fps)
    keys = torch.stack(viewer.user_keys) if len(viewer.user_keys) >= 2 else sc.keyframes
    path = interpolate_path(keys, max(2, frames_per_key * (len(keys) - 1)))
    frames = []
    fov_y = viewer.fov_y()
    for p in path:                        # the shown scene's renderer (its V is on the device already)
        rgb, _, _ = viewer.renderer.render(p, fov_y, H, W / H)
        frames.append(upscale(rgb[None], max(1, 256 // H))[0])
    write_video(stage / "view_flythrough.mp4", frames, fps)
    intr = view_intrinsics(fov_y, H, W)
    atomic_write_json(stage / "view_path.json", {**camera_path_json(path, keys, intr, H, W, fps, sc.bounds),
                                                  "flown_keyframes": len(viewer.user_keys),
                                                  "fov_y_degrees": fov_degrees(float(intr[1]), H)})
    write_safetensors(stage / "view_path.safetensors", {"keyframes": keys.float(), "path": path.float()},
                      {"format": "nfldm-view-path", "scene": str(sc.folder)})
    if dest.exists():
        dest.rmdir()
    os.replace(stage, dest)
    return dest


def serve(src: str | os.PathLike, cfg: ViewerConfig | None = None) -> None:
    """Serve the viewer of ``src`` until interrupted (Ctrl-C)."""
    viewer = Viewer(src, cfg, progress=True).start()
    print(f"nfldm view: {viewer.url()}  (scene {viewer.scene.name}; Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        viewer.stop()
