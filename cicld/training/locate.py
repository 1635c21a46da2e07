"""What a path names — a model folder, a run (finished or not), a checkpoint of a run — decided in
one place, for every command that is given one.

* a **model folder**: ``config.json`` + ``model.safetensors`` (what ``CICLD.from_pretrained``
  loads), wherever it lies;
* a **run**: ``runs/<stage>/<run>/`` with the run's ``config.json`` (it names its ``"stage"``);
  *finished* once its ``final/`` is a model folder;
* a **checkpoint**: ``<run>/checkpoints/step-NNNNNNNN/`` holding ``trainer_state.json``.

``evaluate``/``predict`` (:func:`resolve_model_dir`) and ``--init-from`` (:func:`resolve_init_from`)
take a model folder or a finished run, ``--resume`` (:func:`resolve_resume`) a run or one of its
checkpoints; anything else is one line saying what the path is and what to give instead.
"""

from __future__ import annotations

from pathlib import Path

from cicld.errors import CicldError, with_article
from cicld.models import CONFIG_NAME, WEIGHTS_NAME
from cicld.training.checkpoint import is_checkpoint, latest_checkpoint, list_checkpoints
from cicld.training.runs import FINAL, RUN_CONFIG, RUNS_ROOT, STAGES, read_json, read_run_config, stage_runs


def is_model_folder(path: Path) -> bool:
    """Whether ``path`` holds a model: ``config.json`` and ``model.safetensors``."""
    path = Path(path)
    return (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


def run_stage(path: Path) -> str | None:
    """The stage of the run ``path`` (its ``config.json`` names it), or None if ``path`` is no run."""
    path = Path(path)
    if is_model_folder(path) or not (path / RUN_CONFIG).is_file():
        return None
    try:
        saved = read_json(path / RUN_CONFIG)
    except CicldError:  # unreadable: not a run this can continue
        return None
    stage = saved.get("stage") if isinstance(saved, dict) else None
    return stage if stage in STAGES else None


def is_finished(run_dir: Path) -> bool:
    """Whether the run ``run_dir`` has exported its model (``final/``)."""
    return is_model_folder(Path(run_dir) / FINAL)


def newest_finished_run(runs_root: Path, stage: str, **match) -> Path | None:
    """The newest finished run of ``stage`` whose config has the given values (e.g. source="gta5")."""
    for run in stage_runs(runs_root, stage):
        if is_finished(run) and all(read_run_config(run).get(k) == v for k, v in match.items()):
            return run
    return None


def is_resumable(run_dir: Path) -> bool:
    """Whether the run ``run_dir`` can be continued: unfinished, with a checkpoint. A run stopped
    before its first checkpoint (it diverged, was interrupted, or its start failed) cannot."""
    return not is_finished(run_dir) and latest_checkpoint(run_dir) is not None


def newest_resumable_run(runs_root: Path, stage: str, **match) -> Path | None:
    """The newest resumable run of ``stage`` whose config has the given values (what ``--resume
    latest`` continues): runs without a checkpoint are skipped, so they never hide an older one."""
    for run in stage_runs(runs_root, stage):
        if is_resumable(run) and all(read_run_config(run).get(k) == v for k, v in match.items()):
            return run
    return None


def find_model(path: Path, what: str = "") -> Path:
    """The model folder that ``path`` names: a model folder as it is, a finished run as its
    ``final/``. Anything else is a one-line error saying what ``path`` is (``what`` prefixes it:
    the flag that named it)."""
    path = Path(path)
    if is_finished(path):
        return path / FINAL
    if is_model_folder(path):
        return path
    if not path.exists():
        raise CicldError(f"{what}{path} does not exist")
    if is_checkpoint(path):
        run = path.parent.parent
        raise CicldError(
            f"{what}{path} is a training checkpoint, not a model; continue its run with "
            f"`cicld {run_stage(run) or '<stage>'} --resume {path}`, then use {run / FINAL}"
        )
    stage = run_stage(path)
    if stage is not None:
        raise CicldError(
            f"{what}{path} is {with_article(stage)} run that has not finished (no {FINAL}/); "
            f"finish it with `cicld {stage} --resume {path}`, or name a finished run"
        )
    if (path / CONFIG_NAME).is_file():
        raise CicldError(f"{what}{path} has a {CONFIG_NAME} but no {WEIGHTS_NAME}: not a complete model folder")
    raise CicldError(
        f"{what}{path} is neither a model folder ({CONFIG_NAME} + {WEIGHTS_NAME}) nor a finished run ({FINAL}/)"
    )


def resolve_model_dir(path: Path | None, runs_root: Path = RUNS_ROOT) -> Path:
    """What evaluate/predict load: a model folder, a finished run (its ``final/``) or, for None,
    ``runs/latest``."""
    if path is None:
        latest = Path(runs_root) / "latest"
        if not latest.exists():
            raise CicldError(
                f"no finished run in {runs_root}/ (no {latest}); train one with `cicld adapt` or name a CHECKPOINT"
            )
        return find_model(latest.resolve())
    return find_model(path)


def resolve_init_from(init_from: str | None, runs_root: Path, previous_stage: str, source: str) -> Path:
    """The model folder a new run of a later stage starts from: ``--init-from`` (a model folder or a
    finished run), else the newest finished ``previous_stage`` run of ``source``."""
    if init_from is not None:
        return find_model(Path(init_from), "--init-from ")
    run = newest_finished_run(Path(runs_root), previous_stage, source=source)
    if run is None:
        raise CicldError(
            f"no finished {previous_stage} run for --source {source} in {runs_root}/; "
            f"run `cicld {previous_stage} --source {source}` first (or pass --init-from)"
        )
    return run / FINAL


def latest_resumable_run(runs_root: Path, stage: str, source: str | None = None) -> Path:
    """The run ``--resume latest`` names: the newest resumable run of ``stage`` in ``runs_root``, of
    ``source`` where one is given (``--source``), else of any; a one-line error if there is none."""
    run = newest_resumable_run(Path(runs_root), stage, **({} if source is None else {"source": source}))
    if run is None:
        of_source = "" if source is None else f" for --source {source}"
        raise CicldError(f"--resume latest: no unfinished {stage} run{of_source} with a checkpoint in {runs_root}/")
    return run


def resolve_resume(resume: str, runs_root: Path, stage: str, source: str) -> tuple[Path, Path]:
    """The run and the checkpoint that ``--resume`` names: ``latest`` (the newest resumable run of
    ``stage`` and ``source``, its newest checkpoint), a run folder (its newest checkpoint) or one of
    its checkpoint folders (exactly that one)."""
    checkpoint = None
    if not resume.strip():  # Path("") would be the working folder
        raise CicldError("--resume needs a run folder, one of its checkpoint folders or latest; it was given nothing")
    if resume == "latest":
        run_dir = latest_resumable_run(Path(runs_root), stage, source)
    else:
        run_dir = Path(resume)
        if run_dir.exists() and not run_dir.is_dir():
            raise CicldError(f"--resume {resume} is a file; name a run folder, one of its checkpoint folders or latest")
        if not run_dir.exists() and not run_dir.name.startswith("step-"):
            raise CicldError(f"--resume {resume}: no such run or checkpoint folder")
        if run_dir.name.startswith("step-"):  # a checkpoint folder: exactly that step, its run two levels up
            run_dir, checkpoint = run_dir.parent.parent, run_dir
        elif is_model_folder(run_dir):
            raise CicldError(
                f"--resume {resume} is a model folder, not a run; name the run folder it came from, or latest"
            )
    saved = read_run_config(run_dir)
    if saved.get("stage") != stage:
        raise CicldError(f"{run_dir} is {with_article(str(saved.get('stage')))} run, not {stage}")
    if checkpoint is None:
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            raise CicldError(f"{run_dir} has no checkpoint to resume from")
    elif checkpoint not in list_checkpoints(run_dir):
        raise CicldError(f"{checkpoint} is not a complete checkpoint of {run_dir}")
    return run_dir, checkpoint


def run_of(model_dir: Path) -> Path | None:
    """The run that exported the model folder ``model_dir`` (``<run>/final``, also reached through
    ``runs/latest``), or None for a model folder that lies anywhere else."""
    model_dir = Path(model_dir).resolve()
    return model_dir.parent if model_dir.name == FINAL and run_stage(model_dir.parent) else None
