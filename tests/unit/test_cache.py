"""LocalCache on folder sources: dedup, hits, single-flight, leases, eviction, crash leftovers."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlstage.cache import LocalCache
from mlstage.cache.eviction import Eviction
from mlstage.cache.files import flock
from mlstage.errors import CacheError
from mlstage.sources.base import RemoteObject
from mlstage.sources.local import FolderSource


class CountingSource(FolderSource):
    """A folder source that counts reads per key (to prove single-flight)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: Counter[str] = Counter()
        self._lock = threading.Lock()

    def read(self, obj: RemoteObject, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        with self._lock:
            self.reads[obj.key] += 1
        yield from super().read(obj, start, end)


def make_dataset(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


@pytest.fixture
def cache(tmp_path: Path) -> LocalCache:
    return LocalCache(tmp_path / "cache")


def stage_folder(cache: LocalCache, root: Path):  # type: ignore[no-untyped-def]
    src = FolderSource(root)
    return cache.stage(src, src.resolve())


def test_stage_builds_read_only_tree_and_hits_after(cache: LocalCache, tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", {"a/x.bin": b"x" * 100, "y.txt": b"hello"})
    staged = stage_folder(cache, root)
    assert not staged.hit and staged.objects_fetched == 2
    assert (staged.path / "a/x.bin").read_bytes() == b"x" * 100
    for p in [staged.path, *staged.path.rglob("*")]:
        assert p.stat().st_mode & 0o222 == 0, p  # read-only for everyone (root ignores it)
    again = stage_folder(cache, root)
    assert again.hit and again.path == staged.path and again.objects_fetched == 0


@pytest.mark.parametrize("check_hits", [True, False])
def test_a_hit_is_checked_against_its_seal_unless_told_to_trust_the_cache(
    tmp_path: Path, check_hits: bool
) -> None:
    """MLSTAGE_HIT_CHECK=seal (the default) rebuilds a tree a job wrote into before handing
    it out again; =none hands it out as it is (the documented trade-off) and only a
    verify finds the damage."""
    cache = LocalCache(tmp_path / "cache", check_hits=check_hits)
    root = make_dataset(tmp_path / "ds", {"a": b"a" * 10, "b": b"b" * 10})
    staged = stage_folder(cache, root)
    os.chmod(staged.path, 0o755)
    (staged.path / "b").unlink()
    (staged.path / "b").write_bytes(b"written by a job")
    again = stage_folder(cache, root)
    assert again.hit is not check_hits and again.repaired is check_hits
    assert (again.path / "b").read_bytes() == (b"b" * 10 if check_hits else b"written by a job")
    assert bool(cache.verify().problems) is not check_hits


def test_a_dataset_leaves_no_lock_file_once_dropped_or_evicted(
    cache: LocalCache, tmp_path: Path
) -> None:
    a = stage_folder(cache, make_dataset(tmp_path / "a", {"f": b"1"}))
    b = stage_folder(cache, make_dataset(tmp_path / "b", {"f": b"2"}))
    with cache.lease(a.fingerprint), cache.lease(b.fingerprint):
        pass
    names = {p.name for p in cache.files.lock("x").parent.iterdir()}
    assert any(a.fingerprint in n for n in names) and any(b.fingerprint in n for n in names)
    assert cache.drop(a.fingerprint)
    assert cache.evict(target_bytes=0) == [b.fingerprint]
    left = [p.name for p in cache.files.lock("x").parent.iterdir()]
    assert not [n for n in left if a.fingerprint in n or b.fingerprint in n], left


def test_shared_content_is_stored_once(cache: LocalCache, tmp_path: Path) -> None:
    a = stage_folder(cache, make_dataset(tmp_path / "a", {"same": b"S" * 10, "a": b"A"}))
    b = stage_folder(cache, make_dataset(tmp_path / "b", {"copy": b"S" * 10, "b": b"B"}))
    assert cache.stats().objects == 3
    assert (a.path / "same").stat().st_ino == (b.path / "copy").stat().st_ino


def test_lookup_ignores_a_tree_still_staging(cache: LocalCache, tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", {"f": b"1"})
    src = FolderSource(root)
    m = src.resolve()
    cache.index.begin_staging(m.fingerprint, m.source, 1, 1)
    cache.dataset_path(m.fingerprint).mkdir()
    assert cache.lookup(m.fingerprint) is None
    assert not cache.stage(src, m).hit  # replaces the stray folder
    assert (cache.dataset_path(m.fingerprint) / "f").read_bytes() == b"1"


def test_cached_object_lookup(cache: LocalCache, tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", {"f": b"content"})
    src = FolderSource(root)
    m = src.resolve()
    assert cache.cached_object(src.uri, m.entries[0]) is None
    cache.stage(src, m)
    path = cache.cached_object(src.uri, m.entries[0])
    assert path is not None and path.read_bytes() == b"content"


def test_threads_staging_one_dataset_read_each_object_once(
    cache: LocalCache, tmp_path: Path
) -> None:
    root = make_dataset(tmp_path / "ds", {f"f{i}": os.urandom(2000) for i in range(30)})
    src = CountingSource(root)
    m = src.resolve()
    results = []

    def go() -> None:
        results.append(cache.stage(src, m, workers=4))

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and len({r.path for r in results}) == 1
    assert set(src.reads.values()) == {1} and len(src.reads) == 30
    assert sum(not r.hit for r in results) == 1


def test_eviction_is_lru_and_skips_leases(tmp_path: Path) -> None:
    cache = LocalCache(tmp_path / "cache", limit_bytes=2500)
    roots = [make_dataset(tmp_path / f"d{i}", {"f": bytes([i]) * 1000}) for i in range(3)]
    a = stage_folder(cache, roots[0])
    with cache.lease(a.fingerprint):
        b = stage_folder(cache, roots[1])
        c = stage_folder(cache, roots[2])  # needs room: b goes, a is leased
        assert cache.lookup(a.fingerprint) is not None
        assert cache.lookup(b.fingerprint) is None
        assert cache.lookup(c.fingerprint) is not None
        assert cache.in_use(a.fingerprint)
    assert not cache.in_use(a.fingerprint)
    cache.index.db.execute("UPDATE datasets SET last_used=0 WHERE fingerprint=?", (c.fingerprint,))
    assert cache.evict(target_bytes=1000) == [c.fingerprint]  # least recently used first
    assert cache.stats().bytes == 1000


def test_use_stages_and_leases_without_a_gap(cache: LocalCache, tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", {"f": b"z" * 10})
    src = FolderSource(root)
    with cache.use(src, src.resolve()) as staged:
        assert cache.evict(target_bytes=0) == []
        assert (staged.path / "f").exists()
    assert cache.evict(target_bytes=0) == [staged.fingerprint]


def test_recorded_leases_expire_and_die_with_bound_pid(cache: LocalCache, tmp_path: Path) -> None:
    fp = stage_folder(cache, make_dataset(tmp_path / "d", {"f": b"1"})).fingerprint
    lease = cache.hold(fp, ttl_seconds=3600)
    assert not cache.drop(fp)
    assert cache.release(lease.id)
    expired = cache.hold(fp, ttl_seconds=3600)
    cache.index.db.execute("UPDATE leases SET expires=0 WHERE id=?", (expired.id,))
    # a lease bound to a process that has exited: reclaimed by pid, long before its expiry
    code = (
        "import sys; from pathlib import Path; from mlstage.cache import LocalCache;"
        f"LocalCache(Path({str(cache.root)!r})).hold({fp!r}, 3600, bind_pid=True)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert len(cache.index.leases(fp)) == 2
    assert cache.evict(target_bytes=0) == [fp]
    assert cache.index.leases(fp) == []


def test_lease_on_missing_dataset_raises(cache: LocalCache) -> None:
    with pytest.raises(CacheError), cache.lease("0" * 64):
        pass


def test_verify_finds_and_repairs_a_flipped_byte_and_a_missing_file(
    cache: LocalCache, tmp_path: Path
) -> None:
    root = make_dataset(tmp_path / "d", {"a/x": b"x" * 50, "b/y": b"y" * 50, "z": b"z"})
    staged = stage_folder(cache, root)
    digest = hashlib.sha256(b"x" * 50).hexdigest()
    obj = cache.object_path(digest)
    os.chmod(obj, 0o644)
    with open(obj, "r+b") as f:
        f.write(b"!")
    os.chmod(staged.path / "b", 0o755)
    (staged.path / "b/y").unlink()
    found = cache.verify()
    assert {(p.kind, p.path) for p in found.unrepaired} == {
        ("corrupt_file", "a/x"),
        ("missing_file", "b/y"),
    }
    fixed = cache.verify(repair=True)
    assert fixed.problems and not fixed.unrepaired
    assert (staged.path / "a/x").read_bytes() == b"x" * 50
    assert (staged.path / "b/y").read_bytes() == b"y" * 50
    assert cache.verify().problems == []


def test_verify_reads_the_tree_beside_its_record_in_path_order(
    cache: LocalCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Extra files before, between and after the listed ones, and a missing one, are found
    by one pass over the tree and the record, never by loading the manifest whole."""
    staged = stage_folder(
        cache, make_dataset(tmp_path / "d", {"a-b": b"1", "a/x": b"2", "c": b"3"})
    )
    for folder in (staged.path, staged.path / "a"):
        os.chmod(folder, 0o755)
    (staged.path / "a/x").unlink()
    for extra in ("0", "a/w", "a0", "zz"):
        (staged.path / extra).write_bytes(b"?")
    monkeypatch.setattr("mlstage.cache.verify.read_record", _never_loaded)
    found = cache.verify()
    assert [(p.kind, p.path) for p in found.problems] == [
        ("extra_file", "0"),
        ("extra_file", "a/w"),
        ("missing_file", "a/x"),
        ("extra_file", "a0"),
        ("extra_file", "zz"),
    ]
    assert found.files == 3
    monkeypatch.undo()
    assert not cache.verify(repair=True).unrepaired
    assert cache.verify().problems == []
    assert sorted(p.name for p in staged.path.iterdir()) == ["a", "a-b", "c"]


def test_verify_counts_a_cut_record_as_missing(cache: LocalCache, tmp_path: Path) -> None:
    staged = stage_folder(
        cache, make_dataset(tmp_path / "d", {f"f{i}": b"%d" % i for i in range(5)})
    )
    record = cache.manifest_path(staged.fingerprint)
    record.write_text("\n".join(record.read_text().splitlines()[:-2]) + "\n")
    (problem,) = cache.verify().problems
    assert problem.kind == "missing_manifest" and problem.fingerprint == staged.fingerprint


def _never_loaded(path: Path) -> None:
    raise AssertionError(f"{path} was loaded whole")


def test_verify_reports_what_it_cannot_repair(cache: LocalCache, tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", {"x": b"x" * 50})
    staged = stage_folder(cache, root)
    (root / "x").write_bytes(b"changed at the source")
    obj = cache.object_path(hashlib.sha256(b"x" * 50).hexdigest())
    os.chmod(obj, 0o644)
    obj.write_bytes(b"y" * 50)
    report = cache.verify(repair=True)
    assert [p.kind for p in report.unrepaired] == ["corrupt_file"]
    assert staged.fingerprint == report.unrepaired[0].fingerprint


def test_verify_rebuilds_a_missing_tree(cache: LocalCache, tmp_path: Path) -> None:
    staged = stage_folder(cache, make_dataset(tmp_path / "d", {"x/y": b"1", "z": b"2"}))
    os.chmod(staged.path, 0o755)
    os.chmod(staged.path / "x", 0o755)
    import shutil

    shutil.rmtree(staged.path)
    assert cache.lookup(staged.fingerprint) is None
    report = cache.verify(repair=True)
    assert [p.kind for p in report.problems] == ["missing_tree"] and not report.unrepaired
    assert cache.lookup(staged.fingerprint) is not None
    assert (staged.path / "x/y").read_bytes() == b"1"


def test_verify_repair_never_writes_through_a_linked_folder(
    cache: LocalCache, tmp_path: Path
) -> None:
    staged = stage_folder(cache, make_dataset(tmp_path / "d", {"sub/a": b"1", "z": b"2"}))
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    os.chmod(staged.path, 0o755)
    os.chmod(staged.path / "sub", 0o755)
    import shutil

    shutil.rmtree(staged.path / "sub")
    os.symlink(victim, staged.path / "sub")  # a folder in the tree swapped for a link

    found = cache.verify()
    assert [p.kind for p in found.problems] == ["foreign_link"] and found.unrepaired
    report = cache.verify(repair=True)
    assert [p.kind for p in report.problems] == ["foreign_link"] and not report.unrepaired
    assert list(victim.iterdir()) == [] and (victim.stat().st_mode & 0o777) == 0o700
    assert not (staged.path / "sub").is_symlink()
    assert (staged.path / "sub/a").read_bytes() == b"1" and (staged.path / "z").read_bytes() == b"2"


def test_crash_leftovers_are_recovered(tmp_path: Path) -> None:
    cache = LocalCache(tmp_path / "cache")
    staged = stage_folder(cache, make_dataset(tmp_path / "d", {"f": b"data"}))
    digest = hashlib.sha256(b"data").hexdigest()
    # an evictor died after moving the object aside, before its transaction committed
    os.rename(cache.object_path(digest), cache.root / "tmp/trash" / f"obj-{digest}.1-abcd")
    # ... and another after moving the tree and the manifest aside
    os.rename(staged.path, cache.root / "tmp/trash" / f"ds-{staged.fingerprint}.1-abcd")
    trash_manifest = cache.root / "tmp/trash" / f"mf-{staged.fingerprint}.1-abcd"
    os.rename(cache.manifest_path(staged.fingerprint), trash_manifest)
    reopened = LocalCache(tmp_path / "cache")
    assert reopened.cached_object(
        str(tmp_path / "d"), reopened.manifest(staged.fingerprint).entries[0]
    )  # type: ignore[union-attr]
    assert reopened.lookup(staged.fingerprint) is not None
    assert reopened.manifest(staged.fingerprint) is not None and not trash_manifest.exists()
    assert reopened.verify().problems == []


def test_a_lease_recorded_just_before_eviction_keeps_the_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evictor, job = LocalCache(tmp_path / "cache"), LocalCache(tmp_path / "cache")
    staged = stage_folder(evictor, make_dataset(tmp_path / "d", {"f": b"data"}))
    drop = Eviction._drop

    def lease_lands_first(self: Eviction, fingerprint: str) -> bool:
        job.hold(fingerprint, 3600)  # another pod, after the evictor chose this dataset
        return drop(self, fingerprint)

    monkeypatch.setattr(Eviction, "_drop", lease_lands_first)
    assert evictor.evict(target_bytes=0) == []
    assert job.lookup(staged.fingerprint) is not None


def test_a_lease_is_never_recorded_on_a_dataset_that_is_not_ready(
    cache: LocalCache, tmp_path: Path
) -> None:
    staged = stage_folder(cache, make_dataset(tmp_path / "d", {"f": b"data"}))
    assert cache.index.add_lease(staged.fingerprint, "h", "host", None, None, 1e12)
    assert cache.drop(staged.fingerprint) is False  # that lease holds it
    cache.index.remove_lease(cache.index.leases()[0].id)
    assert cache.drop(staged.fingerprint)
    assert cache.index.add_lease(staged.fingerprint, "h", "host", None, None, 1e12) is None
    assert cache.index.leases() == []
    with pytest.raises(CacheError, match="not in the cache"):
        cache.hold(staged.fingerprint, 60)


def test_a_restage_during_a_drop_keeps_its_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlstage.cache.eviction as eviction

    evictor, stager = LocalCache(tmp_path / "cache"), LocalCache(tmp_path / "cache")
    src = FolderSource(make_dataset(tmp_path / "d", {"a": b"a" * 100, "b": b"b" * 100}))
    manifest = src.resolve()
    stager.stage(src, manifest)
    real_rmtree = eviction.rmtree

    def restage_meanwhile(path: Path) -> None:  # the evictor is still removing the old tree
        real_rmtree(path)
        if "trash" in str(path):
            monkeypatch.setattr(eviction, "rmtree", real_rmtree)
            assert not stager.stage(src, manifest).hit

    monkeypatch.setattr(eviction, "rmtree", restage_meanwhile)
    assert evictor.drop(manifest.fingerprint)
    assert stager.lookup(manifest.fingerprint) is not None
    assert stager.manifest(manifest.fingerprint) == manifest  # before: deleted by the drop
    assert stager.verify().problems == []


def test_verify_repair_keeps_a_dataset_in_use_that_only_dropping_could_fix(
    cache: LocalCache, tmp_path: Path
) -> None:
    staged = stage_folder(cache, make_dataset(tmp_path / "d", {"f": b"data"}))
    cache.manifest_path(staged.fingerprint).unlink()
    with cache.lease(staged.fingerprint) as tree:  # a reader is using it
        (problem,) = cache.verify(repair=True).problems
        assert problem.kind == "missing_manifest" and not problem.repaired
        assert "in use" in problem.detail and (tree / "f").read_bytes() == b"data"
    (problem,) = LocalCache(tmp_path / "cache").verify(repair=True).problems
    assert problem.repaired and cache.lookup(staged.fingerprint) is None


def test_a_staging_that_fails_after_publishing_leaves_no_tree(
    cache: LocalCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def index_broke(*args: object) -> None:
        raise RuntimeError("index broke")

    monkeypatch.setattr(cache.index, "finish_staging", index_broke)
    with pytest.raises(RuntimeError, match="index broke"):
        stage_folder(cache, make_dataset(tmp_path / "d", {"f": b"data" * 100}))
    assert list((cache.root / "datasets").iterdir()) == []


def test_a_staging_killed_after_publishing_leaves_no_tree_once_reclaimed(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", {"f": b"data" * 100})
    child = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from mlstage.cache import LocalCache\n"
        "from mlstage.sources.local import FolderSource\n"
        "c = LocalCache(Path(sys.argv[1]))\n"
        "c.index.finish_staging = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
        "s = FolderSource(sys.argv[2])\n"
        "c.stage(s, s.resolve())\n"
    )
    cache_dir = tmp_path / "cache"
    done = subprocess.run([sys.executable, "-c", child, str(cache_dir), str(root)], check=False)
    assert done.returncode == -9
    assert len(list((cache_dir / "datasets").iterdir())) == 1  # published, never indexed
    cache = LocalCache(cache_dir)
    cache.evict(target_bytes=0)  # reclaims the dead staging, and now its tree
    assert list((cache_dir / "datasets").iterdir()) == []
    assert cache.stats().bytes == 0


def test_a_manifest_that_cannot_be_written_leaves_no_temp_file(
    cache: LocalCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_replace = os.replace

    def disk_full(src: object, dst: object) -> None:
        if "manifests" in str(dst):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(CacheError, match="No space left on device") as info:
        stage_folder(cache, make_dataset(tmp_path / "d", {"f": b"data"}))
    assert "MLSTAGE_CACHE_LIMIT_BYTES" in str(info.value) and "\n" not in str(info.value)
    assert list((cache.root / "manifests").iterdir()) == []


def test_only_the_cache_disks_own_errors_become_disk_errors(tmp_path: Path) -> None:
    import errno

    from mlstage.cache.files import disk_error as _disk_error
    from mlstage.errors import AccessDenied

    root = tmp_path / "cache"
    assert _disk_error(root, OSError(errno.ENOSPC, "No space left on device")) is not None
    inside = PermissionError(errno.EACCES, "Permission denied", str(root / "objects" / "ab"))
    assert _disk_error(root, inside) is not None
    sibling = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "cache2" / "x"))
    assert _disk_error(root, sibling) is None  # /cache2 is not inside /cache
    assert _disk_error(root, AccessDenied("s3://b/k: access denied")) is None


def test_verify_repair_counts_a_dataset_evicted_meanwhile_as_dropped(
    cache: LocalCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staged = stage_folder(cache, make_dataset(tmp_path / "d", {"f": b"data"}))
    cache.manifest_path(staged.fingerprint).unlink()
    drop = LocalCache.drop

    def evicted_first(self: LocalCache, fingerprint: str) -> bool:
        assert drop(self, fingerprint)  # another process's eviction, just before
        return drop(self, fingerprint)  # raises: not in the cache

    monkeypatch.setattr(LocalCache, "drop", evicted_first)
    (problem,) = cache.verify(repair=True).problems
    assert problem.repaired and cache.lookup(staged.fingerprint) is None


def test_gc_reclaims_a_dead_staging_and_stray_folders(cache: LocalCache, tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", {"f": b"1", "g": b"2"})
    src = FolderSource(root)
    m = src.resolve()
    cache.index.begin_staging(m.fingerprint, m.source, 2, 2)
    (cache.root / "datasets" / f".tmp-{m.fingerprint}").mkdir()
    (cache.root / "tmp" / f"xfer-{m.fingerprint}").mkdir()
    half_written = cache.root / "manifests" / f".{m.fingerprint}.json.12345"
    half_written.write_text('{"manif')
    with flock(cache.files.lock(f"stage-{m.fingerprint}"), 2 | 4) as got:  # LOCK_EX|LOCK_NB
        assert got  # nobody is staging it: the row is a crash leftover
    report = cache.gc()
    assert report.stagings_reclaimed == [m.fingerprint]
    assert report.stray_dirs_removed == 2
    assert report.stray_files_removed == 1 and not half_written.exists()
    assert report.locks_removed == 1  # the dead staging's stage lock
    assert not cache.files.lock(f"stage-{m.fingerprint}").exists()
    assert cache.index.any_dataset(m.fingerprint) is None
    assert not cache.stage(src, m).hit


class BlockingSource(FolderSource):
    """A folder source whose reads wait until released (a download in flight)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reading = threading.Event()
        self.release = threading.Event()

    def read(self, obj: RemoteObject, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        self.reading.set()
        assert self.release.wait(30)
        yield from super().read(obj, start, end)


def test_limit_is_enforced_while_another_download_is_in_flight(tmp_path: Path) -> None:
    cache = LocalCache(tmp_path / "cache", limit_bytes=2500)
    slow = BlockingSource(make_dataset(tmp_path / "slow", {"s": b"s" * 100}))
    t = threading.Thread(target=lambda: cache.stage(slow, slow.resolve()))
    t.start()
    try:
        assert slow.reading.wait(30)
        a = stage_folder(cache, make_dataset(tmp_path / "a", {"f": b"a" * 1000}))
        stage_folder(cache, make_dataset(tmp_path / "b", {"f": b"b" * 1000}))
        stage_folder(cache, make_dataset(tmp_path / "c", {"f": b"c" * 1000}))
        assert cache.lookup(a.fingerprint) is None  # evicted although a staging is running
        assert cache.stats().bytes <= 2500
    finally:
        slow.release.set()
        t.join()
    assert cache.stats().bytes <= 2500


def test_repairing_a_shared_object_fixes_every_tree_that_links_it(
    cache: LocalCache, tmp_path: Path
) -> None:
    a = stage_folder(cache, make_dataset(tmp_path / "a", {"x": b"shared" * 10, "a": b"a"}))
    b = stage_folder(cache, make_dataset(tmp_path / "b", {"y/x": b"shared" * 10}))
    obj = cache.object_path(hashlib.sha256(b"shared" * 10).hexdigest())
    os.chmod(obj, 0o644)
    with open(obj, "r+b") as f:
        f.write(b"S")
    found = cache.verify()
    assert sorted((p.fingerprint, p.path) for p in found.unrepaired) == sorted(
        [(a.fingerprint, "x"), (b.fingerprint, "y/x")]
    )
    assert not cache.verify(repair=True).unrepaired
    assert (a.path / "x").read_bytes() == (b.path / "y/x").read_bytes() == b"shared" * 10
    assert (a.path / "x").stat().st_ino == (b.path / "y/x").stat().st_ino == obj.stat().st_ino
    assert cache.verify().problems == []


def test_a_lease_hands_out_a_written_tree_only_after_repairing_it(
    cache: LocalCache, tmp_path: Path
) -> None:
    staged = stage_folder(cache, make_dataset(tmp_path / "d", {"a/x": b"x" * 50, "y": b"y"}))
    with open(staged.path / "a/x", "r+b") as f:  # a job writing through its hard link
        f.write(b"!")
    with cache.lease(staged.fingerprint) as tree:
        assert (tree / "a/x").read_bytes() == b"x" * 50
    assert cache.verify().problems == []


def test_cached_object_never_hands_out_a_changed_object(cache: LocalCache, tmp_path: Path) -> None:
    src = FolderSource(make_dataset(tmp_path / "d", {"f": b"content"}))
    m = src.resolve()
    cache.stage(src, m)
    obj = cache.cached_object(src.uri, m.entries[0])
    assert obj is not None
    with open(obj, "r+b") as f:
        f.write(b"C")
    assert cache.cached_object(src.uri, m.entries[0]) is None
    restaged = cache.stage(src, m)  # the hit is repaired: the object fetched again
    assert restaged.repaired and (restaged.path / "f").read_bytes() == b"content"
    assert cache.cached_object(src.uri, m.entries[0]) is not None


def test_a_touched_file_is_hashed_not_fetched_again(cache: LocalCache, tmp_path: Path) -> None:
    src = CountingSource(make_dataset(tmp_path / "d", {"f": b"content", "g": b"other"}))
    m = src.resolve()
    staged = cache.stage(src, m)
    os.utime(staged.path / "f")  # metadata only: the bytes are right
    again = cache.stage(src, m)
    assert again.repaired and again.objects_fetched == 0 and src.reads["f"] == 1
    assert cache.stage(src, m).hit


def test_the_same_content_many_times_in_one_dataset_is_one_object_and_a_sound_seal(
    cache: LocalCache, tmp_path: Path
) -> None:
    src = FolderSource(make_dataset(tmp_path / "d", {f"f{i:03d}": b"same" for i in range(300)}))
    staged = cache.stage(src, src.resolve())
    assert cache.stats().objects == 1
    assert cache.trees.intact(staged.fingerprint)  # the recorded seal is the tree as built
    assert cache.stage(src, src.resolve()).hit


def test_fast_verify_finds_writes_and_full_verify_finds_bit_rot(
    cache: LocalCache, tmp_path: Path
) -> None:
    """--fast checks metadata (and hashes what changed); a write that also set the mtime back
    (or bit rot) shows only when every byte is hashed."""
    staged = stage_folder(cache, make_dataset(tmp_path / "d", {"a": b"a" * 64, "b": b"b" * 64}))
    obj_a = cache.object_path(hashlib.sha256(b"a" * 64).hexdigest())
    with open(obj_a, "r+b") as f:
        f.write(b"A")
    fast = cache.verify(full=False)
    assert [(p.kind, p.path) for p in fast.problems] == [("corrupt_file", "a")]
    assert fast.bytes_hashed == 64  # only the changed file was read
    assert not cache.verify(repair=True, full=False).unrepaired
    obj_b = cache.object_path(hashlib.sha256(b"b" * 64).hexdigest())
    st = obj_b.stat()
    with open(obj_b, "r+b") as f:
        f.write(b"B")
    os.utime(obj_b, ns=(st.st_atime_ns, st.st_mtime_ns))  # the metadata put back
    assert cache.verify(full=False).problems == []
    assert [(p.kind, p.path) for p in cache.verify().problems] == [("corrupt_file", "b")]
    assert (staged.path / "a").read_bytes() == b"a" * 64


def test_cli_verify_fast_reports_in_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from typer.testing import CliRunner

    from mlstage.cli.cache_cmd import app

    monkeypatch.setenv("MLSTAGE_HOME", str(tmp_path / "home"))
    stage_folder(
        LocalCache(tmp_path / "home" / "cache"), make_dataset(tmp_path / "d", {"f": b"data"})
    )
    res = CliRunner().invoke(app, ["verify", "--fast", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["ok"] and report["bytes_hashed"] == 0 and report["files"] == 1


SCRATCH_AND_DIE = """
import os, sys
from mlstage.cache import LocalCache
with LocalCache(sys.argv[1]).scratch("recipe") as out:
    (out / "part.bin").write_bytes(b"x" * 1000)
    print(out, flush=True)
    os._exit(9)  # killed midway: the folder stays behind
"""


def test_scratch_lives_on_the_cache_disk_and_gc_removes_only_abandoned_ones(
    cache: LocalCache,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRATCH_AND_DIE, str(cache.root)], capture_output=True, text=True
    )
    left = Path(done.stdout.strip())
    assert left.is_relative_to(cache.root) and (left / "part.bin").exists()
    with cache.scratch("recipe") as out:
        assert out.is_relative_to(cache.root / "tmp") and not any(out.iterdir())
        (out / "mine").write_text("in use")
        report = cache.gc()  # the dead process's goes, the one in use stays
        assert not left.parent.exists() and (out / "mine").exists()
        assert report.stray_dirs_removed == 1
    assert not out.parent.exists()  # removed after the block
