"""LocalCache: the node-local, content-addressed cache every process on a node shares.

One concept a module (``cache/``): ``files`` (the layout on disk, removable locks),
``index`` (what is here, SQLite in WAL mode), ``objects`` (each distinct content once),
``trees`` (a dataset as a read-only folder of hard links) and its ``seal``, ``leases``,
``eviction`` (with gc), ``verify``. This module stages and hands out datasets.

Hits. ``lookup(fp)`` is one primary-key query and one stat, whatever the cache holds. A
dataset is handed out (``stage`` on a hit, ``use``, ``lease``) only once its tree is checked
against its seal: one ``lstat`` per file, no data read (``mlstage.cache.seal``), so a job that
wrote into its data folder, even as root, damages nothing any later job is given: a tree
that is not as sealed is rebuilt, each object whose file changed is hashed and, if its bytes
are wrong, fetched again. ``cached_object`` is one indexed read and one ``lstat``, and hands
out only an object whose file is as recorded. Full verification (hashing) is ``verify()``.

Single-flight. A stager holds ``stage-<fp>`` exclusively; everyone else (threads, processes,
pods on the same hostPath - flock works across containers on one kernel) blocks on it and then
finds the finished tree. A tree appears by one atomic rename after every object is verified
and linked, and is indexed 'ready' only after that, so no caller ever sees it half-built.

Objects a staging reuses are pinned in the index (a 'staging' dataset row referencing them)
in the same transaction that checks they exist; an evictor removes only unreferenced objects,
checked in its own transaction, so it can never pull an object from under a stager.

Crash safety (kill -9 anywhere): the index says a dataset is ready only after its tree is in
place; a killed stager leaves a 'staging' row (reclaimed once its flock is free), its partial
transfer (resumed by the next stager) and maybe a temp tree (replaced). Removals go through
``tmp/trash`` (``mlstage.cache.eviction``). A write the cache's disk refuses (full, read-only)
is one ``CacheError`` line, and what the failed step placed is taken back.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from mlstage.cache.eviction import Eviction, GcReport
from mlstage.cache.files import CacheFiles, flock, mapped_disk_errors, rmtree, scratch
from mlstage.cache.index import CacheIndex
from mlstage.cache.leases import Lease, Leases
from mlstage.cache.objects import Objects
from mlstage.cache.records import Digests, read_record, write_record
from mlstage.cache.trees import Trees
from mlstage.cache.verify import VerifyReport, verify
from mlstage.errors import CacheError, MlstageError
from mlstage.manifest import Entry, Manifest
from mlstage.retry import RetryPolicy
from mlstage.sources.base import Source
from mlstage.transfer import BytesCallback, Fetched, Mirror, Transfer

log = logging.getLogger("mlstage.cache")

ObjectCallback = Callable[[Fetched], None]
SourceOpener = Callable[[str], Source]


@dataclass(frozen=True)
class StagedDataset:
    """A complete dataset on this node's disk, and what it took to get it there.

    ``repaired``: the cached tree had been written to since it was staged (see the module
    docstring); it was rebuilt from verified objects before being handed out.
    """

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
    repaired: bool = False

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


class LocalCache:
    """The node-local cache at ``root``; ``limit_bytes`` = 0 means no limit.

    ``check_hits``: check a dataset's tree against its seal each time it is handed out (the
    default; see the module docstring). Off, a hit costs O(1) and trusts that no job wrote
    into its data.
    """

    def __init__(self, root: Path, *, limit_bytes: int = 0, check_hits: bool = True) -> None:
        self.files = CacheFiles(root)
        self.root = self.files.root
        self.limit_bytes = limit_bytes
        self.check_hits = check_hits
        self.index = CacheIndex(self.root / "index.sqlite")
        self.objects = Objects(self.files, self.index)
        self.trees = Trees(self.files, self.index, self.objects)
        self.leases = Leases(self.files, self.index)
        self.host = self.leases.host
        self.eviction = Eviction(self.files, self.index, self.leases, self.trees)
        try:
            with (
                mapped_disk_errors(self.root),
                flock(self.files.lock("evict"), fcntl.LOCK_EX | fcntl.LOCK_NB) as got,
            ):
                if got:
                    self.eviction.recover()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close this thread's index connections (a later call opens them again)."""
        self.index.close()

    def __enter__(self) -> LocalCache:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- paths --------------------------------------------------------------------------
    def object_path(self, digest: str) -> Path:
        return self.files.object_path(digest)

    def dataset_path(self, fingerprint: str) -> Path:
        return self.files.dataset_path(fingerprint)

    def manifest_path(self, fingerprint: str) -> Path:
        return self.files.manifest_path(fingerprint)

    def stage_lock(
        self, fingerprint: str, mode: int = fcntl.LOCK_EX
    ) -> AbstractContextManager[bool]:
        """The flock a stager of ``fingerprint`` holds (``mode``: fcntl flags)."""
        return flock(self.files.lock(f"stage-{fingerprint}"), mode)

    # -- lookups ------------------------------------------------------------------------
    def lookup(self, fingerprint: str) -> StagedDataset | None:
        """A complete dataset by fingerprint: one indexed query and one stat, whatever the size.

        Not a hand-out: ``stage``, ``use`` and ``lease`` check the tree before giving it out.
        """
        with mapped_disk_errors(self.root):
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

        Two primary-key reads and one ``lstat``; an object whose file is no longer as recorded
        (written to since) is never returned.
        """
        with mapped_disk_errors(self.root):
            digest = self.objects.digest_of(source_uri, entry)
            if digest is None or not self.objects.sound(digest):
                return None
            return self.object_path(digest)

    def present(self, source: Source, entries: Sequence[Entry]) -> dict[str, str]:
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
        with mapped_disk_errors(self.root):
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
        record = read_record(self.manifest_path(fingerprint))
        return record[0] if record else None

    def staged_files(self, fingerprint: str) -> Iterator[tuple[Entry, Path]]:
        """Each entry of a cached dataset with the object file that holds its bytes.

        What ``--to`` copies or links: the manifest's entries, never whatever the tree's
        folder holds. CacheError when the dataset has no record.
        """
        record = read_record(self.manifest_path(fingerprint))
        if record is None:
            raise CacheError(
                f"dataset {fingerprint[:12]} has no manifest in the cache at {self.root}",
                hint="run `mlstage cache verify --repair`, then stage it again",
            )
        manifest, digests = record
        for e, digest in zip(manifest.entries, digests, strict=True):
            yield e, self.object_path(digest)

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
        folder) cause one download; the others wait and get the same tree. A hit is handed out
        only once its tree passed its seal check (else it is repaired first). The result is
        not leased: use ``use()`` (or ``lease()``) to keep it from eviction while reading it.
        """
        fp = manifest.fingerprint
        started = time.monotonic()
        hit = self._handout(fp)
        if hit is not None:
            return hit
        with mapped_disk_errors(self.root), self.stage_lock(fp):
            hit = self.lookup(fp)
            if hit is not None and self._sound_tree(fp):
                return hit
            if hit is not None:
                log.warning(
                    "%s: the cached tree of %s was written to since it was staged; "
                    "rebuilding it from verified objects",
                    self.root,
                    fp[:12],
                )
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
            except BaseException:
                self._abandon(fp)
                raise
            if hit is not None:
                staged = replace(staged, repaired=True)
            if self.limit_bytes:
                self.evict(keep={fp})
        return staged

    def _sound_tree(self, fingerprint: str) -> bool:
        return not self.check_hits or self.trees.intact(fingerprint)

    def handout(self, fingerprint: str) -> StagedDataset | None:
        """The dataset if it is here and its tree is as sealed (see the module docstring),
        else None: a hit that needs no manifest (by version or by alias, ``alias``)."""
        return self._handout(fingerprint)

    def alias(self, name: str, fingerprint: str | None = None) -> str | None:
        """With ``fingerprint``: name that ready dataset (e.g. ``artifact:<id>``). Without:
        the fingerprint ``name`` names, if this node has it. The name goes with the dataset."""
        with mapped_disk_errors(self.root):
            if fingerprint is not None:
                self.index.set_alias(name, fingerprint)
                return fingerprint
            return self.index.alias(name)

    def _handout(self, fingerprint: str) -> StagedDataset | None:
        """The dataset if it is here and its tree is as sealed, else None."""
        hit = self.lookup(fingerprint)
        if hit is None:
            return None
        with mapped_disk_errors(self.root):
            return hit if self._sound_tree(fingerprint) else None

    def _abandon(self, fingerprint: str) -> None:
        """Forget a failed staging's row (its objects stay, unpinned; its transfer resumes)."""
        try:
            with self.index.tx() as db:
                row = self.index.any_dataset(fingerprint)
                if row is None or row.state != "staging":
                    return
                self.index.forget_dataset(db, fingerprint)
            self.trees.discard(fingerprint)
        except Exception:  # noqa: BLE001 - the original error matters more; gc reclaims it
            pass

    @contextmanager
    def use(
        self, source: Source, manifest: Manifest, **stage_kwargs: object
    ) -> Iterator[StagedDataset]:
        """Stage ``manifest`` and keep it leased for the block: no gap where it could be evicted."""
        with mapped_disk_errors(self.root):
            reading = self.leases.reading(manifest.fingerprint)
            reading.__enter__()
        try:
            yield self.stage(source, manifest, **stage_kwargs)  # type: ignore[arg-type]
        finally:
            reading.__exit__(None, None, None)

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
        """Stage under the stage lock: reuse what is here and sound, fetch the rest, build,
        record, publish and seal the tree. Holds per entry its digest (32 bytes) and, for an
        entry to fetch, its position (4 bytes); the manifest is the caller's."""
        n = len(manifest)
        # a path too long under the cache would fail once its bytes were fetched
        manifest.check_fits(self.root, what="cache folder (MLSTAGE_CACHE_DIR)")
        self.index.begin_staging(fp, manifest.source, n, manifest.total_bytes)
        digests = Digests.expecting(manifest)
        missing = array("I")
        entries = manifest.entries
        for start in range(0, n, 1000):
            chunk = entries[start : start + 1000]
            candidates = self.objects.digests_of(source.uri, chunk)
            rows = self.index.pin(fp, (d for d in candidates if d is not None))
            usable: dict[str, os.stat_result | None] = {}
            for j, d in enumerate(candidates):
                i = start + j
                row = rows.get(d) if d is not None else None
                if d is not None and row is not None:
                    if d not in usable:  # a changed file is hashed, fetched again if damaged
                        usable[d] = self.objects.usable(d, row)
                    st = usable[d]
                    if st is not None:
                        digests.set(i, d)
                        continue
                missing.append(i)

        if self.limit_bytes and missing:
            need = sum(manifest.sizes[i] for i in missing)
            self.evict(target_bytes=max(0, self.limit_bytes - need), keep={fp})

        workdir = self.files.transfer_dir(fp)
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
            at: dict[str, int] = {}  # the entries handed to the transfer and not back yet

            def wanted(positions: array[int]) -> Iterator[Entry]:
                for i in positions:
                    e = entries[i]
                    at[e.path] = i
                    yield e

            for batch in transfer.fetch_batches(source.objects(wanted(missing))):
                self.objects.ingest(source.uri, batch, fp)
                for fetched in batch:
                    digests.set(at.pop(fetched.entry.path), fetched.digest)
                    if on_object:
                        on_object(fetched)
        del missing
        absent = digests.first_missing()
        if absent is not None:
            raise CacheError(
                f"{source.uri}: entries were not delivered (first: {entries[absent].path})"
            )
        self.trees.build(manifest, digests, fp)
        write_record(self.manifest_path(fp), manifest, digests)
        del digests  # not needed to seal the tree: its 32 bytes an entry are freed first
        self.trees.publish(fp)
        self.index.finish_staging(fp)
        try:
            rmtree(workdir)
        except OSError as exc:  # staged all the same; gc removes it later
            log.warning("%s: cannot remove %s: %s", self.root, workdir, exc)
        st = transfer.stats
        return StagedDataset(
            fp,
            self.dataset_path(fp),
            n,
            manifest.total_bytes,
            hit=False,
            bytes_fetched=st.bytes_fetched,
            objects_fetched=st.objects,
            seconds=time.monotonic() - started,
            first_object_seconds=st.first_object_seconds,
            retries=st.retries,
        )

    # -- leases -------------------------------------------------------------------------
    def scratch(self, purpose: str) -> AbstractContextManager[Path]:
        """An empty folder on the cache's disk for work in progress (a recipe's output),
        removed after the block; one a killed process left behind goes at the next ``gc``."""
        return scratch(self.files, purpose)

    @contextmanager
    def lease(self, fingerprint: str) -> Iterator[Path]:
        """Keep a cached dataset from eviction while the block runs; freed on exit or death.

        Raises CacheError when the dataset is not (or no longer) cached; ``use()`` stages
        and leases in one step. A tree that fails its seal check is repaired from its source
        first (as ``stage`` does).
        """
        with mapped_disk_errors(self.root):
            reading = self.leases.reading(fingerprint)
            reading.__enter__()
        try:
            path = self._leased_path(fingerprint)
            yield path
        finally:
            reading.__exit__(None, None, None)

    def _leased_path(self, fingerprint: str) -> Path:
        staged = self._handout(fingerprint)
        if staged is not None:
            return staged.path
        if self.lookup(fingerprint) is None:
            raise CacheError(
                f"dataset {fingerprint[:12]} is not in the cache at {self.root}",
                hint="stage it first, or use LocalCache.use() to stage and lease at once",
            )
        manifest = self.manifest(fingerprint)
        if manifest is None:
            raise CacheError(
                f"dataset {fingerprint[:12]} was written to on this node and has no manifest "
                "to repair it from",
                hint="run `mlstage cache verify --repair`, then stage it again",
            )
        from mlstage.sources import open_source

        return self.stage(open_source(manifest.source), manifest).path

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
        with mapped_disk_errors(self.root):
            return self.leases.hold(fingerprint, ttl_seconds, holder=holder, bind_pid=bind_pid)

    def release(self, lease_id: int) -> bool:
        """End a recorded lease; False when it was already gone (released or reclaimed)."""
        with mapped_disk_errors(self.root):
            return self.leases.release(lease_id)

    def in_use(self, fingerprint: str) -> bool:
        """True while any process holds a lease flock or a live recorded lease on it."""
        with mapped_disk_errors(self.root):
            return self.leases.in_use(fingerprint)

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
        with mapped_disk_errors(self.root):
            return self.eviction.evict(target_bytes=target, keep=keep, wait=wait)

    def drop(self, fingerprint: str) -> bool:
        """Remove one dataset now unless it is in use; True if it was removed."""
        with mapped_disk_errors(self.root):
            return self.eviction.drop(fingerprint)

    def gc(self) -> GcReport:
        """Reclaim what crashes left: dead stagings and leases, unreferenced objects, stray
        folders, lock files of datasets no longer here (see ``Eviction.gc``)."""
        with mapped_disk_errors(self.root):
            return self.eviction.gc()

    # -- verification ---------------------------------------------------------------------
    def verify(
        self,
        *,
        repair: bool = False,
        open_source: SourceOpener | None = None,
        workers: int = 8,
        full: bool = True,
        on_progress: Callable[[str, int, int], None] | None = None,
    ) -> VerifyReport:
        """Check every object and every dataset tree (``mlstage.cache.verify``).

        ``full``: hash every object; otherwise check sizes and file metadata, hashing only
        files whose metadata changed. With ``repair``, re-fetch what is wrong from each
        dataset's source and rebuild the trees that use it.
        """
        if open_source is None:
            from mlstage.sources import open_source as default_opener

            open_source = default_opener
        with mapped_disk_errors(self.root):
            return verify(
                self,
                repair=repair,
                open_source=open_source,
                workers=workers,
                full=full,
                on_progress=on_progress,
            )

    def refetch(self, source: Source, manifest: Manifest, *, workers: int = 8) -> None:
        """Stage ``manifest`` again under its stage lock, fetching every object that is not
        sound; used by ``verify --repair`` (the tree is rebuilt and sealed afresh)."""
        fp = manifest.fingerprint
        with self.stage_lock(fp):
            try:
                self._stage_locked(
                    fp,
                    source,
                    manifest,
                    workers,
                    16 * 1024 * 1024,
                    None,
                    None,
                    None,
                    time.monotonic(),
                )
            except MlstageError:
                self._abandon(fp)
                raise
