"""The state DB engine: SQLite by default (WAL, busy timeout), PostgreSQL by URL."""

from __future__ import annotations

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlmodel import SQLModel, create_engine

from mlstage.errors import StateError


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@")[-1] if "@" in url else url


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``, with the schema brought up to date. StateError names the URL."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StateError(
            f"not a database URL: {mask_url(url)}",
            hint="e.g. sqlite:///path/state.db or postgresql+psycopg://user@host/db",
        ) from exc
    if parsed.drivername.startswith("sqlite"):
        if parsed.database and parsed.database != ":memory:":
            from pathlib import Path

            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        try:
            engine = create_engine(url, pool_pre_ping=True)
        except Exception as exc:
            raise StateError(
                f"cannot use state DB {mask_url(url)}: {exc}",
                hint="is the driver installed? pip install 'mlstage[postgres]'",
            ) from exc
    try:
        migrate(engine)
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise StateError(
            f"cannot reach state DB {mask_url(url)}: {reason}",
            hint="check MLSTAGE_STATE_URL and that the server is up",
        ) from exc
    return engine


def migrate(engine: Engine) -> None:
    """Bring the schema up to date."""
    from mlstage.state import models  # noqa: F401  (registers the tables)

    SQLModel.metadata.create_all(engine)
