"""Where each dataset keeps its files, and how to pair images with labels.

One place knows the on-disk layouts of GTA5, SYNTHIA-RAND-CITYSCAPES, Cityscapes, a user's own
labelled frames (``pairs``) and a plain folder of images (``images``, a target without labels);
both ``prepare-data`` and the torch datasets find their files through it:

=========== ============================================ =====================================================
dataset     image                                        label (raw -> prepared trainIds)
=========== ============================================ =====================================================
gta5        ``images/00001.png``                         ``labels/00001.png`` -> ``labels/00001_labelTrainIds.png``
synthia     ``RGB/0000001.png``                          ``GT/LABELS/0000001.png`` -> ``..._labelTrainIds.png``
cityscapes  ``leftImg8bit/<split>/<city>/X_leftImg8bit.png`` ``gtFine/<split>/<city>/X_gtFine_labelIds.png``
                                                         -> ``X_gtFine_labelTrainIds.png``
pairs       ``images/<sub>/x.jpg`` (PNG or JPEG)         ``labels/<sub>/x.png`` -> ``labels/<sub>/x_labelTrainIds.png``
images      any image below the folder                   (none)
=========== ============================================ =====================================================

A ``pairs`` folder pairs images and labels by their path below ``images/`` and ``labels/``
without the extension, subfolders included; ``prepare-data pairs`` records its class list in it
(``classes.json``). A target folder is told apart by what is there (:func:`target_layout`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cicld.data.labels import CITYSCAPES, ClassList
from cicld.errors import DataError

DatasetName = Literal["gta5", "synthia", "cityscapes", "pairs"]
#: The labelled formats ``prepare-data`` converts and the datasets read.
DATASETS: tuple[str, ...] = ("gta5", "synthia", "cityscapes", "pairs")
#: A folder of images without labels: a target (``list_samples(root, IMAGES)``).
IMAGES = "images"
TRAIN_IDS_SUFFIX = "_labelTrainIds.png"
CLASS_STATS_FILE = "sample_class_stats.json"
#: The class list a ``pairs`` folder was prepared with (:class:`~cicld.data.labels.ClassList`'s JSON).
CLASS_LIST_FILE = "classes.json"
#: What counts as an image in a folder of images or a pairs folder's ``images/`` (what ``predict`` reads).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"})
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
    return Path(raw_label_name).stem + TRAIN_IDS_SUFFIX


def default_root(dataset: str) -> Path:
    return Path("data") / dataset


def prepare_command(dataset: str, root: Path) -> str:
    """The command that prepares ``root``, for hints (a pairs folder also needs its class list)."""
    return f"`cicld prepare-data {dataset} {root}{' --classes FILE' if dataset == 'pairs' else ''}`"


def dataset_classes(root: str | Path, dataset: str) -> ClassList:
    """The classes a prepared dataset's trainIds name: Cityscapes' 19, or those of the class list a
    pairs folder was prepared with (its ``classes.json``)."""
    if dataset != "pairs":
        return CITYSCAPES
    path = Path(root) / CLASS_LIST_FILE
    if not path.is_file():
        hint = prepare_command(dataset, Path(root))
        raise DataError(f"{root} is not prepared (no {CLASS_LIST_FILE}); run {hint} first")
    return ClassList.read(path)


def target_layout(root: str | Path) -> str:
    """What a target folder holds, told apart by what is there: ``cityscapes`` (``leftImg8bit/``;
    also a folder that does not exist, so that its error is Cityscapes' as it always was),
    ``pairs`` (``images/`` and ``labels/``) or a plain folder of images (:data:`IMAGES`)."""
    root = Path(root)
    if (root / "leftImg8bit").is_dir() or not root.is_dir():
        return "cityscapes"
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "pairs"
    return IMAGES


def labelled_layout(root: str | Path, what: str) -> str:
    """The layout of a folder of labelled frames (``--val-root``, ``evaluate --data``): cityscapes
    or pairs; a one-line error naming ``what`` gave it otherwise."""
    layout = target_layout(root)
    if not Path(root).is_dir():
        raise DataError(f"{what} {root} does not exist")
    if layout == IMAGES:
        raise DataError(
            f"{what} {root} holds no labels: give a prepared pairs folder (images/, labels/) or a Cityscapes folder"
        )
    return layout


def list_samples(root: str | Path, dataset: str, split: str = "train") -> Listing:
    """List a dataset's frames; raise :class:`DataError` naming what is missing if it is not one.

    ``split`` matters for Cityscapes only ("train" or "val"); the others are one pool. A folder of
    images (:data:`IMAGES`) lists every image below it, its frames named by their path in it.
    """
    root = Path(root)
    if not root.is_dir():
        what = "a folder of images" if dataset == IMAGES else f"a {dataset} dataset"
        raise DataError(f"{root} does not exist (or is not a folder); expected {what} there")
    if dataset == "gta5":
        return _pair_by_stem(root, dataset, root / "images", root / "labels")
    if dataset == "synthia":
        return _pair_by_stem(root, dataset, root / "RGB", root / "GT" / "LABELS")
    if dataset == "cityscapes":
        return _list_cityscapes(root, split)
    if dataset == "pairs":
        return _list_pairs(root)
    if dataset == IMAGES:
        return _list_images(root)
    raise DataError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")


def _pngs(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.glob("*.png") if not p.name.startswith(".") and not p.name.endswith(TRAIN_IDS_SUFFIX)
    )


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
    return _paired(images, labels)


def _paired(images: dict[str, Path], labels: dict[str, Path], unlabelled: bool = False) -> Listing:
    """The frames of ``images`` and ``labels`` that share a name (``unlabelled``: every image, its
    label None where it has none, as Cityscapes' are listed), and the files without a partner."""
    names = images.keys() if unlabelled else images.keys() & labels.keys()
    samples = [Sample(stem, images[stem], labels.get(stem)) for stem in sorted(names)]
    return Listing(
        samples,
        images_without_label=[images[s] for s in sorted(images.keys() - labels.keys())],
        labels_without_image=[labels[s] for s in sorted(labels.keys() - images.keys())],
    )


def _images_below(folder: Path, suffixes=IMAGE_SUFFIXES) -> list[Path]:
    """The files below ``folder`` (recursively, sorted) with one of ``suffixes``, in any case; hidden
    files and folders and prepared trainIds files are left out."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in suffixes
        and p.is_file()
        and not p.name.endswith(TRAIN_IDS_SUFFIX)
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _by_relative_stem(root: Path, folder: Path, files: list[Path]) -> dict[str, Path]:
    """``files`` by their path below ``folder`` without the extension (``sub/x``); one line naming
    both where two files share it (``x.png`` and ``x.jpg``), for they would be one frame."""
    found: dict[str, Path] = {}
    for path in files:
        stem = path.relative_to(folder).with_suffix("").as_posix()
        if stem in found:
            raise DataError(f"{found[stem]} and {path} are one frame ({stem}) of {root}; keep one of them")
        found[stem] = path
    return found


def _list_pairs(root: Path) -> Listing:
    image_dir, label_dir = root / "images", root / "labels"
    _require_dirs(root, "pairs", image_dir, label_dir)
    images = _by_relative_stem(root, image_dir, _images_below(image_dir))
    # JPEGs are listed to be refused by name (a lossy label's ids would be silently wrong), not skipped.
    labels = _by_relative_stem(root, label_dir, _images_below(label_dir, {".png", ".jpg", ".jpeg"}))
    if not images:
        raise DataError(f"{root} is not a pairs dataset: images/ has no images")
    return _paired(images, labels, unlabelled=True)  # a target's images need no label


def _list_images(root: Path) -> Listing:
    images = _images_below(root)
    if not images:
        raise DataError(f"{root} has no images (PNG, JPEG... searched in every subfolder)")
    return Listing([Sample(p.relative_to(root).as_posix(), p, None) for p in images], [], [])


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
        raise DataError(
            f"{root} is not a cityscapes dataset: leftImg8bit/{split}/<city>/ has no *_leftImg8bit.png images"
        )
    labels = (
        {
            str(p.relative_to(label_dir))[: -len("_gtFine_labelIds.png")]: p
            for p in sorted(label_dir.glob("*/*_gtFine_labelIds.png"))
        }
        if label_dir.is_dir()
        else {}
    )
    samples = [Sample(f"{split}/{key}", images[key], labels.get(key)) for key in sorted(images)]
    return Listing(
        samples,
        images_without_label=[images[k] for k in sorted(images.keys() - labels.keys())],
        labels_without_image=[labels[k] for k in sorted(labels.keys() - images.keys())],
    )
