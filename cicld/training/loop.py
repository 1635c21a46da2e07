"""The one training loop that every stage runs: read it top to bottom.

A stage (``pretrain_ae.py``, ``pretrain_ldm.py``, ``adapt.py``) is two things:

* its *build*: the data, the model, the objective and the optimizer (prepared, and the
  checkpoint being resumed loaded, by :meth:`Session.prepare
  <cicld.training.session.Session.prepare>`), the EMA model if it has one, the validation data
  and whether its export becomes ``runs/latest``, handed over as a :class:`Stage`;
* its *step*: ``Stage.compute_losses(micro_step)``, which draws one micro-batch and returns its
  losses.

Everything else happens here, once, in this order: seed the step, set its learning rate, take
the optimizer step (:func:`optimizer_step`, below: forward, backward, clipping and the update over
the accumulated micro-batches, and the NaN check), update the EMA model, then log, validate and
checkpoint when due; after the last step, validate, export, and draw the run's curves
(``curves.png``, from its ``log.csv``). The bookkeeping behind each line
is in :class:`~cicld.training.session.Session`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cicld.data.datasets import ValDataset
from cicld.evaluation.plots import training_curves_png
from cicld.files import is_disk_full
from cicld.models import CICLD
from cicld.training.common import validate
from cicld.training.runlog import CURVES_FILE, LOG_FILE
from cicld.training.schedules import ema_update
from cicld.training.session import Session, TrainResult


@dataclass
class Stage:
    """What a stage's build hands to :func:`run_training`."""

    #: The prepared objective (``nn.Module`` whose forward returns the losses; ``.model`` is the
    #: network it trains) and optimizer, as :meth:`Session.prepare` returns them.
    objective: nn.Module
    optimizer: torch.optim.Optimizer
    #: The step: ``compute_losses(micro_step)`` -> the losses of one micro-batch (their sum is
    #: minimised); ``micro_step // grad_accum_steps`` is the optimizer step it belongs to.
    compute_losses: Callable[[int], dict[str, torch.Tensor]]
    #: An EMA copy of the network (``adapt``'s ``ema_model``): updated after every optimizer step,
    #: and then it, not the trained network, is what is validated and exported.
    ema_model: CICLD | None = None
    #: The target's val split, validated every ``--val-every`` steps and after the last; None: never.
    val: ValDataset | None = None
    #: Whether ``runs/latest`` points at the export (not for an autoencoder, which cannot segment).
    update_latest: bool = True
    #: What the user should know about the run, handed back in :class:`TrainResult` (shown once).
    notes: tuple[str, ...] = ()


def run_training(session: Session, stage: Stage, on_step: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Train ``stage`` from ``session.start_step`` to ``--steps``, then validate and export it.

    ``on_step(done, row)`` is called after every step with the step's logged values. Ctrl-C
    becomes a :class:`~cicld.training.stops.TrainingInterrupted` that says how to resume.
    """
    config, accelerator = session.config, session.accelerator
    model = accelerator.unwrap_model(stage.objective).model  # the network being trained
    exported = stage.ema_model if stage.ema_model is not None else model  # what is validated and exported
    evaluate = None if stage.val is None else lambda: validate(exported, stage.val, accelerator).miou()
    scores = None
    try:
        for step in range(session.start_step, config.steps):
            session.begin_step(step)
            lr = session.set_learning_rate(stage.optimizer, step)
            losses = optimizer_step(session, stage, step)
            if stage.ema_model is not None:
                ema_update(stage.ema_model, model, step, config.ema_alpha)
            session.end_step(step + 1, losses, lr, evaluate, on_step)
        if stage.val is not None:
            scores = validate(exported, stage.val, accelerator)
            session.log(config.steps, {"val_miou": scores.miou()})
        final = session.export(exported, update_latest=stage.update_latest)
        if accelerator.is_main_process:  # the run's log.csv as pictures, beside it
            title = f"{config.stage} {session.run_dir.name}"
            training_curves_png(session.run_dir / LOG_FILE, session.run_dir / CURVES_FILE, title)
    except KeyboardInterrupt:
        raise session.interrupted() from None
    except OSError as exc:  # the log, a tracker... on a full disk (checkpoints and final/ say so themselves)
        if not is_disk_full(exc):
            raise
        raise session.write_failed(f"cannot write {exc.filename or session.run_dir}: {exc.strerror}") from None
    finally:
        session.close()
    return TrainResult(session.run_dir, final, scores, stage.notes)


def optimizer_step(session: Session, stage: Stage, step: int) -> dict[str, float]:
    """One optimizer step over ``--grad-accum-steps`` micro-batches: forward (the stage's losses,
    under autocast) → backward → clip → step, each micro-batch; Accelerate's ``accumulate`` makes
    only the last one sync gradients and update the weights. Returns the losses averaged over the
    micro-batches.

    The losses stay on the device until the last micro-batch: they are read (one sync) and
    checked for NaN/inf (one all-reduce with several processes) once per optimizer step, before
    its backward pass and update, so a non-finite loss never reaches the weights.
    """
    accelerator, config, objective, optimizer = session.accelerator, session.config, stage.objective, stage.optimizer
    accum, totals, averages = config.grad_accum_steps, {}, {}
    for micro in range(accum):
        with accelerator.accumulate(objective), accelerator.autocast():
            losses = stage.compute_losses(step * accum + micro)
            for key, value in losses.items():
                totals[key] = totals.get(key, 0.0) + value.detach().float() / accum
            if micro == accum - 1:  # NaN and inf survive the sum: checking the average checks them all
                averages = session.check_finite(step, totals)
            accelerator.backward(sum(losses.values()))
            if accelerator.sync_gradients and config.max_grad_norm is not None:
                accelerator.clip_grad_norm_(objective.parameters(), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return averages
