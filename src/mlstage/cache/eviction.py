"""Eviction, removal and garbage collection: making room without pulling data from a reader.

Eviction works from the index alone (LRU on ``last_used``; total bytes is a trigger-kept
counter): no directory scan. Unreferenced objects go first, then whole datasets that nobody
leases. It runs before a staging to make room and after it to honour the limit; the dataset
being staged and every leased dataset are never evicted. A dataset's lock files go with it.

Crash safety: removal moves the file or tree to ``tmp/trash`` inside the transaction that
forgets it; if the process dies before the commit, the next evictor (or opening the cache)
finds the trash entry still indexed and moves it back (``recover``).
"""

from __future__ import annotations

import fcntl
import os
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from mlstage.cache.files import (
    CacheFiles,
    flock,
    move_tree,
    remove_abandoned_scratch,
    remove_lock,
    rmtree,
)
from mlstage.cache.index import CacheIndex
from mlstage.cache.leases import Leases
from mlstage.cache.trees import Trees
from mlstage.errors import ConfigError


@dataclass
class GcReport:
    """What ``LocalCache.gc`` reclaimed."""

    stagings_reclaimed: list[str] = field(default_factory=list)
    leases_reclaimed: int = 0
    objects_removed: int = 0
    bytes_removed: int = 0
    stray_dirs_removed: int = 0
    stray_files_removed: int = 0  # manifests a writer left half-written
    locks_removed: int = 0  # lock files of datasets no longer in the cache


class Eviction:
    """Removing datasets and objects from the cache at ``files.root``."""

    def __init__(self, files: CacheFiles, index: CacheIndex, leases: Leases, trees: Trees) -> None:
        self.files = files
        self.index = index
        self.leases = leases
        self.trees = trees

    def _evict_lock(self, *, wait: bool = True):  # noqa: ANN202 - a flock context manager
        mode = fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB
        return flock(self.files.lock("evict"), mode)

    def _stage_lock(self, fingerprint: str, *, wait: bool = False):  # noqa: ANN202
        mode = fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB
        return flock(self.files.lock(f"stage-{fingerprint}"), mode)

    def evict(
        self, *, target_bytes: int, keep: set[str] | None = None, wait: bool = True
    ) -> list[str]:
        """Drop least-recently-used datasets not in use until objects fit ``target_bytes``.

        Unreferenced objects go first, then whole datasets. Returns the fingerprints evicted.
        """
        evicted: list[str] = []
        with self._evict_lock(wait=wait) as got:
            if not got:
                return evicted
            self.recover()
            if self.index.object_bytes() <= target_bytes:
                return evicted
            self.reclaim_stagings()
            self.leases.reclaim()
            self._delete_orphans(target_bytes)
            keep = keep or set()
            for row in self.index.datasets_lru():
                if self.index.object_bytes() <= target_bytes:
                    break
                if row.fingerprint not in keep and self._drop_unless_used(row.fingerprint):
                    evicted.append(row.fingerprint)
        return evicted

    def drop(self, fingerprint: str) -> bool:
        """Remove one dataset now unless it is in use; True if it was removed."""
        with self._evict_lock():
            if self.index.dataset(fingerprint) is None:
                raise ConfigError(f"dataset {fingerprint} is not in the cache at {self.files.root}")
            return self._drop_unless_used(fingerprint)

    def _drop_unless_used(self, fingerprint: str) -> bool:
        """With the evict lock: drop a dataset nobody reads or leases; its lock files go too."""
        with self.leases.exclusive(fingerprint) as free:
            if not free or not self._drop(fingerprint):
                return False
            remove_lock(self.files.lock(f"lease-{fingerprint}"))
        with self._stage_lock(fingerprint) as idle:
            if idle and self.index.any_dataset(fingerprint) is None:
                remove_lock(self.files.lock(f"stage-{fingerprint}"))
        return True

    def _drop(self, fingerprint: str) -> bool:
        """Forget and remove a dataset unless a live recorded lease holds it; True if removed.

        The lease check, forgetting the row and moving the tree and manifest aside share one
        transaction: lookups miss from its commit on, a ``hold()`` either lands before it (and
        keeps the dataset) or finds it gone, and a re-stage that follows the commit writes a
        manifest nothing removes. A crash inside it is undone by ``recover``.
        """
        path = self.files.dataset_path(fingerprint)
        trash = self.files.trash(f"ds-{fingerprint}")
        records = [
            (self.files.manifest_path(fingerprint), self.files.trash(f"mf-{fingerprint}")),
            (self.files.seal_path(fingerprint), self.files.trash(f"sl-{fingerprint}")),
        ]
        with self.index.tx() as db:
            if self.leases.recorded(fingerprint):
                return False
            digests = self.index.forget_dataset(db, fingerprint)
            if os.path.lexists(path):
                move_tree(path, trash)
            for kept, aside in records:
                with suppress(FileNotFoundError):
                    os.rename(kept, aside)
        self._empty_trash(trash)
        for _kept, aside in records:
            aside.unlink(missing_ok=True)
        self.delete_objects(digests)
        return True

    def _empty_trash(self, path: Path) -> None:
        """Remove something moved to the trash; what cannot be removed now stays there for the
        next ``recover`` (it is forgotten already)."""
        with suppress(OSError):
            rmtree(path)

    def _delete_orphans(self, target: int) -> None:
        while self.index.object_bytes() > target:
            orphans = self.index.orphan_objects(limit=500)
            if not orphans:
                return
            self.delete_objects(orphans)

    def delete_objects(self, digests: list[str], batch: int = 500) -> tuple[int, int]:
        """Remove objects no dataset references (others are skipped); (count, bytes)."""
        count = nbytes = 0
        for i in range(0, len(digests), batch):
            moved: list[Path] = []
            with self.index.tx() as db:
                for d in self.index.unreferenced(db, digests[i : i + batch]):
                    size = self.index.size_of(db, d)
                    self.index.delete_object_row(db, d)
                    trash = self.files.trash(f"obj-{d}")
                    try:
                        os.rename(self.files.object_str(d), trash)
                        moved.append(trash)
                    except FileNotFoundError:
                        pass
                    count += 1
                    nbytes += size
            for t in moved:
                self._empty_trash(t)
        return count, nbytes

    def recover(self) -> None:
        """Undo removals whose transaction never committed (their owner died); finish the rest."""
        for item in os.scandir(self.files.root / "tmp" / "trash"):
            kind, _, rest = item.name.partition("-")
            name = rest.split(".", 1)[0]
            path = Path(item.path)
            if (
                kind == "obj"
                and self.index.has_object(name)
                and not os.path.lexists(self.files.object_str(name))
            ):
                os.rename(path, self.files.object_str(name))
            elif (
                kind == "ds"
                and self.index.dataset(name)
                and not os.path.lexists(self.files.dataset_path(name))
            ):
                move_tree(path, self.files.dataset_path(name))
            elif (
                kind == "mf"
                and self.index.dataset(name)
                and not self.files.manifest_path(name).exists()
            ):
                os.rename(path, self.files.manifest_path(name))
            elif (
                kind == "sl"
                and self.index.dataset(name)
                and not self.files.seal_path(name).exists()
            ):
                os.rename(path, self.files.seal_path(name))
            else:
                self._empty_trash(path)

    def reclaim_stagings(self) -> list[str]:
        """Forget 'staging' rows whose stager is gone (its flock is free); keeps its objects."""
        reclaimed = []
        for row in self.index.datasets_lru(state="staging"):
            with self._stage_lock(row.fingerprint) as free:
                if not free:
                    continue
                current = self.index.any_dataset(row.fingerprint)
                if current is None or current.state != "staging":
                    continue
                with self.index.tx() as db:
                    self.index.forget_dataset(db, row.fingerprint)
                self.trees.discard(row.fingerprint)
                reclaimed.append(row.fingerprint)
        return reclaimed

    def gc(self) -> GcReport:
        """Reclaim what crashes left: dead stagings and leases, unreferenced objects, stray
        folders and files, lock files of datasets no longer here.

        Lists ``datasets/``, ``tmp/``, ``manifests/`` and ``locks/`` (about one entry per
        dataset each), never the objects.
        """
        report = GcReport()
        with self._evict_lock():
            self.recover()
            report.stagings_reclaimed = self.reclaim_stagings()
            report.leases_reclaimed = self.leases.reclaim()
            while orphans := self.index.orphan_objects(limit=500):
                n, b = self.delete_objects(orphans)
                report.objects_removed += n
                report.bytes_removed += b
                if n == 0:
                    break
            for item in os.scandir(self.files.root / "datasets"):
                fp = item.name.removeprefix(".tmp-")
                if item.name == fp and self.index.dataset(fp) is not None:
                    continue
                with self._stage_lock(fp) as free:
                    if free and (item.name != fp or self.index.dataset(fp) is None):
                        rmtree(Path(item.path))
                        report.stray_dirs_removed += 1
            for item in os.scandir(self.files.root / "tmp"):
                if item.name.startswith("scratch-"):
                    report.stray_dirs_removed += remove_abandoned_scratch(Path(item.path))
                    continue
                if not item.name.startswith("xfer-"):
                    continue
                with self._stage_lock(item.name.removeprefix("xfer-")) as free:
                    if free:
                        rmtree(Path(item.path))
                        report.stray_dirs_removed += 1
            for item in os.scandir(self.files.root / "manifests"):
                if not item.name.startswith("."):  # .<fp>.json|seal.<pid>: a writer died
                    continue
                with self._stage_lock(item.name[1:].split(".", 1)[0]) as free:
                    if free:
                        Path(item.path).unlink(missing_ok=True)
                        report.stray_files_removed += 1
            report.locks_removed = self._remove_stale_locks()
        return report

    def _remove_stale_locks(self) -> int:
        """Remove the stage and lease lock files of datasets the index no longer has."""
        removed = 0
        for item in os.scandir(self.files.root / "locks"):
            kind, _, rest = item.name.partition("-")
            fp = rest.removesuffix(".lock")
            if kind not in ("stage", "lease") or self.index.any_dataset(fp) is not None:
                continue
            mode = fcntl.LOCK_EX | fcntl.LOCK_NB
            with flock(Path(item.path), mode) as free:
                if free and self.index.any_dataset(fp) is None:
                    remove_lock(Path(item.path))
                    removed += 1
        return removed
