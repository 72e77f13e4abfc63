"""Several watchers and re-stagers at once on one PostgreSQL state DB (as on several machines):
each change is announced once and each version re-staged once.

Every watcher thread and claimer process must finish cleanly: a claimer that crashed is no
loser, and "exactly one won" proves nothing if the others never got to ask.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mlstage.manifest import Entry, Manifest
from mlstage.specs import DatasetSpec
from mlstage.state import StateStore
from mlstage.state.claims import Coordination
from mlstage.testing.postgres import check_postgres, throwaway_database
from mlstage.watch import Change, WatchEntry, Watcher

pytestmark = pytest.mark.integration
N = 6


@pytest.fixture
def pg_url() -> Iterator[str]:
    reason = check_postgres()
    if reason:
        pytest.skip(reason)
    with throwaway_database("mlstage_watch_") as url:
        yield url


def run_together(fn: Callable[[int], Any], n: int) -> list[Any]:
    """``fn(i)`` from ``n`` threads released at the same moment; every call must return."""
    barrier = threading.Barrier(n)
    out: list[Any] = [None] * n
    errors: list[str] = []

    def body(i: int) -> None:
        try:
            barrier.wait(30)
            out[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(f"thread {i}: {exc!r}")

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    hung = [i for i, t in enumerate(threads) if t.is_alive()]
    assert not hung and not errors, f"hung: {hung}, failed: {errors}"
    return out


def _claimer(url: str, i: int, start: Any, results: Any, crash: bool) -> None:
    """One machine: open the state DB, wait for the others, claim (d, v1)."""
    coord = Coordination(StateStore.open(url))
    start.wait(60)
    if crash:
        raise RuntimeError(f"claimer {i} crashed")
    results.put((i, coord.claim("d", "v1", owner=f"m{i}")))
    coord.store.close()


def claim_in_processes(url: str, n: int, crash: int | None = None) -> list[bool]:
    """What each of ``n`` claimer processes, released together, got from ``claim``.

    Fails unless every process exited with 0 and reported its answer.
    """
    ctx = multiprocessing.get_context("spawn")  # fork is unsafe once Prefect has run
    start, results = ctx.Barrier(n), ctx.Queue()
    procs = [
        ctx.Process(target=_claimer, args=(url, i, start, results, i == crash)) for i in range(n)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    for p in procs:
        if p.is_alive():  # hung: fail below, but leave nothing behind
            p.kill()
            p.join(5)
    codes = [p.exitcode for p in procs]
    assert codes == [0] * n, f"claimer exit codes: {codes}"
    got = dict(results.get(timeout=10) for _ in range(n))
    assert sorted(got) == list(range(n))
    return [got[i] for i in range(n)]


def test_concurrent_watchers_announce_each_change_once(pg_url: str) -> None:
    etag = ["1"]

    def resolve(spec: DatasetSpec) -> Manifest:
        return Manifest(
            source=spec.uri, entries=[Entry(path="x", size=1, etag=etag[0], locator="x")]
        )

    entry = WatchEntry(dataset=DatasetSpec(name="d", uri="s3://b/d/"), settle_seconds=0)
    watchers = [Watcher(StateStore.open(pg_url), resolve=resolve) for _ in range(N)]
    run_together(lambda i: watchers[i].check([entry]), N)  # N first sights: one baseline
    for version in "234":
        etag[0] = version
        reports = run_together(lambda i: watchers[i].check([entry], confirm=False), N)
        changes: list[Change] = [c for r in reports for c in r.changes]
        assert len(changes) == 1, [r for r in reports]
    assert len(StateStore.open(pg_url).versions("d")) == 4


def test_concurrent_restage_claims_have_one_winner(pg_url: str) -> None:
    StateStore.open(pg_url).close()  # the schema, before the machines race
    won = claim_in_processes(pg_url, N)
    assert won.count(True) == 1, won
    Coordination(StateStore.open(pg_url)).finish("d", "v1", "failed")
    won = claim_in_processes(pg_url, N)  # a failed claim is taken over, once
    assert won.count(True) == 1, won


def test_a_crashed_claimer_fails_the_check(pg_url: str) -> None:
    StateStore.open(pg_url).close()
    with pytest.raises(AssertionError, match="claimer exit codes"):
        claim_in_processes(pg_url, 3, crash=1)
    with pytest.raises(AssertionError, match="thread 1: ZeroDivisionError"):
        run_together(lambda i: 1 / 0 if i == 1 else None, 3)
