"""A procedural toy domain pair, written in the real GTA5 / SYNTHIA / Cityscapes on-disk formats.

cicld adapts a segmenter from a labelled synthetic domain to an unlabelled real one. Users have
GTA5, SYNTHIA and Cityscapes; a test suite, a CPU-only demo and a new user's first run do not.
This package renders a small street world twice:

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

The package, by concern:

- :mod:`~cicld.data.toy.world`: the label codes, and each domain's scene statistics and colours;
- :mod:`~cicld.data.toy.canvas`: rasterising in perspective (a pinhole camera and its primitives);
- :mod:`~cicld.data.toy.scene`: the street grammar, which samples one street and draws it;
- :mod:`~cicld.data.toy.photo`: photographing the target (textures, light, the camera's flaws);
- :mod:`~cicld.data.toy.render`: :func:`render_frame`, one frame of either domain from its seed;
- :mod:`~cicld.data.toy.generate`: :func:`generate_toy_pair`, the pair on disk (the layout, the
  seeds, resuming an interrupted run), and :func:`prepare_toy_pair`, which prepares it;
- :mod:`~cicld.data.toy.preview`: :func:`render_preview`, a picture of it.
"""

from cicld.data.toy.generate import (
    CITYSCAPES_FRAME,
    DEFAULT_NUM_SOURCE,
    DEFAULT_NUM_TARGET_TRAIN,
    DEFAULT_NUM_TARGET_VAL,
    MANIFEST,
    SOURCE_FORMATS,
    TOY_VERSION,
    TRAIN_CITIES,
    VAL_CITY,
    ToyPairSummary,
    cityscapes_stem,
    generate_toy_pair,
    is_toy_target,
    prepare_toy_pair,
    toy_pair_datasets,
)
from cicld.data.toy.preview import render_preview
from cicld.data.toy.render import DEFAULT_SIZE, ToyFrame, frame_seed, render_frame

__all__ = [
    "CITYSCAPES_FRAME",
    "DEFAULT_NUM_SOURCE",
    "DEFAULT_NUM_TARGET_TRAIN",
    "DEFAULT_NUM_TARGET_VAL",
    "DEFAULT_SIZE",
    "MANIFEST",
    "SOURCE_FORMATS",
    "TOY_VERSION",
    "TRAIN_CITIES",
    "VAL_CITY",
    "ToyFrame",
    "ToyPairSummary",
    "cityscapes_stem",
    "frame_seed",
    "generate_toy_pair",
    "is_toy_target",
    "prepare_toy_pair",
    "render_frame",
    "render_preview",
    "toy_pair_datasets",
]
