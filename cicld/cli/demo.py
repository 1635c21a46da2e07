"""``cicld demo``: the whole method on the built-in toy pair, on a CPU, in one command."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import TextColumn
from rich.table import Table

from cicld.cli import app
from cicld.cli._console import console, progress_bar


@app.command()
def demo(
    out: Path = typer.Option(
        Path("cicld-demo"), "--out", "-o", help="Folder for the toy data, runs, scores and pictures."
    ),
    seed: int = typer.Option(0, min=0, help="Seed of the toy world and of every training stage."),
    workers: int = typer.Option(2, "--workers", "-j", min=1, help="Processes generating the toy pair."),
    quick: bool = typer.Option(
        False,
        "--quick",
        help=(
            "A smoke test of the install in well under a minute (tiny data, four steps per stage; the scores "
            "mean nothing)."
        ),
    ),
) -> None:
    """Run the whole method on the toy pair: data, three training stages, evaluation, pictures.

    toy pair -> pretrain-ae -> pretrain-ldm (the source-only model) -> adapt (CICLD) -> evaluate
    both on the toy target's val split -> predictions and a side-by-side picture. A few minutes
    on a 2-core CPU. Re-running reuses finished stages and resumes an interrupted one.
    """
    from cicld.demo import DemoOptions, run_demo

    result = run_demo(DemoOptions(out=out, seed=seed, workers=workers, quick=quick), _RichProgress())
    console.print(_results_table(result))
    console.print(f"side by side (input, ground truth, source-only, CICLD): [bold]{result.comparison}[/]")
    console.print(f"predictions: {result.predictions}   scores and plots: {result.evaluation}")
    for name, model in result.models.items():
        console.print(f"{name} model: {model}")
    console.print(f"next: cicld predict YOUR_IMAGES/ OUT/ --checkpoint {result.models['CICLD']}")


def _results_table(result) -> Table:
    table = Table(title="toy target (val) — 19-class scores in %", header_style="bold")
    for column in ("model", "mIoU19", "mIoU16", "mIoU13", "pixel acc."):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, scores in result.scores.items():
        table.add_row(
            name, *(f"{100 * v:.1f}" for v in (scores.miou19, scores.miou16, scores.miou13, scores.pixel_accuracy))
        )
    return table


class _RichProgress:
    """A progress bar per stage while it works (none for a reused stage), then one line with its time."""

    def __init__(self) -> None:
        self._progress = None

    def stage_started(self, name: str, total: int | None) -> None:
        self._name, self._total = name, total

    def advanced(self, completed: int, status: str = "", total: int | None = None) -> None:
        if self._progress is None:  # drawn from the first report on, so a reused stage prints one line
            self._progress = progress_bar(TextColumn("{task.fields[status]}"))
            self._task = self._progress.add_task(self._name, total=total or self._total, status="")
            self._progress.start()
        self._progress.update(self._task, completed=completed, status=status, **({"total": total} if total else {}))

    def stage_finished(self, name: str, seconds: float, note: str) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        console.print(f"[green]✓[/] {name} ({seconds:.0f} s): {note}")
