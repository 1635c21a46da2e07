"""f_dis: the domain discriminator over denoised latents ẑ0 (Eq. 8).

As in §4.1 of the paper: a convolutional encoder (the "encoding part of a UNet"), then two
fully connected layers of 1024 and 3 units. Global average pooling before the FC layers
makes it independent of the crop size. The 3-class variant separates source (0), mixed (1)
and target (2) latents; the 2-class variant (ADDA-style, Table 2) source (0) and target (1).

It is a submodule of :class:`~cicld.models.CICLD` (``model.discriminator``) so one
``save_pretrained`` directory holds everything; its parameters are trained by their own
optimiser through :func:`cicld.models.losses.discriminator_loss` only.
"""

from __future__ import annotations

import torch
import torch.nn as nn

DOMAINS_3CLASS = ("source", "mixed", "target")
DOMAINS_2CLASS = ("source", "target")


class DomainDiscriminator(nn.Module):
    """Latent (B, C, h, w) -> domain logits (B, num_domains)."""

    def __init__(
        self,
        latent_channels: int = 4,
        channels: tuple[int, ...] = (64, 128, 256, 512),
        hidden: int = 1024,
        num_domains: int = 3,
    ):
        super().__init__()
        if num_domains not in (2, 3):
            raise ValueError(f"num_domains must be 2 or 3, got {num_domains}")
        self.domains = DOMAINS_3CLASS if num_domains == 3 else DOMAINS_2CLASS
        layers: list[nn.Module] = [nn.Conv2d(latent_channels, channels[0], 3, padding=1), nn.LeakyReLU(0.2)]
        for previous, width in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(previous, width, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
        self.encoder = nn.Sequential(*layers)
        self.fc1 = nn.Linear(channels[-1], hidden)
        self.act = nn.LeakyReLU(0.2)
        self.fc2 = nn.Linear(hidden, num_domains)

    @property
    def num_domains(self) -> int:
        return len(self.domains)

    def domain_index(self, domain: str) -> int:
        """Class index of "source", "mixed" or "target" for this variant."""
        if domain not in self.domains:
            raise ValueError(
                f"the {self.num_domains}-class discriminator has no domain {domain!r}; it has {self.domains}"
            )
        return self.domains.index(domain)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        pooled = self.encoder(latents).mean(dim=(2, 3))
        return self.fc2(self.act(self.fc1(pooled)))
