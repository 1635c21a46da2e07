"""Pure image/label transforms of the data pipeline, for training and evaluation (DAFormer/HRDA/MIC).

The UDA augmentations that only ``cicld adapt`` uses (ClassMix, colour jitter and blur of the
mixed images, pseudo-label weights) are beside it, in :mod:`cicld.training.uda`.

Conventions (every function says which it takes):

* Sizes are ``(width, height)``, like Pillow and like "1280×720" in the papers.
* Geometric per-sample transforms (resize, crop, flip) work on numpy arrays *before*
  normalisation: images ``(H, W, 3) uint8``, labels ``(H, W)`` integer trainIds
  (:data:`~cicld.data.labels.IGNORE_INDEX` = 255 for ignore).
* Normalisation turns them into torch tensors: images ``(3, H, W)`` float32 normalised with the
  ImageNet mean/std (labels become ``(H, W)`` int64 in the datasets).
* Nothing touches a global RNG: every random function takes a ``numpy.random.Generator``, so a
  result is a function of its seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from cicld.data.labels import IGNORE_INDEX

Size = tuple[int, int]  # (width, height)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- normalisation


def _stats(like: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (3, 1, 1)
    return (
        torch.as_tensor(mean, dtype=like.dtype, device=like.device).view(shape),
        torch.as_tensor(std, dtype=like.dtype, device=like.device).view(shape),
    )


def normalize(
    image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """``(H, W, 3) uint8`` RGB -> ``(3, H, W) float32``: ``(x / 255 - mean) / std``.

    Equal to mmseg's ``Normalize(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375])``.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"normalize expects an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)
    return renormalize(tensor, mean, std)


def denormalize(
    images: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """Normalised ``(..., 3, H, W)`` -> ``[0, 1]``-scaled RGB of the same shape (not clamped)."""
    m, s = _stats(images, mean, std)
    return images * s + m


def renormalize(
    images01: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """``[0, 1]``-scaled ``(..., 3, H, W)`` -> normalised; the inverse of :func:`denormalize`."""
    m, s = _stats(images01, mean, std)
    return (images01 - m) / s


def to_uint8_image(
    image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """Normalised ``(3, H, W)`` -> ``(H, W, 3) uint8`` (for overlays and visual checks)."""
    rgb = denormalize(image.detach().float().cpu(), mean, std).clamp_(0, 1).mul_(255).round_()
    return rgb.to(torch.uint8).permute(1, 2, 0).numpy()


# --------------------------------------------------------------------------- geometry (numpy)


def resize_image(image: np.ndarray, size: Size, method: str = "bilinear") -> np.ndarray:
    """Resize an ``(H, W, 3) uint8`` image to ``size = (width, height)``; ``bilinear`` or ``bicubic``."""
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}.get(method)
    if resample is None:
        raise ValueError(f"unknown resize method {method!r}; expected bilinear or bicubic")
    width, height = size
    if image.shape[1] == width and image.shape[0] == height:
        return image
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((width, height), resample))


def resize_label(label: np.ndarray, size: Size) -> np.ndarray:
    """Nearest-neighbour resize of an ``(H, W)`` label map of any integer dtype to ``(width, height)``.

    Done by index selection (output pixel centre -> source pixel), so every output value is a
    value of the input: no interpolated, invented ids.
    """
    width, height = size
    in_h, in_w = label.shape[:2]
    if (in_w, in_h) == (width, height):
        return label
    rows = np.minimum(((np.arange(height) + 0.5) * in_h / height).astype(np.intp), in_h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * in_w / width).astype(np.intp), in_w - 1)
    return label[rows[:, None], cols[None, :]]


def fit_size(original: Size, bound: Size) -> Size:
    """The largest size with ``original``'s aspect ratio inside ``bound`` (mmseg ``keep_ratio``).

    mmseg's ``Resize(img_scale=(1280, 720))`` treats the scale as long/short-edge bounds, so a
    1914×1052 GTA5 frame becomes 1280×704 there rather than 1280×720.
    """
    (w, h), (bw, bh) = original, bound
    scale = min(max(bw, bh) / max(w, h), min(bw, bh) / min(w, h))
    return int(w * scale + 0.5), int(h * scale + 0.5)


class CropBox(NamedTuple):
    """Rows ``top:bottom`` and columns ``left:right`` of a crop (end exclusive)."""

    top: int
    bottom: int
    left: int
    right: int

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Crop an ``(H, W, ...)`` array."""
        return array[self.top : self.bottom, self.left : self.right]


def uniform_crop_box(image_size: Size, crop_size: Size, rng: np.random.Generator) -> CropBox:
    """A uniformly random ``crop_size = (w, h)`` box inside an image of ``image_size = (w, h)``.

    A side shorter than the crop is taken whole (the box is then smaller than ``crop_size``;
    :func:`pad_to` brings the result back up, as mmseg's ``Pad`` does).
    """
    (width, height), (crop_w, crop_h) = image_size, crop_size
    top = int(rng.integers(0, max(height - crop_h, 0) + 1))
    left = int(rng.integers(0, max(width - crop_w, 0) + 1))
    return CropBox(top, min(top + crop_h, height), left, min(left + crop_w, width))


def random_crop_box(
    label: np.ndarray,
    crop_size: Size,
    rng: np.random.Generator,
    cat_max_ratio: float = 0.75,
    ignore_index: int = IGNORE_INDEX,
    max_tries: int = 10,
) -> CropBox:
    """mmseg/DAFormer ``RandomCrop``: a random box, redrawn while one class dominates it.

    A box is accepted when its labelled (non-ignore) pixels hold more than one class and the
    largest class has a share below ``cat_max_ratio``. Up to ``max_tries`` boxes are checked;
    if all fail, a fresh unchecked box is returned, exactly as mmseg does. ``cat_max_ratio >= 1``
    disables the rule (the first box is used).
    """
    image_size = (label.shape[1], label.shape[0])
    box = uniform_crop_box(image_size, crop_size, rng)
    if cat_max_ratio >= 1.0:
        return box
    for _ in range(max_tries):
        counts = np.bincount(box.apply(label).ravel().astype(np.intp), minlength=ignore_index + 1)
        counts[ignore_index] = 0
        counts = counts[counts > 0]
        if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
            return box
        box = uniform_crop_box(image_size, crop_size, rng)
    return box


def pad_to(array: np.ndarray, size: Size, value: float) -> np.ndarray:
    """Pad an ``(H, W, ...)`` array at the bottom and right up to ``size = (w, h)`` with ``value``."""
    width, height = size
    pad_h, pad_w = max(height - array.shape[0], 0), max(width - array.shape[1], 0)
    if pad_h == 0 and pad_w == 0:
        return array
    widths = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, widths, mode="constant", constant_values=value)


def hflip(array: np.ndarray) -> np.ndarray:
    """Mirror an ``(H, W)`` or ``(H, W, C)`` array left-right (axis 1)."""
    return np.ascontiguousarray(array[:, ::-1])
