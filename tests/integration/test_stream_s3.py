"""Reading while staging from a real S3 endpoint (moto) behind a slow link (latency + bandwidth)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlstage import pipeline
from mlstage.cache import LocalCache
from mlstage.reader import iter_shard
from mlstage.recipes.shard import ShardParams, write_shards
from mlstage.settings import Settings
from mlstage.shared import S3SharedTier
from mlstage.sources.s3 import S3Source
from mlstage.specs import DatasetSpec, ModelSpec, RecipeSpec
from mlstage.state import StateStore
from mlstage.store import StoreConfig
from mlstage.stream import StreamCancelled, StreamingDataset, open_stream
from mlstage.testing.s3 import S3Endpoint
from mlstage.testing.slow_proxy import SlowLink, slow_proxy

pytestmark = pytest.mark.integration

SAMPLES = 64
SHARDS = 8


def write_samples(root: Path, n: int = SAMPLES) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        (root / f"s{i:04d}.input.bin").write_bytes(os.urandom(6000))
        (root / f"s{i:04d}.label.json").write_text(json.dumps({"i": i}))
    return root


@pytest.fixture
def link(s3_env: S3Endpoint) -> Iterator[SlowLink]:
    with slow_proxy(s3_env.port, latency=0.02, bandwidth=1_000_000) as proxied:
        yield proxied


@pytest.fixture
def sharded(tmp_path: Path, bucket: str, s3_env: S3Endpoint) -> str:
    """SHARDS tar shards of SAMPLES samples under s3://bucket/shards/ (uploaded directly)."""
    out = tmp_path / "shards"
    per = SAMPLES // SHARDS
    write_shards(write_samples(tmp_path / "raw"), out, ShardParams(max_samples=per))
    client = s3_env.client()
    for p in sorted(out.iterdir()):
        client.upload_file(str(p), bucket, f"shards/{p.name}")
    return bucket


def slow_source(bucket: str, link: SlowLink) -> S3Source:
    return S3Source(bucket, "shards/", config=StoreConfig.from_env(endpoint=link.url))


def keys_of(stream: StreamingDataset, order: str) -> tuple[list[str], bool]:
    keys: list[str] = []
    complete_at_first = True
    for obj in stream.iter_ready(order):  # type: ignore[arg-type]
        if not keys:
            complete_at_first = stream.complete
        keys += [s["__key__"].decode() for s in iter_shard(obj.file)]
    return keys, complete_at_first


def test_manifest_order_every_sample_once_while_staging(
    sharded: str, link: SlowLink, tmp_path: Path
) -> None:
    cache = LocalCache(tmp_path / "cache")
    source = slow_source(sharded, link)
    manifest = source.resolve()
    assert len(manifest) == SHARDS
    with open_stream(cache, source, manifest) as stream:
        keys, complete_at_first = keys_of(stream, "manifest")
        staged = stream.wait(timeout=60)
        stats = stream.stats()
    assert not complete_at_first  # the reader started before the copy was complete
    assert keys == [f"s{i:04d}" for i in range(SAMPLES)]  # each once, in manifest order
    assert stats.time_to_first_object_s is not None and stats.time_to_ready_s is not None
    assert stats.time_to_first_object_s < stats.time_to_ready_s
    assert stats.bytes_fetched == manifest.total_bytes
    hit = cache.lookup(manifest.fingerprint)
    assert hit is not None and hit.path == staged.path  # a normal, complete cache entry


def test_completion_order_every_sample_once(sharded: str, link: SlowLink, tmp_path: Path) -> None:
    cache = LocalCache(tmp_path / "cache")
    source = slow_source(sharded, link)
    manifest = source.resolve()
    with open_stream(cache, source, manifest, order="completion") as stream:
        keys, _ = keys_of(stream, "completion")
        stream.wait(timeout=60)
    assert sorted(keys) == [f"s{i:04d}" for i in range(SAMPLES)]
    assert len(keys) == SAMPLES


def test_reader_stopping_halfway_leaves_a_resumable_entry(
    sharded: str, link: SlowLink, tmp_path: Path, s3_env: S3Endpoint
) -> None:
    cache = LocalCache(tmp_path / "cache")
    with slow_proxy(s3_env.port, latency=0.02, bandwidth=200_000) as slower:
        source = slow_source(sharded, slower)
        manifest = source.resolve()
        with open_stream(cache, source, manifest, lookahead_bytes=0) as stream:
            it = iter(stream)
            first_half = [next(it).path for _ in range(SHARDS // 2)]
    with pytest.raises(StreamCancelled):
        next(it)
    assert cache.lookup(manifest.fingerprint) is None
    assert not cache.dataset_path(manifest.fingerprint).exists()
    kept = cache.present(source, manifest.entries)
    assert set(first_half) <= set(kept) and len(kept) < SHARDS

    with open_stream(cache, slow_source(sharded, link), manifest) as again:
        keys, _ = keys_of(again, "manifest")
        again.wait(timeout=60)
        stats = again.stats()
    assert keys == [f"s{i:04d}" for i in range(SAMPLES)]
    assert stats.objects_present == len(kept)
    assert stats.bytes_fetched == sum(e.size for e in manifest.entries if e.path not in kept)
    assert cache.lookup(manifest.fingerprint) is not None


def _tag_worker(path: Path) -> Iterator[tuple[str, str, int]]:
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    for s in iter_shard(path):
        yield s["__key__"].decode(), path.name, info.id if info else -1


def test_dataloader_workers_read_disjoint_shards_and_everything(
    sharded: str, link: SlowLink, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from mlstage.adapters.torch import ShardStream

    cache = LocalCache(tmp_path / "cache")
    source = slow_source(sharded, link)
    manifest = source.resolve()
    with open_stream(cache, source, manifest) as stream:
        ds = ShardStream(stream, decode=_tag_worker)
        loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="spawn")
        rows = list(loader)
        stream.wait(timeout=60)
        stall = stream.stats().stall_seconds
    keys = [k for k, _, _ in rows]
    assert sorted(keys) == [f"s{i:04d}" for i in range(SAMPLES)]  # everything, exactly once
    by_worker: dict[int, set[str]] = {}
    for _, shard, worker in rows:
        by_worker.setdefault(worker, set()).add(shard)
    assert sorted(by_worker) == [0, 1]  # real worker processes, both used
    assert not by_worker[0] & by_worker[1]  # disjoint shards
    assert len(by_worker[0] | by_worker[1]) == SHARDS
    assert stall > 0  # the workers reported the time they waited for data


def _key_and_index(sample: dict[str, Any]) -> tuple[str, int]:
    return sample["__key__"], sample["label.json"]["i"]


def test_webdataset_pipeline_with_two_workers(sharded: str, link: SlowLink, tmp_path: Path) -> None:
    pytest.importorskip("webdataset")
    import webdataset as wds
    from torch.utils.data import DataLoader

    from mlstage.adapters.webdataset import webdataset_pipeline

    cache = LocalCache(tmp_path / "cache")
    source = slow_source(sharded, link)
    manifest = source.resolve()
    with open_stream(cache, source, manifest) as stream:
        pipe = webdataset_pipeline(stream, wds.decode(), wds.map(_key_and_index))
        rows = list(
            DataLoader(pipe, batch_size=None, num_workers=2, multiprocessing_context="spawn")
        )
        stream.wait(timeout=60)
    assert sorted((k, int(i)) for k, i in rows) == [(f"s{i:04d}", i) for i in range(SAMPLES)]


# -- start: first-shard through the pipeline -------------------------------------------------
SEEN: dict[str, Any] = {}


def train_while_staging(data_dir: Path, stream: StreamingDataset, epochs: int = 1) -> dict:
    """A python entrypoint that reads while the data lands."""
    SEEN["complete_at_start"] = stream.complete
    SEEN["data_dir"] = data_dir
    n = sum(1 for obj in stream for _ in iter_shard(obj.file))
    return {"samples": n}


@pytest.fixture
def ws_s3(link: SlowLink, bucket: str, tmp_path: Path) -> pipeline.Workspace:
    settings = Settings(home=tmp_path / "home")
    return pipeline.Workspace(
        cache=LocalCache(tmp_path / "home" / "cache"),
        shared=S3SharedTier(
            f"s3://{bucket}/shared", config=StoreConfig.from_env(endpoint=link.url)
        ),
        state=StateStore.open(f"sqlite:///{tmp_path / 'state.db'}"),
        settings=settings,
    )


def prepare(ws: pipeline.Workspace, tmp_path: Path) -> pipeline.Prepared:
    spec = DatasetSpec(
        name="toy",
        uri=str(write_samples(tmp_path / "remote")),
        recipe=RecipeSpec(params={"max_samples": SAMPLES // SHARDS}),
    )
    return pipeline.preprocess(ws, pipeline.resolve(ws, spec))


def test_run_streaming_starts_on_the_first_shard_and_records_metrics(
    ws_s3: pipeline.Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared = prepare(ws_s3, tmp_path)
    assert len(prepared.artifact.manifest) == SHARDS
    entry = f"{__name__}:train_while_staging"
    if __name__ not in sys.modules:  # pragma: no cover - imported under another name
        monkeypatch.syspath_prepend(str(Path(__file__).parent))
    model = ModelSpec(name="m", dataset="toy", entrypoint=entry, start="first-shard")
    outcome = pipeline.run_streaming(ws_s3, model, prepared)
    assert outcome.status == "completed", outcome.error
    assert SEEN["complete_at_start"] is False  # started before the data was complete
    assert outcome.metrics["samples"] == SAMPLES
    assert outcome.ready is not None and not outcome.ready.staged.hit
    assert ws_s3.cache.lookup(prepared.artifact.manifest.fingerprint) is not None

    (row,) = ws_s3.state.runs()
    assert row.status == "completed"
    assert row.artifact_id == prepared.artifact.artifact_id
    for k in ("time_to_first_object_s", "time_to_ready_s", "data_stall_seconds"):
        assert isinstance(row.metrics[k], float), k
    assert row.metrics["time_to_first_object_s"] < row.metrics["time_to_ready_s"]
    # the stage record carries the same timings (state DB columns)
    assert row.first_object_seconds == pytest.approx(
        row.metrics["time_to_first_object_s"], abs=1e-3
    )
    assert row.ready_seconds == pytest.approx(row.metrics["time_to_ready_s"], abs=1e-3)
    assert row.stall_seconds == pytest.approx(row.metrics["data_stall_seconds"], abs=1e-3)


def test_run_streaming_command_tails_the_ready_list(
    ws_s3: pipeline.Workspace, tmp_path: Path
) -> None:
    prepared = prepare(ws_s3, tmp_path)
    script = tmp_path / "reader.py"
    script.write_text(
        "import json, os, sys, time\n"
        "data, ready = sys.argv[1], os.environ['MLSTAGE_READY_LIST']\n"
        "assert ready == sys.argv[2]\n"
        "seen, end, early = [], None, None\n"
        "while end is None:\n"
        "    items = [json.loads(x) for x in open(ready).read().splitlines()]\n"
        "    seen = [x for x in items if isinstance(x, str)]\n"
        "    end = next((x for x in items if isinstance(x, dict)), None)\n"
        "    if seen and early is None:\n"
        "        early = end is None\n"
        "    time.sleep(0.01)\n"
        "sizes = sum(os.path.getsize(os.path.join(data, p)) for p in seen)\n"
        "print(json.dumps({'files': len(seen), 'bytes': sizes, 'early': early}))\n"
    )
    model = ModelSpec(
        name="cmd",
        dataset="toy",
        entrypoint=f"{sys.executable} {script} {{data_dir}} {{ready_list}}",
        start="first-shard",
    )
    outcome = pipeline.run_streaming(ws_s3, model, prepared)
    assert outcome.status == "completed", outcome.error
    assert outcome.metrics["files"] == SHARDS
    assert outcome.metrics["bytes"] == prepared.artifact.bytes
    assert outcome.metrics["early"] is True
