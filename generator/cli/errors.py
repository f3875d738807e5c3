"""Every error that reaches the command line becomes one line and one exit code.

Exit codes (README, CLI section): 0 success; 2 any error (bad input, refused file, failed run),
printed as one line `error: ...` on stderr; 130 interrupted (Ctrl-C). `--debug` (or
SYNTHGEN_DEBUG=1) adds the traceback. synthgen itself never exits 1.
"""
from __future__ import annotations

import os
import sys
import traceback

import click

from generator.cli.options import reset_logging
from generator.core.errors import SynthgenError, missing_extra
from generator.core.redact import scrub_text

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 2, 130


def one_line(exc: BaseException) -> str:
    """The error as one line, with credentials in URLs scrubbed."""
    if isinstance(exc, click.ClickException):
        text = exc.format_message()
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            text = text.rstrip(".") + f"; see {exc.ctx.command_path} --help"
    elif isinstance(exc, SynthgenError):
        text = str(exc)
    elif isinstance(exc, ModuleNotFoundError) and missing_extra(exc, "this command") is not None:
        text = str(missing_extra(exc, "this command"))
    elif isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
        text += "; check the path and permissions"
    elif isinstance(exc, MemoryError):
        text = "out of memory; lower the counts or the sizes in the spec"
    elif isinstance(exc, RecursionError):
        text = "input nested too deeply; simplify it"
    else:
        text = f"{type(exc).__name__}: {exc}; rerun with --debug for the traceback"
    return scrub_text(" ".join(str(text).split()))


class Group(click.Group):
    """The top-level group: runs a command and turns any exception into `error: ...`, exit 2."""

    debug = bool(os.environ.get("SYNTHGEN_DEBUG"))

    @classmethod
    def set_debug(cls, value: bool) -> None:
        if value:
            cls.debug = True

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        Group.debug = bool(os.environ.get("SYNTHGEN_DEBUG"))  # per invocation; --debug sets it while parsing
        try:
            return self._main(args, prog_name, complete_var, standalone_mode, **extra)
        finally:
            reset_logging()  # the group's --log-level holds for this invocation only

    def _main(self, args, prog_name, complete_var, standalone_mode, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except (KeyboardInterrupt, click.Abort):
            click.echo("error: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except SystemExit:
            raise
        except BaseException as exc:  # noqa: BLE001 - the promise: one line, never a bare traceback
            if Group.debug:
                traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
            click.echo(f"error: {one_line(exc)}", err=True)
            sys.exit(EXIT_ERROR)
        sys.exit(EXIT_OK)
