"""Each benchmark run publishes a Prefect table artifact of what it consumed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mlstage.state import StateStore

pytestmark = [pytest.mark.integration, pytest.mark.prefect, pytest.mark.slow]


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    from prefect.settings import PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        temporary_settings({PREFECT_HOME: tmp_path_factory.mktemp("prefect-home")}),
        prefect_test_harness(server_startup_timeout=120),
    ):
        yield


def test_run_publishes_its_consumption_table(prefect_api: None, tmp_path: Path) -> None:
    import httpx
    from prefect import flow
    from prefect.settings import PREFECT_API_URL

    from flows.artifacts import publish_consumption

    st = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    v, _ = st.record_version("mnist", "f" * 64, "s3://u:pw@bucket/mnist/", 3, 1000)
    assert v.id is not None
    st.record_artifact("a" * 64, v.id, ("shard", "1", "{}"), "/shared/a", "d", 2, 1000)
    rec = st.record_stage(
        "a" * 64,
        hit=False,
        bytes_fetched=1000,
        objects_fetched=2,
        first_object_seconds=0.1,
        ready_seconds=0.2,
    )
    run = st.start_run(model="ResNet 50", dataset="mnist", entrypoint="m:f", params={})
    st.record_consumption(run.id, "a" * 64, rec.id)

    @flow
    def bench() -> object:
        return publish_consumption(st, run.id)

    assert bench() is not None

    # plain REST: this prefect/fastapi pair rejects the client's null filter fields
    res = httpx.post(
        f"{PREFECT_API_URL.value()}/artifacts/filter",
        json={"artifacts": {"key": {"any_": ["mlstage-consumed-resnet-50"]}}, "limit": 10},
    )
    res.raise_for_status()
    (artifact,) = res.json()
    assert artifact["type"] == "table" and artifact["flow_run_id"] is not None
    text = str(artifact["data"])
    assert "f" * 64 in text and "a" * 64 in text and "s3://bucket/mnist/" in text
    assert "u:pw@" not in text
    st.close()
