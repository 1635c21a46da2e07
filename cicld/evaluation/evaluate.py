"""Evaluate a model on a prepared split: one confusion matrix over the whole split, at label resolution.

Used by ``cicld evaluate`` and by the training stages' periodic validation. With several
processes each takes every ``num_processes``-th image and the matrices are summed, so no image
is padded in or counted twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cicld.data.datasets import ValDataset
from cicld.data.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize, renormalize
from cicld.evaluation.metrics import ConfusionMatrix, SegmentationScores
from cicld.models import CICLD


def evaluation_split(root, dataset: str, split: str, resize, limit: int | None = None) -> ValDataset:
    """The frames to score: a prepared split, optionally only its first ``limit`` frames."""
    frames = ValDataset(root, dataset, split, resize=resize)
    if limit is None or limit >= len(frames):
        return frames
    return ValDataset(root, dataset, split, resize=resize, names=[s.name for s in frames.samples[:limit]])


@dataclass
class InferenceOptions:
    """How to run the model on one image: whole image, or sliding windows (for large inputs).

    Every setting left None is the model's own (``model.config``: ``inference_steps``,
    ``sliding_window``, ``sliding_overlap``), so that only the model folder decides how it runs.
    """

    steps: int | None = None  # DDIM steps S (None: the model's config)
    refine: int = 0
    sliding: bool = False
    window: tuple[int, int] | None = None  # (height, width) of a window (None: the model's)
    overlap: tuple[int, int] | None = None  # (height, width) (None: the model's)
    window_batch: int = 4

    def logits(self, model: CICLD, images: torch.Tensor) -> torch.Tensor:
        if self.sliding:
            window = self.window or tuple(reversed(model.config.sliding_window))
            overlap = self.overlap or tuple(reversed(model.config.sliding_overlap))
            return model.predict_sliding(images, window, overlap, self.window_batch, steps=self.steps, refine=self.refine)
        return model.predict(images, steps=self.steps, refine=self.refine)


def model_normalisation(model: CICLD, images: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised ``images`` (as the datasets give them) normalised as ``model`` expects."""
    mean, std = tuple(model.config.image_mean), tuple(model.config.image_std)
    if (mean, std) == (IMAGENET_MEAN, IMAGENET_STD):
        return images
    return renormalize(denormalize(images), mean, std)


@torch.no_grad()
def evaluate_model(
    model: CICLD,
    dataset: ValDataset,
    accelerator,
    options: InferenceOptions | None = None,
    on_image: Callable[[int], None] | None = None,
) -> SegmentationScores:
    """Predict every image of this process's share and score against labels at their full size.

    ``on_image(n)`` is called after each image with the number done by this process.
    """
    options = options or InferenceOptions()
    was_training = model.training
    model.eval()
    confusion = ConfusionMatrix(model.config.num_classes)
    device = accelerator.device
    done = 0
    for index in range(accelerator.process_index, len(dataset), accelerator.num_processes):
        item = dataset[index]
        image, label = item["image"][None].to(device), item["label"][None].to(device)
        logits = options.logits(model, model_normalisation(model, image))
        # Logits are upsampled to the label (not labels downsampled): scores are at label resolution.
        logits = F.interpolate(logits.float(), size=label.shape[-2:], mode="bilinear", align_corners=False)
        confusion.update(logits.argmax(1), label)
        done += 1
        if on_image is not None:
            on_image(done)
    matrix = confusion.matrix.to(device)
    if accelerator.num_processes > 1:
        matrix = accelerator.reduce(matrix, reduction="sum")
    model.train(was_training)
    return SegmentationScores.from_confusion(matrix.cpu().numpy())
