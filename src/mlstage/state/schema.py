"""Which schema a state DB is at, and whether this mlstage may use it (expand/contract).

The schema changes only through the Alembic revisions in ``migrations/versions``, in one
line. Each revision from 0004 on declares ``compatible_from``: the oldest revision whose
code may still use a DB at this revision. An additive ("expand") revision keeps its
predecessor's value; a breaking ("contract") one sets its own revision. ``migrate`` writes
the DB's revision and that value to the one-row ``schema_compat`` table, in the upgrade's
transaction, so code that does not know a newer revision can still tell whether it may
use it.

Opening a DB (``ensure_usable``, called by ``make_engine``), as this mlstage finds it:
- at this mlstage's head revision: used as it is (one query);
- empty: the schema is created, under a lock;
- behind: a SQLite file (the single-user default) is upgraded; a server DB (PostgreSQL),
  which nodes of several versions may share, is refused in one line: run
  ``mlstage db upgrade``;
- ahead: used when its ``compatible_from`` is a revision this mlstage knows, else refused
  in one line: upgrade mlstage on this node.

``upgrade`` (``mlstage db upgrade``) is the one explicit migration of a server DB, under the
same lock. Upgrade order for users: docs/state-db.md.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import delete, insert, inspect, select, text
from sqlalchemy.engine import Connection, Engine

from mlstage.errors import StateError
from mlstage.sqlite_setup import setup_lock
from mlstage.state.db import sqlite_path, write_engine
from mlstage.state.models import SchemaCompat
from mlstage.state.url import mask_url

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
FIRST_REVISION = "0001"
COMPAT_REVISION = "0004"  # the first revision with a schema_compat table
# Any constant works; it only has to be the same in every mlstage process.
_PG_MIGRATION_LOCK = 0x6D6C7374  # "mlst"
UPGRADE_HINT = (
    "run 'mlstage db upgrade' once, with this mlstage version, then roll it out to the "
    "other nodes, as docs/state-db.md says"
)
NODE_HINT = "upgrade mlstage on this node"

SchemaState = Literal["current", "empty", "behind", "unversioned", "ahead", "incompatible"]


# -- revisions --------------------------------------------------------------------------
def _alembic_config(connection: Connection | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def _script() -> Any:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config())


@functools.cache
def known_revisions() -> tuple[str, ...]:
    """Every schema revision this mlstage knows, oldest first."""
    return tuple(reversed([r.revision for r in _script().walk_revisions()]))


def head_revision() -> str:
    """The newest schema revision this mlstage knows."""
    return known_revisions()[-1]


def compatible_from(revision: str) -> str:
    """The oldest revision whose code may use a DB at ``revision`` (which this code knows).

    A revision that declares nothing counts as breaking: only its own code may use it.
    """
    module = _script().get_revision(revision).module
    return str(getattr(module, "compatible_from", revision))


def current_revision(conn: Connection) -> str | None:
    """The revision a DB is at; None for an empty DB or one made before migrations."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


# -- status -----------------------------------------------------------------------------
@dataclass(frozen=True)
class SchemaStatus:
    """Where a state DB's schema is, next to this mlstage's (what ``mlstage db status`` shows).

    ``state``: current (at this mlstage's head), empty, behind, unversioned (tables made
    before migrations existed), ahead (newer, and declared usable by this mlstage), or
    incompatible (newer, and not).
    """

    url: str
    server: bool
    revision: str | None
    compatible_from: str | None
    head: str
    state: SchemaState

    @property
    def usable(self) -> bool:
        """Whether opening the DB works on this node (creating or upgrading what it may)."""
        if self.state in ("behind", "unversioned"):
            return not self.server
        return self.state != "incompatible"

    def error(self) -> StateError | None:
        """The one-line error that stops this mlstage using the DB as it is, or None."""
        at = f"state DB {self.url} is at schema revision {self.revision}"
        if self.state == "behind":
            return StateError(f"{at}, older than this mlstage's {self.head}", hint=UPGRADE_HINT)
        if self.state == "unversioned":
            return StateError(
                f"state DB {self.url} was made before schema revisions existed; this mlstage "
                f"is at {self.head}",
                hint=UPGRADE_HINT,
            )
        if self.state != "incompatible":
            return None
        if self.compatible_from is None:
            return StateError(
                f"{at}, newer than this mlstage's {self.head}, and says no older revision "
                "may use it",
                hint=NODE_HINT,
            )
        return StateError(
            f"{at}, which needs mlstage at schema revision {self.compatible_from} or newer; "
            f"this mlstage is at {self.head}",
            hint=NODE_HINT,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (what ``mlstage db status --json`` prints)."""
        return {**asdict(self), "usable": self.usable}


def _compat_row(conn: Connection, revision: str) -> str | None:
    """``compatible_from`` of the DB, when its row describes ``revision``.

    A row about another revision was left by a change made outside ``migrate``: it says
    nothing about this one.
    """
    if not inspect(conn).has_table(SchemaCompat.__tablename__):
        return None
    row = conn.execute(select(SchemaCompat.revision, SchemaCompat.compatible_from)).first()
    return row.compatible_from if row is not None and row.revision == revision else None


def _status(conn: Connection, engine: Engine) -> SchemaStatus:
    revision = current_revision(conn)
    head, known = head_revision(), known_revisions()
    compat = _compat_row(conn, revision) if revision is not None else None
    state: SchemaState
    if revision == head:
        state = "current"
    elif revision is None:
        state = "unversioned" if inspect(conn).has_table("datasets") else "empty"
    elif revision in known:
        state = "behind"
    else:
        state = "ahead" if compat in known else "incompatible"
    return SchemaStatus(
        url=mask_url(engine.url),
        server=engine.dialect.name != "sqlite",
        revision=revision,
        compatible_from=compat,
        head=head,
        state=state,
    )


def read_status(engine: Engine) -> SchemaStatus:
    """Where the DB behind ``engine`` is, read in one snapshot (never half an upgrade)."""
    with engine.connect() as conn:
        if engine.dialect.name != "sqlite":
            conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            return _status(conn, engine)


# -- opening and upgrading --------------------------------------------------------------
def ensure_usable(engine: Engine) -> None:
    """Make sure this mlstage may use the DB behind ``engine``; one StateError line if not.

    Creates the schema in an empty DB and upgrades a SQLite file; never upgrades a server
    DB (see the module docstring). Cheap when the DB is at this mlstage's head: one query.
    """
    with engine.connect() as conn:
        if current_revision(conn) == head_revision():
            return
    status = read_status(engine)
    auto = not status.server and status.state in ("behind", "unversioned")
    if status.state == "empty" or auto:
        migrate(engine, create_only=status.server)
        status = read_status(engine)
    error = status.error()
    if error is not None:
        raise error


def upgrade(engine: Engine) -> tuple[SchemaStatus, SchemaStatus]:
    """Upgrade the DB to this mlstage's head (``mlstage db upgrade``): (before, after).

    A DB already ahead is left alone (StateError when this mlstage may not use it).
    """
    before = read_status(engine)
    if before.state in ("ahead", "incompatible"):
        error = before.error()
        if error is not None:
            raise error
        return before, before
    migrate(engine)
    return before, read_status(engine)


def _record_compat(conn: Connection) -> None:
    """Write the DB's revision and its ``compatible_from`` to schema_compat."""
    revision, known = current_revision(conn), known_revisions()
    if revision not in known or known.index(revision) < known.index(COMPAT_REVISION):
        return
    conn.execute(delete(SchemaCompat))
    conn.execute(
        insert(SchemaCompat).values(
            id=1, revision=revision, compatible_from=compatible_from(revision)
        )
    )


def migrate(engine: Engine, revision: str = "head", *, create_only: bool = False) -> None:
    """Upgrade the schema to ``revision`` (default head), keeping the data.

    Serialised across processes (a file lock next to a SQLite DB, ``pg_advisory_xact_lock``
    on PostgreSQL); cheap when the DB is already at head. ``create_only``: only create the
    schema of a DB that is still empty once the lock is held (another node may have created
    it, at its own revision, meanwhile). A DB made before migrations existed (tables, no
    alembic_version) is stamped at revision 0001 and upgraded from there.
    """
    from alembic import command

    if revision == "head":
        with engine.connect() as conn:
            if current_revision(conn) == head_revision():
                return
    path = sqlite_path(engine.url) if engine.dialect.name == "sqlite" else None
    lock = setup_lock(path) if path is not None else contextlib.nullcontext()
    with lock, write_engine(engine).begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
        found = current_revision(conn)
        made_before_migrations = found is None and inspect(conn).has_table("datasets")
        if create_only and (found is not None or made_before_migrations):
            return
        if found is not None and found not in known_revisions():
            raise StateError(
                f"state DB {mask_url(engine.url)} is at schema revision {found}, newer than "
                f"this mlstage's {head_revision()}: this mlstage cannot migrate it",
                hint=NODE_HINT,
            )
        cfg = _alembic_config(conn)
        if made_before_migrations:
            command.stamp(cfg, FIRST_REVISION)
        command.upgrade(cfg, revision)
        _record_compat(conn)
