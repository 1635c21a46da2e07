"""The latent autoencoder E / D, built from diffusers' AutoencoderKL blocks under its parameter names.

``LatentEncoder`` *is* a diffusers ``Encoder`` (conv_in, down_blocks, mid_block, conv_norm_out,
conv_out) plus AutoencoderKL's ``quant_conv``; ``LatentDecoder`` *is* a diffusers ``Decoder``
plus ``post_quant_conv``. A diffusers ``AutoencoderKL`` state dict therefore maps onto them
key for key (``encoder.*`` → ``encoder.*``, ``quant_conv.*`` → ``encoder.quant_conv.*``,
``decoder.*`` → ``decoder.*``, ``post_quant_conv.*`` → ``decoder.post_quant_conv.*``).

What CICLD adds:

- the encoder also returns its per-scale features (the last activation at each resolution,
  before the block's downsampler) for the inter-coder connection;
- the decoder has two heads. The RGB head is diffusers' own full-resolution tail (conv_norm_out,
  conv_out), used by ``pretrain-ae``. The segmentation head ``f_cls`` reads the decoder at
  1/``cls_stride`` (1/4 by default) and the logits are upsampled bilinearly, like
  SegFormer/DAFormer heads, so segmentation never runs the expensive full-resolution stages;
- ``fusions``: the inter-coder connection. At every decoder scale the segmentation path runs,
  the encoder feature of that scale is concatenated and fused by a zero-initialised 1×1 conv
  added residually, so switching the connection on starts from the plain decoder.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from diffusers.models.autoencoders.vae import Decoder, DiagonalGaussianDistribution, Encoder


class LatentEncoder(Encoder):
    """E: image -> posterior moments over the latent, plus per-scale features."""

    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 4,
        block_out_channels: tuple[int, ...] = (32, 64, 128, 256),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        mid_block_attention: bool = False,
    ):
        super().__init__(
            in_channels=in_channels,
            out_channels=latent_channels,
            down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            act_fn="silu",
            double_z=True,
            mid_block_add_attention=mid_block_attention,
        )
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns (moments, features): moments = [mean, logvar] along channels (AutoencoderKL's
        ``quant_conv`` output); features[k] has stride 2**k and ``block_out_channels[k]`` channels."""
        hidden = self.conv_in(images)
        features = []
        # DownEncoderBlock2D.forward, opened up to keep each scale's last activation.
        for block in self.down_blocks:
            for resnet in block.resnets:
                hidden = resnet(hidden, temb=None)
            features.append(hidden)
            if block.downsamplers is not None:
                for downsampler in block.downsamplers:
                    hidden = downsampler(hidden)
        hidden = self.mid_block(hidden)
        hidden = self.conv_out(self.conv_act(self.conv_norm_out(hidden)))
        return self.quant_conv(hidden), features

    def posterior(self, images: torch.Tensor) -> DiagonalGaussianDistribution:
        return DiagonalGaussianDistribution(self(images)[0])


class InterCoderFusion(nn.Module):
    """x + W·[x, e] with W a zero-initialised 1×1 conv: the identity until training moves W."""

    def __init__(self, decoder_channels: int, encoder_channels: int):
        super().__init__()
        self.proj = nn.Conv2d(decoder_channels + encoder_channels, decoder_channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor, encoder_feature: torch.Tensor) -> torch.Tensor:
        return hidden + self.proj(torch.cat([hidden, encoder_feature], dim=1))


class SegmentationHead(nn.Module):
    """f_cls: norm, 3×3 conv, norm, 1×1 classifier on decoder features (logits at the input stride)."""

    def __init__(self, in_channels: int, hidden_channels: int, num_classes: int, norm_num_groups: int, dropout: float):
        super().__init__()
        self.norm_in = nn.GroupNorm(norm_num_groups, in_channels, eps=1e-6)
        self.conv = nn.Conv2d(in_channels, hidden_channels, 3, padding=1)
        self.norm = nn.GroupNorm(_groups(hidden_channels, norm_num_groups), hidden_channels, eps=1e-6)
        self.act = nn.SiLU()
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(hidden_channels, num_classes, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.conv(self.act(self.norm_in(hidden)))
        return self.classifier(self.dropout(self.act(self.norm(hidden))))


class LatentDecoder(Decoder):
    """D: latent -> RGB (``decode_rgb``) or -> class logits at 1/cls_stride (``segment``)."""

    def __init__(
        self,
        latent_channels: int = 4,
        out_channels: int = 3,
        block_out_channels: tuple[int, ...] = (32, 64, 128, 256),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        mid_block_attention: bool = False,
        num_classes: int = 19,
        cls_stride: int = 4,
        cls_hidden_channels: int = 128,
        cls_dropout: float = 0.1,
        inter_coder: bool = True,
    ):
        super().__init__(
            in_channels=latent_channels,
            out_channels=out_channels,
            up_block_types=("UpDecoderBlock2D",) * len(block_out_channels),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            act_fn="silu",
            mid_block_add_attention=mid_block_attention,
        )
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1)
        num_scales = len(block_out_channels)
        self.scale_factor = 2 ** (num_scales - 1)
        self.cls_stride = cls_stride
        # up_blocks[i] works at stride scale_factor / 2**i; segmentation stops at cls_stride.
        self.num_seg_blocks = num_scales - cls_stride.bit_length() + 1
        reversed_widths = list(reversed(block_out_channels))
        if inter_coder:
            # Fusion i sits at the input of up_blocks[i]: decoder width reversed_widths[i-1]
            # (the mid block's width for i = 0), encoder feature of the same stride.
            self.fusions = nn.ModuleList(
                InterCoderFusion(reversed_widths[max(i - 1, 0)], block_out_channels[num_scales - 1 - i])
                for i in range(self.num_seg_blocks)
            )
        else:
            self.fusions = None
        self.f_cls = SegmentationHead(
            reversed_widths[self.num_seg_blocks - 1], cls_hidden_channels, num_classes, norm_num_groups, cls_dropout
        )

    def decode_rgb(self, latents: torch.Tensor) -> torch.Tensor:
        """The autoencoder path (``pretrain-ae``): full-resolution decoder, no inter-coder connection."""
        return super().forward(self.post_quant_conv(latents))

    def segment(self, latents: torch.Tensor, encoder_features: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Logits at 1/cls_stride. ``encoder_features=None`` runs with the inter-coder connection off."""
        hidden = self.mid_block(self.conv_in(self.post_quant_conv(latents)), None)
        use_skips = self.fusions is not None and encoder_features is not None
        num_scales = len(self.up_blocks)
        for i in range(self.num_seg_blocks):
            block = self.up_blocks[i]
            if use_skips:
                hidden = self.fusions[i](hidden, encoder_features[num_scales - 1 - i])
            # UpDecoderBlock2D.forward, opened up to stop before the upsampler at cls_stride.
            for resnet in block.resnets:
                hidden = resnet(hidden, temb=None)
            if i < self.num_seg_blocks - 1:
                for upsampler in block.upsamplers:
                    hidden = upsampler(hidden)
        return self.f_cls(hidden)


def _groups(channels: int, preferred: int) -> int:
    groups = min(preferred, channels)
    while channels % groups:
        groups -= 1
    return groups
