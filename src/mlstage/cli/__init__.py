"""The ``mlstage`` command line. Errors become one line on stderr and a non-zero exit."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from typing import NoReturn

import typer

from mlstage.cli import cache_cmd, db_cmd, lineage_cmd, notify_cmd, stage_cmd

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Stage ML datasets fast, verified and versioned.",
)
app.command("stage")(stage_cmd.stage)
app.add_typer(lineage_cmd.app, name="lineage")
app.add_typer(cache_cmd.app, name="cache")
app.command("notify")(notify_cmd.notify)
app.add_typer(db_cmd.app, name="db")


# Set by SIGTERM and Ctrl-C: the exit then waits for no worker thread (see _exit).
_interrupted = threading.Event()


def _terminated(signum: int, _frame: object) -> None:
    # SIGTERM (a pod eviction, `kill`) unwinds like an error: half-made --to folders go away
    _interrupted.set()
    raise SystemExit(128 + signum)


def _ctrl_c(_signum: int, _frame: object) -> None:
    # Python's own SIGINT handler, remembered: typer turns the KeyboardInterrupt into exit code
    # 130, returned like any other, so _exit could not tell it was an interruption otherwise
    _interrupted.set()
    raise KeyboardInterrupt


def main() -> None:
    """Entry point of the ``mlstage`` console script."""
    _exit(_run())


def _run() -> int:
    """Run the command line; its exit code (errors were printed as one line on stderr)."""
    from mlstage.errors import ConfigError, MlstageError

    signal.signal(signal.SIGTERM, _terminated)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _ctrl_c)
    try:
        rc = app(standalone_mode=False)  # typer.Exit(code) comes back as a return value here
    except MlstageError as exc:
        typer.echo(f"mlstage: error: {exc}", err=True)
        return 2 if isinstance(exc, ConfigError) else 1
    except typer.Abort:  # Ctrl-C (typer turns KeyboardInterrupt into Abort)
        _interrupted.set()
        return 130
    except KeyboardInterrupt:  # Ctrl-C outside a command's body
        _interrupted.set()
        return 130
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        if code is None or isinstance(code, int):
            return code or 0
        typer.echo(code, err=True)  # sys.exit("message"), as a normal exit would print it
        return 1
    except Exception as exc:
        # usage errors: click's ClickException, which typer 0.2x vendors as typer._click's
        exit_code = getattr(exc, "exit_code", None)
        if callable(getattr(exc, "show", None)) and isinstance(exit_code, int):
            exc.show()  # type: ignore[attr-defined]
            return exit_code
        raise
    return rc if isinstance(rc, int) else 0


def _exit(code: int) -> NoReturn:
    """Exit with ``code`` without the interpreter's teardown, once nothing is left running.

    Tearing down every module's objects one by one (pydantic's schemas, the ORM's) took
    0.10-0.15 s of each run on a 2-core VM: as long as staging 100 MB. The operating system
    frees the memory at once. atexit handlers still run and stdout and stderr are flushed, as
    at a normal exit; with any non-daemon thread alive the exit is the normal one, which waits
    for it, unless the run was interrupted (SIGTERM, Ctrl-C): then threads blocked in a read
    of a silent endpoint would hold the exit for the read timeout, and their work is
    abandoned anyway (completed parts are journalled, temporary files are the cache's).
    """
    if not _interrupted.is_set() and any(
        t.is_alive() and not t.daemon
        for t in threading.enumerate()
        if t is not threading.main_thread()
    ):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more to say
            stream.flush()
    os._exit(code)
