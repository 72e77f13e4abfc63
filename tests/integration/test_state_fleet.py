"""Upgrading a fleet that shares one PostgreSQL state DB, through the real ``mlstage`` command.

Opening the DB never migrates it; ``mlstage db upgrade`` does, once. A node one schema
revision behind keeps working on a DB upgraded by an additive ("expand") revision, and is
refused in one line by a breaking ("contract") one. The "newer mlstage" is faked in a
throwaway database: its extra column and table, its revision and its schema_compat row.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from mlstage.errors import StateError
from mlstage.state import StateStore, make_engine, migrate
from mlstage.state.schema import current_revision, head_revision, known_revisions
from mlstage.testing.postgres import check_postgres, throwaway_database

pytestmark = pytest.mark.integration
NEXT = "9001"  # the revision of a newer mlstage, unknown to this one


@pytest.fixture
def pg_url() -> Iterator[str]:
    reason = check_postgres()
    if reason:
        pytest.skip(reason)
    with throwaway_database("mlstage_fleet_") as url:
        yield url


def mlstage(*args: str, url: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLSTAGE_HOME": str(home), "MLSTAGE_STATE_URL": url}
    exe = Path(sys.executable).parent / "mlstage"
    return subprocess.run(
        [str(exe), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def one_error_line(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 1, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlstage: error: "), res.stderr
    assert "hint:" in lines[0] and "Traceback" not in res.stderr
    return lines[0]


def revision_of(url: str) -> str | None:
    engine = make_engine(url, schema=False)
    with engine.connect() as conn:
        found = current_revision(conn)
    engine.dispose()
    return found


def newer_mlstage_upgraded(url: str, *, compatible_from: str, row_revision: str = NEXT) -> None:
    """What ``mlstage db upgrade`` of a newer mlstage leaves: a nullable column and a table
    this mlstage does not know, revision NEXT, and the schema_compat row it wrote."""
    StateStore.open(url).close()
    engine = make_engine(url, schema=False)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE benchmark_runs ADD COLUMN gpu_seconds FLOAT"))
        conn.execute(text("CREATE TABLE run_notes (run_id VARCHAR PRIMARY KEY, note VARCHAR)"))
        conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": NEXT})
        conn.execute(
            text("UPDATE schema_compat SET revision = :r, compatible_from = :c"),
            {"r": row_revision, "c": compatible_from},
        )
    engine.dispose()


def record_a_run(url: str) -> str:
    st = StateStore.open(url)
    v, _ = st.record_version("mnist", "1" * 64, "s3://b/mnist/", 3, 100)
    assert v.id is not None
    art = st.record_artifact("art1", v.id, ("shard", "1", "{}"), "/shared/art1", "d", 2, 100)
    rec = st.record_stage(
        art.id,
        hit=False,
        bytes_fetched=100,
        objects_fetched=2,
        first_object_seconds=0.1,
        ready_seconds=0.1,
        node="n",
    )
    run = st.start_run(model="resnet", dataset="mnist", entrypoint="m:f", params={})
    st.record_consumption(run.id, art.id, rec.id)
    st.finish_run(run.id, status="completed", metrics={"acc": 0.5})
    st.close()
    return run.id


def test_opening_never_upgrades_a_server_db_and_db_upgrade_does(pg_url: str, home: Path) -> None:
    behind = known_revisions()[-2]
    engine = make_engine(pg_url, schema=False)
    migrate(engine, behind)  # as the previous mlstage left it
    engine.dispose()

    line = one_error_line(mlstage("lineage", "runs", url=pg_url, home=home))
    assert f"schema revision {behind}, older than this mlstage's {head_revision()}" in line
    assert "run 'mlstage db upgrade'" in line
    assert revision_of(pg_url) == behind  # the older nodes are not locked out

    status = mlstage("db", "status", url=pg_url, home=home)
    assert status.returncode == 1 and f"DB revision:   {behind}" in status.stdout
    assert f"this mlstage:  {head_revision()}" in status.stdout and "no: older" in status.stdout

    up = mlstage("db", "upgrade", url=pg_url, home=home)
    assert up.returncode == 0, up.stderr
    assert f"schema revision {behind} -> {head_revision()}" in up.stdout
    assert revision_of(pg_url) == head_revision()
    again = mlstage("db", "upgrade", url=pg_url, home=home)
    assert again.returncode == 0 and "already at schema revision" in again.stdout

    assert mlstage("lineage", "runs", url=pg_url, home=home).returncode == 0
    status = json.loads(mlstage("db", "status", "--json", url=pg_url, home=home).stdout)
    assert status["state"] == "current" and status["usable"] is True
    assert status["compatible_from"] == head_revision()


def test_a_node_one_revision_behind_keeps_working_after_an_expand(pg_url: str, home: Path) -> None:
    newer_mlstage_upgraded(pg_url, compatible_from=head_revision())

    run_id = record_a_run(pg_url)  # this (older) mlstage records and queries as before
    res = mlstage("lineage", "runs", "--json", url=pg_url, home=home)
    assert res.returncode == 0, res.stderr
    assert [r["run_id"] for r in json.loads(res.stdout)] == [run_id]

    status = mlstage("db", "status", url=pg_url, home=home)
    assert status.returncode == 0, status.stderr
    assert f"DB revision:   {NEXT} (usable from {head_revision()})" in status.stdout
    assert "yes: newer" in status.stdout
    up = mlstage("db", "upgrade", url=pg_url, home=home)
    assert up.returncode == 0 and "nothing to do" in up.stdout
    assert revision_of(pg_url) == NEXT


@pytest.mark.parametrize("row_revision", [NEXT, head_revision()])
def test_a_contract_locks_out_older_nodes_in_one_line(
    pg_url: str, home: Path, row_revision: str
) -> None:
    # compatible_from NEXT: a breaking revision; a row about another revision than the DB's
    # (a change made outside mlstage) says nothing either
    newer_mlstage_upgraded(pg_url, compatible_from=NEXT, row_revision=row_revision)

    line = one_error_line(mlstage("lineage", "runs", url=pg_url, home=home))
    if row_revision == NEXT:
        expect = f"needs mlstage at schema revision {NEXT} or newer; this mlstage is at "
    else:
        expect = f"schema revision {NEXT}, newer than this mlstage's "
    assert expect + head_revision() in line, line
    assert "upgrade mlstage on this node" in line
    status = mlstage("db", "status", url=pg_url, home=home)
    assert status.returncode == 1 and "no: newer" in status.stdout
    assert "upgrade mlstage on this node" in one_error_line(
        mlstage("db", "upgrade", url=pg_url, home=home)
    )
    with pytest.raises(StateError, match=f"schema revision {NEXT}"):
        StateStore.open(pg_url)
    assert revision_of(pg_url) == NEXT
