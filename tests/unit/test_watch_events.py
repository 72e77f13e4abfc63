"""The events mlstage emits agree with the trigger prefect.yaml declares on them."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import yaml

from mlstage.events import DATASET_CHANGED, benchmark_stale, dataset_changed

REPO = Path(__file__).resolve().parents[2]


def deployment(flow: str) -> dict:
    """prefect.yaml's deployment of ``flow`` (its entrypoint's function, dashed)."""
    doc = yaml.safe_load((REPO / "prefect.yaml").read_text())
    return next(
        d for d in doc["deployments"] if d["entrypoint"].split(":")[1].replace("_", "-") == flow
    )


def test_restage_trigger_matches_the_changed_event_and_finds_its_parameters() -> None:
    (trigger,) = deployment("restage-dataset")["triggers"]
    ev = dataset_changed("imagenet-val", "a" * 64, "b" * 64, "s3://b/p/", via="watch")
    assert ev.event in trigger["expect"] == [DATASET_CHANGED]
    for label, pattern in trigger["match"].items():
        assert fnmatch.fnmatch(ev.resource[label], pattern)
    rendered = {}
    for param, template in trigger["parameters"].items():
        (expr,) = re.findall(r"{{\s*(.+?)\s*}}", template)
        if expr.startswith("event.resource["):
            rendered[param] = ev.resource[expr.split("'")[1]]
        else:
            rendered[param] = ev.payload[expr.removeprefix("event.payload.")]
    assert rendered == {"dataset": "imagenet-val", "version": "b" * 64, "old_version": "a" * 64}
    from flows.restage_dataset import restage_dataset

    assert set(rendered) <= set(restage_dataset.parameters.properties)


def test_watch_is_scheduled_paused_and_not_doubled_up() -> None:
    d = deployment("watch-datasets")
    assert d["schedules"][0]["interval"] > 0
    # quiet by default: no run every minute before anything is watched (docs/prefect.md says
    # how to resume it)
    assert d["schedules"][0]["active"] is False
    assert d["concurrency_limit"]["limit"] == 1
    assert d["work_pool"]["name"] == deployment("restage-dataset")["work_pool"]["name"]


def test_stale_events_relate_to_the_dataset() -> None:
    ev = benchmark_stale("r1", "resnet", "imagenet-val", "a", "b")
    assert ev.resource["prefect.resource.id"] == "mlstage.benchmark.r1"
    assert ev.related[0]["prefect.resource.id"] == "mlstage.dataset.imagenet-val"
    assert ev.payload["consumed_version"] == "a" and ev.payload["version"] == "b"
