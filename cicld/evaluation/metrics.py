"""Segmentation metrics, computed as the Cityscapes benchmark does.

Intersections and unions are summed over the whole split in one confusion matrix (not averaged
per image), at label resolution, ignoring label 255. A class absent from both the ground truth
and the predictions has no IoU and is left out of the mean, as ``cityscapesscripts`` does.
Scores name their classes (a :class:`~cicld.data.labels.ClassList`, Cityscapes' by default);
mIoU16 and mIoU13, the SYNTHIA protocol's subsets, exist for Cityscapes' classes only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cicld.data.labels import CITYSCAPES, IGNORE_INDEX, MIOU13_CLASSES, MIOU16_CLASSES, NUM_CLASSES, ClassList


class ConfusionMatrix:
    """A (K, K) matrix of pixel counts, rows = ground truth, columns = prediction."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: ``predictions`` and ``labels`` are integer tensors of the same shape."""
        if predictions.shape != labels.shape:
            raise ValueError(f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} differ in shape")
        valid = labels != IGNORE_INDEX
        index = labels[valid].long() * self.num_classes + predictions[valid].long()
        counts = torch.bincount(index.cpu(), minlength=self.num_classes**2)
        self.matrix += counts.reshape(self.num_classes, self.num_classes)

    def merge(self, other: ConfusionMatrix | torch.Tensor) -> None:
        self.matrix += other.matrix if isinstance(other, ConfusionMatrix) else other.to(torch.int64).cpu()

    def scores(self, classes: ClassList = CITYSCAPES) -> SegmentationScores:
        return SegmentationScores.from_confusion(self.matrix.numpy(), classes)


@dataclass
class SegmentationScores:
    per_class_iou: np.ndarray  # (K,), NaN where a class is absent from both GT and predictions
    pixel_accuracy: float
    confusion: np.ndarray
    classes: ClassList = CITYSCAPES  # what the K classes are

    @classmethod
    def from_confusion(cls, confusion: np.ndarray, classes: ClassList = CITYSCAPES) -> SegmentationScores:
        confusion = confusion.astype(np.float64)
        true_positive = np.diag(confusion)
        union = confusion.sum(0) + confusion.sum(1) - true_positive
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, true_positive / union, np.nan)
        total = confusion.sum()
        return cls(iou, float(true_positive.sum() / total) if total else float("nan"), confusion, classes)

    def miou(self, classes: tuple[int, ...] | None = None) -> float:
        """Mean IoU over ``classes`` (default all) that occur in the ground truth or predictions."""
        values = self.per_class_iou if classes is None else self.per_class_iou[list(classes)]
        values = values[~np.isnan(values)]
        return float(values.mean()) if values.size else float("nan")

    @property
    def miou19(self) -> float:
        return self.miou()

    @property
    def miou16(self) -> float:
        return self.miou(MIOU16_CLASSES)

    @property
    def miou13(self) -> float:
        return self.miou(MIOU13_CLASSES)

    def means(self) -> dict[str, float]:
        """The mean IoUs by name: mIoU19, mIoU16 and mIoU13 for Cityscapes' classes (the
        protocols' subsets name them), else the one mean over all of the classes, mIoU."""
        if self.classes.is_cityscapes:
            return {"mIoU19": self.miou19, "mIoU16": self.miou16, "mIoU13": self.miou13}
        return {"mIoU": self.miou()}

    def as_dict(self) -> dict:
        """The scores as strict JSON values: an undefined score (NaN: a class absent from both
        ground truth and predictions, a mean over no class, an accuracy over no pixel) is None."""
        return {
            **{name: _defined(value) for name, value in self.means().items()},
            "pixel_accuracy": _defined(self.pixel_accuracy),
            "per_class_iou": {name: _defined(v) for name, v in zip(self.classes.names, self.per_class_iou)},
        }


def _defined(value: float) -> float | None:
    return None if np.isnan(value) else float(value)
