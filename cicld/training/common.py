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
from cicld.training.config import CommonConfig

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
    """AdamW with two groups: the model's fresh heads at ``lr × head_lr_mult``, everything else the
    objective trains at ``lr`` (the pre-trained parts, and modules the objective adds, such as
    pretrain-ae's patch discriminator: they are not heads of the exported model)."""
    model_groups, model_ids = objective.model.parameter_groups(), {id(p) for p in objective.model.parameters()}
    added = [p for p in objective.parameters() if p.requires_grad and id(p) not in model_ids]
    groups = [
        {"params": model_groups["pretrained"] + added, "lr": config.lr, "initial_lr": config.lr},
        {"params": model_groups["heads"], "lr": config.lr * config.head_lr_mult, "initial_lr": config.lr * config.head_lr_mult},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, weight_decay=config.weight_decay)


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
