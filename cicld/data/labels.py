"""Cityscapes classes, colours and the label-id maps of GTA5, SYNTHIA and Cityscapes.

Everything cicld trains on and reports is in Cityscapes *trainIds*: 19 classes, 0..18, and
:data:`IGNORE_INDEX` (255) for pixels that count nowhere. The maps below are those of
``cityscapesscripts`` (Cityscapes, GTA5) and of the DAFormer/HRDA/MIC converters (SYNTHIA);
``tests/test_labels.py`` checks them against ``cityscapesscripts``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

IGNORE_INDEX = 255


class CityscapesLabel(NamedTuple):
    name: str
    id: int  # the "labelId" stored in gtFine_labelIds.png and in GTA5's palette indices
    train_id: int  # 0..18, or 255 for classes that are not evaluated
    color: tuple[int, int, int]


# The 34 Cityscapes labels (plus the license plate, id -1), as in cityscapesscripts.helpers.labels.
CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = (
    CityscapesLabel("unlabeled", 0, 255, (0, 0, 0)),
    CityscapesLabel("ego vehicle", 1, 255, (0, 0, 0)),
    CityscapesLabel("rectification border", 2, 255, (0, 0, 0)),
    CityscapesLabel("out of roi", 3, 255, (0, 0, 0)),
    CityscapesLabel("static", 4, 255, (0, 0, 0)),
    CityscapesLabel("dynamic", 5, 255, (111, 74, 0)),
    CityscapesLabel("ground", 6, 255, (81, 0, 81)),
    CityscapesLabel("road", 7, 0, (128, 64, 128)),
    CityscapesLabel("sidewalk", 8, 1, (244, 35, 232)),
    CityscapesLabel("parking", 9, 255, (250, 170, 160)),
    CityscapesLabel("rail track", 10, 255, (230, 150, 140)),
    CityscapesLabel("building", 11, 2, (70, 70, 70)),
    CityscapesLabel("wall", 12, 3, (102, 102, 156)),
    CityscapesLabel("fence", 13, 4, (190, 153, 153)),
    CityscapesLabel("guard rail", 14, 255, (180, 165, 180)),
    CityscapesLabel("bridge", 15, 255, (150, 100, 100)),
    CityscapesLabel("tunnel", 16, 255, (150, 120, 90)),
    CityscapesLabel("pole", 17, 5, (153, 153, 153)),
    CityscapesLabel("polegroup", 18, 255, (153, 153, 153)),
    CityscapesLabel("traffic light", 19, 6, (250, 170, 30)),
    CityscapesLabel("traffic sign", 20, 7, (220, 220, 0)),
    CityscapesLabel("vegetation", 21, 8, (107, 142, 35)),
    CityscapesLabel("terrain", 22, 9, (152, 251, 152)),
    CityscapesLabel("sky", 23, 10, (70, 130, 180)),
    CityscapesLabel("person", 24, 11, (220, 20, 60)),
    CityscapesLabel("rider", 25, 12, (255, 0, 0)),
    CityscapesLabel("car", 26, 13, (0, 0, 142)),
    CityscapesLabel("truck", 27, 14, (0, 0, 70)),
    CityscapesLabel("bus", 28, 15, (0, 60, 100)),
    CityscapesLabel("caravan", 29, 255, (0, 0, 90)),
    CityscapesLabel("trailer", 30, 255, (0, 0, 110)),
    CityscapesLabel("train", 31, 16, (0, 80, 100)),
    CityscapesLabel("motorcycle", 32, 17, (0, 0, 230)),
    CityscapesLabel("bicycle", 33, 18, (119, 11, 32)),
    CityscapesLabel("license plate", -1, -1, (0, 0, 142)),
)

_EVALUATED = sorted((lab for lab in CITYSCAPES_LABELS if 0 <= lab.train_id < 255), key=lambda lab: lab.train_id)

#: The 19 evaluated classes, indexed by trainId.
CLASSES: tuple[str, ...] = tuple(lab.name for lab in _EVALUATED)
#: Official Cityscapes colour of each trainId.
PALETTE: tuple[tuple[int, int, int], ...] = tuple(lab.color for lab in _EVALUATED)
#: Cityscapes labelId of each trainId (the inverse map, used for submission-format exports).
TRAINID_TO_LABELID: tuple[int, ...] = tuple(lab.id for lab in _EVALUATED)
NUM_CLASSES = len(CLASSES)

#: Cityscapes (and GTA5) labelId -> trainId; every id not listed maps to IGNORE_INDEX.
CITYSCAPES_ID_TO_TRAINID: dict[int, int] = {lab.id: lab.train_id for lab in _EVALUATED}

#: SYNTHIA-RAND-CITYSCAPES class id -> trainId, as in DAFormer/HRDA/MIC's ``synthia.py``.
#: SYNTHIA also defines terrain (16), truck (18) and train (20); they are kept so that data
#: prepared here equals DAFormer's, though SYNTHIA has (almost) no such pixels, which is why
#: SYNTHIA->Cityscapes reports mIoU16 without them. 0 void, 13 parking slot, 14 road-work and
#: 22 lane marking map to IGNORE_INDEX.
SYNTHIA_ID_TO_TRAINID: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9,
    1: 10, 10: 11, 17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18,
}  # fmt: skip

#: Class subsets of the SYNTHIA->Cityscapes protocol, as trainIds.
MIOU16_CLASSES: tuple[int, ...] = tuple(i for i in range(NUM_CLASSES) if CLASSES[i] not in ("terrain", "truck", "train"))
MIOU13_CLASSES: tuple[int, ...] = tuple(i for i in MIOU16_CLASSES if CLASSES[i] not in ("wall", "fence", "pole"))


def _lookup_table(mapping: dict[int, int], size: int) -> np.ndarray:
    table = np.full(size, IGNORE_INDEX, dtype=np.uint8)
    for source_id, train_id in mapping.items():
        table[source_id] = train_id
    return table


_CITYSCAPES_LUT = _lookup_table(CITYSCAPES_ID_TO_TRAINID, 256)
_SYNTHIA_LUT = _lookup_table(SYNTHIA_ID_TO_TRAINID, 65536)
_TRAINID_TO_LABELID_LUT = _lookup_table(dict(enumerate(TRAINID_TO_LABELID)), 256)
_TRAINID_TO_LABELID_LUT[IGNORE_INDEX] = 0  # "unlabeled": what the Cityscapes server expects
_COLOR_LUT = np.zeros((256, 3), dtype=np.uint8)
_COLOR_LUT[:NUM_CLASSES] = PALETTE


def cityscapes_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map a Cityscapes/GTA5 labelId array (any integer dtype) to uint8 trainIds."""
    return _CITYSCAPES_LUT[np.clip(label_ids, 0, 255).astype(np.intp)]


def synthia_ids_to_train_ids(class_ids: np.ndarray) -> np.ndarray:
    """Map SYNTHIA class ids (the 16-bit red channel of ``GT/LABELS``) to uint8 trainIds."""
    return _SYNTHIA_LUT[np.clip(class_ids, 0, 65535).astype(np.intp)]


def train_ids_to_cityscapes_ids(train_ids: np.ndarray) -> np.ndarray:
    """Map trainIds back to Cityscapes labelIds (the benchmark server's format); 255 -> 0."""
    return _TRAINID_TO_LABELID_LUT[train_ids.astype(np.intp)]


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 image in the official Cityscapes colours; ignore pixels are black."""
    return _COLOR_LUT[train_ids.astype(np.intp)]


def cityscapes_id_palette() -> list[int]:
    """The flat 768-entry palette of GTA5 label PNGs: index = labelId, colour = its Cityscapes colour."""
    palette = [0] * 768
    for lab in CITYSCAPES_LABELS:
        if lab.id >= 0:
            palette[3 * lab.id : 3 * lab.id + 3] = lab.color
    return palette
