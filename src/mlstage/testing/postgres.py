"""A throwaway PostgreSQL database on the machine's server (127.0.0.1:5432, trust auth).

    with throwaway_database() as url:   # postgresql+psycopg://postgres@127.0.0.1:5432/mlstage_test_<hex>
        ...

The database is created on entry and dropped (connections forced out) on exit. Tests call
``check_postgres()`` first and skip with its reason only when no server answers; with
MLSTAGE_REQUIRE_POSTGRES=1 (CI) a missing server fails the test instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

ADMIN_DSN_ENV = "MLSTAGE_TEST_POSTGRES_DSN"
REQUIRE_ENV = "MLSTAGE_REQUIRE_POSTGRES"
DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def admin_dsn() -> str:
    """libpq DSN of the maintenance DB used to create and drop test databases."""
    return os.environ.get(ADMIN_DSN_ENV, DEFAULT_ADMIN_DSN)


def postgres_unavailable() -> str | None:
    """None when a PostgreSQL server answers at ``admin_dsn()``; else why not (a skip reason)."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'mlstage[postgres]')"
    try:
        with psycopg.connect(admin_dsn(), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"no PostgreSQL server answers at {admin_dsn()}: {first}"
    return None


def check_postgres() -> str | None:
    """``postgres_unavailable()`` for a test: a missing server fails it under MLSTAGE_REQUIRE_POSTGRES=1.

    CI sets that variable, so a run without PostgreSQL cannot pass by skipping its tests.
    """
    reason = postgres_unavailable()
    if reason is not None and os.environ.get(REQUIRE_ENV) == "1":
        import pytest

        pytest.fail(f"{REQUIRE_ENV}=1 but {reason}")
    return reason


@contextmanager
def throwaway_database(prefix: str = "mlstage_test_", *, driver: str = "psycopg") -> Iterator[str]:
    """Create a fresh database, yield its SQLAlchemy URL, drop it after.

    ``driver`` names the SQLAlchemy dialect's driver: ``psycopg`` for the state DB,
    ``asyncpg`` for a Prefect server's own database.
    """
    import psycopg
    from psycopg import sql

    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn(), autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    info = psycopg.conninfo.conninfo_to_dict(admin_dsn())
    user = info.get("user", "postgres")
    password = f":{info['password']}" if info.get("password") else ""
    host = info.get("host", "127.0.0.1")
    port = info.get("port", "5432")
    try:
        yield f"postgresql+{driver}://{user}{password}@{host}:{port}/{name}"
    finally:
        with psycopg.connect(admin_dsn(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
