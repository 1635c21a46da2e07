"""A procedural toy domain pair, written in the real GTA5 / SYNTHIA / Cityscapes on-disk formats.

cicld adapts a segmenter from a labelled synthetic domain to an unlabelled real one. Users have
GTA5, SYNTHIA and Cityscapes; a test suite, a CPU-only demo and a new user's first run do not.
This module renders a small street world twice:

- the **source** ("rendered", the GTA5/SYNTHIA stand-in): flat shading, clean aliased edges,
  saturated uniform colours per class with per-instance variation;
- the **target** ("photographed", the Cityscapes stand-in): other class colours (greyer road,
  plaster-toned buildings, olive vegetation, overcast sky), noise textures per material, cast
  shadows, a warm colour cast, darker exposure, vignetting, lens blur and sensor noise, an ego
  vehicle hood at the bottom, and other scene statistics (lower horizon and camera, longer focal
  length, narrower sidewalks, more persons and bicycles, more vegetation, fewer buses and trucks).

Both share one street grammar (sky, buildings in perspective with windows, road with lane
markings converging to a vanishing point, sidewalks, terrain, trees, poles with signs and
traffic lights, cars, buses, trucks, persons, riders on bicycles and motorcycles, walls and
fences), so what a model learns on one domain transfers in part to the other: adaptation has a
real gap to close. ``benchmarks/toy_domain_gap.py`` measures it; ``docs/toy.md`` has the numbers.

Layout under ``root`` (``NNNNN`` and ``NNNNNNN`` count from 0)::

    root/toy.json                                   generation parameters, class pixel counts
    root/gta5/images/NNNNN.png                      source image, 8-bit RGB
    root/gta5/labels/NNNNN.png                      palette ("P") PNG, index = Cityscapes labelId
    root/synthia/RGB/NNNNNNN.png                    (with "synthia" in source_formats) same scenes
    root/synthia/GT/LABELS/NNNNNNN.png              16-bit RGB PNG: R = SYNTHIA class id,
                                                    G = instance id (things; 0 for stuff), B = 0
    root/cityscapes/leftImg8bit/{train,val}/<city>/<city>_<seq:06d>_000019_leftImg8bit.png
    root/cityscapes/gtFine/{train,val}/<city>/<city>_<seq:06d>_000019_gtFine_labelIds.png
                                                    8-bit "L" PNG of Cityscapes labelIds

Target-train frames alternate between the cities ``toyburg`` and ``toyville`` (frame ``i`` is in
``TRAIN_CITIES[i % 2]`` with ``seq = i // 2``); target-val frames are all in ``toyhaven``, a city
of its own, as Cityscapes val is. Target train has labels too, for the oracle (target-supervised)
upper bound only: adaptation must never read them.

Labels hold Cityscapes labelIds, including some ids that are not evaluated and become 255 once
mapped to trainIds: ``static`` (4) for bins and bollards in both domains, ``ego vehicle`` (1) for
the hood and ``unlabeled`` (0) for the bottom rows below it in the target, as in real Cityscapes.
The class ``train`` is never drawn (as good as absent from Cityscapes val as well).

Every frame is rendered from its own seed, ``SeedSequence([seed, domain, split, index])``, so the
files are byte-identical for the same ``seed`` and ``size`` whatever ``workers`` is, and frame
``i`` does not depend on how many frames are asked for. The SYNTHIA copy of source frame ``i``
is the same scene (same RGB bytes), with its label in SYNTHIA's format.

Re-running with the same parameters finds ``toy.json`` and every file, and does nothing. A run
that was interrupted is resumed: ``toy.json`` is written first (``"complete": false``), files are
written atomically, and the frames whose files all exist are skipped. A root whose ``toy.json``
records other parameters raises :class:`~cicld.errors.DataError` (``overwrite=True`` deletes the
toy's own folders and regenerates); a root that holds ``gta5/``, ``synthia/`` or ``cityscapes/``
but no ``toy.json`` is refused outright, so a real dataset is never written into or deleted.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cicld.data.labels import (
    CLASSES,
    IGNORE_INDEX,
    NUM_CLASSES,
    SYNTHIA_ID_TO_TRAINID,
    TRAINID_TO_LABELID,
    cityscapes_id_palette,
    cityscapes_ids_to_train_ids,
    colorize,
    synthia_ids_to_train_ids,
)
from cicld.data.pngio import read_image, read_png, write_image, write_png16
from cicld.errors import DataError
from cicld.files import atomic_write

#: Bumped whenever the rendering changes, so a root made by an older generator is recognised.
TOY_VERSION = 1
MANIFEST = "toy.json"
DEFAULT_SIZE = (256, 128)
DEFAULT_NUM_SOURCE = 400
DEFAULT_NUM_TARGET_TRAIN = 400
DEFAULT_NUM_TARGET_VAL = 100
SOURCE_FORMATS = ("gta5", "synthia")
TRAIN_CITIES = ("toyburg", "toyville")
VAL_CITY = "toyhaven"
CITYSCAPES_FRAME = 19  # Cityscapes labels the 20th frame of every 30-frame snippet

# trainIds (the 19 evaluated classes) and the internal codes of non-evaluated Cityscapes labels.
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = range(11)
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(11, 19)
STATIC, EGO, UNLABELED = 19, 20, 21
_EXTRA_LABEL_IDS = {STATIC: 4, EGO: 1, UNLABELED: 0}

_CODE_TO_LABELID = np.zeros(256, np.uint8)
_CODE_TO_LABELID[:NUM_CLASSES] = TRAINID_TO_LABELID
for _code, _label_id in _EXTRA_LABEL_IDS.items():
    _CODE_TO_LABELID[_code] = _label_id
_TRAINID_TO_SYNTHIA = {train_id: synthia_id for synthia_id, train_id in SYNTHIA_ID_TO_TRAINID.items()}

_DOMAINS = {"source": 0, "target": 1}
_SPLITS = {"train": 0, "val": 1}


# --------------------------------------------------------------------------------------------
# The two worlds: scene statistics and colours
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _World:
    """Scene statistics and palette of one domain (ranges are uniform (low, high))."""

    focal: tuple[float, float]  # focal length / image width
    horizon: tuple[float, float]  # vanishing-point row / image height
    cam_height: tuple[float, float]  # metres
    road_left: tuple[float, float]  # road extent left of the camera, metres
    road_right: tuple[float, float]
    sidewalk: tuple[float, float]
    setback: tuple[float, float]
    side_mix: tuple[float, float, float]  # building, vegetation, open
    building_height: tuple[float, float]
    lawn: float  # probability that the strip in front of a building is grass (terrain), not paved
    verge: float  # probability of a grass verge between the kerb and the sidewalk
    tree_lined: float  # probability that a side of the street has trees on the sidewalk
    intersection: float
    parked_row: float  # probability of a row of parked cars on a side
    moving_cars: float  # Poisson means from here on
    persons: float
    riders: float
    parked_bicycles: float
    buses: float
    trucks: float
    statics: float
    palette: dict[str, tuple[tuple[int, int, int], ...]]
    jitter: float  # per-instance relative colour jitter
    photo: bool  # photographic rendering (textures, lighting, blur, noise)


_SOURCE = _World(
    focal=(0.75, 0.95),
    horizon=(0.42, 0.52),
    cam_height=(1.4, 2.0),
    road_left=(4.0, 9.0),
    road_right=(2.5, 6.0),
    sidewalk=(2.5, 5.0),
    setback=(0.0, 2.0),
    side_mix=(0.55, 0.2, 0.25),
    building_height=(5.0, 22.0),
    lawn=0.2,
    verge=0.15,
    tree_lined=0.3,
    intersection=0.35,
    parked_row=0.55,
    moving_cars=2.5,
    persons=2.0,
    riders=0.5,
    parked_bicycles=0.2,
    buses=0.45,
    trucks=0.45,
    statics=1.0,
    palette={
        "road": ((72, 66, 84), (84, 78, 92), (64, 62, 74)),
        "marking": ((235, 235, 235), (240, 220, 60)),
        "sidewalk": ((196, 166, 176), (180, 176, 160), (206, 186, 160)),
        "building": ((206, 142, 92), (226, 186, 122), (186, 96, 84), (150, 124, 176), (232, 206, 156), (160, 170, 120)),
        "window": ((60, 90, 150), (40, 60, 110), (120, 170, 220)),
        "wall": ((206, 204, 180), (190, 170, 150)),
        "fence": ((176, 122, 76), (150, 150, 170)),
        "pole": ((126, 126, 140), (100, 100, 110)),
        "light": ((34, 34, 34), (200, 170, 20)),
        "lamp": ((255, 40, 30), (255, 200, 0), (40, 255, 90)),
        "sign": ((230, 30, 30), (30, 80, 220), (255, 210, 0), (250, 250, 250)),
        "vegetation": ((56, 172, 48), (36, 140, 40), (92, 184, 60)),
        "trunk": ((110, 70, 40),),
        "terrain": ((164, 214, 92), (190, 200, 80)),
        "sky_top": ((60, 130, 240), (90, 150, 250), (150, 164, 186)),  # clear, clear, overcast
        "sky_horizon": ((170, 210, 255), (200, 225, 255), (206, 212, 222)),
        "skin": ((240, 190, 150), (200, 140, 100), (120, 80, 50)),
        "clothes": ((220, 40, 40), (40, 60, 200), (240, 200, 30), (30, 160, 60), (240, 240, 240), (30, 30, 30), (160, 40, 160)),
        "car": ((210, 30, 30), (30, 70, 210), (240, 240, 240), (20, 20, 24), (240, 200, 20), (40, 160, 60), (170, 170, 180)),
        "glass": ((40, 50, 70),),
        "bus": ((240, 180, 30), (210, 40, 40), (40, 100, 210)),
        "truck": ((245, 245, 245), (210, 70, 40), (60, 120, 200)),
        "bike": ((220, 30, 30), (30, 30, 200), (30, 30, 30), (240, 240, 240)),
        "static": ((40, 110, 60), (90, 90, 96)),
        "tyre": ((20, 20, 20),),
    },
    jitter=0.1,
    photo=False,
)

_TARGET = _World(
    focal=(0.95, 1.15),
    horizon=(0.36, 0.45),
    cam_height=(1.1, 1.45),
    road_left=(3.5, 8.0),
    road_right=(2.0, 5.0),
    sidewalk=(1.8, 3.8),
    setback=(0.0, 3.0),
    side_mix=(0.55, 0.3, 0.15),
    building_height=(8.0, 24.0),
    lawn=0.45,
    verge=0.3,
    tree_lined=0.5,
    intersection=0.3,
    parked_row=0.6,
    moving_cars=1.6,
    persons=5.0,
    riders=0.9,
    parked_bicycles=0.8,
    buses=0.12,
    trucks=0.25,
    statics=1.5,
    palette={
        "road": ((112, 112, 110), (100, 102, 104), (124, 120, 116)),
        "marking": ((200, 200, 196),),
        "sidewalk": ((150, 144, 138), (168, 160, 150), (136, 136, 140)),
        "building": ((150, 146, 140), (180, 172, 160), (120, 112, 104), (196, 190, 180), (140, 120, 100), (110, 114, 120)),
        "window": ((50, 54, 60), (80, 90, 96), (30, 32, 36)),
        "wall": ((150, 146, 136), (120, 118, 112)),
        "fence": ((110, 112, 108), (130, 110, 90)),
        "pole": ((80, 82, 80), (110, 110, 104)),
        "light": ((30, 30, 28),),
        "lamp": ((220, 60, 40), (230, 170, 40), (80, 210, 130)),
        "sign": ((190, 40, 40), (40, 80, 160), (210, 180, 40), (220, 220, 215)),
        "vegetation": ((70, 86, 44), (54, 70, 36), (88, 98, 56)),
        "trunk": ((70, 58, 46),),
        "terrain": ((128, 130, 80), (146, 136, 92)),
        "sky_top": ((150, 184, 232), (170, 196, 236)),
        "sky_horizon": ((226, 234, 244), (214, 226, 240)),
        "skin": ((200, 160, 130), (160, 120, 90), (100, 70, 50)),
        "clothes": ((30, 30, 34), (60, 60, 70), (90, 70, 50), (120, 120, 126), (40, 50, 80), (170, 50, 50), (210, 210, 206), (60, 110, 160)),
        "car": ((30, 30, 32), (180, 180, 184), (220, 220, 220), (60, 70, 90), (110, 110, 114), (120, 30, 30), (40, 60, 50)),
        "glass": ((30, 34, 40),),
        "bus": ((225, 225, 220), (60, 100, 150), (200, 190, 60)),
        "truck": ((200, 200, 196), (150, 40, 40), (70, 90, 110)),
        "bike": ((30, 30, 30), (140, 140, 140), (100, 30, 30)),
        "static": ((40, 60, 46), (100, 100, 100)),
        "tyre": ((22, 22, 22),),
    },
    jitter=0.12,
    photo=True,
)

_WORLDS = {"source": _SOURCE, "target": _TARGET}


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
    ROAD: (0.10, 0.08, 0.10), SIDEWALK: (0.10, 0.10, 0.06), BUILDING: (0.07, 0.06, 0.10), WALL: (0.10, 0.12, 0.06),
    FENCE: (0.12, 0.10, 0.05), POLE: (0.05, 0.05, 0.0), LIGHT: (0.03, 0.0, 0.0), SIGN: (0.03, 0.03, 0.0),
    VEGETATION: (0.35, 0.30, 0.15), TERRAIN: (0.25, 0.25, 0.12), SKY: (0.01, 0.03, 0.06), PERSON: (0.08, 0.06, 0.0),
    RIDER: (0.08, 0.06, 0.0), CAR: (0.04, 0.04, 0.03), TRUCK: (0.05, 0.05, 0.04), BUS: (0.05, 0.05, 0.04),
    MOTORCYCLE: (0.05, 0.03, 0.0), BICYCLE: (0.05, 0.03, 0.0), STATIC: (0.08, 0.06, 0.0), EGO: (0.02, 0.02, 0.05),
}.items():  # fmt: skip
    _TEX[:, _cls] = (_fine, _medium, _coarse)


# --------------------------------------------------------------------------------------------
# Rasterising in perspective
# --------------------------------------------------------------------------------------------

Region = tuple  # (row0, col0, mask) of a primitive inside the image


class _Canvas:
    """Label codes, instance ids and linear RGB of one frame, and a pinhole camera to draw with.

    The camera looks down +Z along the street, X to the right, Y up, ground at Y = 0; every
    primitive is rasterised only inside its bounding box, by half-planes or quadrics.
    """

    def __init__(self, width: int, height: int, focal: float, vpx: float, horizon: float, cam_height: float):
        self.w, self.h = width, height
        self.f, self.vpx, self.yh, self.cam = focal, vpx, horizon, cam_height
        self.label = np.full((height, width), SKY, np.uint8)
        self.inst = np.zeros((height, width), np.uint16)
        self.img = np.zeros((height, width, 3), np.float32)
        self.cols = np.arange(width, dtype=np.float32) + 0.5
        self.rows = np.arange(height, dtype=np.float32) + 0.5
        self.instances = 0

    # projection ---------------------------------------------------------------------------
    def px(self, x: float, z: float) -> float:
        return self.vpx + self.f * x / z

    def py(self, y: float, z: float) -> float:
        return self.yh + self.f * (self.cam - y) / z

    def new_instance(self) -> int:
        self.instances += 1
        return self.instances

    # screen-space primitives ---------------------------------------------------------------
    def _window(self, x0: float, y0: float, x1: float, y1: float):
        c0, c1 = max(0, math.ceil(x0 - 0.5)), min(self.w, math.ceil(x1 - 0.5))
        r0, r1 = max(0, math.ceil(y0 - 0.5)), min(self.h, math.ceil(y1 - 0.5))
        if c0 >= c1 or r0 >= r1:
            return None
        return r0, r1, c0, c1

    def rect(self, x0: float, y0: float, x1: float, y1: float) -> Region | None:
        """Axis-aligned rectangle; at least one pixel wide and high (thin things stay visible)."""
        if x1 - x0 < 1.0:
            x0, x1 = (x0 + x1) / 2 - 0.5, (x0 + x1) / 2 + 0.5
        if y1 - y0 < 1.0:
            y0, y1 = (y0 + y1) / 2 - 0.5, (y0 + y1) / 2 + 0.5
        win = self._window(x0, y0, x1, y1)
        if win is None:
            return None
        r0, r1, c0, c1 = win
        return r0, c0, np.ones((r1 - r0, c1 - c0), bool)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, inner: float = 0.0) -> Region | None:
        """Filled ellipse (a ring when ``inner`` > 0, the inner radius as a fraction)."""
        rx, ry = max(rx, 0.6), max(ry, 0.6)
        win = self._window(cx - rx, cy - ry, cx + rx, cy + ry)
        if win is None:
            return None
        r0, r1, c0, c1 = win
        dx = ((self.cols[c0:c1] - cx) / rx) ** 2
        dy = ((self.rows[r0:r1] - cy) / ry) ** 2
        d = dy[:, None] + dx[None, :]
        mask = d <= 1.0
        if inner > 0:
            mask &= d >= inner * inner
        return r0, c0, mask

    def polygon(self, points: Sequence[tuple[float, float]]) -> Region | None:
        """Convex polygon (either winding), as the intersection of its edges' half-planes."""
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        win = self._window(min(xs), min(ys), max(xs), max(ys))
        if win is None:
            return None
        r0, r1, c0, c1 = win
        cols, rows = self.cols[c0:c1][None, :], self.rows[r0:r1][:, None]
        area = sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))
        sign = 1.0 if area >= 0 else -1.0
        mask = np.ones((r1 - r0, c1 - c0), bool)
        for i in range(len(xs)):
            ax, ay, bx, by = xs[i - 1], ys[i - 1], xs[i], ys[i]
            mask &= sign * ((bx - ax) * (rows - ay) - (by - ay) * (cols - ax)) <= 0
        return r0, c0, mask

    # world-space primitives ----------------------------------------------------------------
    def front(self, x0: float, x1: float, y0: float, y1: float, z: float) -> Region | None:
        """A rectangle facing the camera at depth z."""
        return self.rect(self.px(x0, z), self.py(y1, z), self.px(x1, z), self.py(y0, z))

    def side(self, x: float, z0: float, z1: float, y0: float, y1: float) -> Region | None:
        """A rectangle in the plane X = x between depths z0 < z1 (a facade, a fence, a bus's flank)."""
        z0 = max(z0, 0.5)
        if z1 <= z0:
            return None
        pts = [(self.px(x, z0), self.py(y0, z0)), (self.px(x, z1), self.py(y0, z1)),
               (self.px(x, z1), self.py(y1, z1)), (self.px(x, z0), self.py(y1, z0))]  # fmt: skip
        return self.polygon(pts)

    def blob(self, x: float, y: float, z: float, rx: float, ry: float, inner: float = 0.0) -> Region | None:
        s = self.f / z
        return self.ellipse(self.px(x, z), self.py(y, z), rx * s, ry * s, inner)

    def shape(self, points: Sequence[tuple[float, float]], z: float) -> Region | None:
        """A convex polygon given in metres (X, Y) in the plane at depth z."""
        return self.polygon([(self.px(x, z), self.py(y, z)) for x, y in points])

    # painting ------------------------------------------------------------------------------
    def paint(self, region: Region | None, code: int, color, instance: int = 0) -> None:
        if region is None:
            return
        r0, c0, mask = region
        h, w = mask.shape
        if not mask.any():
            return
        self.label[r0 : r0 + h, c0 : c0 + w][mask] = code
        self.inst[r0 : r0 + h, c0 : c0 + w][mask] = instance
        self.img[r0 : r0 + h, c0 : c0 + w][mask] = color

    def tint(self, region: Region | None, color) -> None:
        """Change colour only (windows, markings, lamps): the label stays what is underneath."""
        if region is None:
            return
        r0, c0, mask = region
        h, w = mask.shape
        self.img[r0 : r0 + h, c0 : c0 + w][mask] = color


# --------------------------------------------------------------------------------------------
# The street grammar
# --------------------------------------------------------------------------------------------


class _Scene:
    """Samples one street and draws it: ground, far skyline, both street sides, then every
    object between them from far to near (painter's algorithm)."""

    def __init__(self, rng: np.random.Generator, world: _World, width: int, height: int):
        self.rng, self.world = rng, world
        u = rng.uniform
        cv = _Canvas(
            width,
            height,
            focal=width * u(*world.focal),
            vpx=width * (0.5 + u(-0.07, 0.07)),
            horizon=height * u(*world.horizon),
            cam_height=u(*world.cam_height),
        )
        self.cv = cv
        # the renderer's time of day and weather: overall brightness and a mild colour tint
        self.tone = (u(0.75, 1.15) * u(0.9, 1.1, 3)).astype(np.float32)
        self.road_l, self.road_r = u(*world.road_left), u(*world.road_right)
        self.walk_l, self.walk_r = u(*world.sidewalk), u(*world.sidewalk)
        self.z_far = u(110.0, 200.0)
        self.crossings: list[tuple[float, float]] = []
        if rng.random() < world.intersection:
            z0 = u(12.0, 45.0)
            self.crossings.append((z0, z0 + u(10.0, 16.0)))
        self.colors = {
            "road": self.pick("road"),
            "sidewalk": self.pick("sidewalk"),
            "terrain": self.pick("terrain"),
            "marking": self.pick("marking"),
        }
        self.objects: list[tuple[float, Callable[[], None]]] = []  # (depth, draw), drawn far to near
        self.side_items: list[tuple[float, Callable[[], None]]] = []

    # colours -------------------------------------------------------------------------------
    def pick(self, name: str, jitter: float | None = None) -> np.ndarray:
        options = self.world.palette[name]
        base = np.asarray(options[self.rng.integers(len(options))], np.float32) / 255.0
        j = self.world.jitter if jitter is None else jitter
        return np.clip(base * self.rng.uniform(1 - j, 1 + j, 3).astype(np.float32), 0.0, 1.0)

    def in_crossing(self, z: float) -> bool:
        return any(z0 - 1.0 <= z <= z1 + 1.0 for z0, z1 in self.crossings)

    # composition ---------------------------------------------------------------------------
    def compose(self) -> None:
        self.draw_sky()
        self.plan_sides()
        self.draw_ground()
        self.draw_skyline()
        for _, draw in sorted(self.side_items, key=lambda item: -item[0]):
            draw()
        self.plan_objects()
        for _, draw in sorted(self.objects, key=lambda item: -item[0]):
            draw()

    def draw_sky(self) -> None:
        cv = self.cv
        top, bottom = self.pick("sky_top", 0.05), self.pick("sky_horizon", 0.03)
        t = np.clip(cv.rows / max(cv.yh, 1.0), 0.0, 1.0)[:, None, None]
        cv.img[:] = top * (1 - t) + bottom * t

    # street sides --------------------------------------------------------------------------
    def plan_sides(self) -> None:
        rng, world = self.rng, self.world
        self.sides = {}
        for side, road, walk in ((-1, self.road_l, self.walk_l), (1, self.road_r, self.walk_r)):
            verge = rng.uniform(0.6, 1.8) if rng.random() < world.verge else 0.0  # grass by the kerb
            edge = road + verge + walk
            plane = edge + rng.uniform(*world.setback)
            segments = []  # (z0, z1, kind, setback class)
            z = 1.0
            while z < self.z_far:
                crossing = next(((a, b) for a, b in self.crossings if a <= z < b), None)
                if crossing is not None:
                    segments.append((z, crossing[1], "crossing", ROAD))
                    z = crossing[1]
                    continue
                kind = ("building", "vegetation", "open")[rng.choice(3, p=world.side_mix)]
                length = rng.uniform(8.0, 30.0) if kind == "building" else rng.uniform(6.0, 20.0)
                z1 = min(z + length, self.z_far, *[a for a, _ in self.crossings if a > z])
                setback = TERRAIN if (kind != "building" or rng.random() < world.lawn) else SIDEWALK
                segments.append((z, z1, kind, setback))
                z = z1
            self.sides[side] = dict(road=road, verge=verge, edge=edge, plane=plane, segments=segments)
            for z0, z1, kind, _ in segments:
                if kind == "building":
                    self.plan_building(side, plane, z0, z1)
                elif kind == "vegetation":
                    self.plan_vegetation(side, plane, z0, z1)
                elif kind == "open":
                    self.plan_open(side, plane, edge, z0, z1)
                else:
                    self.plan_building(side, plane + rng.uniform(12.0, 30.0), z0 + 3.0, z1 + 25.0, far=True)

    def plan_building(self, side: int, plane: float, z0: float, z1: float, far: bool = False) -> None:
        rng, cv = self.rng, self.cv
        height = rng.uniform(*self.world.building_height)
        color = self.pick("building")
        window = self.pick("window", 0.08)
        shade = 0.9 if side < 0 else 0.74  # flat shading: one side of the street is in the sun
        spacing, floor = rng.uniform(2.2, 4.0), rng.uniform(2.8, 3.6)
        win_w, win_h = rng.uniform(0.3, 0.6), rng.uniform(0.35, 0.6)
        shop = rng.random() < 0.5
        x = side * plane

        def draw() -> None:
            depth_x = x + side * 15.0
            cv.paint(cv.front(min(x, depth_x), max(x, depth_x), 0.0, height, z0), BUILDING, color)
            region = cv.side(x, z0, z1, 0.0, height)
            cv.paint(region, BUILDING, color * shade)
            if region is None:
                return
            r0, c0, mask = region
            h, w = mask.shape
            zc = cv.f * abs(x) / np.maximum(np.abs(cv.cols[c0 : c0 + w] - cv.vpx), 1e-3)  # depth per column
            yc = cv.cam - (cv.rows[r0 : r0 + h, None] - cv.yh) * zc[None, :] / cv.f  # height per pixel
            along = np.mod(zc - z0, spacing) / spacing
            up = np.mod(yc, floor) / floor
            windows = mask & (np.abs(along - 0.5)[None, :] < win_w / 2) & (np.abs(up - 0.5) < win_h / 2)
            windows &= (yc > 3.0) & (yc < height - 0.8)
            if shop:
                band = mask & (yc > 0.4) & (yc < 2.6) & (np.abs(along - 0.5)[None, :] < 0.42)
                windows |= band
            cv.tint((r0, c0, windows), window)

        self.side_items.append((z0 if not far else z0 + 1000.0, draw))

    def plan_vegetation(self, side: int, plane: float, z0: float, z1: float) -> None:
        rng, cv = self.rng, self.cv
        hedge_h = rng.uniform(0.8, 2.0)
        hedge_color = self.pick("vegetation")
        x = side * plane
        self.side_items.append((z0, lambda: cv.paint(cv.side(x, z0, z1, 0.0, hedge_h), VEGETATION, hedge_color * 0.85)))
        z = z0 + rng.uniform(1.0, 4.0)
        while z < z1:
            self.add_tree(self.side_items, x + side * rng.uniform(0.0, 2.0), z, big=True)
            z += rng.uniform(3.0, 7.0)

    def plan_open(self, side: int, plane: float, edge: float, z0: float, z1: float) -> None:
        rng, cv = self.rng, self.cv
        roll = rng.random()
        x = side * plane
        if roll < 0.4:
            wall_h, color = rng.uniform(1.0, 3.0), self.pick("wall")
            self.side_items.append((z0, lambda: cv.paint(cv.side(x, z0, z1, 0.0, wall_h), WALL, color)))
        elif roll < 0.8:
            self.add_fence(side * edge, z0, z1)
        for _ in range(rng.poisson(1.5)):
            self.add_tree(self.side_items, x + side * rng.uniform(2.0, 8.0), rng.uniform(z0, z1), big=True)

    def add_fence(self, x: float, z0: float, z1: float) -> None:
        rng, cv = self.rng, self.cv
        fence_h, color = rng.uniform(0.9, 2.0), self.pick("fence")
        slat = rng.uniform(0.12, 0.3)

        def draw() -> None:
            region = cv.side(x, z0, z1, 0.0, fence_h)
            cv.paint(region, FENCE, color)
            if region is None:
                return
            r0, c0, mask = region
            zc = cv.f * abs(x) / np.maximum(np.abs(cv.cols[c0 : c0 + mask.shape[1]] - cv.vpx), 1e-3)
            gaps = mask & (np.mod(zc, 2 * slat) < slat)[None, :]
            cv.tint((r0, c0, gaps), color * 0.55)

        self.side_items.append((z0 - 0.5, draw))

    def draw_skyline(self) -> None:
        rng, cv = self.rng, self.cv
        z = self.z_far
        x = -(self.sides[-1]["plane"] + 40.0)
        right = self.sides[1]["plane"] + 40.0
        while x < right:
            width = rng.uniform(8.0, 25.0)
            if rng.random() < 0.25:
                cv.paint(cv.front(x, x + width, 0.0, rng.uniform(4.0, 10.0), z), VEGETATION, self.pick("vegetation") * 0.8)
            else:
                cv.paint(cv.front(x, x + width, 0.0, rng.uniform(5.0, 35.0), z), BUILDING, self.pick("building") * 0.95)
            x += width

    # ground --------------------------------------------------------------------------------
    def draw_ground(self) -> None:
        cv = self.cv
        r0 = max(0, math.ceil(cv.yh + 0.5))
        if r0 >= cv.h:
            return
        dy = cv.rows[r0:, None] - cv.yh
        z = np.broadcast_to(cv.f * cv.cam / dy, (cv.h - r0, cv.w))
        x = (cv.cols[None, :] - cv.vpx) * cv.cam / dy
        code = np.full(z.shape, ROAD, np.uint8)
        for side in (-1, 1):
            s = self.sides[side]
            along = side * x  # distance from the camera's line, positive on this side
            starts = np.array([seg[0] for seg in s["segments"]], np.float32)
            walk_code = np.array([ROAD if seg[2] == "crossing" else SIDEWALK for seg in s["segments"]], np.uint8)
            setback_code = np.array([seg[3] for seg in s["segments"]], np.uint8)
            beyond_code = np.array([ROAD if seg[2] == "crossing" else TERRAIN for seg in s["segments"]], np.uint8)
            index = np.clip(np.searchsorted(starts, z, side="right") - 1, 0, len(starts) - 1)
            code = np.where(along > s["road"], walk_code[index], code)
            verge = (along > s["road"]) & (along <= s["road"] + s["verge"]) & (walk_code[index] == SIDEWALK)
            code = np.where(verge, TERRAIN, code)
            code = np.where(along > s["edge"], setback_code[index], code)
            code = np.where(along > s["plane"], beyond_code[index], code)
        colors = np.zeros((NUM_CLASSES, 3), np.float32)
        colors[ROAD], colors[SIDEWALK], colors[TERRAIN] = self.colors["road"], self.colors["sidewalk"], self.colors["terrain"]
        rgb = colors[code]
        # lane markings: solid edge lines, dashed lane lines, a zebra crossing before an intersection
        on_road = (code == ROAD) & (x > -self.road_l) & (x < self.road_r)
        lines = (np.abs(x + self.road_l - 0.3) < 0.08) | (np.abs(x - self.road_r + 0.3) < 0.08)
        for lane in np.arange(-self.road_l + 3.3, self.road_r - 1.5, 3.3):
            lines |= (np.abs(x - lane) < 0.07) & (np.mod(z, 9.0) < 3.5)
        for z0, _ in self.crossings:
            lines |= (z > z0 - 4.5) & (z < z0 - 1.0) & (np.mod(x, 1.1) < 0.55)
        rgb[on_road & lines] = self.colors["marking"]
        cv.label[r0:] = code
        cv.img[r0:] = rgb
        self.ground = (r0, x, z)

    # objects -------------------------------------------------------------------------------
    def plan_objects(self) -> None:
        rng, world = self.rng, self.world
        poisson = rng.poisson
        # parked cars along the kerbs
        for side in (-1, 1):
            if rng.random() < world.parked_row:
                z = rng.uniform(3.0, 10.0)
                while z < 70.0:
                    length = rng.uniform(3.8, 4.8)
                    if rng.random() < 0.7 and not self.in_crossing(z) and not self.in_crossing(z + length):
                        x = side * (self.sides[side]["road"] - 1.1)
                        self.add_car(x, z, length, facing_away=side > 0 or rng.random() < 0.5)
                    z += length + rng.uniform(0.6, 6.0)
        lanes = np.arange(-self.road_l + 1.65, self.road_r - 1.0, 3.3)
        for _ in range(poisson(world.moving_cars)):
            lane = lanes[rng.integers(len(lanes))] if len(lanes) else 0.0
            self.add_car(lane + rng.uniform(-0.4, 0.4), rng.uniform(7.0, 90.0), rng.uniform(3.8, 4.8), facing_away=lane > -1.0)
        for _ in range(poisson(world.buses)):
            lane = lanes[rng.integers(len(lanes))] if len(lanes) else 0.0
            self.add_bus(lane, rng.uniform(10.0, 70.0))
        for _ in range(poisson(world.trucks)):
            lane = lanes[rng.integers(len(lanes))] if len(lanes) else 0.0
            self.add_truck(lane, rng.uniform(10.0, 70.0))
        # people: on the sidewalks, some crossing the street
        for _ in range(poisson(world.persons)):
            side = -1 if rng.random() < 0.5 else 1
            s = self.sides[side]
            z = rng.uniform(4.0, 55.0)
            if rng.random() < 0.15:
                x = rng.uniform(-self.road_l, self.road_r)
            else:
                x = side * rng.uniform(s["road"] + 0.4, s["edge"] - 0.3)
            group = 1 + (rng.poisson(0.6) if rng.random() < 0.4 else 0)
            for g in range(group):
                self.add_person(x + rng.uniform(-0.6, 0.6) * g, z + rng.uniform(-0.8, 0.8) * g)
        for _ in range(poisson(world.riders)):
            side = -1 if rng.random() < 0.5 else 1
            x = side * (self.sides[side]["road"] - rng.uniform(0.5, 1.5))
            self.add_rider(x, rng.uniform(5.0, 45.0), motorcycle=rng.random() < 0.35)
        for _ in range(poisson(world.parked_bicycles)):
            side = -1 if rng.random() < 0.5 else 1
            s = self.sides[side]
            self.add_bicycle_parked(side * rng.uniform(s["road"] + 0.3, s["edge"] - 0.2), rng.uniform(4.0, 35.0))
        for _ in range(poisson(world.statics)):
            side = -1 if rng.random() < 0.5 else 1
            s = self.sides[side]
            self.add_static(side * rng.uniform(s["road"] + 0.3, s["edge"] - 0.2), rng.uniform(4.0, 40.0))
        # street furniture: poles with signs, lamps and traffic lights; street trees
        for side in (-1, 1):
            s = self.sides[side]
            z = rng.uniform(3.0, 14.0)
            while z < 80.0:
                self.add_pole(side, side * (s["road"] + 0.4), z)
                z += rng.uniform(10.0, 24.0)
            if rng.random() < world.tree_lined:
                z = rng.uniform(3.0, 10.0)
                while z < 70.0:
                    if not self.in_crossing(z):
                        self.add_tree(self.objects, side * (s["edge"] - 0.7), z, big=False)
                    z += rng.uniform(7.0, 13.0)
        for z0, z1 in self.crossings:
            for side in (-1, 1):
                self.add_traffic_light_pole(side, side * (self.sides[side]["road"] + 0.5), z0 - 1.5)
            if self.world.photo or rng.random() < 0.5:
                self.add_traffic_light_pole(-1, -(self.sides[-1]["road"] + 0.5), z1 + 1.0, overhead=False)

    def add_tree(self, items: list, x: float, z: float, big: bool) -> None:
        rng, cv = self.rng, self.cv
        height = rng.uniform(5.0, 11.0) if big else rng.uniform(4.0, 8.0)
        radius = rng.uniform(1.6, 3.5) if big else rng.uniform(1.2, 2.4)
        trunk_w = rng.uniform(0.2, 0.4)
        color, trunk = self.pick("vegetation"), self.pick("trunk")
        blobs = [(rng.uniform(-0.5, 0.5) * radius, rng.uniform(-0.4, 0.4) * radius, rng.uniform(0.55, 0.9) * radius) for _ in range(4)]

        def draw() -> None:
            cv.paint(cv.front(x - trunk_w / 2, x + trunk_w / 2, 0.0, height - radius * 0.5, z), VEGETATION, trunk)
            for i, (dx, dy, r) in enumerate(blobs):
                cv.paint(cv.blob(x + dx, height - radius + dy, z, r, r * 0.9), VEGETATION, color * (0.85 + 0.05 * i))

        items.append((z, draw))

    def add_car(self, x: float, z: float, length: float, facing_away: bool) -> None:
        rng, cv = self.rng, self.cv
        width, height = rng.uniform(1.7, 1.95), rng.uniform(1.35, 1.6)
        color, glass, tyre = self.pick("car"), self.pick("glass", 0.05), self.pick("tyre", 0.0)
        instance = cv.new_instance()
        x0, x1 = x - width / 2, x + width / 2
        belt = height * 0.55

        def draw() -> None:
            # the flank the camera sees, then the face toward it
            if x1 < -0.3 or x0 > 0.3:
                sx = x1 if x1 < 0 else x0
                cv.paint(cv.side(sx, z, z + length, 0.15, belt), CAR, color * 0.8, instance)
                cv.paint(cv.side(sx * 0.95, z + length * 0.2, z + length * 0.85, belt, height), CAR, glass, instance)
                for wz in (z + 0.8, z + length - 0.8):
                    cv.paint(cv.blob(sx, 0.33, wz, 0.06, 0.33), CAR, tyre, instance)
            cv.paint(cv.front(x0, x1, 0.15, belt, z), CAR, color, instance)
            inset = width * 0.12
            cv.paint(cv.shape([(x0 + inset, belt), (x1 - inset, belt), (x1 - inset * 2, height), (x0 + inset * 2, height)], z), CAR, color * 0.9, instance)
            cv.paint(cv.shape([(x0 + inset * 1.4, belt + 0.05), (x1 - inset * 1.4, belt + 0.05), (x1 - inset * 2.3, height - 0.08), (x0 + inset * 2.3, height - 0.08)], z), CAR, glass, instance)
            for wx in (x0 + 0.1, x1 - 0.35):
                cv.paint(cv.front(wx, wx + 0.25, 0.0, 0.3, z + 0.05), CAR, tyre, instance)
            lamp = np.array((0.9, 0.1, 0.1) if facing_away else (0.95, 0.95, 0.85), np.float32)
            for lx in (x0 + 0.08, x1 - 0.33):
                cv.tint(cv.front(lx, lx + 0.25, belt - 0.25, belt - 0.08, z), lamp)

        self.objects.append((z, draw))

    def add_bus(self, x: float, z: float) -> None:
        rng, cv = self.rng, self.cv
        width, height, length = 2.55, rng.uniform(3.0, 3.4), rng.uniform(11.0, 13.0)
        color, glass, tyre = self.pick("bus"), self.pick("glass", 0.05), self.pick("tyre", 0.0)
        instance = cv.new_instance()
        x0, x1 = x - width / 2, x + width / 2

        def draw() -> None:
            if x1 < -0.3 or x0 > 0.3:
                sx = x1 if x1 < 0 else x0
                cv.paint(cv.side(sx, z, z + length, 0.3, height), BUS, color * 0.8, instance)
                cv.paint(cv.side(sx, z + 0.5, z + length - 0.5, 1.3, height - 0.4), BUS, glass, instance)
                for wz in (z + 1.5, z + length - 2.5):
                    cv.paint(cv.blob(sx, 0.5, wz, 0.08, 0.5), BUS, tyre, instance)
            cv.paint(cv.front(x0, x1, 0.3, height, z), BUS, color, instance)
            cv.paint(cv.front(x0 + 0.2, x1 - 0.2, 1.5, height - 0.3, z), BUS, glass, instance)
            for wx in (x0 + 0.1, x1 - 0.4):
                cv.paint(cv.front(wx, wx + 0.3, 0.0, 0.35, z + 0.05), BUS, tyre, instance)

        self.objects.append((z, draw))

    def add_truck(self, x: float, z: float) -> None:
        rng, cv = self.rng, self.cv
        width, height, length = 2.5, rng.uniform(3.2, 3.9), rng.uniform(6.0, 9.0)
        cargo, cab, glass, tyre = self.pick("truck"), self.pick("car"), self.pick("glass", 0.05), self.pick("tyre", 0.0)
        instance = cv.new_instance()
        x0, x1 = x - width / 2, x + width / 2

        def draw() -> None:
            if x1 < -0.3 or x0 > 0.3:
                sx = x1 if x1 < 0 else x0
                cv.paint(cv.side(sx, z + length, z + length + 2.2, 0.5, 2.8), TRUCK, cab * 0.8, instance)
                cv.paint(cv.side(sx, z + length + 0.4, z + length + 1.6, 1.7, 2.6), TRUCK, glass, instance)
                cv.paint(cv.side(sx, z, z + length, 0.9, height), TRUCK, cargo * 0.82, instance)
                cv.paint(cv.side(sx, z, z + length, 0.5, 0.9), TRUCK, tyre * 2.0, instance)
                for wz in (z + 1.2, z + length - 1.0, z + length + 1.5):
                    cv.paint(cv.blob(sx, 0.5, wz, 0.08, 0.5), TRUCK, tyre, instance)
            cv.paint(cv.front(x0, x1, 0.9, height, z), TRUCK, cargo, instance)
            cv.paint(cv.front(x0 + 0.2, x1 - 0.2, 0.45, 0.9, z), TRUCK, tyre * 2.0, instance)
            for wx in (x0 + 0.1, x1 - 0.45):
                cv.paint(cv.front(wx, wx + 0.35, 0.0, 0.55, z + 0.05), TRUCK, tyre, instance)

        self.objects.append((z, draw))

    def _figure(self, code: int, x: float, y: float, z: float, height: float, instance: int, colors, lean: float = 0.0, sitting: bool = False) -> None:
        """A person (standing) or the upper body of a rider (sitting), ``y`` at the feet/seat."""
        cv = self.cv
        skin, top, legs = colors
        hip = y + (0.0 if sitting else 0.47 * height)
        shoulder = hip + 0.36 * height
        if not sitting:
            stride = self.rng.uniform(-0.15, 0.15)
            cv.paint(cv.shape([(x - 0.17, hip), (x - 0.02, hip), (x - 0.04 + stride, y), (x - 0.16 + stride, y)], z), code, legs, instance)
            cv.paint(cv.shape([(x + 0.02, hip), (x + 0.17, hip), (x + 0.16 - stride, y), (x + 0.04 - stride, y)], z), code, legs * 0.9, instance)
        else:
            cv.paint(cv.shape([(x - 0.05, hip + 0.05), (x + 0.1, hip + 0.05), (x + 0.35, hip - 0.5), (x + 0.25, hip - 0.5)], z), code, legs, instance)
        cv.paint(cv.shape([(x - 0.2, hip), (x + 0.2, hip), (x + 0.21 + lean, shoulder), (x - 0.21 + lean, shoulder)], z), code, top, instance)
        cv.paint(cv.shape([(x - 0.27 + lean, shoulder), (x - 0.19 + lean, shoulder), (x - 0.2, hip + 0.05), (x - 0.27, hip + 0.05)], z), code, top * 0.85, instance)
        cv.paint(cv.shape([(x + 0.19 + lean, shoulder), (x + 0.27 + lean, shoulder), (x + 0.27 + lean * 1.5, hip + 0.05), (x + 0.2 + lean * 1.5, hip + 0.05)], z), code, top * 0.85, instance)
        cv.paint(cv.blob(x + lean * 1.1, shoulder + 0.13 * height * 0.75, z, 0.11, 0.13), code, skin, instance)

    def add_person(self, x: float, z: float) -> None:
        height = self.rng.uniform(1.55, 1.95) * (0.6 if self.rng.random() < 0.1 else 1.0)  # some children
        colors = (self.pick("skin", 0.05), self.pick("clothes"), self.pick("clothes") * 0.7)
        instance = self.cv.new_instance()
        self.objects.append((z, lambda: self._figure(PERSON, x, 0.0, z, height, instance, colors)))

    def _two_wheeler(self, code: int, x: float, z: float, direction: float, frame, tyre, instance: int) -> None:
        cv = self.cv
        radius = 0.34 if code == BICYCLE else 0.32
        back, ahead = x - direction * 0.55, x + direction * 0.55
        ring = 0.78 if code == BICYCLE else 0.55
        for wx in (back, ahead):
            cv.paint(cv.blob(wx, radius, z, radius, radius, inner=ring), code, tyre, instance)
        if code == BICYCLE:
            seat, bar = (x - direction * 0.15, 0.95), (x + direction * 0.42, 1.0)
            for a, b in ((back, seat), (seat, (x + direction * 0.05, radius)), ((x + direction * 0.05, radius), bar), (seat, bar), (bar, (ahead, radius))):
                a = a if isinstance(a, tuple) else (a, radius)
                cv.paint(cv.shape(_stroke(a, b, 0.035), z), code, frame, instance)
        else:
            cv.paint(cv.shape([(back + direction * 0.1, radius + 0.1), (ahead - direction * 0.15, radius + 0.05), (ahead - direction * 0.3, 0.85), (back + direction * 0.25, 0.9)], z), code, frame, instance)
            cv.paint(cv.shape(_stroke((ahead, radius), (ahead - direction * 0.2, 1.05), 0.05), z), code, tyre * 3.0, instance)

    def add_rider(self, x: float, z: float, motorcycle: bool) -> None:
        rng = self.rng
        direction = 1.0 if rng.random() < 0.5 else -1.0
        frame, tyre = self.pick("bike"), self.pick("tyre", 0.0)
        colors = (self.pick("skin", 0.05), self.pick("clothes"), self.pick("clothes") * 0.7)
        height = rng.uniform(1.6, 1.9)
        bike_code = MOTORCYCLE if motorcycle else BICYCLE
        bike_instance, rider_instance = self.cv.new_instance(), self.cv.new_instance()

        def draw() -> None:
            self._two_wheeler(bike_code, x, z, direction, frame, tyre, bike_instance)
            self._figure(RIDER, x - direction * 0.15, 0.9, z - 0.05, height, rider_instance, colors, lean=direction * 0.12, sitting=True)

        self.objects.append((z, draw))

    def add_bicycle_parked(self, x: float, z: float) -> None:
        direction = 1.0 if self.rng.random() < 0.5 else -1.0
        frame, tyre = self.pick("bike"), self.pick("tyre", 0.0)
        instance = self.cv.new_instance()
        self.objects.append((z, lambda: self._two_wheeler(BICYCLE, x, z, direction, frame, tyre, instance)))

    def add_static(self, x: float, z: float) -> None:
        cv, rng = self.cv, self.rng
        color = self.pick("static")
        width, height = (rng.uniform(0.5, 0.8), rng.uniform(0.8, 1.1)) if rng.random() < 0.6 else (0.15, 0.9)
        self.objects.append((z, lambda: cv.paint(cv.front(x - width / 2, x + width / 2, 0.0, height, z), STATIC, color)))

    def add_pole(self, side: int, x: float, z: float) -> None:
        rng, cv = self.rng, self.cv
        kind = rng.choice(3, p=(0.35, 0.45, 0.2))  # street lamp, sign post, traffic light
        height = rng.uniform(6.0, 9.0) if kind == 0 else rng.uniform(2.6, 4.0)
        thick = rng.uniform(0.12, 0.22)
        color = self.pick("pole")
        signs = [(self.pick("sign"), rng.integers(4), rng.uniform(0.5, 0.8)) for _ in range(1 + (rng.random() < 0.3))]
        light = (self.pick("light"), rng.integers(3), [self.pick("lamp", 0.0) for _ in range(3)])

        def draw() -> None:
            cv.paint(cv.front(x - thick / 2, x + thick / 2, 0.0, height, z), POLE, color)
            if kind == 0:  # a lamp arm reaching over the road
                arm = x - side * 1.6
                cv.paint(cv.front(min(x, arm), max(x, arm), height - 0.15, height, z), POLE, color)
                cv.paint(cv.front(min(arm, arm - side * 0.5), max(arm, arm - side * 0.5), height - 0.3, height, z), POLE, color * 0.8)
            elif kind == 1:
                top = height
                for sign_color, shape, size in signs:
                    self._sign(x, top - size / 2, z - 0.02, size, shape, sign_color)
                    top -= size + 0.1
            else:
                self._light(x, height, z - 0.02, *light)

        self.objects.append((z, draw))

    def add_traffic_light_pole(self, side: int, x: float, z: float, overhead: bool = True) -> None:
        rng, cv = self.rng, self.cv
        height, color = rng.uniform(3.5, 5.5), self.pick("pole")
        light = (self.pick("light"), rng.integers(3), [self.pick("lamp", 0.0) for _ in range(3)])
        reach = rng.uniform(2.0, 4.5)

        def draw() -> None:
            cv.paint(cv.front(x - 0.1, x + 0.1, 0.0, height, z), POLE, color)
            self._light(x, height - 0.3, z - 0.02, *light)
            if overhead:
                arm = x - side * reach
                cv.paint(cv.front(min(x, arm), max(x, arm), height + 0.5, height + 0.65, z), POLE, color)
                self._light(arm, height + 0.5, z - 0.02, *light)

        self.objects.append((z, draw))

    def _light(self, x: float, top: float, z: float, housing, lit: int, lamps) -> None:
        cv = self.cv
        w, h = 0.34, 0.95
        cv.paint(cv.front(x - w / 2, x + w / 2, top - h, top, z), LIGHT, housing)
        for i in range(3):
            color = lamps[i] if i == lit else lamps[i] * 0.25
            cv.paint(cv.blob(x, top - 0.17 - 0.3 * i, z - 0.01, 0.1, 0.1), LIGHT, color)

    def _sign(self, x: float, y: float, z: float, size: float, shape: int, color) -> None:
        cv = self.cv
        r = size / 2
        white = np.clip(color * 0.2 + 0.8, 0, 1)
        if shape == 0:  # round: coloured ring, white face
            cv.paint(cv.blob(x, y, z, r, r), SIGN, color)
            cv.tint(cv.blob(x, y, z, r * 0.65, r * 0.65), white)
        elif shape == 1:  # triangle
            cv.paint(cv.shape([(x - r, y - r * 0.8), (x + r, y - r * 0.8), (x, y + r)], z), SIGN, color)
            cv.tint(cv.shape([(x - r * 0.55, y - r * 0.55), (x + r * 0.55, y - r * 0.55), (x, y + r * 0.45)], z), white)
        elif shape == 2:  # diamond
            cv.paint(cv.shape([(x - r, y), (x, y - r), (x + r, y), (x, y + r)], z), SIGN, color)
        else:  # rectangular plate
            cv.paint(cv.front(x - r, x + r, y - r * 0.6, y + r * 0.6, z), SIGN, color)
            cv.tint(cv.front(x - r * 0.7, x + r * 0.7, y - r * 0.1, y + r * 0.1, z), white)


def _stroke(a: tuple[float, float], b: tuple[float, float], half_width: float) -> list[tuple[float, float]]:
    """A thin quadrilateral from a to b (a tube of a bicycle frame)."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    norm = math.hypot(dx, dy) or 1.0
    nx, ny = -dy / norm * half_width, dx / norm * half_width
    return [(a[0] + nx, a[1] + ny), (b[0] + nx, b[1] + ny), (b[0] - nx, b[1] - ny), (a[0] - nx, a[1] - ny)]


# --------------------------------------------------------------------------------------------
# Photographing the target
# --------------------------------------------------------------------------------------------


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
    img[hood_mask] = np.array((0.1, 0.1, 0.12), np.float32) + 0.25 * np.clip((top[None, :] + 3 - rows) / 3, 0, 1)[hood_mask][:, None]
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


@dataclass(frozen=True)
class ToyFrame:
    """One rendered frame, before it is written."""

    image: np.ndarray  # (H, W, 3) uint8
    label_ids: np.ndarray  # (H, W) uint8 Cityscapes labelIds
    instances: np.ndarray  # (H, W) uint16, 0 for stuff

    @property
    def train_ids(self) -> np.ndarray:
        return cityscapes_ids_to_train_ids(self.label_ids)

    @property
    def synthia_label(self) -> np.ndarray:
        """(H, W, 3) uint16: SYNTHIA class id, instance id, 0."""
        return _synthia_label(self.label_ids, self.instances)


_LABELID_TO_SYNTHIA = np.zeros(256, np.uint16)
for _train_id, _label_id in enumerate(TRAINID_TO_LABELID):
    _LABELID_TO_SYNTHIA[_label_id] = _TRAINID_TO_SYNTHIA[_train_id]


def _synthia_label(label_ids: np.ndarray, instances: np.ndarray) -> np.ndarray:
    classes = _LABELID_TO_SYNTHIA[label_ids]
    return np.stack([classes, instances.astype(np.uint16), np.zeros_like(classes)], axis=-1)


def frame_seed(seed: int, domain: str, split: str, index: int) -> np.random.SeedSequence:
    """The seed of one frame: frames are independent of each other and of the worker they run on."""
    return np.random.SeedSequence([seed, _DOMAINS[domain], _SPLITS[split], index])


def render_frame(domain: str, *, seed: int = 0, split: str = "train", index: int = 0, size: tuple[int, int] = DEFAULT_SIZE) -> ToyFrame:
    """Render frame ``index`` of ``domain`` ("source" or "target") and ``split`` ("train"/"val")."""
    if domain not in _DOMAINS or split not in _SPLITS:
        raise ValueError(f"domain must be one of {sorted(_DOMAINS)} and split one of {sorted(_SPLITS)}")
    width, height = size
    rng = np.random.default_rng(frame_seed(seed, domain, split, index))
    scene = _Scene(rng, _WORLDS[domain], width, height)
    scene.compose()
    if scene.world.photo:
        _photograph(scene)
    else:
        scene.cv.img *= scene.tone
    image = np.clip(scene.cv.img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return ToyFrame(image, _CODE_TO_LABELID[scene.cv.label], scene.cv.inst.copy())


# --------------------------------------------------------------------------------------------
# Writing the pair
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    domain: str
    split: str
    index: int
    files: tuple[tuple[str, str], ...]  # (kind, path)


def _jobs(root: Path, num_source: int, num_train: int, num_val: int, formats: Sequence[str]) -> list[_Job]:
    jobs = []
    for i in range(num_source):
        files: list[tuple[str, str]] = []
        if "gta5" in formats:
            files += [("rgb", str(root / "gta5" / "images" / f"{i:05d}.png")), ("gta5", str(root / "gta5" / "labels" / f"{i:05d}.png"))]
        if "synthia" in formats:
            files += [("rgb", str(root / "synthia" / "RGB" / f"{i:07d}.png")), ("synthia", str(root / "synthia" / "GT" / "LABELS" / f"{i:07d}.png"))]
        jobs.append(_Job("source", "train", i, tuple(files)))
    for split, count in (("train", num_train), ("val", num_val)):
        for i in range(count):
            stem = cityscapes_stem(split, i)
            city = stem.split("_")[0]
            files = (
                ("rgb", str(root / "cityscapes" / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")),
                ("cityscapes", str(root / "cityscapes" / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")),
            )
            jobs.append(_Job("target", split, i, files))
    return jobs


def cityscapes_stem(split: str, index: int) -> str:
    """``toyburg_000003_000019``: the Cityscapes-style name of target frame ``index`` of ``split``."""
    if split == "val":
        return f"{VAL_CITY}_{index:06d}_{CITYSCAPES_FRAME:06d}"
    city = TRAIN_CITIES[index % len(TRAIN_CITIES)]
    return f"{city}_{index // len(TRAIN_CITIES):06d}_{CITYSCAPES_FRAME:06d}"


def _train_id_counts(train_ids: np.ndarray) -> list[int]:
    """Pixels per trainId 0..18, then the ignored (255) pixels."""
    counts = np.bincount(train_ids.ravel(), minlength=256)
    return counts[:NUM_CLASSES].tolist() + [int(counts[IGNORE_INDEX])]


def _run_job(job: _Job, seed: int, size: tuple[int, int]) -> tuple[bool, list[int]]:
    """Render and write one frame unless all its files exist; return (written, class counts)."""
    if all(os.path.exists(path) for _, path in job.files):
        kind, path = next((kind, path) for kind, path in job.files if kind != "rgb")
        if kind == "synthia":
            return False, _train_id_counts(synthia_ids_to_train_ids(read_png(path)[..., 0]))
        return False, _train_id_counts(cityscapes_ids_to_train_ids(read_image(path)))
    frame = render_frame(job.domain, seed=seed, split=job.split, index=job.index, size=size)
    for kind, path in job.files:
        if kind == "rgb":
            write_image(path, frame.image)
        elif kind == "gta5":
            write_image(path, frame.label_ids, palette=cityscapes_id_palette())
        elif kind == "synthia":
            write_png16(path, frame.synthia_label)
        else:
            write_image(path, frame.label_ids)
    return True, _train_id_counts(frame.train_ids)


def _run_chunk(jobs: list[_Job], seed: int, size: tuple[int, int]) -> list[tuple[_Job, bool, list[int]]]:
    return [(job, *_run_job(job, seed, size)) for job in jobs]


@dataclass(frozen=True)
class ToyPairSummary:
    """What :func:`generate_toy_pair` made (or found already made)."""

    root: Path
    seed: int
    size: tuple[int, int]
    num_source: int
    num_target_train: int
    num_target_val: int
    source_formats: tuple[str, ...]
    written: int  # frames rendered by this call
    skipped: int  # frames whose files were already there
    seconds: float
    #: pixels per trainId 0..18 plus a 20th entry for ignore (255), per "source", "target_train", "target_val"
    class_pixels: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def source_roots(self) -> dict[str, Path]:
        return {name: self.root / name for name in self.source_formats}

    @property
    def cityscapes_root(self) -> Path:
        return self.root / "cityscapes"

    def class_shares(self, part: str) -> dict[str, float]:
        """Share of each class among the pixels of ``part`` ("source", "target_train", "target_val")."""
        counts = self.class_pixels[part]
        total = sum(counts) or 1
        return {name: counts[i] / total for i, name in enumerate((*CLASSES, "ignore"))}

    def __str__(self) -> str:
        what = "already complete" if self.written == 0 else f"{self.written} frames rendered, {self.skipped} kept"
        return (
            f"{self.num_source} source ({'+'.join(self.source_formats)}), {self.num_target_train} target train, "
            f"{self.num_target_val} target val frames at {self.size[0]}x{self.size[1]} in {self.root} "
            f"(seed {self.seed}; {what}; {self.seconds:.1f} s)"
        )


def _parameters(seed, size, num_source, num_train, num_val, formats) -> dict:
    return {
        "version": TOY_VERSION,
        "seed": seed,
        "size": list(size),
        "num_source": num_source,
        "num_target_train": num_train,
        "num_target_val": num_val,
        "source_formats": list(formats),
    }


def _write_manifest(path: Path, data: dict) -> None:
    atomic_write(path, json.dumps(data, indent=2) + "\n")


def _toy_folders(root: Path) -> list[Path]:
    return [root / name for name in (*SOURCE_FORMATS, "cityscapes")]


def generate_toy_pair(
    root: Path,
    *,
    seed: int = 0,
    size: tuple[int, int] = DEFAULT_SIZE,
    num_source: int = DEFAULT_NUM_SOURCE,
    num_target_train: int = DEFAULT_NUM_TARGET_TRAIN,
    num_target_val: int = DEFAULT_NUM_TARGET_VAL,
    source_formats: tuple[str, ...] = ("gta5",),
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    overwrite: bool = False,
) -> ToyPairSummary:
    """Write the toy domain pair under ``root`` (see the module docstring for the layout).

    ``progress`` is called once per finished frame (rendered or found on disk) with the total
    number of frames, so a progress bar can ``advance(1)`` towards that total. Idempotent and
    resumable; raises :class:`DataError` if ``root`` holds a toy pair made with other parameters
    (unless ``overwrite``) or a dataset the generator did not make.
    """
    started = time.perf_counter()
    root = Path(root)
    width, height = (int(v) for v in size)
    formats = tuple(dict.fromkeys(source_formats))
    unknown = [f for f in formats if f not in SOURCE_FORMATS]
    if unknown or not formats:
        raise DataError(f"unknown toy source format {', '.join(unknown) or '(none)'}; expected gta5 and/or synthia")
    if width < 16 or height < 8:
        raise DataError(f"toy image size {width}x{height} is too small; use at least 16x8")
    if min(num_source, num_target_train, num_target_val) < 0 or workers < 1:
        raise DataError("toy frame counts must be >= 0 and workers >= 1")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"the toy seed must be a whole number >= 0, got {seed!r}")  # numpy refuses negative seeds
    params = _parameters(seed, (width, height), num_source, num_target_train, num_target_val, formats)
    manifest = root / MANIFEST
    jobs = _jobs(root, num_source, num_target_train, num_target_val, formats)

    existing = None
    if manifest.exists():
        try:
            existing = json.loads(manifest.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{manifest} is unreadable ({exc}); delete it or choose another ROOT") from None
    if existing is not None:
        recorded = {key: existing.get(key) for key in params}
        if recorded != params:
            if not overwrite:
                differ = ", ".join(f"{k} {recorded[k]} (asked {params[k]})" for k in params if recorded[k] != params[k])
                raise DataError(
                    f"{root} holds a toy pair made with other parameters: {differ}; choose another ROOT or use --overwrite"
                )
            for folder in _toy_folders(root):
                shutil.rmtree(folder, ignore_errors=True)
            manifest.unlink()
            existing = None
        elif existing.get("complete") and all(os.path.exists(p) for job in jobs for _, p in job.files):
            if progress is not None:
                for _ in jobs:
                    progress(len(jobs))
            return ToyPairSummary(
                root, seed, (width, height), num_source, num_target_train, num_target_val, formats,
                written=0, skipped=len(jobs), seconds=time.perf_counter() - started,
                class_pixels={k: tuple(v) for k, v in existing.get("class_pixels", {}).items()},
            )  # fmt: skip
    if existing is None:
        occupied = [f.name + "/" for f in _toy_folders(root) if f.exists() and any(f.iterdir())]
        if occupied:
            raise DataError(
                f"{root} already holds {', '.join(occupied)} but no {MANIFEST}: not a toy pair; choose another ROOT"
            )
    root.mkdir(parents=True, exist_ok=True)
    _write_manifest(manifest, {**params, "complete": False})

    totals = {"source": np.zeros(NUM_CLASSES + 1, np.int64), "target_train": np.zeros(NUM_CLASSES + 1, np.int64), "target_val": np.zeros(NUM_CLASSES + 1, np.int64)}
    written = skipped = 0

    def record(results) -> None:
        nonlocal written, skipped
        for job, did_write, counts in results:
            written += did_write
            skipped += not did_write
            totals["source" if job.domain == "source" else f"target_{job.split}"] += counts
            if progress is not None:
                progress(len(jobs))

    if workers == 1 or len(jobs) < 2:
        for job in jobs:
            record([(job, *_run_job(job, seed, (width, height)))])
    else:
        chunk = max(1, min(16, len(jobs) // (4 * workers)))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_run_chunk, jobs[i : i + chunk], seed, (width, height)) for i in range(0, len(jobs), chunk)]
            for future in as_completed(futures):
                record(future.result())
    class_pixels = {k: tuple(int(c) for c in v) for k, v in totals.items()}
    _write_manifest(manifest, {**params, "complete": True, "class_pixels": {k: list(v) for k, v in class_pixels.items()}})
    return ToyPairSummary(
        root, seed, (width, height), num_source, num_target_train, num_target_val, formats,
        written=written, skipped=skipped, seconds=time.perf_counter() - started, class_pixels=class_pixels,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# A picture of it
# --------------------------------------------------------------------------------------------


def render_preview(root: Path, out_png: Path, *, count: int = 4, source_format: str | None = None) -> Path:
    """Write a grid of ``count`` source frames and ``count`` target-val frames with their labels
    in Cityscapes colours (rows: source image, source label, target image, target label)."""
    root, out_png = Path(root), Path(out_png)
    manifest = root / MANIFEST
    if not manifest.exists():
        raise DataError(f"{root} holds no toy pair ({MANIFEST} is missing); run generate_toy_pair first")
    params = json.loads(manifest.read_text())
    fmt = source_format or params["source_formats"][0]
    rows: list[list[np.ndarray]] = [[], [], [], []]
    for i in range(min(count, params["num_source"], params["num_target_val"])):
        if fmt == "gta5":
            image = read_image(root / "gta5" / "images" / f"{i:05d}.png", "RGB")
            train_ids = cityscapes_ids_to_train_ids(read_image(root / "gta5" / "labels" / f"{i:05d}.png"))
        else:
            image = read_image(root / "synthia" / "RGB" / f"{i:07d}.png", "RGB")
            train_ids = synthia_ids_to_train_ids(read_png(root / "synthia" / "GT" / "LABELS" / f"{i:07d}.png")[..., 0])
        stem = cityscapes_stem("val", i)
        target = read_image(root / "cityscapes" / "leftImg8bit" / "val" / VAL_CITY / f"{stem}_leftImg8bit.png", "RGB")
        target_ids = cityscapes_ids_to_train_ids(read_image(root / "cityscapes" / "gtFine" / "val" / VAL_CITY / f"{stem}_gtFine_labelIds.png"))
        for row, tile in zip(rows, (image, colorize(train_ids), target, colorize(target_ids))):
            row.append(tile)
    if not rows[0]:
        raise DataError(f"{root} has no frames to preview")
    gap = 4
    h, w = rows[0][0].shape[:2]
    grid = np.full((4 * h + 3 * gap, len(rows[0]) * w + (len(rows[0]) - 1) * gap, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            grid[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tile
    write_image(out_png, grid)
    return out_png
