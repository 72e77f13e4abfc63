"""Re-staging without Prefect: a changed folder dataset is preprocessed, published, warmed;
stale benchmarks are listed and re-run once; a version is re-staged once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mlstage import pipeline
from mlstage.restage import rerun_table, restage, stale_benchmarks
from mlstage.settings import get_settings
from mlstage.specs import DatasetSpec, ModelSpec, RecipeSpec
from mlstage.state.claims import Coordination
from mlstage.watch import WatchEntry, Watcher


def write_samples(root: Path, n: int, start: int = 0) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        (root / f"s-{i:04d}.json").write_text(json.dumps({"x": [i, i % 3], "y": i % 2}))


@pytest.fixture
def ws(home: Path) -> pipeline.Workspace:
    return pipeline.Workspace.from_settings(get_settings())


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    write_samples(tmp_path / "remote", 20)
    return tmp_path / "remote"


def make_entry(remote: Path, **kw: object) -> WatchEntry:
    spec = DatasetSpec(
        name="toy", uri=str(remote), recipe=RecipeSpec(params={"target_bytes": 1024})
    )
    return WatchEntry(dataset=spec, settle_seconds=0, **kw)


MODEL = ModelSpec(
    name="m",
    dataset="toy",
    entrypoint="mlstage.examples:fit_and_score",
    params={"estimator": "logistic"},
)


def first_run(ws: pipeline.Workspace, entry: WatchEntry) -> pipeline.RunOutcome:
    ready = pipeline.stage(ws, pipeline.preprocess(ws, pipeline.resolve(ws, entry.dataset)))
    return pipeline.run(ws, MODEL, ready)


def change(ws: pipeline.Workspace, entry: WatchEntry, remote: Path) -> str:
    w = Watcher(ws.state)
    w.check([entry])
    write_samples(remote, 4, start=100)
    (c,) = w.check([entry]).changes
    return c.new_version


def test_restage_lists_and_reruns_stale_benchmarks_once(
    ws: pipeline.Workspace, remote: Path, tmp_path: Path
) -> None:
    extra_cache = tmp_path / "other-cache"
    entry = make_entry(remote, rerun_stale=True, warm_caches=["local", str(extra_cache)])
    old = first_run(ws, entry)
    v2 = change(ws, entry, remote)
    assert [s.run_id for s in stale_benchmarks(ws.state, "toy")] == [old.run_id]

    result = restage(ws, entry, v2)
    assert result.status == "restaged" and result.warmed == ["local", str(extra_cache)]
    assert [s.run_id for s in result.stale] == [old.run_id]
    (rerun,) = result.reran
    assert rerun.status == "completed" and rerun.metrics["samples"] == 24
    assert ws.state.run(rerun.run_id).version == v2
    assert any(extra_cache.rglob("*.tar"))
    assert ws.state.stale_runs("toy") == []  # the re-run is current: nothing is stale
    assert [r.run_id for r in ws.state.stale_runs("toy", history=True)] == [old.run_id]
    assert stale_benchmarks(ws.state, "toy") == []
    names = [e.event for e in result.events()]
    assert names == ["mlstage.benchmark.stale", "mlstage.dataset.restaged"]
    assert result.events()[-1].payload["reran"] == [rerun.run_id]

    assert restage(ws, entry, v2).status == "duplicate"
    assert len(ws.state.runs()) == 2

    (row,) = rerun_table(result)  # the restage flow's table artifact
    assert (row["stale_run"], row["rerun"], row["rerun_status"]) == (
        old.run_id,
        rerun.run_id,
        "completed",
    )
    assert (
        row["score_before"] == old.metrics["score"] and row["score_now"] == rerun.metrics["score"]
    )


def test_each_restage_step_goes_through_the_step_runner(
    ws: pipeline.Workspace, remote: Path
) -> None:
    """The restage-dataset flow passes a runner that makes each step a Prefect task run."""
    entry = make_entry(remote, rerun_stale=True)
    first_run(ws, entry)
    v2 = change(ws, entry, remote)
    seen: list[str] = []

    def step(name: str, fn: Any) -> Any:
        seen.append(name)
        return fn()

    assert restage(ws, entry, v2, step=step).status == "restaged"
    assert seen == ["resolve", "preprocess", "warm-caches", "find-stale", "rerun-m"]


def test_restage_without_rerun_only_lists(ws: pipeline.Workspace, remote: Path) -> None:
    entry = make_entry(remote)
    old = first_run(ws, entry)
    v2 = change(ws, entry, remote)
    result = restage(ws, entry, v2)
    assert [s.run_id for s in result.stale] == [old.run_id] and result.reran == []
    assert len(ws.state.runs()) == 1


def test_a_version_the_source_moved_past_is_superseded(
    ws: pipeline.Workspace, remote: Path
) -> None:
    entry = make_entry(remote)
    first_run(ws, entry)
    v2 = change(ws, entry, remote)
    write_samples(remote, 1, start=500)
    assert restage(ws, entry, v2).status == "superseded"
    assert Coordination(ws.state).claims("toy")[0].status == "superseded"


def test_a_failed_restage_can_be_retried(ws: pipeline.Workspace, remote: Path) -> None:
    entry = make_entry(remote, warm_caches=["/proc/forbidden-cache"])
    first_run(ws, entry)
    v2 = change(ws, entry, remote)
    with pytest.raises(Exception):  # noqa: B017 - the cache folder cannot be created
        restage(ws, entry, v2)
    assert Coordination(ws.state).claims("toy")[0].status == "failed"
    ok = restage(ws, make_entry(remote), v2)
    assert ok.status == "restaged"
