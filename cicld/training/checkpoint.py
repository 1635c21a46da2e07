"""Atomic, pruned training checkpoints on top of Accelerate's ``save_state``.

A checkpoint is ``<run>/checkpoints/step-00001000/``: what ``Accelerator.save_state`` writes
(model weights as safetensors, optimizer, scheduler, RNG states), ``model_config.json`` (the
trained model's config, as ``save_pretrained`` writes it: a resumed run builds its model from
it, so a checkpoint needs nothing outside its run) and ``trainer_state.json`` (the step and
anything else the loop needs to continue). It is written into a hidden temporary
folder and renamed into place only when complete, so a kill during a write never breaks the
newest good checkpoint; unfinished temporaries are ignored and cleaned up by the next save.
Checkpoints written again or pruned never leave a half-deleted folder that looks complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from cicld.errors import CicldError
from cicld.files import atomic_write
from cicld.models.config import CICLDConfig
from cicld.training.runs import recover_replaced, replace_directory

_CHECKPOINT = re.compile(r"^step-(\d{8})$")
STATE_FILE = "trainer_state.json"
#: The trained model's config.json, under another name: the checkpoint's model.safetensors is
#: Accelerate's (the objective's weights), so the folder must not look like a model folder.
MODEL_CONFIG_FILE = "model_config.json"


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
    accelerator, run_dir: Path, step: int, state: dict, keep: int = 2, model_config: CICLDConfig | None = None
) -> Path:
    """Save the full training state at ``step`` atomically; keep the newest ``keep`` checkpoints.
    ``model_config``, the trained model's config, is saved with it (:func:`checkpoint_model_config`).

    Every process must call this (Accelerate saves per-process RNG states); only the main
    process renames and prunes.
    """
    root = checkpoint_root(run_dir)
    final = root / f"step-{step:08d}"
    temporary = root / f".step-{step:08d}.tmp"
    if accelerator.is_main_process:
        if root.is_dir():  # what a crash in an earlier save left behind
            recover_replaced(root)
            for stale in root.glob(".step-*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)
        temporary.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if model_config is not None:
            atomic_write(temporary / MODEL_CONFIG_FILE, json.dumps(model_config.to_dict(), indent=2) + "\n")
        atomic_write(temporary / STATE_FILE, json.dumps({"step": step, **state}, indent=2))
        _fsync_dir(temporary)
        replace_directory(temporary, final)  # written again after resuming an earlier checkpoint
        _fsync_dir(root)
        for old in _outdated(list_checkpoints(run_dir), step, keep):
            _delete(old)
    accelerator.wait_for_everyone()
    return final


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


def load_checkpoint(accelerator, checkpoint: Path) -> dict:
    """Restore the state saved by :func:`save_checkpoint`; returns its ``trainer_state.json``."""
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
    try:
        accelerator.load_state(str(checkpoint))
    except Exception as exc:  # torch, safetensors and pickle each raise their own kinds for a damaged file
        raise CicldError(
            f"cannot resume from {checkpoint}: the checkpoint is corrupt or does not fit this run "
            f"({type(exc).__name__}: {_first_line(exc)}); resume an earlier checkpoint of the run by naming its folder"
        ) from None
    return state


def checkpoint_model_config(checkpoint: Path) -> CICLDConfig | None:
    """The config of the model a checkpoint was saved from (switches applied), to build the model
    that its weights are loaded into; None for a checkpoint written before checkpoints held it."""
    path = Path(checkpoint) / MODEL_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return CICLDConfig.from_dict(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, ValueError, CicldError) as exc:
        raise CicldError(f"cannot resume from {checkpoint}: {MODEL_CONFIG_FILE} is corrupt ({_first_line(exc)})") from None


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
