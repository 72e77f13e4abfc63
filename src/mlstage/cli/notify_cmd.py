"""``mlstage notify``: turn S3 event notifications into ``mlstage.dataset.changed`` events.

    mlstage notify body.json            one notification (a file, or - for stdin)
    mlstage notify serve --port 8787    an HTTP receiver: point the bucket's webhook here

Both re-resolve the watched datasets the notification touches and emit the Prefect event
(to PREFECT_API_URL) once a dataset settled on a new version.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

from mlstage.cli.output import emit_json

WATCHLIST_HELP = (
    "Watch list (YAML/JSON); default $MLSTAGE_WATCHLIST or MLSTAGE_HOME/watchlist.yaml."
)


def _setup(watchlist: Path | None):  # type: ignore[no-untyped-def]
    from mlstage.settings import get_settings
    from mlstage.state import StateStore
    from mlstage.watch import Watcher, WatchList, watchlist_path

    wl = WatchList.load(watchlist_path(watchlist))
    return wl, Watcher(StateStore.open(get_settings().resolved_state_url))


def notify(
    body: str = typer.Argument(
        None,
        metavar="FILE|-|serve",
        help="A file holding the notification's JSON body, - for stdin, or serve.",
    ),
    watchlist: Path | None = typer.Option(None, "--watchlist", "-w", help=WATCHLIST_HELP),
    wait: bool = typer.Option(
        True,
        "--wait/--no-wait",
        help="Wait the settle time and look again when the dataset is still changing.",
    ),
    emit: bool = typer.Option(True, "--emit/--no-emit", help="Emit the Prefect events."),
    port: int = typer.Option(8787, help="serve: port to listen on."),
    host: str = typer.Option(
        "127.0.0.1", help="serve: address to bind; 0.0.0.0 to accept remote posts."
    ),
    quiet: float = typer.Option(
        2.0, help="serve: seconds without notifications before a dataset is checked (debounce)."
    ),
) -> None:
    """Handle one S3 event notification body now, or serve an HTTP receiver for them."""
    if body == "serve":
        serve(port=port, host=host, watchlist=watchlist, quiet=quiet)
        return
    from mlstage.errors import ConfigError
    from mlstage.events import emit as emit_events
    from mlstage.notify import handle

    if body is None:
        raise ConfigError("give a notification body file, or - for stdin", hint="or: notify serve")
    try:
        text = sys.stdin.read() if body == "-" else Path(body).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {body}: {exc.strerror}", hint="give a file or -") from exc
    wl, watcher = _setup(watchlist)
    entries, changes, pending = handle(text, wl, watcher, confirm=wait)
    sent = emit_events(c.event(via="notify") for c in changes) if emit else 0
    emit_json(
        {
            "matched": [e.name for e in entries],
            "changed": [
                {"dataset": c.dataset, "old_version": c.old_version, "version": c.new_version}
                for c in changes
            ],
            "settling": pending,
            "events_emitted": sent,
        }
    )


def serve(*, port: int, host: str, watchlist: Path | None, quiet: float) -> None:
    """Receive S3 event notifications over HTTP (POST the body) until interrupted."""
    import threading

    from mlstage.events import emit as emit_events
    from mlstage.notify import Receiver

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    wl, watcher = _setup(watchlist)

    def announce(change) -> None:  # type: ignore[no-untyped-def]
        emit_events([change.event(via="notify")])
        logging.getLogger("mlstage.notify").info(
            "%s changed: %s -> %s", change.dataset, change.old_version, change.new_version
        )

    receiver = Receiver(wl, watcher, announce, host=host, port=port, quiet_seconds=quiet).start()
    typer.echo(f"mlstage notify: listening on http://{host}:{receiver.port}/", err=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        receiver.stop()
