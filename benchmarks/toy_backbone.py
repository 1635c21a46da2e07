"""The toy's stand-in for ImageNet weights: a transformers ConvNeXt trained on the generic world.

Real UDA starts from an encoder pre-trained on a large, varied corpus; the toy pair's stand-in for
that corpus is its generic world (``cicld prepare-data toy --generic N``: random colours per frame,
half photographed, neither domain). This script trains a transformers ``ConvNextBackbone`` with a
light SegFormer-style head on the generic frames' labels, scores it on the toy target's val split
(the *zero-shot* score that adaptation must beat), and saves the backbone with the library's own
``save_pretrained``, so that cicld loads it exactly as a user loads ImageNet weights::

    cicld prepare-data toy --generic 2000
    PYTHONPATH=. python benchmarks/toy_backbone.py --data data/toy --out bench/backbone-s0 --seed 0
    cicld pretrain-ae --source toy --backbone bench/backbone-s0/backbone

Writes ``<out>/backbone/`` (config.json + model.safetensors) and ``<out>/report.json`` (the
zero-shot scores, per class, and the settings and times). One torch thread unless ``--threads``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cicld.data.datasets import SourceDataset  # noqa: E402
from cicld.data.labels import CLASSES, IGNORE_INDEX, NUM_CLASSES  # noqa: E402
from cicld.data.layouts import CLASS_STATS_FILE  # noqa: E402
from cicld.data.sampling import class_weights  # noqa: E402
from cicld.evaluation.evaluate import evaluation_split  # noqa: E402
from cicld.evaluation.metrics import ConfusionMatrix  # noqa: E402


class SegmenterOnBackbone(nn.Module):
    """A transformers backbone and SegFormer's all-MLP head: every stage projected to ``width``,
    upsampled to 1/4, concatenated, fused, classified; logits upsampled to the image."""

    def __init__(self, backbone: nn.Module, width: int = 128, dropout: float = 0.1):
        super().__init__()
        self.backbone = backbone
        self.project = nn.ModuleList([nn.Conv2d(c, width, 1) for c in backbone.channels])
        self.fuse = nn.Sequential(
            nn.Conv2d(width * len(backbone.channels), width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.classify = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(width, NUM_CLASSES, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images).feature_maps
        size = features[0].shape[-2:]
        maps = [
            F.interpolate(p(f), size=size, mode="bilinear", align_corners=False) for p, f in zip(self.project, features)
        ]
        logits = self.classify(self.fuse(torch.cat(maps, 1)))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def convnext_backbone(widths: list[int], depths: list[int]) -> nn.Module:
    from transformers import ConvNextBackbone, ConvNextConfig

    config = ConvNextConfig(hidden_sizes=widths, depths=depths, out_features=["stage1", "stage2", "stage3", "stage4"])
    return ConvNextBackbone(config)


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 0."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train(model: nn.Module, dataset: SourceDataset, args: argparse.Namespace, weight: torch.Tensor) -> list[float]:
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]  # norms and biases
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr
    )
    rng = np.random.default_rng(args.seed)
    losses = []
    model.train()
    for step in range(args.steps):
        dataset.set_epoch(step)
        items = [dataset[int(i)] for i in rng.integers(0, len(dataset), args.batch)]
        images = torch.stack([item["image"] for item in items])
        labels = torch.stack([item["label"] for item in items]).long()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        loss = F.cross_entropy(model(images), labels, weight=weight, ignore_index=IGNORE_INDEX)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % 100 == 0:
            print(f"step {step + 1}/{args.steps} loss {np.mean(losses[-100:]):.3f}", flush=True)
    return losses


@torch.no_grad()
def zero_shot(model: nn.Module, root: Path) -> dict:
    """mIoU19 of ``model`` on the toy target's val split (labels at full size)."""
    model.eval()
    val = evaluation_split(root, "cityscapes", "val", None)
    confusion = ConfusionMatrix(NUM_CLASSES)
    for index in range(len(val)):
        item = val[index]
        logits = model(item["image"][None])
        logits = F.interpolate(logits, size=item["label"].shape[-2:], mode="bilinear", align_corners=False)
        confusion.update(logits.argmax(1), item["label"][None])
    scores = confusion.scores()
    per_class = {name: None if math.isnan(v) else round(100 * v, 1) for name, v in zip(CLASSES, scores.per_class_iou)}
    return {"miou19": round(100 * scores.miou19, 2), "frames": len(val), "iou": per_class}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/toy"), help="a toy pair with generic frames")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--widths", default="32,64,128,256", help="ConvNeXt stage widths")
    parser.add_argument("--depths", default="2,2,4,2", help="ConvNeXt blocks per stage")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    generic = args.data / "generic"
    if not (generic / CLASS_STATS_FILE).is_file():
        parser.error(
            f"{generic} is missing or not prepared: run `cicld prepare-data toy {args.data} --generic 2000` first"
        )
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    backbone = convnext_backbone([int(w) for w in args.widths.split(",")], [int(d) for d in args.depths.split(",")])
    model = SegmenterOnBackbone(backbone)
    dataset = SourceDataset(generic, "gta5", seed=args.seed)
    weight = torch.tensor(class_weights(generic / CLASS_STATS_FILE), dtype=torch.float32)
    losses = train(model, dataset, args, weight)
    trained = time.perf_counter()
    scores = zero_shot(model, args.data / "cityscapes")
    args.out.mkdir(parents=True, exist_ok=True)
    backbone.save_pretrained(args.out / "backbone")
    report = {
        "zero_shot_target_val": scores,
        "final_loss": round(float(np.mean(losses[-100:])), 4),
        "parameters_backbone": sum(p.numel() for p in backbone.parameters()),
        "train_seconds": round(trained - started, 1),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "generic_frames": len(dataset),
        "torch": torch.__version__,
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"zero-shot on the toy target val: mIoU19 {scores['miou19']:.1f}; backbone in {args.out / 'backbone'}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
