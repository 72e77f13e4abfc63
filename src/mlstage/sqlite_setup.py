"""Setting up a SQLite file that many processes open at once (state DB, cache index).

SQLite's busy timeout covers most lock waits, but not converting a new file to WAL: when two
connections convert it together, one holds a read lock while asking for the write lock the
other holds, and SQLite answers "database is locked" at once rather than deadlock. Eight
processes opening a fresh DB hit that a few times in a hundred. ``use_wal`` converts the file
once, under ``setup_lock``, before anyone connects.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

_WRITE_VERSION_BYTE, _WAL = 18, 2  # the file header's "write version"; 2 means WAL
# The name predates the WAL step; kept so processes of older and newer mlstage exclude
# each other.
LOCK_SUFFIX = ".migrate.lock"


@contextlib.contextmanager
def setup_lock(path: Path) -> Iterator[None]:
    """Exclude other processes and threads setting up the SQLite file at ``path``."""
    try:
        import fcntl
    except ImportError:  # not POSIX: SQLite's own locking still serialises the DDL
        yield
        return
    with open(path.with_name(path.name + LOCK_SUFFIX), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def is_wal(path: Path) -> bool:
    """Whether the SQLite file at ``path`` exists and is in WAL mode (read from its header)."""
    try:
        with open(path, "rb") as fh:
            header = fh.read(_WRITE_VERSION_BYTE + 1)
    except FileNotFoundError:
        return False
    return len(header) > _WRITE_VERSION_BYTE and header[_WRITE_VERSION_BYTE] == _WAL


def use_wal(path: Path) -> None:
    """Create the SQLite file at ``path`` if needed and put it in WAL mode, which persists.

    One header read when it already is; raises OSError or sqlite3.Error when it cannot be.
    """
    if is_wal(path):
        return
    with setup_lock(path):
        conn = sqlite3.connect(path, timeout=60, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        finally:
            conn.close()
