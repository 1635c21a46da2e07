"""A perceptual loss over VGG16 features, loaded from a local safetensors file.

No weights can be downloaded at run time, so the user supplies a VGG16 ``features`` state dict
(torchvision's parameter names, ``features.0.weight`` ...) as safetensors. The loss is the
LPIPS baseline without learned linear layers: squared distance of unit-normalised activations
after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3, averaged.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from cicld.errors import CicldError

# torchvision's VGG16 "features": conv widths, "M" = max-pool.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_TAPS = (3, 8, 15, 22, 29)  # indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in `features`


def vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for item in _VGG16:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=False)]
            channels = item
    return nn.Sequential(*layers)


class PerceptualLoss(nn.Module):
    def __init__(self, weights_path: str | Path):
        super().__init__()
        self.features = vgg16_features()
        path = Path(weights_path)
        try:
            state = load_file(str(path))
        except FileNotFoundError:
            raise CicldError(f"perceptual weights {path} do not exist") from None
        except Exception as exc:  # safetensors' own error types
            raise CicldError(f"cannot read perceptual weights {path}: {exc}") from None
        state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        expected = {k: tuple(v.shape) for k, v in self.features.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in state.items()}
        if found != expected:
            wrong = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
            raise CicldError(
                f"{path} is not a VGG16 features state dict (missing or mis-shaped: {', '.join(wrong[:3])})"
            )
        self.features.load_state_dict(state)
        self.features.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> PerceptualLoss:
        return super().train(False)  # a fixed feature extractor: always in eval mode

    def forward(self, reconstruction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Inputs are ImageNet-normalised images, which is what VGG16 expects."""
        loss = reconstruction.new_zeros(())
        x, y = reconstruction, images
        for index, layer in enumerate(self.features):
            x, y = layer(x), layer(y)
            if index in _TAPS:
                loss = loss + (_unit(x) - _unit(y)).pow(2).sum(1).mean()
            if index == _TAPS[-1]:
                break
        return loss / len(_TAPS)


def _unit(features: torch.Tensor) -> torch.Tensor:
    return features / (features.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
