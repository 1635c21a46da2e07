"""``cicld pretrain-ldm``: stage 2 of the paper (§3.5), from the pre-trained autoencoder.

Trains ε_θ (diffusion loss on source latents), D, f_cls and f_mask with cross-entropy on the
source, conditioned on the source labels with condition dropout. E stays as the autoencoder
left it unless ``--train-encoder``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from cicld.training.batches import step_batches
from cicld.training.common import (
    build_optimizer,
    feature_distance_for,
    freeze_backbone_stages,
    load_model,
    loss_class_weights,
    run_classes,
    source_dataset,
    unvalidated_note,
    val_dataset,
)
from cicld.training.config import LatentDiffusionConfig
from cicld.training.loop import Stage, run_training
from cicld.training.objectives import SegmentationObjective
from cicld.training.session import Session, TrainResult


def pretrain_ldm(
    config: LatentDiffusionConfig, resume: str | None = None, on_step: Callable[[int, dict], None] | None = None
) -> TrainResult:
    session = Session(config, resume)
    return run_training(session, build(session), on_step)


def build(session: Session) -> Stage:
    """pretrain-ldm's data (labelled source, val), the model from pretrain-ae with E frozen unless
    ``--train-encoder``, the objective (CE + diffusion loss), the optimizer; and its step."""
    config, accelerator = session.config, session.accelerator
    source, val = source_dataset(config), val_dataset(config)
    classes = run_classes(config, source, val)
    config, model = session.starting_model(
        lambda c: load_model(Path(c.init_from), c.architecture_switches), "pretrain-ae", classes
    )
    model.encoder.requires_grad_(config.train_encoder)
    freeze_backbone_stages(model, config.freeze_backbone_stages)
    model.discriminator.requires_grad_(False)  # f_dis is trained in `adapt`
    model.train()  # frozen parts keep their BatchNorm statistics (see CICLD.train)
    feature_distance = feature_distance_for(config, model, accelerator.device)
    objective = SegmentationObjective(model, config.lambda_dif, loss_class_weights(config, source), feature_distance)
    optimizer = build_optimizer(objective, config)
    objective, optimizer, start = session.prepare(objective, optimizer)

    source_stream = step_batches(
        source,
        config.batch_size,
        start_step=start * config.grad_accum_steps,
        seed=config.seed,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        num_workers=config.num_workers,
        device=accelerator.device,
    )

    def compute_losses(micro_step: int) -> dict[str, torch.Tensor]:
        batch = next(source_stream)
        return objective(batch["image"], batch["label"])

    notes = () if val is not None else (unvalidated_note(config),)
    return Stage(objective, optimizer, compute_losses, val=val, notes=notes)
