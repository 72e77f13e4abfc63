"""The cache's SQLite index (WAL): what objects and datasets this node holds.

Every lookup is a primary-key query, so its cost does not depend on how much is cached.
One connection per thread; several processes share the file safely (WAL + busy timeout).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    digest   TEXT PRIMARY KEY,
    size     INTEGER NOT NULL,
    created  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS source_objects (
    source_key TEXT PRIMARY KEY,
    digest     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS datasets (
    fingerprint TEXT PRIMARY KEY,
    source      TEXT NOT NULL,
    files       INTEGER NOT NULL,
    bytes       INTEGER NOT NULL,
    created     REAL NOT NULL,
    last_used   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS datasets_lru ON datasets(last_used);
CREATE TABLE IF NOT EXISTS dataset_objects (
    fingerprint TEXT NOT NULL,
    digest      TEXT NOT NULL,
    PRIMARY KEY (fingerprint, digest)
);
CREATE INDEX IF NOT EXISTS dataset_objects_digest ON dataset_objects(digest);
"""


@dataclass(frozen=True)
class DatasetRow:
    fingerprint: str
    source: str
    files: int
    bytes: int
    created: float
    last_used: float


class CacheIndex:
    """Typed access to the index database at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self.db.executescript(SCHEMA)

    @property
    def db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=60000")
            self._local.conn = conn
        return conn

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- datasets -----------------------------------------------------------------------
    def dataset(self, fingerprint: str) -> DatasetRow | None:
        row = self.db.execute(
            "SELECT fingerprint, source, files, bytes, created, last_used FROM datasets WHERE fingerprint=?",
            (fingerprint,),
        ).fetchone()
        return DatasetRow(*row) if row else None

    def touch(self, fingerprint: str) -> None:
        self.db.execute(
            "UPDATE datasets SET last_used=? WHERE fingerprint=?", (time.time(), fingerprint)
        )

    def add_dataset(self, row: DatasetRow, digests: Iterable[str]) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO datasets VALUES (?,?,?,?,?,?)",
                (row.fingerprint, row.source, row.files, row.bytes, row.created, row.last_used),
            )
            db.executemany(
                "INSERT OR IGNORE INTO dataset_objects VALUES (?,?)",
                ((row.fingerprint, d) for d in set(digests)),
            )

    def remove_dataset(self, fingerprint: str) -> list[str]:
        """Forget a dataset; return the digests no other dataset references any more."""
        with self.tx() as db:
            digests = [
                r[0]
                for r in db.execute(
                    "SELECT digest FROM dataset_objects WHERE fingerprint=?", (fingerprint,)
                )
            ]
            db.execute("DELETE FROM dataset_objects WHERE fingerprint=?", (fingerprint,))
            db.execute("DELETE FROM datasets WHERE fingerprint=?", (fingerprint,))
            orphans = [
                d
                for d in digests
                if db.execute(
                    "SELECT 1 FROM dataset_objects WHERE digest=? LIMIT 1", (d,)
                ).fetchone()
                is None
            ]
            return orphans

    def datasets_lru(self) -> list[DatasetRow]:
        rows = self.db.execute(
            "SELECT fingerprint, source, files, bytes, created, last_used FROM datasets ORDER BY last_used"
        ).fetchall()
        return [DatasetRow(*r) for r in rows]

    def dataset_digests(self, fingerprint: str) -> list[str]:
        return [
            r[0]
            for r in self.db.execute(
                "SELECT digest FROM dataset_objects WHERE fingerprint=?", (fingerprint,)
            )
        ]

    # -- objects ------------------------------------------------------------------------
    def has_object(self, digest: str) -> bool:
        return (
            self.db.execute("SELECT 1 FROM objects WHERE digest=?", (digest,)).fetchone()
            is not None
        )

    def digest_for(self, source_key: str) -> str | None:
        row = self.db.execute(
            "SELECT s.digest FROM source_objects s JOIN objects o ON o.digest = s.digest WHERE s.source_key=?",
            (source_key,),
        ).fetchone()
        return row[0] if row else None

    def add_object(self, digest: str, size: int, source_key: str | None) -> None:
        with self.tx() as db:
            db.execute("INSERT OR IGNORE INTO objects VALUES (?,?,?)", (digest, size, time.time()))
            if source_key:
                db.execute(
                    "INSERT OR REPLACE INTO source_objects VALUES (?,?)", (source_key, digest)
                )

    def remove_objects(self, digests: Iterable[str]) -> None:
        with self.tx() as db:
            db.executemany("DELETE FROM objects WHERE digest=?", ((d,) for d in digests))

    def object_bytes(self) -> int:
        return int(self.db.execute("SELECT COALESCE(SUM(size), 0) FROM objects").fetchone()[0])

    def object_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM objects").fetchone()[0])

    def orphan_objects(self) -> list[str]:
        rows = self.db.execute(
            "SELECT digest FROM objects o WHERE NOT EXISTS (SELECT 1 FROM dataset_objects d WHERE d.digest = o.digest)"
        )
        return [r[0] for r in rows]
