"""Run folders: where each training stage writes, and how folders in them are replaced atomically.

::

    runs/
      pretrain-ae/toy-20261124-211500/      one run: config.json, log.csv, checkpoints/, final/
      pretrain-ldm/toy-20261124-213000/
      adapt/toy-gta5-20261124-220000/
      latest -> adapt/toy-gta5-20261124-220000/final   the newest finished run (evaluate/predict default)

A run is *finished* when it has ``final/`` (the exported model: ``config.json`` + safetensors),
written atomically at the end of training. An unfinished run with checkpoints can be resumed.
What a path given to a command names (a model folder, a run, a checkpoint), and the newest
finished or unfinished run, is decided in :mod:`cicld.training.locate`.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import json
import os
import shutil
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout

from cicld.errors import CicldError
from cicld.files import atomic_write

RUNS_ROOT = Path("runs")
STAGES = ("pretrain-ae", "pretrain-ldm", "adapt")
RUN_CONFIG = "config.json"
FINAL = "final"
LOCK_FILE = ".lock"


def new_run_dir(runs_root: Path, stage: str, tag: str) -> Path:
    """A fresh run folder ``runs/<stage>/<tag>-<time>``, ``-2``, ``-3``... appended when taken.

    Created exclusively (``mkdir`` fails if the folder exists), so that two runs started in the
    same second, even in two processes at once, never share a folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    parent = Path(runs_root) / stage
    parent.mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        candidate = parent / (f"{tag}-{stamp}" if n == 1 else f"{tag}-{stamp}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise AssertionError("unreachable")


class RunLock:
    """An exclusive lock on a run while one process trains it.

    ``<run>/.lock`` is filelock's lock file: an operating-system lock (``flock`` on POSIX, ``msvcrt``
    on Windows) that the system releases when the process ends however it ends (kill -9
    included), so a lock left by a dead process is simply taken over. ``<run>/.lock.pid`` says
    which process holds it, for the message that refuses a second one, and goes on release. The
    empty lock file stays: deleting it would let a process that opened it just before lock a file
    no longer there while a third locks the new one.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.pid_path = self.path.with_name(LOCK_FILE + ".pid")
        self._lock = FileLock(self.path, timeout=0)

    def acquire(self) -> RunLock:
        try:
            self._lock.acquire()
        except Timeout:
            try:
                holder = self.pid_path.read_text().strip() or "unknown"
            except OSError:
                holder = "unknown"
            raise CicldError(
                f"{self.path.parent} is being trained by another process (pid {holder}); "
                "wait for it to end or stop it, then resume"
            ) from None
        except OSError as exc:
            raise CicldError(f"cannot lock {self.path}: {exc.strerror or exc}") from None
        atomic_write(self.pid_path, f"{os.getpid()}\n")
        return self

    def release(self) -> None:
        if self._lock.is_locked:
            self.pid_path.unlink(missing_ok=True)
            self._lock.release()


def read_run_config(run_dir: Path) -> dict:
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise CicldError(f"{run_dir} is not a cicld run (no {RUN_CONFIG})")
    return read_json(path)


def read_json(path: Path):
    """The content of the JSON file ``path``; a one-line error if it is missing, unreadable or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, NotADirectoryError):
        raise CicldError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CicldError(f"{path} is not valid JSON ({exc})") from None
    except OSError as exc:
        raise CicldError(f"cannot read {path}: {exc.strerror or exc}") from None


def stage_runs(runs_root: Path, stage: str) -> list[Path]:
    """All runs of a stage, newest first (by folder time stamp, then modification time)."""
    folder = Path(runs_root) / stage
    if not folder.is_dir():
        return []
    runs = [p for p in folder.iterdir() if p.is_dir() and (p / RUN_CONFIG).is_file()]
    return sorted(runs, key=lambda p: ((p / RUN_CONFIG).stat().st_mtime, p.name), reverse=True)


def runs_root_of(run_dir: Path, stage: str) -> Path | None:
    """The runs folder that the ``stage`` run ``run_dir`` sits in now (``<root>/<stage>/<run>``),
    wherever it was started (its config's ``runs_root``): a moved or copied run's ``latest`` is
    the one of the folder it was moved or copied to. None for a run outside a stage folder."""
    run_dir = Path(run_dir)
    return run_dir.parent.parent if run_dir.parent.name == stage else None


def mark_latest(runs_root: Path, final_dir: Path) -> Path:
    """Point ``runs/latest`` at ``final_dir`` (atomically: a relative symlink renamed into place)."""
    runs_root = Path(runs_root)
    link = runs_root / "latest"
    # A link, not a file, so not cicld.files.atomic_write; renamed into place all the same.
    temporary = runs_root / f".latest-{os.getpid()}.tmp"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(os.path.relpath(Path(final_dir).resolve(), runs_root.resolve()))
    os.replace(temporary, link)
    return link


def replace_directory(new: Path, target: Path) -> None:
    """Move the complete folder ``new`` to ``target``, replacing what is there, such that ``target``
    is never missing once it existed (``final/``, a checkpoint written again).

    Where the system swaps two folders in one step (Linux), that is all there is. Elsewhere the old
    folder is renamed aside to ``.<name>.old`` first; should a crash come between the two renames,
    :func:`recover_replaced` (run before the next write) puts it back.

    The files inside are written with :func:`cicld.files.atomic_write`; this is its counterpart
    for folders, which ``os.replace`` cannot rename over a folder that is not empty.
    """
    new, target = Path(new), Path(target)
    if target.exists() and _exchange(new, target):
        shutil.rmtree(new)  # it holds the old folder now
        return
    aside = target.with_name(f".{target.name}.old")
    if target.exists():
        shutil.rmtree(aside, ignore_errors=True)  # a stale one: target is there
        os.replace(target, aside)
    os.replace(new, target)
    shutil.rmtree(aside, ignore_errors=True)


def recover_replaced(parent: Path) -> None:
    """Finish what a crash inside :func:`replace_directory` left in ``parent``: an aside folder goes
    back where its folder is missing, and is deleted where the new one made it into place."""
    for aside in Path(parent).glob(".*.old"):
        target = aside.with_name(aside.name[1 : -len(".old")])
        if target.exists():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(aside, target)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library without it
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # an old kernel or a file system without it
        return False
    raise OSError(code, os.strerror(code), str(second))
