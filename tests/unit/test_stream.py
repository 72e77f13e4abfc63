"""Streaming reads over a local folder source: order, blocking, priority, resume, failure."""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlstage.cache import LocalCache
from mlstage.errors import SourceError
from mlstage.sources.base import RemoteObject
from mlstage.sources.local import FolderSource
from mlstage.stream import StreamCancelled, StreamFailed, open_stream


class GatedSource(FolderSource):
    """A folder whose objects are delivered only when the test opens their gate: a remote
    source's timing, so fetched concurrently like one (not a file at a time like a folder)."""

    local = False

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gates: dict[str, threading.Event] = {}
        self.started: queue.Queue[str] = queue.Queue()
        self.fail: set[str] = set()

    def gate(self, key: str) -> threading.Event:
        return self.gates.setdefault(key, threading.Event())

    def read(self, obj: RemoteObject, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        self.started.put(obj.key)
        if obj.key in self.fail:
            raise SourceError(f"{obj.key}: refused")
        for _ in range(400):
            if self.gate(obj.key).wait(0.05):
                break
            yield b""  # a heartbeat, like a slow network read: lets a cancel get through
        else:
            raise TimeoutError(obj.key)
        yield from super().read(obj, start, end)


def make_folder(root: Path, n: int = 6, size: int = 1000) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        (root / f"obj-{i:02d}.bin").write_bytes(bytes([i]) * (size + i))
    return root


@pytest.fixture
def cache(tmp_path: Path) -> LocalCache:
    return LocalCache(tmp_path / "cache")


def test_manifest_order_blocks_only_for_the_next_object(cache: LocalCache, tmp_path: Path) -> None:
    src = GatedSource(make_folder(tmp_path / "remote"))
    manifest = src.resolve()
    names = [e.path for e in manifest.entries]
    src.gate(names[0]).set()
    with open_stream(cache, src, manifest, workers=4) as s:
        it = iter(s)
        first = next(it)
        assert first.path == names[0] and first.file.read_bytes() == bytes([0]) * 1000
        assert not s.complete

        got: queue.Queue[str] = queue.Queue()
        t = threading.Thread(target=lambda: got.put(next(it).path))
        t.start()
        src.gate(names[2]).set()  # the reader needs names[1]: it must keep waiting
        with pytest.raises(queue.Empty):
            got.get(timeout=0.5)
        src.gate(names[1]).set()
        assert got.get(timeout=10) == names[1]
        t.join()
        for n in names[3:]:
            src.gate(n).set()
        rest = [o.path for o in it]
        assert rest == names[2:]
        staged = s.wait(timeout=10)
        stats = s.stats()
    assert cache.lookup(manifest.fingerprint) is not None
    assert sorted(p.name for p in staged.path.iterdir()) == names
    assert stats.objects_ready == len(names) and stats.stall_seconds >= 0.4
    assert stats.time_to_first_object_s is not None
    assert stats.time_to_ready_s is not None
    assert stats.time_to_first_object_s < stats.time_to_ready_s
    assert not s.root.exists()  # the stream folder is gone, the dataset stays


def test_completion_order_yields_each_once_as_it_lands(cache: LocalCache, tmp_path: Path) -> None:
    src = GatedSource(make_folder(tmp_path / "remote"))
    manifest = src.resolve()
    names = [e.path for e in manifest.entries]
    with open_stream(cache, src, manifest, workers=6, order="completion") as s:
        it = iter(s)
        src.gate(names[0]).set()
        assert next(it).path == names[0]  # the head is fetched first, alone
        src.gate(names[4]).set()
        assert next(it).path == names[4]  # not the manifest's next: it landed first
        for n in names:
            src.gate(n).set()
        rest = [o.path for o in it]
    assert sorted([names[0], names[4], *rest]) == names


def test_head_object_is_fetched_alone_then_in_priority_order(
    cache: LocalCache, tmp_path: Path
) -> None:
    src = GatedSource(make_folder(tmp_path / "remote", size=400_000))
    manifest = src.resolve()
    names = [e.path for e in manifest.entries]
    prio = [names[3], names[1]]
    with open_stream(cache, src, manifest, workers=6, priority=prio, lookahead_bytes=0) as s:
        assert src.started.get(timeout=10) == names[3]
        with pytest.raises(queue.Empty):  # nothing else starts while the head is in flight
            src.started.get(timeout=0.3)
        order = [names[3]]
        for _ in names[1:]:
            src.gate(order[-1]).set()
            order.append(src.started.get(timeout=10))
        src.gate(order[-1]).set()
        s.wait(timeout=10)
    assert order == [names[3], names[1], names[0], names[2], names[4], names[5]]


def test_a_closed_stream_leaves_a_resumable_partial_entry(
    cache: LocalCache, tmp_path: Path
) -> None:
    src = GatedSource(make_folder(tmp_path / "remote"))
    manifest = src.resolve()
    names = [e.path for e in manifest.entries]
    for n in names[:3]:
        src.gate(n).set()
    with open_stream(cache, src, manifest, workers=2) as s:
        it = iter(s)
        assert [next(it).path for _ in range(3)] == names[:3]
    with pytest.raises(StreamCancelled):
        next(it)
    assert cache.lookup(manifest.fingerprint) is None  # never a half-built dataset
    assert not cache.dataset_path(manifest.fingerprint).exists()

    for n in names:
        src.gate(n).set()
    src2 = FolderSource(src.root)
    with open_stream(cache, src2, manifest) as s2:
        assert [o.path for o in s2] == names
        s2.wait(timeout=10)
        stats = s2.stats()
    assert stats.objects_present >= 3  # yielded at once, not fetched again
    assert stats.bytes_fetched == sum(e.size for e in manifest.entries if e.path not in names[:3])
    staged = cache.lookup(manifest.fingerprint)
    assert staged is not None
    for i, n in enumerate(names):
        assert (staged.path / n).read_bytes() == bytes([i]) * (1000 + i)


def test_a_complete_dataset_streams_from_the_cache(cache: LocalCache, tmp_path: Path) -> None:
    src = FolderSource(make_folder(tmp_path / "remote"))
    manifest = src.resolve()
    cache.stage(src, manifest)
    with open_stream(cache, src, manifest) as s:
        assert [o.path for o in s] == [e.path for e in manifest.entries]
        assert s.wait(timeout=10).hit
        assert s.stats().bytes_fetched == 0


def test_failed_staging_reaches_the_reader(cache: LocalCache, tmp_path: Path) -> None:
    src = GatedSource(make_folder(tmp_path / "remote"))
    manifest = src.resolve()
    names = [e.path for e in manifest.entries]
    for n in names:
        src.gate(n).set()
    src.fail.add(names[1])
    with open_stream(cache, src, manifest, workers=1) as s:
        it = iter(s)
        assert next(it).path == names[0]
        with pytest.raises(StreamFailed, match="refused"):
            next(it)
        with pytest.raises(SourceError):
            s.wait(timeout=10)
    assert cache.lookup(manifest.fingerprint) is None


def test_a_failure_is_logged_and_written_without_its_secrets(
    cache: LocalCache, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class LeakySource(GatedSource):
        def read(
            self, obj: RemoteObject, start: int = 0, end: int | None = None
        ) -> Iterator[bytes]:
            raise SourceError(f"GET https://u:hunter2@host/{obj.key}?X-Amz-Signature=SIG1 failed")

    src = LeakySource(make_folder(tmp_path / "remote", n=1))
    manifest = src.resolve()
    with (
        caplog.at_level("WARNING", logger="mlstage.stream"),
        open_stream(cache, src, manifest, workers=1) as s,
    ):
        with pytest.raises(SourceError):
            s.wait(timeout=10)
        written = Path(s.view.ready_list).read_text()
    assert "streaming" in caplog.text and '"end": "failed"' in written
    for leaked in ("hunter2", "SIG1"):
        assert leaked not in caplog.text and leaked not in written


def test_view_reads_from_another_process_and_reports_its_stall(
    cache: LocalCache, tmp_path: Path
) -> None:
    import multiprocessing as mp

    src = GatedSource(make_folder(tmp_path / "remote"))
    manifest = src.resolve()
    names = [e.path for e in manifest.entries]
    with open_stream(cache, src, manifest, workers=4) as s:
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        p = ctx.Process(target=_read_view, args=(s.view, names[1::2], out))
        p.start()
        for n in names:
            src.gate(n).set()
        got = out.get(timeout=60)
        p.join(30)
        s.wait(timeout=10)
        lines = s.view.ready_list.read_text().splitlines()
        assert json.loads(lines[-1]) == {"end": "complete"}
        assert sorted(json.loads(x) for x in lines[:-1]) == names
    assert got == [(n, len(n)) for n in names[1::2]]


def _read_view(view, paths, out) -> None:  # type: ignore[no-untyped-def]
    out.put([(o.path, len(o.path)) for o in view.iter_ready("manifest", paths)])


def test_stream_follows_another_stager_of_the_same_dataset(
    cache: LocalCache, tmp_path: Path
) -> None:
    src = GatedSource(make_folder(tmp_path / "remote"))
    manifest = src.resolve()
    names = [e.path for e in manifest.entries]
    other = threading.Thread(target=cache.stage, args=(src, manifest), kwargs={"workers": 1})
    other.start()
    assert src.started.get(timeout=10) == names[0]  # the other stager holds the dataset lock
    with open_stream(cache, FolderSource(src.root), manifest) as s:
        src.gate(names[0]).set()
        it = iter(s)
        assert next(it).path == names[0]  # surfaced from the shared index, not fetched again
        assert other.is_alive() and not s.complete
        for n in names:
            src.gate(n).set()
        assert [o.path for o in it] == names[1:]
        staged = s.wait(timeout=10)
        assert staged.hit and s.stats().bytes_fetched == 0  # fetched once, by the other
    other.join(10)


def test_a_view_of_a_closed_stream_fails_instead_of_waiting(
    cache: LocalCache, tmp_path: Path
) -> None:
    src = FolderSource(make_folder(tmp_path / "remote"))
    manifest = src.resolve()
    with open_stream(cache, src, manifest) as s:
        view = s.view
        assert len(list(view.iter_ready())) == len(manifest)
    with pytest.raises(StreamCancelled, match="closed"):
        next(view.iter_ready())


def test_admission_keeps_rank_order_whatever_order_threads_arrive() -> None:
    from mlstage.stream._priority import Admission

    adm = Admission(lookahead_bytes=0, max_inflight=4, cancelled=threading.Event())
    adm.expect([0, 1, 2])
    order: list[int] = []

    def read(rank: int) -> None:
        token = adm.admit(rank, 10)
        order.append(rank)
        adm.release(token, finished=True)

    late = [threading.Thread(target=read, args=(r,)) for r in (2, 1)]
    for t in late:  # the higher ranks reach admission first
        t.start()
    time.sleep(0.3)
    assert order == []  # held back until rank 0 has started
    read(0)
    for t in late:
        t.join(5)
    assert order == [0, 1, 2]


def test_admission_lets_go_of_a_rank_delivered_without_a_read() -> None:
    from mlstage.stream._priority import Admission

    adm = Admission(lookahead_bytes=0, max_inflight=4, cancelled=threading.Event())
    adm.expect([0, 1])
    done = threading.Event()

    def read() -> None:
        adm.release(adm.admit(1, 10), finished=True)
        done.set()

    t = threading.Thread(target=read)
    t.start()
    assert not done.wait(0.3)
    adm.settle(0)  # e.g. a verified leftover of an interrupted run: no read happens
    assert done.wait(5)
    t.join(5)


class FileGatedSource(FolderSource):
    """A folder whose reads wait for a ``release`` file: slow staging in another process."""

    def __init__(self, root: Path, control: Path) -> None:
        super().__init__(root)
        self.control = control

    def read(self, obj: RemoteObject, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        (self.control / "started").touch()
        for _ in range(1200):
            if (self.control / "release").exists():
                break
            time.sleep(0.05)
            yield b""
        yield from super().read(obj, start, end)


def _stage_in_child(cache_root: Path, src: FileGatedSource) -> None:
    LocalCache(cache_root).stage(src, src.resolve(), workers=1)


def test_close_returns_while_another_process_stages_the_dataset(
    cache: LocalCache, tmp_path: Path
) -> None:
    import multiprocessing as mp

    control = tmp_path / "control"
    control.mkdir()
    slow = FileGatedSource(make_folder(tmp_path / "remote"), control)
    manifest = slow.resolve()
    other = mp.get_context("spawn").Process(target=_stage_in_child, args=(cache.root, slow))
    other.start()
    try:
        deadline = time.monotonic() + 60
        while not (control / "started").exists():  # the child holds the dataset's stage lock
            assert other.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)
        s = open_stream(cache, FolderSource(slow.root), manifest)
        closer = threading.Thread(target=s.close)
        closer.start()
        closer.join(10)  # generous: the reviewer's bound is 2 s
        assert not closer.is_alive(), "close() waited for the other process's staging"
        assert s._thread is not None and not s._thread.is_alive()
        assert not s.root.exists()
        assert cache.lookup(manifest.fingerprint) is None  # nothing written by the stream
    finally:
        (control / "release").touch()
        other.join(60)
    assert other.exitcode == 0
    staged = cache.lookup(manifest.fingerprint)
    assert staged is not None  # the other process finished its staging undisturbed
    assert sorted(p.name for p in staged.path.iterdir()) == [e.path for e in manifest.entries]


def _dead_pid() -> int:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _fake_stream_folder(cache: LocalCache, pid: int, owner: dict[str, object] | None) -> Path:
    d = cache.root / "streams" / f"abcdef012345-{pid}-{pid:08x}"
    (d / "data").mkdir(parents=True)
    (d / "data" / "x.bin").write_bytes(b"x")
    if owner is not None:
        (d / "owner.json").write_text(json.dumps(owner))
    return d


def test_a_stream_never_reaps_another_pods_stream_folder(cache: LocalCache, tmp_path: Path) -> None:
    pid = _dead_pid()  # dead here; in another pid namespace the same number may be alive
    foreign = _fake_stream_folder(cache, pid, {"host": "node-1/pid:[4026532999]", "pid": pid})
    mine = _fake_stream_folder(cache, pid + 1_000_000, {"host": cache.host, "pid": pid})
    src = FolderSource(make_folder(tmp_path / "remote"))
    with open_stream(cache, src, src.resolve()) as s:
        s.wait(timeout=10)
        assert (s.root / "owner.json").exists()
        owner = json.loads((s.root / "owner.json").read_text())
        assert owner["host"] == cache.host and owner["pid"] == os.getpid()
    assert (foreign / "data" / "x.bin").exists()  # another pod's live stream is left alone
    assert not mine.exists()  # ours, and its process is gone: reaped


def test_stream_folders_of_live_or_unknown_owners_are_kept(
    cache: LocalCache, tmp_path: Path
) -> None:
    live = _fake_stream_folder(cache, os.getppid(), {"host": cache.host, "pid": os.getppid()})
    unowned = _fake_stream_folder(cache, _dead_pid(), None)  # older mlstage, maybe elsewhere
    old = _fake_stream_folder(cache, _dead_pid() + 1_000_000, None)
    week_ago = time.time() - 8 * 24 * 3600
    os.utime(old, (week_ago, week_ago))
    src = FolderSource(make_folder(tmp_path / "remote"))
    with open_stream(cache, src, src.resolve()) as s:
        s.wait(timeout=10)
    assert live.exists() and unowned.exists()
    assert not old.exists()  # no owner and untouched for a week: reaped
