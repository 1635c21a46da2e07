"""How far can adapt's loop go with better pseudo-labels? Swap its parts for the truth, one at a time.

    # the teacher's pseudo-labels at the start of adapt, per class, on the target's train frames
    PYTHONPATH=. python benchmarks/pseudo_label_ladder.py stats MODEL --data DATA/cityscapes
    # `cicld adapt` with the teacher's pseudo-labels replaced by the target's true labels, weight 1
    PYTHONPATH=. python benchmarks/pseudo_label_ladder.py adapt --labels truth --weight one -- \\
        --source toy --source-root DATA/gta5 --target-root DATA/cityscapes --init-from LDM --method self-training

A diagnosis on a toy pair (whose target has labels), not a method. ``adapt`` runs the real
``cicld adapt`` in this process with some of its step's parts replaced (each flag one rung of a
ladder from the shipped loop towards the oracle):

- ``--labels``: ``teacher`` (as shipped), ``correct`` (the teacher's label where it is right,
  ignored where it is wrong), ``truth`` (the target's own label on every pixel);
- ``--weight``: ``teacher`` (as shipped: the share of confident pixels) or ``one``;
- ``--class-weighted-mix``: the source's class weights (``--class-weights``) on the mixed
  images' loss as well as the source's;
- ``--no-source-loss``: no cross-entropy on the source images (ClassMix still pastes them);
- ``--no-mix``: the target image itself instead of the ClassMix of source and target (still
  colour-jittered and blurred).

The target stream is read with its labels (the target's train split as ``--method oracle`` reads
it, seeded as adapt's target stream), so every rung, ``teacher`` included, sees the same images.
This patches names of ``cicld.training.adapt`` and ``cicld.training.objectives`` for the run.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cicld.training.adapt as adapt_module  # noqa: E402
import cicld.training.objectives as objectives_module  # noqa: E402
from cicld.data.datasets import SourceDataset, ValDataset  # noqa: E402
from cicld.data.labels import CLASSES, IGNORE_INDEX  # noqa: E402
from cicld.evaluation.metrics import ConfusionMatrix  # noqa: E402
from cicld.training.common import require_prepared  # noqa: E402
from cicld.training.uda import augment_mixed  # noqa: E402

LABELS = ("teacher", "correct", "truth")
WEIGHTS = ("teacher", "one")


# --------------------------------------------------------------------------- adapt with parts swapped


def swap_labels(labels: str, weighting: str, pseudo: torch.Tensor, weight: torch.Tensor, truth: torch.Tensor):
    """The pseudo-labels and pixel weights a rung trains on, from the teacher's and the truth."""
    if labels == "correct":
        pseudo = torch.where(pseudo == truth, pseudo, torch.full_like(pseudo, IGNORE_INDEX))
    elif labels == "truth":
        pseudo = truth
    elif labels != "teacher":
        raise ValueError(f"labels must be one of {LABELS}, not {labels!r}")
    if weighting == "one":
        weight = torch.ones_like(weight)
    elif weighting != "teacher":
        raise ValueError(f"weight must be one of {WEIGHTS}, not {weighting!r}")
    return pseudo, weight


@contextmanager
def swapped_adapt(labels: str, weighting: str, class_weighted_mix: bool, source_loss: bool, classmix: bool):
    """``cicld adapt``'s step with the rung's parts in place of the shipped ones (restored after)."""
    saved = adapt_module.target_dataset, adapt_module.mix, objectives_module.segmentation_loss
    shipped_mix, shipped_loss = adapt_module.mix, objectives_module.segmentation_loss
    source_class_weight = {}

    def labelled_target(config) -> SourceDataset:
        root = config.resolved_target_root
        require_prepared(root, "cityscapes", toy=True)
        return SourceDataset(
            root, "cityscapes", resize=config.resolved_target_resize, crop=config.crop, seed=config.seed + 1
        )

    def mix(source, target, pseudo, weight, config, generator, class_weight=None):
        pseudo, weight = swap_labels(labels, weighting, pseudo, weight, target["label"])
        if classmix:
            return shipped_mix(source, target, pseudo, weight, config, generator, class_weight)
        images = augment_mixed(target["image"], config, generator)
        return images, pseudo, weight

    def segmentation_loss(logits, labels_, pixel_weight=None, class_weight=None, **kwargs):
        # The objectives compute the source's loss first (class weights, no pixel weight), then
        # the mixed images' (pixel weights): that order tells the two calls apart.
        if pixel_weight is None:
            source_class_weight["value"] = class_weight
            loss = shipped_loss(logits, labels_, class_weight=class_weight, **kwargs)
            return loss if source_loss else 0.0 * loss
        if class_weighted_mix and class_weight is None:
            class_weight = source_class_weight.get("value")
        return shipped_loss(logits, labels_, pixel_weight=pixel_weight, class_weight=class_weight, **kwargs)

    adapt_module.target_dataset, adapt_module.mix, objectives_module.segmentation_loss = (
        labelled_target,
        mix,
        segmentation_loss,
    )
    try:
        yield
    finally:
        adapt_module.target_dataset, adapt_module.mix, objectives_module.segmentation_loss = saved


def run_adapt(args: argparse.Namespace) -> int:
    from cicld.cli import main

    print(
        f"adapt with labels={args.labels} weight={args.weight} class-weighted mix={args.class_weighted_mix} "
        f"source loss={not args.no_source_loss} classmix={not args.no_mix}",
        flush=True,
    )
    with swapped_adapt(args.labels, args.weight, args.class_weighted_mix, not args.no_source_loss, not args.no_mix):
        try:
            main(["adapt", *args.adapt_args])
        except SystemExit as exit_info:
            return exit_info.code if isinstance(exit_info.code, int) else 1
    return 0


# --------------------------------------------------------------------------- pseudo-label statistics


@torch.no_grad()
def pseudo_label_stats(model, frames: ValDataset, count: int, threshold: float, seed: int = 0) -> dict:
    """Per class: how the model's argmax pseudo-labels on ``frames`` compare with the truth, over
    all pixels and over the confident ones (max probability >= ``threshold``)."""
    k = len(CLASSES)
    every, confident, top2 = ConfusionMatrix(k), ConfusionMatrix(k), torch.zeros(k, dtype=torch.int64)
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    for index in range(min(count, len(frames))):
        item = frames[index]
        probs = torch.softmax(model.predict(item["image"][None], generator=generator).float(), dim=1)
        label = item["label"]
        if probs.shape[-2:] != label.shape:
            probs = torch.nn.functional.interpolate(
                probs, size=tuple(label.shape), mode="bilinear", align_corners=False
            )
        max_prob, pseudo = probs[0].max(dim=0)
        every.update(pseudo, label)
        confident.update(pseudo, torch.where(max_prob >= threshold, label, IGNORE_INDEX))
        in_top2 = (probs[0].topk(2, dim=0).indices == label).any(dim=0) & (label != IGNORE_INDEX)
        top2 += torch.bincount(label[in_top2], minlength=k)
    every, confident, top2 = every.matrix.numpy(), confident.matrix.numpy(), top2.numpy()
    total = max(int(every.sum()), 1)
    stats = {
        "pixel_accuracy": float(np.trace(every) / total),
        "confident_share": float(confident.sum() / total),
        "confident_accuracy": float(np.trace(confident) / max(int(confident.sum()), 1)),
        "classes": {},
    }
    for c, name in enumerate(CLASSES):
        if every[c].sum() == 0 and every[:, c].sum() == 0:
            continue
        mistakes = every[c].copy()
        mistakes[c] = 0
        stats["classes"][name] = {
            "share": float(every[c].sum() / total),
            "predicted_share": float(every[:, c].sum() / total),
            "precision": float(every[c, c] / max(int(every[:, c].sum()), 1)),
            "recall": float(every[c, c] / max(int(every[c].sum()), 1)),
            "top2_recall": float(top2[c] / max(int(every[c].sum()), 1)),
            "confident_precision": float(confident[c, c] / max(int(confident[:, c].sum()), 1)),
            "confident_share": float(confident[c].sum() / max(int(every[c].sum()), 1)),
            "most_confused_with": CLASSES[int(mistakes.argmax())],
            "most_confused_share": float(mistakes.max() / max(int(every[c].sum()), 1)),
        }
    return stats


def print_stats(stats: dict) -> None:
    print(
        f"pixel accuracy {100 * stats['pixel_accuracy']:.1f} %, "
        f"confident pixels {100 * stats['confident_share']:.1f} % "
        f"(accuracy {100 * stats['confident_accuracy']:.1f} %)"
    )
    print(
        f"{'class':14s} {'share':>6s} {'pred':>6s} {'prec':>6s} {'recall':>6s} {'top2':>6s} {'conf':>6s} "
        f"{'c.prec':>6s}  most often taken for"
    )
    for name, s in stats["classes"].items():
        cells = [
            s[k]
            for k in (
                "share",
                "predicted_share",
                "precision",
                "recall",
                "top2_recall",
                "confident_share",
                "confident_precision",
            )
        ]
        print(
            f"{name:14s} "
            + " ".join(f"{100 * v:6.1f}" for v in cells)
            + f"  {s['most_confused_with']} ({100 * s['most_confused_share']:.0f} %)"
        )


def run_stats(args: argparse.Namespace) -> int:
    from cicld.models import CICLD

    model = CICLD.from_pretrained(args.model)
    frames = ValDataset(args.data, "cityscapes", "train")
    stats = pseudo_label_stats(model, frames, args.frames, args.threshold)
    print_stats(stats)
    if args.json:
        args.json.write_text(json.dumps(stats, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    stats = commands.add_parser(
        "stats", help="per-class quality of a model's pseudo-labels on the target's train frames"
    )
    stats.add_argument("model", type=Path)
    stats.add_argument("--data", type=Path, required=True, help="a prepared toy target (its cityscapes folder)")
    stats.add_argument("--frames", type=int, default=200)
    stats.add_argument("--threshold", type=float, default=0.968, help="adapt's --pseudo-threshold")
    stats.add_argument("--json", type=Path)
    run = commands.add_parser("adapt", help="`cicld adapt` with parts of its step swapped; flags after -- go to adapt")
    run.add_argument("--labels", choices=LABELS, default="teacher")
    run.add_argument("--weight", choices=WEIGHTS, default="teacher")
    run.add_argument("--class-weighted-mix", action="store_true")
    run.add_argument("--no-source-loss", action="store_true")
    run.add_argument("--no-mix", action="store_true")
    run.add_argument("adapt_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "adapt":
        args.adapt_args = [a for a in args.adapt_args if a != "--"]
        return run_adapt(args)
    return run_stats(args)


if __name__ == "__main__":
    torch.set_num_threads(1)  # small images: threads only contend (run two benchmarks at a time instead)
    sys.exit(main(sys.argv[1:]))
