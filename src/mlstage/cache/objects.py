"""The cache's objects: each distinct content once, in ``objects/``, named by its sha256.

Only verified bytes become objects (``ingest``), and an object file that is no longer as it
was recorded (``ObjectRow.matches``: its inode, size and mtime) is never trusted: an ingest
that finds one replaces it with the fresh, verified copy (a new inode), and ``sound`` tells
every reader whether an object file may be handed out without hashing it.

Placing a file and recording it happen in one index transaction, so an evictor cannot remove
a same-digest object between the check and the row; a transaction that fails (the disk is
full at the commit) takes back the files it placed, so no unindexed object is left behind.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

from mlstage.cache.files import CacheFiles
from mlstage.cache.index import CacheIndex, ObjectRow
from mlstage.fileio import copy_file
from mlstage.manifest import Entry
from mlstage.transfer import Fetched, file_sha256


def source_key(source_uri: str, entry: Entry) -> str:
    """What identifies an entry's bytes at its source (for entries without a sha256)."""
    ident = f"{source_uri}\0{entry.locator}\0{entry.version_tag}\0{entry.size}"
    return hashlib.sha256(ident.encode()).hexdigest()


def known_digest(entry: Entry) -> str | None:
    """The entry's sha256 when its source lists one (its object's name, known before a fetch)."""
    if entry.checksum and entry.checksum.startswith("sha256:"):
        return entry.checksum.removeprefix("sha256:")
    return None


class Objects:
    """Placing, checking and linking the objects of the cache at ``files.root``."""

    def __init__(self, files: CacheFiles, index: CacheIndex) -> None:
        self.files = files
        self.index = index

    def digest_of(self, source_uri: str, entry: Entry) -> str | None:
        """The digest ``entry``'s bytes had when this node last fetched them, if it knows."""
        return known_digest(entry) or self.index.digest_for(source_key(source_uri, entry))

    def digests_of(self, source_uri: str, entries: Sequence[Entry]) -> list[str | None]:
        """``digest_of`` for many entries, a few index queries per thousand."""
        out = [known_digest(e) for e in entries]
        keys = {source_key(source_uri, e): i for i, e in enumerate(entries) if out[i] is None}
        if keys:
            for key, digest in self.index.digests_for(keys).items():
                out[keys[key]] = digest
        return out

    def usable(self, digest: str, row: ObjectRow) -> os.stat_result | None:
        """The object file's ``lstat`` when it may be reused: as recorded, or only its
        metadata changed (``reseal``, which hashes it); None when it must be fetched again."""
        try:
            st = os.lstat(self.files.object_str(digest))
        except FileNotFoundError:
            return None
        if row.matches(st):
            return st
        if self.reseal(digest):
            return os.lstat(self.files.object_str(digest))
        return None

    def sound(self, digest: str, row: ObjectRow | None = None) -> bool:
        """True when the object's file is there and exactly as recorded (one ``lstat``)."""
        row = row or self.index.object_row(digest)
        if row is None:
            return False
        try:
            st = os.lstat(self.files.object_str(digest))
        except FileNotFoundError:
            return False
        return row.matches(st)

    def ingest(
        self, source_uri: str, batch: Sequence[Fetched], fingerprint: str | None
    ) -> list[ObjectRow]:
        """Move verified files into objects/ and record them, under one write transaction;
        the rows as recorded (the object files' identity), in the batch's order.

        A file already at an object's name is kept only while it is sound; otherwise (written
        to since, or a crash's leftover never recorded) the fresh copy replaces it.
        """
        for fetched in batch:
            self.files.object_dir(fetched.digest)
        placed: list[str] = []
        try:
            with self.index.tx() as db:
                rows: list[ObjectRow] = []
                here: dict[str, ObjectRow] = {}  # placed by this batch (same content twice)
                for f in batch:
                    row = here.get(f.digest)
                    if row is None:
                        row = here[f.digest] = self._place(db, source_uri, f, placed)
                    else:
                        with suppress(FileNotFoundError):
                            os.unlink(f.path)
                        row = ObjectRow(
                            f.digest, row.size, self._key(source_uri, f), row.ino, row.mtime_ns
                        )
                    rows.append(row)
                self.index.insert_objects(db, rows, fingerprint)
        except BaseException:
            for target in placed:  # never recorded: nothing may find them
                with suppress(OSError):
                    os.unlink(target)
            raise
        return rows

    def _place(self, db: object, source_uri: str, fetched: Fetched, placed: list[str]) -> ObjectRow:
        target = self.files.object_str(fetched.digest)
        entry = fetched.entry
        key = self._key(source_uri, fetched)
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            st = None
        if st is not None:
            row = self.index.object_row(fetched.digest)
            if row is not None and row.matches(st):
                with suppress(FileNotFoundError):
                    os.unlink(fetched.path)
                return ObjectRow(fetched.digest, entry.size, key, row.ino, row.mtime_ns)
        if fetched.placed is None or fetched.placed.st_mode & 0o222:
            os.chmod(fetched.path, 0o444)
        try:
            os.replace(fetched.path, target)
        except FileNotFoundError:  # its folder was removed behind our back
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(fetched.path, target)
        if st is None:
            placed.append(target)
        # the file as written (a rename changes neither its inode nor its mtime)
        st = fetched.placed or os.lstat(target)
        return ObjectRow(fetched.digest, entry.size, key, st.st_ino, st.st_mtime_ns)

    @staticmethod
    def _key(source_uri: str, fetched: Fetched) -> str | None:
        entry = fetched.entry
        return None if known_digest(entry) else source_key(source_uri, entry)

    def replace(self, fetched: Fetched, source_uri: str, fingerprint: str) -> None:
        """Put a freshly verified copy in objects/ over a damaged or missing one (new inode)."""
        target = self.files.object_str(fetched.digest)
        self.files.object_dir(fetched.digest)
        key = None if known_digest(fetched.entry) else source_key(source_uri, fetched.entry)
        with self.index.tx() as db:
            os.chmod(fetched.path, 0o444)
            os.replace(fetched.path, target)
            st = os.lstat(target)
            row = ObjectRow(fetched.digest, fetched.entry.size, key, st.st_ino, st.st_mtime_ns)
            self.index.insert_objects(db, [row], fingerprint)

    def reseal(self, digest: str) -> bool:
        """Hash an object whose file changed its metadata only (``touch``): if its content is
        still right, record its file as it is now and return True; False if it is damaged."""
        path = self.files.object_str(digest)
        row = self.index.object_row(digest)
        try:
            st = os.lstat(path)
            if row is None or st.st_size != row.size or file_sha256(Path(path)) != digest:
                return False
        except FileNotFoundError:
            return False
        with self.index.tx() as db:
            self.index.set_identity(db, digest, st)
        return True

    def restore(self, digest: str, good: Path) -> bool:
        """Make ``good`` (a file just verified to hold ``digest``'s bytes, e.g. a tree's copy)
        the object file again when the object's file is missing; True if it was restored."""
        target = self.files.object_str(digest)
        self.files.object_dir(digest)
        with self.index.tx() as db:
            if os.path.lexists(target):
                return False
            os.link(good, target)
            st = os.lstat(target)
            self.index.set_identity(db, digest, st)
        return True

    def link(self, digest: str, dest: str) -> bool:
        """Hard-link the object at ``dest``; False when it had to be copied instead (the
        inode has too many links, e.g. a million empty files): ``dest`` is its own file."""
        src = self.files.object_str(digest)
        try:
            os.link(src, dest)
            return True
        except OSError as exc:
            if exc.errno != errno.EMLINK:
                raise
        copy_file(src, dest)
        os.chmod(dest, 0o444)
        return False
