"""State DB: recording throughput from concurrent processes, and the lineage query.

    .venv/bin/python -m bench.state_lineage [--runs 1000] [--procs 8] [--records 15]

For each backend (SQLite file; PostgreSQL at 127.0.0.1:5432 when it answers):
- record: PROCS processes each record RECORDS complete runs (version, artifact, stage, run,
  consumption, finish) at once; runs/s, and whether every run is there.
- lineage: ``StateStore.runs()`` (one joined query) over RUNS runs, against the peer: the
  per-run lookups (one query per run and table) that the first implementation made.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlmodel import select

from mlstage.state import StateStore
from mlstage.state.models import BenchmarkRun, Consumption, DatasetVersion, StageRecord
from mlstage.testing.postgres import postgres_unavailable, throwaway_database


def _record(st: StateStore, i: int, model: str) -> None:
    v, _ = st.record_version("bench", f"{i % 5:064d}", "s3://bucket/bench/", 10, 10**9)
    assert v.id is not None
    art = st.record_artifact(f"art-{i % 5}", v.id, ("shard", "1", "{}"), "/shared", "d", 4, 10**9)
    rec = st.record_stage(
        art.id,
        hit=i % 2 == 0,
        bytes_fetched=10**9,
        objects_fetched=4,
        first_object_seconds=0.1,
        ready_seconds=1.0,
    )
    run = st.start_run(model=model, dataset="bench", entrypoint="m:f", params={"i": i})
    st.record_consumption(run.id, art.id, rec.id)
    st.finish_run(run.id, status="completed", metrics={"score": i})


def _worker(url: str, worker: int, records: int, start: Any) -> None:
    start.wait(60)
    st = StateStore.open(url)
    for i in range(records):
        _record(st, i, f"w{worker}")
    st.close()


def bench_record(url: str, procs: int, records: int) -> dict[str, Any]:
    StateStore.open(url).close()  # schema in place: time the recording, not the migration
    ctx = multiprocessing.get_context("spawn")  # fork is unsafe once Prefect has run in-process
    start = ctx.Barrier(procs + 1)
    ps = [ctx.Process(target=_worker, args=(url, w, records, start)) for w in range(procs)]
    for p in ps:
        p.start()
    start.wait(60)
    t0 = time.perf_counter()
    for p in ps:
        p.join(600)
    seconds = time.perf_counter() - t0
    st = StateStore.open(url)
    found = len(st.runs(limit=10**9))
    st.close()
    expected = procs * records
    return {
        "processes": procs,
        "runs_expected": expected,
        "runs_found": found,
        "seconds": round(seconds, 3),
        "runs_per_s": round(expected / seconds, 1),
    }


def _per_run_lookups(st: StateStore) -> int:
    """The peer: the first implementation's lineage, one query per run and per table."""
    n = 0
    with st.session() as s:
        runs = s.exec(select(BenchmarkRun).order_by(BenchmarkRun.started_at)).all()
        for run in runs:
            c = s.exec(select(Consumption).where(Consumption.run_id == run.id)).first()
            v = s.get(DatasetVersion, c.version_id) if c else None
            st_rec = s.get(StageRecord, c.stage_record_id) if c and c.stage_record_id else None
            n += bool(v and st_rec)
    return n


def bench_lineage(url: str, runs: int) -> dict[str, Any]:
    st = StateStore.open(url)
    have = len(st.runs(limit=10**9))
    for i in range(have, runs):
        _record(st, i, "m")
    t0 = time.perf_counter()
    joined = len(st.runs(limit=10**9))
    t_joined = time.perf_counter() - t0
    st.engine.dispose()
    t0 = time.perf_counter()
    per_run = _per_run_lookups(st)
    t_per_run = time.perf_counter() - t0
    stale_t0 = time.perf_counter()
    stale = len(st.stale_runs())
    t_stale = time.perf_counter() - stale_t0
    st.close()
    return {
        "runs": joined,
        "joined_query_s": round(t_joined, 4),
        "per_run_lookups_s": round(t_per_run, 4),
        "per_run_over_joined": round(t_per_run / t_joined, 2),
        "rows_match": joined == per_run,
        "stale_runs": stale,
        "stale_query_s": round(t_stale, 4),
    }


@contextlib.contextmanager
def _backends(tmp: Path) -> Iterator[list[tuple[str, str | None, str | None]]]:
    reason = postgres_unavailable()
    with contextlib.ExitStack() as stack:
        out: list[tuple[str, str | None, str | None]] = [
            ("sqlite", f"sqlite:///{tmp / 'rec.db'}", f"sqlite:///{tmp / 'lin.db'}")
        ]
        if reason:
            out.append(("postgresql", None, reason))
        else:
            out.append(
                (
                    "postgresql",
                    stack.enter_context(throwaway_database("mlstage_bench_")),
                    stack.enter_context(throwaway_database("mlstage_bench_")),
                )
            )
        yield out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000, help="runs in the lineage query")
    ap.add_argument("--procs", type=int, default=8, help="concurrent recording processes")
    ap.add_argument("--records", type=int, default=15, help="runs recorded per process")
    args = ap.parse_args()
    result: dict[str, Any] = {"bench": "state_lineage", "params": vars(args)}
    with tempfile.TemporaryDirectory() as d, _backends(Path(d)) as backends:
        for name, rec_url, lin_url in backends:
            if rec_url is None:
                result[name] = {"skipped": lin_url}
                continue
            assert lin_url is not None
            result[name] = {
                "record": bench_record(rec_url, args.procs, args.records),
                "lineage": bench_lineage(lin_url, args.runs),
            }
    sq, pg = result["sqlite"], result.get("postgresql", {})
    if "record" in pg:
        result["postgres_over_sqlite_record_runs_per_s"] = round(
            pg["record"]["runs_per_s"] / sq["record"]["runs_per_s"], 2
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
