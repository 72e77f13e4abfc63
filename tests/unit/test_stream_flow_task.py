"""The flow-side task for ``start: first-shard`` runs a model on a stream (no Prefect API)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlstage import pipeline
from mlstage.reader import iter_shard
from mlstage.specs import DatasetSpec, ModelSpec, RecipeSpec
from mlstage.stream import StreamingDataset


def count_samples(data_dir: Path, stream: StreamingDataset) -> dict:
    return {"samples": sum(1 for o in stream for _ in iter_shard(o.file))}


def count_after_ready(data_dir: Path) -> dict:
    return {"samples": sum(1 for p in data_dir.glob("*.tar") for _ in iter_shard(p))}


@pytest.mark.parametrize("fn", ["count_samples", "count_after_ready"])
def test_run_streaming_task(home: Path, tmp_path: Path, fn: str) -> None:
    from prefect.logging import disable_run_logger

    from flows._workspace import reset_workspace, workspace
    from flows.streaming import run_streaming_task

    remote = tmp_path / "remote"
    remote.mkdir()
    for i in range(30):
        (remote / f"s{i:03d}.json").write_text(json.dumps({"i": i}))
    reset_workspace()
    ws = workspace()
    spec = DatasetSpec(name="toy", uri=str(remote), recipe=RecipeSpec(params={"max_samples": 5}))
    prepared = pipeline.preprocess(ws, pipeline.resolve(ws, spec))
    model = ModelSpec(name="m", dataset="toy", entrypoint=f"{__name__}:{fn}", start="first-shard")
    with disable_run_logger():
        outcome = run_streaming_task.fn(model, prepared)
    reset_workspace()
    assert outcome.status == "completed", outcome.error
    assert outcome.metrics["samples"] == 30
    assert outcome.ready is not None
    assert ws.cache.lookup(prepared.artifact.manifest.fingerprint) is not None
    (row,) = ws.state.runs()
    assert row.metrics["time_to_ready_s"] is not None
