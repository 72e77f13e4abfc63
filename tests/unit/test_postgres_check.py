"""CI cannot pass by skipping the PostgreSQL tests: check_postgres fails them when it is required."""

from __future__ import annotations

import pytest

from mlstage.testing.net import free_port
from mlstage.testing.postgres import check_postgres


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"  # nothing listens there
    monkeypatch.setenv("MLSTAGE_TEST_POSTGRES_DSN", dsn)


def test_a_missing_server_is_a_reason_to_skip(
    no_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLSTAGE_REQUIRE_POSTGRES", raising=False)
    assert (check_postgres() or "").startswith("no PostgreSQL server answers at ")


def test_a_missing_server_fails_the_test_when_postgres_is_required(
    no_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLSTAGE_REQUIRE_POSTGRES", "1")
    with pytest.raises(pytest.fail.Exception, match="MLSTAGE_REQUIRE_POSTGRES=1 but no PostgreSQL"):
        check_postgres()
