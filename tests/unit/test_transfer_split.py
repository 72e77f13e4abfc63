"""The transfer splits every object larger than a part into ranged parts (when the source
reads ranges), and streams it whole otherwise."""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from mlstage.manifest import Entry, Manifest
from mlstage.retry import RetryPolicy
from mlstage.sources.base import FileObjectSource, RemoteObject
from mlstage.transfer import Transfer

PART = 4096


class RangeSource(FileObjectSource):
    supports_ranges = True

    def __init__(self, files: dict[str, bytes]) -> None:
        self.uri = "mem://split"
        self.files = files
        self.reads: Counter[str] = Counter()
        self.lock = threading.Lock()

    def resolve(self) -> Manifest:
        return Manifest(
            source=self.uri,
            entries=[
                Entry(path=k, size=len(v), checksum=f"md5:{hashlib.md5(v).hexdigest()}", locator=k)
                for k, v in self.files.items()
            ],
        )

    def read(self, obj: RemoteObject, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        with self.lock:
            self.reads[obj.key] += 1
        yield self.files[obj.key][start : obj.size if end is None else end]


def _fetch(files: dict[str, bytes], tmp: Path, workers: int) -> RangeSource:
    src = RangeSource(files)
    t = Transfer(src, tmp, workers=workers, part_size=PART, retry=RetryPolicy(attempts=1))
    got = {f.entry.path: f.path.read_bytes() for f in t.fetch(src.objects(src.resolve().entries))}
    assert got == files
    return src


def test_many_large_objects_are_split_too(tmp_path: Path) -> None:
    # before: four objects of 3 parts came whole, one GET each (a rule tuned to moto, which
    # reads the whole object for every range; a real object store does not)
    files = {f"o{i}": bytes([i]) * (3 * PART) for i in range(4)}
    assert set(_fetch(files, tmp_path, workers=16).reads.values()) == {3}


def test_a_source_without_ranges_streams_large_objects_whole(tmp_path: Path) -> None:
    files = {f"o{i}": bytes([i]) * (3 * PART) for i in range(2)}
    src = RangeSource(files)
    src.supports_ranges = False
    t = Transfer(src, tmp_path, workers=4, part_size=PART, retry=RetryPolicy(attempts=1))
    got = {f.entry.path: f.path.read_bytes() for f in t.fetch(src.objects(src.resolve().entries))}
    assert got == files and set(src.reads.values()) == {1}


def test_a_few_large_objects_are_split(tmp_path: Path) -> None:
    files = {f"o{i}": bytes([i]) * (3 * PART) for i in range(3)}
    assert set(_fetch(files, tmp_path, workers=16).reads.values()) == {3}


def test_very_large_objects_are_split_even_when_many(tmp_path: Path) -> None:
    files = {f"o{i}": bytes([i]) * (9 * PART) for i in range(4)}
    assert set(_fetch(files, tmp_path, workers=16).reads.values()) == {9}
