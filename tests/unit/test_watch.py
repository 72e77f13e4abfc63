"""Watching without Prefect: settle (debounce), baselines, several watchers, watch lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlstage.errors import ConfigError, ObjectNotFound
from mlstage.manifest import Entry, Manifest
from mlstage.specs import DatasetSpec
from mlstage.state import StateStore
from mlstage.state.claims import Coordination
from mlstage.watch import WatchEntry, Watcher, WatchList, watch


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0
        self.slept: list[float] = []
        self.on_sleep = None  # called after each sleep: lets a test change the source meanwhile

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        if self.on_sleep:
            self.on_sleep()


class FakeSource:
    """Datasets as dicts path -> etag; ``resolve`` lists them like a source would."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, str]] = {}
        self.listings = 0

    def put(self, dataset: str, path: str, etag: str) -> None:
        self.objects.setdefault(dataset, {})[path] = etag

    def resolve(self, spec: DatasetSpec) -> Manifest:
        self.listings += 1
        objs = self.objects.get(spec.name)
        if not objs:
            raise ObjectNotFound(f"{spec.uri}: no objects")
        return Manifest(
            source=spec.uri,
            entries=[Entry(path=p, size=1, etag=e, locator=p) for p, e in objs.items()],
        )


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore.open(f"sqlite:///{tmp_path / 'state.db'}")


@pytest.fixture
def src() -> FakeSource:
    s = FakeSource()
    s.put("a", "x.bin", "1")
    return s


def entry(name: str = "a", settle: float = 5.0, **kw: object) -> WatchEntry:
    return WatchEntry(
        dataset=DatasetSpec(name=name, uri=f"s3://bkt/{name}/"), settle_seconds=settle, **kw
    )


def watcher(store: StateStore, src: FakeSource, clock: FakeClock) -> Watcher:
    return Watcher(store, resolve=src.resolve, clock=clock)


def test_first_sight_is_a_baseline_recorded_without_a_change(
    store: StateStore, src: FakeSource
) -> None:
    w = watcher(store, src, FakeClock())
    report = w.check([entry()])
    assert report.changes == [] and report.unchanged == ["a"]
    assert len(store.versions("a")) == 1
    assert w.check([entry()]).changes == []


def test_a_change_is_announced_once_it_settles(store: StateStore, src: FakeSource) -> None:
    clock = FakeClock()
    w = watcher(store, src, clock)
    w.check([entry()])
    v1 = store.versions("a")[0].fingerprint
    src.put("a", "x.bin", "2")
    first = w.check([entry()], confirm=False)
    assert first.changes == [] and first.pending == ["a"]
    assert len(store.versions("a")) == 1  # unsettled states are not versions
    clock.now += 4
    assert w.check([entry()], confirm=False).pending == ["a"]
    clock.now += 1
    (change,) = w.check([entry()], confirm=False).changes
    assert change.old_version == v1 and change.dataset == "a"
    assert [v.fingerprint for v in store.versions("a")] == [v1, change.new_version]
    assert change.event("watch").payload["version"] == change.new_version
    clock.now += 100
    assert w.check([entry()], confirm=False).changes == []  # announced once


def test_confirm_announces_a_finished_change_in_the_pass_that_sees_it(
    store: StateStore, src: FakeSource
) -> None:
    clock = FakeClock()
    w = watcher(store, src, clock)
    w.check([entry()])
    src.put("a", "y.bin", "1")
    report = w.check([entry()])
    assert len(report.changes) == 1 and clock.slept == [5.0]


def test_a_burst_settles_into_one_change_for_its_final_state(
    store: StateStore, src: FakeSource
) -> None:
    clock = FakeClock()
    w = watcher(store, src, clock)
    w.check([entry()])
    uploaded = iter(range(100))

    def upload_more() -> None:  # the burst goes on while the watcher waits
        for _ in range(10):
            i = next(uploaded, None)
            if i is not None:
                src.put("a", f"obj-{i:03d}", "e")

    clock.on_sleep = upload_more
    changes = []
    for _ in range(30):  # many polls during and after the burst
        upload_more()
        changes += w.check([entry()]).changes
        clock.now += 2
    assert len(changes) == 1
    final = src.resolve(entry().dataset).fingerprint
    assert changes[0].new_version == final
    assert len(store.versions("a")) == 2


def test_two_watchers_announce_a_change_once(tmp_path: Path, src: FakeSource) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    clock = FakeClock()
    w1 = watcher(StateStore.open(url), src, clock)
    w2 = watcher(StateStore.open(url), src, clock)
    w1.check([entry()])
    w2.check([entry()])
    src.put("a", "x.bin", "2")
    w1.check([entry()], confirm=False)
    w2.check([entry()], confirm=False)
    clock.now += 10
    r1 = w1.check([entry()], confirm=False)
    r2 = w2.check([entry()], confirm=False)
    assert len(r1.changes) + len(r2.changes) == 1
    assert len(StateStore.open(url).versions("a")) == 2


def test_recorded_history_is_the_baseline(store: StateStore, src: FakeSource) -> None:
    store.record_version("a", "f" * 64, "s3://bkt/a/", 1, 1)  # e.g. a sweep resolved it
    clock = FakeClock()
    (change,) = watcher(store, src, clock).check([entry()]).changes
    assert change.old_version == "f" * 64


def test_a_revert_to_an_old_version_is_a_change(store: StateStore, src: FakeSource) -> None:
    clock = FakeClock()
    w = watcher(store, src, clock)
    w.check([entry()])
    src.put("a", "x.bin", "2")
    (forward,) = w.check([entry()]).changes
    src.put("a", "x.bin", "1")
    (back,) = w.check([entry()]).changes
    assert back.new_version == forward.old_version and back.old_version == forward.new_version


def test_zero_settle_announces_at_once(store: StateStore, src: FakeSource) -> None:
    clock = FakeClock()
    w = watcher(store, src, clock)
    w.check([entry(settle=0)])
    src.put("a", "x.bin", "2")
    assert len(w.check([entry(settle=0)], confirm=False).changes) == 1


def test_a_failing_source_does_not_stop_the_others(store: StateStore, src: FakeSource) -> None:
    src.put("b", "x", "1")
    w = watcher(store, src, FakeClock())
    report = w.check([entry("gone"), entry("b")])
    assert "gone" in report.errors and "no objects" in report.errors["gone"]
    assert report.unchanged == ["b"]


def test_watch_polls_only_entries_with_poll_set(store: StateStore, src: FakeSource) -> None:
    src.put("b", "x", "1")
    wl = WatchList(datasets=[entry("a"), entry("b", poll=False)])
    report = watch(wl, store, resolve=src.resolve, clock=FakeClock())
    assert report.unchanged == ["a"] and store.versions("b") == []


def test_watch_list_files(tmp_path: Path) -> None:
    doc = {
        "datasets": [
            {
                "dataset": {"name": "a", "uri": "s3://bkt/a/"},
                "rerun_stale": True,
                "warm_caches": ["local", "/mnt/cache"],
            },
            {"dataset": {"name": "b", "uri": "/data/b"}, "poll": False},
        ]
    }
    j = tmp_path / "w.json"
    j.write_text(json.dumps(doc))
    y = tmp_path / "w.yaml"
    import yaml

    y.write_text(yaml.safe_dump(doc))
    for p in (j, y):
        wl = WatchList.load(p)
        assert wl.entry("a").rerun_stale and wl.entry("a").warm_caches[1] == "/mnt/cache"
        assert wl.entry("b").warm_caches == ["local"] and not wl.entry("b").poll
    with pytest.raises(ConfigError, match="not in the watch list"):
        WatchList.load(j).entry("zzz")
    doc["datasets"].append(doc["datasets"][0])
    j.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="unique"):
        WatchList.load(j)
    with pytest.raises(ConfigError, match="cannot read"):
        WatchList.load(tmp_path / "missing.yaml")


def test_claims_let_one_caller_restage_a_version(store: StateStore) -> None:
    c = Coordination(store)
    assert c.claim("a", "v1", owner="m1")
    assert not c.claim("a", "v1", owner="m2")
    assert c.claim("a", "v2", owner="m2")
    c.finish("a", "v1", "failed", "boom")
    assert c.claim("a", "v1", owner="m3")  # a failed re-stage may be retried
    c.finish("a", "v1", "done")
    assert not c.claim("a", "v1", owner="m4")
    assert not c.claim("a", "v2", owner="m5")
    assert c.claim("a", "v2", owner="m5", lease_seconds=-1)  # its owner died
    assert [k.owner for k in c.claims("a")] == ["m3", "m5"]
