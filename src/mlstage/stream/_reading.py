"""Reading a stream in order, in this process or any other on the node (``StreamView``)."""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from mlstage.errors import ConfigError, MlstageError

Order = Literal["manifest", "completion"]
READY_LIST_ENV = "MLSTAGE_READY_LIST"
_POLL = 0.02


class StreamCancelled(MlstageError):
    """The stream was closed before its dataset was complete; what landed is kept."""


class StreamFailed(MlstageError):
    """Staging behind a stream failed; the reader cannot get the objects it waits for."""


@dataclass(frozen=True)
class ReadyObject:
    """One verified object a reader can open now."""

    path: str  # relative path inside the dataset
    file: Path  # readable while the stream is open
    size: int


class Feed(Protocol):
    def poll(self, cursor: int, timeout: float) -> tuple[list[str], int, dict[str, str] | None]:
        """Ready paths after ``cursor`` (waiting up to ``timeout`` for one), new cursor, end."""
        ...


def iterate(
    feed: Feed,
    wanted: Sequence[str],
    sizes: dict[str, int],
    data_dir: Path,
    order: Order,
    add_stall: Callable[[float], None],
) -> Iterator[ReadyObject]:
    if order not in ("manifest", "completion"):
        raise ConfigError(f"unknown order {order!r}", hint="use 'manifest' or 'completion'")
    unknown = [p for p in wanted if p not in sizes]
    if unknown:
        raise ConfigError(f"not in the dataset: {unknown[0]!r} ({len(unknown)} paths)")
    wanted_set = set(wanted)
    ready: set[str] = set()
    landed: deque[str] = deque()
    cursor, end, nxt, done = 0, None, 0, 0
    while done < len(wanted):
        if order == "manifest" and wanted[nxt] in ready:
            p = wanted[nxt]
            nxt += 1
        elif order == "completion" and landed:
            p = landed.popleft()
        elif end is not None:
            if end["end"] == "cancelled":
                raise StreamCancelled("the stream was closed before this object landed")
            raise StreamFailed(f"staging failed: {end.get('error', 'unknown error')}")
        else:
            t0 = time.monotonic()
            new, cursor, end = feed.poll(cursor, 0.5)
            add_stall(time.monotonic() - t0)
            for q in new:
                if q in wanted_set and q not in ready:
                    ready.add(q)
                    landed.append(q)
            continue
        done += 1
        yield ReadyObject(p, data_dir / p, sizes[p])


class _FileFeed:
    """Tails ``ready.jsonl``: works from any process on the node."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def poll(self, cursor: int, timeout: float) -> tuple[list[str], int, dict[str, str] | None]:
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            try:
                with open(self.path, "rb") as f:
                    f.seek(cursor)
                    data = f.read()
            except FileNotFoundError as exc:  # created before the stream starts: it was closed
                raise StreamCancelled(
                    f"the stream at {self.path.parent} is closed",
                    hint="read the complete dataset from the cache, or open a new stream",
                ) from exc
            cut = data.rfind(b"\n") + 1
            if cut:
                new: list[str] = []
                end = None
                for line in data[:cut].splitlines():
                    item = json.loads(line)
                    if isinstance(item, str):
                        new.append(item)
                    else:
                        end = item
                return new, cursor + cut, end
            if time.monotonic() >= deadline:
                return [], cursor, None
            time.sleep(delay)
            delay = min(delay * 2, _POLL)


@dataclass(frozen=True)
class StreamView:
    """A picklable handle on a stream's folder: read it from any process on this node."""

    root: Path
    entries: tuple[tuple[str, int], ...]  # (path, size) in manifest order

    @property
    def data_dir(self) -> Path:
        """The folder being filled: ready objects appear here under their dataset paths."""
        return self.root / "data"

    @property
    def ready_list(self) -> Path:
        """One JSON line per ready path, then ``{"end": ...}``; tail it to follow the stream."""
        return self.root / "ready.jsonl"

    def paths(self) -> list[str]:
        return [p for p, _ in self.entries]

    def iter_ready(
        self, order: Order = "manifest", paths: Sequence[str] | None = None
    ) -> Iterator[ReadyObject]:
        """Ready objects of ``paths`` (default: all) in ``order``; blocks only for the next one.

        The time spent blocked is written under ``stall/`` when the iteration ends, so the
        stream that owns the folder can report the stall of every worker.
        """
        stall = [0.0]

        def add(s: float) -> None:
            stall[0] += s

        try:
            yield from iterate(
                _FileFeed(self.ready_list),
                list(paths) if paths is not None else self.paths(),
                dict(self.entries),
                self.data_dir,
                order,
                add,
            )
        finally:
            with contextlib.suppress(OSError):
                out = self.root / "stall" / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
                out.write_text(json.dumps({"stall_seconds": stall[0]}))
