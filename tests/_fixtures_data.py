"""Tiny prepared datasets in the real GTA5 / SYNTHIA / Cityscapes layouts, for the data tests.

Each frame is given by its trainId label map; the helpers write the RGB image, a raw label in
the dataset's own format (so ``list_samples`` pairs it) and the prepared ``*_labelTrainIds.png``.
The image encodes the label: red = ``label * 13 % 256`` (a bijection on 0..18 and 255), so a
test can check that image and label went through the same crop/flip.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cicld.data.labels import cityscapes_id_palette, train_ids_to_cityscapes_ids
from cicld.data.layouts import CLASS_STATS_FILE, list_samples
from cicld.data.pngio import read_image, write_image, write_png16


def image_for(label: np.ndarray) -> np.ndarray:
    """An RGB image whose red channel encodes ``label`` and green/blue the pixel position."""
    h, w = label.shape
    red = (label.astype(np.int64) * 13 % 256).astype(np.uint8)
    green = np.broadcast_to((np.arange(w) * 7 % 256).astype(np.uint8), (h, w))
    blue = np.broadcast_to((np.arange(h)[:, None] * 11 % 256).astype(np.uint8), (h, w))
    return np.stack([red, green, blue], axis=-1)


def label_from_red(red: np.ndarray) -> np.ndarray:
    """Invert :func:`image_for`'s red channel (uint8 values) back to trainIds."""
    table = {int(k) * 13 % 256: k for k in list(range(19)) + [255]}
    return np.vectorize(lambda v: table.get(int(v), -1))(red)


def stripes(height: int, width: int, classes=(0, 1, 2, 13, 255), offset: int = 0) -> np.ndarray:
    """A label of vertical stripes, one class per 4-column band, cycling through ``classes``."""
    band = (np.arange(width) // 4 + offset) % len(classes)
    return np.broadcast_to(np.asarray(classes, dtype=np.uint8)[band], (height, width)).copy()


def make_gta5(root: Path, labels: dict[str, np.ndarray]) -> Path:
    for name, label in labels.items():
        write_image(root / "images" / f"{name}.png", image_for(label))
        # GTA5's raw labels are palette PNGs whose indices are Cityscapes label ids.
        write_image(
            root / "labels" / f"{name}.png", train_ids_to_cityscapes_ids(label), palette=cityscapes_id_palette()
        )
        write_image(root / "labels" / f"{name}_labelTrainIds.png", label.astype(np.uint8))
    return root


def make_synthia(root: Path, labels: dict[str, np.ndarray]) -> Path:
    for name, label in labels.items():
        write_image(root / "RGB" / f"{name}.png", image_for(label))
        write_png16(root / "GT" / "LABELS" / f"{name}.png", np.zeros(label.shape + (3,), np.uint16))
        write_image(root / "GT" / "LABELS" / f"{name}_labelTrainIds.png", label.astype(np.uint8))
    return root


def make_cityscapes(root: Path, split: str, labels: dict[str, np.ndarray], with_labels: bool = True) -> Path:
    """``labels`` keys are ``"<city>/<city>_<seq>_<frame>"``."""
    for key, label in labels.items():
        write_image(root / "leftImg8bit" / split / f"{key}_leftImg8bit.png", image_for(label))
        if with_labels:
            write_image(root / "gtFine" / split / f"{key}_gtFine_labelIds.png", train_ids_to_cityscapes_ids(label))
            write_image(root / "gtFine" / split / f"{key}_gtFine_labelTrainIds.png", label.astype(np.uint8))
    return root


def write_class_stats(root: Path, dataset: str, split: str = "train") -> Path:
    """``sample_class_stats.json`` as ``cicld prepare-data`` / DAFormer write it."""
    stats = []
    for sample in list_samples(root, dataset, split).samples:
        counts = np.bincount(read_image(sample.train_ids).ravel(), minlength=256)
        entry = {"file": sample.train_ids.relative_to(root).as_posix()}
        entry.update({str(c): int(n) for c, n in enumerate(counts[:19]) if n > 0})
        stats.append(entry)
    path = root / CLASS_STATS_FILE
    path.write_text(json.dumps(stats))
    return path
