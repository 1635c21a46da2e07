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
  conv_out), used by ``pretrain-ae``. For segmentation D runs only at the latent's scale (1/8),
  and ``f_cls``, a light FPN-style head, takes its features to logits at 1/``cls_stride`` (1/4
  by default), which are upsampled bilinearly like SegFormer/DAFormer heads: segmentation never
  runs D's expensive higher-resolution stages;
- ``fusions``: the inter-coder connection, one per encoder/decoder pair of the segmentation
  path. At 1/8 the encoder feature is concatenated to D's and fused by a 1×1 conv added
  residually; at each finer scale down to 1/``cls_stride`` the encoder feature is normalised,
  projected by a 1×1 conv and added to f_cls's map. Every fusion's last conv is zero-initialised,
  so switching the connection on starts from the plain decoder.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
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

    def forward_with_backbone(self, images: torch.Tensor):
        """:meth:`forward`, and None for the backbone features it does not have (see :class:`BackboneEncoder`)."""
        return (*self(images), None)

    def posterior(self, images: torch.Tensor) -> DiagonalGaussianDistribution:
        return DiagonalGaussianDistribution(self(images)[0])

    def encoder_channels(self) -> tuple[int, ...]:
        """The channels of :meth:`forward`'s features, by scale."""
        return tuple(block.resnets[-1].out_channels for block in self.down_blocks)


class BackboneEncoder(nn.Module):
    """E on a pretrained backbone (``--backbone``): the backbone's 1/8, 1/16 and 1/32 features,
    each projected to ``width`` and added at 1/8 (an FPN's top-down sum), make E's 1/8 feature;
    a moments head on it gives the posterior over the latent, as :class:`LatentEncoder`'s tail
    does (norm, SiLU, 3×3 conv, ``quant_conv``). So z0 and everything after it are unchanged, and
    the inter-coder connection reads the backbone at every scale: 1/8 (with 1/16 and 1/32 in it)
    and its 1/4 feature as it is."""

    def __init__(self, backbone: nn.Module, width: int, latent_channels: int, norm_num_groups: int):
        super().__init__()
        self.backbone = backbone
        self.lateral = nn.ModuleList([nn.Conv2d(c, width, 1) for c in backbone.channels[1:]])
        self.fuse_norm = nn.GroupNorm(_groups(width, norm_num_groups), width, eps=1e-6)
        self.fuse_conv = nn.Conv2d(width, width, 3, padding=1)
        self.conv_norm_out = nn.GroupNorm(_groups(width, norm_num_groups), width, eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(width, 2 * latent_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1)
        self.width = width

    def forward_with_backbone(self, images: torch.Tensor):
        """(moments, features, backbone features): the features by scale as :class:`LatentEncoder`
        gives them (None at the two finest scales, which the segmentation path does not read) and
        the backbone's own raw feature maps (what feature distance compares)."""
        raw = self.backbone.raw_features(images)
        pyramid = self.backbone.pyramid(raw) if self.backbone.pyramid is not None else raw
        eighth = pyramid[1]
        size = eighth.shape[-2:]
        hidden = sum(
            F.interpolate(lateral(f), size=size, mode="bilinear", align_corners=False)
            if f.shape[-2:] != size
            else lateral(f)
            for lateral, f in zip(self.lateral, pyramid[1:])
        )
        hidden = hidden + self.fuse_conv(self.conv_act(self.fuse_norm(hidden)))
        moments = self.quant_conv(self.conv_out(self.conv_act(self.conv_norm_out(hidden))))
        return moments, [None, None, pyramid[0], hidden], raw

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        moments, features, _ = self.forward_with_backbone(images)
        return moments, features

    def posterior(self, images: torch.Tensor) -> DiagonalGaussianDistribution:
        return DiagonalGaussianDistribution(self(images)[0])

    def encoder_channels(self) -> tuple[int | None, ...]:
        return (None, None, self.backbone.channels[0], self.width)


class InterCoderFusion(nn.Module):
    """x + W·[x, e] with W a zero-initialised 1×1 conv: the identity until training moves W."""

    def __init__(self, decoder_channels: int, encoder_channels: int):
        super().__init__()
        self.proj = nn.Conv2d(decoder_channels + encoder_channels, decoder_channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor, encoder_feature: torch.Tensor) -> torch.Tensor:
        return hidden + self.proj(torch.cat([hidden, encoder_feature], dim=1))


class InterCoderSkip(nn.Module):
    """x + W·act(norm(e)): an encoder feature added to f_cls's map of the same scale, W zero-initialised."""

    def __init__(self, encoder_channels: int, head_channels: int, norm_num_groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(encoder_channels, norm_num_groups), encoder_channels, eps=1e-6)
        self.act = nn.SiLU()
        self.proj = nn.Conv2d(encoder_channels, head_channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor, encoder_feature: torch.Tensor) -> torch.Tensor:
        return hidden + self.proj(self.act(self.norm(encoder_feature)))


class SegmentationHead(nn.Module):
    """f_cls: a light FPN-style head from D's 1/8 features to logits at 1/``stride``.

    :meth:`project` maps D's features to ``hidden_channels``; the decoder then upsamples that
    map ×2 per scale down to 1/``stride`` (where the inter-coder skips add the encoder's
    features of each scale), and :meth:`forward` (norm, 3×3 conv, norm, dropout, 1×1) turns it
    into logits.
    """

    def __init__(self, in_channels: int, hidden_channels: int, num_classes: int, norm_num_groups: int, dropout: float):
        super().__init__()
        groups = _groups(hidden_channels, norm_num_groups)
        self.norm_project = nn.GroupNorm(_groups(in_channels, norm_num_groups), in_channels, eps=1e-6)
        self.project_conv = nn.Conv2d(in_channels, hidden_channels, 1)
        self.norm_in = nn.GroupNorm(groups, hidden_channels, eps=1e-6)
        self.conv = nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1)
        self.norm = nn.GroupNorm(groups, hidden_channels, eps=1e-6)
        self.act = nn.SiLU()
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(hidden_channels, num_classes, 1)

    def project(self, decoder_features: torch.Tensor) -> torch.Tensor:
        return self.project_conv(self.act(self.norm_project(decoder_features)))

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
        encoder_channels: tuple[int | None, ...] | None = None,
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
        # Encoder scales whose features f_cls adds, coarse to fine: strides scale_factor/2 .. cls_stride.
        self.skip_scales = [k for k in reversed(range(num_scales - 1)) if 2**k >= cls_stride]
        width = block_out_channels[-1]  # D's width at the latent's scale
        # E's channels by scale: the mirror of D's widths, unless E is a pretrained backbone.
        encoder_channels = tuple(block_out_channels) if encoder_channels is None else tuple(encoder_channels)
        if inter_coder:
            # fusions[0]: E's feature at the latent's scale into D, before D's first up block;
            # fusions[1:]: E's features at the finer scales f_cls reads, added to its map.
            self.fusions = nn.ModuleList(
                [InterCoderFusion(width, encoder_channels[-1])]
                + [InterCoderSkip(encoder_channels[k], cls_hidden_channels, norm_num_groups) for k in self.skip_scales]
            )
        else:
            self.fusions = None
        self.f_cls = SegmentationHead(width, cls_hidden_channels, num_classes, norm_num_groups, cls_dropout)

    def decode_rgb(self, latents: torch.Tensor) -> torch.Tensor:
        """The autoencoder path (``pretrain-ae``): full-resolution decoder, no inter-coder connection."""
        return super().forward(self.post_quant_conv(latents))

    def segment(self, latents: torch.Tensor, encoder_features: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Logits at 1/cls_stride. ``encoder_features=None`` runs with the inter-coder connection off.

        D runs only at the latent's scale (mid block and the first up block, before its
        upsampler); f_cls takes the map from there to 1/cls_stride, adding the encoder's feature at
        every scale on the way (the inter-coder connection of each encoder/decoder pair).
        """
        hidden = self.mid_block(self.conv_in(self.post_quant_conv(latents)), None)
        use_skips = self.fusions is not None and encoder_features is not None
        if use_skips:
            hidden = self.fusions[0](hidden, encoder_features[-1])
        for resnet in self.up_blocks[0].resnets:  # UpDecoderBlock2D.forward without its upsampler
            hidden = resnet(hidden, temb=None)
        hidden = self.f_cls.project(hidden)
        for i, scale in enumerate(self.skip_scales, start=1):
            hidden = F.interpolate(hidden, scale_factor=2.0, mode="bilinear", align_corners=False)
            if use_skips:
                hidden = self.fusions[i](hidden, encoder_features[scale])
        return self.f_cls(hidden)


def use_batch_norm(module: nn.Module) -> None:
    """Replace every GroupNorm under ``module`` by a BatchNorm2d of the same width (in place),
    except inside a pretrained backbone, whose norms its weights were trained with.

    GroupNorm is what diffusers' blocks (and an SD-VAE's weights) use. BatchNorm learns faster and
    transfers better across the toy domain gap at CPU batch sizes (``docs/benchmarks.md``); its
    statistics are per process (no SyncBatchNorm), so it suits single-device training.
    """
    from cicld.models.backbone import PretrainedBackbone

    for name, child in module.named_children():
        if isinstance(child, nn.GroupNorm):
            setattr(module, name, nn.BatchNorm2d(child.num_channels))
        elif not isinstance(child, PretrainedBackbone):
            use_batch_norm(child)


def _groups(channels: int, preferred: int) -> int:
    groups = min(preferred, channels)
    while channels % groups:
        groups -= 1
    return groups
