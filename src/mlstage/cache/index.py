"""The cache's SQLite index (WAL): what objects, datasets and leases this node holds.

Every hot-path query is a primary-key lookup, so its cost does not depend on how much is
cached; totals are kept by triggers, so the size of the cache is one row read, never a scan.
One connection per thread; several processes (and pods sharing a hostPath) share the file
safely through WAL and a busy timeout. Writes that must agree with the disk (placing or
removing an object file) run inside ``tx()``, whose ``BEGIN IMMEDIATE`` serialises them.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from mlstage.cache.files import disk_error
from mlstage.errors import CacheError
from mlstage.sqlite_setup import setup_lock, use_wal

SCHEMA_VERSION = 5

# Digests are stored as their 32 bytes and datasets by a small integer where a row repeats
# them (one row an object and a file): a million-file cache's index is ~350 MB, not ~770 MB,
# and a cold staging writes half the pages.
SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    digest   BLOB PRIMARY KEY,
    size     INTEGER NOT NULL,
    created  REAL NOT NULL,
    ino      INTEGER,
    mtime_ns INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS source_objects (
    source_key BLOB PRIMARY KEY,
    digest     BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS source_objects_digest ON source_objects(digest);
CREATE TABLE IF NOT EXISTS datasets (
    id          INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL UNIQUE,
    source      TEXT NOT NULL,
    files       INTEGER NOT NULL,
    bytes       INTEGER NOT NULL,
    created     REAL NOT NULL,
    last_used   REAL NOT NULL,
    state       TEXT NOT NULL DEFAULT 'ready'
);
CREATE INDEX IF NOT EXISTS datasets_lru ON datasets(last_used);
CREATE TABLE IF NOT EXISTS dataset_objects (
    dataset INTEGER NOT NULL,
    digest  BLOB NOT NULL,
    PRIMARY KEY (dataset, digest)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dataset_objects_digest ON dataset_objects(digest);
CREATE TABLE IF NOT EXISTS leases (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    fingerprint TEXT NOT NULL,
    holder      TEXT NOT NULL,
    host        TEXT NOT NULL,
    pid         INTEGER,
    pid_start   TEXT,
    created     REAL NOT NULL,
    expires     REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_fp ON leases(fingerprint);
CREATE TABLE IF NOT EXISTS aliases (
    name        TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS aliases_fp ON aliases(fingerprint);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters VALUES ('objects', 0), ('bytes', 0);
CREATE TRIGGER IF NOT EXISTS objects_added AFTER INSERT ON objects BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'objects';
    UPDATE counters SET value = value + NEW.size WHERE name = 'bytes';
END;
CREATE TRIGGER IF NOT EXISTS objects_removed AFTER DELETE ON objects BEGIN
    UPDATE counters SET value = value - 1 WHERE name = 'objects';
    UPDATE counters SET value = value - OLD.size WHERE name = 'bytes';
END;
"""

_DATASET_COLS = "fingerprint, source, files, bytes, created, last_used, state"
_DATASET_ID = "(SELECT id FROM datasets WHERE fingerprint=?)"


def _raw(digest: str) -> bytes:
    return bytes.fromhex(digest)


def key_bytes(source_key: str) -> bytes:
    """A source key as stored: its first 16 bytes (collisions: one in 2**64 pairs)."""
    return bytes.fromhex(source_key[:32])


@dataclass(frozen=True)
class DatasetRow:
    """One dataset the index knows; ``state`` is 'ready' or 'staging' (being built)."""

    fingerprint: str
    source: str
    files: int
    bytes: int
    created: float
    last_used: float
    state: str = "ready"


@dataclass(frozen=True)
class ObjectRow:
    """One object: its content's digest and size, how a source named it, its file's identity.

    ``ino`` and ``mtime_ns`` are its file's as placed or last verified: a file that no longer
    has them was written to (or replaced) since.
    """

    digest: str
    size: int
    source_key: str | None
    ino: int | None
    mtime_ns: int | None

    def matches(self, st: os.stat_result) -> bool:
        """True when ``st`` (an ``lstat`` of the object's file) is the file as recorded."""
        return st.st_ino == self.ino and st.st_size == self.size and st.st_mtime_ns == self.mtime_ns


@dataclass(frozen=True)
class LeaseRow:
    """A recorded lease: keeps ``fingerprint`` from eviction until it expires or its pid dies."""

    id: int
    fingerprint: str
    holder: str
    host: str
    pid: int | None
    pid_start: str | None
    created: float
    expires: float


class CacheIndex:
    """Typed access to the index database at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        try:
            use_wal(path)
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            self.close()  # a connection is freed only by closing it (or the cyclic gc)
            refused = disk_error(path.parent, exc)  # full, read-only: the disk's own hint
            raise CacheError(
                f"cannot open the cache index {path}: {exc}",
                hint=refused.hint if refused else "remove the index to start the cache afresh",
            ) from exc

    def _migrate(self) -> None:
        """Create the schema in a new index, once, under the setup lock (many processes may
        open a new cache at once); an index of another format is refused."""
        db = self.db
        if db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return
        with setup_lock(self.path):
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == SCHEMA_VERSION:
                return
            if version or db.execute("SELECT 1 FROM sqlite_master WHERE name='objects'").fetchone():
                raise sqlite3.DatabaseError(  # mapped to CacheError by __init__, with a hint
                    f"the index has format {version}, this mlstage writes {SCHEMA_VERSION} (a "
                    "format mlstage never released): remove the cache folder and stage again"
                )
            try:  # all or nothing: a disk that fills midway leaves an empty index, not half
                db.executescript(f"BEGIN; {SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
            except BaseException:
                if db.in_transaction:
                    with suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise

    @property
    def db(self) -> sqlite3.Connection:
        """This thread's connection (WAL, NORMAL sync, 60 s busy timeout)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            try:
                conn.execute("PRAGMA busy_timeout=60000")
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA cache_size=-8192")  # 8 MiB: the hot B-tree pages
                conn.execute("PRAGMA mmap_size=0")  # mapped pages would count as this RSS
            except BaseException:
                conn.close()  # never left to the cyclic gc (see close)
                raise
            self._local.conn = conn
        return conn

    @property
    def _quick(self) -> sqlite3.Connection:
        """A second connection with a short busy timeout, for best-effort writes (LRU touch)."""
        conn = getattr(self._local, "quick", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=0.05, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=50")
            self._local.quick = conn
        return conn

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): one writer at a time across processes."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # a failed COMMIT (disk full) may leave it open
                with suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close this thread's connections (sqlite3 frees a connection only when it is closed
        or the cyclic garbage collector runs: its statement cache refers back to it)."""
        for name in ("conn", "quick"):
            conn = getattr(self._local, name, None)
            if conn is not None:
                conn.close()
                setattr(self._local, name, None)

    # -- datasets -----------------------------------------------------------------------
    def dataset(self, fingerprint: str) -> DatasetRow | None:
        """The dataset if it is complete ('ready'); one primary-key lookup."""
        row = self.db.execute(
            f"SELECT {_DATASET_COLS} FROM datasets WHERE fingerprint=? AND state='ready'",
            (fingerprint,),
        ).fetchone()
        return DatasetRow(*row) if row else None

    def any_dataset(self, fingerprint: str) -> DatasetRow | None:
        """The dataset row whatever its state."""
        row = self.db.execute(
            f"SELECT {_DATASET_COLS} FROM datasets WHERE fingerprint=?", (fingerprint,)
        ).fetchone()
        return DatasetRow(*row) if row else None

    def touch(self, fingerprint: str) -> None:
        """Mark a dataset used now, for LRU; skipped (not waited for) when the index is busy."""
        with suppress(sqlite3.OperationalError):
            self._quick.execute(
                "UPDATE datasets SET last_used=? WHERE fingerprint=?", (time.time(), fingerprint)
            )

    def begin_staging(self, fingerprint: str, source: str, files: int, nbytes: int) -> None:
        """Record a staging in progress (lookups miss it until ``finish_staging``); the objects
        it reuses are pinned as it goes (``pin``)."""
        now = time.time()
        with self.tx() as db:
            db.execute(
                "INSERT INTO datasets (fingerprint, source, files, bytes, created, last_used, "
                "state) VALUES (?,?,?,?,?,?,'staging') ON CONFLICT(fingerprint) "
                "DO UPDATE SET state='staging', source=excluded.source, files=excluded.files, "
                "bytes=excluded.bytes",
                (fingerprint, source, files, nbytes, now, now),
            )

    def finish_staging(self, fingerprint: str) -> None:
        """Mark the dataset complete. What it references was recorded while it was staged:
        each object it reuses was pinned (``pin``), each it fetched inserted with it."""
        now = time.time()
        with self.tx() as db:
            db.execute(
                "UPDATE datasets SET state='ready', created=?, last_used=? WHERE fingerprint=?",
                (now, now, fingerprint),
            )

    @staticmethod
    def _dataset_id(db: sqlite3.Connection, fingerprint: str) -> int:
        row = db.execute("SELECT id FROM datasets WHERE fingerprint=?", (fingerprint,)).fetchone()
        if row is None:
            raise CacheError(f"dataset {fingerprint[:12]} is not being staged here")
        return int(row[0])

    def set_alias(self, name: str, fingerprint: str) -> None:
        """Name a ready dataset (e.g. ``artifact:<id>``); forgotten with the dataset."""
        with self.tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO aliases SELECT ?, fingerprint FROM datasets "
                "WHERE fingerprint=? AND state='ready'",
                (name, fingerprint),
            )

    def alias(self, name: str) -> str | None:
        """The fingerprint ``name`` names, if the index has it; one primary-key read."""
        row = self.db.execute("SELECT fingerprint FROM aliases WHERE name=?", (name,)).fetchone()
        return row[0] if row else None

    def forget_dataset(self, db: sqlite3.Connection, fingerprint: str) -> list[str]:
        """Inside ``tx()``: forget a dataset; return the digests it referenced."""
        digests = [
            r[0].hex()
            for r in db.execute(
                f"SELECT digest FROM dataset_objects WHERE dataset={_DATASET_ID}", (fingerprint,)
            )
        ]
        db.execute(f"DELETE FROM dataset_objects WHERE dataset={_DATASET_ID}", (fingerprint,))
        db.execute("DELETE FROM datasets WHERE fingerprint=?", (fingerprint,))
        db.execute("DELETE FROM aliases WHERE fingerprint=?", (fingerprint,))
        return digests

    def datasets_lru(self, state: str | None = "ready") -> list[DatasetRow]:
        """Datasets, least recently used first (all states when ``state`` is None)."""
        where = "" if state is None else "WHERE state=?"
        args = () if state is None else (state,)
        rows = self.db.execute(
            f"SELECT {_DATASET_COLS} FROM datasets {where} ORDER BY last_used", args
        ).fetchall()
        return [DatasetRow(*r) for r in rows]

    def dataset_count(self) -> int:
        return int(
            self.db.execute("SELECT COUNT(*) FROM datasets WHERE state='ready'").fetchone()[0]
        )

    def dataset_digests(self, fingerprint: str) -> list[str]:
        return [
            r[0].hex()
            for r in self.db.execute(
                f"SELECT digest FROM dataset_objects WHERE dataset={_DATASET_ID}", (fingerprint,)
            )
        ]

    def datasets_using(self, digest: str) -> list[str]:
        return [
            r[0]
            for r in self.db.execute(
                "SELECT d.fingerprint FROM dataset_objects o JOIN datasets d ON d.id = o.dataset "
                "WHERE o.digest=?",
                (_raw(digest),),
            )
        ]

    # -- objects ------------------------------------------------------------------------
    def has_object(self, digest: str) -> bool:
        return (
            self.db.execute("SELECT 1 FROM objects WHERE digest=?", (_raw(digest),)).fetchone()
            is not None
        )

    def digest_for(self, source_key: str) -> str | None:
        """The digest of what a source object held when it was fetched; one primary-key read.

        The object may have been evicted since: callers check the object file (or
        ``has_object``) before relying on it.
        """
        row = self.db.execute(
            "SELECT digest FROM source_objects WHERE source_key=?", (key_bytes(source_key),)
        ).fetchone()
        return row[0].hex() if row else None

    def digests_for(self, source_keys: Iterable[str]) -> dict[str, str]:
        """``digest_for`` of many source keys: key -> digest for those the index knows."""
        keys = {key_bytes(k): k for k in source_keys}
        raw = list(keys)
        out: dict[str, str] = {}
        for i in range(0, len(raw), 500):
            chunk = raw[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for key, digest in self.db.execute(
                f"SELECT source_key, digest FROM source_objects WHERE source_key IN ({marks})",
                chunk,
            ):
                out[keys[key]] = digest.hex()
        return out

    def pin(self, fingerprint: str, digests: Iterable[str]) -> dict[str, ObjectRow]:
        """Pin objects a staging of ``fingerprint`` means to reuse, and return the rows of
        those the index holds. Pinning and checking happen in one transaction, so an evictor
        either removed an object before (it is reported missing) or sees the pin and keeps it.
        """
        wanted = [_raw(d) for d in dict.fromkeys(digests)]
        found: dict[str, ObjectRow] = {}
        with self.tx() as db:
            ds = self._dataset_id(db, fingerprint)
            db.executemany(
                "INSERT OR IGNORE INTO dataset_objects VALUES (?,?)", ((ds, d) for d in wanted)
            )
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                marks = ",".join("?" * len(chunk))
                for d, n, ino, m in db.execute(
                    f"SELECT digest, size, ino, mtime_ns FROM objects WHERE digest IN ({marks})",
                    chunk,
                ):
                    found[d.hex()] = ObjectRow(d.hex(), int(n), None, ino, m)
        return found

    def insert_objects(
        self,
        db: sqlite3.Connection,
        rows: Sequence[ObjectRow],
        fingerprint: str | None,
    ) -> None:
        """Inside ``tx()``: record objects as their files are now, and who uses them.

        An object already recorded gets its file's current inode and mtime (its file was
        replaced by a verified copy).
        """
        now = time.time()
        db.executemany(
            "INSERT INTO objects VALUES (?,?,?,?,?) ON CONFLICT(digest) DO UPDATE SET "
            "ino=excluded.ino, mtime_ns=excluded.mtime_ns",
            [(_raw(r.digest), r.size, now, r.ino, r.mtime_ns) for r in rows],
        )
        keyed = [(key_bytes(r.source_key), _raw(r.digest)) for r in rows if r.source_key]
        if keyed:
            db.executemany("INSERT OR REPLACE INTO source_objects VALUES (?,?)", keyed)
        if fingerprint:
            ds = self._dataset_id(db, fingerprint)
            db.executemany(
                "INSERT OR IGNORE INTO dataset_objects VALUES (?,?)",
                [(ds, _raw(r.digest)) for r in rows],
            )

    def add_objects_bulk(self, rows: Iterable[ObjectRow]) -> None:
        """Record many objects at once; for imports and benchmarks."""
        with self.tx() as db:
            self.insert_objects(db, list(rows), None)

    def object_row(self, digest: str) -> ObjectRow | None:
        """What the index knows of one object: size and the inode and mtime of its file."""
        row = self.db.execute(
            "SELECT size, ino, mtime_ns FROM objects WHERE digest=?", (_raw(digest),)
        ).fetchone()
        return ObjectRow(digest, int(row[0]), None, row[1], row[2]) if row else None

    def unreferenced(self, db: sqlite3.Connection, digests: Iterable[str]) -> list[str]:
        """Inside ``tx()``: which of ``digests`` no dataset (ready or staging) references."""
        return [
            d
            for d in digests
            if db.execute(
                "SELECT 1 FROM dataset_objects WHERE digest=? LIMIT 1", (_raw(d),)
            ).fetchone()
            is None
        ]

    def set_identity(self, db: sqlite3.Connection, digest: str, st: os.stat_result) -> None:
        """Inside ``tx()``: record the object's file as it is now (its bytes were verified)."""
        db.execute(
            "UPDATE objects SET ino=?, mtime_ns=? WHERE digest=?",
            (st.st_ino, st.st_mtime_ns, _raw(digest)),
        )

    def size_of(self, db: sqlite3.Connection, digest: str) -> int:
        """Inside ``tx()``: the object's size, 0 when the index does not hold it."""
        row = db.execute("SELECT size FROM objects WHERE digest=?", (_raw(digest),)).fetchone()
        return int(row[0]) if row else 0

    def delete_object_row(self, db: sqlite3.Connection, digest: str) -> None:
        db.execute("DELETE FROM objects WHERE digest=?", (_raw(digest),))
        db.execute("DELETE FROM source_objects WHERE digest=?", (_raw(digest),))

    def object_size(self, digest: str) -> int | None:
        row = self.db.execute("SELECT size FROM objects WHERE digest=?", (_raw(digest),)).fetchone()
        return int(row[0]) if row else None

    def object_bytes(self) -> int:
        """Bytes held by objects: one counter row, whatever the cache size."""
        return int(self.db.execute("SELECT value FROM counters WHERE name='bytes'").fetchone()[0])

    def object_count(self) -> int:
        return int(self.db.execute("SELECT value FROM counters WHERE name='objects'").fetchone()[0])

    def iter_objects(self, batch: int = 1000) -> Iterator[list[ObjectRow]]:
        """Every object, in batches of ``batch`` (digest order); for verification only."""
        last = b""
        while True:
            rows = self.db.execute(
                "SELECT digest, size, ino, mtime_ns FROM objects WHERE digest > ? "
                "ORDER BY digest LIMIT ?",
                (last, batch),
            ).fetchall()
            if not rows:
                return
            yield [ObjectRow(d.hex(), int(n), None, i, m) for d, n, i, m in rows]
            last = rows[-1][0]

    def object_rows(self, digests: Iterable[str]) -> dict[str, ObjectRow]:
        """The rows of those of ``digests`` the index holds (a few queries per thousand)."""
        wanted = [_raw(d) for d in dict.fromkeys(digests)]
        out: dict[str, ObjectRow] = {}
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for d, n, ino, m in self.db.execute(
                f"SELECT digest, size, ino, mtime_ns FROM objects WHERE digest IN ({marks})", chunk
            ):
                out[d.hex()] = ObjectRow(d.hex(), int(n), None, ino, m)
        return out

    def orphan_objects(self, limit: int = 1000) -> list[str]:
        """Objects no dataset references, oldest first."""
        rows = self.db.execute(
            "SELECT digest FROM objects o WHERE NOT EXISTS "
            "(SELECT 1 FROM dataset_objects d WHERE d.digest = o.digest) ORDER BY created LIMIT ?",
            (limit,),
        )
        return [r[0].hex() for r in rows]

    # -- leases -------------------------------------------------------------------------
    def add_lease(
        self,
        fingerprint: str,
        holder: str,
        host: str,
        pid: int | None,
        pid_start: str | None,
        expires: float,
    ) -> int | None:
        """Record a lease on a complete dataset; None (nothing recorded) when it is not one."""
        with self.tx() as db:
            cur = db.execute(
                "INSERT INTO leases (fingerprint, holder, host, pid, pid_start, created, expires) "
                "SELECT ?,?,?,?,?,?,? WHERE EXISTS "
                "(SELECT 1 FROM datasets WHERE fingerprint=? AND state='ready')",
                (fingerprint, holder, host, pid, pid_start, time.time(), expires, fingerprint),
            )
            return int(cur.lastrowid) if cur.rowcount == 1 and cur.lastrowid else None

    def remove_lease(self, lease_id: int) -> bool:
        with self.tx() as db:
            return db.execute("DELETE FROM leases WHERE id=?", (lease_id,)).rowcount > 0

    def leases(self, fingerprint: str | None = None) -> list[LeaseRow]:
        cols = "id, fingerprint, holder, host, pid, pid_start, created, expires"
        if fingerprint is None:
            rows = self.db.execute(f"SELECT {cols} FROM leases ORDER BY id").fetchall()
        else:
            rows = self.db.execute(
                f"SELECT {cols} FROM leases WHERE fingerprint=? ORDER BY id", (fingerprint,)
            ).fetchall()
        return [LeaseRow(*r) for r in rows]
