"""Classes: Cityscapes' 19, a user's own (:class:`ClassList`), and the label maps of GTA5, SYNTHIA and Cityscapes.

Everything cicld trains on and reports is in *trainIds*: the classes' positions in a
:class:`ClassList` (0..K-1), and :data:`IGNORE_INDEX` (255) for pixels that count nowhere. With no
class list of the user's, those are Cityscapes' 19 classes (:data:`CITYSCAPES`, whose label maps
are those of ``cityscapesscripts`` for Cityscapes and GTA5, and of the DAFormer/HRDA/MIC
converters for SYNTHIA, :data:`SYNTHIA`); ``tests/test_labels.py`` checks them against
``cityscapesscripts``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from cicld.errors import DataError

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
    3: 0,
    4: 1,
    2: 2,
    21: 3,
    5: 4,
    7: 5,
    15: 6,
    9: 7,
    6: 8,
    16: 9,
    1: 10,
    10: 11,
    17: 12,
    8: 13,
    18: 14,
    19: 15,
    20: 16,
    12: 17,
    11: 18,
}

#: Class subsets of the SYNTHIA->Cityscapes protocol, as trainIds.
MIOU16_CLASSES: tuple[int, ...] = tuple(
    i for i in range(NUM_CLASSES) if CLASSES[i] not in ("terrain", "truck", "train")
)
MIOU13_CLASSES: tuple[int, ...] = tuple(i for i in MIOU16_CLASSES if CLASSES[i] not in ("wall", "fence", "pole"))


MAX_CLASSES = IGNORE_INDEX  # trainIds 0..254: 255 is the ignore index
MAX_LABEL_VALUE = 0xFFFF  # raw label values: 8- or 16-bit label images


@dataclass(frozen=True)
class ClassList:
    """The classes a model predicts, and how raw label files name them: one object for every chore.

    ``names[i]``, ``colors[i]`` and ``values[i]`` describe trainId ``i``: its name, its RGB colour
    (predictions, colour labels, pictures) and the raw label values (ids in a label file) that
    map to it. ``ignore`` is the raw value of pixels that count nowhere (trainId 255; written
    back for them, e.g. in predict's ``_labelIds``), ``ignore_color`` the colour that means the
    same in a colour label (None: a colour label may only hold class colours). Raw values that
    are neither a class's nor ``ignore`` are *unknown*: a converter of the user's own labels
    reports them (:meth:`unknown_values`) rather than guess. :data:`CITYSCAPES` is the default.
    """

    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    values: tuple[tuple[int, ...], ...]
    ignore: int = IGNORE_INDEX
    ignore_color: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        def fail(message: str) -> None:
            raise DataError(message)

        if not 1 <= len(self.names) <= MAX_CLASSES:
            fail(f"a class list needs 1 to {MAX_CLASSES} classes, got {len(self.names)}")
        if not len(self.names) == len(self.colors) == len(self.values):
            fail("every class needs a name, a colour and its label values")
        for name in self.names:
            if not isinstance(name, str) or not name.strip():
                fail(f"class names must be non-empty strings, got {name!r}")
        for color in (*self.colors, *([self.ignore_color] if self.ignore_color is not None else [])):
            if len(color) != 3 or not all(_is_int(c) and 0 <= c <= 255 for c in color):
                fail(f"a colour is three numbers 0..255 (red, green, blue), got {list(color)}")
        for value in (*(v for values in self.values for v in values), self.ignore):
            if not (_is_int(value) and 0 <= value <= MAX_LABEL_VALUE):
                fail(f"label values are integers 0..{MAX_LABEL_VALUE}, got {value!r}")
        _require_unique("class name", self.names)
        _require_unique("colour", [tuple(c) for c in self.colors], self.names, self.ignore_color, "ignore_color")
        owners = [(v, name) for name, values in zip(self.names, self.values) for v in values]
        _require_unique("label value", [v for v, _ in owners], [n for _, n in owners], self.ignore, "ignore")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def is_cityscapes(self) -> bool:
        """Whether these are Cityscapes' 19 classes (in their order), which the mIoU16/13 protocols name."""
        return self.names == CLASSES

    # ------------------------------------------------------------------ label maps
    @functools.cached_property
    def _train_id_table(self) -> np.ndarray:
        table = np.full(MAX_LABEL_VALUE + 1, IGNORE_INDEX, dtype=np.uint8)
        for train_id, values in enumerate(self.values):
            table[list(values)] = train_id
        return table

    def to_train_ids(self, raw: np.ndarray) -> np.ndarray:
        """Raw label values (any integer dtype) as uint8 trainIds; every value not a class's is 255."""
        return self._train_id_table[np.clip(raw, 0, MAX_LABEL_VALUE).astype(np.intp)]

    def unknown_values(self, raw: np.ndarray) -> list[int]:
        """The values of ``raw`` that are neither a class's nor ``ignore``."""
        present = np.unique(raw)
        in_range = (present >= 0) & (present <= MAX_LABEL_VALUE)
        known = (present == self.ignore) | in_range & (self.to_train_ids(present) != IGNORE_INDEX)
        return [int(v) for v in present[~known]]

    def colors_to_train_ids(self, rgb: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        """An (H, W, 3) colour label as uint8 trainIds, and the colours that are neither a class's
        nor ``ignore_color`` (their pixels are 255)."""
        codes = _color_code(*(rgb[..., channel].astype(np.int64) for channel in range(3)))
        present, inverse = np.unique(codes, return_inverse=True)
        by_code = {_color_code(*color): train_id for train_id, color in enumerate(self.colors)}
        ignore = None if self.ignore_color is None else _color_code(*self.ignore_color)
        ids = np.array([by_code.get(int(code), IGNORE_INDEX) for code in present], dtype=np.uint8)
        known = {*by_code, ignore}
        unknown = [(code >> 16, code >> 8 & 255, code & 255) for code in map(int, present) if code not in known]
        return ids[inverse.reshape(codes.shape)], unknown

    def to_raw_ids(self, train_ids: np.ndarray) -> np.ndarray:
        """trainIds as raw label values (each class's first), 255 as ``ignore``: uint8, or uint16
        where a value needs it."""
        wide = max(self.ignore, *(v[0] for v in self.values)) > 255
        table = np.full(256, self.ignore, dtype=np.uint16 if wide else np.uint8)
        table[: len(self)] = [v[0] for v in self.values]
        return table[train_ids.astype(np.intp)]

    def colorize(self, train_ids: np.ndarray) -> np.ndarray:
        """An (H, W, 3) uint8 image in the class colours; 255 (and anything not a class) in
        ``ignore_color``, else black."""
        table = np.zeros((256, 3), dtype=np.uint8)
        table[: len(self)] = self.colors
        table[len(self) :] = self.ignore_color or (0, 0, 0)
        return table[train_ids.astype(np.intp)]

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        """The JSON form :meth:`from_dict` reads (what ``--classes FILE`` holds)."""
        classes = zip(self.names, self.colors, self.values)
        data: dict = {
            "classes": [{"name": name, "color": list(color), "values": list(ids)} for name, color, ids in classes],
            "ignore": self.ignore,
        }
        if self.ignore_color is not None:
            data["ignore_color"] = list(self.ignore_color)
        return data

    @classmethod
    def from_dict(cls, data: object) -> ClassList:
        """A class list from its JSON form; :class:`DataError` (one line) for anything malformed::

            {"classes": [{"name": "road", "color": [128, 64, 128], "values": [1, 7]}, ...],
             "ignore": 255, "ignore_color": [0, 0, 0]}

        ``values`` may be left out: the class's position in the list. ``ignore`` defaults to 255,
        ``ignore_color`` to none.
        """
        if not isinstance(data, dict) or not isinstance(data.get("classes"), list):
            raise DataError('a class list is a JSON object with a "classes" list')
        _require_keys("the class list", data, {"classes"}, {"ignore", "ignore_color"})
        names, colors, values = [], [], []
        for index, entry in enumerate(data["classes"]):
            if not isinstance(entry, dict):
                raise DataError(f"class {index} is not a JSON object with a name and a colour")
            _require_keys(f"class {index}", entry, {"name", "color"}, {"values"})
            names.append(entry["name"])
            colors.append(_as_tuple(entry["color"], f"the colour of {entry['name']!r}"))
            values.append(_as_tuple(entry.get("values", [index]), f"the values of {entry['name']!r}"))
            if not values[-1]:
                raise DataError(f'{entry["name"]!r} has no label values; leave "values" out to use its position')
        ignore_color = data.get("ignore_color")
        return cls(
            tuple(names),
            tuple(colors),
            tuple(values),
            data.get("ignore", IGNORE_INDEX),
            None if ignore_color is None else _as_tuple(ignore_color, "ignore_color"),
        )

    @classmethod
    def read(cls, path: str | Path) -> ClassList:
        """The class list in the JSON file ``path``; a one-line :class:`DataError` naming it otherwise."""
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise DataError(f"class list {path} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"class list {path} is not readable JSON ({exc})") from None
        except DataError as exc:
            raise DataError(f"class list {path}: {exc}") from None

    def difference(self, other: ClassList, these: str, those: str) -> str | None:
        """How ``other`` names other classes than this list (trainIds that mean other things), said
        of ``these`` (this list's owner) and ``those``; None where the names agree, position by
        position (colours and raw values may differ)."""
        if self.names == other.names:
            return None
        if len(self) != len(other):
            return f"{these} name {len(self)} classes ({_names(self)}) and {those} {len(other)} ({_names(other)})"
        index = next(i for i, (a, b) in enumerate(zip(self.names, other.names)) if a != b)
        return f"class {index} is {self.names[index]!r} for {these} but {other.names[index]!r} for {those}"


def _color_code(red, green, blue):
    """One integer per RGB colour (numbers or arrays), to look colours up at once."""
    return (red << 16) | (green << 8) | blue


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_tuple(value: object, what: str) -> tuple:
    if not isinstance(value, list):
        raise DataError(f"{what} must be a list, got {value!r}")
    return tuple(value)


def _names(classes: ClassList) -> str:
    shown = ", ".join(classes.names[:6])
    return shown + (", …" if len(classes) > 6 else "")


def _require_keys(what: str, data: dict, required: set[str], optional: set[str]) -> None:
    missing, unknown = sorted(required - set(data)), sorted(set(data) - required - optional)
    if missing:
        raise DataError(f"{what} has no {', '.join(repr(k) for k in missing)}")
    if unknown:
        expected = ", ".join(sorted(required | optional))
        raise DataError(f"{what} has unknown keys {', '.join(repr(k) for k in unknown)} (expected {expected})")


def _require_unique(what: str, items: list, owners: list | None = None, reserved=None, reserved_key: str = "") -> None:
    """One line naming the first of ``items`` listed twice (for two of their ``owners``, or for one
    and as the list's ``reserved_key``, whose value is ``reserved``)."""
    seen: dict = {}
    for item, owner in zip(items, owners or items):
        if reserved is not None and item == reserved:
            raise DataError(f"{what} {_shown(item)} is listed for {owner!r} and is also the {reserved_key!r}")
        if item in seen:
            if owners is None:
                raise DataError(f"{what} {_shown(item)} is listed twice")
            twice = f"twice for {owner!r}" if seen[item] == owner else f"for both {seen[item]!r} and {owner!r}"
            raise DataError(f"{what} {_shown(item)} is listed {twice}")
        seen[item] = owner


def _shown(item) -> str:
    return str(list(item)) if isinstance(item, tuple) else repr(item)


#: Cityscapes' 19 classes as GTA5 and Cityscapes label files name them (labelIds; 0 "unlabeled",
#: and every other label id, is ignored): the default everywhere.
CITYSCAPES = ClassList(CLASSES, PALETTE, tuple((label_id,) for label_id in TRAINID_TO_LABELID), ignore=0)
#: The same classes as SYNTHIA's 16-bit labels name them (DAFormer's map).
SYNTHIA = ClassList(
    CLASSES, PALETTE, tuple((s,) for s, _ in sorted(SYNTHIA_ID_TO_TRAINID.items(), key=lambda kv: kv[1])), ignore=0
)


def cityscapes_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map a Cityscapes/GTA5 labelId array (any integer dtype) to uint8 trainIds."""
    return CITYSCAPES.to_train_ids(label_ids)


def synthia_ids_to_train_ids(class_ids: np.ndarray) -> np.ndarray:
    """Map SYNTHIA class ids (the 16-bit red channel of ``GT/LABELS``) to uint8 trainIds."""
    return SYNTHIA.to_train_ids(class_ids)


def train_ids_to_cityscapes_ids(train_ids: np.ndarray) -> np.ndarray:
    """Map trainIds back to Cityscapes labelIds (the benchmark server's format); 255 -> 0."""
    return CITYSCAPES.to_raw_ids(train_ids)


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 image in the official Cityscapes colours; ignore pixels are black."""
    return CITYSCAPES.colorize(train_ids)


def cityscapes_id_palette() -> list[int]:
    """The flat 768-entry palette of GTA5 label PNGs: index = labelId, colour = its Cityscapes colour."""
    palette = [0] * 768
    for lab in CITYSCAPES_LABELS:
        if lab.id >= 0:
            palette[3 * lab.id : 3 * lab.id + 3] = lab.color
    return palette
