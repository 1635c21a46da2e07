"""Specification of the CICLD losses: values, and exactly which modules each one trains."""

import math

import pytest
import torch
import torch.nn.functional as F

from cicld.data.labels import NUM_CLASSES
from cicld.models import CICLD, CICLDConfig
from cicld.models.losses import (
    class_prototypes,
    confusion_loss,
    diffusion_loss,
    discriminator_loss,
    generator_loss,
    mmd_loss,
    prototype_contrastive_loss,
    segmentation_loss,
)

H, W = 64, 64


pytestmark = pytest.mark.usefixtures("single_thread")


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def tiny(**overrides) -> CICLD:
    torch.manual_seed(0)
    model = CICLD(CICLDConfig.preset("tiny", **overrides)).train()
    with torch.no_grad():  # trained-looking fusions, so that gradients flow through them too
        for p in model.decoder.fusions.parameters():
            p.normal_(0, 0.1, generator=seeded(7))
    return model


def batch():
    x = torch.randn(2, 3, H, W, generator=seeded(1))
    y = torch.randint(0, NUM_CLASSES, (2, H, W), generator=seeded(2))
    return x, y


def reached(model: CICLD, loss: torch.Tensor) -> dict[str, bool]:
    """For each part of the model: did the loss give any of its parameters a non-zero gradient?"""
    model.zero_grad(set_to_none=True)
    loss.backward()
    parts = {
        "encoder": model.encoder,
        "unet": model.unet,
        "mask_encoder": model.mask_encoder,
        "decoder": [p for n, p in model.decoder.named_parameters() if not n.startswith(("f_cls.", "fusions."))],
        "inter_coder": model.decoder.fusions,
        "f_cls": model.decoder.f_cls,
        "discriminator": model.discriminator,
    }
    result = {}
    for name, part in parts.items():
        params = list(part.parameters()) if hasattr(part, "parameters") else part
        result[name] = any(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in params)
    return result


@pytest.fixture
def model():
    return tiny()


@pytest.fixture
def out(model):
    x, y = batch()
    return model.forward_train(x, y, generator=seeded(), condition_dropout=0.0)


# ---------------------------------------------------------------------- which modules each loss trains
def test_cross_entropy_reaches_encoder_unet_mask_encoder_decoder_inter_coder_and_f_cls_but_not_f_dis(model, out):
    _, y = batch()
    assert reached(model, segmentation_loss(out["logits"], y)) == {
        "encoder": True,
        "unet": True,
        "mask_encoder": True,
        "decoder": True,
        "inter_coder": True,
        "f_cls": True,
        "discriminator": False,
    }


def test_diffusion_loss_reaches_the_unet_and_mask_encoder_only(model, out):
    assert reached(model, diffusion_loss(out["noise_pred"], out["noise"])) == {
        "encoder": False,
        "unet": True,
        "mask_encoder": True,
        "decoder": False,
        "inter_coder": False,
        "f_cls": False,
        "discriminator": False,
    }


def test_discriminator_loss_trains_the_discriminator_and_never_reaches_the_encoder(model, out):
    grads = reached(model, discriminator_loss(model.discriminator, out["z0_hat"], domain=0))
    assert grads["discriminator"] is True
    assert not any(v for k, v in grads.items() if k != "discriminator")


def test_confusion_loss_reaches_encoder_and_unet_but_never_updates_the_discriminator(model, out):
    grads = reached(model, confusion_loss(model.discriminator, out["z0_hat"]))
    assert grads["encoder"] is True and grads["unet"] is True
    assert grads["discriminator"] is False
    assert grads["decoder"] is False and grads["f_cls"] is False


def test_two_class_generator_loss_reaches_encoder_and_unet_but_never_the_discriminator():
    model = tiny(discriminator="2class")
    x, y = batch()
    out = model.forward_train(x, y, generator=seeded())
    loss = generator_loss(model.discriminator, out["z0_hat"], fool_domain=model.discriminator.domain_index("source"))
    grads = reached(model, loss)
    assert grads["encoder"] is True and grads["unet"] is True and grads["discriminator"] is False


def test_confusion_loss_leaves_discriminator_parameters_usable_by_their_own_optimiser(model, out):
    # The adversarial step after the confusion step: f_dis must still get its own gradient.
    confusion_loss(model.discriminator, out["z0_hat"]).backward(retain_graph=True)
    assert all(p.grad is None for p in model.discriminator.parameters())
    discriminator_loss(model.discriminator, out["z0_hat"], domain=2).backward()
    assert all(p.grad is not None for p in model.discriminator.parameters())


# ---------------------------------------------------------------------- values
def test_segmentation_loss_is_cross_entropy_over_non_ignored_pixels():
    logits = torch.randn(1, 4, 2, 3, generator=seeded())
    labels = torch.tensor([[[0, 1, 255], [3, 255, 2]]])
    keep = labels != 255
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], labels[keep])
    torch.testing.assert_close(segmentation_loss(logits, labels), expected)


def test_class_weighted_segmentation_loss_is_torch_weighted_cross_entropy():
    logits = torch.randn(2, 4, 3, 3, generator=seeded())
    labels = torch.randint(0, 4, (2, 3, 3), generator=seeded(1))
    labels[0, 0] = 255
    weight = torch.tensor([0.2, 1.0, 3.0, 0.5])
    expected = F.cross_entropy(logits, labels, weight=weight, ignore_index=255)
    torch.testing.assert_close(segmentation_loss(logits, labels, class_weight=weight), expected)


def test_segmentation_loss_is_zero_not_nan_when_every_pixel_is_ignored():
    logits = torch.randn(1, 4, 2, 2, requires_grad=True)
    loss = segmentation_loss(logits, torch.full((1, 2, 2), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(logits.grad) == 0


def test_segmentation_loss_scales_with_a_pixel_weight():
    logits, labels = torch.randn(2, 4, 3, 3, generator=seeded()), torch.randint(0, 4, (2, 3, 3), generator=seeded(1))
    torch.testing.assert_close(
        segmentation_loss(logits, labels, pixel_weight=0.25), 0.25 * segmentation_loss(logits, labels)
    )
    weight = torch.zeros(2, 3, 3)
    weight[0] = 1.0
    torch.testing.assert_close(
        segmentation_loss(logits, labels, pixel_weight=weight), segmentation_loss(logits[:1], labels[:1]) / 2
    )
    per_image = torch.tensor([1.0, 0.0])
    torch.testing.assert_close(
        segmentation_loss(logits, labels, pixel_weight=per_image), segmentation_loss(logits[:1], labels[:1]) / 2
    )


def test_diffusion_loss_is_the_mean_squared_noise_error():
    noise, pred = torch.zeros(2, 4, 2, 2), torch.full((2, 4, 2, 2), 3.0)
    assert diffusion_loss(pred, noise).item() == pytest.approx(9.0)


def test_discriminator_loss_is_cross_entropy_to_the_domain_label(model):
    z = torch.randn(3, 4, 8, 8, generator=seeded())
    logits = model.discriminator(z)
    torch.testing.assert_close(
        discriminator_loss(model.discriminator, z, domain=1), F.cross_entropy(logits, torch.ones(3, dtype=torch.long))
    )
    per_sample = torch.tensor([0, 1, 2])
    torch.testing.assert_close(
        discriminator_loss(model.discriminator, z, domain=per_sample), F.cross_entropy(logits, per_sample)
    )


class FixedLogits(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits)

    def forward(self, z):
        return self.logits.expand(z.shape[0], -1) + 0 * z.sum()


def test_confusion_loss_is_zero_when_the_discriminator_is_maximally_confused():
    assert confusion_loss(FixedLogits(torch.zeros(1, 3)), torch.randn(2, 4)).item() == pytest.approx(0.0, abs=1e-7)


def test_confusion_loss_is_the_kl_divergence_to_the_uniform_distribution():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    p = logits.softmax(dim=1)
    expected = (p * (p.log() - math.log(1 / 3))).sum()
    torch.testing.assert_close(confusion_loss(FixedLogits(logits), torch.randn(1, 4)), expected)


def test_mmd_is_zero_between_identical_samples_and_grows_with_a_domain_shift():
    x = torch.randn(64, 8, generator=seeded(1))
    same = torch.randn(64, 8, generator=seeded(2))
    shifted = torch.randn(64, 8, generator=seeded(3)) + 1.5
    assert mmd_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert mmd_loss(x, shifted).item() > 5 * mmd_loss(x, same).item()


def test_mmd_loss_gives_gradients_that_pull_the_samples_together():
    x = torch.randn(32, 4, generator=seeded(1))
    y = (torch.randn(32, 4, generator=seeded(2)) + 2.0).requires_grad_()
    mmd_loss(x, y).backward()
    # Descending the gradient moves y towards x (whose mean is ~0, y's is ~2).
    assert (y.grad.mean(dim=0) > 0).all()


def test_class_prototypes_are_the_mean_feature_of_each_present_class():
    features = torch.arange(8.0).view(1, 2, 2, 2)  # channel 0: 0..3, channel 1: 4..7
    labels = torch.tensor([[[0, 0], [2, 255]]])
    prototypes, present = class_prototypes(features, labels, num_classes=3)
    assert present.tolist() == [True, False, True]
    torch.testing.assert_close(prototypes[0], torch.tensor([0.5, 4.5]))
    torch.testing.assert_close(prototypes[2], torch.tensor([2.0, 6.0]))


def test_prototype_contrastive_loss_is_lower_for_features_aligned_with_their_class():
    prototypes = torch.eye(3)
    labels = torch.tensor([[[0, 1], [2, 0]]])
    aligned = prototypes[labels].permute(0, 3, 1, 2)
    misaligned = prototypes[(labels + 1) % 3].permute(0, 3, 1, 2)
    assert prototype_contrastive_loss(aligned, labels, prototypes) < prototype_contrastive_loss(
        misaligned, labels, prototypes
    )


def test_prototype_contrastive_loss_resizes_labels_and_skips_absent_classes():
    features = torch.randn(1, 3, 4, 4, generator=seeded(), requires_grad=True)
    labels = torch.full((1, 16, 16), 255)
    assert prototype_contrastive_loss(features, labels, torch.eye(3)).item() == 0.0
    labels[:, :8] = 1
    present = torch.tensor([False, True, True])
    loss = prototype_contrastive_loss(features, labels, torch.eye(3), present=present)
    loss.backward()
    assert torch.isfinite(loss) and features.grad is not None
