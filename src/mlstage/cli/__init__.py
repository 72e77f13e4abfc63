"""The ``mlstage`` command line. Errors become one line on stderr and a non-zero exit."""

from __future__ import annotations

import signal
import sys

import typer

from mlstage.cli import cache_cmd, lineage_cmd, notify_cmd, stage_cmd

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Stage ML datasets fast, verified and versioned.",
)
app.command("stage")(stage_cmd.stage)
app.add_typer(lineage_cmd.app, name="lineage")
app.add_typer(cache_cmd.app, name="cache")
app.command("notify")(notify_cmd.notify)


def _terminated(signum: int, _frame: object) -> None:
    # SIGTERM (a pod eviction, `kill`) unwinds like an error: half-made --to folders go away
    raise SystemExit(128 + signum)


def main() -> None:
    """Entry point of the ``mlstage`` console script."""
    from mlstage.errors import ConfigError, MlstageError

    signal.signal(signal.SIGTERM, _terminated)
    try:
        rc = app(standalone_mode=False)  # typer.Exit(code) comes back as a return value here
    except MlstageError as exc:
        typer.echo(f"mlstage: error: {exc}", err=True)
        sys.exit(2 if isinstance(exc, ConfigError) else 1)
    except typer.Abort:  # Ctrl-C (typer turns KeyboardInterrupt into Abort)
        sys.exit(130)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    if isinstance(rc, int) and rc:
        sys.exit(rc)
