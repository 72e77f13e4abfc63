"""SQLite files opened by many at once: a fresh state DB or cache index is never "locked"."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from mlstage.cache.index import CacheIndex
from mlstage.errors import CacheError, StateError
from mlstage.sqlite_setup import is_wal
from mlstage.state.db import make_engine

OPENERS, FRESH_FILES = 8, 60


def _open_state_db(path: Path) -> None:
    engine = make_engine(f"sqlite:///{path}", schema=False)
    with engine.connect() as conn:
        conn.execute(text("SELECT name FROM sqlite_master")).all()
    engine.dispose()


def _open_cache_index(path: Path) -> None:
    index = CacheIndex(path)
    index.dataset("0" * 64)
    index.close()


@pytest.mark.parametrize("open_file", [_open_state_db, _open_cache_index])
def test_a_fresh_file_opened_by_many_at_once_is_never_locked(
    tmp_path: Path, open_file: Callable[[Path], None]
) -> None:
    # Converting a new file to WAL used to race: SQLite answers "database is locked" at
    # once, busy timeout or not, to one of two connections converting it together.
    errors: list[str] = []

    def opener(path: Path, start: threading.Barrier) -> None:
        start.wait(30)
        try:
            open_file(path)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(repr(exc))

    for n in range(FRESH_FILES):
        start = threading.Barrier(OPENERS)
        path = tmp_path / f"db-{n}.sqlite"
        threads = [threading.Thread(target=opener, args=(path, start)) for _ in range(OPENERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert errors == []
    assert is_wal(tmp_path / "db-0.sqlite")


def test_a_state_db_path_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "state.db").mkdir()  # a folder where the file should be
    with pytest.raises(StateError, match="cannot use state DB .*state.db") as info:
        make_engine(f"sqlite:///{tmp_path}/state.db")
    assert "\n" not in str(info.value)


def test_a_cache_index_that_cannot_be_opened_is_a_cache_error(tmp_path: Path) -> None:
    (tmp_path / "index.sqlite").mkdir()
    with pytest.raises(CacheError, match="cannot open the cache index .*index.sqlite"):
        CacheIndex(tmp_path / "index.sqlite")
