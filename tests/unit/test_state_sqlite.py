"""SQLite state DB setup under concurrency: a fresh DB opened by many at once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import text

from mlstage.errors import StateError
from mlstage.state.db import make_engine

OPENERS, FRESH_DBS = 8, 60


def _open_and_read(url: str, start: threading.Barrier, errors: list[str]) -> None:
    start.wait(30)
    try:
        engine = make_engine(url, upgrade=False)
        with engine.connect() as conn:
            conn.execute(text("SELECT name FROM sqlite_master")).all()
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - collected for the assertion
        errors.append(repr(exc))


def test_a_fresh_db_opened_by_many_at_once_is_never_locked(tmp_path: Path) -> None:
    # Converting a new file to WAL used to race: SQLite answers "database is locked" at
    # once, busy timeout or not, to one of two connections converting it together.
    errors: list[str] = []
    for n in range(FRESH_DBS):
        url = f"sqlite:///{tmp_path}/state-{n}.db"
        start = threading.Barrier(OPENERS)
        threads = [
            threading.Thread(target=_open_and_read, args=(url, start, errors))
            for _ in range(OPENERS)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert errors == []
    assert (tmp_path / "state-0.db").read_bytes()[18] == 2  # the file itself is in WAL mode


def test_an_unopenable_db_file_is_a_one_line_state_error(tmp_path: Path) -> None:
    (tmp_path / "state.db").mkdir()  # a folder where the file should be
    with pytest.raises(StateError, match="cannot use state DB .*state.db") as info:
        make_engine(f"sqlite:///{tmp_path}/state.db")
    assert "\n" not in str(info.value)
