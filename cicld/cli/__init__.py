"""The ``cicld`` command line: parses flags, calls the core package, prints tables and progress.

Every command lives in a module of this package and only translates between the terminal and
the core API. Errors a user can fix (:class:`cicld.errors.CicldError` and bad flags) become one
line on stderr and a non-zero exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import typer

from cicld import __version__
from cicld.cli._console import print_error
from cicld.errors import CicldError

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
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Unsupervised domain-adaptive semantic segmentation with a conditional latent diffusion model (CICLD)."""


# Commands register themselves on `app` when their module is imported.
from cicld.cli import demo, evaluate, predict, prepare, train  # noqa: E402,F401


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns (and exits with) the process exit code."""
    command = typer.main.get_command(app)
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
    except KeyboardInterrupt:
        print_error("interrupted; finished files are kept and a re-run resumes where this one stopped")
        sys.exit(130)
    except CicldError as exc:
        print_error(str(exc))
        sys.exit(exc.exit_code)
    code = result if isinstance(result, int) else 0
    sys.exit(code)
