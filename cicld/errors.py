"""Errors a user can cause and fix.

Anything raised as :class:`CicldError` is shown by the CLI as one line on stderr with a non-zero
exit code, never as a traceback. Everything else is a bug in cicld and keeps its traceback.
"""


class CicldError(Exception):
    """A mistake in the user's input, files or flags, explained in one line."""

    exit_code = 2

    def __init__(self, message: str):
        # One line, always: a multi-line message would read like a traceback.
        super().__init__(" ".join(_unwrap_worker_message(str(message)).split()))


def _unwrap_worker_message(message: str) -> str:
    """The original message of an error that torch carried out of a DataLoader worker.

    torch re-raises a worker's exception as ``type(error)(text)``, where ``text`` is "Caught
    DataError in DataLoader worker process 0." followed by the worker's whole traceback, whose last
    line is ``cicld.errors.DataError: <the message>``. That message is all the user needs: the
    same line as with ``--num-workers 0``.
    """
    first, _, rest = message.partition("\n")
    if not (first.startswith("Caught ") and " in " in first and rest.startswith("Original Traceback")):
        return message
    name = first[len("Caught ") :].split(" ", 1)[0]
    last = rest.rstrip().splitlines()[-1]
    _, found, original = last.partition(f"{name}: ")
    return original if found else message


def with_article(noun: str) -> str:
    """``noun`` after its indefinite article, for messages: "an adapt run", "a pretrain-ae run"."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


class DataError(CicldError):
    """A dataset folder or file that is missing, corrupt, or not what it claims to be."""


class PartialFailure(CicldError):
    """Some items of a batch job failed (and were listed) while the rest were done."""

    exit_code = 1


class Interrupted(CicldError):
    """Ctrl-C: what was finished is kept; the message says how to go on."""

    exit_code = 130
