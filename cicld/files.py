"""Writing files: atomically, and with a one-line error when the disk says no.

Every file cicld writes (images, labels, JSON, the CSV log, model weights) goes through
:func:`atomic_write` or :func:`replacing`: the bytes go to a temporary file in the same folder,
which is renamed into place once complete. An interrupted run therefore never leaves a
half-written file that a later run would take for a finished one, and a file that is written
again is always either the old or the new version.

Folders are the exception: a checkpoint or ``final/`` is written as a temporary folder and
swapped into place whole (:func:`cicld.training.runs.replace_directory`), since a folder cannot
be renamed over a full one.

:func:`writing` turns the ``OSError`` of a failed write (a full disk, a read-only folder) into the
one-line :class:`~cicld.errors.CicldError` the command line shows: ``cannot write PATH: REASON``.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from cicld.errors import CicldError


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write, for writers that want a file name
    (``safetensors.torch.save_file``); once the block ends it is renamed to ``path``.

    The temporary file is deleted when the block raises (Ctrl-C included). Folders above
    ``path`` are created. The file gets the permissions ``open()`` would give it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(descriptor)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write(
    path: str | os.PathLike, content: bytes | str | Callable[[BinaryIO], object], *, durable: bool = False
) -> None:
    """Write ``content`` to ``path`` atomically (see the module docstring).

    ``content`` is the bytes, a ``str`` (written as UTF-8), or ``write(handle)``, which writes
    into a binary file handle (``image.save(handle, format="PNG")``). ``durable`` also flushes the
    bytes to the disk before the rename, so that a power cut cannot leave an empty file under the
    name: worth it for a small file that is rewritten (the CSV log), not for thousands of images.
    """
    with replacing(path) as temporary, open(temporary, "wb") as handle:
        if callable(content):
            content(handle)
        else:
            handle.write(content.encode() if isinstance(content, str) else content)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())


def save_tensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (name -> CPU tensor) to the safetensors file ``path``, atomically.

    The one way cicld writes weights: plain data, never a pickle. A failed write is the
    ``OSError`` the system gave (safetensors reports it as its own error type, with the system's
    error number in the text), so that :func:`writing` turns a full disk into one line.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    with replacing(path) as temporary:
        try:
            save_file(tensors, str(temporary), metadata=metadata)
        except SafetensorError as exc:
            code = re.search(r"\(os error (\d+)\)", str(exc))
            if code is None:
                raise
            number = int(code.group(1))
            raise OSError(number, os.strerror(number), str(path)) from None


def is_disk_full(exc: OSError) -> bool:
    """Whether a failed write failed for want of space (or of quota)."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_space_note(exc: OSError, what: str, size: int, folder: str | os.PathLike) -> str:
    """For a write ``exc`` that failed on a full disk: `` (WHAT takes about X MB; Y MB free)``, the
    room it needs (``size`` bytes) beside the room left where ``folder`` is; "" for other failures."""
    if not is_disk_full(exc):
        return ""
    return f" ({what} takes about {_megabytes(size)}; {_megabytes(shutil.disk_usage(folder).free)} free)"


def tensor_bytes(tensors: Iterable) -> int:
    """The bytes that ``tensors`` take in a safetensors file (give or take its header)."""
    return sum(t.numel() * t.element_size() for t in tensors)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


@contextmanager
def writing(target: str | os.PathLike, error: type[CicldError] = CicldError) -> Iterator[None]:
    """Turn an ``OSError`` inside the block into ``error("cannot write TARGET: REASON")``.

    ``target`` is the file, or what is written in words (``"the toy pair to data/toy"``). The
    reason is the system's short message ("Permission denied", "No space left on device").
    """
    try:
        yield
    except OSError as exc:
        raise error(f"cannot write {target}: {exc.strerror or exc}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
