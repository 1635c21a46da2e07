"""What every training stage shares: Accelerate, the run folder, resuming, logging and export.

The one training loop (:func:`cicld.training.loop.run_training`) and the stages' builds
(``pretrain_ae.py``, ``pretrain_ldm.py``, ``adapt.py``) stay short and linear; the bookkeeping
lives here.

Determinism: every step starts by seeding the global RNGs from (seed, step, rank), and data
batches are addressed by step (:mod:`cicld.training.batches`). A run resumed from a checkpoint
therefore replays exactly the steps an uninterrupted run would have taken, bit for bit on CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs

from cicld.data.labels import CITYSCAPES, ClassList
from cicld.distributed import broadcast_text, everywhere, leave_together
from cicld.errors import CicldError
from cicld.evaluation.metrics import SegmentationScores
from cicld.files import atomic_write, disk_space_note, tensor_bytes
from cicld.models import CICLD, CICLDConfig
from cicld.training.checkpoint import (
    TrainingState,
    checkpoint_model_config,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from cicld.training.config import CommonConfig
from cicld.training.locate import is_model_folder, newest_resumable_run, resolve_init_from, resolve_resume
from cicld.training.runlog import (
    LOG_FILE,
    RunLog,
    tracker_hyperparameters,
    trackers_to_use,
    truncate_log,
)
from cicld.training.runs import (
    FINAL,
    RUN_CONFIG,
    RUNS_ROOT,
    RunLock,
    mark_latest,
    new_run_dir,
    read_run_config,
    recover_replaced,
    replace_directory,
    runs_root_of,
)


@dataclass
class TrainResult:
    """What a finished stage hands back: its run folder, the exported model, its final val scores,
    and what the user should know about the run (it was not validated, it is an oracle)."""

    run_dir: Path
    final: Path
    scores: SegmentationScores | None
    notes: tuple[str, ...] = ()


class TrainingDiverged(CicldError):
    """A loss or a weight became NaN or infinite."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C inside the training loop; ``message`` says where the run stopped and how to resume it."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


_HINT = "try a lower --lr or --mixed-precision no"


def make_accelerator(config: CommonConfig, project_dir: Path) -> Accelerator:
    """The run's Accelerator: its mixed precision, gradient accumulation and trackers. Nothing is
    written to ``project_dir`` until the trackers are started (:meth:`Session.open_run`)."""
    if config.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise CicldError("--mixed-precision fp16 needs a GPU; on a CPU use bf16 or no")
    log_with = trackers_to_use(config.report_to)
    # The one answer to "parts of the model sit out": DDP finds them every step. Which sit out
    # depends on the stage, the method and the step (D's RGB path in pretrain-ldm and adapt, f_dis
    # in source-only, oracle and --adversarial none, ε_θ and f_mask in self-training, the patch
    # discriminator in pretrain-ae's warm-up), so no fixed set could be frozen instead.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # Several processes and no GPU (torchrun / accelerate launch on CPUs): Accelerate only picks
    # its multi-CPU (gloo) mode when told to use the CPU.
    cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    return Accelerator(
        cpu=cpu,
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.grad_accum_steps,
        kwargs_handlers=[ddp],
        log_with=log_with,
        project_dir=str(project_dir),
    )


def seed_step(seed: int, step: int, rank: int) -> None:
    """Seed Python, numpy and torch (all devices) for one step of one process."""
    value = (seed * 1_000_003 + step * 65_537 + rank) % (2**31)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def learning_rate_factor(step: int, warmup_steps: int, total_steps: int, power: float) -> float:
    """Linear warm-up from ~0 to 1, then polynomial decay to 0 at ``total_steps`` (DAFormer's schedule)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return max(0.0, 1.0 - progress) ** power


class Session:
    """One training run: its folder, accelerator, log and checkpoints."""

    def __init__(self, config: CommonConfig, resume: str | None = None):
        """Resolve what to run: a new run of ``config``, or the run named by ``resume``, whose saved
        config wins. That config is resolved before the accelerator is built, so that gradient
        accumulation and mixed precision are the run's own. Nothing is written before the first
        step is done (:meth:`open_run`)."""
        self.run_dir: Path | None = None
        self.resume_from: Path | None = None
        #: The config of the model the checkpoint being resumed was saved from (None: a new run,
        #: or a checkpoint written before checkpoints held it).
        self.resume_model_config: CICLDConfig | None = None
        if resume is not None:
            self.run_dir, self.resume_from = resolve_resume(resume, Path(config.runs_root), config.stage, config.source)
            # The run's saved config wins, so that a resumed run continues exactly the run that was started;
            # its values are checked as the flags' are (a hand-edited file may hold any).
            config = type(config).from_dict(read_run_config(self.run_dir))
            try:
                config.validate()
            except CicldError as exc:
                raise CicldError(f"{self.run_dir / RUN_CONFIG}: {exc}") from None
            self.resume_model_config = checkpoint_model_config(self.resume_from)
        self.config = config
        # A new run's folder is made after its first step: until then the trackers' folder is
        # only named (they start in open_run, in the run folder).
        self.accelerator = make_accelerator(config, self.run_dir or Path(config.runs_root) / config.stage)
        self.start_step = 0
        self.steps_done = 0
        #: log.csv and the --report-to trackers (started in the run folder by :meth:`open_run`).
        self.run_log = RunLog(self.accelerator)
        #: What the checkpoints hold (:meth:`prepare`); their weights are also what is checked for NaN.
        self._training = TrainingState()
        self._model: CICLD | None = None  # the network being trained, whose config the checkpoints hold
        self._lock: RunLock | None = None
        self._exported = False

    def starting_model(
        self,
        new_model: Callable[[CommonConfig], CICLD],
        previous_stage: str | None = None,
        classes: ClassList = CITYSCAPES,
    ) -> tuple[CommonConfig, CICLD]:
        """The run's config with its starting point and its ``classes`` (those of its labelled data,
        recorded unless they are Cityscapes') resolved, and the model the stage trains.

        A new run resolves ``init_from`` (``--init-from``, or the newest finished
        ``previous_stage`` run; None for a stage that starts from nothing), recorded in its config,
        and trains ``new_model(config)``. A resumed run keeps the ``init_from`` it recorded, but
        needs nothing outside its run: its model is built from the model config its checkpoint
        holds (the stage's architecture switches included), and :meth:`restore` loads every
        weight into it. A checkpoint written before checkpoints held that config gets
        ``new_model(config)`` as before, which needs ``init_from`` to be there still.

        Whatever ``new_model`` initialises afresh (pretrain-ae's whole model, a part a switch adds
        such as adapt's 2-class f_dis) is drawn from ``--seed``, not from whatever the process
        drew before. The config is not changed: ``self.config`` becomes the resolved copy. A
        ``--crop`` the model cannot tile, and a model that predicts other classes than the data's
        labels name, are refused here, before anything is created; the model takes the colours and
        raw values of the run's class list.
        """
        config = self.config
        if config.classes is None and classes != CITYSCAPES:
            self.config = config = dataclasses.replace(config, classes=classes.to_dict())
        if self.resume_from is None:
            if previous_stage is not None:
                init_from = resolve_init_from(config.init_from, Path(config.runs_root), previous_stage, config.source)
                self.config = config = dataclasses.replace(config, init_from=str(init_from))
        elif self.resume_model_config is None and previous_stage is not None and config.init_from:
            if not is_model_folder(Path(config.init_from)):
                raise CicldError(
                    f"cannot resume from {self.resume_from}: an earlier cicld wrote it without its model's config, "
                    f"so it needs the model the run started from, {config.init_from}, which is no longer there; "
                    "put that folder back to resume"
                )
        if self.resume_model_config is not None:
            model = CICLD(self.resume_model_config)
        else:
            torch.manual_seed(config.seed)  # the initial weights of what is new
            model = new_model(config)
        _require_crop_to_fit(model, config.crop)
        start = f"the starting model {getattr(config, 'init_from', None)}"  # pretrain-ae's is new: it has them
        where = start if self.resume_from is None else f"the model of {self.resume_from}"
        difference = classes.difference(model.config.class_list, "the data's labels", where)
        if difference is not None:
            raise CicldError(f"{difference}: train a model from the start (pretrain-ae) on data of these classes")
        if model.config.class_list != classes:  # the same names: the run's colours and raw values
            model.config = model.config.replace(classes=classes.to_dict())
        return config, model

    def open_run(self) -> Path:
        """Create the run folder and write ``config.json`` (new runs), when the first step is done,
        and start the ``--report-to`` trackers (new and resumed runs).

        By then everything that can fail at start-up has succeeded (data sets, model, the first
        batches, the first forward and backward pass), so a failed start leaves no empty run behind
        to shadow a resumable one for ``--resume latest``.
        """
        if self.run_dir is None:
            runs_root, config = Path(self.config.runs_root), self.config
            self.run_dir = self._broadcast_path(lambda: new_run_dir(runs_root, config.stage, config.source))
            if self.accelerator.is_main_process:
                self._take_lock()
                atomic_write(self.run_dir / RUN_CONFIG, json.dumps(self.config.to_dict(), indent=2))
        if not self.run_log.started:
            resumed_at = self.start_step if self.resume_from is not None else None
            self.run_log.start(self.run_dir, tracker_hyperparameters(self.config, self.run_dir), resumed_at)
        return self.run_dir

    def _take_lock(self) -> None:
        if self._lock is None:
            self._lock = RunLock(self.run_dir).acquire()

    def _broadcast_path(self, make: Callable[[], Path]) -> Path:
        # Only the main process creates the folder; the others learn its name.
        return Path(broadcast_text(self.accelerator, str(make()) if self.accelerator.is_main_process else None))

    def prepare(self, objective: torch.nn.Module, optimizer, ema_model: torch.nn.Module | None = None):
        """Hand a stage's ``objective`` and ``optimizer`` to Accelerate, put the ``ema_model`` (if
        any) on the device, name all three (and fp16's loss scaler) as what the checkpoints hold
        and whose weights are checked before each one, and load the checkpoint being resumed.
        Returns the prepared objective and optimizer and the first step to run."""
        objective, optimizer = self.accelerator.prepare(objective, optimizer)
        self._model = self.accelerator.unwrap_model(objective).model
        modules = {"model": objective}
        if ema_model is not None:
            modules["ema_model"] = ema_model.to(self.accelerator.device)
        self._training = TrainingState(modules, optimizer, self.accelerator.scaler)
        return objective, optimizer, self.restore()

    def restore(self) -> int:
        """Load the checkpoint being resumed (after ``accelerator.prepare``); returns the first step to run."""
        if self.resume_from is not None:
            if self.accelerator.is_main_process:
                self._take_lock()  # a second process resuming the same run is refused here
            try:
                state = load_checkpoint(self.accelerator, self.resume_from, self._training)
                self.start_step = self.steps_done = int(state["step"])
                if self.accelerator.is_main_process:
                    truncate_log(self.run_dir / LOG_FILE, self.start_step)
            except BaseException:
                self.close()
                raise
        return self.start_step

    # ---------------------------------------------------------------- per step
    def begin_step(self, step: int) -> None:
        seed_step(self.config.seed, step, self.accelerator.process_index)

    def set_learning_rate(self, optimizer, step: int) -> float:
        factor = learning_rate_factor(step, self.config.warmup_steps, self.config.steps, self.config.poly_power)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return self.config.lr * factor

    def check_finite(self, step: int, losses: dict[str, torch.Tensor]) -> dict[str, float]:
        """The ``losses`` as numbers; stops with a clear message (keeping the last good checkpoint)
        if any is NaN or inf in any process. One device sync and, with several processes, one
        all-reduce: call it once per optimizer step, not per micro-batch."""
        numbers = dict(zip(losses, torch.stack([v.detach().float().reshape(()) for v in losses.values()]).tolist()))
        if not everywhere(self.accelerator, all(math.isfinite(v) for v in numbers.values())):
            bad = ", ".join(f"{k}={v:.4g}" for k, v in numbers.items())
            raise TrainingDiverged(f"training diverged at step {step} ({bad}); {self._last_good()}; {_HINT}")
        return numbers

    def check_weights(self, modules, consequence: str) -> None:
        """Stop with a clear message if any weight (parameter or buffer) of ``modules`` is NaN or inf.

        The losses can stay finite while the weights are not (an infinite step on the last step,
        a NaN gradient norm): a model must never be checkpointed or exported like that.
        """
        flags = [torch.isfinite(t).all() for m in modules for t in m.state_dict().values() if t.is_floating_point()]
        if flags and not everywhere(self.accelerator, torch.stack(flags).all()):
            raise TrainingDiverged(f"training diverged: NaN or inf weights {consequence}; {self._last_good()}; {_HINT}")

    def _last_good(self) -> str:
        # Checkpoints are written only with finite weights (check_weights), so the newest is good.
        last = latest_checkpoint(self.run_dir) if self.run_dir is not None else None
        return f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"

    def log(self, step: int, values: dict[str, float]) -> None:
        """One row of the run's log (:meth:`RunLog.log <cicld.training.runlog.RunLog.log>`), in the
        run folder (opened first if no step opened it: a run resumed at its last step)."""
        self.open_run()
        self.run_log.log(step, values)

    def end_step(self, done: int, losses: dict[str, float], lr: float, evaluate=None, on_step=None) -> None:
        """After ``done`` steps: open the run folder (first step), validate when due (``evaluate()``
        returns the val mIoU), log when due, report to ``on_step(done, row)``, checkpoint when due."""
        self.open_run()
        self.steps_done = done
        config, row = self.config, {**losses, "lr": lr}
        if evaluate is not None:
            due = config.val_every and done % config.val_every == 0 and done < config.steps
            row["val_miou"] = evaluate() if due else float("nan")
        validated = "val_miou" in row and math.isfinite(row["val_miou"])
        if done % config.log_every == 0 or done == config.steps or validated:
            self.log(done, row)
        if on_step is not None:
            on_step(done, row)
        self.maybe_checkpoint(done)

    def maybe_checkpoint(self, step_done: int, **state) -> None:
        """Checkpoint after ``step_done`` optimizer steps when due (and never twice for one step)."""
        if step_done % self.config.checkpoint_every == 0 or step_done == self.config.steps:
            self.check_weights(self._training.modules.values(), f"after step {step_done}: not checkpointed")
            model_config = self._model.config if self._model is not None else None
            try:
                save_checkpoint(
                    self.accelerator,
                    self.run_dir,
                    step_done,
                    self._training,
                    state,
                    self.config.keep_checkpoints,
                    model_config,
                )
            except CicldError as exc:  # a failed write (a full disk), its temporary folder removed
                raise self.write_failed(str(exc)) from None

    # ---------------------------------------------------------------- the end
    def export(self, model, update_latest: bool) -> Path:
        """Write ``final/`` (config.json + safetensors) atomically; optionally point ``latest`` of the
        runs folder the run sits in at it.
        A model with NaN or inf weights is refused (the last line of defence: see check_weights).

        The model's inference settings are written into its own config first (``input_size``: the
        target size it was trained at), so that ``final/`` alone says how to run it, wherever it
        is copied to."""
        self.check_weights([model], "in the model to export: final/ was not written, runs/latest not moved")
        model.config = model.config.replace(input_size=self.config.resolved_target_resize)
        self.accelerator.wait_for_everyone()
        final, error = self.run_dir / FINAL, None
        if self.accelerator.is_main_process:
            temporary = self.run_dir / f".{FINAL}.tmp"
            recover_replaced(self.run_dir)  # what a crash in an earlier export left behind
            shutil.rmtree(temporary, ignore_errors=True)
            try:
                model.save_pretrained(temporary)
                replace_directory(temporary, final)  # a loadable final/ at every moment once there was one
            except OSError as exc:  # a full disk: one line, and no half-written temporary folder left
                shutil.rmtree(temporary, ignore_errors=True)
                space = disk_space_note(exc, "the model", tensor_bytes(model.state_dict().values()), self.run_dir)
                error = self.write_failed(f"cannot write the model to {final}: {exc.strerror or exc}{space}")
            runs_root = runs_root_of(self.run_dir, self.config.stage)  # not the config's: the run may have moved
            if error is None and update_latest and runs_root is not None:
                mark_latest(runs_root, final)
        if not everywhere(self.accelerator, error is None):  # all stop together
            raise error or CicldError(f"{final} could not be written by the main process")
        self._exported = True
        return final

    def interrupted(self) -> TrainingInterrupted:
        """What to raise on Ctrl-C in the training loop: where the run stopped and how to resume it."""
        stage, done = self.config.stage, self.steps_done
        where = (
            f"in step {done + 1}"
            if done < self.config.steps
            else f"after its last step ({done}), before final/ was written"
        )
        advice = self._resume_advice()
        if advice is None:
            return TrainingInterrupted(
                f"{stage} interrupted {where}, before its first checkpoint: nothing to resume; start it again"
            )
        return TrainingInterrupted(f"{stage} interrupted {where}; {advice}")

    def write_failed(self, message: str) -> CicldError:
        """``message``, the one line of a write of the run that failed (a full disk), with how to go on."""
        return CicldError(f"{message}; {self._resume_advice() or 'no checkpoint was written yet: start the run again'}")

    def _resume_advice(self) -> str | None:
        """``the last checkpoint is CHECKPOINT: continue with `COMMAND```, or None before the first one."""
        last = latest_checkpoint(self.run_dir) if self.run_dir is not None else None
        return None if last is None else f"the last checkpoint is {last}: continue with {self._resume_command()}"

    def _resume_command(self) -> str:
        """The command that continues this run, as it works typed: ``cicld STAGE --resume RUN``, and
        ``--resume latest`` too (with ``--runs-root`` where the run's folder is not the default)
        where that names this run, not a newer one."""
        stage = self.config.stage
        command = f"`cicld {stage} --resume {shlex.quote(str(self.run_dir))}`"
        runs_root = runs_root_of(self.run_dir, stage)
        latest = newest_resumable_run(runs_root, stage) if runs_root is not None else None
        if latest is not None and latest.resolve() == self.run_dir.resolve():
            where = "" if runs_root.resolve() == RUNS_ROOT.resolve() else f" --runs-root {shlex.quote(str(runs_root))}"
            command += f" (or `cicld {stage} --resume latest{where}`)"
        return command

    def close(self) -> None:
        if self._exported:  # in every process (export agreed): the others are here too
            leave_together(self.accelerator)
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        self.accelerator.end_training()


def _require_crop_to_fit(model: CICLD, crop: tuple[int, int] | None) -> None:
    """A line naming ``--crop`` where ``model`` cannot tile it, rather than a tensor shape at the first
    step. (The config checks a crop's range; its fit needs the model, which only the stage builds.)"""
    divisor = model.config.size_divisor
    if crop is not None and (crop[0] % divisor or crop[1] % divisor):
        width, height = (max(divisor, side // divisor * divisor) for side in crop)
        raise CicldError(
            f"--crop {crop[0]}x{crop[1]}: this model needs sides that are multiples of {divisor}, "
            f"e.g. --crop {width}x{height}"
        )
