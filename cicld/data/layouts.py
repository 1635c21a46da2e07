"""Where each dataset keeps its files, and how to pair images with labels.

One place knows the on-disk layouts of GTA5, SYNTHIA-RAND-CITYSCAPES and Cityscapes; both
``prepare-data`` and the torch datasets find their files through it:

=========== ============================================ =====================================================
dataset     image                                        label (raw -> prepared trainIds)
=========== ============================================ =====================================================
gta5        ``images/00001.png``                         ``labels/00001.png`` -> ``labels/00001_labelTrainIds.png``
synthia     ``RGB/0000001.png``                          ``GT/LABELS/0000001.png`` -> ``..._labelTrainIds.png``
cityscapes  ``leftImg8bit/<split>/<city>/X_leftImg8bit.png`` ``gtFine/<split>/<city>/X_gtFine_labelIds.png``
                                                         -> ``X_gtFine_labelTrainIds.png``
=========== ============================================ =====================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cicld.errors import DataError

DatasetName = Literal["gta5", "synthia", "cityscapes"]
DATASETS: tuple[str, ...] = ("gta5", "synthia", "cityscapes")
TRAIN_IDS_SUFFIX = "_labelTrainIds.png"
CLASS_STATS_FILE = "sample_class_stats.json"
#: The frames ``prepare-data`` left out on purpose (``--on-size-mismatch skip``): their names, one
#: JSON list in the dataset root. The datasets leave them out too, so they never ask for them.
SKIPPED_FRAMES_FILE = "skipped_frames.json"


@dataclass(frozen=True)
class Sample:
    """One frame: its image, its raw label (None where there is none) and the trainId file."""

    name: str  # stable id, relative to the dataset root, e.g. "00001" or "train/aachen/aachen_000000_000019"
    image: Path
    label: Path | None

    @property
    def train_ids(self) -> Path | None:
        if self.label is None:
            return None
        return self.label.with_name(train_ids_name(self.label.name))


@dataclass(frozen=True)
class Listing:
    """The frames found in a dataset folder, and the files that have no partner."""

    samples: list[Sample]
    images_without_label: list[Path]
    labels_without_image: list[Path]


def train_ids_name(raw_label_name: str) -> str:
    """``00001.png`` -> ``00001_labelTrainIds.png``; ``X_gtFine_labelIds.png`` -> ``X_gtFine_labelTrainIds.png``."""
    if raw_label_name.endswith("_labelIds.png"):
        return raw_label_name[: -len("_labelIds.png")] + TRAIN_IDS_SUFFIX
    return raw_label_name[: -len(".png")] + TRAIN_IDS_SUFFIX


def default_root(dataset: str) -> Path:
    return Path("data") / dataset


def list_samples(root: str | Path, dataset: str, split: str = "train") -> Listing:
    """List a dataset's frames; raise :class:`DataError` naming what is missing if it is not one.

    ``split`` matters for Cityscapes only ("train" or "val"); GTA5 and SYNTHIA are one pool.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} does not exist (or is not a folder); expected a {dataset} dataset there")
    if dataset == "gta5":
        return _pair_by_stem(root, dataset, root / "images", root / "labels")
    if dataset == "synthia":
        return _pair_by_stem(root, dataset, root / "RGB", root / "GT" / "LABELS")
    if dataset == "cityscapes":
        return _list_cityscapes(root, split)
    raise DataError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")


def _pngs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.png") if not p.name.startswith(".") and not p.name.endswith(TRAIN_IDS_SUFFIX))


def _require_dirs(root: Path, dataset: str, *folders: Path) -> None:
    missing = [str(f.relative_to(root)) + "/" for f in folders if not f.is_dir()]
    if missing:
        raise DataError(f"{root} is not a {dataset} dataset: missing {', '.join(missing)}")


def _pair_by_stem(root: Path, dataset: str, image_dir: Path, label_dir: Path) -> Listing:
    _require_dirs(root, dataset, image_dir, label_dir)
    images = {p.stem: p for p in _pngs(image_dir)}
    labels = {p.stem: p for p in _pngs(label_dir)}
    if not images:
        raise DataError(f"{root} is not a {dataset} dataset: {image_dir.relative_to(root)}/ has no PNG images")
    samples = [Sample(stem, images[stem], labels[stem]) for stem in sorted(images.keys() & labels.keys())]
    return Listing(
        samples,
        images_without_label=[images[s] for s in sorted(images.keys() - labels.keys())],
        labels_without_image=[labels[s] for s in sorted(labels.keys() - images.keys())],
    )


def _list_cityscapes(root: Path, split: str) -> Listing:
    if split not in ("train", "val", "test"):
        raise DataError(f"unknown Cityscapes split {split!r}; expected train, val or test")
    image_dir, label_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    _require_dirs(root, "cityscapes", image_dir)
    images = {
        str(p.relative_to(image_dir))[: -len("_leftImg8bit.png")]: p
        for p in sorted(image_dir.glob("*/*_leftImg8bit.png"))
    }
    if not images:
        raise DataError(f"{root} is not a cityscapes dataset: leftImg8bit/{split}/<city>/ has no *_leftImg8bit.png images")
    labels = (
        {str(p.relative_to(label_dir))[: -len("_gtFine_labelIds.png")]: p for p in sorted(label_dir.glob("*/*_gtFine_labelIds.png"))}
        if label_dir.is_dir()
        else {}
    )
    samples = [Sample(f"{split}/{key}", images[key], labels.get(key)) for key in sorted(images)]
    return Listing(
        samples,
        images_without_label=[images[k] for k in sorted(images.keys() - labels.keys())],
        labels_without_image=[labels[k] for k in sorted(labels.keys() - images.keys())],
    )
