"""Segment a set of image files: trainId and Cityscapes labelId PNGs, colour maps and overlays.

Inputs are files, folders (searched recursively; outputs keep the relative paths) or glob
patterns. Files that are not images are skipped; an image that cannot be read is recorded and
the others go on. Existing outputs are never overwritten unless asked. Every output is written
atomically, so an interrupted run leaves only complete files.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cicld.data.labels import ClassList
from cicld.data.layouts import IMAGE_SUFFIXES
from cicld.data.pngio import read_image, write_image
from cicld.data.transforms import normalize, resize_image
from cicld.errors import CicldError, DataError
from cicld.evaluation.evaluate import InferenceOptions
from cicld.files import writing
from cicld.models import CICLD

#: What predict can write per image, and the file-name suffix of each.
OUTPUTS = {"trainids": "trainIds", "labelids": "labelIds", "color": "color", "overlay": "overlay"}


@dataclass(frozen=True)
class PredictionInput:
    path: Path
    relative: Path  # where its outputs go, relative to OUT (suffix dropped)


@dataclass
class PredictReport:
    written: list[Path] = field(default_factory=list)
    not_images: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    images: int = 0


def collect_inputs(
    inputs: list[str | Path], out: Path | None = None
) -> tuple[list[PredictionInput], list[Path], list[Path]]:
    """Expand files, folders and globs into images (with output-relative paths), non-images and
    broken symbolic links (both to be reported as skipped).

    Files inside the output folder ``out`` are never inputs, so that predicting a folder into a
    folder inside it does not segment its own outputs the second time."""
    found: list[PredictionInput] = []
    not_images: list[Path] = []
    broken: list[Path] = []
    inside_out = _inside(Path(out).resolve()) if out is not None else (lambda path: False)
    for item in map(str, inputs):
        path = Path(item)
        if path.is_dir():
            listed = sorted(path.rglob("*"))
            pairs = [(p, p.relative_to(path)) for p in listed if p.is_file() and not inside_out(p)]
            broken += [p for p in listed if p.is_symlink() and not p.exists() and not inside_out(p)]
        elif path.is_file():
            pairs = [(path, Path(path.name))]
        elif any(ch in item for ch in "*?["):
            listed = [Path(p) for p in sorted(glob.glob(item, recursive=True))]
            if not listed:
                raise CicldError(f"no file matches {item}")
            pairs = [(p, Path(p.name)) for p in listed if p.is_file() and not inside_out(p)]
            broken += [p for p in listed if p.is_symlink() and not p.exists() and not inside_out(p)]
        else:
            raise CicldError(f"{item} does not exist")
        for file, relative in pairs:
            if file.suffix.lower() in IMAGE_SUFFIXES:
                found.append(PredictionInput(file, relative.with_suffix("")))
            else:
                not_images.append(file)
    seen: dict[Path, Path] = {}
    for entry in found:
        if entry.relative in seen:
            raise CicldError(
                f"{seen[entry.relative]} and {entry.path} would write the same outputs; predict them separately"
            )
        seen[entry.relative] = entry.path
    return found, not_images, broken


def _inside(folder: Path) -> Callable[[Path], bool]:
    def inside(path: Path) -> bool:
        return Path(path).resolve().is_relative_to(folder)

    return inside


def output_paths(out: Path, entry: PredictionInput, kinds: tuple[str, ...]) -> dict[str, Path]:
    folder = out / entry.relative.parent
    return {kind: folder / f"{entry.relative.name}_{OUTPUTS[kind]}.png" for kind in kinds}


def output_kinds(text: str) -> tuple[str, ...]:
    """``--outputs``: comma-separated kinds, in any case (``trainIds`` as the file names spell it,
    ``trainids``), as the keys of :data:`OUTPUTS`; a one-line error for one that is not a kind."""
    kinds = tuple(dict.fromkeys(kind.strip().lower() for kind in text.split(",") if kind.strip()))
    check_output_kinds(kinds)
    return kinds


def check_output_kinds(kinds: tuple[str, ...]) -> None:
    unknown = sorted(set(kinds) - set(OUTPUTS))
    if unknown or not kinds:
        names = ", ".join(OUTPUTS.values())
        raise CicldError(f"--outputs must name some of {names}; got {', '.join(kinds) or 'nothing'}")


def refuse_existing_outputs(out: Path, inputs: list[PredictionInput], kinds: tuple[str, ...]) -> None:
    existing = [p for entry in inputs for p in output_paths(out, entry, kinds).values() if p.exists()]
    if existing:
        raise CicldError(
            f"{len(existing)} outputs already exist in {out} (first: {existing[0]}); pass --overwrite to replace them"
        )


def inference_size(width: int, height: int, target_height: int | None, divisor: int) -> tuple[int, int]:
    """The (width, height) to run the model at: scaled to ``target_height`` keeping the aspect ratio
    (None: the image's own size), rounded to the model's size divisor."""
    if target_height is not None:
        width, height = round(width * target_height / height), target_height
    return max(divisor, round(width / divisor) * divisor), max(divisor, round(height / divisor) * divisor)


@torch.no_grad()
def predict_files(
    model: CICLD,
    inputs: list[PredictionInput],
    out: Path,
    *,
    kinds: tuple[str, ...] = tuple(OUTPUTS),
    options: InferenceOptions | None = None,
    target_height: int | None | str = "model",
    batch_size: int = 4,
    overwrite: bool = False,
    on_image: Callable[[int], None] | None = None,
) -> PredictReport:
    """Predict ``inputs`` into ``out``; ``on_image(n)`` after each image. Sliding windows are used
    for an image larger than the window when ``options.sliding`` is set.

    Images are run at ``target_height`` (aspect ratio kept; None: their own size); by default at
    the height of the model's ``config.input_size``, and always normalised with the model's
    ``image_mean``/``image_std``: the model folder alone decides how the model runs."""
    options = options or InferenceOptions()
    if options.sliding:
        options.windows(model)  # a window the model cannot tile is refused before the first image
    if target_height == "model":
        target_height = model.config.input_size[1] if model.config.input_size is not None else None
    mean, std, classes = model.config.image_mean, model.config.image_std, model.config.class_list
    check_output_kinds(kinds)
    if not overwrite:
        refuse_existing_outputs(out, inputs, kinds)
    model.eval()
    report = PredictReport()
    device = next(model.parameters()).device
    pending: list[tuple[PredictionInput, np.ndarray]] = []

    def flush() -> None:
        for size, group in _by_size(pending, target_height, model.config.size_divisor).items():
            _require_room(size, model.config.num_classes, device, group[0][0].path)
            for start in range(0, len(group), batch_size):
                chunk = group[start : start + batch_size]
                batch = torch.stack([normalize(resize_image(image, size), mean, std) for _, image in chunk]).to(device)
                logits = options.logits(model, batch)
                for (entry, image), logit in zip(chunk, logits):
                    full = F.interpolate(
                        logit[None].float(), size=image.shape[:2], mode="bilinear", align_corners=False
                    )
                    labels = full.argmax(1)[0].to(torch.uint8).cpu().numpy()
                    report.written += _write_outputs(out, entry, kinds, image, labels, classes)
                    report.images += 1
                    if on_image is not None:
                        on_image(report.images + len(report.failed))
        pending.clear()

    for entry in inputs:
        try:
            pending.append((entry, read_image(entry.path, "RGB")))
        except DataError as exc:
            report.failed.append((entry.path, str(exc)))
            if on_image is not None:
                on_image(report.images + len(report.failed))
        if len(pending) >= batch_size:
            flush()
    flush()
    return report


def _require_room(size: tuple[int, int], num_classes: int, device: torch.device, path: Path) -> None:
    """Refuse, before the image ``path`` is resized, an inference ``size`` whose class scores alone
    (float32, the least any run at that size holds) take more than all of ``device``'s memory: it
    could only fail, after minutes of swapping or allocating."""
    need, memory = num_classes * 4 * size[0] * size[1], _device_memory(device)
    if memory is not None and need > memory:
        raise CicldError(
            f"{path} would be segmented at {size[0]}x{size[1]}, whose class scores alone take {need / 1e9:,.0f} GB, "
            f"more than the {memory / 1e9:,.0f} GB of memory of this {device.type}; use a smaller --height"
        )


def _device_memory(device: torch.device) -> int | None:
    """All the memory of ``device``: a GPU's own, else the machine's; None where the system does not say."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        return None


def _by_size(pending, target_height, divisor) -> dict[tuple[int, int], list]:
    groups: dict[tuple[int, int], list] = {}
    for entry, image in pending:
        size = inference_size(image.shape[1], image.shape[0], target_height, divisor)
        groups.setdefault(size, []).append((entry, image))
    return groups


def _write_outputs(
    out: Path, entry: PredictionInput, kinds, image: np.ndarray, train_ids: np.ndarray, classes: ClassList
) -> list[Path]:
    paths = output_paths(out, entry, kinds)
    for kind, path in paths.items():
        with writing(path):  # every file is written atomically: those already written are complete
            write_image(path, _output_array(kind, image, train_ids, classes))
    return list(paths.values())


def _output_array(kind: str, image: np.ndarray, train_ids: np.ndarray, classes: ClassList) -> np.ndarray:
    """One output of an image: trainIds, the class list's raw label values (Cityscapes': labelIds),
    its colours, or the overlay (half image, half colour map)."""
    if kind == "trainids":
        return train_ids
    if kind == "labelids":
        return classes.to_raw_ids(train_ids)
    if kind == "color":
        return classes.colorize(train_ids)
    return ((image.astype(np.uint16) + classes.colorize(train_ids)) // 2).astype(np.uint8)
