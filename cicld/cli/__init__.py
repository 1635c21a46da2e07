"""The ``cicld`` command line: parses flags, calls the core package, prints tables and progress.

Every command lives in a module of this package and only translates between the terminal and
the core API. Errors a user can fix (:class:`cicld.errors.CicldError` and bad flags) become one
line on stderr and a non-zero exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys

import click
import typer

from cicld import __version__
from cicld.cli._console import print_error
from cicld.errors import CicldError, Interrupted

app = typer.Typer(
    name="cicld",
    help="Unsupervised domain-adaptive semantic segmentation with a conditional latent diffusion model (CICLD).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts contain [default: ...] and paths; print them as written
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"cicld {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Unsupervised domain-adaptive semantic segmentation with a conditional latent diffusion model (CICLD)."""


# Commands register themselves on `app` when their module is imported.
from cicld.cli import demo, evaluate, predict, prepare, train  # noqa: E402,F401

_INTERRUPTED = "interrupted; finished files are kept and a re-run resumes where this one stopped"


def _reporting_interrupts(command: click.Command) -> click.Command:
    """``command`` (and its subcommands) with Ctrl-C turned into :class:`Interrupted`.

    Typer turns a KeyboardInterrupt inside a command into a silent exit code 130; an Interrupted
    (a CicldError) passes through it, so that :func:`main` prints its line. A command may raise
    its own Interrupted with a more useful message (the training stages: how to resume)."""
    for sub in getattr(command, "commands", {}).values():
        _reporting_interrupts(sub)
    callback = command.callback
    if callback is not None and not getattr(callback, "_reports_interrupts", False):

        @functools.wraps(callback)
        def wrapped(*args, **kwargs):
            try:
                return callback(*args, **kwargs)
            except KeyboardInterrupt:
                raise Interrupted(_INTERRUPTED) from None

        wrapped._reports_interrupts = True
        command.callback = wrapped
    return command


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns (and exits with) the process exit code."""
    command = _reporting_interrupts(typer.main.get_command(app))
    try:
        result = command.main(args=argv, prog_name="cicld", standalone_mode=False)
    except typer.TyperException as exc:  # bad flags or values: Typer's usage errors
        context = getattr(exc, "ctx", None)
        hint = f" (see `{context.command_path} --help`)" if context is not None else ""
        print_error(f"{exc.format_message()}{hint}")
        sys.exit(getattr(exc, "exit_code", 2))
    except typer.Abort:
        print_error("aborted")
        sys.exit(130)
    except KeyboardInterrupt:  # outside any command (while parsing flags)
        print_error(_INTERRUPTED)
        sys.exit(130)
    except CicldError as exc:
        print_error(str(exc))
        sys.exit(exc.exit_code)
    code = result if isinstance(result, int) else 0
    sys.exit(code)
