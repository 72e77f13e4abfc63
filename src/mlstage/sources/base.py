"""The Source protocol: list a dataset into a Manifest, then read its objects' bytes.

A source lists (``resolve``) and reads byte ranges (``read``); the transfer engine does
concurrency, retries, verification and atomic publication for every source alike. Most sources
store one file per object; an archive source (ClearML's zip chunks) maps one object to many
entries through ``objects`` and ``unpack``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from mlstage.errors import TransientError
from mlstage.manifest import Entry, Manifest


class CorruptData(TransientError):
    """Bytes that failed a checksum in flight: retried, then reported as an IntegrityError."""


# obj.meta key: the checksum of the whole object as its source sent it with the bytes of a whole
# (unranged) read, '<algo>:<hex>' with algo one of crc32, sha1, sha256. The transfer verifies
# that read against it instead of ``checksum`` (cheaper: S3's CRC32 instead of MD5).
WHOLE_CHECKSUM = "whole_checksum"


@dataclass(frozen=True)
class RemoteObject:
    """One thing to download: a file, or an archive whose members are ``entries``.

    ``checksum`` ('<algo>:<hex>') is verified before the object is handed out; ``etag`` is the
    version the source listed (sources make reads conditional on it where they can).
    """

    key: str
    size: int
    checksum: str | None
    entries: tuple[Entry, ...]
    archive: bool = False
    meta: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    etag: str | None = None


@runtime_checkable
class Source(Protocol):
    """What every source kind implements."""

    uri: str
    supports_ranges: bool

    def resolve(self) -> Manifest:
        """List the dataset (no object bytes move). Raises ObjectNotFound when it is missing."""
        ...

    def objects(self, entries: Iterable[Entry]) -> Iterable[RemoteObject]:
        """The downloads that yield ``entries`` (made as they are consumed where it can)."""
        ...

    def read(self, obj: RemoteObject, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Stream bytes [start, end) of ``obj``; raise TransientError for what is worth a retry."""
        ...

    def unpack(self, obj: RemoteObject, path: Path, workdir: Path) -> list[tuple[Entry, Path]]:
        """Turn a downloaded archive into its members' files under ``workdir``."""
        ...


class FileObjectSource:
    """Base for sources where every entry is its own object (S3, HTTP, folders)."""

    uri: str = ""
    supports_ranges: bool = True

    def objects(self, entries: Iterable[Entry]) -> Iterator[RemoteObject]:
        return (RemoteObject(e.locator, e.size, e.checksum, (e,), etag=e.etag) for e in entries)

    def unpack(self, obj: RemoteObject, path: Path, workdir: Path) -> list[tuple[Entry, Path]]:
        return [(obj.entries[0], path)]
