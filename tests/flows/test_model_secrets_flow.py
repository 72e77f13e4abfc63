"""A model's secret on a real Prefect API: saved as a Secret block, named by the model, handed
to its entrypoint, and found neither in Prefect's flow-run parameters and logs nor in
mlstage's state DB."""

from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from sqlmodel import SQLModel, select

from mlstage.settings import get_settings
from mlstage.specs import DatasetSpec, ModelSpec, RecipeSpec, SweepSpec
from mlstage.state import StateStore
from mlstage.testing.workloads import make_dataset

pytestmark = [pytest.mark.prefect, pytest.mark.integration]


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module ``secret_receiver`` whose ``fit`` writes the token it got to ``out``."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "secret_receiver.py").write_text(
        textwrap.dedent(
            """
            from pathlib import Path

            def fit(data_dir, hf_token, out, stream=None):
                Path(out).write_text(hf_token)
                return {"score": 1.0}
            """
        )
    )
    monkeypatch.syspath_prepend(str(mods))
    sys.modules.pop("secret_receiver", None)


def _prefect_record(api_url: str, flow_run_id: str) -> str:
    """Everything Prefect's API holds about a flow run: the run (its parameters), its task
    runs and its logs, as one text."""
    import httpx
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)
    run = httpx.get(f"{api_url}/flow_runs/{flow_run_id}", timeout=10).json()
    assert run["parameters"], run
    body = {"flow_runs": {"id": {"any_": [flow_run_id]}}}
    tasks = httpx.post(f"{api_url}/task_runs/filter", json=body, timeout=10).json()
    logs = httpx.post(
        f"{api_url}/logs/filter",
        json={"logs": {"flow_run_id": {"any_": [flow_run_id]}}},
        timeout=10,
    ).json()
    return "\n".join(str(x) for x in (run, tasks, logs))


def _state_db() -> str:
    store = StateStore.open(get_settings().resolved_state_url)
    dump = []
    with store.engine.connect() as conn:
        for table in SQLModel.metadata.sorted_tables:
            dump += [repr(tuple(r)) for r in conn.execute(select(table))]
    return "\n".join(dump)


def test_a_secret_block_reaches_the_model_and_no_database(
    home: Path, prefect_api, tmp_path: Path, receiver: None
) -> None:
    from prefect.blocks.system import Secret

    from flows.benchmark_sweep import benchmark_sweep
    from flows.run_benchmark import run_benchmark

    token = f"hf_{uuid.uuid4().hex}"
    block = f"mlstage-test-token-{uuid.uuid4().hex[:8]}"
    Secret(value=token).save(block)
    data = make_dataset(tmp_path, "d", 6)
    dataset = DatasetSpec(name="d", uri=str(data), recipe=RecipeSpec(name="shard"))

    def model(name: str, **extra: object) -> ModelSpec:
        return ModelSpec(
            name=name,
            dataset="d",
            entrypoint="secret_receiver:fit",
            params={"out": str(tmp_path / f"{name}.txt")},
            secrets={"hf_token": block},
            **extra,
        )

    sweep = SweepSpec(
        name="secrets",
        datasets=[dataset],
        models=[model("inline"), model("early", start="first-shard")],
    )
    state = benchmark_sweep(sweep, return_state=True)
    assert state.is_completed(), state.message
    solo = run_benchmark(model("solo"), dataset=dataset, return_state=True)  # a pod's run
    assert solo.is_completed(), solo.message

    for name in ("inline", "early", "solo"):  # each entrypoint was handed the value
        assert (tmp_path / f"{name}.txt").read_text() == token
    for done in (state, solo):
        record = _prefect_record(prefect_api.api_url, str(done.state_details.flow_run_id))
        assert block in record and token not in record  # the parameters name the block only
    db = _state_db()
    assert f"secret:{block}" in db and token not in db
