"""Photographing the target: how the Cityscapes stand-in departs from a clean rendering (noise
textures per material, clouds, cast shadows, the ego vehicle's hood, and a camera's exposure,
white balance, gamma, vignetting, lens blur and sensor noise)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from cicld.data.toy.scene import _Scene
from cicld.data.toy.world import (  # the label codes
    BICYCLE,
    BUILDING,
    BUS,
    CAR,
    EGO,
    FENCE,
    LIGHT,
    MOTORCYCLE,
    PERSON,
    POLE,
    RIDER,
    ROAD,
    SIDEWALK,
    SIGN,
    SKY,
    STATIC,
    TERRAIN,
    TRUCK,
    UNLABELED,
    VEGETATION,
    WALL,
)


@dataclass(frozen=True)
class _Photo:
    """How strongly the target's camera departs from a clean rendering (ranges uniform)."""

    texture: float = 1.0  # scales the per-class texture amplitudes _TEX
    shadows: float = 1.0  # strength of cast shadows
    clouds: float = 1.0
    gain: tuple[float, float] = (0.78, 1.0)  # exposure of everything below the sky
    cast: tuple[float, float, float] = (1.06, 1.0, 0.9)  # white balance (warm)
    gamma: tuple[float, float] = (0.85, 1.1)
    vignetting: tuple[float, float] = (0.2, 0.35)
    blur: int = 1  # [1, 2, 1] passes at 256 px width
    noise: tuple[float, float] = (0.015, 0.03)  # sensor noise sigma, image in [0, 1]


_CAMERA = _Photo()

# Per-class texture amplitudes of the photographed domain: fine grain, medium blotches, coarse.
_TEX = np.zeros((3, 256), np.float32)
for _cls, (_fine, _medium, _coarse) in {
    ROAD: (0.10, 0.08, 0.10),
    SIDEWALK: (0.10, 0.10, 0.06),
    BUILDING: (0.07, 0.06, 0.10),
    WALL: (0.10, 0.12, 0.06),
    FENCE: (0.12, 0.10, 0.05),
    POLE: (0.05, 0.05, 0.0),
    LIGHT: (0.03, 0.0, 0.0),
    SIGN: (0.03, 0.03, 0.0),
    VEGETATION: (0.35, 0.30, 0.15),
    TERRAIN: (0.25, 0.25, 0.12),
    SKY: (0.01, 0.03, 0.06),
    PERSON: (0.08, 0.06, 0.0),
    RIDER: (0.08, 0.06, 0.0),
    CAR: (0.04, 0.04, 0.03),
    TRUCK: (0.05, 0.05, 0.04),
    BUS: (0.05, 0.05, 0.04),
    MOTORCYCLE: (0.05, 0.03, 0.0),
    BICYCLE: (0.05, 0.03, 0.0),
    STATIC: (0.08, 0.06, 0.0),
    EGO: (0.02, 0.02, 0.05),
}.items():
    _TEX[:, _cls] = (_fine, _medium, _coarse)


def _smooth_noise(rng: np.random.Generator, width: int, height: int, cell: float) -> np.ndarray:
    """Zero-mean, unit-ish value noise with features about ``cell`` pixels wide (bicubic)."""
    gw, gh = max(2, int(round(width / cell)) + 1), max(2, int(round(height / cell)) + 1)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.BICUBIC), np.float32)


def _blur(img: np.ndarray, passes: int) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur, ``passes`` times (edge pixels replicated)."""
    for _ in range(passes):
        padded = np.pad(img, ((1, 1), (0, 0), (0, 0)), mode="edge")
        img = 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]
        padded = np.pad(img, ((0, 0), (1, 1), (0, 0)), mode="edge")
        img = 0.25 * padded[:, :-2] + 0.5 * padded[:, 1:-1] + 0.25 * padded[:, 2:]
    return img


def _photograph(scene: _Scene, photo: _Photo | None = None) -> None:
    """Turn the flat rendering of a target frame into something like a street photograph."""
    p = photo or _CAMERA
    cv, rng = scene.cv, scene.rng
    h, w = cv.h, cv.w
    label = cv.label
    fine = rng.standard_normal((h, w)).astype(np.float32)
    medium = _smooth_noise(rng, w, h, 3.0)
    coarse = _smooth_noise(rng, w, h, 16.0)
    texture = 1.0 + p.texture * (_TEX[0][label] * fine + _TEX[1][label] * medium + _TEX[2][label] * coarse)
    img = cv.img * texture[..., None]
    # foliage changes hue, not only brightness; joints between the paving stones
    leaves = (label == VEGETATION) | (label == TERRAIN)
    img[leaves] *= (1.0 + p.texture * 0.15 * np.stack([medium, -medium * 0.3, medium], -1))[leaves]
    r0, ground_x, ground_z = scene.ground
    tiles = (label[r0:] == SIDEWALK) & (np.mod(ground_z, 0.6) < 0.06)
    img[r0:][tiles] *= 1.0 - 0.2 * p.texture
    # clouds in the sky
    clouds = np.clip(_smooth_noise(rng, w, h, 24.0) * 0.6 + rng.uniform(-0.3, 0.3), 0.0, 1.0) * 0.5 * p.clouds
    sky = label == SKY
    img[sky] = img[sky] * (1 - clouds[sky, None]) + 0.95 * clouds[sky, None]
    # sunlight: one side of the street lies in the shadow of its buildings (the edge is a line
    # through the vanishing point); trees and clouds add soft patches everywhere
    shadow = np.clip(_smooth_noise(rng, w, h, 28.0) * 1.5 + rng.uniform(-2.0, -0.8), 0.0, 1.0) * 0.4
    if rng.random() < 0.7:
        edge = rng.uniform(-scene.road_l - scene.walk_l, scene.road_r + scene.walk_r)
        away = 1.0 if rng.random() < 0.5 else -1.0
        shadow[r0:] = np.maximum(shadow[r0:], (away * (ground_x - edge) > 0) * rng.uniform(0.35, 0.55))
    img *= (1.0 - p.shadows * shadow * (~sky))[..., None]
    # ego vehicle hood and the unlabelled strip below it
    hood = rng.uniform(0.06, 0.1) * h
    bulge = hood * 0.5 * (1 - ((cv.cols - w / 2) / (w / 2)) ** 2)
    top = h - hood * 0.5 - bulge
    rows = cv.rows[:, None]
    hood_mask = rows >= top[None, :]
    label[hood_mask] = EGO
    img[hood_mask] = (
        np.array((0.1, 0.1, 0.12), np.float32) + 0.25 * np.clip((top[None, :] + 3 - rows) / 3, 0, 1)[hood_mask][:, None]
    )
    cv.inst[hood_mask] = 0
    bottom = rows >= h - max(1.0, 0.015 * h)
    label[np.broadcast_to(bottom, label.shape)] = UNLABELED
    # camera: exposure, white balance, gamma, vignetting, lens blur, sensor noise
    cast = np.asarray(p.cast, np.float32) * rng.uniform(0.95, 1.05, 3).astype(np.float32)
    # the camera exposes for the bright sky, so the street comes out darker than the renderer's
    img = img * cast
    img[~sky] *= rng.uniform(*p.gain)
    img = np.clip(img, 0.0, 1.0) ** rng.uniform(*p.gamma)
    radius = ((cv.cols[None, :] - w / 2) / (w / 2)) ** 2 + ((cv.rows[:, None] - h / 2) / (h / 2)) ** 2
    img *= (1.0 - rng.uniform(*p.vignetting) * radius / 2)[..., None]
    img = _blur(img, passes=p.blur * max(1, round(w / 256)))
    img += rng.normal(0.0, rng.uniform(*p.noise), img.shape).astype(np.float32)
    cv.img = img
