"""What a run starts from: its config with the starting point and the classes resolved, and the
model it trains. Everything here is checked before anything is created."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from cicld.data.labels import CITYSCAPES, ClassList
from cicld.errors import CicldError
from cicld.models import CICLD, CICLDConfig
from cicld.training.config import CommonConfig
from cicld.training.locate import is_model_folder, resolve_init_from


def starting_model(
    config: CommonConfig,
    new_model: Callable[[CommonConfig], CICLD],
    previous_stage: str | None,
    classes: ClassList,
    resume_from: Path | None,
    resume_model_config: CICLDConfig | None,
) -> tuple[CommonConfig, CICLD]:
    """``config`` with its starting point and its ``classes`` (those of its labelled data, recorded
    unless they are Cityscapes') resolved, and the model the stage trains.

    A new run (``resume_from`` None) resolves ``init_from`` (``--init-from``, or the newest
    finished ``previous_stage`` run; None for a stage that starts from nothing), recorded in its
    config, and trains ``new_model(config)``. A resumed run keeps the ``init_from`` it recorded,
    but needs nothing outside its run: its model is built from the model config its checkpoint
    holds (``resume_model_config``, the stage's architecture switches included), and the
    checkpoint then loads every weight into it. A checkpoint written before checkpoints held that
    config gets ``new_model(config)`` as before, which needs ``init_from`` to be there still.

    Whatever ``new_model`` initialises afresh (pretrain-ae's whole model, a part a switch adds
    such as adapt's 2-class f_dis) is drawn from ``--seed``, not from whatever the process drew
    before. A ``--crop`` the model cannot tile, and a model that predicts other classes than the
    data's labels name, are refused; the model takes the colours and raw values of the run's
    class list.
    """
    if config.classes is None and classes != CITYSCAPES:
        config = dataclasses.replace(config, classes=classes.to_dict())
    if resume_from is None:
        if previous_stage is not None:
            init_from = resolve_init_from(config.init_from, Path(config.runs_root), previous_stage, config.source)
            config = dataclasses.replace(config, init_from=str(init_from))
    elif resume_model_config is None and previous_stage is not None and config.init_from:
        if not is_model_folder(Path(config.init_from)):
            raise CicldError(
                f"cannot resume from {resume_from}: an earlier cicld wrote it without its model's config, "
                f"so it needs the model the run started from, {config.init_from}, which is no longer there; "
                "put that folder back to resume"
            )
    if resume_model_config is not None:
        model = CICLD(resume_model_config)
    else:
        torch.manual_seed(config.seed)  # the initial weights of what is new
        model = new_model(config)
    require_crop_to_fit(model, config.crop)
    start = f"the starting model {getattr(config, 'init_from', None)}"  # pretrain-ae's is new: it has them
    where = start if resume_from is None else f"the model of {resume_from}"
    difference = classes.difference(model.config.class_list, "the data's labels", where)
    if difference is not None:
        raise CicldError(f"{difference}: train a model from the start (pretrain-ae) on data of these classes")
    if model.config.class_list != classes:  # the same names: the run's colours and raw values
        model.config = model.config.replace(classes=classes.to_dict())
    return config, model


def require_crop_to_fit(model: CICLD, crop: tuple[int, int] | None) -> None:
    """A line naming ``--crop`` where ``model`` cannot tile it, rather than a tensor shape at the first
    step. (The config checks a crop's range; its fit needs the model, which only the stage builds.)"""
    divisor = model.config.size_divisor
    if crop is not None and (crop[0] % divisor or crop[1] % divisor):
        width, height = (max(divisor, side // divisor * divisor) for side in crop)
        raise CicldError(
            f"--crop {crop[0]}x{crop[1]}: this model needs sides that are multiples of {divisor}, "
            f"e.g. --crop {width}x{height}"
        )
