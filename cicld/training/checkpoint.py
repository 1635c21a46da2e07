"""Atomic, pruned training checkpoints in safetensors and JSON only: loading one never runs code.

A checkpoint is ``<run>/checkpoints/step-00001000/``::

    model.safetensors       the objective's weights (the network it trains, and what it adds)
    ema_model.safetensors   adapt's EMA model (one file per module of the TrainingState)
    optimizer.safetensors   the optimizer's tensors (AdamW's moments and step counts) ...
    optimizer.json          ... and the rest of its state (param groups), naming those tensors
    scaler.json             the fp16 loss scaler's state (--mixed-precision fp16 only)
    model_config.json       the trained model's config, as save_pretrained writes it
    trainer_state.json      the step, and anything else the loop needs to continue

Not Accelerate's ``save_state``: it pickles what is registered with it and the random-number
states, and unpickling a file someone hands you can run any code. Nothing here is a pickle, and
no random-number state is needed: every step seeds the generators from (seed, step, rank)
(:func:`cicld.training.schedules.seed_step`), so a resumed run replays the same draws.
``model_config.json`` lets a resumed run build its model from the checkpoint alone; its name is
not ``config.json`` so that the folder does not look like a model folder.

A checkpoint is written into a hidden temporary folder and renamed into place only when
complete, so a kill during a write never breaks the newest good checkpoint; a failed write (a
full disk) removes the temporary folder and says how much space a checkpoint takes. Unfinished
temporaries are ignored and cleaned up by the next save. Checkpoints written again or pruned
never leave a half-deleted folder that looks complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cicld.distributed import everywhere
from cicld.errors import CicldError
from cicld.files import atomic_write, disk_space_note, save_tensors, tensor_bytes
from cicld.models.config import CICLDConfig
from cicld.models.state import load_state_dict_strict
from cicld.training.runs import recover_replaced, replace_directory

_CHECKPOINT = re.compile(r"^step-(\d{8})$")
STATE_FILE = "trainer_state.json"
#: The trained model's config.json, under another name: the checkpoint's model.safetensors is
#: the objective's weights, so the folder must not look like a model folder.
MODEL_CONFIG_FILE = "model_config.json"
OPTIMIZER = "optimizer"
SCALER_FILE = "scaler.json"
#: What Accelerate's save_state wrote, which earlier cicld versions used: pickles, never read.
_PICKLED = ("optimizer.bin", "scheduler.bin", "scaler.pt", "custom_checkpoint_*.pkl", "random_states_*.pkl")


@dataclass
class TrainingState:
    """What a checkpoint restores besides ``trainer_state.json``: the modules by file name
    (``{"model": objective, "ema_model": ema_model}``: ``model.safetensors``, ...), the
    optimizer and, with fp16, the loss scaler. Wrapped modules (DDP) are saved unwrapped."""

    modules: dict[str, nn.Module] = field(default_factory=dict)
    optimizer: torch.optim.Optimizer | None = None
    scaler: Any = None  # a torch.amp.GradScaler: --mixed-precision fp16


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if is_checkpoint(p)]
    return sorted(found, key=_step)


def is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a complete checkpoint folder (of whatever run)."""
    path = Path(path)
    return bool(_CHECKPOINT.match(path.name)) and (path / STATE_FILE).is_file()


def latest_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(
    accelerator,
    run_dir: Path,
    step: int,
    training: TrainingState,
    state: dict | None = None,
    keep: int = 2,
    model_config: CICLDConfig | None = None,
) -> Path:
    """Save ``training`` at ``step`` atomically, with ``state`` in ``trainer_state.json``; keep
    the newest ``keep`` checkpoints. ``model_config``, the trained model's config, is saved with
    it (:func:`checkpoint_model_config`).

    Every process must call this; the main process writes (the processes hold the same weights),
    renames and prunes. A failed write is a one-line :class:`CicldError` in every process, with
    the temporary folder removed and the earlier checkpoints untouched.
    """
    root = checkpoint_root(run_dir)
    final = root / f"step-{step:08d}"
    error = None
    if accelerator.is_main_process:
        if root.is_dir():  # what a crash in an earlier save left behind
            recover_replaced(root)
            for stale in root.glob(".step-*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)
        files = _checkpoint_files(accelerator, training, {"step": step, **(state or {})}, model_config)
        try:
            _write_folder(root, final, files)
        except OSError as exc:
            error = _write_error(final, files, exc)
    if not everywhere(accelerator, error is None):
        raise error or CicldError(f"checkpoint {final.name} could not be written by the main process")
    if accelerator.is_main_process:
        for old in _outdated(list_checkpoints(run_dir), step, keep):
            _delete(old)
    accelerator.wait_for_everyone()
    return final


def _checkpoint_files(accelerator, training: TrainingState, state: dict, model_config: CICLDConfig | None) -> dict:
    """File name -> content: a dict of CPU tensors (a safetensors file) or a JSON-able value.
    ``trainer_state.json`` comes last: it is what makes a folder a checkpoint."""
    files: dict[str, Any] = {}
    for name, module in training.modules.items():
        files[f"{name}.safetensors"] = _exclusive(accelerator.unwrap_model(module).state_dict())
    if training.optimizer is not None:
        tensors: dict[str, torch.Tensor] = {}
        files[f"{OPTIMIZER}.json"] = _encode(training.optimizer.state_dict(), tensors)
        files[f"{OPTIMIZER}.safetensors"] = tensors
    if training.scaler is not None:
        files[SCALER_FILE] = training.scaler.state_dict()
    if model_config is not None:
        files[MODEL_CONFIG_FILE] = model_config.to_dict()
    files[STATE_FILE] = state
    return files


def _write_folder(root: Path, final: Path, files: dict) -> None:
    """Write ``files`` into a temporary folder beside ``final``, then swap it into place. A write
    that fails removes the temporary folder."""
    temporary = root / f".{final.name}.tmp"
    temporary.mkdir(parents=True, exist_ok=True)
    try:
        for name, content in files.items():
            if name.endswith(".safetensors"):
                save_tensors(temporary / name, content)
            else:
                atomic_write(temporary / name, json.dumps(content, indent=2) + "\n")
        _fsync_dir(temporary)
        replace_directory(temporary, final)  # written again after resuming an earlier checkpoint
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _write_error(final: Path, files: dict, exc: OSError) -> CicldError:
    size = tensor_bytes(t for content in files.values() if _is_tensors(content) for t in content.values())
    space = disk_space_note(exc, "a checkpoint", size, final.parent)
    return CicldError(f"cannot write checkpoint {final}: {exc.strerror or exc}{space}")


def _is_tensors(content: Any) -> bool:
    return isinstance(content, dict) and bool(content) and all(isinstance(v, torch.Tensor) for v in content.values())


def _exclusive(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict as CPU tensors that share no memory (safetensors refuses shared tensors)."""
    seen, tensors = set(), {}
    for key, value in state.items():
        tensor = value.detach().cpu().contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        tensors[key] = tensor.clone() if pointer in seen and tensor.numel() else tensor
        seen.add(pointer)
    return tensors


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` (an optimizer's state dict: dicts, lists, tuples, numbers, strings, tensors) as
    JSON, each tensor moved into ``tensors`` under a number and named by it. A dict becomes its
    list of [key, value] pairs, so that integer keys stay integers; a tuple stays a tuple."""
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {"tensor": key}
    if isinstance(value, dict):
        if not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in value):
            raise TypeError(f"cannot save a dict with keys {list(value)[:3]} in a checkpoint")
        return {"dict": [[k, _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot save a {type(value).__name__} in a checkpoint")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`_encode`."""
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if isinstance(value, dict):
        if len(value) != 1:
            raise ValueError(f"unexpected object with keys {sorted(value)[:3]}")
        ((kind, body),) = value.items()
        if kind == "tensor":
            return tensors[body]
        if kind == "tuple":
            return tuple(_decode(v, tensors) for v in body)
        if kind == "dict":
            return {key: _decode(v, tensors) for key, v in body}
        raise ValueError(f"unexpected object kind {kind!r}")
    return value


def _outdated(checkpoints: list[Path], step: int, keep: int) -> list[Path]:
    """What to delete once ``step`` is saved: checkpoints after it (a continuation abandoned by
    resuming an earlier checkpoint: ``--resume latest`` must not pick them up), and all but the
    newest ``keep`` of the rest."""
    later = [c for c in checkpoints if _step(c) > step]
    kept = [c for c in checkpoints if _step(c) <= step]
    return later + (kept[:-keep] if keep > 0 else [])


def _delete(checkpoint: Path) -> None:
    """Hide, then delete: a crash halfway through the deletion never leaves a folder that still
    has its trainer_state.json, and so looks complete, without its weights."""
    hidden = checkpoint.with_name(f".{checkpoint.name}.deleted.tmp")
    os.replace(checkpoint, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


def _step(checkpoint: Path) -> int:
    return int(_CHECKPOINT.match(checkpoint.name).group(1))


def load_checkpoint(accelerator, checkpoint: Path, training: TrainingState) -> dict:
    """Restore ``training`` from the checkpoint :func:`save_checkpoint` wrote; returns its
    ``trainer_state.json``. Only safetensors and JSON files are read: a checkpoint of an earlier
    cicld, which held pickles, is refused in one line without opening them."""
    checkpoint = Path(checkpoint)
    state_file = checkpoint / STATE_FILE
    if not state_file.is_file():
        raise CicldError(f"{checkpoint} is not a complete cicld checkpoint (no {STATE_FILE})")
    try:
        state = json.loads(state_file.read_text())
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step {step!r}")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise CicldError(f"cannot resume from {checkpoint}: {STATE_FILE} is corrupt ({_first_line(exc)})") from None
    pickled = sorted(p.name for pattern in _PICKLED for p in checkpoint.glob(pattern))
    if pickled and not (checkpoint / f"{OPTIMIZER}.safetensors").is_file():
        raise CicldError(
            f"cannot resume from {checkpoint}: an earlier cicld wrote it with pickles ({pickled[0]}), which cicld no "
            "longer loads since a pickle can run code; start the stage again (a finished run's final/ still loads)"
        )
    try:
        for name, module in training.modules.items():
            weights = _read_tensors(checkpoint / f"{name}.safetensors")
            load_state_dict_strict(accelerator.unwrap_model(module), weights, what=f"the weights in {name}.safetensors")
        if training.optimizer is not None:
            tensors = _read_tensors(checkpoint / f"{OPTIMIZER}.safetensors")
            encoded = json.loads((checkpoint / f"{OPTIMIZER}.json").read_text())
            training.optimizer.load_state_dict(_decode(encoded, tensors))
        if training.scaler is not None:
            training.scaler.load_state_dict(json.loads((checkpoint / SCALER_FILE).read_text()))
    except CicldError as exc:
        raise CicldError(f"cannot resume from {checkpoint}: {exc}") from None
    except Exception as exc:  # safetensors, json and torch each raise their own kinds for a damaged file
        raise CicldError(
            f"cannot resume from {checkpoint}: the checkpoint is corrupt or does not fit this run "
            f"({type(exc).__name__}: {_first_line(exc)}); resume an earlier checkpoint of the run by naming its folder"
        ) from None
    return state


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def checkpoint_model_config(checkpoint: Path) -> CICLDConfig | None:
    """The config of the model a checkpoint was saved from (switches applied), to build the model
    that its weights are loaded into; None for a checkpoint written before checkpoints held it."""
    path = Path(checkpoint) / MODEL_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return CICLDConfig.from_dict(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, ValueError, CicldError) as exc:
        raise CicldError(
            f"cannot resume from {checkpoint}: {MODEL_CONFIG_FILE} is corrupt ({_first_line(exc)})"
        ) from None


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fsync_dir(path: Path) -> None:
    # Make the rename itself durable, not just the files (matters on power loss, cheap otherwise).
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
