"""Errors a user can cause and fix.

Anything raised as :class:`CicldError` is shown by the CLI as one line on stderr with a non-zero
exit code, never as a traceback. Everything else is a bug in cicld and keeps its traceback.
"""


class CicldError(Exception):
    """A mistake in the user's input, files or flags, explained in one line."""

    exit_code = 2

    def __init__(self, message: str):
        # One line, always: a multi-line message would read like a traceback.
        super().__init__(" ".join(str(message).split()))


class DataError(CicldError):
    """A dataset folder or file that is missing, corrupt, or not what it claims to be."""


class PartialFailure(CicldError):
    """Some items of a batch job failed (and were listed) while the rest were done."""

    exit_code = 1
