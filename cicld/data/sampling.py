"""Rare-class sampling (RCS) of source frames, as in DAFormer.

From the per-frame class pixel counts that ``cicld prepare-data`` (or DAFormer's converters)
write to ``sample_class_stats.json``:

* class frequency ``f_c = pixels_c / sum_k pixels_k`` over the whole source set;
* class probability ``p_c = softmax((1 - f_c) / T)`` (temperature ``T``, 0.01 by default), so
  rare classes are drawn far more often than their pixel share;
* candidate frames of class ``c``: those with at least ``min_pixels`` pixels of ``c``.

A draw picks a class by ``p_c`` and then a candidate frame uniformly. Classes that no frame
has ``min_pixels`` of are left out and the remaining probabilities renormalised (DAFormer
asserts instead); :attr:`RareClassSampler.dropped_classes` lists them. Pixel counts are those
of the full-resolution labels, as DAFormer's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cicld.data.labels import IGNORE_INDEX, NUM_CLASSES
from cicld.data.layouts import CLASS_LIST_FILE, CLASS_STATS_FILE, prepare_command
from cicld.errors import DataError


def _guess_dataset(root: Path) -> str:
    """The dataset a folder looks like, for the 'run prepare-data' hint."""
    if (root / "leftImg8bit").is_dir():
        return "cityscapes"
    if (root / "RGB").is_dir():
        return "synthia"
    if (root / CLASS_LIST_FILE).is_file():
        return "pairs"
    if (root / "images").is_dir():
        return "gta5"
    return "<dataset>"


def load_class_stats(path: str | Path, num_classes: int = NUM_CLASSES) -> list[dict]:
    """Read and check ``sample_class_stats.json`` (or the one in the dataset folder ``path``) of a
    dataset of ``num_classes`` classes.

    Returns ``[{"file": str, "counts": {trainId: pixels}}, ...]``; ignore-class entries, if a
    converter wrote any, are dropped. Raises :class:`DataError` if missing or malformed.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CLASS_STATS_FILE
    if not path.is_file():
        root = path.parent
        raise DataError(
            f"{path} not found: rare-class sampling needs the class statistics; "
            f"run {prepare_command(_guess_dataset(root), root)} first"
        )
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); delete it and rerun `cicld prepare-data`") from None
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{path} is malformed: expected a non-empty JSON list of per-frame class counts")
    frames = []
    for number, entry in enumerate(entries):
        where = f"{path} is malformed: entry {number}"
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise DataError(f'{where} is not an object with a "file" string')
        counts = {}
        for key, value in entry.items():
            if key == "file":
                continue
            if not key.isdigit() or not (int(key) < num_classes or int(key) == IGNORE_INDEX):
                raise DataError(f"{where} has class key {key!r}; expected trainIds 0..{num_classes - 1}")
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise DataError(f"{where} has pixel count {value!r} for class {key}; expected a non-negative integer")
            if int(key) != IGNORE_INDEX and value > 0:
                counts[int(key)] = value
        frames.append({"file": entry["file"], "counts": counts})
    return frames


def class_pixel_totals(frames: list[dict], stats_path: Path, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Pixels of each trainId over all frames of :func:`load_class_stats` (error if there are none)."""
    totals = np.zeros(num_classes, dtype=np.float64)
    for frame in frames:
        for cls, pixels in frame["counts"].items():
            totals[cls] += pixels
    if totals.sum() == 0:
        raise DataError(f"{stats_path} counts no labelled pixels; rerun `cicld prepare-data`")
    return totals


def class_weights(stats_path: str | Path, max_weight: float = 5.0, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Cross-entropy class weights √(median f / f_c), clipped to ``max_weight``; 0 for absent classes.

    The square root of median-frequency balancing (Eigen & Fergus): rare classes count more,
    without letting a class of a few pixels dominate the loss. ``f`` are the class frequencies
    of ``sample_class_stats.json`` (the labelled data the loss is computed on).
    """
    path = Path(stats_path)
    totals = class_pixel_totals(load_class_stats(path, num_classes), path, num_classes)
    frequency = totals / totals.sum()
    present = frequency > 0
    median = np.median(frequency[present])
    weights = np.zeros(num_classes, dtype=np.float64)
    weights[present] = np.sqrt(median / frequency[present])
    return np.minimum(weights, max_weight)


class RareClassSampler:
    """Draws ``(class_id, file)`` pairs with DAFormer's rare-class sampling.

    ``file`` is the entry's ``"file"`` string from the statistics (the trainIds PNG, relative to
    the dataset root when cicld wrote it). :meth:`sample` with an explicit generator is a pure
    function of that generator (what the datasets use, per item); without one it advances the
    sampler's own generator seeded by ``seed``.
    """

    def __init__(
        self,
        stats_path: str | Path,
        temperature: float = 0.01,
        min_pixels: int = 3000,
        seed: int = 0,
        min_crop_ratio: float = 0.5,
        num_classes: int = NUM_CLASSES,
    ):
        if temperature <= 0:
            raise ValueError(f"RCS temperature must be positive, got {temperature}")
        self.stats_path = Path(stats_path)
        self.temperature = temperature
        self.min_pixels = min_pixels
        #: A crop is redrawn (up to 10 times) until it holds more than
        #: ``min_pixels * min_crop_ratio`` pixels of the drawn class (DAFormer; 0 disables).
        self.min_crop_ratio = min_crop_ratio
        frames = load_class_stats(self.stats_path, num_classes)

        totals = class_pixel_totals(frames, self.stats_path, num_classes)
        present = np.flatnonzero(totals)
        #: f_c of every trainId (0 for classes absent from the data).
        self.class_frequency = totals / totals.sum()

        candidates = {int(c): [f["file"] for f in frames if f["counts"].get(int(c), 0) >= min_pixels] for c in present}
        #: Classes present in the data but in no frame with ``min_pixels`` pixels of them.
        self.dropped_classes: tuple[int, ...] = tuple(c for c in candidates if not candidates[c])
        #: The classes that can be drawn, rarest first, and their probabilities.
        kept = [c for c in candidates if candidates[c]]
        if not kept:
            raise DataError(
                f"no frame in {self.stats_path} has {min_pixels} pixels of any class; lower the RCS min_pixels"
            )
        kept.sort(key=lambda c: totals[c])
        self.classes: tuple[int, ...] = tuple(kept)
        logits = (1.0 - self.class_frequency[kept]) / temperature
        weights = np.exp(logits - logits.max())  # shifted: exp(99) would overflow float32 and lose precision
        self.probabilities: np.ndarray = weights / weights.sum()
        self.candidates: dict[int, list[str]] = {c: candidates[c] for c in kept}
        self._rng = np.random.default_rng(seed)

    def probability(self, class_id: int) -> float:
        """p_c of a class (0 for classes that are never drawn)."""
        return float(self.probabilities[self.classes.index(class_id)]) if class_id in self.classes else 0.0

    def sample(self, rng: np.random.Generator | None = None) -> tuple[int, str]:
        """One draw: a class by p_c, then one of its candidate frames uniformly."""
        rng = self._rng if rng is None else rng
        class_id = self.classes[int(rng.choice(len(self.classes), p=self.probabilities))]
        files = self.candidates[class_id]
        return class_id, files[int(rng.integers(len(files)))]
