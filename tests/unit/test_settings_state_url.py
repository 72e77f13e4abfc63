"""MLSTAGE_STATE_URL is a secret setting: shown masked everywhere, revealed only to make the
engine."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mlstage.settings import get_settings
from mlstage.state import StateStore

PW = "Xy7pw"


def test_settings_never_show_the_state_url(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"postgresql+psycopg://bob:{PW}@db:5432/state?sslpassword=ssl{PW}"
    monkeypatch.setenv("MLSTAGE_STATE_URL", url)
    s = get_settings()
    for shown in (repr(s), str(s), s.model_dump_json(), repr(s.model_dump()), f"{s!r}"):
        assert PW not in shown
    assert s.resolved_state_url.get_secret_value() == url


def test_the_default_and_a_given_url_open_the_store(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert get_settings().resolved_state_url.get_secret_value() == f"sqlite:///{home / 'state.db'}"
    caplog.set_level(logging.DEBUG)
    StateStore.open(get_settings().resolved_state_url).close()
    assert (home / "state.db").exists()

    given = tmp_path / f"{PW}.db"  # stands for a secret part of the URL
    monkeypatch.setenv("MLSTAGE_STATE_URL", f"sqlite:///{given}")
    st = StateStore.open(get_settings().resolved_state_url)
    st.start_run(model="m", dataset="d", entrypoint="e", params={})
    st.close()
    assert given.exists()
    assert PW not in caplog.text  # nothing logged the URL on the way
