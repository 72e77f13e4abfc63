"""preprocess(stage_here=True): the node that made an artifact stages it from its own output.

The S3 shared tier is a real moto endpoint behind the counting proxy, so "nothing was read back"
is the endpoint's own account of the requests.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlstage import pipeline
from mlstage.cache import LocalCache
from mlstage.settings import Settings
from mlstage.shared import Artifact, FolderSharedTier, S3SharedTier, SharedTier
from mlstage.specs import DatasetSpec, RecipeSpec
from mlstage.state import StateStore
from mlstage.store import StoreConfig
from mlstage.testing.faults import FaultProxy, fault_proxy
from mlstage.testing.s3 import S3Endpoint
from mlstage.testing.workloads import make_dataset

pytestmark = pytest.mark.integration


@pytest.fixture
def proxy(s3_env: S3Endpoint) -> Iterator[FaultProxy]:
    with fault_proxy(s3_env.url) as p:
        yield p


def workspace(tmp_path: Path, shared: SharedTier) -> pipeline.Workspace:
    return pipeline.Workspace(
        cache=LocalCache(tmp_path / "home" / "cache"),
        shared=shared,
        state=StateStore.open(f"sqlite:///{tmp_path / 'state.db'}"),
        settings=Settings(home=tmp_path / "home"),
    )


def spec(tmp_path: Path) -> DatasetSpec:
    return DatasetSpec(
        name="toy",
        uri=str(make_dataset(tmp_path, "raw", 24)),
        recipe=RecipeSpec(name="shard", params={"target_bytes": 2048}),
    )


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("stage_here", [True, False])
def test_the_artifact_is_not_read_back_from_the_shared_tier(
    stage_here: bool, tmp_path: Path, bucket: str, proxy: FaultProxy
) -> None:
    tier = S3SharedTier(f"s3://{bucket}/shared", config=StoreConfig.from_env(endpoint=proxy.url))
    ws = workspace(tmp_path, tier)
    prepared = pipeline.preprocess(ws, pipeline.resolve(ws, spec(tmp_path)), stage_here=stage_here)
    shards = len(prepared.artifact.manifest)
    assert shards > 1
    proxy.reset()

    ready = pipeline.stage(ws, prepared)

    reads = [k for k in proxy.counts() if k.startswith("GET ") and "/data-" in k]
    assert len(reads) == (0 if stage_here else shards)
    # either way this node's staging is a miss that brought the artifact's bytes, recorded once
    assert not ready.staged.hit and ready.staged.bytes_fetched == prepared.artifact.bytes
    assert (prepared.staged_here is not None) == stage_here
    if prepared.staged_here is not None:
        assert ready.stage_record_id == prepared.staged_here[1]
    # staging the same Prepared again: that same staging (stage_here), else a cache hit
    assert pipeline.stage(ws, prepared).staged.hit is (not stage_here)
    # either way the staged tree is exactly what the shared tier holds
    published = tmp_path / "published"
    data_key = prepared.artifact.manifest.source.removeprefix(f"s3://{bucket}/")
    assert data_key.startswith(f"shared/artifacts/{prepared.artifact.artifact_id}/data-")
    for e in prepared.artifact.manifest.entries:
        (published / e.path).parent.mkdir(parents=True, exist_ok=True)
        (published / e.path).write_bytes(tier.store.get(f"{data_key}/{e.path}"))
    assert files(ready.staged.path) == files(published)


class RacedTier(FolderSharedTier):
    """Another node publishes the same artifact id first, from different bytes (a recipe that
    is not deterministic): what this node's recipe made is not what the tier holds."""

    def publish(self, artifact_id: str, data_dir: Path, info: dict[str, Any]) -> Artifact:
        theirs = data_dir.parent / "theirs"
        shutil.copytree(data_dir, theirs)
        first = sorted(theirs.iterdir())[0]
        first.write_bytes(first.read_bytes() + b"theirs")
        return super().publish(artifact_id, theirs, info)


def test_output_that_differs_from_the_published_artifact_is_not_staged(tmp_path: Path) -> None:
    ws = workspace(tmp_path, RacedTier(tmp_path / "shared"))
    prepared = pipeline.preprocess(ws, pipeline.resolve(ws, spec(tmp_path)), stage_here=True)
    assert ws.cache.lookup(prepared.artifact.manifest.fingerprint) is None  # nothing half-made

    ready = pipeline.stage(ws, prepared)  # fetched from the tier instead: its bytes

    assert not ready.staged.hit
    source = Path(prepared.artifact.uri) / "data"
    assert files(ready.staged.path) == files(source)
