"""The state DB engine: SQLite by default (WAL, busy timeout), PostgreSQL by URL.

``make_engine`` reads the URL strictly (``mlstage.state.url``: a malformed one is one
StateError line, masked) and, unless told not to, makes sure this mlstage may use the schema
(``mlstage.state.schema.ensure_usable``): it creates the schema in an empty DB and upgrades
a SQLite file, but never upgrades a server DB that nodes of several versions may share; that
is ``mlstage db upgrade``'s job. Driver errors become one StateError line without secrets.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import StaticPool
from sqlmodel import create_engine

from mlstage.errors import StateError
from mlstage.sqlite_setup import use_wal
from mlstage.state.url import URL_HINT, mask_url, parse_state_url, without_secrets

__all__ = ["first_line", "make_engine", "mapped_errors", "mask_url", "sqlite_path", "write_engine"]

WRITE_OPTION = "mlstage_write"
_WRITABLE_HINT = "set MLSTAGE_STATE_URL or MLSTAGE_HOME to a writable place"
_SERVER_HINT = "check MLSTAGE_STATE_URL (host, port, user, database) and that the server is up"


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


def sqlite_path(url: URL) -> Path | None:
    """The file of a SQLite URL; None for an in-memory DB or a ``file:`` URI."""
    db = url.database
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db).expanduser()


@contextmanager
def mapped_errors(url: URL, hint: str = _SERVER_HINT) -> Iterator[None]:
    """Driver errors inside become one StateError line naming the masked URL, no secret."""
    try:
        yield
    except DBAPIError as exc:
        raise StateError(
            f"cannot use state DB {mask_url(url)}: {without_secrets(first_line(exc), url)}",
            hint=hint,
        ) from exc


def make_engine(url: str | SecretStr, *, schema: bool = True) -> Engine:
    """An engine for ``url`` whose schema this mlstage may use; StateError (one line) if not.

    The schema is created in an empty DB; a SQLite file behind this mlstage is upgraded; a
    server DB is never upgraded here (``mlstage db upgrade``). ``schema=False`` gives the
    bare engine: for ``mlstage db`` and for tests that build an old schema on purpose.
    """
    parsed = parse_state_url(url.get_secret_value() if isinstance(url, SecretStr) else url)
    try:
        if parsed.drivername.startswith("sqlite"):
            engine = _sqlite_engine(parsed)
        else:
            engine = _server_engine(parsed)
    except NoSuchModuleError as exc:
        raise StateError(
            f"unknown database kind {parsed.drivername!r} in {mask_url(parsed)}", hint=URL_HINT
        ) from exc
    except ModuleNotFoundError as exc:
        raise StateError(
            f"no driver for {mask_url(parsed)}: {exc}",
            hint="for PostgreSQL: pip install 'mlstage[postgres]' and use postgresql+psycopg://",
        ) from exc
    except (ArgumentError, TypeError, ValueError) as exc:  # an option the driver does not take
        raise StateError(
            f"the driver refused the state DB URL {mask_url(parsed)} ({type(exc).__name__})",
            hint=URL_HINT,
        ) from exc
    if schema:
        from mlstage.state.schema import ensure_usable  # schema builds on these engines

        try:
            with mapped_errors(parsed):
                ensure_usable(engine)
        except BaseException:
            engine.dispose()
            raise
    return engine


def _sqlite_engine(url: URL) -> Engine:
    path = sqlite_path(url)
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
