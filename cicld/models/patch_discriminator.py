"""The patch-GAN discriminator of autoencoder pre-training (as in taming-transformers / LDM).

A fully convolutional classifier whose every output pixel judges one ~70×70 patch real or fake;
used only by ``pretrain-ae``, not part of the exported segmentation model.
"""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for n in range(1, num_layers + 1):
            previous, width = width, channels * min(2**n, 8)
            stride = 1 if n == num_layers else 2
            # GroupNorm rather than BatchNorm: no running statistics to sync across processes.
            layers += [
                nn.Conv2d(previous, width, 4, stride=stride, padding=1, bias=False),
                nn.GroupNorm(min(32, width // 4), width),
                nn.LeakyReLU(0.2),
            ]
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Per-patch logits (B, 1, h, w)."""
        return self.layers(images)
