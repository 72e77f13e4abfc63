"""Manifest: the exact listing of a dataset version; its fingerprint is the version.

A manifest holds its entries as columns (packed strings and integer arrays), not as an object
per file: about 60-110 bytes a file in memory (a million-file dataset in well under 150 MB),
where a pydantic model per file took ~4 KB. ``Entry`` objects are made on access.

Paths are sorted as strings, the order S3 lists keys in and ``mlstage.cache.seal.walk`` walks a
folder in, so the usual sources hand entries over in order and nothing is sorted twice.

On disk (the shared tier's ``manifest.json``, the cache's records) a manifest is JSON Lines: a
header object, then one JSON array per entry, ``[path, size, checksum, etag, locator]``
(``locator`` null when it is the path). It is read and written a line at a time, so its size
in memory never depends on the parser's.
"""

from __future__ import annotations

import binascii
import bisect
import hashlib
import io
import itertools
import json
import operator
import re
import sys
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, NamedTuple, overload
from urllib.parse import urlsplit, urlunsplit

from mlstage.errors import ConfigError, UnsafePathError
from mlstage.paths import check_fits, safe_relpath

MANIFEST_FORMAT = 2
_CONTENT_ALGOS = ("sha256", "md5")
_HEX = re.compile("[0-9a-f]+")
_FP_MAGIC = b"mlstage manifest 2\n"
_BIG_ENDIAN = sys.byteorder == "big"
_INLINE_LIMIT = 2**32 - 2**20  # below it, an offset surely fits the 4-byte offsets


class _Fields(NamedTuple):
    path: str
    size: int
    checksum: str | None
    etag: str | None
    locator: str


class Entry(_Fields):
    """One file of a dataset: where it goes, how big it is, how to check and find it.

    ``path``: relative POSIX path inside the dataset (validated, normalised). ``checksum``:
    ``'<algo>:<hex>'`` (sha256, md5; others such as crc32 are checked but name no content).
    ``etag``: the source's version tag (S3 ETag, folder size-mtime, ...). ``locator``: where
    the source finds the bytes (key, URL, member); defaults to the path.
    """

    __slots__ = ()

    def __new__(
        cls,
        path: str,
        size: int,
        checksum: str | None = None,
        etag: str | None = None,
        locator: str | None = None,
    ) -> Entry:
        path = safe_relpath(path)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ConfigError(f"{path!r}: size {size!r} is not a byte count")
        _check_checksum(checksum)
        for text in (checksum, etag, locator):
            if text is not None and "\x00" in text:
                raise UnsafePathError(f"{path!r}: a NUL byte in its listing", hint="rename it")
        return tuple.__new__(cls, (path, size, checksum or None, etag or None, locator or path))

    @classmethod
    def trusted(
        cls, path: str, size: int, checksum: str | None, etag: str | None, locator: str
    ) -> Entry:
        """An entry whose fields are known valid (a path made of names a file system listed,
        a digest this process computed): no checks, for sources listing millions of files."""
        return tuple.__new__(cls, (path, size, checksum, etag, locator))

    @property
    def version_tag(self) -> str:
        """What identifies this entry's content: its checksum, else its ETag, else its size."""
        return self.checksum or (f"etag:{self.etag}" if self.etag else f"size:{self.size}")

    @property
    def content_addressed(self) -> bool:
        """True when the checksum names content (the same bytes wherever they live)."""
        return _content_addressed(self.checksum)


def _content_addressed(checksum: str | None) -> bool:
    return bool(checksum) and checksum.partition(":")[0] in _CONTENT_ALGOS  # type: ignore[union-attr]


def _check_checksum(checksum: str | None) -> None:
    # a content checksum names cache files: it must be a lowercase hex digest
    algo, _, digest = (checksum or "").partition(":")
    if algo in _CONTENT_ALGOS and not _HEX.fullmatch(digest):
        raise ConfigError(f"{checksum!r} is not a {algo} hex digest")


class _Strings:
    """Strings packed in one buffer, each followed by a NUL (none may hold one), with the
    offset of each one's end, so string ``i`` is one slice away. A column whose strings are
    all empty so far holds only their count (a folder's checksums, most locators)."""

    __slots__ = ("blob", "ends", "empties")

    def __init__(self, blob: bytes | bytearray = b"", ends: array[int] | None = None) -> None:
        self.blob = blob
        # 4-byte offsets while the buffer stays under 4 GiB (a million paths take ~20 MB)
        self.ends: array[int] = ends if ends is not None else array("I")
        self.empties = 0  # strings added while every one was empty (not in blob/ends yet)

    def add(self, text: bytes) -> None:
        """Append ``text`` (UTF-8); empty texts cost nothing while every text is empty."""
        if not text and not self.ends:
            self.empties += 1
            return
        if self.empties:
            self._materialize()
        blob = self.blob
        assert isinstance(blob, bytearray)
        blob += text
        blob.append(0)
        try:
            self.ends.append(len(blob))
        except OverflowError:  # past 4 GiB of text: 8-byte offsets from now on
            self.ends = array("Q", self.ends)
            self.ends.append(len(blob))

    def _materialize(self) -> None:
        n, self.empties = self.empties, 0
        self.blob = bytearray(n)
        self.ends = array("Q", range(1, n + 1))

    def __len__(self) -> int:
        return len(self.ends) + self.empties

    def __getitem__(self, i: int) -> str:
        if not self.ends:
            return ""
        start = self.ends[i - 1] if i else 0
        return self.blob[start : self.ends[i] - 1].decode()

    def __iter__(self) -> Iterator[str]:
        if not self.ends:
            yield from ("" for _ in range(self.empties))
            return
        blob = self.blob
        start = 0
        for end in self.ends:
            yield blob[start : end - 1].decode()
            start = end

    def all_empty(self) -> bool:
        return not self.ends

    def frozen(self) -> _Strings:
        """The same strings, for a built manifest: never written again, so not copied (a
        copy of a million paths would double the peak memory of building them)."""
        out = _Strings(self.blob, self.ends)
        out.empties = self.empties
        return out

    def reordered(self, order: Sequence[int]) -> _Strings:
        out = _Strings(bytearray())
        for i in order:
            out.add(self[i].encode())
        return out

    def canonical(self) -> bytes | bytearray:
        """The strings as hashed: each followed by a NUL, empties included (not a copy)."""
        return bytes(self.empties) if not self.ends else self.blob

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Strings) and self.canonical() == other.canonical()

    def nbytes(self) -> int:
        return len(self.blob) + self.ends.itemsize * len(self.ends)


_SHA256_TEXT = re.compile(rb"sha256:[0-9a-f]{64}")


class _Checksums:
    """The checksum column. While every checksum is ``sha256:`` and 64 hex digits (a
    shared-tier artifact's, ClearML's), it holds each as its 32 bytes: a million artifact
    entries take 32 MB, not 76 MB of text, and a cache staging them reads its digests from
    here (``sha256_raw``) instead of holding a second copy. Any other checksum (none, md5,
    a mix) turns it into packed strings (``_Strings``), the first one deciding."""

    __slots__ = ("raw", "text")

    def __init__(self, raw: bytearray | None = None, text: _Strings | None = None) -> None:
        self.raw = raw  # None until the first checksum, and once it is text
        self.text = text

    def add(self, checksum: bytes) -> None:
        text = self.text
        if text is None:
            if _SHA256_TEXT.fullmatch(checksum):
                if self.raw is None:
                    self.raw = bytearray()
                self.raw += bytes.fromhex(checksum[7:].decode())
                return
            self._to_text()
            text = self.text
            assert text is not None
        text.add(checksum)

    def _to_text(self) -> None:
        text = _Strings(bytearray())
        for checksum in self:
            text.add(checksum.encode())
        self.raw, self.text = None, text

    def __len__(self) -> int:
        if self.text is not None:
            return len(self.text)
        return len(self.raw) // 32 if self.raw is not None else 0

    def __getitem__(self, i: int) -> str:
        if self.text is not None:
            return self.text[i]
        assert self.raw is not None
        return "sha256:" + self.raw[32 * i : 32 * i + 32].hex()

    def __iter__(self) -> Iterator[str]:
        if self.text is not None:
            yield from self.text
        elif self.raw is not None:
            raw = self.raw
            for i in range(0, len(raw), 32):
                yield "sha256:" + raw[i : i + 32].hex()

    def sha256_raw(self) -> bytearray | None:
        """Every entry's sha256, 32 bytes each, when every checksum is one; else None."""
        return self.raw if self.text is None else None

    def frozen(self) -> _Checksums:
        return _Checksums(self.raw, self.text.frozen() if self.text is not None else None)

    def reordered(self, order: Sequence[int]) -> _Checksums:
        out = _Checksums()
        for i in order:
            out.add(self[i].encode())
        return out

    def hash_into(self, h: hashlib._Hash) -> None:
        """Feed the column to ``h`` as ``_Strings.canonical`` would hold it as text, a few
        thousand entries at a time (never the whole text at once)."""
        if self.text is not None:
            h.update(self.text.canonical())
            return
        raw = self.raw or b""
        step = 32 * 4096
        for start in range(0, len(raw), step):
            hexed = binascii.hexlify(raw[start : start + step])
            h.update(
                b"".join(b"sha256:" + hexed[j : j + 64] + b"\0" for j in range(0, len(hexed), 64))
            )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Checksums):
            return NotImplemented
        if self.text is not None and other.text is not None:
            return self.text == other.text
        if self.text is not None or other.text is not None:
            return False  # the same checksums always end in the same form
        return (self.raw or b"") == (other.raw or b"")

    def nbytes(self) -> int:
        return self.text.nbytes() if self.text is not None else len(self.raw or b"")


class ManifestBuilder:
    """Collects entries one at a time into columns; ``build()`` returns the Manifest.

    Entries may come in any order (sorted at the end, at a cost in memory); the usual
    sources give them sorted, which is checked on the way.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self._paths = _Strings(bytearray())
        self._sizes = array("Q")
        self._checksums = _Checksums()
        self._etags = _Strings(bytearray())
        self._locators = _Strings(bytearray())
        self._content = 0  # entries whose checksum names content
        self._checksummed = 0  # entries with any checksum
        self._last = ""
        self._sorted = True
        self._folders: set[str] = set()
        self._where = f" in {source}" if source else ""

    def __len__(self) -> int:
        return len(self._sizes)

    def add(self, entry: Entry) -> None:
        """Add a validated entry (``Entry`` checks its fields when it is made)."""
        path, size, checksum, etag, locator = entry
        try:
            encoded = path.encode()
        except UnicodeEncodeError as exc:
            raise UnsafePathError(
                f"{path.encode(errors='surrogateescape')!r}{self._where}: not a UTF-8 name",
                hint="rename it: manifests, keys and URLs hold UTF-8 names",
            ) from exc
        if path <= self._last and self._sizes:
            self._sorted = False
        self._last = path
        self._paths.add(encoded)
        self._sizes.append(size)
        if checksum:
            self._checksums.add(checksum.encode())
            self._checksummed += 1
            if _content_addressed(checksum):
                self._content += 1
        else:
            self._checksums.add(b"")
        self._etags.add(etag.encode() if etag else b"")
        self._locators.add(locator.encode() if locator != path else b"")
        parent = path.rpartition("/")[0]
        while parent and parent not in self._folders:
            self._folders.add(parent)
            parent = parent.rpartition("/")[0]

    def add_file(self, path: str, size: int, etag: str) -> None:
        """``add`` for a file a folder listing found (``path`` made of names a file system
        listed, no checksum, locator = path): the folder source's per-file cost, kept lean
        (a warm re-stage of a 100,000-file folder lists every file again)."""
        try:
            encoded = path.encode()
        except UnicodeEncodeError:
            self.add(Entry.trusted(path, size, None, etag, path))  # raises the one error
            return
        if path <= self._last and self._sizes:
            self._sorted = False
        self._last = path
        paths = self._paths
        blob = paths.blob
        if len(blob) < _INLINE_LIMIT:  # the common case, inlined; else through ``add``
            blob += encoded  # type: ignore[operator]
            blob.append(0)  # type: ignore[union-attr]
            paths.ends.append(len(blob))
        else:
            paths.add(encoded)
        self._sizes.append(size)
        etags = self._etags
        blob = etags.blob
        if etags.empties or len(blob) >= _INLINE_LIMIT:
            etags.add(etag.encode())
        else:
            blob += etag.encode()  # type: ignore[operator]
            blob.append(0)  # type: ignore[union-attr]
            etags.ends.append(len(blob))
        # no checksum, locator = path: while every one so far is empty, a count (inlined:
        # two calls a file were ~5% of a warm re-stage of 100,000 files)
        checksums = self._checksums.text
        if checksums is not None and not checksums.ends:
            checksums.empties += 1
        else:
            self._checksums.add(b"")
        locators = self._locators
        if locators.ends:
            locators.add(b"")
        else:
            locators.empties += 1
        parent = path.rpartition("/")[0]
        if parent and parent not in self._folders:
            while parent and parent not in self._folders:
                self._folders.add(parent)
                parent = parent.rpartition("/")[0]

    def build(self) -> Manifest:
        """The manifest of everything added: sorted, checked (duplicates, a file that is also a
        folder), fingerprinted."""
        n = len(self._sizes)
        paths, sizes, checksums, etags, locators = (
            self._paths,
            self._sizes,
            self._checksums,
            self._etags,
            self._locators,
        )
        if not self._sorted:
            order = sorted(range(n), key=list(paths).__getitem__)
            paths, checksums, etags, locators = (
                paths.reordered(order),
                checksums.reordered(order),
                etags.reordered(order),
                locators.reordered(order),
            )
            sizes = array("Q", (sizes[i] for i in order))
        m = object.__new__(Manifest)
        m.source = self.source
        m._paths = paths.frozen()
        m._sizes = sizes
        m._checksums = checksums.frozen()
        m._etags = etags.frozen()
        m._locators = None if locators.all_empty() else locators.frozen()
        m._total = sum(sizes)
        _check_layout(m, self._folders, check_duplicates=not self._sorted)
        m._fingerprint = _fingerprint(
            m, all_content=self._content == n, checksummed=self._checksummed
        )
        return m


def _fingerprint(m: Manifest, *, all_content: bool, checksummed: int) -> str:
    """sha256 over every entry's path, size and version tag, in path order.

    Checksums name content wherever it lives (the shared tier relies on that): an ETag counts
    only for an entry without a checksum, and unless every entry's checksum names content,
    the source URI is hashed too (two servers with the same file names and sizes are two
    datasets). Computed over the packed columns: a few C calls, whatever the size.
    """
    h = hashlib.sha256(_FP_MAGIC)
    if not all_content:
        h.update(b"source " + _without_credentials(m.source).encode() + b"\n")
    sizes = m._sizes
    if _BIG_ENDIAN:  # hashed as little-endian, whatever the machine
        sizes = array("Q", sizes)
        sizes.byteswap()
    h.update(len(sizes).to_bytes(8, "little"))
    h.update(m._paths.canonical())
    h.update(sizes)
    m._checksums.hash_into(h)
    if checksummed == 0:  # folders, HTTP, multipart S3: every ETag counts
        h.update(b"\x01")
        h.update(m._etags.canonical())
    elif checksummed == len(sizes):  # every entry has a checksum: no ETag counts
        h.update(b"\x02")
    else:  # some have one, some have not: the ETags of those without
        tags = bytearray(b"\x03")
        for checksum, etag in zip(m._checksums, m._etags, strict=True):
            tags += b"\0" if checksum else etag.encode() + b"\0"
        h.update(tags)
    return h.hexdigest()


def _check_layout(m: Manifest, folders: set[str], *, check_duplicates: bool) -> None:
    """Refuse entries that cannot all exist as files: duplicates, a file that is also a folder.

    Checked when a manifest is built (at resolve), so nothing is downloaded for a listing that
    could never be published.
    """
    where = f" in {m.source}" if m.source else ""
    paths = m._paths
    entries = m.entries
    if check_duplicates:  # entries added in order were strictly increasing: no duplicates
        previous = None
        for i, path in enumerate(paths):
            if path == previous:
                a, b = entries[i - 1], entries[i]
                raise UnsafePathError(
                    f"{a.locator!r} and {b.locator!r}{where} both stage as {a.path!r}",
                    hint="rename one of them; paths are compared after normalisation",
                )
            previous = path
    for folder in sorted(folders):
        i = m.index(folder)
        if i is not None:
            inside = m.index_from(folder + "/")
            raise UnsafePathError(
                f"{entries[i].locator!r}{where} is a file and also the folder of "
                f"{entries[inside].locator!r}",
                hint="a path cannot be both a file and a folder; rename one of them",
            )


def _without_credentials(uri: str) -> str:
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


class EntryList(Sequence[Entry]):
    """A manifest's entries, made one at a time from its columns."""

    __slots__ = ("_m",)

    def __init__(self, manifest: Manifest) -> None:
        self._m = manifest

    def __len__(self) -> int:
        return len(self._m._sizes)

    @overload
    def __getitem__(self, i: int) -> Entry: ...
    @overload
    def __getitem__(self, i: slice) -> list[Entry]: ...
    def __getitem__(self, i: int | slice) -> Entry | list[Entry]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        m = self._m
        if i < 0:
            i += len(self)
        path = m._paths[i]
        locator = m._locators[i] if m._locators is not None else ""
        return tuple.__new__(
            Entry,
            (
                path,
                m._sizes[i],
                m._checksums[i] or None,
                m._etags[i] or None,
                locator or path,
            ),
        )

    def __iter__(self) -> Iterator[Entry]:
        m = self._m
        locators: Iterable[str] = m._locators if m._locators is not None else _repeat("")
        new = tuple.__new__
        for path, size, checksum, etag, locator in zip(
            m._paths, m._sizes, m._checksums, m._etags, locators, strict=False
        ):
            yield new(Entry, (path, size, checksum or None, etag or None, locator or path))


def _repeat(value: str) -> Iterator[str]:
    while True:
        yield value


class Manifest:
    """Every entry of one dataset version, sorted by path; immutable.

    ``Manifest(source=..., entries=[...])`` for a handful of entries; sources with many use a
    ``ManifestBuilder``.
    """

    __slots__ = (
        "source",
        "_paths",
        "_sizes",
        "_checksums",
        "_etags",
        "_locators",
        "_total",
        "_fingerprint",
    )
    format = MANIFEST_FORMAT
    source: str
    _paths: _Strings
    _sizes: array[int]
    _checksums: _Checksums
    _etags: _Strings
    _locators: _Strings | None
    _total: int
    _fingerprint: str

    def __new__(cls, source: str = "", entries: Iterable[Entry] = ()) -> Manifest:
        builder = ManifestBuilder(source)
        for e in entries:
            builder.add(e)
        return builder.build()

    def __init__(self, source: str = "", entries: Iterable[Entry] = ()) -> None:
        pass  # made by __new__ (a ManifestBuilder)

    # -- reading ---------------------------------------------------------------------------
    @property
    def entries(self) -> EntryList:
        return EntryList(self)

    def sha256_digests(self) -> bytearray | None:
        """Every entry's content sha256, 32 bytes each in entry order, when every entry's
        checksum is a sha256 (a shared-tier artifact); else None. Not a copy: read only."""
        return self._checksums.sha256_raw()

    def paths(self) -> Iterator[str]:
        """Every path, in order (without making Entry objects)."""
        return iter(self._paths)

    @property
    def sizes(self) -> array[int]:
        return self._sizes

    @property
    def fingerprint(self) -> str:
        """The version: changes when a path, a size or a version tag does (``_fingerprint``)."""
        return self._fingerprint

    @property
    def total_bytes(self) -> int:
        return self._total

    def __len__(self) -> int:
        return len(self._sizes)

    def index(self, path: str) -> int | None:
        """The position of ``path`` (a binary search), or None."""
        i = self.index_from(path)
        return i if i < len(self) and self._paths[i] == path else None

    def index_from(self, path: str) -> int:
        """The position of the first entry whose path is ``path`` or sorts after it."""
        return bisect.bisect_left(_PathView(self._paths), path)

    def nbytes(self) -> int:
        """Bytes this manifest's columns take in memory."""
        cols = [self._paths, self._checksums, self._etags]
        if self._locators is not None:
            cols.append(self._locators)
        return sum(c.nbytes() for c in cols) + self._sizes.itemsize * len(self._sizes)

    def longest_path(self) -> str | None:
        """The path with the most bytes (from the offsets alone: no path is decoded)."""
        ends = self._paths.ends
        if not ends:
            return None
        lengths = map(operator.sub, ends, itertools.chain((0,), ends))
        _, i = max(zip(lengths, itertools.count()))
        return self._paths[i]

    def check_fits(self, root: Path | str, *, what: str = "destination") -> None:
        """Refuse this dataset, before anything is fetched, when one of its paths would be too
        long under ``root`` (a cache or --to folder, named by ``what`` in the hint)."""
        longest = self.longest_path()
        check_fits([longest] if longest else [], root, origin=self.source, what=what)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Manifest):
            return NotImplemented
        return (
            self.source == other.source
            and self._fingerprint == other._fingerprint
            and self._paths == other._paths
            and self._sizes == other._sizes
            and self._checksums == other._checksums
            and self._etags == other._etags
            and self._locators == other._locators
        )

    def __hash__(self) -> int:
        return hash((self.source, self._fingerprint))

    def __repr__(self) -> str:
        return f"Manifest(source={self.source!r}, entries={len(self)}, version={self._fingerprint[:12]})"

    def __reduce__(self) -> tuple[object, ...]:
        return (_restore, (self.source, self.to_json()))

    # -- JSON Lines ---------------------------------------------------------------------------
    def write(self, out: IO[str], *, digests: Sequence[str] | None = None) -> None:
        """Write the manifest as JSON Lines (with each entry's sha256 when ``digests`` is given:
        the cache's records)."""
        header: dict[str, object] = {
            "mlstage_manifest": MANIFEST_FORMAT,
            "source": self.source,
            "entries": len(self),
            "bytes": self._total,
        }
        if digests is not None:
            header["digests"] = True
        out.write(json.dumps(header) + "\n")
        dumps = json.dumps
        for i, e in enumerate(self.entries):
            row: list[object] = [
                e.path,
                e.size,
                e.checksum,
                e.etag,
                None if e.locator == e.path else e.locator,
            ]
            if digests is not None:
                row.append(digests[i])
            out.write(dumps(row, ensure_ascii=False) + "\n")

    def sha256(self) -> str:
        """The sha256 of ``to_json()``'s text, hashed a line at a time (a million entries'
        text is never held whole)."""
        h = hashlib.sha256()

        class _Hashing:
            def write(self, text: str) -> int:
                h.update(text.encode())
                return len(text)

        self.write(_Hashing())  # type: ignore[arg-type]
        return h.hexdigest()

    def to_json(self) -> str:
        buf = io.StringIO()
        self.write(buf)
        return buf.getvalue()

    @classmethod
    def read(cls, lines: Iterable[str | bytes], *, origin: str = "") -> tuple[Manifest, bytearray]:
        """Read a manifest written by ``write``; also returns the sha256 digests it carries,
        32 bytes an entry in its order (empty when it carries none)."""
        it = iter(lines)
        source, count = _read_header(it, origin)
        builder = ManifestBuilder(source)
        digests = bytearray()
        for entry, digest in _read_rows(it, origin):
            builder.add(entry)
            digests += digest
        m = builder.build()
        _check_count(len(m), count, origin)
        return m, digests

    @classmethod
    def stream(cls, lines: Iterable[str | bytes], *, origin: str = "") -> Iterator[ManifestRow]:
        """The entries of a manifest written by ``write``, each with its sha256 digest (32
        bytes; empty when it carries none), as they are read: memory stays flat however many
        there are. Raises ConfigError where the text stops being a manifest, or is out of
        order, or ends before its header's count."""
        it = iter(lines)
        _source, count = _read_header(it, origin)
        n = 0
        last: str | None = None
        for entry, digest in _read_rows(it, origin):
            if last is not None and entry.path <= last:
                raise ConfigError(f"{origin or 'a manifest'}: {entry.path!r} is out of order")
            last = entry.path
            n += 1
            yield ManifestRow(entry, digest)
        _check_count(n, count, origin)

    @classmethod
    def from_json(cls, text: str | bytes, *, origin: str = "") -> Manifest:
        if isinstance(text, bytes):
            text = text.decode()
        return cls.read(text.splitlines(), origin=origin)[0]

    @classmethod
    def load(cls, path: Path) -> Manifest:
        with open(path, encoding="utf-8") as f:
            return cls.read(f, origin=str(path))[0]

    def save(self, path: Path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            self.write(f)


class ManifestRow(NamedTuple):
    """One entry of a manifest as ``Manifest.stream`` reads it, with its digest (32 bytes)."""

    entry: Entry
    digest: bytes


def _read_header(it: Iterator[str | bytes], origin: str) -> tuple[str, int | None]:
    """The source and entry count a manifest's first line states."""
    try:
        header = json.loads(next(it))
    except (StopIteration, ValueError) as exc:
        raise ConfigError(f"{origin or 'a manifest'} is not an mlstage manifest") from exc
    if not isinstance(header, dict) or header.get("mlstage_manifest") != MANIFEST_FORMAT:
        raise ConfigError(
            f"{origin or 'a manifest'} is not an mlstage manifest of format {MANIFEST_FORMAT}",
            hint="it was written by another mlstage version: publish or stage it again",
        )
    count = header.get("entries")
    return str(header.get("source", "")), count if isinstance(count, int) else None


def _read_rows(it: Iterator[str | bytes], origin: str) -> Iterator[tuple[Entry, bytes]]:
    loads = json.loads
    for n, line in enumerate(it, 2):
        if not line.strip():
            continue
        try:
            row = loads(line)
            path, size, checksum, etag, locator = row[:5]
            yield (
                Entry(path, size, checksum, etag, locator),
                (bytes.fromhex(row[5]) if len(row) > 5 else b""),
            )
        except (ValueError, TypeError, IndexError) as exc:
            raise ConfigError(
                f"{origin or 'a manifest'}: line {n} is not a manifest entry ({exc})"
            ) from exc


def _check_count(n: int, count: int | None, origin: str) -> None:
    if count is not None and count != n:
        raise ConfigError(
            f"{origin or 'a manifest'} lists {n} entries, its header says {count}: "
            "it is incomplete",
            hint="publish or stage it again",
        )


class _PathView(Sequence[str]):
    """The paths column as a sequence, for ``bisect``."""

    def __init__(self, strings: _Strings) -> None:
        self._s = strings

    def __len__(self) -> int:
        return len(self._s.ends)

    def __getitem__(self, i):  # type: ignore[no-untyped-def, override]
        return self._s[i]


def _restore(_source: str, text: str) -> Manifest:
    return Manifest.from_json(text)
