"""ClearML credentials reach the ClearML SDK in-process, never through os.environ (where
concurrent tasks race on them and every model subprocess inherits them)."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from blocks import ClearMLCredentials
from mlstage.runner import run_entrypoint
from mlstage.sources import clearml_server
from mlstage.sources.clearml_server import ClearMLServer

# a model's command: its metric is how many CLEARML_* variables it inherited
COUNT_CLEARML_ENV = """
import json, os
print(json.dumps({"score": sum(1 for k in os.environ if k.startswith(("CLEARML_", "TRAINS_")))}))
"""


@pytest.fixture
def clean_sdk(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No CLEARML_* variable to begin with; ClearML's in-process configuration reset after."""
    for key in list(os.environ):
        if key.startswith(("CLEARML_", "TRAINS_")):
            monkeypatch.delenv(key)
    yield
    from clearml.backend_interface.base import InterfaceBase
    from clearml.config import ConfigWrapper

    ConfigWrapper.set_overrides()
    InterfaceBase._default_session = None
    clearml_server._applied[0] = None


def sdk_view() -> dict[str, str]:
    """What the ClearML SDK would connect with (no server is asked)."""
    from clearml.backend_api.session.session import Session
    from clearml.config import ConfigWrapper

    return {
        "api": Session.get_api_server_host(),
        "web": Session.get_app_server_host(),
        "files": Session.get_files_server_host(),
        "key": ConfigWrapper.get("api.credentials.access_key"),
        "secret": ConfigWrapper.get("api.credentials.secret_key"),
    }


def test_a_block_configures_the_sdk_and_no_environment(clean_sdk: None, tmp_path: Path) -> None:
    block = ClearMLCredentials(
        api_host="http://clearml.test:8008",
        web_host="http://clearml.test:8080",
        files_host="http://files.test:8081",
        access_key="AK-TEST",
        secret_key="SK-very-secret",
    )
    server = block.build()
    assert not isinstance(server, dict) and "SK-very-secret" not in repr(server)
    with server.configured():
        assert sdk_view() == {
            "api": "http://clearml.test:8008",
            "web": "http://clearml.test:8080",
            "files": "http://files.test:8081",
            "key": "AK-TEST",
            "secret": "SK-very-secret",
        }
    assert sdk_view()["key"] == "AK-TEST"  # it stays, as ClearML's own set_credentials does
    assert not [k for k in os.environ if k.startswith(("CLEARML_", "TRAINS_"))]
    (tmp_path / "data").mkdir()
    (tmp_path / "model.py").write_text(COUNT_CLEARML_ENV)
    command = f"{sys.executable} {tmp_path / 'model.py'} {{data_dir}}"
    assert run_entrypoint(command, tmp_path / "data") == {"score": 0}  # a model inherits none


def test_the_sdk_is_configured_for_one_block_at_a_time(clean_sdk: None) -> None:
    a = ClearMLServer(api_host="http://a.test:8008", access_key="AK-A", secret_key="SK-A")
    b = ClearMLServer(api_host="http://b.test:8008", access_key="AK-B", secret_key="SK-B")
    seen: list[tuple[str, str]] = []

    def use(server: ClearMLServer) -> None:
        for _ in range(5):
            with server.configured():
                first = sdk_view()["key"]
                time.sleep(0.01)  # another thread would switch servers here without the lock
                seen.append((server.access_key, first if first == sdk_view()["key"] else "?"))

    threads = [threading.Thread(target=use, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(set(seen)) == [("AK-A", "AK-A"), ("AK-B", "AK-B")]
