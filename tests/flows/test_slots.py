"""Slots for models, on a real Prefect server: a node's capacity is a global concurrency limit
that benchmark-sweep and run-benchmark models hold while they run, and the UI shows who waits."""

from __future__ import annotations

import contextvars
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlstage.errors import ConfigError
from mlstage.settings import get_settings
from mlstage.specs import DatasetSpec, ModelSpec, RecipeSpec, SweepSpec
from mlstage.state import StateStore
from mlstage.testing.prefect_server import PrefectServer
from mlstage.testing.workloads import make_dataset

pytestmark = [pytest.mark.prefect, pytest.mark.integration]

COUNT = "mlstage.testing.workloads:count_files"


@pytest.fixture
def capacity(prefect_api: PrefectServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``capacity(n)``: this node's slot limit, made the way docs/prefect.md says (gcl create)."""

    def make(slots: int) -> str:
        name = f"mlstage-slots-test-{uuid.uuid4().hex[:8]}"
        prefect_api.cli("gcl", "create", name, "--limit", str(slots))
        monkeypatch.setenv("MLSTAGE_SLOT_LIMIT", name)
        return name

    return make


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals that overlap at one instant."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    now = peak = 0
    for _, step in edges:  # an end sorts before a start at the same instant
        now += step
        peak = max(peak, now)
    return peak


def state_names(api_url: str, flow_run_id: str) -> dict[str, list[str]]:
    """Each task run of the flow run: the names of the states it went through, in order."""
    runs = httpx.post(
        f"{api_url}/task_runs/filter",
        json={"flow_runs": {"id": {"any_": [flow_run_id]}}},
        timeout=30,
    ).json()
    out = {}
    for r in runs:
        states = httpx.get(
            f"{api_url}/task_run_states/", params={"task_run_id": r["id"]}, timeout=30
        ).json()
        states.sort(key=lambda s: s["timestamp"])
        out[r["name"]] = [s["name"] for s in states]
    return out


def test_four_one_slot_models_on_a_two_slot_node_run_two_at_a_time(
    home: Path, prefect_api: PrefectServer, capacity: Any, tmp_path: Path
) -> None:
    from flows.benchmark_sweep import benchmark_sweep

    limit = capacity(2)
    data = make_dataset(tmp_path, "a", 6)
    sweep = SweepSpec(
        name="slots",
        datasets=[DatasetSpec(name="a", uri=str(data), recipe=RecipeSpec(name="identity"))],
        models=[
            ModelSpec(
                name=f"gpu-{i}", dataset="a", entrypoint=COUNT, params={"seconds": 2}, slots=1
            )
            for i in range(4)
        ],
    )
    state = benchmark_sweep(sweep, return_state=True)
    assert state.is_completed()
    rows = state.result()
    assert [r["status"] for r in rows] == ["completed"] * 4

    runs = StateStore.open(get_settings().resolved_state_url).runs()
    intervals = [(r.metrics["started_at"], r.metrics["finished_at"]) for r in runs]
    assert len(intervals) == 4
    assert most_at_once(intervals) == 2  # never more than the node's 2 slots, and not serial

    # the UI showed the two that waited: their task runs went through AwaitingSlot to Running
    flow_run_id = runs[0].flow_run_id
    assert flow_run_id
    deadline = time.monotonic() + 30
    while True:  # task-run states reach the server as events, recorded a moment later
        names = state_names(prefect_api.api_url, flow_run_id)
        waited = {
            n: s for n, s in names.items() if n.startswith("run-model") and "AwaitingSlot" in s
        }
        if len(waited) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(waited) >= 2, names
    for states in waited.values():
        after = states[states.index("AwaitingSlot") + 1 :]
        assert "Running" in after and after[-1] == "Completed", states
    # and every slot was given back
    held = httpx.get(f"{prefect_api.api_url}/v2/concurrency_limits/{limit}", timeout=30).json()
    assert held["active_slots"] == 0


def test_run_benchmark_waits_for_its_slot(
    home: Path, prefect_api: PrefectServer, capacity: Any, tmp_path: Path
) -> None:
    from prefect.concurrency.sync import concurrency

    from flows.run_benchmark import run_benchmark

    limit = capacity(1)
    data = make_dataset(tmp_path, "b", 3)
    dataset = DatasetSpec(name="b", uri=str(data), recipe=RecipeSpec(name="identity"))
    model = ModelSpec(name="one-gpu", dataset="b", entrypoint=COUNT, slots=1)
    held = threading.Event()
    released: list[float] = []

    def another_job() -> None:  # holds the node's only slot for 3 s
        with concurrency(limit, occupy=1):
            held.set()
            time.sleep(3)
            released.append(time.time())

    # in this test's context: its Prefect settings name the session's server
    holder = threading.Thread(target=contextvars.copy_context().run, args=(another_job,))
    holder.start()
    assert held.wait(30)
    result = run_benchmark(model, dataset=dataset)
    holder.join()
    assert result["metrics"]["started_at"] >= released[0]

    too_big = model.model_copy(update={"slots": 2})
    with pytest.raises(ConfigError, match=f"asks for 2 slots; {limit} has 1"):
        run_benchmark(too_big, dataset=dataset)
