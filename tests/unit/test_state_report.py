"""The table each benchmark run publishes (as a Prefect artifact) of what it consumed."""

from __future__ import annotations

import re

from mlstage.state import LineageRow
from mlstage.state.report import (
    CONSUMPTION_COLUMNS,
    artifact_key,
    consumption_markdown,
    consumption_table,
)


def row(**kw: object) -> LineageRow:
    base: dict[str, object] = dict(
        run_id="r" * 32,
        flow_run_id=None,
        sweep_id=None,
        model="ResNet 50",
        dataset="mnist",
        status="completed",
        version="v" * 64,
        source_uri="s3://bucket/mnist/",
        artifact_id="a" * 64,
        cache_hit=False,
        bytes_fetched=1234,
        metrics={"acc": 0.9},
        started_at="2026-11-21T00:00:00+00:00",
        node="node-1",
        bytes_from_shared=1234,
        bytes_from_source=0,
        first_object_seconds=0.12345,
        ready_seconds=1.5,
    )
    base.update(kw)
    return LineageRow(**base)  # type: ignore[arg-type]


def test_table_has_one_row_per_consumption_with_full_ids() -> None:
    (t,) = consumption_table([row()])
    assert list(t) == CONSUMPTION_COLUMNS
    assert (
        t["version"] == "v" * 64
        and t["artifact"] == "a" * 64
        and t["source"] == "s3://bucket/mnist/"
    )
    assert t["cache_hit"] is False and t["bytes_fetched"] == 1234 and t["first_object_s"] == 0.123


def test_artifact_key_is_a_valid_prefect_key() -> None:
    for model in ["ResNet 50", "my_model/v2", "ÜBER", "x" * 300]:
        key = artifact_key(model)
        assert re.fullmatch(r"[a-z0-9-]+", key) and len(key) <= 100, key
    assert artifact_key("ResNet 50") == "mlstage-consumed-resnet-50"


def test_description_names_version_and_hit() -> None:
    text = consumption_markdown([row(cache_hit=True)])
    assert "mnist" in text and "v" * 12 in text and "cache hit" in text
    assert "no recorded consumption" in consumption_markdown([row(version=None)])


def test_every_byte_has_one_origin() -> None:
    from mlstage.state.store import origins

    made_here = origins(hit=False, total=163840, fetched=163840, shared=0, source=0)
    assert (made_here.recipe, made_here.shared, made_here.cache) == (163840, 0, 0)
    assert made_here.words == "recipe output on this node"
    hit = origins(hit=True, total=1000, fetched=0, shared=0, source=0)
    assert (hit.cache, hit.words) == (1000, "cache")
    # objects the cache already held count as cache; the rest came over from the shared tier
    partial = origins(hit=False, total=1000, fetched=700, shared=700, source=0)
    assert (partial.shared, partial.cache, partial.recipe) == (700, 300, 0)
    assert partial.words == "shared tier + cache"
    assert (
        origins(hit=False, total=10, fetched=10, shared=4, source=6).words == "source + shared tier"
    )


def test_the_table_says_where_the_bytes_came_from() -> None:
    (t,) = consumption_table([row(data_from="shared tier", bytes_total=1234)])
    assert t["data_from"] == "shared tier" and t["bytes_total"] == 1234
    assert "from shared tier" in consumption_markdown([row(data_from="shared tier")])
