"""ViZDoom collector: posed RGB-D scenes from the Freedoom maps shipped with ``vizdoom``.

A scene is a window of F consecutive stored frames of an exploring agent whose cameras stay
inside the scene's voxel-grid box. Design choices (documented in docs/vizdoom.md):

- Render at 4R x 3R (a 4:3 mode, FOV 90), centre-crop to 3R x 3R, downsample by 3 to R x R:
  RGB by 3 x 3 box average, depth by the centre pixel of each 3 x 3 block (whose centre is
  exactly the output pixel's centre, so depth stays exact and intrinsics transform exactly).
- Depth: the uint8 depth buffer, calibrated linearly against exact distances ray-cast from the
  map geometry, then snapped to the exact ray-cast value where the pixel lies on the wall hit
  by the column's eye-level ray, or on a floor / ceiling (of the camera's sector, or of the
  sector under the pixel's approximate world point).
  Saturated pixels (> 40 m) and sky pixels are invalid (0). The sky is drawn at the constant
  buffer value floor(0.4 x render width) (102 at R = 64, 204 at R = 128, saturated at R = 256);
  the run of pixels with that value from the top of each column is sky, unless snapped to
  exact geometry.
- World frame of a scene: map coordinates in metres (x east, y north, z up), translated so
  the scene box is centred on the trajectory in x, y and z = 0 is the floor under the first
  camera.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nfldm import camera
from nfldm.data.doom_map import MAP_UNITS_PER_METRE, DoomMap
from nfldm.data.format import write_dataset_index, write_scene

# depth buffer -> map units, fitted by experiments/vizdoom_depth.py on freedoom2 MAP01-08
# (least squares on eye-level wall pixels within 15 m, outliers > 10 % removed).
DEPTH_BUFFER_SCALE = 7.129  # map units per buffer step
DEPTH_BUFFER_OFFSET = 9.10  # map units
DEPTH_BUFFER_SATURATED = 255
SKY_BUFFER_PER_WIDTH = 0.4  # the sky is drawn at buffer value floor(0.4 * render width) (measured)
SNAP_TOLERANCE = 0.25  # metres: ~1.5 buffer steps
EYE_HEIGHT = 41.0  # map units above the floor (VIEW_HEIGHT)


def all_maps() -> list[tuple[str, str]]:
    """Every (wad, map) shipped with the vizdoom package: freedoom1 E1M1..E4M9, freedoom2 MAP01..MAP32."""
    doom1 = [("freedoom1.wad", f"E{e}M{m}") for e in range(1, 5) for m in range(1, 10)]
    doom2 = [("freedoom2.wad", f"MAP{m:02d}") for m in range(1, 33)]
    return doom1 + doom2


def map_split(val_fraction: float = 0.1, test_fraction: float = 0.1) -> dict[str, list[tuple[str, str]]]:
    """Fixed split of the maps into train / val / test, independent of the collection seed, so
    that test scenes of every collected dataset come from maps never seen in training."""
    maps = all_maps()
    order = np.random.default_rng(20230419).permutation(len(maps))
    n_test = max(1, round(test_fraction * len(maps)))
    n_val = max(1, round(val_fraction * len(maps)))
    pick = [maps[i] for i in order]
    return {"test": pick[:n_test], "val": pick[n_test : n_test + n_val], "train": pick[n_test + n_val :]}


@dataclass
class VizdoomConfig:
    """What ``nfldm data vizdoom`` collects. Lengths in metres."""

    scenes: int = 8
    frames: int = 24
    resolution: int = 64  # stored square image size R: 64, 128 or 256
    seed: int = 0
    extent: float = 16.0  # horizontal side of the scene's voxel-grid box
    z_min: float = -2.0  # box bottom, relative to the floor under the first camera
    z_max: float = 6.0  # box top
    margin: float = 2.0  # every camera stays this far inside the box horizontally
    tics_per_frame: int = 3  # game tics (1/35 s) between stored frames
    turn_step: float = 30.0  # degrees turned per frame when turning or looking around
    min_free: float = 1.5  # a stored frame sees at least this much free space straight ahead
    bev_resolution: int = 128
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    max_steps: int = 1500  # agent steps per episode before giving up on a map
    scene_gap: int = 12  # stored frames skipped between two scenes of the same map

    def __post_init__(self):
        if self.resolution not in (64, 128, 256):
            raise ValueError(f"resolution must be 64, 128 or 256, got {self.resolution}")
        if self.scenes < 1 or self.frames < 2:
            raise ValueError("need at least 1 scene of at least 2 frames")
        if self.extent <= 2 * self.margin:
            raise ValueError("extent must exceed twice the margin")


PRESETS: dict[str, VizdoomConfig] = {
    "smoke": VizdoomConfig(scenes=3, frames=8),
    "tiny": VizdoomConfig(scenes=8, frames=24),
    "small": VizdoomConfig(scenes=64, frames=32, resolution=128),
    "paper": VizdoomConfig(scenes=2000, frames=32, resolution=256),
}


# --------------------------------------------------------------------------- engine
@contextlib.contextmanager
def _private_cwd():
    """ViZDoom writes ``_vizdoom.ini`` and ``_vizdoom/`` into the working directory: run it in a
    temporary one and remove it afterwards, so no command leaves stray files."""
    old = os.getcwd()
    tmp = tempfile.mkdtemp(prefix="nfldm_vizdoom_")
    os.chdir(tmp)
    try:
        yield tmp
    finally:
        os.chdir(old)
        shutil.rmtree(tmp, ignore_errors=True)


def wad_path(wad: str) -> str:
    """Path of a WAD shipped with the vizdoom package (freedoom1.wad, freedoom2.wad)."""
    import vizdoom as vzd

    return str(Path(vzd.__file__).parent / wad)


def make_game(wad: str, resolution: int, seed: int, sectors: bool = False, map_name: str | None = None):
    """A headless DoomGame for ``wad``: no monsters, no view bob, no HUD, RGB + depth.

    ``map_name``: the map that ``init`` starts the first episode on (ViZDoom's default
    otherwise). With ``sectors`` it reports ``state.sectors`` instead (and renders at the
    smallest size): the reference that :meth:`DoomMap.from_wad`, which the collector uses, is
    tested against. Must be created inside ``_private_cwd``."""
    import vizdoom as vzd

    game = vzd.DoomGame()
    game.set_doom_game_path(wad_path(wad))
    if map_name is not None:
        game.set_doom_map(map_name)
    game.set_doom_config_path(os.path.join(os.getcwd(), "_vizdoom.ini"))
    size = "160X120" if sectors else f"{4 * resolution}X{3 * resolution}"
    game.set_screen_resolution(getattr(vzd.ScreenResolution, f"RES_{size}"))
    game.set_screen_format(vzd.ScreenFormat.RGB24)
    game.set_depth_buffer_enabled(not sectors)
    game.set_sectors_info_enabled(sectors)
    game.set_render_hud(False)
    game.set_render_weapon(False)
    game.set_render_crosshair(False)
    game.set_render_decals(False)
    game.set_render_particles(False)
    game.set_render_messages(False)
    game.set_window_visible(False)
    game.set_sound_enabled(False)
    game.add_game_args("+movebob 0 -nomonsters +sv_nomonsters 1 +fov 90")
    game.set_available_buttons([vzd.Button.MOVE_FORWARD, vzd.Button.TURN_LEFT_RIGHT_DELTA])
    gv = vzd.GameVariable
    for v in (gv.CAMERA_POSITION_X, gv.CAMERA_POSITION_Y, gv.CAMERA_POSITION_Z, gv.CAMERA_ANGLE, gv.POSITION_Z):
        game.add_available_game_variable(v)
    game.set_episode_timeout(0)
    game.set_mode(vzd.Mode.PLAYER)
    game.set_seed(seed)
    game.init()
    return game


def intrinsics(resolution: int) -> torch.Tensor:
    """[fx, fy, cx, cy] of the stored R x R image: a 4R x 3R render at horizontal FOV 90 with
    Doom's non-square pixels (fy = 1.2 fx), centre-cropped to 3R x 3R and shrunk by 3."""
    R = resolution
    fx = 2.0 * R / np.tan(np.deg2rad(45.0))
    intr = torch.tensor([fx, 1.2 * fx, 2.0 * R, 1.5 * R], dtype=torch.float64)
    intr = camera.crop_intrinsics(intr, 0.5 * R, 0.0)
    return camera.resize_intrinsics(intr, (3 * R, 3 * R), (R, R))


class FrameProcessor:
    """Turns a raw ViZDoom state into (RGB R x R x 3 uint8, depth R x R metres, 0 = invalid)."""

    def __init__(self, resolution: int):
        R = self.R = resolution
        self.x0 = R // 2  # crop offset in render pixels
        self.intr = intrinsics(R).numpy()
        fx, fy, cx, cy = self.intr
        c = np.arange(R) + 0.5
        self.col_angle = np.arctan((c - cx) / fx)  # angle right of the view axis, per column
        self.row_slope = (c - cy) / fy  # downward slope per row (> 0 below the horizon)
        self.sky_raw = int(SKY_BUFFER_PER_WIDTH * 4 * R)

    def rgb(self, screen: np.ndarray) -> np.ndarray:
        """screen: 3R x 4R x 3 uint8 -> R x R x 3 uint8 (3 x 3 box average of the centre crop)."""
        crop = screen[:, self.x0 : self.x0 + 3 * self.R].astype(np.uint16)
        rows = crop[0::3] + crop[1::3] + crop[2::3]  # sums of 3 rows: R x 3R x 3
        total = rows[:, 0::3] + rows[:, 1::3] + rows[:, 2::3]  # and of 3 columns: R x R x 3
        return ((total + 4) // 9).astype(np.uint8)

    def raw_depth(self, depth_buffer: np.ndarray) -> np.ndarray:
        """depth buffer 3R x 4R uint8 -> R x R uint8: the centre pixel of each 3 x 3 block."""
        R = self.R
        return depth_buffer[1::3, self.x0 + 1 : self.x0 + 3 * R : 3]

    def depth(self, raw: np.ndarray, dm: DoomMap, pos: np.ndarray, eye_z: float, yaw: float, sector: int) -> np.ndarray:
        """Calibrated, geometry-snapped z-depth in metres (R x R, 0 = invalid).

        raw: R x R buffer values; pos: camera (x, y) map units; eye_z, yaw (radians) of the camera."""
        d = (DEPTH_BUFFER_SCALE * raw.astype(np.float64) + DEPTH_BUFFER_OFFSET) / MAP_UNITS_PER_METRE
        # walls: the eye-level ray of each column hits a wall whose planar depth is constant
        # down the column
        r = dm.eye_level_depth(pos, eye_z, yaw - self.col_angle)
        wall = (r * np.cos(self.col_angle) / MAP_UNITS_PER_METRE)[None, :]
        # floor (rows below the horizon) or ceiling (above) of the camera's sector
        s = self.row_slope[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            floor = np.where(s > 0, (eye_z - dm.floor[sector]) / s, np.inf) / MAP_UNITS_PER_METRE
            ceil = np.where(s < 0, (dm.ceil[sector] - eye_z) / -s, np.inf) / MAP_UNITS_PER_METRE
        plane = np.minimum(floor, ceil)  # R x 1: at most one of them is finite
        # snap each pixel to the candidate surface closest to the buffer's depth (the wall on a
        # tie), if within tolerance
        wall_err, plane_err = np.abs(wall - d), np.abs(plane - d)
        snapped = np.minimum(wall_err, plane_err) < SNAP_TOLERANCE
        d = np.where(snapped, np.where(wall_err <= plane_err, wall, plane), d)
        # floors and ceilings of other sectors: look up the sector under the pixel's approximate
        # world point and snap to that sector's floor (below the horizon) or ceiling (above)
        rest = ~snapped & (raw < DEPTH_BUFFER_SATURATED) & (s != 0)
        if rest.any():
            v, u = np.nonzero(rest)
            du = d[v, u] * MAP_UNITS_PER_METRE
            lateral = np.tan(self.col_angle[u])
            fwd = np.array([np.cos(yaw), np.sin(yaw)])
            right = np.array([np.sin(yaw), -np.cos(yaw)])
            xy = pos + du[:, None] * (fwd + lateral[:, None] * right)
            sec = dm.sector_near(xy)  # the point is approximate: a cached grid lookup will do
            slope = self.row_slope[v]
            height = np.where(slope > 0, eye_z - dm.floor[sec], dm.ceil[sec] - eye_z)
            cand = height / np.abs(slope) / MAP_UNITS_PER_METRE
            ok = (sec >= 0) & (cand > 0) & (np.abs(cand - d[v, u]) < SNAP_TOLERANCE)
            d[v[ok], u[ok]] = cand[ok]
            snapped[v[ok], u[ok]] = True
        # sky: the run of sky-valued pixels from the top of each column (a real surface at
        # exactly that buffer value further down is kept)
        sky = np.cumprod(raw == self.sky_raw, axis=0).astype(bool) & ~snapped
        invalid = (raw >= DEPTH_BUFFER_SATURATED) | sky
        return np.where(invalid, 0.0, d).astype(np.float32)


# ---------------------------------------------------------------------------- agent
class Explorer:
    """An exploring agent driven by the exact map geometry.

    It walks forward with a little yaw jitter while the way ahead is free; near a wall it turns
    (30 degrees a frame) towards the most open direction that does not lead straight back;
    now and then it stops and looks around (4-9 turns of 30 degrees), so a scene's frames see a
    region from several sides. A stuck agent (no progress) turns away.
    """

    def __init__(self, rng: np.random.Generator, turn_step: float):
        self.rng = rng
        self.turn_step = turn_step
        self.turn_left = 0.0  # degrees still to turn (positive = counter-clockwise)
        self.last_pos: np.ndarray | None = None  # position before the last forward step

    def act(self, dm: DoomMap, walls: np.ndarray, pos: np.ndarray, yaw_deg: float) -> tuple[float, float]:
        """walls: the segments the player cannot cross (``dm.lines[dm.impassable()]``).
        -> (forward 0/1, turn in degrees, positive = counter-clockwise)."""
        rng = self.rng
        stuck = self.last_pos is not None and np.hypot(*(pos - self.last_pos)) < 1.0
        self.last_pos = None
        if self.turn_left == 0:
            ahead = dm.ray_distance(pos, np.deg2rad(yaw_deg + np.array([-15.0, 0.0, 15.0])), walls).min()
            if ahead < 100 or stuck:
                rel = np.arange(-150, 181, 30.0)
                free = dm.ray_distance(pos, np.deg2rad(yaw_deg + rel), walls)
                score = np.minimum(free, 600) * (1 - 0.5 * (np.abs(rel) > 120)) * rng.uniform(0.7, 1.0, len(rel))
                self.turn_left = float(rel[np.argmax(score)]) or 180.0
            elif rng.random() < 0.07:
                self.turn_left = float(rng.choice([-1, 1]) * self.turn_step * rng.integers(4, 10))
        if self.turn_left != 0:
            turn = float(np.clip(self.turn_left, -self.turn_step, self.turn_step))
            self.turn_left -= turn
            return 0.0, turn
        self.last_pos = pos.copy()
        return 1.0, float(rng.normal(0.0, 6.0))


# ------------------------------------------------------------------------ collection
@dataclass
class Frame:
    rgb: np.ndarray  # R x R x 3 uint8
    depth: np.ndarray  # R x R metres
    position: np.ndarray  # 3, camera position in map units
    yaw: float  # radians
    floor_z: float  # map units, floor under the player
    tic: int


def _window_ok(frames: list[Frame], cfg: VizdoomConfig) -> bool:
    xy = np.stack([f.position[:2] for f in frames]) / MAP_UNITS_PER_METRE
    if (np.ptp(xy, 0) > cfg.extent - 2 * cfg.margin).any():
        return False
    z = (np.array([f.position[2] for f in frames]) - frames[0].floor_z) / MAP_UNITS_PER_METRE
    return bool((z > cfg.z_min + 0.5).all() and (z < cfg.z_max - 0.5).all())


def step(game, forward: float, turn: float, tics: int) -> None:
    """Advance ``tics`` tics walking ``forward`` (0/1), turning ``turn`` degrees
    (counter-clockwise) on the first tic only, and render once at the end.

    TURN_LEFT_RIGHT_DELTA turns right for positive values, on every tic it is held."""
    game.set_action([forward, -turn])
    game.advance_action(1, tics == 1)
    if tics > 1 and not game.is_episode_finished():
        game.make_action([forward, 0.0], tics - 1)


def load_map(geometry_game, map_name: str) -> DoomMap:
    """Exact geometry of ``map_name``, read through a game made with ``sectors=True`` (the
    reference for :meth:`DoomMap.from_wad`, which the collector uses)."""
    geometry_game.set_doom_map(map_name)
    geometry_game.new_episode()
    return DoomMap.from_sectors(geometry_game.get_state().sectors)


def start_map(games: dict, wad: str, map_name: str, resolution: int, seed: int):
    """The rendering game of ``wad`` (started on first use), on a fresh episode of ``map_name``,
    8 tics in (the player cannot move for the first ~7 tics).

    A new game starts its first episode on ``map_name`` in ``init``, which saves loading a
    default map first. Later maps: ``set_doom_map`` alone, which on a running game loads the
    map and starts a new episode (tic 1). A ``new_episode`` after it would load the map a
    second time (12-80 ms per map, about 10 % of a collection). An earlier session saw the
    engine crash on ``close`` without it; 21 collections of 8-64 maps (ViZDoom 1.3.2) did not
    reproduce that (docs/vizdoom.md, "Speed")."""
    if wad not in games:
        games[wad] = make_game(wad, resolution, seed, map_name=map_name)
    else:
        games[wad].set_doom_map(map_name)  # on a running game this loads the map: a new episode
    games[wad].make_action([0, 0], 8)
    return games[wad]


def collect_map_scenes(game, dm: DoomMap, count: int, cfg: VizdoomConfig, rng: np.random.Generator, proc: FrameProcessor, bar=None):
    """Explore the map that ``game`` has just started (see :func:`start_map`; geometry ``dm``)
    and cut ``count`` scene windows from the episode.

    Returns a list of frame windows; fewer than ``count`` if the episode ends or the
    agent runs out of steps."""
    walls = dm.lines[dm.impassable()]
    agent = Explorer(rng, cfg.turn_step)
    window: list[Frame] = []
    scenes, skip = [], 0
    for _ in range(cfg.max_steps):
        if game.is_episode_finished() or len(scenes) >= count:
            break
        state = game.get_state()
        x, y, z, yaw_deg, floor_z = state.game_variables
        pos = np.array([x, y])
        yaw = np.deg2rad(yaw_deg)
        ahead = dm.eye_level_depth(pos, z, np.array([yaw]))[0] / MAP_UNITS_PER_METRE
        if ahead >= cfg.min_free and skip == 0:
            sector = int(dm.sector_at(pos[None])[0])
            raw = proc.raw_depth(state.depth_buffer)
            depth = proc.depth(raw, dm, pos, z, yaw, sector) if sector >= 0 else np.zeros(raw.shape, np.float32)
            window.append(Frame(proc.rgb(state.screen_buffer), depth, np.array([x, y, z]), yaw, floor_z, state.tic))
            if len(window) == cfg.frames:
                if _window_ok(window, cfg):
                    scenes.append(window)
                    if bar is not None:
                        bar.update(1)
                    window, skip = [], cfg.scene_gap
                else:
                    window.pop(0)
        elif skip > 0:
            skip -= 1
        step(game, *agent.act(dm, walls, pos, yaw_deg), cfg.tics_per_frame)
    return scenes


def scene_arrays(frames: list[Frame], dm: DoomMap, cfg: VizdoomConfig):
    """Scene-frame poses, box and BEV for a window. Returns (c2w N x 4 x 4, bounds 2 x 3,
    origin (map units), bev dict)."""
    pos = np.stack([f.position for f in frames])
    xy_mid = 0.5 * (pos[:, :2].min(0) + pos[:, :2].max(0))
    origin = np.array([xy_mid[0], xy_mid[1], frames[0].floor_z])
    local = (pos - origin) / MAP_UNITS_PER_METRE
    yaws = np.array([f.yaw for f in frames])
    c2w = camera.pose_from_position_yaw(torch.from_numpy(local), torch.from_numpy(yaws)).numpy()
    h = cfg.extent / 2
    bounds = np.array([[-h, -h, cfg.z_min], [h, h, cfg.z_max]])
    lo = origin[:2] - h * MAP_UNITS_PER_METRE
    hi = origin[:2] + h * MAP_UNITS_PER_METRE
    bev = dm.bev(lo, hi, cfg.bev_resolution, origin[2], look=True)
    return c2w, bounds, origin, bev


def level_bev(scene_dir: str | os.PathLike, box, res_per_metre: float = 8.0) -> dict:
    """The BEV map of a collected ViZDoom scene's level over any square footprint ``box`` (x0, y0,
    x1, y1 metres in the scene's frame; may reach far past the scene's own box): the map the
    collector would have written for a scene there, from the WAD and the scene's recorded
    origin (transforms.json ``nfldm.map_origin``). For ``nfldm extend --bev``: a level to grow
    a scene into. Returns a :mod:`nfldm.data.bev` dict (bounds_xy = the box). DataError naming
    the file when the scene was not collected by nfldm's ViZDoom collector."""
    from nfldm.data.bev import square_box

    info, origin, units = _recorded_origin(scene_dir)
    x0, y0, x1, y1 = square_box(box, "level map's box")
    dm = DoomMap.from_wad(wad_path(info["wad"]), info["map"])
    res = max(2, int(round((x1 - x0) * res_per_metre)))
    bev = _rasterise_level(dm, origin, units, (x0, y0, x1, y1), res)
    return {**{k: np.asarray(v, np.float32) for k, v in bev.items()},
            "bounds_xy": np.asarray([[x0, y0], [x1, y1]], np.float32)}


def _recorded_origin(scene_dir: str | os.PathLike) -> tuple[dict, np.ndarray, float]:
    """(the ``nfldm`` block of a collected scene's transforms.json, the map origin of its frame in
    map units, map units per metre); DataError naming the file when the scene was not collected by
    nfldm's ViZDoom collector."""
    from nfldm.data.format import DataError
    from nfldm.utils.io import read_json

    tf = Path(scene_dir) / "transforms.json"
    info = read_json(tf, "scene transforms", DataError).get("nfldm", {})
    if info.get("source") != "vizdoom" or "map_origin" not in info or "wad" not in info or "map" not in info:
        raise DataError(f"{tf}: not a scene of nfldm's ViZDoom collector (no nfldm.wad / map / map_origin)")
    return info, np.asarray(info["map_origin"], dtype=np.float64), float(info.get("map_units_per_metre", MAP_UNITS_PER_METRE))


def _rasterise_level(dm: DoomMap, origin: np.ndarray, units: float, box, res: int) -> dict:
    """``dm``'s BEV map with its look, res x res cells over ``box`` (x0, y0, x1, y1 metres in the
    frame of a scene whose origin is ``origin``)."""
    x0, y0, x1, y1 = box
    return dm.bev(origin[:2] + np.array([x0, y0]) * units, origin[:2] + np.array([x1, y1]) * units, res, origin[2],
                  look=True)


def add_look(data: str | os.PathLike, progress: bool = True) -> dict:
    """Give the BEV maps of a ViZDoom dataset collected before the collector wrote the look
    (:data:`nfldm.data.bev.LOOK_KEYS`) their look, from the WAD and each scene's recorded
    origin: the same cells the collector rasterised (its wall and inside arrays must come out
    identical, else DataError naming the file). Each bev.npz is rewritten atomically, its
    geometry arrays unchanged; maps that have a look already are skipped, so it resumes.
    Returns {"scenes", "added", "skipped"}."""
    from nfldm.data.bev import has_look, read_bev_file, scene_bev_file, write_bev
    from nfldm.data.format import DataError, read_dataset

    data = Path(data)
    index = read_dataset(data)
    added = skipped = 0
    maps: dict[tuple, DoomMap] = {}
    for s in tqdm(index.scenes, desc="adding the look to BEV maps", unit="scene", disable=not progress):
        scene = s.path
        path = scene_bev_file(scene)
        if path is None:
            raise DataError(f"{scene / 'transforms.json'}: the scene has no BEV map (bev.npz)")
        bev = read_bev_file(path)
        if has_look(bev):
            skipped += 1
            continue
        info, origin, units = _recorded_origin(scene)
        key = (info["wad"], info["map"])
        if key not in maps:
            maps[key] = DoomMap.from_wad(wad_path(info["wad"]), info["map"])
        (x0, y0), (x1, y1) = np.asarray(bev["bounds_xy"], np.float64)
        new = _rasterise_level(maps[key], origin, units, (x0, y0, x1, y1), bev["wall"].shape[0])
        if not (np.array_equal(new["wall"], bev["wall"]) and np.array_equal(new["inside"], bev["inside"])):
            raise DataError(f"{path}: its walls differ from the level's ({info['wad']} {info['map']}) at the recorded "
                            "origin; not adding a look that may not belong to it")
        write_bev(path, {**bev, **{k: new[k] for k in new if k not in bev}})
        added += 1
    return {"scenes": len(index.scenes), "added": added, "skipped": skipped}


def bev_npz(bev: dict[str, np.ndarray], bounds: np.ndarray) -> bytes:
    """The BEV map as the bytes of a .npz file (channels wall, floor, ceiling, inside;
    index [x, y]; ``bounds_xy`` 2 x 2 metres)."""
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, bounds_xy=bounds[:, :2].astype(np.float32), **bev)
    return buf.getvalue()


def _scene_entry(out: Path, index: int, split: str, wad: str, map_name: str, frames, dm: DoomMap,
                 cfg: VizdoomConfig, proc: FrameProcessor) -> dict:
    """Write one collected window as ``out/scene_{index:04d}``; its dataset.json entry."""
    name = f"scene_{index:04d}"
    c2w, bounds, origin, bev = scene_arrays(frames, dm, cfg)
    extra = {
        "source": "vizdoom",
        "wad": wad,
        "map": map_name,
        "seed": cfg.seed,
        "bev_file_path": "bev.npz",
        "map_origin": origin.tolist(),
        "map_units_per_metre": MAP_UNITS_PER_METRE,
        "tics": [int(f.tic) for f in frames],
    }
    write_scene(out / name, np.stack([f.rgb for f in frames]), np.stack([f.depth for f in frames]), c2w,
                proc.intr.tolist(), extra=extra, files={"bev.npz": bev_npz(bev, bounds)})
    return {"name": name, "split": split, "group": f"{wad}:{map_name}", "bounds": bounds.tolist()}


def _split_wants(cfg: VizdoomConfig) -> dict[str, int]:
    n = cfg.scenes
    n_test = max(1, round(cfg.test_fraction * n)) if n >= 3 else 0
    n_val = max(1, round(cfg.val_fraction * n)) if n >= 3 else 0
    return {"train": n - n_test - n_val, "val": n_val, "test": n_test}


def collection_jobs(cfg: VizdoomConfig) -> list[dict]:
    """The maps a collection visits, in order, when every map yields the windows asked of it:
    one dict per visit (split, wad, map, count, tried, start = index of its first scene). The
    same visits, agent seeds and scene names as the one-process loop of :func:`collect_dataset`
    (which only departs from them when a map yields fewer windows than asked)."""
    split_maps = map_split(cfg.val_fraction, cfg.test_fraction)
    want = _split_wants(cfg)
    rng = np.random.default_rng(cfg.seed)
    jobs, start = [], 0
    for split in ("train", "val", "test"):
        maps = [split_maps[split][i] for i in rng.permutation(len(split_maps[split]))]
        per_map = np.bincount(np.arange(want[split]) % len(maps), minlength=len(maps))
        queue = list(zip(maps, per_map))
        got = tried = 0
        while got < want[split] and tried < 3 * len(maps):
            (wad, map_name), count = queue[tried % len(queue)]
            tried += 1
            count = int(min(max(count, 1), want[split] - got))
            jobs.append({"split": split, "wad": wad, "map": map_name, "count": count, "tried": tried, "start": start})
            start += count
            got += count
    return jobs


def _collect_job(args: tuple) -> tuple[int, list[dict] | None]:
    """Visit ``i`` of :func:`collection_jobs` in a worker process (its own game and working
    directory): (i, its entries), or (i, None) when the map yielded fewer windows than asked
    (nothing of it is then kept)."""
    i, cfg, out, job = args
    out = Path(out)
    proc = FrameProcessor(cfg.resolution)
    with _private_cwd():
        game = start_map({}, job["wad"], job["map"], cfg.resolution, cfg.seed)
        try:
            dm = DoomMap.from_wad(wad_path(job["wad"]), job["map"])
            map_rng = np.random.default_rng([cfg.seed, job["tried"], job["start"]])
            windows = list(collect_map_scenes(game, dm, job["count"], cfg, map_rng, proc, None))
        finally:
            game.close()
    if len(windows) < job["count"]:
        return i, None
    return i, [_scene_entry(out, job["start"] + k, job["split"], job["wad"], job["map"], frames, dm, cfg, proc)
               for k, frames in enumerate(windows)]


def _collect_parallel(cfg: VizdoomConfig, out: Path, workers: int, progress: bool) -> list[dict] | None:
    """:func:`collection_jobs` run by ``workers`` processes; None when a map fell short (the
    caller then collects in one process, which moves on to the next map)."""
    import multiprocessing as mp

    jobs = collection_jobs(cfg)
    entries: list[list[dict] | None] = [None] * len(jobs)
    bar = tqdm(total=cfg.scenes, desc=f"vizdoom scenes ({workers} processes)", unit="scene", disable=not progress)
    try:
        with mp.get_context("spawn").Pool(workers) as pool:
            # the biggest visits first, so the last ones to finish are short
            order = sorted(range(len(jobs)), key=lambda i: -jobs[i]["count"])
            results = pool.imap_unordered(_collect_job, [(i, cfg, str(out), jobs[i]) for i in order])
            for i, res in results:
                if res is None:
                    pool.terminate()
                    return None
                entries[i] = res
                bar.update(len(res))
    finally:
        bar.close()
    return [e for res in entries for e in res]


def collect_dataset(cfg: VizdoomConfig, out: str | os.PathLike, progress: bool = True, workers: int = 1) -> dict:
    """Collect ``cfg.scenes`` scenes into the dataset folder ``out``. Returns a summary dict.

    Scenes are spread over the fixed train / val / test map split (at least one val and one
    test scene when there are 3 or more), one map per scene where the split has enough maps.
    ``workers`` > 1: the map visits run in that many processes (each map in a game of its own;
    the same maps, agent seeds and scene names as one process, and the same frames where the
    engine's state does not carry from one map to the next: tests/test_vizdoom.py compares them);
    if a map yields fewer windows than asked, the collection starts again in one process."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if workers > 1:
        entries = _collect_parallel(cfg, out, workers, progress)
        if entries is not None:
            write_dataset_index(out, entries)
            return {"out": str(out), "scenes": len(entries), "config": asdict(cfg)}
        for child in out.iterdir():     # a map fell short: what the processes wrote is dropped
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    split_maps = map_split(cfg.val_fraction, cfg.test_fraction)
    want = _split_wants(cfg)
    n = cfg.scenes
    rng = np.random.default_rng(cfg.seed)
    proc = FrameProcessor(cfg.resolution)
    entries = []
    bar = tqdm(total=n, desc="vizdoom scenes", unit="scene", disable=not progress)
    with _private_cwd():
        games: dict[str, object] = {}
        try:
            for split in ("train", "val", "test"):
                maps = [split_maps[split][i] for i in rng.permutation(len(split_maps[split]))]
                per_map = np.bincount(np.arange(want[split]) % len(maps), minlength=len(maps))
                got = 0
                queue = [(m, c) for m, c in zip(maps, per_map)]
                tried = 0
                while got < want[split] and tried < 3 * len(maps):
                    (wad, map_name), count = queue[tried % len(queue)]
                    tried += 1
                    count = min(max(count, 1), want[split] - got)
                    dm = DoomMap.from_wad(wad_path(wad), map_name)
                    game = start_map(games, wad, map_name, cfg.resolution, cfg.seed)
                    map_rng = np.random.default_rng([cfg.seed, tried, len(entries)])
                    for frames in collect_map_scenes(game, dm, count, cfg, map_rng, proc, bar):
                        entries.append(_scene_entry(out, len(entries), split, wad, map_name, frames, dm, cfg, proc))
                        got += 1
                if got < want[split]:
                    raise RuntimeError(f"could only collect {got} of {want[split]} {split} scenes")
        finally:
            for g in games.values():
                g.close()
            bar.close()
    write_dataset_index(out, entries)
    return {"out": str(out), "scenes": len(entries), "config": asdict(cfg)}


# ------------------------------------------------------------------ depth validation
def depth_validation(maps: list[tuple[str, str]], steps: int = 40, resolution: int = 64, seed: int = 0, max_depth: float = 15.0) -> dict:
    """Compare depth against exact eye-level wall distances ray-cast from the map geometry.

    For every stored column of the two pixel rows straddling the horizon whose eye-level ray
    hits a wall within ``max_depth`` metres: the raw buffer value, the buffer calibrated with
    the shipped constants, and the final (snapped) depth. Returns the refitted linear
    calibration (map units = a * buffer + b, least squares after dropping > 10 % outliers) and
    the median / 90th-percentile relative errors."""
    cfg = VizdoomConfig(resolution=resolution, seed=seed)
    proc = FrameProcessor(resolution)
    R = resolution
    raws, exact, final = [], [], []
    with _private_cwd():
        games: dict[str, object] = {}
        try:
            for k, (wad, map_name) in enumerate(maps):
                dm = DoomMap.from_wad(wad_path(wad), map_name)
                game = start_map(games, wad, map_name, resolution, seed)
                walls = dm.lines[dm.impassable()]
                agent = Explorer(np.random.default_rng([seed, k]), cfg.turn_step)
                for _ in range(steps):
                    if game.is_episode_finished():
                        break
                    state = game.get_state()
                    x, y, z, yaw_deg, _ = state.game_variables
                    pos, yaw = np.array([x, y]), np.deg2rad(yaw_deg)
                    sector = int(dm.sector_at(pos[None])[0])
                    if sector >= 0:
                        raw = proc.raw_depth(state.depth_buffer)
                        d = proc.depth(raw, dm, pos, z, yaw, sector)
                        r = dm.eye_level_depth(pos, z, yaw - proc.col_angle) * np.cos(proc.col_angle) / MAP_UNITS_PER_METRE
                        for row in (R // 2 - 1, R // 2):
                            raws.append(raw[row].astype(np.float64))
                            exact.append(r)
                            final.append(d[row].astype(np.float64))
                    step(game, *agent.act(dm, walls, pos, yaw_deg), cfg.tics_per_frame)
        finally:
            for g in games.values():
                g.close()
    raw, ex, fin = (np.concatenate(a) for a in (raws, exact, final))
    ok = np.isfinite(ex) & (ex < max_depth) & (raw < DEPTH_BUFFER_SATURATED)
    raw, ex, fin = raw[ok], ex[ok], fin[ok]
    calibrated = (DEPTH_BUFFER_SCALE * raw + DEPTH_BUFFER_OFFSET) / MAP_UNITS_PER_METRE
    A = np.stack([raw, np.ones_like(raw)], 1)
    units = ex * MAP_UNITS_PER_METRE
    coef = np.linalg.lstsq(A, units, rcond=None)[0]
    keep = np.abs(A @ coef - units) / units < 0.1
    coef = np.linalg.lstsq(A[keep], units[keep], rcond=None)[0]

    def rel(pred):
        e = np.abs(pred - ex) / ex
        return {"median": float(np.median(e)), "p90": float(np.percentile(e, 90))}

    return {
        "pixels": int(ok.sum()),
        "fit_scale": float(coef[0]),
        "fit_offset": float(coef[1]),
        "calibrated_buffer": rel(calibrated),
        "final": rel(fin),
    }
