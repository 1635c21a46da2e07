"""What the toy world is made of: the label codes it draws, and the scene statistics and colours
of its two domains (the source's rendered world and the target's photographed one), plus the
*generic* world, a stand-in for a pre-training corpus (:func:`generic_world`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from cicld.data.labels import NUM_CLASSES, TRAINID_TO_LABELID

# trainIds (the 19 evaluated classes) and the internal codes of non-evaluated Cityscapes labels.
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = range(11)
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(11, 19)
STATIC, EGO, UNLABELED = 19, 20, 21
_EXTRA_LABEL_IDS = {STATIC: 4, EGO: 1, UNLABELED: 0}

_CODE_TO_LABELID = np.zeros(256, np.uint8)
_CODE_TO_LABELID[:NUM_CLASSES] = TRAINID_TO_LABELID
for _code, _label_id in _EXTRA_LABEL_IDS.items():
    _CODE_TO_LABELID[_code] = _label_id


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
        "clothes": (
            (220, 40, 40),
            (40, 60, 200),
            (240, 200, 30),
            (30, 160, 60),
            (240, 240, 240),
            (30, 30, 30),
            (160, 40, 160),
        ),
        "car": (
            (210, 30, 30),
            (30, 70, 210),
            (240, 240, 240),
            (20, 20, 24),
            (240, 200, 20),
            (40, 160, 60),
            (170, 170, 180),
        ),
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
        "building": (
            (150, 146, 140),
            (180, 172, 160),
            (120, 112, 104),
            (196, 190, 180),
            (140, 120, 100),
            (110, 114, 120),
        ),
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
        "clothes": (
            (30, 30, 34),
            (60, 60, 70),
            (90, 70, 50),
            (120, 120, 126),
            (40, 50, 80),
            (170, 50, 50),
            (210, 210, 206),
            (60, 110, 160),
        ),
        "car": (
            (30, 30, 32),
            (180, 180, 184),
            (220, 220, 220),
            (60, 70, 90),
            (110, 110, 114),
            (120, 30, 30),
            (40, 60, 50),
        ),
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


def generic_world(rng: np.random.Generator) -> _World:
    """One frame's world of the *generic* domain: every colour random, the frame rendered flat or
    photographed with even odds, scene statistics anywhere between the source's and the target's.

    The toy pair has no ImageNet: a network trained on it starts from random weights, learns the
    source's colour for each class and has nothing else to fall back on in the target
    (docs/benchmarks-archive.md, "A prior the toy pair lacks"). Frames of this world, drawn by the same
    street grammar, teach shapes and context but no domain's palette, as a pre-training corpus
    would (domain randomisation); they are neither the source nor the target.
    """
    fields = {}
    for spec in dataclasses.fields(_World):
        source, target = getattr(_SOURCE, spec.name), getattr(_TARGET, spec.name)
        if spec.name == "palette":
            fields["palette"] = {
                name: tuple(tuple(int(c) for c in rng.integers(15, 245, 3)) for _ in range(6)) for name in source
            }
        elif spec.name == "photo":
            fields["photo"] = bool(rng.random() < 0.5)
        elif spec.name == "side_mix":  # shares of building, vegetation, open: the source's
            fields["side_mix"] = source
        elif isinstance(source, tuple):  # a uniform range: the hull of both domains' ranges
            fields[spec.name] = (min(source[0], target[0]), max(source[1], target[1]))
        else:  # a probability, Poisson mean or jitter: half way between the domains
            fields[spec.name] = (source + target) / 2
    return _World(**fields)
