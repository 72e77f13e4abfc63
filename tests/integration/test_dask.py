"""Preprocessing on a dask.distributed cluster with separate worker processes, the Prefect way:
a ``preprocess-on-dask`` subflow whose task runner is ``DaskTaskRunner(address=...)``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlstage.specs import DatasetSpec, RecipeSpec
from mlstage.testing.workloads import make_dataset

pytestmark = [pytest.mark.integration, pytest.mark.prefect]
COUNT = "mlstage.testing.workloads:count_files"


@pytest.fixture(autouse=True)
def fresh_workspace() -> Iterator[None]:
    from flows._workspace import reset_workspace

    reset_workspace()
    yield
    reset_workspace()


def subflow_runs(api_url: str, parent_flow_run_id: str) -> list[dict]:
    """The preprocess-on-dask flow runs started under ``parent_flow_run_id`` (by its tasks)."""
    import httpx

    tasks = httpx.post(
        f"{api_url}/task_runs/filter",
        json={"flow_runs": {"id": {"any_": [parent_flow_run_id]}}},
        timeout=30,
    ).json()
    runs = httpx.post(
        f"{api_url}/flow_runs/filter",
        json={"flow_runs": {"parent_task_run_id": {"any_": [t["id"] for t in tasks]}}},
        timeout=30,
    ).json()
    return runs


def test_preprocess_runs_on_dask_worker_processes(home: Path, prefect_api, tmp_path: Path) -> None:
    import httpx
    from distributed import Client, LocalCluster
    from prefect_dask import DaskTaskRunner

    from flows._dask import on_dask
    from flows.benchmark_sweep import benchmark_sweep
    from flows.preprocess_dataset import preprocess_dataset
    from mlstage.specs import ModelSpec, SweepSpec

    specs = [
        DatasetSpec(
            name=n,
            uri=str(make_dataset(tmp_path, n, 6, lines=10)),
            recipe=RecipeSpec(name="mlstage.testing.workloads:pid_recipe", params={"tag": n}),
        )
        for n in ("a", "b", "c")
    ]
    # workers inherit this process's environment: MLSTAGE_HOME and PREFECT_API_URL
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        worker_pids = set(client.run(os.getpid).values())
        address = cluster.scheduler_address
        runner = on_dask(address).task_runner
        assert isinstance(runner, DaskTaskRunner) and runner.address == address
        state = preprocess_dataset(specs, dask_address=address, return_state=True)
        rows = state.result()
        again = preprocess_dataset(specs, dask_address=address)
        # a sweep preprocesses each dataset in its own subflow on the cluster, then runs its
        # models here on the published artifacts
        sweep = SweepSpec(
            name="on-dask",
            datasets=[specs[0].model_copy(update={"name": "d"}), specs[1]],
            models=[
                ModelSpec(name="md", dataset="d", entrypoint=COUNT),
                ModelSpec(name="mb", dataset="b", entrypoint=COUNT),
            ],
        )
        sweep_state = benchmark_sweep(sweep, dask_address=address, return_state=True)

    assert [r["dataset"] for r in rows] == ["a", "b", "c"]
    assert not any(r["skipped"] for r in rows) and all(r["skipped"] for r in again)
    ran = []
    for r in rows:
        text = (home / "shared" / "artifacts" / r["artifact_id"] / "data" / "ran.txt").read_text()
        assert text.startswith(f"{r['dataset']} ") and "files=6" in text
        ran.append(int(text.split("pid=")[1].split()[0]))
    assert os.getpid() not in ran and set(ran) <= worker_pids

    # the preprocessing was one subflow of preprocess-dataset, and one per dataset of the sweep
    api = prefect_api.api_url
    (sub,) = subflow_runs(api, str(state.state_details.flow_run_id))
    flow = httpx.get(f"{api}/flows/{sub['flow_id']}", timeout=30).json()
    assert flow["name"] == "preprocess-on-dask" and sub["state_type"] == "COMPLETED"
    assert sweep_state.is_completed()
    assert {r["status"] for r in sweep_state.result()} == {"completed"}
    subs = subflow_runs(api, str(sweep_state.state_details.flow_run_id))
    assert len(subs) == 2 and {s["state_type"] for s in subs} == {"COMPLETED"}


def test_dask_without_a_prefect_server_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows._dask import dask_problems

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(updates={PREFECT_API_URL: None}):
        problems = dask_problems("tcp://127.0.0.1:8786")
    assert len(problems) == 1 and "needs a Prefect server" in problems[0]
    assert "PREFECT_API_URL" in problems[0]
    assert dask_problems(None) == []
