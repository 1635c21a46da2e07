"""Why does a network learn (or not) on the toy pair? Walk from a plain CNN to CICLD one change at a time.

    PYTHONPATH=. python benchmarks/learning_ladder.py --root data/toy --list
    PYTHONPATH=. python benchmarks/learning_ladder.py --root data/toy --rung plain --train target
    PYTHONPATH=. python benchmarks/learning_ladder.py --root data/toy --rung plain,crop128-b4 --seeds 0,1,2

Each *rung* is a network and a training recipe; neighbouring rungs differ in one thing. A rung is
trained on the toy source (``--train source``: source-only) or on the toy target's own train labels
(``--train target``: the oracle, i.e. what the network can learn at all on this budget), then
scored on the 100 toy target val frames (mIoU19, Cityscapes-style: one confusion matrix over the
split). The data are read once into memory with cicld's readers; the loop is a plain supervised
loop (no pipeline, no checkpoints), so that only the network and the recipe differ between rungs.

The CICLD rungs build :class:`cicld.models.CICLD` from a config and train it with the segmentation
path of ``pretrain-ldm``: CE on the logits of ``forward_train`` (noised latent, one-step ẑ0) plus
the diffusion loss, or, for the ``noise=False`` rungs, CE on ``segment(z0, features)`` (S = 0,
no ε_θ). Prediction uses ``model.predict`` with S = 1 (noise) or S = 0.

Results are printed as one JSON line per (rung, train, seed) and, with ``--json``, appended to a file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cicld.data.labels import IGNORE_INDEX, NUM_CLASSES
from cicld.data.transforms import normalize
from cicld.evaluation.metrics import ConfusionMatrix, SegmentationScores
from cicld.models import CICLD, CICLDConfig
from cicld.models.losses import diffusion_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toy_domain_gap import PlainCNN, load_source, load_target  # noqa: E402


# ----------------------------------------------------------------------------------- recipes
@dataclass(frozen=True)
class Recipe:
    """How a network is trained: data per step, optimiser and schedule, loss weighting."""

    steps: int = 500
    batch: int = 8
    crop: tuple[int, int] | None = None  # (width, height); None: whole 256x128 images
    optimizer: str = "adam-onecycle"  # or "adamw-poly" (cicld's: linear warm-up, then poly(1))
    lr: float = 2e-3
    warmup: int = 20  # adamw-poly only
    weight_decay: float = 0.0
    class_weights: bool = True  # sqrt median-frequency weights, clipped to [0, 5]


PLAIN_RECIPE = Recipe()
CICLD_RECIPE = Recipe(
    steps=600, batch=4, crop=(128, 128), optimizer="adamw-poly", lr=1e-3, weight_decay=0.01, class_weights=False
)


# ----------------------------------------------------------------------------------- networks
@dataclass(frozen=True)
class Net:
    kind: str  # "plain" or "cicld"
    norm: str = "bn"  # plain only: "bn" or "gn"
    preset: str = "tiny"  # cicld only
    overrides: dict[str, Any] = field(default_factory=dict)  # cicld config fields
    noise: bool = True  # cicld: train through the noised latent and ε_θ (False: S = 0, segment(z0))
    lambda_dif: float = 1.0

    def build(self) -> nn.Module:
        if self.kind == "plain":
            model = PlainCNN()
            if self.norm == "gn":
                _batchnorm_to_groupnorm(model)
            return model
        return CICLD(CICLDConfig.preset(self.preset, **self.overrides))


def _batchnorm_to_groupnorm(module: nn.Module, groups: int = 8) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.GroupNorm(min(groups, child.num_features), child.num_features))
        else:
            _batchnorm_to_groupnorm(child, groups)


@dataclass(frozen=True)
class Rung:
    name: str
    net: Net
    recipe: Recipe
    note: str


def _rungs() -> dict[str, Rung]:
    plain, cicld = PLAIN_RECIPE, CICLD_RECIPE
    batch4 = dataclasses.replace(plain, batch=4)
    crop = dataclasses.replace(plain, crop=(128, 128), batch=4, steps=600)
    opt = dataclasses.replace(crop, optimizer="adamw-poly", lr=1e-3, weight_decay=0.01)
    small = {"preset": "small"}
    rungs = [
        # From the plain CNN's recipe to the toy recipe of cicld <= 0.x (commit 0899905), one change at a time.
        Rung(
            "plain",
            Net("plain"),
            plain,
            "plain CNN, its own recipe (whole images, batch 8, Adam one-cycle, class weights)",
        ),
        Rung(
            "crop128-b4",
            Net("plain"),
            crop,
            "... 128x128 crops, batch 4, 600 steps (the old toy recipe's data per step)",
        ),
        Rung("adamw-poly", Net("plain"), opt, "... AdamW 1e-3, warm-up 20 + poly (the old toy recipe's optimiser)"),
        Rung("no-class-weights", Net("plain"), cicld, "... no class weights (= the old toy recipe)"),
        Rung("groupnorm", Net("plain", norm="gn"), cicld, "... GroupNorm instead of BatchNorm"),
        # The new toy recipe (whole images, batch 4, Adam one-cycle, class weights) with each network.
        Rung(
            "plain-b4", Net("plain"), batch4, "plain CNN, whole images at batch 4 (the new toy recipe's data per step)"
        ),
        Rung("plain-b4-gn", Net("plain", norm="gn"), batch4, "... GroupNorm instead of BatchNorm"),
        Rung(
            "small-gn",
            Net("cicld", **small, overrides={"ae_norm": "group"}),
            batch4,
            "cicld small with GroupNorm (diffusers' own)",
        ),
        Rung(
            "small",
            Net("cicld", **small),
            batch4,
            "cicld small as shipped (BatchNorm in E/D/f_cls; noised latent, ε_θ, S = 1)",
        ),
        Rung("small-s0", Net("cicld", **small, noise=False), batch4, "... S = 0: no latent noise, no ε_θ"),
        Rung(
            "small-no-ic",
            Net("cicld", **small, overrides={"inter_coder": False}),
            batch4,
            "... without the inter-coder connection",
        ),
        Rung(
            "small-no-cond",
            Net("cicld", **small, overrides={"conditioning": False}),
            batch4,
            "... without conditioning",
        ),
        Rung(
            "small-old-recipe",
            Net("cicld", **small),
            cicld,
            "cicld small with the old toy recipe (crops, AdamW-poly, no class weights)",
        ),
    ]
    return {r.name: r for r in rungs}


RUNGS = _rungs()


# ----------------------------------------------------------------------------------- training
def class_weight(labels: np.ndarray) -> torch.Tensor:
    counts = np.bincount(labels.ravel(), minlength=256)[:NUM_CLASSES].astype(np.float64)
    freq = counts / counts.sum()
    present = freq > 0
    weights = np.where(present, np.sqrt(np.median(freq[present]) / np.maximum(freq, 1e-12)), 0.0).clip(0.0, 5.0)
    return torch.tensor(weights, dtype=torch.float32)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.stack([normalize(image) for image in images])


def make_optimizer(model: nn.Module, recipe: Recipe):
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "adam-onecycle":
        optimizer = torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=recipe.lr, total_steps=recipe.steps, pct_start=0.1
        )
    elif recipe.optimizer == "adamw-poly":
        optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)

        def factor(step: int) -> float:
            if step < recipe.warmup:
                return (step + 1) / recipe.warmup
            return max(0.0, 1.0 - (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    else:
        raise ValueError(recipe.optimizer)
    return optimizer, schedule


def sample_batch(images: np.ndarray, labels: np.ndarray, recipe: Recipe, rng: np.random.Generator):
    pick = rng.integers(0, len(images), recipe.batch)
    x, y = images[pick], labels[pick]
    if recipe.crop is not None:
        width, height = recipe.crop
        xs, ys = [], []
        for i in range(len(pick)):
            top = rng.integers(0, x.shape[1] - height + 1)
            left = rng.integers(0, x.shape[2] - width + 1)
            xs.append(x[i, top : top + height, left : left + width])
            ys.append(y[i, top : top + height, left : left + width])
        x, y = np.stack(xs), np.stack(ys)
    x, y = to_tensor(x), torch.from_numpy(y.astype(np.int64))
    flip = torch.from_numpy(rng.random(len(pick)) < 0.5)
    x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
    return x, y


def train(rung: Rung, images: np.ndarray, labels: np.ndarray, seed: int) -> tuple[nn.Module, list[float]]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net, recipe = rung.net, rung.recipe
    model = net.build()
    if net.kind == "cicld":
        model.discriminator.requires_grad_(False)
    weight = class_weight(labels) if recipe.class_weights else None
    optimizer, schedule = make_optimizer(model, recipe)
    model.train()
    losses = []
    for _ in range(recipe.steps):
        x, y = sample_batch(images, labels, recipe, rng)
        if net.kind == "plain":
            logits, extra = model(x), 0.0
        elif net.noise:
            out = model.forward_train(x, y)
            logits, extra = out["logits"], net.lambda_dif * diffusion_loss(out["noise_pred"], out["noise"])
        else:
            z0, features = model.encode(x)
            use_skips = model.config.inter_coder
            logits, extra = model.segment(z0, features if use_skips else None, x.shape[-2:]), 0.0
        loss = F.cross_entropy(logits, y, weight=weight, ignore_index=IGNORE_INDEX) + extra
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    return model.eval(), losses


@torch.no_grad()
def score(rung: Rung, model: nn.Module, images: np.ndarray, labels: np.ndarray) -> SegmentationScores:
    """Target val scores: whole images, 16 at a time, one confusion matrix over the split."""
    confusion = ConfusionMatrix(NUM_CLASSES)
    for start in range(0, len(images), 16):
        x = to_tensor(images[start : start + 16])
        if rung.net.kind == "cicld":
            logits = model.predict(x, steps=1 if rung.net.noise else 0)
        else:
            logits = model(x)
        confusion.update(logits.argmax(1), torch.from_numpy(labels[start : start + 16].astype(np.int64)))
    return confusion.scores()


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root", type=Path, default=Path("data/toy"), help="a toy pair made by `cicld prepare-data toy`"
    )
    parser.add_argument("--rung", default="", help="comma-separated rung names (see --list)")
    parser.add_argument(
        "--train", default="target", choices=("source", "target"), help="train on the source or the target's labels"
    )
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, help="override every rung's step count (for a quick check)")
    parser.add_argument("--json", type=Path, help="append one JSON line per run here")
    parser.add_argument("--list", action="store_true", help="list the rungs and exit")
    parser.add_argument(
        "--custom",
        action="append",
        default=[],
        help='an extra rung as JSON: {"name": ..., "net": {Net fields}, "recipe": {Recipe fields}}',
    )
    args = parser.parse_args(argv)
    if args.list:
        for rung in RUNGS.values():
            print(f"{rung.name:<28} {rung.note}")
        return []
    torch.set_num_threads(args.threads)
    manifest = json.loads((args.root / "toy.json").read_text())
    if args.train == "source":
        images, labels = load_source(args.root, manifest["num_source"])
    else:
        images, labels = load_target(args.root, "train", manifest["num_target_train"])
    val_x, val_y = load_target(args.root, "val", manifest["num_target_val"])
    rungs = dict(RUNGS)
    for text in args.custom:
        spec = json.loads(text)
        recipe = spec.get("recipe", {})
        if "crop" in recipe and recipe["crop"] is not None:
            recipe["crop"] = tuple(recipe["crop"])
        rungs[spec["name"]] = Rung(spec["name"], Net(**spec["net"]), Recipe(**recipe), spec.get("note", "custom"))
    results = []
    names = args.rung.split(",") if args.rung else []
    names += [json.loads(t)["name"] for t in args.custom if json.loads(t)["name"] not in names]
    for name in names:
        rung = rungs[name]
        if args.steps is not None:
            rung = dataclasses.replace(rung, recipe=dataclasses.replace(rung.recipe, steps=args.steps))
        for seed in (int(s) for s in args.seeds.split(",")):
            started = time.perf_counter()
            model, losses = train(rung, images, labels, seed)
            trained = time.perf_counter()
            scores = score(rung, model, val_x, val_y)
            row = {
                "rung": name,
                "train": args.train,
                "seed": seed,
                "miou19": round(100 * scores.miou(), 1),
                "iou": [None if np.isnan(v) else round(100 * float(v), 1) for v in scores.per_class_iou],
                "final_loss": round(float(np.mean(losses[-50:])), 3),
                "train_seconds": round(trained - started, 1),
                "params": sum(p.numel() for p in model.parameters()),
            }
            print(json.dumps(row), flush=True)
            if args.json:
                with args.json.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
            results.append(row)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
