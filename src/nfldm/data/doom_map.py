"""Exact 2.5-D geometry of a Doom map, read from the WAD file (or ViZDoom's ``state.sectors``).

Used for three things: ray-casting exact wall distances (to calibrate and validate the
depth buffer), steering the exploring agent, and rasterising the bird's-eye-view (BEV) map,
with, from the WAD, its look (:func:`wad_colours`: the mean colour of every flat and wall
texture; sector light levels).

All coordinates here are Doom map units (``MAP_UNITS_PER_METRE`` = 128 / 3 per metre: the
automap grid of 128 units is documented as 3 m). Map x points east, y north, z up.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

import numpy as np

MAP_UNITS_PER_METRE = 128.0 / 3.0
PLAYER_HEIGHT = 56.0  # map units: the smallest opening the player fits through
MAX_STEP = 24.0  # map units: the highest step the player can climb


# Doom map format (binary, little-endian): the lumps that follow a map's marker lump
_MAP_LUMPS = ("THINGS", "LINEDEFS", "SIDEDEFS", "VERTEXES", "SEGS", "SSECTORS", "NODES", "SECTORS", "REJECT", "BLOCKMAP")
_VERTEX = np.dtype([("x", "<i2"), ("y", "<i2")])
_LINEDEF = np.dtype([("v1", "<u2"), ("v2", "<u2"), ("flags", "<u2"), ("special", "<u2"), ("tag", "<u2"), ("right", "<u2"), ("left", "<u2")])
_SIDEDEF = np.dtype([("x_offset", "<i2"), ("y_offset", "<i2"), ("textures", "S24"), ("sector", "<u2")])
_SECTOR = np.dtype([("floor", "<i2"), ("ceiling", "<i2"), ("flats", "S16"), ("light", "<i2"), ("special", "<i2"), ("tag", "<i2")])
_NO_SIDEDEF = 0xFFFF
_ML_BLOCKING = 0x0001  # linedef flag: impassable


@functools.lru_cache(maxsize=None)
def _wad_lumps(path: str) -> list[tuple[str, int, int]]:
    """Every lump of a WAD in directory order: (name, file offset, size)."""
    with open(path, "rb") as f:
        _, count, offset = struct.unpack("<4sii", f.read(12))
        f.seek(offset)
        entries = np.frombuffer(f.read(16 * count), dtype=[("pos", "<i4"), ("size", "<i4"), ("name", "S8")])
    return [(n.decode("ascii", "replace").upper(), int(p), int(z))
            for n, p, z in zip(entries["name"], entries["pos"], entries["size"])]


def _name(raw: bytes) -> str:
    """An 8-byte lump / texture name field -> upper-case str (NUL padding dropped)."""
    return raw.split(b"\0", 1)[0].decode("ascii", "replace").upper()


@functools.lru_cache(maxsize=None)
def wad_colours(path: str) -> dict[str, np.ndarray]:
    """Mean colour (RGB in [0, 1], linear in the palette's sRGB values) of every flat and
    every wall texture of a WAD, by name.

    Flats (between F_START / F_END): 64 x 64 palette indices, averaged. Wall textures
    (TEXTURE1 / TEXTURE2 built from PNAMES patches): the mean of their patches' opaque pixels,
    each patch weighted by its opaque pixel count (overlaps and the texture's own crop ignored:
    a mean colour, not a picture). Names missing from the WAD are absent (callers fall back
    to grey)."""
    lumps = _wad_lumps(path)
    by_name = {}
    for name, pos, size in lumps:
        by_name.setdefault(name, (pos, size))
    with open(path, "rb") as f:

        def read(pos: int, size: int) -> bytes:
            f.seek(pos)
            return f.read(size)

        palette = np.frombuffer(read(*by_name["PLAYPAL"])[:768], np.uint8).reshape(256, 3) / 255.0
        out: dict[str, np.ndarray] = {}
        names = [n for n, _, _ in lumps]
        if "F_START" in names and "F_END" in names:
            for name, pos, size in lumps[names.index("F_START") + 1: names.index("F_END")]:
                if size == 4096:
                    out[name] = palette[np.frombuffer(read(pos, size), np.uint8)].mean(0)
        patches = {}

        def patch_stats(name: str):
            """(sum of RGB, opaque pixel count) of a patch in the Doom picture format."""
            if name not in patches:
                patches[name] = None
                if name in by_name and by_name[name][1] > 8:
                    data = read(*by_name[name])
                    try:
                        w = struct.unpack_from("<h", data, 0)[0]
                        cols = struct.unpack_from(f"<{w}I", data, 8)
                        idx = []
                        for off in cols:
                            while data[off] != 0xFF:
                                n = data[off + 1]
                                idx.append(np.frombuffer(data, np.uint8, n, off + 3))
                                off += n + 4
                        px = palette[np.concatenate(idx)] if idx else np.zeros((0, 3))
                        patches[name] = (px.sum(0), len(px))
                    except (struct.error, IndexError, ValueError):
                        patches[name] = None        # a corrupt patch: the texture goes without it
            return patches[name]

        if "PNAMES" in by_name:
            pdata = read(*by_name["PNAMES"])
            pnames = [_name(pdata[4 + 8 * i: 12 + 8 * i]) for i in range(struct.unpack_from("<i", pdata)[0])]
            for lump in ("TEXTURE1", "TEXTURE2"):
                if lump not in by_name:
                    continue
                data = read(*by_name[lump])
                count = struct.unpack_from("<i", data)[0]
                for off in struct.unpack_from(f"<{count}i", data, 4):
                    tex = _name(data[off: off + 8])
                    n_patches = struct.unpack_from("<h", data, off + 20)[0]
                    total, n = np.zeros(3), 0
                    for k in range(n_patches):
                        p = struct.unpack_from("<h", data, off + 22 + 10 * k + 4)[0]
                        st = patch_stats(pnames[p]) if 0 <= p < len(pnames) else None
                        if st is not None:
                            total, n = total + st[0], n + st[1]
                    if n:
                        out.setdefault(tex, total / n)
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


@functools.lru_cache(maxsize=None)
def _wad_directory(path: str) -> dict[str, tuple[int, int]]:
    """Lump name -> (file offset, size) of the lumps of every map in a WAD, keyed "MAP01/LINEDEFS"."""
    entries = _wad_lumps(path)
    names = [name for name, _, _ in entries]
    lumps = {}
    for i, name in enumerate(names):
        if names[i + 1 : i + 1 + len(_MAP_LUMPS)] == list(_MAP_LUMPS):  # a map marker
            for k, lump in enumerate(_MAP_LUMPS, i + 1):
                lumps[f"{name}/{lump}"] = entries[k][1:]
    return lumps


def map_lumps(wad_path: str, map_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(VERTEXES, LINEDEFS, SIDEDEFS, SECTORS) of one map of a WAD, as structured arrays
    (``_VERTEX``, ``_LINEDEF``, ``_SIDEDEF``, ``_SECTOR``)."""
    directory = _wad_directory(str(wad_path))
    with open(wad_path, "rb") as f:

        def lump(name: str, dtype: np.dtype) -> np.ndarray:
            pos, size = directory[f"{map_name.upper()}/{name}"]
            f.seek(pos)
            return np.frombuffer(f.read(size), dtype=dtype)

        return lump("VERTEXES", _VERTEX), lump("LINEDEFS", _LINEDEF), lump("SIDEDEFS", _SIDEDEF), lump("SECTORS", _SECTOR)


def _may_cross_fan(walls: np.ndarray, origin: np.ndarray, angles: np.ndarray, d: np.ndarray, margin: float = 1e-6) -> np.ndarray:
    """Which segments (walls: K x 4) a fan of rays from ``origin`` with directions d (A x 2, at
    ``angles``) may hit: False only for segments that lie wholly outside the fan's wedge
    (clockwise of its first ray, counter-clockwise of its last, or behind it) by more than
    ``margin`` map units, so that dropping them never drops a hit.
    Fans of 170 degrees or more keep every segment."""
    rel = (angles - angles[0] + np.pi) % (2 * np.pi) - np.pi  # angles relative to the first ray
    if rel.max() - rel.min() >= np.deg2rad(170.0):
        return np.ones(len(walls), dtype=bool)
    first, last = d[rel.argmin()], d[rel.argmax()]  # the wedge's clockwise and counter-clockwise edges
    mid = (first + last) / np.hypot(*(first + last))
    # unit normals pointing into the wedge, one row per side: normals @ (p - origin) = signed
    # distances of a point p from the three sides
    normals = np.array([[-first[1], first[0]], [last[1], -last[0]], mid])
    offset = (normals @ origin)[:, None]
    start = normals @ walls[:, :2].T - offset  # 3 x K
    end = normals @ walls[:, 2:].T - offset
    outside = np.maximum(start, end) < -margin  # 3 x K: both ends outside that side
    return ~(outside[0] | outside[1] | outside[2])


@dataclass
class DoomMap:
    """Line segments and sector heights of one map.

    lines: L x 4 (x1, y1, x2, y2); front, back: L sector indices (back = -1 for one-sided
    lines); blocking: L bool (the line's impassable flag); floor, ceil: S heights.
    The look (only :meth:`from_wad` knows it; None from ``state.sectors``): light: S sector
    light levels (0-255); floor_rgb, ceil_rgb: S x 3 mean colours of the sectors' flats;
    line_rgb: L x 3 mean colour of the texture a line shows (its front side's middle texture,
    else upper, else lower, else the back side's), RGB in [0, 1], grey where the WAD lacks it.
    """

    lines: np.ndarray
    front: np.ndarray
    back: np.ndarray
    blocking: np.ndarray
    floor: np.ndarray
    ceil: np.ndarray
    sector_lines: list[np.ndarray]  # per sector: K x 4 segments bounding it
    light: np.ndarray | None = None
    floor_rgb: np.ndarray | None = None
    ceil_rgb: np.ndarray | None = None
    line_rgb: np.ndarray | None = None

    @classmethod
    def from_sectors(cls, sectors) -> "DoomMap":
        """Build from ``state.sectors``. A line shared by two sectors is listed in both with
        identical coordinates (checked on freedoom maps); that makes it two-sided."""
        index: dict[tuple, int] = {}
        lines, front, back, blocking = [], [], [], []
        sector_lines = []
        for s, sec in enumerate(sectors):
            seg = []
            for ln in sec.lines:
                key = (ln.x1, ln.y1, ln.x2, ln.y2)
                seg.append(key)
                if key in index:
                    back[index[key]] = s
                else:
                    index[key] = len(lines)
                    lines.append(key)
                    front.append(s)
                    back.append(-1)
                    blocking.append(bool(ln.is_blocking))
            sector_lines.append(np.asarray(seg, dtype=np.float64).reshape(-1, 4))
        return cls(
            lines=np.asarray(lines, dtype=np.float64).reshape(-1, 4),
            front=np.asarray(front, dtype=np.int64),
            back=np.asarray(back, dtype=np.int64),
            blocking=np.asarray(blocking, dtype=bool),
            floor=np.asarray([s.floor_height for s in sectors], dtype=np.float64),
            ceil=np.asarray([s.ceiling_height for s in sectors], dtype=np.float64),
            sector_lines=sector_lines,
        )

    @classmethod
    def from_wad(cls, wad_path: str, map_name: str) -> "DoomMap":
        """Read the map straight from the WAD (VERTEXES, LINEDEFS, SIDEDEFS, SECTORS lumps).

        Lists each sector's lines the way ViZDoom's ``state.sectors`` does (every linedef with
        the sector on either side, in linedef order; a line with the same sector on both sides
        once) and builds the arrays as :meth:`from_sectors` does from that list, so the result
        is identical to reading ``state.sectors`` (checked on all 68 Freedoom maps) without
        running a second engine with sector info on."""
        vertices, linedefs, sidedefs, sectors = map_lumps(wad_path, map_name)
        start, end = vertices[linedefs["v1"]], vertices[linedefs["v2"]]
        coords = np.stack([start["x"], start["y"], end["x"], end["y"]], 1)  # int16, per linedef
        seg = coords.astype(np.float64)
        key = coords.view(np.int64)[:, 0]  # the 4 int16 coordinates as one number: equal segments <=> equal keys
        front = sidedefs["sector"][linedefs["right"]].astype(np.int64)
        has_back = linedefs["left"] != _NO_SIDEDEF
        back = np.where(has_back, sidedefs["sector"][np.where(has_back, linedefs["left"], 0)].astype(np.int64), -1)
        # what state.sectors lists, in its order: per sector, its linedefs in linedef order
        two = (back >= 0) & (back != front)
        owner = np.concatenate([front, back[two]])
        linedef = np.concatenate([np.arange(len(seg)), np.nonzero(two)[0]])
        order = np.lexsort((linedef, owner))
        owner, linedef = owner[order], linedef[order]
        sector_lines = np.split(seg[linedef], np.searchsorted(owner, np.arange(1, len(sectors))))
        # from_sectors' lines, vectorised: one line per distinct segment, in order of first
        # listing; front = the sector that lists it first, back = the one that lists it last
        # (-1 if listed once); the impassable flag of the first listing
        _, first, count = np.unique(key[linedef], return_index=True, return_counts=True)
        _, last_rev = np.unique(key[linedef][::-1], return_index=True)
        key_order = np.argsort(first)
        first, last, count = first[key_order], (len(linedef) - 1 - last_rev)[key_order], count[key_order]
        # the look: flats' and textures' mean colours, sector light
        colours = wad_colours(str(wad_path))
        grey = np.full(3, 0.5, np.float32)
        colour = lambda name: colours.get(name, grey)     # noqa: E731
        flat = lambda k: np.stack([colour(_name(r[8 * k: 8 * k + 8])) for r in sectors["flats"].tolist()])  # noqa: E731
        side_tex = [[_name(r[8 * k: 8 * k + 8]) for k in (2, 0, 1)] for r in sidedefs["textures"].tolist()]
        line_rgb = []
        for ld in linedef[first]:
            names = side_tex[linedefs["right"][ld]] + (side_tex[linedefs["left"][ld]] if has_back[ld] else [])
            shown = [n for n in names if n not in ("-", "")]
            line_rgb.append(colour(shown[0]) if shown else grey)
        return cls(
            lines=seg[linedef[first]],
            front=owner[first],
            back=np.where(count > 1, owner[last], -1),
            blocking=(linedefs["flags"][linedef[first]] & _ML_BLOCKING) != 0,
            floor=sectors["floor"].astype(np.float64),
            ceil=sectors["ceiling"].astype(np.float64),
            sector_lines=sector_lines,
            light=sectors["light"].astype(np.float64),
            floor_rgb=flat(0),
            ceil_rgb=flat(1),
            line_rgb=np.asarray(line_rgb, np.float32).reshape(-1, 3),
        )

    # ------------------------------------------------------------------ lines
    @functools.cached_property
    def _opening(self) -> tuple[np.ndarray, np.ndarray]:
        """Per line: (lowest z of the opening, highest z); an empty opening for one-sided lines."""
        b = np.where(self.back >= 0, self.back, self.front)
        lo = np.maximum(self.floor[self.front], self.floor[b])
        hi = np.minimum(self.ceil[self.front], self.ceil[b])
        one_sided = self.back < 0
        lo = np.where(one_sided, np.inf, lo)
        hi = np.where(one_sided, -np.inf, hi)
        return lo, hi

    def solid_at_height(self, z: float) -> np.ndarray:
        """L bool: the line blocks a horizontal ray at height z (one-sided, or z outside the
        opening between the two sectors' floors and ceilings)."""
        lo, hi = self._opening
        return ~((lo < z) & (z < hi))

    def impassable(self) -> np.ndarray:
        """L bool: the player cannot cross the line (wall, impassable flag, high step, low
        opening). This is the BEV wall-occupancy definition."""
        lo, hi = self._opening
        f, b = self.front, np.where(self.back >= 0, self.back, self.front)
        step = np.abs(self.floor[f] - self.floor[b])
        return (self.back < 0) | self.blocking | (step > MAX_STEP) | (hi - lo < PLAYER_HEIGHT)

    def ray_distance(self, origin: np.ndarray, angles: np.ndarray, walls: np.ndarray, max_dist: float = 2048.0) -> np.ndarray:
        """Distance along horizontal rays to the first of the ``walls``.

        origin: 2 (x, y); angles: A (radians, 0 = +x, counter-clockwise); walls: K x 4 segments
        (x1, y1, x2, y2), e.g. ``lines[impassable()]``.
        Returns A distances in map units (inf where no wall is hit within ``max_dist``,
        which is beyond the depth buffer's range).
        """
        o = np.asarray(origin, dtype=np.float64)
        angles = np.atleast_1d(np.asarray(angles, dtype=np.float64))
        d = np.stack([np.cos(angles), np.sin(angles)], -1)  # A x 2
        seg = walls[_may_cross_fan(walls, o, angles, d)]
        # drop segments farther than max_dist from the origin (point-to-segment distance)
        e = seg[:, 2:] - seg[:, :2]
        w = np.clip(((o - seg[:, :2]) * e).sum(1) / np.maximum((e * e).sum(1), 1e-12), 0, 1)
        seg = seg[np.hypot(*(seg[:, :2] + w[:, None] * e - o).T) < max_dist]
        if len(seg) == 0:
            return np.full(angles.shape, np.inf)
        d = d[:, None, :]  # A x 1 x 2
        p = seg[None, :, :2] - o  # 1 x K x 2
        e = seg[None, :, 2:] - seg[None, :, :2]  # 1 x K x 2
        denom = d[..., 0] * e[..., 1] - d[..., 1] * e[..., 0]  # A x K
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (p[..., 0] * e[..., 1] - p[..., 1] * e[..., 0]) / denom
            s = (p[..., 0] * d[..., 1] - p[..., 1] * d[..., 0]) / denom
        hit = (np.abs(denom) > 1e-12) & (t > 1e-6) & (s >= 0) & (s <= 1)
        return np.where(hit, t, np.inf).min(axis=1)

    def walls_at_height(self, z: float) -> np.ndarray:
        """K x 4 segments of the lines that block a horizontal ray at height z (cached: the
        camera height changes only on steps and lifts)."""
        if getattr(self, "_walls", None) is None or len(self._walls) >= 64:
            self._walls = {}
        if z not in self._walls:
            self._walls[z] = self.lines[self.solid_at_height(z)]
        return self._walls[z]

    def eye_level_depth(self, origin: np.ndarray, eye_z: float, angles: np.ndarray) -> np.ndarray:
        """Exact distance to the wall seen by a level ray at the eye height (map units)."""
        return self.ray_distance(origin, angles, self.walls_at_height(eye_z))

    # ---------------------------------------------------------------- sectors
    BAND = 64.0  # map units: height of the horizontal bands that bucket segments for sector_at

    def _sector_index(self):
        """Per-map arrays for ``sector_at`` (built once): the bounding-box area of each sector and,
        per horizontal band of ``BAND`` map units, the sector segments whose y-range meets the
        band, sorted by owner sector: columns x1, y1, y2 and (x2 - x1) / (y2 - y1) as K x 1
        arrays, the band's sectors and the first row of each one's segments.
        Horizontal segments are left out: a horizontal ray never crosses them."""
        if getattr(self, "_sindex", None) is None:
            segs = np.concatenate(self.sector_lines, 0)  # already sorted by owner sector
            count = np.array([len(s) for s in self.sector_lines])
            owner = np.repeat(np.arange(len(count)), count)
            lo_xy, hi_xy = np.full((len(count), 2), np.inf), np.full((len(count), 2), -np.inf)
            for end in (segs[:, :2], segs[:, 2:]):  # bounding box of each sector's segments
                np.minimum.at(lo_xy, owner, end)
                np.maximum.at(hi_xy, owner, end)
            area = np.where(count > 0, np.prod(hi_xy - lo_xy, axis=1), np.inf)
            y0 = segs[:, [1, 3]].min()
            lo = np.floor((segs[:, [1, 3]].min(1) - y0) / self.BAND).astype(int)
            hi = np.floor((segs[:, [1, 3]].max(1) - y0) / self.BAND).astype(int)
            not_horizontal = segs[:, 1] != segs[:, 3]
            bands = []
            for b in range(hi.max() + 1):
                k = np.nonzero((lo <= b) & (hi >= b) & not_horizontal)[0]
                sectors, starts = np.unique(owner[k], return_index=True)
                x1, y1, x2, y2 = (segs[k, i, None] for i in range(4))
                bands.append((x1, y1, y2, (x2 - x1) / (y2 - y1), sectors, starts))
            self._sindex = (area, y0, bands)
        return self._sindex

    def sector_at(self, points: np.ndarray) -> np.ndarray:
        """Sector index containing each point (P x 2 -> P, -1 outside the map).

        Even-odd rule per sector (a ray to +x crosses the sector's boundary an odd number of
        times); for nested sectors the one with the smallest bounding box (the innermost) wins.
        Only the segments of the point's horizontal band are tested."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        _, y0, bands = self._sector_index()
        out = np.full(len(points), -1, dtype=np.int64)
        band = np.floor((points[:, 1] - y0) / self.BAND).astype(int)
        order = np.argsort(band, kind="stable")  # the points grouped by band
        for sel in np.split(order, np.flatnonzero(np.diff(band[order])) + 1):
            b = band[sel[0]]
            if b < 0 or b >= len(bands) or len(bands[b][0]) == 0:
                continue
            x1, y1, y2, inverse_slope = bands[b][:4]
            px, py = points[sel, 0], points[sel, 1]
            straddle = (y1 > py) != (y2 > py)
            out[sel] = self._innermost(b, straddle & (px < x1 + (py - y1) * inverse_slope))
        return out

    def sector_grid(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """``sector_at`` of every grid point (xs[i], ys[j]) -> len(xs) x len(ys).

        The same rule and arithmetic, but where a segment crosses the ray to +x of a grid row
        is computed once per row instead of once per point."""
        xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
        _, y0, bands = self._sector_index()
        out = np.full((len(xs), len(ys)), -1, dtype=np.int64)
        band = np.floor((ys - y0) / self.BAND).astype(int)
        for b in np.unique(band):
            if b < 0 or b >= len(bands) or len(bands[b][0]) == 0:
                continue
            rows = np.flatnonzero(band == b)
            x1, y1, y2, inverse_slope = bands[b][:4]
            py = ys[rows]
            straddle = (y1 > py) != (y2 > py)  # K x rows
            xint = x1 + (py - y1) * inverse_slope
            cross = straddle[:, :, None] & (xs < xint[:, :, None])  # K x rows x X
            out[:, rows] = self._innermost(b, cross.reshape(len(x1), -1)).reshape(len(rows), len(xs)).T
        return out

    def _innermost(self, b: int, cross: np.ndarray) -> np.ndarray:
        """K x P crossings of the rays to +x of P points with the K segments of band b -> the
        innermost sector with an odd number of crossings per point (-1 for none)."""
        bbox_area, _, bands = self._sector_index()
        sectors, starts = bands[b][4:]
        # S' x P: XOR of each sector's rows (on rows packed 8 points a byte)
        odd = np.bitwise_xor.reduceat(np.packbits(cross, axis=1), starts, axis=0)
        inside = np.unpackbits(odd, axis=1, count=cross.shape[1]).view(bool)
        area = np.where(inside, bbox_area[sectors, None], np.inf)
        return np.where(np.isfinite(area.min(0)), sectors[area.argmin(0)], -1)

    GRID = 4.0  # map units (9.4 cm): cell size of the cached lookup ``sector_near``

    def sector_near(self, points: np.ndarray) -> np.ndarray:
        """``sector_at`` of the centre of each point's GRID x GRID cell (P x 2 -> P).

        For points that are only approximate anyway (depth snapping: a pixel's world point from
        the quantised depth buffer is off by several cm): the cell centre is at most 2.9 map
        units (6.6 cm) away. Each cell is looked up once per map and cached; consecutive frames
        see mostly the same cells (a run of 8 scenes x 24 frames needs 1 new cell per 6 points)."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if getattr(self, "_grid", None) is None:
            lo = self.lines[:, :2].min(0) - self.GRID
            shape = tuple(np.ceil((self.lines[:, :2].max(0) + self.GRID - lo) / self.GRID).astype(int))
            self._grid = (lo, shape, np.full(shape[0] * shape[1], -2, dtype=np.int32))  # -2: not looked up yet
        lo, shape, grid = self._grid
        i, j = np.floor((points - lo) / self.GRID).astype(np.int64).T
        out = np.full(len(points), -1, dtype=np.int64)  # outside the map's bounding box
        ok = (i >= 0) & (i < shape[0]) & (j >= 0) & (j < shape[1])
        cell = i[ok] * shape[1] + j[ok]
        new = np.unique(cell[grid[cell] == -2])
        if len(new):
            centres = lo + (np.stack(np.divmod(new, shape[1]), 1) + 0.5) * self.GRID
            grid[new] = self.sector_at(centres)
        out[ok] = grid[cell]
        return out

    # -------------------------------------------------------------------- BEV
    def bev(self, lo_xy: np.ndarray, hi_xy: np.ndarray, res: int, z0: float, look: bool = False) -> dict[str, np.ndarray]:
        """Rasterise a res x res bird's-eye-view map over the box [lo_xy, hi_xy] (map units).

        Cell (i, j) covers x in cell i, y in cell j (index [i, j] = [x, y], matching the voxel
        grid's X x Y footprint). Returns float32 res x res arrays:
          wall:    1 where an impassable line passes through the cell, else 0;
          floor:   floor height (metres, relative to z0), NaN outside the map;
          ceiling: ceiling height (metres, relative to z0), NaN outside the map;
          inside:  1 where the cell centre is inside the map.
        With ``look`` (a map read by :meth:`from_wad`) also the look, :data:`nfldm.data.bev.LOOK_KEYS`:
          light:                          sector light / 255, NaN outside the map;
          floor_r/g/b, ceiling_r/g/b:     mean colour of the sector's floor / ceiling flat, NaN outside;
          wall_r/g/b:                     mean colour of the texture of a wall through the cell, NaN
                                          where no wall passes.
        """
        if look and self.light is None:
            raise ValueError("the map's look (light, flats, textures) is only known for a map read from its WAD")
        lo_xy, hi_xy = np.asarray(lo_xy, float), np.asarray(hi_xy, float)
        cell = (hi_xy - lo_xy) / res
        cx = lo_xy[0] + (np.arange(res) + 0.5) * cell[0]
        cy = lo_xy[1] + (np.arange(res) + 0.5) * cell[1]
        sec = self.sector_grid(cx, cy)
        inside = sec >= 0
        floor = np.where(inside, (self.floor[sec] - z0) / MAP_UNITS_PER_METRE, np.nan)
        ceil = np.where(inside, (self.ceil[sec] - z0) / MAP_UNITS_PER_METRE, np.nan)
        wall = np.zeros((res, res), dtype=np.float32)
        wall_rgb = np.full((res, res, 3), np.nan, dtype=np.float32)
        which = np.nonzero(self.impassable())[0]
        seg = self.lines[which]
        # only segments whose bounding box meets the BEV box can mark a cell
        near = (np.minimum(seg[:, :2], seg[:, 2:]) <= hi_xy).all(1) & (np.maximum(seg[:, :2], seg[:, 2:]) >= lo_xy).all(1)
        seg, which = seg[near], which[near]
        if len(seg):
            length = np.hypot(seg[:, 2] - seg[:, 0], seg[:, 3] - seg[:, 1])
            n = np.maximum(2, np.ceil(length / (0.25 * cell.min())).astype(int) + 1)
            rep = np.repeat(np.arange(len(seg)), n)
            # n[i] evenly spaced samples from 0 to 1 along segment i (np.linspace(0, 1, n[i]) each)
            k = np.arange(len(rep)) - np.repeat(np.cumsum(n) - n, n)
            t = np.where(k == n[rep] - 1, 1.0, k * (1.0 / (n[rep] - 1)))
            px = seg[rep, 0] + t * (seg[rep, 2] - seg[rep, 0])
            py = seg[rep, 1] + t * (seg[rep, 3] - seg[rep, 1])
            i = np.floor((px - lo_xy[0]) / cell[0]).astype(int)
            j = np.floor((py - lo_xy[1]) / cell[1]).astype(int)
            ok = (i >= 0) & (i < res) & (j >= 0) & (j < res)
            wall[i[ok], j[ok]] = 1.0
            if look:
                wall_rgb[i[ok], j[ok]] = self.line_rgb[which[rep[ok]]]
        out = {
            "wall": wall,
            "floor": floor.astype(np.float32),
            "ceiling": ceil.astype(np.float32),
            "inside": inside.astype(np.float32),
        }
        if look:
            per_cell = lambda a: np.where(inside[..., None] if a.ndim == 2 else inside, a[sec], np.nan)  # noqa: E731
            out["light"] = per_cell(self.light / 255.0).astype(np.float32)
            for key, rgb in (("floor", per_cell(self.floor_rgb)), ("ceiling", per_cell(self.ceil_rgb)), ("wall", wall_rgb)):
                for k, ch in enumerate("rgb"):
                    out[f"{key}_{ch}"] = rgb[..., k].astype(np.float32)
        return out
