"""``landscapes``: a procedural outdoor-scene data set, so that training runs with nothing
downloaded.

A seeded random process draws a layout (horizon, sun, clouds, mountain ridges, meadow / lake /
coast / desert ground, rocks, buildings, trees, far objects first). A renderer paints it with
per-class colours, textures (value noise) and shading under a random global style (daylight,
sunset, overcast) with per-image colour jitter, so one layout has many plausible images — the
multimodal case CC-FPSE's VAE is for. Everything is vectorised numpy: noise fields are small
random grids upsampled with smoothstep interpolation.

Written in the custom layout (``ROOT/{train,val}/{images,labels}``, ``ROOT/palette.json``,
``ROOT/landscapes.json``): labels are 8-bit index PNGs 0..9 (no dontcare, no instances), images
JPEG (quality 95). Sample ``i`` depends only on (seed, i).
"""

from __future__ import annotations

import functools
import glob
import json
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ccfpse.data.labels import write_palette
from ccfpse.errors import DataError

VERSION = 1
META_NAME = "landscapes.json"
CLASS_NAMES = ("sky", "cloud", "sun", "mountain", "water", "sand", "grass", "tree", "rock", "building")
SKY, CLOUD, SUN, MOUNTAIN, WATER, SAND, GRASS, TREE, ROCK, BUILDING = range(len(CLASS_NAMES))
LABEL_NC = len(CLASS_NAMES)
# Display colours of the label maps (not the rendering colours).
PALETTE = (
    (110, 170, 230), (235, 235, 245), (255, 210, 0), (125, 100, 145), (30, 90, 200),
    (230, 200, 130), (80, 170, 60), (20, 95, 35), (128, 128, 128), (200, 80, 60),
)
STYLES = ("daylight", "sunset", "overcast")
STYLE_PROBS = (0.45, 0.3, 0.25)
GROUNDS = ("meadow", "lake", "coast", "desert")

# Rendering colours per style (RGB in 0..1).
_STYLE_COLORS: dict[str, dict[str, tuple]] = {
    "daylight": dict(
        sky_top=(0.22, 0.45, 0.85), sky_bottom=(0.68, 0.82, 0.96), sun=(1.0, 0.97, 0.8),
        cloud=(0.98, 0.98, 1.0), cloud_shadow=(0.68, 0.72, 0.82), mountain=(0.42, 0.45, 0.56),
        snow=(0.95, 0.96, 1.0), haze=(0.72, 0.82, 0.94), water=(0.1, 0.32, 0.6),
        sand=(0.88, 0.78, 0.55), grass=(0.32, 0.62, 0.22), tree=(0.1, 0.36, 0.12),
        trunk=(0.36, 0.24, 0.14), rock=(0.56, 0.54, 0.51), window=(0.25, 0.32, 0.45),
        walls=((0.9, 0.87, 0.8), (0.72, 0.36, 0.26), (0.62, 0.63, 0.66)),
    ),
    "sunset": dict(
        sky_top=(0.25, 0.2, 0.45), sky_bottom=(1.0, 0.58, 0.3), sun=(1.0, 0.84, 0.45),
        cloud=(1.0, 0.68, 0.5), cloud_shadow=(0.45, 0.3, 0.42), mountain=(0.38, 0.25, 0.34),
        snow=(1.0, 0.8, 0.75), haze=(0.9, 0.55, 0.45), water=(0.25, 0.18, 0.3),
        sand=(0.8, 0.55, 0.38), grass=(0.3, 0.36, 0.12), tree=(0.1, 0.15, 0.07),
        trunk=(0.2, 0.12, 0.08), rock=(0.42, 0.3, 0.28), window=(1.0, 0.8, 0.4),
        walls=((0.75, 0.55, 0.45), (0.5, 0.25, 0.2), (0.45, 0.4, 0.45)),
    ),
    "overcast": dict(
        sky_top=(0.58, 0.6, 0.64), sky_bottom=(0.78, 0.79, 0.8), sun=(0.97, 0.94, 0.78),
        cloud=(0.86, 0.86, 0.88), cloud_shadow=(0.5, 0.52, 0.56), mountain=(0.42, 0.44, 0.48),
        snow=(0.88, 0.89, 0.9), haze=(0.75, 0.76, 0.78), water=(0.3, 0.36, 0.4),
        sand=(0.72, 0.67, 0.55), grass=(0.28, 0.45, 0.24), tree=(0.14, 0.27, 0.15),
        trunk=(0.3, 0.24, 0.18), rock=(0.48, 0.48, 0.48), window=(0.2, 0.22, 0.25),
        walls=((0.78, 0.77, 0.74), (0.58, 0.34, 0.28), (0.52, 0.53, 0.55)),
    ),
}
# How strongly water mirrors the sky, the sun's glow, and the haze over far land, per style.
_STYLE_LIGHT = {
    "daylight": dict(reflect=0.35, glow=0.35, haze=0.3),
    "sunset": dict(reflect=0.6, glow=0.7, haze=0.4),
    "overcast": dict(reflect=0.4, glow=0.15, haze=0.45),
}


# --------------------------------------------------------------------------------------------
# Noise


@functools.lru_cache(maxsize=128)
def _interp(n_out: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and smoothstep weights to resample a grid of ``cells + 1`` knots to ``n_out``."""
    t = (np.arange(n_out) + 0.5) / n_out * cells
    i0 = np.minimum(np.floor(t).astype(np.int64), cells - 1)
    f = t - i0
    return i0, (f * f * (3 - 2 * f)).astype(np.float32)


def _resample(grid: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    # Gather + lerp rather than an interpolation-matrix product: tiny BLAS calls are slow when
    # OpenBLAS threads compete for a busy CPU.
    i0, f = _interp(n_out, grid.shape[axis] - 1)
    a, b = np.take(grid, i0, axis=axis), np.take(grid, i0 + 1, axis=axis)
    f = f[:, None] if axis == 0 and grid.ndim == 2 else f
    return a + (b - a) * f


def _noise2d(rng: np.random.Generator, h: int, w: int, cy: int, cx: int, octaves: int = 3, gain: float = 0.5) -> np.ndarray:
    """Fractal value noise (h, w), zero mean and unit std; ``cy``/``cx`` cells at octave 0."""
    out = np.zeros((h, w), np.float32)
    amp = 1.0
    for o in range(octaves):
        ny, nx = min(cy << o, max(h // 2, 1)), min(cx << o, max(w // 2, 1))
        grid = rng.standard_normal((ny + 1, nx + 1)).astype(np.float32)
        out += amp * _resample(_resample(grid, h, 0), w, 1)
        amp *= gain
    return (out - out.mean()) / (out.std() + 1e-6)


def _noise1d(rng: np.random.Generator, n: int, cells: int, octaves: int = 4, gain: float = 0.5) -> np.ndarray:
    """Fractal value noise (n,) scaled to [0, 1]."""
    out = np.zeros(n, np.float32)
    amp = 1.0
    for o in range(octaves):
        c = min(cells << o, max(n // 2, 1))
        out += amp * _resample(rng.standard_normal(c + 1).astype(np.float32), n, 0)
        amp *= gain
    lo, hi = out.min(), out.max()
    return (out - lo) / (hi - lo + 1e-6)


# --------------------------------------------------------------------------------------------
# Layout


@dataclass
class Layout:
    """A label map plus the geometry the renderer needs for shading."""

    label: np.ndarray  # (S, S) uint8 class ids
    horizon: float
    ground: str
    sun: tuple[float, float, float] | None = None  # x, y, radius
    cloud: np.ndarray | None = None  # cloud density (> 0 inside clouds)
    haze: np.ndarray | None = None  # 0..1 extra haze of far mountain ridges
    snow: np.ndarray | None = None  # bool, snow-capped mountain pixels
    trunk: np.ndarray | None = None  # bool, tree pixels that are trunk
    rock_shade: np.ndarray | None = None  # 0 (top) .. 1 (bottom) inside rocks
    buildings: list[tuple[int, int, int, int, int]] = field(default_factory=list)  # x0, y0, x1, y1, wall


def _box(x0: float, y0: float, x1: float, y1: float, size: int) -> tuple[int, int, int, int] | None:
    bx0, by0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
    bx1, by1 = min(int(np.ceil(x1)), size), min(int(np.ceil(y1)), size)
    return (bx0, by0, bx1, by1) if bx1 > bx0 and by1 > by0 else None


def _place(rng: np.random.Generator, land: np.ndarray, horizon: float, size: int, near: float = 1.3) -> tuple[float, float] | None:
    """A ground point on land; ``near`` > 1 favours far (small) positions, like a real view."""
    for _ in range(20):
        y = horizon + 1 + (size - horizon - 1) * rng.random() ** near
        x = rng.uniform(0, size)
        if land[min(int(y), size - 1), min(int(x), size - 1)]:
            return x, y
    return None


def make_layout(rng: np.random.Generator, size: int) -> Layout:
    s = size
    yy = np.arange(s, dtype=np.float32)[:, None] + 0.5
    xx = np.arange(s, dtype=np.float32)[None, :] + 0.5
    lab = np.full((s, s), SKY, np.uint8)
    horizon = float(rng.uniform(0.38, 0.62) * s)
    rough = _noise2d(rng, s, s, max(s // 16, 2), max(s // 16, 2), octaves=2)

    sun = None
    if rng.random() < 0.5:
        r = float(rng.uniform(0.035, 0.07) * s)
        sx, sy = float(rng.uniform(0.1, 0.9) * s), float(rng.uniform(0.12, 0.8) * horizon)
        lab[(xx - sx) ** 2 + (yy - sy) ** 2 < r * r] = SUN
        sun = (sx, sy, r)

    cloud = np.zeros((s, s), np.float32)
    cover = [0.0, rng.uniform(0.05, 0.15), rng.uniform(0.15, 0.4)][rng.choice(3, p=[0.25, 0.4, 0.35])]
    if cover > 0:
        # Wider than tall, and thinning towards the horizon.
        field_ = _noise2d(rng, s, s, 2, 4, octaves=4) - 1.5 * (yy / horizon) ** 2
        in_sky = (yy < 0.92 * horizon) & np.ones((1, s), bool)
        thr = np.quantile(field_[in_sky], 1 - cover)
        m = in_sky & (field_ > thr)
        lab[m] = CLOUD
        cloud[m] = field_[m] - thr

    haze = np.zeros((s, s), np.float32)
    snow = np.zeros((s, s), bool)
    n_ridges = int(rng.choice(3, p=[0.25, 0.45, 0.3]))
    snowy = rng.random() < 0.45
    for k in range(n_ridges):  # far ridge first
        height = rng.uniform(0.2, 0.55) * horizon * (1 - 0.3 * k)
        prof = _noise1d(rng, s, int(rng.integers(2, 5)), octaves=5, gain=0.55)
        ridge = (horizon - height * (0.2 + 0.8 * prof))[None, :]
        m = yy >= ridge
        lab[m] = MOUNTAIN
        haze[m] = 0.5 if (n_ridges == 2 and k == 0) else 0.0
        snow[m] = False
        if snowy:
            line = ridge + height * rng.uniform(0.15, 0.35) * (0.6 + 0.8 * _noise1d(rng, s, 6, 3)[None, :])
            snow |= m & (yy < line) & (prof[None, :] > 0.45)

    ground = GROUNDS[int(rng.choice(4, p=[0.32, 0.26, 0.26, 0.16]))]
    bump = np.zeros((1, s), np.float32)
    if ground != "coast":  # the sea horizon is straight, land undulates a little
        bump = (0.03 * s * (_noise1d(rng, s, 3, 3) - 0.5))[None, :]
    is_ground = yy >= horizon + bump
    lab[is_ground] = SAND if ground == "desert" else GRASS
    below = s - horizon
    if ground == "coast":
        shore = horizon + below * rng.uniform(0.2, 0.6) + 0.06 * s * (_noise1d(rng, s, 3, 3)[None, :] - 0.5)
        beach = shore + below * rng.uniform(0.08, 0.25) * (0.7 + 0.6 * _noise1d(rng, s, 4, 2)[None, :])
        lab[is_ground & (yy < beach)] = SAND
        lab[is_ground & (yy < shore)] = WATER
    elif ground == "lake":
        cx, cy = rng.uniform(0.2, 0.8) * s, horizon + below * rng.uniform(0.25, 0.65)
        rx = rng.uniform(0.2, 0.45) * s
        ry = min(rx * rng.uniform(0.2, 0.4), 0.45 * below)
        f = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 + 0.3 * rough
        if rng.random() < 0.6:
            lab[is_ground & (f < 1.4)] = SAND
        lab[is_ground & (f < 1.0)] = WATER
    elif ground == "meadow" and rng.random() < 0.3:
        lab[is_ground & (_noise2d(rng, s, s, 3, 3, octaves=3) > 1.3)] = SAND  # bare patches

    land = is_ground & (lab != WATER)
    depth = np.clip((yy - horizon) / max(below, 1.0), 0.0, 1.0)  # 0 at the horizon, 1 at the bottom

    rock_shade = np.zeros((s, s), np.float32)
    for _ in range(min(int(rng.poisson(2.0 if ground == "desert" else 0.8)), 6)):
        at = _place(rng, land, horizon, s)
        if at is None:
            continue
        x0, y0 = at
        d = float(depth[min(int(y0), s - 1), 0])
        ry = s * (0.012 + 0.06 * d) * rng.uniform(0.6, 1.4)
        rx = ry * rng.uniform(1.0, 1.8)
        b = _box(x0 - 1.3 * rx, y0 - 1.3 * ry, x0 + 1.3 * rx, y0 + 0.3 * ry, s)
        if b is None:
            continue
        sl = (slice(b[1], b[3]), slice(b[0], b[2]))
        ly, lx = yy[sl[0]], xx[:, sl[1]]
        m = (((lx - x0) / rx) ** 2 + ((ly - y0) / ry) ** 2 < 1 + 0.35 * rough[sl]) & (ly <= y0 + 0.3 * ry)
        lab[sl][m] = ROCK
        rock_shade[sl][m] = np.clip((ly - (y0 - ry)) / (1.3 * ry), 0, 1).repeat(m.shape[1], 1)[m]

    buildings: list[tuple[int, int, int, int, int]] = []
    if rng.random() < (0.1 if ground == "desert" else 0.3):
        base_y = horizon + below * rng.uniform(0.03, 0.35)
        x = rng.uniform(0.05, 0.6) * s
        for _ in range(int(rng.integers(1, 5))):
            d = float(np.clip((base_y - horizon) / max(below, 1.0), 0, 1))
            w = s * rng.uniform(0.06, 0.14) * (0.6 + d)
            h = w * rng.uniform(0.7, 2.2)
            by = base_y + rng.uniform(-0.02, 0.02) * s
            bx = min(int(x + w / 2), s - 1)
            if 0 <= int(by) < s and land[int(by), bx]:
                b = _box(x, by - h, x + w, by, s)
                if b is not None:
                    lab[b[1]:b[3], b[0]:b[2]] = BUILDING
                    buildings.append((*b, int(rng.integers(3))))
                    if rng.random() < 0.5:  # pitched roof
                        rh = 0.35 * w
                        rb = _box(x, by - h - rh, x + w, by - h, s)
                        if rb is not None:
                            sl = (slice(rb[1], rb[3]), slice(rb[0], rb[2]))
                            rel = (by - h - yy[sl[0]]) / rh  # 0 at the eaves, 1 at the top
                            lab[sl][np.abs(xx[:, sl[1]] - (x + w / 2)) < (w / 2) * (1 - rel)] = BUILDING
            x += w * rng.uniform(1.05, 1.6)

    trunk = np.zeros((s, s), bool)
    p_trees = {"meadow": 0.85, "lake": 0.75, "coast": 0.45, "desert": 0.2}[ground]
    if rng.random() < p_trees:
        conifer_share = rng.random()
        spots = [_place(rng, land, horizon, s, near=1.6) for _ in range(int(rng.integers(1, 11)))]
        for x0, y0 in sorted((p for p in spots if p is not None), key=lambda p: p[1]):
            d = float(depth[min(int(y0), s - 1), 0])
            h = s * (0.08 + 0.4 * d) * rng.uniform(0.7, 1.3)
            b = _box(x0 - 0.45 * h, y0 - 1.05 * h, x0 + 0.45 * h, y0 + 1, s)
            if b is None:
                continue
            sl = (slice(b[1], b[3]), slice(b[0], b[2]))
            ly, lx = yy[sl[0]], xx[:, sl[1]]
            tw = max(0.035 * h, 0.6)
            if rng.random() < conifer_share:
                top, bottom = y0 - h, y0 - 0.12 * h
                half = 0.26 * h * (ly - top) / (bottom - top)
                crown = (ly >= top) & (ly <= bottom) & (np.abs(lx - x0) < half * (1 + 0.25 * rough[sl]))
                stem = (ly > bottom) & (ly <= y0) & (np.abs(lx - x0) < tw)
            else:
                cy, rx, ry = y0 - 0.64 * h, 0.3 * h * rng.uniform(0.8, 1.2), 0.36 * h
                crown = ((lx - x0) / rx) ** 2 + ((ly - cy) / ry) ** 2 < 1 + 0.4 * rough[sl]
                stem = (ly > cy) & (ly <= y0) & (np.abs(lx - x0) < 1.4 * tw)
            lab[sl][crown | stem] = TREE
            trunk[sl][crown] = False
            trunk[sl][stem & ~crown] = True

    return Layout(lab, horizon, ground, sun, cloud, haze, snow, trunk, rock_shade, buildings)


# --------------------------------------------------------------------------------------------
# Rendering


def _mix(a: np.ndarray, b: np.ndarray, t) -> np.ndarray:
    return a + (b - a) * t


def render(layout: Layout, rng: np.random.Generator, style: str | None = None) -> np.ndarray:
    """Paint ``layout`` as an (S, S, 3) uint8 image; ``style`` is drawn from STYLES if None."""
    if style is None:
        style = STYLES[int(rng.choice(len(STYLES), p=STYLE_PROBS))]
    light = _STYLE_LIGHT[style]
    # Per-class colour jitter: mostly brightness, a little hue.
    colors = {
        k: np.array(v, np.float32)
        * np.exp(rng.normal(0.0, 0.05) + rng.normal(0.0, 0.03, size=np.shape(v))).astype(np.float32)
        for k, v in _STYLE_COLORS[style].items()
    }
    lab = layout.label
    s = lab.shape[0]
    yy = np.arange(s, dtype=np.float32)[:, None] + 0.5
    xx = np.arange(s, dtype=np.float32)[None, :] + 0.5
    horizon = layout.horizon
    depth = np.clip((yy - horizon) / max(s - horizon, 1.0), 0.0, 1.0)
    fine = _noise2d(rng, s, s, max(s // 8, 2), max(s // 8, 2), octaves=2)
    mid = _noise2d(rng, s, s, 4, 4, octaves=3)

    # Sky: vertical gradient, brighter around the sun.
    t = np.clip(yy / horizon, 0.0, 1.0)[..., None] ** 0.9
    img = np.broadcast_to(_mix(colors["sky_top"], colors["sky_bottom"], t), (s, s, 3)).copy()
    sky_rows = img[:, 0].copy()
    if layout.sun is not None:
        sx, sy, r = layout.sun
        glow = light["glow"] * np.exp(-((xx - sx) ** 2 + (yy - sy) ** 2) / (2 * (4 * r) ** 2))
        img = _mix(img, colors["sun"], glow[..., None])
        img[lab == SUN] = colors["sun"]

    m = lab == CLOUD
    if m.any():
        dens = np.clip(0.35 + 2.5 * layout.cloud + 0.15 * fine, 0.0, 1.0)[m][:, None]
        img[m] = _mix(colors["cloud_shadow"], colors["cloud"], dens)

    m = lab == MOUNTAIN
    if m.any():
        facets = _noise2d(rng, s, s, 3, 8, octaves=4)
        col = colors["mountain"] * (0.85 + 0.12 * facets[m] + 0.05 * fine[m])[:, None]
        col = np.where(layout.snow[m][:, None], colors["snow"] * (0.92 + 0.05 * fine[m])[:, None], col)
        img[m] = _mix(col, colors["haze"], (light["haze"] + layout.haze[m])[:, None] * 0.45)

    m = lab == WATER
    if m.any():
        mirror = np.clip(2 * horizon - yy[:, 0], 0, max(horizon - 1, 0)).astype(np.int64)
        refl = np.broadcast_to(sky_rows[mirror][:, None, :], (s, s, 3))[m]
        ripple = _noise2d(rng, s, s, max(s // 6, 2), 2, octaves=2)
        col = _mix(colors["water"], refl, light["reflect"]) * (1 + 0.1 * ripple[m])[:, None]
        img[m] = col * (1 - 0.25 * depth[m.nonzero()[0], 0])[:, None]

    m = lab == SAND
    if m.any():
        dunes = np.sin(yy * (0.9 + 0.3 * mid) * 40.0 / s * np.pi + 2 * mid)
        img[m] = colors["sand"] * (0.92 + 0.05 * fine[m] + 0.04 * dunes[m])[:, None]

    m = lab == GRASS
    if m.any():
        shade = (0.86 + 0.1 * mid + 0.08 * fine) * (1.05 - 0.25 * depth)
        img[m] = colors["grass"] * shade[m][:, None]

    m = lab == TREE
    if m.any():
        leaves = np.tanh(1.5 * _noise2d(rng, s, s, max(s // 6, 2), max(s // 6, 2), octaves=2))
        col = colors["tree"] * (0.75 + 0.25 * leaves[m])[:, None]
        img[m] = np.where(layout.trunk[m][:, None], colors["trunk"], col)

    m = lab == ROCK
    if m.any():
        img[m] = colors["rock"] * (0.7 + 0.15 * fine[m] + 0.3 * (1 - layout.rock_shade[m]))[:, None]

    for x0, y0, x1, y1, wall in layout.buildings:
        sl = (slice(y0, y1), slice(x0, x1))
        bm = lab[sl] == BUILDING
        part = img[sl]
        part[bm] = colors["walls"][wall] * (0.9 + 0.05 * fine[sl][bm])[:, None]
        # A grid of windows inside the walls, scaled with the building.
        step = max((x1 - x0) / 4.0, 2.0)
        wy = (yy[sl[0]] - y0) % step < step * 0.5
        wx = (xx[:, sl[1]] - x0) % step < step * 0.5
        inner = (xx[:, sl[1]] > x0 + 0.5 * step) & (xx[:, sl[1]] < x1 - 0.4 * step) & (yy[sl[0]] > y0 + 0.5 * step)
        win = bm & wy & wx & inner
        part[win] = colors["window"]

    # Haze over far land, a global exposure, and a little grain.
    land = lab >= WATER
    far = (1 - depth) ** 4 * light["haze"] * 0.5
    img[land] = _mix(img[land], colors["haze"], np.broadcast_to(far, (s, s))[land][:, None])
    if style == "overcast":
        grey = img.mean(axis=2, keepdims=True)
        img = _mix(grey, img, 0.7)
    img *= float(np.exp(rng.normal(0.0, 0.08)))
    img += rng.normal(0.0, 0.012, size=(s, s, 1)).astype(np.float32)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def sample(index: int, size: int, seed: int = 0, style: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(label (S, S) uint8, image (S, S, 3) uint8) of sample ``index``; depends only on the seed."""
    rng = np.random.default_rng([seed, index])
    layout = make_layout(rng, size)
    return layout.label, render(layout, rng, style)


def variants(index: int, size: int, seed: int = 0, n: int = 4) -> tuple[np.ndarray, list[np.ndarray]]:
    """One layout and ``n`` different renderings of it (styles and colour jitter vary)."""
    layout = make_layout(np.random.default_rng([seed, index]), size)
    return layout.label, [render(layout, np.random.default_rng([seed, index, 1 + k])) for k in range(n)]


# --------------------------------------------------------------------------------------------
# Writing to disk


def _meta(num: int, size: int, seed: int, val_fraction: float) -> dict:
    num_val = int(round(num * val_fraction)) if num > 1 else 0
    if val_fraction > 0 and num > 1:
        num_val = min(max(num_val, 1), num - 1)
    return {
        "name": "landscapes",
        "version": VERSION,
        "num": num,
        "size": size,
        "seed": seed,
        "val_fraction": val_fraction,
        "num_train": num - num_val,
        "num_val": num_val,
        "label_nc": LABEL_NC,
        "classes": list(CLASS_NAMES),
    }


def generate(out_dir: str | Path, num: int, size: int, seed: int = 0, val_fraction: float = 0.1) -> dict:
    """Write ``num`` samples of ``size`` px into ``out_dir`` in the custom layout; returns the meta.

    Samples 0..num_train-1 go to ``train``, the rest to ``val``. The meta JSON is written last,
    so a directory with it is complete.
    """
    if num < 1 or size < 16:
        raise DataError(f"landscapes needs num >= 1 and size >= 16, got num={num}, size={size}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    out = Path(out_dir)
    meta = _meta(num, size, seed, val_fraction)
    for split in ("train", "val"):
        for sub in ("images", "labels"):
            (out / split / sub).mkdir(parents=True, exist_ok=True)
    for i in range(num):
        label, image = sample(i, size, seed)
        split = "train" if i < meta["num_train"] else "val"
        Image.fromarray(label).save(out / split / "labels" / f"{i:06d}.png", compress_level=1)
        Image.fromarray(image).save(out / split / "images" / f"{i:06d}.jpg", quality=95)
    write_palette(out / "palette.json", CLASS_NAMES, PALETTE)
    (out / META_NAME).write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def _read_meta(path: Path) -> dict | None:
    try:
        return json.loads((path / META_NAME).read_text())
    except (OSError, ValueError):
        return None


def _work_dir_prefix(target: Path, kind: str, host: str) -> str:
    """Name prefix of a generation's temporary directories on ``host`` ("tmp": the set being
    written, "old": the set it replaces); the generating process's pid and "-" follow it."""
    return f".{target.name}.{kind}-{host}-"


def _remove_stale_work_dirs(target: Path) -> None:
    """Remove the temporary directories of generations on this host whose process is gone
    (killed before it could clean up); those of running processes are left alone."""
    host = socket.gethostname()
    for kind in ("tmp", "old"):
        prefix = _work_dir_prefix(target, kind, host)
        for path in target.parent.glob(glob.escape(prefix) + "*"):
            pid = path.name[len(prefix):].split("-", 1)[0]
            if not pid.isdigit():
                continue
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                shutil.rmtree(path, ignore_errors=True)
            except OSError:  # alive, someone else's
                pass


def ensure_landscapes(root: str | Path, num: int, size: int, seed: int = 0, val_fraction: float = 0.1) -> Path:
    """The landscapes data set in directory ``root``, generated there on first use; returns it.

    Reused when its meta file matches the parameters; a landscapes set made with other
    parameters is replaced; any other non-empty directory is left alone (DataError). Generation
    goes to a temporary sibling directory renamed into place when complete, so an interrupted
    run never leaves a half-written set that would be reused, and concurrent runs do not mix.
    """
    target = Path(root).expanduser()
    want = _meta(num, size, seed, val_fraction)
    if _read_meta(target) == want:
        return target
    if target.exists():
        old = _read_meta(target)
        if not target.is_dir() or (any(target.iterdir()) and (old is None or old.get("name") != "landscapes")):
            raise DataError(
                f"{target} exists and is not a landscapes data set; choose another directory for the "
                "generated data"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_work_dirs(target)
    host, owner = socket.gethostname(), f"{os.getpid()}-"
    tmp = Path(tempfile.mkdtemp(prefix=_work_dir_prefix(target, "tmp", host) + owner, dir=target.parent))
    trash = None
    try:
        generate(tmp, num, size, seed, val_fraction)
        if target.exists() and _read_meta(target) != want:
            # an empty directory or a set with other parameters: move it aside, then replace it
            trash = Path(tempfile.mkdtemp(prefix=_work_dir_prefix(target, "old", host) + owner, dir=target.parent))
            os.rename(target, trash / "old")
        try:
            os.rename(tmp, target)
        except OSError:
            if _read_meta(target) != want:  # not a concurrent run that finished first
                raise
    finally:
        for leftover in (tmp, trash):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
    return target
