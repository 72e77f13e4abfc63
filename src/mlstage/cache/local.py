"""LocalCache: the node-local, content-addressed cache every process on a node shares.

Layout under ``root``::

    index.sqlite            what is here (cache/index.py), WAL mode
    objects/ab/abcdef...    each distinct content once, named by sha256, read-only
    datasets/<fingerprint>/ a complete dataset: a read-only tree of hard links into objects/
    manifests/<fp>.json     the manifest each dataset was built from, with each file's sha256
    tmp/xfer-<fp>/          transfers in flight, resumable after a crash
    tmp/trash/              objects and trees being removed (see "Crash safety")
    locks/                  flock files: stage-<fp> (single-flight), lease-<fp>, evict
    endpoints/              not the cache's: remembered S3 endpoints (sources/s3_memo.py)

Hits. ``lookup(fp)`` is one primary-key query and one stat, whatever the cache holds; a whole
dataset hit never looks at its files. ``cached_object`` is one indexed join and one stat.
Full verification is ``verify()`` (``mlstage cache verify``), never the hot path.

Single-flight. A stager holds ``stage-<fp>`` exclusively; everyone else (threads, processes,
pods on the same hostPath - flock works across containers on one kernel) blocks on it and then
finds the finished tree. A tree appears by one atomic rename after every object is verified
and linked, and is indexed 'ready' only after that, so no caller ever sees it half-built.

Objects a staging reuses are pinned in the index (a 'staging' dataset row referencing them)
in the same transaction that checks they exist; an evictor removes only unreferenced objects,
checked in its own transaction, so it can never pull an object from under a stager. Placing
an object file and recording it happen inside one index transaction, as does recording a
removal and moving the file to the trash, so the write lock orders every file change.

Leases: two kinds, because one cannot serve both needs.
* ``lease(fp)`` / ``use(source, manifest)``: a shared flock on ``lease-<fp>`` held while a
  block runs. The kernel drops it when the process exits or is killed, so a crashed reader
  never pins data and there is no pid to check or clock to trust; it works across pods that
  share the hostPath. This is what runs use.
* ``hold(fp, ttl_seconds)`` / ``release(id)``: a recorded lease (row with holder, host, pid,
  pid start time, expiry) for data that must outlive a process, e.g. a Kubernetes job whose
  steps run in separate processes or pods. It is reclaimed when it expires, or, when it was
  taken with ``bind_pid=True``, as soon as that pid is gone (pid start time guards against
  pid reuse). A pid is only checked by processes with the same hostname and pid namespace;
  from other pods only expiry applies, so give a ttl you can live with after a crash.
The evictor skips a dataset if it cannot take ``lease-<fp>`` exclusively (non-blocking) or if
a live recorded lease names it.

Eviction works from the index alone (LRU on ``last_used``; total bytes is a trigger-kept
counter): no directory scan. It runs before a staging to make room and after it to honour the
limit; the dataset being staged and every leased dataset are never evicted.

Crash safety (kill -9 anywhere): the index says a dataset is ready only after its tree is in
place; a killed stager leaves a 'staging' row (reclaimed once its flock is free), its partial
transfer (resumed by the next stager) and maybe a temp tree (replaced). An object file is
placed before its row commits (a crash leaves an unindexed file that the next ingest reuses or
``verify --repair`` removes). Removal moves the file or tree to ``tmp/trash`` inside the
transaction that forgets it; if the process dies before the commit, the next evictor (or
opening the cache) finds the trash entry still indexed and moves it back. ``verify --repair``
re-fetches anything whose bytes are wrong or missing.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mlstage.cache.index import CacheIndex, LeaseRow
from mlstage.errors import CacheError, ConfigError, MlstageError
from mlstage.fileio import copy_file
from mlstage.manifest import Entry, Manifest
from mlstage.retry import RetryPolicy
from mlstage.sources.base import Source
from mlstage.transfer import BytesCallback, Fetched, Mirror, Transfer, file_sha256

ObjectCallback = Callable[[Fetched], None]
SourceOpener = Callable[[str], Source]


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
    """What the cache holds, from the index's counters (no scan)."""

    root: str
    datasets: int
    objects: int
    bytes: int
    limit_bytes: int
    leases: int = 0


@dataclass(frozen=True)
class Lease:
    """A recorded lease (see the module docstring); release it with ``LocalCache.release``."""

    id: int
    fingerprint: str
    holder: str
    expires: float


@dataclass
class Problem:
    """One thing ``verify`` found wrong, and whether it was repaired."""

    kind: str  # corrupt_file, missing_file, missing_tree, corrupt_object, missing_object, ...
    fingerprint: str | None
    path: str | None
    detail: str
    repaired: bool = False


@dataclass
class VerifyReport:
    """The outcome of ``LocalCache.verify``."""

    datasets: int = 0
    objects: int = 0
    files: int = 0
    bytes_hashed: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def unrepaired(self) -> list[Problem]:
        return [p for p in self.problems if not p.repaired]

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["ok"] = not self.unrepaired
        return d


@dataclass
class GcReport:
    """What ``LocalCache.gc`` reclaimed."""

    stagings_reclaimed: list[str] = field(default_factory=list)
    leases_reclaimed: int = 0
    objects_removed: int = 0
    bytes_removed: int = 0
    stray_dirs_removed: int = 0
    stray_files_removed: int = 0  # manifests a writer left half-written


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _disk_error(root: Path, exc: OSError) -> CacheError | None:
    """A write into the cache that the file system refused (full, read-only, a file of the
    cache it cannot make), as one line naming the file; None for any other OSError."""
    if isinstance(exc, MlstageError):  # a source's ObjectNotFound, AccessDenied: its own
        return None
    mine = exc.filename is not None and Path(os.fsdecode(exc.filename)).is_relative_to(root)
    if exc.errno not in (*_DISK_FULL, errno.EROFS) and not mine:
        return None
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in _DISK_FULL:
        hint = "free space there, or cap the cache with MLSTAGE_CACHE_LIMIT_BYTES"
    else:
        hint = "check the cache folder is writable (MLSTAGE_CACHE_DIR)"
    return CacheError(
        f"cannot write to the cache at {root}{where}: {exc.strerror or exc}", hint=hint
    )


def _source_key(source_uri: str, entry: Entry) -> str:
    ident = f"{source_uri}\0{entry.locator}\0{entry.version_tag}\0{entry.size}"
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


def _rmtree(path: Path) -> None:
    if path.exists():
        _make_writable(path)
        shutil.rmtree(path, ignore_errors=True)


def _tree_has_links(root: Path) -> bool:
    """True if any folder or file below ``root`` is a symlink (never followed)."""
    for dirpath, dirnames, filenames in os.walk(root):
        if any(os.path.islink(os.path.join(dirpath, n)) for n in (*dirnames, *filenames)):
            return True
    return False


def _pid_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (guards pid reuse); None where /proc is absent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return start is None or _pid_start(pid) in (None, start)


def _host_identity() -> str:
    """Hostname plus pid namespace: where a recorded pid can be checked (pods with
    hostNetwork share the node's hostname but not its pids)."""
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = ""
    return f"{socket.gethostname()}/{ns}" if ns else socket.gethostname()


class LocalCache:
    """The node-local cache at ``root``; ``limit_bytes`` = 0 means no limit."""

    def __init__(self, root: Path, *, limit_bytes: int = 0) -> None:
        self.root = Path(root)
        self.limit_bytes = limit_bytes
        self.host = _host_identity()
        try:
            for sub in ("objects", "datasets", "manifests", "tmp/trash", "locks"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(
                f"cannot create the cache at {self.root}: {exc.strerror}",
                hint="set MLSTAGE_CACHE_DIR to a writable folder",
            ) from exc
        self.index = CacheIndex(self.root / "index.sqlite")
        self._objects = str(self.root / "objects")
        self._made_dirs: set[str] = set()  # objects/<xx> folders known to exist
        with _flock(self._lock("evict"), fcntl.LOCK_EX | fcntl.LOCK_NB) as got:
            if got:
                self._recover_trash()

    # -- paths --------------------------------------------------------------------------
    def object_path(self, digest: str) -> Path:
        return self.root / "objects" / digest[:2] / digest

    def dataset_path(self, fingerprint: str) -> Path:
        return self.root / "datasets" / fingerprint

    def manifest_path(self, fingerprint: str) -> Path:
        return self.root / "manifests" / f"{fingerprint}.json"

    def _lock(self, name: str) -> Path:
        return self.root / "locks" / f"{name}.lock"

    def _trash(self, name: str) -> Path:
        return self.root / "tmp" / "trash" / f"{name}.{os.getpid()}-{os.urandom(4).hex()}"

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

    def cached_object(self, source_uri: str, entry: Entry) -> Path | None:
        """The cached file holding ``entry`` of ``source_uri`` if this node has it, else None.

        One primary-key read and one stat; the per-object counterpart of ``lookup``.
        """
        digest = _known_digest(entry) or self.index.digest_for(_source_key(source_uri, entry))
        if digest is None:
            return None
        path = f"{self._objects}/{digest[:2]}/{digest}"
        try:
            os.stat(path)
        except FileNotFoundError:
            return None  # evicted (or being evicted) since it was indexed
        return Path(path)

    def present(self, source: Source, entries: list[Entry]) -> dict[str, str]:
        """The entries whose content is already in the object store: path -> sha256.

        What a stage would not fetch again; a streaming reader yields these at once.
        """
        found: dict[str, str] = {}
        for e in entries:
            path = self.cached_object(source.uri, e)
            if path is not None:
                found[e.path] = path.name
        return found

    def stats(self) -> CacheStats:
        """Datasets, objects and bytes held (from counters, no scan), the limit, recorded leases."""
        return CacheStats(
            root=str(self.root),
            datasets=self.index.dataset_count(),
            objects=self.index.object_count(),
            bytes=self.index.object_bytes(),
            limit_bytes=self.limit_bytes,
            leases=len(self.index.leases()),
        )

    def manifest(self, fingerprint: str) -> Manifest | None:
        """The manifest a cached dataset was built from."""
        record = self._record(fingerprint)
        return record[0] if record else None

    def _record(self, fingerprint: str) -> tuple[Manifest, list[str]] | None:
        try:
            data = json.loads(self.manifest_path(fingerprint).read_bytes())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise CacheError(
                f"{self.manifest_path(fingerprint)} is unreadable: {exc}",
                hint="run `mlstage cache verify --repair`",
            ) from exc
        if "manifest" not in data:  # written by the walking skeleton: no digests
            return Manifest.model_validate(data), []
        return Manifest.model_validate(data["manifest"]), list(data["digests"])

    def _write_record(
        self, manifest: Manifest, digests: dict[str, str], fp: str | None = None
    ) -> None:
        path = self.manifest_path(fp or manifest.fingerprint)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        body = {
            "manifest": manifest.model_dump(mode="json"),
            "digests": [digests[e.path] for e in manifest.entries],
        }
        try:
            tmp.write_text(json.dumps(body, separators=(",", ":")))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

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
        mirror: Mirror | None = None,
    ) -> StagedDataset:
        """Make ``manifest`` complete on this node, fetching only what is missing.

        ``mirror``: where the fetch may also write each fetched object (a private copy made
        in the same pass); ``on_object`` then gets ``Fetched.mirrored`` set when it completed.

        Concurrent callers for the same fingerprint (threads, processes, pods sharing the
        folder) cause one download; the others wait and get the same tree. The result is not
        leased: use ``use()`` (or ``lease()``) to keep it from eviction while reading it.
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
            try:
                staged = self._stage_locked(
                    fp,
                    source,
                    manifest,
                    workers,
                    part_size,
                    retry,
                    on_bytes,
                    on_object,
                    started,
                    mirror,
                )
            except OSError as exc:  # the cache's own disk: full, read-only, gone
                self._abandon(fp)
                mapped = _disk_error(self.root, exc)
                if mapped is None:
                    raise
                raise mapped from exc
            except BaseException:
                self._abandon(fp)
                raise
            if self.limit_bytes:
                self.evict(keep={fp})
        return staged

    def _abandon(self, fingerprint: str) -> None:
        """Forget a failed staging's row (its objects stay, unpinned; its transfer resumes)."""
        try:
            with self.index.tx() as db:
                row = self.index.any_dataset(fingerprint)
                if row is None or row.state != "staging":
                    return
                self.index.forget_dataset(db, fingerprint)
            self._discard_unindexed_tree(fingerprint)
        except Exception:  # noqa: BLE001 - the original error matters more; gc reclaims it
            pass

    def _discard_unindexed_tree(self, fingerprint: str) -> None:
        """Remove a dataset's tree the index does not hold as ready: one a staging published but
        never indexed (it failed or died in between; its hard links would keep the objects'
        disk space after eviction frees their rows), or a crash's leftover before a publish.
        Only with the dataset's stage lock held."""
        path = self.dataset_path(fingerprint)
        if path.exists():
            trash = self._trash(f"ds-{fingerprint}")
            os.rename(path, trash)
            _rmtree(trash)

    @contextmanager
    def use(
        self, source: Source, manifest: Manifest, **stage_kwargs: object
    ) -> Iterator[StagedDataset]:
        """Stage ``manifest`` and keep it leased for the block: no gap where it could be evicted."""
        fp = manifest.fingerprint
        with _flock(self._lock(f"lease-{fp}"), fcntl.LOCK_SH):
            yield self.stage(source, manifest, **stage_kwargs)  # type: ignore[arg-type]

    def _stage_locked(
        self,
        fp: str,
        source: Source,
        manifest: Manifest,
        workers: int,
        part_size: int,
        retry: RetryPolicy | None,
        on_bytes: BytesCallback | None,
        on_object: ObjectCallback | None,
        started: float,
        mirror: Mirror | None = None,
    ) -> StagedDataset:
        candidates: dict[str, str] = {}
        for e in manifest.entries:
            d = _known_digest(e) or self.index.digest_for(_source_key(source.uri, e))
            if d is not None:
                candidates[e.path] = d
        present = self.index.begin_staging(
            fp, manifest.source, len(manifest), manifest.total_bytes, candidates.values()
        )
        digests: dict[str, str] = {}
        missing: list[Entry] = []
        for e in manifest.entries:
            d = candidates.get(e.path)
            if d is not None and d in present and self.object_path(d).exists():
                digests[e.path] = d
            else:
                missing.append(e)

        if self.limit_bytes and missing:
            need = sum(e.size for e in missing)
            self.evict(target_bytes=max(0, self.limit_bytes - need), keep={fp})

        workdir = self.root / "tmp" / f"xfer-{fp}"
        transfer = Transfer(
            source,
            workdir,
            workers=workers,
            part_size=part_size,
            retry=retry,
            on_bytes=on_bytes,
            mirror=mirror,
        )
        if missing:
            for batch in transfer.fetch_batches(source.objects(missing)):
                self._ingest(source.uri, batch, fp)
                for fetched in batch:
                    digests[fetched.entry.path] = fetched.digest
                    if on_object:
                        on_object(fetched)
        absent = [e.path for e in manifest.entries if e.path not in digests]
        if absent:
            raise CacheError(
                f"{source.uri}: {len(absent)} entries were not delivered (first: {absent[0]})"
            )

        self._build_tree(manifest, digests, source.uri, fp)
        self._write_record(manifest, digests, fp)
        self._publish_tree(fp)
        self.index.finish_staging(fp, digests.values())
        _rmtree(workdir)
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

    def _ingest(self, source_uri: str, batch: list[Fetched], fingerprint: str | None) -> None:
        """Move verified files into objects/ and record them, under one write transaction.

        Placing and recording share the transaction (an evictor cannot remove a same-digest
        object between the existence check and the row); one commit per batch, not per file.
        """
        objects = self._objects
        for fetched in batch:
            parent = f"{objects}/{fetched.digest[:2]}"
            if parent not in self._made_dirs:
                os.makedirs(parent, exist_ok=True)
                self._made_dirs.add(parent)
        rows = []
        with self.index.tx() as db:
            for fetched in batch:
                target = f"{objects}/{fetched.digest[:2]}/{fetched.digest}"
                entry = fetched.entry
                key = None if _known_digest(entry) else _source_key(source_uri, entry)
                if os.path.exists(target):
                    with suppress(FileNotFoundError):
                        os.unlink(fetched.path)
                else:
                    os.chmod(fetched.path, 0o444)
                    try:
                        os.replace(fetched.path, target)
                    except FileNotFoundError:  # its folder was removed behind our back
                        os.makedirs(os.path.dirname(target), exist_ok=True)
                        os.replace(fetched.path, target)
                rows.append((fetched.digest, entry.size, key))
            self.index.insert_objects(db, rows, fingerprint)

    def _link(self, digest: str, dest: Path | str) -> None:
        src = f"{self._objects}/{digest[:2]}/{digest}"
        try:
            os.link(src, dest)
        except OSError as exc:
            if exc.errno != errno.EMLINK:  # too many links to one inode (e.g. empty files)
                raise
            copy_file(src, str(dest))
            os.chmod(dest, 0o444)

    def _build_tree(
        self,
        manifest: Manifest,
        digests: dict[str, str],
        source_uri: str,
        fp: str | None = None,
    ) -> None:
        fp = fp or manifest.fingerprint
        tmp = str(self.root / "datasets" / f".tmp-{fp}")
        _rmtree(Path(tmp))  # left by a stager that was killed (we hold the stage lock)
        os.mkdir(tmp)
        made: set[str] = {tmp}
        for e in manifest.entries:
            dest = f"{tmp}/{e.path}"
            parent = dest.rpartition("/")[0]
            if parent not in made:
                os.makedirs(parent, exist_ok=True)
                while parent not in made:  # record every folder makedirs may have created
                    made.add(parent)
                    parent = parent.rpartition("/")[0]
            try:
                self._link(digests[e.path], dest)
            except FileNotFoundError as exc:
                raise CacheError(
                    f"object {digests[e.path][:12]} for {e.path} vanished while building {fp[:12]}",
                    hint="something outside mlstage deletes cache files; run `mlstage cache verify --repair`",
                ) from exc
        for d in sorted(made, key=lambda p: p.count("/"), reverse=True):
            os.chmod(d, 0o555)

    def _publish_tree(self, fingerprint: str) -> None:
        final = self.dataset_path(fingerprint)
        tmp = final.with_name(f".tmp-{fingerprint}")
        self._discard_unindexed_tree(fingerprint)  # a crash's leftover, or a broken tree
        os.rename(tmp, final)

    # -- leases -------------------------------------------------------------------------
    @contextmanager
    def lease(self, fingerprint: str) -> Iterator[Path]:
        """Keep a cached dataset from eviction while the block runs; freed on exit or death.

        Raises CacheError when the dataset is not (or no longer) cached; ``use()`` stages
        and leases in one step.
        """
        with _flock(self._lock(f"lease-{fingerprint}"), fcntl.LOCK_SH):
            staged = self.lookup(fingerprint)
            if staged is None:
                raise CacheError(
                    f"dataset {fingerprint[:12]} is not in the cache at {self.root}",
                    hint="stage it first, or use LocalCache.use() to stage and lease at once",
                )
            yield staged.path

    def hold(
        self,
        fingerprint: str,
        ttl_seconds: float,
        *,
        holder: str = "",
        bind_pid: bool = False,
    ) -> Lease:
        """Record a lease that outlives this process: kept until released or ``ttl_seconds``.

        With ``bind_pid`` it also ends when this process dies (checked on this host only).
        """
        if ttl_seconds <= 0:
            raise ConfigError("a lease needs a positive ttl", hint="pass ttl_seconds > 0")
        pid = os.getpid() if bind_pid else None
        holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        expires = time.time() + ttl_seconds
        lease_id = self.index.add_lease(
            fingerprint, holder, self.host, pid, _pid_start(pid) if pid else None, expires
        )
        if lease_id is None:  # checked in the lease's own transaction: no race with eviction
            raise CacheError(
                f"dataset {fingerprint[:12]} is not in the cache at {self.root}",
                hint="stage it first",
            )
        return Lease(lease_id, fingerprint, holder, expires)

    def release(self, lease_id: int) -> bool:
        """End a recorded lease; False when it was already gone (released or reclaimed)."""
        return self.index.remove_lease(lease_id)

    def _lease_live(self, lease: LeaseRow, now: float) -> bool:
        if lease.expires <= now:
            return False
        if lease.pid is not None and lease.host == self.host:
            return _pid_alive(lease.pid, lease.pid_start)
        return True

    def _reclaim_leases(self) -> int:
        now = time.time()
        dead = [row.id for row in self.index.leases() if not self._lease_live(row, now)]
        for lease_id in dead:
            self.index.remove_lease(lease_id)
        return len(dead)

    def in_use(self, fingerprint: str) -> bool:
        """True while any process holds a lease flock or a live recorded lease on it."""
        with _flock(self._lock(f"lease-{fingerprint}"), fcntl.LOCK_EX | fcntl.LOCK_NB) as free:
            if not free:
                return True
        now = time.time()
        return any(self._lease_live(r, now) for r in self.index.leases(fingerprint))

    # -- eviction -----------------------------------------------------------------------
    def evict(
        self, *, target_bytes: int | None = None, keep: set[str] | None = None, wait: bool = True
    ) -> list[str]:
        """Drop least-recently-used datasets not in use until objects fit ``target_bytes``.

        Unreferenced objects go first, then whole datasets. Returns the fingerprints evicted.
        Works from the index alone: no directory scan. ``target_bytes`` defaults to the limit
        (0 = evict everything not in use).
        """
        target = self.limit_bytes if target_bytes is None else target_bytes
        evicted: list[str] = []
        mode = fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB
        with _flock(self._lock("evict"), mode) as got:
            if not got:
                return evicted
            self._recover_trash()
            if self.index.object_bytes() <= target:
                return evicted
            self._reclaim_stagings()
            self._reclaim_leases()
            self._delete_orphans(target)
            keep = keep or set()
            for row in self.index.datasets_lru():
                if self.index.object_bytes() <= target:
                    break
                if row.fingerprint in keep:
                    continue
                with _flock(
                    self._lock(f"lease-{row.fingerprint}"), fcntl.LOCK_EX | fcntl.LOCK_NB
                ) as free:
                    if free and self._drop(row.fingerprint):
                        evicted.append(row.fingerprint)
        return evicted

    def _recorded_lease(self, fingerprint: str) -> bool:
        now = time.time()
        return any(self._lease_live(r, now) for r in self.index.leases(fingerprint))

    def drop(self, fingerprint: str) -> bool:
        """Remove one dataset now unless it is in use; True if it was removed."""
        with _flock(self._lock("evict"), fcntl.LOCK_EX):
            if self.index.dataset(fingerprint) is None:
                raise ConfigError(f"dataset {fingerprint} is not in the cache at {self.root}")
            with _flock(self._lock(f"lease-{fingerprint}"), fcntl.LOCK_EX | fcntl.LOCK_NB) as free:
                return bool(free) and self._drop(fingerprint)

    def _drop(self, fingerprint: str) -> bool:
        """Forget and remove a dataset unless a live recorded lease holds it; True if removed.

        The lease check, forgetting the row and moving the tree and manifest aside share one
        transaction: lookups miss from its commit on, a ``hold()`` either lands before it (and
        keeps the dataset) or finds it gone, and a re-stage that follows the commit writes a
        manifest nothing removes. A crash inside it is undone by ``_recover_trash``.
        """
        path = self.dataset_path(fingerprint)
        trash = self._trash(f"ds-{fingerprint}")
        manifest_trash = self._trash(f"mf-{fingerprint}")
        with self.index.tx() as db:
            if self._recorded_lease(fingerprint):
                return False
            digests = self.index.forget_dataset(db, fingerprint)
            if path.exists():
                os.rename(path, trash)
            with suppress(FileNotFoundError):
                os.rename(self.manifest_path(fingerprint), manifest_trash)
        _rmtree(trash)
        manifest_trash.unlink(missing_ok=True)
        self._delete_objects(digests)
        return True

    def _delete_orphans(self, target: int) -> None:
        while self.index.object_bytes() > target:
            orphans = self.index.orphan_objects(limit=500)
            if not orphans:
                return
            self._delete_objects(orphans)

    def _delete_objects(self, digests: list[str], batch: int = 500) -> tuple[int, int]:
        """Remove objects no dataset references (others are skipped); (count, bytes)."""
        count = nbytes = 0
        for i in range(0, len(digests), batch):
            moved: list[Path] = []
            with self.index.tx() as db:
                for d in self.index.unreferenced(db, digests[i : i + batch]):
                    row = db.execute("SELECT size FROM objects WHERE digest=?", (d,)).fetchone()
                    self.index.delete_object_row(db, d)
                    trash = self._trash(f"obj-{d}")
                    try:
                        os.rename(self.object_path(d), trash)
                        moved.append(trash)
                    except FileNotFoundError:
                        pass
                    count += 1
                    nbytes += int(row[0]) if row else 0
            for t in moved:
                t.unlink(missing_ok=True)
        return count, nbytes

    def _recover_trash(self) -> None:
        """Undo removals whose transaction never committed (their owner died); finish the rest."""
        trash = self.root / "tmp" / "trash"
        for item in os.scandir(trash):
            kind, _, rest = item.name.partition("-")
            name = rest.split(".", 1)[0]
            path = Path(item.path)
            if (
                kind == "obj"
                and self.index.has_object(name)
                and not self.object_path(name).exists()
            ):
                os.rename(path, self.object_path(name))
            elif kind == "ds" and self.index.dataset(name) and not self.dataset_path(name).exists():
                os.rename(path, self.dataset_path(name))
            elif (
                kind == "mf" and self.index.dataset(name) and not self.manifest_path(name).exists()
            ):
                os.rename(path, self.manifest_path(name))
            elif item.is_dir(follow_symlinks=False):
                _rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def _reclaim_stagings(self) -> list[str]:
        """Forget 'staging' rows whose stager is gone (its flock is free); keeps its objects."""
        reclaimed = []
        for row in self.index.datasets_lru(state="staging"):
            with _flock(
                self._lock(f"stage-{row.fingerprint}"), fcntl.LOCK_EX | fcntl.LOCK_NB
            ) as free:
                if not free:
                    continue
                current = self.index.any_dataset(row.fingerprint)
                if current is None or current.state != "staging":
                    continue
                with self.index.tx() as db:
                    self.index.forget_dataset(db, row.fingerprint)
                self._discard_unindexed_tree(row.fingerprint)
                reclaimed.append(row.fingerprint)
        return reclaimed

    def gc(self) -> GcReport:
        """Reclaim what crashes left: dead stagings and leases, unreferenced objects, stray dirs.

        Lists ``datasets/`` and ``tmp/`` (small: one entry per dataset), never the objects.
        """
        report = GcReport()
        with _flock(self._lock("evict"), fcntl.LOCK_EX):
            self._recover_trash()
            report.stagings_reclaimed = self._reclaim_stagings()
            report.leases_reclaimed = self._reclaim_leases()
            while orphans := self.index.orphan_objects(limit=500):
                n, b = self._delete_objects(orphans)
                report.objects_removed += n
                report.bytes_removed += b
                if n == 0:
                    break
            for item in os.scandir(self.root / "datasets"):
                fp = item.name.removeprefix(".tmp-")
                if item.name == fp and self.index.dataset(fp) is not None:
                    continue
                with _flock(self._lock(f"stage-{fp}"), fcntl.LOCK_EX | fcntl.LOCK_NB) as free:
                    if free and (item.name != fp or self.index.dataset(fp) is None):
                        _rmtree(Path(item.path))
                        report.stray_dirs_removed += 1
            for item in os.scandir(self.root / "tmp"):
                if not item.name.startswith("xfer-"):
                    continue
                fp = item.name.removeprefix("xfer-")
                with _flock(self._lock(f"stage-{fp}"), fcntl.LOCK_EX | fcntl.LOCK_NB) as free:
                    if free:
                        _rmtree(Path(item.path))
                        report.stray_dirs_removed += 1
            for item in os.scandir(self.root / "manifests"):
                if not item.name.startswith("."):  # .<fp>.json.<pid>: a writer died mid-write
                    continue
                fp = item.name[1:].split(".", 1)[0]
                with _flock(self._lock(f"stage-{fp}"), fcntl.LOCK_EX | fcntl.LOCK_NB) as free:
                    if free:
                        Path(item.path).unlink(missing_ok=True)
                        report.stray_files_removed += 1
        return report

    # -- verification ---------------------------------------------------------------------
    def verify(
        self,
        *,
        repair: bool = False,
        open_source: SourceOpener | None = None,
        workers: int = 8,
    ) -> VerifyReport:
        """Hash every object and check every dataset tree against its manifest.

        Finds flipped bytes, missing or replaced files, missing trees and unindexed object
        files. With ``repair``, re-fetches what is wrong from each dataset's source and swaps
        the good file in atomically (per file). Costs O(bytes): an explicit command only.
        """
        if open_source is None:
            from mlstage.sources import open_source as default_opener

            open_source = default_opener
        report = VerifyReport()
        bad_objects: dict[str, str] = {}
        inodes: dict[str, int] = {}
        known = self.index.objects()
        report.objects = len(known)
        for digest, size in known:
            p = self.object_path(digest)
            try:
                st = p.stat()
            except FileNotFoundError:
                bad_objects[digest] = "missing_object"
                continue
            inodes[digest] = st.st_ino
            report.bytes_hashed += st.st_size
            if st.st_size != size or file_sha256(p) != digest:
                bad_objects[digest] = "corrupt_object"

        referenced: set[str] = set()
        unfixable: list[Problem] = []
        for row in self.index.datasets_lru():
            with _flock(self._lock(f"lease-{row.fingerprint}"), fcntl.LOCK_SH):
                if self.index.dataset(row.fingerprint) is None:
                    continue  # evicted since the listing: nothing to check
                report.datasets += 1
                problem = self._verify_dataset(
                    row.fingerprint,
                    bad_objects,
                    inodes,
                    referenced,
                    report,
                    repair,
                    open_source,
                    workers,
                )
            if problem is not None and repair:
                unfixable.append(problem)
        for problem in unfixable:  # dropped once this check no longer holds them itself
            fp = problem.fingerprint or ""
            try:
                dropped = self.drop(fp)
            except ConfigError:  # evicted meanwhile: gone all the same
                dropped = True
            if dropped:
                problem.repaired = True
                problem.detail += "; dropped it (the next stage fetches it again)"
            else:
                problem.detail += "; in use, so kept: repair again once it is released"

        for digest, kind in bad_objects.items():
            if digest in referenced or not self.index.has_object(digest):
                continue  # checked with its dataset, or evicted while we hashed
            problem = Problem(kind, None, str(self.object_path(digest)), "object no dataset uses")
            if repair:
                with _flock(self._lock("evict"), fcntl.LOCK_EX):
                    self._delete_objects([digest])
                problem.repaired = True
            report.problems.append(problem)

        indexed = {d for d, _ in known}
        for sub in os.scandir(self.root / "objects"):
            if not sub.is_dir():
                continue
            for item in os.scandir(sub.path):
                if item.name in indexed or self.index.has_object(item.name):
                    continue
                problem = Problem(
                    "stray_object", None, item.path, "object file the index does not know"
                )
                if repair:
                    with self.index.tx():  # an ingest places its file inside its transaction
                        if not self.index.has_object(item.name):
                            Path(item.path).unlink(missing_ok=True)
                    problem.repaired = True
                report.problems.append(problem)
        return report

    def _verify_dataset(
        self,
        fp: str,
        bad_objects: dict[str, str],
        inodes: dict[str, int],
        referenced: set[str],
        report: VerifyReport,
        repair: bool,
        open_source: SourceOpener,
        workers: int,
    ) -> Problem | None:
        """Check (and with ``repair`` fix) one dataset; the problem only dropping it can fix
        (its manifest is gone), left to the caller, who drops it once no one holds it."""
        try:
            record = self._record(fp)
        except CacheError:
            record = None
        if record is None or not record[1]:
            problem = Problem(
                "missing_manifest",
                fp,
                str(self.manifest_path(fp)),
                "cannot check or repair this dataset",
            )
            report.problems.append(problem)
            return problem
        manifest, digests = record
        referenced.update(digests)
        tree = self.dataset_path(fp)
        pairs = list(zip(manifest.entries, digests, strict=True))
        problems: list[Problem] = []
        relink: dict[str, str] = {}  # tree path -> digest, to be linked afresh
        if tree.is_dir() and _tree_has_links(tree):
            # mlstage never puts links in a tree; one that appeared could point anywhere, so the
            # tree is set aside (links removed, never followed) and rebuilt from the objects
            problems.append(
                Problem(
                    "foreign_link", fp, None, "the tree contains a link; it is rebuilt, not read"
                )
            )
            if repair:
                aside = self._trash(f"tree-{fp}")
                aside.parent.mkdir(parents=True, exist_ok=True)
                os.rename(tree, aside)
                _rmtree(aside)
        elif not tree.is_dir():
            problems.append(Problem("missing_tree", fp, None, "dataset folder is gone"))
        else:
            for e, d in pairs:
                report.files += 1
                p = tree / e.path
                try:
                    st = p.lstat()
                except FileNotFoundError:
                    problems.append(Problem("missing_file", fp, e.path, "file is missing"))
                    relink[e.path] = d
                    continue
                if st.st_ino == inodes.get(d):
                    if bad_objects.get(d) == "corrupt_object":
                        problems.append(
                            Problem("corrupt_file", fp, e.path, "content does not match its sha256")
                        )
                    continue
                report.bytes_hashed += st.st_size
                good = st.st_size == e.size and p.is_file() and file_sha256(p) == d
                if not good:
                    problems.append(
                        Problem("corrupt_file", fp, e.path, "content does not match its sha256")
                    )
                    relink[e.path] = d
                elif bad_objects.get(d) == "missing_object":
                    problem = Problem("missing_object", fp, e.path, "object file is missing")
                    if repair:
                        self._restore_object(d, p)
                        inodes[d] = p.stat().st_ino
                        bad_objects.pop(d)
                        problem.repaired = True
                    problems.append(problem)
        report.problems.extend(problems)
        need = {d for _, d in pairs if d in bad_objects}
        if not repair or not any(not p.repaired for p in problems):
            return None
        still_bad = set(need)
        try:
            with _flock(self._lock(f"stage-{fp}"), fcntl.LOCK_EX):
                fixed = self._refetch(fp, manifest, pairs, need, open_source, workers)
                for d in fixed:
                    bad_objects.pop(d, None)
                    inodes[d] = self.object_path(d).stat().st_ino
                still_bad = need - fixed
                if not tree.is_dir():
                    if not still_bad:
                        self._build_tree(manifest, {e.path: d for e, d in pairs}, manifest.source)
                        self._publish_tree(fp)
                else:
                    self._relink(fixed)
                    self._relink_paths(fp, {p: d for p, d in relink.items() if d not in still_bad})
        except (MlstageError, OSError) as exc:
            for p in problems:
                if not p.repaired:
                    p.detail += f"; repair failed: {exc}"
            return None
        by_path = {e.path: d for e, d in pairs}
        for p in problems:
            if p.kind in ("missing_tree", "foreign_link"):
                p.repaired = tree.is_dir()
            elif p.path is not None and by_path.get(p.path) not in still_bad:
                p.repaired = True
            if not p.repaired:
                p.detail += "; the source no longer has these bytes"
        return None

    def _refetch(
        self,
        fp: str,
        manifest: Manifest,
        pairs: list[tuple[Entry, str]],
        need: set[str],
        open_source: SourceOpener,
        workers: int,
    ) -> set[str]:
        """Fetch one entry per digest in ``need`` from the dataset's source; the digests fixed."""
        if not need:
            return set()
        source = open_source(manifest.source)
        wanted: dict[str, Entry] = {}
        for e, d in pairs:
            if d in need:
                wanted.setdefault(d, e)
        by_path = {e.path: d for d, e in wanted.items()}
        workdir = self.root / "tmp" / f"xfer-{fp}"
        fixed: set[str] = set()
        transfer = Transfer(source, workdir, workers=workers)
        for fetched in transfer.fetch(source.objects(list(wanted.values()))):
            expected = by_path.get(fetched.entry.path)
            if fetched.digest != expected:
                fetched.path.unlink(missing_ok=True)
                continue  # the source changed since: not repairable from it
            self._replace_object(fetched, source.uri, fp)
            fixed.add(expected)
        _rmtree(workdir)
        return fixed

    def _restore_object(self, digest: str, good: Path) -> None:
        target = self.object_path(digest)
        target.parent.mkdir(exist_ok=True)
        with self.index.tx():
            if not target.exists():
                os.link(good, target)

    def _replace_object(self, fetched: Fetched, source_uri: str, fp: str) -> None:
        """Put a freshly verified copy in objects/, replacing a damaged file (new inode)."""
        target = self.object_path(fetched.digest)
        target.parent.mkdir(exist_ok=True)
        key = None if _known_digest(fetched.entry) else _source_key(source_uri, fetched.entry)
        with self.index.tx() as db:
            os.chmod(fetched.path, 0o444)
            os.replace(fetched.path, target)
            self.index.insert_objects(db, [(fetched.digest, fetched.entry.size, key)], fp)

    def _relink(self, digests: set[str]) -> None:
        """Point every tree file holding one of ``digests`` at its (repaired) object."""
        users: set[str] = set()
        for d in digests:
            users.update(self.index.datasets_using(d))
        for fp in users:
            record = self._record(fp)
            if record is None:
                continue
            manifest, ds = record
            paths = {e.path: d for e, d in zip(manifest.entries, ds, strict=True) if d in digests}
            self._relink_paths(fp, paths)

    def _relink_paths(self, fp: str, paths: dict[str, str]) -> None:
        """Swap each tree path for a fresh link to its object, one atomic rename per file."""
        tree = self.dataset_path(fp)
        if not tree.is_dir():
            return
        for rel, d in paths.items():
            dest = tree / rel
            parents = [
                p for p in [dest.parent, *dest.parent.parents] if tree in p.parents or p == tree
            ]
            for p in reversed(parents):
                if not p.exists():
                    os.chmod(p.parent, 0o755)
                    p.mkdir()
            os.chmod(dest.parent, 0o755)
            tmp = dest.parent / f".mlstage-repair-{os.getpid()}"
            try:
                tmp.unlink(missing_ok=True)
                self._link(d, tmp)
                os.replace(tmp, dest)
            finally:
                for p in parents:
                    os.chmod(p, 0o555)
