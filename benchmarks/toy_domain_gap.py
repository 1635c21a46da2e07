"""Is the toy domain gap real? Train a small plain CNN on the toy source and on the toy target.

    PYTHONPATH=. python benchmarks/toy_domain_gap.py            # generates a pair in a temp dir
    PYTHONPATH=. python benchmarks/toy_domain_gap.py --root data/toy

(a) **source-only**: trained on the source labels (GTA5 format), evaluated on the source
    hold-out (the last 10 % of source frames, never trained on) and on target val;
(b) **oracle**: the same network and schedule trained on the target-train labels, evaluated on
    target val.

A useful toy pair has (a) on target val clearly below (b) -- the gap adaptation must close --
and (a) clearly above chance, so that the layout and shapes the domains share carry over.
mIoU is Cityscapes-style: intersections and unions summed over the whole split, classes that
are absent from both the ground truth and the prediction left out. The files are read directly
(``pngio`` + ``labels``), independently of cicld's dataset classes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cicld.data.labels import CLASSES, IGNORE_INDEX, NUM_CLASSES, cityscapes_ids_to_train_ids
from cicld.data.pngio import read_image
from cicld.data.toy import (
    DEFAULT_NUM_SOURCE,
    DEFAULT_NUM_TARGET_TRAIN,
    DEFAULT_NUM_TARGET_VAL,
    MANIFEST,
    cityscapes_stem,
    generate_toy_pair,
)


def load_source(root: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.stack([read_image(root / "gta5" / "images" / f"{i:05d}.png", "RGB") for i in range(count)])
    labels = np.stack(
        [cityscapes_ids_to_train_ids(read_image(root / "gta5" / "labels" / f"{i:05d}.png")) for i in range(count)]
    )
    return images, labels


def load_target(root: Path, split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for i in range(count):
        stem = cityscapes_stem(split, i)
        city = stem.split("_")[0]
        images.append(read_image(root / "cityscapes" / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", "RGB"))
        labels.append(
            cityscapes_ids_to_train_ids(
                read_image(root / "cityscapes" / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
            )
        )
    return np.stack(images), np.stack(labels)


def block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class PlainCNN(nn.Module):
    """3x3 conv blocks down to 1/8 (the last two dilated, for context), a 1/4-resolution skip,
    a 1x1 head and bilinear upsampling: about 0.2 GMAC per 256x128 image."""

    def __init__(self, width: int = 24):
        super().__init__()
        self.stem = nn.Sequential(block(3, width, 2), block(width, 2 * width, 2), block(2 * width, 2 * width))  # 1/4
        self.body = nn.Sequential(
            block(2 * width, 4 * width, 2),
            block(4 * width, 4 * width, dilation=2),
            block(4 * width, 4 * width, dilation=4),
        )  # 1/8
        self.head = nn.Sequential(
            nn.Conv2d(6 * width, 64, 1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, NUM_CLASSES, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        low = self.stem(x)
        deep = F.interpolate(self.body(low), size=low.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.head(torch.cat([deep, low], 1))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - 0.5) / 0.25


def train(images: np.ndarray, labels: np.ndarray, steps: int, batch: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = PlainCNN()
    # median-frequency class weights (square-rooted), from the training labels: both models get
    # them, so that a few hundred steps also learn the small classes
    counts = np.bincount(labels.ravel(), minlength=256)[:NUM_CLASSES].astype(np.float64)
    freq = counts / counts.sum()
    present = freq > 0
    weights = np.where(present, np.sqrt(np.median(freq[present]) / np.maximum(freq, 1e-12)), 0.0).clip(0.0, 5.0)
    weight = torch.tensor(weights, dtype=torch.float32)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    model.train()
    for _ in range(steps):
        pick = rng.integers(0, len(images), batch)
        x, y = to_tensor(images[pick]), torch.from_numpy(labels[pick]).long()
        if rng.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        loss = F.cross_entropy(model(x), y, weight=weight, ignore_index=IGNORE_INDEX)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Cityscapes-style mIoU (%) over the whole split, and the per-class IoU (NaN: class absent)."""
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for i in range(0, len(images), 16):
        pred = model(to_tensor(images[i : i + 16])).argmax(1).numpy()
        gt = labels[i : i + 16]
        valid = gt != IGNORE_INDEX
        confusion += np.bincount(
            gt[valid].astype(np.int64) * NUM_CLASSES + pred[valid], minlength=NUM_CLASSES**2
        ).reshape(NUM_CLASSES, NUM_CLASSES)
    inter = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    return float(np.nanmean(iou) * 100), iou


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, help="an existing toy pair (default: generate one in a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="generation worker processes")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--num-source", type=int, default=DEFAULT_NUM_SOURCE)
    parser.add_argument("--num-target-train", type=int, default=DEFAULT_NUM_TARGET_TRAIN)
    parser.add_argument("--num-target-val", type=int, default=DEFAULT_NUM_TARGET_VAL)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cicld-toy-") as scratch:
        root = args.root or Path(scratch) / "toy"
        counts = dict(
            num_source=args.num_source, num_target_train=args.num_target_train, num_target_val=args.num_target_val
        )
        if args.root is not None and (root / MANIFEST).exists():
            counts = {k: json.loads((root / MANIFEST).read_text())[k] for k in counts}
        summary = generate_toy_pair(root, seed=args.seed, workers=args.workers, **counts)
        generated = time.perf_counter()
        source_x, source_y = load_source(root, summary.num_source)
        held_out = max(1, summary.num_source // 10)
        train_x, train_y = load_target(root, "train", summary.num_target_train)
        val_x, val_y = load_target(root, "val", summary.num_target_val)
    loaded = time.perf_counter()
    print(f"toy pair: {summary}")
    print(f"generation {generated - started:.1f} s, loading {loaded - generated:.1f} s")

    source_model = train(source_x[:-held_out], source_y[:-held_out], args.steps, args.batch, args.seed)
    trained_a = time.perf_counter()
    source_on_source, _ = evaluate(source_model, source_x[-held_out:], source_y[-held_out:])
    source_on_target, iou_a = evaluate(source_model, val_x, val_y)
    oracle_start = time.perf_counter()
    oracle = train(train_x, train_y, args.steps, args.batch, args.seed)
    trained_b = time.perf_counter()
    oracle_on_target, iou_b = evaluate(oracle, val_x, val_y)
    finished = time.perf_counter()

    print(f"\n{'class':<15}{'source-only':>12}{'oracle':>10}   (IoU % on target val)")
    for c, name in enumerate(CLASSES):
        a = "-" if np.isnan(iou_a[c]) else f"{100 * iou_a[c]:.1f}"
        b = "-" if np.isnan(iou_b[c]) else f"{100 * iou_b[c]:.1f}"
        print(f"{name:<15}{a:>12}{b:>10}")
    result = {
        "source_only_on_source_val_miou": round(source_on_source, 1),
        "source_only_on_target_val_miou": round(source_on_target, 1),
        "oracle_on_target_val_miou": round(oracle_on_target, 1),
        "gap": round(oracle_on_target - source_on_target, 1),
        "steps": args.steps,
        "batch": args.batch,
        "train_seconds_source_only": round(trained_a - loaded, 1),
        "train_seconds_oracle": round(trained_b - oracle_start, 1),
        "generation_seconds": round(generated - started, 1),
        "total_seconds": round(finished - started, 1),
    }
    print(
        f"\nsource-only: {source_on_source:.1f} mIoU on source hold-out ({held_out} frames), "
        f"{source_on_target:.1f} on target val\noracle:      {oracle_on_target:.1f} mIoU on target val"
        f"\ngap (oracle - source-only on target): {result['gap']:.1f} mIoU"
        f"\nwall time {result['total_seconds']:.0f} s (generation {result['generation_seconds']:.0f} s, "
        f"training {result['train_seconds_source_only']:.0f} + {result['train_seconds_oracle']:.0f} s)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
