"""Fetch priority: objects in the reader's order; the head alone, then a byte window ahead."""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from mlstage.manifest import Entry, Manifest
from mlstage.sources.base import RemoteObject, Source
from mlstage.stream._reading import StreamCancelled

_HEAD_TAIL = 256 * 1024


class Admission:
    """Lets reads start in priority order: the head object alone, then a byte window ahead.

    Pool threads reach ``admit`` in any order, so the ranks still expected (``expect``) hold
    back every higher rank until each has started once or was delivered without a read
    (``settle``: a verified leftover of an interrupted run).
    """

    def __init__(self, lookahead_bytes: int, max_inflight: int, cancelled: threading.Event):
        self.lookahead_bytes = lookahead_bytes
        self.max_inflight = max_inflight
        self.cancelled = cancelled
        self._cond = threading.Condition()
        self._waiting: list[tuple[int, int]] = []
        self._inflight: dict[int, list[int]] = {}  # token -> [rank, remaining, tail bytes]
        self._seq = itertools.count()
        self._head_done = False
        self._expected: list[int] = []  # heap of ranks that have not started yet
        self._started: set[int] = set()

    def expect(self, ranks: Sequence[int]) -> None:
        with self._cond:
            for r in ranks:
                heapq.heappush(self._expected, r)
            self._cond.notify_all()

    def settle(self, rank: int) -> None:
        with self._cond:
            self._started.add(rank)
            self._cond.notify_all()

    def _first_expected(self) -> int | None:
        while self._expected and self._expected[0] in self._started:
            heapq.heappop(self._expected)
        return self._expected[0] if self._expected else None

    def _room(self, rank: int) -> bool:
        if not self._inflight or all(s[0] == rank for s in self._inflight.values()):
            return True  # nothing running, or only other parts of this same object
        if len(self._inflight) >= self.max_inflight:
            return False
        if not self._head_done:  # the next request's round trip overlaps the head's tail
            return all(rem <= tail for _, rem, tail in self._inflight.values())
        return sum(s[1] for s in self._inflight.values()) < self.lookahead_bytes

    def admit(self, rank: int, nbytes: int) -> int:
        with self._cond:
            me = (rank, next(self._seq))
            heapq.heappush(self._waiting, me)
            try:
                while True:
                    if self.cancelled.is_set():
                        raise StreamCancelled("the stream was closed")
                    first = self._first_expected()
                    if (
                        self._waiting[0] == me
                        and (first is None or first >= rank)
                        and self._room(rank)
                    ):
                        heapq.heappop(self._waiting)
                        self._started.add(rank)
                        tail = min(_HEAD_TAIL, nbytes // 4)
                        self._inflight[me[1]] = [rank, nbytes, tail]
                        self._cond.notify_all()
                        return me[1]
                    self._cond.wait(0.1)
            except BaseException:
                if me in self._waiting:
                    self._waiting.remove(me)
                    heapq.heapify(self._waiting)
                    self._cond.notify_all()
                raise

    def progress(self, token: int, n: int) -> None:
        with self._cond:
            slot = self._inflight[token]
            before = slot[1]
            slot[1] = max(0, before - n)
            if before > slot[2] >= slot[1] or before >= self.lookahead_bytes > slot[1]:
                self._cond.notify_all()

    def release(self, token: int, *, finished: bool) -> None:
        with self._cond:
            self._inflight.pop(token, None)
            if finished:
                self._head_done = True
            self._cond.notify_all()


class PrioritySource:
    """The stream's view of a Source: objects in the reader's order, reads admitted in it."""

    def __init__(
        self,
        inner: Source,
        rank: dict[str, int],
        admission: Admission,
        on_bytes: Callable[[int], None],
    ) -> None:
        self._inner = inner
        self._rank = rank
        self._admission = admission
        self._on_bytes = on_bytes
        self._object_rank: dict[str, int] = {}
        self._path_rank: dict[str, int] = {}
        self.uri = inner.uri  # the cache keys objects by the source's URI: keep it identical

    @property
    def supports_ranges(self) -> bool:
        """The inner source's, asked each time: it may learn that its endpoint answers
        ranges with 200 (``mlstage.store.ranges``) after this view was made."""
        return self._inner.supports_ranges

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def resolve(self) -> Manifest:
        return self._inner.resolve()

    def objects(self, entries: Iterable[Entry]) -> list[RemoteObject]:
        objs = list(self._inner.objects(entries))  # ranked as a whole: the reader's order
        last = len(self._rank)
        for o in objs:
            r = min(self._rank.get(e.path, last) for e in o.entries)
            self._object_rank[o.key] = r
            self._path_rank.update((e.path, r) for e in o.entries)
        self._admission.expect([self._object_rank[o.key] for o in objs])
        return sorted(objs, key=lambda o: self._object_rank[o.key])

    def delivered(self, path: str) -> None:
        """``path`` is in the cache: never hold other reads back for its object."""
        r = self._path_rank.get(path)
        if r is not None:
            self._admission.settle(r)

    def read(self, obj: RemoteObject, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        end = obj.size if end is None else end
        token = self._admission.admit(self._object_rank.get(obj.key, 0), end - start)
        got = 0
        try:
            for chunk in self._inner.read(obj, start, end):
                if self._admission.cancelled.is_set():
                    raise StreamCancelled("the stream was closed")
                got += len(chunk)
                self._admission.progress(token, len(chunk))
                self._on_bytes(len(chunk))
                yield chunk
        finally:
            self._admission.release(token, finished=got >= end - start)

    def unpack(self, obj: RemoteObject, path: Path, workdir: Path) -> list[tuple[Entry, Path]]:
        return self._inner.unpack(obj, path, workdir)
