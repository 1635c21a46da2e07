"""``cicld pretrain-ae``, ``cicld pretrain-ldm`` and ``cicld adapt``.

Their flags are generated from the stage config dataclasses (``cicld/training/config.py``), so a
new config field is a new flag with the same name and help, and the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import typer
from rich.progress import TextColumn

from cicld.cli import app
from cicld.cli._console import console, parse_size, progress_bar
from cicld.errors import CicldError, Interrupted
from cicld.training.config import (
    AdaptConfig,
    AutoencoderConfig,
    CommonConfig,
    LatentDiffusionConfig,
    make_config,
    read_config_file,
)
from cicld.training.runs import RUN_CONFIG


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _option_type(annotation) -> type:
    """The CLI type of a config field: sizes are typed as WIDTHxHEIGHT strings, the class list as
    the name of its file."""
    options = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    kind = typing.get_origin(options[0]) or options[0]
    return str if kind in (tuple, dict) else kind


def _config_parameters(config_class: type[CommonConfig]) -> list[inspect.Parameter]:
    hints = typing.get_type_hints(config_class)
    parameters = []
    for field in dataclasses.fields(config_class):
        kind = _option_type(hints[field.name])
        default = field.default
        shown = "none" if default is None else ("x".join(map(str, default)) if isinstance(default, tuple) else default)
        help_text = field.metadata.get("help", "")
        if "[default:" not in help_text:
            help_text += f" [default: {shown}]"
        flag = _flag(field.name)
        declarations = (f"{flag}/--no-{field.name.replace('_', '-')}",) if kind is bool else (flag,)
        option = typer.Option(None, *declarations, help=help_text, show_default=False)
        parameters.append(
            inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=Optional[kind])
        )
    return parameters


def _register(name: str, config_class: type[CommonConfig], train: Callable, summary: str) -> None:
    """Add a command whose flags are the fields of ``config_class``, plus ``--config`` and ``--resume``."""

    def command(context: typer.Context, **values) -> None:
        resume, config_file = values.pop("resume"), values.pop("config")
        # Only the flags given on the command line count: they override --config and the recipe.
        values = {k: v for k, v in values.items() if context.get_parameter_source(k).name == "COMMANDLINE"}
        if resume is not None:
            ignored = [_flag(k) for k in values if k not in ("source", "runs_root")] + (
                ["--config"] if config_file else []
            )
            if ignored:
                # The saved config wins on resume; a flag that would be dropped silently is an error.
                raise CicldError(
                    f"--resume continues a run with its saved settings; drop {', '.join(ignored)} (or start a new run)"
                )
        for key in ("crop", "source_resize", "target_resize"):
            if key in values:
                values[key] = parse_size(values[key], _flag(key))
        if "classes" in values:  # the run's config records the list itself, not where it was read
            from cicld.data.labels import ClassList

            values["classes"] = ClassList.read(values["classes"]).to_dict()
        if config_file is not None:
            if "recipe" in values:
                raise CicldError("--config gives every setting, so no recipe fills any: drop --recipe (or --config)")
            values = {**read_config_file(config_file, config_class.stage), **values}
        config = make_config(config_class.stage, **values)
        if resume == "latest" and "source" not in values:
            # `--resume latest` alone continues the stage's newest resumable run whatever its source,
            # as the Ctrl-C hint prints it; --source narrows it to that source's runs.
            from cicld.training.locate import latest_resumable_run

            resume = str(latest_resumable_run(Path(config.runs_root), config.stage))
        _run_stage(train, config, resume)

    config_file = inspect.Parameter(
        "config",
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(
            None,
            help=(
                f"start a new run with the settings of a saved run config (a run's {RUN_CONFIG}); the flags "
                "you give override it"
            ),
            show_default=False,
        ),
        annotation=Optional[Path],
    )
    resume = inspect.Parameter(
        "resume",
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(
            None,
            help="continue a run: 'latest' (the newest unfinished run of this stage that has a checkpoint, of "
            "--source if given, else of any source), a run (from its newest checkpoint) or a checkpoint folder (from "
            "exactly that step; the run's later checkpoints are then replaced)",
        ),
        annotation=Optional[str],
    )
    context = inspect.Parameter("context", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
    command.__signature__ = inspect.Signature([context, *_config_parameters(config_class), config_file, resume])
    command.__doc__ = summary
    app.command(name)(command)


def _run_stage(train: Callable, config: CommonConfig, resume: str | None) -> None:
    started = time.perf_counter()
    # With several processes (torchrun, accelerate launch: they set RANK) the first one shows the
    # progress and the summary; errors print from whichever process meets them.
    shows_progress = os.environ.get("RANK", "0") == "0"
    # The bar appears with the first step, so that set-up errors print alone.
    progress = progress_bar(TextColumn("{task.fields[status]}"))
    task = progress.add_task(config.stage, total=config.steps, status="")
    first = []

    def on_step(step: int, row: dict) -> None:
        if not shows_progress:
            return
        if not first:
            first.append((step - 1, time.perf_counter()))
            progress.start()
        first_step, first_time = first[0]
        rate = (step - first_step) / max(time.perf_counter() - first_time, 1e-9)
        progress.update(task, completed=step, status=f"{loss_summary(row)} lr={row.get('lr', 0):.1e} {rate:.2f} it/s")

    from cicld.training.runlog import loss_summary
    from cicld.training.stops import TrainingInterrupted

    try:
        result = train(config, resume=resume, on_step=on_step)
    except TrainingInterrupted as exc:
        raise Interrupted(exc.message) from None
    finally:
        if first:
            progress.stop()
    if not shows_progress:
        return
    console.print(f"[bold]{config.stage}[/] finished in {time.perf_counter() - started:.0f} s: run {result.run_dir}")
    for note in result.notes:
        console.print(f"note: {note}", markup=False)
    if result.scores is not None:
        name, value = next(iter(result.scores.means().items()))
        console.print(f"target val {name} {100 * value:.2f} (model: {result.final})")
    else:
        console.print(f"model: {result.final}")


def _lazy(module: str, function: str) -> Callable:
    # Import training code (and torch's heavy parts) only when a training command actually runs.
    def call(*args, **kwargs):
        import importlib

        return getattr(importlib.import_module(module), function)(*args, **kwargs)

    return call


_register(
    "pretrain-ae",
    AutoencoderConfig,
    _lazy("cicld.training.pretrain_ae", "pretrain_ae"),
    "Stage 1: pre-train the latent autoencoder on source and target images.\n\n"
    "Example: `cicld pretrain-ae --source gta5` (toy pair: `cicld pretrain-ae --source toy`).",
)
_register(
    "pretrain-ldm",
    LatentDiffusionConfig,
    _lazy("cicld.training.pretrain_ldm", "pretrain_ldm"),
    "Stage 2: train the latent diffusion UNet, decoder, f_cls and f_mask on the labelled source.\n\n"
    "Starts from the newest finished pretrain-ae run of the same --source (or --init-from).",
)
_register(
    "adapt",
    AdaptConfig,
    _lazy("cicld.training.adapt", "adapt"),
    "Stage 3: unsupervised domain adaptation (EMA pseudo-labels, ClassMix, 3-class adversarial).\n\n"
    "Example: `cicld adapt --source synthia`. Starts from the newest finished pretrain-ldm run of the\n"
    "same --source; `--method source-only` and `--method oracle` (on the target's own labels) give the bounds.\n\n"
    "Your own data: `cicld adapt --source pairs --source-root data/mine --target-root photos/` (docs/own-data.md).",
)
