"""Every schema revision says which older code may use it, and the SQLite default keeps
upgrading itself on open (it has one user); no server needed here."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from mlstage.state import StateStore, make_engine, migrate, read_status
from mlstage.state.schema import (
    COMPAT_REVISION,
    compatible_from,
    current_revision,
    head_revision,
    known_revisions,
)


def test_every_revision_declares_which_older_code_may_use_it() -> None:
    known = known_revisions()
    since = known[known.index(COMPAT_REVISION) :]
    previous = COMPAT_REVISION
    for revision in since:
        declared = compatible_from(revision)
        assert declared in known, revision
        # never newer than the revision itself, never older than its predecessor allowed
        assert known.index(previous) <= known.index(declared) <= known.index(revision)
        previous = declared


def test_a_sqlite_file_behind_upgrades_itself_on_open(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = make_engine(url, schema=False)
    migrate(engine, known_revisions()[-2])
    assert read_status(engine).state == "behind" and read_status(engine).usable
    engine.dispose()

    st = StateStore.open(url)
    status = read_status(st.engine)
    assert status.state == "current" and status.compatible_from == compatible_from(head_revision())
    with st.engine.connect() as conn:
        assert current_revision(conn) == head_revision()
        row = conn.execute(text("SELECT revision, compatible_from FROM schema_compat")).one()
    assert tuple(row) == (head_revision(), compatible_from(head_revision()))
    st.close()
