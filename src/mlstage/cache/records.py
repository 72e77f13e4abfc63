"""A cached dataset's record: the manifest it was built from and the sha256 of each entry.

``manifests/<fp>.json`` holds it (the manifest's JSON Lines with each entry's digest); it is
written (to a temp file, then renamed) before the tree is published, so every ready dataset
has one. Verification, repair and ``--to`` read it; a hit does not.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from mlstage.errors import CacheError, ConfigError
from mlstage.manifest import Entry, Manifest


class Digests(Sequence[str]):
    """The sha256 of each entry of a dataset being staged: 32 bytes an entry, filled in as
    objects are found or fetched (a million-file staging holds 32 MB, not a million strings).
    ``Digests.expecting(manifest)`` for a manifest whose checksums are all sha256 (an
    artifact): its digests are the manifest's own bytes, only confirmed as entries arrive."""

    def __init__(self, n: int, raw: bytearray | None = None) -> None:
        self._raw = raw if raw is not None else bytearray(32 * n)
        self._set = bytearray(b"\x01" * n) if raw is not None else bytearray(n)
        self._n = n
        self._known = False

    @classmethod
    def expecting(cls, manifest: Manifest) -> Digests:
        """Digests for staging ``manifest``: none set yet."""
        known = manifest.sha256_digests()
        if known is None:
            return cls(len(manifest))
        out = cls(len(manifest), known)
        out._set = bytearray(len(manifest))
        out._known = True
        return out

    def __len__(self) -> int:
        return self._n

    def set(self, i: int, digest: str) -> None:
        raw = bytes.fromhex(digest)
        if not self._known:
            self._raw[32 * i : 32 * i + 32] = raw
        elif self._raw[32 * i : 32 * i + 32] != raw:  # a fetch checks the sha256: never seen
            raise CacheError(f"entry {i} arrived with sha256 {digest}, not the one it lists")
        self._set[i] = 1

    def has(self, i: int) -> bool:
        return bool(self._set[i])

    def first_missing(self) -> int | None:
        """The first entry without a digest yet, or None when every entry has one."""
        i = self._set.find(0)
        return None if i < 0 else i

    def __getitem__(self, i):  # type: ignore[no-untyped-def, override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        if not self._set[i]:
            raise KeyError(f"entry {i} has no digest yet")
        return self._raw[32 * i : 32 * i + 32].hex()

    def __iter__(self) -> Iterator[str]:
        raw = self._raw
        for i in range(self._n):
            yield raw[32 * i : 32 * i + 32].hex()


def read_record(path: Path) -> tuple[Manifest, Digests] | None:
    """The manifest and per-entry digests at ``path``; None when there is no record."""
    try:
        with open(path, encoding="utf-8") as f:
            manifest, digests = Manifest.read(f, origin=str(path))
    except FileNotFoundError:
        return None
    except (ConfigError, UnicodeDecodeError, OSError) as exc:
        raise _unreadable(path, exc) from exc
    if len(digests) != 32 * len(manifest):
        raise CacheError(
            f"{path} holds no digest for some entries", hint="run `mlstage cache verify --repair`"
        )
    return manifest, Digests(len(manifest), digests)


def stream_record(path: Path) -> Iterator[tuple[Entry, str]] | None:
    """The record at ``path`` read entry by entry, each with its digest (hex), in path order,
    holding one line at a time (a full check of a million-file dataset never holds its
    manifest); None when there is no record. Raises CacheError where it turns out unreadable
    or an entry has no digest, possibly after yielding the entries before."""
    try:
        f = open(path, encoding="utf-8")  # noqa: SIM115 - closed by the generator
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    return _rows(path, f)


def _rows(path: Path, f: IO[str]) -> Iterator[tuple[Entry, str]]:
    with f:
        try:
            for entry, digest in Manifest.stream(f, origin=str(path)):
                if len(digest) != 32:
                    raise CacheError(
                        f"{path} holds no digest for {entry.path!r}",
                        hint="run `mlstage cache verify --repair`",
                    )
                yield entry, digest.hex()
        except (ConfigError, UnicodeDecodeError, OSError) as exc:
            raise _unreadable(path, exc) from exc


def _unreadable(path: Path, exc: Exception) -> CacheError:
    return CacheError(f"{path} is unreadable: {exc}", hint="run `mlstage cache verify --repair`")


def write_record(path: Path, manifest: Manifest, digests: Sequence[str]) -> None:
    """Write the record atomically; a failed write leaves no temp file behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            manifest.write(f, digests=digests)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
