"""Pieces the stages share: data sets, loading the starting model, the optimizer, the EMA update, validation."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cicld.data.datasets import SourceDataset, TargetDataset, ValDataset
from cicld.data.layouts import CLASS_STATS_FILE
from cicld.data.sampling import RareClassSampler, class_weights
from cicld.data.toy import is_toy_target
from cicld.errors import CicldError, DataError
from cicld.evaluation.evaluate import evaluate_model, evaluation_split
from cicld.evaluation.metrics import SegmentationScores
from cicld.models import CICLD
from cicld.models.backbone import load_starting_backbone
from cicld.models.losses import THING_CLASSES
from cicld.training.config import CommonConfig
from cicld.training.objectives import FeatureDistance

def require_prepared(root: Path, dataset: str, toy: bool = False) -> None:
    """One-line hint when a dataset folder is missing or not prepared yet."""
    if toy and not (root / CLASS_STATS_FILE).is_file():
        raise DataError(f"{root} is not there or not prepared; run `cicld prepare-data toy {root.parent}` first")
    if not root.is_dir():
        raise DataError(f"{root} does not exist; put the {dataset} dataset there and run `cicld prepare-data {dataset} {root}`")
    if not (root / CLASS_STATS_FILE).is_file():
        raise DataError(f"{root} is not prepared; run `cicld prepare-data {dataset} {root}` first")


def source_dataset(config: CommonConfig) -> SourceDataset:
    root = config.resolved_source_root
    require_prepared(root, config.source_format, toy=config.source == "toy")
    sampler = (
        RareClassSampler(root, min_pixels=config.rcs_min_pixels, seed=config.seed) if config.rare_class_sampling else None
    )
    return SourceDataset(
        root,
        config.source_format,
        resize=config.resolved_source_resize,
        crop=config.crop,
        rare_class_sampling=sampler,
        seed=config.seed,
        zoom_max=config.zoom_max,
    )


def target_dataset(config: CommonConfig) -> TargetDataset:
    root = config.resolved_target_root
    require_prepared(root, "cityscapes", toy=config.source == "toy")
    return TargetDataset(root, resize=config.resolved_target_resize, crop=config.crop, seed=config.seed + 1)


def oracle_dataset(config: CommonConfig) -> SourceDataset:
    """The target's train split *with* its labels: the upper bound, for a toy pair's target only
    (in whichever format its source was written)."""
    root = config.resolved_target_root
    if not is_toy_target(root):
        raise CicldError(
            f"--method oracle trains on target labels, which only the toy pair may be used for; {root} is not a toy "
            "pair's target (`cicld prepare-data toy` writes one)"
        )
    require_prepared(root, "cityscapes", toy=True)
    return SourceDataset(
        root, "cityscapes", resize=config.resolved_target_resize, crop=config.crop, seed=config.seed + 2, zoom_max=config.zoom_max
    )


def val_dataset(config: CommonConfig) -> ValDataset:
    root = config.resolved_target_root
    require_prepared(root, "cityscapes", toy=config.source == "toy")
    return evaluation_split(root, "cityscapes", "val", config.resolved_target_resize, config.val_limit)


def loss_class_weights(config, dataset) -> torch.Tensor | None:
    """The cross-entropy class weights of ``dataset`` (the labelled data) when ``--class-weights`` is on."""
    if not config.class_weights:
        return None
    return torch.tensor(class_weights(dataset.root / CLASS_STATS_FILE), dtype=torch.float32)


def build_optimizer(objective: nn.Module, config: CommonConfig) -> torch.optim.AdamW:
    """AdamW with up to three groups: the model's fresh heads at ``lr × head_lr_mult``, a
    pretrained backbone at ``lr × backbone_lr_mult``, everything else the objective trains at
    ``lr`` (the pre-trained parts, and modules the objective adds, such as pretrain-ae's patch
    discriminator: they are not heads of the exported model)."""
    model_groups, model_ids = objective.model.parameter_groups(), {id(p) for p in objective.model.parameters()}
    added = [p for p in objective.parameters() if p.requires_grad and id(p) not in model_ids]
    rates = {
        "pretrained": config.lr,
        "heads": config.lr * config.head_lr_mult,
        # pretrain-ae, which has no such flag, never trains the backbone.
        "backbone": config.lr * getattr(config, "backbone_lr_mult", 1.0),
    }
    params = {**model_groups, "pretrained": model_groups["pretrained"] + added}
    groups = [{"params": params[name], "lr": rate, "initial_lr": rate} for name, rate in rates.items()]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, weight_decay=config.weight_decay)


def freeze_backbone_stages(model: CICLD, stages: int) -> None:
    """Freeze the pretrained backbone's stem and first ``stages`` stages (``--freeze-backbone-stages``)."""
    if stages and model.config.backbone is not None:
        for module in model.encoder.backbone.stages()[: stages + 1]:
            module.requires_grad_(False)


def feature_distance_for(config, model: CICLD, device: torch.device) -> FeatureDistance | None:
    """``--feature-distance`` for a model whose pretrained backbone trains; None where it is off,
    where the model has no backbone, or where nothing of the backbone trains."""
    if config.feature_distance == 0 or not any(p.requires_grad for p in model.backbone_parameters()):
        return None
    reference = load_starting_backbone(model.config, "--feature-distance needs the backbone the model started from,")
    classes = THING_CLASSES if config.feature_distance_classes == "things" else None
    return FeatureDistance(reference.to(device), config.feature_distance, classes, model.config.num_classes)


@torch.no_grad()
def ema_update(ema_model: nn.Module, model: nn.Module, step: int, max_alpha: float) -> None:
    """ema = α·ema + (1 − α)·model with α = min(1 − 1/(step + 1), max_alpha) (DAFormer/Mean Teacher)."""
    alpha = min(1.0 - 1.0 / (step + 1), max_alpha)
    for ema_param, param in zip(ema_model.parameters(), model.parameters()):
        ema_param.mul_(alpha).add_(param.detach(), alpha=1.0 - alpha)
    for ema_buffer, buffer in zip(ema_model.buffers(), model.buffers()):
        ema_buffer.copy_(buffer)


def validate(model: CICLD, dataset: ValDataset, accelerator) -> SegmentationScores:
    """Whole-image validation during training (see :func:`cicld.evaluation.evaluate.evaluate_model`)."""
    return evaluate_model(model, dataset, accelerator)


def load_model(path: Path, switches: dict | None = None) -> CICLD:
    """The starting model of a stage, with the architecture ``switches`` the stage asks for applied."""
    return CICLD.from_pretrained(path).with_switches(**(switches or {}))
