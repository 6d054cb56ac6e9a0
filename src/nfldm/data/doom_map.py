"""Exact 2.5-D geometry of a Doom map, from ViZDoom's ``state.sectors``.

Used for three things: ray-casting exact wall distances (to calibrate and validate the
depth buffer), steering the exploring agent, and rasterising the bird's-eye-view (BEV) map.

All coordinates here are Doom map units (``MAP_UNITS_PER_METRE`` = 128 / 3 per metre: the
automap grid of 128 units is documented as 3 m). Map x points east, y north, z up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAP_UNITS_PER_METRE = 128.0 / 3.0
PLAYER_HEIGHT = 56.0  # map units: the smallest opening the player fits through
MAX_STEP = 24.0  # map units: the highest step the player can climb


@dataclass
class DoomMap:
    """Line segments and sector heights of one map.

    lines: L x 4 (x1, y1, x2, y2); front, back: L sector indices (back = -1 for one-sided
    lines); blocking: L bool (the line's impassable flag); floor, ceil: S heights.
    """

    lines: np.ndarray
    front: np.ndarray
    back: np.ndarray
    blocking: np.ndarray
    floor: np.ndarray
    ceil: np.ndarray
    sector_lines: list[np.ndarray]  # per sector: K x 4 segments bounding it

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

    # ------------------------------------------------------------------ lines
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
        lo, hi = self._opening()
        return ~((lo < z) & (z < hi))

    def impassable(self) -> np.ndarray:
        """L bool: the player cannot cross the line (wall, impassable flag, high step, low
        opening). This is the BEV wall-occupancy definition."""
        lo, hi = self._opening()
        f, b = self.front, np.where(self.back >= 0, self.back, self.front)
        step = np.abs(self.floor[f] - self.floor[b])
        return (self.back < 0) | self.blocking | (step > MAX_STEP) | (hi - lo < PLAYER_HEIGHT)

    def ray_distance(self, origin: np.ndarray, angles: np.ndarray, solid: np.ndarray, max_dist: float = 2048.0) -> np.ndarray:
        """Distance along horizontal rays to the first ``solid`` line.

        origin: 2 (x, y); angles: A (radians, 0 = +x, counter-clockwise); solid: L bool.
        Returns A distances in map units (inf where no solid line is hit within ``max_dist``,
        which is beyond the depth buffer's range).
        """
        seg = self.lines[solid]
        # drop segments farther than max_dist from the origin (point-to-segment distance)
        o = np.asarray(origin, dtype=np.float64)
        e = seg[:, 2:] - seg[:, :2]
        w = np.clip(((o - seg[:, :2]) * e).sum(1) / np.maximum((e * e).sum(1), 1e-12), 0, 1)
        seg = seg[np.hypot(*(seg[:, :2] + w[:, None] * e - o).T) < max_dist]
        if len(seg) == 0:
            return np.full(np.shape(angles), np.inf)
        d = np.stack([np.cos(angles), np.sin(angles)], -1)[:, None, :]  # A x 1 x 2
        p = seg[None, :, :2] - np.asarray(origin, dtype=np.float64)  # 1 x L x 2
        e = seg[None, :, 2:] - seg[None, :, :2]  # 1 x L x 2
        denom = d[..., 0] * e[..., 1] - d[..., 1] * e[..., 0]  # A x L
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (p[..., 0] * e[..., 1] - p[..., 1] * e[..., 0]) / denom
            s = (p[..., 0] * d[..., 1] - p[..., 1] * d[..., 0]) / denom
        hit = (np.abs(denom) > 1e-12) & (t > 1e-6) & (s >= 0) & (s <= 1)
        return np.where(hit, t, np.inf).min(axis=1)

    def eye_level_depth(self, origin: np.ndarray, eye_z: float, angles: np.ndarray) -> np.ndarray:
        """Exact distance to the wall seen by a level ray at the eye height (map units)."""
        return self.ray_distance(origin, angles, self.solid_at_height(eye_z))

    # ---------------------------------------------------------------- sectors
    BAND = 64.0  # map units: height of the horizontal bands that bucket segments for sector_at

    def _sector_index(self):
        """Per-map arrays for ``sector_at`` (built once): all sector segments sorted by owner,
        bucketed into horizontal bands of ``BAND`` map units by the y-range they span."""
        if getattr(self, "_sindex", None) is None:
            segs = np.concatenate(self.sector_lines, 0)
            owner = np.concatenate([np.full(len(s), i) for i, s in enumerate(self.sector_lines)])
            area = np.array(
                [np.ptp(s[:, [0, 2]]) * np.ptp(s[:, [1, 3]]) if len(s) else np.inf for s in self.sector_lines]
            )
            order = np.argsort(owner, kind="stable")
            segs, owner = segs[order], owner[order]
            y0 = segs[:, [1, 3]].min()
            lo = np.floor((segs[:, [1, 3]].min(1) - y0) / self.BAND).astype(int)
            hi = np.floor((segs[:, [1, 3]].max(1) - y0) / self.BAND).astype(int)
            bands = [np.nonzero((lo <= b) & (hi >= b))[0] for b in range(hi.max() + 1)]
            self._sindex = (segs, owner, area, y0, bands)
        return self._sindex

    def sector_at(self, points: np.ndarray) -> np.ndarray:
        """Sector index containing each point (P x 2 -> P, -1 outside the map).

        Even-odd rule per sector (a ray to +x crosses the sector's boundary an odd number of
        times); for nested sectors the one with the smallest bounding box (the innermost) wins.
        Only the segments of the point's horizontal band are tested."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        segs, owner, bbox_area, y0, bands = self._sector_index()
        out = np.full(len(points), -1, dtype=np.int64)
        band = np.floor((points[:, 1] - y0) / self.BAND).astype(int)
        for b in np.unique(band):
            if b < 0 or b >= len(bands) or len(bands[b]) == 0:
                continue
            sel = np.nonzero(band == b)[0]
            k = bands[b]
            x1, y1, x2, y2 = (segs[k, i, None] for i in range(4))
            px, py = points[sel, 0][None], points[sel, 1][None]
            straddle = (y1 > py) != (y2 > py)
            with np.errstate(divide="ignore", invalid="ignore"):
                xint = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
            cross = (straddle & (px < xint)).astype(np.int32)  # K x P
            sectors, starts = np.unique(owner[k], return_index=True)
            inside = (np.add.reduceat(cross, starts, axis=0) % 2).astype(bool)  # S' x P
            area = np.where(inside, bbox_area[sectors, None], np.inf)
            out[sel] = np.where(np.isfinite(area.min(0)), sectors[area.argmin(0)], -1)
        return out

    # -------------------------------------------------------------------- BEV
    def bev(self, lo_xy: np.ndarray, hi_xy: np.ndarray, res: int, z0: float) -> dict[str, np.ndarray]:
        """Rasterise a res x res bird's-eye-view map over the box [lo_xy, hi_xy] (map units).

        Cell (i, j) covers x in cell i, y in cell j (index [i, j] = [x, y], matching the voxel
        grid's X x Y footprint). Returns float32 res x res arrays:
          wall:    1 where an impassable line passes through the cell, else 0;
          floor:   floor height (metres, relative to z0), NaN outside the map;
          ceiling: ceiling height (metres, relative to z0), NaN outside the map;
          inside:  1 where the cell centre is inside the map.
        """
        lo_xy, hi_xy = np.asarray(lo_xy, float), np.asarray(hi_xy, float)
        cell = (hi_xy - lo_xy) / res
        cx = lo_xy[0] + (np.arange(res) + 0.5) * cell[0]
        cy = lo_xy[1] + (np.arange(res) + 0.5) * cell[1]
        gx, gy = np.meshgrid(cx, cy, indexing="ij")
        sec = self.sector_at(np.stack([gx.ravel(), gy.ravel()], -1)).reshape(res, res)
        inside = sec >= 0
        floor = np.where(inside, (self.floor[sec] - z0) / MAP_UNITS_PER_METRE, np.nan)
        ceil = np.where(inside, (self.ceil[sec] - z0) / MAP_UNITS_PER_METRE, np.nan)
        wall = np.zeros((res, res), dtype=np.float32)
        seg = self.lines[self.impassable()]
        if len(seg):
            length = np.hypot(seg[:, 2] - seg[:, 0], seg[:, 3] - seg[:, 1])
            n = np.maximum(2, np.ceil(length / (0.25 * cell.min())).astype(int) + 1)
            t = np.concatenate([np.linspace(0, 1, k) for k in n])
            rep = np.repeat(np.arange(len(seg)), n)
            px = seg[rep, 0] + t * (seg[rep, 2] - seg[rep, 0])
            py = seg[rep, 1] + t * (seg[rep, 3] - seg[rep, 1])
            i = np.floor((px - lo_xy[0]) / cell[0]).astype(int)
            j = np.floor((py - lo_xy[1]) / cell[1]).astype(int)
            ok = (i >= 0) & (i < res) & (j >= 0) & (j < res)
            wall[i[ok], j[ok]] = 1.0
        return {
            "wall": wall,
            "floor": floor.astype(np.float32),
            "ceiling": ceil.astype(np.float32),
            "inside": inside.astype(np.float32),
        }
