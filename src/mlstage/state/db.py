"""The state DB engine: SQLite by default (WAL, busy timeout), PostgreSQL by URL.

``make_engine`` also brings the schema to the head Alembic revision, once, under a lock
(a file lock next to a SQLite DB, ``pg_advisory_xact_lock`` on PostgreSQL), so many processes
opening the same DB at once never race a migration. A DB made before migrations existed
(tables, no alembic_version) is stamped at revision 0001 and upgraded from there.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import StaticPool
from sqlmodel import create_engine

from mlstage.errors import StateError
from mlstage.redact import MASK, is_secret_name
from mlstage.sqlite_setup import setup_lock, use_wal

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
FIRST_REVISION = "0001"
# Any constant works; it only has to be the same in every mlstage process.
_PG_MIGRATION_LOCK = 0x6D6C7374  # "mlst"
WRITE_OPTION = "mlstage_write"
_WRITABLE_HINT = "set MLSTAGE_STATE_URL or MLSTAGE_HOME to a writable place"
_URL_HINT = "e.g. sqlite:////path/state.db or postgresql+psycopg://user@host:5432/db"


def _mask_query(url: str) -> str:
    """``url`` with the values of secret-looking query keys (``?password=``) masked."""
    base, sep, query = url.partition("?")
    if not sep:
        return url
    pairs = parse_qsl(query, keep_blank_values=True)
    return f"{base}?" + urlencode(
        [(k, MASK if is_secret_name(k) else v) for k, v in pairs], safe="*"
    )


def mask_url(url: str | URL) -> str:
    """``url`` with any password replaced by ***, for messages and logs."""
    try:
        return _mask_query(make_url(url).render_as_string(hide_password=True))
    except ArgumentError:
        text_url = str(url)
        if "@" not in text_url:
            return text_url
        scheme, sep, _ = text_url.partition("://")
        prefix = f"{scheme}{sep}" if sep else ""
        return _mask_query(f"{prefix}***@{text_url.rsplit('@', 1)[-1]}")
    except Exception:  # noqa: BLE001 - a message helper must never fail
        return "<unparseable URL>"


def first_line(exc: BaseException) -> str:
    """The driver's own first line for a DB error, without SQLAlchemy's decorations."""
    orig = getattr(exc, "orig", None) or exc
    lines = [ln.strip() for ln in str(orig).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(orig).__name__


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # The driver's own transaction handling is off; the "begin" hook below starts them.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # a no-op once use_wal has converted the file
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    # A write transaction takes the write lock up front (waiting up to busy_timeout), so a
    # read-then-write never fails with SQLITE_BUSY when another process wrote in between.
    immediate = conn.get_execution_options().get(WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _sqlite_path(url: URL) -> Path | None:
    db = url.database
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db).expanduser()


def make_engine(url: str, *, upgrade: bool = True) -> Engine:
    """An engine for ``url`` with the schema at head; StateError (URL masked) when unusable.

    ``upgrade=False`` skips the migration (for tests that build an old schema on purpose).
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StateError(f"not a database URL: {mask_url(url)}", hint=_URL_HINT) from exc
    try:
        if parsed.drivername.startswith("sqlite"):
            engine = _sqlite_engine(parsed)
        else:
            engine = _server_engine(parsed)
    except NoSuchModuleError as exc:
        raise StateError(
            f"unknown database kind {parsed.drivername!r} in {mask_url(parsed)}", hint=_URL_HINT
        ) from exc
    except ModuleNotFoundError as exc:
        raise StateError(
            f"no driver for {mask_url(parsed)}: {exc}",
            hint="for PostgreSQL: pip install 'mlstage[postgres]' and use postgresql+psycopg://",
        ) from exc
    if upgrade:
        try:
            migrate(engine)
        except DBAPIError as exc:
            engine.dispose()
            raise StateError(
                f"cannot use state DB {mask_url(parsed)}: {first_line(exc)}",
                hint="check MLSTAGE_STATE_URL (host, port, user, database) and that the "
                "server is up",
            ) from exc
    return engine


def _sqlite_engine(url: URL) -> Engine:
    path = _sqlite_path(url)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(
                f"cannot create the folder of state DB {mask_url(url)}: {exc}",
                hint=_WRITABLE_HINT,
            ) from exc
        try:
            use_wal(path)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(
                f"cannot use state DB {mask_url(url)}: {exc}", hint=_WRITABLE_HINT
            ) from exc
    kwargs: dict[str, Any] = {
        "connect_args": {"timeout": 60, "check_same_thread": False},
    }
    if path is None and not (url.database or "").startswith("file:"):
        kwargs["poolclass"] = StaticPool  # one in-memory DB, not one per connection
    engine = create_engine(url, **kwargs)
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _server_engine(url: URL) -> Engine:
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = 10
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def write_engine(engine: Engine) -> Engine:
    """The same engine, with SQLite write transactions taking the write lock up front."""
    return engine.execution_options(**{WRITE_OPTION: True})


# -- migrations -------------------------------------------------------------------------
def _alembic_config(connection: Connection | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def known_revisions() -> tuple[str, ...]:
    """Every schema revision this mlstage knows, oldest first."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config())
    return tuple(reversed([r.revision for r in script.walk_revisions()]))


def head_revision() -> str:
    """The newest schema revision this mlstage knows."""
    return known_revisions()[-1]


def _check_known(revision: str | None, url: URL) -> None:
    if revision is not None and revision not in known_revisions():
        raise StateError(
            f"state DB {mask_url(url)} is at schema revision {revision}, newer than this "
            f"mlstage knows ({head_revision()})",
            hint="upgrade mlstage here to the version that wrote it",
        )


def current_revision(conn: Connection) -> str | None:
    """The revision a DB is at; None for an empty DB or one made before migrations."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema to ``revision`` (default head), keeping the data.

    Cheap when the DB is already there (one query); otherwise serialised across processes.
    """
    from alembic import command

    if revision == "head":
        with engine.connect() as conn:
            found = current_revision(conn)
        if found == head_revision():
            return
        _check_known(found, engine.url)
    path = _sqlite_path(engine.url) if engine.dialect.name == "sqlite" else None
    lock = setup_lock(path) if path is not None else contextlib.nullcontext()
    with lock, write_engine(engine).begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
        cfg = _alembic_config(conn)
        found = current_revision(conn)
        _check_known(found, engine.url)
        if found is None and inspect(conn).has_table("datasets"):
            command.stamp(cfg, FIRST_REVISION)  # made by create_all before migrations
        command.upgrade(cfg, revision)
