"""StreamingDataset: staging in a background thread, readable as objects land."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlstage.cache import LocalCache, StagedDataset
from mlstage.cache.leases import pid_alive, pid_start
from mlstage.errors import CacheError, ConfigError, MlstageError
from mlstage.manifest import Entry, Manifest
from mlstage.redact import scrub_text, scrub_uri
from mlstage.retry import RetryPolicy
from mlstage.sources.base import Source
from mlstage.stream._priority import Admission, PrioritySource
from mlstage.stream._reading import (
    Order,
    ReadyObject,
    StreamCancelled,
    StreamFailed,
    StreamView,
    iterate,
)
from mlstage.transfer import Fetched

log = logging.getLogger("mlstage.stream")

OWNER_FILE = "owner.json"
# A stream folder without an owner file (older mlstage, or a creator killed between mkdir
# and writing it) is only reaped after this long: it may belong to a live stream elsewhere.
STALE_UNOWNED_SECONDS = 7 * 24 * 3600
_LOCK_POLL = 0.1


@dataclass(frozen=True)
class StreamStats:
    """What a stream cost the reader: when data came, how long the reader waited for it."""

    objects_total: int
    objects_ready: int
    objects_present: int  # already in the cache when the stream started (resumed or shared)
    bytes_fetched: int
    time_to_first_object_s: float | None
    time_to_ready_s: float | None
    stall_seconds: float

    def as_metrics(self) -> dict[str, float | None]:
        """The per-run metrics recorded in the state DB."""
        return {
            "time_to_first_object_s": _round(self.time_to_first_object_s),
            "time_to_ready_s": _round(self.time_to_ready_s),
            "data_stall_seconds": _round(self.stall_seconds),
        }


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


class StreamingDataset:
    """A dataset staging in the background, readable as its objects land. Use ``open_stream``."""

    def __init__(
        self,
        cache: LocalCache,
        source: Source,
        manifest: Manifest,
        *,
        workers: int = 16,
        part_size: int = 16 * 1024 * 1024,
        retry: RetryPolicy | None = None,
        priority: Sequence[str] | None = None,
        lookahead_bytes: int = 8 * 1024 * 1024,
        order: Order = "manifest",
    ) -> None:
        self.cache = cache
        self.manifest = manifest
        self.order: Order = order
        self._workers = workers
        self._part_size = part_size
        self._retry = retry
        self._sizes = {e.path: e.size for e in manifest.entries}
        head = [p for p in (priority or []) if p in self._sizes]
        ranked = list(dict.fromkeys([*head, *(e.path for e in manifest.entries)]))
        self._cancelled = threading.Event()
        self._admission = Admission(lookahead_bytes, workers, self._cancelled)
        self._source = PrioritySource(
            source, {p: i for i, p in enumerate(ranked)}, self._admission, self._count_bytes
        )
        self._inner_source = source
        self.root = (
            cache.root
            / "streams"
            / f"{manifest.fingerprint[:12]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        self.view = StreamView(self.root, tuple((e.path, e.size) for e in manifest.entries))
        self._cond = threading.Condition()
        self._ready: list[str] = []
        self._ready_set: set[str] = set()
        self._end: dict[str, str] | None = None
        self._error: BaseException | None = None
        self._staged: StagedDataset | None = None
        self._present = 0
        self._bytes = 0
        self._stall = 0.0
        self._started = 0.0
        self._first: float | None = None
        self._complete_at: float | None = None
        self._callbacks = False
        self._closed = False
        self._lease = contextlib.ExitStack()
        self._thread: threading.Thread | None = None
        self._log: Any = None

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> StreamingDataset:
        """Create the stream folder and start staging in a background thread."""
        _remove_stale_streams(self.cache.root / "streams", self.cache.host)
        try:
            self.root.mkdir(parents=True)
            _write_owner(self.root, self.cache.host)
            (self.root / "data").mkdir()
            (self.root / "stall").mkdir()
            self._log = open(self.view.ready_list, "a", buffering=1)  # noqa: SIM115 - closed in _finish
        except OSError as exc:
            raise CacheError(
                f"cannot create the stream folder {self.root}: {exc.strerror}",
                hint="check the cache folder is writable",
            ) from exc
        self._started = time.monotonic()
        self._thread = threading.Thread(
            target=self._run, name=f"mlstage-stream-{self.manifest.fingerprint[:8]}", daemon=True
        )
        self._thread.start()
        return self

    def close(self, *, cancel: bool = True) -> None:
        """Stop (``cancel``) or finish staging, release the lease, remove the stream folder.

        Paths handed out by this stream stop existing; the complete dataset stays at
        ``LocalCache.dataset_path``, and an incomplete one stays resumable in the object store.
        """
        if cancel and not self.complete:
            self._cancelled.set()
        if self._thread is not None:
            self._thread.join()
        self._lease.close()
        self._closed = True
        if self.root.exists():
            self._collect_stall()
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> StreamingDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        """The folder being filled (valid until ``close``)."""
        return self.view.data_dir

    @property
    def complete(self) -> bool:
        with self._cond:
            return self._end is not None and self._end["end"] == "complete"

    def __iter__(self) -> Iterator[ReadyObject]:
        return self.iter_ready(self.order)

    def __len__(self) -> int:
        return len(self.manifest)

    def iter_ready(
        self, order: Order | None = None, paths: Sequence[str] | None = None
    ) -> Iterator[ReadyObject]:
        """Ready objects of ``paths`` (default: all) in manifest or completion order.

        Blocks only while the object it needs next has not landed; that time is the stall.
        """
        objects = iterate(
            self,
            list(paths) if paths is not None else [e.path for e in self.manifest.entries],
            self._sizes,
            self.data_dir,
            order or self.order,
            self._add_stall,
        )
        for obj in objects:
            if self._closed:  # its file went with the stream folder
                raise StreamCancelled(f"the stream over {self.manifest.source} is closed")
            yield obj

    def poll(self, cursor: int, timeout: float) -> tuple[list[str], int, dict[str, str] | None]:
        with self._cond:
            if cursor >= len(self._ready) and self._end is None:
                self._cond.wait(timeout)
            return list(self._ready[cursor:]), len(self._ready), self._end

    def wait_first(self, timeout: float | None = None) -> None:
        """Block until one object is ready (or the stream ended); raise if staging failed."""
        with self._cond:
            self._cond.wait_for(lambda: self._ready or self._end is not None, timeout)
        self._raise_failure()

    def wait(self, timeout: float | None = None) -> StagedDataset:
        """Block until staging is complete; the dataset is then a normal cache entry."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._end is not None, timeout):
                raise TimeoutError(f"staging {self.manifest.source} did not finish in {timeout} s")
        self._raise_failure()
        assert self._staged is not None
        return self._staged

    def stats(self) -> StreamStats:
        """Timings so far; stall includes workers whose iteration has ended."""
        with self._cond:
            ready = len(self._ready)
        return StreamStats(
            objects_total=len(self.manifest),
            objects_ready=ready,
            objects_present=self._present,
            bytes_fetched=self._bytes,
            time_to_first_object_s=None if self._first is None else self._first - self._started,
            time_to_ready_s=None
            if self._complete_at is None
            else self._complete_at - self._started,
            stall_seconds=self._stall + self._worker_stall(),
        )

    # -- internals ----------------------------------------------------------------------
    def _raise_failure(self) -> None:
        with self._cond:
            end = self._end
        if end is None:
            return
        if end["end"] == "cancelled":
            raise StreamCancelled(f"the stream over {self.manifest.source} was closed")
        if end["end"] == "failed":
            if isinstance(self._error, MlstageError):
                raise self._error
            raise StreamFailed(f"staging {self.manifest.source} failed: {end.get('error')}")

    def _add_stall(self, s: float) -> None:
        with self._cond:
            self._stall += s

    def _count_bytes(self, n: int) -> None:
        with self._cond:
            self._bytes += n

    def _worker_stall(self) -> float:
        total = 0.0
        with contextlib.suppress(OSError):
            for f in (self.root / "stall").iterdir():
                with contextlib.suppress(OSError, ValueError):
                    total += float(json.loads(f.read_text())["stall_seconds"])
        return total

    def _collect_stall(self) -> None:
        worker = self._worker_stall()
        with self._cond:
            self._stall += worker
        shutil.rmtree(self.root / "stall", ignore_errors=True)

    def _mark(self, path: str, source_file: Path) -> None:
        with self._cond:
            if path in self._ready_set or self._end is not None:
                return
            dest = self.data_dir / path
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                if not dest.exists():
                    os.link(source_file, dest)
            except OSError as exc:
                raise CacheError(
                    f"cannot link {path} into the stream folder {self.root}: {exc.strerror}"
                ) from exc
            self._log.write(json.dumps(path) + "\n")
            self._ready.append(path)
            self._ready_set.add(path)
            if self._first is None:
                self._first = time.monotonic()
            self._cond.notify_all()

    def _on_object(self, fetched: Fetched) -> None:
        self._callbacks = True
        if self._cancelled.is_set():
            raise StreamCancelled("the stream was closed")
        self._source.delivered(fetched.entry.path)
        self._mark(fetched.entry.path, self.cache.object_path(fetched.digest))

    def _pending(self) -> list[Entry]:
        with self._cond:
            return [e for e in self.manifest.entries if e.path not in self._ready_set]

    def _mark_present(self, limit: int | None = None) -> int:
        found = self.cache.present(self._inner_source, self._pending()[:limit])
        for path, digest in found.items():
            self._mark(path, self.cache.object_path(digest))
        return len(found)

    def _watch_other_stager(self, stop: threading.Event) -> None:
        # While another process holds the dataset's staging lock, its objects land in the
        # shared index without calling us back: surface them as they appear.
        while not stop.wait(0.25):
            if self._callbacks or self._cancelled.is_set():
                return
            with contextlib.suppress(MlstageError, OSError):
                self._mark_present(limit=256)  # the other stager fetches in manifest order too

    def _wait_for_other_stager(self) -> None:
        # LocalCache.stage blocks in flock while another process stages this dataset, and a
        # thread stuck there cannot see a cancel: wait here instead, where close() is heard.
        fp = self.manifest.fingerprint
        while not self._cancelled.is_set():
            if self.cache.lookup(fp) is not None:
                return
            with self.cache.stage_lock(fp, fcntl.LOCK_EX | fcntl.LOCK_NB) as free:
                pass
            if free:
                return
            self._cancelled.wait(_LOCK_POLL)
        raise StreamCancelled("the stream was closed")

    def _run(self) -> None:
        stop = threading.Event()
        watcher = threading.Thread(target=self._watch_other_stager, args=(stop,), daemon=True)
        try:
            self._present = self._mark_present()
            watcher.start()
            self._wait_for_other_stager()
            staged = self.cache.stage(
                self._source,
                self.manifest,
                workers=self._workers,
                part_size=self._part_size,
                retry=self._retry,
                on_object=self._on_object,
            )
            stop.set()
            watcher.join()
            self._lease.enter_context(self.cache.lease(self.manifest.fingerprint))
            for e in self._pending():
                self._mark(e.path, staged.path / e.path)
            self._staged = staged
            self._finish({"end": "complete"})
        except StreamCancelled:
            self._finish({"end": "cancelled"})
        except BaseException as exc:  # noqa: BLE001 - handed to the readers
            self._error = exc
            error = scrub_text(f"{type(exc).__name__}: {exc}")  # logged and written to disk
            log.warning("streaming %s failed: %s", scrub_uri(self.manifest.source), error)
            self._finish({"end": "failed", "error": error})
        finally:
            stop.set()

    def _finish(self, end: dict[str, str]) -> None:
        with self._cond:
            if end["end"] == "complete":
                self._complete_at = time.monotonic()
            with contextlib.suppress(OSError, ValueError):
                self._log.write(json.dumps(end) + "\n")
                self._log.close()
            self._end = end
            self._cond.notify_all()


def _write_owner(root: Path, host: str) -> None:
    pid = os.getpid()
    body = {"host": host, "pid": pid, "start": pid_start(pid)}
    tmp = root / f".{OWNER_FILE}.tmp"
    tmp.write_text(json.dumps(body))
    os.replace(tmp, root / OWNER_FILE)


def _stream_is_dead(d: Path, host: str, now: float) -> bool:
    """True only if ``d``'s stream surely ended: same host and pid namespace, pid gone.

    Pods sharing a hostPath cache have their own pid namespaces, so a pid from another
    host identity says nothing about liveness here; such folders are never reaped.
    """
    try:
        owner = json.loads((d / OWNER_FILE).read_text())
    except FileNotFoundError:
        try:
            return now - d.stat().st_mtime > STALE_UNOWNED_SECONDS
        except OSError:
            return False
    except (OSError, ValueError):
        return False
    if not isinstance(owner, dict) or owner.get("host") != host:
        return False
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    return not pid_alive(pid, owner.get("start"))


def _remove_stale_streams(folder: Path, host: str) -> None:
    """Remove stream folders whose process is surely gone (links only: no data is lost)."""
    if not folder.is_dir():
        return
    now = time.time()
    for d in folder.iterdir():
        parts = d.name.split("-")
        if len(parts) != 3 or not parts[1].isdigit() or not d.is_dir():
            continue
        if _stream_is_dead(d, host, now):
            shutil.rmtree(d, ignore_errors=True)


def open_stream(
    cache: LocalCache,
    source: Source,
    manifest: Manifest,
    *,
    workers: int = 16,
    part_size: int = 16 * 1024 * 1024,
    retry: RetryPolicy | None = None,
    priority: Sequence[str] | None = None,
    lookahead_bytes: int = 8 * 1024 * 1024,
    order: Order = "manifest",
) -> StreamingDataset:
    """Start staging ``manifest`` from ``source`` and return a reader over it (already started).

    ``priority`` lists paths to fetch first (the rest follow in manifest order);
    ``lookahead_bytes`` bounds how far ahead of the head object reads run concurrently.
    """
    if lookahead_bytes < 0:
        raise ConfigError("lookahead_bytes must be >= 0")
    return StreamingDataset(
        cache,
        source,
        manifest,
        workers=workers,
        part_size=part_size,
        retry=retry,
        priority=priority,
        lookahead_bytes=lookahead_bytes,
        order=order,
    ).start()
