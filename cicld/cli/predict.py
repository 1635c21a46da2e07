"""``cicld predict INPUTS... OUT``: label maps, colour maps and overlays for any images."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import typer
from rich.progress import TextColumn

from cicld.cli import app
from cicld.cli._console import console, error_console, parse_size, progress_bar, require_writable_folder
from cicld.errors import CicldError, PartialFailure


@app.command("predict")
def predict(
    paths: list[Path] = typer.Argument(
        ..., help="Input files, folders (recursive) or globs, then the output folder OUT."
    ),
    checkpoint: Optional[Path] = typer.Option(None, help="Model folder or finished run. [default: runs/latest]"),
    outputs: str = typer.Option(
        "trainIds,labelIds,color,overlay", help="Which files to write per image (comma-separated, in any case)."
    ),
    height: Optional[int] = typer.Option(
        None,
        min=16,
        help=(
            "Run the model at this image height, keeping the aspect ratio. [default: the model's input height, "
            "else the image's]"
        ),
    ),
    window: Optional[str] = typer.Option(
        None, help="Sliding window WIDTHxHEIGHT; larger images are predicted window by window. [default: the model's]"
    ),
    overlap: Optional[str] = typer.Option(None, help="Sliding-window overlap WIDTHxHEIGHT. [default: the model's]"),
    window_batch: int = typer.Option(4, min=1, help="Windows run at once (bounds memory)."),
    batch_size: int = typer.Option(4, min=1, help="Images per batch."),
    steps: Optional[int] = typer.Option(None, min=0, help="DDIM steps S. [default: the model's]"),
    overwrite: bool = typer.Option(False, help="Replace outputs that already exist."),
    runs_root: Path = typer.Option(Path("runs"), help="Folder of all runs (for the default checkpoint)."),
) -> None:
    """Segment images: per image a trainId PNG, a Cityscapes labelId PNG (submission format), a colour map and an
    overlay.

    Example: `cicld predict images/ out/`, `cicld predict 'photos/*.jpg' out/ --outputs color,overlay`.
    """
    import torch

    from cicld.evaluation.evaluate import InferenceOptions
    from cicld.evaluation.predict import collect_inputs, output_kinds, predict_files, refuse_existing_outputs
    from cicld.models import CICLD
    from cicld.training.locate import resolve_model_dir

    if len(paths) < 2:
        raise CicldError("give at least one input and the output folder: cicld predict INPUTS... OUT")
    *inputs, out = paths
    if out.exists() and not out.is_dir():
        raise CicldError(f"{out} is a file; the last argument must be the output folder")
    require_writable_folder(out, "output folder")
    entries, not_images, broken = collect_inputs(inputs, out)
    for path in not_images:
        console.print(f"[yellow]warning:[/] skipping {path}: not an image")
    for path in broken:
        console.print(f"[yellow]warning:[/] skipping {path}: a broken symbolic link (to {os.readlink(path)})")
    if not entries:
        raise CicldError(f"no images among {', '.join(map(str, inputs))}")
    model_dir = resolve_model_dir(checkpoint, runs_root)
    # Everything about how the model runs comes from the model folder itself (config.json), never
    # from where it lies: the flags override it.
    win = parse_size(window, "--window")
    over = parse_size(overlap, "--overlap")
    options = InferenceOptions(steps=steps, sliding=True, window=win, overlap=over, window_batch=window_batch)
    kinds = output_kinds(outputs)
    if not overwrite:
        refuse_existing_outputs(out, entries, kinds)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = CICLD.from_pretrained(model_dir, device=device)

    started = time.perf_counter()
    with progress_bar(TextColumn("{task.fields[rate]}")) as progress:
        task = progress.add_task("predicting", total=len(entries), rate="")

        def on_image(done: int) -> None:
            progress.update(
                task, completed=done, rate=f"{done / max(time.perf_counter() - started, 1e-9):.2f} images/s"
            )

        report = predict_files(
            model,
            entries,
            out,
            kinds=kinds,
            options=options,
            target_height="model" if height is None else height,
            batch_size=batch_size,
            overwrite=overwrite,
            on_image=on_image,
        )
    console.print(
        f"{report.images} images segmented into {out} ({len(report.written)} files, "
        f"{time.perf_counter() - started:.1f} s)"
    )
    for path, reason in report.failed:  # on stderr, above the error line that counts them
        error_console.print(f"failed: {path}: {reason}", markup=False)
    if report.failed:
        raise PartialFailure(
            f"{len(report.failed)} of {len(entries)} images could not be read (listed above); the others were written"
        )
