"""Fixtures every test folder shares: isolated homes, real S3 endpoints on 127.0.0.1."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Prefect must never touch the developer's own profile or reach the network: its home (and
# the ephemeral API's database) is a folder of this test session, set before Prefect is
# imported and whatever the Makefile exported.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="mlstage-tests-"))
atexit.register(shutil.rmtree, _SESSION_DIR, ignore_errors=True)
os.environ["PREFECT_HOME"] = str(_SESSION_DIR / "prefect")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from mlstage.testing.postgres import check_postgres, throwaway_database  # noqa: E402
from mlstage.testing.prefect_server import PrefectServer, prefect_server  # noqa: E402
from mlstage.testing.rclone import rclone_server  # noqa: E402
from mlstage.testing.s3 import S3Endpoint, moto_server  # noqa: E402


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop Prefect's ephemeral API (in-process flow tests start one), quietly: left to its
    own exit hook, it logs "Stopping temporary server" to a stream pytest has closed."""
    import sys

    if "prefect.server.api.server" in sys.modules:
        from prefect.logging.handlers import APILogWorker
        from prefect.logging.loggers import disable_logger
        from prefect.server.api.server import SubprocessASGIServer

        APILogWorker.drain_all(timeout=5)  # the flows' last logs reach the API before it stops
        with disable_logger("prefect"):
            for server in list(SubprocessASGIServer._instances.values()):
                server.stop()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh MLSTAGE_HOME with the embedded defaults (SQLite, folders)."""
    h = tmp_path / "mlstage-home"
    monkeypatch.setenv("MLSTAGE_HOME", str(h))
    for var in (
        "MLSTAGE_STATE_URL",
        "MLSTAGE_SHARED",
        "MLSTAGE_CACHE_DIR",
        "MLSTAGE_CACHE_LIMIT_BYTES",
    ):
        monkeypatch.delenv(var, raising=False)
    return h


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[S3Endpoint]:
    """A real S3 endpoint over HTTP (moto server mode) for the whole session."""
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def rclone_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """A second, independent S3 server (``rclone serve s3``) for the whole session."""
    with rclone_server(tmp_path_factory.mktemp("rclone") / "root") as endpoint:
        yield endpoint


@pytest.fixture(autouse=True)
def _fresh_range_memory() -> None:
    """What an endpoint did with ranged GETs is remembered per process (mlstage.store.ranges);
    each test starts without it (servers and proxies reuse ports across tests)."""
    from mlstage.store import ranges

    ranges.forget()


@pytest.fixture
def s3_env(s3_endpoint: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> S3Endpoint:
    """The standard AWS environment pointed at the test endpoint."""
    for k, v in s3_endpoint.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return s3_endpoint


@pytest.fixture
def bucket(s3_env: S3Endpoint) -> str:
    """A new, empty bucket with a valid S3 name."""
    name = f"mlstage-test-{uuid.uuid4().hex[:12]}"
    s3_env.client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def prefect_server_session(
    tmp_path_factory: pytest.TempPathFactory, prefect_database: Callable[[], str | None]
) -> Iterator[PrefectServer]:
    """One real `prefect server start` on 127.0.0.1 for the whole session (~10-15 s to start)."""
    home = tmp_path_factory.mktemp("prefect-home")
    with prefect_server(home, database_url=prefect_database()) as server:
        yield server


@pytest.fixture(scope="session")
def prefect_database() -> Iterator[Callable[[], str | None]]:
    """Makes a throwaway PostgreSQL database for each test Prefect server (dropped at the end).

    A Prefect server on SQLite stalls API calls for seconds under load: a CI run's test
    timed out after 30 s on one. Without PostgreSQL it returns None (the server's SQLite),
    unless MLSTAGE_REQUIRE_POSTGRES=1 (CI), which makes that a failure.
    """
    with contextlib.ExitStack() as databases:

        def make() -> str | None:
            if check_postgres() is None:
                return databases.enter_context(throwaway_database("prefect_", driver="asyncpg"))
            return None

        yield make


@pytest.fixture
def prefect_api(
    prefect_server_session: PrefectServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[PrefectServer]:
    """This test process talks to the session's Prefect server (flows called here report to it)."""
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setenv("PREFECT_API_URL", prefect_server_session.api_url)
    with temporary_settings(updates={PREFECT_API_URL: prefect_server_session.api_url}):
        yield prefect_server_session
        APILogWorker.drain_all(timeout=5)  # the test's logs reach this server while it is up
