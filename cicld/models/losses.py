"""The CICLD losses (§3.4) and the optional alignment losses of Table 2.

Which parameters each loss may move is part of its contract (and tested):

================================  =============================================
loss                              reaches
================================  =============================================
:func:`segmentation_loss`         everything upstream of the logits (E, ε_θ, f_mask, D, f_cls)
:func:`diffusion_loss`            ε_θ (and f_mask); never E, because CICLD feeds the UNet a
                                  detached z_t (see :meth:`CICLD.forward_train`)
:func:`discriminator_loss`        f_dis only: the latents are detached
:func:`confusion_loss`            E and ε_θ; never f_dis, whose parameters enter detached
:func:`generator_loss`            as confusion_loss (2-class, ADDA-style)
:func:`feature_distance`          the pretrained backbone (and nothing of its frozen reference)
================================  =============================================
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from cicld.data.labels import IGNORE_INDEX


def segmentation_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    pixel_weight: torch.Tensor | float | None = None,
    ignore_index: int = IGNORE_INDEX,
    class_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pixel cross-entropy (Eq. 7), averaged over non-ignored pixels; 0 when every pixel is ignored.

    ``pixel_weight`` (a scalar, a per-image (B,) vector or a (B, H, W) map, e.g. the pseudo-label
    confidence weight) multiplies each pixel's loss before averaging, as DAFormer's mixed-image
    loss does. ``class_weight`` (K,) weights each pixel by its label's class and makes the
    average a weighted one (``F.cross_entropy(weight=...)``'s normalisation).
    """
    per_pixel = F.cross_entropy(logits.float(), labels.long(), ignore_index=ignore_index, reduction="none")
    valid = (labels != ignore_index).to(per_pixel.dtype)
    if class_weight is not None:
        valid = valid * class_weight.to(per_pixel)[labels.long().clamp(0, len(class_weight) - 1)]
    if pixel_weight is not None:
        if isinstance(pixel_weight, torch.Tensor) and pixel_weight.dim() == 1:
            pixel_weight = pixel_weight.view(-1, 1, 1)
        per_pixel = per_pixel * pixel_weight
    return (per_pixel * valid).sum() / valid.sum().clamp(min=1e-12 if class_weight is not None else 1.0)


def diffusion_loss(noise_pred: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """‖ε − ε_θ(z_t, t)‖², averaged over elements (Eq. 6)."""
    return F.mse_loss(noise_pred.float(), noise.float())


def discriminator_loss(discriminator: nn.Module, latents: torch.Tensor, domain: int | torch.Tensor) -> torch.Tensor:
    """f_dis's cross-entropy on *detached* latents of one domain (or per-sample domain labels)."""
    logits = discriminator(latents.detach())
    return F.cross_entropy(logits.float(), _domain_targets(domain, logits))


def confusion_loss(discriminator: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """KL(f_dis(ẑ0) ‖ uniform) (Eq. 8, the term for E): gradients reach the latents, not f_dis."""
    log_p = F.log_softmax(frozen_forward(discriminator, latents).float(), dim=1)
    num_domains = log_p.shape[1]
    return (log_p.exp() * (log_p + math.log(num_domains))).sum(dim=1).mean()


def generator_loss(discriminator: nn.Module, latents: torch.Tensor, fool_domain: int | torch.Tensor) -> torch.Tensor:
    """ADDA-style generator loss: make frozen f_dis call these latents ``fool_domain``
    (e.g. target latents "source" with the 2-class discriminator)."""
    logits = frozen_forward(discriminator, latents)
    return F.cross_entropy(logits.float(), _domain_targets(fool_domain, logits))


def frozen_forward(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """``module(inputs)`` with detached parameters: differentiable in the input only."""
    state = {name: param.detach() for name, param in module.named_parameters()}
    state.update(dict(module.named_buffers()))
    return torch.func.functional_call(module, state, (inputs,))


def _domain_targets(domain: int | torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    if isinstance(domain, torch.Tensor):
        return domain.to(device=logits.device, dtype=torch.long).expand(logits.shape[0])
    return torch.full((logits.shape[0],), int(domain), dtype=torch.long, device=logits.device)


# ---------------------------------------------------------------------- alignment (Table 2)
def mmd_loss(
    x: torch.Tensor, y: torch.Tensor, bandwidths: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
) -> torch.Tensor:
    """Biased squared MMD between samples x (N, D) and y (M, D) under a sum of Gaussian kernels.

    Bandwidths are multiples of the median pairwise squared distance, so the loss is
    scale-free; the median is detached (it picks the kernel, it is not a target).
    """
    x, y = x.flatten(1).float(), y.flatten(1).float()
    joint = torch.cat([x, y])
    sq_dist = torch.cdist(joint, joint).pow(2)
    base = sq_dist.detach()[sq_dist.detach() > 0].median() if (sq_dist.detach() > 0).any() else sq_dist.new_tensor(1.0)
    kernel = sum(torch.exp(-sq_dist / (base * b)) for b in bandwidths)
    n = x.shape[0]
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


def class_prototypes(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean feature per class. features (B, C, h, w); labels (B, H, W) are resized (nearest) to
    (h, w). Returns prototypes (K, C) and a (K,) mask of classes present."""
    labels = _labels_at(labels, features.shape[-2:])
    flat = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    ids = labels.reshape(-1)
    valid = (ids != ignore_index) & (ids >= 0) & (ids < num_classes)
    sums = torch.zeros(num_classes, flat.shape[1], dtype=flat.dtype, device=flat.device)
    sums.index_add_(0, ids[valid], flat[valid])
    counts = torch.bincount(ids[valid], minlength=num_classes).to(flat.dtype)
    return sums / counts.clamp(min=1)[:, None], counts > 0


def prototype_contrastive_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    prototypes: torch.Tensor,
    present: torch.Tensor | None = None,
    temperature: float = 0.1,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Pixel-to-prototype InfoNCE: each labelled pixel's feature should be closer (cosine) to its
    class prototype than to the others. Classes outside ``present`` are neither positives nor
    negatives; returns 0 when no pixel has a present class."""
    num_classes = prototypes.shape[0]
    present = torch.ones(num_classes, dtype=torch.bool, device=prototypes.device) if present is None else present
    labels = _labels_at(labels, features.shape[-2:])
    flat = F.normalize(features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]).float(), dim=1)
    ids = labels.reshape(-1)
    keep = (ids != ignore_index) & (ids >= 0) & (ids < num_classes)
    keep &= present[ids.clamp(0, num_classes - 1)]
    if not keep.any():
        return features.sum() * 0.0
    logits = flat[keep] @ F.normalize(prototypes.float(), dim=1).t() / temperature
    logits = logits.masked_fill(~present[None], float("-inf"))
    return F.cross_entropy(logits, ids[keep])


def _labels_at(labels: torch.Tensor, shape_hw: tuple[int, int] | torch.Size) -> torch.Tensor:
    if tuple(labels.shape[-2:]) == tuple(shape_hw):
        return labels.long()
    return F.interpolate(labels[:, None].float(), size=tuple(shape_hw), mode="nearest")[:, 0].long()


#: DAFormer's feature-distance classes, Cityscapes trainIds of the "things": traffic light, traffic
#: sign, person, rider, car, truck, bus, train, motorcycle, bicycle.
THING_CLASSES = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)


def feature_distance(
    features: torch.Tensor,
    reference: torch.Tensor,
    labels: torch.Tensor | None = None,
    classes: tuple[int, ...] | None = None,
    num_classes: int | None = None,
    min_ratio: float = 0.75,
) -> torch.Tensor:
    """DAFormer's feature distance: the mean over feature pixels of ‖features − reference‖₂ along
    channels (the reference detached), counted only where the label, pooled to the features'
    resolution, is one of ``classes`` for at least ``min_ratio`` of the pixels
    (:func:`downscale_labels`). No ``classes``: every pixel. 0 where no pixel counts."""
    distance = torch.linalg.vector_norm(features.float() - reference.detach().float(), dim=1)
    if classes is None:
        return distance.mean()
    pooled = downscale_labels(labels, tuple(features.shape[-2:]), min_ratio, num_classes)
    mask = torch.isin(pooled, torch.tensor(classes, device=pooled.device))
    if not mask.any():
        return 0.0 * distance.sum()  # a zero in the graph: backward() works even where it is the only loss
    return distance[mask].mean()


def downscale_labels(labels: torch.Tensor, size: tuple[int, int], min_ratio: float, num_classes: int) -> torch.Tensor:
    """(B, H, W) labels at ``size`` by majority over each pooled window; ignore where the majority
    class covers less than ``min_ratio`` of it (DAFormer's ``downscale_label_ratio``)."""
    ignore = labels == IGNORE_INDEX
    one_hot = F.one_hot(torch.where(ignore, num_classes, labels.long()), num_classes + 1).permute(0, 3, 1, 2)
    ratio, pooled = F.adaptive_avg_pool2d(one_hot.float(), size).max(dim=1)
    pooled[(pooled == num_classes) | (ratio < min_ratio)] = IGNORE_INDEX
    return pooled
