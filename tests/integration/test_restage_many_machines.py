"""Several watchers and re-stagers at once on one PostgreSQL state DB (as on several machines):
each change is announced once and each version re-staged once."""

from __future__ import annotations

import threading
from collections.abc import Iterator

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


def run_together(fn, n: int) -> list:  # type: ignore[no-untyped-def, type-arg]
    """Call ``fn(i)`` from ``n`` threads released at the same moment."""
    barrier = threading.Barrier(n)
    out: list = [None] * n  # type: ignore[type-arg]

    def body(i: int) -> None:
        barrier.wait()
        out[i] = fn(i)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return out


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
    coords = [Coordination(StateStore.open(pg_url)) for _ in range(N)]
    won = run_together(lambda i: coords[i].claim("d", "v1", owner=f"m{i}"), N)
    assert won.count(True) == 1
    coords[0].finish("d", "v1", "failed")
    won = run_together(lambda i: coords[i].claim("d", "v1", owner=f"m{i}"), N)
    assert won.count(True) == 1
