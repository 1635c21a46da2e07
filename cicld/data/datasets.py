"""Torch datasets over *prepared* GTA5, SYNTHIA, Cityscapes and pairs folders, and folders of images.

* :class:`SourceDataset` — labelled frames for supervised training (resize, mmseg ``RandomCrop``
  with ``cat_max_ratio``, flip, normalise, pad), optionally drawn by rare-class sampling.
* :class:`TargetDataset` — unlabelled images for adaptation: a Cityscapes-format folder's, a
  pairs folder's or any folder of images. It never opens a label file: that is the UDA rule,
  and its crops are uniform (DAFormer's target pipeline runs ``cat_max_ratio`` on the target's
  ground truth, which leaks labels; not here).
* :class:`ValDataset` — resized images with labels at their full original resolution, since
  evaluation compares at label resolution.

Items are dicts of tensors: ``image`` float32 ``(3, h, w)`` normalised with the ImageNet
mean/std (:mod:`cicld.data.transforms`), ``label`` int64 ``(h, w)`` trainIds with 255 = ignore,
``name`` the frame id of :func:`~cicld.data.layouts.list_samples`. The labelled datasets name
their classes (``classes``, a :class:`~cicld.data.labels.ClassList`: Cityscapes' 19, or the list a
pairs folder was prepared with).

Determinism: every random choice of item ``i`` comes from its own generator, seeded by
``(seed, epoch, i)`` (:func:`item_rng`), never from a global RNG. An item is thus a pure function
of those three numbers — identical in any DataLoader worker, on any rank, and after a resume —
and the trainer calls :meth:`set_epoch` so that epochs differ. (DataLoader copies the dataset
into its workers when an iterator starts, so call ``set_epoch`` before iterating, and do not
use ``persistent_workers=True``, which would keep the workers' old epoch.) With rare-class
sampling, ``__getitem__(i)`` ignores which frame ``i`` is, as DAFormer does, but ``i`` still
seeds the draw, so items differ across indices and workers never repeat one another.

When an image is smaller than the crop (toy data, odd sizes), the crop takes the whole side
and the result is padded at the bottom/right to the crop size — image with 0 (after
normalisation, i.e. the mean colour) and label with 255 — exactly mmseg's ``Pad`` after
``Normalize``. Batches therefore always stack, but for whole images (no resize, no crop) of
different sizes, which :meth:`require_batchable` refuses in one line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cicld.data import transforms as T
from cicld.data.labels import IGNORE_INDEX
from cicld.data.layouts import (
    DATASETS,
    IMAGES,
    SKIPPED_FRAMES_FILE,
    Sample,
    dataset_classes,
    list_samples,
    prepare_command,
)
from cicld.data.pngio import image_size, read_image
from cicld.data.sampling import RareClassSampler
from cicld.errors import DataError

Size = tuple[int, int]  # (width, height)

#: DAFormer/HRDA/MIC training resolutions, ``(width, height)``; a user's own frames (pairs, a
#: folder of images) get the Cityscapes target's.
DEFAULT_RESIZE: dict[str, Size] = {
    "gta5": (1280, 720),
    "synthia": (1280, 760),
    "cityscapes": (1024, 512),
    "pairs": (1024, 512),
    IMAGES: (1024, 512),
}
#: Training crop, ``(width, height)``.
DEFAULT_CROP: Size = (512, 512)
#: DAFormer's re-crop rule: a class may fill at most this share of a crop's labelled pixels.
DEFAULT_CAT_MAX_RATIO = 0.75
#: Re-crops allowed to find a crop with enough pixels of the rare class drawn by RCS (DAFormer).
RCS_CROP_TRIES = 10


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of item ``index`` in ``epoch``: independent streams for every triple."""
    return np.random.default_rng([seed, epoch, index])


def _check_size(value, what: str) -> Size | None:
    if value is None:
        return None
    width, height = (int(v) for v in value)
    if width <= 0 or height <= 0:
        raise ValueError(f"{what} must be a positive (width, height), got {value}")
    return width, height


def _prepare_hint(dataset: str, root: Path) -> str:
    return f"run {prepare_command(dataset, root)} first"


def _read_rgb(path: Path) -> np.ndarray:
    return read_image(path, "RGB")


def _read_train_ids(path: Path, dataset: str, root: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path} does not exist; {_prepare_hint(dataset, root)}")
    label = read_image(path)
    if label.ndim != 2:
        raise DataError(f"{path} is not a single-channel trainIds PNG; delete it and {_prepare_hint(dataset, root)}")
    return label


def _skipped_frames(root: Path, dataset: str) -> set[str]:
    """Names of the frames ``prepare-data`` left out on purpose (``--on-size-mismatch skip``)."""
    path = root / SKIPPED_FRAMES_FILE
    if not path.is_file():
        return set()
    try:
        names = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is unreadable ({exc}); delete it and {_prepare_hint(dataset, root)}") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path} is not a list of frame names; delete it and {_prepare_hint(dataset, root)}")
    return set(names)


def _labelled(samples: Iterable[Sample], dataset: str, root: Path, split: str) -> list[Sample]:
    """The frames that have labels, all with their prepared trainIds file; else DataError.

    Frames that ``prepare-data`` left out on purpose (listed in ``skipped_frames.json``) are
    left out here too: they have no trainIds file and no class statistics.
    """
    skipped = _skipped_frames(root, dataset)
    labelled = [s for s in samples if s.label is not None and s.name not in skipped]
    if not labelled and skipped:
        raise DataError(
            f"{root} has no labelled {dataset} frames left: prepare-data left out all of them ({SKIPPED_FRAMES_FILE})"
        )
    if not labelled:
        where = f"gtFine/{split}/" if dataset == "cityscapes" else "the label folder"
        raise DataError(f"{root} has no labelled {dataset} frames (no labels in {where})")
    missing = [s.train_ids for s in labelled if not s.train_ids.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(labelled)} {dataset} labels have no prepared trainIds file "
            f"(first: {missing[0]}); {_prepare_hint(dataset, root)}"
        )
    return labelled


def _fit_label(label: np.ndarray, image: np.ndarray) -> np.ndarray:
    # Some GTA5 pairs differ by a few pixels: bring the label onto the image grid (nearest).
    if label.shape != image.shape[:2]:
        return T.resize_label(label, (image.shape[1], image.shape[0]))
    return label


def _pad_image(image: torch.Tensor, size: Size) -> torch.Tensor:
    """Pad a normalised ``(3, h, w)`` image at the bottom/right to ``size`` with 0 (the mean colour)."""
    pad_w, pad_h = max(size[0] - image.shape[2], 0), max(size[1] - image.shape[1], 0)
    return torch.nn.functional.pad(image, (0, pad_w, 0, pad_h), value=0.0) if pad_w or pad_h else image


class _FrameDataset(Dataset):
    """Shared resize/epoch handling."""

    def __init__(self, root, dataset: str, resize, keep_ratio: bool, seed: int):
        if dataset not in (*DATASETS, IMAGES):
            raise DataError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
        self.root = Path(root)
        self.dataset = dataset
        self.resize = _check_size(resize, "resize")
        self.keep_ratio = keep_ratio
        self.seed = int(seed)
        self.epoch = 0
        self.samples: list[Sample] = []

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (see the module notes on determinism)."""
        self.epoch = int(epoch)

    def _target_size(self, image: np.ndarray) -> Size | None:
        if self.resize is None:
            return None
        if self.keep_ratio:
            return T.fit_size((image.shape[1], image.shape[0]), self.resize)
        return self.resize

    def _resize_image(self, image: np.ndarray) -> np.ndarray:
        size = self._target_size(image)
        return image if size is None else T.resize_image(image, size)

    def require_batchable(self) -> None:
        """Whole images (no resize, no crop) are batched as they are, so they must share one size:
        one line naming two that differ, rather than a tensor error at the first batch (called
        where batches of several images are made)."""
        if self.resize is not None or getattr(self, "crop", None) is not None:
            return
        sizes: dict[tuple[int, int], Path] = {}
        for sample in self.samples:
            sizes.setdefault(image_size(sample.image), sample.image)
            if len(sizes) > 1:
                ((w1, h1), a), ((w2, h2), b) = sizes.items()
                raise DataError(
                    f"the images of {self.root} differ in size ({a}: {w1}x{h1}, {b}: {w2}x{h2}), so whole "
                    "images cannot be batched: resize them (--source-resize/--target-resize WIDTHxHEIGHT) or crop them "
                    "(--crop)"
                )


class SourceDataset(_FrameDataset):
    """Labelled frames of GTA5, SYNTHIA or Cityscapes (``split``), augmented for training.

    Pipeline (mmseg/DAFormer order): read → resize to ``resize`` (``(w, h)``; with
    ``keep_ratio`` it is mmseg's long/short-edge bound) → ``random_crop_box`` of ``crop`` with
    ``cat_max_ratio`` → horizontal flip with probability ``flip_p`` → normalise → pad to
    ``crop``. With ``zoom_max`` > 1, the resized frame is first zoomed in by a factor uniform in
    ``[1, zoom_max]`` (bilinear image, nearest label) and the crop, or without one the unzoomed
    size, is cut from it: objects then appear up to ``zoom_max`` times larger, as a camera that is
    nearer or has a longer lens sees them. With ``rare_class_sampling``, each item's frame is
    drawn by the sampler (whose statistics must describe this dataset), and the crop is redrawn
    up to 10 times until it holds more than ``min_pixels * min_crop_ratio`` pixels of the drawn
    class.
    """

    def __init__(
        self,
        root,
        dataset: str,
        *,
        split: str = "train",
        resize: Size | None = None,
        crop: Size | None = None,
        flip_p: float = 0.5,
        cat_max_ratio: float = DEFAULT_CAT_MAX_RATIO,
        rare_class_sampling: RareClassSampler | None = None,
        seed: int = 0,
        keep_ratio: bool = False,
        zoom_max: float = 1.0,
    ):
        super().__init__(root, dataset, resize, keep_ratio, seed)
        self.split = split
        self.crop = _check_size(crop, "crop")
        self.flip_p = float(flip_p)
        self.cat_max_ratio = float(cat_max_ratio)
        if not zoom_max >= 1.0:
            raise ValueError(f"zoom_max must be at least 1 (1: no zoom), got {zoom_max}")
        self.zoom_max = float(zoom_max)
        self.samples = _labelled(list_samples(self.root, dataset, split).samples, dataset, self.root, split)
        self.classes = dataset_classes(self.root, dataset)
        self.rcs = rare_class_sampling
        self._rcs_index: dict[str, int] = {}
        if self.rcs is not None:
            self._rcs_index = self._resolve_rcs_files()

    def _resolve_rcs_files(self) -> dict[str, int]:
        """Map each statistics ``file`` to a frame: by path under the root, else by file name.

        The name fallback accepts statistics written by DAFormer's converters, whose paths
        carry their own data-root prefix (DAFormer itself matches by file name).
        """
        by_path, by_name = {}, {}
        for index, sample in enumerate(self.samples):
            by_path[sample.train_ids.relative_to(self.root).as_posix()] = index
            by_name[sample.train_ids.name] = index
        resolved = {}
        for files in self.rcs.candidates.values():
            for file in files:
                index = by_path.get(Path(file).as_posix(), by_name.get(Path(file).name))
                if index is None:
                    raise DataError(
                        f"{self.rcs.stats_path} lists {file}, which is not a prepared frame of {self.root}; "
                        f"the statistics are stale or from another dataset: {_prepare_hint(self.dataset, self.root)}"
                    )
                resolved[file] = index
        return resolved

    def __getitem__(self, index: int) -> dict:
        rng = item_rng(self.seed, self.epoch, index)
        rcs_class = None
        if self.rcs is not None:
            rcs_class, file = self.rcs.sample(rng)
            index = self._rcs_index[file]
        sample = self.samples[index]
        image = _read_rgb(sample.image)
        label = _fit_label(_read_train_ids(sample.train_ids, self.dataset, self.root), image)

        size, crop = self._target_size(image), self.crop
        if self.zoom_max > 1.0:  # no draw otherwise: items without zoom stay as they were
            unzoomed = size or (image.shape[1], image.shape[0])
            crop = crop or unzoomed
            factor = rng.uniform(1.0, self.zoom_max)
            size = (round(unzoomed[0] * factor), round(unzoomed[1] * factor))  # resize and zoom in one resampling
        if size is not None:
            image, label = T.resize_image(image, size), T.resize_label(label, size)
        if crop is not None:
            box = self._crop_box(label, crop, rng, rcs_class)
            image, label = box.apply(image), box.apply(label)
        if rng.random() < self.flip_p:
            image, label = T.hflip(image), T.hflip(label)

        image_t = T.normalize(image)
        if crop is not None:
            image_t = _pad_image(image_t, crop)
            label = T.pad_to(label, crop, IGNORE_INDEX)
        return {"image": image_t, "label": torch.from_numpy(label.astype(np.int64)), "name": sample.name}

    def _crop_box(self, label: np.ndarray, crop: Size, rng: np.random.Generator, rcs_class: int | None) -> T.CropBox:
        box = T.random_crop_box(label, crop, rng, self.cat_max_ratio)
        if rcs_class is None or self.rcs.min_crop_ratio <= 0:
            return box
        needed = self.rcs.min_pixels * self.rcs.min_crop_ratio
        for _ in range(RCS_CROP_TRIES):
            if int((box.apply(label) == rcs_class).sum()) > needed:
                break
            box = T.random_crop_box(label, crop, rng, self.cat_max_ratio)
        return box


class TargetDataset(_FrameDataset):
    """Unlabelled images: resize → uniform crop → flip → normalise → pad.

    ``layout`` is where they are (:func:`~cicld.data.layouts.target_layout`): a Cityscapes-format
    folder (its ``split``), a pairs folder (its ``images/``) or a folder of images (every image
    below it: PNG or JPEG, grey or colour, any sizes, read as RGB). Only image files are ever
    opened (the folder listing may see label names; no label file is read), so a target copy
    without — or with broken — labels works the same.
    """

    def __init__(
        self,
        root,
        *,
        layout: str = "cityscapes",
        split: str = "train",
        resize: Size | None = None,
        crop: Size | None = None,
        flip_p: float = 0.5,
        seed: int = 0,
        keep_ratio: bool = False,
    ):
        super().__init__(root, layout, resize, keep_ratio, seed)
        self.split = split
        self.crop = _check_size(crop, "crop")
        self.flip_p = float(flip_p)
        self.samples = list_samples(self.root, layout, split).samples

    def __getitem__(self, index: int) -> dict:
        rng = item_rng(self.seed, self.epoch, index)
        sample = self.samples[index]
        image = self._resize_image(_read_rgb(sample.image))
        if self.crop is not None:
            image = T.uniform_crop_box((image.shape[1], image.shape[0]), self.crop, rng).apply(image)
        if rng.random() < self.flip_p:
            image = T.hflip(image)
        image_t = T.normalize(image)
        if self.crop is not None:
            image_t = _pad_image(image_t, self.crop)
        return {"image": image_t, "name": sample.name}


class ValDataset(_FrameDataset):
    """Evaluation frames: the image resized to ``resize`` (none: as stored), the label untouched.

    ``label`` is int64 at the label file's own, full resolution; predictions are upsampled to
    it before scoring. Cityscapes uses ``split`` ("val"); GTA5 and SYNTHIA have no official
    split, so every labelled frame is used (``split`` is ignored) unless ``names`` picks a
    subset (frame names as in :func:`~cicld.data.layouts.list_samples`, e.g. ``"00001"``).
    """

    def __init__(
        self,
        root,
        dataset: str = "cityscapes",
        split: str = "val",
        *,
        resize: Size | None = None,
        names: Iterable[str] | None = None,
        keep_ratio: bool = False,
    ):
        super().__init__(root, dataset, resize, keep_ratio, seed=0)
        self.split = split
        samples = _labelled(list_samples(self.root, dataset, split).samples, dataset, self.root, split)
        if names is not None:
            wanted = list(dict.fromkeys(names))
            by_name = {s.name: s for s in samples}
            unknown = [n for n in wanted if n not in by_name]
            if unknown:
                raise DataError(
                    f"{root} has no labelled {dataset} frame named {unknown[0]!r} ({len(unknown)} unknown names)"
                )
            samples = [by_name[n] for n in wanted]
        self.samples = samples
        self.classes = dataset_classes(self.root, dataset)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image = self._resize_image(_read_rgb(sample.image))
        label = _read_train_ids(sample.train_ids, self.dataset, self.root)
        return {"image": T.normalize(image), "label": torch.from_numpy(label.astype(np.int64)), "name": sample.name}
