"""What a run says when it stops before its end: where it stopped, and the command that goes on.

A run stops early in three ways, each with one line for the user and no traceback:

* **interrupted** (Ctrl-C): :class:`TrainingInterrupted`, with the ``--resume`` command from the
  last checkpoint, or "start it again" before the first one;
* **diverged** (a loss or a weight became NaN or inf): :class:`TrainingDiverged`, naming the last
  good checkpoint and what to change;
* **a write failed** (a full disk at a checkpoint, the export or the log): a ``CicldError`` with
  the ``--resume`` command.

The ``--resume`` command is printed as it works typed (:func:`resume_command`).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from cicld.errors import CicldError
from cicld.training.checkpoint import latest_checkpoint
from cicld.training.locate import newest_resumable_run
from cicld.training.runs import RUNS_ROOT, runs_root_of

#: What to change after a divergence.
DIVERGED_HINT = "try a lower --lr or --mixed-precision no"


class TrainingDiverged(CicldError):
    """A loss or a weight became NaN or infinite."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C inside the training loop; ``message`` says where the run stopped and how to resume it."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def diverged(what: str, run_dir: Path | None) -> TrainingDiverged:
    """``what`` went non-finite: the line that says so, the last good checkpoint and what to change.
    Checkpoints are written only with finite weights, so the newest one of ``run_dir`` is good."""
    last = latest_checkpoint(run_dir) if run_dir is not None else None
    last_good = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
    return TrainingDiverged(f"training diverged{what}; {last_good}; {DIVERGED_HINT}")


def interrupted(stage: str, run_dir: Path | None, steps_done: int, steps: int) -> TrainingInterrupted:
    """Ctrl-C after ``steps_done`` of ``steps`` steps: where the run stopped and how to resume it."""
    where = (
        f"in step {steps_done + 1}"
        if steps_done < steps
        else f"after its last step ({steps_done}), before final/ was written"
    )
    advice = resume_advice(run_dir, stage)
    if advice is None:
        return TrainingInterrupted(
            f"{stage} interrupted {where}, before its first checkpoint: nothing to resume; start it again"
        )
    return TrainingInterrupted(f"{stage} interrupted {where}; {advice}")


def write_failed(message: str, run_dir: Path | None, stage: str) -> CicldError:
    """``message``, the one line of a write of the run that failed (a full disk), with how to go on."""
    return CicldError(
        f"{message}; {resume_advice(run_dir, stage) or 'no checkpoint was written yet: start the run again'}"
    )


def resume_advice(run_dir: Path | None, stage: str) -> str | None:
    """``the last checkpoint is CHECKPOINT: continue with `COMMAND```, or None before the first one."""
    last = latest_checkpoint(run_dir) if run_dir is not None else None
    return None if last is None else f"the last checkpoint is {last}: continue with {resume_command(run_dir, stage)}"


def resume_command(run_dir: Path, stage: str) -> str:
    """The command that continues the run ``run_dir``, as it works typed: ``cicld STAGE --resume
    RUN``, and ``--resume latest`` too (with ``--runs-root`` where the run's folder is not the
    default) where that names this run, not a newer one."""
    command = f"`cicld {stage} --resume {shlex.quote(str(run_dir))}`"
    runs_root = runs_root_of(run_dir, stage)
    latest = newest_resumable_run(runs_root, stage) if runs_root is not None else None
    if latest is not None and latest.resolve() == run_dir.resolve():
        where = "" if runs_root.resolve() == RUNS_ROOT.resolve() else f" --runs-root {shlex.quote(str(runs_root))}"
        command += f" (or `cicld {stage} --resume latest{where}`)"
    return command
