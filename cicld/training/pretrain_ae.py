"""``cicld pretrain-ae``: stage 1 of the paper (§3.5), the latent autoencoder.

E and D's RGB head learn to reconstruct source *and* target images (no labels): L1 + KL, an
optional perceptual loss from a local VGG16 file, and a patch-GAN once ``gan_start`` is reached.
The inter-coder connection is off here, or the autoencoder could copy the image through it and
learn a useless latent (DESIGN §3).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from cicld.data.labels import ClassList
from cicld.models import CICLD, CICLDConfig
from cicld.models.backbone import load_backbone
from cicld.models.patch_discriminator import PatchDiscriminator
from cicld.models.perceptual import PerceptualLoss
from cicld.training.batches import step_batches
from cicld.training.common import build_optimizer, run_classes, source_dataset, target_dataset
from cicld.training.config import AutoencoderConfig
from cicld.training.loop import Stage, run_training
from cicld.training.objectives import AutoencoderObjective
from cicld.training.session import Session, TrainResult

# Modules that pretrain-ae does not train (they are exported untouched for the next stage). A
# pretrained backbone is one of them: reconstruction would teach it colours and textures, the
# opposite of what it was chosen for; the layers around it learn to make the latent from it.
FROZEN = ("unet", "mask_encoder", "discriminator", "decoder.f_cls", "decoder.fusions", "encoder.backbone.model.")


def pretrain_ae(
    config: AutoencoderConfig, resume: str | None = None, on_step: Callable[[int, dict], None] | None = None
) -> TrainResult:
    session = Session(config, resume)
    return run_training(session, build(session), on_step)


def new_model(config: AutoencoderConfig) -> CICLD:
    """A new model of ``--preset`` (its initial weights drawn from ``--seed``: see
    :meth:`Session.starting_model`) with one output per class of the run (Cityscapes' 19 unless
    ``config.classes``): E on the pretrained ``--backbone`` if one is named, E/D from
    ``--init-autoencoder`` if given."""
    model_config = CICLDConfig.preset(config.preset)
    if config.classes is not None:
        num_classes = len(ClassList.from_dict(config.classes))
        model_config = model_config.replace(num_classes=num_classes, classes=config.classes)
    if config.backbone == "none":
        model = CICLD(model_config)
        if config.init_autoencoder is not None:
            model.load_autoencoder_kl(config.init_autoencoder)
        return model
    backbone, record = load_backbone(config.backbone)
    model = CICLD(
        model_config.replace(backbone=record.config, backbone_source=record.source, backbone_sha256=record.sha256)
    )
    model.encoder.backbone.model.load_state_dict(backbone.model.state_dict(), strict=True)
    return model


def build(session: Session) -> Stage:
    """pretrain-ae's data (source and target images), a new model with all but E and D frozen, the
    objective (reconstruction + patch-GAN), the optimizer; and its step."""
    config, accelerator = session.config, session.accelerator
    datasets = (source_dataset(config), target_dataset(config))
    config, model = session.starting_model(new_model, classes=run_classes(config, datasets[0], None))
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not name.startswith(FROZEN))
    model.train()  # frozen parts keep their BatchNorm statistics (see CICLD.train)
    perceptual = PerceptualLoss(config.perceptual_weights) if config.perceptual_weights else None
    objective = AutoencoderObjective(model, PatchDiscriminator(), perceptual, config)
    optimizer = build_optimizer(objective, config)
    objective, optimizer, start = session.prepare(objective, optimizer)

    # Half of each batch from the source, half from the target: the latent space must serve both.
    half = max(1, config.batch_size // 2)
    streams = [
        step_batches(
            dataset,
            half,
            start_step=start * config.grad_accum_steps,
            seed=config.seed + k,
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
            num_workers=config.num_workers,
            device=accelerator.device,
        )
        for k, dataset in enumerate(datasets)
    ]

    def compute_losses(micro_step: int) -> dict[str, torch.Tensor]:
        images = torch.cat([next(stream)["image"] for stream in streams])
        step = micro_step // config.grad_accum_steps
        return objective(images, gan_active=step >= config.gan_start)

    # A segmentation model cannot come out of this stage: runs/latest is left alone.
    return Stage(objective, optimizer, compute_losses, update_latest=False)
