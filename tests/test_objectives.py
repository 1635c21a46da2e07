"""Specification of the training objectives' shortcuts: each computes exactly what the plain
computation it stands for would, only with less work."""

import pytest
import torch

from cicld.data.labels import IGNORE_INDEX, NUM_CLASSES
from cicld.models import CICLD, CICLDConfig
from cicld.models.losses import confusion_loss, diffusion_loss, discriminator_loss, segmentation_loss
from cicld.training.config import AdaptConfig
from cicld.training.objectives import UDAObjective

pytestmark = pytest.mark.usefixtures("single_thread")

B, H, W = 2, 64, 128  # images per domain; the tiny preset's reference size


def uda_batch():
    g = torch.Generator().manual_seed(1)
    source, mixed, target = (torch.randn(B, 3, H, W, generator=g) for _ in range(3))
    source_labels, mixed_labels = (torch.randint(0, NUM_CLASSES, (B, H, W), generator=g) for _ in range(2))
    mixed_labels[:, :8] = IGNORE_INDEX
    mixed_weights = torch.rand(B, H, W, generator=g)
    return source, source_labels, mixed, mixed_labels, mixed_weights, target


def segment_everything_then_slice(
    model: CICLD, config: AdaptConfig, source, source_labels, mixed, mixed_labels, mixed_weights, target
) -> dict[str, torch.Tensor]:
    """The UDA losses computed the plain way: all three batches through the whole network, D and
    f_cls included, and the target's logits thrown away."""
    out = model.forward_train(
        torch.cat([source, mixed, target]),
        torch.cat([source_labels, mixed_labels, torch.full_like(source_labels, IGNORE_INDEX)]),
    )
    logits, z0_hat = out["logits"], out["z0_hat"]
    domains = torch.tensor([0] * B + [1] * B + [2] * B)
    return {
        "ce_source": segmentation_loss(logits[:B], source_labels),
        "ce_mixed": segmentation_loss(logits[B : 2 * B], mixed_labels, pixel_weight=mixed_weights),
        "diffusion": config.lambda_dif * diffusion_loss(out["noise_pred"], out["noise"]),
        "dis": config.lambda_dis * discriminator_loss(model.discriminator, z0_hat, domains),
        "adv": config.lambda_adv * confusion_loss(model.discriminator, z0_hat),
    }


def losses_and_gradients(model: CICLD, compute) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor | None]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the same timesteps, noise and condition dropout for both computations
    losses = compute()
    sum(losses.values()).backward()
    return {k: v.detach() for k, v in losses.items()}, {n: p.grad for n, p in model.named_parameters()}


def test_uda_objective_gives_the_losses_and_gradients_of_segmenting_the_target_too_and_ignoring_it():
    torch.manual_seed(0)
    # No dropout in f_cls: its masks would be drawn for 4 images on one path and 6 on the other.
    model = CICLD(CICLDConfig.preset("tiny", cls_dropout=0.0)).train()
    with torch.no_grad():  # move the zero-initialised inter-coder convs, as training would
        for p in model.decoder.fusions.parameters():
            p.normal_(0, 0.5, generator=torch.Generator().manual_seed(7))
    config, batch = AdaptConfig(), uda_batch()
    objective = UDAObjective(model, config)

    losses, grads = losses_and_gradients(model, lambda: objective(*batch))
    expected_losses, expected_grads = losses_and_gradients(
        model, lambda: segment_everything_then_slice(model, config, *batch)
    )

    assert losses.keys() == expected_losses.keys()
    for key, value in expected_losses.items():
        torch.testing.assert_close(losses[key], value, rtol=1e-5, atol=1e-7, msg=key)
    assert {n for n, g in grads.items() if g is not None} == {n for n, g in expected_grads.items() if g is not None}
    reached = [n for n, g in expected_grads.items() if g is not None]
    assert any(n.startswith("encoder.") for n in reached) and any(n.startswith("decoder.f_cls.") for n in reached)
    for name in reached:
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-4, atol=1e-7, msg=name)
