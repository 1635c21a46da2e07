"""``prepare-data``: turn raw GTA5, SYNTHIA, Cityscapes and ``pairs`` labels into trainId PNGs and class stats.

For every labelled frame it writes ``*_labelTrainIds.png`` (8-bit, 255 = ignore) beside the raw
label, and in the dataset root the per-frame class pixel counts that rare-class sampling reads:
``sample_class_stats.json``, ``sample_class_stats_dict.json`` and ``samples_with_class.json``, in
the format of DAFormer/HRDA/MIC's converters, so data prepared by either tool works with the other
(file names are stored relative to the dataset root; those tools only use the base name).

It is idempotent and resumable: a frame whose trainId file exists is skipped (its counts are read
back from that file), and every file is written atomically, so a run killed half-way leaves only
finished files behind. The stats files are written last, once every frame has succeeded: their
presence means the dataset is prepared. Frames left out with ``--on-size-mismatch skip`` are listed
in ``skipped_frames.json`` (written just before the stats), which the datasets read to leave them
out as well.

A ``pairs`` folder (a user's own images and labels) is converted through the user's class list
(:class:`~cicld.data.labels.ClassList`): labels of label values or of class colours, where a
value or colour the list does not name fails the frame, naming the file. The list is recorded
in the folder first (``classes.json``), and a later run with another list is refused: the
trainIds already written would mean other classes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from cicld.data.labels import CITYSCAPES, SYNTHIA, ClassList
from cicld.data.layouts import CLASS_LIST_FILE, CLASS_STATS_FILE, SKIPPED_FRAMES_FILE, Sample, list_samples
from cicld.data.pngio import PNG_SIGNATURE, image_format, image_mode, image_size, read_image, read_png, write_image
from cicld.data.transforms import resize_label
from cicld.errors import DataError
from cicld.files import atomic_write, writing


class SizeMismatchPolicy(str, Enum):
    """What to do with a frame whose label is not the size of its image (some GTA5 frames)."""

    resize = "resize"  # resize the label to the image with nearest-neighbour (no new ids appear)
    skip = "skip"  # leave the frame out (it gets no trainId file and no stats)


@dataclass
class FrameResult:
    name: str
    status: str  # "converted", "skipped" (already done), "mismatch-skipped" or "failed"
    counts: list[int] = field(default_factory=list)  # pixels per trainId 0..K-1
    size_mismatch: bool = False
    error: str = ""


@dataclass
class PrepareReport:
    """What one ``prepare-data`` run did, for the summary table."""

    dataset: str
    root: Path
    converted: int = 0
    skipped: int = 0
    size_mismatched: int = 0
    mismatch_skipped: int = 0
    missing_partner: list[Path] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (frame, one-line reason)
    classes: ClassList = CITYSCAPES  # what the trainIds name
    class_pixels: np.ndarray | None = None  # pixels per trainId (zeros to start with)

    def __post_init__(self) -> None:
        if self.class_pixels is None:
            self.class_pixels = np.zeros(len(self.classes), dtype=np.int64)

    @property
    def frames(self) -> int:
        return self.converted + self.skipped + self.mismatch_skipped + len(self.failures)


def read_raw_label(dataset: str, path: Path) -> np.ndarray:
    """The raw label of one GTA5, SYNTHIA or Cityscapes frame as ids (H, W), checked to be the kind
    of file the dataset uses."""
    if dataset == "synthia":
        label = read_png(path)
        if label.dtype != np.uint16 or label.ndim != 3:
            kind = f"{label.dtype.itemsize * 8}-bit, {1 if label.ndim == 2 else label.shape[2]} channel(s)"
            raise DataError(f"{path} is a {kind} PNG; SYNTHIA labels are 16-bit multi-channel PNGs (class id in red)")
        return label[..., 0]
    mode = image_mode(path)
    expected = ("P", "L") if dataset == "gta5" else ("L",)
    what = "palette PNGs whose indices are label ids" if dataset == "gta5" else "8-bit greyscale labelId PNGs"
    if _format(path) != "PNG":  # a lossy JPEG (even named .png) would give wrong ids without a word
        raise DataError(f"{path} is a {_format(path)} file, not a PNG; {dataset} labels are {what} (lossless)")
    if mode not in expected:
        raise DataError(f"{path} has image mode {mode}; {dataset} labels are {what}")
    return read_png(path)  # checks every chunk's CRC: a flipped bit is reported, not read as other ids


def _format(path: Path) -> str:
    with open(path, "rb") as handle:
        if handle.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE:
            return "PNG"
    return image_format(path) or "non-image"


def read_pairs_label(path: Path, classes: ClassList) -> np.ndarray:
    """The trainIds of a ``pairs`` label: a PNG of label values (greyscale 8- or 16-bit, or palette
    indices) or of class colours (RGB), mapped through ``classes``; a value or colour the list
    does not name is a one-line error naming the file."""
    what = "PNGs of label values (greyscale or palette) or of class colours (RGB)"
    if _format(path) != "PNG":  # lossy: its values would be silently wrong
        raise DataError(f"{path} is a {_format(path)} file, not a PNG; pairs labels are {what}, lossless")
    label = read_png(path)  # checks every chunk's CRC, as for the other datasets
    if label.ndim == 2:
        unknown = classes.unknown_values(label)
        if unknown:
            raise DataError(
                f"{path} has label values {_some(unknown)} that no class of the class list has "
                f"(ignore: {classes.ignore})"
            )
        return classes.to_train_ids(label)
    if label.shape[2] == 3 and label.dtype == np.uint8:
        train_ids, unknown = classes.colors_to_train_ids(label)
        if unknown:
            ignore = "none" if classes.ignore_color is None else list(classes.ignore_color)
            raise DataError(
                f"{path} has colours {_some([list(c) for c in unknown])} that no class of the class list has "
                f"(ignore_color: {ignore})"
            )
        return train_ids
    kind = f"{label.dtype.itemsize * 8}-bit, {label.shape[2]} channels"
    raise DataError(f"{path} is a {kind} PNG; pairs labels are {what}")


def _some(items: list) -> str:
    shown = ", ".join(map(str, items[:5]))
    return shown + (f" and {len(items) - 5} more" if len(items) > 5 else "")


def raw_label_classes(dataset: str) -> ClassList:
    """How the raw labels of GTA5, SYNTHIA or Cityscapes name Cityscapes' classes."""
    return SYNTHIA if dataset == "synthia" else CITYSCAPES


def frame_train_ids(dataset: str, path: Path, classes: ClassList) -> np.ndarray:
    """The trainIds of the raw label ``path``: a pairs label through the user's ``classes``, the
    others through their dataset's own map."""
    if dataset == "pairs":
        return read_pairs_label(path, classes)
    return raw_label_classes(dataset).to_train_ids(read_raw_label(dataset, path))


def class_counts(train_ids: np.ndarray, num_classes: int) -> list[int]:
    return np.bincount(train_ids.ravel(), minlength=256)[:num_classes].tolist()


def convert_frame(
    dataset: str,
    sample: Sample,
    policy: SizeMismatchPolicy = SizeMismatchPolicy.resize,
    verify_image: bool = True,
    classes: ClassList = CITYSCAPES,
) -> FrameResult:
    """Convert one frame (safe to call in a worker process: it returns failures, never raises them)."""
    target = sample.train_ids
    try:
        if target.is_file():
            return FrameResult(sample.name, "skipped", class_counts(read_image(target), len(classes)))
        if verify_image:
            read_image(sample.image)  # decodes every pixel: truncated or corrupt images fail here
        width, height = image_size(sample.image)
        train_ids = frame_train_ids(dataset, sample.label, classes)
        mismatch = train_ids.shape != (height, width)
        if mismatch and policy is SizeMismatchPolicy.skip:
            return FrameResult(sample.name, "mismatch-skipped", size_mismatch=True)
        if mismatch:
            train_ids = resize_label(train_ids, (width, height))  # nearest: no new ids
        with writing(target, DataError):
            write_image(target, train_ids)
        return FrameResult(sample.name, "converted", class_counts(train_ids, len(classes)), size_mismatch=mismatch)
    except DataError as exc:
        return FrameResult(sample.name, "failed", error=str(exc))


@dataclass
class FramePlan:
    """The labelled frames of a dataset folder, and the files found without a partner."""

    root: Path
    dataset: str
    samples: list[Sample]
    missing_partner: list[Path]
    classes: ClassList = CITYSCAPES  # what the trainIds will name


def find_frames(root: str | Path, dataset: str, classes: ClassList | None = None) -> FramePlan:
    """List what ``prepare_dataset`` will convert; raises :class:`DataError` if ROOT is not DATASET.

    A pairs folder needs its ``classes``; one prepared before with another class list is refused
    (its trainIds would mean other classes). The other datasets have Cityscapes' classes.
    """
    root = Path(root)
    if dataset == "pairs":
        classes = _pairs_classes(root, classes)
    elif classes is not None:
        raise DataError(f"{dataset} labels name Cityscapes' 19 classes; a class list is for pairs folders only")
    splits = ("train", "val") if dataset == "cityscapes" else ("train",)
    listings = [list_samples(root, dataset, split) for split in splits]
    samples = [s for listing in listings for s in listing.samples if s.label is not None]
    missing = [p for listing in listings for p in (*listing.images_without_label, *listing.labels_without_image)]
    if not samples:
        raise DataError(f"{root} has no labelled {dataset} frames to prepare ({len(missing)} files without a partner)")
    return FramePlan(root, dataset, samples, missing, classes or CITYSCAPES)


def _pairs_classes(root: Path, classes: ClassList | None) -> ClassList:
    if classes is None:
        raise DataError(f"preparing the pairs folder {root} needs its class list: --classes FILE")
    recorded = root / CLASS_LIST_FILE
    if recorded.is_file() and ClassList.read(recorded) != classes:
        raise DataError(
            f"{root} was prepared with another class list ({recorded}); give that one, or delete {recorded} and "
            f"every *_labelTrainIds.png in {root / 'labels'} to prepare it with this one"
        )
    return classes


def prepare_dataset(
    frames: FramePlan,
    *,
    workers: int = 1,
    policy: SizeMismatchPolicy = SizeMismatchPolicy.resize,
    verify_images: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> PrepareReport:
    """Prepare the frames of :func:`find_frames`; see the module docstring. ``on_progress(done, total)``.

    Frames that fail (corrupt or wrong-mode labels...) are listed in the report while the rest
    are converted; the stats files are then not written, so the dataset does not pass for prepared.
    """
    root, dataset, samples, classes = frames.root, frames.dataset, frames.samples, frames.classes
    report = PrepareReport(dataset, root, missing_partner=list(frames.missing_partner), classes=classes)
    stats: list[dict] = []
    left_out: list[str] = []
    if dataset == "pairs":  # first: a later run, or a resumed one, is checked against it
        with writing(root / CLASS_LIST_FILE, DataError):
            atomic_write(root / CLASS_LIST_FILE, json.dumps(classes.to_dict(), indent=2))
    converted = _run(dataset, samples, policy, verify_images, workers, classes)
    for done, (sample, result) in enumerate(zip(samples, converted), 1):
        if result.status == "failed":
            report.failures.append((result.name, result.error))
        elif result.status == "mismatch-skipped":
            report.mismatch_skipped += 1
            left_out.append(sample.name)
        else:
            report.converted += result.status == "converted"
            report.skipped += result.status == "skipped"
            report.class_pixels += np.asarray(result.counts, dtype=np.int64)
            if not (dataset == "cityscapes" and sample.name.startswith("val/")):  # DAFormer: training frames only
                stats.append(_stats_entry(root, sample, result.counts))
        report.size_mismatched += result.size_mismatch
        if on_progress is not None:
            on_progress(done, len(samples))
    if not report.failures:
        write_skipped_frames(root, left_out)  # before the stats, whose presence means "prepared"
        write_class_stats(root, stats)
    return report


def _run(
    dataset: str, samples: list[Sample], policy, verify_images: bool, workers: int, classes: ClassList
) -> Iterable[FrameResult]:
    count = len(samples)
    arguments = ([dataset] * count, samples, [policy] * count, [verify_images] * count, [classes] * count)
    if workers <= 1:
        yield from map(convert_frame, *arguments)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(convert_frame, *arguments, chunksize=max(1, min(64, len(samples) // (8 * workers))))


def _stats_entry(root: Path, sample: Sample, counts: list[int]) -> dict:
    entry: dict = {str(c): int(n) for c, n in enumerate(counts) if n > 0}
    entry["file"] = sample.train_ids.relative_to(root).as_posix()
    return entry


def write_skipped_frames(root: Path, names: list[str]) -> None:
    """Record the frames left out on purpose, so the datasets leave them out too (none: no file)."""
    path = root / SKIPPED_FRAMES_FILE
    with writing(path, DataError):
        if names:
            atomic_write(path, json.dumps(names, indent=2))
        else:
            path.unlink(missing_ok=True)


def write_class_stats(root: Path, stats: list[dict]) -> None:
    """The three JSON files of DAFormer's ``save_class_stats``, written atomically."""
    by_file = {entry["file"]: {k: v for k, v in entry.items() if k != "file"} for entry in stats}
    with_class: dict[str, list] = {}
    for file, counts in by_file.items():
        for class_id, pixels in counts.items():
            with_class.setdefault(class_id, []).append([file, pixels])
    for name, content in (
        (CLASS_STATS_FILE, stats),
        ("sample_class_stats_dict.json", by_file),
        ("samples_with_class.json", with_class),
    ):
        with writing(root / name, DataError):
            atomic_write(root / name, json.dumps(content, indent=2))
