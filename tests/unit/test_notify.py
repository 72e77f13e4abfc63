"""S3 event notifications: parsing every envelope, matching watched prefixes, debouncing."""

from __future__ import annotations

import json

import pytest

from mlstage.errors import ConfigError
from mlstage.notify import Debouncer, S3Notice, match, parse_notification
from mlstage.specs import DatasetSpec
from mlstage.watch import WatchEntry


def record(bucket: str, key: str, name: str = "ObjectCreated:Put") -> dict:
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": name,
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 3, "eTag": "abc"}},
    }


def test_plain_body_with_url_encoded_keys() -> None:
    body = json.dumps({"Records": [record("bkt", "data/a+file%2B1.txt"), record("bkt", "x")]})
    assert parse_notification(body) == [
        S3Notice("bkt", "data/a file+1.txt", "ObjectCreated:Put"),
        S3Notice("bkt", "x", "ObjectCreated:Put"),
    ]


def test_sns_and_eventbridge_envelopes() -> None:
    sns = {"Type": "Notification", "Message": json.dumps({"Records": [record("b", "k")]})}
    assert parse_notification(sns) == [S3Notice("b", "k", "ObjectCreated:Put")]
    eb = {
        "detail-type": "Object Deleted",
        "detail": {"bucket": {"name": "b"}, "object": {"key": "k2"}},
    }
    assert parse_notification(json.dumps(eb)) == [S3Notice("b", "k2", "Object Deleted")]


def test_test_events_and_junk_are_skipped_bad_json_is_refused() -> None:
    assert parse_notification({"Service": "Amazon S3", "Event": "s3:TestEvent"}) == []
    assert parse_notification({"Records": [{"s3": {"bucket": {}}}, "nope"]}) == []
    with pytest.raises(ConfigError, match="must be JSON"):
        parse_notification(b"<xml/>")


def entry(name: str, uri: str) -> WatchEntry:
    return WatchEntry(dataset=DatasetSpec(name=name, uri=uri))


def test_match_by_bucket_and_prefix_boundary() -> None:
    entries = [
        entry("data", "s3://bkt/data"),
        entry("data2", "s3://bkt/data2/"),
        entry("whole", "s3://other"),
        entry("folder", "/mnt/data"),
    ]
    hit = match([S3Notice("bkt", "data/x", "")], entries)
    assert [e.name for e in hit] == ["data"]
    hit = match([S3Notice("bkt", "data2/y", ""), S3Notice("other", "deep/z", "")], entries)
    assert [e.name for e in hit] == ["data2", "whole"]
    assert match([S3Notice("nobody", "data/x", "")], entries) == []


def test_debouncer_fires_once_after_the_burst_is_quiet() -> None:
    now = [0.0]
    d = Debouncer(2.0, clock=lambda: now[0])
    for _ in range(100):  # 100 notifications over 10 s
        d.touch("a")
        now[0] += 0.1
        assert d.due() == []
    now[0] += 2.0
    assert d.due() == ["a"]
    assert d.due() == [] and len(d) == 0


def test_cli_reads_stdin_and_reports_what_it_matched(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from mlstage.cli import app

    monkeypatch.setenv("MLSTAGE_HOME", str(tmp_path / "home"))
    wl = tmp_path / "w.json"
    wl.write_text(json.dumps({"datasets": [{"dataset": {"name": "d", "uri": "s3://bkt/d/"}}]}))
    body = json.dumps({"Records": [record("bkt", "elsewhere/k")]})
    res = CliRunner().invoke(app, ["notify", "-", "-w", str(wl), "--no-emit"], input=body)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {
        "matched": [],
        "changed": [],
        "settling": [],
        "events_emitted": 0,
    }
    res = CliRunner().invoke(app, ["notify", str(tmp_path / "nope.json"), "-w", str(wl)])
    assert isinstance(res.exception, ConfigError) and "cannot read" in str(res.exception)
