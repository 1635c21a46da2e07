"""CICLD: conditional, inter-coder connected latent diffusion for semantic segmentation.

    image x ─E─► z0 ──(noise to t < t*)──► z_t ──ε_θ(z_t, t | c)──► ẑ0 ──D──► f_cls ─► logits
              └────────── inter-coder connection (encoder features per scale) ────┘
    label y ─f_mask─► c          (c = 0 when there is no label: the null condition)

Submodules: ``encoder`` (E), ``decoder`` (D with ``f_cls`` and the RGB head), ``unet`` (ε_θ, a
diffusers ``UNet2DModel`` taking the condition: :class:`~cicld.models.unet.ConditionedUNet`),
``mask_encoder`` (f_mask; None when conditioning is off) and
``discriminator`` (f_dis). ``diffusion`` is a plain :class:`LatentDiffusion` object (schedules,
no parameters). A checkpoint is a directory with ``config.json`` and ``model.safetensors``.

Decisions the paper leaves open (see ``docs/model.md``):

- z0 is the scaled posterior *mean* of E (deterministic); the posterior is sampled only on the
  autoencoder path (``reconstruct(sample_posterior=True)``, ``pretrain-ae``).
- The UNet is fed a detached z_t, so the diffusion loss trains ε_θ only (Eq. 6) and cannot pull
  E towards a collapsed, easy-to-denoise latent; the segmentation and adversarial losses still
  reach E through the explicit z_t term of ẑ0 = (z_t − √(1−ᾱ_t)ε̂)/√ᾱ_t, and ε_θ through ε̂.
- Inference noise is seeded per image (seed 0 unless a generator or noise is given): the same
  image gives the same prediction whatever else is in its batch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from safetensors.torch import load_file

from cicld.errors import CicldError
from cicld.files import atomic_write, save_tensors
from cicld.models.autoencoder import BackboneEncoder, LatentDecoder, LatentEncoder, use_batch_norm
from cicld.models.conditioning import MaskEncoder
from cicld.models.config import CICLDConfig
from cicld.models.diffusion import LatentDiffusion
from cicld.models.discriminator import DomainDiscriminator
from cicld.models.inference import SegmentationInference
from cicld.models.state import check_state_dict, load_state_dict_strict
from cicld.models.unet import ConditionedUNet

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: The architecture switches of :meth:`CICLD.with_switches` and the parameters each one owns.
SWITCHED_PARTS = {"inter_coder": "decoder.fusions.", "conditioning": "mask_encoder.", "discriminator": "discriminator."}


class CICLD(SegmentationInference, nn.Module):
    """The CICLD segmentation network; its whole-image and sliding-window inference come from
    :class:`~cicld.models.inference.SegmentationInference`."""

    def __init__(self, config: CICLDConfig | None = None):
        super().__init__()
        config = CICLDConfig() if config is None else config
        config.validate()
        self.config = config
        if config.backbone is not None:
            from cicld.models.backbone import PretrainedBackbone

            self.encoder = BackboneEncoder(
                PretrainedBackbone(config.backbone),
                width=config.ae_block_out_channels[-1],
                latent_channels=config.latent_channels,
                norm_num_groups=config.ae_norm_num_groups,
            )
        else:
            self.encoder = LatentEncoder(
                in_channels=config.in_channels,
                latent_channels=config.latent_channels,
                block_out_channels=config.ae_block_out_channels,
                layers_per_block=config.ae_layers_per_block,
                norm_num_groups=config.ae_norm_num_groups,
                mid_block_attention=config.ae_mid_block_attention,
            )
        self.decoder = LatentDecoder(
            latent_channels=config.latent_channels,
            out_channels=config.in_channels,
            block_out_channels=config.ae_block_out_channels,
            layers_per_block=config.ae_layers_per_block,
            norm_num_groups=config.ae_norm_num_groups,
            mid_block_attention=config.ae_mid_block_attention,
            num_classes=config.num_classes,
            cls_stride=config.cls_stride,
            cls_hidden_channels=config.cls_hidden_channels,
            cls_dropout=config.cls_dropout,
            inter_coder=config.inter_coder,
            encoder_channels=self.encoder.encoder_channels(),
        )
        if config.ae_norm == "batch":
            use_batch_norm(self.encoder)
            use_batch_norm(self.decoder)
        self.unet = ConditionedUNet(
            in_channels=config.latent_channels,
            out_channels=config.latent_channels,
            block_out_channels=tuple(config.unet_block_out_channels),
            down_block_types=tuple(config.unet_down_block_types),
            up_block_types=tuple(config.unet_up_block_types),
            layers_per_block=config.unet_layers_per_block,
            attention_head_dim=config.unet_attention_head_dim,
            norm_num_groups=config.unet_norm_num_groups,
        )
        if config.conditioning:
            self.mask_encoder = MaskEncoder(
                num_classes=config.num_classes,
                channels=config.mask_encoder_channels,
                condition_channels=config.unet_block_out_channels[-1],
                pool=config.mask_encoder_pool,
            )
        else:
            self.mask_encoder = None
        self.discriminator = DomainDiscriminator(
            latent_channels=config.latent_channels,
            channels=config.discriminator_channels,
            hidden=config.discriminator_hidden,
            num_domains=config.num_domains,
        )
        self.diffusion = LatentDiffusion.from_config(config)

    def train(self, mode: bool = True) -> CICLD:
        """``nn.Module.train``, except that BatchNorm layers whose parameters are frozen stay in eval
        mode: a part a stage does not train (E in ``pretrain-ldm --no-train-encoder``) keeps its
        statistics too, exactly as the previous stage left it. Freeze first, then call this."""
        super().train(mode)
        if mode:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.weight.requires_grad:
                    module.eval()
        return self

    # ------------------------------------------------------------------ building blocks
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """z0 (scaled posterior mean, (B, latent_channels, H/8, W/8)) and E's per-scale features."""
        z0, features, _ = self.encode_with_backbone(images)
        return z0, features

    def encode_with_backbone(self, images: torch.Tensor):
        """:meth:`encode`, and the pretrained backbone's own feature maps (None without one): what
        ``--feature-distance`` compares with the starting backbone's."""
        moments, features, backbone_features = self.encoder.forward_with_backbone(images)
        mean = moments[:, : self.config.latent_channels]
        return mean * self.config.scaling_factor, features, backbone_features

    def encode_posterior(self, images: torch.Tensor) -> DiagonalGaussianDistribution:
        """E's posterior over the *unscaled* latent (for the KL term of ``pretrain-ae``)."""
        return self.encoder.posterior(images)

    def decode_rgb(self, latents: torch.Tensor) -> torch.Tensor:
        """D's RGB head on a scaled latent (inverse of :meth:`encode`); no inter-coder connection."""
        return self.decoder.decode_rgb(latents / self.config.scaling_factor)

    def reconstruct(
        self, images: torch.Tensor, sample_posterior: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The autoencoder path of ``pretrain-ae``: E, then D's RGB head, inter-coder connection off."""
        posterior = self.encode_posterior(images)
        latents = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decoder.decode_rgb(latents)

    def condition(
        self, labels: torch.Tensor | None, dropout: float = 0.0, generator: torch.Generator | None = None
    ) -> torch.Tensor | None:
        """c = f_mask(y), set to 0 (the null condition) per sample with probability ``dropout``.

        None when conditioning is switched off or no labels are given (also the null condition)."""
        if self.mask_encoder is None or labels is None:
            return None
        condition = self.mask_encoder(labels.to(self.device))
        if dropout > 0:
            gen_device = generator.device if generator is not None else "cpu"
            keep = torch.rand(labels.shape[0], generator=generator, device=gen_device) >= dropout
            condition = condition * keep.to(condition)[:, None]
        return condition

    def predict_noise(
        self, z_t: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor | None = None
    ) -> torch.Tensor:
        """ε_θ(z_t, t | c): the UNet with Eq. 5 applied to its mid-block output (no condition
        when conditioning is switched off)."""
        return self.unet(z_t, timesteps, condition if self.mask_encoder is not None else None)

    def segment(
        self, latents: torch.Tensor, features: list[torch.Tensor] | None, shape_hw: tuple[int, int] | torch.Size
    ) -> torch.Tensor:
        """D + f_cls on a (denoised) scaled latent; logits upsampled bilinearly to ``shape_hw``
        (a tensor's (height, width), e.g. ``images.shape[-2:]``)."""
        logits = self.decoder.segment(latents / self.config.scaling_factor, features)
        return F.interpolate(logits, size=tuple(shape_hw), mode="bilinear", align_corners=False)

    # ------------------------------------------------------------------ training
    def forward_train(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        use_inter_coder: bool = True,
        condition_dropout: float | None = None,
        num_segmented: int | None = None,
    ) -> dict[str, Any]:
        """One training pass: everything the losses need.

        Returns ``z0``, ``t`` (B,), ``noise``, ``z_t``, ``noise_pred`` (ε̂), ``z0_hat`` (one-step ẑ0),
        ``condition`` (c or None), ``backbone_features`` (the pretrained backbone's own feature
        maps, or None) and ``logits`` (N, K, H, W) at the input resolution for the first
        N = ``num_segmented`` images (default all): images that only need the latent losses
        (``adapt``'s target batch) skip D and f_cls.
        ``labels`` become the condition (dropped per sample with ``condition_dropout``,
        default ``config.condition_dropout`` in train mode and 0 in eval mode); samples whose
        label is all ignore, or ``labels=None``, get the null condition.
        """
        self._check_size(images)
        z0, features, backbone_features = self.encode_with_backbone(images)
        batch = images.shape[0]
        t = self.diffusion.sample_timesteps(batch, z0.device, generator)
        noise = self.diffusion.draw_noise(tuple(z0.shape), generator, z0.device, z0.dtype)
        z_t = self.diffusion.add_noise(z0, noise, t)
        if condition_dropout is None:
            condition_dropout = self.config.condition_dropout if self.training else 0.0
        condition = self.condition(labels, dropout=condition_dropout, generator=generator)
        noise_pred = self.predict_noise(z_t.detach(), t, condition)
        z0_hat = self.diffusion.predict_z0(z_t, noise_pred, t)
        segmented = slice(0, batch if num_segmented is None else num_segmented)
        features = [f[segmented] if f is not None else None for f in features] if use_inter_coder else None
        logits = self.segment(z0_hat[segmented], features, images.shape[-2:])
        return {
            "z0": z0,
            "t": t,
            "noise": noise,
            "z_t": z_t,
            "noise_pred": noise_pred,
            "z0_hat": z0_hat,
            "condition": condition,
            "backbone_features": backbone_features,
            "logits": logits,
        }

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: Any) -> dict[str, Any]:
        """Alias of :meth:`forward_train`, so DDP/Accelerate wrappers can call the model."""
        return self.forward_train(images, labels, **kwargs)

    def _check_size(self, images: torch.Tensor) -> None:
        divisor = self.config.size_divisor
        if images.dim() != 4 or images.shape[-2] % divisor or images.shape[-1] % divisor:
            raise CicldError(
                f"training images must be (B, C, H, W) with H and W multiples of {divisor}, got {tuple(images.shape)}"
            )

    # ------------------------------------------------------------------ weights
    def parameter_counts(self) -> dict[str, int]:
        """Parameters per top-level part (the pretrained backbone, the rest of E, D's RGB/shared
        part, fusions, f_cls, ε_θ, f_mask, f_dis)."""
        decoder = self.decoder
        fusions = sum(p.numel() for p in decoder.fusions.parameters()) if decoder.fusions is not None else 0
        f_cls = sum(p.numel() for p in decoder.f_cls.parameters())
        backbone = sum(p.numel() for p in self.backbone_parameters())
        counts = {
            "backbone": backbone,
            "encoder": sum(p.numel() for p in self.encoder.parameters()) - backbone,
            "decoder": sum(p.numel() for p in decoder.parameters()) - fusions - f_cls,
            "inter_coder": fusions,
            "f_cls": f_cls,
            "unet": sum(p.numel() for p in self.unet.parameters()),
            "mask_encoder": sum(p.numel() for p in self.mask_encoder.parameters())
            if self.mask_encoder is not None
            else 0,
            "discriminator": sum(p.numel() for p in self.discriminator.parameters()),
        }
        counts["total"] = sum(counts.values())
        return counts

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The pretrained backbone's own weights (none without ``--backbone``)."""
        return list(self.encoder.backbone.model.parameters()) if isinstance(self.encoder, BackboneEncoder) else []

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The trainable parameters by where they come from, for the optimizer's learning rates.

        ``backbone``: the pretrained backbone's weights (``--backbone``), at ``backbone_lr_mult`` ×.
        ``pretrained``: E, D's body and ε_θ, loaded from an earlier stage or an autoencoder.
        ``heads``: f_cls, the inter-coder fusions, f_mask and f_dis, freshly initialised, which get
        ``head_lr_mult`` × the learning rate (DAFormer's decode-head rule). Grouped by module, not
        by parameter name, so that a wrapper (an objective, DDP) cannot hide them behind a prefix.
        Frozen parameters are left out.
        """
        heads = [
            m
            for m in (self.decoder.f_cls, self.decoder.fusions, self.mask_encoder, self.discriminator)
            if m is not None
        ]
        head_ids = {id(p) for m in heads for p in m.parameters()}
        backbone_ids = {id(p) for p in self.backbone_parameters()}
        trainable = [p for p in self.parameters() if p.requires_grad]
        return {
            "backbone": [p for p in trainable if id(p) in backbone_ids],
            "pretrained": [p for p in trainable if id(p) not in head_ids and id(p) not in backbone_ids],
            "heads": [p for p in trainable if id(p) in head_ids],
        }

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (no pickles) into ``directory``, each
        atomically. A failed write (a full disk) is the system's ``OSError``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_tensors(directory / WEIGHTS_NAME, state, metadata={"format": "pt"})
        atomic_write(directory / CONFIG_NAME, json.dumps(self.config.to_dict(), indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: torch.device | str | None = None) -> CICLD:
        """Rebuild from ``config.json`` and load ``model.safetensors`` strictly."""
        directory = Path(directory)
        if not directory.is_dir():
            raise CicldError(f"model directory not found: {directory}")
        config_path = directory / CONFIG_NAME
        if not config_path.is_file():
            raise CicldError(f"{config_path} is missing: not a cicld model directory")
        try:
            config_data = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CicldError(f"{config_path} is not valid JSON: {error}") from None
        config = CICLDConfig.from_dict(config_data)
        weights_path = directory / WEIGHTS_NAME
        if not weights_path.is_file():
            raise CicldError(f"{weights_path} is missing: the model directory has a config but no weights")
        try:
            state = load_file(str(weights_path))
        except Exception as error:  # safetensors raises its own error types for corrupt files
            raise CicldError(f"cannot read {weights_path}: {error}") from None
        model = cls(config)
        load_state_dict_strict(model, state, what=f"weights in {weights_path}")
        return model.to(device) if device is not None else model

    def with_switches(self, **switches: Any) -> CICLD:
        """This model with architecture switches changed: ``inter_coder``, ``conditioning`` (Table 1)
        and ``discriminator`` ("3class" or "2class", Table 2).

        Every weight is copied except those of the parts a switch adds, removes or reshapes (the
        inter-coder fusions, f_mask, f_dis), which start from their initialisation. Returns ``self``
        when nothing changes.
        """
        unknown = sorted(set(switches) - set(SWITCHED_PARTS))
        if unknown:
            raise CicldError(
                f"not an architecture switch: {', '.join(unknown)}; switches are {', '.join(SWITCHED_PARTS)}"
            )
        changed = {k: v for k, v in switches.items() if getattr(self.config, k) != v}
        if not changed:
            return self
        model = CICLD(self.config.replace(**changed)).to(device=self.device, dtype=self.dtype)
        fresh = tuple(SWITCHED_PARTS[k] for k in changed)
        kept = {k: v for k, v in self.state_dict().items() if not k.startswith(fresh)}
        state = model.state_dict()
        check_state_dict(
            {k: v for k, v in state.items() if not k.startswith(fresh)}, kept, what="weights kept across the switch"
        )
        state.update(kept)
        model.load_state_dict(state, strict=True)
        return model.train(self.training)

    def load_autoencoder_kl(self, path: str | os.PathLike) -> None:
        """Initialise E and D from a local diffusers AutoencoderKL directory
        (:func:`cicld.models.sd_vae.load_autoencoder_kl`)."""
        from cicld.models.sd_vae import load_autoencoder_kl

        load_autoencoder_kl(self, path)

    def load_mask_encoder(self, path: str | os.PathLike) -> None:
        """Initialise f_mask from a local safetensors file (the paper's pre-trained mask encoder)."""
        if self.mask_encoder is None:
            raise CicldError("this model has conditioning switched off: it has no mask encoder to load")
        self.mask_encoder.load_weights(path)
