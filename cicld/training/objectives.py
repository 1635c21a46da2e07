"""The training objectives of the three stages, each one ``nn.Module`` whose forward returns losses.

Computing *all* of a step's losses in one forward call (source, mixed and target images in one
batch, the discriminators inside) is what lets Accelerate's DistributedDataParallel wrap the
objective: DDP supports one forward per backward. A term that does not count in a step is not
computed (a constant zero is logged in its place): the parts of the model that then sit out, and
those that sit out a whole stage, are DDP's to skip (``find_unused_parameters``, session.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cicld.data.labels import IGNORE_INDEX
from cicld.models import CICLD
from cicld.models.losses import (
    class_prototypes,
    confusion_loss,
    diffusion_loss,
    discriminator_loss,
    feature_distance,
    frozen_forward,
    generator_loss,
    mmd_loss,
    prototype_contrastive_loss,
    segmentation_loss,
)
from cicld.models.patch_discriminator import PatchDiscriminator
from cicld.models.perceptual import PerceptualLoss

SOURCE, MIXED, TARGET = 0, 1, 2  # f_dis classes (DESIGN §3)


class FeatureDistance:
    """``--feature-distance``: DAFormer's distance between the backbone's deepest features on the
    labelled images and those of a frozen copy of the pretrained backbone it started from
    (:func:`cicld.models.losses.feature_distance`), which keeps what pre-training taught it.

    A plain object, not a submodule of the objective: the frozen copy is neither trained, nor
    checkpointed (it is loaded again from where it came from), nor synchronised by DDP.
    """

    def __init__(self, reference: nn.Module, weight: float, classes: tuple[int, ...] | None, num_classes: int):
        self.reference = reference.eval().requires_grad_(False)
        self.weight, self.classes, self.num_classes = weight, classes, num_classes

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, backbone_features: list[torch.Tensor]
    ) -> torch.Tensor:
        with torch.no_grad():
            reference = self.reference.raw_features(images)[-1]
        distance = feature_distance(backbone_features[-1], reference, labels, self.classes, self.num_classes)
        return self.weight * distance


class AutoencoderObjective(nn.Module):
    """``pretrain-ae``: L1 + KL (+ perceptual) + patch-GAN after ``gan_start`` (hinge loss)."""

    def __init__(
        self, model: CICLD, patch_discriminator: PatchDiscriminator, perceptual: PerceptualLoss | None, config
    ):
        super().__init__()
        self.model = model
        self.patch_discriminator = patch_discriminator
        self.perceptual = perceptual
        self.config = config

    def forward(self, images: torch.Tensor, gan_active: bool) -> dict[str, torch.Tensor]:
        posterior = self.model.encode_posterior(images)
        reconstruction = self.model.decoder.decode_rgb(posterior.sample())
        losses = {
            "l1": self.config.l1_weight * (reconstruction - images).abs().mean(),
            "kl": self.config.kl_weight * posterior.kl().mean(),
        }
        if self.perceptual is not None:
            losses["perceptual"] = self.config.perceptual_weight * self.perceptual(reconstruction, images)
        if not gan_active:  # the warm-up: the patch discriminator sits out (logged as 0)
            zero = reconstruction.new_zeros(())
            return {**losses, "gan_generator": zero, "gan_discriminator": zero}
        fooled = frozen_forward(self.patch_discriminator, reconstruction).mean()
        losses["gan_generator"] = self.config.gan_weight * -fooled
        real = self.patch_discriminator(images)
        fake = self.patch_discriminator(reconstruction.detach())
        losses["gan_discriminator"] = 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
        return losses


class SegmentationObjective(nn.Module):
    """``pretrain-ldm`` and the source-only/oracle bounds: CE on labelled images + diffusion loss."""

    def __init__(
        self,
        model: CICLD,
        lambda_dif: float,
        class_weight: torch.Tensor | None = None,
        feature_distance: FeatureDistance | None = None,
    ):
        super().__init__()
        self.model = model
        self.lambda_dif = lambda_dif
        self.feature_distance = feature_distance
        self.register_buffer("class_weight", class_weight, persistent=False)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.model.forward_train(images, labels)
        losses = {
            "ce_source": segmentation_loss(out["logits"], labels, class_weight=self.class_weight),
            "diffusion": self.lambda_dif * diffusion_loss(out["noise_pred"], out["noise"]),
        }
        if self.feature_distance is not None:
            losses["feature_distance"] = self.feature_distance(images, labels, out["backbone_features"])
        return losses


class UDAObjective(nn.Module):
    """``adapt``: CE on source and mixed images, diffusion loss, adversarial alignment (+ CL, MMD).

    Source, mixed and target images go through the model as one batch; the target's all-ignore
    label gives it the null condition. f_dis learns on detached ẑ0; E and ε_θ see it frozen.
    """

    def __init__(
        self,
        model: CICLD,
        config,
        class_weight: torch.Tensor | None = None,
        feature_distance: FeatureDistance | None = None,
    ):
        super().__init__()
        self.model = model
        self.config = config
        self.feature_distance = feature_distance
        self.register_buffer("class_weight", class_weight, persistent=False)

    def forward(
        self,
        source_images: torch.Tensor,
        source_labels: torch.Tensor,
        mixed_images: torch.Tensor,
        mixed_labels: torch.Tensor,
        mixed_weights: torch.Tensor,
        target_images: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        config, b = self.config, source_images.shape[0]
        target_labels = torch.full_like(source_labels, IGNORE_INDEX)
        out = self.model.forward_train(
            torch.cat([source_images, mixed_images, target_images]),
            torch.cat([source_labels, mixed_labels, target_labels]),
            num_segmented=2 * b,  # the target's logits are not used: it needs E and ε_θ only
        )
        logits, z0_hat = out["logits"], out["z0_hat"]
        source, mixed, target = slice(0, b), slice(b, 2 * b), slice(2 * b, 3 * b)
        losses = {
            "ce_source": segmentation_loss(logits[source], source_labels, class_weight=self.class_weight),
            "ce_mixed": segmentation_loss(logits[mixed], mixed_labels, pixel_weight=mixed_weights),
            "diffusion": config.lambda_dif * diffusion_loss(out["noise_pred"], out["noise"]),
        }
        discriminator = self.model.discriminator
        if config.adversarial == "3class":
            domains = torch.tensor([SOURCE] * b + [MIXED] * b + [TARGET] * b, device=z0_hat.device)
            losses["dis"] = config.lambda_dis * discriminator_loss(discriminator, z0_hat, domains)
            losses["adv"] = config.lambda_adv * confusion_loss(discriminator, z0_hat)
        elif config.adversarial == "2class":  # ADDA-style: source (0) vs target (1); target tries to pass as source
            pair = torch.cat([z0_hat[source], z0_hat[target]])
            domains = torch.tensor([0] * b + [1] * b, device=z0_hat.device)
            losses["dis"] = config.lambda_dis * discriminator_loss(discriminator, pair, domains)
            losses["adv"] = config.lambda_adv * generator_loss(discriminator, z0_hat[target], 0)
        else:  # f_dis sits out (logged as 0)
            losses["dis"] = z0_hat.new_zeros(())
        if config.contrastive:
            prototypes, present = class_prototypes(z0_hat[source], source_labels, self.model.config.num_classes)
            losses["cl"] = config.lambda_cl * prototype_contrastive_loss(
                z0_hat[mixed], mixed_labels, prototypes, present
            )
        if config.mmd:
            losses["mmd"] = config.lambda_mmd * mmd_loss(_positions(z0_hat[source]), _positions(z0_hat[target]))
        if self.feature_distance is not None:
            features = [f[source] for f in out["backbone_features"]]
            losses["feature_distance"] = self.feature_distance(source_images, source_labels, features)
        return losses


class SelfTrainingObjective(nn.Module):
    """``adapt --method self-training``: the no-diffusion baseline (DACS/DAFormer-style).

    The same network and UDA loop as CICLD without ε_θ: logits straight from z0 and E's features
    (S = 0), CE on source and mixed images only: no diffusion loss, no f_dis, no target pass.
    """

    def __init__(
        self, model: CICLD, class_weight: torch.Tensor | None = None, feature_distance: FeatureDistance | None = None
    ):
        super().__init__()
        self.model = model
        self.feature_distance = feature_distance
        self.register_buffer("class_weight", class_weight, persistent=False)

    def forward(
        self,
        source_images: torch.Tensor,
        source_labels: torch.Tensor,
        mixed_images: torch.Tensor,
        mixed_labels: torch.Tensor,
        mixed_weights: torch.Tensor,
        target_images: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        b = source_images.shape[0]
        images = torch.cat([source_images, mixed_images])
        z0, features, backbone_features = self.model.encode_with_backbone(images)
        logits = self.model.segment(z0, features, images.shape[-2:])
        losses = {
            "ce_source": segmentation_loss(logits[:b], source_labels, class_weight=self.class_weight),
            "ce_mixed": segmentation_loss(logits[b:], mixed_labels, pixel_weight=mixed_weights),
        }
        if self.feature_distance is not None:
            features = [f[:b] for f in backbone_features]
            losses["feature_distance"] = self.feature_distance(source_images, source_labels, features)
        return losses


def _positions(latents: torch.Tensor, limit: int = 256) -> torch.Tensor:
    """Latent vectors at (up to ``limit``, evenly strided) spatial positions: the samples for MMD."""
    flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    stride = max(1, flat.shape[0] // limit)
    return flat[::stride][:limit]
