"""The ``frcnn`` Typer app: global options, command registration and the error convention.

Errors are handled in one place, :class:`FrcnnGroup.invoke`: a :class:`FrcnnError` (bad input)
prints one red line and exits 2; any other exception is a bug, printed as a one-line summary
with a hint to rerun with ``--debug``, exit 1. ``--debug`` shows the full traceback instead.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import traceback
from typing import Annotated, Any

import typer

from frcnn_cli import __version__
from frcnn_cli.cli import console, options
from frcnn_cli.errors import FrcnnError
from frcnn_cli.interrupts import Terminated, terminate_as_interrupt

# Each module registers its commands on ``app`` with ``register(app)``.
COMMAND_MODULES = ["recipe", "data", "anchors", "evaluate", "predict", "train", "export",
                   "benchmark"]


class FrcnnGroup(options.Group):
    """Top-level group that turns library errors into the CLI's exit codes."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except FrcnnError as e:
            _fail(e)
        except KeyboardInterrupt as stop:  # Terminated (SIGTERM) too
            failing = _error_stopped(stop)
            if failing is not None:  # the command was already failing: say why
                _fail(failing)
            terminated = isinstance(stop, Terminated)
            console.error("terminated (SIGTERM)" if terminated else "interrupted")
            raise typer.Exit(128 + signal.SIGTERM if terminated else 130) from None
        except BrokenPipeError:
            # The reader went away (`frcnn ... | head`): stop quietly, as a Unix filter does,
            # and point stdout at /dev/null so the final flush at exit cannot fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(1) from None
        except Exception as e:  # a bug, not bad input
            if console.state.debug:
                console.err_console.print(traceback.format_exc(), markup=False)
            first = str(e).splitlines()[0] if str(e) else ""
            console.error(f"unexpected {type(e).__name__}: {first} "
                          "(rerun with --debug for the traceback)")
            raise typer.Exit(1) from None


def _fail(error: FrcnnError) -> None:
    if console.state.debug:
        console.err_console.print(traceback.format_exc(), markup=False)
    console.error(str(error))
    raise typer.Exit(error.exit_code) from None


def _error_stopped(stop: BaseException) -> FrcnnError | None:
    """The error a command was already stopping with when Ctrl-C or SIGTERM arrived (as
    torchrun's SIGTERM follows a lost process), found in the stop's context."""
    seen = stop.__context__
    while seen is not None and not isinstance(seen, FrcnnError):
        seen = seen.__context__
    return seen


app = options.Typer(
    name="frcnn",
    cls=FrcnnGroup,
    help="Train, evaluate and export Faster R-CNN detectors (Ren et al., NIPS 2015).",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"frcnn {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q",
                                        help="Print only results and errors.")] = False,
) -> None:
    """Train, evaluate and export Faster R-CNN detectors (Ren et al., NIPS 2015).

    Start with [bold]frcnn data synth demo/ --train 200 --val 50[/] and
    [bold]frcnn train --recipe shapes --train demo/train.json --val demo/val.json --out runs/a[/].
    """
    console.setup_logging(quiet=quiet, debug=debug)
    terminate_as_interrupt()  # a scheduler's SIGTERM stops a command as Ctrl-C does


for _name in COMMAND_MODULES:
    importlib.import_module(f"frcnn_cli.cli.{_name}").register(app)


def main() -> None:
    """Console-script entry point."""
    app()
