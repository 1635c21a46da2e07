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
from cicld.distributed import sum_everywhere
from cicld.errors import CicldError
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
    Sizes are (width, height), as everywhere in cicld.
    """

    steps: int | None = None  # DDIM steps S (None: the model's config)
    refine: int = 0
    sliding: bool = False
    window: tuple[int, int] | None = None  # (width, height) of a window (None: the model's)
    overlap: tuple[int, int] | None = None  # (width, height) (None: the model's)
    window_batch: int = 4

    def windows(self, model: CICLD) -> tuple[tuple[int, int], tuple[int, int]]:
        """The sliding window and overlap to run ``model`` with, as (width, height); a one-line
        error, sizes as WIDTHxHEIGHT, where the model cannot tile them."""
        (width, height), (over_w, over_h) = (
            self.window or model.config.sliding_window,
            self.overlap or model.config.sliding_overlap,
        )
        divisor, factor = model.config.size_divisor, model.config.vae_scale_factor
        if min(width, height) < 1 or width % divisor or height % divisor:
            raise CicldError(
                f"sliding window {width}x{height} (WIDTHxHEIGHT) must be positive multiples of {divisor} for this model"
            )
        if over_w % factor or over_h % factor or not (0 <= over_w < width and 0 <= over_h < height):
            raise CicldError(
                f"window overlap {over_w}x{over_h} (WIDTHxHEIGHT) must be multiples of {factor} smaller than "
                f"the window {width}x{height}"
            )
        return (width, height), (over_w, over_h)

    def logits(self, model: CICLD, images: torch.Tensor) -> torch.Tensor:
        if self.sliding:
            (width, height), (over_w, over_h) = self.windows(model)
            return model.predict_sliding(
                images, (width, height), (over_w, over_h), self.window_batch, steps=self.steps, refine=self.refine
            )
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

    ``on_image(n)`` is called after each image with the number done by this process. A model whose
    classes are not those the labels name is one line, before the first image.
    """
    require_same_classes(model, dataset)
    options = options or InferenceOptions()
    if options.sliding:
        options.windows(model)  # a window the model cannot tile is refused before the first image
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
    matrix = sum_everywhere(accelerator, confusion.matrix.to(device))
    model.train(was_training)
    return SegmentationScores.from_confusion(matrix.cpu().numpy(), model.config.class_list)


def require_same_classes(model: CICLD, dataset: ValDataset) -> None:
    """One line where ``model`` predicts other classes than the labels of ``dataset`` name."""
    difference = dataset.classes.difference(model.config.class_list, f"the labels of {dataset.root}", "the model")
    if difference is not None:
        raise CicldError(f"{difference}: score a model on data labelled with its own classes")
