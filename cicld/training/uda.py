"""The UDA augmentations of ``cicld adapt``, in the order its step uses them (DAFormer/DACS):
pseudo-label the target with the EMA model, ClassMix the source into it, then colour jitter and
blur the mixed images.

:func:`pseudo_label` and :func:`mix` are the first two parts of adapt's step
(:mod:`cicld.training.adapt`); the rest are their building blocks.

Conventions as in :mod:`cicld.data.transforms`: images are ``(3, H, W)`` or batches
``(B, 3, H, W)`` float32 normalised with the ImageNet mean/std; labels ``(H, W)`` /
``(B, H, W)`` int64 trainIds. Nothing touches a global RNG: every random function takes a
``torch.Generator`` (ClassMix also a ``numpy.random.Generator``), so a result is a function of
its seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cicld.data.labels import IGNORE_INDEX
from cicld.data.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize, renormalize

Rng = np.random.Generator | torch.Generator

_GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision/kornia grayscale


# --------------------------------------------------------------------------- the step's two parts


@torch.no_grad()
def pseudo_label(
    ema_model, images: torch.Tensor, config, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-labels of the target ``images`` by ``ema_model`` and their pixel weights
    (:func:`pseudo_label_weight` with the ``--pseudo-*`` settings of the adapt ``config``).

    The model's inference path (null condition, S DDIM steps), with fresh noise every step (from
    the step's ``generator``), not the fixed seed of ``predict`` (DESIGN §2)."""
    ema_model.eval()
    probs = torch.softmax(ema_model.predict(images, generator=generator).float(), dim=1)
    return pseudo_label_weight(probs, config.pseudo_threshold, config.pseudo_ignore_top, config.pseudo_ignore_bottom)


@torch.no_grad()
def mix(
    source: dict,
    target: dict,
    pseudo: torch.Tensor,
    weight: torch.Tensor,
    config,
    generator: torch.Generator,
    class_weight: torch.Tensor | None = None,
):
    """ClassMix: paste half of the classes of each ``source`` image onto its ``target`` image
    (images, labels: the source's where pasted, the ``pseudo``-labels elsewhere; pixel weights:
    the ``weight`` of the pseudo-labels elsewhere, and where pasted 1, or with ``class_weight``
    (``--class-weights``) the weight of the pixel's source class, as the source loss weighs it),
    then colour jitter and blur the mixed images with the ``--mix-jitter-p`` and ``--mix-blur-p``
    of the adapt ``config``. Returns (images, labels, weights).

    Class weights go to the pasted pixels only: their labels are the source's own, while a class
    weight on a wrong pseudo-label would multiply the error (docs/benchmarks-archive.md, ninth round)."""
    masks = classmix_masks(source["label"], generator)
    images = class_mix(masks, source["image"], target["image"])
    labels = class_mix(masks, source["label"], pseudo)
    pasted = torch.ones_like(weight)
    if class_weight is not None:
        pasted = class_weight.to(weight)[source["label"].long().clamp(0, len(class_weight) - 1)]
    weights = class_mix(masks, pasted, weight)
    return augment_mixed(images, config, generator), labels, weights


def augment_mixed(images: torch.Tensor, config, generator: torch.Generator) -> torch.Tensor:
    """DACS's augmentation of the images the mixed loss trains on: colour jitter, then blur, with
    the ``--mix-jitter-p`` and ``--mix-blur-p`` of the adapt ``config``."""
    return gaussian_blur(color_jitter(images, generator, p=config.mix_jitter_p), generator, p=config.mix_blur_p)


# --------------------------------------------------------------------------- pseudo-labels


def pseudo_label_weight(
    probs: torch.Tensor,
    threshold: float = 0.968,
    ignore_top: int = 15,
    ignore_bottom: int = 120,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-labels and their pixel weights from softmax ``probs`` ``(B, C, H, W)`` (or ``(C, H, W)``).

    ``pseudo_label`` (int64, ``(B, H, W)``) is the argmax class. ``pixel_weight`` (float,
    ``(B, H, W)``) is, per image, the fraction of *all* its pixels whose max probability is
    ``>= threshold`` (counted before the row masks, as DAFormer), broadcast to every pixel, then
    0 on the first ``ignore_top`` and last ``ignore_bottom`` rows. DAFormer pools the fraction
    over the batch; it is per image here. The defaults are DAFormer's for 512-px crops: scale
    the row counts for other crop heights.
    """
    batched = probs.ndim == 4
    if not batched:
        probs = probs.unsqueeze(0)
    if probs.ndim != 4:
        raise ValueError(f"pseudo_label_weight expects (B, C, H, W) probabilities, got {tuple(probs.shape)}")
    max_prob, pseudo_label = probs.detach().max(dim=1)
    confident = (max_prob >= threshold).flatten(1).float().mean(dim=1)
    weight = confident.view(-1, 1, 1).expand_as(max_prob).clone()
    if ignore_top > 0:
        weight[:, :ignore_top] = 0.0
    if ignore_bottom > 0:
        weight[:, max(weight.shape[1] - ignore_bottom, 0) :] = 0.0
    if not batched:
        return pseudo_label[0], weight[0]
    return pseudo_label, weight


# --------------------------------------------------------------------------- ClassMix


def _permutation(n: int, rng: Rng) -> np.ndarray:
    if isinstance(rng, np.random.Generator):
        return rng.permutation(n)
    if isinstance(rng, torch.Generator):
        return torch.randperm(n, generator=rng, device=rng.device).cpu().numpy()
    raise TypeError(f"expected a numpy Generator or a torch.Generator, got {type(rng).__name__}")


def classmix_classes(source_label: np.ndarray | torch.Tensor, rng: Rng, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """The classes ClassMix pastes: a random half of those present in ``source_label``.

    ``n_chosen = (n + n % 2) // 2`` (i.e. ceil(n/2)) of the ``n`` classes present, as DAFormer.
    Unlike DAFormer (which takes ``torch.unique`` of the whole batch, 255 included), the classes
    are those of this one label and ``ignore_index`` is never chosen. Returns sorted int64 ids.
    """
    values = source_label.unique().cpu().numpy() if isinstance(source_label, torch.Tensor) else np.unique(source_label)
    classes = values[values != ignore_index].astype(np.int64)
    n = len(classes)
    chosen = classes[_permutation(n, rng)[: (n + n % 2) // 2]]
    return np.sort(chosen)


def classmix_mask(
    source_label: np.ndarray | torch.Tensor, rng: Rng, ignore_index: int = IGNORE_INDEX
) -> np.ndarray | torch.Tensor:
    """Boolean ``(H, W)`` mask of the pixels of :func:`classmix_classes` (same library as the label)."""
    chosen = classmix_classes(source_label, rng, ignore_index)
    if isinstance(source_label, torch.Tensor):
        return torch.isin(source_label, torch.as_tensor(chosen, device=source_label.device, dtype=source_label.dtype))
    return np.isin(source_label, chosen.astype(source_label.dtype))


def classmix_masks(source_labels: torch.Tensor, rng: Rng, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Batched :func:`classmix_mask`: ``(B, H, W)`` labels -> ``(B, H, W)`` bool, one draw per image."""
    return torch.stack([classmix_mask(label, rng, ignore_index) for label in source_labels])


def class_mix(mask, source, target):
    """Paste ``source`` onto ``target`` where ``mask`` is True (DAFormer ``one_mix``).

    ``mask`` is ``(H, W)`` or batched ``(B, H, W)``; ``source``/``target`` have the same shape
    as each other: the mask's shape (labels, per-pixel weights) or that shape with a channel
    axis before ``H`` (images ``(C, H, W)`` / ``(B, C, H, W)``). Works for torch and numpy and
    keeps the dtype, so labels stay exact integers.
    """
    if tuple(source.shape) != tuple(target.shape):
        raise ValueError(f"class_mix: source {tuple(source.shape)} and target {tuple(target.shape)} differ in shape")
    mask_shape, data_shape = tuple(mask.shape), tuple(source.shape)
    if len(data_shape) == len(mask_shape) + 1 and data_shape[:-3] + data_shape[-2:] == mask_shape:
        mask = mask[..., None, :, :]  # broadcast over the channel axis
    elif data_shape != mask_shape:
        raise ValueError(f"class_mix: mask {mask_shape} does not fit data {data_shape}")
    if isinstance(source, torch.Tensor):
        return torch.where(mask, source, target)
    return np.where(mask, source, target)


# --------------------------------------------------------------------------- photometric (torch, batched)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, device=generator.device))


def _grayscale(rgb: torch.Tensor) -> torch.Tensor:
    r, g, b = rgb.unbind(-3)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(-3)


def _blend(image: torch.Tensor, other: torch.Tensor, factor: float) -> torch.Tensor:
    return (factor * image + (1.0 - factor) * other).clamp(0.0, 1.0)


def _rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    r, g, b = rgb.unbind(-3)
    maxc, _ = rgb.max(dim=-3)
    minc, _ = rgb.min(dim=-3)
    delta = maxc - minc
    flat = delta == 0
    saturation = delta / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    safe = torch.where(flat, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(flat, torch.zeros_like(hue), hue)
    return torch.stack([torch.remainder(hue / 6.0, 1.0), saturation, maxc], dim=-3)


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    # Closed form: channel(n) = v - v s clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6,
    # with n = 5, 3, 1 for r, g, b; no per-sector branching.
    h, s, v = hsv.unbind(-3)
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + 6.0 * h, 6.0)
        channels.append(v - v * s * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(channels, dim=-3).clamp(0.0, 1.0)


def adjust_hue(rgb: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate the hue of a ``[0, 1]`` RGB ``(3, H, W)`` image by ``shift`` turns (HSV, as torchvision)."""
    hsv = _rgb_to_hsv(rgb)
    hsv = torch.cat([torch.remainder(hsv[:1] + shift, 1.0), hsv[1:]], dim=0)
    return _hsv_to_rgb(hsv)


def color_jitter(
    images: torch.Tensor,
    generator: torch.Generator,
    p: float = 0.8,
    strength: float = 0.2,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """DAFormer's colour jitter of mixed images: normalised ``(B, 3, H, W)`` in and out.

    Each image independently, with probability ``p``: denormalise to [0, 1], apply brightness
    (×b), contrast (blend with the mean grey), saturation (blend with the greyscale) with factors
    uniform in ``[1 - s, 1 + s]`` and a hue rotation uniform in ``[-s, s]`` turns, in a random
    order, clamping to [0, 1] after each (torchvision/kornia ``ColorJitter(s, s, s, s)``
    semantics), then renormalise. Images not selected are returned bit-for-bit unchanged.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"color_jitter expects (B, 3, H, W) images, got {tuple(images.shape)}")
    out = images.clone()
    s = strength
    for i in range(images.shape[0]):
        apply = float(torch.rand((), generator=generator, device=generator.device)) < p
        factors = [_uniform(generator, max(0.0, 1 - s), 1 + s) for _ in range(3)]
        hue = _uniform(generator, -min(s, 0.5), min(s, 0.5))
        order = torch.randperm(4, generator=generator, device=generator.device).tolist()
        if not apply:
            continue
        rgb = denormalize(images[i], mean, std).clamp(0.0, 1.0)
        for op in order:
            if op == 0:
                rgb = (rgb * factors[0]).clamp(0.0, 1.0)
            elif op == 1:
                rgb = _blend(rgb, _grayscale(rgb).mean(), factors[1])
            elif op == 2:
                rgb = _blend(rgb, _grayscale(rgb), factors[2])
            else:
                rgb = adjust_hue(rgb, hue)
        out[i] = renormalize(rgb, mean, std)
    return out


def gaussian_kernel_size(sigma: float) -> int:
    """Odd kernel size ``2 * ceil(3 sigma) + 1``: the taps beyond 3σ weigh < 0.3 %."""
    return 2 * math.ceil(3.0 * sigma) + 1


def _gaussian_1d(sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    radius = gaussian_kernel_size(sigma) // 2
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    kernel = torch.exp(-(x**2) / (2.0 * sigma**2))
    return kernel / kernel.sum()


def _blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of one ``(C, H, W)`` image with reflected borders (kornia's default)."""
    kernel = _gaussian_1d(sigma, image.dtype, image.device)
    radius, channels = kernel.numel() // 2, image.shape[0]
    x = image.unsqueeze(0)
    # "reflect" needs the pad to be smaller than the side; tiny images fall back to "replicate".
    mode = "reflect" if radius < min(image.shape[-2:]) else "replicate"
    x = F.pad(x, (radius, radius, radius, radius), mode=mode)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return x[0]


def gaussian_blur(
    images: torch.Tensor,
    generator: torch.Generator,
    p: float = 0.5,
    sigma: tuple[float, float] = (0.15, 1.15),
) -> torch.Tensor:
    """DAFormer's blur of mixed images: each of ``(B, C, H, W)`` with probability ``p`` gets a
    Gaussian blur with σ uniform in ``sigma``.

    Blur is linear, so it runs on normalised images directly. DAFormer sizes the kernel at ~10 %
    of the image side; for σ ≤ 1.15 the taps past 3σ are negligible, so the kernel here is
    ``2 * ceil(3σ) + 1`` (≤ 9) — the same result, much cheaper. Unselected images are unchanged.
    """
    if images.ndim != 4:
        raise ValueError(f"gaussian_blur expects (B, C, H, W) images, got {tuple(images.shape)}")
    out = images.clone()
    for i in range(images.shape[0]):
        apply = float(torch.rand((), generator=generator, device=generator.device)) < p
        value = _uniform(generator, sigma[0], sigma[1])
        if apply:
            out[i] = _blur(images[i], value)
    return out
