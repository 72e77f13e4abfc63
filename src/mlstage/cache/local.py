"""LocalCache: the node-local, content-addressed cache every process on a node shares.

Layout under ``root``::

    index.sqlite            what is here (cache/index.py)
    objects/ab/abcdef...    each distinct content once, named by sha256, read-only
    datasets/<fingerprint>/ a complete dataset: a read-only tree of hard links into objects/
    manifests/<fp>.json     the manifest each dataset was built from (for verify and repair)
    tmp/                    transfers in flight, resumable
    locks/                  flock files: one per dataset (single-flight), leases, eviction

A dataset tree appears by one atomic rename once every object is verified, so no caller ever
sees it half-built. Single-flight: a stager holds the dataset's exclusive flock; everyone else
waits on it and then finds the finished tree. Locks die with their process, so kill -9 never
leaves a lock behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from mlstage.cache.index import CacheIndex, DatasetRow
from mlstage.errors import CacheError, ConfigError
from mlstage.manifest import Entry, Manifest
from mlstage.retry import RetryPolicy
from mlstage.sources.base import Source
from mlstage.transfer import BytesCallback, Fetched, Transfer

ObjectCallback = Callable[[Fetched], None]


@dataclass(frozen=True)
class StagedDataset:
    """A complete dataset on this node's disk, and what it took to get it there."""

    fingerprint: str
    path: Path
    files: int
    bytes: int
    hit: bool
    bytes_fetched: int = 0
    objects_fetched: int = 0
    seconds: float = 0.0
    first_object_seconds: float | None = None
    retries: int = 0

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


@dataclass(frozen=True)
class CacheStats:
    root: str
    datasets: int
    objects: int
    bytes: int
    limit_bytes: int


def _source_key(source: Source, entry: Entry) -> str:
    ident = f"{source.uri}\0{entry.locator}\0{entry.version_tag}\0{entry.size}"
    return hashlib.sha256(ident.encode()).hexdigest()


def _known_digest(entry: Entry) -> str | None:
    if entry.checksum and entry.checksum.startswith("sha256:"):
        return entry.checksum.removeprefix("sha256:")
    return None


@contextmanager
def _flock(path: Path, mode: int) -> Iterator[bool]:
    """Hold an flock on ``path``; yields False (without the lock) if LOCK_NB was refused."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _make_writable(root: Path) -> None:
    for dirpath, _dirs, _files in os.walk(root):
        os.chmod(dirpath, 0o755)


class LocalCache:
    """The node-local cache at ``root``; ``limit_bytes`` = 0 means no limit."""

    def __init__(self, root: Path, *, limit_bytes: int = 0) -> None:
        self.root = Path(root)
        self.limit_bytes = limit_bytes
        try:
            for sub in ("objects", "datasets", "manifests", "tmp", "locks"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(
                f"cannot create the cache at {self.root}: {exc.strerror}",
                hint="set MLSTAGE_CACHE_DIR to a writable folder",
            ) from exc
        self.index = CacheIndex(self.root / "index.sqlite")

    # -- paths --------------------------------------------------------------------------
    def object_path(self, digest: str) -> Path:
        return self.root / "objects" / digest[:2] / digest

    def dataset_path(self, fingerprint: str) -> Path:
        return self.root / "datasets" / fingerprint

    def manifest_path(self, fingerprint: str) -> Path:
        return self.root / "manifests" / f"{fingerprint}.json"

    def _lock(self, name: str) -> Path:
        return self.root / "locks" / f"{name}.lock"

    # -- lookups ------------------------------------------------------------------------
    def lookup(self, fingerprint: str) -> StagedDataset | None:
        """A complete dataset by fingerprint: one indexed query and one stat, whatever the size."""
        row = self.index.dataset(fingerprint)
        if row is None:
            return None
        path = self.dataset_path(fingerprint)
        if not path.is_dir():
            return None
        if time.time() - row.last_used > 1.0:
            self.index.touch(fingerprint)
        return StagedDataset(fingerprint, path, row.files, row.bytes, hit=True)

    def present(self, source: Source, entries: list[Entry]) -> dict[str, str]:
        """The entries whose content is already in the object store: path -> sha256.

        What a stage would not fetch again; a streaming reader yields these at once.
        """
        found: dict[str, str] = {}
        for e in entries:
            d = _known_digest(e)
            if d is not None:
                if self.index.has_object(d) and self.object_path(d).exists():
                    found[e.path] = d
                continue
            d = self.index.digest_for(_source_key(source, e))
            if d is not None and self.object_path(d).exists():
                found[e.path] = d
        return found

    def stats(self) -> CacheStats:
        return CacheStats(
            root=str(self.root),
            datasets=len(self.index.datasets_lru()),
            objects=self.index.object_count(),
            bytes=self.index.object_bytes(),
            limit_bytes=self.limit_bytes,
        )

    def manifest(self, fingerprint: str) -> Manifest | None:
        path = self.manifest_path(fingerprint)
        return Manifest.load(path) if path.exists() else None

    # -- staging ------------------------------------------------------------------------
    def stage(
        self,
        source: Source,
        manifest: Manifest,
        *,
        workers: int = 16,
        part_size: int = 16 * 1024 * 1024,
        retry: RetryPolicy | None = None,
        on_bytes: BytesCallback | None = None,
        on_object: ObjectCallback | None = None,
    ) -> StagedDataset:
        """Make ``manifest`` complete on this node, fetching only what is missing.

        Concurrent callers for the same fingerprint (threads, processes, pods sharing the
        folder) cause one download; the others wait and get the same tree.
        """
        fp = manifest.fingerprint
        started = time.monotonic()
        hit = self.lookup(fp)
        if hit is not None:
            return hit
        with _flock(self._lock(f"stage-{fp}"), fcntl.LOCK_EX):
            hit = self.lookup(fp)
            if hit is not None:
                return hit
            with _flock(self._lock("evict"), fcntl.LOCK_SH):
                staged = self._stage_locked(
                    source, manifest, workers, part_size, retry, on_bytes, on_object, started
                )
        if self.limit_bytes:
            self.evict(keep={fp}, wait=False)
        return staged

    def _stage_locked(
        self,
        source: Source,
        manifest: Manifest,
        workers: int,
        part_size: int,
        retry: RetryPolicy | None,
        on_bytes: BytesCallback | None,
        on_object: ObjectCallback | None,
        started: float,
    ) -> StagedDataset:
        fp = manifest.fingerprint
        digests: dict[str, str] = {}
        missing: list[Entry] = []
        for e in manifest.entries:
            d = _known_digest(e)
            if d is not None and self.index.has_object(d) and self.object_path(d).exists():
                digests[e.path] = d
                continue
            if d is None:
                d = self.index.digest_for(_source_key(source, e))
                if d is not None and self.object_path(d).exists():
                    digests[e.path] = d
                    continue
            missing.append(e)

        transfer = Transfer(
            source,
            self.root / "tmp" / hashlib.sha256(source.uri.encode()).hexdigest()[:16],
            workers=workers,
            part_size=part_size,
            retry=retry,
            on_bytes=on_bytes,
        )
        if missing:
            for fetched in transfer.fetch(source.objects(missing)):
                self._ingest(source, fetched)
                digests[fetched.entry.path] = fetched.digest
                if on_object:
                    on_object(fetched)
        absent = [e.path for e in manifest.entries if e.path not in digests]
        if absent:
            raise CacheError(
                f"{source.uri}: {len(absent)} entries were not delivered (first: {absent[0]})"
            )

        self._build_tree(manifest, digests)
        self.manifest_path(fp).write_text(manifest.to_json())
        now = time.time()
        self.index.add_dataset(
            DatasetRow(fp, manifest.source, len(manifest), manifest.total_bytes, now, now),
            digests.values(),
        )
        st = transfer.stats
        return StagedDataset(
            fp,
            self.dataset_path(fp),
            len(manifest),
            manifest.total_bytes,
            hit=False,
            bytes_fetched=st.bytes_fetched,
            objects_fetched=st.objects,
            seconds=time.monotonic() - started,
            first_object_seconds=st.first_object_seconds,
            retries=st.retries,
        )

    def _ingest(self, source: Source, fetched: Fetched) -> None:
        target = self.object_path(fetched.digest)
        target.parent.mkdir(exist_ok=True)
        if target.exists():
            fetched.path.unlink(missing_ok=True)
        else:
            os.chmod(fetched.path, 0o444)
            os.replace(fetched.path, target)
        key = None if _known_digest(fetched.entry) else _source_key(source, fetched.entry)
        self.index.add_object(fetched.digest, fetched.entry.size, key)

    def _build_tree(self, manifest: Manifest, digests: dict[str, str]) -> None:
        final = self.dataset_path(manifest.fingerprint)
        tmp = final.with_name(f".tmp-{manifest.fingerprint}-{os.getpid()}")
        if tmp.exists():
            _make_writable(tmp)
            shutil.rmtree(tmp)
        tmp.mkdir()
        made: set[Path] = {tmp}
        for e in manifest.entries:
            dest = tmp / e.path
            if dest.parent not in made:
                dest.parent.mkdir(parents=True, exist_ok=True)
                made.add(dest.parent)
            os.link(self.object_path(digests[e.path]), dest)
        for d in sorted(made, key=lambda p: len(p.parts), reverse=True):
            os.chmod(d, 0o555)
        if final.exists():  # a tree left by a crash before it was indexed
            _make_writable(final)
            shutil.rmtree(final)
        os.rename(tmp, final)

    # -- leases and eviction ------------------------------------------------------------
    @contextmanager
    def lease(self, fingerprint: str) -> Iterator[Path]:
        """Keep a dataset from eviction while the block runs; freed on exit or process death."""
        with _flock(self._lock(f"lease-{fingerprint}"), fcntl.LOCK_SH):
            staged = self.lookup(fingerprint)
            if staged is None:
                raise CacheError(
                    f"dataset {fingerprint[:12]} is not in the cache at {self.root}",
                    hint="stage it first",
                )
            yield staged.path

    def evict(
        self, *, target_bytes: int | None = None, keep: set[str] | None = None, wait: bool = True
    ) -> list[str]:
        """Drop least-recently-used datasets not in use until objects fit ``target_bytes``.

        Returns the fingerprints evicted. Works from the index alone: no directory scan.
        """
        target = self.limit_bytes if target_bytes is None else target_bytes
        evicted: list[str] = []
        mode = fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB
        with _flock(self._lock("evict"), mode) as got:
            if not got:
                return evicted
            for row in self.index.datasets_lru():
                if self.index.object_bytes() <= target:
                    break
                if keep and row.fingerprint in keep:
                    continue
                with _flock(
                    self._lock(f"lease-{row.fingerprint}"), fcntl.LOCK_EX | fcntl.LOCK_NB
                ) as free:
                    if not free:
                        continue
                    self._drop(row.fingerprint)
                    evicted.append(row.fingerprint)
            orphans = self.index.orphan_objects()
            if orphans and self.index.object_bytes() > target:
                self._delete_objects(orphans)
        return evicted

    def drop(self, fingerprint: str) -> bool:
        """Remove one dataset now unless it is leased; True if it was removed."""
        lease = self._lock(f"lease-{fingerprint}")
        with (
            _flock(self._lock("evict"), fcntl.LOCK_EX),
            _flock(lease, fcntl.LOCK_EX | fcntl.LOCK_NB) as free,
        ):
            if not free:
                return False
            if self.index.dataset(fingerprint) is None:
                raise ConfigError(f"dataset {fingerprint} is not in the cache at {self.root}")
            self._drop(fingerprint)
            return True

    def _drop(self, fingerprint: str) -> None:
        # the index goes first: a crash afterwards leaves files the next stage replaces
        orphans = self.index.remove_dataset(fingerprint)
        path = self.dataset_path(fingerprint)
        if path.exists():
            _make_writable(path)
            shutil.rmtree(path)
        self.manifest_path(fingerprint).unlink(missing_ok=True)
        self._delete_objects(orphans)

    def _delete_objects(self, digests: list[str]) -> None:
        self.index.remove_objects(digests)
        for d in digests:
            self.object_path(d).unlink(missing_ok=True)
