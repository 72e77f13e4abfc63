"""``mlstage db``: the state DB's schema, shown and upgraded explicitly.

    mlstage db status     the DB's schema revision, this mlstage's, and whether they work together
    mlstage db upgrade    migrate the DB to this mlstage's revision (once per fleet upgrade)

Opening a server DB (PostgreSQL) never migrates it, so that upgrading one node does not lock
out the others; ``upgrade`` is the one step that does (order: docs/state-db.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer

from mlstage.cli.output import emit_json

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from mlstage.state.schema import SchemaStatus

app = typer.Typer(no_args_is_help=True, help="The state DB's schema: status and upgrade.")

JSON = typer.Option(False, "--json", help="Print JSON.")

_SAYS = {
    "current": "yes: at this mlstage's revision",
    "empty": "yes: empty, the schema is created on first use",
    "behind": "no: older than this mlstage; run 'mlstage db upgrade'",
    "unversioned": "no: made before schema revisions; run 'mlstage db upgrade'",
    "ahead": "yes: newer, and declared usable by this mlstage's revision",
    "incompatible": "no: newer, and needs a newer mlstage on this node",
}


@contextmanager
def _engine() -> Iterator[Engine]:
    """The bare engine of the configured state DB (no schema step), disposed after."""
    from mlstage.settings import get_settings
    from mlstage.state.db import make_engine

    engine = make_engine(get_settings().resolved_state_url, schema=False)
    try:
        yield engine
    finally:
        engine.dispose()


def _compatibility(st: SchemaStatus) -> str:
    if st.server or st.state not in ("behind", "unversioned"):
        return _SAYS[st.state]
    return "yes: a SQLite file behind this mlstage, upgraded on first use"


@app.command("status")
def status(as_json: bool = JSON) -> None:
    """The DB's schema revision, this mlstage's, and whether this node can use the DB.

    Exit status 1 when it cannot (the line says what to do).
    """
    from mlstage.state.db import mapped_errors
    from mlstage.state.schema import read_status

    with _engine() as engine, mapped_errors(engine.url):
        st = read_status(engine)
    if as_json:
        emit_json(st.to_dict())
    else:
        compat = f" (usable from {st.compatible_from})" if st.compatible_from else ""
        typer.echo(f"state DB:      {st.url}")
        typer.echo(f"DB revision:   {st.revision or '-'}{compat}")
        typer.echo(f"this mlstage:  {st.head}")
        typer.echo(f"compatible:    {_compatibility(st)}")
    if not st.usable:
        raise typer.Exit(1)


@app.command("upgrade")
def upgrade() -> None:
    """Migrate the state DB to this mlstage's schema revision, under a lock.

    Run it once, with the new mlstage version, before rolling that version out; nodes still
    on the older version keep working when the new revision declares them compatible.
    """
    from mlstage.state.db import mapped_errors
    from mlstage.state.schema import upgrade as upgrade_schema

    with _engine() as engine, mapped_errors(engine.url):
        before, after = upgrade_schema(engine)
    if before.state == "ahead":
        typer.echo(
            f"{after.url}: at schema revision {after.revision}, newer than this mlstage's "
            f"{after.head}; nothing to do"
        )
    elif before.state == "empty":
        typer.echo(f"{after.url}: created the schema at revision {after.revision}")
    elif before.revision == after.revision:
        typer.echo(f"{after.url}: already at schema revision {after.revision}")
    else:
        typer.echo(f"{after.url}: schema revision {before.revision or '-'} -> {after.revision}")
