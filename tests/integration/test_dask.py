"""preprocess-dataset on a dask.distributed cluster with separate worker processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlstage.specs import DatasetSpec, RecipeSpec
from mlstage.testing.workloads import make_dataset

pytestmark = [pytest.mark.integration, pytest.mark.prefect]


@pytest.fixture(autouse=True)
def fresh_workspace() -> Iterator[None]:
    from flows._workspace import reset_workspace

    reset_workspace()
    yield
    reset_workspace()


def test_preprocess_runs_on_dask_worker_processes(home: Path, prefect_api, tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    from flows.preprocess_dataset import preprocess_dataset

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
        rows = preprocess_dataset(specs, dask_address=cluster.scheduler_address)
        again = preprocess_dataset(specs, dask_address=cluster.scheduler_address)

    assert [r["dataset"] for r in rows] == ["a", "b", "c"]
    assert not any(r["skipped"] for r in rows) and all(r["skipped"] for r in again)
    ran = []
    for r in rows:
        text = (home / "shared" / "artifacts" / r["artifact_id"] / "data" / "ran.txt").read_text()
        assert text.startswith(f"{r['dataset']} ") and "files=6" in text
        ran.append(int(text.split("pid=")[1].split()[0]))
    assert os.getpid() not in ran and set(ran) <= worker_pids


def test_dask_without_a_prefect_server_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows._dask import dask_problems

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(updates={PREFECT_API_URL: None}):
        problems = dask_problems("tcp://127.0.0.1:8786")
    assert len(problems) == 1 and "needs a Prefect server" in problems[0]
    assert "PREFECT_API_URL" in problems[0]
    assert dask_problems(None) == []
