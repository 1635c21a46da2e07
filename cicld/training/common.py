"""Pieces the stages share: data sets, loading the starting model, the optimizer, validation."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cicld.data.datasets import SourceDataset, TargetDataset, ValDataset
from cicld.data.labels import ClassList
from cicld.data.layouts import (
    CLASS_STATS_FILE,
    IMAGES,
    dataset_classes,
    labelled_layout,
    prepare_command,
    target_layout,
)
from cicld.data.sampling import RareClassSampler, class_weights
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
        hint = prepare_command(dataset, root)
        raise DataError(f"{root} does not exist; put the {dataset} dataset there and run {hint}")
    if not (root / CLASS_STATS_FILE).is_file():
        raise DataError(f"{root} is not prepared; run {prepare_command(dataset, root)} first")


def source_dataset(config: CommonConfig) -> SourceDataset:
    root = config.resolved_source_root
    require_prepared(root, config.source_format, toy=config.source == "toy")
    num_classes = len(dataset_classes(root, config.source_format))
    sampler = (
        RareClassSampler(root, min_pixels=config.rcs_min_pixels, seed=config.seed, num_classes=num_classes)
        if config.rare_class_sampling
        else None
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
    """The target's images, without labels: a Cityscapes-format folder's train split (prepared, as
    ever), a pairs folder's images or any folder of images, told apart by what is there."""
    root = config.resolved_target_root
    layout = target_layout(root)
    if layout == "cityscapes":
        require_prepared(root, "cityscapes", toy=config.source == "toy")
    resize = config.resolved_target_resize
    return TargetDataset(root, layout=layout, resize=resize, crop=config.crop, seed=config.seed + 1)


def oracle_dataset(config: CommonConfig) -> SourceDataset:
    """The target *with* its labels, for ``--method oracle`` (a reference: the target-supervised
    bound): a Cityscapes-format target's train split (a toy pair's, in whichever format its source
    was written, or the real one) or a prepared pairs folder."""
    root = config.resolved_target_root
    layout = target_layout(root)
    if layout == IMAGES:
        raise CicldError(
            f"--method oracle trains on the target's own labels, and {root} is a folder of images without any; "
            "give a prepared pairs or Cityscapes folder as --target-root"
        )
    require_prepared(root, layout, toy=config.source == "toy")
    resize, crop = config.resolved_target_resize, config.crop
    return SourceDataset(root, layout, resize=resize, crop=crop, seed=config.seed + 2, zoom_max=config.zoom_max)


def val_folder(config: CommonConfig) -> tuple[Path, str] | None:
    """Where a run validates, and the folder's layout: ``--val-root`` (a pairs or Cityscapes folder),
    else the target's val split where the target is in Cityscapes' layout; None: nowhere."""
    val_root = getattr(config, "val_root", None)
    if val_root is not None:
        return Path(val_root), labelled_layout(val_root, "--val-root")
    root = config.resolved_target_root
    return (root, "cityscapes") if target_layout(root) == "cityscapes" else None


def val_dataset(config: CommonConfig) -> ValDataset | None:
    """The labelled target frames a run validates on (:func:`val_folder`); None where there are none."""
    where = val_folder(config)
    if where is None:
        return None
    root, layout = where
    require_prepared(root, layout, toy=config.source == "toy" and getattr(config, "val_root", None) is None)
    return evaluation_split(root, layout, "val", config.resolved_target_resize, config.val_limit)


def unvalidated_note(config: CommonConfig) -> str:
    """What a segmentation stage says, once, when it has nothing to validate on."""
    return (
        f"not validated: no labelled frames of the target {config.resolved_target_root} to score on, so the model "
        "was trained and exported without val scores; --val-root names some (a prepared pairs folder)"
    )


def run_classes(config: CommonConfig, labelled: SourceDataset, val: ValDataset | None) -> ClassList:
    """The classes a run trains: those of its labelled data (the source's; the target's for the
    oracle), whose names ``--classes`` and the val frames' labels must give alike, in the same
    order (one line otherwise). The colours and raw values of ``--classes`` win, for the model."""
    classes = labelled.classes
    if config.classes is not None:
        given = ClassList.from_dict(config.classes)
        _require_no_difference(classes.difference(given, f"the labels of {labelled.root}", "--classes"))
        classes = given
    if val is not None:
        _require_no_difference(classes.difference(val.classes, "the training labels", f"the val labels of {val.root}"))
    return classes


def _require_no_difference(difference: str | None) -> None:
    if difference is not None:
        raise CicldError(f"{difference}; prepare them with the same class names, in the same order (docs/own-data.md)")


def loss_class_weights(config, dataset) -> torch.Tensor | None:
    """The cross-entropy class weights of ``dataset`` (the labelled data) when ``--class-weights`` is on."""
    if not config.class_weights:
        return None
    weights = class_weights(dataset.root / CLASS_STATS_FILE, num_classes=len(dataset.classes))
    return torch.tensor(weights, dtype=torch.float32)


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
    # --no-decay-norms: DAFormer's decay_mult=0 for norm layers, as a group of its own at each rate.
    norms = set() if config.decay_norms else norm_parameter_ids(objective)
    groups = []
    for name, rate in rates.items():
        for decay, chosen in ((config.weight_decay, False), (0.0, True)):
            members = [p for p in params[name] if (id(p) in norms) == chosen]
            groups.append({"params": members, "lr": rate, "initial_lr": rate, "weight_decay": decay})
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, weight_decay=config.weight_decay)


def norm_parameter_ids(module: nn.Module) -> set[int]:
    """The ids of every normalisation layer's own weights and biases in ``module`` (GroupNorm,
    LayerNorm, BatchNorm and the libraries' own *Norm classes, e.g. transformers' ConvNeXt
    LayerNorm, which is no subclass of torch's)."""
    return {id(p) for m in module.modules() if "norm" in type(m).__name__.lower() for p in m.parameters(recurse=False)}


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
    classes = feature_distance_classes(config.feature_distance_classes, model.config.class_list)
    reference = load_starting_backbone(model.config, "--feature-distance needs the backbone the model started from,")
    return FeatureDistance(reference.to(device), config.feature_distance, classes, model.config.num_classes)


def feature_distance_classes(choice: str, class_list: ClassList) -> tuple[int, ...] | None:
    """The class ids whose pixels ``--feature-distance-classes`` counts; None: every labelled pixel.

    DAFormer's "things" are Cityscapes' trainIds; with another class list ids 6-18 mean other
    classes, so ``auto`` counts every pixel there and an explicit ``things`` is one line."""
    if choice == "all" or (choice == "auto" and not class_list.is_cityscapes):
        return None
    if not class_list.is_cityscapes:
        raise CicldError(
            "--feature-distance-classes things counts Cityscapes' thing classes, which the model's classes are not; "
            "use --feature-distance-classes all (or --feature-distance 0)"
        )
    return THING_CLASSES


def validate(model: CICLD, dataset: ValDataset, accelerator) -> SegmentationScores:
    """Whole-image validation during training (see :func:`cicld.evaluation.evaluate.evaluate_model`)."""
    return evaluate_model(model, dataset, accelerator)


def load_model(path: Path, switches: dict | None = None) -> CICLD:
    """The starting model of a stage, with the architecture ``switches`` the stage asks for applied."""
    return CICLD.from_pretrained(path).with_switches(**(switches or {}))
