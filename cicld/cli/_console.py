"""Shared terminal output: consoles, the progress bar and number formatting."""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console()
error_console = Console(stderr=True, highlight=False, soft_wrap=True)


def print_error(message: str) -> None:
    # soft_wrap keeps it one line however narrow the terminal; markup off so paths print as-is.
    error_console.print("error: " + message, markup=False)


def require_writable_folder(path: Path, what: str) -> None:
    """Refuse, before any work is done, an output folder that is a file or cannot be created or
    written: a one-line CicldError. Nothing is created."""
    from cicld.errors import CicldError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CicldError(f"{what} {path} is a file, not a folder")
    _require_creatable(path, path, what)


def require_writable_file(path: Path, what: str) -> None:
    """Refuse, before any work is done, an output file that is a folder or cannot be written."""
    from cicld.errors import CicldError

    path = Path(path)
    if path.is_dir():
        raise CicldError(f"{what} {path} is a folder; give a file name")
    _require_creatable(path.parent, path, what)


def _require_creatable(folder: Path, shown: Path, what: str) -> None:
    from cicld.errors import CicldError

    existing = folder
    while not existing.exists() and existing != existing.parent:  # where mkdir would start
        existing = existing.parent
    if not existing.is_dir():
        raise CicldError(f"{what} {shown} cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CicldError(f"{what} {shown} cannot be written: no permission to write in {existing}")


def progress_bar(*extra_columns) -> Progress:
    """A rich progress bar with count, rate-friendly columns and ETA; hidden when not a terminal."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def human_count(n: int) -> str:
    return f"{n:,}"


def parse_size(text: str | None, flag: str) -> tuple[int, int] | None:
    """``"512x256"`` -> (512, 256), (width, height); ``"none"`` or None (not given) -> None;
    anything else is a one-line CicldError. The range is checked where the value is used
    (:func:`cicld.sizes.check_size`, a config's ``validate``), wherever it came from."""
    from cicld.errors import CicldError

    if text is None or text.lower() == "none":
        return None
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise CicldError(f"{flag} must look like WIDTHxHEIGHT (e.g. 512x256) or none, got {text!r}") from None
    return width, height
