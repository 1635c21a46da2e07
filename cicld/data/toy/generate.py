"""Writing the toy pair: :func:`generate_toy_pair` (what the pair is: :mod:`cicld.data.toy`).

Layout under ``root`` (``NNNNN`` and ``NNNNNNN`` count from 0)::

    root/toy.json                                   generation parameters, class pixel counts
    root/gta5/images/NNNNN.png                      source image, 8-bit RGB
    root/gta5/labels/NNNNN.png                      palette ("P") PNG, index = Cityscapes labelId
    root/synthia/RGB/NNNNNNN.png                    (with "synthia" in source_formats) same scenes
    root/synthia/GT/LABELS/NNNNNNN.png              16-bit RGB PNG: R = SYNTHIA class id,
                                                    G = instance id (things; 0 for stuff), B = 0
    root/cityscapes/leftImg8bit/{train,val}/<city>/<city>_<seq:06d>_000019_leftImg8bit.png
    root/cityscapes/gtFine/{train,val}/<city>/<city>_<seq:06d>_000019_gtFine_labelIds.png
                                                    8-bit "L" PNG of Cityscapes labelIds
    root/generic/{images,labels}/NNNNN.png          (with num_generic > 0) frames of the generic
                                                    world, in the GTA5 format: a pre-training set

Target-train frames alternate between the cities ``toyburg`` and ``toyville`` (frame ``i`` is in
``TRAIN_CITIES[i % 2]`` with ``seq = i // 2``); target-val frames are all in ``toyhaven``, a city
of its own, as Cityscapes val is. Target train has labels too, for the oracle (target-supervised)
upper bound only: adaptation must never read them.

Labels hold Cityscapes labelIds, including some ids that are not evaluated and become 255 once
mapped to trainIds: ``static`` (4) for bins and bollards in both domains, ``ego vehicle`` (1) for
the hood and ``unlabeled`` (0) for the bottom rows below it in the target, as in real Cityscapes.
The class ``train`` is never drawn (as good as absent from Cityscapes val as well).

Every frame is rendered from its own seed, ``SeedSequence([seed, domain, split, index])``, so the
files are byte-identical for the same ``seed`` and ``size`` whatever ``workers`` is, and frame
``i`` does not depend on how many frames are asked for. The SYNTHIA copy of source frame ``i``
is the same scene (same RGB bytes), with its label in SYNTHIA's format.

The generic frames (:func:`~cicld.data.toy.world.generic_world`: random colours, half of them
photographed) are no part of the pair's identity: ``num_generic=None`` keeps whatever the root
holds, so adding them to a pair, or re-running without asking for them, leaves the pair alone;
another count regenerates ``generic/`` only.

Re-running with the same parameters finds ``toy.json`` and every file, and does nothing. A run
that was interrupted is resumed: ``toy.json`` is written first (``"complete": false``), files are
written atomically, and the frames whose files all exist are skipped. A root whose ``toy.json``
records other parameters raises :class:`~cicld.errors.DataError` (``overwrite=True`` deletes the
toy's own folders and regenerates); a root that holds ``gta5/``, ``synthia/`` or ``cityscapes/``
but no ``toy.json`` is refused outright, so a real dataset is never written into or deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cicld.data.labels import (
    CLASSES,
    IGNORE_INDEX,
    NUM_CLASSES,
    cityscapes_id_palette,
    cityscapes_ids_to_train_ids,
    synthia_ids_to_train_ids,
)
from cicld.data.pngio import read_image, read_png, write_image, write_png16
from cicld.data.prepare import PrepareReport, find_frames, prepare_dataset
from cicld.data.toy.render import DEFAULT_SIZE, render_frame
from cicld.errors import DataError
from cicld.files import atomic_write
from cicld.sizes import check_size

#: Bumped whenever the rendering changes, so a root made by an older generator is recognised.
TOY_VERSION = 1
MANIFEST = "toy.json"
DEFAULT_NUM_SOURCE = 400
DEFAULT_NUM_TARGET_TRAIN = 400
DEFAULT_NUM_TARGET_VAL = 100
GENERIC_FOLDER = "generic"
SOURCE_FORMATS = ("gta5", "synthia")
#: The toy pair is for CPUs: a frame of 4096x4096 already takes some 200 MB to render.
MAX_TOY_SIDE = 4096
TRAIN_CITIES = ("toyburg", "toyville")
VAL_CITY = "toyhaven"
CITYSCAPES_FRAME = 19  # Cityscapes labels the 20th frame of every 30-frame snippet


@dataclass(frozen=True)
class _Job:
    domain: str
    split: str
    index: int
    files: tuple[tuple[str, str], ...]  # (kind, path)


def _jobs(
    root: Path, num_source: int, num_train: int, num_val: int, formats: Sequence[str], num_generic: int = 0
) -> list[_Job]:
    jobs = []
    generic = root / GENERIC_FOLDER
    for i in range(num_generic):
        files = (("rgb", str(generic / "images" / f"{i:05d}.png")), ("gta5", str(generic / "labels" / f"{i:05d}.png")))
        jobs.append(_Job("generic", "train", i, files))
    for i in range(num_source):
        files: list[tuple[str, str]] = []
        if "gta5" in formats:
            files += [
                ("rgb", str(root / "gta5" / "images" / f"{i:05d}.png")),
                ("gta5", str(root / "gta5" / "labels" / f"{i:05d}.png")),
            ]
        if "synthia" in formats:
            files += [
                ("rgb", str(root / "synthia" / "RGB" / f"{i:07d}.png")),
                ("synthia", str(root / "synthia" / "GT" / "LABELS" / f"{i:07d}.png")),
            ]
        jobs.append(_Job("source", "train", i, tuple(files)))
    for split, count in (("train", num_train), ("val", num_val)):
        for i in range(count):
            stem = cityscapes_stem(split, i)
            city = stem.split("_")[0]
            files = (
                ("rgb", str(root / "cityscapes" / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")),
                ("cityscapes", str(root / "cityscapes" / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")),
            )
            jobs.append(_Job("target", split, i, files))
    return jobs


def cityscapes_stem(split: str, index: int) -> str:
    """``toyburg_000003_000019``: the Cityscapes-style name of target frame ``index`` of ``split``."""
    if split == "val":
        return f"{VAL_CITY}_{index:06d}_{CITYSCAPES_FRAME:06d}"
    city = TRAIN_CITIES[index % len(TRAIN_CITIES)]
    return f"{city}_{index // len(TRAIN_CITIES):06d}_{CITYSCAPES_FRAME:06d}"


def _train_id_counts(train_ids: np.ndarray) -> list[int]:
    """Pixels per trainId 0..18, then the ignored (255) pixels."""
    counts = np.bincount(train_ids.ravel(), minlength=256)
    return counts[:NUM_CLASSES].tolist() + [int(counts[IGNORE_INDEX])]


def _run_job(job: _Job, seed: int, size: tuple[int, int]) -> tuple[bool, list[int]]:
    """Render and write one frame unless all its files exist; return (written, class counts)."""
    if all(os.path.exists(path) for _, path in job.files):
        kind, path = next((kind, path) for kind, path in job.files if kind != "rgb")
        if kind == "synthia":
            return False, _train_id_counts(synthia_ids_to_train_ids(read_png(path)[..., 0]))
        return False, _train_id_counts(cityscapes_ids_to_train_ids(read_image(path)))
    frame = render_frame(job.domain, seed=seed, split=job.split, index=job.index, size=size)
    for kind, path in job.files:
        if kind == "rgb":
            write_image(path, frame.image)
        elif kind == "gta5":
            write_image(path, frame.label_ids, palette=cityscapes_id_palette())
        elif kind == "synthia":
            write_png16(path, frame.synthia_label)
        else:
            write_image(path, frame.label_ids)
    return True, _train_id_counts(frame.train_ids)


def _run_chunk(jobs: list[_Job], seed: int, size: tuple[int, int]) -> list[tuple[_Job, bool, list[int]]]:
    return [(job, *_run_job(job, seed, size)) for job in jobs]


@dataclass(frozen=True)
class ToyPairSummary:
    """What :func:`generate_toy_pair` made (or found already made)."""

    root: Path
    seed: int
    size: tuple[int, int]
    num_source: int
    num_target_train: int
    num_target_val: int
    source_formats: tuple[str, ...]
    num_generic: int
    written: int  # frames rendered by this call
    skipped: int  # frames whose files were already there
    seconds: float
    #: pixels per trainId 0..18 plus a 20th entry for ignore (255), per "source", "target_train",
    #: "target_val" (and "generic" when the root has generic frames)
    class_pixels: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def source_roots(self) -> dict[str, Path]:
        return {name: self.root / name for name in self.source_formats}

    @property
    def cityscapes_root(self) -> Path:
        return self.root / "cityscapes"

    @property
    def generic_root(self) -> Path | None:
        """The generic-world frames, a GTA5-format folder (None when the root has none)."""
        return self.root / GENERIC_FOLDER if self.num_generic else None

    @property
    def datasets(self) -> dict[str, str]:
        """Each dataset folder of the root and its format, in the order they are prepared."""
        folders = {name: name for name in toy_pair_datasets(self.source_formats)}
        if self.num_generic:
            folders[GENERIC_FOLDER] = "gta5"
        return folders

    def class_shares(self, part: str) -> dict[str, float]:
        """Share of each class among the pixels of ``part`` ("source", "target_train", "target_val")."""
        counts = self.class_pixels[part]
        total = sum(counts) or 1
        return {name: counts[i] / total for i, name in enumerate((*CLASSES, "ignore"))}

    def __str__(self) -> str:
        what = "already complete" if self.written == 0 else f"{self.written} frames rendered, {self.skipped} kept"
        generic = f", {self.num_generic} generic" if self.num_generic else ""
        return (
            f"{self.num_source} source ({'+'.join(self.source_formats)}), {self.num_target_train} target train, "
            f"{self.num_target_val} target val{generic} frames at {self.size[0]}x{self.size[1]} in {self.root} "
            f"(seed {self.seed}; {what}; {self.seconds:.1f} s)"
        )


def _parameters(seed, size, num_source, num_train, num_val, formats) -> dict:
    return {
        "version": TOY_VERSION,
        "seed": seed,
        "size": list(size),
        "num_source": num_source,
        "num_target_train": num_train,
        "num_target_val": num_val,
        "source_formats": list(formats),
    }


def _write_manifest(path: Path, data: dict) -> None:
    atomic_write(path, json.dumps(data, indent=2) + "\n")


def toy_pair_datasets(source_formats: Sequence[str]) -> tuple[str, ...]:
    """The dataset folders of a toy pair, in the order they are prepared: its source format(s), then the target."""
    return (*source_formats, "cityscapes")


def prepare_toy_pair(pair: ToyPairSummary, workers: int = 1) -> dict[str, PrepareReport]:
    """Prepare every dataset of the toy pair :func:`generate_toy_pair` just wrote, as `cicld
    prepare-data toy` does after generating; a one-line :class:`DataError` if a frame fails."""
    reports = {}
    for folder, dataset in pair.datasets.items():
        reports[folder] = report = prepare_dataset(find_frames(pair.root / folder, dataset), workers=workers)
        if report.failures:
            raise DataError(
                f"the toy {folder} data in {pair.root} is damaged ({report.failures[0][1]}); delete it and re-run"
            )
    return reports


def is_toy_target(folder: Path) -> bool:
    """Whether ``folder`` is the ``cityscapes/`` target of a toy pair (its root holds the manifest)."""
    folder = Path(folder)
    return folder.name == "cityscapes" and (folder.parent / MANIFEST).is_file()


def _toy_folders(root: Path) -> list[Path]:
    return [root / name for name in (*toy_pair_datasets(SOURCE_FORMATS), GENERIC_FOLDER)]


def generate_toy_pair(
    root: Path,
    *,
    seed: int = 0,
    size: tuple[int, int] = DEFAULT_SIZE,
    num_source: int = DEFAULT_NUM_SOURCE,
    num_target_train: int = DEFAULT_NUM_TARGET_TRAIN,
    num_target_val: int = DEFAULT_NUM_TARGET_VAL,
    source_formats: tuple[str, ...] = ("gta5",),
    num_generic: int | None = None,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    overwrite: bool = False,
) -> ToyPairSummary:
    """Write the toy domain pair under ``root`` (see the module docstring for the layout).

    ``progress`` is called once per finished frame (rendered or found on disk) with the total
    number of frames, so a progress bar can ``advance(1)`` towards that total. ``num_generic``:
    how many generic-world frames ``generic/`` should hold (None: as many as it holds now, 0 for a
    new root). Idempotent and
    resumable; raises :class:`DataError` if ``root`` holds a toy pair made with other parameters
    (unless ``overwrite``) or a dataset the generator did not make.
    """
    started = time.perf_counter()
    root = Path(root)
    width, height = (int(v) for v in size)
    formats = tuple(dict.fromkeys(source_formats))
    unknown = [f for f in formats if f not in SOURCE_FORMATS]
    if unknown or not formats:
        raise DataError(f"unknown toy source format {', '.join(unknown) or '(none)'}; expected gta5 and/or synthia")
    check_size((width, height), "toy image size", low=(16, 8), high=(MAX_TOY_SIDE, MAX_TOY_SIDE), error=DataError)
    if min(num_source, num_target_train, num_target_val, num_generic or 0) < 0 or workers < 1:
        raise DataError("toy frame counts must be >= 0 and workers >= 1")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"the toy seed must be a whole number >= 0, got {seed!r}")  # numpy refuses negative seeds
    params = _parameters(seed, (width, height), num_source, num_target_train, num_target_val, formats)
    manifest = root / MANIFEST

    existing = None
    if manifest.exists():
        try:
            existing = json.loads(manifest.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{manifest} is unreadable ({exc}); delete it or choose another ROOT") from None
    recorded_generic = int(existing.get("num_generic", 0)) if existing is not None else 0
    if num_generic is None:
        num_generic = recorded_generic
    if existing is not None:
        recorded = {key: existing.get(key) for key in params}
        if recorded != params:
            if not overwrite:
                differ = ", ".join(f"{k} {recorded[k]} (asked {params[k]})" for k in params if recorded[k] != params[k])
                raise DataError(
                    f"{root} holds a toy pair made with other parameters: {differ}; choose another ROOT or use "
                    "--overwrite"
                )
            for folder in _toy_folders(root):
                shutil.rmtree(folder, ignore_errors=True)
            manifest.unlink()
            existing = None
    if existing is not None and num_generic != recorded_generic:
        # the generic frames are no part of the pair: another count redoes generic/ and nothing else
        shutil.rmtree(root / GENERIC_FOLDER, ignore_errors=True)
        existing = {**existing, "complete": False}
    jobs = _jobs(root, num_source, num_target_train, num_target_val, formats, num_generic)
    if (
        existing is not None
        and existing.get("complete")
        and all(os.path.exists(p) for job in jobs for _, p in job.files)
    ):
        if progress is not None:
            for _ in jobs:
                progress(len(jobs))
        return ToyPairSummary(
            root,
            seed,
            (width, height),
            num_source,
            num_target_train,
            num_target_val,
            formats,
            num_generic,
            written=0,
            skipped=len(jobs),
            seconds=time.perf_counter() - started,
            class_pixels={k: tuple(v) for k, v in existing.get("class_pixels", {}).items()},
        )
    if existing is None:
        occupied = [f.name + "/" for f in _toy_folders(root) if f.exists() and any(f.iterdir())]
        if occupied:
            raise DataError(
                f"{root} already holds {', '.join(occupied)} but no {MANIFEST}: not a toy pair; choose another ROOT"
            )
    root.mkdir(parents=True, exist_ok=True)
    _write_manifest(manifest, {**params, "num_generic": num_generic, "complete": False})

    parts = ("source", "target_train", "target_val", *(("generic",) if num_generic else ()))
    totals = {part: np.zeros(NUM_CLASSES + 1, np.int64) for part in parts}
    written = skipped = 0

    def record(results) -> None:
        nonlocal written, skipped
        for job, did_write, counts in results:
            written += did_write
            skipped += not did_write
            totals[job.domain if job.domain != "target" else f"target_{job.split}"] += counts
            if progress is not None:
                progress(len(jobs))

    if workers == 1 or len(jobs) < 2:
        for job in jobs:
            record([(job, *_run_job(job, seed, (width, height)))])
    else:
        chunk = max(1, min(16, len(jobs) // (4 * workers)))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [
                pool.submit(_run_chunk, jobs[i : i + chunk], seed, (width, height)) for i in range(0, len(jobs), chunk)
            ]
            for future in as_completed(futures):
                record(future.result())
    class_pixels = {k: tuple(int(c) for c in v) for k, v in totals.items()}
    _write_manifest(
        manifest,
        {
            **params,
            "num_generic": num_generic,
            "complete": True,
            "class_pixels": {k: list(v) for k, v in class_pixels.items()},
        },
    )
    return ToyPairSummary(
        root,
        seed,
        (width, height),
        num_source,
        num_target_train,
        num_target_val,
        formats,
        num_generic,
        written=written,
        skipped=skipped,
        seconds=time.perf_counter() - started,
        class_pixels=class_pixels,
    )
