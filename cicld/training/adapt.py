"""``cicld adapt``: unsupervised domain adaptation (paper §3.2, §3.4; DESIGN §2–3).

Per step (:func:`uda_step`, read it like DAFormer's ``forward_train``): ``ema_model`` (the
paper's "student") pseudo-labels the target batch; ClassMix pastes half of the source classes
onto the target (images, labels and pixel weights) and the mixed images get colour jitter and
blur (:mod:`cicld.training.uda`); source, mixed and target images pass through ``model`` (the
paper's "teacher") in one batch, which returns the losses of
:class:`~cicld.training.objectives.UDAObjective`. The loop (:func:`cicld.training.loop.run_training`)
minimises them, then ``ema_model`` follows ``model`` by EMA; ``ema_model`` is what gets exported.

``--method self-training`` is the no-diffusion baseline (the same network and loop without ε_θ,
S = 0, no adversarial loss: DACS/DAFormer-style self-training); ``--method source-only`` trains on
the source alone and ``--method oracle`` on the target's own labels (wherever it has them: a
Cityscapes-format target's train split, a prepared pairs folder): the baseline and bounds the
benchmarks compare against.
"""

from __future__ import annotations

import copy
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
    oracle_dataset,
    run_classes,
    source_dataset,
    target_dataset,
    unvalidated_note,
    val_dataset,
)
from cicld.training.config import AdaptConfig
from cicld.training.loop import Stage, run_training
from cicld.training.objectives import SegmentationObjective, SelfTrainingObjective, UDAObjective
from cicld.training.session import Session, TrainResult
from cicld.training.uda import mix, pseudo_label


def adapt(
    config: AdaptConfig, resume: str | None = None, on_step: Callable[[int, dict], None] | None = None
) -> TrainResult:
    session = Session(config, resume)
    return run_training(session, build(session), on_step)


def build(session: Session) -> Stage:
    """adapt's data (labelled, target, val), ``model`` from pretrain-ldm and its ``ema_model``, the
    objective of ``--method``, the optimizer; and its step."""
    config, accelerator = session.config, session.accelerator
    labelled = oracle_dataset(config) if config.method == "oracle" else source_dataset(config)
    target = target_dataset(config) if config.method in ("cicld", "self-training") else None
    val = val_dataset(config)
    switches = dict(config.architecture_switches)
    if config.method == "cicld" and config.adversarial != "none":  # f_dis with one output per domain
        switches["discriminator"] = config.adversarial
    classes = run_classes(config, labelled, val)
    config, model = session.starting_model(lambda c: load_model(Path(c.init_from), switches), "pretrain-ldm", classes)
    if config.method == "self-training":  # no ε_θ: pseudo-labels, validation and the export use S = 0
        model.config = model.config.replace(inference_steps=0)
    ema_model = copy.deepcopy(model).requires_grad_(False)
    freeze_backbone_stages(model, config.freeze_backbone_stages)
    model.train()  # frozen parts keep their BatchNorm statistics (see CICLD.train)
    class_weight = loss_class_weights(config, labelled)
    feature_distance = feature_distance_for(config, model, accelerator.device)
    if config.method == "self-training":
        objective = SelfTrainingObjective(model, class_weight, feature_distance)
    elif target is not None:
        objective = UDAObjective(model, config, class_weight, feature_distance)
    else:
        objective = SegmentationObjective(model, config.lambda_dif, class_weight, feature_distance)
    optimizer = build_optimizer(objective, config)
    objective, optimizer, start = session.prepare(objective, optimizer, ema_model)

    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    batches = dict(
        start_step=start * config.grad_accum_steps,
        seed=config.seed,
        rank=rank,
        world_size=world,
        num_workers=config.num_workers,
        device=device,
    )
    source_stream = step_batches(labelled, config.batch_size, **batches)
    target_stream = step_batches(target, config.batch_size, **batches) if target is not None else None

    def compute_losses(micro_step: int) -> dict[str, torch.Tensor]:
        source = next(source_stream)
        if target_stream is None:  # source-only, oracle: supervised on the labelled images alone
            return objective(source["image"], source["label"])
        generator = torch.Generator(device=device).manual_seed(config.seed * 7919 + micro_step * world + rank)
        return uda_step(objective, ema_model, source, next(target_stream), config, generator, class_weight)

    notes = () if val is not None else (unvalidated_note(config),)
    if config.method == "oracle":
        notes += (f"--method oracle trained on the target's own labels ({labelled.root}): a reference, not adaptation",)
    return Stage(objective, optimizer, compute_losses, ema_model=ema_model, val=val, notes=notes)


def uda_step(
    objective: torch.nn.Module,
    ema_model: torch.nn.Module,
    source: dict[str, torch.Tensor],
    target: dict[str, torch.Tensor],
    config: AdaptConfig,
    generator: torch.Generator,
    class_weight: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The losses of one ``adapt`` step (cicld and self-training), in the order it happens.

    1. ``ema_model`` pseudo-labels the target images, with a confidence weight per pixel
       (:func:`~cicld.training.uda.pseudo_label`; the target's own labels are never read).
    2. ClassMix pastes half of the source classes onto the target: images, labels (source labels
       where pasted, pseudo-labels elsewhere) and pixel weights; the mixed images get colour jitter
       and blur (:func:`~cicld.training.uda.mix`).
    3. One forward pass of the ``objective`` on the source, mixed and target images returns the
       losses (:class:`~cicld.training.objectives.UDAObjective` or
       :class:`~cicld.training.objectives.SelfTrainingObjective`), whose sum the loop minimises.

    ``source`` and ``target`` are batches (``image``, ``label``; the target's ``label`` unused);
    ``generator`` draws every random choice of the step.
    """
    pseudo, weight = pseudo_label(ema_model, target["image"], config, generator)
    mixed_images, mixed_labels, mixed_weights = mix(source, target, pseudo, weight, config, generator, class_weight)
    return objective(source["image"], source["label"], mixed_images, mixed_labels, mixed_weights, target["image"])
