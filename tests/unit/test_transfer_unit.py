"""The transfer engine against an in-memory source with scripted failures."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlstage.errors import IntegrityError, SourceError, TransientError
from mlstage.manifest import Entry, Manifest
from mlstage.materialize import MirrorFile
from mlstage.retry import RetryPolicy
from mlstage.sources.base import WHOLE_CHECKSUM, FileObjectSource, RemoteObject
from mlstage.transfer import Transfer

FAST = RetryPolicy(attempts=4, base_seconds=0.0, max_seconds=0.0)


class Killed(BaseException):
    """Stands in for kill -9: not an Exception, not retried."""


class MemorySource(FileObjectSource):
    def __init__(self, files: dict[str, bytes], *, md5: bool = True) -> None:
        self.uri = "mem://test"
        self.files = files
        self.md5 = md5
        self.reads: Counter[tuple[str, int]] = Counter()
        self.truncate: Counter[str] = Counter()  # key -> how many reads to cut short
        self.corrupt: Counter[str] = Counter()
        self.die_after: int | None = None  # reads before "kill -9"
        self.lock = threading.Lock()

    def resolve(self) -> Manifest:
        return Manifest(
            source=self.uri,
            entries=[
                Entry(
                    path=k,
                    size=len(v),
                    checksum=f"md5:{hashlib.md5(v).hexdigest()}" if self.md5 else None,
                    locator=k,
                )
                for k, v in self.files.items()
            ],
        )

    def read(self, obj: RemoteObject, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        end = obj.size if end is None else end
        with self.lock:
            self.reads[(obj.key, start)] += 1
            if self.die_after is not None:
                if self.die_after == 0:
                    raise Killed()
                self.die_after -= 1
            cut = self.truncate[obj.key] > 0
            if cut:
                self.truncate[obj.key] -= 1
            bad = self.corrupt[obj.key] > 0
            if bad:
                self.corrupt[obj.key] -= 1
        data = self.files[obj.key][start:end]
        if cut:
            data = data[: len(data) // 2]
        if bad:
            data = bytes([data[0] ^ 1]) + data[1:]
        for i in range(0, len(data), 1000):
            yield data[i : i + 1000]


def _run(src: MemorySource, work: Path, **kw: object) -> dict[str, bytes]:
    t = Transfer(src, work, workers=4, part_size=4096, retry=FAST, **kw)  # type: ignore[arg-type]
    out = {}
    for f in t.fetch(src.objects(src.resolve().entries)):
        out[f.entry.path] = f.path.read_bytes()
        assert f.digest == hashlib.sha256(out[f.entry.path]).hexdigest()
    return out


def test_truncated_and_corrupted_bodies_are_retried(tmp_path: Path) -> None:
    files = {"small": b"s" * 1000, "big": bytes(range(256)) * 100}
    src = MemorySource(files)
    src.truncate.update({"small": 2, "big": 1})
    src.corrupt.update({"small": 1})
    assert _run(src, tmp_path) == files


def test_corruption_that_persists_is_an_integrity_error(tmp_path: Path) -> None:
    src = MemorySource({"a": b"a" * 100})
    src.corrupt["a"] = 100
    with pytest.raises(IntegrityError, match="md5"):
        _run(src, tmp_path)


def test_giving_up_names_the_object(tmp_path: Path) -> None:
    src = MemorySource({"a": b"a" * 100}, md5=False)
    src.truncate["a"] = 100
    with pytest.raises(SourceError, match="gave up") as info:
        _run(src, tmp_path)
    assert isinstance(info.value.__cause__, TransientError)


def test_killed_multipart_transfer_resumes_from_completed_parts(tmp_path: Path) -> None:
    big = bytes(range(256)) * 160  # 40960 bytes: 10 parts of 4096
    src = MemorySource({"big": big}, md5=True)
    src.die_after = 5
    with pytest.raises(Killed):
        _run(src, tmp_path)
    first = dict(src.reads)
    src.die_after = None
    src.reads.clear()
    assert _run(src, tmp_path) == {"big": big}
    # parts read the second time were not completed the first time
    assert sum(src.reads.values()) <= 10 - 5 + 4  # at most the in-flight ones again
    assert set(src.reads) | set(first) == {("big", i * 4096) for i in range(10)}


def test_parts_journalled_with_another_part_size_are_fetched_again(tmp_path: Path) -> None:
    big = bytes(range(256)) * 160  # 40960 bytes: 10 parts of 4096, or 2 of 32768
    src = MemorySource({"big": big}, md5=False)  # no checksum: only the journal vouches
    src.die_after = 4
    with pytest.raises(Killed):
        _run(src, tmp_path)  # parts 0..3 (of 4096) journalled
    src.die_after = None
    t = Transfer(src, tmp_path, workers=4, part_size=32768, retry=FAST)  # another part size
    [fetched] = list(t.fetch(src.objects(src.resolve().entries)))
    assert fetched.path.read_bytes() == big  # before: "parts 0..3 done" covered it all, zeros
    assert t.stats.bytes_fetched == len(big)


def test_objects_stream_as_they_complete(tmp_path: Path) -> None:
    files = {f"f{i}": bytes([i]) * 500 for i in range(20)}
    src = MemorySource(files)
    t = Transfer(src, tmp_path, workers=4, retry=FAST)
    it = t.fetch(src.objects(src.resolve().entries))
    first = next(it)
    assert first.path.exists() and t.stats.first_object_seconds is not None
    rest = list(it)
    assert len(rest) == 19


def test_an_etag_the_source_disowns_is_not_checked_as_md5(tmp_path: Path) -> None:
    class KmsSource(MemorySource):
        """S3 under SSE-KMS: the ETag is not the MD5, and the GET response says so."""

        def read(
            self, obj: RemoteObject, start: int = 0, end: int | None = None
        ) -> Iterator[bytes]:
            obj.meta["etag_is_not_md5"] = "1"
            return super().read(obj, start, end)

    src = KmsSource({"a": b"x" * 100})
    entry = src.resolve().entries[0]._replace(checksum="md5:" + "0" * 32)
    t = Transfer(src, tmp_path, retry=FAST)
    assert [f.path.read_bytes() for f in t.fetch(src.objects([entry]))] == [b"x" * 100]
    with pytest.raises(IntegrityError):  # without the source's word, the check applies
        list(
            Transfer(MemorySource({"a": b"x" * 100}), tmp_path / "2", retry=FAST).fetch(
                MemorySource({"a": b"x" * 100}).objects([entry])
            )
        )


def test_a_failure_stops_the_rest_quickly(tmp_path: Path) -> None:
    files = {f"f{i}": b"x" * 100 for i in range(50)}
    src = MemorySource(files, md5=False)
    src.corrupt.update(dict.fromkeys(files, 1))  # harmless without checksums
    src.truncate.update(dict.fromkeys(files, 1000))  # every object keeps failing
    slow = RetryPolicy(attempts=50, base_seconds=0.05, max_seconds=0.05)
    t = Transfer(src, tmp_path, workers=4, retry=slow)
    with pytest.raises(SourceError):
        list(t.fetch(src.objects(src.resolve().entries)))
    # 50 objects x 50 attempts would be 2,500 reads; stopping early leaves far fewer
    assert sum(src.reads.values()) < 500


class CrcSource(MemorySource):
    """S3 with checksum mode: every whole GET carries the object's CRC32 (as sent, or wrong)."""

    def __init__(self, files: dict[str, bytes], crc: dict[str, int] | None = None) -> None:
        super().__init__(files, md5=False)
        self.crc = crc or {}

    def read(self, obj: RemoteObject, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        value = self.crc.get(obj.key, zlib.crc32(self.files[obj.key]))
        obj.meta[WHOLE_CHECKSUM] = f"crc32:{value:08x}"
        return super().read(obj, start, end)


def test_the_checksum_a_whole_read_carries_is_verified(tmp_path: Path) -> None:
    data = {"a": b"a" * 1000, "b": b"b" * 1000}
    src = CrcSource(data)
    got = {
        f.entry.path: f.path.read_bytes()
        for f in Transfer(src, tmp_path, retry=FAST).fetch(src.objects(src.resolve().entries))
    }
    assert got == data
    bad = CrcSource(data, crc={"b": 12345})  # the bytes do not match what the response says
    with pytest.raises(IntegrityError, match="crc32"):
        list(Transfer(bad, tmp_path / "2", retry=FAST).fetch(bad.objects(bad.resolve().entries)))


def test_a_response_checksum_replaces_the_md5_and_a_bad_body_is_refetched(tmp_path: Path) -> None:
    src = CrcSource({"a": b"x" * 5000})
    src.corrupt["a"] = 1  # first body has a flipped byte: the CRC catches it, the retry is clean
    entry = src.resolve().entries[0]._replace(checksum="md5:" + "0" * 32)
    t = Transfer(src, tmp_path, retry=FAST)
    [fetched] = list(t.fetch(src.objects([entry])))
    assert fetched.path.read_bytes() == b"x" * 5000
    assert fetched.digest == hashlib.sha256(b"x" * 5000).hexdigest()
    assert t.stats.retries == 1


def test_a_listed_sha256_is_checked_even_when_the_response_carries_a_checksum(
    tmp_path: Path,
) -> None:
    src = CrcSource({"a": b"evil-bytes"})  # the server's CRC matches what it now holds
    listed = "sha256:" + hashlib.sha256(b"the content the manifest names").hexdigest()
    entry = src.resolve().entries[0]._replace(checksum=listed)
    with pytest.raises(IntegrityError, match="sha256"):
        list(Transfer(src, tmp_path, retry=FAST).fetch(src.objects([entry])))
    assert not list(tmp_path.rglob("*.obj"))  # nothing was kept as verified


def test_crc32_checker_matches_zlib_across_chunks() -> None:
    """The CRC32 checker (ISA-L's where installed) gives zlib's value, chunk by chunk."""
    from mlstage.transfer import _CHECKERS, _crc32

    assert _crc32.__module__.startswith("isal")  # installed with mlstage: not the fallback
    data = os.urandom(300_000)
    h = _CHECKERS["crc32"]()
    for i in range(0, len(data), 70_000):
        h.update(memoryview(data)[i : i + 70_000] if i else data[:70_000])
    assert h.hexdigest() == f"{zlib.crc32(data):08x}"


def _mirrored_run(src: MemorySource, work: Path, mirror_dir: Path, **kw: object) -> dict[str, bool]:
    """Fetch everything with a mirror into ``mirror_dir``; path -> Fetched.mirrored."""
    mirror_dir.mkdir(exist_ok=True)
    asked: list[str] = []

    def mirror(entry: Entry) -> MirrorFile:
        asked.append(entry.path)
        return MirrorFile(str(mirror_dir / entry.path))

    t = Transfer(src, work, workers=4, part_size=4096, retry=FAST, mirror=mirror, **kw)  # type: ignore[arg-type]
    return {f.entry.path: f.mirrored for f in t.fetch(src.objects(src.resolve().entries))}


def test_mirror_gets_the_verified_bytes_of_whole_and_ranged_objects(tmp_path: Path) -> None:
    files = {
        "small": b"s" * 1000,
        "whole": bytes(range(256)) * 20,  # 5120 bytes: 2 parts, fetched in one stream
        "ranged": bytes(range(256)) * 160,  # 10 parts of 4096, fetched in parallel
    }
    src = MemorySource(files)
    src.corrupt.update({"small": 1, "whole": 1})  # a bad first attempt is written over
    src.truncate.update({"ranged": 2})
    src.corrupt.update({"ranged": 1})  # one bad part: the md5 fails, fetched again whole
    assert _mirrored_run(src, tmp_path / "w", tmp_path / "m") == dict.fromkeys(files, True)
    for name, data in files.items():
        assert (tmp_path / "m" / name).read_bytes() == data


def test_mirror_that_cannot_be_written_is_dropped_not_fatal(tmp_path: Path) -> None:
    src = MemorySource({"a": b"a" * 100, "b/c": b"c" * 9000})
    # the mirror folder has no "b/" subfolder and "a"'s path is a folder: both copies fail
    (tmp_path / "m" / "a").mkdir(parents=True)
    got = _mirrored_run(src, tmp_path / "w", tmp_path / "m")
    assert got == {"a": False, "b/c": False}
    assert not (tmp_path / "m" / "b").exists()


def test_resumed_parts_are_not_mirrored(tmp_path: Path) -> None:
    big = bytes(range(256)) * 160
    src = MemorySource({"big": big})
    src.die_after = 5
    with pytest.raises(Killed):
        _mirrored_run(src, tmp_path / "w", tmp_path / "m")
    src.die_after = None
    # the bytes of the killed run's parts are in the journal, not the copy: copy it later
    assert _mirrored_run(src, tmp_path / "w", tmp_path / "m2") == {"big": False}
    assert not (tmp_path / "m2" / "big").exists()


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def test_a_copy_that_fills_its_disk_is_removed_and_not_vouched_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlstage.materialize as mat

    real = mat.pwrite_all

    def pwrite_all(fd: int, data: bytes, pos: int) -> None:
        if _fd_path(fd).startswith(str(tmp_path / "m")) and pos > 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data, pos)

    monkeypatch.setattr(mat, "pwrite_all", pwrite_all)
    files = {"whole": b"w" * 3000, "ranged": bytes(range(256)) * 160}
    src = MemorySource(files)
    assert _mirrored_run(src, tmp_path / "w", tmp_path / "m") == dict.fromkeys(files, False)
    assert list((tmp_path / "m").iterdir()) == []  # half-written copies are removed


def test_a_copy_whose_close_fails_is_not_vouched_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlstage.transfer as tr

    real = os.close

    def close(fd: int) -> None:
        path = _fd_path(fd)
        real(fd)
        if path.startswith(str(tmp_path / "m")):
            raise OSError(errno.EDQUOT, "Disk quota exceeded")  # as NFS reports it

    monkeypatch.setattr(tr.os, "close", close)
    src = MemorySource({"a": b"a" * 100})
    assert _mirrored_run(src, tmp_path / "w", tmp_path / "m") == {"a": False}
    assert not (tmp_path / "m" / "a").exists()


def test_copies_hold_descriptors_only_while_their_object_is_fetched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hundreds of large objects must not open hundreds of copies at once (EMFILE)."""

    open_now: set[int] = set()
    most = [0]
    lock = threading.Lock()
    real_open, real_close = MirrorFile._open, MirrorFile.close

    def opened(self: MirrorFile) -> int | None:
        fd = real_open(self)
        with lock:
            open_now.add(id(self))
            most[0] = max(most[0], len(open_now))
        return fd

    def closed(self: MirrorFile) -> bool:
        ok = real_close(self)
        with lock:
            open_now.discard(id(self))
        return ok

    monkeypatch.setattr(MirrorFile, "_open", opened)
    monkeypatch.setattr(MirrorFile, "close", closed)
    files = {f"{i:02d}": bytes([i]) * 40960 for i in range(30)}  # 30 objects of 10 parts
    src = MemorySource(files)
    assert _mirrored_run(src, tmp_path / "w", tmp_path / "m") == dict.fromkeys(files, True)
    assert most[0] <= 4  # the workers' objects, not all 30
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == files


class BlockedSource(MemorySource):
    """Every read of a key starting with "stuck" blocks until released (a silent endpoint)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(files, md5=False)
        self.release = threading.Event()
        self.blocked = threading.Semaphore(0)

    def read(self, obj: RemoteObject, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        if obj.key.startswith("stuck"):
            self.blocked.release()
            self.release.wait()
        yield from super().read(obj, start, end)


@pytest.mark.parametrize("signal_exc", [KeyboardInterrupt, SystemExit])
def test_an_interrupted_consumer_does_not_wait_for_blocked_reads(
    tmp_path: Path, signal_exc: type[BaseException]
) -> None:
    """Ctrl-C or SIGTERM arriving in the consumer: the transfer's pool is not joined (its
    workers may sit in a read for the whole read timeout); completed objects stay."""
    import time

    src = BlockedSource({"done": b"d" * 10, "stuck-1": b"x" * 10, "stuck-2": b"y" * 10})
    t = Transfer(src, tmp_path, workers=4, retry=FAST)
    batches = t.fetch_batches(src.objects(src.resolve().entries))
    first = next(batches)
    assert [f.entry.path for f in first] == ["done"]
    assert src.blocked.acquire(timeout=5) and src.blocked.acquire(timeout=5)
    threading.Timer(3, src.release.set).start()  # a read timeout, shortened
    started = time.monotonic()
    with pytest.raises(signal_exc):
        batches.throw(signal_exc())
    assert time.monotonic() - started < 1.0  # before: joined the blocked workers
    src.release.set()
    assert first[0].path.exists()
