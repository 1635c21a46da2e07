"""One frame: :func:`render_frame` draws a street of either domain from the frame's own seed
(:func:`frame_seed`) and returns its image, labels and instances (:class:`ToyFrame`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cicld.data.labels import SYNTHIA_ID_TO_TRAINID, TRAINID_TO_LABELID, cityscapes_ids_to_train_ids
from cicld.data.toy.photo import _photograph
from cicld.data.toy.scene import _Scene
from cicld.data.toy.world import _CODE_TO_LABELID, _WORLDS, generic_world

DEFAULT_SIZE = (256, 128)

_TRAINID_TO_SYNTHIA = {train_id: synthia_id for synthia_id, train_id in SYNTHIA_ID_TO_TRAINID.items()}

_DOMAINS = {"source": 0, "target": 1, "generic": 2}
_SPLITS = {"train": 0, "val": 1}


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


def render_frame(
    domain: str, *, seed: int = 0, split: str = "train", index: int = 0, size: tuple[int, int] = DEFAULT_SIZE
) -> ToyFrame:
    """Render frame ``index`` of ``domain`` ("source", "target" or "generic": a world of random
    colours, :func:`~cicld.data.toy.world.generic_world`) and ``split`` ("train"/"val")."""
    if domain not in _DOMAINS or split not in _SPLITS:
        raise ValueError(f"domain must be one of {sorted(_DOMAINS)} and split one of {sorted(_SPLITS)}")
    width, height = size
    rng = np.random.default_rng(frame_seed(seed, domain, split, index))
    world = generic_world(rng) if domain == "generic" else _WORLDS[domain]
    scene = _Scene(rng, world, width, height)
    scene.compose()
    if scene.world.photo:
        _photograph(scene)
    else:
        scene.cv.img *= scene.tone
    image = np.clip(scene.cv.img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return ToyFrame(image, _CODE_TO_LABELID[scene.cv.label], scene.cv.inst.copy())
