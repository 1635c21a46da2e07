"""``cicld demo``: the whole method end to end on the built-in toy pair, on a CPU.

toy pair → ``pretrain-ae`` → ``pretrain-ldm`` (the source-only model) → ``adapt`` (CICLD) →
both evaluated on the toy target's val split → predictions and a side-by-side picture of a few
val images. Every stage is an ordinary run under ``<out>/runs`` with the toy recipe on a shorter
schedule (:data:`DEMO_STEPS`), so what the demo does is what the commands in the README do with
those ``--steps``.

Re-running the demo reuses the stages that finished with the same settings and resumes an
interrupted one from its last checkpoint, so Ctrl-C costs at most one checkpoint interval.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from cicld.data.labels import colorize
from cicld.data.pngio import read_image
from cicld.data.toy import generate_toy_pair, prepare_toy_pair
from cicld.evaluation.metrics import SegmentationScores
from cicld.files import atomic_write, writing
from cicld.training.adapt import adapt
from cicld.training.config import STAGE_CONFIGS, CommonConfig, make_config
from cicld.training.locate import find_model, is_finished, is_resumable
from cicld.training.pretrain_ae import pretrain_ae
from cicld.training.pretrain_ldm import pretrain_ldm
from cicld.training.runlog import loss_summary
from cicld.training.runs import read_run_config, stage_runs

#: The stage functions the demo runs, by stage name.
TRAIN = {"pretrain-ae": pretrain_ae, "pretrain-ldm": pretrain_ldm, "adapt": adapt}

#: The demo's schedule: the toy recipe (``--source toy``) with fewer steps per stage, so that the
#: whole demo takes about six minutes on 2 cores (5 min 28 s and 5 min 46 s measured, docs/getting-started.md),
#: leaving room for machines up to twice as slow under ten. ``benchmarks/uda_toy.py`` runs the full recipe.
DEMO_STEPS = {"pretrain-ae": 50, "pretrain-ldm": 300, "adapt": 150}
T = TypeVar("T")


@dataclass
class DemoOptions:
    """What ``cicld demo`` runs. The defaults are the full demo; ``quick`` is a smoke test."""

    out: Path = Path("cicld-demo")
    seed: int = 0
    workers: int = 2  # toy-pair generation processes
    num_pictures: int = 4  # target val images in the side-by-side picture and the predictions
    #: A one-minute check of the install: a 64×32 toy pair of a few frames and a few steps per
    #: stage. Its numbers mean nothing.
    quick: bool = False

    @property
    def data_root(self) -> Path:
        # One pair per seed and size, side by side: another --seed never meets a pair it cannot reuse.
        return self.out / "data" / f"toy-seed{self.seed}{'-quick' if self.quick else ''}"

    @property
    def runs_root(self) -> Path:
        return self.out / "runs"


@dataclass
class DemoResult:
    out: Path
    scores: dict[str, SegmentationScores]  # "source-only" and "CICLD" -> target val scores
    models: dict[str, Path]  # "source-only" and "CICLD" -> exported model folder
    comparison: Path  # the side-by-side picture
    predictions: Path
    evaluation: Path


class DemoProgress:
    """Callbacks the demo reports through (the CLI draws them with rich); no-ops by default."""

    def stage_started(self, name: str, total: int | None) -> None: ...

    def advanced(self, completed: int, status: str = "", total: int | None = None) -> None: ...

    def stage_finished(self, name: str, seconds: float, note: str) -> None: ...


def run_demo(options: DemoOptions, progress: DemoProgress | None = None) -> DemoResult:
    progress = progress or DemoProgress()

    def stage(name: str, total: int | None, work: Callable[[], tuple[str, T]]) -> T:
        """Run ``work`` (which returns a note for the user and its result) between two reports."""
        progress.stage_started(name, total)
        started = time.perf_counter()
        note, result = work()
        progress.stage_finished(name, time.perf_counter() - started, note)
        return result

    def train(label: str, stage_name: str, **overrides) -> Path:
        config = make_config(stage_name, **_stage_overrides(options, stage_name), **overrides)
        return stage(label, config.steps, lambda: _train_or_reuse(config, progress))

    for stage_name in TRAIN:  # every stage's settings (the seed...) are checked before anything is created
        make_config(stage_name, **_stage_overrides(options, stage_name))
    stage("toy pair", None, lambda: _make_toy_pair(options, progress))
    autoencoder = train("pretrain-ae", "pretrain-ae")
    latent_diffusion = train("pretrain-ldm", "pretrain-ldm", init_from=str(autoencoder))
    # The source-only model is pretrain-ldm's (trained on the labelled source alone); CICLD adapts
    # exactly that model, so the difference between the two is the adaptation.
    models = {
        "source-only": latent_diffusion,
        "CICLD": train("adapt (CICLD)", "adapt", init_from=str(latent_diffusion)),
    }
    evaluation = options.out / "evaluation"
    scores = stage("evaluate", None, lambda: _evaluate(options, models, evaluation, progress))
    predictions = options.out / "predictions"
    comparison = options.out / "comparison.png"
    stage("predict", None, lambda: _predict(options, models, predictions, comparison, progress))
    summary = {name: {"model": str(models[name]), **scores[name].as_dict()} for name in models}
    _write_json(options.out / "results.json", summary)
    return DemoResult(options.out, scores, models, comparison, predictions, evaluation)


# --------------------------------------------------------------------------- stages


def _stage_overrides(options: DemoOptions, stage_name: str) -> dict:
    common = dict(
        source="toy",
        seed=options.seed,
        runs_root=str(options.runs_root),
        source_root=str(options.data_root / "gta5"),
        target_root=str(options.data_root / "cityscapes"),
        steps=DEMO_STEPS[stage_name],
    )
    if options.quick:
        common.update(steps=4, batch_size=2, crop=None, checkpoint_every=2, log_every=1, val_every=0)
    return common


def _make_toy_pair(options: DemoOptions, progress: DemoProgress) -> tuple[str, None]:
    sizes = dict(size=(64, 32), num_source=8, num_target_train=8, num_target_val=4) if options.quick else {}
    done = [0]

    def advance(total: int) -> None:
        done[0] += 1
        progress.advanced(done[0], "frames", total=total)

    with writing(f"the toy pair to {options.data_root}"):
        summary = generate_toy_pair(
            options.data_root, seed=options.seed, workers=options.workers, progress=advance, **sizes
        )
    prepare_toy_pair(summary, workers=options.workers)
    return (
        f"{summary.num_source} source, {summary.num_target_train} target train, {summary.num_target_val} val "
        f"frames in {options.data_root}",
        None,
    )


def _train_or_reuse(config: CommonConfig, progress: DemoProgress) -> tuple[str, Path]:
    """Reuse a finished run with this exact config, resume an unfinished one, or start afresh.
    Returns a note for the user and the exported model folder."""
    runs_root, wanted = Path(config.runs_root), _comparable(config.to_dict())
    finished = _run_with_config(runs_root, config.stage, wanted, is_finished)
    if finished is not None:
        return f"reused the finished run {finished}", find_model(finished)
    resume = _run_with_config(runs_root, config.stage, wanted, is_resumable)  # a run without a checkpoint starts afresh
    on_step = lambda step, row: progress.advanced(step, loss_summary(row))  # noqa: E731
    result = TRAIN[config.stage](config, resume=str(resume) if resume else None, on_step=on_step)
    return f"run {result.run_dir}" + (" (resumed)" if resume else ""), result.final


def _run_with_config(runs_root: Path, stage: str, wanted: dict, kind: Callable[[Path], bool]) -> Path | None:
    """The newest run of ``stage`` of a ``kind`` (``is_finished``, ``is_resumable``) whose recorded
    config equals ``wanted``."""
    for run in stage_runs(runs_root, stage):
        if kind(run) and _comparable(read_run_config(run)) == wanted:
            return run
    return None


def _comparable(config: dict) -> dict:
    # init_from names a folder that is resolved at run time; JSON turns tuples into lists; keys
    # that earlier versions saved and the stage no longer has are left out.
    retired = getattr(STAGE_CONFIGS.get(config.get("stage")), "retired", ())
    return json.loads(json.dumps({k: v for k, v in config.items() if k != "init_from" and k not in retired}))


def _evaluate(
    options: DemoOptions, models: dict[str, Path], out: Path, progress: DemoProgress
) -> tuple[str, dict[str, SegmentationScores]]:
    from accelerate import Accelerator

    from cicld.evaluation.evaluate import evaluate_model, evaluation_split
    from cicld.evaluation.plots import confusion_matrix_png, iou_bar_chart_png
    from cicld.models import CICLD

    val = evaluation_split(options.data_root / "cityscapes", "cityscapes", "val", None)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    scores: dict[str, SegmentationScores] = {}
    done = 0
    for name, model_dir in models.items():
        model = CICLD.from_pretrained(model_dir, device=accelerator.device)

        def on_image(n: int, base=done, name=name) -> None:
            progress.advanced(base + n, name, total=len(models) * len(val))

        scores[name] = result = evaluate_model(model, val, accelerator, on_image=on_image)
        done += len(val)
        folder = out / _slug(name)
        folder.mkdir(parents=True, exist_ok=True)
        _write_json(folder / "scores.json", result.as_dict())
        iou_bar_chart_png(result, folder / "iou.png", title=f"{name}, toy target val")
        confusion_matrix_png(result, folder / "confusion.png")
    return f"{len(val)} val images per model; scores and pictures in {out}", scores


def _predict(
    options: DemoOptions, models: dict[str, Path], out: Path, comparison: Path, progress: DemoProgress
) -> tuple[str, None]:
    from cicld.data.datasets import ValDataset
    from cicld.evaluation.plots import side_by_side_png
    from cicld.evaluation.predict import PredictionInput, output_paths, predict_files
    from cicld.models import CICLD

    samples = ValDataset(options.data_root / "cityscapes", "cityscapes", "val").samples[: options.num_pictures]
    inputs = [PredictionInput(s.image, Path(s.image.stem)) for s in samples]
    rows = [[read_image(s.image, "RGB"), colorize(read_image(s.train_ids))] for s in samples]
    for name, model_dir in models.items():
        folder = out / _slug(name)
        predict_files(
            CICLD.from_pretrained(model_dir),
            inputs,
            folder,
            kinds=("color", "overlay"),
            overwrite=True,
            on_image=lambda n, name=name: progress.advanced(n, name, total=len(samples)),
        )
        # The picture shows the very colour maps just written.
        for row, entry in zip(rows, inputs):
            row.append(read_image(output_paths(folder, entry, ("color",))["color"], "RGB"))
    side_by_side_png(rows, ["input", "ground truth", *models], comparison)
    return f"{len(samples)} val images: colour maps and overlays in {out}, side by side in {comparison}", None


# --------------------------------------------------------------------------- helpers


def _slug(name: str) -> str:
    return name.lower().replace(" ", "-")


def _write_json(path: Path, data) -> None:
    atomic_write(path, json.dumps(data, indent=2))
