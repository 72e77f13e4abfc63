"""An mlstage-clearml-credentials block saved on a real Prefect server configures the ClearML
SDK of the process that loads it, and nothing of it reaches os.environ."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

pytestmark = [pytest.mark.prefect, pytest.mark.integration]


@pytest.fixture
def clean_sdk(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(os.environ):
        if key.startswith(("CLEARML_", "TRAINS_")):
            monkeypatch.delenv(key)
    yield
    from clearml.backend_interface.base import InterfaceBase
    from clearml.config import ConfigWrapper

    from mlstage.sources import clearml_server

    ConfigWrapper.set_overrides()
    InterfaceBase._default_session = None
    clearml_server._applied[0] = None


def test_a_saved_block_configures_the_sdk_by_name(prefect_api, clean_sdk: None) -> None:
    from clearml.backend_api.session.session import Session
    from clearml.config import ConfigWrapper

    from blocks import ClearMLCredentials
    from flows._workspace import clearml_configured

    ClearMLCredentials(
        api_host="http://clearml.flow.test:8008", access_key="AK-FLOW", secret_key="SK-flow"
    ).save("flow-clearml", overwrite=True)
    with clearml_configured("flow-clearml"):
        assert Session.get_api_server_host() == "http://clearml.flow.test:8008"
        assert Session.get_app_server_host() == "http://clearml.flow.test:8080"  # derived
        assert ConfigWrapper.get("api.credentials.secret_key") == "SK-flow"
    assert not [k for k in os.environ if k.startswith(("CLEARML_", "TRAINS_"))]
    with clearml_configured(None):  # no block: nothing is loaded or changed
        assert ConfigWrapper.get("api.credentials.access_key") == "AK-FLOW"
