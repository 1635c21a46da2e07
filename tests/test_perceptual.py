"""The optional perceptual loss of pretrain-ae: loaded from a local VGG16 file, zero for equal images."""

import pytest
import torch
from safetensors.torch import save_file

from cicld.errors import CicldError
from cicld.models.perceptual import PerceptualLoss, vgg16_features


@pytest.fixture
def vgg_file(tmp_path):
    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in vgg16_features().state_dict().items()}
    save_file(state, tmp_path / "vgg16.safetensors")
    return tmp_path / "vgg16.safetensors"


def test_equal_images_cost_nothing_and_different_images_cost_something(vgg_file):
    loss = PerceptualLoss(vgg_file)
    images = torch.randn(2, 3, 32, 32)
    assert loss(images, images).item() == pytest.approx(0.0, abs=1e-7)
    assert loss(images + 0.5 * torch.randn_like(images), images).item() > 0


def test_the_feature_extractor_is_frozen_and_gradients_reach_the_reconstruction(vgg_file):
    loss = PerceptualLoss(vgg_file)
    reconstruction = torch.randn(1, 3, 32, 32, requires_grad=True)
    loss(reconstruction, torch.randn(1, 3, 32, 32)).backward()
    assert reconstruction.grad is not None and reconstruction.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.parameters())


def test_a_file_that_is_not_vgg16_is_a_clear_error(tmp_path):
    save_file({"features.0.weight": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(CicldError, match="not a VGG16 features state dict"):
        PerceptualLoss(tmp_path / "other.safetensors")
    with pytest.raises(CicldError, match="do not exist"):
        PerceptualLoss(tmp_path / "missing.safetensors")


def test_pretrain_ae_uses_the_perceptual_loss_when_given_a_weight_file(cli, toy_root, tmp_path, vgg_file):
    from cicld.training.runs import stage_runs

    from conftest import stage_flags

    runs = tmp_path / "runs"
    result = cli("pretrain-ae", *stage_flags(toy_root, runs), "--perceptual-weights", vgg_file)
    assert result.exit_code == 0, result.stderr
    (run,) = stage_runs(runs, "pretrain-ae")
    assert "perceptual" in (run / "log.csv").read_text().splitlines()[0].split(",")
