"""``cicld prepare-data {gta5,synthia,cityscapes,pairs,toy} [ROOT]``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.table import Table
from rich.text import Text

from cicld.cli import app
from cicld.cli._console import console, human_count, parse_size, progress_bar
from cicld.data.labels import ClassList
from cicld.data.layouts import default_root
from cicld.data.prepare import PrepareReport, SizeMismatchPolicy, find_frames, prepare_dataset
from cicld.errors import CicldError, DataError
from cicld.files import writing

if TYPE_CHECKING:
    from cicld.data.toy import ToyPairSummary


class DatasetChoice(str, Enum):
    gta5 = "gta5"
    synthia = "synthia"
    cityscapes = "cityscapes"
    pairs = "pairs"
    toy = "toy"


class SourceFormat(str, Enum):
    gta5 = "gta5"
    synthia = "synthia"
    both = "both"


@app.command("prepare-data")
def prepare_data(
    dataset: DatasetChoice = typer.Argument(
        ...,
        help="Which dataset ROOT holds (pairs: your own images/ and labels/; toy: generate the toy domain pair there).",
    ),
    root: Optional[Path] = typer.Argument(None, help="Dataset folder. [default: data/<dataset>]"),
    classes: Optional[Path] = typer.Option(
        None,
        help="pairs only: the class list, a JSON file of each class's name, colour and label values "
        "(docs/own-data.md).",
    ),
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="Worker processes."),
    on_size_mismatch: SizeMismatchPolicy = typer.Option(
        SizeMismatchPolicy.resize, help="A label not the size of its image: resize it (nearest) or skip the frame."
    ),
    verify_images: bool = typer.Option(
        True, help="Decode every image once, so corrupt or truncated files are found now."
    ),
    seed: Optional[int] = typer.Option(None, min=0, help="toy only: random seed of the generated world. [default: 0]"),
    size: Optional[str] = typer.Option(None, help="toy only: image size WIDTHxHEIGHT. [default: 256x128]"),
    source_format: Optional[SourceFormat] = typer.Option(None, help="toy only: source domain format. [default: gta5]"),
    overwrite: Optional[bool] = typer.Option(
        None, "--overwrite", help="toy only: regenerate a toy pair made with other parameters."
    ),
    generic: Optional[int] = typer.Option(
        None,
        min=0,
        help="toy only: also write this many frames of a generic world (random colours, half photographed) to "
        "ROOT/generic, a GTA5-format set to pre-train on, the toy's stand-in for ImageNet (docs/toy.md). "
        "[default: keep what ROOT has; none for a new ROOT]",
    ),
) -> None:
    """Convert raw labels to trainIds and class stats (idempotent, resumable); or generate the toy pair.

    Examples: `cicld prepare-data gta5`, `cicld prepare-data cityscapes /data/cityscapes -j 8`,
    `cicld prepare-data pairs data/mine --classes classes.json` (your own labelled frames),
    `cicld prepare-data toy` (writes data/toy/gta5 and data/toy/cityscapes, already prepared),
    `cicld prepare-data toy --generic 2000` (adds data/toy/generic, a pre-training set).
    """
    root = root if root is not None else default_root(dataset.value)
    toy_options = {
        "--seed": seed,
        "--size": size,
        "--source-format": source_format,
        "--overwrite": overwrite,
        "--generic": generic,
    }
    if classes is not None and dataset is not DatasetChoice.pairs:
        raise CicldError("--classes only applies to `prepare-data pairs`; the other datasets have Cityscapes' classes")
    if dataset is DatasetChoice.pairs and classes is None:
        raise CicldError("`prepare-data pairs` needs the class list: --classes FILE (docs/own-data.md)")
    if dataset is not DatasetChoice.toy:
        given = [flag for flag, value in toy_options.items() if value is not None]
        if given:
            raise CicldError(f"{', '.join(given)} only apply to `prepare-data toy`")
        class_list = ClassList.read(classes) if classes is not None else None
        _prepare_and_report(root, dataset.value, workers, on_size_mismatch, verify_images, classes=class_list)
        return
    size_wh = parse_size(size or "256x128", "--size")
    pair = _generate_toy(
        root, workers, seed or 0, size_wh, source_format or SourceFormat.gta5, bool(overwrite), generic
    )
    for folder, dataset in pair.datasets.items():
        _prepare_and_report(root / folder, dataset, workers, on_size_mismatch, verify_images, label=folder)
    console.print(
        f"Toy pair ready in [bold]{root}[/]: source {', '.join(str(p) for p in pair.source_roots.values())}, "
        f"target {pair.cityscapes_root} (train without labels for adaptation, val for evaluation)."
    )
    if pair.generic_root is not None:
        console.print(
            f"Generic world: {pair.num_generic} labelled frames in {pair.generic_root}; pre-train on them with "
            f"`cicld pretrain-ldm --source toy --source-root {pair.generic_root}` (docs/toy.md)."
        )


def _generate_toy(
    root: Path,
    workers: int,
    seed: int,
    size: tuple[int, int],
    source_format: SourceFormat,
    overwrite: bool,
    generic: int | None,
) -> ToyPairSummary:
    from cicld.data.toy import generate_toy_pair

    formats = ("gta5", "synthia") if source_format is SourceFormat.both else (source_format.value,)
    with progress_bar() as progress:
        task = progress.add_task("generating toy pair", total=None)

        def advance(total: int) -> None:
            progress.update(task, total=total, advance=1)

        with writing(f"the toy pair to {root}", DataError):
            summary = generate_toy_pair(
                root,
                seed=seed,
                size=size,
                source_formats=formats,
                num_generic=generic,
                workers=workers,
                progress=advance,
                overwrite=overwrite,
            )
    console.print(f"Toy pair: {summary}")
    return summary


def _prepare_and_report(
    root: Path,
    dataset: str,
    workers: int,
    policy: SizeMismatchPolicy,
    verify_images: bool,
    label: str | None = None,
    classes: ClassList | None = None,
) -> None:
    """Prepare ``root`` (a ``dataset``-format folder, shown as ``label``, default ``dataset``; a
    pairs folder through its ``classes``)."""
    label = label or dataset
    frames = find_frames(root, dataset, classes)
    with progress_bar() as progress:
        task = progress.add_task(f"preparing {label}", total=len(frames.samples))
        report = prepare_dataset(
            frames,
            workers=workers,
            policy=policy,
            verify_images=verify_images,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    console.print(_summary_table(report))
    console.print(_class_share_table(report))
    for path in report.missing_partner[:5]:
        console.print(f"[yellow]warning:[/] no partner for {path}")
    if len(report.missing_partner) > 5:
        console.print(f"[yellow]warning:[/] ... and {len(report.missing_partner) - 5} more files without a partner")
    if report.failures:
        for name, reason in report.failures[:10]:
            console.print(f"[red]failed:[/] {name}: {reason}")
        first = report.failures[0][1]
        raise DataError(
            f"{len(report.failures)} of {report.frames} {label} frames could not be prepared (first: {first}); "
            "fix or remove them and re-run: finished frames are kept"
        )


def _summary_table(report: PrepareReport) -> Table:
    table = Table(title=f"{report.dataset} in {report.root}", show_header=True, header_style="bold")
    table.add_column("frames")
    table.add_column("count", justify="right")
    table.add_row("converted", human_count(report.converted))
    table.add_row("skipped (already prepared)", human_count(report.skipped))
    table.add_row(
        "size-mismatched (label resized)" if not report.mismatch_skipped else "size-mismatched",
        human_count(report.size_mismatched),
    )
    if report.mismatch_skipped:
        table.add_row("  of which left out", human_count(report.mismatch_skipped))
    table.add_row("missing partner (image or label)", human_count(len(report.missing_partner)))
    table.add_row("failed", human_count(len(report.failures)))
    return table


def _class_share_table(report: PrepareReport) -> Table:
    table = Table(title="class pixel shares", show_header=True, header_style="bold")
    table.add_column("class")
    table.add_column("share", justify="right")
    table.add_column("")
    total = max(int(report.class_pixels.sum()), 1)
    names = report.classes.names
    for class_id in sorted(range(len(names)), key=lambda c: -report.class_pixels[c]):
        share = report.class_pixels[class_id] / total
        if share > 0:
            table.add_row(Text(names[class_id]), f"{100 * share:.2f}%", "█" * max(1, round(40 * share)))
    return table
