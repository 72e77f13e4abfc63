"""The concurrent fetch engine: every missing object fetched at once, verified, resumable.

``Transfer.fetch`` takes the objects a Source must deliver and yields each verified file as
soon as it lands (completion order), so a consumer can start on the first one. Objects larger
than ``part_size`` are split into ranged reads that run in parallel and are journalled, so a
killed transfer resumes from its completed parts. Every object is checked (size, plus checksum
where the source gives one) before it is yielded; nothing unverified is ever handed out.
A ``mirror`` gets each chunk as it arrives, before the object is checked; ``Fetched.mirrored``
vouches for that copy only once the object passed (until then it is the consumer's hidden
work in progress, like the cache's own temporary file).
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from mlstage.errors import IntegrityError, MlstageError, TransientError
from mlstage.fileio import pwrite_all
from mlstage.manifest import Entry
from mlstage.retry import RetryPolicy, gave_up
from mlstage.sources.base import WHOLE_CHECKSUM, CorruptData, RemoteObject, Source

if TYPE_CHECKING:
    from mlstage.materialize import MirrorFile

try:
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - isal is a dependency; zlib gives the same values
    from zlib import crc32 as _crc32

BytesCallback = Callable[[int], None]
# The second copy of an entry, written while it is fetched (None: no copy), e.g.
# ``Materializer.mirror``. The copy is best effort: Fetched.mirrored says whether it completed.
Mirror = Callable[[Entry], "MirrorFile | None"]
_BUF = 1024 * 1024


@dataclass(frozen=True)
class Fetched:
    """A verified file in the transfer's workdir; the consumer moves it away."""

    entry: Entry
    path: Path
    digest: str  # sha256 hex of the content
    mirrored: bool = False  # the Mirror's file holds the same verified bytes
    placed: os.stat_result | None = None  # the file's fstat once written (None: unknown)


@dataclass
class TransferStats:
    objects: int = 0
    bytes_fetched: int = 0
    retries: int = 0
    started: float = field(default_factory=time.monotonic)
    first_object_seconds: float | None = None

    def note_first(self) -> None:
        if self.first_object_seconds is None:
            self.first_object_seconds = time.monotonic() - self.started


class _Mismatch(CorruptData):
    """Bytes that do not match: retried like a transient error, reported as IntegrityError."""


class _Crc32:
    """CRC32 behind hashlib's interface (S3's default checksum).

    ISA-L's (the ``isal`` package) where installed: 10 GB/s against zlib's 3 GB/s here.
    """

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes) -> None:
        self.value = _crc32(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value:08x}"


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


_CHECKERS: dict[str, Callable[[], _Hasher]] = {
    "md5": hashlib.md5,
    "sha1": hashlib.sha1,
    "crc32": _Crc32,
}


def _hashers(checksum: str | None) -> dict[str, _Hasher]:
    """sha256 (the cache's content address) plus whatever ``checksum`` needs."""
    hs: dict[str, _Hasher] = {"sha256": hashlib.sha256()}
    algo = checksum.partition(":")[0] if checksum else ""
    if algo in _CHECKERS:
        hs[algo] = _CHECKERS[algo]()
    return hs


def _check(label: str, checksum: str | None, hs: dict[str, _Hasher], uri: str) -> None:
    if not checksum:
        return
    algo, _, want = checksum.partition(":")
    h = hs.get(algo)
    if h is not None and h.hexdigest() != want:
        raise _Mismatch(f"{uri}: {label} has {algo} {h.hexdigest()}, expected {want}")


def _expected(obj: RemoteObject) -> str | None:
    """The checksum to verify: an S3 ETag is no MD5 under SSE-KMS/SSE-C (the source says so)."""
    if obj.checksum and obj.checksum.startswith("md5:") and obj.meta.get("etag_is_not_md5"):
        return None
    return obj.checksum


def _whole_expected(obj: RemoteObject) -> str | None:
    """For a whole read: the checksum its response carried, else the listed one."""
    return obj.meta.get(WHOLE_CHECKSUM) or _expected(obj)


def _check_whole(obj: RemoteObject, hs: dict[str, _Hasher], uri: str) -> None:
    """A whole read's checks: its response's checksum (else the listed one), and a listed
    sha256 as well, since every read computes one (a response's checksum vouches only for
    what the server holds now, not for the content the manifest names)."""
    _check(obj.key, _whole_expected(obj), hs, uri)
    listed = _expected(obj)
    if listed and listed.startswith("sha256:"):
        _check(obj.key, listed, hs, uri)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_BUF):
            h.update(chunk)
    return h.hexdigest()


class _InOrderHash:
    """Hash a multi-part download in file order while later parts are still arriving.

    Parts complete out of order; whichever thread finds the next part in order complete
    hashes forward from the file (page cache) as far as it can, so at the end only the tail
    remains. Parts completed by an earlier, killed run count as complete.
    """

    def __init__(
        self, data: Path, part_size: int, nparts: int, checksum: str | None, done: set[int]
    ) -> None:
        self.data = data
        self.part_size = part_size
        self.nparts = nparts
        self.hs = _hashers(checksum)
        self.done = set(done)
        self.next = 0
        self._state = threading.Lock()
        self._hashing = threading.Lock()

    def completed(self, i: int) -> None:
        with self._state:
            self.done.add(i)

    def advance(self, *, block: bool) -> None:
        if not self._hashing.acquire(blocking=block):
            return  # another thread is hashing; it (or finish) picks this part up
        try:
            with open(self.data, "rb") as f:
                while True:
                    with self._state:
                        if self.next not in self.done:
                            return
                        i = self.next
                    f.seek(i * self.part_size)
                    left = self.part_size
                    while left > 0 and (chunk := f.read(min(_BUF, left))):
                        left -= len(chunk)
                        for h in self.hs.values():
                            h.update(chunk)
                    with self._state:
                        self.next = i + 1
        finally:
            self._hashing.release()

    def finish(self) -> dict[str, _Hasher]:
        """The hashes over the whole file, once every part is complete."""
        self.advance(block=True)
        if self.next != self.nparts:
            raise AssertionError(f"hashed {self.next} of {self.nparts} parts")
        return self.hs


class Transfer:
    """Fetch many objects from one source into ``workdir`` concurrently."""

    def __init__(
        self,
        source: Source,
        workdir: Path,
        *,
        workers: int = 16,
        part_size: int = 16 * 1024 * 1024,
        retry: RetryPolicy | None = None,
        on_bytes: BytesCallback | None = None,
        mirror: Mirror | None = None,
    ) -> None:
        self.source = source
        self.workdir = workdir
        self.workers = workers
        self.part_size = part_size
        self.retry = retry or RetryPolicy()
        self.on_bytes = on_bytes
        self.mirror = mirror
        self._mirrors: set[MirrorFile] = set()  # open ones, closed however the transfer ends
        self.stats = TransferStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._serial = 0  # names of local copies in the workdir

    # -- public -------------------------------------------------------------------------
    def fetch(self, objects: Sequence[RemoteObject]) -> Iterator[Fetched]:
        """Yield every entry of ``objects`` as a verified file, in completion order.

        The first failure stops the rest (queued objects are dropped, retries give up) and is
        raised here; completed parts stay journalled for the next attempt.
        """
        for batch in self.fetch_batches(objects):
            yield from batch

    def fetch_batches(
        self, objects: Iterable[RemoteObject], max_batch: int = 256
    ) -> Iterator[list[Fetched]]:
        """Like ``fetch``, but each step yields every file completed so far (at least one).

        Lets a consumer with a per-step cost (one index transaction) pay it per batch; a
        batch never waits for more work, so the first file arrives as early as with ``fetch``.
        ``objects`` is read lazily, a window of them in flight at a time, so a million-object
        transfer holds a few hundred in memory, not a million.
        """
        self._stop.clear()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if getattr(self.source, "local", False):
            yield from self._copy_batches(objects, max_batch)
            return
        results: queue.Queue[list[Fetched] | BaseException] = queue.Queue()
        pending = 0
        todo = iter(objects)
        window = max(64, 4 * self.workers)
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="mlstage-fetch")
        interrupted = True
        try:
            failed: BaseException | None = None
            while True:
                while pending < window and (obj := next(todo, None)) is not None:
                    pending += 1
                    if self._split(obj):
                        self._submit_parts(pool, obj, results)
                    else:
                        pool.submit(self._guard, self._fetch_whole, obj, results)
                if not pending:
                    break
                item = results.get()
                batch: list[Fetched] = []
                done = 0
                while True:
                    if isinstance(item, BaseException):
                        self._stop.set()  # queued work is dropped, retrying work gives up
                        failed = item
                        break
                    pending -= 1
                    done += 1
                    batch.extend(item)
                    if not pending or len(batch) >= max_batch:
                        break
                    try:
                        item = results.get_nowait()
                    except queue.Empty:
                        break
                if done:
                    with self._lock:
                        self.stats.objects += done
                        self.stats.note_first()
                if batch:
                    yield batch
                if failed is not None:
                    interrupted = False
                    raise failed
            interrupted = False
        finally:
            self._stop.set()
            # a consumer interrupted (SIGTERM, Ctrl-C, a closed generator) does not wait for
            # reads blocked on the network (a silent endpoint holds them for the read timeout):
            # completed parts are journalled; an unfinished one is fetched again next time
            pool.shutdown(wait=not interrupted, cancel_futures=True)
            for copy in list(self._mirrors):  # objects that never finished: not copies
                copy.fail()
                if not interrupted:  # else a worker may still hold its descriptor: left open
                    self._close_mirror(copy)  # (the process is exiting, which closes it)

    def _copy_batches(
        self, objects: Iterable[RemoteObject], max_batch: int
    ) -> Iterator[list[Fetched]]:
        """Local files, copied in this thread one after another in batches.

        A folder on this node costs a few system calls a file; a thread pool would add more
        (16 workers were slower than one on 10,000 small files: ~150 futex calls a file).
        Each file is read once: hashed, written to the workdir and mirrored from memory.
        """
        batch: list[Fetched] = []
        try:
            for obj in objects:
                if self._stop.is_set():
                    return
                batch.extend(self._copy_local(obj))
                with self._lock:
                    self.stats.objects += 1
                    self.stats.note_first()
                if len(batch) >= max_batch:
                    yield batch
                    batch = []
            if batch:
                yield batch
        finally:
            for copy in list(self._mirrors):
                copy.fail()
                self._close_mirror(copy)

    def _copy_local(self, obj: RemoteObject) -> list[Fetched]:
        """One file of a local source, verified (size, listed checksum) into the workdir."""
        self._serial += 1
        tmp = f"{self.workdir}/{os.getpid()}.{self._serial}.tmp"
        hs = _hashers(_expected(obj))
        copy = self._mirror_for(obj)
        got = 0
        try:
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            try:
                for chunk in self.source.read(obj, 0, obj.size):
                    pwrite_all(out, chunk, got)
                    if copy is not None:
                        copy.write(chunk, got)
                    for h in hs.values():
                        h.update(chunk)
                    got += len(chunk)
                    self._count(len(chunk))
                st = os.fstat(out)
            finally:
                os.close(out)
            if got != obj.size:
                raise IntegrityError(
                    f"{self.source.uri}: {obj.key} has {got} bytes, {obj.size} listed",
                    hint="the folder changed while it was staged: stage it again",
                )
            try:
                _check(obj.key, _expected(obj), hs, self.source.uri)
            except _Mismatch as exc:
                raise IntegrityError(str(exc), hint="the source changed; re-resolve") from exc
        except BaseException:
            with suppress(OSError):
                os.unlink(tmp)
            if copy is not None:
                copy.fail()
            self._close_mirror(copy)
            raise
        mirrored = self._close_mirror(copy)
        return self._deliver(obj, Path(tmp), hs["sha256"].hexdigest(), mirrored=mirrored, placed=st)

    # -- internals ----------------------------------------------------------------------
    def _split(self, obj: RemoteObject) -> bool:
        """Whether to fetch ``obj`` as parallel ranged parts: every one larger than
        ``part_size``, when the source reads ranges.

        One connection to a remote object store rarely fills a fast link (TCP window x
        latency, the store's per-request rate), so large objects always come as parallel
        ranged GETs, as AWS's performance guidance says. (An emulator may pay more per range:
        moto reads the whole object for each; the benchmark notes it, the engine does not
        tune for it.)
        """
        return self.source.supports_ranges and obj.size > self.part_size

    def _guard(
        self, fn: Callable[..., list[Fetched] | None], obj: RemoteObject, results: queue.Queue
    ) -> None:
        if self._stop.is_set():
            return
        try:
            out = fn(obj)
            if out is not None:
                results.put(out)
        except CorruptData as exc:
            results.put(
                IntegrityError(str(exc), hint="the source changed or corrupts data; re-resolve")
            )
        except TransientError as exc:
            results.put(gave_up(exc, "the source keeps failing; retry later or lower --workers"))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
            results.put(exc)

    def _name(self, obj: RemoteObject) -> str:
        ident = f"{self.source.uri}\0{obj.key}\0{obj.checksum}\0{obj.etag}\0{obj.size}"
        return hashlib.sha256(ident.encode()).hexdigest()[:40]

    def _count(self, n: int) -> None:
        with self._lock:
            self.stats.bytes_fetched += n
        if self.on_bytes:
            self.on_bytes(n)

    def _uncount(self, n: int) -> None:
        """A failed attempt's bytes leave the progress bar (they stay in bytes_fetched)."""
        if n and self.on_bytes:
            self.on_bytes(-n)

    def _on_retry(self, exc: Exception) -> None:
        if self._stop.is_set():
            raise exc  # the transfer failed elsewhere: no point retrying
        with self._lock:
            self.stats.retries += 1

    def _fetch_whole(self, obj: RemoteObject) -> list[Fetched]:
        final = self.workdir / f"{self._name(obj)}.obj"
        if final.exists() and final.stat().st_size == obj.size:
            # verified by an earlier, interrupted run; check it again cheaply (local read)
            hs = _hashers(obj.checksum)
            with open(final, "rb") as f:
                while chunk := f.read(_BUF):
                    for h in hs.values():
                        h.update(chunk)
            try:
                _check(obj.key, _expected(obj), hs, self.source.uri)
                return self._deliver(obj, final, hs["sha256"].hexdigest())
            except _Mismatch:
                final.unlink()

        copy = self._mirror_for(obj)

        def attempt() -> str:
            # unique per thread and process: two stagings may share a source and an object
            tmp = self.workdir / f"{self._name(obj)}.{os.getpid()}.{threading.get_ident()}.tmp"
            obj.meta.pop(WHOLE_CHECKSUM, None)
            hs: dict[str, _Hasher] | None = None  # chosen once the response headers are in
            got = 0
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
                try:
                    for chunk in self.source.read(obj, 0, obj.size):
                        if hs is None:
                            hs = _hashers(_whole_expected(obj))
                        got += len(chunk)
                        if got > obj.size:
                            raise _Mismatch(
                                f"{self.source.uri}: {obj.key} is longer than its {obj.size} bytes"
                            )
                        pwrite_all(fd, chunk, got - len(chunk))
                        if copy is not None:
                            copy.write(chunk, got - len(chunk))
                        for h in hs.values():
                            h.update(chunk)
                        self._count(len(chunk))
                finally:
                    os.close(fd)
                if got != obj.size:
                    raise TransientError(
                        f"{self.source.uri}: {obj.key} truncated at {got} of {obj.size} bytes"
                    )
                if hs is None:
                    hs = _hashers(_whole_expected(obj))
                _check_whole(obj, hs, self.source.uri)
                os.replace(tmp, final)
            except BaseException:
                tmp.unlink(missing_ok=True)
                self._uncount(got)
                raise
            return hs["sha256"].hexdigest()

        try:
            digest = self.retry.call(attempt, on_retry=self._on_retry)
        except BaseException:
            if copy is not None:
                copy.fail()
            self._close_mirror(copy)
            raise
        return self._deliver(obj, final, digest, mirrored=self._close_mirror(copy))

    def _mirror_for(self, obj: RemoteObject) -> MirrorFile | None:
        """The second copy of ``obj`` if the consumer asked for one (never for archives)."""
        if self.mirror is None or obj.archive:
            return None
        try:
            copy = self.mirror(obj.entries[0])
        except Exception:  # noqa: BLE001 - the copy is best effort: the consumer copies later
            return None
        if copy is None:
            return None
        with self._lock:
            self._mirrors.add(copy)
        return copy

    def _close_mirror(self, copy: MirrorFile | None) -> bool:
        """Close ``copy``; True if it holds every byte."""
        if copy is None:
            return False
        with self._lock:
            self._mirrors.discard(copy)
        return copy.close()

    def _submit_parts(
        self, pool: ThreadPoolExecutor, obj: RemoteObject, results: queue.Queue
    ) -> None:
        name = self._name(obj)
        data = self.workdir / f"{name}.part"
        journal = self.workdir / f"{name}.parts"
        nparts = (obj.size + self.part_size - 1) // self.part_size
        header = f"part_size {self.part_size}"  # part i's bytes depend on it
        done: set[int] = set()
        if data.exists() and journal.exists() and data.stat().st_size == obj.size:
            # only whole lines count: a kill may interrupt the last one
            lines = journal.read_text().split("\n")
            if lines[0] == header:
                done = {int(x) for x in lines[1:-1] if x.isdigit() and int(x) < nparts}
        if not done:
            with open(data, "wb") as f:
                f.truncate(obj.size)
            journal.write_text(header + "\n")
        todo = [i for i in range(nparts) if i not in done]
        copy = None if done else self._mirror_for(obj)  # parts of an earlier run: copy later
        remaining = [len(todo)]
        lock = threading.Lock()
        hashing = _InOrderHash(data, self.part_size, nparts, obj.checksum, done)

        def part(i: int) -> list[Fetched] | None:
            start = i * self.part_size
            end = min(obj.size, start + self.part_size)

            def attempt() -> None:
                fd = os.open(data, os.O_WRONLY)
                pos = start
                try:
                    for chunk in self.source.read(obj, start, end):
                        if pos + len(chunk) > end:
                            raise _Mismatch(
                                f"{self.source.uri}: {obj.key} part {i} is longer than asked"
                            )
                        pwrite_all(fd, chunk, pos)
                        if copy is not None:
                            copy.write(chunk, pos)
                        pos += len(chunk)
                        self._count(len(chunk))
                    if pos != end:
                        raise TransientError(
                            f"{self.source.uri}: {obj.key} part {i} truncated at {pos - start} of {end - start} bytes"
                        )
                except BaseException:
                    self._uncount(pos - start)
                    raise
                finally:
                    os.close(fd)

            self.retry.call(attempt, on_retry=self._on_retry)
            with lock:
                with open(journal, "a") as j:
                    j.write(f"{i}\n")
                remaining[0] -= 1
                last = remaining[0] == 0
            hashing.completed(i)
            if last:
                return self._finish_parts(obj, data, journal, hashing, copy)
            hashing.advance(block=False)  # hash while later parts are still in flight
            return None

        if not todo:
            pool.submit(
                self._guard, lambda o: self._finish_parts(o, data, journal, hashing), obj, results
            )
        for i in todo:
            pool.submit(self._guard, lambda _o, i=i: part(i), obj, results)

    def _finish_parts(
        self,
        obj: RemoteObject,
        data: Path,
        journal: Path,
        hashing: _InOrderHash,
        copy: MirrorFile | None = None,
    ) -> list[Fetched]:
        hs = hashing.finish()
        mirrored = self._close_mirror(copy)
        try:
            _check(obj.key, _expected(obj), hs, self.source.uri)
        except _Mismatch:
            # a part went bad without a size change: fetch the object again in one stream
            data.unlink(missing_ok=True)
            journal.unlink(missing_ok=True)
            self._uncount(obj.size)
            with self._lock:
                self.stats.retries += 1
            return self._fetch_whole(obj)
        final = self.workdir / f"{self._name(obj)}.obj"
        os.replace(data, final)
        journal.unlink(missing_ok=True)
        return self._deliver(obj, final, hs["sha256"].hexdigest(), mirrored=mirrored)

    def _deliver(
        self,
        obj: RemoteObject,
        path: Path,
        digest: str,
        *,
        mirrored: bool = False,
        placed: os.stat_result | None = None,
    ) -> list[Fetched]:
        if not obj.archive:
            return [Fetched(obj.entries[0], path, digest, mirrored, placed)]
        out_dir = self.workdir / f"{self._name(obj)}.members"
        out: list[Fetched] = []
        try:
            for entry, member in self.source.unpack(obj, path, out_dir):
                hs = _hashers(entry.checksum)
                with open(member, "rb") as f:
                    while chunk := f.read(_BUF):
                        for h in hs.values():
                            h.update(chunk)
                try:
                    _check(f"{obj.key}:{entry.path}", entry.checksum, hs, self.source.uri)
                except _Mismatch as exc:
                    raise IntegrityError(
                        str(exc), hint="the archive does not match its listing"
                    ) from exc
                out.append(Fetched(entry, member, hs["sha256"].hexdigest()))
        except MlstageError:
            path.unlink(missing_ok=True)
            raise
        path.unlink(missing_ok=True)
        return out
