"""A run's log: ``log.csv`` (always) and the ``--report-to`` trackers (Accelerate's), and
``curves.png``, the picture drawn from it at the end of the run.

Only the main process writes. A resumed run's log drops the rows logged after its checkpoint
(:func:`truncate_log`) and logs those steps again, so that it equals an uninterrupted run's.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from cicld.errors import CicldError
from cicld.files import atomic_write
from cicld.training.config import TRACKERS, CommonConfig

LOG_FILE = "log.csv"
#: The picture of a run's log.csv (losses, learning rate, val mIoU), drawn at the end of the run.
CURVES_FILE = "curves.png"
#: The run's subfolder for what the --report-to trackers write locally (TensorBoard's events, Aim's repo).
TRACKER_DIR = "trackers"
#: The project name the trackers are given (TensorBoard's folder in TRACKER_DIR, W&B's project...).
TRACKER_PROJECT = "cicld"
#: The package to install for each tracker.
_TRACKER_PACKAGES = {"comet_ml": "comet-ml"}


def trackers_to_use(report_to: str) -> list[str] | None:
    """Accelerate's ``log_with`` for ``--report-to``; a one-line error for a tracker that is not
    installed (Accelerate itself would drop it silently)."""
    if report_to == "none":
        return None
    from accelerate.tracking import get_available_trackers

    available = {str(tracker) for tracker in get_available_trackers()}
    if report_to == "all":
        if not available & set(TRACKERS):
            raise CicldError(
                f"--report-to all: none of {', '.join(TRACKERS)} is installed; install one, or use --report-to none"
            )
        return ["all"]
    if report_to not in available:
        raise CicldError(
            f"--report-to {report_to}: {report_to} is not installed; `pip install "
            f"{_TRACKER_PACKAGES.get(report_to, report_to)}`, "
            "or use --report-to none (log.csv is always written)"
        )
    return [report_to]


def tracker_hyperparameters(config: CommonConfig, run_dir: Path) -> dict[str, bool | int | float | str]:
    """The run's config as the flat scalar values every tracker takes: a size as ``WIDTHxHEIGHT``
    and an unset value as ``none`` (as on the command line); plus ``run_dir``."""

    def scalar(value):
        if value is None:
            return "none"
        if isinstance(value, tuple):
            return "x".join(map(str, value))
        return value if isinstance(value, (bool, int, float, str)) else str(value)

    return {**{key: scalar(value) for key, value in config.to_dict().items()}, "run_dir": str(run_dir)}


class RunLog:
    """Appends each logged step to ``log.csv`` and hands its finite values to the trackers."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.path: Path | None = None
        self.started = False
        self._fields: list[str] | None = None

    def start(self, run_dir: Path, hyperparameters: dict, resumed_at: int | None = None) -> None:
        """Log into ``run_dir`` from now on, and start Accelerate's trackers there with the run's
        config as ``hyperparameters``. A run resumed at step ``resumed_at``: TensorBoard drops
        the events logged after it, as log.csv drops its rows (those steps are logged again); the
        other trackers cannot drop logged values."""
        self.started, self.path = True, Path(run_dir) / LOG_FILE
        project = self.accelerator.project_configuration
        project.project_dir, project.logging_dir = str(run_dir), str(Path(run_dir) / TRACKER_DIR)
        init_kwargs = {"tensorboard": {"purge_step": resumed_at + 1}} if resumed_at is not None else {}
        self.accelerator.init_trackers(TRACKER_PROJECT, hyperparameters, init_kwargs)

    def log(self, step: int, values: dict[str, float]) -> None:
        """Append a CSV row (main process) and log its finite values to the ``--report-to`` trackers.

        A row with a column the file lacks rewrites the file with the wider header (rare: e.g.
        the first validation), so no value is ever dropped.
        """
        if not self.accelerator.is_main_process:
            return
        row = {"step": step, **{k: float(v) for k, v in values.items()}}
        path = self.path
        if self._fields is None and path.is_file() and path.stat().st_size:  # a resumed run's log
            with path.open(newline="") as handle:
                self._fields = next(csv.reader(handle))
        if self._fields is not None and set(row) <= set(self._fields):
            with path.open("a", newline="") as handle:
                csv.DictWriter(handle, fieldnames=self._fields).writerow(row)
        else:  # a new file, or the whole file again with the wider header
            fields, rows = self._fields or [], []
            if self._fields is not None:
                with path.open(newline="") as handle:
                    rows = list(csv.DictReader(handle))
            self._fields = fields + [k for k in row if k not in fields]
            _write_csv(path, self._fields, [[r.get(k, "") for k in self._fields] for r in [*rows, row]])
        self.accelerator.log({k: v for k, v in row.items() if k != "step" and math.isfinite(v)}, step=step)


def truncate_log(path: Path, step: int) -> None:
    """Drop the rows of the CSV log ``path`` logged after ``step`` (the checkpoint a run resumes
    from): the resumed run logs those steps again, so that its log equals an uninterrupted run's.
    A row cut short by a kill mid-write goes too, and so does a second row of ``step`` itself. The
    file is replaced atomically, and left alone when there is nothing to drop."""
    if not path.is_file():
        return
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    kept = [row for row in body if len(row) == len(header) and _row_step(row) is not None and _row_step(row) <= step]
    # The checkpoint's own step logs one row; a second one is the final validation of a run that
    # was stopped while exporting (its checkpoint is the last step), which the resumed run logs again.
    at_step = [i for i, row in enumerate(kept) if _row_step(row) == step]
    kept = [row for i, row in enumerate(kept) if i not in at_step[1:]]
    if len(kept) == len(body):
        return
    _write_csv(path, header, kept)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    """Write the whole CSV file ``path`` (atomically: a crash leaves the old file or the new one)."""
    text = io.StringIO(newline="")
    csv.writer(text).writerows([header, *rows])
    atomic_write(path, text.getvalue(), durable=True)


def _row_step(row: list[str]) -> int | None:
    try:
        return int(row[0])
    except ValueError:
        return None


def loss_summary(row: dict[str, float]) -> str:
    """A step row's losses as ``name=value`` pairs, for progress displays (lr and val left out)."""
    return " ".join(f"{k}={v:.3f}" for k, v in row.items() if k not in ("lr", "val_miou") and v == v)
