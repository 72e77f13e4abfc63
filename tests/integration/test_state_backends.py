"""The state DB suite, run on SQLite and on the real PostgreSQL at 127.0.0.1:5432.

Each PostgreSQL test gets its own throwaway database (created and dropped here). The
PostgreSQL half skips, with the reason, only when no server answers; with
MLSTAGE_REQUIRE_POSTGRES=1 it fails instead, so CI cannot pass without running it.
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import MetaData, insert, inspect, select, text
from sqlmodel import Session, SQLModel

from mlstage.errors import ConfigError, StateError
from mlstage.state import StateStore, head_revision, make_engine, migrate
from mlstage.state.models import DatasetVersion, Sweep
from mlstage.state.schema import FIRST_REVISION, current_revision, upgrade
from mlstage.testing.postgres import check_postgres, throwaway_database

pytestmark = pytest.mark.integration

GiB = 1024**3


@pytest.fixture(scope="session")
def pg_unavailable() -> str | None:
    return check_postgres()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty state DB URL on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    reason = request.getfixturevalue("pg_unavailable")
    if reason:
        pytest.skip(reason)
    with throwaway_database() as url:
        yield url


@pytest.fixture
def store(db_url: str) -> Iterator[StateStore]:
    st = StateStore.open(db_url)
    yield st
    st.close()


def record_run(
    st: StateStore,
    *,
    dataset: str = "mnist",
    fingerprint: str = "f1" * 32,
    model: str = "resnet",
    artifact_id: str | None = None,
    hit: bool = False,
    nbytes: int = 1000,
    flow_run_id: str | None = None,
    source_uri: str = "s3://bucket/mnist/",
    params: dict | None = None,
    made_here: bool = False,
) -> str:
    """Resolve -> publish -> stage -> run -> record, as the pipeline does; the run id.
    ``made_here``: staged from this node's own recipe output (nothing from the shared tier)."""
    v, _ = st.record_version(dataset, fingerprint, source_uri, 3, nbytes)
    assert v.id is not None
    art = st.record_artifact(
        artifact_id or f"a-{fingerprint}",
        v.id,
        ("shard", "1", "{}"),
        f"/shared/{fingerprint}",
        "digest",
        2,
        nbytes,
    )
    rec = st.record_stage(
        art.id,
        hit=hit,
        bytes_fetched=0 if hit else nbytes,
        objects_fetched=0 if hit else 2,
        first_object_seconds=None if hit else 0.25,
        ready_seconds=0.5,
        node="node-a",
        bytes_from_shared=0 if made_here else None,
    )
    run = st.start_run(
        model=model,
        dataset=dataset,
        entrypoint="mlstage.examples:fit_and_score",
        params=params or {"lr": 0.1},
        flow_run_id=flow_run_id,
    )
    st.record_consumption(run.id, art.id, rec.id)
    st.finish_run(run.id, status="completed", metrics={"accuracy": 0.9})
    return run.id


# -- lineage ---------------------------------------------------------------------------
def test_every_run_with_what_it_consumed(store: StateStore) -> None:
    r1 = record_run(store, model="resnet", flow_run_id="flow-1")
    r2 = record_run(store, model="vit", hit=True)

    rows = {r.run_id: r for r in store.runs()}
    assert set(rows) == {r1, r2}
    a, b = rows[r1], rows[r2]
    assert (a.model, a.dataset, a.version, a.artifact_id) == (
        "resnet",
        "mnist",
        "f1" * 32,
        "a-" + "f1" * 32,
    )
    assert a.cache_hit is False and a.bytes_fetched == 1000 and a.bytes_from_shared == 1000
    assert b.cache_hit is True and b.bytes_fetched == 0
    assert a.metrics == {"accuracy": 0.9} and a.status == "completed" and a.node == "node-a"
    assert a.first_object_seconds == 0.25 and a.ready_seconds == 0.5

    assert store.run(r1) == a
    assert store.run("flow-1") == a  # by Prefect flow run id
    assert store.run(r1[:12]) == a  # the prefix the table shows
    assert store.run("no-such-run") is None
    record_run(store, model="deit", flow_run_id="flow-1")  # a sweep's inline models share one
    with pytest.raises(ConfigError, match="flow run flow-1 recorded 2 runs"):
        store.run("flow-1")
    assert store.consumed(r1) == [a]
    assert store.runs_by_id([r1, r2, "no-such-run"]) == {r1: a, r2: b}  # one query, exact ids
    assert store.runs_by_id([]) == {}


def test_runs_consuming_a_version_or_an_artifact(store: StateStore) -> None:
    old = record_run(store, fingerprint="a" * 64, artifact_id="art-old")
    new = record_run(store, fingerprint="b" * 64, artifact_id="art-new")
    other = record_run(store, dataset="cifar", fingerprint="a" * 64, artifact_id="art-cifar")

    assert {r.run_id for r in store.runs_consuming(version="a" * 64)} == {old, other}
    assert [r.run_id for r in store.runs_consuming(version="b" * 12)] == [new]
    assert [r.run_id for r in store.runs_consuming(artifact_id="art-new")] == [new]
    assert store.runs_consuming(artifact_id="art-none") == []


def test_stale_runs_follow_the_version_seen_last(store: StateStore) -> None:
    on_v1 = record_run(store, fingerprint="1" * 64)
    assert store.stale_runs() == []

    vit_on_v1 = record_run(store, fingerprint="1" * 64, model="vit")
    on_v2 = record_run(store, fingerprint="2" * 64)  # resnet re-run on v2: current again
    record_run(store, dataset="cifar", fingerprint="c" * 64)  # another dataset, current
    (stale,) = store.stale_runs()
    assert stale.run_id == vit_on_v1 and stale.latest_version == "2" * 64
    # the history view lists every run on a superseded version, re-run or not
    assert [r.run_id for r in store.stale_runs(history=True)] == [on_v1, vit_on_v1]

    # the source goes back to v1: now resnet's latest run, on v2, is the stale one
    store.record_version("mnist", "1" * 64, "s3://bucket/mnist/", 3, 1000)
    assert [r.run_id for r in store.stale_runs("mnist")] == [on_v2]
    assert [r.run_id for r in store.stale_runs("mnist", history=True)] == [on_v2]
    assert store.stale_runs("cifar") == []


def test_each_row_says_where_its_bytes_came_from(store: StateStore) -> None:
    shared = record_run(store, fingerprint="1" * 64)  # fetched from the shared tier
    hit = record_run(store, fingerprint="2" * 64, hit=True)
    made_here = record_run(store, fingerprint="3" * 64, made_here=True)
    rows = {r.run_id: r for r in store.runs()}
    assert rows[shared].data_from == "shared tier" and rows[shared].bytes_from_shared == 1000
    assert rows[hit].data_from == "cache" and rows[hit].bytes_from_cache == 1000
    assert rows[made_here].data_from == "recipe output on this node"
    assert rows[made_here].bytes_from_recipe == 1000 and rows[made_here].bytes_total == 1000
    assert all(r.staged_at for r in rows.values())


def test_a_benchmark_is_a_model_on_a_dataset(store: StateStore) -> None:
    """The same model on two datasets is two benchmarks: re-running it on one leaves the
    other stale; the benchmark's latest run is what counts, whatever its params."""
    record_run(store, fingerprint="1" * 64, params={"lr": 0.1})
    on_cifar = record_run(store, dataset="cifar", fingerprint="c" * 64)
    store.record_version("mnist", "2" * 64, "s3://bucket/mnist/", 3, 1000)
    store.record_version("cifar", "d" * 64, "s3://bucket/cifar/", 3, 1000)
    record_run(store, fingerprint="2" * 64, params={"lr": 0.2})  # mnist re-run: current
    assert [r.run_id for r in store.stale_runs()] == [on_cifar]


def test_version_history(store: StateStore) -> None:
    record_run(store, fingerprint="1" * 64)
    record_run(store, fingerprint="1" * 64, model="vit")
    store.record_version("mnist", "2" * 64, "s3://bucket/mnist/", 4, 2000)

    hist = store.history("mnist")
    assert [(h.version, h.current, h.runs) for h in hist] == [
        ("1" * 64, False, 2),
        ("2" * 64, True, 0),
    ]
    assert [v.fingerprint for v in store.versions("mnist")] == ["1" * 64, "2" * 64]
    assert store.history("unknown") == []


# -- types ------------------------------------------------------------------------------
def test_datetimes_come_back_aware_utc(store: StateStore) -> None:
    record_run(store)
    (v,) = store.versions("mnist")
    assert v.first_seen.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - v.first_seen) < timedelta(minutes=5)

    cest = timezone(timedelta(hours=2))
    moment = datetime(2026, 6, 1, 12, 0, tzinfo=cest)
    with store.session(write=True) as s:
        s.add(Sweep(id="sw", name="tz", started_at=moment))
        s.commit()
    with store.session() as s:
        back = s.get(Sweep, "sw")
        assert back is not None
        assert back.started_at == moment and back.started_at.utcoffset() == timedelta(0)


def test_byte_counts_past_2_gib(store: StateStore) -> None:
    run_id = record_run(store, nbytes=5 * GiB)
    row = store.run(run_id)
    assert row is not None and row.bytes_fetched == 5 * GiB
    assert store.history("mnist")[0].bytes == 5 * GiB


# -- secrets ----------------------------------------------------------------------------
def test_no_secret_reaches_the_db(store: StateStore) -> None:
    secrets = ["hunter2", "AKIAEXAMPLE", "sigvalue", "tok123", "pw-in-spec", "boom-pass"]
    uri = "s3://AKIAEXAMPLE:hunter2@bucket/data?X-Amz-Signature=sigvalue&versionId=7"
    run_id = record_run(
        store,
        source_uri=uri,
        params={"lr": 0.1, "hf_token": "tok123", "nested": {"db_password": "hunter2"}},
    )
    store.start_sweep("s", {"datasets": [{"uri": uri}], "password": "pw-in-spec"})
    store.start_run(
        model="cmd", dataset="mnist", entrypoint="python t.py --token tok123 {data_dir}", params={}
    )
    store.finish_run(
        run_id, status="failed", error="cannot read https://u:boom-pass@host/x: refused"
    )

    dump = []
    with store.engine.connect() as conn:
        for table in SQLModel.metadata.sorted_tables:
            dump += [repr(tuple(r)) for r in conn.execute(select(table))]
    blob = "\n".join(dump)
    assert "bucket/data" in blob and "versionId=7" in blob  # still says where
    for secret in secrets:
        assert secret not in blob, secret
    row = store.run(run_id)
    assert row is not None and row.params["hf_token"] == "***" and row.params["lr"] == 0.1


# -- migrations -------------------------------------------------------------------------
def test_head_schema_matches_the_models(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(db_url)
    with engine.connect() as conn:
        assert current_revision(conn) == head_revision()
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, SQLModel.metadata)
    if engine.dialect.name == "sqlite":  # SQLite's INTEGER is 64-bit: BIGINT needs no rebuild
        diff = [d for d in diff if not (isinstance(d, list) and d[0][0] == "modify_type")]
    engine.dispose()
    assert diff == []


def _fill_first_schema(engine) -> None:  # type: ignore[no-untyped-def]
    """Rows written by a first-schema mlstage (revision 0001), with plain Core inserts."""
    md = MetaData()
    md.reflect(engine)
    t = md.tables
    seen = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(insert(t["datasets"]).values(id=1, name="mnist", created_at=seen))
        conn.execute(
            insert(t["dataset_versions"]).values(
                id=1,
                dataset_id=1,
                fingerprint="1" * 64,
                source_uri="s3://b/mnist/",
                files=3,
                bytes=1000,
                first_seen=seen,
            )
        )
        conn.execute(insert(t["recipes"]).values(id=1, name="shard", version="1", params_json="{}"))
        conn.execute(
            insert(t["artifacts"]).values(
                id="art1",
                version_id=1,
                recipe_id=1,
                location="/shared/art1",
                manifest_digest="d",
                files=2,
                bytes=1000,
                created_at=seen,
            )
        )
        conn.execute(
            insert(t["stage_records"]).values(
                id=1,
                node="n",
                artifact_id="art1",
                cache_hit=False,
                bytes_fetched=1000,
                objects_fetched=2,
                first_object_seconds=0.1,
                ready_seconds=0.2,
                created_at=seen,
            )
        )
        conn.execute(
            insert(t["benchmark_runs"]).values(
                id="run1",
                model="resnet",
                dataset="mnist",
                entrypoint="m:f",
                params={"lr": 1},
                status="completed",
                metrics={"acc": 0.5},
                started_at=seen,
            )
        )
        conn.execute(
            insert(t["consumptions"]).values(
                run_id="run1", artifact_id="art1", version_id=1, stage_record_id=1
            )
        )
        if engine.dialect.name == "postgresql":  # explicit ids above: move the sequences on
            for table in ("datasets", "dataset_versions", "recipes", "stage_records"):
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT max(id) FROM {table}))"
                    )
                )


def _assert_first_schema_data(st: StateStore) -> None:
    row = st.run("run1")
    assert row is not None
    assert (row.model, row.version, row.artifact_id, row.metrics) == (
        "resnet",
        "1" * 64,
        "art1",
        {"acc": 0.5},
    )
    assert row.bytes_fetched == 1000 and row.bytes_from_shared == 1000  # backfilled
    assert row.bytes_from_source == 0 and row.stall_seconds is None
    (v,) = st.versions("mnist")
    assert v.first_seen == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC) == v.last_seen
    # and the upgraded DB takes new records
    record_run(st, fingerprint="2" * 64, nbytes=3 * GiB, model="vit")
    assert [r.run_id for r in st.stale_runs("mnist")] == ["run1"]


def _open_upgrading(db_url: str) -> StateStore:
    """What a user does with a DB behind this mlstage: a SQLite file upgrades itself on open;
    a server DB is refused, in one line, until ``mlstage db upgrade``."""
    if not db_url.startswith("postgresql"):
        return StateStore.open(db_url)
    with pytest.raises(StateError) as info:
        StateStore.open(db_url)
    assert "older than this mlstage" in str(info.value) or "made before" in str(info.value)
    assert "run 'mlstage db upgrade'" in str(info.value) and "\n" not in str(info.value)
    engine = make_engine(db_url, schema=False)
    before, after = upgrade(engine)
    engine.dispose()
    assert after.state == "current" and before.state in ("behind", "unversioned")
    return StateStore.open(db_url)


def test_upgrade_from_the_first_schema_keeps_the_data(db_url: str) -> None:
    engine = make_engine(db_url, schema=False)
    migrate(engine, FIRST_REVISION)
    with engine.connect() as conn:
        assert current_revision(conn) == FIRST_REVISION
        assert "bytes_from_shared" not in {
            c["name"] for c in inspect(conn).get_columns("stage_records")
        }
    _fill_first_schema(engine)
    engine.dispose()

    st = _open_upgrading(db_url)
    with st.engine.connect() as conn:
        assert current_revision(conn) == head_revision() != FIRST_REVISION
    _assert_first_schema_data(st)
    st.close()


def test_db_made_before_migrations_is_stamped_and_upgraded(db_url: str) -> None:
    engine = make_engine(db_url, schema=False)
    migrate(engine, FIRST_REVISION)
    _fill_first_schema(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))  # as create_all left it
    engine.dispose()

    st = _open_upgrading(db_url)
    with st.engine.connect() as conn:
        assert current_revision(conn) == head_revision()
    _assert_first_schema_data(st)
    st.close()


def test_db_from_a_newer_mlstage_is_refused_clearly(db_url: str) -> None:
    StateStore.open(db_url).close()
    engine = make_engine(db_url, schema=False)
    with engine.begin() as conn:  # a newer revision that says nothing of older code
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(StateError, match="revision 9999, newer than this mlstage's") as info:
        StateStore.open(db_url)
    assert "upgrade mlstage on this node" in str(info.value)


# -- errors -----------------------------------------------------------------------------
def test_missing_database_is_one_line_with_the_password_masked(db_url: str) -> None:
    if db_url.startswith("sqlite"):
        bad = "sqlite:////proc/no-such-dir/state.db"
    else:
        bad = db_url.replace("postgres@", "postgres:s3cret@").rsplit("/", 1)[0] + "/nope_db"
    with pytest.raises(StateError) as info:
        StateStore.open(bad)
    msg = str(info.value)
    assert "\n" not in msg and "s3cret" not in msg and "hint:" in msg
    if "postgres" in bad:
        assert "postgres:***@" in msg and "nope_db" in msg


# -- concurrency ------------------------------------------------------------------------
WORKERS, RUNS_EACH = 8, 6


def _worker(url: str, worker: int, start, errors) -> None:  # type: ignore[no-untyped-def]
    try:
        start.wait(30)
        st = StateStore.open(url)  # all eight race the migration of a fresh DB
        for i in range(RUNS_EACH):
            record_run(
                st,
                fingerprint=f"{i % 3}" * 64,  # shared versions and artifacts: get-or-create races
                model=f"w{worker}-{i}",
            )
        st.close()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        errors.put(f"worker {worker}: {exc!r}")


def test_eight_processes_record_concurrently_and_lose_nothing(db_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")  # fork is unsafe once Prefect has run in-process
    start, errors = ctx.Barrier(WORKERS), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(db_url, w, start, errors)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    for p in procs:
        if p.is_alive():  # hung: fail below, but leave nothing behind
            p.kill()
            p.join(5)
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert problems == []
    assert all(p.exitcode == 0 for p in procs)

    st = StateStore.open(db_url)
    rows = st.runs()
    assert len(rows) == WORKERS * RUNS_EACH
    assert {r.model for r in rows} == {
        f"w{w}-{i}" for w in range(WORKERS) for i in range(RUNS_EACH)
    }
    assert all(r.version and r.artifact_id and r.status == "completed" for r in rows)
    assert len(st.versions("mnist")) == 3
    with Session(st.engine) as s:
        assert len(list(s.exec(select(DatasetVersion.id)))) == 3
    st.close()


# -- CLI --------------------------------------------------------------------------------
def test_cli_lineage_queries_as_json(
    db_url: str, store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from mlstage.cli import app

    old = record_run(store, fingerprint="1" * 64, model="resnet", flow_run_id="flow-9")
    new = record_run(store, fingerprint="2" * 64, model="vit")
    monkeypatch.setenv("MLSTAGE_STATE_URL", db_url)
    runner = CliRunner()

    def cli_json(*args: str) -> object:
        res = runner.invoke(app, ["lineage", *args, "--json"])
        assert res.exit_code == 0, res.output
        return json.loads(res.output)

    runs = cli_json("runs")
    assert {r["run_id"] for r in runs} == {old, new}
    assert {"run_id", "model", "dataset", "version", "artifact_id", "cache_hit"} <= set(runs[0])
    assert cli_json("run", old[:10])["version"] == "1" * 64
    assert cli_json("run", "flow-9")["run_id"] == old
    assert [r["run_id"] for r in cli_json("consumers", "--version", "2" * 64)] == [new]
    assert [r["run_id"] for r in cli_json("consumers", "--artifact", "a-" + "1" * 64)] == [old]
    (stale,) = cli_json("stale")
    assert stale["run_id"] == old and stale["latest_version"] == "2" * 64
    assert [r["run_id"] for r in cli_json("stale", "--history")] == [old]
    rerun = record_run(store, fingerprint="2" * 64, model="resnet")
    assert cli_json("stale") == []  # resnet's latest run is on the current version
    assert [r["run_id"] for r in cli_json("stale", "--history")] == [old]
    assert [(v["version"], v["current"]) for v in cli_json("versions", "mnist")] == [
        ("1" * 64, False),
        ("2" * 64, True),
    ]

    table = runner.invoke(app, ["lineage", "runs"])
    assert table.exit_code == 0 and "resnet" in table.output and old[:12] in table.output
    before = runner.invoke(app, ["lineage", "--json", "runs"])  # --json before the subcommand
    assert {r["run_id"] for r in json.loads(before.output)} == {old, new, rerun}
    short = runner.invoke(app, ["lineage", "run", old[:5]])
    assert "6 or more characters" in str(short.exception)
