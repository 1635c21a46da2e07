"""``cicld evaluate [CHECKPOINT]``: mIoU19/16/13 (or a user's classes' mIoU) on a prepared split, with a
table, JSON and pictures."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.progress import TextColumn
from rich.table import Table
from rich.text import Text

from cicld.cli import app
from cicld.cli._console import console, parse_size, progress_bar, require_writable_file, require_writable_folder
from cicld.errors import CicldError
from cicld.files import atomic_write, writing
from cicld.sizes import check_size


def _scores_table(scores, title: str) -> Table:
    table = Table(title=title, header_style="bold")
    table.add_column("class")
    table.add_column("IoU", justify="right")
    for name, iou in zip(scores.classes.names, scores.per_class_iou):
        table.add_row(Text(name), "n/a" if iou != iou else f"{100 * iou:.2f}")  # a class's name is never markup
    table.add_section()
    for label, value in (*scores.means().items(), ("pixel accuracy", scores.pixel_accuracy)):
        table.add_row(f"[bold]{label}", "n/a" if value != value else f"[bold]{100 * value:.2f}")
    return table


@app.command("evaluate")
def evaluate(
    checkpoint: Optional[Path] = typer.Argument(None, help="Model folder or finished run. [default: runs/latest]"),
    data: Optional[Path] = typer.Option(
        None,
        help="Prepared dataset folder. [default: the run's val frames (--val-root, else its target), "
        "else data/cityscapes]",
    ),
    dataset: Optional[str] = typer.Option(
        None,
        help="Format of --data: cityscapes, pairs, gta5 or synthia. "
        "[default: pairs where --data has a classes.json, else cityscapes]",
    ),
    split: str = typer.Option("val", help="Cityscapes split."),
    resize: Optional[str] = typer.Option(
        None,
        help="Resize images to WIDTHxHEIGHT for inference, or none. "
        "[default: the model's input size (cityscapes, pairs), else the dataset's]",
    ),
    steps: Optional[int] = typer.Option(None, min=0, help="DDIM steps S. [default: the model's]"),
    refine: int = typer.Option(0, min=0, help="Extra passes conditioned on the previous prediction."),
    sliding: bool = typer.Option(False, help="Sliding-window inference (for images larger than the training crop)."),
    window: Optional[str] = typer.Option(None, help="Sliding window WIDTHxHEIGHT. [default: the model's]"),
    overlap: Optional[str] = typer.Option(None, help="Sliding-window overlap WIDTHxHEIGHT. [default: the model's]"),
    window_batch: int = typer.Option(4, min=1, help="Windows run at once (bounds memory)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Evaluate only the first N images."),
    json_file: Optional[Path] = typer.Option(None, "--json", help="Also write the scores to this JSON file."),
    out: Path = typer.Option(Path("evaluation"), help="Folder for confusion.png and iou.png."),
    runs_root: Path = typer.Option(Path("runs"), help="Folder of all runs (for the default checkpoint)."),
) -> None:
    """Score a model: confusion matrix over the whole split at label resolution; mIoU19/16/13 (your classes: mIoU).

    Example: `cicld evaluate` (runs/latest on data/cityscapes val), `cicld evaluate runs/adapt/gta5-... --sliding`,
    `cicld evaluate --data data/mine-val` (a prepared pairs folder).
    """
    from accelerate import Accelerator

    from cicld.data.datasets import DEFAULT_RESIZE
    from cicld.data.layouts import CLASS_LIST_FILE, DATASETS
    from cicld.evaluation.evaluate import InferenceOptions, evaluate_model, evaluation_split, require_same_classes
    from cicld.evaluation.plots import confusion_matrix_png, iou_bar_chart_png
    from cicld.models import CICLD
    from cicld.training.common import val_folder
    from cicld.training.config import STAGE_CONFIGS
    from cicld.training.locate import resolve_model_dir, run_of
    from cicld.training.runs import read_run_config

    # Outputs that cannot be written are refused now, not after the whole evaluation has run.
    require_writable_folder(out, "--out")
    if json_file is not None:
        require_writable_file(json_file, "--json")
    model_dir = resolve_model_dir(checkpoint, runs_root)
    if data is None:  # the run's val frames, for a model its run exported; where it lies decides nothing else
        run = run_of(model_dir)
        saved = read_run_config(run) if run is not None else None
        where = val_folder(STAGE_CONFIGS[saved["stage"]].from_dict(saved)) if saved else (Path("data/cityscapes"), "")
        if where is None:
            raise CicldError(f"{run} trained on a target without labels and had no --val-root: give --data")
        data = where[0]
    if dataset is None:
        dataset = "pairs" if (data / CLASS_LIST_FILE).is_file() else "cityscapes"
    if dataset not in DATASETS:
        raise CicldError(f"--dataset must be cityscapes, pairs, gta5 or synthia, got {dataset!r}")
    accelerator = Accelerator()
    model = CICLD.from_pretrained(model_dir).to(accelerator.device)
    # How the model runs comes from its own folder (config.json), never from where it lies.
    if resize is not None:
        size = parse_size(resize, "--resize")
        if size is not None:
            check_size(size, "--resize")
    elif dataset in ("cityscapes", "pairs"):  # target frames: as the model was trained on its target
        size = model.config.input_size
    else:
        size = DEFAULT_RESIZE[dataset]
    val = evaluation_split(data, dataset, split, size, limit)
    require_same_classes(model, val)  # before the progress bar: the error line alone
    win = parse_size(window, "--window")
    over = parse_size(overlap, "--overlap")
    options = InferenceOptions(steps, refine, sliding, win, over, window_batch)

    share = len(range(accelerator.process_index, len(val), accelerator.num_processes))
    started = time.perf_counter()
    with progress_bar(TextColumn("{task.fields[rate]}")) as progress:
        progress.disable = not accelerator.is_main_process
        task = progress.add_task("evaluating", total=share, rate="")

        def on_image(done: int) -> None:
            # The bar follows the main process's share; the others run the same number of images.
            rate = accelerator.num_processes * done / max(time.perf_counter() - started, 1e-9)
            processes = f" over {accelerator.num_processes} processes" if accelerator.num_processes > 1 else ""
            progress.update(task, completed=done, rate=f"{rate:.2f} images/s{processes}")

        scores = evaluate_model(model, val, accelerator, options, on_image)
    if not accelerator.is_main_process:
        return
    console.print(_scores_table(scores, f"{model_dir} on {data} ({dataset} {split}, {len(val)} images)"))
    result = {
        "model": str(model_dir),
        "data": str(data),
        "dataset": dataset,
        "split": split,
        "images": len(val),
        **scores.as_dict(),
    }
    pictures = [out / "confusion.png", out / "iou.png"]
    # The outputs were checked before the evaluation, but a disk can fill up or a folder change
    # in the meantime: a failed write is a one-line error naming the file.
    for path, draw in zip(pictures, (confusion_matrix_png, iou_bar_chart_png)):
        with writing(path):
            draw(scores, path)
    if json_file is not None:
        with writing(json_file):
            atomic_write(
                json_file, json.dumps(result, indent=2, allow_nan=False)
            )  # strict JSON: undefined scores are null
        console.print(f"scores: {json_file}")
    console.print(f"pictures: {', '.join(map(str, pictures))}")
