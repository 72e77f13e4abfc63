"""benchmark-sweep against a real Prefect server: failures stay local, bad sweeps fail early."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from mlstage.errors import ConfigError
from mlstage.settings import get_settings
from mlstage.specs import DatasetSpec, ModelSpec, RecipeSpec, SweepSpec
from mlstage.state import StateStore
from mlstage.testing.workloads import make_dataset

pytestmark = [pytest.mark.prefect, pytest.mark.integration]

COUNT = "mlstage.testing.workloads:count_files"


def shard(target: int = 4096) -> RecipeSpec:
    return RecipeSpec(name="shard", params={"target_bytes": target})


def read_artifact(api_url: str, key: str) -> object:
    """The newest artifact with ``key``, read over the Prefect REST API."""
    import httpx

    body = {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1, "offset": 0}
    found = httpx.post(f"{api_url}/artifacts/filter", json=body, timeout=10).json()
    assert found, f"no artifact {key}"
    return found[0]["data"]


class _Collect(logging.Handler):
    """Every record a logger hands it, formatted as a console would show it."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_a_failing_model_does_not_sink_the_sweep(home: Path, prefect_api, tmp_path: Path) -> None:
    from flows.benchmark_sweep import SweepFailed, benchmark_sweep

    a = make_dataset(tmp_path, "a", 30)
    b = make_dataset(tmp_path, "b", 12)
    sweep = SweepSpec(
        name="fail-one",
        datasets=[
            DatasetSpec(name="a", uri=str(a), recipe=shard()),
            DatasetSpec(name="b", uri=str(b), recipe=shard()),
        ],
        models=[
            ModelSpec(name="ok-a", dataset="a", entrypoint=COUNT),
            ModelSpec(name="bad-a", dataset="a", entrypoint=COUNT, params={"fail": True}),
            ModelSpec(name="ok-b", dataset="b", entrypoint=COUNT),
            ModelSpec(name="stream-b", dataset="b", entrypoint=COUNT, start="first-shard"),
        ],
    )
    task_logs = _Collect()
    logging.getLogger("prefect.task_runs").addHandler(task_logs)
    try:
        state = benchmark_sweep(sweep, return_state=True)
    finally:
        logging.getLogger("prefect.task_runs").removeHandler(task_logs)
    assert state.is_failed()
    failed = state.result(raise_on_failure=False)
    assert isinstance(failed, SweepFailed)
    assert "1 of 4 models failed" in str(failed) and "bad-a" in str(failed)
    # the failed model is logged once, without a stray empty traceback under it
    assert any("model bad-a failed" in line for line in task_logs.lines)
    assert not any("NoneType: None" in line for line in task_logs.lines)
    rows = {r["model"]: r for r in failed.rows}
    assert rows["ok-a"]["status"] == rows["ok-b"]["status"] == "completed"
    assert rows["stream-b"]["status"] == "completed"
    assert rows["stream-b"]["score"] == rows["ok-b"]["score"]  # the same staged files
    assert rows["bad-a"]["status"] == "failed" and "on purpose" in rows["bad-a"]["error"]
    assert rows["ok-a"]["score"] > 1 and rows["ok-b"]["score"] >= 1  # shards, not raw files

    runs = {r.model: r for r in StateStore.open(get_settings().resolved_state_url).runs()}
    assert {n: r.status for n, r in runs.items()} == {
        "ok-a": "completed",
        "bad-a": "failed",
        "ok-b": "completed",
        "stream-b": "completed",
    }
    assert runs["ok-a"].artifact_id == runs["bad-a"].artifact_id  # a preprocessed once
    assert runs["ok-a"].artifact_id != runs["ok-b"].artifact_id

    assert read_artifact(prefect_api.api_url, "sweep-fail-one-progress") == 100.0
    table = read_artifact(prefect_api.api_url, "sweep-fail-one-summary")
    assert "bad-a" in str(table)
    # in the UI the failed model's task run is red, the others green
    models = [
        t
        for t in task_runs(prefect_api.api_url, str(state.state_details.flow_run_id), 6)
        if t["name"].startswith(("run-model", "stream-and-run-model"))
    ]
    assert sorted(t["state"]["type"] for t in models) == ["COMPLETED"] * 3 + ["FAILED"]
    (red,) = [t for t in models if t["state"]["type"] == "FAILED"]
    assert "model bad-a failed" in red["state"]["message"]


def test_a_dataset_that_fails_to_preprocess_fails_only_its_models(
    home: Path, prefect_api, tmp_path: Path
) -> None:
    from flows.benchmark_sweep import SweepFailed, benchmark_sweep

    good = make_dataset(tmp_path, "good", 6)
    sweep = SweepSpec(
        name="lost-data",
        datasets=[
            DatasetSpec(name="gone", uri=str(tmp_path / "deleted-before-the-run"), recipe=shard()),
            DatasetSpec(name="good", uri=str(good), recipe=shard()),
        ],
        models=[
            ModelSpec(name="on-gone", dataset="gone", entrypoint=COUNT),
            ModelSpec(name="streams-gone", dataset="gone", entrypoint=COUNT, start="first-shard"),
            ModelSpec(name="on-good", dataset="good", entrypoint=COUNT),
        ],
    )
    with pytest.raises(SweepFailed) as failed:
        benchmark_sweep(sweep)
    rows = {r["model"]: r for r in failed.value.rows}
    assert rows["on-good"]["status"] == "completed"
    for name in ("on-gone", "streams-gone"):
        assert rows[name]["status"] == "failed"
        assert "gone: preprocess failed" in rows[name]["error"], rows[name]["error"]
        assert "deleted-before-the-run" in rows[name]["error"]  # the path, to act on
    # the lost dataset's models never started: no run of theirs is in the state DB
    runs = StateStore.open(get_settings().resolved_state_url).runs()
    assert [r.model for r in runs] == ["on-good"]
    assert read_artifact(prefect_api.api_url, "sweep-lost-data-progress") == 100.0


def task_runs(api_url: str, flow_run_id: str, expected: int) -> list[dict[str, Any]]:
    """The flow run's task runs, once the API has recorded ``expected`` of them in a final state."""
    import httpx

    body = {"flow_runs": {"id": {"any_": [flow_run_id]}}}
    deadline = time.monotonic() + 30
    while True:
        found = httpx.post(f"{api_url}/task_runs/filter", json=body, timeout=10).json()
        final = [t for t in found if t["state"] and t["state"]["type"] in ("COMPLETED", "FAILED")]
        if len(final) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def task_run_names(api_url: str, flow_run_id: str, expected: int) -> list[str]:
    """The flow run's task run names, once the API has recorded ``expected`` of them."""
    return sorted(t["name"].rsplit("-", 1)[0] for t in task_runs(api_url, flow_run_id, expected))


def test_preprocessing_here_leaves_nothing_to_stage(
    home: Path, prefect_api, tmp_path: Path
) -> None:
    from flows.benchmark_sweep import benchmark_sweep

    sweep = SweepSpec(
        name="made-here",
        datasets=[
            DatasetSpec(name="a", uri=str(make_dataset(tmp_path, "a", 8)), recipe=shard()),
            DatasetSpec(name="b", uri=str(make_dataset(tmp_path, "b", 5)), recipe=shard()),
        ],
        models=[
            ModelSpec(name="m-a", dataset="a", entrypoint=COUNT),
            ModelSpec(name="m-b", dataset="b", entrypoint=COUNT),
        ],
    )
    state = benchmark_sweep(sweep, return_state=True)
    rows = {r["model"]: r for r in state.result()}
    # each dataset was staged once, by its preprocess (a miss that brought its bytes)
    assert {r["cache"] for r in rows.values()} == {"miss"}
    assert all(r["bytes_staged"] > 0 for r in rows.values())
    # and the row says where those bytes came from: the recipe's output, on this node
    for r in rows.values():
        assert r["data_from"] == "recipe output on this node"
        assert r["bytes_from_recipe"] == r["bytes_staged"] and r["bytes_from_shared"] == 0
    again = {r["model"]: r for r in benchmark_sweep(sweep)}
    assert {(r["cache"], r["data_from"]) for r in again.values()} == {("hit", "cache")}
    assert all(r["bytes_from_cache"] > 0 and r["ready_s"] is not None for r in again.values())
    names = task_run_names(prefect_api.api_url, str(state.state_details.flow_run_id), 4)
    assert names == ["preprocess", "preprocess", "run-model", "run-model"]


def test_each_model_starts_when_its_own_data_is_ready(
    home: Path, prefect_api, tmp_path: Path
) -> None:
    from flows.benchmark_sweep import benchmark_sweep

    fast = make_dataset(tmp_path, "fast", 5)
    slow = make_dataset(tmp_path, "slow", 5)
    slow_recipe = RecipeSpec(name="mlstage.testing.workloads:slow_copy", params={"seconds": 4})
    sweep = SweepSpec(
        name="overlap",
        datasets=[
            DatasetSpec(name="slow", uri=str(slow), recipe=slow_recipe),
            DatasetSpec(name="fast", uri=str(fast), recipe=RecipeSpec(name="identity")),
        ],
        models=[
            ModelSpec(name="on-slow", dataset="slow", entrypoint=COUNT),
            ModelSpec(name="on-fast", dataset="fast", entrypoint=COUNT, params={"seconds": 1}),
        ],
    )
    benchmark_sweep(sweep)
    runs = {r.model: r for r in StateStore.open(get_settings().resolved_state_url).runs()}
    # the fast model had started and finished its work while the slow dataset was still in its recipe
    assert runs["on-fast"].metrics["started_at"] + 1 < runs["on-slow"].metrics["started_at"]


def test_a_malformed_sweep_fails_before_any_data_moves(
    home: Path, prefect_api, tmp_path: Path
) -> None:
    from flows.benchmark_sweep import benchmark_sweep

    a = make_dataset(tmp_path, "a", 3)
    sweep = SweepSpec(
        name="bad",
        datasets=[
            DatasetSpec(name="a", uri=str(a), recipe=shard()),
            DatasetSpec(name="nowhere", uri="gopher://host/data"),
            DatasetSpec(
                name="typed",
                uri=str(a),
                recipe=RecipeSpec(name="shard", params={"target_bytes": "big"}),
            ),
        ],
        models=[
            ModelSpec(name="m1", dataset="a", entrypoint="no_such_module_xyz:train"),
            ModelSpec(name="m2", dataset="nowhere", entrypoint=COUNT),
            ModelSpec(name="m3", dataset="typed", entrypoint=COUNT),
        ],
    )
    with pytest.raises(ConfigError) as bad:
        benchmark_sweep(sweep)
    message = str(bad.value)
    problems = [line for line in message.splitlines() if line.startswith("- ")]
    assert len(problems) == 3, message
    assert any("nowhere" in p and "gopher://host/data" in p for p in problems)
    assert any("typed" in p and "target_bytes" in p for p in problems)
    assert any("m1" in p and "no_such_module_xyz" in p for p in problems)
    assert not (home / "shared").exists() and not (home / "cache").exists()


def test_run_benchmark_honours_first_shard(home: Path, prefect_api, tmp_path: Path) -> None:
    from flows.run_benchmark import run_benchmark

    data = make_dataset(tmp_path, "c", 20)
    dataset = DatasetSpec(name="c", uri=str(data), recipe=shard())
    streamed = run_benchmark(
        ModelSpec(name="early", dataset="c", entrypoint=COUNT, start="first-shard"), dataset=dataset
    )
    waited = run_benchmark(ModelSpec(name="late", dataset="c", entrypoint=COUNT), dataset=dataset)
    assert streamed["metrics"]["score"] == waited["metrics"]["score"]
    # only the streaming path measures when the first object landed and how long reads waited
    assert (
        "time_to_first_object_s" in streamed["metrics"]
        and "data_stall_seconds" in streamed["metrics"]
    )
    assert "time_to_first_object_s" not in waited["metrics"]


def test_a_sweep_that_breaks_is_recorded_failed_not_left_running(
    home: Path, prefect_api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.benchmark_sweep as module
    from mlstage.state.models import Sweep

    def broken(*args: object) -> list[dict[str, object]]:
        raise RuntimeError("the summary broke")

    monkeypatch.setattr(module, "summarize", broken)
    sweep = SweepSpec(
        name="Müller Sweep",  # not an ASCII artifact key by itself
        datasets=[DatasetSpec(name="d", uri=str(make_dataset(tmp_path, "d", 4)), recipe=shard())],
        models=[ModelSpec(name="m", dataset="d", entrypoint=COUNT)],
    )
    with pytest.raises(RuntimeError, match="the summary broke"):
        module.benchmark_sweep(sweep)
    store = StateStore.open(get_settings().resolved_state_url)
    with store.session() as s:
        (row,) = s.query(Sweep).all()
    assert row.name == "Müller Sweep" and row.status == "failed" and row.finished_at


def test_ui_artifacts_that_cannot_be_written_do_not_fail_the_sweep(
    home: Path, prefect_api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.artifacts
    import flows.benchmark_sweep as module

    def artifact_api_down(**kwargs: object) -> None:
        raise RuntimeError("artifact API down")

    for owner in (module, flows.artifacts):
        monkeypatch.setattr(owner, "create_table_artifact", artifact_api_down)
    sweep = SweepSpec(
        name="no-tables",
        datasets=[DatasetSpec(name="d", uri=str(make_dataset(tmp_path, "d", 4)), recipe=shard())],
        models=[ModelSpec(name="m", dataset="d", entrypoint=COUNT)],
    )
    logs = _Collect()
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addHandler(logs)
    try:
        state = module.benchmark_sweep(sweep, return_state=True)
    finally:
        for name in ("prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).removeHandler(logs)
    assert state.is_completed()
    (row,) = state.result()
    assert row["model"] == "m" and row["status"] == "completed"
    assert any("summary artifact not published: artifact API down" in ln for ln in logs.lines)
    assert any("consumption artifact not published" in ln for ln in logs.lines)
