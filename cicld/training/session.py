"""What every training stage shares: Accelerate, the run folder, resuming, logging and export.

The one training loop (:func:`cicld.training.loop.run_training`) and the stages' builds
(``pretrain_ae.py``, ``pretrain_ldm.py``, ``adapt.py``) stay short and linear; the run's
bookkeeping lives here, and each of its other jobs in a module of its own: what a run starts from
(:mod:`~cicld.training.start`), what a step's number decides (:mod:`~cicld.training.schedules`),
``log.csv`` and the trackers (:mod:`~cicld.training.runlog`), and what a run says when it stops
early (:mod:`~cicld.training.stops`).

Determinism: every step starts by seeding the global RNGs from (seed, step, rank), and data
batches are addressed by step (:mod:`cicld.training.batches`). A run resumed from a checkpoint
therefore replays exactly the steps an uninterrupted run would have taken, bit for bit on CPU.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
    load_checkpoint,
    save_checkpoint,
)
from cicld.training.config import CommonConfig
from cicld.training.locate import resolve_resume
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
    RunLock,
    mark_latest,
    new_run_dir,
    read_run_config,
    recover_replaced,
    replace_directory,
    runs_root_of,
)
from cicld.training.schedules import learning_rate_factor, seed_step
from cicld.training.start import starting_model
from cicld.training.stops import TrainingInterrupted, diverged, interrupted, write_failed


@dataclass
class TrainResult:
    """What a finished stage hands back: its run folder, the exported model, its final val scores,
    and what the user should know about the run (it was not validated, it is an oracle)."""

    run_dir: Path
    final: Path
    scores: SegmentationScores | None
    notes: tuple[str, ...] = ()


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
        """The run's config with its starting point and classes resolved, and the model the stage
        trains (:func:`cicld.training.start.starting_model`); ``self.config`` becomes that config."""
        self.config, model = starting_model(
            self.config, new_model, previous_stage, classes, self.resume_from, self.resume_model_config
        )
        return self.config, model

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
            raise diverged(f" at step {step} ({bad})", self.run_dir)
        return numbers

    def check_weights(self, modules, consequence: str) -> None:
        """Stop with a clear message if any weight (parameter or buffer) of ``modules`` is NaN or inf.

        The losses can stay finite while the weights are not (an infinite step on the last step,
        a NaN gradient norm): a model must never be checkpointed or exported like that.
        """
        flags = [torch.isfinite(t).all() for m in modules for t in m.state_dict().values() if t.is_floating_point()]
        if flags and not everywhere(self.accelerator, torch.stack(flags).all()):
            raise diverged(f": NaN or inf weights {consequence}", self.run_dir)

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
        return interrupted(self.config.stage, self.run_dir, self.steps_done, self.config.steps)

    def write_failed(self, message: str) -> CicldError:
        """``message``, the one line of a write of the run that failed (a full disk), with how to go on."""
        return write_failed(message, self.run_dir, self.config.stage)

    def close(self) -> None:
        if self._exported:  # in every process (export agreed): the others are here too
            leave_together(self.accelerator)
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        self.accelerator.end_training()
