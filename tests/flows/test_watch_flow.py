"""watch-datasets as deployed by `prefect deploy --all`: before anything is watched, and after."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.watch_datasets import watch_datasets
from mlstage.errors import ConfigError


def test_with_no_watch_list_yet_a_pass_watches_nothing_and_completes(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLSTAGE_WATCHLIST", raising=False)
    state = watch_datasets(return_state=True)
    assert state.is_completed(), state.message
    assert state.result() == {"changed": {}, "pending": [], "unchanged": [], "errors": {}}


def test_a_watch_list_asked_for_must_exist(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = home / "typo.yaml"
    monkeypatch.setenv("MLSTAGE_WATCHLIST", str(missing))
    with pytest.raises(ConfigError, match="cannot read watch list .*typo.yaml"):
        watch_datasets()


def test_the_default_watch_list_is_read_once_it_exists(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLSTAGE_WATCHLIST", raising=False)
    data = home / "data"
    data.mkdir(parents=True)
    (data / "a.bin").write_bytes(b"a")
    (home / "watchlist.yaml").write_text(
        f"datasets:\n  - dataset: {{name: d, uri: '{data}'}}\n    settle_seconds: 0\n"
    )
    first = watch_datasets()  # a baseline: first sight is no change
    assert first["unchanged"] == ["d"] and first["errors"] == {}
